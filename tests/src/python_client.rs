//! The official Python MCP SDK as a real client, through `tests/clients/mcp_client.py`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::paths;
use crate::process::ChildProcess;

/// A `python3` command for a script of `tests/`, with the pinned pip packages importable.
pub fn python_command(script: &Path) -> anyhow::Result<Command> {
    let packages = paths::python_packages_dir()?;
    let mut command = Command::new(paths::python_interpreter());
    // -s: no user site-packages, so only the pinned packages (and the standard library) count.
    command
        .arg("-s")
        .arg(script)
        .env("PYTHONPATH", packages)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    Ok(command)
}

/// Starts building a run of the Python MCP client against `url`.
pub fn python_mcp_client(url: impl Into<String>) -> PythonMcpClient {
    PythonMcpClient {
        url: url.into(),
        headers: Vec::new(),
        mode: None,
        list_tools: false,
        calls: Vec::new(),
        timeout: Duration::from_secs(60),
    }
}

/// One run of `tests/clients/mcp_client.py`: connect, optionally list tools, call tools.
#[derive(Debug, Clone)]
pub struct PythonMcpClient {
    url: String,
    headers: Vec<(String, String)>,
    mode: Option<String>,
    list_tools: bool,
    calls: Vec<(String, Value)>,
    timeout: Duration,
}

impl PythonMcpClient {
    /// Sends this header with every request.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `legacy` (initialize; the default), `auto` (probe `server/discover` first), or a
    /// stateless protocol version such as `2026-07-28`.
    pub fn mode(mut self, mode: &str) -> Self {
        self.mode = Some(mode.to_owned());
        self
    }

    pub fn list_tools(mut self) -> Self {
        self.list_tools = true;
        self
    }

    /// Calls `tool` with `arguments` (a JSON object), after the previous calls.
    pub fn call(mut self, tool: &str, arguments: Value) -> Self {
        self.calls.push((tool.to_owned(), arguments));
        self
    }

    /// Gives up on the whole session after this long (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs the client and returns its report, whether the MCP session succeeded or not
    /// (see [`McpClientReport::ok`]); fails only when the script could not run or report.
    pub async fn run(self) -> anyhow::Result<McpClientReport> {
        let script = paths::tests_crate_dir()
            .join("clients")
            .join("mcp_client.py");
        let mut command = python_command(&script)?;
        command.arg("--url").arg(&self.url);
        for (name, value) in &self.headers {
            command.arg("--header").arg(format!("{name}: {value}"));
        }
        if let Some(mode) = &self.mode {
            command.arg("--mode").arg(mode);
        }
        if self.list_tools {
            command.arg("--list-tools");
        }
        for (tool, arguments) in &self.calls {
            command.arg("--call").arg(tool).arg(arguments.to_string());
        }
        command
            .arg("--timeout-secs")
            .arg(self.timeout.as_secs_f64().to_string());

        let mut process = ChildProcess::spawn("python-mcp-client", command)?;
        // The script enforces `timeout` itself; the extra margin covers interpreter start-up.
        let status = process
            .wait_for_exit(self.timeout + Duration::from_secs(30))
            .await?;
        let stdout = process.stdout_text();
        let Some(report_line) = stdout.lines().rev().find(|line| line.starts_with('{')) else {
            bail!(
                "python MCP client ({status}) printed no JSON report\n{}",
                process.diagnostics()
            );
        };
        let mut report: McpClientReport = serde_json::from_str(report_line)
            .with_context(|| format!("unparsable python MCP client report: {report_line}"))?;
        report.stderr = process.stderr_text();
        Ok(report)
    }
}

/// What `mcp_client.py` printed. Times are seconds since the client connected.
#[derive(Debug, Clone, Deserialize)]
pub struct McpClientReport {
    /// Every step succeeded (a tool result with `isError` still counts as success).
    pub ok: bool,
    pub error: Option<String>,
    pub protocol_version: Option<String>,
    pub server_info: Option<Value>,
    pub tools: Option<Vec<ListedTool>>,
    pub calls: Vec<ToolCallReport>,
    /// Every HTTP response the client received, in arrival order.
    #[serde(default)]
    pub http_responses: Vec<HttpResponseReport>,
    /// The client's stderr (SDK logs, Python tracebacks), for failure messages.
    #[serde(skip)]
    pub stderr: String,
}

impl McpClientReport {
    /// Fails with the client's error and stderr unless the run succeeded.
    pub fn expect_ok(&self) -> anyhow::Result<&Self> {
        if !self.ok {
            bail!(
                "python MCP client failed: {}\n--- client stderr ---\n{}",
                self.error.as_deref().unwrap_or("(no error message)"),
                self.stderr
            );
        }
        Ok(self)
    }

    /// The names of the listed tools (empty when tools were not listed).
    pub fn tool_names(&self) -> Vec<&str> {
        self.tools
            .iter()
            .flatten()
            .map(|tool| tool.name.as_str())
            .collect()
    }

    /// The HTTP statuses the client received, in arrival order.
    pub fn http_statuses(&self) -> Vec<u16> {
        self.http_responses
            .iter()
            .map(|response| response.status)
            .collect()
    }

    /// The report of the first call of `tool`.
    pub fn call(&self, tool: &str) -> anyhow::Result<&ToolCallReport> {
        self.calls
            .iter()
            .find(|call| call.name == tool)
            .with_context(|| format!("the client made no call to {tool}"))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ListedTool {
    pub name: String,
    pub description: Option<String>,
    pub input_schema: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ToolCallReport {
    pub name: String,
    pub arguments: Value,
    /// The exception text when the call raised (a JSON-RPC error, a transport failure).
    pub error: Option<String>,
    #[serde(default)]
    pub is_error: bool,
    #[serde(default)]
    pub content: Vec<Value>,
    pub structured_content: Option<Value>,
    pub started_at: f64,
    pub finished_at: Option<f64>,
    pub progress: Vec<ProgressReport>,
}

impl ToolCallReport {
    /// The text of the first text content block.
    pub fn text(&self) -> anyhow::Result<&str> {
        self.content
            .iter()
            .find(|block| block.get("type").and_then(Value::as_str) == Some("text"))
            .and_then(|block| block.get("text"))
            .and_then(Value::as_str)
            .with_context(|| format!("{} returned no text content: {:?}", self.name, self.content))
    }
}

/// One progress notification and when it arrived.
#[derive(Debug, Clone, Deserialize)]
pub struct ProgressReport {
    pub progress: f64,
    pub total: Option<f64>,
    pub message: Option<String>,
    /// Arrival time, seconds since the client connected.
    pub at: f64,
}

/// One HTTP response the client received (recorded by an httpx event hook).
#[derive(Debug, Clone, Deserialize)]
pub struct HttpResponseReport {
    pub method: String,
    pub url: String,
    pub status: u16,
    pub content_type: Option<String>,
    pub www_authenticate: Option<String>,
    /// Arrival time, seconds since the client started.
    pub at: f64,
}

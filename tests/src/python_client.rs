//! The official Python MCP SDK as a real client, through `tests/clients/mcp_client.py`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::browser::HeadlessBrowser;
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
        pause_between_calls: None,
        oauth_args: Vec::new(),
        connect_links: None,
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
    pause_between_calls: Option<Duration>,
    /// `--oauth` and its options, empty without OAuth.
    oauth_args: Vec<String>,
    /// How the client meets "connect your account" prompts.
    connect_links: Option<ConnectLinks>,
}

/// How the client meets "connect your account" prompts (per-user app OAuth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectLinks {
    /// Records them in [`McpClientReport::connect`]; declares URL-mode elicitation.
    Report,
    /// Records them, opens each link with the OAuth browser profile ([`PythonMcpClient::oauth`]:
    /// its user and cookie jar), then goes on with the call (the SDK retries after an
    /// `input_required`; after a -32042 error or a tool error carrying a link the script
    /// retries once). `url_elicitation: false` plays a client that does not declare URL
    /// elicitation, which gets the link in a tool error.
    Open { url_elicitation: bool },
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

    /// Waits this long before each tool call after the first (e.g. to outlive a token).
    pub fn pause_between_calls(mut self, pause: Duration) -> Self {
        self.pause_between_calls = Some(pause);
        self
    }

    /// Runs the MCP authorization flow (the SDK's `OAuthClientProvider`, tokens in memory)
    /// with `browser` as the user's browser: its cookie jar, user and consent choice. Without
    /// a pre-registered client the SDK registers one (CIMD or DCR, as the server offers).
    /// The report's [`McpClientReport::oauth`] says what happened.
    pub fn oauth(mut self, browser: &HeadlessBrowser) -> Self {
        self.ensure_oauth();
        self.oauth_args.extend([
            "--cookie-jar".to_owned(),
            browser.cookie_jar().display().to_string(),
            "--consent".to_owned(),
            browser.consent_choice().as_str().to_owned(),
        ]);
        if let Some(user) = browser.user_name() {
            self.oauth_args
                .extend(["--user".to_owned(), user.to_owned()]);
        }
        self
    }

    /// OAuth with a pre-registered client instead of registering one.
    pub fn oauth_client(mut self, client_id: &str, client_secret: Option<&str>) -> Self {
        self.ensure_oauth();
        self.oauth_args
            .extend(["--client-id".to_owned(), client_id.to_owned()]);
        if let Some(secret) = client_secret {
            self.oauth_args
                .extend(["--client-secret".to_owned(), secret.to_owned()]);
        }
        self
    }

    /// OAuth with a Client ID Metadata Document URL (https), used when the authorization
    /// server advertises `client_id_metadata_document_supported`.
    pub fn oauth_client_metadata_url(mut self, url: &str) -> Self {
        self.ensure_oauth();
        self.oauth_args
            .extend(["--client-metadata-url".to_owned(), url.to_owned()]);
        self
    }

    /// The redirect URI registered and sent (default `http://127.0.0.1:33418/callback`;
    /// nothing listens there, the browser hands the code over directly).
    pub fn oauth_redirect_uri(mut self, redirect_uri: &str) -> Self {
        self.ensure_oauth();
        self.oauth_args
            .extend(["--redirect-uri".to_owned(), redirect_uri.to_owned()]);
        self
    }

    /// Registers as a public client (`token_endpoint_auth_method` `none`).
    pub fn oauth_public_client(mut self) -> Self {
        self.ensure_oauth();
        self.oauth_args
            .extend(["--token-endpoint-auth-method".to_owned(), "none".to_owned()]);
        self
    }

    /// How the client meets "connect your account" prompts (see [`ConnectLinks`]).
    pub fn connect_links(mut self, links: ConnectLinks) -> Self {
        self.connect_links = Some(links);
        self
    }

    fn ensure_oauth(&mut self) {
        if self.oauth_args.is_empty() {
            self.oauth_args.push("--oauth".to_owned());
        }
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
        if let Some(pause) = self.pause_between_calls {
            command
                .arg("--pause-between-calls-secs")
                .arg(pause.as_secs_f64().to_string());
        }
        command.args(&self.oauth_args);
        match self.connect_links {
            None => {}
            Some(ConnectLinks::Report) => {
                command.arg("--connect-links").arg("report");
            }
            Some(ConnectLinks::Open { url_elicitation }) => {
                command.arg("--connect-links").arg("open");
                if !url_elicitation {
                    command.arg("--no-url-elicitation");
                }
            }
        }

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
    /// What the OAuth flow did (runs with [`PythonMcpClient::oauth`]).
    #[serde(default)]
    pub oauth: Option<OAuthReport>,
    /// The "connect your account" prompts met (runs with [`PythonMcpClient::connect_links`]).
    #[serde(default)]
    pub connect: Vec<ConnectPromptReport>,
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
    /// The call was made again after a connect prompt ([`PythonMcpClient::connect_links`]).
    #[serde(default)]
    pub retried: bool,
}

/// A "connect your account" prompt the client met, and where its link led.
#[derive(Debug, Clone, Deserialize)]
pub struct ConnectPromptReport {
    /// `input_required` (2026-07-28), `url_elicitation_error` (-32042, 2025-11-25) or
    /// `tool_result` (a tool error carrying the link).
    pub via: String,
    pub url: String,
    pub message: Option<String>,
    /// The page the link ended on, when the client opened it.
    pub final_status: Option<u16>,
    pub final_text: Option<String>,
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

/// The OAuth steps of a run: metadata fetched, registration, browser trips, token requests.
#[derive(Debug, Clone, Deserialize)]
pub struct OAuthReport {
    /// `dcr`, `cimd`, `preregistered`, or `None` when no client was needed.
    pub registration: Option<String>,
    pub client_id: Option<String>,
    /// Every `/.well-known/...` GET (protected resource and authorization server metadata).
    pub metadata_requests: Vec<UrlStatus>,
    /// Dynamic client registration requests.
    pub registration_requests: Vec<UrlStatus>,
    /// Each trip of the browser through an authorization URL.
    pub authorizations: Vec<AuthorizationReport>,
    pub token_requests: Vec<OAuthTokenRequestReport>,
    /// The tokens the run ended with (no secrets).
    pub token: Option<OAuthTokenReport>,
}

impl OAuthReport {
    /// The metadata URLs fetched, in order.
    pub fn metadata_urls(&self) -> Vec<&str> {
        self.metadata_requests
            .iter()
            .map(|request| request.url.as_str())
            .collect()
    }

    /// `(grant_type, status)` of each token request, in order.
    pub fn token_request_statuses(&self) -> Vec<(&str, u16)> {
        self.token_requests
            .iter()
            .map(|request| (request.grant_type.as_str(), request.status))
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct UrlStatus {
    pub url: String,
    pub status: u16,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthorizationReport {
    /// The authorization URL the SDK built (client_id, redirect_uri, scope, resource, PKCE...).
    pub url: String,
    /// The callback's parameters other than `code` (state, iss, error...).
    pub callback_params: Option<std::collections::BTreeMap<String, String>>,
    /// Requests the browser made.
    pub hops: u32,
    /// Requests to the test IdP's `/interaction/` pages (login or consent happened).
    pub interaction_hops: u32,
    pub error: Option<String>,
}

impl AuthorizationReport {
    /// A query parameter of the authorization URL.
    pub fn param(&self, name: &str) -> Option<String> {
        url::Url::parse(&self.url).ok().and_then(|url| {
            url.query_pairs()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.into_owned())
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct OAuthTokenRequestReport {
    pub url: String,
    pub status: u16,
    pub grant_type: String,
    pub resource: Option<String>,
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OAuthTokenReport {
    pub token_type: String,
    pub scope: Option<String>,
    pub expires_in: Option<u64>,
    pub has_refresh_token: bool,
    /// The access token's payload when it is a JWT (unverified).
    pub access_token_claims: Option<Value>,
}

//! Upstream MCP servers the tests put behind the gateway (or talk to directly).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::paths;
use crate::process::{ChildProcess, DEFAULT_STARTUP_TIMEOUT, pick_free_loopback_port};

/// A test upstream binary of this crate started as a child process with `args`
/// (`--listen` defaults to `127.0.0.1:0`), waited for until it listens.
async fn start_upstream_binary(
    binary: &str,
    args: &[&str],
) -> anyhow::Result<(ChildProcess, String)> {
    let mut command = Command::new(paths::workspace_binary(binary)?);
    if !args.contains(&"--listen") {
        command.args(["--listen", "127.0.0.1:0"]);
    }
    command.args(args);
    let mcp_path = args
        .iter()
        .position(|arg| *arg == "--path")
        .and_then(|index| args.get(index + 1))
        .map_or_else(|| "/mcp".to_owned(), |path| (*path).to_owned());
    let process =
        ChildProcess::start_listening(binary, command, &format!("{binary} listening on ")).await?;
    Ok((process, mcp_path))
}

/// `echo-upstream` (this crate's binary) as a child process on a loopback port chosen by the OS.
#[derive(Debug)]
pub struct EchoUpstream {
    process: ChildProcess,
    mcp_path: String,
}

impl EchoUpstream {
    /// Starts `echo-upstream` with extra flags (e.g. `["--require-bearer", "s3cret"]`) and
    /// waits until it listens.
    pub async fn start(args: &[&str]) -> anyhow::Result<Self> {
        let (process, mcp_path) = start_upstream_binary("echo-upstream", args).await?;
        Ok(Self { process, mcp_path })
    }

    pub fn address(&self) -> SocketAddr {
        self.process.address()
    }

    /// The MCP endpoint, e.g. `http://127.0.0.1:41234/mcp`.
    pub fn url(&self) -> String {
        self.process.http_url(&self.mcp_path)
    }

    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    pub fn process_mut(&mut self) -> &mut ChildProcess {
        &mut self.process
    }
}

/// `conformance-upstream` (this crate's binary, the conformance suite's fixtures) as a child
/// process on a loopback port chosen by the OS.
#[derive(Debug)]
pub struct ConformanceUpstream {
    process: ChildProcess,
    mcp_path: String,
}

impl ConformanceUpstream {
    /// Starts `conformance-upstream` with extra flags and waits until it listens.
    pub async fn start(args: &[&str]) -> anyhow::Result<Self> {
        let (process, mcp_path) = start_upstream_binary("conformance-upstream", args).await?;
        Ok(Self { process, mcp_path })
    }

    pub fn address(&self) -> SocketAddr {
        self.process.address()
    }

    /// The MCP endpoint, e.g. `http://127.0.0.1:41234/mcp`.
    pub fn url(&self) -> String {
        self.process.http_url(&self.mcp_path)
    }

    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    pub fn process_mut(&mut self) -> &mut ChildProcess {
        &mut self.process
    }
}

/// `@modelcontextprotocol/server-everything` in Streamable HTTP mode, under the pinned Node.
#[derive(Debug)]
pub struct ServerEverything {
    process: ChildProcess,
}

impl ServerEverything {
    /// How many fresh ports to try when the chosen one was taken before the server bound it.
    const PORT_ATTEMPTS: usize = 3;

    /// Starts the server on a free loopback port and waits until that port answers.
    ///
    /// It takes its port from `PORT` and cannot report a port the OS chose, so a free port
    /// is picked first; if another process takes it in between, a new one is tried.
    pub async fn start() -> anyhow::Result<Self> {
        let node = paths::node_binary()?;
        let entry_point =
            paths::npm_package_file("@modelcontextprotocol/server-everything", "dist/index.js")?;
        let mut last_error = None;
        for _ in 0..Self::PORT_ATTEMPTS {
            let port = pick_free_loopback_port()?;
            let mut command = Command::new(&node);
            command
                .arg(&entry_point)
                .arg("streamableHttp")
                .env("PORT", port.to_string());
            let mut process = ChildProcess::spawn("server-everything", command)?;
            // The listen callback prints this line only once the port is bound, so a port
            // answering after it is this server and not a process that took the port.
            let listening_line = format!("listening on port {port}");
            let started = process
                .wait_for_stderr_line(
                    |line| line.contains(&listening_line),
                    DEFAULT_STARTUP_TIMEOUT,
                )
                .await;
            match started {
                Ok(_) => {
                    let address = SocketAddr::from(([127, 0, 0, 1], port));
                    process
                        .wait_for_port(address, DEFAULT_STARTUP_TIMEOUT)
                        .await?;
                    return Ok(Self { process });
                }
                Err(error) if process.stderr_text().contains("already in use") => {
                    last_error = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        match last_error {
            Some(error) => Err(error).context("server-everything found no free port"),
            None => bail!("server-everything was not started"),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.process.address()
    }

    /// The MCP endpoint, `http://127.0.0.1:<port>/mcp`.
    pub fn url(&self) -> String {
        self.process.http_url("/mcp")
    }

    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    pub fn process_mut(&mut self) -> &mut ChildProcess {
        &mut self.process
    }
}

/// How long a one-shot test tool (client, conformance run) may take by default.
pub const DEFAULT_TOOL_TIMEOUT: Duration = Duration::from_secs(180);

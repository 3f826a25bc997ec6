//! MCP clients from npm, run under the pinned Node 22: the MCP Inspector CLI and
//! `mcp-remote-client`.
//!
//! Each run gets its own `HOME`, so the tools' state (Inspector catalog and secrets,
//! mcp-remote's token cache) never leaks between tests or into the user's home.

use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::bail;
use serde_json::Value;

use crate::browser::{BrowserOutcome, HeadlessBrowser, read_browser_log};
use crate::paths;
use crate::process::{ChildProcess, pick_free_loopback_port, scratch_dir};

/// How long one client run may take by default.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// `node <package>/<entry>` under the pinned Node 22, with `HOME` set to `home`.
pub fn node_tool_command(package: &str, entry: &str, home: &Path) -> anyhow::Result<Command> {
    let mut command = Command::new(paths::node_binary()?);
    command
        .arg(paths::npm_package_file(package, entry)?)
        .env("HOME", home)
        .env("NO_COLOR", "1");
    Ok(command)
}

/// A finished run of a Node client.
#[derive(Debug)]
pub struct NodeClientRun {
    pub exit_status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The finished process, for its logs.
    pub process: ChildProcess,
    _home: tempfile::TempDir,
}

impl NodeClientRun {
    /// Fails with the output unless the client exited 0.
    pub fn expect_success(&self) -> anyhow::Result<&Self> {
        if !self.exit_status.success() {
            bail!(
                "{} failed ({})\n--- stdout ---\n{}\n{}",
                self.process.name(),
                self.exit_status,
                self.stdout,
                self.process.diagnostics()
            );
        }
        Ok(self)
    }

    /// Stdout parsed as one JSON document (what `mcp-inspector --cli` prints).
    pub fn stdout_json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.stdout).map_err(|error| {
            anyhow::anyhow!(
                "{} printed no JSON document ({error})\n--- stdout ---\n{}",
                self.process.name(),
                self.stdout
            )
        })
    }
}

async fn run_to_completion(
    name: &str,
    command: Command,
    home: tempfile::TempDir,
    keep_stdin_open: bool,
) -> anyhow::Result<NodeClientRun> {
    let mut process = if keep_stdin_open {
        ChildProcess::spawn_with_open_stdin(name, command)?
    } else {
        ChildProcess::spawn(name, command)?
    };
    let exit_status = process.wait_for_exit(CLIENT_TIMEOUT).await?;
    Ok(NodeClientRun {
        exit_status,
        stdout: process.stdout_text(),
        stderr: process.stderr_text(),
        process,
        _home: home,
    })
}

/// `mcp-inspector --cli <url> <args>`, e.g. `["--method", "tools/list"]` or
/// `["--method", "tools/call", "--tool-name", "whoami", "--header", "Authorization: Bearer x"]`.
pub async fn inspector_cli(url: &str, args: &[&str]) -> anyhow::Result<NodeClientRun> {
    let home = scratch_dir("inspector-home")?;
    let mut command = node_tool_command(
        "@modelcontextprotocol/inspector",
        "clients/launcher/build/index.js",
        home.path(),
    )?;
    command.arg("--cli").arg(url).args(args);
    run_to_completion("mcp-inspector-cli", command, home, false).await
}

/// `mcp-remote-client <url> --allow-http <args>`: connects, lists tools and resources (logged
/// to stderr), and exits 0 on success.
///
/// Its stdin stays open during the run: the client shuts down as soon as stdin ends.
pub async fn mcp_remote_client(url: &str, args: &[&str]) -> anyhow::Result<NodeClientRun> {
    let home = scratch_dir("mcp-remote-home")?;
    let mut command = node_tool_command("mcp-remote", "dist/client.js", home.path())?;
    command
        .arg(url)
        .arg("--allow-http")
        .args(args)
        .env("MCP_REMOTE_CONFIG_DIR", home.path().join("mcp-remote"));
    run_to_completion("mcp-remote-client", command, home, true).await
}

/// An OAuth run of `mcp-remote-client`: the client's run and each trip of the browser.
#[derive(Debug)]
pub struct McpRemoteOAuthRun {
    pub run: NodeClientRun,
    /// What `tests/clients/browser-open` did each time mcp-remote opened it.
    pub browser_runs: Vec<BrowserOutcome>,
}

impl McpRemoteOAuthRun {
    /// Fails unless the client exited 0, with the browser's trips in the message.
    pub fn expect_success(&self) -> anyhow::Result<&Self> {
        if !self.run.exit_status.success() {
            bail!(
                "{} failed ({})\n--- browser runs ---\n{:#?}\n--- stdout ---\n{}\n{}",
                self.run.process.name(),
                self.run.exit_status,
                self.browser_runs,
                self.run.stdout,
                self.run.process.diagnostics()
            );
        }
        Ok(self)
    }
}

/// `mcp-remote-client <url> <callback port> --allow-http <args>` with `browser` as the user's
/// browser (`BROWSER=tests/clients/browser-open`): mcp-remote discovers the authorization
/// server, registers, opens the browser on the authorization URL, and the headless browser
/// walks it and calls mcp-remote's callback (retrying until its listener is up). Each run
/// starts with an empty mcp-remote token cache; the browser's cookie jar carries sessions.
pub async fn mcp_remote_client_oauth(
    url: &str,
    browser: &HeadlessBrowser,
    args: &[&str],
) -> anyhow::Result<McpRemoteOAuthRun> {
    let home = scratch_dir("mcp-remote-home")?;
    let browser_log = home.path().join("browser-runs.jsonl");
    let mut command = node_tool_command("mcp-remote", "dist/client.js", home.path())?;
    command
        .arg(url)
        .arg(pick_free_loopback_port()?.to_string())
        .arg("--allow-http")
        .args(args)
        .env("MCP_REMOTE_CONFIG_DIR", home.path().join("mcp-remote"));
    browser.configure_client_command(&mut command, &browser_log);
    let run = run_to_completion("mcp-remote-client", command, home, true).await?;
    let browser_runs = read_browser_log(&browser_log)?;
    Ok(McpRemoteOAuthRun { run, browser_runs })
}

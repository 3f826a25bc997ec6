//! `echo-upstream`: test and demo MCP server that reports the headers and credential it
//! received. See `portcullis_tests::echo_upstream` for the tools.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use portcullis_tests::echo_upstream::{self, EchoUpstreamOptions};

#[derive(Debug, Parser)]
#[command(name = "echo-upstream", version, about)]
struct Flags {
    /// Address to listen on; port 0 lets the OS choose.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Path of the MCP endpoint.
    #[arg(long, default_value = "/mcp")]
    path: String,
    /// Require `Authorization: Bearer TOKEN` on every request (401 otherwise).
    #[arg(long, value_name = "TOKEN")]
    require_bearer: Option<String>,
    /// Accepted `Host` value (repeatable); default: loopback names only.
    #[arg(long = "allowed-host", value_name = "HOST")]
    allowed_hosts: Vec<String>,
    /// Serve without sessions.
    #[arg(long)]
    stateless: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let flags = Flags::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    if !flags.path.starts_with('/') {
        eprintln!("echo-upstream: --path must start with '/'");
        return ExitCode::from(64);
    }
    let options = EchoUpstreamOptions {
        mcp_path: flags.path,
        required_bearer_token: flags.require_bearer,
        allowed_hosts: flags.allowed_hosts,
        stateless: flags.stateless,
    };

    // Signal handlers exist before the listening line: a harness may send SIGTERM as soon as
    // it reads that line, and an unhandled SIGTERM would kill the process uncleanly.
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(error) => {
            eprintln!("echo-upstream: cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };

    let listener = match tokio::net::TcpListener::bind(&flags.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("echo-upstream: cannot listen on {}: {error}", flags.listen);
            return ExitCode::FAILURE;
        }
    };
    let address = match listener.local_addr() {
        Ok(address) => address,
        Err(error) => {
            eprintln!("echo-upstream: cannot read the bound address: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Test harnesses and the local setup wait for exactly this line.
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{}{address}", echo_upstream::LISTENING_LINE_PREFIX)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    drop(stdout);

    match echo_upstream::serve(listener, &options, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("echo-upstream: server error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A future that completes on SIGINT or SIGTERM; the handlers are installed on return.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

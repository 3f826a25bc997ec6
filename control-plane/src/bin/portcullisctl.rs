//! `portcullisctl`, the admin CLI of Portcullis. This file parses the command line, builds
//! a runtime, runs the command and turns its error into `error: <code>: <message>` and an
//! exit code; everything else lives in `portcullis_control_plane::cli`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use portcullis_control_plane::cli::{self, Cli, ProcessEnvironment};

fn main() -> ExitCode {
    // Usage errors are printed by clap, which exits with 2 like every other usage error.
    let cli = Cli::parse();
    // One thread is plenty for one request at a time.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: internal: {error:#}");
            return ExitCode::from(cli::error::exit_code::FAILURE);
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = runtime.block_on(cli::run(
        cli,
        &ProcessEnvironment,
        Box::new(std::io::stdin()),
        &mut out,
    ));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", error.report());
            ExitCode::from(error.exit_code())
        }
    }
}

//! The admin CLI (`portcullisctl`): every `AdminService` operation, with readable output.
//!
//! - [`args`]: the command line (clap derive), parsing only.
//! - [`document`]: the YAML document of `apply` and `export`, and its one conversion to
//!   and from `proto::ConfigState`.
//! - [`secret_source`]: where secrets come from (`env:`, `file:`, `stdin`, `value:`).
//! - [`client`]: endpoint, TLS, timeouts and the bearer token.
//! - [`commands`]: what each command does.
//! - [`output`]: tables, blocks and the plan of an apply.
//! - [`error`]: errors with their gRPC code and exit code.
//! - [`me`]: `portcullisctl me`, the user's own commands, over HTTP to a node with the
//!   user's gateway access token.
//!
//! The binary only parses, builds a runtime and calls [`run`]; the environment, stdin and
//! stdout are parameters so tests drive a command without touching the process.

use std::io::{Read, Write};

pub mod args;
pub mod client;
pub mod commands;
pub mod document;
pub mod error;
pub mod me;
pub mod output;
pub mod secret_source;

pub use args::Cli;
pub use error::CliError;
pub use secret_source::{Environment, ProcessEnvironment};

/// Runs a parsed command line to completion.
pub async fn run(
    cli: Cli,
    environment: &dyn Environment,
    stdin: Box<dyn Read + '_>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut session = commands::Session::new(cli.connection, environment, stdin, out);
    commands::run(cli.command, &mut session).await
}

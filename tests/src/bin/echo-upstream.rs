//! `echo-upstream`: test and demo MCP server that reports the headers and credential it
//! received. See `portcullis_tests::echo_upstream` for the tools.

use std::process::ExitCode;

use clap::Parser;
use portcullis_tests::echo_upstream::EchoUpstream;
use portcullis_tests::upstream_server::{UpstreamFlags, run_upstream_binary};

#[derive(Debug, Parser)]
#[command(name = "echo-upstream", version, about)]
struct Flags {
    #[command(flatten)]
    upstream: UpstreamFlags,
}

#[tokio::main]
async fn main() -> ExitCode {
    let flags = Flags::parse();
    run_upstream_binary("echo-upstream", &flags.upstream, EchoUpstream::new).await
}

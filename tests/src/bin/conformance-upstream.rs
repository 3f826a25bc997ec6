//! `conformance-upstream`: test MCP server with the fixtures of the MCP conformance suite's
//! server scenarios. See `portcullis_tests::conformance_upstream`.

use std::process::ExitCode;

use clap::Parser;
use portcullis_tests::conformance_upstream::ConformanceUpstream;
use portcullis_tests::upstream_server::{UpstreamFlags, run_upstream_binary};

#[derive(Debug, Parser)]
#[command(name = "conformance-upstream", version, about)]
struct Flags {
    #[command(flatten)]
    upstream: UpstreamFlags,
}

#[tokio::main]
async fn main() -> ExitCode {
    let flags = Flags::parse();
    run_upstream_binary(
        "conformance-upstream",
        &flags.upstream,
        ConformanceUpstream::new,
    )
    .await
}

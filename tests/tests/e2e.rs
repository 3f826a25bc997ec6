//! End-to-end tests: real processes on loopback, real MCP clients and servers.
//!
//! Needs `tests/run.sh setup` (npm and pip test dependencies in `tests/.deps`) and
//! `cargo build --workspace --bins`; `tests/run.sh` does both, then runs this.

mod conformance_baselines;
mod harness;
mod node_clients;
mod python_client;

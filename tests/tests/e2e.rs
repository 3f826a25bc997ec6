//! End-to-end tests: real processes on loopback, real MCP clients and servers.
//!
//! Needs `tests/run.sh setup` (npm and pip test dependencies in `tests/.deps`) and
//! `cargo build --workspace --bins`; `tests/run.sh` does both, then runs this.
//!
//! Modules named `gateway_*` put Portcullis itself in the path: a control plane and nodes
//! as child processes (`portcullis_tests::gateway`), configured through the admin API.

mod conformance_baselines;
mod deploy;
mod fuzz_regressions;
mod gateway_app_auth;
mod gateway_audit;
mod gateway_clients;
mod gateway_conformance;
mod gateway_examples;
mod gateway_fleet;
mod gateway_linking;
mod gateway_oauth_client;
mod gateway_outbound_headers;
mod gateway_self_service;
mod gateway_sso;
mod gateway_telemetry;
mod gateway_tls;
mod harness;
mod idp;
mod local_deploy;
mod node_clients;
mod python_client;

//! End-to-end test harness: real processes on loopback ports, real MCP clients and servers.
//!
//! - [`process`]: start a program, wait for its `... listening on <addr>` line, capture its
//!   output to files, kill it on drop or on demand (`kill -9` for crash tests).
//! - [`paths`]: find workspace binaries next to the test executable and the test
//!   dependencies `tests/run.sh setup` installed in `tests/.deps`.
//! - [`upstreams`]: `echo-upstream` and `@modelcontextprotocol/server-everything`.
//! - [`python_client`]: the official Python MCP SDK as a client.
//! - [`node_clients`]: the MCP Inspector CLI and `mcp-remote-client` as clients.
//! - [`conformance`]: the MCP conformance suite and its baselines.
//! - [`idp`]: the test identity provider (npm `oidc-provider`): OIDC, OAuth, client
//!   credentials, token exchange, automatic login, counters under `/test/`.
//! - [`browser`]: the headless stand-in browser for OAuth flows (also `BROWSER` for clients).
//! - [`gateway`]: Portcullis itself as real processes: a control plane, nodes, the admin
//!   API, and the files they share.
//! - [`linking`]: per-user app-auth pieces: the fleet's public URL pinned to one node, a
//!   gateway access token through the browser, connect links.
//! - [`mcp_http`]: a small MCP Streamable HTTP probe for tests that make many calls.
//! - [`echo_upstream`], [`conformance_upstream`]: the test upstream servers themselves (their
//!   binaries are thin wrappers around [`upstream_server`]).
//! - [`fuzz`]: the fuzz targets of the gateway's parsers and validators, shared by the
//!   cargo-fuzz crate in `tests/fuzz/` and the stable tests that replay its corpus.

pub mod browser;
pub mod conformance;
pub mod conformance_upstream;
pub mod echo_upstream;
pub mod fuzz;
pub mod gateway;
pub mod idp;
pub mod linking;
pub mod mcp_http;
pub mod node_clients;
pub mod otlp;
pub mod paths;
pub mod process;
pub mod python_client;
pub mod upstream_server;
pub mod upstreams;

pub use gateway::{ControlPlane, Gateway, GatewayFiles, Node};
pub use process::{ChildProcess, scratch_dir};
pub use python_client::python_mcp_client;
pub use upstreams::{ConformanceUpstream, EchoUpstream, ServerEverything};

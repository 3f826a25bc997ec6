//! The Portcullis data-plane node.
//!
//! - [`config`]: command line and environment, validated in two steps.
//! - [`discovery`]: the xDS-style client that receives snapshots from the control plane.
//! - [`compiled`]: snapshots compiled for the request path, and the slot that swaps them.
//! - [`store`]: the last good snapshot on disk, sealed with the node state key.
//! - [`proxy`]: the MCP Streamable HTTP proxy pipeline and the health endpoints.
//! - [`jwt`]: JWT validation for agent authentication: JWKS keys, per-URL key caches,
//!   claim checks, the verified-token cache.
//! - [`oauth`]: Interactive SSO: the node as the MCP clients' OAuth 2.1 authorization
//!   server (login delegated to the identity provider by OIDC), and the validation of the
//!   access tokens it issues.
//! - [`record`]: the structured record every proxied request produces.
//! - [`audit`]: records as audit events: the on-disk spool and the delivery to the control
//!   plane.
//! - [`metrics`], [`admin`]: Prometheus metrics and the admin listener that serves them.
//! - [`tokens`]: tokens the node obtains itself (client credentials, token exchange), cached
//!   with single-flight refresh.
//! - [`vault`], [`connect`]: per-user OAuth 2.1 Authorization app auth: users' upstream
//!   tokens cached from the control plane's vault, the "connect your account" prompt, the
//!   account-linking flow and users' own list of links.
//! - [`tls`]: TLS of the listeners and the node's client certificate for the control plane.
//! - [`rate_limit`]: per-client rate limits of the OAuth and account-linking endpoints.
//! - [`node`]: startup, serving and graceful shutdown.

pub mod admin;
pub mod audit;
pub mod compiled;
pub mod config;
pub mod connect;
pub mod discovery;
pub mod jwt;
pub mod metrics;
pub mod node;
pub mod oauth;
pub mod proxy;
pub mod rate_limit;
pub mod record;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod vault;

pub use proxy::{NodeState, router};

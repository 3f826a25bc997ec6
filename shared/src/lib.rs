//! The domain model both planes agree on: MCP servers, agent and app authentication,
//! outbound headers, the catalogs, compiled snapshots, secrets, validation and error codes.
//!
//! Proto types from `portcullis-proto` are converted into these types exactly once, in
//! [`convert`], and every conversion validates. Code past that boundary can trust what it
//! holds: a [`names::ServerName`] is a slug, a [`names::HeaderName`] is an HTTP token, a
//! JWKS blob parsed.

pub mod config;
pub mod convert;
pub mod crypto;
pub mod error;
pub mod gateway;
pub mod glob;
#[cfg(feature = "http-server")]
pub mod http_server;
pub mod names;
pub mod secret;
pub mod snapshot;
#[cfg(feature = "telemetry")]
pub mod telemetry;
pub mod template;
pub mod validate;

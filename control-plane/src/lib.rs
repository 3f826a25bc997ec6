//! The Portcullis control plane: the configuration event log and its projection, the admin
//! API, snapshot distribution to nodes, and the `portcullisctl` CLI.

pub mod access;
pub mod admin;
pub mod apply;
pub mod audit;
pub mod cli;
pub mod commands;
pub mod compile;
pub mod discovery;
pub mod engine;
pub mod events;
pub mod fleet;
pub mod keys;
pub mod observability;
pub mod oidc;
pub mod runtime;
pub mod secrets;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;
pub mod vault;

//! Integration tests of the control plane: the event store through the engine, the admin
//! API over real gRPC connections, and crash recovery of the real binary.

mod admin_api;
mod audit;
mod common;
mod crash;
mod event_store;
mod gateway;
mod oidc;
mod rotation;
mod secrets_at_rest;
mod tls;
mod vault;

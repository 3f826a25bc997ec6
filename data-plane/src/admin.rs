//! The admin listener (`--admin-listen`): `/metrics` (Prometheus), `/healthz` and `/readyz`,
//! for the operator's network only. The public listener keeps its own `/healthz` and
//! `/readyz` for load balancers; metrics are never served there.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue};
use prometheus_client::registry::Registry;

use crate::proxy::NodeState;

/// What the admin endpoints read.
pub struct AdminState {
    pub node: Arc<NodeState>,
    pub registry: Registry,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    let accept = headers.get(ACCEPT).and_then(|value| value.to_str().ok());
    let (content_type, body) =
        portcullis_shared::telemetry::metrics::render(&state.registry, accept);
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn healthz(State(state): State<Arc<AdminState>>) -> Response {
    crate::proxy::healthz(State(state.node.clone())).await
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    crate::proxy::readyz(State(state.node.clone())).await
}

//! The control plane's metrics, request spans and small HTTP listener (`--http-listen`):
//! `/metrics` (Prometheus), `/healthz` (the process serves HTTP) and `/readyz` (the gRPC
//! listener is serving).
//!
//! - Every gRPC call runs in a `grpc_request` span carrying a fresh `request_id` and the
//!   method, so the logs of an admin call read end to end and, with `--otlp-endpoint`, the
//!   call is exported as a trace. Snapshot pushes to nodes have `snapshot_push` spans.
//! - Counters that deep modules bump (snapshot pushes, token refreshes) live in one
//!   process-wide [`Metrics`]; the fleet, the snapshot version and the audit trail are read
//!   at scrape time.
//!
//! Labels are bounded: `method` is one of the methods the served protos define (anything
//! else is `other`), `code` a gRPC status code, `node_id` a node connected right now.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::sync::watch;
use tracing::Instrument;

use crate::audit::AuditLog;
use crate::compile::CompiledSnapshot;
use crate::fleet::Fleet;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 30 s.
    Histogram::new(exponential_buckets(0.00025, 2.0, 18))
}

/// The process-wide counters.
#[derive(Debug)]
pub struct Metrics {
    grpc_requests: Family<CallLabels, Counter>,
    grpc_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    snapshot_pushes: Counter,
    token_refreshes: Family<ResultLabels, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    grpc_requests: Family::default(),
    grpc_duration: Family::new_with_constructor(latency_histogram),
    snapshot_pushes: Counter::default(),
    token_refreshes: Family::default(),
});

/// A snapshot was sent to a node.
pub fn snapshot_pushed() {
    METRICS.snapshot_pushes.inc();
}

/// The vault refreshed a user's upstream token: `ok`, `broken` (the provider refused the
/// refresh token; the user must connect again) or `failed` (the provider could not be
/// reached or answered badly).
pub fn token_refreshed(result: &'static str) {
    METRICS
        .token_refreshes
        .get_or_create(&ResultLabels { result })
        .inc();
}

/// The gRPC paths the served protos define (`/package.Service/Method`).
pub fn known_grpc_methods() -> HashSet<String> {
    let mut methods = HashSet::new();
    for encoded in [
        portcullis_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        let Ok(set) = prost_types::FileDescriptorSet::decode(encoded) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                for method in service.method {
                    methods.insert(format!(
                        "/{package}.{service_name}/{}",
                        method.name.unwrap_or_default()
                    ));
                }
            }
        }
    }
    methods.insert("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".to_owned());
    methods
}

fn grpc_code_label(code: Option<&HeaderValue>) -> &'static str {
    const CODES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    // No `grpc-status` in the headers: the handler answered, the status comes in the
    // trailers, which for the unary calls here means OK.
    let Some(code) = code else {
        return "OK";
    };
    code.to_str()
        .ok()
        .and_then(|text| text.parse::<usize>().ok())
        .and_then(|index| CODES.get(index).copied())
        .unwrap_or("UNKNOWN")
}

/// A tower layer for the gRPC server: a span and metrics per call.
#[derive(Debug, Clone)]
pub struct GrpcObservabilityLayer {
    known: Arc<HashSet<String>>,
}

impl Default for GrpcObservabilityLayer {
    fn default() -> Self {
        Self {
            known: Arc::new(known_grpc_methods()),
        }
    }
}

impl<S> tower::Layer<S> for GrpcObservabilityLayer {
    type Service = GrpcObservability<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcObservability {
            inner,
            known: self.known.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcObservability<S> {
    inner: S,
    known: Arc<HashSet<String>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, RequestBody, ResponseBody> tower::Service<http::Request<RequestBody>>
    for GrpcObservability<S>
where
    S: tower::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RequestBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let path = request.uri().path();
        let method = if self.known.contains(path) {
            path.to_owned()
        } else {
            "other".to_owned()
        };
        let span = tracing::info_span!(
            "grpc_request",
            request_id = %uuid::Uuid::now_v7(),
            rpc.method = %method,
            otel.kind = "server",
            grpc.code = tracing::field::Empty,
        );
        // The ready service handles this call; a fresh clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let started = Instant::now();
        let future = {
            let _entered = span.enter();
            inner.call(request)
        };
        let call_span = span.clone();
        Box::pin(
            async move {
                let result = future.await;
                let code = match &result {
                    Ok(response) => grpc_code_label(response.headers().get("grpc-status")),
                    Err(_) => "UNAVAILABLE",
                };
                call_span.record("grpc.code", code);
                METRICS
                    .grpc_requests
                    .get_or_create(&CallLabels {
                        method: method.clone(),
                        code,
                    })
                    .inc();
                METRICS
                    .grpc_duration
                    .get_or_create(&MethodLabels { method })
                    .observe(started.elapsed().as_secs_f64());
                result
            }
            .instrument(span),
        )
    }
}

/// Fleet, snapshot and audit figures read at scrape time.
struct StateCollector {
    fleet: Arc<Fleet>,
    snapshots: watch::Receiver<Arc<CompiledSnapshot>>,
    audit: Arc<AuditLog>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCollector").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node_id: String,
}

fn encode_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    gauge.encode(metric)
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let latest = self.snapshots.borrow().version;
        encode_gauge(
            &mut encoder,
            "portcullis_control_plane_snapshot_version",
            "The newest snapshot version the control plane serves",
            i64::try_from(latest).unwrap_or(i64::MAX),
        )?;
        let nodes: Vec<_> = self
            .fleet
            .nodes()
            .into_iter()
            .filter(|node| node.connected)
            .collect();
        encode_gauge(
            &mut encoder,
            "portcullis_control_plane_nodes_connected",
            "Nodes with an open snapshot stream",
            nodes.len() as i64,
        )?;
        let mut metric = encoder.encode_descriptor(
            "portcullis_control_plane_node_snapshot_version",
            "The snapshot version each connected node acknowledged",
            None,
            MetricType::Gauge,
        )?;
        for node in nodes {
            let gauge = ConstGauge::new(i64::try_from(node.applied_version).unwrap_or(i64::MAX));
            gauge.encode(metric.encode_family(&NodeLabels {
                node_id: node.node_id,
            })?)?;
        }
        encode_gauge(
            &mut encoder,
            "portcullis_control_plane_audit_records",
            "Records in the audit trail (its last sequence number)",
            i64::try_from(self.audit.last_sequence()).unwrap_or(i64::MAX),
        )
    }
}

/// The registry `/metrics` renders.
pub fn registry(
    fleet: Arc<Fleet>,
    snapshots: watch::Receiver<Arc<CompiledSnapshot>>,
    audit: Arc<AuditLog>,
) -> Registry {
    let mut registry = Registry::default();
    registry.register(
        "portcullis_control_plane_grpc_requests",
        "gRPC calls by method and status code",
        METRICS.grpc_requests.clone(),
    );
    registry.register(
        "portcullis_control_plane_grpc_request_duration_seconds",
        "From a gRPC call's arrival until its response headers (streams: until they open)",
        METRICS.grpc_duration.clone(),
    );
    registry.register(
        "portcullis_control_plane_snapshot_pushes",
        "Snapshots sent to nodes",
        METRICS.snapshot_pushes.clone(),
    );
    registry.register(
        "portcullis_control_plane_token_refreshes",
        "Refreshes of users' upstream OAuth tokens by the vault, by result",
        METRICS.token_refreshes.clone(),
    );
    registry.register_collector(Box::new(StateCollector {
        fleet,
        snapshots,
        audit,
    }));
    registry
}

/// What the HTTP listener serves.
pub struct HttpState {
    pub registry: Registry,
    /// Set while the gRPC listener serves.
    pub serving: Arc<AtomicBool>,
}

/// `/metrics`, `/healthz`, `/readyz`.
pub fn http_router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    let accept = headers.get(ACCEPT).and_then(|value| value.to_str().ok());
    let (content_type, body) =
        portcullis_shared::telemetry::metrics::render(&state.registry, accept);
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn healthz() -> Response {
    axum::Json(serde_json::json!({ "status": "live" })).into_response()
}

async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    if state.serving.load(Ordering::Acquire) {
        axum::Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": "not_ready" })),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_come_from_the_protos() {
        let known = known_grpc_methods();
        assert!(known.contains("/portcullis.v1.AdminService/CreateServer"));
        assert!(known.contains("/portcullis.v1.AuditIngest/Deliver"));
        assert!(known.contains("/grpc.health.v1.Health/Check"));
        assert!(!known.contains("/portcullis.v1.AdminService/Anything"));
    }

    #[test]
    fn status_codes_are_named() {
        assert_eq!(grpc_code_label(None), "OK");
        assert_eq!(
            grpc_code_label(Some(&HeaderValue::from_static("16"))),
            "UNAUTHENTICATED"
        );
        assert_eq!(
            grpc_code_label(Some(&HeaderValue::from_static("99"))),
            "UNKNOWN"
        );
    }
}

//! The node's Prometheus metrics, served at `GET /metrics` on the admin listener
//! (`--admin-listen`), never on the public one: they name servers and count refusals by
//! reason, which is nobody's business but the operator's.
//!
//! Every label has a bounded set of values: `server` is a configured server's name (any
//! other path is `_unknown`), `outcome`, `reason` and `result` come from fixed lists, and
//! `status` is an HTTP status code.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::compiled::SnapshotSlot;
use crate::record::RequestRecord;

/// The `server` label of requests to a path that named no configured server.
pub const UNKNOWN_SERVER: &str = "_unknown";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    server: String,
    outcome: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    server: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthFailureLabels {
    server: String,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    budget: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 65 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// What the request path counts. Cheap to update: atomics behind a hash map per label set.
#[derive(Debug)]
pub struct NodeMetrics {
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<ServerLabels, Histogram, fn() -> Histogram>,
    auth_failures: Family<AuthFailureLabels, Counter>,
    token_refreshes: Family<ResultLabels, Counter>,
    audit_refused_requests: Family<ResultLabels, Counter>,
    rate_limited: Family<BudgetLabels, Counter>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            auth_failures: Family::default(),
            token_refreshes: Family::default(),
            audit_refused_requests: Family::default(),
            rate_limited: Family::default(),
        }
    }
}

impl NodeMetrics {
    /// Counts one finished request.
    pub fn observe(&self, record: &RequestRecord) {
        // `app_auth_kind` is set once the route found a configured server.
        let server = if record.app_auth_kind.is_some() {
            record.server.clone()
        } else {
            UNKNOWN_SERVER.to_owned()
        };
        self.requests
            .get_or_create(&RequestLabels {
                server: server.clone(),
                outcome: record.outcome.as_str(),
                status: record.status,
            })
            .inc();
        self.request_duration
            .get_or_create(&ServerLabels {
                server: server.clone(),
            })
            .observe(record.total_micros as f64 / 1e6);
        if let Some(reason) = record.agent_auth_rejection {
            self.auth_failures
                .get_or_create(&AuthFailureLabels { server, reason })
                .inc();
        }
    }

    /// Counts one refresh-token grant at the token endpoint (`ok` or the OAuth error code).
    pub fn token_refresh(&self, result: &'static str) {
        self.token_refreshes
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Counts a request refused because the audit spool could not take its event.
    pub fn audit_refused(&self, reason: &'static str) {
        self.audit_refused_requests
            .get_or_create(&ResultLabels { result: reason })
            .inc();
    }

    /// Counts a request refused (429) by a rate limit of the OAuth and account-linking
    /// endpoints (`register`, `token` or `browser`).
    pub fn rate_limited(&self, budget: &'static str) {
        self.rate_limited
            .get_or_create(&BudgetLabels { budget })
            .inc();
    }

    /// Registers these metrics in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "portcullis_node_requests",
            "Requests to /mcp/{server}, by server, outcome and HTTP status",
            self.requests.clone(),
        );
        registry.register(
            "portcullis_node_request_duration_seconds",
            "From the start of a request until its response body ended",
            self.request_duration.clone(),
        );
        registry.register(
            "portcullis_node_auth_failures",
            "Requests refused by agent authentication, by server and reason",
            self.auth_failures.clone(),
        );
        registry.register(
            "portcullis_node_token_refreshes",
            "Refresh-token grants at the token endpoint (Interactive SSO), by result",
            self.token_refreshes.clone(),
        );
        registry.register(
            "portcullis_audit_refused_requests",
            "Requests refused (503) because the audit spool could not take their event",
            self.audit_refused_requests.clone(),
        );
        registry.register(
            "portcullis_node_rate_limited_requests",
            "Requests to the OAuth and account-linking endpoints refused (429) by a per-client rate limit, by budget",
            self.rate_limited.clone(),
        );
    }
}

/// The snapshot version the node serves, read at scrape time.
#[derive(Debug)]
pub struct SnapshotCollector {
    pub snapshots: Arc<SnapshotSlot>,
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let version = self.snapshots.version();
        let gauge = ConstGauge::new(version.map_or(0, |version| version as i64));
        let metric = encoder.encode_descriptor(
            "portcullis_node_snapshot_version",
            "The configuration snapshot version this node serves (0: none yet)",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// Writes one unlabelled gauge.
pub fn encode_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    gauge.encode(metric)
}

/// Writes one unlabelled counter (the `_total` suffix is added).
pub fn encode_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let counter = ConstCounter::new(value);
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    counter.encode(metric)
}

/// The node's registry: request metrics, the snapshot version, and whatever `extra` adds
/// (the audit spool's collector).
pub fn registry(
    metrics: &NodeMetrics,
    snapshots: Arc<SnapshotSlot>,
    extra: Vec<Box<dyn Collector>>,
) -> Registry {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    registry.register_collector(Box::new(SnapshotCollector { snapshots }));
    for collector in extra {
        registry.register_collector(collector);
    }
    registry
}

//! Logs and traces of the node, set up by the shared telemetry module: log lines on stderr
//! (stdout carries only the listening lines), spans exported over OTLP/gRPC when an
//! endpoint is configured, with the node id as `service.instance.id`.

use portcullis_shared::telemetry::{TelemetryConfig, init as init_shared};
pub use portcullis_shared::telemetry::{TelemetryError, TelemetryGuard};

use crate::config::NodeConfig;

/// Installs the global subscriber. Call it inside the Tokio runtime: the OTLP exporter's
/// gRPC client runs on it.
pub fn init(config: &NodeConfig) -> Result<TelemetryGuard, TelemetryError> {
    init_shared(TelemetryConfig {
        service_name: "portcullis-node",
        service_instance_id: Some(config.node_id.clone()),
        log_format: config.log_format,
        otlp_endpoint: config.otlp_endpoint.clone(),
    })
}

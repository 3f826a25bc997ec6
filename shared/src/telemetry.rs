//! Telemetry both binaries set up the same way: log lines (text or JSON, on stderr),
//! OpenTelemetry traces exported over OTLP/gRPC when an endpoint is configured, and the
//! rendering of a Prometheus registry for a `/metrics` endpoint.
//!
//! Behind the `telemetry` cargo feature, so the domain model does not pull an exporter into
//! every crate that only needs the types.
//!
//! What leaves the process: every span at `info` or above of the Portcullis crates, with its
//! fields, and the events logged inside it (as span events). The same rule as for log lines
//! applies: no field ever holds a secret. HTTP, gRPC and exporter internals are not traced,
//! so exporting a span never creates another one.

use std::io::IsTerminal;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use url::Url;

/// The standard variable naming the OTLP endpoint; `--otlp-endpoint` wins over it.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// How long one export may take before the batch is dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Spans and events of these crates are never exported: the exporter's own traffic would
/// otherwise produce spans about exporting spans.
const NOT_EXPORTED: &str = "h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off,reqwest=off";

/// How log lines are written (always to stderr; stdout carries only the listening lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object per line, with the fields of the current span (so lines logged while
    /// serving a request carry its `request_id`).
    Json,
}

impl LogFormat {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("must be text or json, got {other:?}")),
        }
    }
}

/// Checks an OTLP/gRPC endpoint: an http or https URL with a host, no credentials in it.
pub fn parse_otlp_endpoint(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|error| format!("not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("scheme must be http or https".to_owned());
    }
    if url.host_str().is_none() {
        return Err("missing host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a username or password".to_owned());
    }
    Ok(url)
}

/// What a binary tells [`init`].
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `service.name` of the exported spans, e.g. `portcullis-node`.
    pub service_name: &'static str,
    /// `service.instance.id`, e.g. the node id.
    pub service_instance_id: Option<String>,
    pub log_format: LogFormat,
    /// Export spans there (OTLP over gRPC); `None`: no export.
    pub otlp_endpoint: Option<Url>,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot set up the OTLP exporter: {0}")]
    Exporter(String),
    #[error("a global subscriber is already installed")]
    AlreadyInstalled,
}

/// Keeps the exporter alive; [`TelemetryGuard::shutdown`] exports what is still queued.
#[derive(Debug)]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports the spans still queued (bounded by the export timeout) and stops exporting.
    pub fn shutdown(mut self) {
        if let Some(provider) = self.tracer_provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("cannot flush the last spans: {error}");
        }
    }

    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.tracer_provider.is_some()
    }
}

/// The log filter: `RUST_LOG`, else `info`.
fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber: log lines on stderr and, with an endpoint, a span
/// exporter. Call it inside the Tokio runtime when exporting: the gRPC client runs on it.
/// The exporter batches spans in a bounded queue (2,048 spans, the SDK default; spans
/// beyond it are dropped, never waited for) and sends them from its own thread.
pub fn init(config: TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let ansi = std::io::stderr().is_terminal();
    let log_layer = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .with_filter(log_filter())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(log_filter())
            .boxed(),
    };
    let Some(endpoint) = config.otlp_endpoint else {
        tracing_subscriber::registry()
            .with(log_layer)
            .try_init()
            .map_err(|_| TelemetryError::AlreadyInstalled)?;
        return Ok(TelemetryGuard {
            tracer_provider: None,
        });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.as_str())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
    let mut resource = Resource::builder().with_service_name(config.service_name);
    if let Some(instance) = config.service_instance_id {
        resource = resource.with_attribute(KeyValue::new("service.instance.id", instance));
    }
    resource = resource.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    let provider = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer(config.service_name);
    let export_filter = EnvFilter::try_new(format!("info,{NOT_EXPORTED}"))
        .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
    let trace_layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(export_filter);
    tracing_subscriber::registry()
        .with(log_layer)
        .with(trace_layer)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard {
        tracer_provider: Some(provider),
    })
}

/// The two text formats `/metrics` offers.
pub mod metrics {
    use prometheus_client::registry::Registry;

    /// OpenMetrics 1.0, what Prometheus asks for first.
    pub const OPENMETRICS_CONTENT_TYPE: &str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";
    /// The classic Prometheus text format, for every other client.
    pub const PROMETHEUS_CONTENT_TYPE: &str =
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

    /// Renders `registry` in the format the `Accept` header prefers: OpenMetrics when it
    /// names `application/openmetrics-text`, else the Prometheus text format 0.0.4.
    /// Returns the content type and the body.
    pub fn render(registry: &Registry, accept: Option<&str>) -> (&'static str, String) {
        let mut body = String::new();
        let openmetrics =
            accept.is_some_and(|accept| accept.contains("application/openmetrics-text"));
        // Writing into a String cannot fail; a collector that fails ends the output early,
        // which the scraper reports as a parse error.
        if openmetrics {
            let _ = prometheus_client::encoding::text::encode(&mut body, registry);
            (OPENMETRICS_CONTENT_TYPE, body)
        } else {
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut body, registry);
            (PROMETHEUS_CONTENT_TYPE, body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        assert!(parse_otlp_endpoint("http://127.0.0.1:4317").is_ok());
        assert!(parse_otlp_endpoint("https://collector.example.com").is_ok());
        assert!(parse_otlp_endpoint("collector:4317").is_err());
        assert!(parse_otlp_endpoint("ftp://collector").is_err());
        assert!(parse_otlp_endpoint("http://user:pw@collector").is_err());
    }

    #[test]
    fn log_formats_parse() {
        assert_eq!(LogFormat::parse("json"), Ok(LogFormat::Json));
        assert_eq!(LogFormat::parse("text"), Ok(LogFormat::Text));
        assert!(LogFormat::parse("yaml").is_err());
    }

    #[test]
    fn metrics_render_in_both_formats() {
        use prometheus_client::metrics::counter::Counter;
        let mut registry = prometheus_client::registry::Registry::default();
        let counter: Counter = Counter::default();
        registry.register("things", "Things seen", counter.clone());
        counter.inc();
        let (content_type, body) = metrics::render(&registry, None);
        assert_eq!(content_type, metrics::PROMETHEUS_CONTENT_TYPE);
        assert!(body.contains("things_total 1"), "{body}");
        assert!(!body.contains("# EOF"));
        let (content_type, body) = metrics::render(
            &registry,
            Some("application/openmetrics-text;version=1.0.0"),
        );
        assert_eq!(content_type, metrics::OPENMETRICS_CONTENT_TYPE);
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
}

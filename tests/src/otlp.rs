//! A real OTLP/gRPC trace receiver on a loopback port, built on the OpenTelemetry protos
//! (`opentelemetry-proto`): what Portcullis exports with `--otlp-endpoint` arrives here,
//! as a collector would receive it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

/// How often a wait for spans looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// One received span, flattened.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.name` of the exporting process.
    pub service: String,
    pub name: String,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Vec<u8>,
    pub attributes: BTreeMap<String, String>,
    /// The events logged inside the span, with their attributes.
    pub events: Vec<(String, BTreeMap<String, String>)>,
}

#[derive(Debug, Default)]
struct Received {
    requests: Vec<ExportTraceServiceRequest>,
}

#[derive(Debug, Clone, Default)]
struct Collector(Arc<Mutex<Received>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .requests
            .push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The receiver; stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    address: SocketAddr,
    collector: Collector,
    server: tokio::task::JoinHandle<()>,
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(values: &[KeyValue]) -> BTreeMap<String, String> {
    values
        .iter()
        .map(|pair| (pair.key.clone(), text(pair.value.as_ref())))
        .collect()
}

impl OtlpReceiver {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the OTLP receiver")?;
        let address = listener.local_addr()?;
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Ok(Self {
            address,
            collector,
            server,
        })
    }

    /// `http://127.0.0.1:<port>`, for `--otlp-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let received = self
            .collector
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut spans = Vec::new();
        for request in &received.requests {
            for resource_spans in &request.resource_spans {
                let resource = resource_spans
                    .resource
                    .as_ref()
                    .map(|resource| attributes(&resource.attributes))
                    .unwrap_or_default();
                let service = resource.get("service.name").cloned().unwrap_or_default();
                for scope_spans in &resource_spans.scope_spans {
                    for span in &scope_spans.spans {
                        spans.push(ReceivedSpan {
                            service: service.clone(),
                            name: span.name.clone(),
                            trace_id: span.trace_id.clone(),
                            span_id: span.span_id.clone(),
                            parent_span_id: span.parent_span_id.clone(),
                            attributes: attributes(&span.attributes),
                            events: span
                                .events
                                .iter()
                                .map(|event| (event.name.clone(), attributes(&event.attributes)))
                                .collect(),
                        });
                    }
                }
            }
        }
        spans
    }

    /// Everything received, as text (for scanning it for secrets).
    pub fn raw_text(&self) -> String {
        let received = self
            .collector
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        format!("{:?}", received.requests)
    }

    /// Waits until a received span satisfies `matches`; returns it.
    pub async fn wait_for_span(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&ReceivedSpan) -> bool,
    ) -> anyhow::Result<ReceivedSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(span) = self.spans().into_iter().find(|span| matches(span)) {
                return Ok(span);
            }
            if Instant::now() >= deadline {
                let names: Vec<String> = self
                    .spans()
                    .iter()
                    .map(|span| format!("{}:{}", span.service, span.name))
                    .collect();
                bail!("no span {what} within {timeout:?}; received: {names:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

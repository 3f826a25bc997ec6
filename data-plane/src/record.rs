//! One structured record per proxied request: who called which server and tool, with which
//! credential kind, and how it ended. Records are typed values handed to a [`RecordSink`];
//! the default sink writes a `tracing` event, and an audit pipeline can plug in its own.
//!
//! A record never holds a secret or a header value: only names, kinds, codes and numbers.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portcullis_shared::error::ErrorCode;
use serde::Serialize;
use uuid::Uuid;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The upstream answered and its whole response reached the caller.
    Completed,
    /// The gateway refused the request before sending it upstream.
    Rejected,
    /// The upstream could not be reached or did not answer in time.
    UpstreamFailed,
    /// The upstream answered, then its response stream broke or went silent too long.
    UpstreamStreamFailed,
    /// The caller went away before the response was complete.
    ClientDisconnected,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Rejected => "rejected",
            Outcome::UpstreamFailed => "upstream_failed",
            Outcome::UpstreamStreamFailed => "upstream_stream_failed",
            Outcome::ClientDisconnected => "client_disconnected",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRecord {
    pub request_id: Uuid,
    pub node_id: Arc<str>,
    pub started_at_unix_ms: u64,
    /// The snapshot the request was served with (`None` before any snapshot).
    pub snapshot_version: Option<u64>,
    /// The server name from the path, also when it named no configured server.
    pub server: String,
    pub http_method: String,
    /// JSON-RPC methods in the body, in order (several for a batch).
    pub jsonrpc_methods: Vec<String>,
    /// Tools named by `tools/call` requests in the body.
    pub tool_names: Vec<String>,
    /// The verified subject (`sub`) of the caller's token, or "anonymous". Never the token.
    pub caller: String,
    /// Whether `caller` comes from a verified token.
    pub caller_verified: bool,
    /// Why agent authentication refused the caller's token (`TokenRejection::code`).
    pub agent_auth_rejection: Option<&'static str>,
    /// Whether the caller sent an `Authorization` header (unverified under passthrough).
    pub caller_presented_credential: bool,
    /// `AppAuth::kind_name` of the server, once the server is known.
    pub app_auth_kind: Option<&'static str>,
    /// The additional outbound headers applied to the upstream request, by name and
    /// pattern; never a value. Empty when none are configured or the request was refused
    /// before they were applied.
    pub outbound_headers: Vec<AppliedHeader>,
    pub outcome: Outcome,
    pub error_code: Option<ErrorCode>,
    /// The status the caller got.
    pub status: u16,
    pub upstream_status: Option<u16>,
    /// From the start of the request until the response head was ready.
    pub response_head_ms: u64,
    /// From the start of the request until the response body ended.
    pub total_ms: u64,
}

/// An additional outbound header as records name it: the header and its pattern
/// (`OutboundSource::kind_name`: `service_token`, `forward_caller_token`, `on_behalf_of`,
/// `vault_credential`, `caller_identity`, `custom`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppliedHeader {
    pub name: String,
    pub kind: &'static str,
}

/// `name:kind` pairs joined with `,`, for log lines.
pub fn applied_headers_text(headers: &[AppliedHeader]) -> String {
    headers
        .iter()
        .map(|header| format!("{}:{}", header.name, header.kind))
        .collect::<Vec<_>>()
        .join(",")
}

/// Where records go. Called once per request, on the request's task or where its response
/// body ends; implementations must not block.
pub trait RecordSink: Send + Sync + 'static {
    fn record(&self, record: RequestRecord);
}

/// Writes each record as one `tracing` event with a field per column.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingRecordSink;

impl RecordSink for TracingRecordSink {
    fn record(&self, record: RequestRecord) {
        tracing::info!(
            target: "portcullis::request",
            request_id = %record.request_id,
            node_id = %record.node_id,
            snapshot_version = record.snapshot_version,
            server = %record.server,
            http_method = %record.http_method,
            jsonrpc_method = %record.jsonrpc_methods.join(","),
            tool = %record.tool_names.join(","),
            caller = %record.caller,
            caller_verified = record.caller_verified,
            agent_auth_rejection = record.agent_auth_rejection.unwrap_or(""),
            caller_presented_credential = record.caller_presented_credential,
            credential_kind = record.app_auth_kind.unwrap_or(""),
            outbound_headers = %applied_headers_text(&record.outbound_headers),
            outcome = record.outcome.as_str(),
            error_code = record.error_code.map(ErrorCode::as_str).unwrap_or(""),
            status = record.status,
            upstream_status = record.upstream_status,
            response_head_ms = record.response_head_ms,
            total_ms = record.total_ms,
            "mcp request"
        );
    }
}

/// A record being filled in as the request moves through the pipeline.
pub struct RecordBuilder {
    record: RequestRecord,
    started: Instant,
    sink: Arc<dyn RecordSink>,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl RecordBuilder {
    pub fn start(
        sink: Arc<dyn RecordSink>,
        node_id: Arc<str>,
        snapshot_version: Option<u64>,
        server: &str,
        http_method: &http::Method,
    ) -> Self {
        let started_at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(millis)
            .unwrap_or(0);
        Self {
            record: RequestRecord {
                request_id: Uuid::now_v7(),
                node_id,
                started_at_unix_ms,
                snapshot_version,
                server: server.chars().take(128).collect(),
                http_method: http_method.as_str().to_owned(),
                jsonrpc_methods: Vec::new(),
                tool_names: Vec::new(),
                caller: "anonymous".to_owned(),
                caller_verified: false,
                agent_auth_rejection: None,
                caller_presented_credential: false,
                app_auth_kind: None,
                outbound_headers: Vec::new(),
                outcome: Outcome::Rejected,
                error_code: None,
                status: 0,
                upstream_status: None,
                response_head_ms: 0,
                total_ms: 0,
            },
            started: Instant::now(),
            sink,
        }
    }

    pub fn request_id(&self) -> Uuid {
        self.record.request_id
    }

    /// Fields the pipeline steps fill in.
    pub fn fields(&mut self) -> &mut RequestRecord {
        &mut self.record
    }

    /// Marks the response head as sent with `status`.
    pub fn response_head(&mut self, status: u16, error_code: Option<ErrorCode>) {
        self.record.status = status;
        self.record.error_code = error_code;
        self.record.response_head_ms = millis(self.started.elapsed());
    }

    /// Hands the record to the sink.
    pub fn finish(mut self, outcome: Outcome) {
        self.record.outcome = outcome;
        self.record.total_ms = millis(self.started.elapsed());
        self.sink.record(self.record);
    }
}

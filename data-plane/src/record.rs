//! One structured record per proxied request: who called which server and tool, with which
//! credential kind, and how it ended. Records are typed values handed to a [`RecordSink`];
//! the default sink writes a `tracing` event, the node's sink also spools an audit event
//! (`crate::audit`).
//!
//! A sink can make a request wait: [`RecordSink::admit`] at the start (room for its
//! record, or a 503), and the [`Durability`] of [`RecordBuilder::finish_durably`], which the
//! proxy awaits before the last byte of the response goes out.
//!
//! A record never holds a secret or a header value: only names, kinds, codes and numbers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
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
    /// The `email` claim of the caller's verified token.
    pub caller_email: Option<String>,
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
    /// Which credential of that kind was used (an app id, a credential id), when the kind
    /// has several; never its value. Unset for the server's own static credential.
    pub credential_id: Option<String>,
    /// Whether the caller's own credential went upstream (App Auth Passthrough, or an
    /// outbound header forwarding the caller's token).
    pub caller_credential_forwarded: bool,
    /// The request was refused because the audit spool could not take its event: the
    /// record is logged and counted, and not spooled.
    pub audit_unavailable: bool,
    pub outcome: Outcome,
    pub error_code: Option<ErrorCode>,
    /// The status the caller got.
    pub status: u16,
    pub upstream_status: Option<u16>,
    /// From the start of the request until the response head was ready.
    pub response_head_ms: u64,
    /// From the start of the request until the response body ended.
    pub total_ms: u64,
    /// The same, in microseconds.
    pub total_micros: u64,
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

    /// Called when a request starts: room for its record. An error refuses the request
    /// (503) before anything else happens. The default admits every request.
    fn admit(&self) -> Result<Admission, SinkUnavailable> {
        Ok(Admission::none())
    }

    /// Takes the record of a request admitted with `admission`. The returned [`Durability`]
    /// resolves once the record is as durable as the sink makes it; an error means the
    /// response must not complete. The default records and is durable at once.
    fn record_admitted(&self, record: RequestRecord, admission: Admission) -> Durability {
        drop(admission);
        self.record(record);
        Durability::ready()
    }

    /// Whether the sink can take records at all (`/readyz`). The default: always.
    fn ready(&self) -> Result<(), SinkUnavailable> {
        Ok(())
    }
}

/// Room a sink promised for one request's record, held until the record is taken.
#[derive(Debug, Default)]
pub struct Admission(pub Option<crate::audit::spool::Reservation>);

impl Admission {
    pub fn none() -> Self {
        Self(None)
    }
}

/// Why a sink cannot take records now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SinkUnavailable {
    /// The audit spool is full (refuse policy).
    #[error("the audit spool is full")]
    SpoolFull,
    /// The audit spool failed (a write or sync error).
    #[error("the audit spool failed")]
    SpoolFailed,
}

impl SinkUnavailable {
    /// The stable reason, as error bodies and logs carry it.
    pub fn reason(self) -> &'static str {
        match self {
            SinkUnavailable::SpoolFull => "audit_spool_full",
            SinkUnavailable::SpoolFailed => "audit_spool_failed",
        }
    }
}

/// Resolves once a record is durable; an error means it could not be made durable and the
/// response it belongs to must not complete.
pub struct Durability(Option<DurabilityFuture>);

type DurabilityFuture = Pin<Box<dyn Future<Output = Result<(), SinkUnavailable>> + Send>>;

impl Durability {
    pub fn ready() -> Self {
        Self(None)
    }

    pub fn failed(error: SinkUnavailable) -> Self {
        Self(Some(Box::pin(std::future::ready(Err(error)))))
    }

    pub fn waiting(
        future: impl Future<Output = Result<(), SinkUnavailable>> + Send + 'static,
    ) -> Self {
        Self(Some(Box::pin(future)))
    }
}

impl std::fmt::Debug for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durability")
            .field("waiting", &self.0.is_some())
            .finish()
    }
}

impl Future for Durability {
    type Output = Result<(), SinkUnavailable>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.0.as_mut() {
            None => Poll::Ready(Ok(())),
            Some(future) => future.as_mut().poll(cx),
        }
    }
}

/// Writes each record as one `tracing` event with a field per column.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingRecordSink;

impl RecordSink for TracingRecordSink {
    fn record(&self, record: RequestRecord) {
        Self::log(&record);
    }
}

impl TracingRecordSink {
    /// The log line of one record.
    pub fn log(record: &RequestRecord) {
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
            caller_email = record.caller_email.as_deref().unwrap_or(""),
            caller_verified = record.caller_verified,
            agent_auth_rejection = record.agent_auth_rejection.unwrap_or(""),
            caller_presented_credential = record.caller_presented_credential,
            credential_kind = record.app_auth_kind.unwrap_or(""),
            outbound_headers = applied_headers_text(&record.outbound_headers).as_str(),
            credential_id = record.credential_id.as_deref().unwrap_or(""),
            caller_credential_forwarded = record.caller_credential_forwarded,
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
    admission: Admission,
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
                caller_email: None,
                caller_verified: false,
                agent_auth_rejection: None,
                caller_presented_credential: false,
                app_auth_kind: None,
                outbound_headers: Vec::new(),
                credential_id: None,
                caller_credential_forwarded: false,
                audit_unavailable: false,
                outcome: Outcome::Rejected,
                error_code: None,
                status: 0,
                upstream_status: None,
                response_head_ms: 0,
                total_ms: 0,
                total_micros: 0,
            },
            started: Instant::now(),
            sink,
            admission: Admission::none(),
        }
    }

    /// Asks the sink for room for this request's record (see [`RecordSink::admit`]).
    pub fn admit(&mut self) -> Result<(), SinkUnavailable> {
        self.admission = self.sink.admit()?;
        Ok(())
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

    /// Hands the record to the sink without waiting for it to be durable: for requests
    /// whose caller gets no complete response (refusals wait, see
    /// [`Self::finish_durably`]).
    pub fn finish(self, outcome: Outcome) {
        // The record is taken now; only the wait is skipped.
        drop(self.finish_durably(outcome));
    }

    /// Hands the record to the sink; the response must not complete before the returned
    /// [`Durability`] resolves.
    pub fn finish_durably(mut self, outcome: Outcome) -> Durability {
        self.record.outcome = outcome;
        let elapsed = self.started.elapsed();
        self.record.total_ms = millis(elapsed);
        self.record.total_micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sink.record_admitted(self.record, self.admission)
    }
}

//! Shared pieces of the integration tests: a real upstream, an in-process control plane,
//! snapshot builders, a node state wired to a record channel, and small HTTP helpers.

#![allow(dead_code, reason = "each test uses a different subset of the helpers")]

pub mod control_plane;
pub mod jwks;
pub mod oauth;
pub mod process;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use portcullis_data_plane::NodeState;
use portcullis_data_plane::compiled::{CompiledSnapshot, SnapshotSlot};
use portcullis_data_plane::config::ProxyLimits;
use portcullis_data_plane::jwt::{JwksPolicy, JwksRegistry};
use portcullis_data_plane::oauth::runtime::RuntimeClient;
use portcullis_data_plane::oauth::{AuthorizationServer, Issuer, OAuthSettings};
use portcullis_data_plane::record::{RecordSink, RequestRecord};
use portcullis_proto::v1 as proto;
use portcullis_shared::snapshot::{SNAPSHOT_SCHEMA_VERSION, Snapshot};
use serde_json::Value;
use tokio::sync::mpsc;
use url::Url;

/// The node's public URL in tests that drive the router without a socket.
pub const PUBLIC_URL: &str = "http://gateway.test:7400";

pub fn secret(value: &str) -> Option<proto::Secret> {
    Some(proto::Secret {
        value: Some(proto::secret::Value::Plaintext(value.to_owned())),
    })
}

pub fn passthrough_agent(restricted: &[&str]) -> proto::AgentAuth {
    proto::AgentAuth {
        mode: Some(proto::agent_auth::Mode::Passthrough(
            proto::PassthroughAgent::default(),
        )),
        restricted_inbound_headers: restricted.iter().map(|s| (*s).to_owned()).collect(),
    }
}

pub fn app_auth(kind: proto::app_auth::Kind) -> proto::AppAuth {
    proto::AppAuth { kind: Some(kind) }
}

/// A server in proto form, as the control plane would send it.
pub fn server(name: &str, upstream_url: &str, app: proto::app_auth::Kind) -> proto::McpServer {
    proto::McpServer {
        name: name.to_owned(),
        upstream_url: upstream_url.to_owned(),
        agent_auth: Some(passthrough_agent(&["x-internal-*"])),
        app_auth: Some(app_auth(app)),
        allowed_origins: vec!["https://chat.example.com".to_owned()],
        ..proto::McpServer::default()
    }
}

pub fn snapshot(version: u64, servers: Vec<proto::McpServer>) -> proto::Snapshot {
    proto::Snapshot {
        version,
        schema_version: SNAPSHOT_SCHEMA_VERSION,
        servers,
        ..proto::Snapshot::default()
    }
}

pub fn update(version: u64, servers: Vec<proto::McpServer>) -> proto::SnapshotUpdate {
    proto::SnapshotUpdate {
        version,
        nonce: format!("nonce-{version}"),
        snapshot: Some(snapshot(version, servers)),
    }
}

pub fn compile(snapshot: proto::Snapshot) -> CompiledSnapshot {
    compile_with(snapshot, &JwksRegistry::new(JwksPolicy::default()).unwrap())
}

pub fn compile_with(snapshot: proto::Snapshot, jwks: &JwksRegistry) -> CompiledSnapshot {
    CompiledSnapshot::compile(Snapshot::try_from(snapshot).unwrap(), jwks).unwrap()
}

/// Sends every record to a channel the test reads.
pub struct ChannelRecordSink(pub mpsc::UnboundedSender<RequestRecord>);

impl RecordSink for ChannelRecordSink {
    fn record(&self, record: RequestRecord) {
        let _ = self.0.send(record);
    }
}

pub struct TestNode {
    pub state: Arc<NodeState>,
    pub records: mpsc::UnboundedReceiver<RequestRecord>,
}

impl TestNode {
    pub fn new(snapshot: Option<proto::Snapshot>, limits: ProxyLimits) -> Self {
        Self::from_compiled(snapshot.map(compile), limits)
    }

    /// A node serving `snapshot`, compiled with `jwks` (so the test controls the JWKS policy
    /// and can look at the URL caches).
    pub fn with_jwks(snapshot: proto::Snapshot, jwks: &JwksRegistry) -> Self {
        Self::from_compiled(Some(compile_with(snapshot, jwks)), ProxyLimits::default())
    }

    /// A node serving `snapshot` whose authorization server has `settings` and calls
    /// `runtime` for single use and revocations (none: those calls fail), with public URL
    /// `public_url`.
    pub fn with_authorization_server(
        snapshot: proto::Snapshot,
        public_url: &str,
        settings: OAuthSettings,
        runtime: Option<RuntimeClient>,
    ) -> Self {
        let public_url = Url::parse(public_url).unwrap();
        let oauth = AuthorizationServer::new(Issuer::new(&public_url), settings, runtime).unwrap();
        let slot = Arc::new(SnapshotSlot::new(Some(compile(snapshot))));
        let (sender, records) = mpsc::unbounded_channel();
        let state = Arc::new(NodeState::with_authorization_server(
            "node-test",
            &public_url,
            "127.0.0.1:7400".parse().unwrap(),
            slot,
            ProxyLimits::default(),
            Arc::new(ChannelRecordSink(sender)),
            oauth,
        ));
        Self { state, records }
    }

    fn from_compiled(compiled: Option<CompiledSnapshot>, limits: ProxyLimits) -> Self {
        let slot = Arc::new(SnapshotSlot::new(compiled));
        let (sender, records) = mpsc::unbounded_channel();
        let state = Arc::new(NodeState::new(
            "node-test",
            &Url::parse(PUBLIC_URL).unwrap(),
            "127.0.0.1:7400".parse().unwrap(),
            slot,
            limits,
            Arc::new(ChannelRecordSink(sender)),
        ));
        Self { state, records }
    }

    pub fn with_servers(servers: Vec<proto::McpServer>) -> Self {
        Self::new(Some(snapshot(1, servers)), ProxyLimits::default())
    }

    /// Sends one request through `router()` without a socket. A node that does not
    /// answer within 10 s fails the test instead of hanging it.
    pub async fn send(&self, request: Request<Body>) -> http::Response<Body> {
        use tower::ServiceExt;
        tokio::time::timeout(
            Duration::from_secs(10),
            portcullis_data_plane::router(self.state.clone()).oneshot(request),
        )
        .await
        .expect("the node did not answer within 10 s")
        .unwrap()
    }

    pub async fn next_record(&mut self) -> RequestRecord {
        tokio::time::timeout(Duration::from_secs(10), self.records.recv())
            .await
            .expect("no request record")
            .expect("record channel closed")
    }
}

/// A JSON-RPC POST as an MCP client sends it, addressed to the node by a host it serves,
/// with `extra_headers` added.
pub fn post(server: &str, body: &Value, extra_headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::builder()
        .method("POST")
        .uri(format!("/mcp/{server}"))
        .header("host", "gateway.test:7400")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25");
    for (name, value) in extra_headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::from(body.to_string())).unwrap()
}

pub fn tool_call(id: u64, tool: &str) -> Value {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": {"query": "status"}}
    })
}

/// Reads a whole response body as JSON.
pub async fn json_body(response: http::Response<Body>) -> Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!("not JSON: {}", String::from_utf8_lossy(&bytes));
    })
}

/// Reads body frames until one complete SSE event (terminated by a blank line) arrived.
pub async fn next_sse_event<B>(body: &mut B, buffer: &mut String) -> Option<String>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let event = buffer[..end].to_owned();
            buffer.drain(..end + 2);
            return Some(event);
        }
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("no SSE data within 10 s")?
            .expect("body error");
        if let Ok(data) = frame.into_data() {
            buffer.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
}

/// Serves the router on a real loopback socket; returns its address.
pub async fn serve(state: Arc<NodeState>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, portcullis_data_plane::router(state))
            .await
            .unwrap();
    });
    address
}

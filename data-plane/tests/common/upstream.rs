//! A small real HTTP upstream: it reports every request it receives (method, path, query,
//! headers, body) on a channel, answers JSON-RPC POSTs at `/mcp` with JSON, and streams
//! SSE events at `/sse` exactly when the test hands them over, so a test can prove that
//! events pass the gateway one by one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures::StreamExt;
use http::HeaderMap;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: http::Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
struct UpstreamState {
    received: mpsc::UnboundedSender<Received>,
    /// The receiving end of the SSE event feed; the first `/sse` request takes it.
    sse_feed: Arc<Mutex<Option<mpsc::Receiver<String>>>>,
}

pub struct TestUpstream {
    pub address: SocketAddr,
    pub received: mpsc::UnboundedReceiver<Received>,
    /// Each string sent here becomes one SSE event on the `/sse` stream; dropping the
    /// sender ends the stream.
    pub sse_events: Option<mpsc::Sender<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestUpstream {
    pub async fn start() -> Self {
        let (received_tx, received) = mpsc::unbounded_channel();
        let (sse_events, sse_feed) = mpsc::channel(4);
        let state = UpstreamState {
            received: received_tx,
            sse_feed: Arc::new(Mutex::new(Some(sse_feed))),
        };
        let app = Router::new()
            .route("/mcp", any(json_rpc))
            .route("/sse", any(sse))
            .with_state(state);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            address,
            received,
            sse_events: Some(sse_events),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// The next request the upstream received.
    pub async fn next_request(&mut self) -> Received {
        tokio::time::timeout(std::time::Duration::from_secs(10), self.received.recv())
            .await
            .expect("the upstream received no request")
            .expect("the upstream stopped")
    }

    /// True if no request reached the upstream (among those already finished).
    pub fn received_nothing(&mut self) -> bool {
        self.received.try_recv().is_err()
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn capture(state: &UpstreamState, request: Request) -> Received {
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let received = Received {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
    };
    let _ = state.received.send(received.clone());
    received
}

/// Echoes the JSON-RPC id; sets headers a gateway must pass (session id) or drop (cookie,
/// challenge).
async fn json_rpc(State(state): State<UpstreamState>, request: Request) -> Response {
    let received = capture(&state, request).await;
    let id = serde_json::from_slice::<Value>(&received.body)
        .ok()
        .and_then(|body| body.get("id").cloned())
        .unwrap_or(Value::Null);
    (
        [
            ("content-type", "application/json"),
            ("mcp-session-id", "upstream-session-1"),
            ("set-cookie", "upstream-session=secret"),
            (
                "www-authenticate",
                "Bearer resource_metadata=\"http://upstream/x\"",
            ),
        ],
        json!({"jsonrpc": "2.0", "id": id, "result": {"ok": true}}).to_string(),
    )
        .into_response()
}

async fn sse(State(state): State<UpstreamState>, request: Request) -> Response {
    capture(&state, request).await;
    let feed = state
        .sse_feed
        .lock()
        .unwrap()
        .take()
        .expect("one SSE stream per test upstream");
    let events = ReceiverStream::new(feed).enumerate().map(|(index, data)| {
        Ok::<_, Infallible>(Bytes::from(format!("id: {index}\ndata: {data}\n\n")))
    });
    (
        [
            ("content-type", "text/event-stream"),
            ("cache-control", "no-cache"),
        ],
        Body::from_stream(events),
    )
        .into_response()
}

/// An address where nothing listens: connections are refused at once.
pub async fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Accepts TCP connections and never answers, like a hung upstream.
pub struct SilentUpstream {
    pub address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl SilentUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        Self { address, task }
    }
}

impl Drop for SilentUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

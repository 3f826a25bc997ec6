//! A real HTTP server publishing a JWKS, which a test can rotate, break and count fetches
//! of; and the test key pairs (shared with the unit tests) that sign tokens for it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use serde_json::Value;
use tokio::net::TcpListener;

#[path = "../../src/jwt/test_keys.rs"]
pub mod test_keys;

pub use test_keys::{TestKey, jwks, unsigned_token};

struct Published {
    document: Mutex<String>,
    fetches: AtomicUsize,
    failing: AtomicBool,
}

pub struct JwksServer {
    pub address: SocketAddr,
    published: Arc<Published>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    pub async fn start(document: Value) -> Self {
        let published = Arc::new(Published {
            document: Mutex::new(document.to_string()),
            fetches: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
        });
        let app = Router::new()
            .route("/jwks.json", get(serve))
            .with_state(published.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            address,
            published,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/jwks.json", self.address)
    }

    /// Publishes another document from now on (a key rotation).
    pub fn publish(&self, document: Value) {
        *self.published.document.lock().unwrap() = document.to_string();
    }

    /// From now on, every fetch gets 503 (or, with `false`, the document again).
    pub fn fail(&self, failing: bool) {
        self.published.failing.store(failing, Ordering::SeqCst);
    }

    /// How many times the document was requested.
    pub fn fetches(&self) -> usize {
        self.published.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(State(published): State<Arc<Published>>) -> Response {
    published.fetches.fetch_add(1, Ordering::SeqCst);
    if published.failing.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let document = published.document.lock().unwrap().clone();
    (
        [
            ("content-type", "application/jwk-set+json"),
            ("cache-control", "public, max-age=3600"),
        ],
        document,
    )
        .into_response()
}

//! The HTTP server of both planes' HTTP listeners (the node's public and admin listeners,
//! the control plane's metrics and health listener), with the bounds `axum::serve` does not
//! set: hyper's defaults have no header read timeout without a timer, so a client
//! could hold a connection open forever by sending nothing (or one header byte a minute).
//!
//! | bound | value |
//! |---|---|
//! | HTTP/1 request head: read timeout, also the idle time allowed between keep-alive requests | [`HttpServerLimits::header_read_timeout`] |
//! | HTTP/1 request head: number of headers (431 beyond) | [`HttpServerLimits::max_headers`] |
//! | HTTP/1 read buffer, so the request head (431 beyond) | [`HttpServerLimits::max_header_bytes`] |
//! | HTTP/2 header list (`SETTINGS_MAX_HEADER_LIST_SIZE`) | [`HttpServerLimits::max_header_bytes`] |
//! | HTTP/2 concurrent streams per connection | [`HttpServerLimits::http2_max_concurrent_streams`] |
//! | HTTP/2 dead peers: ping interval and answer timeout | [`HttpServerLimits::http2_keep_alive_interval`] |
//!
//! Bodies are bounded where they are read (the proxy's `--max-request-body-bytes`, the
//! OAuth endpoints' form and JSON limits); the node's TLS handshakes have their own timeout
//! in its `tls` module. Each request carries its peer address as `ConnectInfo<SocketAddr>`
//! (for the node's rate limits).

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 30;
pub const DEFAULT_MAX_HEADERS: usize = 100;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;

/// Bounds of one listener's connections (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpServerLimits {
    pub header_read_timeout: Duration,
    pub max_headers: usize,
    /// At least 8192 (hyper's smallest read buffer).
    pub max_header_bytes: usize,
    pub http2_max_concurrent_streams: u32,
    pub http2_keep_alive_interval: Duration,
    pub http2_keep_alive_timeout: Duration,
}

impl Default for HttpServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECS),
            max_headers: DEFAULT_MAX_HEADERS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            http2_max_concurrent_streams: 200,
            http2_keep_alive_interval: Duration::from_secs(30),
            http2_keep_alive_timeout: Duration::from_secs(20),
        }
    }
}

fn builder(limits: &HttpServerLimits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .keep_alive_interval(limits.http2_keep_alive_interval)
        .keep_alive_timeout(limits.http2_keep_alive_timeout);
    builder
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting and
/// returns once every open connection has finished its requests.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: HttpServerLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    let builder = builder(&limits);
    let graceful = GracefulShutdown::new();
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let service = router
            .clone()
            .map_request(move |mut request: http::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let connection = builder
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::trace!(%peer, %error, "connection ended with an error");
            }
        });
    }
    // Close the port, then let open connections finish what they started.
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

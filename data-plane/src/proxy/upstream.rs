//! The connection to upstream MCP servers: a pooled hyper client (HTTP/1.1, and HTTP/2
//! where TLS negotiates it), bounded by a connect timeout and a first-byte timeout, and a
//! response body that streams through frame by frame with an idle timeout.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::{Instant, Sleep};

use crate::config::ProxyLimits;
use crate::proxy::error::{BoxError, ProxyError};
use crate::record::{Durability, Outcome, RecordBuilder};

/// Idle pooled connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// At most this many idle connections per upstream host are kept.
const POOL_MAX_IDLE_PER_HOST: usize = 32;
/// TCP keepalive, so a peer that vanished without a FIN is noticed on long streams.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

fn tls_config() -> rustls::ClientConfig {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the aws-lc-rs provider supports the default protocol versions");
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "could not load a system CA certificate");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        tracing::warn!(
            ignored,
            "no system CA certificates: https upstreams will fail"
        );
    }
    builder.with_root_certificates(roots).with_no_client_auth()
}

impl UpstreamClient {
    pub fn new(limits: &ProxyLimits) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(limits.upstream_connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(TCP_KEEPALIVE));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .build(connector);
        Self {
            client,
            first_byte_timeout: limits.upstream_first_byte_timeout,
            idle_timeout: limits.upstream_idle_timeout,
        }
    }

    /// Sends the request and waits for the response head, at most the first-byte timeout.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ProxyError> {
        match tokio::time::timeout(self.first_byte_timeout, self.client.request(request)).await {
            Err(_elapsed) => Err(ProxyError::UpstreamTimeout(self.first_byte_timeout)),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) if error.is_connect() => {
                Err(ProxyError::UpstreamUnreachable(Box::new(error)))
            }
            Ok(Err(error)) => Err(ProxyError::UpstreamFailed(Box::new(error))),
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }
}

/// The upstream response body on its way to the caller. Frames pass through as they
/// arrive (SSE events are never held back); a silence longer than the idle timeout ends
/// the stream. When the body ends, fails or is dropped, the request record is finished
/// with the matching outcome, so every request yields exactly one record.
///
/// The end of a complete response waits for its record to be durable: the last frame
/// (the one after which the upstream body is at its end, which completes a response with a
/// `Content-Length`) or the end of a chunked stream is held until the record sink's
/// [`Durability`] resolves. So a caller that received a whole response can count on its
/// audit event. If the record cannot be made durable, the response ends in an error
/// instead. Polled under the request's span, so what it logs carries the request id.
pub struct StreamedBody {
    inner: Incoming,
    idle_timeout: Duration,
    idle_deadline: Pin<Box<Sleep>>,
    record: Option<RecordBuilder>,
    /// The final frame, held back until the record is durable.
    held: Option<Frame<Bytes>>,
    durability: Option<Durability>,
    /// The final frame (or the end) was released: nothing more comes.
    done: bool,
    span: tracing::Span,
}

#[derive(Debug, thiserror::Error)]
#[error("upstream sent nothing for {0:?}")]
pub struct UpstreamIdle(Duration);

impl StreamedBody {
    pub fn new(inner: Incoming, idle_timeout: Duration, record: RecordBuilder) -> Self {
        Self {
            inner,
            idle_timeout,
            idle_deadline: Box::pin(tokio::time::sleep(idle_timeout)),
            record: Some(record),
            held: None,
            durability: None,
            done: false,
            span: tracing::Span::current(),
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(record) = self.record.take() {
            record.finish(outcome);
        }
    }

    /// The response is complete up to `held`: the record goes to the sink, and the rest
    /// waits for it to be durable.
    fn finish_durably(&mut self, held: Option<Frame<Bytes>>) {
        self.held = held;
        self.durability = Some(match self.record.take() {
            Some(record) => record.finish_durably(Outcome::Completed),
            None => Durability::ready(),
        });
    }
}

impl Body for StreamedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let span = this.span.clone();
        let _entered = span.enter();
        loop {
            if let Some(durability) = this.durability.as_mut() {
                let result = std::task::ready!(Pin::new(durability).poll(cx));
                this.durability = None;
                this.done = true;
                return match result {
                    Ok(()) => Poll::Ready(this.held.take().map(Ok)),
                    Err(error) => {
                        tracing::error!(%error, "the request's audit event could not be made durable: the response is cut short");
                        this.held = None;
                        Poll::Ready(Some(Err(Box::new(error))))
                    }
                };
            }
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = Instant::now() + this.idle_timeout;
                    this.idle_deadline.as_mut().reset(deadline);
                    if this.inner.is_end_stream() {
                        // The last frame: it completes the response, so it waits.
                        this.finish_durably(Some(frame));
                        continue;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(error))) => {
                    tracing::warn!(%error, "upstream response stream failed");
                    this.finish(Outcome::UpstreamStreamFailed);
                    this.done = true;
                    return Poll::Ready(Some(Err(Box::new(error))));
                }
                Poll::Ready(None) => {
                    this.finish_durably(None);
                    continue;
                }
                Poll::Pending => {
                    if this.idle_deadline.as_mut().poll(cx).is_ready() {
                        tracing::warn!(idle_timeout = ?this.idle_timeout, "upstream response stream went idle");
                        this.finish(Outcome::UpstreamStreamFailed);
                        this.done = true;
                        return Poll::Ready(Some(Err(Box::new(UpstreamIdle(this.idle_timeout)))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.held.is_none() && self.durability.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(held) = self.held.as_ref().and_then(Frame::data_ref) {
            let held = held.len() as u64;
            // Upper first: a lower bound above the upper one would panic.
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + held);
            }
            hint.set_lower(hint.lower() + held);
        }
        hint
    }
}

impl Drop for StreamedBody {
    fn drop(&mut self) {
        let span = self.span.clone();
        let _entered = span.enter();
        // An empty body may be dropped without ever being polled.
        let outcome = if self.inner.is_end_stream() {
            Outcome::Completed
        } else {
            Outcome::ClientDisconnected
        };
        self.finish(outcome);
    }
}

//! The MCP Streamable HTTP proxy at `/mcp/{server}`, and the health endpoints.
//!
//! Every request runs the same pipeline of named steps, in [`forward`]; each step says why
//! it sits where it does. Anything a step refuses becomes a JSON-RPC shaped error, and
//! every request, refused or forwarded, ends in exactly one [`RequestRecord`].
//!
//! [`RequestRecord`]: crate::record::RequestRecord

pub mod agent_auth;
pub mod app_auth;
pub mod error;
pub mod firewall;
pub mod host_origin;
pub mod jsonrpc;
pub mod outbound_headers;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH};
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode, Version};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tracing::Instrument;
use url::Url;

use crate::compiled::{CompiledSnapshot, SnapshotSlot};
use crate::config::ProxyLimits;
use crate::connect::AccountLinking;
use crate::metrics::NodeMetrics;
use crate::oauth::resource::GatewayContext;
use crate::oauth::{AuthorizationServer, Issuer, OAuthSettings};
use crate::proxy::app_auth::{AppAuthPlan, AppAuthRequest};
use crate::proxy::error::ProxyError;
use crate::proxy::host_origin::HostPolicy;
use crate::proxy::outbound_headers::{OutboundContext, OutboundServices};
use crate::proxy::upstream::{StreamedBody, UpstreamClient};
use crate::record::{Outcome, RecordBuilder, RecordSink};

/// Everything the request path shares: the current snapshot, the upstream client, limits,
/// where records go, and the Interactive SSO authorization server.
pub struct NodeState {
    pub node_id: Arc<str>,
    pub snapshots: Arc<SnapshotSlot>,
    pub hosts: HostPolicy,
    pub upstream: UpstreamClient,
    pub limits: ProxyLimits,
    pub records: Arc<dyn RecordSink>,
    pub oauth: AuthorizationServer,
    /// Token caches and per-user credential lookups of the additional outbound headers
    /// (step 6); the service-token cache is meant for app authentication too.
    pub outbound: Arc<OutboundServices>,
    /// What `/metrics` on the admin listener reports.
    pub metrics: Arc<NodeMetrics>,
    /// Per-user OAuth 2.1 Authorization app auth: users' tokens (from the control plane's
    /// vault), what sessions declared, the account-linking flow's HTTP client.
    pub linking: Arc<AccountLinking>,
    /// Per-client budgets of the OAuth and account-linking endpoints (defaults until the
    /// node sets its configured ones).
    pub rate_limits: crate::rate_limit::RateLimits,
}

impl NodeState {
    /// A node state with default authorization-server settings and no control plane for
    /// its runtime calls (tests and benchmarks; see [`Self::with_authorization_server`]).
    pub fn new(
        node_id: &str,
        public_url: &Url,
        listen: SocketAddr,
        snapshots: Arc<SnapshotSlot>,
        limits: ProxyLimits,
        records: Arc<dyn RecordSink>,
    ) -> Self {
        let oauth =
            AuthorizationServer::new(Issuer::new(public_url), OAuthSettings::default(), None)
                // As reqwest::Client::new: only a TLS backend that cannot start fails here.
                .expect("the HTTP clients of the authorization server build");
        Self::with_authorization_server(
            node_id, public_url, listen, snapshots, limits, records, oauth,
        )
    }

    pub fn with_authorization_server(
        node_id: &str,
        public_url: &Url,
        listen: SocketAddr,
        snapshots: Arc<SnapshotSlot>,
        limits: ProxyLimits,
        records: Arc<dyn RecordSink>,
        oauth: AuthorizationServer,
    ) -> Self {
        let oauth_runtime = oauth.runtime.clone();
        Self {
            node_id: Arc::from(node_id),
            snapshots,
            hosts: HostPolicy::new(public_url, listen),
            upstream: UpstreamClient::new(&limits),
            limits,
            records,
            oauth,
            outbound: Arc::new(OutboundServices::new(
                crate::tokens::endpoint::http_client()
                    // As reqwest::Client::new: only a TLS backend that cannot start fails.
                    .expect("the token endpoint HTTP client builds"),
            )),
            metrics: Arc::new(NodeMetrics::default()),
            linking: Arc::new(
                AccountLinking::new(oauth_runtime)
                    // As reqwest::Client::new: only a TLS backend that cannot start fails.
                    .expect("the account-linking HTTP client builds"),
            ),
            rate_limits: crate::rate_limit::RateLimits::default(),
        }
    }
}

/// The node's HTTP surface: the MCP proxy, the health endpoints, and the OAuth endpoints
/// of Interactive SSO ([`crate::oauth::routes`]). No layer here buffers or compresses
/// responses: SSE must pass through frame by frame.
pub fn router(state: Arc<NodeState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // Streamable HTTP uses POST (messages), GET (server stream) and DELETE (end of
        // session); other methods get 405 from the router.
        .route("/mcp/{server}", get(proxy).post(proxy).delete(proxy))
        .merge(crate::oauth::routes())
        .merge(crate::connect::routes())
        // Per-client budgets of the OAuth and account-linking routes (by path; the MCP
        // proxy and the metadata documents are not counted).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::rate_limit::limit,
        ))
        .with_state(state)
}

/// Liveness: the process serves HTTP.
pub async fn healthz(State(_node): State<Arc<NodeState>>) -> Response {
    Json(json!({ "status": "live" })).into_response()
}

/// Readiness: a snapshot is loaded (from disk or from the control plane), and the record
/// sink can take records (an audit spool that failed under the refuse policy cannot).
pub async fn readyz(State(node): State<Arc<NodeState>>) -> Response {
    if let Err(unavailable) = node.records.ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "reason": unavailable.reason() })),
        )
            .into_response();
    }
    match node.snapshots.version() {
        Some(version) => {
            Json(json!({ "status": "ready", "snapshot_version": version })).into_response()
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready" })),
        )
            .into_response(),
    }
}

async fn proxy(
    State(node): State<Arc<NodeState>>,
    Path(server): Path<String>,
    request: Request,
) -> Response {
    // The snapshot is loaded once: the whole request sees one configuration, even if a
    // new snapshot is swapped in meanwhile.
    let snapshot = node.snapshots.load();
    let record = RecordBuilder::start(
        node.records.clone(),
        node.node_id.clone(),
        snapshot.as_ref().map(|snapshot| snapshot.version),
        &server,
        request.method(),
    );
    let span = tracing::info_span!(
        "mcp_request",
        request_id = %record.request_id(),
        server = %server,
    );
    handle(node, snapshot, server, request, record)
        .instrument(span)
        .await
}

async fn handle(
    node: Arc<NodeState>,
    snapshot: Option<Arc<CompiledSnapshot>>,
    server: String,
    request: Request,
    mut record: RecordBuilder,
) -> Response {
    let mut error_id = Value::Null;
    // 0. Room for the request's audit record. First: a request the node cannot audit is
    //    refused before it costs anything or reaches the upstream (refuse policy).
    if let Err(unavailable) = record.admit() {
        tracing::warn!(
            reason = unavailable.reason(),
            "request refused: the audit spool cannot take its event"
        );
        record.fields().audit_unavailable = true;
        return reject(ProxyError::AuditUnavailable(unavailable), error_id, record).await;
    }
    match forward(
        &node,
        snapshot.as_deref(),
        &server,
        request,
        &mut record,
        &mut error_id,
    )
    .await
    {
        Ok(forwarded) => stream_back(&node, forwarded, record).await,
        Err(error) => reject(error, error_id, record).await,
    }
}

/// An upstream response head, ready to stream back.
struct Forwarded {
    response: http::Response<Incoming>,
    caller_credential_went_upstream: bool,
}

/// The request pipeline. Steps run in this order; each comment says why there.
async fn forward(
    node: &NodeState,
    snapshot: Option<&CompiledSnapshot>,
    server_name: &str,
    request: Request,
    record: &mut RecordBuilder,
    error_id: &mut Value,
) -> Result<Forwarded, ProxyError> {
    // 1. Route. First, because every later step depends on the server's configuration,
    //    and an unknown server must cost nothing more than a lookup.
    let snapshot = snapshot.ok_or(ProxyError::NotReady)?;
    let server = snapshot
        .server(server_name)
        .ok_or(ProxyError::UnknownServer)?;
    record.fields().app_auth_kind = Some(server.app_auth_kind);
    let (parts, body) = request.into_parts();

    // 2. Host/Origin check (DNS rebinding). Before authentication, because a rebound
    //    browser request may carry ambient credentials that must not even be looked at,
    //    and before anything reaches the upstream, whose own Host check we defeat by
    //    rewriting Host.
    node.hosts.check(server, &parts)?;

    // 3. Agent authentication: who is calling. Before the body is read, so an
    //    unauthenticated caller cannot make the node buffer megabytes. With JWT validation
    //    a missing or invalid token ends the request here (401), before anything reaches
    //    the upstream. Interactive SSO validates the gateway's own access tokens locally,
    //    against this snapshot's keys and revocations. The `Caller` it yields is handed to
    //    steps 5 and 6 below.
    // Whether a credential was presented is recorded for refused requests too.
    record.fields().caller_presented_credential = parts.headers.contains_key(AUTHORIZATION);
    let gateway = GatewayContext {
        issuer: &node.oauth.issuer,
        keys: &snapshot.gateway_keys,
        revoked_users: &snapshot.source.revoked_users,
        revoked_grants: &snapshot.source.revoked_grants,
    };
    let caller = server
        .agent_auth
        .authenticate(&parts.headers, &gateway)
        .await?;
    record.fields().caller = caller.record_name();
    record.fields().caller_email = caller.record_email();
    record.fields().caller_verified = caller.identity.is_some();

    // 3b. Read and inspect the body (POST only). After authentication (see above); before
    //    the upstream call, because the body is bounded here (413) and malformed JSON-RPC
    //    is refused here (400) rather than by every upstream differently. The id found here
    //    is what later error responses echo.
    let body = read_body(&parts, body, node.limits.max_request_body_bytes).await?;
    if parts.method == Method::POST {
        let summary = jsonrpc::inspect(&body)?;
        *error_id = summary.error_id();
        record.fields().jsonrpc_methods = summary.methods();
        record.fields().tool_names = summary.tool_names();
    }

    // 4. Inbound header firewall. After agent authentication (which needed the caller's
    //    credentials) and before app authentication (so nothing the caller sent can
    //    overwrite or double the upstream credential).
    let mut headers = firewall::filter_inbound(&parts.headers, &server.restricted_inbound_headers);

    // 5. App authentication: the credential towards the app. After the firewall, so it is
    //    the only source of credential headers; it reads the caller's original headers only
    //    in Passthrough mode. It gets the caller from step 3, for per-user credentials.
    //    OAuth Authorization answers a user without a linked account with the "connect
    //    your account" prompt here, before anything reaches the upstream.
    let mut query = server.upstream.base_query();
    query.extend_raw(parts.uri.query());
    let method = parts.method.clone();
    let app_auth_request = AppAuthRequest {
        node,
        snapshot,
        server: server_name,
        caller: &caller,
        inbound: &parts.headers,
        method: &method,
        body: &body,
    };
    record.fields().credential_id = server.app_auth.credential_id();
    let app_credential = server
        .app_auth
        .apply(&app_auth_request, &mut headers, &mut query)
        .await?;

    // 6. Additional outbound headers. After app authentication: they come on top of it
    //    (shared validation keeps them off its header) and replace same-named headers the
    //    caller sent. They may need the caller from step 3: its token for "Forward caller's
    //    token" and "On behalf of caller", its claims for "Pass caller identity" and
    //    templates, its user id for per-user credentials. All or nothing: a header that
    //    cannot be produced refuses the request.
    if !server.outbound_headers.is_empty() {
        let context = OutboundContext {
            services: &node.outbound,
            snapshot,
            runtime: node.oauth.runtime.as_ref(),
            now_unix: crate::jwt::unix_now(),
        };
        record.fields().outbound_headers = server
            .outbound_headers
            .apply(&context, &caller, &mut headers)
            .await
            .map_err(ProxyError::OutboundHeader)?;
    }

    // 7. Stream to the upstream. Last, with everything decided; the response head is
    //    awaited with a timeout, the body streams back untouched.
    let uri = server
        .upstream
        .uri(&query)
        .map_err(|error| ProxyError::Internal(format!("building the upstream URI: {error}")))?;
    let mut upstream_request = http::Request::new(Full::new(body.clone()));
    *upstream_request.method_mut() = parts.method;
    *upstream_request.uri_mut() = uri;
    *upstream_request.headers_mut() = headers;
    // HTTP/1.1 unless TLS negotiates HTTP/2 with the upstream (ALPN). The legacy client
    // refuses an HTTP/2 request on an HTTP/1 connection, and over HTTP/2 it takes
    // `:scheme` and `:authority` from the absolute URI whatever this field says.
    *upstream_request.version_mut() = Version::HTTP_11;
    let response = node.upstream.send(upstream_request).await?;
    // 7b. The upstream's answer as app authentication sees it: a user the upstream refused
    //    gets the prompt, not the upstream's 401; sessions are remembered.
    let response = app_credential.after_response(&app_auth_request, response)?;
    Ok(Forwarded {
        response,
        caller_credential_went_upstream: matches!(
            server.app_auth,
            AppAuthPlan::PassthroughCallerAuthorization
        ),
    })
}

/// Reads a POST body up to `limit` bytes. GET and DELETE carry no body in Streamable HTTP;
/// whatever a client sends with them is not forwarded.
async fn read_body(parts: &Parts, body: Body, limit: usize) -> Result<Bytes, ProxyError> {
    if parts.method != Method::POST {
        return Ok(Bytes::new());
    }
    if let Some(length) = content_length(&parts.headers)
        && length > limit as u64
    {
        // Refused before reading a byte.
        return Err(ProxyError::PayloadTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ProxyError::PayloadTooLarge { limit })
        }
        Err(error) => Err(ProxyError::BodyRead(error)),
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// 8. Stream back: the upstream's status and filtered headers now, the body as it comes;
///    the record is finished when the body ends (see [`StreamedBody`]), and the end of the
///    response waits until the record is durable. A response without a body is complete
///    with its head, so the head waits.
async fn stream_back(
    node: &NodeState,
    forwarded: Forwarded,
    mut record: RecordBuilder,
) -> Response {
    let (parts, body) = forwarded.response.into_parts();
    let headers =
        firewall::filter_response(&parts.headers, forwarded.caller_credential_went_upstream);
    let status = parts.status.as_u16();
    record.fields().upstream_status = Some(status);
    record.fields().caller_credential_forwarded =
        forwarded.caller_credential_went_upstream && record.fields().caller_presented_credential;
    record.response_head(status, None);
    if http_body::Body::is_end_stream(&body) {
        if let Err(unavailable) = record.finish_durably(Outcome::Completed).await {
            return ProxyError::AuditUnavailable(unavailable).into_response_with_id(Value::Null);
        }
        let mut response = Response::new(Body::empty());
        *response.status_mut() = parts.status;
        *response.headers_mut() = headers;
        return response;
    }
    let body = StreamedBody::new(body, node.upstream.idle_timeout(), record);
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = parts.status;
    *response.headers_mut() = headers;
    response
}

/// A refusal or an upstream failure: logged with its cause, recorded, answered with a
/// JSON-RPC error that carries only the public message, once the record is durable.
async fn reject(error: ProxyError, error_id: Value, mut record: RecordBuilder) -> Response {
    let outcome = match &error {
        ProxyError::Unauthenticated(rejection)
        | ProxyError::InteractiveUnauthenticated { rejection, .. } => {
            tracing::info!(reason = rejection.code(), error = %error, "caller refused by agent authentication");
            record.fields().agent_auth_rejection = Some(rejection.code());
            Outcome::Rejected
        }
        ProxyError::InsufficientScope(_) => {
            tracing::info!(error = %error, "caller refused: missing scope");
            record.fields().agent_auth_rejection = Some("insufficient_scope");
            Outcome::Rejected
        }
        ProxyError::UpstreamUnreachable(_)
        | ProxyError::UpstreamTimeout(_)
        | ProxyError::UpstreamFailed(_) => {
            tracing::warn!(error = %ErrorChain(&error), "upstream request failed");
            Outcome::UpstreamFailed
        }
        ProxyError::Internal(_) => {
            tracing::error!(error = %ErrorChain(&error), "request failed");
            Outcome::Rejected
        }
        ProxyError::NotReady
        | ProxyError::UnknownServer
        | ProxyError::MissingHost
        | ProxyError::HostNotAllowed(_)
        | ProxyError::OriginNotAllowed(_)
        | ProxyError::PayloadTooLarge { .. }
        | ProxyError::BodyRead(_)
        | ProxyError::JsonParse(_)
        | ProxyError::InvalidJsonRpc(_)
        | ProxyError::AppAuth(_)
        | ProxyError::OutboundHeader(_) => {
            tracing::info!(error = %ErrorChain(&error), "request refused");
            Outcome::Rejected
        }
        // Logged where it is decided.
        ProxyError::AuditUnavailable(_) => Outcome::Rejected,
    };
    record.response_head(error.http_status().as_u16(), Some(error.code()));
    if let Err(unavailable) = record.finish_durably(outcome).await {
        return ProxyError::AuditUnavailable(unavailable).into_response_with_id(error_id);
    }
    error.into_response_with_id(error_id)
}

/// Displays an error with its sources, for logs.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

//! The routes of the authorization server and the protected resources, and the documents
//! that describe them:
//!
//! | route | what |
//! |---|---|
//! | `GET /.well-known/oauth-protected-resource/mcp/{server}` (also `/mcp/{server}/.well-known/oauth-protected-resource`, and the bare root when exactly one server is Interactive) | RFC 9728 metadata |
//! | `GET /.well-known/oauth-authorization-server`, `/.well-known/openid-configuration` | RFC 8414 metadata |
//! | `POST /oauth/register` | dynamic client registration (RFC 7591) |
//! | `GET /oauth/authorize`, `POST /oauth/authorize` | authorization request, consent form |
//! | `GET /oauth/callback` | the identity provider's answer |
//! | `POST /oauth/token`, `POST /oauth/revoke` | tokens, revocation (RFC 7009) |
//! | `GET /oauth/jwks` | the access tokens' public keys |
//!
//! With a public URL that has a path (`https://host/prefix`), the well-known documents are
//! also served at `/.well-known/<name>/prefix[...]`, where RFC 8414 and RFC 9728 put them.
//!
//! The metadata, JWKS, registration, token and revocation endpoints answer CORS requests
//! from any origin (they use no cookies), so browser-based MCP clients can use them.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, CACHE_CONTROL, CONTENT_TYPE,
};
use http::{HeaderValue, StatusCode};
use serde_json::{Value, json};

use crate::compiled::CompiledSnapshot;
use crate::jwt::unix_now;
use crate::oauth::clients;
use crate::oauth::http::{OAuthError, json_no_store, read_json};
use crate::oauth::resource::InteractivePlan;
use crate::oauth::{Issuer, authorize, token};
use crate::proxy::NodeState;

/// The routes, merged into the node's router.
pub fn routes() -> Router<Arc<NodeState>> {
    Router::new()
        .route(
            "/.well-known/oauth-authorization-server",
            get(authorization_server_metadata).options(preflight),
        )
        .route(
            "/.well-known/oauth-authorization-server/{*path}",
            get(authorization_server_metadata_at).options(preflight),
        )
        .route(
            "/.well-known/openid-configuration",
            get(authorization_server_metadata).options(preflight),
        )
        .route(
            "/.well-known/openid-configuration/{*path}",
            get(authorization_server_metadata_at).options(preflight),
        )
        .route(
            "/.well-known/oauth-protected-resource",
            get(root_resource_metadata).options(preflight),
        )
        .route(
            "/.well-known/oauth-protected-resource/{*path}",
            get(resource_metadata_at).options(preflight),
        )
        .route(
            "/mcp/{server}/.well-known/oauth-protected-resource",
            get(resource_metadata_in_path).options(preflight),
        )
        .route("/oauth/register", post(register).options(preflight))
        .route(
            "/oauth/authorize",
            get(authorize::authorize).post(authorize::consent),
        )
        // Interactive SSO sign-ins and the logins of account links share the identity
        // provider's redirect URI; the sealed state tells them apart.
        .route(
            "/oauth/callback",
            get(crate::connect::identity_provider_callback),
        )
        .route("/oauth/token", post(token_endpoint).options(preflight))
        .route("/oauth/revoke", post(revoke_endpoint).options(preflight))
        .route("/oauth/jwks", get(jwks).options(preflight))
}

/// Allows any origin to read the response (no cookies are involved).
fn cors(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

async fn preflight() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, mcp-protocol-version"),
    );
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    response
}

/// A public JSON document, cacheable for a minute (it changes with the configuration).
fn public_json(body: &Value) -> Response {
    cors(
        (
            StatusCode::OK,
            [
                (CONTENT_TYPE, "application/json"),
                (CACHE_CONTROL, "public, max-age=60"),
            ],
            body.to_string(),
        )
            .into_response(),
    )
}

fn not_found() -> Response {
    cors(
        (
            StatusCode::NOT_FOUND,
            [(CONTENT_TYPE, "application/json")],
            json!({"error": "not_found"}).to_string(),
        )
            .into_response(),
    )
}

/// The Interactive servers of a snapshot, by name.
fn interactive_servers(snapshot: &CompiledSnapshot) -> Vec<&InteractivePlan> {
    snapshot
        .source
        .servers
        .keys()
        .filter_map(|name| snapshot.server(name.as_str())?.agent_auth.interactive())
        .collect()
}

/// The RFC 8414 document.
pub fn authorization_server_document(
    issuer: &Issuer,
    snapshot: Option<&CompiledSnapshot>,
) -> Value {
    let mut scopes: Vec<&str> = Vec::new();
    if let Some(snapshot) = snapshot {
        for plan in interactive_servers(snapshot) {
            for scope in plan.scopes() {
                if !scopes.contains(&scope.as_str()) {
                    scopes.push(scope.as_str());
                }
            }
        }
    }
    let auth_methods = ["none", "client_secret_post", "client_secret_basic"];
    json!({
        "issuer": issuer.as_str(),
        "authorization_endpoint": issuer.endpoint("/oauth/authorize"),
        "token_endpoint": issuer.endpoint("/oauth/token"),
        "registration_endpoint": issuer.endpoint("/oauth/register"),
        "revocation_endpoint": issuer.endpoint("/oauth/revoke"),
        "jwks_uri": issuer.endpoint("/oauth/jwks"),
        "scopes_supported": scopes,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "client_id_metadata_document_supported": true,
        "authorization_response_iss_parameter_supported": true,
    })
}

async fn authorization_server_metadata(State(node): State<Arc<NodeState>>) -> Response {
    let snapshot = node.snapshots.load();
    public_json(&authorization_server_document(
        &node.oauth.issuer,
        snapshot.as_deref(),
    ))
}

/// The path-suffixed form (RFC 8414 section 3.1): only the issuer's own path.
async fn authorization_server_metadata_at(
    State(node): State<Arc<NodeState>>,
    Path(path): Path<String>,
) -> Response {
    let issuer = &node.oauth.issuer;
    let issuer_path = issuer
        .as_str()
        .strip_prefix(issuer.origin())
        .unwrap_or_default();
    if format!("/{}", path.trim_end_matches('/')) != issuer_path {
        return not_found();
    }
    let snapshot = node.snapshots.load();
    public_json(&authorization_server_document(issuer, snapshot.as_deref()))
}

fn resource_document(node: &NodeState, server: &str) -> Response {
    let Some(snapshot) = node.snapshots.load() else {
        return not_found();
    };
    match snapshot
        .server(server)
        .and_then(|compiled| compiled.agent_auth.interactive())
    {
        Some(plan) => public_json(&plan.metadata(&node.oauth.issuer)),
        None => not_found(),
    }
}

/// `/.well-known/oauth-protected-resource/<issuer path>/mcp/{server}`.
async fn resource_metadata_at(
    State(node): State<Arc<NodeState>>,
    Path(path): Path<String>,
) -> Response {
    let issuer = &node.oauth.issuer;
    let issuer_path = issuer
        .as_str()
        .strip_prefix(issuer.origin())
        .unwrap_or_default();
    let path = format!("/{path}");
    match path
        .strip_prefix(issuer_path)
        .and_then(|rest| rest.strip_prefix("/mcp/"))
        .filter(|server| !server.is_empty() && !server.contains('/'))
    {
        Some(server) => resource_document(&node, server),
        None => not_found(),
    }
}

async fn resource_metadata_in_path(
    State(node): State<Arc<NodeState>>,
    Path(server): Path<String>,
) -> Response {
    resource_document(&node, &server)
}

/// The root form: unambiguous only when one server uses Interactive sign-in.
async fn root_resource_metadata(State(node): State<Arc<NodeState>>) -> Response {
    let Some(snapshot) = node.snapshots.load() else {
        return not_found();
    };
    match interactive_servers(&snapshot).as_slice() {
        [plan] => public_json(&plan.metadata(&node.oauth.issuer)),
        _ => not_found(),
    }
}

async fn jwks(State(node): State<Arc<NodeState>>) -> Response {
    let document = node
        .snapshots
        .load()
        .map(|snapshot| snapshot.gateway_keys.public_jwks().to_owned())
        .unwrap_or_else(|| r#"{"keys":[]}"#.to_owned());
    cors(
        (
            StatusCode::OK,
            [
                (CONTENT_TYPE, "application/json"),
                (CACHE_CONTROL, "public, max-age=300"),
            ],
            document,
        )
            .into_response(),
    )
}

async fn register(State(node): State<Arc<NodeState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let result = async {
        let snapshot = node
            .snapshots
            .load()
            .ok_or_else(|| OAuthError::temporarily_unavailable("the gateway is starting"))?;
        let body = read_json(&parts.headers, body).await?;
        clients::register(&snapshot.gateway_keys, &body, unix_now())
    }
    .await;
    cors(match result {
        Ok(registration) => json_no_store(StatusCode::CREATED, &registration),
        Err(error) => error.into_response(),
    })
}

async fn token_endpoint(state: State<Arc<NodeState>>, request: Request) -> Response {
    cors(token::token(state, request).await)
}

async fn revoke_endpoint(state: State<Arc<NodeState>>, request: Request) -> Response {
    cors(token::revoke(state, request).await)
}

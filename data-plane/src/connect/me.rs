//! A user's own account links and stored-credential values, for users as `portcullisctl
//! link list/delete` and `credential set-user/delete-user` are for admins:
//!
//! - `GET P/me/links` lists the user's account links, `DELETE P/me/links/{app}`
//!   disconnects one;
//! - `GET P/me/credentials` lists the stored credentials the user may give their own value
//!   of, `PUT P/me/credentials/{credential}` (body `{"value": "..."}`) stores it,
//!   `DELETE P/me/credentials/{credential}` removes it (the org-wide value applies again).
//!
//! Authenticated with the user's gateway access token (`Authorization: Bearer`), the one
//! their MCP client holds: it is validated exactly as on the MCP server it was issued for
//! (its `aud`), signature, issuer, expiry, revocations and the identity provider included.
//! The user is that token's identity provider and subject; nobody can name another user.
//! Consequence, by design: any MCP client the user approved can manage the user's links
//! and values, not only the CLI. Answers never carry tokens or values.
//!
//! Only gateway access tokens are accepted. JWTs that a Passthrough server validates are
//! not: their audience is optional (a token minted for another service would do), such a
//! server may forward them upstream (App Auth Passthrough), where anyone could replay them
//! here, and per-user values are keyed by subject alone, so another issuer's `sub` could
//! overwrite an SSO user's value. Reading through such servers is unchanged.
//!
//! A user may store a value only for a credential that a server of their own identity
//! provider uses per user (an outbound header "vault credential", scope per user): a
//! value nothing would send is refused (404), and users of another identity provider
//! cannot write it. The control plane stores the value encrypted through the same command
//! as the admin's `set-user` (`NodeRuntime.PutOwnCredential`), so it is in the event log
//! and the audit trail with the actor `user:<idp>/<subject> via node:<node>`. The node
//! that stored it forgets what it cached for that user, so their next call there uses it;
//! other nodes within 5 s (30 s after a change of an existing value).
//!
//! ```json
//! GET /me/links
//! {"user": {"identity_provider": "corp", "subject": "alice"},
//!  "links": [{"app_id": "github", "app": "GitHub", "status": "connected", "reason": "",
//!             "scope": "repo", "connected_at": 1767225600, "refreshed_at": 1767225600,
//!             "expires_at": 1767254400}]}
//! DELETE /me/links/github
//! {"app_id": "github", "deleted": true}     (404 {"error": "not_found"} when there was none)
//! GET /me/credentials
//! {"user": {...}, "credentials": [{"credential_id": "github-pat", "description": "...",
//!   "servers": ["tools"], "own_value": true, "org_value": true}]}
//! PUT /me/credentials/github-pat   {"value": "ghp_..."}
//! {"credential_id": "github-pat", "stored": true}
//! DELETE /me/credentials/github-pat
//! {"credential_id": "github-pat", "deleted": true}   (404 when there was none)
//! ```

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::WWW_AUTHENTICATE;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Value, json};

use portcullis_shared::config::{CredentialScope, OutboundSource};
use portcullis_shared::names::CatalogId;
use portcullis_shared::secret::SecretValue;

use crate::compiled::CompiledSnapshot;
use crate::oauth::http::json_no_store;
use crate::oauth::resource::GatewayContext;
use crate::oauth::runtime::VaultUser;
use crate::proxy::NodeState;
use crate::proxy::agent_auth::{CallerIdentity, bearer_token};
use crate::proxy::outbound_headers::user_key;
use crate::vault::LinkKey;

fn error(status: StatusCode, code: &str, description: &str) -> Response {
    let mut response = json_no_store(
        status,
        &json!({ "error": code, "error_description": description }),
    );
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// The `aud` of a JWT, unverified: only to pick the server whose validation then runs in
/// full.
fn audience(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    match claims.get("aud")? {
        Value::String(audience) => Some(audience.clone()),
        Value::Array(audiences) => audiences.first()?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// The user a request's gateway access token names, fully validated.
async fn user(node: &NodeState, headers: &HeaderMap) -> Result<VaultUser, Response> {
    authenticate(node, headers).await.map(|me| me.user)
}

/// The authenticated user of a `/me` request.
struct Me {
    user: VaultUser,
    identity: CallerIdentity,
    snapshot: Arc<CompiledSnapshot>,
}

async fn authenticate(node: &NodeState, headers: &HeaderMap) -> Result<Me, Response> {
    let unauthenticated =
        |description: &str| error(StatusCode::UNAUTHORIZED, "invalid_token", description);
    let snapshot = node.snapshots.load().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the gateway is starting",
        )
    })?;
    let token = bearer_token(headers).map_err(|_| {
        unauthenticated("a gateway access token is required (Authorization: Bearer)")
    })?;
    let server = audience(token)
        .and_then(|audience| node.oauth.issuer.server_of_resource(&audience))
        .and_then(|name| snapshot.server(&name))
        .filter(|server| server.agent_auth.interactive().is_some())
        .ok_or_else(|| unauthenticated("not an access token of this gateway"))?;
    let gateway = GatewayContext {
        issuer: &node.oauth.issuer,
        keys: &snapshot.gateway_keys,
        revoked_users: &snapshot.source.revoked_users,
        revoked_grants: &snapshot.source.revoked_grants,
    };
    let caller = server
        .agent_auth
        .authenticate(headers, &gateway)
        .await
        .map_err(|refusal| unauthenticated(&refusal.public_message()))?;
    let identity = caller
        .identity
        .ok_or_else(|| unauthenticated("the token names no user"))?;
    let user = identity
        .identity_provider()
        .map(|provider| VaultUser::new(provider.to_string(), identity.subject()))
        .ok_or_else(|| unauthenticated("the token names no user"))?;
    Ok(Me {
        user,
        identity,
        snapshot,
    })
}

fn vault_unavailable() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the account links cannot be read right now; try again shortly",
    )
}

/// `GET /me/links`.
pub async fn list(State(node): State<Arc<NodeState>>, request: Request) -> Response {
    let user = match user(&node, request.headers()).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    let Some(runtime) = node.linking.vault.runtime() else {
        return vault_unavailable();
    };
    let links = match runtime.list_user_tokens(&user).await {
        Ok(links) => links,
        Err(failure) => {
            tracing::warn!(error = %failure, "listing a user's account links failed");
            return vault_unavailable();
        }
    };
    let snapshot = node.snapshots.load();
    let name_of = |app_id: &str| {
        snapshot
            .as_ref()
            .and_then(|snapshot| {
                snapshot
                    .source
                    .oauth_apps
                    .iter()
                    .find(|(id, _)| id.as_str() == app_id)
                    .map(|(_, app)| app.display_name.clone())
            })
            .unwrap_or_else(|| app_id.to_owned())
    };
    let links: Vec<Value> = links
        .iter()
        .map(|link| {
            json!({
                "app_id": link.app_id,
                "app": name_of(&link.app_id),
                "status": link.state.as_str(),
                "reason": link.reason,
                "scope": link.scope,
                "connected_at": link.connected_at_unix,
                "refreshed_at": link.refreshed_at_unix,
                "expires_at": link.expires_at_unix,
            })
        })
        .collect();
    json_no_store(
        StatusCode::OK,
        &json!({
            "user": { "identity_provider": user.identity_provider, "subject": user.subject },
            "links": links,
        }),
    )
}

/// `DELETE /me/links/{app}`.
pub async fn delete(
    State(node): State<Arc<NodeState>>,
    Path(app_id): Path<String>,
    request: Request,
) -> Response {
    let user = match user(&node, request.headers()).await {
        Ok(user) => user,
        Err(response) => return response,
    };
    let Some(runtime) = node.linking.vault.runtime() else {
        return vault_unavailable();
    };
    if app_id.is_empty() || app_id.len() > 128 {
        return error(StatusCode::BAD_REQUEST, "invalid_request", "not an app id");
    }
    match runtime.delete_user_token(&app_id, &user).await {
        Ok(deleted) => {
            node.linking
                .vault
                .invalidate(&LinkKey::new(app_id.clone(), user.clone()));
            tracing::info!(app = %app_id, identity_provider = %user.identity_provider, user = %user.subject, deleted, "account link disconnected by its user");
            if deleted {
                json_no_store(
                    StatusCode::OK,
                    &json!({ "app_id": app_id, "deleted": true }),
                )
            } else {
                error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "you have no link to this app",
                )
            }
        }
        Err(crate::oauth::runtime::RuntimeError::Status(status))
            if status.code() == tonic::Code::InvalidArgument =>
        {
            error(StatusCode::BAD_REQUEST, "invalid_request", "not an app id")
        }
        Err(failure) => {
            tracing::warn!(error = %failure, "disconnecting a user's account link failed");
            vault_unavailable()
        }
    }
}

/// The largest `PUT /me/credentials/{credential}` body.
const MAX_CREDENTIAL_BODY_BYTES: usize = 64 * 1024;

/// The credentials a user of `identity_provider` may give their own value of: those a
/// server of that identity provider sends per user, each with the servers that do.
fn own_credentials(
    snapshot: &CompiledSnapshot,
    identity_provider: &str,
) -> std::collections::BTreeMap<CatalogId, Vec<String>> {
    let mut credentials = std::collections::BTreeMap::<CatalogId, Vec<String>>::new();
    for (name, server) in &snapshot.source.servers {
        let of_this_provider = matches!(
            &server.agent_auth.mode,
            portcullis_shared::config::AgentAuthMode::Interactive { identity_provider: provider, .. }
                if provider.as_str() == identity_provider
        );
        if !of_this_provider {
            continue;
        }
        for header in &server.outbound_headers {
            if let OutboundSource::VaultCredential {
                credential_id,
                scope: CredentialScope::PerUser,
            } = &header.source
            {
                let servers = credentials.entry(credential_id.clone()).or_default();
                if !servers.contains(&name.to_string()) {
                    servers.push(name.to_string());
                }
            }
        }
    }
    credentials
}

/// The credential a `/me/credentials/{credential}` request names, if this user may give
/// it their own value (else the refusal, boxed: a `Response` is large).
fn own_credential(me: &Me, credential: &str) -> Result<CatalogId, Box<Response>> {
    let credential_id = CatalogId::parse(credential).map_err(|_| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "not a credential id",
        ))
    })?;
    if own_credentials(&me.snapshot, &me.user.identity_provider).contains_key(&credential_id) {
        Ok(credential_id)
    } else {
        Err(Box::new(error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no server of yours uses this credential per user",
        )))
    }
}

fn credentials_unavailable() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "your stored values cannot be changed right now; try again shortly",
    )
}

/// After a change of the user's own value: this node's cached lookup is dropped, so their
/// next request here asks the control plane.
fn forget_cached(node: &NodeState, me: &Me, credential_id: &CatalogId) {
    node.outbound.user_credentials.forget(
        me.snapshot.version,
        credential_id,
        &user_key(&me.identity),
    );
}

/// `GET /me/credentials`.
pub async fn list_credentials(State(node): State<Arc<NodeState>>, request: Request) -> Response {
    let me = match authenticate(&node, request.headers()).await {
        Ok(me) => me,
        Err(response) => return response,
    };
    let Some(runtime) = node.linking.vault.runtime() else {
        return vault_unavailable();
    };
    let mut credentials = Vec::new();
    for (credential_id, servers) in own_credentials(&me.snapshot, &me.user.identity_provider) {
        let own = match runtime
            .get_user_credential(credential_id.as_str(), &me.user)
            .await
        {
            Ok(value) => value.is_some(),
            Err(failure) => {
                tracing::warn!(error = %failure, credential = %credential_id, "looking up a user's own credential value failed");
                return vault_unavailable();
            }
        };
        let stored = me.snapshot.source.credentials.get(&credential_id);
        credentials.push(json!({
            "credential_id": credential_id.as_str(),
            "description": stored.map(|credential| credential.description.clone()).unwrap_or_default(),
            "servers": servers,
            "own_value": own,
            "org_value": stored.is_some_and(|credential| credential.org_value.is_some()),
        }));
    }
    json_no_store(
        StatusCode::OK,
        &json!({
            "user": { "identity_provider": me.user.identity_provider, "subject": me.user.subject },
            "credentials": credentials,
        }),
    )
}

/// `PUT /me/credentials/{credential}`, body `{"value": "..."}`.
pub async fn put_credential(
    State(node): State<Arc<NodeState>>,
    Path(credential): Path<String>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let me = match authenticate(&node, &parts.headers).await {
        Ok(me) => me,
        Err(response) => return response,
    };
    let credential_id = match own_credential(&me, &credential) {
        Ok(credential_id) => credential_id,
        Err(response) => return *response,
    };
    let bad_request =
        |description: &str| error(StatusCode::BAD_REQUEST, "invalid_request", description);
    let is_json = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return bad_request("the body must be JSON (Content-Type: application/json)");
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_CREDENTIAL_BODY_BYTES).await else {
        return bad_request("the body is too large");
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        value: String,
    }
    // serde's message could quote the body: the value is never echoed.
    let Ok(Body { value }) = serde_json::from_slice::<Body>(&bytes) else {
        return bad_request(r#"the body must be {"value": "<your value>"}"#);
    };
    let value = SecretValue::new(value);
    if let Err(problem) = portcullis_shared::convert::check_user_credential_value(value.expose()) {
        return bad_request(&format!("value: {problem}"));
    }
    let Some(runtime) = node.linking.vault.runtime() else {
        return credentials_unavailable();
    };
    match runtime
        .put_own_credential(credential_id.as_str(), &me.user, &value)
        .await
    {
        Ok(revision) => {
            forget_cached(&node, &me, &credential_id);
            tracing::info!(credential = %credential_id, identity_provider = %me.user.identity_provider, user = %me.user.subject, revision, "a user stored their own credential value");
            json_no_store(
                StatusCode::OK,
                &json!({ "credential_id": credential_id.as_str(), "stored": true }),
            )
        }
        Err(failure) => runtime_refusal(failure, "storing a user's own credential value failed"),
    }
}

/// `DELETE /me/credentials/{credential}`.
pub async fn delete_credential(
    State(node): State<Arc<NodeState>>,
    Path(credential): Path<String>,
    request: Request,
) -> Response {
    let me = match authenticate(&node, request.headers()).await {
        Ok(me) => me,
        Err(response) => return response,
    };
    let credential_id = match own_credential(&me, &credential) {
        Ok(credential_id) => credential_id,
        Err(response) => return *response,
    };
    let Some(runtime) = node.linking.vault.runtime() else {
        return credentials_unavailable();
    };
    match runtime
        .delete_own_credential(credential_id.as_str(), &me.user)
        .await
    {
        Ok(deleted) => {
            forget_cached(&node, &me, &credential_id);
            tracing::info!(credential = %credential_id, identity_provider = %me.user.identity_provider, user = %me.user.subject, deleted, "a user deleted their own credential value");
            if deleted {
                json_no_store(
                    StatusCode::OK,
                    &json!({ "credential_id": credential_id.as_str(), "deleted": true }),
                )
            } else {
                error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "you have no value of your own for this credential",
                )
            }
        }
        Err(failure) => runtime_refusal(failure, "deleting a user's own credential value failed"),
    }
}

/// A control-plane refusal as the user sees it; no detail that could carry the value.
fn runtime_refusal(failure: crate::oauth::runtime::RuntimeError, what: &str) -> Response {
    if let crate::oauth::runtime::RuntimeError::Status(status) = &failure {
        match status.code() {
            tonic::Code::NotFound => {
                return error(StatusCode::NOT_FOUND, "not_found", "no such credential");
            }
            tonic::Code::InvalidArgument => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the control plane refused the value",
                );
            }
            _ => {}
        }
    }
    tracing::warn!(error = %failure, "{what}");
    credentials_unavailable()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audience_is_read_from_the_payload_only_to_choose_a_server() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"aud":"https://gw/mcp/github","sub":"a"}"#);
        assert_eq!(
            audience(&format!("x.{payload}.y")).as_deref(),
            Some("https://gw/mcp/github")
        );
        let payload = URL_SAFE_NO_PAD.encode(br#"{"aud":["https://gw/mcp/a","b"]}"#);
        assert_eq!(
            audience(&format!("x.{payload}.y")).as_deref(),
            Some("https://gw/mcp/a")
        );
        assert_eq!(audience("opaque-token"), None);
        assert_eq!(audience("a.!!!.c"), None);
    }
}

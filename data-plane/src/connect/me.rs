//! A user's own account links: `GET P/me/links` lists them, `DELETE P/me/links/{app}`
//! disconnects one. For users, as `portcullisctl link list/delete` is for admins.
//!
//! Authenticated with the user's gateway access token (`Authorization: Bearer`), the one
//! their MCP client holds: it is validated exactly as on the MCP server it was issued for
//! (its `aud`), signature, issuer, expiry, revocations and the identity provider included.
//! The user is that token's identity provider and subject; nobody can name another user.
//! Consequence, by design: any MCP client the user approved can list and disconnect the
//! user's links, not only the CLI. Answers never carry tokens.
//!
//! ```json
//! GET /me/links
//! {"user": {"identity_provider": "corp", "subject": "alice"},
//!  "links": [{"app_id": "github", "app": "GitHub", "status": "connected", "reason": "",
//!             "scope": "repo", "connected_at": 1767225600, "refreshed_at": 1767225600,
//!             "expires_at": 1767254400}]}
//! DELETE /me/links/github
//! {"app_id": "github", "deleted": true}     (404 {"error": "not_found"} when there was none)
//! ```

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::WWW_AUTHENTICATE;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Value, json};

use crate::oauth::http::json_no_store;
use crate::oauth::resource::GatewayContext;
use crate::oauth::runtime::VaultUser;
use crate::proxy::NodeState;
use crate::proxy::agent_auth::bearer_token;
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
    caller
        .identity
        .as_ref()
        .and_then(|identity| {
            Some(VaultUser::new(
                identity.identity_provider()?.to_string(),
                identity.subject(),
            ))
        })
        .ok_or_else(|| unauthenticated("the token names no user"))
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

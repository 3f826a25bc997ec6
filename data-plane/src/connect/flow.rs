//! The account-linking flow, from the prompt's link to the stored tokens.
//!
//! ```text
//! GET P/connect/{app}?request=<sealed link>     the user opens the prompt's link
//!   ──▶ identity provider login (OIDC, code + PKCE + nonce; silent with an IdP session)
//!   ──▶ GET P/oauth/callback?state=pcl1...      the same user as the link names? else 403
//!   ──▶ the app's provider: authorize (code + PKCE S256 + state, scopes, extra parameters)
//!   ──▶ GET P/connect/callback?code&state       code exchanged at the app's token endpoint
//!   ──▶ PutUserToken (the control plane seals and keeps them) ──▶ "connected" page
//! ```
//!
//! The link is not pre-authenticated: opening it starts a login at the identity provider the
//! link's user signs in with, through the node's own OIDC machinery (the same discovery,
//! client, code exchange and ID token checks as Interactive SSO, and the same redirect URI,
//! `P/oauth/callback`, which hands `pcl1` states here). Only when the signed-in user is the
//! link's user (same identity provider, same subject) does the browser go on to the app's
//! provider; anyone else gets a refusal page and nothing is linked. Each step's state is
//! bound to the browser that opened the link (the `portcullis-browser` cookie), so a flow
//! cannot be finished in another browser (login CSRF). Tokens from the provider go straight
//! to the control plane; no page, log line or URL shows them.

use std::sync::Arc;

use aws_lc_rs::digest::{SHA256, digest};
use axum::extract::{Path, Request, State};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, StatusCode};
use portcullis_shared::config::{IdentityProvider, OAuthApp};
use portcullis_shared::secret::SecretValue;
use subtle::ConstantTimeEq;

use crate::compiled::CompiledSnapshot;
use crate::connect::link::{ConnectAuthorization, ConnectLink, ConnectLogin};
use crate::connect::provider;
use crate::jwt::unix_now;
use crate::oauth::authorize::BROWSER_COOKIE;
use crate::oauth::http::{CookiePolicy, MAX_FORM_BYTES, Parameters, cookie, redirect};
use crate::oauth::identity_provider::IdentityProviders;
use crate::oauth::pages::{escape, page};
use crate::oauth::{pkce_challenge, random_id};
use crate::proxy::NodeState;
use crate::proxy::app_auth::AppAuthPlan;

/// The browser cookie lives this long (as Interactive SSO sets it).
const BROWSER_COOKIE_LIFETIME_SECS: i64 = 3600;

/// Where the app's provider sends the browser back.
pub const PROVIDER_CALLBACK_PATH: &str = "/connect/callback";

fn digest_text(value: &str) -> String {
    URL_SAFE_NO_PAD.encode(&digest(&SHA256, value.as_bytes()).as_ref()[..16])
}

fn cookies(node: &NodeState) -> CookiePolicy {
    CookiePolicy {
        secure: node.oauth.issuer.is_https(),
    }
}

/// The digest of the browser's binding cookie, and a new cookie value when it has none.
fn browser(node: &NodeState, headers: &HeaderMap) -> (String, Option<String>) {
    let name = cookies(node).name(BROWSER_COOKIE);
    match cookie(headers, &name).filter(|value| (16..=64).contains(&value.len())) {
        Some(value) => (digest_text(value), None),
        None => {
            let value = format!("{}{}", random_id(), random_id());
            (digest_text(&value), Some(value))
        }
    }
}

fn same_browser(node: &NodeState, headers: &HeaderMap, expected: &str) -> bool {
    let name = cookies(node).name(BROWSER_COOKIE);
    cookie(headers, &name).is_some_and(|value| {
        digest_text(value)
            .as_bytes()
            .ct_eq(expected.as_bytes())
            .into()
    })
}

/// A page of the flow (no scripts, unframeable, never cached: see [`page`]).
fn connect_page(status: StatusCode, title: &str, paragraphs: &[String]) -> Response {
    let mut body = format!("<h1>{}</h1>", escape(title));
    for paragraph in paragraphs {
        body.push_str(&format!("<p>{}</p>", escape(paragraph)));
    }
    page(status, title, &body)
}

/// A refusal of the flow: a page (boxed, as it travels in `Err`).
type Refusal = Box<Response>;

fn failure(status: StatusCode, message: &str) -> Refusal {
    Box::new(connect_page(
        status,
        "Connecting your account failed",
        &[
            message.to_owned(),
            "Nothing was connected. Ask your assistant again for a new link.".to_owned(),
        ],
    ))
}

/// The snapshot the flow runs on; a node without one yet refuses with 503.
fn current_snapshot(node: &NodeState) -> Result<Arc<CompiledSnapshot>, Refusal> {
    node.snapshots.load().ok_or_else(|| {
        failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "The gateway is starting; try again shortly.",
        )
    })
}

/// The app, server plan and identity provider a link names, if the configuration still
/// has them as they were.
struct Target<'a> {
    app: &'a OAuthApp<SecretValue>,
    server_scopes: Vec<String>,
    /// The RFC 8707 resource the tokens are for: the server's upstream URL.
    resource: String,
    identity_provider: &'a IdentityProvider<SecretValue>,
}

fn target<'a>(snapshot: &'a CompiledSnapshot, link: &ConnectLink) -> Result<Target<'a>, Refusal> {
    let gone = || {
        failure(
            StatusCode::NOT_FOUND,
            "This MCP server no longer uses this app, or the app is no longer configured.",
        )
    };
    let server = snapshot.server(&link.server).ok_or_else(gone)?;
    let AppAuthPlan::UserToken(plan) = &server.app_auth else {
        return Err(gone());
    };
    if plan.app_id().as_str() != link.app_id {
        return Err(gone());
    }
    let interactive = server.agent_auth.interactive().ok_or_else(gone)?;
    if interactive.identity_provider().as_str() != link.identity_provider {
        return Err(gone());
    }
    let app = snapshot
        .source
        .oauth_apps
        .get(plan.app_id())
        .ok_or_else(gone)?;
    let identity_provider = snapshot
        .source
        .identity_providers
        .get(interactive.identity_provider())
        .ok_or_else(gone)?;
    let upstream = snapshot
        .source
        .servers
        .iter()
        .find(|(name, _)| name.as_str() == link.server)
        .map(|(_, server)| &server.upstream_url)
        .ok_or_else(gone)?;
    Ok(Target {
        app,
        server_scopes: plan.scopes().to_vec(),
        resource: provider::resource_of(upstream),
        identity_provider,
    })
}

fn parameters(query: Option<&str>) -> Result<Parameters, Refusal> {
    let query = query.unwrap_or_default();
    if query.len() > MAX_FORM_BYTES {
        return Err(failure(
            StatusCode::URI_TOO_LONG,
            "The request is too long.",
        ));
    }
    Parameters::parse(query.as_bytes())
        .map_err(|error| failure(StatusCode::BAD_REQUEST, &error.to_string()))
}

/// `GET /connect/{app}?request=<sealed link>`: starts the login that verifies the user.
pub async fn start(
    State(node): State<Arc<NodeState>>,
    Path(app_id): Path<String>,
    request: Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let now = unix_now();
    let snapshot = match current_snapshot(&node) {
        Ok(snapshot) => snapshot,
        Err(refusal) => return *refusal,
    };
    let (browser_digest, new_cookie) = browser(&node, &parts.headers);
    let mut response = match begin(
        &node,
        &snapshot,
        &app_id,
        parts.uri.query(),
        browser_digest,
        now,
    )
    .await
    {
        Ok(response) => response,
        Err(refusal) => *refusal,
    };
    if let Some(value) = new_cookie
        && !cookies(&node).set(
            response.headers_mut(),
            BROWSER_COOKIE,
            &value,
            BROWSER_COOKIE_LIFETIME_SECS,
        )
    {
        tracing::error!("the browser cookie is not a valid header value");
    }
    response
}

async fn begin(
    node: &NodeState,
    snapshot: &CompiledSnapshot,
    app_id: &str,
    query: Option<&str>,
    browser: String,
    now: i64,
) -> Result<Response, Refusal> {
    let parameters = parameters(query)?;
    let keys = &snapshot.gateway_keys;
    let link = parameters
        .get("request")
        .and_then(|sealed| ConnectLink::open(keys, sealed, now).ok())
        .filter(|link| link.app_id == app_id)
        .ok_or_else(|| {
            failure(
                StatusCode::BAD_REQUEST,
                "This link has expired or was not made by this gateway.",
            )
        })?;
    let target = target(snapshot, &link)?;
    let metadata = node
        .oauth
        .identity_providers
        .metadata(target.identity_provider)
        .await
        .map_err(|error| {
            tracing::warn!(identity_provider = %target.identity_provider.id, %error, "identity provider unavailable");
            failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "The sign-in service cannot be reached; try again shortly.",
            )
        })?;
    let login = ConnectLogin {
        link,
        browser,
        code_verifier: format!("{}{}", random_id(), random_id()),
        nonce: random_id(),
    };
    let state = login.seal(keys, now).map_err(|_| {
        failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "The gateway cannot seal values right now; try again shortly.",
        )
    })?;
    let url = IdentityProviders::authorization_url(
        &metadata,
        target.identity_provider,
        &node.oauth.issuer.endpoint("/oauth/callback"),
        &state,
        &login.nonce,
        &pkce_challenge(&login.code_verifier),
    );
    Ok(redirect(StatusCode::FOUND, url.as_str()))
}

/// `GET /oauth/callback` with a `pcl1` state: the identity provider's answer to the login
/// of a link. The signed-in user must be the link's user.
pub async fn after_login(node: &NodeState, query: Option<&str>, headers: &HeaderMap) -> Response {
    let now = unix_now();
    let snapshot = match current_snapshot(node) {
        Ok(snapshot) => snapshot,
        Err(refusal) => return *refusal,
    };
    match verify_user(node, &snapshot, query, headers, now).await {
        Ok(response) => response,
        Err(refusal) => *refusal,
    }
}

async fn verify_user(
    node: &NodeState,
    snapshot: &CompiledSnapshot,
    query: Option<&str>,
    headers: &HeaderMap,
    now: i64,
) -> Result<Response, Refusal> {
    let parameters = parameters(query)?;
    let keys = &snapshot.gateway_keys;
    let login = parameters
        .get("state")
        .and_then(|state| ConnectLogin::open(keys, state, now).ok())
        .ok_or_else(|| {
            failure(
                StatusCode::BAD_REQUEST,
                "This sign-in expired or was not started at this gateway.",
            )
        })?;
    if !same_browser(node, headers, &login.browser) {
        return Err(failure(
            StatusCode::FORBIDDEN,
            "This sign-in was started in another browser.",
        ));
    }
    let link = &login.link;
    let target = target(snapshot, link)?;
    let provider = target.identity_provider;
    let metadata = node.oauth.identity_providers.metadata(provider).await.map_err(|error| {
        tracing::warn!(identity_provider = %provider.id, %error, "identity provider unavailable");
        failure(StatusCode::SERVICE_UNAVAILABLE, "The sign-in service cannot be reached; try again shortly.")
    })?;
    // RFC 9207: the answer must come from the provider the login went to.
    match parameters.get("iss") {
        Some(iss) if iss != metadata.issuer => {
            return Err(failure(
                StatusCode::BAD_REQUEST,
                "The sign-in answer came from another issuer.",
            ));
        }
        None if metadata.iss_parameter_supported => {
            return Err(failure(
                StatusCode::BAD_REQUEST,
                "The sign-in answer lacks its issuer.",
            ));
        }
        _ => {}
    }
    if parameters.get("error").is_some() {
        return Err(failure(
            StatusCode::FORBIDDEN,
            "The sign-in did not complete.",
        ));
    }
    let code = parameters
        .get("code")
        .ok_or_else(|| failure(StatusCode::BAD_REQUEST, "The sign-in answer has no code."))?;
    // Only the ID token matters here: this login proves who opened the link.
    let login_tokens = node
        .oauth
        .identity_providers
        .exchange(
            &metadata,
            provider,
            code,
            &node.oauth.issuer.endpoint("/oauth/callback"),
            &login.code_verifier,
            now,
        )
        .await
        .map_err(|error| {
            tracing::warn!(identity_provider = %provider.id, %error, "the login of an account link could not be completed");
            failure(StatusCode::BAD_GATEWAY, "The sign-in could not be completed.")
        })?;
    let user = IdentityProviders::verify_id_token(
        &metadata,
        provider,
        &login_tokens.id_token,
        &login.nonce,
        now,
    )
        .await
        .map_err(|error| {
            tracing::warn!(identity_provider = %provider.id, %error, "the ID token of an account link login was refused");
            failure(StatusCode::BAD_GATEWAY, "The sign-in could not be completed.")
        })?;
    if user.identity_provider != link.identity_provider || user.subject != link.subject {
        tracing::warn!(
            app = %link.app_id,
            server = %link.server,
            signed_in = %user.subject,
            link_for = %link.subject,
            "an account link was opened by another user: refused, nothing linked"
        );
        return Err(Box::new(connect_page(
            StatusCode::FORBIDDEN,
            "This link is for someone else",
            &[
                format!(
                    "This link connects a {} account for another user of {}. You are signed in as someone else, so nothing was connected.",
                    target.app.display_name, link.server
                ),
                "Ask your own assistant for a link if you want to connect your account.".to_owned(),
            ],
        )));
    }
    let authorization = ConnectAuthorization {
        link: link.clone(),
        browser: login.browser.clone(),
        code_verifier: format!("{}{}", random_id(), random_id()),
    };
    let state = authorization.seal(keys, now).map_err(|_| {
        failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "The gateway cannot seal values right now; try again shortly.",
        )
    })?;
    let url = provider::authorization_url(
        target.app,
        &provider::requested_scopes(&target.server_scopes, target.app),
        &target.resource,
        &node.oauth.issuer.endpoint(PROVIDER_CALLBACK_PATH),
        &state,
        &pkce_challenge(&authorization.code_verifier),
    );
    Ok(redirect(StatusCode::FOUND, url.as_str()))
}

/// `GET /connect/callback`: the app provider's answer. The code is exchanged and the
/// tokens go to the control plane.
pub async fn provider_callback(State(node): State<Arc<NodeState>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let now = unix_now();
    let snapshot = match current_snapshot(&node) {
        Ok(snapshot) => snapshot,
        Err(refusal) => return *refusal,
    };
    match store_tokens(&node, &snapshot, parts.uri.query(), &parts.headers, now).await {
        Ok(response) => response,
        Err(refusal) => *refusal,
    }
}

async fn store_tokens(
    node: &NodeState,
    snapshot: &CompiledSnapshot,
    query: Option<&str>,
    headers: &HeaderMap,
    now: i64,
) -> Result<Response, Refusal> {
    let parameters = parameters(query)?;
    let keys = &snapshot.gateway_keys;
    let authorization = parameters
        .get("state")
        .and_then(|state| ConnectAuthorization::open(keys, state, now).ok())
        .ok_or_else(|| {
            failure(
                StatusCode::BAD_REQUEST,
                "This authorization expired or was not started at this gateway.",
            )
        })?;
    if !same_browser(node, headers, &authorization.browser) {
        return Err(failure(
            StatusCode::FORBIDDEN,
            "This authorization was started in another browser.",
        ));
    }
    let link = &authorization.link;
    let target = target(snapshot, link)?;
    let app = target.app;
    if let Some(error) = parameters.get("error") {
        let error: String = error
            .chars()
            .filter(char::is_ascii_graphic)
            .take(64)
            .collect();
        tracing::info!(app = %link.app_id, user = %link.subject, %error, "the provider did not authorize an account link");
        return Err(failure(
            StatusCode::FORBIDDEN,
            &format!(
                "{} did not authorize the connection ({error}).",
                app.display_name
            ),
        ));
    }
    let code = parameters.get("code").ok_or_else(|| {
        failure(
            StatusCode::BAD_REQUEST,
            "The provider's answer has no code.",
        )
    })?;
    let tokens = provider::exchange_code(
        &node.linking.http,
        app,
        provider::Exchange {
            code,
            redirect_uri: &node.oauth.issuer.endpoint(PROVIDER_CALLBACK_PATH),
            code_verifier: &authorization.code_verifier,
            resource: &target.resource,
        },
        now,
    )
    .await
    .map_err(|error| {
        tracing::warn!(app = %link.app_id, user = %link.subject, %error, "exchanging an account link's code failed");
        failure(
            StatusCode::BAD_GATEWAY,
            &format!("{} did not accept the authorization.", app.display_name),
        )
    })?;
    let runtime = node.linking.vault.runtime().ok_or_else(|| {
        failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "The gateway cannot store the connection right now.",
        )
    })?;
    let user = link.user();
    runtime
        .put_user_token(&link.app_id, &user, &tokens)
        .await
        .map_err(|error| {
            tracing::warn!(app = %link.app_id, user = %link.subject, %error, "storing an account link's tokens failed");
            failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "The gateway cannot store the connection right now; try again shortly.",
            )
        })?;
    // This node forgets at once; the others hear it from the watch.
    node.linking.vault.invalidate(&link.key());
    tracing::info!(
        app = %link.app_id,
        server = %link.server,
        identity_provider = %link.identity_provider,
        user = %link.subject,
        "account connected"
    );
    Ok(connect_page(
        StatusCode::OK,
        &format!("{} connected", app.display_name),
        &[
            format!(
                "Your {} account is now connected to {}.",
                app.display_name, link.server
            ),
            "You can close this page and return to your chat, then ask again.".to_owned(),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_digests_are_stable_and_short() {
        let digest = digest_text("some-browser-cookie-value");
        assert_eq!(digest, digest_text("some-browser-cookie-value"));
        assert_ne!(digest, digest_text("another-browser-cookie"));
        assert_eq!(digest.len(), 22);
    }
}

//! `/oauth/authorize` and `/oauth/callback`: from an MCP client's authorization request,
//! through the user's consent and the login at the identity provider, to the gateway's
//! authorization code at the client's redirect URI.
//!
//! Order of checks (RFC 6749 section 4.1.2.1, OAuth 2.1): until the client and the redirect
//! URI are known to belong together, errors are shown as a page and never redirected (an
//! open redirector otherwise); after that, errors go back to the client with `state` and
//! `iss`.
//!
//! Consent (the MCP spec's confused-deputy rule): the gateway uses one registered client at
//! the identity provider for every MCP client, so a user's session there would otherwise
//! let any client that registered itself get a code silently. The user approves each client
//! once on a consent page (CSRF-protected: the form carries a sealed request bound to this
//! browser's cookie; unframeable); the approval is remembered in a sealed cookie; the
//! redirect to the identity provider, and the `state` for it, happen only after consent.
//!
//! Browser binding: a random cookie marks the browser that started a flow; the consent
//! request and the login state carry its digest, so neither can be finished in another
//! browser (login CSRF).

use std::sync::Arc;

use aws_lc_rs::digest::{SHA256, digest};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::ORIGIN;
use http::{HeaderMap, StatusCode};
use portcullis_shared::config::IdentityProvider;
use portcullis_shared::secret::SecretValue;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use url::Url;

use crate::compiled::CompiledSnapshot;
use crate::jwt::unix_now;
use crate::oauth::clients::{self, Client, ClientSource};
use crate::oauth::grant::{AuthorizationCode, GRANT_LIFETIME_SECS, Grant};
use crate::oauth::http::{
    CookiePolicy, MAX_FORM_BYTES, MAX_STATE_CHARS, Parameters, cookie, read_form, redirect,
};
use crate::oauth::identity_provider::IdentityProviders;
use crate::oauth::keyring::{GatewayKeyring, Purpose};
use crate::oauth::pages::{Consent, consent_page, error_page};
use crate::oauth::{AuthorizationServer, pkce_challenge, random_id};
use crate::proxy::NodeState;

/// A consent page and a login at the identity provider must finish within this long.
pub const FLOW_LIFETIME_SECS: i64 = 600;
/// An approval is remembered this long.
pub const CONSENT_LIFETIME_SECS: i64 = 30 * 24 * 3600;
/// At most this many approved clients per browser; the oldest go first.
pub const MAX_REMEMBERED_CLIENTS: usize = 32;
pub const BROWSER_COOKIE: &str = "portcullis-browser";
pub const CONSENT_COOKIE: &str = "portcullis-consent";
/// The identity provider's error codes passed on to the client as they are; any other
/// becomes `server_error`.
const PASSED_ON_ERRORS: &[&str] = &[
    "access_denied",
    "temporarily_unavailable",
    "login_required",
    "interaction_required",
    "consent_required",
    "account_selection_required",
];

/// An authorization request that passed every check, on its way through consent and login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAuthorization {
    pub client_id: String,
    pub redirect_uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    pub code_challenge: String,
    pub resource: String,
    pub server: String,
    pub scopes: Vec<String>,
    /// The digest of the browser cookie of the browser that started the flow.
    pub browser: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ConsentRequest {
    pending: PendingAuthorization,
}

/// The `state` sent to the identity provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoginState {
    pending: PendingAuthorization,
    identity_provider: String,
    code_verifier: String,
    nonce: String,
}

/// The clients a browser approved: digests of their ids, newest last.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Approvals {
    clients: Vec<String>,
}

fn digest_text(value: &str) -> String {
    URL_SAFE_NO_PAD.encode(&digest(&SHA256, value.as_bytes()).as_ref()[..16])
}

/// How an authorization request ends when it cannot continue.
#[derive(Debug)]
enum Failure {
    /// Shown to the user: the client or its redirect URI is not trusted, or the flow is
    /// broken beyond what the client could handle.
    Page(StatusCode, String),
    /// Sent back to the client's (validated) redirect URI.
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: &'static str,
        description: String,
    },
}

impl Failure {
    fn page(status: StatusCode, message: impl Into<String>) -> Self {
        Self::Page(status, message.into())
    }

    fn to_client(pending: &PendingAuthorization, error: &'static str, description: &str) -> Self {
        Self::Redirect {
            redirect_uri: pending.redirect_uri.clone(),
            state: pending.state.clone(),
            error,
            description: description.to_owned(),
        }
    }

    fn respond(self, issuer: &str, status: StatusCode) -> Response {
        match self {
            Failure::Page(status, message) => error_page(status, &message),
            Failure::Redirect {
                redirect_uri,
                state,
                error,
                description,
            } => {
                let mut pairs = vec![("error", error), ("error_description", &description)];
                if let Some(state) = &state {
                    pairs.push(("state", state));
                }
                pairs.push(("iss", issuer));
                match with_query(&redirect_uri, &pairs) {
                    Some(location) => redirect(status, &location),
                    None => error_page(StatusCode::BAD_REQUEST, "the redirect URI is unusable"),
                }
            }
        }
    }
}

/// `uri` with `pairs` appended to its query.
fn with_query(uri: &str, pairs: &[(&str, &str)]) -> Option<String> {
    let mut url = Url::parse(uri).ok()?;
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in pairs {
            query.append_pair(name, value);
        }
    }
    Some(url.to_string())
}

fn cookies(server: &AuthorizationServer) -> CookiePolicy {
    CookiePolicy {
        secure: server.issuer.is_https(),
    }
}

/// The browser's binding cookie, or a new one (to be set on the response).
struct Browser {
    digest: String,
    new_cookie: Option<String>,
}

fn browser(server: &AuthorizationServer, headers: &HeaderMap) -> Browser {
    let name = cookies(server).name(BROWSER_COOKIE);
    match cookie(headers, &name).filter(|value| (16..=64).contains(&value.len())) {
        Some(value) => Browser {
            digest: digest_text(value),
            new_cookie: None,
        },
        None => {
            let value = format!("{}{}", random_id(), random_id());
            Browser {
                digest: digest_text(&value),
                new_cookie: Some(value),
            }
        }
    }
}

fn same_browser(
    server: &AuthorizationServer,
    headers: &HeaderMap,
    pending: &PendingAuthorization,
) -> bool {
    let name = cookies(server).name(BROWSER_COOKIE);
    cookie(headers, &name).is_some_and(|value| {
        digest_text(value)
            .as_bytes()
            .ct_eq(pending.browser.as_bytes())
            .into()
    })
}

fn approvals(
    server: &AuthorizationServer,
    keys: &GatewayKeyring,
    headers: &HeaderMap,
    now_unix: i64,
) -> Approvals {
    let name = cookies(server).name(CONSENT_COOKIE);
    cookie(headers, &name)
        .and_then(|value| keys.open(Purpose::ConsentCookie, value, now_unix).ok())
        .unwrap_or_default()
}

fn set_cookie_headers(
    response: &mut Response,
    cookies: Vec<(String, String, i64)>,
    policy: CookiePolicy,
) {
    let headers = response.headers_mut();
    for (name, value, max_age) in cookies {
        if !policy.set(headers, &name, &value, max_age) {
            tracing::error!(cookie = %name, "a cookie value is not a valid header value");
        }
    }
}

/// `GET /oauth/authorize`.
pub async fn authorize(State(node): State<Arc<NodeState>>, request: Request) -> Response {
    let server = &node.oauth;
    let now = unix_now();
    let (parts, _) = request.into_parts();
    let Some(snapshot) = node.snapshots.load() else {
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is starting; try again shortly",
        );
    };
    let browser = browser(server, &parts.headers);
    let outcome = start(
        server,
        &snapshot,
        parts.uri.query(),
        &browser,
        &parts.headers,
        now,
    )
    .await;
    let mut response = match outcome {
        Ok(response) => response,
        Err(failure) => failure.respond(server.issuer.as_str(), StatusCode::FOUND),
    };
    if let Some(value) = browser.new_cookie {
        set_cookie_headers(
            &mut response,
            vec![(BROWSER_COOKIE.to_owned(), value, FLOW_LIFETIME_SECS * 6)],
            cookies(server),
        );
    }
    response
}

/// The checks of `GET /oauth/authorize`, then consent or the login.
async fn start(
    server: &AuthorizationServer,
    snapshot: &CompiledSnapshot,
    query: Option<&str>,
    browser: &Browser,
    headers: &HeaderMap,
    now: i64,
) -> Result<Response, Failure> {
    let query = query.unwrap_or_default();
    if query.len() > MAX_FORM_BYTES {
        return Err(Failure::page(
            StatusCode::URI_TOO_LONG,
            "the authorization request is too long",
        ));
    }
    let parameters = Parameters::parse(query.as_bytes())
        .map_err(|error| Failure::page(StatusCode::BAD_REQUEST, error.to_string()))?;
    let keys = &snapshot.gateway_keys;
    if !keys.can_issue() {
        return Err(Failure::page(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway has no signing keys yet; try again shortly",
        ));
    }

    // The client and its redirect URI: until both check out, errors are pages.
    let client_id = parameters.get("client_id").unwrap_or_default();
    let client = clients::resolve(server, keys, client_id, now)
        .await
        .map_err(|error| Failure::page(StatusCode::BAD_REQUEST, error.to_string()))?;
    let redirect_uri = match parameters.get("redirect_uri") {
        Some(uri)
            if client
                .redirect_uris
                .iter()
                .any(|registered| registered == uri) =>
        {
            uri.to_owned()
        }
        Some(_) => {
            return Err(Failure::page(
                StatusCode::BAD_REQUEST,
                "the redirect_uri is not one the client registered",
            ));
        }
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        None => {
            return Err(Failure::page(
                StatusCode::BAD_REQUEST,
                "redirect_uri is required for a client with several redirect URIs",
            ));
        }
    };
    let state = parameters.get("state").map(str::to_owned);
    if state
        .as_ref()
        .is_some_and(|state| state.len() > MAX_STATE_CHARS)
    {
        return Err(Failure::page(
            StatusCode::BAD_REQUEST,
            "the state parameter is too long",
        ));
    }

    // From here on, errors go back to the client.
    let back = |error: &'static str, description: &str| Failure::Redirect {
        redirect_uri: redirect_uri.clone(),
        state: state.clone(),
        error,
        description: description.to_owned(),
    };
    match parameters.get("response_type") {
        Some("code") => {}
        Some(_) => {
            return Err(back(
                "unsupported_response_type",
                "only response_type=code is supported",
            ));
        }
        None => return Err(back("invalid_request", "response_type is required")),
    }
    match parameters.get("code_challenge_method") {
        Some("S256") => {}
        Some(_) => {
            return Err(back(
                "invalid_request",
                "only the S256 code_challenge_method is supported",
            ));
        }
        None => {
            return Err(back(
                "invalid_request",
                "PKCE is required: code_challenge_method=S256",
            ));
        }
    }
    let code_challenge = parameters
        .get("code_challenge")
        .filter(|challenge| is_s256_challenge(challenge))
        .ok_or_else(|| {
            back(
                "invalid_request",
                "PKCE is required: code_challenge must be a base64url SHA-256 (43 characters)",
            )
        })?
        .to_owned();
    let resource = parameters.get("resource").ok_or_else(|| {
        back(
            "invalid_target",
            "resource is required: the URI of the MCP server (RFC 8707)",
        )
    })?;
    let (server_name, plan) = server
        .issuer
        .server_of_resource(resource)
        .and_then(|name| {
            let plan = snapshot.server(&name)?.agent_auth.interactive()?;
            Some((name, plan))
        })
        .ok_or_else(|| {
            back(
                "invalid_target",
                "the resource is not an MCP server of this gateway with interactive sign-in",
            )
        })?;
    let scopes = granted_scopes(
        parameters.get("scope"),
        plan.scopes().iter().map(|scope| scope.as_str()),
    )
    .ok_or_else(|| {
        back(
            "invalid_scope",
            "none of the requested scopes is offered by this MCP server",
        )
    })?;
    let pending = PendingAuthorization {
        client_id: client.client_id.clone(),
        redirect_uri,
        state,
        code_challenge,
        // The canonical spelling, whatever form of it the client sent.
        resource: server.issuer.resource(&server_name),
        server: server_name,
        scopes,
        browser: browser.digest.clone(),
    };
    let provider = snapshot
        .source
        .identity_providers
        .get(plan.identity_provider())
        .ok_or_else(|| {
            Failure::to_client(
                &pending,
                "server_error",
                "the server's identity provider is not configured",
            )
        })?;

    let client_digest = digest_text(&client.client_id);
    if approvals(server, keys, headers, now)
        .clients
        .contains(&client_digest)
    {
        return login_redirect(server, keys, provider, pending, StatusCode::FOUND, now).await;
    }
    let consent_request = keys
        .seal(
            Purpose::ConsentRequest,
            &ConsentRequest {
                pending: pending.clone(),
            },
            now + FLOW_LIFETIME_SECS,
        )
        .map_err(|_| {
            Failure::to_client(
                &pending,
                "temporarily_unavailable",
                "the gateway cannot seal values right now",
            )
        })?;
    Ok(render_consent(
        server,
        &client,
        &pending,
        provider,
        &consent_request,
    ))
}

fn render_consent(
    server: &AuthorizationServer,
    client: &Client,
    pending: &PendingAuthorization,
    provider: &IdentityProvider<SecretValue>,
    consent_request: &str,
) -> Response {
    let name = client.display_name();
    let (identifier, verified) = match client.source {
        ClientSource::MetadataDocument => (client.client_id.as_str(), true),
        ClientSource::Registered => ("registered itself with this gateway (unverified)", false),
    };
    let provider_name = if provider.display_name.is_empty() {
        provider.id.as_str()
    } else {
        provider.display_name.as_str()
    };
    consent_page(&Consent {
        client_name: &name,
        client_name_verified: verified,
        client_identifier: identifier,
        redirect_uri: &pending.redirect_uri,
        server: &pending.server,
        resource: &pending.resource,
        scopes: &pending.scopes,
        identity_provider: provider_name,
        action: &server.issuer.endpoint("/oauth/authorize"),
        consent_request,
    })
}

/// The scopes to grant: the server's when the client asks for none, else those it asks for
/// that the server offers (others are ignored, RFC 6749 section 3.3). `None` when it asks
/// only for scopes the server does not offer.
pub fn granted_scopes<'a>(
    requested: Option<&str>,
    offered: impl Iterator<Item = &'a str> + Clone,
) -> Option<Vec<String>> {
    let requested: Vec<&str> = requested
        .unwrap_or_default()
        .split(' ')
        .filter(|scope| !scope.is_empty())
        .collect();
    if requested.is_empty() {
        return Some(offered.map(str::to_owned).collect());
    }
    let mut granted: Vec<String> = Vec::new();
    for scope in offered.clone() {
        if requested.contains(&scope) && !granted.iter().any(|kept| kept == scope) {
            granted.push(scope.to_owned());
        }
    }
    if granted.is_empty() && offered.clone().next().is_some() {
        return None;
    }
    Some(granted)
}

/// A PKCE S256 challenge: 43 base64url characters (RFC 7636 section 4.2).
fn is_s256_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// After consent: the login state, sealed, and the redirect to the identity provider.
async fn login_redirect(
    server: &AuthorizationServer,
    keys: &GatewayKeyring,
    provider: &IdentityProvider<SecretValue>,
    pending: PendingAuthorization,
    status: StatusCode,
    now: i64,
) -> Result<Response, Failure> {
    let metadata = server.identity_providers.metadata(provider).await.map_err(|error| {
        tracing::warn!(identity_provider = %provider.id, %error, "identity provider unavailable");
        Failure::to_client(&pending, "temporarily_unavailable", "the identity provider cannot be reached")
    })?;
    let code_verifier = format!("{}{}", random_id(), random_id());
    let nonce = random_id();
    let login = LoginState {
        pending,
        identity_provider: provider.id.to_string(),
        code_verifier,
        nonce,
    };
    let state = keys
        .seal(Purpose::LoginState, &login, now + FLOW_LIFETIME_SECS)
        .map_err(|_| {
            Failure::to_client(
                &login.pending,
                "temporarily_unavailable",
                "the gateway cannot seal values right now",
            )
        })?;
    let url = IdentityProviders::authorization_url(
        &metadata,
        provider,
        &server.issuer.endpoint("/oauth/callback"),
        &state,
        &login.nonce,
        &pkce_challenge(&login.code_verifier),
    );
    Ok(redirect(status, url.as_str()))
}

/// Refuses a form post another site made the browser send: when the browser says where the
/// post came from, it must be the gateway itself.
fn posted_from_elsewhere(server: &AuthorizationServer, headers: &HeaderMap) -> bool {
    let origin = headers.get(ORIGIN).and_then(|value| value.to_str().ok());
    if let Some(origin) = origin
        && origin != server.issuer.origin()
    {
        return true;
    }
    headers
        .get("sec-fetch-site")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|site| site != "same-origin" && site != "none")
}

/// `POST /oauth/authorize`: the consent form.
pub async fn consent(State(node): State<Arc<NodeState>>, request: Request) -> Response {
    let server = &node.oauth;
    let now = unix_now();
    let (parts, body) = request.into_parts();
    let Some(snapshot) = node.snapshots.load() else {
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is starting; try again shortly",
        );
    };
    match decide(server, &snapshot, &parts.headers, body, now).await {
        Ok(response) => response,
        Err(failure) => failure.respond(server.issuer.as_str(), StatusCode::SEE_OTHER),
    }
}

async fn decide(
    server: &AuthorizationServer,
    snapshot: &CompiledSnapshot,
    headers: &HeaderMap,
    body: Body,
    now: i64,
) -> Result<Response, Failure> {
    if posted_from_elsewhere(server, headers) {
        return Err(Failure::page(
            StatusCode::FORBIDDEN,
            "the consent form was posted from another site",
        ));
    }
    let parameters = read_form(headers, body)
        .await
        .map_err(|error| Failure::page(StatusCode::BAD_REQUEST, error.to_string()))?;
    let keys = &snapshot.gateway_keys;
    let request: ConsentRequest = parameters
        .get("consent_request")
        .ok_or_else(|| Failure::page(StatusCode::BAD_REQUEST, "the consent form is incomplete"))
        .and_then(|sealed| {
            keys.open(Purpose::ConsentRequest, sealed, now)
                .map_err(|_| {
                    Failure::page(
                        StatusCode::BAD_REQUEST,
                        "this consent page expired or is not from this gateway",
                    )
                })
        })?;
    let pending = request.pending;
    if !same_browser(server, headers, &pending) {
        return Err(Failure::page(
            StatusCode::FORBIDDEN,
            "the consent was not given in the browser that started the sign-in",
        ));
    }
    match parameters.get("decision") {
        Some("approve") => {}
        Some("deny") => {
            return Err(Failure::to_client(
                &pending,
                "access_denied",
                "the user denied access",
            ));
        }
        _ => {
            return Err(Failure::page(
                StatusCode::BAD_REQUEST,
                "the consent form is incomplete",
            ));
        }
    }
    // The server or its identity provider may have changed while the page was open.
    let provider = snapshot
        .server(&pending.server)
        .and_then(|compiled| compiled.agent_auth.interactive())
        .and_then(|plan| {
            snapshot
                .source
                .identity_providers
                .get(plan.identity_provider())
        })
        .ok_or_else(|| {
            Failure::to_client(
                &pending,
                "invalid_target",
                "the MCP server no longer uses interactive sign-in",
            )
        })?;

    let mut approvals = approvals(server, keys, headers, now);
    let client_digest = digest_text(&pending.client_id);
    approvals
        .clients
        .retain(|approved| approved != &client_digest);
    approvals.clients.push(client_digest);
    let excess = approvals
        .clients
        .len()
        .saturating_sub(MAX_REMEMBERED_CLIENTS);
    approvals.clients.drain(..excess);
    let approvals = keys
        .seal(
            Purpose::ConsentCookie,
            &approvals,
            now + CONSENT_LIFETIME_SECS,
        )
        .map_err(|_| {
            Failure::to_client(
                &pending,
                "temporarily_unavailable",
                "the gateway cannot seal values right now",
            )
        })?;

    let mut response =
        login_redirect(server, keys, provider, pending, StatusCode::SEE_OTHER, now).await?;
    set_cookie_headers(
        &mut response,
        vec![(CONSENT_COOKIE.to_owned(), approvals, CONSENT_LIFETIME_SECS)],
        cookies(server),
    );
    Ok(response)
}

/// `GET /oauth/callback`: the identity provider's answer.
pub async fn callback(State(node): State<Arc<NodeState>>, request: Request) -> Response {
    let server = &node.oauth;
    let now = unix_now();
    let (parts, _) = request.into_parts();
    let Some(snapshot) = node.snapshots.load() else {
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is starting; try again shortly",
        );
    };
    match finish(server, &snapshot, parts.uri.query(), &parts.headers, now).await {
        Ok(response) => response,
        Err(failure) => failure.respond(server.issuer.as_str(), StatusCode::FOUND),
    }
}

async fn finish(
    server: &AuthorizationServer,
    snapshot: &CompiledSnapshot,
    query: Option<&str>,
    headers: &HeaderMap,
    now: i64,
) -> Result<Response, Failure> {
    let query = query.unwrap_or_default();
    if query.len() > MAX_FORM_BYTES {
        return Err(Failure::page(
            StatusCode::URI_TOO_LONG,
            "the identity provider's answer is too long",
        ));
    }
    let parameters = Parameters::parse(query.as_bytes())
        .map_err(|error| Failure::page(StatusCode::BAD_REQUEST, error.to_string()))?;
    let keys = &snapshot.gateway_keys;
    let login: LoginState = parameters
        .get("state")
        .and_then(|state| keys.open(Purpose::LoginState, state, now).ok())
        .ok_or_else(|| {
            Failure::page(
                StatusCode::BAD_REQUEST,
                "this sign-in expired or was not started at this gateway",
            )
        })?;
    let pending = &login.pending;
    if !same_browser(server, headers, pending) {
        return Err(Failure::page(
            StatusCode::FORBIDDEN,
            "this sign-in was started in another browser",
        ));
    }
    let provider = snapshot
        .source
        .identity_providers
        .iter()
        .find(|(id, _)| id.as_str() == login.identity_provider)
        .map(|(_, provider)| provider)
        .ok_or_else(|| {
            Failure::to_client(
                pending,
                "server_error",
                "the identity provider is no longer configured",
            )
        })?;
    let metadata = server.identity_providers.metadata(provider).await.map_err(|error| {
        tracing::warn!(identity_provider = %provider.id, %error, "identity provider unavailable");
        Failure::to_client(pending, "temporarily_unavailable", "the identity provider cannot be reached")
    })?;
    // RFC 9207: the answer must come from the provider the login went to (mix-up attacks).
    match parameters.get("iss") {
        Some(iss) if iss != metadata.issuer => {
            tracing::warn!(identity_provider = %provider.id, "the identity provider's answer names another issuer");
            return Err(Failure::to_client(
                pending,
                "access_denied",
                "the sign-in answer came from another issuer",
            ));
        }
        None if metadata.iss_parameter_supported => {
            return Err(Failure::to_client(
                pending,
                "access_denied",
                "the sign-in answer lacks its issuer",
            ));
        }
        _ => {}
    }
    if let Some(error) = parameters.get("error") {
        let passed_on = PASSED_ON_ERRORS
            .iter()
            .find(|known| **known == error)
            .copied()
            .unwrap_or("server_error");
        tracing::info!(identity_provider = %provider.id, error = %error.chars().take(64).collect::<String>(), "the identity provider refused the login");
        return Err(Failure::to_client(
            pending,
            passed_on,
            "the identity provider did not sign the user in",
        ));
    }
    let code = parameters.get("code").ok_or_else(|| {
        Failure::to_client(
            pending,
            "server_error",
            "the identity provider sent no code",
        )
    })?;
    let redirect_uri = server.issuer.endpoint("/oauth/callback");
    let login_tokens = server
        .identity_providers
        .exchange(&metadata, provider, code, &redirect_uri, &login.code_verifier, now)
        .await
        .map_err(|error| {
            tracing::warn!(identity_provider = %provider.id, %error, "the login could not be completed");
            Failure::to_client(pending, "server_error", "the sign-in at the identity provider could not be completed")
        })?;
    let user = IdentityProviders::verify_id_token(&metadata, provider, &login_tokens.id_token, &login.nonce, now)
        .await
        .map_err(|error| {
            tracing::warn!(identity_provider = %provider.id, %error, "the identity provider's ID token was refused");
            Failure::to_client(pending, "server_error", "the identity provider's answer was refused")
        })?;
    tracing::info!(
        identity_provider = %provider.id,
        subject = %user.subject,
        server = %pending.server,
        "user signed in"
    );
    let grant = Grant {
        grant_id: random_id(),
        client_id: pending.client_id.clone(),
        resource: pending.resource.clone(),
        scopes: pending.scopes.clone(),
        user,
        issued_at_unix: now,
        expires_at_unix: now + GRANT_LIFETIME_SECS,
        // The user's own provider token, for "Forward caller's token" and "On behalf of
        // caller"; sealed wherever the grant travels.
        identity_provider_tokens: login_tokens.provider_tokens,
    };
    let code = AuthorizationCode::new(
        grant,
        pending.redirect_uri.clone(),
        pending.code_challenge.clone(),
    )
    .seal(keys, now)
    .map_err(|_| {
        Failure::to_client(
            pending,
            "temporarily_unavailable",
            "the gateway cannot seal values right now",
        )
    })?;
    let mut pairs = vec![("code", code.as_str())];
    if let Some(state) = &pending.state {
        pairs.push(("state", state));
    }
    pairs.push(("iss", server.issuer.as_str()));
    let location = with_query(&pending.redirect_uri, &pairs)
        .ok_or_else(|| Failure::page(StatusCode::BAD_REQUEST, "the redirect URI is unusable"))?;
    Ok(redirect(StatusCode::FOUND, &location))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_default_to_the_servers_and_narrow_to_what_is_offered() {
        let offered = ["mcp:read", "mcp:write"];
        let grant = |requested| granted_scopes(requested, offered.iter().copied());
        assert_eq!(grant(None).unwrap(), ["mcp:read", "mcp:write"]);
        assert_eq!(grant(Some("mcp:write")).unwrap(), ["mcp:write"]);
        assert_eq!(
            grant(Some("mcp:write offline_access")).unwrap(),
            ["mcp:write"]
        );
        assert_eq!(grant(Some("admin")), None);
        // A server without scopes grants none, whatever is asked.
        assert_eq!(
            granted_scopes(Some("anything"), std::iter::empty()).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn only_s256_challenges_pass() {
        assert!(is_s256_challenge(&"a".repeat(43)));
        assert!(is_s256_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!is_s256_challenge(&"a".repeat(44)));
        assert!(!is_s256_challenge(&format!("{}=", "a".repeat(42))));
        assert!(!is_s256_challenge(""));
    }

    #[test]
    fn redirects_keep_the_clients_query() {
        assert_eq!(
            with_query(
                "http://127.0.0.1:9/cb?x=1",
                &[("code", "a b"), ("iss", "https://gw")]
            )
            .unwrap(),
            "http://127.0.0.1:9/cb?x=1&code=a+b&iss=https%3A%2F%2Fgw"
        );
        assert_eq!(
            with_query("com.example.app:/cb", &[("error", "access_denied")]).unwrap(),
            "com.example.app:/cb?error=access_denied"
        );
    }
}

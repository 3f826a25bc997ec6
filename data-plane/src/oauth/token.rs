//! `POST /oauth/token` (authorization code and refresh token grants) and `POST /oauth/revoke`
//! (RFC 7009).
//!
//! Codes and refresh tokens are sealed and self-contained, so any node redeems them; each is
//! single use across the fleet through the control plane's `ConsumeOnce`. A second use is a
//! sign that the value leaked: a reused code or refresh token revokes its whole grant
//! (`RevokeGrant`), which every node learns from the next snapshot, and is answered
//! `invalid_grant`. When the control plane cannot be asked, the answer is 503
//! `temporarily_unavailable`: single use is never skipped.
//!
//! Refresh tokens rotate: each use returns a new one for the same grant. A grant ends
//! [`GRANT_LIFETIME_SECS`](crate::oauth::grant::GRANT_LIFETIME_SECS) after the login.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use portcullis_shared::names::{CatalogId, UserId};
use serde_json::{Value, json};

use crate::compiled::CompiledSnapshot;
use crate::jwt::token::{self as jwt_token, ClaimRules};
use crate::jwt::{LEEWAY_SECS, unix_now};
use crate::oauth::AuthorizationServer;
use crate::oauth::clients::{self, Client, PresentedClient};
use crate::oauth::grant::{
    AUTHORIZATION_CODE_LIFETIME_SECS, AuthorizationCode, GRANT_LIFETIME_SECS, Grant, RefreshToken,
    mint_access_token,
};
use crate::oauth::http::{OAuthError, Parameters, json_no_store, read_form};
use crate::oauth::identity_provider::{IdentityProviderError, RefreshFailure};
use crate::oauth::keyring::{GatewayKeyring, Purpose};
use crate::oauth::pkce_matches;
use crate::oauth::runtime::{OnceNamespace, RuntimeClient};
use crate::proxy::NodeState;

/// Consumed-value records are kept a little past the value's expiry, for clock skew.
const CONSUME_SKEW_SECS: i64 = 60;
/// The identity provider's token is renewed when it would expire less than this long after
/// the access token being minted.
const PROVIDER_TOKEN_RENEWAL_SKEW_SECS: i64 = 60;

/// `POST /oauth/token`.
pub async fn token(State(node): State<Arc<NodeState>>, request: Request) -> Response {
    let now = unix_now();
    let (parts, body) = request.into_parts();
    let result = async {
        let snapshot = node
            .snapshots
            .load()
            .ok_or_else(|| OAuthError::temporarily_unavailable("the gateway is starting"))?;
        let parameters = read_form(&parts.headers, body).await?;
        let presented = clients::presented_client(&parts.headers, &parameters)?;
        match parameters.get("grant_type") {
            Some("authorization_code") => {
                redeem_code(&node.oauth, &snapshot, &parameters, &presented, now).await
            }
            Some("refresh_token") => {
                refresh(&node.oauth, &snapshot, &parameters, &presented, now).await
            }
            Some(_) => Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be authorization_code or refresh_token",
            )),
            None => Err(OAuthError::invalid_request("grant_type is required")),
        }
    }
    .await;
    match result {
        Ok(body) => json_no_store(StatusCode::OK, &body),
        Err(error) => error.into_response(),
    }
}

/// The client that presented itself, resolved and authenticated.
async fn authenticated_client(
    server: &AuthorizationServer,
    keys: &GatewayKeyring,
    presented: &PresentedClient,
    now: i64,
) -> Result<Client, OAuthError> {
    let client = clients::resolve(server, keys, &presented.client_id, now)
        .await
        .map_err(|error| {
            let mut refusal = OAuthError::invalid_client(error.to_string());
            refusal.basic_challenge = presented.basic;
            refusal
        })?;
    clients::authenticate(keys, &client, presented)?;
    Ok(client)
}

/// Refuses a grant that was revoked, whose user signed out after the login, whose server
/// no longer signs users in through the same identity provider, or that ended.
fn check_grant_alive(
    server: &AuthorizationServer,
    snapshot: &CompiledSnapshot,
    grant: &Grant,
    now: i64,
) -> Result<(), OAuthError> {
    if now >= grant.expires_at_unix {
        return Err(OAuthError::invalid_grant(
            "the grant expired; sign in again",
        ));
    }
    if snapshot.source.revoked_grants.contains_key(&grant.grant_id) {
        return Err(OAuthError::invalid_grant(
            "the grant was revoked; sign in again",
        ));
    }
    let revoked_at = CatalogId::parse(&grant.user.identity_provider)
        .ok()
        .zip(UserId::parse(&grant.user.subject).ok())
        .and_then(|user| snapshot.source.revoked_users.get(&user));
    // The gateway login, not the identity provider's auth_time: a user signed out here
    // signs in again through the provider's session without re-authenticating there.
    if revoked_at.is_some_and(|revoked_at| grant.issued_at_unix <= *revoked_at) {
        return Err(OAuthError::invalid_grant(
            "the user was signed out; sign in again",
        ));
    }
    let still_served = server
        .issuer
        .server_of_resource(&grant.resource)
        .and_then(|name| snapshot.server(&name))
        .and_then(|compiled| compiled.agent_auth.interactive())
        .is_some_and(|plan| plan.identity_provider().as_str() == grant.user.identity_provider);
    if !still_served {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            "the MCP server no longer signs users in this way",
        ));
    }
    Ok(())
}

/// A `resource` parameter, when sent, must name the grant's resource.
fn check_resource(
    server: &AuthorizationServer,
    parameters: &Parameters,
    grant: &Grant,
) -> Result<(), OAuthError> {
    let Some(resource) = parameters.get("resource") else {
        return Ok(());
    };
    let matches = server
        .issuer
        .server_of_resource(resource)
        .is_some_and(|name| server.issuer.resource(&name) == grant.resource);
    if matches {
        Ok(())
    } else {
        Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_target",
            "the resource differs from the one the grant is for",
        ))
    }
}

fn runtime(server: &AuthorizationServer) -> Result<&RuntimeClient, OAuthError> {
    server.runtime.as_ref().ok_or_else(|| {
        OAuthError::temporarily_unavailable("the gateway cannot reach its control plane")
    })
}

/// Marks a one-time value used. `Ok(false)`: it was used before.
async fn consume(
    server: &AuthorizationServer,
    namespace: OnceNamespace,
    jti: &str,
    expires_at: i64,
) -> Result<bool, OAuthError> {
    runtime(server)?
        .consume_once(namespace, jti, expires_at + CONSUME_SKEW_SECS)
        .await
        .map_err(|error| {
            tracing::warn!(%error, namespace = namespace.as_str(), "single use could not be checked");
            OAuthError::temporarily_unavailable(
                "the gateway cannot reach its control plane; try again",
            )
        })
}

/// Revokes a grant after a reuse. The reuse is refused whether or not the revocation
/// reaches the control plane; a failure is logged loudly.
async fn revoke_after_reuse(server: &AuthorizationServer, grant: &Grant, reason: &str) {
    tracing::warn!(
        grant_id = %grant.grant_id,
        subject = %grant.user.subject,
        reason,
        "a one-time value was used twice: revoking its grant"
    );
    match runtime(server) {
        Ok(runtime) => {
            if let Err(error) = runtime
                .revoke_grant(&grant.grant_id, grant.expires_at_unix, reason)
                .await
            {
                tracing::error!(grant_id = %grant.grant_id, %error, "the grant could not be revoked");
            }
        }
        Err(_) => {
            tracing::error!(grant_id = %grant.grant_id, "no control plane to revoke the grant with");
        }
    }
}

/// The token response: a fresh access token, and a rotated refresh token.
fn token_response(
    server: &AuthorizationServer,
    keys: &GatewayKeyring,
    grant: &Grant,
    access_scopes: Option<Vec<String>>,
    now: i64,
) -> Result<Value, OAuthError> {
    let lifetime = i64::try_from(server.settings.access_token_lifetime.as_secs()).unwrap_or(600);
    let mut access = grant.clone();
    if let Some(scopes) = access_scopes {
        access.scopes = scopes;
    }
    let (access_token, expires_in) =
        mint_access_token(keys, server.issuer.as_str(), &access, now, lifetime).map_err(
            |error| {
                tracing::warn!(%error, "access token not issued");
                OAuthError::temporarily_unavailable("the gateway has no signing key yet")
            },
        )?;
    let refresh_token = RefreshToken::new(grant.clone())
        .seal(keys)
        .map_err(|_| OAuthError::temporarily_unavailable("the gateway has no sealing key yet"))?;
    let mut body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": expires_in,
        "refresh_token": refresh_token,
    });
    if !access.scopes.is_empty() {
        body["scope"] = json!(access.scopes.join(" "));
    }
    Ok(body)
}

async fn redeem_code(
    server: &AuthorizationServer,
    snapshot: &CompiledSnapshot,
    parameters: &Parameters,
    presented: &PresentedClient,
    now: i64,
) -> Result<Value, OAuthError> {
    let keys = &snapshot.gateway_keys;
    let code: AuthorizationCode = parameters
        .get("code")
        .ok_or_else(|| OAuthError::invalid_request("code is required"))
        .and_then(|code| {
            keys.open(Purpose::AuthorizationCode, code, now)
                .map_err(|_| OAuthError::invalid_grant("the code is invalid or expired"))
        })?;
    let client = authenticated_client(server, keys, presented, now).await?;
    if client.client_id != code.grant.client_id {
        return Err(OAuthError::invalid_grant(
            "the code was issued to another client",
        ));
    }
    if let Some(redirect_uri) = parameters.get("redirect_uri")
        && redirect_uri != code.redirect_uri
    {
        return Err(OAuthError::invalid_grant(
            "the redirect_uri differs from the authorization request's",
        ));
    }
    let verifier = parameters
        .get("code_verifier")
        .ok_or_else(|| OAuthError::invalid_request("code_verifier is required (PKCE)"))?;
    if !pkce_matches(verifier, &code.code_challenge) {
        return Err(OAuthError::invalid_grant(
            "the code_verifier does not match",
        ));
    }
    check_resource(server, parameters, &code.grant)?;
    check_grant_alive(server, snapshot, &code.grant, now)?;
    let first_use = consume(
        server,
        OnceNamespace::AuthorizationCode,
        &code.jti,
        now + AUTHORIZATION_CODE_LIFETIME_SECS,
    )
    .await?;
    if !first_use {
        // RFC 6749 section 4.1.2: a code used twice revokes what it granted.
        revoke_after_reuse(server, &code.grant, "authorization_code_reuse").await;
        return Err(OAuthError::invalid_grant("the code was already used"));
    }
    token_response(server, keys, &code.grant, None, now)
}

async fn refresh(
    server: &AuthorizationServer,
    snapshot: &CompiledSnapshot,
    parameters: &Parameters,
    presented: &PresentedClient,
    now: i64,
) -> Result<Value, OAuthError> {
    let keys = &snapshot.gateway_keys;
    let token: RefreshToken = parameters
        .get("refresh_token")
        .ok_or_else(|| OAuthError::invalid_request("refresh_token is required"))
        .and_then(|token| {
            keys.open(Purpose::RefreshToken, token, now)
                .map_err(|_| OAuthError::invalid_grant("the refresh token is invalid or expired"))
        })?;
    let client = authenticated_client(server, keys, presented, now).await?;
    if client.client_id != token.grant.client_id {
        return Err(OAuthError::invalid_grant(
            "the refresh token was issued to another client",
        ));
    }
    check_resource(server, parameters, &token.grant)?;
    let narrowed = match parameters.get("scope") {
        None => None,
        Some(requested) => {
            let requested: Vec<String> = requested
                .split(' ')
                .filter(|scope| !scope.is_empty())
                .map(str::to_owned)
                .collect();
            if requested
                .iter()
                .any(|scope| !token.grant.scopes.contains(scope))
            {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "a refresh cannot add scopes the grant does not have",
                ));
            }
            Some(requested)
        }
    };
    check_grant_alive(server, snapshot, &token.grant, now)?;
    let first_use = consume(
        server,
        OnceNamespace::RefreshToken,
        &token.jti,
        token.grant.expires_at_unix,
    )
    .await?;
    if !first_use {
        revoke_after_reuse(server, &token.grant, "refresh_token_reuse").await;
        return Err(OAuthError::invalid_grant(
            "the refresh token was already used; the grant is revoked, sign in again",
        ));
    }
    let grant = renew_identity_provider_tokens(server, snapshot, token.grant, now).await?;
    token_response(server, keys, &grant, narrowed, now)
}

/// Renews the identity provider's access token kept in the grant when it would expire
/// before the access token about to be minted (plus a minute), with the provider's refresh
/// token and for the same resource.
///
/// It runs after the gateway's refresh token was consumed, so a provider refresh happens at
/// most once per gateway refresh across the fleet: two racing uses of one gateway refresh
/// token never both reach the provider, whose rotating refresh tokens would count that as
/// reuse. A provider that refuses the refresh token (`invalid_grant`: the user's session
/// there ended) ends the gateway grant too: the client must sign in again. A provider that
/// cannot be reached leaves the old token in the grant; the new access token then lives
/// only [`MIN_ACCESS_TOKEN_LIFETIME_SECS`](crate::oauth::grant::MIN_ACCESS_TOKEN_LIFETIME_SECS)
/// longer than it, and the next refresh tries again.
async fn renew_identity_provider_tokens(
    server: &AuthorizationServer,
    snapshot: &CompiledSnapshot,
    mut grant: Grant,
    now: i64,
) -> Result<Grant, OAuthError> {
    let Some(tokens) = &grant.identity_provider_tokens else {
        return Ok(grant);
    };
    let lifetime = i64::try_from(server.settings.access_token_lifetime.as_secs()).unwrap_or(600);
    if tokens.expires_at_unix > now + lifetime + PROVIDER_TOKEN_RENEWAL_SKEW_SECS
        || tokens.refresh_token.is_none()
    {
        return Ok(grant);
    }
    let Some(provider) = snapshot
        .source
        .identity_providers
        .iter()
        .find(|(id, _)| id.as_str() == grant.user.identity_provider)
        .map(|(_, provider)| provider)
    else {
        return Ok(grant);
    };
    let renewed = match server.identity_providers.metadata(provider).await {
        Ok(metadata) => {
            server
                .identity_providers
                .refresh(&metadata, provider, tokens, now)
                .await
        }
        Err(error) => Err(error),
    };
    match renewed {
        Ok(renewed) => {
            tracing::info!(
                identity_provider = %provider.id,
                grant_id = %grant.grant_id,
                "the identity provider's token was renewed"
            );
            grant.identity_provider_tokens = Some(renewed);
        }
        Err(IdentityProviderError::Refresh(RefreshFailure::Permanent(reason))) => {
            tracing::warn!(
                identity_provider = %provider.id,
                grant_id = %grant.grant_id,
                %reason,
                "the identity provider refused to renew the user's token: the user signs in again"
            );
            return Err(OAuthError::invalid_grant(
                "the identity provider ended the sign-in; sign in again",
            ));
        }
        Err(error) => {
            tracing::warn!(
                identity_provider = %provider.id,
                grant_id = %grant.grant_id,
                %error,
                "the identity provider's token could not be renewed now: kept, tried again at the next refresh"
            );
        }
    }
    Ok(grant)
}

/// The grant an access token of this gateway belongs to: its `sid`, client and a bound on
/// when the grant ends. `None` for anything that is not such a token.
fn access_token_grant(
    server: &AuthorizationServer,
    keys: &GatewayKeyring,
    token: &str,
    now: i64,
) -> Option<(String, String, i64)> {
    let unverified = jwt_token::parse(token).ok()?;
    let candidates = keys
        .verification_keys()?
        .select(unverified.key_id.as_deref(), unverified.algorithm)
        .ok()?;
    unverified.verify_signature(&candidates).ok()?;
    let rules = ClaimRules {
        issuer: Some(server.issuer.as_str()),
        audience: None,
        leeway_secs: LEEWAY_SECS,
    };
    let verified =
        jwt_token::check_claims(&unverified.verified_payload().ok()?, rules, now).ok()?;
    let text = |name: &str| verified.claims.get(name)?.as_str().map(str::to_owned);
    let issued_at = verified.claims.get("iat")?.as_i64()?;
    // The grant began before the token was issued, so it ends before this.
    Some((
        text("sid")?,
        text("client_id")?,
        issued_at + GRANT_LIFETIME_SECS,
    ))
}

/// `POST /oauth/revoke` (RFC 7009): revokes the grant of a refresh token or access token
/// of the calling client. Tokens that are not valid get 200, as the RFC asks.
pub async fn revoke(State(node): State<Arc<NodeState>>, request: Request) -> Response {
    let now = unix_now();
    let (parts, body) = request.into_parts();
    let server = &node.oauth;
    let result = async {
        let snapshot = node
            .snapshots
            .load()
            .ok_or_else(|| OAuthError::temporarily_unavailable("the gateway is starting"))?;
        let keys = &snapshot.gateway_keys;
        let parameters = read_form(&parts.headers, body).await?;
        let presented = clients::presented_client(&parts.headers, &parameters)?;
        let token = parameters
            .get("token")
            .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
        let client = authenticated_client(server, keys, &presented, now).await?;
        let grant = match keys.open::<RefreshToken>(Purpose::RefreshToken, token, now) {
            Ok(refresh) => Some((
                refresh.grant.grant_id,
                refresh.grant.client_id,
                refresh.grant.expires_at_unix,
            )),
            Err(_) => access_token_grant(server, keys, token, now),
        };
        let Some((grant_id, client_id, expires_at)) = grant else {
            return Ok(());
        };
        if client_id != client.client_id {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                "the token was issued to another client",
            ));
        }
        runtime(server)?
            .revoke_grant(&grant_id, expires_at, "logout")
            .await
            .map_err(|error| {
                tracing::warn!(%error, "a grant could not be revoked");
                OAuthError::temporarily_unavailable(
                    "the gateway cannot reach its control plane; try again",
                )
            })?;
        tracing::info!(grant_id = %grant_id, "grant revoked by its client");
        Ok(())
    }
    .await;
    match result {
        Ok(()) => json_no_store(StatusCode::OK, &json!({})),
        Err(error) => error.into_response(),
    }
}

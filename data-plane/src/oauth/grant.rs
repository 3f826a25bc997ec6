//! What a login grants, and the values that carry it: authorization codes, refresh tokens
//! (both sealed) and access tokens (ES256 JWTs).
//!
//! A grant is one login of one user for one client and one resource (an MCP server). Its
//! id (`sid` in access tokens) names the family of refresh tokens it produces, so revoking
//! the grant (refresh-token reuse, logout) ends all of them and every access token minted
//! from them.

use serde::{Deserialize, Serialize};

use crate::oauth::keyring::{GatewayKeyring, Purpose, SealError, SignError};
use crate::oauth::random_id;

/// Authorization codes are redeemed within this many seconds.
pub const AUTHORIZATION_CODE_LIFETIME_SECS: i64 = 60;
/// A grant (and so its refresh tokens) ends this long after the login, however often the
/// refresh token rotates. The user then logs in again (silently, when the identity provider
/// still has a session).
pub const GRANT_LIFETIME_SECS: i64 = 30 * 24 * 3600;
/// The default access-token lifetime (`--access-token-lifetime-secs`).
pub const DEFAULT_ACCESS_TOKEN_LIFETIME_SECS: u64 = 600;

/// The user, as the identity provider said at login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserIdentity {
    /// From the identity provider's user-id claim.
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The identity provider's catalog id.
    pub identity_provider: String,
    /// The identity provider's issuer, as its discovery document states it.
    pub identity_provider_issuer: String,
    /// When the user logged in (seconds since the epoch).
    pub auth_time: i64,
}

/// What a login granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub grant_id: String,
    pub client_id: String,
    /// The MCP server's canonical URI: the audience of every access token of the grant.
    pub resource: String,
    pub scopes: Vec<String>,
    pub user: UserIdentity,
    /// When the gateway granted it (the login at the gateway; the identity provider's
    /// `auth_time` may be older, from its own session). Signing a user out refuses the
    /// grants issued up to then. A value without it counts as issued at 0 (refused).
    #[serde(default)]
    pub issued_at_unix: i64,
    /// When the grant ends.
    pub expires_at_unix: i64,
}

/// The content of an authorization code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationCode {
    pub jti: String,
    pub grant: Grant,
    pub redirect_uri: String,
    /// The PKCE S256 challenge the client sent to the authorize endpoint.
    pub code_challenge: String,
}

/// The content of a refresh token. Each use consumes its `jti` and yields a new token with
/// a new `jti` for the same grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshToken {
    pub jti: String,
    pub grant: Grant,
}

impl AuthorizationCode {
    pub fn new(grant: Grant, redirect_uri: String, code_challenge: String) -> Self {
        Self {
            jti: random_id(),
            grant,
            redirect_uri,
            code_challenge,
        }
    }

    /// Seals the code; it expires [`AUTHORIZATION_CODE_LIFETIME_SECS`] after `now_unix`.
    pub fn seal(&self, keys: &GatewayKeyring, now_unix: i64) -> Result<String, SealError> {
        keys.seal(
            Purpose::AuthorizationCode,
            self,
            now_unix + AUTHORIZATION_CODE_LIFETIME_SECS,
        )
    }
}

impl RefreshToken {
    pub fn new(grant: Grant) -> Self {
        Self {
            jti: random_id(),
            grant,
        }
    }

    /// Seals the token; it expires with its grant.
    pub fn seal(&self, keys: &GatewayKeyring) -> Result<String, SealError> {
        keys.seal(Purpose::RefreshToken, self, self.grant.expires_at_unix)
    }
}

/// The claims of a gateway access token (RFC 9068 plus the gateway's own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    /// The grant id.
    pub sid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The identity provider's catalog id.
    pub idp: String,
    /// The identity provider's issuer.
    pub idp_iss: String,
    pub auth_time: i64,
}

/// Mints an access token for `grant`, valid for `lifetime_secs` from `now_unix` (never past
/// the grant's end).
pub fn mint_access_token(
    keys: &GatewayKeyring,
    issuer: &str,
    grant: &Grant,
    now_unix: i64,
    lifetime_secs: i64,
) -> Result<(String, i64), SignError> {
    let expires_at = (now_unix + lifetime_secs).min(grant.expires_at_unix);
    let claims = AccessTokenClaims {
        iss: issuer.to_owned(),
        aud: grant.resource.clone(),
        sub: grant.user.subject.clone(),
        client_id: grant.client_id.clone(),
        scope: grant.scopes.join(" "),
        iat: now_unix,
        exp: expires_at,
        jti: random_id(),
        sid: grant.grant_id.clone(),
        email: grant.user.email.clone(),
        groups: grant.user.groups.clone(),
        idp: grant.user.identity_provider.clone(),
        idp_iss: grant.user.identity_provider_issuer.clone(),
        auth_time: grant.user.auth_time,
    };
    let token = keys.sign_access_token(&claims)?;
    Ok((token, expires_at - now_unix))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn user(subject: &str) -> UserIdentity {
        UserIdentity {
            subject: subject.to_owned(),
            email: Some(format!("{subject}@example.com")),
            groups: vec!["eng".to_owned()],
            identity_provider: "corp".to_owned(),
            identity_provider_issuer: "https://idp.example.com".to_owned(),
            auth_time: 1_800_000_000,
        }
    }

    pub(crate) fn grant(subject: &str, resource: &str, expires_at_unix: i64) -> Grant {
        Grant {
            grant_id: random_id(),
            client_id: "client-1".to_owned(),
            resource: resource.to_owned(),
            scopes: vec!["mcp:tools".to_owned()],
            user: user(subject),
            issued_at_unix: 1_800_000_000,
            expires_at_unix,
        }
    }
}

//! What a login grants, and the values that carry it: authorization codes, refresh tokens
//! (both sealed) and access tokens (ES256 JWTs).
//!
//! A grant is one login of one user for one client and one resource (an MCP server). Its
//! id (`sid` in access tokens) names the family of refresh tokens it produces, so revoking
//! the grant (refresh-token reuse, logout) ends all of them and every access token minted
//! from them.
//!
//! The identity provider's own tokens from the login ([`IdentityProviderTokens`]: its
//! access token and refresh token) travel inside the grant, so inside the sealed code and
//! refresh tokens, and the access token alone also travels as the `idp_token` claim of
//! every gateway access token: a value sealed for [`Purpose::IdentityProviderToken`], bound
//! to the grant and the user ([`SealedIdentityProviderToken`]). A node recovers the user's
//! identity-provider token from the access token it validates, with no store; the MCP client
//! only ever holds it encrypted.

use serde::{Deserialize, Serialize};

use crate::oauth::keyring::{GatewayKeyring, OpenError, Purpose, SealError, SignError};
use crate::oauth::random_id;

/// Authorization codes are redeemed within this many seconds.
pub const AUTHORIZATION_CODE_LIFETIME_SECS: i64 = 60;
/// A grant (and so its refresh tokens) ends this long after the login, however often the
/// refresh token rotates. The user then logs in again (silently, when the identity provider
/// still has a session).
pub const GRANT_LIFETIME_SECS: i64 = 30 * 24 * 3600;
/// The default access-token lifetime (`--access-token-lifetime-secs`).
pub const DEFAULT_ACCESS_TOKEN_LIFETIME_SECS: u64 = 600;
/// A gateway access token carrying the identity provider's token expires with it, but
/// lives at least this long (so a client whose refresh could not renew the provider's token
/// comes back soon rather than at once).
pub const MIN_ACCESS_TOKEN_LIFETIME_SECS: i64 = 60;
/// The access-token claim that carries the identity provider's access token, sealed.
pub const IDENTITY_PROVIDER_TOKEN_CLAIM: &str = "idp_token";

/// The identity provider's tokens from the user's login (and its refreshes). Plaintext only
/// inside sealed values; `Debug` shows neither token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityProviderTokens {
    pub access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// When the access token expires (seconds since the epoch).
    pub expires_at_unix: i64,
    /// The RFC 8707 resource the access token was requested for (the catalog's
    /// `token_resource` at the time), so a refresh asks for the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

impl std::fmt::Debug for IdentityProviderTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityProviderTokens")
            .field("refresh_token", &self.refresh_token.is_some())
            .field("expires_at_unix", &self.expires_at_unix)
            .field("resource", &self.resource)
            .finish_non_exhaustive()
    }
}

/// The content of the `idp_token` claim: the identity provider's access token, bound to
/// the grant (`sid`) and user (`sub`) of the access token that carries it, so it cannot be
/// lifted into another user's token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedIdentityProviderToken {
    pub sid: String,
    pub sub: String,
    pub access_token: String,
    pub expires_at_unix: i64,
}

impl std::fmt::Debug for SealedIdentityProviderToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedIdentityProviderToken")
            .field("sid", &self.sid)
            .field("sub", &self.sub)
            .field("expires_at_unix", &self.expires_at_unix)
            .finish_non_exhaustive()
    }
}

/// Why the identity provider's token cannot be recovered from an access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentityProviderTokenError {
    #[error(
        "the access token carries no identity provider token (signed in before it was kept, or the provider issued none)"
    )]
    Absent,
    #[error("the identity provider token in the access token does not open: {0}")]
    Unreadable(OpenError),
    #[error("the identity provider token in the access token belongs to another grant")]
    WrongGrant,
    #[error(
        "the identity provider's token expired and could not be renewed; refresh or sign in again"
    )]
    Expired,
}

impl SealedIdentityProviderToken {
    /// Recovers the identity provider's access token from the `idp_token` claim of an
    /// access token whose `sid` and `sub` are given, valid at `now_unix`.
    pub fn open(
        keys: &GatewayKeyring,
        claim: Option<&str>,
        sid: Option<&str>,
        sub: &str,
        now_unix: i64,
    ) -> Result<Self, IdentityProviderTokenError> {
        let claim = claim.ok_or(IdentityProviderTokenError::Absent)?;
        let opened: Self = keys
            .open(Purpose::IdentityProviderToken, claim, now_unix)
            .map_err(|error| match error {
                OpenError::Expired => IdentityProviderTokenError::Expired,
                OpenError::WrongKind
                | OpenError::Malformed
                | OpenError::UnknownKey
                | OpenError::Tampered => IdentityProviderTokenError::Unreadable(error),
            })?;
        if Some(opened.sid.as_str()) != sid || opened.sub != sub {
            return Err(IdentityProviderTokenError::WrongGrant);
        }
        if opened.expires_at_unix <= now_unix {
            return Err(IdentityProviderTokenError::Expired);
        }
        Ok(opened)
    }
}

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
    /// The identity provider's tokens from the login, when it issued an access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_provider_tokens: Option<IdentityProviderTokens>,
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
    /// The identity provider's access token, sealed ([`SealedIdentityProviderToken`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp_token: Option<String>,
}

/// Mints an access token for `grant`, valid for `lifetime_secs` from `now_unix` (never past
/// the grant's end). When the grant holds the identity provider's access token, the token
/// carries it sealed and does not outlive it (by more than
/// [`MIN_ACCESS_TOKEN_LIFETIME_SECS`]), so a client refreshes before the upstream would see
/// an expired provider token.
pub fn mint_access_token(
    keys: &GatewayKeyring,
    issuer: &str,
    grant: &Grant,
    now_unix: i64,
    lifetime_secs: i64,
) -> Result<(String, i64), SignError> {
    let mut expires_at = (now_unix + lifetime_secs).min(grant.expires_at_unix);
    let mut idp_token = None;
    if let Some(tokens) = &grant.identity_provider_tokens {
        expires_at = expires_at.min(
            tokens
                .expires_at_unix
                .max(now_unix + MIN_ACCESS_TOKEN_LIFETIME_SECS),
        );
        let sealed = SealedIdentityProviderToken {
            sid: grant.grant_id.clone(),
            sub: grant.user.subject.clone(),
            access_token: tokens.access_token.clone(),
            expires_at_unix: tokens.expires_at_unix,
        };
        idp_token = Some(
            keys.seal(Purpose::IdentityProviderToken, &sealed, expires_at)
                .map_err(|error| match error {
                    SealError::NoActiveKey => SignError::NoActiveKey,
                    SealError::Crypto(_) => SignError::Crypto,
                })?,
        );
    }
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
        idp_token,
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
            identity_provider_tokens: None,
        }
    }

    use crate::oauth::keyring::tests::{NOW, keys};

    fn idp_tokens(expires_at_unix: i64) -> IdentityProviderTokens {
        IdentityProviderTokens {
            access_token: "idp-access-token".to_owned(),
            refresh_token: Some("idp-refresh-token".to_owned()),
            expires_at_unix,
            resource: Some("https://search.example.com".to_owned()),
        }
    }

    fn claims_of(token: &str) -> serde_json::Value {
        use base64::Engine;
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn access_tokens_carry_the_identity_providers_token_sealed_and_bound_to_the_grant() {
        let ring = GatewayKeyring::compile(&keys()).unwrap();
        let mut alice = grant("alice", "https://gw/mcp/search", NOW + 86_400);
        alice.identity_provider_tokens = Some(idp_tokens(NOW + 3_600));
        let (token, expires_in) = mint_access_token(&ring, "https://gw", &alice, NOW, 600).unwrap();
        assert_eq!(expires_in, 600);
        // The client sees neither provider token in clear.
        assert!(!token.contains("idp-access-token"));
        let claims = claims_of(&token);
        let sealed = claims[IDENTITY_PROVIDER_TOKEN_CLAIM].as_str().unwrap();
        assert!(sealed.starts_with("pci1."), "{sealed}");
        assert!(!claims.to_string().contains("idp-access-token"));
        assert!(!claims.to_string().contains("idp-refresh-token"));
        let opened = SealedIdentityProviderToken::open(
            &ring,
            Some(sealed),
            Some(&alice.grant_id),
            "alice",
            NOW + 10,
        )
        .unwrap();
        assert_eq!(opened.access_token, "idp-access-token");
        assert!(!format!("{opened:?} {alice:?}").contains("idp-"));

        // Lifted into bob's token (another grant or subject), it is refused.
        assert_eq!(
            SealedIdentityProviderToken::open(
                &ring,
                Some(sealed),
                Some("other-grant"),
                "alice",
                NOW
            ),
            Err(IdentityProviderTokenError::WrongGrant)
        );
        assert_eq!(
            SealedIdentityProviderToken::open(
                &ring,
                Some(sealed),
                Some(&alice.grant_id),
                "bob",
                NOW
            ),
            Err(IdentityProviderTokenError::WrongGrant)
        );
        assert_eq!(
            SealedIdentityProviderToken::open(&ring, None, Some(&alice.grant_id), "alice", NOW),
            Err(IdentityProviderTokenError::Absent)
        );
        // A refresh token's sealed value does not open as this claim.
        let refresh = RefreshToken::new(alice.clone()).seal(&ring).unwrap();
        assert!(matches!(
            SealedIdentityProviderToken::open(
                &ring,
                Some(&refresh),
                Some(&alice.grant_id),
                "alice",
                NOW
            ),
            Err(IdentityProviderTokenError::Unreadable(OpenError::WrongKind))
        ));
        // The refresh token holds both provider tokens, sealed.
        assert!(!refresh.contains("idp-refresh-token"));
        let reopened: RefreshToken = ring.open(Purpose::RefreshToken, &refresh, NOW).unwrap();
        assert_eq!(
            reopened.grant.identity_provider_tokens,
            alice.identity_provider_tokens
        );
    }

    #[test]
    fn access_tokens_do_not_outlive_the_identity_providers_token() {
        let ring = GatewayKeyring::compile(&keys()).unwrap();
        let mut alice = grant("alice", "https://gw/mcp/search", NOW + 86_400);
        alice.identity_provider_tokens = Some(idp_tokens(NOW + 120));
        let (_, expires_in) = mint_access_token(&ring, "https://gw", &alice, NOW, 600).unwrap();
        assert_eq!(expires_in, 120);
        // Already (nearly) expired: the minimum lifetime, and the claim says expired.
        alice.identity_provider_tokens = Some(idp_tokens(NOW - 5));
        let (token, expires_in) = mint_access_token(&ring, "https://gw", &alice, NOW, 600).unwrap();
        assert_eq!(expires_in, MIN_ACCESS_TOKEN_LIFETIME_SECS);
        let claims = claims_of(&token);
        assert_eq!(
            SealedIdentityProviderToken::open(
                &ring,
                claims[IDENTITY_PROVIDER_TOKEN_CLAIM].as_str(),
                Some(&alice.grant_id),
                "alice",
                NOW
            ),
            Err(IdentityProviderTokenError::Expired)
        );
        // Without provider tokens: no claim, the configured lifetime.
        alice.identity_provider_tokens = None;
        let (token, expires_in) = mint_access_token(&ring, "https://gw", &alice, NOW, 600).unwrap();
        assert_eq!(expires_in, 600);
        assert!(
            claims_of(&token)
                .get(IDENTITY_PROVIDER_TOKEN_CLAIM)
                .is_none()
        );
    }
}

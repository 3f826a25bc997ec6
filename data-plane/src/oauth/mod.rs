//! Interactive (SSO) agent authentication: the node as the OAuth 2.1 authorization server of
//! MCP clients, delegating the login itself to the enterprise identity provider by OpenID
//! Connect, and as the protected resource that validates the tokens it issued.
//!
//! ```text
//! MCP client ──401 + resource_metadata──▶ PRM ──▶ AS metadata ──▶ register (DCR or CIMD)
//!   ──/oauth/authorize──▶ consent (per client, cookie) ──▶ IdP login ──▶ /oauth/callback
//!   ◀──code (sealed)── ──/oauth/token (PKCE)──▶ access token (ES256 JWT) + refresh token
//!   ──/mcp/{server} Bearer──▶ validated locally (resource.rs)
//! ```
//!
//! - [`keyring`]: the snapshot's signing and sealing keys, compiled; sealing and opening of
//!   self-contained values; derived client secrets.
//! - [`grant`]: what a login grants; authorization codes, refresh tokens, access tokens.
//! - [`resource`]: the protected-resource side: token validation, challenges, RFC 9728
//!   metadata.
//! - [`clients`]: dynamic client registration (RFC 7591), Client ID Metadata Documents,
//!   redirect URI rules, client authentication.
//! - [`client_metadata`]: fetching and caching Client ID Metadata Documents safely.
//! - [`identity_provider`]: OIDC discovery of the identity provider, the code exchange, the
//!   ID token.
//! - [`authorize`]: `/oauth/authorize` (validation, consent page, redirect to the identity
//!   provider) and `/oauth/callback`.
//! - [`token`]: `/oauth/token` and `/oauth/revoke`.
//! - [`endpoints`]: the routes, the metadata documents and the JWKS.
//! - [`runtime`]: the control plane's `NodeRuntime` (single use across the fleet, grant
//!   revocation).
//! - [`http`], [`pages`]: bounded form parsing, OAuth error responses, HTML pages.
//!
//! Nodes keep no state between requests: every value that travels (client registrations,
//! consent requests, login state, codes, refresh tokens) is sealed under the fleet's
//! sealing key with its kid, so any node finishes a flow another started, and key rotation
//! keeps values sealed before it working until the old key is retired. Single use of codes
//! and refresh tokens is decided by the control plane; revocations arrive in snapshots.

pub mod authorize;
pub mod client_metadata;
pub mod clients;
pub mod endpoints;
pub mod grant;
pub mod http;
pub mod identity_provider;
pub mod keyring;
pub mod pages;
pub mod resource;
pub mod runtime;
pub mod token;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_shared::crypto::random_bytes;
use url::Url;

use crate::oauth::client_metadata::ClientMetadataDocuments;
use crate::oauth::identity_provider::IdentityProviders;
use crate::oauth::runtime::RuntimeClient;

pub use endpoints::routes;
pub use grant::DEFAULT_ACCESS_TOKEN_LIFETIME_SECS;

/// The public URL of the fleet as issuer: `scheme://host[:port][/path]`, without a trailing
/// slash, exactly as metadata, tokens and resources spell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    text: String,
    origin: String,
    /// The public URL's path without a trailing slash: empty, or `/prefix`.
    path: String,
    https: bool,
}

impl Issuer {
    pub fn new(public_url: &Url) -> Self {
        let origin = public_url.origin().ascii_serialization();
        let path = public_url.path().trim_end_matches('/').to_owned();
        Self {
            text: format!("{origin}{path}"),
            origin,
            path,
            https: public_url.scheme() == "https",
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `scheme://host[:port]`, for Origin checks.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn is_https(&self) -> bool {
        self.https
    }

    /// An endpoint of the gateway: `path` starts with `/`.
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.text)
    }

    /// The canonical URI of a server (RFC 8707 resource, the audience of its tokens).
    pub fn resource(&self, server: &str) -> String {
        format!("{}/mcp/{server}", self.text)
    }

    /// Where a server's RFC 9728 metadata is: the well-known suffix goes between the host
    /// and the resource's path.
    pub fn resource_metadata_url(&self, server: &str) -> String {
        format!(
            "{}/.well-known/oauth-protected-resource{}/mcp/{server}",
            self.origin, self.path
        )
    }

    /// The server a resource URI names, if it is one of this gateway's (a trailing slash
    /// is tolerated; scheme and host compare as URLs do).
    pub fn server_of_resource(&self, resource: &str) -> Option<String> {
        let url = Url::parse(resource).ok()?;
        if url.query().is_some() || url.fragment().is_some() {
            return None;
        }
        if url.origin().ascii_serialization() != self.origin {
            return None;
        }
        let path = url.path().trim_end_matches('/');
        let server = path.strip_prefix(&self.path)?.strip_prefix("/mcp/")?;
        (!server.is_empty() && !server.contains('/')).then(|| server.to_owned())
    }
}

/// Settings of the authorization server, from the node's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OAuthSettings {
    pub access_token_lifetime: Duration,
    /// Fetch Client ID Metadata Documents from loopback and private addresses, and over
    /// plain http on loopback (tests only; an SSRF risk anywhere else).
    pub allow_loopback_client_metadata: bool,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        Self {
            access_token_lifetime: Duration::from_secs(DEFAULT_ACCESS_TOKEN_LIFETIME_SECS),
            allow_loopback_client_metadata: false,
        }
    }
}

/// The node's authorization server: its issuer, settings, and the caches and clients the
/// endpoints share. The keys and the servers come from the snapshot of each request.
pub struct AuthorizationServer {
    pub issuer: Issuer,
    pub settings: OAuthSettings,
    /// `None` when the node has no control plane (tests of other parts): codes and refresh
    /// tokens then cannot be redeemed (503), never redeemed twice.
    pub runtime: Option<RuntimeClient>,
    pub identity_providers: IdentityProviders,
    pub client_metadata: ClientMetadataDocuments,
}

impl std::fmt::Debug for AuthorizationServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizationServer")
            .field("issuer", &self.issuer.as_str())
            .field("settings", &self.settings)
            .field("runtime", &self.runtime.is_some())
            .finish_non_exhaustive()
    }
}

impl AuthorizationServer {
    pub fn new(
        issuer: Issuer,
        settings: OAuthSettings,
        runtime: Option<RuntimeClient>,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            issuer,
            settings,
            runtime,
            identity_providers: IdentityProviders::new()?,
            client_metadata: ClientMetadataDocuments::new(settings.allow_loopback_client_metadata)?,
        })
    }
}

/// 128 random bits, base64url: ids of grants, tokens and codes, PKCE verifiers, nonces.
pub fn random_id() -> String {
    // The system generator does not fail on supported platforms; an all-zero id would be
    // caught by the single-use check at the control plane rather than go unnoticed.
    let bytes = random_bytes::<16>().unwrap_or_else(|error| {
        tracing::error!(%error, "the system random generator failed");
        [0; 16]
    });
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The PKCE S256 challenge of a verifier (RFC 7636 section 4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(hash.as_ref())
}

/// True when `verifier` is a well-formed PKCE verifier (43 to 128 unreserved characters)
/// whose S256 challenge is `challenge`. Compared in constant time.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    use subtle::ConstantTimeEq;
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-._~".contains(&byte));
    well_formed
        && pkce_challenge(verifier)
            .as_bytes()
            .ct_eq(challenge.as_bytes())
            .into()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::oauth::grant::mint_access_token;
    use crate::oauth::keyring::GatewayKeyring;
    use crate::oauth::keyring::tests::{NOW, keys};
    use crate::oauth::resource::GatewayContext;
    use portcullis_shared::gateway::{RevokedGrants, RevokedUsers};

    /// The gateway side of a test: an issuer, keys and (empty) revocations.
    pub(crate) struct TestGateway {
        pub issuer: Issuer,
        pub keys: GatewayKeyring,
        pub revoked_users: RevokedUsers,
        pub revoked_grants: RevokedGrants,
    }

    impl TestGateway {
        pub(crate) fn new() -> Self {
            Self {
                issuer: Issuer::new(&Url::parse("http://gateway.test").unwrap()),
                keys: GatewayKeyring::compile(&keys()).unwrap(),
                revoked_users: RevokedUsers::new(),
                revoked_grants: RevokedGrants::new(),
            }
        }

        pub(crate) fn context(&self) -> GatewayContext<'_> {
            GatewayContext {
                issuer: &self.issuer,
                keys: &self.keys,
                revoked_users: &self.revoked_users,
                revoked_grants: &self.revoked_grants,
            }
        }

        /// An access token for `subject` on `server`, valid now (wall clock).
        pub(crate) fn access_token(&self, subject: &str, server: &str, scopes: &[&str]) -> String {
            let mut grant = crate::oauth::grant::tests::grant(
                subject,
                &self.issuer.resource(server),
                i64::MAX / 2,
            );
            grant.scopes = scopes.iter().map(|scope| (*scope).to_owned()).collect();
            let now = crate::jwt::unix_now();
            mint_access_token(&self.keys, self.issuer.as_str(), &grant, now.max(NOW), 600)
                .unwrap()
                .0
        }
    }

    #[test]
    fn pkce_s256_follows_rfc_7636() {
        // The example of RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert_eq!(pkce_challenge(verifier), challenge);
        assert!(pkce_matches(verifier, challenge));
        assert!(!pkce_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXj",
            challenge
        ));
        // Too short, or characters outside the unreserved set: refused even if they hash.
        assert!(!pkce_matches("short", &pkce_challenge("short")));
        let odd = format!("{}+", "a".repeat(43));
        assert!(!pkce_matches(&odd, &pkce_challenge(&odd)));
        // plain (verifier == challenge) never passes.
        assert!(!pkce_matches(verifier, verifier));
    }

    #[test]
    fn the_issuer_has_no_trailing_slash_and_resources_hang_off_it() {
        let root = Issuer::new(&Url::parse("https://GW.example.com/").unwrap());
        assert_eq!(root.as_str(), "https://gw.example.com");
        assert_eq!(root.resource("crm"), "https://gw.example.com/mcp/crm");
        assert_eq!(
            root.resource_metadata_url("crm"),
            "https://gw.example.com/.well-known/oauth-protected-resource/mcp/crm"
        );
        assert_eq!(
            root.endpoint("/oauth/token"),
            "https://gw.example.com/oauth/token"
        );
        let prefixed = Issuer::new(&Url::parse("https://gw.example.com:8443/portcullis/").unwrap());
        assert_eq!(prefixed.as_str(), "https://gw.example.com:8443/portcullis");
        assert_eq!(
            prefixed.resource_metadata_url("crm"),
            "https://gw.example.com:8443/.well-known/oauth-protected-resource/portcullis/mcp/crm"
        );
        assert_eq!(
            prefixed
                .server_of_resource("https://gw.example.com:8443/portcullis/mcp/crm")
                .as_deref(),
            Some("crm")
        );
    }

    #[test]
    fn resources_name_a_server_of_this_gateway_only() {
        let issuer = Issuer::new(&Url::parse("https://gw.example.com").unwrap());
        let server = |resource: &str| issuer.server_of_resource(resource);
        assert_eq!(
            server("https://gw.example.com/mcp/crm").as_deref(),
            Some("crm")
        );
        assert_eq!(
            server("https://GW.example.com/mcp/crm/").as_deref(),
            Some("crm")
        );
        for other in [
            "https://evil.example.com/mcp/crm",
            "http://gw.example.com/mcp/crm",
            "https://gw.example.com/mcp/",
            "https://gw.example.com/mcp/crm/sub",
            "https://gw.example.com/other/crm",
            "https://gw.example.com/mcp/crm?x=1",
            "https://gw.example.com/mcp/crm#f",
            "not a url",
        ] {
            assert_eq!(server(other), None, "{other}");
        }
    }
}

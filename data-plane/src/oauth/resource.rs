//! The MCP server side of Interactive SSO: every `/mcp/{server}` of an Interactive server is
//! an OAuth protected resource (RFC 9728) whose authorization server is the gateway itself.
//!
//! - [`InteractivePlan`] validates the gateway's access tokens locally, with the snapshot's
//!   signing keys: signature by kid (active and verify-only keys), `typ` `at+jwt`, `iss` the
//!   gateway, `aud` exactly this server's resource (a token for server A is refused on B),
//!   `exp`/`nbf` with leeway, the grant not revoked, the user not signed out since the token
//!   was issued, the identity provider still the server's, and the server's scopes.
//! - Tokens that passed are cached (the JWT module's verified-token cache, keyed by the
//!   token's SHA-256). The plan belongs to one compiled snapshot, and revocations arrive
//!   only by snapshot, so a cached verification never outlives a revocation.
//! - Refusals carry a [`ResourceChallenge`]: 401 with `resource_metadata` and `scope`
//!   (RFC 9728 section 5.1), 403 `insufficient_scope` for a token without the server's scopes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::HeaderMap;
use portcullis_shared::gateway::{RevokedGrants, RevokedUsers};
use portcullis_shared::names::{CatalogId, Scope, ServerName, UserId};
use portcullis_shared::secret::SecretValue;
use serde_json::{Value, json};

use crate::jwt::cache::{TokenDigest, VerifiedTokenCache};
use crate::jwt::token::{self, ClaimRules, VerifiedClaims};
use crate::jwt::validator::ValidatorStats;
use crate::jwt::{LEEWAY_SECS, TokenRejection};
use crate::oauth::Issuer;
use crate::oauth::keyring::{ACCESS_TOKEN_TYPE, GatewayKeyring};
use crate::proxy::agent_auth::{CallerIdentity, bearer_token};

/// What validation needs besides the server's own settings: the node's issuer and the
/// snapshot's keys and revocations.
#[derive(Debug, Clone, Copy)]
pub struct GatewayContext<'a> {
    pub issuer: &'a Issuer,
    pub keys: &'a GatewayKeyring,
    pub revoked_users: &'a RevokedUsers,
    pub revoked_grants: &'a RevokedGrants,
}

/// Why an Interactive server refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InteractiveRefusal {
    /// 401: no token, or not a valid one for this server.
    Unauthenticated(TokenRejection),
    /// 403: a valid token without every scope the server requires.
    InsufficientScope,
}

/// The `WWW-Authenticate` material of a refusal: where the resource metadata is and which
/// scopes to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceChallenge {
    pub resource_metadata: String,
    /// Space-separated; empty when the server requires none.
    pub scope: String,
}

impl ResourceChallenge {
    fn scope_parameter(&self) -> String {
        if self.scope.is_empty() {
            String::new()
        } else {
            format!(", scope=\"{}\"", self.scope)
        }
    }

    /// The 401 challenge. The URL and scopes never hold quotes or backslashes (server names
    /// are slugs, scopes exclude both), and rejection texts are fixed.
    pub fn unauthenticated(&self, rejection: TokenRejection) -> String {
        let error = match rejection.bearer_error() {
            Some(error) => format!("error=\"{error}\", error_description=\"{rejection}\", "),
            None => String::new(),
        };
        format!(
            "Bearer {error}resource_metadata=\"{}\"{}",
            self.resource_metadata,
            self.scope_parameter()
        )
    }

    /// The 403 challenge for a token that lacks scopes (RFC 6750 section 3.1).
    pub fn insufficient_scope(&self) -> String {
        format!(
            "Bearer error=\"insufficient_scope\", error_description=\"the token lacks a scope this server requires\", resource_metadata=\"{}\"{}",
            self.resource_metadata,
            self.scope_parameter()
        )
    }
}

/// One Interactive server's validation, compiled with the snapshot.
#[derive(Debug)]
pub struct InteractivePlan {
    server: ServerName,
    identity_provider: CatalogId,
    scopes: Vec<Scope>,
    scope_text: String,
    cache: VerifiedTokenCache,
    stats: ValidatorStats,
}

/// True for `at+jwt` and `application/at+jwt`, in any case (RFC 9068 section 4).
fn is_access_token_type(token_type: Option<&str>) -> bool {
    token_type.is_some_and(|value| {
        let value = value.to_ascii_lowercase();
        value == ACCESS_TOKEN_TYPE || value.strip_prefix("application/") == Some(ACCESS_TOKEN_TYPE)
    })
}

impl InteractivePlan {
    pub fn new(server: ServerName, identity_provider: CatalogId, scopes: Vec<Scope>) -> Self {
        let scope_text = scopes
            .iter()
            .map(Scope::as_str)
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            server,
            identity_provider,
            scopes,
            scope_text,
            cache: VerifiedTokenCache::default(),
            stats: ValidatorStats::default(),
        }
    }

    pub fn server(&self) -> &ServerName {
        &self.server
    }

    pub fn identity_provider(&self) -> &CatalogId {
        &self.identity_provider
    }

    /// The scopes a token must carry, which the authorization server grants by default.
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    pub fn stats(&self) -> &ValidatorStats {
        &self.stats
    }

    /// The challenge material of this server under `issuer`.
    pub fn challenge(&self, issuer: &Issuer) -> ResourceChallenge {
        ResourceChallenge {
            resource_metadata: issuer.resource_metadata_url(self.server.as_str()),
            scope: self.scope_text.clone(),
        }
    }

    /// The RFC 9728 document of this server.
    pub fn metadata(&self, issuer: &Issuer) -> Value {
        json!({
            "resource": issuer.resource(self.server.as_str()),
            "authorization_servers": [issuer.as_str()],
            "scopes_supported": self.scopes.iter().map(Scope::as_str).collect::<Vec<_>>(),
            "bearer_methods_supported": ["header"],
            "resource_name": self.server.as_str(),
        })
    }

    /// Validates the caller's access token at `now_unix`.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        context: &GatewayContext<'_>,
        now_unix: i64,
    ) -> Result<CallerIdentity, InteractiveRefusal> {
        let token = bearer_token(headers).map_err(InteractiveRefusal::Unauthenticated)?;
        let claims = self.validate(token, context, now_unix)?;
        Ok(CallerIdentity::interactive(
            claims,
            SecretValue::new(token),
            self.identity_provider.clone(),
        ))
    }

    fn validate(
        &self,
        token: &str,
        context: &GatewayContext<'_>,
        now_unix: i64,
    ) -> Result<Arc<VerifiedClaims>, InteractiveRefusal> {
        use InteractiveRefusal::Unauthenticated;
        let keys = context
            .keys
            .verification_keys()
            .ok_or(Unauthenticated(TokenRejection::KeysUnavailable))?;
        let digest = TokenDigest::of(token);
        if let Some(claims) = self.cache.get(&digest, keys.generation(), now_unix) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(claims);
        }

        let unverified = token::parse(token).map_err(Unauthenticated)?;
        if !is_access_token_type(unverified.token_type.as_deref()) {
            return Err(Unauthenticated(TokenRejection::NotAccessToken));
        }
        let candidates = keys
            .select(unverified.key_id.as_deref(), unverified.algorithm)
            .map_err(Unauthenticated)?;
        self.stats.signature_checks.fetch_add(1, Ordering::Relaxed);
        unverified
            .verify_signature(&candidates)
            .map_err(Unauthenticated)?;
        let resource = context.issuer.resource(self.server.as_str());
        let rules = ClaimRules {
            issuer: Some(context.issuer.as_str()),
            audience: Some(&resource),
            leeway_secs: LEEWAY_SECS,
        };
        let payload = unverified.verified_payload().map_err(Unauthenticated)?;
        let verified = token::check_claims(&payload, rules, now_unix).map_err(Unauthenticated)?;

        let text = |name: &str| verified.claims.get(name).and_then(Value::as_str);
        let grant_id = text("sid").ok_or(Unauthenticated(TokenRejection::Malformed(
            "the token has no grant id (sid)",
        )))?;
        let issued_at =
            verified
                .claims
                .get("iat")
                .and_then(Value::as_i64)
                .ok_or(Unauthenticated(TokenRejection::Malformed(
                    "the token has no issue time (iat)",
                )))?;
        // A server moved to another identity provider does not accept logins at the old one.
        if text("idp") != Some(self.identity_provider.as_str()) {
            return Err(Unauthenticated(TokenRejection::WrongIssuer));
        }
        if context.revoked_grants.contains_key(grant_id) {
            return Err(Unauthenticated(TokenRejection::Revoked));
        }
        if let Ok(user) = UserId::parse(&verified.subject)
            && let Some(revoked_at) = context
                .revoked_users
                .get(&(self.identity_provider.clone(), user))
            // Issued in the second of the revocation or before: refused.
            && issued_at <= *revoked_at
        {
            return Err(Unauthenticated(TokenRejection::Revoked));
        }
        let granted: Vec<&str> = text("scope").unwrap_or_default().split(' ').collect();
        if !self
            .scopes
            .iter()
            .all(|required| granted.contains(&required.as_str()))
        {
            return Err(InteractiveRefusal::InsufficientScope);
        }

        // The caller's issuer, for later steps, is the identity provider that logged the
        // user in; the gateway itself only vouches for that login.
        let identity_provider_issuer = text("idp_iss").map(str::to_owned);
        let claims = Arc::new(VerifiedClaims {
            issuer: identity_provider_issuer,
            ..verified
        });
        self.cache
            .insert(digest, keys.generation(), claims.clone(), now_unix);
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::test_keys::{TestKey, hs256_token, unsigned_token};
    use crate::oauth::grant::tests::grant;
    use crate::oauth::grant::{Grant, mint_access_token};
    use crate::oauth::keyring::tests::{NOW, keys, signing_key};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use http::header::AUTHORIZATION;
    use portcullis_shared::gateway::{GatewayKeyState, GatewayKeys};

    const ISSUER: &str = "https://gw.example.com";

    fn issuer() -> Issuer {
        Issuer::new(&url::Url::parse(ISSUER).unwrap())
    }

    fn plan(server: &str, scopes: &[&str]) -> InteractivePlan {
        InteractivePlan::new(
            ServerName::parse(server).unwrap(),
            CatalogId::parse("corp").unwrap(),
            scopes
                .iter()
                .map(|scope| Scope::parse(scope).unwrap())
                .collect(),
        )
    }

    struct Fixture {
        issuer: Issuer,
        keys: GatewayKeyring,
        revoked_users: RevokedUsers,
        revoked_grants: RevokedGrants,
    }

    impl Fixture {
        fn new() -> Self {
            Self::with_keys(keys())
        }

        fn with_keys(keys: GatewayKeys<SecretValue>) -> Self {
            Self {
                issuer: issuer(),
                keys: GatewayKeyring::compile(&keys).unwrap(),
                revoked_users: RevokedUsers::new(),
                revoked_grants: RevokedGrants::new(),
            }
        }

        fn context(&self) -> GatewayContext<'_> {
            GatewayContext {
                issuer: &self.issuer,
                keys: &self.keys,
                revoked_users: &self.revoked_users,
                revoked_grants: &self.revoked_grants,
            }
        }

        fn grant_for(&self, subject: &str, server: &str) -> Grant {
            grant(subject, &self.issuer.resource(server), NOW + 86_400)
        }

        fn token(&self, grant: &Grant) -> String {
            mint_access_token(&self.keys, self.issuer.as_str(), grant, NOW, 600)
                .unwrap()
                .0
        }

        fn check(
            &self,
            plan: &InteractivePlan,
            token: &str,
            now: i64,
        ) -> Result<CallerIdentity, InteractiveRefusal> {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
            plan.authenticate(&headers, &self.context(), now)
        }
    }

    fn refused(result: Result<CallerIdentity, InteractiveRefusal>) -> TokenRejection {
        match result {
            Err(InteractiveRefusal::Unauthenticated(rejection)) => rejection,
            other => panic!("expected a 401 refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_token_minted_for_the_server_yields_the_user() {
        let fixture = Fixture::new();
        let plan = plan("crm", &["mcp:tools"]);
        let grant = fixture.grant_for("alice", "crm");
        let token = fixture.token(&grant);
        let identity = fixture.check(&plan, &token, NOW + 1).unwrap();
        assert_eq!(identity.subject(), "alice");
        assert_eq!(identity.issuer(), Some("https://idp.example.com"));
        assert_eq!(identity.email(), Some("alice@example.com"));
        assert_eq!(identity.groups(), ["eng"]);
        assert_eq!(
            identity.identity_provider().map(CatalogId::as_str),
            Some("corp")
        );
        assert_eq!(identity.claims()["sid"], grant.grant_id.as_str());
        assert_eq!(identity.claims()["client_id"], "client-1");
        assert_eq!(identity.token().expose(), token);
        // The second time from the cache, without a signature check.
        fixture.check(&plan, &token, NOW + 2).unwrap();
        assert_eq!(plan.stats().signature_checks.load(Ordering::Relaxed), 1);
        assert_eq!(plan.stats().cache_hits.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_token_for_one_server_is_refused_on_another() {
        let fixture = Fixture::new();
        let token = fixture.token(&fixture.grant_for("alice", "crm"));
        assert_eq!(
            refused(fixture.check(&plan("billing", &["mcp:tools"]), &token, NOW)),
            TokenRejection::WrongAudience
        );
        // Another gateway (issuer) with the same keys: refused too.
        let mut elsewhere = Fixture::new();
        elsewhere.keys = fixture.keys;
        elsewhere.issuer = Issuer::new(&url::Url::parse("https://other.example.com").unwrap());
        assert_eq!(
            refused(elsewhere.check(&plan("crm", &["mcp:tools"]), &token, NOW)),
            TokenRejection::WrongIssuer
        );
    }

    #[test]
    fn expired_and_not_yet_valid_tokens_are_refused() {
        let fixture = Fixture::new();
        let plan = plan("crm", &[]);
        let token = fixture.token(&fixture.grant_for("alice", "crm"));
        // Valid for 600 s, plus the leeway.
        assert!(fixture.check(&plan, &token, NOW + 600 + 59).is_ok());
        let fresh_plan = self::plan("crm", &[]);
        assert_eq!(
            refused(fixture.check(&fresh_plan, &token, NOW + 600 + 60)),
            TokenRejection::Expired
        );
        let mut claims = decode_claims(&token);
        claims["nbf"] = json!(NOW + 3600);
        let early = resign(&fixture, &claims);
        assert_eq!(
            refused(fixture.check(&fresh_plan, &early, NOW)),
            TokenRejection::NotYetValid
        );
    }

    fn decode_claims(token: &str) -> Value {
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    /// The same claims signed again by the gateway's key.
    fn resign(fixture: &Fixture, claims: &Value) -> String {
        fixture.keys.sign_access_token(claims).unwrap()
    }

    #[test]
    fn bad_signatures_foreign_keys_and_other_algorithms_are_refused() {
        let fixture = Fixture::new();
        let plan = plan("crm", &[]);
        let token = fixture.token(&fixture.grant_for("alice", "crm"));
        let claims = decode_claims(&token);

        // Signed by a key the snapshot does not hold, under the same kid.
        let impostor = Fixture::new();
        let forged = resign(&impostor, &claims);
        assert_eq!(
            refused(fixture.check(&plan, &forged, NOW)),
            TokenRejection::BadSignature
        );
        // Other claims under a genuine signature.
        let mut parts: Vec<&str> = token.split('.').collect();
        let mut elevated = claims.clone();
        elevated["sub"] = json!("mallory");
        let elevated = URL_SAFE_NO_PAD.encode(elevated.to_string());
        parts[1] = &elevated;
        assert_eq!(
            refused(fixture.check(&plan, &parts.join("."), NOW)),
            TokenRejection::BadSignature
        );
        // alg none, HMAC with the public key, an unknown kid, another typ, garbage.
        assert!(matches!(
            refused(fixture.check(&plan, &unsigned_token("sig-1", &claims), NOW)),
            TokenRejection::UnsupportedAlgorithm(_)
        ));
        assert!(matches!(
            refused(fixture.check(
                &plan,
                &hs256_token("sig-1", fixture.keys.public_jwks().as_bytes(), &claims),
                NOW
            )),
            TokenRejection::UnsupportedAlgorithm(_)
        ));
        let stranger = TestKey::ec_p256("sig-9");
        let unknown_kid = stranger.sign_with_header(
            &json!({"alg": "ES256", "kid": "sig-9", "typ": "at+jwt"}),
            &claims,
        );
        assert_eq!(
            refused(fixture.check(&plan, &unknown_kid, NOW)),
            TokenRejection::UnknownKeyId
        );
        let id_token = stranger.sign_with_header(&json!({"alg": "ES256", "kid": "sig-1"}), &claims);
        assert_eq!(
            refused(fixture.check(&plan, &id_token, NOW)),
            TokenRejection::NotAccessToken
        );
        for garbage in ["garbage", "a.b.c", "....", "ey.ey.ey"] {
            assert!(matches!(
                refused(fixture.check(&plan, garbage, NOW)),
                TokenRejection::Malformed(_)
            ));
        }
        assert_eq!(
            refused(plan.authenticate(&HeaderMap::new(), &fixture.context(), NOW)),
            TokenRejection::Missing
        );
        assert_eq!(plan.stats().cache_hits.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn tokens_of_a_verify_only_key_still_pass_and_retired_ones_do_not() {
        let old_key = signing_key("sig-old", GatewayKeyState::Active);
        let before = Fixture::with_keys(GatewayKeys {
            signing_keys: vec![old_key.clone()],
            ..keys()
        });
        let token = before.token(&before.grant_for("alice", "crm"));
        let mut demoted = old_key;
        demoted.state = GatewayKeyState::VerifyOnly;
        let rotated = Fixture::with_keys(GatewayKeys {
            signing_keys: vec![demoted, signing_key("sig-new", GatewayKeyState::Active)],
            ..keys()
        });
        assert!(rotated.check(&plan("crm", &[]), &token, NOW).is_ok());
        let retired = Fixture::with_keys(keys());
        assert_eq!(
            refused(retired.check(&plan("crm", &[]), &token, NOW)),
            TokenRejection::UnknownKeyId
        );
        let keyless = Fixture::with_keys(GatewayKeys::default());
        assert_eq!(
            refused(keyless.check(&plan("crm", &[]), &token, NOW)),
            TokenRejection::KeysUnavailable
        );
    }

    #[test]
    fn revoked_grants_and_signed_out_users_are_refused() {
        let mut fixture = Fixture::new();
        let alice = fixture.grant_for("alice", "crm");
        let bob = fixture.grant_for("bob", "crm");
        let alice_token = fixture.token(&alice);
        let bob_token = fixture.token(&bob);
        fixture
            .revoked_grants
            .insert(alice.grant_id.clone(), NOW + 86_400);
        assert_eq!(
            refused(fixture.check(&plan("crm", &[]), &alice_token, NOW)),
            TokenRejection::Revoked
        );
        assert!(fixture.check(&plan("crm", &[]), &bob_token, NOW).is_ok());

        // Bob signed out everywhere at NOW: tokens issued then or before are refused, a
        // later login's tokens pass.
        fixture.revoked_users.insert(
            (
                CatalogId::parse("corp").unwrap(),
                UserId::parse("bob").unwrap(),
            ),
            NOW,
        );
        assert_eq!(
            refused(fixture.check(&plan("crm", &[]), &bob_token, NOW)),
            TokenRejection::Revoked
        );
        let later = mint_access_token(&fixture.keys, ISSUER, &bob, NOW + 1, 600)
            .unwrap()
            .0;
        assert!(fixture.check(&plan("crm", &[]), &later, NOW + 1).is_ok());
    }

    #[test]
    fn missing_scopes_get_403_and_another_identity_provider_401() {
        let fixture = Fixture::new();
        let token = fixture.token(&fixture.grant_for("alice", "crm"));
        let demanding = plan("crm", &["mcp:tools", "mcp:admin"]);
        assert_eq!(
            fixture.check(&demanding, &token, NOW).unwrap_err(),
            InteractiveRefusal::InsufficientScope
        );
        let moved = InteractivePlan::new(
            ServerName::parse("crm").unwrap(),
            CatalogId::parse("other-idp").unwrap(),
            Vec::new(),
        );
        assert_eq!(
            refused(fixture.check(&moved, &token, NOW)),
            TokenRejection::WrongIssuer
        );
    }

    #[test]
    fn challenges_point_at_the_resource_metadata_with_the_scopes() {
        let plan = plan("crm", &["mcp:tools", "mcp:read"]);
        let challenge = plan.challenge(&issuer());
        assert_eq!(
            challenge.unauthenticated(TokenRejection::Missing),
            "Bearer resource_metadata=\"https://gw.example.com/.well-known/oauth-protected-resource/mcp/crm\", scope=\"mcp:tools mcp:read\""
        );
        assert_eq!(
            challenge.unauthenticated(TokenRejection::Expired),
            "Bearer error=\"invalid_token\", error_description=\"token expired\", resource_metadata=\"https://gw.example.com/.well-known/oauth-protected-resource/mcp/crm\", scope=\"mcp:tools mcp:read\""
        );
        assert!(
            challenge
                .insufficient_scope()
                .starts_with("Bearer error=\"insufficient_scope\"")
        );
        let bare = self::plan("crm", &[]).challenge(&issuer());
        assert!(
            !bare
                .unauthenticated(TokenRejection::Missing)
                .contains("scope")
        );
        let metadata = plan.metadata(&issuer());
        assert_eq!(
            metadata,
            json!({
                "resource": "https://gw.example.com/mcp/crm",
                "authorization_servers": ["https://gw.example.com"],
                "scopes_supported": ["mcp:tools", "mcp:read"],
                "bearer_methods_supported": ["header"],
                "resource_name": "crm",
            })
        );
    }
}

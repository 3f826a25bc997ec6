//! Agent authentication: who is calling. It runs before the body is read and before
//! anything is sent upstream, so an unauthenticated caller costs little and reaches nothing.
//!
//! [`AgentAuthPlan`] is the hook for every mode: Passthrough with and without JWT
//! validation, and Interactive SSO, whose access tokens the gateway itself issued (see
//! [`crate::oauth`]). A new mode adds a variant here and an arm in
//! [`AgentAuthPlan::authenticate`]; the pipeline does not change.
//!
//! The result is a [`Caller`]. The pipeline hands it to the later steps (app authentication,
//! additional outbound headers), which will use its [`CallerIdentity`] for per-user
//! credentials, "Forward caller's token" and "Pass caller identity".

use std::sync::Arc;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use portcullis_shared::config::AgentAuthMode;
use portcullis_shared::names::{CatalogId, ServerName};
use portcullis_shared::secret::SecretValue;
use portcullis_shared::validate::ValidationErrors;
use serde_json::{Map, Value};

use crate::jwt::{
    JwksRegistry, JwtValidator, MAX_AUTHORIZATION_HEADER_BYTES, TokenRejection, VerifiedClaims,
    unix_now,
};
use crate::oauth::resource::{GatewayContext, InteractivePlan, InteractiveRefusal};
use crate::proxy::error::ProxyError;

/// How a server authenticates its callers, compiled once per snapshot.
#[derive(Debug)]
pub enum AgentAuthPlan {
    /// Nothing is checked. Risk (documented for admins): anyone who can reach the node can
    /// call the server; the caller stays anonymous.
    PassthroughUnchecked,
    /// Passthrough with "Require JWT Validation": the caller must present a bearer JWT that
    /// verifies against the configured JWKS (and issuer and audience, when set). The token
    /// is still not forwarded, unless app authentication is Passthrough.
    PassthroughValidated(JwtValidator),
    /// Interactive SSO: the caller must present an access token the gateway's own
    /// authorization server issued for this server, after a login at the identity provider.
    Interactive(InteractivePlan),
}

/// Who the caller is, as far as the node knows.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The verified identity; `None` when nothing was verified (passthrough without
    /// validation). Whatever `Authorization` header such a caller sent is unverified: the
    /// request record notes its presence as a fact about the request, never as an identity.
    pub identity: Option<CallerIdentity>,
}

/// A caller whose token was verified: the claims the gateway uses, every claim, and the
/// token itself for the steps that forward or exchange it.
#[derive(Debug, Clone)]
pub struct CallerIdentity {
    claims: Arc<VerifiedClaims>,
    token: SecretValue,
    identity_provider: Option<CatalogId>,
}

impl CallerIdentity {
    /// A caller whose JWT was verified under Passthrough.
    pub fn new(claims: Arc<VerifiedClaims>, token: SecretValue) -> Self {
        Self {
            claims,
            token,
            identity_provider: None,
        }
    }

    /// A user who logged in through Interactive SSO at `identity_provider`. The claims'
    /// issuer is the identity provider's; the token is the gateway's access token.
    pub fn interactive(
        claims: Arc<VerifiedClaims>,
        token: SecretValue,
        identity_provider: CatalogId,
    ) -> Self {
        Self {
            claims,
            token,
            identity_provider: Some(identity_provider),
        }
    }

    /// The catalog id of the identity provider the user logged in with (Interactive SSO
    /// only). With [`Self::subject`] it names the user for per-user credentials.
    pub fn identity_provider(&self) -> Option<&CatalogId> {
        self.identity_provider.as_ref()
    }

    /// The `sub` claim.
    pub fn subject(&self) -> &str {
        &self.claims.subject
    }

    /// The `iss` claim, when the token has one.
    pub fn issuer(&self) -> Option<&str> {
        self.claims.issuer.as_deref()
    }

    /// The `email` claim, when it is a string.
    pub fn email(&self) -> Option<&str> {
        self.claims.email.as_deref()
    }

    /// The `groups` claim.
    pub fn groups(&self) -> &[String] {
        &self.claims.groups
    }

    /// `exp`, in seconds since the Unix epoch.
    pub fn expires_at_unix(&self) -> i64 {
        self.claims.expires_at_unix
    }

    /// Every claim of the token.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims.claims
    }

    /// The raw inbound token, for "Forward caller's token" and token exchange. Never logged.
    pub fn token(&self) -> &SecretValue {
        &self.token
    }
}

/// Request records cap the caller name at this many characters.
const MAX_RECORDED_CALLER_CHARS: usize = 256;

impl Caller {
    /// The verified `email` claim, bounded as the record name is.
    pub fn record_email(&self) -> Option<String> {
        self.identity
            .as_ref()
            .and_then(CallerIdentity::email)
            .map(|email| email.chars().take(MAX_RECORDED_CALLER_CHARS).collect())
    }

    /// The caller as request records name it: the verified subject, or "anonymous".
    pub fn record_name(&self) -> String {
        match &self.identity {
            Some(identity) => identity
                .subject()
                .chars()
                .take(MAX_RECORDED_CALLER_CHARS)
                .collect(),
            None => "anonymous".to_owned(),
        }
    }
}

impl AgentAuthPlan {
    /// `server` names the server in log lines and in the Interactive resource.
    pub fn compile(
        mode: &AgentAuthMode,
        jwks: &JwksRegistry,
        server: &ServerName,
    ) -> Result<Self, ValidationErrors> {
        let server_name = server.as_str();
        match mode {
            AgentAuthMode::Passthrough {
                jwt_validation: None,
            } => Ok(Self::PassthroughUnchecked),
            AgentAuthMode::Passthrough {
                jwt_validation: Some(validation),
            } => Ok(Self::PassthroughValidated(JwtValidator::compile(
                validation,
                jwks,
                server_name,
            )?)),
            AgentAuthMode::Interactive {
                identity_provider,
                scopes,
            } => Ok(Self::Interactive(InteractivePlan::new(
                server.clone(),
                identity_provider.clone(),
                scopes.clone(),
            ))),
        }
    }

    /// The Interactive plan, for the OAuth endpoints that describe the server.
    pub fn interactive(&self) -> Option<&InteractivePlan> {
        match self {
            AgentAuthPlan::Interactive(plan) => Some(plan),
            AgentAuthPlan::PassthroughUnchecked | AgentAuthPlan::PassthroughValidated(_) => None,
        }
    }

    /// Authenticates the caller from the request headers. `gateway` is what Interactive SSO
    /// validates against (the node's issuer, the snapshot's keys and revocations).
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        gateway: &GatewayContext<'_>,
    ) -> Result<Caller, ProxyError> {
        self.authenticate_at(headers, gateway, unix_now()).await
    }

    /// [`Self::authenticate`] at a given time (seconds since the Unix epoch), for tests.
    pub async fn authenticate_at(
        &self,
        headers: &HeaderMap,
        gateway: &GatewayContext<'_>,
        now_unix: i64,
    ) -> Result<Caller, ProxyError> {
        match self {
            AgentAuthPlan::PassthroughUnchecked => Ok(Caller { identity: None }),
            AgentAuthPlan::PassthroughValidated(validator) => {
                let token = bearer_token(headers).map_err(ProxyError::Unauthenticated)?;
                let claims = validator
                    .validate(token, now_unix)
                    .await
                    .map_err(ProxyError::Unauthenticated)?;
                Ok(Caller {
                    identity: Some(CallerIdentity::new(claims, SecretValue::new(token))),
                })
            }
            AgentAuthPlan::Interactive(plan) => match plan.authenticate(headers, gateway, now_unix)
            {
                Ok(identity) => Ok(Caller {
                    identity: Some(identity),
                }),
                Err(InteractiveRefusal::Unauthenticated(rejection)) => {
                    Err(ProxyError::InteractiveUnauthenticated {
                        rejection,
                        challenge: Box::new(plan.challenge(gateway.issuer)),
                    })
                }
                Err(InteractiveRefusal::InsufficientScope) => Err(ProxyError::InsufficientScope(
                    Box::new(plan.challenge(gateway.issuer)),
                )),
            },
        }
    }
}

/// The bearer token of the request (RFC 6750 section 2.1): exactly one `Authorization`
/// header, at most [`MAX_AUTHORIZATION_HEADER_BYTES`], scheme `Bearer` in any case.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, TokenRejection> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(TokenRejection::Missing)?;
    if values.next().is_some() {
        return Err(TokenRejection::SeveralAuthorizationHeaders);
    }
    if value.len() > MAX_AUTHORIZATION_HEADER_BYTES {
        return Err(TokenRejection::TooLarge {
            limit: MAX_AUTHORIZATION_HEADER_BYTES,
        });
    }
    let value = value
        .to_str()
        .map_err(|_| TokenRejection::Malformed("the Authorization header is not visible ASCII"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenRejection::NotBearer);
    }
    let token = token.trim_matches(' ');
    if token.is_empty() {
        return Err(TokenRejection::Malformed("the bearer token is empty"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::JwksPolicy;
    use crate::jwt::remote::tests::ScriptedFetcher;
    use crate::jwt::test_keys::{TestKey, jwks};
    use crate::oauth::tests::TestGateway;
    use portcullis_shared::config::{JwksSource, JwtValidation};
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn registry() -> JwksRegistry {
        JwksRegistry::with_fetcher(JwksPolicy::default(), ScriptedFetcher::serving(json!({})))
    }

    fn headers_with(authorization: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in authorization {
            headers.append(AUTHORIZATION, value.parse().unwrap());
        }
        headers
    }

    fn rejection(error: ProxyError) -> TokenRejection {
        match error {
            ProxyError::Unauthenticated(rejection) => rejection,
            other => panic!("not an authentication failure: {other}"),
        }
    }

    #[tokio::test]
    async fn passthrough_without_validation_lets_anyone_in_anonymously() {
        let plan = AgentAuthPlan::compile(
            &AgentAuthMode::Passthrough {
                jwt_validation: None,
            },
            &registry(),
            &ServerName::parse("demo").unwrap(),
        )
        .unwrap();
        let gateway = TestGateway::new();
        let caller = plan
            .authenticate(&HeaderMap::new(), &gateway.context())
            .await
            .unwrap();
        assert_eq!(caller.record_name(), "anonymous");
        assert!(caller.identity.is_none());
        // Even garbage passes unchecked, as it does today.
        let caller = plan
            .authenticate(&headers_with(&["Bearer not-a-jwt"]), &gateway.context())
            .await
            .unwrap();
        assert!(caller.identity.is_none());
    }

    #[tokio::test]
    async fn validation_yields_an_identity_with_the_token_kept_secret() {
        let key = TestKey::ed25519("k");
        let plan = AgentAuthPlan::compile(
            &AgentAuthMode::Passthrough {
                jwt_validation: Some(JwtValidation {
                    jwks: JwksSource::Inline(jwks(&[&key]).to_string()),
                    issuer: Some("https://idp".to_owned()),
                    audience: None,
                }),
            },
            &registry(),
            &ServerName::parse("demo").unwrap(),
        )
        .unwrap();
        let gateway = TestGateway::new();
        let token = key.sign(&json!({
            "sub": "alice", "iss": "https://idp", "exp": NOW + 60,
            "email": "alice@example.com", "groups": ["eng"], "tenant": "t1"
        }));
        let caller = plan
            .authenticate_at(
                &headers_with(&[&format!("bearer  {token}")]),
                &gateway.context(),
                NOW,
            )
            .await
            .unwrap();
        assert_eq!(caller.record_name(), "alice");
        let identity = caller.identity.as_ref().unwrap();
        assert_eq!(identity.subject(), "alice");
        assert_eq!(identity.issuer(), Some("https://idp"));
        assert_eq!(identity.email(), Some("alice@example.com"));
        assert_eq!(identity.groups(), ["eng"]);
        assert_eq!(identity.claims()["tenant"], "t1");
        assert_eq!(identity.expires_at_unix(), NOW + 60);
        assert_eq!(identity.token().expose(), token);
        assert!(!format!("{caller:?}").contains(&token));

        let missing = plan
            .authenticate_at(&HeaderMap::new(), &gateway.context(), NOW)
            .await;
        assert_eq!(rejection(missing.unwrap_err()), TokenRejection::Missing);
    }

    #[test]
    fn the_bearer_token_is_taken_from_exactly_one_header() {
        assert_eq!(bearer_token(&headers_with(&["Bearer abc"])), Ok("abc"));
        assert_eq!(bearer_token(&headers_with(&["BEARER abc "])), Ok("abc"));
        assert_eq!(
            bearer_token(&HeaderMap::new()),
            Err(TokenRejection::Missing)
        );
        assert_eq!(
            bearer_token(&headers_with(&["Bearer a", "Bearer b"])),
            Err(TokenRejection::SeveralAuthorizationHeaders)
        );
        assert_eq!(
            bearer_token(&headers_with(&["Basic YTpi"])),
            Err(TokenRejection::NotBearer)
        );
        assert_eq!(
            bearer_token(&headers_with(&["Bearer"])),
            Err(TokenRejection::Malformed("the bearer token is empty"))
        );
        let oversized = format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION_HEADER_BYTES));
        assert_eq!(
            bearer_token(&headers_with(&[&oversized])),
            Err(TokenRejection::TooLarge {
                limit: MAX_AUTHORIZATION_HEADER_BYTES
            })
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            http::HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
        );
        assert!(matches!(
            bearer_token(&headers),
            Err(TokenRejection::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn interactive_sso_refuses_without_a_gateway_token_and_points_at_the_metadata() {
        let plan = AgentAuthPlan::compile(
            &AgentAuthMode::Interactive {
                identity_provider: CatalogId::parse("corp").unwrap(),
                scopes: vec![portcullis_shared::names::Scope::parse("mcp").unwrap()],
            },
            &registry(),
            &ServerName::parse("demo").unwrap(),
        )
        .unwrap();
        let gateway = TestGateway::new();
        let error = plan
            .authenticate(&headers_with(&["Bearer looks-valid"]), &gateway.context())
            .await
            .unwrap_err();
        let ProxyError::InteractiveUnauthenticated {
            rejection,
            challenge,
        } = error
        else {
            panic!("not a 401: {error}");
        };
        assert!(matches!(rejection, TokenRejection::Malformed(_)));
        assert_eq!(
            challenge.resource_metadata,
            "http://gateway.test/.well-known/oauth-protected-resource/mcp/demo"
        );
        assert_eq!(challenge.scope, "mcp");
        let token = gateway.access_token("alice", "demo", &["mcp"]);
        let caller = plan
            .authenticate(
                &headers_with(&[&format!("Bearer {token}")]),
                &gateway.context(),
            )
            .await
            .unwrap();
        assert_eq!(caller.record_name(), "alice");
        assert_eq!(
            caller
                .identity
                .unwrap()
                .identity_provider()
                .map(CatalogId::as_str),
            Some("corp")
        );
    }

    #[test]
    fn an_inline_jwks_without_usable_keys_does_not_compile() {
        let error = AgentAuthPlan::compile(
            &AgentAuthMode::Passthrough {
                jwt_validation: Some(JwtValidation {
                    jwks: JwksSource::Inline(
                        json!({"keys": [{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}]})
                            .to_string(),
                    ),
                    issuer: None,
                    audience: None,
                }),
            },
            &registry(),
            &ServerName::parse("demo").unwrap(),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("jwt_validation.jwks_json"),
            "{error}"
        );
    }
}

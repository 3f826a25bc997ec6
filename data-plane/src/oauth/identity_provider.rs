//! The login at the enterprise identity provider, by OpenID Connect: discovery (cached),
//! the authorization request (code + PKCE S256 + nonce, with the gateway's registered client
//! from the catalog), the code exchange, and the ID token.
//!
//! The ID token is verified with the provider's JWKS through the JWT module (one cache per
//! JWKS URL, refreshed on rotation, the same algorithm rules as Passthrough validation):
//! signature, `iss` exactly the discovered issuer, `aud` the gateway's client id (and `azp`
//! when present), `exp`/`nbf`, and the `nonce` of this login. The user's id, email and
//! groups come from the claims the catalog entry names.
//!
//! Differences between providers are settings of the catalog entry (claims, scopes,
//! `token_resource`), never code branches. Besides the ID token, the gateway keeps the
//! provider's access token and refresh token ([`LoginTokens`]): they travel sealed in the
//! grant, so "Forward caller's token" and "On behalf of caller" can use the user's own
//! provider token. When the catalog entry names a `token_resource`, the authorization and
//! token requests (and every refresh) carry it as the RFC 8707 `resource`, so that access
//! token is issued for the upstream API; without one (Entra ID refuses the parameter) the
//! provider's default access token is kept, and scopes select its audience.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::BytesMut;
use portcullis_shared::config::IdentityProvider;
use portcullis_shared::names::{UrlPolicy, UserId, parse_url};
use portcullis_shared::secret::SecretValue;
use serde_json::{Map, Value};
use tokio::time::Instant;
use url::Url;

use crate::jwt::remote::RemoteJwks;
use crate::jwt::token::{self, ClaimRules};
use crate::jwt::{JwksPolicy, JwksRegistry, LEEWAY_SECS, TokenRejection};
use crate::oauth::grant::{IdentityProviderTokens, UserIdentity};
use crate::tokens::endpoint::TokenEndpointError;

/// Discovery documents are fetched again after this long.
pub const DISCOVERY_REFRESH: Duration = Duration::from_secs(3600);
/// A discovery fetch or code exchange ends after this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest discovery document or token response read.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Groups beyond this many (or longer than [`MAX_GROUP_CHARS`]) are dropped, so an access
/// token stays well under the 8 KiB Authorization header limit.
pub const MAX_GROUPS: usize = 64;
pub const MAX_GROUP_CHARS: usize = 128;
/// The lifetime assumed for a provider access token whose response has no `expires_in`.
pub const DEFAULT_PROVIDER_TOKEN_LIFETIME_SECS: i64 = 300;
/// Longer lifetimes are treated as this: the token is renewed at least daily.
pub const MAX_PROVIDER_TOKEN_LIFETIME_SECS: i64 = 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum IdentityProviderError {
    #[error("discovery failed: {0}")]
    Discovery(String),
    #[error("the code exchange failed: {0}")]
    Exchange(String),
    #[error("the refresh of the provider's token failed: {0}")]
    Refresh(RefreshFailure),
    #[error("the ID token was refused: {0}")]
    IdToken(TokenRejection),
    #[error("the ID token's nonce does not match this login")]
    Nonce,
    #[error("the ID token lacks a usable {0} claim")]
    Claim(String),
}

/// Why a refresh of the provider's token failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshFailure {
    /// The provider refused the refresh token or the client (`invalid_grant`...): the user
    /// must sign in again.
    #[error("{0}")]
    Permanent(String),
    /// The provider could not be reached or failed; asking again later may work.
    #[error("{0}")]
    Transient(String),
}

/// What a login at the provider yielded.
pub struct LoginTokens {
    pub id_token: String,
    /// `None` when the provider issued no access token (or not a Bearer one).
    pub provider_tokens: Option<IdentityProviderTokens>,
}

impl std::fmt::Debug for LoginTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginTokens")
            .field("provider_tokens", &self.provider_tokens)
            .finish_non_exhaustive()
    }
}

/// The provider's access and refresh token from a token response. A token type other than
/// Bearer (DPoP, for one) is not kept: the gateway could not present it.
fn provider_tokens(
    document: &Map<String, Value>,
    resource: Option<String>,
    provider: &IdentityProvider<SecretValue>,
    now_unix: i64,
) -> Option<IdentityProviderTokens> {
    let text = |name: &str| {
        document
            .get(name)
            .and_then(Value::as_str)
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    };
    let access_token = text("access_token")?;
    if text("token_type").is_some_and(|token_type| !token_type.eq_ignore_ascii_case("bearer")) {
        tracing::warn!(identity_provider = %provider.id, "the provider's access token is not a Bearer token: not kept");
        return None;
    }
    let expires_in = match document.get("expires_in") {
        Some(Value::Number(number)) => number.as_i64(),
        Some(Value::String(text)) => text.trim().parse().ok(),
        _ => None,
    }
    .unwrap_or(DEFAULT_PROVIDER_TOKEN_LIFETIME_SECS)
    .clamp(0, MAX_PROVIDER_TOKEN_LIFETIME_SECS);
    Some(IdentityProviderTokens {
        access_token,
        refresh_token: text("refresh_token"),
        expires_at_unix: now_unix + expires_in,
        resource: resource.or_else(|| provider.token_resource.clone()),
    })
}

/// What discovery said about a provider, checked.
#[derive(Debug)]
pub struct ProviderMetadata {
    /// Exactly as the provider spells it; ID tokens must carry it.
    pub issuer: String,
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    pub jwks: Arc<RemoteJwks>,
    pub token_endpoint_auth_methods: Vec<String>,
    /// RFC 9207: the provider sends `iss` with its authorization responses.
    pub iss_parameter_supported: bool,
}

struct Cached {
    metadata: Arc<ProviderMetadata>,
    fetched_at: Instant,
}

/// Discovery cache, JWKS caches and the HTTP client for identity providers.
pub struct IdentityProviders {
    http: reqwest::Client,
    jwks: JwksRegistry,
    discovered: Mutex<HashMap<String, Cached>>,
}

fn trimmed(issuer: &str) -> &str {
    issuer.trim_end_matches('/')
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    if response
        .content_length()
        .is_some_and(|length| length > MAX_RESPONSE_BYTES as u64)
    {
        return Err(format!("the response exceeds {MAX_RESPONSE_BYTES} bytes"));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| format!("reading the response: {error}"))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(format!("the response exceeds {MAX_RESPONSE_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.to_vec())
}

fn endpoint(document: &Map<String, Value>, name: &str) -> Result<Url, IdentityProviderError> {
    let value = document
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| IdentityProviderError::Discovery(format!("no {name}")))?;
    parse_url(value, UrlPolicy::CredentialEndpoint)
        .map_err(|error| IdentityProviderError::Discovery(format!("{name}: {error}")))
}

fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

impl IdentityProviders {
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(REQUEST_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // Discovery and token endpoints are configured, exact URLs: a redirect is an
            // error, never a hop to somewhere else with the client secret.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("portcullis-node/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            jwks: JwksRegistry::new(JwksPolicy::default())?,
            discovered: Mutex::new(HashMap::new()),
        })
    }

    fn cached(&self, issuer: &str) -> Option<(Arc<ProviderMetadata>, bool)> {
        let cache = self
            .discovered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.get(issuer).map(|cached| {
            (
                cached.metadata.clone(),
                cached.fetched_at.elapsed() < DISCOVERY_REFRESH,
            )
        })
    }

    /// The provider's metadata: cached for [`DISCOVERY_REFRESH`]; when a refresh fails the
    /// cached document stays in use.
    pub async fn metadata(
        &self,
        provider: &IdentityProvider<SecretValue>,
    ) -> Result<Arc<ProviderMetadata>, IdentityProviderError> {
        let issuer = trimmed(provider.issuer.as_str()).to_owned();
        let cached = self.cached(&issuer);
        if let Some((metadata, true)) = &cached {
            return Ok(metadata.clone());
        }
        match self.discover(&issuer).await {
            Ok(metadata) => {
                let metadata = Arc::new(metadata);
                let mut cache = self
                    .discovered
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                // Providers removed from the catalog leave entries behind; a day later
                // they go.
                cache.retain(|_, entry| entry.fetched_at.elapsed() < DISCOVERY_REFRESH * 24);
                cache.insert(
                    issuer,
                    Cached {
                        metadata: metadata.clone(),
                        fetched_at: Instant::now(),
                    },
                );
                Ok(metadata)
            }
            Err(error) => match cached {
                Some((metadata, _)) => {
                    tracing::warn!(identity_provider = %provider.id, %error, "identity provider discovery failed: the cached document stays in use");
                    Ok(metadata)
                }
                None => Err(error),
            },
        }
    }

    async fn discover(&self, issuer: &str) -> Result<ProviderMetadata, IdentityProviderError> {
        let url = format!("{issuer}/.well-known/openid-configuration");
        let response = self
            .http
            .get(&url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|error| IdentityProviderError::Discovery(format!("{url}: {error}")))?;
        if !response.status().is_success() {
            return Err(IdentityProviderError::Discovery(format!(
                "{url} answered {}",
                response.status()
            )));
        }
        let body = read_bounded(response)
            .await
            .map_err(IdentityProviderError::Discovery)?;
        let document: Map<String, Value> = serde_json::from_slice(&body)
            .map_err(|_| IdentityProviderError::Discovery(format!("{url} is not a JSON object")))?;
        let discovered_issuer = document
            .get("issuer")
            .and_then(Value::as_str)
            .ok_or_else(|| IdentityProviderError::Discovery("no issuer".to_owned()))?;
        // OpenID Connect Discovery section 4.3: the issuer must be the one asked about.
        if trimmed(discovered_issuer) != issuer {
            return Err(IdentityProviderError::Discovery(format!(
                "the document names issuer {discovered_issuer}, not {issuer}"
            )));
        }
        let jwks_uri = endpoint(&document, "jwks_uri")?;
        let jwks = self
            .jwks
            .get(&jwks_uri)
            .map_err(|error| IdentityProviderError::Discovery(error.to_string()))?;
        let strings = |name: &str| -> Vec<String> {
            document
                .get(name)
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(ProviderMetadata {
            issuer: discovered_issuer.to_owned(),
            authorization_endpoint: endpoint(&document, "authorization_endpoint")?,
            token_endpoint: endpoint(&document, "token_endpoint")?,
            jwks,
            token_endpoint_auth_methods: strings("token_endpoint_auth_methods_supported"),
            iss_parameter_supported: document
                .get("authorization_response_iss_parameter_supported")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// The provider's authorization URL for one login.
    pub fn authorization_url(
        metadata: &ProviderMetadata,
        provider: &IdentityProvider<SecretValue>,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        code_challenge: &str,
    ) -> Url {
        let mut scopes = vec!["openid"];
        for scope in &provider.scopes {
            if !scopes.contains(&scope.as_str()) {
                scopes.push(scope.as_str());
            }
        }
        let mut url = metadata.authorization_endpoint.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &provider.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &scopes.join(" "))
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", code_challenge)
            .append_pair("code_challenge_method", "S256");
        if let Some(resource) = &provider.token_resource {
            url.query_pairs_mut().append_pair("resource", resource);
        }
        url
    }

    /// Redeems the provider's code: its ID token, and its access and refresh tokens.
    pub async fn exchange(
        &self,
        metadata: &ProviderMetadata,
        provider: &IdentityProvider<SecretValue>,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
        now_unix: i64,
    ) -> Result<LoginTokens, IdentityProviderError> {
        let mut form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.to_owned()),
            ("redirect_uri", redirect_uri.to_owned()),
            ("code_verifier", code_verifier.to_owned()),
        ];
        if let Some(resource) = &provider.token_resource {
            form.push(("resource", resource.clone()));
        }
        let document = self
            .token_request(metadata, provider, form)
            .await
            .map_err(|error| IdentityProviderError::Exchange(error.to_string()))?;
        let id_token = document
            .get("id_token")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                IdentityProviderError::Exchange("the token response has no id_token".to_owned())
            })?;
        Ok(LoginTokens {
            id_token,
            provider_tokens: provider_tokens(&document, None, provider, now_unix),
        })
    }

    /// Renews the provider's access token with its refresh token (rotated when the provider
    /// rotates it, else kept), for the same resource.
    pub async fn refresh(
        &self,
        metadata: &ProviderMetadata,
        provider: &IdentityProvider<SecretValue>,
        tokens: &IdentityProviderTokens,
        now_unix: i64,
    ) -> Result<IdentityProviderTokens, IdentityProviderError> {
        let refresh_token = tokens.refresh_token.clone().ok_or_else(|| {
            IdentityProviderError::Refresh(RefreshFailure::Permanent(
                "the provider issued no refresh token".to_owned(),
            ))
        })?;
        let mut form = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh_token),
        ];
        if let Some(resource) = &tokens.resource {
            form.push(("resource", resource.clone()));
        }
        let document = self
            .token_request(metadata, provider, form)
            .await
            .map_err(|error| {
                IdentityProviderError::Refresh(if error.is_permanent() {
                    RefreshFailure::Permanent(error.to_string())
                } else {
                    RefreshFailure::Transient(error.to_string())
                })
            })?;
        let mut renewed = provider_tokens(&document, tokens.resource.clone(), provider, now_unix)
            .ok_or_else(|| {
            IdentityProviderError::Refresh(RefreshFailure::Transient(
                "the refresh response has no access_token".to_owned(),
            ))
        })?;
        if renewed.refresh_token.is_none() {
            renewed.refresh_token = tokens.refresh_token.clone();
        }
        Ok(renewed)
    }

    /// Posts to the provider's token endpoint with the gateway's client authentication, and
    /// returns the JSON answer of a success. Errors name the status and the provider's error
    /// code only.
    async fn token_request(
        &self,
        metadata: &ProviderMetadata,
        provider: &IdentityProvider<SecretValue>,
        mut form: Vec<(&str, String)>,
    ) -> Result<Map<String, Value>, TokenEndpointError> {
        let mut request = self
            .http
            .post(metadata.token_endpoint.clone())
            .header(http::header::ACCEPT, "application/json");
        match &provider.client_secret {
            // client_secret_basic unless the provider says it only takes the secret in the
            // body (OpenID Connect's default is Basic).
            Some(secret)
                if metadata
                    .token_endpoint_auth_methods
                    .iter()
                    .any(|method| method == "client_secret_post")
                    && !metadata
                        .token_endpoint_auth_methods
                        .iter()
                        .any(|method| method == "client_secret_basic") =>
            {
                form.push(("client_id", provider.client_id.clone()));
                form.push(("client_secret", secret.expose().to_owned()));
            }
            Some(secret) => {
                let credentials = format!(
                    "{}:{}",
                    form_encode(&provider.client_id),
                    form_encode(secret.expose())
                );
                request = request.header(
                    http::header::AUTHORIZATION,
                    format!("Basic {}", STANDARD.encode(credentials)),
                );
            }
            None => form.push(("client_id", provider.client_id.clone())),
        }
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().map(|(name, value)| (*name, value.as_str())))
            .finish();
        let response = request
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
            .map_err(|error| TokenEndpointError::Unreachable(error.without_url().to_string()))?;
        let status = response.status();
        let body = read_bounded(response)
            .await
            .map_err(TokenEndpointError::Malformed)?;
        let document: Map<String, Value> = serde_json::from_slice(&body).map_err(|_| {
            TokenEndpointError::Malformed(format!(
                "the token endpoint answered {status} without JSON"
            ))
        })?;
        if !status.is_success() {
            // The provider's error code is safe to log; its description may echo input.
            let error = document
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("(no error code)")
                .chars()
                .filter(char::is_ascii_graphic)
                .take(64)
                .collect::<String>();
            return Err(TokenEndpointError::Refused {
                status: status.as_u16(),
                error,
            });
        }
        Ok(document)
    }

    /// Verifies an ID token and reads the user from it.
    pub async fn verify_id_token(
        metadata: &ProviderMetadata,
        provider: &IdentityProvider<SecretValue>,
        id_token: &str,
        nonce: &str,
        now_unix: i64,
    ) -> Result<UserIdentity, IdentityProviderError> {
        use IdentityProviderError::IdToken;
        let unverified = token::parse(id_token).map_err(IdToken)?;
        let mut keys = match metadata.jwks.current() {
            Some(keys) => keys,
            None => metadata
                .jwks
                .first_keys()
                .await
                .ok_or(IdToken(TokenRejection::KeysUnavailable))?,
        };
        if let Some(key_id) = &unverified.key_id
            && !keys.contains_key_id(key_id)
        {
            keys = metadata
                .jwks
                .keys_after_unknown_kid(keys.generation())
                .await
                .ok_or(IdToken(TokenRejection::KeysUnavailable))?;
        }
        let candidates = keys
            .select(unverified.key_id.as_deref(), unverified.algorithm)
            .map_err(IdToken)?;
        unverified.verify_signature(&candidates).map_err(IdToken)?;
        let rules = ClaimRules {
            issuer: Some(&metadata.issuer),
            audience: Some(&provider.client_id),
            leeway_secs: LEEWAY_SECS,
        };
        let verified = token::check_claims(
            &unverified.verified_payload().map_err(IdToken)?,
            rules,
            now_unix,
        )
        .map_err(IdToken)?;
        let claims = &verified.claims;
        if let Some(authorized_party) = claims.get("azp").and_then(Value::as_str)
            && authorized_party != provider.client_id
        {
            return Err(IdToken(TokenRejection::WrongAudience));
        }
        if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
            return Err(IdentityProviderError::Nonce);
        }
        user_from_claims(claims, provider, &metadata.issuer, now_unix)
    }
}

/// The user the claims describe, by the claim names the catalog entry sets.
pub fn user_from_claims(
    claims: &Map<String, Value>,
    provider: &IdentityProvider<SecretValue>,
    issuer: &str,
    now_unix: i64,
) -> Result<UserIdentity, IdentityProviderError> {
    let user_claim = provider.user_id_claim.as_str();
    let subject = match claims.get(user_claim) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) => number.to_string(),
        _ => return Err(IdentityProviderError::Claim(user_claim.to_owned())),
    };
    UserId::parse(&subject).map_err(|_| IdentityProviderError::Claim(user_claim.to_owned()))?;
    let email = claims
        .get(provider.email_claim.as_str())
        .and_then(Value::as_str)
        .filter(|email| email.len() <= 320 && !email.chars().any(char::is_control))
        .map(str::to_owned);
    let groups: Vec<String> = match claims.get(provider.groups_claim.as_str()) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(group)) => vec![group.clone()],
        _ => Vec::new(),
    };
    let total = groups.len();
    let groups: Vec<String> = groups
        .into_iter()
        .filter(|group| {
            group.chars().count() <= MAX_GROUP_CHARS && !group.chars().any(char::is_control)
        })
        .take(MAX_GROUPS)
        .collect();
    if groups.len() < total {
        tracing::warn!(
            identity_provider = %provider.id,
            kept = groups.len(),
            total,
            "some of the user's groups were dropped (too many or too long)"
        );
    }
    let auth_time = claims
        .get("auth_time")
        .and_then(Value::as_i64)
        .unwrap_or(now_unix);
    Ok(UserIdentity {
        subject,
        email,
        groups,
        identity_provider: provider.id.to_string(),
        identity_provider_issuer: issuer.to_owned(),
        auth_time,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use portcullis_shared::names::{CatalogId, ClaimName, Scope};
    use serde_json::json;

    pub(crate) fn provider(issuer: &str) -> IdentityProvider<SecretValue> {
        IdentityProvider {
            id: CatalogId::parse("corp").unwrap(),
            display_name: "Corp SSO".to_owned(),
            issuer: Url::parse(issuer).unwrap(),
            client_id: "gateway".to_owned(),
            client_secret: Some(SecretValue::new("idp-secret")),
            scopes: vec![
                Scope::parse("email").unwrap(),
                Scope::parse("openid").unwrap(),
            ],
            user_id_claim: ClaimName::parse("sub").unwrap(),
            email_claim: ClaimName::parse("email").unwrap(),
            groups_claim: ClaimName::parse("groups").unwrap(),
            token_resource: None,
        }
    }

    #[test]
    fn users_come_from_the_configured_claims() {
        let mut provider = provider("https://idp.example.com");
        provider.user_id_claim = ClaimName::parse("oid").unwrap();
        provider.groups_claim = ClaimName::parse("https://example.com/roles").unwrap();
        let claims = json!({
            "sub": "pairwise-1", "oid": 4711, "email": "alice@example.com",
            "https://example.com/roles": ["admin", 3, "x".repeat(500)], "auth_time": 1_700_000_000,
        });
        let user = user_from_claims(
            claims.as_object().unwrap(),
            &provider,
            "https://idp.example.com",
            1_800_000_000,
        )
        .unwrap();
        assert_eq!(user.subject, "4711");
        assert_eq!(user.email.as_deref(), Some("alice@example.com"));
        assert_eq!(user.groups, ["admin"]);
        assert_eq!(user.identity_provider, "corp");
        assert_eq!(user.auth_time, 1_700_000_000);
        let missing = json!({"sub": "x"});
        assert!(matches!(
            user_from_claims(missing.as_object().unwrap(), &provider, "i", 0),
            Err(IdentityProviderError::Claim(claim)) if claim == "oid"
        ));
    }

    #[test]
    fn the_authorization_url_asks_for_openid_with_pkce_and_nonce() {
        let provider = provider("https://idp.example.com");
        let metadata = ProviderMetadata {
            issuer: "https://idp.example.com".to_owned(),
            authorization_endpoint: Url::parse("https://idp.example.com/authorize?tenant=t")
                .unwrap(),
            token_endpoint: Url::parse("https://idp.example.com/token").unwrap(),
            jwks: {
                let registry = JwksRegistry::with_fetcher(
                    JwksPolicy::default(),
                    crate::jwt::remote::tests::ScriptedFetcher::serving(json!({})),
                );
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                let _guard = runtime.enter();
                registry
                    .get(&Url::parse("https://idp.example.com/jwks").unwrap())
                    .unwrap()
            },
            token_endpoint_auth_methods: Vec::new(),
            iss_parameter_supported: true,
        };
        let url = IdentityProviders::authorization_url(
            &metadata,
            &provider,
            "https://gw.example.com/oauth/callback",
            "state-1",
            "nonce-1",
            "challenge-1",
        );
        let pairs: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs["tenant"], "t");
        assert_eq!(pairs["scope"], "openid email");
        assert_eq!(pairs["client_id"], "gateway");
        assert_eq!(pairs["code_challenge_method"], "S256");
        assert_eq!(pairs["nonce"], "nonce-1");
        assert_eq!(
            pairs["redirect_uri"],
            "https://gw.example.com/oauth/callback"
        );
        assert!(!pairs.contains_key("resource"));

        // With a token resource, the login asks for the provider's token for it (RFC 8707).
        let mut with_resource = provider.clone();
        with_resource.token_resource = Some("https://search.example.com".to_owned());
        let url = IdentityProviders::authorization_url(
            &metadata,
            &with_resource,
            "https://gw.example.com/oauth/callback",
            "state-1",
            "nonce-1",
            "challenge-1",
        );
        let pairs: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs["resource"], "https://search.example.com");
    }
}

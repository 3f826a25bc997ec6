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
//! Differences between providers are settings of the catalog entry (claims, scopes), never
//! code branches. The gateway asks only for what OpenID Connect gives every client (an ID
//! token); it sends no RFC 8707 `resource` to the provider, since the provider's access
//! token is not used.

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
use crate::oauth::grant::UserIdentity;

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

#[derive(Debug, thiserror::Error)]
pub enum IdentityProviderError {
    #[error("discovery failed: {0}")]
    Discovery(String),
    #[error("the code exchange failed: {0}")]
    Exchange(String),
    #[error("the ID token was refused: {0}")]
    IdToken(TokenRejection),
    #[error("the ID token's nonce does not match this login")]
    Nonce,
    #[error("the ID token lacks a usable {0} claim")]
    Claim(String),
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
        url
    }

    /// Redeems the provider's code; returns its ID token.
    pub async fn exchange(
        &self,
        metadata: &ProviderMetadata,
        provider: &IdentityProvider<SecretValue>,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<String, IdentityProviderError> {
        let mut form = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.to_owned()),
            ("redirect_uri", redirect_uri.to_owned()),
            ("code_verifier", code_verifier.to_owned()),
        ];
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
            .map_err(|error| IdentityProviderError::Exchange(error.to_string()))?;
        let status = response.status();
        let body = read_bounded(response)
            .await
            .map_err(IdentityProviderError::Exchange)?;
        let document: Map<String, Value> = serde_json::from_slice(&body).map_err(|_| {
            IdentityProviderError::Exchange(format!(
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
                .take(64)
                .collect::<String>();
            return Err(IdentityProviderError::Exchange(format!(
                "the token endpoint answered {status} {error}"
            )));
        }
        document
            .get("id_token")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                IdentityProviderError::Exchange("the token response has no id_token".to_owned())
            })
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
    }
}

//! Service tokens: access tokens the gateway obtains for itself with the OAuth 2.1 client
//! credentials grant, for "OAuth 2.1 Client Credentials" app authentication and the "OAuth2
//! service token" outbound header.
//!
//! - [`ServiceTokenSource`] is one configuration, prepared once per snapshot: the token
//!   client (HTTP Basic, which every token endpoint must accept, RFC 6749 section 2.3.1),
//!   scopes, audience, and a fingerprint of all of it, the secret included.
//! - [`ServiceTokenCache`] is the node's cache of service tokens, keyed by that fingerprint
//!   (so servers, headers and successive snapshots naming the same configuration share one
//!   token, and a rotated secret starts afresh), on the shared [`TokenCache`]: one fetch for
//!   every concurrent caller (single flight), refreshed shortly before expiry, a failure
//!   handed to everyone who waited for it and to new callers for [`RETRY_AFTER`], bounded.
//! - Failures are told apart ([`ClientCredentialsError`]): the provider refusing the
//!   client's credentials (`invalid_client`: a wrong id or secret, for an admin to fix),
//!   another refusal (`invalid_scope`...), a provider answering with a server error, and a
//!   token URL that cannot be reached at all.
//!
//! Tokens live in memory only, in [`SecretValue`]s; nothing here logs one.

use std::time::Duration;

use aws_lc_rs::digest::{Context, SHA256};
use portcullis_shared::config::ClientCredentials;
use portcullis_shared::secret::SecretValue;
use url::Url;

use crate::tokens::cache::{Cached, TokenCache};
use crate::tokens::endpoint::{ClientAuthentication, TokenClient, TokenEndpointError};

/// At most this many configurations have a cached token.
pub const MAX_SERVICE_TOKENS: usize = 1024;
/// A service token is fetched again this long before it expires (at most half its life).
pub const REFRESH_SKEW: Duration = Duration::from_secs(60);
/// After a failed fetch, requests get the failure for this long before one asks again, so a
/// bad secret is not tried hundreds of times a second.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Why no service token could be obtained. Messages name no secret and repeat nothing the
/// provider wrote except its OAuth error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientCredentialsError {
    /// `invalid_client` / `unauthorized_client` (or a bare 401): the client id or secret is
    /// wrong, or the client may not use this grant.
    #[error(
        "the token endpoint refused the client's credentials ({error}): check the client id and secret"
    )]
    InvalidClient { error: String },
    /// Another OAuth refusal (`invalid_scope`, `invalid_target`, `invalid_request`...).
    #[error("the token endpoint refused the request: HTTP {status} {error}")]
    Refused { status: u16, error: String },
    /// The provider answered with a server error or asked to slow down (5xx, 429).
    #[error("the token endpoint is unavailable: HTTP {status} {error}")]
    ProviderUnavailable { status: u16, error: String },
    /// No answer at all: DNS, connection, TLS, timeout.
    #[error("the token endpoint cannot be reached: {0}")]
    Unreachable(String),
    #[error("the token endpoint's answer is unusable: {0}")]
    Malformed(String),
}

impl ClientCredentialsError {
    /// A short stable name, for logs, records and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientCredentialsError::InvalidClient { .. } => "invalid_client",
            ClientCredentialsError::Refused { .. } => "refused",
            ClientCredentialsError::ProviderUnavailable { .. } => "provider_unavailable",
            ClientCredentialsError::Unreachable(_) => "unreachable",
            ClientCredentialsError::Malformed(_) => "malformed",
        }
    }
}

impl From<TokenEndpointError> for ClientCredentialsError {
    fn from(error: TokenEndpointError) -> Self {
        match error {
            TokenEndpointError::Refused { status, error } => {
                if error == "invalid_client" || error == "unauthorized_client" || status == 401 {
                    ClientCredentialsError::InvalidClient { error }
                } else if status >= 500 || status == 429 {
                    ClientCredentialsError::ProviderUnavailable { status, error }
                } else {
                    ClientCredentialsError::Refused { status, error }
                }
            }
            TokenEndpointError::Unreachable(message) => {
                ClientCredentialsError::Unreachable(message)
            }
            TokenEndpointError::Malformed(message) => ClientCredentialsError::Malformed(message),
        }
    }
}

fn add_field(context: &mut Context, field: &[u8]) {
    context.update(&(field.len() as u64).to_be_bytes());
    context.update(field);
}

/// One client credentials configuration, ready to use.
#[derive(Debug, Clone)]
pub struct ServiceTokenSource {
    client: TokenClient,
    scopes: Vec<String>,
    /// Sent as the `audience` parameter (Auth0, Okta and others name the API this way).
    audience: Option<String>,
    fingerprint: [u8; 32],
}

impl ServiceTokenSource {
    pub fn new(config: &ClientCredentials<SecretValue>) -> Self {
        let scopes: Vec<String> = config.scopes.iter().map(ToString::to_string).collect();
        let mut context = Context::new(&SHA256);
        add_field(&mut context, b"portcullis/client-credentials/v1");
        add_field(&mut context, config.token_url.as_str().as_bytes());
        add_field(&mut context, config.client_id.as_bytes());
        add_field(&mut context, config.client_secret.expose().as_bytes());
        add_field(&mut context, scopes.join(" ").as_bytes());
        add_field(
            &mut context,
            config.audience.as_deref().unwrap_or_default().as_bytes(),
        );
        let mut fingerprint = [0; 32];
        fingerprint.copy_from_slice(context.finish().as_ref());
        Self {
            client: TokenClient {
                token_url: config.token_url.clone(),
                client_id: config.client_id.clone(),
                client_secret: Some(config.client_secret.clone()),
                authentication: ClientAuthentication::Basic,
            },
            scopes,
            audience: config.audience.clone(),
            fingerprint,
        }
    }

    pub fn token_url(&self) -> &Url {
        &self.client.token_url
    }

    pub fn client_id(&self) -> &str {
        &self.client.client_id
    }

    async fn fetch(
        &self,
        http: &reqwest::Client,
    ) -> Result<(SecretValue, Duration), ClientCredentialsError> {
        let scope = self.scopes.join(" ");
        let mut parameters = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            parameters.push(("scope", &scope));
        }
        if let Some(audience) = &self.audience {
            parameters.push(("audience", audience));
        }
        match self.client.request(http, &parameters).await {
            Ok(response) => {
                tracing::debug!(
                    token_url = %self.client.token_url,
                    client_id = %self.client.client_id,
                    lifetime_secs = response.expires_in_secs,
                    "fetched a service token"
                );
                Ok((
                    response.access_token,
                    Duration::from_secs(response.expires_in_secs),
                ))
            }
            Err(error) => {
                let error = ClientCredentialsError::from(error);
                tracing::warn!(
                    token_url = %self.client.token_url,
                    client_id = %self.client.client_id,
                    kind = error.kind(),
                    %error,
                    "fetching a service token failed"
                );
                Err(error)
            }
        }
    }
}

/// The node's service tokens, one per configuration.
pub struct ServiceTokenCache {
    http: reqwest::Client,
    tokens: TokenCache<[u8; 32], SecretValue, ClientCredentialsError>,
}

impl std::fmt::Debug for ServiceTokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTokenCache")
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

impl ServiceTokenCache {
    pub fn new(http: reqwest::Client) -> Self {
        Self::with_capacity(http, MAX_SERVICE_TOKENS)
    }

    pub fn with_capacity(http: reqwest::Client, max_entries: usize) -> Self {
        Self {
            http,
            tokens: TokenCache::new(max_entries, REFRESH_SKEW, RETRY_AFTER),
        }
    }

    /// The service token of `source`: cached, or fetched now (once for every concurrent
    /// caller).
    pub async fn token(
        &self,
        source: &ServiceTokenSource,
    ) -> Result<Cached<SecretValue>, ClientCredentialsError> {
        self.tokens
            .get(&source.fingerprint, || source.fetch(&self.http))
            .await
    }

    /// Forgets the token of `source` (the upstream refused it), so the next request
    /// fetches a new one.
    pub fn invalidate(&self, source: &ServiceTokenSource) {
        self.tokens.remove(&source.fingerprint);
    }

    /// How many configurations have a cached token.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::endpoint::http_client;
    use crate::tokens::endpoint::tests::scripted_endpoint;
    use http::StatusCode;
    use portcullis_shared::names::Scope;
    use serde_json::json;
    use std::sync::Arc;

    fn config(token_url: &Url, secret: &str) -> ClientCredentials<SecretValue> {
        ClientCredentials {
            token_url: token_url.clone(),
            client_id: "svc".to_owned(),
            client_secret: SecretValue::new(secret),
            scopes: vec![
                Scope::parse("read").unwrap(),
                Scope::parse("write").unwrap(),
            ],
            audience: Some("https://api.example.com".to_owned()),
        }
    }

    #[tokio::test]
    async fn the_grant_asks_for_scopes_and_audience_and_the_token_is_cached() {
        let (url, endpoint) = scripted_endpoint(vec![(
            StatusCode::OK,
            json!({"access_token": "svc-token-1", "token_type": "bearer", "expires_in": 600}),
        )])
        .await;
        let cache = ServiceTokenCache::new(http_client().unwrap());
        let source = ServiceTokenSource::new(&config(&url, "s3cret"));
        let token = cache.token(&source).await.unwrap();
        assert_eq!(token.value.expose(), "svc-token-1");
        assert_eq!(
            endpoint.form_value("grant_type").as_deref(),
            Some("client_credentials")
        );
        assert_eq!(endpoint.form_value("scope").as_deref(), Some("read write"));
        assert_eq!(
            endpoint.form_value("audience").as_deref(),
            Some("https://api.example.com")
        );
        assert!(
            endpoint
                .last_authorization
                .lock()
                .unwrap()
                .as_deref()
                .is_some_and(|value| value.starts_with("Basic "))
        );
        // The same configuration, compiled again (a new snapshot), shares the token.
        let again = cache
            .token(&ServiceTokenSource::new(&config(&url, "s3cret")))
            .await
            .unwrap();
        assert_eq!(again.value.expose(), "svc-token-1");
        assert_eq!(endpoint.requests(), 1);
        assert!(!format!("{source:?} {cache:?}").contains("s3cret"));
        assert!(!format!("{token:?}").contains("svc-token-1"));
    }

    #[tokio::test]
    async fn a_rotated_secret_is_another_token() {
        let (url, endpoint) = scripted_endpoint(vec![
            (
                StatusCode::OK,
                json!({"access_token": "a", "expires_in": 600}),
            ),
            (
                StatusCode::OK,
                json!({"access_token": "b", "expires_in": 600}),
            ),
        ])
        .await;
        let cache = ServiceTokenCache::new(http_client().unwrap());
        let old = cache
            .token(&ServiceTokenSource::new(&config(&url, "one")))
            .await
            .unwrap();
        let new = cache
            .token(&ServiceTokenSource::new(&config(&url, "two")))
            .await
            .unwrap();
        assert_eq!((old.value.expose(), new.value.expose()), ("a", "b"));
        assert_eq!(endpoint.requests(), 2);
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_fetch() {
        let (url, endpoint) = scripted_endpoint(vec![(
            StatusCode::OK,
            json!({"access_token": "shared", "expires_in": 600}),
        )])
        .await;
        let cache = Arc::new(ServiceTokenCache::new(http_client().unwrap()));
        let source = Arc::new(ServiceTokenSource::new(&config(&url, "s3cret")));
        // The endpoint holds its answer until every caller has started.
        let gate = endpoint.gate.write().await;
        let callers: Vec<_> = (0..32)
            .map(|_| {
                let (cache, source) = (cache.clone(), source.clone());
                tokio::spawn(async move { cache.token(&source).await })
            })
            .collect();
        for _ in 0..64 {
            tokio::task::yield_now().await;
        }
        drop(gate);
        for caller in callers {
            assert_eq!(caller.await.unwrap().unwrap().value.expose(), "shared");
        }
        assert_eq!(endpoint.requests(), 1);
    }

    #[tokio::test]
    async fn a_wrong_secret_and_an_unreachable_url_are_different_errors() {
        let (url, endpoint) = scripted_endpoint(vec![(
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_client", "error_description": "bad secret s3cret"}),
        )])
        .await;
        let cache = ServiceTokenCache::new(http_client().unwrap());
        let source = ServiceTokenSource::new(&config(&url, "s3cret"));
        let error = cache.token(&source).await.unwrap_err();
        assert_eq!(
            error,
            ClientCredentialsError::InvalidClient {
                error: "invalid_client".to_owned()
            }
        );
        assert_eq!(error.kind(), "invalid_client");
        assert!(error.to_string().contains("check the client id and secret"));
        assert!(!error.to_string().contains("s3cret"));
        // Within RETRY_AFTER the same error comes back without a new request.
        assert_eq!(cache.token(&source).await.unwrap_err(), error);
        assert_eq!(endpoint.requests(), 1);

        // Nothing listens on this port: bound, then released.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let unreachable = ServiceTokenSource::new(&config(
            &Url::parse(&format!("http://{closed}/t")).unwrap(),
            "x",
        ));
        let error = cache.token(&unreachable).await.unwrap_err();
        assert!(
            matches!(error, ClientCredentialsError::Unreachable(_)),
            "{error}"
        );
        assert_eq!(error.kind(), "unreachable");
        assert!(error.to_string().contains("cannot be reached"));
    }

    #[test]
    fn provider_answers_are_classified() {
        let classify = |status, error: &str| {
            ClientCredentialsError::from(TokenEndpointError::Refused {
                status,
                error: error.to_owned(),
            })
            .kind()
        };
        assert_eq!(classify(400, "invalid_client"), "invalid_client");
        assert_eq!(classify(400, "unauthorized_client"), "invalid_client");
        assert_eq!(classify(401, "(no JSON error body)"), "invalid_client");
        assert_eq!(classify(400, "invalid_scope"), "refused");
        assert_eq!(
            classify(503, "temporarily_unavailable"),
            "provider_unavailable"
        );
        assert_eq!(classify(429, "slow_down"), "provider_unavailable");
        assert_eq!(
            ClientCredentialsError::from(TokenEndpointError::Malformed("x".to_owned())).kind(),
            "malformed"
        );
    }

    #[tokio::test]
    async fn an_invalidated_token_is_replaced() {
        let (url, endpoint) = scripted_endpoint(vec![
            (
                StatusCode::OK,
                json!({"access_token": "a", "expires_in": 600}),
            ),
            (
                StatusCode::OK,
                json!({"access_token": "b", "expires_in": 600}),
            ),
        ])
        .await;
        let cache = ServiceTokenCache::new(http_client().unwrap());
        let source = ServiceTokenSource::new(&config(&url, "s3cret"));
        assert_eq!(cache.token(&source).await.unwrap().value.expose(), "a");
        cache.invalidate(&source);
        assert_eq!(cache.token(&source).await.unwrap().value.expose(), "b");
        assert_eq!(endpoint.requests(), 2);
    }
}

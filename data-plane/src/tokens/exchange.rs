//! "On behalf of caller": RFC 8693 token exchange of the caller's token for one the upstream
//! accepts, issued by another identity provider (or the same one, for another audience).
//!
//! The request: `grant_type=urn:ietf:params:oauth:grant-type:token-exchange`,
//! `subject_token` (the caller's token), `subject_token_type`
//! (`urn:ietf:params:oauth:token-type:access_token`), `requested_token_type`, `audience` and
//! `scope` when configured, with the client authenticated by HTTP Basic.
//!
//! Results are cached per user and configuration until they expire (refreshed shortly
//! before, by exchanging the caller's current token again). The key never holds the
//! caller's token or the client secret: it is a SHA-256 over the configuration (secret
//! included, so a rotated secret starts afresh) and the user's stable name (issuer or
//! identity provider, and subject). User A's exchanged token is never handed to user B:
//! the user is part of every key.

use std::time::Duration;

use aws_lc_rs::digest::{Context, SHA256};
use portcullis_shared::config::TokenExchange;
use portcullis_shared::secret::SecretValue;

use crate::tokens::cache::{Cached, TokenCache};
use crate::tokens::endpoint::{ClientAuthentication, TokenClient, TokenEndpointError};

pub const TOKEN_EXCHANGE_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// At most this many (user, configuration) pairs are cached.
pub const MAX_EXCHANGED_TOKENS: usize = 10_000;
/// An exchanged token is exchanged again this long before it expires.
pub const REFRESH_SKEW: Duration = Duration::from_secs(60);
/// After a failed exchange, that user's requests get the failure for this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A token-exchange configuration, ready to use.
#[derive(Debug, Clone)]
pub struct ExchangeSource {
    client: TokenClient,
    audience: Option<String>,
    scopes: Vec<String>,
    requested_token_type: String,
    fingerprint: [u8; 32],
}

fn add_field(context: &mut Context, field: &[u8]) {
    context.update(&(field.len() as u64).to_be_bytes());
    context.update(field);
}

impl ExchangeSource {
    pub fn new(config: &TokenExchange<SecretValue>) -> Self {
        let scopes: Vec<String> = config.scopes.iter().map(ToString::to_string).collect();
        let mut context = Context::new(&SHA256);
        add_field(&mut context, b"portcullis/token-exchange/v1");
        add_field(&mut context, config.exchange_url.as_str().as_bytes());
        add_field(&mut context, config.client_id.as_bytes());
        add_field(&mut context, config.client_secret.expose().as_bytes());
        add_field(
            &mut context,
            config.audience.as_deref().unwrap_or_default().as_bytes(),
        );
        add_field(&mut context, scopes.join(" ").as_bytes());
        add_field(&mut context, config.requested_token_type.as_bytes());
        let mut fingerprint = [0; 32];
        fingerprint.copy_from_slice(context.finish().as_ref());
        Self {
            client: TokenClient {
                token_url: config.exchange_url.clone(),
                client_id: config.client_id.clone(),
                client_secret: Some(config.client_secret.clone()),
                authentication: ClientAuthentication::Basic,
            },
            audience: config.audience.clone(),
            scopes,
            requested_token_type: config.requested_token_type.clone(),
            fingerprint,
        }
    }

    /// The cache key of `user` under this configuration.
    fn key(&self, user: &str) -> [u8; 32] {
        let mut context = Context::new(&SHA256);
        add_field(&mut context, &self.fingerprint);
        add_field(&mut context, user.as_bytes());
        let mut key = [0; 32];
        key.copy_from_slice(context.finish().as_ref());
        key
    }

    async fn exchange(
        &self,
        http: &reqwest::Client,
        subject_token: &SecretValue,
    ) -> Result<(SecretValue, Duration), TokenEndpointError> {
        let scope = self.scopes.join(" ");
        let mut parameters = vec![
            ("grant_type", TOKEN_EXCHANGE_GRANT_TYPE),
            ("subject_token", subject_token.expose()),
            ("subject_token_type", TOKEN_TYPE_ACCESS_TOKEN),
            ("requested_token_type", self.requested_token_type.as_str()),
        ];
        if let Some(audience) = &self.audience {
            parameters.push(("audience", audience));
        }
        if !scope.is_empty() {
            parameters.push(("scope", &scope));
        }
        let response = self.client.request(http, &parameters).await?;
        if let Some(issued) = &response.issued_token_type
            && issued != &self.requested_token_type
        {
            return Err(TokenEndpointError::Malformed(format!(
                "issued_token_type {:?} is not the requested one",
                issued.chars().take(80).collect::<String>()
            )));
        }
        Ok((
            response.access_token,
            Duration::from_secs(response.expires_in_secs),
        ))
    }
}

/// Exchanged tokens of every user, per configuration.
pub struct TokenExchangeCache {
    http: reqwest::Client,
    tokens: TokenCache<[u8; 32], SecretValue, TokenEndpointError>,
}

impl std::fmt::Debug for TokenExchangeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenExchangeCache")
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

impl TokenExchangeCache {
    pub fn new(http: reqwest::Client) -> Self {
        Self::with_capacity(http, MAX_EXCHANGED_TOKENS)
    }

    pub fn with_capacity(http: reqwest::Client, max_entries: usize) -> Self {
        Self {
            http,
            tokens: TokenCache::new(max_entries, REFRESH_SKEW, RETRY_AFTER),
        }
    }

    /// The token `user` gets from `source`: cached for this user and configuration, or
    /// exchanged from `subject_token` now. `user` must name the user stably and uniquely
    /// (e.g. `idp:<catalog id>:<subject>`).
    pub async fn token(
        &self,
        source: &ExchangeSource,
        user: &str,
        subject_token: &SecretValue,
    ) -> Result<Cached<SecretValue>, TokenEndpointError> {
        self.tokens
            .get(&source.key(user), || {
                source.exchange(&self.http, subject_token)
            })
            .await
    }

    /// How many (user, configuration) pairs have a cached token.
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
    use portcullis_shared::config::DEFAULT_REQUESTED_TOKEN_TYPE;
    use portcullis_shared::names::Scope;
    use serde_json::json;

    fn config(url: &url::Url) -> TokenExchange<SecretValue> {
        TokenExchange {
            exchange_url: url.clone(),
            client_id: "gateway".to_owned(),
            client_secret: SecretValue::new("exchange-secret"),
            audience: Some("https://downstream.example.com".to_owned()),
            scopes: vec![Scope::parse("files.read").unwrap()],
            requested_token_type: DEFAULT_REQUESTED_TOKEN_TYPE.to_owned(),
        }
    }

    #[tokio::test]
    async fn exchanges_once_per_user_and_configuration() {
        let (url, endpoint) = scripted_endpoint(vec![
            (
                StatusCode::OK,
                json!({"access_token": "obo-alice", "issued_token_type": TOKEN_TYPE_ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 600}),
            ),
            (
                StatusCode::OK,
                json!({"access_token": "obo-bob", "issued_token_type": TOKEN_TYPE_ACCESS_TOKEN, "token_type": "Bearer", "expires_in": 600}),
            ),
        ])
        .await;
        let cache = TokenExchangeCache::new(http_client().unwrap());
        let source = ExchangeSource::new(&config(&url));
        let alice = cache
            .token(&source, "idp:corp:alice", &SecretValue::new("alice-token"))
            .await
            .unwrap();
        assert_eq!(alice.value.expose(), "obo-alice");
        assert_eq!(
            endpoint.form_value("subject_token").as_deref(),
            Some("alice-token")
        );
        assert_eq!(
            endpoint.form_value("grant_type").as_deref(),
            Some(TOKEN_EXCHANGE_GRANT_TYPE)
        );
        assert_eq!(
            endpoint.form_value("subject_token_type").as_deref(),
            Some(TOKEN_TYPE_ACCESS_TOKEN)
        );
        assert_eq!(
            endpoint.form_value("audience").as_deref(),
            Some("https://downstream.example.com")
        );
        assert_eq!(endpoint.form_value("scope").as_deref(), Some("files.read"));
        // Alice again: from the cache, even with another token of hers.
        let again = cache
            .token(
                &source,
                "idp:corp:alice",
                &SecretValue::new("alice-token-2"),
            )
            .await
            .unwrap();
        assert_eq!(again.value.expose(), "obo-alice");
        assert_eq!(endpoint.requests(), 1);
        // Bob never gets Alice's token.
        let bob = cache
            .token(&source, "idp:corp:bob", &SecretValue::new("bob-token"))
            .await
            .unwrap();
        assert_eq!(bob.value.expose(), "obo-bob");
        assert_eq!(endpoint.requests(), 2);
        assert_eq!(cache.len(), 2);
    }

    #[tokio::test]
    async fn refusals_and_wrong_token_types_are_errors() {
        let (url, _) = scripted_endpoint(vec![
            (
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_grant", "error_description": "subject_token alice-token expired"}),
            ),
            (
                StatusCode::OK,
                json!({"access_token": "x", "issued_token_type": "urn:ietf:params:oauth:token-type:id_token"}),
            ),
        ])
        .await;
        let cache = TokenExchangeCache::new(http_client().unwrap());
        let source = ExchangeSource::new(&config(&url));
        let refused = cache
            .token(&source, "u1", &SecretValue::new("alice-token"))
            .await
            .unwrap_err();
        assert_eq!(refused.oauth_error(), Some("invalid_grant"));
        assert!(!refused.to_string().contains("alice-token"));
        let wrong = cache
            .token(&source, "u2", &SecretValue::new("t"))
            .await
            .unwrap_err();
        assert!(wrong.to_string().contains("issued_token_type"), "{wrong}");
    }
}

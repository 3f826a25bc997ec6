//! One server's JWT validation: where its keys come from, what its claims must say, and
//! the cache of tokens it already verified.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use portcullis_shared::config::{JwksSource, JwtValidation};
use portcullis_shared::validate::ValidationErrors;

use crate::jwt::cache::{TokenDigest, VerifiedTokenCache};
use crate::jwt::keys::KeySet;
use crate::jwt::remote::{JwksRegistry, RemoteJwks};
use crate::jwt::token::{self, ClaimRules, VerifiedClaims};
use crate::jwt::{LEEWAY_SECS, TokenRejection};

/// Where a validator's keys come from.
pub enum KeySource {
    /// A JWKS given in the configuration, parsed when the snapshot was compiled.
    Inline(Arc<KeySet>),
    /// A JWKS URL, cached and refreshed per URL.
    Remote(Arc<RemoteJwks>),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Inline(keys) => f.debug_tuple("Inline").field(&keys.key_ids()).finish(),
            KeySource::Remote(remote) => f
                .debug_tuple("Remote")
                .field(&remote.url().as_str())
                .finish(),
        }
    }
}

/// Counters for benchmarks and diagnostics.
#[derive(Debug, Default)]
pub struct ValidatorStats {
    /// Tokens whose signature was checked (cache misses that got that far).
    pub signature_checks: AtomicU64,
    /// Tokens answered from the verified-token cache.
    pub cache_hits: AtomicU64,
}

#[derive(Debug)]
pub struct JwtValidator {
    keys: KeySource,
    issuer: Option<String>,
    audience: Option<String>,
    cache: VerifiedTokenCache,
    stats: ValidatorStats,
}

impl JwtValidator {
    /// Compiles a server's validation. An inline JWKS is parsed here (and must hold at least
    /// one usable key); a URL is looked up in (or added to) the registry, which starts its
    /// first fetch.
    pub fn compile(
        config: &JwtValidation,
        registry: &JwksRegistry,
        server: &str,
    ) -> Result<Self, ValidationErrors> {
        let keys = match &config.jwks {
            JwksSource::Inline(document) => {
                let parsed = KeySet::parse(document.as_bytes()).map_err(|error| {
                    ValidationErrors::single("jwt_validation.jwks_json", error.to_string())
                })?;
                for skipped in &parsed.skipped {
                    tracing::warn!(server, key = %skipped, "inline JWKS key skipped");
                }
                KeySource::Inline(Arc::new(parsed.keys))
            }
            JwksSource::Url(url) => KeySource::Remote(registry.get(url).map_err(|error| {
                ValidationErrors::single("jwt_validation.jwks_url", error.to_string())
            })?),
        };
        Ok(Self {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            cache: VerifiedTokenCache::default(),
            stats: ValidatorStats::default(),
        })
    }

    pub fn stats(&self) -> &ValidatorStats {
        &self.stats
    }

    pub fn key_source(&self) -> &KeySource {
        &self.keys
    }

    fn current_keys(&self) -> Option<Arc<KeySet>> {
        match &self.keys {
            KeySource::Inline(keys) => Some(keys.clone()),
            KeySource::Remote(remote) => remote.current(),
        }
    }

    /// Validates a bearer token at `now_unix`: signature, `exp`, `nbf`, and the issuer and
    /// audience when configured.
    pub async fn validate(
        &self,
        token: &str,
        now_unix: i64,
    ) -> Result<Arc<VerifiedClaims>, TokenRejection> {
        let digest = TokenDigest::of(token);
        let current = self.current_keys();
        if let Some(keys) = &current
            && let Some(claims) = self.cache.get(&digest, keys.generation(), now_unix)
        {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(claims);
        }

        // The header first: a token refused for its form or algorithm never makes the node
        // wait for, or fetch, keys.
        let unverified = token::parse(token)?;
        let mut keys = match (current, &self.keys) {
            (Some(keys), _) => keys,
            (None, KeySource::Inline(keys)) => keys.clone(),
            (None, KeySource::Remote(remote)) => remote
                .first_keys()
                .await
                .ok_or(TokenRejection::KeysUnavailable)?,
        };
        if let (Some(key_id), KeySource::Remote(remote)) = (&unverified.key_id, &self.keys)
            && !keys.contains_key_id(key_id)
        {
            // Maybe a rotation this node has not seen yet.
            keys = remote
                .keys_after_unknown_kid(keys.generation())
                .await
                .ok_or(TokenRejection::KeysUnavailable)?;
        }
        let candidates = keys.select(unverified.key_id.as_deref(), unverified.algorithm)?;
        self.stats.signature_checks.fetch_add(1, Ordering::Relaxed);
        unverified.verify_signature(&candidates)?;

        let rules = ClaimRules {
            issuer: self.issuer.as_deref(),
            audience: self.audience.as_deref(),
            leeway_secs: LEEWAY_SECS,
        };
        let claims = Arc::new(token::check_claims(
            &unverified.verified_payload()?,
            rules,
            now_unix,
        )?);
        self.cache
            .insert(digest, keys.generation(), claims.clone(), now_unix);
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::remote::JwksPolicy;
    use crate::jwt::remote::tests::{ScriptedFetcher, url};
    use crate::jwt::test_keys::{TestKey, hs256_token, jwks, unsigned_token};
    use serde_json::{Value, json};

    const NOW: i64 = 1_800_000_000;
    const ISSUER: &str = "https://idp.example.com";
    const AUDIENCE: &str = "mcp-gateway";

    fn claims() -> Value {
        json!({"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 600, "email": "alice@example.com"})
    }

    fn inline(keys: &[&TestKey], issuer: Option<&str>, audience: Option<&str>) -> JwtValidator {
        let registry =
            JwksRegistry::with_fetcher(JwksPolicy::default(), ScriptedFetcher::serving(json!({})));
        JwtValidator::compile(
            &JwtValidation {
                jwks: JwksSource::Inline(jwks(keys).to_string()),
                issuer: issuer.map(str::to_owned),
                audience: audience.map(str::to_owned),
            },
            &registry,
            "demo",
        )
        .unwrap()
    }

    async fn refused(validator: &JwtValidator, token: &str) -> TokenRejection {
        validator.validate(token, NOW).await.unwrap_err()
    }

    #[tokio::test]
    async fn every_key_type_and_algorithm_verifies() {
        let rsa = TestKey::rsa("rsa");
        let p256 = TestKey::ec_p256("p256");
        let p384 = TestKey::ec_p384("p384");
        let ed = TestKey::ed25519("ed");
        let validator = inline(&[&rsa, &p256, &p384, &ed], Some(ISSUER), Some(AUDIENCE));
        for algorithm in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
            let token = rsa.sign_with_header(&json!({"alg": algorithm, "kid": "rsa"}), &claims());
            let verified = validator.validate(&token, NOW).await;
            assert_eq!(verified.unwrap().subject, "alice", "{algorithm}");
        }
        for key in [&p256, &p384, &ed] {
            let verified = validator.validate(&key.sign(&claims()), NOW).await.unwrap();
            assert_eq!(verified.email.as_deref(), Some("alice@example.com"));
        }
    }

    #[tokio::test]
    async fn tokens_from_a_standard_encoder_verify() {
        // Interoperability: a token made by jsonwebtoken, not by the test encoder.
        let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .unwrap();
        let encoding_key = jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref());
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(
            &encoding_key,
            jsonwebtoken::Algorithm::ES256,
        )
        .unwrap();
        jwk.common.key_id = Some("lib".to_owned());
        let registry =
            JwksRegistry::with_fetcher(JwksPolicy::default(), ScriptedFetcher::serving(json!({})));
        let validator = JwtValidator::compile(
            &JwtValidation {
                jwks: JwksSource::Inline(json!({"keys": [jwk]}).to_string()),
                issuer: None,
                audience: None,
            },
            &registry,
            "demo",
        )
        .unwrap();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("lib".to_owned());
        let token = jsonwebtoken::encode(&header, &claims(), &encoding_key).unwrap();
        assert_eq!(
            validator.validate(&token, NOW).await.unwrap().subject,
            "alice"
        );
    }

    #[tokio::test]
    async fn every_bad_token_is_refused_with_its_reason() {
        let rsa = TestKey::rsa("rsa");
        let ec = TestKey::ec_p256("ec");
        let validator = inline(&[&rsa, &ec], Some(ISSUER), Some(AUDIENCE));
        let with = |field: &str, value: Value| {
            let mut claims = claims();
            claims[field] = value;
            claims
        };
        assert_eq!(
            refused(&validator, &rsa.sign(&with("exp", json!(NOW - 120)))).await,
            TokenRejection::Expired
        );
        assert_eq!(
            refused(&validator, &rsa.sign(&with("nbf", json!(NOW + 120)))).await,
            TokenRejection::NotYetValid
        );
        assert_eq!(
            refused(
                &validator,
                &rsa.sign(&with("iss", json!("https://evil.example")))
            )
            .await,
            TokenRejection::WrongIssuer
        );
        assert_eq!(
            refused(&validator, &rsa.sign(&with("aud", json!("another-api")))).await,
            TokenRejection::WrongAudience
        );
        let mut no_exp = claims();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            refused(&validator, &rsa.sign(&no_exp)).await,
            TokenRejection::MissingExpiry
        );

        // Signed by another key that claims the same kid.
        let impostor = TestKey::rsa("rsa");
        assert_eq!(
            refused(&validator, &impostor.sign(&claims())).await,
            TokenRejection::BadSignature
        );
        // A valid signature over other claims.
        let genuine = rsa.sign(&claims());
        let forged_claims = rsa.sign(&with("sub", json!("mallory")));
        let mut parts: Vec<&str> = genuine.split('.').collect();
        parts[1] = forged_claims.split('.').nth(1).unwrap();
        assert_eq!(
            refused(&validator, &parts.join(".")).await,
            TokenRejection::BadSignature
        );
        // An RSA signature presented as ES256 for the EC key, and the reverse.
        let cross = rsa.sign_with_header(&json!({"alg": "RS256", "kid": "ec"}), &claims());
        assert!(matches!(
            refused(&validator, &cross).await,
            TokenRejection::UnsupportedAlgorithm(_)
        ));

        assert!(matches!(
            refused(&validator, &unsigned_token("rsa", &claims())).await,
            TokenRejection::UnsupportedAlgorithm("unsigned tokens (alg none) are refused")
        ));
        // The HS/RS confusion: HMAC keyed with the RSA public key the verifier holds.
        let confused = hs256_token("rsa", &rsa.public_key_der(), &claims());
        assert!(matches!(
            refused(&validator, &confused).await,
            TokenRejection::UnsupportedAlgorithm(
                "symmetric algorithms (HS256, HS384, HS512) are refused"
            )
        ));
        let confused_n = hs256_token(
            "rsa",
            rsa.jwk()["n"].as_str().unwrap().as_bytes(),
            &claims(),
        );
        assert!(matches!(
            refused(&validator, &confused_n).await,
            TokenRejection::UnsupportedAlgorithm(_)
        ));

        let unknown = rsa.sign_with_header(&json!({"alg": "RS256", "kid": "nope"}), &claims());
        assert_eq!(
            refused(&validator, &unknown).await,
            TokenRejection::UnknownKeyId
        );
        for garbage in ["garbage", "a.b", "a.b.c", "....", "ey.ey.ey"] {
            assert!(
                matches!(
                    refused(&validator, garbage).await,
                    TokenRejection::Malformed(_)
                ),
                "{garbage}"
            );
        }
        // Nothing that was refused was cached.
        assert_eq!(validator.stats().cache_hits.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn tokens_without_kid_use_the_only_key_that_fits() {
        let rsa = TestKey::rsa("rsa");
        let other_rsa = TestKey::rsa("rsa-2");
        let ec = TestKey::ec_p256("ec");
        let validator = inline(&[&rsa, &other_rsa, &ec], None, None);
        let es256 = ec.sign_with_header(&json!({"alg": "ES256"}), &claims());
        assert_eq!(
            validator.validate(&es256, NOW).await.unwrap().subject,
            "alice"
        );
        let rs256 = rsa.sign_with_header(&json!({"alg": "RS256"}), &claims());
        assert_eq!(
            refused(&validator, &rs256).await,
            TokenRejection::KeyIdRequired
        );
    }

    #[tokio::test]
    async fn issuer_and_audience_are_optional() {
        let ed = TestKey::ed25519("ed");
        let validator = inline(&[&ed], None, None);
        let token = ed.sign(&json!({"sub": "svc", "exp": NOW + 60, "iss": "anyone", "aud": ["x"]}));
        assert!(validator.validate(&token, NOW).await.is_ok());
        let audience_only = inline(&[&ed], None, Some("x"));
        assert!(audience_only.validate(&token, NOW).await.is_ok());
    }

    #[tokio::test]
    async fn verified_tokens_are_served_from_the_cache_until_exp() {
        let ed = TestKey::ed25519("ed");
        let validator = inline(&[&ed], Some(ISSUER), Some(AUDIENCE));
        let mut claims = claims();
        claims["exp"] = json!(NOW + 30);
        let token = ed.sign(&claims);
        for _ in 0..3 {
            validator.validate(&token, NOW).await.unwrap();
        }
        let stats = validator.stats();
        assert_eq!(stats.signature_checks.load(Ordering::Relaxed), 1);
        assert_eq!(stats.cache_hits.load(Ordering::Relaxed), 2);
        // At exp the entry is gone; inside the leeway the token is verified again and
        // passes, past it the token is refused.
        validator.validate(&token, NOW + 30).await.unwrap();
        assert_eq!(stats.signature_checks.load(Ordering::Relaxed), 2);
        assert_eq!(
            validator.validate(&token, NOW + 90).await,
            Err(TokenRejection::Expired)
        );
    }

    fn remote_validator(fetcher: Arc<ScriptedFetcher>) -> (JwksRegistry, JwtValidator) {
        let registry = JwksRegistry::with_fetcher(JwksPolicy::default(), fetcher);
        let validator = JwtValidator::compile(
            &JwtValidation {
                jwks: JwksSource::Url(url()),
                issuer: Some(ISSUER.to_owned()),
                audience: None,
            },
            &registry,
            "demo",
        )
        .unwrap();
        (registry, validator)
    }

    #[tokio::test(start_paused = true)]
    async fn a_rotation_at_the_url_is_picked_up_and_drops_cached_tokens() {
        let old = TestKey::ec_p256("old");
        let fetcher = ScriptedFetcher::serving(jwks(&[&old]));
        let (_registry, validator) = remote_validator(fetcher.clone());
        let old_token = old.sign(&claims());
        validator.validate(&old_token, NOW).await.unwrap();
        validator.validate(&old_token, NOW).await.unwrap();
        assert_eq!(
            validator.stats().signature_checks.load(Ordering::Relaxed),
            1
        );

        let new = TestKey::ec_p256("new");
        fetcher.serve(jwks(&[&new]), None);
        let new_token = new.sign(&claims());
        validator.validate(&new_token, NOW).await.unwrap();
        assert_eq!(fetcher.calls(), 2);
        // The old key is gone: its cached token is checked again, and refused.
        assert_eq!(
            validator.validate(&old_token, NOW).await,
            Err(TokenRejection::UnknownKeyId)
        );
        assert_eq!(
            fetcher.calls(),
            2,
            "the cooldown holds further forced refreshes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bad_tokens_never_trigger_a_fetch() {
        let key = TestKey::ed25519("k");
        let fetcher = ScriptedFetcher::serving(jwks(&[&key]));
        let (_registry, validator) = remote_validator(fetcher.clone());
        validator.validate(&key.sign(&claims()), NOW).await.unwrap();
        for token in [
            "garbage".to_owned(),
            unsigned_token("unknown", &claims()),
            hs256_token("unknown", b"secret", &claims()),
        ] {
            assert!(validator.validate(&token, NOW).await.is_err());
        }
        assert_eq!(fetcher.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_url_never_fetched_refuses_with_keys_unavailable() {
        let key = TestKey::ed25519("k");
        let fetcher = ScriptedFetcher::serving(jwks(&[&key]));
        fetcher.fail_with(500);
        let (_registry, validator) = remote_validator(fetcher.clone());
        let started = tokio::time::Instant::now();
        assert_eq!(
            validator.validate(&key.sign(&claims()), NOW).await,
            Err(TokenRejection::KeysUnavailable)
        );
        assert!(started.elapsed() <= JwksPolicy::default().request_wait);
    }
}

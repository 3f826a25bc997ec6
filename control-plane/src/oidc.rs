//! Admin authentication with OpenID Connect: a JWT from the organisation's identity
//! provider, its role taken from a claim, besides the static tokens of the access file.
//!
//! ```yaml
//! oidc:
//!   issuer: https://login.example.com      # the tokens' iss; its discovery gives the JWKS
//!   audience: portcullis-admin             # the tokens' aud
//!   role_claim: groups                     # a string or an array of strings
//!   admin_values: [portcullis-admins]      # claim values that grant the admin role
//!   auditor_values: [security-auditors]    # ... the auditor role
//!   name_claim: email                      # who the actor is (default sub)
//! ```
//!
//! Keys come from the issuer's JWKS, fetched at start and refreshed every few minutes and
//! when a token names an unknown key (at most every 30 seconds). Verification itself never
//! waits on the network: a token whose key is not known yet is refused and the refresh is
//! started, so the next attempt succeeds.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::Notify;

use crate::access::{Principal, Role};

const REFRESH_EVERY: Duration = Duration::from_secs(300);
const FORCED_REFRESH_COOLDOWN: Duration = Duration::from_secs(30);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_JWKS_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    pub issuer: String,
    pub audience: String,
    pub role_claim: String,
    #[serde(default)]
    pub admin_values: Vec<String>,
    #[serde(default)]
    pub auditor_values: Vec<String>,
    #[serde(default)]
    pub name_claim: Option<String>,
    /// Overrides the JWKS URL from the issuer's discovery document.
    #[serde(default)]
    pub jwks_url: Option<String>,
}

impl RawOidc {
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(error) = portcullis_shared::names::parse_url(
            &self.issuer,
            portcullis_shared::names::UrlPolicy::CredentialEndpoint,
        ) {
            problems.push(format!("oidc.issuer: {error}"));
        }
        if let Some(url) = &self.jwks_url
            && let Err(error) = portcullis_shared::names::parse_url(
                url,
                portcullis_shared::names::UrlPolicy::CredentialEndpoint,
            )
        {
            problems.push(format!("oidc.jwks_url: {error}"));
        }
        if self.audience.is_empty() {
            problems.push("oidc.audience: required".to_owned());
        }
        if self.role_claim.is_empty() {
            problems.push("oidc.role_claim: required".to_owned());
        }
        if self.admin_values.is_empty() && self.auditor_values.is_empty() {
            problems.push(
                "oidc: set admin_values or auditor_values, or no token can have a role".to_owned(),
            );
        }
        problems
    }
}

pub struct OidcVerifier {
    config: RawOidc,
    keys: RwLock<JwkSet>,
    last_forced: RwLock<Option<Instant>>,
    refresh: Notify,
    http: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
}

/// The algorithms a key may verify: from its type, never from the token alone.
fn algorithms(key: &jsonwebtoken::jwk::Jwk) -> Vec<Algorithm> {
    let allowed = match &key.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => vec![],
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
        // Symmetric keys and kinds this build does not know verify nothing.
        _ => vec![],
    };
    match key
        .common
        .key_algorithm
        .and_then(|alg| alg.to_string().parse::<Algorithm>().ok())
    {
        Some(declared) if allowed.contains(&declared) => vec![declared],
        Some(_) => vec![],
        None => allowed,
    }
}

impl OidcVerifier {
    pub fn new(config: RawOidc) -> Result<Arc<Self>, OidcError> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|error| OidcError::Fetch {
                url: config.issuer.clone(),
                reason: error.to_string(),
            })?;
        Ok(Arc::new(Self {
            config,
            keys: RwLock::new(JwkSet { keys: Vec::new() }),
            last_forced: RwLock::new(None),
            refresh: Notify::new(),
            http,
        }))
    }

    async fn fetch_json(&self, url: &str) -> Result<serde_json::Value, OidcError> {
        let error = |reason: String| OidcError::Fetch {
            url: url.to_owned(),
            reason,
        };
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| error(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(error(format!("HTTP {}", response.status())));
        }
        // Bounded while reading, not after.
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| error(e.without_url().to_string()))?
        {
            if bytes.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(error("document too large".to_owned()));
            }
            bytes.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&bytes).map_err(|e| error(e.to_string()))
    }

    /// Fetches the issuer's keys now.
    pub async fn refresh_keys(&self) -> Result<usize, OidcError> {
        let jwks_url = match &self.config.jwks_url {
            Some(url) => url.clone(),
            None => {
                let discovery = format!(
                    "{}/.well-known/openid-configuration",
                    self.config.issuer.trim_end_matches('/')
                );
                let document = self.fetch_json(&discovery).await?;
                document["jwks_uri"]
                    .as_str()
                    .ok_or_else(|| OidcError::Fetch {
                        url: discovery.clone(),
                        reason: "no jwks_uri".to_owned(),
                    })?
                    .to_owned()
            }
        };
        let document = self.fetch_json(&jwks_url).await?;
        let set: JwkSet = serde_json::from_value(document).map_err(|error| OidcError::Fetch {
            url: jwks_url,
            reason: format!("malformed JWKS: {error}"),
        })?;
        let count = set.keys.len();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = set;
        Ok(count)
    }

    /// Keeps the keys current until the process stops.
    pub fn spawn_refresher(self: &Arc<Self>) {
        let verifier = self.clone();
        tokio::spawn(async move {
            loop {
                match verifier.refresh_keys().await {
                    Ok(count) => tracing::debug!(keys = count, "admin OIDC keys refreshed"),
                    Err(error) => {
                        tracing::warn!(%error, "refreshing the admin OIDC keys failed; keeping the cached ones")
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(REFRESH_EVERY) => {}
                    () = verifier.refresh.notified() => {}
                }
            }
        });
    }

    fn request_refresh(&self) {
        let mut last = self.last_forced.write().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|at| at.elapsed() >= FORCED_REFRESH_COOLDOWN) {
            *last = Some(Instant::now());
            self.refresh.notify_one();
        }
    }

    /// The admin principal a JWT stands for, if it verifies and carries a role.
    pub fn verify(&self, token: &str) -> Result<Principal, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| "malformed token".to_owned())?;
        let key = {
            let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
            let found = match &header.kid {
                Some(kid) => keys.find(kid).cloned(),
                None if keys.keys.len() == 1 => keys.keys.first().cloned(),
                None => None,
            };
            match found {
                Some(key) => key,
                None => {
                    drop(keys);
                    self.request_refresh();
                    return Err("unknown signing key".to_owned());
                }
            }
        };
        if !algorithms(&key).contains(&header.alg) {
            return Err("algorithm not allowed for this key".to_owned());
        }
        let decoding = DecodingKey::from_jwk(&key).map_err(|_| "unusable key".to_owned())?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[self.config.issuer.as_str()]);
        validation.set_audience(&[self.config.audience.as_str()]);
        validation.leeway = 60;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &decoding, &validation)
            .map_err(|error| format!("invalid token: {error}"))?
            .claims;
        let values: Vec<&str> = match &claims[&self.config.role_claim] {
            serde_json::Value::String(value) => vec![value.as_str()],
            serde_json::Value::Array(items) => items.iter().filter_map(|v| v.as_str()).collect(),
            _ => Vec::new(),
        };
        let has = |wanted: &[String]| values.iter().any(|value| wanted.iter().any(|w| w == value));
        let role = if has(&self.config.admin_values) {
            Role::Admin
        } else if has(&self.config.auditor_values) {
            Role::Auditor
        } else {
            return Err(format!(
                "the token's {} claim grants no role",
                self.config.role_claim
            ));
        };
        let name_claim = self.config.name_claim.as_deref().unwrap_or("sub");
        let name = claims[name_claim]
            .as_str()
            .or_else(|| claims["sub"].as_str())
            .unwrap_or("unknown");
        Ok(Principal {
            name: format!("oidc:{name}"),
            role,
        })
    }
}

//! The token vault: users' upstream OAuth tokens per app, for per-user OAuth 2.1
//! Authorization app auth.
//!
//! Tokens are not configuration, so they live outside the event log, in the `vault` tree,
//! each sealed under its own data key like every other secret; disconnecting destroys the
//! data keys. The control plane refreshes tokens itself: concurrent requests for the same
//! link wait on one lock and the provider sees exactly one refresh, however many nodes ask
//! (refresh tokens rotate, so two refreshes would break the link). `invalid_grant` marks a
//! link broken; transient failures are retried once and reported, leaving the link as it
//! was.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use portcullis_shared::config::{OAuthApp, TokenEndpointAuthMethod};
use portcullis_shared::names::{CatalogId, UserId};
use portcullis_shared::secret::SecretValue;
use serde::{Deserialize, Serialize};
use sled::Transactional;
use time::OffsetDateTime;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::audit::{AuditLog, local_event};
use crate::secrets::{SealedSecret, SecretError, SecretStore, WrappedDataKey};
use crate::state::State;

/// Changes queued per watcher before it is told to reset its cache.
const CHANGE_QUEUE: usize = 1024;
/// How long a provider may take to answer a refresh.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes read from a provider's token response.
const MAX_PROVIDER_RESPONSE: usize = 64 * 1024;

/// Which user's link to which app.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkKey {
    pub app_id: CatalogId,
    pub identity_provider: CatalogId,
    pub subject: UserId,
}

impl LinkKey {
    fn bytes(&self) -> Vec<u8> {
        let mut key = Vec::new();
        for part in [
            self.app_id.as_str(),
            self.identity_provider.as_str(),
            self.subject.as_str(),
        ] {
            key.extend_from_slice(part.as_bytes());
            key.push(0);
        }
        key
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let mut parts = bytes.split(|byte| *byte == 0);
        let app = std::str::from_utf8(parts.next()?).ok()?;
        let idp = std::str::from_utf8(parts.next()?).ok()?;
        let subject = std::str::from_utf8(parts.next()?).ok()?;
        Some(Self {
            app_id: CatalogId::parse(app).ok()?,
            identity_provider: CatalogId::parse(idp).ok()?,
            subject: UserId::parse(subject).ok()?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Connected,
    /// The provider refused the refresh token: the user must connect again.
    Broken,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// `None` once broken: the tokens are destroyed, only the status remains.
    pub access_token: Option<SealedSecret>,
    pub refresh_token: Option<SealedSecret>,
    pub token_type: String,
    /// 0 when the provider gave no expiry.
    pub expires_at_unix: i64,
    pub scope: String,
    pub state: LinkState,
    pub reason: String,
    pub connected_at_unix: i64,
    pub refreshed_at_unix: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "schema_version")]
enum StoredLink {
    #[serde(rename = "1")]
    V1(Link),
}

/// What a node gets for a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLookup {
    Missing,
    Broken {
        reason: String,
    },
    Connected {
        access_token: SecretValue,
        token_type: String,
        expires_at_unix: i64,
        scope: String,
    },
}

/// Tokens a link (or a refresh) obtained.
#[derive(Debug, Clone)]
pub struct NewTokens {
    pub access_token: SecretValue,
    pub refresh_token: Option<SecretValue>,
    pub token_type: String,
    pub expires_at_unix: i64,
    pub scope: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: LinkKey,
    /// `None` when the link was removed.
    pub state: Option<LinkState>,
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("no OAuth app {0:?} in the catalog")]
    UnknownApp(String),
    #[error(
        "the provider refused the app's own credentials ({error}); check the OAuth app's client id, secret and token_endpoint_auth_method"
    )]
    ProviderRejectedClient { error: String },
    #[error("the provider is unavailable: {0}")]
    ProviderUnavailable(String),
    #[error("the provider's answer is malformed: {0}")]
    ProviderMalformed(String),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("storage error: {0}")]
    Storage(String),
}

impl From<sled::Error> for VaultError {
    fn from(error: sled::Error) -> Self {
        VaultError::Storage(error.to_string())
    }
}

pub struct Vault {
    db: sled::Db,
    tree: sled::Tree,
    secrets: Arc<SecretStore>,
    state: watch::Receiver<Arc<State>>,
    http: reqwest::Client,
    refresh_locks: Mutex<HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>>,
    changes: broadcast::Sender<Change>,
    audit: Arc<AuditLog>,
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

impl Vault {
    pub fn open(
        db: &sled::Db,
        secrets: Arc<SecretStore>,
        state: watch::Receiver<Arc<State>>,
        audit: Arc<AuditLog>,
    ) -> Result<Self, VaultError> {
        let http = reqwest::Client::builder()
            .timeout(PROVIDER_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| VaultError::Storage(error.to_string()))?;
        Ok(Self {
            db: db.clone(),
            tree: db.open_tree("vault")?,
            secrets,
            state,
            http,
            refresh_locks: Mutex::new(HashMap::new()),
            changes: broadcast::channel(CHANGE_QUEUE).0,
            audit,
        })
    }

    /// Records a vault event in the audit trail. The trail failing must not undo what
    /// already happened to the link, so a failure is logged loudly instead.
    fn record(&self, kind: &str, key: &LinkKey, outcome: &str, reason: &str, summary: String) {
        let mut event = local_event(kind, key.subject.as_str(), outcome, reason, summary);
        event.credential_kind = "oauth_authorization".to_owned();
        event.credential_id = key.app_id.to_string();
        if let Err(error) = self.audit.append(&[event]) {
            tracing::error!(%error, kind, "recording a vault event in the audit trail failed");
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    fn read(&self, key: &LinkKey) -> Result<Option<Link>, VaultError> {
        match self.tree.get(key.bytes())? {
            None => Ok(None),
            Some(bytes) => match serde_json::from_slice::<StoredLink>(&bytes) {
                Ok(StoredLink::V1(link)) => Ok(Some(link)),
                Err(error) => Err(VaultError::Storage(format!(
                    "link {}/{}/{} cannot be decoded: {error}",
                    key.app_id, key.identity_provider, key.subject
                ))),
            },
        }
    }

    /// Writes (or removes) a link with its new data keys and destroys the data keys of the
    /// secrets it replaced, in one transaction, then flushes.
    fn write(
        &self,
        key: &LinkKey,
        link: Option<&Link>,
        new_keys: &[(Uuid, WrappedDataKey)],
    ) -> Result<(), VaultError> {
        let old = self.read(key)?;
        let secret_ids = |link: &Link| -> Vec<Uuid> {
            link.access_token
                .iter()
                .chain(link.refresh_token.iter())
                .map(|secret| secret.id)
                .collect()
        };
        let keep: Vec<Uuid> = link.map(secret_ids).unwrap_or_default();
        let shred: Vec<Uuid> = old
            .as_ref()
            .map(secret_ids)
            .unwrap_or_default()
            .into_iter()
            .filter(|id| !keep.contains(id))
            .collect();
        let encoded = link
            .map(|link| serde_json::to_vec(&StoredLink::V1(link.clone())))
            .transpose()
            .map_err(|error| VaultError::Storage(error.to_string()))?;
        let wrapped: Vec<(Uuid, Vec<u8>)> = new_keys
            .iter()
            .map(|(id, wrapped)| (*id, SecretStore::encode_wrapped(wrapped)))
            .collect();
        (&self.tree, self.secrets.data_keys_tree())
            .transaction(|(tree, data_keys)| {
                match &encoded {
                    Some(bytes) => {
                        tree.insert(key.bytes(), bytes.as_slice())?;
                    }
                    None => {
                        tree.remove(key.bytes())?;
                    }
                }
                for (id, bytes) in &wrapped {
                    data_keys.insert(id.as_bytes(), bytes.as_slice())?;
                }
                for id in &shred {
                    data_keys.remove(id.as_bytes())?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|error| VaultError::Storage(format!("{error:?}")))?;
        self.db.flush()?;
        let _ = self.changes.send(Change {
            key: key.clone(),
            state: link.map(|link| link.state),
        });
        Ok(())
    }

    fn seal(
        &self,
        value: &SecretValue,
        new_keys: &mut Vec<(Uuid, WrappedDataKey)>,
    ) -> Result<SealedSecret, VaultError> {
        let (sealed, wrapped) = self.secrets.seal(value)?;
        new_keys.push((sealed.id, wrapped));
        Ok(sealed)
    }

    /// Stores the tokens of a completed account link.
    pub fn put(&self, key: &LinkKey, tokens: NewTokens) -> Result<(), VaultError> {
        if !self.state.borrow().oauth_apps.contains_key(&key.app_id) {
            return Err(VaultError::UnknownApp(key.app_id.to_string()));
        }
        let mut new_keys = Vec::new();
        let now = now();
        let link = Link {
            access_token: Some(self.seal(&tokens.access_token, &mut new_keys)?),
            refresh_token: tokens
                .refresh_token
                .as_ref()
                .map(|token| self.seal(token, &mut new_keys))
                .transpose()?,
            token_type: tokens.token_type,
            expires_at_unix: tokens.expires_at_unix,
            scope: tokens.scope,
            state: LinkState::Connected,
            reason: String::new(),
            connected_at_unix: now,
            refreshed_at_unix: now,
        };
        self.write(key, Some(&link), &new_keys)?;
        self.record(
            "account_link",
            key,
            "connected",
            "",
            format!(
                "{} ({}) connected {}",
                key.subject, key.identity_provider, key.app_id
            ),
        );
        Ok(())
    }

    /// Removes a link and destroys its tokens; tells the provider when it has a revocation
    /// endpoint (best effort). True if there was a link.
    pub async fn delete(&self, key: &LinkKey) -> Result<bool, VaultError> {
        let Some(link) = self.read(key)? else {
            return Ok(false);
        };
        let app = self.state.borrow().oauth_apps.get(&key.app_id).cloned();
        if let (Some(app), Some(refresh)) = (app, &link.refresh_token)
            && let Some(revocation_url) = &app.revocation_url
            && let Ok(token) = self.secrets.reveal(refresh)
        {
            let result = self
                .authenticated(
                    &app,
                    self.http.post(revocation_url.clone()),
                    &[
                        ("token", token.expose()),
                        ("token_type_hint", "refresh_token"),
                    ],
                )
                .map(|request| request.send());
            match result {
                Ok(sending) => {
                    if let Err(error) = sending.await {
                        tracing::warn!(app = %key.app_id, %error, "revoking a token at the provider failed");
                    }
                }
                Err(error) => {
                    tracing::warn!(app = %key.app_id, %error, "cannot revoke at the provider")
                }
            }
        }
        self.write(key, None, &[])?;
        self.record(
            "account_unlink",
            key,
            "disconnected",
            "",
            format!(
                "{} ({}) disconnected {}",
                key.subject, key.identity_provider, key.app_id
            ),
        );
        Ok(true)
    }

    pub fn list(&self) -> Result<Vec<(LinkKey, Link)>, VaultError> {
        let mut links = Vec::new();
        for entry in self.tree.iter() {
            let (key, value) = entry?;
            let Some(key) = LinkKey::from_bytes(&key) else {
                continue;
            };
            if let Ok(StoredLink::V1(link)) = serde_json::from_slice::<StoredLink>(&value) {
                links.push((key, link));
            }
        }
        Ok(links)
    }

    /// One user's links, for the user themselves (a scan: links are keyed app first).
    pub fn list_user(
        &self,
        identity_provider: &CatalogId,
        subject: &UserId,
    ) -> Result<Vec<(LinkKey, Link)>, VaultError> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|(key, _)| {
                key.identity_provider == *identity_provider && key.subject == *subject
            })
            .collect())
    }

    fn lookup(&self, link: &Link) -> Result<TokenLookup, VaultError> {
        match (link.state, &link.access_token) {
            (LinkState::Broken, _) | (LinkState::Connected, None) => Ok(TokenLookup::Broken {
                reason: link.reason.clone(),
            }),
            (LinkState::Connected, Some(access)) => Ok(TokenLookup::Connected {
                access_token: self.secrets.reveal(access)?,
                token_type: link.token_type.clone(),
                expires_at_unix: link.expires_at_unix,
                scope: link.scope.clone(),
            }),
        }
    }

    fn fresh_enough(link: &Link, min_valid_secs: u32) -> bool {
        link.expires_at_unix == 0 || link.expires_at_unix - now() > i64::from(min_valid_secs)
    }

    /// The link's access token, refreshed first if it expires within `min_valid_secs`.
    pub async fn get(&self, key: &LinkKey, min_valid_secs: u32) -> Result<TokenLookup, VaultError> {
        let Some(link) = self.read(key)? else {
            return Ok(TokenLookup::Missing);
        };
        if link.state == LinkState::Broken || Self::fresh_enough(&link, min_valid_secs) {
            return self.lookup(&link);
        }
        // One refresh per link at a time; whoever waited finds the refreshed token.
        let lock = {
            let mut locks = self
                .refresh_locks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            locks.entry(key.bytes()).or_default().clone()
        };
        let _guard = lock.lock().await;
        let Some(link) = self.read(key)? else {
            return Ok(TokenLookup::Missing);
        };
        if link.state == LinkState::Broken || Self::fresh_enough(&link, min_valid_secs) {
            return self.lookup(&link);
        }
        let refreshed = self.refresh(key, link).await;
        crate::observability::token_refreshed(match &refreshed {
            Ok(TokenLookup::Broken { .. }) => "broken",
            Ok(_) => "ok",
            Err(_) => "failed",
        });
        refreshed
    }

    async fn refresh(&self, key: &LinkKey, link: Link) -> Result<TokenLookup, VaultError> {
        let app = self
            .state
            .borrow()
            .oauth_apps
            .get(&key.app_id)
            .cloned()
            .ok_or_else(|| VaultError::UnknownApp(key.app_id.to_string()))?;
        let Some(refresh_sealed) = &link.refresh_token else {
            let reason = "the access token expired and the provider gave no refresh token";
            self.mark_broken(key, &link, reason)?;
            return Ok(TokenLookup::Broken {
                reason: reason.to_owned(),
            });
        };
        let refresh_token = self.secrets.reveal(refresh_sealed)?;
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            match self.token_request(&app, &refresh_token).await {
                Ok(response) => break response,
                Err(VaultError::ProviderUnavailable(message)) if attempt < 2 => {
                    tracing::warn!(app = %key.app_id, %message, "refresh failed, retrying once");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => {
                    self.record(
                        "token_refresh_failure",
                        key,
                        "failed",
                        "provider_error",
                        format!(
                            "refreshing {}'s {} token failed: {error}",
                            key.subject, key.app_id
                        ),
                    );
                    return Err(error);
                }
            }
        };
        match response {
            ProviderAnswer::Tokens(answer) => {
                let mut new_keys = Vec::new();
                let refresh_token = match answer.refresh_token {
                    // Providers that rotate refresh tokens send a new one.
                    Some(rotated) => Some(self.seal(&SecretValue::new(rotated), &mut new_keys)?),
                    None => link.refresh_token.clone(),
                };
                let updated = Link {
                    access_token: Some(
                        self.seal(&SecretValue::new(answer.access_token), &mut new_keys)?,
                    ),
                    refresh_token,
                    token_type: answer.token_type.unwrap_or_else(|| link.token_type.clone()),
                    expires_at_unix: answer
                        .expires_in
                        .map(|seconds| now() + seconds)
                        .unwrap_or(0),
                    scope: answer.scope.unwrap_or_else(|| link.scope.clone()),
                    state: LinkState::Connected,
                    reason: String::new(),
                    connected_at_unix: link.connected_at_unix,
                    refreshed_at_unix: now(),
                };
                self.write(key, Some(&updated), &new_keys)?;
                tracing::info!(app = %key.app_id, user = %key.subject, "refreshed a user token");
                self.lookup(&updated)
            }
            ProviderAnswer::InvalidGrant(description) => {
                let reason = if description.is_empty() {
                    "the provider refused the refresh token (invalid_grant); connect the account again".to_owned()
                } else {
                    format!(
                        "the provider refused the refresh token (invalid_grant: {description}); connect the account again"
                    )
                };
                self.mark_broken(key, &link, &reason)?;
                Ok(TokenLookup::Broken { reason })
            }
        }
    }

    fn mark_broken(&self, key: &LinkKey, link: &Link, reason: &str) -> Result<(), VaultError> {
        tracing::warn!(app = %key.app_id, user = %key.subject, reason, "account link broken");
        self.record(
            "token_refresh_failure",
            key,
            "broken",
            "invalid_grant",
            format!("{}'s {} link is broken: {reason}", key.subject, key.app_id),
        );
        let broken = Link {
            access_token: None,
            refresh_token: None,
            state: LinkState::Broken,
            reason: reason.chars().take(512).collect(),
            ..link.clone()
        };
        self.write(key, Some(&broken), &[])
    }

    /// Adds the client authentication the app asks for.
    fn authenticated<'a>(
        &self,
        app: &OAuthApp<SealedSecret>,
        request: reqwest::RequestBuilder,
        form: &[(&'a str, &'a str)],
    ) -> Result<reqwest::RequestBuilder, VaultError> {
        let secret = app
            .client_secret
            .as_ref()
            .map(|sealed| self.secrets.reveal(sealed))
            .transpose()?;
        let mut fields: Vec<(String, String)> = form
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        let request = request.header(reqwest::header::ACCEPT, "application/json");
        let request = match (app.token_endpoint_auth_method, secret) {
            (TokenEndpointAuthMethod::ClientSecretBasic, Some(secret)) => {
                // RFC 6749 section 2.3.1: both parts form-urlencoded before Basic encoding.
                let encode = |text: &str| {
                    url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>()
                };
                let credentials = format!("{}:{}", encode(&app.client_id), encode(secret.expose()));
                request.header(
                    reqwest::header::AUTHORIZATION,
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(credentials)
                    ),
                )
            }
            (TokenEndpointAuthMethod::ClientSecretPost, Some(secret)) => {
                fields.push(("client_id".to_owned(), app.client_id.clone()));
                fields.push(("client_secret".to_owned(), secret.expose().to_owned()));
                request
            }
            (TokenEndpointAuthMethod::None, _)
            | (TokenEndpointAuthMethod::ClientSecretBasic, None)
            | (TokenEndpointAuthMethod::ClientSecretPost, None) => {
                fields.push(("client_id".to_owned(), app.client_id.clone()));
                request
            }
        };
        Ok(request.form(&fields))
    }

    async fn token_request(
        &self,
        app: &OAuthApp<SealedSecret>,
        refresh_token: &SecretValue,
    ) -> Result<ProviderAnswer, VaultError> {
        let request = self.authenticated(
            app,
            self.http.post(app.token_url.clone()),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.expose()),
            ],
        )?;
        let response = request
            .send()
            .await
            .map_err(|error| VaultError::ProviderUnavailable(error.without_url().to_string()))?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned();
        // Read chunk by chunk: a provider answering gigabytes is refused at the bound, not
        // buffered first.
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| VaultError::ProviderUnavailable(error.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_PROVIDER_RESPONSE {
                return Err(VaultError::ProviderMalformed(
                    "response too large".to_owned(),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_server_error() {
            return Err(VaultError::ProviderUnavailable(format!("HTTP {status}")));
        }
        let fields: serde_json::Map<String, serde_json::Value> =
            if content_type.starts_with("application/x-www-form-urlencoded") {
                url::form_urlencoded::parse(&body)
                    .map(|(name, value)| {
                        (
                            name.into_owned(),
                            serde_json::Value::String(value.into_owned()),
                        )
                    })
                    .collect()
            } else {
                serde_json::from_slice(&body).map_err(|error| {
                    VaultError::ProviderMalformed(format!("HTTP {status}, not JSON: {error}"))
                })?
            };
        let text = |name: &str| {
            fields
                .get(name)
                .and_then(|value| value.as_str())
                .map(str::to_owned)
        };
        if let Some(error) = text("error") {
            let description = text("error_description").unwrap_or_default();
            return match error.as_str() {
                "invalid_grant" => Ok(ProviderAnswer::InvalidGrant(
                    description.chars().take(200).collect(),
                )),
                "invalid_client" | "unauthorized_client" => {
                    Err(VaultError::ProviderRejectedClient { error })
                }
                "temporarily_unavailable" | "server_error" => {
                    Err(VaultError::ProviderUnavailable(error))
                }
                other => Err(VaultError::ProviderMalformed(format!(
                    "HTTP {status}, error {other}"
                ))),
            };
        }
        if !status.is_success() {
            return Err(VaultError::ProviderMalformed(format!(
                "HTTP {status} without an OAuth error"
            )));
        }
        let access_token = text("access_token")
            .ok_or_else(|| VaultError::ProviderMalformed("no access_token".to_owned()))?;
        let expires_in = fields.get("expires_in").and_then(|value| {
            value
                .as_i64()
                .or_else(|| value.as_str().and_then(|text| text.parse().ok()))
        });
        Ok(ProviderAnswer::Tokens(TokenAnswer {
            access_token,
            refresh_token: text("refresh_token"),
            token_type: text("token_type"),
            expires_in,
            scope: text("scope"),
        }))
    }

    /// A user's own value of a stored credential.
    pub fn user_credential(
        &self,
        credential_id: &CatalogId,
        user: &UserId,
    ) -> Result<Option<SecretValue>, VaultError> {
        let state = self.state.borrow().clone();
        let Some(credential) = state.credentials.get(credential_id) else {
            return Ok(None);
        };
        let Some(sealed) = credential.user_values.get(user) else {
            return Ok(None);
        };
        Ok(Some(self.secrets.reveal(sealed)?))
    }
}

enum ProviderAnswer {
    Tokens(TokenAnswer),
    InvalidGrant(String),
}

struct TokenAnswer {
    access_token: String,
    refresh_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<i64>,
    scope: Option<String>,
}

//! Users' own values of stored credentials ("Stored API key / credential", matched per
//! user), looked up through the control plane's `NodeRuntime.GetUserCredential` and cached.
//!
//! The cache is keyed by the snapshot version, the credential and the user (identity
//! provider or issuer, and subject), so user A's value is never served to user B. Users'
//! values are not part of snapshots (storing one does not change the snapshot version), so
//! a stored value is reused for [`LOOKUP_LIFETIME`] and "no value of their own" for
//! [`MISSING_LOOKUP_LIFETIME`]: a user who just stored a value is served it within seconds,
//! a changed or deleted value is used at most half a minute longer, and a user without one
//! does not cost a control-plane call per request. At most [`MAX_CACHED_LOOKUPS`] entries;
//! concurrent lookups of one key share one call.

use std::time::Duration;

use portcullis_shared::names::CatalogId;
use portcullis_shared::secret::SecretValue;

use crate::oauth::runtime::{RuntimeClient, VaultUser};
use crate::tokens::cache::TokenCache;

/// At most this many (snapshot, credential, user) lookups are cached.
pub const MAX_CACHED_LOOKUPS: usize = 10_000;
/// A user's own value is reused this long.
pub const LOOKUP_LIFETIME: Duration = Duration::from_secs(30);
/// "No value of their own" is reused this long.
pub const MISSING_LOOKUP_LIFETIME: Duration = Duration::from_secs(5);
/// After a failed lookup, that user's requests get the failure for this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a user's value could not be looked up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserCredentialError {
    #[error("the node has no control plane to ask")]
    NoControlPlane,
    #[error("{0}")]
    Runtime(String),
}

type LookupKey = (u64, CatalogId, String);

/// See the module documentation.
pub struct UserCredentialCache {
    lookups: TokenCache<LookupKey, Option<SecretValue>, UserCredentialError>,
}

impl std::fmt::Debug for UserCredentialCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCredentialCache")
            .field("lookups", &self.lookups.len())
            .finish()
    }
}

impl Default for UserCredentialCache {
    fn default() -> Self {
        Self::new()
    }
}

impl UserCredentialCache {
    pub fn new() -> Self {
        Self::with_capacity(MAX_CACHED_LOOKUPS)
    }

    pub fn with_capacity(max_entries: usize) -> Self {
        Self {
            // The skew does not matter for a fixed lifetime: half of it is the refresh point.
            lookups: TokenCache::new(max_entries, Duration::ZERO, RETRY_AFTER),
        }
    }

    /// The user's own value of `credential_id`, or `None` when they stored none. `user_key`
    /// names the user unambiguously for the cache; `user` is how the control plane names
    /// them.
    pub async fn lookup(
        &self,
        runtime: Option<&RuntimeClient>,
        snapshot_version: u64,
        credential_id: &CatalogId,
        user_key: &str,
        user: &VaultUser,
    ) -> Result<Option<SecretValue>, UserCredentialError> {
        let key = (snapshot_version, credential_id.clone(), user_key.to_owned());
        let cached = self
            .lookups
            .get(&key, || async {
                let runtime = runtime.ok_or(UserCredentialError::NoControlPlane)?;
                let value = runtime
                    .get_user_credential(credential_id.as_str(), user)
                    .await
                    .map_err(|error| UserCredentialError::Runtime(error.to_string()))?;
                let lifetime = if value.is_some() {
                    LOOKUP_LIFETIME
                } else {
                    MISSING_LOOKUP_LIFETIME
                };
                Ok((value, lifetime))
            })
            .await?;
        Ok(cached.value)
    }

    /// Drops what is cached for one user's value of `credential_id` under a snapshot, so
    /// the next request asks the control plane (after the user changed their own value on
    /// this node).
    pub fn forget(&self, snapshot_version: u64, credential_id: &CatalogId, user_key: &str) {
        self.lookups
            .remove(&(snapshot_version, credential_id.clone(), user_key.to_owned()));
    }

    /// How many lookups are cached.
    pub fn len(&self) -> usize {
        self.lookups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lookups.is_empty()
    }
}

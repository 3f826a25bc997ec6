//! The node's side of the token vault: users' upstream access tokens for per-user OAuth 2.1
//! Authorization app auth, held in memory only.
//!
//! The control plane keeps every link sealed and refreshes tokens itself, one refresh per
//! link however many nodes ask (refresh tokens rotate; two refreshes would break the link).
//! A node never sees a refresh token. It asks the control plane for a user's access token
//! (`GetUserToken`) on a miss and keeps it until shortly before it expires:
//!
//! - Keys are always the whole [`LinkKey`]: app, identity provider and subject. Subjects are
//!   unique per identity provider only, and a token is for one app: nothing here is ever
//!   looked up by less, so user A's token cannot be handed to user B.
//! - A token fetched with `R` seconds left is used until `margin(R) = min(60 s, R / 4)`
//!   before it expires. Then the next request asks again with `min_valid_secs =
//!   margin(R) + 1`, so the control plane refreshes exactly when the token is that close to
//!   expiry: the first node to ask triggers the one refresh, the others get the new token.
//!   A request with nothing cached asks with [`COLD_MIN_VALID_SECS`], so it is not handed a
//!   token about to expire.
//! - Concurrent requests for one key share one fetch (single flight).
//! - `WatchUserTokens` invalidates: every change names a key, whose entry is dropped; a
//!   `reset` message, the loss of the stream, or a failure to open it drops everything.
//!   While the node is not watching, nothing is cached: every request asks the control
//!   plane, so a disconnect or a broken link is never missed. The watch reconnects with
//!   backoff.
//! - Only connected links are cached; "not connected" and "broken" are asked again on the
//!   next request (they end in a prompt to the user, who is about to change them).
//! - Bounded: at most [`MAX_CACHED_TOKENS`] keys; when full, expired entries go first, then
//!   an arbitrary eighth.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use portcullis_proto::v1 as proto;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::discovery::{Backoff, BackoffPolicy};
use crate::jwt::unix_now;
use crate::oauth::runtime::{
    RuntimeClient, RuntimeError, UserAccessToken, UserTokenLookup, VaultUser,
};

/// At most this many links have a cached token on a node.
pub const MAX_CACHED_TOKENS: usize = 50_000;
/// A token is asked for again at most this long before it expires.
pub const MAX_REFRESH_MARGIN_SECS: i64 = 60;
/// `min_valid_secs` of a request that has nothing cached.
pub const COLD_MIN_VALID_SECS: u32 = 5;
/// How long a token whose provider gave no expiry is kept before the node asks again.
pub const UNBOUNDED_TOKEN_RECHECK: Duration = Duration::from_secs(600);

/// Which user's link to which app.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkKey {
    pub app_id: String,
    pub user: VaultUser,
}

impl LinkKey {
    pub fn new(app_id: impl Into<String>, user: VaultUser) -> Self {
        Self {
            app_id: app_id.into(),
            user,
        }
    }
}

/// How far before expiry a token with `remaining_secs` left is asked for again.
pub fn refresh_margin_secs(remaining_secs: i64) -> i64 {
    (remaining_secs / 4).clamp(0, MAX_REFRESH_MARGIN_SECS)
}

/// What the vault said about a link, for the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkLookup {
    Connected(Arc<UserAccessToken>),
    /// Never connected, or disconnected.
    Missing,
    /// The provider refused the refresh token: the user must connect again.
    Broken {
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("the node has no control plane for the token vault")]
    NotConfigured,
    #[error("the token vault is unavailable: {0}")]
    Unavailable(#[source] RuntimeError),
}

struct Entry {
    token: Arc<UserAccessToken>,
    /// Asked for again from here on.
    refresh_at: Instant,
    /// `min_valid_secs` of that request.
    refresh_min_valid_secs: u32,
}

struct Slot {
    entry: Mutex<Option<Entry>>,
    /// Held by the one fetch in flight.
    fetch: tokio::sync::Mutex<()>,
    /// Bumped when the watch invalidates the key, so a fetch that started before does not
    /// store what it got.
    generation: AtomicU64,
}

impl Slot {
    fn new() -> Self {
        Self {
            entry: Mutex::new(None),
            fetch: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
        }
    }

    fn fresh(&self, now: Instant) -> Option<Arc<UserAccessToken>> {
        let entry = self.entry.lock().unwrap_or_else(PoisonError::into_inner);
        entry
            .as_ref()
            .filter(|entry| now < entry.refresh_at)
            .map(|entry| entry.token.clone())
    }

    fn refresh_min_valid_secs(&self) -> u32 {
        self.entry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|entry| entry.refresh_min_valid_secs)
            .unwrap_or(COLD_MIN_VALID_SECS)
    }
}

/// Counters for tests and metrics.
#[derive(Debug, Default)]
pub struct VaultStats {
    /// `GetUserToken` calls made.
    pub fetches: AtomicU64,
    /// Requests answered from the cache.
    pub hits: AtomicU64,
    /// Times the whole cache was dropped (reset, lost stream).
    pub resets: AtomicU64,
    /// Single keys dropped by the watch.
    pub invalidations: AtomicU64,
}

/// The node's cache of users' upstream access tokens.
pub struct UserTokenVault {
    runtime: Option<RuntimeClient>,
    slots: Mutex<HashMap<LinkKey, Arc<Slot>>>,
    max_entries: usize,
    /// True while the watch stream is open and confirmed.
    watching: AtomicBool,
    /// Bumped when everything is dropped.
    epoch: AtomicU64,
    pub stats: VaultStats,
}

impl std::fmt::Debug for UserTokenVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserTokenVault")
            .field("entries", &self.len())
            .field("watching", &self.is_watching())
            .finish_non_exhaustive()
    }
}

impl UserTokenVault {
    pub fn new(runtime: Option<RuntimeClient>) -> Self {
        Self::with_capacity(runtime, MAX_CACHED_TOKENS)
    }

    pub fn with_capacity(runtime: Option<RuntimeClient>, max_entries: usize) -> Self {
        Self {
            runtime,
            slots: Mutex::new(HashMap::new()),
            max_entries: max_entries.max(1),
            watching: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            stats: VaultStats::default(),
        }
    }

    pub fn runtime(&self) -> Option<&RuntimeClient> {
        self.runtime.as_ref()
    }

    /// Whether the watch stream is open (tokens are cached only then).
    pub fn is_watching(&self) -> bool {
        self.watching.load(Ordering::Acquire)
    }

    /// How many links have a cached token.
    pub fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|slot| {
                slot.entry
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_some()
            })
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, key: &LinkKey) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get(key) {
            return slot.clone();
        }
        if slots.len() >= self.max_entries {
            let now = Instant::now();
            // Entries past their refresh point and empty slots go first.
            slots.retain(|_, slot| slot.fresh(now).is_some());
            if slots.len() >= self.max_entries {
                let excess = (self.max_entries / 8).max(1);
                let victims: Vec<LinkKey> = slots.keys().take(excess).cloned().collect();
                for victim in victims {
                    slots.remove(&victim);
                }
            }
        }
        let slot = Arc::new(Slot::new());
        slots.insert(key.clone(), slot.clone());
        slot
    }

    /// The user's token for an app: cached, or asked of the control plane (once for every
    /// concurrent request for the same link).
    pub async fn lookup(&self, key: &LinkKey) -> Result<LinkLookup, VaultError> {
        let runtime = self.runtime.as_ref().ok_or(VaultError::NotConfigured)?;
        let slot = self.slot(key);
        if let Some(token) = slot.fresh(Instant::now()) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(LinkLookup::Connected(token));
        }
        let _fetching = slot.fetch.lock().await;
        if let Some(token) = slot.fresh(Instant::now()) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(LinkLookup::Connected(token));
        }
        let generation = slot.generation.load(Ordering::Acquire);
        let epoch = self.epoch.load(Ordering::Acquire);
        let watching = self.is_watching();
        let min_valid_secs = slot.refresh_min_valid_secs();
        self.stats.fetches.fetch_add(1, Ordering::Relaxed);
        let lookup = runtime
            .get_user_token(&key.app_id, &key.user, min_valid_secs)
            .await
            .map_err(VaultError::Unavailable)?;
        let fetched_at = Instant::now();
        let now_unix = unix_now();
        // Cache only what no invalidation overtook, and only while watching.
        let store = watching
            && self.is_watching()
            && generation == slot.generation.load(Ordering::Acquire)
            && epoch == self.epoch.load(Ordering::Acquire);
        match lookup {
            UserTokenLookup::Connected(token) => {
                let token = Arc::new(token);
                let mut entry = slot.entry.lock().unwrap_or_else(PoisonError::into_inner);
                *entry = store.then(|| entry_for(token.clone(), fetched_at, now_unix));
                Ok(LinkLookup::Connected(token))
            }
            UserTokenLookup::Missing => {
                *slot.entry.lock().unwrap_or_else(PoisonError::into_inner) = None;
                Ok(LinkLookup::Missing)
            }
            UserTokenLookup::Broken { reason } => {
                *slot.entry.lock().unwrap_or_else(PoisonError::into_inner) = None;
                Ok(LinkLookup::Broken { reason })
            }
        }
    }

    /// Drops one link's cached token (the watch said it changed, or the upstream refused
    /// it).
    pub fn invalidate(&self, key: &LinkKey) {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned();
        if let Some(slot) = slot {
            slot.generation.fetch_add(1, Ordering::AcqRel);
            *slot.entry.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
        self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops every cached token.
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.stats.resets.fetch_add(1, Ordering::Relaxed);
    }

    /// Applies one message of the watch stream.
    pub fn apply_change(&self, change: &proto::UserTokenChange) {
        match (&change.user, change.reset) {
            (_, true) | (None, false) => self.clear(),
            (Some(user), false) => self.invalidate(&LinkKey::new(
                change.app_id.clone(),
                VaultUser::new(user.identity_provider.clone(), user.subject.clone()),
            )),
        }
    }

    fn set_watching(&self, watching: bool) {
        self.watching.store(watching, Ordering::Release);
        // Whatever was cached before (or while the stream was down) may be stale.
        self.clear();
    }

    /// Keeps the watch stream open until `shutdown`: applies its changes, drops everything
    /// when it is lost, reconnects with backoff. Does nothing without a control plane.
    pub async fn watch(self: Arc<Self>, backoff: BackoffPolicy, shutdown: CancellationToken) {
        let Some(runtime) = self.runtime.clone() else {
            return;
        };
        let mut delays = Backoff::new(backoff);
        loop {
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return,
                outcome = self.watch_once(&runtime) => outcome,
            };
            self.set_watching(false);
            match outcome {
                Ok(()) => {
                    tracing::warn!("the token vault watch ended: cached user tokens dropped");
                    delays.reset();
                }
                Err(error) => {
                    tracing::warn!(%error, "the token vault watch failed: cached user tokens dropped")
                }
            }
            let delay = delays.next_delay();
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn watch_once(&self, runtime: &RuntimeClient) -> Result<(), RuntimeError> {
        let mut stream = runtime.watch_user_tokens().await?;
        let mut confirmed = false;
        loop {
            let message = stream.message().await.map_err(RuntimeError::Status)?;
            let Some(change) = message else {
                return Ok(());
            };
            if !confirmed {
                // The first message (a reset) confirms the watch; from now on changes reach
                // this node, so caching is safe.
                confirmed = true;
                self.set_watching(true);
                tracing::info!("watching the token vault");
            }
            self.apply_change(&change);
        }
    }
}

fn entry_for(token: Arc<UserAccessToken>, fetched_at: Instant, now_unix: i64) -> Entry {
    if token.expires_at_unix == 0 {
        return Entry {
            token,
            refresh_at: fetched_at + UNBOUNDED_TOKEN_RECHECK,
            refresh_min_valid_secs: COLD_MIN_VALID_SECS,
        };
    }
    let remaining = (token.expires_at_unix - now_unix).max(0);
    let margin = refresh_margin_secs(remaining);
    let use_for = u64::try_from(remaining - margin).unwrap_or(0);
    Entry {
        token,
        refresh_at: fetched_at + Duration::from_secs(use_for),
        refresh_min_valid_secs: u32::try_from(margin + 1).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_shared::secret::SecretValue;

    fn token(value: &str, expires_at_unix: i64) -> Arc<UserAccessToken> {
        Arc::new(UserAccessToken {
            access_token: SecretValue::new(value),
            token_type: "Bearer".to_owned(),
            expires_at_unix,
            scope: String::new(),
        })
    }

    #[test]
    fn the_margin_is_a_quarter_of_what_is_left_at_most_a_minute() {
        assert_eq!(refresh_margin_secs(3600), 60);
        assert_eq!(refresh_margin_secs(100), 25);
        assert_eq!(refresh_margin_secs(3), 0);
        assert_eq!(refresh_margin_secs(-5), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn entries_are_used_until_their_margin_and_then_ask_for_a_refresh() {
        let now = Instant::now();
        let entry = entry_for(token("t", 1_000 + 3600), now, 1_000);
        assert_eq!(entry.refresh_at, now + Duration::from_secs(3540));
        assert_eq!(entry.refresh_min_valid_secs, 61);
        let short = entry_for(token("t", 1_000 + 8), now, 1_000);
        assert_eq!(short.refresh_at, now + Duration::from_secs(6));
        assert_eq!(short.refresh_min_valid_secs, 3);
        let unbounded = entry_for(token("t", 0), now, 1_000);
        assert_eq!(unbounded.refresh_at, now + UNBOUNDED_TOKEN_RECHECK);
        let expired = entry_for(token("t", 900), now, 1_000);
        assert_eq!(expired.refresh_at, now);
    }

    #[test]
    fn keys_need_app_identity_provider_and_subject() {
        let alice_corp = LinkKey::new("github", VaultUser::new("corp", "alice"));
        let alice_other = LinkKey::new("github", VaultUser::new("partner", "alice"));
        let alice_gitlab = LinkKey::new("gitlab", VaultUser::new("corp", "alice"));
        assert_ne!(alice_corp, alice_other);
        assert_ne!(alice_corp, alice_gitlab);
        let vault = UserTokenVault::new(None);
        let slot = vault.slot(&alice_corp);
        assert!(!Arc::ptr_eq(&slot, &vault.slot(&alice_other)));
        assert!(Arc::ptr_eq(&slot, &vault.slot(&alice_corp)));
    }

    #[test]
    fn the_watch_invalidates_one_key_or_everything() {
        let vault = UserTokenVault::new(None);
        let key = LinkKey::new("github", VaultUser::new("corp", "alice"));
        let other = LinkKey::new("github", VaultUser::new("corp", "bob"));
        for key in [&key, &other] {
            *vault.slot(key).entry.lock().unwrap() =
                Some(entry_for(token("t", 0), Instant::now(), 0));
        }
        assert_eq!(vault.len(), 2);
        vault.apply_change(&proto::UserTokenChange {
            app_id: "github".to_owned(),
            user: Some(proto::UserRef {
                identity_provider: "corp".to_owned(),
                subject: "alice".to_owned(),
            }),
            status: proto::LinkStatus::Missing as i32,
            reset: false,
        });
        assert_eq!(vault.len(), 1);
        assert!(vault.slot(&other).fresh(Instant::now()).is_some());
        vault.apply_change(&proto::UserTokenChange {
            reset: true,
            ..Default::default()
        });
        assert!(vault.is_empty());
    }

    #[test]
    fn the_cache_is_bounded() {
        let vault = UserTokenVault::with_capacity(None, 16);
        for index in 0..100 {
            let key = LinkKey::new("github", VaultUser::new("corp", format!("user-{index}")));
            *vault.slot(&key).entry.lock().unwrap() =
                Some(entry_for(token("t", 0), Instant::now(), 0));
        }
        assert!(vault.slots.lock().unwrap().len() <= 16);
    }
}

//! A bounded cache of expiring values (tokens, per-user credentials) with single-flight
//! fetching: however many requests want the same key at once, one fetch runs.
//!
//! Per key:
//! - a value past its refresh point but still usable is returned at once, and the first
//!   caller to notice refreshes it in the background of its own request (the others do not
//!   wait; if the refresh fails, the old value stays until it stops being usable);
//! - without a usable value, callers queue behind one fetch; a failure is handed to every
//!   caller that queued during it (no retry storm), and new callers within
//!   [`TokenCache::retry_after`] of a failure get it too instead of asking again;
//! - the refresh point is `lifetime - refresh_skew` (at least half the lifetime), and a value
//!   stops being usable `min(10 s, lifetime / 10)` before it expires, so it does not expire
//!   on its way to the upstream.
//!
//! Bounded: at most `max_entries` keys. When full, entries that expired go first, then the
//! least recently used eighth. Time is `tokio::time::Instant`, so tests run on a paused
//! clock.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// A value and when to stop using it.
#[derive(Debug, Clone)]
pub struct Cached<V> {
    pub value: V,
    /// When the value expires (as its source said).
    pub expires_at: Instant,
    refresh_at: Instant,
    usable_until: Instant,
}

impl<V> Cached<V> {
    fn new(value: V, fetched_at: Instant, lifetime: Duration, refresh_skew: Duration) -> Self {
        let refresh_after = lifetime.saturating_sub(refresh_skew).max(lifetime / 2);
        let margin = (lifetime / 10).min(Duration::from_secs(10));
        let usable_until = fetched_at + lifetime - margin;
        Self {
            value,
            expires_at: fetched_at + lifetime,
            // A value is never "fresh" once it stopped being usable.
            refresh_at: (fetched_at + refresh_after).min(usable_until),
            usable_until,
        }
    }

    fn usable(&self, now: Instant) -> bool {
        now < self.usable_until
    }

    fn fresh(&self, now: Instant) -> bool {
        now < self.refresh_at
    }
}

struct Failure<E> {
    at: Instant,
    error: E,
}

struct Slot<V, E> {
    state: Mutex<SlotState<V>>,
    /// Held by the one fetch in flight; holds the last failure.
    fetch: tokio::sync::Mutex<Option<Failure<E>>>,
}

struct SlotState<V> {
    current: Option<Cached<V>>,
    last_used: Instant,
}

impl<V: Clone, E> Slot<V, E> {
    fn current(&self) -> Option<Cached<V>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.last_used = Instant::now();
        state.current.clone()
    }

    fn store(&self, value: Cached<V>) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .current = Some(value);
    }
}

/// See the module documentation.
pub struct TokenCache<K, V, E> {
    entries: Mutex<HashMap<K, Arc<Slot<V, E>>>>,
    max_entries: usize,
    refresh_skew: Duration,
    retry_after: Duration,
}

impl<K, V, E> std::fmt::Debug for TokenCache<K, V, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("max_entries", &self.max_entries)
            .field("refresh_skew", &self.refresh_skew)
            .finish_non_exhaustive()
    }
}

impl<K, V, E> TokenCache<K, V, E>
where
    K: Hash + Eq + Clone,
    V: Clone,
    E: Clone,
{
    pub fn new(max_entries: usize, refresh_skew: Duration, retry_after: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            max_entries: max_entries.max(1),
            refresh_skew,
            retry_after,
        }
    }

    /// How long a failure is handed out before the next caller asks again.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The number of keys held.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets a key (a value the upstream or a newer configuration proved wrong).
    pub fn remove(&self, key: &K) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// Forgets every key.
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn slot(&self, key: &K) -> Arc<Slot<V, E>> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = entries.get(key) {
            return slot.clone();
        }
        if entries.len() >= self.max_entries {
            let now = Instant::now();
            entries.retain(|_, slot| {
                let state = slot.state.lock().unwrap_or_else(PoisonError::into_inner);
                state
                    .current
                    .as_ref()
                    .is_some_and(|value| value.usable(now))
            });
            if entries.len() >= self.max_entries {
                let mut by_use: Vec<(Instant, K)> = entries
                    .iter()
                    .map(|(key, slot)| {
                        let state = slot.state.lock().unwrap_or_else(PoisonError::into_inner);
                        (state.last_used, key.clone())
                    })
                    .collect();
                by_use.sort_by_key(|(last_used, _)| *last_used);
                let excess = (self.max_entries / 8).max(1);
                for (_, key) in by_use.into_iter().take(excess) {
                    entries.remove(&key);
                }
            }
        }
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState {
                current: None,
                last_used: Instant::now(),
            }),
            fetch: tokio::sync::Mutex::new(None),
        });
        entries.insert(key.clone(), slot.clone());
        slot
    }

    /// The value for `key`: cached, or fetched by `fetch` (once for every caller waiting at
    /// the same time). `fetch` yields the value and its lifetime.
    pub async fn get<F, Fut>(&self, key: &K, fetch: F) -> Result<Cached<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(V, Duration), E>>,
    {
        let slot = self.slot(key);
        let started = Instant::now();
        if let Some(current) = slot.current() {
            if current.fresh(started) {
                return Ok(current);
            }
            if current.usable(started) {
                // Due for a refresh but still good: one caller refreshes, the rest go on.
                let Ok(mut guard) = slot.fetch.try_lock() else {
                    return Ok(current);
                };
                if let Some(newer) = slot.current().filter(|newer| newer.fresh(started)) {
                    return Ok(newer);
                }
                return match fetch().await {
                    Ok((value, lifetime)) => {
                        let cached =
                            Cached::new(value, Instant::now(), lifetime, self.refresh_skew);
                        slot.store(cached.clone());
                        *guard = None;
                        Ok(cached)
                    }
                    Err(error) => {
                        *guard = Some(Failure {
                            at: Instant::now(),
                            error,
                        });
                        Ok(current)
                    }
                };
            }
        }
        let mut guard = slot.fetch.lock().await;
        let now = Instant::now();
        if let Some(current) = slot.current().filter(|current| current.usable(now)) {
            return Ok(current);
        }
        if let Some(failure) = guard.as_ref()
            && (failure.at >= started || now < failure.at + self.retry_after)
        {
            return Err(failure.error.clone());
        }
        match fetch().await {
            Ok((value, lifetime)) => {
                let cached = Cached::new(value, Instant::now(), lifetime, self.refresh_skew);
                slot.store(cached.clone());
                *guard = None;
                Ok(cached)
            }
            Err(error) => {
                *guard = Some(Failure {
                    at: Instant::now(),
                    error: error.clone(),
                });
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Cache = TokenCache<&'static str, String, String>;

    fn cache() -> Cache {
        TokenCache::new(16, Duration::from_secs(60), Duration::from_secs(1))
    }

    async fn fetch_counting(
        counter: &AtomicUsize,
        lifetime: Duration,
    ) -> Result<(String, Duration), String> {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        Ok((format!("token-{n}"), lifetime))
    }

    #[tokio::test(start_paused = true)]
    async fn a_value_is_reused_until_its_refresh_point() {
        let cache = cache();
        let fetches = AtomicUsize::new(0);
        let hour = Duration::from_secs(3600);
        let first = cache
            .get(&"a", || fetch_counting(&fetches, hour))
            .await
            .unwrap();
        assert_eq!(first.value, "token-1");
        tokio::time::advance(Duration::from_secs(3500)).await;
        let again = cache
            .get(&"a", || fetch_counting(&fetches, hour))
            .await
            .unwrap();
        assert_eq!(again.value, "token-1");
        // Within the skew: this caller refreshes.
        tokio::time::advance(Duration::from_secs(50)).await;
        let refreshed = cache
            .get(&"a", || fetch_counting(&fetches, hour))
            .await
            .unwrap();
        assert_eq!(refreshed.value, "token-2");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        // Another key is another value.
        let other = cache
            .get(&"b", || fetch_counting(&fetches, hour))
            .await
            .unwrap();
        assert_eq!(other.value, "token-3");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_fetch() {
        let cache = Arc::new(cache());
        let fetches = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let mut callers = Vec::new();
        for _ in 0..20 {
            let cache = cache.clone();
            let fetches = fetches.clone();
            let mut released = released.clone();
            callers.push(tokio::spawn(async move {
                cache
                    .get(&"a", || async move {
                        released.wait_for(|open| *open).await.unwrap();
                        fetch_counting(&fetches, Duration::from_secs(600)).await
                    })
                    .await
            }));
        }
        tokio::task::yield_now().await;
        release.send(true).unwrap();
        for caller in callers {
            assert_eq!(caller.await.unwrap().unwrap().value, "token-1");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_goes_to_every_waiter_and_is_retried_later() {
        let cache = Arc::new(cache());
        let attempts = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let mut callers = Vec::new();
        for _ in 0..5 {
            let cache = cache.clone();
            let attempts = attempts.clone();
            let mut released = released.clone();
            callers.push(tokio::spawn(async move {
                cache
                    .get(&"a", || async move {
                        released.wait_for(|open| *open).await.unwrap();
                        attempts.fetch_add(1, Ordering::SeqCst);
                        Err::<(String, Duration), _>("down".to_owned())
                    })
                    .await
            }));
        }
        tokio::task::yield_now().await;
        release.send(true).unwrap();
        for caller in callers {
            assert_eq!(caller.await.unwrap().unwrap_err(), "down");
        }
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
        // Within retry_after: the failure again, no new attempt.
        let fetches = AtomicUsize::new(0);
        let soon = cache
            .get(&"a", || fetch_counting(&fetches, Duration::from_secs(60)))
            .await;
        assert_eq!(soon.unwrap_err(), "down");
        assert_eq!(fetches.load(Ordering::SeqCst), 0);
        tokio::time::advance(Duration::from_secs(2)).await;
        let later = cache
            .get(&"a", || fetch_counting(&fetches, Duration::from_secs(60)))
            .await
            .unwrap();
        assert_eq!(later.value, "token-1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_keeps_the_usable_value_and_expired_ones_are_fetched_again() {
        let cache = cache();
        let fetches = AtomicUsize::new(0);
        let lifetime = Duration::from_secs(600);
        cache
            .get(&"a", || fetch_counting(&fetches, lifetime))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(550)).await;
        let kept = cache
            .get(&"a", || async {
                Err::<(String, Duration), _>("down".to_owned())
            })
            .await
            .unwrap();
        assert_eq!(kept.value, "token-1");
        // Less than 10 s before expiry it is no longer handed out.
        tokio::time::advance(Duration::from_secs(45)).await;
        let fresh = cache
            .get(&"a", || fetch_counting(&fetches, lifetime))
            .await
            .unwrap();
        assert_eq!(fresh.value, "token-2");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_skew_a_value_lives_its_lifetime_less_the_margin() {
        let cache: Cache = TokenCache::new(16, Duration::ZERO, Duration::from_secs(1));
        let fetches = AtomicUsize::new(0);
        let minute = Duration::from_secs(60);
        cache
            .get(&"a", || fetch_counting(&fetches, minute))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(53)).await;
        let kept = cache
            .get(&"a", || fetch_counting(&fetches, minute))
            .await
            .unwrap();
        assert_eq!(kept.value, "token-1");
        tokio::time::advance(Duration::from_secs(2)).await;
        let renewed = cache
            .get(&"a", || fetch_counting(&fetches, minute))
            .await
            .unwrap();
        assert_eq!(renewed.value, "token-2");
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_is_bounded() {
        let cache: Cache = TokenCache::new(8, Duration::from_secs(60), Duration::from_secs(1));
        let fetches = AtomicUsize::new(0);
        let keys = ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9"];
        for key in &keys[..8] {
            cache
                .get(key, || fetch_counting(&fetches, Duration::from_secs(600)))
                .await
                .unwrap();
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert_eq!(cache.len(), 8);
        cache
            .get(&"k8", || fetch_counting(&fetches, Duration::from_secs(600)))
            .await
            .unwrap();
        assert_eq!(cache.len(), 8);
        // The least recently used key went.
        let before = fetches.load(Ordering::SeqCst);
        cache
            .get(&"k0", || fetch_counting(&fetches, Duration::from_secs(600)))
            .await
            .unwrap();
        assert_eq!(fetches.load(Ordering::SeqCst), before + 1);
        // Expired entries go first.
        tokio::time::advance(Duration::from_secs(700)).await;
        cache
            .get(&"k9", || fetch_counting(&fetches, Duration::from_secs(600)))
            .await
            .unwrap();
        assert_eq!(cache.len(), 1);
    }
}

//! Successful verifications, remembered so a caller that sends the same token again skips
//! the signature check.
//!
//! - Keyed by the SHA-256 of the token: the cache never holds a token.
//! - An entry lives until the token's `exp` or [`MAX_ENTRY_SECS`] after it was verified,
//!   whichever comes first; then the token is verified again (which still allows the
//!   leeway past `exp`). Only successes are cached, so a token that was not yet valid is
//!   checked again next time.
//! - Entries remember the generation of the key set that verified them; when the key set
//!   changes (rotation at the JWKS URL), the old entries are dropped.
//! - Bounded: at most [`MAX_ENTRIES`] per validator, split into shards so concurrent requests
//!   rarely wait on the same lock. A full shard first drops expired entries, then an
//!   arbitrary eighth of its entries (the hash map's iteration order, which is randomised
//!   per process): cheap, and an attacker cannot aim it at one victim.
//!
//! One cache belongs to one server's validator (its issuer and audience are fixed), so a
//! token verified for one server is never taken as verified for another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest::{SHA256, digest};

use crate::jwt::token::VerifiedClaims;

/// Entries per validator.
pub const MAX_ENTRIES: usize = 4096;
/// An entry is re-verified at least this often, whatever the token's `exp`.
pub const MAX_ENTRY_SECS: i64 = 600;
const SHARDS: usize = 16;

/// The SHA-256 of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn of(token: &str) -> Self {
        let mut bytes = [0; 32];
        bytes.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
        Self(bytes)
    }

    fn shard(&self) -> usize {
        usize::from(self.0[0]) % SHARDS
    }
}

struct Entry {
    claims: Arc<VerifiedClaims>,
    expires_at_unix: i64,
}

#[derive(Default)]
struct Shard {
    /// The key-set generation every entry in this shard was verified with.
    generation: u64,
    entries: HashMap<TokenDigest, Entry>,
}

impl Shard {
    /// Moves the shard to `generation`: a newer generation empties it.
    fn advance_to(&mut self, generation: u64) {
        if generation > self.generation {
            self.entries.clear();
            self.generation = generation;
        }
    }
}

pub struct VerifiedTokenCache {
    shards: Box<[Mutex<Shard>]>,
    capacity_per_shard: usize,
}

impl std::fmt::Debug for VerifiedTokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTokenCache")
            .field("capacity", &(self.capacity_per_shard * self.shards.len()))
            .finish_non_exhaustive()
    }
}

impl Default for VerifiedTokenCache {
    fn default() -> Self {
        Self::with_capacity(MAX_ENTRIES)
    }
}

impl VerifiedTokenCache {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            capacity_per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, digest: &TokenDigest) -> std::sync::MutexGuard<'_, Shard> {
        // A panic while holding the lock leaves a consistent map (every operation is one
        // call on it), so a poisoned lock is still usable.
        self.shards[digest.shard()]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The claims of a token verified with key-set `generation`, if still fresh at `now_unix`.
    pub fn get(
        &self,
        digest: &TokenDigest,
        generation: u64,
        now_unix: i64,
    ) -> Option<Arc<VerifiedClaims>> {
        let mut shard = self.shard(digest);
        shard.advance_to(generation);
        if shard.generation != generation {
            return None;
        }
        match shard.entries.get(digest) {
            Some(entry) if now_unix < entry.expires_at_unix => Some(entry.claims.clone()),
            Some(_) => {
                shard.entries.remove(digest);
                None
            }
            None => None,
        }
    }

    /// Remembers a verification made at `now_unix` with key-set `generation`.
    pub fn insert(
        &self,
        digest: TokenDigest,
        generation: u64,
        claims: Arc<VerifiedClaims>,
        now_unix: i64,
    ) {
        let expires_at_unix = claims
            .expires_at_unix
            .min(now_unix.saturating_add(MAX_ENTRY_SECS));
        if now_unix >= expires_at_unix {
            return;
        }
        let mut shard = self.shard(&digest);
        shard.advance_to(generation);
        if shard.generation != generation {
            // Verified with keys that have since been replaced.
            return;
        }
        if shard.entries.len() >= self.capacity_per_shard && !shard.entries.contains_key(&digest) {
            shard
                .entries
                .retain(|_, entry| now_unix < entry.expires_at_unix);
            if shard.entries.len() >= self.capacity_per_shard {
                let evict = (self.capacity_per_shard / 8).max(1);
                let victims: Vec<TokenDigest> = shard.entries.keys().take(evict).copied().collect();
                for victim in victims {
                    shard.entries.remove(&victim);
                }
            }
        }
        shard.entries.insert(
            digest,
            Entry {
                claims,
                expires_at_unix,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entries
                    .len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    const NOW: i64 = 1_800_000_000;

    fn claims(expires_at_unix: i64) -> Arc<VerifiedClaims> {
        Arc::new(VerifiedClaims {
            subject: "alice".to_owned(),
            issuer: None,
            email: None,
            groups: Vec::new(),
            expires_at_unix,
            claims: Map::new(),
        })
    }

    #[test]
    fn entries_expire_at_exp_or_after_the_maximum_age() {
        let cache = VerifiedTokenCache::default();
        let short = TokenDigest::of("short");
        let long = TokenDigest::of("long");
        cache.insert(short, 1, claims(NOW + 30), NOW);
        cache.insert(long, 1, claims(NOW + 86_400), NOW);
        assert!(cache.get(&short, 1, NOW + 29).is_some());
        assert!(cache.get(&short, 1, NOW + 30).is_none());
        assert!(cache.get(&long, 1, NOW + MAX_ENTRY_SECS - 1).is_some());
        assert!(cache.get(&long, 1, NOW + MAX_ENTRY_SECS).is_none());
        // Inside the leeway past exp: not cached, verified again each time.
        cache.insert(short, 1, claims(NOW - 10), NOW);
        assert!(cache.get(&short, 1, NOW).is_none());
    }

    #[test]
    fn a_new_key_generation_drops_old_entries() {
        let cache = VerifiedTokenCache::default();
        let digest = TokenDigest::of("token");
        cache.insert(digest, 5, claims(NOW + 300), NOW);
        assert!(cache.get(&digest, 5, NOW).is_some());
        assert!(cache.get(&digest, 6, NOW).is_none());
        // The shard moved on: the old generation neither reads nor writes any more.
        assert!(cache.get(&digest, 5, NOW).is_none());
        cache.insert(digest, 5, claims(NOW + 300), NOW);
        assert!(cache.is_empty());
        cache.insert(digest, 6, claims(NOW + 300), NOW);
        assert!(cache.get(&digest, 6, NOW).is_some());
    }

    #[test]
    fn the_cache_stays_within_its_bound() {
        let cache = VerifiedTokenCache::with_capacity(64);
        for index in 0..10_000 {
            cache.insert(
                TokenDigest::of(&format!("token-{index}")),
                1,
                claims(NOW + 300),
                NOW,
            );
        }
        assert!(cache.len() <= 64, "{}", cache.len());
        let latest = TokenDigest::of("token-9999");
        assert!(cache.get(&latest, 1, NOW).is_some());
    }
}

//! The event store: an append-only log on sled, with an index per aggregate and periodic
//! snapshots of the projected state.
//!
//! Trees:
//! - `events`: sequence number (u64, big-endian) -> JSON `StoredEvent`;
//! - `aggregate_index`: `kind/id` NUL sequence -> empty, for per-aggregate history;
//! - `data_keys`: secret id -> wrapped data key (see `secrets`), written in the same
//!   transaction as the event that introduces or drops the secret;
//! - `state_snapshots`: revision -> JSON `StoredState`, so start-up replays only the tail.
//!
//! sled 0.34 is beta: every append is followed by `flush` before anyone is told it
//! happened, and crash recovery is proven by a kill -9 test rather than trusted.

use std::path::Path;

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use uuid::Uuid;

use crate::events::{AggregateKey, Event, StoredEvent};
use crate::secrets::{SecretStore, WrappedDataKey};
use crate::state::{ProjectionError, State, StoredState};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("event {sequence} cannot be decoded: {reason}")]
    Decode { sequence: u64, reason: String },
    #[error("cannot encode event: {0}")]
    Encode(String),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

/// Everything one write appends, committed atomically.
#[derive(Debug, Default)]
pub struct AppendBatch {
    pub events: Vec<Event>,
    pub new_keys: Vec<(Uuid, WrappedDataKey)>,
    /// Secrets no longer referenced by any aggregate: their data keys are destroyed.
    pub shredded: Vec<Uuid>,
}

pub struct EventStore {
    db: sled::Db,
    events: sled::Tree,
    index: sled::Tree,
    data_keys: sled::Tree,
    state_snapshots: sled::Tree,
}

fn sequence_key(sequence: u64) -> [u8; 8] {
    sequence.to_be_bytes()
}

fn index_prefix(aggregate: &AggregateKey) -> Vec<u8> {
    let mut prefix = aggregate.to_string().into_bytes();
    prefix.push(0);
    prefix
}

fn index_key(aggregate: &AggregateKey, sequence: u64) -> Vec<u8> {
    let mut key = index_prefix(aggregate);
    key.extend_from_slice(&sequence_key(sequence));
    key
}

fn decode_sequence(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&key[key.len() - 8..]);
    u64::from_be_bytes(bytes)
}

fn decode_event(sequence: u64, bytes: &[u8]) -> Result<Event, StoreError> {
    serde_json::from_slice::<StoredEvent>(bytes)
        .map(StoredEvent::into_current)
        .map_err(|error| StoreError::Decode {
            sequence,
            reason: error.to_string(),
        })
}

impl EventStore {
    /// Opens (or creates) the store in `directory`.
    pub fn open(directory: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(directory)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        Self::from_db(db)
    }

    pub fn from_db(db: sled::Db) -> Result<Self, StoreError> {
        Ok(Self {
            events: db.open_tree("events")?,
            index: db.open_tree("aggregate_index")?,
            state_snapshots: db.open_tree("state_snapshots")?,
            data_keys: db.open_tree("data_keys")?,
            db,
        })
    }

    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Appends a batch atomically and flushes it to disk. When this returns `Ok`, the
    /// events survive a crash.
    pub fn append(&self, batch: &AppendBatch) -> Result<(), StoreError> {
        let encoded: Vec<([u8; 8], Vec<u8>, Vec<u8>)> = batch
            .events
            .iter()
            .map(|event| {
                let bytes = serde_json::to_vec(&StoredEvent::V1(event.clone()))
                    .map_err(|error| StoreError::Encode(error.to_string()))?;
                Ok((
                    sequence_key(event.sequence),
                    index_key(&event.aggregate, event.sequence),
                    bytes,
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        let keys: Vec<(Uuid, Vec<u8>)> = batch
            .new_keys
            .iter()
            .map(|(id, wrapped)| (*id, SecretStore::encode_wrapped(wrapped)))
            .collect();
        (&self.events, &self.index, &self.data_keys)
            .transaction(|(events, index, data_keys)| {
                for (sequence, index_key, bytes) in &encoded {
                    if events.insert(sequence, bytes.as_slice())?.is_some() {
                        // Sequence numbers are assigned by the single writer; a duplicate
                        // means two writers, which must never be hidden.
                        return Err(ConflictableTransactionError::Abort(decode_sequence(
                            sequence,
                        )));
                    }
                    index.insert(index_key.as_slice(), &[])?;
                }
                for (id, wrapped) in &keys {
                    data_keys.insert(id.as_bytes(), wrapped.as_slice())?;
                }
                for id in &batch.shredded {
                    data_keys.remove(id.as_bytes())?;
                }
                Ok(())
            })
            .map_err(|error| match error {
                TransactionError::Abort(sequence) => StoreError::Decode {
                    sequence,
                    reason: "sequence number already used".to_owned(),
                },
                TransactionError::Storage(error) => StoreError::Sled(error),
            })?;
        self.db.flush()?;
        Ok(())
    }

    /// The highest sequence number in the log, 0 when empty.
    pub fn last_sequence(&self) -> Result<u64, StoreError> {
        Ok(self
            .events
            .last()?
            .map(|(key, _)| decode_sequence(&key))
            .unwrap_or(0))
    }

    /// Events with a sequence number above `after`, oldest first, at most `limit`.
    pub fn read_events(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.events
            .range(sequence_key(after.saturating_add(1))..)
            .take(limit)
            .map(|entry| {
                let (key, value) = entry?;
                decode_event(decode_sequence(&key), &value)
            })
            .collect()
    }

    /// The events of one aggregate above `after`, oldest first, at most `limit`.
    pub fn history(
        &self,
        aggregate: &AggregateKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let prefix = index_prefix(aggregate);
        let start = index_key(aggregate, after.saturating_add(1));
        let mut events = Vec::new();
        for entry in self.index.range(start..) {
            let (key, _) = entry?;
            if !key.starts_with(&prefix) || events.len() >= limit {
                break;
            }
            let sequence = decode_sequence(&key);
            let bytes =
                self.events
                    .get(sequence_key(sequence))?
                    .ok_or_else(|| StoreError::Decode {
                        sequence,
                        reason: "indexed event is missing from the log".to_owned(),
                    })?;
            events.push(decode_event(sequence, &bytes)?);
        }
        Ok(events)
    }

    /// The state at revision `up_to` (the latest when `None`): the nearest state snapshot
    /// at or below it, plus a replay of the events after it.
    pub fn load_state(&self, up_to: Option<u64>) -> Result<State, StoreError> {
        let limit = up_to.unwrap_or(u64::MAX);
        let mut state = State::default();
        for entry in self.state_snapshots.range(..=sequence_key(limit)).rev() {
            let (key, value) = entry?;
            match serde_json::from_slice::<StoredState>(&value) {
                Ok(StoredState::V1(snapshot)) => {
                    state = snapshot;
                    break;
                }
                Err(error) => {
                    // A snapshot is only a cache of the log: skip one we cannot read.
                    tracing::warn!(
                        revision = decode_sequence(&key),
                        %error,
                        "ignoring unreadable state snapshot"
                    );
                }
            }
        }
        for entry in self.events.range(sequence_key(state.revision + 1)..) {
            let (key, value) = entry?;
            let sequence = decode_sequence(&key);
            if sequence > limit {
                break;
            }
            state.apply(&decode_event(sequence, &value)?)?;
        }
        Ok(state)
    }

    /// Stores a snapshot of `state` and keeps only the newest `keep` of them.
    pub fn write_state_snapshot(&self, state: &State, keep: usize) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(&StoredState::V1(state.clone()))
            .map_err(|error| StoreError::Encode(error.to_string()))?;
        self.state_snapshots
            .insert(sequence_key(state.revision), bytes)?;
        let count = self.state_snapshots.len();
        if count > keep {
            let stale: Vec<_> = self
                .state_snapshots
                .iter()
                .keys()
                .take(count - keep)
                .collect::<Result<_, _>>()?;
            for key in stale {
                self.state_snapshots.remove(key)?;
            }
        }
        self.db.flush()?;
        Ok(())
    }

    /// The revision of the newest state snapshot, 0 when there is none.
    pub fn latest_state_snapshot_revision(&self) -> Result<u64, StoreError> {
        Ok(self
            .state_snapshots
            .last()?
            .map(|(key, _)| decode_sequence(&key))
            .unwrap_or(0))
    }
}

//! The audit trail: a hash-chained, append-only log of who did what, with which
//! credential, when.
//!
//! Each record is `hash = SHA-256(prev_hash || the prost-encoded event)`, numbered from 1.
//! Editing, removing or reordering a stored record breaks the chain, and `verify` says
//! where. Records are stored in blocks of consecutive records in the `audit_blocks` tree,
//! keyed by the sequence number of the block's first record: one insert per block rather
//! than per record is what lets the trail take tens of thousands of events per second. A
//! block is the records `sequence (8 bytes) || prev_hash (32) || hash (32) || event length
//! (4) || event`, one after the other. Event ids are indexed in `audit_ids`, written in the
//! same transaction, so redelivered events are stored once.
//!
//! Admin changes are not copied by a side channel that could drop them: a cursor in
//! `audit_meta` says up to which configuration event the trail has caught up, and it moves
//! in the same transaction as the records it covers.

use std::sync::{Arc, Mutex};

use aws_lc_rs::digest::{SHA256, digest};
use portcullis_proto::v1 as proto;
use prost::Message;
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use crate::events::Event;
use crate::store::EventStore;

/// Event kinds the trail accepts.
pub const KINDS: &[&str] = &[
    "mcp_request",
    "admin_change",
    "account_link",
    "account_unlink",
    "token_refresh_failure",
    "auth_failure",
];

const MAX_FIELD: usize = 1024;
const MAX_SUMMARY: usize = 4096;
const MAX_BATCH: usize = 10_000;
/// At most this many records are examined by one query page, so a filter that matches
/// nothing cannot make one call scan the whole trail.
const MAX_SCAN_PER_PAGE: usize = 200_000;
const CURSOR_KEY: &[u8] = b"config_events_audited";
/// The tree of record blocks.
pub const BLOCKS_TREE: &str = "audit_blocks";
/// The tree of one record per key an earlier version wrote (`prev_hash || hash || event`
/// under the sequence number); `open` moves it into blocks.
const LEGACY_TREE: &str = "audit";
/// A block is closed at this many records or bytes, whichever comes first.
const BLOCK_RECORDS: usize = 512;
const BLOCK_BYTES: usize = 1 << 20;
const RECORD_HEADER: usize = 8 + 32 + 32 + 4;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{0}")]
    Invalid(String),
    #[error("storage error: {0}")]
    Storage(String),
}

impl From<sled::Error> for AuditError {
    fn from(error: sled::Error) -> Self {
        AuditError::Storage(error.to_string())
    }
}

/// What the chain looks like at its end.
struct Head {
    sequence: u64,
    hash: [u8; 32],
}

pub struct AuditLog {
    db: sled::Db,
    blocks: sled::Tree,
    ids: sled::Tree,
    meta: sled::Tree,
    /// One writer at a time: the chain is sequential.
    head: Mutex<Head>,
}

fn chain_hash(previous: &[u8; 32], event: &[u8]) -> [u8; 32] {
    let mut input = Vec::with_capacity(32 + event.len());
    input.extend_from_slice(previous);
    input.extend_from_slice(event);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest(&SHA256, &input).as_ref());
    hash
}

/// One stored record, as a block holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub sequence: u64,
    pub previous: [u8; 32],
    pub hash: [u8; 32],
    /// The prost-encoded event.
    pub event: Vec<u8>,
}

fn push_record(
    block: &mut Vec<u8>,
    sequence: u64,
    previous: &[u8; 32],
    hash: &[u8; 32],
    event: &[u8],
) {
    block.extend_from_slice(&sequence.to_be_bytes());
    block.extend_from_slice(previous);
    block.extend_from_slice(hash);
    // Events are bounded by validation (a few KiB), far below u32::MAX.
    block.extend_from_slice(&(event.len() as u32).to_be_bytes());
    block.extend_from_slice(event);
}

/// The bytes of a block holding `records`, as `decode_block` reads them back.
pub fn encode_block(records: &[StoredRecord]) -> Vec<u8> {
    let mut block = Vec::new();
    for record in records {
        push_record(
            &mut block,
            record.sequence,
            &record.previous,
            &record.hash,
            &record.event,
        );
    }
    block
}

/// The records of a block, up to the first that does not decode; the error says what is
/// wrong with the rest.
pub fn decode_block(value: &[u8]) -> (Vec<StoredRecord>, Option<String>) {
    let mut records = Vec::new();
    let mut rest = value;
    while !rest.is_empty() {
        if rest.len() < RECORD_HEADER {
            return (records, Some("a record is truncated".to_owned()));
        }
        let sequence = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
        let previous: [u8; 32] = rest[8..40].try_into().expect("32 bytes");
        let hash: [u8; 32] = rest[40..72].try_into().expect("32 bytes");
        let length = u32::from_be_bytes(rest[72..76].try_into().expect("4 bytes")) as usize;
        let Some(event) = rest.get(RECORD_HEADER..RECORD_HEADER + length) else {
            return (records, Some(format!("record {sequence} is truncated")));
        };
        records.push(StoredRecord {
            sequence,
            previous,
            hash,
            event: event.to_vec(),
        });
        rest = &rest[RECORD_HEADER + length..];
    }
    (records, None)
}

fn block_key(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

fn check_field(name: &str, value: &str, max: usize) -> Result<(), AuditError> {
    if value.len() > max {
        return Err(AuditError::Invalid(format!(
            "{name}: must be at most {max} bytes"
        )));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(AuditError::Invalid(format!(
            "{name}: contains a control character"
        )));
    }
    Ok(())
}

/// Checks one event before anything is stored.
pub fn validate(event: &proto::AuditEvent) -> Result<(), AuditError> {
    uuid::Uuid::parse_str(&event.event_id)
        .map_err(|_| AuditError::Invalid("event_id: must be a UUID".to_owned()))?;
    if !KINDS.contains(&event.kind.as_str()) {
        return Err(AuditError::Invalid(format!(
            "kind: unknown kind {:?}",
            event.kind
        )));
    }
    if event.time_unix_micros <= 0 {
        return Err(AuditError::Invalid("time_unix_micros: required".to_owned()));
    }
    for (name, value) in [
        ("source", &event.source),
        ("actor", &event.actor),
        ("actor_email", &event.actor_email),
        ("server", &event.server),
        ("mcp_method", &event.mcp_method),
        ("tool", &event.tool),
        ("outcome", &event.outcome),
        ("credential_kind", &event.credential_kind),
        ("credential_id", &event.credential_id),
        ("reason", &event.reason),
        ("request_id", &event.request_id),
    ] {
        check_field(name, value, MAX_FIELD)?;
    }
    check_field("summary", &event.summary, MAX_SUMMARY)
}

/// Splits consecutive records into blocks: (key, block bytes).
fn into_blocks(records: impl Iterator<Item = StoredRecord>) -> Vec<([u8; 8], Vec<u8>)> {
    let mut blocks = Vec::new();
    let mut current: Option<([u8; 8], Vec<u8>, usize)> = None;
    for record in records {
        let (_, block, count) =
            current.get_or_insert_with(|| (record.sequence.to_be_bytes(), Vec::new(), 0));
        push_record(
            block,
            record.sequence,
            &record.previous,
            &record.hash,
            &record.event,
        );
        *count += 1;
        if *count >= BLOCK_RECORDS || block.len() >= BLOCK_BYTES {
            let (key, block, _) = current.take().expect("a block is open");
            blocks.push((key, block));
        }
    }
    if let Some((key, block, _)) = current {
        blocks.push((key, block));
    }
    blocks
}

/// Moves a trail an earlier version stored one record per key into blocks, keeping every
/// record's sequence number and hashes. Idempotent: an interrupted move starts over.
fn migrate_legacy(db: &sled::Db, blocks: &sled::Tree) -> Result<(), AuditError> {
    if !db
        .tree_names()
        .iter()
        .any(|name| name == LEGACY_TREE.as_bytes())
    {
        return Ok(());
    }
    let legacy = db.open_tree(LEGACY_TREE)?;
    if !legacy.is_empty() {
        blocks.clear()?;
        let mut records = Vec::new();
        for entry in legacy.iter() {
            let (key, value) = entry?;
            let sequence =
                block_key(&key).ok_or_else(|| AuditError::Storage("bad audit key".to_owned()))?;
            if value.len() < 64 {
                return Err(AuditError::Storage(format!(
                    "record {sequence} is truncated"
                )));
            }
            records.push(StoredRecord {
                sequence,
                previous: value[..32].try_into().expect("32 bytes"),
                hash: value[32..64].try_into().expect("32 bytes"),
                event: value[64..].to_vec(),
            });
        }
        for (key, block) in into_blocks(records.into_iter()) {
            blocks.insert(key, block)?;
        }
        db.flush()?;
    }
    db.drop_tree(LEGACY_TREE)?;
    db.flush()?;
    Ok(())
}

impl AuditLog {
    pub fn open(db: &sled::Db) -> Result<Self, AuditError> {
        let blocks = db.open_tree(BLOCKS_TREE)?;
        migrate_legacy(db, &blocks)?;
        let head = match blocks.last()? {
            Some((_, value)) => {
                let (records, problem) = decode_block(&value);
                if let Some(problem) = problem {
                    return Err(AuditError::Storage(format!(
                        "the last audit block is damaged: {problem}"
                    )));
                }
                let last = records.last().ok_or_else(|| {
                    AuditError::Storage("the last audit block is empty".to_owned())
                })?;
                Head {
                    sequence: last.sequence,
                    hash: last.hash,
                }
            }
            None => Head {
                sequence: 0,
                hash: [0u8; 32],
            },
        };
        Ok(Self {
            db: db.clone(),
            ids: db.open_tree("audit_ids")?,
            meta: db.open_tree("audit_meta")?,
            blocks,
            head: Mutex::new(head),
        })
    }

    /// Stores the events not stored yet, in order, hash-chained, and flushes. Refuses the
    /// whole batch if one event is invalid. Returns (stored, duplicates).
    pub fn append(&self, events: &[proto::AuditEvent]) -> Result<(u32, u32), AuditError> {
        self.append_with_cursor(events, None)
    }

    fn append_with_cursor(
        &self,
        events: &[proto::AuditEvent],
        cursor: Option<u64>,
    ) -> Result<(u32, u32), AuditError> {
        if events.len() > MAX_BATCH {
            return Err(AuditError::Invalid(format!(
                "a batch holds at most {MAX_BATCH} events"
            )));
        }
        for event in events {
            validate(event)?;
        }
        let mut head = self
            .head
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut seen = std::collections::HashSet::new();
        let mut fresh = Vec::with_capacity(events.len());
        for event in events {
            if !seen.insert(event.event_id.as_str()) || self.ids.contains_key(&event.event_id)? {
                continue;
            }
            fresh.push(event);
        }
        let duplicates = (events.len() - fresh.len()) as u32;
        let mut sequence = head.sequence;
        let mut hash = head.hash;
        let mut records = Vec::with_capacity(fresh.len());
        let mut ids = Vec::with_capacity(fresh.len());
        for event in &fresh {
            let bytes = event.encode_to_vec();
            let next = chain_hash(&hash, &bytes);
            // Only a damaged or tampered last record can be at u64::MAX; wrapping to 0 would
            // store the event before every other record.
            sequence = sequence.checked_add(1).ok_or_else(|| {
                AuditError::Storage("the audit trail's last sequence number is u64::MAX".to_owned())
            })?;
            records.push(StoredRecord {
                sequence,
                previous: hash,
                hash: next,
                event: bytes,
            });
            ids.push((event.event_id.as_bytes(), sequence.to_be_bytes()));
            hash = next;
        }
        if records.is_empty() && cursor.is_none() {
            drop(head);
            // The duplicates may have been stored by a call whose flush is still running:
            // they are acknowledged only once durable.
            self.db.flush()?;
            return Ok((0, duplicates));
        }
        let stored = records.len() as u32;
        let blocks = into_blocks(records.into_iter());
        (&self.blocks, &self.ids, &self.meta)
            .transaction(|(blocks_tree, ids_tree, meta)| {
                for (key, block) in &blocks {
                    blocks_tree.insert(&key[..], block.as_slice())?;
                }
                for (id, key) in &ids {
                    ids_tree.insert(*id, &key[..])?;
                }
                if let Some(cursor) = cursor {
                    meta.insert(CURSOR_KEY, &cursor.to_be_bytes()[..])?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|error| AuditError::Storage(format!("{error:?}")))?;
        head.sequence = sequence;
        head.hash = hash;
        // Flushed outside the lock: batches from several nodes share a flush (sled writes
        // out everything written before it), and the reply waits for it either way.
        drop(head);
        self.db.flush()?;
        Ok((stored, duplicates))
    }

    /// The sequence number of the last record (0 when the trail is empty).
    pub fn last_sequence(&self) -> u64 {
        self.head
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .sequence
    }

    /// How far the trail has caught up with the configuration log.
    pub fn config_cursor(&self) -> Result<u64, AuditError> {
        Ok(self
            .meta
            .get(CURSOR_KEY)?
            .and_then(|value| <[u8; 8]>::try_from(value.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// Records every configuration event after the cursor as an admin change.
    pub fn catch_up(&self, store: &EventStore) -> Result<usize, AuditError> {
        let mut total = 0;
        loop {
            let cursor = self.config_cursor()?;
            let events = store
                .read_events(cursor, 1000)
                .map_err(|error| AuditError::Storage(error.to_string()))?;
            let Some(last) = events.last().map(|event| event.sequence) else {
                return Ok(total);
            };
            let audit: Vec<proto::AuditEvent> = events.iter().map(admin_change).collect();
            total += audit.len();
            self.append_with_cursor(&audit, Some(last))?;
        }
    }

    /// A page of records matching `query`, oldest first.
    pub fn query(&self, query: &proto::AuditQuery) -> Result<proto::AuditPage, AuditError> {
        let limit = match query.limit {
            0 => 100,
            limit => (limit as usize).min(1000),
        };
        let first = query.after_sequence.saturating_add(1);
        // The block holding `first` starts at or before it.
        let start = match self.blocks.range(..=first.to_be_bytes()).next_back() {
            Some(entry) => entry?.0.to_vec(),
            None => first.to_be_bytes().to_vec(),
        };
        let mut records = Vec::new();
        let mut last_scanned = query.after_sequence;
        let mut scanned = 0usize;
        let mut exhausted = true;
        'blocks: for entry in self.blocks.range(start..) {
            let (_, value) = entry?;
            let (stored, problem) = decode_block(&value);
            if let Some(problem) = problem {
                return Err(AuditError::Storage(problem));
            }
            for record in stored {
                // Before the cursor, or out of order in a damaged trail (which `verify`
                // reports): pages only move forwards.
                if record.sequence <= last_scanned {
                    continue;
                }
                if records.len() >= limit || scanned >= MAX_SCAN_PER_PAGE {
                    exhausted = false;
                    break 'blocks;
                }
                scanned += 1;
                last_scanned = record.sequence;
                let event = proto::AuditEvent::decode(record.event.as_slice())
                    .map_err(|error| AuditError::Storage(error.to_string()))?;
                if matches(query, &event) {
                    records.push(proto::AuditRecord {
                        sequence: record.sequence,
                        event: Some(event),
                        hash: hex::encode(record.hash),
                    });
                }
            }
        }
        Ok(proto::AuditPage {
            records,
            next_after_sequence: if exhausted { 0 } else { last_scanned },
        })
    }

    /// Walks the whole chain and reports every break.
    pub fn verify(&self) -> Result<proto::VerifyAuditReply, AuditError> {
        let mut problems = Vec::new();
        let mut expected_previous = [0u8; 32];
        let mut expected_sequence = 1u64;
        let mut checked = 0u64;
        for entry in self.blocks.iter() {
            let (key, value) = entry?;
            let (records, damage) = decode_block(&value);
            let key = block_key(&key);
            if key.is_none() || key != records.first().map(|record| record.sequence) {
                problems.push(proto::AuditProblem {
                    sequence: records.first().map_or(expected_sequence, |r| r.sequence),
                    kind: "undecodable".to_owned(),
                    detail: "a block's key is not the sequence number of its first record"
                        .to_owned(),
                });
            }
            for record in &records {
                checked += 1;
                let sequence = record.sequence;
                if sequence != expected_sequence {
                    problems.push(proto::AuditProblem {
                        sequence: expected_sequence,
                        kind: "missing".to_owned(),
                        detail: format!(
                            "records {expected_sequence} to {} are missing",
                            sequence.saturating_sub(1)
                        ),
                    });
                }
                if chain_hash(&record.previous, &record.event) != record.hash {
                    problems.push(proto::AuditProblem {
                        sequence,
                        kind: "edited".to_owned(),
                        detail: "the record does not match its hash".to_owned(),
                    });
                } else if record.previous != expected_previous && sequence == expected_sequence {
                    problems.push(proto::AuditProblem {
                        sequence,
                        kind: "reordered".to_owned(),
                        detail: "the record does not follow the one before it".to_owned(),
                    });
                }
                expected_previous = record.hash;
                // A tampered record may be at u64::MAX (then it is the last one).
                expected_sequence = sequence.saturating_add(1);
            }
            if let Some(detail) = damage {
                checked += 1;
                problems.push(proto::AuditProblem {
                    sequence: expected_sequence,
                    kind: "undecodable".to_owned(),
                    detail,
                });
            }
        }
        Ok(proto::VerifyAuditReply {
            records_checked: checked,
            intact: problems.is_empty(),
            problems,
        })
    }

    /// Runs the admin-change catch-up whenever the configuration revision moves.
    pub fn spawn_config_follower(
        self: &Arc<Self>,
        store: Arc<EventStore>,
        mut revisions: tokio::sync::watch::Receiver<Arc<crate::state::State>>,
    ) {
        let audit = self.clone();
        tokio::spawn(async move {
            loop {
                let audit_now = audit.clone();
                let store_now = store.clone();
                match tokio::task::spawn_blocking(move || audit_now.catch_up(&store_now)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => {
                        tracing::error!(%error, "recording admin changes in the audit trail failed")
                    }
                    Err(error) => tracing::error!(%error, "audit catch-up panicked"),
                }
                if revisions.changed().await.is_err() {
                    break;
                }
            }
        });
    }
}

fn matches(query: &proto::AuditQuery, event: &proto::AuditEvent) -> bool {
    let field = |wanted: &str, actual: &str| wanted.is_empty() || wanted == actual;
    field(&query.actor, &event.actor)
        && field(&query.server, &event.server)
        && field(&query.tool, &event.tool)
        && field(&query.outcome, &event.outcome)
        && field(&query.kind, &event.kind)
        && (query.from_unix_micros == 0 || event.time_unix_micros >= query.from_unix_micros)
        && (query.to_unix_micros == 0 || event.time_unix_micros < query.to_unix_micros)
}

/// The audit event of one configuration event.
fn admin_change(event: &Event) -> proto::AuditEvent {
    let micros = event.time.unix_timestamp_nanos() / 1000;
    proto::AuditEvent {
        // The configuration event's own id: catching up twice stores it once.
        event_id: event.id.to_string(),
        time_unix_micros: micros as i64,
        kind: "admin_change".to_owned(),
        source: "control-plane".to_owned(),
        actor: event.actor.clone(),
        outcome: "applied".to_owned(),
        summary: format!(
            "{} {} (revision {}): {}",
            event.payload.type_name(),
            event.aggregate,
            event.sequence,
            event.payload.summary()
        ),
        snapshot_version: event.sequence,
        ..Default::default()
    }
}

/// An event the control plane itself records (vault changes, refused admin calls).
pub fn local_event(
    kind: &str,
    actor: &str,
    outcome: &str,
    reason: &str,
    summary: String,
) -> proto::AuditEvent {
    let now = time::OffsetDateTime::now_utc();
    proto::AuditEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        time_unix_micros: (now.unix_timestamp_nanos() / 1000) as i64,
        kind: kind.to_owned(),
        source: "control-plane".to_owned(),
        actor: actor.to_owned(),
        outcome: outcome.to_owned(),
        reason: reason.to_owned(),
        summary,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u128, actor: &str) -> proto::AuditEvent {
        proto::AuditEvent {
            event_id: uuid::Uuid::from_u128(id).to_string(),
            time_unix_micros: 1_000 + id as i64,
            kind: "mcp_request".to_owned(),
            source: "node-1".to_owned(),
            actor: actor.to_owned(),
            server: "github".to_owned(),
            tool: "list_prs".to_owned(),
            outcome: "completed".to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn stores_once_and_chains() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let log = AuditLog::open(&db).unwrap();
        assert_eq!(
            log.append(&[event(1, "alice"), event(2, "bob")]).unwrap(),
            (2, 0)
        );
        assert_eq!(
            log.append(&[event(2, "bob"), event(3, "carol"), event(3, "carol")])
                .unwrap(),
            (1, 2)
        );
        let verified = log.verify().unwrap();
        assert!(verified.intact);
        assert_eq!(verified.records_checked, 3);
        let page = log
            .query(&proto::AuditQuery {
                actor: "bob".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page.records.len(), 1);
        assert_eq!(page.records[0].sequence, 2);
        // Reopening continues the chain.
        drop(log);
        let log = AuditLog::open(&db).unwrap();
        log.append(&[event(4, "dave")]).unwrap();
        assert!(log.verify().unwrap().intact);
    }

    /// The records of the block holding `sequence`, changed by `change` and stored back.
    fn rewrite_block(
        tree: &sled::Tree,
        sequence: u64,
        change: impl FnOnce(&mut Vec<StoredRecord>),
    ) {
        let (key, value) = tree
            .range(..=sequence.to_be_bytes())
            .next_back()
            .unwrap()
            .unwrap();
        let (mut records, problem) = decode_block(&value);
        assert_eq!(problem, None);
        change(&mut records);
        tree.insert(key, encode_block(&records)).unwrap();
    }

    /// Found by the `audit_record` fuzz target (tests/fuzz/regressions/audit_record/): a
    /// record stored under the sequence number u64::MAX made `verify` overflow, and
    /// `append` would have wrapped to sequence 0, before every other record.
    #[test]
    fn a_record_at_the_last_sequence_number_is_reported_not_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let log = AuditLog::open(&db).unwrap();
        log.append(&[event(1, "alice")]).unwrap();
        let tree = db.open_tree(BLOCKS_TREE).unwrap();
        let (mut records, _) = decode_block(&tree.get(1u64.to_be_bytes()).unwrap().unwrap());
        records[0].sequence = u64::MAX;
        tree.insert(u64::MAX.to_be_bytes(), encode_block(&records))
            .unwrap();
        let report = log.verify().unwrap();
        assert!(!report.intact);
        assert_eq!(report.records_checked, 2);
        let log = AuditLog::open(&db).unwrap();
        assert!(matches!(
            log.append(&[event(2, "bob")]),
            Err(AuditError::Storage(_))
        ));
        assert!(tree.get(0u64.to_be_bytes()).unwrap().is_none());
    }

    #[test]
    fn blocks_split_and_queries_page_across_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let log = AuditLog::open(&db).unwrap();
        let total = BLOCK_RECORDS as u128 * 2 + 7;
        log.append(&(1..=total).map(|i| event(i, "alice")).collect::<Vec<_>>())
            .unwrap();
        log.append(&[event(total + 1, "bob")]).unwrap();
        assert_eq!(db.open_tree(BLOCKS_TREE).unwrap().len(), 4);
        let verified = log.verify().unwrap();
        assert!(verified.intact, "{:?}", verified.problems);
        assert_eq!(verified.records_checked, total as u64 + 1);
        let mut after = 0;
        let mut seen = Vec::new();
        loop {
            let page = log
                .query(&proto::AuditQuery {
                    after_sequence: after,
                    limit: 1000,
                    ..Default::default()
                })
                .unwrap();
            seen.extend(page.records.iter().map(|record| record.sequence));
            if page.next_after_sequence == 0 {
                break;
            }
            after = page.next_after_sequence;
        }
        assert_eq!(seen, (1..=total as u64 + 1).collect::<Vec<_>>());
        // A cursor in the middle of a block starts right after it.
        let page = log
            .query(&proto::AuditQuery {
                after_sequence: BLOCK_RECORDS as u64 + 3,
                limit: 2,
                ..Default::default()
            })
            .unwrap();
        let sequences: Vec<u64> = page.records.iter().map(|record| record.sequence).collect();
        assert_eq!(
            sequences,
            vec![BLOCK_RECORDS as u64 + 4, BLOCK_RECORDS as u64 + 5]
        );
        assert_eq!(log.last_sequence(), total as u64 + 1);
    }

    #[test]
    fn a_trail_stored_one_record_per_key_moves_into_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let legacy = db.open_tree(LEGACY_TREE).unwrap();
        let mut previous = [0u8; 32];
        let mut hashes = Vec::new();
        for i in 1..=3u64 {
            let bytes = event(i as u128, "alice").encode_to_vec();
            let hash = chain_hash(&previous, &bytes);
            let mut value = previous.to_vec();
            value.extend_from_slice(&hash);
            value.extend_from_slice(&bytes);
            legacy.insert(i.to_be_bytes(), value).unwrap();
            hashes.push(hex::encode(hash));
            previous = hash;
        }
        drop(legacy);
        let log = AuditLog::open(&db).unwrap();
        assert!(
            !db.tree_names()
                .iter()
                .any(|name| name == LEGACY_TREE.as_bytes())
        );
        log.append(&[event(4, "bob")]).unwrap();
        let verified = log.verify().unwrap();
        assert!(verified.intact, "{:?}", verified.problems);
        assert_eq!(verified.records_checked, 4);
        let page = log.query(&proto::AuditQuery::default()).unwrap();
        let stored: Vec<String> = page.records[..3].iter().map(|r| r.hash.clone()).collect();
        assert_eq!(stored, hashes);
    }

    #[test]
    fn refuses_a_bad_batch_whole() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let log = AuditLog::open(&db).unwrap();
        let mut bad = event(2, "bob");
        bad.kind = "nope".into();
        assert!(matches!(
            log.append(&[event(1, "a"), bad]),
            Err(AuditError::Invalid(_))
        ));
        let mut bad = event(3, "bob");
        bad.actor = "a\nb".into();
        assert!(log.append(&[bad]).is_err());
        assert_eq!(log.verify().unwrap().records_checked, 0);
    }

    #[test]
    fn verify_finds_edits_deletions_and_reordering() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let log = AuditLog::open(&db).unwrap();
        log.append(&(1..=8).map(|i| event(i, "alice")).collect::<Vec<_>>())
            .unwrap();
        let tree = db.open_tree(BLOCKS_TREE).unwrap();
        // Edit record 2: change the actor inside the event bytes.
        rewrite_block(&tree, 2, |records| {
            let mut edited = proto::AuditEvent::decode(records[1].event.as_slice()).unwrap();
            edited.actor = "mallory".into();
            records[1].event = edited.encode_to_vec();
        });
        // Delete record 4.
        rewrite_block(&tree, 4, |records| {
            records.remove(3);
        });
        let report = log.verify().unwrap();
        assert!(!report.intact);
        let kinds: Vec<(u64, &str)> = report
            .problems
            .iter()
            .map(|p| (p.sequence, p.kind.as_str()))
            .collect();
        assert_eq!(kinds, vec![(2, "edited"), (4, "missing")]);
        // Swap records 6 and 7 (each moved under the other's sequence number).
        rewrite_block(&tree, 6, |records| {
            // Records 1..=8 minus 4: record 6 is at index 4.
            let (six, seven) = (records[4].clone(), records[5].clone());
            records[4] = StoredRecord {
                sequence: 6,
                ..seven
            };
            records[5] = StoredRecord { sequence: 7, ..six };
        });
        let report = log.verify().unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.kind == "reordered" && p.sequence == 6),
            "{:?}",
            report.problems
        );
    }
}

//! The audit trail: a hash-chained, append-only log of who did what, with which
//! credential, when.
//!
//! Records live in the `audit` tree keyed by sequence number; each value is
//! `prev_hash (32 bytes) || hash (32 bytes) || the prost-encoded event`, where
//! `hash = SHA-256(prev_hash || event bytes)`. Editing, removing or reordering a stored
//! record breaks the chain, and `verify` says where. Event ids are indexed in
//! `audit_ids`, written in the same transaction, so redelivered events are stored once.
//!
//! Admin changes are not copied by a side channel that could drop them: a cursor in the
//! audit tree says up to which configuration event the trail has caught up, and it moves
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
    records: sled::Tree,
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

/// A stored record split into its parts.
struct RecordParts<'a> {
    previous: [u8; 32],
    hash: [u8; 32],
    event: &'a [u8],
}

fn decode_record(sequence: u64, value: &[u8]) -> Result<RecordParts<'_>, String> {
    if value.len() < 64 {
        return Err(format!("record {sequence} is truncated"));
    }
    let mut previous = [0u8; 32];
    let mut hash = [0u8; 32];
    previous.copy_from_slice(&value[..32]);
    hash.copy_from_slice(&value[32..64]);
    Ok(RecordParts {
        previous,
        hash,
        event: &value[64..],
    })
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

impl AuditLog {
    pub fn open(db: &sled::Db) -> Result<Self, AuditError> {
        let records = db.open_tree("audit")?;
        let head = match records.last()? {
            Some((key, value)) => {
                let sequence = u64::from_be_bytes(
                    <[u8; 8]>::try_from(key.as_ref())
                        .map_err(|_| AuditError::Storage("bad audit key".to_owned()))?,
                );
                let hash = decode_record(sequence, &value)
                    .map_err(AuditError::Storage)?
                    .hash;
                Head { sequence, hash }
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
            records,
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
        let mut rows = Vec::with_capacity(fresh.len());
        for event in &fresh {
            let bytes = event.encode_to_vec();
            let next = chain_hash(&hash, &bytes);
            // Only a damaged or tampered last record can be at u64::MAX; wrapping to 0 would
            // store the event before every other record.
            sequence = sequence.checked_add(1).ok_or_else(|| {
                AuditError::Storage("the audit trail's last sequence number is u64::MAX".to_owned())
            })?;
            let mut value = Vec::with_capacity(64 + bytes.len());
            value.extend_from_slice(&hash);
            value.extend_from_slice(&next);
            value.extend_from_slice(&bytes);
            rows.push((
                sequence.to_be_bytes(),
                value,
                event.event_id.as_bytes().to_vec(),
            ));
            hash = next;
        }
        if rows.is_empty() && cursor.is_none() {
            return Ok((0, duplicates));
        }
        (&self.records, &self.ids, &self.meta)
            .transaction(|(records, ids, meta)| {
                for (key, value, id) in &rows {
                    records.insert(&key[..], value.as_slice())?;
                    ids.insert(id.as_slice(), &key[..])?;
                }
                if let Some(cursor) = cursor {
                    meta.insert(CURSOR_KEY, &cursor.to_be_bytes()[..])?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|error| AuditError::Storage(format!("{error:?}")))?;
        self.db.flush()?;
        head.sequence = sequence;
        head.hash = hash;
        Ok((rows.len() as u32, duplicates))
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
        let mut records = Vec::new();
        let mut last_scanned = query.after_sequence;
        let mut exhausted = true;
        for (scanned, entry) in self
            .records
            .range((query.after_sequence.saturating_add(1)).to_be_bytes()..)
            .enumerate()
        {
            if records.len() >= limit || scanned >= MAX_SCAN_PER_PAGE {
                exhausted = false;
                break;
            }
            let (key, value) = entry?;
            let sequence = u64::from_be_bytes(
                <[u8; 8]>::try_from(key.as_ref())
                    .map_err(|_| AuditError::Storage("bad audit key".to_owned()))?,
            );
            last_scanned = sequence;
            let parts = decode_record(sequence, &value).map_err(AuditError::Storage)?;
            let hash = parts.hash;
            let event = proto::AuditEvent::decode(parts.event)
                .map_err(|error| AuditError::Storage(error.to_string()))?;
            if matches(query, &event) {
                records.push(proto::AuditRecord {
                    sequence,
                    event: Some(event),
                    hash: hex::encode(hash),
                });
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
        for entry in self.records.iter() {
            let (key, value) = entry?;
            checked += 1;
            let Ok(key) = <[u8; 8]>::try_from(key.as_ref()) else {
                problems.push(proto::AuditProblem {
                    sequence: 0,
                    kind: "undecodable".to_owned(),
                    detail: "a key is not a sequence number".to_owned(),
                });
                continue;
            };
            let sequence = u64::from_be_bytes(key);
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
            match decode_record(sequence, &value) {
                Err(detail) => problems.push(proto::AuditProblem {
                    sequence,
                    kind: "undecodable".to_owned(),
                    detail,
                }),
                Ok(RecordParts {
                    previous,
                    hash,
                    event,
                }) => {
                    if chain_hash(&previous, event) != hash {
                        problems.push(proto::AuditProblem {
                            sequence,
                            kind: "edited".to_owned(),
                            detail: "the record does not match its hash".to_owned(),
                        });
                    } else if previous != expected_previous && sequence == expected_sequence {
                        problems.push(proto::AuditProblem {
                            sequence,
                            kind: "reordered".to_owned(),
                            detail: "the record does not follow the one before it".to_owned(),
                        });
                    }
                    expected_previous = hash;
                }
            }
            // A tampered key may be u64::MAX (then it is the last one).
            expected_sequence = sequence.saturating_add(1);
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

    /// Found by the `audit_record` fuzz target (tests/fuzz/regressions/audit_record/): a
    /// record stored under the key u64::MAX made `verify` overflow, and `append` would
    /// have wrapped to sequence 0, before every other record.
    #[test]
    fn a_record_at_the_last_sequence_number_is_reported_not_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let log = AuditLog::open(&db).unwrap();
        log.append(&[event(1, "alice")]).unwrap();
        let tree = db.open_tree("audit").unwrap();
        let first = tree.get(1u64.to_be_bytes()).unwrap().unwrap();
        tree.insert(u64::MAX.to_be_bytes(), first).unwrap();
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
        let tree = db.open_tree("audit").unwrap();
        // Edit record 2: change the actor inside the event bytes.
        let value = tree.get(2u64.to_be_bytes()).unwrap().unwrap();
        let parts = decode_record(2, &value).unwrap();
        let mut edited = proto::AuditEvent::decode(parts.event).unwrap();
        edited.actor = "mallory".into();
        let mut forged = parts.previous.to_vec();
        forged.extend_from_slice(&parts.hash);
        forged.extend_from_slice(&edited.encode_to_vec());
        tree.insert(2u64.to_be_bytes(), forged).unwrap();
        // Delete record 4.
        tree.remove(4u64.to_be_bytes()).unwrap();
        let report = log.verify().unwrap();
        assert!(!report.intact);
        let kinds: Vec<(u64, &str)> = report
            .problems
            .iter()
            .map(|p| (p.sequence, p.kind.as_str()))
            .collect();
        assert_eq!(kinds, vec![(2, "edited"), (4, "missing")]);
        // Swap records 6 and 7 (each moved under the other's sequence number).
        let six = tree.get(6u64.to_be_bytes()).unwrap().unwrap();
        let seven = tree.get(7u64.to_be_bytes()).unwrap().unwrap();
        tree.insert(6u64.to_be_bytes(), seven).unwrap();
        tree.insert(7u64.to_be_bytes(), six).unwrap();
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

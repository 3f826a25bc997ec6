//! `audit_record`: audit events on their way from a node to the control plane's trail.
//!
//! A node turns each request record into an event (`portcullis_data_plane::audit::event::
//! from_record`) and spools it in a frame; the control plane validates and stores what the
//! node delivers (`portcullis_control_plane::audit`). Inputs are request records with
//! hostile field values (names from URL paths and bodies, claims of callers), events decoded
//! from arbitrary protobuf or built from chosen values, and stored records that may have
//! been tampered with (arbitrary keys and values in the `audit_blocks` tree).
//!
//! Nothing may panic: not validation, not opening a damaged trail, not appending, querying
//! or verifying it. Every event a node makes from a record fits a spool frame and passes
//! the control plane's validation (else delivery would stall on it for ever). On a clean
//! trail, appending accepts a batch exactly when every event validates, stores each new
//! event id once, and leaves a chain that verifies; queries return records in order, after
//! the cursor, within the limit, matching the filter.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use arbitrary::Unstructured;
use portcullis_control_plane::audit::{
    AuditLog, BLOCKS_TREE, KINDS, StoredRecord, encode_block, local_event, validate,
};
use portcullis_data_plane::audit::event::from_record;
use portcullis_data_plane::audit::spool::{MAX_PAYLOAD_BYTES, encode_frame};
use portcullis_data_plane::record::{Outcome, RequestRecord};
use portcullis_proto::v1 as proto;
use portcullis_shared::error::ErrorCode;
use prost::Message;

use crate::fuzz::{bounded_string, pick};

/// One scratch database per process; each input starts from empty trees.
fn database() -> &'static sled::Db {
    static DATABASE: OnceLock<sled::Db> = OnceLock::new();
    DATABASE.get_or_init(|| {
        sled::Config::new()
            .temporary(true)
            .flush_every_ms(None)
            .open()
            .expect("a temporary sled database opens")
    })
}

/// A damaged or tampered stored block: raw key and value bytes of the `audit_blocks` tree.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

pub fn fuzz(data: &[u8]) {
    let mut input = Unstructured::new(data);
    let mut events = Vec::new();
    for _ in 0..input.int_in_range(0..=6u8).unwrap_or(0) {
        events.push(if input.ratio(1, 3).unwrap_or(false) {
            node_event(&record_from(&mut input))
        } else {
            event_from(&mut input)
        });
    }
    let mut raw_records = Vec::new();
    if input.ratio(1, 4).unwrap_or(false) {
        for _ in 0..input.int_in_range(1..=4u8).unwrap_or(1) {
            let key = if input.ratio(3, 4).unwrap_or(true) {
                input.arbitrary::<u64>().unwrap_or(0).to_be_bytes().to_vec()
            } else {
                let length = input.int_in_range(0..=12usize).unwrap_or(0);
                input.bytes(length).unwrap_or_default().to_vec()
            };
            let value = if input.ratio(1, 2).unwrap_or(false) {
                let length = input.int_in_range(0..=160usize).unwrap_or(0);
                input.bytes(length).unwrap_or_default().to_vec()
            } else {
                // A well-formed block whose records may lie about their place in the chain.
                let mut records = Vec::new();
                for _ in 0..input.int_in_range(0..=3u8).unwrap_or(0) {
                    let length = input.int_in_range(0..=64usize).unwrap_or(0);
                    records.push(StoredRecord {
                        sequence: input.arbitrary().unwrap_or(0),
                        previous: input.arbitrary().unwrap_or([0; 32]),
                        hash: input.arbitrary().unwrap_or([0; 32]),
                        event: input.bytes(length).unwrap_or_default().to_vec(),
                    });
                }
                encode_block(&records)
            };
            raw_records.push(RawRecord { key, value });
        }
    }
    let query = if input.ratio(1, 2).unwrap_or(false) {
        let length = input.int_in_range(0..=64usize).unwrap_or(0);
        proto::AuditQuery::decode(input.bytes(length).unwrap_or_default()).unwrap_or_default()
    } else {
        proto::AuditQuery {
            actor: pick(&mut input, &["", "alice", "bob"]).to_string(),
            kind: pick(&mut input, &["", "mcp_request", "auth_failure"]).to_string(),
            after_sequence: input.int_in_range(0..=4u64).unwrap_or(0),
            limit: input.int_in_range(0..=3u32).unwrap_or(0),
            ..Default::default()
        }
    };
    check_trail(&events, &raw_records, &query);
}

/// A request record as a node may finish it: names from the URL path and the body, the
/// caller's claims, at any length and with any characters.
pub fn record_from(input: &mut Unstructured<'_>) -> RequestRecord {
    let text = |input: &mut Unstructured<'_>| {
        let max = *pick(input, &[16usize, 300, 2000]);
        bounded_string(input, max)
    };
    let server = text(input);
    let caller = text(input);
    let caller_email = input.ratio(1, 2).unwrap_or(false).then(|| text(input));
    let credential_id = input.ratio(1, 4).unwrap_or(false).then(|| text(input));
    let names = |input: &mut Unstructured<'_>| {
        (0..input.int_in_range(0..=8u8).unwrap_or(0))
            .map(|_| text(input))
            .collect::<Vec<_>>()
    };
    let jsonrpc_methods = names(input);
    let tool_names = names(input);
    RequestRecord {
        request_id: uuid::Uuid::from_u128(input.arbitrary().unwrap_or(0)),
        node_id: text(input).into(),
        started_at_unix_ms: *pick(input, &[1_800_000_000_000, 0, u64::MAX]),
        snapshot_version: input.arbitrary().unwrap_or(None),
        server,
        http_method: "POST".to_owned(),
        jsonrpc_methods,
        tool_names,
        caller,
        caller_email,
        caller_verified: input.arbitrary().unwrap_or(false),
        agent_auth_rejection: *pick(input, &[None, Some("expired"), Some("bad_signature")]),
        caller_presented_credential: input.arbitrary().unwrap_or(false),
        app_auth_kind: *pick(
            input,
            &[
                None,
                Some("bearer"),
                Some("oauth_authorization"),
                Some("passthrough"),
            ],
        ),
        outbound_headers: Vec::new(),
        credential_id,
        caller_credential_forwarded: input.arbitrary().unwrap_or(false),
        audit_unavailable: false,
        outcome: *pick(
            input,
            &[
                Outcome::Completed,
                Outcome::Rejected,
                Outcome::UpstreamFailed,
                Outcome::UpstreamStreamFailed,
                Outcome::ClientDisconnected,
            ],
        ),
        error_code: *pick(
            input,
            &[
                None,
                Some(ErrorCode::Unauthenticated),
                Some(ErrorCode::UpstreamTimeout),
            ],
        ),
        status: input.arbitrary().unwrap_or(200),
        upstream_status: input.arbitrary().unwrap_or(None),
        response_head_ms: 0,
        total_ms: 0,
        total_micros: input.arbitrary().unwrap_or(0),
    }
}

/// The event a node spools for `record`: it must fit a spool frame and pass the control
/// plane's validation.
pub fn node_event(record: &RequestRecord) -> proto::AuditEvent {
    let event = from_record(record);
    if let Err(error) = validate(&event) {
        panic!("the control plane refuses a node's event ({error}): {event:?}");
    }
    let payload = event.encode_to_vec();
    assert!(
        payload.len() <= MAX_PAYLOAD_BYTES,
        "a node's event takes {} bytes, more than a spool frame holds",
        payload.len()
    );
    encode_frame(&payload).expect("a node's event fits a spool frame");
    event
}

/// An audit event: decoded from raw protobuf, or built from values around the rules.
pub fn event_from(input: &mut Unstructured<'_>) -> proto::AuditEvent {
    if input.ratio(1, 3).unwrap_or(false) {
        let length = input.int_in_range(0..=200usize).unwrap_or(0);
        return proto::AuditEvent::decode(input.bytes(length).unwrap_or_default())
            .unwrap_or_default();
    }
    let id = input.int_in_range(1..=8u128).unwrap_or(1);
    let mut event = local_event(
        pick::<&str>(
            input,
            &["mcp_request", "admin_change", "auth_failure", "nope"],
        ),
        pick::<&str>(input, &["alice", "bob", "a\nb", ""]),
        pick::<&str>(input, &["completed", "rejected"]),
        "",
        bounded_string(input, 64),
    );
    event.event_id = pick(
        input,
        &[
            uuid::Uuid::from_u128(id).to_string(),
            uuid::Uuid::from_u128(id).simple().to_string(),
            "not-a-uuid".to_owned(),
        ],
    )
    .clone();
    event.time_unix_micros = *pick(input, &[1_000 + id as i64, 0, -1, i64::MAX]);
    event.server = bounded_string(input, 32);
    if input.ratio(1, 8).unwrap_or(false) {
        event.summary = "s".repeat(4097);
    }
    event
}

fn clear_trees(db: &sled::Db) {
    for name in [BLOCKS_TREE, "audit_ids", "audit_meta"] {
        db.open_tree(name)
            .and_then(|tree| tree.clear())
            .expect("a scratch tree clears");
    }
}

pub fn check_trail(
    events: &[proto::AuditEvent],
    raw_records: &[RawRecord],
    query: &proto::AuditQuery,
) {
    let db = database();
    clear_trees(db);
    let records = db.open_tree(BLOCKS_TREE).expect("the audit tree opens");
    for raw in raw_records {
        records
            .insert(raw.key.as_slice(), raw.value.as_slice())
            .expect("a scratch insert");
    }
    let log = match AuditLog::open(db) {
        Ok(log) => log,
        // A trail whose last key is not a sequence number cannot be continued; saying so is
        // the right answer.
        Err(_) => return,
    };
    let clean = raw_records.is_empty();
    let before = log.verify().expect("verify reads the trail");
    if clean {
        assert!(before.intact && before.records_checked == 0);
    }

    let all_valid = events.iter().all(|event| validate(event).is_ok());
    let appended = log.append(events);
    if clean {
        match &appended {
            Ok((stored, duplicates)) => {
                assert!(all_valid, "a batch with an invalid event was stored");
                let distinct: BTreeSet<&str> =
                    events.iter().map(|event| event.event_id.as_str()).collect();
                assert_eq!(*stored as usize, distinct.len());
                assert_eq!((*stored + *duplicates) as usize, events.len());
                let report = log.verify().expect("verify reads the trail");
                assert!(report.intact, "a clean trail breaks: {:?}", report.problems);
                assert_eq!(report.records_checked, u64::from(*stored));
                // Appending the same batch again stores nothing.
                assert_eq!(log.append(events).ok(), Some((0, events.len() as u32)));
            }
            Err(_) => assert!(!all_valid, "a valid batch was refused: {appended:?}"),
        }
    }

    if let Ok(page) = log.query(query) {
        let limit = match query.limit {
            0 => 100,
            limit => (limit as usize).min(1000),
        };
        assert!(page.records.len() <= limit);
        let mut previous = query.after_sequence;
        for record in &page.records {
            assert!(
                record.sequence > previous,
                "records in order, after the cursor"
            );
            previous = record.sequence;
            let event = record.event.as_ref().expect("a record holds its event");
            for (wanted, actual) in [
                (&query.actor, &event.actor),
                (&query.server, &event.server),
                (&query.tool, &event.tool),
                (&query.outcome, &event.outcome),
                (&query.kind, &event.kind),
            ] {
                assert!(
                    wanted.is_empty() || wanted == actual,
                    "a record outside the filter"
                );
            }
            if clean {
                assert!(KINDS.contains(&event.kind.as_str()));
            }
        }
    }
    let _ = log.verify().expect("verify reads the trail");
}

//! Audit ingestion benchmark: events per second the control plane's trail stores
//! (validated, deduplicated by id, hash-chained, indexed, flushed), in batches as nodes
//! deliver them. Prints its figures.
//!
//! `cargo bench -p portcullis-control-plane --bench audit_ingest`

use std::time::Instant;

use portcullis_control_plane::audit::AuditLog;
use portcullis_proto::v1 as proto;

/// The allocator of the control-plane binary, so the figures are theirs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn event(index: u64) -> proto::AuditEvent {
    proto::AuditEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        time_unix_micros: 1_700_000_000_000_000 + index as i64,
        kind: "mcp_request".into(),
        source: "node-1".into(),
        actor: format!("user{}@example.com", index % 100),
        actor_email: format!("user{}@example.com", index % 100),
        server: "github".into(),
        mcp_method: "tools/call".into(),
        tool: "list_pull_requests".into(),
        outcome: "completed".into(),
        http_status: 200,
        upstream_status: 200,
        credential_kind: "oauth_authorization".into(),
        credential_id: "github".into(),
        caller_credential_stripped: true,
        snapshot_version: 42,
        latency_micros: 1234,
        request_id: uuid::Uuid::now_v7().to_string(),
        ..Default::default()
    }
}

fn direct(total: u64, batch: u64) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new()
        .path(dir.path())
        .mode(sled::Mode::HighThroughput)
        .open()
        .unwrap();
    let log = AuditLog::open(&db).unwrap();
    let batches: Vec<Vec<proto::AuditEvent>> = (0..total / batch)
        .map(|b| (0..batch).map(|i| event(b * batch + i)).collect())
        .collect();
    let started = Instant::now();
    for events in &batches {
        log.append(events).unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "audit ingest, direct, batches of {batch}: {total} events in {:.2}s = {:.0} events/s (each batch flushed)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    assert!(log.verify().unwrap().intact);
}

fn main() {
    direct(200_000, 1000);
    direct(50_000, 100);
}

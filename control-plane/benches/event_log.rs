//! Event log benchmark: append throughput (flushed per write, and batched by concurrent
//! writers through group commit) and replay time for large logs. Prints its figures.
//!
//! `cargo bench -p portcullis-control-plane --bench event_log`
//! Replay sizes: `PORTCULLIS_BENCH_REPLAY=100000,1000000` (the default).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use portcullis_control_plane::commands::{Command, OrgValue};
use portcullis_control_plane::engine::{Engine, EngineOptions};
use portcullis_control_plane::events::{AggregateKey, AggregateKind, Event, EventPayload};
use portcullis_control_plane::secrets::MasterKey;
use portcullis_control_plane::store::{AppendBatch, EventStore};
use portcullis_shared::names::CatalogId;
use portcullis_shared::secret::SecretValue;
use time::OffsetDateTime;
use uuid::Uuid;

fn master_key() -> MasterKey {
    MasterKey::from_text(&base64::engine::general_purpose::STANDARD.encode([9u8; 32])).unwrap()
}

fn put(id: usize) -> Command {
    Command::PutCredential {
        id: CatalogId::parse(&format!("credential-{}", id % 1000)).unwrap(),
        description: format!("write {id}"),
        org_value: OrgValue::Set(SecretValue::new(format!("value-{id}"))),
        expected_revision: None,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn flushed_per_write(count: usize) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), master_key(), None, EngineOptions::default()).unwrap();
    let mut latencies = Vec::with_capacity(count);
    let started = Instant::now();
    for id in 0..count {
        let begin = Instant::now();
        engine.execute("bench", vec![put(id)], None).await.unwrap();
        latencies.push(begin.elapsed());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    println!(
        "append, one writer, flushed per write: {count} writes in {:.2}s = {:.0} writes/s (p50 {:.2} ms, p99 {:.2} ms)",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );
}

async fn batched(writers: usize, per_writer: usize) {
    let dir = tempfile::tempdir().unwrap();
    let engine =
        Arc::new(Engine::open(dir.path(), master_key(), None, EngineOptions::default()).unwrap());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            for index in 0..per_writer {
                engine
                    .execute("bench", vec![put(writer * per_writer + index)], None)
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let total = writers * per_writer;
    println!(
        "append, {writers} concurrent writers (group commit): {total} writes in {:.2}s = {:.0} writes/s, every write flushed before its reply",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
    );
}

/// Writes `count` events straight into the store, in large batches, then replays them.
fn replay(count: u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = EventStore::open(dir.path()).unwrap();
    let secrets =
        portcullis_control_plane::secrets::SecretStore::load(store.db(), master_key(), None)
            .unwrap();
    let (sealed, wrapped) = secrets.seal(&SecretValue::new("shared-value")).unwrap();
    let write_started = Instant::now();
    let mut written_bytes = 0usize;
    let mut sequence = 0u64;
    let mut revisions = std::collections::HashMap::new();
    while sequence < count {
        let mut batch = AppendBatch::default();
        if sequence == 0 {
            batch.new_keys.push((sealed.id, wrapped.clone()));
        }
        for _ in 0..1000.min(count - sequence) {
            sequence += 1;
            let id = CatalogId::parse(&format!("credential-{}", sequence % 1000)).unwrap();
            let aggregate = AggregateKey::catalog(AggregateKind::Credential, &id);
            let revision = revisions.entry(aggregate.clone()).or_insert(0u64);
            *revision += 1;
            let event = Event {
                id: Uuid::now_v7(),
                sequence,
                time: OffsetDateTime::now_utc(),
                actor: "bench".into(),
                aggregate,
                aggregate_revision: *revision,
                payload: EventPayload::CredentialPut {
                    id,
                    description: format!("write {sequence}"),
                    org_value: Some(sealed.clone()),
                },
            };
            written_bytes += serde_json::to_vec(&event).unwrap().len();
            batch.events.push(event);
        }
        store.append(&batch).unwrap();
    }
    let write_elapsed = write_started.elapsed();
    let started = Instant::now();
    let state = store.load_state(None).unwrap();
    let full = started.elapsed();
    assert_eq!(state.revision, count);
    // With a state snapshot 1000 events before the end, as the engine keeps them.
    let near_end = store.load_state(Some(count - 1000)).unwrap();
    store.write_state_snapshot(&near_end, 3).unwrap();
    let started = Instant::now();
    let state = store.load_state(None).unwrap();
    let with_snapshot = started.elapsed();
    assert_eq!(state.revision, count);
    println!(
        "replay {count} events (avg {} bytes each; written in batches of 1000 at {:.0} events/s): full replay {:.2}s ({:.0} events/s), from a state snapshot plus 1000 events {:.1} ms",
        written_bytes as u64 / count,
        count as f64 / write_elapsed.as_secs_f64(),
        full.as_secs_f64(),
        count as f64 / full.as_secs_f64(),
        with_snapshot.as_secs_f64() * 1e3,
    );
}

fn main() {
    // `cargo bench` passes --bench; other harness flags are ignored.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(flushed_per_write(500));
    runtime.block_on(batched(64, 200));
    let sizes =
        std::env::var("PORTCULLIS_BENCH_REPLAY").unwrap_or_else(|_| "100000,1000000".into());
    for size in sizes
        .split(',')
        .filter_map(|s| s.trim().parse::<u64>().ok())
    {
        replay(size);
    }
}

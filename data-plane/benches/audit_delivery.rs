//! Audit delivery: events per second from a node's spool into the control plane's trail,
//! over the real path: the spool read back from disk, `AuditIngest.Deliver` over gRPC on
//! loopback (node token), the control plane validating, deduplicating by id, hash-chaining
//! and flushing each batch. A backlog of spooled events (as after a control-plane outage)
//! is drained by the node's delivery task; the figure is backlog / time to empty.
//!
//! The same with four nodes delivering at once (a fleet catching up after an outage), in
//! the same process, sharing the cores with the control plane. Also prints the append
//! rate of the spool itself (`write` per event, group fsync).
//!
//! `cargo bench -p portcullis-data-plane --bench audit_delivery [events]` (default 200000).

use std::time::{Duration, Instant};

use portcullis_control_plane::engine::EngineOptions;
use portcullis_control_plane::secrets::MasterKey;
use portcullis_control_plane::server::{ControlPlane, ControlPlaneConfig};
use portcullis_data_plane::audit::{
    Delivery, DeliveryOptions, FsyncPolicy, FullPolicy, Spool, SpoolOptions,
};
use portcullis_proto::v1 as proto;
use portcullis_shared::secret::SecretValue;
use prost::Message;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The allocator of the binaries, so the figures are theirs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TIME_LIMIT: Duration = Duration::from_secs(600);
const NODE_TOKEN: &str = "bench-node-token";

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
        credential_kind: "bearer".into(),
        credential_id: "github".into(),
        caller_credential_stripped: true,
        snapshot_version: 42,
        latency_micros: 1234,
        request_id: uuid::Uuid::now_v7().to_string(),
        ..Default::default()
    }
}

/// A control plane serving on a loopback port, its data in `folder`; returns its URL.
async fn start_control_plane(folder: &std::path::Path) -> String {
    std::fs::create_dir_all(folder).unwrap();
    let access_file = folder.join("access.yaml");
    std::fs::write(
        &access_file,
        format!(
            "tokens:\n  - name: bench-nodes\n    role: node\n    sha256: {}\n",
            portcullis_shared::crypto::sha256_hex(NODE_TOKEN.as_bytes())
        ),
    )
    .unwrap();
    let config = ControlPlaneConfig {
        data_dir: folder.join("control-plane"),
        access_file,
        engine: EngineOptions::default(),
        tls: None,
    };
    let master_key = MasterKey::from_text(&"2a".repeat(32)).unwrap();
    let control_plane = ControlPlane::open(&config, master_key, None).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        control_plane
            .serve(listener, std::future::pending())
            .await
            .unwrap()
    });
    format!("http://{address}")
}

fn main() {
    let events: u64 = std::env::args()
        .skip(1)
        .filter(|argument| !argument.starts_with('-'))
        .find_map(|argument| argument.parse().ok())
        .unwrap_or(200_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(TIME_LIMIT, run(events))
            .await
            .expect("the benchmark exceeded its time limit");
    });
}

/// A spool holding `events` events, appended as requests would (one write each, group
/// fsync) from 32 tasks; prints the append rate when `report`.
async fn filled_spool(dir: std::path::PathBuf, events: u64, report: bool) -> Spool {
    let (spool, _) = Spool::open(SpoolOptions {
        dir,
        max_bytes: 1 << 30,
        fsync: FsyncPolicy::Always,
        when_full: FullPolicy::Refuse,
    })
    .unwrap();
    let started = Instant::now();
    let writers: Vec<_> = (0..32)
        .map(|writer| {
            let spool = spool.clone();
            tokio::spawn(async move {
                for index in (writer..events).step_by(32) {
                    let payload = event(index).encode_to_vec();
                    let position = spool.append(&payload, spool.reserve().unwrap()).unwrap();
                    spool.wait_durable(position).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let elapsed = started.elapsed();
    let (depth, bytes) = spool.depth();
    if report {
        println!(
            "spool append, 32 writers, fsync always: {depth} events ({:.1} MiB) in {:.2}s = {:.0} events/s",
            bytes as f64 / (1 << 20) as f64,
            elapsed.as_secs_f64(),
            depth as f64 / elapsed.as_secs_f64()
        );
    }
    spool
}

/// Drains every spool into the control plane at `url` at once, one delivery task per
/// spool (one node each); returns the events stored and the time taken.
async fn drain(url: &str, spools: &[Spool]) -> (u64, Duration) {
    let stop = CancellationToken::new();
    let mut statuses = Vec::new();
    let mut tasks = Vec::new();
    let started = Instant::now();
    for spool in spools {
        let delivery = Delivery::new(
            spool.clone(),
            DeliveryOptions::new(
                portcullis_data_plane::config::ControlPlaneConfig::with_token(
                    url.parse().unwrap(),
                    SecretValue::new(NODE_TOKEN.to_owned()),
                ),
            ),
        )
        .unwrap();
        statuses.push(delivery.status());
        tasks.push(tokio::spawn(
            delivery.run(CancellationToken::new(), stop.clone()),
        ));
    }
    while spools.iter().any(|spool| spool.depth().0 > 0) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    let delivered = statuses
        .iter()
        .map(|status| {
            status
                .delivered_events
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    (delivered, elapsed)
}

async fn run(events: u64) {
    let folder = tempfile::tempdir().unwrap();
    let spool = filled_spool(folder.path().join("spool"), events, true).await;
    let url = start_control_plane(&folder.path().join("one")).await;
    let (delivered, elapsed) = drain(&url, &[spool]).await;
    assert_eq!(delivered, events, "every spooled event is stored once");
    println!(
        "delivery, 1 node: spool -> Deliver (gRPC, batches of 1000) -> control plane trail: {delivered} events in {:.2}s = {:.0} events/s",
        elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64()
    );

    // A fleet catching up after a control-plane outage: four nodes deliver at once.
    const NODES: u64 = 4;
    let mut spools = Vec::new();
    for node in 0..NODES {
        spools.push(
            filled_spool(
                folder.path().join(format!("spool-{node}")),
                events / NODES,
                false,
            )
            .await,
        );
    }
    let url = start_control_plane(&folder.path().join("fleet")).await;
    let (delivered, elapsed) = drain(&url, &spools).await;
    assert_eq!(
        delivered,
        events / NODES * NODES,
        "every spooled event is stored once"
    );
    println!(
        "delivery, {NODES} nodes at once: {delivered} events in {:.2}s = {:.0} events/s",
        elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64()
    );
}

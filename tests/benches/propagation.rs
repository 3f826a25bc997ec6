//! Propagation benchmark: how long from an acknowledged admin write until the snapshot is
//! applied across the fleet. Prints figures; it is not a timed test.
//!
//! ```sh
//! cargo build --release -p portcullis-control-plane -p portcullis-data-plane --bins
//! cargo bench -p portcullis-tests --bench propagation
//! ```
//!
//! Everything is real except where said: the control plane and two nodes run as release
//! child processes on loopback; each write is a `SetAppAuth` (a new API key for one server),
//! timed from the moment its reply (the durable acknowledgement) arrives.
//!
//! 1. Two real nodes: until each node's `/readyz` reports the write's version (polled every
//!    millisecond, so figures carry up to about 1 ms of polling delay), and until
//!    `FleetStatus` shows both nodes' ACKs.
//! 2. A hundred simulated subscribers: in-process `ConfigDiscovery` streams to the same
//!    control plane with the node token, each ACKing every update as a node would (without
//!    compiling it); timed when the update arrives, with no polling. The two real nodes stay
//!    connected.
//!
//! Writes run one after the other: each waits until the whole fleet has it. Settings:
//! `PORTCULLIS_BENCH_WRITES` (200), `PORTCULLIS_BENCH_SUBSCRIBERS` (100).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::SinkExt;
use portcullis_proto::v1 as proto;
use portcullis_proto::v1::config_discovery_client::ConfigDiscoveryClient;
use portcullis_tests::Gateway;
use portcullis_tests::gateway::servers::{api_key_in_header, server};
use portcullis_tests::gateway::{AdminClient, Node, fleet_node};
use tokio::sync::mpsc;

const WARMUP_WRITES: usize = 10;
const TARGET_P99: Duration = Duration::from_millis(50);
/// How long one write may take to reach the fleet before the benchmark gives up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const READYZ_POLL_INTERVAL: Duration = Duration::from_millis(1);
const SERVER: &str = "bench";

fn setting(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .with_context(|| format!("{name} must be a whole number, got {value:?}")),
        Err(_) => Ok(default),
    }
}

/// Sorted durations and their nearest-rank percentiles.
struct Distribution(Vec<Duration>);

impl Distribution {
    fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Self(samples)
    }

    fn percentile(&self, percent: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((percent / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }

    fn line(&self) -> String {
        format!(
            "p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms   (n = {})",
            millis(self.percentile(50.0)),
            millis(self.percentile(99.0)),
            millis(self.max()),
            self.0.len()
        )
    }
}

fn row(label: &str, distribution: &Distribution) {
    println!("{label:<50} {}", distribution.line());
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// One write: a new API key for the bench server. Returns the revision and when the
/// acknowledgement arrived.
async fn write(
    admin: &mut AdminClient,
    sequence: usize,
) -> anyhow::Result<(u64, Instant, Duration)> {
    let started = Instant::now();
    let reply = admin
        .set_app_auth(proto::SetAppAuthRequest {
            server: SERVER.to_owned(),
            app_auth: Some(proto::AppAuth {
                kind: Some(api_key_in_header(
                    "x-api-key",
                    &format!("bench-key-{sequence}"),
                )),
            }),
            expected_revision: None,
        })
        .await
        .context("SetAppAuth failed")?
        .into_inner();
    let acknowledged = Instant::now();
    Ok((reply.revision, acknowledged, acknowledged - started))
}

/// When `node` first serves `version`, polling `/readyz`.
async fn applied_at(node: &Node, version: u64) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + WRITE_TIMEOUT;
    loop {
        if node
            .snapshot_version()
            .await?
            .is_some_and(|serving| serving >= version)
        {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            bail!("{} did not apply version {version}", node.node_id());
        }
        tokio::time::sleep(READYZ_POLL_INTERVAL).await;
    }
}

/// When `FleetStatus` first shows every real node's ACK of `version`.
async fn acknowledged_in_fleet_status(
    admin: &mut AdminClient,
    node_ids: &[String],
    version: u64,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + WRITE_TIMEOUT;
    loop {
        let reply = admin
            .fleet_status(proto::FleetStatusRequest {})
            .await?
            .into_inner();
        if node_ids.iter().all(|node_id| {
            fleet_node(&reply, node_id).is_some_and(|node| node.applied_version >= version)
        }) {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            bail!("fleet status did not show version {version} on every node");
        }
        tokio::time::sleep(READYZ_POLL_INTERVAL).await;
    }
}

struct RealNodeFigures {
    write_round_trip: Distribution,
    per_node: Distribution,
    slowest_node: Distribution,
    fleet_status: Distribution,
}

async fn measure_real_nodes(
    gateway: &mut Gateway,
    writes: usize,
) -> anyhow::Result<RealNodeFigures> {
    let node_ids: Vec<String> = gateway
        .nodes
        .iter()
        .map(|node| node.node_id().to_owned())
        .collect();
    let mut fleet_admin = gateway.control_plane.admin().await?;
    let mut write_round_trip = Vec::new();
    let mut per_node = Vec::new();
    let mut slowest_node = Vec::new();
    let mut fleet_status = Vec::new();
    for sequence in 0..WARMUP_WRITES + writes {
        let (revision, acknowledged, round_trip) = write(&mut gateway.admin, sequence).await?;
        let (first, second, fleet) = tokio::join!(
            applied_at(&gateway.nodes[0], revision),
            applied_at(&gateway.nodes[1], revision),
            acknowledged_in_fleet_status(&mut fleet_admin, &node_ids, revision),
        );
        let applied = [first?, second?].map(|at| at.saturating_duration_since(acknowledged));
        let fleet = fleet?.saturating_duration_since(acknowledged);
        if sequence < WARMUP_WRITES {
            continue;
        }
        write_round_trip.push(round_trip);
        per_node.extend(applied);
        slowest_node.push(applied.into_iter().max().unwrap_or_default());
        fleet_status.push(fleet);
    }
    Ok(RealNodeFigures {
        write_round_trip: Distribution::new(write_round_trip),
        per_node: Distribution::new(per_node),
        slowest_node: Distribution::new(slowest_node),
        fleet_status: Distribution::new(fleet_status),
    })
}

/// A version arriving at a simulated subscriber.
struct Arrival {
    subscriber: usize,
    version: u64,
    at: Instant,
}

/// One simulated node: hello, then record and ACK every update until the stream ends.
async fn simulated_subscriber(
    control_plane_url: String,
    node_token: String,
    subscriber: usize,
    arrivals: mpsc::UnboundedSender<Arrival>,
) -> anyhow::Result<()> {
    let mut client = ConfigDiscoveryClient::connect(control_plane_url)
        .await
        .context("cannot connect a simulated subscriber")?;
    let (mut replies, outbound) = futures::channel::mpsc::channel::<proto::NodeMessage>(8);
    replies
        .send(proto::NodeMessage {
            message: Some(proto::node_message::Message::Hello(proto::NodeHello {
                node_id: format!("simulated-{subscriber:03}"),
                address: format!("simulated://{subscriber}"),
                last_applied_version: 0,
                software_version: "bench".to_owned(),
            })),
        })
        .await?;
    let mut request = tonic::Request::new(outbound);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {node_token}").parse()?);
    let mut updates = client.stream_snapshots(request).await?.into_inner();
    while let Some(update) = updates.message().await? {
        let at = Instant::now();
        if arrivals
            .send(Arrival {
                subscriber,
                version: update.version,
                at,
            })
            .is_err()
        {
            break;
        }
        replies
            .send(proto::NodeMessage {
                message: Some(proto::node_message::Message::Ack(proto::SnapshotAck {
                    version: update.version,
                    nonce: update.nonce,
                })),
            })
            .await?;
    }
    Ok(())
}

/// Waits until every subscriber reported `version` or later; returns the arrival times.
async fn wait_for_subscribers(
    arrivals: &mut mpsc::UnboundedReceiver<Arrival>,
    subscribers: usize,
    version: u64,
) -> anyhow::Result<Vec<Instant>> {
    let mut seen: Vec<Option<Instant>> = vec![None; subscribers];
    let mut missing = subscribers;
    let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
    while missing > 0 {
        let arrival = tokio::time::timeout_at(deadline, arrivals.recv())
            .await
            .with_context(|| format!("{missing} subscribers did not receive version {version}"))?
            .context("every simulated subscriber stopped")?;
        if arrival.version >= version && seen[arrival.subscriber].is_none() {
            seen[arrival.subscriber] = Some(arrival.at);
            missing -= 1;
        }
    }
    Ok(seen.into_iter().flatten().collect())
}

struct SubscriberFigures {
    per_subscriber: Distribution,
    all_subscribers: Distribution,
}

async fn measure_simulated_subscribers(
    gateway: &mut Gateway,
    subscribers: usize,
    writes: usize,
) -> anyhow::Result<SubscriberFigures> {
    let (arrivals_sender, mut arrivals) = mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(subscribers);
    for subscriber in 0..subscribers {
        tasks.push(tokio::spawn(simulated_subscriber(
            gateway.control_plane.url(),
            gateway.files.node_token().to_owned(),
            subscriber,
            arrivals_sender.clone(),
        )));
    }
    drop(arrivals_sender);
    let current = gateway.latest_version().await?;
    wait_for_subscribers(&mut arrivals, subscribers, current).await?;

    let mut per_subscriber = Vec::new();
    let mut all_subscribers = Vec::new();
    for sequence in 0..WARMUP_WRITES + writes {
        let (revision, acknowledged, _) = write(&mut gateway.admin, 1_000_000 + sequence).await?;
        let arrived = wait_for_subscribers(&mut arrivals, subscribers, revision).await?;
        if sequence < WARMUP_WRITES {
            continue;
        }
        let delays: Vec<Duration> = arrived
            .iter()
            .map(|at| at.saturating_duration_since(acknowledged))
            .collect();
        all_subscribers.push(delays.iter().copied().max().unwrap_or_default());
        per_subscriber.extend(delays);
    }
    for task in tasks {
        task.abort();
    }
    Ok(SubscriberFigures {
        per_subscriber: Distribution::new(per_subscriber),
        all_subscribers: Distribution::new(all_subscribers),
    })
}

async fn run() -> anyhow::Result<()> {
    let writes = setting("PORTCULLIS_BENCH_WRITES", 200)?;
    let subscribers = setting("PORTCULLIS_BENCH_SUBSCRIBERS", 100)?;
    let mut gateway = Gateway::start(2).await.context(
        "cannot start the gateway; build the binaries for this profile first: \
         cargo build --release -p portcullis-control-plane -p portcullis-data-plane --bins",
    )?;
    // The upstream is never called: only the configuration travels.
    gateway
        .create_server(server(
            SERVER,
            "http://127.0.0.1:9/mcp",
            api_key_in_header("x-api-key", "bench-key-initial"),
        ))
        .await?;

    println!(
        "propagation: {writes} writes per phase after {WARMUP_WRITES} warm-up writes, one at a time"
    );
    let real = measure_real_nodes(&mut gateway, writes).await?;
    println!();
    row(
        "admin write round trip (SetAppAuth, flushed)",
        &real.write_round_trip,
    );
    row("2 real nodes: applied, each node (/readyz)", &real.per_node);
    row(
        "2 real nodes: applied, slowest of the two",
        &real.slowest_node,
    );
    row(
        "2 real nodes: both ACKs visible in FleetStatus",
        &real.fleet_status,
    );

    let simulated = measure_simulated_subscribers(&mut gateway, subscribers, writes).await?;
    row(
        &format!("{subscribers} simulated subscribers: received, each"),
        &simulated.per_subscriber,
    );
    row(
        &format!("{subscribers} simulated subscribers: received by all"),
        &simulated.all_subscribers,
    );
    println!();
    let worst_p99 = [
        real.slowest_node.percentile(99.0),
        simulated.all_subscribers.percentile(99.0),
    ]
    .into_iter()
    .max()
    .unwrap_or_default();
    println!(
        "target: p99 <= {} ms from acknowledgement to the whole fleet: {} (worst p99 {:.2} ms)",
        TARGET_P99.as_millis(),
        if worst_p99 <= TARGET_P99 {
            "met"
        } else {
            "NOT met"
        },
        millis(worst_p99)
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("propagation benchmark failed: {error:?}");
            std::process::ExitCode::FAILURE
        }
    }
}

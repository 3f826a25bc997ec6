//! Gateway overhead: the same JSON-RPC `tools/call` POST (about 1 KiB) sent straight to an
//! upstream, through the node without agent authentication (API key app auth, full
//! pipeline), through the node with Interactive SSO (a gateway access token validated on
//! every request), and through nodes that audit every request into an on-disk spool
//! (`--audit-fsync always`: the response completes after the event is fsynced; `interval`:
//! after it is written), in the same run on loopback. A bare hyper forwarder (`fwd`, on
//! the nodes' cores) shows the floor any proxy built on this HTTP stack pays here, so that
//! what the node's own pipeline adds can be told apart. Prints latency percentiles,
//! throughput and the ratios for three loads: one caller at a time, a moderate fixed rate
//! (open loop: requests leave on schedule whatever the answers do), and concurrent callers
//! (saturation).
//!
//! Two placements, each measured: `shared`, where the load generator, the upstream and the
//! nodes share every core (what a laptop does), and `dedicated`, where the nodes run on a
//! core of their own and the load generator and upstream on another (how a gateway is
//! deployed and benchmarked: its figures are then the gateway's, not the cost of the load
//! generator and the upstream it shares cores with). `dedicated` needs at least 2 cores.
//! The spool lives in a temporary folder (set `TMPDIR` to put it on the disk to measure).
//!
//! Bounded in count and time. Arguments: `[sequential_requests] [concurrent_callers]
//! [requests_per_caller] [fixed_rate_per_second]` (defaults 2000, 64, 1000, 1000), and
//! `--shared` or `--dedicated` to measure one placement only; `--profile=NAME` puts only
//! target NAME under concurrent load, for a profiler to attach to. The numbers mean most
//! in an optimised build; in a debug build only the ratio is worth reading.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use portcullis_data_plane::audit::{AuditRecordSink, FsyncPolicy, FullPolicy, Spool, SpoolOptions};
use portcullis_data_plane::compiled::{CompiledSnapshot, SnapshotSlot};
use portcullis_data_plane::config::ProxyLimits;
use portcullis_data_plane::jwt::{JwksPolicy, JwksRegistry, unix_now};
use portcullis_data_plane::metrics::NodeMetrics;
use portcullis_data_plane::oauth::Issuer;
use portcullis_data_plane::oauth::grant::{Grant, UserIdentity, mint_access_token};
use portcullis_data_plane::record::{RecordSink, RequestRecord, TracingRecordSink};
use portcullis_data_plane::{NodeState, router};
use portcullis_proto::v1 as proto;
use portcullis_shared::snapshot::{SNAPSHOT_SCHEMA_VERSION, Snapshot};
use tokio::net::TcpListener;

/// The allocator of the node binary, so the figures are theirs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WARMUP_REQUESTS: usize = 200;
const TIME_LIMIT: Duration = Duration::from_secs(600);
/// A `tools/call` of about 1 KiB.
static BODY: LazyLock<Bytes> = LazyLock::new(|| {
    let query = "status of the nightly deployment ".repeat(28);
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"search","arguments":{{"q":"{query}"}}}}}}"#
    ))
});

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// What a node without an audit spool does with each record: its request log line (no
/// subscriber is installed here, so the line is built only as far as `tracing` needs to
/// see it is off) and its metrics. The audited nodes do the same, plus the spool.
struct LogAndMetrics(Arc<NodeMetrics>);

impl RecordSink for LogAndMetrics {
    fn record(&self, record: RequestRecord) {
        TracingRecordSink::log(&record);
        self.0.observe(&record);
    }
}

async fn start_upstream() -> SocketAddr {
    let app = Router::new().route(
        "/mcp",
        post(|| async {
            (
                [("content-type", "application/json")],
                r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}]}}"#,
            )
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

/// The floor: the least any proxy built on the same HTTP stack does. A bare hyper
/// forwarder (axum server, hyper-util pooled client with `TCP_NODELAY`) that reads the body,
/// sets the API key and streams the answer back, with no routing, firewall, inspection or
/// record. What the node adds beyond it is the node's own pipeline.
async fn start_forwarder(upstream: SocketAddr) -> SocketAddr {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(connector);
    let target = format!("http://{upstream}/mcp");
    let app = Router::new().route(
        "/mcp",
        post(move |request: axum::extract::Request| {
            let client = client.clone();
            let target = target.clone();
            async move {
                let body = request.into_body().collect().await.unwrap().to_bytes();
                let forwarded = Request::post(target)
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .header("x-api-key", "bench-api-key")
                    .body(Full::new(body))
                    .unwrap();
                let (parts, body) = client.request(forwarded).await.unwrap().into_parts();
                axum::response::Response::from_parts(parts, axum::body::Body::new(body))
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        tcp.set_nodelay(true).unwrap();
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

fn secret(value: String) -> Option<proto::Secret> {
    Some(proto::Secret {
        value: Some(proto::secret::Value::Plaintext(value)),
    })
}

/// One ES256 signing key and one sealing key, as the control plane generates them.
fn gateway_keys() -> proto::GatewayKeys {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = pair.public_key().as_ref();
    let sealing = portcullis_shared::crypto::random_bytes::<32>().unwrap();
    proto::GatewayKeys {
        signing_keys: vec![proto::SigningKey {
            kid: "sig-bench".to_owned(),
            algorithm: "ES256".to_owned(),
            private_key: secret(STANDARD.encode(pkcs8.as_ref())),
            public_jwk: serde_json::json!({
                "kty": "EC", "crv": "P-256", "kid": "sig-bench", "alg": "ES256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            })
            .to_string(),
            created_at_unix: 0,
            state: proto::GatewayKeyState::Active as i32,
        }],
        sealing_keys: vec![proto::SealingKey {
            kid: "seal-bench".to_owned(),
            key: secret(STANDARD.encode(sealing)),
            created_at_unix: 0,
            state: proto::GatewayKeyState::Active as i32,
        }],
    }
}

fn bench_server(
    name: &str,
    upstream: SocketAddr,
    agent_auth: proto::agent_auth::Mode,
) -> proto::McpServer {
    proto::McpServer {
        name: name.to_owned(),
        upstream_url: format!("http://{upstream}/mcp"),
        agent_auth: Some(proto::AgentAuth {
            mode: Some(agent_auth),
            restricted_inbound_headers: vec!["x-internal-*".to_owned()],
        }),
        app_auth: Some(proto::AppAuth {
            kind: Some(proto::app_auth::Kind::ApiKey(proto::ApiKey {
                key_name: "x-api-key".to_owned(),
                key_value: secret("bench-api-key".to_owned()),
                location: proto::ApiKeyLocation::Header as i32,
            })),
        }),
        ..proto::McpServer::default()
    }
}

/// A node serving `bench` (no agent authentication) and `bench-sso` (Interactive SSO) in
/// front of `upstream`; returns its address and an access token for `bench-sso`. With
/// `audit`, records go to an audit spool in that folder with that fsync policy (nothing
/// delivers it: the spool only grows, well within its bound for a run).
async fn start_node(
    upstream: SocketAddr,
    audit: Option<(FsyncPolicy, std::path::PathBuf)>,
) -> (SocketAddr, String) {
    let snapshot = proto::Snapshot {
        version: 1,
        schema_version: SNAPSHOT_SCHEMA_VERSION,
        servers: vec![
            bench_server(
                "bench",
                upstream,
                proto::agent_auth::Mode::Passthrough(proto::PassthroughAgent::default()),
            ),
            bench_server(
                "bench-sso",
                upstream,
                proto::agent_auth::Mode::Interactive(proto::InteractiveSso {
                    identity_provider: "corp".to_owned(),
                    scopes: vec!["mcp:tools".to_owned()],
                }),
            ),
        ],
        identity_providers: vec![proto::IdentityProvider {
            id: "corp".to_owned(),
            issuer: "https://idp.example.com".to_owned(),
            client_id: "gateway".to_owned(),
            ..proto::IdentityProvider::default()
        }],
        gateway_keys: Some(gateway_keys()),
        ..proto::Snapshot::default()
    };
    let jwks = JwksRegistry::new(JwksPolicy::default()).unwrap();
    let compiled = CompiledSnapshot::compile(Snapshot::try_from(snapshot).unwrap(), &jwks).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let public_url = format!("http://{address}").parse().unwrap();
    let issuer = Issuer::new(&public_url);
    let grant = Grant {
        grant_id: "bench-grant".to_owned(),
        client_id: "bench-client".to_owned(),
        resource: issuer.resource("bench-sso"),
        scopes: vec!["mcp:tools".to_owned()],
        user: UserIdentity {
            subject: "alice".to_owned(),
            email: Some("alice@example.com".to_owned()),
            groups: vec!["engineering".to_owned(), "admins".to_owned()],
            identity_provider: "corp".to_owned(),
            identity_provider_issuer: "https://idp.example.com".to_owned(),
            auth_time: unix_now(),
        },
        issued_at_unix: unix_now(),
        expires_at_unix: unix_now() + 3_600,
        identity_provider_tokens: None,
    };
    let (token, _) = mint_access_token(
        &compiled.gateway_keys,
        issuer.as_str(),
        &grant,
        unix_now(),
        3_600,
    )
    .unwrap();
    let records: Arc<dyn RecordSink> = match audit {
        None => Arc::new(LogAndMetrics(Arc::new(NodeMetrics::default()))),
        Some((fsync, dir)) => {
            let (spool, _) = Spool::open(SpoolOptions {
                dir,
                max_bytes: 1 << 30,
                fsync,
                when_full: FullPolicy::Refuse,
            })
            .unwrap();
            Arc::new(AuditRecordSink::new(
                spool,
                Arc::new(NodeMetrics::default()),
            ))
        }
    };
    let state = Arc::new(NodeState::new(
        "bench-node",
        &public_url,
        address,
        Arc::new(SnapshotSlot::new(Some(compiled))),
        ProxyLimits::default(),
        records,
    ));
    // As the node binary serves: without Nagle.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        tcp.set_nodelay(true).unwrap();
    });
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    (address, token)
}

/// Where a measured request goes, and the `Authorization` it carries.
#[derive(Clone)]
struct Target {
    url: String,
    authorization: Option<String>,
}

async fn one_request(client: &HttpClient, target: &Target) -> Duration {
    let mut request = Request::post(&target.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25");
    if let Some(authorization) = &target.authorization {
        request = request.header("authorization", authorization);
    }
    let request = request.body(Full::new(BODY.clone())).unwrap();
    let started = Instant::now();
    let response = client.request(request).await.unwrap();
    assert!(
        response.status().is_success(),
        "status {}",
        response.status()
    );
    response.into_body().collect().await.unwrap();
    started.elapsed()
}

struct Measurement {
    latency: Histogram<u64>,
    requests: usize,
    elapsed: Duration,
    requests_per_second: f64,
}

impl Measurement {
    fn empty() -> Self {
        Self {
            latency: Histogram::<u64>::new(3).unwrap(),
            requests: 0,
            elapsed: Duration::ZERO,
            requests_per_second: 0.0,
        }
    }

    /// Adds another round of the same target.
    fn add(&mut self, round: Measurement) {
        self.latency.add(round.latency).unwrap();
        self.requests += round.requests;
        self.elapsed += round.elapsed;
        self.requests_per_second = self.requests as f64 / self.elapsed.as_secs_f64();
    }
}

/// Rounds per measurement: the targets take turns, so drift on a shared machine (other
/// work, frequency changes) hits all of them alike.
const ROUNDS: usize = 5;

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

async fn sequential(client: &HttpClient, target: &Target, count: usize) -> Measurement {
    let mut latency = Histogram::<u64>::new(3).unwrap();
    let started = Instant::now();
    for _ in 0..count {
        latency
            .record(micros(one_request(client, target).await))
            .unwrap();
    }
    let elapsed = started.elapsed();
    Measurement {
        latency,
        requests: count,
        elapsed,
        requests_per_second: count as f64 / elapsed.as_secs_f64(),
    }
}

async fn concurrent(
    client: &HttpClient,
    target: &Target,
    callers: usize,
    each: usize,
) -> Measurement {
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let client = client.clone();
            let target = target.clone();
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new(3).unwrap();
                for _ in 0..each {
                    latency
                        .record(micros(one_request(&client, &target).await))
                        .unwrap();
                }
                latency
            })
        })
        .collect();
    let mut latency = Histogram::<u64>::new(3).unwrap();
    for task in tasks {
        latency.add(task.await.unwrap()).unwrap();
    }
    let elapsed = started.elapsed();
    Measurement {
        latency,
        requests: callers * each,
        elapsed,
        requests_per_second: (callers * each) as f64 / elapsed.as_secs_f64(),
    }
}

/// Requests sent on a fixed schedule (one per tick of `1 / rate`) whatever the answers do:
/// latency at a moderate load, without a closed loop hiding queueing.
async fn fixed_rate(
    client: &HttpClient,
    target: &Target,
    rate: usize,
    count: usize,
) -> Measurement {
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        ticks.tick().await;
        let client = client.clone();
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            micros(one_request(&client, &target).await)
        }));
    }
    let mut latency = Histogram::<u64>::new(3).unwrap();
    for task in tasks {
        latency.record(task.await.unwrap()).unwrap();
    }
    let elapsed = started.elapsed();
    Measurement {
        latency,
        requests: count,
        elapsed,
        requests_per_second: count as f64 / elapsed.as_secs_f64(),
    }
}

const NAMES: [&str; 6] = ["direct", "fwd", "gateway", "sso", "audit", "audit-iv"];

fn report(label: &str, runs: &[Measurement; 6]) {
    println!("{label}");
    for (name, measurement) in NAMES.iter().zip(runs) {
        let latency = &measurement.latency;
        println!(
            "  {name:<8} p50 {:>6} us  p90 {:>6} us  p99 {:>6} us  max {:>7} us  {:>8.0} req/s",
            latency.value_at_quantile(0.50),
            latency.value_at_quantile(0.90),
            latency.value_at_quantile(0.99),
            latency.max(),
            measurement.requests_per_second,
        );
    }
    let ratio = |slower: &Measurement, faster: &Measurement, quantile: f64| {
        slower.latency.value_at_quantile(quantile) as f64
            / faster.latency.value_at_quantile(quantile) as f64
    };
    let [direct, forwarder, gateway, sso, audit, audit_interval] = runs;
    let added = |slower: &Measurement, quantile: f64| {
        slower.latency.value_at_quantile(quantile) as i64
            - direct.latency.value_at_quantile(quantile) as i64
    };
    for (name, run) in [("gateway/direct:", gateway), ("fwd/direct:    ", forwarder)] {
        println!(
            "  {name} p50 x{:.2} ({:+} us)  p99 x{:.2} ({:+} us)  throughput x{:.2}",
            ratio(run, direct, 0.50),
            added(run, 0.50),
            ratio(run, direct, 0.99),
            added(run, 0.99),
            run.requests_per_second / direct.requests_per_second,
        );
    }
    for (name, run) in [
        ("sso/gateway:     ", sso),
        ("audit/gateway:   ", audit),
        ("audit-iv/gateway:", audit_interval),
    ] {
        println!(
            "  {name} p50 x{:.2}  p99 x{:.2}  throughput x{:.3} ({:+.1} %)",
            ratio(run, gateway, 0.50),
            ratio(run, gateway, 0.99),
            run.requests_per_second / gateway.requests_per_second,
            (run.requests_per_second / gateway.requests_per_second - 1.0) * 100.0,
        );
    }
}

fn argument(index: usize, default: usize) -> usize {
    std::env::args()
        .skip(1)
        .filter(|argument| !argument.starts_with('-'))
        .nth(index)
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Pins the calling thread (and the threads it starts later) to `cpu`.
fn pin_to(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set)
        .unwrap_or_else(|error| panic!("pinning a thread to cpu {cpu} failed: {error}"));
}

/// A runtime with one worker, its threads (workers and blocking pool) on `cpu`, named
/// `name` (so that a profiler can tell the nodes from the load generator).
fn pinned_runtime(cpu: usize, name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .on_thread_start(move || pin_to(cpu))
        .enable_all()
        .build()
        .unwrap()
}

struct Settings {
    sequential_requests: usize,
    callers: usize,
    per_caller: usize,
    rate: usize,
    /// `--profile=NAME`: only NAME under concurrent load (for a profiler).
    profile: Option<String>,
}

fn main() {
    let settings = Settings {
        sequential_requests: argument(0, 2_000),
        callers: argument(1, 64),
        per_caller: argument(2, 1_000),
        rate: argument(3, 1_000),
        profile: std::env::args()
            .find_map(|argument| argument.strip_prefix("--profile=").map(str::to_owned)),
    };
    let only = |flag: &str| std::env::args().any(|argument| argument == flag);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if !only("--dedicated") {
        let shared = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        println!("== placement: shared (load generator, upstream and nodes on all {cores} cores)");
        measure(&settings, shared.handle(), shared.handle());
    }
    if !only("--shared") {
        if cores < 2 {
            println!(
                "== placement: dedicated: skipped, it needs 2 cores and this machine has {cores}"
            );
            return;
        }
        let load = pinned_runtime(0, "bench-load");
        let nodes = pinned_runtime(1, "bench-nodes");
        println!(
            "== placement: dedicated (nodes on core 1; load generator and upstream on core 0)"
        );
        measure(&settings, load.handle(), nodes.handle());
    }
}

/// Runs every measurement: the load generator and the upstream on `load`, the nodes on
/// `nodes` (the same runtime for the shared placement).
fn measure(settings: &Settings, load: &tokio::runtime::Handle, nodes: &tokio::runtime::Handle) {
    let Settings {
        sequential_requests,
        callers,
        per_caller,
        rate,
        ref profile,
    } = *settings;
    let profile = profile.clone();
    let nodes = nodes.clone();
    // The audited nodes' spools; removed when the measurement ends.
    let spools = tempfile::tempdir().unwrap();
    let always_spool = spools.path().join("always");
    let interval_spool = spools.path().join("interval");
    let work = load.spawn(async move {
        tokio::time::timeout(TIME_LIMIT, async move {
            let upstream = start_upstream().await;
            let (node, token) = nodes.spawn(start_node(upstream, None)).await.unwrap();
            let (audited, _) = nodes
                .spawn(start_node(
                    upstream,
                    Some((FsyncPolicy::Always, always_spool)),
                ))
                .await
                .unwrap();
            let (audited_interval, _) = nodes
                .spawn(start_node(
                    upstream,
                    Some((
                        FsyncPolicy::Interval(Duration::from_millis(100)),
                        interval_spool,
                    )),
                ))
                .await
                .unwrap();
            let forwarder = nodes.spawn(start_forwarder(upstream)).await.unwrap();
            let client: HttpClient =
                Client::builder(TokioExecutor::new()).build(HttpConnector::new());
            let direct = Target {
                url: format!("http://{upstream}/mcp"),
                authorization: None,
            };
            let forwarder = Target {
                url: format!("http://{forwarder}/mcp"),
                authorization: None,
            };
            let gateway = Target {
                url: format!("http://{node}/mcp/bench"),
                authorization: None,
            };
            let sso = Target {
                url: format!("http://{node}/mcp/bench-sso"),
                authorization: Some(format!("Bearer {token}")),
            };
            let audit = Target {
                url: format!("http://{audited}/mcp/bench"),
                authorization: None,
            };
            let audit_interval = Target {
                url: format!("http://{audited_interval}/mcp/bench"),
                authorization: None,
            };
            let targets = [&direct, &forwarder, &gateway, &sso, &audit, &audit_interval];
            for target in targets {
                sequential(&client, target, WARMUP_REQUESTS).await;
            }
            if let Some(name) = &profile {
                // Only one target under concurrent load, for a profiler to attach to.
                let index = NAMES
                    .iter()
                    .position(|candidate| candidate == name)
                    .unwrap_or_else(|| panic!("--profile takes one of {NAMES:?}"));
                let run = concurrent(&client, targets[index], callers, per_caller).await;
                println!(
                    "profile {name}: {callers} callers x {per_caller}: {:.0} req/s",
                    run.requests_per_second
                );
                return;
            }

            let runs = in_rounds(&targets, |target| {
                let client = client.clone();
                async move { sequential(&client, &target, sequential_requests / ROUNDS).await }
            })
            .await;
            report(
                &format!("sequential, {sequential_requests} requests ({ROUNDS} rounds)"),
                &runs,
            );

            let per_target = rate * 2;
            let runs = in_rounds(&targets, |target| {
                let client = client.clone();
                async move { fixed_rate(&client, &target, rate, per_target / ROUNDS).await }
            })
            .await;
            report(
                &format!("fixed rate {rate} req/s, {per_target} requests ({ROUNDS} rounds)"),
                &runs,
            );

            let runs = in_rounds(&targets, |target| {
                let client = client.clone();
                async move { concurrent(&client, &target, callers, per_caller / ROUNDS).await }
            })
            .await;
            report(
                &format!("{callers} concurrent callers x {per_caller} requests ({ROUNDS} rounds)"),
                &runs,
            );
        })
        .await
        .expect("the benchmark exceeded its time limit");
    });
    wait_for(work);
}

/// One measurement of every target, the targets taking turns in [`ROUNDS`] rounds.
async fn in_rounds<F, M>(targets: &[&Target; 6], mut measure: M) -> [Measurement; 6]
where
    M: FnMut(Target) -> F,
    F: Future<Output = Measurement>,
{
    let mut runs = std::array::from_fn(|_| Measurement::empty());
    for _ in 0..ROUNDS {
        for (target, run) in targets.iter().zip(runs.iter_mut()) {
            run.add(measure((*target).clone()).await);
        }
    }
    runs
}

/// Waits for a task of another runtime from the main thread.
fn wait_for(task: tokio::task::JoinHandle<()>) {
    let waiter = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    waiter.block_on(task).unwrap();
}

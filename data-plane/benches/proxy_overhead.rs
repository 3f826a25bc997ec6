//! Gateway overhead: the same JSON-RPC POST sent straight to an upstream and through the
//! node (Bearer app auth, full pipeline), in the same run on loopback, sequentially and
//! with concurrent callers. Prints latency percentiles, throughput and the ratios.
//!
//! Bounded in count and time. Arguments: `[sequential_requests] [concurrent_callers]
//! [requests_per_caller]` (defaults 2000, 32, 100). The numbers mean most in an optimised
//! build; in a debug build only the ratio is worth reading.

use std::net::SocketAddr;
use std::sync::Arc;
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
use portcullis_data_plane::compiled::{CompiledSnapshot, SnapshotSlot};
use portcullis_data_plane::config::ProxyLimits;
use portcullis_data_plane::jwt::{JwksPolicy, JwksRegistry};
use portcullis_data_plane::record::{RecordSink, RequestRecord};
use portcullis_data_plane::{NodeState, router};
use portcullis_proto::v1 as proto;
use portcullis_shared::snapshot::{SNAPSHOT_SCHEMA_VERSION, Snapshot};
use tokio::net::TcpListener;

const WARMUP_REQUESTS: usize = 200;
const TIME_LIMIT: Duration = Duration::from_secs(300);
const BODY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"q":"status"}}}"#;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Records are dropped: the bench measures the proxy, not a log writer.
struct DiscardRecords;

impl RecordSink for DiscardRecords {
    fn record(&self, _record: RequestRecord) {}
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

async fn start_node(upstream: SocketAddr) -> SocketAddr {
    let snapshot = proto::Snapshot {
        version: 1,
        schema_version: SNAPSHOT_SCHEMA_VERSION,
        servers: vec![proto::McpServer {
            name: "bench".to_owned(),
            upstream_url: format!("http://{upstream}/mcp"),
            agent_auth: Some(proto::AgentAuth {
                mode: Some(proto::agent_auth::Mode::Passthrough(
                    proto::PassthroughAgent::default(),
                )),
                restricted_inbound_headers: vec!["x-internal-*".to_owned()],
            }),
            app_auth: Some(proto::AppAuth {
                kind: Some(proto::app_auth::Kind::Bearer(proto::BearerToken {
                    token: Some(proto::Secret {
                        value: Some(proto::secret::Value::Plaintext("bench-token".to_owned())),
                    }),
                })),
            }),
            ..proto::McpServer::default()
        }],
        ..proto::Snapshot::default()
    };
    let jwks = JwksRegistry::new(JwksPolicy::default()).unwrap();
    let compiled = CompiledSnapshot::compile(Snapshot::try_from(snapshot).unwrap(), &jwks).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let state = Arc::new(NodeState::new(
        "bench-node",
        &format!("http://{address}").parse().unwrap(),
        address,
        Arc::new(SnapshotSlot::new(Some(compiled))),
        ProxyLimits::default(),
        Arc::new(DiscardRecords),
    ));
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    address
}

async fn one_request(client: &HttpClient, url: &str) -> Duration {
    let request = Request::post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap();
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
    requests_per_second: f64,
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

async fn sequential(client: &HttpClient, url: &str, count: usize) -> Measurement {
    let mut latency = Histogram::<u64>::new(3).unwrap();
    let started = Instant::now();
    for _ in 0..count {
        latency
            .record(micros(one_request(client, url).await))
            .unwrap();
    }
    Measurement {
        latency,
        requests_per_second: count as f64 / started.elapsed().as_secs_f64(),
    }
}

async fn concurrent(client: &HttpClient, url: &str, callers: usize, each: usize) -> Measurement {
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let client = client.clone();
            let url = url.to_owned();
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new(3).unwrap();
                for _ in 0..each {
                    latency
                        .record(micros(one_request(&client, &url).await))
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
    Measurement {
        latency,
        requests_per_second: (callers * each) as f64 / started.elapsed().as_secs_f64(),
    }
}

fn report(label: &str, direct: &Measurement, gateway: &Measurement) {
    println!("{label}");
    for (name, measurement) in [("direct", direct), ("gateway", gateway)] {
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
    let ratio = |quantile: f64| {
        gateway.latency.value_at_quantile(quantile) as f64
            / direct.latency.value_at_quantile(quantile) as f64
    };
    println!(
        "  gateway/direct: p50 x{:.2}  p99 x{:.2}  throughput x{:.2}",
        ratio(0.50),
        ratio(0.99),
        gateway.requests_per_second / direct.requests_per_second,
    );
}

fn argument(index: usize, default: usize) -> usize {
    std::env::args()
        .skip(1)
        .filter(|argument| !argument.starts_with('-'))
        .nth(index)
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let sequential_requests = argument(0, 2_000);
    let callers = argument(1, 32);
    let per_caller = argument(2, 100);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(TIME_LIMIT, async {
            let upstream = start_upstream().await;
            let node = start_node(upstream).await;
            let client: HttpClient =
                Client::builder(TokioExecutor::new()).build(HttpConnector::new());
            let direct_url = format!("http://{upstream}/mcp");
            let gateway_url = format!("http://{node}/mcp/bench");
            sequential(&client, &direct_url, WARMUP_REQUESTS).await;
            sequential(&client, &gateway_url, WARMUP_REQUESTS).await;

            let direct = sequential(&client, &direct_url, sequential_requests).await;
            let gateway = sequential(&client, &gateway_url, sequential_requests).await;
            report(
                &format!("sequential, {sequential_requests} requests"),
                &direct,
                &gateway,
            );

            let direct = concurrent(&client, &direct_url, callers, per_caller).await;
            let gateway = concurrent(&client, &gateway_url, callers, per_caller).await;
            report(
                &format!("{callers} concurrent callers x {per_caller} requests"),
                &direct,
                &gateway,
            );
        })
        .await
        .expect("the benchmark exceeded its time limit");
    });
}

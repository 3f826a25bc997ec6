//! The audit trail end to end: calls through a real node, events spooled on the node's disk
//! and delivered to a real control plane, read back through the admin API.
//!
//! "Acknowledged to a client" means the client read the complete response (a result or a
//! JSON-RPC error). The node spools a call's event before the last byte of the response
//! leaves, so every acknowledged call must be in the trail exactly once, whatever crashed
//! in between.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use portcullis_proto::v1 as proto;
use portcullis_tests::gateway::servers::{bearer, server};
use portcullis_tests::gateway::{AdminClient, ControlPlane, PortTaken};
use portcullis_tests::mcp_http::{HttpFailure, McpHttpSession};
use portcullis_tests::{EchoUpstream, Gateway, Node};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long delivery may take to bring the trail up to date after a restart (the node's
/// delivery backoff is at most 10 s).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a phase of load may take to reach its count of acknowledged calls.
const LOAD_PHASE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a wait on an observable state looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
const ATTEMPTS: usize = 3;

/// Runs `scenario` again on fresh ports when the control plane's old port was taken while
/// it was down.
async fn with_port_retries<F, Fut>(scenario: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    for attempt in 1..=ATTEMPTS {
        match scenario().await {
            Ok(()) => return,
            Err(error) if error.downcast_ref::<PortTaken>().is_some() => {
                eprintln!("attempt {attempt}: {error:#}; setting up again");
            }
            Err(error) => panic!("{error:?}"),
        }
    }
    panic!("the control plane's port was taken in each of {ATTEMPTS} attempts");
}

/// Every audit record matching `query`, all pages.
async fn audit_records(
    admin: &mut AdminClient,
    query: proto::AuditQuery,
) -> anyhow::Result<Vec<proto::AuditEvent>> {
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let page = admin
            .query_audit(proto::AuditQuery {
                after_sequence: after,
                limit: 1000,
                ..query.clone()
            })
            .await
            .context("QueryAudit failed")?
            .into_inner();
        events.extend(page.records.into_iter().filter_map(|record| record.event));
        if page.next_after_sequence == 0 {
            return Ok(events);
        }
        after = page.next_after_sequence;
    }
}

fn server_query(server: &str) -> proto::AuditQuery {
    proto::AuditQuery {
        server: server.to_owned(),
        ..Default::default()
    }
}

/// Whether a failed MCP request still got its complete response: an HTTP error with its
/// body, or a JSON-RPC error. Anything else (a refused connection, a cut response) is not
/// an acknowledgement.
fn completed(error: &anyhow::Error) -> bool {
    error.downcast_ref::<HttpFailure>().is_some() || format!("{error:#}").contains(" failed: {")
}

/// Clients calling tools with unique names through whatever node URL is current, and the
/// names of the calls whose response they received in full.
struct Load {
    acknowledged: Arc<Mutex<Vec<String>>>,
    url: watch::Sender<Option<String>>,
    stop: CancellationToken,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, workers: usize) -> Self {
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let (url, _) = watch::channel(Some(url));
        let stop = CancellationToken::new();
        let workers = (0..workers)
            .map(|worker| {
                tokio::spawn(call_loop(
                    worker,
                    url.subscribe(),
                    acknowledged.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Self {
            acknowledged,
            url,
            stop,
            workers,
        }
    }

    fn count(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    async fn wait_for(&self, count: usize, what: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + LOAD_PHASE_TIMEOUT;
        while self.count() < count {
            if Instant::now() >= deadline {
                bail!(
                    "{what}: only {} acknowledged calls within {LOAD_PHASE_TIMEOUT:?}",
                    self.count()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Ok(())
    }

    async fn finish(self) -> BTreeSet<String> {
        self.stop.cancel();
        for worker in self.workers {
            let _ = worker.await;
        }
        self.acknowledged.lock().unwrap().iter().cloned().collect()
    }
}

async fn call_loop(
    worker: usize,
    mut url: watch::Receiver<Option<String>>,
    acknowledged: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
) {
    let mut call = 0usize;
    'sessions: loop {
        let current = url.borrow_and_update().clone();
        let session = match current {
            Some(current) => McpHttpSession::connect(&current, &[]).await.ok(),
            None => None,
        };
        let Some(mut session) = session else {
            // No node to call (it is down, or not answering yet): wait for the next one.
            tokio::select! {
                changed = url.changed() => if changed.is_err() { return },
                () = stop.cancelled() => return,
            }
            continue 'sessions;
        };
        loop {
            if stop.is_cancelled() {
                return;
            }
            if url.has_changed().unwrap_or(true) {
                continue 'sessions;
            }
            call += 1;
            let name = format!("call-{worker}-{call}");
            match session.call_tool(&name, json!({})).await {
                Ok(_) => acknowledged.lock().unwrap().push(name),
                Err(error) if completed(&error) => acknowledged.lock().unwrap().push(name),
                // The node went away mid-call: this call is not acknowledged.
                Err(_) => {
                    tokio::select! {
                        changed = url.changed() => if changed.is_err() { return },
                        () = stop.cancelled() => return,
                    }
                    continue 'sessions;
                }
            }
        }
    }
}

/// Polls the trail until every name in `expected` has an event (or the deadline passes);
/// returns how many events each tool name has.
async fn wait_for_trail(
    admin: &mut AdminClient,
    server: &str,
    expected: &BTreeSet<String>,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    loop {
        let mut counts = BTreeMap::new();
        for event in audit_records(admin, server_query(server)).await? {
            if event.kind == "mcp_request" && !event.tool.is_empty() {
                *counts.entry(event.tool).or_insert(0usize) += 1;
            }
        }
        let missing: Vec<&String> = expected
            .iter()
            .filter(|name| !counts.contains_key(*name))
            .collect();
        if missing.is_empty() {
            return Ok(counts);
        }
        if Instant::now() >= deadline {
            bail!(
                "{} acknowledged calls are missing from the audit trail after {DELIVERY_TIMEOUT:?}, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            );
        }
        tokio::time::sleep(POLL_INTERVAL * 10).await;
    }
}

/// Under load: the control plane goes away (the node keeps serving and spooling), then the
/// node is killed with SIGKILL in the middle of calls; both come back. Every call a client
/// saw complete is in the trail exactly once, and no call is there twice.
#[tokio::test]
async fn every_acknowledged_call_is_audited_once_through_an_outage_and_a_node_crash() {
    with_port_retries(outage_and_crash).await;
}

async fn outage_and_crash() -> anyhow::Result<()> {
    let upstream = EchoUpstream::start(&[]).await?;
    let mut gateway = Gateway::start(1).await?;
    gateway
        .create_server(server("audited", &upstream.url(), bearer("upstream-t0ken")))
        .await?;
    let load = Load::start(gateway.node(0).mcp_url("audited"), 6);
    load.wait_for(100, "before the outage").await?;

    // The control plane crashes; the node keeps serving from its snapshot and spools.
    let control_plane_address: SocketAddr = gateway.control_plane.address();
    gateway.control_plane.kill_hard()?;
    let during_outage = load.count() + 150;
    load.wait_for(during_outage, "during the outage").await?;

    // The node crashes mid-stream: calls in flight are cut.
    gateway.nodes[0].kill_hard()?;
    load.url.send_replace(None);
    let before_restart = load.count();

    let control_plane = ControlPlane::start_on(&gateway.files, control_plane_address).await?;
    gateway.admin = control_plane.admin().await?;
    gateway.control_plane = control_plane;
    let node = Node::start(&gateway.files, "node-1", &gateway.control_plane.url(), &[]).await?;
    load.url.send_replace(Some(node.mcp_url("audited")));
    gateway.nodes[0] = node;
    load.wait_for(before_restart + 100, "after the restarts")
        .await?;
    let acknowledged = load.finish().await;

    let counts = wait_for_trail(&mut gateway.admin, "audited", &acknowledged).await?;
    let doubled: Vec<(&String, &usize)> = counts.iter().filter(|(_, count)| **count > 1).collect();
    assert!(
        doubled.is_empty(),
        "calls audited more than once: {doubled:?}"
    );
    // Calls cut by the crash may be in the trail or not; nothing else may be.
    let unknown: Vec<&String> = counts
        .keys()
        .filter(|name| !acknowledged.contains(*name))
        .collect();
    assert!(
        unknown.len() <= 6,
        "only the calls in flight at the crash (one per client) may be audited without having been acknowledged: {unknown:?}"
    );
    let verified = gateway
        .admin
        .verify_audit(proto::VerifyAuditRequest {})
        .await?
        .into_inner();
    assert!(verified.intact, "{:?}", verified.problems);
    eprintln!(
        "{} acknowledged calls, {} in flight at the crash audited too",
        acknowledged.len(),
        unknown.len()
    );
    Ok(())
}

/// A line of a Prometheus text page: the value of `name{labels...}` (labels as written).
fn metric_value(page: &str, name_and_labels: &str) -> Option<f64> {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name_and_labels).then(|| value.parse().ok())?
        })
}

async fn node_metrics(node: &Node) -> anyhow::Result<String> {
    let url = format!("{}/metrics", node.admin_url()?);
    reqwest::get(&url)
        .await
        .with_context(|| format!("GET {url}"))?
        .text()
        .await
        .context("reading /metrics")
}

async fn wait_for_metric(
    node: &Node,
    name_and_labels: &str,
    what: &str,
    condition: impl Fn(f64) -> bool,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    loop {
        let page = node_metrics(node).await?;
        if let Some(value) = metric_value(&page, name_and_labels)
            && condition(value)
        {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("{what}: {name_and_labels} never matched within {DELIVERY_TIMEOUT:?}:\n{page}");
        }
        tokio::time::sleep(POLL_INTERVAL * 5).await;
    }
}

const SMALL_SPOOL: &str = "65536";

/// A gateway with one node whose spool holds 64 KiB under `policy`, serving `server` (an
/// echo upstream), once the spool is empty; then its control plane is killed. Returns the
/// control plane's address, to restart it there.
async fn small_spool_without_control_plane(
    policy: &str,
    server_name: &str,
) -> anyhow::Result<(EchoUpstream, Gateway, SocketAddr)> {
    let upstream = EchoUpstream::start(&[]).await?;
    let mut gateway = Gateway::start_with_node_args(
        1,
        &[
            "--audit-spool-max-bytes",
            SMALL_SPOOL,
            "--audit-spool-full",
            policy,
            "--admin-listen",
            "127.0.0.1:0",
        ],
    )
    .await?;
    gateway
        .create_server(server(
            server_name,
            &upstream.url(),
            bearer("upstream-t0ken"),
        ))
        .await?;
    // Delivered so far: the spool starts empty.
    wait_for_metric(
        gateway.node(0),
        "portcullis_audit_spool_events",
        "empty spool",
        |v| v == 0.0,
    )
    .await?;
    let control_plane_address = gateway.control_plane.address();
    gateway.control_plane.kill_hard()?;
    Ok((upstream, gateway, control_plane_address))
}

/// Starts the control plane again at `address` on its files and waits until the node's
/// spool is delivered.
async fn restart_control_plane_and_wait_for_delivery(
    gateway: &mut Gateway,
    address: SocketAddr,
) -> anyhow::Result<()> {
    let control_plane = ControlPlane::start_on(&gateway.files, address).await?;
    gateway.admin = control_plane.admin().await?;
    gateway.control_plane = control_plane;
    wait_for_metric(
        gateway.node(0),
        "portcullis_audit_spool_events",
        "spool delivered",
        |value| value == 0.0,
    )
    .await?;
    Ok(())
}

/// The refuse policy: with the control plane away, the spool fills and the node answers
/// 503 `audit_spool_full` to new calls, without calling the upstream; once the control plane
/// is back and the spool is delivered, calls go through again. Every call that got a
/// result is in the trail.
#[tokio::test]
async fn a_full_spool_refuses_new_calls_until_delivery_makes_room() {
    with_port_retries(full_spool_refuses).await;
}

async fn full_spool_refuses() -> anyhow::Result<()> {
    let (_upstream, mut gateway, control_plane_address) =
        small_spool_without_control_plane("refuse", "bounded").await?;

    let mut session = McpHttpSession::connect(&gateway.node(0).mcp_url("bounded"), &[]).await?;
    let mut answered = 0usize;
    let refusal = loop {
        if answered > 2000 {
            bail!("a 64 KiB spool took more than 2000 calls without refusing one");
        }
        match session.call_tool_text("whoami", json!({})).await {
            Ok(_) => answered += 1,
            Err(error) => match error.downcast::<HttpFailure>() {
                Ok(failure) => break failure,
                Err(other) => return Err(other.context("a call failed otherwise than with 503")),
            },
        }
    };
    assert_eq!(refusal.status, 503, "{refusal}");
    let body: serde_json::Value = serde_json::from_str(&refusal.body)?;
    assert_eq!(
        body["error"]["data"]["reason"], "audit_spool_full",
        "{body}"
    );
    assert!(answered > 10, "the spool refused after {answered} calls");
    let page = node_metrics(gateway.node(0)).await?;
    assert!(
        metric_value(
            &page,
            "portcullis_audit_refused_requests_total{result=\"audit_spool_full\"}"
        )
        .is_some_and(|refused| refused >= 1.0),
        "{page}"
    );
    let spooled = metric_value(&page, "portcullis_audit_spool_bytes").unwrap_or(f64::MAX);
    assert!(spooled <= 65536.0, "the spool holds {spooled} bytes");
    // The control plane returns: delivery empties the spool and calls pass again.
    restart_control_plane_and_wait_for_delivery(&mut gateway, control_plane_address).await?;
    session.call_tool_text("whoami", json!({})).await?;
    answered += 1;
    // That call's event is delivered after its answer: wait until the spool is empty again.
    wait_for_metric(
        gateway.node(0),
        "portcullis_audit_spool_events",
        "last call delivered",
        |value| value == 0.0,
    )
    .await?;
    let whoami = audit_records(&mut gateway.admin, server_query("bounded"))
        .await?
        .into_iter()
        .filter(|event| event.tool == "whoami" && event.outcome == "completed")
        .count();
    assert_eq!(whoami, answered, "every answered call is in the trail once");
    Ok(())
}

/// The drop policy: with the control plane away, calls keep being answered once the spool
/// is full; the events that found no room are counted, and every other one reaches the
/// trail when the control plane returns.
#[tokio::test]
async fn a_full_spool_drops_and_counts_events_under_the_drop_policy() {
    with_port_retries(full_spool_drops).await;
}

async fn full_spool_drops() -> anyhow::Result<()> {
    let (_upstream, mut gateway, control_plane_address) =
        small_spool_without_control_plane("drop", "lossy").await?;

    // initialize and notifications/initialized are requests too.
    let mut session = McpHttpSession::connect(&gateway.node(0).mcp_url("lossy"), &[]).await?;
    let mut requests = 2usize;
    let mut dropped = 0.0;
    while dropped < 20.0 {
        if requests > 3000 {
            bail!("a 64 KiB spool took more than 3000 calls without dropping 20 events");
        }
        for _ in 0..50 {
            // Every call is answered although the spool is full.
            session.call_tool_text("whoami", json!({})).await?;
            requests += 1;
        }
        let page = node_metrics(gateway.node(0)).await?;
        dropped = metric_value(&page, "portcullis_audit_events_dropped_full_total").unwrap_or(0.0);
        let spooled = metric_value(&page, "portcullis_audit_spool_bytes").unwrap_or(f64::MAX);
        assert!(spooled <= 65536.0, "the spool holds {spooled} bytes");
    }

    restart_control_plane_and_wait_for_delivery(&mut gateway, control_plane_address).await?;
    let page = node_metrics(gateway.node(0)).await?;
    let dropped = metric_value(&page, "portcullis_audit_events_dropped_full_total").unwrap_or(0.0);
    let audited = audit_records(&mut gateway.admin, server_query("lossy"))
        .await?
        .len();
    assert_eq!(
        audited + dropped as usize,
        requests,
        "every request is either in the trail or counted as dropped"
    );
    Ok(())
}

//! Observability end to end: traces exported over OTLP/gRPC to a real receiver, `/metrics`
//! on both planes read by the Prometheus project's own parser (Python `prometheus_client`),
//! JSON request logs that carry the request id, audit events for calls and refusals, and
//! none of the secrets the test knows anywhere in what the gateway wrote.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use portcullis_proto::v1 as proto;
use portcullis_tests::gateway::servers::{bearer, passthrough, server};
use portcullis_tests::gateway::{ControlPlane, PROPAGATION_TIMEOUT};
use portcullis_tests::mcp_http::{HttpFailure, McpHttpSession};
use portcullis_tests::otlp::OtlpReceiver;
use portcullis_tests::paths;
use portcullis_tests::{EchoUpstream, GatewayFiles, Node};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

const SPAN_TIMEOUT: Duration = Duration::from_secs(30);
const APP_SECRET: &str = "app-secret-7c1e9d2b44";
const CALLER_SECRET: &str = "caller-secret-0f3a8e6d51";
const FORGED_TOKEN: &str = "forged-token-5b2d7a9c13";
/// RFC 7517 appendix A.1: an EC P-256 public key, so JWT validation has a key to check
/// tokens against (the forged token fails before any key is needed).
const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM","use":"sig","kid":"1"}]}"#;

/// Families and samples as `prometheus_client` parsed them.
type ParsedMetrics = BTreeMap<String, Vec<(String, BTreeMap<String, String>, f64)>>;

/// Parses a `/metrics` page with `prometheus_client` (the OpenMetrics parser, which is
/// strict, or the classic text parser); fails when it does not parse.
async fn parse_metrics(page: &str, openmetrics: bool) -> anyhow::Result<ParsedMetrics> {
    let parser = if openmetrics {
        "from prometheus_client.openmetrics.parser import text_string_to_metric_families"
    } else {
        "from prometheus_client.parser import text_string_to_metric_families"
    };
    let script = format!(
        "import json, sys\n{parser}\nout = {{}}\nfor family in text_string_to_metric_families(sys.stdin.read()):\n    out[family.name] = [[s.name, s.labels, s.value] for s in family.samples]\nprint(json.dumps(out))\n"
    );
    let mut child = tokio::process::Command::new(paths::python_interpreter())
        .arg("-s")
        .arg("-c")
        .arg(script)
        .env("PYTHONPATH", paths::python_packages_dir()?)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start python")?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    stdin.write_all(page.as_bytes()).await?;
    drop(stdin);
    let output = child.wait_with_output().await?;
    if !output.status.success() {
        bail!(
            "prometheus_client could not parse the page: {}\n{page}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

async fn get_metrics(url: &str, openmetrics: bool) -> anyhow::Result<(String, String)> {
    let mut request = reqwest::Client::new().get(url);
    if openmetrics {
        request = request.header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        );
    }
    let response = request.send().await.with_context(|| format!("GET {url}"))?;
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((content_type, response.text().await?))
}

/// Both formats parse, and the families the operator relies on are there.
async fn check_metrics(url: &str, families: &[&str]) -> anyhow::Result<ParsedMetrics> {
    let (content_type, page) = get_metrics(url, true).await?;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let openmetrics = parse_metrics(&page, true).await?;
    let (content_type, page) = get_metrics(url, false).await?;
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let classic = parse_metrics(&page, false).await?;
    for family in families {
        assert!(
            openmetrics.contains_key(*family) && classic.contains_key(*family),
            "{url} lacks {family}: {:?}",
            openmetrics.keys().collect::<Vec<_>>()
        );
    }
    Ok(openmetrics)
}

fn sample(
    metrics: &ParsedMetrics,
    family: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    metrics
        .get(family)?
        .iter()
        .find_map(|(sample, sample_labels, value)| {
            (sample == name
                && labels.iter().all(|(key, wanted)| {
                    sample_labels.get(*key).map(String::as_str) == Some(*wanted)
                }))
            .then_some(*value)
        })
}

#[tokio::test]
async fn traces_metrics_logs_and_audit_events_carry_the_request_and_no_secret() -> anyhow::Result<()>
{
    let receiver = OtlpReceiver::start().await?;
    let upstream = EchoUpstream::start(&[]).await?;
    let files = GatewayFiles::create()?;
    let control_plane = ControlPlane::start_with_args(
        &files,
        &[
            "--otlp-endpoint",
            &receiver.endpoint(),
            "--http-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
    )
    .await?;
    let mut admin = control_plane.admin().await?;
    let mut node = Node::start(
        &files,
        "node-1",
        &control_plane.url(),
        &[
            "--otlp-endpoint",
            &receiver.endpoint(),
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
    )
    .await?;

    // A static app secret, the caller's own token passed through, and a server that
    // validates JWTs (a forged token is refused: an auth failure).
    admin
        .create_server(proto::CreateServerRequest {
            server: Some(server("keyed", &upstream.url(), bearer(APP_SECRET))),
        })
        .await?;
    admin
        .create_server(proto::CreateServerRequest {
            server: Some(server("forwarding", &upstream.url(), passthrough())),
        })
        .await?;
    let mut validating = server("validating", &upstream.url(), bearer(APP_SECRET));
    validating.agent_auth = Some(proto::AgentAuth {
        mode: Some(proto::agent_auth::Mode::Passthrough(
            proto::PassthroughAgent {
                jwt_validation: Some(proto::JwtValidation {
                    jwks_json: JWKS.to_owned(),
                    ..Default::default()
                }),
            },
        )),
        restricted_inbound_headers: Vec::new(),
    });
    let revision = admin
        .create_server(proto::CreateServerRequest {
            server: Some(validating),
        })
        .await?
        .into_inner()
        .revision;
    node.wait_for_snapshot(revision, PROPAGATION_TIMEOUT)
        .await?;

    let caller_header = format!("Bearer {CALLER_SECRET}");
    let mut keyed =
        McpHttpSession::connect(&node.mcp_url("keyed"), &[("authorization", &caller_header)])
            .await?;
    let seen = keyed.call_tool_text("whoami", json!({})).await?;
    assert!(
        seen.contains(APP_SECRET),
        "the upstream got the app secret: {seen}"
    );
    let mut forwarding = McpHttpSession::connect(
        &node.mcp_url("forwarding"),
        &[("authorization", &caller_header)],
    )
    .await?;
    let seen = forwarding.call_tool_text("whoami", json!({})).await?;
    assert!(seen.contains(CALLER_SECRET), "passthrough forwards: {seen}");
    let forged_header = format!("Bearer {FORGED_TOKEN}");
    let refused = McpHttpSession::connect(
        &node.mcp_url("validating"),
        &[("authorization", &forged_header)],
    )
    .await
    .expect_err("a forged token is refused");
    let refused = refused
        .downcast_ref::<HttpFailure>()
        .with_context(|| format!("{refused:#}"))?;
    assert_eq!(refused.status, 401);

    // Audit events: the calls with their credential facts, the refusal as an auth failure.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let events = loop {
        let page = admin
            .query_audit(proto::AuditQuery {
                limit: 1000,
                ..Default::default()
            })
            .await?
            .into_inner();
        let events: Vec<proto::AuditEvent> = page
            .records
            .into_iter()
            .filter_map(|record| record.event)
            .collect();
        let has = |kind: &str, server: &str| {
            events
                .iter()
                .any(|event| event.kind == kind && event.server == server)
        };
        if has("mcp_request", "keyed")
            && events
                .iter()
                .any(|event| event.server == "forwarding" && event.tool == "whoami")
            && has("auth_failure", "validating")
        {
            break events;
        }
        if std::time::Instant::now() >= deadline {
            bail!("the node's events did not reach the trail: {events:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let keyed_call = events
        .iter()
        .find(|event| event.server == "keyed" && event.tool == "whoami")
        .context("the keyed whoami call")?;
    assert_eq!(keyed_call.source, "node-1");
    assert_eq!(keyed_call.credential_kind, "bearer");
    assert_eq!(keyed_call.credential_id, "keyed");
    assert_eq!(keyed_call.mcp_method, "tools/call");
    assert_eq!(keyed_call.outcome, "completed");
    assert_eq!(
        (keyed_call.http_status, keyed_call.upstream_status),
        (200, 200)
    );
    assert!(keyed_call.caller_credential_stripped && !keyed_call.caller_credential_forwarded);
    assert!(keyed_call.snapshot_version >= revision);
    assert!(keyed_call.latency_micros > 0);
    uuid_v7(&keyed_call.event_id)?;
    let forwarded_call = events
        .iter()
        .find(|event| event.server == "forwarding" && event.tool == "whoami")
        .context("the forwarding whoami call")?;
    assert!(
        forwarded_call.caller_credential_forwarded && !forwarded_call.caller_credential_stripped
    );
    let failure = events
        .iter()
        .find(|event| event.kind == "auth_failure")
        .context("the auth failure")?;
    assert_eq!(
        (
            failure.reason.as_str(),
            failure.http_status,
            failure.outcome.as_str()
        ),
        ("malformed_token", 401, "rejected")
    );

    // Traces: the node's request span carries the request id the audit event names; the
    // control plane's admin calls and snapshot pushes are there too.
    let request_id = keyed_call.request_id.clone();
    let span = receiver
        .wait_for_span("mcp_request of the keyed call", SPAN_TIMEOUT, |span| {
            span.service == "portcullis-node"
                && span.name == "mcp_request"
                && span.attributes.get("request_id") == Some(&request_id)
        })
        .await?;
    assert_eq!(
        span.attributes.get("server").map(String::as_str),
        Some("keyed")
    );
    receiver
        .wait_for_span("an admin CreateServer call", SPAN_TIMEOUT, |span| {
            span.service == "portcullis-control-plane"
                && span.name == "grpc_request"
                && span.attributes.get("rpc.method").map(String::as_str)
                    == Some("/portcullis.v1.AdminService/CreateServer")
                && span.attributes.contains_key("request_id")
        })
        .await?;
    receiver
        .wait_for_span("a snapshot push to node-1", SPAN_TIMEOUT, |span| {
            span.service == "portcullis-control-plane"
                && span.name == "snapshot_push"
                && span.attributes.get("node").map(String::as_str) == Some("node-1")
        })
        .await?;
    receiver
        .wait_for_span("the refused call's span", SPAN_TIMEOUT, |span| {
            span.service == "portcullis-node"
                && span.name == "mcp_request"
                && span.attributes.get("server").map(String::as_str) == Some("validating")
        })
        .await?;

    // Metrics on both planes parse and say what happened.
    let node_metrics = check_metrics(
        &format!("{}/metrics", node.admin_url()?),
        &[
            "portcullis_node_requests",
            "portcullis_node_request_duration_seconds",
            "portcullis_node_auth_failures",
            "portcullis_node_snapshot_version",
            "portcullis_audit_spool_events",
            "portcullis_audit_spool_bytes",
            "portcullis_audit_delivery_lag_seconds",
            "portcullis_audit_events_delivered",
        ],
    )
    .await?;
    assert_eq!(
        sample(
            &node_metrics,
            "portcullis_node_auth_failures",
            "portcullis_node_auth_failures_total",
            &[("server", "validating"), ("reason", "malformed_token")]
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &node_metrics,
            "portcullis_node_requests",
            "portcullis_node_requests_total",
            &[
                ("server", "keyed"),
                ("outcome", "completed"),
                ("status", "200")
            ]
        )
        .is_some_and(|count| count >= 1.0)
    );
    assert_eq!(
        sample(
            &node_metrics,
            "portcullis_node_snapshot_version",
            "portcullis_node_snapshot_version",
            &[]
        ),
        Some(revision as f64)
    );
    let control_plane_metrics = check_metrics(
        &format!("{}/metrics", control_plane.http_url()?),
        &[
            "portcullis_control_plane_grpc_requests",
            "portcullis_control_plane_grpc_request_duration_seconds",
            "portcullis_control_plane_snapshot_pushes",
            "portcullis_control_plane_node_snapshot_version",
            "portcullis_control_plane_nodes_connected",
            "portcullis_control_plane_audit_records",
        ],
    )
    .await?;
    assert_eq!(
        sample(
            &control_plane_metrics,
            "portcullis_control_plane_node_snapshot_version",
            "portcullis_control_plane_node_snapshot_version",
            &[("node_id", "node-1")]
        ),
        Some(revision as f64)
    );
    assert!(
        sample(
            &control_plane_metrics,
            "portcullis_control_plane_grpc_requests",
            "portcullis_control_plane_grpc_requests_total",
            &[
                ("method", "/portcullis.v1.AdminService/CreateServer"),
                ("code", "OK")
            ]
        )
        .is_some_and(|count| count >= 3.0)
    );
    for url in [
        format!("{}/healthz", control_plane.http_url()?),
        format!("{}/readyz", control_plane.http_url()?),
        format!("{}/healthz", node.admin_url()?),
        format!("{}/readyz", node.admin_url()?),
    ] {
        let status = reqwest::get(&url).await?.status();
        assert_eq!(status, 200, "{url}");
    }
    // The control plane's HTTP listener bounds request heads as the nodes' do: a head of
    // about 100 KiB (hyper alone would take about 400 KiB) is refused, not answered.
    let address = control_plane
        .http_url()?
        .trim_start_matches("http://")
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await?;
    let mut head = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for index in 0..20 {
        head.push_str(&format!("x-filler-{index}: {}\r\n", "a".repeat(5000)));
    }
    head.push_str("\r\n");
    // The server may close before it has read the whole head.
    let _ = stream.write_all(head.as_bytes()).await;
    let mut answer = vec![0u8; 64];
    match tokio::io::AsyncReadExt::read(&mut stream, &mut answer).await {
        Ok(read) => {
            let answer = String::from_utf8_lossy(&answer[..read]);
            // Empty: the unread rest of the head reset the connection first.
            assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
                "{answer}"
            );
        }
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}"),
    }

    // JSON request logs: one object per line; request lines carry the request id, and a
    // line logged while serving the refused call carries its span's request id.
    let node_log = node.process().stderr_text();
    let lines: Vec<Value> = node_log
        .lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("not JSON: {line}")))
        .collect::<anyhow::Result<_>>()?;
    let request_line = lines
        .iter()
        .find(|line| {
            line["fields"]["message"] == "mcp request" && line["fields"]["request_id"] == request_id
        })
        .context("no request log line for the keyed call")?;
    assert_eq!(request_line["fields"]["credential_kind"], "bearer");
    assert!(
        lines.iter().any(|line| {
            line["fields"]["message"] == "caller refused by agent authentication"
                && line["span"]["request_id"].is_string()
        }),
        "the refusal's log line carries the request id of its span"
    );

    // No secret anywhere: audit events, logs of both planes, exported traces.
    let master_key = std::fs::read_to_string(files.master_key_file())?;
    let state_key = std::fs::read_to_string(files.node_state_key_file("node-1")?)?;
    let secrets = [
        APP_SECRET,
        CALLER_SECRET,
        FORGED_TOKEN,
        files.admin_token(),
        files.node_token(),
        files.auditor_token(),
        master_key.trim(),
        state_key.trim(),
    ];
    let all_events = format!("{events:?}");
    let places = [
        ("audit events", all_events),
        ("node log", node_log),
        ("control plane log", control_plane.process().stderr_text()),
        ("exported traces", receiver.raw_text()),
    ];
    for (place, text) in &places {
        for secret in secrets {
            assert!(!text.contains(secret), "a secret appears in the {place}");
        }
    }
    node.process_mut().kill_hard()?;
    Ok(())
}

fn uuid_v7(text: &str) -> anyhow::Result<()> {
    // Version nibble: the first character of the third group.
    let third = text.split('-').nth(2).context("not a UUID")?;
    if !third.starts_with('7') || text.len() != 36 {
        bail!("{text} is not a uuid v7");
    }
    Ok(())
}

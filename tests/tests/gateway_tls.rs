//! TLS everywhere, on the real binaries: the control plane's listener with TLS and mTLS for
//! nodes, the node's client certificate used by every connection it makes to the control
//! plane (snapshot stream, runtime calls, audit delivery), and TLS on the node's own MCP
//! listener. Certificates come from `portcullis-control-plane dev-certs`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use portcullis_proto::v1 as proto;
use portcullis_tests::gateway::servers::{bearer, server};
use portcullis_tests::gateway::{
    AdminClient, ControlPlane, GatewayTls, NodeTls, PROPAGATION_TIMEOUT, fleet_node, https_client,
    wait_for_fleet,
};
use portcullis_tests::mcp_http::McpHttpSession;
use portcullis_tests::{EchoUpstream, Gateway, GatewayFiles, Node};
use serde_json::json;

const UPSTREAM_TOKEN: &str = "tls-upstream-token";
/// The node's audit delivery backs off at most 10 s between attempts.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Polls the audit trail until an `mcp_request` event of `server` calling `tool` arrives.
async fn wait_for_audited_call(
    admin: &mut AdminClient,
    server: &str,
    tool: &str,
) -> anyhow::Result<proto::AuditEvent> {
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    loop {
        let page = admin
            .query_audit(proto::AuditQuery {
                server: server.to_owned(),
                limit: 1000,
                ..Default::default()
            })
            .await
            .context("QueryAudit failed")?
            .into_inner();
        if let Some(event) = page
            .records
            .into_iter()
            .filter_map(|record| record.event)
            .find(|event| event.kind == "mcp_request" && event.tool == tool)
        {
            return Ok(event);
        }
        if Instant::now() >= deadline {
            bail!("no audit event for {tool} on {server} within {DELIVERY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_node_with_its_client_certificate_serves_over_tls_and_audits() {
    let upstream = EchoUpstream::start(&[]).await.unwrap();
    let mut gateway = Gateway::start_with_tls(
        1,
        GatewayTls {
            mtls: true,
            node_listeners: true,
        },
        &[],
    )
    .await
    .unwrap();

    // Snapshot stream over mTLS: the node is known by its certificate's name.
    let fleet = wait_for_fleet(
        &mut gateway.admin,
        "node-1 connected",
        PROPAGATION_TIMEOUT,
        |reply| fleet_node(reply, "node-1").is_some_and(|node| node.connected),
    )
    .await
    .unwrap();
    let node = fleet_node(&fleet, "node-1").unwrap();
    assert!(
        node.address.starts_with("https://"),
        "the public URL defaults to https with TLS: {}",
        node.address
    );

    gateway
        .create_server(server("tls", &upstream.url(), bearer(UPSTREAM_TOKEN)))
        .await
        .unwrap();

    // An https client trusting the development CA calls a tool through the node.
    let node = &gateway.nodes[0];
    let mut session = McpHttpSession::connect_with(node.http_client(), &node.mcp_url("tls"), &[])
        .await
        .unwrap();
    let seen = session.call_tool_text("whoami", json!({})).await.unwrap();
    assert!(seen.contains(UPSTREAM_TOKEN), "{seen}");

    // Audit delivery over mTLS: the call reaches the trail, attributed to the node.
    let event = wait_for_audited_call(&mut gateway.admin, "tls", "whoami")
        .await
        .unwrap();
    assert_eq!(event.source, "node-1");
    assert_eq!(event.outcome, "completed");

    // The listener speaks TLS only: a plaintext client gets no MCP answer.
    let plaintext = https_client(None).unwrap();
    match plaintext
        .get(format!("http://{}/readyz", node.address()))
        .send()
        .await
    {
        Err(_) => {}
        Ok(response) => {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            assert_eq!(status, 400, "plaintext answered: {body}");
            assert!(body.contains("TLS"), "{body}");
        }
    }
    // ... and an https client that does not trust the CA fails the handshake.
    let untrusting = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert!(untrusting.get(node.url("/readyz")).send().await.is_err());
    // HTTP/2 is offered by ALPN.
    let http2 = node
        .http_client()
        .get(node.url("/healthz"))
        .version(reqwest::Version::HTTP_2)
        .send()
        .await
        .unwrap();
    assert_eq!(http2.version(), reqwest::Version::HTTP_2);
    assert!(http2.status().is_success());
}

#[tokio::test]
async fn nodes_without_the_right_certificate_are_refused() {
    let files = GatewayFiles::create().unwrap();
    let certs = files.dev_certs(&["node-1", "node-2"]).unwrap();
    let control_plane = ControlPlane::start_tls(&files, &certs, true).await.unwrap();
    let mut admin = control_plane.admin().await.unwrap();

    // With the CA but no certificate (its valid node token is not enough).
    let mut anonymous = Node::start_with_tls(
        &files,
        "node-1",
        &control_plane.url(),
        &NodeTls {
            control_plane_ca: Some(certs.ca()),
            ..NodeTls::default()
        },
        &[],
    )
    .await
    .unwrap();
    anonymous
        .process_mut()
        .wait_for_stderr_line(
            |line| line.contains("client certificate signed by the fleet's CA is required"),
            PROPAGATION_TIMEOUT,
        )
        .await
        .unwrap();

    // With node-2's certificate while claiming to be node-1.
    let mut impostor = Node::start_with_tls(
        &files,
        "node-1",
        &control_plane.url(),
        &NodeTls {
            control_plane_ca: Some(certs.ca()),
            client_certificate: Some((certs.node_cert("node-2"), certs.node_key("node-2"))),
            listener: None,
        },
        &[],
    )
    .await
    .unwrap();
    impostor
        .process_mut()
        .wait_for_stderr_line(
            |line| line.contains("this client certificate is for node"),
            PROPAGATION_TIMEOUT,
        )
        .await
        .unwrap();

    for node in [&anonymous, &impostor] {
        assert_eq!(node.snapshot_version().await.unwrap(), None);
    }
    let fleet = admin
        .fleet_status(proto::FleetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(fleet.nodes.iter().all(|node| !node.connected), "{fleet:#?}");
}

/// The node binary refuses to start on a half-given or unusable certificate configuration,
/// with exit code 64 and the flag named.
#[tokio::test]
async fn the_node_refuses_bad_certificate_settings_at_start() {
    let files = GatewayFiles::create().unwrap();
    let certs = files.dev_certs(&["node-1"]).unwrap();
    let binary = portcullis_tests::paths::workspace_binary("portcullis-node").unwrap();
    let base = |control_plane: &str| {
        let mut command = std::process::Command::new(&binary);
        command
            .args(["--node-id", "node-1", "--listen", "127.0.0.1:0"])
            .args(["--control-plane", control_plane])
            .arg("--state-dir")
            .arg(files.node_state_dir("node-1"))
            .arg("--state-key-file")
            .arg(files.node_state_key_file("node-1").unwrap());
        command
    };
    let cases: Vec<(std::process::Command, &str)> = vec![
        (
            {
                let mut command = base("https://127.0.0.1:1");
                command
                    .arg("--control-plane-client-cert-file")
                    .arg(certs.node_cert("node-1"));
                command
            },
            "control_plane_client_key_file",
        ),
        (
            {
                let mut command = base("http://127.0.0.1:1");
                command
                    .arg("--control-plane-client-cert-file")
                    .arg(certs.node_cert("node-1"))
                    .arg("--control-plane-client-key-file")
                    .arg(certs.node_key("node-1"));
                command
            },
            "https",
        ),
        (
            {
                let mut command = base("https://127.0.0.1:1");
                command
                    .arg("--control-plane-client-cert-file")
                    .arg(files.folder().join("missing.pem"))
                    .arg("--control-plane-client-key-file")
                    .arg(certs.node_key("node-1"));
                command
            },
            "cannot read",
        ),
        (
            {
                let mut command = base("https://127.0.0.1:1");
                command
                    .arg("--node-token-file")
                    .arg(files.node_token_file())
                    .arg("--tls-cert-file")
                    .arg(certs.server_cert())
                    .arg("--tls-key-file")
                    .arg(certs.node_key("node-1"));
                command
            },
            "do not go together",
        ),
    ];
    for (mut command, expected) in cases {
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
        assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
    }
}

//! Configuration distribution with real processes: an admin change reaches every node,
//! nodes ride out a control-plane crash (and a restart of their own meanwhile), and a node
//! that refuses a snapshot says so in fleet status while it keeps serving the previous one.

use std::time::Duration;

use anyhow::Context;
use portcullis_proto::v1 as proto;
use portcullis_tests::echo_upstream::EchoedRequest;
use portcullis_tests::gateway::servers::{api_key_in_header, bearer, server};
use portcullis_tests::gateway::{
    ControlPlane, PROPAGATION_TIMEOUT, PortTaken, fleet_node, wait_for_fleet,
};
use portcullis_tests::mcp_http::{HttpFailure, McpHttpSession, call_tool_text};
use portcullis_tests::{EchoUpstream, Gateway, GatewayFiles, Node};
use serde_json::json;

/// The `Authorization` header echo-upstream saw, through `node` to server `name`.
async fn upstream_authorization(node: &Node, name: &str) -> anyhow::Result<String> {
    call_tool_text(&node.mcp_url(name), &[], "whoami", json!({}))
        .await
        .with_context(|| format!("whoami through {}", node.node_id()))
}

/// The `x-api-key` header echo-upstream saw, through `node` to server `name`.
async fn upstream_api_key(node: &Node, name: &str) -> anyhow::Result<Option<String>> {
    let text = call_tool_text(&node.mcp_url(name), &[], "echo_headers", json!({}))
        .await
        .with_context(|| format!("echo_headers through {}", node.node_id()))?;
    let echoed: EchoedRequest = serde_json::from_str(&text)?;
    Ok(echoed.header("x-api-key").map(str::to_owned))
}

fn connected_on(reply: &proto::FleetStatusReply, node_id: &str, version: u64) -> bool {
    fleet_node(reply, node_id).is_some_and(|node| node.connected && node.applied_version == version)
}

#[tokio::test]
async fn a_changed_api_key_is_used_by_the_next_request_through_either_node() {
    let upstream = EchoUpstream::start(&[]).await.unwrap();
    let mut gateway = Gateway::start(2).await.unwrap();
    gateway
        .create_server(server(
            "keyed",
            &upstream.url(),
            api_key_in_header("x-api-key", "key-before-change"),
        ))
        .await
        .unwrap();
    for node in &gateway.nodes {
        assert_eq!(
            upstream_api_key(node, "keyed").await.unwrap().as_deref(),
            Some("key-before-change")
        );
    }
    // Sessions opened before the change: their next request must use the new key too,
    // because a node reads the configuration per request, not per session.
    let mut open_sessions = Vec::new();
    for node in &gateway.nodes {
        open_sessions.push(
            McpHttpSession::connect(&node.mcp_url("keyed"), &[])
                .await
                .unwrap(),
        );
    }

    let written = gateway
        .admin
        .set_app_auth(proto::SetAppAuthRequest {
            server: "keyed".to_owned(),
            app_auth: Some(proto::AppAuth {
                kind: Some(api_key_in_header("x-api-key", "key-after-change")),
            }),
            expected_revision: None,
        })
        .await
        .unwrap()
        .into_inner();

    for node in &mut gateway.nodes {
        node.wait_for_snapshot(written.revision, PROPAGATION_TIMEOUT)
            .await
            .unwrap();
    }
    // Once a node serves the new version, its very next request carries the new key, in a
    // session opened before the change as in a new one.
    for (node, session) in gateway.nodes.iter().zip(&mut open_sessions) {
        let text = session
            .call_tool_text("echo_headers", json!({}))
            .await
            .unwrap();
        let echoed: EchoedRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(
            echoed.header("x-api-key"),
            Some("key-after-change"),
            "in the open session through {}",
            node.node_id()
        );
        assert_eq!(
            upstream_api_key(node, "keyed").await.unwrap().as_deref(),
            Some("key-after-change"),
            "in a new session through {}",
            node.node_id()
        );
    }
    // Fleet status agrees: both nodes ACKed the write's version, the latest one.
    let fleet = wait_for_fleet(
        &mut gateway.admin,
        "both nodes on the new version",
        PROPAGATION_TIMEOUT,
        |reply| {
            ["node-1", "node-2"]
                .iter()
                .all(|node_id| connected_on(reply, node_id, written.revision))
        },
    )
    .await
    .unwrap();
    assert_eq!(fleet.latest_version, written.revision);
    for node in &fleet.nodes {
        assert_eq!(node.last_nack_version, 0, "{node:?}");
        assert_eq!(
            node.address,
            format!(
                "http://{}/",
                gateway
                    .nodes
                    .iter()
                    .find(|running| running.node_id() == node.node_id)
                    .unwrap()
                    .address()
            ),
            "fleet status tells where each node serves"
        );
    }

    // A node that crashes drops out of the connected fleet, keeping its last version.
    gateway.nodes[1].kill_hard().unwrap();
    wait_for_fleet(
        &mut gateway.admin,
        "node-2 disconnected",
        PROPAGATION_TIMEOUT,
        |reply| {
            fleet_node(reply, "node-2")
                .is_some_and(|node| !node.connected && node.applied_version == written.revision)
                && connected_on(reply, "node-1", written.revision)
        },
    )
    .await
    .unwrap();
}

/// How many times the outage scenario is set up anew when the control plane's port was
/// taken by another process while it was down.
const OUTAGE_ATTEMPTS: usize = 3;

/// Nodes were given the control plane's URL, and reconnect to exactly that URL, so the
/// control plane comes back on the port of its first run. Another process may grab that
/// port while it is down; then the whole scenario starts again on a fresh port.
#[tokio::test]
async fn nodes_serve_through_a_control_plane_crash_and_catch_up_when_it_returns() {
    for attempt in 1..=OUTAGE_ATTEMPTS {
        match control_plane_outage().await {
            Ok(()) => return,
            Err(error) if error.downcast_ref::<PortTaken>().is_some() => {
                eprintln!("attempt {attempt}: {error:#}; setting up again");
            }
            Err(error) => panic!("{error:?}"),
        }
    }
    panic!("the control plane's port was taken in each of {OUTAGE_ATTEMPTS} attempts");
}

async fn control_plane_outage() -> anyhow::Result<()> {
    let upstream = EchoUpstream::start(&[]).await?;
    let mut gateway = Gateway::start(2).await?;
    let revision_before = gateway
        .create_server(server(
            "echo",
            &upstream.url(),
            bearer("token-before-outage"),
        ))
        .await?;
    let control_plane_address = gateway.control_plane.address();
    let control_plane_url = gateway.control_plane.url();

    // A streamed call is under way through node-1 when the control plane dies.
    let mut streaming = McpHttpSession::connect(&gateway.node(0).mcp_url("echo"), &[]).await?;
    let in_flight = tokio::spawn(async move {
        streaming
            .call_tool("count", json!({"n": 8, "delay_ms": 100}))
            .await
    });
    gateway.control_plane.kill_hard()?;

    let streamed = in_flight.await??;
    assert_eq!(streamed["isError"], json!(false), "{streamed}");
    for node in &gateway.nodes {
        assert_eq!(
            upstream_authorization(node, "echo").await?,
            "Bearer token-before-outage",
            "{} keeps serving without the control plane",
            node.node_id()
        );
        assert_eq!(node.snapshot_version().await?, Some(revision_before));
    }

    // node-2 crashes too, and starts again while the control plane is still down: it
    // serves its persisted snapshot.
    gateway.nodes[1].kill_hard()?;
    gateway.nodes[1] = Node::start(&gateway.files, "node-2", &control_plane_url, &[]).await?;
    assert_eq!(
        gateway.nodes[1].snapshot_version().await?,
        Some(revision_before),
        "node-2 is ready from its state folder the moment it listens"
    );
    assert_eq!(
        upstream_authorization(&gateway.nodes[1], "echo").await?,
        "Bearer token-before-outage"
    );

    // The control plane returns on its old port with its data folder, and a change made
    // after its return reaches both nodes once they have reconnected (with backoff).
    gateway.control_plane = ControlPlane::start_on(&gateway.files, control_plane_address).await?;
    gateway.admin = gateway.control_plane.admin().await?;
    let servers = gateway
        .admin
        .list_servers(proto::ListServersRequest { at_revision: None })
        .await?
        .into_inner();
    assert_eq!(servers.servers.len(), 1, "the event log survived the crash");
    let revision_after = gateway
        .admin
        .set_app_auth(proto::SetAppAuthRequest {
            server: "echo".to_owned(),
            app_auth: Some(proto::AppAuth {
                kind: Some(bearer("token-after-outage")),
            }),
            expected_revision: None,
        })
        .await?
        .into_inner()
        .revision;
    assert!(revision_after > revision_before);
    // Reconnection backoff grows while the control plane is away (up to 30 s).
    let catch_up_timeout = Duration::from_secs(60);
    for node in &mut gateway.nodes {
        node.wait_for_snapshot(revision_after, catch_up_timeout)
            .await?;
    }
    for node in &gateway.nodes {
        assert_eq!(
            upstream_authorization(node, "echo").await?,
            "Bearer token-after-outage"
        );
    }
    wait_for_fleet(
        &mut gateway.admin,
        "both nodes reconnected on the new version",
        catch_up_timeout,
        |reply| {
            ["node-1", "node-2"]
                .iter()
                .all(|node_id| connected_on(reply, node_id, revision_after))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_node_nacks_a_snapshot_naming_a_forbidden_upstream_and_keeps_serving() {
    // An address every cloud answers on with instance credentials: the classic SSRF target.
    const FORBIDDEN_UPSTREAM: &str = "http://169.254.169.254/latest/mcp";
    let upstream = EchoUpstream::start(&[]).await.unwrap();
    let files = GatewayFiles::create().unwrap();
    let control_plane = ControlPlane::start(&files).await.unwrap();
    let mut admin = control_plane.admin().await.unwrap();
    let mut strict = Node::start(
        &files,
        "strict",
        &control_plane.url(),
        &["--allowed-upstream-hosts", "127.0.0.1,*.svc.cluster.local"],
    )
    .await
    .unwrap();
    let mut open = Node::start(&files, "open", &control_plane.url(), &[])
        .await
        .unwrap();

    let accepted = admin
        .create_server(proto::CreateServerRequest {
            server: Some(server("echo", &upstream.url(), bearer("token-1"))),
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    strict
        .wait_for_snapshot(accepted, PROPAGATION_TIMEOUT)
        .await
        .unwrap();
    open.wait_for_snapshot(accepted, PROPAGATION_TIMEOUT)
        .await
        .unwrap();

    // The control plane accepts the server; the strict node cannot compile the snapshot.
    let refused = admin
        .create_server(proto::CreateServerRequest {
            server: Some(server("metadata", FORBIDDEN_UPSTREAM, bearer("token-2"))),
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    open.wait_for_snapshot(refused, PROPAGATION_TIMEOUT)
        .await
        .unwrap();
    let fleet = wait_for_fleet(
        &mut admin,
        "the strict node's NACK",
        PROPAGATION_TIMEOUT,
        |reply| fleet_node(reply, "strict").is_some_and(|node| node.last_nack_version == refused),
    )
    .await
    .unwrap();
    let strict_status = fleet_node(&fleet, "strict").unwrap();
    assert_eq!(strict_status.applied_version, accepted, "{strict_status:?}");
    assert!(strict_status.connected, "{strict_status:?}");
    assert!(strict_status.last_nack_time.is_some(), "{strict_status:?}");
    for expected in [
        "servers[metadata].upstream_url",
        "169.254.169.254",
        "not allowed",
    ] {
        assert!(
            strict_status.last_nack_error.contains(expected),
            "the NACK error names {expected:?}: {:?}",
            strict_status.last_nack_error
        );
    }
    let open_status = fleet_node(&fleet, "open").unwrap();
    assert_eq!(open_status.last_nack_version, 0, "{open_status:?}");
    assert_eq!(fleet.latest_version, refused);

    // The strict node serves the old snapshot: its servers work, the new one is unknown.
    assert_eq!(strict.snapshot_version().await.unwrap(), Some(accepted));
    assert_eq!(
        upstream_authorization(&strict, "echo").await.unwrap(),
        "Bearer token-1"
    );
    let unknown = call_tool_text(&strict.mcp_url("metadata"), &[], "whoami", json!({}))
        .await
        .unwrap_err();
    assert_eq!(
        unknown
            .downcast_ref::<HttpFailure>()
            .map(|failure| failure.status),
        Some(404),
        "{unknown:#}"
    );

    // Removing the offending server lets the strict node catch up; the NACK stays on
    // record until the next one.
    let repaired = admin
        .delete_server(proto::DeleteServerRequest {
            name: "metadata".to_owned(),
            expected_revision: None,
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    strict
        .wait_for_snapshot(repaired, PROPAGATION_TIMEOUT)
        .await
        .unwrap();
    let fleet = wait_for_fleet(
        &mut admin,
        "both nodes on the repaired version",
        PROPAGATION_TIMEOUT,
        |reply| connected_on(reply, "strict", repaired) && connected_on(reply, "open", repaired),
    )
    .await
    .unwrap();
    assert_eq!(
        fleet_node(&fleet, "strict").unwrap().last_nack_version,
        refused
    );
}

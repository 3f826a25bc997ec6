//! The gateway's authorization-server keys, revocations, the node runtime API and the
//! snapshot stream, over real gRPC connections.

use portcullis_proto::v1 as proto;
use portcullis_proto::v1::config_discovery_client::ConfigDiscoveryClient;
use portcullis_proto::v1::node_runtime_client::NodeRuntimeClient;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::common::{ADMIN_TOKEN, InProcess, NODE_TOKEN, admin, authed, datadog_server};

fn active(state: i32) -> bool {
    state == proto::GatewayKeyState::Active as i32
}

#[tokio::test]
async fn first_start_generates_keys_and_rotation_keeps_the_old_ones_verifying() {
    let control_plane = InProcess::start().await;
    let mut client = control_plane.client().await;
    let keys = client
        .list_gateway_keys(admin(proto::ListGatewayKeysRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys.signing_keys.len(), 1);
    assert_eq!(keys.sealing_keys.len(), 1);
    let first = keys.signing_keys[0].clone();
    assert!(active(first.state));
    assert_eq!(first.algorithm, "ES256");
    assert!(first.public_jwk.contains("\"kty\":\"EC\""));
    assert!(matches!(
        first.private_key.unwrap().value,
        Some(proto::secret::Value::Status(_))
    ));

    client
        .rotate_gateway_keys(admin(proto::RotateGatewayKeysRequest {
            signing: true,
            sealing: false,
        }))
        .await
        .unwrap();
    let keys = client
        .list_gateway_keys(admin(proto::ListGatewayKeysRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys.signing_keys.len(), 2);
    assert_eq!(keys.sealing_keys.len(), 1, "only signing was rotated");
    let old = keys
        .signing_keys
        .iter()
        .find(|key| key.kid == first.kid)
        .unwrap();
    assert_eq!(old.state, proto::GatewayKeyState::VerifyOnly as i32);
    let new = keys
        .signing_keys
        .iter()
        .find(|key| key.kid != first.kid)
        .unwrap();
    assert!(active(new.state));

    let status = client
        .retire_gateway_key(admin(proto::RetireGatewayKeyRequest {
            kid: new.kid.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("rotate first"),
        "{}",
        status.message()
    );
    client
        .retire_gateway_key(admin(proto::RetireGatewayKeyRequest {
            kid: first.kid.clone(),
        }))
        .await
        .unwrap();
    let keys = client
        .list_gateway_keys(admin(proto::ListGatewayKeysRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys.signing_keys.len(), 1);
    let status = client
        .retire_gateway_key(admin(proto::RetireGatewayKeyRequest { kid: first.kid }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn node_runtime_consumes_once_and_revokes_grants_into_the_snapshot() {
    let control_plane = InProcess::start().await;
    let mut runtime = NodeRuntimeClient::connect(control_plane.endpoint.clone())
        .await
        .unwrap();
    let consume = |id: &str, token: &str| {
        authed(
            token,
            proto::ConsumeOnceRequest {
                namespace: "authorization_code".into(),
                id: id.into(),
                expires_at_unix: time::OffsetDateTime::now_utc().unix_timestamp() + 60,
            },
        )
    };
    let status = runtime
        .consume_once(consume("c1", ADMIN_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        runtime
            .consume_once(consume("c1", NODE_TOKEN))
            .await
            .unwrap()
            .into_inner()
            .first_use
    );
    assert!(
        !runtime
            .consume_once(consume("c1", NODE_TOKEN))
            .await
            .unwrap()
            .into_inner()
            .first_use
    );
    let bad = runtime
        .consume_once(authed(
            NODE_TOKEN,
            proto::ConsumeOnceRequest {
                namespace: "whatever".into(),
                id: "x".into(),
                expires_at_unix: 0,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    // A node sees the revocation and the keys in its snapshot stream.
    let mut discovery = ConfigDiscoveryClient::connect(control_plane.endpoint.clone())
        .await
        .unwrap();
    let (outbound, inbound) = tokio::sync::mpsc::channel(8);
    outbound
        .send(proto::NodeMessage {
            message: Some(proto::node_message::Message::Hello(proto::NodeHello {
                node_id: "node-a".into(),
                address: "http://127.0.0.1:1".into(),
                last_applied_version: 0,
                software_version: "test".into(),
            })),
        })
        .await
        .unwrap();
    let mut updates = discovery
        .stream_snapshots(authed(
            NODE_TOKEN,
            tokio_stream::wrappers::ReceiverStream::new(inbound),
        ))
        .await
        .unwrap()
        .into_inner();
    let first = updates.next().await.unwrap().unwrap();
    let keys = first.snapshot.unwrap().gateway_keys.unwrap();
    assert!(matches!(
        keys.signing_keys[0].private_key.as_ref().unwrap().value,
        Some(proto::secret::Value::Plaintext(_))
    ));
    runtime
        .revoke_grant(authed(
            NODE_TOKEN,
            proto::RevokeGrantRequest {
                grant_id: "grant-1".into(),
                expires_at_unix: time::OffsetDateTime::now_utc().unix_timestamp() + 3600,
                reason: "refresh_token_reuse".into(),
            },
        ))
        .await
        .unwrap();
    let second = updates.next().await.unwrap().unwrap();
    assert!(second.version > first.version);
    let revoked = second.snapshot.unwrap().revoked_grants;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].grant_id, "grant-1");

    // ACK and NACK show up in fleet status.
    outbound
        .send(proto::NodeMessage {
            message: Some(proto::node_message::Message::Ack(proto::SnapshotAck {
                version: second.version,
                nonce: second.nonce.clone(),
            })),
        })
        .await
        .unwrap();
    let mut admin_client = control_plane.client().await;
    admin_client
        .create_server(admin(proto::CreateServerRequest {
            server: Some(datadog_server("datadog", "k")),
        }))
        .await
        .unwrap();
    let third = updates.next().await.unwrap().unwrap();
    outbound
        .send(proto::NodeMessage {
            message: Some(proto::node_message::Message::Nack(proto::SnapshotNack {
                version: third.version,
                nonce: third.nonce,
                error: "servers[datadog]: upstream host not allowed on this node".into(),
            })),
        })
        .await
        .unwrap();
    // Poll fleet status until the NACK arrives (the stream is asynchronous).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let node = loop {
        let fleet = admin_client
            .fleet_status(admin(proto::FleetStatusRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(fleet.latest_version, third.version);
        let node = fleet
            .nodes
            .into_iter()
            .find(|n| n.node_id == "node-a")
            .unwrap();
        if node.last_nack_version == third.version || tokio::time::Instant::now() > deadline {
            break node;
        }
        tokio::task::yield_now().await;
    };
    assert!(node.connected);
    assert_eq!(node.applied_version, second.version);
    assert_eq!(node.last_nack_version, third.version);
    assert!(node.last_nack_error.contains("not allowed"));
}

#[tokio::test]
async fn signing_a_user_out_is_an_event_in_the_snapshot() {
    let control_plane = InProcess::start().await;
    let mut client = control_plane.client().await;
    let reply = client
        .revoke_user_sessions(admin(proto::RevokeUserSessionsRequest {
            identity_provider: "okta".into(),
            subject: "alice".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let history = client
        .get_history(admin(proto::GetHistoryRequest {
            aggregate: Some(proto::AggregateRef {
                kind: proto::AggregateKind::Gateway as i32,
                id: "revocations".into(),
            }),
            after_sequence: 0,
            limit: 10,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.events.len(), 1);
    assert_eq!(history.events[0].sequence, reply.revision);
    assert!(history.events[0].summary.contains("signed out alice"));
    let bad = client
        .revoke_user_sessions(admin(proto::RevokeUserSessionsRequest {
            identity_provider: "Not A Slug".into(),
            subject: "alice".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

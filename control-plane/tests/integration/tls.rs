//! TLS on the control plane's listener and mTLS for nodes, on the real binary.

use std::path::Path;

use portcullis_proto::v1 as proto;
use portcullis_proto::v1::admin_service_client::AdminServiceClient;
use portcullis_proto::v1::config_discovery_client::ConfigDiscoveryClient;
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::common::{ADMIN_TOKEN, ChildControlPlane, NODE_TOKEN, authed};

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

async fn channel(
    url: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert), read(key)));
    }
    Endpoint::from_shared(url.to_owned())?
        .tls_config(tls)?
        .connect()
        .await
}

fn hello(node_id: &str) -> proto::NodeMessage {
    proto::NodeMessage {
        message: Some(proto::node_message::Message::Hello(proto::NodeHello {
            node_id: node_id.into(),
            address: String::new(),
            last_applied_version: 0,
            software_version: "test".into(),
        })),
    }
}

/// The first update a node gets, or the status that refused it.
async fn first_update(
    channel: Channel,
    node_id: &str,
    token: Option<&str>,
) -> Result<u64, tonic::Status> {
    let mut client = ConfigDiscoveryClient::new(channel);
    let messages = tokio_stream::iter(vec![hello(node_id)]);
    let request = match token {
        Some(token) => authed(token, messages),
        None => tonic::Request::new(messages),
    };
    let mut updates = client.stream_snapshots(request).await?.into_inner();
    match updates.next().await {
        Some(Ok(update)) => Ok(update.version),
        Some(Err(status)) => Err(status),
        None => Err(tonic::Status::unknown("stream ended")),
    }
}

#[tokio::test]
async fn tls_listener_and_node_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let other = dir.path().join("other-ca");
    for (out, nodes) in [(&certs, vec!["node-a"]), (&other, vec!["node-a"])] {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis-control-plane"))
            .arg("dev-certs")
            .arg("--out")
            .arg(out)
            .args(nodes.iter().flat_map(|node| ["--node", node]))
            .status()
            .unwrap();
        assert!(status.success());
    }
    let control_plane = ChildControlPlane::start(
        dir.path(),
        &[
            "--tls-cert-file",
            certs.join("server.pem").to_str().unwrap(),
            "--tls-key-file",
            certs.join("server.key").to_str().unwrap(),
            "--client-ca-file",
            certs.join("ca.pem").to_str().unwrap(),
        ],
    )
    .await;
    let https = control_plane.endpoint.replace("http://", "https://");
    let ca = certs.join("ca.pem");

    // A plaintext client is refused by the TLS listener.
    let mut plaintext = AdminServiceClient::connect(control_plane.endpoint.clone())
        .await
        .unwrap();
    assert!(
        plaintext
            .who_am_i(authed(ADMIN_TOKEN, proto::WhoAmIRequest {}))
            .await
            .is_err()
    );

    // Admins need no certificate: TLS plus their token.
    let mut admin = AdminServiceClient::new(channel(&https, &ca, None).await.unwrap());
    let who = admin
        .who_am_i(authed(ADMIN_TOKEN, proto::WhoAmIRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(who.role, "admin");

    // A node with its certificate gets its snapshot, under its own name only.
    let node_cert = (certs.join("node-node-a.pem"), certs.join("node-node-a.key"));
    let certified = channel(&https, &ca, Some((&node_cert.0, &node_cert.1)))
        .await
        .unwrap();
    assert!(
        first_update(certified.clone(), "node-a", None)
            .await
            .is_ok()
    );
    let impersonation = first_update(certified, "node-b", None).await.unwrap_err();
    assert_eq!(impersonation.code(), tonic::Code::PermissionDenied);

    // Without a certificate, even with a valid node token: nothing.
    let anonymous = channel(&https, &ca, None).await.unwrap();
    let refused = first_update(anonymous, "node-a", Some(NODE_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // A certificate from another CA fails the handshake or the call.
    let foreign = (other.join("node-node-a.pem"), other.join("node-node-a.key"));
    match channel(&https, &ca, Some((&foreign.0, &foreign.1))).await {
        Err(_) => {}
        Ok(channel) => assert!(first_update(channel, "node-a", None).await.is_err()),
    }
}

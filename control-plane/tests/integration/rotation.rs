//! Master key rotation on the real binary: every secret and every vault token still
//! decrypts after the rotation, and the old key can then be retired.

use base64::Engine as _;
use portcullis_proto::v1 as proto;
use portcullis_proto::v1::config_discovery_client::ConfigDiscoveryClient;
use portcullis_proto::v1::node_runtime_client::NodeRuntimeClient;
use tokio_stream::StreamExt;

use crate::common::{ChildControlPlane, NODE_TOKEN, admin, authed, datadog_server, plaintext};

/// The API key of the `datadog` server as a node receives it.
async fn api_key_seen_by_a_node(endpoint: &str) -> String {
    let mut discovery = ConfigDiscoveryClient::connect(endpoint.to_owned())
        .await
        .unwrap();
    let hello = proto::NodeMessage {
        message: Some(proto::node_message::Message::Hello(proto::NodeHello {
            node_id: "rotation-test".into(),
            address: String::new(),
            last_applied_version: 0,
            software_version: "test".into(),
        })),
    };
    let mut updates = discovery
        .stream_snapshots(authed(NODE_TOKEN, tokio_stream::iter(vec![hello])))
        .await
        .unwrap()
        .into_inner();
    let snapshot = updates.next().await.unwrap().unwrap().snapshot.unwrap();
    let server = snapshot
        .servers
        .into_iter()
        .find(|s| s.name == "datadog")
        .unwrap();
    match server.app_auth.unwrap().kind.unwrap() {
        proto::app_auth::Kind::ApiKey(key) => match key.key_value.unwrap().value.unwrap() {
            proto::secret::Value::Plaintext(value) => value,
            other => panic!("a node must get plaintext, got {other:?}"),
        },
        other => panic!("unexpected app auth {other:?}"),
    }
}

fn user() -> Option<proto::UserRef> {
    Some(proto::UserRef {
        identity_provider: "okta".into(),
        subject: "alice".into(),
    })
}

async fn vault_token(endpoint: &str) -> String {
    let mut runtime = NodeRuntimeClient::connect(endpoint.to_owned())
        .await
        .unwrap();
    runtime
        .get_user_token(authed(
            NODE_TOKEN,
            proto::GetUserTokenRequest {
                app_id: "github".into(),
                user: user(),
                min_valid_secs: 0,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .access_token
}

#[tokio::test]
async fn rotating_the_master_key_keeps_every_secret_and_token() {
    let dir = tempfile::tempdir().unwrap();
    let old_key = std::fs::read_to_string(dir.path().join("master.key")).ok();
    assert!(old_key.is_none());
    let mut control_plane = ChildControlPlane::start(dir.path(), &[]).await;
    let mut client = control_plane.client().await;
    client
        .create_server(admin(proto::CreateServerRequest {
            server: Some(datadog_server("datadog", "dd-key-before-rotation")),
        }))
        .await
        .unwrap();
    client
        .put_o_auth_app(admin(proto::PutOAuthAppRequest {
            oauth_app: Some(crate::common::oauth_app("github")),
            expected_revision: None,
        }))
        .await
        .unwrap();
    let mut runtime = NodeRuntimeClient::connect(control_plane.endpoint.clone())
        .await
        .unwrap();
    runtime
        .put_user_token(authed(
            NODE_TOKEN,
            proto::PutUserTokenRequest {
                app_id: "github".into(),
                user: user(),
                access_token: "alice-github-token".into(),
                refresh_token: "alice-refresh".into(),
                token_type: "Bearer".into(),
                expires_at_unix: 0,
                scope: "repo".into(),
            },
        ))
        .await
        .unwrap();
    let fingerprint_before = format!(
        "{:?}",
        client
            .get_server(admin(proto::GetServerRequest {
                name: "datadog".into(),
                at_revision: None,
            }))
            .await
            .unwrap()
            .into_inner()
    );
    control_plane.stop().await;

    // Rotate: the new key in place, the old one as previous.
    let key_path = dir.path().join("master.key");
    let old_path = dir.path().join("old-master.key");
    std::fs::rename(&key_path, &old_path).unwrap();
    std::fs::write(
        &key_path,
        base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
    )
    .unwrap();
    let mut control_plane = ChildControlPlane::start(
        dir.path(),
        &["--previous-master-key-file", old_path.to_str().unwrap()],
    )
    .await;
    assert_eq!(
        api_key_seen_by_a_node(&control_plane.endpoint).await,
        "dd-key-before-rotation"
    );
    assert_eq!(
        vault_token(&control_plane.endpoint).await,
        "alice-github-token"
    );
    control_plane.stop().await;

    // Retire the old key: the new one alone opens everything, fingerprints unchanged.
    std::fs::remove_file(&old_path).unwrap();
    let mut control_plane = ChildControlPlane::start(dir.path(), &[]).await;
    assert_eq!(
        api_key_seen_by_a_node(&control_plane.endpoint).await,
        "dd-key-before-rotation"
    );
    assert_eq!(
        vault_token(&control_plane.endpoint).await,
        "alice-github-token"
    );
    let mut client = control_plane.client().await;
    let fingerprint_after = format!(
        "{:?}",
        client
            .get_server(admin(proto::GetServerRequest {
                name: "datadog".into(),
                at_revision: None,
            }))
            .await
            .unwrap()
            .into_inner()
    );
    assert_eq!(fingerprint_before, fingerprint_after);
    // New secrets are sealed under the new key and still work.
    client
        .set_app_auth(admin(proto::SetAppAuthRequest {
            server: "datadog".into(),
            app_auth: crate::common::api_key_auth("dd-key-after-rotation"),
            expected_revision: None,
        }))
        .await
        .unwrap();
    let _ = plaintext("unused");
    control_plane.stop().await;

    // The old key alone is refused with a clear error and exit code 64.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis-control-plane"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--access-file")
        .arg(dir.path().join("access.yaml"))
        .env("PORTCULLIS_MASTER_KEY", crate::common::master_key_text())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not match"));
}

//! No secret is written in plaintext: not in the sled files, not in the logs.

use std::path::Path;

use portcullis_proto::v1 as proto;

use crate::common::{ChildControlPlane, admin, plaintext};

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[tokio::test]
async fn known_secrets_never_reach_disk_or_logs() {
    let dir = tempfile::tempdir().unwrap();
    let mut control_plane =
        ChildControlPlane::start(dir.path(), &["--state-snapshot-every", "3"]).await;
    let mut client = control_plane.client().await;
    let secret = |kind: &str| format!("S3CRET-{kind}-{}", uuid::Uuid::new_v4().simple());
    let secrets: Vec<String> = [
        "apikey", "bearer", "basic", "client", "idp", "app", "org", "user", "custom", "service",
        "exchange",
    ]
    .iter()
    .map(|kind| secret(kind))
    .collect();
    let [
        apikey,
        bearer,
        basic,
        client_secret,
        idp,
        app,
        org,
        user,
        custom,
        service,
        exchange,
    ] = secrets.clone().try_into().unwrap();

    let mut server = crate::common::datadog_server("all-kinds", &apikey);
    client
        .create_server(admin(proto::CreateServerRequest {
            server: Some(server.clone()),
        }))
        .await
        .unwrap();
    for app_auth in [
        crate::common::bearer_auth(&bearer),
        Some(proto::AppAuth {
            kind: Some(proto::app_auth::Kind::Basic(proto::BasicAuth {
                username: "svc".into(),
                password: plaintext(&basic),
            })),
        }),
        Some(proto::AppAuth {
            kind: Some(proto::app_auth::Kind::ClientCredentials(
                proto::ClientCredentials {
                    token_url: "https://idp.example.com/token".into(),
                    client_id: "svc".into(),
                    client_secret: plaintext(&client_secret),
                    scopes: vec![],
                    audience: String::new(),
                },
            )),
        }),
    ] {
        client
            .set_app_auth(admin(proto::SetAppAuthRequest {
                server: "all-kinds".into(),
                app_auth,
                expected_revision: None,
            }))
            .await
            .unwrap();
    }
    let mut idp_entry = crate::common::identity_provider("okta");
    idp_entry.client_secret = plaintext(&idp);
    client
        .put_identity_provider(admin(proto::PutIdentityProviderRequest {
            identity_provider: Some(idp_entry),
            expected_revision: None,
        }))
        .await
        .unwrap();
    let mut app_entry = crate::common::oauth_app("github");
    app_entry.client_secret = plaintext(&app);
    client
        .put_o_auth_app(admin(proto::PutOAuthAppRequest {
            oauth_app: Some(app_entry),
            expected_revision: None,
        }))
        .await
        .unwrap();
    client
        .put_credential(admin(proto::PutCredentialRequest {
            id: "pat".into(),
            description: String::new(),
            org_value: plaintext(&org),
            clear_org_value: false,
            expected_revision: None,
        }))
        .await
        .unwrap();
    client
        .set_user_credential(admin(proto::SetUserCredentialRequest {
            credential_id: "pat".into(),
            user: "alice".into(),
            value: user.clone(),
            expected_revision: None,
        }))
        .await
        .unwrap();
    let headers = [
        proto::OutboundHeader {
            header_name: "x-custom".into(),
            prefix: String::new(),
            source: Some(proto::outbound_header::Source::Custom(
                proto::CustomHeader {
                    value: Some(proto::custom_header::Value::Secret(
                        plaintext(&custom).unwrap(),
                    )),
                },
            )),
        },
        proto::OutboundHeader {
            header_name: "x-service".into(),
            prefix: "Bearer ".into(),
            source: Some(proto::outbound_header::Source::ServiceToken(
                proto::ServiceToken {
                    token_url: "https://idp.example.com/token".into(),
                    client_id: "svc".into(),
                    client_secret: plaintext(&service),
                    scopes: vec![],
                    audience: String::new(),
                },
            )),
        },
        proto::OutboundHeader {
            header_name: "x-obo".into(),
            prefix: "Bearer ".into(),
            source: Some(proto::outbound_header::Source::OnBehalfOf(
                proto::OnBehalfOf {
                    exchange_url: "https://idp.example.com/token".into(),
                    client_id: "svc".into(),
                    client_secret: plaintext(&exchange),
                    audience: "api".into(),
                    scopes: vec![],
                    requested_token_type: String::new(),
                },
            )),
        },
    ];
    for header in headers {
        client
            .put_outbound_header(admin(proto::PutOutboundHeaderRequest {
                server: "all-kinds".into(),
                header: Some(header),
                expected_revision: None,
            }))
            .await
            .unwrap();
    }
    // Reads, history and a declarative apply with a secret in it.
    server.description = "via apply".into();
    server.app_auth = crate::common::api_key_auth(&apikey);
    let reply = client
        .apply(admin(proto::ApplyRequest {
            desired: Some(proto::ConfigState {
                servers: vec![server],
                ..Default::default()
            }),
            dry_run: false,
            prune: false,
            expected_revision: None,
        }))
        .await
        .unwrap_or_else(|status| {
            panic!(
                "{status:?}: {}",
                std::fs::read_to_string(&control_plane.stderr_path).unwrap_or_default()
            )
        })
        .into_inner();
    let state = client
        .get_state(admin(proto::GetStateRequest { at_revision: None }))
        .await
        .unwrap()
        .into_inner();
    let events = client
        .list_events(admin(proto::ListEventsRequest {
            after_sequence: 0,
            limit: 1000,
        }))
        .await
        .unwrap()
        .into_inner();
    let replies = format!("{reply:?}{state:?}{events:?}");
    for secret in &secrets {
        assert!(
            !replies.contains(secret.as_str()),
            "an API reply leaked {secret}"
        );
    }
    control_plane.stop().await;

    let mut files = Vec::new();
    files_under(dir.path(), &mut files);
    assert!(
        files
            .iter()
            .any(|f| f.to_string_lossy().contains("control-plane-"))
    );
    for file in files {
        if file.file_name().is_some_and(|name| name == "master.key") {
            continue;
        }
        let bytes = std::fs::read(&file).unwrap();
        for secret in &secrets {
            assert!(
                !bytes
                    .windows(secret.len())
                    .any(|window| window == secret.as_bytes()),
                "{} contains the plaintext secret {secret}",
                file.display()
            );
        }
    }
}

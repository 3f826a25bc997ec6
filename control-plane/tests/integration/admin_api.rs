//! The admin API over real gRPC connections: every command, every validation error, and
//! the roles.

use portcullis_proto::v1 as proto;
use tonic::Code;

use crate::common::{
    ADMIN_TOKEN, AUDITOR_TOKEN, BOOTSTRAP_REVISION, InProcess, NODE_TOKEN, admin, api_key_auth,
    authed, bearer_auth, datadog_server, identity_provider, oauth_app, passthrough_agent,
    plaintext, status_of,
};

async fn revision(
    client: &mut proto::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
) -> u64 {
    client
        .get_state(admin(proto::GetStateRequest { at_revision: None }))
        .await
        .unwrap()
        .into_inner()
        .revision
}

/// Asserts that a write fails with `code` and a message containing `needle`, and that the
/// configuration revision did not move.
macro_rules! refused {
    ($client:expr, $call:expr, $code:expr, $needle:expr) => {{
        let before = revision(&mut $client).await;
        let status = $call.await.expect_err("the command should be refused");
        assert_eq!(status.code(), $code, "{}", status.message());
        assert!(
            status.message().contains($needle),
            "message {:?} should contain {:?}",
            status.message(),
            $needle
        );
        assert_eq!(
            revision(&mut $client).await,
            before,
            "a refused command changed the log"
        );
    }};
}

#[tokio::test]
async fn every_command_round_trips_over_grpc() {
    let control_plane = InProcess::start().await;
    let mut client = control_plane.client().await;

    let who = client
        .who_am_i(admin(proto::WhoAmIRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((who.actor.as_str(), who.role.as_str()), ("ops", "admin"));

    // Catalogs first.
    let reply = client
        .put_identity_provider(admin(proto::PutIdentityProviderRequest {
            identity_provider: Some(identity_provider("okta")),
            expected_revision: Some(0),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.revision, reply.aggregate_revision),
        (BOOTSTRAP_REVISION + 1, 1)
    );
    client
        .put_o_auth_app(admin(proto::PutOAuthAppRequest {
            oauth_app: Some(oauth_app("github")),
            expected_revision: None,
        }))
        .await
        .unwrap();
    client
        .put_credential(admin(proto::PutCredentialRequest {
            id: "github-pat".into(),
            description: "personal access tokens".into(),
            org_value: plaintext("org-pat"),
            clear_org_value: false,
            expected_revision: None,
        }))
        .await
        .unwrap();
    client
        .set_user_credential(admin(proto::SetUserCredentialRequest {
            credential_id: "github-pat".into(),
            user: "alice@example.com".into(),
            value: "alice-pat".into(),
            expected_revision: None,
        }))
        .await
        .unwrap();

    // A server, then each part of it changed on its own.
    client
        .create_server(admin(proto::CreateServerRequest {
            server: Some(datadog_server("datadog", "dd-key-1")),
        }))
        .await
        .unwrap();
    client
        .set_agent_auth(admin(proto::SetAgentAuthRequest {
            server: "datadog".into(),
            agent_auth: Some(proto::AgentAuth {
                mode: Some(proto::agent_auth::Mode::Interactive(
                    proto::InteractiveSso {
                        identity_provider: "okta".into(),
                        scopes: vec!["openid".into()],
                    },
                )),
                restricted_inbound_headers: vec![],
            }),
            expected_revision: Some(1),
        }))
        .await
        .unwrap();
    client
        .set_app_auth(admin(proto::SetAppAuthRequest {
            server: "datadog".into(),
            app_auth: Some(proto::AppAuth {
                kind: Some(proto::app_auth::Kind::OauthAuthorization(
                    proto::OAuthAuthorization {
                        app_id: "github".into(),
                        scopes: vec!["repo".into()],
                    },
                )),
            }),
            expected_revision: Some(2),
        }))
        .await
        .unwrap();
    let put = client
        .put_outbound_header(admin(proto::PutOutboundHeaderRequest {
            server: "datadog".into(),
            header: Some(proto::OutboundHeader {
                header_name: "X-GitHub-PAT".into(),
                prefix: "token ".into(),
                source: Some(proto::outbound_header::Source::VaultCredential(
                    proto::VaultCredential {
                        credential_id: "github-pat".into(),
                        scope: proto::CredentialScope::PerUser as i32,
                    },
                )),
            }),
            expected_revision: Some(3),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(put.aggregate_revision, 4);

    let view = client
        .get_server(admin(proto::GetServerRequest {
            name: "datadog".into(),
            at_revision: None,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(view.aggregate_revision, 4);
    let server = view.server.unwrap();
    assert_eq!(server.outbound_headers.len(), 1);
    assert_eq!(server.outbound_headers[0].header_name, "x-github-pat");

    // The server as it was at its creation, with its API key shown only as a status.
    let at_creation = client
        .get_server(admin(proto::GetServerRequest {
            name: "datadog".into(),
            at_revision: Some(BOOTSTRAP_REVISION + 5),
        }))
        .await
        .unwrap()
        .into_inner()
        .server
        .unwrap();
    let Some(proto::app_auth::Kind::ApiKey(api_key)) = at_creation.app_auth.unwrap().kind else {
        panic!("expected the api key at revision 5");
    };
    let status = status_of(&api_key.key_value);
    assert!(status.set);
    assert!(status.fingerprint.starts_with("hmac-sha256:"));

    client
        .remove_outbound_header(admin(proto::RemoveOutboundHeaderRequest {
            server: "datadog".into(),
            header_name: "x-github-pat".into(),
            expected_revision: None,
        }))
        .await
        .unwrap();
    client
        .update_server(admin(proto::UpdateServerRequest {
            server: Some(datadog_server("datadog", "dd-key-2")),
            expected_revision: Some(5),
        }))
        .await
        .unwrap();

    let servers = client
        .list_servers(admin(proto::ListServersRequest { at_revision: None }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(servers.servers.len(), 1);

    // History of the server: who changed what.
    let history = client
        .get_history(admin(proto::GetHistoryRequest {
            aggregate: Some(proto::AggregateRef {
                kind: proto::AggregateKind::Server as i32,
                id: "datadog".into(),
            }),
            after_sequence: 0,
            limit: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    let types: Vec<&str> = history
        .events
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "server_registered",
            "agent_auth_set",
            "app_auth_set",
            "outbound_header_put",
            "outbound_header_removed",
            "server_updated"
        ]
    );
    assert!(history.events.iter().all(|e| e.actor == "ops"));
    for event in &history.events {
        assert!(
            !event.payload_json.contains("dd-key"),
            "{}",
            event.payload_json
        );
        assert!(
            !event.payload_json.contains("ciphertext"),
            "{}",
            event.payload_json
        );
    }
    assert!(history.events[0].payload_json.contains("hmac-sha256:"));

    // Paging through the global log.
    let page = client
        .list_events(admin(proto::ListEventsRequest {
            after_sequence: 0,
            limit: 4,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.len(), 4);
    assert_eq!(page.next_after_sequence, 4);

    // Deletions: the server first, since it references the catalog entries.
    client
        .delete_server(admin(proto::DeleteServerRequest {
            name: "datadog".into(),
            expected_revision: None,
        }))
        .await
        .unwrap();
    client
        .delete_user_credential(admin(proto::DeleteUserCredentialRequest {
            credential_id: "github-pat".into(),
            user: "alice@example.com".into(),
            expected_revision: None,
        }))
        .await
        .unwrap();
    client
        .delete_credential(admin(proto::DeleteCatalogEntryRequest {
            id: "github-pat".into(),
            expected_revision: None,
        }))
        .await
        .unwrap();
    client
        .delete_o_auth_app(admin(proto::DeleteCatalogEntryRequest {
            id: "github".into(),
            expected_revision: None,
        }))
        .await
        .unwrap();
    client
        .delete_identity_provider(admin(proto::DeleteCatalogEntryRequest {
            id: "okta".into(),
            expected_revision: None,
        }))
        .await
        .unwrap();
    let state = client
        .get_state(admin(proto::GetStateRequest { at_revision: None }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.revision, BOOTSTRAP_REVISION + 15);
    assert!(state.servers.is_empty() && state.credentials.is_empty());
    let fleet = client
        .fleet_status(admin(proto::FleetStatusRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(fleet.nodes.is_empty());
}

#[tokio::test]
async fn every_validation_error_names_its_field_and_changes_nothing() {
    let control_plane = InProcess::start().await;
    let mut client = control_plane.client().await;
    client
        .create_server(admin(proto::CreateServerRequest {
            server: Some(datadog_server("datadog", "k")),
        }))
        .await
        .unwrap();

    // Unknown server.
    refused!(
        client,
        client.set_app_auth(admin(proto::SetAppAuthRequest {
            server: "nope".into(),
            app_auth: bearer_auth("t"),
            expected_revision: None,
        })),
        Code::NotFound,
        "server \"nope\" not found"
    );
    // Duplicate name.
    refused!(
        client,
        client.create_server(admin(proto::CreateServerRequest {
            server: Some(datadog_server("datadog", "k")),
        })),
        Code::AlreadyExists,
        "server \"datadog\" already exists"
    );
    // Bad URL and a bad name, reported together.
    let mut bad = datadog_server("Bad Name", "k");
    bad.upstream_url = "not a url".into();
    refused!(
        client,
        client.create_server(admin(proto::CreateServerRequest { server: Some(bad) })),
        Code::InvalidArgument,
        "server.name: must be a slug"
    );
    let mut bad = datadog_server("ok", "k");
    bad.upstream_url = "ftp://example.com/mcp".into();
    refused!(
        client,
        client.create_server(admin(proto::CreateServerRequest { server: Some(bad) })),
        Code::InvalidArgument,
        "server.upstream_url: scheme must be http or https"
    );
    // Malformed JWKS, both and neither of URL and JSON.
    let jwt = |url: &str, json: &str| proto::SetAgentAuthRequest {
        server: "datadog".into(),
        agent_auth: Some(proto::AgentAuth {
            mode: Some(proto::agent_auth::Mode::Passthrough(
                proto::PassthroughAgent {
                    jwt_validation: Some(proto::JwtValidation {
                        jwks_url: url.into(),
                        jwks_json: json.into(),
                        issuer: String::new(),
                        audience: String::new(),
                    }),
                },
            )),
            restricted_inbound_headers: vec![],
        }),
        expected_revision: None,
    };
    refused!(
        client,
        client.set_agent_auth(admin(jwt("", "{\"keys\": [{\"kty\": \"RSA\"}]}"))),
        Code::InvalidArgument,
        "agent_auth.passthrough.jwt_validation.jwks_json: malformed JWKS"
    );
    refused!(
        client,
        client.set_agent_auth(admin(jwt("https://idp.example.com/jwks", "{\"keys\":[]}"))),
        Code::InvalidArgument,
        "agent_auth.passthrough.jwt_validation: set exactly one of jwks_url and jwks_json, not both"
    );
    refused!(
        client,
        client.set_agent_auth(admin(jwt("", ""))),
        Code::InvalidArgument,
        "agent_auth.passthrough.jwt_validation: set exactly one of jwks_url and jwks_json"
    );
    refused!(
        client,
        client.set_agent_auth(admin(jwt("http://idp.example.com/jwks", ""))),
        Code::InvalidArgument,
        "jwks_url: must use https"
    );
    // A header name that is not an HTTP token; a value with CR/LF.
    let header = |name: &str, value: &str| proto::PutOutboundHeaderRequest {
        server: "datadog".into(),
        header: Some(proto::OutboundHeader {
            header_name: name.into(),
            prefix: String::new(),
            source: Some(proto::outbound_header::Source::Custom(
                proto::CustomHeader {
                    value: Some(proto::custom_header::Value::StaticValue(value.into())),
                },
            )),
        }),
        expected_revision: None,
    };
    refused!(
        client,
        client.put_outbound_header(admin(header("x team", "a"))),
        Code::InvalidArgument,
        "header.header_name: not an HTTP header name"
    );
    refused!(
        client,
        client.put_outbound_header(admin(header("x-team", "a\r\nx-evil: 1"))),
        Code::InvalidArgument,
        "header.custom.static_value: contains a control character"
    );
    refused!(
        client,
        client.put_outbound_header(admin(header("dd-api-key", "a"))),
        Code::InvalidArgument,
        "already set by app authentication"
    );
    refused!(
        client,
        client.set_app_auth(admin(proto::SetAppAuthRequest {
            server: "datadog".into(),
            app_auth: bearer_auth("tok\nen"),
            expected_revision: None,
        })),
        Code::InvalidArgument,
        "app_auth.bearer.token: cannot be sent in a header"
    );
    // A stale expected revision.
    refused!(
        client,
        client.set_app_auth(admin(proto::SetAppAuthRequest {
            server: "datadog".into(),
            app_auth: bearer_auth("t"),
            expected_revision: Some(7),
        })),
        Code::Aborted,
        "not the expected revision 7"
    );
    // References to a missing IdP, OAuth app and credential.
    refused!(
        client,
        client.set_agent_auth(admin(proto::SetAgentAuthRequest {
            server: "datadog".into(),
            agent_auth: Some(proto::AgentAuth {
                mode: Some(proto::agent_auth::Mode::Interactive(
                    proto::InteractiveSso {
                        identity_provider: "okta".into(),
                        scopes: vec![],
                    }
                )),
                restricted_inbound_headers: vec![],
            }),
            expected_revision: None,
        })),
        Code::FailedPrecondition,
        "agent_auth.interactive.identity_provider: no identity provider \"okta\""
    );
    refused!(
        client,
        client.set_app_auth(admin(proto::SetAppAuthRequest {
            server: "datadog".into(),
            app_auth: Some(proto::AppAuth {
                kind: Some(proto::app_auth::Kind::OauthAuthorization(
                    proto::OAuthAuthorization {
                        app_id: "gmail".into(),
                        scopes: vec![],
                    },
                )),
            }),
            expected_revision: None,
        })),
        Code::FailedPrecondition,
        "app_auth.oauth_authorization.app_id: no OAuth app \"gmail\""
    );
    refused!(
        client,
        client.put_outbound_header(admin(proto::PutOutboundHeaderRequest {
            server: "datadog".into(),
            header: Some(proto::OutboundHeader {
                header_name: "x-key".into(),
                prefix: String::new(),
                source: Some(proto::outbound_header::Source::VaultCredential(
                    proto::VaultCredential {
                        credential_id: "missing".into(),
                        scope: proto::CredentialScope::OrgWide as i32,
                    },
                )),
            }),
            expected_revision: None,
        })),
        Code::FailedPrecondition,
        "outbound_headers[x-key].vault_credential.credential_id: no stored credential \"missing\""
    );
    // Switching app auth kind without giving the new secret.
    refused!(
        client,
        client.set_app_auth(admin(proto::SetAppAuthRequest {
            server: "datadog".into(),
            app_auth: Some(proto::AppAuth {
                kind: Some(proto::app_auth::Kind::Bearer(proto::BearerToken {
                    token: None
                })),
            }),
            expected_revision: None,
        })),
        Code::InvalidArgument,
        "app_auth.bearer.token: required"
    );
    // A catalog entry in use cannot be deleted.
    client
        .put_identity_provider(admin(proto::PutIdentityProviderRequest {
            identity_provider: Some(identity_provider("okta")),
            expected_revision: None,
        }))
        .await
        .unwrap();
    client
        .set_agent_auth(admin(proto::SetAgentAuthRequest {
            server: "datadog".into(),
            agent_auth: Some(proto::AgentAuth {
                mode: Some(proto::agent_auth::Mode::Interactive(
                    proto::InteractiveSso {
                        identity_provider: "okta".into(),
                        scopes: vec![],
                    },
                )),
                restricted_inbound_headers: vec![],
            }),
            expected_revision: None,
        }))
        .await
        .unwrap();
    refused!(
        client,
        client.delete_identity_provider(admin(proto::DeleteCatalogEntryRequest {
            id: "okta".into(),
            expected_revision: None,
        })),
        Code::FailedPrecondition,
        "is in use by servers [\"datadog\"]"
    );
}

#[tokio::test]
async fn keeping_a_secret_needs_no_resend_and_fingerprints_track_values() {
    let control_plane = InProcess::start().await;
    let mut client = control_plane.client().await;
    client
        .create_server(admin(proto::CreateServerRequest {
            server: Some(datadog_server("datadog", "k1")),
        }))
        .await
        .unwrap();
    let fingerprint = |server: proto::McpServer| {
        let Some(proto::app_auth::Kind::ApiKey(key)) = server.app_auth.unwrap().kind else {
            panic!("api key expected");
        };
        status_of(&key.key_value).fingerprint
    };
    let get = |mut client: proto::admin_service_client::AdminServiceClient<_>| async move {
        client
            .get_server(admin(proto::GetServerRequest {
                name: "datadog".into(),
                at_revision: None,
            }))
            .await
            .unwrap()
            .into_inner()
            .server
            .unwrap()
    };
    let original = get(client.clone()).await;
    let first = fingerprint(original.clone());
    // Echo the read view back (secrets as status): the stored key is kept.
    let mut edited = original.clone();
    edited.description = "edited".into();
    client
        .update_server(admin(proto::UpdateServerRequest {
            server: Some(edited),
            expected_revision: None,
        }))
        .await
        .unwrap();
    assert_eq!(fingerprint(get(client.clone()).await), first);
    client
        .set_app_auth(admin(proto::SetAppAuthRequest {
            server: "datadog".into(),
            app_auth: api_key_auth("k2"),
            expected_revision: None,
        }))
        .await
        .unwrap();
    assert_ne!(fingerprint(get(client.clone()).await), first);
}

#[tokio::test]
async fn roles_are_enforced() {
    let control_plane = InProcess::start().await;
    let mut client = control_plane.client().await;
    let create = |token: &str| {
        authed(
            token,
            proto::CreateServerRequest {
                server: Some(datadog_server("datadog", "k")),
            },
        )
    };
    let status = client
        .create_server(create(AUDITOR_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("read-only"));
    let status = client.create_server(create(NODE_TOKEN)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = client.create_server(create("wrong")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = client
        .create_server(tonic::Request::new(proto::CreateServerRequest {
            server: Some(datadog_server("datadog", "k")),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // Nothing was written by any of them; the auditor can read, and a dry-run apply is a read.
    let state = client
        .get_state(authed(
            AUDITOR_TOKEN,
            proto::GetStateRequest { at_revision: None },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.revision, BOOTSTRAP_REVISION);
    let desired = proto::ConfigState {
        servers: vec![datadog_server("datadog", "k")],
        ..Default::default()
    };
    let plan = client
        .apply(authed(
            AUDITOR_TOKEN,
            proto::ApplyRequest {
                desired: Some(desired.clone()),
                dry_run: true,
                prune: false,
                expected_revision: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.changes.len(), 1);
    assert!(!plan.applied);
    let status = client
        .apply(authed(
            AUDITOR_TOKEN,
            proto::ApplyRequest {
                desired: Some(desired),
                dry_run: false,
                prune: false,
                expected_revision: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(revision(&mut client).await, BOOTSTRAP_REVISION);
    let _ = ADMIN_TOKEN;
}

#[tokio::test]
async fn apply_plans_applies_and_then_has_nothing_to_do() {
    let control_plane = InProcess::start().await;
    let mut client = control_plane.client().await;
    let mut server = datadog_server("github", "unused");
    server.agent_auth = Some(proto::AgentAuth {
        mode: Some(proto::agent_auth::Mode::Interactive(
            proto::InteractiveSso {
                identity_provider: "okta".into(),
                scopes: vec![],
            },
        )),
        restricted_inbound_headers: vec![],
    });
    server.app_auth = Some(proto::AppAuth {
        kind: Some(proto::app_auth::Kind::OauthAuthorization(
            proto::OAuthAuthorization {
                app_id: "github".into(),
                scopes: vec!["repo".into()],
            },
        )),
    });
    let desired = proto::ConfigState {
        revision: 0,
        servers: vec![server, datadog_server("datadog", "dd-key")],
        identity_providers: vec![identity_provider("okta")],
        oauth_apps: vec![oauth_app("github")],
        credentials: vec![proto::StoredCredential {
            id: "pat".into(),
            description: "PATs".into(),
            org_value: plaintext("org"),
            user_values: vec![],
        }],
    };
    let apply = |dry_run: bool, desired: proto::ConfigState| {
        admin(proto::ApplyRequest {
            desired: Some(desired),
            dry_run,
            prune: false,
            expected_revision: None,
        })
    };
    let plan = client
        .apply(apply(true, desired.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.changes.len(), 5);
    assert!(!plan.applied);
    assert_eq!(revision(&mut client).await, BOOTSTRAP_REVISION);
    let applied = client
        .apply(apply(false, desired.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(applied.applied);
    assert_eq!(applied.revision, BOOTSTRAP_REVISION + 5);
    // The same document again, secrets included: nothing to do.
    let again = client
        .apply(apply(false, desired.clone()))
        .await
        .unwrap()
        .into_inner();
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    // The exported state (secrets as status) applies as a no-op too.
    let exported = client
        .get_state(admin(proto::GetStateRequest { at_revision: None }))
        .await
        .unwrap()
        .into_inner();
    let again = client
        .apply(apply(false, exported))
        .await
        .unwrap()
        .into_inner();
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    // One change: a field-level detail, with the secret shown by fingerprint only.
    let mut changed = desired.clone();
    changed.servers[1].app_auth = api_key_auth("dd-key-rotated");
    let plan = client
        .apply(apply(true, changed))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.changes.len(), 1);
    let details = plan.changes[0].details.join("\n");
    assert!(
        details.contains("app_auth.key_value: secret hmac-sha256:"),
        "{details}"
    );
    assert!(!details.contains("dd-key"), "{details}");
    // Prune deletes what the document leaves out, servers before the catalog.
    let pruned = client
        .apply(admin(proto::ApplyRequest {
            desired: Some(proto::ConfigState::default()),
            dry_run: false,
            prune: true,
            expected_revision: Some(BOOTSTRAP_REVISION + 5),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pruned.changes.len(), 5);
    assert_eq!(pruned.changes[0].action, proto::ChangeAction::Delete as i32);
    let state = client
        .get_state(admin(proto::GetStateRequest { at_revision: None }))
        .await
        .unwrap()
        .into_inner();
    assert!(state.servers.is_empty() && state.identity_providers.is_empty());
    // A stale expected revision refuses the whole apply.
    let status = client
        .apply(admin(proto::ApplyRequest {
            desired: Some(desired),
            dry_run: false,
            prune: false,
            expected_revision: Some(BOOTSTRAP_REVISION + 5),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    let _ = passthrough_agent();
}

//! The token vault over the node runtime API: storing links, refreshing exactly once under
//! concurrency, rotation, broken links, disconnects and the change stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::post;
use portcullis_proto::v1 as proto;
use portcullis_proto::v1::node_runtime_client::NodeRuntimeClient;
use tokio::sync::Mutex;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::common::{ADMIN_TOKEN, InProcess, NODE_TOKEN, admin, authed, plaintext};

/// How the test provider answers refresh requests.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Rotate,
    InvalidGrant,
    Unavailable,
}

/// A token endpoint that behaves like a provider with rotating refresh tokens: each refresh
/// token works once. It counts refresh requests and checks the client authentication.
struct Provider {
    refreshes: AtomicUsize,
    mode: Mutex<Mode>,
    /// The refresh token the provider currently accepts.
    current: Mutex<String>,
}

async fn token_endpoint(
    State(provider): State<Arc<Provider>>,
    headers: axum::http::HeaderMap,
    body: String,
) -> axum::response::Response {
    provider.refreshes.fetch_add(1, Ordering::SeqCst);
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
    // client_secret_basic: "gh-client:gh-secret".
    let basic = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if basic != "Basic Z2gtY2xpZW50OmdoLXNlY3JldA==" {
        return (
            axum::http::StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let mode = *provider.mode.lock().await;
    match mode {
        Mode::Unavailable => axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Mode::InvalidGrant => (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(
                serde_json::json!({"error": "invalid_grant", "error_description": "grant revoked"}),
            ),
        )
            .into_response(),
        Mode::Rotate => {
            let mut current = provider.current.lock().await;
            if form.get("grant_type").map(String::as_str) != Some("refresh_token")
                || form.get("refresh_token") != Some(&*current)
            {
                return (
                    axum::http::StatusCode::BAD_REQUEST,
                    axum::Json(serde_json::json!({"error": "invalid_grant"})),
                )
                    .into_response();
            }
            let generation = provider.refreshes.load(Ordering::SeqCst);
            *current = format!("refresh-{generation}");
            axum::Json(serde_json::json!({
                "access_token": format!("access-{generation}"),
                "refresh_token": *current,
                "token_type": "Bearer",
                "expires_in": 3600,
                "scope": "repo",
            }))
            .into_response()
        }
    }
}

async fn start_provider() -> (Arc<Provider>, String) {
    let provider = Arc::new(Provider {
        refreshes: AtomicUsize::new(0),
        mode: Mutex::new(Mode::Rotate),
        current: Mutex::new("refresh-0".to_owned()),
    });
    let app = axum::Router::new()
        .route("/token", post(token_endpoint))
        .with_state(provider.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (provider, url)
}

fn user(subject: &str) -> Option<proto::UserRef> {
    Some(proto::UserRef {
        identity_provider: "okta".into(),
        subject: subject.into(),
    })
}

async fn setup() -> (
    InProcess,
    Arc<Provider>,
    NodeRuntimeClient<tonic::transport::Channel>,
) {
    let control_plane = InProcess::start().await;
    let (provider, token_url) = start_provider().await;
    let mut client = control_plane.client().await;
    let mut app = crate::common::oauth_app("github");
    app.token_url = token_url;
    app.client_secret = plaintext("gh-secret");
    client
        .put_o_auth_app(admin(proto::PutOAuthAppRequest {
            oauth_app: Some(app),
            expected_revision: None,
        }))
        .await
        .unwrap();
    let runtime = NodeRuntimeClient::connect(control_plane.endpoint.clone())
        .await
        .unwrap();
    (control_plane, provider, runtime)
}

fn put(
    subject: &str,
    access: &str,
    expires_at_unix: i64,
) -> tonic::Request<proto::PutUserTokenRequest> {
    authed(
        NODE_TOKEN,
        proto::PutUserTokenRequest {
            app_id: "github".into(),
            user: user(subject),
            access_token: access.into(),
            refresh_token: "refresh-0".into(),
            token_type: "Bearer".into(),
            expires_at_unix,
            scope: "repo".into(),
        },
    )
}

fn get(subject: &str) -> tonic::Request<proto::GetUserTokenRequest> {
    authed(
        NODE_TOKEN,
        proto::GetUserTokenRequest {
            app_id: "github".into(),
            user: user(subject),
            min_valid_secs: 60,
        },
    )
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test]
async fn concurrent_requests_for_an_expiring_token_refresh_exactly_once() {
    let (control_plane, provider, mut runtime) = setup().await;
    runtime
        .put_user_token(put("alice", "access-alice", now() + 10))
        .await
        .unwrap();
    runtime
        .put_user_token(put("bob", "access-bob", now() + 3600))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut runtime = runtime.clone();
        tasks.push(tokio::spawn(async move {
            runtime
                .get_user_token(get("alice"))
                .await
                .unwrap()
                .into_inner()
        }));
    }
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, proto::LinkStatus::Connected as i32);
        assert_eq!(reply.access_token, "access-1");
    }
    assert_eq!(provider.refreshes.load(Ordering::SeqCst), 1);
    // Bob's token is fresh: no refresh, and it is bob's, not alice's.
    let bob = runtime
        .get_user_token(get("bob"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bob.access_token, "access-bob");
    assert_eq!(provider.refreshes.load(Ordering::SeqCst), 1);
    // The admin sees the links, never the tokens.
    let mut client = control_plane.client().await;
    let links = client
        .list_user_links(admin(proto::ListUserLinksRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(links.links.len(), 2);
    assert!(links.links.iter().all(|link| link.status == "connected"));
    assert!(!format!("{links:?}").contains("access-"));
    assert!(!format!("{links:?}").contains("refresh-"));
}

#[tokio::test]
async fn rotated_refresh_tokens_are_used_next_time() {
    let (_control_plane, provider, mut runtime) = setup().await;
    runtime
        .put_user_token(put("alice", "a0", now() - 1))
        .await
        .unwrap();
    let first = runtime
        .get_user_token(get("alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.access_token, "access-1");
    // Force the next refresh: store an expired access token but keep the link's state by
    // asking for more validity than the token has.
    let mut longer = get("alice");
    longer.get_mut().min_valid_secs = 3600;
    let second = runtime.get_user_token(longer).await.unwrap().into_inner();
    assert_eq!(
        second.access_token, "access-2",
        "the rotated refresh token was used"
    );
    assert_eq!(provider.refreshes.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn invalid_grant_breaks_the_link_and_transient_failures_do_not() {
    let (control_plane, provider, mut runtime) = setup().await;
    runtime
        .put_user_token(put("alice", "a0", now() - 1))
        .await
        .unwrap();
    *provider.mode.lock().await = Mode::Unavailable;
    let status = runtime.get_user_token(get("alice")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(provider.refreshes.load(Ordering::SeqCst), 2, "one retry");
    let mut client = control_plane.client().await;
    let filter = proto::ListUserLinksRequest {
        app_id: "github".into(),
        identity_provider: "okta".into(),
        subject: "alice".into(),
    };
    let links = client
        .list_user_links(admin(filter.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(links.links[0].status, "connected");

    *provider.mode.lock().await = Mode::InvalidGrant;
    let reply = runtime
        .get_user_token(get("alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.status, proto::LinkStatus::Broken as i32);
    assert!(reply.reason.contains("invalid_grant"), "{}", reply.reason);
    assert!(reply.access_token.is_empty());
    let links = client
        .list_user_links(admin(filter.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(links.links[0].status, "broken");
    assert!(links.links[0].reason.contains("connect the account again"));
    // A broken link stays broken without asking the provider again.
    let before = provider.refreshes.load(Ordering::SeqCst);
    runtime.get_user_token(get("alice")).await.unwrap();
    assert_eq!(provider.refreshes.load(Ordering::SeqCst), before);
    // Someone who never connected is missing.
    let missing = client
        .list_user_links(admin(proto::ListUserLinksRequest {
            subject: "carol".into(),
            ..filter
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(missing.links[0].status, "missing");
}

#[tokio::test]
async fn disconnecting_removes_the_link_and_watchers_hear_of_it() {
    let (control_plane, _provider, mut runtime) = setup().await;
    let mut changes = runtime
        .watch_user_tokens(authed(NODE_TOKEN, proto::WatchUserTokensRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = changes.next().await.unwrap().unwrap();
    assert!(first.reset, "the watch starts with a reset");
    runtime
        .put_user_token(put("alice", "a", now() + 3600))
        .await
        .unwrap();
    let change = changes.next().await.unwrap().unwrap();
    assert_eq!(change.status, proto::LinkStatus::Connected as i32);
    assert_eq!(change.user.unwrap().subject, "alice");
    let mut client = control_plane.client().await;
    let deleted = client
        .delete_user_link(admin(proto::DeleteUserLinkRequest {
            app_id: "github".into(),
            identity_provider: "okta".into(),
            subject: "alice".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
    let change = changes.next().await.unwrap().unwrap();
    assert_eq!(change.status, proto::LinkStatus::Missing as i32);
    let reply = runtime
        .get_user_token(get("alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.status, proto::LinkStatus::Missing as i32);
}

#[tokio::test]
async fn the_vault_is_for_nodes_only_and_checks_its_input() {
    let (_control_plane, _provider, mut runtime) = setup().await;
    let mut request = get("alice");
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    assert_eq!(
        runtime.get_user_token(request).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let mut unknown = put("alice", "a", 0);
    unknown.get_mut().app_id = "gmail".into();
    assert_eq!(
        runtime.put_user_token(unknown).await.unwrap_err().code(),
        Code::NotFound
    );
    let mut bad = get("alice");
    bad.get_mut().user = None;
    assert_eq!(
        runtime.get_user_token(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn a_user_lists_and_disconnects_only_their_own_links() {
    let (control_plane, _provider, mut runtime) = setup().await;
    let mut changes = runtime
        .watch_user_tokens(authed(NODE_TOKEN, proto::WatchUserTokensRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(changes.next().await.unwrap().unwrap().reset);
    for subject in ["alice", "bob"] {
        runtime
            .put_user_token(put(subject, subject, now() + 3600))
            .await
            .unwrap();
        changes.next().await.unwrap().unwrap();
    }
    let list = |subject: &str| {
        authed(
            NODE_TOKEN,
            proto::ListUserTokensRequest {
                user: user(subject),
            },
        )
    };
    let alice = runtime
        .list_user_tokens(list("alice"))
        .await
        .unwrap()
        .into_inner()
        .links;
    assert_eq!(alice.len(), 1);
    assert_eq!(alice[0].app_id, "github");
    assert_eq!(alice[0].status, proto::LinkStatus::Connected as i32);
    assert_eq!(alice[0].scope, "repo");
    assert!(alice[0].connected_at_unix > 0);
    // Same subject at another identity provider: someone else, with no links.
    let mut elsewhere = list("alice");
    elsewhere.get_mut().user.as_mut().unwrap().identity_provider = "entra".into();
    assert!(
        runtime
            .list_user_tokens(elsewhere)
            .await
            .unwrap()
            .into_inner()
            .links
            .is_empty()
    );

    let delete = |subject: &str| {
        authed(
            NODE_TOKEN,
            proto::DeleteUserTokenRequest {
                app_id: "github".into(),
                user: user(subject),
            },
        )
    };
    assert!(
        runtime
            .delete_user_token(delete("alice"))
            .await
            .unwrap()
            .into_inner()
            .deleted
    );
    let change = changes.next().await.unwrap().unwrap();
    assert_eq!(change.user.unwrap().subject, "alice");
    assert_eq!(change.status, proto::LinkStatus::Missing as i32);
    assert!(
        !runtime
            .delete_user_token(delete("alice"))
            .await
            .unwrap()
            .into_inner()
            .deleted
    );
    // Bob's link is untouched.
    let reply = runtime
        .get_user_token(get("bob"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.status, proto::LinkStatus::Connected as i32);
    assert_eq!(reply.access_token, "bob");
    // The audit trail has the user's disconnect.
    let mut client = control_plane.client().await;
    let page = client
        .query_audit(admin(proto::AuditQuery {
            kind: "account_unlink".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.records.len(), 1);
    let event = page.records[0].event.as_ref().unwrap();
    assert_eq!(event.actor, "alice");
    assert_eq!(event.credential_id, "github");
    // Only nodes may call it.
    let mut as_admin = list("bob");
    as_admin.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    assert_eq!(
        runtime.list_user_tokens(as_admin).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

#[tokio::test]
async fn users_store_and_delete_their_own_credential_values_through_a_node() {
    let (control_plane, _provider, mut runtime) = setup().await;
    let mut client = control_plane.client().await;
    client
        .put_credential(admin(proto::PutCredentialRequest {
            id: "github-pat".into(),
            description: "GitHub PAT".into(),
            org_value: plaintext("org-pat"),
            ..Default::default()
        }))
        .await
        .unwrap();
    let own = |credential: &str, subject: &str, value: &str| {
        authed(
            NODE_TOKEN,
            proto::PutOwnCredentialRequest {
                credential_id: credential.into(),
                user: user(subject),
                value: value.into(),
            },
        )
    };
    let get = |subject: &str| {
        authed(
            NODE_TOKEN,
            proto::GetUserCredentialRequest {
                credential_id: "github-pat".into(),
                user: user(subject),
            },
        )
    };
    let reply = runtime
        .put_own_credential(own("github-pat", "alice", "ghp_alice"))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.revision > 0);
    let alice = runtime
        .get_user_credential(get("alice"))
        .await
        .unwrap()
        .into_inner();
    assert!(alice.found);
    assert_eq!(alice.value, "ghp_alice");
    assert!(
        !runtime
            .get_user_credential(get("bob"))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    // The admin's view: alice has a value of her own, never shown.
    let state = client
        .get_state(admin(proto::GetStateRequest { at_revision: None }))
        .await
        .unwrap()
        .into_inner();
    let text = format!("{state:?}");
    assert!(!text.contains("ghp_alice"));
    let credential = state
        .credentials
        .iter()
        .find(|credential| credential.id == "github-pat")
        .unwrap();
    assert_eq!(credential.user_values.len(), 1);
    assert_eq!(credential.user_values[0].user, "alice");

    // Refusals: unknown credential, bad value, not a node.
    assert_eq!(
        runtime
            .put_own_credential(own("nope", "alice", "x"))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let refused = runtime
        .put_own_credential(own("github-pat", "alice", "bad\nvalue"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(!refused.message().contains("bad"), "{}", refused.message());
    let mut as_admin = own("github-pat", "alice", "ghp_admin");
    as_admin.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    assert_eq!(
        runtime
            .put_own_credential(as_admin)
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );

    let delete = |subject: &str| {
        authed(
            NODE_TOKEN,
            proto::DeleteOwnCredentialRequest {
                credential_id: "github-pat".into(),
                user: user(subject),
            },
        )
    };
    assert!(
        runtime
            .delete_own_credential(delete("alice"))
            .await
            .unwrap()
            .into_inner()
            .deleted
    );
    assert!(
        !runtime
            .delete_own_credential(delete("alice"))
            .await
            .unwrap()
            .into_inner()
            .deleted
    );
    assert!(
        !runtime
            .get_user_credential(get("alice"))
            .await
            .unwrap()
            .into_inner()
            .found
    );

    // The audit trail names the user and the node that acted for them.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let page = client
            .query_audit(admin(proto::AuditQuery {
                kind: "admin_change".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let by_alice: Vec<String> = page
            .records
            .iter()
            .filter_map(|record| record.event.as_ref())
            .filter(|event| event.actor.starts_with("user:okta/alice via node:"))
            .map(|event| event.summary.clone())
            .collect();
        if by_alice.len() == 2 {
            assert!(by_alice[0].contains("set alice's value of stored credential github-pat"));
            assert!(by_alice[1].contains("deleted alice's value"));
            assert!(!format!("{page:?}").contains("ghp_alice"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the audit trail lacks the user's changes: {by_alice:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

//! Per-user OAuth 2.1 Authorization and Client Credentials app auth through the node's
//! router: the prompt in each protocol revision's form, the account-linking flow (the link,
//! the login that proves the user, the provider's authorization, the stored tokens), tokens
//! keyed by app, identity provider and subject, the vault watch, upstream refusals, users'
//! own list of links, and service tokens. The parties are in-process fakes (`fakes.rs`);
//! the `tests/` crate runs the same flows with a real identity provider, real MCP clients
//! and several nodes.

mod fakes;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use portcullis_data_plane::discovery::BackoffPolicy;
use portcullis_data_plane::jwt::unix_now;
use portcullis_data_plane::oauth::OAuthSettings;
use portcullis_data_plane::vault::COLD_MIN_VALID_SECS;
use portcullis_proto::v1 as proto;
use portcullis_proto::v1::app_auth::Kind;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use self::fakes::*;
use crate::common::oauth::{IDP_ID, SCOPE, access_token, gateway_keys, grant, interactive};
use crate::common::{PUBLIC_URL, TestNode, json_body, post, secret, server};

const APP: &str = "github";
const SERVER: &str = "github";

fn oauth_app(providers: &FakeProviders) -> proto::OAuthApp {
    proto::OAuthApp {
        app_id: APP.to_owned(),
        display_name: "GitHub".to_owned(),
        authorize_url: format!("{}/gh/authorize", providers.issuer()),
        token_url: format!("{}/gh/token", providers.issuer()),
        client_id: APP_CLIENT_ID.to_owned(),
        client_secret: secret(APP_CLIENT_SECRET),
        default_scopes: vec!["repo".to_owned()],
        extra_authorize_params: [("allow_signup".to_owned(), "false".to_owned())].into(),
        token_endpoint_auth_method: "client_secret_post".to_owned(),
        ..proto::OAuthApp::default()
    }
}

fn snapshot(providers: &FakeProviders, servers: Vec<proto::McpServer>) -> proto::Snapshot {
    proto::Snapshot {
        identity_providers: vec![proto::IdentityProvider {
            id: IDP_ID.to_owned(),
            display_name: "Corp SSO".to_owned(),
            issuer: providers.issuer(),
            client_id: IDP_CLIENT_ID.to_owned(),
            client_secret: secret("idp-secret"),
            scopes: vec!["openid".to_owned(), "email".to_owned()],
            ..proto::IdentityProvider::default()
        }],
        oauth_apps: vec![oauth_app(providers)],
        gateway_keys: Some(gateway_keys()),
        ..crate::common::snapshot(1, servers)
    }
}

fn github_server(upstream: &PerUserUpstream) -> proto::McpServer {
    interactive(
        server(
            SERVER,
            &upstream.url(),
            Kind::OauthAuthorization(proto::OAuthAuthorization {
                app_id: APP.to_owned(),
                scopes: Vec::new(),
            }),
        ),
        &[SCOPE],
    )
}

struct Fixture {
    node: TestNode,
    vault: FakeVault,
    providers: FakeProviders,
    upstream: PerUserUpstream,
    stop_watch: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop_watch.cancel();
    }
}

impl Fixture {
    async fn start() -> Self {
        let vault = FakeVault::start().await;
        let providers = FakeProviders::start().await;
        let upstream = PerUserUpstream::start().await;
        let node = TestNode::with_authorization_server(
            snapshot(&providers, vec![github_server(&upstream)]),
            PUBLIC_URL,
            OAuthSettings::default(),
            Some(vault.client()),
        );
        let stop_watch = CancellationToken::new();
        let linking = node.state.linking.clone();
        tokio::spawn(linking.vault.clone().watch(
            BackoffPolicy {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(100),
            },
            stop_watch.clone(),
        ));
        let fixture = Self {
            node,
            vault,
            providers,
            upstream,
            stop_watch,
        };
        fixture
            .until("the node watches the vault", || {
                fixture.node.state.linking.vault.is_watching()
            })
            .await;
        fixture
    }

    /// Waits (bounded) until `condition` holds; no fixed sleeps.
    async fn until(&self, what: &str, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A gateway access token of `subject` for the server, as Interactive SSO issues it.
    fn token_of(&self, subject: &str) -> String {
        let snapshot = self.node.state.snapshots.load().unwrap();
        access_token(
            &snapshot.gateway_keys,
            &grant(subject, SERVER, "client-1"),
            unix_now(),
            600,
        )
    }

    async fn call(
        &self,
        subject: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let authorization = format!("Bearer {}", self.token_of(subject));
        let mut all = vec![("authorization", authorization.as_str())];
        all.extend_from_slice(headers);
        let response = self.node.send(post(SERVER, body, &all)).await;
        let status = response.status();
        (status, json_body(response).await)
    }

    /// Walks a browser through `url` (the node through its router, the providers over
    /// HTTP) until a page that is not a redirect; returns its status and text.
    async fn browse(&self, url: &str, cookies: &mut Vec<String>) -> (StatusCode, String) {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut current = url.to_owned();
        for _ in 0..10 {
            let (status, location, text) = if let Some(path) = current.strip_prefix(PUBLIC_URL) {
                let mut request = Request::builder()
                    .uri(path)
                    .header("host", "gateway.test:7400");
                if !cookies.is_empty() {
                    request = request.header("cookie", cookies.join("; "));
                }
                let response = self.node.send(request.body(Body::empty()).unwrap()).await;
                for set in response.headers().get_all("set-cookie") {
                    let pair = set.to_str().unwrap().split(';').next().unwrap().to_owned();
                    let name = pair.split('=').next().unwrap().to_owned();
                    cookies.retain(|cookie| !cookie.starts_with(&format!("{name}=")));
                    cookies.push(pair);
                }
                let status = response.status();
                let location = response
                    .headers()
                    .get("location")
                    .map(|value| value.to_str().unwrap().to_owned());
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (
                    status,
                    location,
                    String::from_utf8_lossy(&body).into_owned(),
                )
            } else {
                let response = http.get(&current).send().await.unwrap();
                let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
                let location = response
                    .headers()
                    .get("location")
                    .map(|value| value.to_str().unwrap().to_owned());
                (status, location, response.text().await.unwrap())
            };
            match location {
                Some(location) if status.is_redirection() => current = location,
                _ => return (status, text),
            }
        }
        panic!("more than 10 redirects from {url}");
    }
}

fn tools_call(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": "list_pull_requests", "arguments": {}}})
}

/// The link in a prompt, whatever its form.
fn link_in(body: &Value) -> String {
    let text = body["result"]["content"][0]["text"]
        .as_str()
        .or_else(|| body["error"]["data"]["elicitations"][0]["url"].as_str())
        .or_else(|| body["error"]["data"]["connect_url"].as_str())
        .or_else(|| {
            body["result"]["inputRequests"]["portcullis.connect.github"]["params"]["url"].as_str()
        })
        .unwrap_or_else(|| panic!("no link in {body}"));
    let start = text
        .find(PUBLIC_URL)
        .unwrap_or_else(|| panic!("no link in {text}"));
    text[start..].split_whitespace().next().unwrap().to_owned()
}

#[tokio::test]
async fn a_user_without_a_link_gets_the_prompt_in_their_clients_form() {
    let mut fixture = Fixture::start().await;

    // A 2025-06-18 client (no URL elicitation): a tool result with the link.
    let (status, body) = fixture
        .call(
            "alice",
            &tools_call(1),
            &[("mcp-protocol-version", "2025-06-18")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["id"], 1);
    assert_eq!(body["result"]["isError"], true);
    let text = body["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("connect your GitHub account"), "{text}");
    assert!(link_in(&body).starts_with(&format!("{PUBLIC_URL}/connect/github?request=pcx1.")));
    assert!(
        fixture.upstream.seen().is_empty(),
        "nothing reached the upstream"
    );
    let record = fixture.node.next_record().await;
    assert_eq!(record.credential_id.as_deref(), Some(APP));
    assert_eq!(record.status, 200);

    // A 2025-11-25 client that declared URL elicitation at initialize: -32042.
    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {"elicitation": {"form": {}, "url": {}}},
        "clientInfo": {"name": "test", "version": "1"}}});
    let (status, body) = fixture.call("alice", &initialize, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"]["serverInfo"]["name"], "per-user");
    assert_eq!(
        fixture.upstream.seen(),
        [None],
        "initialize went upstream without a credential"
    );
    let session = [
        ("mcp-session-id", "upstream-session-1"),
        ("mcp-protocol-version", "2025-11-25"),
    ];
    let (status, body) = fixture.call("alice", &tools_call(2), &session).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["error"]["code"], -32042, "{body}");
    let elicitation = &body["error"]["data"]["elicitations"][0];
    assert_eq!(elicitation["mode"], "url");
    assert!(elicitation["elicitationId"].is_string());
    assert!(link_in(&body).contains("/connect/github?request="));
    // The session is alice's: bob presenting its id gets the plain tool result.
    let (_, body) = fixture.call("bob", &tools_call(3), &session).await;
    assert_eq!(body["result"]["isError"], true, "{body}");

    // A 2026-07-28 client that declares URL elicitation in _meta: input_required.
    let stateless = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {
        "name": "list_pull_requests", "arguments": {},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"url": {}}}}}});
    let (status, body) = fixture
        .call(
            "alice",
            &stateless,
            &[("mcp-protocol-version", "2026-07-28")],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"]["resultType"], "input_required", "{body}");
    let request = &body["result"]["inputRequests"]["portcullis.connect.github"];
    assert_eq!(request["method"], "elicitation/create");
    assert_eq!(request["params"]["mode"], "url");
    // Its retry, answered but still not connected: a tool result, not another round.
    let mut retry = stateless.clone();
    retry["params"]["inputResponses"] = json!({"portcullis.connect.github": {"action": "accept"}});
    let (_, body) = fixture
        .call("alice", &retry, &[("mcp-protocol-version", "2026-07-28")])
        .await;
    assert_eq!(body["result"]["isError"], true, "{body}");
    assert_eq!(body["result"]["resultType"], "complete");
    assert!(
        body["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("not finished")
    );

    // Other requests pass through, without a credential.
    let list = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list"});
    let (status, body) = fixture.call("alice", &list, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"]["tools"][0]["name"], "list_pull_requests");
    assert_eq!(fixture.upstream.seen(), [None, None]);
}

#[tokio::test]
async fn the_link_connects_only_the_user_it_names() {
    let mut fixture = Fixture::start().await;
    let (_, prompt) = fixture.call("alice", &tools_call(1), &[]).await;
    let link = link_in(&prompt);
    fixture.node.next_record().await;

    // Bob opens alice's link: he signs in as bob, gets a refusal, nothing is linked.
    fixture.providers.sign_in_as("bob");
    let mut bobs_browser = Vec::new();
    let (status, page) = fixture.browse(&link, &mut bobs_browser).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    assert!(page.contains("This link is for someone else"), "{page}");
    assert_eq!(fixture.providers.tokens_issued(), 0);
    assert!(fixture.vault.link(APP, IDP_ID, "alice").is_none());
    assert!(fixture.vault.link(APP, IDP_ID, "bob").is_none());

    // Alice opens it: the provider's consent, the code exchanged, "connected".
    fixture.providers.sign_in_as("alice");
    let mut alices_browser = Vec::new();
    let (status, page) = fixture.browse(&link, &mut alices_browser).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("GitHub connected"), "{page}");
    assert!(!page.contains("gho_"), "no token on the page");
    let authorization = fixture.providers.last_app_authorization();
    assert_eq!(authorization["client_id"], APP_CLIENT_ID);
    assert_eq!(authorization["scope"], "repo");
    assert_eq!(authorization["code_challenge_method"], "S256");
    assert_eq!(authorization["allow_signup"], "false");
    assert_eq!(
        authorization["resource"],
        fixture.upstream.url(),
        "RFC 8707: the MCP server's upstream URL"
    );
    assert_eq!(
        authorization["redirect_uri"],
        format!("{PUBLIC_URL}/connect/callback")
    );
    let token_form = fixture.providers.last_app_token_form();
    assert_eq!(token_form["grant_type"], "authorization_code");
    assert_eq!(token_form["resource"], fixture.upstream.url());
    let stored = fixture
        .vault
        .link(APP, IDP_ID, "alice")
        .expect("alice is linked");
    assert_eq!(stored.access_token, "gho_alice_0");
    assert_eq!(stored.refresh_token, "ghr_alice_0");
    assert!(stored.expires_at_unix > unix_now());

    // Alice's next call goes upstream with her token.
    fixture.upstream.accept("gho_alice_0", "alice");
    let (status, body) = fixture.call("alice", &tools_call(2), &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["result"]["content"][0]["text"],
        "pull requests of alice"
    );
    assert_eq!(
        fixture.upstream.seen().last().unwrap().as_deref(),
        Some("Bearer gho_alice_0")
    );
    let record = fixture.node.next_record().await;
    assert_eq!(record.credential_id.as_deref(), Some(APP));
    assert_eq!(record.upstream_status, Some(200));
}

#[tokio::test]
async fn tampered_expired_or_misrouted_links_are_refused() {
    let fixture = Fixture::start().await;
    let (_, prompt) = fixture.call("alice", &tools_call(1), &[]).await;
    let link = link_in(&prompt);
    let mut browser = Vec::new();

    let mut tampered = link.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let (status, page) = fixture
        .browse(&String::from_utf8(tampered).unwrap(), &mut browser)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        page.contains("expired or was not made by this gateway"),
        "{page}"
    );

    let misrouted = link.replace("/connect/github?", "/connect/gitlab?");
    let (status, _) = fixture.browse(&misrouted, &mut browser).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, _) = fixture
        .browse(&format!("{PUBLIC_URL}/connect/github"), &mut browser)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A state that is not one of the gateway's is refused at the provider callback too.
    let (status, _) = fixture
        .browse(
            &format!("{PUBLIC_URL}/connect/callback?code=x&state=pcp1.forged"),
            &mut browser,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(fixture.providers.tokens_issued(), 0);
}

#[tokio::test]
async fn tokens_are_keyed_by_app_identity_provider_and_subject_and_cached() {
    let fixture = Fixture::start().await;
    let far = unix_now() + 3600;
    fixture
        .vault
        .connect(APP, IDP_ID, "alice", "gho_alice", far);
    fixture.vault.connect(APP, IDP_ID, "bob", "gho_bob", far);
    // Same subject, another identity provider; same user, another app: never used here.
    fixture
        .vault
        .connect(APP, "partner", "alice", "gho_partner_alice", far);
    fixture
        .vault
        .connect("gitlab", IDP_ID, "alice", "glpat_alice", far);
    for (token, owner) in [("gho_alice", "alice"), ("gho_bob", "bob")] {
        fixture.upstream.accept(token, owner);
    }
    // The node has heard of the four new links (each drops its key) before the calls.
    fixture
        .until("the node heard of the links", || {
            fixture
                .node
                .state
                .linking
                .vault
                .stats
                .invalidations
                .load(std::sync::atomic::Ordering::SeqCst)
                >= 4
        })
        .await;
    for _ in 0..3 {
        for user in ["alice", "bob"] {
            let (status, body) = fixture.call(user, &tools_call(1), &[]).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(
                body["result"]["content"][0]["text"],
                format!("pull requests of {user}")
            );
        }
    }
    let seen: Vec<String> = fixture
        .upstream
        .seen()
        .into_iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(
        seen,
        ["alice", "bob", "alice", "bob", "alice", "bob"].map(|user| format!("Bearer gho_{user}"))
    );
    // One vault call per user: the rest came from the node's cache.
    assert_eq!(fixture.vault.gets(), 2);
    assert_eq!(
        fixture.vault.min_valid_secs(),
        [COLD_MIN_VALID_SECS, COLD_MIN_VALID_SECS]
    );
}

#[tokio::test]
async fn the_watch_drops_changed_links_and_broken_ones_prompt_again() {
    let fixture = Fixture::start().await;
    fixture
        .vault
        .connect(APP, IDP_ID, "alice", "gho_alice", unix_now() + 3600);
    fixture.upstream.accept("gho_alice", "alice");
    let (_, body) = fixture.call("alice", &tools_call(1), &[]).await;
    assert_eq!(
        body["result"]["content"][0]["text"],
        "pull requests of alice"
    );
    let invalidations = || {
        fixture
            .node
            .state
            .linking
            .vault
            .stats
            .invalidations
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let before = invalidations();
    fixture.vault.break_link(APP, IDP_ID, "alice");
    fixture
        .until("the node heard of the broken link", || {
            invalidations() > before
        })
        .await;
    let (status, body) = fixture.call("alice", &tools_call(2), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let text = body["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("expired or was revoked"), "{text}");
    assert_eq!(fixture.upstream.seen().len(), 1, "no call without a token");
}

#[tokio::test]
async fn upstream_refusals_become_prompts_never_the_upstreams_401() {
    let fixture = Fixture::start().await;
    fixture.upstream.require_a_token_for_everything();
    // Not connected: initialize goes upstream without a credential and is refused; the
    // client gets the link in a JSON-RPC error (no URL elicitation declared).
    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"}}});
    let response = fixture
        .node
        .send(post(
            SERVER,
            &initialize,
            &[(
                "authorization",
                &format!("Bearer {}", fixture.token_of("alice")),
            )],
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("www-authenticate").is_none());
    let body = json_body(response).await;
    assert_eq!(body["id"], 0);
    assert_eq!(body["error"]["code"], -32000);
    assert_eq!(body["error"]["data"]["reason"], "account_not_connected");
    assert!(link_in(&body).contains("/connect/github"));
    // One that declared URL elicitation in the same initialize: -32042.
    let mut declaring = initialize.clone();
    declaring["params"]["capabilities"] = json!({"elicitation": {"url": {}}});
    let (_, body) = fixture.call("alice", &declaring, &[]).await;
    assert_eq!(body["error"]["code"], -32042, "{body}");

    // Connected, but the upstream refuses the token: the node drops it and asks the user to
    // connect again.
    fixture
        .vault
        .connect(APP, IDP_ID, "alice", "gho_stale", unix_now() + 3600);
    let (status, body) = fixture.call("alice", &tools_call(1), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let text = body["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("expired or was revoked"), "{text}");
    let gets = fixture.vault.gets();
    fixture.call("alice", &tools_call(2), &[]).await;
    assert_eq!(
        fixture.vault.gets(),
        gets + 1,
        "the refused token was not kept"
    );
}

#[tokio::test]
async fn users_list_and_disconnect_their_own_links() {
    let fixture = Fixture::start().await;
    let far = unix_now() + 3600;
    fixture
        .vault
        .connect(APP, IDP_ID, "alice", "gho_alice", far);
    fixture.vault.connect(APP, IDP_ID, "bob", "gho_bob", far);
    let me = |method: &str, path: &str, token: Option<String>| {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "gateway.test:7400");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request.body(Body::empty()).unwrap()
    };
    let response = fixture
        .node
        .send(me("GET", "/me/links", Some(fixture.token_of("alice"))))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body = json_body(response).await;
    assert_eq!(
        body["user"],
        json!({"identity_provider": IDP_ID, "subject": "alice"})
    );
    assert_eq!(body["links"].as_array().unwrap().len(), 1);
    assert_eq!(body["links"][0]["app_id"], APP);
    assert_eq!(body["links"][0]["app"], "GitHub");
    assert_eq!(body["links"][0]["status"], "connected");
    assert!(!body.to_string().contains("gho_"), "never a token");

    let response = fixture
        .node
        .send(me(
            "DELETE",
            "/me/links/github",
            Some(fixture.token_of("alice")),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_body(response).await["deleted"], true);
    assert!(fixture.vault.link(APP, IDP_ID, "alice").is_none());
    assert!(
        fixture.vault.link(APP, IDP_ID, "bob").is_some(),
        "bob's link stays"
    );
    let response = fixture
        .node
        .send(me(
            "DELETE",
            "/me/links/github",
            Some(fixture.token_of("alice")),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // No token, or not a gateway token: 401.
    let response = fixture.node.send(me("GET", "/me/links", None)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let response = fixture
        .node
        .send(me("GET", "/me/links", Some("not.a.token".to_owned())))
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

/// A node with the `github` server plus `tools`, which sends the stored credential
/// `github-pat` per user on `x-pat` (org-wide value `org-pat`); `unused` is a stored
/// credential no server sends per user.
async fn self_service_node(
    providers: &FakeProviders,
    vault: &FakeVault,
    upstream: &crate::common::upstream::TestUpstream,
    linked: &PerUserUpstream,
) -> TestNode {
    let mut tools = interactive(
        server(
            "tools",
            &upstream.url("/mcp"),
            Kind::Bearer(proto::BearerToken {
                token: secret("service-token"),
            }),
        ),
        &[SCOPE],
    );
    tools.outbound_headers = vec![proto::OutboundHeader {
        header_name: "x-pat".to_owned(),
        prefix: "token ".to_owned(),
        source: Some(proto::outbound_header::Source::VaultCredential(
            proto::VaultCredential {
                credential_id: "github-pat".to_owned(),
                scope: proto::CredentialScope::PerUser as i32,
            },
        )),
    }];
    let mut snapshot = snapshot(providers, vec![github_server(linked), tools]);
    snapshot.credentials = vec![
        proto::StoredCredential {
            id: "github-pat".to_owned(),
            description: "GitHub personal access token".to_owned(),
            org_value: secret("org-pat"),
            user_values: Vec::new(),
        },
        proto::StoredCredential {
            id: "unused".to_owned(),
            description: "nothing sends it per user".to_owned(),
            org_value: secret("org-unused"),
            user_values: Vec::new(),
        },
    ];
    TestNode::with_authorization_server(
        snapshot,
        PUBLIC_URL,
        OAuthSettings::default(),
        Some(vault.client()),
    )
}

fn me_request(method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Request<Body> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway.test:7400");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
        None => request.body(Body::empty()).unwrap(),
    }
}

#[tokio::test]
async fn users_store_and_delete_their_own_credential_values_and_their_next_call_uses_them() {
    let providers = FakeProviders::start().await;
    let vault = FakeVault::start().await;
    let linked = PerUserUpstream::start().await;
    let mut upstream = crate::common::upstream::TestUpstream::start().await;
    let node = self_service_node(&providers, &vault, &upstream, &linked).await;
    let token_of = |subject: &str, server: &str| {
        let snapshot = node.state.snapshots.load().unwrap();
        access_token(
            &snapshot.gateway_keys,
            &grant(subject, server, "client-1"),
            unix_now(),
            600,
        )
    };
    let alice = token_of("alice", "tools");
    let bob = token_of("bob", "tools");
    let call = |token: String| {
        let authorization = format!("Bearer {token}");
        post(
            "tools",
            &tools_call(1),
            &[("authorization", &authorization)],
        )
    };
    let sent_pat = |received: &crate::common::upstream::Received| {
        received.headers["x-pat"].to_str().unwrap().to_owned()
    };

    // Before: alice gets the org-wide value, and that "none of her own" is cached.
    let response = node.send(call(alice.clone())).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(sent_pat(&upstream.next_request().await), "token org-pat");

    // She stores her own value, with a token of either server (here: github's).
    let response = node
        .send(me_request(
            "PUT",
            "/me/credentials/github-pat",
            Some(&token_of("alice", SERVER)),
            Some(json!({"value": "ghp_alice_own"})),
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body = json_body(response).await;
    assert_eq!(body, json!({"credential_id": "github-pat", "stored": true}));
    assert!(!body.to_string().contains("ghp_alice_own"), "never echoed");
    assert_eq!(
        vault
            .own_credential("github-pat", IDP_ID, "alice")
            .as_deref(),
        Some("ghp_alice_own"),
        "stored under her identity provider and subject"
    );

    // Her next call uses it at once (the node forgot its cached "none"); bob's does not.
    let response = node.send(call(alice.clone())).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        sent_pat(&upstream.next_request().await),
        "token ghp_alice_own"
    );
    let response = node.send(call(bob.clone())).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(sent_pat(&upstream.next_request().await), "token org-pat");

    // The list shows which credentials she may set, and that she has her own value.
    let response = node
        .send(me_request("GET", "/me/credentials", Some(&alice), None))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = json_body(response).await;
    assert_eq!(
        body["credentials"],
        json!([{"credential_id": "github-pat", "description": "GitHub personal access token",
                "servers": ["tools"], "own_value": true, "org_value": true}])
    );
    assert!(!body.to_string().contains("ghp_"), "{body}");

    // Refusals: a credential nothing sends per user, no token, a bad body, an empty value.
    let cases = [
        (
            "/me/credentials/unused",
            Some(alice.as_str()),
            Some(json!({"value": "x"})),
            StatusCode::NOT_FOUND,
        ),
        (
            "/me/credentials/nope",
            Some(alice.as_str()),
            Some(json!({"value": "x"})),
            StatusCode::NOT_FOUND,
        ),
        (
            "/me/credentials/github-pat",
            None,
            Some(json!({"value": "x"})),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "/me/credentials/github-pat",
            Some("not.a.token"),
            Some(json!({"value": "x"})),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "/me/credentials/github-pat",
            Some(alice.as_str()),
            Some(json!({"secret": "ghp_typo"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/me/credentials/github-pat",
            Some(alice.as_str()),
            Some(json!({"value": ""})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/me/credentials/github-pat",
            Some(alice.as_str()),
            Some(json!({"value": "line\nbreak"})),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (path, token, body, status) in cases {
        let response = node.send(me_request("PUT", path, token, body)).await;
        assert_eq!(response.status(), status, "{path}");
        let text = json_body(response).await.to_string();
        assert!(
            !text.contains("ghp_typo") && !text.contains("break"),
            "{text}"
        );
    }
    assert_eq!(
        vault
            .own_credential("github-pat", IDP_ID, "alice")
            .as_deref(),
        Some("ghp_alice_own"),
        "refused requests changed nothing"
    );

    // She deletes it: the org-wide value again; a second delete finds nothing.
    let response = node
        .send(me_request(
            "DELETE",
            "/me/credentials/github-pat",
            Some(&alice),
            None,
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_body(response).await["deleted"], true);
    assert!(
        vault
            .own_credential("github-pat", IDP_ID, "alice")
            .is_none()
    );
    let response = node.send(call(alice.clone())).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(sent_pat(&upstream.next_request().await), "token org-pat");
    let response = node
        .send(me_request(
            "DELETE",
            "/me/credentials/github-pat",
            Some(&alice),
            None,
        ))
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(vault.credential_gets() > 0);
}

fn client_credentials(token_url: &str, secret_value: &str) -> Kind {
    Kind::ClientCredentials(proto::ClientCredentials {
        token_url: token_url.to_owned(),
        client_id: "svc".to_owned(),
        client_secret: secret(secret_value),
        scopes: vec!["read".to_owned()],
        audience: String::new(),
    })
}

#[tokio::test]
async fn client_credentials_fetch_once_for_concurrent_calls_and_tell_failures_apart() {
    let endpoint = ServiceTokenEndpoint::start(
        200,
        json!({"access_token": "svc-token", "token_type": "Bearer", "expires_in": 600}),
    )
    .await;
    let refusing = ServiceTokenEndpoint::start(401, json!({"error": "invalid_client"})).await;
    let dead = crate::common::upstream::dead_address().await;
    let mut upstream = crate::common::upstream::TestUpstream::start().await;
    let node = Arc::new(TestNode::with_servers(vec![
        server(
            "svc",
            &upstream.url("/mcp"),
            client_credentials(&endpoint.url(), "s"),
        ),
        server(
            "bad-secret",
            &upstream.url("/mcp"),
            client_credentials(&refusing.url(), "wrong"),
        ),
        server(
            "unreachable",
            &upstream.url("/mcp"),
            client_credentials(&format!("http://{dead}/token"), "s"),
        ),
    ]));

    let held = endpoint.hold().await;
    let calls: Vec<_> = (0..16)
        .map(|id| {
            let node = node.clone();
            tokio::spawn(async move { node.send(post("svc", &tools_call(id), &[])).await.status() })
        })
        .collect();
    // Every call is in the node before the endpoint answers the one fetch.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    drop(held);
    for call in calls {
        assert_eq!(call.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        endpoint.requests(),
        1,
        "one fetch for every concurrent call"
    );
    for _ in 0..16 {
        let received = upstream.next_request().await;
        assert_eq!(received.headers["authorization"], "Bearer svc-token");
    }

    let response = node.send(post("bad-secret", &tools_call(1), &[])).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = json_body(response).await;
    assert_eq!(body["error"]["data"]["reason"], "invalid_client");
    assert!(!body.to_string().contains("wrong"));
    let response = node.send(post("unreachable", &tools_call(1), &[])).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = json_body(response).await;
    assert_eq!(body["error"]["data"]["reason"], "unreachable");
    assert!(
        !body.to_string().contains(&dead.to_string()),
        "no address leaks"
    );
    assert!(upstream.received_nothing());
}

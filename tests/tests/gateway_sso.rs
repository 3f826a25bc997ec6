//! Interactive SSO end to end: real MCP clients sign in through the gateway's authorization
//! server, which delegates the login to a real OIDC provider (the test IdP), and then call a
//! tool through the gateway.
//!
//! Every test puts a small round-robin load balancer in front of the nodes: its URL is the
//! fleet's public URL (`--public-url` of every node), and it sends each HTTP request to the
//! next node in turn. So every OAuth flow here is started on one node and continued on the
//! others: consent pages, login state, codes and refresh tokens are sealed values any node
//! opens, and single use is decided by the control plane.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use portcullis_proto::v1 as proto;
use portcullis_tests::browser::HeadlessBrowser;
use portcullis_tests::gateway::PROPAGATION_TIMEOUT;
use portcullis_tests::gateway::servers::{passthrough, server};
use portcullis_tests::idp::{IdpConfig, Pkce, TestIdp, corp, jwt, random_token};
use portcullis_tests::linking::forward_to;
use portcullis_tests::node_clients::mcp_remote_client_oauth;
use portcullis_tests::process::{ChildProcess, pick_free_loopback_port, scratch_dir};
use portcullis_tests::{EchoUpstream, Gateway, paths, python_mcp_client};
use serde_json::{Value, json};

/// The scope the Interactive server requires.
const SERVER_SCOPE: &str = "mcp:tools";

/// One request as the load balancer passed it on.
#[derive(Debug, Clone)]
struct Routed {
    method: String,
    path: String,
    node: usize,
}

#[derive(Clone, Default)]
struct Balancer {
    targets: Arc<Mutex<Vec<SocketAddr>>>,
    next: Arc<AtomicUsize>,
    routed: Arc<Mutex<Vec<Routed>>>,
    client: Option<reqwest::Client>,
}

/// A round-robin HTTP load balancer on a loopback port: each request goes to the next node.
/// Bodies stream both ways (SSE responses pass as they come).
struct LoadBalancer {
    address: SocketAddr,
    state: Balancer,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn balance(State(balancer): State<Balancer>, request: Request) -> Response {
    let targets = balancer.targets.lock().unwrap().clone();
    if targets.is_empty() {
        return Response::builder()
            .status(503)
            .body(Body::from("no nodes yet"))
            .unwrap();
    }
    let node = balancer.next.fetch_add(1, Ordering::SeqCst) % targets.len();
    balancer.routed.lock().unwrap().push(Routed {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        node,
    });
    let client = balancer.client.as_ref().unwrap();
    forward_to(client, targets[node], request).await
}

impl LoadBalancer {
    async fn start() -> Self {
        let state = Balancer {
            client: Some(
                reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .no_proxy()
                    .build()
                    .unwrap(),
            ),
            ..Balancer::default()
        };
        let app = axum::Router::new()
            .fallback(balance)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            address,
            state,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    fn set_targets(&self, targets: Vec<SocketAddr>) {
        *self.state.targets.lock().unwrap() = targets;
    }

    /// The nodes that served `method path`, in order.
    fn nodes_that_served(&self, method: &str, path: &str) -> Vec<usize> {
        self.state
            .routed
            .lock()
            .unwrap()
            .iter()
            .filter(|routed| routed.method == method && routed.path == path)
            .map(|routed| routed.node)
            .collect()
    }
}

/// A control plane, nodes behind the load balancer, the test IdP in the catalog, and
/// echo-upstream as the Interactive server `echo` (app auth Passthrough, so the upstream
/// sees the gateway's access token and reports whose it is).
struct Sso {
    balancer: LoadBalancer,
    idp: TestIdp,
    gateway: Gateway,
    _upstream: EchoUpstream,
}

impl Sso {
    async fn start(node_count: usize) -> Self {
        let balancer = LoadBalancer::start().await;
        let public_url = balancer.url();
        let idp_client = corp::gateway_client(&public_url);
        let idp = TestIdp::start(IdpConfig::default().client(idp_client))
            .await
            .unwrap();
        let mut gateway = Gateway::start_with_node_args(
            node_count,
            &[
                "--public-url",
                &public_url,
                "--access-token-lifetime-secs",
                "300",
            ],
        )
        .await
        .unwrap();
        balancer.set_targets(gateway.nodes.iter().map(|node| node.address()).collect());
        let upstream = EchoUpstream::start(&[]).await.unwrap();

        gateway
            .admin
            .put_identity_provider(proto::PutIdentityProviderRequest {
                identity_provider: Some(corp::registration(
                    idp.issuer(),
                    &["openid", "email", "groups"],
                )),
                expected_revision: None,
            })
            .await
            .unwrap();
        let mut echo = server("echo", &upstream.url(), passthrough());
        echo.agent_auth = Some(proto::AgentAuth {
            mode: Some(proto::agent_auth::Mode::Interactive(
                proto::InteractiveSso {
                    identity_provider: corp::ID.to_owned(),
                    scopes: vec![SERVER_SCOPE.to_owned()],
                },
            )),
            restricted_inbound_headers: Vec::new(),
        });
        gateway.create_server(echo).await.unwrap();
        Self {
            balancer,
            idp,
            gateway,
            _upstream: upstream,
        }
    }

    fn public_url(&self) -> String {
        self.balancer.url()
    }

    fn mcp_url(&self) -> String {
        format!("{}/mcp/echo", self.public_url())
    }

    /// Every node's log, for the request records, without terminal colours.
    fn node_logs(&self) -> String {
        let logs = self
            .gateway
            .nodes
            .iter()
            .map(|node| node.process().stderr_text())
            .collect::<Vec<_>>()
            .join("\n");
        without_ansi_escapes(&logs)
    }
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
fn without_ansi_escapes(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut characters = text.chars();
    while let Some(character) = characters.next() {
        if character == '\u{1b}' {
            for following in characters.by_ref() {
                if following.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(character);
        }
    }
    plain
}

/// The claims of the bearer token the upstream reported (`whoami`).
fn upstream_token_claims(whoami: &str) -> Value {
    let token = whoami
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("the upstream saw no bearer token: {whoami}"));
    jwt::claims_unverified(token).unwrap()
}

#[tokio::test]
async fn the_python_sdk_signs_alice_and_bob_in_across_two_nodes() {
    let sso = Sso::start(2).await;
    let mut subjects = Vec::new();
    for user in ["alice", "bob"] {
        let browser = HeadlessBrowser::new().unwrap().user(user);
        let report = python_mcp_client(sso.mcp_url())
            .oauth(&browser)
            .call("whoami", json!({}))
            .timeout(Duration::from_secs(90))
            .run()
            .await
            .unwrap();
        report.expect_ok().unwrap();
        let oauth = report.oauth.as_ref().unwrap();
        assert_eq!(oauth.registration.as_deref(), Some("dcr"), "{oauth:#?}");

        // The upstream got a gateway token for this user, this server and this gateway.
        let claims = upstream_token_claims(report.call("whoami").unwrap().text().unwrap());
        assert_eq!(claims["sub"], user, "{claims}");
        assert_eq!(claims["iss"], sso.public_url(), "{claims}");
        assert_eq!(claims["aud"], sso.mcp_url(), "{claims}");
        assert_eq!(claims["idp"], corp::ID, "{claims}");
        assert_eq!(claims["idp_iss"], sso.idp.issuer(), "{claims}");
        assert_eq!(claims["email"], format!("{user}@example.com"), "{claims}");
        assert_eq!(claims["scope"], SERVER_SCOPE, "{claims}");
        subjects.push(claims["sub"].as_str().unwrap().to_owned());
    }
    assert_eq!(subjects, ["alice", "bob"]);

    // The request records name the caller by the verified subject.
    let logs = sso.node_logs();
    for user in ["alice", "bob"] {
        assert!(
            logs.contains(&format!(
                "caller={user} caller_email=\"{user}@example.com\" caller_verified=true"
            )),
            "no record of {user}:\n{logs}"
        );
    }
    // Each consent page was rendered by one node and its form posted to the other; the
    // OAuth endpoints as a whole ran on both nodes.
    let shown = sso.balancer.nodes_that_served("GET", "/oauth/authorize");
    let posted = sso.balancer.nodes_that_served("POST", "/oauth/authorize");
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert_eq!(posted.len(), 2, "{posted:?}");
    for (shown, posted) in shown.iter().zip(&posted) {
        assert_ne!(shown, posted, "consent shown and posted on the same node");
    }
    let mut nodes: Vec<usize> = ["/oauth/callback", "/oauth/token", "/oauth/register"]
        .iter()
        .flat_map(|path| {
            let mut nodes = sso.balancer.nodes_that_served("GET", path);
            nodes.extend(sso.balancer.nodes_that_served("POST", path));
            nodes
        })
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    assert_eq!(nodes, [0, 1]);
}

/// A bare OAuth client of the gateway, written in the test: dynamic registration, the
/// authorization through the headless browser, and token requests, so a test can hold and
/// replay the tokens themselves.
struct TestClient {
    http: reqwest::Client,
    public_url: String,
    client_id: String,
    redirect_uri: String,
}

/// Nothing listens there: the browser stops at the redirect and hands over its parameters.
const TEST_CLIENT_REDIRECT_URI: &str = "http://127.0.0.1:9/callback";

impl TestClient {
    async fn register(public_url: &str, redirect_uri: &str) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let response = http
            .post(format!("{public_url}/oauth/register"))
            .json(&json!({
                "client_name": "e2e test client",
                "redirect_uris": [redirect_uri],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "application_type": "native",
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let registration: Value = response.json().await.unwrap();
        Self {
            http,
            public_url: public_url.to_owned(),
            client_id: registration["client_id"].as_str().unwrap().to_owned(),
            redirect_uri: redirect_uri.to_owned(),
        }
    }

    /// The authorization request for `resource`, with a fresh PKCE pair.
    fn authorization_url(&self, resource: &str, pkce: &Pkce, state: &str) -> String {
        let mut url = url::Url::parse(&format!("{}/oauth/authorize", self.public_url)).unwrap();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("code_challenge", &pkce.challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("resource", resource)
            .append_pair("state", state);
        url.into()
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/oauth/token", self.public_url))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert_eq!(
            response.headers()["cache-control"],
            "no-store",
            "token responses are never cached"
        );
        (status, response.json().await.unwrap())
    }

    /// Signs the browser's user in for `resource`; returns the token response.
    async fn sign_in(&self, browser: &HeadlessBrowser, resource: &str) -> Value {
        let pkce = Pkce::new();
        let state = random_token();
        let outcome = browser
            .authorize(&self.authorization_url(resource, &pkce, &state))
            .await
            .unwrap();
        assert_eq!(outcome.param("state"), Some(state.as_str()), "{outcome:#?}");
        assert_eq!(
            outcome.param("iss"),
            Some(self.public_url.as_str()),
            "{outcome:#?}"
        );
        let code = outcome
            .param("code")
            .unwrap_or_else(|| panic!("no code: {outcome:#?}"));
        let (status, tokens) = self
            .token_request(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &self.redirect_uri),
                ("code_verifier", &pkce.verifier),
                ("client_id", &self.client_id),
                ("resource", resource),
            ])
            .await;
        assert_eq!(status, 200, "{tokens}");
        tokens
    }

    async fn refresh(&self, refresh_token: &str) -> (u16, Value) {
        self.token_request(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", &self.client_id),
        ])
        .await
    }
}

fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {value}"))
}

/// What one node answers to an MCP initialize with `access_token`: the status and, for a
/// refusal, its reason (`data.reason`).
async fn node_verdict(node_mcp_url: &str, access_token: &str) -> (u16, Option<String>) {
    let response = reqwest::Client::new()
        .post(node_mcp_url)
        .bearer_auth(access_token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "e2e", "version": "1"}
            }
        }))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    if status == 200 {
        return (status, None);
    }
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["data"]["reason"].as_str().map(str::to_owned),
    )
}

/// Polls every node until each refuses `access_token` as revoked (a revocation travels by
/// snapshot); fails after the propagation timeout.
async fn wait_until_every_node_refuses(sso: &Sso, access_token: &str) {
    let deadline = std::time::Instant::now() + PROPAGATION_TIMEOUT;
    for node in &sso.gateway.nodes {
        loop {
            let verdict = node_verdict(&node.mcp_url("echo"), access_token).await;
            if verdict == (401, Some("revoked".to_owned())) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} still answers {verdict:?} after {PROPAGATION_TIMEOUT:?}",
                node.node_id()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn a_refresh_token_used_again_after_rotation_revokes_its_grant_on_every_node() {
    let sso = Sso::start(2).await;
    let client = TestClient::register(&sso.public_url(), TEST_CLIENT_REDIRECT_URI).await;
    let alice = HeadlessBrowser::new().unwrap().user("alice");
    let first = client.sign_in(&alice, &sso.mcp_url()).await;
    let first_refresh = text(&first, "refresh_token");
    for node in &sso.gateway.nodes {
        assert_eq!(
            node_verdict(&node.mcp_url("echo"), text(&first, "access_token")).await,
            (200, None)
        );
    }

    // Rotation: the refresh token is single use; the new one and its access token work.
    let (status, rotated) = client.refresh(first_refresh).await;
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(text(&rotated, "refresh_token"), first_refresh);
    let rotated_access = text(&rotated, "access_token");
    assert_eq!(
        node_verdict(&sso.gateway.node(0).mcp_url("echo"), rotated_access).await,
        (200, None)
    );

    // The old refresh token again (a leaked copy): refused, and the grant is revoked.
    let (status, refused) = client.refresh(first_refresh).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"], "invalid_grant");
    wait_until_every_node_refuses(&sso, rotated_access).await;
    wait_until_every_node_refuses(&sso, text(&first, "access_token")).await;
    // The rotated refresh token belongs to the revoked grant too (whichever node answers).
    for _ in &sso.gateway.nodes {
        let (status, refused) = client.refresh(text(&rotated, "refresh_token")).await;
        assert_eq!(status, 400, "{refused}");
        assert_eq!(refused["error"], "invalid_grant");
    }

    // Another login of the same user is a new grant, untouched by the revocation.
    let again = client.sign_in(&alice, &sso.mcp_url()).await;
    for node in &sso.gateway.nodes {
        assert_eq!(
            node_verdict(&node.mcp_url("echo"), text(&again, "access_token")).await,
            (200, None)
        );
    }
}

#[tokio::test]
async fn signing_a_user_out_refuses_their_tokens_everywhere_and_leaves_others_alone() {
    let mut sso = Sso::start(2).await;
    let client = TestClient::register(&sso.public_url(), TEST_CLIENT_REDIRECT_URI).await;
    let alice = client
        .sign_in(
            &HeadlessBrowser::new().unwrap().user("alice"),
            &sso.mcp_url(),
        )
        .await;
    let bob = client
        .sign_in(&HeadlessBrowser::new().unwrap().user("bob"), &sso.mcp_url())
        .await;

    sso.gateway
        .admin
        .revoke_user_sessions(proto::RevokeUserSessionsRequest {
            identity_provider: corp::ID.to_owned(),
            subject: "alice".to_owned(),
        })
        .await
        .unwrap();
    wait_until_every_node_refuses(&sso, text(&alice, "access_token")).await;
    let (status, refused) = client.refresh(text(&alice, "refresh_token")).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    for node in &sso.gateway.nodes {
        assert_eq!(
            node_verdict(&node.mcp_url("echo"), text(&bob, "access_token")).await,
            (200, None)
        );
    }
    let (status, refreshed) = client.refresh(text(&bob, "refresh_token")).await;
    assert_eq!(status, 200, "{refreshed}");
}

#[tokio::test]
async fn mcp_remote_signs_in_through_the_gateway() {
    let sso = Sso::start(2).await;
    let browser = HeadlessBrowser::new().unwrap().user("bob");
    let run = mcp_remote_client_oauth(&sso.mcp_url(), &browser, &[])
        .await
        .unwrap();
    run.expect_success().unwrap();
    assert!(
        run.run.stderr.contains("\"name\": \"whoami\""),
        "mcp-remote listed no tools:\n{}",
        run.run.stderr
    );
    assert_eq!(run.browser_runs.len(), 1, "{:#?}", run.browser_runs);
    let trip = &run.browser_runs[0];
    assert_eq!(trip.delivered_status, Some(200), "{trip:#?}");
    assert_eq!(trip.param("iss"), Some(sso.public_url().as_str()));
    let logs = sso.node_logs();
    assert!(
        logs.contains("jsonrpc_method=tools/list tool= caller=bob caller_email=\"bob@example.com\" caller_verified=true"),
        "no tools/list by bob in the records:\n{logs}"
    );
}

/// The 0.2 alpha line of the MCP conformance suite against the gateway's authorization
/// server: the metadata document, and a whole authorization-code grant (the suite prints the
/// authorization URL and waits on its own callback listener; the headless browser walks the
/// URL through consent and the IdP login and delivers the code to it).
#[tokio::test]
async fn the_conformance_suite_passes_the_gateways_authorization_server() {
    let sso = Sso::start(1).await;
    let callback_port = pick_free_loopback_port().unwrap();
    let redirect_uri = format!("http://127.0.0.1:{callback_port}/callback");
    let client = TestClient::register(&sso.public_url(), &redirect_uri).await;

    let cli = paths::npm_package_file("conformance-authorization", "dist/index.js").unwrap();
    let output_dir = scratch_dir("conformance-authorization-results").unwrap();
    let mut command = std::process::Command::new(paths::node_binary().unwrap());
    command
        .arg(cli)
        .arg("authorization")
        .arg("--url")
        .arg(sso.public_url())
        .arg("--client-id")
        .arg(&client.client_id)
        .arg("--resource")
        .arg(sso.mcp_url())
        .arg("--port")
        .arg(callback_port.to_string())
        .arg("--output-dir")
        .arg(output_dir.path())
        .env("NO_COLOR", "1")
        .env("FORCE_COLOR", "0");
    let mut suite = ChildProcess::spawn("conformance-authorization", command).unwrap();
    let authorization_url = suite
        .wait_for_stdout_line(
            |line| line.starts_with(&format!("{}/oauth/authorize?", sso.public_url())),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let browser = HeadlessBrowser::new().unwrap().user("alice");
    let trip = browser
        .authorize_and_deliver(authorization_url.trim())
        .await
        .unwrap();
    assert_eq!(trip.delivered_status, Some(200), "{trip:#?}");
    let status = suite.wait_for_exit(Duration::from_secs(60)).await.unwrap();
    let stdout = suite.stdout_text();
    assert!(status.success(), "the suite failed ({status}):\n{stdout}");
    for scenario in [
        "authorization-server-metadata-endpoint",
        "authorization-code-grant",
    ] {
        assert!(
            stdout
                .lines()
                .any(|line| line.starts_with(&format!("✓ {scenario}: "))
                    && line.ends_with(", 0 failed")),
            "{scenario} did not pass:\n{stdout}"
        );
    }
    assert!(stdout.contains("\nTotal: "), "{stdout}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    // Two checks in the metadata scenario: the document, and the advisory check for Client
    // ID Metadata Document support (a warning, not a failure, when it is missing).
    assert!(
        stdout.contains("✓ authorization-server-metadata-endpoint: 2 passed, 0 failed"),
        "{stdout}"
    );
}

/// The kid in a JWT's header.
fn key_id(token: &str) -> String {
    let (header, _) = jwt::decode_unverified(token).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

/// Waits until every node serves the snapshot of an admin write.
async fn applied(sso: &mut Sso, reply: tonic::Response<proto::WriteReply>) {
    let revision = reply.into_inner().revision;
    sso.gateway.wait_for_nodes(revision).await.unwrap();
}

#[tokio::test]
async fn tokens_and_sealed_values_survive_a_key_rotation_until_the_old_keys_are_retired() {
    let mut sso = Sso::start(2).await;
    let before = sso
        .gateway
        .admin
        .list_gateway_keys(proto::ListGatewayKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    let old_signing = before.signing_keys[0].kid.clone();
    let old_sealing = before.sealing_keys[0].kid.clone();
    let client = TestClient::register(&sso.public_url(), TEST_CLIENT_REDIRECT_URI).await;
    let alice = HeadlessBrowser::new().unwrap().user("alice");
    let first = client.sign_in(&alice, &sso.mcp_url()).await;
    assert_eq!(key_id(text(&first, "access_token")), old_signing);

    let reply = sso
        .gateway
        .admin
        .rotate_gateway_keys(proto::RotateGatewayKeysRequest {
            signing: true,
            sealing: true,
        })
        .await
        .unwrap();
    applied(&mut sso, reply).await;
    // Issued before the rotation: the access token, the refresh token and the client
    // registration all still work, on every node; what is issued now uses the new keys.
    for node in &sso.gateway.nodes {
        assert_eq!(
            node_verdict(&node.mcp_url("echo"), text(&first, "access_token")).await,
            (200, None)
        );
    }
    let (status, rotated) = client.refresh(text(&first, "refresh_token")).await;
    assert_eq!(status, 200, "{rotated}");
    let new_signing = key_id(text(&rotated, "access_token"));
    assert_ne!(new_signing, old_signing);

    // The old signing key retired: its tokens are refused everywhere, the new ones pass.
    let reply = sso
        .gateway
        .admin
        .retire_gateway_key(proto::RetireGatewayKeyRequest {
            kid: old_signing.clone(),
        })
        .await
        .unwrap();
    applied(&mut sso, reply).await;
    for node in &sso.gateway.nodes {
        assert_eq!(
            node_verdict(&node.mcp_url("echo"), text(&first, "access_token")).await,
            (401, Some("unknown_key_id".to_owned()))
        );
        assert_eq!(
            node_verdict(&node.mcp_url("echo"), text(&rotated, "access_token")).await,
            (200, None)
        );
    }
    // The old sealing key retired: the client registered under it must register again.
    let reply = sso
        .gateway
        .admin
        .retire_gateway_key(proto::RetireGatewayKeyRequest { kid: old_sealing })
        .await
        .unwrap();
    applied(&mut sso, reply).await;
    let (status, refused) = client.refresh(text(&rotated, "refresh_token")).await;
    assert_eq!(status, 401, "{refused}");
    assert_eq!(refused["error"], "invalid_client");
    let again = TestClient::register(&sso.public_url(), TEST_CLIENT_REDIRECT_URI).await;
    let fresh = again.sign_in(&alice, &sso.mcp_url()).await;
    assert_eq!(key_id(text(&fresh, "access_token")), new_signing);
}

#[tokio::test]
async fn a_second_sign_in_in_the_same_browser_asks_neither_consent_nor_login() {
    let sso = Sso::start(2).await;
    let client = TestClient::register(&sso.public_url(), TEST_CLIENT_REDIRECT_URI).await;
    let browser = HeadlessBrowser::new().unwrap().user("bob");
    let first = client.sign_in(&browser, &sso.mcp_url()).await;
    let second = client.sign_in(&browser, &sso.mcp_url()).await;
    assert_ne!(
        text(&first, "refresh_token"),
        text(&second, "refresh_token")
    );
    let first_claims = jwt::claims_unverified(text(&first, "access_token")).unwrap();
    let second_claims = jwt::claims_unverified(text(&second, "access_token")).unwrap();
    assert_eq!(second_claims["sub"], "bob");
    assert_ne!(
        first_claims["sid"], second_claims["sid"],
        "each sign-in is a grant"
    );

    // Two authorization requests, one consent form: the approval was remembered.
    assert_eq!(
        sso.balancer
            .nodes_that_served("GET", "/oauth/authorize")
            .len(),
        2
    );
    assert_eq!(
        sso.balancer
            .nodes_that_served("POST", "/oauth/authorize")
            .len(),
        1
    );
    // One login at the identity provider: its session carried the second sign-in.
    let interactions = sso.idp.interactions().await.unwrap();
    assert_eq!(
        interactions.logins_by_user.get("bob"),
        Some(&1),
        "{interactions:?}"
    );

    // Another client in the same browser is a new client: consent again, still no login.
    let other = TestClient::register(&sso.public_url(), TEST_CLIENT_REDIRECT_URI).await;
    other.sign_in(&browser, &sso.mcp_url()).await;
    assert_eq!(
        sso.balancer
            .nodes_that_served("POST", "/oauth/authorize")
            .len(),
        2
    );
    let interactions = sso.idp.interactions().await.unwrap();
    assert_eq!(
        interactions.logins_by_user.get("bob"),
        Some(&1),
        "{interactions:?}"
    );
}

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
use portcullis_tests::gateway::servers::{passthrough, secret, server};
use portcullis_tests::idp::{IdpClient, IdpConfig, TestIdp, jwt};
use portcullis_tests::{EchoUpstream, Gateway, python_mcp_client};
use serde_json::{Value, json};

/// The identity provider's id in the gateway's catalog.
const IDP_ID: &str = "corp";
/// The gateway's client at the identity provider.
const IDP_CLIENT_ID: &str = "portcullis";
const IDP_CLIENT_SECRET: &str = "portcullis-idp-secret";
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

/// Hop-by-hop headers a proxy must not pass on (RFC 9110 section 7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

async fn balance(State(balancer): State<Balancer>, request: Request) -> Response {
    let targets = balancer.targets.lock().unwrap().clone();
    let error = |status: u16, message: String| {
        Response::builder()
            .status(status)
            .body(Body::from(message))
            .unwrap()
    };
    if targets.is_empty() {
        return error(503, "no nodes yet".to_owned());
    }
    let node = balancer.next.fetch_add(1, Ordering::SeqCst) % targets.len();
    let (parts, body) = request.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|value| value.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    balancer.routed.lock().unwrap().push(Routed {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        node,
    });
    let body = match axum::body::to_bytes(body, 4 * 1024 * 1024).await {
        Ok(body) => body,
        Err(failure) => return error(413, failure.to_string()),
    };
    let client = balancer.client.as_ref().unwrap();
    let mut outgoing = client.request(
        parts.method.clone(),
        format!("http://{}{path_and_query}", targets[node]),
    );
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            outgoing = outgoing.header(name, value);
        }
    }
    let response = match outgoing.body(body).send().await {
        Ok(response) => response,
        Err(failure) => return error(502, failure.to_string()),
    };
    let mut builder = Response::builder().status(response.status());
    for (name, value) in response.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            builder = builder.header(name, value);
        }
    }
    builder
        .body(Body::from_stream(response.bytes_stream()))
        .unwrap()
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
        let idp_client = IdpClient::confidential(
            IDP_CLIENT_ID,
            IDP_CLIENT_SECRET,
            &[&format!("{public_url}/oauth/callback")],
        );
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
                identity_provider: Some(proto::IdentityProvider {
                    id: IDP_ID.to_owned(),
                    display_name: "Corp SSO".to_owned(),
                    issuer: idp.issuer().to_owned(),
                    client_id: IDP_CLIENT_ID.to_owned(),
                    client_secret: secret(IDP_CLIENT_SECRET),
                    scopes: ["openid", "email", "groups"].map(str::to_owned).to_vec(),
                    ..proto::IdentityProvider::default()
                }),
                expected_revision: None,
            })
            .await
            .unwrap();
        let mut echo = server("echo", &upstream.url(), passthrough());
        echo.agent_auth = Some(proto::AgentAuth {
            mode: Some(proto::agent_auth::Mode::Interactive(
                proto::InteractiveSso {
                    identity_provider: IDP_ID.to_owned(),
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
        assert_eq!(claims["idp"], IDP_ID, "{claims}");
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
            logs.contains(&format!("caller={user} caller_verified=true")),
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

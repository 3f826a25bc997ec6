//! Rate limits of the OAuth and account-linking endpoints through the node's router (each
//! request carries the peer address a listener would give it), and the bounds of the
//! listeners' HTTP server on a real socket. Budgets are refilled at one request an hour, so
//! nothing here depends on timing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use http::header::{ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{Request, StatusCode};
use portcullis_data_plane::oauth::OAuthSettings;
use portcullis_data_plane::rate_limit::{Rate, RateLimitSettings, RateLimits, TrustedProxies};
use portcullis_shared::http_server::HttpServerLimits;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::common::oauth::{gateway_keys, sso_snapshot};
use crate::common::{PUBLIC_URL, TestNode, json_body};

const HOUR: Duration = Duration::from_secs(3600);

fn node(settings: RateLimitSettings) -> TestNode {
    let mut node = TestNode::with_authorization_server(
        sso_snapshot(1, vec![], gateway_keys()),
        PUBLIC_URL,
        OAuthSettings::default(),
        None,
    );
    Arc::get_mut(&mut node.state)
        .expect("the test holds the only reference")
        .rate_limits = RateLimits::new(&settings);
    node
}

fn budgets(register: u32, token: u32, browser: u32) -> RateLimitSettings {
    RateLimitSettings {
        register: Some(Rate::new(1, HOUR, register)),
        token: Some(Rate::new(1, HOUR, token)),
        browser: Some(Rate::new(1, HOUR, browser)),
        ..RateLimitSettings::default()
    }
}

fn from(peer: &str, mut request: Request<Body>) -> Request<Body> {
    let address: SocketAddr = format!("{peer}:50000").parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(address));
    request
}

fn registration() -> Request<Body> {
    Request::post("/oauth/register")
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({
                "redirect_uris": ["http://127.0.0.1:9/callback"],
                "token_endpoint_auth_method": "none",
            })
            .to_string(),
        ))
        .unwrap()
}

fn token_request() -> Request<Body> {
    Request::post("/oauth/token")
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("grant_type=authorization_code&code=nope"))
        .unwrap()
}

async fn assert_oauth_429(response: http::Response<Body>) -> Value {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()[RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=3600).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
    // Browser-based clients read the error too.
    assert_eq!(response.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    let body = json_body(response).await;
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert!(body["error_description"].is_string(), "{body}");
    body
}

fn rate_limited_count(node: &TestNode, budget: &str) -> u64 {
    let mut registry = prometheus_client::registry::Registry::default();
    node.state.metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let prefix = format!("portcullis_node_rate_limited_requests_total{{budget=\"{budget}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |count| count.parse().unwrap())
}

#[tokio::test]
async fn registration_is_refused_after_its_budget_while_another_address_is_unaffected() {
    let node = node(budgets(3, 100, 100));
    for _ in 0..3 {
        let response = node.send(from("192.0.2.1", registration())).await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    assert_oauth_429(node.send(from("192.0.2.1", registration())).await).await;
    assert_oauth_429(node.send(from("192.0.2.1", registration())).await).await;
    // Another address has its own budget.
    let response = node.send(from("198.51.100.2", registration())).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    // The other budgets are untouched by registrations.
    let response = node.send(from("192.0.2.1", token_request())).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // CORS preflights are not counted.
    let preflight = Request::options("/oauth/register")
        .body(Body::empty())
        .unwrap();
    let response = node.send(from("192.0.2.1", preflight)).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(rate_limited_count(&node, "register"), 2);
    assert_eq!(rate_limited_count(&node, "token"), 0);
}

#[tokio::test]
async fn the_token_endpoint_refuses_in_the_oauth_error_shape() {
    let node = node(budgets(100, 2, 100));
    for _ in 0..2 {
        // Counted whatever the answer (here: no client authentication).
        let response = node.send(from("192.0.2.1", token_request())).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let body = assert_oauth_429(node.send(from("192.0.2.1", token_request())).await).await;
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
    // Revocation shares the token budget.
    let revoke = Request::post("/oauth/revoke")
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("token=x"))
        .unwrap();
    assert_oauth_429(node.send(from("192.0.2.1", revoke)).await).await;
    assert_eq!(rate_limited_count(&node, "token"), 2);
}

#[tokio::test]
async fn browser_routes_refuse_with_a_page_and_me_with_json() {
    let node = node(budgets(100, 100, 1));
    let authorize = || {
        Request::get("/oauth/authorize?client_id=x")
            .body(Body::empty())
            .unwrap()
    };
    let response = node.send(from("192.0.2.1", authorize())).await;
    assert_ne!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let response = node.send(from("192.0.2.1", authorize())).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key(RETRY_AFTER));
    assert!(
        response.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let links = Request::get("/me/links").body(Body::empty()).unwrap();
    let response = node.send(from("192.0.2.1", links)).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        json_body(response).await["error"],
        "temporarily_unavailable"
    );
    // The MCP endpoint, metadata and keys are never limited.
    for path in ["/.well-known/oauth-authorization-server", "/oauth/jwks"] {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = node.send(from("192.0.2.1", request)).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
    let node = node(RateLimitSettings {
        trusted_proxies: TrustedProxies::parse("10.0.0.1").unwrap(),
        ..budgets(1, 100, 100)
    });
    let forwarded = |client: &str| {
        let mut request = registration();
        request
            .headers_mut()
            .insert("x-forwarded-for", client.parse().unwrap());
        request
    };
    // Two clients behind the proxy: a budget each.
    for client in ["198.51.100.1", "198.51.100.2"] {
        let response = node.send(from("10.0.0.1", forwarded(client))).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{client}");
    }
    assert_oauth_429(node.send(from("10.0.0.1", forwarded("198.51.100.1"))).await).await;
    // A direct client cannot pick its address by the header.
    let response = node
        .send(from("192.0.2.9", forwarded("198.51.100.3")))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_oauth_429(
        node.send(from("192.0.2.9", forwarded("198.51.100.4")))
            .await,
    )
    .await;
}

#[tokio::test]
async fn the_off_switch_turns_every_budget_off() {
    let node = node(RateLimitSettings {
        enabled: false,
        ..budgets(1, 1, 1)
    });
    for _ in 0..5 {
        let response = node.send(from("192.0.2.1", registration())).await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
}

/// Serves `node` through the listeners' HTTP server on a loopback port.
async fn listen(node: &TestNode, limits: HttpServerLimits) -> (SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(portcullis_shared::http_server::serve(
        listener,
        portcullis_data_plane::router(node.state.clone()),
        limits,
        shutdown.clone(),
    ));
    (address, shutdown)
}

/// Reads until the server closes the connection (or 10 s pass: a failure).
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> String {
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received))
        .await
        .expect("the server did not close the connection")
        .ok();
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn the_listener_keys_clients_by_their_socket_address() {
    let node = node(budgets(1, 100, 100));
    let (address, shutdown) = listen(&node, HttpServerLimits::default()).await;
    let client = reqwest::Client::new();
    let register = || {
        client
            .post(format!("http://{address}/oauth/register"))
            .json(&json!({
                "redirect_uris": ["http://127.0.0.1:9/callback"],
                "token_endpoint_auth_method": "none",
            }))
            .send()
    };
    assert_eq!(register().await.unwrap().status(), StatusCode::CREATED);
    // 127.0.0.1 spent its budget; the in-process (no address) client is someone else.
    assert_eq!(
        register().await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let response = node.send(registration()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    shutdown.cancel();
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed_and_heads_are_bounded() {
    let node = node(RateLimitSettings::default());
    let limits = HttpServerLimits {
        header_read_timeout: Duration::from_millis(200),
        max_headers: 20,
        ..HttpServerLimits::default()
    };
    let (address, shutdown) = listen(&node, limits).await;

    // A client that sends half a request head and stops.
    let mut slow = tokio::net::TcpStream::connect(address).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    read_until_closed(&mut slow).await;

    // A kept-alive connection that goes quiet after its request.
    let mut idle = tokio::net::TcpStream::connect(address).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Too many headers: 431.
    let mut crowded = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut head = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..30 {
        head.push_str(&format!("x-h{i}: v\r\n"));
    }
    head.push_str("\r\n");
    crowded.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut crowded).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // A head larger than the bound: 431.
    let mut large = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(limits.max_header_bytes + 1)
    );
    // The server may close before everything is written.
    let _ = large.write_all(head.as_bytes()).await;
    let answer = read_until_closed(&mut large).await;
    // The unread rest of the head may reset the connection before the 431 is read.
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    shutdown.cancel();
}

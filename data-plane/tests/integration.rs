//! Integration tests of the node: the proxy against a real upstream (through `router()`
//! without a socket, and through a bound listener), the discovery client against an
//! in-process control plane, and the binary as a child process.

mod common;
mod linking;
mod rate_limit;
mod sso;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use base64::Engine;
use bytes::Bytes;
use common::control_plane::{NODE_TOKEN, Seen, TestControlPlane};
use common::upstream::{SilentUpstream, TestUpstream, dead_address};
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use portcullis_data_plane::config::ProxyLimits;
use portcullis_data_plane::record::Outcome;
use portcullis_proto::v1 as proto;
use portcullis_proto::v1::app_auth::Kind;
use portcullis_shared::error::ErrorCode;
use serde_json::{Value, json};

fn api_key(name: &str, value: &str, location: proto::ApiKeyLocation) -> Kind {
    Kind::ApiKey(proto::ApiKey {
        key_name: name.to_owned(),
        key_value: secret(value),
        location: location as i32,
    })
}

fn bearer(token: &str) -> Kind {
    Kind::Bearer(proto::BearerToken {
        token: secret(token),
    })
}

fn basic(username: &str, password: &str) -> Kind {
    Kind::Basic(proto::BasicAuth {
        username: username.to_owned(),
        password: secret(password),
    })
}

fn passthrough() -> Kind {
    Kind::Passthrough(proto::PassthroughApp {})
}

/// Headers a caller sends that must never reach the upstream generically, plus MCP and
/// ordinary headers that must arrive untouched.
const CALLER_HEADERS: &[(&str, &str)] = &[
    ("authorization", "Bearer caller-token"),
    ("cookie", "sid=caller-cookie"),
    ("proxy-authorization", "Basic Y2FsbGVyOnB3"),
    ("x-internal-user", "root"),
    ("mcp-session-id", "session-42"),
    ("mcp-method", "tools/call"),
    ("mcp-name", "search"),
    ("mcp-param-region", "eu"),
    ("x-custom", "keep-me"),
];

mod proxy {
    use super::*;

    struct AppAuthCase {
        kind: Kind,
        kind_name: &'static str,
        authorization: Option<String>,
        api_key_header: Option<&'static str>,
        query: &'static str,
    }

    #[tokio::test]
    async fn each_app_auth_kind_delivers_exactly_its_credential_and_nothing_else() {
        let basic_value = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("svc-user:svc pass")
        );
        let cases = [
            AppAuthCase {
                kind: api_key("x-api-key", "dd-key-1", proto::ApiKeyLocation::Header),
                kind_name: "api_key",
                authorization: None,
                api_key_header: Some("dd-key-1"),
                query: "tenant=a&api_key=forged",
            },
            AppAuthCase {
                kind: api_key("api_key", "q-key&1", proto::ApiKeyLocation::Query),
                kind_name: "api_key",
                authorization: None,
                api_key_header: None,
                query: "tenant=a&api_key=q-key%261",
            },
            AppAuthCase {
                kind: bearer("svc-token"),
                kind_name: "bearer",
                authorization: Some("Bearer svc-token".to_owned()),
                api_key_header: None,
                query: "tenant=a&api_key=forged",
            },
            AppAuthCase {
                kind: basic("svc-user", "svc pass"),
                kind_name: "basic",
                authorization: Some(basic_value),
                api_key_header: None,
                query: "tenant=a&api_key=forged",
            },
        ];
        for case in cases {
            let mut upstream = TestUpstream::start().await;
            let mut node =
                TestNode::with_servers(vec![server("demo", &upstream.url("/mcp"), case.kind)]);
            let body = tool_call(7, "search");
            let mut request = post("demo", &body, CALLER_HEADERS);
            *request.uri_mut() = "/mcp/demo?tenant=a&api_key=forged".parse().unwrap();

            let response = node.send(request).await;
            assert_eq!(response.status(), StatusCode::OK, "{}", case.kind_name);
            assert_eq!(response.headers()["mcp-session-id"], "upstream-session-1");
            assert!(response.headers().get("set-cookie").is_none());
            assert!(response.headers().get("www-authenticate").is_none());
            assert_eq!(json_body(response).await["id"], 7);

            let received = upstream.next_request().await;
            assert_eq!(received.path, "/mcp");
            assert_eq!(
                received.query.as_deref(),
                Some(case.query),
                "{}",
                case.kind_name
            );
            assert_eq!(received.body, Bytes::from(body.to_string()));
            let authorization: Vec<_> = received
                .headers
                .get_all("authorization")
                .iter()
                .map(|value| value.to_str().unwrap().to_owned())
                .collect();
            assert_eq!(
                authorization,
                case.authorization.iter().cloned().collect::<Vec<_>>()
            );
            assert_eq!(
                received
                    .headers
                    .get("x-api-key")
                    .map(|v| v.to_str().unwrap()),
                case.api_key_header
            );
            assert_eq!(received.headers["host"], upstream.address.to_string());
            for (name, value) in [
                ("mcp-session-id", "session-42"),
                ("mcp-protocol-version", "2025-11-25"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "search"),
                ("mcp-param-region", "eu"),
                ("x-custom", "keep-me"),
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
            ] {
                assert_eq!(received.headers[name], value, "{name}");
            }
            // Nothing else: no cookie, no caller credential, no restricted header.
            let mut names: Vec<&str> = received.headers.keys().map(|name| name.as_str()).collect();
            names.sort_unstable();
            let mut expected = vec![
                "accept",
                "content-length",
                "content-type",
                "host",
                "mcp-method",
                "mcp-name",
                "mcp-param-region",
                "mcp-protocol-version",
                "mcp-session-id",
                "x-custom",
            ];
            if case.authorization.is_some() {
                expected.push("authorization");
            }
            if case.api_key_header.is_some() {
                expected.push("x-api-key");
            }
            expected.sort_unstable();
            assert_eq!(names, expected, "{}", case.kind_name);

            let record = node.next_record().await;
            assert_eq!(record.server, "demo");
            assert_eq!(record.node_id.as_ref(), "node-test");
            assert_eq!(record.snapshot_version, Some(1));
            assert_eq!(record.jsonrpc_methods, ["tools/call"]);
            assert_eq!(record.tool_names, ["search"]);
            assert_eq!(record.caller, "anonymous");
            assert!(record.caller_presented_credential);
            assert_eq!(record.app_auth_kind, Some(case.kind_name));
            assert_eq!(record.outcome, Outcome::Completed);
            assert_eq!(record.status, 200);
            assert_eq!(record.upstream_status, Some(200));
            assert_eq!(record.error_code, None);
        }
    }

    #[tokio::test]
    async fn passthrough_forwards_the_callers_authorization_exactly_as_sent() {
        let mut upstream = TestUpstream::start().await;
        let node =
            TestNode::with_servers(vec![server("pass", &upstream.url("/mcp"), passthrough())]);
        let response = node
            .send(post("pass", &tool_call(1, "x"), CALLER_HEADERS))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        // The upstream's challenge is about the caller's own credential here: it passes.
        assert!(response.headers().get("www-authenticate").is_some());
        let received = upstream.next_request().await;
        let authorization: Vec<_> = received.headers.get_all("authorization").iter().collect();
        assert_eq!(authorization, ["Bearer caller-token"]);
        assert!(received.headers.get("cookie").is_none());
        assert!(received.headers.get("proxy-authorization").is_none());
        assert!(received.headers.get("x-internal-user").is_none());
    }

    #[tokio::test]
    async fn get_and_delete_pass_session_headers_and_carry_no_body() {
        let mut upstream = TestUpstream::start().await;
        let node = TestNode::with_servers(vec![server("demo", &upstream.url("/mcp"), bearer("t"))]);
        for method in ["GET", "DELETE"] {
            let request = Request::builder()
                .method(method)
                .uri("/mcp/demo")
                .header("host", "localhost:7400")
                .header("mcp-session-id", "session-42")
                .header("last-event-id", "17")
                .body(Body::from("ignored"))
                .unwrap();
            let response = node.send(request).await;
            assert_eq!(response.status(), StatusCode::OK);
            let received = upstream.next_request().await;
            assert_eq!(received.method.as_str(), method);
            assert_eq!(received.headers["mcp-session-id"], "session-42");
            assert_eq!(received.headers["last-event-id"], "17");
            assert!(received.body.is_empty());
        }
    }

    /// SSE through a real socket: the first event arrives while the upstream has not
    /// produced the second one yet, for a GET stream and for a POST answered with SSE.
    #[tokio::test]
    async fn sse_events_arrive_one_by_one() {
        for method in ["GET", "POST"] {
            let mut upstream = TestUpstream::start().await;
            let events = upstream.sse_events.take().unwrap();
            let node =
                TestNode::with_servers(vec![server("events", &upstream.url("/sse"), bearer("t"))]);
            let address = serve(node.state.clone()).await;
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            let body = if method == "POST" {
                Full::new(Bytes::from(tool_call(3, "slow").to_string()))
            } else {
                Full::default()
            };
            let request = Request::builder()
                .method(method)
                .uri(format!("http://{address}/mcp/events"))
                .header("accept", "application/json, text/event-stream")
                .header("content-type", "application/json")
                .header("mcp-session-id", "session-42")
                .body(body)
                .unwrap();
            let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
                .await
                .expect("no response head")
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            let mut body = response.into_body();
            let mut buffer = String::new();

            events.send("progress 1/2".to_owned()).await.unwrap();
            let first = next_sse_event(&mut body, &mut buffer).await.unwrap();
            assert_eq!(first, "id: 0\ndata: progress 1/2");
            // Only now does the upstream produce the second event.
            events.send("done".to_owned()).await.unwrap();
            let second = next_sse_event(&mut body, &mut buffer).await.unwrap();
            assert_eq!(second, "id: 1\ndata: done");
            drop(events);
            assert!(next_sse_event(&mut body, &mut buffer).await.is_none());
        }
    }

    fn sse_node(upstream: &TestUpstream, limits: ProxyLimits) -> TestNode {
        TestNode::new(
            Some(snapshot(
                1,
                vec![server("events", &upstream.url("/sse"), bearer("t"))],
            )),
            limits,
        )
    }

    fn sse_get() -> Request<Body> {
        Request::get("/mcp/events")
            .header("host", "localhost")
            .header("accept", "text/event-stream")
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn a_stream_that_goes_silent_is_cut_after_the_idle_timeout() {
        let mut upstream = TestUpstream::start().await;
        let events = upstream.sse_events.take().unwrap();
        let limits = ProxyLimits {
            upstream_idle_timeout: Duration::from_secs(1),
            ..ProxyLimits::default()
        };
        let mut node = sse_node(&upstream, limits);
        let response = node.send(sse_get()).await;
        let mut body = response.into_body();
        let mut buffer = String::new();
        events.send("one".to_owned()).await.unwrap();
        assert_eq!(
            next_sse_event(&mut body, &mut buffer).await.unwrap(),
            "id: 0\ndata: one"
        );
        // The upstream stays connected and says nothing more.
        let next = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the idle timeout did not end the stream");
        assert!(matches!(next, Some(Err(_))));
        let record = node.next_record().await;
        assert_eq!(record.outcome, Outcome::UpstreamStreamFailed);
        assert_eq!(record.upstream_status, Some(200));
        drop(events);
    }

    #[tokio::test]
    async fn a_caller_leaving_mid_stream_is_recorded_as_disconnected() {
        let mut upstream = TestUpstream::start().await;
        let events = upstream.sse_events.take().unwrap();
        let mut node = sse_node(&upstream, ProxyLimits::default());
        let response = node.send(sse_get()).await;
        let mut body = response.into_body();
        let mut buffer = String::new();
        events.send("one".to_owned()).await.unwrap();
        next_sse_event(&mut body, &mut buffer).await.unwrap();
        drop(body);
        let record = node.next_record().await;
        assert_eq!(record.outcome, Outcome::ClientDisconnected);
        assert_eq!(record.http_method, "GET");
        assert!(record.jsonrpc_methods.is_empty());
        assert_eq!(record.status, 200);
    }

    #[tokio::test]
    async fn an_unreachable_upstream_gives_502_quickly() {
        let dead = dead_address().await;
        let mut node = TestNode::with_servers(vec![server(
            "gone",
            &format!("http://{dead}/mcp"),
            bearer("t"),
        )]);
        let started = Instant::now();
        let response = node.send(post("gone", &tool_call(9, "x"), &[])).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let body = json_body(response).await;
        assert_eq!(body["id"], 9);
        assert_eq!(body["error"]["message"], "upstream unreachable");
        assert_eq!(body["error"]["data"]["code"], "unavailable");
        assert!(!body.to_string().contains(&dead.port().to_string()));
        let record = node.next_record().await;
        assert_eq!(record.outcome, Outcome::UpstreamFailed);
        assert_eq!(record.error_code, Some(ErrorCode::Unavailable));
        assert_eq!(record.upstream_status, None);
    }

    #[tokio::test]
    async fn a_silent_upstream_gives_504_after_the_first_byte_timeout() {
        let silent = SilentUpstream::start().await;
        let limits = ProxyLimits {
            upstream_first_byte_timeout: Duration::from_millis(200),
            ..ProxyLimits::default()
        };
        let node = TestNode::new(
            Some(snapshot(
                1,
                vec![server(
                    "slow",
                    &format!("http://{}/mcp", silent.address),
                    bearer("t"),
                )],
            )),
            limits,
        );
        let response = node.send(post("slow", &tool_call(1, "x"), &[])).await;
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let body = json_body(response).await;
        assert_eq!(body["error"]["data"]["code"], "upstream_timeout");
    }

    #[tokio::test]
    async fn an_unknown_server_is_404_and_recorded() {
        let mut node = TestNode::with_servers(vec![]);
        let response = node.send(post("nope", &tool_call(4, "x"), &[])).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let body = json_body(response).await;
        assert_eq!(
            body,
            json!({
                "jsonrpc": "2.0",
                "id": null,
                "error": {"code": -32000, "message": "unknown MCP server", "data": {"code": "not_found"}}
            })
        );
        let record = node.next_record().await;
        assert_eq!(record.server, "nope");
        assert_eq!(record.outcome, Outcome::Rejected);
        assert_eq!(record.error_code, Some(ErrorCode::NotFound));
        assert_eq!(record.status, 404);
    }

    #[tokio::test]
    async fn an_oversized_body_is_413_with_or_without_content_length() {
        let mut upstream = TestUpstream::start().await;
        let limits = ProxyLimits {
            max_request_body_bytes: 1024,
            ..ProxyLimits::default()
        };
        let node = TestNode::new(
            Some(snapshot(
                1,
                vec![server("demo", &upstream.url("/mcp"), bearer("t"))],
            )),
            limits,
        );
        let big = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "x", "arguments": {"blob": "a".repeat(4096)}}});

        let with_length = post("demo", &big, &[]);
        let mut chunked = post("demo", &big, &[]);
        let chunks = vec![
            Ok::<_, std::io::Error>(Bytes::from(big.to_string()[..600].to_owned())),
            Ok(Bytes::from(big.to_string()[600..].to_owned())),
        ];
        *chunked.body_mut() = Body::from_stream(futures::stream::iter(chunks));
        for request in [with_length, chunked] {
            let response = node.send(request).await;
            assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
            let body = json_body(response).await;
            assert_eq!(body["error"]["data"]["code"], "payload_too_large");
        }
        assert!(upstream.received_nothing());

        // Just under the limit passes.
        let small = tool_call(2, "x");
        let response = node.send(post("demo", &small, &[])).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_foreign_host_or_origin_is_403_and_never_reaches_the_upstream() {
        let mut upstream = TestUpstream::start().await;
        let node = TestNode::with_servers(vec![server("demo", &upstream.url("/mcp"), bearer("t"))]);

        let mut rebound = post("demo", &tool_call(1, "x"), &[]);
        rebound
            .headers_mut()
            .insert("host", "attacker.example".parse().unwrap());
        let foreign_origin = post(
            "demo",
            &tool_call(1, "x"),
            &[("origin", "https://evil.example")],
        );
        for request in [rebound, foreign_origin] {
            let response = node.send(request).await;
            assert_eq!(response.status(), StatusCode::FORBIDDEN);
            let body = json_body(response).await;
            assert_eq!(body["error"]["data"]["code"], "permission_denied");
        }
        assert!(upstream.received_nothing());

        for origin in ["https://chat.example.com", "http://gateway.test:7400"] {
            let response = node
                .send(post("demo", &tool_call(1, "x"), &[("origin", origin)]))
                .await;
            assert_eq!(response.status(), StatusCode::OK, "{origin}");
            upstream.next_request().await;
        }
    }

    #[tokio::test]
    async fn an_unreachable_token_url_is_reported_and_nothing_reaches_the_upstream() {
        let mut upstream = TestUpstream::start().await;
        let client_credentials = server(
            "machine",
            &upstream.url("/mcp"),
            Kind::ClientCredentials(proto::ClientCredentials {
                token_url: "https://127.0.0.1:9/token".to_owned(),
                client_id: "svc".to_owned(),
                client_secret: secret("cc-secret"),
                ..proto::ClientCredentials::default()
            }),
        );
        let node = TestNode::new(
            Some(snapshot(1, vec![client_credentials])),
            ProxyLimits::default(),
        );
        let response = node.send(post("machine", &tool_call(11, "x"), &[])).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let body = json_body(response).await;
        assert_eq!(body["id"], 11);
        assert_eq!(body["error"]["data"]["reason"], "unreachable");
        assert_eq!(
            body["error"]["message"],
            "the gateway could not obtain its credential for the app (unreachable)"
        );
        assert!(!body.to_string().contains("cc-secret"));
        assert!(upstream.received_nothing());
    }

    #[tokio::test]
    async fn malformed_json_rpc_is_refused_before_the_upstream() {
        let mut upstream = TestUpstream::start().await;
        let node = TestNode::with_servers(vec![server("demo", &upstream.url("/mcp"), bearer("t"))]);
        let mut request = post("demo", &Value::Null, &[]);
        *request.body_mut() = Body::from("{\"jsonrpc\": \"2.0\", \"id\": 1, ");
        let response = node.send(request).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = json_body(response).await;
        assert_eq!(body["error"]["code"], -32700);
        assert_eq!(body["error"]["data"]["code"], "invalid_argument");
        assert!(upstream.received_nothing());
    }

    #[tokio::test]
    async fn readiness_follows_the_snapshot_and_an_empty_node_answers_503() {
        let empty = TestNode::new(None, ProxyLimits::default());
        let get = |path: &str| {
            Request::get(path)
                .header("host", "localhost")
                .body(Body::empty())
                .unwrap()
        };
        let live = empty.send(get("/healthz")).await;
        assert_eq!(live.status(), StatusCode::OK);
        let ready = empty.send(get("/readyz")).await;
        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        let proxied = empty.send(post("demo", &tool_call(1, "x"), &[])).await;
        assert_eq!(proxied.status(), StatusCode::SERVICE_UNAVAILABLE);

        empty.state.snapshots.store(compile(snapshot(8, vec![])));
        let ready = empty.send(get("/readyz")).await;
        assert_eq!(ready.status(), StatusCode::OK);
        assert_eq!(
            json_body(ready).await,
            json!({"status": "ready", "snapshot_version": 8})
        );
    }
}

mod jwt {
    //! Passthrough agent authentication with JWT validation, against a JWKS served over
    //! HTTP by the test and a real upstream.

    use super::*;
    use common::jwks::{JwksServer, TestKey, jwks, unsigned_token};
    use portcullis_data_plane::jwt::validator::KeySource;
    use portcullis_data_plane::jwt::{JwksPolicy, JwksRegistry, JwtValidator};
    use portcullis_data_plane::proxy::agent_auth::AgentAuthPlan;
    use portcullis_data_plane::record::RequestRecord;
    use std::sync::atomic::Ordering;

    const ISSUER: &str = "https://idp.example.com";
    const AUDIENCE: &str = "mcp-gateway";

    /// Forced refreshes are allowed once an hour here, so counting fetches is exact however
    /// slow the machine.
    fn registry() -> JwksRegistry {
        JwksRegistry::new(JwksPolicy {
            forced_refresh_cooldown: Duration::from_secs(3600),
            request_wait: Duration::from_secs(5),
            ..JwksPolicy::default()
        })
        .unwrap()
    }

    fn validation_by_url(url: &str) -> proto::JwtValidation {
        proto::JwtValidation {
            jwks_url: url.to_owned(),
            issuer: ISSUER.to_owned(),
            audience: AUDIENCE.to_owned(),
            ..proto::JwtValidation::default()
        }
    }

    fn jwt_server(
        name: &str,
        upstream: &TestUpstream,
        app: Kind,
        validation: proto::JwtValidation,
    ) -> proto::McpServer {
        let mut server = server(name, &upstream.url("/mcp"), app);
        server.agent_auth = Some(proto::AgentAuth {
            mode: Some(proto::agent_auth::Mode::Passthrough(
                proto::PassthroughAgent {
                    jwt_validation: Some(validation),
                },
            )),
            restricted_inbound_headers: vec!["x-internal-*".to_owned()],
        });
        server
    }

    fn seconds_from_now(offset: i64) -> i64 {
        portcullis_data_plane::jwt::unix_now() + offset
    }

    fn claims(subject: &str) -> Value {
        json!({
            "sub": subject, "iss": ISSUER, "aud": [AUDIENCE, "other"],
            "exp": seconds_from_now(600), "email": format!("{subject}@example.com"),
            // Different for every token, so no test is answered from the verified cache by
            // accident.
            "jti": uuid::Uuid::new_v4().to_string(),
        })
    }

    fn bearer_header(token: &str) -> (String, String) {
        ("authorization".to_owned(), format!("Bearer {token}"))
    }

    async fn call(node: &TestNode, server: &str, token: Option<&str>) -> http::Response<Body> {
        let headers: Vec<(String, String)> = token.map(bearer_header).into_iter().collect();
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        node.send(post(server, &tool_call(5, "search"), &headers))
            .await
    }

    /// Asserts a 200 and reads the whole body (which finishes the request record).
    async fn answered(response: http::Response<Body>) -> Value {
        assert_eq!(response.status(), StatusCode::OK);
        json_body(response).await
    }

    fn validator<'a>(
        snapshot: &'a portcullis_data_plane::compiled::CompiledSnapshot,
        server: &str,
    ) -> &'a JwtValidator {
        match &snapshot.server(server).unwrap().agent_auth {
            AgentAuthPlan::PassthroughValidated(validator) => validator,
            other => panic!("not validated: {other:?}"),
        }
    }

    /// Asserts a 401 with the reason, the challenge and the JSON-RPC body; returns the
    /// record.
    async fn expect_refused(
        node: &mut TestNode,
        response: http::Response<Body>,
        reason: &str,
        description: &str,
    ) -> RequestRecord {
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{reason}");
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned();
        if reason == "missing_token" {
            assert_eq!(challenge, "Bearer");
        } else {
            assert_eq!(
                challenge,
                format!("Bearer error=\"invalid_token\", error_description=\"{description}\"")
            );
        }
        let body = json_body(response).await;
        assert_eq!(body["error"]["message"], description);
        assert_eq!(body["error"]["data"]["code"], "unauthenticated");
        assert_eq!(body["error"]["data"]["reason"], reason);
        let record = node.next_record().await;
        assert_eq!(record.outcome, Outcome::Rejected);
        assert_eq!(record.error_code, Some(ErrorCode::Unauthenticated));
        assert_eq!(record.agent_auth_rejection, Some(reason));
        assert_eq!(record.caller, "anonymous");
        assert!(!record.caller_verified);
        record
    }

    #[tokio::test]
    async fn a_valid_token_is_forwarded_with_its_subject_recorded_but_not_the_token() {
        let key = TestKey::rsa("k1");
        let idp = JwksServer::start(jwks(&[&key])).await;
        let mut upstream = TestUpstream::start().await;
        let registry = registry();
        let mut node = TestNode::with_jwks(
            snapshot(
                1,
                vec![
                    jwt_server(
                        "bearer",
                        &upstream,
                        bearer("svc-token"),
                        validation_by_url(&idp.url()),
                    ),
                    jwt_server(
                        "keyed",
                        &upstream,
                        api_key("x-api-key", "k-1", proto::ApiKeyLocation::Header),
                        validation_by_url(&idp.url()),
                    ),
                ],
            ),
            &registry,
        );
        let token = key.sign(&claims("alice"));
        let mut headers: Vec<(&str, &str)> = CALLER_HEADERS
            .iter()
            .filter(|(name, _)| *name != "authorization")
            .copied()
            .collect();
        let authorization = format!("Bearer {token}");
        headers.push(("authorization", &authorization));

        let response = node
            .send(post("bearer", &tool_call(5, "search"), &headers))
            .await;
        assert_eq!(answered(response).await["id"], 5);
        let received = upstream.next_request().await;
        let authorization: Vec<_> = received.headers.get_all("authorization").iter().collect();
        assert_eq!(authorization, ["Bearer svc-token"]);
        assert!(received.headers.get("cookie").is_none());
        assert!(received.headers.get("x-internal-user").is_none());
        assert_eq!(received.headers["x-custom"], "keep-me");
        let record = node.next_record().await;
        assert_eq!(record.outcome, Outcome::Completed);
        assert_eq!(record.caller, "alice");
        assert!(record.caller_verified);
        assert!(record.caller_presented_credential);
        assert_eq!(record.agent_auth_rejection, None);
        assert!(!format!("{record:?}").contains(&token));

        // The same token again: forwarded, answered from the verified-token cache.
        let response = node
            .send(post("bearer", &tool_call(6, "search"), &headers))
            .await;
        answered(response).await;
        upstream.next_request().await;
        node.next_record().await;
        let snapshot = node.state.snapshots.load().unwrap();
        let stats = validator(&snapshot, "bearer").stats();
        assert_eq!(stats.signature_checks.load(Ordering::Relaxed), 1);
        assert_eq!(stats.cache_hits.load(Ordering::Relaxed), 1);

        // Another server behind the same URL: the caller's token is not forwarded there
        // either, and the keys were fetched once for both.
        let response = node
            .send(post("keyed", &tool_call(7, "search"), &headers))
            .await;
        answered(response).await;
        let received = upstream.next_request().await;
        assert!(received.headers.get("authorization").is_none());
        assert_eq!(received.headers["x-api-key"], "k-1");
        assert_eq!(node.next_record().await.caller, "alice");
        assert_eq!(idp.fetches(), 1);
        assert_eq!(registry.len(), 1);
    }

    #[tokio::test]
    async fn missing_and_invalid_tokens_get_401_with_a_reason_and_never_reach_the_upstream() {
        let key = TestKey::ec_p256("k1");
        let idp = JwksServer::start(jwks(&[&key])).await;
        let mut upstream = TestUpstream::start().await;
        let registry = registry();
        let mut node = TestNode::with_jwks(
            snapshot(
                1,
                vec![jwt_server(
                    "demo",
                    &upstream,
                    bearer("svc"),
                    validation_by_url(&idp.url()),
                )],
            ),
            &registry,
        );
        let with = |field: &str, value: Value| {
            let mut claims = claims("alice");
            claims[field] = value;
            claims
        };
        let response = call(&node, "demo", None).await;
        expect_refused(&mut node, response, "missing_token", "no bearer token").await;
        let cases = [
            (
                key.sign(&with("exp", json!(seconds_from_now(-3600)))),
                "expired",
                "token expired",
            ),
            (
                key.sign(&with("nbf", json!(seconds_from_now(3600)))),
                "not_yet_valid",
                "token not yet valid",
            ),
            (
                key.sign(&with("iss", json!("https://evil.example"))),
                "wrong_issuer",
                "wrong issuer",
            ),
            (
                key.sign(&with("aud", json!("someone-else"))),
                "wrong_audience",
                "wrong audience",
            ),
            (
                TestKey::ec_p256("k1").sign(&claims("mallory")),
                "bad_signature",
                "bad signature",
            ),
            (
                unsigned_token("k1", &claims("mallory")),
                "unsupported_algorithm",
                "unsupported algorithm: unsigned tokens (alg none) are refused",
            ),
            (
                "not.a.jwt".to_owned(),
                "malformed_token",
                "malformed token: the header is not base64url",
            ),
            (
                "a".repeat(9000),
                "token_too_large",
                "token too large: the Authorization header is limited to 8192 bytes",
            ),
        ];
        for (token, reason, description) in cases {
            let response = call(&node, "demo", Some(&token)).await;
            let record = expect_refused(&mut node, response, reason, description).await;
            assert!(record.caller_presented_credential || reason == "missing_token");
        }
        assert!(upstream.received_nothing());
        assert_eq!(idp.fetches(), 1);
    }

    #[tokio::test]
    async fn a_rotated_key_is_picked_up_without_restart_and_forced_refreshes_are_rate_limited() {
        let first = TestKey::ec_p256("2026-01");
        let idp = JwksServer::start(jwks(&[&first])).await;
        let mut upstream = TestUpstream::start().await;
        let registry = registry();
        let mut node = TestNode::with_jwks(
            snapshot(
                1,
                vec![jwt_server(
                    "demo",
                    &upstream,
                    bearer("svc"),
                    validation_by_url(&idp.url()),
                )],
            ),
            &registry,
        );
        let response = call(&node, "demo", Some(&first.sign(&claims("alice")))).await;
        answered(response).await;
        upstream.next_request().await;
        node.next_record().await;
        assert_eq!(idp.fetches(), 1);

        // The issuer rotates: the new kid is unknown, one refresh fetches it.
        let second = TestKey::ed25519("2026-02");
        idp.publish(jwks(&[&second]));
        let response = call(&node, "demo", Some(&second.sign(&claims("bob")))).await;
        answered(response).await;
        upstream.next_request().await;
        assert_eq!(node.next_record().await.caller, "bob");
        assert_eq!(idp.fetches(), 2);

        // The retired key no longer verifies, and unknown kids within the cooldown cause no
        // fetch, concurrent or not.
        let retired = call(&node, "demo", Some(&first.sign(&claims("alice")))).await;
        expect_refused(&mut node, retired, "unknown_key_id", "unknown key id").await;
        let forged: Vec<String> = (0..8)
            .map(|index| {
                second.sign_with_header(
                    &json!({"alg": "EdDSA", "kid": format!("ghost-{index}")}),
                    &claims("mallory"),
                )
            })
            .collect();
        let responses =
            futures::future::join_all(forged.iter().map(|token| call(&node, "demo", Some(token))))
                .await;
        for response in responses {
            expect_refused(&mut node, response, "unknown_key_id", "unknown key id").await;
        }
        assert_eq!(idp.fetches(), 2);
        assert!(upstream.received_nothing());
    }

    #[tokio::test]
    async fn cached_keys_keep_working_while_the_jwks_url_fails() {
        let key = TestKey::rsa("k1");
        let idp = JwksServer::start(jwks(&[&key])).await;
        let mut upstream = TestUpstream::start().await;
        let registry = registry();
        let mut node = TestNode::with_jwks(
            snapshot(
                1,
                vec![jwt_server(
                    "demo",
                    &upstream,
                    bearer("svc"),
                    validation_by_url(&idp.url()),
                )],
            ),
            &registry,
        );
        answered(call(&node, "demo", Some(&key.sign(&claims("alice")))).await).await;
        upstream.next_request().await;
        node.next_record().await;

        // The JWKS URL breaks; an unknown kid makes the node try it (and fail).
        idp.fail(true);
        let unknown = key.sign_with_header(&json!({"alg": "RS256", "kid": "k2"}), &claims("x"));
        let response = call(&node, "demo", Some(&unknown)).await;
        expect_refused(&mut node, response, "unknown_key_id", "unknown key id").await;
        assert_eq!(idp.fetches(), 2);

        // The keys fetched before still verify new tokens.
        let response = call(&node, "demo", Some(&key.sign(&claims("carol")))).await;
        answered(response).await;
        upstream.next_request().await;
        assert_eq!(node.next_record().await.caller, "carol");
    }

    #[tokio::test]
    async fn a_jwks_url_never_reached_refuses_its_tokens_quickly() {
        let key = TestKey::ed25519("k1");
        let nowhere = format!("http://{}/jwks.json", dead_address().await);
        let mut upstream = TestUpstream::start().await;
        let registry = registry();
        let mut node = TestNode::with_jwks(
            snapshot(
                1,
                vec![jwt_server(
                    "demo",
                    &upstream,
                    bearer("svc"),
                    validation_by_url(&nowhere),
                )],
            ),
            &registry,
        );
        let started = Instant::now();
        let response = call(&node, "demo", Some(&key.sign(&claims("alice")))).await;
        expect_refused(
            &mut node,
            response,
            "signing_keys_unavailable",
            "the signing keys are not available yet, try again later",
        )
        .await;
        assert!(
            started.elapsed() <= registry.policy().request_wait,
            "{:?}",
            started.elapsed()
        );
        assert!(upstream.received_nothing());
    }

    #[tokio::test]
    async fn an_inline_jwks_verifies_without_any_fetch() {
        let key = TestKey::ec_p384("inline-1");
        let mut upstream = TestUpstream::start().await;
        let registry = registry();
        let validation = proto::JwtValidation {
            jwks_json: jwks(&[&key]).to_string(),
            ..proto::JwtValidation::default()
        };
        let mut node = TestNode::with_jwks(
            snapshot(
                1,
                vec![jwt_server("demo", &upstream, bearer("svc"), validation)],
            ),
            &registry,
        );
        let snapshot = node.state.snapshots.load().unwrap();
        assert!(matches!(
            validator(&snapshot, "demo").key_source(),
            KeySource::Inline(_)
        ));
        assert!(registry.is_empty());
        // No issuer or audience configured: any issuer and audience pass.
        let token =
            key.sign(&json!({"sub": "svc-42", "iss": "anyone", "exp": seconds_from_now(60)}));
        let response = call(&node, "demo", Some(&token)).await;
        answered(response).await;
        upstream.next_request().await;
        assert_eq!(node.next_record().await.caller, "svc-42");

        let impostor = TestKey::ec_p384("inline-1").sign(&claims("mallory"));
        let response = call(&node, "demo", Some(&impostor)).await;
        expect_refused(&mut node, response, "bad_signature", "bad signature").await;
        assert!(upstream.received_nothing());
    }

    #[tokio::test]
    async fn under_app_auth_passthrough_the_verified_token_itself_goes_upstream() {
        let key = TestKey::ed25519("k1");
        let idp = JwksServer::start(jwks(&[&key])).await;
        let mut upstream = TestUpstream::start().await;
        let registry = registry();
        let mut node = TestNode::with_jwks(
            snapshot(
                1,
                vec![jwt_server(
                    "demo",
                    &upstream,
                    passthrough(),
                    validation_by_url(&idp.url()),
                )],
            ),
            &registry,
        );
        let token = key.sign(&claims("alice"));
        let response = call(&node, "demo", Some(&token)).await;
        answered(response).await;
        let received = upstream.next_request().await;
        assert_eq!(received.headers["authorization"], format!("Bearer {token}"));
        assert_eq!(node.next_record().await.caller, "alice");
    }
}

mod discovery {
    use super::*;
    use portcullis_data_plane::compiled::SnapshotSlot;
    use portcullis_data_plane::discovery::{BackoffPolicy, DiscoveryClient, DiscoveryOptions};
    use portcullis_data_plane::jwt::{JwksPolicy, JwksRegistry};
    use portcullis_data_plane::store::SnapshotStore;
    use portcullis_shared::crypto::AeadKey;
    use portcullis_shared::secret::SecretValue;
    use tokio_util::sync::CancellationToken;

    struct RunningClient {
        slot: Arc<SnapshotSlot>,
        store: SnapshotStore,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        _state_dir: tempfile::TempDir,
    }

    impl RunningClient {
        fn start(control_plane: &TestControlPlane) -> Self {
            let state_dir = tempfile::tempdir().unwrap();
            let (key, _) = AeadKey::generate().unwrap();
            let store = SnapshotStore::new(state_dir.path(), Arc::new(key));
            let slot = Arc::new(SnapshotSlot::default());
            let options = DiscoveryOptions {
                node_id: "node-a".to_owned(),
                address: "http://127.0.0.1:7400/".to_owned(),
                control_plane: portcullis_data_plane::config::ControlPlaneConfig::with_token(
                    control_plane.url().parse().unwrap(),
                    SecretValue::new(NODE_TOKEN),
                ),
                backoff: BackoffPolicy {
                    initial: Duration::from_millis(20),
                    max: Duration::from_millis(200),
                },
                allowed_upstream_hosts: portcullis_data_plane::config::UpstreamHostAllowlist::Any,
            };
            let shutdown = CancellationToken::new();
            let jwks = Arc::new(JwksRegistry::new(JwksPolicy::default()).unwrap());
            let client = DiscoveryClient::new(options, slot.clone(), jwks, Some(store.clone()));
            let task = tokio::spawn(client.run(shutdown.clone()));
            Self {
                slot,
                store,
                shutdown,
                task,
                _state_dir: state_dir,
            }
        }

        async fn stop(self) {
            self.shutdown.cancel();
            tokio::time::timeout(Duration::from_secs(10), self.task)
                .await
                .expect("the discovery client did not stop")
                .unwrap();
        }

        async fn persisted_version(&self) -> Option<u64> {
            self.store
                .load()
                .await
                .unwrap()
                .map(|snapshot| snapshot.version)
        }
    }

    fn demo_server() -> proto::McpServer {
        server("demo", "http://127.0.0.1:9/mcp", bearer("svc-token"))
    }

    fn ack(version: u64) -> Seen {
        Seen::Ack(proto::SnapshotAck {
            version,
            nonce: format!("nonce-{version}"),
        })
    }

    async fn expect_hello(control_plane: &mut TestControlPlane) -> proto::NodeHello {
        match control_plane.next_seen().await {
            Seen::Hello {
                hello,
                authorization,
            } => {
                assert_eq!(authorization, format!("Bearer {NODE_TOKEN}"));
                hello
            }
            other => panic!("expected a hello, got {other:?}"),
        }
    }

    /// A control plane serving version 1 and a client that said hello and acknowledged it.
    async fn connected_at_version_1() -> (TestControlPlane, RunningClient, proto::NodeHello) {
        let mut control_plane = TestControlPlane::start(
            "127.0.0.1:0".parse().unwrap(),
            Some(update(1, vec![demo_server()])),
        )
        .await;
        let client = RunningClient::start(&control_plane);
        let hello = expect_hello(&mut control_plane).await;
        assert_eq!(control_plane.next_seen().await, ack(1));
        assert_eq!(client.slot.version(), Some(1));
        (control_plane, client, hello)
    }

    #[tokio::test]
    async fn a_good_snapshot_is_applied_persisted_and_acknowledged() {
        let (mut control_plane, client, hello) = connected_at_version_1().await;
        assert_eq!(hello.node_id, "node-a");
        assert_eq!(hello.address, "http://127.0.0.1:7400/");
        assert_eq!(hello.last_applied_version, 0);
        assert!(!hello.software_version.is_empty());
        assert_eq!(client.persisted_version().await, Some(1));

        control_plane.push(update(2, vec![demo_server()]));
        assert_eq!(control_plane.next_seen().await, ack(2));
        assert_eq!(client.slot.version(), Some(2));
        assert_eq!(client.persisted_version().await, Some(2));
        client.stop().await;
    }

    #[tokio::test]
    async fn a_bad_snapshot_is_refused_and_the_old_one_kept() {
        let (mut control_plane, client, _) = connected_at_version_1().await;

        let mut broken = demo_server();
        broken.upstream_url = "not a url".to_owned();
        control_plane.push(update(2, vec![broken]));
        match control_plane.next_seen().await {
            Seen::Nack(nack) => {
                assert_eq!((nack.version, nack.nonce.as_str()), (2, "nonce-2"));
                assert!(
                    nack.error.contains("servers[demo].upstream_url"),
                    "{}",
                    nack.error
                );
            }
            other => panic!("expected a NACK, got {other:?}"),
        }
        assert_eq!(client.slot.version(), Some(1));
        assert_eq!(client.persisted_version().await, Some(1));

        let mut mismatched = update(3, vec![demo_server()]);
        mismatched.snapshot.as_mut().unwrap().version = 4;
        control_plane.push(mismatched);
        assert!(matches!(control_plane.next_seen().await, Seen::Nack(nack) if nack.version == 3));
        assert_eq!(client.slot.version(), Some(1));

        // The next good snapshot is taken again.
        control_plane.push(update(5, vec![demo_server()]));
        assert_eq!(control_plane.next_seen().await, ack(5));
        assert_eq!(client.slot.version(), Some(5));
        client.stop().await;
    }

    #[tokio::test]
    async fn the_client_reconnects_after_the_control_plane_restarts() {
        let (first, client, _) = connected_at_version_1().await;
        let address = first.address;
        first.stop().await;
        // While the control plane is away the node keeps what it has.
        assert_eq!(client.slot.version(), Some(1));

        let mut second =
            TestControlPlane::start(address, Some(update(2, vec![demo_server()]))).await;
        let hello = expect_hello(&mut second).await;
        assert_eq!(hello.last_applied_version, 1);
        assert_eq!(second.next_seen().await, ack(2));
        assert_eq!(client.slot.version(), Some(2));
        client.stop().await;
    }
}

mod binary {
    use super::*;
    use common::process::{BINARY, NodeProcess};
    use portcullis_shared::crypto::{AeadKey, encode_key_text};

    async fn http_get(address: std::net::SocketAddr, path: &str) -> (StatusCode, Value) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let response = client
            .get(format!("http://{address}{path}").parse().unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_restarted_node_serves_its_persisted_snapshot_without_a_control_plane() {
        let mut upstream = TestUpstream::start().await;
        let mut control_plane = TestControlPlane::start(
            "127.0.0.1:0".parse().unwrap(),
            Some(update(
                5,
                vec![server("demo", &upstream.url("/mcp"), bearer("svc-token"))],
            )),
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let (_, key) = AeadKey::generate().unwrap();
        std::fs::write(dir.path().join("state.key"), encode_key_text(&key)).unwrap();
        std::fs::write(dir.path().join("node.token"), NODE_TOKEN).unwrap();
        let args = |control_plane: &str| -> Vec<String> {
            [
                "--node-id",
                "node-bin",
                "--listen",
                "127.0.0.1:0",
                "--control-plane",
                control_plane,
                "--node-token-file",
                dir.path().join("node.token").to_str().unwrap(),
                "--state-dir",
                dir.path().join("state").to_str().unwrap(),
                "--state-key-file",
                dir.path().join("state.key").to_str().unwrap(),
            ]
            .map(str::to_owned)
            .to_vec()
        };

        // First life: the snapshot comes from the control plane and is persisted.
        let node =
            NodeProcess::start(&args(&control_plane.url()), &dir.path().join("first.log")).await;
        match control_plane.next_seen().await {
            Seen::Hello { hello, .. } => {
                assert_eq!(hello.node_id, "node-bin");
                assert_eq!(hello.address, format!("http://{}/", node.address));
            }
            other => panic!("expected a hello, got {other:?}"),
        }
        assert!(matches!(control_plane.next_seen().await, Seen::Ack(ack) if ack.version == 5));
        assert!(node.terminate().await.success());
        let control_plane_url = control_plane.url();
        control_plane.stop().await;

        let state = std::fs::read(dir.path().join("state").join("snapshot.bin")).unwrap();
        assert!(
            !state
                .windows(b"svc-token".len())
                .any(|window| window == b"svc-token")
        );

        // Second life: nobody to ask; the node serves from disk at once.
        let node =
            NodeProcess::start(&args(&control_plane_url), &dir.path().join("second.log")).await;
        let (status, ready) = http_get(node.address, "/readyz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ready["snapshot_version"], 5);

        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let request = Request::post(format!("http://{}/mcp/demo", node.address))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(tool_call(1, "x").to_string())))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let received = upstream.next_request().await;
        assert_eq!(received.headers["authorization"], "Bearer svc-token");
        assert!(node.terminate().await.success());
    }

    #[tokio::test]
    async fn bad_configuration_exits_with_64_and_names_every_field() {
        let output = tokio::process::Command::new(BINARY)
            .env_clear()
            .args(["--listen", "nowhere"])
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(64));
        assert!(output.stdout.is_empty());
        let stderr = String::from_utf8(output.stderr).unwrap();
        for field in [
            "node_id",
            "listen",
            "control_plane",
            "node_token",
            "state_dir",
            "state_key",
        ] {
            assert!(
                stderr.contains(&format!("  {field}:")),
                "{field} missing in {stderr}"
            );
        }

        let output = tokio::process::Command::new(BINARY)
            .env_clear()
            .arg("--no-such-flag")
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(64));
    }
}

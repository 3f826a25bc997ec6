//! The official Python MCP SDK against upstream servers directly (no gateway yet).

use portcullis_tests::echo_upstream::EchoedRequest;
use portcullis_tests::{EchoUpstream, ServerEverything, python_mcp_client};
use serde_json::json;

#[tokio::test]
async fn python_client_lists_and_calls_echo_upstream_tools() {
    let upstream = EchoUpstream::start(&[]).await.unwrap();

    let report = python_mcp_client(format!("{}?probe=1", upstream.url()))
        .header("X-Portcullis-Test", "seen-upstream")
        .list_tools()
        .call("echo_headers", json!({}))
        .call("whoami", json!({}))
        .call("add", json!({"a": 2, "b": 40}))
        .run()
        .await
        .unwrap();
    report.expect_ok().unwrap();

    let mut tool_names = report.tool_names();
    tool_names.sort_unstable();
    assert_eq!(tool_names, ["add", "count", "echo_headers", "whoami"]);
    assert_eq!(
        report
            .server_info
            .as_ref()
            .and_then(|info| info["name"].as_str()),
        Some("echo-upstream")
    );

    let echoed: EchoedRequest =
        serde_json::from_str(report.call("echo_headers").unwrap().text().unwrap()).unwrap();
    assert_eq!(echoed.header("x-portcullis-test"), Some("seen-upstream"));
    assert_eq!(echoed.query.as_deref(), Some("probe=1"));
    assert_eq!(echoed.path, "/mcp");
    assert!(
        echoed.header("mcp-session-id").is_some(),
        "stateful sessions are on by default: {echoed:?}"
    );

    assert_eq!(report.call("whoami").unwrap().text().unwrap(), "anonymous");
    assert_eq!(report.call("add").unwrap().text().unwrap(), "42");
}

#[tokio::test]
async fn count_progress_notifications_arrive_while_the_call_runs() {
    const NOTIFICATIONS: usize = 5;
    const DELAY_MS: u64 = 200;
    let upstream = EchoUpstream::start(&[]).await.unwrap();

    let report = python_mcp_client(upstream.url())
        .call("count", json!({"n": NOTIFICATIONS, "delay_ms": DELAY_MS}))
        .run()
        .await
        .unwrap();
    report.expect_ok().unwrap();

    let call = report.call("count").unwrap();
    let steps: Vec<f64> = call.progress.iter().map(|p| p.progress).collect();
    assert_eq!(steps, [1.0, 2.0, 3.0, 4.0, 5.0], "{call:?}");
    // Sent 200 ms apart: the first arrives about 800 ms before the result. A buffering
    // hop would deliver all of them at the end, together with the result.
    let first_arrival = call.progress[0].at;
    let last_arrival = call.progress[NOTIFICATIONS - 1].at;
    let finished = call.finished_at.unwrap();
    assert!(
        finished - first_arrival >= 0.5,
        "the first notification arrived only {:.3} s before the result: {call:?}",
        finished - first_arrival
    );
    assert!(
        last_arrival - first_arrival >= 0.5,
        "notifications arrived within {:.3} s of each other: {call:?}",
        last_arrival - first_arrival
    );
}

#[tokio::test]
async fn echo_upstream_requires_its_bearer_token_when_asked_to() {
    let upstream = EchoUpstream::start(&["--require-bearer", "upstream-secret"])
        .await
        .unwrap();

    let anonymous = python_mcp_client(upstream.url())
        .list_tools()
        .run()
        .await
        .unwrap();
    assert!(
        !anonymous.ok,
        "a client without the token is refused: {anonymous:?}"
    );
    let refusal = anonymous
        .http_responses
        .first()
        .expect("the client received a response");
    assert_eq!(refusal.status, 401, "{anonymous:?}");
    assert!(
        refusal
            .www_authenticate
            .as_deref()
            .is_some_and(|challenge| challenge.starts_with("Bearer ")),
        "{refusal:?}"
    );

    let response = reqwest::Client::new()
        .post(upstream.url())
        .header("authorization", "Bearer wrong-secret")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
    assert!(
        response
            .headers()
            .get("www-authenticate")
            .is_some_and(|value| value.to_str().unwrap().starts_with("Bearer ")),
        "{:?}",
        response.headers()
    );

    let authorized = python_mcp_client(upstream.url())
        .header("Authorization", "Bearer upstream-secret")
        .call("whoami", json!({}))
        .run()
        .await
        .unwrap();
    authorized.expect_ok().unwrap();
    assert_eq!(
        authorized.call("whoami").unwrap().text().unwrap(),
        "Bearer upstream-secret"
    );
}

#[tokio::test]
async fn python_client_lists_and_calls_server_everything_tools() {
    let upstream = ServerEverything::start().await.unwrap();

    let report = python_mcp_client(upstream.url())
        .list_tools()
        .call("echo", json!({"message": "through the harness"}))
        .run()
        .await
        .unwrap();
    report.expect_ok().unwrap();

    let tool_names = report.tool_names();
    for expected in ["echo", "get-sum"] {
        assert!(
            tool_names.contains(&expected),
            "{expected} missing from {tool_names:?}"
        );
    }
    let echoed = report.call("echo").unwrap().text().unwrap();
    assert!(echoed.contains("through the harness"), "{echoed}");
}

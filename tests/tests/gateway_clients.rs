//! Real MCP clients through a real node to real upstreams: the Python SDK, the Inspector CLI
//! and mcp-remote list and call tools; SSE responses and progress notifications arrive while
//! the call runs, not bunched at the end.

use portcullis_tests::echo_upstream::EchoedRequest;
use portcullis_tests::gateway::servers::{passthrough, server};
use portcullis_tests::node_clients::{inspector_cli, mcp_remote_client};
use portcullis_tests::python_client::ToolCallReport;
use portcullis_tests::{EchoUpstream, Gateway, ServerEverything, python_mcp_client};
use serde_json::json;

/// A gateway with one node, and `upstream_url` behind it as server `name`.
async fn gateway_in_front_of(name: &str, upstream_url: &str) -> Gateway {
    let mut gateway = Gateway::start(1).await.unwrap();
    gateway
        .create_server(server(name, upstream_url, passthrough()))
        .await
        .unwrap();
    gateway
}

/// Progress notifications `interval_secs` apart must arrive spread over the call: the first
/// well before the result, and the first and last well apart. A hop that buffers the SSE
/// stream would deliver them all at the end, together with the result.
fn assert_progress_arrived_incrementally(call: &ToolCallReport, steps: usize, interval_secs: f64) {
    let progress: Vec<f64> = call.progress.iter().map(|p| p.progress).collect();
    let expected: Vec<f64> = (1..=steps).map(|step| step as f64).collect();
    assert_eq!(progress, expected, "{call:#?}");
    let span_secs = interval_secs * (steps - 1) as f64;
    let first = call.progress[0].at;
    let last = call.progress[steps - 1].at;
    let finished = call.finished_at.expect("the call finished");
    assert!(
        last - first >= 0.6 * span_secs,
        "the notifications arrived within {:.3} s of each other (sent over {span_secs:.1} s): {call:#?}",
        last - first
    );
    assert!(
        finished - first >= 0.6 * span_secs,
        "the first notification arrived only {:.3} s before the result: {call:#?}",
        finished - first
    );
    // Each arrival is later than the one before: the stream is read as it comes.
    for pair in call.progress.windows(2) {
        assert!(pair[1].at > pair[0].at, "{call:#?}");
    }
}

#[tokio::test]
async fn python_client_lists_and_calls_echo_upstream_tools_through_a_node() {
    let upstream = EchoUpstream::start(&[]).await.unwrap();
    let gateway = gateway_in_front_of("echo", &upstream.url()).await;
    let node = gateway.node(0);

    let report = python_mcp_client(format!("{}?tenant=blue", node.mcp_url("echo")))
        .header("X-Portcullis-Test", "seen-upstream")
        .list_tools()
        .call("echo_headers", json!({}))
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
    assert_eq!(report.call("add").unwrap().text().unwrap(), "42");

    let echoed: EchoedRequest =
        serde_json::from_str(report.call("echo_headers").unwrap().text().unwrap()).unwrap();
    assert_eq!(
        echoed.path, "/mcp",
        "the node forwards to the upstream's path"
    );
    assert_eq!(echoed.query.as_deref(), Some("tenant=blue"));
    assert_eq!(echoed.header("x-portcullis-test"), Some("seen-upstream"));
    assert_eq!(
        echoed.header("host"),
        Some(upstream.address().to_string().as_str()),
        "the upstream sees its own host, not the node's"
    );
    assert!(
        echoed.header("mcp-session-id").is_some(),
        "the session id passes through both ways: {echoed:?}"
    );
    assert!(
        echoed.header("mcp-protocol-version").is_some(),
        "{echoed:?}"
    );
}

#[tokio::test]
async fn progress_notifications_stream_through_a_node_as_they_are_sent() {
    const STEPS: usize = 5;
    const DELAY_MS: u64 = 250;
    let upstream = EchoUpstream::start(&[]).await.unwrap();
    let gateway = gateway_in_front_of("echo", &upstream.url()).await;

    let report = python_mcp_client(gateway.node(0).mcp_url("echo"))
        .call("count", json!({"n": STEPS, "delay_ms": DELAY_MS}))
        .run()
        .await
        .unwrap();
    report.expect_ok().unwrap();

    let call = report.call("count").unwrap();
    assert_progress_arrived_incrementally(call, STEPS, DELAY_MS as f64 / 1000.0);
    let event_stream = report
        .http_responses
        .iter()
        .find(|response| {
            response
                .content_type
                .as_deref()
                .is_some_and(|content_type| content_type.starts_with("text/event-stream"))
        })
        .cloned();
    assert!(
        event_stream.is_some(),
        "the tool call was answered with an SSE stream through the node: {:?}",
        report.http_responses
    );
}

#[tokio::test]
async fn python_client_uses_server_everything_through_a_node() {
    const STEPS: usize = 4;
    let upstream = ServerEverything::start().await.unwrap();
    let gateway = gateway_in_front_of("everything", &upstream.url()).await;

    let report = python_mcp_client(gateway.node(0).mcp_url("everything"))
        .list_tools()
        .call("echo", json!({"message": "through the gateway"}))
        .call("get-sum", json!({"a": 19, "b": 23}))
        .call(
            "trigger-long-running-operation",
            json!({"duration": 1.2, "steps": STEPS}),
        )
        .run()
        .await
        .unwrap();
    report.expect_ok().unwrap();

    let tool_names = report.tool_names();
    for expected in ["echo", "get-sum", "trigger-long-running-operation"] {
        assert!(
            tool_names.contains(&expected),
            "{expected} missing from {tool_names:?}"
        );
    }
    let echoed = report.call("echo").unwrap().text().unwrap();
    assert!(echoed.contains("through the gateway"), "{echoed}");
    let sum = report.call("get-sum").unwrap().text().unwrap();
    assert!(sum.contains("42"), "{sum}");
    assert_progress_arrived_incrementally(
        report.call("trigger-long-running-operation").unwrap(),
        STEPS,
        1.2 / STEPS as f64,
    );
}

#[tokio::test]
async fn inspector_cli_and_mcp_remote_list_tools_through_a_node() {
    let upstream = EchoUpstream::start(&[]).await.unwrap();
    let gateway = gateway_in_front_of("echo", &upstream.url()).await;
    let url = gateway.node(0).mcp_url("echo");

    let (inspector, remote) = tokio::join!(
        inspector_cli(
            &url,
            &[
                // The Inspector guesses the transport only from URLs ending in /mcp or /sse.
                "--transport",
                "http",
                "--method",
                "tools/call",
                "--tool-name",
                "add",
                "--tool-arg",
                "a=40",
                "--tool-arg",
                "b=2",
            ],
        ),
        mcp_remote_client(&url, &[]),
    );

    let inspector = inspector.unwrap();
    inspector.expect_success().unwrap();
    let result = inspector.stdout_json().unwrap();
    assert_eq!(
        result["content"][0]["text"].as_str(),
        Some("42"),
        "{result}"
    );

    let remote = remote.unwrap();
    remote.expect_success().unwrap();
    assert!(
        remote.stderr.contains("Connected successfully"),
        "{}",
        remote.stderr
    );
    for tool in ["echo_headers", "whoami", "count", "add"] {
        assert!(
            remote.stderr.contains(&format!("\"name\": \"{tool}\"")),
            "{tool} missing from the listing:\n{}",
            remote.stderr
        );
    }
}

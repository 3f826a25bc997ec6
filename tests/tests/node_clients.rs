//! MCP clients from npm (Inspector CLI, mcp-remote) against echo-upstream directly.

use portcullis_tests::EchoUpstream;
use portcullis_tests::node_clients::{inspector_cli, mcp_remote_client};
use serde_json::Value;

#[tokio::test]
async fn inspector_cli_lists_tools_and_sends_headers() {
    let upstream = EchoUpstream::start(&[]).await.unwrap();

    let listed = inspector_cli(&upstream.url(), &["--method", "tools/list"])
        .await
        .unwrap();
    listed.expect_success().unwrap();
    let tools = listed.stdout_json().unwrap();
    let mut names: Vec<&str> = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|tool| tool["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["add", "count", "echo_headers", "whoami"]);

    let called = inspector_cli(
        &upstream.url(),
        &[
            "--method",
            "tools/call",
            "--tool-name",
            "whoami",
            "--header",
            "Authorization: Bearer inspector-token",
        ],
    )
    .await
    .unwrap();
    called.expect_success().unwrap();
    let result = called.stdout_json().unwrap();
    assert_eq!(
        result["content"][0]["text"].as_str(),
        Some("Bearer inspector-token"),
        "{result}"
    );
    assert_eq!(result["isError"], Value::Bool(false));
}

#[tokio::test]
async fn mcp_remote_client_connects_and_lists_tools() {
    let upstream = EchoUpstream::start(&[]).await.unwrap();

    let run = mcp_remote_client(&upstream.url(), &[]).await.unwrap();
    run.expect_success().unwrap();
    // mcp-remote-client logs the listing to stderr as indented JSON.
    assert!(
        run.stderr.contains("Connected successfully"),
        "{}",
        run.stderr
    );
    for tool in ["echo_headers", "whoami", "count", "add"] {
        assert!(
            run.stderr.contains(&format!("\"name\": \"{tool}\"")),
            "{tool} missing from the listing:\n{}",
            run.stderr
        );
    }
}

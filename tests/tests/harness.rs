//! The process harness itself: startup errors are clear, crashes are real.

use std::process::Command;
use std::time::Duration;

use portcullis_tests::echo_upstream::LISTENING_LINE_PREFIX;
use portcullis_tests::paths::workspace_binary;
use portcullis_tests::{ChildProcess, EchoUpstream};

#[tokio::test]
async fn a_server_that_exits_during_startup_is_reported_with_its_stderr() {
    let mut command = Command::new(workspace_binary("echo-upstream").unwrap());
    command.args(["--listen", "not-an-address"]);
    let error = ChildProcess::start_listening("echo-upstream", command, LISTENING_LINE_PREFIX)
        .await
        .expect_err("echo-upstream must not start on an invalid address");
    let message = format!("{error:#}");
    assert!(message.contains("exited"), "{message}");
    assert!(
        message.contains("cannot listen on not-an-address"),
        "{message}"
    );
}

#[tokio::test]
async fn a_missing_workspace_binary_says_how_to_build_it() {
    let error = workspace_binary("portcullis-no-such-binary").unwrap_err();
    assert!(
        error.to_string().contains("cargo build --workspace --bins"),
        "{error}"
    );
}

#[tokio::test]
async fn kill_hard_stops_the_server_at_once() {
    let mut upstream = EchoUpstream::start(&[]).await.unwrap();
    let address = upstream.address();
    tokio::net::TcpStream::connect(address)
        .await
        .expect("echo-upstream answers once it printed its listening line");

    let status = upstream.process_mut().kill_hard().unwrap();

    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(9),
        "killed by SIGKILL, not exited: {status}"
    );
    assert!(!upstream.process_mut().is_running());
    assert!(
        tokio::net::TcpStream::connect(address).await.is_err(),
        "nothing listens on {address} after the kill"
    );
}

#[tokio::test]
async fn terminate_lets_the_server_exit_cleanly() {
    let mut upstream = EchoUpstream::start(&[]).await.unwrap();
    let status = upstream
        .process_mut()
        .terminate(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        status.success(),
        "echo-upstream exits 0 on SIGTERM: {status}"
    );
}

//! The MCP conformance suite run directly against the upstream servers.
//!
//! These are the baselines for proxy transparency: the same suite run through the gateway
//! must give the same results (except that the gateway must pass
//! `dns-rebinding-protection` itself). The expected failures are stored in
//! `tests/conformance/<target>.expected-failures.yaml`. conformance-upstream has every
//! fixture the suite calls and passes every scenario, so it is the upstream that checks the
//! most features through a proxy.

use portcullis_tests::conformance::{
    ConformanceReport, ExpectedFailures, baseline_path, conformance_server,
};
use portcullis_tests::{ConformanceUpstream, EchoUpstream, ServerEverything};

/// The suite has about 30 server scenarios; fewer means it did not really run.
const MINIMUM_SCENARIOS: usize = 25;

async fn check_against_baseline(url: &str, target: &str) -> ConformanceReport {
    let baseline_file = baseline_path(target);
    let baseline = ExpectedFailures::read(&baseline_file).unwrap();
    let report = conformance_server(url, Some(&baseline_file)).await.unwrap();

    assert!(
        report.scenarios.len() >= MINIMUM_SCENARIOS,
        "only {} scenarios ran\n{}",
        report.scenarios.len(),
        report.stdout
    );
    report.expect_failures_exactly(&baseline.server).unwrap();
    // The suite's own baseline check agrees (it also counts warnings as failures).
    assert!(
        report.exit_status.success(),
        "the suite rejected the baseline ({})\n{}",
        report.exit_status,
        report.stdout
    );
    report
}

#[tokio::test]
async fn conformance_of_server_everything_matches_its_baseline() {
    let upstream = ServerEverything::start().await.unwrap();
    check_against_baseline(&upstream.url(), "server-everything").await;
}

#[tokio::test]
async fn conformance_of_echo_upstream_matches_its_baseline() {
    let upstream = EchoUpstream::start(&[]).await.unwrap();
    check_against_baseline(&upstream.url(), "echo-upstream").await;
}

#[tokio::test]
async fn conformance_upstream_passes_every_scenario() {
    let upstream = ConformanceUpstream::start(&[]).await.unwrap();
    let report = check_against_baseline(&upstream.url(), "conformance-upstream").await;
    assert_eq!(report.total_checks_failed, 0, "{}", report.stdout);
}

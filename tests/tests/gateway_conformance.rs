//! Proxy transparency: the MCP conformance suite gives the same results directly against an
//! upstream and through a node, except `dns-rebinding-protection`, which the node must pass
//! itself whatever the upstream does.
//!
//! That scenario sends an `initialize` with `Host: evil.example.com` and
//! `Origin: http://evil.example.com` and expects a 4xx, then one with the URL's own host as
//! Host and `http://<host>` as Origin and expects a 2xx. The node rewrites Host to the
//! upstream's before forwarding, which defeats the upstream's own check, so the node checks
//! Host (its own names and loopback) and Origin (its own origin or the server's allowed
//! origins) before anything else.

use std::collections::BTreeSet;

use portcullis_tests::conformance::{
    ConformanceReport, ExpectedFailures, baseline_path, conformance_server,
};
use portcullis_tests::gateway::servers::{passthrough, server};
use portcullis_tests::{ConformanceUpstream, Gateway, ServerEverything};

const DNS_REBINDING: &str = "dns-rebinding-protection";
/// The suite has about 30 server scenarios; fewer means it did not really run.
const MINIMUM_SCENARIOS: usize = 25;

/// Runs the suite directly against `upstream_url` and through a node in front of it, checks
/// the direct run against the stored baseline of `target`, and the run through the node
/// against the direct run.
async fn direct_and_through_a_node(upstream_url: &str, target: &str) -> ConformanceReport {
    let mut gateway = Gateway::start(1).await.unwrap();
    gateway
        .create_server(server(target, upstream_url, passthrough()))
        .await
        .unwrap();
    let baseline = ExpectedFailures::read(&baseline_path(target)).unwrap();

    // One after the other: the suite has timing-sensitive scenarios, and two cores.
    let direct = conformance_server(upstream_url, None).await.unwrap();
    let through_node = conformance_server(&gateway.node(0).mcp_url(target), None)
        .await
        .unwrap();

    for report in [&direct, &through_node] {
        assert!(
            report.scenarios.len() >= MINIMUM_SCENARIOS,
            "only {} scenarios ran\n{}",
            report.scenarios.len(),
            report.stdout
        );
    }
    direct.expect_failures_exactly(&baseline.server).unwrap();

    // Same scenarios, same outcome, except that the node passes dns-rebinding-protection.
    let scenarios_direct: BTreeSet<&String> = direct.scenarios.keys().collect();
    let scenarios_through_node: BTreeSet<&String> = through_node.scenarios.keys().collect();
    assert_eq!(scenarios_direct, scenarios_through_node);
    let mut expected_through_node = direct.failing_scenarios();
    expected_through_node.remove(DNS_REBINDING);
    through_node
        .expect_failures_exactly(&expected_through_node)
        .unwrap();
    let rebinding = &through_node.scenarios[DNS_REBINDING];
    assert!(
        rebinding.passed() && rebinding.checks_passed >= 2,
        "{rebinding:?}\n{}",
        through_node.stdout
    );
    // Passing scenarios ran the same checks through the node as directly.
    for (name, outcome) in &direct.scenarios {
        if outcome.passed() && name != DNS_REBINDING {
            assert_eq!(
                through_node.scenarios[name].checks_passed, outcome.checks_passed,
                "{name}: different number of passed checks through the node\n{}",
                through_node.stdout
            );
        }
    }
    through_node
}

#[tokio::test]
async fn conformance_upstream_through_a_node_passes_what_it_passes_directly() {
    let upstream = ConformanceUpstream::start(&[]).await.unwrap();
    let through_node = direct_and_through_a_node(&upstream.url(), "conformance-upstream").await;
    // conformance-upstream passes everything, so through the node nothing may fail: this
    // covers sampling, elicitation, logging, progress and resources through the proxy.
    assert_eq!(
        through_node.total_checks_failed, 0,
        "{}",
        through_node.stdout
    );
}

#[tokio::test]
async fn server_everything_through_a_node_also_passes_dns_rebinding_protection() {
    let upstream = ServerEverything::start().await.unwrap();
    let baseline = ExpectedFailures::read(&baseline_path("server-everything")).unwrap();
    assert!(
        baseline.server.contains(DNS_REBINDING),
        "server-everything is expected to accept any Host when tested directly"
    );
    direct_and_through_a_node(&upstream.url(), "server-everything").await;
}

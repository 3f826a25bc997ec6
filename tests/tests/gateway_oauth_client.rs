//! The MCP conformance suite's client authorization scenarios against the gateway's
//! outbound OAuth clients: `conformance client --suite auth` (and `--suite extensions`, for
//! the client credentials scenarios) of both installed lines of the suite, with
//! `tests/src/bin/conformance-auth-client.rs` as the `--command` client.
//!
//! Each scenario starts an MCP server that wants a token from its own authorization server.
//! The adapter acts as the gateway's admin (discovers the authorization server, registers a
//! client or takes the pre-registered one, configures an OAuth app and an MCP server whose
//! upstream is the scenario's server) and then as a user (signs in to the gateway, meets the
//! "connect your account" prompt, opens its link in the headless browser, calls the tool
//! again). So the scenario's authorization server sees the gateway's own authorization
//! request (PKCE, state, scopes, `resource`) and code exchange (client authentication,
//! PKCE verifier, `resource`), and its MCP server sees the user's token coming from the
//! gateway. Client credentials scenarios get Client Credentials app auth: the gateway's
//! token request and its service token upstream.
//!
//! Scenarios that do not apply to a gateway with pre-registered OAuth apps are listed, with
//! their reasons, in `tests/conformance/gateway-oauth-client.expected-failures.yaml` (and
//! `...-alpha...` for the 0.2 alpha); the test fails when the failing set differs, and when
//! a passing scenario's tool call did not go through the gateway with the token.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::time::Duration;

use portcullis_proto::v1 as proto;
use portcullis_tests::Gateway;
use portcullis_tests::conformance::{
    ConformanceReport, ExpectedFailures, SuiteVersion, baseline_path, conformance_with,
};
use portcullis_tests::idp::{IdpConfig, TestIdp, corp};
use portcullis_tests::paths;
use portcullis_tests::process::scratch_dir;
use serde_json::{Value, json};

/// Scenarios whose client is expected to end in an error: the server refuses every token
/// (`403 insufficient_scope` for ever), and the check is that the client stops.
const CLIENT_ERROR_EXPECTED: [&str; 1] = ["auth/scope-retry-limit"];
/// Each scenario's client gets this long (the suite's default is 30 s; the adapter makes
/// admin writes, two browser walks and several MCP sessions, with 14 scenarios at once).
const SCENARIO_TIMEOUT_MS: &str = "90000";
const SUITE_TIMEOUT: Duration = Duration::from_secs(240);
/// The auth suite has 14 scenarios; fewer means it did not really run.
const MINIMUM_AUTH_SCENARIOS: usize = 14;

struct Fixture {
    gateway: Gateway,
    _idp: TestIdp,
    /// Holds the gateway description the adapter reads.
    config_dir: tempfile::TempDir,
}

impl Fixture {
    /// A control plane, one node, and the test IdP as the identity provider users sign in
    /// with.
    async fn start() -> Self {
        let mut gateway = Gateway::start(1).await.unwrap();
        let public_url = format!("http://{}", gateway.node(0).address());
        let idp = TestIdp::start(IdpConfig::default().client(corp::gateway_client(&public_url)))
            .await
            .unwrap();
        gateway
            .admin
            .put_identity_provider(proto::PutIdentityProviderRequest {
                identity_provider: Some(corp::registration(idp.issuer(), &["openid", "email"])),
                expected_revision: None,
            })
            .await
            .unwrap();
        let config_dir = scratch_dir("conformance-auth-client").unwrap();
        let config = json!({
            "control_plane_url": gateway.control_plane.url(),
            "admin_token": gateway.files.admin_token(),
            "public_url": public_url,
            "identity_provider": corp::ID,
            "user": "alice",
        });
        std::fs::write(
            config_dir.path().join("gateway.json"),
            serde_json::to_vec(&config).unwrap(),
        )
        .unwrap();
        Self {
            gateway,
            _idp: idp,
            config_dir,
        }
    }

    /// `conformance client --suite <suite>` with the adapter as the client.
    async fn run_suite(&self, version: SuiteVersion, suite: &str) -> ConformanceReport {
        let adapter = paths::workspace_binary("conformance-auth-client").unwrap();
        let adapter = adapter.to_str().unwrap();
        // The suite splits --command at spaces.
        assert!(!adapter.contains(' '), "{adapter}");
        let args: Vec<OsString> = [
            "client",
            "--suite",
            suite,
            "--command",
            adapter,
            "--timeout",
            SCENARIO_TIMEOUT_MS,
        ]
        .map(OsString::from)
        .to_vec();
        conformance_with(
            version,
            &args,
            &[(
                "PORTCULLIS_CONFORMANCE_GATEWAY",
                self.config_dir.path().join("gateway.json").into_os_string(),
            )],
            SUITE_TIMEOUT,
        )
        .await
        .unwrap()
    }
}

/// What the adapter printed for a scenario (its last JSON line).
fn adapter_report(report: &ConformanceReport, scenario: &str) -> Value {
    report.scenarios[scenario]
        .client_stdout
        .as_deref()
        .unwrap_or_default()
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or(Value::Null)
}

/// The failing set is the baseline's; every passing scenario really went through the
/// gateway: the adapter's tool call answered, and the scenario's server saw a valid token.
fn check(report: &ConformanceReport, baseline: &BTreeSet<String>, suite: &str) {
    report.expect_failures_exactly(baseline).unwrap();
    for scenario in report.passing_scenarios() {
        let outcome = &report.scenarios[&scenario];
        let adapter = adapter_report(report, &scenario);
        if CLIENT_ERROR_EXPECTED.contains(&scenario.as_str()) {
            assert_eq!(adapter["ok"], false, "{scenario}: {adapter}");
            assert!(
                adapter["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("403"),
                "{scenario} should end at the server's 403: {adapter}"
            );
            continue;
        }
        assert_eq!(
            adapter["ok"], true,
            "{suite}: {scenario} passed its checks, but the tool call through the gateway failed: {adapter}\n{}",
            report.stdout
        );
        assert_eq!(adapter["tool_text"], "test", "{scenario}: {adapter}");
        assert!(
            outcome.has_check("valid-bearer-token", "SUCCESS"),
            "{scenario}: the scenario's server saw no valid token: {:?}",
            outcome.checks
        );
        assert!(
            !outcome.has_check("invalid-bearer-token", "FAILURE"),
            "{scenario}: {:?}",
            outcome.checks
        );
    }
}

#[tokio::test]
async fn the_conformance_client_auth_scenarios_pass_through_the_gateways_oauth_clients() {
    let fixture = Fixture::start().await;
    for (version, target) in [
        (SuiteVersion::Stable, "gateway-oauth-client"),
        (SuiteVersion::Alpha, "gateway-oauth-client-alpha"),
    ] {
        let baseline = ExpectedFailures::read(&baseline_path(target)).unwrap();
        let (auth, extensions) = tokio::join!(
            fixture.run_suite(version, "auth"),
            fixture.run_suite(version, "extensions"),
        );
        assert!(
            auth.scenarios.len() >= MINIMUM_AUTH_SCENARIOS,
            "{target}: only {} scenarios ran\n{}",
            auth.scenarios.len(),
            auth.stdout
        );
        let in_report = |report: &ConformanceReport| -> BTreeSet<String> {
            baseline
                .client
                .iter()
                .filter(|name| report.scenarios.contains_key(*name))
                .cloned()
                .collect()
        };
        // Every baseline entry names a scenario that ran.
        let listed: BTreeSet<String> = in_report(&auth)
            .union(&in_report(&extensions))
            .cloned()
            .collect();
        assert_eq!(
            listed, baseline.client,
            "{target}: baseline entries that no suite ran"
        );
        check(&auth, &in_report(&auth), "auth");
        check(&extensions, &in_report(&extensions), "extensions");
        // The client credentials scenario ran with Client Credentials app auth.
        let basic = adapter_report(&extensions, "auth/client-credentials-basic");
        assert_eq!(basic["app_auth"], "client_credentials", "{basic}");
    }
    // The node stored the users' links, and no client secret the scenarios handed out
    // reached a log.
    let gateway = &fixture.gateway;
    let logs = [
        gateway.node(0).process().stderr_text(),
        gateway.node(0).process().stdout_text(),
        gateway.control_plane.process().stderr_text(),
        gateway.control_plane.process().stdout_text(),
    ]
    .join("\n");
    assert!(
        logs.contains("account connected"),
        "no account was connected"
    );
    for secret in [
        "pre-registered-secret",
        "conformance-test-secret",
        "test-secret-",
    ] {
        assert!(
            !logs.contains(secret),
            "a client secret in the logs: {secret}"
        );
    }
}

//! Users' self-service through real processes: with their own gateway access token (from
//! Interactive SSO), a user stores their personal access token with `portcullisctl me
//! credential set`, and their next call carries it instead of the org-wide value while
//! another user's still carries the org-wide one; they list and disconnect their account
//! link with `portcullisctl me links`, and the next GitHub call prompts again.
//!
//! The fixture is the GitHub chatbot of `gateway_linking` (two nodes behind one public
//! URL, the test IdP as the enterprise IdP and as "GitHub"), plus a server `tools` whose
//! upstream echoes headers and which sends the stored credential `github-pat` per user.

use std::time::{Duration, Instant};

use portcullis_proto::v1 as proto;
use portcullis_tests::browser::HeadlessBrowser;
use portcullis_tests::echo_upstream::EchoedRequest;
use portcullis_tests::gateway::servers::{secret, server};
use portcullis_tests::idp::{IdpConfig, corp};
use portcullis_tests::linking::{gateway_token, link_in};
use portcullis_tests::{EchoUpstream, paths, scratch_dir};
use serde_json::{Value, json};

use crate::gateway_linking::Linking;

const CREDENTIAL: &str = "github-pat";
const ORG_PAT: &str = "ghp_org_wide_0000";
const ALICE_PAT: &str = "ghp_alice_own_1111";

/// `portcullisctl me --node <public URL> --user-token-file <file> ARGS`, the PAT in the
/// environment as `MY_GITHUB_PAT`.
struct UserCli {
    node: String,
    token_file: std::path::PathBuf,
    _folder: tempfile::TempDir,
}

struct CliRun {
    code: i32,
    stdout: String,
    stderr: String,
}

impl UserCli {
    fn new(node: &str, token: &str) -> Self {
        let folder = scratch_dir("user-cli").unwrap();
        let token_file = folder.path().join("token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        Self {
            node: node.to_owned(),
            token_file,
            _folder: folder,
        }
    }

    async fn run(&self, arguments: &[&str]) -> CliRun {
        let output =
            tokio::process::Command::new(paths::workspace_binary("portcullisctl").unwrap())
                .arg("me")
                .args(["--node", &self.node, "--user-token-file"])
                .arg(&self.token_file)
                .args(arguments)
                // Not the admin's: the CLI must not need, nor use, an admin token here.
                .env_remove("PORTCULLIS_TOKEN")
                .env("MY_GITHUB_PAT", ALICE_PAT)
                .output()
                .await
                .unwrap();
        CliRun {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    async fn ok(&self, arguments: &[&str]) -> String {
        let run = self.run(arguments).await;
        assert_eq!(
            run.code, 0,
            "me {arguments:?}: {}{}",
            run.stdout, run.stderr
        );
        assert!(!run.stdout.contains(ALICE_PAT), "the PAT was printed");
        run.stdout
    }
}

/// The `x-github-pat` the upstream received for one `echo_headers` call with `token`.
async fn pat_sent(url: &str, token: &str) -> Option<String> {
    let mut session = Linking::session(url, token).await;
    let text = session
        .call_tool_text("echo_headers", json!({}))
        .await
        .unwrap();
    let echoed: EchoedRequest = serde_json::from_str(&text).unwrap();
    echoed.header("x-github-pat").map(str::to_owned)
}

#[tokio::test]
async fn users_store_their_own_pat_and_manage_their_links_with_the_cli() {
    let mut linking = Linking::start(IdpConfig::default()).await;
    let echo = EchoUpstream::start(&[]).await.unwrap();
    linking
        .gateway
        .admin
        .put_credential(proto::PutCredentialRequest {
            id: CREDENTIAL.to_owned(),
            description: "GitHub personal access token".to_owned(),
            org_value: secret(ORG_PAT),
            ..proto::PutCredentialRequest::default()
        })
        .await
        .unwrap();
    let mut tools = server(
        "tools",
        &echo.url(),
        proto::app_auth::Kind::Bearer(proto::BearerToken {
            token: secret("service-token"),
        }),
    );
    tools.agent_auth = Some(proto::AgentAuth {
        mode: Some(proto::agent_auth::Mode::Interactive(
            proto::InteractiveSso {
                identity_provider: corp::ID.to_owned(),
                scopes: Vec::new(),
            },
        )),
        restricted_inbound_headers: Vec::new(),
    });
    tools.outbound_headers = vec![proto::OutboundHeader {
        header_name: "x-github-pat".to_owned(),
        prefix: "token ".to_owned(),
        source: Some(proto::outbound_header::Source::VaultCredential(
            proto::VaultCredential {
                credential_id: CREDENTIAL.to_owned(),
                scope: proto::CredentialScope::PerUser as i32,
            },
        )),
    }];
    linking.gateway.create_server(tools).await.unwrap();

    let public = linking.public.url();
    let tools_url = format!("{public}/mcp/tools");
    let alice = HeadlessBrowser::new().unwrap().user("alice");
    let bob = HeadlessBrowser::new().unwrap().user("bob");
    let alice_token = gateway_token(&public, &tools_url, &alice).await.unwrap();
    let bob_token = gateway_token(&public, &tools_url, &bob).await.unwrap();
    let org = Some(format!("token {ORG_PAT}"));
    let own = Some(format!("token {ALICE_PAT}"));

    // Before: both get the org-wide value.
    assert_eq!(pat_sent(&tools_url, &alice_token).await, org);
    assert_eq!(pat_sent(&tools_url, &bob_token).await, org);

    // Alice stores her own PAT with the CLI (from the environment, never the command line).
    let cli = UserCli::new(&public, &alice_token);
    let stdout = cli
        .ok(&[
            "credential",
            "set",
            CREDENTIAL,
            "--value",
            "env:MY_GITHUB_PAT",
        ])
        .await;
    assert!(
        stdout.contains("stored your own value of github-pat"),
        "{stdout}"
    );
    // A literal value on the command line is refused before anything is sent.
    let refused = cli
        .run(&[
            "credential",
            "set",
            CREDENTIAL,
            "--value",
            "value:ghp_typed",
        ])
        .await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(!refused.stderr.contains("ghp_typed"), "{}", refused.stderr);

    // Her next call uses her PAT; bob's still the org-wide one.
    assert_eq!(pat_sent(&tools_url, &alice_token).await, own);
    assert_eq!(pat_sent(&tools_url, &bob_token).await, org);
    // The other node too, once its short cache of "no value of her own" lapses (5 s).
    let other_node = linking.gateway.node(1).mcp_url("tools");
    let deadline = Instant::now() + Duration::from_secs(20);
    while pat_sent(&other_node, &alice_token).await != own {
        assert!(Instant::now() < deadline, "node 2 never used her value");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(pat_sent(&other_node, &bob_token).await, org);

    let listed: Value =
        serde_json::from_str(&cli.ok(&["credential", "list", "-o", "json"]).await).unwrap();
    assert_eq!(listed["user"]["subject"], "alice", "{listed}");
    assert_eq!(
        listed["credentials"],
        json!([{"credential_id": CREDENTIAL, "description": "GitHub personal access token",
                "servers": ["tools"], "own_value": true, "org_value": true}])
    );
    // The admin sees that alice has a value of her own, not the value.
    let state = linking
        .gateway
        .admin
        .get_state(proto::GetStateRequest { at_revision: None })
        .await
        .unwrap()
        .into_inner();
    let credential = state
        .credentials
        .iter()
        .find(|credential| credential.id == CREDENTIAL)
        .unwrap();
    assert_eq!(credential.user_values.len(), 1);
    assert_eq!(credential.user_values[0].user, "alice");

    // Links: alice connects GitHub, lists and disconnects it with the CLI (her token for
    // `tools` works for /me, whichever server it was issued for).
    let github_token = linking.gateway_token(&alice).await;
    linking.connect(&alice, &github_token).await;
    let text = cli.ok(&["links", "list"]).await;
    assert!(text.starts_with("user alice at corp\n"), "{text}");
    assert!(
        text.contains("github") && text.contains("connected"),
        "{text}"
    );
    let listed: Value =
        serde_json::from_str(&cli.ok(&["links", "list", "-o", "json"]).await).unwrap();
    assert_eq!(listed["links"][0]["app_id"], "github", "{listed}");
    assert_eq!(listed["links"][0]["status"], "connected", "{listed}");
    let mut github = Linking::session(&linking.mcp_url(), &github_token).await;
    let result = github
        .call_tool("check_caller", json!({"expected": "alice"}))
        .await
        .unwrap();
    assert_ne!(result["isError"], true, "connected: {result}");

    let stdout = cli.ok(&["links", "disconnect", "github"]).await;
    assert!(stdout.contains("disconnected github"), "{stdout}");
    assert!(
        cli.ok(&["links", "list"])
            .await
            .contains("no account links")
    );
    // The next GitHub call prompts her to connect again (the watch told every node).
    let deadline = Instant::now() + Duration::from_secs(20);
    let prompt = loop {
        let result = github
            .call_tool("check_caller", json!({"expected": "alice"}))
            .await
            .unwrap();
        if result["isError"] == true {
            break result;
        }
        assert!(Instant::now() < deadline, "no prompt after the disconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(link_in(prompt["content"][0]["text"].as_str().unwrap()).contains("/connect/github"));
    // Disconnecting again: not found (exit code 3).
    let again = cli.run(&["links", "disconnect", "github"]).await;
    assert_eq!(again.code, 3, "{}{}", again.stdout, again.stderr);

    // Bob cannot touch alice's value: he deletes only his own (none).
    let bobs_cli = UserCli::new(&public, &bob_token);
    let none = bobs_cli.run(&["credential", "delete", CREDENTIAL]).await;
    assert_eq!(none.code, 3, "{}{}", none.stdout, none.stderr);
    assert_eq!(pat_sent(&tools_url, &alice_token).await, own);
    // A token that is not the gateway's: refused (exit code 5).
    let stranger = UserCli::new(&public, "not-a-gateway-token");
    let refused = stranger.run(&["links", "list"]).await;
    assert_eq!(refused.code, 5, "{}{}", refused.stdout, refused.stderr);

    // Alice deletes her value: the org-wide one again.
    let stdout = cli.ok(&["credential", "delete", CREDENTIAL]).await;
    assert!(stdout.contains("org-wide value applies again"), "{stdout}");
    assert_eq!(pat_sent(&tools_url, &alice_token).await, org);

    // The audit trail names alice and the node that acted for her; no value anywhere.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = linking
            .gateway
            .admin
            .query_audit(proto::AuditQuery {
                kind: "admin_change".to_owned(),
                ..proto::AuditQuery::default()
            })
            .await
            .unwrap()
            .into_inner();
        let by_alice: Vec<&proto::AuditEvent> = page
            .records
            .iter()
            .filter_map(|record| record.event.as_ref())
            .filter(|event| event.actor.starts_with("user:corp/alice via node:"))
            .collect();
        if by_alice.len() == 2 {
            assert!(!format!("{page:?}").contains(ALICE_PAT));
            break;
        }
        assert!(Instant::now() < deadline, "audit: {by_alice:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = linking.logs();
    assert!(!logs.contains(ALICE_PAT), "the PAT is in a log");
    assert!(!logs.contains(&alice_token), "a gateway token is in a log");
}

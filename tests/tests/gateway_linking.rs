//! OAuth 2.1 Authorization app auth end to end: the GitHub chatbot of the product document
//! (Example 4). Users sign in to the gateway with Interactive SSO (the test IdP as the
//! enterprise IdP), and each connects their own "GitHub" account once through the prompt's
//! link (the same test IdP playing GitHub: an OAuth app with client_secret_post, rotating
//! refresh tokens, JWT access tokens for the upstream's URL). The upstream is
//! `protected_mcp_server.py --tool-auth`: anyone may connect and list tools, each tool checks
//! the caller's GitHub token itself and answers with that user's data.
//!
//! A small proxy (`portcullis_tests::linking::PublicUrl`) is the fleet's public URL (every
//! node's `--public-url`), pinned to one node at a time, so a user's whole session runs on
//! the node the test chooses while links and redirects stay on one URL; load goes to the
//! nodes directly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_proto::v1 as proto;
use portcullis_tests::browser::HeadlessBrowser;
use portcullis_tests::gateway::servers::{secret, server};
use portcullis_tests::idp::{IdpAccount, IdpClient, IdpConfig, ProtectedMcpServer, TestIdp, corp};
use portcullis_tests::linking::{PublicUrl, collect_files, link_in};
use portcullis_tests::mcp_http::McpHttpSession;
use portcullis_tests::python_client::ConnectLinks;
use portcullis_tests::{Gateway, python_mcp_client};
use serde_json::{Value, json};

/// The app in the gateway's catalog, and its OAuth client at the "GitHub" provider.
pub(crate) const APP_ID: &str = "github";
const APP_CLIENT_ID: &str = "github-app";
const APP_CLIENT_SECRET: &str = "github-app-secret";
const SERVER: &str = "github";
const SERVER_SCOPE: &str = "mcp:tools";

// ---------------------------------------------------------------------------------------
// The fixture
// ---------------------------------------------------------------------------------------

/// A control plane and two nodes behind the public URL, the test IdP as the enterprise IdP
/// and as "GitHub", the GitHub-like upstream, and the server `github` wiring them.
pub(crate) struct Linking {
    pub(crate) public: PublicUrl,
    pub(crate) idp: TestIdp,
    pub(crate) gateway: Gateway,
    pub(crate) upstream: ProtectedMcpServer,
}

impl Linking {
    pub(crate) async fn start(config: IdpConfig) -> Self {
        let public = PublicUrl::start().await.unwrap();
        let public_url = public.url();
        let config = config
            .scopes(&["repo", "read:user"])
            .client(corp::gateway_client(&public_url))
            // GitHub: the secret in the form body; code and refresh grants only.
            .client(
                IdpClient::confidential(
                    APP_CLIENT_ID,
                    APP_CLIENT_SECRET,
                    &[&format!("{public_url}/connect/callback")],
                )
                .token_endpoint_auth_method("client_secret_post")
                .grant_types(&["authorization_code", "refresh_token"]),
            );
        let idp = TestIdp::start(config).await.unwrap();
        let upstream = ProtectedMcpServer::start_with_tool_auth(&idp, &[])
            .await
            .unwrap();
        let mut gateway = Gateway::start_with_node_args(
            2,
            &[
                "--public-url",
                &public_url,
                "--access-token-lifetime-secs",
                "900",
            ],
        )
        .await
        .unwrap();
        public.pin(gateway.node(0).address());

        let discovery: Value =
            reqwest::get(format!("{}/.well-known/openid-configuration", idp.issuer()))
                .await
                .unwrap()
                .json()
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
        gateway
            .admin
            .put_o_auth_app(proto::PutOAuthAppRequest {
                oauth_app: Some(proto::OAuthApp {
                    app_id: APP_ID.to_owned(),
                    display_name: "GitHub".to_owned(),
                    authorize_url: discovery["authorization_endpoint"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                    token_url: discovery["token_endpoint"].as_str().unwrap().to_owned(),
                    revocation_url: discovery["revocation_endpoint"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    client_id: APP_CLIENT_ID.to_owned(),
                    client_secret: secret(APP_CLIENT_SECRET),
                    default_scopes: vec!["repo".to_owned()],
                    extra_authorize_params: [("allow_signup".to_owned(), "false".to_owned())]
                        .into(),
                    token_endpoint_auth_method: "client_secret_post".to_owned(),
                }),
                expected_revision: None,
            })
            .await
            .unwrap();
        let mut github = server(
            SERVER,
            &upstream.url(),
            proto::app_auth::Kind::OauthAuthorization(proto::OAuthAuthorization {
                app_id: APP_ID.to_owned(),
                scopes: Vec::new(),
            }),
        );
        github.agent_auth = Some(proto::AgentAuth {
            mode: Some(proto::agent_auth::Mode::Interactive(
                proto::InteractiveSso {
                    identity_provider: corp::ID.to_owned(),
                    scopes: vec![SERVER_SCOPE.to_owned()],
                },
            )),
            restricted_inbound_headers: Vec::new(),
        });
        gateway.create_server(github).await.unwrap();
        Self {
            public,
            idp,
            gateway,
            upstream,
        }
    }

    pub(crate) fn mcp_url(&self) -> String {
        format!("{}/mcp/{SERVER}", self.public.url())
    }

    /// Sends the public URL's traffic to this node.
    pub(crate) fn pin(&self, node: usize) {
        self.public.pin(self.gateway.node(node).address());
    }

    /// A gateway access token for the browser's user: dynamic registration, the
    /// authorization through the browser, the code redeemed (what an MCP client does).
    pub(crate) async fn gateway_token(&self, browser: &HeadlessBrowser) -> String {
        portcullis_tests::linking::gateway_token(&self.public.url(), &self.mcp_url(), browser)
            .await
            .unwrap()
    }

    /// An MCP session of the token's user on `url` (a node's, or the public one).
    pub(crate) async fn session(url: &str, gateway_token: &str) -> McpHttpSession {
        McpHttpSession::connect(
            url,
            &[("authorization", &format!("Bearer {gateway_token}"))],
        )
        .await
        .unwrap()
    }

    /// Connects the user's GitHub account: a tool call gets the prompt (a tool result with
    /// the link, for this client declares no URL elicitation), the browser opens the link.
    pub(crate) async fn connect(&self, browser: &HeadlessBrowser, gateway_token: &str) {
        let mut session = Self::session(&self.mcp_url(), gateway_token).await;
        let result = session
            .call_tool("check_caller", json!({"expected": "nobody"}))
            .await
            .unwrap();
        assert_eq!(result["isError"], true, "{result}");
        let link = link_in(result["content"][0]["text"].as_str().unwrap());
        let outcome = browser.visit(&link).await.unwrap();
        assert_eq!(outcome.final_status, Some(200), "{outcome:#?}");
        assert!(
            outcome
                .final_text
                .as_deref()
                .unwrap_or_default()
                .contains("GitHub connected"),
            "{outcome:#?}"
        );
    }

    /// Every node's and the control plane's log.
    pub(crate) fn logs(&self) -> String {
        let mut logs = vec![
            self.gateway.control_plane.process().stderr_text(),
            self.gateway.control_plane.process().stdout_text(),
        ];
        for node in &self.gateway.nodes {
            logs.push(node.process().stderr_text());
            logs.push(node.process().stdout_text());
        }
        logs.join("\n")
    }
}

/// The `(sub, match)` a `check_caller` result reports.
fn checked(result: &Value) -> (String, bool) {
    assert_ne!(result["isError"], true, "{result}");
    let report: Value =
        serde_json::from_str(result["content"][0]["text"].as_str().unwrap()).unwrap();
    (
        report["sub"].as_str().unwrap().to_owned(),
        report["match"].as_bool().unwrap(),
    )
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_github_chatbot_each_user_connects_once_and_sees_only_their_own_pull_requests() {
    let linking = Linking::start(IdpConfig::default()).await;
    for (user, node) in [("alice", 0), ("bob", 1)] {
        linking.pin(node);
        let browser = HeadlessBrowser::new().unwrap().user(user);
        // First conversation: SSO sign-in, then the prompt (the Python SDK declared URL
        // elicitation: -32042), the link opened, the call made again.
        let report = python_mcp_client(linking.mcp_url())
            .oauth(&browser)
            .connect_links(ConnectLinks::Open {
                url_elicitation: true,
            })
            .call("list_pull_requests", json!({}))
            .timeout(Duration::from_secs(120))
            .run()
            .await
            .unwrap();
        report.expect_ok().unwrap();
        assert_eq!(report.connect.len(), 1, "{:#?}", report.connect);
        let prompt = &report.connect[0];
        assert_eq!(prompt.via, "url_elicitation_error", "{prompt:#?}");
        assert!(
            prompt
                .url
                .starts_with(&format!("{}/connect/github?request=", linking.public.url())),
            "{prompt:#?}"
        );
        assert!(!prompt.url.contains(user), "no user name in the link");
        assert_eq!(prompt.final_status, Some(200), "{prompt:#?}");
        let call = report.call("list_pull_requests").unwrap();
        assert!(call.retried);
        let pulls: Value = serde_json::from_str(call.text().unwrap()).unwrap();
        let authors: Vec<&str> = pulls
            .as_array()
            .unwrap()
            .iter()
            .map(|pull| pull["author"].as_str().unwrap())
            .collect();
        assert_eq!(authors, [user, user], "{pulls}");

        // Next conversation: no prompt, straight to the user's own data.
        let report = python_mcp_client(linking.mcp_url())
            .oauth(&browser)
            .connect_links(ConnectLinks::Open {
                url_elicitation: true,
            })
            .call("list_pull_requests", json!({}))
            .timeout(Duration::from_secs(120))
            .run()
            .await
            .unwrap();
        report.expect_ok().unwrap();
        assert!(report.connect.is_empty(), "{:#?}", report.connect);
        let text = report.call("list_pull_requests").unwrap().text().unwrap();
        assert!(text.contains(&format!("\"author\": \"{user}\"")), "{text}");
        let other = if user == "alice" { "bob" } else { "alice" };
        assert!(!text.contains(other), "{text}");
    }
    // The request records name the credential used: the app.
    let logs = linking.logs();
    assert!(
        logs.contains("credential_kind=\"oauth_authorization\""),
        "no record with the credential kind"
    );
}

#[tokio::test]
async fn each_protocol_revision_gets_the_prompt_in_its_own_form() {
    let linking = Linking::start(
        IdpConfig::default()
            .account(IdpAccount::new("carol"))
            .account(IdpAccount::new("dave")),
    )
    .await;
    // A 2026-07-28 client (stateless, URL elicitation declared in _meta): input_required,
    // answered by the SDK's elicitation callback, which opens the link; the SDK retries.
    let carol = HeadlessBrowser::new().unwrap().user("carol");
    let report = python_mcp_client(linking.mcp_url())
        .mode("2026-07-28")
        .oauth(&carol)
        .connect_links(ConnectLinks::Open {
            url_elicitation: true,
        })
        .call("list_pull_requests", json!({}))
        .timeout(Duration::from_secs(120))
        .run()
        .await
        .unwrap();
    report.expect_ok().unwrap();
    assert_eq!(report.protocol_version.as_deref(), Some("2026-07-28"));
    assert_eq!(report.connect.len(), 1, "{:#?}", report.connect);
    assert_eq!(report.connect[0].via, "input_required");
    assert_eq!(report.connect[0].final_status, Some(200));
    let text = report.call("list_pull_requests").unwrap().text().unwrap();
    assert!(text.contains("\"author\": \"carol\""), "{text}");

    // A client without URL elicitation: a tool error carrying the link.
    let dave = HeadlessBrowser::new().unwrap().user("dave");
    let report = python_mcp_client(linking.mcp_url())
        .oauth(&dave)
        .connect_links(ConnectLinks::Open {
            url_elicitation: false,
        })
        .call("list_pull_requests", json!({}))
        .timeout(Duration::from_secs(120))
        .run()
        .await
        .unwrap();
    report.expect_ok().unwrap();
    assert_eq!(report.connect.len(), 1, "{:#?}", report.connect);
    assert_eq!(report.connect[0].via, "tool_result");
    assert!(
        report.connect[0]
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("connect your GitHub account"),
        "{:#?}",
        report.connect
    );
    let text = report.call("list_pull_requests").unwrap().text().unwrap();
    assert!(text.contains("\"author\": \"dave\""), "{text}");
}

#[tokio::test]
async fn a_link_opened_by_another_user_links_nothing() {
    let linking = Linking::start(IdpConfig::default()).await;
    let alice = HeadlessBrowser::new().unwrap().user("alice");
    let alice_token = linking.gateway_token(&alice).await;
    let mut session = Linking::session(&linking.mcp_url(), &alice_token).await;
    let prompt = session
        .call_tool("check_caller", json!({"expected": "alice"}))
        .await
        .unwrap();
    let link = link_in(prompt["content"][0]["text"].as_str().unwrap());

    // Bob (signed in at the IdP as bob in his own browser) opens alice's link.
    let bob = HeadlessBrowser::new().unwrap().user("bob");
    let outcome = bob.visit(&link).await.unwrap();
    assert_eq!(outcome.final_status, Some(403), "{outcome:#?}");
    let page = outcome.final_text.unwrap_or_default();
    assert!(page.contains("This link is for someone else"), "{page}");
    assert!(page.contains("nothing was connected"), "{page}");
    // Nobody went to GitHub's consent, no code was redeemed, no token stored.
    let requests = linking.idp.recent_requests().await.unwrap();
    assert!(
        !requests
            .token
            .iter()
            .any(|request| request.client_id.as_deref() == Some(APP_CLIENT_ID)),
        "a GitHub token was requested: {requests:#?}"
    );
    assert!(
        linking
            .idp
            .refresh_tokens(APP_CLIENT_ID)
            .await
            .unwrap()
            .is_empty()
    );
    let again = session
        .call_tool("check_caller", json!({"expected": "alice"}))
        .await
        .unwrap();
    assert_eq!(
        again["isError"], true,
        "alice is still not connected: {again}"
    );
    let mut bobs_session =
        Linking::session(&linking.mcp_url(), &linking.gateway_token(&bob).await).await;
    let bobs = bobs_session
        .call_tool("check_caller", json!({"expected": "bob"}))
        .await
        .unwrap();
    assert_eq!(
        bobs["isError"], true,
        "bob was not connected either: {bobs}"
    );
    // Alice's own browser then connects her.
    let outcome = alice.visit(&link).await.unwrap();
    assert_eq!(outcome.final_status, Some(200), "{outcome:#?}");
    let after = session
        .call_tool("check_caller", json!({"expected": "alice"}))
        .await
        .unwrap();
    assert_eq!(checked(&after), ("alice".to_owned(), true));
}

#[tokio::test]
async fn many_users_on_two_nodes_each_call_carries_its_own_callers_token() {
    const USERS: usize = 6;
    const CALLS: usize = 10;
    let mut config = IdpConfig::default();
    let users: Vec<String> = (0..USERS).map(|index| format!("user{index}")).collect();
    for user in &users {
        config = config.account(IdpAccount::new(user));
    }
    let linking = Linking::start(config).await;
    let mut tokens = Vec::new();
    for user in &users {
        let browser = HeadlessBrowser::new().unwrap().user(user);
        let token = linking.gateway_token(&browser).await;
        linking.connect(&browser, &token).await;
        tokens.push(token);
    }
    // Every user on both nodes at once, each session making its calls back to back.
    let mut tasks = Vec::new();
    for (user, token) in users.iter().zip(&tokens) {
        for node in &linking.gateway.nodes {
            let url = node.mcp_url(SERVER);
            let (user, token) = (user.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                let mut session = Linking::session(&url, &token).await;
                let mut seen = Vec::new();
                for _ in 0..CALLS {
                    let result = session
                        .call_tool("check_caller", json!({"expected": user}))
                        .await
                        .unwrap();
                    seen.push(checked(&result));
                }
                (user, seen)
            }));
        }
    }
    let mut mismatches = 0;
    for task in tasks {
        let (user, seen) = task.await.unwrap();
        for (sub, matched) in seen {
            if sub != user || !matched {
                mismatches += 1;
            }
        }
    }
    assert_eq!(mismatches, 0, "calls ran with another user's token");
    // The upstream's own count agrees.
    let mut session = Linking::session(&linking.mcp_url(), &tokens[0]).await;
    let stats: Value = serde_json::from_str(
        session.call_tool("caller_stats", json!({})).await.unwrap()["content"][0]["text"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(stats["checked"], USERS * 2 * CALLS, "{stats}");
    assert_eq!(stats["mismatches"], 0, "{stats}");
    // Each user's link was made once: one code redeemed per user at the provider.
    let accepted = linking.upstream.accepted_tokens();
    assert_eq!(
        accepted.len(),
        USERS,
        "one GitHub token per user: {}",
        accepted.len()
    );
}

#[tokio::test]
async fn expiry_during_a_burst_on_two_nodes_refreshes_once_and_a_revoked_grant_prompts_again() {
    // GitHub-like access tokens live 10 s: a burst that starts with a fresh token reaches
    // its expiry.
    let linking =
        Linking::start(IdpConfig::default().access_token_ttl(Duration::from_secs(10))).await;
    let alice = HeadlessBrowser::new().unwrap().user("alice");
    let token = linking.gateway_token(&alice).await;
    linking.connect(&alice, &token).await;
    let refreshes_before = linking.idp.stats().await.unwrap().refreshes();

    // Two sessions per node call back to back until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for node in &linking.gateway.nodes {
        for _ in 0..2 {
            let url = node.mcp_url(SERVER);
            let (token, stop) = (token.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut session = Linking::session(&url, &token).await;
                let mut calls = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let result = session
                        .call_tool("check_caller", json!({"expected": "alice"}))
                        .await
                        .unwrap();
                    calls.push(checked(&result));
                }
                calls
            }));
        }
    }
    // Until the provider saw a refresh (bounded), then a little more burst past it.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let refreshes = linking.idp.stats().await.unwrap().refreshes() - refreshes_before;
        if refreshes >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no refresh within 40 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after_refresh = linking.upstream.accepted_tokens().len();
    let more = Instant::now() + Duration::from_secs(2);
    while Instant::now() < more && linking.upstream.accepted_tokens().len() == after_refresh {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for task in tasks {
        for (sub, matched) in task.await.unwrap() {
            assert_eq!((sub.as_str(), matched), ("alice", true));
            total += 1;
        }
    }
    assert!(total > 8, "the burst made {total} calls");
    assert_eq!(
        linking.idp.stats().await.unwrap().refreshes() - refreshes_before,
        1,
        "exactly one refresh at the provider for the whole fleet"
    );
    assert_eq!(
        linking.upstream.accepted_tokens().len(),
        2,
        "the first token, then the refreshed one"
    );

    // The user's grant is revoked at the provider: once the cached token is due, the
    // refresh fails (invalid_grant) and the user is asked to connect again.
    linking.idp.revoke_user("alice").await.unwrap();
    let mut session = Linking::session(&linking.gateway.node(0).mcp_url(SERVER), &token).await;
    let deadline = Instant::now() + Duration::from_secs(40);
    let prompt = loop {
        let result = session
            .call_tool("check_caller", json!({"expected": "alice"}))
            .await
            .unwrap();
        if result["isError"] == true {
            break result;
        }
        assert!(
            Instant::now() < deadline,
            "no prompt within 40 s of the revocation"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let text = prompt["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("expired or was revoked"), "{text}");
    let outcome = alice.visit(&link_in(text)).await.unwrap();
    assert_eq!(outcome.final_status, Some(200), "{outcome:#?}");
    let result = session
        .call_tool("check_caller", json!({"expected": "alice"}))
        .await
        .unwrap();
    assert_eq!(checked(&result), ("alice".to_owned(), true));

    // No token value in the gateway's files or logs: the upstream tokens, the refresh
    // tokens the provider holds, the gateway's own access token, the client secrets.
    let mut secrets = linking.upstream.accepted_tokens();
    secrets.extend(linking.idp.refresh_tokens(APP_CLIENT_ID).await.unwrap());
    secrets.extend([
        token.clone(),
        APP_CLIENT_SECRET.to_owned(),
        corp::CLIENT_SECRET.to_owned(),
    ]);
    assert!(secrets.len() >= 6, "{}", secrets.len());
    let logs = linking.logs();
    let mut files = Vec::new();
    collect_files(linking.gateway.files.folder(), &mut files);
    assert!(!files.is_empty());
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a token or secret in a log"
        );
        for (path, content) in &files {
            assert!(
                !content
                    .windows(secret.len())
                    .any(|window| window == secret.as_bytes()),
                "a token or secret in {}",
                path.display()
            );
        }
    }
}

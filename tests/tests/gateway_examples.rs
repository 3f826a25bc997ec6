//! The real-world examples of the product document ("Real-World Examples"), each configured
//! from its table: the apply document in `deploy/examples/` is applied with `portcullisctl
//! apply`, adapted only where the test must point at its own parties (the test IdP instead
//! of Okta or Entra, and instead of Google or GitHub as the app's OAuth provider;
//! echo-upstream or the token-checking `protected_mcp_server.py` instead of the app's MCP
//! server), and driven by a real MCP client (the Python SDK; with `--oauth` for Interactive
//! SSO, signing in through the gateway's authorization server in the headless browser, and
//! opening the "connect your account" link the gateway prompts with). Cursor itself cannot
//! run here: the Python SDK client plays it (same protocol, same OAuth flow).

use std::path::PathBuf;
use std::time::Duration;

use portcullis_tests::browser::HeadlessBrowser;
use portcullis_tests::echo_upstream::EchoedRequest;
use portcullis_tests::idp::{IdpClient, IdpConfig, IdpResource, ProtectedMcpServer, TestIdp};
use portcullis_tests::linking::PublicUrl;
use portcullis_tests::python_client::{ConnectLinks, McpClientReport};
use portcullis_tests::{EchoUpstream, Gateway, paths, python_mcp_client, scratch_dir};
use serde_json::{Value, json};
use serde_norway::Value as Yaml;

fn example_path(name: &str) -> PathBuf {
    paths::tests_crate_dir()
        .join("..")
        .join("deploy")
        .join("examples")
        .join(name)
}

/// The example's apply document.
fn load_example(name: &str) -> Yaml {
    let text = std::fs::read_to_string(example_path(name)).unwrap();
    serde_norway::from_str(&text).unwrap()
}

/// `document[path...]`, panicking with the path when it is missing.
fn at<'a>(document: &'a mut Yaml, path: &[&str]) -> &'a mut Yaml {
    let mut node = document;
    for (depth, key) in path.iter().enumerate() {
        node = match key.parse::<usize>() {
            Ok(index) => node.get_mut(index),
            Err(_) => node.get_mut(*key),
        }
        .unwrap_or_else(|| panic!("the example has no {}", path[..=depth].join(".")));
    }
    node
}

fn set(document: &mut Yaml, path: &[&str], value: &str) {
    *at(document, path) = Yaml::String(value.to_owned());
}

fn text<'a>(document: &'a Yaml, path: &[&str]) -> &'a str {
    let mut node = document;
    for key in path {
        node = match key.parse::<usize>() {
            Ok(index) => &node[index],
            Err(_) => &node[*key],
        };
    }
    node.as_str()
        .unwrap_or_else(|| panic!("the example has no text at {}", path.join(".")))
}

/// Applies `document` (secrets from `env`) with `portcullisctl apply -f` and waits until
/// the node serves the result.
async fn apply(gateway: &mut Gateway, document: &Yaml, env: &[(&str, &str)]) {
    let folder = scratch_dir("example").unwrap();
    let file = folder.path().join("example.yaml");
    std::fs::write(&file, serde_norway::to_string(document).unwrap()).unwrap();
    let output = tokio::process::Command::new(paths::workspace_binary("portcullisctl").unwrap())
        .args(["--endpoint", &gateway.control_plane.url(), "apply", "-f"])
        .arg(&file)
        .env("PORTCULLIS_TOKEN", gateway.files.admin_token())
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the example did not apply: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let latest = gateway.latest_version().await.unwrap();
    gateway.wait_for_nodes(latest).await.unwrap();
}

fn echoed(report: &portcullis_tests::python_client::McpClientReport) -> EchoedRequest {
    serde_json::from_str(report.call("echo_headers").unwrap().text().unwrap()).unwrap()
}

/// Example 2: "A nightly script needs to pull data from Datadog": Passthrough agent auth,
/// the Datadog API key as app authentication, no additional headers. The script sends no
/// special auth header; the upstream gets the API key on every request.
#[tokio::test]
async fn example_2_the_nightly_datadog_script_gets_the_api_key_added() {
    const DATADOG_API_KEY: &str = "dd-api-key-0123456789";
    let mut document = load_example("datadog-nightly-script.yaml");
    // The table, as the document configures it.
    assert!(document["servers"][0]["agent_auth"]["passthrough"].is_mapping());
    assert_eq!(
        text(
            &document,
            &["servers", "0", "app_auth", "api_key", "key_name"]
        ),
        "DD-API-KEY"
    );
    assert!(document["servers"][0].get("outbound_headers").is_none());

    let upstream = EchoUpstream::start(&[]).await.unwrap();
    let mut gateway = Gateway::start(1).await.unwrap();
    set(
        &mut document,
        &["servers", "0", "upstream_url"],
        &upstream.url(),
    );
    apply(
        &mut gateway,
        &document,
        &[("DATADOG_API_KEY", DATADOG_API_KEY)],
    )
    .await;

    // The script: the Python SDK with no credentials at all, a stray internal header.
    let report = python_mcp_client(gateway.node(0).mcp_url("datadog"))
        .header("x-internal-debug", "1")
        .call("echo_headers", json!({}))
        .timeout(Duration::from_secs(60))
        .run()
        .await
        .unwrap();
    report.expect_ok().unwrap();
    let echoed = echoed(&report);
    assert_eq!(echoed.header("dd-api-key"), Some(DATADOG_API_KEY));
    assert!(echoed.header("authorization").is_none(), "{echoed:?}");
    assert!(echoed.header("x-internal-debug").is_none(), "{echoed:?}");
    let log = gateway.node(0).process().stderr_text();
    assert!(log.contains("credential_kind=\"api_key\""), "{log}");
    assert!(!log.contains(DATADOG_API_KEY));
}

/// Example 3: "Azure AI Search needs both a service key and the user's token": Interactive
/// SSO, the Azure service key as Bearer app authentication, and "Forward caller's token" on
/// `x-ms-query-source-authorization` with prefix `Bearer `. The forwarded token is the
/// user's own token at the identity provider, issued for the search resource (RFC 8707
/// `token_resource`), never the gateway's access token.
#[tokio::test]
async fn example_3_azure_ai_search_gets_the_service_key_and_the_users_idp_token() {
    const AZURE_SEARCH_KEY: &str = "azure-search-admin-key-42";
    const SEARCH_RESOURCE: &str = "https://search.azure.portcullis.test";
    let mut document = load_example("azure-ai-search.yaml");
    // The table, as the document configures it.
    assert_eq!(
        text(
            &document,
            &[
                "servers",
                "0",
                "agent_auth",
                "interactive",
                "identity_provider"
            ]
        ),
        "entra"
    );
    assert!(document["servers"][0]["app_auth"]["bearer"].is_mapping());
    let headers = document["servers"][0]["outbound_headers"].clone();
    assert_eq!(headers.as_sequence().unwrap().len(), 1);
    assert_eq!(
        headers[0]["header_name"].as_str(),
        Some("x-ms-query-source-authorization")
    );
    assert_eq!(headers[0]["prefix"].as_str(), Some("Bearer "));
    assert!(headers[0]["forward_caller_token"].is_mapping());

    let upstream = EchoUpstream::start(&[]).await.unwrap();
    let mut gateway = Gateway::start(1).await.unwrap();
    let public_url = format!("http://{}", gateway.node(0).address());
    let idp = TestIdp::start(
        IdpConfig::default()
            .scopes(&["search.read"])
            .resource(IdpResource::new(SEARCH_RESOURCE, "search.read"))
            .client(IdpClient::confidential(
                "portcullis-search",
                "entra-client-secret",
                &[&format!("{public_url}/oauth/callback")],
            )),
    )
    .await
    .unwrap();
    // The test IdP plays Entra ID: its issuer and the gateway's client there; its claims
    // are the standard ones (sub, email) rather than Entra's (oid, preferred_username); it
    // accepts RFC 8707, so the user's token is requested for the search resource.
    set(
        &mut document,
        &["identity_providers", "0", "issuer"],
        idp.issuer(),
    );
    set(
        &mut document,
        &["identity_providers", "0", "client_id"],
        "portcullis-search",
    );
    set(
        &mut document,
        &["identity_providers", "0", "user_id_claim"],
        "sub",
    );
    set(
        &mut document,
        &["identity_providers", "0", "email_claim"],
        "email",
    );
    *at(&mut document, &["identity_providers", "0", "scopes"]) =
        serde_norway::from_str("[openid, email, groups, search.read]").unwrap();
    at(&mut document, &["identity_providers", "0"])
        .as_mapping_mut()
        .unwrap()
        .insert(
            Yaml::String("token_resource".to_owned()),
            Yaml::String(SEARCH_RESOURCE.to_owned()),
        );
    set(
        &mut document,
        &["servers", "0", "upstream_url"],
        &upstream.url(),
    );
    apply(
        &mut gateway,
        &document,
        &[
            ("ENTRA_CLIENT_SECRET", "entra-client-secret"),
            ("AZURE_SEARCH_KEY", AZURE_SEARCH_KEY),
        ],
    )
    .await;

    let server_name = text(&document, &["servers", "0", "name"]).to_owned();
    let mut idp_tokens = Vec::new();
    for user in ["alice", "bob"] {
        let browser = HeadlessBrowser::new().unwrap().user(user);
        let report = python_mcp_client(gateway.node(0).mcp_url(&server_name))
            .oauth(&browser)
            .call("echo_headers", json!({}))
            .timeout(Duration::from_secs(90))
            .run()
            .await
            .unwrap();
        report.expect_ok().unwrap();
        let echoed = echoed(&report);
        // The service key on Authorization (app authentication)...
        assert_eq!(
            echoed.header("authorization"),
            Some(format!("Bearer {AZURE_SEARCH_KEY}").as_str())
        );
        // ...and the user's own IdP token, for the search resource, on the second header.
        let forwarded = echoed
            .header("x-ms-query-source-authorization")
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_else(|| panic!("no user token: {echoed:?}"))
            .to_owned();
        let claims = idp
            .verify_jwt(&forwarded, Some(SEARCH_RESOURCE))
            .await
            .unwrap();
        assert_eq!(claims["sub"], user, "{claims}");
        assert_eq!(claims["iss"], idp.issuer(), "{claims}");
        // Not the gateway's access token the client holds.
        let held = report.oauth.as_ref().and_then(|oauth| oauth.token.as_ref());
        let held_claims = held.and_then(|token| token.access_token_claims.clone());
        assert_eq!(
            held_claims.as_ref().map(|claims| claims["iss"].clone()),
            Some(json!(public_url)),
            "{held:?}"
        );
        idp_tokens.push(forwarded);
    }
    assert_ne!(idp_tokens[0], idp_tokens[1]);
    let log = gateway.node(0).process().stderr_text();
    assert!(
        log.contains("outbound_headers=\"x-ms-query-source-authorization:forward_caller_token\""),
        "{log}"
    );
    for secret in [AZURE_SEARCH_KEY, &idp_tokens[0], &idp_tokens[1]] {
        assert!(!log.contains(secret), "a credential is in the node's log");
    }
}

// ---------------------------------------------------------------------------------------
// Examples 1 and 4: Interactive SSO and per-user OAuth 2.1 Authorization
// ---------------------------------------------------------------------------------------

/// The texts of a YAML sequence.
fn texts(node: &Yaml) -> Vec<String> {
    node.as_sequence()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// An example whose server is Interactive SSO with per-user OAuth 2.1 Authorization, applied
/// as written except for where its parties are: the test IdP is the company IdP (issuer) and
/// the app's OAuth provider (authorize, token and revocation URLs), with the example's own
/// client ids, secrets, scopes and client authentication; the upstream is
/// `protected_mcp_server.py --tool-auth`, whose tools accept only a token of that provider
/// issued for the upstream's URL and answer as its user. One node, behind the public URL.
struct PerUserExample {
    public: PublicUrl,
    idp: TestIdp,
    upstream: ProtectedMcpServer,
    gateway: Gateway,
    document: Yaml,
}

impl PerUserExample {
    async fn start(file: &str, secrets: &[(&str, &str)]) -> Self {
        let mut document = load_example(file);
        // The table: Interactive (SSO) with the document's IdP, OAuth 2.1 Authorization with
        // the document's app, no additional headers.
        let idp_id = text(&document, &["identity_providers", "0", "id"]).to_owned();
        let app_id = text(&document, &["oauth_apps", "0", "app_id"]).to_owned();
        assert_eq!(
            text(
                &document,
                &[
                    "servers",
                    "0",
                    "agent_auth",
                    "interactive",
                    "identity_provider"
                ]
            ),
            idp_id
        );
        assert_eq!(
            text(
                &document,
                &["servers", "0", "app_auth", "oauth_authorization", "app_id"]
            ),
            app_id
        );
        assert!(document["servers"][0].get("outbound_headers").is_none());

        let public = PublicUrl::start().await.unwrap();
        let public_url = public.url();
        let app = document["oauth_apps"][0].clone();
        let mut scopes = texts(&app["default_scopes"]);
        scopes.extend(texts(
            &document["servers"][0]["app_auth"]["oauth_authorization"]["scopes"],
        ));
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let secret = |name: &str| {
            secrets
                .iter()
                .find(|(variable, _)| *variable == name)
                .map(|(_, value)| *value)
                .unwrap_or_else(|| panic!("no secret {name}"))
        };
        let env_of = |node: &Yaml| node["env"].as_str().unwrap().to_owned();
        let idp_client = IdpClient::confidential(
            text(&document, &["identity_providers", "0", "client_id"]),
            secret(&env_of(&document["identity_providers"][0]["client_secret"])),
            &[&format!("{public_url}/oauth/callback")],
        );
        let app_client = IdpClient::confidential(
            app["client_id"].as_str().unwrap(),
            secret(&env_of(&app["client_secret"])),
            &[&format!("{public_url}/connect/callback")],
        )
        .token_endpoint_auth_method(app["token_endpoint_auth_method"].as_str().unwrap())
        .grant_types(&["authorization_code", "refresh_token"]);
        let idp = TestIdp::start(
            IdpConfig::default()
                .scopes(&scopes)
                .client(idp_client)
                .client(app_client),
        )
        .await
        .unwrap();
        let upstream = ProtectedMcpServer::start_with_tool_auth(&idp, &[])
            .await
            .unwrap();
        let mut gateway = Gateway::start_with_node_args(1, &["--public-url", &public_url])
            .await
            .unwrap();
        public.pin(gateway.node(0).address());

        let discovery: Value = idp.discovery().await.unwrap();
        let endpoint = |name: &str| discovery[name].as_str().unwrap().to_owned();
        set(
            &mut document,
            &["identity_providers", "0", "issuer"],
            idp.issuer(),
        );
        set(
            &mut document,
            &["oauth_apps", "0", "authorize_url"],
            &endpoint("authorization_endpoint"),
        );
        set(
            &mut document,
            &["oauth_apps", "0", "token_url"],
            &endpoint("token_endpoint"),
        );
        if document["oauth_apps"][0].get("revocation_url").is_some() {
            set(
                &mut document,
                &["oauth_apps", "0", "revocation_url"],
                &endpoint("revocation_endpoint"),
            );
        }
        set(
            &mut document,
            &["servers", "0", "upstream_url"],
            &upstream.url(),
        );
        apply(&mut gateway, &document, secrets).await;
        Self {
            public,
            idp,
            upstream,
            gateway,
            document,
        }
    }

    fn server(&self) -> &str {
        text(&self.document, &["servers", "0", "name"])
    }

    fn app_id(&self) -> &str {
        text(&self.document, &["oauth_apps", "0", "app_id"])
    }

    fn app_client_id(&self) -> &str {
        text(&self.document, &["oauth_apps", "0", "client_id"])
    }

    fn mcp_url(&self) -> String {
        format!("{}/mcp/{}", self.public.url(), self.server())
    }

    /// One conversation of the browser's user: SSO sign-in if needed, the call, the
    /// connect prompt (URL elicitation, which the SDK declares) followed in the browser
    /// when it comes, the call made again.
    async fn conversation(&self, browser: &HeadlessBrowser, tool: &str) -> McpClientReport {
        let report = python_mcp_client(self.mcp_url())
            .oauth(browser)
            .connect_links(ConnectLinks::Open {
                url_elicitation: true,
            })
            .call(tool, json!({}))
            .timeout(Duration::from_secs(120))
            .run()
            .await
            .unwrap();
        report.expect_ok().unwrap();
        report
    }

    /// The prompt of a first conversation: one, for this app, opened successfully, with no
    /// user name in the link; the call retried after it.
    fn expect_one_prompt(&self, report: &McpClientReport, tool: &str, user: &str) {
        assert_eq!(report.connect.len(), 1, "{:#?}", report.connect);
        let prompt = &report.connect[0];
        assert_eq!(prompt.via, "url_elicitation_error", "{prompt:#?}");
        let app_name = text(&self.document, &["oauth_apps", "0", "display_name"]);
        assert!(
            prompt
                .message
                .as_deref()
                .unwrap_or_default()
                .contains(&format!("connect your {app_name} account")),
            "{prompt:#?}"
        );
        assert!(
            prompt.url.starts_with(&format!(
                "{}/connect/{}?request=",
                self.public.url(),
                self.app_id()
            )),
            "{prompt:#?}"
        );
        assert!(!prompt.url.contains(user), "no user name in the link");
        assert_eq!(prompt.final_status, Some(200), "{prompt:#?}");
        assert!(
            prompt
                .final_text
                .as_deref()
                .unwrap_or_default()
                .contains(&format!("{app_name} connected")),
            "{prompt:#?}"
        );
        assert!(report.call(tool).unwrap().retried);
    }

    fn logs(&self) -> String {
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

/// Example 1: "My team wants to use Gmail from Cursor": Interactive SSO, OAuth 2.1
/// Authorization pre-configured for Google, no additional headers. Each team member signs
/// in with the company IdP, sees the prompt to connect their Google account once (Google's
/// consent: offline access, consent prompt), and from then on the Gmail MCP server gets
/// that member's own Google token, issued for it.
#[tokio::test]
async fn example_1_gmail_from_cursor_each_member_connects_google_once_and_acts_as_themselves() {
    const OKTA_CLIENT_SECRET: &str = "okta-client-secret-1";
    const GOOGLE_CLIENT_SECRET: &str = "google-client-secret-1";
    let example = PerUserExample::start(
        "gmail-from-cursor.yaml",
        &[
            ("OKTA_CLIENT_SECRET", OKTA_CLIENT_SECRET),
            ("GOOGLE_CLIENT_SECRET", GOOGLE_CLIENT_SECRET),
        ],
    )
    .await;
    assert_eq!(example.app_id(), "google");
    let gmail_scope = "https://www.googleapis.com/auth/gmail.modify";
    for user in ["alice", "bob"] {
        let browser = HeadlessBrowser::new().unwrap().user(user);
        // First session in "Cursor": sign-in, the Google prompt, the call.
        let report = example.conversation(&browser, "whoami").await;
        example.expect_one_prompt(&report, "whoami", user);
        let held = report.oauth.as_ref().and_then(|oauth| oauth.token.as_ref());
        let held_claims = held.and_then(|token| token.access_token_claims.clone());
        assert_eq!(
            held_claims.as_ref().map(|claims| claims["iss"].clone()),
            Some(json!(example.public.url())),
            "the client holds the gateway's token, not Google's: {held:?}"
        );
        let whoami: Value =
            serde_json::from_str(report.call("whoami").unwrap().text().unwrap()).unwrap();
        assert_eq!(whoami["sub"], user, "{whoami}");
        assert_eq!(whoami["iss"], example.idp.issuer(), "{whoami}");
        assert_eq!(whoami["aud"], example.upstream.url(), "{whoami}");
        assert_eq!(whoami["client_id"], example.app_client_id(), "{whoami}");
        assert!(
            whoami["scopes"]
                .as_array()
                .unwrap()
                .contains(&json!(gmail_scope)),
            "{whoami}"
        );

        // Next session: no prompt, straight to the member's own mailbox.
        let report = example.conversation(&browser, "whoami").await;
        assert!(report.connect.is_empty(), "{:#?}", report.connect);
        let whoami: Value =
            serde_json::from_str(report.call("whoami").unwrap().text().unwrap()).unwrap();
        assert_eq!(whoami["sub"], user, "{whoami}");
    }
    // Google's consent was asked for as the example configures it, with the Gmail scope.
    let requests = example.idp.recent_requests().await.unwrap();
    let google: Vec<_> = requests
        .authorization
        .iter()
        .filter(|request| request.get("client_id") == Some(&json!(example.app_client_id())))
        .collect();
    assert_eq!(
        google.len(),
        2,
        "one Google consent per member: {google:#?}"
    );
    for request in google {
        assert_eq!(
            request.get("prompt"),
            Some(&json!("consent")),
            "{request:?}"
        );
        assert!(
            request["scope"].as_str().unwrap().contains(gmail_scope),
            "{request:?}"
        );
    }
    assert_eq!(example.upstream.accepted_tokens().len(), 2);
    let logs = example.logs();
    assert!(logs.contains("credential_kind=\"oauth_authorization\""));
    for secret in [OKTA_CLIENT_SECRET, GOOGLE_CLIENT_SECRET] {
        assert!(!logs.contains(secret), "a client secret in a log");
    }
    for token in example.upstream.accepted_tokens() {
        assert!(!logs.contains(&token), "a Google token in a log");
    }
}

/// Example 4: "We're building a chatbot that performs GitHub actions on behalf of each
/// user": Interactive SSO (the IdP the chatbot shares), OAuth 2.1 Authorization configured
/// for GitHub (client_secret_post), no additional headers. Each user connects GitHub once
/// through the prompt's link; "list my open pull requests" then returns only their own,
/// for user A and user B alike.
#[tokio::test]
async fn example_4_the_github_chatbot_acts_for_each_user_with_their_own_github_token() {
    const OKTA_CLIENT_SECRET: &str = "okta-client-secret-4";
    const GITHUB_CLIENT_SECRET: &str = "github-client-secret-4";
    let example = PerUserExample::start(
        "github-chatbot.yaml",
        &[
            ("OKTA_CLIENT_SECRET", OKTA_CLIENT_SECRET),
            ("GITHUB_CLIENT_SECRET", GITHUB_CLIENT_SECRET),
        ],
    )
    .await;
    assert_eq!(example.app_id(), "github");
    assert_eq!(
        text(
            &example.document,
            &["oauth_apps", "0", "token_endpoint_auth_method"]
        ),
        "client_secret_post"
    );
    for user in ["alice", "bob"] {
        let browser = HeadlessBrowser::new().unwrap().user(user);
        // "list my open pull requests": the one-time GitHub connection, then the answer.
        let report = example.conversation(&browser, "list_pull_requests").await;
        example.expect_one_prompt(&report, "list_pull_requests", user);
        let pulls: Value =
            serde_json::from_str(report.call("list_pull_requests").unwrap().text().unwrap())
                .unwrap();
        let authors: Vec<&str> = pulls
            .as_array()
            .unwrap()
            .iter()
            .map(|pull| pull["author"].as_str().unwrap())
            .collect();
        assert!(!authors.is_empty(), "{pulls}");
        assert!(authors.iter().all(|author| *author == user), "{pulls}");

        // From then on it just works, with the user's own token only.
        let report = example.conversation(&browser, "list_pull_requests").await;
        assert!(report.connect.is_empty(), "{:#?}", report.connect);
        let text = report.call("list_pull_requests").unwrap().text().unwrap();
        let other = if user == "alice" { "bob" } else { "alice" };
        assert!(text.contains(&format!("\"author\": \"{user}\"")), "{text}");
        assert!(!text.contains(other), "{text}");
    }
    // The GitHub code was redeemed with the secret in the form body, once per user.
    let requests = example.idp.recent_requests().await.unwrap();
    let github_codes = requests
        .token
        .iter()
        .filter(|request| {
            request.client_id.as_deref() == Some(example.app_client_id())
                && request.grant_type.as_deref() == Some("authorization_code")
        })
        .count();
    assert_eq!(github_codes, 2, "{requests:#?}");
    assert_eq!(example.upstream.accepted_tokens().len(), 2);
    let logs = example.logs();
    for secret in [OKTA_CLIENT_SECRET, GITHUB_CLIENT_SECRET] {
        assert!(!logs.contains(secret), "a client secret in a log");
    }
}

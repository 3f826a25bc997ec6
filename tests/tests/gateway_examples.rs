//! The real-world examples of the product document ("Real-World Examples"), each configured
//! from its table: the apply document in `deploy/examples/` is applied with `portcullisctl
//! apply`, adapted only where the test must point at its own parties (the test IdP instead
//! of Okta or Entra, echo-upstream instead of the app's MCP server), and driven by a real MCP
//! client (the Python SDK; with `--oauth` for Interactive SSO).

use std::path::PathBuf;
use std::time::Duration;

use portcullis_tests::browser::HeadlessBrowser;
use portcullis_tests::echo_upstream::EchoedRequest;
use portcullis_tests::idp::{IdpClient, IdpConfig, IdpResource, TestIdp};
use portcullis_tests::{EchoUpstream, Gateway, paths, python_mcp_client, scratch_dir};
use serde_json::json;
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

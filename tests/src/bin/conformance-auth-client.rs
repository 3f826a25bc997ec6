//! The `--command` client of `conformance client --suite auth`, with the gateway's outbound
//! OAuth client in the path.
//!
//! The suite starts a scenario (an MCP server and its authorization server on loopback) and
//! runs this program with the server's URL as the last argument, the scenario's name in
//! `MCP_CONFORMANCE_SCENARIO` and, for some scenarios, pre-registered client credentials in
//! `MCP_CONFORMANCE_CONTEXT`. A running gateway (control plane, node, identity provider) is
//! described by the JSON file `$PORTCULLIS_CONFORMANCE_GATEWAY` (see [`GatewayConfig`]).
//!
//! What it does, as two people would:
//! 1. The gateway's admin discovers the server's authorization (protected resource metadata
//!    from the 401 challenge or the well-known locations, the authorization server's
//!    metadata in the RFC 8414 / OIDC order), obtains a client (the pre-registered one, a
//!    client ID metadata document URL when the server supports them, else dynamic
//!    registration with the gateway's `P/connect/callback`), and configures an OAuth app and
//!    an MCP server whose upstream is the scenario's server (OAuth 2.1 Authorization app
//!    auth with the scopes the challenge or the metadata name; Interactive SSO for users).
//!    An authorization server that only grants `client_credentials` gets Client Credentials
//!    app auth instead. The gateway itself never discovers or registers: that is this
//!    step.
//! 2. A user signs in to the gateway (Interactive SSO at the identity provider), calls the
//!    server's tool through the node, gets the "connect your account" prompt, opens its
//!    link in the headless browser (the gateway's login, the provider's authorization, the
//!    code exchange), and calls the tool again: the gateway now sends the user's token.
//!
//! Prints one JSON line (`{"ok": true, ...}` or `{"ok": false, "error": ...}`) and exits 0
//! only when the tool answered through the gateway.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use portcullis_proto::v1 as proto;
use portcullis_tests::browser::HeadlessBrowser;
use portcullis_tests::gateway::admin_client;
use portcullis_tests::gateway::servers::{secret, server};
use portcullis_tests::linking::gateway_token;
use portcullis_tests::mcp_http::McpHttpSession;
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

/// The environment variable naming the gateway description file.
const GATEWAY_ENV: &str = "PORTCULLIS_CONFORMANCE_GATEWAY";
/// The client ID metadata document URL the admin publishes for the gateway (the suite's
/// authorization servers never fetch it; they check that it is used as the client id).
const CLIENT_METADATA_URL: &str = "https://conformance-test.local/client-metadata.json";
/// The scenarios' tool.
const TOOL: &str = "test-tool";
const HTTP_TIMEOUT: Duration = Duration::from_secs(15);
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(20);

/// The running gateway, as the test wrote it.
#[derive(Debug, Deserialize)]
struct GatewayConfig {
    /// The control plane's admin gRPC URL.
    control_plane_url: String,
    admin_token: String,
    /// The node's public URL (`P`).
    public_url: String,
    /// The identity provider users sign in with (already in the catalog).
    identity_provider: String,
    /// The user the browser signs in as at the identity provider.
    user: String,
}

/// What the admin learned about the scenario's server.
#[derive(Debug, Default)]
struct Discovery {
    /// `scope` of the 401 challenge.
    challenge_scope: Option<String>,
    /// The protected resource metadata.
    resource_metadata: Value,
    /// The authorization server's metadata.
    authorization_server: Value,
}

impl Discovery {
    fn metadata_list(&self, name: &str) -> Vec<String> {
        self.authorization_server[name]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    }

    fn endpoint(&self, name: &str) -> anyhow::Result<String> {
        self.authorization_server[name]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("the authorization server's metadata has no {name}"))
    }

    /// The MCP specification's scope selection: the challenge's, else the resource's
    /// `scopes_supported`, else none.
    fn scopes(&self) -> Vec<String> {
        if let Some(scope) = &self.challenge_scope {
            return scope.split_whitespace().map(str::to_owned).collect();
        }
        self.resource_metadata["scopes_supported"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    }
}

/// The parameters of a `WWW-Authenticate: Bearer k="v", ...` challenge.
fn challenge_parameters(header: &str) -> BTreeMap<String, String> {
    let mut parameters = BTreeMap::new();
    let rest = header
        .trim()
        .split_once(char::is_whitespace)
        .map_or("", |(_, rest)| rest);
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let name: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if name.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    other => value.push(other),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        parameters.insert(name, value.trim().to_owned());
    }
    parameters
}

fn mcp_post(http: &reqwest::Client, url: &str, body: Value) -> reqwest::RequestBuilder {
    http.post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&body)
}

async fn get_json(http: &reqwest::Client, url: &str) -> Option<Value> {
    let response = http.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// What an admin does to learn how a protected MCP server wants to be called: the 401
/// challenge (of `initialize`, or of the first request after it), the protected resource
/// metadata, the authorization server's metadata.
async fn discover(http: &reqwest::Client, server_url: &str) -> anyhow::Result<Discovery> {
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "portcullis-admin-probe", "version": "1"}
        }
    });
    let mut response = mcp_post(http, server_url, initialize)
        .send()
        .await
        .context("the server cannot be reached")?;
    if response.status().is_success() {
        // Initialize is open: the challenge comes with the first request.
        let session = response.headers().get("mcp-session-id").cloned();
        let mut request = mcp_post(
            http,
            server_url,
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}),
        );
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        response = request.send().await.context("tools/list failed")?;
    }
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|value| value.to_str().ok())
        .map(challenge_parameters)
        .unwrap_or_default();
    let mut discovery = Discovery {
        challenge_scope: challenge.get("scope").cloned(),
        ..Discovery::default()
    };

    // Protected resource metadata: the challenge's, else path-based, else at the root.
    let server = Url::parse(server_url).context("the server URL")?;
    let origin = server.origin().ascii_serialization();
    let path = server.path().trim_end_matches('/');
    let mut candidates = Vec::new();
    if let Some(url) = challenge.get("resource_metadata") {
        candidates.push(url.clone());
    }
    candidates.push(format!(
        "{origin}/.well-known/oauth-protected-resource{path}"
    ));
    candidates.push(format!("{origin}/.well-known/oauth-protected-resource"));
    for candidate in &candidates {
        if let Some(metadata) = get_json(http, candidate).await {
            discovery.resource_metadata = metadata;
            break;
        }
    }
    let issuer = discovery.resource_metadata["authorization_servers"][0]
        .as_str()
        .with_context(|| format!("no protected resource metadata at {candidates:?}"))?
        .to_owned();

    // Authorization server metadata, in the order of the MCP specification.
    let issuer_url = Url::parse(&issuer).context("the authorization server URL")?;
    let as_origin = issuer_url.origin().ascii_serialization();
    let as_path = issuer_url.path().trim_end_matches('/');
    let candidates = if as_path.is_empty() {
        vec![
            format!("{as_origin}/.well-known/oauth-authorization-server"),
            format!("{as_origin}/.well-known/openid-configuration"),
        ]
    } else {
        vec![
            format!("{as_origin}/.well-known/oauth-authorization-server{as_path}"),
            format!("{as_origin}/.well-known/openid-configuration{as_path}"),
            format!("{as_origin}{as_path}/.well-known/openid-configuration"),
        ]
    };
    for candidate in &candidates {
        if let Some(metadata) = get_json(http, candidate).await {
            discovery.authorization_server = metadata;
            return Ok(discovery);
        }
    }
    bail!("no authorization server metadata at {candidates:?}")
}

/// The scenario's name as a slug for the gateway's catalog: `auth/metadata-var1` on port
/// 40123 is `metadata-var1-40123` (one gateway serves several runs of the suite).
fn catalog_name(scenario: &str, server_url: &str) -> anyhow::Result<String> {
    let base: String = scenario
        .rsplit('/')
        .next()
        .unwrap_or(scenario)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let port = Url::parse(server_url)?
        .port_or_known_default()
        .context("the server URL has no port")?;
    let base: String = base.chars().take(50).collect();
    Ok(format!("{}-{port}", base.trim_matches('-')))
}

/// The client the admin configures for the gateway at the authorization server.
struct Client {
    client_id: String,
    client_secret: Option<String>,
    token_endpoint_auth_method: String,
}

/// Pre-registered credentials from the scenario's context, else a client ID metadata
/// document when the server supports them, else dynamic registration.
async fn obtain_client(
    http: &reqwest::Client,
    discovery: &Discovery,
    context: &Value,
    redirect_uri: &str,
) -> anyhow::Result<Client> {
    let supported = discovery.metadata_list("token_endpoint_auth_methods_supported");
    // RFC 8414: absent means client_secret_basic.
    let supports = |method: &str| {
        supported.is_empty() && method == "client_secret_basic"
            || supported.iter().any(|m| m == method)
    };
    if let Some(client_id) = context["client_id"].as_str() {
        let client_secret = context["client_secret"].as_str().map(str::to_owned);
        let method = if client_secret.is_none() {
            "none"
        } else if supports("client_secret_basic") {
            "client_secret_basic"
        } else {
            "client_secret_post"
        };
        return Ok(Client {
            client_id: client_id.to_owned(),
            client_secret,
            token_endpoint_auth_method: method.to_owned(),
        });
    }
    if discovery.authorization_server["client_id_metadata_document_supported"] == true {
        return Ok(Client {
            client_id: CLIENT_METADATA_URL.to_owned(),
            client_secret: None,
            token_endpoint_auth_method: "none".to_owned(),
        });
    }
    let registration_endpoint = discovery
        .endpoint("registration_endpoint")
        .context("no pre-registered client and no dynamic registration")?;
    let method = ["client_secret_basic", "client_secret_post", "none"]
        .into_iter()
        .find(|method| supports(method))
        .context("no token endpoint authentication method the gateway supports")?;
    let response = http
        .post(&registration_endpoint)
        .json(&json!({
            "client_name": "Portcullis gateway",
            "redirect_uris": [redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": method,
            "application_type": "web",
        }))
        .send()
        .await
        .context("dynamic registration failed")?;
    let status = response.status();
    let registered: Value = response
        .json()
        .await
        .context("the registration answer is not JSON")?;
    if !status.is_success() {
        bail!("dynamic registration refused: HTTP {status} {registered}");
    }
    Ok(Client {
        client_id: registered["client_id"]
            .as_str()
            .context("the registration has no client_id")?
            .to_owned(),
        client_secret: registered["client_secret"].as_str().map(str::to_owned),
        token_endpoint_auth_method: registered["token_endpoint_auth_method"]
            .as_str()
            .unwrap_or(method)
            .to_owned(),
    })
}

/// Waits until the node serves snapshot `revision` or later.
async fn wait_for_node(
    http: &reqwest::Client,
    public_url: &str,
    revision: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + PROPAGATION_TIMEOUT;
    loop {
        let serving = get_json(http, &format!("{public_url}/readyz"))
            .await
            .and_then(|body| body["snapshot_version"].as_u64());
        if serving.is_some_and(|version| version >= revision) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the node serves {serving:?}, not {revision}, after {PROPAGATION_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first `…/connect/…` URL in a text (a prompt's message or JSON).
fn connect_link(text: &str) -> Option<String> {
    let start = text.find("http://").or_else(|| text.find("https://"))?;
    let candidates = text[start..].split(|c: char| c.is_whitespace() || c == '"' || c == '\\');
    candidates
        .into_iter()
        .find(|word| word.contains("/connect/"))
        .map(str::to_owned)
        .or_else(|| connect_link(&text[start + 4..]))
}

/// The text of a tool result's first text block.
fn result_text(result: &Value) -> String {
    result["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Client Credentials app auth: the gateway obtains its own token; no user involved.
async fn client_credentials(
    admin: &mut portcullis_tests::gateway::AdminClient,
    http: &reqwest::Client,
    gateway: &GatewayConfig,
    name: &str,
    server_url: &str,
    discovery: &Discovery,
    context: &Value,
) -> anyhow::Result<Value> {
    if context["private_key_pem"].is_string() {
        bail!("the gateway authenticates client credentials with a secret, not private_key_jwt");
    }
    let client_id = context["client_id"]
        .as_str()
        .context("no pre-registered client for the client credentials grant")?;
    let client_secret = context["client_secret"]
        .as_str()
        .context("no client secret for the client credentials grant")?;
    let kind = proto::app_auth::Kind::ClientCredentials(proto::ClientCredentials {
        token_url: discovery.endpoint("token_endpoint")?,
        client_id: client_id.to_owned(),
        client_secret: secret(client_secret),
        scopes: discovery.scopes(),
        ..proto::ClientCredentials::default()
    });
    let revision = admin
        .create_server(proto::CreateServerRequest {
            server: Some(server(name, server_url, kind)),
        })
        .await
        .context("CreateServer failed")?
        .into_inner()
        .revision;
    wait_for_node(http, &gateway.public_url, revision).await?;
    let mcp_url = format!("{}/mcp/{name}", gateway.public_url);
    let mut session = McpHttpSession::connect(&mcp_url, &[]).await?;
    let result = session.call_tool(TOOL, json!({})).await?;
    if result["isError"] == true {
        bail!("{TOOL} failed through the gateway: {result}");
    }
    Ok(json!({"app_auth": "client_credentials", "tool_text": result_text(&result)}))
}

/// OAuth 2.1 Authorization app auth: the admin's configuration, then the user's connection.
async fn authorization_code(
    admin: &mut portcullis_tests::gateway::AdminClient,
    http: &reqwest::Client,
    gateway: &GatewayConfig,
    name: &str,
    server_url: &str,
    discovery: &Discovery,
    context: &Value,
) -> anyhow::Result<Value> {
    let redirect_uri = format!("{}/connect/callback", gateway.public_url);
    let client = obtain_client(http, discovery, context, &redirect_uri).await?;
    admin
        .put_o_auth_app(proto::PutOAuthAppRequest {
            oauth_app: Some(proto::OAuthApp {
                app_id: name.to_owned(),
                display_name: format!("Conformance {name}"),
                authorize_url: discovery.endpoint("authorization_endpoint")?,
                token_url: discovery.endpoint("token_endpoint")?,
                client_id: client.client_id.clone(),
                client_secret: client.client_secret.as_deref().and_then(secret),
                token_endpoint_auth_method: client.token_endpoint_auth_method.clone(),
                ..proto::OAuthApp::default()
            }),
            expected_revision: None,
        })
        .await
        .context("PutOAuthApp failed")?;
    let scopes = discovery.scopes();
    let mut mcp_server = server(
        name,
        server_url,
        proto::app_auth::Kind::OauthAuthorization(proto::OAuthAuthorization {
            app_id: name.to_owned(),
            scopes: scopes.clone(),
        }),
    );
    mcp_server.agent_auth = Some(proto::AgentAuth {
        mode: Some(proto::agent_auth::Mode::Interactive(
            proto::InteractiveSso {
                identity_provider: gateway.identity_provider.clone(),
                scopes: Vec::new(),
            },
        )),
        restricted_inbound_headers: Vec::new(),
    });
    let revision = admin
        .create_server(proto::CreateServerRequest {
            server: Some(mcp_server),
        })
        .await
        .context("CreateServer failed")?
        .into_inner()
        .revision;
    wait_for_node(http, &gateway.public_url, revision).await?;

    // The user: signed in to the gateway, not yet connected to the app.
    let mcp_url = format!("{}/mcp/{name}", gateway.public_url);
    let browser = HeadlessBrowser::new()?.user(&gateway.user);
    let token = gateway_token(&gateway.public_url, &mcp_url, &browser).await?;
    let authorization = format!("Bearer {token}");
    let headers = [("authorization", authorization.as_str())];
    // The prompt comes at `initialize` when the server wants a token for it (a JSON-RPC
    // error carrying the link), else at the tool call (a tool result carrying it).
    let prompt = match McpHttpSession::connect(&mcp_url, &headers).await {
        Err(error) => format!("{error:#}"),
        Ok(mut session) => {
            let result = session.call_tool(TOOL, json!({})).await?;
            if result["isError"] != true {
                bail!("{TOOL} answered before the user connected an account: {result}");
            }
            result_text(&result)
        }
    };
    let link = connect_link(&prompt)
        .with_context(|| format!("no connect link in the gateway's answer: {prompt}"))?;
    let outcome = browser.visit(&link).await?;
    if outcome.final_status != Some(200) {
        bail!("connecting the account failed: {outcome:#?}");
    }

    // Connected: a new session, the tool with the user's token.
    let mut session = McpHttpSession::connect(&mcp_url, &headers).await?;
    let tools = session.request("tools/list", json!({})).await?;
    if !tools["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|tool| tool["name"] == TOOL)
    {
        bail!("tools/list through the gateway lacks {TOOL}: {tools}");
    }
    let result = session.call_tool(TOOL, json!({})).await?;
    if result["isError"] == true {
        bail!("{TOOL} failed through the gateway: {result}");
    }
    Ok(json!({
        "app_auth": "oauth_authorization",
        "client_id": client.client_id,
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
        "scopes": scopes,
        "tool_text": result_text(&result),
    }))
}

async fn run() -> anyhow::Result<Value> {
    let server_url = std::env::args()
        .skip(1)
        .last()
        .context("usage: conformance-auth-client <server URL>")?;
    let scenario = std::env::var("MCP_CONFORMANCE_SCENARIO").unwrap_or_default();
    let context: Value = match std::env::var("MCP_CONFORMANCE_CONTEXT") {
        Ok(text) => serde_json::from_str(&text).context("MCP_CONFORMANCE_CONTEXT")?,
        Err(_) => Value::Null,
    };
    let config_file =
        std::env::var_os(GATEWAY_ENV).with_context(|| format!("{GATEWAY_ENV} is not set"))?;
    let gateway: GatewayConfig = serde_json::from_slice(
        &std::fs::read(&config_file).context("cannot read the gateway description")?,
    )
    .context("invalid gateway description")?;
    let http = reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()?;
    let name = catalog_name(&scenario, &server_url)?;
    let discovery = discover(&http, &server_url).await?;
    let mut admin = admin_client(&gateway.control_plane_url, &gateway.admin_token).await?;
    let grants = discovery.metadata_list("grant_types_supported");
    let only_client_credentials = grants.iter().any(|grant| grant == "client_credentials")
        && !grants.iter().any(|grant| grant == "authorization_code");
    if only_client_credentials {
        client_credentials(
            &mut admin,
            &http,
            &gateway,
            &name,
            &server_url,
            &discovery,
            &context,
        )
        .await
    } else {
        authorization_code(
            &mut admin,
            &http,
            &gateway,
            &name,
            &server_url,
            &discovery,
            &context,
        )
        .await
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(report) => {
            let mut report = report;
            report["ok"] = json!(true);
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("{}", json!({"ok": false, "error": format!("{error:#}")}));
            eprintln!("conformance-auth-client: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_parsed() {
        let parameters = challenge_parameters(
            r#"Bearer error="insufficient_scope", scope="mcp:basic mcp:write", resource_metadata="http://x/.well-known/oauth-protected-resource/mcp""#,
        );
        assert_eq!(parameters["scope"], "mcp:basic mcp:write");
        assert_eq!(parameters["error"], "insufficient_scope");
        assert_eq!(
            parameters["resource_metadata"],
            "http://x/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(challenge_parameters("Bearer realm=x")["realm"], "x");
    }

    #[test]
    fn links_are_found_in_prompts() {
        let error = r#"initialize failed: {"code":-32000,"data":{"connect_url":"http://127.0.0.1:1/connect/a?request=x"},"message":"Open http://127.0.0.1:1/connect/a?request=x to connect"}"#;
        assert_eq!(
            connect_link(error).as_deref(),
            Some("http://127.0.0.1:1/connect/a?request=x")
        );
        assert_eq!(connect_link("see http://a/b then"), None);
        assert_eq!(
            catalog_name("auth/metadata-var1", "http://localhost:4012/mcp").unwrap(),
            "metadata-var1-4012"
        );
    }
}

//! Additional outbound headers end to end: each of the six patterns of the "+ Add Header"
//! menu configured through the admin API, a real MCP client (the Python SDK) calling
//! through a node, and echo-upstream reporting the headers it received. The real test IdP
//! (oidc-provider) issues the callers' JWTs and is the client-credentials and token-exchange
//! endpoint.

use std::time::Duration;

use portcullis_proto::v1 as proto;
use portcullis_tests::browser::HeadlessBrowser;
use portcullis_tests::echo_upstream::EchoedRequest;
use portcullis_tests::gateway::servers::{api_key_in_header, secret, server};
use portcullis_tests::idp::{IdpAccount, IdpClient, IdpConfig, TestIdp, corp, jwt};
use portcullis_tests::{EchoUpstream, Gateway, python_mcp_client};
use serde_json::{Value, json};

/// The resource (`aud`) of the callers' JWTs, which JWT validation requires.
const CALLER_AUDIENCE: &str = "https://mcp.portcullis.test";
/// Where the user client's browser stops: nothing listens there.
const USER_CLIENT_REDIRECT_URI: &str = "http://127.0.0.1:9/callback";
/// The app key every test server sends on `x-app-key` (app authentication).
const APP_KEY: &str = "app-key-1";

pub struct Outbound {
    pub idp: TestIdp,
    pub gateway: Gateway,
    pub upstream: EchoUpstream,
    /// The client the callers' JWTs are issued to.
    pub user_client: IdpClient,
    /// The gateway's client for client credentials and token exchange.
    pub service_client: IdpClient,
}

impl Outbound {
    pub async fn start(config: IdpConfig) -> Self {
        let user_client =
            IdpClient::confidential("mcp-app", "mcp-app-secret", &[USER_CLIENT_REDIRECT_URI]);
        let service_client = IdpClient::service("portcullis-svc", "portcullis-svc-secret");
        let idp = TestIdp::start(
            config
                .client(user_client.clone())
                .client(service_client.clone()),
        )
        .await
        .unwrap();
        let gateway = Gateway::start(1).await.unwrap();
        let upstream = EchoUpstream::start(&[]).await.unwrap();
        Self {
            idp,
            gateway,
            upstream,
            user_client,
            service_client,
        }
    }

    /// The IdP's token endpoint, from its discovery document.
    pub async fn token_endpoint(&self) -> String {
        self.idp.discovery().await.unwrap()["token_endpoint"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Passthrough agent auth with JWT validation against the IdP (issuer and audience).
    pub async fn jwt_agent(&self) -> proto::AgentAuth {
        let jwks_url = self.idp.discovery().await.unwrap()["jwks_uri"]
            .as_str()
            .unwrap()
            .to_owned();
        proto::AgentAuth {
            mode: Some(proto::agent_auth::Mode::Passthrough(
                proto::PassthroughAgent {
                    jwt_validation: Some(proto::JwtValidation {
                        jwks_url,
                        issuer: self.idp.issuer().to_owned(),
                        audience: CALLER_AUDIENCE.to_owned(),
                        ..proto::JwtValidation::default()
                    }),
                },
            )),
            restricted_inbound_headers: Vec::new(),
        }
    }

    /// A user's JWT access token from the IdP (authorization code flow, headless browser).
    pub async fn user_token(&self, user: &str) -> String {
        let browser = HeadlessBrowser::new().unwrap().user(user);
        let request = self
            .idp
            .authorization_request(&self.user_client)
            .scope("openid email groups")
            .resource(CALLER_AUDIENCE);
        let tokens = self
            .idp
            .authorization_code_flow(&self.user_client, &request, &browser)
            .await
            .unwrap()
            .expect_ok()
            .unwrap();
        tokens.access_token().unwrap().to_owned()
    }

    /// Creates the server `name` (echo-upstream, the app key on `x-app-key`) with `headers`.
    pub async fn create(
        &mut self,
        name: &str,
        agent_auth: Option<proto::AgentAuth>,
        headers: Vec<proto::OutboundHeader>,
    ) {
        let mut created = server(
            name,
            &self.upstream.url(),
            api_key_in_header("x-app-key", APP_KEY),
        );
        if let Some(agent_auth) = agent_auth {
            created.agent_auth = Some(agent_auth);
        }
        created.outbound_headers = headers;
        self.gateway.create_server(created).await.unwrap();
    }

    pub fn mcp_url(&self, server: &str) -> String {
        self.gateway.node(0).mcp_url(server)
    }

    /// The node's log (request records), without terminal colours.
    pub fn node_log(&self) -> String {
        self.gateway.node(0).process().stderr_text()
    }
}

/// The headers echo-upstream received with one `echo_headers` call, made by the Python SDK
/// with `headers` on every request.
pub async fn echoed(url: &str, headers: &[(&str, &str)]) -> EchoedRequest {
    let mut client = python_mcp_client(url).timeout(Duration::from_secs(60));
    for (name, value) in headers {
        client = client.header(name, value);
    }
    let report = client.call("echo_headers", json!({})).run().await.unwrap();
    report.expect_ok().unwrap();
    serde_json::from_str(report.call("echo_headers").unwrap().text().unwrap()).unwrap()
}

/// The error a refused call gets, as the Python SDK reports it (HTTP status and JSON-RPC
/// message).
pub async fn refusal(url: &str, headers: &[(&str, &str)]) -> (Vec<u16>, String) {
    let mut client = python_mcp_client(url).timeout(Duration::from_secs(60));
    for (name, value) in headers {
        client = client.header(name, value);
    }
    let report = client.call("echo_headers", json!({})).run().await.unwrap();
    assert!(!report.ok, "the call went through: {report:?}");
    (
        report.http_statuses(),
        report.error.clone().unwrap_or_default(),
    )
}

pub fn header(
    name: &str,
    prefix: &str,
    source: proto::outbound_header::Source,
) -> proto::OutboundHeader {
    proto::OutboundHeader {
        header_name: name.to_owned(),
        prefix: prefix.to_owned(),
        source: Some(source),
    }
}

fn custom(value: proto::custom_header::Value) -> proto::outbound_header::Source {
    proto::outbound_header::Source::Custom(proto::CustomHeader { value: Some(value) })
}

fn caller_identity(claim: &str) -> proto::outbound_header::Source {
    proto::outbound_header::Source::CallerIdentity(proto::CallerIdentity {
        claim: claim.to_owned(),
    })
}

/// Every value of a header echo-upstream received.
fn values<'a>(echoed: &'a EchoedRequest, name: &str) -> Vec<&'a str> {
    echoed
        .headers
        .get(name)
        .map(|values| values.iter().map(String::as_str).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn service_token_is_fetched_once_with_client_credentials_and_sent_with_its_prefix() {
    let mut outbound = Outbound::start(IdpConfig::default()).await;
    let token_url = outbound.token_endpoint().await;
    outbound
        .create(
            "reports",
            None,
            vec![header(
                "x-service-authorization",
                "Bearer ",
                proto::outbound_header::Source::ServiceToken(proto::ServiceToken {
                    token_url,
                    client_id: outbound.service_client.client_id.clone(),
                    client_secret: secret(
                        outbound.service_client.client_secret.as_deref().unwrap(),
                    ),
                    ..proto::ServiceToken::default()
                }),
            )],
        )
        .await;
    let first = echoed(&outbound.mcp_url("reports"), &[]).await;
    let second = echoed(&outbound.mcp_url("reports"), &[]).await;

    let sent = values(&first, "x-service-authorization");
    assert_eq!(sent.len(), 1, "{first:?}");
    let token = sent[0].strip_prefix("Bearer ").unwrap();
    // The IdP issued it to the gateway's service client, and it is active.
    let introspection = outbound
        .idp
        .introspect(&outbound.service_client, token)
        .await
        .unwrap();
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(
        introspection["client_id"], "portcullis-svc",
        "{introspection}"
    );
    // App authentication still went out, next to it.
    assert_eq!(values(&first, "x-app-key"), [APP_KEY]);
    // Cached: both sessions (every request of them) used one token from one request.
    assert_eq!(values(&second, "x-service-authorization"), sent);
    let stats = outbound.idp.stats().await.unwrap();
    assert_eq!(stats.token_requests("client_credentials"), 1, "{stats:?}");

    // The record names the header and its pattern, never the token.
    let log = outbound.node_log();
    assert!(
        log.contains("outbound_headers=\"x-service-authorization:service_token\""),
        "{log}"
    );
    assert!(
        !log.contains(token),
        "the service token is in the node's log"
    );
}

#[tokio::test]
async fn forward_caller_token_sends_the_validated_jwt_on_the_named_header() {
    let mut outbound = Outbound::start(IdpConfig::default()).await;
    let agent = outbound.jwt_agent().await;
    outbound
        .create(
            "search",
            Some(agent),
            vec![header(
                "x-ms-query-source-authorization",
                "Bearer ",
                proto::outbound_header::Source::ForwardCallerToken(proto::ForwardCallerToken {}),
            )],
        )
        .await;
    let alice = outbound.user_token("alice").await;
    let authorization = format!("Bearer {alice}");
    let echoed = echoed(
        &outbound.mcp_url("search"),
        &[
            ("Authorization", &authorization),
            ("x-ms-query-source-authorization", "Bearer forged"),
        ],
    )
    .await;
    assert_eq!(
        values(&echoed, "x-ms-query-source-authorization"),
        [authorization.as_str()]
    );
    // The caller's Authorization itself is not forwarded generically.
    assert!(echoed.header("authorization").is_none(), "{echoed:?}");
    assert_eq!(values(&echoed, "x-app-key"), [APP_KEY]);

    // Without a valid token nothing reaches the upstream (JWT validation refuses first).
    let (statuses, _) = refusal(&outbound.mcp_url("search"), &[]).await;
    assert!(statuses.contains(&401), "{statuses:?}");
    assert!(
        !outbound.node_log().contains(&alice),
        "the caller's token is in the log"
    );
}

#[tokio::test]
async fn on_behalf_of_exchanges_each_callers_token_once_per_user() {
    let mut outbound = Outbound::start(IdpConfig::default()).await;
    let agent = outbound.jwt_agent().await;
    let exchange_url = outbound.token_endpoint().await;
    const DOWNSTREAM: &str = "https://downstream.portcullis.test";
    outbound
        .create(
            "files",
            Some(agent),
            vec![header(
                "x-downstream-authorization",
                "Bearer ",
                proto::outbound_header::Source::OnBehalfOf(proto::OnBehalfOf {
                    exchange_url,
                    client_id: outbound.service_client.client_id.clone(),
                    client_secret: secret(
                        outbound.service_client.client_secret.as_deref().unwrap(),
                    ),
                    audience: DOWNSTREAM.to_owned(),
                    ..proto::OnBehalfOf::default()
                }),
            )],
        )
        .await;
    let mut seen = Vec::new();
    for user in ["alice", "alice", "bob"] {
        let token = outbound.user_token(user).await;
        let echoed = echoed(
            &outbound.mcp_url("files"),
            &[("Authorization", &format!("Bearer {token}"))],
        )
        .await;
        let sent = values(&echoed, "x-downstream-authorization");
        assert_eq!(sent.len(), 1, "{echoed:?}");
        let exchanged = sent[0].strip_prefix("Bearer ").unwrap().to_owned();
        assert_ne!(exchanged, token, "the caller's own token went upstream");
        // Issued by the IdP for the downstream audience, to this very user.
        let claims = outbound
            .idp
            .verify_jwt(&exchanged, Some(DOWNSTREAM))
            .await
            .unwrap();
        assert_eq!(claims["sub"], user, "{claims}");
        seen.push(exchanged);
    }
    // Alice's second session (a new token of hers) reused her exchanged token; bob got his.
    assert_eq!(seen[0], seen[1]);
    assert_ne!(seen[0], seen[2]);
    let stats = outbound.idp.stats().await.unwrap();
    assert_eq!(
        stats.token_requests(portcullis_tests::idp::TOKEN_EXCHANGE_GRANT_TYPE),
        2,
        "{stats:?}"
    );
    let log = outbound.node_log();
    assert!(
        log.contains("outbound_headers=\"x-downstream-authorization:on_behalf_of\""),
        "{log}"
    );
    assert!(!seen.iter().any(|token| log.contains(token.as_str())));
}

#[tokio::test]
async fn vault_credential_uses_the_users_own_value_then_the_org_wide_one_then_says_how_to_add_one()
{
    let mut outbound =
        Outbound::start(IdpConfig::default().account(IdpAccount::new("carol"))).await;
    let agent = outbound.jwt_agent().await;
    for (id, org_value) in [("crm-key", Some("org-crm-key")), ("personal-token", None)] {
        outbound
            .gateway
            .admin
            .put_credential(proto::PutCredentialRequest {
                id: id.to_owned(),
                description: format!("{id} for the e2e test"),
                org_value: org_value.and_then(secret),
                ..proto::PutCredentialRequest::default()
            })
            .await
            .unwrap();
    }
    for (credential, user, value) in [
        ("crm-key", "alice", "alice-crm-key"),
        ("personal-token", "bob", "bob-personal-token"),
    ] {
        outbound
            .gateway
            .admin
            .set_user_credential(proto::SetUserCredentialRequest {
                credential_id: credential.to_owned(),
                user: user.to_owned(),
                value: value.to_owned(),
                expected_revision: None,
            })
            .await
            .unwrap();
    }
    let vault = |id: &str, scope: proto::CredentialScope| {
        proto::outbound_header::Source::VaultCredential(proto::VaultCredential {
            credential_id: id.to_owned(),
            scope: scope as i32,
        })
    };
    outbound
        .create(
            "crm",
            Some(agent.clone()),
            vec![
                header(
                    "x-crm-key",
                    "",
                    vault("crm-key", proto::CredentialScope::PerUser),
                ),
                header(
                    "x-org-key",
                    "Key ",
                    vault("crm-key", proto::CredentialScope::OrgWide),
                ),
            ],
        )
        .await;
    outbound
        .create(
            "personal",
            Some(agent),
            vec![header(
                "x-personal-token",
                "token ",
                vault("personal-token", proto::CredentialScope::PerUser),
            )],
        )
        .await;

    let call = |user: &'static str| {
        let outbound = &outbound;
        async move {
            let token = outbound.user_token(user).await;
            format!("Bearer {token}")
        }
    };
    let alice = call("alice").await;
    let bob = call("bob").await;
    let carol = call("carol").await;

    let echoed_alice = echoed(&outbound.mcp_url("crm"), &[("Authorization", &alice)]).await;
    assert_eq!(values(&echoed_alice, "x-crm-key"), ["alice-crm-key"]);
    assert_eq!(values(&echoed_alice, "x-org-key"), ["Key org-crm-key"]);
    let echoed_bob = echoed(&outbound.mcp_url("crm"), &[("Authorization", &bob)]).await;
    assert_eq!(values(&echoed_bob, "x-crm-key"), ["org-crm-key"]);

    let echoed_bob = echoed(&outbound.mcp_url("personal"), &[("Authorization", &bob)]).await;
    assert_eq!(
        values(&echoed_bob, "x-personal-token"),
        ["token bob-personal-token"]
    );
    // Carol stored nothing and there is no org-wide value: a clear error, nothing forwarded.
    let (statuses, message) =
        refusal(&outbound.mcp_url("personal"), &[("Authorization", &carol)]).await;
    assert!(statuses.contains(&412), "{statuses:?}");
    assert!(
        message.contains("portcullisctl credential set-user personal-token carol"),
        "{message}"
    );

    // Once she stores her value, her requests use it within seconds (users' values are
    // not in snapshots; the node's "no value" answer is cached for 5 s).
    outbound
        .gateway
        .admin
        .set_user_credential(proto::SetUserCredentialRequest {
            credential_id: "personal-token".to_owned(),
            user: "carol".to_owned(),
            value: "carol-personal-token".to_owned(),
            expected_revision: None,
        })
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut client = python_mcp_client(outbound.mcp_url("personal"))
            .timeout(Duration::from_secs(60))
            .header("Authorization", &carol);
        client = client.call("echo_headers", json!({}));
        let report = client.run().await.unwrap();
        if report.ok {
            let echoed: EchoedRequest =
                serde_json::from_str(report.call("echo_headers").unwrap().text().unwrap()).unwrap();
            assert_eq!(
                values(&echoed, "x-personal-token"),
                ["token carol-personal-token"]
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "carol's stored value is still not used: {:?}",
            report.error
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = outbound.node_log();
    for value in [
        "alice-crm-key",
        "org-crm-key",
        "bob-personal-token",
        "carol-personal-token",
    ] {
        assert!(!log.contains(value), "{value} is in the node's log");
    }
}

#[tokio::test]
async fn caller_identity_comes_from_the_verified_token_and_overrides_what_the_caller_sent() {
    let mut outbound = Outbound::start(IdpConfig::default()).await;
    let agent = outbound.jwt_agent().await;
    outbound
        .create(
            "hr",
            Some(agent),
            vec![
                header("x-user-id", "", caller_identity("sub")),
                header("x-user-email", "", caller_identity("email")),
                header("x-user-groups", "", caller_identity("groups")),
            ],
        )
        .await;
    let bob = outbound.user_token("bob").await;
    let echoed = echoed(
        &outbound.mcp_url("hr"),
        &[
            ("Authorization", &format!("Bearer {bob}")),
            ("x-user-email", "ceo@example.com"),
            ("X-User-Id", "alice"),
        ],
    )
    .await;
    assert_eq!(values(&echoed, "x-user-id"), ["bob"]);
    assert_eq!(values(&echoed, "x-user-email"), ["bob@example.com"]);
    assert_eq!(values(&echoed, "x-user-groups"), ["sales"]);
    let log = outbound.node_log();
    assert!(
        log.contains(
            "outbound_headers=\"x-user-id:caller_identity,x-user-email:caller_identity,x-user-groups:caller_identity\""
        ),
        "{log}"
    );
}

#[tokio::test]
async fn custom_headers_send_static_secret_and_template_values_and_refuse_a_value_that_breaks_the_request()
 {
    let mut outbound = Outbound::start(
        IdpConfig::default().account(IdpAccount::new("eve").groups(&["r\u{e9}seau"])),
    )
    .await;
    let agent = outbound.jwt_agent().await;
    outbound
        .create(
            "wiki",
            Some(agent),
            vec![
                header(
                    "x-tenant",
                    "",
                    custom(proto::custom_header::Value::StaticValue("acme".to_owned())),
                ),
                header(
                    "x-wiki-key",
                    "Key ",
                    custom(proto::custom_header::Value::Secret(
                        secret("wiki-secret-1").unwrap(),
                    )),
                ),
                header(
                    "x-context",
                    "",
                    custom(proto::custom_header::Value::Template(
                        "team={{groups}} user={{sub}}".to_owned(),
                    )),
                ),
            ],
        )
        .await;
    let alice = outbound.user_token("alice").await;
    let echoed = echoed(
        &outbound.mcp_url("wiki"),
        &[
            ("Authorization", &format!("Bearer {alice}")),
            ("x-tenant", "evil"),
        ],
    )
    .await;
    assert_eq!(values(&echoed, "x-tenant"), ["acme"]);
    assert_eq!(values(&echoed, "x-wiki-key"), ["Key wiki-secret-1"]);
    assert_eq!(
        values(&echoed, "x-context"),
        ["team=engineering,admins user=alice"]
    );

    // Eve's group has a non-ASCII character: the rendered value is refused at run time,
    // with a clear message, and the upstream sees nothing of the request.
    let eve = outbound.user_token("eve").await;
    let (statuses, message) = refusal(
        &outbound.mcp_url("wiki"),
        &[("Authorization", &format!("Bearer {eve}"))],
    )
    .await;
    assert!(statuses.contains(&412), "{statuses:?}");
    assert!(message.contains("x-context"), "{message}");
    assert!(message.contains("nothing was forwarded"), "{message}");
    assert!(!outbound.node_log().contains("wiki-secret-1"));
}

/// A bare OAuth client of the gateway's authorization server, so a test holds and refreshes
/// the gateway's tokens itself: dynamic registration, the authorization through the headless
/// browser (consent page and IdP login), token and refresh requests.
pub struct GatewayOAuthClient {
    http: reqwest::Client,
    public_url: String,
    client_id: String,
}

/// Nothing listens there: the browser stops at the redirect and hands over its parameters.
const GATEWAY_CLIENT_REDIRECT_URI: &str = "http://127.0.0.1:9/gateway-callback";

impl GatewayOAuthClient {
    pub async fn register(public_url: &str) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let response = http
            .post(format!("{public_url}/oauth/register"))
            .json(&json!({
                "client_name": "outbound headers e2e client",
                "redirect_uris": [GATEWAY_CLIENT_REDIRECT_URI],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let registration: Value = response.json().await.unwrap();
        Self {
            http,
            public_url: public_url.to_owned(),
            client_id: registration["client_id"].as_str().unwrap().to_owned(),
        }
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> Value {
        let response = self
            .http
            .post(format!("{}/oauth/token", self.public_url))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Signs the browser's user in for `server`; returns the token response.
    pub async fn sign_in(&self, browser: &HeadlessBrowser, server: &str) -> Value {
        let pkce = portcullis_tests::idp::Pkce::new();
        let resource = format!("{}/mcp/{server}", self.public_url);
        let mut url = url::Url::parse(&format!("{}/oauth/authorize", self.public_url)).unwrap();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", GATEWAY_CLIENT_REDIRECT_URI)
            .append_pair("code_challenge", &pkce.challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("resource", &resource)
            .append_pair("state", "e2e-state");
        let outcome = browser.authorize(url.as_str()).await.unwrap();
        let code = outcome
            .param("code")
            .unwrap_or_else(|| panic!("no code: {outcome:#?}"));
        self.token_request(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", GATEWAY_CLIENT_REDIRECT_URI),
            ("code_verifier", &pkce.verifier),
            ("client_id", &self.client_id),
            ("resource", &resource),
        ])
        .await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Value {
        self.token_request(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", &self.client_id),
        ])
        .await
    }
}

/// The headers echo-upstream received with an `echo_headers` call through a session opened
/// with the gateway's `access_token`.
async fn echoed_with_access_token(url: &str, access_token: &str) -> EchoedRequest {
    let authorization = format!("Bearer {access_token}");
    let text = portcullis_tests::mcp_http::call_tool_text(
        url,
        &[("Authorization", &authorization)],
        "echo_headers",
        json!({}),
    )
    .await
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn under_interactive_sso_the_users_idp_token_is_forwarded_and_exchanged_and_renewed_at_refresh()
 {
    const SEARCH_RESOURCE: &str = "https://search.portcullis.test";
    const DOWNSTREAM: &str = "https://downstream.portcullis.test";
    // The IdP's access tokens for the search resource live 2 minutes, less than the
    // gateway's (10 minutes): every gateway refresh renews the IdP's token.
    let mut outbound = Outbound::start(
        IdpConfig::default().scopes(&["search.read"]).resource(
            portcullis_tests::idp::IdpResource::new(SEARCH_RESOURCE, "search.read")
                .access_token_ttl(Duration::from_secs(120)),
        ),
    )
    .await;
    let public_url = format!("http://{}", outbound.gateway.node(0).address());
    let gateway_client = corp::gateway_client(&public_url);
    outbound.idp.upsert_client(&gateway_client).await.unwrap();
    outbound
        .gateway
        .admin
        .put_identity_provider(proto::PutIdentityProviderRequest {
            identity_provider: Some(proto::IdentityProvider {
                token_resource: SEARCH_RESOURCE.to_owned(),
                ..corp::registration(
                    outbound.idp.issuer(),
                    &["openid", "email", "groups", "search.read"],
                )
            }),
            expected_revision: None,
        })
        .await
        .unwrap();
    let exchange_url = outbound.token_endpoint().await;
    let interactive = proto::AgentAuth {
        mode: Some(proto::agent_auth::Mode::Interactive(
            proto::InteractiveSso {
                identity_provider: corp::ID.to_owned(),
                scopes: Vec::new(),
            },
        )),
        restricted_inbound_headers: Vec::new(),
    };
    outbound
        .create(
            "search",
            Some(interactive),
            vec![
                header(
                    "x-ms-query-source-authorization",
                    "Bearer ",
                    proto::outbound_header::Source::ForwardCallerToken(
                        proto::ForwardCallerToken {},
                    ),
                ),
                header(
                    "x-downstream-authorization",
                    "Bearer ",
                    proto::outbound_header::Source::OnBehalfOf(proto::OnBehalfOf {
                        exchange_url,
                        client_id: outbound.service_client.client_id.clone(),
                        client_secret: secret(
                            outbound.service_client.client_secret.as_deref().unwrap(),
                        ),
                        audience: DOWNSTREAM.to_owned(),
                        ..proto::OnBehalfOf::default()
                    }),
                ),
            ],
        )
        .await;

    let client = GatewayOAuthClient::register(&public_url).await;
    let browser = HeadlessBrowser::new().unwrap().user("alice");
    let tokens = client.sign_in(&browser, "search").await;
    let access_token = tokens["access_token"].as_str().unwrap().to_owned();
    // The gateway's token does not outlive the IdP's (2 minutes).
    assert!(tokens["expires_in"].as_i64().unwrap() <= 120, "{tokens}");
    // The client holds the IdP's token only sealed: not in clear in any token it got.
    let gateway_claims = jwt::claims_unverified(&access_token).unwrap();
    assert!(
        gateway_claims["idp_token"]
            .as_str()
            .unwrap()
            .starts_with("pci1.")
    );

    let url = outbound.mcp_url("search");
    let first = echoed_with_access_token(&url, &access_token).await;
    let forwarded = values(&first, "x-ms-query-source-authorization");
    assert_eq!(forwarded.len(), 1, "{first:?}");
    let idp_token = forwarded[0].strip_prefix("Bearer ").unwrap().to_owned();
    assert_ne!(
        idp_token, access_token,
        "the gateway's own token was forwarded"
    );
    for held in [&access_token, tokens["refresh_token"].as_str().unwrap()] {
        assert!(
            !held.contains(&idp_token),
            "the IdP token reached the client in clear"
        );
    }
    // The user's IdP token, issued by the IdP for the configured resource.
    let claims = outbound
        .idp
        .verify_jwt(&idp_token, Some(SEARCH_RESOURCE))
        .await
        .unwrap();
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(claims["client_id"], corp::CLIENT_ID, "{claims}");
    // On behalf of: that IdP token exchanged for the downstream audience.
    let exchanged = values(&first, "x-downstream-authorization")[0]
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned();
    let exchanged_claims = outbound
        .idp
        .verify_jwt(&exchanged, Some(DOWNSTREAM))
        .await
        .unwrap();
    assert_eq!(exchanged_claims["sub"], "alice");
    let requests = outbound.idp.recent_requests().await.unwrap();
    assert!(
        requests.authorization.iter().any(|request| {
            request.get("resource").and_then(Value::as_str) == Some(SEARCH_RESOURCE)
        }),
        "the login did not ask for the token resource: {requests:?}"
    );

    // The gateway refresh renews the IdP token at the IdP, once.
    outbound.idp.reset_stats().await.unwrap();
    let refreshed = client
        .refresh(tokens["refresh_token"].as_str().unwrap())
        .await;
    let stats = outbound.idp.stats().await.unwrap();
    assert_eq!(stats.token_requests("refresh_token"), 1, "{stats:?}");
    let second = echoed_with_access_token(&url, refreshed["access_token"].as_str().unwrap()).await;
    let renewed = values(&second, "x-ms-query-source-authorization")[0]
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned();
    assert_ne!(renewed, idp_token, "the IdP token was not renewed");
    let renewed_claims = outbound
        .idp
        .verify_jwt(&renewed, Some(SEARCH_RESOURCE))
        .await
        .unwrap();
    assert_eq!(renewed_claims["sub"], "alice");

    let log = outbound.node_log();
    assert!(
        log.contains("outbound_headers=\"x-ms-query-source-authorization:forward_caller_token,x-downstream-authorization:on_behalf_of\""),
        "{log}"
    );
    for token in [&idp_token, &renewed, &exchanged] {
        assert!(
            !log.contains(token.as_str()),
            "a token is in the node's log"
        );
    }
}

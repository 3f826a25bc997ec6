//! Interactive SSO through the node's router, without a real identity provider: metadata
//! documents, client registration, the authorize endpoint up to the identity provider's
//! door, the token and revocation endpoints (codes minted through the node's own sealing
//! code, single use through an in-process `NodeRuntime`), and validation of the gateway's
//! access tokens on `/mcp/{server}`. The whole flow with a real identity provider and real
//! MCP clients is in the `tests/` crate (`gateway_sso`).

use std::sync::Arc;

use axum::body::Body;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE, WWW_AUTHENTICATE};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use portcullis_data_plane::compiled::CompiledSnapshot;
use portcullis_data_plane::jwt::unix_now;
use portcullis_data_plane::oauth::grant::{AuthorizationCode, Grant, RefreshToken};
use portcullis_data_plane::oauth::{OAuthSettings, pkce_challenge, random_id};
use portcullis_data_plane::record::Outcome;
use portcullis_proto::v1 as proto;
use serde_json::{Value, json};

use crate::common::jwks::{TestKey, unsigned_token};
use crate::common::oauth::*;
use crate::common::upstream::TestUpstream;
use crate::common::{PUBLIC_URL, TestNode, compile, post, server, tool_call};
use crate::{bearer, passthrough};

const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";

fn settings() -> OAuthSettings {
    OAuthSettings {
        access_token_lifetime: std::time::Duration::from_secs(300),
        allow_loopback_client_metadata: true,
    }
}

/// The servers of these tests: `crm` (Interactive, scope `mcp:tools`), `billing`
/// (Interactive, no scopes), `open` (Passthrough). App auth is a Bearer token, so the
/// upstream would show if the caller's token were ever forwarded.
fn servers(upstream: &TestUpstream) -> Vec<proto::McpServer> {
    vec![
        interactive(
            server("crm", &upstream.url("/mcp"), bearer("app-token")),
            &[SCOPE],
        ),
        interactive(
            server("billing", &upstream.url("/mcp"), bearer("app-token")),
            &[],
        ),
        server("open", &upstream.url("/mcp"), passthrough()),
    ]
}

struct Fixture {
    node: TestNode,
    runtime: TestRuntime,
    upstream: TestUpstream,
}

impl Fixture {
    async fn start() -> Self {
        let upstream = TestUpstream::start().await;
        let runtime = TestRuntime::start().await;
        let node = TestNode::with_authorization_server(
            sso_snapshot(1, servers(&upstream), gateway_keys()),
            PUBLIC_URL,
            settings(),
            Some(runtime.client()),
        );
        Self {
            node,
            runtime,
            upstream,
        }
    }

    fn snapshot(&self) -> Arc<CompiledSnapshot> {
        self.node.state.snapshots.load().unwrap()
    }

    fn keys(&self) -> Arc<CompiledSnapshot> {
        self.snapshot()
    }

    /// Serves `snapshot` from now on (as discovery would after an update).
    fn apply(&self, snapshot: proto::Snapshot) {
        self.node.state.snapshots.store(compile(snapshot));
    }

    async fn register(&self, metadata: Value) -> (StatusCode, Value) {
        let response = self
            .node
            .send(
                Request::post("/oauth/register")
                    .header(CONTENT_TYPE, "application/json")
                    .body(Body::from(metadata.to_string()))
                    .unwrap(),
            )
            .await;
        let status = response.status();
        (status, json_of(response).await)
    }

    /// A registered public client.
    async fn public_client(&self) -> String {
        let (status, registration) = self
            .register(json!({
                "redirect_uris": [REDIRECT_URI],
                "token_endpoint_auth_method": "none",
                "client_name": "Test client",
            }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{registration}");
        registration["client_id"].as_str().unwrap().to_owned()
    }

    async fn token(&self, form: &[(&str, &str)]) -> (StatusCode, HeaderMap, Value) {
        self.form_post("/oauth/token", form, &[]).await
    }

    async fn form_post(
        &self,
        path: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Value) {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut request = Request::post(path)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("host", "gateway.test:7400");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self
            .node
            .send(request.body(Body::from(body)).unwrap())
            .await;
        let status = response.status();
        let headers = response.headers().clone();
        (status, headers, json_of(response).await)
    }

    /// A tools/call to `server` with `authorization` (if any).
    async fn call(&self, server: &str, authorization: Option<&str>) -> http::Response<Body> {
        let headers: Vec<(&str, &str)> = authorization
            .map(|value| vec![("authorization", value)])
            .unwrap_or_default();
        self.node
            .send(post(server, &tool_call(1, "lookup"), &headers))
            .await
    }

    /// A code for `grant`, as the callback would mint it, with a PKCE verifier.
    fn code(&self, grant: Grant) -> (String, String, AuthorizationCode) {
        let verifier = format!("{}{}", random_id(), random_id());
        let code =
            AuthorizationCode::new(grant, REDIRECT_URI.to_owned(), pkce_challenge(&verifier));
        let sealed = code.seal(&self.keys().gateway_keys, unix_now()).unwrap();
        (sealed, verifier, code)
    }

    async fn redeem(&self, client_id: &str, code: &str, verifier: &str) -> (StatusCode, Value) {
        let (status, _, body) = self
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", verifier),
                ("client_id", client_id),
                ("resource", &resource("crm")),
            ])
            .await;
        (status, body)
    }
}

async fn json_of(response: http::Response<Body>) -> Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

async fn text_of(response: http::Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header("host", "gateway.test:7400")
        .body(Body::empty())
        .unwrap()
}

fn bearer_header(token: &str) -> String {
    format!("Bearer {token}")
}

const CHALLENGE_CRM: &str = "resource_metadata=\"http://gateway.test:7400/.well-known/oauth-protected-resource/mcp/crm\", scope=\"mcp:tools\"";

mod metadata {
    use super::*;

    #[tokio::test]
    async fn the_authorization_server_metadata_lists_its_endpoints_and_rules() {
        let fixture = Fixture::start().await;
        for path in [
            "/.well-known/oauth-authorization-server",
            "/.well-known/openid-configuration",
        ] {
            let response = fixture.node.send(get(path)).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(response.headers()["access-control-allow-origin"], "*");
            let document = json_of(response).await;
            assert_eq!(
                document,
                json!({
                    "issuer": PUBLIC_URL,
                    "authorization_endpoint": format!("{PUBLIC_URL}/oauth/authorize"),
                    "token_endpoint": format!("{PUBLIC_URL}/oauth/token"),
                    "registration_endpoint": format!("{PUBLIC_URL}/oauth/register"),
                    "revocation_endpoint": format!("{PUBLIC_URL}/oauth/revoke"),
                    "jwks_uri": format!("{PUBLIC_URL}/oauth/jwks"),
                    "scopes_supported": [SCOPE],
                    "response_types_supported": ["code"],
                    "response_modes_supported": ["query"],
                    "grant_types_supported": ["authorization_code", "refresh_token"],
                    "code_challenge_methods_supported": ["S256"],
                    "token_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
                    "revocation_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
                    "client_id_metadata_document_supported": true,
                    "authorization_response_iss_parameter_supported": true,
                }),
                "{path}"
            );
        }
        // A path-suffixed form only for the issuer's own path (it has none here).
        let other = fixture
            .node
            .send(get("/.well-known/oauth-authorization-server/tenant"))
            .await;
        assert_eq!(other.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn each_interactive_server_has_protected_resource_metadata() {
        let fixture = Fixture::start().await;
        let expected = json!({
            "resource": resource("crm"),
            "authorization_servers": [PUBLIC_URL],
            "scopes_supported": [SCOPE],
            "bearer_methods_supported": ["header"],
            "resource_name": "crm",
        });
        for path in [
            "/.well-known/oauth-protected-resource/mcp/crm",
            "/mcp/crm/.well-known/oauth-protected-resource",
        ] {
            let response = fixture.node.send(get(path)).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(
                response.headers()[CONTENT_TYPE],
                "application/json",
                "{path}"
            );
            assert_eq!(json_of(response).await, expected, "{path}");
        }
        // Passthrough servers, unknown servers, and the root form with two Interactive
        // servers (ambiguous) have none.
        for path in [
            "/.well-known/oauth-protected-resource/mcp/open",
            "/.well-known/oauth-protected-resource/mcp/nope",
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resource/other/crm",
        ] {
            let response = fixture.node.send(get(path)).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        }
        // With one Interactive server the root form names it.
        let upstream = TestUpstream::start().await;
        let mut only_crm = servers(&upstream);
        only_crm.remove(1);
        fixture.apply(sso_snapshot(2, only_crm, gateway_keys()));
        let response = fixture
            .node
            .send(get("/.well-known/oauth-protected-resource"))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(json_of(response).await, expected);
    }

    #[tokio::test]
    async fn the_jwks_publishes_every_signing_key_and_nothing_private() {
        let fixture = Fixture::start().await;
        let mut keys = gateway_keys();
        keys.signing_keys[0].state = proto::GatewayKeyState::VerifyOnly as i32;
        keys.signing_keys
            .push(signing_key("sig-2", proto::GatewayKeyState::Active));
        let upstream = TestUpstream::start().await;
        fixture.apply(sso_snapshot(2, servers(&upstream), keys));
        let response = fixture.node.send(get("/oauth/jwks")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let jwks = json_of(response).await;
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|key| key["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, ["sig-1", "sig-2"]);
        for key in jwks["keys"].as_array().unwrap() {
            assert_eq!(key["alg"], "ES256");
            assert!(key.get("d").is_none(), "{key}");
        }
    }
}

mod registration {
    use super::*;

    #[tokio::test]
    async fn dynamic_registration_issues_sealed_clients_and_refuses_bad_metadata() {
        let fixture = Fixture::start().await;
        let (status, registration) = fixture
            .register(json!({
                "redirect_uris": ["https://app.example.com/cb", "http://localhost:3000/cb"],
                "client_name": "Example",
            }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{registration}");
        assert!(
            registration["client_id"]
                .as_str()
                .unwrap()
                .starts_with("pcc1.")
        );
        // No method named: client_secret_basic, with a secret derived from the id.
        assert_eq!(
            registration["token_endpoint_auth_method"],
            "client_secret_basic"
        );
        assert!(registration["client_secret"].as_str().unwrap().len() >= 40);

        for (metadata, error) in [
            (json!({}), "invalid_redirect_uri"),
            (
                json!({"redirect_uris": ["http://app.example.com/cb"]}),
                "invalid_redirect_uri",
            ),
            (
                json!({"redirect_uris": ["javascript:alert(1)"]}),
                "invalid_redirect_uri",
            ),
            (
                json!({"redirect_uris": ["https://a.example/cb"], "grant_types": ["implicit"]}),
                "invalid_client_metadata",
            ),
            (
                json!({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "private_key_jwt"}),
                "invalid_client_metadata",
            ),
        ] {
            let (status, body) = fixture.register(metadata.clone()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{metadata}");
            assert_eq!(body["error"], error, "{metadata}: {body}");
        }
        let not_json = fixture
            .node
            .send(
                Request::post("/oauth/register")
                    .header(CONTENT_TYPE, "text/plain")
                    .body(Body::from("{}"))
                    .unwrap(),
            )
            .await;
        assert_eq!(not_json.status(), StatusCode::BAD_REQUEST);
        let oversized = fixture
            .node
            .send(
                Request::post("/oauth/register")
                    .header(CONTENT_TYPE, "application/json")
                    .body(Body::from(format!(
                        "{{\"client_name\": \"{}\"}}",
                        "x".repeat(20_000)
                    )))
                    .unwrap(),
            )
            .await;
        assert_eq!(oversized.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}

mod resource_server {
    use super::*;

    #[tokio::test]
    async fn callers_without_a_valid_token_get_a_challenge_naming_the_metadata() {
        let mut fixture = Fixture::start().await;
        let response = fixture.call("crm", None).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            format!("Bearer {CHALLENGE_CRM}").as_str()
        );
        let body = json_of(response).await;
        assert_eq!(body["error"]["data"]["reason"], "missing_token");
        let record = fixture.node.next_record().await;
        assert_eq!(record.agent_auth_rejection, Some("missing_token"));

        let response = fixture.call("crm", Some("Bearer not-a-token")).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = response.headers()[WWW_AUTHENTICATE].to_str().unwrap();
        assert!(
            challenge.starts_with(
                "Bearer error=\"invalid_token\", error_description=\"malformed token: "
            ),
            "{challenge}"
        );
        assert!(challenge.ends_with(CHALLENGE_CRM), "{challenge}");
        // A server without scopes challenges without a scope.
        let response = fixture.call("billing", None).await;
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            "Bearer resource_metadata=\"http://gateway.test:7400/.well-known/oauth-protected-resource/mcp/billing\""
        );
        assert!(fixture.upstream.received_nothing());
    }

    #[tokio::test]
    async fn a_valid_token_reaches_the_upstream_as_its_user_and_is_not_forwarded() {
        let mut fixture = Fixture::start().await;
        let grant = grant("alice", "crm", "client-1");
        let token = access_token(&fixture.keys().gateway_keys, &grant, unix_now(), 300);
        let response = fixture.call("crm", Some(&bearer_header(&token))).await;
        assert_eq!(response.status(), StatusCode::OK);
        json_of(response).await;
        let received = fixture.upstream.next_request().await;
        // App auth's credential, not the caller's token.
        assert_eq!(received.headers["authorization"], "Bearer app-token");
        let record = fixture.node.next_record().await;
        assert_eq!(record.caller, "alice");
        assert!(record.caller_verified);
        assert_eq!(record.outcome, Outcome::Completed);
    }

    #[tokio::test]
    async fn a_token_without_the_servers_scopes_gets_403_insufficient_scope() {
        let mut fixture = Fixture::start().await;
        let mut grant = grant("alice", "crm", "client-1");
        grant.scopes.clear();
        let token = access_token(&fixture.keys().gateway_keys, &grant, unix_now(), 300);
        let response = fixture.call("crm", Some(&bearer_header(&token))).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            format!(
                "Bearer error=\"insufficient_scope\", error_description=\"the token lacks a scope this server requires\", {CHALLENGE_CRM}"
            )
            .as_str()
        );
        assert_eq!(
            json_of(response).await["error"]["data"]["reason"],
            "insufficient_scope"
        );
        let record = fixture.node.next_record().await;
        assert_eq!(record.agent_auth_rejection, Some("insufficient_scope"));
        assert!(fixture.upstream.received_nothing());
    }

    /// The reason a refused token gets on `server`.
    async fn reason(fixture: &Fixture, server: &str, token: &str) -> (StatusCode, Value) {
        let response = fixture.call(server, Some(&bearer_header(token))).await;
        let status = response.status();
        (
            status,
            json_of(response).await["error"]["data"]["reason"].clone(),
        )
    }

    #[tokio::test]
    async fn tokens_for_another_server_or_gateway_and_forged_tokens_are_refused() {
        let fixture = Fixture::start().await;
        let keys = fixture.keys();
        let now = unix_now();
        let crm = grant("alice", "crm", "client-1");
        let for_crm = access_token(&keys.gateway_keys, &crm, now, 300);
        let unauthorized = |reason: &str| (StatusCode::UNAUTHORIZED, json!(reason));

        // Audience: a token for crm is refused on billing.
        assert_eq!(
            reason(&fixture, "billing", &for_crm).await,
            unauthorized("wrong_audience")
        );
        // Expired (past the leeway), not yet valid.
        let expired = access_token(&keys.gateway_keys, &crm, now - 1_000, 300);
        assert_eq!(
            reason(&fixture, "crm", &expired).await,
            unauthorized("expired")
        );
        let mut early = claims_of(&for_crm);
        early["nbf"] = json!(now + 3_600);
        let early = keys.gateway_keys.sign_access_token(&early).unwrap();
        assert_eq!(
            reason(&fixture, "crm", &early).await,
            unauthorized("not_yet_valid")
        );
        // Another gateway's keys under the same kid: the signature fails.
        let other = compile(sso_snapshot(1, Vec::new(), gateway_keys())).gateway_keys;
        let forged = access_token(&other, &crm, now, 300);
        assert_eq!(
            reason(&fixture, "crm", &forged).await,
            unauthorized("bad_signature")
        );
        // Another issuer with the right keys.
        let mut elsewhere = claims_of(&for_crm);
        elsewhere["iss"] = json!("https://other-gateway.example.com");
        let elsewhere = keys.gateway_keys.sign_access_token(&elsewhere).unwrap();
        assert_eq!(
            reason(&fixture, "crm", &elsewhere).await,
            unauthorized("wrong_issuer")
        );
        // alg none, an unknown kid, a JWT without typ at+jwt (e.g. an ID token), garbage.
        let claims = claims_of(&for_crm);
        assert_eq!(
            reason(&fixture, "crm", &unsigned_token("sig-1", &claims)).await,
            unauthorized("unsupported_algorithm")
        );
        let stranger = TestKey::ec_p256("sig-9");
        let unknown_kid = stranger.sign_with_header(
            &json!({"alg": "ES256", "kid": "sig-9", "typ": "at+jwt"}),
            &claims,
        );
        assert_eq!(
            reason(&fixture, "crm", &unknown_kid).await,
            unauthorized("unknown_key_id")
        );
        let id_token = stranger.sign_with_header(&json!({"alg": "ES256", "kid": "sig-1"}), &claims);
        assert_eq!(
            reason(&fixture, "crm", &id_token).await,
            unauthorized("not_an_access_token")
        );
        assert_eq!(
            reason(&fixture, "crm", "e30.e30.e30").await,
            unauthorized("malformed_token")
        );
        // And the genuine one passes.
        assert_eq!(reason(&fixture, "crm", &for_crm).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn revocations_arriving_by_snapshot_refuse_tokens_at_once() {
        let fixture = Fixture::start().await;
        let keys = fixture.keys();
        let now = unix_now();
        let alice = grant("alice", "crm", "client-1");
        let bob = grant("bob", "crm", "client-1");
        let alice_token = access_token(&keys.gateway_keys, &alice, now - 5, 300);
        let bob_token = access_token(&keys.gateway_keys, &bob, now - 5, 300);
        assert_eq!(
            reason(&fixture, "crm", &alice_token).await.0,
            StatusCode::OK
        );
        assert_eq!(reason(&fixture, "crm", &bob_token).await.0, StatusCode::OK);

        // Alice's grant is revoked; bob is signed out everywhere.
        let mut snapshot = sso_snapshot(2, servers(&fixture.upstream), gateway_keys());
        snapshot.gateway_keys = Some(keys_proto(&fixture));
        snapshot.revoked_grants = vec![proto::RevokedGrant {
            grant_id: alice.grant_id.clone(),
            expires_at_unix: now + 86_400,
        }];
        snapshot.revoked_users = vec![proto::RevokedUser {
            identity_provider: IDP_ID.to_owned(),
            subject: "bob".to_owned(),
            revoked_at_unix: now,
        }];
        fixture.apply(snapshot);
        let revoked = (StatusCode::UNAUTHORIZED, json!("revoked"));
        assert_eq!(reason(&fixture, "crm", &alice_token).await, revoked);
        assert_eq!(reason(&fixture, "crm", &bob_token).await, revoked);
        // Bob's next login (a token issued after the revocation) works.
        let later = access_token(&fixture.keys().gateway_keys, &bob, now + 1, 300);
        assert_eq!(reason(&fixture, "crm", &later).await.0, StatusCode::OK);
    }

    /// The proto form of the fixture's current gateway keys, so a new snapshot keeps them.
    fn keys_proto(fixture: &Fixture) -> proto::GatewayKeys {
        proto::Snapshot::from(&fixture.snapshot().source)
            .gateway_keys
            .unwrap()
    }
}

mod token_endpoint {
    use super::*;

    #[tokio::test]
    async fn a_code_is_redeemed_once_with_pkce_and_its_reuse_revokes_the_grant() {
        let fixture = Fixture::start().await;
        let client_id = fixture.public_client().await;
        let (code, verifier, minted) = fixture.code(grant("alice", "crm", &client_id));

        // Wrong verifier, redirect URI, resource or client: refused, and the code stays unused.
        let (status, body) = fixture.redeem(&client_id, &code, &"x".repeat(43)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"))
        );
        for (name, value, error) in [
            ("redirect_uri", "http://127.0.0.1:9/other", "invalid_grant"),
            ("resource", resource("billing").as_str(), "invalid_target"),
        ] {
            let mut form = vec![
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", verifier.as_str()),
                ("client_id", client_id.as_str()),
            ];
            form.retain(|(key, _)| *key != name);
            form.push((name, value));
            let (status, _, body) = fixture.token(&form).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
            assert_eq!(body["error"], error, "{name}: {body}");
        }
        let other_client = fixture.public_client().await;
        let (status, body) = fixture.redeem(&other_client, &code, &verifier).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"))
        );
        assert!(!fixture.runtime.consumed("authorization_code", &minted.jti));

        // The right redemption.
        let (status, headers, tokens) = fixture
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", &verifier),
                ("client_id", &client_id),
                ("resource", &resource("crm")),
            ])
            .await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        assert_eq!(headers[CACHE_CONTROL], "no-store");
        assert_eq!(tokens["token_type"], "Bearer");
        assert_eq!(tokens["expires_in"], 300);
        assert_eq!(tokens["scope"], SCOPE);
        assert!(
            tokens["refresh_token"]
                .as_str()
                .unwrap()
                .starts_with("pcr1.")
        );
        let access = tokens["access_token"].as_str().unwrap();
        let claims = claims_of(access);
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["aud"], resource("crm"));
        assert_eq!(claims["client_id"], client_id);
        assert_eq!(claims["sid"], minted.grant.grant_id);
        assert_eq!(claims["idp"], IDP_ID);
        let response = fixture.call("crm", Some(&bearer_header(access))).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(fixture.runtime.consumed("authorization_code", &minted.jti));

        // Again: refused, and the grant it produced is revoked fleet-wide.
        let (status, body) = fixture.redeem(&client_id, &code, &verifier).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"))
        );
        let revoked = fixture.runtime.revoked();
        assert_eq!(revoked.len(), 1);
        assert_eq!(revoked[0].0, minted.grant.grant_id);
        assert_eq!(revoked[0].1, minted.grant.expires_at_unix);
        assert_eq!(revoked[0].2, "authorization_code_reuse");
    }

    #[tokio::test]
    async fn refresh_tokens_rotate_and_a_reused_one_revokes_the_grant() {
        let fixture = Fixture::start().await;
        let client_id = fixture.public_client().await;
        let (code, verifier, minted) = fixture.code(grant("bob", "crm", &client_id));
        let (status, first) = fixture.redeem(&client_id, &code, &verifier).await;
        assert_eq!(status, StatusCode::OK, "{first}");
        let first_refresh = first["refresh_token"].as_str().unwrap();

        let refresh = |token: String, client: String| {
            let fixture = &fixture;
            async move {
                fixture
                    .token(&[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", &token),
                        ("client_id", &client),
                    ])
                    .await
            }
        };
        let (status, headers, second) = refresh(first_refresh.to_owned(), client_id.clone()).await;
        assert_eq!(status, StatusCode::OK, "{second}");
        assert_eq!(headers[CACHE_CONTROL], "no-store");
        let second_refresh = second["refresh_token"].as_str().unwrap();
        assert_ne!(second_refresh, first_refresh);
        assert_eq!(
            claims_of(second["access_token"].as_str().unwrap())["sid"],
            minted.grant.grant_id
        );
        // Narrowing scopes is allowed, widening is not; another client cannot use it.
        let (status, _, wider) = fixture
            .token(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", second_refresh),
                ("client_id", &client_id),
                ("scope", "mcp:tools admin"),
            ])
            .await;
        assert_eq!(
            (status, wider["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_scope"))
        );
        let stranger = fixture.public_client().await;
        let (status, _, stolen) = refresh(second_refresh.to_owned(), stranger).await;
        assert_eq!(
            (status, stolen["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"))
        );
        assert!(fixture.runtime.revoked().is_empty());

        // The first refresh token again: reuse, the grant is revoked.
        let (status, _, reused) = refresh(first_refresh.to_owned(), client_id.clone()).await;
        assert_eq!(
            (status, reused["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"))
        );
        assert_eq!(
            fixture.runtime.revoked(),
            [(
                minted.grant.grant_id.clone(),
                minted.grant.expires_at_unix,
                "refresh_token_reuse".to_owned()
            )]
        );
        // Once the revocation arrives by snapshot, the newest refresh token is refused too.
        let mut snapshot = proto::Snapshot::from(&fixture.snapshot().source);
        snapshot.version = 2;
        snapshot.revoked_grants = vec![proto::RevokedGrant {
            grant_id: minted.grant.grant_id.clone(),
            expires_at_unix: minted.grant.expires_at_unix,
        }];
        fixture.apply(snapshot);
        let (status, _, refused) = refresh(second_refresh.to_owned(), client_id.clone()).await;
        assert_eq!(
            (status, refused["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"))
        );
        let response = fixture
            .call(
                "crm",
                Some(&bearer_header(second["access_token"].as_str().unwrap())),
            )
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn without_the_control_plane_nothing_is_redeemed_and_the_answer_is_503() {
        let fixture = Fixture::start().await;
        let client_id = fixture.public_client().await;
        let (code, verifier, minted) = fixture.code(grant("alice", "crm", &client_id));
        fixture.runtime.set_unavailable(true);
        let (status, body) = fixture.redeem(&client_id, &code, &verifier).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"], "temporarily_unavailable");
        // Back: the code was not used by the failed attempt.
        fixture.runtime.set_unavailable(false);
        let (status, body) = fixture.redeem(&client_id, &code, &verifier).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(fixture.runtime.consumed("authorization_code", &minted.jti));

        // A node with no control plane at all never redeems either.
        let upstream = TestUpstream::start().await;
        let alone = TestNode::with_authorization_server(
            sso_snapshot(
                1,
                servers(&upstream),
                proto::Snapshot::from(&fixture.snapshot().source)
                    .gateway_keys
                    .unwrap(),
            ),
            PUBLIC_URL,
            settings(),
            None,
        );
        let (code, verifier, _) = fixture.code(grant("alice", "crm", &client_id));
        let response = alone
            .send(
                Request::post("/oauth/token")
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Body::from(
                        url::form_urlencoded::Serializer::new(String::new())
                            .extend_pairs([
                                ("grant_type", "authorization_code"),
                                ("code", code.as_str()),
                                ("code_verifier", verifier.as_str()),
                                ("client_id", client_id.as_str()),
                            ])
                            .finish(),
                    ))
                    .unwrap(),
            )
            .await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn confidential_clients_authenticate_with_their_derived_secret() {
        let fixture = Fixture::start().await;
        let (_, registration) = fixture
            .register(json!({"redirect_uris": [REDIRECT_URI], "token_endpoint_auth_method": "client_secret_post"}))
            .await;
        let client_id = registration["client_id"].as_str().unwrap();
        let secret = registration["client_secret"].as_str().unwrap();
        let (code, verifier, _) = fixture.code(grant("alice", "crm", client_id));
        let form = |secret: Option<&'static str>| {
            let mut form = vec![
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", verifier.as_str()),
                ("client_id", client_id),
            ];
            if let Some(secret) = secret {
                form.push(("client_secret", secret));
            }
            form
        };
        for wrong in [None, Some("guess")] {
            let (status, _, body) = fixture.token(&form(wrong)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
            assert_eq!(body["error"], "invalid_client");
        }
        // Basic with the wrong secret: 401 with a Basic challenge.
        let basic = format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{client_id}:nope")
            )
        );
        let (status, headers, _) = fixture
            .form_post(
                "/oauth/token",
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("code_verifier", &verifier),
                ],
                &[("authorization", &basic)],
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            headers[WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("Basic")
        );
        let mut with_secret = form(None);
        with_secret.push(("client_secret", secret));
        let (status, _, body) = fixture.token(&with_secret).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    #[tokio::test]
    async fn bad_token_requests_get_clear_oauth_errors() {
        let fixture = Fixture::start().await;
        let client_id = fixture.public_client().await;
        let keys = fixture.keys();
        // A code that expired (sealed 61 s ago).
        let verifier = format!("{}{}", random_id(), random_id());
        let stale = AuthorizationCode::new(
            grant("alice", "crm", &client_id),
            REDIRECT_URI.to_owned(),
            pkce_challenge(&verifier),
        )
        .seal(&keys.gateway_keys, unix_now() - 61)
        .unwrap();
        let (status, body) = fixture.redeem(&client_id, &stale, &verifier).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"))
        );
        // A refresh token presented as a code, and the reverse.
        let refresh = RefreshToken::new(grant("alice", "crm", &client_id))
            .seal(&keys.gateway_keys)
            .unwrap();
        let (status, body) = fixture.redeem(&client_id, &refresh, &verifier).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"))
        );
        for (form, status, error) in [
            (
                vec![
                    ("grant_type", "password"),
                    ("client_id", client_id.as_str()),
                ],
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
            ),
            (
                vec![("client_id", client_id.as_str())],
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                vec![("grant_type", "authorization_code")],
                StatusCode::UNAUTHORIZED,
                "invalid_client",
            ),
            (
                vec![
                    ("grant_type", "authorization_code"),
                    ("client_id", client_id.as_str()),
                ],
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                vec![("grant_type", "refresh_token"), ("client_id", "unknown")],
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", "pcr1.garbage"),
                    ("client_id", client_id.as_str()),
                ],
                StatusCode::BAD_REQUEST,
                "invalid_grant",
            ),
            (
                vec![
                    ("grant_type", "authorization_code"),
                    ("grant_type", "refresh_token"),
                ],
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
        ] {
            let (got, headers, body) = fixture.token(&form).await;
            assert_eq!(
                (got, body["error"].as_str()),
                (status, Some(error)),
                "{form:?}: {body}"
            );
            assert_eq!(headers[CACHE_CONTROL], "no-store");
            assert!(body["error_description"].is_string());
        }
        let json_body = fixture
            .node
            .send(
                Request::post("/oauth/token")
                    .header(CONTENT_TYPE, "application/json")
                    .body(Body::from("{}"))
                    .unwrap(),
            )
            .await;
        assert_eq!(json_body.status(), StatusCode::BAD_REQUEST);
        assert_eq!(json_of(json_body).await["error"], "invalid_request");
    }

    #[tokio::test]
    async fn signing_a_user_out_ends_the_grants_issued_until_then_only() {
        let fixture = Fixture::start().await;
        let client_id = fixture.public_client().await;
        let now = unix_now();
        // Both logins rode on an identity-provider session from long ago.
        let mut before = grant("alice", "crm", &client_id);
        before.user.auth_time = now - 10_000;
        before.issued_at_unix = now - 100;
        let mut after = before.clone();
        after.grant_id = random_id();
        after.issued_at_unix = now;
        let mut snapshot = proto::Snapshot::from(&fixture.snapshot().source);
        snapshot.version = 2;
        snapshot.revoked_users = vec![proto::RevokedUser {
            identity_provider: IDP_ID.to_owned(),
            subject: "alice".to_owned(),
            revoked_at_unix: now - 50,
        }];
        fixture.apply(snapshot);
        let (code, verifier, _) = fixture.code(before);
        let (status, body) = fixture.redeem(&client_id, &code, &verifier).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant"))
        );
        let (code, verifier, _) = fixture.code(after);
        let (status, body) = fixture.redeem(&client_id, &code, &verifier).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    #[tokio::test]
    async fn revoking_a_refresh_token_revokes_its_grant() {
        let fixture = Fixture::start().await;
        let client_id = fixture.public_client().await;
        let (code, verifier, minted) = fixture.code(grant("alice", "crm", &client_id));
        let (_, tokens) = fixture.redeem(&client_id, &code, &verifier).await;
        let (status, headers, _) = fixture
            .form_post(
                "/oauth/revoke",
                &[
                    ("token", tokens["refresh_token"].as_str().unwrap()),
                    ("client_id", &client_id),
                ],
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CACHE_CONTROL], "no-store");
        assert_eq!(
            fixture.runtime.revoked(),
            [(
                minted.grant.grant_id.clone(),
                minted.grant.expires_at_unix,
                "logout".to_owned()
            )]
        );
        // Unknown tokens get 200 and revoke nothing (RFC 7009 section 2.2).
        let (status, _, _) = fixture
            .form_post(
                "/oauth/revoke",
                &[("token", "whatever"), ("client_id", &client_id)],
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(fixture.runtime.revoked().len(), 1);
    }
}

mod authorize {
    use super::*;

    /// An authorize URL for `client_id` with everything right, then `changes` applied
    /// (`None` removes a parameter).
    fn authorize_url(client_id: &str, changes: &[(&str, Option<&str>)]) -> String {
        let challenge = pkce_challenge(&"v".repeat(43));
        let resource = resource("crm");
        let mut parameters: Vec<(&str, Option<&str>)> = vec![
            ("response_type", Some("code")),
            ("client_id", Some(client_id)),
            ("redirect_uri", Some(REDIRECT_URI)),
            ("code_challenge", Some(&challenge)),
            ("code_challenge_method", Some("S256")),
            ("resource", Some(&resource)),
            ("state", Some("state-1")),
        ];
        for (name, value) in changes {
            parameters.retain(|(key, _)| key != name);
            parameters.push((name, *value));
        }
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                parameters
                    .iter()
                    .filter_map(|(name, value)| value.map(|value| (*name, value))),
            )
            .finish();
        format!("/oauth/authorize?{query}")
    }

    fn redirect_parameters(response: &http::Response<Body>) -> Vec<(String, String)> {
        let location = response
            .headers()
            .get(LOCATION)
            .unwrap_or_else(|| panic!("no redirect: {}", response.status()))
            .to_str()
            .unwrap();
        assert!(location.starts_with(REDIRECT_URI), "{location}");
        url::Url::parse(location)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect()
    }

    #[tokio::test]
    async fn errors_before_the_redirect_uri_is_trusted_are_pages_not_redirects() {
        let fixture = Fixture::start().await;
        let client_id = fixture.public_client().await;
        for (url, message) in [
            (
                authorize_url("", &[("client_id", None)]),
                "missing client_id",
            ),
            (
                authorize_url("pcc1.forged", &[]),
                "not a client_id of this gateway",
            ),
            (
                authorize_url("someone-else", &[]),
                "not a client_id of this gateway",
            ),
            (
                authorize_url(
                    &client_id,
                    &[("redirect_uri", Some("https://evil.example/cb"))],
                ),
                "not one the client registered",
            ),
        ] {
            let response = fixture.node.send(get(&url)).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{url}");
            assert!(response.headers().get(LOCATION).is_none());
            assert_eq!(response.headers()["x-frame-options"], "DENY");
            let page = text_of(response).await;
            assert!(page.contains(message), "{url}: {page}");
        }
    }

    #[tokio::test]
    async fn errors_after_it_go_back_to_the_client_with_state_and_iss() {
        let fixture = Fixture::start().await;
        let client_id = fixture.public_client().await;
        let open_resource = resource("open");
        for (changes, error) in [
            (vec![("code_challenge", None)], "invalid_request"),
            (vec![("code_challenge_method", None)], "invalid_request"),
            (
                vec![("code_challenge_method", Some("plain"))],
                "invalid_request",
            ),
            (
                vec![("code_challenge", Some("too-short"))],
                "invalid_request",
            ),
            (
                vec![("response_type", Some("token"))],
                "unsupported_response_type",
            ),
            (vec![("resource", None)], "invalid_target"),
            (
                vec![("resource", Some(open_resource.as_str()))],
                "invalid_target",
            ),
            (
                vec![("resource", Some("https://elsewhere.example/mcp/crm"))],
                "invalid_target",
            ),
            (vec![("scope", Some("admin"))], "invalid_scope"),
        ] {
            let response = fixture
                .node
                .send(get(&authorize_url(&client_id, &changes)))
                .await;
            assert_eq!(response.status(), StatusCode::FOUND, "{changes:?}");
            let parameters = redirect_parameters(&response);
            assert_eq!(
                parameters[0],
                ("error".to_owned(), error.to_owned()),
                "{changes:?}"
            );
            assert!(parameters.contains(&("state".to_owned(), "state-1".to_owned())));
            assert!(parameters.contains(&("iss".to_owned(), PUBLIC_URL.to_owned())));
        }
    }

    #[tokio::test]
    async fn a_new_client_gets_a_consent_page_that_cannot_be_framed() {
        let fixture = Fixture::start().await;
        let (_, registration) = fixture
            .register(json!({
                "redirect_uris": [REDIRECT_URI],
                "token_endpoint_auth_method": "none",
                "client_name": "<b>Evil</b> Corp",
            }))
            .await;
        let client_id = registration["client_id"].as_str().unwrap();
        let response = fixture.node.send(get(&authorize_url(client_id, &[]))).await;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers().clone();
        assert_eq!(headers["x-frame-options"], "DENY");
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("frame-ancestors 'none'")
        );
        assert_eq!(headers[CACHE_CONTROL], "no-store");
        let cookie = headers[SET_COOKIE].to_str().unwrap();
        assert!(cookie.starts_with("portcullis-browser="), "{cookie}");
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
            "{cookie}"
        );
        let page = text_of(response).await;
        assert!(page.contains("&lt;b&gt;Evil&lt;/b&gt; Corp"), "{page}");
        assert!(!page.contains("<b>Evil"));
        assert!(page.contains(REDIRECT_URI));
        assert!(page.contains(&resource("crm")));
        assert!(page.contains("name=\"decision\" value=\"approve\""));
        assert!(page.contains("name=\"decision\" value=\"deny\""));
        assert!(page.contains(&format!("action=\"{PUBLIC_URL}/oauth/authorize\"")));
    }

    /// The consent page's sealed request and the browser cookie it set.
    async fn consent_page(fixture: &Fixture, client_id: &str) -> (String, String) {
        let response = fixture.node.send(get(&authorize_url(client_id, &[]))).await;
        let cookie = response.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let page = text_of(response).await;
        let start = page.find("name=\"consent_request\" value=\"").unwrap() + 30;
        let end = start + page[start..].find('"').unwrap();
        (page[start..end].to_owned(), cookie)
    }

    #[tokio::test]
    async fn the_consent_form_is_bound_to_its_browser_and_origin() {
        let fixture = Fixture::start().await;
        let client_id = fixture.public_client().await;
        let (request, cookie) = consent_page(&fixture, &client_id).await;
        let decide = |decision: &str, headers: Vec<(&'static str, String)>| {
            let form = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs([
                    ("consent_request", request.as_str()),
                    ("decision", decision),
                ])
                .finish();
            let mut builder = Request::post("/oauth/authorize")
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
            for (name, value) in headers {
                builder = builder.header(name, value);
            }
            builder.body(Body::from(form)).unwrap()
        };
        // Another site posting the form, or another browser: refused with a page.
        let cross_site = fixture
            .node
            .send(decide(
                "approve",
                vec![
                    (COOKIE.as_str(), cookie.clone()),
                    ("origin", "https://evil.example".to_owned()),
                ],
            ))
            .await;
        assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);
        assert!(cross_site.headers().get(LOCATION).is_none());
        let other_browser = fixture
            .node
            .send(decide(
                "approve",
                vec![(
                    COOKIE.as_str(),
                    "portcullis-browser=someone-elses-cookie-value".to_owned(),
                )],
            ))
            .await;
        assert_eq!(other_browser.status(), StatusCode::FORBIDDEN);
        let no_cookie = fixture.node.send(decide("approve", Vec::new())).await;
        assert_eq!(no_cookie.status(), StatusCode::FORBIDDEN);
        // A forged request: a page too.
        let forged = fixture
            .node
            .send(
                Request::post("/oauth/authorize")
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header(COOKIE, &cookie)
                    .body(Body::from("consent_request=pcq1.forged&decision=approve"))
                    .unwrap(),
            )
            .await;
        assert_eq!(forged.status(), StatusCode::BAD_REQUEST);
        // Deny, from the same browser and site: back to the client.
        let denied = fixture
            .node
            .send(decide(
                "deny",
                vec![
                    (COOKIE.as_str(), cookie.clone()),
                    ("origin", PUBLIC_URL.to_owned()),
                ],
            ))
            .await;
        assert_eq!(denied.status(), StatusCode::SEE_OTHER);
        let parameters = redirect_parameters(&denied);
        assert_eq!(
            parameters[0],
            ("error".to_owned(), "access_denied".to_owned())
        );
        assert!(parameters.contains(&("state".to_owned(), "state-1".to_owned())));
        assert!(parameters.contains(&("iss".to_owned(), PUBLIC_URL.to_owned())));
    }

    #[tokio::test]
    async fn over_https_cookies_get_the_host_prefix() {
        let upstream = TestUpstream::start().await;
        let node = TestNode::with_authorization_server(
            sso_snapshot(1, servers(&upstream), gateway_keys()),
            "https://gateway.test",
            settings(),
            None,
        );
        let registration = node
            .send(
                Request::post("/oauth/register")
                    .header(CONTENT_TYPE, "application/json")
                    .body(Body::from(json!({"redirect_uris": [REDIRECT_URI], "token_endpoint_auth_method": "none"}).to_string()))
                    .unwrap(),
            )
            .await;
        let client_id = json_of(registration).await["client_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let url = authorize_url(
            &client_id,
            &[("resource", Some("https://gateway.test/mcp/crm"))],
        );
        let response = node.send(get(&url)).await;
        assert_eq!(response.status(), StatusCode::OK);
        let cookie = response.headers()[SET_COOKIE].to_str().unwrap();
        assert!(cookie.starts_with("__Host-portcullis-browser="), "{cookie}");
        assert!(cookie.ends_with("; Secure"), "{cookie}");
    }

    #[tokio::test]
    async fn a_callback_without_a_login_of_this_gateway_is_an_error_page() {
        let fixture = Fixture::start().await;
        for query in ["", "?state=pcs1.forged&code=x", "?code=x&state=pca1.nope"] {
            let response = fixture
                .node
                .send(get(&format!("/oauth/callback{query}")))
                .await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
            assert!(response.headers().get(LOCATION).is_none());
        }
    }
}

mod client_metadata_documents {
    use super::*;
    use axum::routing::get as get_route;

    /// Serves `document` at `/client.json` on a loopback port; returns the URL.
    async fn serve_document(document: impl Fn(&str) -> Value + Send + Sync + 'static) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/client.json", listener.local_addr().unwrap());
        let body = document(&url).to_string();
        let app = axum::Router::new().route(
            "/client.json",
            get_route(move || {
                let body = body.clone();
                async move { ([(CONTENT_TYPE, "application/json")], body) }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }

    fn authorize(client_id: &str) -> String {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("response_type", "code"),
                ("client_id", client_id),
                ("redirect_uri", REDIRECT_URI),
                ("code_challenge", &pkce_challenge(&"w".repeat(43))),
                ("code_challenge_method", "S256"),
                ("resource", &resource("crm")),
            ])
            .finish();
        format!("/oauth/authorize?{query}")
    }

    #[tokio::test]
    async fn a_client_named_by_its_metadata_url_is_fetched_and_shown_by_its_url() {
        let fixture = Fixture::start().await;
        let url = serve_document(|url| {
            json!({"client_id": url, "client_name": "Doc Client", "redirect_uris": [REDIRECT_URI]})
        })
        .await;
        let response = fixture.node.send(get(&authorize(&url))).await;
        assert_eq!(response.status(), StatusCode::OK);
        let page = text_of(response).await;
        assert!(page.contains("Doc Client"), "{page}");
        assert!(page.contains(&url), "{page}");
        assert!(!page.contains("not verified"), "{page}");

        // The document must name itself.
        let liar = serve_document(|_| {
            json!({"client_id": "https://trusted.example.com/client.json", "redirect_uris": [REDIRECT_URI]})
        })
        .await;
        let response = fixture.node.send(get(&authorize(&liar))).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(text_of(response).await.contains("does not equal its URL"));
    }

    #[tokio::test]
    async fn without_the_test_flag_loopback_documents_are_never_fetched() {
        let upstream = TestUpstream::start().await;
        let node = TestNode::with_authorization_server(
            sso_snapshot(1, servers(&upstream), gateway_keys()),
            PUBLIC_URL,
            OAuthSettings::default(),
            None,
        );
        let url =
            serve_document(|url| json!({"client_id": url, "redirect_uris": [REDIRECT_URI]})).await;
        let response = node.send(get(&authorize(&url))).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let https_loopback = url.replacen("http://", "https://", 1);
        let response = node.send(get(&authorize(&https_loopback))).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(text_of(response).await.contains("public host"));
    }
}

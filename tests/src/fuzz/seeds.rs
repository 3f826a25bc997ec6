//! The seed corpus: real MCP messages, JWKS documents shaped like the ones identity
//! providers publish, tokens signed by the fixture keys, tricky headers and templates, every
//! kind of configuration message and event.
//!
//! The committed files under `tests/fuzz/corpus/<target>/seed-*` are written from here
//! (`tests/fuzz/run.sh seeds`), and the stable tests run these seeds through their targets
//! on every run, so a seed cannot go stale without a test noticing.

use portcullis_control_plane::events::{
    AggregateKey, AggregateKind, Event, EventPayload, StoredEvent,
};
use portcullis_control_plane::secrets::SealedSecret;
use portcullis_proto::v1 as proto;
use portcullis_shared::config::{McpServer, WithSecrets};
use portcullis_shared::gateway::{GatewayKeyState, SigningKey};
use portcullis_shared::names::{CatalogId, HeaderName, UserId};
use portcullis_shared::secret::SecretInput;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::fuzz::jwt::{self, AUDIENCE, ISSUER, NOW_UNIX, Signer, fixture, good_claims};
use crate::fuzz::{config, events, headers, template};

/// One seed: the target it feeds, a file name, and the bytes.
#[derive(Debug, Clone)]
pub struct Seed {
    pub target: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
}

fn seed(target: &'static str, name: &str, bytes: impl Into<Vec<u8>>) -> Seed {
    Seed {
        target,
        name: format!("seed-{name}"),
        bytes: bytes.into(),
    }
}

/// Every seed of every target.
pub fn all() -> Vec<Seed> {
    let mut seeds = Vec::new();
    seeds.extend(jsonrpc_seeds());
    seeds.extend(jwt_seeds());
    seeds.extend(jwks_seeds());
    seeds.extend(header_seeds());
    seeds.extend(template_seeds());
    seeds.extend(config_seeds());
    seeds.extend(event_seeds());
    seeds.extend(audit_seeds());
    seeds
}

fn jsonrpc_seeds() -> Vec<Seed> {
    let target = "jsonrpc_inspect";
    let messages = [
        (
            "initialize",
            json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {"sampling": {}, "elicitation": {}, "roots": {"listChanged": true}},
                "clientInfo": {"name": "claude-code", "version": "1.0.0"}}}),
        ),
        (
            "initialized",
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        ),
        (
            "tools-list",
            json!({"jsonrpc": "2.0", "id": "list-1", "method": "tools/list", "params": {"cursor": "abc"}}),
        ),
        (
            "tools-call",
            json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
                "name": "search_issues", "arguments": {"query": "is:open", "labels": ["bug", {"deep": [1, 2.5, null]}]},
                "_meta": {"progressToken": 42}}}),
        ),
        (
            "sampling-result",
            json!({"jsonrpc": "2.0", "id": "s-1", "result": {"role": "assistant", "content": {"type": "text", "text": "hi"}, "model": "m"}}),
        ),
        (
            "error-response",
            json!({"jsonrpc": "2.0", "id": 3, "error": {"code": -32601, "message": "Method not found"}}),
        ),
        (
            "progress",
            json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "t", "progress": 0.5, "total": 1}}),
        ),
        (
            "cancelled",
            json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7, "reason": "user"}}),
        ),
        (
            "resources-read",
            json!({"jsonrpc": "2.0", "id": 11, "method": "resources/read", "params": {"uri": "file:///etc/hosts"}}),
        ),
        (
            "ping-null-id",
            json!({"jsonrpc": "2.0", "id": null, "method": "ping"}),
        ),
        (
            "huge-id",
            json!({"jsonrpc": "2.0", "id": u64::MAX, "method": "ping"}),
        ),
        (
            "float-id",
            json!({"jsonrpc": "2.0", "id": 1.5e300, "method": "ping"}),
        ),
        (
            "object-id",
            json!({"jsonrpc": "2.0", "id": {"a": 1}, "method": "ping"}),
        ),
        (
            "positional-params",
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ["search"]}),
        ),
        (
            "long-tool-name",
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "é".repeat(300)}}),
        ),
        (
            "batch",
            json!([
                {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a"}},
                {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"},
                {"jsonrpc": "2.0", "id": "x", "result": {}},
                {"jsonrpc": "2.0", "id": 2, "method": "prompts/get", "params": {"name": "p", "arguments": {}}}
            ]),
        ),
    ];
    let mut seeds: Vec<Seed> = messages
        .into_iter()
        .map(|(name, message)| seed(target, name, message.to_string()))
        .collect();
    seeds.push(seed(target, "empty-batch", "[]"));
    seeds.push(seed(
        target,
        "escaped-keys",
        r#"{"jsonrpc":"2.0","\u0069d":1,"m\u0065thod":"tools/call","params":{"name":"a\"b"}}"#,
    ));
    seeds.push(seed(
        target,
        "duplicate-name",
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
    ));
    seeds.push(seed(
        target,
        "deep-params",
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"n","arguments":{}{}}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        ),
    ));
    seeds.push(seed(
        target,
        "whitespace-batch",
        " \t\r\n[ {\"jsonrpc\":\"2.0\",\"method\":\"x\"} ]",
    ));
    seeds
}

fn jwt_seeds() -> Vec<Seed> {
    let target = "jwt_token";
    let fixture = fixture();
    let claims = Value::Object(good_claims()).to_string();
    let header = |alg: &str, kid: &str| json!({"alg": alg, "kid": kid, "typ": "JWT"}).to_string();
    let mut seeds = vec![
        seed(
            target,
            "eddsa-valid",
            jwt::encode_raw(&fixture.sign(
                Signer::Ed25519,
                header("EdDSA", jwt::ED25519_KID).as_bytes(),
                claims.as_bytes(),
            )),
        ),
        seed(
            target,
            "es256-valid",
            jwt::encode_raw(&fixture.sign(
                Signer::Ec,
                header("ES256", jwt::EC_KID).as_bytes(),
                claims.as_bytes(),
            )),
        ),
        seed(
            target,
            "alg-none",
            jwt::encode_raw(&format!(
                "{}.{}.",
                b64(json!({"alg": "none"}).to_string().as_bytes()),
                b64(claims.as_bytes())
            )),
        ),
        seed(
            target,
            "hs256-confusion",
            jwt::encode_raw(&format!(
                "{}.{}.c2lnbmF0dXJl",
                b64(header("HS256", "fuzz-rsa").as_bytes()),
                b64(claims.as_bytes())
            )),
        ),
        seed(
            target,
            "crit",
            jwt::encode_raw(
                &fixture.sign(
                    Signer::Ed25519,
                    json!({"alg": "EdDSA", "crit": ["exp"]})
                        .to_string()
                        .as_bytes(),
                    claims.as_bytes(),
                ),
            ),
        ),
        seed(
            target,
            "expired",
            jwt::encode_raw(
                &fixture.sign(
                    Signer::Ed25519,
                    header("EdDSA", jwt::ED25519_KID).as_bytes(),
                    json!({"sub": "a", "iss": ISSUER, "aud": AUDIENCE, "exp": NOW_UNIX - 3600})
                        .to_string()
                        .as_bytes(),
                ),
            ),
        ),
        seed(target, "garbage", jwt::encode_raw("ey.ey.ey")),
        seed(
            target,
            "bearer-prefix",
            jwt::encode_raw("Bearer abc.def.ghi"),
        ),
    ];
    // Built tokens: the first choice of everything is a valid token; others vary.
    for (name, choices) in [
        ("built-valid", vec![1u8; 1]),
        ("built-ec", vec![1, 1]),
        (
            "built-mixed",
            vec![1, 0, 2, 1, 0, 1, 3, 0, 1, 2, 1, 0, 4, 0, 0, 0, 0, 1],
        ),
        (
            "built-tampered",
            vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        ),
    ] {
        seeds.push(seed(target, name, choices));
    }
    seeds
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A 1024-bit RSA modulus: parses, but is too weak for a node.
const WEAK_RSA_N: &str = "zK0vQ5mcrR5xSxW3iLUf0k7Eo5B6xCz2q7T1yyB9a8K6n4z2pGg6K7h3QWdR0P5i1t0bqM6lJw0tQ0m8XkqDRn3vQm5W8r6j7S3mBz0oH1mS0w1q9J6nQ2jR5m7T9qE8p3fP0H6Zr4K9x2bX5W7vA3nQ8L1tC6dJ2yF0gR4e";

fn jwks_seeds() -> Vec<Seed> {
    let target = "jwks_parse";
    let fixture_jwks: Value = serde_json::from_str(&fixture().jwks).expect("JSON");
    let rsa: Value = fixture_jwks["keys"][3].clone();
    let ec: Value = fixture_jwks["keys"][1].clone();
    let ed: Value = fixture_jwks["keys"][0].clone();
    let with = |key: &Value, field: &str, value: Value| {
        let mut key = key.clone();
        key[field] = value;
        key
    };
    let documents = [
        ("fixture", fixture_jwks.clone()),
        // Google: RSA keys with alg and use.
        (
            "google-style",
            json!({"keys": [with(&with(&rsa, "alg", json!("RS256")), "kid", json!("6f7254101f56e41cf35c9926de84a2d552b4c6f1"))]}),
        ),
        // Entra ID: x5t and x5c and an issuer field next to n and e.
        (
            "entra-style",
            json!({"keys": [with(&with(&with(&rsa, "x5t", json!("nOo3ZDrODXEK1jKWhXslHR_KXEg")), "x5c", json!(["MIIDBTCCAe2gAwIBAgIQ"])), "issuer", json!("https://login.microsoftonline.com/{tenantid}/v2.0"))]}),
        ),
        // Okta: RSA with alg and use, several keys during a rotation.
        (
            "okta-rotation",
            json!({"keys": [with(&rsa, "kid", json!("new")), with(&rsa, "kid", json!("old"))]}),
        ),
        ("ec-and-ed", json!({"keys": [ec.clone(), ed.clone()]})),
        (
            "p384",
            json!({"keys": [{"kty": "EC", "crv": "P-384", "kid": "p384", "x": "AAAA", "y": "AAAA"}]}),
        ),
        (
            "symmetric",
            json!({"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}),
        ),
        (
            "weak-rsa",
            json!({"keys": [{"kty": "RSA", "kid": "weak", "e": "AQAB", "n": WEAK_RSA_N}]}),
        ),
        (
            "encryption-key",
            json!({"keys": [with(&ec, "use", json!("enc"))]}),
        ),
        (
            "sign-only-ops",
            json!({"keys": [with(&ed, "key_ops", json!(["sign"]))]}),
        ),
        (
            "alg-mismatch",
            json!({"keys": [with(&ec, "alg", json!("RS256"))]}),
        ),
        (
            "hmac-alg",
            json!({"keys": [with(&rsa, "alg", json!("HS256"))]}),
        ),
        (
            "x25519",
            json!({"keys": [{"kty": "OKP", "crv": "X25519", "x": "AAAA"}]}),
        ),
        ("no-keys", json!({"keys": []})),
        ("keys-not-array", json!({"keys": 3})),
        (
            "too-many",
            json!({"keys": (0..65).map(|_| ed.clone()).collect::<Vec<_>>()}),
        ),
    ];
    documents
        .into_iter()
        .map(|(name, document)| seed(target, name, document.to_string()))
        .collect()
}

fn header_seeds() -> Vec<Seed> {
    let target = "header_firewall";
    let header = |name: &str, value: &str| (name.to_owned(), value.as_bytes().to_vec());
    let cases = [
        (
            "credentials",
            vec![
                header("Authorization", "Bearer caller"),
                header("cookie", "session=1"),
                header("Proxy-Authorization", "Basic eA=="),
                header("mcp-session-id", "abc"),
            ],
            vec![],
        ),
        (
            "connection-listed",
            vec![
                header("connection", "keep-alive, X-Scoped , , x-api-key"),
                header("keep-alive", "timeout=5"),
                header("x-scoped", "1"),
                header("x-api-key", "k"),
                header("te", "trailers"),
                header("transfer-encoding", "chunked"),
                header("upgrade", "h2c"),
                header("host", "gateway.example.com"),
                header("content-length", "12"),
                header("expect", "100-continue"),
            ],
            vec![],
        ),
        (
            "restricted",
            vec![
                header("x-internal-user", "root"),
                header("X-Internal-Role", "admin"),
                header("x-debug", "1"),
                header("x-debugger", "kept"),
                header("x-trace", "a"),
                header("x-trace", "b"),
            ],
            vec![
                "x-internal-*".to_owned(),
                "X-DEBUG".to_owned(),
                "x-?race".to_owned(),
            ],
        ),
        (
            "mcp-headers",
            vec![
                header("mcp-protocol-version", "2025-11-25"),
                header("last-event-id", "42"),
                header("mcp-method", "tools/call"),
                header("mcp-name", "search"),
                header("mcp-param-region", "eu"),
                header("accept", "application/json, text/event-stream"),
                header("content-type", "application/json"),
            ],
            vec!["mcp-param-*".to_owned()],
        ),
        (
            "hostile-pattern",
            vec![header(&"a".repeat(200), "v"), header("x-aaaa", "v")],
            vec![
                "*a*a*a*a*a*a*a*a*b".to_owned(),
                "*".to_owned(),
                "**?".to_owned(),
            ],
        ),
        (
            "response-side",
            vec![
                header("set-cookie", "upstream-session=1"),
                header(
                    "www-authenticate",
                    "Bearer resource_metadata=\"https://u/x\"",
                ),
                header("proxy-authenticate", "Basic"),
                header("content-type", "text/event-stream"),
            ],
            vec![],
        ),
        (
            "obs-text-values",
            vec![
                ("connection".to_owned(), b"x-hidden, \xff".to_vec()),
                ("x-hidden".to_owned(), b"secret".to_vec()),
                ("x-latin1".to_owned(), b"caf\xe9".to_vec()),
            ],
            vec![],
        ),
    ];
    cases
        .into_iter()
        .map(|(name, headers, patterns)| seed(target, name, headers::encode(&headers, &patterns)))
        .collect()
}

fn template_seeds() -> Vec<Seed> {
    let target = "header_template";
    [
        (
            "team-user",
            template::encode(
                "team={{groups}} user={{ sub }}",
                &[("groups", "eng"), ("sub", "alice")],
            ),
        ),
        (
            "crlf-injection",
            template::encode("{{email}}", &[("email", "a@b\r\nx-evil: 1")]),
        ),
        (
            "url-claim",
            template::encode(
                "Bearer {{https://example.com/roles}}",
                &[("https://example.com/roles", "admin")],
            ),
        ),
        (
            "missing-claim",
            template::encode("{{a}}{{b}}", &[("a", "1")]),
        ),
        ("unclosed", template::encode("a {{sub", &[("sub", "x")])),
        ("braces", template::encode("{{}}}}", &[])),
        (
            "nul-value",
            template::encode("x-{{sub}}", &[("sub", "a\0b")]),
        ),
        (
            "literal-crlf",
            template::encode("x\r\n{{sub}}", &[("sub", "a")]),
        ),
        (
            "unicode-value",
            template::encode("{{sub}}", &[("sub", "ü")]),
        ),
    ]
    .into_iter()
    .map(|(name, bytes)| seed(target, name, bytes))
    .collect()
}

fn plaintext(value: &str) -> Option<proto::Secret> {
    Some(proto::Secret {
        value: Some(proto::secret::Value::Plaintext(value.to_owned())),
    })
}

fn outbound(name: &str, source: proto::outbound_header::Source) -> proto::OutboundHeader {
    proto::OutboundHeader {
        header_name: name.to_owned(),
        prefix: String::new(),
        source: Some(source),
    }
}

/// A server for every agent auth mode and app auth kind, with every outbound header source.
pub fn example_servers() -> Vec<proto::McpServer> {
    use proto::app_auth::Kind;
    use proto::outbound_header::Source;
    let jwt = |jwks_url: &str, jwks_json: &str| proto::AgentAuth {
        mode: Some(proto::agent_auth::Mode::Passthrough(
            proto::PassthroughAgent {
                jwt_validation: Some(proto::JwtValidation {
                    jwks_url: jwks_url.to_owned(),
                    jwks_json: jwks_json.to_owned(),
                    issuer: ISSUER.to_owned(),
                    audience: AUDIENCE.to_owned(),
                }),
            },
        )),
        restricted_inbound_headers: vec!["x-internal-*".to_owned()],
    };
    let interactive = proto::AgentAuth {
        mode: Some(proto::agent_auth::Mode::Interactive(
            proto::InteractiveSso {
                identity_provider: "okta".to_owned(),
                scopes: vec!["openid".to_owned(), "email".to_owned()],
            },
        )),
        restricted_inbound_headers: vec![],
    };
    let passthrough = proto::AgentAuth {
        mode: Some(proto::agent_auth::Mode::Passthrough(
            proto::PassthroughAgent {
                jwt_validation: None,
            },
        )),
        restricted_inbound_headers: vec!["x-debug".to_owned(), "x-?".to_owned()],
    };
    let server = |name: &str,
                  agent_auth: proto::AgentAuth,
                  kind: Kind,
                  headers: Vec<proto::OutboundHeader>| {
        proto::McpServer {
            name: name.to_owned(),
            upstream_url: format!("https://{name}.internal.example.com/mcp?tenant=1"),
            transport: proto::Transport::StreamableHttp as i32,
            allowed_origins: vec!["https://chat.example.com".to_owned()],
            agent_auth: Some(agent_auth),
            app_auth: Some(proto::AppAuth { kind: Some(kind) }),
            outbound_headers: headers,
            description: format!("the {name} server"),
        }
    };
    vec![
        server(
            "github",
            interactive,
            Kind::OauthAuthorization(proto::OAuthAuthorization {
                app_id: "github".to_owned(),
                scopes: vec!["repo".to_owned()],
            }),
            vec![
                outbound(
                    "x-user",
                    Source::CallerIdentity(proto::CallerIdentity {
                        claim: "email".to_owned(),
                    }),
                ),
                outbound(
                    "x-pat",
                    Source::VaultCredential(proto::VaultCredential {
                        credential_id: "pat".to_owned(),
                        scope: proto::CredentialScope::PerUser as i32,
                    }),
                ),
            ],
        ),
        server(
            "billing",
            jwt("", &fixture().jwks),
            Kind::ApiKey(proto::ApiKey {
                key_name: "X-Api-Key".to_owned(),
                key_value: plaintext("k-123"),
                location: proto::ApiKeyLocation::Header as i32,
            }),
            vec![
                outbound(
                    "x-team",
                    Source::Custom(proto::CustomHeader {
                        value: Some(proto::custom_header::Value::Template(
                            "team={{groups}}".to_owned(),
                        )),
                    }),
                ),
                outbound(
                    "x-static",
                    Source::Custom(proto::CustomHeader {
                        value: Some(proto::custom_header::Value::StaticValue("v".to_owned())),
                    }),
                ),
            ],
        ),
        server(
            "search",
            jwt("https://idp.example.com/jwks", ""),
            Kind::ClientCredentials(proto::ClientCredentials {
                token_url: "https://idp.example.com/token".to_owned(),
                client_id: "c".to_owned(),
                client_secret: plaintext("s"),
                scopes: vec!["search.read".to_owned()],
                audience: "api".to_owned(),
            }),
            vec![
                outbound(
                    "x-service",
                    Source::ServiceToken(proto::ServiceToken {
                        token_url: "https://idp.example.com/token".to_owned(),
                        client_id: "c".to_owned(),
                        client_secret: plaintext("s"),
                        scopes: vec![],
                        audience: String::new(),
                    }),
                ),
                outbound(
                    "x-obo",
                    Source::OnBehalfOf(proto::OnBehalfOf {
                        exchange_url: "http://127.0.0.1:9000/token".to_owned(),
                        client_id: "c".to_owned(),
                        client_secret: plaintext("s"),
                        audience: "api".to_owned(),
                        scopes: vec!["x".to_owned()],
                        requested_token_type: String::new(),
                    }),
                ),
                outbound(
                    "x-forward",
                    Source::ForwardCallerToken(proto::ForwardCallerToken {}),
                ),
            ],
        ),
        server(
            "wiki",
            passthrough.clone(),
            Kind::Basic(proto::BasicAuth {
                username: "svc".to_owned(),
                password: plaintext("p@ss"),
            }),
            vec![outbound(
                "x-secret",
                Source::Custom(proto::CustomHeader {
                    value: Some(proto::custom_header::Value::Secret(proto::Secret {
                        value: Some(proto::secret::Value::Plaintext("s3".to_owned())),
                    })),
                }),
            )],
        ),
        server(
            "notes",
            passthrough.clone(),
            Kind::Bearer(proto::BearerToken {
                token: plaintext("t0k3n"),
            }),
            vec![],
        ),
        server(
            "legacy",
            passthrough,
            Kind::Passthrough(proto::PassthroughApp {}),
            vec![],
        ),
    ]
}

fn example_identity_provider() -> proto::IdentityProvider {
    proto::IdentityProvider {
        id: "okta".to_owned(),
        issuer: "https://example.okta.com".to_owned(),
        client_id: "gateway".to_owned(),
        client_secret: plaintext("secret"),
        scopes: vec![],
        user_id_claim: String::new(),
        email_claim: "upn".to_owned(),
        groups_claim: String::new(),
        token_resource: "https://api.example.com".to_owned(),
        display_name: "Okta".to_owned(),
    }
}

fn example_oauth_app() -> proto::OAuthApp {
    proto::OAuthApp {
        app_id: "github".to_owned(),
        authorize_url: "https://github.com/login/oauth/authorize".to_owned(),
        token_url: "https://github.com/login/oauth/access_token".to_owned(),
        revocation_url: String::new(),
        client_id: "Iv1.abc".to_owned(),
        client_secret: plaintext("gh-secret"),
        default_scopes: vec!["repo".to_owned()],
        extra_authorize_params: [("allow_signup".to_owned(), "false".to_owned())].into(),
        display_name: "GitHub".to_owned(),
        token_endpoint_auth_method: "client_secret_post".to_owned(),
    }
}

fn example_credential() -> proto::StoredCredential {
    proto::StoredCredential {
        id: "pat".to_owned(),
        description: "personal access tokens".to_owned(),
        org_value: plaintext("org-token"),
        user_values: vec![],
    }
}

/// A snapshot as a control plane sends it: every server, the catalogs they use, gateway
/// keys and revocations.
pub fn example_snapshot() -> proto::Snapshot {
    use base64::Engine;
    let fixture_jwks: Value = serde_json::from_str(&fixture().jwks).expect("JSON");
    proto::Snapshot {
        version: 12,
        schema_version: portcullis_shared::snapshot::SNAPSHOT_SCHEMA_VERSION,
        servers: example_servers(),
        identity_providers: vec![example_identity_provider()],
        oauth_apps: vec![example_oauth_app()],
        credentials: vec![example_credential()],
        gateway_keys: Some(proto::GatewayKeys {
            signing_keys: vec![proto::SigningKey {
                kid: "gw-1".to_owned(),
                algorithm: "ES256".to_owned(),
                private_key: plaintext("MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg"),
                public_jwk: fixture_jwks["keys"][1].to_string(),
                created_at_unix: NOW_UNIX,
                state: proto::GatewayKeyState::Active as i32,
            }],
            sealing_keys: vec![proto::SealingKey {
                kid: "seal-1".to_owned(),
                key: plaintext(&base64::engine::general_purpose::STANDARD.encode([7u8; 32])),
                created_at_unix: NOW_UNIX,
                state: proto::GatewayKeyState::Active as i32,
            }],
        }),
        revoked_users: vec![proto::RevokedUser {
            identity_provider: "okta".to_owned(),
            subject: "00u1ab".to_owned(),
            revoked_at_unix: NOW_UNIX,
        }],
        revoked_grants: vec![proto::RevokedGrant {
            grant_id: "g-1".to_owned(),
            expires_at_unix: NOW_UNIX + 3600,
        }],
    }
}

fn config_seeds() -> Vec<Seed> {
    let target = "config_proto";
    let mut seeds: Vec<Seed> = example_servers()
        .into_iter()
        .map(|server| {
            let name = format!("server-{}", server.name);
            seed(target, &name, config::encode(config::MCP_SERVER, &server))
        })
        .collect();
    let state = proto::ConfigState {
        revision: 3,
        servers: example_servers(),
        identity_providers: vec![example_identity_provider()],
        oauth_apps: vec![example_oauth_app()],
        credentials: vec![example_credential()],
    };
    seeds.push(seed(
        target,
        "config-state",
        config::encode(config::CONFIG_STATE, &state),
    ));
    seeds.push(seed(
        target,
        "snapshot",
        config::encode(config::SNAPSHOT, &example_snapshot()),
    ));
    seeds
}

fn sealed(index: u8) -> SealedSecret {
    SealedSecret {
        id: Uuid::from_bytes([index; 16]),
        ciphertext: vec![index; 28],
        fingerprint: format!("hmac-sha256:{index:016x}"),
    }
}

/// A log that uses every kind of event, in an order the projection accepts.
pub fn example_events() -> Vec<StoredEvent> {
    let mut index = 0;
    let servers: Vec<McpServer<SealedSecret>> = example_servers()
        .into_iter()
        .map(|server| {
            McpServer::<SecretInput>::try_from(server)
                .expect("the example servers are valid")
                .map_secrets(|_| {
                    index += 1;
                    sealed(index)
                })
        })
        .collect();
    let github = &servers[0];
    let catalog = |id: &str| CatalogId::parse(id).expect("a valid id");
    let payloads = vec![
        (
            AggregateKey::catalog(AggregateKind::IdentityProvider, &catalog("okta")),
            EventPayload::IdentityProviderPut {
                identity_provider:
                    portcullis_shared::config::IdentityProvider::<SecretInput>::try_from(
                        example_identity_provider(),
                    )
                    .expect("valid")
                    .map_secrets(|_| sealed(100)),
            },
        ),
        (
            AggregateKey::catalog(AggregateKind::OauthApp, &catalog("github")),
            EventPayload::OauthAppPut {
                oauth_app: portcullis_shared::config::OAuthApp::<SecretInput>::try_from(
                    example_oauth_app(),
                )
                .expect("valid")
                .map_secrets(|_| sealed(101)),
            },
        ),
        (
            AggregateKey::catalog(AggregateKind::Credential, &catalog("pat")),
            EventPayload::CredentialPut {
                id: catalog("pat"),
                description: "tokens".to_owned(),
                org_value: Some(sealed(102)),
            },
        ),
        (
            AggregateKey::catalog(AggregateKind::Credential, &catalog("pat")),
            EventPayload::UserCredentialSet {
                credential_id: catalog("pat"),
                user: UserId::parse("auth0|42").expect("valid"),
                value: sealed(103),
            },
        ),
        (
            AggregateKey::server(&github.name),
            EventPayload::ServerRegistered {
                server: github.clone(),
            },
        ),
        (
            AggregateKey::server(&github.name),
            EventPayload::AgentAuthSet {
                server: github.name.clone(),
                agent_auth: servers[1].agent_auth.clone(),
            },
        ),
        (
            AggregateKey::server(&github.name),
            EventPayload::AppAuthSet {
                server: github.name.clone(),
                app_auth: servers[2].app_auth.clone(),
            },
        ),
        (
            AggregateKey::server(&github.name),
            EventPayload::OutboundHeaderPut {
                server: github.name.clone(),
                header: servers[2].outbound_headers[0].clone(),
            },
        ),
        (
            AggregateKey::server(&github.name),
            EventPayload::OutboundHeaderRemoved {
                server: github.name.clone(),
                header_name: HeaderName::parse("x-user").expect("valid"),
            },
        ),
        (
            AggregateKey::gateway_keys(),
            EventPayload::GatewaySigningKeyAdded {
                key: SigningKey {
                    kid: "gw-1".to_owned(),
                    algorithm: "ES256".to_owned(),
                    private_key: sealed(104),
                    public_jwk: "{}".to_owned(),
                    created_at_unix: NOW_UNIX,
                    state: GatewayKeyState::Active,
                },
            },
        ),
        (
            AggregateKey::gateway_keys(),
            EventPayload::GatewayKeyRetired {
                kid: "gw-1".to_owned(),
            },
        ),
        (
            AggregateKey::gateway_revocations(),
            EventPayload::GrantRevoked {
                grant_id: "g-1".to_owned(),
                expires_at_unix: NOW_UNIX + 60,
                reason: "refresh token reuse".to_owned(),
            },
        ),
        (
            AggregateKey::gateway_revocations(),
            EventPayload::UserSessionsRevoked {
                identity_provider: catalog("okta"),
                subject: UserId::parse("00u1ab").expect("valid"),
                revoked_at_unix: NOW_UNIX,
            },
        ),
        (
            AggregateKey::catalog(AggregateKind::Credential, &catalog("pat")),
            EventPayload::UserCredentialDeleted {
                credential_id: catalog("pat"),
                user: UserId::parse("auth0|42").expect("valid"),
            },
        ),
        (
            AggregateKey::server(&github.name),
            EventPayload::ServerDeleted {
                name: github.name.clone(),
            },
        ),
    ];
    payloads
        .into_iter()
        .enumerate()
        .map(|(position, (aggregate, payload))| {
            StoredEvent::V1(Event {
                id: Uuid::from_u128(position as u128 + 1),
                sequence: position as u64 + 1,
                time: OffsetDateTime::from_unix_timestamp(NOW_UNIX + position as i64)
                    .expect("a valid time"),
                actor: "admin".to_owned(),
                aggregate,
                aggregate_revision: 1,
                payload,
            })
        })
        .collect()
}

fn event_seeds() -> Vec<Seed> {
    let target = "stored_event";
    let events = example_events();
    let mut seeds = vec![seed(target, "log", events::encode(&events))];
    for (position, event) in events.iter().enumerate() {
        let StoredEvent::V1(inner) = event;
        let name = format!("{position:02}-{}", inner.payload.type_name());
        seeds.push(seed(
            target,
            &name,
            events::encode(std::slice::from_ref(event)),
        ));
    }
    seeds.push(seed(
        target,
        "unknown-version",
        r#"{"schema_version":"9","id":"00000000-0000-0000-0000-000000000001"}"#,
    ));
    seeds
}

fn audit_seeds() -> Vec<Seed> {
    let target = "audit_record";
    // Structured inputs: the bytes are choices (see `audit::fuzz`).
    [
        ("one-event", vec![1u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        (
            "two-events",
            vec![2u8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 1, 1, 0, 0],
        ),
        (
            "duplicates",
            vec![3u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        ("invalid-kind", vec![1u8, 0, 3, 0, 0, 0]),
        (
            "tampered",
            vec![0u8, 255, 1, 0, 0, 0, 0, 0, 0, 0, 3, 40, 1, 2, 3],
        ),
    ]
    .into_iter()
    .map(|(name, bytes)| seed(target, name, bytes))
    .collect()
}

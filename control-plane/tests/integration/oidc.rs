//! Admin authentication with a JWT from the identity provider, the role from a claim.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_control_plane::engine::EngineOptions;
use portcullis_control_plane::server::{ControlPlane, ControlPlaneConfig};
use portcullis_proto::v1 as proto;
use portcullis_proto::v1::admin_service_client::AdminServiceClient;
use tonic::Code;

use crate::common::{authed, datadog_server, master_key};

/// An ES256 key with its JWK.
struct SigningKey {
    kid: String,
    pkcs8: Vec<u8>,
    jwk: serde_json::Value,
}

fn signing_key(kid: &str) -> SigningKey {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = pair.public_key().as_ref().to_vec();
    SigningKey {
        kid: kid.to_owned(),
        pkcs8: pkcs8.as_ref().to_vec(),
        jwk: serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }),
    }
}

fn token(
    key: &SigningKey,
    issuer: &str,
    audience: &str,
    groups: &[&str],
    expires_in: i64,
) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(
        &header,
        &serde_json::json!({
            "iss": issuer, "aud": audience, "sub": "u-123", "email": "carol@example.com",
            "groups": groups, "iat": now, "exp": now + expires_in,
        }),
        &jsonwebtoken::EncodingKey::from_ec_der(&key.pkcs8),
    )
    .unwrap()
}

/// Serves a discovery document and a JWKS whose keys the test can change.
async fn identity_provider(keys: Arc<Mutex<Vec<serde_json::Value>>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let jwks_uri = format!("{issuer}/jwks");
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || {
                let jwks_uri = jwks_uri.clone();
                async move { axum::Json(serde_json::json!({ "jwks_uri": jwks_uri })) }
            }),
        )
        .route(
            "/jwks",
            axum::routing::get(move || {
                let keys = keys.clone();
                async move {
                    let keys = keys.lock().unwrap().clone();
                    axum::Json(serde_json::json!({ "keys": keys }))
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    issuer
}

#[tokio::test]
async fn admins_and_auditors_sign_in_with_identity_provider_tokens() {
    let first = signing_key("k1");
    let keys = Arc::new(Mutex::new(vec![first.jwk.clone()]));
    let issuer = identity_provider(keys.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let access = dir.path().join("access.yaml");
    std::fs::write(
        &access,
        format!(
            "oidc:\n  issuer: {issuer}\n  audience: portcullis-admin\n  role_claim: groups\n  admin_values: [platform-admins]\n  auditor_values: [security]\n  name_claim: email\n"
        ),
    )
    .unwrap();
    let config = ControlPlaneConfig {
        data_dir: dir.path().join("data"),
        access_file: access,
        engine: EngineOptions::default(),
        tls: None,
    };
    let control_plane = ControlPlane::open(&config, master_key(), None)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(control_plane.serve(listener, std::future::pending()));
    let mut client = AdminServiceClient::connect(endpoint).await.unwrap();
    let create = |token: &str| {
        authed(
            token,
            proto::CreateServerRequest {
                server: Some(datadog_server("datadog", "k")),
            },
        )
    };

    let admin = token(
        &first,
        &issuer,
        "portcullis-admin",
        &["platform-admins"],
        300,
    );
    let who = client
        .who_am_i(authed(&admin, proto::WhoAmIRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (who.actor.as_str(), who.role.as_str()),
        ("oidc:carol@example.com", "admin")
    );
    client.create_server(create(&admin)).await.unwrap();

    let auditor = token(&first, &issuer, "portcullis-admin", &["security"], 300);
    assert_eq!(
        client
            .create_server(create(&auditor))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    client
        .list_servers(authed(
            &auditor,
            proto::ListServersRequest { at_revision: None },
        ))
        .await
        .unwrap();

    for refused in [
        token(&first, &issuer, "portcullis-admin", &["engineering"], 300),
        token(
            &first,
            &issuer,
            "another-audience",
            &["platform-admins"],
            300,
        ),
        token(
            &first,
            "https://evil.example.com",
            "portcullis-admin",
            &["platform-admins"],
            300,
        ),
        token(
            &first,
            &issuer,
            "portcullis-admin",
            &["platform-admins"],
            -600,
        ),
        token(
            &signing_key("k1"),
            &issuer,
            "portcullis-admin",
            &["platform-admins"],
            300,
        ),
    ] {
        let status = client
            .who_am_i(authed(&refused, proto::WhoAmIRequest {}))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }

    // The identity provider rotates its key: the new one is fetched on first sight.
    let second = signing_key("k2");
    keys.lock().unwrap().push(second.jwk.clone());
    let rotated = token(
        &second,
        &issuer,
        "portcullis-admin",
        &["platform-admins"],
        300,
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client
            .who_am_i(authed(&rotated, proto::WhoAmIRequest {}))
            .await
        {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status.code(), Code::Unauthenticated);
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the new key was never fetched"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

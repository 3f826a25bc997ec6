//! The test identity provider and the headless browser on their own (no gateway): the
//! tooling gateway tests build on.

use std::time::Duration;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Query};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect};
use axum::routing::get;
use portcullis_tests::browser::{Consent, HeadlessBrowser};
use portcullis_tests::idp::{
    IdpAccount, IdpClient, IdpConfig, IdpResource, KeyRotation, ProtectedMcpServer,
    TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT, TestIdp, TrustedIssuer, jwt,
};
use portcullis_tests::node_clients::mcp_remote_client_oauth;
use portcullis_tests::process::pick_free_loopback_port;
use portcullis_tests::python_mcp_client;
use serde_json::{Value, json};

const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";

fn gateway_client() -> IdpClient {
    IdpClient::confidential("gateway", "gateway-secret", &[REDIRECT_URI])
}

async fn idp_with_gateway_client() -> (TestIdp, IdpClient) {
    let client = gateway_client();
    let idp = TestIdp::start(IdpConfig::default().client(client.clone()))
        .await
        .unwrap();
    (idp, client)
}

#[tokio::test]
async fn discovery_at_both_well_known_names_advertises_what_the_gateway_needs() {
    let (idp, _) = idp_with_gateway_client().await;

    let oidc = idp.discovery().await.unwrap();
    let oauth = idp
        .get_json("/.well-known/oauth-authorization-server")
        .await
        .unwrap();
    assert_eq!(oidc, oauth, "one document under both names");
    assert_eq!(oidc["issuer"], idp.issuer());
    assert_eq!(
        oidc["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(oidc["authorization_response_iss_parameter_supported"], true);
    assert_eq!(
        oidc["response_types_supported"],
        serde_json::json!(["code"])
    );
    for endpoint in [
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "registration_endpoint",
        "introspection_endpoint",
        "revocation_endpoint",
        "userinfo_endpoint",
    ] {
        let url = oidc[endpoint].as_str().unwrap_or_default();
        assert!(url.starts_with(idp.issuer()), "{endpoint}: {oidc}");
    }
    let grant_types = oidc["grant_types_supported"].as_array().unwrap();
    for grant_type in [
        "authorization_code",
        "refresh_token",
        "client_credentials",
        portcullis_tests::idp::TOKEN_EXCHANGE_GRANT_TYPE,
    ] {
        assert!(
            grant_types.iter().any(|value| value == grant_type),
            "{grant_type}: {oidc}"
        );
    }
    assert!(
        oidc.get("device_authorization_endpoint").is_none(),
        "no device flow: mcp-remote would prefer it over the browser"
    );
    let kids = idp.jwks_kids().await.unwrap();
    assert_eq!(kids.len(), 2, "one RS256 and one ES256 key: {kids:?}");
}

#[tokio::test]
async fn alice_and_bob_log_in_through_the_browser_with_their_own_claims() {
    let bob = IdpAccount::new("bob")
        .groups(&["sales", "emea"])
        .email("robert@example.org");
    let client = gateway_client();
    let idp = TestIdp::start(IdpConfig::default().account(bob).client(client.clone()))
        .await
        .unwrap();

    let mut subjects = Vec::new();
    for (user, email, groups) in [
        ("alice", "alice@example.com", vec!["engineering", "admins"]),
        ("bob", "robert@example.org", vec!["sales", "emea"]),
    ] {
        let browser = HeadlessBrowser::new().unwrap().user(user);
        let request = idp
            .authorization_request(&client)
            .scope("openid email profile");
        let tokens = idp
            .authorization_code_flow(&client, &request, &browser)
            .await
            .unwrap()
            .expect_ok()
            .unwrap();
        let claims = idp
            .verify_jwt(tokens.id_token().unwrap(), Some("gateway"))
            .await
            .unwrap();
        assert_eq!(claims["sub"], user, "{claims}");
        assert_eq!(claims["email"], email, "{claims}");
        assert_eq!(claims["email_verified"], true, "{claims}");
        assert_eq!(claims["groups"], serde_json::json!(groups), "{claims}");
        assert!(claims["name"].is_string(), "{claims}");
        subjects.push(claims["sub"].as_str().unwrap().to_owned());
    }
    assert_ne!(subjects[0], subjects[1]);

    // The authorization requests carried PKCE S256 and got the default scope when needed.
    let recent = idp.recent_requests().await.unwrap();
    assert_eq!(recent.authorization.len(), 2);
    for request in &recent.authorization {
        assert_eq!(request["code_challenge_method"], "S256", "{request:?}");
    }
    let interactions = idp.interactions().await.unwrap();
    assert_eq!(interactions.logins, 2);
    assert_eq!(interactions.logins_by_user.get("alice"), Some(&1));
    assert_eq!(interactions.logins_by_user.get("bob"), Some(&1));
}

#[tokio::test]
async fn a_second_authorization_in_the_same_browser_needs_no_login() {
    let (idp, client) = idp_with_gateway_client().await;
    let browser = HeadlessBrowser::new().unwrap().user("bob");

    let first = idp.authorization_request(&client).scope("openid email");
    idp.authorization_code_flow(&client, &first, &browser)
        .await
        .unwrap()
        .expect_ok()
        .unwrap();
    let after_first = idp.interactions().await.unwrap();
    assert_eq!((after_first.logins, after_first.consents), (1, 1));

    // Same cookie jar: the IdP session and the grant are reused, no interaction at all, and
    // the user stays bob even though this profile now asks for alice.
    let mut same_profile = HeadlessBrowser::with_cookie_jar(browser.cookie_jar());
    same_profile.set_user("alice");
    let second = idp.authorization_request(&client).scope("openid email");
    let outcome = same_profile.authorize(&second.url()).await.unwrap();
    assert!(
        outcome.hops_with_path_prefix("/interaction/").is_empty(),
        "{:#?}",
        outcome.hops
    );
    let code = idp.expect_authorization_code(&second, &outcome).unwrap();
    let tokens = idp
        .token_request(
            &client,
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", &second.pkce.verifier),
            ],
        )
        .await
        .unwrap()
        .expect_ok()
        .unwrap();
    let claims = jwt::claims_unverified(tokens.id_token().unwrap()).unwrap();
    assert_eq!(claims["sub"], "bob");
    assert_eq!(idp.interactions().await.unwrap(), after_first);

    // A fresh profile logs in again.
    let other = HeadlessBrowser::new().unwrap().user("alice");
    let third = idp.authorization_request(&client).scope("openid");
    idp.authorization_code_flow(&client, &third, &other)
        .await
        .unwrap()
        .expect_ok()
        .unwrap();
    assert_eq!(idp.interactions().await.unwrap().logins, 2);
}

#[tokio::test]
async fn unknown_users_are_refused_with_access_denied() {
    let (idp, client) = idp_with_gateway_client().await;
    let browser = HeadlessBrowser::new().unwrap().user("mallory");
    let request = idp.authorization_request(&client).scope("openid");
    let outcome = browser.authorize(&request.url()).await.unwrap();
    assert_eq!(outcome.param("error"), Some("access_denied"), "{outcome:?}");
    assert_eq!(outcome.param("state"), Some(request.state.as_str()));
    assert_eq!(idp.interactions().await.unwrap().logins, 0);
}

#[tokio::test]
async fn client_credentials_give_opaque_tokens_or_jwts_for_a_resource() {
    let service = IdpClient::service("reporting", "reporting-secret");
    let idp = TestIdp::start(
        IdpConfig::default()
            .scopes(&["reports:read"])
            .client(service.clone()),
    )
    .await
    .unwrap();

    let opaque = idp
        .client_credentials(&service, Some("reports:read"), None)
        .await
        .unwrap()
        .expect_ok()
        .unwrap();
    let token = opaque.access_token().unwrap();
    assert!(jwt::decode_unverified(token).is_err(), "opaque: {token}");
    let introspection = idp.introspect(&service, token).await.unwrap();
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["client_id"], "reporting");
    assert_eq!(introspection["scope"], "reports:read");

    let resource = "https://reports.example/api";
    let jwt_response = idp
        .client_credentials(&service, Some("reports:read"), Some(resource))
        .await
        .unwrap()
        .expect_ok()
        .unwrap();
    let access_token = jwt_response.access_token().unwrap();
    let (header, _) = jwt::decode_unverified(access_token).unwrap();
    assert_eq!(header["typ"], "at+jwt");
    let claims = idp.verify_jwt(access_token, Some(resource)).await.unwrap();
    assert_eq!(claims["client_id"], "reporting");
    assert_eq!(claims["sub"], "reporting");
    assert_eq!(claims["scope"], "reports:read");

    let stats = idp.stats().await.unwrap();
    assert_eq!(stats.token_requests("client_credentials"), 2);
}

#[tokio::test]
async fn a_resource_indicator_gives_a_jwt_access_token_with_that_audience_and_ttl() {
    let resource = "http://127.0.0.1:9/mcp/github";
    let client = gateway_client();
    let idp = TestIdp::start(
        IdpConfig::default()
            .resource(
                IdpResource::new(resource, "repo read:user")
                    .access_token_ttl(Duration::from_secs(120))
                    .signing_alg("ES256"),
            )
            .client(client.clone()),
    )
    .await
    .unwrap();
    let browser = HeadlessBrowser::new().unwrap().user("alice");
    let request = idp
        .authorization_request(&client)
        .scope("openid repo")
        .resource(resource);
    let tokens = idp
        .authorization_code_flow(&client, &request, &browser)
        .await
        .unwrap()
        .expect_ok()
        .unwrap();
    assert_eq!(tokens.expires_in(), Some(120));
    let access_token = tokens.access_token().unwrap();
    let (header, _) = jwt::decode_unverified(access_token).unwrap();
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["alg"], "ES256");
    let claims = idp.verify_jwt(access_token, Some(resource)).await.unwrap();
    assert_eq!(claims["aud"], resource);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["scope"], "repo");
    assert_eq!(claims["email"], "alice@example.com");
    assert!(
        idp.verify_jwt(access_token, Some("http://127.0.0.1:9/mcp/other"))
            .await
            .is_err()
    );

    // The refreshed access token keeps the resource and scope without asking again.
    let refreshed = idp
        .refresh(&client, tokens.refresh_token().unwrap())
        .await
        .unwrap()
        .expect_ok()
        .unwrap();
    let claims = idp
        .verify_jwt(refreshed.access_token().unwrap(), Some(resource))
        .await
        .unwrap();
    assert_eq!(claims["scope"], "repo");
}

#[tokio::test]
async fn token_exchange_issues_a_token_for_another_audience_with_the_same_subject() {
    let (idp, client) = idp_with_gateway_client().await;
    let browser = HeadlessBrowser::new().unwrap().user("bob");
    let first_resource = "http://127.0.0.1:9/mcp/jira";
    let request = idp
        .authorization_request(&client)
        .scope("openid tickets:read")
        .resource(first_resource);
    let tokens = idp
        .authorization_code_flow(&client, &request, &browser)
        .await
        .unwrap()
        .expect_ok()
        .unwrap();

    let downstream = "https://jira.example/api";
    for (subject_token, subject_token_type) in [
        (tokens.access_token().unwrap(), TOKEN_TYPE_ACCESS_TOKEN),
        (tokens.id_token().unwrap(), TOKEN_TYPE_ID_TOKEN),
    ] {
        let exchanged = idp
            .token_exchange(
                &client,
                subject_token,
                subject_token_type,
                downstream,
                Some("tickets:read"),
            )
            .await
            .unwrap()
            .expect_ok()
            .unwrap();
        assert_eq!(exchanged.body["issued_token_type"], TOKEN_TYPE_ACCESS_TOKEN);
        let claims = idp
            .verify_jwt(exchanged.access_token().unwrap(), Some(downstream))
            .await
            .unwrap();
        assert_eq!(claims["sub"], "bob", "{claims}");
        assert_eq!(claims["scope"], "tickets:read");
        assert_eq!(claims["client_id"], "gateway");
    }

    // Clear OAuth errors for what cannot be exchanged.
    let garbage = idp
        .token_exchange(
            &client,
            "not-a-token",
            TOKEN_TYPE_ACCESS_TOKEN,
            downstream,
            None,
        )
        .await
        .unwrap();
    let description = garbage.expect_error("invalid_grant").unwrap();
    assert!(description.contains("subject_token"), "{description}");
    let no_target = idp
        .token_request(
            &client,
            &[
                (
                    "grant_type",
                    portcullis_tests::idp::TOKEN_EXCHANGE_GRANT_TYPE,
                ),
                ("subject_token", tokens.id_token().unwrap()),
                ("subject_token_type", TOKEN_TYPE_ID_TOKEN),
            ],
        )
        .await
        .unwrap();
    no_target.expect_error("invalid_target").unwrap();
    let foreign = idp
        .token_exchange(
            &client,
            // A well-formed JWT from an issuer nobody configured.
            "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL2V2aWwuZXhhbXBsZSIsInN1YiI6ImJvYiJ9.c2ln",
            portcullis_tests::idp::TOKEN_TYPE_JWT,
            downstream,
            None,
        )
        .await
        .unwrap();
    let description = foreign.expect_error("invalid_grant").unwrap();
    assert!(description.contains("not trusted"), "{description}");

    // Revoking bob's grants revokes the subject access token too.
    idp.revoke_user("bob").await.unwrap();
    let revoked = idp
        .token_exchange(
            &client,
            tokens.access_token().unwrap(),
            TOKEN_TYPE_ACCESS_TOKEN,
            downstream,
            None,
        )
        .await
        .unwrap();
    revoked.expect_error("invalid_grant").unwrap();
}

#[tokio::test]
async fn token_exchange_accepts_jwts_of_a_trusted_issuer() {
    // Another issuer (standing in for the gateway) whose tokens name the user by email.
    let upstream_client = gateway_client();
    let other = TestIdp::start(
        IdpConfig::default()
            .account(IdpAccount::new("robert").email("bob@example.com"))
            .client(upstream_client.clone()),
    )
    .await
    .unwrap();
    let exchanger = IdpClient::service("exchanger", "exchanger-secret");
    let idp = TestIdp::start(
        IdpConfig::default()
            .client(exchanger.clone())
            .trusted_issuer(TrustedIssuer {
                subject_claim: Some("email".to_owned()),
                audience: Some("gateway".to_owned()),
                ..TrustedIssuer::with_jwks_uri(other.issuer(), &other.url("/jwks"))
            }),
    )
    .await
    .unwrap();

    let browser = HeadlessBrowser::new().unwrap().user("robert");
    let request = other
        .authorization_request(&upstream_client)
        .scope("openid email");
    let foreign_id_token = other
        .authorization_code_flow(&upstream_client, &request, &browser)
        .await
        .unwrap()
        .expect_ok()
        .unwrap()
        .id_token()
        .unwrap()
        .to_owned();

    let downstream = "https://calendar.example/api";
    let exchanged = idp
        .token_exchange(
            &exchanger,
            &foreign_id_token,
            TOKEN_TYPE_JWT,
            downstream,
            Some("calendar:read"),
        )
        .await
        .unwrap()
        .expect_ok()
        .unwrap();
    let claims = idp
        .verify_jwt(exchanged.access_token().unwrap(), Some(downstream))
        .await
        .unwrap();
    assert_eq!(claims["sub"], "bob", "mapped by email: {claims}");
    assert_eq!(claims["client_id"], "exchanger");

    // The same issuer's tokens for another audience are refused.
    let wrong_audience = other
        .client_credentials(&upstream_client, None, Some("https://elsewhere.example/"))
        .await
        .unwrap()
        .expect_ok()
        .unwrap();
    let refused = idp
        .token_exchange(
            &exchanger,
            wrong_audience.access_token().unwrap(),
            TOKEN_TYPE_JWT,
            downstream,
            None,
        )
        .await
        .unwrap();
    let description = refused.expect_error("invalid_grant").unwrap();
    assert!(description.contains("aud"), "{description}");
}

#[tokio::test]
async fn refresh_tokens_rotate_and_the_stats_count_every_refresh() {
    let (idp, client) = idp_with_gateway_client().await;
    let browser = HeadlessBrowser::new().unwrap().user("alice");
    let request = idp.authorization_request(&client).scope("openid");
    let tokens = idp
        .authorization_code_flow(&client, &request, &browser)
        .await
        .unwrap()
        .expect_ok()
        .unwrap();
    let first_refresh_token = tokens.refresh_token().unwrap().to_owned();

    let refreshed = idp
        .refresh(&client, &first_refresh_token)
        .await
        .unwrap()
        .expect_ok()
        .unwrap();
    let second_refresh_token = refreshed.refresh_token().unwrap().to_owned();
    assert_ne!(second_refresh_token, first_refresh_token, "rotated on use");

    let stats = idp.stats().await.unwrap();
    assert_eq!(stats.token_requests("authorization_code"), 1);
    assert_eq!(stats.refreshes(), 1, "exactly one refresh: {stats:?}");
    assert_eq!(stats.token_errors("refresh_token"), 0);

    // Reusing the rotated token fails and revokes the whole grant, the new token included.
    idp.refresh(&client, &first_refresh_token)
        .await
        .unwrap()
        .expect_error("invalid_grant")
        .unwrap();
    idp.refresh(&client, &second_refresh_token)
        .await
        .unwrap()
        .expect_error("invalid_grant")
        .unwrap();
    let stats = idp.stats().await.unwrap();
    assert_eq!(
        (stats.refreshes(), stats.token_errors("refresh_token")),
        (3, 2)
    );
    let recent = idp.recent_requests().await.unwrap();
    let reuse = recent
        .token
        .iter()
        .find(|request| request.status == 400)
        .unwrap();
    assert_eq!(
        reuse.error_detail.as_deref(),
        Some("refresh token already used"),
        "{reuse:?}"
    );

    idp.reset_stats().await.unwrap();
    assert_eq!(idp.stats().await.unwrap().refreshes(), 0);
}

#[tokio::test]
async fn revoking_a_user_makes_refresh_fail_with_invalid_grant() {
    let (idp, client) = idp_with_gateway_client().await;
    let mut refresh_tokens = Vec::new();
    for user in ["alice", "bob"] {
        let browser = HeadlessBrowser::new().unwrap().user(user);
        let request = idp.authorization_request(&client).scope("openid");
        let tokens = idp
            .authorization_code_flow(&client, &request, &browser)
            .await
            .unwrap()
            .expect_ok()
            .unwrap();
        refresh_tokens.push(tokens.refresh_token().unwrap().to_owned());
    }

    let outcome = idp.revoke_user("alice").await.unwrap();
    assert_eq!(outcome.grants, 1, "{outcome:?}");
    idp.refresh(&client, &refresh_tokens[0])
        .await
        .unwrap()
        .expect_error("invalid_grant")
        .unwrap();
    // Bob is untouched.
    let bob = idp
        .refresh(&client, &refresh_tokens[1])
        .await
        .unwrap()
        .expect_ok()
        .unwrap();

    // A disabled account cannot refresh either, nor log in.
    idp.upsert_account(&IdpAccount::new("bob").disabled(true))
        .await
        .unwrap();
    idp.refresh(&client, bob.refresh_token().unwrap())
        .await
        .unwrap()
        .expect_error("invalid_grant")
        .unwrap();
    let stats_before = idp.stats().await.unwrap();
    let browser = HeadlessBrowser::new().unwrap().user("bob");
    let request = idp.authorization_request(&client).scope("openid");
    let outcome = browser.authorize(&request.url()).await.unwrap();
    assert_eq!(outcome.param("error"), Some("access_denied"));
    assert_eq!(idp.stats().await.unwrap().logins, stats_before.logins);
}

#[tokio::test]
async fn clients_registered_at_run_time_and_by_dcr_can_authorize() {
    let idp = TestIdp::start(IdpConfig::default()).await.unwrap();

    // The gateway's callback URL is known only once it listens: register the client then.
    let late = IdpClient::confidential("late-gateway", "late-secret", &[REDIRECT_URI]);
    idp.upsert_client(&late).await.unwrap();
    let browser = HeadlessBrowser::new().unwrap();
    let request = idp.authorization_request(&late).scope("openid");
    let tokens = idp
        .authorization_code_flow(&late, &request, &browser)
        .await
        .unwrap()
        .expect_ok()
        .unwrap();
    let claims = jwt::claims_unverified(tokens.id_token().unwrap()).unwrap();
    assert_eq!(claims["sub"], "alice", "the default user");

    // Open dynamic client registration, as MCP clients do it (public native client).
    let registration: serde_json::Value = reqwest::Client::new()
        .post(idp.url("/reg"))
        .json(&serde_json::json!({
            "redirect_uris": ["http://localhost:33418/callback"],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "application_type": "native",
            "client_name": "dcr test",
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = registration["client_id"].as_str().unwrap();
    let public = IdpClient::public(client_id, &["http://localhost:33418/callback"]);
    let request = idp.authorization_request(&public);
    let tokens = idp
        .authorization_code_flow(&public, &request, &browser)
        .await
        .unwrap()
        .expect_ok()
        .unwrap();
    assert!(tokens.id_token().is_ok(), "the default scope is openid");
    assert_eq!(idp.stats().await.unwrap().registrations, 1);
}

#[tokio::test]
async fn a_restart_on_the_same_port_serves_rotated_keys() {
    let (mut idp, client) = idp_with_gateway_client().await;
    let issuer = idp.issuer().to_owned();
    let old_kids = idp.jwks_kids().await.unwrap();
    let old_jwks = idp.jwks().await.unwrap();
    let old_token = idp
        .client_credentials(&client, None, Some("https://api.example/"))
        .await
        .unwrap()
        .expect_ok()
        .unwrap()
        .access_token()
        .unwrap()
        .to_owned();

    // Same keys after a plain restart.
    idp.restart_on_same_port(KeyRotation::Keep).await.unwrap();
    assert_eq!(idp.issuer(), issuer);
    assert_eq!(idp.jwks_kids().await.unwrap(), old_kids);

    // Overlap: new keys sign, old ones still verify.
    idp.restart_on_same_port(KeyRotation::Overlap)
        .await
        .unwrap();
    let overlap_kids = idp.jwks_kids().await.unwrap();
    assert_eq!(overlap_kids.len(), 4, "{overlap_kids:?}");
    assert_eq!(&overlap_kids[2..], old_kids.as_slice());
    idp.verify_jwt(&old_token, None).await.unwrap();
    let new_token = idp
        .client_credentials(&client, None, Some("https://api.example/"))
        .await
        .unwrap()
        .expect_ok()
        .unwrap()
        .access_token()
        .unwrap()
        .to_owned();
    let (header, _) = jwt::decode_unverified(&new_token).unwrap();
    assert_eq!(header["kid"], overlap_kids[0].as_str());

    // Replace: only new keys; tokens signed before no longer verify.
    idp.restart_on_same_port(KeyRotation::Replace)
        .await
        .unwrap();
    assert_eq!(idp.issuer(), issuer);
    let new_kids = idp.jwks_kids().await.unwrap();
    assert_eq!(new_kids.len(), 2);
    assert!(new_kids.iter().all(|kid| !overlap_kids.contains(kid)));
    assert!(idp.verify_jwt(&old_token, None).await.is_err());
    assert!(jwt::verify(&old_token, &old_jwks, &issuer, None).is_ok());
}

#[tokio::test]
async fn the_python_sdk_runs_the_mcp_authorization_flow_through_the_headless_browser() {
    let idp = TestIdp::start(IdpConfig::default()).await.unwrap();
    let server = ProtectedMcpServer::start(&idp, &[]).await.unwrap();
    let browser = HeadlessBrowser::new().unwrap().user("bob");

    let report = python_mcp_client(server.url())
        .oauth(&browser)
        .call("whoami", json!({}))
        .run()
        .await
        .unwrap();
    report.expect_ok().unwrap();
    let whoami: Value =
        serde_json::from_str(report.call("whoami").unwrap().text().unwrap()).unwrap();
    assert_eq!(whoami["sub"], "bob", "{whoami}");
    assert_eq!(whoami["aud"], server.url().as_str());
    assert_eq!(whoami["groups"], json!(["sales"]));
    assert_eq!(report.http_statuses()[0], 401);

    let oauth = report.oauth.as_ref().unwrap();
    let server_origin = server.url().trim_end_matches("/mcp").to_owned();
    assert_eq!(
        oauth.metadata_urls(),
        [
            format!("{server_origin}/.well-known/oauth-protected-resource/mcp"),
            idp.url("/.well-known/oauth-authorization-server"),
        ]
    );
    assert_eq!(oauth.registration.as_deref(), Some("dcr"));
    assert_eq!(oauth.registration_requests.len(), 1);
    assert_eq!(
        oauth.token_request_statuses(),
        [("authorization_code", 200)]
    );
    assert_eq!(
        oauth.token_requests[0].resource.as_deref(),
        Some(server.url().as_str())
    );
    let authorization = &oauth.authorizations[0];
    assert_eq!(
        authorization.param("code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(
        authorization.param("resource").as_deref(),
        Some(server.url().as_str())
    );
    let callback = authorization.callback_params.as_ref().unwrap();
    assert_eq!(callback.get("iss").map(String::as_str), Some(idp.issuer()));
    assert!(!callback.contains_key("code"), "codes are never reported");
    let token = oauth.token.as_ref().unwrap();
    assert!(token.has_refresh_token);
    let claims = token.access_token_claims.as_ref().unwrap();
    assert_eq!(claims["aud"], server.url().as_str());
    assert_eq!(idp.interactions().await.unwrap().logins, 1);

    // A second run in the same browser profile: a new registration (tokens were in memory
    // only) but no second login.
    let again = python_mcp_client(server.url())
        .oauth(&browser)
        .call("whoami", json!({}))
        .run()
        .await
        .unwrap();
    again.expect_ok().unwrap();
    let interactions = idp.interactions().await.unwrap();
    assert_eq!(interactions.logins, 1, "{interactions:?}");
    assert_eq!(interactions.consents, 2, "one per registered client");

    // A pre-registered client skips registration.
    idp.upsert_client(&IdpClient::confidential(
        "python-client",
        "python-secret",
        &["http://127.0.0.1:33418/callback"],
    ))
    .await
    .unwrap();
    let alice = HeadlessBrowser::new().unwrap().user("alice");
    let preregistered = python_mcp_client(server.url())
        .oauth(&alice)
        .oauth_client("python-client", Some("python-secret"))
        .call("whoami", json!({}))
        .run()
        .await
        .unwrap();
    preregistered.expect_ok().unwrap();
    let oauth = preregistered.oauth.as_ref().unwrap();
    assert_eq!(oauth.registration.as_deref(), Some("preregistered"));
    assert!(oauth.registration_requests.is_empty());
    let whoami: Value =
        serde_json::from_str(preregistered.call("whoami").unwrap().text().unwrap()).unwrap();
    assert_eq!(whoami["sub"], "alice");
    assert_eq!(whoami["client_id"], "python-client");
}

#[tokio::test]
async fn the_python_sdk_refreshes_an_expired_access_token_exactly_once() {
    // Long enough for the first call to happen before expiry on a loaded machine.
    let idp = TestIdp::start(IdpConfig::default().access_token_ttl(Duration::from_secs(5)))
        .await
        .unwrap();
    let server = ProtectedMcpServer::start(&idp, &[]).await.unwrap();
    let browser = HeadlessBrowser::new().unwrap().user("alice");

    let report = python_mcp_client(server.url())
        .oauth(&browser)
        .call("echo", json!({"message": "before"}))
        .pause_between_calls(Duration::from_secs(6))
        .call("echo", json!({"message": "after expiry"}))
        .run()
        .await
        .unwrap();
    report.expect_ok().unwrap();
    let oauth = report.oauth.as_ref().unwrap();
    assert_eq!(
        oauth.token_request_statuses(),
        [("authorization_code", 200), ("refresh_token", 200)],
        "{oauth:?}"
    );
    let stats = idp.stats().await.unwrap();
    assert_eq!(stats.refreshes(), 1, "{stats:?}");
    assert_eq!(stats.logins, 1);
}

#[tokio::test]
async fn mcp_remote_uses_the_headless_browser_as_its_browser() {
    let idp = TestIdp::start(IdpConfig::default()).await.unwrap();
    let server = ProtectedMcpServer::start(&idp, &[]).await.unwrap();
    let browser = HeadlessBrowser::new().unwrap().user("bob");

    let run = mcp_remote_client_oauth(&server.url(), &browser, &[])
        .await
        .unwrap();
    run.expect_success().unwrap();
    assert!(
        run.run.stderr.contains("\"name\": \"whoami\""),
        "{}",
        run.run.stderr
    );
    assert_eq!(run.browser_runs.len(), 1, "{:#?}", run.browser_runs);
    let trip = &run.browser_runs[0];
    assert_eq!(trip.delivered_status, Some(200), "{trip:#?}");
    assert_eq!(trip.param("iss"), Some(idp.issuer()));
    let interactions = idp.interactions().await.unwrap();
    assert_eq!(interactions.logins_by_user.get("bob"), Some(&1));
    assert_eq!(idp.stats().await.unwrap().registrations, 1);
}

/// A consent page shaped like the gateway's will be: a `__Host-` cookie, a CSRF field, and
/// `decision` buttons; the POST checks all three and the Origin before redirecting.
async fn start_consent_page() -> String {
    async fn page(Query(query): Query<HashMap<String, String>>) -> impl IntoResponse {
        let html = format!(
            r#"<!doctype html><html><body><h1>Allow access?</h1>
            <form method="post" action="/consent">
              <input type="hidden" name="csrf" value="csrf-123">
              <input type="hidden" name="redirect_uri" value="{}">
              <input type="hidden" name="state" value="{}">
              <input type="checkbox" name="remember" value="yes" checked>
              <button type="submit" name="decision" value="deny">Deny</button>
              <button type="submit" name="decision" value="approve">Allow</button>
            </form></body></html>"#,
            query["redirect_uri"], query["state"]
        );
        (
            [(
                header::SET_COOKIE,
                "__Host-consent=pending; Secure; HttpOnly; Path=/; SameSite=Lax",
            )],
            Html(html),
        )
    }
    async fn submit(
        headers: HeaderMap,
        Form(form): Form<HashMap<String, String>>,
    ) -> axum::response::Response {
        let cookie = headers
            .get(header::COOKIE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        let host = headers[header::HOST].to_str().unwrap();
        let origin_ok = headers
            .get(header::ORIGIN)
            .is_some_and(|origin| origin.to_str().unwrap() == format!("http://{host}"));
        if !cookie.contains("__Host-consent=pending")
            || !origin_ok
            || form.get("csrf").map(String::as_str) != Some("csrf-123")
            || form.get("remember").map(String::as_str) != Some("yes")
        {
            return (
                StatusCode::FORBIDDEN,
                format!("refused: cookie {cookie:?}, form {form:?}"),
            )
                .into_response();
        }
        let outcome = match form["decision"].as_str() {
            "approve" => "code=granted".to_owned(),
            other => format!("error=access_denied&error_description={other}"),
        };
        Redirect::to(&format!(
            "{}?{outcome}&state={}",
            form["redirect_uri"], form["state"]
        ))
        .into_response()
    }
    let app = axum::Router::new()
        .route("/authorize", get(page))
        .route("/consent", axum::routing::post(submit));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

#[tokio::test]
async fn the_browser_submits_consent_forms_and_waits_for_a_late_callback_listener() {
    let consent_page = start_consent_page().await;
    let callback_port = pick_free_loopback_port().unwrap();
    let callback = format!("http://127.0.0.1:{callback_port}/callback");
    let authorize_url = |state: &str| {
        format!("{consent_page}/authorize?redirect_uri={callback}&state={state}&client_id=x")
    };

    let browser = HeadlessBrowser::new().unwrap();
    let approved = browser.authorize(&authorize_url("one")).await.unwrap();
    assert_eq!(approved.param("code"), Some("granted"), "{approved:#?}");
    assert_eq!(approved.param("state"), Some("one"));
    let post = approved
        .hops
        .iter()
        .find(|hop| hop.method == "POST")
        .unwrap();
    assert_eq!(post.status, Some(303), "{approved:#?}");

    let denying = HeadlessBrowser::with_cookie_jar(browser.cookie_jar()).consent(Consent::Deny);
    let denied = denying.authorize(&authorize_url("two")).await.unwrap();
    assert_eq!(denied.param("error"), Some("access_denied"), "{denied:#?}");

    // Delivery: the client's listener binds only after the browser reached the callback,
    // as mcp-remote's does; the browser retries until it answers.
    let hits = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&hits);
    let late_listener = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let app = axum::Router::new().route(
            "/callback",
            get(
                move |Query(query): Query<HashMap<String, String>>| async move {
                    recorded.lock().unwrap().push(query);
                    "authorized, you may close this window"
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", callback_port))
            .await
            .unwrap();
        axum::serve(listener, app).await
    });
    let delivered = browser
        .authorize_and_deliver(&authorize_url("three"))
        .await
        .unwrap();
    assert_eq!(delivered.delivered_status, Some(200), "{delivered:#?}");
    let hits = hits.lock().unwrap().clone();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].get("state").map(String::as_str), Some("three"));
    late_listener.abort();
}

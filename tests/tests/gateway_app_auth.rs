//! App authentication through a real node, judged by what the upstream received: for each
//! kind the upstream (echo-upstream's `echo_headers`) sees exactly the configured credential
//! and nothing else of the caller's credentials: no cookie, no caller `Authorization`
//! (except Passthrough), no header matching the restricted pattern `x-internal-*`, and a
//! credential the caller tried to forge is replaced, not doubled.
//!
//! The expectation is computed from the same client talking to the upstream directly, so
//! the test does not depend on which headers the client library happens to send: through
//! the node, the upstream must see the direct set minus the stripped headers, plus the
//! credential, with every other value unchanged.
//!
//! Afterwards no secret (configured credentials, caller credentials, admin and node tokens)
//! may appear in plaintext in the control plane's or the node's logs, the event log, or the
//! node's persisted snapshot.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use portcullis_tests::echo_upstream::EchoedRequest;
use portcullis_tests::gateway::servers::{
    api_key_in_header, api_key_in_query, basic, bearer, passthrough, server,
};
use portcullis_tests::{EchoUpstream, Gateway, python_mcp_client};
use reqwest::Url;
use serde_json::json;

const CALLER_AUTHORIZATION: &str = "Bearer caller-token-7Hq2";
const CALLER_COOKIE: &str = "session=caller-cookie-Zk41";
const CALLER_PROXY_AUTHORIZATION: &str = "Basic cHJveHktdXNlcjpwcm94eS1Xczgy";
const INTERNAL_SECRET: &str = "internal-secret-Pw09";
const INTERNAL_TRACE: &str = "internal-trace-Lm33";
const FORGED_API_KEY: &str = "forged-key-Qa77";

const HEADER_KEY: &str = "header-key-Vb21";
const QUERY_KEY: &str = "query key/with+specials&=1";
const BEARER_TOKEN: &str = "bearer-token-Xc55";
const BASIC_USER: &str = "svc-portcullis";
const BASIC_PASSWORD: &str = "basic-password-Rt18";

/// What the caller sends on every request: its own credentials, a restricted header in two
/// spellings, an attempt to set the upstream API key itself, and an ordinary header.
fn caller_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Authorization", CALLER_AUTHORIZATION),
        ("Cookie", CALLER_COOKIE),
        ("Proxy-Authorization", CALLER_PROXY_AUTHORIZATION),
        ("X-Internal-Secret", INTERNAL_SECRET),
        ("X-INTERNAL-Trace", INTERNAL_TRACE),
        ("X-Api-Key", FORGED_API_KEY),
        ("X-Visible", "visible-value"),
    ]
}

/// Headers the node must not forward from the caller: its credentials, the restricted
/// pattern, and `Connection`, which describes the client's hop only.
fn stripped(name: &str) -> bool {
    name == "authorization"
        || name == "cookie"
        || name == "proxy-authorization"
        || name.starts_with("x-internal-")
        || name == "connection"
}

/// Headers whose values legitimately differ between two sessions or two hops.
fn varies_per_request(name: &str) -> bool {
    name == "mcp-session-id" || name == "content-length"
}

async fn echoed_request(url: String) -> EchoedRequest {
    let mut client = python_mcp_client(url);
    for (name, value) in caller_headers() {
        client = client.header(name, value);
    }
    let report = client.call("echo_headers", json!({})).run().await.unwrap();
    report.expect_ok().unwrap();
    serde_json::from_str(report.call("echo_headers").unwrap().text().unwrap()).unwrap()
}

fn query_pairs(echoed: &EchoedRequest) -> Vec<(String, String)> {
    let query = echoed.query.as_deref().unwrap_or_default();
    Url::parse(&format!("http://upstream.test/?{query}"))
        .unwrap()
        .query_pairs()
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect()
}

/// Checks `through_node` against `direct`: the same headers and values, minus the stripped
/// ones, with `credential` (a header name and its only value) added or replacing the
/// caller's, and no caller secret anywhere else.
fn assert_forwarded(
    kind: &str,
    direct: &EchoedRequest,
    through_node: &EchoedRequest,
    credential: Option<(&str, &str)>,
) {
    let credential_name = credential.map(|(name, _)| name);
    let mut expected_names: BTreeSet<&str> = direct
        .headers
        .keys()
        .map(String::as_str)
        .filter(|name| !stripped(name))
        .collect();
    expected_names.extend(credential_name);
    let actual_names: BTreeSet<&str> = through_node.headers.keys().map(String::as_str).collect();
    assert_eq!(
        actual_names, expected_names,
        "{kind}: header names the upstream received through the node\n\
         direct: {direct:#?}\nthrough the node: {through_node:#?}"
    );

    for (name, values) in &through_node.headers {
        if Some(name.as_str()) == credential_name {
            let (_, expected_value) = credential.unwrap();
            assert_eq!(
                values,
                &[expected_value.to_owned()],
                "{kind}: the upstream must get exactly one {name}, the configured one"
            );
        } else if !varies_per_request(name) {
            assert_eq!(
                Some(values),
                direct.headers.get(name),
                "{kind}: {name} changed on the way through the node"
            );
        }
        for value in values {
            for caller_secret in [
                CALLER_COOKIE,
                CALLER_PROXY_AUTHORIZATION,
                INTERNAL_SECRET,
                INTERNAL_TRACE,
            ] {
                assert!(
                    !value.contains(caller_secret),
                    "{kind}: {name} carries a caller secret: {value}"
                );
            }
            if Some(name.as_str()) != credential_name {
                assert!(
                    !value.contains("caller-token-7Hq2"),
                    "{kind}: {name} carries the caller's token: {value}"
                );
            }
        }
    }
}

#[tokio::test]
async fn each_app_auth_kind_sends_exactly_its_credential_upstream() {
    let upstream = EchoUpstream::start(&[]).await.unwrap();
    let upstream_url = upstream.url();
    let mut gateway = Gateway::start(1).await.unwrap();
    for (name, kind) in [
        ("key-header", api_key_in_header("x-api-key", HEADER_KEY)),
        ("key-query", api_key_in_query("api_key", QUERY_KEY)),
        ("bearer", bearer(BEARER_TOKEN)),
        ("basic", basic(BASIC_USER, BASIC_PASSWORD)),
        ("passthrough", passthrough()),
    ] {
        gateway
            .create_server(server(name, &upstream_url, kind))
            .await
            .unwrap();
    }
    let node = gateway.node(0);

    let (direct, key_header, key_query, bearer, basic, passthrough) = tokio::join!(
        echoed_request(upstream_url.clone()),
        echoed_request(node.mcp_url("key-header")),
        echoed_request(format!(
            "{}?keep=1&api_key=forged-query-key",
            node.mcp_url("key-query")
        )),
        echoed_request(node.mcp_url("bearer")),
        echoed_request(node.mcp_url("basic")),
        echoed_request(node.mcp_url("passthrough")),
    );
    // The direct request is the reference: it carried everything the caller sent.
    assert_eq!(direct.header("authorization"), Some(CALLER_AUTHORIZATION));
    assert_eq!(direct.header("cookie"), Some(CALLER_COOKIE));
    assert_eq!(
        direct.header("proxy-authorization"),
        Some(CALLER_PROXY_AUTHORIZATION)
    );
    assert_eq!(direct.header("x-internal-trace"), Some(INTERNAL_TRACE));
    assert_eq!(direct.header("x-api-key"), Some(FORGED_API_KEY));

    // API key in a header: replaces the caller's forged one.
    assert_forwarded(
        "api key in header",
        &direct,
        &key_header,
        Some(("x-api-key", HEADER_KEY)),
    );
    assert_eq!(key_header.query, None);

    // API key in the query: the caller's header passes (it is not a credential here), and
    // the query carries the configured key once, replacing the caller's, encoded.
    assert_forwarded("api key in query", &direct, &key_query, None);
    assert_eq!(
        query_pairs(&key_query),
        [
            ("keep".to_owned(), "1".to_owned()),
            ("api_key".to_owned(), QUERY_KEY.to_owned())
        ]
    );

    assert_forwarded(
        "bearer",
        &direct,
        &bearer,
        Some(("authorization", &format!("Bearer {BEARER_TOKEN}"))),
    );
    assert_eq!(bearer.query, None);

    let basic_credentials = format!(
        "Basic {}",
        base64_encode(format!("{BASIC_USER}:{BASIC_PASSWORD}").as_bytes())
    );
    assert_forwarded(
        "basic",
        &direct,
        &basic,
        Some(("authorization", &basic_credentials)),
    );

    // Passthrough: the caller's own Authorization, exactly as sent, and nothing else.
    assert_forwarded(
        "passthrough",
        &direct,
        &passthrough,
        Some(("authorization", CALLER_AUTHORIZATION)),
    );
    assert_eq!(passthrough.query, None);

    // Nothing secret was written in plaintext by the gateway: not in a log line of the
    // control plane or the node, not in the event log, not in the node's snapshot file.
    let mut secrets = vec![
        HEADER_KEY.to_owned(),
        QUERY_KEY.to_owned(),
        // As it travels in the upstream URL.
        "query+key%2Fwith%2Bspecials%26%3D1".to_owned(),
        BEARER_TOKEN.to_owned(),
        BASIC_PASSWORD.to_owned(),
        basic_credentials["Basic ".len()..].to_owned(),
        "caller-token-7Hq2".to_owned(),
        "caller-cookie-Zk41".to_owned(),
        CALLER_PROXY_AUTHORIZATION["Basic ".len()..].to_owned(),
        INTERNAL_SECRET.to_owned(),
        gateway.files.admin_token().to_owned(),
        gateway.files.node_token().to_owned(),
    ];
    secrets.retain(|secret| !secret.is_empty());
    let mut places: Vec<PathBuf> = vec![
        node.process().stdout_path().to_owned(),
        node.process().stderr_path().to_owned(),
        gateway.control_plane.process().stdout_path().to_owned(),
        gateway.control_plane.process().stderr_path().to_owned(),
    ];
    // The installation's folder, except the files that hold a key or token on purpose.
    places.extend(
        files_under(gateway.files.folder())
            .into_iter()
            .filter(|path| {
                let name = path.file_name().unwrap().to_string_lossy();
                !(name.ends_with(".key") || name == "node.token")
            }),
    );
    assert!(
        places.iter().any(|path| path.ends_with("snapshot.bin")),
        "the node persisted its snapshot: {places:?}"
    );
    for place in &places {
        let contents = std::fs::read(place).unwrap();
        for secret in &secrets {
            assert!(
                !contains(&contents, secret.as_bytes()),
                "{} holds a secret in plaintext ({}...)",
                place.display(),
                &secret[..4]
            );
        }
    }
}

fn files_under(folder: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![folder.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, _)) = needle.split_first() else {
        return true;
    };
    haystack
        .iter()
        .enumerate()
        .filter(|&(_, &byte)| byte == first)
        .any(|(start, _)| haystack[start..].starts_with(needle))
}

/// Standard base64 with padding (RFC 4648), for the expected Basic credentials.
fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut output = String::new();
    for chunk in input.chunks(3) {
        let bytes = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let group = (u32::from(bytes[0]) << 16) | (u32::from(bytes[1]) << 8) | u32::from(bytes[2]);
        for index in 0..4 {
            if index <= chunk.len() {
                output.push(char::from(
                    ALPHABET[(group >> (18 - 6 * index)) as usize & 63],
                ));
            } else {
                output.push('=');
            }
        }
    }
    output
}

#[test]
fn base64_matches_rfc_4648_examples() {
    assert_eq!(base64_encode(b"f"), "Zg==");
    assert_eq!(base64_encode(b"fo"), "Zm8=");
    assert_eq!(base64_encode(b"foo"), "Zm9v");
    assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
}

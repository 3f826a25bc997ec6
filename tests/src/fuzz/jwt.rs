//! `jwt_token`: bearer tokens checked by the node's JWT validation
//! (`portcullis_data_plane::jwt`) against a fixed JWKS, with a fixed issuer, audience and
//! clock.
//!
//! Some inputs are taken as raw token text. The others are built: a header and
//! claims chosen from good and bad values, signed by a key of the fixed JWKS (whose private
//! halves are test fixtures below), then possibly tampered with. For a built token the
//! harness knows whether it must be accepted, and checks that it is, so both false accepts
//! and false refusals are found. For every token the validator (with its verified-token
//! cache) and the step-by-step pipeline (`token::parse`, `KeySet::select`, signature,
//! `check_claims`) must agree, and accepted claims must satisfy the rules.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use arbitrary::Unstructured;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use portcullis_data_plane::jwt::keys::KeySet;
use portcullis_data_plane::jwt::remote::{FetchError, FetchFuture, JwksFetcher};
use portcullis_data_plane::jwt::token::{self, ClaimRules, VerifiedClaims};
use portcullis_data_plane::jwt::{
    JwksPolicy, JwksRegistry, JwtValidator, LEEWAY_SECS, TokenRejection,
};
use portcullis_shared::config::{JwksSource, JwtValidation};
use serde_json::{Map, Value, json};

use crate::fuzz::{bounded_string, pick};

/// The validation clock: every token is checked at this instant.
pub const NOW_UNIX: i64 = 1_800_000_000;
pub const ISSUER: &str = "https://idp.example.com";
pub const AUDIENCE: &str = "mcp-gateway";

/// The Ed25519 fixture key's seed. Test material only: it signs fuzz tokens.
const ED25519_SEED: [u8; 32] = *b"portcullis-fuzz-ed25519-seed-32b";
pub const ED25519_KID: &str = "fuzz-ed";
/// A P-256 key as PKCS#8, base64. Test material only: it signs fuzz tokens.
const EC_PKCS8_BASE64: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgIUgz08f5bJ9D/wuRVhlkpXetHEOZl/ZM/Q+Yy1X7FnahRANCAAQy7k/DpGrwubPIgcoC+6/77yOUphkasD2Wy2INsBrr934eK8zGJZmh9LD1h4s7Y/71L8omMXf2NyJYld3gNDhV";
pub const EC_KID: &str = "fuzz-ec";
/// Public keys without a private half here: a second P-256 key (so ES256 tokens without
/// `kid` are ambiguous) and a 2048-bit RSA key (RS*/PS* selection and signature checks).
const EC_OTHER_JWK: &str = r#"{"kty":"EC","kid":"fuzz-ec-2","crv":"P-256","x":"lszgEuTm8JlQHxUSulqI9WVCzKSVHH9CLrqPZx6pffs","y":"YOhzY6m1oYTDcYATXUYUZlc0-6sECJmroDi1QRTHrx4"}"#;
const RSA_JWK: &str = r#"{"kty":"RSA","kid":"fuzz-rsa","use":"sig","e":"AQAB","n":"mDB3ejbAGDZvJV5NiwbSLaMdrIHLIZvdTBvX_wD4h8bHAS1BJTdGdDVDObuAryBAs4S_Dzc6YjfBSqgbXBppmjdVJTgjRt2ltno-4D31VckNC7p4pjMI79bozPjw7sm6mJ-r9V87WlN5Eh6LoUGjh9bJEQPXbRzRzQj0_Nfkfg5oGv6-Yo0OcqorMi9l8v1Bfqzby8aanxrYw3WRuE0BGFZ0SH6jvW21AsSS9qvn6n5xUbrq3xZnzzQ_zY2wY1km_WlIe4fV0MXU_mAwi9ZC7Q1anqStjLI6vdQLvp1H99j9ZAQz1wDXO9XYP-jssQMMUnIi7kVy-eVTFBUIQO8xFQ"}"#;

/// The keys, the JWKS document that publishes them, and a registry that never fetches.
pub struct Fixture {
    ed25519: Ed25519KeyPair,
    ec: EcdsaKeyPair,
    pub jwks: String,
    keys: KeySet,
    registry: JwksRegistry,
}

/// A fetcher for a registry that must never fetch: every JWKS here is inline.
pub struct NeverFetch;

impl JwksFetcher for NeverFetch {
    fn fetch<'a>(&'a self, _url: &'a url::Url) -> FetchFuture<'a> {
        Box::pin(async { Err(FetchError::Status(http::StatusCode::SERVICE_UNAVAILABLE)) })
    }
}

/// The fixture, built once per process.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let ed25519 = Ed25519KeyPair::from_seed_unchecked(&ED25519_SEED).expect("a valid seed");
        let pkcs8 = STANDARD.decode(EC_PKCS8_BASE64).expect("base64");
        let ec = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
            .expect("a valid PKCS#8 P-256 key");
        let point = ec.public_key().as_ref();
        let (x, y) = point[1..].split_at(32);
        let jwks = json!({"keys": [
            {"kty": "OKP", "kid": ED25519_KID, "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(ed25519.public_key().as_ref())},
            {"kty": "EC", "kid": EC_KID, "crv": "P-256", "alg": "ES256", "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)},
            serde_json::from_str::<Value>(EC_OTHER_JWK).expect("JSON"),
            serde_json::from_str::<Value>(RSA_JWK).expect("JSON"),
        ]})
        .to_string();
        let parsed = KeySet::parse(jwks.as_bytes()).expect("the fixture JWKS parses");
        assert!(parsed.skipped.is_empty(), "{:?}", parsed.skipped);
        Fixture {
            ed25519,
            ec,
            jwks,
            keys: parsed.keys,
            registry: JwksRegistry::with_fetcher(JwksPolicy::default(), Arc::new(NeverFetch)),
        }
    })
}

impl Fixture {
    /// A validator as a node compiles it for a server with this JWKS inline.
    pub fn validator(&self) -> JwtValidator {
        JwtValidator::compile(
            &JwtValidation {
                jwks: JwksSource::Inline(self.jwks.clone()),
                issuer: Some(ISSUER.to_owned()),
                audience: Some(AUDIENCE.to_owned()),
            },
            &self.registry,
            "fuzz",
        )
        .expect("the fixture JWKS compiles")
    }

    /// `header.claims.signature` for raw header and claims bytes, signed by `signer`.
    pub fn sign(&self, signer: Signer, header: &[u8], claims: &[u8]) -> String {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature = match signer {
            Signer::Ed25519 => self
                .ed25519
                .sign(signing_input.as_bytes())
                .as_ref()
                .to_vec(),
            Signer::Ec => self
                .ec
                .sign(&SystemRandom::new(), signing_input.as_bytes())
                .expect("ECDSA signing")
                .as_ref()
                .to_vec(),
        };
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

/// A fixture key with a private half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    Ed25519,
    Ec,
}

impl Signer {
    pub fn algorithm(self) -> &'static str {
        match self {
            Signer::Ed25519 => "EdDSA",
            Signer::Ec => "ES256",
        }
    }

    pub fn kid(self) -> &'static str {
        match self {
            Signer::Ed25519 => ED25519_KID,
            Signer::Ec => EC_KID,
        }
    }
}

/// Claims every rule accepts at [`NOW_UNIX`].
pub fn good_claims() -> Map<String, Value> {
    let Value::Object(claims) = json!({
        "sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": NOW_UNIX + 600,
        "email": "alice@example.com", "groups": ["eng"]
    }) else {
        unreachable!()
    };
    claims
}

/// The first byte picks how the rest is read: 0 as the token's text, anything else as the
/// choices that build a token (see [`token_from`]).
pub fn fuzz(data: &[u8]) {
    match data.split_first() {
        None => {}
        Some((0, text)) => check_token(&String::from_utf8_lossy(text), None),
        Some((_, choices)) => {
            let (token, expected) = token_from(&mut Unstructured::new(choices));
            check_token(&token, expected);
        }
    }
}

/// The input of [`fuzz`] that checks `token` as it is.
pub fn encode_raw(token: &str) -> Vec<u8> {
    let mut bytes = vec![0];
    bytes.extend_from_slice(token.as_bytes());
    bytes
}

/// A value choice: the JSON to set (`None`: leave the field out) and whether it is
/// acceptable.
type Choice = (Option<Value>, bool);

fn choose_field(
    input: &mut Unstructured<'_>,
    object: &mut Map<String, Value>,
    name: &str,
    choices: &[Choice],
) -> bool {
    let (value, acceptable) = pick(input, choices);
    match value {
        Some(value) => {
            object.insert(name.to_owned(), value.clone());
        }
        None => {
            object.remove(name);
        }
    }
    *acceptable
}

/// A token built from the fuzzer's bytes, and whether it must be accepted (`None` when
/// the harness cannot tell: the fuzzer's own bytes replaced the header or the claims).
pub fn token_from(input: &mut Unstructured<'_>) -> (String, Option<bool>) {
    let fixture = fixture();
    let signer = *pick(input, &[Signer::Ed25519, Signer::Ec]);
    let mut known = true;
    let mut acceptable = true;

    let mut header = Map::new();
    acceptable &= choose_field(
        input,
        &mut header,
        "alg",
        &[
            (Some(signer.algorithm().into()), true),
            (Some("none".into()), false),
            (Some("NONE".into()), false),
            (Some("HS256".into()), false),
            (Some("RS256".into()), false),
            (Some("PS512".into()), false),
            (Some("ES384".into()), false),
            (
                Some(
                    if signer == Signer::Ec {
                        "EdDSA"
                    } else {
                        "ES256"
                    }
                    .into(),
                ),
                false,
            ),
            (Some("".into()), false),
            (Some(json!(256)), false),
            (None, false),
        ],
    );
    // Without kid, EdDSA has one candidate key and ES256 two (so it is refused).
    acceptable &= choose_field(
        input,
        &mut header,
        "kid",
        &[
            (Some(signer.kid().into()), true),
            (None, signer == Signer::Ed25519),
            (Some("unknown".into()), false),
            (Some("fuzz-rsa".into()), false),
            (
                Some(
                    if signer == Signer::Ec {
                        "fuzz-ec-2"
                    } else {
                        "fuzz-ec"
                    }
                    .into(),
                ),
                false,
            ),
            (Some(json!(1)), false),
        ],
    );
    acceptable &= choose_field(
        input,
        &mut header,
        "typ",
        &[
            (None, true),
            (Some("JWT".into()), true),
            (Some("at+jwt".into()), true),
            (Some(json!(["JWT"])), false),
        ],
    );
    acceptable &= choose_field(
        input,
        &mut header,
        "crit",
        &[(None, true), (Some(json!(["exp"])), false)],
    );
    // Key-carrying headers are ignored: keys come only from the configured JWKS.
    choose_field(
        input,
        &mut header,
        "jku",
        &[
            (None, true),
            (Some("https://evil.example/jwks".into()), true),
        ],
    );

    let mut claims = good_claims();
    acceptable &= choose_field(
        input,
        &mut claims,
        "exp",
        &[
            (Some(json!(NOW_UNIX + 600)), true),
            (Some(json!(NOW_UNIX as f64 + 10.5)), true),
            (Some(json!(NOW_UNIX - LEEWAY_SECS + 1)), true),
            (Some(json!(NOW_UNIX - LEEWAY_SECS)), false),
            (Some(json!(u64::MAX)), true),
            (Some(json!(i64::MIN)), false),
            (Some(json!(-1.0e300)), false),
            (Some(json!(1.0e300)), true),
            (Some(json!("tomorrow")), false),
            (Some(Value::Null), false),
            (Some(json!(true)), false),
            (None, false),
        ],
    );
    acceptable &= choose_field(
        input,
        &mut claims,
        "nbf",
        &[
            (None, true),
            (Some(json!(NOW_UNIX)), true),
            (Some(json!(NOW_UNIX + LEEWAY_SECS)), true),
            (Some(json!(NOW_UNIX + LEEWAY_SECS + 1)), false),
            (Some(json!(i64::MAX)), false),
            (Some(json!(i64::MIN)), true),
            (Some(json!("now")), false),
            (Some(Value::Null), false),
        ],
    );
    acceptable &= choose_field(
        input,
        &mut claims,
        "iss",
        &[
            (Some(ISSUER.into()), true),
            (Some(format!("{ISSUER}/").into()), false),
            (Some(json!([ISSUER])), false),
            (None, false),
        ],
    );
    acceptable &= choose_field(
        input,
        &mut claims,
        "aud",
        &[
            (Some(AUDIENCE.into()), true),
            (Some(json!(["other", AUDIENCE])), true),
            (Some(json!(["other"])), false),
            (Some(json!([])), false),
            (Some("MCP-GATEWAY".into()), false),
            (Some(json!({"aud": AUDIENCE})), false),
            (None, false),
        ],
    );
    acceptable &= choose_field(
        input,
        &mut claims,
        "sub",
        &[
            (Some("alice".into()), true),
            (Some("00u1ab|ü\u{0}".into()), true),
            (Some("".into()), false),
            (Some(json!(42)), false),
            (None, false),
        ],
    );
    // Free-form claims never decide acceptance.
    let email = bounded_string(input, 64);
    claims.insert("email".to_owned(), email.into());
    choose_field(
        input,
        &mut claims,
        "groups",
        &[
            (Some(json!(["eng", 7, null, "ops"])), true),
            (Some("eng".into()), true),
            (Some(json!(12)), true),
            (None, true),
        ],
    );

    let mut header_bytes = serde_json::to_vec(&header).expect("JSON");
    let mut claims_bytes = serde_json::to_vec(&claims).expect("JSON");
    // Sometimes the fuzzer's own bytes replace the header or the claims.
    if input.ratio(1, 8).unwrap_or(false) {
        header_bytes = bounded_string(input, 512).into_bytes();
        known = false;
    }
    if input.ratio(1, 8).unwrap_or(false) {
        claims_bytes = bounded_string(input, 2048).into_bytes();
        known = false;
    }
    let mut token = fixture.sign(signer, &header_bytes, &claims_bytes);

    match input.int_in_range(0..=7u8).unwrap_or(0) {
        // Flip one character of the signature.
        1 => {
            let last = token.pop().expect("a token is not empty");
            token.push(if last == 'A' { 'B' } else { 'A' });
            acceptable = false;
        }
        // Swap in other claims under the same signature.
        2 => {
            let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
            claims.insert("sub".to_owned(), "mallory".into());
            parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("JSON"));
            token = parts.join(".");
            acceptable = false;
        }
        // Drop the signature, or add a fourth part.
        3 => {
            token.truncate(token.rfind('.').expect("three parts") + 1);
            acceptable = false;
        }
        4 => {
            token.push_str(".e30");
            acceptable = false;
        }
        // Padding is not base64url without padding.
        5 => {
            token.push('=');
            acceptable = false;
        }
        _ => {}
    }
    (token, known.then_some(acceptable))
}

/// Runs a future that must complete without waiting (inline keys never fetch).
fn resolve<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("validation with an inline JWKS never waits"),
    }
}

/// The validator's steps, one by one, on the fixture's key set.
fn stepwise(token: &str) -> Result<VerifiedClaims, TokenRejection> {
    let fixture = fixture();
    let unverified = token::parse(token)?;
    let candidates = fixture
        .keys
        .select(unverified.key_id.as_deref(), unverified.algorithm)?;
    unverified.verify_signature(&candidates)?;
    let rules = ClaimRules {
        issuer: Some(ISSUER),
        audience: Some(AUDIENCE),
        leeway_secs: LEEWAY_SECS,
    };
    token::check_claims(&unverified.verified_payload()?, rules, NOW_UNIX)
}

/// Validates `token` both ways and checks the outcome. `expected`: whether it must be
/// accepted, when the harness knows.
pub fn check_token(token: &str, expected: Option<bool>) {
    let validator = fixture().validator();
    let first = resolve(validator.validate(token, NOW_UNIX)).map(|claims| (*claims).clone());
    // The second call may be answered by the verified-token cache; it must say the same.
    let second = resolve(validator.validate(token, NOW_UNIX)).map(|claims| (*claims).clone());
    assert_eq!(first, second, "a repeated validation changed its answer");
    assert_eq!(
        first,
        stepwise(token),
        "the validator and its steps disagree"
    );
    if let Some(expected) = expected {
        assert_eq!(
            first.is_ok(),
            expected,
            "token {token} was {}: {first:?}",
            if first.is_ok() { "accepted" } else { "refused" }
        );
    }
    if let Ok(claims) = &first {
        check_accepted(claims);
    }
}

/// What the rules promise about any accepted token.
fn check_accepted(claims: &VerifiedClaims) {
    assert!(
        !claims.subject.is_empty(),
        "an accepted token has a subject"
    );
    assert_eq!(
        claims.claims.get("sub"),
        Some(&Value::from(claims.subject.clone()))
    );
    assert!(
        NOW_UNIX < claims.expires_at_unix.saturating_add(LEEWAY_SECS),
        "an accepted token is not expired: exp {}",
        claims.expires_at_unix
    );
    assert_eq!(claims.issuer.as_deref(), Some(ISSUER));
    let audience_ok = match claims.claims.get("aud") {
        Some(Value::String(audience)) => audience == AUDIENCE,
        Some(Value::Array(audiences)) => audiences.iter().any(|a| a == AUDIENCE),
        _ => false,
    };
    assert!(audience_ok, "an accepted token names the audience");
}

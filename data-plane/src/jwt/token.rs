//! The compact JWS form of a token (`header.payload.signature`) and the claim checks.
//!
//! Order matters: the header is read first (cheap, and enough to refuse `none`, HMAC and
//! unknown algorithms before any key is looked up), then the signature is checked, and only
//! then is the payload read: nothing in an unverified payload is trusted or reported.
//!
//! Header parameters that point at keys (`jku`, `jwk`, `x5u`, `x5c`) are ignored: keys come
//! only from the configured JWKS. A `crit` header is refused, since this node understands
//! no extension a token could mark critical (RFC 7515 section 4.1.11).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::jwt::TokenRejection;
use crate::jwt::keys::{SigningAlgorithm, VerificationKey};

/// A token split into its parts, with its header read but nothing verified.
#[derive(Debug)]
pub struct UnverifiedToken<'a> {
    pub algorithm: SigningAlgorithm,
    pub key_id: Option<String>,
    /// The `typ` header (RFC 7515 section 4.1.9), for verifiers that require one.
    pub token_type: Option<String>,
    /// `header.payload` as sent: the bytes the signature covers.
    signing_input: &'a str,
    payload: &'a str,
    signature: Vec<u8>,
}

/// The header fields the node reads. Unknown fields are ignored; a field given twice is a
/// parse error (serde refuses duplicates in a struct), so `alg` cannot be smuggled twice.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

fn decode(part: &str, what: &'static str) -> Result<Vec<u8>, TokenRejection> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenRejection::Malformed(what))
}

/// Splits and reads the header. Refuses anything that is not a three-part JWS with an
/// accepted algorithm.
pub fn parse(token: &str) -> Result<UnverifiedToken<'_>, TokenRejection> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenRejection::Malformed(
            "expected three dot-separated parts",
        ));
    };
    let signing_input = &token[..header.len() + 1 + payload.len()];
    let header_json = decode(header, "the header is not base64url")?;
    let header: RawHeader = serde_json::from_slice(&header_json).map_err(|_| {
        TokenRejection::Malformed("the header is not a JSON object with a string alg")
    })?;
    let algorithm = SigningAlgorithm::from_header(&header.alg)?;
    if header.crit.is_some() {
        return Err(TokenRejection::Malformed(
            "critical header extensions (crit) are not supported",
        ));
    }
    let signature = decode(signature, "the signature is not base64url")?;
    Ok(UnverifiedToken {
        algorithm,
        key_id: header.kid,
        token_type: header.typ,
        signing_input,
        payload,
        signature,
    })
}

impl UnverifiedToken<'_> {
    /// Checks the signature against `candidates` (chosen by `KeySet::select`).
    pub fn verify_signature(&self, candidates: &[&VerificationKey]) -> Result<(), TokenRejection> {
        let verified = candidates.iter().any(|key| {
            key.verify(
                self.algorithm,
                self.signing_input.as_bytes(),
                &self.signature,
            )
        });
        if verified {
            Ok(())
        } else {
            Err(TokenRejection::BadSignature)
        }
    }

    /// The payload bytes. Call only after the signature was verified.
    pub fn verified_payload(&self) -> Result<Vec<u8>, TokenRejection> {
        decode(self.payload, "the claims are not base64url")
    }
}

/// What a server's configuration requires of the claims.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRules<'a> {
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub leeway_secs: i64,
}

/// The claims of a verified token, with the ones the gateway uses picked out.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedClaims {
    pub subject: String,
    pub issuer: Option<String>,
    /// The standard `email` claim, when it is a string.
    pub email: Option<String>,
    /// The `groups` claim: an array of strings (other elements are ignored) or one string.
    pub groups: Vec<String>,
    /// `exp`, in seconds since the Unix epoch.
    pub expires_at_unix: i64,
    /// Every claim, for later steps (caller identity headers, per-user app auth).
    pub claims: Map<String, Value>,
}

/// A JWT NumericDate: seconds since the epoch, possibly with a fraction (dropped).
fn numeric_date(value: &Value) -> Option<i64> {
    if let Some(seconds) = value.as_i64() {
        return Some(seconds);
    }
    let seconds = value.as_f64()?;
    // `as` saturates for out-of-range floats; NaN cannot come from JSON.
    seconds.is_finite().then_some(seconds.floor() as i64)
}

/// Checks the verified payload at `now_unix` against `rules`.
pub fn check_claims(
    payload: &[u8],
    rules: ClaimRules<'_>,
    now_unix: i64,
) -> Result<VerifiedClaims, TokenRejection> {
    let claims: Map<String, Value> = serde_json::from_slice(payload)
        .map_err(|_| TokenRejection::Malformed("the claims are not a JSON object"))?;

    // exp is required: a token without an end would be valid forever.
    let expires_at_unix = match claims.get("exp") {
        None | Some(Value::Null) => return Err(TokenRejection::MissingExpiry),
        Some(value) => numeric_date(value)
            .ok_or(TokenRejection::Malformed("exp is not a number of seconds"))?,
    };
    // Valid while now < exp (RFC 7519 section 4.1.4), with the leeway.
    if now_unix >= expires_at_unix.saturating_add(rules.leeway_secs) {
        return Err(TokenRejection::Expired);
    }
    if let Some(value) = claims.get("nbf") {
        let not_before = numeric_date(value)
            .ok_or(TokenRejection::Malformed("nbf is not a number of seconds"))?;
        // Valid from nbf on (RFC 7519 section 4.1.5), with the leeway.
        if now_unix.saturating_add(rules.leeway_secs) < not_before {
            return Err(TokenRejection::NotYetValid);
        }
    }
    let issuer = claims.get("iss").and_then(Value::as_str).map(str::to_owned);
    if let Some(expected) = rules.issuer
        && issuer.as_deref() != Some(expected)
    {
        return Err(TokenRejection::WrongIssuer);
    }
    if let Some(expected) = rules.audience {
        let matches = match claims.get("aud") {
            Some(Value::String(audience)) => audience == expected,
            Some(Value::Array(audiences)) => audiences
                .iter()
                .any(|audience| audience.as_str() == Some(expected)),
            _ => false,
        };
        if !matches {
            return Err(TokenRejection::WrongAudience);
        }
    }
    let subject = match claims.get("sub").and_then(Value::as_str) {
        Some(subject) if !subject.is_empty() => subject.to_owned(),
        _ => return Err(TokenRejection::MissingSubject),
    };
    let email = claims
        .get("email")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let groups = match claims.get("groups") {
        Some(Value::Array(groups)) => groups
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(group)) => vec![group.clone()],
        _ => Vec::new(),
    };
    Ok(VerifiedClaims {
        subject,
        issuer,
        email,
        groups,
        expires_at_unix,
        claims,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::LEEWAY_SECS;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn rules<'a>(issuer: Option<&'a str>, audience: Option<&'a str>) -> ClaimRules<'a> {
        ClaimRules {
            issuer,
            audience,
            leeway_secs: LEEWAY_SECS,
        }
    }

    fn check(claims: Value, rules: ClaimRules<'_>) -> Result<VerifiedClaims, TokenRejection> {
        check_claims(claims.to_string().as_bytes(), rules, NOW)
    }

    #[test]
    fn parts_and_header_are_checked_before_any_key() {
        let malformed = |token: &str| match parse(token) {
            Err(TokenRejection::Malformed(detail)) => detail,
            other => panic!("{token}: {other:?}"),
        };
        assert_eq!(malformed("garbage"), "expected three dot-separated parts");
        assert_eq!(malformed("a.b.c.d.e"), "expected three dot-separated parts");
        assert_eq!(malformed("!!.e30.c2ln"), "the header is not base64url");
        // "e30" is "{}": no alg.
        assert_eq!(
            malformed("e30.e30.c2ln"),
            "the header is not a JSON object with a string alg"
        );
        let header = |value: Value| URL_SAFE_NO_PAD.encode(value.to_string());
        let duplicate_alg = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","alg":"none"}"#);
        assert_eq!(
            malformed(&format!("{duplicate_alg}.e30.c2ln")),
            "the header is not a JSON object with a string alg"
        );
        assert_eq!(
            malformed(&format!(
                "{}.e30.c2ln",
                header(json!({"alg": "RS256", "crit": ["exp"]}))
            )),
            "critical header extensions (crit) are not supported"
        );
        assert_eq!(
            malformed(&format!("{}.e30.@@", header(json!({"alg": "RS256"})))),
            "the signature is not base64url"
        );
        assert!(matches!(
            parse(&format!("{}.e30.", header(json!({"alg": "none"})))),
            Err(TokenRejection::UnsupportedAlgorithm(_))
        ));
        let token = format!("{}.e30.c2ln", header(json!({"alg": "ES256", "kid": "k1"})));
        let parsed = parse(&token).unwrap();
        assert_eq!(parsed.algorithm, SigningAlgorithm::Es256);
        assert_eq!(parsed.key_id.as_deref(), Some("k1"));
        assert_eq!(parsed.signature, b"sig");
    }

    #[test]
    fn exp_is_required_and_checked_with_leeway() {
        let base = json!({"sub": "alice"});
        let with = |field: &str, value: Value| {
            let mut claims = base.clone();
            claims[field] = value;
            claims
        };
        assert_eq!(
            check(base.clone(), rules(None, None)),
            Err(TokenRejection::MissingExpiry)
        );
        assert_eq!(
            check(with("exp", json!("tomorrow")), rules(None, None)),
            Err(TokenRejection::Malformed("exp is not a number of seconds"))
        );
        assert!(check(with("exp", json!(NOW + 1)), rules(None, None)).is_ok());
        // Expired 59 s ago: inside the leeway. 60 s ago: the leeway is used up.
        assert!(check(with("exp", json!(NOW - 59)), rules(None, None)).is_ok());
        assert_eq!(
            check(with("exp", json!(NOW - 60)), rules(None, None)),
            Err(TokenRejection::Expired)
        );
        assert_eq!(
            check(with("exp", json!(NOW - 3600)), rules(None, None)),
            Err(TokenRejection::Expired)
        );
        // Fractional dates are accepted.
        let claims = check(with("exp", json!(NOW as f64 + 10.5)), rules(None, None)).unwrap();
        assert_eq!(claims.expires_at_unix, NOW + 10);
    }

    #[test]
    fn nbf_is_checked_with_leeway_when_present() {
        let claims = |not_before: Value| json!({"sub": "a", "exp": NOW + 600, "nbf": not_before});
        assert!(check(claims(json!(NOW + 60)), rules(None, None)).is_ok());
        assert_eq!(
            check(claims(json!(NOW + 61)), rules(None, None)),
            Err(TokenRejection::NotYetValid)
        );
        assert_eq!(
            check(claims(json!("soon")), rules(None, None)),
            Err(TokenRejection::Malformed("nbf is not a number of seconds"))
        );
    }

    #[test]
    fn issuer_and_audience_are_checked_only_when_configured() {
        let claims = json!({"sub": "a", "exp": NOW + 600, "iss": "https://idp", "aud": "api"});
        assert!(check(claims.clone(), rules(None, None)).is_ok());
        assert!(check(claims.clone(), rules(Some("https://idp"), Some("api"))).is_ok());
        assert_eq!(
            check(claims.clone(), rules(Some("https://other"), None)),
            Err(TokenRejection::WrongIssuer)
        );
        assert_eq!(
            check(claims.clone(), rules(None, Some("other-api"))),
            Err(TokenRejection::WrongAudience)
        );
        let without = json!({"sub": "a", "exp": NOW + 600});
        assert_eq!(
            check(without.clone(), rules(Some("https://idp"), None)),
            Err(TokenRejection::WrongIssuer)
        );
        assert_eq!(
            check(without, rules(None, Some("api"))),
            Err(TokenRejection::WrongAudience)
        );
        let array = json!({"sub": "a", "exp": NOW + 600, "aud": ["other", "api"]});
        assert!(check(array.clone(), rules(None, Some("api"))).is_ok());
        assert_eq!(
            check(array, rules(None, Some("ap"))),
            Err(TokenRejection::WrongAudience)
        );
    }

    #[test]
    fn identity_claims_are_picked_out() {
        let claims = check(
            json!({
                "sub": "alice", "exp": NOW + 600, "iss": "https://idp",
                "email": "alice@example.com", "groups": ["eng", 7, "ops"], "tenant": "t1"
            }),
            rules(None, None),
        )
        .unwrap();
        assert_eq!(claims.subject, "alice");
        assert_eq!(claims.issuer.as_deref(), Some("https://idp"));
        assert_eq!(claims.email.as_deref(), Some("alice@example.com"));
        assert_eq!(claims.groups, ["eng", "ops"]);
        assert_eq!(claims.claims["tenant"], "t1");
        let single = check(
            json!({"sub": "bob", "exp": NOW + 600, "groups": "eng"}),
            rules(None, None),
        )
        .unwrap();
        assert_eq!(single.groups, ["eng"]);
        assert_eq!(
            check(json!({"exp": NOW + 600}), rules(None, None)),
            Err(TokenRejection::MissingSubject)
        );
        assert_eq!(
            check(json!([1, 2]), rules(None, None)),
            Err(TokenRejection::Malformed(
                "the claims are not a JSON object"
            ))
        );
    }
}

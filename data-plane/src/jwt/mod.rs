//! JWT validation for Passthrough agent authentication with "Require JWT Validation".
//!
//! - [`keys`]: a JWKS turned into verification keys once, the algorithms each key accepts,
//!   and how the key for a token is chosen.
//! - [`token`]: the compact token format and the claim checks.
//! - [`remote`]: JWKS documents fetched from URLs, cached and refreshed per URL.
//! - [`cache`]: successful verifications, so steady-state requests skip the signature check.
//! - [`validator`]: one server's validation (key source, issuer, audience, cache).
//!
//! Every refusal is a [`TokenRejection`]: a specific reason that is safe to show to the
//! caller (it never echoes the token or anything taken from it), with a stable code.

pub mod cache;
pub mod keys;
pub mod remote;
pub mod token;
pub mod validator;

pub use keys::{KeySet, SigningAlgorithm};
pub use remote::{JwksPolicy, JwksRegistry};
pub use token::VerifiedClaims;
pub use validator::JwtValidator;

/// The longest `Authorization` header agent authentication reads. Longer ones are refused
/// before any parsing, so an oversized header costs nothing but its length check.
pub const MAX_AUTHORIZATION_HEADER_BYTES: usize = 8 * 1024;

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: i64 = 60;

/// Why a caller's token was refused. The `Display` text is the public description (the
/// `error_description` of the `WWW-Authenticate` challenge and the JSON-RPC error message);
/// [`TokenRejection::code`] is the stable code for records and the error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("no bearer token")]
    Missing,
    #[error("more than one Authorization header")]
    SeveralAuthorizationHeaders,
    #[error("the Authorization header must use the Bearer scheme")]
    NotBearer,
    #[error("token too large: the Authorization header is limited to {limit} bytes")]
    TooLarge { limit: usize },
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("unsupported algorithm: {0}")]
    UnsupportedAlgorithm(&'static str),
    #[error("unknown key id")]
    UnknownKeyId,
    #[error("the token has no key id and more than one key could verify it")]
    KeyIdRequired,
    #[error("the signing keys are not available yet, try again later")]
    KeysUnavailable,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("the token has no expiry (exp)")]
    MissingExpiry,
    #[error("the token has no subject (sub)")]
    MissingSubject,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("not an access token of this gateway")]
    NotAccessToken,
    #[error("the token was revoked")]
    Revoked,
}

impl TokenRejection {
    /// The stable code, as request records and the error body (`data.reason`) carry it.
    pub fn code(self) -> &'static str {
        match self {
            TokenRejection::Missing => "missing_token",
            TokenRejection::SeveralAuthorizationHeaders => "several_authorization_headers",
            TokenRejection::NotBearer => "not_bearer",
            TokenRejection::TooLarge { .. } => "token_too_large",
            TokenRejection::Malformed(_) => "malformed_token",
            TokenRejection::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            TokenRejection::UnknownKeyId => "unknown_key_id",
            TokenRejection::KeyIdRequired => "key_id_required",
            TokenRejection::KeysUnavailable => "signing_keys_unavailable",
            TokenRejection::BadSignature => "bad_signature",
            TokenRejection::Expired => "expired",
            TokenRejection::NotYetValid => "not_yet_valid",
            TokenRejection::MissingExpiry => "missing_expiry",
            TokenRejection::MissingSubject => "missing_subject",
            TokenRejection::WrongIssuer => "wrong_issuer",
            TokenRejection::WrongAudience => "wrong_audience",
            TokenRejection::NotAccessToken => "not_an_access_token",
            TokenRejection::Revoked => "revoked",
        }
    }

    /// The RFC 6750 error code of the challenge: none when no credential was presented
    /// (the challenge only says which scheme to use), `invalid_request` when the request
    /// itself is malformed, `invalid_token` for everything about the token.
    pub fn bearer_error(self) -> Option<&'static str> {
        match self {
            TokenRejection::Missing => None,
            TokenRejection::SeveralAuthorizationHeaders | TokenRejection::NotBearer => {
                Some("invalid_request")
            }
            TokenRejection::TooLarge { .. }
            | TokenRejection::Malformed(_)
            | TokenRejection::UnsupportedAlgorithm(_)
            | TokenRejection::UnknownKeyId
            | TokenRejection::KeyIdRequired
            | TokenRejection::KeysUnavailable
            | TokenRejection::BadSignature
            | TokenRejection::Expired
            | TokenRejection::NotYetValid
            | TokenRejection::MissingExpiry
            | TokenRejection::MissingSubject
            | TokenRejection::WrongIssuer
            | TokenRejection::WrongAudience
            | TokenRejection::NotAccessToken
            | TokenRejection::Revoked => Some("invalid_token"),
        }
    }

    /// The `WWW-Authenticate` value for a 401. Descriptions are fixed texts without quotes
    /// or backslashes, so they need no escaping inside the quoted string.
    pub fn www_authenticate(self) -> String {
        match self.bearer_error() {
            None => "Bearer".to_owned(),
            Some(error) => format!("Bearer error=\"{error}\", error_description=\"{self}\""),
        }
    }
}

/// Seconds since the Unix epoch, as JWT dates count them.
pub fn unix_now() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(elapsed) => i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

#[cfg(test)]
pub(crate) mod test_keys;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_follow_rfc_6750() {
        assert_eq!(TokenRejection::Missing.www_authenticate(), "Bearer");
        assert_eq!(
            TokenRejection::Expired.www_authenticate(),
            "Bearer error=\"invalid_token\", error_description=\"token expired\""
        );
        assert_eq!(
            TokenRejection::NotBearer.www_authenticate(),
            "Bearer error=\"invalid_request\", error_description=\"the Authorization header must use the Bearer scheme\""
        );
    }

    #[test]
    fn every_description_fits_in_a_quoted_header_value() {
        let all = [
            TokenRejection::Missing,
            TokenRejection::SeveralAuthorizationHeaders,
            TokenRejection::NotBearer,
            TokenRejection::TooLarge { limit: 8192 },
            TokenRejection::Malformed("x"),
            TokenRejection::UnsupportedAlgorithm("x"),
            TokenRejection::UnknownKeyId,
            TokenRejection::KeyIdRequired,
            TokenRejection::KeysUnavailable,
            TokenRejection::BadSignature,
            TokenRejection::Expired,
            TokenRejection::NotYetValid,
            TokenRejection::MissingExpiry,
            TokenRejection::MissingSubject,
            TokenRejection::WrongIssuer,
            TokenRejection::WrongAudience,
            TokenRejection::NotAccessToken,
            TokenRejection::Revoked,
        ];
        for rejection in all {
            let text = rejection.to_string();
            assert!(!text.contains('"') && !text.contains('\\'), "{text}");
            assert!(http::HeaderValue::from_str(&rejection.www_authenticate()).is_ok());
        }
    }
}

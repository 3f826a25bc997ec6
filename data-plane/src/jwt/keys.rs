//! Verification keys from a JWKS, and the rules that tie algorithms to keys.
//!
//! A JWK is turned into a [`VerificationKey`] once (when a snapshot is compiled, or when a
//! JWKS is fetched): its public key is parsed by aws-lc-rs for every algorithm it accepts,
//! so verifying a token parses nothing.
//!
//! Rules:
//! - The accepted algorithms follow from the key type, never from the token: RSA keys
//!   accept RS256/384/512 and PS256/384/512, EC P-256 keys ES256, EC P-384 keys ES384,
//!   OKP Ed25519 keys EdDSA. A JWK that declares `alg` accepts only that one (and is
//!   unusable if it declares one that does not fit its type).
//! - `none` and HS256/384/512 are never accepted: a JWKS holds public keys only, so an HMAC
//!   "verified" with one would be verified with a value every caller knows (the HS/RS
//!   confusion). Symmetric (`oct`) keys are unusable.
//! - Keys with `use: enc`, with `key_ops` lacking `verify`, RSA keys under 2048 bits and
//!   curves other than P-256, P-384 and Ed25519 are unusable. Unusable keys are skipped and
//!   reported; a set with no usable key is refused.
//! - Key selection ([`KeySet::select`]): a token with a `kid` is checked against the keys
//!   with that `kid` (normally one). A token without `kid` is checked only when exactly one
//!   key in the set accepts its algorithm; with several it is refused, so a forged token
//!   cannot make the node try every key.

use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents, VerificationAlgorithm};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use serde::Deserialize;

use crate::jwt::TokenRejection;

/// At most this many keys in one JWKS; real identity providers publish a handful.
pub const MAX_KEYS: usize = 64;

/// A signature algorithm the gateway accepts. HMAC and `none` have no variant on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigningAlgorithm {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl SigningAlgorithm {
    /// The algorithm a token header names, or why it is refused.
    pub fn from_header(name: &str) -> Result<Self, TokenRejection> {
        match name {
            "RS256" => Ok(Self::Rs256),
            "RS384" => Ok(Self::Rs384),
            "RS512" => Ok(Self::Rs512),
            "PS256" => Ok(Self::Ps256),
            "PS384" => Ok(Self::Ps384),
            "PS512" => Ok(Self::Ps512),
            "ES256" => Ok(Self::Es256),
            "ES384" => Ok(Self::Es384),
            "EdDSA" => Ok(Self::EdDsa),
            _ if name.eq_ignore_ascii_case("none") => Err(TokenRejection::UnsupportedAlgorithm(
                "unsigned tokens (alg none) are refused",
            )),
            "HS256" | "HS384" | "HS512" => Err(TokenRejection::UnsupportedAlgorithm(
                "symmetric algorithms (HS256, HS384, HS512) are refused",
            )),
            _ => Err(TokenRejection::UnsupportedAlgorithm(
                "use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA",
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::EdDsa => "EdDSA",
        }
    }

    /// The JWK `alg` value, mapped; `None` for anything that is not an accepted signature
    /// algorithm (HMAC, encryption algorithms, unknown names).
    fn from_key_algorithm(algorithm: KeyAlgorithm) -> Option<Self> {
        match algorithm {
            KeyAlgorithm::RS256 => Some(Self::Rs256),
            KeyAlgorithm::RS384 => Some(Self::Rs384),
            KeyAlgorithm::RS512 => Some(Self::Rs512),
            KeyAlgorithm::PS256 => Some(Self::Ps256),
            KeyAlgorithm::PS384 => Some(Self::Ps384),
            KeyAlgorithm::PS512 => Some(Self::Ps512),
            KeyAlgorithm::ES256 => Some(Self::Es256),
            KeyAlgorithm::ES384 => Some(Self::Es384),
            KeyAlgorithm::EdDSA => Some(Self::EdDsa),
            _ => None,
        }
    }

    /// JWS signatures: PKCS#1 v1.5 and PSS with 2048 to 8192 bit moduli, ECDSA in the fixed
    /// `r || s` form (RFC 7518 section 3.4), Ed25519.
    fn verification_algorithm(self) -> &'static dyn VerificationAlgorithm {
        match self {
            Self::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Self::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Self::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Self::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            Self::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            Self::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
            Self::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
            Self::Es384 => &signature::ECDSA_P384_SHA384_FIXED,
            Self::EdDsa => &signature::ED25519,
        }
    }
}

/// What kind of public key a JWK holds; it decides the algorithms the key accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyType {
    pub fn algorithms(self) -> &'static [SigningAlgorithm] {
        use SigningAlgorithm::*;
        match self {
            KeyType::Rsa => &[Rs256, Rs384, Rs512, Ps256, Ps384, Ps512],
            KeyType::EcP256 => &[Es256],
            KeyType::EcP384 => &[Es384],
            KeyType::Ed25519 => &[EdDsa],
        }
    }
}

/// One usable key: its id, its type, and the public key parsed for each algorithm it
/// accepts.
pub struct VerificationKey {
    pub key_id: Option<String>,
    pub key_type: KeyType,
    verifiers: Vec<(SigningAlgorithm, ParsedPublicKey)>,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("key_id", &self.key_id)
            .field("key_type", &self.key_type)
            .field("algorithms", &self.algorithms().collect::<Vec<_>>())
            .finish()
    }
}

fn decode_component(value: &str) -> Result<Vec<u8>, &'static str> {
    URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| "a key component is not base64url")
}

impl VerificationKey {
    /// Builds the key, or says why the JWK is unusable.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, &'static str> {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return Err("the key is for encryption (use enc)");
        }
        if let Some(operations) = &jwk.common.key_operations
            && !operations.contains(&KeyOperations::Verify)
        {
            return Err("the key's key_ops do not include verify");
        }
        let (key_type, public_key) = match &jwk.algorithm {
            AlgorithmParameters::RSA(parameters) => {
                let modulus = decode_component(&parameters.n)?;
                let exponent = decode_component(&parameters.e)?;
                let significant = modulus.iter().skip_while(|byte| **byte == 0).count();
                if significant < 256 {
                    return Err("RSA keys must have at least 2048 bits");
                }
                if significant > 1024 {
                    return Err("RSA keys must have at most 8192 bits");
                }
                let components = RsaPublicKeyComponents {
                    n: modulus.as_slice(),
                    e: exponent.as_slice(),
                };
                let der = components
                    .as_der()
                    .map_err(|_| "the RSA key components do not form a public key")?;
                (KeyType::Rsa, der.as_ref().to_vec())
            }
            AlgorithmParameters::EllipticCurve(parameters) => {
                let (key_type, coordinate_len) = match parameters.curve {
                    EllipticCurve::P256 => (KeyType::EcP256, 32),
                    EllipticCurve::P384 => (KeyType::EcP384, 48),
                    EllipticCurve::P521 => return Err("P-521 keys are not supported"),
                    _ => return Err("kty EC needs crv P-256 or P-384"),
                };
                let x = decode_component(&parameters.x)?;
                let y = decode_component(&parameters.y)?;
                if x.len() != coordinate_len || y.len() != coordinate_len {
                    return Err("the EC coordinates do not fit the curve");
                }
                // The uncompressed point form aws-lc-rs parses: 0x04 || x || y.
                let mut point = Vec::with_capacity(1 + 2 * coordinate_len);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (key_type, point)
            }
            AlgorithmParameters::OctetKeyPair(parameters) => {
                if parameters.curve != EllipticCurve::Ed25519 {
                    return Err("OKP keys must use crv Ed25519");
                }
                let x = decode_component(&parameters.x)?;
                if x.len() != 32 {
                    return Err("an Ed25519 key is 32 bytes");
                }
                (KeyType::Ed25519, x)
            }
            AlgorithmParameters::OctetKey(_) => {
                return Err("symmetric keys (kty oct) are never used");
            }
            _ => return Err("unsupported key type"),
        };
        let accepted: Vec<SigningAlgorithm> = match jwk.common.key_algorithm {
            None => key_type.algorithms().to_vec(),
            Some(declared) => match SigningAlgorithm::from_key_algorithm(declared) {
                Some(algorithm) if key_type.algorithms().contains(&algorithm) => vec![algorithm],
                Some(_) => return Err("the key's alg does not fit its key type"),
                None => return Err("the key's alg is not an accepted signature algorithm"),
            },
        };
        let mut verifiers = Vec::with_capacity(accepted.len());
        for algorithm in accepted {
            let parsed =
                ParsedPublicKey::new(algorithm.verification_algorithm(), public_key.as_slice())
                    .map_err(|_| "the public key is invalid")?;
            verifiers.push((algorithm, parsed));
        }
        Ok(Self {
            key_id: jwk.common.key_id.clone(),
            key_type,
            verifiers,
        })
    }

    pub fn algorithms(&self) -> impl Iterator<Item = SigningAlgorithm> + '_ {
        self.verifiers.iter().map(|(algorithm, _)| *algorithm)
    }

    pub fn accepts(&self, algorithm: SigningAlgorithm) -> bool {
        self.verifiers
            .iter()
            .any(|(accepted, _)| *accepted == algorithm)
    }

    /// True if `signature` is a valid `algorithm` signature of `message` by this key.
    pub fn verify(&self, algorithm: SigningAlgorithm, message: &[u8], signature: &[u8]) -> bool {
        self.verifiers
            .iter()
            .find(|(accepted, _)| *accepted == algorithm)
            .is_some_and(|(_, key)| key.verify_sig(message, signature).is_ok())
    }
}

/// A JWK the node does not use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKey {
    pub index: usize,
    pub key_id: Option<String>,
    pub reason: &'static str,
}

impl std::fmt::Display for SkippedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key_id {
            Some(key_id) => write!(f, "key {} (kid {key_id:?}): {}", self.index, self.reason),
            None => write!(f, "key {}: {}", self.index, self.reason),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    #[error("not a JWKS document: {0}")]
    NotJwks(String),
    #[error("the JWKS has {count} keys; at most {limit} are accepted")]
    TooManyKeys { count: usize, limit: usize },
    #[error("the JWKS has no key usable for signature verification{}", describe_skipped(.0))]
    NoUsableKey(Vec<SkippedKey>),
}

fn describe_skipped(skipped: &[SkippedKey]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let reasons: Vec<String> = skipped.iter().map(ToString::to_string).collect();
    format!(" ({})", reasons.join("; "))
}

/// Every key set gets a number no other set had, so a verified-token cache can tell that
/// the keys behind its entries changed.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// The usable keys of one JWKS document.
#[derive(Debug)]
pub struct KeySet {
    generation: u64,
    keys: Vec<VerificationKey>,
    /// The usable JWKs as published, to tell a refreshed document that changed nothing from
    /// a rotation.
    published: Vec<Jwk>,
}

/// A parsed JWKS: the key set, and the keys that were skipped (for the log).
#[derive(Debug)]
pub struct ParsedKeySet {
    pub keys: KeySet,
    pub skipped: Vec<SkippedKey>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Parses a JWKS document. Keys are read one by one, so one key in a shape this node
    /// does not know does not make the rest unusable.
    pub fn parse(document: &[u8]) -> Result<ParsedKeySet, KeySetError> {
        let raw: RawJwks = serde_json::from_slice(document)
            .map_err(|error| KeySetError::NotJwks(error.to_string()))?;
        if raw.keys.len() > MAX_KEYS {
            return Err(KeySetError::TooManyKeys {
                count: raw.keys.len(),
                limit: MAX_KEYS,
            });
        }
        let mut keys = Vec::with_capacity(raw.keys.len());
        let mut published = Vec::with_capacity(raw.keys.len());
        let mut skipped = Vec::new();
        for (index, value) in raw.keys.into_iter().enumerate() {
            let key_id = value
                .get("kid")
                .and_then(|kid| kid.as_str())
                .map(str::to_owned);
            let jwk: Jwk = match serde_json::from_value(value) {
                Ok(jwk) => jwk,
                Err(_) => {
                    skipped.push(SkippedKey {
                        index,
                        key_id,
                        reason: "not a JWK this node can read",
                    });
                    continue;
                }
            };
            match VerificationKey::from_jwk(&jwk) {
                Ok(key) => {
                    keys.push(key);
                    published.push(jwk);
                }
                Err(reason) => skipped.push(SkippedKey {
                    index,
                    key_id,
                    reason,
                }),
            }
        }
        if keys.is_empty() {
            return Err(KeySetError::NoUsableKey(skipped));
        }
        Ok(ParsedKeySet {
            keys: KeySet {
                generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
                keys,
                published,
            },
            skipped,
        })
    }

    /// A number unique to this key set among all sets this process built.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key ids in the set, for logs.
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys
            .iter()
            .map(|key| key.key_id.as_deref().unwrap_or("(none)"))
            .collect()
    }

    pub fn contains_key_id(&self, key_id: &str) -> bool {
        self.keys
            .iter()
            .any(|key| key.key_id.as_deref() == Some(key_id))
    }

    /// True if both sets hold the same usable keys, in the same order.
    pub fn same_keys(&self, other: &KeySet) -> bool {
        self.published == other.published
    }

    /// The keys a token with this `kid` and algorithm may be checked against (see the module
    /// documentation for the rule).
    pub fn select(
        &self,
        key_id: Option<&str>,
        algorithm: SigningAlgorithm,
    ) -> Result<Vec<&VerificationKey>, TokenRejection> {
        match key_id {
            Some(key_id) => {
                let mut named = self
                    .keys
                    .iter()
                    .filter(|key| key.key_id.as_deref() == Some(key_id))
                    .peekable();
                if named.peek().is_none() {
                    return Err(TokenRejection::UnknownKeyId);
                }
                let accepting: Vec<_> = named.filter(|key| key.accepts(algorithm)).collect();
                if accepting.is_empty() {
                    return Err(TokenRejection::UnsupportedAlgorithm(
                        "the signing key does not accept this algorithm",
                    ));
                }
                Ok(accepting)
            }
            None => {
                let accepting: Vec<_> = self
                    .keys
                    .iter()
                    .filter(|key| key.accepts(algorithm))
                    .collect();
                match accepting.len() {
                    0 => Err(TokenRejection::UnsupportedAlgorithm(
                        "no key accepts this algorithm",
                    )),
                    1 => Ok(accepting),
                    _ => Err(TokenRejection::KeyIdRequired),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::test_keys::{TestKey, jwks};
    use serde_json::json;

    fn parse(document: serde_json::Value) -> ParsedKeySet {
        KeySet::parse(document.to_string().as_bytes()).unwrap()
    }

    fn algorithms(set: &KeySet, index: usize) -> Vec<&'static str> {
        set.keys[index]
            .algorithms()
            .map(SigningAlgorithm::name)
            .collect()
    }

    #[test]
    fn key_types_decide_the_algorithms() {
        let rsa = TestKey::rsa("r");
        let p256 = TestKey::ec_p256("e");
        let p384 = TestKey::ec_p384("f");
        let ed = TestKey::ed25519("d");
        let parsed = parse(jwks(&[&rsa, &p256, &p384, &ed]));
        assert!(parsed.skipped.is_empty());
        let set = parsed.keys;
        assert_eq!(
            algorithms(&set, 0),
            ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
        );
        assert_eq!(algorithms(&set, 1), ["ES256"]);
        assert_eq!(algorithms(&set, 2), ["ES384"]);
        assert_eq!(algorithms(&set, 3), ["EdDSA"]);
    }

    #[test]
    fn a_declared_alg_narrows_the_key_to_that_one() {
        let mut jwk = TestKey::rsa("r").jwk();
        jwk["alg"] = json!("PS384");
        let set = parse(json!({"keys": [jwk]})).keys;
        assert_eq!(algorithms(&set, 0), ["PS384"]);
    }

    #[test]
    fn unusable_keys_are_skipped_with_a_reason() {
        let rsa = TestKey::rsa("good");
        let mut mismatched = TestKey::ec_p256("mismatched").jwk();
        mismatched["alg"] = json!("RS256");
        let mut hmac_alg = TestKey::rsa("hmac-alg").jwk();
        hmac_alg["alg"] = json!("HS256");
        let mut encryption = TestKey::rsa("enc").jwk();
        encryption["use"] = json!("enc");
        let mut sign_only = TestKey::ed25519("ops").jwk();
        sign_only["key_ops"] = json!(["sign"]);
        let symmetric = json!({"kty": "oct", "kid": "oct", "k": "c2VjcmV0"});
        let okp_p256 = json!({"kty": "OKP", "kid": "okp", "crv": "P-256", "x": "AAAA"});
        let x25519 = json!({"kty": "OKP", "kid": "x", "crv": "X25519", "x": "AAAA"});
        let garbage = json!({"kid": "garbage", "use": 5});
        let parsed = parse(json!({"keys": [
            rsa.jwk(), mismatched, hmac_alg, encryption, sign_only, symmetric, okp_p256, x25519,
            garbage
        ]}));
        assert_eq!(parsed.keys.key_ids(), ["good"]);
        let reasons: Vec<_> = parsed
            .skipped
            .iter()
            .map(|skipped| (skipped.key_id.as_deref().unwrap(), skipped.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                ("mismatched", "the key's alg does not fit its key type"),
                (
                    "hmac-alg",
                    "the key's alg is not an accepted signature algorithm"
                ),
                ("enc", "the key is for encryption (use enc)"),
                ("ops", "the key's key_ops do not include verify"),
                ("oct", "symmetric keys (kty oct) are never used"),
                ("okp", "OKP keys must use crv Ed25519"),
                ("x", "unsupported key type"),
                ("garbage", "not a JWK this node can read"),
            ]
        );
    }

    #[test]
    fn a_set_without_usable_keys_is_refused() {
        let symmetric = json!({"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]});
        let error = KeySet::parse(symmetric.to_string().as_bytes()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the JWKS has no key usable for signature verification (key 0 (kid \"s\"): symmetric keys (kty oct) are never used)"
        );
        assert!(matches!(
            KeySet::parse(b"{\"keys\": 3}"),
            Err(KeySetError::NotJwks(_))
        ));
        let many: Vec<_> = (0..=MAX_KEYS).map(|_| json!({})).collect();
        assert!(matches!(
            KeySet::parse(json!({"keys": many}).to_string().as_bytes()),
            Err(KeySetError::TooManyKeys { .. })
        ));
    }

    #[test]
    fn selection_by_kid_and_without_kid_only_when_unambiguous() {
        let first = TestKey::rsa("one");
        let second = TestKey::rsa("two");
        let ec = TestKey::ec_p256("ec");
        let set = parse(jwks(&[&first, &second, &ec])).keys;
        let pick = |kid, algorithm| {
            set.select(kid, algorithm).map(|keys| {
                keys.iter()
                    .map(|key| key.key_id.clone().unwrap())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(pick(Some("two"), SigningAlgorithm::Rs256).unwrap(), ["two"]);
        assert_eq!(
            pick(Some("three"), SigningAlgorithm::Rs256),
            Err(TokenRejection::UnknownKeyId)
        );
        assert!(matches!(
            pick(Some("ec"), SigningAlgorithm::Rs256),
            Err(TokenRejection::UnsupportedAlgorithm(_))
        ));
        // Without kid: one EC key accepts ES256, two RSA keys accept RS256.
        assert_eq!(pick(None, SigningAlgorithm::Es256).unwrap(), ["ec"]);
        assert_eq!(
            pick(None, SigningAlgorithm::Rs256),
            Err(TokenRejection::KeyIdRequired)
        );
        assert!(matches!(
            pick(None, SigningAlgorithm::EdDsa),
            Err(TokenRejection::UnsupportedAlgorithm(_))
        ));
    }

    #[test]
    fn header_algorithms_never_include_none_or_hmac() {
        for name in [
            "none", "None", "NONE", "HS256", "HS384", "HS512", "ES512", "RSA-OAEP", "",
        ] {
            assert!(
                matches!(
                    SigningAlgorithm::from_header(name),
                    Err(TokenRejection::UnsupportedAlgorithm(_))
                ),
                "{name}"
            );
        }
        assert_eq!(
            SigningAlgorithm::from_header("EdDSA"),
            Ok(SigningAlgorithm::EdDsa)
        );
    }

    #[test]
    fn refreshed_documents_with_the_same_keys_compare_equal() {
        let rsa = TestKey::rsa("r");
        let ed = TestKey::ed25519("d");
        let first = parse(jwks(&[&rsa, &ed])).keys;
        let again = parse(jwks(&[&rsa, &ed])).keys;
        let rotated = parse(jwks(&[&ed])).keys;
        assert!(first.same_keys(&again));
        assert!(!first.same_keys(&rotated));
        assert_ne!(first.generation(), again.generation());
    }
}

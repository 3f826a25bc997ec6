//! The gateway's own keys, compiled once per snapshot: the ES256 key that signs access
//! tokens, every signing key's public half (to verify tokens signed before a rotation), and
//! the AES-256 sealing keys for self-contained values.
//!
//! Sealed values ([`GatewayKeyring::seal`], [`GatewayKeyring::open`]) are how a node stays
//! stateless: client registrations, consent requests, login state, authorization codes,
//! refresh tokens and the identity provider's token inside access tokens carry everything
//! the next step needs, encrypted and authenticated under the fleet's active sealing key.
//! Any node of the fleet opens what another sealed.
//!
//! Format: `<prefix>.<base64url(kid length, kid, nonce, ciphertext, tag)>`. The prefix names
//! the purpose; the associated data binds the ciphertext to the purpose and the kid, so a
//! value sealed for one purpose never opens as another, and the kid read from the value
//! only selects the key (a forged kid fails the tag). The plaintext is JSON with the
//! value's expiry, checked on every open.
//!
//! Keys are derived from the snapshot's 32-byte sealing key with HMAC-SHA-256 and a label
//! per use, so the cipher key and the key that derives client secrets are independent.

use std::sync::Arc;

use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use portcullis_shared::crypto::AeadKey;
use portcullis_shared::gateway::{GatewayKeyState, GatewayKeys, SIGNING_ALGORITHM};
use portcullis_shared::secret::SecretValue;
use portcullis_shared::validate::ValidationErrors;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::jwt::KeySet;

/// The `typ` header of the access tokens the gateway issues (RFC 9068).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// Sealed values longer than this are refused before any decoding.
pub const MAX_SEALED_CHARS: usize = 8 * 1024;

/// What a sealed value is for. Each purpose has its own prefix and associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A dynamically registered client: the `client_id` itself.
    ClientRegistration,
    /// An authorization request waiting for the user's consent (the consent form).
    ConsentRequest,
    /// The clients a browser approved (the consent cookie).
    ConsentCookie,
    /// The state sent to the identity provider: the pending authorization and the PKCE
    /// verifier and nonce of the login.
    LoginState,
    AuthorizationCode,
    RefreshToken,
    /// The identity provider's access token, as a claim of the gateway's access tokens.
    IdentityProviderToken,
    /// A "connect your account" link: user, app and server (`crate::connect::link`).
    ConnectLink,
    /// The state of the login that proves who opened such a link.
    ConnectLogin,
    /// The state of the app provider's authorization of an account link.
    ConnectAuthorization,
}

impl Purpose {
    pub fn prefix(self) -> &'static str {
        match self {
            Purpose::ClientRegistration => "pcc1",
            Purpose::ConsentRequest => "pcq1",
            Purpose::ConsentCookie => "pck1",
            Purpose::LoginState => "pcs1",
            Purpose::AuthorizationCode => "pca1",
            Purpose::RefreshToken => "pcr1",
            Purpose::IdentityProviderToken => "pci1",
            Purpose::ConnectLink => "pcx1",
            Purpose::ConnectLogin => "pcl1",
            Purpose::ConnectAuthorization => "pcp1",
        }
    }

    fn associated_data(self, kid: &str) -> Vec<u8> {
        format!("portcullis/oauth/v1/{}/{kid}", self.prefix()).into_bytes()
    }
}

/// Why a sealed value does not open. None of these reveal anything about the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("not a value of this kind")]
    WrongKind,
    #[error("malformed")]
    Malformed,
    #[error("sealed with a key this node does not have")]
    UnknownKey,
    #[error("tampered with or sealed by another fleet")]
    Tampered,
    #[error("expired")]
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the snapshot carries no active sealing key")]
    NoActiveKey,
    #[error("sealing failed: {0}")]
    Crypto(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("the snapshot carries no active signing key")]
    NoActiveKey,
    #[error("signing failed")]
    Crypto,
}

struct SealingEntry {
    kid: String,
    active: bool,
    aead: AeadKey,
    /// Derives the secrets of confidential dynamically registered clients.
    client_secret_key: hmac::Key,
}

struct ActiveSigningKey {
    kid: String,
    pair: EcdsaKeyPair,
}

/// The gateway keys of one snapshot, ready to use.
pub struct GatewayKeyring {
    signing: Option<ActiveSigningKey>,
    verification: Option<Arc<KeySet>>,
    /// `{"keys": [...]}` with every signing key's public JWK, as `/oauth/jwks` serves it.
    public_jwks: Arc<str>,
    sealing: Vec<SealingEntry>,
}

impl std::fmt::Debug for GatewayKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayKeyring")
            .field(
                "signing_kid",
                &self.signing.as_ref().map(|key| key.kid.as_str()),
            )
            .field(
                "verification_kids",
                &self.verification.as_ref().map(|keys| keys.key_ids()),
            )
            .field(
                "sealing_kids",
                &self
                    .sealing
                    .iter()
                    .map(|key| key.kid.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for GatewayKeyring {
    fn default() -> Self {
        Self {
            signing: None,
            verification: None,
            public_jwks: Arc::from(r#"{"keys":[]}"#),
            sealing: Vec::new(),
        }
    }
}

fn derive(raw: &[u8], label: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, raw), label)
}

/// The uncompressed P-256 point of a JWK (`0x04 || x || y`), if it is one.
fn jwk_point(jwk: &Value) -> Option<Vec<u8>> {
    let x = URL_SAFE_NO_PAD.decode(jwk.get("x")?.as_str()?).ok()?;
    let y = URL_SAFE_NO_PAD.decode(jwk.get("y")?.as_str()?).ok()?;
    if x.len() != 32 || y.len() != 32 || jwk.get("crv")?.as_str()? != "P-256" {
        return None;
    }
    let mut point = Vec::with_capacity(65);
    point.push(4);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Some(point)
}

impl GatewayKeyring {
    /// Compiles the snapshot's gateway keys. A key that cannot be used is an error (the
    /// snapshot is refused), except that a snapshot may carry no keys at all: then every
    /// Interactive flow answers "temporarily unavailable".
    pub fn compile(keys: &GatewayKeys<SecretValue>) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let mut signing = None;
        let mut public_jwks = Vec::with_capacity(keys.signing_keys.len());
        for key in &keys.signing_keys {
            let field = format!("signing_keys[{}]", key.kid);
            if key.algorithm != SIGNING_ALGORITHM {
                errors.push(
                    format!("{field}.algorithm"),
                    format!("must be {SIGNING_ALGORITHM}"),
                );
                continue;
            }
            let mut jwk: Value = match serde_json::from_str(&key.public_jwk) {
                Ok(jwk) => jwk,
                Err(_) => {
                    errors.push(format!("{field}.public_jwk"), "not a JSON object");
                    continue;
                }
            };
            let Some(point) = jwk_point(&jwk) else {
                errors.push(format!("{field}.public_jwk"), "not a P-256 public key");
                continue;
            };
            // Tokens name the key by the snapshot's kid, whatever the JWK document says.
            jwk["kid"] = Value::String(key.kid.clone());
            jwk["alg"] = Value::String(SIGNING_ALGORITHM.to_owned());
            jwk["use"] = Value::String("sig".to_owned());
            if let Some(object) = jwk.as_object_mut() {
                // A public JWK only: drop anything private a document might carry by mistake.
                object.remove("d");
            }
            public_jwks.push(jwk);
            if key.state == GatewayKeyState::Active {
                let pair = STANDARD
                    .decode(key.private_key.expose().trim())
                    .ok()
                    .and_then(|der| {
                        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).ok()
                    });
                match pair {
                    Some(pair) if pair.public_key().as_ref() == point.as_slice() => {
                        signing = Some(ActiveSigningKey {
                            kid: key.kid.clone(),
                            pair,
                        });
                    }
                    Some(_) => errors.push(
                        format!("{field}.private_key"),
                        "does not match the public JWK",
                    ),
                    None => errors.push(
                        format!("{field}.private_key"),
                        "not a base64 PKCS#8 P-256 private key",
                    ),
                }
            }
        }
        let public_jwks = serde_json::json!({ "keys": public_jwks });
        let verification = if public_jwks["keys"]
            .as_array()
            .is_some_and(|keys| !keys.is_empty())
        {
            match KeySet::parse(public_jwks.to_string().as_bytes()) {
                Ok(parsed) => Some(Arc::new(parsed.keys)),
                Err(error) => {
                    errors.push("signing_keys", error.to_string());
                    None
                }
            }
        } else {
            None
        };

        let mut sealing = Vec::with_capacity(keys.sealing_keys.len());
        for key in &keys.sealing_keys {
            let field = format!("sealing_keys[{}].key", key.kid);
            let raw = match STANDARD.decode(key.key.expose().trim()) {
                Ok(raw) if raw.len() == 32 => raw,
                _ => {
                    errors.push(field, "must be 32 bytes, base64");
                    continue;
                }
            };
            let aead = match AeadKey::from_bytes(derive(&raw, b"portcullis/oauth/seal/v1").as_ref())
            {
                Ok(aead) => aead,
                Err(error) => {
                    errors.push(field, error.to_string());
                    continue;
                }
            };
            let client_secret_key = hmac::Key::new(
                hmac::HMAC_SHA256,
                derive(&raw, b"portcullis/oauth/client-secret/v1").as_ref(),
            );
            sealing.push(SealingEntry {
                kid: key.kid.clone(),
                active: key.state == GatewayKeyState::Active,
                aead,
                client_secret_key,
            });
        }
        errors.into_result(Self {
            signing,
            verification,
            public_jwks: Arc::from(public_jwks.to_string()),
            sealing,
        })
    }

    /// True when the gateway can issue tokens: an active signing key and an active
    /// sealing key.
    pub fn can_issue(&self) -> bool {
        self.signing.is_some() && self.sealing.iter().any(|key| key.active)
    }

    /// The public keys that verify access tokens (active and verify-only).
    pub fn verification_keys(&self) -> Option<&Arc<KeySet>> {
        self.verification.as_ref()
    }

    /// The JWKS document of the signing keys.
    pub fn public_jwks(&self) -> &str {
        &self.public_jwks
    }

    /// Signs an access token (RFC 9068: `typ` `at+jwt`) with the active signing key.
    pub fn sign_access_token<T: Serialize>(&self, claims: &T) -> Result<String, SignError> {
        let key = self.signing.as_ref().ok_or(SignError::NoActiveKey)?;
        let header = serde_json::json!({
            "alg": SIGNING_ALGORITHM,
            "typ": ACCESS_TOKEN_TYPE,
            "kid": key.kid,
        });
        let claims = serde_json::to_vec(claims).map_err(|_| SignError::Crypto)?;
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature = key
            .pair
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| SignError::Crypto)?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }

    /// Seals `value` for `purpose` until `expires_at_unix`, with the active sealing key.
    pub fn seal<T: Serialize>(
        &self,
        purpose: Purpose,
        value: &T,
        expires_at_unix: i64,
    ) -> Result<String, SealError> {
        let key = self
            .sealing
            .iter()
            .find(|key| key.active)
            .ok_or(SealError::NoActiveKey)?;
        let plaintext = serde_json::to_vec(&Envelope {
            exp: expires_at_unix,
            value,
        })
        .map_err(|error| SealError::Crypto(error.to_string()))?;
        let sealed = key
            .aead
            .seal(&purpose.associated_data(&key.kid), &plaintext)
            .map_err(|error| SealError::Crypto(error.to_string()))?;
        let kid = key.kid.as_bytes();
        let kid_len = u8::try_from(kid.len())
            .map_err(|_| SealError::Crypto("the sealing key id is too long".to_owned()))?;
        let mut blob = Vec::with_capacity(1 + kid.len() + sealed.len());
        blob.push(kid_len);
        blob.extend_from_slice(kid);
        blob.extend_from_slice(&sealed);
        Ok(format!(
            "{}.{}",
            purpose.prefix(),
            URL_SAFE_NO_PAD.encode(blob)
        ))
    }

    /// Splits a sealed value into the key that sealed it and the ciphertext.
    fn locate<'a>(
        &'a self,
        purpose: Purpose,
        text: &str,
    ) -> Result<(&'a SealingEntry, Vec<u8>, usize), OpenError> {
        if text.len() > MAX_SEALED_CHARS {
            return Err(OpenError::Malformed);
        }
        let body = text
            .strip_prefix(purpose.prefix())
            .and_then(|rest| rest.strip_prefix('.'))
            .ok_or(OpenError::WrongKind)?;
        let blob = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| OpenError::Malformed)?;
        let kid_len = usize::from(*blob.first().ok_or(OpenError::Malformed)?);
        let kid = blob
            .get(1..1 + kid_len)
            .and_then(|kid| std::str::from_utf8(kid).ok())
            .ok_or(OpenError::Malformed)?;
        let key = self
            .sealing
            .iter()
            .find(|key| key.kid == kid)
            .ok_or(OpenError::UnknownKey)?;
        Ok((key, blob, 1 + kid_len))
    }

    /// Opens a value sealed for `purpose`, if it is still valid at `now_unix`.
    pub fn open<T: DeserializeOwned>(
        &self,
        purpose: Purpose,
        text: &str,
        now_unix: i64,
    ) -> Result<T, OpenError> {
        let (key, blob, offset) = self.locate(purpose, text)?;
        let plaintext = key
            .aead
            .open(&purpose.associated_data(&key.kid), &blob[offset..])
            .map_err(|_| OpenError::Tampered)?;
        let envelope: OwnedEnvelope<T> =
            serde_json::from_slice(&plaintext).map_err(|_| OpenError::Malformed)?;
        if now_unix >= envelope.exp {
            return Err(OpenError::Expired);
        }
        Ok(envelope.value)
    }

    /// The secret of a confidential client registered with `client_id` (a sealed
    /// registration): a MAC of the client id under the key that sealed it, so nothing is
    /// stored and every node derives the same secret.
    pub fn client_secret(&self, client_id: &str) -> Result<String, OpenError> {
        let (key, _, _) = self.locate(Purpose::ClientRegistration, client_id)?;
        let tag = hmac::sign(&key.client_secret_key, client_id.as_bytes());
        Ok(URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// Compares a presented client secret with the derived one, in constant time.
    pub fn client_secret_matches(&self, client_id: &str, presented: &str) -> bool {
        match self.client_secret(client_id) {
            Ok(expected) => expected.as_bytes().ct_eq(presented.as_bytes()).into(),
            Err(_) => false,
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    exp: i64,
    #[serde(rename = "v")]
    value: &'a T,
}

#[derive(serde::Deserialize)]
struct OwnedEnvelope<T> {
    exp: i64,
    #[serde(rename = "v")]
    value: T,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use portcullis_shared::gateway::{SealingKey, SigningKey};
    use serde::Deserialize;

    pub(crate) const NOW: i64 = 1_800_000_000;

    /// A signing key as the control plane generates it.
    pub(crate) fn signing_key(kid: &str, state: GatewayKeyState) -> SigningKey<SecretValue> {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        SigningKey {
            kid: kid.to_owned(),
            algorithm: SIGNING_ALGORITHM.to_owned(),
            private_key: SecretValue::new(STANDARD.encode(pkcs8.as_ref())),
            public_jwk: serde_json::json!({
                "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
            })
            .to_string(),
            created_at_unix: NOW,
            state,
        }
    }

    pub(crate) fn sealing_key(kid: &str, state: GatewayKeyState) -> SealingKey<SecretValue> {
        let bytes = portcullis_shared::crypto::random_bytes::<32>().unwrap();
        SealingKey {
            kid: kid.to_owned(),
            key: SecretValue::new(STANDARD.encode(bytes)),
            created_at_unix: NOW,
            state,
        }
    }

    /// One active key of each kind.
    pub(crate) fn keys() -> GatewayKeys<SecretValue> {
        GatewayKeys {
            signing_keys: vec![signing_key("sig-1", GatewayKeyState::Active)],
            sealing_keys: vec![sealing_key("seal-1", GatewayKeyState::Active)],
        }
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Value1 {
        name: String,
        n: u32,
    }

    fn value() -> Value1 {
        Value1 {
            name: "alice".to_owned(),
            n: 7,
        }
    }

    #[test]
    fn sealed_values_round_trip_until_they_expire() {
        let ring = GatewayKeyring::compile(&keys()).unwrap();
        let sealed = ring
            .seal(Purpose::AuthorizationCode, &value(), NOW + 60)
            .unwrap();
        assert!(sealed.starts_with("pca1."));
        assert!(!sealed.contains("alice"));
        let opened: Value1 = ring
            .open(Purpose::AuthorizationCode, &sealed, NOW + 59)
            .unwrap();
        assert_eq!(opened, value());
        assert_eq!(
            ring.open::<Value1>(Purpose::AuthorizationCode, &sealed, NOW + 60),
            Err(OpenError::Expired)
        );
    }

    #[test]
    fn a_value_sealed_for_one_purpose_never_opens_as_another() {
        let ring = GatewayKeyring::compile(&keys()).unwrap();
        let code = ring
            .seal(Purpose::AuthorizationCode, &value(), NOW + 60)
            .unwrap();
        assert_eq!(
            ring.open::<Value1>(Purpose::RefreshToken, &code, NOW),
            Err(OpenError::WrongKind)
        );
        // Relabelled with the other prefix: the associated data differs, the tag fails.
        let relabelled = code.replacen("pca1.", "pcr1.", 1);
        assert_eq!(
            ring.open::<Value1>(Purpose::RefreshToken, &relabelled, NOW),
            Err(OpenError::Tampered)
        );
    }

    #[test]
    fn tampering_and_foreign_keys_are_refused() {
        let ring = GatewayKeyring::compile(&keys()).unwrap();
        let sealed = ring
            .seal(Purpose::RefreshToken, &value(), NOW + 60)
            .unwrap();
        let (prefix, body) = sealed.split_once('.').unwrap();
        let mut blob = URL_SAFE_NO_PAD.decode(body).unwrap();
        let last = blob.len() - 1;
        blob[last] ^= 1;
        let tampered = format!("{prefix}.{}", URL_SAFE_NO_PAD.encode(&blob));
        assert_eq!(
            ring.open::<Value1>(Purpose::RefreshToken, &tampered, NOW),
            Err(OpenError::Tampered)
        );
        // Another fleet with a key of the same kid cannot make values this fleet opens.
        let other = GatewayKeyring::compile(&keys()).unwrap();
        let foreign = other
            .seal(Purpose::RefreshToken, &value(), NOW + 60)
            .unwrap();
        assert_eq!(
            ring.open::<Value1>(Purpose::RefreshToken, &foreign, NOW),
            Err(OpenError::Tampered)
        );
        // An unknown kid, garbage, an oversized value.
        let mut unknown = keys();
        unknown.sealing_keys = vec![sealing_key("seal-9", GatewayKeyState::Active)];
        let stranger = GatewayKeyring::compile(&unknown).unwrap();
        let from_stranger = stranger
            .seal(Purpose::RefreshToken, &value(), NOW + 60)
            .unwrap();
        assert_eq!(
            ring.open::<Value1>(Purpose::RefreshToken, &from_stranger, NOW),
            Err(OpenError::UnknownKey)
        );
        for garbage in ["pcr1.", "pcr1.!!!", "pcr1.AA", "pcr1", ""] {
            assert!(
                ring.open::<Value1>(Purpose::RefreshToken, garbage, NOW)
                    .is_err(),
                "{garbage}"
            );
        }
        let oversized = format!("pcr1.{}", "A".repeat(MAX_SEALED_CHARS));
        assert_eq!(
            ring.open::<Value1>(Purpose::RefreshToken, &oversized, NOW),
            Err(OpenError::Malformed)
        );
    }

    #[test]
    fn rotation_keeps_old_values_open_by_kid() {
        let old = sealing_key("seal-old", GatewayKeyState::Active);
        let before = GatewayKeyring::compile(&GatewayKeys {
            signing_keys: Vec::new(),
            sealing_keys: vec![old.clone()],
        })
        .unwrap();
        let sealed_before = before
            .seal(Purpose::ClientRegistration, &value(), NOW + 600)
            .unwrap();
        let secret_before = before.client_secret(&sealed_before).unwrap();

        let mut demoted = old.clone();
        demoted.state = GatewayKeyState::VerifyOnly;
        let after = GatewayKeyring::compile(&GatewayKeys {
            signing_keys: Vec::new(),
            sealing_keys: vec![demoted, sealing_key("seal-new", GatewayKeyState::Active)],
        })
        .unwrap();
        assert_eq!(
            after
                .open::<Value1>(Purpose::ClientRegistration, &sealed_before, NOW)
                .unwrap(),
            value()
        );
        // The derived client secret stays the same across the rotation.
        assert!(after.client_secret_matches(&sealed_before, &secret_before));
        assert!(!after.client_secret_matches(&sealed_before, "guess"));
        // New values are sealed with the new key; the old fleet state cannot open them.
        let sealed_after = after
            .seal(Purpose::ClientRegistration, &value(), NOW + 600)
            .unwrap();
        assert_eq!(
            before.open::<Value1>(Purpose::ClientRegistration, &sealed_after, NOW),
            Err(OpenError::UnknownKey)
        );
        // Retired: gone.
        let retired = GatewayKeyring::compile(&GatewayKeys {
            signing_keys: Vec::new(),
            sealing_keys: vec![sealing_key("seal-new", GatewayKeyState::Active)],
        })
        .unwrap();
        assert_eq!(
            retired.open::<Value1>(Purpose::ClientRegistration, &sealed_before, NOW),
            Err(OpenError::UnknownKey)
        );
    }

    #[test]
    fn without_keys_nothing_is_sealed_or_signed() {
        let ring = GatewayKeyring::compile(&GatewayKeys::default()).unwrap();
        assert!(!ring.can_issue());
        assert_eq!(
            ring.seal(Purpose::AuthorizationCode, &value(), NOW + 60),
            Err(SealError::NoActiveKey)
        );
        assert_eq!(
            ring.sign_access_token(&serde_json::json!({})),
            Err(SignError::NoActiveKey)
        );
        assert_eq!(ring.public_jwks(), r#"{"keys":[]}"#);
    }

    #[test]
    fn broken_keys_are_reported_with_their_field() {
        let mut keys = keys();
        keys.signing_keys[0].private_key = SecretValue::new("bm90IGEga2V5");
        keys.sealing_keys[0].key = SecretValue::new("c2hvcnQ=");
        let mut mismatched = signing_key("sig-2", GatewayKeyState::Active);
        mismatched.public_jwk = signing_key("x", GatewayKeyState::Active).public_jwk;
        keys.signing_keys.push(mismatched);
        let errors = GatewayKeyring::compile(&keys).unwrap_err().to_string();
        assert!(
            errors.contains("signing_keys[sig-1].private_key"),
            "{errors}"
        );
        assert!(errors.contains("does not match the public JWK"), "{errors}");
        assert!(errors.contains("sealing_keys[seal-1].key"), "{errors}");
        assert!(!errors.contains("bm90IGEga2V5"));
    }

    #[test]
    fn the_jwks_lists_every_signing_key_without_private_parts() {
        let mut keys = keys();
        keys.signing_keys
            .push(signing_key("sig-0", GatewayKeyState::VerifyOnly));
        let ring = GatewayKeyring::compile(&keys).unwrap();
        let jwks: Value = serde_json::from_str(ring.public_jwks()).unwrap();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|key| key["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, ["sig-1", "sig-0"]);
        assert!(!ring.public_jwks().contains("\"d\""));
        assert_eq!(ring.verification_keys().unwrap().len(), 2);
        assert!(ring.can_issue());
    }
}

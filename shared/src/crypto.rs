//! Authenticated encryption (AES-256-GCM) and keyed fingerprints, on aws-lc-rs. Used for
//! secrets at rest in the control plane, snapshots on a node's disk, and sealed OAuth values.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

pub const KEY_LEN: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("a key must be {KEY_LEN} bytes, got {0}")]
    KeyLength(usize),
    #[error("key is not valid base64 or hex")]
    KeyEncoding,
    #[error("ciphertext is truncated")]
    Truncated,
    #[error("decryption failed: wrong key or tampered data")]
    Open,
    #[error("the system random generator failed")]
    Random,
}

/// Fills a buffer from the operating system's secure random generator.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CryptoError::Random)?;
    Ok(bytes)
}

/// A 256-bit AEAD key. The bytes are kept only inside aws-lc-rs key structures.
pub struct AeadKey {
    key: LessSafeKey,
    hmac: hmac::Key,
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKey([redacted])")
    }
}

impl AeadKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != KEY_LEN {
            return Err(CryptoError::KeyLength(bytes.len()));
        }
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| CryptoError::Open)?;
        // A separate subkey for fingerprints, so a fingerprint never reuses the cipher key.
        let fingerprint_key = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, bytes),
            b"portcullis/fingerprint/v1",
        );
        Ok(Self {
            key: LessSafeKey::new(unbound),
            hmac: hmac::Key::new(hmac::HMAC_SHA256, fingerprint_key.as_ref()),
        })
    }

    pub fn generate() -> Result<(Self, [u8; KEY_LEN]), CryptoError> {
        let bytes = random_bytes::<KEY_LEN>()?;
        Ok((Self::from_bytes(&bytes)?, bytes))
    }

    /// Parses a key written as base64 (standard or URL-safe) or hex, ignoring surrounding
    /// whitespace, as it comes from a file or an environment variable.
    pub fn from_text(text: &str) -> Result<Self, CryptoError> {
        Self::from_bytes(&decode_key_text(text)?)
    }

    /// Encrypts with a fresh random nonce. Output: nonce || ciphertext || tag. `aad` binds
    /// the ciphertext to its context (a secret id, a purpose), so it cannot be moved.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce_bytes = random_bytes::<NONCE_LEN>()?;
        let mut in_out = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad),
                &mut in_out,
            )
            .map_err(|_| CryptoError::Open)?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + in_out.len());
        sealed.extend_from_slice(&nonce_bytes);
        sealed.extend_from_slice(&in_out);
        Ok(sealed)
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(CryptoError::Truncated);
        }
        let (nonce_bytes, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce_bytes).map_err(|_| CryptoError::Open)?;
        let mut in_out = ciphertext.to_vec();
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut in_out)
            .map_err(|_| CryptoError::Open)?;
        Ok(plaintext.to_vec())
    }

    /// A keyed fingerprint: equal for equal values under the same key, and useless for
    /// guessing the value without the key (unlike a plain hash of a short password).
    pub fn fingerprint(&self, value: &[u8]) -> String {
        let tag = hmac::sign(&self.hmac, value);
        format!("hmac-sha256:{}", hex::encode(&tag.as_ref()[..8]))
    }
}

/// Decodes key text in base64 (standard or URL-safe, padded or not) or hex.
pub fn decode_key_text(text: &str) -> Result<Vec<u8>, CryptoError> {
    let trimmed = text.trim();
    if trimmed.len() == KEY_LEN * 2 && trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex::decode(trimmed).map_err(|_| CryptoError::KeyEncoding);
    }
    let engines = [
        &STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    for engine in engines {
        if let Ok(bytes) = engine.decode(trimmed) {
            return Ok(bytes);
        }
    }
    Err(CryptoError::KeyEncoding)
}

/// Base64 text of a key, as written to key files.
pub fn encode_key_text(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// SHA-256 of the input, hex-encoded.
pub fn sha256_hex(input: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, input).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_aad_binding() {
        let (key, _) = AeadKey::generate().unwrap();
        let sealed = key.seal(b"secret-1", b"hunter2").unwrap();
        assert_eq!(key.open(b"secret-1", &sealed).unwrap(), b"hunter2");
        assert_eq!(key.open(b"secret-2", &sealed), Err(CryptoError::Open));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(key.open(b"secret-1", &tampered), Err(CryptoError::Open));
        assert_eq!(
            key.open(b"secret-1", &sealed[..10]),
            Err(CryptoError::Truncated)
        );
    }

    #[test]
    fn wrong_key_cannot_open() {
        let (a, _) = AeadKey::generate().unwrap();
        let (b, _) = AeadKey::generate().unwrap();
        let sealed = a.seal(b"", b"x").unwrap();
        assert_eq!(b.open(b"", &sealed), Err(CryptoError::Open));
    }

    #[test]
    fn fingerprints_are_keyed_and_stable() {
        let bytes = [7u8; 32];
        let a = AeadKey::from_bytes(&bytes).unwrap();
        let a2 = AeadKey::from_bytes(&bytes).unwrap();
        let (b, _) = AeadKey::generate().unwrap();
        assert_eq!(a.fingerprint(b"pw"), a2.fingerprint(b"pw"));
        assert_ne!(a.fingerprint(b"pw"), b.fingerprint(b"pw"));
        assert_ne!(a.fingerprint(b"pw"), a.fingerprint(b"pw2"));
        assert!(a.fingerprint(b"pw").starts_with("hmac-sha256:"));
    }

    #[test]
    fn key_text_accepts_base64_and_hex() {
        let bytes = [42u8; 32];
        assert_eq!(decode_key_text(&encode_key_text(&bytes)).unwrap(), bytes);
        assert_eq!(
            decode_key_text(&format!(" {}\n", hex::encode(bytes))).unwrap(),
            bytes
        );
        assert!(AeadKey::from_text("c2hvcnQ=").is_err());
        assert_eq!(
            decode_key_text("not base64 !!"),
            Err(CryptoError::KeyEncoding)
        );
    }
}

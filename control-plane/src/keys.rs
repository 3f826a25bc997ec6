//! Generation of the gateway's authorization-server keys: ES256 signing keys (access tokens
//! for MCP clients) and AES-256 sealing keys (self-contained codes, registrations, refresh
//! tokens, login state).

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use portcullis_shared::crypto::{KEY_LEN, random_bytes, sha256_hex};
use portcullis_shared::gateway::SIGNING_ALGORITHM;
use portcullis_shared::secret::SecretValue;

#[derive(Debug, thiserror::Error)]
#[error("key generation failed: {0}")]
pub struct KeyGenerationError(String);

/// A new signing key: its id, public JWK and private key (PKCS#8 DER, base64).
pub struct NewSigningKey {
    pub kid: String,
    pub public_jwk: String,
    pub private_key: SecretValue,
}

pub fn generate_signing_key() -> Result<NewSigningKey, KeyGenerationError> {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|error| KeyGenerationError(error.to_string()))?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
        .map_err(|error| KeyGenerationError(error.to_string()))?;
    // An uncompressed P-256 point: 0x04, then 32 bytes of x and 32 of y.
    let point = pair.public_key().as_ref();
    if point.len() != 65 || point[0] != 4 {
        return Err(KeyGenerationError(
            "unexpected public key encoding".to_owned(),
        ));
    }
    let kid = format!("sig-{}", &sha256_hex(point)[..16]);
    let public_jwk = serde_json::json!({
        "kty": "EC",
        "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        "kid": kid,
        "alg": SIGNING_ALGORITHM,
        "use": "sig",
    })
    .to_string();
    Ok(NewSigningKey {
        kid,
        public_jwk,
        private_key: SecretValue::new(STANDARD.encode(pkcs8.as_ref())),
    })
}

/// A new sealing key: its id and 32 random bytes, base64.
pub fn generate_sealing_key() -> Result<(String, SecretValue), KeyGenerationError> {
    let bytes = random_bytes::<KEY_LEN>().map_err(|error| KeyGenerationError(error.to_string()))?;
    let id = random_bytes::<6>().map_err(|error| KeyGenerationError(error.to_string()))?;
    Ok((
        format!("seal-{}", hex::encode(id)),
        SecretValue::new(STANDARD.encode(bytes)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_keys_are_usable_es256_jwks() {
        let key = generate_signing_key().unwrap();
        let jwk: jsonwebtoken_free::Jwk = serde_json::from_str(&key.public_jwk).unwrap();
        assert_eq!(jwk.kid, key.kid);
        assert_eq!(jwk.crv, "P-256");
        let der = STANDARD.decode(key.private_key.expose()).unwrap();
        assert!(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).is_ok());
    }

    #[test]
    fn sealing_keys_are_32_random_bytes() {
        let (kid_a, a) = generate_sealing_key().unwrap();
        let (kid_b, b) = generate_sealing_key().unwrap();
        assert_ne!(kid_a, kid_b);
        assert_ne!(a, b);
        assert_eq!(STANDARD.decode(a.expose()).unwrap().len(), 32);
    }

    /// The few JWK fields the test reads.
    mod jsonwebtoken_free {
        #[derive(serde::Deserialize)]
        pub struct Jwk {
            pub kid: String,
            pub crv: String,
        }
    }
}

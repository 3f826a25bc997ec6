//! Real key pairs generated in tests, their JWKs, and a small JWS encoder that signs with
//! aws-lc-rs directly, so tests can build every kind of bad token (alg none, HMAC with a
//! public key, wrong headers) as well as good ones.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    self, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    Ed25519KeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

enum Pair {
    Rsa(RsaKeyPair),
    Ec {
        pair: EcdsaKeyPair,
        curve: &'static str,
        coordinate_len: usize,
    },
    Ed(Ed25519KeyPair),
}

pub struct TestKey {
    pub kid: String,
    pair: Pair,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl TestKey {
    pub fn rsa(kid: &str) -> Self {
        Self {
            kid: kid.to_owned(),
            pair: Pair::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).unwrap()),
        }
    }

    pub fn ec_p256(kid: &str) -> Self {
        Self {
            kid: kid.to_owned(),
            pair: Pair::Ec {
                pair: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
                curve: "P-256",
                coordinate_len: 32,
            },
        }
    }

    pub fn ec_p384(kid: &str) -> Self {
        Self {
            kid: kid.to_owned(),
            pair: Pair::Ec {
                pair: EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap(),
                curve: "P-384",
                coordinate_len: 48,
            },
        }
    }

    pub fn ed25519(kid: &str) -> Self {
        Self {
            kid: kid.to_owned(),
            pair: Pair::Ed(Ed25519KeyPair::generate().unwrap()),
        }
    }

    /// The public JWK, with `kid` and without `alg`.
    pub fn jwk(&self) -> Value {
        match &self.pair {
            Pair::Rsa(pair) => {
                let components = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                json!({"kty": "RSA", "kid": self.kid, "use": "sig", "n": b64(&components.n), "e": b64(&components.e)})
            }
            Pair::Ec {
                pair,
                curve,
                coordinate_len,
            } => {
                let point = pair.public_key().as_ref();
                let (x, y) = point[1..].split_at(*coordinate_len);
                json!({"kty": "EC", "kid": self.kid, "crv": curve, "x": b64(x), "y": b64(y)})
            }
            Pair::Ed(pair) => {
                json!({"kty": "OKP", "kid": self.kid, "crv": "Ed25519", "x": b64(pair.public_key().as_ref())})
            }
        }
    }

    /// The algorithm tests sign with by default for this key.
    pub fn default_algorithm(&self) -> &'static str {
        match &self.pair {
            Pair::Rsa(_) => "RS256",
            Pair::Ec { curve: "P-256", .. } => "ES256",
            Pair::Ec { .. } => "ES384",
            Pair::Ed(_) => "EdDSA",
        }
    }

    /// The public key as DER (SubjectPublicKeyInfo for RSA), the "secret" of the HS/RS
    /// confusion attack.
    pub fn public_key_der(&self) -> Vec<u8> {
        match &self.pair {
            Pair::Rsa(pair) => pair.public_key().as_der().unwrap().as_ref().to_vec(),
            Pair::Ec { pair, .. } => pair.public_key().as_ref().to_vec(),
            Pair::Ed(pair) => pair.public_key().as_ref().to_vec(),
        }
    }

    /// Signs `claims` with the default algorithm and `kid` in the header.
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": self.default_algorithm(), "typ": "JWT", "kid": self.kid});
        self.sign_with_header(&header, claims)
    }

    /// Signs with the algorithm the header names (which must suit this key).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let algorithm = header["alg"].as_str().unwrap();
        let rng = SystemRandom::new();
        let signature = match &self.pair {
            Pair::Rsa(pair) => {
                let encoding: &'static dyn signature::RsaEncoding = match algorithm {
                    "RS256" => &signature::RSA_PKCS1_SHA256,
                    "RS384" => &signature::RSA_PKCS1_SHA384,
                    "RS512" => &signature::RSA_PKCS1_SHA512,
                    "PS256" => &signature::RSA_PSS_SHA256,
                    "PS384" => &signature::RSA_PSS_SHA384,
                    "PS512" => &signature::RSA_PSS_SHA512,
                    other => panic!("an RSA key cannot sign {other}"),
                };
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(encoding, &rng, signing_input.as_bytes(), &mut signature)
                    .unwrap();
                signature
            }
            Pair::Ec { pair, .. } => pair
                .sign(&rng, signing_input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
            Pair::Ed(pair) => pair.sign(signing_input.as_bytes()).as_ref().to_vec(),
        };
        format!("{signing_input}.{}", b64(&signature))
    }
}

/// A JWKS document holding the public keys.
pub fn jwks(keys: &[&TestKey]) -> Value {
    json!({"keys": keys.iter().map(|key| key.jwk()).collect::<Vec<_>>()})
}

/// An unsigned token (`alg: none`, empty signature).
pub fn unsigned_token(kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "none", "kid": kid});
    format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// An HS256 token whose HMAC secret is `secret` (for the HS/RS confusion attack, the
/// verifier's public key).
pub fn hs256_token(kid: &str, secret: &[u8], claims: &Value) -> String {
    let header = json!({"alg": "HS256", "typ": "JWT", "kid": kid});
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", b64(tag.as_ref()))
}

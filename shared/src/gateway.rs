//! The gateway's own authorization-server material: signing keys for the access tokens it
//! issues to MCP clients, sealing keys for self-contained values (codes, registrations,
//! refresh tokens, login state), and revocations. The control plane generates and rotates
//! keys; nodes receive them in snapshots.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::WithSecrets;
use crate::names::{CatalogId, UserId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayKeyState {
    /// Signs (seals) new values. Exactly one key of each kind is active.
    Active,
    /// Verifies (opens) values made before a rotation, until retired.
    VerifyOnly,
}

/// The only signing algorithm the gateway issues tokens with: ECDSA P-256 SHA-256.
pub const SIGNING_ALGORITHM: &str = "ES256";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey<S> {
    pub kid: String,
    pub algorithm: String,
    /// PKCS#8 DER of the private key, base64.
    pub private_key: S,
    /// The public key as a JWK document.
    pub public_jwk: String,
    pub created_at_unix: i64,
    pub state: GatewayKeyState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealingKey<S> {
    pub kid: String,
    /// 32 bytes, base64.
    pub key: S,
    pub created_at_unix: i64,
    pub state: GatewayKeyState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayKeys<S> {
    pub signing_keys: Vec<SigningKey<S>>,
    pub sealing_keys: Vec<SealingKey<S>>,
}

impl<S> Default for GatewayKeys<S> {
    fn default() -> Self {
        Self {
            signing_keys: Vec::new(),
            sealing_keys: Vec::new(),
        }
    }
}

impl<S> GatewayKeys<S> {
    pub fn active_signing_key(&self) -> Option<&SigningKey<S>> {
        self.signing_keys
            .iter()
            .find(|key| key.state == GatewayKeyState::Active)
    }

    pub fn active_sealing_key(&self) -> Option<&SealingKey<S>> {
        self.sealing_keys
            .iter()
            .find(|key| key.state == GatewayKeyState::Active)
    }
}

impl<S> WithSecrets<S> for GatewayKeys<S> {
    type Mapped<T> = GatewayKeys<T>;

    fn try_map_secrets<T, E>(
        self,
        f: &mut impl FnMut(String, S) -> Result<T, E>,
    ) -> Result<GatewayKeys<T>, E> {
        Ok(GatewayKeys {
            signing_keys: self
                .signing_keys
                .into_iter()
                .map(|key| {
                    Ok(SigningKey {
                        private_key: f(
                            format!("signing_keys[{}].private_key", key.kid),
                            key.private_key,
                        )?,
                        kid: key.kid,
                        algorithm: key.algorithm,
                        public_jwk: key.public_jwk,
                        created_at_unix: key.created_at_unix,
                        state: key.state,
                    })
                })
                .collect::<Result<_, E>>()?,
            sealing_keys: self
                .sealing_keys
                .into_iter()
                .map(|key| {
                    Ok(SealingKey {
                        key: f(format!("sealing_keys[{}].key", key.kid), key.key)?,
                        kid: key.kid,
                        created_at_unix: key.created_at_unix,
                        state: key.state,
                    })
                })
                .collect::<Result<_, E>>()?,
        })
    }
}

/// Signed-out users: every gateway token and grant issued to them before the time is
/// refused.
pub type RevokedUsers = BTreeMap<(CatalogId, UserId), i64>;

/// Revoked grants (refresh-token families), each kept until it would have expired.
pub type RevokedGrants = BTreeMap<String, i64>;

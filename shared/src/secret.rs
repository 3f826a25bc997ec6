//! Secrets as types. A [`SecretValue`] holds plaintext but cannot be printed, logged or
//! serialized: it has no `Serialize` impl and its `Debug` is redacted, so a configuration
//! that holds plaintext secrets cannot be written anywhere by accident.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// A plaintext secret, in memory only.
#[derive(Clone)]
pub struct SecretValue(SecretString);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The plaintext. Call sites are few and each one is a place where the value leaves the
    /// process on purpose (an upstream header, an encryption call).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Constant-time comparison, so timing does not reveal how much of a guess was right.
    pub fn constant_time_eq(&self, other: &str) -> bool {
        self.expose().as_bytes().ct_eq(other.as_bytes()).into()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue([redacted])")
    }
}

impl PartialEq for SecretValue {
    fn eq(&self, other: &Self) -> bool {
        self.constant_time_eq(other.expose())
    }
}

impl Eq for SecretValue {}

/// What a reader may learn about a secret: whether it is set, and a keyed fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretStatus {
    pub set: bool,
    pub fingerprint: String,
}

/// A secret in a write command: a new value, or "keep what is stored at this field".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretInput {
    Set(SecretValue),
    Keep,
}

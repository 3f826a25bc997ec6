//! Who may call the control plane: static bearer tokens from an access file, each with a
//! role. Only SHA-256 hashes of tokens are stored; a presented token is hashed and compared
//! in constant time against every entry.
//!
//! ```yaml
//! tokens:
//!   - name: ops-admin
//!     role: admin        # read and write the configuration
//!     sha256: 5e88...    # sha256 of the token, hex
//!   - name: security-audit
//!     role: auditor      # read only
//!     sha256: 9f86...
//!   - name: gateway-fleet
//!     role: node         # data-plane nodes: snapshot stream only
//!     sha256: 2c26...
//! # Optional: admins and auditors sign in with JWTs from the identity provider
//! # (see `oidc.rs`); nodes always use a token or a client certificate.
//! oidc:
//!   issuer: https://login.example.com
//!   audience: portcullis-admin
//!   role_claim: groups
//!   admin_values: [platform-admins]
//!   auditor_values: [security]
//! ```

use std::path::Path;

use portcullis_shared::crypto::sha256_hex;
use std::sync::Arc;

use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::oidc::OidcVerifier;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Auditor,
    Node,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Auditor => "auditor",
            Role::Node => "node",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("cannot read access file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("access file {path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessFile {
    #[serde(default)]
    tokens: Vec<RawToken>,
    /// Admins and auditors may also present a JWT from the identity provider.
    #[serde(default)]
    oidc: Option<crate::oidc::RawOidc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    role: String,
    sha256: String,
}

struct Entry {
    name: String,
    role: Role,
    hash: [u8; 32],
}

pub struct AccessList {
    entries: Vec<Entry>,
    oidc: Option<Arc<OidcVerifier>>,
}

impl AccessList {
    pub fn load(path: &Path) -> Result<Self, AccessError> {
        let text = std::fs::read_to_string(path).map_err(|source| AccessError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|message| AccessError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses and validates an access file, reporting every bad entry at once.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: RawAccessFile = serde_norway::from_str(text).map_err(|error| error.to_string())?;
        let raw_tokens = raw.tokens;
        let mut problems = Vec::new();
        let mut entries = Vec::new();
        for (index, token) in raw_tokens.into_iter().enumerate() {
            let field = format!("tokens[{index}]");
            if token.name.trim().is_empty() || token.name.chars().any(char::is_control) {
                problems.push(format!("{field}.name: must be a non-empty name"));
            } else if entries.iter().any(|entry: &Entry| entry.name == token.name) {
                problems.push(format!("{field}.name: duplicate name {:?}", token.name));
            }
            let role = match token.role.as_str() {
                "admin" => Some(Role::Admin),
                "auditor" => Some(Role::Auditor),
                "node" => Some(Role::Node),
                other => {
                    problems.push(format!(
                        "{field}.role: unknown role {other:?} (admin, auditor or node)"
                    ));
                    None
                }
            };
            let hash = hex::decode(token.sha256.trim())
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
            if hash.is_none() {
                problems.push(format!("{field}.sha256: must be 64 hex digits"));
            }
            if let (Some(role), Some(hash)) = (role, hash) {
                entries.push(Entry {
                    name: token.name,
                    role,
                    hash,
                });
            }
        }
        if let Some(oidc) = &raw.oidc {
            problems.extend(oidc.validate());
        }
        if entries.is_empty() && raw.oidc.is_none() && problems.is_empty() {
            problems.push("tokens: at least one token (or an oidc section) is required".to_owned());
        }
        if problems.is_empty() {
            let oidc = raw
                .oidc
                .map(OidcVerifier::new)
                .transpose()
                .map_err(|error| error.to_string())?;
            Ok(Self { entries, oidc })
        } else {
            Err(problems.join("; "))
        }
    }

    /// The OIDC verifier, when the access file configures one.
    pub fn oidc(&self) -> Option<&Arc<OidcVerifier>> {
        self.oidc.as_ref()
    }

    /// The principal a bearer token belongs to: a static token (every entry compared in
    /// constant time, so timing does not tell which nearly matched), or a JWT from the
    /// configured identity provider. Node tokens are only ever static.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        if let Some(principal) = self.authenticate_static(token) {
            return Some(principal);
        }
        let oidc = self.oidc.as_ref()?;
        if token.split('.').count() != 3 {
            return None;
        }
        match oidc.verify(token) {
            Ok(principal) => Some(principal),
            Err(reason) => {
                tracing::info!(%reason, "an admin JWT was refused");
                None
            }
        }
    }

    fn authenticate_static(&self, token: &str) -> Option<Principal> {
        let presented = hex::decode(sha256_hex(token.as_bytes())).ok()?;
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.hash.ct_eq(presented.as_slice())) {
                found = Some(Principal {
                    name: entry.name.clone(),
                    role: entry.role,
                });
            }
        }
        found
    }
}

/// The bearer token of a gRPC request, if it carries one.
pub fn bearer_token(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
        Some(token.trim())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &[(&str, &str, &str)]) -> String {
        let mut text = "tokens:\n".to_owned();
        for (name, role, token) in entries {
            text.push_str(&format!(
                "  - name: {name}\n    role: {role}\n    sha256: {}\n",
                sha256_hex(token.as_bytes())
            ));
        }
        text
    }

    #[test]
    fn authenticates_by_token_hash() {
        let access =
            AccessList::parse(&file(&[("ops", "admin", "t1"), ("audit", "auditor", "t2")]))
                .unwrap();
        assert_eq!(
            access.authenticate("t1"),
            Some(Principal {
                name: "ops".into(),
                role: Role::Admin
            })
        );
        assert_eq!(access.authenticate("t2").unwrap().role, Role::Auditor);
        assert_eq!(access.authenticate("t3"), None);
        assert_eq!(access.authenticate(""), None);
    }

    #[test]
    fn reports_every_bad_entry() {
        let text = "tokens:\n  - name: a\n    role: root\n    sha256: xyz\n  - name: a\n    role: admin\n    sha256: 00\n";
        let error = AccessList::parse(text).err().unwrap();
        assert!(
            error.contains("tokens[0].role: unknown role \"root\""),
            "{error}"
        );
        assert!(error.contains("tokens[0].sha256"), "{error}");
        assert!(error.contains("tokens[1].sha256"), "{error}");
        assert!(AccessList::parse("tokens: []").is_err());
        assert!(AccessList::parse("tokens: []\nextra: 1").is_err());
    }

    #[test]
    fn bearer_parsing() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(bearer_token(&metadata), None);
        metadata.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&metadata), Some("abc"));
        metadata.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&metadata), None);
    }
}

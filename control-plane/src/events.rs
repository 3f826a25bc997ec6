//! The events of the configuration log. Every change is one of these, stored with a schema
//! version so that future readers can still decode today's log.

use std::fmt;
use std::str::FromStr;

use portcullis_shared::config::{
    AgentAuth, AppAuth, IdentityProvider, McpServer, OAuthApp, OutboundHeader,
};
use portcullis_shared::gateway::{SealingKey, SigningKey};
use portcullis_shared::names::{CatalogId, HeaderName, ServerName, UserId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::secrets::SealedSecret;

/// The schema version this build writes.
pub const EVENT_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateKind {
    Server,
    IdentityProvider,
    OauthApp,
    Credential,
    /// The gateway's own authorization server: `gateway/keys`, `gateway/revocations`.
    Gateway,
}

impl AggregateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AggregateKind::Server => "server",
            AggregateKind::IdentityProvider => "identity_provider",
            AggregateKind::OauthApp => "oauth_app",
            AggregateKind::Credential => "credential",
            AggregateKind::Gateway => "gateway",
        }
    }

    /// How people call it in messages.
    pub fn label(self) -> &'static str {
        match self {
            AggregateKind::Server => "server",
            AggregateKind::IdentityProvider => "identity provider",
            AggregateKind::OauthApp => "OAuth app",
            AggregateKind::Credential => "stored credential",
            AggregateKind::Gateway => "gateway",
        }
    }
}

/// One aggregate: a server or a catalog entry. Written as `kind/id`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AggregateKey {
    pub kind: AggregateKind,
    pub id: String,
}

impl AggregateKey {
    pub fn server(name: &ServerName) -> Self {
        Self {
            kind: AggregateKind::Server,
            id: name.to_string(),
        }
    }

    pub fn catalog(kind: AggregateKind, id: &CatalogId) -> Self {
        Self {
            kind,
            id: id.to_string(),
        }
    }

    /// The gateway's keys.
    pub fn gateway_keys() -> Self {
        Self {
            kind: AggregateKind::Gateway,
            id: "keys".to_owned(),
        }
    }

    /// Signed-out users and revoked grants.
    pub fn gateway_revocations() -> Self {
        Self {
            kind: AggregateKind::Gateway,
            id: "revocations".to_owned(),
        }
    }
}

impl fmt::Display for AggregateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.id)
    }
}

impl FromStr for AggregateKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (kind, id) = text
            .split_once('/')
            .ok_or_else(|| format!("aggregate key {text:?} has no '/'"))?;
        let kind = match kind {
            "server" => AggregateKind::Server,
            "identity_provider" => AggregateKind::IdentityProvider,
            "oauth_app" => AggregateKind::OauthApp,
            "credential" => AggregateKind::Credential,
            "gateway" => AggregateKind::Gateway,
            other => return Err(format!("unknown aggregate kind {other:?}")),
        };
        Ok(Self {
            kind,
            id: id.to_owned(),
        })
    }
}

impl TryFrom<String> for AggregateKey {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        value.parse()
    }
}

impl From<AggregateKey> for String {
    fn from(value: AggregateKey) -> String {
        value.to_string()
    }
}

/// What changed. Payloads carry secrets only sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventPayload {
    ServerRegistered {
        server: McpServer<SealedSecret>,
    },
    ServerUpdated {
        server: McpServer<SealedSecret>,
    },
    ServerDeleted {
        name: ServerName,
    },
    AgentAuthSet {
        server: ServerName,
        agent_auth: AgentAuth,
    },
    AppAuthSet {
        server: ServerName,
        app_auth: AppAuth<SealedSecret>,
    },
    OutboundHeaderPut {
        server: ServerName,
        header: OutboundHeader<SealedSecret>,
    },
    OutboundHeaderRemoved {
        server: ServerName,
        header_name: HeaderName,
    },
    IdentityProviderPut {
        identity_provider: IdentityProvider<SealedSecret>,
    },
    IdentityProviderDeleted {
        id: CatalogId,
    },
    OauthAppPut {
        oauth_app: OAuthApp<SealedSecret>,
    },
    OauthAppDeleted {
        app_id: CatalogId,
    },
    CredentialPut {
        id: CatalogId,
        description: String,
        org_value: Option<SealedSecret>,
    },
    CredentialDeleted {
        id: CatalogId,
    },
    UserCredentialSet {
        credential_id: CatalogId,
        user: UserId,
        value: SealedSecret,
    },
    UserCredentialDeleted {
        credential_id: CatalogId,
        user: UserId,
    },
    /// A new active signing key; the previous active one becomes verify-only.
    GatewaySigningKeyAdded {
        key: SigningKey<SealedSecret>,
    },
    /// A new active sealing key; the previous active one becomes verify-only.
    GatewaySealingKeyAdded {
        key: SealingKey<SealedSecret>,
    },
    GatewayKeyRetired {
        kid: String,
    },
    UserSessionsRevoked {
        identity_provider: CatalogId,
        subject: UserId,
        revoked_at_unix: i64,
    },
    GrantRevoked {
        grant_id: String,
        expires_at_unix: i64,
        reason: String,
    },
}

impl EventPayload {
    pub fn type_name(&self) -> &'static str {
        match self {
            EventPayload::ServerRegistered { .. } => "server_registered",
            EventPayload::ServerUpdated { .. } => "server_updated",
            EventPayload::ServerDeleted { .. } => "server_deleted",
            EventPayload::AgentAuthSet { .. } => "agent_auth_set",
            EventPayload::AppAuthSet { .. } => "app_auth_set",
            EventPayload::OutboundHeaderPut { .. } => "outbound_header_put",
            EventPayload::OutboundHeaderRemoved { .. } => "outbound_header_removed",
            EventPayload::IdentityProviderPut { .. } => "identity_provider_put",
            EventPayload::IdentityProviderDeleted { .. } => "identity_provider_deleted",
            EventPayload::OauthAppPut { .. } => "oauth_app_put",
            EventPayload::OauthAppDeleted { .. } => "oauth_app_deleted",
            EventPayload::CredentialPut { .. } => "credential_put",
            EventPayload::CredentialDeleted { .. } => "credential_deleted",
            EventPayload::UserCredentialSet { .. } => "user_credential_set",
            EventPayload::UserCredentialDeleted { .. } => "user_credential_deleted",
            EventPayload::GatewaySigningKeyAdded { .. } => "gateway_signing_key_added",
            EventPayload::GatewaySealingKeyAdded { .. } => "gateway_sealing_key_added",
            EventPayload::GatewayKeyRetired { .. } => "gateway_key_retired",
            EventPayload::UserSessionsRevoked { .. } => "user_sessions_revoked",
            EventPayload::GrantRevoked { .. } => "grant_revoked",
        }
    }

    /// Whether nodes need a new snapshot after this event. Per-user credential values are
    /// not part of snapshots: nodes fetch them on demand.
    pub fn affects_snapshot(&self) -> bool {
        !matches!(
            self,
            EventPayload::UserCredentialSet { .. } | EventPayload::UserCredentialDeleted { .. }
        )
    }

    /// One line for humans, with no secret material.
    pub fn summary(&self) -> String {
        match self {
            EventPayload::ServerRegistered { server } => format!(
                "registered server {} -> {} (agent auth {}, app auth {})",
                server.name,
                server.upstream_url,
                agent_mode_name(&server.agent_auth),
                server.app_auth.kind_name()
            ),
            EventPayload::ServerUpdated { server } => format!(
                "updated server {} -> {} (agent auth {}, app auth {}, {} outbound headers)",
                server.name,
                server.upstream_url,
                agent_mode_name(&server.agent_auth),
                server.app_auth.kind_name(),
                server.outbound_headers.len()
            ),
            EventPayload::ServerDeleted { name } => format!("deleted server {name}"),
            EventPayload::AgentAuthSet { server, agent_auth } => format!(
                "set agent auth of {server} to {} ({} restricted header patterns)",
                agent_mode_name(agent_auth),
                agent_auth.restricted_inbound_headers.len()
            ),
            EventPayload::AppAuthSet { server, app_auth } => {
                format!("set app auth of {server} to {}", app_auth.kind_name())
            }
            EventPayload::OutboundHeaderPut { server, header } => format!(
                "put outbound header {} ({}) on {server}",
                header.header_name,
                header.source.kind_name()
            ),
            EventPayload::OutboundHeaderRemoved {
                server,
                header_name,
            } => format!("removed outbound header {header_name} from {server}"),
            EventPayload::IdentityProviderPut { identity_provider } => format!(
                "put identity provider {} (issuer {})",
                identity_provider.id, identity_provider.issuer
            ),
            EventPayload::IdentityProviderDeleted { id } => {
                format!("deleted identity provider {id}")
            }
            EventPayload::OauthAppPut { oauth_app } => format!(
                "put OAuth app {} (authorize {})",
                oauth_app.app_id, oauth_app.authorize_url
            ),
            EventPayload::OauthAppDeleted { app_id } => format!("deleted OAuth app {app_id}"),
            EventPayload::CredentialPut { id, org_value, .. } => format!(
                "put stored credential {id} (org-wide value {})",
                if org_value.is_some() { "set" } else { "unset" }
            ),
            EventPayload::CredentialDeleted { id } => format!("deleted stored credential {id}"),
            EventPayload::UserCredentialSet {
                credential_id,
                user,
                ..
            } => format!("set {user}'s value of stored credential {credential_id}"),
            EventPayload::UserCredentialDeleted {
                credential_id,
                user,
            } => format!("deleted {user}'s value of stored credential {credential_id}"),
            EventPayload::GatewaySigningKeyAdded { key } => {
                format!("added gateway signing key {} ({})", key.kid, key.algorithm)
            }
            EventPayload::GatewaySealingKeyAdded { key } => {
                format!("added gateway sealing key {}", key.kid)
            }
            EventPayload::GatewayKeyRetired { kid } => format!("retired gateway key {kid}"),
            EventPayload::UserSessionsRevoked {
                identity_provider,
                subject,
                ..
            } => format!("signed out {subject} ({identity_provider}) everywhere"),
            EventPayload::GrantRevoked {
                grant_id, reason, ..
            } => format!("revoked grant {grant_id} ({reason})"),
        }
    }
}

fn agent_mode_name(agent_auth: &AgentAuth) -> &'static str {
    match &agent_auth.mode {
        portcullis_shared::config::AgentAuthMode::Interactive { .. } => "interactive",
        portcullis_shared::config::AgentAuthMode::Passthrough {
            jwt_validation: Some(_),
        } => "passthrough with jwt validation",
        portcullis_shared::config::AgentAuthMode::Passthrough {
            jwt_validation: None,
        } => "passthrough",
    }
}

/// One event of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: Uuid,
    pub sequence: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub actor: String,
    pub aggregate: AggregateKey,
    pub aggregate_revision: u64,
    pub payload: EventPayload,
}

/// An event as persisted: tagged with its schema version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "schema_version")]
pub enum StoredEvent {
    #[serde(rename = "1")]
    V1(Event),
}

impl StoredEvent {
    pub fn into_current(self) -> Event {
        match self {
            StoredEvent::V1(event) => event,
        }
    }

    pub fn schema_version(&self) -> u32 {
        match self {
            StoredEvent::V1(_) => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_keys_round_trip_as_text() {
        let key = AggregateKey {
            kind: AggregateKind::OauthApp,
            id: "github".into(),
        };
        assert_eq!(key.to_string(), "oauth_app/github");
        assert_eq!("oauth_app/github".parse::<AggregateKey>().unwrap(), key);
        assert!("nope/x".parse::<AggregateKey>().is_err());
    }

    #[test]
    fn stored_events_carry_their_schema_version() {
        let event = StoredEvent::V1(Event {
            id: Uuid::now_v7(),
            sequence: 7,
            time: OffsetDateTime::UNIX_EPOCH,
            actor: "alice".into(),
            aggregate: AggregateKey {
                kind: AggregateKind::Credential,
                id: "dd".into(),
            },
            aggregate_revision: 1,
            payload: EventPayload::CredentialDeleted {
                id: CatalogId::parse("dd").unwrap(),
            },
        });
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.starts_with("{\"schema_version\":\"1\""), "{json}");
        let back: StoredEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, event);
        let unknown = json.replace("\"schema_version\":\"1\"", "\"schema_version\":\"9\"");
        assert!(serde_json::from_str::<StoredEvent>(&unknown).is_err());
    }
}

#[cfg(test)]
mod serde_round_trip {
    use portcullis_proto::v1 as proto;
    use portcullis_shared::config::{McpServer, WithSecrets};
    use portcullis_shared::secret::SecretInput;

    use super::*;

    fn secret(value: &str) -> Option<proto::Secret> {
        Some(proto::Secret {
            value: Some(proto::secret::Value::Plaintext(value.to_owned())),
        })
    }

    fn sealed(index: &mut u8) -> SealedSecret {
        *index += 1;
        SealedSecret {
            id: Uuid::from_bytes([*index; 16]),
            ciphertext: vec![*index; 28],
            fingerprint: format!("hmac-sha256:{index:016x}"),
        }
    }

    /// Every outbound header kind and a JWKS-validated agent auth, as a sealed server.
    fn every_kind() -> McpServer<SealedSecret> {
        use proto::outbound_header::Source;
        let header = |name: &str, source: Source| proto::OutboundHeader {
            header_name: name.into(),
            prefix: "Bearer ".into(),
            source: Some(source),
        };
        let server = proto::McpServer {
            name: "all".into(),
            upstream_url: "http://127.0.0.1:1/mcp".into(),
            transport: proto::Transport::LegacySse as i32,
            allowed_origins: vec!["https://a.example".into()],
            agent_auth: Some(proto::AgentAuth {
                mode: Some(proto::agent_auth::Mode::Passthrough(
                    proto::PassthroughAgent {
                        jwt_validation: Some(proto::JwtValidation {
                            jwks_url: "https://idp.example.com/jwks".into(),
                            jwks_json: String::new(),
                            issuer: "https://idp.example.com".into(),
                            audience: "api".into(),
                        }),
                    },
                )),
                restricted_inbound_headers: vec!["x-internal-*".into()],
            }),
            app_auth: Some(proto::AppAuth {
                kind: Some(proto::app_auth::Kind::ClientCredentials(
                    proto::ClientCredentials {
                        token_url: "https://idp.example.com/token".into(),
                        client_id: "c".into(),
                        client_secret: secret("s"),
                        scopes: vec!["a".into()],
                        audience: "aud".into(),
                    },
                )),
            }),
            outbound_headers: vec![
                header(
                    "x-service",
                    Source::ServiceToken(proto::ServiceToken {
                        token_url: "https://idp.example.com/token".into(),
                        client_id: "c".into(),
                        client_secret: secret("s"),
                        scopes: vec![],
                        audience: String::new(),
                    }),
                ),
                header(
                    "x-forward",
                    Source::ForwardCallerToken(proto::ForwardCallerToken {}),
                ),
                header(
                    "x-obo",
                    Source::OnBehalfOf(proto::OnBehalfOf {
                        exchange_url: "https://idp.example.com/token".into(),
                        client_id: "c".into(),
                        client_secret: secret("s"),
                        audience: "api".into(),
                        scopes: vec!["x".into()],
                        requested_token_type: String::new(),
                    }),
                ),
                header(
                    "x-vault",
                    Source::VaultCredential(proto::VaultCredential {
                        credential_id: "pat".into(),
                        scope: proto::CredentialScope::PerUser as i32,
                    }),
                ),
                header(
                    "x-user",
                    Source::CallerIdentity(proto::CallerIdentity {
                        claim: "email".into(),
                    }),
                ),
                header(
                    "x-static",
                    Source::Custom(proto::CustomHeader {
                        value: Some(proto::custom_header::Value::StaticValue("v".into())),
                    }),
                ),
                header(
                    "x-secret",
                    Source::Custom(proto::CustomHeader {
                        value: Some(proto::custom_header::Value::Secret(secret("s").unwrap())),
                    }),
                ),
                header(
                    "x-template",
                    Source::Custom(proto::CustomHeader {
                        value: Some(proto::custom_header::Value::Template("user={{sub}}".into())),
                    }),
                ),
            ],
            description: String::new(),
        };
        let mut index = 0;
        McpServer::<SecretInput>::try_from(server)
            .unwrap()
            .map_secrets(|_| sealed(&mut index))
    }

    #[test]
    fn every_payload_kind_survives_a_round_trip() {
        let server = every_kind();
        let payloads = vec![
            EventPayload::ServerRegistered {
                server: server.clone(),
            },
            EventPayload::AppAuthSet {
                server: server.name.clone(),
                app_auth: server.app_auth.clone(),
            },
            EventPayload::AgentAuthSet {
                server: server.name.clone(),
                agent_auth: server.agent_auth.clone(),
            },
        ];
        for payload in
            payloads
                .into_iter()
                .chain(server.outbound_headers.iter().map(|header| {
                    EventPayload::OutboundHeaderPut {
                        server: server.name.clone(),
                        header: header.clone(),
                    }
                }))
        {
            let event = StoredEvent::V1(Event {
                id: Uuid::now_v7(),
                sequence: 1,
                time: OffsetDateTime::UNIX_EPOCH,
                actor: "a".into(),
                aggregate: AggregateKey::server(&server.name),
                aggregate_revision: 1,
                payload,
            });
            let json = serde_json::to_string(&event).unwrap();
            let back: StoredEvent =
                serde_json::from_str(&json).unwrap_or_else(|error| panic!("{error}: {json}"));
            assert_eq!(back, event);
        }
    }
}

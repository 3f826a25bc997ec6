//! The projection: current configuration state, derived from the event log by applying
//! events in sequence order. Nothing else writes it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use portcullis_shared::config::{
    IdentityProvider, McpServer, OAuthApp, StoredCredential, WithSecrets,
};
use portcullis_shared::gateway::{GatewayKeyState, GatewayKeys, RevokedGrants, RevokedUsers};
use portcullis_shared::names::{CatalogId, ServerName};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::{AggregateKey, AggregateKind, Event, EventPayload};
use crate::secrets::SealedSecret;

pub type Server = McpServer<SealedSecret>;
pub type Idp = IdentityProvider<SealedSecret>;
pub type App = OAuthApp<SealedSecret>;
pub type Credential = StoredCredential<SealedSecret>;

/// The configuration at one revision. Values sit behind `Arc` so a new version of the
/// state shares every aggregate the last batch of events did not touch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The sequence number of the last applied event (the global revision).
    pub revision: u64,
    /// The revision at which nodes last needed a new snapshot.
    pub snapshot_revision: u64,
    pub servers: BTreeMap<ServerName, Arc<Server>>,
    pub identity_providers: BTreeMap<CatalogId, Arc<Idp>>,
    pub oauth_apps: BTreeMap<CatalogId, Arc<App>>,
    pub credentials: BTreeMap<CatalogId, Arc<Credential>>,
    /// Number of events per aggregate, for optimistic concurrency. Survives deletion, so a
    /// re-created aggregate continues its count.
    pub aggregate_revisions: BTreeMap<AggregateKey, u64>,
    #[serde(default)]
    pub gateway_keys: GatewayKeys<SealedSecret>,
    #[serde(default, with = "revoked_users_as_entries")]
    pub revoked_users: RevokedUsers,
    #[serde(default)]
    pub revoked_grants: RevokedGrants,
}

/// An event that cannot be applied to the state it follows: the log is inconsistent.
#[derive(Debug, thiserror::Error)]
#[error("event {sequence} ({event_type}) cannot be applied: {reason}")]
pub struct ProjectionError {
    pub sequence: u64,
    pub event_type: &'static str,
    pub reason: String,
}

/// The state persisted in a state snapshot, with its schema version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "schema_version")]
pub enum StoredState {
    #[serde(rename = "1")]
    V1(State),
}

impl State {
    pub fn aggregate_revision(&self, key: &AggregateKey) -> u64 {
        self.aggregate_revisions.get(key).copied().unwrap_or(0)
    }

    pub fn exists(&self, key: &AggregateKey) -> bool {
        match key.kind {
            AggregateKind::Server => ServerName::parse(&key.id)
                .map(|name| self.servers.contains_key(&name))
                .unwrap_or(false),
            AggregateKind::IdentityProvider => catalog(&key.id)
                .map(|id| self.identity_providers.contains_key(&id))
                .unwrap_or(false),
            AggregateKind::OauthApp => catalog(&key.id)
                .map(|id| self.oauth_apps.contains_key(&id))
                .unwrap_or(false),
            AggregateKind::Credential => catalog(&key.id)
                .map(|id| self.credentials.contains_key(&id))
                .unwrap_or(false),
            AggregateKind::Gateway => true,
        }
    }

    /// Ids of every secret an aggregate holds now, to find those a change drops.
    pub fn secret_ids(&self, key: &AggregateKey) -> BTreeSet<Uuid> {
        fn ids<T: WithSecrets<SealedSecret> + Clone>(value: Option<&Arc<T>>) -> BTreeSet<Uuid> {
            value
                .map(|value| value.secret_paths().into_values().map(|s| s.id).collect())
                .unwrap_or_default()
        }
        match key.kind {
            AggregateKind::Server => ServerName::parse(&key.id)
                .map(|name| ids(self.servers.get(&name)))
                .unwrap_or_default(),
            AggregateKind::IdentityProvider => catalog(&key.id)
                .map(|id| ids(self.identity_providers.get(&id)))
                .unwrap_or_default(),
            AggregateKind::OauthApp => catalog(&key.id)
                .map(|id| ids(self.oauth_apps.get(&id)))
                .unwrap_or_default(),
            AggregateKind::Credential => catalog(&key.id)
                .map(|id| ids(self.credentials.get(&id)))
                .unwrap_or_default(),
            AggregateKind::Gateway if *key == AggregateKey::gateway_keys() => self
                .gateway_keys
                .secret_paths()
                .into_values()
                .map(|secret| secret.id)
                .collect(),
            AggregateKind::Gateway => BTreeSet::new(),
        }
    }

    /// Applies one event. Events in the log were validated when written, so a failure
    /// here means the log is inconsistent and is reported, never ignored.
    pub fn apply(&mut self, event: &Event) -> Result<(), ProjectionError> {
        let fail = |reason: String| ProjectionError {
            sequence: event.sequence,
            event_type: event.payload.type_name(),
            reason,
        };
        if event.sequence != self.revision + 1 {
            return Err(fail(format!(
                "expected sequence {}, the log has a gap or a duplicate",
                self.revision + 1
            )));
        }
        match &event.payload {
            EventPayload::ServerRegistered { server } | EventPayload::ServerUpdated { server } => {
                self.servers
                    .insert(server.name.clone(), Arc::new(server.clone()));
            }
            EventPayload::ServerDeleted { name } => {
                self.servers
                    .remove(name)
                    .ok_or_else(|| fail(format!("no server {name}")))?;
            }
            EventPayload::AgentAuthSet { server, agent_auth } => {
                self.server_mut(server).map_err(fail)?.agent_auth = agent_auth.clone();
            }
            EventPayload::AppAuthSet { server, app_auth } => {
                self.server_mut(server).map_err(fail)?.app_auth = app_auth.clone();
            }
            EventPayload::OutboundHeaderPut { server, header } => {
                let server = self.server_mut(server).map_err(fail)?;
                match server
                    .outbound_headers
                    .iter_mut()
                    .find(|existing| existing.header_name == header.header_name)
                {
                    Some(existing) => *existing = header.clone(),
                    None => server.outbound_headers.push(header.clone()),
                }
            }
            EventPayload::OutboundHeaderRemoved {
                server,
                header_name,
            } => {
                let server = self.server_mut(server).map_err(fail)?;
                let before = server.outbound_headers.len();
                server
                    .outbound_headers
                    .retain(|header| &header.header_name != header_name);
                if server.outbound_headers.len() == before {
                    return Err(fail(format!("no outbound header {header_name}")));
                }
            }
            EventPayload::IdentityProviderPut { identity_provider } => {
                self.identity_providers.insert(
                    identity_provider.id.clone(),
                    Arc::new(identity_provider.clone()),
                );
            }
            EventPayload::IdentityProviderDeleted { id } => {
                self.identity_providers
                    .remove(id)
                    .ok_or_else(|| fail(format!("no identity provider {id}")))?;
            }
            EventPayload::OauthAppPut { oauth_app } => {
                self.oauth_apps
                    .insert(oauth_app.app_id.clone(), Arc::new(oauth_app.clone()));
            }
            EventPayload::OauthAppDeleted { app_id } => {
                self.oauth_apps
                    .remove(app_id)
                    .ok_or_else(|| fail(format!("no OAuth app {app_id}")))?;
            }
            EventPayload::CredentialPut {
                id,
                description,
                org_value,
            } => {
                let user_values = self
                    .credentials
                    .get(id)
                    .map(|existing| existing.user_values.clone())
                    .unwrap_or_default();
                self.credentials.insert(
                    id.clone(),
                    Arc::new(StoredCredential {
                        id: id.clone(),
                        description: description.clone(),
                        org_value: org_value.clone(),
                        user_values,
                    }),
                );
            }
            EventPayload::CredentialDeleted { id } => {
                self.credentials
                    .remove(id)
                    .ok_or_else(|| fail(format!("no stored credential {id}")))?;
            }
            EventPayload::UserCredentialSet {
                credential_id,
                user,
                value,
            } => {
                let credential = self
                    .credentials
                    .get_mut(credential_id)
                    .ok_or_else(|| fail(format!("no stored credential {credential_id}")))?;
                Arc::make_mut(credential)
                    .user_values
                    .insert(user.clone(), value.clone());
            }
            EventPayload::UserCredentialDeleted {
                credential_id,
                user,
            } => {
                let credential = self
                    .credentials
                    .get_mut(credential_id)
                    .ok_or_else(|| fail(format!("no stored credential {credential_id}")))?;
                Arc::make_mut(credential)
                    .user_values
                    .remove(user)
                    .ok_or_else(|| fail(format!("no value of {user}")))?;
            }
            EventPayload::GatewaySigningKeyAdded { key } => {
                for existing in &mut self.gateway_keys.signing_keys {
                    existing.state = GatewayKeyState::VerifyOnly;
                }
                self.gateway_keys.signing_keys.push(key.clone());
            }
            EventPayload::GatewaySealingKeyAdded { key } => {
                for existing in &mut self.gateway_keys.sealing_keys {
                    existing.state = GatewayKeyState::VerifyOnly;
                }
                self.gateway_keys.sealing_keys.push(key.clone());
            }
            EventPayload::GatewayKeyRetired { kid } => {
                let before =
                    self.gateway_keys.signing_keys.len() + self.gateway_keys.sealing_keys.len();
                self.gateway_keys.signing_keys.retain(|key| &key.kid != kid);
                self.gateway_keys.sealing_keys.retain(|key| &key.kid != kid);
                if self.gateway_keys.signing_keys.len() + self.gateway_keys.sealing_keys.len()
                    == before
                {
                    return Err(fail(format!("no gateway key {kid}")));
                }
            }
            EventPayload::UserSessionsRevoked {
                identity_provider,
                subject,
                revoked_at_unix,
            } => {
                self.revoked_users.insert(
                    (identity_provider.clone(), subject.clone()),
                    *revoked_at_unix,
                );
            }
            EventPayload::GrantRevoked {
                grant_id,
                expires_at_unix,
                ..
            } => {
                // Grants past their expiry need no revocation any more; pruning by the
                // event's own time keeps replay deterministic.
                let now = event.time.unix_timestamp();
                self.revoked_grants.retain(|_, expires| *expires > now);
                self.revoked_grants
                    .insert(grant_id.clone(), *expires_at_unix);
            }
        }
        self.revision = event.sequence;
        if event.payload.affects_snapshot() {
            self.snapshot_revision = event.sequence;
        }
        self.aggregate_revisions
            .insert(event.aggregate.clone(), event.aggregate_revision);
        Ok(())
    }

    fn server_mut(&mut self, name: &ServerName) -> Result<&mut Server, String> {
        self.servers
            .get_mut(name)
            .map(Arc::make_mut)
            .ok_or_else(|| format!("no server {name}"))
    }

    /// Servers that reference a catalog entry, to refuse deleting what is in use.
    pub fn servers_referencing(&self, kind: AggregateKind, id: &CatalogId) -> Vec<ServerName> {
        use portcullis_shared::config::{AgentAuthMode, AppAuth, OutboundSource};
        self.servers
            .values()
            .filter(|server| match kind {
                AggregateKind::IdentityProvider => matches!(
                    &server.agent_auth.mode,
                    AgentAuthMode::Interactive { identity_provider, .. } if identity_provider == id
                ),
                AggregateKind::OauthApp => matches!(
                    &server.app_auth,
                    AppAuth::OAuthAuthorization { app_id, .. } if app_id == id
                ),
                AggregateKind::Credential => server.outbound_headers.iter().any(|header| {
                    matches!(
                        &header.source,
                        OutboundSource::VaultCredential { credential_id, .. } if credential_id == id
                    )
                }),
                AggregateKind::Server | AggregateKind::Gateway => false,
            })
            .map(|server| server.name.clone())
            .collect()
    }
}

fn catalog(id: &str) -> Option<CatalogId> {
    CatalogId::parse(id).ok()
}

/// JSON object keys must be strings, and revoked users are keyed by (identity provider,
/// subject), so a state snapshot holds them as a list of entries. Snapshots written before
/// hold an empty map (a non-empty one could not be written at all), which still reads.
mod revoked_users_as_entries {
    use std::collections::BTreeMap;

    use portcullis_shared::gateway::RevokedUsers;
    use portcullis_shared::names::{CatalogId, UserId};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize)]
    struct EntryRef<'a> {
        identity_provider: &'a CatalogId,
        subject: &'a UserId,
        revoked_at_unix: i64,
    }

    #[derive(Deserialize)]
    struct Entry {
        identity_provider: CatalogId,
        subject: UserId,
        revoked_at_unix: i64,
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Entries(Vec<Entry>),
        Map(BTreeMap<String, i64>),
    }

    pub fn serialize<S: Serializer>(
        users: &RevokedUsers,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            users
                .iter()
                .map(|((identity_provider, subject), at)| EntryRef {
                    identity_provider,
                    subject,
                    revoked_at_unix: *at,
                }),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<RevokedUsers, D::Error> {
        match Stored::deserialize(deserializer)? {
            Stored::Entries(entries) => Ok(entries
                .into_iter()
                .map(|entry| {
                    (
                        (entry.identity_provider, entry.subject),
                        entry.revoked_at_unix,
                    )
                })
                .collect()),
            Stored::Map(map) if map.is_empty() => Ok(RevokedUsers::new()),
            Stored::Map(_) => Err(serde::de::Error::custom(
                "revoked users must be a list of entries",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_shared::names::UserId;

    #[test]
    fn a_state_with_revoked_users_persists_and_reads_back() {
        let mut state = State::default();
        state.revoked_users.insert(
            (
                CatalogId::parse("okta").unwrap(),
                UserId::parse("00u1ab").unwrap(),
            ),
            1_800_000_000,
        );
        state.revoked_grants.insert("g-1".to_owned(), 1_800_000_060);
        let bytes = serde_json::to_vec(&StoredState::V1(state.clone())).unwrap();
        let StoredState::V1(back) = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, state);
    }

    #[test]
    fn state_snapshots_written_with_an_empty_map_still_read() {
        let mut json = serde_json::to_value(StoredState::V1(State::default())).unwrap();
        json["revoked_users"] = serde_json::json!({});
        let StoredState::V1(state) = serde_json::from_value(json).unwrap();
        assert!(state.revoked_users.is_empty());
    }
}

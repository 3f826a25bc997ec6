//! The snapshot compiler: turns the projected state into the snapshot nodes apply,
//! decrypting secrets for the authenticated node channel.

use portcullis_proto::v1 as proto;
use portcullis_shared::config::WithSecrets;
use portcullis_shared::snapshot::Snapshot;

use crate::secrets::{SecretError, SecretStore};
use crate::state::State;

/// A compiled snapshot, encoded once and shared by every node stream.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledSnapshot {
    pub version: u64,
    pub message: proto::Snapshot,
}

#[derive(Debug, thiserror::Error)]
#[error("{aggregate}.{field}: {source}")]
pub struct CompileError {
    pub aggregate: String,
    pub field: String,
    pub source: SecretError,
}

fn open_all<T: WithSecrets<crate::secrets::SealedSecret> + Clone>(
    value: &T,
    aggregate: String,
    secrets: &SecretStore,
) -> Result<T::Mapped<portcullis_shared::secret::SecretValue>, CompileError> {
    value.clone().try_map_secrets(&mut |field, sealed| {
        secrets.reveal(&sealed).map_err(|source| CompileError {
            aggregate: aggregate.clone(),
            field,
            source,
        })
    })
}

pub fn compile(state: &State, secrets: &SecretStore) -> Result<CompiledSnapshot, CompileError> {
    let mut snapshot = Snapshot {
        version: state.snapshot_revision,
        ..Snapshot::default()
    };
    for (name, server) in &state.servers {
        let opened = open_all(server.as_ref(), format!("servers[{name}]"), secrets)?;
        snapshot.servers.insert(name.clone(), opened);
    }
    for (id, idp) in &state.identity_providers {
        let opened = open_all(idp.as_ref(), format!("identity_providers[{id}]"), secrets)?;
        snapshot.identity_providers.insert(id.clone(), opened);
    }
    for (id, app) in &state.oauth_apps {
        let opened = open_all(app.as_ref(), format!("oauth_apps[{id}]"), secrets)?;
        snapshot.oauth_apps.insert(id.clone(), opened);
    }
    for (id, credential) in &state.credentials {
        // Per-user values stay in the vault; nodes fetch them on demand.
        let mut org_only = credential.as_ref().clone();
        org_only.user_values.clear();
        let opened = open_all(&org_only, format!("credentials[{id}]"), secrets)?;
        snapshot.credentials.insert(id.clone(), opened);
    }
    snapshot.gateway_keys = open_all(&state.gateway_keys, "gateway_keys".to_owned(), secrets)?;
    snapshot.revoked_users = state.revoked_users.clone();
    // Grants past their expiry need no revocation; nodes would refuse them anyway.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    snapshot.revoked_grants = state
        .revoked_grants
        .iter()
        .filter(|(_, expires)| **expires > now)
        .map(|(grant, expires)| (grant.clone(), *expires))
        .collect();
    Ok(CompiledSnapshot {
        version: snapshot.version,
        message: proto::Snapshot::from(&snapshot),
    })
}

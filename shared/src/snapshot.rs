//! Compiled configuration snapshots, as nodes receive, validate and apply them.

use std::collections::BTreeMap;

use portcullis_proto::v1 as proto;

use crate::config::{
    AgentAuthMode, AppAuth, IdentityProvider, McpServer, OAuthApp, OutboundSource,
    StoredCredential, WithSecrets,
};
use crate::convert::{
    gateway_keys_from_proto, revoked_grants_from_proto, revoked_grants_to_proto,
    revoked_users_from_proto, revoked_users_to_proto, secret_plaintext_proto,
    stored_credential_from_proto,
};
use crate::gateway::{GatewayKeys, RevokedGrants, RevokedUsers};
use crate::names::{CatalogId, ServerName};
use crate::secret::{SecretInput, SecretValue};
use crate::validate::ValidationErrors;

/// The schema version of the snapshot messages this build writes and understands.
pub const SNAPSHOT_SCHEMA_VERSION: u32 = 1;

/// A compiled snapshot with plaintext secrets. Lives in memory on a node; written to disk
/// only encrypted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub version: u64,
    pub servers: BTreeMap<ServerName, McpServer<SecretValue>>,
    pub identity_providers: BTreeMap<CatalogId, IdentityProvider<SecretValue>>,
    pub oauth_apps: BTreeMap<CatalogId, OAuthApp<SecretValue>>,
    pub credentials: BTreeMap<CatalogId, StoredCredential<SecretValue>>,
    pub gateway_keys: GatewayKeys<SecretValue>,
    pub revoked_users: RevokedUsers,
    pub revoked_grants: RevokedGrants,
}

/// Checks that a server only references catalog entries that exist.
pub fn check_server_references<S>(
    server: &McpServer<S>,
    has_identity_provider: impl Fn(&CatalogId) -> bool,
    has_oauth_app: impl Fn(&CatalogId) -> bool,
    has_credential: impl Fn(&CatalogId) -> bool,
) -> ValidationErrors {
    let mut errors = ValidationErrors::default();
    if let AgentAuthMode::Interactive {
        identity_provider, ..
    } = &server.agent_auth.mode
        && !has_identity_provider(identity_provider)
    {
        errors.push(
            "agent_auth.interactive.identity_provider",
            format!("no identity provider \"{identity_provider}\" in the catalog"),
        );
    }
    if let AppAuth::OAuthAuthorization { app_id, .. } = &server.app_auth
        && !has_oauth_app(app_id)
    {
        errors.push(
            "app_auth.oauth_authorization.app_id",
            format!("no OAuth app \"{app_id}\" in the catalog"),
        );
    }
    for header in &server.outbound_headers {
        if let OutboundSource::VaultCredential { credential_id, .. } = &header.source
            && !has_credential(credential_id)
        {
            errors.push(
                format!("{}.vault_credential.credential_id", header.path()),
                format!("no stored credential \"{credential_id}\" in the vault"),
            );
        }
    }
    errors
}

fn is_set(secret: &SecretInput) -> bool {
    matches!(secret, SecretInput::Set(_))
}

/// Converts one section of a snapshot, keyed by id, collecting every violation under
/// `section[id]`. Every secret must be present: "keep the stored value" means nothing here.
fn insert_all<P, In, K: Ord>(
    errors: &mut ValidationErrors,
    section: &str,
    items: Vec<P>,
    id_of: impl Fn(&P) -> String,
    convert: impl Fn(P) -> Result<In, ValidationErrors>,
    key_of: impl Fn(&In::Mapped<SecretValue>) -> K,
    into: &mut BTreeMap<K, In::Mapped<SecretValue>>,
) where
    In: WithSecrets<SecretInput>,
{
    for item in items {
        let prefix = format!("{section}[{}]", id_of(&item));
        let converted = match convert(item) {
            Ok(converted) => converted,
            Err(nested) => {
                errors.extend_prefixed(&prefix, nested);
                continue;
            }
        };
        let mut missing = Vec::new();
        let plaintext = converted.try_map_secrets(&mut |path, input| match input {
            SecretInput::Set(value) => Ok(value),
            SecretInput::Keep => {
                missing.push(path);
                Err(())
            }
        });
        match plaintext {
            Ok(entry) => match into.entry(key_of(&entry)) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    errors.push(prefix, "duplicate entry");
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(entry);
                }
            },
            Err(()) => {
                for path in missing {
                    errors.push(format!("{prefix}.{path}"), "secret value missing");
                }
            }
        }
    }
}

impl TryFrom<proto::Snapshot> for Snapshot {
    type Error = ValidationErrors;

    fn try_from(snapshot: proto::Snapshot) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if snapshot.schema_version != SNAPSHOT_SCHEMA_VERSION {
            errors.push(
                "schema_version",
                format!(
                    "unsupported snapshot schema {} (this node understands {SNAPSHOT_SCHEMA_VERSION})",
                    snapshot.schema_version
                ),
            );
            return Err(errors);
        }
        let mut parsed = Snapshot {
            version: snapshot.version,
            ..Snapshot::default()
        };
        insert_all(
            &mut errors,
            "identity_providers",
            snapshot.identity_providers,
            |idp| idp.id.clone(),
            |idp| {
                // An unset client secret means a public client here.
                IdentityProvider::try_from(idp).map(|idp| IdentityProvider {
                    client_secret: idp.client_secret.filter(is_set),
                    ..idp
                })
            },
            |idp| idp.id.clone(),
            &mut parsed.identity_providers,
        );
        insert_all(
            &mut errors,
            "oauth_apps",
            snapshot.oauth_apps,
            |app| app.app_id.clone(),
            |app| {
                OAuthApp::try_from(app).map(|app| OAuthApp {
                    client_secret: app.client_secret.filter(is_set),
                    ..app
                })
            },
            |app| app.app_id.clone(),
            &mut parsed.oauth_apps,
        );
        insert_all(
            &mut errors,
            "credentials",
            snapshot.credentials,
            |credential| credential.id.clone(),
            |credential| {
                stored_credential_from_proto(credential).map(|credential| StoredCredential {
                    org_value: credential.org_value.filter(is_set),
                    ..credential
                })
            },
            |credential| credential.id.clone(),
            &mut parsed.credentials,
        );
        insert_all(
            &mut errors,
            "servers",
            snapshot.servers,
            |server| server.name.clone(),
            McpServer::try_from,
            |server| server.name.clone(),
            &mut parsed.servers,
        );
        match snapshot
            .gateway_keys
            .map(gateway_keys_from_proto)
            .transpose()
        {
            Ok(Some(keys)) => {
                let mut missing = Vec::new();
                match keys.try_map_secrets(&mut |path, input| match input {
                    SecretInput::Set(value) => Ok(value),
                    SecretInput::Keep => {
                        missing.push(path);
                        Err(())
                    }
                }) {
                    Ok(keys) => parsed.gateway_keys = keys,
                    Err(()) => {
                        for path in missing {
                            errors.push(format!("gateway_keys.{path}"), "secret value missing");
                        }
                    }
                }
            }
            Ok(None) => {}
            Err(nested) => errors.extend_prefixed("gateway_keys", nested),
        }
        match revoked_users_from_proto(snapshot.revoked_users) {
            Ok(users) => parsed.revoked_users = users,
            Err(nested) => errors.extend_prefixed("", nested),
        }
        match revoked_grants_from_proto(snapshot.revoked_grants) {
            Ok(grants) => parsed.revoked_grants = grants,
            Err(nested) => errors.extend_prefixed("", nested),
        }
        for server in parsed.servers.values() {
            let references = check_server_references(
                server,
                |id| parsed.identity_providers.contains_key(id),
                |id| parsed.oauth_apps.contains_key(id),
                |id| parsed.credentials.contains_key(id),
            );
            errors.extend_prefixed(&format!("servers[{}]", server.name), references);
        }
        errors.into_result(parsed)
    }
}

impl From<&Snapshot> for proto::Snapshot {
    fn from(snapshot: &Snapshot) -> Self {
        proto::Snapshot {
            version: snapshot.version,
            schema_version: SNAPSHOT_SCHEMA_VERSION,
            servers: snapshot
                .servers
                .values()
                .map(|server| {
                    server
                        .clone()
                        .map_secrets(|s| secret_plaintext_proto(&s))
                        .into()
                })
                .collect(),
            identity_providers: snapshot
                .identity_providers
                .values()
                .map(|idp| {
                    idp.clone()
                        .map_secrets(|s| secret_plaintext_proto(&s))
                        .into()
                })
                .collect(),
            oauth_apps: snapshot
                .oauth_apps
                .values()
                .map(|app| {
                    app.clone()
                        .map_secrets(|s| secret_plaintext_proto(&s))
                        .into()
                })
                .collect(),
            credentials: snapshot
                .credentials
                .values()
                .map(|credential| proto::StoredCredential {
                    id: credential.id.to_string(),
                    description: credential.description.clone(),
                    org_value: credential.org_value.as_ref().map(secret_plaintext_proto),
                    user_values: Vec::new(),
                })
                .collect(),
            gateway_keys: Some(
                snapshot
                    .gateway_keys
                    .clone()
                    .map_secrets(|s| secret_plaintext_proto(&s))
                    .into(),
            ),
            revoked_users: revoked_users_to_proto(&snapshot.revoked_users),
            revoked_grants: revoked_grants_to_proto(&snapshot.revoked_grants),
        }
    }
}

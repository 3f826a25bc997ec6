//! Commands: what an admin asks for, validated against the current state and turned into
//! events. Deciding never writes; the engine appends what was decided.

use std::collections::BTreeMap;

use portcullis_shared::config::{
    AgentAuth, AppAuth, IdentityProvider, McpServer, OAuthApp, OutboundHeader, WithSecrets,
    secret_paths,
};
use portcullis_shared::convert::check_header_conflicts;
use portcullis_shared::error::ErrorCode;
use portcullis_shared::gateway::{
    GatewayKeyState, GatewayKeys, SIGNING_ALGORITHM, SealingKey, SigningKey,
};
use portcullis_shared::names::{CatalogId, HeaderName, ServerName, UserId};
use portcullis_shared::secret::{SecretInput, SecretValue};
use portcullis_shared::snapshot::check_server_references;
use portcullis_shared::validate::{ValidationErrors, join_path};
use uuid::Uuid;

use crate::events::{AggregateKey, AggregateKind, EventPayload};
use crate::secrets::{SealedSecret, SecretError, SecretStore, WrappedDataKey};
use crate::state::State;

/// What to do with a stored credential's org-wide value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrgValue {
    Keep,
    Set(SecretValue),
    Clear,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    CreateServer {
        server: McpServer<SecretInput>,
    },
    UpdateServer {
        server: McpServer<SecretInput>,
        expected_revision: Option<u64>,
    },
    DeleteServer {
        name: ServerName,
        expected_revision: Option<u64>,
    },
    SetAgentAuth {
        server: ServerName,
        agent_auth: AgentAuth,
        expected_revision: Option<u64>,
    },
    SetAppAuth {
        server: ServerName,
        app_auth: AppAuth<SecretInput>,
        expected_revision: Option<u64>,
    },
    PutOutboundHeader {
        server: ServerName,
        header: OutboundHeader<SecretInput>,
        expected_revision: Option<u64>,
    },
    RemoveOutboundHeader {
        server: ServerName,
        header_name: HeaderName,
        expected_revision: Option<u64>,
    },
    PutIdentityProvider {
        identity_provider: IdentityProvider<SecretInput>,
        expected_revision: Option<u64>,
    },
    DeleteIdentityProvider {
        id: CatalogId,
        expected_revision: Option<u64>,
    },
    PutOauthApp {
        oauth_app: OAuthApp<SecretInput>,
        expected_revision: Option<u64>,
    },
    DeleteOauthApp {
        app_id: CatalogId,
        expected_revision: Option<u64>,
    },
    PutCredential {
        id: CatalogId,
        description: String,
        org_value: OrgValue,
        expected_revision: Option<u64>,
    },
    DeleteCredential {
        id: CatalogId,
        expected_revision: Option<u64>,
    },
    SetUserCredential {
        credential_id: CatalogId,
        user: UserId,
        value: SecretValue,
        expected_revision: Option<u64>,
    },
    DeleteUserCredential {
        credential_id: CatalogId,
        user: UserId,
        expected_revision: Option<u64>,
    },
    /// A freshly generated signing key becomes the active one.
    AddSigningKey {
        kid: String,
        public_jwk: String,
        private_key: SecretValue,
        created_at_unix: i64,
    },
    /// A freshly generated sealing key becomes the active one.
    AddSealingKey {
        kid: String,
        key: SecretValue,
        created_at_unix: i64,
    },
    RetireGatewayKey {
        kid: String,
    },
    RevokeUserSessions {
        identity_provider: CatalogId,
        subject: UserId,
        revoked_at_unix: i64,
    },
    RevokeGrant {
        grant_id: String,
        expires_at_unix: i64,
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Invalid(ValidationErrors),
    #[error("{} {id:?} not found", kind.label())]
    NotFound { kind: AggregateKind, id: String },
    #[error("{field}: not found")]
    FieldNotFound { field: String },
    #[error("{} {id:?} already exists", kind.label())]
    AlreadyExists { kind: AggregateKind, id: String },
    #[error(
        "{aggregate} is at revision {actual}, not the expected revision {expected}; reload and retry"
    )]
    RevisionConflict {
        aggregate: String,
        expected: u64,
        actual: u64,
    },
    #[error("{} {id:?} is in use by servers {servers:?}", kind.label())]
    InUse {
        kind: AggregateKind,
        id: String,
        servers: Vec<String>,
    },
    #[error("{0}")]
    MissingReference(ValidationErrors),
    #[error("secret storage failed")]
    Secret(#[from] SecretError),
    #[error("storage failed")]
    Storage(String),
    #[error("the write queue is closed: the control plane is shutting down")]
    ShuttingDown,
}

impl CommandError {
    pub fn code(&self) -> ErrorCode {
        match self {
            CommandError::Invalid(_) => ErrorCode::InvalidArgument,
            CommandError::NotFound { .. } | CommandError::FieldNotFound { .. } => {
                ErrorCode::NotFound
            }
            CommandError::AlreadyExists { .. } => ErrorCode::AlreadyExists,
            CommandError::RevisionConflict { .. } => ErrorCode::RevisionConflict,
            CommandError::InUse { .. } | CommandError::MissingReference(_) => {
                ErrorCode::FailedPrecondition
            }
            CommandError::Secret(_) | CommandError::Storage(_) => ErrorCode::Internal,
            CommandError::ShuttingDown => ErrorCode::Unavailable,
        }
    }

    pub fn with_prefix(self, prefix: &str) -> Self {
        match self {
            CommandError::Invalid(errors) => {
                let mut prefixed = ValidationErrors::default();
                prefixed.extend_prefixed(prefix, errors);
                CommandError::Invalid(prefixed)
            }
            CommandError::MissingReference(errors) => {
                let mut prefixed = ValidationErrors::default();
                prefixed.extend_prefixed(prefix, errors);
                CommandError::MissingReference(prefixed)
            }
            other => other,
        }
    }
}

/// The outcome of deciding one command.
#[derive(Debug)]
pub struct Decision {
    pub aggregate: AggregateKey,
    pub payload: EventPayload,
    /// Data keys of secrets sealed by this command, to store with the event.
    pub new_keys: Vec<(Uuid, WrappedDataKey)>,
}

impl Decision {
    /// Applies the decided event to a scratch state, so that commands decided after this
    /// one see its effect. The real event (id, time, actor) is made when it is committed.
    pub fn preview(&self, state: &mut State) -> Result<(), CommandError> {
        let event = crate::events::Event {
            id: Uuid::nil(),
            sequence: state.revision + 1,
            time: time::OffsetDateTime::UNIX_EPOCH,
            actor: String::new(),
            aggregate: self.aggregate.clone(),
            aggregate_revision: state.aggregate_revision(&self.aggregate) + 1,
            payload: self.payload.clone(),
        };
        state
            .apply(&event)
            .map_err(|error| CommandError::Storage(error.to_string()))
    }
}

/// Resolves `SecretInput`s into sealed secrets: `Keep` takes the stored value at the same
/// field path; `Set` with the value already stored reuses it (so re-applying the same
/// configuration changes nothing); any other `Set` seals under a new data key.
struct Sealer<'a> {
    secrets: &'a SecretStore,
    new_keys: Vec<(Uuid, WrappedDataKey)>,
}

impl<'a> Sealer<'a> {
    fn new(secrets: &'a SecretStore) -> Self {
        Self {
            secrets,
            new_keys: Vec::new(),
        }
    }

    fn resolve<T: WithSecrets<SecretInput>>(
        &mut self,
        value: T,
        existing: &BTreeMap<String, SealedSecret>,
        field_prefix: &str,
    ) -> Result<T::Mapped<SealedSecret>, CommandError> {
        let mut errors = ValidationErrors::default();
        let mut failure: Option<SecretError> = None;
        let secrets = self.secrets;
        let new_keys = &mut self.new_keys;
        let Ok(mapped) = value.try_map_secrets(&mut |path, input| {
            Ok::<_, std::convert::Infallible>(match input {
                SecretInput::Keep => match existing.get(&path) {
                    Some(stored) => stored.clone(),
                    None => {
                        errors.push(
                            join_path(field_prefix, &path),
                            "required (there is no stored value to keep)",
                        );
                        placeholder()
                    }
                },
                SecretInput::Set(value) => {
                    if let Some(stored) = existing.get(&path)
                        && matches!(secrets.reveal(stored), Ok(current) if current == value)
                    {
                        return Ok(stored.clone());
                    }
                    match secrets.seal(&value) {
                        Ok((sealed, wrapped)) => {
                            new_keys.push((sealed.id, wrapped));
                            sealed
                        }
                        Err(error) => {
                            failure.get_or_insert(error);
                            placeholder()
                        }
                    }
                }
            })
        });
        if let Some(error) = failure {
            return Err(CommandError::Secret(error));
        }
        if errors.is_empty() {
            Ok(mapped)
        } else {
            Err(CommandError::Invalid(errors))
        }
    }

    fn finish(self, aggregate: AggregateKey, payload: EventPayload) -> Decision {
        Decision {
            aggregate,
            payload,
            new_keys: self.new_keys,
        }
    }
}

/// Stands in for a secret that failed to resolve; never leaves `Sealer::resolve`.
fn placeholder() -> SealedSecret {
    SealedSecret {
        id: Uuid::nil(),
        ciphertext: Vec::new(),
        fingerprint: String::new(),
    }
}

fn check_revision(
    state: &State,
    key: &AggregateKey,
    expected: Option<u64>,
) -> Result<(), CommandError> {
    let actual = state.aggregate_revision(key);
    match expected {
        Some(expected) if expected != actual => Err(CommandError::RevisionConflict {
            aggregate: key.to_string(),
            expected,
            actual,
        }),
        _ => Ok(()),
    }
}

fn not_found(key: &AggregateKey) -> CommandError {
    CommandError::NotFound {
        kind: key.kind,
        id: key.id.clone(),
    }
}

/// Checks what a server references and that outbound headers do not collide with app auth.
fn check_server(state: &State, server: &McpServer<SealedSecret>) -> Result<(), CommandError> {
    let conflicts = check_header_conflicts(&server.app_auth, &server.outbound_headers);
    if !conflicts.is_empty() {
        return Err(CommandError::Invalid(conflicts));
    }
    let references = check_server_references(
        server,
        |id| state.identity_providers.contains_key(id),
        |id| state.oauth_apps.contains_key(id),
        |id| state.credentials.contains_key(id),
    );
    if references.is_empty() {
        Ok(())
    } else {
        Err(CommandError::MissingReference(references))
    }
}

fn check_not_in_use(
    state: &State,
    kind: AggregateKind,
    id: &CatalogId,
) -> Result<(), CommandError> {
    let servers = state.servers_referencing(kind, id);
    if servers.is_empty() {
        Ok(())
    } else {
        Err(CommandError::InUse {
            kind,
            id: id.to_string(),
            servers: servers.into_iter().map(String::from).collect(),
        })
    }
}

/// Drops an optional secret the writer left unset when nothing is stored to keep.
fn keep_or_none(
    secret: Option<SecretInput>,
    existing: &BTreeMap<String, SealedSecret>,
    path: &str,
) -> Option<SecretInput> {
    match secret {
        Some(SecretInput::Keep) if !existing.contains_key(path) => None,
        other => other,
    }
}

impl Command {
    /// The aggregate this command writes to.
    pub fn aggregate(&self) -> AggregateKey {
        match self {
            Command::CreateServer { server } | Command::UpdateServer { server, .. } => {
                AggregateKey::server(&server.name)
            }
            Command::DeleteServer { name, .. } => AggregateKey::server(name),
            Command::SetAgentAuth { server, .. }
            | Command::SetAppAuth { server, .. }
            | Command::PutOutboundHeader { server, .. }
            | Command::RemoveOutboundHeader { server, .. } => AggregateKey::server(server),
            Command::PutIdentityProvider {
                identity_provider, ..
            } => AggregateKey::catalog(AggregateKind::IdentityProvider, &identity_provider.id),
            Command::DeleteIdentityProvider { id, .. } => {
                AggregateKey::catalog(AggregateKind::IdentityProvider, id)
            }
            Command::PutOauthApp { oauth_app, .. } => {
                AggregateKey::catalog(AggregateKind::OauthApp, &oauth_app.app_id)
            }
            Command::DeleteOauthApp { app_id, .. } => {
                AggregateKey::catalog(AggregateKind::OauthApp, app_id)
            }
            Command::PutCredential { id, .. } | Command::DeleteCredential { id, .. } => {
                AggregateKey::catalog(AggregateKind::Credential, id)
            }
            Command::SetUserCredential { credential_id, .. }
            | Command::DeleteUserCredential { credential_id, .. } => {
                AggregateKey::catalog(AggregateKind::Credential, credential_id)
            }
            Command::AddSigningKey { .. }
            | Command::AddSealingKey { .. }
            | Command::RetireGatewayKey { .. } => AggregateKey::gateway_keys(),
            Command::RevokeUserSessions { .. } | Command::RevokeGrant { .. } => {
                AggregateKey::gateway_revocations()
            }
        }
    }

    /// Validates the command against `state` and decides the event it produces.
    pub fn decide(self, state: &State, secrets: &SecretStore) -> Result<Decision, CommandError> {
        let key = self.aggregate();
        let mut sealer = Sealer::new(secrets);
        let payload = match self {
            Command::CreateServer { server } => {
                if state.servers.contains_key(&server.name) {
                    return Err(CommandError::AlreadyExists {
                        kind: AggregateKind::Server,
                        id: server.name.to_string(),
                    });
                }
                let server = sealer.resolve(server, &BTreeMap::new(), "")?;
                check_server(state, &server)?;
                EventPayload::ServerRegistered { server }
            }
            Command::UpdateServer {
                server,
                expected_revision,
            } => {
                let existing = state
                    .servers
                    .get(&server.name)
                    .ok_or_else(|| not_found(&key))?;
                check_revision(state, &key, expected_revision)?;
                let server = sealer.resolve(server, &existing.secret_paths(), "")?;
                check_server(state, &server)?;
                EventPayload::ServerUpdated { server }
            }
            Command::DeleteServer {
                name,
                expected_revision,
            } => {
                if !state.servers.contains_key(&name) {
                    return Err(not_found(&key));
                }
                check_revision(state, &key, expected_revision)?;
                EventPayload::ServerDeleted { name }
            }
            Command::SetAgentAuth {
                server,
                agent_auth,
                expected_revision,
            } => {
                let existing = state.servers.get(&server).ok_or_else(|| not_found(&key))?;
                check_revision(state, &key, expected_revision)?;
                let mut candidate = McpServer::clone(existing);
                candidate.agent_auth = agent_auth.clone();
                check_server(state, &candidate)?;
                EventPayload::AgentAuthSet { server, agent_auth }
            }
            Command::SetAppAuth {
                server,
                app_auth,
                expected_revision,
            } => {
                let existing = state.servers.get(&server).ok_or_else(|| not_found(&key))?;
                check_revision(state, &key, expected_revision)?;
                let app_auth = sealer.resolve(app_auth, &existing.secret_paths(), "")?;
                let mut candidate = McpServer::clone(existing);
                candidate.app_auth = app_auth.clone();
                check_server(state, &candidate)?;
                EventPayload::AppAuthSet { server, app_auth }
            }
            Command::PutOutboundHeader {
                server,
                header,
                expected_revision,
            } => {
                let existing = state.servers.get(&server).ok_or_else(|| not_found(&key))?;
                check_revision(state, &key, expected_revision)?;
                let header = sealer.resolve(header, &existing.secret_paths(), "")?;
                let mut candidate = McpServer::clone(existing);
                match candidate
                    .outbound_headers
                    .iter_mut()
                    .find(|h| h.header_name == header.header_name)
                {
                    Some(slot) => *slot = header.clone(),
                    None => candidate.outbound_headers.push(header.clone()),
                }
                check_server(state, &candidate)?;
                EventPayload::OutboundHeaderPut { server, header }
            }
            Command::RemoveOutboundHeader {
                server,
                header_name,
                expected_revision,
            } => {
                let existing = state.servers.get(&server).ok_or_else(|| not_found(&key))?;
                check_revision(state, &key, expected_revision)?;
                if !existing
                    .outbound_headers
                    .iter()
                    .any(|header| header.header_name == header_name)
                {
                    return Err(CommandError::FieldNotFound {
                        field: format!("outbound_headers[{header_name}]"),
                    });
                }
                EventPayload::OutboundHeaderRemoved {
                    server,
                    header_name,
                }
            }
            Command::PutIdentityProvider {
                mut identity_provider,
                expected_revision,
            } => {
                check_revision(state, &key, expected_revision)?;
                let existing = state
                    .identity_providers
                    .get(&identity_provider.id)
                    .map(|idp| idp.secret_paths())
                    .unwrap_or_default();
                identity_provider.client_secret = keep_or_none(
                    identity_provider.client_secret,
                    &existing,
                    secret_paths::CLIENT_SECRET,
                );
                let identity_provider = sealer.resolve(identity_provider, &existing, "")?;
                EventPayload::IdentityProviderPut { identity_provider }
            }
            Command::DeleteIdentityProvider {
                id,
                expected_revision,
            } => {
                if !state.identity_providers.contains_key(&id) {
                    return Err(not_found(&key));
                }
                check_revision(state, &key, expected_revision)?;
                check_not_in_use(state, AggregateKind::IdentityProvider, &id)?;
                EventPayload::IdentityProviderDeleted { id }
            }
            Command::PutOauthApp {
                mut oauth_app,
                expected_revision,
            } => {
                check_revision(state, &key, expected_revision)?;
                let existing = state
                    .oauth_apps
                    .get(&oauth_app.app_id)
                    .map(|app| app.secret_paths())
                    .unwrap_or_default();
                oauth_app.client_secret = keep_or_none(
                    oauth_app.client_secret,
                    &existing,
                    secret_paths::CLIENT_SECRET,
                );
                let oauth_app = sealer.resolve(oauth_app, &existing, "")?;
                EventPayload::OauthAppPut { oauth_app }
            }
            Command::DeleteOauthApp {
                app_id,
                expected_revision,
            } => {
                if !state.oauth_apps.contains_key(&app_id) {
                    return Err(not_found(&key));
                }
                check_revision(state, &key, expected_revision)?;
                check_not_in_use(state, AggregateKind::OauthApp, &app_id)?;
                EventPayload::OauthAppDeleted { app_id }
            }
            Command::PutCredential {
                id,
                description,
                org_value,
                expected_revision,
            } => {
                check_revision(state, &key, expected_revision)?;
                let stored = state
                    .credentials
                    .get(&id)
                    .and_then(|credential| credential.org_value.clone());
                let org_value = match org_value {
                    OrgValue::Clear => None,
                    OrgValue::Keep => stored,
                    OrgValue::Set(value) => {
                        let existing: BTreeMap<String, SealedSecret> = stored
                            .map(|sealed| (secret_paths::ORG_VALUE.to_owned(), sealed))
                            .into_iter()
                            .collect();
                        Some(sealer.resolve(
                            SingleSecret(SecretInput::Set(value), secret_paths::ORG_VALUE),
                            &existing,
                            "",
                        )?)
                    }
                };
                EventPayload::CredentialPut {
                    id,
                    description,
                    org_value,
                }
            }
            Command::DeleteCredential {
                id,
                expected_revision,
            } => {
                if !state.credentials.contains_key(&id) {
                    return Err(not_found(&key));
                }
                check_revision(state, &key, expected_revision)?;
                check_not_in_use(state, AggregateKind::Credential, &id)?;
                EventPayload::CredentialDeleted { id }
            }
            Command::SetUserCredential {
                credential_id,
                user,
                value,
                expected_revision,
            } => {
                let credential = state
                    .credentials
                    .get(&credential_id)
                    .ok_or_else(|| not_found(&key))?;
                check_revision(state, &key, expected_revision)?;
                let path = format!("user_values[{user}]");
                let existing: BTreeMap<String, SealedSecret> = credential
                    .user_values
                    .get(&user)
                    .map(|sealed| (path.clone(), sealed.clone()))
                    .into_iter()
                    .collect();
                let value =
                    sealer.resolve(SingleSecret(SecretInput::Set(value), &path), &existing, "")?;
                EventPayload::UserCredentialSet {
                    credential_id,
                    user,
                    value,
                }
            }
            Command::DeleteUserCredential {
                credential_id,
                user,
                expected_revision,
            } => {
                let credential = state
                    .credentials
                    .get(&credential_id)
                    .ok_or_else(|| not_found(&key))?;
                check_revision(state, &key, expected_revision)?;
                if !credential.user_values.contains_key(&user) {
                    return Err(CommandError::FieldNotFound {
                        field: format!("user_values[{user}]"),
                    });
                }
                EventPayload::UserCredentialDeleted {
                    credential_id,
                    user,
                }
            }
            Command::AddSigningKey {
                kid,
                public_jwk,
                private_key,
                created_at_unix,
            } => {
                check_new_kid(state, &kid)?;
                let key = SigningKey {
                    kid,
                    algorithm: SIGNING_ALGORITHM.to_owned(),
                    private_key: SecretInput::Set(private_key),
                    public_jwk,
                    created_at_unix,
                    state: GatewayKeyState::Active,
                };
                let key = sealer.resolve(
                    GatewayKeys {
                        signing_keys: vec![key],
                        sealing_keys: Vec::new(),
                    },
                    &BTreeMap::new(),
                    "",
                )?;
                EventPayload::GatewaySigningKeyAdded {
                    key: key.signing_keys.into_iter().next().expect("one key"),
                }
            }
            Command::AddSealingKey {
                kid,
                key,
                created_at_unix,
            } => {
                check_new_kid(state, &kid)?;
                let key = SealingKey {
                    kid,
                    key: SecretInput::Set(key),
                    created_at_unix,
                    state: GatewayKeyState::Active,
                };
                let keys = sealer.resolve(
                    GatewayKeys {
                        signing_keys: Vec::new(),
                        sealing_keys: vec![key],
                    },
                    &BTreeMap::new(),
                    "",
                )?;
                EventPayload::GatewaySealingKeyAdded {
                    key: keys.sealing_keys.into_iter().next().expect("one key"),
                }
            }
            Command::RetireGatewayKey { kid } => {
                let keys = &state.gateway_keys;
                let found = keys
                    .signing_keys
                    .iter()
                    .map(|key| (&key.kid, key.state))
                    .chain(keys.sealing_keys.iter().map(|key| (&key.kid, key.state)))
                    .find(|(existing, _)| **existing == kid);
                match found {
                    None => {
                        return Err(CommandError::FieldNotFound {
                            field: format!("gateway key {kid}"),
                        });
                    }
                    Some((_, GatewayKeyState::Active)) => {
                        return Err(CommandError::Invalid(ValidationErrors::single(
                            "kid",
                            "the active key cannot be retired; rotate first",
                        )));
                    }
                    Some((_, GatewayKeyState::VerifyOnly)) => {}
                }
                EventPayload::GatewayKeyRetired { kid }
            }
            Command::RevokeUserSessions {
                identity_provider,
                subject,
                revoked_at_unix,
            } => EventPayload::UserSessionsRevoked {
                identity_provider,
                subject,
                revoked_at_unix,
            },
            Command::RevokeGrant {
                grant_id,
                expires_at_unix,
                reason,
            } => {
                if grant_id.is_empty() || grant_id.len() > 128 {
                    return Err(CommandError::Invalid(ValidationErrors::single(
                        "grant_id",
                        "must be 1 to 128 bytes",
                    )));
                }
                EventPayload::GrantRevoked {
                    grant_id,
                    expires_at_unix,
                    reason: reason.chars().take(128).collect(),
                }
            }
        };
        Ok(sealer.finish(key, payload))
    }
}

fn check_new_kid(state: &State, kid: &str) -> Result<(), CommandError> {
    let keys = &state.gateway_keys;
    if keys.signing_keys.iter().any(|key| key.kid == kid)
        || keys.sealing_keys.iter().any(|key| key.kid == kid)
    {
        return Err(CommandError::Invalid(ValidationErrors::single(
            "kid",
            format!("gateway key {kid} already exists"),
        )));
    }
    Ok(())
}

/// A lone secret at a known field path, so single values go through the same resolution.
struct SingleSecret<'p>(SecretInput, &'p str);

impl WithSecrets<SecretInput> for SingleSecret<'_> {
    type Mapped<T> = T;

    fn try_map_secrets<T, E>(
        self,
        f: &mut impl FnMut(String, SecretInput) -> Result<T, E>,
    ) -> Result<T, E> {
        f(self.1.to_owned(), self.0)
    }
}

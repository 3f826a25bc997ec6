//! Calls nodes make while serving: one-time values that must be used once across the whole
//! fleet (authorization codes, refresh tokens), grant revocations, and the token vault
//! (users' upstream tokens, their listing and disconnection by the users themselves).

use std::sync::Arc;
use std::time::Duration;

use portcullis_proto::v1 as proto;
use portcullis_proto::v1::node_runtime_server::NodeRuntime;
use tonic::{Request, Response, Status};

use portcullis_shared::names::{CatalogId, UserId};
use portcullis_shared::secret::SecretValue;
use tokio::sync::broadcast::error::RecvError;

use crate::access::{AccessList, Principal, Role, bearer_token};
use crate::commands::Command;
use crate::engine::Engine;
use crate::vault::{LinkKey, LinkState, NewTokens, TokenLookup, Vault, VaultError};

/// How nodes prove who they are: a node token, or, with mTLS, a client certificate whose
/// common name is the node id (then the certificate is required and tokens are not enough).
pub struct NodeAuth {
    access: Arc<AccessList>,
    require_certificate: bool,
}

impl NodeAuth {
    pub fn new(access: Arc<AccessList>, require_certificate: bool) -> Self {
        Self {
            access,
            require_certificate,
        }
    }

    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        if self.require_certificate {
            return crate::tls::peer_node_id(request)
                .map(|name| Principal {
                    name,
                    role: Role::Node,
                })
                .ok_or_else(|| {
                    Status::unauthenticated(
                        "a node client certificate signed by the fleet's CA is required",
                    )
                });
        }
        let principal = bearer_token(request.metadata())
            .and_then(|token| self.access.authenticate(token))
            .ok_or_else(|| Status::unauthenticated("missing or invalid node token"))?;
        if principal.role != Role::Node {
            return Err(Status::permission_denied(
                "only node tokens may call the node APIs",
            ));
        }
        Ok(principal)
    }

    /// Whether the node id a node claims must match its certificate.
    pub fn requires_certificate(&self) -> bool {
        self.require_certificate
    }
}

/// Records of consumed one-time values, in their own sled tree. Each record is kept until
/// the value would have expired anyway, then swept.
pub struct OnceStore {
    tree: sled::Tree,
}

/// How long past its expiry a record is kept, to tolerate clock skew between nodes.
const SKEW_SECS: i64 = 300;

impl OnceStore {
    pub fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        Ok(Self {
            tree: db.open_tree("consumed_once")?,
        })
    }

    fn key(namespace: &str, id: &str) -> Vec<u8> {
        let mut key = namespace.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(id.as_bytes());
        key
    }

    /// True exactly once per (namespace, id). Durable before it answers.
    pub fn consume(
        &self,
        namespace: &str,
        id: &str,
        expires_at_unix: i64,
    ) -> Result<bool, sled::Error> {
        let first = self
            .tree
            .compare_and_swap(
                Self::key(namespace, id),
                None as Option<&[u8]>,
                Some(&expires_at_unix.to_be_bytes()[..]),
            )?
            .is_ok();
        if first {
            self.tree.flush()?;
        }
        Ok(first)
    }

    /// Removes records whose values expired; returns how many.
    pub fn sweep(&self, now_unix: i64) -> Result<usize, sled::Error> {
        let mut removed = 0;
        for entry in self.tree.iter() {
            let (key, value) = entry?;
            let expires = <[u8; 8]>::try_from(value.as_ref())
                .map(i64::from_be_bytes)
                .unwrap_or(i64::MIN);
            if expires + SKEW_SECS < now_unix {
                self.tree.remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

pub struct RuntimeApi {
    engine: Arc<Engine>,
    nodes: Arc<NodeAuth>,
    once: Arc<OnceStore>,
    vault: Arc<Vault>,
}

impl RuntimeApi {
    pub fn new(
        engine: Arc<Engine>,
        nodes: Arc<NodeAuth>,
        once: Arc<OnceStore>,
        vault: Arc<Vault>,
    ) -> Self {
        Self {
            engine,
            nodes,
            once,
            vault,
        }
    }
}

/// The user of a request, validated.
fn user_ref(user: Option<proto::UserRef>) -> Result<(CatalogId, UserId), Status> {
    let user = user.ok_or_else(|| Status::invalid_argument("user: required"))?;
    Ok((
        CatalogId::parse(&user.identity_provider).map_err(|error| {
            Status::invalid_argument(format!("user.identity_provider: {error}"))
        })?,
        UserId::parse(&user.subject)
            .map_err(|error| Status::invalid_argument(format!("user.subject: {error}")))?,
    ))
}

/// The link key of a request, validated.
fn link_key(app_id: &str, user: Option<proto::UserRef>) -> Result<LinkKey, Status> {
    let (identity_provider, subject) = user_ref(user)?;
    Ok(LinkKey {
        app_id: CatalogId::parse(app_id)
            .map_err(|error| Status::invalid_argument(format!("app_id: {error}")))?,
        identity_provider,
        subject,
    })
}

fn vault_status(error: VaultError) -> Status {
    match &error {
        VaultError::UnknownApp(_) => Status::not_found(error.to_string()),
        VaultError::ProviderRejectedClient { .. } => Status::failed_precondition(error.to_string()),
        VaultError::ProviderUnavailable(_) | VaultError::ProviderMalformed(_) => {
            Status::unavailable(error.to_string())
        }
        VaultError::Secret(_) | VaultError::Storage(_) => {
            tracing::error!(%error, "vault operation failed");
            Status::internal("internal error; the control plane log has the details")
        }
    }
}

fn link_status(state: Option<LinkState>) -> proto::LinkStatus {
    match state {
        None => proto::LinkStatus::Missing,
        Some(LinkState::Connected) => proto::LinkStatus::Connected,
        Some(LinkState::Broken) => proto::LinkStatus::Broken,
    }
}

type ChangeStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<proto::UserTokenChange, Status>> + Send>>;

/// Sweeps expired one-time records every minute until the process stops.
pub fn spawn_sweeper(once: Arc<OnceStore>) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(60));
        loop {
            ticker.tick().await;
            let once = once.clone();
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            match tokio::task::spawn_blocking(move || once.sweep(now)).await {
                Ok(Ok(removed)) if removed > 0 => {
                    tracing::debug!(removed, "swept expired one-time records");
                }
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(%error, "sweeping one-time records failed"),
                Err(error) => tracing::warn!(%error, "sweeping one-time records panicked"),
            }
        }
    });
}

const NAMESPACES: &[&str] = &["authorization_code", "refresh_token"];

#[tonic::async_trait]
impl NodeRuntime for RuntimeApi {
    async fn consume_once(
        &self,
        request: Request<proto::ConsumeOnceRequest>,
    ) -> Result<Response<proto::ConsumeOnceReply>, Status> {
        self.nodes.authenticate(&request)?;
        let request = request.into_inner();
        if !NAMESPACES.contains(&request.namespace.as_str()) {
            return Err(Status::invalid_argument(format!(
                "namespace: must be one of {NAMESPACES:?}"
            )));
        }
        if request.id.is_empty() || request.id.len() > 256 {
            return Err(Status::invalid_argument("id: must be 1 to 256 bytes"));
        }
        let once = self.once.clone();
        let first_use = tokio::task::spawn_blocking(move || {
            once.consume(&request.namespace, &request.id, request.expires_at_unix)
        })
        .await
        .map_err(|error| Status::internal(error.to_string()))?
        .map_err(|error| {
            tracing::error!(%error, "recording a one-time value failed");
            Status::internal("internal error; the control plane log has the details")
        })?;
        Ok(Response::new(proto::ConsumeOnceReply { first_use }))
    }

    async fn revoke_grant(
        &self,
        request: Request<proto::RevokeGrantRequest>,
    ) -> Result<Response<proto::RevokeGrantReply>, Status> {
        let principal = self.nodes.authenticate(&request)?;
        let request = request.into_inner();
        let command = Command::RevokeGrant {
            grant_id: request.grant_id,
            expires_at_unix: request.expires_at_unix,
            reason: request.reason,
        };
        let outcome = self
            .engine
            .execute(&format!("node:{}", principal.name), vec![command], None)
            .await
            .map_err(|error| Status::new(error.code().grpc_code(), error.to_string()))?;
        Ok(Response::new(proto::RevokeGrantReply {
            revision: outcome.revision,
        }))
    }

    async fn get_user_token(
        &self,
        request: Request<proto::GetUserTokenRequest>,
    ) -> Result<Response<proto::GetUserTokenReply>, Status> {
        self.nodes.authenticate(&request)?;
        let request = request.into_inner();
        let key = link_key(&request.app_id, request.user)?;
        let lookup = self
            .vault
            .get(&key, request.min_valid_secs.min(3600))
            .await
            .map_err(vault_status)?;
        Ok(Response::new(match lookup {
            TokenLookup::Missing => proto::GetUserTokenReply {
                status: proto::LinkStatus::Missing as i32,
                ..Default::default()
            },
            TokenLookup::Broken { reason } => proto::GetUserTokenReply {
                status: proto::LinkStatus::Broken as i32,
                reason,
                ..Default::default()
            },
            TokenLookup::Connected {
                access_token,
                token_type,
                expires_at_unix,
                scope,
            } => proto::GetUserTokenReply {
                status: proto::LinkStatus::Connected as i32,
                access_token: access_token.expose().to_owned(),
                token_type,
                expires_at_unix,
                scope,
                reason: String::new(),
            },
        }))
    }

    async fn put_user_token(
        &self,
        request: Request<proto::PutUserTokenRequest>,
    ) -> Result<Response<proto::PutUserTokenReply>, Status> {
        self.nodes.authenticate(&request)?;
        let request = request.into_inner();
        let key = link_key(&request.app_id, request.user)?;
        if request.access_token.is_empty() || request.access_token.len() > 16 * 1024 {
            return Err(Status::invalid_argument(
                "access_token: must be 1 byte to 16 KiB",
            ));
        }
        if request.refresh_token.len() > 16 * 1024 {
            return Err(Status::invalid_argument(
                "refresh_token: must be at most 16 KiB",
            ));
        }
        let tokens = NewTokens {
            access_token: SecretValue::new(request.access_token),
            refresh_token: Some(request.refresh_token)
                .filter(|token| !token.is_empty())
                .map(SecretValue::new),
            token_type: if request.token_type.is_empty() {
                "Bearer".to_owned()
            } else {
                request.token_type
            },
            expires_at_unix: request.expires_at_unix,
            scope: request.scope,
        };
        let vault = self.vault.clone();
        tokio::task::spawn_blocking(move || vault.put(&key, tokens))
            .await
            .map_err(|error| Status::internal(error.to_string()))?
            .map_err(vault_status)?;
        Ok(Response::new(proto::PutUserTokenReply {}))
    }

    type WatchUserTokensStream = ChangeStream;

    async fn watch_user_tokens(
        &self,
        request: Request<proto::WatchUserTokensRequest>,
    ) -> Result<Response<Self::WatchUserTokensStream>, Status> {
        self.nodes.authenticate(&request)?;
        let mut changes = self.vault.subscribe();
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            // The first message confirms the watch, and tells a reconnecting node to drop
            // whatever it cached while it was not watching.
            let reset = proto::UserTokenChange {
                reset: true,
                ..Default::default()
            };
            if sender.send(Ok(reset)).await.is_err() {
                return;
            }
            loop {
                let message = match changes.recv().await {
                    Ok(change) => proto::UserTokenChange {
                        app_id: change.key.app_id.to_string(),
                        user: Some(proto::UserRef {
                            identity_provider: change.key.identity_provider.to_string(),
                            subject: change.key.subject.to_string(),
                        }),
                        status: link_status(change.state) as i32,
                        reset: false,
                    },
                    Err(RecvError::Lagged(_)) => proto::UserTokenChange {
                        reset: true,
                        ..Default::default()
                    },
                    Err(RecvError::Closed) => break,
                };
                if sender.send(Ok(message)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn list_user_tokens(
        &self,
        request: Request<proto::ListUserTokensRequest>,
    ) -> Result<Response<proto::ListUserTokensReply>, Status> {
        self.nodes.authenticate(&request)?;
        let (identity_provider, subject) = user_ref(request.into_inner().user)?;
        let vault = self.vault.clone();
        let links =
            tokio::task::spawn_blocking(move || vault.list_user(&identity_provider, &subject))
                .await
                .map_err(|error| Status::internal(error.to_string()))?
                .map_err(vault_status)?;
        Ok(Response::new(proto::ListUserTokensReply {
            links: links
                .into_iter()
                .map(|(key, link)| proto::UserTokenInfo {
                    app_id: key.app_id.to_string(),
                    status: link_status(Some(link.state)) as i32,
                    reason: link.reason,
                    connected_at_unix: link.connected_at_unix,
                    refreshed_at_unix: link.refreshed_at_unix,
                    expires_at_unix: link.expires_at_unix,
                    scope: link.scope,
                })
                .collect(),
        }))
    }

    async fn delete_user_token(
        &self,
        request: Request<proto::DeleteUserTokenRequest>,
    ) -> Result<Response<proto::DeleteUserTokenReply>, Status> {
        let principal = self.nodes.authenticate(&request)?;
        let request = request.into_inner();
        let key = link_key(&request.app_id, request.user)?;
        let deleted = self.vault.delete(&key).await.map_err(vault_status)?;
        tracing::info!(node = %principal.name, app = %key.app_id, user = %key.subject, deleted, "account link disconnected by its user");
        Ok(Response::new(proto::DeleteUserTokenReply { deleted }))
    }

    async fn get_user_credential(
        &self,
        request: Request<proto::GetUserCredentialRequest>,
    ) -> Result<Response<proto::GetUserCredentialReply>, Status> {
        self.nodes.authenticate(&request)?;
        let request = request.into_inner();
        let credential_id = CatalogId::parse(&request.credential_id)
            .map_err(|error| Status::invalid_argument(format!("credential_id: {error}")))?;
        let user = request
            .user
            .ok_or_else(|| Status::invalid_argument("user: required"))?;
        let subject = UserId::parse(&user.subject)
            .map_err(|error| Status::invalid_argument(format!("user.subject: {error}")))?;
        let value = self
            .vault
            .user_credential(&credential_id, &subject)
            .map_err(vault_status)?;
        Ok(Response::new(proto::GetUserCredentialReply {
            found: value.is_some(),
            value: value
                .map(|value| value.expose().to_owned())
                .unwrap_or_default(),
        }))
    }

    async fn put_own_credential(
        &self,
        request: Request<proto::PutOwnCredentialRequest>,
    ) -> Result<Response<proto::PutOwnCredentialReply>, Status> {
        self.put_own(request).await
    }

    async fn delete_own_credential(
        &self,
        request: Request<proto::DeleteOwnCredentialRequest>,
    ) -> Result<Response<proto::DeleteOwnCredentialReply>, Status> {
        self.delete_own(request).await
    }
}

/// The actor of a change a user made through a node: the user (identity provider and
/// subject) and the node that authenticated them, as the audit trail shows it.
fn user_actor(identity_provider: &CatalogId, subject: &UserId, node: &str) -> String {
    format!("user:{identity_provider}/{subject} via node:{node}")
}

fn command_status(error: crate::commands::CommandError) -> Status {
    Status::new(error.code().grpc_code(), error.to_string())
}

impl RuntimeApi {
    /// `PutOwnCredential`: the user's own value, stored encrypted by the same command as
    /// the admin's `SetUserCredential` (so the event log and the audit trail record it).
    pub async fn put_own(
        &self,
        request: Request<proto::PutOwnCredentialRequest>,
    ) -> Result<Response<proto::PutOwnCredentialReply>, Status> {
        let principal = self.nodes.authenticate(&request)?;
        let request = request.into_inner();
        let credential_id = CatalogId::parse(&request.credential_id)
            .map_err(|error| Status::invalid_argument(format!("credential_id: {error}")))?;
        let (identity_provider, subject) = user_ref(request.user)?;
        portcullis_shared::convert::check_user_credential_value(&request.value)
            .map_err(|error| Status::invalid_argument(format!("value: {error}")))?;
        let actor = user_actor(&identity_provider, &subject, &principal.name);
        let command = Command::SetUserCredential {
            credential_id,
            user: subject,
            value: SecretValue::new(request.value),
            expected_revision: None,
        };
        let outcome = self
            .engine
            .execute(&actor, vec![command], None)
            .await
            .map_err(command_status)?;
        Ok(Response::new(proto::PutOwnCredentialReply {
            revision: outcome.revision,
        }))
    }

    /// `DeleteOwnCredential`: `deleted: false` when the user had no value of their own.
    pub async fn delete_own(
        &self,
        request: Request<proto::DeleteOwnCredentialRequest>,
    ) -> Result<Response<proto::DeleteOwnCredentialReply>, Status> {
        let principal = self.nodes.authenticate(&request)?;
        let request = request.into_inner();
        let credential_id = CatalogId::parse(&request.credential_id)
            .map_err(|error| Status::invalid_argument(format!("credential_id: {error}")))?;
        let (identity_provider, subject) = user_ref(request.user)?;
        let actor = user_actor(&identity_provider, &subject, &principal.name);
        let command = Command::DeleteUserCredential {
            credential_id,
            user: subject,
            expected_revision: None,
        };
        match self.engine.execute(&actor, vec![command], None).await {
            Ok(outcome) => Ok(Response::new(proto::DeleteOwnCredentialReply {
                deleted: true,
                revision: outcome.revision,
            })),
            Err(crate::commands::CommandError::FieldNotFound { .. }) => {
                Ok(Response::new(proto::DeleteOwnCredentialReply {
                    deleted: false,
                    revision: 0,
                }))
            }
            Err(error) => Err(command_status(error)),
        }
    }
}

/// Audit event delivery from nodes.
pub struct AuditIngestApi {
    nodes: Arc<NodeAuth>,
    audit: Arc<crate::audit::AuditLog>,
}

impl AuditIngestApi {
    pub fn new(nodes: Arc<NodeAuth>, audit: Arc<crate::audit::AuditLog>) -> Self {
        Self { nodes, audit }
    }
}

#[tonic::async_trait]
impl portcullis_proto::v1::audit_ingest_server::AuditIngest for AuditIngestApi {
    async fn deliver(
        &self,
        request: Request<proto::AuditBatch>,
    ) -> Result<Response<proto::AuditAck>, Status> {
        self.nodes.authenticate(&request)?;
        let batch = request.into_inner();
        let audit = self.audit.clone();
        let (stored, duplicates) = tokio::task::spawn_blocking(move || audit.append(&batch.events))
            .await
            .map_err(|error| Status::internal(error.to_string()))?
            .map_err(|error| match error {
                crate::audit::AuditError::Invalid(message) => Status::invalid_argument(message),
                crate::audit::AuditError::Storage(message) => {
                    tracing::error!(%message, "storing audit events failed");
                    Status::unavailable("the audit trail cannot store events right now")
                }
            })?;
        Ok(Response::new(proto::AuditAck { stored, duplicates }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumed_exactly_once_and_swept_after_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let store = OnceStore::open(&db).unwrap();
        assert!(store.consume("authorization_code", "c1", 1_000).unwrap());
        assert!(!store.consume("authorization_code", "c1", 1_000).unwrap());
        assert!(store.consume("refresh_token", "c1", 1_000).unwrap());
        assert_eq!(store.sweep(1_000).unwrap(), 0);
        assert_eq!(store.sweep(1_000 + SKEW_SECS + 1).unwrap(), 2);
        assert!(store.consume("authorization_code", "c1", 5_000).unwrap());
    }
}

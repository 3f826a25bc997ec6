//! The control plane's `NodeRuntime` service, as the node uses it while serving:
//!
//! - exactly one use of each authorization code and refresh token across the fleet
//!   (`ConsumeOnce`), and revocation of a grant (`RevokeGrant`), which reaches every node in
//!   the next snapshot;
//! - the token vault: a user's upstream OAuth tokens per app (`GetUserToken`,
//!   `PutUserToken`, `WatchUserTokens`, and for the user themselves `ListUserTokens`,
//!   `DeleteUserToken`) and a user's own value of a stored credential (`GetUserCredential`). The control plane keeps them sealed and refreshes tokens
//!   itself; what comes back here is plaintext, held in a [`SecretValue`] and never logged.
//!
//! Unary calls are bounded by [`CALL_TIMEOUT`]. A control plane that cannot answer makes the
//! token endpoint answer 503 `temporarily_unavailable`: single use is never skipped.

use std::time::Duration;

use portcullis_proto::v1 as proto;
use portcullis_proto::v1::node_runtime_client::NodeRuntimeClient;
use portcullis_shared::secret::SecretValue;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::config::ControlPlaneConfig;
use crate::discovery::{control_plane_endpoint, node_bearer};

/// The longest a token request waits for the control plane.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What a one-time value is, as `ConsumeOnce` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnceNamespace {
    AuthorizationCode,
    RefreshToken,
}

impl OnceNamespace {
    pub fn as_str(self) -> &'static str {
        match self {
            OnceNamespace::AuthorizationCode => "authorization_code",
            OnceNamespace::RefreshToken => "refresh_token",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the node has no control plane for runtime calls")]
    NotConfigured,
    #[error("invalid control plane endpoint: {0}")]
    Endpoint(#[source] tonic::transport::Error),
    #[error("the node token cannot be sent as gRPC metadata")]
    InvalidToken,
    #[error("the control plane did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("the control plane refused the call: {0}")]
    Status(tonic::Status),
    #[error("the control plane's answer is malformed: {0}")]
    Malformed(&'static str),
}

/// A user as the vault keys them: the identity provider they sign in with (its catalog id)
/// and their subject there. Subjects are unique per identity provider only, so the vault
/// never keys anything by the subject alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VaultUser {
    pub identity_provider: String,
    pub subject: String,
}

impl VaultUser {
    pub fn new(identity_provider: impl Into<String>, subject: impl Into<String>) -> Self {
        Self {
            identity_provider: identity_provider.into(),
            subject: subject.into(),
        }
    }

    fn to_proto(&self) -> proto::UserRef {
        proto::UserRef {
            identity_provider: self.identity_provider.clone(),
            subject: self.subject.clone(),
        }
    }
}

/// What the vault holds for a user's link to an app (`GetUserToken`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserTokenLookup {
    /// The user never connected the app, or disconnected it.
    Missing,
    /// The provider refused the refresh token: the user must connect again. The reason has
    /// no secret in it.
    Broken {
        reason: String,
    },
    Connected(UserAccessToken),
}

/// A user's upstream access token, as the vault handed it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAccessToken {
    pub access_token: SecretValue,
    pub token_type: String,
    /// 0 when the provider gave no expiry.
    pub expires_at_unix: i64,
    pub scope: String,
}

/// What a completed account link obtained, for `PutUserToken`.
#[derive(Debug, Clone)]
pub struct NewUserTokens {
    pub access_token: SecretValue,
    pub refresh_token: Option<SecretValue>,
    pub token_type: String,
    /// 0 when the provider gave no expiry.
    pub expires_at_unix: i64,
    pub scope: String,
}

/// One of a user's links, as the user may see it (`ListUserTokens`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLinkInfo {
    pub app_id: String,
    pub state: LinkState,
    /// Why it is broken; no secret in it.
    pub reason: String,
    pub connected_at_unix: i64,
    pub refreshed_at_unix: i64,
    /// 0 when the provider gave no expiry.
    pub expires_at_unix: i64,
    pub scope: String,
}

/// The state of a link as the vault reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Missing,
    Connected,
    Broken,
}

impl LinkState {
    fn from_proto(status: i32) -> Result<Self, RuntimeError> {
        match proto::LinkStatus::try_from(status) {
            Ok(proto::LinkStatus::Missing) => Ok(Self::Missing),
            Ok(proto::LinkStatus::Connected) => Ok(Self::Connected),
            Ok(proto::LinkStatus::Broken) => Ok(Self::Broken),
            Ok(proto::LinkStatus::Unspecified) | Err(_) => {
                Err(RuntimeError::Malformed("unknown link status"))
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Connected => "connected",
            Self::Broken => "broken",
        }
    }
}

/// A lazily connected client of `NodeRuntime`, authenticated with the node token.
#[derive(Clone)]
pub struct RuntimeClient {
    client: NodeRuntimeClient<Channel>,
    /// `None` when the node authenticates by client certificate only.
    bearer: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl std::fmt::Debug for RuntimeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeClient").finish_non_exhaustive()
    }
}

impl RuntimeClient {
    /// Connects on first use (and reconnects after failures), so a node starts without the
    /// control plane in reach.
    pub fn new(control_plane: &ControlPlaneConfig) -> Result<Self, RuntimeError> {
        let channel = control_plane_endpoint(control_plane)
            .map_err(RuntimeError::Endpoint)?
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        let bearer = node_bearer(control_plane.node_token.as_ref())
            .map_err(|_| RuntimeError::InvalidToken)?;
        Ok(Self {
            client: NodeRuntimeClient::new(channel),
            bearer,
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = self.untimed_request(message);
        request.set_timeout(CALL_TIMEOUT);
        request
    }

    /// A request without a deadline, for streams that stay open.
    fn untimed_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        request
    }

    /// True exactly once per `(namespace, id)` across the fleet.
    pub async fn consume_once(
        &self,
        namespace: OnceNamespace,
        id: &str,
        expires_at_unix: i64,
    ) -> Result<bool, RuntimeError> {
        let request = self.request(proto::ConsumeOnceRequest {
            namespace: namespace.as_str().to_owned(),
            id: id.to_owned(),
            expires_at_unix,
        });
        let mut client = self.client.clone();
        let reply = tokio::time::timeout(CALL_TIMEOUT, client.consume_once(request))
            .await
            .map_err(|_| RuntimeError::TimedOut(CALL_TIMEOUT))?
            .map_err(RuntimeError::Status)?;
        Ok(reply.into_inner().first_use)
    }

    /// Revokes a grant fleet-wide; returns the configuration revision that carries it.
    pub async fn revoke_grant(
        &self,
        grant_id: &str,
        expires_at_unix: i64,
        reason: &str,
    ) -> Result<u64, RuntimeError> {
        let request = self.request(proto::RevokeGrantRequest {
            grant_id: grant_id.to_owned(),
            expires_at_unix,
            reason: reason.to_owned(),
        });
        let mut client = self.client.clone();
        let reply = tokio::time::timeout(CALL_TIMEOUT, client.revoke_grant(request))
            .await
            .map_err(|_| RuntimeError::TimedOut(CALL_TIMEOUT))?
            .map_err(RuntimeError::Status)?;
        Ok(reply.into_inner().revision)
    }
    /// A user's own value of a stored credential (a vault credential header matched per
    /// user), or `None` when they stored none.
    pub async fn get_user_credential(
        &self,
        credential_id: &str,
        user: &VaultUser,
    ) -> Result<Option<SecretValue>, RuntimeError> {
        let request = self.request(proto::GetUserCredentialRequest {
            credential_id: credential_id.to_owned(),
            user: Some(user.to_proto()),
        });
        let mut client = self.client.clone();
        let reply = tokio::time::timeout(CALL_TIMEOUT, client.get_user_credential(request))
            .await
            .map_err(|_| RuntimeError::TimedOut(CALL_TIMEOUT))?
            .map_err(RuntimeError::Status)?
            .into_inner();
        Ok(reply.found.then(|| SecretValue::new(reply.value)))
    }

    /// Stores the user's own value of a stored credential (on their behalf: the node
    /// authenticated them). Returns the configuration revision of the change.
    pub async fn put_own_credential(
        &self,
        credential_id: &str,
        user: &VaultUser,
        value: &SecretValue,
    ) -> Result<u64, RuntimeError> {
        let request = self.request(proto::PutOwnCredentialRequest {
            credential_id: credential_id.to_owned(),
            user: Some(user.to_proto()),
            value: value.expose().to_owned(),
        });
        let mut client = self.client.clone();
        let reply = tokio::time::timeout(CALL_TIMEOUT, client.put_own_credential(request))
            .await
            .map_err(|_| RuntimeError::TimedOut(CALL_TIMEOUT))?
            .map_err(RuntimeError::Status)?;
        Ok(reply.into_inner().revision)
    }

    /// Deletes the user's own value of a stored credential; false when they had none.
    pub async fn delete_own_credential(
        &self,
        credential_id: &str,
        user: &VaultUser,
    ) -> Result<bool, RuntimeError> {
        let request = self.request(proto::DeleteOwnCredentialRequest {
            credential_id: credential_id.to_owned(),
            user: Some(user.to_proto()),
        });
        let mut client = self.client.clone();
        let reply = tokio::time::timeout(CALL_TIMEOUT, client.delete_own_credential(request))
            .await
            .map_err(|_| RuntimeError::TimedOut(CALL_TIMEOUT))?
            .map_err(RuntimeError::Status)?;
        Ok(reply.into_inner().deleted)
    }

    /// The user's access token for an app; the control plane refreshes it first when it
    /// expires within `min_valid_secs` (one refresh per link across the fleet).
    pub async fn get_user_token(
        &self,
        app_id: &str,
        user: &VaultUser,
        min_valid_secs: u32,
    ) -> Result<UserTokenLookup, RuntimeError> {
        let request = self.request(proto::GetUserTokenRequest {
            app_id: app_id.to_owned(),
            user: Some(user.to_proto()),
            min_valid_secs,
        });
        let mut client = self.client.clone();
        let reply = tokio::time::timeout(CALL_TIMEOUT, client.get_user_token(request))
            .await
            .map_err(|_| RuntimeError::TimedOut(CALL_TIMEOUT))?
            .map_err(RuntimeError::Status)?
            .into_inner();
        Ok(match LinkState::from_proto(reply.status)? {
            LinkState::Missing => UserTokenLookup::Missing,
            LinkState::Broken => UserTokenLookup::Broken {
                reason: reply.reason,
            },
            LinkState::Connected => {
                if reply.access_token.is_empty() {
                    return Err(RuntimeError::Malformed("a connected link without a token"));
                }
                UserTokenLookup::Connected(UserAccessToken {
                    access_token: SecretValue::new(reply.access_token),
                    token_type: reply.token_type,
                    expires_at_unix: reply.expires_at_unix,
                    scope: reply.scope,
                })
            }
        })
    }

    /// Stores the tokens of a completed account link.
    pub async fn put_user_token(
        &self,
        app_id: &str,
        user: &VaultUser,
        tokens: &NewUserTokens,
    ) -> Result<(), RuntimeError> {
        let request = self.request(proto::PutUserTokenRequest {
            app_id: app_id.to_owned(),
            user: Some(user.to_proto()),
            access_token: tokens.access_token.expose().to_owned(),
            refresh_token: tokens
                .refresh_token
                .as_ref()
                .map(|token| token.expose().to_owned())
                .unwrap_or_default(),
            token_type: tokens.token_type.clone(),
            expires_at_unix: tokens.expires_at_unix,
            scope: tokens.scope.clone(),
        });
        let mut client = self.client.clone();
        tokio::time::timeout(CALL_TIMEOUT, client.put_user_token(request))
            .await
            .map_err(|_| RuntimeError::TimedOut(CALL_TIMEOUT))?
            .map_err(RuntimeError::Status)?;
        Ok(())
    }

    /// Opens the stream of link changes. The control plane confirms the watch with a
    /// `reset` message at once. No deadline: the stream stays open until either side ends
    /// it.
    pub async fn watch_user_tokens(
        &self,
    ) -> Result<tonic::Streaming<proto::UserTokenChange>, RuntimeError> {
        let request = self.untimed_request(proto::WatchUserTokensRequest {});
        let mut client = self.client.clone();
        let reply = tokio::time::timeout(CALL_TIMEOUT, client.watch_user_tokens(request))
            .await
            .map_err(|_| RuntimeError::TimedOut(CALL_TIMEOUT))?
            .map_err(RuntimeError::Status)?;
        Ok(reply.into_inner())
    }
    /// A user's own links (status, scope, times; never the tokens).
    pub async fn list_user_tokens(
        &self,
        user: &VaultUser,
    ) -> Result<Vec<UserLinkInfo>, RuntimeError> {
        let request = self.request(proto::ListUserTokensRequest {
            user: Some(user.to_proto()),
        });
        let mut client = self.client.clone();
        let reply = tokio::time::timeout(CALL_TIMEOUT, client.list_user_tokens(request))
            .await
            .map_err(|_| RuntimeError::TimedOut(CALL_TIMEOUT))?
            .map_err(RuntimeError::Status)?
            .into_inner();
        reply
            .links
            .into_iter()
            .map(|link| {
                Ok(UserLinkInfo {
                    state: LinkState::from_proto(link.status)?,
                    app_id: link.app_id,
                    reason: link.reason,
                    connected_at_unix: link.connected_at_unix,
                    refreshed_at_unix: link.refreshed_at_unix,
                    expires_at_unix: link.expires_at_unix,
                    scope: link.scope,
                })
            })
            .collect()
    }

    /// Disconnects one of a user's links; false when there was none.
    pub async fn delete_user_token(
        &self,
        app_id: &str,
        user: &VaultUser,
    ) -> Result<bool, RuntimeError> {
        let request = self.request(proto::DeleteUserTokenRequest {
            app_id: app_id.to_owned(),
            user: Some(user.to_proto()),
        });
        let mut client = self.client.clone();
        let reply = tokio::time::timeout(CALL_TIMEOUT, client.delete_user_token(request))
            .await
            .map_err(|_| RuntimeError::TimedOut(CALL_TIMEOUT))?
            .map_err(RuntimeError::Status)?;
        Ok(reply.into_inner().deleted)
    }
}

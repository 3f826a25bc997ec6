//! The control plane's `NodeRuntime` service, as the authorization server uses it: exactly
//! one use of each authorization code and refresh token across the fleet
//! (`ConsumeOnce`), and revocation of a grant (`RevokeGrant`), which reaches every node in
//! the next snapshot.
//!
//! Calls are bounded by [`CALL_TIMEOUT`]. A control plane that cannot answer makes the
//! token endpoint answer 503 `temporarily_unavailable`: single use is never skipped.

use std::time::Duration;

use portcullis_proto::v1 as proto;
use portcullis_proto::v1::node_runtime_client::NodeRuntimeClient;
use portcullis_shared::secret::SecretValue;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use url::Url;

use crate::discovery::control_plane_endpoint;

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
}

/// A lazily connected client of `NodeRuntime`, authenticated with the node token.
#[derive(Clone)]
pub struct RuntimeClient {
    client: NodeRuntimeClient<Channel>,
    bearer: MetadataValue<tonic::metadata::Ascii>,
}

impl std::fmt::Debug for RuntimeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeClient").finish_non_exhaustive()
    }
}

impl RuntimeClient {
    /// Connects on first use (and reconnects after failures), so a node starts without the
    /// control plane in reach.
    pub fn new(
        control_plane: &Url,
        ca_pem: Option<&[u8]>,
        node_token: &SecretValue,
    ) -> Result<Self, RuntimeError> {
        let channel = control_plane_endpoint(control_plane, ca_pem)
            .map_err(RuntimeError::Endpoint)?
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        let mut bearer = MetadataValue::try_from(format!("Bearer {}", node_token.expose()))
            .map_err(|_| RuntimeError::InvalidToken)?;
        bearer.set_sensitive(true);
        Ok(Self {
            client: NodeRuntimeClient::new(channel),
            bearer,
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.bearer.clone());
        request.set_timeout(CALL_TIMEOUT);
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
}

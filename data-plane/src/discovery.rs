//! The configuration distribution client, modelled on Envoy's xDS.
//!
//! The node opens a `StreamSnapshots` stream with its bearer token, says hello with the
//! version it last applied, then for each pushed snapshot: validates it
//! (`Snapshot::try_from`), compiles it, swaps it in atomically, persists it sealed, and
//! answers ACK. A snapshot that fails validation or compilation is answered with NACK and
//! the node keeps serving the previous one. When the stream ends or fails the node
//! reconnects forever, with exponential backoff and jitter, and keeps serving meanwhile.

use std::sync::Arc;
use std::time::Duration;

use portcullis_proto::v1 as proto;
use portcullis_proto::v1::config_discovery_client::ConfigDiscoveryClient;
use portcullis_shared::crypto::random_bytes;
use portcullis_shared::secret::SecretValue;
use portcullis_shared::snapshot::Snapshot;
use portcullis_shared::validate::ValidationErrors;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing::{info, warn};

use crate::compiled::{CompiledSnapshot, SnapshotSlot};
use crate::config::{ControlPlaneConfig, UpstreamHostAllowlist};
use crate::jwt::JwksRegistry;
use crate::store::SnapshotStore;

/// ACK/NACK replies waiting to be sent. One reply per update, and the stream is read only
/// after the previous reply was queued, so this never holds more than a few.
const OUTBOUND_QUEUE: usize = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings, so a control plane that vanished is noticed on an idle stream.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("invalid control plane endpoint: {0}")]
    Endpoint(#[source] tonic::transport::Error),
    #[error("cannot connect to the control plane: {0}")]
    Connect(#[source] tonic::transport::Error),
    #[error("the control plane refused the stream: {0}")]
    Refused(tonic::Status),
    #[error("the snapshot stream failed: {0}")]
    Stream(tonic::Status),
    #[error("the reply channel closed")]
    ReplyChannelClosed,
    #[error("the node token cannot be sent as gRPC metadata")]
    InvalidToken,
}

/// Why a pushed snapshot was refused. The text goes back to the control plane in the NACK,
/// so it names fields and rules, never values.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("update carries no snapshot")]
    MissingSnapshot,
    #[error("update version {update} does not match snapshot version {snapshot}")]
    VersionMismatch { update: u64, snapshot: u64 },
    #[error("invalid snapshot: {0}")]
    Invalid(ValidationErrors),
    #[error("snapshot does not compile: {0}")]
    Compile(ValidationErrors),
    #[error("snapshot task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Exponential backoff with jitter, bounded: delays grow from `initial` by doubling up to
/// `max`, and each one is drawn uniformly from its upper half so a fleet that lost the
/// control plane together does not reconnect in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

#[derive(Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    ceiling: Duration,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            ceiling: policy.initial,
        }
    }

    /// The next delay, in `[ceiling / 2, ceiling]`; the ceiling then doubles up to the max.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling.min(self.policy.max);
        self.ceiling = ceiling.saturating_mul(2).min(self.policy.max);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_micros()).unwrap_or(u64::MAX);
        // Jitter needs no cryptographic quality; the shared generator is simply at hand.
        let random = random_bytes::<8>().map(u64::from_le_bytes).unwrap_or(0);
        let jitter = if spread == 0 {
            0
        } else {
            random % (spread + 1)
        };
        half + Duration::from_micros(jitter)
    }

    /// Back to the initial delay, after a connection that worked.
    pub fn reset(&mut self) {
        self.ceiling = self.policy.initial;
    }
}

/// Where and how to reach the control plane.
#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    pub node_id: String,
    /// The node's public URL, reported for fleet status.
    pub address: String,
    pub control_plane: ControlPlaneConfig,
    pub backoff: BackoffPolicy,
    /// Snapshots naming other upstream hosts do not compile (and are NACKed).
    pub allowed_upstream_hosts: UpstreamHostAllowlist,
}

/// The gRPC endpoint of the control plane: connect timeout, HTTP/2 keepalive, and for an
/// https URL TLS with the system roots plus the configured CA, presenting the node's client
/// certificate when it has one (mTLS). Every connection the node makes to the control plane
/// (config discovery, runtime calls, audit delivery) starts here.
pub fn control_plane_endpoint(
    control_plane: &ControlPlaneConfig,
) -> Result<Endpoint, tonic::transport::Error> {
    let mut endpoint = Endpoint::from_shared(control_plane.url.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if control_plane.url.scheme() == "https" {
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(pem) = &control_plane.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some(identity) = &control_plane.client_identity {
            tls = tls.identity(Identity::from_pem(
                &identity.cert_pem,
                identity.key_pem.expose(),
            ));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint)
}

/// The node token cannot be sent as gRPC metadata (validated configuration never has one).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the node token cannot be sent as gRPC metadata")]
pub struct InvalidNodeToken;

/// The `authorization` metadata of node calls: the node token as a bearer token, or nothing
/// when the node authenticates by client certificate only.
pub fn node_bearer(
    token: Option<&SecretValue>,
) -> Result<Option<MetadataValue<Ascii>>, InvalidNodeToken> {
    let Some(token) = token else {
        return Ok(None);
    };
    let mut bearer = MetadataValue::try_from(format!("Bearer {}", token.expose()))
        .map_err(|_| InvalidNodeToken)?;
    bearer.set_sensitive(true);
    Ok(Some(bearer))
}

/// Keeps the node's snapshot current.
pub struct DiscoveryClient {
    options: DiscoveryOptions,
    slot: Arc<SnapshotSlot>,
    /// Compiling a snapshot resolves its JWKS URLs here, sharing their caches with the
    /// snapshot being served.
    jwks: Arc<JwksRegistry>,
    store: Option<SnapshotStore>,
}

/// How a stream ended without an error.
enum SessionEnd {
    Shutdown,
    Closed { applied_any: bool },
}

impl DiscoveryClient {
    /// `store` is `None` only where nothing should be persisted (tests of the protocol).
    pub fn new(
        options: DiscoveryOptions,
        slot: Arc<SnapshotSlot>,
        jwks: Arc<JwksRegistry>,
        store: Option<SnapshotStore>,
    ) -> Self {
        Self {
            options,
            slot,
            jwks,
            store,
        }
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let endpoint = match self.endpoint() {
            Ok(endpoint) => endpoint,
            Err(error) => {
                // Validated configuration makes this unreachable in practice; the node keeps
                // serving what it has.
                tracing::error!(%error, "config discovery disabled");
                return;
            }
        };
        let mut backoff = Backoff::new(self.options.backoff);
        loop {
            info!(control_plane = %self.options.control_plane.url, "connecting to the control plane");
            match self.session(&endpoint, &shutdown).await {
                Ok(SessionEnd::Shutdown) => {
                    info!("config discovery stopped");
                    return;
                }
                Ok(SessionEnd::Closed { applied_any }) => {
                    warn!("the control plane closed the snapshot stream");
                    if applied_any {
                        backoff.reset();
                    }
                }
                Err((error, applied_any)) => {
                    warn!(%error, "snapshot stream lost");
                    if applied_any {
                        backoff.reset();
                    }
                }
            }
            let delay = backoff.next_delay();
            info!(
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                serving_version = self.slot.version(),
                "reconnecting after backoff"
            );
            tokio::select! {
                () = shutdown.cancelled() => {
                    info!("config discovery stopped");
                    return;
                }
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn endpoint(&self) -> Result<Endpoint, DiscoveryError> {
        control_plane_endpoint(&self.options.control_plane).map_err(DiscoveryError::Endpoint)
    }

    /// One connection: hello, then updates until the stream ends. Errors carry whether any
    /// snapshot was applied on this connection (a sign the connection itself was healthy).
    async fn session(
        &self,
        endpoint: &Endpoint,
        shutdown: &CancellationToken,
    ) -> Result<SessionEnd, (DiscoveryError, bool)> {
        let channel = tokio::select! {
            () = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
            channel = endpoint.connect() => channel.map_err(|error| (DiscoveryError::Connect(error), false))?,
        };
        let mut client = ConfigDiscoveryClient::new(channel);
        let (replies, outbound) = mpsc::channel(OUTBOUND_QUEUE);
        let hello = proto::NodeMessage {
            message: Some(proto::node_message::Message::Hello(proto::NodeHello {
                node_id: self.options.node_id.clone(),
                address: self.options.address.clone(),
                last_applied_version: self.slot.version().unwrap_or(0),
                software_version: env!("CARGO_PKG_VERSION").to_owned(),
            })),
        };
        replies
            .send(hello)
            .await
            .map_err(|_| (DiscoveryError::ReplyChannelClosed, false))?;
        let mut request = tonic::Request::new(ReceiverStream::new(outbound));
        if let Some(bearer) = node_bearer(self.options.control_plane.node_token.as_ref())
            .map_err(|InvalidNodeToken| (DiscoveryError::InvalidToken, false))?
        {
            request.metadata_mut().insert("authorization", bearer);
        }
        let mut updates = tokio::select! {
            () = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
            response = client.stream_snapshots(request) => response
                .map_err(|status| (DiscoveryError::Refused(status), false))?
                .into_inner(),
        };
        info!("connected to the control plane");
        let mut applied_any = false;
        loop {
            let update = tokio::select! {
                () = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
                update = updates.message() => update,
            };
            let update = match update {
                Ok(Some(update)) => update,
                Ok(None) => return Ok(SessionEnd::Closed { applied_any }),
                Err(status) => return Err((DiscoveryError::Stream(status), applied_any)),
            };
            let reply = self.apply(update).await;
            applied_any |= matches!(reply.message, Some(proto::node_message::Message::Ack(_)));
            tokio::select! {
                () = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
                sent = replies.send(reply) => sent.map_err(|_| (DiscoveryError::ReplyChannelClosed, applied_any))?,
            }
        }
    }

    /// Applies one update and builds the ACK or NACK for it.
    async fn apply(&self, update: proto::SnapshotUpdate) -> proto::NodeMessage {
        let version = update.version;
        let nonce = update.nonce.clone();
        let message = match self.try_apply(update).await {
            Ok(()) => proto::node_message::Message::Ack(proto::SnapshotAck { version, nonce }),
            Err(error) => {
                warn!(
                    version,
                    serving_version = self.slot.version(),
                    %error,
                    "snapshot refused"
                );
                proto::node_message::Message::Nack(proto::SnapshotNack {
                    version,
                    nonce,
                    error: error.to_string(),
                })
            }
        };
        proto::NodeMessage {
            message: Some(message),
        }
    }

    async fn try_apply(&self, update: proto::SnapshotUpdate) -> Result<(), ApplyError> {
        let message = update.snapshot.ok_or(ApplyError::MissingSnapshot)?;
        if message.version != update.version {
            return Err(ApplyError::VersionMismatch {
                update: update.version,
                snapshot: message.version,
            });
        }
        // Validation and compilation walk the whole snapshot: off the reactor.
        let jwks = self.jwks.clone();
        let allowed_upstream_hosts = self.options.allowed_upstream_hosts.clone();
        let (compiled, message) = tokio::task::spawn_blocking(move || {
            let snapshot = Snapshot::try_from(message.clone()).map_err(ApplyError::Invalid)?;
            let compiled =
                CompiledSnapshot::compile_for_hosts(snapshot, &jwks, &allowed_upstream_hosts)
                    .map_err(ApplyError::Compile)?;
            Ok::<_, ApplyError>((compiled, message))
        })
        .await??;
        let previous = self.slot.version();
        let version = compiled.version;
        self.slot.store(compiled);
        info!(version, previous_version = previous, "snapshot applied");
        if let Some(store) = &self.store
            && let Err(error) = store.save(message).await
        {
            // The node serves the new snapshot either way; only a restart without a control
            // plane would fall back to the older file.
            tracing::error!(version, %error, "could not persist the snapshot");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_bound_and_jitters_within_the_upper_half() {
        let policy = BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1_000),
        };
        let mut backoff = Backoff::new(policy);
        let ceilings = [100, 200, 400, 800, 1_000, 1_000, 1_000];
        for ceiling in ceilings {
            let ceiling = Duration::from_millis(ceiling);
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_spreads_delays() {
        let policy = BackoffPolicy {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(10),
        };
        let mut backoff = Backoff::new(policy);
        let delays: std::collections::HashSet<Duration> =
            (0..20).map(|_| backoff.next_delay()).collect();
        assert!(delays.len() > 1, "twenty equal delays: no jitter");
    }
}

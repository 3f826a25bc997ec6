//! Starting and stopping a node: load the last good snapshot from disk, bind the listener,
//! run the HTTP server and the config discovery client, drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use url::Url;

use crate::compiled::{CompiledSnapshot, SnapshotSlot};
use crate::config::{NodeConfig, UpstreamHostAllowlist};
use crate::discovery::{BackoffPolicy, DiscoveryClient, DiscoveryOptions};
use crate::jwt::{JwksPolicy, JwksRegistry};
use crate::oauth::runtime::RuntimeClient;
use crate::oauth::{AuthorizationServer, Issuer};
use crate::proxy::{NodeState, router};
use crate::record::TracingRecordSink;
use crate::store::SnapshotStore;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the bound listener has no local address: {0}")]
    LocalAddress(#[source] std::io::Error),
    #[error("the public URL derived from {0} does not parse")]
    PublicUrl(SocketAddr),
    #[error("cannot build the HTTP client for JWKS URLs: {0}")]
    JwksClient(#[source] reqwest::Error),
    #[error("cannot build the HTTP clients of the authorization server: {0}")]
    OAuthClient(#[source] reqwest::Error),
    #[error("cannot set up runtime calls to the control plane: {0}")]
    Runtime(#[source] crate::oauth::runtime::RuntimeError),
}

/// A node whose listener is bound and whose persisted snapshot (if any) is loaded.
pub struct Node {
    listener: TcpListener,
    local_address: SocketAddr,
    state: Arc<NodeState>,
    discovery: DiscoveryClient,
    drain_timeout: Duration,
}

impl Node {
    /// Loads the persisted snapshot, then binds. The snapshot comes first so the node is
    /// ready the moment it accepts connections, even with no control plane in reach.
    pub async fn start(config: NodeConfig) -> Result<Self, StartError> {
        let store = SnapshotStore::new(&config.state_dir, config.state_key.clone());
        let jwks =
            Arc::new(JwksRegistry::new(JwksPolicy::default()).map_err(StartError::JwksClient)?);
        let slot = Arc::new(SnapshotSlot::new(
            load_persisted(&store, &jwks, &config.allowed_upstream_hosts).await,
        ));
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    address: config.listen,
                    source,
                })?;
        let local_address = listener.local_addr().map_err(StartError::LocalAddress)?;
        let public_url = match config.public_url {
            Some(url) => url,
            None => Url::parse(&format!("http://{local_address}"))
                .map_err(|_| StartError::PublicUrl(local_address))?,
        };
        let runtime = RuntimeClient::new(
            &config.control_plane.url,
            config.control_plane.ca_pem.as_deref(),
            &config.control_plane.node_token,
        )
        .map_err(StartError::Runtime)?;
        let oauth = AuthorizationServer::new(Issuer::new(&public_url), config.oauth, Some(runtime))
            .map_err(StartError::OAuthClient)?;
        let state = Arc::new(NodeState::with_authorization_server(
            &config.node_id,
            &public_url,
            local_address,
            slot.clone(),
            config.limits,
            Arc::new(TracingRecordSink),
            oauth,
        ));
        let discovery = DiscoveryClient::new(
            DiscoveryOptions {
                node_id: config.node_id,
                address: public_url.to_string(),
                control_plane: config.control_plane.url,
                ca_pem: config.control_plane.ca_pem,
                node_token: config.control_plane.node_token,
                backoff: BackoffPolicy::default(),
                allowed_upstream_hosts: config.allowed_upstream_hosts,
            },
            slot,
            jwks,
            Some(store),
        );
        Ok(Self {
            listener,
            local_address,
            state,
            discovery,
            drain_timeout: config.drain_timeout,
        })
    }

    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, gives open requests the
    /// drain timeout to finish (SSE streams may never finish on their own) and returns.
    pub async fn serve(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let discovery = tokio::spawn(self.discovery.run(shutdown.child_token()));
        let server = axum::serve(self.listener, router(self.state))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let mut server = tokio::spawn(server.into_future());
        let result = tokio::select! {
            joined = &mut server => joined,
            () = shutdown.cancelled() => {
                info!(drain_timeout_secs = self.drain_timeout.as_secs(), "shutting down: draining open requests");
                match tokio::time::timeout(self.drain_timeout, &mut server).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        warn!("drain timeout elapsed: closing the remaining connections");
                        server.abort();
                        Ok(Ok(()))
                    }
                }
            }
        };
        // The discovery client stops on the same signal; it holds no request state.
        discovery.abort();
        match result {
            Ok(served) => served,
            Err(join_error) => Err(std::io::Error::other(join_error)),
        }
    }
}

/// The last good snapshot from disk, validated and compiled, or nothing. A file that
/// cannot be used is logged and ignored: the control plane will send a fresh snapshot.
/// A file naming an upstream host this node no longer allows is one that cannot be used.
pub async fn load_persisted(
    store: &SnapshotStore,
    jwks: &JwksRegistry,
    allowed_upstream_hosts: &UpstreamHostAllowlist,
) -> Option<CompiledSnapshot> {
    match store.load().await {
        Ok(None) => {
            info!(path = %store.path().display(), "no persisted snapshot: not ready until the control plane sends one");
            None
        }
        Ok(Some(snapshot)) => {
            match CompiledSnapshot::compile_for_hosts(snapshot, jwks, allowed_upstream_hosts) {
                Ok(compiled) => {
                    info!(version = compiled.version, "serving the persisted snapshot");
                    Some(compiled)
                }
                Err(errors) => {
                    error!(%errors, "the persisted snapshot does not compile: ignored");
                    None
                }
            }
        }
        Err(load_error) => {
            error!(error = %load_error, path = %store.path().display(), "cannot use the persisted snapshot: ignored");
            None
        }
    }
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("ctrl-c received"),
        () = terminate => info!("SIGTERM received"),
    }
}

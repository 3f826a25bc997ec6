//! Starting and stopping a node: load the last good snapshot from disk, bind the listener
//! (TLS when configured), run the HTTP server and the config discovery client, drain on
//! shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use url::Url;

use crate::audit::{
    AuditCollector, AuditRecordSink, Delivery, DeliveryOptions, Spool, SpoolOptions,
};
use crate::compiled::{CompiledSnapshot, SnapshotSlot};
use crate::config::{NodeConfig, UpstreamHostAllowlist};
use crate::discovery::{BackoffPolicy, DiscoveryClient, DiscoveryOptions};
use crate::jwt::{JwksPolicy, JwksRegistry};
use crate::metrics::NodeMetrics;
use crate::oauth::runtime::RuntimeClient;
use crate::oauth::{AuthorizationServer, Issuer};
use crate::proxy::{NodeState, router};
use crate::store::SnapshotStore;
use crate::tls::TlsListener;

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
    #[error("cannot open the audit spool: {0}")]
    AuditSpool(#[source] crate::audit::spool::SpoolError),
    #[error("cannot set up audit delivery: {0}")]
    AuditDelivery(#[source] crate::audit::delivery::DeliveryError),
    #[error("the audit spool task failed: {0}")]
    Join(#[source] tokio::task::JoinError),
}

/// A bound listener of the node: plaintext, or TLS only.
enum Listener {
    Plain(TcpListener),
    Tls(TlsListener),
}

impl Listener {
    /// Wraps a bound listener in TLS when `tls` is given.
    fn new(
        listener: TcpListener,
        tls: Option<&Arc<rustls::ServerConfig>>,
    ) -> Result<Self, StartError> {
        match tls {
            None => Ok(Self::Plain(listener)),
            Some(config) => TlsListener::new(listener, config.clone())
                .map(Self::Tls)
                .map_err(StartError::LocalAddress),
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Self::Plain(listener) => listener.local_addr(),
            Self::Tls(listener) => Ok(axum::serve::Listener::local_addr(listener)?),
        }
    }

    /// Serves `router` until `shutdown`, then lets open connections finish.
    fn serve(
        self,
        router: axum::Router,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<std::io::Result<()>> {
        // Bounded heads, header read and keep-alive timeouts, and the peer address of each
        // request (for the rate limits): see `portcullis_shared::http_server`.
        let limits = portcullis_shared::http_server::HttpServerLimits::default();
        match self {
            // No Nagle: a response can end in a small write of its own (a stream's last
            // frame waits for its audit event), which would otherwise wait for the client's
            // delayed ACK (40 ms).
            Self::Plain(listener) => tokio::spawn(portcullis_shared::http_server::serve(
                axum::serve::ListenerExt::tap_io(listener, |tcp| {
                    if let Err(error) = tcp.set_nodelay(true) {
                        tracing::debug!(%error, "cannot set TCP_NODELAY");
                    }
                }),
                router,
                limits,
                shutdown,
            )),
            Self::Tls(listener) => tokio::spawn(portcullis_shared::http_server::serve(
                listener, router, limits, shutdown,
            )),
        }
    }
}

/// A node whose listener is bound and whose persisted snapshot (if any) is loaded.
pub struct Node {
    listener: Listener,
    local_address: SocketAddr,
    state: Arc<NodeState>,
    discovery: DiscoveryClient,
    drain_timeout: Duration,
    spool: Spool,
    delivery: Delivery,
    /// The admin listener and what it serves.
    admin: Option<(Listener, Arc<crate::admin::AdminState>)>,
}

/// Once the HTTP server has drained, delivery gets at most this long to empty the spool;
/// what is left is delivered after the next start.
const FINAL_DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

impl Node {
    /// Loads the persisted snapshot, then binds. The snapshot comes first so the node is
    /// ready the moment it accepts connections, even with no control plane in reach.
    pub async fn start(config: NodeConfig) -> Result<Self, StartError> {
        let store = SnapshotStore::new(&config.state_dir, config.state_key.clone());
        // The spool before the listener: events left by the last run are found (and a
        // broken spool stops the start) before the first request.
        let spool_options = SpoolOptions {
            dir: config.audit.spool_dir(&config.state_dir),
            max_bytes: config.audit.spool_max_bytes,
            fsync: config.audit.fsync,
            when_full: config.audit.when_full,
        };
        let (spool, recovered) = tokio::task::spawn_blocking(move || Spool::open(spool_options))
            .await
            .map_err(StartError::Join)?
            .map_err(StartError::AuditSpool)?;
        info!(
            events = recovered.events,
            bytes = recovered.bytes,
            segments = recovered.segments,
            torn_bytes = recovered.torn_bytes,
            "audit spool opened"
        );
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
        let listener = Listener::new(listener, config.tls.as_ref())?;
        let public_url = match config.public_url {
            Some(url) => url,
            None => {
                let scheme = if config.tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                Url::parse(&format!("{scheme}://{local_address}"))
                    .map_err(|_| StartError::PublicUrl(local_address))?
            }
        };
        let runtime = RuntimeClient::new(&config.control_plane).map_err(StartError::Runtime)?;
        let oauth = AuthorizationServer::new(Issuer::new(&public_url), config.oauth, Some(runtime))
            .map_err(StartError::OAuthClient)?;
        let metrics = Arc::new(NodeMetrics::default());
        let mut state = NodeState::with_authorization_server(
            &config.node_id,
            &public_url,
            local_address,
            slot.clone(),
            config.limits,
            Arc::new(AuditRecordSink::new(spool.clone(), metrics.clone())),
            oauth,
        );
        state.metrics = metrics.clone();
        state.rate_limits = crate::rate_limit::RateLimits::new(&config.rate_limits);
        let state = Arc::new(state);
        let delivery = Delivery::new(
            spool.clone(),
            DeliveryOptions::new(config.control_plane.clone()),
        )
        .map_err(StartError::AuditDelivery)?;
        let admin = match config.admin_listen {
            None => None,
            Some(address) => {
                let listener = TcpListener::bind(address)
                    .await
                    .map_err(|source| StartError::Bind { address, source })?;
                let listener =
                    Listener::new(listener, config.tls.as_ref().filter(|_| config.admin_tls))?;
                let registry = crate::metrics::registry(
                    &metrics,
                    slot.clone(),
                    vec![Box::new(AuditCollector {
                        spool: spool.clone(),
                        delivery: delivery.status(),
                    })],
                );
                Some((
                    listener,
                    Arc::new(crate::admin::AdminState {
                        node: state.clone(),
                        registry,
                    }),
                ))
            }
        };
        let discovery = DiscoveryClient::new(
            DiscoveryOptions {
                node_id: config.node_id,
                address: public_url.to_string(),
                control_plane: config.control_plane,
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
            spool,
            delivery,
            admin,
        })
    }

    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    /// The admin listener's address, when `--admin-listen` is set.
    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, gives open requests the
    /// drain timeout to finish (SSE streams may never finish on their own) and returns.
    pub async fn serve(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let discovery = tokio::spawn(self.discovery.run(shutdown.child_token()));
        // Users' cached upstream tokens follow the control plane's vault.
        let vault_watch = tokio::spawn(
            self.state
                .linking
                .vault
                .clone()
                .watch(BackoffPolicy::default(), shutdown.child_token()),
        );
        // Delivery outlives the HTTP drain (see below), so it has tokens of its own.
        let delivery_drain = CancellationToken::new();
        let delivery_stop = CancellationToken::new();
        let mut delivery = tokio::spawn(
            self.delivery
                .run(delivery_drain.clone(), delivery_stop.clone()),
        );
        let admin = self
            .admin
            .map(|(listener, state)| listener.serve(crate::admin::router(state), shutdown.clone()));
        let mut server = self.listener.serve(router(self.state), shutdown.clone());
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
        vault_watch.abort();
        // Every response is complete or cut: sync what the spool holds, then give delivery
        // a moment to empty it.
        let spool = self.spool.clone();
        if let Ok(Err(error)) = tokio::task::spawn_blocking(move || spool.sync_now()).await {
            error!(%error, "the last sync of the audit spool failed");
        }
        delivery_drain.cancel();
        if tokio::time::timeout(FINAL_DELIVERY_TIMEOUT, &mut delivery)
            .await
            .is_err()
        {
            let (events, _) = self.spool.depth();
            warn!(
                events,
                "audit events left in the spool: they are delivered after the next start"
            );
            delivery_stop.cancel();
            delivery.abort();
        }
        if let Some(admin) = admin {
            admin.abort();
        }
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

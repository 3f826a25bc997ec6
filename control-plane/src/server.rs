//! Wires the control plane together: engine, access list, fleet registry and the gRPC
//! services (admin, discovery, health, reflection) on one listener.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use portcullis_proto::v1::admin_service_server::AdminServiceServer;
use portcullis_proto::v1::config_discovery_server::ConfigDiscoveryServer;
use tokio::net::TcpListener;

use crate::access::{AccessError, AccessList};
use crate::admin::AdminApi;
use crate::audit::AuditLog;
use crate::discovery::DiscoveryApi;
use crate::engine::{Engine, EngineError, EngineOptions};
use crate::fleet::Fleet;
use crate::runtime::{AuditIngestApi, NodeAuth, OnceStore, RuntimeApi, spawn_sweeper};
use crate::secrets::{MasterKey, SecretError};
use crate::tls::{TlsError, TlsFiles};
use crate::vault::Vault;
use portcullis_proto::v1::audit_ingest_server::AuditIngestServer;
use portcullis_proto::v1::node_runtime_server::NodeRuntimeServer;

/// The largest admin request (an `apply` document) accepted.
const MAX_ADMIN_MESSAGE: usize = 8 * 1024 * 1024;
/// The largest audit batch accepted from a node.
const MAX_AUDIT_BATCH: usize = 16 * 1024 * 1024;

/// Validated control-plane settings.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    pub data_dir: PathBuf,
    pub access_file: PathBuf,
    pub engine: EngineOptions,
    /// `None`: plaintext, for local development only.
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    MasterKey(SecretError),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("cannot open data directory: {0}")]
    Engine(#[from] EngineError),
    #[error("cannot serve: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("cannot build reflection service: {0}")]
    Reflection(String),
    #[error("cannot create the gateway keys: {0}")]
    Bootstrap(String),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
}

impl StartError {
    /// Configuration mistakes exit with 64 (EX_USAGE), so supervisors do not restart-loop.
    pub fn is_configuration_error(&self) -> bool {
        match self {
            StartError::MasterKey(_) | StartError::Access(_) | StartError::Tls(_) => true,
            StartError::Engine(EngineError::Secret(
                SecretError::WrongMasterKey { .. } | SecretError::MissingPreviousKey(_),
            )) => true,
            StartError::Engine(_)
            | StartError::Serve(_)
            | StartError::Reflection(_)
            | StartError::Bootstrap(_) => false,
        }
    }
}

/// A running control plane's shared parts.
pub struct ControlPlane {
    pub engine: Arc<Engine>,
    pub access: Arc<AccessList>,
    pub fleet: Arc<Fleet>,
    pub once: Arc<OnceStore>,
    pub vault: Arc<Vault>,
    pub audit: Arc<AuditLog>,
    pub tls: Option<TlsFiles>,
}

impl ControlPlane {
    /// Opens the data directory and, on first start, generates the gateway's keys.
    pub async fn open(
        config: &ControlPlaneConfig,
        master_key: MasterKey,
        previous_master_key: Option<MasterKey>,
    ) -> Result<Self, StartError> {
        let access = Arc::new(AccessList::load(&config.access_file)?);
        if let Some(oidc) = access.oidc() {
            // A first fetch now, so admins can sign in as soon as the listener is up; the
            // refresher keeps trying if the identity provider is not reachable yet.
            if let Err(error) = oidc.refresh_keys().await {
                tracing::warn!(%error, "admin OIDC keys not available yet");
            }
            oidc.spawn_refresher();
        }
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|error| StartError::Engine(EngineError::Thread(error)))?;
        let engine = Arc::new(Engine::open(
            &config.data_dir,
            master_key,
            previous_master_key,
            config.engine.clone(),
        )?);
        let once = Arc::new(OnceStore::open(engine.store().db()).map_err(|error| {
            StartError::Engine(EngineError::Store(crate::store::StoreError::Sled(error)))
        })?);
        let audit = Arc::new(
            AuditLog::open(engine.store().db())
                .map_err(|error| StartError::Bootstrap(error.to_string()))?,
        );
        let vault = Arc::new(
            Vault::open(
                engine.store().db(),
                engine.secrets().clone(),
                engine.subscribe_state(),
                audit.clone(),
            )
            .map_err(|error| StartError::Bootstrap(error.to_string()))?,
        );
        bootstrap_gateway_keys(&engine).await?;
        Ok(Self {
            engine,
            access,
            fleet: Arc::new(Fleet::default()),
            once,
            vault,
            audit,
            tls: config.tls.clone(),
        })
    }

    /// Serves every gRPC service on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        self.serve_with_http(listener, None, shutdown).await
    }

    /// Like [`Self::serve`], with the HTTP listener of `/metrics`, `/healthz` and `/readyz`
    /// (`crate::observability`) on `http_listener` when there is one.
    pub async fn serve_with_http(
        self,
        listener: TcpListener,
        http_listener: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        let serving = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_http = tokio_util::sync::CancellationToken::new();
        let http = http_listener.map(|http_listener| {
            let state = Arc::new(crate::observability::HttpState {
                registry: crate::observability::registry(
                    self.fleet.clone(),
                    self.engine.subscribe_snapshots(),
                    self.audit.clone(),
                ),
                serving: serving.clone(),
            });
            // Bounded request heads and a header read timeout, as on the nodes' listeners.
            tokio::spawn(portcullis_shared::http_server::serve(
                http_listener,
                crate::observability::http_router(state),
                portcullis_shared::http_server::HttpServerLimits::default(),
                stop_http.clone(),
            ))
        });
        let serving_flag = serving.clone();
        let shutdown = async move {
            shutdown.await;
            serving_flag.store(false, std::sync::atomic::Ordering::Release);
        };
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<AdminServiceServer<AdminApi>>()
            .await;
        health_reporter
            .set_serving::<ConfigDiscoveryServer<DiscoveryApi>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(portcullis_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|error| StartError::Reflection(error.to_string()))?;
        let admin = AdminApi::new(
            self.engine.clone(),
            self.access.clone(),
            self.fleet.clone(),
            self.vault.clone(),
            self.audit.clone(),
        );
        self.audit
            .spawn_config_follower(self.engine.store().clone(), self.engine.subscribe_state());
        let nodes = Arc::new(NodeAuth::new(
            self.access.clone(),
            self.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some()),
        ));
        let ingest = AuditIngestApi::new(nodes.clone(), self.audit.clone());
        let runtime = RuntimeApi::new(
            self.engine.clone(),
            nodes.clone(),
            self.once.clone(),
            self.vault.clone(),
        );
        spawn_sweeper(self.once.clone());
        let discovery =
            DiscoveryApi::new(self.engine.subscribe_snapshots(), nodes, self.fleet.clone());
        // Bounds: dead peers are noticed by keepalives, one connection cannot open
        // unbounded streams, and messages are size-limited per service below.
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
            .max_concurrent_streams(Some(1024))
            .concurrency_limit_per_connection(256);
        if let Some(tls) = &self.tls {
            builder = builder.tls_config(tls.server_config()?)?;
        }
        serving.store(true, std::sync::atomic::Ordering::Release);
        let served = builder
            .layer(crate::observability::GrpcObservabilityLayer::default())
            .add_service(health_service)
            .add_service(reflection)
            .add_service(
                AdminServiceServer::new(admin).max_decoding_message_size(MAX_ADMIN_MESSAGE),
            )
            .add_service(ConfigDiscoveryServer::new(discovery))
            .add_service(NodeRuntimeServer::new(runtime))
            .add_service(AuditIngestServer::new(ingest).max_decoding_message_size(MAX_AUDIT_BATCH))
            .serve_with_incoming_shutdown(incoming(listener), shutdown)
            .await;
        serving.store(false, std::sync::atomic::Ordering::Release);
        stop_http.cancel();
        if let Some(http) = http {
            let _ = http.await;
        }
        served?;
        Ok(())
    }
}

/// Generates a signing and a sealing key when the log has none, so the gateway's
/// authorization server works from the first start.
async fn bootstrap_gateway_keys(engine: &Engine) -> Result<(), StartError> {
    let state = engine.state();
    let signing = state.gateway_keys.active_signing_key().is_none();
    let sealing = state.gateway_keys.active_sealing_key().is_none();
    if !signing && !sealing {
        return Ok(());
    }
    let commands = crate::admin::rotation_commands(signing, sealing)
        .map_err(|error| StartError::Bootstrap(error.to_string()))?;
    engine
        .execute("system:bootstrap", commands, None)
        .await
        .map_err(|error| StartError::Bootstrap(error.to_string()))?;
    tracing::info!("generated the gateway's first signing and sealing keys");
    Ok(())
}

/// Resolves once the process is asked to stop (ctrl-c or SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

/// Accepted connections: TCP keepalive, and `TCP_NODELAY` so that a small reply (an audit
/// acknowledgement, a snapshot ACK) is not held back by Nagle's algorithm until the peer's
/// delayed ACK (tens of milliseconds per call). The builder's own TCP options apply only
/// to listeners it binds itself.
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(std::time::Duration::from_secs(60)))
}

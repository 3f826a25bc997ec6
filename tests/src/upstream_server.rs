//! What the test upstream binaries (`echo-upstream`, `conformance-upstream`) share: flags, the
//! Streamable HTTP router with an optional bearer check, and the startup protocol
//! (`<binary> listening on <addr>` on stdout once bound, then serve until SIGINT/SIGTERM).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use rmcp::ServerHandler;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

/// Command-line flags every test upstream accepts.
#[derive(Debug, Clone, clap::Args)]
pub struct UpstreamFlags {
    /// Address to listen on; port 0 lets the OS choose.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Path of the MCP endpoint.
    #[arg(long, default_value = "/mcp")]
    pub path: String,
    /// Require `Authorization: Bearer TOKEN` on every request (401 otherwise).
    #[arg(long, value_name = "TOKEN")]
    pub require_bearer: Option<String>,
    /// Accepted `Host` value (repeatable); default: loopback names only.
    #[arg(long = "allowed-host", value_name = "HOST")]
    pub allowed_hosts: Vec<String>,
    /// Serve without sessions.
    #[arg(long)]
    pub stateless: bool,
}

/// How the HTTP side of a test upstream is set up.
#[derive(Debug, Clone)]
pub struct UpstreamHttpOptions {
    /// Path the MCP endpoint is served on, e.g. `/mcp`.
    pub mcp_path: String,
    /// When set, every request must carry `Authorization: Bearer <token>` (else 401).
    pub required_bearer_token: Option<String>,
    /// `Host` values accepted (DNS-rebinding protection); empty keeps rmcp's loopback default.
    pub allowed_hosts: Vec<String>,
    /// Serve without sessions (every request stands alone).
    pub stateless: bool,
}

impl Default for UpstreamHttpOptions {
    fn default() -> Self {
        Self {
            mcp_path: "/mcp".to_owned(),
            required_bearer_token: None,
            allowed_hosts: Vec::new(),
            stateless: false,
        }
    }
}

impl From<&UpstreamFlags> for UpstreamHttpOptions {
    fn from(flags: &UpstreamFlags) -> Self {
        Self {
            mcp_path: flags.path.clone(),
            required_bearer_token: flags.require_bearer.clone(),
            allowed_hosts: flags.allowed_hosts.clone(),
            stateless: flags.stateless,
        }
    }
}

/// The HTTP router: the MCP endpoint at `options.mcp_path` (one handler per session from
/// `new_handler`), behind the bearer check if any.
///
/// `cancellation` ends every open session (and its SSE streams) when cancelled, so a
/// graceful shutdown does not wait for clients that keep streams open.
pub fn mcp_router<S>(
    new_handler: impl Fn() -> S + Send + Sync + 'static,
    options: &UpstreamHttpOptions,
    cancellation: CancellationToken,
) -> axum::Router
where
    S: ServerHandler + Send + 'static,
{
    let mut config = StreamableHttpServerConfig::default()
        .with_cancellation_token(cancellation)
        .with_legacy_session_mode(!options.stateless);
    if !options.allowed_hosts.is_empty() {
        config = config.with_allowed_hosts(options.allowed_hosts.clone());
    }
    let service: StreamableHttpService<S, LocalSessionManager> =
        StreamableHttpService::new(move || Ok(new_handler()), Default::default(), config);

    // route_service (not nest_service) keeps the full URI, so handlers see the path as the
    // client sent it.
    let router = axum::Router::new().route_service(&options.mcp_path, service);
    match &options.required_bearer_token {
        Some(token) => router.layer(middleware::from_fn_with_state(
            Arc::new(token.clone()),
            require_bearer_token,
        )),
        None => router,
    }
}

/// Rejects a request unless it carries `Authorization: Bearer <the configured token>`.
async fn require_bearer_token(
    State(expected_token): State<Arc<String>>,
    request: Request,
    next: Next,
) -> Response {
    let presented_token = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        });
    let accepted = presented_token
        .is_some_and(|token| bool::from(token.as_bytes().ct_eq(expected_token.as_bytes())));
    if accepted {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(
            http::header::WWW_AUTHENTICATE,
            r#"Bearer realm="test-upstream", error="invalid_token""#,
        )],
        axum::Json(serde_json::json!({
            "error": "invalid_token",
            "error_description": "a valid bearer token is required",
        })),
    )
        .into_response()
}

/// Serves `router` until `shutdown` completes, then cancels `cancellation` (closing
/// sessions) and drains connections.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    cancellation: CancellationToken,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            cancellation.cancel();
        })
        .await
}

/// The whole life of a test upstream binary: logging to stderr, signal handlers, bind, the
/// listening line on stdout, serve. Exit code 64 for bad flags.
pub async fn run_upstream_binary<S>(
    binary_name: &str,
    flags: &UpstreamFlags,
    new_handler: impl Fn() -> S + Send + Sync + 'static,
) -> ExitCode
where
    S: ServerHandler + Send + 'static,
{
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    if !flags.path.starts_with('/') {
        eprintln!("{binary_name}: --path must start with '/'");
        return ExitCode::from(64);
    }
    // Signal handlers exist before the listening line: a harness may send SIGTERM as soon as
    // it reads that line, and an unhandled SIGTERM would kill the process uncleanly.
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(error) => {
            eprintln!("{binary_name}: cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(&flags.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("{binary_name}: cannot listen on {}: {error}", flags.listen);
            return ExitCode::FAILURE;
        }
    };
    let address = match listener.local_addr() {
        Ok(address) => address,
        Err(error) => {
            eprintln!("{binary_name}: cannot read the bound address: {error}");
            return ExitCode::FAILURE;
        }
    };

    let cancellation = CancellationToken::new();
    let router = mcp_router(
        new_handler,
        &UpstreamHttpOptions::from(flags),
        cancellation.clone(),
    );

    // Test harnesses and the local setup wait for exactly this line.
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{binary_name} listening on {address}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    drop(stdout);

    match serve(listener, router, cancellation, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{binary_name}: server error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A future that completes on SIGINT or SIGTERM; the handlers are installed on return.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

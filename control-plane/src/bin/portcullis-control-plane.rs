//! The control-plane binary: parses flags, opens the data directory, serves gRPC.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis_control_plane::engine::EngineOptions;
use portcullis_control_plane::secrets::{MasterKey, generate_master_key_file};
use portcullis_control_plane::server::{ControlPlane, ControlPlaneConfig, shutdown_signal};
use portcullis_shared::telemetry::{self, LogFormat, TelemetryConfig};

/// mimalloc instead of glibc malloc, as the node: sled's copy-on-write pages and gRPC
/// messages allocate and free many small buffers across threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for configuration errors (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "portcullis-control-plane",
    version,
    about = "Portcullis control plane"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Tool>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Directory of the event log and state snapshots (sled).
    #[arg(long, env = "PORTCULLIS_DATA_DIR", default_value = "portcullis-data")]
    data_dir: PathBuf,
    /// Address of the gRPC listener (admin API, snapshot streams, health, reflection).
    #[arg(long, env = "PORTCULLIS_LISTEN", default_value = "127.0.0.1:7300")]
    listen: String,
    /// File holding the 32-byte master key (base64 or hex). Alternatively set
    /// PORTCULLIS_MASTER_KEY to the key itself.
    #[arg(long, env = "PORTCULLIS_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// During a master key rotation: the key being replaced (or set
    /// PORTCULLIS_PREVIOUS_MASTER_KEY). Every secret is re-wrapped under the new key at
    /// start; afterwards this flag can be dropped and the old key destroyed.
    #[arg(long, env = "PORTCULLIS_PREVIOUS_MASTER_KEY_FILE")]
    previous_master_key_file: Option<PathBuf>,
    /// YAML file listing admin, auditor and node tokens (as SHA-256 hashes).
    #[arg(long, env = "PORTCULLIS_ACCESS_FILE", default_value = "access.yaml")]
    access_file: PathBuf,
    /// Write a state snapshot every this many events, so start-up replays only the tail.
    #[arg(long, default_value_t = 10_000)]
    state_snapshot_every: u64,
    /// PEM certificate of the gRPC listener; with --tls-key-file the listener speaks TLS
    /// only (without them it is plaintext, for local development).
    #[arg(long, env = "PORTCULLIS_TLS_CERT_FILE")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of the listener's certificate.
    #[arg(long, env = "PORTCULLIS_TLS_KEY_FILE")]
    tls_key_file: Option<PathBuf>,
    /// PEM CA that signs node client certificates: nodes then authenticate by certificate
    /// (mTLS), the common name being the node id.
    #[arg(long, env = "PORTCULLIS_CLIENT_CA_FILE")]
    client_ca_file: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, env = "PORTCULLIS_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Address of the HTTP listener serving /metrics, /healthz and /readyz (none by
    /// default).
    #[arg(long, env = "PORTCULLIS_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// Export traces over OTLP/gRPC to this endpoint, e.g. http://127.0.0.1:4317 (none by
    /// default).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

#[derive(Subcommand)]
enum Tool {
    /// Write a new random master key to a file (mode 0600); refuses to overwrite.
    GenerateKey {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the SHA-256 of a token read from standard input, for the access file.
    HashToken,
    /// Write a development CA, a server certificate and node client certificates (never
    /// for production: the CA key sits next to them).
    DevCerts {
        #[arg(long)]
        out: PathBuf,
        /// Host names and IP addresses the server certificate is valid for.
        #[arg(long = "host", default_values = ["127.0.0.1", "localhost"])]
        hosts: Vec<String>,
        /// Node ids to make client certificates for (repeatable).
        #[arg(long = "node")]
        nodes: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Tool::GenerateKey { out }) => match generate_master_key_file(&out) {
            Ok(()) => {
                println!("wrote a new master key to {}", out.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: cannot write {}: {error}", out.display());
                ExitCode::from(1)
            }
        },
        Some(Tool::HashToken) => {
            let mut token = String::new();
            if let Err(error) = std::io::stdin().read_line(&mut token) {
                eprintln!("error: cannot read the token: {error}");
                return ExitCode::from(1);
            }
            println!(
                "{}",
                portcullis_shared::crypto::sha256_hex(
                    token.trim_end_matches(['\r', '\n']).as_bytes()
                )
            );
            ExitCode::SUCCESS
        }
        Some(Tool::DevCerts { out, hosts, nodes }) => {
            match portcullis_control_plane::tls::generate_dev_certificates(&out, &hosts, &nodes) {
                Ok(()) => {
                    println!("wrote development certificates to {}", out.display());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::from(1)
                }
            }
        }
        None => serve(cli.serve),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let log_format = match LogFormat::parse(&args.log_format) {
        Ok(format) => format,
        Err(message) => {
            eprintln!("error: --log-format {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let otlp_endpoint = match args
        .otlp_endpoint
        .as_deref()
        .filter(|text| !text.trim().is_empty())
        .map(telemetry::parse_otlp_endpoint)
        .transpose()
    {
        Ok(endpoint) => endpoint,
        Err(message) => {
            eprintln!("error: --otlp-endpoint {message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    // The OTLP exporter's gRPC client runs on the runtime.
    let telemetry = {
        let _runtime = runtime.enter();
        match telemetry::init(TelemetryConfig {
            service_name: "portcullis-control-plane",
            service_instance_id: None,
            log_format,
            otlp_endpoint,
        }) {
            Ok(telemetry) => telemetry,
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    };
    let code = serve_on(args, &runtime);
    let _runtime = runtime.enter();
    telemetry.shutdown();
    code
}

fn serve_on(args: ServeArgs, runtime: &tokio::runtime::Runtime) -> ExitCode {
    if args.state_snapshot_every == 0 {
        eprintln!("error: --state-snapshot-every must be at least 1");
        return ExitCode::from(EXIT_CONFIG);
    }
    let env_key = std::env::var("PORTCULLIS_MASTER_KEY").ok();
    let master_key = match MasterKey::load(args.master_key_file.as_deref(), env_key.as_deref()) {
        Ok(key) => key,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let previous_env = std::env::var("PORTCULLIS_PREVIOUS_MASTER_KEY").ok();
    let previous_master_key = match (
        args.previous_master_key_file.as_deref(),
        previous_env
            .as_deref()
            .filter(|value| !value.trim().is_empty()),
    ) {
        (None, None) => None,
        (file, env) => match MasterKey::load(file, env) {
            Ok(key) => Some(key),
            Err(error) => {
                eprintln!("error: previous master key: {error}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    let tls = match portcullis_control_plane::tls::TlsFiles::from_flags(
        args.tls_cert_file,
        args.tls_key_file,
        args.client_ca_file,
    ) {
        Ok(tls) => tls,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if tls.is_none() {
        tracing::warn!(
            "the gRPC listener is plaintext: use --tls-cert-file and --tls-key-file outside local development"
        );
    }
    let config = ControlPlaneConfig {
        tls,
        data_dir: args.data_dir,
        access_file: args.access_file,
        engine: EngineOptions {
            state_snapshot_every: args.state_snapshot_every,
            ..EngineOptions::default()
        },
    };
    runtime.block_on(async move {
        let control_plane = match ControlPlane::open(&config, master_key, previous_master_key).await
        {
            Ok(control_plane) => control_plane,
            Err(error) => {
                eprintln!("error: {error}");
                return if error.is_configuration_error() {
                    ExitCode::from(EXIT_CONFIG)
                } else {
                    ExitCode::from(1)
                };
            }
        };
        let listener = match tokio::net::TcpListener::bind(&args.listen).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("error: cannot listen on {}: {error}", args.listen);
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        let address = listener
            .local_addr()
            .map(|address| address.to_string())
            .unwrap_or_else(|_| args.listen.clone());
        let http_listener = match &args.http_listen {
            None => None,
            Some(http_listen) => match tokio::net::TcpListener::bind(http_listen).await {
                Ok(listener) => Some(listener),
                Err(error) => {
                    eprintln!("error: cannot listen on {http_listen}: {error}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            },
        };
        tracing::info!(%address, "control plane listening");
        // The HTTP line first: whoever waits for the listening line finds both.
        if let Some(http_address) = http_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
        {
            tracing::info!(address = %http_address, "metrics and health listening");
            println!("portcullis-control-plane http listening on {http_address}");
        }
        // Tests and scripts wait for this exact line to know the port.
        println!("portcullis-control-plane listening on {address}");
        let _ = std::io::stdout().flush();
        match control_plane
            .serve_with_http(listener, http_listener, shutdown_signal())
            .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(1)
            }
        }
    })
}

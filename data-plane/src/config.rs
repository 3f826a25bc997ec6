//! Node configuration in two steps: [`RawNodeConfig`] holds what the command line and the
//! environment said, as unchecked strings; [`RawNodeConfig::validate`] turns it into a
//! [`NodeConfig`] or reports every bad field at once. The environment is read through the
//! [`Strings`] trait, so tests pass a map instead of mutating the process environment.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use portcullis_shared::crypto::AeadKey;
use portcullis_shared::names::check_header_value;
use portcullis_shared::secret::SecretValue;
use portcullis_shared::validate::ValidationErrors;
use url::Url;

use crate::oauth::OAuthSettings;

/// The exit code for a configuration the node refuses to start with (sysexits `EX_USAGE`).
pub const EXIT_CODE_BAD_CONFIG: i32 = 64;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: usize = 4 * 1024 * 1024;
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_UPSTREAM_FIRST_BYTE_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT_SECS: u64 = 300;
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 20;
pub use crate::oauth::DEFAULT_ACCESS_TOKEN_LIFETIME_SECS;
pub const MAX_ACCESS_TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

/// Environment variable names, one per setting. A flag wins over its variable.
pub mod env {
    pub const NODE_ID: &str = "PORTCULLIS_NODE_ID";
    pub const LISTEN: &str = "PORTCULLIS_NODE_LISTEN";
    pub const PUBLIC_URL: &str = "PORTCULLIS_NODE_PUBLIC_URL";
    pub const CONTROL_PLANE: &str = "PORTCULLIS_CONTROL_PLANE";
    pub const CONTROL_PLANE_CA_FILE: &str = "PORTCULLIS_CONTROL_PLANE_CA_FILE";
    pub const CONTROL_PLANE_CLIENT_CERT_FILE: &str = "PORTCULLIS_CONTROL_PLANE_CLIENT_CERT_FILE";
    pub const CONTROL_PLANE_CLIENT_KEY_FILE: &str = "PORTCULLIS_CONTROL_PLANE_CLIENT_KEY_FILE";
    pub const TLS_CERT_FILE: &str = "PORTCULLIS_NODE_TLS_CERT_FILE";
    pub const TLS_KEY_FILE: &str = "PORTCULLIS_NODE_TLS_KEY_FILE";
    pub const ADMIN_TLS: &str = "PORTCULLIS_NODE_ADMIN_TLS";
    pub const NODE_TOKEN_FILE: &str = "PORTCULLIS_NODE_TOKEN_FILE";
    /// The node token itself, for platforms that inject secrets as variables.
    pub const NODE_TOKEN: &str = "PORTCULLIS_NODE_TOKEN";
    pub const STATE_DIR: &str = "PORTCULLIS_NODE_STATE_DIR";
    pub const STATE_KEY_FILE: &str = "PORTCULLIS_NODE_STATE_KEY_FILE";
    /// The state key itself (base64 or hex of 32 bytes).
    pub const STATE_KEY: &str = "PORTCULLIS_NODE_STATE_KEY";
    pub const MAX_REQUEST_BODY_BYTES: &str = "PORTCULLIS_NODE_MAX_REQUEST_BODY_BYTES";
    pub const UPSTREAM_CONNECT_TIMEOUT_MS: &str = "PORTCULLIS_NODE_UPSTREAM_CONNECT_TIMEOUT_MS";
    pub const UPSTREAM_FIRST_BYTE_TIMEOUT_MS: &str =
        "PORTCULLIS_NODE_UPSTREAM_FIRST_BYTE_TIMEOUT_MS";
    pub const UPSTREAM_IDLE_TIMEOUT_SECS: &str = "PORTCULLIS_NODE_UPSTREAM_IDLE_TIMEOUT_SECS";
    pub const DRAIN_TIMEOUT_SECS: &str = "PORTCULLIS_NODE_DRAIN_TIMEOUT_SECS";
    pub const ALLOWED_UPSTREAM_HOSTS: &str = "PORTCULLIS_NODE_ALLOWED_UPSTREAM_HOSTS";
    pub const ACCESS_TOKEN_LIFETIME_SECS: &str = "PORTCULLIS_NODE_ACCESS_TOKEN_LIFETIME_SECS";
    pub const ALLOW_LOOPBACK_CLIENT_METADATA: &str =
        "PORTCULLIS_NODE_ALLOW_LOOPBACK_CLIENT_METADATA";
    pub const LOG_FORMAT: &str = "PORTCULLIS_LOG_FORMAT";
    pub const ADMIN_LISTEN: &str = "PORTCULLIS_NODE_ADMIN_LISTEN";
    /// The standard OpenTelemetry variable.
    pub const OTLP_ENDPOINT: &str = portcullis_shared::telemetry::OTLP_ENDPOINT_ENV;
    pub const AUDIT_SPOOL_DIR: &str = "PORTCULLIS_NODE_AUDIT_SPOOL_DIR";
    pub const AUDIT_SPOOL_MAX_BYTES: &str = "PORTCULLIS_NODE_AUDIT_SPOOL_MAX_BYTES";
    pub const AUDIT_SPOOL_FULL: &str = "PORTCULLIS_NODE_AUDIT_SPOOL_FULL";
    pub const AUDIT_FSYNC: &str = "PORTCULLIS_NODE_AUDIT_FSYNC";
    pub const AUDIT_FSYNC_INTERVAL_MS: &str = "PORTCULLIS_NODE_AUDIT_FSYNC_INTERVAL_MS";
    pub const RATE_LIMITS: &str = "PORTCULLIS_NODE_RATE_LIMITS";
    pub const RATE_LIMIT_REGISTER: &str = "PORTCULLIS_NODE_RATE_LIMIT_REGISTER";
    pub const RATE_LIMIT_TOKEN: &str = "PORTCULLIS_NODE_RATE_LIMIT_TOKEN";
    pub const RATE_LIMIT_BROWSER: &str = "PORTCULLIS_NODE_RATE_LIMIT_BROWSER";
    pub const RATE_LIMIT_MAX_CLIENTS: &str = "PORTCULLIS_NODE_RATE_LIMIT_MAX_CLIENTS";
    pub const TRUSTED_PROXIES: &str = "PORTCULLIS_NODE_TRUSTED_PROXIES";
}

/// A source of named strings: the process environment, or a map in tests.
pub trait Strings {
    fn get(&self, name: &str) -> Option<String>;
}

impl Strings for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

/// The real process environment. Non-UTF-8 values are treated as absent.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Strings for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// What the command line said. Every field is optional and unchecked here; numbers stay
/// strings so that one validation pass can report every bad value together.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "portcullis-node",
    version,
    about = "Portcullis data-plane node: an authentication gateway for MCP servers"
)]
pub struct RawNodeConfig {
    /// A stable id for this node, reported to the control plane [env: PORTCULLIS_NODE_ID]
    #[arg(long)]
    pub node_id: Option<String>,
    /// Address to listen on for MCP traffic [default: 127.0.0.1:7400] [env: PORTCULLIS_NODE_LISTEN]
    #[arg(long)]
    pub listen: Option<String>,
    /// The URL clients use to reach this node [default: http://<bound address>, https://
    /// with --tls-cert-file] [env: PORTCULLIS_NODE_PUBLIC_URL]
    #[arg(long)]
    pub public_url: Option<String>,
    /// PEM certificate chain of the MCP listener; with --tls-key-file the listener speaks
    /// TLS only (HTTP/2 and HTTP/1.1 by ALPN) [default: plaintext]
    /// [env: PORTCULLIS_NODE_TLS_CERT_FILE]
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file [env: PORTCULLIS_NODE_TLS_KEY_FILE]
    #[arg(long)]
    pub tls_key_file: Option<PathBuf>,
    /// Control plane URL for configuration snapshots [env: PORTCULLIS_CONTROL_PLANE]
    #[arg(long)]
    pub control_plane: Option<String>,
    /// PEM file with extra CA certificates for an https control plane
    /// [env: PORTCULLIS_CONTROL_PLANE_CA_FILE]
    #[arg(long)]
    pub control_plane_ca_file: Option<PathBuf>,
    /// PEM client certificate the node presents to an https control plane (mTLS; its common
    /// name must be the node id). Used by snapshot streaming, runtime calls and audit
    /// delivery [env: PORTCULLIS_CONTROL_PLANE_CLIENT_CERT_FILE]
    #[arg(long)]
    pub control_plane_client_cert_file: Option<PathBuf>,
    /// PEM private key of --control-plane-client-cert-file
    /// [env: PORTCULLIS_CONTROL_PLANE_CLIENT_KEY_FILE]
    #[arg(long)]
    pub control_plane_client_key_file: Option<PathBuf>,
    /// File holding the node token; optional with a client certificate [env:
    /// PORTCULLIS_NODE_TOKEN_FILE, or the token itself in PORTCULLIS_NODE_TOKEN]
    #[arg(long)]
    pub node_token_file: Option<PathBuf>,
    /// Directory for the encrypted last good snapshot [env: PORTCULLIS_NODE_STATE_DIR]
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// File holding the 32-byte state key, base64 or hex [env: PORTCULLIS_NODE_STATE_KEY_FILE,
    /// or the key itself in PORTCULLIS_NODE_STATE_KEY]
    #[arg(long)]
    pub state_key_file: Option<PathBuf>,
    /// Largest request body the node buffers [default: 4194304]
    /// [env: PORTCULLIS_NODE_MAX_REQUEST_BODY_BYTES]
    #[arg(long)]
    pub max_request_body_bytes: Option<String>,
    /// Upstream TCP/TLS connect timeout [default: 5000]
    /// [env: PORTCULLIS_NODE_UPSTREAM_CONNECT_TIMEOUT_MS]
    #[arg(long)]
    pub upstream_connect_timeout_ms: Option<String>,
    /// Time allowed until the upstream sends response headers [default: 60000]
    /// [env: PORTCULLIS_NODE_UPSTREAM_FIRST_BYTE_TIMEOUT_MS]
    #[arg(long)]
    pub upstream_first_byte_timeout_ms: Option<String>,
    /// Longest silence inside a streamed upstream response [default: 300]
    /// [env: PORTCULLIS_NODE_UPSTREAM_IDLE_TIMEOUT_SECS]
    #[arg(long)]
    pub upstream_idle_timeout_secs: Option<String>,
    /// Time given to open requests after a shutdown signal [default: 20]
    /// [env: PORTCULLIS_NODE_DRAIN_TIMEOUT_SECS]
    #[arg(long)]
    pub drain_timeout_secs: Option<String>,
    /// Log format: text or json [default: text] [env: PORTCULLIS_LOG_FORMAT]
    #[arg(long)]
    pub log_format: Option<String>,
    /// Upstream hosts snapshots may name, comma-separated: exact names or IP addresses, and
    /// `*.example.com` for every host under a domain [default: any host]
    /// [env: PORTCULLIS_NODE_ALLOWED_UPSTREAM_HOSTS]
    #[arg(long)]
    pub allowed_upstream_hosts: Option<String>,
    /// Lifetime of the access tokens Interactive SSO issues, 60 to 86400 [default: 600]
    /// [env: PORTCULLIS_NODE_ACCESS_TOKEN_LIFETIME_SECS]
    #[arg(long)]
    pub access_token_lifetime_secs: Option<String>,
    /// Fetch Client ID Metadata Documents from loopback and private addresses, and over http
    /// on loopback. For tests only: it lets any client make the node fetch internal URLs
    /// [env: PORTCULLIS_NODE_ALLOW_LOOPBACK_CLIENT_METADATA=true]
    #[arg(long)]
    pub allow_loopback_client_metadata: bool,
    /// Address of the admin listener: /metrics, /healthz, /readyz for the operator, kept
    /// off the public listener [default: none] [env: PORTCULLIS_NODE_ADMIN_LISTEN]
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// TLS on the admin listener, with the MCP listener's certificate: auto (TLS when the
    /// MCP listener has TLS, except on a loopback address), on, or off [default: auto]
    /// [env: PORTCULLIS_NODE_ADMIN_TLS]
    #[arg(long)]
    pub admin_tls: Option<String>,
    /// Export traces over OTLP/gRPC to this endpoint, e.g. http://127.0.0.1:4317
    /// [default: no export] [env: OTEL_EXPORTER_OTLP_ENDPOINT]
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// Directory of the audit spool [default: <state-dir>/audit-spool]
    /// [env: PORTCULLIS_NODE_AUDIT_SPOOL_DIR]
    #[arg(long)]
    pub audit_spool_dir: Option<PathBuf>,
    /// Bound of undelivered audit events on disk, at least 65536 [default: 1073741824]
    /// [env: PORTCULLIS_NODE_AUDIT_SPOOL_MAX_BYTES]
    #[arg(long)]
    pub audit_spool_max_bytes: Option<String>,
    /// When the audit spool is full: refuse (new requests get 503) or drop (events are
    /// dropped and counted) [default: refuse] [env: PORTCULLIS_NODE_AUDIT_SPOOL_FULL]
    #[arg(long)]
    pub audit_spool_full: Option<String>,
    /// always: a response completes only after its audit event is fsynced (group commit);
    /// interval: after it is written, with an fsync every --audit-fsync-interval-ms
    /// [default: always] [env: PORTCULLIS_NODE_AUDIT_FSYNC]
    #[arg(long)]
    pub audit_fsync: Option<String>,
    /// Period of the fsync under --audit-fsync interval [default: 100]
    /// [env: PORTCULLIS_NODE_AUDIT_FSYNC_INTERVAL_MS]
    #[arg(long)]
    pub audit_fsync_interval_ms: Option<String>,
    /// Per-client rate limits of the OAuth and account-linking endpoints: on, or off (load
    /// tests) [default: on] [env: PORTCULLIS_NODE_RATE_LIMITS]
    #[arg(long)]
    pub rate_limits: Option<String>,
    /// Budget of /oauth/register per client address, <count>/<s|m|h>[,burst=<n>] or off
    /// [default: 60/h,burst=20] [env: PORTCULLIS_NODE_RATE_LIMIT_REGISTER]
    #[arg(long)]
    pub rate_limit_register: Option<String>,
    /// Budget of /oauth/token and /oauth/revoke per client address
    /// [default: 600/m,burst=120] [env: PORTCULLIS_NODE_RATE_LIMIT_TOKEN]
    #[arg(long)]
    pub rate_limit_token: Option<String>,
    /// Budget of the browser routes (/oauth/authorize, /oauth/callback, /connect/..., /me/...)
    /// per client address [default: 120/m,burst=60] [env: PORTCULLIS_NODE_RATE_LIMIT_BROWSER]
    #[arg(long)]
    pub rate_limit_browser: Option<String>,
    /// Client addresses each budget tracks at most (memory bound) [default: 65536]
    /// [env: PORTCULLIS_NODE_RATE_LIMIT_MAX_CLIENTS]
    #[arg(long)]
    pub rate_limit_max_clients: Option<String>,
    /// Proxies whose X-Forwarded-For names the client, comma-separated addresses or networks
    /// (10.0.0.0/8) [default: none: the socket's peer is the client]
    /// [env: PORTCULLIS_NODE_TRUSTED_PROXIES]
    #[arg(long)]
    pub trusted_proxies: Option<String>,
}

/// How log lines are written (always to stderr; stdout carries only the listening lines).
pub use portcullis_shared::telemetry::LogFormat;

/// Where the node gets its configuration from, and how it proves who it is there: every
/// connection to the control plane (snapshot stream, runtime calls, audit delivery) is made
/// from this.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    pub url: Url,
    /// Extra trust anchors (PEM) for an https control plane.
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate for mTLS (https only).
    pub client_identity: Option<ClientIdentity>,
    /// Sent as a bearer token when set; `None` only with a client certificate.
    pub node_token: Option<SecretValue>,
}

impl ControlPlaneConfig {
    /// A control plane the node authenticates to with its token only.
    pub fn with_token(url: Url, node_token: SecretValue) -> Self {
        Self {
            url,
            ca_pem: None,
            client_identity: None,
            node_token: Some(node_token),
        }
    }
}

/// A client certificate chain and its private key, both PEM, checked to go together.
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: SecretValue,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity").finish_non_exhaustive()
    }
}

/// Whether the admin listener speaks TLS (`--admin-tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminTls {
    /// TLS when the MCP listener has TLS, unless the admin listener is bound to loopback.
    Auto,
    On,
    Off,
}

/// Limits of the proxy path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyLimits {
    pub max_request_body_bytes: usize,
    pub upstream_connect_timeout: Duration,
    pub upstream_first_byte_timeout: Duration,
    pub upstream_idle_timeout: Duration,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        Self {
            max_request_body_bytes: DEFAULT_MAX_REQUEST_BODY_BYTES,
            upstream_connect_timeout: Duration::from_millis(DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS),
            upstream_first_byte_timeout: Duration::from_millis(
                DEFAULT_UPSTREAM_FIRST_BYTE_TIMEOUT_MS,
            ),
            upstream_idle_timeout: Duration::from_secs(DEFAULT_UPSTREAM_IDLE_TIMEOUT_SECS),
        }
    }
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: String,
    pub listen: SocketAddr,
    /// `None`: derived from the bound address once the listener is open.
    pub public_url: Option<Url>,
    /// TLS of the MCP listener; `None`: plaintext.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub control_plane: ControlPlaneConfig,
    pub state_dir: PathBuf,
    pub state_key: Arc<AeadKey>,
    pub limits: ProxyLimits,
    pub drain_timeout: Duration,
    pub log_format: LogFormat,
    pub allowed_upstream_hosts: UpstreamHostAllowlist,
    /// Interactive SSO: the authorization server's settings.
    pub oauth: OAuthSettings,
    /// `/metrics`, `/healthz`, `/readyz` for the operator; `None`: not served.
    pub admin_listen: Option<SocketAddr>,
    /// Whether the admin listener uses the MCP listener's TLS (resolved from `--admin-tls`).
    pub admin_tls: bool,
    /// Where traces go (OTLP/gRPC); `None`: not exported.
    pub otlp_endpoint: Option<Url>,
    pub audit: AuditSettings,
    /// Per-client budgets of the OAuth and account-linking endpoints.
    pub rate_limits: crate::rate_limit::RateLimitSettings,
}

/// The audit spool's settings (see `crate::audit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// `None`: `<state-dir>/audit-spool`.
    pub spool_dir: Option<PathBuf>,
    pub spool_max_bytes: u64,
    pub when_full: crate::audit::FullPolicy,
    pub fsync: crate::audit::FsyncPolicy,
}

pub const DEFAULT_AUDIT_SPOOL_MAX_BYTES: u64 = 1024 * 1024 * 1024;
pub const DEFAULT_AUDIT_FSYNC_INTERVAL_MS: u64 = 100;

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            spool_dir: None,
            spool_max_bytes: DEFAULT_AUDIT_SPOOL_MAX_BYTES,
            when_full: crate::audit::FullPolicy::Refuse,
            fsync: crate::audit::FsyncPolicy::Always,
        }
    }
}

impl AuditSettings {
    /// The spool folder for a node whose state lives in `state_dir`.
    pub fn spool_dir(&self, state_dir: &Path) -> PathBuf {
        self.spool_dir
            .clone()
            .unwrap_or_else(|| state_dir.join("audit-spool"))
    }
}

/// The upstream hosts this node proxies to: a guard against server-side request forgery by
/// whoever can write configuration. A snapshot naming any other host does not compile on
/// this node, so it is NACKed and the node keeps serving the previous one.
///
/// Hosts are compared as written in the upstream URL (case-insensitively, IP addresses in
/// canonical form); names are not resolved, so pair a name list with network policy if a
/// name could resolve to an internal address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum UpstreamHostAllowlist {
    /// No restriction (the default).
    #[default]
    Any,
    /// Only hosts matching one of these patterns.
    Only(Vec<HostPattern>),
}

/// One entry of an [`UpstreamHostAllowlist`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// This host name (lowercase, no trailing dot).
    Name(String),
    /// This IP address.
    Address(IpAddr),
    /// Every host name strictly under this domain (`*.svc.cluster.local` matches
    /// `a.svc.cluster.local` and `a.b.svc.cluster.local`, not `svc.cluster.local`).
    Subdomains(String),
}

/// Lowercase, without IPv6 brackets or a trailing dot, so spellings compare equal.
fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let host = host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host);
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Letters, digits, `-` and `_` in non-empty dot-separated labels.
fn check_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".to_owned());
    }
    if name.split('.').any(|label| {
        label.is_empty()
            || !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }) {
        return Err(
            "is not a host name (letters, digits, '-', '_' in dot-separated labels; no port)"
                .to_owned(),
        );
    }
    Ok(())
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let normalized = normalize_host(text);
        if let Ok(address) = normalized.parse::<IpAddr>() {
            return Ok(Self::Address(address));
        }
        if let Some(domain) = normalized.strip_prefix("*.") {
            check_host_name(domain).map_err(|message| format!("{text:?}: domain {message}"))?;
            return Ok(Self::Subdomains(domain.to_owned()));
        }
        if normalized.contains('*') {
            return Err(format!(
                "{text:?}: a wildcard must be the whole first label, as in *.example.com"
            ));
        }
        check_host_name(&normalized).map_err(|message| format!("{text:?} {message}"))?;
        Ok(Self::Name(normalized))
    }

    fn matches(&self, host: &str, address: Option<IpAddr>) -> bool {
        match self {
            Self::Name(name) => address.is_none() && host == name,
            Self::Address(allowed) => address == Some(*allowed),
            Self::Subdomains(domain) => {
                address.is_none()
                    && host.len() > domain.len() + 1
                    && host.ends_with(domain.as_str())
                    && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
            }
        }
    }
}

impl UpstreamHostAllowlist {
    /// Parses a comma-separated list; `*` alone allows any host.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut patterns = Vec::new();
        let mut problems = Vec::new();
        for entry in text.split(',').map(str::trim) {
            if entry.is_empty() {
                problems.push("empty entry".to_owned());
            } else if entry == "*" {
                return Ok(Self::Any);
            } else {
                match HostPattern::parse(entry) {
                    Ok(pattern) => patterns.push(pattern),
                    Err(message) => problems.push(message),
                }
            }
        }
        if problems.is_empty() {
            Ok(Self::Only(patterns))
        } else {
            Err(problems.join("; "))
        }
    }

    /// Whether `host` (as `Url::host_str` gives it: IPv6 in brackets) may be an upstream.
    pub fn allows(&self, host: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Only(patterns) => {
                let host = normalize_host(host);
                let address = host.parse::<IpAddr>().ok();
                patterns
                    .iter()
                    .any(|pattern| pattern.matches(&host, address))
            }
        }
    }
}

/// Node ids travel in logs, audit records and fleet status: keep them plain.
fn check_node_id(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if value.len() > 128 {
        return Err("must be at most 128 characters".to_owned());
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err("use letters, digits, '-', '_' and '.'".to_owned());
    }
    Ok(())
}

fn parse_http_url(value: &str, allow_path: bool) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|error| format!("not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("scheme must be http or https".to_owned());
    }
    if url.host_str().is_none() {
        return Err("missing host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a username or password".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not carry a query or fragment".to_owned());
    }
    if !allow_path && url.path() != "/" {
        return Err("must not carry a path".to_owned());
    }
    Ok(url)
}

fn read_small_file(path: &Path) -> Result<String, String> {
    const MAX_FILE_BYTES: u64 = 64 * 1024;
    let metadata = std::fs::metadata(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    if metadata.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{} is larger than {MAX_FILE_BYTES} bytes",
            path.display()
        ));
    }
    std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))
}

/// Reads a certificate file and its key file, reporting each unreadable one.
fn read_key_pair(
    errors: &mut ValidationErrors,
    (cert_field, cert_path): (&str, &Path),
    (key_field, key_path): (&str, &Path),
) -> Option<(Vec<u8>, Vec<u8>)> {
    let cert = read_small_file(cert_path)
        .map_err(|message| errors.push(cert_field, message))
        .ok();
    let key = read_small_file(key_path)
        .map_err(|message| errors.push(key_field, message))
        .ok();
    Some((cert?.into_bytes(), key?.into_bytes()))
}

/// Reports a certificate and key pair that does not load on the field of the file at fault.
fn push_key_pair_error(
    errors: &mut ValidationErrors,
    error: crate::tls::KeyPairError,
    (cert_field, cert_path): (&str, &Path),
    (key_field, key_path): (&str, &Path),
) {
    use crate::tls::KeyPairError;
    match error {
        KeyPairError::Certificate(message) => {
            errors.push(cert_field, format!("{} {message}", cert_path.display()));
        }
        KeyPairError::Key(message) => {
            errors.push(key_field, format!("{} {message}", key_path.display()));
        }
        KeyPairError::Pair(message) => errors.push(
            key_field,
            format!(
                "{} and {} {message}",
                cert_path.display(),
                key_path.display()
            ),
        ),
    }
}

fn parse_number<T>(
    errors: &mut ValidationErrors,
    field: &str,
    value: Option<String>,
    default: T,
    minimum: T,
) -> T
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let Some(value) = value else {
        return default;
    };
    match value.trim().parse::<T>() {
        Ok(number) if number >= minimum => number,
        Ok(_) => {
            errors.push(field, format!("must be at least {minimum}"));
            default
        }
        Err(_) => {
            errors.push(field, format!("not a whole number: {value:?}"));
            default
        }
    }
}

impl RawNodeConfig {
    /// Checks every field, filling unset ones from `env`, and reports every problem at once.
    /// Reads the token, key and CA files it names.
    pub fn validate(self, env: &impl Strings) -> Result<NodeConfig, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let pick = |flag: Option<String>, name: &str| flag.or_else(|| env.get(name));
        let pick_path =
            |flag: Option<PathBuf>, name: &str| flag.or_else(|| env.get(name).map(PathBuf::from));

        let node_id = match pick(self.node_id, env::NODE_ID) {
            Some(node_id) => {
                if let Err(message) = check_node_id(&node_id) {
                    errors.push("node_id", message);
                }
                node_id
            }
            None => {
                errors.push("node_id", "required: --node-id or PORTCULLIS_NODE_ID");
                String::new()
            }
        };

        let listen_text =
            pick(self.listen, env::LISTEN).unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = match listen_text.parse::<SocketAddr>() {
            Ok(listen) => Some(listen),
            Err(_) => {
                errors.push("listen", format!("not an ip:port address: {listen_text:?}"));
                None
            }
        };

        let public_url = pick(self.public_url, env::PUBLIC_URL).and_then(|value| {
            parse_http_url(&value, true)
                .map_err(|message| errors.push("public_url", message))
                .ok()
        });

        let control_plane_url = match pick(self.control_plane, env::CONTROL_PLANE) {
            Some(value) => parse_http_url(&value, false)
                .map_err(|message| errors.push("control_plane", message))
                .ok(),
            None => {
                errors.push(
                    "control_plane",
                    "required: --control-plane or PORTCULLIS_CONTROL_PLANE",
                );
                None
            }
        };

        let ca_pem =
            pick_path(self.control_plane_ca_file, env::CONTROL_PLANE_CA_FILE).and_then(|path| {
                match std::fs::read(&path) {
                    Ok(pem) => Some(pem),
                    Err(error) => {
                        errors.push(
                            "control_plane_ca_file",
                            format!("cannot read {}: {error}", path.display()),
                        );
                        None
                    }
                }
            });

        let client_cert_file = pick_path(
            self.control_plane_client_cert_file,
            env::CONTROL_PLANE_CLIENT_CERT_FILE,
        );
        let client_key_file = pick_path(
            self.control_plane_client_key_file,
            env::CONTROL_PLANE_CLIENT_KEY_FILE,
        );
        let has_client_certificate = client_cert_file.is_some() || client_key_file.is_some();
        let client_identity = match (client_cert_file, client_key_file) {
            (None, None) => None,
            (Some(_), None) => {
                errors.push(
                    "control_plane_client_key_file",
                    "required with --control-plane-client-cert-file: \
                     --control-plane-client-key-file or PORTCULLIS_CONTROL_PLANE_CLIENT_KEY_FILE",
                );
                None
            }
            (None, Some(_)) => {
                errors.push(
                    "control_plane_client_cert_file",
                    "required with --control-plane-client-key-file: \
                     --control-plane-client-cert-file or PORTCULLIS_CONTROL_PLANE_CLIENT_CERT_FILE",
                );
                None
            }
            (Some(cert_path), Some(key_path)) => read_key_pair(
                &mut errors,
                ("control_plane_client_cert_file", &cert_path),
                ("control_plane_client_key_file", &key_path),
            )
            .and_then(|(cert_pem, key_pem)| {
                match crate::tls::check_client_identity(&cert_pem, &key_pem) {
                    Ok(()) => Some(ClientIdentity {
                        cert_pem,
                        key_pem: SecretValue::new(String::from_utf8_lossy(&key_pem)),
                    }),
                    Err(error) => {
                        push_key_pair_error(
                            &mut errors,
                            error,
                            ("control_plane_client_cert_file", &cert_path),
                            ("control_plane_client_key_file", &key_path),
                        );
                        None
                    }
                }
            }),
        };
        if has_client_certificate
            && let Some(url) = &control_plane_url
            && url.scheme() != "https"
        {
            errors.push(
                "control_plane_client_cert_file",
                format!(
                    "a client certificate needs an https control plane (mTLS runs over TLS), \
                     not {url}"
                ),
            );
        }

        let tls = match (
            pick_path(self.tls_cert_file, env::TLS_CERT_FILE),
            pick_path(self.tls_key_file, env::TLS_KEY_FILE),
        ) {
            (None, None) => None,
            (Some(_), None) => {
                errors.push(
                    "tls_key_file",
                    "required with --tls-cert-file: --tls-key-file or PORTCULLIS_NODE_TLS_KEY_FILE",
                );
                None
            }
            (None, Some(_)) => {
                errors.push(
                    "tls_cert_file",
                    "required with --tls-key-file: --tls-cert-file or PORTCULLIS_NODE_TLS_CERT_FILE",
                );
                None
            }
            (Some(cert_path), Some(key_path)) => read_key_pair(
                &mut errors,
                ("tls_cert_file", &cert_path),
                ("tls_key_file", &key_path),
            )
            .and_then(|(cert_pem, key_pem)| {
                match crate::tls::server_config(&cert_pem, &key_pem) {
                    Ok(config) => Some(config),
                    Err(error) => {
                        push_key_pair_error(
                            &mut errors,
                            error,
                            ("tls_cert_file", &cert_path),
                            ("tls_key_file", &key_path),
                        );
                        None
                    }
                }
            }),
        };

        let node_token_text = match pick_path(self.node_token_file, env::NODE_TOKEN_FILE) {
            Some(path) => read_small_file(&path)
                .map_err(|message| errors.push("node_token_file", message))
                .ok(),
            None => match env.get(env::NODE_TOKEN) {
                Some(token) => Some(token),
                // With mTLS the certificate names the node; a token is optional.
                None if has_client_certificate => None,
                None => {
                    errors.push(
                        "node_token",
                        "required without a client certificate: --node-token-file, \
                         PORTCULLIS_NODE_TOKEN_FILE or PORTCULLIS_NODE_TOKEN",
                    );
                    None
                }
            },
        };

        let node_token = node_token_text.and_then(|text| {
            let token = text.trim();
            if token.is_empty() {
                errors.push("node_token", "is empty");
                None
            } else if check_header_value(token).is_err() {
                // The message names the rule, never the value.
                errors.push("node_token", "contains bytes that cannot go in a header");
                None
            } else {
                Some(SecretValue::new(token))
            }
        });

        let state_dir = pick_path(self.state_dir, env::STATE_DIR);
        if state_dir.is_none() {
            errors.push(
                "state_dir",
                "required: --state-dir or PORTCULLIS_NODE_STATE_DIR",
            );
        }

        let state_key_text = match pick_path(self.state_key_file, env::STATE_KEY_FILE) {
            Some(path) => read_small_file(&path)
                .map_err(|message| errors.push("state_key_file", message))
                .ok(),
            None => match env.get(env::STATE_KEY) {
                Some(text) => Some(text),
                None => {
                    errors.push(
                        "state_key",
                        "required: --state-key-file, PORTCULLIS_NODE_STATE_KEY_FILE or PORTCULLIS_NODE_STATE_KEY",
                    );
                    None
                }
            },
        };
        let state_key = state_key_text.and_then(|text| match AeadKey::from_text(&text) {
            Ok(key) => Some(Arc::new(key)),
            Err(error) => {
                errors.push("state_key", error.to_string());
                None
            }
        });

        let limits = ProxyLimits {
            max_request_body_bytes: parse_number(
                &mut errors,
                "max_request_body_bytes",
                pick(self.max_request_body_bytes, env::MAX_REQUEST_BODY_BYTES),
                DEFAULT_MAX_REQUEST_BODY_BYTES,
                1,
            ),
            upstream_connect_timeout: Duration::from_millis(parse_number(
                &mut errors,
                "upstream_connect_timeout_ms",
                pick(
                    self.upstream_connect_timeout_ms,
                    env::UPSTREAM_CONNECT_TIMEOUT_MS,
                ),
                DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS,
                1,
            )),
            upstream_first_byte_timeout: Duration::from_millis(parse_number(
                &mut errors,
                "upstream_first_byte_timeout_ms",
                pick(
                    self.upstream_first_byte_timeout_ms,
                    env::UPSTREAM_FIRST_BYTE_TIMEOUT_MS,
                ),
                DEFAULT_UPSTREAM_FIRST_BYTE_TIMEOUT_MS,
                1,
            )),
            upstream_idle_timeout: Duration::from_secs(parse_number(
                &mut errors,
                "upstream_idle_timeout_secs",
                pick(
                    self.upstream_idle_timeout_secs,
                    env::UPSTREAM_IDLE_TIMEOUT_SECS,
                ),
                DEFAULT_UPSTREAM_IDLE_TIMEOUT_SECS,
                1,
            )),
        };
        let drain_timeout = Duration::from_secs(parse_number(
            &mut errors,
            "drain_timeout_secs",
            pick(self.drain_timeout_secs, env::DRAIN_TIMEOUT_SECS),
            DEFAULT_DRAIN_TIMEOUT_SECS,
            0,
        ));

        let log_format = match pick(self.log_format, env::LOG_FORMAT) {
            None => LogFormat::Text,
            Some(text) => LogFormat::parse(&text).unwrap_or_else(|message| {
                errors.push("log_format", message);
                LogFormat::Text
            }),
        };
        let admin_listen = pick(self.admin_listen, env::ADMIN_LISTEN).and_then(|text| {
            text.parse::<SocketAddr>()
                .map_err(|_| {
                    errors.push("admin_listen", format!("not an ip:port address: {text:?}"))
                })
                .ok()
        });
        let admin_tls_mode = match pick(self.admin_tls, env::ADMIN_TLS).as_deref() {
            None | Some("auto") => AdminTls::Auto,
            Some("on") => AdminTls::On,
            Some("off") => AdminTls::Off,
            Some(other) => {
                errors.push(
                    "admin_tls",
                    format!("must be auto, on or off, got {other:?}"),
                );
                AdminTls::Auto
            }
        };
        let admin_tls = match admin_tls_mode {
            AdminTls::Off => false,
            AdminTls::Auto => {
                tls.is_some() && admin_listen.is_some_and(|address| !address.ip().is_loopback())
            }
            AdminTls::On => {
                if tls.is_none() {
                    errors.push(
                        "admin_tls",
                        "on needs the MCP listener's certificate: --tls-cert-file and --tls-key-file",
                    );
                }
                true
            }
        };
        let otlp_endpoint = pick(self.otlp_endpoint, env::OTLP_ENDPOINT)
            .filter(|text| !text.trim().is_empty())
            .and_then(|text| {
                portcullis_shared::telemetry::parse_otlp_endpoint(&text)
                    .map_err(|message| errors.push("otlp_endpoint", message))
                    .ok()
            });
        let audit = {
            use crate::audit::{FsyncPolicy, FullPolicy};
            let spool_max_bytes = parse_number(
                &mut errors,
                "audit_spool_max_bytes",
                pick(self.audit_spool_max_bytes, env::AUDIT_SPOOL_MAX_BYTES),
                DEFAULT_AUDIT_SPOOL_MAX_BYTES,
                crate::audit::spool::MIN_MAX_BYTES,
            );
            let when_full = match pick(self.audit_spool_full, env::AUDIT_SPOOL_FULL).as_deref() {
                None | Some("refuse") => FullPolicy::Refuse,
                Some("drop") => FullPolicy::Drop,
                Some(other) => {
                    errors.push(
                        "audit_spool_full",
                        format!("must be refuse or drop, got {other:?}"),
                    );
                    FullPolicy::Refuse
                }
            };
            let interval_ms = parse_number(
                &mut errors,
                "audit_fsync_interval_ms",
                pick(self.audit_fsync_interval_ms, env::AUDIT_FSYNC_INTERVAL_MS),
                DEFAULT_AUDIT_FSYNC_INTERVAL_MS,
                1,
            );
            let fsync = match pick(self.audit_fsync, env::AUDIT_FSYNC).as_deref() {
                None | Some("always") => FsyncPolicy::Always,
                Some("interval") => FsyncPolicy::Interval(Duration::from_millis(interval_ms)),
                Some(other) => {
                    errors.push(
                        "audit_fsync",
                        format!("must be always or interval, got {other:?}"),
                    );
                    FsyncPolicy::Always
                }
            };
            AuditSettings {
                spool_dir: pick_path(self.audit_spool_dir, env::AUDIT_SPOOL_DIR),
                spool_max_bytes,
                when_full,
                fsync,
            }
        };

        let rate_limits = {
            use crate::rate_limit::{Rate, RateLimitSettings, TrustedProxies};
            let defaults = RateLimitSettings::default();
            let enabled = match pick(self.rate_limits, env::RATE_LIMITS).as_deref() {
                None | Some("on") => true,
                Some("off") => false,
                Some(other) => {
                    errors.push("rate_limits", format!("must be on or off, got {other:?}"));
                    true
                }
            };
            let mut rate =
                |field: &str, flag: Option<String>, name: &str, default| match pick(flag, name) {
                    None => default,
                    Some(text) => Rate::parse(&text).unwrap_or_else(|message| {
                        errors.push(field, message);
                        default
                    }),
                };
            let register = rate(
                "rate_limit_register",
                self.rate_limit_register,
                env::RATE_LIMIT_REGISTER,
                defaults.register,
            );
            let token = rate(
                "rate_limit_token",
                self.rate_limit_token,
                env::RATE_LIMIT_TOKEN,
                defaults.token,
            );
            let browser = rate(
                "rate_limit_browser",
                self.rate_limit_browser,
                env::RATE_LIMIT_BROWSER,
                defaults.browser,
            );
            let max_tracked_clients = parse_number(
                &mut errors,
                "rate_limit_max_clients",
                pick(self.rate_limit_max_clients, env::RATE_LIMIT_MAX_CLIENTS),
                defaults.max_tracked_clients,
                64,
            );
            let trusted_proxies = match pick(self.trusted_proxies, env::TRUSTED_PROXIES) {
                None => TrustedProxies::default(),
                Some(text) => TrustedProxies::parse(&text).unwrap_or_else(|message| {
                    errors.push("trusted_proxies", message);
                    TrustedProxies::default()
                }),
            };
            RateLimitSettings {
                enabled,
                register,
                token,
                browser,
                max_tracked_clients,
                trusted_proxies,
            }
        };

        let allowed_upstream_hosts =
            match pick(self.allowed_upstream_hosts, env::ALLOWED_UPSTREAM_HOSTS) {
                None => UpstreamHostAllowlist::Any,
                Some(text) => UpstreamHostAllowlist::parse(&text).unwrap_or_else(|message| {
                    errors.push("allowed_upstream_hosts", message);
                    UpstreamHostAllowlist::Any
                }),
            };

        let access_token_lifetime_secs = parse_number(
            &mut errors,
            "access_token_lifetime_secs",
            pick(
                self.access_token_lifetime_secs,
                env::ACCESS_TOKEN_LIFETIME_SECS,
            ),
            DEFAULT_ACCESS_TOKEN_LIFETIME_SECS,
            60,
        );
        if access_token_lifetime_secs > MAX_ACCESS_TOKEN_LIFETIME_SECS {
            errors.push(
                "access_token_lifetime_secs",
                format!("must be at most {MAX_ACCESS_TOKEN_LIFETIME_SECS}"),
            );
        }
        let allow_loopback_client_metadata = self.allow_loopback_client_metadata
            || match env.get(env::ALLOW_LOOPBACK_CLIENT_METADATA).as_deref() {
                None | Some("" | "false" | "0") => false,
                Some("true" | "1") => true,
                Some(other) => {
                    errors.push(
                        "allow_loopback_client_metadata",
                        format!("must be true or false, got {other:?}"),
                    );
                    false
                }
            };
        let oauth = OAuthSettings {
            access_token_lifetime: Duration::from_secs(access_token_lifetime_secs),
            allow_loopback_client_metadata,
        };

        match (listen, control_plane_url, state_dir, state_key) {
            (Some(listen), Some(url), Some(state_dir), Some(state_key)) if errors.is_empty() => {
                Ok(NodeConfig {
                    node_id,
                    listen,
                    public_url,
                    tls,
                    control_plane: ControlPlaneConfig {
                        url,
                        ca_pem,
                        client_identity,
                        node_token,
                    },
                    state_dir,
                    state_key,
                    limits,
                    drain_timeout,
                    log_format,
                    allowed_upstream_hosts,
                    oauth,
                    admin_listen,
                    admin_tls,
                    otlp_endpoint,
                    audit,
                    rate_limits,
                })
            }
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_BASE64: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    fn complete_env() -> HashMap<String, String> {
        env(&[
            (env::NODE_ID, "node-1"),
            (env::CONTROL_PLANE, "http://127.0.0.1:7300"),
            (env::NODE_TOKEN, "token-abc\n"),
            (env::STATE_DIR, "/var/lib/portcullis"),
            (env::STATE_KEY, KEY_BASE64),
        ])
    }

    #[test]
    fn environment_fills_every_field_and_defaults_apply() {
        let config = RawNodeConfig::default().validate(&complete_env()).unwrap();
        assert_eq!(config.node_id, "node-1");
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(config.public_url, None);
        assert_eq!(
            config.control_plane.node_token.as_ref().unwrap().expose(),
            "token-abc"
        );
        assert_eq!(config.limits, ProxyLimits::default());
        assert_eq!(
            config.drain_timeout,
            Duration::from_secs(DEFAULT_DRAIN_TIMEOUT_SECS)
        );
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn flags_win_over_the_environment() {
        let raw = RawNodeConfig {
            node_id: Some("from-flag".to_owned()),
            listen: Some("127.0.0.1:0".to_owned()),
            max_request_body_bytes: Some("1024".to_owned()),
            ..RawNodeConfig::default()
        };
        let config = raw.validate(&complete_env()).unwrap();
        assert_eq!(config.node_id, "from-flag");
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.limits.max_request_body_bytes, 1024);
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let raw = RawNodeConfig {
            node_id: Some("bad id".to_owned()),
            listen: Some("nowhere".to_owned()),
            public_url: Some("ftp://x".to_owned()),
            control_plane: Some("http://cp:1/path".to_owned()),
            max_request_body_bytes: Some("lots".to_owned()),
            drain_timeout_secs: Some("-1".to_owned()),
            ..RawNodeConfig::default()
        };
        let errors = raw.validate(&HashMap::new()).unwrap_err();
        let fields: Vec<&str> = errors
            .violations
            .iter()
            .map(|violation| violation.field.as_str())
            .collect();
        assert_eq!(
            fields,
            [
                "node_id",
                "listen",
                "public_url",
                "control_plane",
                "node_token",
                "state_dir",
                "state_key",
                "max_request_body_bytes",
                "drain_timeout_secs"
            ]
        );
    }

    #[test]
    fn a_missing_or_bad_state_key_is_an_error_that_does_not_echo_the_key() {
        let mut without_key = complete_env();
        without_key.remove(env::STATE_KEY);
        let errors = RawNodeConfig::default().validate(&without_key).unwrap_err();
        assert_eq!(errors.violations[0].field, "state_key");

        let mut short_key = complete_env();
        short_key.insert(env::STATE_KEY.to_owned(), "c2VjcmV0LWtleQ==".to_owned());
        let errors = RawNodeConfig::default().validate(&short_key).unwrap_err();
        assert_eq!(errors.violations[0].field, "state_key");
        assert!(!errors.to_string().contains("c2VjcmV0LWtleQ"));
    }

    #[test]
    fn key_and_token_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("state.key");
        let token_path = dir.path().join("node.token");
        std::fs::write(&key_path, format!("{}\n", hex_key())).unwrap();
        std::fs::write(&token_path, "file-token\n").unwrap();
        let mut environment = complete_env();
        environment.remove(env::STATE_KEY);
        let raw = RawNodeConfig {
            state_key_file: Some(key_path),
            node_token_file: Some(token_path),
            ..RawNodeConfig::default()
        };
        let config = raw.validate(&environment).unwrap();
        assert_eq!(
            config.control_plane.node_token.as_ref().unwrap().expose(),
            "file-token"
        );

        let raw = RawNodeConfig {
            state_key_file: Some(dir.path().join("missing.key")),
            ..RawNodeConfig::default()
        };
        let errors = raw.validate(&environment).unwrap_err();
        assert_eq!(errors.violations[0].field, "state_key_file");
    }

    fn hex_key() -> String {
        "2a".repeat(32)
    }

    #[test]
    fn any_upstream_host_is_allowed_by_default() {
        let config = RawNodeConfig::default().validate(&complete_env()).unwrap();
        assert_eq!(config.allowed_upstream_hosts, UpstreamHostAllowlist::Any);
        assert!(config.allowed_upstream_hosts.allows("169.254.169.254"));
    }

    #[test]
    fn interactive_sso_settings_have_defaults_and_bounds() {
        let config = RawNodeConfig::default().validate(&complete_env()).unwrap();
        assert_eq!(config.oauth, OAuthSettings::default());
        let mut environment = complete_env();
        environment.insert(env::ACCESS_TOKEN_LIFETIME_SECS.to_owned(), "300".to_owned());
        environment.insert(
            env::ALLOW_LOOPBACK_CLIENT_METADATA.to_owned(),
            "true".to_owned(),
        );
        let config = RawNodeConfig::default().validate(&environment).unwrap();
        assert_eq!(config.oauth.access_token_lifetime, Duration::from_secs(300));
        assert!(config.oauth.allow_loopback_client_metadata);
        for bad in ["59", "86401", "soon"] {
            let raw = RawNodeConfig {
                access_token_lifetime_secs: Some(bad.to_owned()),
                ..RawNodeConfig::default()
            };
            let errors = raw.validate(&complete_env()).unwrap_err();
            assert_eq!(
                errors.violations[0].field, "access_token_lifetime_secs",
                "{bad}"
            );
        }
    }

    #[test]
    fn allowed_upstream_hosts_come_from_the_flag_or_the_environment() {
        let mut environment = complete_env();
        environment.insert(
            env::ALLOWED_UPSTREAM_HOSTS.to_owned(),
            "127.0.0.1, *.svc.cluster.local".to_owned(),
        );
        let config = RawNodeConfig::default().validate(&environment).unwrap();
        assert!(config.allowed_upstream_hosts.allows("127.0.0.1"));
        assert!(
            config
                .allowed_upstream_hosts
                .allows("mcp.svc.cluster.local")
        );
        assert!(!config.allowed_upstream_hosts.allows("example.com"));

        let raw = RawNodeConfig {
            allowed_upstream_hosts: Some("example.com".to_owned()),
            ..RawNodeConfig::default()
        };
        let config = raw.validate(&environment).unwrap();
        assert!(config.allowed_upstream_hosts.allows("example.com"));
        assert!(!config.allowed_upstream_hosts.allows("127.0.0.1"));
    }

    #[test]
    fn host_patterns_match_names_addresses_and_subdomains() {
        let allowlist =
            UpstreamHostAllowlist::parse("127.0.0.1,[::1],Api.Example.com.,*.svc.cluster.local")
                .unwrap();
        for allowed in [
            "127.0.0.1",
            "[::1]",
            "[0:0:0:0:0:0:0:1]",
            "api.example.com",
            "API.EXAMPLE.COM",
            "api.example.com.",
            "mcp.svc.cluster.local",
            "a.b.svc.cluster.local",
        ] {
            assert!(allowlist.allows(allowed), "{allowed} must be allowed");
        }
        for refused in [
            "127.0.0.2",
            "localhost",
            "[::2]",
            "example.com",
            "evil-api.example.com",
            "api.example.com.evil.net",
            "svc.cluster.local",
            "evilsvc.cluster.local",
            "mcp.svc.cluster.local.evil.net",
            "",
        ] {
            assert!(!allowlist.allows(refused), "{refused} must be refused");
        }
        assert!(
            UpstreamHostAllowlist::parse("*")
                .unwrap()
                .allows("anything.example")
        );
        assert!(
            UpstreamHostAllowlist::parse("a.example, *")
                .unwrap()
                .allows("b.example")
        );
        // A wildcard domain never matches an IP address that happens to end like it.
        let numeric = UpstreamHostAllowlist::parse("*.0.1").unwrap();
        assert!(!numeric.allows("127.0.0.1"));
    }

    #[test]
    fn bad_host_patterns_are_all_reported() {
        let error =
            UpstreamHostAllowlist::parse("a.example,, api.*.example, host:8080, *.").unwrap_err();
        assert!(error.contains("empty entry"), "{error}");
        assert!(error.contains("\"api.*.example\": a wildcard"), "{error}");
        assert!(error.contains("\"host:8080\""), "{error}");
        assert!(error.contains("\"*.\": a wildcard"), "{error}");

        let mut environment = complete_env();
        environment.insert(env::ALLOWED_UPSTREAM_HOSTS.to_owned(), " ".to_owned());
        let errors = RawNodeConfig::default().validate(&environment).unwrap_err();
        assert_eq!(errors.violations[0].field, "allowed_upstream_hosts");
    }

    #[test]
    fn rate_limits_have_defaults_an_off_switch_and_checked_values() {
        use crate::rate_limit::{Rate, RateLimitSettings};
        let config = RawNodeConfig::default().validate(&complete_env()).unwrap();
        assert_eq!(config.rate_limits, RateLimitSettings::default());
        assert!(config.rate_limits.enabled);
        assert!(config.rate_limits.trusted_proxies.is_empty());

        let mut environment = complete_env();
        environment.insert(env::RATE_LIMITS.to_owned(), "off".to_owned());
        environment.insert(env::RATE_LIMIT_TOKEN.to_owned(), "off".to_owned());
        environment.insert(env::TRUSTED_PROXIES.to_owned(), "10.0.0.0/8".to_owned());
        let raw = RawNodeConfig {
            rate_limit_register: Some("5/m,burst=2".to_owned()),
            ..RawNodeConfig::default()
        };
        let config = raw.validate(&environment).unwrap();
        assert!(!config.rate_limits.enabled);
        assert_eq!(config.rate_limits.token, None);
        assert_eq!(
            config.rate_limits.register,
            Some(Rate::new(5, Duration::from_secs(60), 2))
        );
        assert!(!config.rate_limits.trusted_proxies.is_empty());

        let raw = RawNodeConfig {
            rate_limits: Some("maybe".to_owned()),
            rate_limit_register: Some("5 per minute".to_owned()),
            rate_limit_browser: Some("0/s".to_owned()),
            rate_limit_max_clients: Some("10".to_owned()),
            trusted_proxies: Some("proxy.internal".to_owned()),
            ..RawNodeConfig::default()
        };
        let errors = raw.validate(&complete_env()).unwrap_err();
        let fields: Vec<&str> = errors
            .violations
            .iter()
            .map(|violation| violation.field.as_str())
            .collect();
        assert_eq!(
            fields,
            [
                "rate_limits",
                "rate_limit_register",
                "rate_limit_browser",
                "rate_limit_max_clients",
                "trusted_proxies"
            ]
        );
    }

    /// A certificate and its key in `dir` (`<name>.pem`, `<name>.key`), and a foreign key.
    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let certified = rcgen::generate_simple_self_signed(vec!["node-1".to_owned()]).unwrap();
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        let foreign = dir.join(format!("{name}-foreign.key"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        std::fs::write(
            &foreign,
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        (cert, key, foreign)
    }

    fn fields(errors: &ValidationErrors) -> Vec<&str> {
        errors
            .violations
            .iter()
            .map(|violation| violation.field.as_str())
            .collect()
    }

    fn https_env() -> HashMap<String, String> {
        let mut environment = complete_env();
        environment.insert(
            env::CONTROL_PLANE.to_owned(),
            "https://control-plane.internal:7300".to_owned(),
        );
        environment
    }

    #[test]
    fn a_client_certificate_replaces_the_node_token() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = write_pair(dir.path(), "node");
        let mut environment = https_env();
        environment.remove(env::NODE_TOKEN);
        environment.insert(
            env::CONTROL_PLANE_CLIENT_CERT_FILE.to_owned(),
            cert.display().to_string(),
        );
        let raw = RawNodeConfig {
            control_plane_client_key_file: Some(key),
            ..RawNodeConfig::default()
        };
        let config = raw.validate(&environment).unwrap();
        assert!(config.control_plane.client_identity.is_some());
        assert!(config.control_plane.node_token.is_none());
        assert!(!format!("{config:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn client_certificate_problems_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, foreign) = write_pair(dir.path(), "node");
        let check = |raw: RawNodeConfig, environment: &HashMap<String, String>| {
            let errors = raw.validate(environment).unwrap_err();
            (
                fields(&errors).iter().map(|f| (*f).to_owned()).collect(),
                errors.to_string(),
            )
        };
        let (fields_, _): (Vec<String>, _) = check(
            RawNodeConfig {
                control_plane_client_cert_file: Some(cert.clone()),
                ..RawNodeConfig::default()
            },
            &https_env(),
        );
        assert_eq!(fields_, ["control_plane_client_key_file"]);
        let (fields_, _) = check(
            RawNodeConfig {
                control_plane_client_key_file: Some(key.clone()),
                ..RawNodeConfig::default()
            },
            &https_env(),
        );
        assert_eq!(fields_, ["control_plane_client_cert_file"]);
        let (fields_, message) = check(
            RawNodeConfig {
                control_plane_client_cert_file: Some(dir.path().join("missing.pem")),
                control_plane_client_key_file: Some(key.clone()),
                ..RawNodeConfig::default()
            },
            &https_env(),
        );
        assert_eq!(fields_, ["control_plane_client_cert_file"]);
        assert!(message.contains("cannot read"), "{message}");
        let (fields_, message) = check(
            RawNodeConfig {
                control_plane_client_cert_file: Some(cert.clone()),
                control_plane_client_key_file: Some(key.clone()),
                ..RawNodeConfig::default()
            },
            &complete_env(),
        );
        assert_eq!(fields_, ["control_plane_client_cert_file"]);
        assert!(message.contains("https"), "{message}");
        let (fields_, message) = check(
            RawNodeConfig {
                control_plane_client_cert_file: Some(cert.clone()),
                control_plane_client_key_file: Some(foreign),
                ..RawNodeConfig::default()
            },
            &https_env(),
        );
        assert_eq!(fields_, ["control_plane_client_key_file"]);
        assert!(message.contains("do not go together"), "{message}");
        assert!(!message.contains("PRIVATE KEY"), "{message}");
        let (fields_, _) = check(
            RawNodeConfig {
                control_plane_client_cert_file: Some(key.clone()),
                control_plane_client_key_file: Some(key),
                ..RawNodeConfig::default()
            },
            &https_env(),
        );
        assert_eq!(fields_, ["control_plane_client_cert_file"]);
    }

    #[test]
    fn listener_tls_and_the_admin_listener() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = write_pair(dir.path(), "server");
        let with_tls = |admin_listen: &str, admin_tls: Option<&str>| RawNodeConfig {
            tls_cert_file: Some(cert.clone()),
            tls_key_file: Some(key.clone()),
            admin_listen: Some(admin_listen.to_owned()),
            admin_tls: admin_tls.map(str::to_owned),
            ..RawNodeConfig::default()
        };
        let config = with_tls("127.0.0.1:0", None)
            .validate(&complete_env())
            .unwrap();
        assert!(config.tls.is_some());
        assert!(
            !config.admin_tls,
            "a loopback admin listener stays plaintext"
        );
        let config = with_tls("0.0.0.0:7401", None)
            .validate(&complete_env())
            .unwrap();
        assert!(config.admin_tls);
        let config = with_tls("0.0.0.0:7401", Some("off"))
            .validate(&complete_env())
            .unwrap();
        assert!(!config.admin_tls);
        let config = with_tls("127.0.0.1:0", Some("on"))
            .validate(&complete_env())
            .unwrap();
        assert!(config.admin_tls);

        let config = RawNodeConfig::default().validate(&complete_env()).unwrap();
        assert!(config.tls.is_none() && !config.admin_tls);
        let errors = RawNodeConfig {
            admin_tls: Some("on".to_owned()),
            ..RawNodeConfig::default()
        }
        .validate(&complete_env())
        .unwrap_err();
        assert_eq!(fields(&errors), ["admin_tls"]);
        let errors = RawNodeConfig {
            admin_tls: Some("maybe".to_owned()),
            ..RawNodeConfig::default()
        }
        .validate(&complete_env())
        .unwrap_err();
        assert_eq!(fields(&errors), ["admin_tls"]);
        let errors = RawNodeConfig {
            tls_cert_file: Some(cert),
            ..RawNodeConfig::default()
        }
        .validate(&complete_env())
        .unwrap_err();
        assert_eq!(fields(&errors), ["tls_key_file"]);
        let errors = RawNodeConfig {
            tls_cert_file: Some(dir.path().join("missing.pem")),
            tls_key_file: Some(key),
            ..RawNodeConfig::default()
        }
        .validate(&complete_env())
        .unwrap_err();
        assert_eq!(fields(&errors), ["tls_cert_file"]);
    }

    #[test]
    fn a_token_with_a_newline_inside_is_refused() {
        let mut environment = complete_env();
        environment.insert(env::NODE_TOKEN.to_owned(), "a\r\nx-evil: 1".to_owned());
        let errors = RawNodeConfig::default().validate(&environment).unwrap_err();
        assert_eq!(errors.violations[0].field, "node_token");
        assert!(!errors.to_string().contains("x-evil"));
    }
}

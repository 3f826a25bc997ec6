//! A whole Portcullis as real child processes: a control plane, data-plane nodes, and the
//! admin gRPC API to configure them.
//!
//! [`GatewayFiles`] holds what an installation keeps on disk (master key, access file with
//! token hashes, node token, node state keys, data and state folders) in one scratch folder,
//! so a process can be killed and started again on the same files. [`ControlPlane`] and
//! [`Node`] are the binaries started on loopback ports the OS chooses; [`AdminClient`] is the
//! generated gRPC client with the admin bearer token; [`Gateway`] puts them together.
//! [`DevCerts`] (from `portcullis-control-plane dev-certs`) and [`GatewayTls`] run the same
//! with TLS on the control plane's listener, mTLS for the nodes and TLS on the nodes'
//! listeners.
//!
//! Nothing here sleeps to synchronise: every wait polls an observable state (a node's
//! `/readyz`, the control plane's `FleetStatus`) until a deadline.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use portcullis_proto::v1 as proto;
use portcullis_proto::v1::admin_service_client::AdminServiceClient;
use portcullis_shared::crypto::{random_bytes, sha256_hex};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::paths;
use crate::process::{ChildProcess, scratch_dir};

/// How often a wait on a node or the fleet looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How long a change may take to reach the nodes in a test before the test fails.
pub const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(30);

fn random_hex<const N: usize>() -> anyhow::Result<String> {
    let bytes = random_bytes::<N>().context("no randomness for a test secret")?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

fn write_private_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))
}

/// The files of one installation: keys, tokens, data and state folders.
#[derive(Debug)]
pub struct GatewayFiles {
    folder: tempfile::TempDir,
    admin_token: String,
    auditor_token: String,
    node_token: String,
}

impl GatewayFiles {
    /// A fresh installation: random master key and tokens, an access file listing the
    /// tokens' SHA-256 with the roles admin, auditor and node.
    pub fn create() -> anyhow::Result<Arc<Self>> {
        let folder = scratch_dir("gateway")?;
        let files = Self {
            folder,
            admin_token: random_hex::<24>()?,
            auditor_token: random_hex::<24>()?,
            node_token: random_hex::<24>()?,
        };
        write_private_file(&files.master_key_file(), &random_hex::<32>()?)?;
        write_private_file(&files.node_token_file(), &files.node_token)?;
        let access = format!(
            "tokens:\n\
             \x20 - name: e2e-admin\n    role: admin\n    sha256: {}\n\
             \x20 - name: e2e-auditor\n    role: auditor\n    sha256: {}\n\
             \x20 - name: e2e-nodes\n    role: node\n    sha256: {}\n",
            sha256_hex(files.admin_token.as_bytes()),
            sha256_hex(files.auditor_token.as_bytes()),
            sha256_hex(files.node_token.as_bytes()),
        );
        write_private_file(&files.access_file(), &access)?;
        Ok(Arc::new(files))
    }

    pub fn folder(&self) -> &Path {
        self.folder.path()
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    pub fn auditor_token(&self) -> &str {
        &self.auditor_token
    }

    pub fn node_token(&self) -> &str {
        &self.node_token
    }

    pub fn master_key_file(&self) -> PathBuf {
        self.folder().join("master.key")
    }

    pub fn access_file(&self) -> PathBuf {
        self.folder().join("access.yaml")
    }

    pub fn node_token_file(&self) -> PathBuf {
        self.folder().join("node.token")
    }

    /// The control plane's data folder (its sled event log).
    pub fn control_plane_data_dir(&self) -> PathBuf {
        self.folder().join("control-plane")
    }

    /// A node's state folder (its sealed last good snapshot).
    pub fn node_state_dir(&self, node_id: &str) -> PathBuf {
        self.folder().join(format!("{node_id}-state"))
    }

    /// Development certificates in `<folder>/certs` for `node_ids` (see [`DevCerts`]).
    pub fn dev_certs(&self, node_ids: &[&str]) -> anyhow::Result<DevCerts> {
        DevCerts::create(&self.folder().join("certs"), node_ids)
    }

    /// A node's state key file, made on first use and kept for restarts.
    pub fn node_state_key_file(&self, node_id: &str) -> anyhow::Result<PathBuf> {
        let path = self.folder().join(format!("{node_id}-state.key"));
        if !path.exists() {
            write_private_file(&path, &random_hex::<32>()?)?;
        }
        Ok(path)
    }
}

/// What `portcullis-control-plane dev-certs` writes: a CA, a server certificate for
/// `127.0.0.1` and `localhost` (used by the control plane and by nodes' TLS listeners), and
/// a client certificate per node id (common name = node id).
#[derive(Debug, Clone)]
pub struct DevCerts {
    dir: PathBuf,
}

impl DevCerts {
    /// Runs `portcullis-control-plane dev-certs --out <dir> --node <id>...`.
    pub fn create(dir: &Path, node_ids: &[&str]) -> anyhow::Result<Self> {
        let output = Command::new(paths::workspace_binary("portcullis-control-plane")?)
            .arg("dev-certs")
            .arg("--out")
            .arg(dir)
            .args(node_ids.iter().flat_map(|id| ["--node", id]))
            .output()
            .context("cannot run portcullis-control-plane dev-certs")?;
        if !output.status.success() {
            bail!(
                "dev-certs failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    pub fn node_cert(&self, node_id: &str) -> PathBuf {
        self.dir.join(format!("node-{node_id}.pem"))
    }

    pub fn node_key(&self, node_id: &str) -> PathBuf {
        self.dir.join(format!("node-{node_id}.key"))
    }

    /// An HTTP client that trusts only the development CA.
    pub fn https_client(&self) -> anyhow::Result<reqwest::Client> {
        https_client(Some(&self.ca()))
    }
}

/// An HTTP client for the tests: trusting only `ca` when given.
pub fn https_client(ca: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        builder = builder.tls_certs_only([
            reqwest::Certificate::from_pem(&pem).context("the CA file is not PEM")?
        ]);
    }
    builder.build().context("cannot build an HTTP client")
}

/// The control plane could not bind the address it was asked to bind, because another
/// process holds it. Tests that need a fixed port restart their setup on this error.
#[derive(Debug)]
pub struct PortTaken {
    pub address: SocketAddr,
}

impl fmt::Display for PortTaken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is taken by another process", self.address)
    }
}

impl std::error::Error for PortTaken {}

/// `portcullis-control-plane` as a child process.
#[derive(Debug)]
pub struct ControlPlane {
    process: ChildProcess,
    files: Arc<GatewayFiles>,
    /// With TLS on its listener: the CA that signed its certificate.
    ca: Option<PathBuf>,
}

impl ControlPlane {
    /// Starts on a loopback port the OS chooses.
    pub async fn start(files: &Arc<GatewayFiles>) -> anyhow::Result<Self> {
        Self::start_listening_on(files, "127.0.0.1:0", &[]).await
    }

    /// Starts with TLS on its listener (the server certificate of `certs`), and with `mtls`
    /// nodes authenticating by client certificate (`--client-ca-file`).
    pub async fn start_tls(
        files: &Arc<GatewayFiles>,
        certs: &DevCerts,
        mtls: bool,
    ) -> anyhow::Result<Self> {
        let cert = certs.server_cert();
        let key = certs.server_key();
        let ca = certs.ca();
        let mut args = vec![
            "--tls-cert-file",
            path_str(&cert)?,
            "--tls-key-file",
            path_str(&key)?,
        ];
        if mtls {
            args.extend(["--client-ca-file", path_str(&ca)?]);
        }
        let mut control_plane = Self::start_listening_on(files, "127.0.0.1:0", &args).await?;
        control_plane.ca = Some(ca);
        Ok(control_plane)
    }

    /// Like [`Self::start`], with extra flags (e.g. `--http-listen 127.0.0.1:0`).
    pub async fn start_with_args(
        files: &Arc<GatewayFiles>,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_listening_on(files, "127.0.0.1:0", extra_args).await
    }

    /// Starts on `address`, e.g. the address of a previous run, so nodes that were given
    /// that URL find it again. Fails with [`PortTaken`] when another process holds it.
    pub async fn start_on(files: &Arc<GatewayFiles>, address: SocketAddr) -> anyhow::Result<Self> {
        Self::start_on_with_args(files, address, &[]).await
    }

    /// Like [`Self::start_on`], with extra flags.
    pub async fn start_on_with_args(
        files: &Arc<GatewayFiles>,
        address: SocketAddr,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_listening_on(files, &address.to_string(), extra_args)
            .await
            .map_err(|error| {
                let message = format!("{error:#}");
                if message.contains("Address already in use") || message.contains("AddrInUse") {
                    anyhow::Error::new(PortTaken { address }).context(message)
                } else {
                    error
                }
            })
    }

    async fn start_listening_on(
        files: &Arc<GatewayFiles>,
        listen: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let binary = "portcullis-control-plane";
        let mut command = Command::new(paths::workspace_binary(binary)?);
        command
            .arg("--data-dir")
            .arg(files.control_plane_data_dir())
            .arg("--listen")
            .arg(listen)
            .arg("--master-key-file")
            .arg(files.master_key_file())
            .arg("--access-file")
            .arg(files.access_file())
            .args(extra_args);
        let process =
            ChildProcess::start_listening(binary, command, &format!("{binary} listening on "))
                .await?;
        Ok(Self {
            process,
            files: files.clone(),
            ca: None,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.process.address()
    }

    /// The URL nodes and admin clients use, `http://127.0.0.1:<port>`, or `https://` with
    /// TLS.
    pub fn url(&self) -> String {
        match self.ca {
            None => self.process.http_url(""),
            Some(_) => format!("https://{}", self.address()),
        }
    }

    pub fn files(&self) -> &Arc<GatewayFiles> {
        &self.files
    }

    /// `http://<address>` of the HTTP listener (`--http-listen`), from its stdout line.
    pub fn http_url(&self) -> anyhow::Result<String> {
        listening_line_address(&self.process, "portcullis-control-plane http listening on ")
            .map(|address| format!("http://{address}"))
    }

    /// A connected admin client carrying the admin token (trusting the CA with TLS).
    pub async fn admin(&self) -> anyhow::Result<AdminClient> {
        admin_client_trusting(&self.url(), self.files.admin_token(), self.ca.as_deref()).await
    }

    /// SIGKILL: a crash, no chance to flush or say goodbye to the nodes.
    pub fn kill_hard(&mut self) -> anyhow::Result<()> {
        self.process.kill_hard()?;
        Ok(())
    }

    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    pub fn process_mut(&mut self) -> &mut ChildProcess {
        &mut self.process
    }
}

/// The address on a `<prefix><address>` stdout line the process printed before its main
/// listening line (so it is there once the process counts as started).
fn listening_line_address(process: &ChildProcess, prefix: &str) -> anyhow::Result<SocketAddr> {
    let stdout = process.stdout_text();
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .with_context(|| format!("{} printed no {prefix:?} line", process.name()))?;
    line.trim()
        .parse()
        .with_context(|| format!("{} printed an unparsable address {line:?}", process.name()))
}

/// Adds `authorization: Bearer <token>` to every admin request.
#[derive(Debug, Clone)]
pub struct BearerToken(MetadataValue<Ascii>);

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// The generated admin client with a bearer token on every call.
pub type AdminClient = AdminServiceClient<InterceptedService<Channel, BearerToken>>;

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Connects an admin client to `url` with `token`.
pub async fn admin_client(url: &str, token: &str) -> anyhow::Result<AdminClient> {
    admin_client_trusting(url, token, None).await
}

/// Connects an admin client to `url` with `token`, trusting `ca` for an https URL.
pub async fn admin_client_trusting(
    url: &str,
    token: &str,
    ca: Option<&Path>,
) -> anyhow::Result<AdminClient> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .context("invalid control plane URL")?
        .connect_timeout(Duration::from_secs(5));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        endpoint = endpoint
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            )
            .context("invalid TLS settings")?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to the control plane at {url}"))?;
    let mut bearer: MetadataValue<Ascii> = format!("Bearer {token}")
        .parse()
        .context("the token cannot go in gRPC metadata")?;
    bearer.set_sensitive(true);
    Ok(AdminServiceClient::with_interceptor(
        channel,
        BearerToken(bearer),
    ))
}

/// Polls `FleetStatus` until `condition` holds, and returns the reply that satisfied it.
/// On timeout the error names `what` and shows the last reply.
pub async fn wait_for_fleet(
    admin: &mut AdminClient,
    what: &str,
    timeout: Duration,
    condition: impl Fn(&proto::FleetStatusReply) -> bool,
) -> anyhow::Result<proto::FleetStatusReply> {
    let deadline = Instant::now() + timeout;
    loop {
        let reply = admin
            .fleet_status(proto::FleetStatusRequest {})
            .await
            .context("FleetStatus failed")?
            .into_inner();
        if condition(&reply) {
            return Ok(reply);
        }
        if Instant::now() >= deadline {
            bail!("fleet status did not show {what} within {timeout:?}; last reply: {reply:#?}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The fleet entry of `node_id`, if the control plane knows the node.
pub fn fleet_node<'a>(
    reply: &'a proto::FleetStatusReply,
    node_id: &str,
) -> Option<&'a proto::FleetNode> {
    reply.nodes.iter().find(|node| node.node_id == node_id)
}

/// TLS settings of a node (see [`Node::start_with_tls`]).
#[derive(Debug, Clone, Default)]
pub struct NodeTls {
    /// `--control-plane-ca-file`: the CA of an https control plane.
    pub control_plane_ca: Option<PathBuf>,
    /// `--control-plane-client-cert-file` and `--control-plane-client-key-file` (mTLS);
    /// the node token is then not passed at all.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
    /// `--tls-cert-file` and `--tls-key-file` of the MCP listener, and the CA clients trust
    /// it with.
    pub listener: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl NodeTls {
    /// From development certificates: the control plane's CA, with `mtls` the client
    /// certificate of `node_id`, with `listener_tls` the server certificate on the MCP
    /// listener.
    pub fn from_dev_certs(certs: &DevCerts, node_id: &str, mtls: bool, listener_tls: bool) -> Self {
        Self {
            control_plane_ca: Some(certs.ca()),
            client_certificate: mtls.then(|| (certs.node_cert(node_id), certs.node_key(node_id))),
            listener: listener_tls.then(|| (certs.server_cert(), certs.server_key(), certs.ca())),
        }
    }
}

/// `portcullis-node` as a child process.
#[derive(Debug)]
pub struct Node {
    process: ChildProcess,
    node_id: String,
    http: reqwest::Client,
    /// `http` or `https` (TLS on the MCP listener).
    scheme: &'static str,
}

impl Node {
    /// Starts node `node_id` on a loopback port the OS chooses, pointed at `control_plane_url`,
    /// with its state folder and key in `files` (so a restart with the same id finds its
    /// persisted snapshot). `extra_args` are further flags, e.g. `--allowed-upstream-hosts`.
    pub async fn start(
        files: &Arc<GatewayFiles>,
        node_id: &str,
        control_plane_url: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with_tls(
            files,
            node_id,
            control_plane_url,
            &NodeTls::default(),
            extra_args,
        )
        .await
    }

    /// Like [`Self::start`], with the TLS settings of `tls`.
    pub async fn start_with_tls(
        files: &Arc<GatewayFiles>,
        node_id: &str,
        control_plane_url: &str,
        tls: &NodeTls,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let binary = "portcullis-node";
        let mut command = Command::new(paths::workspace_binary(binary)?);
        command
            .arg("--node-id")
            .arg(node_id)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--control-plane")
            .arg(control_plane_url)
            .arg("--state-dir")
            .arg(files.node_state_dir(node_id))
            .arg("--state-key-file")
            .arg(files.node_state_key_file(node_id)?);
        match &tls.client_certificate {
            Some((cert, key)) => {
                command
                    .arg("--control-plane-client-cert-file")
                    .arg(cert)
                    .arg("--control-plane-client-key-file")
                    .arg(key);
            }
            None => {
                command
                    .arg("--node-token-file")
                    .arg(files.node_token_file());
            }
        }
        if let Some(ca) = &tls.control_plane_ca {
            command.arg("--control-plane-ca-file").arg(ca);
        }
        if let Some((cert, key, _)) = &tls.listener {
            command
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key);
        }
        // Tests register clients and sign in many times from 127.0.0.1: budgets far above
        // what any test uses, still enforced (a flag in `extra_args` wins).
        for variable in [
            "PORTCULLIS_NODE_RATE_LIMIT_REGISTER",
            "PORTCULLIS_NODE_RATE_LIMIT_TOKEN",
            "PORTCULLIS_NODE_RATE_LIMIT_BROWSER",
        ] {
            command.env(variable, "10000/m");
        }
        command.args(extra_args);
        let process = ChildProcess::start_listening(
            &format!("{binary}-{node_id}"),
            command,
            &format!("{binary} listening on "),
        )
        .await?;
        let listener_ca = tls.listener.as_ref().map(|(_, _, ca)| ca.as_path());
        Ok(Self {
            process,
            node_id: node_id.to_owned(),
            http: https_client(listener_ca)?,
            scheme: if listener_ca.is_some() {
                "https"
            } else {
                "http"
            },
        })
    }

    /// An HTTP client for this node's MCP listener (trusting its CA with TLS).
    pub fn http_client(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// `<scheme>://127.0.0.1:<port><path>` of the MCP listener.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.address())
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn address(&self) -> SocketAddr {
        self.process.address()
    }

    /// `http://<address>` of the admin listener (`--admin-listen`), from its stdout line.
    pub fn admin_url(&self) -> anyhow::Result<String> {
        listening_line_address(&self.process, "portcullis-node admin listening on ")
            .map(|address| format!("http://{address}"))
    }

    /// `http://127.0.0.1:<port>/mcp/<server>` (`https://` with TLS).
    pub fn mcp_url(&self, server: &str) -> String {
        self.url(&format!("/mcp/{server}"))
    }

    /// The snapshot version the node serves (from `/readyz`), `None` before it has one.
    pub async fn snapshot_version(&self) -> anyhow::Result<Option<u64>> {
        let response = self
            .http
            .get(self.url("/readyz"))
            .send()
            .await
            .with_context(|| format!("{} did not answer /readyz", self.node_id))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .with_context(|| format!("{} sent a /readyz body that is not JSON", self.node_id))?;
        match status.as_u16() {
            200 => body["snapshot_version"]
                .as_u64()
                .map(Some)
                .with_context(|| {
                    format!("{} sent /readyz without a version: {body}", self.node_id)
                }),
            503 => Ok(None),
            other => bail!("{} answered /readyz with {other}: {body}", self.node_id),
        }
    }

    /// Waits until the node serves a snapshot of at least `version`; returns the version.
    pub async fn wait_for_snapshot(
        &mut self,
        version: u64,
        timeout: Duration,
    ) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let serving = self.snapshot_version().await?;
            if let Some(serving) = serving
                && serving >= version
            {
                return Ok(serving);
            }
            if !self.process.is_running() {
                bail!("{} exited\n{}", self.node_id, self.process.diagnostics());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} serves version {serving:?}, not {version} or later, after {timeout:?}\n{}",
                    self.node_id,
                    self.process.diagnostics()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// SIGKILL.
    pub fn kill_hard(&mut self) -> anyhow::Result<()> {
        self.process.kill_hard()?;
        Ok(())
    }

    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    pub fn process_mut(&mut self) -> &mut ChildProcess {
        &mut self.process
    }
}

/// A control plane, `node_count` nodes named `node-1`, `node-2`... and an admin client.
#[derive(Debug)]
pub struct Gateway {
    pub files: Arc<GatewayFiles>,
    pub control_plane: ControlPlane,
    pub nodes: Vec<Node>,
    pub admin: AdminClient,
    /// The development certificates of a gateway started with TLS.
    pub certs: Option<DevCerts>,
}

/// TLS of a [`Gateway`]: the control plane's listener always has TLS then.
#[derive(Debug, Clone, Copy, Default)]
pub struct GatewayTls {
    /// Nodes authenticate by client certificate (and have no node token).
    pub mtls: bool,
    /// The nodes' MCP listeners have TLS too.
    pub node_listeners: bool,
}

impl Gateway {
    /// Starts everything and waits until every node serves the control plane's first
    /// snapshot.
    pub async fn start(node_count: usize) -> anyhow::Result<Self> {
        Self::start_with_node_args(node_count, &[]).await
    }

    /// Like [`Self::start`], with extra flags for every node.
    pub async fn start_with_node_args(
        node_count: usize,
        node_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with(node_count, None, node_args).await
    }

    /// Like [`Self::start_with_node_args`], with TLS on the control plane's listener and
    /// what `tls` asks for, on development certificates.
    pub async fn start_with_tls(
        node_count: usize,
        tls: GatewayTls,
        node_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with(node_count, Some(tls), node_args).await
    }

    async fn start_with(
        node_count: usize,
        tls: Option<GatewayTls>,
        node_args: &[&str],
    ) -> anyhow::Result<Self> {
        let files = GatewayFiles::create()?;
        let node_ids: Vec<String> = (1..=node_count)
            .map(|index| format!("node-{index}"))
            .collect();
        let certs = match tls {
            None => None,
            Some(_) => {
                Some(files.dev_certs(&node_ids.iter().map(String::as_str).collect::<Vec<_>>())?)
            }
        };
        let control_plane = match (&certs, tls) {
            (Some(certs), Some(tls)) => ControlPlane::start_tls(&files, certs, tls.mtls).await?,
            _ => ControlPlane::start(&files).await?,
        };
        let admin = control_plane.admin().await?;
        let mut nodes = Vec::with_capacity(node_count);
        for node_id in &node_ids {
            let node_tls = match (&certs, tls) {
                (Some(certs), Some(tls)) => {
                    NodeTls::from_dev_certs(certs, node_id, tls.mtls, tls.node_listeners)
                }
                _ => NodeTls::default(),
            };
            nodes.push(
                Node::start_with_tls(&files, node_id, &control_plane.url(), &node_tls, node_args)
                    .await?,
            );
        }
        let mut gateway = Self {
            files,
            control_plane,
            nodes,
            admin,
            certs,
        };
        let latest = gateway.latest_version().await?;
        gateway.wait_for_nodes(latest).await?;
        Ok(gateway)
    }

    /// The control plane's current snapshot version.
    pub async fn latest_version(&mut self) -> anyhow::Result<u64> {
        Ok(self
            .admin
            .fleet_status(proto::FleetStatusRequest {})
            .await
            .context("FleetStatus failed")?
            .into_inner()
            .latest_version)
    }

    /// Waits until every node serves `version` or later.
    pub async fn wait_for_nodes(&mut self, version: u64) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            node.wait_for_snapshot(version, PROPAGATION_TIMEOUT).await?;
        }
        Ok(())
    }

    /// Creates `server` and waits until every node serves it; returns the revision.
    pub async fn create_server(&mut self, server: proto::McpServer) -> anyhow::Result<u64> {
        let name = server.name.clone();
        let revision = self
            .admin
            .create_server(proto::CreateServerRequest {
                server: Some(server),
            })
            .await
            .with_context(|| format!("CreateServer {name} failed"))?
            .into_inner()
            .revision;
        self.wait_for_nodes(revision).await?;
        Ok(revision)
    }

    /// Sets a server's app auth and waits until every node serves it; returns the revision.
    pub async fn set_app_auth(
        &mut self,
        server: &str,
        app_auth: proto::app_auth::Kind,
    ) -> anyhow::Result<u64> {
        let revision = self
            .admin
            .set_app_auth(proto::SetAppAuthRequest {
                server: server.to_owned(),
                app_auth: Some(proto::AppAuth {
                    kind: Some(app_auth),
                }),
                expected_revision: None,
            })
            .await
            .with_context(|| format!("SetAppAuth {server} failed"))?
            .into_inner()
            .revision;
        self.wait_for_nodes(revision).await?;
        Ok(revision)
    }

    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index]
    }
}

/// Builders for the admin API's server messages.
pub mod servers {
    use portcullis_proto::v1 as proto;
    use portcullis_proto::v1::app_auth::Kind;

    /// Restricted inbound header pattern every test server carries.
    pub const RESTRICTED_PATTERN: &str = "x-internal-*";

    pub fn secret(value: &str) -> Option<proto::Secret> {
        Some(proto::Secret {
            value: Some(proto::secret::Value::Plaintext(value.to_owned())),
        })
    }

    /// A Streamable HTTP server with Passthrough agent auth (no JWT validation), inbound
    /// headers matching [`RESTRICTED_PATTERN`] stopped, and `app_auth`.
    pub fn server(name: &str, upstream_url: &str, app_auth: Kind) -> proto::McpServer {
        proto::McpServer {
            name: name.to_owned(),
            upstream_url: upstream_url.to_owned(),
            transport: proto::Transport::StreamableHttp as i32,
            agent_auth: Some(proto::AgentAuth {
                mode: Some(proto::agent_auth::Mode::Passthrough(
                    proto::PassthroughAgent::default(),
                )),
                restricted_inbound_headers: vec![RESTRICTED_PATTERN.to_owned()],
            }),
            app_auth: Some(proto::AppAuth {
                kind: Some(app_auth),
            }),
            description: format!("end-to-end test server {name}"),
            ..proto::McpServer::default()
        }
    }

    pub fn api_key_in_header(key_name: &str, key_value: &str) -> Kind {
        Kind::ApiKey(proto::ApiKey {
            key_name: key_name.to_owned(),
            key_value: secret(key_value),
            location: proto::ApiKeyLocation::Header as i32,
        })
    }

    pub fn api_key_in_query(key_name: &str, key_value: &str) -> Kind {
        Kind::ApiKey(proto::ApiKey {
            key_name: key_name.to_owned(),
            key_value: secret(key_value),
            location: proto::ApiKeyLocation::Query as i32,
        })
    }

    pub fn bearer(token: &str) -> Kind {
        Kind::Bearer(proto::BearerToken {
            token: secret(token),
        })
    }

    pub fn basic(username: &str, password: &str) -> Kind {
        Kind::Basic(proto::BasicAuth {
            username: username.to_owned(),
            password: secret(password),
        })
    }

    pub fn passthrough() -> Kind {
        Kind::Passthrough(proto::PassthroughApp {})
    }
}

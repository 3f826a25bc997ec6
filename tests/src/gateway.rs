//! A whole Portcullis as real child processes: a control plane, data-plane nodes, and the
//! admin gRPC API to configure them.
//!
//! [`GatewayFiles`] holds what an installation keeps on disk (master key, access file with
//! token hashes, node token, node state keys, data and state folders) in one scratch folder,
//! so a process can be killed and started again on the same files. [`ControlPlane`] and
//! [`Node`] are the binaries started on loopback ports the OS chooses; [`AdminClient`] is the
//! generated gRPC client with the admin bearer token; [`Gateway`] puts them together.
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

    /// A node's state key file, made on first use and kept for restarts.
    pub fn node_state_key_file(&self, node_id: &str) -> anyhow::Result<PathBuf> {
        let path = self.folder().join(format!("{node_id}-state.key"));
        if !path.exists() {
            write_private_file(&path, &random_hex::<32>()?)?;
        }
        Ok(path)
    }
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
}

impl ControlPlane {
    /// Starts on a loopback port the OS chooses.
    pub async fn start(files: &Arc<GatewayFiles>) -> anyhow::Result<Self> {
        Self::start_listening_on(files, "127.0.0.1:0", &[]).await
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
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.process.address()
    }

    /// The URL nodes and admin clients use, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.process.http_url("")
    }

    pub fn files(&self) -> &Arc<GatewayFiles> {
        &self.files
    }

    /// `http://<address>` of the HTTP listener (`--http-listen`), from its stdout line.
    pub fn http_url(&self) -> anyhow::Result<String> {
        listening_line_address(&self.process, "portcullis-control-plane http listening on ")
            .map(|address| format!("http://{address}"))
    }

    /// A connected admin client carrying the admin token.
    pub async fn admin(&self) -> anyhow::Result<AdminClient> {
        admin_client(&self.url(), self.files.admin_token()).await
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

/// Connects an admin client to `url` with `token`.
pub async fn admin_client(url: &str, token: &str) -> anyhow::Result<AdminClient> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .context("invalid control plane URL")?
        .connect_timeout(Duration::from_secs(5))
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

/// `portcullis-node` as a child process.
#[derive(Debug)]
pub struct Node {
    process: ChildProcess,
    node_id: String,
    http: reqwest::Client,
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
        let binary = "portcullis-node";
        let mut command = Command::new(paths::workspace_binary(binary)?);
        command
            .arg("--node-id")
            .arg(node_id)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--control-plane")
            .arg(control_plane_url)
            .arg("--node-token-file")
            .arg(files.node_token_file())
            .arg("--state-dir")
            .arg(files.node_state_dir(node_id))
            .arg("--state-key-file")
            .arg(files.node_state_key_file(node_id)?);
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
        Ok(Self {
            process,
            node_id: node_id.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .context("cannot build an HTTP client")?,
        })
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

    /// `http://127.0.0.1:<port>/mcp/<server>`.
    pub fn mcp_url(&self, server: &str) -> String {
        self.process.http_url(&format!("/mcp/{server}"))
    }

    /// The snapshot version the node serves (from `/readyz`), `None` before it has one.
    pub async fn snapshot_version(&self) -> anyhow::Result<Option<u64>> {
        let response = self
            .http
            .get(self.process.http_url("/readyz"))
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
        let files = GatewayFiles::create()?;
        let control_plane = ControlPlane::start(&files).await?;
        let admin = control_plane.admin().await?;
        let mut nodes = Vec::with_capacity(node_count);
        for index in 1..=node_count {
            nodes.push(
                Node::start(
                    &files,
                    &format!("node-{index}"),
                    &control_plane.url(),
                    node_args,
                )
                .await?,
            );
        }
        let mut gateway = Self {
            files,
            control_plane,
            nodes,
            admin,
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

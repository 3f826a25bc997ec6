//! Fixtures: a control plane in-process on a loopback port, or as a child process, and
//! builders for typical requests.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use portcullis_control_plane::engine::{Engine, EngineOptions};
use portcullis_control_plane::secrets::MasterKey;
use portcullis_control_plane::server::{ControlPlane, ControlPlaneConfig};
use portcullis_proto::v1 as proto;
use portcullis_proto::v1::admin_service_client::AdminServiceClient;
use portcullis_shared::crypto::sha256_hex;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::Channel;

pub const ADMIN_TOKEN: &str = "admin-token-for-tests";
pub const AUDITOR_TOKEN: &str = "auditor-token-for-tests";
pub const NODE_TOKEN: &str = "node-token-for-tests";

/// A fresh control plane starts by generating the gateway's signing and sealing keys, two
/// events.
pub const BOOTSTRAP_REVISION: u64 = 2;

pub fn master_key_text() -> String {
    base64::engine::general_purpose::STANDARD.encode([42u8; 32])
}

pub fn master_key() -> MasterKey {
    MasterKey::from_text(&master_key_text()).unwrap()
}

pub fn write_access_file(dir: &Path) -> PathBuf {
    let path = dir.join("access.yaml");
    let text = format!(
        "tokens:\n  - name: ops\n    role: admin\n    sha256: {}\n  - name: audit\n    role: auditor\n    sha256: {}\n  - name: fleet\n    role: node\n    sha256: {}\n",
        sha256_hex(ADMIN_TOKEN.as_bytes()),
        sha256_hex(AUDITOR_TOKEN.as_bytes()),
        sha256_hex(NODE_TOKEN.as_bytes()),
    );
    std::fs::write(&path, text).unwrap();
    path
}

pub fn open_engine(dir: &Path, options: EngineOptions) -> Engine {
    Engine::open(&dir.join("data"), master_key(), None, options).unwrap()
}

/// A control plane served in this process on a loopback port chosen by the OS.
pub struct InProcess {
    pub endpoint: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = ControlPlaneConfig {
            data_dir: dir.path().join("data"),
            access_file: write_access_file(dir.path()),
            engine: EngineOptions::default(),
            tls: None,
        };
        let control_plane = ControlPlane::open(&config, master_key(), None)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(control_plane.serve(listener, async {
            let _ = stop.await;
        }));
        Self {
            endpoint,
            shutdown: Some(shutdown),
            _dir: dir,
        }
    }

    pub async fn client(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::connect(self.endpoint.clone())
            .await
            .unwrap()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Wraps a message with a bearer token.
pub fn authed<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

pub fn admin<T>(message: T) -> tonic::Request<T> {
    authed(ADMIN_TOKEN, message)
}

/// The control-plane binary as a child process, for crash and leak tests.
pub struct ChildControlPlane {
    pub child: tokio::process::Child,
    pub endpoint: String,
    pub stderr_path: PathBuf,
}

impl ChildControlPlane {
    /// Starts the binary on `dir` (data, key and access file inside it) and waits for its
    /// "listening on" line.
    pub async fn start(dir: &Path, extra_args: &[&str]) -> Self {
        let access = write_access_file(dir);
        let key_path = dir.join("master.key");
        if !key_path.exists() {
            std::fs::write(&key_path, master_key_text()).unwrap();
        }
        let stderr_path = dir.join(format!(
            "control-plane-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child =
            tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis-control-plane"))
                .arg("--data-dir")
                .arg(dir.join("data"))
                .arg("--listen")
                .arg("127.0.0.1:0")
                .arg("--master-key-file")
                .arg(&key_path)
                .arg("--access-file")
                .arg(&access)
                .args(extra_args)
                .env("RUST_LOG", "debug")
                .stdout(Stdio::piped())
                .stderr(Stdio::from(stderr))
                .kill_on_drop(true)
                .spawn()
                .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("control plane did not start within 60s")
            .unwrap()
            .unwrap_or_else(|| {
                panic!(
                    "control plane exited early: {}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                )
            });
        let address = line
            .strip_prefix("portcullis-control-plane listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self {
            child,
            endpoint: format!("http://{address}"),
            stderr_path,
        }
    }

    pub async fn client(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::connect(self.endpoint.clone())
            .await
            .unwrap()
    }

    pub async fn kill_9(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// Asks the process to stop (SIGTERM) and waits for it.
    pub async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

pub fn plaintext(value: &str) -> Option<proto::Secret> {
    Some(proto::Secret {
        value: Some(proto::secret::Value::Plaintext(value.to_owned())),
    })
}

pub fn passthrough_agent() -> Option<proto::AgentAuth> {
    Some(proto::AgentAuth {
        mode: Some(proto::agent_auth::Mode::Passthrough(
            proto::PassthroughAgent {
                jwt_validation: None,
            },
        )),
        restricted_inbound_headers: vec!["x-internal-*".into()],
    })
}

pub fn api_key_auth(value: &str) -> Option<proto::AppAuth> {
    Some(proto::AppAuth {
        kind: Some(proto::app_auth::Kind::ApiKey(proto::ApiKey {
            key_name: "DD-API-KEY".into(),
            key_value: plaintext(value),
            location: proto::ApiKeyLocation::Header as i32,
        })),
    })
}

pub fn bearer_auth(value: &str) -> Option<proto::AppAuth> {
    Some(proto::AppAuth {
        kind: Some(proto::app_auth::Kind::Bearer(proto::BearerToken {
            token: plaintext(value),
        })),
    })
}

/// A server with passthrough agent auth and an API key towards the upstream.
pub fn datadog_server(name: &str, key: &str) -> proto::McpServer {
    proto::McpServer {
        name: name.into(),
        upstream_url: "http://127.0.0.1:9/mcp".into(),
        transport: proto::Transport::StreamableHttp as i32,
        allowed_origins: vec!["https://chat.example.com".into()],
        agent_auth: passthrough_agent(),
        app_auth: api_key_auth(key),
        outbound_headers: vec![],
        description: "nightly metrics".into(),
    }
}

pub fn identity_provider(id: &str) -> proto::IdentityProvider {
    proto::IdentityProvider {
        id: id.into(),
        issuer: "https://login.example.com".into(),
        client_id: "portcullis".into(),
        client_secret: plaintext("idp-secret"),
        scopes: vec!["openid".into(), "email".into()],
        display_name: "Corporate SSO".into(),
        ..Default::default()
    }
}

pub fn oauth_app(id: &str) -> proto::OAuthApp {
    proto::OAuthApp {
        app_id: id.into(),
        authorize_url: "https://github.com/login/oauth/authorize".into(),
        token_url: "https://github.com/login/oauth/access_token".into(),
        client_id: "gh-client".into(),
        client_secret: plaintext("gh-secret"),
        default_scopes: vec!["repo".into()],
        ..Default::default()
    }
}

pub fn status_of(secret: &Option<proto::Secret>) -> proto::SecretStatus {
    match secret.as_ref().and_then(|secret| secret.value.clone()) {
        Some(proto::secret::Value::Status(status)) => status,
        other => panic!("expected a secret status, got {other:?}"),
    }
}

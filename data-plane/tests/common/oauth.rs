//! Interactive SSO fixtures: gateway keys as the control plane generates them, an identity
//! provider entry, Interactive servers, tokens and codes minted through the node's own
//! sealing and signing code, and an in-process `NodeRuntime` server (single use and grant
//! revocation) that a test can make unreachable.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use futures::Stream;
use portcullis_data_plane::jwt::unix_now;
use portcullis_data_plane::oauth::grant::{Grant, UserIdentity, mint_access_token};
use portcullis_data_plane::oauth::keyring::GatewayKeyring;
use portcullis_data_plane::oauth::random_id;
use portcullis_data_plane::oauth::runtime::RuntimeClient;
use portcullis_proto::v1 as proto;
use portcullis_proto::v1::node_runtime_server::{NodeRuntime, NodeRuntimeServer};
use portcullis_shared::secret::SecretValue;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use super::{PUBLIC_URL, secret};
use crate::common::control_plane::NODE_TOKEN;

pub const IDP_ID: &str = "corp";
pub const SCOPE: &str = "mcp:tools";

/// An ES256 signing key as the control plane generates it.
pub fn signing_key(kid: &str, state: proto::GatewayKeyState) -> proto::SigningKey {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = pair.public_key().as_ref();
    proto::SigningKey {
        kid: kid.to_owned(),
        algorithm: "ES256".to_owned(),
        private_key: secret(&STANDARD.encode(pkcs8.as_ref())),
        public_jwk: serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
        .to_string(),
        created_at_unix: 1_800_000_000,
        state: state as i32,
    }
}

pub fn sealing_key(kid: &str, state: proto::GatewayKeyState) -> proto::SealingKey {
    let bytes = portcullis_shared::crypto::random_bytes::<32>().unwrap();
    proto::SealingKey {
        kid: kid.to_owned(),
        key: secret(&STANDARD.encode(bytes)),
        created_at_unix: 1_800_000_000,
        state: state as i32,
    }
}

/// One active key of each kind.
pub fn gateway_keys() -> proto::GatewayKeys {
    proto::GatewayKeys {
        signing_keys: vec![signing_key("sig-1", proto::GatewayKeyState::Active)],
        sealing_keys: vec![sealing_key("seal-1", proto::GatewayKeyState::Active)],
    }
}

/// The identity provider entry. Nothing in these tests contacts it.
pub fn identity_provider() -> proto::IdentityProvider {
    proto::IdentityProvider {
        id: IDP_ID.to_owned(),
        display_name: "Corp SSO".to_owned(),
        issuer: "https://idp.example.com".to_owned(),
        client_id: "gateway".to_owned(),
        client_secret: secret("idp-secret"),
        scopes: vec!["openid".to_owned(), "email".to_owned()],
        ..proto::IdentityProvider::default()
    }
}

/// Switches a server to Interactive SSO with `scopes`.
pub fn interactive(mut server: proto::McpServer, scopes: &[&str]) -> proto::McpServer {
    server.agent_auth = Some(proto::AgentAuth {
        mode: Some(proto::agent_auth::Mode::Interactive(
            proto::InteractiveSso {
                identity_provider: IDP_ID.to_owned(),
                scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
            },
        )),
        restricted_inbound_headers: Vec::new(),
    });
    server
}

/// A snapshot with the servers, the identity provider and `keys`.
pub fn sso_snapshot(
    version: u64,
    servers: Vec<proto::McpServer>,
    keys: proto::GatewayKeys,
) -> proto::Snapshot {
    proto::Snapshot {
        identity_providers: vec![identity_provider()],
        gateway_keys: Some(keys),
        ..super::snapshot(version, servers)
    }
}

/// The canonical resource of `server` on the test node.
pub fn resource(server: &str) -> String {
    format!("{PUBLIC_URL}/mcp/{server}")
}

pub fn user(subject: &str) -> UserIdentity {
    UserIdentity {
        subject: subject.to_owned(),
        email: Some(format!("{subject}@example.com")),
        groups: vec!["engineering".to_owned()],
        identity_provider: IDP_ID.to_owned(),
        identity_provider_issuer: "https://idp.example.com".to_owned(),
        auth_time: unix_now(),
    }
}

/// A grant of `subject` for `server` to `client_id`, with the server scope.
pub fn grant(subject: &str, server: &str, client_id: &str) -> Grant {
    Grant {
        grant_id: random_id(),
        client_id: client_id.to_owned(),
        resource: resource(server),
        scopes: vec![SCOPE.to_owned()],
        user: user(subject),
        issued_at_unix: unix_now(),
        expires_at_unix: unix_now() + 86_400,
        identity_provider_tokens: None,
    }
}

/// An access token for `grant`, issued at `issued_at` for `lifetime_secs`.
pub fn access_token(
    keys: &GatewayKeyring,
    grant: &Grant,
    issued_at: i64,
    lifetime_secs: i64,
) -> String {
    mint_access_token(keys, PUBLIC_URL, grant, issued_at, lifetime_secs)
        .unwrap()
        .0
}

/// The payload of a JWT, unverified.
pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// What the runtime service saw.
#[derive(Default)]
struct RuntimeState {
    consumed: Mutex<HashSet<(String, String)>>,
    revoked: Mutex<Vec<(String, i64, String)>>,
    unavailable: AtomicBool,
}

#[derive(Clone)]
struct RuntimeService(Arc<RuntimeState>);

fn check_token<T>(request: &Request<T>) -> Result<(), Status> {
    let authorization = request
        .metadata()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if authorization == format!("Bearer {NODE_TOKEN}") {
        Ok(())
    } else {
        Err(Status::unauthenticated("bad node token"))
    }
}

type ChangeStream = Pin<Box<dyn Stream<Item = Result<proto::UserTokenChange, Status>> + Send>>;

#[tonic::async_trait]
impl NodeRuntime for RuntimeService {
    async fn consume_once(
        &self,
        request: Request<proto::ConsumeOnceRequest>,
    ) -> Result<Response<proto::ConsumeOnceReply>, Status> {
        check_token(&request)?;
        if self.0.unavailable.load(Ordering::SeqCst) {
            return Err(Status::unavailable("control plane down"));
        }
        let request = request.into_inner();
        let first_use = self
            .0
            .consumed
            .lock()
            .unwrap()
            .insert((request.namespace, request.id));
        Ok(Response::new(proto::ConsumeOnceReply { first_use }))
    }

    async fn revoke_grant(
        &self,
        request: Request<proto::RevokeGrantRequest>,
    ) -> Result<Response<proto::RevokeGrantReply>, Status> {
        check_token(&request)?;
        if self.0.unavailable.load(Ordering::SeqCst) {
            return Err(Status::unavailable("control plane down"));
        }
        let request = request.into_inner();
        let mut revoked = self.0.revoked.lock().unwrap();
        revoked.push((request.grant_id, request.expires_at_unix, request.reason));
        Ok(Response::new(proto::RevokeGrantReply {
            revision: revoked.len() as u64,
        }))
    }

    async fn get_user_token(
        &self,
        _request: Request<proto::GetUserTokenRequest>,
    ) -> Result<Response<proto::GetUserTokenReply>, Status> {
        Err(Status::unimplemented("not in these tests"))
    }

    async fn put_user_token(
        &self,
        _request: Request<proto::PutUserTokenRequest>,
    ) -> Result<Response<proto::PutUserTokenReply>, Status> {
        Err(Status::unimplemented("not in these tests"))
    }

    type WatchUserTokensStream = ChangeStream;

    async fn watch_user_tokens(
        &self,
        _request: Request<proto::WatchUserTokensRequest>,
    ) -> Result<Response<ChangeStream>, Status> {
        Err(Status::unimplemented("not in these tests"))
    }

    async fn get_user_credential(
        &self,
        _request: Request<proto::GetUserCredentialRequest>,
    ) -> Result<Response<proto::GetUserCredentialReply>, Status> {
        Err(Status::unimplemented("not in these tests"))
    }

    async fn list_user_tokens(
        &self,
        _request: Request<proto::ListUserTokensRequest>,
    ) -> Result<Response<proto::ListUserTokensReply>, Status> {
        Err(Status::unimplemented("not in these tests"))
    }

    async fn delete_user_token(
        &self,
        _request: Request<proto::DeleteUserTokenRequest>,
    ) -> Result<Response<proto::DeleteUserTokenReply>, Status> {
        Err(Status::unimplemented("not in these tests"))
    }

    async fn put_own_credential(
        &self,
        _request: Request<proto::PutOwnCredentialRequest>,
    ) -> Result<Response<proto::PutOwnCredentialReply>, Status> {
        Err(Status::unimplemented("not in these tests"))
    }

    async fn delete_own_credential(
        &self,
        _request: Request<proto::DeleteOwnCredentialRequest>,
    ) -> Result<Response<proto::DeleteOwnCredentialReply>, Status> {
        Err(Status::unimplemented("not in these tests"))
    }
}

/// An in-process `NodeRuntime` on a loopback port.
pub struct TestRuntime {
    pub address: SocketAddr,
    state: Arc<RuntimeState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestRuntime {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestRuntime {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(RuntimeState::default());
        let service = RuntimeService(state.clone());
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(NodeRuntimeServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        Self {
            address,
            state,
            task,
        }
    }

    /// A node-side client with the node token.
    pub fn client(&self) -> RuntimeClient {
        RuntimeClient::new(
            &portcullis_data_plane::config::ControlPlaneConfig::with_token(
                url::Url::parse(&format!("http://{}", self.address)).unwrap(),
                SecretValue::new(NODE_TOKEN),
            ),
        )
        .unwrap()
    }

    /// Makes every call fail as if the control plane were down.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.state.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// `(grant_id, expires_at_unix, reason)` of every revocation, in order.
    pub fn revoked(&self) -> Vec<(String, i64, String)> {
        self.state.revoked.lock().unwrap().clone()
    }

    pub fn consumed(&self, namespace: &str, id: &str) -> bool {
        self.state
            .consumed
            .lock()
            .unwrap()
            .contains(&(namespace.to_owned(), id.to_owned()))
    }
}

//! The parties of account linking, in process: a `NodeRuntime` whose vault keeps links in
//! memory (and streams their changes), an OIDC identity provider that signs in whichever
//! user the test names, an app provider ("GitHub") with PKCE and client_secret_post, an
//! upstream MCP server that accepts only the provider's tokens and answers per user, and a
//! client-credentials token endpoint. The end-to-end tests in the `tests/` crate run the
//! same flows against real programs.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::Stream;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use portcullis_data_plane::jwt::unix_now;
use portcullis_data_plane::oauth::pkce_challenge;
use portcullis_data_plane::oauth::runtime::RuntimeClient;
use portcullis_proto::v1 as proto;
use portcullis_proto::v1::node_runtime_server::{NodeRuntime, NodeRuntimeServer};
use portcullis_shared::secret::SecretValue;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Status;

use crate::common::control_plane::NODE_TOKEN;
use crate::common::jwks::{TestKey, jwks};

async fn listen(app: Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (address, task)
}

// ---------------------------------------------------------------------------------------
// The control plane's vault
// ---------------------------------------------------------------------------------------

/// One stored link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLink {
    pub status: proto::LinkStatus,
    pub access_token: String,
    pub refresh_token: String,
    pub expires_at_unix: i64,
    pub scope: String,
    pub reason: String,
}

type LinkId = (String, String, String);

#[derive(Default)]
struct VaultState {
    links: Mutex<BTreeMap<LinkId, StoredLink>>,
    gets: AtomicUsize,
    /// `min_valid_secs` of every GetUserToken, in order.
    min_valid: Mutex<Vec<u32>>,
    /// Users' own credential values, by (credential, identity provider, subject).
    credentials: Mutex<BTreeMap<LinkId, String>>,
    credential_gets: AtomicUsize,
}

#[derive(Clone)]
struct VaultService {
    state: Arc<VaultState>,
    changes: broadcast::Sender<proto::UserTokenChange>,
}

fn check_token<T>(request: &tonic::Request<T>) -> Result<(), Status> {
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

fn link_id(app_id: &str, user: Option<&proto::UserRef>) -> Result<LinkId, Status> {
    let user = user.ok_or_else(|| Status::invalid_argument("user: required"))?;
    Ok((
        app_id.to_owned(),
        user.identity_provider.clone(),
        user.subject.clone(),
    ))
}

type ChangeStream = Pin<Box<dyn Stream<Item = Result<proto::UserTokenChange, Status>> + Send>>;

#[tonic::async_trait]
impl NodeRuntime for VaultService {
    async fn consume_once(
        &self,
        _request: tonic::Request<proto::ConsumeOnceRequest>,
    ) -> Result<tonic::Response<proto::ConsumeOnceReply>, Status> {
        Err(Status::unimplemented("not in these tests"))
    }

    async fn revoke_grant(
        &self,
        _request: tonic::Request<proto::RevokeGrantRequest>,
    ) -> Result<tonic::Response<proto::RevokeGrantReply>, Status> {
        Err(Status::unimplemented("not in these tests"))
    }

    async fn get_user_token(
        &self,
        request: tonic::Request<proto::GetUserTokenRequest>,
    ) -> Result<tonic::Response<proto::GetUserTokenReply>, Status> {
        check_token(&request)?;
        let request = request.into_inner();
        self.state.gets.fetch_add(1, Ordering::SeqCst);
        self.state
            .min_valid
            .lock()
            .unwrap()
            .push(request.min_valid_secs);
        let id = link_id(&request.app_id, request.user.as_ref())?;
        let link = self.state.links.lock().unwrap().get(&id).cloned();
        Ok(tonic::Response::new(match link {
            None => proto::GetUserTokenReply {
                status: proto::LinkStatus::Missing as i32,
                ..Default::default()
            },
            Some(link) if link.status == proto::LinkStatus::Broken => proto::GetUserTokenReply {
                status: proto::LinkStatus::Broken as i32,
                reason: link.reason,
                ..Default::default()
            },
            Some(link) => proto::GetUserTokenReply {
                status: proto::LinkStatus::Connected as i32,
                access_token: link.access_token,
                token_type: "bearer".to_owned(),
                expires_at_unix: link.expires_at_unix,
                scope: link.scope,
                reason: String::new(),
            },
        }))
    }

    async fn put_user_token(
        &self,
        request: tonic::Request<proto::PutUserTokenRequest>,
    ) -> Result<tonic::Response<proto::PutUserTokenReply>, Status> {
        check_token(&request)?;
        let request = request.into_inner();
        let id = link_id(&request.app_id, request.user.as_ref())?;
        self.state.links.lock().unwrap().insert(
            id,
            StoredLink {
                status: proto::LinkStatus::Connected,
                access_token: request.access_token,
                refresh_token: request.refresh_token,
                expires_at_unix: request.expires_at_unix,
                scope: request.scope,
                reason: String::new(),
            },
        );
        let _ = self.changes.send(proto::UserTokenChange {
            app_id: request.app_id,
            user: request.user,
            status: proto::LinkStatus::Connected as i32,
            reset: false,
        });
        Ok(tonic::Response::new(proto::PutUserTokenReply {}))
    }

    type WatchUserTokensStream = ChangeStream;

    async fn watch_user_tokens(
        &self,
        request: tonic::Request<proto::WatchUserTokensRequest>,
    ) -> Result<tonic::Response<ChangeStream>, Status> {
        check_token(&request)?;
        let mut changes = self.changes.subscribe();
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let reset = proto::UserTokenChange {
                reset: true,
                ..Default::default()
            };
            if sender.send(Ok(reset)).await.is_err() {
                return;
            }
            while let Ok(change) = changes.recv().await {
                if sender.send(Ok(change)).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn get_user_credential(
        &self,
        request: tonic::Request<proto::GetUserCredentialRequest>,
    ) -> Result<tonic::Response<proto::GetUserCredentialReply>, Status> {
        check_token(&request)?;
        let request = request.into_inner();
        let id = link_id(&request.credential_id, request.user.as_ref())?;
        self.state.credential_gets.fetch_add(1, Ordering::SeqCst);
        let value = self.state.credentials.lock().unwrap().get(&id).cloned();
        Ok(tonic::Response::new(proto::GetUserCredentialReply {
            found: value.is_some(),
            value: value.unwrap_or_default(),
        }))
    }

    async fn put_own_credential(
        &self,
        request: tonic::Request<proto::PutOwnCredentialRequest>,
    ) -> Result<tonic::Response<proto::PutOwnCredentialReply>, Status> {
        check_token(&request)?;
        let request = request.into_inner();
        let id = link_id(&request.credential_id, request.user.as_ref())?;
        self.state
            .credentials
            .lock()
            .unwrap()
            .insert(id, request.value);
        Ok(tonic::Response::new(proto::PutOwnCredentialReply {
            revision: 7,
        }))
    }

    async fn delete_own_credential(
        &self,
        request: tonic::Request<proto::DeleteOwnCredentialRequest>,
    ) -> Result<tonic::Response<proto::DeleteOwnCredentialReply>, Status> {
        check_token(&request)?;
        let request = request.into_inner();
        let id = link_id(&request.credential_id, request.user.as_ref())?;
        let deleted = self.state.credentials.lock().unwrap().remove(&id).is_some();
        Ok(tonic::Response::new(proto::DeleteOwnCredentialReply {
            deleted,
            revision: 8,
        }))
    }

    async fn list_user_tokens(
        &self,
        request: tonic::Request<proto::ListUserTokensRequest>,
    ) -> Result<tonic::Response<proto::ListUserTokensReply>, Status> {
        check_token(&request)?;
        let user = request
            .into_inner()
            .user
            .ok_or_else(|| Status::invalid_argument("user: required"))?;
        let links = self
            .state
            .links
            .lock()
            .unwrap()
            .iter()
            .filter(|((_, idp, subject), _)| {
                *idp == user.identity_provider && *subject == user.subject
            })
            .map(|((app, _, _), link)| proto::UserTokenInfo {
                app_id: app.clone(),
                status: link.status as i32,
                reason: link.reason.clone(),
                connected_at_unix: 1,
                refreshed_at_unix: 1,
                expires_at_unix: link.expires_at_unix,
                scope: link.scope.clone(),
            })
            .collect();
        Ok(tonic::Response::new(proto::ListUserTokensReply { links }))
    }

    async fn delete_user_token(
        &self,
        request: tonic::Request<proto::DeleteUserTokenRequest>,
    ) -> Result<tonic::Response<proto::DeleteUserTokenReply>, Status> {
        check_token(&request)?;
        let request = request.into_inner();
        let id = link_id(&request.app_id, request.user.as_ref())?;
        let deleted = self.state.links.lock().unwrap().remove(&id).is_some();
        if deleted {
            let _ = self.changes.send(proto::UserTokenChange {
                app_id: request.app_id,
                user: request.user,
                status: proto::LinkStatus::Missing as i32,
                reset: false,
            });
        }
        Ok(tonic::Response::new(proto::DeleteUserTokenReply {
            deleted,
        }))
    }
}

/// The control plane's vault, in process.
pub struct FakeVault {
    pub address: SocketAddr,
    state: Arc<VaultState>,
    changes: broadcast::Sender<proto::UserTokenChange>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeVault {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeVault {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(VaultState::default());
        let changes = broadcast::channel(64).0;
        let service = VaultService {
            state: state.clone(),
            changes: changes.clone(),
        };
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
            changes,
            task,
        }
    }

    pub fn client(&self) -> RuntimeClient {
        RuntimeClient::new(
            &portcullis_data_plane::config::ControlPlaneConfig::with_token(
                url::Url::parse(&format!("http://{}", self.address)).unwrap(),
                SecretValue::new(NODE_TOKEN),
            ),
        )
        .unwrap()
    }

    pub fn link(&self, app: &str, idp: &str, subject: &str) -> Option<StoredLink> {
        self.state
            .links
            .lock()
            .unwrap()
            .get(&(app.to_owned(), idp.to_owned(), subject.to_owned()))
            .cloned()
    }

    /// A user's own value of a credential, as the control plane would hold it.
    pub fn own_credential(&self, credential: &str, idp: &str, subject: &str) -> Option<String> {
        self.state
            .credentials
            .lock()
            .unwrap()
            .get(&(credential.to_owned(), idp.to_owned(), subject.to_owned()))
            .cloned()
    }

    /// How many GetUserCredential calls the node made.
    pub fn credential_gets(&self) -> usize {
        self.state.credential_gets.load(Ordering::SeqCst)
    }

    /// Stores a link directly (as an earlier connection would have), and tells watchers.
    pub fn connect(
        &self,
        app: &str,
        idp: &str,
        subject: &str,
        access_token: &str,
        expires_at_unix: i64,
    ) {
        self.state.links.lock().unwrap().insert(
            (app.to_owned(), idp.to_owned(), subject.to_owned()),
            StoredLink {
                status: proto::LinkStatus::Connected,
                access_token: access_token.to_owned(),
                refresh_token: "refresh".to_owned(),
                expires_at_unix,
                scope: "repo".to_owned(),
                reason: String::new(),
            },
        );
        self.announce(app, idp, subject, proto::LinkStatus::Connected);
    }

    /// Marks a link broken (the provider refused its refresh token), and tells watchers.
    pub fn break_link(&self, app: &str, idp: &str, subject: &str) {
        if let Some(link) = self.state.links.lock().unwrap().get_mut(&(
            app.to_owned(),
            idp.to_owned(),
            subject.to_owned(),
        )) {
            link.status = proto::LinkStatus::Broken;
            link.access_token.clear();
            link.reason = "the provider refused the refresh token (invalid_grant)".to_owned();
        }
        self.announce(app, idp, subject, proto::LinkStatus::Broken);
    }

    fn announce(&self, app: &str, idp: &str, subject: &str, status: proto::LinkStatus) {
        let _ = self.changes.send(proto::UserTokenChange {
            app_id: app.to_owned(),
            user: Some(proto::UserRef {
                identity_provider: idp.to_owned(),
                subject: subject.to_owned(),
            }),
            status: status as i32,
            reset: false,
        });
    }

    /// How many `GetUserToken` calls nodes made.
    pub fn gets(&self) -> usize {
        self.state.gets.load(Ordering::SeqCst)
    }

    pub fn min_valid_secs(&self) -> Vec<u32> {
        self.state.min_valid.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------------------
// The identity provider and the app's provider
// ---------------------------------------------------------------------------------------

pub const IDP_CLIENT_ID: &str = "gateway";
pub const APP_CLIENT_ID: &str = "gh-client";
pub const APP_CLIENT_SECRET: &str = "gh-secret";

#[derive(Default)]
struct ProviderState {
    issuer: String,
    /// Who signs in at the identity provider now.
    user: Mutex<String>,
    /// Identity provider codes: code -> (user, nonce).
    idp_codes: Mutex<HashMap<String, (String, String)>>,
    /// App provider codes: code -> (user, PKCE challenge).
    app_codes: Mutex<HashMap<String, (String, String)>>,
    tokens_issued: AtomicUsize,
    /// The last authorization request at the app provider.
    last_app_authorization: Mutex<HashMap<String, String>>,
    last_app_token_form: Mutex<HashMap<String, String>>,
}

struct Providers {
    state: Arc<ProviderState>,
    key: TestKey,
}

/// An OIDC identity provider at `/` and an OAuth app provider at `/gh/`, on one port.
pub struct FakeProviders {
    state: Arc<ProviderState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProviders {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn discovery(State(providers): State<Arc<Providers>>) -> Response {
    let issuer = &providers.state.issuer;
    axum::Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "authorization_response_iss_parameter_supported": true,
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
    }))
    .into_response()
}

async fn published_keys(State(providers): State<Arc<Providers>>) -> Response {
    axum::Json(jwks(&[&providers.key])).into_response()
}

fn redirect_to(location: &str) -> Response {
    (StatusCode::FOUND, [("location", location.to_owned())]).into_response()
}

fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(base).unwrap();
    url.query_pairs_mut().extend_pairs(pairs);
    url.to_string()
}

async fn idp_authorize(
    State(providers): State<Arc<Providers>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    assert_eq!(query["client_id"], IDP_CLIENT_ID);
    assert_eq!(query["code_challenge_method"], "S256");
    let user = providers.state.user.lock().unwrap().clone();
    let code = portcullis_data_plane::oauth::random_id();
    providers
        .state
        .idp_codes
        .lock()
        .unwrap()
        .insert(code.clone(), (user, query["nonce"].clone()));
    redirect_to(&with_query(
        &query["redirect_uri"],
        &[
            ("code", &code),
            ("state", &query["state"]),
            ("iss", &providers.state.issuer),
        ],
    ))
}

async fn idp_token(State(providers): State<Arc<Providers>>, body: String) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let Some((user, nonce)) = providers
        .state
        .idp_codes
        .lock()
        .unwrap()
        .remove(&form["code"])
    else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant"})),
        )
            .into_response();
    };
    let now = unix_now();
    let id_token = providers.key.sign(&json!({
        "iss": providers.state.issuer, "aud": IDP_CLIENT_ID, "sub": user, "nonce": nonce,
        "email": format!("{user}@example.com"), "iat": now, "exp": now + 300,
    }));
    axum::Json(json!({"id_token": id_token, "token_type": "Bearer", "access_token": "idp-at"}))
        .into_response()
}

async fn app_authorize(
    State(providers): State<Arc<Providers>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let user = providers.state.user.lock().unwrap().clone();
    let code = format!("gh-code-{}", portcullis_data_plane::oauth::random_id());
    providers
        .state
        .app_codes
        .lock()
        .unwrap()
        .insert(code.clone(), (user, query["code_challenge"].clone()));
    *providers.state.last_app_authorization.lock().unwrap() = query.clone();
    redirect_to(&with_query(
        &query["redirect_uri"],
        &[("code", &code), ("state", &query["state"])],
    ))
}

async fn app_token(
    State(providers): State<Arc<Providers>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    *providers.state.last_app_token_form.lock().unwrap() = form
        .iter()
        .filter(|(name, _)| name.as_str() != "client_secret" && name.as_str() != "code")
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    // GitHub: client_secret_post, JSON only when asked for it.
    let as_json = headers
        .get("accept")
        .is_some_and(|accept| accept.to_str().unwrap().contains("application/json"));
    let refuse =
        |error: &str| (StatusCode::OK, axum::Json(json!({"error": error}))).into_response();
    if form.get("client_id").map(String::as_str) != Some(APP_CLIENT_ID)
        || form.get("client_secret").map(String::as_str) != Some(APP_CLIENT_SECRET)
    {
        return refuse("incorrect_client_credentials");
    }
    let Some((user, challenge)) = providers
        .state
        .app_codes
        .lock()
        .unwrap()
        .remove(&form["code"])
    else {
        return refuse("bad_verification_code");
    };
    if pkce_challenge(&form["code_verifier"]) != challenge {
        return refuse("bad_verification_code");
    }
    let issued = providers.state.tokens_issued.fetch_add(1, Ordering::SeqCst);
    let token = format!("gho_{user}_{issued}");
    if as_json {
        axum::Json(
            json!({"access_token": token, "token_type": "bearer", "scope": "repo",
                          "refresh_token": format!("ghr_{user}_{issued}"), "expires_in": 28800}),
        )
        .into_response()
    } else {
        (
            [("content-type", "application/x-www-form-urlencoded")],
            format!("access_token={token}&token_type=bearer&scope=repo"),
        )
            .into_response()
    }
}

impl FakeProviders {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(ProviderState {
            issuer: format!("http://{address}"),
            ..ProviderState::default()
        });
        let providers = Arc::new(Providers {
            state: state.clone(),
            key: TestKey::rsa("idp-key-1"),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(published_keys))
            .route("/authorize", get(idp_authorize))
            .route("/token", post(idp_token))
            .route("/gh/authorize", get(app_authorize))
            .route("/gh/token", post(app_token))
            .with_state(providers);
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { state, task }
    }

    pub fn issuer(&self) -> String {
        self.state.issuer.clone()
    }

    /// Who signs in at the identity provider (and so at the app provider) from now on.
    pub fn sign_in_as(&self, user: &str) {
        *self.state.user.lock().unwrap() = user.to_owned();
    }

    pub fn tokens_issued(&self) -> usize {
        self.state.tokens_issued.load(Ordering::SeqCst)
    }

    pub fn last_app_authorization(&self) -> HashMap<String, String> {
        self.state.last_app_authorization.lock().unwrap().clone()
    }

    pub fn last_app_token_form(&self) -> HashMap<String, String> {
        self.state.last_app_token_form.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------------------
// The upstream MCP server and a client-credentials token endpoint
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct UpstreamState {
    /// Tokens the upstream accepts, and whose they are.
    owners: Mutex<HashMap<String, String>>,
    /// Whether requests other than tools/call need a token too.
    everything_needs_a_token: std::sync::atomic::AtomicBool,
    /// `Authorization` of every request, in order (None when absent).
    seen: Mutex<Vec<Option<String>>>,
}

/// An MCP upstream that knows whose each token is: `tools/call` answers with the owner's
/// name ("pull requests of alice"), and a request without a known token gets 401.
pub struct PerUserUpstream {
    pub address: SocketAddr,
    state: Arc<UpstreamState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PerUserUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn per_user_mcp(State(state): State<Arc<UpstreamState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body: Value =
        serde_json::from_slice(&body.collect().await.unwrap().to_bytes()).unwrap_or(Value::Null);
    let authorization = parts
        .headers
        .get("authorization")
        .map(|value| value.to_str().unwrap().to_owned());
    state.seen.lock().unwrap().push(authorization.clone());
    let owner = authorization
        .as_deref()
        .and_then(|value| value.strip_prefix("Bearer "))
        .and_then(|token| state.owners.lock().unwrap().get(token).cloned());
    let method = body.get("method").and_then(Value::as_str).unwrap_or("");
    let needs_token =
        method == "tools/call" || state.everything_needs_a_token.load(Ordering::SeqCst);
    if needs_token && owner.is_none() {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                "www-authenticate",
                "Bearer resource_metadata=\"http://upstream/prm\"",
            )],
            "",
        )
            .into_response();
    }
    let result = match method {
        "initialize" => json!({"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                               "serverInfo": {"name": "per-user", "version": "1"}}),
        "tools/call" => json!({"content": [{"type": "text",
                               "text": format!("pull requests of {}", owner.unwrap_or_default())}]}),
        _ => json!({"tools": [{"name": "list_pull_requests", "inputSchema": {"type": "object"}}]}),
    };
    (
        [
            ("content-type", "application/json"),
            ("mcp-session-id", "upstream-session-1"),
        ],
        json!({"jsonrpc": "2.0", "id": body.get("id").cloned().unwrap_or(Value::Null), "result": result})
            .to_string(),
    )
        .into_response()
}

impl PerUserUpstream {
    pub async fn start() -> Self {
        let state = Arc::new(UpstreamState::default());
        let app = Router::new()
            .route("/mcp", axum::routing::any(per_user_mcp))
            .with_state(state.clone());
        let (address, task) = listen(app).await;
        Self {
            address,
            state,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.address)
    }

    /// The upstream accepts `token` as `owner`'s.
    pub fn accept(&self, token: &str, owner: &str) {
        self.state
            .owners
            .lock()
            .unwrap()
            .insert(token.to_owned(), owner.to_owned());
    }

    pub fn require_a_token_for_everything(&self) {
        self.state
            .everything_needs_a_token
            .store(true, Ordering::SeqCst);
    }

    /// The `Authorization` headers it received, in order.
    pub fn seen(&self) -> Vec<Option<String>> {
        self.state.seen.lock().unwrap().clone()
    }
}

#[derive(Default)]
struct TokenEndpointState {
    requests: AtomicUsize,
    /// The answer: status and body.
    answer: Mutex<(u16, Value)>,
    gate: tokio::sync::RwLock<()>,
}

/// A client-credentials token endpoint that counts requests and can be held.
pub struct ServiceTokenEndpoint {
    pub address: SocketAddr,
    state: Arc<TokenEndpointState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ServiceTokenEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn service_token(
    State(state): State<Arc<TokenEndpointState>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let _open = state.gate.read().await;
    state.requests.fetch_add(1, Ordering::SeqCst);
    assert!(body.contains("grant_type=client_credentials"), "{body}");
    assert!(
        headers
            .get("authorization")
            .is_some_and(|value| value.to_str().unwrap().starts_with("Basic "))
    );
    let (status, body) = state.answer.lock().unwrap().clone();
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

impl ServiceTokenEndpoint {
    pub async fn start(status: u16, answer: Value) -> Self {
        let state = Arc::new(TokenEndpointState {
            answer: Mutex::new((status, answer)),
            ..TokenEndpointState::default()
        });
        let app = Router::new()
            .route("/token", post(service_token))
            .with_state(state.clone());
        let (address, task) = listen(app).await;
        Self {
            address,
            state,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/token", self.address)
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Holds every request until the guard is dropped.
    pub async fn hold(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.state.gate.write().await
    }
}

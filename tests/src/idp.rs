//! The test identity provider: `tests/idp/test-idp.mjs`, a real `oidc-provider` (npm, by
//! panva, OpenID-certified) as a child process under the pinned Node 22.
//!
//! One provider plays every role the gateway meets: the enterprise IdP behind Interactive
//! SSO (OIDC, ID tokens with email and groups), a "GitHub/Google"-like provider for per-user
//! app OAuth (authorization code + PKCE, rotating refresh tokens, JWT access tokens for a
//! requested resource), a client-credentials issuer and an RFC 8693 token-exchange service.
//! Login and consent are automatic: the [`HeadlessBrowser`](crate::browser::HeadlessBrowser)
//! names the user with a `test_user` cookie. Test-only endpoints under `/test/` count what
//! happened ([`TestIdp::stats`], [`TestIdp::interactions`], [`TestIdp::recent_requests`]) and
//! change state ([`TestIdp::revoke_user`], [`TestIdp::upsert_client`],
//! [`TestIdp::upsert_account`]).
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use portcullis_tests::browser::HeadlessBrowser;
//! use portcullis_tests::idp::{IdpClient, IdpConfig, TestIdp};
//!
//! let client = IdpClient::confidential("gateway", "gateway-secret", &["http://127.0.0.1:9/cb"]);
//! let idp = TestIdp::start(IdpConfig::default().client(client.clone())).await?;
//! let browser = HeadlessBrowser::new()?.user("bob");
//! let request = idp.authorization_request(&client).scope("openid email");
//! let tokens = idp.authorization_code_flow(&client, &request, &browser).await?;
//! let claims = idp.verify_jwt(tokens.id_token()?, Some("gateway")).await?;
//! assert_eq!(claims["email"], "bob@example.com");
//! # Ok(()) }
//! ```
//!
//! State (sessions, grants, tokens, clients added at run time) lives in the provider's memory
//! and is gone after a restart; the signing keys live in a JWKS file that survives restarts
//! unless [`KeyRotation`] says otherwise.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::browser::{BrowserOutcome, HeadlessBrowser};
use crate::paths;
use crate::process::{ChildProcess, DEFAULT_STARTUP_TIMEOUT, scratch_dir};

/// The stdout line the IdP prints once it answers, followed by `<ip>:<port>`.
pub const LISTENING_LINE_PREFIX: &str = "test-idp listening on ";
/// RFC 8693 grant type.
pub const TOKEN_EXCHANGE_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 token type identifiers.
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// How long a restart may wait for the old port to be free again.
const RESTART_PORT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the IdP is started with: serialised to the JSON file `test-idp.mjs --config` reads.
/// [`Default`] mirrors the script's defaults: accounts `alice` (groups engineering, admins)
/// and `bob` (sales), default user alice, no clients.
#[derive(Debug, Clone, Serialize)]
pub struct IdpConfig {
    pub clients: Vec<IdpClient>,
    pub accounts: Vec<IdpAccount>,
    /// Who logs in when the browser names no one.
    pub default_user: String,
    /// Added to authorization requests that carry no scope (`openid`).
    pub default_scope: String,
    /// Extra scope names besides openid, offline_access, email, profile, groups.
    pub scopes: Vec<String>,
    /// Resource servers with fixed scopes or TTLs; others are accepted when
    /// `allow_any_resource`, with whatever scopes were requested.
    pub resources: Vec<IdpResource>,
    pub allow_any_resource: bool,
    /// `RS256` or `ES256`, for JWT access tokens.
    pub access_token_signing_alg: String,
    pub ttl: IdpTtls,
    /// Refresh tokens rotate on every use; reusing a rotated one revokes the grant.
    pub rotate_refresh_tokens: bool,
    /// PKCE S256 required for every client.
    pub pkce_required: bool,
    /// Open dynamic client registration at `/reg`.
    pub registration: bool,
    pub token_exchange: TokenExchangeConfig,
}

impl Default for IdpConfig {
    fn default() -> Self {
        Self {
            clients: Vec::new(),
            accounts: vec![
                IdpAccount::new("alice").groups(&["engineering", "admins"]),
                IdpAccount::new("bob").groups(&["sales"]),
            ],
            default_user: "alice".to_owned(),
            default_scope: "openid".to_owned(),
            scopes: Vec::new(),
            resources: Vec::new(),
            allow_any_resource: true,
            access_token_signing_alg: "RS256".to_owned(),
            ttl: IdpTtls::default(),
            rotate_refresh_tokens: true,
            pkce_required: true,
            registration: true,
            token_exchange: TokenExchangeConfig::default(),
        }
    }
}

impl IdpConfig {
    pub fn client(mut self, client: IdpClient) -> Self {
        self.clients.push(client);
        self
    }

    /// Adds an account, replacing one with the same id.
    pub fn account(mut self, account: IdpAccount) -> Self {
        self.accounts.retain(|existing| existing.id != account.id);
        self.accounts.push(account);
        self
    }

    pub fn default_user(mut self, user: &str) -> Self {
        self.default_user = user.to_owned();
        self
    }

    pub fn scopes(mut self, scopes: &[&str]) -> Self {
        self.scopes = scopes.iter().map(|scope| (*scope).to_owned()).collect();
        self
    }

    pub fn resource(mut self, resource: IdpResource) -> Self {
        self.resources.push(resource);
        self
    }

    /// Lifetime of access tokens (user and token-exchange ones; client credentials too).
    pub fn access_token_ttl(mut self, ttl: Duration) -> Self {
        self.ttl.access_token_secs = Some(ttl.as_secs());
        self.ttl.client_credentials_secs = Some(ttl.as_secs());
        self
    }

    pub fn refresh_token_ttl(mut self, ttl: Duration) -> Self {
        self.ttl.refresh_token_secs = Some(ttl.as_secs());
        self
    }

    pub fn id_token_ttl(mut self, ttl: Duration) -> Self {
        self.ttl.id_token_secs = Some(ttl.as_secs());
        self
    }

    pub fn trusted_issuer(mut self, issuer: TrustedIssuer) -> Self {
        self.token_exchange.trusted_issuers.push(issuer);
        self
    }
}

/// A pre-registered client, as OAuth client metadata.
#[derive(Debug, Clone, Serialize)]
pub struct IdpClient {
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    /// `client_secret_basic` (default with a secret), `client_secret_post`, `none`.
    pub token_endpoint_auth_method: String,
    /// Any other client metadata (`application_type`, `scope`, `id_token_signed_response_alg`...).
    #[serde(flatten)]
    pub extra_metadata: Map<String, Value>,
}

impl IdpClient {
    /// A confidential web client (the gateway): authorization code, refresh token, client
    /// credentials and token exchange, secret in HTTP Basic.
    pub fn confidential(client_id: &str, client_secret: &str, redirect_uris: &[&str]) -> Self {
        Self {
            client_id: client_id.to_owned(),
            client_secret: Some(client_secret.to_owned()),
            redirect_uris: redirect_uris.iter().map(|uri| (*uri).to_owned()).collect(),
            grant_types: [
                "authorization_code",
                "refresh_token",
                "client_credentials",
                TOKEN_EXCHANGE_GRANT_TYPE,
            ]
            .map(str::to_owned)
            .to_vec(),
            token_endpoint_auth_method: "client_secret_basic".to_owned(),
            extra_metadata: Map::new(),
        }
    }

    /// A public client (no secret, PKCE only): authorization code and refresh token.
    pub fn public(client_id: &str, redirect_uris: &[&str]) -> Self {
        Self {
            client_id: client_id.to_owned(),
            client_secret: None,
            redirect_uris: redirect_uris.iter().map(|uri| (*uri).to_owned()).collect(),
            grant_types: ["authorization_code", "refresh_token"]
                .map(str::to_owned)
                .to_vec(),
            token_endpoint_auth_method: "none".to_owned(),
            extra_metadata: Map::new(),
        }
    }

    /// A machine client: client credentials and token exchange, no redirect URIs.
    pub fn service(client_id: &str, client_secret: &str) -> Self {
        Self {
            client_id: client_id.to_owned(),
            client_secret: Some(client_secret.to_owned()),
            redirect_uris: Vec::new(),
            grant_types: ["client_credentials", TOKEN_EXCHANGE_GRANT_TYPE]
                .map(str::to_owned)
                .to_vec(),
            token_endpoint_auth_method: "client_secret_basic".to_owned(),
            extra_metadata: Map::new(),
        }
    }

    pub fn grant_types(mut self, grant_types: &[&str]) -> Self {
        self.grant_types = grant_types
            .iter()
            .map(|grant| (*grant).to_owned())
            .collect();
        self
    }

    pub fn token_endpoint_auth_method(mut self, method: &str) -> Self {
        self.token_endpoint_auth_method = method.to_owned();
        self
    }

    pub fn metadata(mut self, name: &str, value: Value) -> Self {
        self.extra_metadata.insert(name.to_owned(), value);
        self
    }

    /// The first redirect URI (what [`TestIdp::authorization_request`] uses).
    pub fn redirect_uri(&self) -> anyhow::Result<&str> {
        self.redirect_uris
            .first()
            .map(String::as_str)
            .with_context(|| format!("client {} has no redirect URI", self.client_id))
    }
}

/// A user of the IdP. `email` defaults to `<id>@example.com`, `name` to the capitalised id.
#[derive(Debug, Clone, Serialize)]
pub struct IdpAccount {
    pub id: String,
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub email_verified: bool,
    /// Extra claims in ID tokens and userinfo (e.g. an Entra-like `upn` or `roles`).
    pub extra_claims: Map<String, Value>,
    /// A disabled account cannot log in, and its refresh tokens stop working.
    pub disabled: bool,
}

impl IdpAccount {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            groups: Vec::new(),
            name: None,
            email: None,
            email_verified: true,
            extra_claims: Map::new(),
            disabled: false,
        }
    }

    pub fn groups(mut self, groups: &[&str]) -> Self {
        self.groups = groups.iter().map(|group| (*group).to_owned()).collect();
        self
    }

    pub fn email(mut self, email: &str) -> Self {
        self.email = Some(email.to_owned());
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    pub fn claim(mut self, name: &str, value: Value) -> Self {
        self.extra_claims.insert(name.to_owned(), value);
        self
    }

    pub fn disabled(mut self, disabled: bool) -> Self {
        self.disabled = disabled;
        self
    }
}

/// A resource server (RFC 8707 resource indicator) with fixed settings.
#[derive(Debug, Clone, Serialize)]
pub struct IdpResource {
    pub resource: String,
    /// Space-separated scopes available for this resource.
    pub scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token_ttl_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_alg: Option<String>,
}

impl IdpResource {
    pub fn new(resource: &str, scope: &str) -> Self {
        Self {
            resource: resource.to_owned(),
            scope: scope.to_owned(),
            access_token_ttl_secs: None,
            signing_alg: None,
        }
    }

    pub fn access_token_ttl(mut self, ttl: Duration) -> Self {
        self.access_token_ttl_secs = Some(ttl.as_secs());
        self
    }

    pub fn signing_alg(mut self, alg: &str) -> Self {
        self.signing_alg = Some(alg.to_owned());
        self
    }
}

/// Token lifetimes in seconds; `None` keeps the script's default.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdpTtls {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_credentials_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_code_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_secs: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TokenExchangeConfig {
    pub trusted_issuers: Vec<TrustedIssuer>,
}

/// An issuer whose JWTs the token exchange accepts as subject tokens (e.g. the gateway).
/// The subject claim must name an account by id or email.
#[derive(Debug, Clone, Serialize)]
pub struct TrustedIssuer {
    pub issuer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// An inline public JWKS, instead of `jwks_uri`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Value>,
    /// Required `aud` of the subject token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_claim: Option<String>,
}

impl TrustedIssuer {
    pub fn with_jwks_uri(issuer: &str, jwks_uri: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            jwks_uri: Some(jwks_uri.to_owned()),
            jwks: None,
            audience: None,
            subject_claim: None,
        }
    }

    pub fn with_jwks(issuer: &str, jwks: Value) -> Self {
        Self {
            issuer: issuer.to_owned(),
            jwks_uri: None,
            jwks: Some(jwks),
            audience: None,
            subject_claim: None,
        }
    }
}

/// What happens to the signing keys when the IdP (re)starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRotation {
    /// Keep the keys in the keys file (generated on the first start).
    Keep,
    /// New keys; the old ones disappear from `/jwks`.
    Replace,
    /// New keys sign; the old ones stay published in `/jwks`.
    Overlap,
}

impl KeyRotation {
    fn flag(self) -> &'static str {
        match self {
            Self::Keep => "none",
            Self::Replace => "replace",
            Self::Overlap => "overlap",
        }
    }
}

/// A running test IdP.
#[derive(Debug)]
pub struct TestIdp {
    process: ChildProcess,
    config: IdpConfig,
    issuer: String,
    http: reqwest::Client,
    keys_file: PathBuf,
    config_file: PathBuf,
    /// Holds the config and keys files.
    _scratch: tempfile::TempDir,
}

impl TestIdp {
    /// Starts the IdP on a loopback port chosen by the OS, with fresh signing keys.
    pub async fn start(config: IdpConfig) -> anyhow::Result<Self> {
        let scratch = scratch_dir("test-idp")?;
        let keys_file = scratch.path().join("keys.json");
        let config_file = scratch.path().join("config.json");
        write_config(&config_file, &config)?;
        let process = spawn_idp(&config_file, &keys_file, 0, KeyRotation::Keep).await?;
        let issuer = format!("http://{}", process.address());
        Ok(Self {
            process,
            config,
            issuer,
            http: http_client()?,
            keys_file,
            config_file,
            _scratch: scratch,
        })
    }

    /// Stops the IdP and starts it again on the same port (so the issuer is unchanged), with
    /// the same configuration and the keys as `rotation` says. All in-memory state is lost:
    /// sessions, grants, tokens, clients and accounts added at run time.
    pub async fn restart_on_same_port(&mut self, rotation: KeyRotation) -> anyhow::Result<()> {
        let config = self.config.clone();
        self.restart_on_same_port_with(config, rotation).await
    }

    /// Like [`Self::restart_on_same_port`], with a new configuration.
    pub async fn restart_on_same_port_with(
        &mut self,
        config: IdpConfig,
        rotation: KeyRotation,
    ) -> anyhow::Result<()> {
        let port = self.process.address().port();
        self.process.terminate(Duration::from_secs(5)).await?;
        write_config(&self.config_file, &config)?;
        let deadline = Instant::now() + RESTART_PORT_TIMEOUT;
        loop {
            match spawn_idp(&self.config_file, &self.keys_file, port, rotation).await {
                Ok(process) => {
                    self.process = process;
                    self.config = config;
                    return Ok(());
                }
                // The port can stay busy for a moment after the old process is gone.
                Err(error)
                    if format!("{error:#}").contains("EADDRINUSE") && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// `http://127.0.0.1:<port>` (no trailing slash), the `iss` of everything it signs.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn address(&self) -> SocketAddr {
        self.process.address()
    }

    /// `<issuer><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    pub fn config(&self) -> &IdpConfig {
        &self.config
    }

    /// The private JWKS file the IdP signs with (to restart another IdP with the same keys).
    pub fn keys_file(&self) -> &Path {
        &self.keys_file
    }

    pub fn process(&self) -> &ChildProcess {
        &self.process
    }

    pub fn process_mut(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    /// `GET <path>` as JSON, failing on a non-2xx status.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .with_context(|| format!("GET {path} at the test IdP"))?;
        self.json_body(path, response).await
    }

    async fn post_json(&self, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut request = self.http.post(self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("POST {path} at the test IdP"))?;
        self.json_body(path, response).await
    }

    async fn json_body(&self, path: &str, response: reqwest::Response) -> anyhow::Result<Value> {
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!(
                "the test IdP answered {path} with {status}: {text}\n{}",
                self.process.diagnostics()
            );
        }
        serde_json::from_str(&text)
            .with_context(|| format!("the test IdP answered {path} with non-JSON: {text}"))
    }

    /// OpenID Connect discovery (`/.well-known/openid-configuration`).
    pub async fn discovery(&self) -> anyhow::Result<Value> {
        self.get_json("/.well-known/openid-configuration").await
    }

    /// The public signing keys.
    pub async fn jwks(&self) -> anyhow::Result<Value> {
        self.get_json("/jwks").await
    }

    /// The `kid`s published in `/jwks`, in order.
    pub async fn jwks_kids(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.jwks().await?["keys"]
            .as_array()
            .context("jwks has no keys")?
            .iter()
            .filter_map(|key| key["kid"].as_str().map(str::to_owned))
            .collect())
    }

    /// Counters since start (or [`Self::reset_stats`]).
    pub async fn stats(&self) -> anyhow::Result<IdpStats> {
        Ok(serde_json::from_value(self.get_json("/test/stats").await?)?)
    }

    /// The refresh tokens the provider holds for `client_id` (their values: a test scans the
    /// gateway's files and logs for them).
    pub async fn refresh_tokens(&self, client_id: &str) -> anyhow::Result<Vec<String>> {
        let reply = self
            .get_json(&format!("/test/refresh-tokens?client_id={client_id}"))
            .await?;
        Ok(reply["tokens"]
            .as_array()
            .context("no tokens in the answer")?
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect())
    }

    /// Zeroes the counters and forgets the recent requests.
    pub async fn reset_stats(&self) -> anyhow::Result<()> {
        self.post_json("/test/stats/reset", None).await.map(drop)
    }

    /// How many interactive logins (and consents) happened.
    pub async fn interactions(&self) -> anyhow::Result<InteractionCounts> {
        Ok(serde_json::from_value(
            self.get_json("/test/interactions").await?,
        )?)
    }

    /// The last authorization and token requests the IdP received (no secrets).
    pub async fn recent_requests(&self) -> anyhow::Result<RecentRequests> {
        Ok(serde_json::from_value(
            self.get_json("/test/requests").await?,
        )?)
    }

    /// Revokes every grant of `user`, and with it every token (refreshes then fail with
    /// invalid_grant). The user's browser session stays: a new authorization logs in without
    /// a prompt.
    pub async fn revoke_user(&self, user: &str) -> anyhow::Result<RevokeOutcome> {
        Ok(serde_json::from_value(
            self.post_json(&format!("/test/revoke?user={user}"), None)
                .await?,
        )?)
    }

    /// Like [`Self::revoke_user`], and ends the user's sessions: the next authorization
    /// logs in again.
    pub async fn sign_out_user(&self, user: &str) -> anyhow::Result<RevokeOutcome> {
        Ok(serde_json::from_value(
            self.post_json(&format!("/test/revoke?user={user}&sessions=true"), None)
                .await?,
        )?)
    }

    /// Adds or replaces a client at run time (e.g. once the gateway's callback URL is known).
    pub async fn upsert_client(&self, client: &IdpClient) -> anyhow::Result<()> {
        self.post_json("/test/clients", Some(&serde_json::to_value(client)?))
            .await
            .map(drop)
    }

    /// Adds or replaces an account at run time (new groups, disabled...).
    pub async fn upsert_account(&self, account: &IdpAccount) -> anyhow::Result<()> {
        self.post_json("/test/accounts", Some(&serde_json::to_value(account)?))
            .await
            .map(drop)
    }

    /// A token request authenticated as `client` (HTTP Basic, or `client_secret_post`, or
    /// just `client_id` for public clients). Returns the response whatever its status.
    pub async fn token_request(
        &self,
        client: &IdpClient,
        form: &[(&str, &str)],
    ) -> anyhow::Result<TokenResponse> {
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        let mut request = self.http.post(self.url("/token"));
        match (
            client.token_endpoint_auth_method.as_str(),
            &client.client_secret,
        ) {
            ("client_secret_post", Some(secret)) => {
                fields.push(("client_id", &client.client_id));
                fields.push(("client_secret", secret));
            }
            (_, Some(secret)) => {
                request = request.basic_auth(&client.client_id, Some(secret));
            }
            (_, None) => fields.push(("client_id", &client.client_id)),
        }
        let response = request
            .form(&fields)
            .send()
            .await
            .context("token request to the test IdP")?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let body = serde_json::from_str(&text)
            .with_context(|| format!("the token endpoint answered {status} with {text}"))?;
        Ok(TokenResponse { status, body })
    }

    /// RFC 7662 introspection of `token`, authenticated as `client`.
    pub async fn introspect(&self, client: &IdpClient, token: &str) -> anyhow::Result<Value> {
        let secret = client.client_secret.as_deref();
        let response = self
            .http
            .post(self.url("/token/introspection"))
            .basic_auth(&client.client_id, secret)
            .form(&[("token", token)])
            .send()
            .await
            .context("introspection request to the test IdP")?;
        self.json_body("/token/introspection", response).await
    }

    /// Client credentials for `resource` (a JWT access token with that `aud`) or, without
    /// one, an opaque token.
    pub async fn client_credentials(
        &self,
        client: &IdpClient,
        scope: Option<&str>,
        resource: Option<&str>,
    ) -> anyhow::Result<TokenResponse> {
        let mut form = vec![("grant_type", "client_credentials")];
        form.extend(scope.map(|scope| ("scope", scope)));
        form.extend(resource.map(|resource| ("resource", resource)));
        self.token_request(client, &form).await
    }

    pub async fn refresh(
        &self,
        client: &IdpClient,
        refresh_token: &str,
    ) -> anyhow::Result<TokenResponse> {
        self.token_request(
            client,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
        )
        .await
    }

    /// RFC 8693: exchanges `subject_token` (of `subject_token_type`) for an access token
    /// whose `aud` is `resource` (an absolute URI).
    pub async fn token_exchange(
        &self,
        client: &IdpClient,
        subject_token: &str,
        subject_token_type: &str,
        resource: &str,
        scope: Option<&str>,
    ) -> anyhow::Result<TokenResponse> {
        let mut form = vec![
            ("grant_type", TOKEN_EXCHANGE_GRANT_TYPE),
            ("subject_token", subject_token),
            ("subject_token_type", subject_token_type),
            ("resource", resource),
        ];
        form.extend(scope.map(|scope| ("scope", scope)));
        self.token_request(client, &form).await
    }

    /// An authorization request for `client` at its first redirect URI, with a fresh state,
    /// nonce and PKCE S256 pair.
    pub fn authorization_request(&self, client: &IdpClient) -> AuthorizationRequest {
        AuthorizationRequest {
            authorization_endpoint: self.url("/auth"),
            client_id: client.client_id.clone(),
            redirect_uri: client.redirect_uris.first().cloned().unwrap_or_default(),
            state: random_token(),
            pkce: Pkce::new(),
            scope: None,
            resource: None,
            extra: Vec::new(),
        }
    }

    /// The whole authorization-code flow: `browser` walks `request.url()` to the callback
    /// (logging in as its user), the state and RFC 9207 `iss` are checked, and the code is
    /// redeemed with the PKCE verifier. Returns the token response (check it with
    /// [`TokenResponse::expect_ok`]).
    pub async fn authorization_code_flow(
        &self,
        client: &IdpClient,
        request: &AuthorizationRequest,
        browser: &HeadlessBrowser,
    ) -> anyhow::Result<TokenResponse> {
        let outcome = browser.authorize(&request.url()).await?;
        let code = self.expect_authorization_code(request, &outcome)?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", request.redirect_uri.as_str()),
            ("code_verifier", request.pkce.verifier.as_str()),
        ];
        if let Some(resource) = &request.resource {
            form.push(("resource", resource));
        }
        self.token_request(client, &form).await
    }

    /// The code of a successful authorization response, after checking `state` and `iss`.
    pub fn expect_authorization_code<'a>(
        &self,
        request: &AuthorizationRequest,
        outcome: &'a BrowserOutcome,
    ) -> anyhow::Result<&'a str> {
        let param = |name: &str| outcome.params.get(name).map(String::as_str);
        if let Some(error) = param("error") {
            bail!(
                "the authorization failed: {error}: {}",
                param("error_description").unwrap_or_default()
            );
        }
        if param("state") != Some(request.state.as_str()) {
            bail!("state mismatch in {:?}", outcome.params);
        }
        if param("iss") != Some(self.issuer.as_str()) {
            bail!(
                "RFC 9207 iss is {:?}, expected {}",
                param("iss"),
                self.issuer
            );
        }
        param("code").with_context(|| format!("no code in {:?}", outcome.params))
    }

    /// Verifies a JWT this IdP signed (ID token or access token) against its current JWKS:
    /// signature, `iss`, `exp`, and `aud` when given. Returns the claims.
    pub async fn verify_jwt(&self, token: &str, audience: Option<&str>) -> anyhow::Result<Value> {
        let jwks = self.jwks().await?;
        jwt::verify(token, &jwks, &self.issuer, audience)
    }
}

/// `tests/idp/protected_mcp_server.py`: an MCP server (Python SDK) that accepts only JWT
/// access tokens of a [`TestIdp`] issued for its own URL (`aud`), and names that IdP in its
/// protected resource metadata. A real MCP client pointed at it runs the whole MCP
/// authorization flow against the IdP; it also stands in for an upstream that wants a user's
/// token from a "GitHub-like" provider. Tools: `whoami` (the token's sub, client_id, scopes,
/// aud, iss, email, groups as JSON) and `echo`.
#[derive(Debug)]
pub struct ProtectedMcpServer {
    /// `--record-tokens` file (tool-auth mode): every distinct token the server accepted.
    recorded_tokens: Option<PathBuf>,
    _scratch: Option<tempfile::TempDir>,
    process: ChildProcess,
}

impl ProtectedMcpServer {
    /// Starts it for `idp`, requiring `scopes` in every token.
    pub async fn start(idp: &TestIdp, scopes: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(idp, scopes, false).await
    }

    /// Starts it in `--tool-auth` mode: initialize and listing need no token, each tool
    /// checks the caller's token itself (a GitHub-like server behind an account-linking
    /// gateway). Tools `list_pull_requests`, `check_caller`, `caller_stats` answer per user.
    pub async fn start_with_tool_auth(idp: &TestIdp, scopes: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(idp, scopes, true).await
    }

    async fn start_with(idp: &TestIdp, scopes: &[&str], tool_auth: bool) -> anyhow::Result<Self> {
        let script = paths::tests_crate_dir()
            .join("idp")
            .join("protected_mcp_server.py");
        let mut command = crate::python_client::python_command(&script)?;
        command.arg("--issuer").arg(idp.issuer());
        for scope in scopes {
            command.arg("--scope").arg(scope);
        }
        let mut scratch = None;
        let mut recorded_tokens = None;
        if tool_auth {
            let folder = scratch_dir("protected-mcp-server")?;
            let file = folder.path().join("accepted-tokens.txt");
            command.arg("--tool-auth").arg("--record-tokens").arg(&file);
            recorded_tokens = Some(file);
            scratch = Some(folder);
        }
        let process = ChildProcess::start_listening(
            "protected-mcp-server",
            command,
            "protected-mcp-server listening on ",
        )
        .await?;
        Ok(Self {
            recorded_tokens,
            _scratch: scratch,
            process,
        })
    }

    /// Every distinct token the server accepted so far (tool-auth mode; empty otherwise).
    pub fn accepted_tokens(&self) -> Vec<String> {
        self.recorded_tokens
            .as_ref()
            .and_then(|file| std::fs::read_to_string(file).ok())
            .map(|text| text.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// The MCP endpoint and resource identifier, `http://127.0.0.1:<port>/mcp`.
    pub fn url(&self) -> String {
        self.process.http_url("/mcp")
    }

    pub fn process(&self) -> &ChildProcess {
        &self.process
    }
}

fn write_config(path: &Path, config: &IdpConfig) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(config)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build an HTTP client")
}

async fn spawn_idp(
    config_file: &Path,
    keys_file: &Path,
    port: u16,
    rotation: KeyRotation,
) -> anyhow::Result<ChildProcess> {
    let script = paths::tests_crate_dir().join("idp").join("test-idp.mjs");
    let mut command = Command::new(paths::node_binary()?);
    command
        .arg(script)
        .arg("--config")
        .arg(config_file)
        .arg("--keys-file")
        .arg(keys_file)
        .arg("--rotate-keys")
        .arg(rotation.flag())
        .arg("--port")
        .arg(port.to_string())
        .arg("--node-modules")
        .arg(paths::node_modules_dir()?)
        .env("NO_COLOR", "1");
    let mut process = ChildProcess::spawn("test-idp", command)?;
    process
        .wait_for_listening_line(LISTENING_LINE_PREFIX, DEFAULT_STARTUP_TIMEOUT)
        .await?;
    Ok(process)
}

/// A token endpoint response, successful or not.
#[derive(Debug, Clone)]
pub struct TokenResponse {
    pub status: u16,
    pub body: Value,
}

impl TokenResponse {
    /// Fails with the OAuth error unless the status is 200.
    pub fn expect_ok(self) -> anyhow::Result<Self> {
        if self.status != 200 {
            bail!("token request failed with {}: {}", self.status, self.body);
        }
        Ok(self)
    }

    /// Fails unless the response is the OAuth error `error`; returns its description.
    pub fn expect_error(&self, error: &str) -> anyhow::Result<String> {
        if self.status < 400 || self.error() != Some(error) {
            bail!(
                "expected the OAuth error {error}, got {}: {}",
                self.status,
                self.body
            );
        }
        Ok(self.body["error_description"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    fn string_field(&self, name: &str) -> anyhow::Result<&str> {
        self.body[name]
            .as_str()
            .with_context(|| format!("no {name} in the token response {}", self.body))
    }

    pub fn access_token(&self) -> anyhow::Result<&str> {
        self.string_field("access_token")
    }

    pub fn refresh_token(&self) -> anyhow::Result<&str> {
        self.string_field("refresh_token")
    }

    pub fn id_token(&self) -> anyhow::Result<&str> {
        self.string_field("id_token")
    }

    pub fn error(&self) -> Option<&str> {
        self.body["error"].as_str()
    }

    pub fn expires_in(&self) -> Option<u64> {
        self.body["expires_in"].as_u64()
    }
}

/// An authorization request (authorization code + PKCE S256) to the test IdP.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    pub authorization_endpoint: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub state: String,
    pub pkce: Pkce,
    pub scope: Option<String>,
    pub resource: Option<String>,
    pub extra: Vec<(String, String)>,
}

impl AuthorizationRequest {
    pub fn scope(mut self, scope: &str) -> Self {
        self.scope = Some(scope.to_owned());
        self
    }

    /// RFC 8707 resource: the access token becomes a JWT with this `aud`.
    pub fn resource(mut self, resource: &str) -> Self {
        self.resource = Some(resource.to_owned());
        self
    }

    /// Any other parameter (`prompt`, `login_hint`, `nonce`...).
    pub fn param(mut self, name: &str, value: &str) -> Self {
        self.extra.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn url(&self) -> String {
        let mut url = url::Url::parse(&self.authorization_endpoint)
            .expect("the authorization endpoint is a URL");
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &self.client_id)
                .append_pair("redirect_uri", &self.redirect_uri)
                .append_pair("state", &self.state)
                .append_pair("code_challenge", &self.pkce.challenge)
                .append_pair("code_challenge_method", "S256");
            if let Some(scope) = &self.scope {
                query.append_pair("scope", scope);
            }
            if let Some(resource) = &self.resource {
                query.append_pair("resource", resource);
            }
            for (name, value) in &self.extra {
                query.append_pair(name, value);
            }
        }
        url.into()
    }
}

/// A PKCE pair: a random verifier and its S256 challenge.
#[derive(Debug, Clone)]
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Self {
        let verifier = random_token();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
        Self {
            challenge: URL_SAFE_NO_PAD.encode(digest.as_ref()),
            verifier,
        }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Self::new()
    }
}

/// 32 random bytes, base64url: 43 characters (a valid PKCE verifier, state or nonce).
pub fn random_token() -> String {
    let mut bytes = [0_u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random generator works");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `/test/stats`.
#[derive(Debug, Clone, Deserialize)]
pub struct IdpStats {
    /// Token requests per grant type, failed ones included.
    pub token_requests: BTreeMap<String, u64>,
    /// Failed token requests per grant type.
    pub token_errors: BTreeMap<String, u64>,
    pub authorization_requests: u64,
    pub registrations: u64,
    pub introspections: u64,
    pub revocations: u64,
    pub userinfo_requests: u64,
    pub logins: u64,
    pub consents: u64,
    pub logins_by_user: BTreeMap<String, u64>,
}

impl IdpStats {
    pub fn token_requests(&self, grant_type: &str) -> u64 {
        self.token_requests.get(grant_type).copied().unwrap_or(0)
    }

    pub fn token_errors(&self, grant_type: &str) -> u64 {
        self.token_errors.get(grant_type).copied().unwrap_or(0)
    }

    /// Refresh-token grant requests (successful or not).
    pub fn refreshes(&self) -> u64 {
        self.token_requests("refresh_token")
    }
}

/// `/test/interactions`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct InteractionCounts {
    pub logins: u64,
    pub consents: u64,
    pub logins_by_user: BTreeMap<String, u64>,
}

/// `/test/requests`: recent requests, parameters without secrets.
#[derive(Debug, Clone, Deserialize)]
pub struct RecentRequests {
    /// Authorization request parameters (client_id, redirect_uri, scope, resource,
    /// code_challenge_method, state, prompt, login_hint...).
    pub authorization: Vec<BTreeMap<String, Value>>,
    pub token: Vec<RecentTokenRequest>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RecentTokenRequest {
    pub grant_type: Option<String>,
    pub client_id: Option<String>,
    pub status: u16,
    pub error: Option<String>,
    pub error_description: Option<String>,
    /// oidc-provider's reason, which it keeps out of the response (e.g. "refresh token already used").
    pub error_detail: Option<String>,
    pub scope: Option<String>,
    pub resource: Option<Value>,
    pub audience: Option<Value>,
    pub subject_token_type: Option<String>,
}

/// `/test/revoke`.
#[derive(Debug, Clone, Deserialize)]
pub struct RevokeOutcome {
    pub user: String,
    pub grants: u64,
    pub tokens: u64,
    pub sessions: u64,
}

/// JWT helpers for tests: read a token's parts, verify one against a JWKS.
pub mod jwt {
    use anyhow::{Context, bail};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{DecodingKey, Validation};
    use serde_json::Value;

    /// The header and claims of a JWT, without verifying anything.
    pub fn decode_unverified(token: &str) -> anyhow::Result<(Value, Value)> {
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            bail!("not a JWS compact serialisation: {token}");
        };
        let decode = |part: &str| -> anyhow::Result<Value> {
            let bytes = URL_SAFE_NO_PAD
                .decode(part)
                .context("a JWT part is not base64url")?;
            serde_json::from_slice(&bytes).context("a JWT part is not JSON")
        };
        Ok((decode(header)?, decode(claims)?))
    }

    /// The claims of a JWT, without verifying anything.
    pub fn claims_unverified(token: &str) -> anyhow::Result<Value> {
        Ok(decode_unverified(token)?.1)
    }

    /// Verifies the signature (key chosen by `kid` in `jwks`), `iss`, `exp` and, when given,
    /// `aud`. Returns the claims.
    pub fn verify(
        token: &str,
        jwks: &Value,
        issuer: &str,
        audience: Option<&str>,
    ) -> anyhow::Result<Value> {
        let header = jsonwebtoken::decode_header(token).context("unreadable JWT header")?;
        let kid = header.kid.context("the JWT has no kid")?;
        let keys: JwkSet = serde_json::from_value(jwks.clone()).context("unreadable JWKS")?;
        let jwk = keys
            .find(&kid)
            .with_context(|| format!("kid {kid} is not in the JWKS"))?;
        let key = DecodingKey::from_jwk(jwk).context("unusable JWK")?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[issuer]);
        match audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .context("JWT verification failed")?;
        Ok(data.claims)
    }
}

/// "corp", the identity provider the end-to-end tests register at the gateway for
/// Interactive SSO, with the gateway as its confidential client.
pub mod corp {
    use portcullis_proto::v1 as proto;

    use super::IdpClient;
    use crate::gateway::servers::secret;

    pub const ID: &str = "corp";
    pub const CLIENT_ID: &str = "portcullis";
    pub const CLIENT_SECRET: &str = "portcullis-idp-secret";

    /// The gateway as a client of the identity provider, signing users in through the node
    /// at `public_url`.
    pub fn gateway_client(public_url: &str) -> IdpClient {
        IdpClient::confidential(
            CLIENT_ID,
            CLIENT_SECRET,
            &[&format!("{public_url}/oauth/callback")],
        )
    }

    /// The gateway's registration of the identity provider at `issuer`, asking for `scopes`.
    pub fn registration(issuer: &str, scopes: &[&str]) -> proto::IdentityProvider {
        proto::IdentityProvider {
            id: ID.to_owned(),
            display_name: "Corp SSO".to_owned(),
            issuer: issuer.to_owned(),
            client_id: CLIENT_ID.to_owned(),
            client_secret: secret(CLIENT_SECRET),
            scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
            ..proto::IdentityProvider::default()
        }
    }
}

//! Per-user OAuth 2.1 Authorization app auth: each user connects their own account at the
//! app's provider (GitHub, Google, Slack...) once, and every later call of theirs goes
//! upstream with their own token (DESIGN.md flow 4).
//!
//! - [`crate::vault`]: the node's in-memory cache of users' access tokens, fed by the
//!   control plane's vault (which stores and refreshes them) and invalidated by its watch.
//! - [`prompt`]: the MCP-native "connect your account" prompt a user without a link gets,
//!   in the form their client understands (URL elicitation for 2026-07-28 and 2025-11-25
//!   clients that declared it, else a tool result carrying the link).
//! - [`sessions`]: what each 2025-11-25 session declared at `initialize`.
//! - [`link`]: the sealed values of the flow (the link, the login and authorization states).
//! - [`flow`]: `GET /connect/{app}` (the link), the login that proves the user is the
//!   link's user, the provider's authorization, `GET /connect/callback` (the code exchange
//!   and `PutUserToken`).
//! - [`provider`]: the app provider's authorization URL and code exchange.
//! - [`me`]: `GET /me/links`, `DELETE /me/links/{app}`, `GET /me/credentials`,
//!   `PUT`/`DELETE /me/credentials/{credential}`, for users.
//!
//! | route | what |
//! |---|---|
//! | `GET /connect/{app}?request=<sealed>` | the prompt's link: login at the identity provider, then the app's provider |
//! | `GET /oauth/callback` (a `pcl1` state) | the identity provider's answer to that login |
//! | `GET /connect/callback` | the app provider's answer: the code exchanged, the tokens stored |
//! | `GET /me/links`, `DELETE /me/links/{app}` | a user's own links (gateway access token) |
//! | `GET /me/credentials`, `PUT`/`DELETE /me/credentials/{credential}` | a user's own values of stored credentials (gateway access token) |
//!
//! The app's OAuth client must have `P/connect/callback` among its redirect URIs; the
//! identity provider's client already has `P/oauth/callback`.

pub mod flow;
pub mod link;
pub mod me;
pub mod prompt;
pub mod provider;
pub mod sessions;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::{delete, get, put};

use crate::connect::link::ConnectLogin;
use crate::connect::sessions::ClientSessions;
use crate::oauth::runtime::RuntimeClient;
use crate::proxy::NodeState;
use crate::vault::UserTokenVault;

/// What per-user app auth shares on a node.
pub struct AccountLinking {
    /// Users' access tokens, cached.
    pub vault: Arc<UserTokenVault>,
    /// What each 2025-11-25 session's client declared.
    pub sessions: ClientSessions,
    /// For the providers' token endpoints.
    pub http: reqwest::Client,
}

impl std::fmt::Debug for AccountLinking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountLinking")
            .field("vault", &self.vault)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl AccountLinking {
    pub fn new(runtime: Option<RuntimeClient>) -> Result<Self, reqwest::Error> {
        Ok(Self {
            vault: Arc::new(UserTokenVault::new(runtime)),
            sessions: ClientSessions::default(),
            http: provider::http_client()?,
        })
    }
}

/// The routes, merged into the node's router.
pub fn routes() -> Router<Arc<NodeState>> {
    Router::new()
        .route("/connect/callback", get(flow::provider_callback))
        .route("/connect/{app}", get(flow::start))
        .route("/me/links", get(me::list))
        .route("/me/links/{app}", delete(me::delete))
        .route("/me/credentials", get(me::list_credentials))
        .route(
            "/me/credentials/{credential}",
            put(me::put_credential).delete(me::delete_credential),
        )
}

/// `GET /oauth/callback`: the identity provider's answers, for Interactive SSO sign-ins and
/// for the logins of account links (told apart by their sealed `state`).
pub async fn identity_provider_callback(
    State(node): State<Arc<NodeState>>,
    request: Request,
) -> Response {
    let is_link_login =
        crate::oauth::http::Parameters::parse(request.uri().query().unwrap_or_default().as_bytes())
            .ok()
            .and_then(|parameters| parameters.get("state").map(ConnectLogin::is_one))
            .unwrap_or(false);
    if is_link_login {
        let (parts, _) = request.into_parts();
        flow::after_login(&node, parts.uri.query(), &parts.headers).await
    } else {
        crate::oauth::authorize::callback(State(node), request).await
    }
}

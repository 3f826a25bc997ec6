//! Pieces of the per-user app-auth tests (account linking, users' self-service, the
//! product document's examples 1 and 4):
//!
//! - [`PublicUrl`]: the fleet's public URL (every node's `--public-url`), a small proxy
//!   pinned to one node at a time, so a user's whole session runs on the node a test
//!   chooses while links and redirects stay on one URL.
//! - [`gateway_token`]: a gateway access token for a browser's user, obtained as an MCP
//!   client does (dynamic registration, authorization through the browser, the code
//!   redeemed with PKCE).
//! - [`link_in`]: the `/connect/` link in a prompt's text.
//! - [`collect_files`]: every file under a folder, to look for secrets at rest.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::{Value, json};

use crate::browser::HeadlessBrowser;
use crate::idp::{Pkce, random_token};

#[derive(Clone)]
struct Pinned {
    target: Arc<Mutex<Option<SocketAddr>>>,
    client: reqwest::Client,
}

/// Hop-by-hop headers a proxy must not pass on (RFC 9110 section 7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

async fn forward(State(pinned): State<Pinned>, request: Request) -> Response {
    let Some(target) = *pinned.target.lock().unwrap() else {
        return Response::builder().status(503).body(Body::empty()).unwrap();
    };
    forward_to(&pinned.client, target, request).await
}

/// Sends `request` on to `target` as a reverse proxy does: the same method, path, query
/// and end-to-end headers, the body up to 4 MiB (413 beyond), the answer streamed back
/// without its hop-by-hop headers (502 when `target` cannot be reached).
pub async fn forward_to(
    client: &reqwest::Client,
    target: SocketAddr,
    request: Request,
) -> Response {
    let error = |status: u16, message: String| {
        Response::builder()
            .status(status)
            .body(Body::from(message))
            .unwrap()
    };
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|value| value.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let body = match axum::body::to_bytes(body, 4 * 1024 * 1024).await {
        Ok(body) => body,
        Err(failure) => return error(413, failure.to_string()),
    };
    let mut outgoing = client.request(parts.method.clone(), format!("http://{target}{path}"));
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            outgoing = outgoing.header(name, value);
        }
    }
    let response = match outgoing.body(body).send().await {
        Ok(response) => response,
        Err(failure) => return error(502, failure.to_string()),
    };
    let mut builder = Response::builder().status(response.status());
    for (name, value) in response.headers() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            builder = builder.header(name, value);
        }
    }
    builder
        .body(Body::from_stream(response.bytes_stream()))
        .unwrap()
}

/// The fleet's public URL: a proxy that sends everything to the node it is pinned to (503
/// before [`PublicUrl::pin`]). Stops when dropped.
pub struct PublicUrl {
    address: SocketAddr,
    pinned: Pinned,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PublicUrl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PublicUrl {
    pub async fn start() -> anyhow::Result<Self> {
        let pinned = Pinned {
            target: Arc::new(Mutex::new(None)),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .build()?,
        };
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(pinned.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Ok(Self {
            address,
            pinned,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Sends the public URL's traffic to this node from now on.
    pub fn pin(&self, node: SocketAddr) {
        *self.pinned.target.lock().unwrap() = Some(node);
    }
}

/// A gateway access token of the browser's user for `resource` (`<public URL>/mcp/<server>`):
/// dynamic registration at `public_url`, the authorization through the browser (consent,
/// the identity provider's login), the code redeemed with PKCE, as an MCP client does.
pub async fn gateway_token(
    public_url: &str,
    resource: &str,
    browser: &HeadlessBrowser,
) -> anyhow::Result<String> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()?;
    let redirect_uri = "http://127.0.0.1:9/callback";
    let registration: Value = http
        .post(format!("{public_url}/oauth/register"))
        .json(&json!({
            "client_name": "portcullis e2e", "redirect_uris": [redirect_uri],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
        }))
        .send()
        .await?
        .json()
        .await?;
    let client_id = registration["client_id"]
        .as_str()
        .with_context(|| format!("no client_id: {registration}"))?;
    let pkce = Pkce::new();
    let state = random_token();
    let mut url = url::Url::parse(&format!("{public_url}/oauth/authorize"))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("resource", resource)
        .append_pair("state", &state);
    let outcome = browser.authorize(url.as_str()).await?;
    let code = outcome
        .param("code")
        .with_context(|| format!("no code: {outcome:#?}"))?
        .to_owned();
    let tokens: Value = http
        .post(format!("{public_url}/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", &pkce.verifier),
            ("client_id", client_id),
            ("resource", resource),
        ])
        .send()
        .await?
        .json()
        .await?;
    tokens["access_token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no access token: {tokens}"))
}

/// The first `/connect/` link in a text.
pub fn link_in(text: &str) -> String {
    text.split_whitespace()
        .find(|word| word.contains("/connect/"))
        .unwrap_or_else(|| panic!("no link in {text:?}"))
        .to_owned()
}

/// Every file under `folder`, with its bytes.
pub fn collect_files(folder: &std::path::Path, into: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, into);
        } else if let Ok(content) = std::fs::read(&path) {
            into.push((path, content));
        }
    }
}

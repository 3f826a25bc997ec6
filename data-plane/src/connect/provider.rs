//! The app's OAuth provider (GitHub, Google, Slack...): the authorization URL the user is
//! sent to, and the exchange of the code it returns, as the catalog entry
//! ([`OAuthApp`]) describes them. Differences between providers are settings of the entry
//! (`token_endpoint_auth_method`, scopes, extra authorize parameters), never code branches.
//!
//! - Authorization: code + PKCE S256 + `state`, the app's client id, scopes (the server's,
//!   else the app's defaults), `resource` (RFC 8707: the MCP server's upstream URL, as the
//!   MCP authorization spec has clients send it, in the code exchange too; providers that do
//!   not know the parameter ignore it), the entry's extra parameters (they cannot override
//!   the protocol's own; shared validation refuses them already).
//! - Exchange: `Accept: application/json` (GitHub answers form-encoded without it; a
//!   form-encoded answer is read too), client authentication per
//!   `token_endpoint_auth_method`, bounded in time and size, no redirects. A missing
//!   `expires_in` means the token does not expire (stored as 0), not a default lifetime.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::BytesMut;
use portcullis_shared::config::{OAuthApp, TokenEndpointAuthMethod};
use portcullis_shared::secret::SecretValue;
use serde_json::{Map, Value};
use url::Url;

use crate::oauth::runtime::NewUserTokens;

/// A code exchange ends after this long.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest token response read.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Parameters of the authorization request that an app's extra parameters cannot replace
/// (the same list shared validation enforces).
const PROTOCOL_PARAMETERS: [&str; 9] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "resource",
    "nonce",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("the provider could not be reached: {0}")]
    Unreachable(String),
    /// An OAuth error from the token endpoint: its code only (the description may echo
    /// input).
    #[error("the provider refused the code: HTTP {status} {error}")]
    Refused { status: u16, error: String },
    #[error("the provider's answer is unusable: {0}")]
    Malformed(String),
}

/// The HTTP client for providers' token endpoints: bounded, no redirects (a redirect would
/// carry the client secret somewhere else).
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(EXCHANGE_TIMEOUT)
        .timeout(EXCHANGE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("portcullis-node/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The scopes asked for: the server's when it names some, else the app's defaults.
pub fn requested_scopes(server_scopes: &[String], app: &OAuthApp<SecretValue>) -> String {
    if server_scopes.is_empty() {
        app.default_scopes
            .iter()
            .map(|scope| scope.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        server_scopes.join(" ")
    }
}

/// Where the user's browser goes to authorize the gateway at the provider.
pub fn authorization_url(
    app: &OAuthApp<SecretValue>,
    scope: &str,
    resource: &str,
    redirect_uri: &str,
    state: &str,
    code_challenge: &str,
) -> Url {
    let mut url = app.authorize_url.clone();
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &app.client_id)
            .append_pair("redirect_uri", redirect_uri);
        if !scope.is_empty() {
            query.append_pair("scope", scope);
        }
        query
            .append_pair("resource", resource)
            .append_pair("state", state)
            .append_pair("code_challenge", code_challenge)
            .append_pair("code_challenge_method", "S256");
        for (name, value) in &app.extra_authorize_params {
            if !PROTOCOL_PARAMETERS.contains(&name.as_str()) {
                query.append_pair(name, value);
            }
        }
    }
    url
}

fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, ProviderError> {
    let too_large = || ProviderError::Malformed(format!("more than {MAX_RESPONSE_BYTES} bytes"));
    if response
        .content_length()
        .is_some_and(|length| length > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| ProviderError::Unreachable(error.without_url().to_string()))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.to_vec())
}

/// A token response as fields: JSON, or form-encoded (what GitHub sends without
/// `Accept: application/json`).
fn fields(content_type: &str, body: &[u8]) -> Option<Map<String, Value>> {
    if content_type.starts_with("application/x-www-form-urlencoded") {
        return Some(
            url::form_urlencoded::parse(body)
                .map(|(name, value)| (name.into_owned(), Value::String(value.into_owned())))
                .collect(),
        );
    }
    serde_json::from_slice(body).ok()
}

fn text(fields: &Map<String, Value>, name: &str) -> Option<String> {
    fields
        .get(name)
        .and_then(Value::as_str)
        .filter(|value| !value.is_empty())
        .map(str::to_owned)
}

/// The RFC 8707 resource of an MCP server's upstream: its URL without a fragment, and
/// without the `/` a URL parser gives a pathless URL (`https://mcp.example.com`, not
/// `https://mcp.example.com/`: the MCP specification's canonical form, and authorization
/// servers compare resources as strings).
pub fn resource_of(upstream_url: &Url) -> String {
    let mut url = upstream_url.clone();
    url.set_fragment(None);
    let text = url.to_string();
    if url.path() == "/" && url.query().is_none() {
        text.trim_end_matches('/').to_owned()
    } else {
        text
    }
}

/// What a code exchange sends besides the code.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    pub code: &'a str,
    pub redirect_uri: &'a str,
    pub code_verifier: &'a str,
    pub resource: &'a str,
}

/// Redeems the provider's code for the user's tokens.
pub async fn exchange_code(
    http: &reqwest::Client,
    app: &OAuthApp<SecretValue>,
    exchange: Exchange<'_>,
    now_unix: i64,
) -> Result<NewUserTokens, ProviderError> {
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", "authorization_code"),
        ("code", exchange.code),
        ("redirect_uri", exchange.redirect_uri),
        ("code_verifier", exchange.code_verifier),
        ("resource", exchange.resource),
    ];
    let mut request = http
        .post(app.token_url.clone())
        .header(http::header::ACCEPT, "application/json");
    match (app.token_endpoint_auth_method, &app.client_secret) {
        (TokenEndpointAuthMethod::ClientSecretBasic, Some(secret)) => {
            // RFC 6749 section 2.3.1: both parts form-encoded, then base64.
            let credentials = format!(
                "{}:{}",
                form_encode(&app.client_id),
                form_encode(secret.expose())
            );
            let mut value =
                http::HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(credentials)))
                    .map_err(|_| {
                        ProviderError::Malformed("the client credentials cannot be sent".to_owned())
                    })?;
            value.set_sensitive(true);
            request = request.header(http::header::AUTHORIZATION, value);
        }
        (TokenEndpointAuthMethod::ClientSecretPost, Some(secret)) => {
            form.push(("client_id", &app.client_id));
            form.push(("client_secret", secret.expose()));
        }
        (TokenEndpointAuthMethod::None, _)
        | (TokenEndpointAuthMethod::ClientSecretBasic, None)
        | (TokenEndpointAuthMethod::ClientSecretPost, None) => {
            form.push(("client_id", &app.client_id));
        }
    }
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.iter())
        .finish();
    let response = request
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body)
        .send()
        .await
        .map_err(|error| ProviderError::Unreachable(error.without_url().to_string()))?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let body = read_bounded(response).await?;
    let fields = fields(&content_type, &body);
    // GitHub answers errors with 200 and an `error` field.
    if let Some(error) = fields.as_ref().and_then(|fields| text(fields, "error")) {
        return Err(ProviderError::Refused {
            status: status.as_u16(),
            error: error
                .chars()
                .filter(char::is_ascii_graphic)
                .take(64)
                .collect(),
        });
    }
    if !status.is_success() {
        return Err(ProviderError::Refused {
            status: status.as_u16(),
            error: "(no OAuth error code)".to_owned(),
        });
    }
    let fields = fields.ok_or_else(|| {
        ProviderError::Malformed("the token response is neither JSON nor a form".to_owned())
    })?;
    let access_token = text(&fields, "access_token")
        .ok_or_else(|| ProviderError::Malformed("no access_token".to_owned()))?;
    let expires_in = fields.get("expires_in").and_then(|value| match value {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    });
    Ok(NewUserTokens {
        access_token: SecretValue::new(access_token),
        refresh_token: text(&fields, "refresh_token").map(SecretValue::new),
        token_type: text(&fields, "token_type").unwrap_or_else(|| "Bearer".to_owned()),
        expires_at_unix: expires_in
            .filter(|seconds| *seconds > 0)
            .map(|seconds| now_unix.saturating_add(seconds))
            .unwrap_or(0),
        scope: text(&fields, "scope").unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::State;
    use axum::response::IntoResponse;
    use http::{HeaderMap, StatusCode};
    use portcullis_shared::names::{CatalogId, Scope};
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    pub(crate) fn app(token_url: &str, method: TokenEndpointAuthMethod) -> OAuthApp<SecretValue> {
        OAuthApp {
            app_id: CatalogId::parse("github").unwrap(),
            display_name: "GitHub".to_owned(),
            authorize_url: Url::parse("https://github.example.com/login/oauth/authorize?x=1")
                .unwrap(),
            token_url: Url::parse(token_url).unwrap(),
            revocation_url: None,
            client_id: "gh client".to_owned(),
            client_secret: Some(SecretValue::new("gh:secret")),
            default_scopes: vec![
                Scope::parse("repo").unwrap(),
                Scope::parse("read:user").unwrap(),
            ],
            extra_authorize_params: BTreeMap::from([
                ("allow_signup".to_owned(), "false".to_owned()),
                ("state".to_owned(), "overridden?".to_owned()),
                (
                    "resource".to_owned(),
                    "https://api.example.com/mcp".to_owned(),
                ),
            ]),
            token_endpoint_auth_method: method,
        }
    }

    #[test]
    fn the_authorization_url_has_pkce_state_scopes_and_extra_parameters() {
        let app = app("https://x/token", TokenEndpointAuthMethod::ClientSecretPost);
        let scope = requested_scopes(&[], &app);
        assert_eq!(scope, "repo read:user");
        assert_eq!(requested_scopes(&["issues".to_owned()], &app), "issues");
        let url = authorization_url(
            &app,
            &scope,
            "https://api.example.com/mcp",
            "https://gw/connect/callback",
            "st",
            "ch",
        );
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let get = |name: &str| {
            pairs
                .iter()
                .filter(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("x"), ["1"]);
        assert_eq!(get("response_type"), ["code"]);
        assert_eq!(get("client_id"), ["gh client"]);
        assert_eq!(get("scope"), ["repo read:user"]);
        assert_eq!(
            get("state"),
            ["st"],
            "extra parameters cannot replace state"
        );
        assert_eq!(get("code_challenge_method"), ["S256"]);
        assert_eq!(get("allow_signup"), ["false"]);
        assert_eq!(get("resource"), ["https://api.example.com/mcp"]);
        assert_eq!(
            resource_of(&Url::parse("https://API.example.com/mcp#x").unwrap()),
            "https://api.example.com/mcp"
        );
        // A pathless upstream: no trailing slash added; a path keeps its own.
        assert_eq!(
            resource_of(&Url::parse("https://mcp.example.com").unwrap()),
            "https://mcp.example.com"
        );
        assert_eq!(
            resource_of(&Url::parse("http://127.0.0.1:8080/#f").unwrap()),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            resource_of(&Url::parse("https://mcp.example.com/mcp/").unwrap()),
            "https://mcp.example.com/mcp/"
        );
        assert_eq!(
            resource_of(&Url::parse("https://mcp.example.com/?tenant=a").unwrap()),
            "https://mcp.example.com/?tenant=a"
        );
    }

    #[derive(Default)]
    struct Seen {
        form: Mutex<Vec<(String, String)>>,
        authorization: Mutex<Option<String>>,
        accept: Mutex<Option<String>>,
    }

    /// Status, content type and body of the scripted answer.
    type Answer = Arc<(StatusCode, &'static str, String)>;

    async fn token_endpoint(
        State((seen, answer)): State<(Arc<Seen>, Answer)>,
        headers: HeaderMap,
        body: String,
    ) -> axum::response::Response {
        *seen.form.lock().unwrap() = url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        *seen.authorization.lock().unwrap() = headers
            .get("authorization")
            .map(|value| value.to_str().unwrap().to_owned());
        *seen.accept.lock().unwrap() = headers
            .get("accept")
            .map(|value| value.to_str().unwrap().to_owned());
        let (status, content_type, body) = (*answer).clone();
        (status, [("content-type", content_type)], body).into_response()
    }

    async fn endpoint(
        status: StatusCode,
        content_type: &'static str,
        body: &str,
    ) -> (String, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let app = axum::Router::new()
            .route("/token", axum::routing::post(token_endpoint))
            .with_state((
                seen.clone(),
                Arc::new((status, content_type, body.to_owned())),
            ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{address}/token"), seen)
    }

    fn exchange<'a>(code: &'a str, code_verifier: &'a str) -> Exchange<'a> {
        Exchange {
            code,
            redirect_uri: "https://gw/connect/callback",
            code_verifier,
            resource: "https://api.example.com/mcp",
        }
    }

    fn form_value(seen: &Seen, name: &str) -> Option<String> {
        seen.form
            .lock()
            .unwrap()
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    }

    #[tokio::test]
    async fn the_exchange_uses_the_apps_authentication_method() {
        let answer = r#"{"access_token":"gho_1","refresh_token":"ghr_1","token_type":"bearer","expires_in":28800,"scope":"repo"}"#;
        let (url, seen) = endpoint(StatusCode::OK, "application/json", answer).await;
        let http = http_client().unwrap();
        let tokens = exchange_code(
            &http,
            &app(&url, TokenEndpointAuthMethod::ClientSecretPost),
            exchange("code-1", "verifier-1"),
            1_000,
        )
        .await
        .unwrap();
        assert_eq!(tokens.access_token.expose(), "gho_1");
        assert_eq!(tokens.refresh_token.as_ref().unwrap().expose(), "ghr_1");
        assert_eq!(tokens.expires_at_unix, 1_000 + 28_800);
        assert_eq!(tokens.scope, "repo");
        assert_eq!(
            form_value(&seen, "client_secret").as_deref(),
            Some("gh:secret")
        );
        assert_eq!(
            form_value(&seen, "code_verifier").as_deref(),
            Some("verifier-1")
        );
        assert_eq!(
            form_value(&seen, "resource").as_deref(),
            Some("https://api.example.com/mcp"),
            "RFC 8707 in the code exchange too"
        );
        assert_eq!(
            seen.accept.lock().unwrap().as_deref(),
            Some("application/json")
        );
        assert!(seen.authorization.lock().unwrap().is_none());

        exchange_code(
            &http,
            &app(&url, TokenEndpointAuthMethod::ClientSecretBasic),
            exchange("code-2", "verifier-2"),
            1_000,
        )
        .await
        .unwrap();
        let basic = seen.authorization.lock().unwrap().clone().unwrap();
        let decoded = STANDARD
            .decode(basic.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "gh+client:gh%3Asecret");
        assert_eq!(form_value(&seen, "client_secret"), None);

        exchange_code(
            &http,
            &app(&url, TokenEndpointAuthMethod::None),
            exchange("code-3", "verifier-3"),
            1_000,
        )
        .await
        .unwrap();
        assert!(seen.authorization.lock().unwrap().is_none());
        assert_eq!(form_value(&seen, "client_id").as_deref(), Some("gh client"));
        assert_eq!(form_value(&seen, "client_secret"), None);
    }

    #[tokio::test]
    async fn form_answers_tokens_without_expiry_and_errors_in_200s() {
        let (url, _) = endpoint(
            StatusCode::OK,
            "application/x-www-form-urlencoded",
            "access_token=gho_2&scope=repo&token_type=bearer",
        )
        .await;
        let http = http_client().unwrap();
        let app = app(&url, TokenEndpointAuthMethod::ClientSecretPost);
        let tokens = exchange_code(&http, &app, exchange("c", "v"), 1_000)
            .await
            .unwrap();
        assert_eq!(tokens.access_token.expose(), "gho_2");
        assert_eq!(tokens.expires_at_unix, 0, "no expires_in: no expiry");
        assert!(tokens.refresh_token.is_none());

        let (url, _) = endpoint(
            StatusCode::OK,
            "application/json",
            r#"{"error":"bad_verification_code","error_description":"The code gho_secret is wrong"}"#,
        )
        .await;
        let error = exchange_code(
            &http,
            &super::tests::app(&url, TokenEndpointAuthMethod::ClientSecretPost),
            exchange("c", "v"),
            0,
        )
        .await
        .unwrap_err();
        assert_eq!(
            error,
            ProviderError::Refused {
                status: 200,
                error: "bad_verification_code".to_owned()
            }
        );
        assert!(!error.to_string().contains("gho_secret"));
    }
}

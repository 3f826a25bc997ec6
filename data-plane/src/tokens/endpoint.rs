//! Requests to OAuth token endpoints (RFC 6749 section 3.2), shared by every grant the node
//! makes itself: client credentials (service tokens), token exchange (RFC 8693) and the
//! identity provider's refresh.
//!
//! The client authenticates with HTTP Basic (`client_secret_basic`, RFC 6749 section
//! 2.3.1: id and secret form-encoded, then base64), or by `client_secret_post` where the
//! configuration says so. Responses are bounded in size and time, redirects are refused
//! (a token endpoint is an exact, configured URL: a redirect would carry the client secret
//! elsewhere), and errors keep only the provider's error code: its description may echo
//! input, and nothing of a request's secrets ever reaches a log line.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::BytesMut;
use portcullis_shared::secret::SecretValue;
use serde_json::{Map, Value};
use url::Url;

/// A token request ends after this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest token response read.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Lifetimes above this are treated as this (a day): a token is fetched again at least daily.
pub const MAX_LIFETIME_SECS: u64 = 24 * 3600;
/// The lifetime assumed when a response has no `expires_in` (RFC 6749 makes it optional).
pub const DEFAULT_LIFETIME_SECS: u64 = 300;

/// How the client proves itself to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthentication {
    /// HTTP Basic, RFC 6749 section 2.3.1 (every server must support it).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

/// A client of a token endpoint: its URL and the client's credentials.
#[derive(Clone)]
pub struct TokenClient {
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: Option<SecretValue>,
    pub authentication: ClientAuthentication,
}

impl std::fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenClient")
            .field("token_url", &self.token_url.as_str())
            .field("client_id", &self.client_id)
            .field("authentication", &self.authentication)
            .finish_non_exhaustive()
    }
}

/// A successful token response (RFC 6749 section 5.1, RFC 8693 section 2.2.1).
#[derive(Clone)]
pub struct TokenResponse {
    pub access_token: SecretValue,
    pub token_type: Option<String>,
    /// Seconds, clamped to [`MAX_LIFETIME_SECS`]; [`DEFAULT_LIFETIME_SECS`] when absent.
    pub expires_in_secs: u64,
    pub refresh_token: Option<SecretValue>,
    pub scope: Option<String>,
    /// RFC 8693: the type of the issued token.
    pub issued_token_type: Option<String>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in_secs", &self.expires_in_secs)
            .field("refresh_token", &self.refresh_token.is_some())
            .field("scope", &self.scope)
            .field("issued_token_type", &self.issued_token_type)
            .finish_non_exhaustive()
    }
}

/// Why a token request failed. Messages carry no secret and no provider description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenEndpointError {
    /// The provider answered with an OAuth error (RFC 6749 section 5.2).
    #[error("the token endpoint refused the request: {status} {error}")]
    Refused { status: u16, error: String },
    #[error("the token endpoint could not be reached: {0}")]
    Unreachable(String),
    #[error("the token endpoint's answer is unusable: {0}")]
    Malformed(String),
}

impl TokenEndpointError {
    /// True when asking again with the same input cannot succeed until someone changes
    /// something (the grant, the client's credentials or its configuration); false for
    /// failures that may pass on their own (network, 5xx, rate limits).
    pub fn is_permanent(&self) -> bool {
        match self {
            TokenEndpointError::Refused { status, error } => {
                *status < 500
                    && *status != 429
                    && matches!(
                        error.as_str(),
                        "invalid_grant"
                            | "invalid_client"
                            | "unauthorized_client"
                            | "invalid_scope"
                            | "invalid_target"
                            | "invalid_request"
                            | "unsupported_grant_type"
                    )
            }
            TokenEndpointError::Unreachable(_) | TokenEndpointError::Malformed(_) => false,
        }
    }

    /// The OAuth error code, when the provider sent one.
    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            TokenEndpointError::Refused { error, .. } => Some(error),
            TokenEndpointError::Unreachable(_) | TokenEndpointError::Malformed(_) => None,
        }
    }
}

/// The HTTP client for token endpoints: bounded, no redirects.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(REQUEST_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("portcullis-node/", env!("CARGO_PKG_VERSION")))
        .build()
}

fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, TokenEndpointError> {
    let too_large = || {
        TokenEndpointError::Malformed(format!("the response exceeds {MAX_RESPONSE_BYTES} bytes"))
    };
    if response
        .content_length()
        .is_some_and(|length| length > MAX_RESPONSE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(|error| {
        TokenEndpointError::Unreachable(format!("reading the response: {error}"))
    })? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.to_vec())
}

/// `expires_in` as a number or a numeric string (some providers send strings).
fn expires_in(document: &Map<String, Value>) -> u64 {
    let seconds = match document.get("expires_in") {
        Some(Value::Number(number)) => number.as_u64(),
        Some(Value::String(text)) => text.trim().parse().ok(),
        _ => None,
    };
    seconds
        .unwrap_or(DEFAULT_LIFETIME_SECS)
        .min(MAX_LIFETIME_SECS)
}

fn text(document: &Map<String, Value>, name: &str) -> Option<String> {
    document
        .get(name)
        .and_then(Value::as_str)
        .filter(|value| !value.is_empty())
        .map(str::to_owned)
}

impl TokenClient {
    /// Posts `parameters` (the grant and its inputs) to the token endpoint with the client's
    /// authentication, and reads the token response.
    pub async fn request(
        &self,
        http: &reqwest::Client,
        parameters: &[(&str, &str)],
    ) -> Result<TokenResponse, TokenEndpointError> {
        let mut form: Vec<(&str, &str)> = parameters.to_vec();
        let mut request = http
            .post(self.token_url.clone())
            .header(http::header::ACCEPT, "application/json");
        match (&self.client_secret, self.authentication) {
            (Some(secret), ClientAuthentication::Basic) => {
                let credentials = format!(
                    "{}:{}",
                    form_encode(&self.client_id),
                    form_encode(secret.expose())
                );
                let mut value =
                    http::HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(credentials)))
                        .map_err(|_| {
                            TokenEndpointError::Malformed(
                                "the client credentials cannot be sent".to_owned(),
                            )
                        })?;
                value.set_sensitive(true);
                request = request.header(http::header::AUTHORIZATION, value);
            }
            (Some(secret), ClientAuthentication::Post) => {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", secret.expose()));
            }
            (None, ClientAuthentication::Basic | ClientAuthentication::Post) => {
                form.push(("client_id", &self.client_id));
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
            .map_err(|error| TokenEndpointError::Unreachable(error.without_url().to_string()))?;
        let status = response.status();
        let body = read_bounded(response).await?;
        let document: Map<String, Value> = serde_json::from_slice(&body).map_err(|_| {
            if status.is_success() {
                TokenEndpointError::Malformed("the token response is not a JSON object".to_owned())
            } else {
                TokenEndpointError::Refused {
                    status: status.as_u16(),
                    error: "(no JSON error body)".to_owned(),
                }
            }
        })?;
        if !status.is_success() {
            let error = document
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("(no error code)")
                .chars()
                .filter(|character| character.is_ascii_graphic())
                .take(64)
                .collect::<String>();
            return Err(TokenEndpointError::Refused {
                status: status.as_u16(),
                error,
            });
        }
        let access_token = text(&document, "access_token").ok_or_else(|| {
            TokenEndpointError::Malformed("the token response has no access_token".to_owned())
        })?;
        Ok(TokenResponse {
            access_token: SecretValue::new(access_token),
            token_type: text(&document, "token_type"),
            expires_in_secs: expires_in(&document),
            refresh_token: text(&document, "refresh_token").map(SecretValue::new),
            scope: text(&document, "scope"),
            issued_token_type: text(&document, "issued_token_type"),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::extract::State;
    use axum::response::IntoResponse;
    use http::{HeaderMap, StatusCode};

    /// What the scripted token endpoint saw, and what it answers.
    #[derive(Default)]
    pub(crate) struct EndpointState {
        /// Requests that arrived, answered or still held at the gate.
        pub started: AtomicUsize,
        /// Requests answered.
        pub requests: AtomicUsize,
        pub last_form: std::sync::Mutex<Vec<(String, String)>>,
        pub last_authorization: std::sync::Mutex<Option<String>>,
        /// Answers in order; the last one repeats.
        pub answers: std::sync::Mutex<Vec<(StatusCode, Value)>>,
        /// Held while answering, so a test can keep a request in flight.
        pub gate: tokio::sync::RwLock<()>,
    }

    impl EndpointState {
        pub(crate) fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }

        /// Requests that arrived, including those held at the gate.
        pub(crate) fn requests_started(&self) -> usize {
            self.started.load(Ordering::SeqCst)
        }

        pub(crate) fn form_value(&self, name: &str) -> Option<String> {
            self.last_form
                .lock()
                .unwrap()
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        }
    }

    async fn answer(
        State(state): State<Arc<EndpointState>>,
        headers: HeaderMap,
        body: String,
    ) -> axum::response::Response {
        state.started.fetch_add(1, Ordering::SeqCst);
        let _open = state.gate.read().await;
        let count = state.requests.fetch_add(1, Ordering::SeqCst);
        *state.last_form.lock().unwrap() = url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        *state.last_authorization.lock().unwrap() = headers
            .get(http::header::AUTHORIZATION)
            .map(|value| value.to_str().unwrap().to_owned());
        let answers = state.answers.lock().unwrap();
        let (status, body) = answers[count.min(answers.len() - 1)].clone();
        (status, axum::Json(body)).into_response()
    }

    /// A token endpoint on a loopback port that answers from a script.
    pub(crate) async fn scripted_endpoint(
        answers: Vec<(StatusCode, Value)>,
    ) -> (Url, Arc<EndpointState>) {
        let state = Arc::new(EndpointState {
            answers: std::sync::Mutex::new(answers),
            ..EndpointState::default()
        });
        let app = axum::Router::new()
            .route("/token", axum::routing::post(answer))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (
            Url::parse(&format!("http://{address}/token")).unwrap(),
            state,
        )
    }

    fn client(url: Url, authentication: ClientAuthentication) -> TokenClient {
        TokenClient {
            token_url: url,
            client_id: "svc client".to_owned(),
            client_secret: Some(SecretValue::new("s3cr:t")),
            authentication,
        }
    }

    #[tokio::test]
    async fn basic_authentication_form_encodes_id_and_secret() {
        let (url, state) = scripted_endpoint(vec![(
            StatusCode::OK,
            serde_json::json!({"access_token": "at-1", "token_type": "Bearer", "expires_in": "120"}),
        )])
        .await;
        let response = client(url, ClientAuthentication::Basic)
            .request(
                &http_client().unwrap(),
                &[("grant_type", "client_credentials")],
            )
            .await
            .unwrap();
        assert_eq!(response.access_token.expose(), "at-1");
        assert_eq!(response.expires_in_secs, 120);
        assert_eq!((state.requests_started(), state.requests()), (1, 1));
        let authorization = state.last_authorization.lock().unwrap().clone().unwrap();
        let decoded = STANDARD
            .decode(authorization.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "svc+client:s3cr%3At");
        assert_eq!(
            state.form_value("grant_type").as_deref(),
            Some("client_credentials")
        );
        assert_eq!(state.form_value("client_secret"), None);
        assert!(!format!("{response:?}").contains("at-1"));
    }

    #[tokio::test]
    async fn post_authentication_and_errors_keep_only_the_code() {
        let (url, state) = scripted_endpoint(vec![(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "invalid_client", "error_description": "secret s3cr:t is wrong"}),
        )])
        .await;
        let error = client(url, ClientAuthentication::Post)
            .request(
                &http_client().unwrap(),
                &[("grant_type", "client_credentials")],
            )
            .await
            .unwrap_err();
        assert_eq!(
            error,
            TokenEndpointError::Refused {
                status: 400,
                error: "invalid_client".to_owned()
            }
        );
        assert!(error.is_permanent());
        assert!(!error.to_string().contains("s3cr"));
        assert_eq!(state.form_value("client_secret").as_deref(), Some("s3cr:t"));
        assert!(state.last_authorization.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn lifetimes_default_and_clamp() {
        let (url, _) = scripted_endpoint(vec![
            (StatusCode::OK, serde_json::json!({"access_token": "a"})),
            (
                StatusCode::OK,
                serde_json::json!({"access_token": "b", "expires_in": 10_000_000}),
            ),
            (StatusCode::OK, serde_json::json!({"token_type": "Bearer"})),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "temporarily_unavailable"}),
            ),
        ])
        .await;
        let http = http_client().unwrap();
        let client = client(url, ClientAuthentication::Basic);
        let first = client.request(&http, &[]).await.unwrap();
        assert_eq!(first.expires_in_secs, DEFAULT_LIFETIME_SECS);
        let second = client.request(&http, &[]).await.unwrap();
        assert_eq!(second.expires_in_secs, MAX_LIFETIME_SECS);
        let third = client.request(&http, &[]).await.unwrap_err();
        assert!(matches!(third, TokenEndpointError::Malformed(_)), "{third}");
        let fourth = client.request(&http, &[]).await.unwrap_err();
        assert!(!fourth.is_permanent());
    }
}

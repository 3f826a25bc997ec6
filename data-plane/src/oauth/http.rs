//! HTTP plumbing of the OAuth endpoints: bounded parameter parsing (RFC 6749 section 3.1:
//! no parameter twice), OAuth error bodies, redirects and cookies.

use std::collections::HashMap;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{
    CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, PRAGMA, SET_COOKIE, WWW_AUTHENTICATE,
};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Value, json};

/// The largest form body (token, revocation, consent) and query (authorize) accepted.
pub const MAX_FORM_BYTES: usize = 16 * 1024;
/// The largest JSON body (client registration).
pub const MAX_JSON_BYTES: usize = 16 * 1024;
/// At most this many parameters in one request.
pub const MAX_PARAMETERS: usize = 32;
/// The longest `state` a client may send; it comes back in a URL.
pub const MAX_STATE_CHARS: usize = 2048;

/// Request parameters, each at most once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parameters(HashMap<String, String>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParameterError {
    #[error("the parameter {0} is given more than once")]
    Repeated(String),
    #[error("too many parameters")]
    TooMany,
    #[error("the request is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the body must be application/x-www-form-urlencoded")]
    NotForm,
    #[error("the body must be application/json")]
    NotJson,
    #[error("the body could not be read")]
    Unreadable,
}

impl Parameters {
    /// Parses `application/x-www-form-urlencoded` text (a query or a form body). Empty
    /// values count as absent (RFC 6749 section 3.1).
    pub fn parse(text: &[u8]) -> Result<Self, ParameterError> {
        if text.len() > MAX_FORM_BYTES {
            return Err(ParameterError::TooLarge(MAX_FORM_BYTES));
        }
        let mut parameters = HashMap::new();
        for (name, value) in url::form_urlencoded::parse(text) {
            if value.is_empty() {
                continue;
            }
            if parameters.len() >= MAX_PARAMETERS {
                return Err(ParameterError::TooMany);
            }
            if parameters
                .insert(name.clone().into_owned(), value.into_owned())
                .is_some()
            {
                return Err(ParameterError::Repeated(name.into_owned()));
            }
        }
        Ok(Self(parameters))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    #[cfg(test)]
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self(
            pairs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
        )
    }
}

fn content_type_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case(expected))
}

/// Reads a body of at most `limit` bytes.
pub async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ParameterError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ParameterError::TooLarge(limit))
        }
        Err(_) => Err(ParameterError::Unreadable),
    }
}

/// Reads and parses a form body.
pub async fn read_form(headers: &HeaderMap, body: Body) -> Result<Parameters, ParameterError> {
    if !content_type_is(headers, "application/x-www-form-urlencoded") {
        return Err(ParameterError::NotForm);
    }
    Parameters::parse(&read_body(body, MAX_FORM_BYTES).await?)
}

/// Reads a JSON body.
pub async fn read_json(headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, ParameterError> {
    if !content_type_is(headers, "application/json") {
        return Err(ParameterError::NotJson);
    }
    read_body(body, MAX_JSON_BYTES).await
}

/// `Cache-Control: no-store` (and `Pragma: no-cache` for old caches) on every response that
/// carries tokens or per-request values.
pub fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// A JSON response that must not be cached.
pub fn json_no_store(status: StatusCode, body: &Value) -> Response {
    no_store(
        (
            status,
            [(CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response(),
    )
}

/// An OAuth error (RFC 6749 section 5.2 and friends). The description is written by the
/// gateway, never copied from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
    /// Add `WWW-Authenticate: Basic` (a client that authenticated with Basic failed).
    pub basic_challenge: bool,
}

impl OAuthError {
    pub fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
            basic_challenge: false,
        }
    }

    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    pub fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }

    pub fn temporarily_unavailable(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            description,
        )
    }

    pub fn server_error(description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            description,
        )
    }
}

impl From<ParameterError> for OAuthError {
    fn from(error: ParameterError) -> Self {
        match error {
            ParameterError::TooLarge(_) => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                error.to_string(),
            ),
            ParameterError::Repeated(_)
            | ParameterError::TooMany
            | ParameterError::NotForm
            | ParameterError::NotJson
            | ParameterError::Unreadable => Self::invalid_request(error.to_string()),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut response = json_no_store(
            self.status,
            &json!({ "error": self.error, "error_description": self.description }),
        );
        if self.basic_challenge {
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"portcullis\""),
            );
        }
        response
    }
}

/// A redirect (302 after a GET, 303 after a POST) that must not be cached.
pub fn redirect(status: StatusCode, location: &str) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    match HeaderValue::from_str(location) {
        Ok(value) => {
            response.headers_mut().insert(LOCATION, value);
        }
        Err(_) => {
            // Every location is built from URLs that parsed; a bad one is a bug, answered
            // as an error rather than a redirect to nowhere.
            tracing::error!("a redirect location is not a valid header value");
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
    }
    no_store(response)
}

/// The value of cookie `name`, if the request carries it exactly once.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = None;
    for header in headers.get_all(COOKIE) {
        let Ok(text) = header.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((key, value)) = pair.trim().split_once('=')
                && key == name
            {
                if found.is_some() {
                    return None;
                }
                found = Some(value);
            }
        }
    }
    found
}

/// Cookies of the authorization server: HttpOnly, SameSite=Lax (the identity provider's
/// redirect back is a top-level GET, which carries them), Path=/. Over https the name gets
/// the `__Host-` prefix and the cookie `Secure`, so no subdomain and no plain-http page can
/// set or read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookiePolicy {
    pub secure: bool,
}

impl CookiePolicy {
    pub fn name(&self, base: &str) -> String {
        if self.secure {
            format!("__Host-{base}")
        } else {
            base.to_owned()
        }
    }

    pub fn set(&self, headers: &mut HeaderMap, base: &str, value: &str, max_age_secs: i64) -> bool {
        let secure = if self.secure { "; Secure" } else { "" };
        let cookie = format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}",
            self.name(base)
        );
        match HeaderValue::from_str(&cookie) {
            Ok(value) => {
                headers.append(SET_COOKIE, value);
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_decoded_once_each() {
        let parameters = Parameters::parse(b"a=1&b=x%20y&c=&d=%2B").unwrap();
        assert_eq!(parameters.get("a"), Some("1"));
        assert_eq!(parameters.get("b"), Some("x y"));
        assert_eq!(parameters.get("c"), None);
        assert_eq!(parameters.get("d"), Some("+"));
        assert_eq!(
            Parameters::parse(b"code=1&code=2"),
            Err(ParameterError::Repeated("code".to_owned()))
        );
        let many: Vec<String> = (0..=MAX_PARAMETERS).map(|i| format!("p{i}=v")).collect();
        assert_eq!(
            Parameters::parse(many.join("&").as_bytes()),
            Err(ParameterError::TooMany)
        );
        assert_eq!(
            Parameters::parse(&vec![b'a'; MAX_FORM_BYTES + 1]),
            Err(ParameterError::TooLarge(MAX_FORM_BYTES))
        );
    }

    #[test]
    fn cookies_are_read_only_when_unambiguous() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, "a=1; b=2".parse().unwrap());
        headers.append(COOKIE, "c=3".parse().unwrap());
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, "c"), Some("3"));
        assert_eq!(cookie(&headers, "d"), None);
        headers.append(COOKIE, "b=9".parse().unwrap());
        assert_eq!(cookie(&headers, "b"), None);
    }

    #[test]
    fn secure_cookies_use_the_host_prefix() {
        let mut headers = HeaderMap::new();
        assert!(CookiePolicy { secure: true }.set(&mut headers, "pc", "v", 60));
        assert_eq!(
            headers[SET_COOKIE],
            "__Host-pc=v; Path=/; HttpOnly; SameSite=Lax; Max-Age=60; Secure"
        );
        let mut headers = HeaderMap::new();
        CookiePolicy { secure: false }.set(&mut headers, "pc", "v", 60);
        assert_eq!(
            headers[SET_COOKIE],
            "pc=v; Path=/; HttpOnly; SameSite=Lax; Max-Age=60"
        );
    }
}

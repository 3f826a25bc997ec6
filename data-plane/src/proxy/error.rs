//! Why a proxied request failed, and the JSON-RPC shaped error the client gets for it.
//!
//! Clients see a generic message and a stable code (`data.code`); the cause (an upstream
//! connection error, a parse position) goes to the log and the request record.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, StatusCode};
use portcullis_shared::error::ErrorCode;
use serde_json::{Value, json};

use crate::jwt::TokenRejection;
use crate::oauth::resource::ResourceChallenge;
use crate::proxy::app_auth::AppAuthError;
use crate::proxy::outbound_headers::OutboundHeaderError;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// JSON-RPC 2.0 "Parse error".
pub const JSONRPC_PARSE_ERROR: i64 = -32700;
/// JSON-RPC 2.0 "Invalid Request".
pub const JSONRPC_INVALID_REQUEST: i64 = -32600;
/// JSON-RPC 2.0 "Internal error".
pub const JSONRPC_INTERNAL_ERROR: i64 = -32603;
/// The implementation-defined server error range starts here; the gateway's own refusals
/// use it, and `data.code` says which one.
pub const JSONRPC_GATEWAY_ERROR: i64 = -32000;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("node has no configuration yet")]
    NotReady,
    #[error("unknown MCP server")]
    UnknownServer,
    #[error("request has no Host header")]
    MissingHost,
    #[error("host {0:?} is not served by this node")]
    HostNotAllowed(String),
    #[error("origin {0:?} is not allowed for this server")]
    OriginNotAllowed(String),
    /// A missing or invalid caller token. The reason is safe to show and is shown.
    #[error("{0}")]
    Unauthenticated(TokenRejection),
    /// Interactive SSO: a missing or invalid gateway access token. The challenge tells the
    /// client where to get one (RFC 9728).
    #[error("{rejection}")]
    InteractiveUnauthenticated {
        rejection: TokenRejection,
        challenge: Box<ResourceChallenge>,
    },
    /// Interactive SSO: a valid token without every scope the server requires.
    #[error("the token lacks a scope this server requires")]
    InsufficientScope(Box<ResourceChallenge>),
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("could not read the request body")]
    BodyRead(#[source] BoxError),
    #[error("request body is not valid JSON: {0}")]
    JsonParse(String),
    #[error("not a valid JSON-RPC message: {0}")]
    InvalidJsonRpc(&'static str),
    /// App authentication could not produce the credential, or the user must connect their
    /// account first (answered with the prompt, see [`AppAuthError::ConnectAccount`]).
    #[error("{0}")]
    AppAuth(AppAuthError),
    /// An additional outbound header could not be produced; nothing was forwarded.
    #[error("{0}")]
    OutboundHeader(OutboundHeaderError),
    #[error("upstream unreachable")]
    UpstreamUnreachable(#[source] BoxError),
    #[error("upstream did not send response headers within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("upstream request failed")]
    UpstreamFailed(#[source] BoxError),
    #[error("internal error: {0}")]
    Internal(String),
    /// The audit spool cannot take the request's event (full under the refuse policy, or
    /// failed): nothing unaudited passes. 503, so a load balancer tries another node.
    #[error("{0}")]
    AuditUnavailable(crate::record::SinkUnavailable),
}

impl ProxyError {
    /// The stable code, as the error body and the request record carry it.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProxyError::NotReady | ProxyError::AuditUnavailable(_) => ErrorCode::NotReady,
            ProxyError::UnknownServer => ErrorCode::NotFound,
            ProxyError::MissingHost
            | ProxyError::HostNotAllowed(_)
            | ProxyError::OriginNotAllowed(_)
            | ProxyError::InsufficientScope(_) => ErrorCode::PermissionDenied,
            ProxyError::AppAuth(error) => error.code(),
            ProxyError::OutboundHeader(error) => error.code(),
            ProxyError::Unauthenticated(_) | ProxyError::InteractiveUnauthenticated { .. } => {
                ErrorCode::Unauthenticated
            }
            ProxyError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            ProxyError::BodyRead(_) | ProxyError::JsonParse(_) | ProxyError::InvalidJsonRpc(_) => {
                ErrorCode::InvalidArgument
            }
            ProxyError::UpstreamUnreachable(_) | ProxyError::UpstreamFailed(_) => {
                ErrorCode::Unavailable
            }
            ProxyError::UpstreamTimeout(_) => ErrorCode::UpstreamTimeout,
            ProxyError::Internal(_) => ErrorCode::Internal,
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            ProxyError::AppAuth(AppAuthError::ConnectAccount(prompt)) => prompt.status(),
            _ => self.code().http_status(),
        }
    }

    pub fn jsonrpc_code(&self) -> i64 {
        match self {
            ProxyError::JsonParse(_) => JSONRPC_PARSE_ERROR,
            ProxyError::InvalidJsonRpc(_) => JSONRPC_INVALID_REQUEST,
            ProxyError::Internal(_) => JSONRPC_INTERNAL_ERROR,
            ProxyError::NotReady
            | ProxyError::AuditUnavailable(_)
            | ProxyError::UnknownServer
            | ProxyError::MissingHost
            | ProxyError::HostNotAllowed(_)
            | ProxyError::OriginNotAllowed(_)
            | ProxyError::Unauthenticated(_)
            | ProxyError::InteractiveUnauthenticated { .. }
            | ProxyError::InsufficientScope(_)
            | ProxyError::PayloadTooLarge { .. }
            | ProxyError::BodyRead(_)
            | ProxyError::AppAuth(_)
            | ProxyError::OutboundHeader(_)
            | ProxyError::UpstreamUnreachable(_)
            | ProxyError::UpstreamTimeout(_)
            | ProxyError::UpstreamFailed(_) => JSONRPC_GATEWAY_ERROR,
        }
    }

    /// What the client may read. Inputs the client sent (a host, an origin) are not echoed,
    /// and nothing about upstream addresses or internal causes is.
    pub fn public_message(&self) -> String {
        match self {
            ProxyError::HostNotAllowed(_) | ProxyError::MissingHost => {
                "host not allowed".to_owned()
            }
            ProxyError::OriginNotAllowed(_) => "origin not allowed".to_owned(),
            ProxyError::UpstreamTimeout(_) => "upstream did not respond in time".to_owned(),
            ProxyError::Internal(_) => "internal error".to_owned(),
            ProxyError::AuditUnavailable(_) => {
                "the gateway cannot record this request right now".to_owned()
            }
            ProxyError::OutboundHeader(error) => error.public_message(),
            ProxyError::NotReady
            | ProxyError::UnknownServer
            | ProxyError::Unauthenticated(_)
            | ProxyError::InteractiveUnauthenticated { .. }
            | ProxyError::InsufficientScope(_)
            | ProxyError::PayloadTooLarge { .. }
            | ProxyError::BodyRead(_)
            | ProxyError::JsonParse(_)
            | ProxyError::InvalidJsonRpc(_)
            | ProxyError::UpstreamUnreachable(_)
            | ProxyError::UpstreamFailed(_) => self.to_string(),
            ProxyError::AppAuth(error) => error.public_message(),
        }
    }

    /// The JSON-RPC error response. `id` is the request's id when the body was read and held
    /// exactly one request, else null. An authentication failure also carries its reason in
    /// `data.reason` and the RFC 6750 challenge in `WWW-Authenticate`.
    pub fn into_response_with_id(self, id: Value) -> Response {
        // The prompt is a complete JSON-RPC answer of its own (a result or a -32042 error).
        let error = match self {
            ProxyError::AppAuth(AppAuthError::ConnectAccount(prompt)) => {
                return prompt.into_response();
            }
            other => other,
        };
        let mut data = json!({ "code": error.code().as_str() });
        match &error {
            ProxyError::Unauthenticated(rejection)
            | ProxyError::InteractiveUnauthenticated { rejection, .. } => {
                data["reason"] = json!(rejection.code());
            }
            ProxyError::InsufficientScope(_) => data["reason"] = json!("insufficient_scope"),
            ProxyError::AuditUnavailable(unavailable) => {
                data["reason"] = json!(unavailable.reason());
            }
            ProxyError::AppAuth(app_auth) => data["reason"] = json!(app_auth.reason()),
            _ => {}
        }
        let mut response = jsonrpc_error_response_with_data(
            error.http_status(),
            id,
            error.jsonrpc_code(),
            &error.public_message(),
            data,
        );
        let challenge = match &error {
            ProxyError::Unauthenticated(rejection) => Some(rejection.www_authenticate()),
            ProxyError::InteractiveUnauthenticated {
                rejection,
                challenge,
            } => Some(challenge.unauthenticated(*rejection)),
            ProxyError::InsufficientScope(challenge) => Some(challenge.insufficient_scope()),
            _ => None,
        };
        if let Some(challenge) = challenge
            && let Ok(challenge) = HeaderValue::from_str(&challenge)
        {
            response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// A JSON-RPC 2.0 error body with the stable code in `data.code`.
pub fn jsonrpc_error_response(
    status: StatusCode,
    id: Value,
    jsonrpc_code: i64,
    message: &str,
    code: ErrorCode,
) -> Response {
    jsonrpc_error_response_with_data(
        status,
        id,
        jsonrpc_code,
        message,
        json!({ "code": code.as_str() }),
    )
}

/// A JSON-RPC 2.0 error body with `data` as given.
fn jsonrpc_error_response_with_data(
    status: StatusCode,
    id: Value,
    jsonrpc_code: i64,
    message: &str,
    data: Value,
) -> Response {
    let body = json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": jsonrpc_code,
            "message": message,
            "data": data,
        },
    });
    (
        status,
        [(CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn errors_are_json_rpc_shaped_with_a_stable_code() {
        let response = ProxyError::PayloadTooLarge { limit: 10 }.into_response_with_id(json!(7));
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({
                "jsonrpc": "2.0",
                "id": 7,
                "error": {
                    "code": JSONRPC_GATEWAY_ERROR,
                    "message": "request body exceeds the limit of 10 bytes",
                    "data": { "code": "payload_too_large" },
                },
            })
        );
    }

    #[test]
    fn public_messages_do_not_leak_causes_or_echo_inputs() {
        let cause: BoxError = "connect to 10.1.2.3:8080 refused".into();
        let error = ProxyError::UpstreamUnreachable(cause);
        assert_eq!(error.public_message(), "upstream unreachable");
        assert_eq!(error.http_status(), StatusCode::BAD_GATEWAY);
        let error = ProxyError::HostNotAllowed("evil.example".to_owned());
        assert!(!error.public_message().contains("evil"));
        assert_eq!(error.http_status(), StatusCode::FORBIDDEN);
        let error = ProxyError::Internal("slot poisoned at 0x1234".to_owned());
        assert_eq!(error.public_message(), "internal error");
    }

    #[tokio::test]
    async fn authentication_failures_are_401_with_a_challenge_and_a_reason() {
        let response =
            ProxyError::Unauthenticated(TokenRejection::Expired).into_response_with_id(json!(3));
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\", error_description=\"token expired\""
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({
                "jsonrpc": "2.0",
                "id": 3,
                "error": {
                    "code": JSONRPC_GATEWAY_ERROR,
                    "message": "token expired",
                    "data": { "code": "unauthenticated", "reason": "expired" },
                },
            })
        );
        let missing =
            ProxyError::Unauthenticated(TokenRejection::Missing).into_response_with_id(Value::Null);
        assert_eq!(missing.headers()[WWW_AUTHENTICATE], "Bearer");
    }

    #[tokio::test]
    async fn interactive_refusals_carry_the_resource_metadata_and_scopes() {
        let challenge = Box::new(ResourceChallenge {
            resource_metadata: "https://gw/.well-known/oauth-protected-resource/mcp/a".to_owned(),
            scope: "mcp".to_owned(),
        });
        let response = ProxyError::InteractiveUnauthenticated {
            rejection: TokenRejection::Missing,
            challenge: challenge.clone(),
        }
        .into_response_with_id(Value::Null);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            "Bearer resource_metadata=\"https://gw/.well-known/oauth-protected-resource/mcp/a\", scope=\"mcp\""
        );
        let response = ProxyError::InsufficientScope(challenge).into_response_with_id(json!(1));
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(
            response.headers()[WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("Bearer error=\"insufficient_scope\"")
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["data"]["reason"], "insufficient_scope");
    }

    #[test]
    fn app_credential_failures_and_not_ready_are_5xx() {
        assert_eq!(
            ProxyError::AppAuth(AppAuthError::ServiceToken(
                crate::tokens::client_credentials::ClientCredentialsError::Unreachable(
                    "connection refused".to_owned()
                )
            ))
            .http_status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            ProxyError::NotReady.http_status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ProxyError::UpstreamTimeout(Duration::from_secs(1)).http_status(),
            StatusCode::GATEWAY_TIMEOUT
        );
    }
}

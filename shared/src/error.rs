//! One small set of stable error codes, mapped to both gRPC status codes and HTTP statuses,
//! so the admin API, the node and the CLI classify failures the same way.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    /// Optimistic concurrency: the expected revision is stale.
    RevisionConflict,
    /// A reference to something that must exist first, or that is still in use.
    FailedPrecondition,
    Unauthenticated,
    PermissionDenied,
    PayloadTooLarge,
    ResourceExhausted,
    /// A dependency (upstream, identity provider, control plane) failed or is unreachable.
    Unavailable,
    /// This process cannot serve yet (a node with no configuration snapshot).
    NotReady,
    /// The configuration is valid, but this build does not implement it.
    Unimplemented,
    UpstreamTimeout,
    Internal,
}

impl ErrorCode {
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorCode::RevisionConflict => tonic::Code::Aborted,
            ErrorCode::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorCode::PayloadTooLarge => tonic::Code::InvalidArgument,
            ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorCode::Unavailable | ErrorCode::NotReady => tonic::Code::Unavailable,
            ErrorCode::Unimplemented => tonic::Code::Unimplemented,
            ErrorCode::UpstreamTimeout => tonic::Code::DeadlineExceeded,
            ErrorCode::Internal => tonic::Code::Internal,
        }
    }

    pub fn http_status(self) -> http::StatusCode {
        match self {
            ErrorCode::InvalidArgument => http::StatusCode::BAD_REQUEST,
            ErrorCode::NotFound => http::StatusCode::NOT_FOUND,
            ErrorCode::AlreadyExists => http::StatusCode::CONFLICT,
            ErrorCode::RevisionConflict => http::StatusCode::CONFLICT,
            ErrorCode::FailedPrecondition => http::StatusCode::PRECONDITION_FAILED,
            ErrorCode::Unauthenticated => http::StatusCode::UNAUTHORIZED,
            ErrorCode::PermissionDenied => http::StatusCode::FORBIDDEN,
            ErrorCode::PayloadTooLarge => http::StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::ResourceExhausted => http::StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => http::StatusCode::BAD_GATEWAY,
            // 503 tells a load balancer to try another node; 502 would not.
            ErrorCode::NotReady => http::StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unimplemented => http::StatusCode::NOT_IMPLEMENTED,
            ErrorCode::UpstreamTimeout => http::StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::Internal => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable string form, as it appears in error bodies and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::RevisionConflict => "revision_conflict",
            ErrorCode::FailedPrecondition => "failed_precondition",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::Unimplemented => "unimplemented",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

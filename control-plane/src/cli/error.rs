//! The CLI's errors, each with a gRPC code name and an exit code, so scripts can tell a
//! typo from a conflict from an unreachable control plane.

use std::path::PathBuf;

use super::document::DocumentError;
use super::secret_source::SecretSourceError;

/// Exit codes, stable for scripts.
pub mod exit_code {
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const CONFLICT: u8 = 4;
    pub const DENIED: u8 = 5;
    pub const UNAVAILABLE: u8 = 6;
    /// `audit verify` found a broken chain.
    pub const VERIFICATION_FAILED: u8 = 7;
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Arguments that parse but do not make sense together.
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Document(#[from] DocumentError),
    #[error("{0}")]
    Secret(#[from] SecretSourceError),
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {target}: {source}")]
    Write {
        target: String,
        source: std::io::Error,
    },
    #[error("cannot encode the output: {0}")]
    Encode(String),
    /// The control plane answered with an error status.
    #[error("{message}")]
    Rpc { code: tonic::Code, message: String },
    #[error("cannot reach the control plane at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    /// Something looked up on the client side (in a state read) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A check ran and found problems (`audit verify`).
    #[error("{0}")]
    Verification(String),
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        let message = if status.message().is_empty() {
            code_name(status.code()).replace('_', " ")
        } else {
            status.message().to_owned()
        };
        CliError::Rpc {
            code: status.code(),
            message,
        }
    }
}

/// The snake_case name of a gRPC code, as printed in `error: <code>: <message>`.
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "ok",
        tonic::Code::Cancelled => "cancelled",
        tonic::Code::Unknown => "unknown",
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::DeadlineExceeded => "deadline_exceeded",
        tonic::Code::NotFound => "not_found",
        tonic::Code::AlreadyExists => "already_exists",
        tonic::Code::PermissionDenied => "permission_denied",
        tonic::Code::ResourceExhausted => "resource_exhausted",
        tonic::Code::FailedPrecondition => "failed_precondition",
        tonic::Code::Aborted => "aborted",
        tonic::Code::OutOfRange => "out_of_range",
        tonic::Code::Unimplemented => "unimplemented",
        tonic::Code::Internal => "internal",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::DataLoss => "data_loss",
        tonic::Code::Unauthenticated => "unauthenticated",
    }
}

/// The exit code for a gRPC code.
pub fn exit_code_for(code: tonic::Code) -> u8 {
    match code {
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => exit_code::USAGE,
        tonic::Code::NotFound => exit_code::NOT_FOUND,
        tonic::Code::AlreadyExists | tonic::Code::Aborted | tonic::Code::FailedPrecondition => {
            exit_code::CONFLICT
        }
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => exit_code::DENIED,
        // A deadline is the control plane not answering in time: the same remedy as
        // unreachable (check it, retry), so the same exit code.
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => exit_code::UNAVAILABLE,
        tonic::Code::Ok
        | tonic::Code::Cancelled
        | tonic::Code::Unknown
        | tonic::Code::ResourceExhausted
        | tonic::Code::Unimplemented
        | tonic::Code::Internal
        | tonic::Code::DataLoss => exit_code::FAILURE,
    }
}

impl CliError {
    /// The gRPC code this error is reported under.
    pub fn code(&self) -> tonic::Code {
        match self {
            CliError::Usage(_)
            | CliError::Document(_)
            | CliError::Secret(_)
            | CliError::ReadFile { .. } => tonic::Code::InvalidArgument,
            CliError::Write { .. } | CliError::Encode(_) => tonic::Code::Internal,
            CliError::Rpc { code, .. } => *code,
            CliError::Unreachable { .. } => tonic::Code::Unavailable,
            CliError::NotFound(_) => tonic::Code::NotFound,
            CliError::Verification(_) => tonic::Code::DataLoss,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            // Output that cannot be written is the local machine's problem, not a
            // statement about the control plane.
            CliError::Write { .. } | CliError::Encode(_) => exit_code::FAILURE,
            // A broken audit chain is its own finding, distinct from failing to check.
            CliError::Verification(_) => exit_code::VERIFICATION_FAILED,
            _ => exit_code_for(self.code()),
        }
    }

    /// The line printed on stderr: `error: <grpc code>: <message>`.
    pub fn report(&self) -> String {
        format!("error: {}: {self}", code_name(self.code()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_documented_exit_codes() {
        let cases = [
            (tonic::Code::InvalidArgument, 2),
            (tonic::Code::NotFound, 3),
            (tonic::Code::AlreadyExists, 4),
            (tonic::Code::Aborted, 4),
            (tonic::Code::FailedPrecondition, 4),
            (tonic::Code::Unauthenticated, 5),
            (tonic::Code::PermissionDenied, 5),
            (tonic::Code::Unavailable, 6),
            (tonic::Code::Internal, 1),
        ];
        for (code, expected) in cases {
            let error = CliError::from(tonic::Status::new(code, "x"));
            assert_eq!(error.exit_code(), expected, "{code:?}");
        }
    }

    #[test]
    fn reports_name_the_code() {
        let error = CliError::from(tonic::Status::aborted("expected revision 3, found 4"));
        assert_eq!(
            error.report(),
            "error: aborted: expected revision 3, found 4"
        );
        let error = CliError::from(tonic::Status::new(tonic::Code::NotFound, ""));
        assert_eq!(error.report(), "error: not_found: not found");
        let error = CliError::Usage("--claim does not apply to --pattern custom".to_owned());
        assert_eq!(error.exit_code(), 2);
        assert!(error.report().starts_with("error: invalid_argument: "));
    }
}

//! The connection to the control plane's admin API: endpoint, TLS, timeouts and the
//! bearer token, attached to every call by an interceptor.

use std::fmt;
use std::time::Duration;

use portcullis_proto::v1::admin_service_client::AdminServiceClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::args::{ConnectionArgs, DEFAULT_ENDPOINT, ENDPOINT_VARIABLE, TOKEN_VARIABLE};
use super::error::CliError;
use super::secret_source::{Environment, read_text_file};

pub type AdminClient = AdminServiceClient<InterceptedService<Channel, BearerToken>>;

/// Replies larger than tonic's 4 MiB default are legitimate: `GetState` of a big
/// installation, a page of 1000 events with their payloads.
const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// The `authorization` metadata of every call. Its `Debug` hides the token, and the
/// metadata value is marked sensitive so tonic and hyper do not log it either.
#[derive(Clone)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => f.write_str("BearerToken([redacted])"),
            None => f.write_str("BearerToken(none)"),
        }
    }
}

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl BearerToken {
    /// The token from `--token-file`, else from `PORTCULLIS_TOKEN`, else none (the
    /// control plane then answers `unauthenticated`).
    pub fn load(
        connection: &ConnectionArgs,
        environment: &dyn Environment,
    ) -> Result<Self, CliError> {
        let token = match &connection.token_file {
            Some(path) => {
                let token = read_text_file(path)?;
                if token.trim().is_empty() {
                    return Err(CliError::Usage(format!(
                        "the token file {} is empty",
                        path.display()
                    )));
                }
                Some(token)
            }
            // An exported but empty variable is the same as an unset one.
            None => environment
                .var(TOKEN_VARIABLE)
                .filter(|token| !token.trim().is_empty()),
        };
        let Some(token) = token else {
            return Ok(BearerToken(None));
        };
        // The error does not include the value: it is the token.
        let mut value =
            AsciiMetadataValue::try_from(format!("Bearer {}", token.trim())).map_err(|_| {
                CliError::Usage(
                    "the token contains characters that cannot be sent in a header".to_owned(),
                )
            })?;
        value.set_sensitive(true);
        Ok(BearerToken(Some(value)))
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }
}

/// The endpoint: `--endpoint`, else `PORTCULLIS_ENDPOINT`, else the loopback default.
pub fn endpoint_url(connection: &ConnectionArgs, environment: &dyn Environment) -> String {
    connection
        .endpoint
        .clone()
        .or_else(|| {
            environment
                .var(ENDPOINT_VARIABLE)
                .filter(|url| !url.is_empty())
        })
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // hyper and tonic wrap the same cause several times; say it once.
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// The variable naming the CA file when `--ca-file` is not given.
pub const CA_FILE_VARIABLE: &str = "PORTCULLIS_CA_FILE";

/// Builds the endpoint with its TLS and timeouts; no network traffic yet. The CA file is
/// `--ca-file`, else `PORTCULLIS_CA_FILE` (used only for an https endpoint, so it can stay
/// exported while talking to a plaintext one).
pub fn endpoint(
    connection: &ConnectionArgs,
    environment: &dyn Environment,
) -> Result<Endpoint, CliError> {
    let url = endpoint_url(connection, environment);
    let ca_file = connection.ca_file.clone().or_else(|| {
        url.starts_with("https:")
            .then(|| environment.var(CA_FILE_VARIABLE))
            .flatten()
            .filter(|path| !path.is_empty())
            .map(std::path::PathBuf::from)
    });
    let timeout = Duration::from_secs(connection.timeout_secs);
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|error| CliError::Usage(format!("invalid endpoint {url:?}: {error}")))?
        .connect_timeout(timeout)
        .timeout(timeout);
    match (endpoint.uri().scheme_str(), &ca_file) {
        (Some("http"), None) => Ok(endpoint),
        (Some("http"), Some(_)) => Err(CliError::Usage(
            "--ca-file needs an https endpoint".to_owned(),
        )),
        (Some("https"), Some(ca_file)) => {
            let pem = std::fs::read(ca_file).map_err(|source| CliError::ReadFile {
                path: ca_file.clone(),
                source,
            })?;
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            endpoint
                .tls_config(tls)
                .map_err(|error| CliError::Usage(format!("tls: {}", error_chain(&error))))
        }
        // Without a CA the client would trust nothing; naming the flag beats a handshake
        // failure.
        (Some("https"), None) => Err(CliError::Usage(
            "an https endpoint needs --ca-file or PORTCULLIS_CA_FILE (the CA that signed the \
             control plane's certificate)"
                .to_owned(),
        )),
        _ => Err(CliError::Usage(format!(
            "invalid endpoint {url:?}: use http:// or https://"
        ))),
    }
}

/// Connects to the admin API. A refused or timed-out connection is `unavailable`.
pub async fn connect(
    connection: &ConnectionArgs,
    environment: &dyn Environment,
) -> Result<AdminClient, CliError> {
    let token = BearerToken::load(connection, environment)?;
    let endpoint = endpoint(connection, environment)?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| CliError::Unreachable {
            endpoint: endpoint.uri().to_string(),
            reason: error_chain(&error),
        })?;
    Ok(AdminServiceClient::with_interceptor(channel, token)
        .max_decoding_message_size(MAX_REPLY_BYTES))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;

    fn connection() -> ConnectionArgs {
        ConnectionArgs {
            endpoint: None,
            token_file: None,
            ca_file: None,
            timeout_secs: 5,
        }
    }

    #[test]
    fn endpoint_comes_from_flag_then_environment_then_default() {
        let empty = BTreeMap::new();
        assert_eq!(endpoint_url(&connection(), &empty), DEFAULT_ENDPOINT);
        let environment =
            BTreeMap::from([(ENDPOINT_VARIABLE.to_owned(), "http://cp:1".to_owned())]);
        assert_eq!(endpoint_url(&connection(), &environment), "http://cp:1");
        let flagged = ConnectionArgs {
            endpoint: Some("http://flag:2".to_owned()),
            ..connection()
        };
        assert_eq!(endpoint_url(&flagged, &environment), "http://flag:2");
    }

    #[test]
    fn the_token_is_attached_and_never_shown() {
        let environment = BTreeMap::from([(TOKEN_VARIABLE.to_owned(), "tok-123\n".to_owned())]);
        let mut token = BearerToken::load(&connection(), &environment).unwrap();
        assert!(token.is_set());
        assert_eq!(format!("{token:?}"), "BearerToken([redacted])");
        let request = token.call(tonic::Request::new(())).unwrap();
        let header = request.metadata().get("authorization").unwrap();
        assert_eq!(header.to_str().unwrap(), "Bearer tok-123");
        assert!(header.is_sensitive());
    }

    #[test]
    fn a_token_file_wins_over_the_environment() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("token");
        std::fs::write(&path, "from-file\n").unwrap();
        let environment = BTreeMap::from([(TOKEN_VARIABLE.to_owned(), "from-env".to_owned())]);
        let args = ConnectionArgs {
            token_file: Some(path),
            ..connection()
        };
        let mut token = BearerToken::load(&args, &environment).unwrap();
        let request = token.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer from-file"
        );
        let missing = ConnectionArgs {
            token_file: Some(PathBuf::from("/nonexistent/token")),
            ..connection()
        };
        assert!(BearerToken::load(&missing, &environment).is_err());
    }

    #[test]
    fn a_bad_token_is_refused_without_echo() {
        let environment =
            BTreeMap::from([(TOKEN_VARIABLE.to_owned(), "bad\u{7f}token".to_owned())]);
        let error = BearerToken::load(&connection(), &environment)
            .unwrap_err()
            .to_string();
        assert!(!error.contains("bad"), "{error}");
    }

    #[test]
    fn endpoints_are_checked_before_connecting() {
        let empty = BTreeMap::new();
        let https = ConnectionArgs {
            endpoint: Some("https://cp.example.com".to_owned()),
            ..connection()
        };
        assert!(matches!(
            endpoint(&https, &empty),
            Err(CliError::Usage(message)) if message.contains("--ca-file")
        ));
        let other = ConnectionArgs {
            endpoint: Some("ftp://cp".to_owned()),
            ..connection()
        };
        assert!(matches!(endpoint(&other, &empty), Err(CliError::Usage(_))));
        assert!(endpoint(&connection(), &empty).is_ok());
    }

    #[test]
    fn the_ca_file_may_come_from_the_environment() {
        let directory = tempfile::tempdir().unwrap();
        let missing = directory.path().join("missing-ca.pem");
        let environment =
            BTreeMap::from([(CA_FILE_VARIABLE.to_owned(), missing.display().to_string())]);
        let https = ConnectionArgs {
            endpoint: Some("https://cp.example.com".to_owned()),
            ..connection()
        };
        // The variable is used (and its file read) for https...
        assert!(matches!(
            endpoint(&https, &environment),
            Err(CliError::ReadFile { path, .. }) if path == missing
        ));
        // ...and ignored for a plaintext endpoint.
        assert!(endpoint(&connection(), &environment).is_ok());
    }

    #[tokio::test]
    async fn a_closed_port_is_unavailable() {
        // Bind then drop a listener to get a loopback port that refuses connections.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let args = ConnectionArgs {
            endpoint: Some(format!("http://{address}")),
            ..connection()
        };
        let error = connect(&args, &BTreeMap::new()).await.unwrap_err();
        assert_eq!(error.exit_code(), 6, "{error}");
        assert!(
            error
                .report()
                .starts_with("error: unavailable: cannot reach")
        );
    }
}

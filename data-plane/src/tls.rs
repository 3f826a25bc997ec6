//! TLS of the node: the certificate of its listeners (`--tls-cert-file`, `--tls-key-file`)
//! and the client certificate it presents to the control plane (mTLS,
//! `--control-plane-client-cert-file`, `--control-plane-client-key-file`).
//!
//! Everything is parsed and checked when the configuration is validated, so a missing file,
//! a file that is not PEM or a key that does not belong to its certificate stops the node at
//! start with a configuration error instead of failing the first handshake.
//!
//! [`TlsListener`] is the public (and admin) listener with TLS: it accepts TCP connections,
//! runs each handshake in its own task under a timeout and a bound on concurrent handshakes,
//! and hands finished TLS streams to the HTTP server, so a slow or silent client never holds
//! up the others. ALPN offers HTTP/2 and HTTP/1.1. A client speaking plaintext HTTP to it
//! gets a `400` telling it to use https, and the connection is closed: the listener speaks
//! TLS only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, error};

/// A client must finish its TLS handshake within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the kernel's backlog.
const MAX_CONCURRENT_HANDSHAKES: usize = 1024;
/// Finished handshakes waiting for the HTTP server to take them.
const ACCEPTED_QUEUE: usize = 64;
/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// What a plaintext HTTP client gets.
const PLAINTEXT_REFUSAL: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: text/plain; charset=utf-8\r\n\
connection: close\r\n\
content-length: 55\r\n\
\r\n\
This port speaks TLS only: use an https:// URL instead\n";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificates of a PEM file (the leaf first, then intermediates).
pub fn parse_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("is not a PEM certificate chain: {error}"))?;
    if certificates.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned());
    }
    Ok(certificates)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1). Errors never quote the file.
pub fn parse_private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|_| "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned())
}

/// Checks that `key_pem` is the private key of the first certificate in `cert_pem`.
fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, KeyPairError> {
    let certificates = parse_certificates(cert_pem).map_err(KeyPairError::Certificate)?;
    let key = parse_private_key(key_pem).map_err(KeyPairError::Key)?;
    CertifiedKey::from_der(certificates, key, &provider())
        .map_err(|error| KeyPairError::Pair(format!("do not go together: {error}")))
}

/// Which of the two files of a certificate and key pair is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPairError {
    Certificate(String),
    Key(String),
    /// Each file is fine, but the key is not the certificate's.
    Pair(String),
}

/// Checks a client certificate and key for the control plane connection (tonic loads them
/// again from PEM when it connects).
pub fn check_client_identity(cert_pem: &[u8], key_pem: &[u8]) -> Result<(), KeyPairError> {
    certified_key(cert_pem, key_pem).map(|_| ())
}

/// The server configuration of a TLS listener: this certificate, no client certificates,
/// ALPN `h2` then `http/1.1`.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, KeyPairError> {
    let certified = certified_key(cert_pem, key_pem)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| KeyPairError::Pair(error.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener whose connections are TLS streams, for `axum::serve`.
pub struct TlsListener {
    local_address: SocketAddr,
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("local_address", &self.local_address)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Starts accepting on `listener` at once (handshakes finish while the HTTP server is
    /// still being set up). Must be called inside a Tokio runtime.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local_address = listener.local_addr()?;
        let (sender, accepted) = mpsc::channel(ACCEPTED_QUEUE);
        let acceptor = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), sender));
        Ok(Self {
            local_address,
            accepted,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // The server stopped accepting: close the port.
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended (it only does when this listener is dropped).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_address)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    sender: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = tokio::select! {
            () = sender.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_error(error).await;
                    continue;
                }
            },
        };
        // No Nagle (see `Listener::serve` in node.rs).
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%peer, %error, "cannot set TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&acceptor, stream)).await {
                Ok(Ok(Some(tls))) => {
                    // Fails only when the server stopped; the connection is then dropped.
                    let _ = sender.send((tls, peer)).await;
                }
                Ok(Ok(None)) => {}
                Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Like axum's own accept loop: connection errors are the client's business; anything else
/// (out of file descriptors) is logged and retried after a pause.
async fn accept_error(error: std::io::Error) {
    if matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    error!(%error, "accept error");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The handshake; `None` for a connection that is not TLS (refused) or closed at once.
async fn handshake(
    acceptor: &TlsAcceptor,
    mut stream: TcpStream,
) -> std::io::Result<Option<TlsStream<TcpStream>>> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Ok(None);
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        debug!("plaintext connection to a TLS listener refused");
        if first[0].is_ascii_alphabetic() {
            refuse_plaintext(&mut stream).await;
        }
        return Ok(None);
    }
    acceptor.accept(stream).await.map(Some)
}

/// Answers a plaintext HTTP request with a 400. What the client sent is read first (its
/// request head is usually one segment), so closing does not reset the connection before
/// the client reads the answer.
async fn refuse_plaintext(stream: &mut TcpStream) {
    let mut request = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut request)).await;
    let _ = stream.write_all(PLAINTEXT_REFUSAL).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate and its key, and another key.
    fn pair() -> (String, String, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        (
            certified.cert.pem(),
            certified.signing_key.serialize_pem(),
            other.serialize_pem(),
        )
    }

    #[test]
    fn matching_pairs_load_and_mismatches_name_the_problem() {
        let (cert, key, other_key) = pair();
        assert!(server_config(cert.as_bytes(), key.as_bytes()).is_ok());
        assert!(check_client_identity(cert.as_bytes(), key.as_bytes()).is_ok());
        assert!(matches!(
            check_client_identity(cert.as_bytes(), other_key.as_bytes()),
            Err(KeyPairError::Pair(_))
        ));
        assert!(matches!(
            check_client_identity(key.as_bytes(), key.as_bytes()),
            Err(KeyPairError::Certificate(_))
        ));
        let error = check_client_identity(cert.as_bytes(), b"not a key").unwrap_err();
        assert!(matches!(error, KeyPairError::Key(_)));
    }

    #[tokio::test]
    async fn plaintext_http_is_answered_400_and_tls_is_served() {
        let (cert, key, _) = pair();
        let config = server_config(cert.as_bytes(), key.as_bytes()).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut listener = TlsListener::new(tcp, config).unwrap();
        let address = axum::serve::Listener::local_addr(&listener).unwrap();

        let mut plaintext = TcpStream::connect(address).await.unwrap();
        plaintext
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        plaintext.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, PLAINTEXT_REFUSAL);

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(parse_certificates(cert.as_bytes()).unwrap().remove(0))
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let (connected, accepted) = tokio::join!(
            async {
                let tcp = TcpStream::connect(address).await.unwrap();
                connector
                    .connect("localhost".try_into().unwrap(), tcp)
                    .await
            },
            axum::serve::Listener::accept(&mut listener),
        );
        assert!(connected.is_ok());
        assert_eq!(
            accepted.1,
            connected.unwrap().get_ref().0.local_addr().unwrap()
        );
    }

    #[test]
    fn the_refusal_announces_its_length() {
        let text = std::str::from_utf8(PLAINTEXT_REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}

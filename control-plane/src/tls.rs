//! TLS for the control plane's listener, and the node identity a client certificate gives.
//!
//! With a server certificate the gRPC listener speaks TLS only; a plaintext client fails
//! the handshake. With a client CA as well, nodes authenticate by certificate (mTLS): the
//! certificate's subject common name is the node id, a node without a valid certificate is
//! refused by every node API, and a certificate from another CA fails the handshake.
//! Admin clients need no certificate (client authentication is optional at the TLS layer)
//! and keep authenticating with bearer tokens.
//!
//! `generate_dev_certificates` writes a throwaway CA, a server certificate for loopback and
//! node certificates, so a local installation runs with TLS and no setup.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("--tls-cert-file and --tls-key-file go together")]
    Incomplete,
    #[error("--client-ca-file needs --tls-cert-file and --tls-key-file (mTLS runs over TLS)")]
    ClientCaWithoutTls,
}

/// The TLS files of the listener.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Enables mTLS for nodes.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Checks which flags were given together; `None` means plaintext (development only).
    pub fn from_flags(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> Result<Option<Self>, TlsError> {
        match (cert, key, client_ca) {
            (None, None, None) => Ok(None),
            (None, None, Some(_)) => Err(TlsError::ClientCaWithoutTls),
            (Some(cert), Some(key), client_ca) => Ok(Some(Self {
                cert,
                key,
                client_ca,
            })),
            _ => Err(TlsError::Incomplete),
        }
    }

    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsError> {
        let identity = Identity::from_pem(read(&self.cert)?, read(&self.key)?);
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            config = config
                .client_ca_root(Certificate::from_pem(read(ca)?))
                .client_auth_optional(true);
        }
        Ok(config)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    let error = |source| TlsError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    use std::io::Write;
    let mut file = options.open(path).map_err(error)?;
    file.write_all(contents.as_bytes()).map_err(error)
}

/// The node id a verified client certificate names: its subject common name.
pub fn certificate_node_id(der: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let common_name = certificate
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    (!common_name.is_empty() && common_name.len() <= 256).then_some(common_name)
}

/// The node id of a request's client certificate, if it presented one (tonic verified it
/// against the client CA during the handshake).
pub fn peer_node_id<T>(request: &tonic::Request<T>) -> Option<String> {
    let certificates = request.peer_certs()?;
    certificate_node_id(certificates.first()?.as_ref())
}

/// Writes `ca.pem`, `server.pem`/`server.key` (for `hosts`) and for each node
/// `node-<id>.pem`/`node-<id>.key` into `directory`. Keys are written owner-readable only.
pub fn generate_dev_certificates(
    directory: &Path,
    hosts: &[String],
    nodes: &[String],
) -> Result<(), TlsError> {
    std::fs::create_dir_all(directory).map_err(|source| TlsError::Write {
        path: directory.display().to_string(),
        source,
    })?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Portcullis development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write(&directory.join("ca.pem"), &ca_cert.pem(), false)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server_params = CertificateParams::new(Vec::<String>::new())?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "portcullis-control-plane");
    for host in hosts {
        server_params.subject_alt_names.push(match host.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.clone().try_into()?),
        });
    }
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params.signed_by(&server_key, &issuer)?;
    write(&directory.join("server.pem"), &server_cert.pem(), false)?;
    write(
        &directory.join("server.key"),
        &server_key.serialize_pem(),
        true,
    )?;

    for node in nodes {
        let node_key = KeyPair::generate()?;
        let mut node_params = CertificateParams::new(Vec::<String>::new())?;
        node_params
            .distinguished_name
            .push(DnType::CommonName, node.as_str());
        node_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let node_cert = node_params.signed_by(&node_key, &issuer)?;
        write(
            &directory.join(format!("node-{node}.pem")),
            &node_cert.pem(),
            false,
        )?;
        write(
            &directory.join(format!("node-{node}.key")),
            &node_key.serialize_pem(),
            true,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_certificates_name_their_node() {
        let dir = tempfile::tempdir().unwrap();
        generate_dev_certificates(
            dir.path(),
            &["127.0.0.1".into(), "localhost".into()],
            &["node-7".into()],
        )
        .unwrap();
        let pem = std::fs::read_to_string(dir.path().join("node-node-7.pem")).unwrap();
        let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents;
        assert_eq!(certificate_node_id(&der).as_deref(), Some("node-7"));
        assert!(certificate_node_id(b"garbage").is_none());
    }

    #[test]
    fn flags_go_together() {
        assert!(TlsFiles::from_flags(None, None, None).unwrap().is_none());
        assert!(matches!(
            TlsFiles::from_flags(Some("a".into()), None, None),
            Err(TlsError::Incomplete)
        ));
        assert!(matches!(
            TlsFiles::from_flags(None, None, Some("ca".into())),
            Err(TlsError::ClientCaWithoutTls)
        ));
    }
}

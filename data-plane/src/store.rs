//! The node's last good snapshot on disk, so it can serve after a restart while the control
//! plane is unreachable.
//!
//! File format (version 1):
//!
//! ```text
//! magic    8 bytes  "PCLSNAP\0"
//! format   u16 BE   1
//! version  u64 BE   the snapshot version (for operators; also authenticated)
//! sealed   rest     AES-256-GCM (nonce || ciphertext || tag) of the prost-encoded
//!                   proto::Snapshot, with the 18 header bytes as associated data
//! ```
//!
//! Secrets never touch the disk in plaintext: the whole snapshot is sealed. Binding the
//! header as associated data means a changed header fails to open like a changed body.
//! Writes go to a temporary file that is fsynced and renamed over the old one, then the
//! directory is fsynced, so a crash leaves either the old or the new file. A file is
//! validated again after reading, exactly like a snapshot from the network.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use portcullis_proto::v1 as proto;
use portcullis_shared::crypto::{AeadKey, CryptoError};
use portcullis_shared::snapshot::Snapshot;
use portcullis_shared::validate::ValidationErrors;
use prost::Message;

const MAGIC: &[u8; 8] = b"PCLSNAP\0";
/// The format this build writes. Readers refuse newer formats instead of guessing.
pub const FORMAT_VERSION: u16 = 1;
const HEADER_LEN: usize = 8 + 2 + 8;
/// Domain separation: a ciphertext sealed for another purpose under the same key does not
/// open as a snapshot.
const AAD_PREFIX: &[u8] = b"portcullis/node-snapshot/";
const FILE_NAME: &str = "snapshot.bin";
const TEMP_FILE_NAME: &str = "snapshot.bin.tmp";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a snapshot file")]
    NotASnapshotFile(PathBuf),
    #[error("snapshot file format {found} is newer than this node understands ({FORMAT_VERSION})")]
    UnsupportedFormat { found: u16 },
    #[error("cannot seal the snapshot: {0}")]
    Seal(#[source] CryptoError),
    #[error("cannot open the snapshot file: {0}")]
    Open(#[source] CryptoError),
    #[error("the snapshot file does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the snapshot file says version {header} but holds version {body}")]
    VersionMismatch { header: u64, body: u64 },
    #[error("the stored snapshot is not valid: {0}")]
    Invalid(ValidationErrors),
    #[error("the snapshot task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Reads and writes the sealed snapshot file in one directory.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    directory: PathBuf,
    key: Arc<AeadKey>,
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

fn header(version: u64) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..10].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
    header[10..].copy_from_slice(&version.to_be_bytes());
    header
}

fn associated_data(header: &[u8]) -> Vec<u8> {
    [AAD_PREFIX, header].concat()
}

impl SnapshotStore {
    pub fn new(directory: impl Into<PathBuf>, key: Arc<AeadKey>) -> Self {
        Self {
            directory: directory.into(),
            key,
        }
    }

    pub fn path(&self) -> PathBuf {
        self.directory.join(FILE_NAME)
    }

    /// Seals and writes a snapshot, replacing the previous file atomically. Blocking: call
    /// from a blocking thread (see [`SnapshotStore::save`]).
    pub fn save_blocking(&self, snapshot: &proto::Snapshot) -> Result<(), StoreError> {
        create_private_dir(&self.directory)?;
        let header = header(snapshot.version);
        let sealed = self
            .key
            .seal(&associated_data(&header), &snapshot.encode_to_vec())
            .map_err(StoreError::Seal)?;
        let temp_path = self.directory.join(TEMP_FILE_NAME);
        let mut file = create_private_file(&temp_path)?;
        file.write_all(&header)
            .and_then(|()| file.write_all(&sealed))
            .map_err(io_error("write", &temp_path))?;
        file.sync_all().map_err(io_error("fsync", &temp_path))?;
        drop(file);
        let path = self.path();
        fs::rename(&temp_path, &path).map_err(io_error("rename to", &path))?;
        // The rename is durable only once the directory entry is.
        File::open(&self.directory)
            .and_then(|directory| directory.sync_all())
            .map_err(io_error("fsync", &self.directory))?;
        Ok(())
    }

    /// [`SnapshotStore::save_blocking`] on the blocking thread pool.
    pub async fn save(&self, snapshot: proto::Snapshot) -> Result<(), StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.save_blocking(&snapshot)).await?
    }

    /// Reads, opens and validates the stored snapshot. `Ok(None)` when there is none yet.
    pub fn load_blocking(&self) -> Result<Option<Snapshot>, StoreError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error("read", &path)(error)),
        };
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(StoreError::NotASnapshotFile(path));
        }
        let (header, sealed) = bytes.split_at(HEADER_LEN);
        let format = u16::from_be_bytes([header[8], header[9]]);
        if format != FORMAT_VERSION {
            return Err(StoreError::UnsupportedFormat { found: format });
        }
        let header_version = u64::from_be_bytes(header[10..].try_into().expect("8 bytes"));
        let plaintext = self
            .key
            .open(&associated_data(header), sealed)
            .map_err(StoreError::Open)?;
        let message = proto::Snapshot::decode(plaintext.as_slice())?;
        if message.version != header_version {
            return Err(StoreError::VersionMismatch {
                header: header_version,
                body: message.version,
            });
        }
        Snapshot::try_from(message)
            .map(Some)
            .map_err(StoreError::Invalid)
    }

    /// [`SnapshotStore::load_blocking`] on the blocking thread pool.
    pub async fn load(&self) -> Result<Option<Snapshot>, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.load_blocking()).await?
    }
}

#[cfg(unix)]
fn create_private_dir(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io_error("create directory", path))
}

#[cfg(not(unix))]
fn create_private_dir(path: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(path).map_err(io_error("create directory", path))
}

/// Creates (or truncates) a file only the owner can read: the content is sealed, but there
/// is no reason to show even ciphertext to other users.
fn create_private_file(path: &Path) -> Result<File, StoreError> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(io_error("create", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_shared::snapshot::SNAPSHOT_SCHEMA_VERSION;

    const SECRET: &str = "sk-live-very-secret-value";

    pub(crate) fn proto_snapshot(version: u64) -> proto::Snapshot {
        proto::Snapshot {
            version,
            schema_version: SNAPSHOT_SCHEMA_VERSION,
            servers: vec![proto::McpServer {
                name: "datadog".to_owned(),
                upstream_url: "http://127.0.0.1:9/mcp".to_owned(),
                agent_auth: Some(proto::AgentAuth {
                    mode: Some(proto::agent_auth::Mode::Passthrough(
                        proto::PassthroughAgent::default(),
                    )),
                    restricted_inbound_headers: Vec::new(),
                }),
                app_auth: Some(proto::AppAuth {
                    kind: Some(proto::app_auth::Kind::ApiKey(proto::ApiKey {
                        key_name: "dd-api-key".to_owned(),
                        key_value: Some(proto::Secret {
                            value: Some(proto::secret::Value::Plaintext(SECRET.to_owned())),
                        }),
                        location: proto::ApiKeyLocation::Header as i32,
                    })),
                }),
                ..proto::McpServer::default()
            }],
            ..proto::Snapshot::default()
        }
    }

    fn store(directory: &Path) -> SnapshotStore {
        let (key, _) = AeadKey::generate().unwrap();
        SnapshotStore::new(directory, Arc::new(key))
    }

    #[test]
    fn round_trip_keeps_the_snapshot_and_no_plaintext_secret_reaches_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        assert!(store.load_blocking().unwrap().is_none());
        store.save_blocking(&proto_snapshot(3)).unwrap();
        let loaded = store.load_blocking().unwrap().unwrap();
        assert_eq!(loaded, Snapshot::try_from(proto_snapshot(3)).unwrap());

        let bytes = fs::read(store.path()).unwrap();
        assert!(bytes.starts_with(MAGIC));
        assert!(
            !bytes
                .windows(SECRET.len())
                .any(|window| window == SECRET.as_bytes())
        );
        assert!(!dir.path().join(TEMP_FILE_NAME).exists());

        // A newer save replaces the old one.
        store.save_blocking(&proto_snapshot(4)).unwrap();
        assert_eq!(store.load_blocking().unwrap().unwrap().version, 4);
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir.path().join("state"));
        store.save_blocking(&proto_snapshot(1)).unwrap();
        let mode = fs::metadata(store.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }

    #[test]
    fn tampering_with_body_or_header_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        store.save_blocking(&proto_snapshot(3)).unwrap();
        let original = fs::read(store.path()).unwrap();

        let mut body_flipped = original.clone();
        let last = body_flipped.len() - 1;
        body_flipped[last] ^= 0x01;
        fs::write(store.path(), &body_flipped).unwrap();
        assert!(matches!(
            store.load_blocking(),
            Err(StoreError::Open(CryptoError::Open))
        ));

        // Claiming another version in the header breaks the associated data.
        let mut header_changed = original.clone();
        header_changed[17] ^= 0x01;
        fs::write(store.path(), &header_changed).unwrap();
        assert!(matches!(store.load_blocking(), Err(StoreError::Open(_))));

        let mut future_format = original.clone();
        future_format[9] = 2;
        fs::write(store.path(), &future_format).unwrap();
        assert!(matches!(
            store.load_blocking(),
            Err(StoreError::UnsupportedFormat { found: 2 })
        ));

        fs::write(store.path(), b"{\"version\": 3}").unwrap();
        assert!(matches!(
            store.load_blocking(),
            Err(StoreError::NotASnapshotFile(_))
        ));
    }

    #[test]
    fn a_wrong_key_cannot_open_the_file() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path()).save_blocking(&proto_snapshot(3)).unwrap();
        let other = store(dir.path());
        let error = other.load_blocking().unwrap_err();
        assert!(matches!(error, StoreError::Open(CryptoError::Open)));
        assert_eq!(
            error.to_string(),
            "cannot open the snapshot file: decryption failed: wrong key or tampered data"
        );
    }

    #[test]
    fn a_stored_snapshot_is_validated_again_after_reading() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let mut invalid = proto_snapshot(5);
        invalid.servers[0].upstream_url = "not a url".to_owned();
        store.save_blocking(&invalid).unwrap();
        let error = store.load_blocking().unwrap_err();
        assert!(matches!(error, StoreError::Invalid(_)));
        assert!(error.to_string().contains("servers[datadog].upstream_url"));
    }
}

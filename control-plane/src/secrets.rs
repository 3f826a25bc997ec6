//! Secrets at rest: envelope encryption with a data key per secret.
//!
//! Each secret is encrypted with its own random data key; the data key is wrapped
//! (encrypted) with the master key and kept in the `data_keys` tree, outside the event log.
//! The log itself is append-only and never rewritten, so deleting a secret deletes its data
//! key: the ciphertext that stays in the log can no longer be decrypted (crypto-shredding).
//! Rotating the master key only re-wraps data keys.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use portcullis_shared::crypto::{AeadKey, CryptoError, KEY_LEN, random_bytes, sha256_hex};
use portcullis_shared::secret::{SecretStatus, SecretValue};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A secret as stored in events and in the projection: ciphertext under its own data key,
/// plus a keyed fingerprint that readers may see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    pub id: Uuid,
    #[serde(with = "base64_bytes")]
    pub ciphertext: Vec<u8>,
    pub fingerprint: String,
}

impl SealedSecret {
    pub fn status(&self) -> SecretStatus {
        SecretStatus {
            set: true,
            fingerprint: self.fingerprint.clone(),
        }
    }
}

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// A data key wrapped under a master key, as stored in the `data_keys` tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedDataKey {
    pub master_key_id: String,
    #[serde(with = "base64_bytes")]
    pub sealed: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "no master key: set --master-key-file or PORTCULLIS_MASTER_KEY (32 bytes, base64 or hex); `portcullis-control-plane generate-key` writes one"
    )]
    MissingMasterKey,
    #[error("both --master-key-file and PORTCULLIS_MASTER_KEY are set; set only one")]
    AmbiguousMasterKey,
    #[error("cannot read master key file {path}: {source}")]
    ReadMasterKey {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid master key: {0}")]
    InvalidMasterKey(CryptoError),
    #[error(
        "the master key does not match this data directory (it was created with key {expected}, this key is {actual})"
    )]
    WrongMasterKey { expected: String, actual: String },
    #[error(
        "some secrets are wrapped under master key {0}: start with it as the previous master key (--previous-master-key-file or PORTCULLIS_PREVIOUS_MASTER_KEY) to finish the rotation"
    )]
    MissingPreviousKey(String),
    #[error("the data key of secret {0} was destroyed")]
    Shredded(Uuid),
    #[error("secret {0} cannot be decrypted: {1}")]
    Corrupt(Uuid, CryptoError),
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("crypto error: {0}")]
    Crypto(#[from] CryptoError),
    #[error("stored key metadata is malformed: {0}")]
    Metadata(String),
}

/// The master key and its id (a hash prefix, safe to log and store).
pub struct MasterKey {
    key: AeadKey,
    id: String,
}

impl MasterKey {
    pub fn from_text(text: &str) -> Result<Self, SecretError> {
        let bytes = portcullis_shared::crypto::decode_key_text(text)
            .map_err(SecretError::InvalidMasterKey)?;
        if bytes.len() != KEY_LEN {
            return Err(SecretError::InvalidMasterKey(CryptoError::KeyLength(
                bytes.len(),
            )));
        }
        let key = AeadKey::from_bytes(&bytes).map_err(SecretError::InvalidMasterKey)?;
        let id = format!("mk-{}", &sha256_hex(&bytes)[..12]);
        Ok(Self { key, id })
    }

    /// Loads the master key from a file or from the environment value, exactly one of them.
    pub fn load(file: Option<&Path>, env_value: Option<&str>) -> Result<Self, SecretError> {
        match (file, env_value.filter(|value| !value.trim().is_empty())) {
            (Some(_), Some(_)) => Err(SecretError::AmbiguousMasterKey),
            (Some(path), None) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| SecretError::ReadMasterKey {
                        path: path.display().to_string(),
                        source,
                    })?;
                Self::from_text(&text)
            }
            (None, Some(text)) => Self::from_text(text),
            (None, None) => Err(SecretError::MissingMasterKey),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

const FINGERPRINT_KEY: &[u8] = b"fingerprint_key";
const MASTER_KEY_ID: &[u8] = b"master_key_id";

/// Seals, opens and shreds secrets. Cheap to share behind an `Arc`.
pub struct SecretStore {
    master: MasterKey,
    fingerprints: AeadKey,
    data_keys: sled::Tree,
}

impl SecretStore {
    /// Opens the store in `db`, creating the fingerprint key on first use. A master key that
    /// differs from the one the directory was created with is refused with a clear error,
    /// before anything is written.
    ///
    /// Rotation: start with the new key as `master` and the old one as `previous`. Every
    /// data key (and the fingerprint key) wrapped under the old key is re-wrapped under the
    /// new one, in batches; the directory's key id moves last, so an interrupted rotation
    /// simply runs again on the next start with both keys. Afterwards the old key can be
    /// retired.
    pub fn load(
        db: &sled::Db,
        master: MasterKey,
        previous: Option<MasterKey>,
    ) -> Result<Self, SecretError> {
        let meta = db.open_tree("secret_meta")?;
        let data_keys = db.open_tree("data_keys")?;
        let fingerprints = match (meta.get(MASTER_KEY_ID)?, meta.get(FINGERPRINT_KEY)?) {
            (Some(stored_id), Some(wrapped)) => {
                let stored_id = String::from_utf8_lossy(&stored_id).into_owned();
                let unwrapping = if stored_id == master.id {
                    &master
                } else {
                    match &previous {
                        Some(previous) if previous.id == stored_id => previous,
                        _ => {
                            return Err(SecretError::WrongMasterKey {
                                expected: stored_id,
                                actual: master.id.clone(),
                            });
                        }
                    }
                };
                let bytes = unwrapping
                    .key
                    .open(FINGERPRINT_KEY, &wrapped)
                    .map_err(|_| SecretError::WrongMasterKey {
                        expected: stored_id.clone(),
                        actual: unwrapping.id.clone(),
                    })?;
                AeadKey::from_bytes(&bytes)?
            }
            (None, None) => {
                // The fingerprint key is random and independent of the master key, so
                // fingerprints stay stable when the master key is rotated.
                let (key, bytes) = AeadKey::generate()?;
                let wrapped = master.key.seal(FINGERPRINT_KEY, &bytes)?;
                meta.insert(FINGERPRINT_KEY, wrapped)?;
                meta.insert(MASTER_KEY_ID, master.id.as_bytes())?;
                meta.flush()?;
                key
            }
            _ => {
                return Err(SecretError::Metadata(
                    "only one of master_key_id and fingerprint_key is present".to_owned(),
                ));
            }
        };
        let store = Self {
            master,
            fingerprints,
            data_keys,
        };
        store.rewrap(&meta, previous.as_ref())?;
        Ok(store)
    }

    /// Re-wraps every data key not under the current master key. Without the key it is
    /// under, nothing is changed and the start is refused with a clear error.
    fn rewrap(&self, meta: &sled::Tree, previous: Option<&MasterKey>) -> Result<(), SecretError> {
        let mut moved = 0usize;
        let mut batch = sled::Batch::default();
        let mut pending = 0usize;
        for entry in self.data_keys.iter() {
            let (id, bytes) = entry?;
            let wrapped: WrappedDataKey = serde_json::from_slice(&bytes)
                .map_err(|error| SecretError::Metadata(error.to_string()))?;
            if wrapped.master_key_id == self.master.id {
                continue;
            }
            let previous = previous
                .filter(|previous| previous.id == wrapped.master_key_id)
                .ok_or_else(|| SecretError::MissingPreviousKey(wrapped.master_key_id.clone()))?;
            let data_key = previous.key.open(&id, &wrapped.sealed).map_err(|error| {
                SecretError::Metadata(format!("a data key does not open: {error}"))
            })?;
            let rewrapped = WrappedDataKey {
                master_key_id: self.master.id.clone(),
                sealed: self.master.key.seal(&id, &data_key)?,
            };
            batch.insert(id, Self::encode_wrapped(&rewrapped));
            pending += 1;
            moved += 1;
            if pending == 1000 {
                self.data_keys.apply_batch(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        if pending > 0 {
            self.data_keys.apply_batch(batch)?;
        }
        let stored_id = meta
            .get(MASTER_KEY_ID)?
            .map(|id| String::from_utf8_lossy(&id).into_owned());
        if stored_id.as_deref() != Some(self.master.id.as_str()) {
            // Data keys first, then the fingerprint key and the directory's key id: the id
            // moves only once everything opens with the new key.
            self.data_keys.flush()?;
            let fingerprint_bytes = self.fingerprint_key_bytes(meta, previous)?;
            meta.insert(
                FINGERPRINT_KEY,
                self.master.key.seal(FINGERPRINT_KEY, &fingerprint_bytes)?,
            )?;
            meta.insert(MASTER_KEY_ID, self.master.id.as_bytes())?;
            meta.flush()?;
            tracing::info!(
                data_keys = moved,
                master_key = %self.master.id,
                "master key rotated: every secret is now wrapped under the new key"
            );
        } else if moved > 0 {
            self.data_keys.flush()?;
            tracing::info!(
                data_keys = moved,
                "finished an interrupted master key rotation"
            );
        }
        Ok(())
    }

    fn fingerprint_key_bytes(
        &self,
        meta: &sled::Tree,
        previous: Option<&MasterKey>,
    ) -> Result<Vec<u8>, SecretError> {
        let wrapped = meta
            .get(FINGERPRINT_KEY)?
            .ok_or_else(|| SecretError::Metadata("no fingerprint key".to_owned()))?;
        for key in std::iter::once(&self.master).chain(previous) {
            if let Ok(bytes) = key.key.open(FINGERPRINT_KEY, &wrapped) {
                return Ok(bytes);
            }
        }
        Err(SecretError::Metadata(
            "the fingerprint key opens with neither master key".to_owned(),
        ))
    }

    pub fn data_keys_tree(&self) -> &sled::Tree {
        &self.data_keys
    }

    /// Encrypts a value under a fresh data key. The wrapped data key is returned for the
    /// caller to store in the same transaction as the event that carries the secret.
    pub fn seal(&self, value: &SecretValue) -> Result<(SealedSecret, WrappedDataKey), SecretError> {
        let id = Uuid::now_v7();
        let (data_key, data_key_bytes) = AeadKey::generate()?;
        let ciphertext = data_key.seal(id.as_bytes(), value.expose().as_bytes())?;
        let wrapped = WrappedDataKey {
            master_key_id: self.master.id.clone(),
            sealed: self.master.key.seal(id.as_bytes(), &data_key_bytes)?,
        };
        let sealed = SealedSecret {
            id,
            ciphertext,
            fingerprint: self.fingerprint(value),
        };
        Ok((sealed, wrapped))
    }

    pub fn fingerprint(&self, value: &SecretValue) -> String {
        self.fingerprints.fingerprint(value.expose().as_bytes())
    }

    /// Decrypts a secret whose data key is stored, or about to be stored (`pending`).
    pub fn reveal_with(
        &self,
        sealed: &SealedSecret,
        pending: Option<&WrappedDataKey>,
    ) -> Result<SecretValue, SecretError> {
        let wrapped = match pending {
            Some(wrapped) => wrapped.clone(),
            None => {
                let bytes = self
                    .data_keys
                    .get(sealed.id.as_bytes())?
                    .ok_or(SecretError::Shredded(sealed.id))?;
                serde_json::from_slice(&bytes)
                    .map_err(|error| SecretError::Metadata(error.to_string()))?
            }
        };
        if wrapped.master_key_id != self.master.id {
            return Err(SecretError::MissingPreviousKey(wrapped.master_key_id));
        }
        let data_key_bytes = self
            .master
            .key
            .open(sealed.id.as_bytes(), &wrapped.sealed)
            .map_err(|error| SecretError::Corrupt(sealed.id, error))?;
        let data_key = AeadKey::from_bytes(&data_key_bytes)?;
        let plaintext = data_key
            .open(sealed.id.as_bytes(), &sealed.ciphertext)
            .map_err(|error| SecretError::Corrupt(sealed.id, error))?;
        let text = String::from_utf8(plaintext)
            .map_err(|_| SecretError::Corrupt(sealed.id, CryptoError::Open))?;
        Ok(SecretValue::new(text))
    }

    pub fn reveal(&self, sealed: &SealedSecret) -> Result<SecretValue, SecretError> {
        self.reveal_with(sealed, None)
    }

    pub fn encode_wrapped(wrapped: &WrappedDataKey) -> Vec<u8> {
        serde_json::to_vec(wrapped).expect("a wrapped key always serializes")
    }
}

/// Writes a new random master key as base64 text, readable by the owner only.
pub fn generate_master_key_file(path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let bytes = random_bytes::<KEY_LEN>().map_err(std::io::Error::other)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    writeln!(file, "{}", STANDARD.encode(bytes))?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_text(byte: u8) -> String {
        STANDARD.encode([byte; 32])
    }

    #[test]
    fn seal_open_and_shred() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let store =
            SecretStore::load(&db, MasterKey::from_text(&key_text(1)).unwrap(), None).unwrap();
        let value = SecretValue::new("dd-api-key-123");
        let (sealed, wrapped) = store.seal(&value).unwrap();
        assert!(!String::from_utf8_lossy(&sealed.ciphertext).contains("dd-api-key-123"));
        assert_eq!(store.reveal_with(&sealed, Some(&wrapped)).unwrap(), value);
        // Not stored yet: the data key is missing, as after shredding.
        assert!(matches!(
            store.reveal(&sealed),
            Err(SecretError::Shredded(_))
        ));
        store
            .data_keys_tree()
            .insert(sealed.id.as_bytes(), SecretStore::encode_wrapped(&wrapped))
            .unwrap();
        assert_eq!(store.reveal(&sealed).unwrap(), value);
        store.data_keys_tree().remove(sealed.id.as_bytes()).unwrap();
        assert!(matches!(
            store.reveal(&sealed),
            Err(SecretError::Shredded(_))
        ));
    }

    #[test]
    fn wrong_master_key_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            SecretStore::load(&db, MasterKey::from_text(&key_text(1)).unwrap(), None).unwrap();
        }
        let db = sled::open(dir.path()).unwrap();
        let error = SecretStore::load(&db, MasterKey::from_text(&key_text(2)).unwrap(), None)
            .err()
            .unwrap();
        assert!(matches!(error, SecretError::WrongMasterKey { .. }));
        assert!(error.to_string().contains("does not match"));
    }

    #[test]
    fn rotation_rewraps_every_data_key_and_retires_the_old_key() {
        let dir = tempfile::tempdir().unwrap();
        let value = SecretValue::new("rotate-me");
        let (sealed, fingerprint) = {
            let db = sled::open(dir.path()).unwrap();
            let store =
                SecretStore::load(&db, MasterKey::from_text(&key_text(1)).unwrap(), None).unwrap();
            let (sealed, wrapped) = store.seal(&value).unwrap();
            store
                .data_keys_tree()
                .insert(sealed.id.as_bytes(), SecretStore::encode_wrapped(&wrapped))
                .unwrap();
            (sealed, store.fingerprint(&value))
        };
        // The new key alone cannot open a directory made with the old one.
        {
            let db = sled::open(dir.path()).unwrap();
            let error = SecretStore::load(&db, MasterKey::from_text(&key_text(2)).unwrap(), None)
                .err()
                .unwrap();
            assert!(matches!(error, SecretError::WrongMasterKey { .. }));
        }
        // New key with the old one as previous: everything is re-wrapped.
        {
            let db = sled::open(dir.path()).unwrap();
            let store = SecretStore::load(
                &db,
                MasterKey::from_text(&key_text(2)).unwrap(),
                Some(MasterKey::from_text(&key_text(1)).unwrap()),
            )
            .unwrap();
            assert_eq!(store.reveal(&sealed).unwrap(), value);
            assert_eq!(store.fingerprint(&value), fingerprint);
        }
        // The old key is retired: the new one alone opens everything.
        let db = sled::open(dir.path()).unwrap();
        let store =
            SecretStore::load(&db, MasterKey::from_text(&key_text(2)).unwrap(), None).unwrap();
        assert_eq!(store.reveal(&sealed).unwrap(), value);
        assert_eq!(store.fingerprint(&value), fingerprint);
        drop(store);
        let error = SecretStore::load(&db, MasterKey::from_text(&key_text(1)).unwrap(), None)
            .err()
            .unwrap();
        assert!(matches!(error, SecretError::WrongMasterKey { .. }));
    }

    #[test]
    fn fingerprints_are_stable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let value = SecretValue::new("pw");
        let first = {
            let db = sled::open(dir.path()).unwrap();
            SecretStore::load(&db, MasterKey::from_text(&key_text(3)).unwrap(), None)
                .unwrap()
                .fingerprint(&value)
        };
        let db = sled::open(dir.path()).unwrap();
        let store =
            SecretStore::load(&db, MasterKey::from_text(&key_text(3)).unwrap(), None).unwrap();
        assert_eq!(store.fingerprint(&value), first);
    }

    #[test]
    fn master_key_sources() {
        assert!(matches!(
            MasterKey::load(None, None),
            Err(SecretError::MissingMasterKey)
        ));
        assert!(matches!(
            MasterKey::load(None, Some("  ")),
            Err(SecretError::MissingMasterKey)
        ));
        assert!(MasterKey::load(None, Some(&key_text(4))).is_ok());
        assert!(matches!(
            MasterKey::load(Some(Path::new("/nonexistent/key")), Some(&key_text(4))),
            Err(SecretError::AmbiguousMasterKey)
        ));
        assert!(matches!(
            MasterKey::load(None, Some("dG9vIHNob3J0")),
            Err(SecretError::InvalidMasterKey(_))
        ));
    }
}

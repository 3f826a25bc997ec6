//! `jwks_parse`: JWKS documents, read by the node into verification keys
//! (`portcullis_data_plane::jwt::keys::KeySet::parse`) and checked by the shared
//! configuration validation (`portcullis_shared::convert::check_jwks_json`).
//!
//! Neither may panic, whatever the document. A key set accounts for every entry of `keys`
//! (used or skipped with a reason, in order), and holds at least one and at most
//! `MAX_KEYS` keys. A document the control plane accepts is one a node uses every key of:
//! otherwise the control plane stores a server that every node refuses.

use portcullis_data_plane::jwt::keys::{KeySet, KeySetError, MAX_KEYS};
use portcullis_shared::convert::check_jwks_json;
use serde_json::Value;

pub fn fuzz(data: &[u8]) {
    check_document(data);
}

pub fn check_document(document: &[u8]) {
    let node = KeySet::parse(document);
    let entries = serde_json::from_slice::<Value>(document)
        .ok()
        .and_then(|value| value.get("keys")?.as_array().map(Vec::len));
    // The control plane's check of an inline JWKS.
    let accepted_by_control_plane =
        std::str::from_utf8(document).is_ok_and(|text| check_jwks_json(text).is_ok());
    if accepted_by_control_plane {
        match &node {
            Ok(parsed) => assert!(
                parsed.skipped.is_empty() && Some(parsed.keys.len()) == entries,
                "the control plane accepts a JWKS of which a node skips keys: {:?}",
                parsed.skipped
            ),
            Err(error) => panic!("the control plane accepts a JWKS that a node refuses: {error}"),
        }
    }
    match node {
        Ok(parsed) => {
            let keys = &parsed.keys;
            assert!(
                !keys.is_empty() && keys.len() <= MAX_KEYS,
                "{} keys",
                keys.len()
            );
            assert_eq!(keys.key_ids().len(), keys.len());
            let mut previous = None;
            for skipped in &parsed.skipped {
                assert!(
                    previous < Some(skipped.index),
                    "skipped keys in document order"
                );
                previous = Some(skipped.index);
                assert!(!skipped.reason.is_empty());
            }
            if let Some(entries) = entries {
                assert_eq!(
                    keys.len() + parsed.skipped.len(),
                    entries,
                    "every entry is used or skipped"
                );
                assert!(parsed.skipped.iter().all(|skipped| skipped.index < entries));
            }
            assert!(keys.same_keys(keys));
        }
        Err(KeySetError::TooManyKeys { count, limit }) => {
            assert!(count > limit);
            assert_eq!(limit, MAX_KEYS);
        }
        Err(KeySetError::NoUsableKey(skipped)) => {
            if let Some(entries) = entries {
                assert_eq!(skipped.len(), entries, "every entry was skipped");
            }
        }
        Err(KeySetError::NotJwks(_)) => {}
    }
}

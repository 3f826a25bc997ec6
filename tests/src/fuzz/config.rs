//! `config_proto`: configuration messages decoded from arbitrary bytes
//! (`prost::Message::decode` of `McpServer`, `ConfigState` and `Snapshot`), then converted
//! with the shared `TryFrom` conversions, as the admin API and nodes do.
//!
//! The first byte picks the message. Whatever the bytes, nothing panics. What a conversion
//! accepts must round-trip: domain -> proto -> domain gives the same value, and so does the
//! JSON form the event log stores. A server in an accepted snapshot must compile on a node
//! (except one whose JWKS comes from a URL, which needs the node's runtime to fetch).

use std::sync::Arc;

use portcullis_data_plane::compiled::CompiledServer;
use portcullis_data_plane::config::UpstreamHostAllowlist;
use portcullis_data_plane::jwt::{JwksPolicy, JwksRegistry};
use portcullis_proto::v1 as proto;
use portcullis_shared::config::{
    AgentAuthMode, IdentityProvider, JwksSource, McpServer, OAuthApp, WithSecrets,
};
use portcullis_shared::convert::{secret_plaintext_proto, stored_credential_from_proto};
use portcullis_shared::secret::SecretInput;
use portcullis_shared::snapshot::Snapshot;
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Which message the first byte selects.
pub const MCP_SERVER: u8 = 0;
pub const CONFIG_STATE: u8 = 1;
pub const SNAPSHOT: u8 = 2;

pub fn fuzz(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        MCP_SERVER => {
            if let Ok(message) = proto::McpServer::decode(bytes) {
                check_server(message);
            }
        }
        CONFIG_STATE => {
            if let Ok(message) = proto::ConfigState::decode(bytes) {
                check_config_state(message);
            }
        }
        _ => {
            if let Ok(message) = proto::Snapshot::decode(bytes) {
                check_snapshot(message);
            }
        }
    }
}

/// The bytes `fuzz` reads as `message` of the given kind (for seeds and property tests).
pub fn encode(kind: u8, message: &impl Message) -> Vec<u8> {
    let mut bytes = vec![kind];
    message.encode(&mut bytes).expect("a Vec grows");
    bytes
}

/// A secret as a writer sends it again: a new value as plaintext, "keep" as unset.
fn secret_proto(secret: SecretInput) -> proto::Secret {
    match secret {
        SecretInput::Set(value) => secret_plaintext_proto(&value),
        SecretInput::Keep => proto::Secret { value: None },
    }
}

/// A secret in a serializable form, for the JSON round trip. Not an `Option`: an optional
/// secret (`Option<S>`) of `Some(None)` would read back as `None`, a difference of this
/// representation only (stored secrets are `SealedSecret`s).
fn secret_text(secret: SecretInput) -> String {
    match secret {
        SecretInput::Set(value) => format!("set:{}", value.expose()),
        SecretInput::Keep => "keep".to_owned(),
    }
}

fn json_round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let json = serde_json::to_string(value).expect("a valid value serializes");
    let back: T = serde_json::from_str(&json)
        .unwrap_or_else(|error| panic!("{error}: a valid value does not read back: {json}"));
    assert_eq!(&back, value, "JSON round trip changed the value");
}

/// Converts a server as the admin API does, and round-trips what is accepted.
pub fn check_server(message: proto::McpServer) {
    let Ok(server) = McpServer::<SecretInput>::try_from(message) else {
        return;
    };
    let again = proto::McpServer::from(server.clone().map_secrets(secret_proto));
    let decoded = proto::McpServer::decode(again.encode_to_vec().as_slice())
        .expect("an encoded message decodes");
    assert_eq!(decoded, again);
    match McpServer::<SecretInput>::try_from(again) {
        Ok(back) => assert_eq!(back, server, "domain -> proto -> domain changed the server"),
        Err(errors) => panic!("an accepted server is refused after a round trip: {errors}"),
    }
    json_round_trip(&server.map_secrets(secret_text));
}

fn check_identity_provider(message: proto::IdentityProvider) {
    let Ok(idp) = IdentityProvider::<SecretInput>::try_from(message) else {
        return;
    };
    let again = proto::IdentityProvider::from(idp.clone().map_secrets(secret_proto));
    match IdentityProvider::<SecretInput>::try_from(again) {
        Ok(back) => assert_eq!(back, idp, "domain -> proto -> domain changed the provider"),
        Err(errors) => {
            panic!("an accepted identity provider is refused after a round trip: {errors}")
        }
    }
    json_round_trip(&idp.map_secrets(secret_text));
}

fn check_oauth_app(message: proto::OAuthApp) {
    let Ok(app) = OAuthApp::<SecretInput>::try_from(message) else {
        return;
    };
    let again = proto::OAuthApp::from(app.clone().map_secrets(secret_proto));
    match OAuthApp::<SecretInput>::try_from(again) {
        Ok(back) => assert_eq!(back, app, "domain -> proto -> domain changed the OAuth app"),
        Err(errors) => panic!("an accepted OAuth app is refused after a round trip: {errors}"),
    }
    json_round_trip(&app.map_secrets(secret_text));
}

/// Converts every entry of a desired state as `apply` does, entry by entry.
pub fn check_config_state(message: proto::ConfigState) {
    for server in message.servers {
        check_server(server);
    }
    for idp in message.identity_providers {
        check_identity_provider(idp);
    }
    for app in message.oauth_apps {
        check_oauth_app(app);
    }
    for credential in message.credentials {
        let Ok(parsed) = stored_credential_from_proto(credential) else {
            continue;
        };
        let again = proto::StoredCredential {
            id: parsed.id.to_string(),
            description: parsed.description.clone(),
            org_value: parsed.org_value.clone().map(secret_proto),
            user_values: Vec::new(),
        };
        match stored_credential_from_proto(again) {
            Ok(back) => assert_eq!(
                back, parsed,
                "domain -> proto -> domain changed the credential"
            ),
            Err(errors) => panic!("an accepted credential is refused after a round trip: {errors}"),
        }
    }
}

/// Converts a snapshot as a node does, round-trips it, and compiles its servers.
pub fn check_snapshot(message: proto::Snapshot) {
    let Ok(snapshot) = Snapshot::try_from(message) else {
        return;
    };
    let again = proto::Snapshot::from(&snapshot);
    match Snapshot::try_from(again) {
        Ok(back) => assert_eq!(
            back, snapshot,
            "domain -> proto -> domain changed the snapshot"
        ),
        Err(errors) => panic!("an accepted snapshot is refused after a round trip: {errors}"),
    }
    // JWKS URLs need the node's runtime; without one, compiling them is refused, and only
    // those servers are left out of the check.
    let registry = JwksRegistry::with_fetcher(
        JwksPolicy::default(),
        Arc::new(crate::fuzz::jwt::NeverFetch),
    );
    for server in snapshot.servers.values() {
        let jwks_url = matches!(
            &server.agent_auth.mode,
            AgentAuthMode::Passthrough {
                jwt_validation: Some(validation)
            } if matches!(validation.jwks, JwksSource::Url(_))
        );
        if jwks_url {
            continue;
        }
        if let Err(errors) = CompiledServer::compile(server, &registry, &UpstreamHostAllowlist::Any)
        {
            panic!(
                "server {} is in an accepted snapshot but a node cannot compile it: {errors}",
                server.name
            );
        }
    }
}

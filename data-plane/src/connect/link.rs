//! The values the account-linking flow carries, each sealed under the fleet's sealing key
//! for its own purpose (see [`crate::oauth::keyring`]): any node finishes a flow another
//! started, and nothing in a URL can be read or altered.
//!
//! - [`ConnectLink`]: the prompt's URL, `P/connect/{app}?request=<sealed>`. It names the user
//!   (identity provider and subject), the app and the server, and expires after
//!   [`LINK_LIFETIME_SECS`]. Sealed, it carries no PII or credential in clear; it is not
//!   pre-authenticated either: whoever opens it signs in at the identity provider first,
//!   and only the user it names can finish it.
//! - [`ConnectLogin`]: the `state` sent to the identity provider to verify that user (the
//!   link, the browser binding, PKCE verifier and nonce of that login).
//! - [`ConnectAuthorization`]: the `state` sent to the app's provider (the link, the
//!   browser binding, the PKCE verifier of the provider's authorization).

use portcullis_shared::names::CatalogId;
use serde::{Deserialize, Serialize};

use crate::oauth::keyring::{GatewayKeyring, OpenError, Purpose, SealError};
use crate::oauth::random_id;
use crate::oauth::runtime::VaultUser;
use crate::vault::LinkKey;

/// How long a prompt's link can be opened.
pub const LINK_LIFETIME_SECS: i64 = 15 * 60;
/// How long the sign-in and the provider's authorization may take once the link is open.
pub const FLOW_LIFETIME_SECS: i64 = 10 * 60;

/// What a prompt's link stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectLink {
    pub app_id: String,
    pub server: String,
    pub identity_provider: String,
    pub subject: String,
    /// Makes every link distinct.
    pub nonce: String,
}

impl ConnectLink {
    pub fn new(app_id: &CatalogId, server: &str, user: &VaultUser) -> Self {
        Self {
            app_id: app_id.to_string(),
            server: server.to_owned(),
            identity_provider: user.identity_provider.clone(),
            subject: user.subject.clone(),
            nonce: random_id(),
        }
    }

    pub fn user(&self) -> VaultUser {
        VaultUser::new(self.identity_provider.clone(), self.subject.clone())
    }

    pub fn key(&self) -> LinkKey {
        LinkKey::new(self.app_id.clone(), self.user())
    }

    /// The sealed value of the link's `request` parameter.
    pub fn seal(&self, keys: &GatewayKeyring, now_unix: i64) -> Result<String, SealError> {
        keys.seal(Purpose::ConnectLink, self, now_unix + LINK_LIFETIME_SECS)
    }

    pub fn open(keys: &GatewayKeyring, sealed: &str, now_unix: i64) -> Result<Self, OpenError> {
        keys.open(Purpose::ConnectLink, sealed, now_unix)
    }

    /// The link's URL under the gateway's public URL (`issuer`).
    pub fn url(&self, issuer: &crate::oauth::Issuer, sealed: &str) -> String {
        let mut url = format!(
            "{}?request=",
            issuer.endpoint(&format!("/connect/{}", self.app_id))
        );
        url.extend(url::form_urlencoded::byte_serialize(sealed.as_bytes()));
        url
    }
}

/// The `state` of the identity provider login that verifies the user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectLogin {
    pub link: ConnectLink,
    /// The digest of the browser cookie of the browser that opened the link.
    pub browser: String,
    pub code_verifier: String,
    pub nonce: String,
}

/// The `state` of the app provider's authorization.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectAuthorization {
    pub link: ConnectLink,
    pub browser: String,
    pub code_verifier: String,
}

impl ConnectLogin {
    pub fn seal(&self, keys: &GatewayKeyring, now_unix: i64) -> Result<String, SealError> {
        keys.seal(Purpose::ConnectLogin, self, now_unix + FLOW_LIFETIME_SECS)
    }

    pub fn open(keys: &GatewayKeyring, sealed: &str, now_unix: i64) -> Result<Self, OpenError> {
        keys.open(Purpose::ConnectLogin, sealed, now_unix)
    }

    /// Whether a `state` is one of these (the identity provider's callback is shared with
    /// Interactive SSO sign-ins).
    pub fn is_one(state: &str) -> bool {
        state
            .strip_prefix(Purpose::ConnectLogin.prefix())
            .is_some_and(|rest| rest.starts_with('.'))
    }
}

impl ConnectAuthorization {
    pub fn seal(&self, keys: &GatewayKeyring, now_unix: i64) -> Result<String, SealError> {
        keys.seal(
            Purpose::ConnectAuthorization,
            self,
            now_unix + FLOW_LIFETIME_SECS,
        )
    }

    pub fn open(keys: &GatewayKeyring, sealed: &str, now_unix: i64) -> Result<Self, OpenError> {
        keys.open(Purpose::ConnectAuthorization, sealed, now_unix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::Issuer;
    use crate::oauth::keyring::tests::{NOW, keys};

    fn link() -> ConnectLink {
        ConnectLink::new(
            &CatalogId::parse("github").unwrap(),
            "github-mcp-server",
            &VaultUser::new("corp-sso-provider", "alice@example.com"),
        )
    }

    #[test]
    fn a_link_opens_until_it_expires_and_shows_nothing_in_clear() {
        let ring = GatewayKeyring::compile(&keys()).unwrap();
        let link = link();
        let sealed = link.seal(&ring, NOW).unwrap();
        let url = link.url(
            &Issuer::new(&url::Url::parse("https://gw.example.com").unwrap()),
            &sealed,
        );
        assert!(url.starts_with("https://gw.example.com/connect/github?request=pcx1."));
        for clear in ["alice", "corp-sso-provider", "github-mcp-server"] {
            assert!(!sealed.contains(clear), "{clear} in {sealed}");
        }
        assert_eq!(ConnectLink::open(&ring, &sealed, NOW + 1).unwrap(), link);
        assert_eq!(
            ConnectLink::open(&ring, &sealed, NOW + LINK_LIFETIME_SECS),
            Err(OpenError::Expired)
        );
        // Every link is distinct, even for the same user, app and server.
        assert_ne!(link.nonce, self::link().nonce);
    }

    #[test]
    fn a_tampered_link_or_another_purpose_does_not_open() {
        let ring = GatewayKeyring::compile(&keys()).unwrap();
        let sealed = link().seal(&ring, NOW).unwrap();
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(
            ConnectLink::open(&ring, &tampered, NOW),
            Err(OpenError::Tampered)
        );
        // The same bytes under another purpose's prefix: refused (the purpose is bound in).
        let as_login = sealed.replacen("pcx1", "pcl1", 1);
        assert!(matches!(
            ConnectLogin::open(&ring, &as_login, NOW),
            Err(OpenError::Tampered)
        ));
        assert!(ConnectLogin::is_one(&as_login));
        assert!(!ConnectLogin::is_one(&sealed));
        assert!(!ConnectLogin::is_one("pcs1.xyz"));
        assert_eq!(
            ConnectLink::open(&ring, "pcx1.not-base64!", NOW),
            Err(OpenError::Malformed)
        );
    }
}

//! The MCP clients the authorization server knows, without storing any of them:
//!
//! - Dynamic client registration (RFC 7591, `POST /oauth/register`): the `client_id` is the
//!   registration itself, sealed (redirect URIs, name, authentication method). A
//!   confidential client's secret is a MAC of its `client_id` under a key derived from the
//!   sealing key, so every node derives the same secret and nothing is stored.
//! - Client ID Metadata Documents: a `client_id` that is an https URL with a path names a
//!   JSON document the client publishes ([`crate::oauth::client_metadata`]).
//!
//! Redirect URIs (both kinds): https; http only on loopback (`127.0.0.0/8`, `[::1]`,
//! `localhost`) for native apps (RFC 8252 section 7.3); or a private-use scheme of a native
//! app (`com.example.app:/callback`, section 7.1). Never a fragment, credentials, or a
//! scheme a browser runs (`javascript:`, `data:`, `file:`...). The authorize endpoint then
//! requires an exact match with a registered one.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use url::Url;

use crate::oauth::AuthorizationServer;
use crate::oauth::http::{OAuthError, Parameters};
use crate::oauth::keyring::{GatewayKeyring, OpenError, Purpose};

/// A registration is kept valid this long (in practice until its sealing key is retired).
pub const REGISTRATION_LIFETIME_SECS: i64 = 10 * 365 * 24 * 3600;
/// At most this many redirect URIs per client.
pub const MAX_REDIRECT_URIS: usize = 8;
pub const MAX_REDIRECT_URI_CHARS: usize = 1024;
pub const MAX_CLIENT_NAME_CHARS: usize = 128;
/// `client_id` values longer than this are refused before any work.
pub const MAX_CLIENT_ID_CHARS: usize = 8 * 1024;

/// Schemes a private-use redirect must not have: the browser would run or read them.
const FORBIDDEN_SCHEMES: &[&str] = &[
    "javascript",
    "data",
    "file",
    "vbscript",
    "about",
    "blob",
    "filesystem",
    "ftp",
    "ws",
    "wss",
    "chrome",
    "view-source",
];

/// How a client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// A public client: PKCE only.
    None,
    ClientSecretBasic,
    ClientSecretPost,
}

impl ClientAuthMethod {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "none" => Some(Self::None),
            "client_secret_basic" => Some(Self::ClientSecretBasic),
            "client_secret_post" => Some(Self::ClientSecretPost),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
        }
    }

    pub fn is_confidential(self) -> bool {
        !matches!(self, Self::None)
    }
}

/// How the gateway learned of a client; it decides what the consent page can vouch for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientSource {
    /// Dynamically registered: everything about it is self-asserted.
    Registered,
    /// A Client ID Metadata Document: the client controls the https URL that is its id.
    MetadataDocument,
}

/// A client, resolved from its `client_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub client_id: String,
    pub name: Option<String>,
    pub client_uri: Option<String>,
    pub redirect_uris: Vec<String>,
    pub auth_method: ClientAuthMethod,
    pub source: ClientSource,
}

impl Client {
    /// A name for the consent page: the client's own, else the host of its redirect.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.redirect_uris
                .first()
                .and_then(|uri| Url::parse(uri).ok())
                .and_then(|url| url.host_str().map(str::to_owned))
                .unwrap_or_else(|| "an unnamed client".to_owned())
        })
    }
}

/// What a sealed `client_id` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SealedRegistration {
    redirect_uris: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_uri: Option<String>,
    auth: ClientAuthMethod,
    iat: i64,
}

/// True for `127.0.0.0/8`, `::1` and `localhost`.
fn is_loopback(url: &Url) -> bool {
    portcullis_shared::names::is_loopback_host(url)
}

/// Checks one redirect URI against the rules in the module documentation.
pub fn check_redirect_uri(uri: &str) -> Result<(), String> {
    if uri.len() > MAX_REDIRECT_URI_CHARS {
        return Err(format!(
            "a redirect URI is longer than {MAX_REDIRECT_URI_CHARS} characters"
        ));
    }
    let url = Url::parse(uri).map_err(|_| "a redirect URI is not an absolute URI".to_owned())?;
    if url.fragment().is_some() || uri.contains('#') {
        return Err("a redirect URI must not have a fragment".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("a redirect URI must not carry credentials".to_owned());
    }
    match url.scheme() {
        "https" => {
            if url.host_str().is_none() {
                return Err("an https redirect URI needs a host".to_owned());
            }
            Ok(())
        }
        "http" if is_loopback(&url) => Ok(()),
        "http" => Err("http redirect URIs are allowed on loopback only; use https".to_owned()),
        scheme if FORBIDDEN_SCHEMES.contains(&scheme) => Err(format!(
            "the {scheme}: scheme is not allowed for redirect URIs"
        )),
        // A private-use scheme of a native app (RFC 8252 section 7.1).
        _ => Ok(()),
    }
}

fn text_field(
    document: &Map<String, Value>,
    name: &str,
    max_chars: usize,
) -> Result<Option<String>, String> {
    match document.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.is_empty() => Ok(None),
        Some(Value::String(text)) => {
            if text.chars().count() > max_chars || text.chars().any(char::is_control) {
                Err(format!(
                    "{name} must be at most {max_chars} characters without control characters"
                ))
            } else {
                Ok(Some(text.clone()))
            }
        }
        Some(_) => Err(format!("{name} must be a string")),
    }
}

fn string_list(document: &Map<String, Value>, name: &str) -> Result<Option<Vec<String>>, String> {
    match document.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{name} must be an array of strings"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(format!("{name} must be an array of strings")),
    }
}

/// The client metadata both registration kinds share, checked. `default_auth` applies when
/// the document names no `token_endpoint_auth_method`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedMetadata {
    pub redirect_uris: Vec<String>,
    pub name: Option<String>,
    pub client_uri: Option<String>,
    pub auth_method: ClientAuthMethod,
    pub application_type: Option<String>,
}

/// An invalid registration: which error code (RFC 7591 section 3.2.2) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataError {
    pub error: &'static str,
    pub description: String,
}

impl MetadataError {
    fn redirect(description: String) -> Self {
        Self {
            error: "invalid_redirect_uri",
            description,
        }
    }

    fn metadata(description: impl Into<String>) -> Self {
        Self {
            error: "invalid_client_metadata",
            description: description.into(),
        }
    }
}

pub fn check_metadata(
    document: &Map<String, Value>,
    default_auth: ClientAuthMethod,
) -> Result<CheckedMetadata, MetadataError> {
    let redirect_uris = string_list(document, "redirect_uris")
        .map_err(MetadataError::redirect)?
        .unwrap_or_default();
    if redirect_uris.is_empty() {
        return Err(MetadataError::redirect(
            "redirect_uris must list at least one URI".to_owned(),
        ));
    }
    if redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(MetadataError::redirect(format!(
            "at most {MAX_REDIRECT_URIS} redirect URIs"
        )));
    }
    for uri in &redirect_uris {
        check_redirect_uri(uri).map_err(MetadataError::redirect)?;
    }
    let auth_method = match text_field(document, "token_endpoint_auth_method", 64)
        .map_err(MetadataError::metadata)?
    {
        None => default_auth,
        Some(method) => ClientAuthMethod::parse(&method).ok_or_else(|| {
            MetadataError::metadata(
                "token_endpoint_auth_method must be none, client_secret_basic or client_secret_post",
            )
        })?,
    };
    let grant_types = string_list(document, "grant_types")
        .map_err(MetadataError::metadata)?
        .unwrap_or_else(|| vec!["authorization_code".to_owned()]);
    for grant_type in &grant_types {
        if !matches!(grant_type.as_str(), "authorization_code" | "refresh_token") {
            return Err(MetadataError::metadata(
                "grant_types may hold authorization_code and refresh_token only",
            ));
        }
    }
    let response_types = string_list(document, "response_types")
        .map_err(MetadataError::metadata)?
        .unwrap_or_else(|| vec!["code".to_owned()]);
    if response_types
        .iter()
        .any(|response_type| response_type != "code")
    {
        return Err(MetadataError::metadata("response_types may hold code only"));
    }
    let application_type =
        text_field(document, "application_type", 16).map_err(MetadataError::metadata)?;
    if let Some(kind) = &application_type
        && kind != "web"
        && kind != "native"
    {
        return Err(MetadataError::metadata(
            "application_type must be web or native",
        ));
    }
    let name = text_field(document, "client_name", MAX_CLIENT_NAME_CHARS)
        .map_err(MetadataError::metadata)?;
    // Only an https client_uri is kept (it is shown); anything else is dropped, not refused.
    let client_uri = text_field(document, "client_uri", 512)
        .ok()
        .flatten()
        .filter(|uri| Url::parse(uri).is_ok_and(|url| url.scheme() == "https"));
    Ok(CheckedMetadata {
        redirect_uris,
        name,
        client_uri,
        auth_method,
        application_type,
    })
}

/// `POST /oauth/register`: checks the metadata and answers with the sealed client id (and
/// the derived secret for a confidential client). Refresh tokens are issued whether or not
/// `grant_types` names them: MCP clients commonly omit it and still refresh.
pub fn register(keys: &GatewayKeyring, body: &[u8], now_unix: i64) -> Result<Value, OAuthError> {
    let document: Map<String, Value> = serde_json::from_slice(body).map_err(|_| {
        OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_client_metadata",
            "the body is not a JSON object",
        )
    })?;
    // RFC 7591 section 2: client_secret_basic when the client names no method.
    let checked =
        check_metadata(&document, ClientAuthMethod::ClientSecretBasic).map_err(|error| {
            OAuthError::new(StatusCode::BAD_REQUEST, error.error, error.description)
        })?;
    let registration = SealedRegistration {
        redirect_uris: checked.redirect_uris.clone(),
        name: checked.name.clone(),
        client_uri: checked.client_uri.clone(),
        auth: checked.auth_method,
        iat: now_unix,
    };
    let expires_at = now_unix + REGISTRATION_LIFETIME_SECS;
    let client_id = keys
        .seal(Purpose::ClientRegistration, &registration, expires_at)
        .map_err(|error| {
            tracing::warn!(%error, "client registration refused");
            OAuthError::temporarily_unavailable("the gateway has no sealing key yet")
        })?;
    let mut response = json!({
        "client_id": client_id,
        "client_id_issued_at": now_unix,
        "redirect_uris": checked.redirect_uris,
        "token_endpoint_auth_method": checked.auth_method.as_str(),
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    });
    if let Some(name) = checked.name {
        response["client_name"] = json!(name);
    }
    if let Some(uri) = checked.client_uri {
        response["client_uri"] = json!(uri);
    }
    if let Some(kind) = checked.application_type {
        response["application_type"] = json!(kind);
    }
    if checked.auth_method.is_confidential() {
        let secret = keys
            .client_secret(&client_id)
            .map_err(|_| OAuthError::server_error("the client secret could not be derived"))?;
        response["client_secret"] = json!(secret);
        response["client_secret_expires_at"] = json!(expires_at);
    }
    Ok(response)
}

/// Why a `client_id` names no usable client. Shown on an error page, never sent to a
/// redirect URI (which is not trusted before the client is known).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("missing client_id")]
    Missing,
    #[error("unknown client: {0}")]
    Unknown(&'static str),
    #[error("the client's metadata document is unusable: {0}")]
    MetadataDocument(String),
    #[error("the gateway has no keys yet")]
    NoKeys,
}

impl From<OpenError> for ClientError {
    fn from(error: OpenError) -> Self {
        match error {
            OpenError::UnknownKey => {
                ClientError::Unknown("registered under a retired key; register again")
            }
            OpenError::Expired => ClientError::Unknown("the registration expired; register again"),
            OpenError::WrongKind | OpenError::Malformed | OpenError::Tampered => {
                ClientError::Unknown("not a client_id of this gateway")
            }
        }
    }
}

/// Resolves a `client_id`: a sealed registration, or a metadata document URL.
pub async fn resolve(
    server: &AuthorizationServer,
    keys: &GatewayKeyring,
    client_id: &str,
    now_unix: i64,
) -> Result<Client, ClientError> {
    if client_id.is_empty() {
        return Err(ClientError::Missing);
    }
    if client_id.len() > MAX_CLIENT_ID_CHARS {
        return Err(ClientError::Unknown("the client_id is too long"));
    }
    if server.client_metadata.is_document_url(client_id) {
        return server
            .client_metadata
            .client(client_id)
            .await
            .map_err(ClientError::MetadataDocument);
    }
    if !client_id.starts_with(Purpose::ClientRegistration.prefix()) {
        return Err(ClientError::Unknown("not a client_id of this gateway"));
    }
    let registration: SealedRegistration =
        keys.open(Purpose::ClientRegistration, client_id, now_unix)?;
    Ok(Client {
        client_id: client_id.to_owned(),
        name: registration.name,
        client_uri: registration.client_uri,
        redirect_uris: registration.redirect_uris,
        auth_method: registration.auth,
        source: ClientSource::Registered,
    })
}

/// What a request to the token or revocation endpoint says about its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedClient {
    pub client_id: String,
    pub secret: Option<String>,
    /// The credentials came in an `Authorization: Basic` header.
    pub basic: bool,
}

fn form_decode(text: &str) -> Option<String> {
    // RFC 6749 section 2.3.1: id and secret are form-urlencoded before Basic encoding.
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(format!("v={text}").as_bytes())
        .map(|(name, value)| (name.into_owned(), value.into_owned()))
        .collect();
    pairs.into_iter().next().map(|(_, value)| value)
}

/// Reads the client's id and secret from `Authorization: Basic` or the form (never both).
pub fn presented_client(
    headers: &HeaderMap,
    parameters: &Parameters,
) -> Result<PresentedClient, OAuthError> {
    let basic = match headers.get(http::header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let text = value
                .to_str()
                .ok()
                .and_then(|text| {
                    let (scheme, rest) = text.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("basic").then(|| rest.trim())
                })
                .ok_or_else(|| {
                    let mut error =
                        OAuthError::invalid_client("the Authorization header must use Basic");
                    error.basic_challenge = true;
                    error
                })?;
            let decoded = STANDARD
                .decode(text)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .and_then(|pair| {
                    let (id, secret) = pair.split_once(':')?;
                    Some((form_decode(id)?, form_decode(secret)?))
                })
                .ok_or_else(|| {
                    let mut error = OAuthError::invalid_client("malformed Basic credentials");
                    error.basic_challenge = true;
                    error
                })?;
            Some(decoded)
        }
    };
    match basic {
        Some((client_id, secret)) => {
            if parameters.get("client_secret").is_some() {
                return Err(OAuthError::invalid_request(
                    "use one client authentication method, not Basic and client_secret together",
                ));
            }
            if let Some(form_id) = parameters.get("client_id")
                && form_id != client_id
            {
                return Err(OAuthError::invalid_request(
                    "the client_id does not match the Basic credentials",
                ));
            }
            Ok(PresentedClient {
                client_id,
                secret: Some(secret),
                basic: true,
            })
        }
        None => {
            let client_id = parameters
                .get("client_id")
                .ok_or_else(|| OAuthError::invalid_client("missing client_id"))?;
            Ok(PresentedClient {
                client_id: client_id.to_owned(),
                secret: parameters.get("client_secret").map(str::to_owned),
                basic: false,
            })
        }
    }
}

/// Authenticates a presented client: confidential clients must prove their derived secret
/// (by Basic or in the form); public clients need nothing (PKCE protects their codes).
pub fn authenticate(
    keys: &GatewayKeyring,
    client: &Client,
    presented: &PresentedClient,
) -> Result<(), OAuthError> {
    if !client.auth_method.is_confidential() {
        return Ok(());
    }
    let fail = |description: &str| {
        let mut error = OAuthError::invalid_client(description.to_owned());
        error.basic_challenge = presented.basic;
        error
    };
    let Some(secret) = &presented.secret else {
        return Err(fail("this client must authenticate with its client secret"));
    };
    if keys.client_secret_matches(&client.client_id, secret) {
        Ok(())
    } else {
        Err(fail("client authentication failed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::keyring::tests::{NOW, keys};

    fn keyring() -> GatewayKeyring {
        GatewayKeyring::compile(&keys()).unwrap()
    }

    #[test]
    fn redirect_uris_follow_the_native_and_web_rules() {
        for good in [
            "https://client.example.com/callback",
            "https://client.example.com/cb?x=1",
            "http://127.0.0.1:33418/callback",
            "http://localhost:6274/oauth/callback",
            "http://[::1]:8080/cb",
            "com.example.app:/oauth2redirect",
            "cursor://anysphere.cursor-retrieval/oauth/callback",
        ] {
            assert_eq!(check_redirect_uri(good), Ok(()), "{good}");
        }
        for bad in [
            "http://client.example.com/callback",
            "http://192.168.1.10/cb",
            "https://client.example.com/cb#frag",
            "https://user:pw@client.example.com/cb",
            "javascript:alert(1)",
            "data:text/html,hi",
            "file:///etc/passwd",
            "/relative/callback",
            "not a uri",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad}");
        }
        assert!(check_redirect_uri(&format!("https://a.example/{}", "x".repeat(1100))).is_err());
    }

    #[test]
    fn registration_seals_the_client_and_derives_a_secret_when_confidential() {
        let keys = keyring();
        let public = register(
            &keys,
            json!({
                "redirect_uris": ["http://127.0.0.1:9999/callback"],
                "client_name": "Inspector",
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "application_type": "native",
            })
            .to_string()
            .as_bytes(),
            NOW,
        )
        .unwrap();
        let client_id = public["client_id"].as_str().unwrap();
        assert!(client_id.starts_with("pcc1."));
        assert!(public.get("client_secret").is_none());
        assert_eq!(public["token_endpoint_auth_method"], "none");
        assert_eq!(public["application_type"], "native");
        let registration: SealedRegistration = keys
            .open(Purpose::ClientRegistration, client_id, NOW + 1)
            .unwrap();
        assert_eq!(registration.name.as_deref(), Some("Inspector"));
        assert_eq!(
            registration.redirect_uris,
            ["http://127.0.0.1:9999/callback"]
        );

        // No method named: client_secret_basic (RFC 7591), with a derived secret.
        let confidential = register(
            &keys,
            json!({"redirect_uris": ["https://app.example.com/cb"]})
                .to_string()
                .as_bytes(),
            NOW,
        )
        .unwrap();
        assert_eq!(
            confidential["token_endpoint_auth_method"],
            "client_secret_basic"
        );
        let id = confidential["client_id"].as_str().unwrap();
        let secret = confidential["client_secret"].as_str().unwrap();
        assert!(keys.client_secret_matches(id, secret));
        assert!(!keys.client_secret_matches(client_id, secret));
    }

    #[test]
    fn bad_registrations_get_the_rfc_7591_error_codes() {
        let keys = keyring();
        let refused = |document: Value| {
            register(&keys, document.to_string().as_bytes(), NOW)
                .unwrap_err()
                .error
        };
        assert_eq!(refused(json!({})), "invalid_redirect_uri");
        assert_eq!(
            refused(json!({"redirect_uris": ["http://evil.example/cb"]})),
            "invalid_redirect_uri"
        );
        assert_eq!(
            refused(json!({"redirect_uris": "https://a.example/cb"})),
            "invalid_redirect_uri"
        );
        let many: Vec<String> = (0..=MAX_REDIRECT_URIS)
            .map(|index| format!("https://a.example/cb{index}"))
            .collect();
        assert_eq!(
            refused(json!({"redirect_uris": many})),
            "invalid_redirect_uri"
        );
        let good = json!(["https://a.example/cb"]);
        for bad_metadata in [
            json!({"redirect_uris": good, "token_endpoint_auth_method": "private_key_jwt"}),
            json!({"redirect_uris": good, "grant_types": ["implicit"]}),
            json!({"redirect_uris": good, "grant_types": ["client_credentials"]}),
            json!({"redirect_uris": good, "response_types": ["token"]}),
            json!({"redirect_uris": good, "client_name": "x".repeat(200)}),
            json!({"redirect_uris": good, "client_name": "evil\nname"}),
            json!({"redirect_uris": good, "application_type": "tv"}),
        ] {
            assert_eq!(
                refused(bad_metadata.clone()),
                "invalid_client_metadata",
                "{bad_metadata}"
            );
        }
        assert_eq!(
            register(&keys, b"[1,2]", NOW).unwrap_err().error,
            "invalid_client_metadata"
        );
    }

    #[test]
    fn presented_clients_come_from_basic_or_the_form() {
        let mut headers = HeaderMap::new();
        let form = Parameters::from_pairs(&[("client_id", "c1"), ("client_secret", "s1")]);
        assert_eq!(
            presented_client(&headers, &form).unwrap(),
            PresentedClient {
                client_id: "c1".to_owned(),
                secret: Some("s1".to_owned()),
                basic: false,
            }
        );
        // Basic: form-urlencoded id and secret, then base64.
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Basic {}", STANDARD.encode("c%3A1:s%2B1"))
                .parse()
                .unwrap(),
        );
        let presented = presented_client(&headers, &Parameters::default()).unwrap();
        assert_eq!(presented.client_id, "c:1");
        assert_eq!(presented.secret.as_deref(), Some("s+1"));
        assert!(presented.basic);
        // Both methods at once, or a mismatching id: refused.
        assert!(presented_client(&headers, &form).is_err());
        headers.insert(http::header::AUTHORIZATION, "Bearer x".parse().unwrap());
        let error = presented_client(&headers, &Parameters::default()).unwrap_err();
        assert_eq!(error.error, "invalid_client");
        assert!(error.basic_challenge);
        assert!(presented_client(&HeaderMap::new(), &Parameters::default()).is_err());
    }
}

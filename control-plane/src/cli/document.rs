//! The declarative configuration document that `apply` reads and `export` writes.
//!
//! These are the CLI's own serde types, not the proto messages: field names are the proto
//! names in snake_case, a oneof is a single key (`app_auth: { api_key: { ... } }`), and
//! every struct refuses unknown fields, so a typo is an error instead of a silently
//! ignored setting. Each oneof is read through a `Raw*` struct with one optional field per
//! arm and then checked for "exactly one", because serde's `flatten` cannot be combined
//! with `deny_unknown_fields`.
//!
//! Secrets are `{ env: NAME }`, `{ file: PATH }` or `{ value: LITERAL }`. They are
//! deserialize-only: no secret is ever written out, so `export` leaves every secret out,
//! and an absent secret means "keep the stored value". That is why exporting and applying
//! the result again gives an empty plan.
//!
//! The document is converted to and from `proto::ConfigState` here and nowhere else; the
//! single-item commands (`server create -f`, `server set-app-auth`, `header add`) build
//! these types too and reuse the same conversion.

use std::collections::{BTreeMap, BTreeSet};

use portcullis_proto::v1 as proto;
use portcullis_shared::convert::secret_plaintext_proto;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::secret_source::{SecretResolver, SecretSource, SecretSourceError};

/// The schema version this CLI reads and writes. Exported files carry it, so a later CLI
/// that changes the shape can still read what an older one wrote.
pub const DOCUMENT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("{0}")]
    Parse(String),
    #[error("the document is empty")]
    Empty,
    #[error(
        "unsupported document version {0} (this portcullisctl reads version {DOCUMENT_VERSION})"
    )]
    UnsupportedVersion(u32),
    #[error("{path}: {source}")]
    Secret {
        path: String,
        source: SecretSourceError,
    },
    #[error("{path}: duplicate {what} {id:?}")]
    Duplicate {
        path: &'static str,
        what: &'static str,
        id: String,
    },
    #[error("{path}: missing from the control plane's reply")]
    Missing { path: String },
    #[error(
        "{path}: unknown value {value} in the control plane's reply (is portcullisctl older than the control plane?)"
    )]
    UnknownValue { path: String, value: i32 },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

// ---------------------------------------------------------------------------------------
// The document.

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDocument {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<Server>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identity_providers: Vec<IdentityProvider>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oauth_apps: Vec<OAuthApp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<Credential>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub name: String,
    pub upstream_url: String,
    /// Absent: the control plane's default (streamable_http).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
    pub agent_auth: AgentAuth,
    pub app_auth: AppAuth,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbound_headers: Vec<OutboundHeader>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    StreamableHttp,
    LegacySse,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawAgentAuth", into = "RawAgentAuth")]
pub struct AgentAuth {
    pub mode: AgentAuthMode,
    pub restricted_inbound_headers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAuthMode {
    Interactive(Interactive),
    Passthrough(PassthroughAgent),
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawAgentAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interactive: Option<Interactive>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    passthrough: Option<PassthroughAgent>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    restricted_inbound_headers: Vec<String>,
}

impl TryFrom<RawAgentAuth> for AgentAuth {
    type Error = String;

    fn try_from(raw: RawAgentAuth) -> Result<Self, String> {
        let mode = exactly_one([
            (
                "interactive",
                raw.interactive.map(AgentAuthMode::Interactive),
            ),
            (
                "passthrough",
                raw.passthrough.map(AgentAuthMode::Passthrough),
            ),
        ])?;
        Ok(AgentAuth {
            mode,
            restricted_inbound_headers: raw.restricted_inbound_headers,
        })
    }
}

impl From<AgentAuth> for RawAgentAuth {
    fn from(agent_auth: AgentAuth) -> Self {
        let (interactive, passthrough) = match agent_auth.mode {
            AgentAuthMode::Interactive(interactive) => (Some(interactive), None),
            AgentAuthMode::Passthrough(passthrough) => (None, Some(passthrough)),
        };
        RawAgentAuth {
            interactive,
            passthrough,
            restricted_inbound_headers: agent_auth.restricted_inbound_headers,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interactive {
    pub identity_provider: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassthroughAgent {
    /// Absent: no validation, everything passes through unchecked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_validation: Option<JwtValidation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawJwtValidation", into = "RawJwtValidation")]
pub struct JwtValidation {
    pub jwks: Jwks,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Jwks {
    Url(String),
    /// A JWKS document inline (JSON text).
    Json(String),
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawJwtValidation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jwks_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jwks_json: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    audience: Option<String>,
}

impl TryFrom<RawJwtValidation> for JwtValidation {
    type Error = String;

    fn try_from(raw: RawJwtValidation) -> Result<Self, String> {
        let jwks = exactly_one([
            ("jwks_url", raw.jwks_url.map(Jwks::Url)),
            ("jwks_json", raw.jwks_json.map(Jwks::Json)),
        ])?;
        Ok(JwtValidation {
            jwks,
            issuer: raw.issuer,
            audience: raw.audience,
        })
    }
}

impl From<JwtValidation> for RawJwtValidation {
    fn from(validation: JwtValidation) -> Self {
        let (jwks_url, jwks_json) = match validation.jwks {
            Jwks::Url(url) => (Some(url), None),
            Jwks::Json(json) => (None, Some(json)),
        };
        RawJwtValidation {
            jwks_url,
            jwks_json,
            issuer: validation.issuer,
            audience: validation.audience,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawAppAuth", into = "RawAppAuth")]
pub enum AppAuth {
    OAuthAuthorization(OAuthAuthorization),
    ClientCredentials(ClientCredentials),
    ApiKey(ApiKey),
    Bearer(Bearer),
    Basic(Basic),
    Passthrough,
}

#[derive(Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawAppAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oauth_authorization: Option<OAuthAuthorization>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_credentials: Option<ClientCredentials>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_key: Option<ApiKey>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    bearer: Option<Bearer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    basic: Option<Basic>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    passthrough: Option<Empty>,
}

impl TryFrom<RawAppAuth> for AppAuth {
    type Error = String;

    fn try_from(raw: RawAppAuth) -> Result<Self, String> {
        exactly_one([
            (
                "oauth_authorization",
                raw.oauth_authorization.map(AppAuth::OAuthAuthorization),
            ),
            (
                "client_credentials",
                raw.client_credentials.map(AppAuth::ClientCredentials),
            ),
            ("api_key", raw.api_key.map(AppAuth::ApiKey)),
            ("bearer", raw.bearer.map(AppAuth::Bearer)),
            ("basic", raw.basic.map(AppAuth::Basic)),
            ("passthrough", raw.passthrough.map(|_| AppAuth::Passthrough)),
        ])
    }
}

impl From<AppAuth> for RawAppAuth {
    fn from(app_auth: AppAuth) -> Self {
        let mut raw = RawAppAuth::default();
        match app_auth {
            AppAuth::OAuthAuthorization(config) => raw.oauth_authorization = Some(config),
            AppAuth::ClientCredentials(config) => raw.client_credentials = Some(config),
            AppAuth::ApiKey(config) => raw.api_key = Some(config),
            AppAuth::Bearer(config) => raw.bearer = Some(config),
            AppAuth::Basic(config) => raw.basic = Some(config),
            AppAuth::Passthrough => raw.passthrough = Some(Empty {}),
        }
        raw
    }
}

impl AppAuth {
    pub fn kind_name(&self) -> &'static str {
        match self {
            AppAuth::OAuthAuthorization(_) => "oauth_authorization",
            AppAuth::ClientCredentials(_) => "client_credentials",
            AppAuth::ApiKey(_) => "api_key",
            AppAuth::Bearer(_) => "bearer",
            AppAuth::Basic(_) => "basic",
            AppAuth::Passthrough => "passthrough",
        }
    }
}

/// An arm of a oneof that carries no settings: `passthrough: {}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthAuthorization {
    pub app_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

/// Client credentials, both as app auth and as an outbound `service_token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCredentials {
    pub token_url: String,
    pub client_id: String,
    #[serde(default, skip_serializing)]
    pub client_secret: Option<SecretSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ApiKeyLocation {
    Header,
    Query,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub key_name: String,
    #[serde(default, skip_serializing)]
    pub key_value: Option<SecretSource>,
    pub location: ApiKeyLocation,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bearer {
    #[serde(default, skip_serializing)]
    pub token: Option<SecretSource>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Basic {
    pub username: String,
    #[serde(default, skip_serializing)]
    pub password: Option<SecretSource>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawOutboundHeader", into = "RawOutboundHeader")]
pub struct OutboundHeader {
    pub header_name: String,
    pub prefix: String,
    pub source: OutboundSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundSource {
    ServiceToken(ClientCredentials),
    ForwardCallerToken,
    OnBehalfOf(OnBehalfOf),
    VaultCredential(VaultCredential),
    CallerIdentity(CallerIdentity),
    Custom(CustomValue),
}

impl OutboundSource {
    pub fn kind_name(&self) -> &'static str {
        match self {
            OutboundSource::ServiceToken(_) => "service_token",
            OutboundSource::ForwardCallerToken => "forward_caller_token",
            OutboundSource::OnBehalfOf(_) => "on_behalf_of",
            OutboundSource::VaultCredential(_) => "vault_credential",
            OutboundSource::CallerIdentity(_) => "caller_identity",
            OutboundSource::Custom(_) => "custom",
        }
    }
}

#[derive(Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawOutboundHeader {
    header_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    service_token: Option<ClientCredentials>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    forward_caller_token: Option<Empty>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    on_behalf_of: Option<OnBehalfOf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vault_credential: Option<VaultCredential>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    caller_identity: Option<CallerIdentity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    custom: Option<CustomValue>,
}

impl TryFrom<RawOutboundHeader> for OutboundHeader {
    type Error = String;

    fn try_from(raw: RawOutboundHeader) -> Result<Self, String> {
        let source = exactly_one([
            (
                "service_token",
                raw.service_token.map(OutboundSource::ServiceToken),
            ),
            (
                "forward_caller_token",
                raw.forward_caller_token
                    .map(|_| OutboundSource::ForwardCallerToken),
            ),
            (
                "on_behalf_of",
                raw.on_behalf_of.map(OutboundSource::OnBehalfOf),
            ),
            (
                "vault_credential",
                raw.vault_credential.map(OutboundSource::VaultCredential),
            ),
            (
                "caller_identity",
                raw.caller_identity.map(OutboundSource::CallerIdentity),
            ),
            ("custom", raw.custom.map(OutboundSource::Custom)),
        ])?;
        Ok(OutboundHeader {
            header_name: raw.header_name,
            prefix: raw.prefix,
            source,
        })
    }
}

impl From<OutboundHeader> for RawOutboundHeader {
    fn from(header: OutboundHeader) -> Self {
        let mut raw = RawOutboundHeader {
            header_name: header.header_name,
            prefix: header.prefix,
            ..RawOutboundHeader::default()
        };
        match header.source {
            OutboundSource::ServiceToken(config) => raw.service_token = Some(config),
            OutboundSource::ForwardCallerToken => raw.forward_caller_token = Some(Empty {}),
            OutboundSource::OnBehalfOf(config) => raw.on_behalf_of = Some(config),
            OutboundSource::VaultCredential(config) => raw.vault_credential = Some(config),
            OutboundSource::CallerIdentity(config) => raw.caller_identity = Some(config),
            OutboundSource::Custom(config) => raw.custom = Some(config),
        }
        raw
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnBehalfOf {
    pub exchange_url: String,
    pub client_id: String,
    #[serde(default, skip_serializing)]
    pub client_secret: Option<SecretSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Absent: urn:ietf:params:oauth:token-type:access_token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_token_type: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum CredentialScope {
    /// The organisation-wide value.
    OrgWide,
    /// The calling user's own value, falling back to the organisation-wide one.
    PerUser,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultCredential {
    pub credential_id: String,
    pub scope: CredentialScope,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerIdentity {
    pub claim: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawCustomValue", into = "RawCustomValue")]
pub enum CustomValue {
    Static(String),
    /// `None` keeps the stored value. Written out as `secret: null`, because the arm must
    /// still be named for the header to say what it is.
    Secret(Option<SecretSource>),
    Template(String),
}

#[derive(Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawCustomValue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    static_value: Option<String>,
    #[serde(
        default,
        deserialize_with = "present_nullable",
        serialize_with = "serialize_kept_secret",
        skip_serializing_if = "Option::is_none"
    )]
    secret: Option<Option<SecretSource>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    template: Option<String>,
}

impl TryFrom<RawCustomValue> for CustomValue {
    type Error = String;

    fn try_from(raw: RawCustomValue) -> Result<Self, String> {
        exactly_one([
            ("static_value", raw.static_value.map(CustomValue::Static)),
            ("secret", raw.secret.map(CustomValue::Secret)),
            ("template", raw.template.map(CustomValue::Template)),
        ])
    }
}

impl From<CustomValue> for RawCustomValue {
    fn from(value: CustomValue) -> Self {
        let mut raw = RawCustomValue::default();
        match value {
            CustomValue::Static(text) => raw.static_value = Some(text),
            CustomValue::Secret(source) => raw.secret = Some(source),
            CustomValue::Template(template) => raw.template = Some(template),
        }
        raw
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityProvider {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub display_name: String,
    pub issuer: String,
    pub client_id: String,
    #[serde(default, skip_serializing)]
    pub client_secret: Option<SecretSource>,
    /// Absent: openid email profile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id_claim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_claim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_claim: Option<String>,
    /// The RFC 8707 resource requested at login for the user's IdP token (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_resource: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthApp {
    pub app_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub display_name: String,
    pub authorize_url: String,
    pub token_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_url: Option<String>,
    pub client_id: String,
    #[serde(default, skip_serializing)]
    pub client_secret: Option<SecretSource>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_authorize_params: BTreeMap<String, String>,
    /// client_secret_basic (the default), client_secret_post or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint_auth_method: Option<String>,
}

/// A credential in the token vault. Per-user values are not part of the document: users
/// store their own with `credential set-user`, and the document never carries them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing)]
    pub org_value: Option<SecretSource>,
}

// ---------------------------------------------------------------------------------------
// Serde helpers.

/// A oneof arm whose settings may all be absent: `passthrough: {}` and a bare
/// `passthrough:` (null) both select it. Only called when the key is present; an absent
/// key falls back to `default` (None).
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(
        Option::<T>::deserialize(deserializer)?.unwrap_or_default(),
    ))
}

/// Like [`present`], but keeps the difference between `secret: null` (keep the stored
/// value) and `secret: { env: X }`.
fn present_nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Some(Option::<T>::deserialize(deserializer)?))
}

/// A secret is never written out, whatever its source; only the fact that the arm is
/// chosen is.
fn serialize_kept_secret<S: Serializer>(
    _secret: &Option<Option<SecretSource>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_none()
}

/// Picks the one arm of a oneof that is set, or says which arms exist.
fn exactly_one<T, const N: usize>(arms: [(&'static str, Option<T>); N]) -> Result<T, String> {
    let names: Vec<&str> = arms.iter().map(|(name, _)| *name).collect();
    let mut chosen = Vec::new();
    let mut found = None;
    for (name, value) in arms {
        if let Some(value) = value {
            chosen.push(name);
            found = Some(value);
        }
    }
    match (chosen.len(), found) {
        (1, Some(value)) => Ok(value),
        (0, _) | (_, None) => Err(format!("set one of {}", names.join(", "))),
        _ => Err(format!(
            "set only one of {} (found {})",
            names.join(", "),
            chosen.join(" and ")
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Parsing.

/// Parses a whole document and checks its version.
pub fn parse_document(text: &str) -> Result<ConfigDocument, DocumentError> {
    // An empty file is refused rather than read as "no servers": applied with --prune it
    // would plan to delete everything, which is never what an empty file meant.
    if text.trim().is_empty() {
        return Err(DocumentError::Empty);
    }
    let document: ConfigDocument =
        serde_norway::from_str(text).map_err(|error| DocumentError::Parse(error.to_string()))?;
    match document.version {
        None | Some(DOCUMENT_VERSION) => Ok(document),
        Some(other) => Err(DocumentError::UnsupportedVersion(other)),
    }
}

/// Parses a single server definition (the shape of one entry of `servers`).
pub fn parse_server(text: &str) -> Result<Server, DocumentError> {
    if text.trim().is_empty() {
        return Err(DocumentError::Empty);
    }
    serde_norway::from_str(text).map_err(|error| DocumentError::Parse(error.to_string()))
}

// ---------------------------------------------------------------------------------------
// Document -> proto. Secrets are resolved on the way; an absent secret stays unset.

fn secret(
    resolver: &SecretResolver<'_>,
    path: impl FnOnce() -> String,
    source: Option<&SecretSource>,
) -> Result<Option<proto::Secret>, DocumentError> {
    match resolver.resolve_optional(source) {
        Ok(value) => Ok(value.as_ref().map(secret_plaintext_proto)),
        Err(source) => Err(DocumentError::Secret {
            path: path(),
            source,
        }),
    }
}

fn check_unique<'a>(
    path: &'static str,
    what: &'static str,
    ids: impl Iterator<Item = &'a str>,
) -> Result<(), DocumentError> {
    let mut seen = BTreeSet::new();
    for id in ids {
        if !seen.insert(id) {
            return Err(DocumentError::Duplicate {
                path,
                what,
                id: id.to_owned(),
            });
        }
    }
    Ok(())
}

/// The path of an entry in a list: by its id, or by index while it has none.
fn entry_path(list: &str, id: &str, index: usize) -> String {
    if id.is_empty() {
        format!("{list}[{index}]")
    } else {
        format!("{list}[{id}]")
    }
}

impl ConfigDocument {
    /// The desired state for the `Apply` RPC, with every secret resolved.
    pub fn to_proto(
        &self,
        resolver: &SecretResolver<'_>,
    ) -> Result<proto::ConfigState, DocumentError> {
        check_unique(
            "servers",
            "server",
            self.servers.iter().map(|s| s.name.as_str()),
        )?;
        check_unique(
            "identity_providers",
            "identity provider",
            self.identity_providers.iter().map(|i| i.id.as_str()),
        )?;
        check_unique(
            "oauth_apps",
            "oauth app",
            self.oauth_apps.iter().map(|a| a.app_id.as_str()),
        )?;
        check_unique(
            "credentials",
            "credential",
            self.credentials.iter().map(|c| c.id.as_str()),
        )?;
        let servers = self
            .servers
            .iter()
            .enumerate()
            .map(|(index, server)| {
                server.to_proto(resolver, &entry_path("servers", &server.name, index))
            })
            .collect::<Result<_, _>>()?;
        let identity_providers = self
            .identity_providers
            .iter()
            .enumerate()
            .map(|(index, idp)| {
                idp.to_proto(resolver, &entry_path("identity_providers", &idp.id, index))
            })
            .collect::<Result<_, _>>()?;
        let oauth_apps = self
            .oauth_apps
            .iter()
            .enumerate()
            .map(|(index, app)| {
                app.to_proto(resolver, &entry_path("oauth_apps", &app.app_id, index))
            })
            .collect::<Result<_, _>>()?;
        let credentials = self
            .credentials
            .iter()
            .enumerate()
            .map(|(index, credential)| {
                credential.to_proto(resolver, &entry_path("credentials", &credential.id, index))
            })
            .collect::<Result<_, _>>()?;
        Ok(proto::ConfigState {
            revision: 0,
            servers,
            identity_providers,
            oauth_apps,
            credentials,
        })
    }
}

impl Server {
    pub fn to_proto(
        &self,
        resolver: &SecretResolver<'_>,
        path: &str,
    ) -> Result<proto::McpServer, DocumentError> {
        check_unique(
            "outbound_headers",
            "outbound header",
            self.outbound_headers.iter().map(|h| h.header_name.as_str()),
        )?;
        let outbound_headers = self
            .outbound_headers
            .iter()
            .enumerate()
            .map(|(index, header)| {
                let header_path = entry_path(
                    &format!("{path}.outbound_headers"),
                    &header.header_name,
                    index,
                );
                header.to_proto(resolver, &header_path)
            })
            .collect::<Result<_, _>>()?;
        Ok(proto::McpServer {
            name: self.name.clone(),
            upstream_url: self.upstream_url.clone(),
            transport: match self.transport {
                None => proto::Transport::Unspecified,
                Some(Transport::StreamableHttp) => proto::Transport::StreamableHttp,
                Some(Transport::LegacySse) => proto::Transport::LegacySse,
            } as i32,
            allowed_origins: self.allowed_origins.clone(),
            agent_auth: Some(self.agent_auth.to_proto()),
            app_auth: Some(
                self.app_auth
                    .to_proto(resolver, &format!("{path}.app_auth"))?,
            ),
            outbound_headers,
            description: self.description.clone(),
        })
    }
}

impl AgentAuth {
    pub fn to_proto(&self) -> proto::AgentAuth {
        let mode = match &self.mode {
            AgentAuthMode::Interactive(interactive) => {
                proto::agent_auth::Mode::Interactive(proto::InteractiveSso {
                    identity_provider: interactive.identity_provider.clone(),
                    scopes: interactive.scopes.clone(),
                })
            }
            AgentAuthMode::Passthrough(passthrough) => {
                proto::agent_auth::Mode::Passthrough(proto::PassthroughAgent {
                    jwt_validation: passthrough.jwt_validation.as_ref().map(|validation| {
                        let (jwks_url, jwks_json) = match &validation.jwks {
                            Jwks::Url(url) => (url.clone(), String::new()),
                            Jwks::Json(json) => (String::new(), json.clone()),
                        };
                        proto::JwtValidation {
                            jwks_url,
                            jwks_json,
                            issuer: validation.issuer.clone().unwrap_or_default(),
                            audience: validation.audience.clone().unwrap_or_default(),
                        }
                    }),
                })
            }
        };
        proto::AgentAuth {
            mode: Some(mode),
            restricted_inbound_headers: self.restricted_inbound_headers.clone(),
        }
    }
}

impl ClientCredentials {
    fn secret(
        &self,
        resolver: &SecretResolver<'_>,
        path: &str,
    ) -> Result<Option<proto::Secret>, DocumentError> {
        secret(
            resolver,
            || format!("{path}.client_secret"),
            self.client_secret.as_ref(),
        )
    }
}

impl AppAuth {
    pub fn to_proto(
        &self,
        resolver: &SecretResolver<'_>,
        path: &str,
    ) -> Result<proto::AppAuth, DocumentError> {
        use proto::app_auth::Kind;
        let kind = match self {
            AppAuth::OAuthAuthorization(config) => {
                Kind::OauthAuthorization(proto::OAuthAuthorization {
                    app_id: config.app_id.clone(),
                    scopes: config.scopes.clone(),
                })
            }
            AppAuth::ClientCredentials(config) => {
                Kind::ClientCredentials(proto::ClientCredentials {
                    token_url: config.token_url.clone(),
                    client_id: config.client_id.clone(),
                    client_secret: config
                        .secret(resolver, &format!("{path}.client_credentials"))?,
                    scopes: config.scopes.clone(),
                    audience: config.audience.clone().unwrap_or_default(),
                })
            }
            AppAuth::ApiKey(config) => Kind::ApiKey(proto::ApiKey {
                key_name: config.key_name.clone(),
                key_value: secret(
                    resolver,
                    || format!("{path}.api_key.key_value"),
                    config.key_value.as_ref(),
                )?,
                location: match config.location {
                    ApiKeyLocation::Header => proto::ApiKeyLocation::Header,
                    ApiKeyLocation::Query => proto::ApiKeyLocation::Query,
                } as i32,
            }),
            AppAuth::Bearer(config) => Kind::Bearer(proto::BearerToken {
                token: secret(
                    resolver,
                    || format!("{path}.bearer.token"),
                    config.token.as_ref(),
                )?,
            }),
            AppAuth::Basic(config) => Kind::Basic(proto::BasicAuth {
                username: config.username.clone(),
                password: secret(
                    resolver,
                    || format!("{path}.basic.password"),
                    config.password.as_ref(),
                )?,
            }),
            AppAuth::Passthrough => Kind::Passthrough(proto::PassthroughApp {}),
        };
        Ok(proto::AppAuth { kind: Some(kind) })
    }
}

impl OutboundHeader {
    pub fn to_proto(
        &self,
        resolver: &SecretResolver<'_>,
        path: &str,
    ) -> Result<proto::OutboundHeader, DocumentError> {
        use proto::outbound_header::Source;
        let source = match &self.source {
            OutboundSource::ServiceToken(config) => Source::ServiceToken(proto::ServiceToken {
                token_url: config.token_url.clone(),
                client_id: config.client_id.clone(),
                client_secret: config.secret(resolver, &format!("{path}.service_token"))?,
                scopes: config.scopes.clone(),
                audience: config.audience.clone().unwrap_or_default(),
            }),
            OutboundSource::ForwardCallerToken => {
                Source::ForwardCallerToken(proto::ForwardCallerToken {})
            }
            OutboundSource::OnBehalfOf(config) => Source::OnBehalfOf(proto::OnBehalfOf {
                exchange_url: config.exchange_url.clone(),
                client_id: config.client_id.clone(),
                client_secret: secret(
                    resolver,
                    || format!("{path}.on_behalf_of.client_secret"),
                    config.client_secret.as_ref(),
                )?,
                audience: config.audience.clone().unwrap_or_default(),
                scopes: config.scopes.clone(),
                requested_token_type: config.requested_token_type.clone().unwrap_or_default(),
            }),
            OutboundSource::VaultCredential(config) => {
                Source::VaultCredential(proto::VaultCredential {
                    credential_id: config.credential_id.clone(),
                    scope: match config.scope {
                        CredentialScope::OrgWide => proto::CredentialScope::OrgWide,
                        CredentialScope::PerUser => proto::CredentialScope::PerUser,
                    } as i32,
                })
            }
            OutboundSource::CallerIdentity(config) => {
                Source::CallerIdentity(proto::CallerIdentity {
                    claim: config.claim.clone(),
                })
            }
            OutboundSource::Custom(value) => {
                use proto::custom_header::Value;
                let value = match value {
                    CustomValue::Static(text) => Value::StaticValue(text.clone()),
                    // An empty Secret message (no arm) is how "keep the stored value" is
                    // said inside a oneof that must still name the secret arm.
                    CustomValue::Secret(source) => Value::Secret(
                        secret(
                            resolver,
                            || format!("{path}.custom.secret"),
                            source.as_ref(),
                        )?
                        .unwrap_or_default(),
                    ),
                    CustomValue::Template(template) => Value::Template(template.clone()),
                };
                Source::Custom(proto::CustomHeader { value: Some(value) })
            }
        };
        Ok(proto::OutboundHeader {
            header_name: self.header_name.clone(),
            prefix: self.prefix.clone(),
            source: Some(source),
        })
    }
}

impl IdentityProvider {
    pub fn to_proto(
        &self,
        resolver: &SecretResolver<'_>,
        path: &str,
    ) -> Result<proto::IdentityProvider, DocumentError> {
        Ok(proto::IdentityProvider {
            id: self.id.clone(),
            issuer: self.issuer.clone(),
            client_id: self.client_id.clone(),
            client_secret: secret(
                resolver,
                || format!("{path}.client_secret"),
                self.client_secret.as_ref(),
            )?,
            scopes: self.scopes.clone(),
            user_id_claim: self.user_id_claim.clone().unwrap_or_default(),
            email_claim: self.email_claim.clone().unwrap_or_default(),
            groups_claim: self.groups_claim.clone().unwrap_or_default(),
            token_resource: self.token_resource.clone().unwrap_or_default(),
            display_name: self.display_name.clone(),
        })
    }
}

impl OAuthApp {
    pub fn to_proto(
        &self,
        resolver: &SecretResolver<'_>,
        path: &str,
    ) -> Result<proto::OAuthApp, DocumentError> {
        Ok(proto::OAuthApp {
            app_id: self.app_id.clone(),
            authorize_url: self.authorize_url.clone(),
            token_url: self.token_url.clone(),
            revocation_url: self.revocation_url.clone().unwrap_or_default(),
            client_id: self.client_id.clone(),
            client_secret: secret(
                resolver,
                || format!("{path}.client_secret"),
                self.client_secret.as_ref(),
            )?,
            default_scopes: self.default_scopes.clone(),
            extra_authorize_params: self
                .extra_authorize_params
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            display_name: self.display_name.clone(),
            token_endpoint_auth_method: self.token_endpoint_auth_method.clone().unwrap_or_default(),
        })
    }
}

impl Credential {
    pub fn to_proto(
        &self,
        resolver: &SecretResolver<'_>,
        path: &str,
    ) -> Result<proto::StoredCredential, DocumentError> {
        Ok(proto::StoredCredential {
            id: self.id.clone(),
            description: self.description.clone(),
            org_value: secret(
                resolver,
                || format!("{path}.org_value"),
                self.org_value.as_ref(),
            )?,
            user_values: Vec::new(),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Proto -> document. Every secret is dropped: a read carries only its status, and the
// document never holds one it did not get from the admin.

fn optional(text: String) -> Option<String> {
    if text.is_empty() { None } else { Some(text) }
}

fn missing(path: &str, field: &str) -> DocumentError {
    DocumentError::Missing {
        path: format!("{path}.{field}"),
    }
}

impl ConfigDocument {
    /// The document for a configuration read from the control plane, sorted by id so that
    /// two exports of the same state are byte for byte equal.
    pub fn from_proto(state: proto::ConfigState) -> Result<Self, DocumentError> {
        let mut servers = state
            .servers
            .into_iter()
            .map(Server::from_proto)
            .collect::<Result<Vec<_>, _>>()?;
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut identity_providers: Vec<_> = state
            .identity_providers
            .into_iter()
            .map(IdentityProvider::from_proto)
            .collect();
        identity_providers.sort_by(|a, b| a.id.cmp(&b.id));
        let mut oauth_apps: Vec<_> = state
            .oauth_apps
            .into_iter()
            .map(OAuthApp::from_proto)
            .collect();
        oauth_apps.sort_by(|a, b| a.app_id.cmp(&b.app_id));
        let mut credentials: Vec<_> = state
            .credentials
            .into_iter()
            .map(Credential::from_proto)
            .collect();
        credentials.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(ConfigDocument {
            version: Some(DOCUMENT_VERSION),
            servers,
            identity_providers,
            oauth_apps,
            credentials,
        })
    }
}

impl Server {
    pub fn from_proto(server: proto::McpServer) -> Result<Self, DocumentError> {
        let path = format!("servers[{}]", server.name);
        let transport = match proto::Transport::try_from(server.transport) {
            Ok(proto::Transport::Unspecified) => None,
            Ok(proto::Transport::StreamableHttp) => Some(Transport::StreamableHttp),
            Ok(proto::Transport::LegacySse) => Some(Transport::LegacySse),
            Err(_) => {
                return Err(DocumentError::UnknownValue {
                    path: format!("{path}.transport"),
                    value: server.transport,
                });
            }
        };
        let agent_auth = AgentAuth::from_proto(
            server
                .agent_auth
                .ok_or_else(|| missing(&path, "agent_auth"))?,
            &format!("{path}.agent_auth"),
        )?;
        let app_auth = AppAuth::from_proto(
            server.app_auth.ok_or_else(|| missing(&path, "app_auth"))?,
            &format!("{path}.app_auth"),
        )?;
        let outbound_headers = server
            .outbound_headers
            .into_iter()
            .map(|header| {
                let header_path = format!("{path}.outbound_headers[{}]", header.header_name);
                OutboundHeader::from_proto(header, &header_path)
            })
            .collect::<Result<_, _>>()?;
        Ok(Server {
            name: server.name,
            upstream_url: server.upstream_url,
            transport,
            description: server.description,
            allowed_origins: server.allowed_origins,
            agent_auth,
            app_auth,
            outbound_headers,
        })
    }
}

impl AgentAuth {
    pub fn from_proto(agent_auth: proto::AgentAuth, path: &str) -> Result<Self, DocumentError> {
        let mode = match agent_auth.mode.ok_or_else(|| missing(path, "mode"))? {
            proto::agent_auth::Mode::Interactive(interactive) => {
                AgentAuthMode::Interactive(Interactive {
                    identity_provider: interactive.identity_provider,
                    scopes: interactive.scopes,
                })
            }
            proto::agent_auth::Mode::Passthrough(passthrough) => {
                let jwt_validation = match passthrough.jwt_validation {
                    None => None,
                    Some(validation) => {
                        let jwks = match (
                            optional(validation.jwks_url),
                            optional(validation.jwks_json),
                        ) {
                            (Some(url), None) => Jwks::Url(url),
                            (None, Some(json)) => Jwks::Json(json),
                            _ => {
                                return Err(DocumentError::Invalid {
                                    path: format!("{path}.passthrough.jwt_validation"),
                                    message: "expected exactly one of jwks_url and jwks_json"
                                        .to_owned(),
                                });
                            }
                        };
                        Some(JwtValidation {
                            jwks,
                            issuer: optional(validation.issuer),
                            audience: optional(validation.audience),
                        })
                    }
                };
                AgentAuthMode::Passthrough(PassthroughAgent { jwt_validation })
            }
        };
        Ok(AgentAuth {
            mode,
            restricted_inbound_headers: agent_auth.restricted_inbound_headers,
        })
    }
}

impl ClientCredentials {
    fn from_parts(
        token_url: String,
        client_id: String,
        scopes: Vec<String>,
        audience: String,
    ) -> Self {
        ClientCredentials {
            token_url,
            client_id,
            client_secret: None,
            scopes,
            audience: optional(audience),
        }
    }
}

impl AppAuth {
    pub fn from_proto(app_auth: proto::AppAuth, path: &str) -> Result<Self, DocumentError> {
        use proto::app_auth::Kind;
        Ok(match app_auth.kind.ok_or_else(|| missing(path, "kind"))? {
            Kind::OauthAuthorization(config) => AppAuth::OAuthAuthorization(OAuthAuthorization {
                app_id: config.app_id,
                scopes: config.scopes,
            }),
            Kind::ClientCredentials(config) => {
                AppAuth::ClientCredentials(ClientCredentials::from_parts(
                    config.token_url,
                    config.client_id,
                    config.scopes,
                    config.audience,
                ))
            }
            Kind::ApiKey(config) => {
                let location = match proto::ApiKeyLocation::try_from(config.location) {
                    Ok(proto::ApiKeyLocation::Header) => ApiKeyLocation::Header,
                    Ok(proto::ApiKeyLocation::Query) => ApiKeyLocation::Query,
                    Ok(proto::ApiKeyLocation::Unspecified) | Err(_) => {
                        return Err(DocumentError::UnknownValue {
                            path: format!("{path}.api_key.location"),
                            value: config.location,
                        });
                    }
                };
                AppAuth::ApiKey(ApiKey {
                    key_name: config.key_name,
                    key_value: None,
                    location,
                })
            }
            Kind::Bearer(_) => AppAuth::Bearer(Bearer { token: None }),
            Kind::Basic(config) => AppAuth::Basic(Basic {
                username: config.username,
                password: None,
            }),
            Kind::Passthrough(_) => AppAuth::Passthrough,
        })
    }
}

impl OutboundHeader {
    pub fn from_proto(header: proto::OutboundHeader, path: &str) -> Result<Self, DocumentError> {
        use proto::outbound_header::Source;
        let source = match header.source.ok_or_else(|| missing(path, "source"))? {
            Source::ServiceToken(config) => {
                OutboundSource::ServiceToken(ClientCredentials::from_parts(
                    config.token_url,
                    config.client_id,
                    config.scopes,
                    config.audience,
                ))
            }
            Source::ForwardCallerToken(_) => OutboundSource::ForwardCallerToken,
            Source::OnBehalfOf(config) => OutboundSource::OnBehalfOf(OnBehalfOf {
                exchange_url: config.exchange_url,
                client_id: config.client_id,
                client_secret: None,
                audience: optional(config.audience),
                scopes: config.scopes,
                requested_token_type: optional(config.requested_token_type),
            }),
            Source::VaultCredential(config) => {
                let scope = match proto::CredentialScope::try_from(config.scope) {
                    Ok(proto::CredentialScope::OrgWide) => CredentialScope::OrgWide,
                    Ok(proto::CredentialScope::PerUser) => CredentialScope::PerUser,
                    Ok(proto::CredentialScope::Unspecified) | Err(_) => {
                        return Err(DocumentError::UnknownValue {
                            path: format!("{path}.vault_credential.scope"),
                            value: config.scope,
                        });
                    }
                };
                OutboundSource::VaultCredential(VaultCredential {
                    credential_id: config.credential_id,
                    scope,
                })
            }
            Source::CallerIdentity(config) => OutboundSource::CallerIdentity(CallerIdentity {
                claim: config.claim,
            }),
            Source::Custom(custom) => {
                use proto::custom_header::Value;
                OutboundSource::Custom(
                    match custom.value.ok_or_else(|| missing(path, "custom.value"))? {
                        Value::StaticValue(text) => CustomValue::Static(text),
                        Value::Secret(_) => CustomValue::Secret(None),
                        Value::Template(template) => CustomValue::Template(template),
                    },
                )
            }
        };
        Ok(OutboundHeader {
            header_name: header.header_name,
            prefix: header.prefix,
            source,
        })
    }
}

impl IdentityProvider {
    pub fn from_proto(idp: proto::IdentityProvider) -> Self {
        IdentityProvider {
            id: idp.id,
            display_name: idp.display_name,
            issuer: idp.issuer,
            client_id: idp.client_id,
            client_secret: None,
            scopes: idp.scopes,
            user_id_claim: optional(idp.user_id_claim),
            email_claim: optional(idp.email_claim),
            groups_claim: optional(idp.groups_claim),
            token_resource: optional(idp.token_resource),
        }
    }
}

impl OAuthApp {
    pub fn from_proto(app: proto::OAuthApp) -> Self {
        OAuthApp {
            app_id: app.app_id,
            display_name: app.display_name,
            authorize_url: app.authorize_url,
            token_url: app.token_url,
            revocation_url: optional(app.revocation_url),
            client_id: app.client_id,
            client_secret: None,
            default_scopes: app.default_scopes,
            extra_authorize_params: app.extra_authorize_params.into_iter().collect(),
            token_endpoint_auth_method: optional(app.token_endpoint_auth_method)
                .filter(|method| method != "client_secret_basic"),
        }
    }
}

impl Credential {
    pub fn from_proto(credential: proto::StoredCredential) -> Self {
        Credential {
            id: credential.id,
            description: credential.description,
            org_value: None,
        }
    }
}

/// The document as YAML, without secrets.
pub fn to_yaml<T: Serialize>(value: &T) -> Result<String, DocumentError> {
    serde_norway::to_string(value).map_err(|error| DocumentError::Parse(error.to_string()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use portcullis_shared::secret::SecretValue;

    use super::*;

    const FULL_DOCUMENT: &str = r#"
version: 1
servers:
  - name: azure-search
    upstream_url: https://search.example.com/mcp
    transport: streamable_http
    description: Azure AI Search
    allowed_origins: [https://chat.example.com]
    agent_auth:
      interactive: { identity_provider: okta, scopes: [openid, email] }
      restricted_inbound_headers: [x-internal-*]
    app_auth:
      bearer: { token: { env: AZURE_KEY } }
    outbound_headers:
      - header_name: x-ms-query-source-authorization
        prefix: "Bearer "
        forward_caller_token: {}
      - header_name: x-team
        custom: { template: "team={{groups}}" }
      - header_name: x-signature
        custom: { secret: { value: demo-signature } }
  - name: datadog
    upstream_url: https://dd.example.com/mcp
    agent_auth:
      passthrough:
        jwt_validation: { jwks_url: https://idp.example.com/jwks, issuer: https://idp.example.com }
    app_auth:
      api_key: { key_name: x-api-key, key_value: { env: DD_KEY }, location: header }
    outbound_headers:
      - header_name: x-service
        service_token:
          token_url: https://auth.example.com/token
          client_id: svc
          client_secret: { file: svc.secret }
          scopes: [read]
          audience: api
      - header_name: x-obo
        on_behalf_of:
          exchange_url: https://sts.example.com/token
          client_id: obo
          audience: downstream
      - header_name: x-vault
        vault_credential: { credential_id: dd-user-key, scope: per_user }
      - header_name: x-user
        caller_identity: { claim: email }
  - name: open
    upstream_url: https://open.example.com/mcp
    transport: legacy_sse
    agent_auth: { passthrough: }
    app_auth: { passthrough: {} }
identity_providers:
  - id: okta
    display_name: Okta
    issuer: https://example.okta.com
    client_id: portcullis
    client_secret: { env: OKTA_SECRET }
    scopes: [openid, email, profile, groups]
    token_resource: https://api.example.com
oauth_apps:
  - app_id: google
    authorize_url: https://accounts.google.com/o/oauth2/v2/auth
    token_url: https://oauth2.googleapis.com/token
    client_id: google-client
    client_secret: { value: demo }
    default_scopes: [https://www.googleapis.com/auth/gmail.readonly]
    extra_authorize_params: { access_type: offline, prompt: consent }
credentials:
  - id: dd-user-key
    description: Datadog per-user keys
    org_value: { env: DD_KEY }
"#;

    fn environment() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("AZURE_KEY".to_owned(), "azure-secret".to_owned()),
            ("DD_KEY".to_owned(), "dd-secret".to_owned()),
            ("OKTA_SECRET".to_owned(), "okta-secret".to_owned()),
        ])
    }

    fn secrets_directory() -> tempfile::TempDir {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("svc.secret"), "svc-secret\n").unwrap();
        directory
    }

    fn plaintext(secret: &Option<proto::Secret>) -> Option<&str> {
        match secret.as_ref().and_then(|secret| secret.value.as_ref()) {
            Some(proto::secret::Value::Plaintext(value)) => Some(value),
            _ => None,
        }
    }

    /// The document as export would write it: the same, minus every secret.
    fn without_secrets(mut document: ConfigDocument) -> ConfigDocument {
        for server in &mut document.servers {
            match &mut server.app_auth {
                AppAuth::ClientCredentials(config) => config.client_secret = None,
                AppAuth::ApiKey(config) => config.key_value = None,
                AppAuth::Bearer(config) => config.token = None,
                AppAuth::Basic(config) => config.password = None,
                AppAuth::OAuthAuthorization(_) | AppAuth::Passthrough => {}
            }
            for header in &mut server.outbound_headers {
                match &mut header.source {
                    OutboundSource::ServiceToken(config) => config.client_secret = None,
                    OutboundSource::OnBehalfOf(config) => config.client_secret = None,
                    OutboundSource::Custom(CustomValue::Secret(source)) => *source = None,
                    OutboundSource::Custom(_)
                    | OutboundSource::ForwardCallerToken
                    | OutboundSource::VaultCredential(_)
                    | OutboundSource::CallerIdentity(_) => {}
                }
            }
        }
        for idp in &mut document.identity_providers {
            idp.client_secret = None;
        }
        for app in &mut document.oauth_apps {
            app.client_secret = None;
        }
        for credential in &mut document.credentials {
            credential.org_value = None;
        }
        document
    }

    #[test]
    fn full_document_parses() {
        let document = parse_document(FULL_DOCUMENT).unwrap();
        assert_eq!(document.servers.len(), 3);
        let datadog = &document.servers[1];
        assert_eq!(
            datadog.app_auth,
            AppAuth::ApiKey(ApiKey {
                key_name: "x-api-key".to_owned(),
                key_value: Some(SecretSource::Env("DD_KEY".to_owned())),
                location: ApiKeyLocation::Header,
            })
        );
        assert_eq!(
            document.servers[2].agent_auth.mode,
            AgentAuthMode::Passthrough(PassthroughAgent::default())
        );
        assert_eq!(document.servers[2].app_auth, AppAuth::Passthrough);
        assert_eq!(
            document.servers[0].outbound_headers[2].source,
            OutboundSource::Custom(CustomValue::Secret(Some(SecretSource::Value(
                SecretValue::new("demo-signature")
            ))))
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name_and_place() {
        // (document, the field path and message, where it is)
        let cases = [
            (
                "servers:\n  - name: a\n    upstream: x\n",
                "servers[0]: unknown field `upstream`, expected one of `name`, `upstream_url`",
                Some("at line 3 column 5"),
            ),
            ("server: []\n", "unknown field `server`", None),
            (
                "servers:\n  - name: a\n    upstream_url: u\n    agent_auth: { passthrough: {} }\n    app_auth: { apikey: {} }\n",
                "servers[0].app_auth: unknown field `apikey`",
                Some("at line 5"),
            ),
            (
                "credentials:\n  - id: a\n    org_value: { vault: x }\n",
                "credentials[0].org_value: unknown field `vault`, expected one of `env`, `file`, `value`",
                Some("at line 3"),
            ),
            (
                "identity_providers:\n  - id: a\n    issuer: i\n    client_id: c\n    scope: [openid]\n",
                "identity_providers[0]: unknown field `scope`",
                Some("at line 5"),
            ),
        ];
        for (text, expected, location) in cases {
            let error = parse_document(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
            if let Some(location) = location {
                assert!(error.contains(location), "{text:?}: {error}");
            }
        }
    }

    #[test]
    fn oneofs_take_exactly_one_arm() {
        let two = "servers:\n  - name: a\n    upstream_url: u\n    agent_auth: { passthrough: {} }\n    app_auth: { passthrough: {}, bearer: {} }\n";
        let error = parse_document(two).unwrap_err().to_string();
        assert!(error.contains("set only one of"), "{error}");
        assert!(error.contains("found bearer and passthrough"), "{error}");
        let none = "servers:\n  - name: a\n    upstream_url: u\n    agent_auth: { restricted_inbound_headers: [x-a] }\n    app_auth: { passthrough: {} }\n";
        let error = parse_document(none).unwrap_err().to_string();
        assert!(
            error.contains("set one of interactive, passthrough"),
            "{error}"
        );
    }

    #[test]
    fn empty_documents_and_other_versions_are_refused() {
        assert!(matches!(parse_document("  \n"), Err(DocumentError::Empty)));
        assert!(matches!(
            parse_document("version: 2\n"),
            Err(DocumentError::UnsupportedVersion(2))
        ));
    }

    #[test]
    fn secrets_are_resolved_into_the_proto() {
        let document = parse_document(FULL_DOCUMENT).unwrap();
        let environment = environment();
        let directory = secrets_directory();
        let resolver = SecretResolver::new(&environment, Box::new(std::io::empty()))
            .with_base_directory(directory.path());
        let state = document.to_proto(&resolver).unwrap();
        let Some(proto::app_auth::Kind::ApiKey(api_key)) = state.servers[1]
            .app_auth
            .as_ref()
            .and_then(|a| a.kind.clone())
        else {
            panic!("api key expected");
        };
        assert_eq!(plaintext(&api_key.key_value), Some("dd-secret"));
        let Some(proto::outbound_header::Source::ServiceToken(token)) =
            state.servers[1].outbound_headers[0].source.clone()
        else {
            panic!("service token expected");
        };
        assert_eq!(plaintext(&token.client_secret), Some("svc-secret"));
        // Absent secrets stay unset: the control plane keeps what it stores.
        let Some(proto::outbound_header::Source::OnBehalfOf(obo)) =
            state.servers[1].outbound_headers[1].source.clone()
        else {
            panic!("on behalf of expected");
        };
        assert_eq!(obo.client_secret, None);
        assert_eq!(
            plaintext(&state.identity_providers[0].client_secret),
            Some("okta-secret")
        );
        assert_eq!(
            plaintext(&state.credentials[0].org_value),
            Some("dd-secret")
        );
    }

    #[test]
    fn an_unresolvable_secret_names_its_path() {
        let document = parse_document(FULL_DOCUMENT).unwrap();
        let environment = BTreeMap::new();
        let directory = secrets_directory();
        let resolver = SecretResolver::new(&environment, Box::new(std::io::empty()))
            .with_base_directory(directory.path());
        let error = document.to_proto(&resolver).unwrap_err().to_string();
        assert_eq!(
            error,
            "servers[azure-search].app_auth.bearer.token: environment variable AZURE_KEY is not set"
        );
    }

    #[test]
    fn duplicates_are_refused_before_sending() {
        let text = "credentials:\n  - id: a\n  - id: a\n";
        let document = parse_document(text).unwrap();
        let environment = BTreeMap::new();
        let resolver = SecretResolver::new(&environment, Box::new(std::io::empty()));
        let error = document.to_proto(&resolver).unwrap_err().to_string();
        assert_eq!(error, "credentials: duplicate credential \"a\"");
    }

    #[test]
    fn document_to_proto_to_document_round_trips_without_secrets() {
        let document = parse_document(FULL_DOCUMENT).unwrap();
        let environment = environment();
        let directory = secrets_directory();
        let resolver = SecretResolver::new(&environment, Box::new(std::io::empty()))
            .with_base_directory(directory.path());
        let state = document.to_proto(&resolver).unwrap();
        let back = ConfigDocument::from_proto(state).unwrap();
        assert_eq!(back, without_secrets(document));
    }

    #[test]
    fn export_omits_every_secret_and_reads_back_the_same() {
        let document = parse_document(FULL_DOCUMENT).unwrap();
        let environment = environment();
        let directory = secrets_directory();
        let resolver = SecretResolver::new(&environment, Box::new(std::io::empty()))
            .with_base_directory(directory.path());
        let exported = ConfigDocument::from_proto(document.to_proto(&resolver).unwrap()).unwrap();
        let yaml = to_yaml(&exported).unwrap();
        for needle in [
            "azure-secret",
            "dd-secret",
            "okta-secret",
            "svc-secret",
            "demo",
            "AZURE_KEY",
            "DD_KEY",
            "svc.secret",
            "client_secret",
            "key_value",
            "org_value",
        ] {
            assert!(
                !yaml.contains(needle),
                "export contains {needle:?}:\n{yaml}"
            );
        }
        // The custom secret header still says which arm it is, with the value left out.
        assert!(yaml.contains("secret: null"), "{yaml}");
        assert!(yaml.contains("bearer: {}"), "{yaml}");
        let reread = parse_document(&yaml).unwrap();
        assert_eq!(reread, exported);
    }

    #[test]
    fn unknown_enum_values_from_a_newer_control_plane_are_reported() {
        let server = proto::McpServer {
            name: "a".to_owned(),
            transport: 42,
            ..proto::McpServer::default()
        };
        let error = Server::from_proto(server).unwrap_err().to_string();
        assert!(
            error.starts_with("servers[a].transport: unknown value 42"),
            "{error}"
        );
    }
}

//! The authentication configuration of MCP servers and the catalogs they reference.
//!
//! Types that hold secrets are generic over the secret representation `S`:
//! - [`crate::secret::SecretInput`] in admin commands (a new value, or keep the stored one);
//! - an encrypted form in the control plane's log and state;
//! - [`crate::secret::SecretValue`] in compiled snapshots on a node;
//! - [`crate::secret::SecretStatus`] in admin reads.
//!
//! `try_map_secrets` walks every secret with its field path (the same path validation
//! errors use), so a conversion between representations is written once per type.

use std::collections::BTreeMap;
use std::convert::Infallible;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::names::{CatalogId, ClaimName, HeaderName, HeaderPattern, Scope, ServerName, UserId};
use crate::template::Template;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    StreamableHttp,
    LegacySse,
}

/// An origin allowed to call a server from a browser: `scheme://host[:port]`.
pub type AllowedOrigin = String;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpServer<S> {
    pub name: ServerName,
    pub upstream_url: Url,
    pub transport: Transport,
    pub allowed_origins: Vec<AllowedOrigin>,
    #[serde(default)]
    pub description: String,
    pub agent_auth: AgentAuth,
    pub app_auth: AppAuth<S>,
    pub outbound_headers: Vec<OutboundHeader<S>>,
}

/// Who is allowed to connect (agent authentication).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentAuth {
    pub mode: AgentAuthMode,
    pub restricted_inbound_headers: Vec<HeaderPattern>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentAuthMode {
    /// Interactive SSO: the gateway is the OAuth authorization server for MCP clients and
    /// delegates login to the identity provider.
    Interactive {
        identity_provider: CatalogId,
        scopes: Vec<Scope>,
    },
    /// The caller's credentials are not checked by the gateway, unless JWT validation is on.
    /// Risk: without validation, anyone who can reach the node can call the server.
    Passthrough {
        jwt_validation: Option<JwtValidation>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtValidation {
    pub jwks: JwksSource,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum JwksSource {
    Url(Url),
    /// A JWKS document that parsed and holds at least one usable key.
    Inline(String),
}

/// Which credential the gateway uses towards the app (app authentication).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AppAuth<S> {
    /// Each user connects their own account once; the gateway stores and refreshes tokens.
    OAuthAuthorization {
        app_id: CatalogId,
        scopes: Vec<Scope>,
    },
    /// A service account: one token for everyone, fetched with client credentials.
    ClientCredentials(ClientCredentials<S>),
    ApiKey {
        key_name: String,
        key_value: S,
        location: ApiKeyLocation,
    },
    Bearer {
        token: S,
    },
    Basic {
        username: String,
        password: S,
    },
    /// The caller's own Authorization header goes upstream exactly as sent. Risk: the
    /// upstream sees the caller's credential; only for upstreams that expect exactly that.
    Passthrough,
}

impl<S> AppAuth<S> {
    /// A stable name for the kind, as audit records and metrics use it.
    pub fn kind_name(&self) -> &'static str {
        match self {
            AppAuth::OAuthAuthorization { .. } => "oauth_authorization",
            AppAuth::ClientCredentials(_) => "client_credentials",
            AppAuth::ApiKey { .. } => "api_key",
            AppAuth::Bearer { .. } => "bearer",
            AppAuth::Basic { .. } => "basic",
            AppAuth::Passthrough => "passthrough",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiKeyLocation {
    Header,
    Query,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCredentials<S> {
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: S,
    pub scopes: Vec<Scope>,
    pub audience: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundHeader<S> {
    pub header_name: HeaderName,
    pub prefix: String,
    pub source: OutboundSource<S>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutboundSource<S> {
    ServiceToken(ClientCredentials<S>),
    /// Risk: the upstream receives the caller's own token.
    ForwardCallerToken,
    OnBehalfOf(TokenExchange<S>),
    VaultCredential {
        credential_id: CatalogId,
        scope: CredentialScope,
    },
    CallerIdentity {
        claim: ClaimName,
    },
    Custom(CustomValue<S>),
}

impl<S> OutboundSource<S> {
    pub fn kind_name(&self) -> &'static str {
        match self {
            OutboundSource::ServiceToken(_) => "service_token",
            OutboundSource::ForwardCallerToken => "forward_caller_token",
            OutboundSource::OnBehalfOf(_) => "on_behalf_of",
            OutboundSource::VaultCredential { .. } => "vault_credential",
            OutboundSource::CallerIdentity { .. } => "caller_identity",
            OutboundSource::Custom(_) => "custom",
        }
    }
}

pub const DEFAULT_REQUESTED_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenExchange<S> {
    pub exchange_url: Url,
    pub client_id: String,
    pub client_secret: S,
    pub audience: Option<String>,
    pub scopes: Vec<Scope>,
    pub requested_token_type: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialScope {
    OrgWide,
    PerUser,
}

/// Externally tagged (`{"static": "x"}`), because it sits inside the internally tagged
/// `OutboundSource`, whose `type` key it must not collide with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CustomValue<S> {
    Static(String),
    Secret(S),
    Template(Template),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityProvider<S> {
    pub id: CatalogId,
    pub display_name: String,
    pub issuer: Url,
    pub client_id: String,
    pub client_secret: Option<S>,
    pub scopes: Vec<Scope>,
    pub user_id_claim: ClaimName,
    pub email_claim: ClaimName,
    pub groups_claim: ClaimName,
    /// The RFC 8707 resource requested from this IdP at login, so the user's IdP token is
    /// issued for an upstream API. `None` for IdPs that refuse the parameter (Entra ID v1).
    pub token_resource: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthApp<S> {
    pub app_id: CatalogId,
    pub display_name: String,
    pub authorize_url: Url,
    pub token_url: Url,
    pub revocation_url: Option<Url>,
    pub client_id: String,
    pub client_secret: Option<S>,
    pub default_scopes: Vec<Scope>,
    pub extra_authorize_params: BTreeMap<String, String>,
    #[serde(default)]
    pub token_endpoint_auth_method: TokenEndpointAuthMethod,
}

/// How the gateway authenticates to an OAuth app's token endpoint. Providers differ, so it
/// is a setting of the app, not a code branch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenEndpointAuthMethod {
    /// HTTP Basic with the client id and secret (RFC 6749 section 2.3.1).
    #[default]
    ClientSecretBasic,
    /// Client id and secret in the form body (GitHub, Slack).
    ClientSecretPost,
    /// No client secret: a public client, PKCE only.
    None,
}

impl TokenEndpointAuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenEndpointAuthMethod::ClientSecretBasic => "client_secret_basic",
            TokenEndpointAuthMethod::ClientSecretPost => "client_secret_post",
            TokenEndpointAuthMethod::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCredential<S> {
    pub id: CatalogId,
    pub description: String,
    pub org_value: Option<S>,
    pub user_values: BTreeMap<UserId, S>,
}

/// The field paths of secrets, as used by `try_map_secrets` and validation errors.
pub mod secret_paths {
    pub const CLIENT_SECRET: &str = "client_secret";
    pub const ORG_VALUE: &str = "org_value";
}

type MapResult<T, E> = Result<T, E>;

impl<S> ClientCredentials<S> {
    fn try_map_secrets<T, E>(
        self,
        path: &str,
        f: &mut impl FnMut(String, S) -> MapResult<T, E>,
    ) -> MapResult<ClientCredentials<T>, E> {
        Ok(ClientCredentials {
            token_url: self.token_url,
            client_id: self.client_id,
            client_secret: f(format!("{path}.client_secret"), self.client_secret)?,
            scopes: self.scopes,
            audience: self.audience,
        })
    }
}

impl<S> WithSecrets<S> for AppAuth<S> {
    type Mapped<T> = AppAuth<T>;

    fn try_map_secrets<T, E>(
        self,
        f: &mut impl FnMut(String, S) -> MapResult<T, E>,
    ) -> MapResult<Self::Mapped<T>, E> {
        Ok(match self {
            AppAuth::OAuthAuthorization { app_id, scopes } => {
                AppAuth::OAuthAuthorization { app_id, scopes }
            }
            AppAuth::ClientCredentials(config) => AppAuth::ClientCredentials(
                config.try_map_secrets("app_auth.client_credentials", f)?,
            ),
            AppAuth::ApiKey {
                key_name,
                key_value,
                location,
            } => AppAuth::ApiKey {
                key_name,
                key_value: f("app_auth.api_key.key_value".to_owned(), key_value)?,
                location,
            },
            AppAuth::Bearer { token } => AppAuth::Bearer {
                token: f("app_auth.bearer.token".to_owned(), token)?,
            },
            AppAuth::Basic { username, password } => AppAuth::Basic {
                username,
                password: f("app_auth.basic.password".to_owned(), password)?,
            },
            AppAuth::Passthrough => AppAuth::Passthrough,
        })
    }
}

impl<S> OutboundHeader<S> {
    /// The path prefix of this header's fields: `outbound_headers[x-name]`.
    pub fn path(&self) -> String {
        format!("outbound_headers[{}]", self.header_name)
    }
}

impl<S> WithSecrets<S> for OutboundHeader<S> {
    type Mapped<T> = OutboundHeader<T>;

    fn try_map_secrets<T, E>(
        self,
        f: &mut impl FnMut(String, S) -> MapResult<T, E>,
    ) -> MapResult<Self::Mapped<T>, E> {
        let path = self.path();
        let source = match self.source {
            OutboundSource::ServiceToken(config) => OutboundSource::ServiceToken(
                config.try_map_secrets(&format!("{path}.service_token"), f)?,
            ),
            OutboundSource::ForwardCallerToken => OutboundSource::ForwardCallerToken,
            OutboundSource::OnBehalfOf(exchange) => OutboundSource::OnBehalfOf(TokenExchange {
                exchange_url: exchange.exchange_url,
                client_id: exchange.client_id,
                client_secret: f(
                    format!("{path}.on_behalf_of.client_secret"),
                    exchange.client_secret,
                )?,
                audience: exchange.audience,
                scopes: exchange.scopes,
                requested_token_type: exchange.requested_token_type,
            }),
            OutboundSource::VaultCredential {
                credential_id,
                scope,
            } => OutboundSource::VaultCredential {
                credential_id,
                scope,
            },
            OutboundSource::CallerIdentity { claim } => OutboundSource::CallerIdentity { claim },
            OutboundSource::Custom(value) => OutboundSource::Custom(match value {
                CustomValue::Static(text) => CustomValue::Static(text),
                CustomValue::Secret(secret) => {
                    CustomValue::Secret(f(format!("{path}.custom.secret"), secret)?)
                }
                CustomValue::Template(template) => CustomValue::Template(template),
            }),
        };
        Ok(OutboundHeader {
            header_name: self.header_name,
            prefix: self.prefix,
            source,
        })
    }
}

impl<S> WithSecrets<S> for McpServer<S> {
    type Mapped<T> = McpServer<T>;

    fn try_map_secrets<T, E>(
        self,
        f: &mut impl FnMut(String, S) -> MapResult<T, E>,
    ) -> MapResult<Self::Mapped<T>, E> {
        Ok(McpServer {
            name: self.name,
            upstream_url: self.upstream_url,
            transport: self.transport,
            allowed_origins: self.allowed_origins,
            description: self.description,
            agent_auth: self.agent_auth,
            app_auth: self.app_auth.try_map_secrets(f)?,
            outbound_headers: self
                .outbound_headers
                .into_iter()
                .map(|header| header.try_map_secrets(f))
                .collect::<Result<_, _>>()?,
        })
    }
}

impl<S> WithSecrets<S> for IdentityProvider<S> {
    type Mapped<T> = IdentityProvider<T>;

    fn try_map_secrets<T, E>(
        self,
        f: &mut impl FnMut(String, S) -> MapResult<T, E>,
    ) -> MapResult<Self::Mapped<T>, E> {
        Ok(IdentityProvider {
            id: self.id,
            display_name: self.display_name,
            issuer: self.issuer,
            client_id: self.client_id,
            client_secret: self
                .client_secret
                .map(|secret| f(secret_paths::CLIENT_SECRET.to_owned(), secret))
                .transpose()?,
            scopes: self.scopes,
            user_id_claim: self.user_id_claim,
            email_claim: self.email_claim,
            groups_claim: self.groups_claim,
            token_resource: self.token_resource,
        })
    }
}

impl<S> WithSecrets<S> for OAuthApp<S> {
    type Mapped<T> = OAuthApp<T>;

    fn try_map_secrets<T, E>(
        self,
        f: &mut impl FnMut(String, S) -> MapResult<T, E>,
    ) -> MapResult<Self::Mapped<T>, E> {
        Ok(OAuthApp {
            app_id: self.app_id,
            display_name: self.display_name,
            authorize_url: self.authorize_url,
            token_url: self.token_url,
            revocation_url: self.revocation_url,
            client_id: self.client_id,
            client_secret: self
                .client_secret
                .map(|secret| f(secret_paths::CLIENT_SECRET.to_owned(), secret))
                .transpose()?,
            default_scopes: self.default_scopes,
            extra_authorize_params: self.extra_authorize_params,
            token_endpoint_auth_method: self.token_endpoint_auth_method,
        })
    }
}

impl<S> WithSecrets<S> for StoredCredential<S> {
    type Mapped<T> = StoredCredential<T>;

    fn try_map_secrets<T, E>(
        self,
        f: &mut impl FnMut(String, S) -> MapResult<T, E>,
    ) -> MapResult<Self::Mapped<T>, E> {
        Ok(StoredCredential {
            id: self.id,
            description: self.description,
            org_value: self
                .org_value
                .map(|secret| f(secret_paths::ORG_VALUE.to_owned(), secret))
                .transpose()?,
            user_values: self
                .user_values
                .into_iter()
                .map(|(user, secret)| {
                    Ok((user.clone(), f(format!("user_values[{user}]"), secret)?))
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

/// A configuration value that holds secrets of type `S`.
pub trait WithSecrets<S>: Sized {
    type Mapped<T>;

    /// Converts every secret, visiting each with its field path. The first error stops.
    fn try_map_secrets<T, E>(
        self,
        f: &mut impl FnMut(String, S) -> MapResult<T, E>,
    ) -> MapResult<Self::Mapped<T>, E>;

    /// Converts every secret with a function that cannot fail.
    fn map_secrets<T>(self, mut f: impl FnMut(S) -> T) -> Self::Mapped<T> {
        let Ok(mapped) = self.try_map_secrets(&mut |_path, secret| Ok::<T, Infallible>(f(secret)));
        mapped
    }

    /// Every secret with its field path, e.g. to keep a stored value the writer left unset.
    fn secret_paths(&self) -> BTreeMap<String, S>
    where
        Self: Clone,
        S: Clone,
    {
        let mut found = BTreeMap::new();
        let Ok(_) = self.clone().try_map_secrets(&mut |path, secret| {
            found.insert(path, secret);
            Ok::<(), Infallible>(())
        });
        found
    }
}

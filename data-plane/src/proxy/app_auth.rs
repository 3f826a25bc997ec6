//! App authentication: the credential the gateway presents to the app behind the MCP
//! server. Runs after the inbound header firewall, so whatever it writes cannot be
//! overwritten or doubled by the caller, and it replaces same-named headers and query
//! parameters the caller sent.
//!
//! - API key, Bearer, Basic: one fixed credential, computed once per snapshot.
//! - Passthrough: the caller's own `Authorization`.
//! - OAuth 2.1 Client Credentials: the gateway's service token for the configured client
//!   ([`crate::tokens::client_credentials`], cached and refreshed in single flight).
//! - OAuth 2.1 Authorization: the calling user's own token for the app, from the token vault
//!   ([`crate::vault`]), keyed by app, identity provider and subject. A user without a link
//!   (or with a broken one) gets the "connect your account" prompt for a `tools/call`
//!   ([`crate::connect::prompt`]) instead of a call that would fail or run without their
//!   identity. Other requests (`initialize`, `tools/list`, notifications, GET, DELETE) go
//!   upstream without a credential, since many upstreams answer those for anyone; if the
//!   upstream refuses one (401), the client gets the prompt as a JSON-RPC error, never the
//!   upstream's 401 (whose challenge would send the MCP client to the upstream's
//!   authorization server). An upstream 401 to a request that carried the user's token
//!   drops the cached token and prompts the user to connect again.
//!   The upstream token never reaches the MCP client.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use hyper::body::Incoming;
use portcullis_shared::config::{ApiKeyLocation, AppAuth};
use portcullis_shared::error::ErrorCode;
use portcullis_shared::names::CatalogId;
use portcullis_shared::secret::SecretValue;
use portcullis_shared::validate::ValidationErrors;
use url::form_urlencoded;

use crate::compiled::CompiledSnapshot;
use crate::connect::link::ConnectLink;
use crate::connect::prompt::{
    self, ConnectPrompt, PromptForm, PromptReason, RequestFacts, RequestKind,
};
use crate::jwt::unix_now;
use crate::oauth::runtime::VaultUser;
use crate::proxy::NodeState;
use crate::proxy::agent_auth::Caller;
use crate::proxy::error::ProxyError;
use crate::tokens::client_credentials::{ClientCredentialsError, ServiceTokenSource};
use crate::vault::{LinkKey, LinkLookup, VaultError};

/// The header MCP sessions travel in.
const MCP_SESSION_ID: &str = "mcp-session-id";
const MCP_PROTOCOL_VERSION: &str = "mcp-protocol-version";

/// How a server's app authentication is applied, computed once per snapshot.
#[derive(Debug)]
pub enum AppAuthPlan {
    /// API key in a header, Bearer and Basic: one fixed header. The value is marked
    /// sensitive, so it is not printed by `Debug` and HTTP/2 never indexes it (HPACK).
    Header {
        name: HeaderName,
        value: HeaderValue,
    },
    /// API key in a query parameter.
    QueryParameter { name: String, value: SecretValue },
    /// The caller's own `Authorization` header goes upstream exactly as sent. Risk: the
    /// upstream sees the caller's credential; the admin chose this explicitly.
    PassthroughCallerAuthorization,
    /// OAuth 2.1 Authorization: the calling user's own token for the app.
    UserToken(UserTokenPlan),
    /// OAuth 2.1 Client Credentials: the gateway's service token.
    ServiceToken(ServiceTokenSource),
}

/// OAuth 2.1 Authorization of one server: which catalog app, which scopes to ask for.
#[derive(Debug, Clone)]
pub struct UserTokenPlan {
    app_id: CatalogId,
    /// The server's scopes; empty means the app's defaults.
    scopes: Vec<String>,
}

impl UserTokenPlan {
    pub fn app_id(&self) -> &CatalogId {
        &self.app_id
    }

    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }
}

/// Why app authentication stopped a request.
#[derive(Debug, thiserror::Error)]
pub enum AppAuthError {
    /// The user must connect (or reconnect) their account: answered with the prompt.
    #[error("the caller's account is not connected")]
    ConnectAccount(Box<ConnectPrompt>),
    /// OAuth 2.1 Authorization needs a user signed in through Interactive SSO.
    #[error("this server's app authentication needs users signed in through Interactive SSO")]
    NoUser,
    #[error("{0}")]
    Vault(#[from] VaultError),
    /// No service token could be obtained.
    #[error("the gateway could not obtain its credential for the app: {0}")]
    ServiceToken(ClientCredentialsError),
    #[error("the gateway cannot seal values right now")]
    Seal,
}

impl AppAuthError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AppAuthError::ConnectAccount(_) => ErrorCode::FailedPrecondition,
            AppAuthError::NoUser => ErrorCode::PermissionDenied,
            AppAuthError::Vault(_) | AppAuthError::Seal => ErrorCode::NotReady,
            AppAuthError::ServiceToken(_) => ErrorCode::Unavailable,
        }
    }

    /// The `data.reason` of the error response.
    pub fn reason(&self) -> &'static str {
        match self {
            AppAuthError::ConnectAccount(_) => "account_not_connected",
            AppAuthError::NoUser => "user_required",
            AppAuthError::Vault(_) => "vault_unavailable",
            AppAuthError::ServiceToken(error) => error.kind(),
            AppAuthError::Seal => "keys_unavailable",
        }
    }

    /// What the caller may read: no token URL, no provider text.
    pub fn public_message(&self) -> String {
        match self {
            AppAuthError::ConnectAccount(prompt) => prompt.text(),
            AppAuthError::NoUser | AppAuthError::Seal => self.to_string(),
            AppAuthError::Vault(_) => {
                "the gateway cannot read users' app tokens right now; try again shortly".to_owned()
            }
            AppAuthError::ServiceToken(error) => format!(
                "the gateway could not obtain its credential for the app ({})",
                error.kind()
            ),
        }
    }
}

/// What app authentication needs from the request and the node.
pub struct AppAuthRequest<'a> {
    pub node: &'a NodeState,
    pub snapshot: &'a CompiledSnapshot,
    /// The server's name (from the route).
    pub server: &'a str,
    pub caller: &'a Caller,
    /// The caller's original headers (passthrough, MCP session and protocol headers).
    pub inbound: &'a HeaderMap,
    pub method: &'a Method,
    /// The request body (POST), already read.
    pub body: &'a [u8],
}

/// What app authentication put on a request, for the record and for the upstream's
/// answer.
#[derive(Debug)]
pub enum AppliedCredential {
    /// A fixed credential, the caller's own, or none.
    Fixed,
    /// A user's token, or none yet (the user has no link).
    User(Box<UserCredentialUse>),
    /// The gateway's service token.
    Service(Box<ServiceTokenSource>),
}

/// One request under OAuth 2.1 Authorization.
#[derive(Debug)]
pub struct UserCredentialUse {
    pub key: LinkKey,
    plan: UserTokenPlan,
    facts: RequestFacts,
    /// Whether the user's token went upstream.
    pub sent_token: bool,
    /// Why the user would be prompted if the upstream refused the request.
    unlinked_reason: PromptReason,
}

impl AppliedCredential {
    /// Looks at the upstream's answer: an upstream that refuses a user's request (401)
    /// makes it a prompt; the session a client initialized is remembered; a service token
    /// the upstream refused is dropped.
    pub fn after_response(
        &self,
        request: &AppAuthRequest<'_>,
        response: http::Response<Incoming>,
    ) -> Result<http::Response<Incoming>, ProxyError> {
        match self {
            AppliedCredential::Fixed => Ok(response),
            AppliedCredential::Service(source) => {
                if response.status() == StatusCode::UNAUTHORIZED {
                    tracing::warn!(client_id = %source.client_id(), "the upstream refused the service token: it is fetched again next time");
                    request.node.outbound.service_tokens.invalidate(source);
                }
                Ok(response)
            }
            AppliedCredential::User(usage) => {
                let linking = &request.node.linking;
                let session = request
                    .inbound
                    .get(MCP_SESSION_ID)
                    .and_then(|value| value.to_str().ok());
                if response.status() == StatusCode::UNAUTHORIZED {
                    let reason = if usage.sent_token {
                        tracing::warn!(app = %usage.key.app_id, user = %usage.key.user.subject, "the upstream refused the user's token: the user is asked to connect again");
                        linking.vault.invalidate(&usage.key);
                        PromptReason::Reconnect
                    } else {
                        usage.unlinked_reason
                    };
                    return Err(ProxyError::AppAuth(user_prompt(
                        request, usage, reason, false,
                    )));
                }
                if usage.facts.kind == RequestKind::Initialize
                    && response.status().is_success()
                    && let Some(session) = response
                        .headers()
                        .get(MCP_SESSION_ID)
                        .and_then(|value| value.to_str().ok())
                {
                    linking.sessions.remember(
                        request.server,
                        session,
                        &usage.key.user,
                        usage.facts.initialize_url_elicitation,
                    );
                }
                if *request.method == Method::DELETE
                    && let Some(session) = session
                {
                    linking.sessions.forget(request.server, session);
                }
                Ok(response)
            }
        }
    }
}

/// The prompt for a user of `usage`'s request. `tool_result` forces the tool-result form
/// (a retry that answered an earlier prompt must not loop on another one).
fn user_prompt(
    request: &AppAuthRequest<'_>,
    usage: &UserCredentialUse,
    reason: PromptReason,
    tool_result: bool,
) -> AppAuthError {
    let now = unix_now();
    let link = ConnectLink::new(&usage.plan.app_id, request.server, &usage.key.user);
    let Ok(sealed) = link.seal(&request.snapshot.gateway_keys, now) else {
        return AppAuthError::Seal;
    };
    let facts = &usage.facts;
    let protocol = request
        .inbound
        .get(MCP_PROTOCOL_VERSION)
        .and_then(|value| value.to_str().ok());
    let session_url_elicitation = request
        .inbound
        .get(MCP_SESSION_ID)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|session| {
            request
                .node
                .linking
                .sessions
                .url_elicitation(request.server, session, &usage.key.user)
        });
    let form = if tool_result {
        PromptForm::ToolResult {
            stateless: facts.is_stateless_era(),
        }
    } else {
        prompt::form_for(facts, protocol, session_url_elicitation)
    };
    let app_name = request
        .snapshot
        .source
        .oauth_apps
        .get(&usage.plan.app_id)
        .map(|app| app.display_name.clone())
        .unwrap_or_else(|| usage.plan.app_id.to_string());
    AppAuthError::ConnectAccount(Box::new(ConnectPrompt {
        form,
        reason,
        id: facts.id.clone(),
        app_id: usage.plan.app_id.to_string(),
        app_name,
        server: request.server.to_owned(),
        url: link.url(&request.node.oauth.issuer, &sealed),
        forbidden: facts.kind == RequestKind::Other,
    }))
}

fn sensitive_value(text: &str) -> Result<HeaderValue, ()> {
    let mut value = HeaderValue::from_str(text).map_err(|_| ())?;
    value.set_sensitive(true);
    Ok(value)
}

impl AppAuthPlan {
    pub fn compile(app_auth: &AppAuth<SecretValue>) -> Result<Self, ValidationErrors> {
        // Messages name the field and the rule, never the value.
        let bad_value =
            |field: &str| ValidationErrors::single(field, "cannot be sent as an HTTP header value");
        match app_auth {
            AppAuth::ApiKey {
                key_name,
                key_value,
                location: ApiKeyLocation::Header,
            } => {
                let name = HeaderName::from_bytes(key_name.as_bytes()).map_err(|_| {
                    ValidationErrors::single("api_key.key_name", "not an HTTP header name")
                })?;
                let value = sensitive_value(key_value.expose())
                    .map_err(|()| bad_value("api_key.key_value"))?;
                Ok(Self::Header { name, value })
            }
            AppAuth::ApiKey {
                key_name,
                key_value,
                location: ApiKeyLocation::Query,
            } => Ok(Self::QueryParameter {
                name: key_name.clone(),
                value: key_value.clone(),
            }),
            AppAuth::Bearer { token } => Ok(Self::Header {
                name: AUTHORIZATION,
                value: sensitive_value(&format!("Bearer {}", token.expose()))
                    .map_err(|()| bad_value("bearer.token"))?,
            }),
            AppAuth::Basic { username, password } => {
                // RFC 7617: base64 of "user:password"; the result is always a valid value.
                let encoded = STANDARD.encode(format!("{username}:{}", password.expose()));
                Ok(Self::Header {
                    name: AUTHORIZATION,
                    value: sensitive_value(&format!("Basic {encoded}"))
                        .map_err(|()| bad_value("basic.password"))?,
                })
            }
            AppAuth::Passthrough => Ok(Self::PassthroughCallerAuthorization),
            AppAuth::OAuthAuthorization { app_id, scopes } => Ok(Self::UserToken(UserTokenPlan {
                app_id: app_id.clone(),
                scopes: scopes.iter().map(ToString::to_string).collect(),
            })),
            AppAuth::ClientCredentials(config) => {
                Ok(Self::ServiceToken(ServiceTokenSource::new(config)))
            }
        }
    }

    /// Which credential of the kind a request uses, for the request record: the app id
    /// (user tokens; also when the user is prompted to connect) or the client id (service
    /// tokens). Never a value; none for the fixed kinds.
    pub fn credential_id(&self) -> Option<String> {
        match self {
            AppAuthPlan::UserToken(plan) => Some(plan.app_id.to_string()),
            AppAuthPlan::ServiceToken(source) => Some(source.client_id().to_owned()),
            AppAuthPlan::Header { .. }
            | AppAuthPlan::QueryParameter { .. }
            | AppAuthPlan::PassthroughCallerAuthorization => None,
        }
    }

    /// Writes the fixed kinds' credential into the outbound headers or query. `inbound` is
    /// the caller's original header map, read only by passthrough. Returns false for the
    /// kinds that need [`Self::apply`] (tokens).
    pub fn apply_fixed(
        &self,
        inbound: &HeaderMap,
        outbound: &mut HeaderMap,
        query: &mut UpstreamQuery,
    ) -> bool {
        match self {
            AppAuthPlan::Header { name, value } => {
                outbound.insert(name.clone(), value.clone());
            }
            AppAuthPlan::QueryParameter { name, value } => {
                query.set_secret(name, value);
            }
            AppAuthPlan::PassthroughCallerAuthorization => {
                outbound.remove(AUTHORIZATION);
                for value in inbound.get_all(AUTHORIZATION) {
                    let mut value = value.clone();
                    value.set_sensitive(true);
                    outbound.append(AUTHORIZATION, value);
                }
            }
            AppAuthPlan::UserToken(_) | AppAuthPlan::ServiceToken(_) => return false,
        }
        true
    }

    /// Writes the credential into the outbound headers or query. User tokens come from the
    /// vault; a user without a link gets the prompt for a tool call (an error carrying it).
    pub async fn apply(
        &self,
        request: &AppAuthRequest<'_>,
        outbound: &mut HeaderMap,
        query: &mut UpstreamQuery,
    ) -> Result<AppliedCredential, ProxyError> {
        if self.apply_fixed(request.inbound, outbound, query) {
            return Ok(AppliedCredential::Fixed);
        }
        match self {
            AppAuthPlan::ServiceToken(source) => {
                let token = request
                    .node
                    .outbound
                    .service_tokens
                    .token(source)
                    .await
                    .map_err(|error| ProxyError::AppAuth(AppAuthError::ServiceToken(error)))?;
                outbound.insert(AUTHORIZATION, bearer(&token.value)?);
                Ok(AppliedCredential::Service(Box::new(source.clone())))
            }
            AppAuthPlan::UserToken(plan) => {
                let user = request
                    .caller
                    .identity
                    .as_ref()
                    .and_then(|identity| {
                        Some(VaultUser::new(
                            identity.identity_provider()?.to_string(),
                            identity.subject(),
                        ))
                    })
                    .ok_or(ProxyError::AppAuth(AppAuthError::NoUser))?;
                let facts = if *request.method == Method::POST {
                    prompt::inspect(request.body)
                } else {
                    RequestFacts::default()
                };
                let key = LinkKey::new(plan.app_id.to_string(), user);
                let lookup = request
                    .node
                    .linking
                    .vault
                    .lookup(&key)
                    .await
                    .map_err(|error| ProxyError::AppAuth(AppAuthError::Vault(error)))?;
                let mut usage = UserCredentialUse {
                    key,
                    plan: plan.clone(),
                    facts,
                    sent_token: false,
                    unlinked_reason: PromptReason::NotConnected,
                };
                match lookup {
                    LinkLookup::Connected(token) => {
                        outbound.insert(AUTHORIZATION, bearer(&token.access_token)?);
                        usage.sent_token = true;
                    }
                    LinkLookup::Missing | LinkLookup::Broken { .. } => {
                        if matches!(lookup, LinkLookup::Broken { .. }) {
                            usage.unlinked_reason = PromptReason::Reconnect;
                        }
                        if usage.facts.kind == RequestKind::ToolCall {
                            // A retry that answered an earlier prompt gets a tool result, not
                            // another prompt to answer.
                            let (reason, tool_result) = match usage
                                .facts
                                .answered_connect(plan.app_id.as_str())
                                .as_deref()
                            {
                                Some("accept") => (PromptReason::NotFinished, true),
                                Some(_) => (PromptReason::Declined, true),
                                None => (usage.unlinked_reason, false),
                            };
                            return Err(ProxyError::AppAuth(user_prompt(
                                request,
                                &usage,
                                reason,
                                tool_result,
                            )));
                        }
                    }
                }
                Ok(AppliedCredential::User(Box::new(usage)))
            }
            AppAuthPlan::Header { .. }
            | AppAuthPlan::QueryParameter { .. }
            | AppAuthPlan::PassthroughCallerAuthorization => Ok(AppliedCredential::Fixed),
        }
    }
}

/// `Authorization: Bearer <token>`, marked sensitive. The scheme is always Bearer (RFC
/// 6750), whatever case the provider's `token_type` used.
fn bearer(token: &SecretValue) -> Result<HeaderValue, ProxyError> {
    sensitive_value(&format!("Bearer {}", token.expose())).map_err(|()| {
        ProxyError::Internal("a token cannot be sent as an HTTP header value".to_owned())
    })
}

/// The query string of an upstream request, as raw `name=value` segments. Holds a secret
/// once API-key-in-query auth ran, so it has no `Debug` and is never logged.
#[derive(Default)]
pub struct UpstreamQuery {
    segments: Vec<String>,
}

impl UpstreamQuery {
    pub fn new(raw: Option<&str>) -> Self {
        let mut query = Self::default();
        query.extend_raw(raw);
        query
    }

    /// Appends the segments of a raw query string (the caller's, forwarded as sent).
    pub fn extend_raw(&mut self, raw: Option<&str>) {
        if let Some(raw) = raw {
            self.segments.extend(
                raw.split('&')
                    .filter(|segment| !segment.is_empty())
                    .map(str::to_owned),
            );
        }
    }

    /// Replaces every parameter called `name` (compared after percent-decoding, so
    /// `api%5Fkey` counts as `api_key`) with one carrying the secret.
    pub fn set_secret(&mut self, name: &str, value: &SecretValue) {
        self.segments.retain(|segment| {
            let decoded_name = form_urlencoded::parse(segment.as_bytes())
                .next()
                .map(|(key, _)| key.into_owned());
            decoded_name.as_deref() != Some(name)
        });
        self.segments.push(
            form_urlencoded::Serializer::new(String::new())
                .append_pair(name, value.expose())
                .finish(),
        );
    }

    /// The query string, or `None` when there are no parameters.
    pub fn to_query_string(&self) -> Option<String> {
        (!self.segments.is_empty()).then(|| self.segments.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_shared::config::ClientCredentials;
    use portcullis_shared::names::CatalogId;

    fn apply(plan: &AppAuthPlan, inbound: &HeaderMap) -> (HeaderMap, Option<String>) {
        let mut outbound = HeaderMap::new();
        let mut query = UpstreamQuery::new(Some("tenant=a&api_key=caller-chosen"));
        assert!(plan.apply_fixed(inbound, &mut outbound, &mut query));
        (outbound, query.to_query_string())
    }

    fn inbound_with_authorization() -> HeaderMap {
        let mut inbound = HeaderMap::new();
        inbound.insert(AUTHORIZATION, "Bearer caller-token".parse().unwrap());
        inbound
    }

    #[test]
    fn api_key_header_is_set_and_sensitive() {
        let plan = AppAuthPlan::compile(&AppAuth::ApiKey {
            key_name: "x-api-key".to_owned(),
            key_value: SecretValue::new("k-123"),
            location: ApiKeyLocation::Header,
        })
        .unwrap();
        let (headers, query) = apply(&plan, &inbound_with_authorization());
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-api-key"], "k-123");
        assert!(headers["x-api-key"].is_sensitive());
        assert!(!format!("{plan:?}").contains("k-123"));
        assert_eq!(query.as_deref(), Some("tenant=a&api_key=caller-chosen"));
    }

    #[test]
    fn api_key_query_replaces_a_caller_parameter_of_the_same_name() {
        let plan = AppAuthPlan::compile(&AppAuth::ApiKey {
            key_name: "api_key".to_owned(),
            key_value: SecretValue::new("s3cr&t value"),
            location: ApiKeyLocation::Query,
        })
        .unwrap();
        let (headers, query) = apply(&plan, &HeaderMap::new());
        assert!(headers.is_empty());
        assert_eq!(query.as_deref(), Some("tenant=a&api_key=s3cr%26t+value"));

        let mut query = UpstreamQuery::new(Some("api%5Fkey=sneaky&x=1"));
        query.set_secret("api_key", &SecretValue::new("v"));
        assert_eq!(query.to_query_string().as_deref(), Some("x=1&api_key=v"));
    }

    #[test]
    fn bearer_and_basic_write_authorization() {
        let bearer = AppAuthPlan::compile(&AppAuth::Bearer {
            token: SecretValue::new("svc-token"),
        })
        .unwrap();
        let (headers, _) = apply(&bearer, &inbound_with_authorization());
        assert_eq!(headers[AUTHORIZATION], "Bearer svc-token");

        let basic = AppAuthPlan::compile(&AppAuth::Basic {
            username: "alice".to_owned(),
            password: SecretValue::new("open sesame"),
        })
        .unwrap();
        let (headers, _) = apply(&basic, &inbound_with_authorization());
        assert_eq!(headers[AUTHORIZATION], "Basic YWxpY2U6b3BlbiBzZXNhbWU=");
        assert_eq!(headers.get_all(AUTHORIZATION).iter().count(), 1);
    }

    #[test]
    fn passthrough_forwards_the_callers_authorization_exactly() {
        let plan = AppAuthPlan::compile(&AppAuth::Passthrough).unwrap();
        let (headers, _) = apply(&plan, &inbound_with_authorization());
        assert_eq!(headers[AUTHORIZATION], "Bearer caller-token");
        let (headers, _) = apply(&plan, &HeaderMap::new());
        assert!(headers.get(AUTHORIZATION).is_none());
    }

    #[test]
    fn oauth_kinds_compile_to_token_plans_that_are_never_applied_as_fixed() {
        let plan = AppAuthPlan::compile(&AppAuth::OAuthAuthorization {
            app_id: CatalogId::parse("github").unwrap(),
            scopes: vec![portcullis_shared::names::Scope::parse("repo").unwrap()],
        })
        .unwrap();
        let AppAuthPlan::UserToken(user) = &plan else {
            panic!("{plan:?}");
        };
        assert_eq!(user.app_id().as_str(), "github");
        assert_eq!(user.scopes(), ["repo"]);
        let mut outbound = HeaderMap::new();
        assert!(!plan.apply_fixed(
            &inbound_with_authorization(),
            &mut outbound,
            &mut UpstreamQuery::default(),
        ));
        assert!(
            outbound.is_empty(),
            "nothing is sent without the user's token"
        );
        let plan = AppAuthPlan::compile(&AppAuth::ClientCredentials(ClientCredentials {
            token_url: url::Url::parse("https://idp.example.com/token").unwrap(),
            client_id: "svc".to_owned(),
            client_secret: SecretValue::new("s"),
            scopes: Vec::new(),
            audience: None,
        }))
        .unwrap();
        let AppAuthPlan::ServiceToken(source) = &plan else {
            panic!("{plan:?}");
        };
        assert_eq!(source.client_id(), "svc");
        assert!(!format!("{plan:?}").contains("\"s\""));
        assert!(!plan.apply_fixed(
            &HeaderMap::new(),
            &mut outbound,
            &mut UpstreamQuery::default(),
        ));
    }
}

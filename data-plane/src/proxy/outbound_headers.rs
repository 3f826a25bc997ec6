//! Step 6, additional outbound headers: extra headers the gateway adds on top of app
//! authentication, for upstreams that need more than one credential in the same request
//! (Azure AI Search: a service key on `Authorization` and the user's own token on
//! `x-ms-query-source-authorization`).
//!
//! It sits after app authentication because shared validation guarantees that no outbound
//! header names the header app authentication writes, and after the inbound firewall so a
//! configured header replaces whatever the caller sent under the same name (a client cannot
//! forge `x-user-email`); it sits before the upstream call because several sources need the
//! caller established by agent authentication (step 3).
//!
//! Each configured header ([`OutboundHeadersPlan`], compiled once per snapshot) is one of the
//! six patterns of the "+ Add Header" menu:
//!
//! | pattern | value |
//! |---|---|
//! | `service_token` | a client-credentials token, cached per configuration and refreshed before it expires (single flight, [`ServiceTokenCache`]) |
//! | `forward_caller_token` | the caller's token: the verified inbound JWT under Passthrough with JWT validation; under Interactive SSO the user's token **at the identity provider**, recovered from the sealed `idp_token` claim of the gateway access token (never the gateway's own token) |
//! | `on_behalf_of` | the caller's token (as above) exchanged by RFC 8693, cached per user and configuration ([`TokenExchangeCache`]) |
//! | `vault_credential` | a stored credential: org-wide from the snapshot; per user, the user's own value (control plane, `GetUserCredential`, cached per user) wins over the org-wide one |
//! | `caller_identity` | one claim of the caller's token (`sub`, `email`, `groups` joined with `,`) |
//! | `custom` | a static value, a secret, or a template over the caller's claims |
//!
//! The prefix goes before the value. Every value is checked again here, at run time: a value
//! with bytes a header cannot carry (CR, LF, other control or non-ASCII bytes), from a
//! rendered template, a claim, a token endpoint or the vault, refuses the request with a
//! clear error, and nothing is forwarded. Values are marked sensitive (never printed, never
//! indexed by HPACK) except static values. The request record lists the headers applied, by
//! name and pattern, never a value.

mod user_credentials;

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use portcullis_shared::config::{CredentialScope, CustomValue, OutboundHeader, OutboundSource};
use portcullis_shared::error::ErrorCode;
use portcullis_shared::names::{CatalogId, ClaimName, check_header_value};
use portcullis_shared::secret::SecretValue;
use portcullis_shared::template::{RenderError, Template, TemplatePart};
use portcullis_shared::validate::ValidationErrors;
use serde_json::Value;

use crate::compiled::CompiledSnapshot;
use crate::oauth::grant::{
    IDENTITY_PROVIDER_TOKEN_CLAIM, IdentityProviderTokenError, SealedIdentityProviderToken,
};
use crate::oauth::runtime::{RuntimeClient, VaultUser};
use crate::proxy::agent_auth::{Caller, CallerIdentity};
use crate::record::AppliedHeader;
use crate::tokens::client_credentials::{
    ClientCredentialsError, ServiceTokenCache, ServiceTokenSource,
};
use crate::tokens::endpoint::TokenEndpointError;
use crate::tokens::exchange::{ExchangeSource, TokenExchangeCache};

pub use user_credentials::{UserCredentialCache, UserCredentialError};

/// The longest value (prefix included) a header gets.
pub const MAX_HEADER_VALUE_BYTES: usize = 8 * 1024;

/// Claims a template or an identity header may not read: the sealed identity-provider token
/// is for the forwarding patterns only.
const HIDDEN_CLAIMS: &[&str] = &[IDENTITY_PROVIDER_TOKEN_CLAIM];

/// Why a header could not be produced. Public messages name the header and the pattern and
/// say what to do; causes (token endpoint answers, control-plane errors) go to the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundHeaderError {
    /// The pattern needs a verified caller and agent authentication verified none
    /// (Passthrough without JWT validation).
    #[error(
        "header {header} ({kind}) needs a verified caller; this server does not verify callers"
    )]
    CallerNotVerified { header: String, kind: &'static str },
    /// The caller's token (its identity provider token, under Interactive SSO) cannot be
    /// used.
    #[error("header {header} ({kind}): the caller's token is unavailable: {reason}")]
    CallerTokenUnavailable {
        header: String,
        kind: &'static str,
        reason: IdentityProviderTokenError,
    },
    #[error("header {header} ({kind}): the caller's token has no claim {claim:?}")]
    MissingClaim {
        header: String,
        kind: &'static str,
        claim: String,
    },
    #[error("header {header} ({kind}): the token service failed: {cause}")]
    TokenService {
        header: String,
        kind: &'static str,
        cause: String,
        /// The token service refused for good (bad client secret, refused grant): retrying
        /// does not help until someone changes something.
        permanent: bool,
    },
    /// A per-user credential with neither the user's own value nor an org-wide one.
    #[error(
        "header {header}: you have not stored your own value of the credential {credential_id:?}, and it has no org-wide value; ask an administrator to run `portcullisctl credential set-user {credential_id} {user} --value stdin`, then try again"
    )]
    CredentialMissing {
        header: String,
        credential_id: String,
        user: String,
    },
    /// An org-wide credential without an org-wide value (or a credential removed from the
    /// catalog).
    #[error(
        "header {header}: the credential {credential_id:?} has no org-wide value; ask an administrator to run `portcullisctl credential put {credential_id} --value stdin`"
    )]
    CredentialUnset {
        header: String,
        credential_id: String,
    },
    #[error("header {header}: the user's credential could not be looked up: {cause}")]
    CredentialLookup { header: String, cause: String },
    /// The value would break the request (CR, LF, control or non-ASCII bytes, too long).
    #[error(
        "header {header} ({kind}): the value cannot be sent as an HTTP header (control or non-ASCII characters, or too long); nothing was forwarded"
    )]
    UnsafeValue { header: String, kind: &'static str },
}

impl OutboundHeaderError {
    pub fn code(&self) -> ErrorCode {
        match self {
            OutboundHeaderError::CallerNotVerified { .. }
            | OutboundHeaderError::MissingClaim { .. } => ErrorCode::PermissionDenied,
            OutboundHeaderError::CallerTokenUnavailable { reason, .. } => match reason {
                // A token minted before the provider's token was kept: sign in again.
                IdentityProviderTokenError::Absent => ErrorCode::FailedPrecondition,
                IdentityProviderTokenError::Unreadable(_)
                | IdentityProviderTokenError::WrongGrant => ErrorCode::PermissionDenied,
                IdentityProviderTokenError::Expired => ErrorCode::Unavailable,
            },
            OutboundHeaderError::CredentialMissing { .. }
            | OutboundHeaderError::CredentialUnset { .. }
            | OutboundHeaderError::UnsafeValue { .. } => ErrorCode::FailedPrecondition,
            OutboundHeaderError::TokenService { .. }
            | OutboundHeaderError::CredentialLookup { .. } => ErrorCode::Unavailable,
        }
    }

    /// What the client may read: everything but the causes of token-service and lookup
    /// failures (they may name internal URLs or hosts; the log has them).
    pub fn public_message(&self) -> String {
        match self {
            OutboundHeaderError::TokenService { header, kind, .. } => {
                format!("header {header} ({kind}): the token service failed; try again later")
            }
            OutboundHeaderError::CredentialLookup { header, .. } => format!(
                "header {header}: the user's credential could not be looked up; try again later"
            ),
            OutboundHeaderError::CallerNotVerified { .. }
            | OutboundHeaderError::CallerTokenUnavailable { .. }
            | OutboundHeaderError::MissingClaim { .. }
            | OutboundHeaderError::CredentialMissing { .. }
            | OutboundHeaderError::CredentialUnset { .. }
            | OutboundHeaderError::UnsafeValue { .. } => self.to_string(),
        }
    }
}

/// How one header gets its value.
#[derive(Debug)]
enum PlannedSource {
    ServiceToken(Arc<ServiceTokenSource>),
    ForwardCallerToken,
    OnBehalfOf(Arc<ExchangeSource>),
    VaultCredential {
        credential_id: CatalogId,
        scope: CredentialScope,
    },
    CallerIdentity(ClaimName),
    /// A static value or a secret: the whole header value (prefix included), checked once.
    Fixed(HeaderValue),
    Template(Template),
}

#[derive(Debug)]
struct PlannedHeader {
    name: HeaderName,
    /// Prefix checked at compile time (visible ASCII and tab, at most 64 bytes).
    prefix: String,
    kind: &'static str,
    source: PlannedSource,
}

/// A server's additional outbound headers, compiled once per snapshot.
#[derive(Debug, Default)]
pub struct OutboundHeadersPlan {
    headers: Vec<PlannedHeader>,
}

/// The node-wide state the headers draw on: token caches and the per-user credential cache.
/// One per node, shared by every server and snapshot.
#[derive(Debug)]
pub struct OutboundServices {
    pub service_tokens: Arc<ServiceTokenCache>,
    pub exchanged_tokens: TokenExchangeCache,
    pub user_credentials: UserCredentialCache,
}

impl OutboundServices {
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            service_tokens: Arc::new(ServiceTokenCache::new(http.clone())),
            exchanged_tokens: TokenExchangeCache::new(http),
            user_credentials: UserCredentialCache::new(),
        }
    }
}

/// What a request brings to the step: the snapshot it is served with (keys to open the
/// caller's identity-provider token, org-wide credentials) and the control plane's runtime
/// service (per-user credentials).
pub struct OutboundContext<'a> {
    pub services: &'a OutboundServices,
    pub snapshot: &'a CompiledSnapshot,
    pub runtime: Option<&'a RuntimeClient>,
    pub now_unix: i64,
}

fn sensitive(text: &str) -> Option<HeaderValue> {
    let mut value = header_value(text)?;
    value.set_sensitive(true);
    Some(value)
}

/// A header value from text, only if every byte is visible ASCII or tab and it is not too
/// long: the same rule the configuration is written with.
fn header_value(text: &str) -> Option<HeaderValue> {
    if text.len() > MAX_HEADER_VALUE_BYTES || check_header_value(text).is_err() {
        return None;
    }
    HeaderValue::from_str(text).ok()
}

impl OutboundHeadersPlan {
    /// Compiles the headers of a server. Names and prefixes were validated when the
    /// configuration was written; values that cannot be headers are reported per field.
    pub fn compile(headers: &[OutboundHeader<SecretValue>]) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let mut planned = Vec::with_capacity(headers.len());
        for header in headers {
            let path = header.path();
            let Ok(name) = HeaderName::from_bytes(header.header_name.as_str().as_bytes()) else {
                errors.push(format!("{path}.header_name"), "not an HTTP header name");
                continue;
            };
            if header.prefix.len() > 64 || check_header_value(&header.prefix).is_err() {
                errors.push(
                    format!("{path}.prefix"),
                    "cannot be sent as part of an HTTP header value",
                );
                continue;
            }
            let kind = header.source.kind_name();
            let source = match &header.source {
                OutboundSource::ServiceToken(config) => {
                    PlannedSource::ServiceToken(Arc::new(ServiceTokenSource::new(config)))
                }
                OutboundSource::ForwardCallerToken => PlannedSource::ForwardCallerToken,
                OutboundSource::OnBehalfOf(exchange) => {
                    PlannedSource::OnBehalfOf(Arc::new(ExchangeSource::new(exchange)))
                }
                OutboundSource::VaultCredential {
                    credential_id,
                    scope,
                } => PlannedSource::VaultCredential {
                    credential_id: credential_id.clone(),
                    scope: *scope,
                },
                OutboundSource::CallerIdentity { claim } => {
                    PlannedSource::CallerIdentity(claim.clone())
                }
                OutboundSource::Custom(CustomValue::Static(text)) => {
                    match header_value(&format!("{}{text}", header.prefix)) {
                        Some(value) => PlannedSource::Fixed(value),
                        None => {
                            errors.push(
                                format!("{path}.custom.static_value"),
                                "cannot be sent as an HTTP header value",
                            );
                            continue;
                        }
                    }
                }
                OutboundSource::Custom(CustomValue::Secret(secret)) => {
                    match sensitive(&format!("{}{}", header.prefix, secret.expose())) {
                        Some(value) => PlannedSource::Fixed(value),
                        None => {
                            // The message names the field and the rule, never the value.
                            errors.push(
                                format!("{path}.custom.secret"),
                                "cannot be sent as an HTTP header value",
                            );
                            continue;
                        }
                    }
                }
                OutboundSource::Custom(CustomValue::Template(template)) => {
                    PlannedSource::Template(template.clone())
                }
            };
            planned.push(PlannedHeader {
                name,
                prefix: header.prefix.clone(),
                kind,
                source,
            });
        }
        errors.into_result(Self { headers: planned })
    }

    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    /// The patterns configured, by header name (for logs and records).
    pub fn configured(&self) -> Vec<AppliedHeader> {
        self.headers
            .iter()
            .map(|header| AppliedHeader {
                name: header.name.as_str().to_owned(),
                kind: header.kind,
            })
            .collect()
    }

    /// True when some header forwards or exchanges the caller's token, or reads their
    /// identity: such servers need a verified caller.
    pub fn needs_verified_caller(&self) -> bool {
        self.headers.iter().any(|header| {
            matches!(
                header.source,
                PlannedSource::ForwardCallerToken
                    | PlannedSource::OnBehalfOf(_)
                    | PlannedSource::CallerIdentity(_)
            )
        })
    }

    /// Adds every header to `outbound`, replacing same-named headers the caller sent. All or
    /// nothing: on an error, the request is refused and `outbound` must not be sent.
    pub async fn apply(
        &self,
        context: &OutboundContext<'_>,
        caller: &Caller,
        outbound: &mut HeaderMap,
    ) -> Result<Vec<AppliedHeader>, OutboundHeaderError> {
        let mut values = Vec::with_capacity(self.headers.len());
        for header in &self.headers {
            values.push(header.value(context, caller).await?);
        }
        let mut applied = Vec::with_capacity(self.headers.len());
        for (header, value) in self.headers.iter().zip(values) {
            // insert replaces every value the caller sent under this name.
            outbound.insert(header.name.clone(), value);
            applied.push(AppliedHeader {
                name: header.name.as_str().to_owned(),
                kind: header.kind,
            });
        }
        Ok(applied)
    }
}

/// The caller's name for per-user caches and the vault: unambiguous (length-prefixed) and
/// including the identity provider or issuer, so subjects of two providers never meet.
pub(crate) fn user_key(identity: &CallerIdentity) -> String {
    match identity.identity_provider() {
        Some(provider) => format!(
            "idp:{}:{}:{}",
            provider.as_str().len(),
            provider.as_str(),
            identity.subject()
        ),
        None => {
            let issuer = identity.issuer().unwrap_or_default();
            format!("iss:{}:{issuer}:{}", issuer.len(), identity.subject())
        }
    }
}

/// A claim as header text: strings as they are, numbers and booleans printed, arrays of
/// those joined with `,`. Objects and null count as missing.
fn claim_text(claims: &serde_json::Map<String, Value>, name: &str) -> Option<String> {
    if HIDDEN_CLAIMS.contains(&name) {
        return None;
    }
    fn scalar(value: &Value) -> Option<String> {
        match value {
            Value::String(text) => Some(text.clone()),
            Value::Number(number) => Some(number.to_string()),
            Value::Bool(flag) => Some(flag.to_string()),
            Value::Null | Value::Array(_) | Value::Object(_) => None,
        }
    }
    match claims.get(name)? {
        Value::Array(items) => {
            let texts: Option<Vec<String>> = items.iter().map(scalar).collect();
            texts.map(|texts| texts.join(","))
        }
        other => scalar(other),
    }
}

impl PlannedHeader {
    fn header(&self) -> String {
        self.name.as_str().to_owned()
    }

    fn identity<'c>(&self, caller: &'c Caller) -> Result<&'c CallerIdentity, OutboundHeaderError> {
        caller
            .identity
            .as_ref()
            .ok_or_else(|| OutboundHeaderError::CallerNotVerified {
                header: self.header(),
                kind: self.kind,
            })
    }

    /// The caller's own token: the verified inbound token, or under Interactive SSO the
    /// identity provider's token sealed in the gateway's access token.
    fn caller_token(
        &self,
        identity: &CallerIdentity,
        context: &OutboundContext<'_>,
    ) -> Result<SecretValue, OutboundHeaderError> {
        if identity.identity_provider().is_none() {
            return Ok(identity.token().clone());
        }
        let claims = identity.claims();
        SealedIdentityProviderToken::open(
            &context.snapshot.gateway_keys,
            claims
                .get(IDENTITY_PROVIDER_TOKEN_CLAIM)
                .and_then(Value::as_str),
            claims.get("sid").and_then(Value::as_str),
            identity.subject(),
            context.now_unix,
        )
        .map(|opened| SecretValue::new(opened.access_token))
        .map_err(|reason| OutboundHeaderError::CallerTokenUnavailable {
            header: self.header(),
            kind: self.kind,
            reason,
        })
    }

    /// `prefix + text` as a header value, refused when it would break the request.
    fn finish(
        &self,
        text: &str,
        sensitive_value: bool,
    ) -> Result<HeaderValue, OutboundHeaderError> {
        let full = format!("{}{text}", self.prefix);
        let value = if sensitive_value {
            sensitive(&full)
        } else {
            header_value(&full)
        };
        value.ok_or_else(|| {
            tracing::warn!(header = %self.name, kind = self.kind, "an outbound header value was refused: it cannot be sent as a header");
            OutboundHeaderError::UnsafeValue {
                header: self.header(),
                kind: self.kind,
            }
        })
    }

    fn token_service_error(&self, cause: String, permanent: bool) -> OutboundHeaderError {
        tracing::warn!(header = %self.name, kind = self.kind, %cause, permanent, "an outbound header's token could not be obtained");
        OutboundHeaderError::TokenService {
            header: self.header(),
            kind: self.kind,
            cause,
            permanent,
        }
    }

    async fn value(
        &self,
        context: &OutboundContext<'_>,
        caller: &Caller,
    ) -> Result<HeaderValue, OutboundHeaderError> {
        match &self.source {
            PlannedSource::Fixed(value) => Ok(value.clone()),
            PlannedSource::ServiceToken(source) => {
                let token = context
                    .services
                    .service_tokens
                    .token(source)
                    .await
                    .map_err(|error| {
                        let permanent = matches!(
                            error,
                            ClientCredentialsError::InvalidClient { .. }
                                | ClientCredentialsError::Refused { .. }
                        );
                        self.token_service_error(error.to_string(), permanent)
                    })?;
                self.finish(token.value.expose(), true)
            }
            PlannedSource::ForwardCallerToken => {
                let identity = self.identity(caller)?;
                let token = self.caller_token(identity, context)?;
                self.finish(token.expose(), true)
            }
            PlannedSource::OnBehalfOf(source) => {
                let identity = self.identity(caller)?;
                let subject_token = self.caller_token(identity, context)?;
                let token = context
                    .services
                    .exchanged_tokens
                    .token(source, &user_key(identity), &subject_token)
                    .await
                    .map_err(|error: TokenEndpointError| {
                        let permanent = error.is_permanent();
                        self.token_service_error(error.to_string(), permanent)
                    })?;
                self.finish(token.value.expose(), true)
            }
            PlannedSource::VaultCredential {
                credential_id,
                scope,
            } => {
                let value = self
                    .vault_value(context, caller, credential_id, *scope)
                    .await?;
                self.finish(value.expose(), true)
            }
            PlannedSource::CallerIdentity(claim) => {
                let identity = self.identity(caller)?;
                let text = claim_text(identity.claims(), claim.as_str()).ok_or_else(|| {
                    OutboundHeaderError::MissingClaim {
                        header: self.header(),
                        kind: self.kind,
                        claim: claim.to_string(),
                    }
                })?;
                self.finish(&text, false)
            }
            PlannedSource::Template(template) => {
                let identity = self.identity(caller)?;
                let claims: HashMap<&str, String> = template
                    .parts()
                    .iter()
                    .filter_map(|part| match part {
                        TemplatePart::Claim(name) => claim_text(identity.claims(), name.as_str())
                            .map(|text| (name.as_str(), text)),
                        TemplatePart::Literal(_) => None,
                    })
                    .collect();
                let rendered = template
                    .render(|name| claims.get(name.as_str()).map(String::as_str))
                    .map_err(|error| match error {
                        RenderError::MissingClaim(claim) => OutboundHeaderError::MissingClaim {
                            header: self.header(),
                            kind: self.kind,
                            claim,
                        },
                        RenderError::UnsafeValue => OutboundHeaderError::UnsafeValue {
                            header: self.header(),
                            kind: self.kind,
                        },
                    })?;
                self.finish(&rendered, false)
            }
        }
    }

    /// The credential's value: per user, the user's own value first, then the org-wide one.
    async fn vault_value(
        &self,
        context: &OutboundContext<'_>,
        caller: &Caller,
        credential_id: &CatalogId,
        scope: CredentialScope,
    ) -> Result<SecretValue, OutboundHeaderError> {
        let org_value = context
            .snapshot
            .source
            .credentials
            .get(credential_id)
            .and_then(|credential| credential.org_value.clone());
        match scope {
            CredentialScope::OrgWide => {
                org_value.ok_or_else(|| OutboundHeaderError::CredentialUnset {
                    header: self.header(),
                    credential_id: credential_id.to_string(),
                })
            }
            CredentialScope::PerUser => {
                let Some(identity) = caller.identity.as_ref() else {
                    // Nobody to look up: the org-wide value, if there is one.
                    return org_value.ok_or_else(|| OutboundHeaderError::CallerNotVerified {
                        header: self.header(),
                        kind: self.kind,
                    });
                };
                let user = VaultUser::new(
                    identity
                        .identity_provider()
                        .map(ToString::to_string)
                        .or_else(|| identity.issuer().map(str::to_owned))
                        .unwrap_or_default(),
                    identity.subject(),
                );
                let own = context
                    .services
                    .user_credentials
                    .lookup(
                        context.runtime,
                        context.snapshot.version,
                        credential_id,
                        &user_key(identity),
                        &user,
                    )
                    .await
                    .map_err(|error| {
                        tracing::warn!(header = %self.name, credential = %credential_id, %error, "a user's credential could not be looked up");
                        OutboundHeaderError::CredentialLookup {
                            header: self.header(),
                            cause: error.to_string(),
                        }
                    })?;
                own.or(org_value)
                    .ok_or_else(|| OutboundHeaderError::CredentialMissing {
                        header: self.header(),
                        credential_id: credential_id.to_string(),
                        user: identity.subject().to_owned(),
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use http::StatusCode;
    use portcullis_shared::config::{ClientCredentials, StoredCredential, TokenExchange};
    use portcullis_shared::names::{HeaderName as ConfigHeaderName, Scope};
    use portcullis_shared::snapshot::Snapshot;
    use serde_json::json;

    use crate::compiled::tests::test_registry;
    use crate::jwt::VerifiedClaims;
    use crate::oauth::grant::tests::grant;
    use crate::oauth::grant::{IdentityProviderTokens, mint_access_token};
    use crate::oauth::keyring::tests::{NOW, keys};
    use crate::tokens::endpoint::http_client;
    use crate::tokens::endpoint::tests::scripted_endpoint;

    fn header(
        name: &str,
        prefix: &str,
        source: OutboundSource<SecretValue>,
    ) -> OutboundHeader<SecretValue> {
        OutboundHeader {
            header_name: ConfigHeaderName::parse(name).unwrap(),
            prefix: prefix.to_owned(),
            source,
        }
    }

    fn snapshot() -> CompiledSnapshot {
        let mut source = Snapshot {
            version: 7,
            gateway_keys: keys(),
            ..Snapshot::default()
        };
        for (id, org_value) in [("dd-key", Some("org-key-1")), ("personal", None)] {
            let id = CatalogId::parse(id).unwrap();
            source.credentials.insert(
                id.clone(),
                StoredCredential {
                    id,
                    description: String::new(),
                    org_value: org_value.map(SecretValue::new),
                    user_values: BTreeMap::new(),
                },
            );
        }
        CompiledSnapshot::compile(source, &test_registry()).unwrap()
    }

    fn services() -> OutboundServices {
        OutboundServices::new(http_client().unwrap())
    }

    /// A caller whose JWT was verified under Passthrough.
    fn jwt_caller(subject: &str, claims: serde_json::Value) -> Caller {
        let claims = claims.as_object().unwrap().clone();
        Caller {
            identity: Some(CallerIdentity::new(
                Arc::new(VerifiedClaims {
                    subject: subject.to_owned(),
                    issuer: Some("https://ci.example.com".to_owned()),
                    email: claims
                        .get("email")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    groups: Vec::new(),
                    expires_at_unix: NOW + 600,
                    claims,
                }),
                SecretValue::new(format!("jwt-of-{subject}")),
            )),
        }
    }

    /// A caller signed in through Interactive SSO: the gateway's access token, minted from
    /// a grant that holds `idp_access_token` (when given).
    fn interactive_caller(
        snapshot: &CompiledSnapshot,
        subject: &str,
        idp_access_token: Option<&str>,
    ) -> Caller {
        let mut grant = grant(subject, "https://gw.example.com/mcp/search", NOW + 86_400);
        grant.identity_provider_tokens = idp_access_token.map(|token| IdentityProviderTokens {
            access_token: token.to_owned(),
            refresh_token: Some("idp-refresh".to_owned()),
            expires_at_unix: NOW + 3_600,
            resource: None,
        });
        let (token, _) = mint_access_token(
            &snapshot.gateway_keys,
            "https://gw.example.com",
            &grant,
            NOW,
            600,
        )
        .unwrap();
        use base64::Engine;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap();
        let claims: serde_json::Map<String, Value> = serde_json::from_slice(&payload).unwrap();
        Caller {
            identity: Some(CallerIdentity::interactive(
                Arc::new(VerifiedClaims {
                    subject: subject.to_owned(),
                    issuer: Some("https://idp.example.com".to_owned()),
                    email: Some(format!("{subject}@example.com")),
                    groups: vec!["eng".to_owned()],
                    expires_at_unix: NOW + 600,
                    claims,
                }),
                SecretValue::new(token),
                CatalogId::parse("corp").unwrap(),
            )),
        }
    }

    async fn apply(
        headers: Vec<OutboundHeader<SecretValue>>,
        snapshot: &CompiledSnapshot,
        services: &OutboundServices,
        caller: &Caller,
        inbound: &[(&str, &str)],
    ) -> Result<(HeaderMap, Vec<AppliedHeader>), OutboundHeaderError> {
        let plan = OutboundHeadersPlan::compile(&headers).unwrap();
        let mut outbound = HeaderMap::new();
        for (name, value) in inbound {
            outbound.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let context = OutboundContext {
            services,
            snapshot,
            runtime: None,
            now_unix: NOW + 10,
        };
        let applied = plan.apply(&context, caller, &mut outbound).await?;
        Ok((outbound, applied))
    }

    #[tokio::test]
    async fn static_secret_and_org_wide_vault_values_with_their_prefixes() {
        let snapshot = snapshot();
        let (outbound, applied) = apply(
            vec![
                header(
                    "x-tenant",
                    "",
                    OutboundSource::Custom(CustomValue::Static("acme".to_owned())),
                ),
                header(
                    "x-service-key",
                    "Key ",
                    OutboundSource::Custom(CustomValue::Secret(SecretValue::new("s3cret"))),
                ),
                header(
                    "dd-api-key",
                    "",
                    OutboundSource::VaultCredential {
                        credential_id: CatalogId::parse("dd-key").unwrap(),
                        scope: CredentialScope::OrgWide,
                    },
                ),
            ],
            &snapshot,
            &services(),
            &Caller { identity: None },
            &[],
        )
        .await
        .unwrap();
        assert_eq!(outbound["x-tenant"], "acme");
        assert!(!outbound["x-tenant"].is_sensitive());
        assert_eq!(outbound["x-service-key"], "Key s3cret");
        assert!(outbound["x-service-key"].is_sensitive());
        assert_eq!(outbound["dd-api-key"], "org-key-1");
        assert!(outbound["dd-api-key"].is_sensitive());
        assert_eq!(
            applied,
            [
                AppliedHeader {
                    name: "x-tenant".to_owned(),
                    kind: "custom"
                },
                AppliedHeader {
                    name: "x-service-key".to_owned(),
                    kind: "custom"
                },
                AppliedHeader {
                    name: "dd-api-key".to_owned(),
                    kind: "vault_credential"
                },
            ]
        );
        let plan = OutboundHeadersPlan::compile(&[header(
            "x-service-key",
            "",
            OutboundSource::Custom(CustomValue::Secret(SecretValue::new("s3cret"))),
        )])
        .unwrap();
        assert!(!format!("{plan:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn configured_headers_replace_what_the_caller_sent() {
        let snapshot = snapshot();
        let (outbound, _) = apply(
            vec![
                header(
                    "x-user-email",
                    "",
                    OutboundSource::CallerIdentity {
                        claim: ClaimName::parse("email").unwrap(),
                    },
                ),
                header(
                    "x-tenant",
                    "",
                    OutboundSource::Custom(CustomValue::Static("acme".to_owned())),
                ),
            ],
            &snapshot,
            &services(),
            &jwt_caller(
                "alice",
                json!({"sub": "alice", "email": "alice@example.com"}),
            ),
            &[
                ("x-user-email", "ceo@example.com"),
                ("x-user-email", "admin@example.com"),
                ("X-Tenant", "evil"),
                ("x-other", "kept"),
            ],
        )
        .await
        .unwrap();
        let emails: Vec<_> = outbound.get_all("x-user-email").iter().collect();
        assert_eq!(emails, ["alice@example.com"]);
        let tenants: Vec<_> = outbound.get_all("x-tenant").iter().collect();
        assert_eq!(tenants, ["acme"]);
        assert_eq!(outbound["x-other"], "kept");
    }

    #[tokio::test]
    async fn caller_identity_and_templates_read_the_callers_claims() {
        let snapshot = snapshot();
        let caller = jwt_caller(
            "alice",
            json!({"sub": "alice", "email": "alice@example.com", "groups": ["eng", "ops"], "level": 3}),
        );
        let (outbound, _) = apply(
            vec![
                header(
                    "x-user-id",
                    "",
                    OutboundSource::CallerIdentity {
                        claim: ClaimName::parse("sub").unwrap(),
                    },
                ),
                header(
                    "x-groups",
                    "",
                    OutboundSource::CallerIdentity {
                        claim: ClaimName::parse("groups").unwrap(),
                    },
                ),
                header(
                    "x-level",
                    "L",
                    OutboundSource::CallerIdentity {
                        claim: ClaimName::parse("level").unwrap(),
                    },
                ),
                header(
                    "x-context",
                    "",
                    OutboundSource::Custom(CustomValue::Template(
                        Template::parse("team={{groups}} user={{ email }}").unwrap(),
                    )),
                ),
            ],
            &snapshot,
            &services(),
            &caller,
            &[],
        )
        .await
        .unwrap();
        assert_eq!(outbound["x-user-id"], "alice");
        assert_eq!(outbound["x-groups"], "eng,ops");
        assert_eq!(outbound["x-level"], "L3");
        assert_eq!(outbound["x-context"], "team=eng,ops user=alice@example.com");

        // A missing claim refuses the request instead of sending half an identity.
        let error = apply(
            vec![header(
                "x-dept",
                "",
                OutboundSource::CallerIdentity {
                    claim: ClaimName::parse("department").unwrap(),
                },
            )],
            &snapshot,
            &services(),
            &caller,
            &[],
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&error, OutboundHeaderError::MissingClaim { claim, .. } if claim == "department"),
            "{error}"
        );
        assert_eq!(error.code(), ErrorCode::PermissionDenied);
    }

    #[tokio::test]
    async fn values_that_would_break_the_request_are_refused_at_run_time() {
        let snapshot = snapshot();
        let hostile = jwt_caller(
            "mallory",
            json!({"sub": "mallory", "email": "m@example.com\r\nx-admin: true", "name": "Mällory"}),
        );
        for source in [
            OutboundSource::CallerIdentity {
                claim: ClaimName::parse("email").unwrap(),
            },
            OutboundSource::CallerIdentity {
                claim: ClaimName::parse("name").unwrap(),
            },
            OutboundSource::Custom(CustomValue::Template(
                Template::parse("user={{email}}").unwrap(),
            )),
            OutboundSource::Custom(CustomValue::Template(Template::parse("{{name}}").unwrap())),
        ] {
            let mut outbound_before = HeaderMap::new();
            outbound_before.insert("x-user", HeaderValue::from_static("caller-sent"));
            let error = apply(
                vec![header("x-user", "", source)],
                &snapshot,
                &services(),
                &hostile,
                &[],
            )
            .await
            .unwrap_err();
            assert!(
                matches!(error, OutboundHeaderError::UnsafeValue { .. }),
                "{error}"
            );
            assert_eq!(error.code(), ErrorCode::FailedPrecondition);
            assert!(error.public_message().contains("nothing was forwarded"));
        }
        // A token endpoint handing out a token with a line break is refused too.
        let (url, _endpoint) = scripted_endpoint(vec![(
            StatusCode::OK,
            json!({"access_token": "tok\r\nx-admin: true", "token_type": "Bearer", "expires_in": 600}),
        )])
        .await;
        let error = apply(
            vec![header(
                "x-service-token",
                "Bearer ",
                OutboundSource::ServiceToken(ClientCredentials {
                    token_url: url,
                    client_id: "svc".to_owned(),
                    client_secret: SecretValue::new("s"),
                    scopes: Vec::new(),
                    audience: None,
                }),
            )],
            &snapshot,
            &services(),
            &Caller { identity: None },
            &[],
        )
        .await
        .unwrap_err();
        assert!(
            matches!(error, OutboundHeaderError::UnsafeValue { .. }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn forwarding_under_passthrough_sends_the_verified_inbound_token() {
        let snapshot = snapshot();
        let source = || {
            header(
                "x-ms-query-source-authorization",
                "Bearer ",
                OutboundSource::ForwardCallerToken,
            )
        };
        let (outbound, applied) = apply(
            vec![source()],
            &snapshot,
            &services(),
            &jwt_caller("alice", json!({"sub": "alice"})),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(
            outbound["x-ms-query-source-authorization"],
            "Bearer jwt-of-alice"
        );
        assert!(outbound["x-ms-query-source-authorization"].is_sensitive());
        assert_eq!(applied[0].kind, "forward_caller_token");
        // Nobody verified: nothing to forward, the request is refused.
        let error = apply(
            vec![source()],
            &snapshot,
            &services(),
            &Caller { identity: None },
            &[],
        )
        .await
        .unwrap_err();
        assert!(
            matches!(error, OutboundHeaderError::CallerNotVerified { .. }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn forwarding_under_interactive_sso_sends_the_identity_providers_token_not_the_gateways()
    {
        let snapshot = snapshot();
        let caller = interactive_caller(&snapshot, "alice", Some("idp-token-of-alice"));
        let gateway_token = caller
            .identity
            .as_ref()
            .unwrap()
            .token()
            .expose()
            .to_owned();
        let (outbound, _) = apply(
            vec![header(
                "x-ms-query-source-authorization",
                "Bearer ",
                OutboundSource::ForwardCallerToken,
            )],
            &snapshot,
            &services(),
            &caller,
            &[],
        )
        .await
        .unwrap();
        let sent = outbound["x-ms-query-source-authorization"]
            .to_str()
            .unwrap();
        assert_eq!(sent, "Bearer idp-token-of-alice");
        assert!(!sent.contains(&gateway_token));

        // Templates and identity headers cannot read the sealed claim.
        let error = apply(
            vec![header(
                "x-leak",
                "",
                OutboundSource::CallerIdentity {
                    claim: ClaimName::parse(IDENTITY_PROVIDER_TOKEN_CLAIM).unwrap(),
                },
            )],
            &snapshot,
            &services(),
            &caller,
            &[],
        )
        .await
        .unwrap_err();
        assert!(
            matches!(error, OutboundHeaderError::MissingClaim { .. }),
            "{error}"
        );

        // A token minted from a grant without the provider's token: a clear refusal.
        let without = interactive_caller(&snapshot, "bob", None);
        let error = apply(
            vec![header(
                "x-user-token",
                "",
                OutboundSource::ForwardCallerToken,
            )],
            &snapshot,
            &services(),
            &without,
            &[],
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                error,
                OutboundHeaderError::CallerTokenUnavailable {
                    reason: IdentityProviderTokenError::Absent,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn service_tokens_are_fetched_once_and_sent_with_the_prefix() {
        let snapshot = snapshot();
        let (url, endpoint) = scripted_endpoint(vec![(
            StatusCode::OK,
            json!({"access_token": "svc-token-1", "token_type": "Bearer", "expires_in": 600}),
        )])
        .await;
        let services = services();
        let config = || {
            vec![header(
                "x-service-authorization",
                "Bearer ",
                OutboundSource::ServiceToken(ClientCredentials {
                    token_url: url.clone(),
                    client_id: "svc".to_owned(),
                    client_secret: SecretValue::new("svc-secret"),
                    scopes: vec![Scope::parse("search.read").unwrap()],
                    audience: None,
                }),
            )]
        };
        for caller in [
            Caller { identity: None },
            jwt_caller("alice", json!({"sub": "alice"})),
        ] {
            let (outbound, applied) = apply(config(), &snapshot, &services, &caller, &[])
                .await
                .unwrap();
            assert_eq!(outbound["x-service-authorization"], "Bearer svc-token-1");
            assert_eq!(applied[0].kind, "service_token");
        }
        assert_eq!(endpoint.requests(), 1);
        assert_eq!(endpoint.form_value("scope").as_deref(), Some("search.read"));
    }

    #[tokio::test]
    async fn a_failing_token_service_refuses_the_request_without_its_details() {
        let snapshot = snapshot();
        let (url, _endpoint) = scripted_endpoint(vec![(
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_client"}),
        )])
        .await;
        let error = apply(
            vec![header(
                "x-service-authorization",
                "Bearer ",
                OutboundSource::ServiceToken(ClientCredentials {
                    token_url: url.clone(),
                    client_id: "svc".to_owned(),
                    client_secret: SecretValue::new("wrong"),
                    scopes: Vec::new(),
                    audience: None,
                }),
            )],
            &snapshot,
            &services(),
            &Caller { identity: None },
            &[],
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                error,
                OutboundHeaderError::TokenService {
                    permanent: true,
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(error.code(), ErrorCode::Unavailable);
        assert!(!error.public_message().contains(url.as_str()));
        assert!(!error.public_message().contains("127.0.0.1"));
    }

    #[tokio::test]
    async fn on_behalf_of_exchanges_each_users_own_token_and_caches_per_user() {
        let snapshot = snapshot();
        let (url, endpoint) = scripted_endpoint(vec![
            (StatusCode::OK, json!({"access_token": "obo-1", "issued_token_type": "urn:ietf:params:oauth:token-type:access_token", "expires_in": 600})),
            (StatusCode::OK, json!({"access_token": "obo-2", "issued_token_type": "urn:ietf:params:oauth:token-type:access_token", "expires_in": 600})),
        ])
        .await;
        let services = services();
        let config = || {
            vec![header(
                "x-downstream-token",
                "Bearer ",
                OutboundSource::OnBehalfOf(TokenExchange {
                    exchange_url: url.clone(),
                    client_id: "gateway".to_owned(),
                    client_secret: SecretValue::new("exchange-secret"),
                    audience: Some("https://downstream.example.com".to_owned()),
                    scopes: Vec::new(),
                    requested_token_type: portcullis_shared::config::DEFAULT_REQUESTED_TOKEN_TYPE
                        .to_owned(),
                }),
            )]
        };
        let alice = interactive_caller(&snapshot, "alice", Some("idp-token-of-alice"));
        let (outbound, _) = apply(config(), &snapshot, &services, &alice, &[])
            .await
            .unwrap();
        assert_eq!(outbound["x-downstream-token"], "Bearer obo-1");
        // Under Interactive SSO the identity provider's token is exchanged.
        assert_eq!(
            endpoint.form_value("subject_token").as_deref(),
            Some("idp-token-of-alice")
        );
        let (again, _) = apply(config(), &snapshot, &services, &alice, &[])
            .await
            .unwrap();
        assert_eq!(again["x-downstream-token"], "Bearer obo-1");
        assert_eq!(endpoint.requests(), 1);
        // Bob (same subject under a Passthrough issuer would still be another user).
        let bob = jwt_caller("alice", json!({"sub": "alice"}));
        let (other, _) = apply(config(), &snapshot, &services, &bob, &[])
            .await
            .unwrap();
        assert_eq!(other["x-downstream-token"], "Bearer obo-2");
        assert_eq!(
            endpoint.form_value("subject_token").as_deref(),
            Some("jwt-of-alice")
        );
        assert_eq!(endpoint.requests(), 2);
        assert_eq!(services.exchanged_tokens.len(), 2);
    }

    #[tokio::test]
    async fn credentials_without_a_value_say_how_to_add_one() {
        let snapshot = snapshot();
        let error = apply(
            vec![header(
                "x-key",
                "",
                OutboundSource::VaultCredential {
                    credential_id: CatalogId::parse("personal").unwrap(),
                    scope: CredentialScope::OrgWide,
                },
            )],
            &snapshot,
            &services(),
            &Caller { identity: None },
            &[],
        )
        .await
        .unwrap_err();
        assert!(
            error
                .public_message()
                .contains("portcullisctl credential put personal"),
            "{error}"
        );
        // Per user without a verified caller and without an org-wide value: refused.
        let error = apply(
            vec![header(
                "x-key",
                "",
                OutboundSource::VaultCredential {
                    credential_id: CatalogId::parse("personal").unwrap(),
                    scope: CredentialScope::PerUser,
                },
            )],
            &snapshot,
            &services(),
            &Caller { identity: None },
            &[],
        )
        .await
        .unwrap_err();
        assert!(
            matches!(error, OutboundHeaderError::CallerNotVerified { .. }),
            "{error}"
        );
        // Per user, anonymous, with an org-wide value: the org-wide value.
        let (outbound, _) = apply(
            vec![header(
                "x-key",
                "",
                OutboundSource::VaultCredential {
                    credential_id: CatalogId::parse("dd-key").unwrap(),
                    scope: CredentialScope::PerUser,
                },
            )],
            &snapshot,
            &services(),
            &Caller { identity: None },
            &[],
        )
        .await
        .unwrap();
        assert_eq!(outbound["x-key"], "org-key-1");
    }

    #[test]
    fn values_that_cannot_be_headers_do_not_compile() {
        let errors = OutboundHeadersPlan::compile(&[
            header(
                "x-a",
                "",
                OutboundSource::Custom(CustomValue::Static("bad\nvalue".to_owned())),
            ),
            header(
                "x-b",
                "",
                OutboundSource::Custom(CustomValue::Secret(SecretValue::new("s3cr\u{e9}t"))),
            ),
            header("x-c", "bad\rprefix", OutboundSource::ForwardCallerToken),
        ])
        .unwrap_err();
        let fields: Vec<&str> = errors.violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "outbound_headers[x-a].custom.static_value",
                "outbound_headers[x-b].custom.secret",
                "outbound_headers[x-c].prefix",
            ]
        );
        assert!(!errors.to_string().contains("s3cr"));
    }
}

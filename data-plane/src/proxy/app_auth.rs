//! App authentication: the credential the gateway presents to the app behind the MCP
//! server. Runs after the inbound header firewall, so whatever it writes cannot be
//! overwritten or doubled by the caller, and it replaces same-named headers and query
//! parameters the caller sent.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue};
use portcullis_shared::config::{ApiKeyLocation, AppAuth};
use portcullis_shared::secret::SecretValue;
use portcullis_shared::validate::ValidationErrors;
use url::form_urlencoded;

use crate::proxy::agent_auth::Caller;
use crate::proxy::error::ProxyError;

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
    /// A kind this node version cannot apply yet (OAuth Authorization, Client Credentials).
    /// Requests are refused rather than sent without a credential.
    NotSupported { kind: &'static str },
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
            AppAuth::OAuthAuthorization { .. } | AppAuth::ClientCredentials(_) => {
                Ok(Self::NotSupported {
                    kind: app_auth.kind_name(),
                })
            }
        }
    }

    /// Writes the credential into the outbound headers or query. `inbound` is the caller's
    /// original header map, read only by passthrough. `caller` is who agent authentication
    /// found; none of the kinds implemented so far depends on it, OAuth Authorization (one
    /// token per user) will.
    pub fn apply(
        &self,
        _caller: &Caller,
        inbound: &HeaderMap,
        outbound: &mut HeaderMap,
        query: &mut UpstreamQuery,
    ) -> Result<(), ProxyError> {
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
            AppAuthPlan::NotSupported { kind } => {
                return Err(ProxyError::AppAuthNotSupported(kind));
            }
        }
        Ok(())
    }
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

    fn anonymous() -> Caller {
        Caller { identity: None }
    }

    fn apply(plan: &AppAuthPlan, inbound: &HeaderMap) -> (HeaderMap, Option<String>) {
        let mut outbound = HeaderMap::new();
        let mut query = UpstreamQuery::new(Some("tenant=a&api_key=caller-chosen"));
        plan.apply(&anonymous(), inbound, &mut outbound, &mut query)
            .unwrap();
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
    fn oauth_kinds_are_refused_not_sent_without_a_credential() {
        let plan = AppAuthPlan::compile(&AppAuth::OAuthAuthorization {
            app_id: CatalogId::parse("github").unwrap(),
            scopes: Vec::new(),
        })
        .unwrap();
        let mut outbound = HeaderMap::new();
        let result = plan.apply(
            &anonymous(),
            &HeaderMap::new(),
            &mut outbound,
            &mut UpstreamQuery::default(),
        );
        assert!(matches!(
            result,
            Err(ProxyError::AppAuthNotSupported("oauth_authorization"))
        ));
        let plan = AppAuthPlan::compile(&AppAuth::ClientCredentials(ClientCredentials {
            token_url: url::Url::parse("https://idp.example.com/token").unwrap(),
            client_id: "c".to_owned(),
            client_secret: SecretValue::new("s"),
            scopes: Vec::new(),
            audience: None,
        }))
        .unwrap();
        assert!(matches!(
            plan,
            AppAuthPlan::NotSupported {
                kind: "client_credentials"
            }
        ));
    }
}

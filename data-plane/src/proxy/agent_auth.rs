//! Agent authentication: who is calling. It runs before the body is read and before
//! anything is sent upstream, so an unauthenticated caller costs little and reaches nothing.
//!
//! [`AgentAuthPlan`] is the hook for every mode. Passthrough without JWT validation is
//! implemented; Interactive SSO and Passthrough with JWT validation compile to
//! [`AgentAuthPlan::NotSupported`] and are refused with a clear error until this node
//! version learns them. A new mode adds a variant here and an arm in
//! [`AgentAuthPlan::authenticate`]; the pipeline does not change.

use http::HeaderMap;
use http::header::AUTHORIZATION;
use portcullis_shared::config::AgentAuthMode;

use crate::proxy::error::ProxyError;

/// How a server authenticates its callers, compiled once per snapshot.
#[derive(Debug, Clone)]
pub enum AgentAuthPlan {
    /// Nothing is checked. Risk (documented for admins): anyone who can reach the node can
    /// call the server; the caller stays anonymous.
    PassthroughUnchecked,
    /// A mode this node version cannot check yet. Refused, never let through unchecked.
    NotSupported { mode: &'static str },
}

/// Who the caller is, as far as the node knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub identity: CallerIdentity,
    /// Whether the request carried an `Authorization` header. Unverified under passthrough:
    /// recorded as a fact about the request, never as an identity.
    pub presented_credential: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerIdentity {
    /// No verified identity (passthrough without validation).
    Anonymous,
}

impl Caller {
    /// The caller as request records name it.
    pub fn record_name(&self) -> &str {
        match &self.identity {
            CallerIdentity::Anonymous => "anonymous",
        }
    }
}

impl AgentAuthPlan {
    pub fn compile(mode: &AgentAuthMode) -> Self {
        match mode {
            AgentAuthMode::Passthrough {
                jwt_validation: None,
            } => Self::PassthroughUnchecked,
            AgentAuthMode::Passthrough {
                jwt_validation: Some(_),
            } => Self::NotSupported {
                mode: "passthrough with JWT validation",
            },
            AgentAuthMode::Interactive { .. } => Self::NotSupported {
                mode: "interactive SSO",
            },
        }
    }

    /// Authenticates the caller from the request headers. Async because the modes still to
    /// come fetch signing keys and talk to identity providers.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ProxyError> {
        match self {
            AgentAuthPlan::PassthroughUnchecked => Ok(Caller {
                identity: CallerIdentity::Anonymous,
                presented_credential: headers.contains_key(AUTHORIZATION),
            }),
            AgentAuthPlan::NotSupported { mode } => Err(ProxyError::AgentAuthNotSupported(mode)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_shared::config::{JwksSource, JwtValidation};
    use portcullis_shared::names::CatalogId;

    #[tokio::test]
    async fn passthrough_without_validation_lets_anyone_in_anonymously() {
        let plan = AgentAuthPlan::compile(&AgentAuthMode::Passthrough {
            jwt_validation: None,
        });
        let caller = plan.authenticate(&HeaderMap::new()).await.unwrap();
        assert_eq!(caller.record_name(), "anonymous");
        assert!(!caller.presented_credential);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, "Bearer x".parse().unwrap());
        assert!(
            plan.authenticate(&headers)
                .await
                .unwrap()
                .presented_credential
        );
    }

    #[tokio::test]
    async fn modes_this_version_cannot_check_are_refused() {
        let interactive = AgentAuthPlan::compile(&AgentAuthMode::Interactive {
            identity_provider: CatalogId::parse("okta").unwrap(),
            scopes: Vec::new(),
        });
        let jwt = AgentAuthPlan::compile(&AgentAuthMode::Passthrough {
            jwt_validation: Some(JwtValidation {
                jwks: JwksSource::Url(url::Url::parse("https://idp.example.com/jwks").unwrap()),
                issuer: None,
                audience: None,
            }),
        });
        for plan in [interactive, jwt] {
            let mut headers = HeaderMap::new();
            headers.insert(AUTHORIZATION, "Bearer looks-valid".parse().unwrap());
            let error = plan.authenticate(&headers).await.unwrap_err();
            assert!(matches!(error, ProxyError::AgentAuthNotSupported(_)));
            assert!(
                error
                    .public_message()
                    .contains("not supported by this node version")
            );
        }
    }
}

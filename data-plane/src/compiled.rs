//! The runtime form of a snapshot: everything the request path needs, computed once when a
//! snapshot arrives (header values, upstream URI parts, origin sets, inline JWKS keys)
//! instead of per request. JWKS URLs are resolved through the node's [`JwksRegistry`], so
//! servers and successive snapshots naming the same URL share one cache of its keys.
//!
//! [`SnapshotSlot`] holds the current one. Requests load an `Arc` at their start and keep it
//! to the end, so a swap never changes the configuration under a request in flight.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};
use portcullis_shared::config::McpServer;
use portcullis_shared::names::{HeaderPattern, ServerName};
use portcullis_shared::secret::SecretValue;
use portcullis_shared::snapshot::Snapshot;
use portcullis_shared::validate::ValidationErrors;
use url::Url;

use crate::config::UpstreamHostAllowlist;
use crate::jwt::JwksRegistry;
use crate::oauth::keyring::GatewayKeyring;
use crate::proxy::agent_auth::AgentAuthPlan;
use crate::proxy::app_auth::{AppAuthPlan, UpstreamQuery};
use crate::proxy::outbound_headers::OutboundHeadersPlan;

/// A snapshot compiled for the request path.
#[derive(Debug)]
pub struct CompiledSnapshot {
    pub version: u64,
    servers: HashMap<String, CompiledServer>,
    /// The gateway's authorization-server keys (Interactive SSO), parsed once.
    pub gateway_keys: GatewayKeyring,
    /// The validated source, kept for the catalogs later steps need (identity providers,
    /// OAuth apps, stored credentials, revocations).
    pub source: Snapshot,
}

impl CompiledSnapshot {
    /// Compiles every server with any upstream host allowed; see
    /// [`Self::compile_for_hosts`].
    pub fn compile(source: Snapshot, jwks: &JwksRegistry) -> Result<Self, ValidationErrors> {
        Self::compile_for_hosts(source, jwks, &UpstreamHostAllowlist::Any)
    }

    /// Compiles every server, reporting every problem with its field path. JWKS URLs are
    /// looked up in (or added to) `jwks`, which starts fetching new ones right away. A
    /// server whose upstream host `allowed_upstream_hosts` refuses does not compile.
    pub fn compile_for_hosts(
        source: Snapshot,
        jwks: &JwksRegistry,
        allowed_upstream_hosts: &UpstreamHostAllowlist,
    ) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let mut servers = HashMap::with_capacity(source.servers.len());
        for (name, server) in &source.servers {
            match CompiledServer::compile(server, jwks, allowed_upstream_hosts) {
                Ok(compiled) => {
                    servers.insert(name.to_string(), compiled);
                }
                Err(nested) => errors.extend_prefixed(&format!("servers[{name}]"), nested),
            }
        }
        let gateway_keys = GatewayKeyring::compile(&source.gateway_keys)
            .map_err(|nested| errors.extend_prefixed("gateway_keys", nested))
            .unwrap_or_default();
        errors.into_result(Self {
            version: source.version,
            servers,
            gateway_keys,
            source,
        })
    }

    pub fn server(&self, name: &str) -> Option<&CompiledServer> {
        self.servers.get(name)
    }
}

/// One MCP server, ready for the request path.
#[derive(Debug)]
pub struct CompiledServer {
    pub name: ServerName,
    pub upstream: UpstreamTarget,
    /// Exact origins (`scheme://host[:port]`, as the shared model normalises them).
    pub allowed_origins: HashSet<String>,
    pub agent_auth: AgentAuthPlan,
    pub restricted_inbound_headers: Vec<HeaderPattern>,
    pub app_auth: AppAuthPlan,
    /// `AppAuth::kind_name`, for records and metrics.
    pub app_auth_kind: &'static str,
    /// The additional outbound headers (step 6).
    pub outbound_headers: OutboundHeadersPlan,
}

impl CompiledServer {
    pub fn compile(
        server: &McpServer<SecretValue>,
        jwks: &JwksRegistry,
        allowed_upstream_hosts: &UpstreamHostAllowlist,
    ) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let upstream_host = server.upstream_url.host_str().unwrap_or_default();
        if !allowed_upstream_hosts.allows(upstream_host) {
            // An SSRF guard: whoever writes configuration cannot point this node anywhere.
            errors.push(
                "upstream_url",
                format!(
                    "upstream host {upstream_host} is not allowed on this node (--allowed-upstream-hosts)"
                ),
            );
        }
        let upstream = UpstreamTarget::from_url(&server.upstream_url)
            .map_err(|message| errors.push("upstream_url", message))
            .ok();
        let agent_auth = AgentAuthPlan::compile(&server.agent_auth.mode, jwks, &server.name)
            .map_err(|nested| errors.extend_prefixed("agent_auth", nested))
            .ok();
        let app_auth = AppAuthPlan::compile(&server.app_auth)
            .map_err(|nested| errors.extend_prefixed("app_auth", nested))
            .ok();
        let outbound_headers = OutboundHeadersPlan::compile(&server.outbound_headers)
            .map_err(|nested| errors.extend_prefixed("", nested))
            .ok();
        if let (Some(plan), Some(AgentAuthPlan::PassthroughUnchecked)) =
            (&outbound_headers, &agent_auth)
            && plan.needs_verified_caller()
        {
            tracing::warn!(
                server = %server.name,
                "outbound headers use the caller's token or identity, but the server does not verify callers: its requests will be refused"
            );
        }
        match (upstream, agent_auth, app_auth, outbound_headers) {
            (Some(upstream), Some(agent_auth), Some(app_auth), Some(outbound_headers))
                if errors.is_empty() =>
            {
                Ok(Self {
                    name: server.name.clone(),
                    upstream,
                    allowed_origins: server.allowed_origins.iter().cloned().collect(),
                    agent_auth,
                    restricted_inbound_headers: server
                        .agent_auth
                        .restricted_inbound_headers
                        .clone(),
                    app_auth,
                    app_auth_kind: server.app_auth.kind_name(),
                    outbound_headers,
                })
            }
            _ => Err(errors),
        }
    }
}

/// The upstream URL split into the parts an outbound URI is built from.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    scheme: Scheme,
    authority: Authority,
    path: String,
    query: Option<String>,
}

impl UpstreamTarget {
    pub fn from_url(url: &Url) -> Result<Self, String> {
        let scheme: Scheme = url
            .scheme()
            .parse()
            .map_err(|_| "unsupported scheme".to_owned())?;
        let host = url.host_str().ok_or("missing host")?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let authority: Authority = authority
            .parse()
            .map_err(|_| "host is not a valid URI authority".to_owned())?;
        let path = url.path().to_owned();
        let query = url.query().map(str::to_owned);
        // Prove once that the parts form a URI, so building one per request cannot fail.
        Self::build(&scheme, &authority, &path, query.as_deref())
            .map_err(|_| "not a valid request URI".to_owned())?;
        Ok(Self {
            scheme,
            authority,
            path,
            query,
        })
    }

    /// The query the upstream URL itself carries, as a starting point for a request.
    pub fn base_query(&self) -> UpstreamQuery {
        UpstreamQuery::new(self.query.as_deref())
    }

    /// The absolute URI for one request with its final query.
    pub fn uri(&self, query: &UpstreamQuery) -> Result<Uri, http::Error> {
        Self::build(
            &self.scheme,
            &self.authority,
            &self.path,
            query.to_query_string().as_deref(),
        )
    }

    fn build(
        scheme: &Scheme,
        authority: &Authority,
        path: &str,
        query: Option<&str>,
    ) -> Result<Uri, http::Error> {
        let path_and_query: PathAndQuery = match query {
            Some(query) => format!("{path}?{query}").parse()?,
            None => path.parse()?,
        };
        Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query(path_and_query)
            .build()
    }
}

/// The current compiled snapshot, swapped atomically. Empty until the first snapshot is
/// loaded from disk or received from the control plane.
#[derive(Debug, Default)]
pub struct SnapshotSlot {
    current: ArcSwapOption<CompiledSnapshot>,
}

impl SnapshotSlot {
    pub fn new(initial: Option<CompiledSnapshot>) -> Self {
        Self {
            current: ArcSwapOption::new(initial.map(Arc::new)),
        }
    }

    pub fn load(&self) -> Option<Arc<CompiledSnapshot>> {
        self.current.load_full()
    }

    pub fn store(&self, snapshot: CompiledSnapshot) {
        self.current.store(Some(Arc::new(snapshot)));
    }

    pub fn version(&self) -> Option<u64> {
        self.current
            .load()
            .as_ref()
            .map(|snapshot| snapshot.version)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use portcullis_shared::config::{
        AgentAuth, AgentAuthMode, AppAuth, JwksSource, JwtValidation, Transport,
    };

    pub(crate) fn domain_server(app_auth: AppAuth<SecretValue>) -> McpServer<SecretValue> {
        McpServer {
            name: ServerName::parse("demo").unwrap(),
            upstream_url: Url::parse("http://127.0.0.1:9/mcp?tenant=a").unwrap(),
            transport: Transport::StreamableHttp,
            allowed_origins: Vec::new(),
            description: String::new(),
            agent_auth: AgentAuth {
                mode: AgentAuthMode::Passthrough {
                    jwt_validation: None,
                },
                restricted_inbound_headers: vec![HeaderPattern::parse("x-internal-*").unwrap()],
            },
            app_auth,
            outbound_headers: Vec::new(),
        }
    }

    pub(crate) fn server_with_origins(origins: &[&str]) -> CompiledServer {
        let mut server = domain_server(AppAuth::Passthrough);
        server.allowed_origins = origins.iter().map(|origin| (*origin).to_owned()).collect();
        CompiledServer::compile(&server, &test_registry(), &UpstreamHostAllowlist::Any).unwrap()
    }

    /// A registry whose fetcher serves nothing; for snapshots without JWKS URLs.
    pub(crate) fn test_registry() -> JwksRegistry {
        JwksRegistry::with_fetcher(
            crate::jwt::JwksPolicy::default(),
            crate::jwt::remote::tests::ScriptedFetcher::serving(serde_json::json!({})),
        )
    }

    #[test]
    fn upstream_uris_keep_path_and_merge_queries() {
        let target = UpstreamTarget::from_url(
            &Url::parse("https://api.example.com:8443/v1/mcp?x=1").unwrap(),
        )
        .unwrap();
        let mut query = target.base_query();
        query.extend_raw(Some("y=2"));
        assert_eq!(
            target.uri(&query).unwrap().to_string(),
            "https://api.example.com:8443/v1/mcp?x=1&y=2"
        );
        let bare = UpstreamTarget::from_url(&Url::parse("http://[::1]/").unwrap()).unwrap();
        assert_eq!(
            bare.uri(&bare.base_query()).unwrap().to_string(),
            "http://[::1]/"
        );
    }

    fn server_with_jwks_url() -> McpServer<SecretValue> {
        let mut server = domain_server(AppAuth::Passthrough);
        server.agent_auth.mode = AgentAuthMode::Passthrough {
            jwt_validation: Some(JwtValidation {
                jwks: JwksSource::Url(Url::parse("https://idp.example.com/jwks.json").unwrap()),
                issuer: None,
                audience: None,
            }),
        };
        server
    }

    #[tokio::test]
    async fn jwks_urls_resolve_where_discovery_compiles_on_the_blocking_pool() {
        let jwks = Arc::new(test_registry());
        let registry = jwks.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            CompiledServer::compile(
                &server_with_jwks_url(),
                &registry,
                &UpstreamHostAllowlist::Any,
            )
            .map(|_| ())
        })
        .await
        .unwrap();
        assert!(compiled.is_ok(), "{compiled:?}");
        // The compiled server was dropped in the closure, and its URL cache with it.
        assert!(jwks.is_empty());
        // Outside any runtime the URL cannot be fetched: a clear compile error, no panic.
        let outside = std::thread::spawn(|| {
            CompiledServer::compile(
                &server_with_jwks_url(),
                &test_registry(),
                &UpstreamHostAllowlist::Any,
            )
            .unwrap_err()
            .to_string()
        })
        .join()
        .unwrap();
        assert!(
            outside.contains("agent_auth.jwt_validation.jwks_url"),
            "{outside}"
        );
    }

    #[test]
    fn a_server_on_a_host_outside_the_allowlist_does_not_compile() {
        let allowlist = UpstreamHostAllowlist::parse("*.svc.cluster.local").unwrap();
        let mut snapshot = Snapshot {
            version: 3,
            ..Snapshot::default()
        };
        let server = domain_server(AppAuth::Passthrough);
        snapshot.servers.insert(server.name.clone(), server);
        let errors =
            CompiledSnapshot::compile_for_hosts(snapshot.clone(), &test_registry(), &allowlist)
                .unwrap_err();
        assert_eq!(errors.violations.len(), 1, "{errors}");
        assert_eq!(errors.violations[0].field, "servers[demo].upstream_url");
        assert!(
            errors.violations[0]
                .message
                .contains("upstream host 127.0.0.1 is not allowed"),
            "{errors}"
        );

        let loopback = UpstreamHostAllowlist::parse("127.0.0.1").unwrap();
        let compiled =
            CompiledSnapshot::compile_for_hosts(snapshot, &test_registry(), &loopback).unwrap();
        assert!(compiled.server("demo").is_some());
    }

    #[test]
    fn the_slot_swaps_whole_snapshots() {
        let slot = SnapshotSlot::default();
        assert_eq!(slot.version(), None);
        let first = CompiledSnapshot::compile(
            Snapshot {
                version: 1,
                ..Snapshot::default()
            },
            &test_registry(),
        )
        .unwrap();
        slot.store(first);
        let held = slot.load().unwrap();
        slot.store(
            CompiledSnapshot::compile(
                Snapshot {
                    version: 2,
                    ..Snapshot::default()
                },
                &test_registry(),
            )
            .unwrap(),
        );
        // A request that loaded version 1 keeps it; new loads see version 2.
        assert_eq!(held.version, 1);
        assert_eq!(slot.version(), Some(2));
    }
}

//! `echo-upstream`: a small MCP server (rmcp, Streamable HTTP) that reports what it received.
//!
//! Gateway tests put it behind Portcullis and ask it which headers, query string and
//! credential arrived, so they can assert on what the gateway forwarded rather than on what
//! the gateway says it forwarded. It is also the demo upstream of the local setup.
//!
//! Tools:
//! - `echo_headers`: the HTTP method, path, query string and headers of the request that
//!   carried this tool call, as JSON text;
//! - `whoami`: the `Authorization` header it saw, or `anonymous`;
//! - `count`: sends `n` progress notifications `delay_ms` apart, then returns (checks that
//!   SSE streams arrive incrementally through a proxy);
//! - `add`: adds two integers.

use std::collections::BTreeMap;
use std::time::Duration;

use rmcp::handler::server::tool::{Extension, ToolRouter};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ProgressNotificationParam, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use crate::upstream_server::UpstreamHttpOptions;
use crate::upstream_server::mcp_router;

/// The line prefix the binary prints on stdout once it is bound.
pub const LISTENING_LINE_PREFIX: &str = "echo-upstream listening on ";

/// Upper bound for the `count` tool, so a typo cannot keep a test busy for hours.
const COUNT_MAX_NOTIFICATIONS: u64 = 10_000;
/// Upper bound for the delay between two `count` notifications.
const COUNT_MAX_DELAY_MS: u64 = 60_000;

/// What `echo_headers` returns: the parts of the HTTP request that carried the tool call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string, without `?`; `None` when the URL had none.
    pub query: Option<String>,
    /// Header names (lowercase) to every value received, in arrival order.
    pub headers: BTreeMap<String, Vec<String>>,
}

impl EchoedRequest {
    fn from_parts(parts: &http::request::Parts) -> Self {
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in &parts.headers {
            headers
                .entry(name.as_str().to_owned())
                .or_default()
                .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
        }
        Self {
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers,
        }
    }

    /// The first value of a header, looked up case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .and_then(|values| values.first())
            .map(String::as_str)
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CountArguments {
    /// How many progress notifications to send.
    pub n: u64,
    /// Milliseconds to wait before each notification.
    #[serde(default)]
    pub delay_ms: u64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct AddArguments {
    pub a: i64,
    pub b: i64,
}

/// The MCP server handler; one instance per session.
#[derive(Debug, Clone)]
pub struct EchoUpstream {
    tool_router: ToolRouter<Self>,
}

impl Default for EchoUpstream {
    fn default() -> Self {
        Self::new()
    }
}

#[tool_router]
impl EchoUpstream {
    pub fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Returns the HTTP method, path, query string and headers of the request that carried this call, as JSON"
    )]
    async fn echo_headers(
        &self,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let echoed = EchoedRequest::from_parts(&parts);
        let text = serde_json::to_string(&echoed)
            .map_err(|error| ErrorData::internal_error(error.to_string(), None))?;
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
    }

    #[tool(description = "Returns the Authorization header this server received, or \"anonymous\"")]
    async fn whoami(&self, Extension(parts): Extension<http::request::Parts>) -> String {
        parts
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
            .unwrap_or_else(|| "anonymous".to_owned())
    }

    #[tool(
        description = "Sends n progress notifications, delay_ms milliseconds apart, then returns (needs a progress token)"
    )]
    async fn count(
        &self,
        Parameters(CountArguments { n, delay_ms }): Parameters<CountArguments>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        if n > COUNT_MAX_NOTIFICATIONS || delay_ms > COUNT_MAX_DELAY_MS {
            return Err(ErrorData::invalid_params(
                format!(
                    "n must be at most {COUNT_MAX_NOTIFICATIONS} and delay_ms at most {COUNT_MAX_DELAY_MS}"
                ),
                None,
            ));
        }
        // Without a progress token the spec allows no progress notification; the call then
        // only waits, which still exercises a slow response through a proxy.
        let progress_token = context.meta.get_progress_token();
        let mut notifications_sent = 0_u64;
        for step in 1..=n {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(delay_ms)) => {}
                () = context.ct.cancelled() => {
                    return Err(ErrorData::internal_error("count was cancelled", None));
                }
            }
            if let Some(token) = &progress_token {
                let notification = ProgressNotificationParam::new(token.clone(), step as f64)
                    .with_total(n as f64)
                    .with_message(format!("step {step} of {n}"));
                context
                    .peer
                    .notify_progress(notification)
                    .await
                    .map_err(|error| ErrorData::internal_error(error.to_string(), None))?;
                notifications_sent += 1;
            }
        }
        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
            "counted to {n}, sent {notifications_sent} progress notifications"
        ))]))
    }

    #[tool(description = "Adds two integers")]
    async fn add(
        &self,
        Parameters(AddArguments { a, b }): Parameters<AddArguments>,
    ) -> Result<CallToolResult, ErrorData> {
        let sum = a
            .checked_add(b)
            .ok_or_else(|| ErrorData::invalid_params("a + b overflows a 64-bit integer", None))?;
        Ok(CallToolResult::success(vec![ContentBlock::text(
            sum.to_string(),
        )]))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for EchoUpstream {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "echo-upstream",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Test upstream for Portcullis: reports the headers and credential it received.",
            )
    }
}

/// The HTTP router serving [`EchoUpstream`] with `options`.
pub fn router(options: &UpstreamHttpOptions, cancellation: CancellationToken) -> axum::Router {
    mcp_router(EchoUpstream::new, options, cancellation)
}

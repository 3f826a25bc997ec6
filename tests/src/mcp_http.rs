//! A small MCP Streamable HTTP client on reqwest, for tests that make many calls or need
//! exact control of what goes on the wire. The real third-party clients (Python SDK,
//! Inspector, mcp-remote) are the proof of interoperability; this is the probe: initialize,
//! `notifications/initialized`, then requests, with JSON or SSE responses.

use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

/// The protocol version this client asks for.
pub const PROTOCOL_VERSION: &str = "2025-06-18";

/// One MCP session over Streamable HTTP.
#[derive(Debug)]
pub struct McpHttpSession {
    http: reqwest::Client,
    url: String,
    headers: HeaderMap,
    session_id: Option<String>,
    next_id: u64,
    /// What `initialize` returned.
    pub initialize_result: Value,
}

/// An HTTP response that was not a success, with the body for the failure message.
#[derive(Debug)]
pub struct HttpFailure {
    pub status: u16,
    pub body: String,
}

impl std::fmt::Display for HttpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.body)
    }
}

impl std::error::Error for HttpFailure {}

impl McpHttpSession {
    /// Initializes a session at `url`, sending `headers` with every request.
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("cannot build an HTTP client")?;
        Self::connect_with(http, url, headers).await
    }

    /// Like [`Self::connect`], over `http` (e.g. a client trusting a test CA).
    pub async fn connect_with(
        http: reqwest::Client,
        url: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut header_map = HeaderMap::new();
        for (name, value) in headers {
            header_map.append(
                HeaderName::from_bytes(name.as_bytes()).context("invalid header name")?,
                HeaderValue::from_str(value).context("invalid header value")?,
            );
        }
        let mut session = Self {
            http,
            url: url.to_owned(),
            headers: header_map,
            session_id: None,
            next_id: 1,
            initialize_result: Value::Null,
        };
        let result = session
            .request(
                "initialize",
                json!({
                    "protocolVersion": PROTOCOL_VERSION,
                    "capabilities": {},
                    "clientInfo": {"name": "portcullis-e2e-probe", "version": "1"}
                }),
            )
            .await
            .context("initialize failed")?;
        session.initialize_result = result;
        session
            .notify("notifications/initialized", json!({}))
            .await
            .context("notifications/initialized failed")?;
        Ok(session)
    }

    fn post(&self, body: &Value) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(&self.url)
            .headers(self.headers.clone())
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", PROTOCOL_VERSION)
            .json(body);
        if let Some(session_id) = &self.session_id {
            request = request.header("mcp-session-id", session_id);
        }
        request
    }

    /// Sends a notification (no response expected beyond 202).
    pub async fn notify(&mut self, method: &str, params: Value) -> anyhow::Result<()> {
        let response = self
            .post(&json!({"jsonrpc": "2.0", "method": method, "params": params}))
            .send()
            .await
            .with_context(|| format!("cannot send {method}"))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let body = response.text().await.unwrap_or_default();
            return Err(HttpFailure { status, body }.into());
        }
        Ok(())
    }

    /// Sends a request and returns its `result`; a JSON-RPC error is an error.
    pub async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let response = self
            .post(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .send()
            .await
            .with_context(|| format!("cannot send {method}"))?;
        let status = response.status().as_u16();
        if let Some(session_id) = response.headers().get("mcp-session-id") {
            self.session_id = Some(
                session_id
                    .to_str()
                    .context("the session id is not text")?
                    .to_owned(),
            );
        }
        let is_event_stream = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"));
        let body = response
            .text()
            .await
            .with_context(|| format!("cannot read the response to {method}"))?;
        if !(200..300).contains(&status) {
            return Err(HttpFailure { status, body }.into());
        }
        let message = if is_event_stream {
            response_in_event_stream(&body, id).with_context(|| {
                format!("no response to {method} (id {id}) in the stream: {body}")
            })?
        } else {
            serde_json::from_str(&body)
                .with_context(|| format!("the response to {method} is not JSON: {body}"))?
        };
        if let Some(error) = message.get("error") {
            bail!("{method} failed: {error}");
        }
        message
            .get("result")
            .cloned()
            .with_context(|| format!("the response to {method} has no result: {message}"))
    }

    /// Calls a tool and returns its result.
    pub async fn call_tool(&mut self, name: &str, arguments: Value) -> anyhow::Result<Value> {
        self.request("tools/call", json!({"name": name, "arguments": arguments}))
            .await
    }

    /// Calls a tool and returns the text of its first text content block.
    pub async fn call_tool_text(&mut self, name: &str, arguments: Value) -> anyhow::Result<String> {
        let result = self.call_tool(name, arguments).await?;
        result["content"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|block| block["type"] == "text")
            .and_then(|block| block["text"].as_str())
            .map(str::to_owned)
            .with_context(|| format!("{name} returned no text: {result}"))
    }
}

/// The JSON-RPC response with `id` among the `data:` events of an SSE body.
fn response_in_event_stream(body: &str, id: u64) -> Option<Value> {
    let mut data = String::new();
    let mut found = None;
    // Events end at a blank line; their data lines are joined with newlines.
    for line in body.lines().chain(std::iter::once("")) {
        if let Some(value) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        } else if line.is_empty() && !data.is_empty() {
            if let Ok(message) = serde_json::from_str::<Value>(&data)
                && message.get("id").and_then(Value::as_u64) == Some(id)
                && (message.get("result").is_some() || message.get("error").is_some())
            {
                found = Some(message);
            }
            data.clear();
        }
    }
    found
}

/// One session, one tool call, its text: for tests that only need the answer.
pub async fn call_tool_text(
    url: &str,
    headers: &[(&str, &str)],
    tool: &str,
    arguments: Value,
) -> anyhow::Result<String> {
    McpHttpSession::connect(url, headers)
        .await?
        .call_tool_text(tool, arguments)
        .await
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn finds_the_response_among_events() {
        let body = "id: 0\ndata:\n\n\
            data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n\
            data: {\"jsonrpc\":\"2.0\",\"id\":3,\n\
            data: \"result\":{\"ok\":true}}\n\n";
        let message = response_in_event_stream(body, 3).unwrap();
        assert_eq!(message["result"]["ok"], true);
        assert!(response_in_event_stream(body, 4).is_none());
    }
}

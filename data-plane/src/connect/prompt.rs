//! The "connect your account" prompt, in the form each MCP client understands, and what the
//! node reads from a request to choose that form.
//!
//! | the request | the answer (HTTP 200) |
//! |---|---|
//! | `tools/call`, 2026-07-28 (`_meta` declares the version), client declared URL elicitation in `_meta` | result `resultType: "input_required"` with one `elicitation/create` URL request (MRTR); the client retries the call once the user opened the link |
//! | `tools/call`, 2025-11-25 (`MCP-Protocol-Version`), its session declared URL elicitation at `initialize` | JSON-RPC error `-32042` (`URLElicitationRequiredError`), the URL elicitation in `data.elicitations` |
//! | `tools/call`, any other client | a tool result with `isError: true` whose text carries the link (every client shows tool results) |
//! | another request (`initialize`, `tools/list`...) the upstream refused (401) | `-32042` when the client declared URL elicitation (in this very `initialize`, or its session), else a JSON-RPC error `-32000` whose message carries the link (`data.reason: "account_not_connected"`, `data.connect_url`) |
//! | anything else (a notification, a batch, GET, DELETE) refused by the upstream | 403 with that JSON-RPC error |
//!
//! The texts name the app and the server, never the user; the URL is the sealed link (see
//! [`crate::connect::link`]).

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::CONTENT_TYPE;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::proxy::error::JSONRPC_GATEWAY_ERROR;

/// MCP 2025-11-25 `URLElicitationRequiredError`.
pub const URL_ELICITATION_REQUIRED: i64 = -32042;
/// The `_meta` keys of a 2026-07-28 request.
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// Protocol revisions that negotiate with `initialize`; anything else declared in `_meta` is
/// the stateless era (2026-07-28 and later).
pub const HANDSHAKE_REVISIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// The first revision with URL elicitation and `-32042`.
pub const URL_ELICITATION_REVISION: &str = "2025-11-25";

/// The key of the gateway's input request in an `input_required` result (one per app, so a
/// retry answering it can be recognised).
pub fn input_request_key(app_id: &str) -> String {
    format!("portcullis.connect.{app_id}")
}

/// What one POST body says, as far as the prompt is concerned. Only a body holding exactly
/// one message is read; anything else is [`RequestKind::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestFacts {
    pub kind: RequestKind,
    /// The request id, to answer with.
    pub id: Value,
    /// `_meta["io.modelcontextprotocol/protocolVersion"]` (2026-07-28 and later).
    pub meta_protocol_version: Option<String>,
    /// `_meta["io.modelcontextprotocol/clientCapabilities"].elicitation.url` is present.
    pub meta_url_elicitation: bool,
    /// `initialize`: the client's `protocolVersion` and whether its capabilities declare
    /// `elicitation.url`.
    pub initialize_protocol_version: Option<String>,
    pub initialize_url_elicitation: bool,
    /// The answers in `inputResponses`, by key (`action` of an elicitation result).
    pub input_responses: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestKind {
    ToolCall,
    Initialize,
    /// Another request (with an id).
    Request,
    /// A notification, a response, a batch, an unreadable body, or no body (GET, DELETE).
    #[default]
    Other,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    method: Option<String>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

#[derive(Deserialize, Default)]
struct Params {
    #[serde(rename = "_meta", default)]
    meta: Option<Map<String, Value>>,
    #[serde(rename = "protocolVersion", default)]
    protocol_version: Option<Value>,
    #[serde(default)]
    capabilities: Option<Value>,
    #[serde(rename = "inputResponses", default)]
    input_responses: Option<Map<String, Value>>,
}

/// True when capabilities declare `elicitation.url` (an object, possibly empty).
fn declares_url_elicitation(capabilities: Option<&Value>) -> bool {
    capabilities
        .and_then(|capabilities| capabilities.get("elicitation"))
        .and_then(|elicitation| elicitation.get("url"))
        .is_some_and(Value::is_object)
}

/// Reads the facts of a POST body (already checked to be JSON-RPC by the pipeline).
pub fn inspect(body: &[u8]) -> RequestFacts {
    let Ok(message) = serde_json::from_slice::<Message<'_>>(body) else {
        return RequestFacts::default();
    };
    let (Some(id), Some(method)) = (message.id, message.method) else {
        return RequestFacts::default();
    };
    let params: Params = message
        .params
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or_default();
    let meta = params.meta.unwrap_or_default();
    let kind = match method.as_str() {
        "tools/call" => RequestKind::ToolCall,
        "initialize" => RequestKind::Initialize,
        _ => RequestKind::Request,
    };
    RequestFacts {
        kind,
        id,
        meta_protocol_version: meta
            .get(META_PROTOCOL_VERSION)
            .and_then(Value::as_str)
            .map(str::to_owned),
        meta_url_elicitation: declares_url_elicitation(meta.get(META_CLIENT_CAPABILITIES)),
        initialize_protocol_version: (kind == RequestKind::Initialize)
            .then(|| {
                params
                    .protocol_version
                    .as_ref()?
                    .as_str()
                    .map(str::to_owned)
            })
            .flatten(),
        initialize_url_elicitation: kind == RequestKind::Initialize
            && declares_url_elicitation(params.capabilities.as_ref()),
        input_responses: params.input_responses.unwrap_or_default(),
    }
}

impl RequestFacts {
    /// The request declares a stateless-era revision in `_meta` (2026-07-28 and later).
    pub fn is_stateless_era(&self) -> bool {
        self.meta_protocol_version
            .as_deref()
            .is_some_and(|version| !HANDSHAKE_REVISIONS.contains(&version))
    }

    /// What the client answered to the gateway's earlier input request for `app_id` (a
    /// 2026-07-28 retry): `accept`, `decline`, `cancel`, or `None` when this is not a retry.
    pub fn answered_connect(&self, app_id: &str) -> Option<String> {
        let answer = self.input_responses.get(&input_request_key(app_id))?;
        Some(
            answer
                .get("action")
                .and_then(Value::as_str)
                .unwrap_or("accept")
                .to_owned(),
        )
    }
}

/// Why the user is asked to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptReason {
    /// Never connected, or disconnected.
    NotConnected,
    /// The provider refused the refresh token, or the upstream refused the access token.
    Reconnect,
    /// The client answered the prompt, but the account is still not connected.
    NotFinished,
    /// The user declined to open the link.
    Declined,
}

/// How the prompt is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptForm {
    /// 2026-07-28: `input_required` with a URL elicitation.
    InputRequired,
    /// 2025-11-25: JSON-RPC error -32042.
    UrlElicitationError,
    /// A tool result with `isError: true` (`resultType: complete` for 2026-07-28 clients).
    ToolResult { stateless: bool },
    /// A JSON-RPC error carrying the link in its message.
    GatewayError,
}

/// Everything a prompt says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectPrompt {
    pub form: PromptForm,
    pub reason: PromptReason,
    /// The request's id (null when there is none).
    pub id: Value,
    pub app_id: String,
    pub app_name: String,
    pub server: String,
    /// The sealed link.
    pub url: String,
    /// Whether the answer goes out with 403 instead of 200 (no single request to answer).
    pub forbidden: bool,
}

impl ConnectPrompt {
    /// The sentence a client shows next to the link.
    pub fn message(&self) -> String {
        let ConnectPrompt {
            app_name, server, ..
        } = self;
        match self.reason {
            PromptReason::NotConnected => {
                format!("To use {server}, connect your {app_name} account.")
            }
            PromptReason::Reconnect => format!(
                "Your {app_name} connection for {server} has expired or was revoked: connect your {app_name} account again."
            ),
            PromptReason::NotFinished => {
                format!("Connecting your {app_name} account for {server} is not finished yet.")
            }
            PromptReason::Declined => {
                format!("{server} needs your {app_name} account, and it is not connected.")
            }
        }
    }

    /// The text of a tool result or an error message: the sentence and the link.
    pub fn text(&self) -> String {
        let action = match self.reason {
            PromptReason::NotFinished => {
                "Finish in the browser (or open this link again), then try again"
            }
            PromptReason::NotConnected | PromptReason::Reconnect | PromptReason::Declined => {
                "Open this link, sign in and approve, then try again"
            }
        };
        format!("{} {action}: {}", self.message(), self.url)
    }

    fn url_elicitation(&self) -> Value {
        json!({
            "mode": "url",
            "message": self.message(),
            "url": self.url,
        })
    }

    /// The JSON-RPC message.
    pub fn body(&self) -> Value {
        match self.form {
            PromptForm::InputRequired => {
                let mut requests = Map::new();
                requests.insert(
                    input_request_key(&self.app_id),
                    json!({ "method": "elicitation/create", "params": self.url_elicitation() }),
                );
                json!({
                    "jsonrpc": "2.0",
                    "id": self.id,
                    "result": { "resultType": "input_required", "inputRequests": requests },
                })
            }
            PromptForm::UrlElicitationError => {
                let mut elicitation = self.url_elicitation();
                elicitation["elicitationId"] = json!(uuid::Uuid::new_v4().to_string());
                json!({
                    "jsonrpc": "2.0",
                    "id": self.id,
                    "error": {
                        "code": URL_ELICITATION_REQUIRED,
                        "message": self.message(),
                        "data": { "elicitations": [elicitation] },
                    },
                })
            }
            PromptForm::ToolResult { stateless } => {
                let mut result = json!({
                    "content": [{ "type": "text", "text": self.text() }],
                    "isError": true,
                });
                if stateless {
                    result["resultType"] = json!("complete");
                }
                json!({ "jsonrpc": "2.0", "id": self.id, "result": result })
            }
            PromptForm::GatewayError => json!({
                "jsonrpc": "2.0",
                "id": self.id,
                "error": {
                    "code": JSONRPC_GATEWAY_ERROR,
                    "message": self.text(),
                    "data": {
                        "code": "failed_precondition",
                        "reason": "account_not_connected",
                        "app": self.app_id,
                        "connect_url": self.url,
                    },
                },
            }),
        }
    }

    pub fn status(&self) -> StatusCode {
        if self.forbidden {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::OK
        }
    }

    pub fn into_response(self) -> Response {
        (
            self.status(),
            [(CONTENT_TYPE, "application/json")],
            self.body().to_string(),
        )
            .into_response()
    }
}

/// Which form a prompt takes for a request: `session_url_elicitation` is what the client's
/// session declared at `initialize` (2025-11-25), when the node knows it.
pub fn form_for(
    facts: &RequestFacts,
    protocol_header: Option<&str>,
    session_url_elicitation: bool,
) -> PromptForm {
    let stateless = facts.is_stateless_era();
    let legacy_url_elicitation = !stateless
        && match facts.kind {
            // The initialize request declares it itself; its version is in the body.
            RequestKind::Initialize => {
                facts.initialize_url_elicitation
                    && facts.initialize_protocol_version.as_deref()
                        == Some(URL_ELICITATION_REVISION)
            }
            RequestKind::ToolCall | RequestKind::Request | RequestKind::Other => {
                session_url_elicitation && protocol_header == Some(URL_ELICITATION_REVISION)
            }
        };
    match facts.kind {
        RequestKind::ToolCall if stateless && facts.meta_url_elicitation => {
            PromptForm::InputRequired
        }
        RequestKind::ToolCall if legacy_url_elicitation => PromptForm::UrlElicitationError,
        RequestKind::ToolCall => PromptForm::ToolResult { stateless },
        RequestKind::Initialize | RequestKind::Request if legacy_url_elicitation => {
            PromptForm::UrlElicitationError
        }
        RequestKind::Initialize | RequestKind::Request | RequestKind::Other => {
            PromptForm::GatewayError
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINK: &str = "https://gw.example.com/connect/github?request=pcx1.abc";

    fn prompt(form: PromptForm, reason: PromptReason) -> ConnectPrompt {
        ConnectPrompt {
            form,
            reason,
            id: json!(7),
            app_id: "github".to_owned(),
            app_name: "GitHub".to_owned(),
            server: "github-mcp".to_owned(),
            url: LINK.to_owned(),
            forbidden: false,
        }
    }

    fn tool_call(meta: Value) -> Vec<u8> {
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
               "params": {"name": "list_pull_requests", "arguments": {}, "_meta": meta}})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_2026_client_with_url_elicitation_gets_input_required() {
        let facts = inspect(&tool_call(json!({
            META_PROTOCOL_VERSION: "2026-07-28",
            META_CLIENT_CAPABILITIES: {"elicitation": {"form": {}, "url": {}}},
        })));
        assert_eq!(facts.kind, RequestKind::ToolCall);
        assert!(facts.is_stateless_era());
        let form = form_for(&facts, Some("2026-07-28"), false);
        assert_eq!(form, PromptForm::InputRequired);
        let body = prompt(form, PromptReason::NotConnected).body();
        assert_eq!(body["id"], 7);
        assert_eq!(body["result"]["resultType"], "input_required");
        let request = &body["result"]["inputRequests"]["portcullis.connect.github"];
        assert_eq!(request["method"], "elicitation/create");
        assert_eq!(request["params"]["mode"], "url");
        assert_eq!(request["params"]["url"], LINK);
        assert!(request["params"].get("elicitationId").is_none());
        assert!(
            request["params"]["message"]
                .as_str()
                .unwrap()
                .contains("connect your GitHub account")
        );
    }

    #[test]
    fn a_2026_client_without_url_elicitation_gets_a_tool_error_with_the_link() {
        let facts = inspect(&tool_call(json!({
            META_PROTOCOL_VERSION: "2026-07-28",
            META_CLIENT_CAPABILITIES: {"elicitation": {"form": {}}},
        })));
        let form = form_for(&facts, Some("2026-07-28"), true);
        assert_eq!(form, PromptForm::ToolResult { stateless: true });
        let body = prompt(form, PromptReason::NotConnected).body();
        assert_eq!(body["result"]["isError"], true);
        assert_eq!(body["result"]["resultType"], "complete");
        assert!(
            body["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .ends_with(LINK)
        );
    }

    #[test]
    fn a_2025_11_25_session_that_declared_url_elicitation_gets_32042() {
        let facts = inspect(&tool_call(json!({})));
        assert!(!facts.is_stateless_era());
        let form = form_for(&facts, Some("2025-11-25"), true);
        assert_eq!(form, PromptForm::UrlElicitationError);
        let body = prompt(form, PromptReason::NotConnected).body();
        assert_eq!(body["error"]["code"], URL_ELICITATION_REQUIRED);
        let elicitation = &body["error"]["data"]["elicitations"][0];
        assert_eq!(elicitation["mode"], "url");
        assert_eq!(elicitation["url"], LINK);
        assert_eq!(
            elicitation["elicitationId"].as_str().unwrap().len(),
            36,
            "a UUID"
        );
        // The same client without the capability, or an older revision: a tool result.
        assert_eq!(
            form_for(&facts, Some("2025-11-25"), false),
            PromptForm::ToolResult { stateless: false }
        );
        assert_eq!(
            form_for(&facts, Some("2025-06-18"), true),
            PromptForm::ToolResult { stateless: false }
        );
        assert_eq!(
            form_for(&facts, None, true),
            PromptForm::ToolResult { stateless: false }
        );
        let body = prompt(
            PromptForm::ToolResult { stateless: false },
            PromptReason::Reconnect,
        )
        .body();
        assert!(body["result"].get("resultType").is_none());
        assert!(
            body["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("expired or was revoked")
        );
    }

    #[test]
    fn initialize_declares_its_own_capabilities() {
        let body = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {"elicitation": {"form": {}, "url": {}}},
            "clientInfo": {"name": "c", "version": "1"}}});
        let facts = inspect(body.to_string().as_bytes());
        assert_eq!(facts.kind, RequestKind::Initialize);
        assert_eq!(
            facts.initialize_protocol_version.as_deref(),
            Some("2025-11-25")
        );
        assert!(facts.initialize_url_elicitation);
        assert_eq!(
            form_for(&facts, None, false),
            PromptForm::UrlElicitationError
        );
        // Form-only elicitation (an empty object means form only) does not count.
        let body = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {"elicitation": {}}}});
        let facts = inspect(body.to_string().as_bytes());
        assert!(!facts.initialize_url_elicitation);
        let form = form_for(&facts, None, false);
        assert_eq!(form, PromptForm::GatewayError);
        let body = prompt(form, PromptReason::NotConnected).body();
        assert_eq!(body["error"]["code"], JSONRPC_GATEWAY_ERROR);
        assert_eq!(body["error"]["data"]["reason"], "account_not_connected");
        assert_eq!(body["error"]["data"]["connect_url"], LINK);
        assert!(body["error"]["message"].as_str().unwrap().contains(LINK));
    }

    #[test]
    fn notifications_batches_and_garbage_are_other() {
        assert_eq!(
            inspect(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).kind,
            RequestKind::Other
        );
        assert_eq!(
            inspect(br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call"}]"#).kind,
            RequestKind::Other
        );
        assert_eq!(inspect(b"").kind, RequestKind::Other);
        let facts = inspect(br#"{"jsonrpc":"2.0","id":"a","method":"tools/list"}"#);
        assert_eq!((facts.kind, facts.id), (RequestKind::Request, json!("a")));
        assert_eq!(
            form_for(&RequestFacts::default(), None, true),
            PromptForm::GatewayError
        );
    }

    #[test]
    fn a_retry_answering_the_prompt_is_recognised() {
        let body = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {
            "name": "x", "_meta": {META_PROTOCOL_VERSION: "2026-07-28"},
            "inputResponses": {"portcullis.connect.github": {"action": "decline"}}}});
        let facts = inspect(body.to_string().as_bytes());
        assert_eq!(facts.answered_connect("github").as_deref(), Some("decline"));
        assert_eq!(facts.answered_connect("gitlab"), None);
    }

    #[test]
    fn texts_name_app_and_server_and_end_with_the_link() {
        for reason in [
            PromptReason::NotConnected,
            PromptReason::Reconnect,
            PromptReason::NotFinished,
            PromptReason::Declined,
        ] {
            let text = prompt(PromptForm::GatewayError, reason).text();
            assert!(
                text.contains("GitHub") && text.contains("github-mcp"),
                "{text}"
            );
            assert!(text.ends_with(LINK), "{text}");
        }
        let mut forbidden = prompt(PromptForm::GatewayError, PromptReason::NotConnected);
        forbidden.forbidden = true;
        assert_eq!(forbidden.into_response().status(), StatusCode::FORBIDDEN);
    }
}

//! Inspection of JSON-RPC request bodies: which methods a POST carries and, for
//! `tools/call`, which tool. The body itself is forwarded unchanged; this only reads it,
//! for the request record and for the id an error response must echo.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::proxy::error::ProxyError;

/// Longest method or tool name kept in a record; longer ones are cut (they are caller
/// input and end up in logs).
const MAX_NAME_LEN: usize = 256;

/// What one JSON-RPC message is.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageKind {
    Request {
        id: Value,
        method: String,
    },
    Notification {
        method: String,
    },
    /// A client's answer to a server request (sampling, elicitation, roots).
    Response {
        id: Value,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct MessageSummary {
    pub kind: MessageKind,
    /// The tool of a `tools/call` request, when `params.name` is a string.
    pub tool_name: Option<String>,
}

/// What a POST body holds.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonRpcSummary {
    pub batch: bool,
    pub messages: Vec<MessageSummary>,
}

impl JsonRpcSummary {
    /// The id an error response echoes: the request's id when the body is exactly one
    /// request, else null (JSON-RPC says so for batches and unreadable ids).
    pub fn error_id(&self) -> Value {
        match (self.batch, self.messages.as_slice()) {
            (
                false,
                [
                    MessageSummary {
                        kind: MessageKind::Request { id, .. },
                        ..
                    },
                ],
            ) => id.clone(),
            _ => Value::Null,
        }
    }

    pub fn methods(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter_map(|message| match &message.kind {
                MessageKind::Request { method, .. } | MessageKind::Notification { method } => {
                    Some(method.clone())
                }
                MessageKind::Response { .. } => None,
            })
            .collect()
    }

    pub fn tool_names(&self) -> Vec<String> {
        self.messages
            .iter()
            .filter_map(|message| message.tool_name.clone())
            .collect()
    }
}

#[derive(Deserialize)]
struct RawMessage<'a> {
    jsonrpc: Option<&'a str>,
    /// `Some(Value::Null)` for `"id": null`, `None` when absent (a notification).
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    method: Option<String>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    result: Option<IgnoredAny>,
    error: Option<IgnoredAny>,
}

fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// Only the tool name; `arguments` is skipped without being built.
#[derive(Deserialize)]
struct ToolCallParams {
    name: Option<Value>,
}

fn truncate(mut text: String) -> String {
    if text.len() > MAX_NAME_LEN {
        let mut end = MAX_NAME_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn summarize(raw: &RawValue) -> Result<MessageSummary, ProxyError> {
    let message: RawMessage<'_> = serde_json::from_str(raw.get())
        .map_err(|_| ProxyError::InvalidJsonRpc("each message must be a JSON-RPC object"))?;
    if message.jsonrpc != Some("2.0") {
        return Err(ProxyError::InvalidJsonRpc("\"jsonrpc\" must be \"2.0\""));
    }
    if let Some(id) = &message.id
        && !matches!(id, Value::String(_) | Value::Number(_) | Value::Null)
    {
        return Err(ProxyError::InvalidJsonRpc(
            "\"id\" must be a string or a number",
        ));
    }
    let kind = match (message.method, message.id) {
        (Some(method), Some(id)) => MessageKind::Request {
            id,
            method: truncate(method),
        },
        (Some(method), None) => MessageKind::Notification {
            method: truncate(method),
        },
        (None, Some(id)) if message.result.is_some() || message.error.is_some() => {
            MessageKind::Response { id }
        }
        (None, _) => {
            return Err(ProxyError::InvalidJsonRpc(
                "a message needs a \"method\", or a \"result\" or \"error\" with an \"id\"",
            ));
        }
    };
    let tool_name = match (&kind, message.params) {
        (MessageKind::Request { method, .. }, Some(params)) if method == "tools/call" => {
            serde_json::from_str::<ToolCallParams>(params.get())
                .ok()
                .and_then(|params| match params.name {
                    Some(Value::String(name)) => Some(truncate(name)),
                    _ => None,
                })
        }
        _ => None,
    };
    Ok(MessageSummary { kind, tool_name })
}

/// Reads a POST body as one JSON-RPC message or a batch.
pub fn inspect(body: &[u8]) -> Result<JsonRpcSummary, ProxyError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ProxyError::JsonParse("body is not UTF-8".to_owned()))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let items: Vec<&RawValue> =
            serde_json::from_str(text).map_err(|error| ProxyError::JsonParse(error.to_string()))?;
        if items.is_empty() {
            return Err(ProxyError::InvalidJsonRpc("a batch must not be empty"));
        }
        let messages = items
            .into_iter()
            .map(summarize)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JsonRpcSummary {
            batch: true,
            messages,
        })
    } else {
        let raw: &RawValue =
            serde_json::from_str(text).map_err(|error| ProxyError::JsonParse(error.to_string()))?;
        Ok(JsonRpcSummary {
            batch: false,
            messages: vec![summarize(raw)?],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_tool_call_names_its_method_tool_and_id() {
        let body = json!({
            "jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "search", "arguments": {"q": [1, 2, {"deep": true}]}}
        });
        let summary = inspect(body.to_string().as_bytes()).unwrap();
        assert_eq!(summary.methods(), ["tools/call"]);
        assert_eq!(summary.tool_names(), ["search"]);
        assert_eq!(summary.error_id(), json!(7));
    }

    #[test]
    fn notifications_responses_and_null_ids_are_told_apart() {
        let notification =
            inspect(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert_eq!(
            notification.messages[0].kind,
            MessageKind::Notification {
                method: "notifications/initialized".to_owned()
            }
        );
        assert_eq!(notification.error_id(), Value::Null);

        let response =
            inspect(br#"{"jsonrpc":"2.0","id":"s-1","result":{"action":"accept"}}"#).unwrap();
        assert_eq!(
            response.messages[0].kind,
            MessageKind::Response { id: json!("s-1") }
        );
        assert!(response.methods().is_empty());

        let null_id = inspect(br#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#).unwrap();
        assert!(matches!(
            null_id.messages[0].kind,
            MessageKind::Request { .. }
        ));
    }

    #[test]
    fn batches_are_summarised_message_by_message() {
        let body = json!([
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a"}},
            {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "b"}},
            {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}
        ]);
        let summary = inspect(body.to_string().as_bytes()).unwrap();
        assert!(summary.batch);
        assert_eq!(
            summary.methods(),
            [
                "tools/call",
                "notifications/progress",
                "tools/call",
                "tools/list"
            ]
        );
        assert_eq!(summary.tool_names(), ["a", "b"]);
        assert_eq!(summary.error_id(), Value::Null);
    }

    #[test]
    fn malformed_bodies_are_refused_with_the_right_error() {
        assert!(matches!(
            inspect(b"{not json"),
            Err(ProxyError::JsonParse(_))
        ));
        assert!(matches!(inspect(b""), Err(ProxyError::JsonParse(_))));
        assert!(matches!(
            inspect(&[0xff, 0xfe]),
            Err(ProxyError::JsonParse(_))
        ));
        assert!(matches!(inspect(b"[]"), Err(ProxyError::InvalidJsonRpc(_))));
        assert!(matches!(inspect(b"42"), Err(ProxyError::InvalidJsonRpc(_))));
        assert!(matches!(
            inspect(br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#),
            Err(ProxyError::InvalidJsonRpc(_))
        ));
        assert!(matches!(
            inspect(br#"{"jsonrpc":"2.0","id":{"a":1},"method":"x"}"#),
            Err(ProxyError::InvalidJsonRpc(_))
        ));
        assert!(matches!(
            inspect(br#"{"jsonrpc":"2.0","id":1}"#),
            Err(ProxyError::InvalidJsonRpc(_))
        ));
    }

    #[test]
    fn long_names_are_cut_on_a_character_boundary() {
        let name = "é".repeat(200);
        let body =
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name}});
        let summary = inspect(body.to_string().as_bytes()).unwrap();
        let tool = &summary.tool_names()[0];
        assert!(tool.len() <= MAX_NAME_LEN);
        assert!(tool.chars().all(|c| c == 'é'));
    }
}

//! `jsonrpc_inspect`: what the node reads from a POST body before forwarding it unchanged
//! (`portcullis_data_plane::proxy::jsonrpc::inspect`): batches, notifications, responses,
//! ids of every type, tool names, huge and deeply nested bodies.
//!
//! Besides "never a panic", an accepted body must be summarised the way a plain JSON reading
//! of it (`serde_json::Value`) would: same batch shape, same message kinds, methods and ids,
//! and a tool name only where `params.name` (or, for by-position params, the first one)
//! really is that string.

use portcullis_data_plane::proxy::error::ProxyError;
use portcullis_data_plane::proxy::jsonrpc::{JsonRpcSummary, MessageKind, inspect};
use serde_json::Value;

/// The longest method or tool name a summary keeps (the data plane's `MAX_NAME_LEN`).
pub const MAX_NAME_LEN: usize = 256;

pub fn fuzz(data: &[u8]) {
    check_body(data);
}

/// Inspects `body` and checks the summary against the body.
pub fn check_body(body: &[u8]) {
    match inspect(body) {
        Ok(summary) => check_summary(body, &summary),
        Err(ProxyError::JsonParse(_) | ProxyError::InvalidJsonRpc(_)) => {}
        Err(other) => panic!("inspect may only refuse a body as unparsable or invalid: {other:?}"),
    }
}

fn truncated(name: &str) -> &str {
    if name.len() <= MAX_NAME_LEN {
        return name;
    }
    let mut end = MAX_NAME_LEN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

fn check_summary(body: &[u8], summary: &JsonRpcSummary) {
    assert!(
        !summary.messages.is_empty(),
        "an accepted body has messages"
    );
    if !summary.batch {
        assert_eq!(summary.messages.len(), 1, "a single message is one message");
    }
    let mut requests_and_notifications = 0;
    for message in &summary.messages {
        match &message.kind {
            MessageKind::Request { id, method } => {
                requests_and_notifications += 1;
                assert!(
                    method.len() <= MAX_NAME_LEN,
                    "method kept whole: {method:?}"
                );
                assert!(
                    matches!(id, Value::String(_) | Value::Number(_) | Value::Null),
                    "request id of a forbidden type: {id}"
                );
                if message.tool_name.is_some() {
                    assert_eq!(method, "tools/call", "a tool name outside tools/call");
                }
            }
            MessageKind::Notification { method } => {
                requests_and_notifications += 1;
                assert!(
                    method.len() <= MAX_NAME_LEN,
                    "method kept whole: {method:?}"
                );
                assert!(message.tool_name.is_none(), "a notification has no tool");
            }
            MessageKind::Response { id } => {
                assert!(
                    matches!(id, Value::String(_) | Value::Number(_) | Value::Null),
                    "response id of a forbidden type: {id}"
                );
                assert!(message.tool_name.is_none(), "a response has no tool");
            }
        }
        if let Some(tool) = &message.tool_name {
            assert!(tool.len() <= MAX_NAME_LEN, "tool name kept whole: {tool:?}");
        }
    }
    assert_eq!(summary.methods().len(), requests_and_notifications);
    // The id an error echoes is the request's own only for a single request.
    match (summary.batch, summary.messages.as_slice()) {
        (false, [only]) if matches!(only.kind, MessageKind::Request { .. }) => {
            let MessageKind::Request { id, .. } = &only.kind else {
                unreachable!()
            };
            assert_eq!(&summary.error_id(), id);
        }
        _ => assert_eq!(summary.error_id(), Value::Null),
    }

    // A second, independent reading. Bodies nested deeper than serde_json's recursion limit
    // for `Value` cannot be read this way; the summary was still produced without a panic.
    let Ok(document) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let messages: Vec<&Value> = match &document {
        Value::Array(items) => {
            assert!(summary.batch, "an array body is a batch");
            items.iter().collect()
        }
        other => {
            assert!(!summary.batch, "a non-array body is not a batch");
            vec![other]
        }
    };
    assert_eq!(
        messages.len(),
        summary.messages.len(),
        "one summary per message"
    );
    for (value, message) in messages.into_iter().zip(&summary.messages) {
        let object = value.as_object().expect("an accepted message is an object");
        assert_eq!(object.get("jsonrpc"), Some(&Value::from("2.0")));
        let method = object.get("method").and_then(Value::as_str);
        let id = object.get("id");
        match (&message.kind, method, id) {
            (MessageKind::Request { id, method }, Some(read_method), Some(read_id)) => {
                assert_eq!(method, truncated(read_method));
                assert_eq!(id, read_id);
            }
            (MessageKind::Notification { method }, Some(read_method), None) => {
                assert_eq!(method, truncated(read_method));
            }
            (MessageKind::Response { id }, None, Some(read_id)) => {
                assert_eq!(id, read_id);
                assert!(
                    object.get("result").is_some_and(|result| !result.is_null())
                        || object.get("error").is_some_and(|error| !error.is_null()),
                    "a response carries a result or an error"
                );
            }
            (kind, method, id) => {
                panic!("summarised as {kind:?}, but the message has method {method:?}, id {id:?}")
            }
        }
        if let Some(tool) = &message.tool_name {
            // By-name params carry it as `name`; by-position params (which serde reads into
            // the same struct, as a serde-based upstream would) as their first element.
            let read_name = match object.get("params") {
                Some(Value::Object(params)) => params.get("name").and_then(Value::as_str),
                Some(Value::Array(params)) => params.first().and_then(Value::as_str),
                _ => None,
            };
            assert_eq!(
                Some(tool.as_str()),
                read_name.map(truncated),
                "the tool name is params.name"
            );
        }
    }
}

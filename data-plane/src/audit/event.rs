//! A request record as an audit event.
//!
//! Every field is bounded and cleaned here, so an event always fits a spool frame and the
//! control plane never refuses it: strings are cut (on a character boundary) to a per-field
//! limit and control characters become `?` (a server name comes from the URL path, tool
//! names from the request body).

use portcullis_proto::v1 as proto;
use uuid::Uuid;

use crate::record::RequestRecord;

/// The kind of a proxied call's event.
pub const KIND_MCP_REQUEST: &str = "mcp_request";
/// The kind of a call refused by agent authentication.
pub const KIND_AUTH_FAILURE: &str = "auth_failure";

const MAX_NAME_BYTES: usize = 128;
const MAX_IDENTITY_BYTES: usize = 256;
const MAX_LIST_BYTES: usize = 512;
const MAX_CODE_BYTES: usize = 64;

/// Cuts `text` to at most `max` bytes and replaces control characters.
pub fn bounded(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for character in text.chars() {
        let character = if character.is_control() && character != '\t' {
            '?'
        } else {
            character
        };
        if out.len() + character.len_utf8() > max {
            break;
        }
        out.push(character);
    }
    out
}

/// App auth kinds whose credential is the server's own, configured with it: the server
/// names the credential.
fn server_owned_credential(kind: &str) -> bool {
    matches!(kind, "api_key" | "bearer" | "basic" | "client_credentials")
}

fn micros(millis: u64) -> i64 {
    i64::try_from(millis.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// The audit event of one request. A request refused by agent authentication is an
/// `auth_failure` (its reason the rejection code), every other one an `mcp_request`.
/// The event id is a fresh uuid v7: made once, here, and kept through every redelivery.
pub fn from_record(record: &RequestRecord) -> proto::AuditEvent {
    let (kind, reason) = match (record.agent_auth_rejection, record.error_code) {
        (Some(rejection), _) => (KIND_AUTH_FAILURE, rejection),
        (None, Some(code)) => (KIND_MCP_REQUEST, code.as_str()),
        (None, None) => (KIND_MCP_REQUEST, ""),
    };
    let credential_kind = record.app_auth_kind.unwrap_or("");
    let credential_id = match &record.credential_id {
        Some(id) => bounded(id, MAX_IDENTITY_BYTES),
        None if server_owned_credential(credential_kind) => bounded(&record.server, MAX_NAME_BYTES),
        None => String::new(),
    };
    proto::AuditEvent {
        event_id: Uuid::now_v7().to_string(),
        time_unix_micros: micros(record.started_at_unix_ms).max(1),
        kind: kind.to_owned(),
        source: bounded(&record.node_id, MAX_NAME_BYTES),
        actor: bounded(&record.caller, MAX_IDENTITY_BYTES),
        actor_email: bounded(
            record.caller_email.as_deref().unwrap_or(""),
            MAX_IDENTITY_BYTES,
        ),
        server: bounded(&record.server, MAX_NAME_BYTES),
        mcp_method: bounded(&record.jsonrpc_methods.join(","), MAX_LIST_BYTES),
        tool: bounded(&record.tool_names.join(","), MAX_LIST_BYTES),
        outcome: record.outcome.as_str().to_owned(),
        http_status: u32::from(record.status),
        upstream_status: record.upstream_status.map(u32::from).unwrap_or(0),
        credential_kind: credential_kind.to_owned(),
        credential_id,
        caller_credential_forwarded: record.caller_credential_forwarded,
        caller_credential_stripped: record.caller_presented_credential
            && !record.caller_credential_forwarded,
        snapshot_version: record.snapshot_version.unwrap_or(0),
        latency_micros: record.total_micros,
        reason: bounded(reason, MAX_CODE_BYTES),
        summary: String::new(),
        request_id: record.request_id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prost::Message;

    use portcullis_shared::error::ErrorCode;

    use super::*;
    use crate::record::Outcome;

    /// Catches the record a builder hands over.
    struct Capture(std::sync::Mutex<Option<RequestRecord>>);

    impl crate::record::RecordSink for Capture {
        fn record(&self, record: RequestRecord) {
            *self.0.lock().unwrap() = Some(record);
        }
    }

    fn record() -> RequestRecord {
        let capture = Arc::new(Capture(std::sync::Mutex::new(None)));
        let mut builder = crate::record::RecordBuilder::start(
            capture.clone(),
            Arc::from("node-1"),
            Some(7),
            "github",
            &http::Method::POST,
        );
        let fields = builder.fields();
        fields.started_at_unix_ms = 1_700_000_000_000;
        fields.jsonrpc_methods = vec!["tools/call".to_owned()];
        fields.tool_names = vec!["list_prs".to_owned()];
        fields.caller = "alice".to_owned();
        fields.caller_email = Some("alice@example.com".to_owned());
        fields.caller_verified = true;
        fields.caller_presented_credential = true;
        fields.app_auth_kind = Some("bearer");
        fields.upstream_status = Some(200);
        builder.response_head(200, None);
        builder.finish(Outcome::Completed);
        let mut record = capture.0.lock().unwrap().take().unwrap();
        record.total_micros = 2345;
        record
    }

    #[test]
    fn a_completed_call_becomes_an_mcp_request() {
        let record = record();
        let event = from_record(&record);
        assert_eq!(event.kind, "mcp_request");
        assert_eq!(event.source, "node-1");
        assert_eq!(event.actor, "alice");
        assert_eq!(event.actor_email, "alice@example.com");
        assert_eq!(event.mcp_method, "tools/call");
        assert_eq!(event.tool, "list_prs");
        assert_eq!(event.credential_kind, "bearer");
        assert_eq!(event.credential_id, "github");
        assert!(event.caller_credential_stripped);
        assert!(!event.caller_credential_forwarded);
        assert_eq!(event.snapshot_version, 7);
        assert_eq!(event.latency_micros, 2345);
        assert_eq!(event.request_id, record.request_id.to_string());
        assert_eq!(event.time_unix_micros, 1_700_000_000_000_000);
        assert_eq!(
            Uuid::parse_str(&event.event_id).unwrap().get_version_num(),
            7
        );
        assert_ne!(event.event_id, event.request_id);
    }

    #[test]
    fn an_agent_auth_refusal_becomes_an_auth_failure_with_its_reason() {
        let mut record = record();
        record.agent_auth_rejection = Some("expired");
        record.error_code = Some(ErrorCode::Unauthenticated);
        record.caller = "anonymous".to_owned();
        record.outcome = Outcome::Rejected;
        let event = from_record(&record);
        assert_eq!(event.kind, "auth_failure");
        assert_eq!(event.reason, "expired");
        assert_eq!(event.outcome, "rejected");
    }

    #[test]
    fn fields_are_bounded_and_cleaned_so_any_event_fits_a_frame() {
        let mut record = record();
        record.server = "evil\nserver".repeat(100);
        record.tool_names = vec!["t\u{7}".repeat(5000); 50];
        record.jsonrpc_methods = vec!["é".repeat(5000); 50];
        record.caller = "x".repeat(100_000);
        record.caller_email = Some("y".repeat(100_000));
        record.credential_id = Some("z".repeat(100_000));
        let event = from_record(&record);
        assert!(!event.server.contains('\n'));
        assert!(!event.tool.contains('\u{7}'));
        assert!(event.mcp_method.len() <= MAX_LIST_BYTES);
        assert!(event.encode_to_vec().len() <= crate::audit::spool::MAX_PAYLOAD_BYTES);
    }
}

//! The audit trail over real gRPC: admin changes, node deliveries (at least once, stored
//! once), queries, roles, and tamper evidence on the real binary's files.

use std::time::Duration;

use portcullis_control_plane::audit;
use portcullis_proto::v1 as proto;
use portcullis_proto::v1::audit_ingest_client::AuditIngestClient;
use tonic::Code;

use crate::common::{
    ADMIN_TOKEN, AUDITOR_TOKEN, ChildControlPlane, InProcess, NODE_TOKEN, admin, authed,
    datadog_server,
};

fn request_event(
    id: u128,
    actor: &str,
    tool: &str,
    outcome: &str,
    micros: i64,
) -> proto::AuditEvent {
    proto::AuditEvent {
        event_id: uuid::Uuid::from_u128(id).to_string(),
        time_unix_micros: micros,
        kind: "mcp_request".into(),
        source: "node-1".into(),
        actor: actor.into(),
        server: "github".into(),
        mcp_method: "tools/call".into(),
        tool: tool.into(),
        outcome: outcome.into(),
        http_status: 200,
        credential_kind: "oauth_authorization".into(),
        credential_id: "github".into(),
        caller_credential_stripped: true,
        ..Default::default()
    }
}

async fn query(
    client: &mut proto::admin_service_client::AdminServiceClient<tonic::transport::Channel>,
    query: proto::AuditQuery,
) -> proto::AuditPage {
    client
        .query_audit(authed(AUDITOR_TOKEN, query))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn deliveries_are_stored_once_and_queried_by_filters() {
    let control_plane = InProcess::start().await;
    let mut ingest = AuditIngestClient::connect(control_plane.endpoint.clone())
        .await
        .unwrap();
    let batch = proto::AuditBatch {
        events: vec![
            request_event(1, "alice", "list_prs", "completed", 1_000),
            request_event(2, "bob", "list_prs", "completed", 2_000),
            request_event(3, "alice", "merge_pr", "rejected", 3_000),
        ],
    };
    let ack = ingest
        .deliver(authed(NODE_TOKEN, batch.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ack.stored, ack.duplicates), (3, 0));
    // The same batch again (a lost reply): nothing doubles.
    let ack = ingest
        .deliver(authed(NODE_TOKEN, batch))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ack.stored, ack.duplicates), (0, 3));
    // Admins cannot deliver; a bad event refuses the whole batch.
    let status = ingest
        .deliver(authed(ADMIN_TOKEN, proto::AuditBatch::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let mut bad = request_event(9, "mallory", "x", "completed", 9_000);
    bad.kind = "made_up".into();
    let status = ingest
        .deliver(authed(
            NODE_TOKEN,
            proto::AuditBatch {
                events: vec![request_event(8, "eve", "x", "completed", 8_000), bad],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let mut client = control_plane.client().await;
    let requests = |extra: proto::AuditQuery| proto::AuditQuery {
        kind: "mcp_request".into(),
        ..extra
    };
    let alice = query(
        &mut client,
        requests(proto::AuditQuery {
            actor: "alice".into(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(alice.records.len(), 2);
    let rejected = query(
        &mut client,
        requests(proto::AuditQuery {
            outcome: "rejected".into(),
            tool: "merge_pr".into(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(rejected.records.len(), 1);
    let window = query(
        &mut client,
        requests(proto::AuditQuery {
            from_unix_micros: 2_000,
            to_unix_micros: 3_000,
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(window.records.len(), 1);
    assert_eq!(window.records[0].event.as_ref().unwrap().actor, "bob");
    // Pagination.
    let first = query(
        &mut client,
        requests(proto::AuditQuery {
            limit: 2,
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(first.records.len(), 2);
    assert_ne!(first.next_after_sequence, 0);
    let second = query(
        &mut client,
        requests(proto::AuditQuery {
            after_sequence: first.next_after_sequence,
            limit: 2,
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(second.records.len(), 1);
    assert_eq!(second.next_after_sequence, 0);
    // Nodes cannot read the trail.
    let status = client
        .query_audit(authed(NODE_TOKEN, proto::AuditQuery::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn admin_changes_and_refused_calls_are_in_the_trail() {
    let control_plane = InProcess::start().await;
    let mut client = control_plane.client().await;
    client
        .create_server(admin(proto::CreateServerRequest {
            server: Some(datadog_server("datadog", "dd-secret-value")),
        }))
        .await
        .unwrap();
    let _ = client
        .create_server(authed(
            AUDITOR_TOKEN,
            proto::CreateServerRequest {
                server: Some(datadog_server("other", "k")),
            },
        ))
        .await
        .unwrap_err();
    // Both are recorded off the request path: poll until they are there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let changes = query(
            &mut client,
            proto::AuditQuery {
                kind: "admin_change".into(),
                actor: "ops".into(),
                ..Default::default()
            },
        )
        .await;
        let refusals = query(
            &mut client,
            proto::AuditQuery {
                kind: "auth_failure".into(),
                actor: "audit".into(),
                ..Default::default()
            },
        )
        .await;
        let registered = changes.records.iter().any(|record| {
            record
                .event
                .as_ref()
                .is_some_and(|event| event.summary.contains("registered server datadog"))
        });
        if registered && !refusals.records.is_empty() {
            let all = format!("{changes:?}{refusals:?}");
            assert!(!all.contains("dd-secret-value"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "audit records did not appear"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let verified = client
        .verify_audit(authed(AUDITOR_TOKEN, proto::VerifyAuditRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(verified.intact);
}

#[tokio::test]
async fn verify_finds_an_edited_and_a_deleted_record_in_the_real_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut control_plane = ChildControlPlane::start(dir.path(), &[]).await;
    let mut ingest = AuditIngestClient::connect(control_plane.endpoint.clone())
        .await
        .unwrap();
    let events: Vec<proto::AuditEvent> = (1..=10)
        .map(|id| request_event(id, "alice", "list_prs", "completed", id as i64 * 1000))
        .collect();
    ingest
        .deliver(authed(NODE_TOKEN, proto::AuditBatch { events }))
        .await
        .unwrap();
    let mut client = control_plane.client().await;
    let page = query(
        &mut client,
        proto::AuditQuery {
            kind: "mcp_request".into(),
            ..Default::default()
        },
    )
    .await;
    let edited_sequence = page.records[2].sequence;
    let deleted_sequence = page.records[6].sequence;
    control_plane.stop().await;

    // Tamper with the files while the control plane is down, as an intruder would.
    {
        use prost::Message;
        let db = sled::open(dir.path().join("data")).unwrap();
        let tree = db.open_tree(audit::BLOCKS_TREE).unwrap();
        for (sequence, edit) in [(edited_sequence, true), (deleted_sequence, false)] {
            let (key, value) = tree
                .range(..=sequence.to_be_bytes())
                .next_back()
                .unwrap()
                .unwrap();
            let (mut records, damage) = audit::decode_block(&value);
            assert_eq!(damage, None);
            let index = records
                .iter()
                .position(|record| record.sequence == sequence)
                .unwrap();
            if edit {
                let mut event = proto::AuditEvent::decode(records[index].event.as_slice()).unwrap();
                event.actor = "mallory".into();
                records[index].event = event.encode_to_vec();
            } else {
                records.remove(index);
            }
            tree.insert(key, audit::encode_block(&records)).unwrap();
        }
        db.flush().unwrap();
    }

    let control_plane = ChildControlPlane::start(dir.path(), &[]).await;
    let mut client = control_plane.client().await;
    let report = client
        .verify_audit(authed(AUDITOR_TOKEN, proto::VerifyAuditRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(!report.intact);
    let found: Vec<(u64, &str)> = report
        .problems
        .iter()
        .map(|problem| (problem.sequence, problem.kind.as_str()))
        .collect();
    assert!(found.contains(&(edited_sequence, "edited")), "{found:?}");
    assert!(found.contains(&(deleted_sequence, "missing")), "{found:?}");
    // The CLI reports it with its own exit code.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portcullisctl"))
        .args(["--endpoint", &control_plane.endpoint, "audit", "verify"])
        .env("PORTCULLIS_TOKEN", AUDITOR_TOKEN)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(7), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("BROKEN"), "{stdout}");
    assert!(
        stdout.contains(&format!("record {edited_sequence}: edited")),
        "{stdout}"
    );
}

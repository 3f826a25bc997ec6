//! The event store suite, through the engine: append, optimistic concurrency, replay equals
//! the live state, restarts keep everything, history and state at a revision.

use portcullis_control_plane::commands::{Command, CommandError, OrgValue};
use portcullis_control_plane::engine::EngineOptions;
use portcullis_control_plane::events::{AggregateKey, AggregateKind, EventPayload};
use portcullis_control_plane::secrets::SecretError;
use portcullis_shared::config::{AppAuth, McpServer};
use portcullis_shared::names::{CatalogId, ServerName, UserId};
use portcullis_shared::secret::{SecretInput, SecretValue};

use crate::common::{bearer_auth, datadog_server, open_engine};

fn server(name: &str, key: &str) -> McpServer<SecretInput> {
    McpServer::try_from(datadog_server(name, key)).unwrap()
}

fn credential(id: &str, value: Option<&str>) -> Command {
    Command::PutCredential {
        id: CatalogId::parse(id).unwrap(),
        description: format!("credential {id}"),
        org_value: match value {
            Some(value) => OrgValue::Set(SecretValue::new(value)),
            None => OrgValue::Keep,
        },
        expected_revision: None,
    }
}

/// Runs a deterministic mix of commands touching every event type.
async fn write_mixed_history(engine: &portcullis_control_plane::engine::Engine, rounds: usize) {
    for round in 0..rounds {
        let name = format!("server-{}", round % 7);
        let exists = engine
            .state()
            .servers
            .contains_key(&ServerName::parse(&name).unwrap());
        let command = if exists {
            Command::UpdateServer {
                server: server(&name, &format!("key-{round}")),
                expected_revision: None,
            }
        } else {
            Command::CreateServer {
                server: server(&name, &format!("key-{round}")),
            }
        };
        engine.execute("alice", vec![command], None).await.unwrap();
        engine
            .execute(
                "bob",
                vec![credential(
                    &format!("cred-{}", round % 3),
                    Some(&format!("v{round}")),
                )],
                None,
            )
            .await
            .unwrap();
        engine
            .execute(
                "bob",
                vec![Command::SetUserCredential {
                    credential_id: CatalogId::parse(&format!("cred-{}", round % 3)).unwrap(),
                    user: UserId::parse(&format!("user{}@example.com", round % 5)).unwrap(),
                    value: SecretValue::new(format!("pat-{round}")),
                    expected_revision: None,
                }],
                None,
            )
            .await
            .unwrap();
        if round % 4 == 3 {
            engine
                .execute(
                    "alice",
                    vec![Command::DeleteServer {
                        name: ServerName::parse(&name).unwrap(),
                        expected_revision: None,
                    }],
                    None,
                )
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn append_assigns_sequences_and_aggregate_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(dir.path(), EngineOptions::default());
    let first = engine
        .execute(
            "alice",
            vec![Command::CreateServer {
                server: server("datadog", "k1"),
            }],
            None,
        )
        .await
        .unwrap();
    assert_eq!((first.revision, first.aggregate_revision), (1, 1));
    let second = engine
        .execute("alice", vec![credential("dd", Some("x"))], None)
        .await
        .unwrap();
    assert_eq!((second.revision, second.aggregate_revision), (2, 1));
    let events = engine.store().read_events(0, 10).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].sequence, 1);
    assert_eq!(events[0].actor, "alice");
    assert_eq!(events[0].id.get_version_num(), 7, "event ids are uuid v7");
    assert!(matches!(
        events[0].payload,
        EventPayload::ServerRegistered { .. }
    ));
}

#[tokio::test]
async fn stale_expected_revision_is_refused_and_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(dir.path(), EngineOptions::default());
    engine
        .execute(
            "alice",
            vec![Command::CreateServer {
                server: server("datadog", "k1"),
            }],
            None,
        )
        .await
        .unwrap();
    let update = |expected| Command::UpdateServer {
        server: server("datadog", "k2"),
        expected_revision: Some(expected),
    };
    engine
        .execute("alice", vec![update(1)], None)
        .await
        .unwrap();
    let error = engine
        .execute("bob", vec![update(1)], None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            CommandError::RevisionConflict {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(engine.state().revision, 2);
    assert_eq!(engine.store().last_sequence().unwrap(), 2);
}

#[tokio::test]
async fn concurrent_writers_with_the_same_expected_revision_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let engine = std::sync::Arc::new(open_engine(dir.path(), EngineOptions::default()));
    engine
        .execute("alice", vec![credential("shared", Some("v0"))], None)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for writer in 0..16 {
        let engine = engine.clone();
        tasks.push(tokio::spawn(async move {
            engine
                .execute(
                    &format!("writer-{writer}"),
                    vec![Command::PutCredential {
                        id: CatalogId::parse("shared").unwrap(),
                        description: format!("by {writer}"),
                        org_value: OrgValue::Keep,
                        expected_revision: Some(1),
                    }],
                    None,
                )
                .await
        }));
    }
    let mut successes = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => successes += 1,
            Err(CommandError::RevisionConflict { .. }) => {}
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert_eq!(successes, 1);
    assert_eq!(engine.state().revision, 2);
}

#[tokio::test]
async fn a_failing_command_in_a_batch_appends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(dir.path(), EngineOptions::default());
    let error = engine
        .execute(
            "alice",
            vec![
                credential("ok", Some("v")),
                Command::DeleteServer {
                    name: ServerName::parse("missing").unwrap(),
                    expected_revision: None,
                },
            ],
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(error, CommandError::NotFound { .. }), "{error}");
    assert_eq!(engine.state().revision, 0);
    assert!(engine.store().read_events(0, 10).unwrap().is_empty());
}

#[tokio::test]
async fn replay_equals_live_state_with_and_without_state_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(
        dir.path(),
        EngineOptions {
            state_snapshot_every: 7,
            state_snapshots_kept: 2,
        },
    );
    write_mixed_history(&engine, 40).await;
    let live = engine.state();
    assert!(live.revision > 100);
    // From the newest state snapshot plus the tail...
    let replayed = engine.store().load_state(None).unwrap();
    assert_eq!(replayed, *live);
    assert!(engine.store().latest_state_snapshot_revision().unwrap() > 0);
    // ...and from the first event, in a fresh data directory holding only the log.
    let fresh = tempfile::tempdir().unwrap();
    let full = {
        let copy = open_engine(fresh.path(), EngineOptions::default());
        let store = copy.store().clone();
        let batch = portcullis_control_plane::store::AppendBatch {
            events: engine.store().read_events(0, usize::MAX).unwrap(),
            ..Default::default()
        };
        store.append(&batch).unwrap();
        store.load_state(None).unwrap()
    };
    assert_eq!(full, *live);
}

#[tokio::test]
async fn restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let engine = open_engine(dir.path(), EngineOptions::default());
        write_mixed_history(&engine, 12).await;
        let state = engine.state();
        tokio::task::spawn_blocking(move || engine.close())
            .await
            .unwrap();
        state
    };
    let engine = open_engine(dir.path(), EngineOptions::default());
    assert_eq!(*engine.state(), *before);
    // The log continues where it stopped.
    let next = engine
        .execute("alice", vec![credential("after-restart", Some("v"))], None)
        .await
        .unwrap();
    assert_eq!(next.revision, before.revision + 1);
    // Secrets written before the restart still decrypt.
    let server = engine.state().servers.values().next().cloned().unwrap();
    let AppAuth::ApiKey { key_value, .. } = &server.app_auth else {
        panic!("expected an api key");
    };
    assert!(engine.secrets().reveal(key_value).is_ok());
}

#[tokio::test]
async fn history_and_state_at_a_revision() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(dir.path(), EngineOptions::default());
    engine
        .execute(
            "alice",
            vec![Command::CreateServer {
                server: server("datadog", "k1"),
            }],
            None,
        )
        .await
        .unwrap();
    engine
        .execute("bob", vec![credential("other", Some("x"))], None)
        .await
        .unwrap();
    engine
        .execute(
            "carol",
            vec![Command::SetAppAuth {
                server: ServerName::parse("datadog").unwrap(),
                app_auth: AppAuth::try_from(bearer_auth("token-2").unwrap()).unwrap(),
                expected_revision: Some(1),
            }],
            None,
        )
        .await
        .unwrap();
    let key = AggregateKey {
        kind: AggregateKind::Server,
        id: "datadog".into(),
    };
    let history = engine.store().history(&key, 0, 100).unwrap();
    let actors: Vec<&str> = history.iter().map(|e| e.actor.as_str()).collect();
    assert_eq!(actors, ["alice", "carol"]);
    assert_eq!(history[1].aggregate_revision, 2);
    let at_one = engine.state_at(1).await.unwrap();
    let name = ServerName::parse("datadog").unwrap();
    assert_eq!(at_one.servers[&name].app_auth.kind_name(), "api_key");
    assert!(at_one.credentials.is_empty());
    assert_eq!(engine.state().servers[&name].app_auth.kind_name(), "bearer");
}

#[tokio::test]
async fn replaced_and_deleted_secrets_are_crypto_shredded() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open_engine(dir.path(), EngineOptions::default());
    engine
        .execute(
            "alice",
            vec![Command::CreateServer {
                server: server("datadog", "first-key"),
            }],
            None,
        )
        .await
        .unwrap();
    let name = ServerName::parse("datadog").unwrap();
    let AppAuth::ApiKey {
        key_value: first, ..
    } = engine.state().servers[&name].app_auth.clone()
    else {
        panic!("expected an api key");
    };
    // Same value again: the stored secret is reused, nothing is shredded.
    engine
        .execute(
            "alice",
            vec![Command::UpdateServer {
                server: server("datadog", "first-key"),
                expected_revision: None,
            }],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        engine.secrets().reveal(&first).unwrap().expose(),
        "first-key"
    );
    // A new value: the old data key is destroyed; the log still holds the ciphertext.
    engine
        .execute(
            "alice",
            vec![Command::UpdateServer {
                server: server("datadog", "second-key"),
                expected_revision: None,
            }],
            None,
        )
        .await
        .unwrap();
    assert!(matches!(
        engine.secrets().reveal(&first),
        Err(SecretError::Shredded(_))
    ));
    let AppAuth::ApiKey {
        key_value: second, ..
    } = engine.state().servers[&name].app_auth.clone()
    else {
        panic!("expected an api key");
    };
    engine
        .execute(
            "alice",
            vec![Command::DeleteServer {
                name: name.clone(),
                expected_revision: None,
            }],
            None,
        )
        .await
        .unwrap();
    assert!(matches!(
        engine.secrets().reveal(&second),
        Err(SecretError::Shredded(_))
    ));
    assert_eq!(engine.store().read_events(0, 100).unwrap().len(), 4);
}

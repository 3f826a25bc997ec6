//! Durability of the real binary: kill -9 during a burst of writes loses nothing that was
//! acknowledged, and the log stays readable.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use portcullis_proto::v1 as proto;

use crate::common::{ChildControlPlane, admin, plaintext};

#[tokio::test]
async fn kill_9_during_a_burst_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut control_plane =
        ChildControlPlane::start(dir.path(), &["--state-snapshot-every", "50"]).await;
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let (enough_tx, mut enough_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut writers = Vec::new();
    for writer in 0..8 {
        let mut client = control_plane.client().await;
        let acknowledged = acknowledged.clone();
        let enough = enough_tx.clone();
        writers.push(tokio::spawn(async move {
            for index in 0.. {
                let id = format!("w{writer}-{index}");
                let result = client
                    .put_credential(admin(proto::PutCredentialRequest {
                        id: id.clone(),
                        description: "burst".into(),
                        org_value: plaintext(&format!("value-{id}")),
                        clear_org_value: false,
                        expected_revision: None,
                    }))
                    .await;
                match result {
                    Ok(_) => {
                        let count = {
                            let mut acknowledged = acknowledged.lock().unwrap();
                            acknowledged.insert(id);
                            acknowledged.len()
                        };
                        if count == 300 {
                            let _ = enough.try_send(());
                        }
                    }
                    // The process was killed: stop this writer.
                    Err(_) => break,
                }
            }
        }));
    }
    drop(enough_tx);
    enough_rx
        .recv()
        .await
        .expect("writers stopped before 300 acknowledgements");
    control_plane.kill_9().await;
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 300);

    let restarted = ChildControlPlane::start(dir.path(), &[]).await;
    let mut client = restarted.client().await;
    let state = client
        .get_state(admin(proto::GetStateRequest { at_revision: None }))
        .await
        .unwrap()
        .into_inner();
    let present: BTreeSet<String> = state.credentials.iter().map(|c| c.id.clone()).collect();
    let lost: Vec<&String> = acknowledged.difference(&present).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    // The whole log reads back, in order, with no gaps.
    let mut after = 0;
    let mut count = 0;
    loop {
        let page = client
            .list_events(admin(proto::ListEventsRequest {
                after_sequence: after,
                limit: 1000,
            }))
            .await
            .unwrap()
            .into_inner();
        for event in &page.events {
            count += 1;
            assert_eq!(event.sequence, count, "the log has a gap");
        }
        if page.next_after_sequence == 0 {
            break;
        }
        after = page.next_after_sequence;
    }
    assert_eq!(count, state.revision);
    assert!(count >= acknowledged.len() as u64);
    // And it accepts new writes after recovery.
    client
        .put_credential(admin(proto::PutCredentialRequest {
            id: "after-crash".into(),
            description: String::new(),
            org_value: plaintext("v"),
            clear_org_value: false,
            expected_revision: None,
        }))
        .await
        .unwrap();
}

//! `stored_event`: events of the configuration log decoded from arbitrary JSON
//! (`portcullis_control_plane::events::StoredEvent`, as `store.rs` reads them), described,
//! and applied to the projection (`state::State::apply`) in order.
//!
//! The input is a stream of JSON values; each one that decodes is an event. Nothing may
//! panic. A decoded event serializes back to the same event. The projection applies an
//! event fully or not at all (a refused event leaves the state as it was), and the state it
//! reaches can be persisted as a state snapshot and read back unchanged.

use portcullis_control_plane::events::StoredEvent;
use portcullis_control_plane::state::{State, StoredState};

/// At most this many events per input.
const MAX_EVENTS: usize = 64;

pub fn fuzz(data: &[u8]) {
    // As the store reads one record.
    if let Ok(event) = serde_json::from_slice::<StoredEvent>(data) {
        check_round_trip(&event);
    }
    let events: Vec<StoredEvent> = serde_json::Deserializer::from_slice(data)
        .into_iter::<StoredEvent>()
        .take(MAX_EVENTS)
        .map_while(Result::ok)
        .collect();
    check_events(&events);
}

/// The bytes `fuzz` reads as these events: one JSON document per line.
pub fn encode(events: &[StoredEvent]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for event in events {
        serde_json::to_writer(&mut bytes, event).expect("an event serializes");
        bytes.push(b'\n');
    }
    bytes
}

pub fn check_round_trip(event: &StoredEvent) {
    let json = serde_json::to_string(event).expect("a decoded event serializes");
    let back: StoredEvent = serde_json::from_str(&json)
        .unwrap_or_else(|error| panic!("{error}: a decoded event does not read back: {json}"));
    assert_eq!(&back, event, "JSON round trip changed the event");
}

/// Describes and applies `events` in order to an empty state.
pub fn check_events(events: &[StoredEvent]) {
    let mut state = State::default();
    for stored in events {
        check_round_trip(stored);
        assert_eq!(stored.schema_version(), 1);
        let mut event = stored.clone().into_current();
        let summary = event.payload.summary();
        assert!(!summary.is_empty());
        assert!(!event.payload.type_name().is_empty());

        // As stored: refused unless it carries the next sequence number.
        apply_checked(&mut state, &event);
        // Renumbered, so the payload itself is applied whatever the fuzzer numbered it.
        event.sequence = state.revision + 1;
        apply_checked(&mut state, &event);
    }
    let bytes = serde_json::to_vec(&StoredState::V1(state.clone()))
        .unwrap_or_else(|error| panic!("a projected state cannot be persisted: {error}"));
    let StoredState::V1(back) = serde_json::from_slice::<StoredState>(&bytes)
        .unwrap_or_else(|error| panic!("a persisted state does not read back: {error}"));
    assert_eq!(back, state, "a state snapshot changed the state");
}

fn apply_checked(state: &mut State, event: &portcullis_control_plane::events::Event) {
    let before = state.clone();
    match state.apply(event) {
        Ok(()) => {
            assert_eq!(state.revision, event.sequence);
            assert_eq!(
                state.aggregate_revision(&event.aggregate),
                event.aggregate_revision
            );
            if event.payload.affects_snapshot() {
                assert_eq!(state.snapshot_revision, event.sequence);
            }
        }
        Err(error) => {
            assert_eq!(error.sequence, event.sequence);
            assert_eq!(state, &before, "a refused event changed the state: {error}");
        }
    }
}

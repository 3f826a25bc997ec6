//! Fuzz targets for the gateway's parsers and validators.
//!
//! Each target is a plain function from bytes to nothing that panics when an invariant
//! breaks. The cargo-fuzz crate in `tests/fuzz/` wraps each one in a one-line
//! `fuzz_target!`, and the stable tests (`tests/fuzz_regressions.rs`) run the same functions
//! over the committed corpus and regressions, and over `proptest` inputs. So a crash found
//! on nightly replays on stable, and the invariants are written once.
//!
//! Targets that need structure (header maps, token claims, event batches) read it from the
//! bytes with [`arbitrary::Unstructured`]; each also exposes the structured check itself, so
//! property tests can generate the structure directly.
//!
//! | target | what it feeds | what must hold |
//! |---|---|---|
//! | `jsonrpc_inspect` | request bodies | never a panic; the summary agrees with a plain JSON reading |
//! | `jwt_token` | bearer tokens, half of them signed by a key of the fixed JWKS | the validator and the step-by-step check agree; accepted claims satisfy the rules |
//! | `jwks_parse` | JWKS documents | the node's key set and the shared check never panic; counts add up; what the control plane accepts a node uses whole |
//! | `header_firewall` | header maps and restricted patterns | credentials, hop-by-hop and restricted headers never pass; nothing else is dropped |
//! | `header_template` | templates and claim values | parse and render never panic; a rendered value has no CR, LF or NUL |
//! | `config_proto` | `McpServer`, `ConfigState`, `Snapshot` as protobuf | conversions never panic; accepted values round-trip; nodes compile accepted servers |
//! | `stored_event` | stored events as JSON | decoding, summaries and the projection never panic; events and states round-trip |
//! | `audit_record` | request records, audit events and stored audit records | a node's event fits a spool frame and validates; append, query and verify never panic; a clean trail verifies |

pub mod audit;
pub mod config;
pub mod events;
pub mod headers;
pub mod jsonrpc;
pub mod jwks;
pub mod jwt;
pub mod seeds;
pub mod template;

/// A fuzz target: bytes in, a panic when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target by name. The name is the cargo-fuzz binary, and the folder of its corpus
/// (`tests/fuzz/corpus/<name>/`) and regressions (`tests/fuzz/regressions/<name>/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("jsonrpc_inspect", jsonrpc::fuzz),
    ("jwt_token", jwt::fuzz),
    ("jwks_parse", jwks::fuzz),
    ("header_firewall", headers::fuzz),
    ("header_template", template::fuzz),
    ("config_proto", config::fuzz),
    ("stored_event", events::fuzz),
    ("audit_record", audit::fuzz),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS
        .iter()
        .find(|(target_name, _)| *target_name == name)
        .map(|(_, target)| *target)
}

/// Picks one of `choices` from the fuzzer's bytes (the first when they run out).
pub(crate) fn pick<'a, T>(input: &mut arbitrary::Unstructured<'_>, choices: &'a [T]) -> &'a T {
    input.choose(choices).unwrap_or(&choices[0])
}

/// A string from the fuzzer's bytes, at most `max_len` bytes long, cut on a character
/// boundary. Never fails: exhausted input gives an empty string.
pub(crate) fn bounded_string(input: &mut arbitrary::Unstructured<'_>, max_len: usize) -> String {
    let mut text: String = input.arbitrary().unwrap_or_default();
    if text.len() > max_len {
        let mut end = max_len;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

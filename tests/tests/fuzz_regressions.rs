//! The fuzz targets on stable (`portcullis_tests::fuzz`): every committed corpus and
//! regression input replayed, the seeds, and bounded property tests per target. Needs no
//! nightly toolchain and no processes; `tests/fuzz/run.sh` falls back to these when cargo
//! fuzz cannot run.
//!
//! `PORTCULLIS_FUZZ_WRITE_SEEDS=1` makes `seeds_pass_their_targets` (re)write the seed files
//! of the corpus (`tests/fuzz/run.sh seeds` does that).

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use portcullis_proto::v1 as proto;
use portcullis_tests::fuzz::{
    self, audit, config, events, headers, jsonrpc, jwks, jwt, seeds, template,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use serde_json::{Map, Value, json};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Runs `target` on `input`, naming the input when it panics.
fn run_named(target_name: &str, target: fuzz::Target, label: &str, input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
        panic!(
            "{target_name} fails on {label}; reproduce with \
             `cargo fuzz run --fuzz-dir tests/fuzz {target_name} <file>` or this test"
        );
    }
}

/// Every file under `folder/<target>/`, with the target's name.
fn committed_inputs(folder: &str) -> Vec<(String, PathBuf)> {
    let root = fuzz_dir().join(folder);
    let mut found = Vec::new();
    let Ok(targets) = std::fs::read_dir(&root) else {
        return found;
    };
    for target in targets {
        let target = target.expect("a readable folder");
        let name = target.file_name().to_string_lossy().into_owned();
        assert!(
            fuzz::target(&name).is_some(),
            "{}: no fuzz target is called {name}",
            root.display()
        );
        for file in std::fs::read_dir(target.path()).expect("a readable folder") {
            let path = file.expect("a readable file").path();
            if path.is_file() {
                found.push((name.clone(), path));
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_committed_regression_and_corpus_input_passes() {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for folder in ["regressions", "corpus"] {
        for (name, path) in committed_inputs(folder) {
            let input = std::fs::read(&path).expect("a readable input");
            let target = fuzz::target(&name).expect("checked above");
            run_named(&name, target, &path.display().to_string(), &input);
            *counts.entry(name).or_default() += 1;
        }
    }
    for (name, _) in fuzz::TARGETS {
        assert!(
            counts.get(*name).copied().unwrap_or(0) > 0,
            "the corpus of {name} is empty"
        );
    }
}

#[test]
fn seeds_pass_their_targets() {
    let all = seeds::all();
    let write = std::env::var_os("PORTCULLIS_FUZZ_WRITE_SEEDS").is_some_and(|value| value == "1");
    if write {
        for (name, _) in fuzz::TARGETS {
            let folder = fuzz_dir().join("corpus").join(name);
            if let Ok(entries) = std::fs::read_dir(&folder) {
                for entry in entries {
                    let path = entry.expect("a readable entry").path();
                    if path
                        .file_name()
                        .is_some_and(|file| file.to_string_lossy().starts_with("seed-"))
                    {
                        std::fs::remove_file(path).expect("an old seed is removed");
                    }
                }
            }
        }
    }
    for seed in &all {
        let target = fuzz::target(seed.target).expect("seeds name real targets");
        run_named(seed.target, target, &seed.name, &seed.bytes);
        if write {
            let folder = fuzz_dir().join("corpus").join(seed.target);
            std::fs::create_dir_all(&folder).expect("the corpus folder is created");
            std::fs::write(folder.join(&seed.name), &seed.bytes).expect("a seed is written");
        }
    }
    for (name, _) in fuzz::TARGETS {
        assert!(
            all.iter().any(|seed| seed.target == *name),
            "no seed for {name}"
        );
    }
}

#[test]
fn deeply_nested_bodies_do_not_overflow_the_stack() {
    for depth in [127, 128, 129, 10_000, 1_000_000] {
        let array = "[".repeat(depth) + &"]".repeat(depth);
        jsonrpc::check_body(array.as_bytes());
        let object = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"x","arguments":{}}}}}"#,
            "{\"a\":".repeat(depth) + "1" + &"}".repeat(depth)
        );
        jsonrpc::check_body(object.as_bytes());
    }
}

/// Found by `jwks_parse` and `config_proto`: the control plane accepted JWKS documents of
/// which a node can use no key (an RSA key with an empty or short modulus, an encryption
/// key, `key_ops` without `verify`), stored the server, and every node then refused every
/// snapshot holding it. The inputs are in `tests/fuzz/regressions/jwks_parse/`.
#[test]
fn the_control_plane_refuses_a_jwks_nodes_cannot_use() {
    let fixture: Value = serde_json::from_str(&jwt::fixture().jwks).unwrap();
    let with = |index: usize, field: &str, value: Value| {
        let mut key = fixture["keys"][index].clone();
        key[field] = value;
        json!({"keys": [key]}).to_string()
    };
    for document in [
        json!({"keys": [{"kty": "RSA", "kid": "weak", "e": "AQAB", "n": ""}]}).to_string(),
        with(1, "use", json!("enc")),
        with(0, "key_ops", json!(["sign"])),
        with(3, "alg", json!("ES256")),
        json!({"keys": vec![fixture["keys"][0].clone(); 65]}).to_string(),
    ] {
        assert!(
            portcullis_data_plane::jwt::keys::KeySet::parse(document.as_bytes())
                .map_or(true, |parsed| !parsed.skipped.is_empty()),
            "nodes use every key of {document}"
        );
        assert!(
            portcullis_shared::convert::check_jwks_json(&document).is_err(),
            "the control plane accepts {document}"
        );
        jwks::check_document(document.as_bytes());
    }
    assert!(portcullis_shared::convert::check_jwks_json(&jwt::fixture().jwks).is_ok());
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        // Failures are reported with the input; the fuzz corpus is where inputs are kept.
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------
// JSON-RPC bodies.

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |number| number.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{0,5}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn jsonrpc_message() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just(Some("2.0")), Just(Some("1.0")), Just(None)],
        prop::option::of(prop_oneof![
            json_leaf(),
            json_value(),
            Just(json!(u64::MAX)),
            Just(json!(-1.5e300))
        ]),
        prop::option::of(prop_oneof![
            Just("tools/call".to_owned()),
            Just("initialize".to_owned()),
            Just("notifications/progress".to_owned()),
            ".{0,300}",
        ]),
        prop::option::of(prop_oneof![
            json_value(),
            (
                prop_oneof![json_leaf(), ".{0,300}".prop_map(Value::from)],
                json_value()
            )
                .prop_map(|(name, arguments)| json!({"name": name, "arguments": arguments})),
        ]),
        prop::option::of(json_value()),
        prop::option::of(json_value()),
    )
        .prop_map(|(version, id, method, params, result, error)| {
            let mut message = Map::new();
            let mut set = |field: &str, value: Option<Value>| {
                if let Some(value) = value {
                    message.insert(field.to_owned(), value);
                }
            };
            set("jsonrpc", version.map(Value::from));
            set("id", id);
            set("method", method.map(Value::from));
            set("params", params);
            set("result", result);
            set("error", error);
            Value::Object(message)
        })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn jsonrpc_bodies_are_summarised_as_they_read(
        messages in prop::collection::vec(jsonrpc_message(), 0..5),
        batch in any::<bool>(),
        padding in "[ \t\r\n]{0,3}",
    ) {
        let body = match (batch, messages.first()) {
            (false, Some(message)) => message.to_string(),
            _ => Value::Array(messages).to_string(),
        };
        jsonrpc::check_body(format!("{padding}{body}{padding}").as_bytes());
    }

    #[test]
    fn jsonrpc_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
        jsonrpc::check_body(&body);
    }
}

// ---------------------------------------------------------------------------------------
// Tokens and JWKS documents.

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn built_tokens_are_accepted_exactly_when_valid(choices in prop::collection::vec(any::<u8>(), 0..48)) {
        let mut input = vec![1];
        input.extend(choices);
        jwt::fuzz(&input);
    }

    #[test]
    fn raw_tokens_never_break_validation(
        parts in prop::collection::vec("[A-Za-z0-9_=+/-]{0,40}", 0..5),
        separator in prop_oneof![Just("."), Just(".."), Just(" ")],
    ) {
        jwt::check_token(&parts.join(separator), None);
    }
}

fn base64url_bytes(lengths: std::ops::Range<usize>) -> impl Strategy<Value = Value> {
    use base64::Engine;
    prop::collection::vec(any::<u8>(), lengths).prop_map(|bytes| {
        Value::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    })
}

fn jwk() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just("RSA"), Just("EC"), Just("OKP"), Just("oct"), Just("")],
        prop_oneof![Just("P-256"), Just("P-384"), Just("P-521"), Just("Ed25519"), Just("X25519")],
        prop_oneof![base64url_bytes(0..4), base64url_bytes(31..34), base64url_bytes(47..50), base64url_bytes(127..129), base64url_bytes(255..258)],
        prop_oneof![base64url_bytes(0..4), base64url_bytes(31..34), Just(Value::from("AQAB"))],
        prop::option::of(prop_oneof![Just("RS256"), Just("ES256"), Just("EdDSA"), Just("HS256"), Just("RSA-OAEP"), Just("none")]),
        prop::option::of(prop_oneof![Just("sig"), Just("enc"), Just("other")]),
        prop::option::of(prop_oneof![Just(json!(["verify"])), Just(json!(["sign"])), Just(json!("verify"))]),
        prop::option::of("[a-z0-9-]{0,8}"),
    )
        .prop_map(|(kty, crv, x, y, alg, key_use, key_ops, kid)| {
            let mut key = json!({"kty": kty, "crv": crv, "x": x.clone(), "y": y.clone(), "n": x, "e": y, "k": "c2VjcmV0"});
            if let Some(alg) = alg {
                key["alg"] = alg.into();
            }
            if let Some(key_use) = key_use {
                key["use"] = key_use.into();
            }
            if let Some(key_ops) = key_ops {
                key["key_ops"] = key_ops;
            }
            if let Some(kid) = kid {
                key["kid"] = kid.into();
            }
            key
        })
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn jwks_documents_never_break_either_reader(keys in prop::collection::vec(jwk(), 0..5)) {
        jwks::check_document(json!({"keys": keys}).to_string().as_bytes());
    }

    #[test]
    fn jwks_with_a_real_key_among_others(keys in prop::collection::vec(jwk(), 0..3), position in 0..3usize) {
        let fixture: Value = serde_json::from_str(&jwt::fixture().jwks).unwrap();
        let mut keys = keys;
        let real = fixture["keys"][position % 4].clone();
        keys.insert(position.min(keys.len()), real);
        jwks::check_document(json!({"keys": keys}).to_string().as_bytes());
    }
}

// ---------------------------------------------------------------------------------------
// Header globs and firewalls.

const NAMES: &[&str] = &[
    "authorization",
    "cookie",
    "proxy-authorization",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "expect",
    "mcp-session-id",
    "accept",
    "x-internal-user",
    "x-debug",
    "x-api-key",
    "set-cookie",
    "www-authenticate",
    "proxy-connection",
];

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(NAMES).prop_map(str::to_owned),
        "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}",
        "[ -~]{0,6}",
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[ -~\t]{0,16}".prop_map(String::into_bytes),
        prop::collection::vec(header_name(), 0..4).prop_map(|names| names.join(", ").into_bytes()),
        prop::collection::vec(any::<u8>(), 0..8),
    ]
}

fn header_pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(
            &[
                "x-internal-*",
                "*",
                "?",
                "x-?",
                "*-key",
                "mcp-*",
                "X-DEBUG",
                "*a*b"
            ][..]
        )
        .prop_map(str::to_owned),
        "[a-zA-Z0-9*?-]{0,10}",
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn globs_agree_with_the_reference(pattern in "[ab*?-]{0,10}", name in "[abAB-]{0,12}") {
        headers::check_glob(&pattern, &name);
    }

    #[test]
    fn the_firewall_keeps_credentials_and_restricted_headers_back(
        sent in prop::collection::vec((header_name(), header_value()), 0..16),
        patterns in prop::collection::vec(header_pattern(), 0..4),
    ) {
        headers::fuzz(&headers::encode(&sent, &patterns));
    }
}

// ---------------------------------------------------------------------------------------
// Header templates.

fn template_source() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            "[ -~]{0,6}",
            prop::sample::select(&["sub", "email", "groups", " a ", "b", "}}", ""][..])
                .prop_map(|claim| format!("{{{{{claim}}}}}")),
            Just("{{".to_owned()),
            Just("}}".to_owned()),
            Just("\r\n".to_owned()),
            ".{0,2}",
        ],
        0..6,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn rendered_templates_never_carry_line_breaks(
        source in template_source(),
        claims in prop::collection::btree_map(
            prop::sample::select(&["sub", "email", "groups", "a", "b"][..]).prop_map(str::to_owned),
            prop_oneof![
                "[ -~]{0,8}",
                prop::sample::select(&["a\r\nb", "\n", "\0", "ü", "\t", "}}"][..]).prop_map(str::to_owned),
            ],
            0..5,
        ),
    ) {
        template::check_template(&source, &claims);
    }
}

// ---------------------------------------------------------------------------------------
// Configuration messages.

/// One change to an example server.
#[derive(Debug, Clone)]
enum ServerChange {
    Name(String),
    UpstreamUrl(String),
    Origin(String),
    RestrictedPattern(String),
    OutboundHeaderName(usize, String),
    Template(String),
    BearerToken(String),
    Transport(i32),
    Description(String),
    JwksJson(String),
}

fn server_change() -> impl Strategy<Value = ServerChange> {
    prop_oneof![
        prop_oneof!["[a-z0-9-]{0,70}", ".{0,8}"].prop_map(ServerChange::Name),
        prop_oneof![
            "https?://[a-zA-Z0-9.:@%_-]{0,24}(/[ -~]{0,12})?",
            Just("http://[::1]:8080/mcp".to_owned()),
            Just("https://xn--n3h.example/mcp#frag".to_owned()),
            ".{0,16}",
        ]
        .prop_map(ServerChange::UpstreamUrl),
        prop_oneof!["https?://[a-zA-Z0-9.:-]{0,20}/?", ".{0,10}"].prop_map(ServerChange::Origin),
        "[a-zA-Z0-9*?:-]{0,10}".prop_map(ServerChange::RestrictedPattern),
        (0..4usize, "[a-zA-Z0-9:-]{0,12}")
            .prop_map(|(index, name)| ServerChange::OutboundHeaderName(index, name)),
        "[ -~\r\n]{0,24}".prop_map(ServerChange::Template),
        "[ -~\r\n\u{e9}]{0,12}".prop_map(ServerChange::BearerToken),
        (-1..4i32).prop_map(ServerChange::Transport),
        ".{0,12}".prop_map(ServerChange::Description),
        prop::collection::vec(jwk(), 0..3)
            .prop_map(|keys| ServerChange::JwksJson(json!({"keys": keys}).to_string())),
    ]
}

fn apply_change(server: &mut proto::McpServer, change: ServerChange) {
    use proto::outbound_header::Source;
    match change {
        ServerChange::Name(name) => server.name = name,
        ServerChange::UpstreamUrl(url) => server.upstream_url = url,
        ServerChange::Origin(origin) => server.allowed_origins.push(origin),
        ServerChange::RestrictedPattern(pattern) => {
            if let Some(agent_auth) = &mut server.agent_auth {
                agent_auth.restricted_inbound_headers.push(pattern);
            }
        }
        ServerChange::OutboundHeaderName(index, name) => {
            if let Some(header) = server.outbound_headers.get_mut(index) {
                header.header_name = name;
            }
        }
        ServerChange::Template(template) => server.outbound_headers.push(proto::OutboundHeader {
            header_name: "x-templated".to_owned(),
            prefix: String::new(),
            source: Some(Source::Custom(proto::CustomHeader {
                value: Some(proto::custom_header::Value::Template(template)),
            })),
        }),
        ServerChange::BearerToken(token) => {
            server.app_auth = Some(proto::AppAuth {
                kind: Some(proto::app_auth::Kind::Bearer(proto::BearerToken {
                    token: Some(proto::Secret {
                        value: Some(proto::secret::Value::Plaintext(token)),
                    }),
                })),
            });
        }
        ServerChange::Transport(transport) => server.transport = transport,
        ServerChange::Description(description) => server.description = description,
        ServerChange::JwksJson(jwks) => {
            server.agent_auth = Some(proto::AgentAuth {
                mode: Some(proto::agent_auth::Mode::Passthrough(
                    proto::PassthroughAgent {
                        jwt_validation: Some(proto::JwtValidation {
                            jwks_url: String::new(),
                            jwks_json: jwks,
                            issuer: String::new(),
                            audience: String::new(),
                        }),
                    },
                )),
                restricted_inbound_headers: vec![],
            });
        }
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn changed_servers_convert_round_trip_and_compile(
        index in 0..6usize,
        changes in prop::collection::vec(server_change(), 0..4),
    ) {
        let mut servers = seeds::example_servers();
        let mut server = servers.swap_remove(index % 6);
        for change in changes {
            apply_change(&mut server, change);
        }
        config::check_server(server.clone());
        let mut snapshot = seeds::example_snapshot();
        snapshot.servers.retain(|existing| existing.name != server.name);
        snapshot.servers.push(server.clone());
        config::check_snapshot(snapshot);
        config::check_config_state(proto::ConfigState {
            servers: vec![server],
            ..Default::default()
        });
    }

    #[test]
    fn config_messages_from_arbitrary_bytes(kind in 0..3u8, bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut input = vec![kind];
        input.extend(bytes);
        config::fuzz(&input);
    }
}

// ---------------------------------------------------------------------------------------
// Events and the audit trail.

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn event_logs_in_any_order_project_without_panics(
        order in prop::collection::vec(0..15usize, 0..12),
        renumber in any::<bool>(),
    ) {
        let examples = seeds::example_events();
        let mut log = Vec::new();
        for (position, index) in order.into_iter().enumerate() {
            let mut event = examples[index % examples.len()].clone();
            if renumber {
                let portcullis_control_plane::events::StoredEvent::V1(inner) = &mut event;
                inner.sequence = position as u64 + 1;
            }
            log.push(event);
        }
        events::fuzz(&events::encode(&log));
    }

    #[test]
    fn event_text_with_one_byte_changed(position in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut text = events::encode(&seeds::example_events());
        let at = position.index(text.len());
        text[at] = byte;
        events::fuzz(&text);
    }

    #[test]
    fn node_events_fit_a_frame_and_pass_validation(choices in prop::collection::vec(any::<u8>(), 0..1024)) {
        let record = audit::record_from(&mut arbitrary::Unstructured::new(&choices));
        audit::node_event(&record);
    }

    #[test]
    fn audit_trails_from_arbitrary_choices(choices in prop::collection::vec(any::<u8>(), 0..160)) {
        audit::fuzz(&choices);
    }
}

//! `portcullisctl` against a real control plane, both as child processes: apply a
//! document, export it, apply the export (an empty plan), and check exit codes and that
//! no secret reaches the output.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use portcullis_shared::crypto::sha256_hex;

const ADMIN_TOKEN: &str = "cli-test-admin-token";
const AUDITOR_TOKEN: &str = "cli-test-auditor-token";

const SECRETS: &[&str] = &[
    "okta-client-secret",
    "google-client-secret",
    "datadog-api-key",
    "azure-service-key",
    "demo-signature",
];

const DOCUMENT: &str = r#"
version: 1
identity_providers:
  - id: okta
    display_name: Okta
    issuer: https://example.okta.com
    client_id: portcullis
    client_secret: { env: OKTA_SECRET }
oauth_apps:
  - app_id: google
    authorize_url: https://accounts.google.com/o/oauth2/v2/auth
    token_url: https://oauth2.googleapis.com/token
    client_id: google-client
    client_secret: { file: google.secret }
    default_scopes: [https://www.googleapis.com/auth/gmail.readonly]
    extra_authorize_params: { access_type: offline }
credentials:
  - id: dd-user-key
    description: per-user datadog keys
    org_value: { env: DD_KEY }
servers:
  - name: gmail
    upstream_url: https://gmail-mcp.example.com/mcp
    agent_auth: { interactive: { identity_provider: okta } }
    app_auth: { oauth_authorization: { app_id: google } }
  - name: datadog
    upstream_url: https://dd.example.com/mcp
    agent_auth:
      passthrough: {}
      restricted_inbound_headers: [x-internal-*]
    app_auth:
      api_key: { key_name: dd-api-key, key_value: { env: DD_KEY }, location: header }
    outbound_headers:
      - header_name: x-user
        caller_identity: { claim: email }
      - header_name: x-signature
        custom: { secret: { value: demo-signature } }
  - name: azure-search
    upstream_url: https://search.example.com/mcp
    agent_auth: { interactive: { identity_provider: okta } }
    app_auth: { bearer: { token: { env: AZURE_KEY } } }
    outbound_headers:
      - header_name: x-ms-query-source-authorization
        prefix: "Bearer "
        forward_caller_token: {}
"#;

/// The control plane as a child process, killed when dropped.
struct ControlPlane {
    child: Child,
    endpoint: String,
    _directory: tempfile::TempDir,
}

impl ControlPlane {
    fn start() -> Self {
        let directory = tempfile::tempdir().unwrap();
        let key_file = directory.path().join("master.key");
        std::fs::write(
            &key_file,
            base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
        )
        .unwrap();
        let access_file = directory.path().join("access.yaml");
        std::fs::write(
            &access_file,
            format!(
                "tokens:\n  - name: ops\n    role: admin\n    sha256: {}\n  - name: audit\n    role: auditor\n    sha256: {}\n",
                sha256_hex(ADMIN_TOKEN.as_bytes()),
                sha256_hex(AUDITOR_TOKEN.as_bytes()),
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis-control-plane"))
            .arg("--data-dir")
            .arg(directory.path().join("data"))
            .args(["--listen", "127.0.0.1:0"])
            .arg("--master-key-file")
            .arg(&key_file)
            .arg("--access-file")
            .arg(&access_file)
            .env_remove("PORTCULLIS_MASTER_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // The listening line carries the port; a reader thread hands it over so the wait
        // is bounded instead of blocking forever on a control plane that never starts.
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut control_plane = ControlPlane {
            child,
            endpoint: String::new(),
            _directory: directory,
        };
        loop {
            let line = received
                .recv_timeout(Duration::from_secs(60))
                .expect("the control plane did not report its address in time");
            if let Some(address) = line.strip_prefix("portcullis-control-plane listening on ") {
                control_plane.endpoint = format!("http://{address}");
                return control_plane;
            }
        }
    }

    /// Runs `portcullisctl` with the admin token and the document's secrets in its
    /// environment (the child's, not this process's).
    fn ctl(&self, arguments: &[&str]) -> Output {
        self.ctl_with_token(ADMIN_TOKEN, arguments)
    }

    fn ctl_with_token(&self, token: &str, arguments: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_portcullisctl"))
            .args(["--endpoint", &self.endpoint, "--timeout-secs", "30"])
            .args(arguments)
            .env("PORTCULLIS_TOKEN", token)
            .env("OKTA_SECRET", "okta-client-secret")
            .env("DD_KEY", "datadog-api-key")
            .env("AZURE_KEY", "azure-service-key")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        stdout(output),
        stderr(output)
    );
    stdout(output)
}

#[track_caller]
fn assert_no_secret(text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret:?} leaked into:\n{text}");
    }
}

fn write_document(directory: &Path, name: &str, text: &str) -> PathBuf {
    let path = directory.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn apply_export_and_apply_again_gives_an_empty_plan() {
    let control_plane = ControlPlane::start();
    let work = tempfile::tempdir().unwrap();
    // Relative `file:` secrets are found next to the document.
    std::fs::write(work.path().join("google.secret"), "google-client-secret\n").unwrap();
    let document = write_document(work.path(), "portcullis.yaml", DOCUMENT);
    let document = document.to_str().unwrap();

    let plan = succeeded(&control_plane.ctl(&["apply", "-f", document, "--dry-run"]));
    assert!(plan.contains("+ create server gmail\n"), "{plan}");
    assert!(plan.contains("+ create identity-provider okta\n"), "{plan}");
    assert!(plan.contains("+ create credential dd-user-key"), "{plan}");
    assert!(plan.contains("dry run: nothing applied"), "{plan}");
    assert_no_secret(&plan);
    // The first start generated the gateway's signing and sealing keys: revisions 1 and 2.
    let listed = succeeded(&control_plane.ctl(&["server", "list"]));
    assert_eq!(listed, "no servers (revision 2)\n");

    let applied = succeeded(&control_plane.ctl(&["apply", "-f", document]));
    assert!(applied.contains("+ create server datadog"), "{applied}");
    assert!(applied.contains("applied: revision "), "{applied}");
    assert_no_secret(&applied);

    let exported_path = work.path().join("exported.yaml");
    let exported_path = exported_path.to_str().unwrap();
    succeeded(&control_plane.ctl(&["export", "-o", exported_path]));
    let exported = std::fs::read_to_string(exported_path).unwrap();
    assert_no_secret(&exported);
    assert!(exported.contains("name: azure-search"), "{exported}");
    assert!(exported.contains("secret: null"), "{exported}");

    // An absent secret keeps the stored one, so the export is the current state.
    let again = succeeded(&control_plane.ctl(&["apply", "-f", exported_path]));
    assert_eq!(again, "no changes\n");

    // Reads show secrets as status and fingerprint only.
    let datadog = succeeded(&control_plane.ctl(&["server", "get", "datadog"]));
    assert!(
        datadog.contains("key value: set (hmac-sha256:"),
        "{datadog}"
    );
    assert_no_secret(&datadog);
    let yaml = succeeded(&control_plane.ctl(&["server", "get", "datadog", "-o", "yaml"]));
    assert!(yaml.starts_with("name: datadog\n"), "{yaml}");
    let state = succeeded(&control_plane.ctl(&["state", "-o", "json"]));
    assert_no_secret(&state);
    let history = succeeded(&control_plane.ctl(&["history", "server", "datadog"]));
    assert!(history.contains("datadog"), "{history}");
    assert_no_secret(&history);
    succeeded(&control_plane.ctl(&["events", "--limit", "5"]));
    succeeded(&control_plane.ctl(&["fleet"]));

    // The same secrets again are no change either: the control plane compares fingerprints.
    let same = succeeded(&control_plane.ctl(&["apply", "-f", document]));
    assert_eq!(same, "no changes\n");

    // Pruning with a smaller document plans the deletion of the rest.
    let without_azure = DOCUMENT
        .split("  - name: azure-search")
        .next()
        .unwrap_or_default();
    let smaller = write_document(work.path(), "smaller.yaml", without_azure);
    let pruned = succeeded(&control_plane.ctl(&[
        "apply",
        "-f",
        smaller.to_str().unwrap(),
        "--prune",
        "--dry-run",
    ]));
    assert_eq!(
        pruned.lines().next(),
        Some("- delete server azure-search"),
        "{pruned}"
    );
}

#[test]
fn failures_have_their_exit_codes() {
    let control_plane = ControlPlane::start();

    let whoami = succeeded(&control_plane.ctl(&["whoami"]));
    assert_eq!(whoami, "ops (role admin)\n");

    let missing = control_plane.ctl(&["server", "get", "nope"]);
    assert_eq!(missing.status.code(), Some(3), "{}", stderr(&missing));
    assert!(
        stderr(&missing).starts_with("error: not_found: "),
        "{}",
        stderr(&missing)
    );

    let denied = control_plane.ctl_with_token("wrong-token", &["server", "list"]);
    assert_eq!(denied.status.code(), Some(5), "{}", stderr(&denied));
    assert!(!stderr(&denied).contains("wrong-token"));

    let auditor_write = control_plane.ctl_with_token(
        AUDITOR_TOKEN,
        &["credential", "put", "k", "--value", "env:DD_KEY"],
    );
    assert_eq!(
        auditor_write.status.code(),
        Some(5),
        "{}",
        stderr(&auditor_write)
    );

    let created = succeeded(&control_plane.ctl(&[
        "server",
        "create",
        "open",
        "--upstream-url",
        "https://open.example.com/mcp",
        "--agent-passthrough",
        "--app-passthrough",
    ]));
    assert!(
        created.starts_with("created server open (revision 3,"),
        "{created}"
    );
    let duplicate = control_plane.ctl(&[
        "server",
        "create",
        "open",
        "--upstream-url",
        "https://open.example.com/mcp",
        "--agent-passthrough",
        "--app-passthrough",
    ]);
    assert_eq!(duplicate.status.code(), Some(4), "{}", stderr(&duplicate));

    let stale = control_plane.ctl(&["server", "delete", "open", "--expected-revision", "99"]);
    assert_eq!(stale.status.code(), Some(4), "{}", stderr(&stale));

    let invalid = control_plane.ctl(&[
        "server",
        "set-app-auth",
        "open",
        "api-key",
        "--key-name",
        "bad header",
        "--key-value",
        "env:DD_KEY",
    ]);
    assert_eq!(invalid.status.code(), Some(2), "{}", stderr(&invalid));
    assert!(stderr(&invalid).starts_with("error: invalid_argument: "));
    assert_no_secret(&stderr(&invalid));

    let updated = succeeded(&control_plane.ctl(&[
        "server",
        "update",
        "open",
        "--description",
        "public tools",
    ]));
    assert!(updated.starts_with("updated server open"), "{updated}");
    let shown = succeeded(&control_plane.ctl(&["server", "get", "open"]));
    assert!(shown.contains("description:"), "{shown}");
    assert!(shown.contains("public tools"), "{shown}");

    let header = succeeded(&control_plane.ctl(&[
        "header",
        "add",
        "open",
        "--pattern",
        "caller-identity",
        "--name",
        "x-user",
        "--claim",
        "email",
    ]));
    assert!(header.contains("caller_identity header x-user"), "{header}");
    succeeded(&control_plane.ctl(&["header", "remove", "open", "x-user"]));

    // Unreachable: a port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = listener.local_addr().unwrap();
    drop(listener);
    let unreachable = Command::new(env!("CARGO_BIN_EXE_portcullisctl"))
        .args(["--endpoint", &format!("http://{closed}"), "whoami"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        unreachable.status.code(),
        Some(6),
        "{}",
        stderr(&unreachable)
    );
}

//! The README's first command: `deploy/local/up.sh --check` starts the whole system on
//! its embedded defaults (control plane with TLS and node mTLS, two nodes, demo upstream and
//! configuration), checks that every node adds each demo server's credential, and stops.
//!
//! The script takes fixed ports, so the test picks free ones; another process may take one
//! before the script binds it, and then the test runs the script again on fresh ports.

use std::process::Command;
use std::time::Duration;

use portcullis_tests::paths::{self, workspace_binary};
use portcullis_tests::process::pick_free_loopback_port;
use portcullis_tests::{ChildProcess, scratch_dir};

const ATTEMPTS: usize = 3;
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Four distinct loopback ports that were free a moment ago.
fn free_ports() -> [u16; 4] {
    let mut ports = Vec::new();
    while ports.len() < 4 {
        let port = pick_free_loopback_port().unwrap();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    [ports[0], ports[1], ports[2], ports[3]]
}

#[tokio::test]
async fn deploy_local_up_check_starts_and_checks_the_whole_system() {
    let script = paths::workspace_root().join("deploy/local/up.sh");
    let bin_dir = workspace_binary("portcullis-node")
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    for attempt in 1..=ATTEMPTS {
        let dev_dir = scratch_dir("portcullis-dev").unwrap();
        let [control_plane, node_1, node_2, upstream] = free_ports();
        let mut command = Command::new("bash");
        command
            .arg(&script)
            .arg("--check")
            .env("PORTCULLIS_SKIP_BUILD", "1")
            .env("PORTCULLIS_BIN_DIR", &bin_dir)
            .env("PORTCULLIS_DEV_DIR", dev_dir.path())
            .env("PORTCULLIS_CP_PORT", control_plane.to_string())
            .env("PORTCULLIS_NODE_PORTS", format!("{node_1} {node_2}"))
            .env("PORTCULLIS_DEMO_UPSTREAM_PORT", upstream.to_string());
        let mut process = ChildProcess::spawn("up.sh", command).unwrap();
        let status = process.wait_for_exit(SCRIPT_TIMEOUT).await.unwrap();
        let output = format!("{}\n{}", process.stdout_text(), process.stderr_text());
        if status.success() {
            assert!(output.contains("==> check passed"), "{output}");
            assert!(
                output.contains("2 of 2 nodes on the latest version"),
                "{output}"
            );
            assert!(
                output.contains(&format!("http://127.0.0.1:{node_1}/mcp/demo")),
                "the script prints the URL to point a client at: {output}"
            );
            // By default the control plane runs TLS with node mTLS on dev-certs
            // certificates, and the script says which CA clients trust.
            assert!(
                output.contains(&format!("https://127.0.0.1:{control_plane}")),
                "{output}"
            );
            let ca = dev_dir.path().join("certs/ca.pem");
            assert!(ca.is_file(), "no development CA at {}", ca.display());
            assert!(
                output.contains(&format!("PORTCULLIS_CA_FILE={}", ca.display())),
                "{output}"
            );
            let node_log =
                std::fs::read_to_string(dev_dir.path().join("logs/node-1.log")).unwrap_or_default();
            assert!(
                !node_log.contains("snapshot stream lost"),
                "node-1 lost its stream: {node_log}"
            );
            // Secrets stay in the dev folder: the script never prints them.
            for secret_file in ["admin.token", "node.token", "demo-api-key", "demo-bearer"] {
                let secret = std::fs::read_to_string(dev_dir.path().join(secret_file)).unwrap();
                assert!(
                    !output.contains(secret.trim()),
                    "{secret_file} appears in the output"
                );
            }
            return;
        }
        if output.contains("Address already in use") || output.contains("AddrInUse") {
            eprintln!("attempt {attempt}: a port was taken; trying fresh ports");
            continue;
        }
        panic!(
            "deploy/local/up.sh --check failed ({status})\n{output}\n{}",
            process.diagnostics()
        );
    }
    panic!("a port was taken in each of {ATTEMPTS} attempts");
}

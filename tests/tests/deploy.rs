//! `deploy/` stays true: every flag the systemd units and Kubernetes manifests pass exists
//! in the binaries, the manifests hang together (selectors, ports, probes, Secrets, the
//! autoscaler's target), they render with kustomize when kubectl is installed, and every
//! example configuration applies to a real control plane.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use portcullis_tests::gateway::{ControlPlane, GatewayFiles};
use portcullis_tests::paths;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    paths::workspace_root().join("deploy")
}

/// The long flags a binary's `--help` lists.
fn known_flags(binary: &str) -> BTreeSet<String> {
    let output = std::process::Command::new(paths::workspace_binary(binary).unwrap())
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success(), "{binary} --help failed");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("--"))
        .map(|flag| {
            flag.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-')
                .split(['=', '<', ' '])
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .filter(|flag| !flag.is_empty())
        .collect()
}

/// The long flags used in a text (a unit file's ExecStart, a manifest's args).
fn used_flags(text: &str) -> BTreeSet<String> {
    text.split(|c: char| c.is_whitespace() || c == '"' || c == '\'')
        .filter_map(|word| word.strip_prefix("--"))
        .map(|flag| flag.split('=').next().unwrap_or_default().to_owned())
        .filter(|flag| !flag.is_empty())
        .collect()
}

fn assert_flags_exist(binary: &str, text: &str, source: &Path) {
    let known = known_flags(binary);
    let unknown: Vec<String> = used_flags(text).difference(&known).cloned().collect();
    assert!(
        unknown.is_empty(),
        "{} passes flags {binary} does not have: {unknown:?}",
        source.display()
    );
}

#[test]
fn systemd_units_use_only_existing_flags() {
    for (unit, binary) in [
        (
            "portcullis-control-plane.service",
            "portcullis-control-plane",
        ),
        ("portcullis-node@.service", "portcullis-node"),
    ] {
        let path = deploy_dir().join("systemd").join(unit);
        let text = std::fs::read_to_string(&path).unwrap();
        let exec: String = text
            .lines()
            .skip_while(|line| !line.starts_with("ExecStart="))
            .take_while(|line| line.starts_with("ExecStart=") || line.starts_with("    "))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(exec.contains(binary), "{unit} does not start {binary}");
        assert_flags_exist(binary, &exec, &path);
    }
}

fn manifests() -> Vec<Value> {
    let base = deploy_dir().join("kubernetes/base");
    let mut documents = Vec::new();
    for file in ["control-plane.yaml", "node.yaml"] {
        let text = std::fs::read_to_string(base.join(file)).unwrap();
        for document in serde_norway::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document).unwrap();
            documents.push(value);
        }
    }
    documents
}

fn find<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|doc| doc["kind"] == kind && doc["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn container_ports(pod: &Value) -> BTreeSet<String> {
    pod["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|port| port["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn kubernetes_manifests_hang_together() {
    let documents = manifests();
    for (workload_kind, name, binary) in [
        (
            "StatefulSet",
            "portcullis-control-plane",
            "portcullis-control-plane",
        ),
        ("Deployment", "portcullis-node", "portcullis-node"),
    ] {
        let workload = find(&documents, workload_kind, name);
        let selector = &workload["spec"]["selector"]["matchLabels"];
        let template = &workload["spec"]["template"];
        for (key, value) in selector.as_object().unwrap() {
            assert_eq!(
                &template["metadata"]["labels"][key], value,
                "{name}: selector does not match the pod labels"
            );
        }
        let service = find(&documents, "Service", name);
        for (key, value) in service["spec"]["selector"].as_object().unwrap() {
            assert_eq!(
                &template["metadata"]["labels"][key], value,
                "{name}: Service selects other pods"
            );
        }
        let ports = container_ports(template);
        for port in service["spec"]["ports"].as_array().unwrap() {
            let target = port["targetPort"].as_str().unwrap();
            assert!(
                ports.contains(target),
                "{name}: Service targets unknown port {target}"
            );
        }
        let container = &template["spec"]["containers"][0];
        for probe in ["readinessProbe", "livenessProbe"] {
            assert!(container[probe].is_object(), "{name} has no {probe}");
        }
        let args: Vec<String> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|arg| arg.as_str().unwrap().to_owned())
            .collect();
        assert_flags_exist(binary, &args.join(" "), Path::new(name));
        // Every file the args read from /etc/portcullis is a key of the mounted Secret's
        // documented contents.
        let secret = template["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|volume| volume["name"] == "secrets")
            .unwrap()["secret"]["secretName"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(secret, name);
        assert!(
            container["securityContext"]["readOnlyRootFilesystem"] == true,
            "{name} should run with a read-only root filesystem"
        );
    }
    let autoscaler = find(&documents, "HorizontalPodAutoscaler", "portcullis-node");
    assert_eq!(autoscaler["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(
        autoscaler["spec"]["scaleTargetRef"]["name"],
        "portcullis-node"
    );
    assert!(autoscaler["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    let control_plane = find(&documents, "StatefulSet", "portcullis-control-plane");
    assert_eq!(
        control_plane["spec"]["replicas"], 1,
        "the control plane is a single writer"
    );
    assert!(control_plane["spec"]["volumeClaimTemplates"].is_array());
}

#[test]
fn kustomize_renders_the_base_when_kubectl_is_installed() {
    let Ok(output) = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy_dir().join("kubernetes/base"))
        .output()
    else {
        // No kubectl on this machine: the structural test above still checks the files.
        eprintln!("kubectl not found; rendering not checked here");
        return;
    };
    assert!(
        output.status.success(),
        "kubectl kustomize failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rendered = String::from_utf8_lossy(&output.stdout);
    let kinds: BTreeSet<&str> = rendered
        .lines()
        .filter_map(|line| line.strip_prefix("kind: "))
        .collect();
    for kind in [
        "ConfigMap",
        "Service",
        "Deployment",
        "StatefulSet",
        "HorizontalPodAutoscaler",
    ] {
        assert!(kinds.contains(kind), "rendered output lacks a {kind}");
    }
}

#[tokio::test]
async fn every_example_configuration_applies() {
    let files = GatewayFiles::create().unwrap();
    let control_plane = ControlPlane::start(&files).await.unwrap();
    let mut examples: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join("examples"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    examples.sort();
    assert_eq!(
        examples.len(),
        4,
        "one example per real-world example of the product document"
    );
    for example in examples {
        let output =
            tokio::process::Command::new(paths::workspace_binary("portcullisctl").unwrap())
                .args(["--endpoint", &control_plane.url(), "apply", "-f"])
                .arg(&example)
                .env("PORTCULLIS_TOKEN", files.admin_token())
                .envs(
                    [
                        "OKTA_CLIENT_SECRET",
                        "GOOGLE_CLIENT_SECRET",
                        "DATADOG_API_KEY",
                        "ENTRA_CLIENT_SECRET",
                        "AZURE_SEARCH_KEY",
                        "GITHUB_CLIENT_SECRET",
                    ]
                    .map(|name| (name, "example-secret-value")),
                )
                .output()
                .await
                .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{} did not apply: {}{}",
            example.display(),
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains("applied: revision"), "{stdout}");
    }
}

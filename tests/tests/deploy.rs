//! `deploy/` stays true: every flag the systemd units and Kubernetes manifests pass exists
//! in the binaries, the manifests hang together (selectors, ports, probes, Secrets, the
//! autoscaler's target), TLS is wired everywhere (the control plane's listener, the nodes'
//! links to it, mTLS in the units, the nodes' listeners in the manifests), they render with
//! kustomize when kubectl is installed, and every example configuration applies to a real
//! control plane.

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

/// The `ExecStart` command of a unit, continuation lines joined.
fn exec_start(unit: &str) -> (PathBuf, String) {
    let path = deploy_dir().join("systemd").join(unit);
    let text = std::fs::read_to_string(&path).unwrap();
    let exec = text
        .lines()
        .skip_while(|line| !line.starts_with("ExecStart="))
        .take_while(|line| line.starts_with("ExecStart=") || line.starts_with("    "))
        .collect::<Vec<_>>()
        .join(" ");
    (path, exec)
}

/// The value of `--flag value` or `--flag=value` in a command line.
fn flag_value(command: &str, flag: &str) -> Option<String> {
    let words: Vec<&str> = command
        .split(|c: char| c.is_whitespace() || c == '\\')
        .filter(|word| !word.is_empty())
        .collect();
    words.iter().enumerate().find_map(|(index, word)| {
        if let Some(value) = word.strip_prefix(&format!("{flag}=")) {
            Some(value.to_owned())
        } else if *word == flag {
            words.get(index + 1).map(|value| (*value).to_owned())
        } else {
            None
        }
    })
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
        let (path, exec) = exec_start(unit);
        assert!(exec.contains(binary), "{unit} does not start {binary}");
        assert_flags_exist(binary, &exec, &path);
    }
}

#[test]
fn systemd_units_run_tls_and_node_mtls() {
    let (_, control_plane) = exec_start("portcullis-control-plane.service");
    for flag in ["--tls-cert-file", "--tls-key-file", "--client-ca-file"] {
        assert!(
            flag_value(&control_plane, flag).is_some(),
            "the control plane unit lacks {flag}"
        );
    }
    let (_, node) = exec_start("portcullis-node@.service");
    let url = flag_value(&node, "--control-plane").unwrap();
    assert!(url.starts_with("https://"), "nodes reach {url}");
    assert!(flag_value(&node, "--control-plane-ca-file").is_some());
    // One client certificate per instance, named like `dev-certs` names them.
    assert_eq!(
        flag_value(&node, "--control-plane-client-cert-file").as_deref(),
        Some("/etc/portcullis/node-%i.pem")
    );
    assert_eq!(
        flag_value(&node, "--control-plane-client-key-file").as_deref(),
        Some("/etc/portcullis/node-%i.key")
    );
    // Under mTLS the control plane refuses node tokens: the unit does not pass one.
    assert!(flag_value(&node, "--node-token-file").is_none());
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
        check_tls_wiring(name, template, &args);
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

/// The listener certificate comes from the `<name>-tls` Secret mounted where the args read
/// it, every file the args name lives in a mounted volume, and probes speak the listeners'
/// protocol.
fn check_tls_wiring(name: &str, template: &Value, args: &[String]) {
    let container = &template["spec"]["containers"][0];
    let mounts: Vec<(String, String)> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|mount| {
            (
                mount["name"].as_str().unwrap().to_owned(),
                mount["mountPath"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let volumes = template["spec"]["volumes"].as_array().unwrap();
    let command = args.join(" ");
    for flag in ["--tls-cert-file", "--tls-key-file"] {
        let file = flag_value(&command, flag).unwrap_or_else(|| panic!("{name} lacks {flag}"));
        let (volume, _) = mounts
            .iter()
            .find(|(_, path)| file.starts_with(&format!("{path}/")))
            .unwrap_or_else(|| panic!("{name}: {file} is in no mounted volume"));
        let secret = volumes
            .iter()
            .find(|candidate| candidate["name"] == volume.as_str())
            .unwrap()["secret"]["secretName"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: {file} is not from a Secret"));
        assert_eq!(secret, format!("{name}-tls"));
    }
    for file in args
        .iter()
        .filter_map(|arg| arg.split_once("=/").map(|(_, path)| path))
    {
        let file = format!("/{file}");
        if file.starts_with("/var/lib/") {
            continue;
        }
        assert!(
            mounts
                .iter()
                .any(|(_, path)| file.starts_with(&format!("{path}/"))),
            "{name}: {file} is in no mounted volume"
        );
    }
    for probe in ["readinessProbe", "livenessProbe"] {
        let probe = &container[probe];
        assert!(
            probe["grpc"].is_null(),
            "{name}: the kubelet's gRPC probes cannot speak TLS"
        );
    }
    if name == "portcullis-node" {
        let url = flag_value(&command, "--control-plane").unwrap();
        assert!(url.starts_with("https://"), "nodes reach {url}");
        assert!(flag_value(&command, "--control-plane-ca-file").is_some());
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(
                container[probe]["httpGet"]["scheme"], "HTTPS",
                "{name}: {probe} must speak TLS to a TLS listener"
            );
        }
    }
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

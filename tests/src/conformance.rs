//! The MCP conformance suite (`@modelcontextprotocol/conformance`) under the pinned Node 22.
//!
//! Baselines live in `tests/conformance/<target>.expected-failures.yaml`, in the format the
//! suite's own `--expected-failures` flag reads (`server:` / `client:` lists of scenario
//! names): with it the suite exits 0 exactly when the failing set equals the baseline.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::paths;
use crate::process::{ChildProcess, KEEP_LOGS_ENV, scratch_dir};
use crate::upstreams::DEFAULT_TOOL_TIMEOUT;

/// The baseline file of a conformance target, e.g. `server-everything`.
pub fn baseline_path(target: &str) -> PathBuf {
    paths::tests_crate_dir()
        .join("conformance")
        .join(format!("{target}.expected-failures.yaml"))
}

/// An expected-failures file as the suite reads it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedFailures {
    #[serde(default)]
    pub server: BTreeSet<String>,
    #[serde(default)]
    pub client: BTreeSet<String>,
}

impl ExpectedFailures {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the conformance baseline {}", path.display()))?;
        let parsed: Option<Self> = serde_norway::from_str(&text)
            .with_context(|| format!("invalid conformance baseline {}", path.display()))?;
        Ok(parsed.unwrap_or_default())
    }
}

/// Runs `conformance server --url <url>`, with `--expected-failures` when a baseline is given.
pub async fn conformance_server(
    url: &str,
    expected_failures: Option<&Path>,
) -> anyhow::Result<ConformanceReport> {
    let mut args: Vec<OsString> = vec!["server".into(), "--url".into(), url.into()];
    if let Some(baseline) = expected_failures {
        args.push("--expected-failures".into());
        args.push(baseline.into());
    }
    conformance(&args, DEFAULT_TOOL_TIMEOUT).await
}

/// Which installed line of the suite runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuiteVersion {
    /// `@modelcontextprotocol/conformance` 0.1.16.
    Stable,
    /// The 0.2 alpha, installed as the alias `conformance-authorization`.
    Alpha,
}

impl SuiteVersion {
    pub fn package(self) -> &'static str {
        match self {
            SuiteVersion::Stable => "@modelcontextprotocol/conformance",
            SuiteVersion::Alpha => "conformance-authorization",
        }
    }
}

/// Runs the conformance CLI with `args` (a subcommand and its flags) and parses its summary.
///
/// Results are written to a scratch folder (`-o`), read back for the failure messages, and
/// removed with the report.
pub async fn conformance(
    args: &[OsString],
    timeout: Duration,
) -> anyhow::Result<ConformanceReport> {
    conformance_with(SuiteVersion::Stable, args, &[], timeout).await
}

/// [`conformance`] on a given line of the suite, with extra environment variables (a
/// client under test started by `conformance client --command` inherits them).
pub async fn conformance_with(
    version: SuiteVersion,
    args: &[OsString],
    env: &[(&str, OsString)],
    timeout: Duration,
) -> anyhow::Result<ConformanceReport> {
    let cli = paths::npm_package_file(version.package(), "dist/index.js")?;
    let output_dir = scratch_dir("conformance-results")?;
    let mut command = Command::new(paths::node_binary()?);
    command
        .arg(cli)
        .args(args)
        .arg("--output-dir")
        .arg(output_dir.path())
        // No colour codes in the output we parse.
        .env("NO_COLOR", "1")
        .env("FORCE_COLOR", "0");
    for (name, value) in env {
        command.env(name, value);
    }
    let mut process = ChildProcess::spawn("conformance", command)?;
    let exit_status = process.wait_for_exit(timeout).await?;
    let stdout = process.stdout_text();
    let summary = parse_summary(&stdout).with_context(|| {
        format!(
            "the conformance suite ({exit_status}) printed no `Total:` line\n--- stdout ---\n{stdout}\n{}",
            process.diagnostics()
        )
    })?;
    let mut scenarios = summary.scenarios;
    for (folder_name, results) in read_results(output_dir.path())? {
        // Server runs prefix the folder with `server-`; client suite runs do not.
        let scenario = ["server-", "client-"]
            .iter()
            .filter_map(|prefix| folder_name.strip_prefix(prefix))
            .find(|name| scenarios.contains_key(*name))
            .unwrap_or(&folder_name)
            .to_owned();
        if let Some(outcome) = scenarios.get_mut(&scenario) {
            outcome.failure_messages = results.failure_messages;
            outcome.checks = results.checks;
            outcome.client_stdout = results.client_stdout;
        }
    }
    Ok(ConformanceReport {
        exit_status,
        total_checks_passed: summary.total_checks_passed,
        total_checks_failed: summary.total_checks_failed,
        scenarios,
        stdout,
        process,
        output_dir: Some(output_dir),
    })
}

/// The parsed result of one conformance run.
#[derive(Debug)]
pub struct ConformanceReport {
    pub exit_status: ExitStatus,
    /// From the `Total: X passed, Y failed` line (counts checks, not scenarios).
    pub total_checks_passed: u32,
    pub total_checks_failed: u32,
    /// Every scenario of the summary, by name.
    pub scenarios: BTreeMap<String, ScenarioOutcome>,
    pub stdout: String,
    /// The finished CLI process, for its logs.
    pub process: ChildProcess,
    /// The suite's `--output-dir` (a `checks.json` per scenario); kept if the test panics.
    output_dir: Option<tempfile::TempDir>,
}

impl Drop for ConformanceReport {
    fn drop(&mut self) {
        let keep = std::thread::panicking() || std::env::var_os(KEEP_LOGS_ENV).is_some();
        if keep && let Some(output_dir) = self.output_dir.take() {
            let path = output_dir.keep();
            eprintln!("conformance results kept in {}", path.display());
        }
    }
}

/// One summary line: `✓ name: 2 passed, 0 failed` (client runs add `, N warnings`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScenarioOutcome {
    pub checks_passed: u32,
    pub checks_failed: u32,
    pub checks_warned: u32,
    /// The error messages of failed or warned checks, from the scenario's `checks.json`.
    pub failure_messages: Vec<String>,
    /// Every check of the scenario's `checks.json`: `(id, status)`, e.g.
    /// `("valid-bearer-token", "SUCCESS")`.
    pub checks: Vec<(String, String)>,
    /// What the client under test printed (client scenarios' `stdout.txt`).
    pub client_stdout: Option<String>,
}

impl ScenarioOutcome {
    /// The suite's own rule: a scenario passes when no check failed or warned.
    pub fn passed(&self) -> bool {
        self.checks_failed == 0 && self.checks_warned == 0
    }

    /// True when a check with this id has this status (`SUCCESS`, `FAILURE`...).
    pub fn has_check(&self, id: &str, status: &str) -> bool {
        self.checks
            .iter()
            .any(|(check_id, check_status)| check_id == id && check_status == status)
    }
}

impl ConformanceReport {
    /// The folder holding the suite's per-scenario results.
    pub fn output_dir(&self) -> Option<&Path> {
        self.output_dir.as_ref().map(tempfile::TempDir::path)
    }

    pub fn passing_scenarios(&self) -> BTreeSet<String> {
        self.scenarios
            .iter()
            .filter(|(_, outcome)| outcome.passed())
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub fn failing_scenarios(&self) -> BTreeSet<String> {
        self.scenarios
            .iter()
            .filter(|(_, outcome)| !outcome.passed())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Fails unless the failing scenarios are exactly `expected`, naming the difference and
    /// the failure messages of unexpected failures.
    pub fn expect_failures_exactly(&self, expected: &BTreeSet<String>) -> anyhow::Result<()> {
        let failing = self.failing_scenarios();
        let unexpected: Vec<&String> = failing.difference(expected).collect();
        let now_passing: Vec<&String> = expected.difference(&failing).collect();
        if unexpected.is_empty() && now_passing.is_empty() {
            return Ok(());
        }
        let mut message = String::from("conformance results differ from the baseline\n");
        for scenario in &unexpected {
            message.push_str(&format!("  unexpected failure: {scenario}\n"));
            for failure in &self.scenarios[*scenario].failure_messages {
                message.push_str(&format!("      {failure}\n"));
            }
        }
        for scenario in &now_passing {
            message.push_str(&format!(
                "  now passing (remove from the baseline): {scenario}\n"
            ));
        }
        bail!("{message}--- suite stdout ---\n{}", self.stdout)
    }
}

struct Summary {
    total_checks_passed: u32,
    total_checks_failed: u32,
    scenarios: BTreeMap<String, ScenarioOutcome>,
}

/// Parses the summary the suite prints at the end of a run.
fn parse_summary(stdout: &str) -> Option<Summary> {
    let mut scenarios = BTreeMap::new();
    let mut totals = None;
    for line in stdout.lines().map(str::trim) {
        if let Some(counts) = line.strip_prefix("Total: ") {
            let (passed, failed, _) = parse_counts(counts)?;
            totals = Some((passed, failed));
            continue;
        }
        let Some(rest) = line.strip_prefix("✓ ").or_else(|| line.strip_prefix("✗ ")) else {
            continue;
        };
        let Some((name, counts)) = rest.rsplit_once(": ") else {
            continue;
        };
        if let Some((checks_passed, checks_failed, checks_warned)) = parse_counts(counts) {
            scenarios.insert(
                name.to_owned(),
                ScenarioOutcome {
                    checks_passed,
                    checks_failed,
                    checks_warned,
                    ..ScenarioOutcome::default()
                },
            );
        }
    }
    let (total_checks_passed, total_checks_failed) = totals?;
    Some(Summary {
        total_checks_passed,
        total_checks_failed,
        scenarios,
    })
}

/// `3 passed, 1 failed` or `3 passed, 1 failed, 2 warnings`.
fn parse_counts(text: &str) -> Option<(u32, u32, u32)> {
    let mut passed = None;
    let mut failed = None;
    let mut warned = 0;
    for part in text.split(", ") {
        let (number, word) = part.trim().split_once(' ')?;
        let number: u32 = number.parse().ok()?;
        match word {
            "passed" => passed = Some(number),
            "failed" => failed = Some(number),
            "warnings" | "warning" => warned = number,
            _ => return None,
        }
    }
    Some((passed?, failed?, warned))
}

/// One entry of a scenario's `checks.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Check {
    id: String,
    name: String,
    status: String,
    #[serde(default)]
    description: String,
    error_message: Option<String>,
}

/// What a scenario's result folder holds.
#[derive(Debug, Default)]
struct ScenarioResults {
    failure_messages: Vec<String>,
    checks: Vec<(String, String)>,
    client_stdout: Option<String>,
}

/// Scenario name -> its results, from `<dir>/**/checks.json` (and `stdout.txt` beside it).
///
/// The suite names each result folder `<server|client>-<scenario>-<timestamp>`.
fn read_results(output_dir: &Path) -> anyhow::Result<BTreeMap<String, ScenarioResults>> {
    let mut results = BTreeMap::new();
    let mut pending = vec![output_dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.file_name().is_none_or(|name| name != "checks.json") {
                continue;
            }
            let Some(scenario) = path
                .parent()
                .and_then(|parent| parent.strip_prefix(output_dir).ok())
                .and_then(scenario_from_result_folder)
            else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let Ok(checks) = serde_json::from_str::<Vec<Check>>(&text) else {
                continue;
            };
            let client_stdout = path
                .parent()
                .and_then(|parent| std::fs::read_to_string(parent.join("stdout.txt")).ok());
            let failure_messages = checks
                .iter()
                .filter(|check| check.status == "FAILURE" || check.status == "WARNING")
                .map(|check| {
                    format!(
                        "{} {}: {}",
                        check.status,
                        check.name,
                        check.error_message.as_deref().unwrap_or(&check.description)
                    )
                })
                .collect();
            let checks = checks
                .into_iter()
                .map(|check| (check.id, check.status))
                .collect();
            results.insert(
                scenario,
                ScenarioResults {
                    failure_messages,
                    checks,
                    client_stdout,
                },
            );
        }
    }
    Ok(results)
}

/// `server-tools-list-2026-01-02T03-04-05-678Z` -> `server-tools-list`, and
/// `auth/basic-cimd-2026-...Z` (a folder in a folder) -> `auth/basic-cimd`.
fn scenario_from_result_folder(relative: &Path) -> Option<String> {
    let text = relative.to_str()?.replace('\\', "/");
    // The timestamp is `-YYYY-MM-DDTHH-MM-SS-mmmZ`: 25 characters with its dash.
    const TIMESTAMP_LENGTH: usize = 25;
    let split_at = text.len().checked_sub(TIMESTAMP_LENGTH)?;
    let (name, timestamp) = text.split_at_checked(split_at)?;
    (!name.is_empty()
        && timestamp.starts_with("-")
        && timestamp.ends_with('Z')
        && timestamp.contains('T'))
    .then(|| name.to_owned())
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn parses_the_summary_of_a_server_run() {
        let stdout = "=== Running scenario: ping ===\n\n=== SUMMARY ===\n\
            ✓ server-initialize: 1 passed, 0 failed\n\
            ✗ dns-rebinding-protection: 1 passed, 1 failed\n\
            \nTotal: 2 passed, 1 failed\n";
        let summary = parse_summary(stdout).unwrap();
        assert_eq!(summary.total_checks_passed, 2);
        assert_eq!(summary.total_checks_failed, 1);
        assert!(summary.scenarios["server-initialize"].passed());
        assert!(!summary.scenarios["dns-rebinding-protection"].passed());
    }

    #[test]
    fn parses_warnings_of_a_client_run() {
        let stdout = "✗ auth/basic-cimd: 5 passed, 0 failed, 1 warnings\n\
            Total: 5 passed, 0 failed, 1 warnings\n";
        let summary = parse_summary(stdout).unwrap();
        let outcome = &summary.scenarios["auth/basic-cimd"];
        assert_eq!(outcome.checks_warned, 1);
        assert!(!outcome.passed());
    }

    #[test]
    fn a_run_without_total_line_is_not_a_summary() {
        assert!(parse_summary("✓ ping: 1 passed, 0 failed\n").is_none());
    }

    #[test]
    fn result_folders_map_to_scenarios() {
        assert_eq!(
            scenario_from_result_folder(Path::new(
                "server-tools-call-image-2026-11-26T05-49-58-694Z"
            )),
            Some("server-tools-call-image".to_owned())
        );
        assert_eq!(
            scenario_from_result_folder(Path::new("auth/basic-cimd-2026-11-26T05-49-58-694Z")),
            Some("auth/basic-cimd".to_owned())
        );
        assert_eq!(scenario_from_result_folder(Path::new("other")), None);
    }
}

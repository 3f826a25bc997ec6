//! Declarative configuration: compare a desired state with the current one and plan the
//! commands that get from one to the other. Planning decides every command against a
//! scratch state, so a plan that is shown is a plan that will validate.

use std::collections::BTreeSet;

use portcullis_shared::config::{IdentityProvider, McpServer, OAuthApp};
use portcullis_shared::names::{CatalogId, ServerName};
use portcullis_shared::secret::SecretInput;
use portcullis_shared::validate::ValidationErrors;
use serde_json::Value;

use crate::commands::{Command, CommandError, Decision, OrgValue};
use crate::events::{AggregateKey, AggregateKind};
use crate::secrets::SecretStore;
use crate::state::State;

/// A stored credential as the desired state gives it (per-user values are not declarative).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredCredential {
    pub id: CatalogId,
    pub description: String,
    pub org_value: OrgValue,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub servers: Vec<McpServer<SecretInput>>,
    pub identity_providers: Vec<IdentityProvider<SecretInput>>,
    pub oauth_apps: Vec<OAuthApp<SecretInput>>,
    pub credentials: Vec<DesiredCredential>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeAction {
    Create,
    Update,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedChange {
    pub action: ChangeAction,
    pub aggregate: AggregateKey,
    /// What differs, one line per field, with secrets shown as fingerprints only.
    pub details: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub changes: Vec<PlannedChange>,
    pub revision: u64,
    pub applied: bool,
}

/// The current form of an aggregate as JSON, for comparison. Credentials leave out their
/// per-user values, which the desired state does not manage.
fn aggregate_json(state: &State, key: &AggregateKey) -> Option<Value> {
    let to_json = |value: Result<Value, serde_json::Error>| value.ok();
    match key.kind {
        AggregateKind::Server => {
            let name = ServerName::parse(&key.id).ok()?;
            to_json(serde_json::to_value(state.servers.get(&name)?.as_ref()))
        }
        AggregateKind::IdentityProvider => {
            let id = CatalogId::parse(&key.id).ok()?;
            to_json(serde_json::to_value(
                state.identity_providers.get(&id)?.as_ref(),
            ))
        }
        AggregateKind::OauthApp => {
            let id = CatalogId::parse(&key.id).ok()?;
            to_json(serde_json::to_value(state.oauth_apps.get(&id)?.as_ref()))
        }
        AggregateKind::Credential => {
            let id = CatalogId::parse(&key.id).ok()?;
            let credential = state.credentials.get(&id)?;
            Some(serde_json::json!({
                "description": credential.description,
                "org_value": credential.org_value,
            }))
        }
        // Not declarative: keys rotate and revocations happen through their own commands.
        AggregateKind::Gateway => None,
    }
}

struct Planner<'a> {
    scratch: State,
    secrets: &'a SecretStore,
    planned: Vec<(PlannedChange, Decision)>,
}

impl Planner<'_> {
    /// Decides `command`; records it only if the aggregate actually changes.
    fn consider(&mut self, command: Command) -> Result<(), CommandError> {
        let key = command.aggregate();
        let before = aggregate_json(&self.scratch, &key);
        let mut candidate = self.scratch.clone();
        let decision = command
            .decide(&self.scratch, self.secrets)
            .map_err(|error| error.with_prefix(&field_prefix(&key)))?;
        decision.preview(&mut candidate)?;
        let after = aggregate_json(&candidate, &key);
        let change = match (&before, &after) {
            (None, Some(_)) => PlannedChange {
                action: ChangeAction::Create,
                aggregate: key,
                details: Vec::new(),
            },
            (Some(_), None) => PlannedChange {
                action: ChangeAction::Delete,
                aggregate: key,
                details: Vec::new(),
            },
            (Some(old), Some(new)) if old == new => return Ok(()),
            (Some(old), Some(new)) => {
                let mut details = Vec::new();
                diff(old, new, "", &mut details);
                PlannedChange {
                    action: ChangeAction::Update,
                    aggregate: key,
                    details,
                }
            }
            (None, None) => return Ok(()),
        };
        self.scratch = candidate;
        self.planned.push((change, decision));
        Ok(())
    }
}

fn field_prefix(key: &AggregateKey) -> String {
    let section = match key.kind {
        AggregateKind::Server => "servers",
        AggregateKind::IdentityProvider => "identity_providers",
        AggregateKind::OauthApp => "oauth_apps",
        AggregateKind::Credential => "credentials",
        AggregateKind::Gateway => "gateway",
    };
    format!("{section}[{}]", key.id)
}

fn check_unique<'a>(
    errors: &mut ValidationErrors,
    section: &str,
    ids: impl Iterator<Item = &'a str>,
) {
    let mut seen = BTreeSet::new();
    for id in ids {
        if !seen.insert(id) {
            errors.push(format!("{section}[{id}]"), "appears more than once");
        }
    }
}

/// Plans the changes from `state` to `desired`. Catalog entries are written before the
/// servers that reference them, and deletions (only with `prune`) run servers first.
pub fn plan(
    state: &State,
    desired: DesiredState,
    prune: bool,
    secrets: &SecretStore,
) -> Result<Vec<(PlannedChange, Decision)>, CommandError> {
    let mut errors = ValidationErrors::default();
    check_unique(
        &mut errors,
        "servers",
        desired.servers.iter().map(|s| s.name.as_str()),
    );
    check_unique(
        &mut errors,
        "identity_providers",
        desired.identity_providers.iter().map(|i| i.id.as_str()),
    );
    check_unique(
        &mut errors,
        "oauth_apps",
        desired.oauth_apps.iter().map(|a| a.app_id.as_str()),
    );
    check_unique(
        &mut errors,
        "credentials",
        desired.credentials.iter().map(|c| c.id.as_str()),
    );
    if !errors.is_empty() {
        return Err(CommandError::Invalid(errors));
    }
    let wanted_servers: BTreeSet<ServerName> =
        desired.servers.iter().map(|s| s.name.clone()).collect();
    let wanted_idps: BTreeSet<CatalogId> = desired
        .identity_providers
        .iter()
        .map(|i| i.id.clone())
        .collect();
    let wanted_apps: BTreeSet<CatalogId> = desired
        .oauth_apps
        .iter()
        .map(|a| a.app_id.clone())
        .collect();
    let wanted_credentials: BTreeSet<CatalogId> =
        desired.credentials.iter().map(|c| c.id.clone()).collect();

    let mut planner = Planner {
        scratch: state.clone(),
        secrets,
        planned: Vec::new(),
    };
    for identity_provider in desired.identity_providers {
        planner.consider(Command::PutIdentityProvider {
            identity_provider,
            expected_revision: None,
        })?;
    }
    for oauth_app in desired.oauth_apps {
        planner.consider(Command::PutOauthApp {
            oauth_app,
            expected_revision: None,
        })?;
    }
    for credential in desired.credentials {
        planner.consider(Command::PutCredential {
            id: credential.id,
            description: credential.description,
            org_value: credential.org_value,
            expected_revision: None,
        })?;
    }
    for server in desired.servers {
        let command = if planner.scratch.servers.contains_key(&server.name) {
            Command::UpdateServer {
                server,
                expected_revision: None,
            }
        } else {
            Command::CreateServer { server }
        };
        planner.consider(command)?;
    }
    if prune {
        let stale_servers: Vec<ServerName> = planner
            .scratch
            .servers
            .keys()
            .filter(|name| !wanted_servers.contains(*name))
            .cloned()
            .collect();
        for name in stale_servers {
            planner.consider(Command::DeleteServer {
                name,
                expected_revision: None,
            })?;
        }
        let stale = |ids: Vec<&CatalogId>, wanted: &BTreeSet<CatalogId>| -> Vec<CatalogId> {
            ids.into_iter()
                .filter(|id| !wanted.contains(*id))
                .cloned()
                .collect()
        };
        for id in stale(
            planner.scratch.identity_providers.keys().collect(),
            &wanted_idps,
        ) {
            planner.consider(Command::DeleteIdentityProvider {
                id,
                expected_revision: None,
            })?;
        }
        for app_id in stale(planner.scratch.oauth_apps.keys().collect(), &wanted_apps) {
            planner.consider(Command::DeleteOauthApp {
                app_id,
                expected_revision: None,
            })?;
        }
        for id in stale(
            planner.scratch.credentials.keys().collect(),
            &wanted_credentials,
        ) {
            planner.consider(Command::DeleteCredential {
                id,
                expected_revision: None,
            })?;
        }
    }
    Ok(planner.planned)
}

/// True for a sealed secret rendered as JSON.
fn is_sealed_secret(value: &Value) -> bool {
    value.get("ciphertext").is_some() && value.get("fingerprint").is_some()
}

fn render(value: &Value) -> String {
    if is_sealed_secret(value) {
        return format!(
            "secret {}",
            value["fingerprint"].as_str().unwrap_or("(unknown)")
        );
    }
    let text = match value {
        Value::Null => "(none)".to_owned(),
        Value::String(text) => text.clone(),
        Value::Array(items) if items.iter().any(Value::is_object) => {
            format!("{} entries", items.len())
        }
        other => other.to_string(),
    };
    if text.chars().count() > 120 {
        format!("{}...", text.chars().take(117).collect::<String>())
    } else {
        text
    }
}

/// Field-level differences between two JSON forms, as `path: old -> new` lines.
fn diff(old: &Value, new: &Value, path: &str, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b))
            if !is_sealed_secret(old) && !is_sealed_secret(new) =>
        {
            // A change of variant (e.g. app auth api_key -> bearer) reads best as one line.
            if let (Some(ta), Some(tb)) = (a.get("type"), b.get("type"))
                && ta != tb
            {
                out.push(format!("{}: {} -> {}", label(path), render(ta), render(tb)));
                return;
            }
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) if x == y => {}
                    (Some(x), Some(y)) => diff(x, y, &child, out),
                    (Some(x), None) => diff(x, &Value::Null, &child, out),
                    (None, Some(y)) => diff(&Value::Null, y, &child, out),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b))
            if a.len() == b.len() && a.iter().chain(b).any(Value::is_object) =>
        {
            for (index, (x, y)) in a.iter().zip(b).enumerate() {
                if x != y {
                    diff(x, y, &format!("{path}[{index}]"), out);
                }
            }
        }
        _ => out.push(format!(
            "{}: {} -> {}",
            label(path),
            render(old),
            render(new)
        )),
    }
}

fn label(path: &str) -> &str {
    if path.is_empty() { "(value)" } else { path }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_reports_changed_fields_and_hides_secrets() {
        let old = json!({
            "upstream_url": "http://a/mcp",
            "app_auth": {"type": "api_key", "key_name": "x-api-key",
                "key_value": {"id": "1", "ciphertext": "AAA", "fingerprint": "hmac-sha256:1111"}},
            "allowed_origins": ["https://a"],
        });
        let new = json!({
            "upstream_url": "http://b/mcp",
            "app_auth": {"type": "api_key", "key_name": "x-api-key",
                "key_value": {"id": "2", "ciphertext": "BBB", "fingerprint": "hmac-sha256:2222"}},
            "allowed_origins": ["https://a"],
        });
        let mut out = Vec::new();
        diff(&old, &new, "", &mut out);
        assert_eq!(
            out,
            vec![
                "app_auth.key_value: secret hmac-sha256:1111 -> secret hmac-sha256:2222",
                "upstream_url: http://a/mcp -> http://b/mcp",
            ]
        );
        assert!(!out.join(" ").contains("AAA"));
    }

    #[test]
    fn diff_reports_variant_changes_on_one_line() {
        let old = json!({"app_auth": {"type": "api_key", "key_name": "k"}});
        let new = json!({"app_auth": {"type": "bearer", "token": {"id": "1", "ciphertext": "x", "fingerprint": "f"}}});
        let mut out = Vec::new();
        diff(&old, &new, "", &mut out);
        assert_eq!(out, vec!["app_auth: api_key -> bearer"]);
    }
}

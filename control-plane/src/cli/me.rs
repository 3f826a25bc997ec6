//! `portcullisctl me`: what a user manages about themselves, through a node's `/me`
//! endpoints with their own gateway access token (the one their MCP client obtained by
//! signing in with Interactive SSO), never through the admin API:
//!
//! ```text
//! portcullisctl me --node https://gateway.example.com links list
//! portcullisctl me --node https://gateway.example.com links disconnect github
//! portcullisctl me --node https://gateway.example.com credential list
//! portcullisctl me --node https://gateway.example.com credential set github-pat --value env:GITHUB_PAT
//! portcullisctl me --node https://gateway.example.com credential delete github-pat
//! ```
//!
//! The token comes from `--user-token-file` or `PORTCULLIS_USER_TOKEN`; the node URL from
//! `--node` or `PORTCULLIS_NODE_URL`. A value comes from `env:`, `file:` or `stdin`, never
//! from the command line itself (`value:` is refused here: a user's own token would sit in
//! shell history). Neither the token nor the value is ever printed.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::args::{
    ConnectionArgs, MeArgs, MeCommand, MeCredentialCommand, MeLinksCommand, NODE_URL_VARIABLE,
    USER_TOKEN_VARIABLE,
};
use super::error::CliError;
use super::output::OutputFormat;
use super::secret_source::{Environment, SecretResolver, SecretSource, read_text_file};

/// The largest answer read from a node.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// A resolved `me` invocation: where, and with which token.
struct NodeSession {
    base: url::Url,
    token: String,
    http: reqwest::Client,
}

/// Runs a `me` command; returns what to print.
pub async fn run(
    args: MeArgs,
    connection: &ConnectionArgs,
    environment: &dyn Environment,
    secrets: &SecretResolver<'_>,
) -> Result<String, CliError> {
    // Arguments and secrets first: a typo is a usage error even when the node is down.
    let value = match &args.command {
        MeCommand::Credential(MeCredentialCommand::Set { value, .. }) => {
            if matches!(value, SecretSource::Value(_)) {
                return Err(CliError::Usage(
                    "--value takes env:NAME, file:PATH or stdin here: a value on the command \
                     line ends up in shell history"
                        .to_owned(),
                ));
            }
            Some(secrets.resolve(value)?)
        }
        _ => None,
    };
    let session = NodeSession::new(&args, connection, environment)?;
    match args.command {
        MeCommand::Links(MeLinksCommand::List(output)) => {
            let answer = session.call(reqwest::Method::GET, "me/links", None).await?;
            render(output.format, &answer, links_text)
        }
        MeCommand::Links(MeLinksCommand::Disconnect { app }) => {
            session
                .call(
                    reqwest::Method::DELETE,
                    &format!("me/links/{}", segment(&app)?),
                    None,
                )
                .await?;
            Ok(format!("disconnected {app}\n"))
        }
        MeCommand::Credential(MeCredentialCommand::List(output)) => {
            let answer = session
                .call(reqwest::Method::GET, "me/credentials", None)
                .await?;
            render(output.format, &answer, credentials_text)
        }
        MeCommand::Credential(MeCredentialCommand::Set { id, .. }) => {
            let value = value.ok_or_else(|| CliError::Usage("no value".to_owned()))?;
            let body = json!({ "value": value.expose() });
            session
                .call(
                    reqwest::Method::PUT,
                    &format!("me/credentials/{}", segment(&id)?),
                    Some(body),
                )
                .await?;
            Ok(format!(
                "stored your own value of {id}; it is used instead of the org-wide one\n"
            ))
        }
        MeCommand::Credential(MeCredentialCommand::Delete { id }) => {
            session
                .call(
                    reqwest::Method::DELETE,
                    &format!("me/credentials/{}", segment(&id)?),
                    None,
                )
                .await?;
            Ok(format!(
                "deleted your own value of {id}; the org-wide value applies again\n"
            ))
        }
    }
}

/// An id as one path segment: ids are plain names, so anything else is a typo.
fn segment(id: &str) -> Result<&str, CliError> {
    let plain = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain && id != "." && id != ".." {
        Ok(id)
    } else {
        Err(CliError::Usage(format!("{id:?} is not an id")))
    }
}

impl NodeSession {
    fn new(
        args: &MeArgs,
        connection: &ConnectionArgs,
        environment: &dyn Environment,
    ) -> Result<Self, CliError> {
        let node = args
            .node
            .clone()
            .or_else(|| {
                environment
                    .var(NODE_URL_VARIABLE)
                    .filter(|url| !url.is_empty())
            })
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "name the gateway: --node URL or {NODE_URL_VARIABLE}"
                ))
            })?;
        let mut base = url::Url::parse(&node)
            .map_err(|error| CliError::Usage(format!("invalid --node {node:?}: {error}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.query().is_some() {
            return Err(CliError::Usage(format!(
                "invalid --node {node:?}: use http:// or https:// without a query"
            )));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let token = match &args.user_token_file {
            Some(path) => read_text_file(path)?,
            None => environment.var(USER_TOKEN_VARIABLE).unwrap_or_default(),
        };
        let token = token.trim().to_owned();
        if token.is_empty() {
            return Err(CliError::Usage(format!(
                "your gateway access token is needed: --user-token-file PATH or {USER_TOKEN_VARIABLE}"
            )));
        }
        if !token.chars().all(|c| c.is_ascii_graphic()) {
            // The message does not include the value: it is the token.
            return Err(CliError::Usage(
                "the token contains characters that cannot be sent in a header".to_owned(),
            ));
        }
        let timeout = Duration::from_secs(connection.timeout_secs);
        let mut http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca_file) = &connection.ca_file {
            if base.scheme() != "https" {
                return Err(CliError::Usage("--ca-file needs an https node".to_owned()));
            }
            let pem = std::fs::read(ca_file).map_err(|source| CliError::ReadFile {
                path: ca_file.clone(),
                source,
            })?;
            let certificate = reqwest::Certificate::from_pem(&pem)
                .map_err(|error| CliError::Usage(format!("--ca-file: {error}")))?;
            http = http.add_root_certificate(certificate);
        }
        let http = http
            .build()
            .map_err(|error| CliError::Usage(format!("cannot build the HTTP client: {error}")))?;
        Ok(Self { base, token, http })
    }

    /// One call; a refusal becomes the CLI error of the matching code.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CliError> {
        let url = self
            .base
            .join(path)
            .map_err(|error| CliError::Usage(error.to_string()))?;
        let mut request = self
            .http
            .request(method, url.clone())
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let unreachable = |error: reqwest::Error| CliError::Unreachable {
            endpoint: self.base.to_string(),
            reason: error.without_url().to_string(),
        };
        let mut response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > MAX_ANSWER_BYTES {
                return Err(CliError::Rpc {
                    code: tonic::Code::Internal,
                    message: "the node's answer is too large".to_owned(),
                });
            }
        }
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(answer);
        }
        let description = answer
            .get("error_description")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("the node answered {status} to {}", url.path()));
        Err(CliError::Rpc {
            code: code_of(status),
            message: description,
        })
    }
}

fn code_of(status: StatusCode) -> tonic::Code {
    match status {
        StatusCode::BAD_REQUEST => tonic::Code::InvalidArgument,
        StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
        StatusCode::FORBIDDEN => tonic::Code::PermissionDenied,
        StatusCode::NOT_FOUND => tonic::Code::NotFound,
        StatusCode::CONFLICT => tonic::Code::FailedPrecondition,
        StatusCode::TOO_MANY_REQUESTS => tonic::Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => {
            tonic::Code::Unavailable
        }
        _ => tonic::Code::Internal,
    }
}

fn render(
    format: OutputFormat,
    answer: &Value,
    text: fn(&Value) -> String,
) -> Result<String, CliError> {
    match format {
        OutputFormat::Text => Ok(text(answer)),
        OutputFormat::Json => serde_json::to_string_pretty(answer)
            .map(|text| text + "\n")
            .map_err(|error| CliError::Encode(error.to_string())),
        OutputFormat::Yaml => {
            serde_norway::to_string(answer).map_err(|error| CliError::Encode(error.to_string()))
        }
    }
}

fn user_line(answer: &Value) -> String {
    format!(
        "user {} at {}\n",
        answer["user"]["subject"].as_str().unwrap_or("?"),
        answer["user"]["identity_provider"].as_str().unwrap_or("?")
    )
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|name| name.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|name| name.to_uppercase()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn time(value: &Value) -> String {
    match value.as_i64() {
        Some(seconds) if seconds > 0 => time::OffsetDateTime::from_unix_timestamp(seconds)
            .ok()
            .and_then(|at| {
                at.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| seconds.to_string()),
        _ => "-".to_owned(),
    }
}

fn links_text(answer: &Value) -> String {
    let links = answer["links"].as_array().cloned().unwrap_or_default();
    if links.is_empty() {
        return user_line(answer) + "no account links\n";
    }
    let rows: Vec<Vec<String>> = links
        .iter()
        .map(|link| {
            let text = |key: &str| link[key].as_str().unwrap_or_default().to_owned();
            vec![
                text("app_id"),
                text("app"),
                text("status"),
                text("scope"),
                time(&link["connected_at"]),
                time(&link["expires_at"]),
                text("reason"),
            ]
        })
        .collect();
    user_line(answer)
        + &table(
            &[
                "app",
                "name",
                "status",
                "scope",
                "connected",
                "expires",
                "reason",
            ],
            &rows,
        )
}

fn credentials_text(answer: &Value) -> String {
    let credentials = answer["credentials"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if credentials.is_empty() {
        return user_line(answer) + "no stored credential takes a value of your own\n";
    }
    let yes_no = |value: &Value| {
        if value.as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
    };
    let rows: Vec<Vec<String>> = credentials
        .iter()
        .map(|credential| {
            let servers: Vec<&str> = credential["servers"]
                .as_array()
                .map(|servers| servers.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            vec![
                credential["credential_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                yes_no(&credential["own_value"]).to_owned(),
                yes_no(&credential["org_value"]).to_owned(),
                servers.join(","),
                credential["description"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ]
        })
        .collect();
    user_line(answer)
        + &table(
            &["credential", "yours", "org-wide", "servers", "description"],
            &rows,
        )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::Parser;

    use super::*;
    use crate::cli::Cli;
    use crate::cli::args::Command;

    fn parse(arguments: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("portcullisctl").chain(arguments.iter().copied()))
    }

    #[test]
    fn flags_go_before_or_after_the_subcommand() {
        let cli = parse(&[
            "me",
            "credential",
            "set",
            "github-pat",
            "--value",
            "env:PAT",
            "--node",
            "http://gw",
        ])
        .unwrap();
        let Command::Me(args) = cli.command else {
            panic!("not me")
        };
        assert_eq!(args.node.as_deref(), Some("http://gw"));
        let cli = parse(&["me", "--node", "http://gw", "links", "disconnect", "github"]).unwrap();
        assert!(matches!(cli.command, Command::Me(_)));
        // A bare value is refused and not echoed.
        let error = parse(&["me", "credential", "set", "x", "--value", "ghp_secret"])
            .unwrap_err()
            .to_string();
        assert!(!error.contains("ghp_secret"), "{error}");
    }

    #[tokio::test]
    async fn a_literal_value_is_refused_and_never_sent() {
        let cli = parse(&[
            "me",
            "--node",
            "http://127.0.0.1:9",
            "credential",
            "set",
            "github-pat",
            "--value",
            "value:ghp_literal",
        ])
        .unwrap();
        let Command::Me(args) = cli.command else {
            panic!("not me")
        };
        let environment = BTreeMap::from([(USER_TOKEN_VARIABLE.to_owned(), "tok".to_owned())]);
        let secrets = SecretResolver::new(&environment, Box::new(std::io::empty()));
        let error = run(args, &cli.connection, &environment, &secrets)
            .await
            .unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(!error.to_string().contains("ghp_literal"), "{error}");
    }

    #[tokio::test]
    async fn without_a_node_or_a_token_nothing_is_sent() {
        let environment = BTreeMap::new();
        let secrets = SecretResolver::new(&environment, Box::new(std::io::empty()));
        let cli = parse(&["me", "links", "list"]).unwrap();
        let Command::Me(args) = cli.command else {
            panic!("not me")
        };
        let error = run(args, &cli.connection, &environment, &secrets)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("--node"), "{error}");
        let cli = parse(&["me", "--node", "http://127.0.0.1:9", "links", "list"]).unwrap();
        let Command::Me(args) = cli.command else {
            panic!("not me")
        };
        let error = run(args, &cli.connection, &environment, &secrets)
            .await
            .unwrap_err();
        assert!(error.to_string().contains(USER_TOKEN_VARIABLE), "{error}");
    }

    #[test]
    fn ids_are_single_path_segments() {
        assert!(segment("github-pat").is_ok());
        assert!(segment("..").is_err());
        assert!(segment("a/b").is_err());
        assert!(segment("").is_err());
    }

    #[test]
    fn tables_show_no_value() {
        let answer = json!({"user": {"identity_provider": "corp", "subject": "alice"},
            "credentials": [{"credential_id": "github-pat", "description": "PAT",
                             "servers": ["tools"], "own_value": true, "org_value": false}]});
        let text = credentials_text(&answer);
        assert!(text.starts_with("user alice at corp\n"), "{text}");
        assert!(
            text.contains("github-pat  yes    no        tools    PAT"),
            "{text}"
        );
        let answer = json!({"user": {"identity_provider": "corp", "subject": "alice"},
            "links": [{"app_id": "github", "app": "GitHub", "status": "connected",
                       "scope": "repo", "connected_at": 0, "expires_at": 0, "reason": ""}]});
        let text = links_text(&answer);
        assert!(text.contains("github  GitHub  connected  repo"), "{text}");
    }
}

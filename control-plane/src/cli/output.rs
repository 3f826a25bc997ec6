//! Human-readable rendering: tables, blocks and the plan of an `apply`. Every function
//! returns a `String`, so tests read exactly what a user would see.
//!
//! A secret is only ever shown as `set (hmac-sha256:...)` or `unset`. Text that comes
//! from the control plane passes through [`printable`] first: a description or an event
//! summary could otherwise carry terminal escape sequences to the admin's screen.

use std::fmt::Write as _;

use portcullis_proto::v1 as proto;
use serde::Serialize;

/// How a command prints what it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
    Yaml,
}

/// Control characters (ANSI escapes, carriage returns that overwrite a line) are replaced,
/// so nothing read from the control plane can drive the terminal.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        printable(text)
    }
}

fn list(values: &[String]) -> String {
    if values.is_empty() {
        "-".to_owned()
    } else {
        printable(&values.join(" "))
    }
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

/// The status of a secret as an admin read returns it. A plaintext arm is never shown,
/// even if a misbehaving server sent one.
pub fn secret_status(secret: Option<&proto::Secret>) -> String {
    match secret.and_then(|secret| secret.value.as_ref()) {
        Some(proto::secret::Value::Status(status)) if status.set => {
            format!("set ({})", printable(&status.fingerprint))
        }
        Some(proto::secret::Value::Status(_)) | None => "unset".to_owned(),
        Some(proto::secret::Value::Plaintext(_)) => "set (value hidden)".to_owned(),
    }
}

fn user_status(status: Option<&proto::SecretStatus>) -> String {
    match status {
        Some(status) if status.set => format!("set ({})", printable(&status.fingerprint)),
        Some(_) | None => "unset".to_owned(),
    }
}

/// A left-aligned table with a header row, columns two spaces apart.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|cell| (*cell).to_owned()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(column))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                if column + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let padding = widths[column].saturating_sub(cell.chars().count());
                    line.push_str(cell);
                    line.push_str(&" ".repeat(padding + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Key/value lines under a title, keys aligned.
struct Block {
    lines: Vec<(String, String)>,
}

impl Block {
    fn new() -> Self {
        Self { lines: Vec::new() }
    }

    fn line(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.lines.push((key.into(), value.into()));
    }

    fn render(&self, indent: usize) -> String {
        self.render_aligned(indent, 0)
    }

    /// Renders with keys padded to at least `min_width`, so blocks printed one after
    /// another line up.
    fn render_aligned(&self, indent: usize, min_width: usize) -> String {
        let width = self
            .lines
            .iter()
            .map(|(key, _)| key.chars().count())
            .max()
            .unwrap_or(0)
            .max(min_width);
        let mut out = String::new();
        for (key, value) in &self.lines {
            let _ = writeln!(
                out,
                "{:indent$}{key}:{:padding$} {value}",
                "",
                "",
                padding = width - key.chars().count()
            );
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// Writes.

/// The outcome of a write, with the revisions the next write can pass as
/// `--expected-revision`.
pub fn write_reply(done: &str, kind: &str, id: &str, reply: &proto::WriteReply) -> String {
    format!(
        "{done} {kind} {} (revision {}, {kind} revision {})\n",
        printable(id),
        reply.revision,
        reply.aggregate_revision
    )
}

// ---------------------------------------------------------------------------------------
// Servers.

pub fn transport_name(transport: i32) -> &'static str {
    match proto::Transport::try_from(transport) {
        Ok(proto::Transport::StreamableHttp | proto::Transport::Unspecified) => "streamable_http",
        Ok(proto::Transport::LegacySse) => "legacy_sse",
        Err(_) => "unknown",
    }
}

pub fn agent_auth_summary(agent_auth: Option<&proto::AgentAuth>) -> String {
    match agent_auth.and_then(|agent_auth| agent_auth.mode.as_ref()) {
        Some(proto::agent_auth::Mode::Interactive(interactive)) => {
            format!(
                "interactive ({})",
                printable(&interactive.identity_provider)
            )
        }
        Some(proto::agent_auth::Mode::Passthrough(passthrough)) => {
            if passthrough.jwt_validation.is_some() {
                "passthrough (jwt)".to_owned()
            } else {
                "passthrough".to_owned()
            }
        }
        None => "-".to_owned(),
    }
}

pub fn app_auth_summary(app_auth: Option<&proto::AppAuth>) -> String {
    use proto::app_auth::Kind;
    match app_auth.and_then(|app_auth| app_auth.kind.as_ref()) {
        Some(Kind::OauthAuthorization(config)) => {
            format!("oauth_authorization ({})", printable(&config.app_id))
        }
        Some(Kind::ClientCredentials(_)) => "client_credentials".to_owned(),
        Some(Kind::ApiKey(_)) => "api_key".to_owned(),
        Some(Kind::Bearer(_)) => "bearer".to_owned(),
        Some(Kind::Basic(_)) => "basic".to_owned(),
        Some(Kind::Passthrough(_)) => "passthrough".to_owned(),
        None => "-".to_owned(),
    }
}

pub fn server_table(servers: &[proto::ServerView]) -> String {
    let mut table = Table::new(&[
        "NAME",
        "UPSTREAM",
        "AGENT AUTH",
        "APP AUTH",
        "HEADERS",
        "REVISION",
    ]);
    for view in servers {
        let Some(server) = &view.server else { continue };
        table.row(vec![
            printable(&server.name),
            printable(&server.upstream_url),
            agent_auth_summary(server.agent_auth.as_ref()),
            app_auth_summary(server.app_auth.as_ref()),
            server.outbound_headers.len().to_string(),
            view.aggregate_revision.to_string(),
        ]);
    }
    table.render()
}

pub fn server_list(reply: &proto::ListServersReply) -> String {
    if reply.servers.is_empty() {
        return format!("no servers (revision {})\n", reply.revision);
    }
    server_table(&reply.servers)
}

fn client_credentials_lines(
    block: &mut Block,
    token_url: &str,
    client_id: &str,
    client_secret: Option<&proto::Secret>,
    scopes: &[String],
    audience: &str,
) {
    block.line("token url", printable(token_url));
    block.line("client id", printable(client_id));
    block.line("client secret", secret_status(client_secret));
    block.line("scopes", list(scopes));
    block.line("audience", or_dash(audience));
}

fn app_auth_block(app_auth: Option<&proto::AppAuth>) -> Block {
    use proto::app_auth::Kind;
    let mut block = Block::new();
    match app_auth.and_then(|app_auth| app_auth.kind.as_ref()) {
        Some(Kind::OauthAuthorization(config)) => {
            block.line("app id", printable(&config.app_id));
            block.line("scopes", list(&config.scopes));
        }
        Some(Kind::ClientCredentials(config)) => client_credentials_lines(
            &mut block,
            &config.token_url,
            &config.client_id,
            config.client_secret.as_ref(),
            &config.scopes,
            &config.audience,
        ),
        Some(Kind::ApiKey(config)) => {
            block.line("key name", printable(&config.key_name));
            block.line("key value", secret_status(config.key_value.as_ref()));
            let location = match proto::ApiKeyLocation::try_from(config.location) {
                Ok(proto::ApiKeyLocation::Header) => "header",
                Ok(proto::ApiKeyLocation::Query) => "query",
                Ok(proto::ApiKeyLocation::Unspecified) | Err(_) => "unknown",
            };
            block.line("location", location);
        }
        Some(Kind::Bearer(config)) => block.line("token", secret_status(config.token.as_ref())),
        Some(Kind::Basic(config)) => {
            block.line("username", printable(&config.username));
            block.line("password", secret_status(config.password.as_ref()));
        }
        Some(Kind::Passthrough(_)) => {
            block.line("note", "the caller's own credentials go upstream as sent");
        }
        None => {}
    }
    block
}

fn outbound_source_summary(header: &proto::OutboundHeader) -> (String, Block) {
    use proto::outbound_header::Source;
    let mut block = Block::new();
    let kind = match &header.source {
        Some(Source::ServiceToken(config)) => {
            client_credentials_lines(
                &mut block,
                &config.token_url,
                &config.client_id,
                config.client_secret.as_ref(),
                &config.scopes,
                &config.audience,
            );
            "service_token"
        }
        Some(Source::ForwardCallerToken(_)) => "forward_caller_token",
        Some(Source::OnBehalfOf(config)) => {
            block.line("exchange url", printable(&config.exchange_url));
            block.line("client id", printable(&config.client_id));
            block.line(
                "client secret",
                secret_status(config.client_secret.as_ref()),
            );
            block.line("audience", or_dash(&config.audience));
            block.line("scopes", list(&config.scopes));
            block.line("token type", or_dash(&config.requested_token_type));
            "on_behalf_of"
        }
        Some(Source::VaultCredential(config)) => {
            block.line("credential", printable(&config.credential_id));
            let scope = match proto::CredentialScope::try_from(config.scope) {
                Ok(proto::CredentialScope::OrgWide) => "org_wide",
                Ok(proto::CredentialScope::PerUser) => "per_user",
                Ok(proto::CredentialScope::Unspecified) | Err(_) => "unknown",
            };
            block.line("scope", scope);
            "vault_credential"
        }
        Some(Source::CallerIdentity(config)) => {
            block.line("claim", printable(&config.claim));
            "caller_identity"
        }
        Some(Source::Custom(custom)) => {
            use proto::custom_header::Value;
            match &custom.value {
                Some(Value::StaticValue(text)) => block.line("static value", printable(text)),
                Some(Value::Secret(secret)) => block.line("secret", secret_status(Some(secret))),
                Some(Value::Template(template)) => block.line("template", printable(template)),
                None => {}
            }
            "custom"
        }
        None => "unknown",
    };
    (kind.to_owned(), block)
}

pub fn server_view(view: &proto::ServerView) -> String {
    let Some(server) = &view.server else {
        return "no server in the reply\n".to_owned();
    };
    // The longest top-level key; the app auth line below aligns with the block above.
    const TOP_WIDTH: usize = "allowed origins".len();
    let mut out = format!(
        "server {} (revision {})\n",
        printable(&server.name),
        view.aggregate_revision
    );
    let mut block = Block::new();
    block.line("upstream", printable(&server.upstream_url));
    block.line("transport", transport_name(server.transport));
    block.line("description", or_dash(&server.description));
    block.line("allowed origins", list(&server.allowed_origins));
    block.line("agent auth", agent_auth_summary(server.agent_auth.as_ref()));
    out.push_str(&block.render_aligned(2, TOP_WIDTH));

    let mut agent = Block::new();
    if let Some(agent_auth) = &server.agent_auth {
        match &agent_auth.mode {
            Some(proto::agent_auth::Mode::Interactive(interactive)) => {
                agent.line(
                    "identity provider",
                    printable(&interactive.identity_provider),
                );
                agent.line("scopes", list(&interactive.scopes));
            }
            Some(proto::agent_auth::Mode::Passthrough(passthrough)) => {
                match &passthrough.jwt_validation {
                    Some(validation) => {
                        if validation.jwks_url.is_empty() {
                            agent.line("jwks", "inline json");
                        } else {
                            agent.line("jwks url", printable(&validation.jwks_url));
                        }
                        agent.line("issuer", or_dash(&validation.issuer));
                        agent.line("audience", or_dash(&validation.audience));
                    }
                    None => agent.line(
                        "jwt validation",
                        "off (anyone who reaches the gateway can call this server)",
                    ),
                }
            }
            None => {}
        }
        agent.line(
            "restricted headers",
            list(&agent_auth.restricted_inbound_headers),
        );
    }
    out.push_str(&agent.render(4));

    let mut app = Block::new();
    app.line("app auth", app_auth_summary(server.app_auth.as_ref()));
    out.push_str(&app.render_aligned(2, TOP_WIDTH));
    out.push_str(&app_auth_block(server.app_auth.as_ref()).render(4));

    if server.outbound_headers.is_empty() {
        out.push_str("  outbound headers: none\n");
    } else {
        out.push_str("  outbound headers:\n");
        for header in &server.outbound_headers {
            let (kind, block) = outbound_source_summary(header);
            let prefix = if header.prefix.is_empty() {
                String::new()
            } else {
                format!(", prefix {:?}", printable(&header.prefix))
            };
            let _ = writeln!(
                out,
                "    {}: {kind}{prefix}",
                printable(&header.header_name)
            );
            out.push_str(&block.render(6));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Catalogs.

pub fn identity_provider_table(idps: &[proto::IdentityProvider]) -> String {
    let mut table = Table::new(&["ID", "NAME", "ISSUER", "CLIENT ID", "CLIENT SECRET"]);
    for idp in idps {
        table.row(vec![
            printable(&idp.id),
            or_dash(&idp.display_name),
            printable(&idp.issuer),
            printable(&idp.client_id),
            secret_status(idp.client_secret.as_ref()),
        ]);
    }
    table.render()
}

pub fn identity_provider(idp: &proto::IdentityProvider) -> String {
    let mut out = format!("identity provider {}\n", printable(&idp.id));
    let mut block = Block::new();
    block.line("display name", or_dash(&idp.display_name));
    block.line("issuer", printable(&idp.issuer));
    block.line("client id", printable(&idp.client_id));
    block.line("client secret", secret_status(idp.client_secret.as_ref()));
    block.line("scopes", list(&idp.scopes));
    block.line("user id claim", or_dash(&idp.user_id_claim));
    block.line("email claim", or_dash(&idp.email_claim));
    block.line("groups claim", or_dash(&idp.groups_claim));
    block.line("token resource", or_dash(&idp.token_resource));
    out.push_str(&block.render(2));
    out
}

pub fn oauth_app_table(apps: &[proto::OAuthApp]) -> String {
    let mut table = Table::new(&[
        "APP ID",
        "NAME",
        "AUTHORIZE URL",
        "CLIENT ID",
        "CLIENT SECRET",
    ]);
    for app in apps {
        table.row(vec![
            printable(&app.app_id),
            or_dash(&app.display_name),
            printable(&app.authorize_url),
            printable(&app.client_id),
            secret_status(app.client_secret.as_ref()),
        ]);
    }
    table.render()
}

pub fn oauth_app(app: &proto::OAuthApp) -> String {
    let mut out = format!("oauth app {}\n", printable(&app.app_id));
    let mut block = Block::new();
    block.line("display name", or_dash(&app.display_name));
    block.line("authorize url", printable(&app.authorize_url));
    block.line("token url", printable(&app.token_url));
    block.line("revocation url", or_dash(&app.revocation_url));
    block.line("client id", printable(&app.client_id));
    block.line("client secret", secret_status(app.client_secret.as_ref()));
    block.line("default scopes", list(&app.default_scopes));
    let mut params: Vec<String> = app
        .extra_authorize_params
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    params.sort();
    block.line("extra params", list(&params));
    out.push_str(&block.render(2));
    out
}

pub fn credential_table(credentials: &[proto::StoredCredential]) -> String {
    let mut table = Table::new(&["ID", "DESCRIPTION", "ORG VALUE", "USER VALUES"]);
    for credential in credentials {
        table.row(vec![
            printable(&credential.id),
            or_dash(&credential.description),
            secret_status(credential.org_value.as_ref()),
            credential.user_values.len().to_string(),
        ]);
    }
    table.render()
}

pub fn credential(credential: &proto::StoredCredential) -> String {
    let mut out = format!("credential {}\n", printable(&credential.id));
    let mut block = Block::new();
    block.line("description", or_dash(&credential.description));
    block.line("org value", secret_status(credential.org_value.as_ref()));
    if credential.user_values.is_empty() {
        block.line("user values", "none");
    }
    out.push_str(&block.render(2));
    if !credential.user_values.is_empty() {
        out.push_str("  user values:\n");
        let mut users = Block::new();
        for user in &credential.user_values {
            users.line(printable(&user.user), user_status(user.status.as_ref()));
        }
        out.push_str(&users.render(4));
    }
    out
}

/// The whole configuration as a summary: every server and catalog entry, one line each.
pub fn state(state: &proto::ConfigState) -> String {
    let mut out = format!("configuration at revision {}\n", state.revision);
    let sections: [(&str, usize, String); 4] = [
        ("servers", state.servers.len(), {
            let mut table = Table::new(&["NAME", "UPSTREAM", "AGENT AUTH", "APP AUTH", "HEADERS"]);
            for server in &state.servers {
                table.row(vec![
                    printable(&server.name),
                    printable(&server.upstream_url),
                    agent_auth_summary(server.agent_auth.as_ref()),
                    app_auth_summary(server.app_auth.as_ref()),
                    server.outbound_headers.len().to_string(),
                ]);
            }
            table.render()
        }),
        (
            "identity providers",
            state.identity_providers.len(),
            identity_provider_table(&state.identity_providers),
        ),
        (
            "oauth apps",
            state.oauth_apps.len(),
            oauth_app_table(&state.oauth_apps),
        ),
        (
            "credentials",
            state.credentials.len(),
            credential_table(&state.credentials),
        ),
    ];
    for (title, count, table) in sections {
        let _ = writeln!(out, "\n{title} ({count})");
        if count > 0 {
            out.push_str(&table);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Apply.

pub fn aggregate_kind_name(kind: i32) -> &'static str {
    match proto::AggregateKind::try_from(kind) {
        Ok(proto::AggregateKind::Server) => "server",
        Ok(proto::AggregateKind::IdentityProvider) => "identity-provider",
        Ok(proto::AggregateKind::OauthApp) => "oauth-app",
        Ok(proto::AggregateKind::Credential) => "credential",
        Ok(proto::AggregateKind::Gateway) => "gateway",
        Ok(proto::AggregateKind::Unspecified) | Err(_) => "unknown",
    }
}

fn aggregate(reference: Option<&proto::AggregateRef>) -> String {
    match reference {
        Some(reference) => format!(
            "{} {}",
            aggregate_kind_name(reference.kind),
            printable(&reference.id)
        ),
        None => "unknown".to_owned(),
    }
}

/// The plan of an `apply`, one line per change in the style of a diff: `+` create,
/// `~` update, `-` delete. A single detail goes on the change's line, several go below it.
pub fn planned_changes(changes: &[proto::PlannedChange]) -> String {
    if changes.is_empty() {
        return "no changes\n".to_owned();
    }
    let mut out = String::new();
    for change in changes {
        let (sign, verb) = match proto::ChangeAction::try_from(change.action) {
            Ok(proto::ChangeAction::Create) => ('+', "create"),
            Ok(proto::ChangeAction::Update) => ('~', "update"),
            Ok(proto::ChangeAction::Delete) => ('-', "delete"),
            Ok(proto::ChangeAction::Unspecified) | Err(_) => ('?', "change"),
        };
        let _ = write!(
            out,
            "{sign} {verb} {}",
            aggregate(change.aggregate.as_ref())
        );
        match change.details.as_slice() {
            [] => out.push('\n'),
            [detail] => {
                let _ = writeln!(out, ": {}", printable(detail));
            }
            details => {
                out.push_str(":\n");
                for detail in details {
                    let _ = writeln!(out, "    {}", printable(detail));
                }
            }
        }
    }
    let count = |action: proto::ChangeAction| {
        changes
            .iter()
            .filter(|change| change.action == action as i32)
            .count()
    };
    let _ = writeln!(
        out,
        "plan: {} to create, {} to update, {} to delete",
        count(proto::ChangeAction::Create),
        count(proto::ChangeAction::Update),
        count(proto::ChangeAction::Delete)
    );
    out
}

// ---------------------------------------------------------------------------------------
// Events, fleet, whoami.

pub fn timestamp(time: Option<&prost_types::Timestamp>) -> String {
    let Some(time) = time else {
        return "-".to_owned();
    };
    time::OffsetDateTime::from_unix_timestamp(time.seconds)
        .ok()
        .and_then(|moment| {
            moment
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{}", time.seconds))
}

pub fn events(reply: &proto::GetHistoryReply, next_page_command: &str) -> String {
    if reply.events.is_empty() {
        return "no events\n".to_owned();
    }
    let mut table = Table::new(&[
        "SEQ",
        "TIME",
        "ACTOR",
        "AGGREGATE",
        "REV",
        "EVENT",
        "SUMMARY",
    ]);
    for event in &reply.events {
        table.row(vec![
            event.sequence.to_string(),
            timestamp(event.time.as_ref()),
            or_dash(&event.actor),
            aggregate(event.aggregate.as_ref()),
            event.aggregate_revision.to_string(),
            printable(&event.event_type),
            or_dash(&event.summary),
        ]);
    }
    let mut out = table.render();
    if reply.next_after_sequence != 0 {
        let _ = writeln!(
            out,
            "more: {next_page_command} --after {}",
            reply.next_after_sequence
        );
    }
    out
}

pub fn fleet(reply: &proto::FleetStatusReply) -> String {
    let mut out = format!("latest snapshot version {}\n", reply.latest_version);
    if reply.nodes.is_empty() {
        out.push_str("no nodes\n");
        return out;
    }
    let mut table = Table::new(&[
        "NODE",
        "ADDRESS",
        "CONNECTED",
        "APPLIED",
        "LAST SEEN",
        "SOFTWARE",
        "LAST NACK",
    ]);
    let mut current = 0;
    for node in &reply.nodes {
        let applied = if node.applied_version == reply.latest_version {
            current += 1;
            node.applied_version.to_string()
        } else {
            format!("{} (behind)", node.applied_version)
        };
        let nack = if node.last_nack_version == 0 {
            "-".to_owned()
        } else {
            format!(
                "version {} at {}: {}",
                node.last_nack_version,
                timestamp(node.last_nack_time.as_ref()),
                printable(&node.last_nack_error)
            )
        };
        table.row(vec![
            printable(&node.node_id),
            or_dash(&node.address),
            yes_no(node.connected).to_owned(),
            applied,
            timestamp(node.last_seen.as_ref()),
            or_dash(&node.software_version),
            nack,
        ]);
    }
    out.push_str(&table.render());
    let _ = writeln!(
        out,
        "{} of {} nodes on the latest version",
        current,
        reply.nodes.len()
    );
    out
}

pub fn whoami(reply: &proto::WhoAmIReply) -> String {
    format!(
        "{} (role {})\n",
        printable(&reply.actor),
        printable(&reply.role)
    )
}

// ---------------------------------------------------------------------------------------
// Machine-readable views of replies that are not documents.

#[derive(Debug, Serialize)]
pub struct EventView {
    pub sequence: u64,
    pub event_id: String,
    pub time: String,
    pub actor: String,
    pub aggregate_kind: &'static str,
    pub aggregate_id: String,
    pub aggregate_revision: u64,
    pub event_type: String,
    pub summary: String,
    /// The payload as the control plane rendered it (secrets as fingerprints only).
    pub payload: serde_json::Value,
    pub schema_version: u32,
}

#[derive(Debug, Serialize)]
pub struct EventsView {
    pub events: Vec<EventView>,
    /// Pass as `--after` for the next page; 0 when there is none.
    pub next_after_sequence: u64,
}

impl From<&proto::GetHistoryReply> for EventsView {
    fn from(reply: &proto::GetHistoryReply) -> Self {
        EventsView {
            events: reply
                .events
                .iter()
                .map(|event| EventView {
                    sequence: event.sequence,
                    event_id: event.event_id.clone(),
                    time: timestamp(event.time.as_ref()),
                    actor: event.actor.clone(),
                    aggregate_kind: aggregate_kind_name(
                        event.aggregate.as_ref().map_or(0, |a| a.kind),
                    ),
                    aggregate_id: event
                        .aggregate
                        .as_ref()
                        .map(|a| a.id.clone())
                        .unwrap_or_default(),
                    aggregate_revision: event.aggregate_revision,
                    event_type: event.event_type.clone(),
                    summary: event.summary.clone(),
                    // A payload that is not JSON is kept as a string rather than lost.
                    payload: serde_json::from_str(&event.payload_json)
                        .unwrap_or_else(|_| serde_json::Value::String(event.payload_json.clone())),
                    schema_version: event.schema_version,
                })
                .collect(),
            next_after_sequence: reply.next_after_sequence,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct FleetNodeView {
    pub node_id: String,
    pub address: String,
    pub connected: bool,
    pub applied_version: u64,
    pub last_seen: String,
    pub software_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_nack: Option<NackView>,
}

#[derive(Debug, Serialize)]
pub struct NackView {
    pub version: u64,
    pub time: String,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct FleetView {
    pub latest_version: u64,
    pub nodes: Vec<FleetNodeView>,
}

impl From<&proto::FleetStatusReply> for FleetView {
    fn from(reply: &proto::FleetStatusReply) -> Self {
        FleetView {
            latest_version: reply.latest_version,
            nodes: reply
                .nodes
                .iter()
                .map(|node| FleetNodeView {
                    node_id: node.node_id.clone(),
                    address: node.address.clone(),
                    connected: node.connected,
                    applied_version: node.applied_version,
                    last_seen: timestamp(node.last_seen.as_ref()),
                    software_version: node.software_version.clone(),
                    last_nack: (node.last_nack_version != 0).then(|| NackView {
                        version: node.last_nack_version,
                        time: timestamp(node.last_nack_time.as_ref()),
                        error: node.last_nack_error.clone(),
                    }),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct WhoAmIView {
    pub actor: String,
    pub role: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(
        action: proto::ChangeAction,
        kind: proto::AggregateKind,
        id: &str,
        details: &[&str],
    ) -> proto::PlannedChange {
        proto::PlannedChange {
            action: action as i32,
            aggregate: Some(proto::AggregateRef {
                kind: kind as i32,
                id: id.to_owned(),
            }),
            details: details.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    #[test]
    fn an_empty_plan_says_no_changes() {
        assert_eq!(planned_changes(&[]), "no changes\n");
    }

    #[test]
    fn planned_changes_render_like_a_diff() {
        let changes = [
            change(
                proto::ChangeAction::Create,
                proto::AggregateKind::Server,
                "gmail",
                &[],
            ),
            change(
                proto::ChangeAction::Update,
                proto::AggregateKind::Server,
                "datadog",
                &["app_auth: api_key -> bearer"],
            ),
            change(
                proto::ChangeAction::Update,
                proto::AggregateKind::IdentityProvider,
                "okta",
                &["client_secret: changed", "scopes: openid -> openid email"],
            ),
            change(
                proto::ChangeAction::Delete,
                proto::AggregateKind::Credential,
                "old-key",
                &[],
            ),
        ];
        assert_eq!(
            planned_changes(&changes),
            "+ create server gmail\n\
             ~ update server datadog: app_auth: api_key -> bearer\n\
             ~ update identity-provider okta:\n    client_secret: changed\n    scopes: openid -> openid email\n\
             - delete credential old-key\n\
             plan: 1 to create, 2 to update, 1 to delete\n"
        );
    }

    #[test]
    fn escape_sequences_from_the_server_are_neutralised() {
        let changes = [change(
            proto::ChangeAction::Update,
            proto::AggregateKind::Server,
            "x\u{1b}[2J",
            &["description: \u{1b}]0;owned\u{7}"],
        )];
        let rendered = planned_changes(&changes);
        assert!(!rendered.contains('\u{1b}'), "{rendered:?}");
    }

    #[test]
    fn secrets_show_only_status_and_fingerprint() {
        let set = proto::Secret {
            value: Some(proto::secret::Value::Status(proto::SecretStatus {
                set: true,
                fingerprint: "hmac-sha256:0123456789abcdef".to_owned(),
            })),
        };
        assert_eq!(
            secret_status(Some(&set)),
            "set (hmac-sha256:0123456789abcdef)"
        );
        assert_eq!(secret_status(None), "unset");
        let plaintext = proto::Secret {
            value: Some(proto::secret::Value::Plaintext("hunter2".to_owned())),
        };
        assert!(!secret_status(Some(&plaintext)).contains("hunter2"));
    }

    #[test]
    fn server_view_shows_auth_and_headers_without_secrets() {
        let view = proto::ServerView {
            aggregate_revision: 3,
            server: Some(proto::McpServer {
                name: "datadog".to_owned(),
                upstream_url: "https://dd.example.com/mcp".to_owned(),
                transport: proto::Transport::StreamableHttp as i32,
                agent_auth: Some(proto::AgentAuth {
                    mode: Some(proto::agent_auth::Mode::Passthrough(
                        proto::PassthroughAgent::default(),
                    )),
                    restricted_inbound_headers: vec!["x-internal-*".to_owned()],
                }),
                app_auth: Some(proto::AppAuth {
                    kind: Some(proto::app_auth::Kind::ApiKey(proto::ApiKey {
                        key_name: "x-api-key".to_owned(),
                        key_value: Some(proto::Secret {
                            value: Some(proto::secret::Value::Status(proto::SecretStatus {
                                set: true,
                                fingerprint: "hmac-sha256:00ff".to_owned(),
                            })),
                        }),
                        location: proto::ApiKeyLocation::Header as i32,
                    })),
                }),
                outbound_headers: vec![proto::OutboundHeader {
                    header_name: "x-user".to_owned(),
                    prefix: String::new(),
                    source: Some(proto::outbound_header::Source::CallerIdentity(
                        proto::CallerIdentity {
                            claim: "email".to_owned(),
                        },
                    )),
                }],
                ..proto::McpServer::default()
            }),
        };
        let text = server_view(&view);
        assert!(text.starts_with("server datadog (revision 3)\n"), "{text}");
        assert!(text.contains("key value: set (hmac-sha256:00ff)"), "{text}");
        assert!(text.contains("restricted headers: x-internal-*"), "{text}");
        assert!(text.contains("x-user: caller_identity"), "{text}");
        assert!(text.contains("claim: email"), "{text}");
    }

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&["A", "LONGER"]);
        table.row(vec!["value".to_owned(), "x".to_owned()]);
        assert_eq!(table.render(), "A      LONGER\nvalue  x\n");
    }

    #[test]
    fn fleet_marks_nodes_behind() {
        let reply = proto::FleetStatusReply {
            latest_version: 5,
            nodes: vec![
                proto::FleetNode {
                    node_id: "a".to_owned(),
                    applied_version: 5,
                    connected: true,
                    ..proto::FleetNode::default()
                },
                proto::FleetNode {
                    node_id: "b".to_owned(),
                    applied_version: 4,
                    last_nack_version: 5,
                    last_nack_error: "bad jwks".to_owned(),
                    ..proto::FleetNode::default()
                },
            ],
        };
        let text = fleet(&reply);
        assert!(text.contains("4 (behind)"), "{text}");
        assert!(text.contains("version 5 at -: bad jwks"), "{text}");
        assert!(
            text.ends_with("1 of 2 nodes on the latest version\n"),
            "{text}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Gateway keys.

#[derive(Debug, Serialize)]
pub struct GatewayKeyView {
    pub kind: &'static str,
    pub kid: String,
    pub algorithm: String,
    pub state: &'static str,
    pub created_at_unix: i64,
}

#[derive(Debug, Serialize)]
pub struct GatewayKeysView {
    pub keys: Vec<GatewayKeyView>,
}

fn key_state_name(state: i32) -> &'static str {
    match proto::GatewayKeyState::try_from(state) {
        Ok(proto::GatewayKeyState::Active) => "active",
        Ok(proto::GatewayKeyState::VerifyOnly) => "verify-only",
        Ok(proto::GatewayKeyState::Unspecified) | Err(_) => "unknown",
    }
}

impl From<&proto::GatewayKeys> for GatewayKeysView {
    fn from(keys: &proto::GatewayKeys) -> Self {
        let signing = keys.signing_keys.iter().map(|key| GatewayKeyView {
            kind: "signing",
            kid: key.kid.clone(),
            algorithm: key.algorithm.clone(),
            state: key_state_name(key.state),
            created_at_unix: key.created_at_unix,
        });
        let sealing = keys.sealing_keys.iter().map(|key| GatewayKeyView {
            kind: "sealing",
            kid: key.kid.clone(),
            algorithm: "A256GCM".to_owned(),
            state: key_state_name(key.state),
            created_at_unix: key.created_at_unix,
        });
        Self {
            keys: signing.chain(sealing).collect(),
        }
    }
}

pub fn gateway_keys(view: &GatewayKeysView) -> String {
    let mut out = format!(
        "{:<8} {:<24} {:<8} {:<12} {}\n",
        "KIND", "KID", "ALG", "STATE", "CREATED"
    );
    for key in &view.keys {
        let created = time::OffsetDateTime::from_unix_timestamp(key.created_at_unix)
            .ok()
            .and_then(|time| {
                time.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| key.created_at_unix.to_string());
        out.push_str(&format!(
            "{:<8} {:<24} {:<8} {:<12} {}\n",
            key.kind,
            printable(&key.kid),
            printable(&key.algorithm),
            key.state,
            created
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Audit trail and account links.

fn rfc3339_micros(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|time| {
            time.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| micros.to_string())
}

#[derive(Debug, Serialize)]
pub struct AuditRecordView {
    pub sequence: u64,
    pub hash: String,
    pub event_id: String,
    pub time: String,
    pub kind: String,
    pub source: String,
    pub actor: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub actor_email: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub server: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mcp_method: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub tool: String,
    pub outcome: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub http_status: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub upstream_status: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub credential_kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub credential_id: String,
    pub caller_credential_forwarded: bool,
    pub caller_credential_stripped: bool,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub snapshot_version: u64,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub latency_micros: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub summary: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub request_id: String,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

fn is_zero_u64(value: &u64) -> bool {
    *value == 0
}

impl From<&proto::AuditRecord> for AuditRecordView {
    fn from(record: &proto::AuditRecord) -> Self {
        let event = record.event.clone().unwrap_or_default();
        Self {
            sequence: record.sequence,
            hash: record.hash.clone(),
            event_id: event.event_id,
            time: rfc3339_micros(event.time_unix_micros),
            kind: event.kind,
            source: event.source,
            actor: event.actor,
            actor_email: event.actor_email,
            server: event.server,
            mcp_method: event.mcp_method,
            tool: event.tool,
            outcome: event.outcome,
            http_status: event.http_status,
            upstream_status: event.upstream_status,
            credential_kind: event.credential_kind,
            credential_id: event.credential_id,
            caller_credential_forwarded: event.caller_credential_forwarded,
            caller_credential_stripped: event.caller_credential_stripped,
            snapshot_version: event.snapshot_version,
            latency_micros: event.latency_micros,
            reason: event.reason,
            summary: event.summary,
            request_id: event.request_id,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AuditPageView {
    pub records: Vec<AuditRecordView>,
    pub next_after_sequence: u64,
}

impl From<&proto::AuditPage> for AuditPageView {
    fn from(page: &proto::AuditPage) -> Self {
        Self {
            records: page.records.iter().map(AuditRecordView::from).collect(),
            next_after_sequence: page.next_after_sequence,
        }
    }
}

pub fn audit_page(view: &AuditPageView) -> String {
    if view.records.is_empty() {
        return "no matching audit records\n".to_owned();
    }
    let mut out = format!(
        "{:>6}  {:<20} {:<21} {:<24} {:<12} {:<18} {}\n",
        "SEQ", "TIME", "KIND", "ACTOR", "SERVER", "OUTCOME", "WHAT"
    );
    for record in &view.records {
        let what = if !record.summary.is_empty() {
            record.summary.clone()
        } else {
            let mut parts = Vec::new();
            if !record.mcp_method.is_empty() {
                parts.push(record.mcp_method.clone());
            }
            if !record.tool.is_empty() {
                parts.push(format!("tool {}", record.tool));
            }
            if !record.credential_kind.is_empty() {
                parts.push(format!("via {}", record.credential_kind));
            }
            if !record.reason.is_empty() {
                parts.push(format!("reason {}", record.reason));
            }
            parts.join(", ")
        };
        out.push_str(&format!(
            "{:>6}  {:<20} {:<21} {:<24} {:<12} {:<18} {}\n",
            record.sequence,
            record.time.get(..19).unwrap_or(&record.time),
            printable(&record.kind),
            printable(&record.actor),
            printable(&record.server),
            printable(&record.outcome),
            printable(&what)
        ));
    }
    if view.next_after_sequence != 0 {
        out.push_str(&format!("more: --after {}\n", view.next_after_sequence));
    }
    out
}

#[derive(Debug, Serialize)]
pub struct LinkView {
    pub app_id: String,
    pub identity_provider: String,
    pub subject: String,
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub connected_at: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub refreshed_at: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub expires_at: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

#[derive(Debug, Serialize)]
pub struct LinksView {
    pub links: Vec<LinkView>,
}

fn seconds_time(seconds: i64) -> String {
    if seconds == 0 {
        String::new()
    } else {
        rfc3339_micros(seconds * 1_000_000)
    }
}

impl From<&proto::ListUserLinksReply> for LinksView {
    fn from(reply: &proto::ListUserLinksReply) -> Self {
        Self {
            links: reply
                .links
                .iter()
                .map(|link| LinkView {
                    app_id: link.app_id.clone(),
                    identity_provider: link.identity_provider.clone(),
                    subject: link.subject.clone(),
                    status: link.status.clone(),
                    reason: link.reason.clone(),
                    connected_at: seconds_time(link.connected_at_unix),
                    refreshed_at: seconds_time(link.refreshed_at_unix),
                    expires_at: seconds_time(link.expires_at_unix),
                    scope: link.scope.clone(),
                })
                .collect(),
        }
    }
}

pub fn links(view: &LinksView) -> String {
    if view.links.is_empty() {
        return "no account links\n".to_owned();
    }
    let mut out = format!(
        "{:<16} {:<12} {:<28} {:<10} {}\n",
        "APP", "IDP", "USER", "STATUS", "DETAIL"
    );
    for link in &view.links {
        let detail = if link.reason.is_empty() {
            if link.expires_at.is_empty() {
                String::new()
            } else {
                format!("token expires {}", link.expires_at)
            }
        } else {
            link.reason.clone()
        };
        out.push_str(&format!(
            "{:<16} {:<12} {:<28} {:<10} {}\n",
            printable(&link.app_id),
            printable(&link.identity_provider),
            printable(&link.subject),
            printable(&link.status),
            printable(&detail)
        ));
    }
    out
}

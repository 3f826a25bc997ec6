//! What each command does. Every command first checks its arguments and resolves its
//! secrets, and only then connects: a typo is reported as a usage error (exit 2) even
//! when the control plane is down, and nothing is sent half-built.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use portcullis_proto::v1 as proto;
use serde::Serialize;

use super::args::{
    AgentAuthCommand, AggregateKindArg, AppAuthCommand, AppCommand, AppPutArgs, ApplyArgs,
    AuditCommand, AuditFilterArgs, ClientCredentialsArgs, Command, ConnectionArgs,
    CredentialCommand, CredentialPutArgs, ExportArgs, GatewayCommand, HeaderAddArgs, HeaderCommand,
    HeaderPattern, IdpCommand, IdpPutArgs, LinkCommand, OutputArgs, PageArgs, ReadArgs,
    ServerCommand, ServerCreateArgs, ServerUpdateArgs, WriteArgs,
};
use super::client::{AdminClient, connect};
use super::document::{
    self, AgentAuth, AgentAuthMode, AppAuth, ConfigDocument, CredentialScope, CustomValue,
    Interactive, Jwks, JwtValidation, OutboundHeader, OutboundSource, PassthroughAgent,
};
use super::error::CliError;
use super::output::{self, OutputFormat};
use super::secret_source::{Environment, SecretResolver, read_text_file};

/// The largest document `apply` or `server create -f` reads.
const MAX_DOCUMENT_BYTES: u64 = 16 * 1024 * 1024;

/// Everything a command needs: where to connect, the environment, secrets, and where to
/// print. The connection is opened on first use.
pub struct Session<'a> {
    connection: ConnectionArgs,
    environment: &'a dyn Environment,
    secrets: SecretResolver<'a>,
    out: &'a mut dyn Write,
    client: Option<AdminClient>,
}

impl<'a> Session<'a> {
    pub fn new(
        connection: ConnectionArgs,
        environment: &'a dyn Environment,
        stdin: Box<dyn Read + 'a>,
        out: &'a mut dyn Write,
    ) -> Self {
        Self {
            connection,
            environment,
            secrets: SecretResolver::new(environment, stdin),
            out,
            client: None,
        }
    }

    async fn client(&mut self) -> Result<&mut AdminClient, CliError> {
        if self.client.is_none() {
            self.client = Some(connect(&self.connection, self.environment).await?);
        }
        self.client.as_mut().ok_or_else(|| CliError::Unreachable {
            endpoint: String::new(),
            reason: "no connection".to_owned(),
        })
    }

    fn print(&mut self, text: &str) -> Result<(), CliError> {
        self.out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush())
            .map_err(|source| CliError::Write {
                target: "standard output".to_owned(),
                source,
            })
    }

    fn print_structured<T: Serialize>(
        &mut self,
        format: OutputFormat,
        value: &T,
    ) -> Result<(), CliError> {
        let text = structured(format, value)?;
        self.print(&text)
    }
}

/// JSON (pretty, with a final newline) or YAML.
fn structured<T: Serialize>(format: OutputFormat, value: &T) -> Result<String, CliError> {
    match format {
        OutputFormat::Json => serde_json::to_string_pretty(value)
            .map(|mut text| {
                text.push('\n');
                text
            })
            .map_err(|error| CliError::Encode(error.to_string())),
        OutputFormat::Yaml | OutputFormat::Text => {
            serde_norway::to_string(value).map_err(|error| CliError::Encode(error.to_string()))
        }
    }
}

/// Runs one parsed command line.
pub async fn run(command: Command, session: &mut Session<'_>) -> Result<(), CliError> {
    match command {
        Command::Whoami(output) => whoami(session, output).await,
        Command::Server(command) => server(session, command).await,
        Command::Header(command) => header(session, command).await,
        Command::Idp(command) => idp(session, command).await,
        Command::App(command) => app(session, command).await,
        Command::Credential(command) => credential(session, command).await,
        Command::History(args) => {
            let kind = args
                .kind
                .to_possible_value()
                .map(|value| value.get_name().to_owned())
                .unwrap_or_default();
            let aggregate = proto::AggregateRef {
                kind: match args.kind {
                    AggregateKindArg::Server => proto::AggregateKind::Server,
                    AggregateKindArg::Idp => proto::AggregateKind::IdentityProvider,
                    AggregateKindArg::App => proto::AggregateKind::OauthApp,
                    AggregateKindArg::Credential => proto::AggregateKind::Credential,
                    AggregateKindArg::Gateway => proto::AggregateKind::Gateway,
                } as i32,
                id: args.id.clone(),
            };
            let request = proto::GetHistoryRequest {
                aggregate: Some(aggregate),
                after_sequence: args.page.after,
                limit: args.page.limit,
            };
            let reply = session
                .client()
                .await?
                .get_history(request)
                .await?
                .into_inner();
            let next = format!("portcullisctl history {kind} {}", args.id);
            print_events(session, &reply, &next, args.output)
        }
        Command::Events(args) => events(session, args.page, args.output).await,
        Command::State(args) => state(session, args.read).await,
        Command::Apply(args) => apply(session, args).await,
        Command::Export(args) => export(session, args).await,
        Command::Gateway(command) => gateway(session, command).await,
        Command::Audit(command) => audit(session, command).await,
        Command::Link(command) => link(session, command).await,
        Command::Me(args) => {
            let secrets = &session.secrets;
            let text =
                super::me::run(args, &session.connection, session.environment, secrets).await?;
            session.print(&text)
        }
        Command::Fleet(output) => {
            let reply = session
                .client()
                .await?
                .fleet_status(proto::FleetStatusRequest {})
                .await?
                .into_inner();
            match output.format {
                OutputFormat::Text => session.print(&output::fleet(&reply)),
                format => session.print_structured(format, &output::FleetView::from(&reply)),
            }
        }
    }
}

async fn whoami(session: &mut Session<'_>, output: OutputArgs) -> Result<(), CliError> {
    let reply = session
        .client()
        .await?
        .who_am_i(proto::WhoAmIRequest {})
        .await?
        .into_inner();
    match output.format {
        OutputFormat::Text => session.print(&output::whoami(&reply)),
        format => session.print_structured(
            format,
            &output::WhoAmIView {
                actor: reply.actor,
                role: reply.role,
            },
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Files.

/// Reads a document, `-` meaning standard input. Bounded, so a wrong path (a device, a
/// huge log) fails instead of filling memory.
fn read_document(session: &Session<'_>, path: &Path) -> Result<String, CliError> {
    let read_error = |source| CliError::ReadFile {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        let Some(stdin) = session.secrets.take_stdin() else {
            return Err(CliError::Usage(
                "standard input was already used".to_owned(),
            ));
        };
        stdin
            .take(MAX_DOCUMENT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
    } else {
        std::fs::File::open(path)
            .and_then(|file| file.take(MAX_DOCUMENT_BYTES + 1).read_to_end(&mut bytes))
            .map_err(read_error)?;
    }
    if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(CliError::Usage(format!(
            "{} is larger than {MAX_DOCUMENT_BYTES} bytes",
            path.display()
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| CliError::Usage(format!("{} is not UTF-8 text", path.display())))
}

/// The directory relative `file:` secrets of a document start from: the document's own.
fn document_directory(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn in_file(path: &Path, error: document::DocumentError) -> CliError {
    match error {
        document::DocumentError::Parse(message) => CliError::Document(
            document::DocumentError::Parse(format!("{}: {message}", path.display())),
        ),
        other => CliError::Document(other),
    }
}

// ---------------------------------------------------------------------------------------
// Servers.

#[derive(Serialize)]
struct ServerListView {
    revision: u64,
    servers: Vec<document::Server>,
}

async fn server(session: &mut Session<'_>, command: ServerCommand) -> Result<(), CliError> {
    match command {
        ServerCommand::List(read) => {
            let reply = session
                .client()
                .await?
                .list_servers(proto::ListServersRequest {
                    at_revision: read.at_revision,
                })
                .await?
                .into_inner();
            match read.output.format {
                OutputFormat::Text => session.print(&output::server_list(&reply)),
                format => {
                    let servers = reply
                        .servers
                        .into_iter()
                        .filter_map(|view| view.server)
                        .map(document::Server::from_proto)
                        .collect::<Result<_, _>>()?;
                    session.print_structured(
                        format,
                        &ServerListView {
                            revision: reply.revision,
                            servers,
                        },
                    )
                }
            }
        }
        ServerCommand::Get { name, read } => {
            let view = session
                .client()
                .await?
                .get_server(proto::GetServerRequest {
                    name,
                    at_revision: read.at_revision,
                })
                .await?
                .into_inner();
            match read.output.format {
                OutputFormat::Text => session.print(&output::server_view(&view)),
                format => {
                    let server = view.server.ok_or_else(|| {
                        CliError::NotFound("the reply holds no server".to_owned())
                    })?;
                    session.print_structured(format, &document::Server::from_proto(server)?)
                }
            }
        }
        ServerCommand::Create(args) => {
            let server = create_server_definition(session, args)?;
            let name = server.name.clone();
            let reply = session
                .client()
                .await?
                .create_server(proto::CreateServerRequest {
                    server: Some(server),
                })
                .await?
                .into_inner();
            session.print(&output::write_reply("created", "server", &name, &reply))
        }
        ServerCommand::Update(args) => update_server(session, args).await,
        ServerCommand::Delete { name, write } => {
            let reply = session
                .client()
                .await?
                .delete_server(proto::DeleteServerRequest {
                    name: name.clone(),
                    expected_revision: write.expected_revision,
                })
                .await?
                .into_inner();
            session.print(&output::write_reply("deleted", "server", &name, &reply))
        }
        ServerCommand::SetAgentAuth(args) => {
            let (agent_auth, write) = agent_auth(args.mode)?;
            let open = matches!(
                agent_auth.mode,
                AgentAuthMode::Passthrough(PassthroughAgent {
                    jwt_validation: None
                })
            );
            let reply = session
                .client()
                .await?
                .set_agent_auth(proto::SetAgentAuthRequest {
                    server: args.server.clone(),
                    agent_auth: Some(agent_auth.to_proto()),
                    expected_revision: write.expected_revision,
                })
                .await?
                .into_inner();
            session.print(&output::write_reply(
                "set agent auth of",
                "server",
                &args.server,
                &reply,
            ))?;
            if open {
                session.print(
                    "note: without JWT validation anyone who can reach the gateway can call this server\n",
                )?;
            }
            Ok(())
        }
        ServerCommand::SetAppAuth(args) => {
            let (app_auth, write) = app_auth(args.kind);
            let app_auth = app_auth.to_proto(&session.secrets, "app_auth")?;
            let reply = session
                .client()
                .await?
                .set_app_auth(proto::SetAppAuthRequest {
                    server: args.server.clone(),
                    app_auth: Some(app_auth),
                    expected_revision: write.expected_revision,
                })
                .await?
                .into_inner();
            session.print(&output::write_reply(
                "set app auth of",
                "server",
                &args.server,
                &reply,
            ))
        }
    }
}

fn read_server_file(session: &Session<'_>, path: &Path) -> Result<proto::McpServer, CliError> {
    let text = read_document(session, path)?;
    let server = document::parse_server(&text).map_err(|error| in_file(path, error))?;
    let resolver = SecretResolver::new(session.environment, Box::new(std::io::empty()))
        .with_base_directory(document_directory(path));
    Ok(server.to_proto(&resolver, &format!("servers[{}]", server.name))?)
}

/// The definition `server create` sends: from a file, or from the quick-start flags.
pub fn create_server_definition(
    session: &Session<'_>,
    args: ServerCreateArgs,
) -> Result<proto::McpServer, CliError> {
    if let Some(path) = &args.file {
        return read_server_file(session, path);
    }
    let (Some(name), Some(upstream_url)) = (args.name, args.upstream_url) else {
        return Err(CliError::Usage(
            "server create needs NAME and --upstream-url, or -f FILE".to_owned(),
        ));
    };
    let mode = match (args.identity_provider, args.agent_passthrough) {
        (Some(identity_provider), false) => AgentAuthMode::Interactive(Interactive {
            identity_provider,
            scopes: args.sso_scopes,
        }),
        (None, true) => AgentAuthMode::Passthrough(PassthroughAgent::default()),
        // There is no default on purpose: an open server should be a visible choice.
        _ => {
            return Err(CliError::Usage(
                "choose agent authentication: --identity-provider IDP (interactive SSO) or --agent-passthrough".to_owned(),
            ));
        }
    };
    let app_auth = match (args.oauth_app, args.app_passthrough) {
        (Some(app_id), false) => AppAuth::OAuthAuthorization(document::OAuthAuthorization {
            app_id,
            scopes: args.app_scopes,
        }),
        (None, true) => AppAuth::Passthrough,
        // Passthrough sends the caller's credentials upstream, so it is never implied.
        _ => {
            return Err(CliError::Usage(
                "choose app authentication: --oauth-app APP_ID or --app-passthrough (then `server set-app-auth` for other kinds)".to_owned(),
            ));
        }
    };
    let server = document::Server {
        name,
        upstream_url,
        transport: args.transport,
        description: args.description.unwrap_or_default(),
        allowed_origins: args.allowed_origins,
        agent_auth: AgentAuth {
            mode,
            restricted_inbound_headers: Vec::new(),
        },
        app_auth,
        outbound_headers: Vec::new(),
    };
    Ok(server.to_proto(&session.secrets, "server")?)
}

async fn update_server(session: &mut Session<'_>, args: ServerUpdateArgs) -> Result<(), CliError> {
    if let Some(path) = &args.file {
        let server = read_server_file(session, path)?;
        let name = server.name.clone();
        let reply = session
            .client()
            .await?
            .update_server(proto::UpdateServerRequest {
                server: Some(server),
                expected_revision: args.write.expected_revision,
            })
            .await?
            .into_inner();
        return session.print(&output::write_reply("updated", "server", &name, &reply));
    }
    let Some(name) = args.name else {
        return Err(CliError::Usage(
            "server update needs NAME with flags, or -f FILE".to_owned(),
        ));
    };
    if args.upstream_url.is_none()
        && args.transport.is_none()
        && args.allowed_origins.is_empty()
        && !args.clear_allowed_origins
        && args.description.is_none()
    {
        return Err(CliError::Usage(
            "nothing to change: pass --upstream-url, --transport, --allowed-origin, --clear-allowed-origins or --description, or -f FILE".to_owned(),
        ));
    }
    // UpdateServer replaces the whole definition, so the flags are applied to the current
    // one. Its revision becomes the expected revision: a change made by someone else in
    // between is refused rather than overwritten.
    let view = session
        .client()
        .await?
        .get_server(proto::GetServerRequest {
            name: name.clone(),
            at_revision: None,
        })
        .await?
        .into_inner();
    let current = view
        .server
        .ok_or_else(|| CliError::NotFound(format!("server {name} not found")))?;
    let mut server = document::Server::from_proto(current)?;
    if let Some(upstream_url) = args.upstream_url {
        server.upstream_url = upstream_url;
    }
    if let Some(transport) = args.transport {
        server.transport = Some(transport);
    }
    if args.clear_allowed_origins {
        server.allowed_origins.clear();
    } else if !args.allowed_origins.is_empty() {
        server.allowed_origins = args.allowed_origins;
    }
    if let Some(description) = args.description {
        server.description = description;
    }
    // Secrets read back as status only, so the document holds none: all are kept.
    let server = server.to_proto(&session.secrets, "server")?;
    let reply = session
        .client()
        .await?
        .update_server(proto::UpdateServerRequest {
            server: Some(server),
            expected_revision: Some(
                args.write
                    .expected_revision
                    .unwrap_or(view.aggregate_revision),
            ),
        })
        .await?
        .into_inner();
    session.print(&output::write_reply("updated", "server", &name, &reply))
}

/// The agent auth a `set-agent-auth` command line asks for.
pub fn agent_auth(command: AgentAuthCommand) -> Result<(AgentAuth, WriteArgs), CliError> {
    Ok(match command {
        AgentAuthCommand::Interactive {
            identity_provider,
            scopes,
            restrict,
            write,
        } => (
            AgentAuth {
                mode: AgentAuthMode::Interactive(Interactive {
                    identity_provider,
                    scopes,
                }),
                restricted_inbound_headers: restrict.restricted_inbound_headers,
            },
            write,
        ),
        AgentAuthCommand::Passthrough {
            jwks_url,
            jwks_file,
            issuer,
            audience,
            restrict,
            write,
        } => {
            let jwks = match (jwks_url, jwks_file) {
                (Some(url), None) => Some(Jwks::Url(url)),
                (None, Some(path)) => Some(Jwks::Json(read_text_file(&path)?)),
                (None, None) => None,
                (Some(_), Some(_)) => {
                    return Err(CliError::Usage(
                        "give --jwks-url or --jwks-file, not both".to_owned(),
                    ));
                }
            };
            let jwt_validation = jwks.map(|jwks| JwtValidation {
                jwks,
                issuer,
                audience,
            });
            (
                AgentAuth {
                    mode: AgentAuthMode::Passthrough(PassthroughAgent { jwt_validation }),
                    restricted_inbound_headers: restrict.restricted_inbound_headers,
                },
                write,
            )
        }
    })
}

fn client_credentials(args: ClientCredentialsArgs) -> document::ClientCredentials {
    document::ClientCredentials {
        token_url: args.token_url,
        client_id: args.client_id,
        client_secret: args.client_secret,
        scopes: args.scopes,
        audience: args.audience,
    }
}

/// The app auth a `set-app-auth` command line asks for.
pub fn app_auth(command: AppAuthCommand) -> (AppAuth, WriteArgs) {
    match command {
        AppAuthCommand::OauthAuthorization {
            app_id,
            scopes,
            write,
        } => (
            AppAuth::OAuthAuthorization(document::OAuthAuthorization { app_id, scopes }),
            write,
        ),
        AppAuthCommand::ClientCredentials { credentials, write } => (
            AppAuth::ClientCredentials(client_credentials(credentials)),
            write,
        ),
        AppAuthCommand::ApiKey {
            key_name,
            key_value,
            location,
            write,
        } => (
            AppAuth::ApiKey(document::ApiKey {
                key_name,
                key_value,
                location,
            }),
            write,
        ),
        AppAuthCommand::Bearer { token, write } => {
            (AppAuth::Bearer(document::Bearer { token }), write)
        }
        AppAuthCommand::Basic {
            username,
            password,
            write,
        } => (
            AppAuth::Basic(document::Basic { username, password }),
            write,
        ),
        AppAuthCommand::Passthrough { write } => (AppAuth::Passthrough, write),
    }
}

// ---------------------------------------------------------------------------------------
// Outbound headers.

/// The "+ Add Header" menu: pattern, menu entry, what it does, and its flags.
pub const HEADER_PATTERNS: &[(HeaderPattern, &str, &str, &str)] = &[
    (
        HeaderPattern::ServiceToken,
        "OAuth2 service token",
        "the upstream app needs a service-level OAuth token: the gateway fetches one with client credentials and keeps it fresh",
        "--token-url URL --client-id ID --client-secret SRC [--scope S]... [--audience A]",
    ),
    (
        HeaderPattern::ForwardCallerToken,
        "Forward caller's token",
        "the upstream app needs to know the user from their SSO token: the token the user authenticated with is attached",
        "(none)",
    ),
    (
        HeaderPattern::OnBehalfOf,
        "On behalf of caller",
        "the upstream app needs a token for the current user from another identity provider: the caller's token is exchanged (RFC 8693)",
        "--exchange-url URL --client-id ID --client-secret SRC [--audience A] [--scope S]... [--requested-token-type URN]",
    ),
    (
        HeaderPattern::VaultCredential,
        "Stored API key / credential",
        "a key or token already saved in the token vault, org-wide or matched per user",
        "--credential-id ID [--credential-scope org-wide|per-user]",
    ),
    (
        HeaderPattern::CallerIdentity,
        "Pass caller identity",
        "the upstream app needs the caller's user id or email, taken from their token",
        "--claim CLAIM (e.g. sub, email)",
    ),
    (
        HeaderPattern::Custom,
        "Custom header",
        "none of the above fit: a header with a static value, a secret, or a template over caller claims",
        "--static-value V | --secret SRC | --template 'team={{groups}}'",
    ),
];

fn pattern_name(pattern: HeaderPattern) -> String {
    pattern
        .to_possible_value()
        .map(|value| value.get_name().to_owned())
        .unwrap_or_default()
}

pub fn header_patterns_text() -> String {
    let mut out = String::from(
        "+ Add Header: portcullisctl header add SERVER --pattern PATTERN --name HEADER [--prefix 'Bearer '] [flags]\n\n",
    );
    for (pattern, title, description, flags) in HEADER_PATTERNS {
        out.push_str(&format!(
            "{:<22}{title}: {description}\n{:<22}flags: {flags}\n",
            pattern_name(*pattern),
            ""
        ));
    }
    out
}

/// The outbound header a `header add` command line asks for. Flags that belong to another
/// pattern are refused: silently ignoring `--claim` on a service token would leave the
/// admin believing something was configured.
pub fn outbound_header(args: &HeaderAddArgs) -> Result<OutboundHeader, CliError> {
    let pattern = pattern_name(args.pattern);
    let given = [
        ("--token-url", args.token_url.is_some()),
        ("--exchange-url", args.exchange_url.is_some()),
        ("--client-id", args.client_id.is_some()),
        ("--client-secret", args.client_secret.is_some()),
        ("--scope", !args.scopes.is_empty()),
        ("--audience", args.audience.is_some()),
        (
            "--requested-token-type",
            args.requested_token_type.is_some(),
        ),
        ("--credential-id", args.credential_id.is_some()),
        ("--credential-scope", args.credential_scope.is_some()),
        ("--claim", args.claim.is_some()),
        ("--static-value", args.static_value.is_some()),
        ("--secret", args.secret.is_some()),
        ("--template", args.template.is_some()),
    ];
    let allowed: &[&str] = match args.pattern {
        HeaderPattern::ServiceToken => &[
            "--token-url",
            "--client-id",
            "--client-secret",
            "--scope",
            "--audience",
        ],
        HeaderPattern::ForwardCallerToken => &[],
        HeaderPattern::OnBehalfOf => &[
            "--exchange-url",
            "--client-id",
            "--client-secret",
            "--scope",
            "--audience",
            "--requested-token-type",
        ],
        HeaderPattern::VaultCredential => &["--credential-id", "--credential-scope"],
        HeaderPattern::CallerIdentity => &["--claim"],
        HeaderPattern::Custom => &["--static-value", "--secret", "--template"],
    };
    for (flag, present) in given {
        if present && !allowed.contains(&flag) {
            return Err(CliError::Usage(format!(
                "{flag} does not apply to --pattern {pattern}"
            )));
        }
    }
    let required = |value: &Option<String>, flag: &str| {
        value
            .clone()
            .ok_or_else(|| CliError::Usage(format!("--pattern {pattern} needs {flag}")))
    };
    let source = match args.pattern {
        HeaderPattern::ServiceToken => OutboundSource::ServiceToken(document::ClientCredentials {
            token_url: required(&args.token_url, "--token-url")?,
            client_id: required(&args.client_id, "--client-id")?,
            client_secret: args.client_secret.clone(),
            scopes: args.scopes.clone(),
            audience: args.audience.clone(),
        }),
        HeaderPattern::ForwardCallerToken => OutboundSource::ForwardCallerToken,
        HeaderPattern::OnBehalfOf => OutboundSource::OnBehalfOf(document::OnBehalfOf {
            exchange_url: required(&args.exchange_url, "--exchange-url")?,
            client_id: required(&args.client_id, "--client-id")?,
            client_secret: args.client_secret.clone(),
            audience: args.audience.clone(),
            scopes: args.scopes.clone(),
            requested_token_type: args.requested_token_type.clone(),
        }),
        HeaderPattern::VaultCredential => {
            OutboundSource::VaultCredential(document::VaultCredential {
                credential_id: required(&args.credential_id, "--credential-id")?,
                scope: args.credential_scope.unwrap_or(CredentialScope::OrgWide),
            })
        }
        HeaderPattern::CallerIdentity => OutboundSource::CallerIdentity(document::CallerIdentity {
            claim: required(&args.claim, "--claim")?,
        }),
        HeaderPattern::Custom => {
            OutboundSource::Custom(match (&args.static_value, &args.secret, &args.template) {
                (Some(value), None, None) => CustomValue::Static(value.clone()),
                (None, Some(secret), None) => CustomValue::Secret(Some(secret.clone())),
                (None, None, Some(template)) => CustomValue::Template(template.clone()),
                _ => {
                    return Err(CliError::Usage(
                        "--pattern custom needs exactly one of --static-value, --secret and --template".to_owned(),
                    ));
                }
            })
        }
    };
    Ok(OutboundHeader {
        header_name: args.name.clone(),
        prefix: args.prefix.clone(),
        source,
    })
}

async fn header(session: &mut Session<'_>, command: HeaderCommand) -> Result<(), CliError> {
    match command {
        HeaderCommand::Patterns => session.print(&header_patterns_text()),
        HeaderCommand::Add(args) => {
            let header = outbound_header(&args)?;
            let kind = header.source.kind_name();
            let header = header.to_proto(
                &session.secrets,
                &format!("outbound_headers[{}]", args.name),
            )?;
            let reply = session
                .client()
                .await?
                .put_outbound_header(proto::PutOutboundHeaderRequest {
                    server: args.server.clone(),
                    header: Some(header),
                    expected_revision: args.write.expected_revision,
                })
                .await?
                .into_inner();
            session.print(&output::write_reply(
                &format!("put {kind} header {} on", args.name),
                "server",
                &args.server,
                &reply,
            ))
        }
        HeaderCommand::Remove {
            server,
            name,
            write,
        } => {
            let reply = session
                .client()
                .await?
                .remove_outbound_header(proto::RemoveOutboundHeaderRequest {
                    server: server.clone(),
                    header_name: name.clone(),
                    expected_revision: write.expected_revision,
                })
                .await?
                .into_inner();
            session.print(&output::write_reply(
                &format!("removed header {name} from"),
                "server",
                &server,
                &reply,
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Catalogs. There is no per-entry read RPC: gets and lists read the state (at a revision
// if asked) and pick the entries.

async fn read_state(
    session: &mut Session<'_>,
    at_revision: Option<u64>,
) -> Result<proto::ConfigState, CliError> {
    Ok(session
        .client()
        .await?
        .get_state(proto::GetStateRequest { at_revision })
        .await?
        .into_inner())
}

fn delete_request(id: &str, write: WriteArgs) -> proto::DeleteCatalogEntryRequest {
    proto::DeleteCatalogEntryRequest {
        id: id.to_owned(),
        expected_revision: write.expected_revision,
    }
}

pub fn identity_provider_definition(args: IdpPutArgs) -> document::IdentityProvider {
    document::IdentityProvider {
        id: args.id,
        display_name: args.display_name.unwrap_or_default(),
        issuer: args.issuer,
        client_id: args.client_id,
        client_secret: args.client_secret,
        scopes: args.scopes,
        user_id_claim: args.user_id_claim,
        email_claim: args.email_claim,
        groups_claim: args.groups_claim,
        token_resource: args.token_resource,
    }
}

async fn idp(session: &mut Session<'_>, command: IdpCommand) -> Result<(), CliError> {
    match command {
        IdpCommand::Put(args) => {
            let write = args.write;
            let idp = identity_provider_definition(*args);
            let id = idp.id.clone();
            let idp = idp.to_proto(&session.secrets, "identity_provider")?;
            let reply = session
                .client()
                .await?
                .put_identity_provider(proto::PutIdentityProviderRequest {
                    identity_provider: Some(idp),
                    expected_revision: write.expected_revision,
                })
                .await?
                .into_inner();
            session.print(&output::write_reply(
                "put",
                "identity provider",
                &id,
                &reply,
            ))
        }
        IdpCommand::Get { id, read } => {
            let state = read_state(session, read.at_revision).await?;
            let idp = state
                .identity_providers
                .into_iter()
                .find(|idp| idp.id == id)
                .ok_or_else(|| CliError::NotFound(format!("identity provider {id} not found")))?;
            match read.output.format {
                OutputFormat::Text => session.print(&output::identity_provider(&idp)),
                format => {
                    session.print_structured(format, &document::IdentityProvider::from_proto(idp))
                }
            }
        }
        IdpCommand::List(read) => {
            let state = read_state(session, read.at_revision).await?;
            match read.output.format {
                OutputFormat::Text if state.identity_providers.is_empty() => {
                    session.print("no identity providers\n")
                }
                OutputFormat::Text => {
                    session.print(&output::identity_provider_table(&state.identity_providers))
                }
                format => {
                    let list: Vec<_> = state
                        .identity_providers
                        .into_iter()
                        .map(document::IdentityProvider::from_proto)
                        .collect();
                    session.print_structured(format, &list)
                }
            }
        }
        IdpCommand::Delete { id, write } => {
            let reply = session
                .client()
                .await?
                .delete_identity_provider(delete_request(&id, write))
                .await?
                .into_inner();
            session.print(&output::write_reply(
                "deleted",
                "identity provider",
                &id,
                &reply,
            ))
        }
    }
}

pub fn oauth_app_definition(args: AppPutArgs) -> Result<document::OAuthApp, CliError> {
    let mut extra_authorize_params = BTreeMap::new();
    for (key, value) in args.params {
        if extra_authorize_params.insert(key.clone(), value).is_some() {
            return Err(CliError::Usage(format!("--param {key} is given twice")));
        }
    }
    Ok(document::OAuthApp {
        app_id: args.app_id,
        display_name: args.display_name.unwrap_or_default(),
        authorize_url: args.authorize_url,
        token_url: args.token_url,
        revocation_url: args.revocation_url,
        client_id: args.client_id,
        client_secret: args.client_secret,
        default_scopes: args.scopes,
        extra_authorize_params,
        token_endpoint_auth_method: args.token_endpoint_auth_method,
    })
}

async fn app(session: &mut Session<'_>, command: AppCommand) -> Result<(), CliError> {
    match command {
        AppCommand::Put(args) => {
            let write = args.write;
            let app = oauth_app_definition(*args)?;
            let id = app.app_id.clone();
            let app = app.to_proto(&session.secrets, "oauth_app")?;
            let reply = session
                .client()
                .await?
                .put_o_auth_app(proto::PutOAuthAppRequest {
                    oauth_app: Some(app),
                    expected_revision: write.expected_revision,
                })
                .await?
                .into_inner();
            session.print(&output::write_reply("put", "oauth app", &id, &reply))
        }
        AppCommand::Get { app_id, read } => {
            let state = read_state(session, read.at_revision).await?;
            let app = state
                .oauth_apps
                .into_iter()
                .find(|app| app.app_id == app_id)
                .ok_or_else(|| CliError::NotFound(format!("oauth app {app_id} not found")))?;
            match read.output.format {
                OutputFormat::Text => session.print(&output::oauth_app(&app)),
                format => session.print_structured(format, &document::OAuthApp::from_proto(app)),
            }
        }
        AppCommand::List(read) => {
            let state = read_state(session, read.at_revision).await?;
            match read.output.format {
                OutputFormat::Text if state.oauth_apps.is_empty() => {
                    session.print("no oauth apps\n")
                }
                OutputFormat::Text => session.print(&output::oauth_app_table(&state.oauth_apps)),
                format => {
                    let list: Vec<_> = state
                        .oauth_apps
                        .into_iter()
                        .map(document::OAuthApp::from_proto)
                        .collect();
                    session.print_structured(format, &list)
                }
            }
        }
        AppCommand::Delete { app_id, write } => {
            let reply = session
                .client()
                .await?
                .delete_o_auth_app(delete_request(&app_id, write))
                .await?
                .into_inner();
            session.print(&output::write_reply(
                "deleted",
                "oauth app",
                &app_id,
                &reply,
            ))
        }
    }
}

/// A credential for `-o json|yaml`: statuses, never values.
#[derive(Serialize)]
struct CredentialView {
    id: String,
    description: String,
    org_value: String,
    user_values: BTreeMap<String, String>,
}

impl From<proto::StoredCredential> for CredentialView {
    fn from(credential: proto::StoredCredential) -> Self {
        CredentialView {
            org_value: output::secret_status(credential.org_value.as_ref()),
            user_values: credential
                .user_values
                .into_iter()
                .map(|user| {
                    let status = match user.status {
                        Some(status) if status.set => format!("set ({})", status.fingerprint),
                        Some(_) | None => "unset".to_owned(),
                    };
                    (user.user, status)
                })
                .collect(),
            id: credential.id,
            description: credential.description,
        }
    }
}

async fn credential(session: &mut Session<'_>, command: CredentialCommand) -> Result<(), CliError> {
    match command {
        CredentialCommand::Put(args) => put_credential(session, args).await,
        CredentialCommand::Get { id, read } => {
            let state = read_state(session, read.at_revision).await?;
            let credential = state
                .credentials
                .into_iter()
                .find(|credential| credential.id == id)
                .ok_or_else(|| CliError::NotFound(format!("credential {id} not found")))?;
            match read.output.format {
                OutputFormat::Text => session.print(&output::credential(&credential)),
                format => session.print_structured(format, &CredentialView::from(credential)),
            }
        }
        CredentialCommand::List(read) => {
            let state = read_state(session, read.at_revision).await?;
            match read.output.format {
                OutputFormat::Text if state.credentials.is_empty() => {
                    session.print("no credentials\n")
                }
                OutputFormat::Text => session.print(&output::credential_table(&state.credentials)),
                format => {
                    let list: Vec<_> = state
                        .credentials
                        .into_iter()
                        .map(CredentialView::from)
                        .collect();
                    session.print_structured(format, &list)
                }
            }
        }
        CredentialCommand::Delete { id, write } => {
            let reply = session
                .client()
                .await?
                .delete_credential(delete_request(&id, write))
                .await?
                .into_inner();
            session.print(&output::write_reply("deleted", "credential", &id, &reply))
        }
        CredentialCommand::SetUser {
            id,
            user,
            value,
            write,
        } => {
            let value = session.secrets.resolve(&value)?;
            let reply = session
                .client()
                .await?
                .set_user_credential(proto::SetUserCredentialRequest {
                    credential_id: id.clone(),
                    user: user.clone(),
                    value: value.expose().to_owned(),
                    expected_revision: write.expected_revision,
                })
                .await?
                .into_inner();
            session.print(&output::write_reply(
                &format!("stored the value of user {user} in"),
                "credential",
                &id,
                &reply,
            ))
        }
        CredentialCommand::DeleteUser { id, user, write } => {
            let reply = session
                .client()
                .await?
                .delete_user_credential(proto::DeleteUserCredentialRequest {
                    credential_id: id.clone(),
                    user: user.clone(),
                    expected_revision: write.expected_revision,
                })
                .await?
                .into_inner();
            session.print(&output::write_reply(
                &format!("deleted the value of user {user} from"),
                "credential",
                &id,
                &reply,
            ))
        }
    }
}

async fn put_credential(
    session: &mut Session<'_>,
    args: CredentialPutArgs,
) -> Result<(), CliError> {
    let org_value = session
        .secrets
        .resolve_optional(args.value.as_ref())?
        .as_ref()
        .map(portcullis_shared::convert::secret_plaintext_proto);
    // PutCredential replaces the description. Rotating a value should not wipe it, so an
    // omitted --description keeps the stored one.
    let description = match args.description {
        Some(description) => description,
        None => read_state(session, None)
            .await?
            .credentials
            .into_iter()
            .find(|credential| credential.id == args.id)
            .map(|credential| credential.description)
            .unwrap_or_default(),
    };
    let reply = session
        .client()
        .await?
        .put_credential(proto::PutCredentialRequest {
            id: args.id.clone(),
            description,
            org_value,
            clear_org_value: args.clear_value,
            expected_revision: args.write.expected_revision,
        })
        .await?
        .into_inner();
    session.print(&output::write_reply("put", "credential", &args.id, &reply))
}

// ---------------------------------------------------------------------------------------
// History, state, apply, export.

fn print_events(
    session: &mut Session<'_>,
    reply: &proto::GetHistoryReply,
    next_page_command: &str,
    output: OutputArgs,
) -> Result<(), CliError> {
    match output.format {
        OutputFormat::Text => session.print(&output::events(reply, next_page_command)),
        format => session.print_structured(format, &output::EventsView::from(reply)),
    }
}

async fn events(
    session: &mut Session<'_>,
    page: PageArgs,
    output: OutputArgs,
) -> Result<(), CliError> {
    let reply = session
        .client()
        .await?
        .list_events(proto::ListEventsRequest {
            after_sequence: page.after,
            limit: page.limit,
        })
        .await?
        .into_inner();
    print_events(session, &reply, "portcullisctl events", output)
}

async fn state(session: &mut Session<'_>, read: ReadArgs) -> Result<(), CliError> {
    let state = read_state(session, read.at_revision).await?;
    match read.output.format {
        OutputFormat::Text => session.print(&output::state(&state)),
        format => {
            let document = ConfigDocument::from_proto(state)?;
            session.print_structured(format, &document)
        }
    }
}

async fn apply(session: &mut Session<'_>, args: ApplyArgs) -> Result<(), CliError> {
    let text = read_document(session, &args.file)?;
    let document = document::parse_document(&text).map_err(|error| in_file(&args.file, error))?;
    let resolver = SecretResolver::new(session.environment, Box::new(std::io::empty()))
        .with_base_directory(document_directory(&args.file));
    let desired = document.to_proto(&resolver)?;

    // The plan comes from the control plane (a dry run), so what is shown is what its
    // own diff says, not a guess made here.
    let plan = session
        .client()
        .await?
        .apply(proto::ApplyRequest {
            desired: Some(desired.clone()),
            dry_run: true,
            prune: args.prune,
            expected_revision: args.expected_revision,
        })
        .await?
        .into_inner();
    session.print(&output::planned_changes(&plan.changes))?;
    if plan.changes.is_empty() {
        return Ok(());
    }
    if args.dry_run {
        return session.print(&format!(
            "dry run: nothing applied (configuration at revision {})\n",
            plan.revision
        ));
    }
    // Applied against the revision the plan was made at: if anything changed since, the
    // control plane refuses (aborted) instead of applying a plan nobody saw.
    let reply = session
        .client()
        .await?
        .apply(proto::ApplyRequest {
            desired: Some(desired),
            dry_run: false,
            prune: args.prune,
            expected_revision: Some(args.expected_revision.unwrap_or(plan.revision)),
        })
        .await?
        .into_inner();
    if reply.applied {
        session.print(&format!("applied: revision {}\n", reply.revision))
    } else {
        session.print(&format!(
            "nothing applied (configuration at revision {})\n",
            reply.revision
        ))
    }
}

/// The text `export` writes: a comment saying what it is, then the document.
pub fn export_text(state: proto::ConfigState) -> Result<String, CliError> {
    let revision = state.revision;
    let document = ConfigDocument::from_proto(state)?;
    let body = document::to_yaml(&document)?;
    Ok(format!(
        "# portcullis configuration at revision {revision}\n\
         # secrets are left out: an absent secret keeps the stored value when applied\n\
         {body}"
    ))
}

async fn export(session: &mut Session<'_>, args: ExportArgs) -> Result<(), CliError> {
    let state = read_state(session, args.at_revision).await?;
    let revision = state.revision;
    let text = export_text(state)?;
    match &args.output {
        None => session.print(&text),
        Some(path) => {
            std::fs::write(path, text).map_err(|source| CliError::Write {
                target: path.display().to_string(),
                source,
            })?;
            session.print(&format!(
                "exported revision {revision} to {}\n",
                path.display()
            ))
        }
    }
}

async fn gateway(session: &mut Session<'_>, command: GatewayCommand) -> Result<(), CliError> {
    match command {
        GatewayCommand::Keys(output) => {
            let keys = session
                .client()
                .await?
                .list_gateway_keys(proto::ListGatewayKeysRequest {})
                .await?
                .into_inner();
            let view = output::GatewayKeysView::from(&keys);
            match output.format {
                OutputFormat::Text => session.print(&output::gateway_keys(&view)),
                format => session.print_structured(format, &view),
            }
        }
        GatewayCommand::Rotate { signing, sealing } => {
            let reply = session
                .client()
                .await?
                .rotate_gateway_keys(proto::RotateGatewayKeysRequest { signing, sealing })
                .await?
                .into_inner();
            let which = match (signing, sealing) {
                (true, false) => "signing key",
                (false, true) => "sealing key",
                _ => "signing and sealing keys",
            };
            session.print(&format!(
                "rotated the gateway {which} (revision {}); the previous keys verify until retired\n",
                reply.revision
            ))
        }
        GatewayCommand::Retire { kid } => {
            let reply = session
                .client()
                .await?
                .retire_gateway_key(proto::RetireGatewayKeyRequest { kid: kid.clone() })
                .await?
                .into_inner();
            session.print(&output::write_reply("retired", "gateway key", &kid, &reply))
        }
        GatewayCommand::RevokeUser {
            identity_provider,
            subject,
        } => {
            let reply = session
                .client()
                .await?
                .revoke_user_sessions(proto::RevokeUserSessionsRequest {
                    identity_provider,
                    subject: subject.clone(),
                })
                .await?
                .into_inner();
            session.print(&format!(
                "signed {} out everywhere (revision {})\n",
                output::printable(&subject),
                reply.revision
            ))
        }
    }
}

fn parse_time(flag: &str, value: &Option<String>) -> Result<i64, CliError> {
    match value {
        None => Ok(0),
        Some(text) => {
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map(|time| (time.unix_timestamp_nanos() / 1000) as i64)
                .map_err(|error| {
                    CliError::Usage(format!("--{flag}: not an RFC 3339 time: {error}"))
                })
        }
    }
}

fn audit_query(
    filters: &AuditFilterArgs,
    after: u64,
    limit: u32,
) -> Result<proto::AuditQuery, CliError> {
    Ok(proto::AuditQuery {
        actor: filters.actor.clone().unwrap_or_default(),
        server: filters.server.clone().unwrap_or_default(),
        tool: filters.tool.clone().unwrap_or_default(),
        outcome: filters.outcome.clone().unwrap_or_default(),
        kind: filters.kind.clone().unwrap_or_default(),
        from_unix_micros: parse_time("from", &filters.from)?,
        to_unix_micros: parse_time("to", &filters.to)?,
        after_sequence: after,
        limit,
    })
}

async fn audit(session: &mut Session<'_>, command: AuditCommand) -> Result<(), CliError> {
    match command {
        AuditCommand::Query(args) => {
            let query = audit_query(&args.filters, args.after, args.limit)?;
            let page = session
                .client()
                .await?
                .query_audit(query)
                .await?
                .into_inner();
            let view = output::AuditPageView::from(&page);
            match args.output.format {
                OutputFormat::Text => session.print(&output::audit_page(&view)),
                format => session.print_structured(format, &view),
            }
        }
        AuditCommand::Export { filters, out } => {
            let mut after = 0;
            let mut lines = String::new();
            loop {
                let query = audit_query(&filters, after, 1000)?;
                let page = session
                    .client()
                    .await?
                    .query_audit(query)
                    .await?
                    .into_inner();
                for record in &page.records {
                    let view = output::AuditRecordView::from(record);
                    lines.push_str(
                        &serde_json::to_string(&view)
                            .map_err(|error| CliError::Usage(error.to_string()))?,
                    );
                    lines.push('\n');
                }
                if page.next_after_sequence == 0 {
                    break;
                }
                after = page.next_after_sequence;
            }
            match out {
                Some(path) => std::fs::write(&path, lines).map_err(|error| {
                    CliError::Usage(format!("cannot write {}: {error}", path.display()))
                }),
                None => session.print(&lines),
            }
        }
        AuditCommand::Verify => {
            let reply = session
                .client()
                .await?
                .verify_audit(proto::VerifyAuditRequest {})
                .await?
                .into_inner();
            let mut text = format!("{} records checked: ", reply.records_checked);
            if reply.intact {
                text.push_str("the chain is intact\n");
                session.print(&text)
            } else {
                text.push_str("the chain is BROKEN\n");
                for problem in &reply.problems {
                    text.push_str(&format!(
                        "  record {}: {} ({})\n",
                        problem.sequence,
                        output::printable(&problem.kind),
                        output::printable(&problem.detail)
                    ));
                }
                session.print(&text)?;
                Err(CliError::Verification(format!(
                    "{} problems in the audit trail",
                    reply.problems.len()
                )))
            }
        }
    }
}

async fn link(session: &mut Session<'_>, command: LinkCommand) -> Result<(), CliError> {
    match command {
        LinkCommand::List {
            app_id,
            identity_provider,
            subject,
            output,
        } => {
            let reply = session
                .client()
                .await?
                .list_user_links(proto::ListUserLinksRequest {
                    app_id: app_id.unwrap_or_default(),
                    identity_provider: identity_provider.unwrap_or_default(),
                    subject: subject.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let view = output::LinksView::from(&reply);
            match output.format {
                OutputFormat::Text => session.print(&output::links(&view)),
                format => session.print_structured(format, &view),
            }
        }
        LinkCommand::Delete {
            app_id,
            identity_provider,
            subject,
        } => {
            let reply = session
                .client()
                .await?
                .delete_user_link(proto::DeleteUserLinkRequest {
                    app_id: app_id.clone(),
                    identity_provider,
                    subject: subject.clone(),
                })
                .await?
                .into_inner();
            if reply.deleted {
                session.print(&format!(
                    "disconnected {} from {}; the tokens are destroyed\n",
                    output::printable(&subject),
                    output::printable(&app_id)
                ))
            } else {
                Err(CliError::NotFound(format!(
                    "{} has no link to {}",
                    output::printable(&subject),
                    output::printable(&app_id)
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::args::Cli;
    use super::*;

    fn header_args(arguments: &[&str]) -> HeaderAddArgs {
        let cli = Cli::try_parse_from(
            ["portcullisctl", "header", "add"]
                .into_iter()
                .chain(arguments.iter().copied()),
        )
        .unwrap();
        let Command::Header(HeaderCommand::Add(args)) = cli.command else {
            panic!("header add expected");
        };
        *args
    }

    #[test]
    fn header_flags_of_another_pattern_are_refused() {
        let args = header_args(&[
            "s",
            "--pattern",
            "service-token",
            "--name",
            "x-svc",
            "--token-url",
            "https://a/token",
            "--client-id",
            "c",
            "--claim",
            "email",
        ]);
        let error = outbound_header(&args).unwrap_err();
        assert_eq!(
            error.to_string(),
            "--claim does not apply to --pattern service-token"
        );
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn header_patterns_need_their_own_flags() {
        let args = header_args(&["s", "--pattern", "caller-identity", "--name", "x-user"]);
        assert_eq!(
            outbound_header(&args).unwrap_err().to_string(),
            "--pattern caller-identity needs --claim"
        );
        let args = header_args(&["s", "--pattern", "custom", "--name", "x-a"]);
        assert!(outbound_header(&args).is_err());
    }

    #[test]
    fn header_add_builds_the_document_header() {
        let args = header_args(&[
            "s",
            "--pattern",
            "vault-credential",
            "--name",
            "x-key",
            "--credential-id",
            "dd",
            "--credential-scope",
            "per-user",
        ]);
        let header = outbound_header(&args).unwrap();
        assert_eq!(
            header.source,
            OutboundSource::VaultCredential(document::VaultCredential {
                credential_id: "dd".to_owned(),
                scope: CredentialScope::PerUser,
            })
        );
    }

    #[test]
    fn the_patterns_menu_lists_every_pattern() {
        let text = header_patterns_text();
        for pattern in HeaderPattern::value_variants() {
            assert!(text.contains(&pattern_name(*pattern)), "{text}");
        }
        assert!(text.contains("Forward caller's token"), "{text}");
        assert_eq!(HEADER_PATTERNS.len(), HeaderPattern::value_variants().len());
    }

    #[test]
    fn export_text_has_a_header_and_no_secrets() {
        let state = proto::ConfigState {
            revision: 9,
            credentials: vec![proto::StoredCredential {
                id: "dd".to_owned(),
                description: "datadog".to_owned(),
                org_value: Some(proto::Secret {
                    value: Some(proto::secret::Value::Status(proto::SecretStatus {
                        set: true,
                        fingerprint: "hmac-sha256:1111".to_owned(),
                    })),
                }),
                user_values: vec![proto::UserCredentialStatus {
                    user: "alice".to_owned(),
                    status: None,
                }],
            }],
            ..proto::ConfigState::default()
        };
        let text = export_text(state).unwrap();
        assert!(text.starts_with("# portcullis configuration at revision 9\n"));
        assert!(!text.contains("hmac-sha256"), "{text}");
        assert!(!text.contains("alice"), "{text}");
        let document = document::parse_document(&text).unwrap();
        assert_eq!(document.credentials[0].org_value, None);
    }

    #[test]
    fn passthrough_reads_the_jwks_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("jwks.json");
        std::fs::write(&path, r#"{"keys":[]}"#).unwrap();
        let cli = Cli::try_parse_from([
            "portcullisctl",
            "server",
            "set-agent-auth",
            "ci",
            "passthrough",
            "--jwks-file",
            path.to_str().unwrap(),
            "--audience",
            "gateway",
        ])
        .unwrap();
        let Command::Server(ServerCommand::SetAgentAuth(args)) = cli.command else {
            panic!("set-agent-auth expected");
        };
        let (agent_auth, _) = agent_auth(args.mode).unwrap();
        let proto_auth = agent_auth.to_proto();
        let Some(proto::agent_auth::Mode::Passthrough(passthrough)) = proto_auth.mode else {
            panic!("passthrough expected");
        };
        let validation = passthrough.jwt_validation.unwrap();
        assert_eq!(validation.jwks_json, r#"{"keys":[]}"#);
        assert_eq!(validation.audience, "gateway");
    }

    #[test]
    fn server_create_flags_require_explicit_auth_choices() {
        let cli = Cli::try_parse_from([
            "portcullisctl",
            "server",
            "create",
            "gmail",
            "--upstream-url",
            "https://gmail.example.com/mcp",
            "--identity-provider",
            "okta",
        ])
        .unwrap();
        let Command::Server(ServerCommand::Create(args)) = cli.command else {
            panic!("create expected");
        };
        let environment = BTreeMap::new();
        let mut out = Vec::new();
        let session = Session::new(
            cli.connection,
            &environment,
            Box::new(std::io::empty()),
            &mut out,
        );
        let error = create_server_definition(&session, args).unwrap_err();
        assert!(
            error.to_string().starts_with("choose app authentication"),
            "{error}"
        );
    }
}

//! Command-line arguments (clap derive). Parsing only: what each command does lives in
//! `commands`.

use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use super::document::{ApiKeyLocation, CredentialScope, Transport};
use super::output::OutputFormat;
use super::secret_source::{SecretSource, SecretSourceError};

/// The default admin API address: the control plane's default listener on loopback.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7300";
pub const ENDPOINT_VARIABLE: &str = "PORTCULLIS_ENDPOINT";
pub const TOKEN_VARIABLE: &str = "PORTCULLIS_TOKEN";

const SECRET_HELP: &str = "env:NAME, file:PATH, stdin or value:LITERAL (value: is for demos \
only: it ends up in shell history); unset keeps the stored value";

/// Administer a Portcullis control plane: MCP servers, their agent and app authentication,
/// outbound headers, catalogs, history and the node fleet.
#[derive(Debug, Parser)]
#[command(name = "portcullisctl", version)]
pub struct Cli {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Admin API of the control plane [env: PORTCULLIS_ENDPOINT] [default: http://127.0.0.1:7300]
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint: Option<String>,
    /// File holding the admin bearer token; without it the token is read from the
    /// environment variable PORTCULLIS_TOKEN. The token is never printed.
    #[arg(long, global = true, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the certificate authority that signed an https endpoint's certificate
    #[arg(long, global = true, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// How long to wait for the control plane, for connecting and for each call
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 30)]
    pub timeout_secs: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show who the control plane thinks you are
    Whoami(OutputArgs),
    /// MCP servers: list, inspect, create, change and delete
    #[command(subcommand)]
    Server(ServerCommand),
    /// Additional outbound headers of a server
    #[command(subcommand)]
    Header(HeaderCommand),
    /// Identity providers for interactive (SSO) agent authentication
    #[command(subcommand)]
    Idp(IdpCommand),
    /// OAuth apps for per-user OAuth 2.1 authorization app auth
    #[command(subcommand)]
    App(AppCommand),
    /// Credentials stored in the token vault
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// The change history of one server or catalog entry, oldest first
    History(HistoryArgs),
    /// The global event log, oldest first
    Events(EventsArgs),
    /// The whole configuration, now or at a past revision
    State(StateArgs),
    /// Make the configuration match a YAML document (shows the plan first)
    Apply(ApplyArgs),
    /// Write the configuration as a YAML document, without secrets
    Export(ExportArgs),
    /// Data-plane nodes and the snapshot version each one runs
    Fleet(OutputArgs),
    /// The gateway's own authorization server: signing and sealing keys, sign-outs
    #[command(subcommand)]
    Gateway(GatewayCommand),
    /// The audit trail: who did what, with which credential, when
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Users' account links to OAuth apps (per-user OAuth app auth)
    #[command(subcommand)]
    Link(LinkCommand),
    /// Yourself, as a user: your account links and your own stored-credential values,
    /// through a node, with your gateway access token (not the admin API)
    Me(MeArgs),
}

pub const NODE_URL_VARIABLE: &str = "PORTCULLIS_NODE_URL";
pub const USER_TOKEN_VARIABLE: &str = "PORTCULLIS_USER_TOKEN";

#[derive(Debug, Args)]
pub struct MeArgs {
    /// The gateway's public URL (a node) [env: PORTCULLIS_NODE_URL]
    #[arg(long = "node", global = true, value_name = "URL")]
    pub node: Option<String>,
    /// File holding your gateway access token (the one your MCP client got by signing
    /// in); without it the token is read from PORTCULLIS_USER_TOKEN. Never printed.
    #[arg(long, global = true, value_name = "PATH")]
    pub user_token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: MeCommand,
}

#[derive(Debug, Subcommand)]
pub enum MeCommand {
    /// Your account links to OAuth apps
    #[command(subcommand)]
    Links(MeLinksCommand),
    /// Your own values of stored credentials (API keys, personal access tokens)
    #[command(subcommand)]
    Credential(MeCredentialCommand),
}

#[derive(Debug, Subcommand)]
pub enum MeLinksCommand {
    /// Your links, with their status (connected, broken) and why
    List(OutputArgs),
    /// Disconnect one of your links; its tokens are destroyed
    Disconnect {
        /// The app id (as `me links list` shows it)
        app: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum MeCredentialCommand {
    /// The stored credentials you may give your own value of, and whether you did
    List(OutputArgs),
    /// Store your own value of a credential; it wins over the org-wide one
    Set {
        /// The credential id
        id: String,
        /// env:NAME, file:PATH or stdin (never the value itself on the command line)
        #[arg(long, value_name = "SRC", value_parser = secret_source_parser())]
        value: SecretSource,
    },
    /// Delete your own value of a credential (the org-wide value applies again)
    Delete {
        /// The credential id
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Records matching the filters, oldest first, one page
    Query(AuditQueryArgs),
    /// Every record matching the filters, as JSON Lines
    Export {
        #[command(flatten)]
        filters: AuditFilterArgs,
        /// Write to this file instead of standard output
        #[arg(short = 'o', long = "out")]
        out: Option<std::path::PathBuf>,
    },
    /// Check the hash chain: finds edited, deleted and reordered records
    Verify,
}

#[derive(Debug, Clone, Args)]
pub struct AuditFilterArgs {
    /// Who: a user subject, an admin token name, or a node
    #[arg(long)]
    pub actor: Option<String>,
    /// The MCP server (its name)
    #[arg(long)]
    pub server: Option<String>,
    /// The tool called (`tools/call`)
    #[arg(long)]
    pub tool: Option<String>,
    /// completed, rejected, upstream_failed, applied, ...
    #[arg(long)]
    pub outcome: Option<String>,
    /// mcp_request, admin_change, account_link, account_unlink, token_refresh_failure,
    /// auth_failure
    #[arg(long)]
    pub kind: Option<String>,
    /// From this time (RFC 3339, inclusive)
    #[arg(long)]
    pub from: Option<String>,
    /// Until this time (RFC 3339, exclusive)
    #[arg(long)]
    pub to: Option<String>,
}

#[derive(Debug, Args)]
pub struct AuditQueryArgs {
    #[command(flatten)]
    pub filters: AuditFilterArgs,
    /// Only records with a sequence number above this one (from the previous page)
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// At most this many records
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
pub enum LinkCommand {
    /// Account links, with their status (connected, broken, missing) and why
    List {
        #[arg(long = "app")]
        app_id: Option<String>,
        #[arg(long = "idp")]
        identity_provider: Option<String>,
        #[arg(long = "user")]
        subject: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Disconnect a user's account link; its tokens are destroyed
    Delete {
        #[arg(long = "app")]
        app_id: String,
        #[arg(long = "idp")]
        identity_provider: String,
        #[arg(long = "user")]
        subject: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// The signing and sealing keys, with their states (private halves are never shown)
    Keys(OutputArgs),
    /// Make new keys active; the previous ones keep verifying until retired
    Rotate {
        /// Rotate the signing key (access tokens for MCP clients)
        #[arg(long)]
        signing: bool,
        /// Rotate the sealing key (codes, registrations, refresh tokens); with neither
        /// flag, both are rotated
        #[arg(long)]
        sealing: bool,
    },
    /// Remove a verify-only key: what it signed or sealed stops being accepted
    Retire { kid: String },
    /// Sign a user out everywhere: every gateway token and grant issued so far is refused
    RevokeUser {
        /// The identity provider the user signs in with
        #[arg(long = "idp")]
        identity_provider: String,
        /// The user's subject (user id) at that identity provider
        subject: String,
    },
}

#[derive(Debug, Clone, Copy, Args)]
pub struct OutputArgs {
    /// Output format
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

#[derive(Debug, Clone, Copy, Args)]
pub struct WriteArgs {
    /// Refuse the write if the entry changed since this revision (optimistic concurrency)
    #[arg(long, value_name = "N")]
    pub expected_revision: Option<u64>,
}

#[derive(Debug, Clone, Copy, Args)]
pub struct ReadArgs {
    /// Read the configuration as it was at this global revision
    #[arg(long = "at", value_name = "REV")]
    pub at_revision: Option<u64>,
    #[command(flatten)]
    pub output: OutputArgs,
}

// ---------------------------------------------------------------------------------------
// Servers.

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// List servers
    List(ReadArgs),
    /// Show one server
    Get {
        name: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Register a server, from flags or from a YAML file with one server definition
    Create(ServerCreateArgs),
    /// Change a server's basic settings, or replace its whole definition from a file
    Update(ServerUpdateArgs),
    /// Delete a server
    Delete {
        name: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Set who may connect to a server (agent authentication)
    SetAgentAuth(SetAgentAuthArgs),
    /// Set the credential the gateway uses towards the app (app authentication)
    SetAppAuth(SetAppAuthArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("agent").args(["identity_provider", "agent_passthrough"])))]
#[command(group(ArgGroup::new("app").args(["oauth_app", "app_passthrough"])))]
pub struct ServerCreateArgs {
    /// Server name: a slug, served at /mcp/NAME
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub name: Option<String>,
    /// YAML file with one server definition (the shape of an entry of `servers` in an
    /// apply document); secrets in it are resolved before sending
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// URL of the MCP server behind the gateway
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    pub upstream_url: Option<String>,
    #[arg(long, value_enum, conflicts_with = "file")]
    pub transport: Option<Transport>,
    /// Browser origin allowed to call the server (repeatable)
    #[arg(
        long = "allowed-origin",
        value_name = "ORIGIN",
        conflicts_with = "file"
    )]
    pub allowed_origins: Vec<String>,
    #[arg(long, conflicts_with = "file")]
    pub description: Option<String>,
    /// Agent auth: interactive SSO through this identity provider
    #[arg(long, value_name = "IDP", conflicts_with = "file")]
    pub identity_provider: Option<String>,
    /// Scope requested at SSO login (repeatable)
    #[arg(
        long = "sso-scope",
        value_name = "SCOPE",
        requires = "identity_provider"
    )]
    pub sso_scopes: Vec<String>,
    /// Agent auth: passthrough without JWT validation (see `server set-agent-auth`)
    #[arg(long, conflicts_with = "file")]
    pub agent_passthrough: bool,
    /// App auth: per-user OAuth 2.1 authorization with this OAuth app
    #[arg(long, value_name = "APP_ID", conflicts_with = "file")]
    pub oauth_app: Option<String>,
    /// Scope requested from the OAuth app (repeatable)
    #[arg(long = "app-scope", value_name = "SCOPE", requires = "oauth_app")]
    pub app_scopes: Vec<String>,
    /// App auth: passthrough (the caller's own credentials go upstream); for other kinds,
    /// create with this and then use `server set-app-auth`
    #[arg(long, conflicts_with = "file")]
    pub app_passthrough: bool,
}

#[derive(Debug, Args)]
pub struct ServerUpdateArgs {
    /// Server to change (with flags); with --file the name comes from the file
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub name: Option<String>,
    /// YAML file with the whole server definition; replaces it
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    #[arg(long, conflicts_with = "file")]
    pub upstream_url: Option<String>,
    #[arg(long, value_enum, conflicts_with = "file")]
    pub transport: Option<Transport>,
    /// Replaces the allowed browser origins (repeatable)
    #[arg(long = "allowed-origin", value_name = "ORIGIN", conflicts_with_all = ["file", "clear_allowed_origins"])]
    pub allowed_origins: Vec<String>,
    /// Removes every allowed browser origin
    #[arg(long, conflicts_with = "file")]
    pub clear_allowed_origins: bool,
    #[arg(long, conflicts_with = "file")]
    pub description: Option<String>,
    #[command(flatten)]
    pub write: WriteArgs,
}

#[derive(Debug, Args)]
pub struct SetAgentAuthArgs {
    pub server: String,
    #[command(subcommand)]
    pub mode: AgentAuthCommand,
}

#[derive(Debug, Subcommand)]
pub enum AgentAuthCommand {
    /// Users sign in through an identity provider (SSO); recommended for people
    Interactive {
        /// Identity provider id from the catalog (`idp list`)
        #[arg(long, value_name = "IDP")]
        identity_provider: String,
        /// Scope requested at login (repeatable)
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        #[command(flatten)]
        restrict: RestrictArgs,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Forward whatever the caller sends; optionally require a valid JWT
    #[command(group(ArgGroup::new("jwks").args(["jwks_url", "jwks_file"])))]
    Passthrough {
        /// Turns on JWT validation with keys from this JWKS URL
        #[arg(long, value_name = "URL")]
        jwks_url: Option<String>,
        /// Turns on JWT validation with keys from this JWKS JSON file
        #[arg(long, value_name = "PATH")]
        jwks_file: Option<PathBuf>,
        /// Expected issuer of the JWT
        #[arg(long, requires = "jwks")]
        issuer: Option<String>,
        /// Expected audience of the JWT
        #[arg(long, requires = "jwks")]
        audience: Option<String>,
        #[command(flatten)]
        restrict: RestrictArgs,
        #[command(flatten)]
        write: WriteArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct RestrictArgs {
    /// Inbound header pattern never forwarded upstream, e.g. 'x-internal-*' (repeatable);
    /// authorization and cookie are always stripped
    #[arg(long = "restrict-header", value_name = "PATTERN")]
    pub restricted_inbound_headers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SetAppAuthArgs {
    pub server: String,
    #[command(subcommand)]
    pub kind: AppAuthCommand,
}

#[derive(Debug, Subcommand)]
pub enum AppAuthCommand {
    /// Each user connects their own account once (OAuth 2.1 authorization code + PKCE)
    OauthAuthorization {
        /// OAuth app id from the catalog (`app list`)
        #[arg(long, value_name = "APP_ID")]
        app_id: String,
        /// Scope requested from the app (repeatable; default: the app's default scopes)
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// A service account: one token for everyone, fetched with client credentials
    ClientCredentials {
        #[command(flatten)]
        credentials: ClientCredentialsArgs,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// A static API key in a header or a query parameter
    ApiKey {
        /// Header or query parameter name, e.g. x-api-key
        #[arg(long, value_name = "NAME")]
        key_name: String,
        #[arg(long, value_name = "SRC", value_parser = secret_source_parser(), help = SECRET_HELP)]
        key_value: Option<SecretSource>,
        #[arg(long, value_enum, default_value_t = ApiKeyLocation::Header)]
        location: ApiKeyLocation,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// A static token sent as Authorization: Bearer
    Bearer {
        #[arg(long, value_name = "SRC", value_parser = secret_source_parser(), help = SECRET_HELP)]
        token: Option<SecretSource>,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Username and password (HTTP Basic)
    Basic {
        #[arg(long)]
        username: String,
        #[arg(long, value_name = "SRC", value_parser = secret_source_parser(), help = SECRET_HELP)]
        password: Option<SecretSource>,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Add no credential: the caller's own Authorization header goes upstream as sent
    Passthrough {
        #[command(flatten)]
        write: WriteArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ClientCredentialsArgs {
    #[arg(long, value_name = "URL")]
    pub token_url: String,
    #[arg(long)]
    pub client_id: String,
    #[arg(long, value_name = "SRC", value_parser = secret_source_parser(), help = SECRET_HELP)]
    pub client_secret: Option<SecretSource>,
    /// Scope to request (repeatable)
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Audience (resource) to request the token for
    #[arg(long)]
    pub audience: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Outbound headers.

#[derive(Debug, Subcommand)]
pub enum HeaderCommand {
    /// Add an outbound header, or replace the one with the same name
    Add(Box<HeaderAddArgs>),
    /// Remove an outbound header
    Remove {
        server: String,
        /// Header name
        name: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// The ready-made header patterns, as in the "+ Add Header" menu
    Patterns,
}

/// The "+ Add Header" menu: each pattern and what it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HeaderPattern {
    /// OAuth2 service token: the gateway fetches a token with client credentials
    ServiceToken,
    /// Forward caller's token: the token the user authenticated with
    ForwardCallerToken,
    /// On behalf of caller: the caller's token exchanged (RFC 8693) for one scoped to the service
    OnBehalfOf,
    /// Stored API key / credential: a credential from the vault, org-wide or per user
    VaultCredential,
    /// Pass caller identity: the caller's user id, email or another claim
    CallerIdentity,
    /// Custom header: a static value, a secret, or a template over caller claims
    Custom,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("custom_value").args(["static_value", "secret", "template"])))]
pub struct HeaderAddArgs {
    pub server: String,
    /// Which ready-made pattern (see `header patterns`)
    #[arg(long, value_enum)]
    pub pattern: HeaderPattern,
    /// Header name, e.g. x-ms-query-source-authorization
    #[arg(long, value_name = "HEADER")]
    pub name: String,
    /// Written before the value; include the space, e.g. --prefix 'Bearer '
    #[arg(long, default_value = "")]
    pub prefix: String,

    /// service-token: token endpoint
    #[arg(
        long,
        value_name = "URL",
        help_heading = "service-token / on-behalf-of"
    )]
    pub token_url: Option<String>,
    /// on-behalf-of: token exchange endpoint
    #[arg(
        long,
        value_name = "URL",
        help_heading = "service-token / on-behalf-of"
    )]
    pub exchange_url: Option<String>,
    #[arg(long, help_heading = "service-token / on-behalf-of")]
    pub client_id: Option<String>,
    #[arg(long, value_name = "SRC", value_parser = secret_source_parser(), help = SECRET_HELP, help_heading = "service-token / on-behalf-of")]
    pub client_secret: Option<SecretSource>,
    /// Scope to request (repeatable)
    #[arg(
        long = "scope",
        value_name = "SCOPE",
        help_heading = "service-token / on-behalf-of"
    )]
    pub scopes: Vec<String>,
    #[arg(long, help_heading = "service-token / on-behalf-of")]
    pub audience: Option<String>,
    /// on-behalf-of: token type to request (default: access token)
    #[arg(
        long,
        value_name = "URN",
        help_heading = "service-token / on-behalf-of"
    )]
    pub requested_token_type: Option<String>,

    /// vault-credential: credential id (`credential list`)
    #[arg(long, value_name = "ID", help_heading = "vault-credential")]
    pub credential_id: Option<String>,
    /// vault-credential: the org-wide value, or each caller's own (falling back to org-wide)
    #[arg(long, value_enum, help_heading = "vault-credential")]
    pub credential_scope: Option<CredentialScope>,

    /// caller-identity: claim of the caller's token, e.g. sub or email
    #[arg(long, help_heading = "caller-identity")]
    pub claim: Option<String>,

    /// custom: a fixed value
    #[arg(long, value_name = "VALUE", help_heading = "custom")]
    pub static_value: Option<String>,
    /// custom: a secret value
    #[arg(long, value_name = "SRC", value_parser = secret_source_parser(), help_heading = "custom")]
    pub secret: Option<SecretSource>,
    /// custom: a template over caller claims, e.g. 'team={{groups}} user={{sub}}'
    #[arg(long, help_heading = "custom")]
    pub template: Option<String>,

    #[command(flatten)]
    pub write: WriteArgs,
}

// ---------------------------------------------------------------------------------------
// Catalogs.

#[derive(Debug, Subcommand)]
pub enum IdpCommand {
    /// Create or replace an identity provider
    Put(Box<IdpPutArgs>),
    /// Show one identity provider
    Get {
        id: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// List identity providers
    List(ReadArgs),
    /// Delete an identity provider (refused while a server uses it)
    Delete {
        id: String,
        #[command(flatten)]
        write: WriteArgs,
    },
}

#[derive(Debug, Args)]
pub struct IdpPutArgs {
    pub id: String,
    /// OIDC issuer URL
    #[arg(long, value_name = "URL")]
    pub issuer: String,
    #[arg(long)]
    pub client_id: String,
    #[arg(long, value_name = "SRC", value_parser = secret_source_parser(), help = SECRET_HELP)]
    pub client_secret: Option<SecretSource>,
    /// Scope requested at login (repeatable; default: openid email profile)
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Claim with the user id (default: sub)
    #[arg(long, value_name = "CLAIM")]
    pub user_id_claim: Option<String>,
    /// Claim with the email (default: email)
    #[arg(long, value_name = "CLAIM")]
    pub email_claim: Option<String>,
    /// Claim with the groups (default: groups)
    #[arg(long, value_name = "CLAIM")]
    pub groups_claim: Option<String>,
    /// RFC 8707 resource to request at login, so the user's IdP token is issued for an
    /// upstream API (for forward-caller-token and on-behalf-of); omit for IdPs that refuse
    /// the parameter (Entra ID v1) and request the upstream's scopes instead
    #[arg(long, value_name = "URL")]
    pub token_resource: Option<String>,
    #[arg(long)]
    pub display_name: Option<String>,
    #[command(flatten)]
    pub write: WriteArgs,
}

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Create or replace an OAuth app
    Put(Box<AppPutArgs>),
    /// Show one OAuth app
    Get {
        app_id: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// List OAuth apps
    List(ReadArgs),
    /// Delete an OAuth app (refused while a server uses it)
    Delete {
        app_id: String,
        #[command(flatten)]
        write: WriteArgs,
    },
}

#[derive(Debug, Args)]
pub struct AppPutArgs {
    pub app_id: String,
    #[arg(long, value_name = "URL")]
    pub authorize_url: String,
    #[arg(long, value_name = "URL")]
    pub token_url: String,
    #[arg(long, value_name = "URL")]
    pub revocation_url: Option<String>,
    #[arg(long)]
    pub client_id: String,
    #[arg(long, value_name = "SRC", value_parser = secret_source_parser(), help = SECRET_HELP)]
    pub client_secret: Option<SecretSource>,
    /// Default scope (repeatable)
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Extra authorization request parameter, e.g. access_type=offline (repeatable)
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub params: Vec<(String, String)>,
    /// How to authenticate at the token endpoint: client_secret_basic (default),
    /// client_secret_post (GitHub, Slack) or none
    #[arg(long)]
    pub token_endpoint_auth_method: Option<String>,
    #[arg(long)]
    pub display_name: Option<String>,
    #[command(flatten)]
    pub write: WriteArgs,
}

#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Create a credential or change its description and org-wide value
    Put(CredentialPutArgs),
    /// Show one credential and which users stored their own value
    Get {
        id: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// List credentials
    List(ReadArgs),
    /// Delete a credential and every value stored under it
    Delete {
        id: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Store one user's own value of a credential
    SetUser {
        id: String,
        /// User id as the identity provider gives it
        user: String,
        #[arg(long, value_name = "SRC", value_parser = secret_source_parser(), help = "env:NAME, file:PATH, stdin or value:LITERAL (value: is for demos only)")]
        value: SecretSource,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Delete one user's own value of a credential
    DeleteUser {
        id: String,
        user: String,
        #[command(flatten)]
        write: WriteArgs,
    },
}

#[derive(Debug, Args)]
pub struct CredentialPutArgs {
    pub id: String,
    #[arg(long)]
    pub description: Option<String>,
    /// The org-wide value
    #[arg(long, value_name = "SRC", value_parser = secret_source_parser(), help = SECRET_HELP, conflicts_with = "clear_value")]
    pub value: Option<SecretSource>,
    /// Remove the org-wide value (users' own values stay)
    #[arg(long)]
    pub clear_value: bool,
    #[command(flatten)]
    pub write: WriteArgs,
}

// ---------------------------------------------------------------------------------------
// History, state, apply.

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AggregateKindArg {
    Server,
    Idp,
    App,
    Credential,
    /// `gateway keys` or `gateway revocations`
    Gateway,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    pub kind: AggregateKindArg,
    pub id: String,
    #[command(flatten)]
    pub page: PageArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Copy, Args)]
pub struct PageArgs {
    /// Only events with a sequence number above this one (from the previous page)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub after: u64,
    /// At most this many events (the control plane caps it at 1000)
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub page: PageArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct StateArgs {
    #[command(flatten)]
    pub read: ReadArgs,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// YAML document to apply; - reads standard input
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Show the plan only
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete servers and catalog entries that are not in the document
    #[arg(long)]
    pub prune: bool,
    /// Refuse if the configuration changed since this global revision
    #[arg(long, value_name = "N")]
    pub expected_revision: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Write to this file instead of standard output
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Export the configuration as it was at this global revision
    #[arg(long = "at", value_name = "REV")]
    pub at_revision: Option<u64>,
}

// ---------------------------------------------------------------------------------------
// Value parsers.

/// Parses a secret source. On failure the argument is not repeated: clap's own value
/// errors quote the value, and a user who typed a bare secret must not see it printed back
/// (nor have it land in a CI log).
#[derive(Debug, Clone, Copy)]
pub struct SecretSourceParser;

pub fn secret_source_parser() -> SecretSourceParser {
    SecretSourceParser
}

impl TypedValueParser for SecretSourceParser {
    type Value = SecretSource;

    fn parse_ref(
        &self,
        command: &clap::Command,
        argument: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<SecretSource, clap::Error> {
        let name =
            argument.map_or_else(|| "a secret".to_owned(), |argument| format!("'{argument}'"));
        let parsed = value
            .to_str()
            .ok_or(SecretSourceError::UnknownSource)
            .and_then(str::parse::<SecretSource>);
        parsed.map_err(|error| {
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("invalid value for {name}: {error}\n"),
            )
            .with_cmd(command)
        })
    }
}

fn parse_key_value(argument: &str) -> Result<(String, String), String> {
    match argument.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err("expected KEY=VALUE".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(arguments: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("portcullisctl").chain(arguments.iter().copied()))
    }

    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn connection_flags_are_global() {
        let cli = parse(&[
            "server",
            "list",
            "--endpoint",
            "http://cp:7300",
            "--token-file",
            "/t",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.connection.endpoint.as_deref(), Some("http://cp:7300"));
        assert_eq!(cli.connection.token_file, Some(PathBuf::from("/t")));
        let Command::Server(ServerCommand::List(read)) = cli.command else {
            panic!("server list expected");
        };
        assert_eq!(read.output.format, OutputFormat::Json);
        assert_eq!(read.at_revision, None);
    }

    #[test]
    fn set_app_auth_api_key_parses_a_secret_source() {
        let cli = parse(&[
            "server",
            "set-app-auth",
            "datadog",
            "api-key",
            "--key-name",
            "x-api-key",
            "--key-value",
            "env:DD_KEY",
            "--location",
            "query",
            "--expected-revision",
            "4",
        ])
        .unwrap();
        let Command::Server(ServerCommand::SetAppAuth(args)) = cli.command else {
            panic!("set-app-auth expected");
        };
        assert_eq!(args.server, "datadog");
        let AppAuthCommand::ApiKey {
            key_name,
            key_value,
            location,
            write,
        } = args.kind
        else {
            panic!("api-key expected");
        };
        assert_eq!(key_name, "x-api-key");
        assert_eq!(key_value, Some(SecretSource::Env("DD_KEY".to_owned())));
        assert_eq!(location, ApiKeyLocation::Query);
        assert_eq!(write.expected_revision, Some(4));
    }

    #[test]
    fn a_bare_secret_is_refused_without_being_echoed() {
        let error = parse(&[
            "server",
            "set-app-auth",
            "x",
            "bearer",
            "--token",
            "hunter2",
        ])
        .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ValueValidation);
        let rendered = error.to_string();
        assert!(!rendered.contains("hunter2"), "{rendered}");
        assert!(rendered.contains("env:NAME"), "{rendered}");
    }

    #[test]
    fn passthrough_takes_exactly_one_jwks_source() {
        let cli = parse(&[
            "server",
            "set-agent-auth",
            "ci",
            "passthrough",
            "--jwks-url",
            "https://idp.example.com/jwks",
            "--issuer",
            "https://idp.example.com",
            "--restrict-header",
            "x-internal-*",
            "--restrict-header",
            "x-debug",
        ])
        .unwrap();
        let Command::Server(ServerCommand::SetAgentAuth(args)) = cli.command else {
            panic!("set-agent-auth expected");
        };
        let AgentAuthCommand::Passthrough {
            jwks_url, restrict, ..
        } = args.mode
        else {
            panic!("passthrough expected");
        };
        assert_eq!(jwks_url.as_deref(), Some("https://idp.example.com/jwks"));
        assert_eq!(
            restrict.restricted_inbound_headers,
            ["x-internal-*", "x-debug"]
        );

        let both = parse(&[
            "server",
            "set-agent-auth",
            "ci",
            "passthrough",
            "--jwks-url",
            "https://a",
            "--jwks-file",
            "k.json",
        ]);
        assert_eq!(both.unwrap_err().kind(), ErrorKind::ArgumentConflict);
        // An issuer without keys to check it with would be silently meaningless.
        let issuer_only = parse(&[
            "server",
            "set-agent-auth",
            "ci",
            "passthrough",
            "--issuer",
            "https://a",
        ]);
        assert_eq!(
            issuer_only.unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn header_add_parses_pattern_flags() {
        let cli = parse(&[
            "header",
            "add",
            "azure-search",
            "--pattern",
            "forward-caller-token",
            "--name",
            "x-ms-query-source-authorization",
            "--prefix",
            "Bearer ",
        ])
        .unwrap();
        let Command::Header(HeaderCommand::Add(args)) = cli.command else {
            panic!("header add expected");
        };
        assert_eq!(args.pattern, HeaderPattern::ForwardCallerToken);
        assert_eq!(args.prefix, "Bearer ");
        let conflict = parse(&[
            "header",
            "add",
            "s",
            "--pattern",
            "custom",
            "--name",
            "x-a",
            "--static-value",
            "a",
            "--template",
            "{{sub}}",
        ]);
        assert_eq!(conflict.unwrap_err().kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn app_put_collects_params() {
        let cli = parse(&[
            "app",
            "put",
            "google",
            "--authorize-url",
            "https://accounts.google.com/o/oauth2/v2/auth",
            "--token-url",
            "https://oauth2.googleapis.com/token",
            "--client-id",
            "c",
            "--client-secret",
            "file:/run/google",
            "--param",
            "access_type=offline",
            "--param",
            "prompt=consent",
        ])
        .unwrap();
        let Command::App(AppCommand::Put(args)) = cli.command else {
            panic!("app put expected");
        };
        assert_eq!(
            args.params,
            [
                ("access_type".to_owned(), "offline".to_owned()),
                ("prompt".to_owned(), "consent".to_owned())
            ]
        );
        assert!(parse(&["app", "put", "g", "--param", "novalue"]).is_err());
    }

    #[test]
    fn server_create_needs_a_name_or_a_file() {
        let cli = parse(&["server", "create", "-f", "gmail.yaml"]).unwrap();
        let Command::Server(ServerCommand::Create(args)) = cli.command else {
            panic!("create expected");
        };
        assert_eq!(args.file, Some(PathBuf::from("gmail.yaml")));
        assert!(parse(&["server", "create"]).is_err());
        assert!(
            parse(&[
                "server",
                "create",
                "-f",
                "x.yaml",
                "--upstream-url",
                "https://a"
            ])
            .is_err()
        );
        let both_agents = parse(&[
            "server",
            "create",
            "gmail",
            "--upstream-url",
            "https://a",
            "--identity-provider",
            "okta",
            "--agent-passthrough",
        ]);
        assert_eq!(both_agents.unwrap_err().kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn history_apply_and_export_parse() {
        let cli = parse(&["history", "idp", "okta", "--after", "10", "--limit", "5"]).unwrap();
        let Command::History(args) = cli.command else {
            panic!("history expected");
        };
        assert_eq!(args.kind, AggregateKindArg::Idp);
        assert_eq!((args.page.after, args.page.limit), (10, 5));
        assert!(parse(&["events", "--limit", "0"]).is_err());

        let cli = parse(&["apply", "-f", "config.yaml", "--dry-run", "--prune"]).unwrap();
        let Command::Apply(args) = cli.command else {
            panic!("apply expected");
        };
        assert!(args.dry_run && args.prune);

        let cli = parse(&["export", "-o", "out.yaml"]).unwrap();
        let Command::Export(args) = cli.command else {
            panic!("export expected");
        };
        assert_eq!(args.output, Some(PathBuf::from("out.yaml")));

        assert!(parse(&["state", "--at", "7", "-o", "yaml"]).is_ok());
        assert!(parse(&["server", "get", "x", "-o", "xml"]).is_err());
    }
}

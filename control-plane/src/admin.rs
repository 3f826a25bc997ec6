//! The gRPC admin API. Each method authenticates the caller, converts the request into a
//! domain command once (validating every field), hands it to the engine, and maps the
//! outcome back. Writes reply only after the engine flushed the events.

use std::sync::Arc;

use portcullis_proto::v1 as proto;
use portcullis_proto::v1::admin_service_server::AdminService;
use portcullis_shared::config::{
    AgentAuth, AppAuth, IdentityProvider, McpServer, OAuthApp, OutboundHeader, StoredCredential,
    WithSecrets,
};
use portcullis_shared::convert::{
    check_user_credential_value, secret_status_proto, stored_credential_from_proto,
    stored_credential_to_proto,
};
use portcullis_shared::error::ErrorCode;
use portcullis_shared::names::{CatalogId, HeaderName, ServerName, UserId};
use portcullis_shared::secret::{SecretInput, SecretValue};
use portcullis_shared::validate::ValidationErrors;
use serde_json::Value;
use tonic::{Request, Response, Status};

use crate::access::{AccessList, Principal, Role, bearer_token};
use crate::apply::{ChangeAction, DesiredCredential, DesiredState};
use crate::audit::AuditLog;
use crate::commands::{Command, CommandError, OrgValue};
use crate::engine::{Engine, WriteOutcome};
use crate::events::{AggregateKey, AggregateKind, Event};
use crate::fleet::Fleet;
use crate::secrets::SealedSecret;
use crate::state::State;
use crate::vault::{LinkKey, LinkState, Vault};

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// The admin service, shared by every connection.
pub struct AdminApi {
    engine: Arc<Engine>,
    access: Arc<AccessList>,
    fleet: Arc<Fleet>,
    vault: Arc<Vault>,
    audit: Arc<AuditLog>,
}

/// What a method needs from its caller.
#[derive(Clone, Copy)]
enum Need {
    Read,
    Write,
}

impl AdminApi {
    pub fn new(
        engine: Arc<Engine>,
        access: Arc<AccessList>,
        fleet: Arc<Fleet>,
        vault: Arc<Vault>,
        audit: Arc<AuditLog>,
    ) -> Self {
        Self {
            engine,
            access,
            fleet,
            vault,
            audit,
        }
    }

    /// Records a refused admin call in the audit trail, off the request path.
    fn audit_refusal(&self, actor: &str, reason: &str, summary: String) {
        let audit = self.audit.clone();
        let event = crate::audit::local_event("auth_failure", actor, "rejected", reason, summary);
        tokio::task::spawn_blocking(move || {
            if let Err(error) = audit.append(&[event]) {
                tracing::error!(%error, "recording a refused admin call failed");
            }
        });
    }

    fn authorize<T>(&self, request: &Request<T>, need: Need) -> Result<Principal, Status> {
        let Some(principal) =
            bearer_token(request.metadata()).and_then(|token| self.access.authenticate(token))
        else {
            self.audit_refusal(
                "unknown",
                "invalid_admin_token",
                "an admin API call with a missing or invalid bearer token".to_owned(),
            );
            return Err(Status::unauthenticated("missing or invalid bearer token"));
        };
        let refusal = match (principal.role, need) {
            (Role::Admin, _) | (Role::Auditor, Need::Read) => return Ok(principal),
            (Role::Auditor, Need::Write) => "the auditor role is read-only",
            (Role::Node, _) => "node tokens may only call the node APIs",
        };
        self.audit_refusal(
            &principal.name,
            "permission_denied",
            format!(
                "{} ({}) was refused: {refusal}",
                principal.name,
                principal.role.as_str()
            ),
        );
        Err(Status::permission_denied(refusal))
    }

    async fn write(
        &self,
        principal: &Principal,
        command: Command,
    ) -> Result<Response<proto::WriteReply>, Status> {
        let outcome = self
            .engine
            .execute(&principal.name, vec![command], None)
            .await
            .map_err(command_status)?;
        Ok(Response::new(write_reply(outcome)))
    }

    /// The state now, or as it was at `at_revision`.
    async fn state(&self, at_revision: Option<u64>) -> Result<Arc<State>, Status> {
        let current = self.engine.state();
        match at_revision {
            None => Ok(current),
            Some(revision) if revision > current.revision => Err(Status::out_of_range(format!(
                "revision {revision} is in the future (the log is at {})",
                current.revision
            ))),
            Some(revision) => self
                .engine
                .state_at(revision)
                .await
                .map(Arc::new)
                .map_err(|error| internal("replaying the log", &error)),
        }
    }
}

fn write_reply(outcome: WriteOutcome) -> proto::WriteReply {
    proto::WriteReply {
        revision: outcome.revision,
        aggregate_revision: outcome.aggregate_revision,
    }
}

/// Internal failures get a generic message; the cause goes to the log only.
fn internal(context: &str, error: &dyn std::fmt::Display) -> Status {
    tracing::error!(%error, context, "admin request failed");
    Status::internal("internal error; the control plane log has the details")
}

fn command_status(error: CommandError) -> Status {
    match error.code() {
        ErrorCode::Internal => internal("executing a command", &error),
        code => Status::new(code.grpc_code(), error.to_string()),
    }
}

fn invalid(prefix: &str, errors: ValidationErrors) -> Status {
    let mut prefixed = ValidationErrors::default();
    prefixed.extend_prefixed(prefix, errors);
    Status::invalid_argument(prefixed.to_string())
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, Status> {
    value.ok_or_else(|| Status::invalid_argument(format!("{field}: required")))
}

fn parse_field<T, E: std::fmt::Display>(field: &str, result: Result<T, E>) -> Result<T, Status> {
    result.map_err(|error| Status::invalid_argument(format!("{field}: {error}")))
}

fn page_limit(limit: u32) -> usize {
    match limit as usize {
        0 => DEFAULT_PAGE,
        limit => limit.min(MAX_PAGE),
    }
}

fn timestamp(time: time::OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.unix_timestamp(),
        nanos: time.nanosecond() as i32,
    }
}

fn status_view<T: WithSecrets<SealedSecret> + Clone>(value: &T) -> T::Mapped<proto::Secret> {
    value
        .clone()
        .map_secrets(|sealed| secret_status_proto(sealed.status()))
}

fn server_view(state: &State, server: &McpServer<SealedSecret>) -> proto::ServerView {
    proto::ServerView {
        server: Some(status_view(server).into()),
        aggregate_revision: state.aggregate_revision(&AggregateKey::server(&server.name)),
    }
}

fn credential_view(credential: &StoredCredential<SealedSecret>) -> proto::StoredCredential {
    stored_credential_to_proto(credential.clone().map_secrets(|sealed| sealed.status()))
}

fn config_state(state: &State) -> proto::ConfigState {
    proto::ConfigState {
        revision: state.revision,
        servers: state
            .servers
            .values()
            .map(|server| status_view(server.as_ref()).into())
            .collect(),
        identity_providers: state
            .identity_providers
            .values()
            .map(|idp| status_view(idp.as_ref()).into())
            .collect(),
        oauth_apps: state
            .oauth_apps
            .values()
            .map(|app| status_view(app.as_ref()).into())
            .collect(),
        credentials: state
            .credentials
            .values()
            .map(|credential| credential_view(credential))
            .collect(),
    }
}

fn aggregate_kind_proto(kind: AggregateKind) -> proto::AggregateKind {
    match kind {
        AggregateKind::Server => proto::AggregateKind::Server,
        AggregateKind::IdentityProvider => proto::AggregateKind::IdentityProvider,
        AggregateKind::OauthApp => proto::AggregateKind::OauthApp,
        AggregateKind::Credential => proto::AggregateKind::Credential,
        AggregateKind::Gateway => proto::AggregateKind::Gateway,
    }
}

fn aggregate_ref(key: &AggregateKey) -> proto::AggregateRef {
    proto::AggregateRef {
        kind: aggregate_kind_proto(key.kind) as i32,
        id: key.id.clone(),
    }
}

/// Replaces every sealed secret in a JSON payload by its public status.
fn redact(value: &mut Value) {
    match value {
        Value::Object(map) if map.contains_key("ciphertext") => {
            let fingerprint = map.get("fingerprint").cloned().unwrap_or(Value::Null);
            *value = serde_json::json!({ "set": true, "fingerprint": fingerprint });
        }
        Value::Object(map) => map.values_mut().for_each(redact),
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn event_record(event: &Event) -> proto::EventRecord {
    let mut payload = serde_json::to_value(&event.payload).unwrap_or(Value::Null);
    redact(&mut payload);
    proto::EventRecord {
        event_id: event.id.to_string(),
        sequence: event.sequence,
        time: Some(timestamp(event.time)),
        actor: event.actor.clone(),
        aggregate: Some(aggregate_ref(&event.aggregate)),
        aggregate_revision: event.aggregate_revision,
        event_type: event.payload.type_name().to_owned(),
        summary: event.payload.summary(),
        payload_json: payload.to_string(),
        schema_version: crate::events::EVENT_SCHEMA_VERSION,
    }
}

fn history_reply(events: Vec<Event>, limit: usize) -> proto::GetHistoryReply {
    let next_after_sequence = if events.len() == limit {
        events.last().map(|event| event.sequence).unwrap_or(0)
    } else {
        0
    };
    proto::GetHistoryReply {
        events: events.iter().map(event_record).collect(),
        next_after_sequence,
    }
}

fn aggregate_from_proto(aggregate: Option<proto::AggregateRef>) -> Result<AggregateKey, Status> {
    let aggregate = required(aggregate, "aggregate")?;
    let kind = match proto::AggregateKind::try_from(aggregate.kind) {
        Ok(proto::AggregateKind::Server) => AggregateKind::Server,
        Ok(proto::AggregateKind::IdentityProvider) => AggregateKind::IdentityProvider,
        Ok(proto::AggregateKind::OauthApp) => AggregateKind::OauthApp,
        Ok(proto::AggregateKind::Credential) => AggregateKind::Credential,
        Ok(proto::AggregateKind::Gateway) => AggregateKind::Gateway,
        Ok(proto::AggregateKind::Unspecified) | Err(_) => {
            return Err(Status::invalid_argument(
                "aggregate.kind: required: server, identity_provider, oauth_app, credential or gateway",
            ));
        }
    };
    if aggregate.id.is_empty() {
        return Err(Status::invalid_argument("aggregate.id: required"));
    }
    Ok(AggregateKey {
        kind,
        id: aggregate.id,
    })
}

fn org_value_from_proto(secret: Option<proto::Secret>, clear: bool) -> Result<OrgValue, Status> {
    match (secret.and_then(|secret| secret.value), clear) {
        (Some(proto::secret::Value::Plaintext(_)), true) => Err(Status::invalid_argument(
            "org_value: set a value or clear_org_value, not both",
        )),
        (_, true) => Ok(OrgValue::Clear),
        (Some(proto::secret::Value::Plaintext(value)), false) => {
            parse_field("org_value", check_user_credential_value(&value))?;
            Ok(OrgValue::Set(SecretValue::new(value)))
        }
        (Some(proto::secret::Value::Status(_)) | None, false) => Ok(OrgValue::Keep),
    }
}

fn desired_from_proto(desired: proto::ConfigState) -> Result<DesiredState, Status> {
    let mut errors = ValidationErrors::default();
    let mut state = DesiredState::default();
    for server in desired.servers {
        let prefix = format!("desired.servers[{}]", server.name);
        match McpServer::try_from(server) {
            Ok(server) => state.servers.push(server),
            Err(nested) => errors.extend_prefixed(&prefix, nested),
        }
    }
    for idp in desired.identity_providers {
        let prefix = format!("desired.identity_providers[{}]", idp.id);
        match IdentityProvider::try_from(idp) {
            Ok(idp) => state.identity_providers.push(idp),
            Err(nested) => errors.extend_prefixed(&prefix, nested),
        }
    }
    for app in desired.oauth_apps {
        let prefix = format!("desired.oauth_apps[{}]", app.app_id);
        match OAuthApp::try_from(app) {
            Ok(app) => state.oauth_apps.push(app),
            Err(nested) => errors.extend_prefixed(&prefix, nested),
        }
    }
    for credential in desired.credentials {
        let prefix = format!("desired.credentials[{}]", credential.id);
        let org_value = credential.org_value.clone();
        match stored_credential_from_proto(credential) {
            Ok(parsed) => match org_value_from_proto(org_value, false) {
                Ok(org_value) => state.credentials.push(DesiredCredential {
                    id: parsed.id,
                    description: parsed.description,
                    org_value,
                }),
                Err(status) => errors.push(prefix, status.message()),
            },
            Err(nested) => errors.extend_prefixed(&prefix, nested),
        }
    }
    errors
        .into_result(state)
        .map_err(|errors| Status::invalid_argument(errors.to_string()))
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn who_am_i(
        &self,
        request: Request<proto::WhoAmIRequest>,
    ) -> Result<Response<proto::WhoAmIReply>, Status> {
        let principal = self.authorize(&request, Need::Read)?;
        Ok(Response::new(proto::WhoAmIReply {
            actor: principal.name,
            role: principal.role.as_str().to_owned(),
        }))
    }

    async fn create_server(
        &self,
        request: Request<proto::CreateServerRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        let principal = self.authorize(&request, Need::Write)?;
        let server = required(request.into_inner().server, "server")?;
        let server = McpServer::try_from(server).map_err(|errors| invalid("server", errors))?;
        self.write(&principal, Command::CreateServer { server })
            .await
    }

    async fn update_server(
        &self,
        request: Request<proto::UpdateServerRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        let principal = self.authorize(&request, Need::Write)?;
        let request = request.into_inner();
        let server = required(request.server, "server")?;
        let server = McpServer::try_from(server).map_err(|errors| invalid("server", errors))?;
        let command = Command::UpdateServer {
            server,
            expected_revision: request.expected_revision,
        };
        self.write(&principal, command).await
    }

    async fn delete_server(
        &self,
        request: Request<proto::DeleteServerRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        let principal = self.authorize(&request, Need::Write)?;
        let request = request.into_inner();
        let command = Command::DeleteServer {
            name: parse_field("name", ServerName::parse(&request.name))?,
            expected_revision: request.expected_revision,
        };
        self.write(&principal, command).await
    }

    async fn set_agent_auth(
        &self,
        request: Request<proto::SetAgentAuthRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        let principal = self.authorize(&request, Need::Write)?;
        let request = request.into_inner();
        let server = parse_field("server", ServerName::parse(&request.server))?;
        let agent_auth = required(request.agent_auth, "agent_auth")?;
        let agent_auth =
            AgentAuth::try_from(agent_auth).map_err(|errors| invalid("agent_auth", errors))?;
        let command = Command::SetAgentAuth {
            server,
            agent_auth,
            expected_revision: request.expected_revision,
        };
        self.write(&principal, command).await
    }

    async fn set_app_auth(
        &self,
        request: Request<proto::SetAppAuthRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        let principal = self.authorize(&request, Need::Write)?;
        let request = request.into_inner();
        let server = parse_field("server", ServerName::parse(&request.server))?;
        let app_auth = required(request.app_auth, "app_auth")?;
        let app_auth: AppAuth<SecretInput> =
            AppAuth::try_from(app_auth).map_err(|errors| invalid("app_auth", errors))?;
        let command = Command::SetAppAuth {
            server,
            app_auth,
            expected_revision: request.expected_revision,
        };
        self.write(&principal, command).await
    }

    async fn put_outbound_header(
        &self,
        request: Request<proto::PutOutboundHeaderRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        let principal = self.authorize(&request, Need::Write)?;
        let request = request.into_inner();
        let server = parse_field("server", ServerName::parse(&request.server))?;
        let header = required(request.header, "header")?;
        let header: OutboundHeader<SecretInput> =
            OutboundHeader::try_from(header).map_err(|errors| invalid("header", errors))?;
        let command = Command::PutOutboundHeader {
            server,
            header,
            expected_revision: request.expected_revision,
        };
        self.write(&principal, command).await
    }

    async fn remove_outbound_header(
        &self,
        request: Request<proto::RemoveOutboundHeaderRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        let principal = self.authorize(&request, Need::Write)?;
        let request = request.into_inner();
        let command = Command::RemoveOutboundHeader {
            server: parse_field("server", ServerName::parse(&request.server))?,
            header_name: parse_field("header_name", HeaderName::parse(&request.header_name))?,
            expected_revision: request.expected_revision,
        };
        self.write(&principal, command).await
    }

    async fn get_server(
        &self,
        request: Request<proto::GetServerRequest>,
    ) -> Result<Response<proto::ServerView>, Status> {
        self.authorize(&request, Need::Read)?;
        let request = request.into_inner();
        let name = parse_field("name", ServerName::parse(&request.name))?;
        let state = self.state(request.at_revision).await?;
        let server = state
            .servers
            .get(&name)
            .ok_or_else(|| Status::not_found(format!("server {:?} not found", name.as_str())))?;
        Ok(Response::new(server_view(&state, server)))
    }

    async fn list_servers(
        &self,
        request: Request<proto::ListServersRequest>,
    ) -> Result<Response<proto::ListServersReply>, Status> {
        self.authorize(&request, Need::Read)?;
        let state = self.state(request.into_inner().at_revision).await?;
        Ok(Response::new(proto::ListServersReply {
            servers: state
                .servers
                .values()
                .map(|server| server_view(&state, server))
                .collect(),
            revision: state.revision,
        }))
    }

    async fn put_identity_provider(
        &self,
        request: Request<proto::PutIdentityProviderRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        let principal = self.authorize(&request, Need::Write)?;
        let request = request.into_inner();
        let idp = required(request.identity_provider, "identity_provider")?;
        let identity_provider = IdentityProvider::try_from(idp)
            .map_err(|errors| invalid("identity_provider", errors))?;
        let command = Command::PutIdentityProvider {
            identity_provider,
            expected_revision: request.expected_revision,
        };
        self.write(&principal, command).await
    }

    async fn delete_identity_provider(
        &self,
        request: Request<proto::DeleteCatalogEntryRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        let principal = self.authorize(&request, Need::Write)?;
        let request = request.into_inner();
        let command = Command::DeleteIdentityProvider {
            id: parse_field("id", CatalogId::parse(&request.id))?,
            expected_revision: request.expected_revision,
        };
        self.write(&principal, command).await
    }

    async fn put_o_auth_app(
        &self,
        request: Request<proto::PutOAuthAppRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        let principal = self.authorize(&request, Need::Write)?;
        let request = request.into_inner();
        let app = required(request.oauth_app, "oauth_app")?;
        let oauth_app = OAuthApp::try_from(app).map_err(|errors| invalid("oauth_app", errors))?;
        let command = Command::PutOauthApp {
            oauth_app,
            expected_revision: request.expected_revision,
        };
        self.write(&principal, command).await
    }

    async fn delete_o_auth_app(
        &self,
        request: Request<proto::DeleteCatalogEntryRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        let principal = self.authorize(&request, Need::Write)?;
        let request = request.into_inner();
        let command = Command::DeleteOauthApp {
            app_id: parse_field("id", CatalogId::parse(&request.id))?,
            expected_revision: request.expected_revision,
        };
        self.write(&principal, command).await
    }

    async fn put_credential(
        &self,
        request: Request<proto::PutCredentialRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        let principal = self.authorize(&request, Need::Write)?;
        let request = request.into_inner();
        let id = parse_field("id", CatalogId::parse(&request.id))?;
        let org_value = org_value_from_proto(request.org_value, request.clear_org_value)?;
        if request.description.len() > 1024 {
            return Err(Status::invalid_argument(
                "description: must be at most 1024 bytes",
            ));
        }
        let command = Command::PutCredential {
            id,
            description: request.description,
            org_value,
            expected_revision: request.expected_revision,
        };
        self.write(&principal, command).await
    }

    async fn delete_credential(
        &self,
        request: Request<proto::DeleteCatalogEntryRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        let principal = self.authorize(&request, Need::Write)?;
        let request = request.into_inner();
        let command = Command::DeleteCredential {
            id: parse_field("id", CatalogId::parse(&request.id))?,
            expected_revision: request.expected_revision,
        };
        self.write(&principal, command).await
    }

    async fn set_user_credential(
        &self,
        request: Request<proto::SetUserCredentialRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        let principal = self.authorize(&request, Need::Write)?;
        let request = request.into_inner();
        let credential_id = parse_field("credential_id", CatalogId::parse(&request.credential_id))?;
        let user = parse_field("user", UserId::parse(&request.user))?;
        parse_field("value", check_user_credential_value(&request.value))?;
        let command = Command::SetUserCredential {
            credential_id,
            user,
            value: SecretValue::new(request.value),
            expected_revision: request.expected_revision,
        };
        self.write(&principal, command).await
    }

    async fn delete_user_credential(
        &self,
        request: Request<proto::DeleteUserCredentialRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        let principal = self.authorize(&request, Need::Write)?;
        let request = request.into_inner();
        let command = Command::DeleteUserCredential {
            credential_id: parse_field("credential_id", CatalogId::parse(&request.credential_id))?,
            user: parse_field("user", UserId::parse(&request.user))?,
            expected_revision: request.expected_revision,
        };
        self.write(&principal, command).await
    }

    async fn get_state(
        &self,
        request: Request<proto::GetStateRequest>,
    ) -> Result<Response<proto::ConfigState>, Status> {
        self.authorize(&request, Need::Read)?;
        let state = self.state(request.into_inner().at_revision).await?;
        Ok(Response::new(config_state(&state)))
    }

    async fn get_history(
        &self,
        request: Request<proto::GetHistoryRequest>,
    ) -> Result<Response<proto::GetHistoryReply>, Status> {
        self.authorize(&request, Need::Read)?;
        let request = request.into_inner();
        let aggregate = aggregate_from_proto(request.aggregate)?;
        let limit = page_limit(request.limit);
        let store = self.engine.store().clone();
        let after = request.after_sequence;
        let events = tokio::task::spawn_blocking(move || store.history(&aggregate, after, limit))
            .await
            .map_err(|error| internal("reading history", &error))?
            .map_err(|error| internal("reading history", &error))?;
        Ok(Response::new(history_reply(events, limit)))
    }

    async fn list_events(
        &self,
        request: Request<proto::ListEventsRequest>,
    ) -> Result<Response<proto::GetHistoryReply>, Status> {
        self.authorize(&request, Need::Read)?;
        let request = request.into_inner();
        let limit = page_limit(request.limit);
        let store = self.engine.store().clone();
        let after = request.after_sequence;
        let events = tokio::task::spawn_blocking(move || store.read_events(after, limit))
            .await
            .map_err(|error| internal("reading events", &error))?
            .map_err(|error| internal("reading events", &error))?;
        Ok(Response::new(history_reply(events, limit)))
    }

    async fn apply(
        &self,
        request: Request<proto::ApplyRequest>,
    ) -> Result<Response<proto::ApplyReply>, Status> {
        let need = if request.get_ref().dry_run {
            Need::Read
        } else {
            Need::Write
        };
        let principal = self.authorize(&request, need)?;
        let request = request.into_inner();
        let desired = desired_from_proto(required(request.desired, "desired")?)?;
        let outcome = self
            .engine
            .apply(
                &principal.name,
                desired,
                request.prune,
                request.dry_run,
                request.expected_revision,
            )
            .await
            .map_err(command_status)?;
        Ok(Response::new(proto::ApplyReply {
            changes: outcome
                .changes
                .into_iter()
                .map(|change| proto::PlannedChange {
                    action: match change.action {
                        ChangeAction::Create => proto::ChangeAction::Create,
                        ChangeAction::Update => proto::ChangeAction::Update,
                        ChangeAction::Delete => proto::ChangeAction::Delete,
                    } as i32,
                    aggregate: Some(aggregate_ref(&change.aggregate)),
                    details: change.details,
                })
                .collect(),
            revision: outcome.revision,
            applied: outcome.applied,
        }))
    }

    async fn fleet_status(
        &self,
        request: Request<proto::FleetStatusRequest>,
    ) -> Result<Response<proto::FleetStatusReply>, Status> {
        self.authorize(&request, Need::Read)?;
        let latest_version = self.engine.subscribe_snapshots().borrow().version;
        Ok(Response::new(proto::FleetStatusReply {
            nodes: self
                .fleet
                .nodes()
                .into_iter()
                .map(|node| proto::FleetNode {
                    node_id: node.node_id,
                    address: node.address,
                    applied_version: node.applied_version,
                    last_seen: Some(timestamp(node.last_seen)),
                    connected: node.connected,
                    last_nack_version: node.last_nack.as_ref().map(|n| n.version).unwrap_or(0),
                    last_nack_error: node
                        .last_nack
                        .as_ref()
                        .map(|n| n.error.clone())
                        .unwrap_or_default(),
                    last_nack_time: node.last_nack.as_ref().map(|n| timestamp(n.time)),
                    software_version: node.software_version,
                })
                .collect(),
            latest_version,
        }))
    }

    async fn list_gateway_keys(
        &self,
        request: Request<proto::ListGatewayKeysRequest>,
    ) -> Result<Response<proto::GatewayKeys>, Status> {
        self.authorize(&request, Need::Read)?;
        let state = self.engine.state();
        Ok(Response::new(status_view(&state.gateway_keys).into()))
    }

    async fn rotate_gateway_keys(
        &self,
        request: Request<proto::RotateGatewayKeysRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        let principal = self.authorize(&request, Need::Write)?;
        let request = request.into_inner();
        let both = !request.signing && !request.sealing;
        let commands = rotation_commands(request.signing || both, request.sealing || both)
            .map_err(|error| internal("generating keys", &error))?;
        let outcome = self
            .engine
            .execute(&principal.name, commands, None)
            .await
            .map_err(command_status)?;
        Ok(Response::new(write_reply(outcome)))
    }

    async fn retire_gateway_key(
        &self,
        request: Request<proto::RetireGatewayKeyRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        let principal = self.authorize(&request, Need::Write)?;
        let kid = request.into_inner().kid;
        if kid.is_empty() {
            return Err(Status::invalid_argument("kid: required"));
        }
        self.write(&principal, Command::RetireGatewayKey { kid })
            .await
    }

    async fn revoke_user_sessions(
        &self,
        request: Request<proto::RevokeUserSessionsRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        let principal = self.authorize(&request, Need::Write)?;
        let request = request.into_inner();
        let command = Command::RevokeUserSessions {
            identity_provider: parse_field(
                "identity_provider",
                CatalogId::parse(&request.identity_provider),
            )?,
            subject: parse_field("subject", UserId::parse(&request.subject))?,
            revoked_at_unix: time::OffsetDateTime::now_utc().unix_timestamp(),
        };
        self.write(&principal, command).await
    }

    async fn list_user_links(
        &self,
        request: Request<proto::ListUserLinksRequest>,
    ) -> Result<Response<proto::ListUserLinksReply>, Status> {
        self.authorize(&request, Need::Read)?;
        let filter = request.into_inner();
        let vault = self.vault.clone();
        let links = tokio::task::spawn_blocking(move || vault.list())
            .await
            .map_err(|error| internal("listing links", &error))?
            .map_err(|error| internal("listing links", &error))?;
        let matches = |key: &LinkKey| {
            (filter.app_id.is_empty() || key.app_id.as_str() == filter.app_id)
                && (filter.identity_provider.is_empty()
                    || key.identity_provider.as_str() == filter.identity_provider)
                && (filter.subject.is_empty() || key.subject.as_str() == filter.subject)
        };
        let mut views: Vec<proto::UserLink> = links
            .into_iter()
            .filter(|(key, _)| matches(key))
            .map(|(key, link)| proto::UserLink {
                app_id: key.app_id.to_string(),
                identity_provider: key.identity_provider.to_string(),
                subject: key.subject.to_string(),
                status: match link.state {
                    LinkState::Connected => "connected",
                    LinkState::Broken => "broken",
                }
                .to_owned(),
                reason: link.reason,
                connected_at_unix: link.connected_at_unix,
                refreshed_at_unix: link.refreshed_at_unix,
                expires_at_unix: link.expires_at_unix,
                scope: link.scope,
            })
            .collect();
        // Asked about one user and one app that have no link: say it is missing.
        if views.is_empty()
            && !filter.app_id.is_empty()
            && !filter.identity_provider.is_empty()
            && !filter.subject.is_empty()
        {
            views.push(proto::UserLink {
                app_id: filter.app_id,
                identity_provider: filter.identity_provider,
                subject: filter.subject,
                status: "missing".to_owned(),
                reason: "the user has not connected this app".to_owned(),
                ..Default::default()
            });
        }
        Ok(Response::new(proto::ListUserLinksReply { links: views }))
    }

    async fn delete_user_link(
        &self,
        request: Request<proto::DeleteUserLinkRequest>,
    ) -> Result<Response<proto::DeleteUserLinkReply>, Status> {
        let principal = self.authorize(&request, Need::Write)?;
        let request = request.into_inner();
        let key = LinkKey {
            app_id: parse_field("app_id", CatalogId::parse(&request.app_id))?,
            identity_provider: parse_field(
                "identity_provider",
                CatalogId::parse(&request.identity_provider),
            )?,
            subject: parse_field("subject", UserId::parse(&request.subject))?,
        };
        let deleted = self
            .vault
            .delete(&key)
            .await
            .map_err(|error| internal("deleting a link", &error))?;
        tracing::info!(actor = %principal.name, app = %key.app_id, user = %key.subject, deleted, "account link deleted by an admin");
        Ok(Response::new(proto::DeleteUserLinkReply { deleted }))
    }

    async fn query_audit(
        &self,
        request: Request<proto::AuditQuery>,
    ) -> Result<Response<proto::AuditPage>, Status> {
        self.authorize(&request, Need::Read)?;
        let query = request.into_inner();
        let audit = self.audit.clone();
        let page = tokio::task::spawn_blocking(move || audit.query(&query))
            .await
            .map_err(|error| internal("querying the audit trail", &error))?
            .map_err(|error| internal("querying the audit trail", &error))?;
        Ok(Response::new(page))
    }

    async fn verify_audit(
        &self,
        request: Request<proto::VerifyAuditRequest>,
    ) -> Result<Response<proto::VerifyAuditReply>, Status> {
        self.authorize(&request, Need::Read)?;
        let audit = self.audit.clone();
        let reply = tokio::task::spawn_blocking(move || audit.verify())
            .await
            .map_err(|error| internal("verifying the audit trail", &error))?
            .map_err(|error| internal("verifying the audit trail", &error))?;
        Ok(Response::new(reply))
    }
}

/// Commands that make freshly generated keys active.
pub fn rotation_commands(
    signing: bool,
    sealing: bool,
) -> Result<Vec<Command>, crate::keys::KeyGenerationError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut commands = Vec::new();
    if signing {
        let key = crate::keys::generate_signing_key()?;
        commands.push(Command::AddSigningKey {
            kid: key.kid,
            public_jwk: key.public_jwk,
            private_key: key.private_key,
            created_at_unix: now,
        });
    }
    if sealing {
        let (kid, key) = crate::keys::generate_sealing_key()?;
        commands.push(Command::AddSealingKey {
            kid,
            key,
            created_at_unix: now,
        });
    }
    Ok(commands)
}

//! `conformance-upstream`: an MCP server (rmcp, Streamable HTTP) with the fixtures the MCP
//! conformance suite's server scenarios call (tools `test_*`, resources `test://...`,
//! prompts `test_*`, completion, logging), as the suite's descriptions specify them.
//!
//! Run directly, it passes (nearly) every server scenario; run behind the gateway, the same
//! suite then checks that the gateway carries every MCP feature through unchanged: progress
//! and logging notifications on SSE, server-to-client requests (sampling, elicitation),
//! resources, subscriptions, prompts and completion. echo-upstream and server-everything
//! lack these fixtures and fail most scenarios, which leaves those features unchecked.
//!
//! Results are built from JSON in the wire format of the spec, so this file reads like the
//! scenario descriptions it implements.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::handler::server::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
#[expect(
    deprecated,
    reason = "the conformance suite still checks logging/setLevel, deprecated by SEP-2577"
)]
use rmcp::model::SetLevelRequestParams;
use rmcp::model::{
    CallToolResult, CompleteRequestParams, CompleteResult, ContentBlock, ElicitRequestParams,
    GetPromptRequestParams, GetPromptResponse, Implementation, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams,
    ProgressNotificationParam, ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities,
    ServerConfig, SubscribeRequestParams, UnsubscribeRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// The line prefix the binary prints on stdout once it is bound.
pub const LISTENING_LINE_PREFIX: &str = "conformance-upstream listening on ";

/// A 1x1 red PNG.
const RED_PIXEL_PNG_BASE64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
/// A WAV file with a 44-byte header and two silent 8-bit samples.
const SILENT_WAV_BASE64: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQIAAACAgA==";
/// Pause between the notifications of the logging and progress tools, as the suite asks.
const NOTIFICATION_SPACING: Duration = Duration::from_millis(50);
/// Severity order of MCP log levels, lowest first.
const LOG_LEVELS: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

/// Deserializes a spec-shaped JSON value into an rmcp model type.
fn from_json<T: DeserializeOwned>(value: Value) -> Result<T, ErrorData> {
    serde_json::from_value(value)
        .map_err(|error| ErrorData::internal_error(format!("fixture does not fit: {error}"), None))
}

fn content(value: Value) -> Result<ContentBlock, ErrorData> {
    from_json(value)
}

fn text_result(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text)])
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SamplingArguments {
    /// The prompt to send to the client's LLM.
    pub prompt: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ElicitationArguments {
    /// The message to show the user.
    pub message: String,
}

/// The MCP server handler; one instance per session.
#[derive(Debug, Clone)]
pub struct ConformanceUpstream {
    tool_router: ToolRouter<Self>,
    /// Lowest level sent, from `logging/setLevel` (index into [`LOG_LEVELS`]).
    minimum_log_level: Arc<Mutex<usize>>,
    subscribed_uris: Arc<Mutex<BTreeSet<String>>>,
}

impl Default for ConformanceUpstream {
    fn default() -> Self {
        Self::new()
    }
}

#[tool_router]
impl ConformanceUpstream {
    pub fn new() -> Self {
        Self {
            tool_router: Self::tool_router(),
            minimum_log_level: Arc::new(Mutex::new(0)),
            subscribed_uris: Arc::new(Mutex::new(BTreeSet::new())),
        }
    }

    /// Sends a log notification unless `logging/setLevel` asked for a higher level.
    async fn log(
        &self,
        context: &RequestContext<RoleServer>,
        level: &str,
        message: &str,
    ) -> Result<(), ErrorData> {
        let rank = LOG_LEVELS.iter().position(|known| *known == level);
        let minimum = *self
            .minimum_log_level
            .lock()
            .map_err(|_| ErrorData::internal_error("log level lock poisoned", None))?;
        if rank.is_some_and(|rank| rank < minimum) {
            return Ok(());
        }
        let notification = from_json(json!({
            "level": level,
            "logger": "conformance-upstream",
            "data": message,
        }))?;
        #[expect(
            deprecated,
            reason = "the conformance suite still checks logging, deprecated by SEP-2577"
        )]
        context
            .peer
            .notify_logging_message(notification)
            .await
            .map_err(|error| ErrorData::internal_error(error.to_string(), None))
    }

    /// Sends `elicitation/create` with `schema` and describes the answer.
    async fn elicit(
        &self,
        context: &RequestContext<RoleServer>,
        message: &str,
        schema: Value,
        describe: impl Fn(&str, &Value) -> String,
    ) -> Result<CallToolResult, ErrorData> {
        let request: ElicitRequestParams = from_json(json!({
            "mode": "form",
            "message": message,
            "requestedSchema": schema,
        }))?;
        let answer = context
            .peer
            .create_elicitation(request)
            .await
            .map_err(|error| ErrorData::internal_error(error.to_string(), None))?;
        let answer = serde_json::to_value(&answer)
            .map_err(|error| ErrorData::internal_error(error.to_string(), None))?;
        let action = answer["action"].as_str().unwrap_or("unknown");
        Ok(text_result(describe(action, &answer["content"])))
    }

    #[tool(description = "Returns a simple text")]
    async fn test_simple_text(&self) -> CallToolResult {
        text_result("This is a simple text response for testing.")
    }

    #[tool(description = "Returns an image (a 1x1 red PNG)")]
    async fn test_image_content(&self) -> Result<CallToolResult, ErrorData> {
        Ok(CallToolResult::success(vec![content(json!({
            "type": "image", "data": RED_PIXEL_PNG_BASE64, "mimeType": "image/png",
        }))?]))
    }

    #[tool(description = "Returns audio (a short silent WAV)")]
    async fn test_audio_content(&self) -> Result<CallToolResult, ErrorData> {
        Ok(CallToolResult::success(vec![content(json!({
            "type": "audio", "data": SILENT_WAV_BASE64, "mimeType": "audio/wav",
        }))?]))
    }

    #[tool(description = "Returns an embedded resource")]
    async fn test_embedded_resource(&self) -> Result<CallToolResult, ErrorData> {
        Ok(CallToolResult::success(vec![content(json!({
            "type": "resource",
            "resource": {
                "uri": "test://embedded-resource",
                "mimeType": "text/plain",
                "text": "This is an embedded resource content.",
            },
        }))?]))
    }

    #[tool(description = "Returns text, an image and an embedded resource")]
    async fn test_multiple_content_types(&self) -> Result<CallToolResult, ErrorData> {
        Ok(CallToolResult::success(vec![
            ContentBlock::text("Multiple content types test:"),
            content(json!({
                "type": "image", "data": RED_PIXEL_PNG_BASE64, "mimeType": "image/png",
            }))?,
            content(json!({
                "type": "resource",
                "resource": {
                    "uri": "test://mixed-content-resource",
                    "mimeType": "application/json",
                    "text": r#"{"test":"data","value":123}"#,
                },
            }))?,
        ]))
    }

    #[tool(description = "Sends three info log notifications 50 ms apart, then returns")]
    async fn test_tool_with_logging(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.log(&context, "info", "Tool execution started").await?;
        tokio::time::sleep(NOTIFICATION_SPACING).await;
        self.log(&context, "info", "Tool processing data").await?;
        tokio::time::sleep(NOTIFICATION_SPACING).await;
        self.log(&context, "info", "Tool execution completed")
            .await?;
        Ok(text_result("Tool with logging executed successfully"))
    }

    #[tool(description = "Always fails with a tool error (isError: true)")]
    async fn test_error_handling(&self) -> CallToolResult {
        CallToolResult::error(vec![ContentBlock::text(
            "This tool intentionally returns an error for testing",
        )])
    }

    #[tool(description = "Sends progress 0/100, 50/100, 100/100, 50 ms apart, then returns")]
    async fn test_tool_with_progress(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let progress_token = context.meta.get_progress_token();
        for (step, progress) in [0.0, 50.0, 100.0].into_iter().enumerate() {
            if step > 0 {
                tokio::time::sleep(NOTIFICATION_SPACING).await;
            }
            if let Some(token) = &progress_token {
                context
                    .peer
                    .notify_progress(
                        ProgressNotificationParam::new(token.clone(), progress).with_total(100.0),
                    )
                    .await
                    .map_err(|error| ErrorData::internal_error(error.to_string(), None))?;
            }
        }
        Ok(text_result("Tool with progress executed successfully"))
    }

    #[tool(description = "Asks the client's LLM (sampling/createMessage) and returns its answer")]
    async fn test_sampling(
        &self,
        Parameters(SamplingArguments { prompt }): Parameters<SamplingArguments>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let request = from_json(json!({
            "messages": [{"role": "user", "content": {"type": "text", "text": prompt}}],
            "maxTokens": 100,
        }))?;
        #[expect(
            deprecated,
            reason = "the conformance suite still checks sampling, deprecated by SEP-2577"
        )]
        let answer = context.peer.create_message(request).await;
        let answer = answer.map_err(|error| ErrorData::internal_error(error.to_string(), None))?;
        let answer = serde_json::to_value(&answer)
            .map_err(|error| ErrorData::internal_error(error.to_string(), None))?;
        let text = answer["content"]["text"].as_str().unwrap_or_default();
        Ok(text_result(format!("LLM response: {text}")))
    }

    #[tool(description = "Asks the user for a username and an email (elicitation/create)")]
    async fn test_elicitation(
        &self,
        Parameters(ElicitationArguments { message }): Parameters<ElicitationArguments>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let schema = json!({
            "type": "object",
            "properties": {
                "username": {"type": "string", "description": "User's response"},
                "email": {"type": "string", "description": "User's email address"},
            },
            "required": ["username", "email"],
        });
        self.elicit(&context, &message, schema, |action, content| {
            format!("User response: action={action}, content={content}")
        })
        .await
    }

    #[tool(
        description = "Elicitation whose schema has a default for every primitive type (SEP-1034)"
    )]
    async fn test_elicitation_sep1034_defaults(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "default": "John Doe"},
                "age": {"type": "integer", "default": 30},
                "score": {"type": "number", "default": 95.5},
                "status": {
                    "type": "string",
                    "enum": ["active", "inactive", "pending"],
                    "default": "active",
                },
                "verified": {"type": "boolean", "default": true},
            },
        });
        self.elicit(
            &context,
            "Please review and update the form fields with defaults",
            schema,
            |action, content| format!("Elicitation completed: action={action}, content={content}"),
        )
        .await
    }

    #[tool(description = "Elicitation whose schema has every enum variant (SEP-1330)")]
    async fn test_elicitation_sep1330_enums(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let schema = json!({
            "type": "object",
            "properties": {
                "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
                "titledSingle": {
                    "type": "string",
                    "oneOf": [
                        {"const": "value1", "title": "First Option"},
                        {"const": "value2", "title": "Second Option"},
                        {"const": "value3", "title": "Third Option"},
                    ],
                },
                "legacyEnum": {
                    "type": "string",
                    "enum": ["opt1", "opt2", "opt3"],
                    "enumNames": ["Option One", "Option Two", "Option Three"],
                },
                "untitledMulti": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
                },
                "titledMulti": {
                    "type": "array",
                    "items": {
                        "anyOf": [
                            {"const": "value1", "title": "First Choice"},
                            {"const": "value2", "title": "Second Choice"},
                            {"const": "value3", "title": "Third Choice"},
                        ],
                    },
                },
            },
        });
        self.elicit(
            &context,
            "Please select options from the enum fields",
            schema,
            |action, content| format!("Elicitation completed: action={action}, content={content}"),
        )
        .await
    }
}

/// The text of `test://template/{id}/data` for one id.
fn template_resource_text(id: &str) -> String {
    json!({"id": id, "templateTest": true, "data": format!("Data for ID: {id}")}).to_string()
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for ConformanceUpstream {
    fn get_info(&self) -> ServerConfig {
        let capabilities: ServerCapabilities = serde_json::from_value(json!({
            "tools": {},
            "resources": {"subscribe": true},
            "prompts": {},
            "logging": {},
            "completions": {},
        }))
        .unwrap_or_default();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new(
                "conformance-upstream",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions("Fixtures of the MCP conformance suite's server scenarios.")
    }

    #[expect(
        deprecated,
        reason = "the conformance suite still checks logging/setLevel, deprecated by SEP-2577"
    )]
    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let level = serde_json::to_value(request.level)
            .map_err(|error| ErrorData::internal_error(error.to_string(), None))?;
        let rank = LOG_LEVELS
            .iter()
            .position(|known| Some(*known) == level.as_str())
            .ok_or_else(|| ErrorData::invalid_params(format!("unknown log level {level}"), None))?;
        *self
            .minimum_log_level
            .lock()
            .map_err(|_| ErrorData::internal_error("log level lock poisoned", None))? = rank;
        Ok(())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        from_json(json!({"resources": [
            {
                "uri": "test://static-text",
                "name": "static-text",
                "description": "A static text resource",
                "mimeType": "text/plain",
            },
            {
                "uri": "test://static-binary",
                "name": "static-binary",
                "description": "A static binary resource (a PNG image)",
                "mimeType": "image/png",
            },
            {
                "uri": "test://watched-resource",
                "name": "watched-resource",
                "description": "A resource clients can subscribe to",
                "mimeType": "text/plain",
            },
        ]}))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        from_json(json!({"resourceTemplates": [{
            "uriTemplate": "test://template/{id}/data",
            "name": "template-data",
            "description": "Data for one id",
            "mimeType": "application/json",
        }]}))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri.as_str();
        let contents = match uri {
            "test://static-text" => json!({
                "uri": uri,
                "mimeType": "text/plain",
                "text": "This is the content of the static text resource.",
            }),
            "test://static-binary" => json!({
                "uri": uri, "mimeType": "image/png", "blob": RED_PIXEL_PNG_BASE64,
            }),
            "test://watched-resource" => json!({
                "uri": uri, "mimeType": "text/plain", "text": "Watched resource content.",
            }),
            _ => match uri
                .strip_prefix("test://template/")
                .and_then(|rest| rest.strip_suffix("/data"))
                .filter(|id| !id.is_empty() && !id.contains('/'))
            {
                Some(id) => json!({
                    "uri": uri,
                    "mimeType": "application/json",
                    "text": template_resource_text(id),
                }),
                None => {
                    return Err(ErrorData::resource_not_found(
                        format!("resource {uri} not found"),
                        None,
                    ));
                }
            },
        };
        let result: rmcp::model::ReadResourceResult = from_json(json!({ "contents": [contents] }))?;
        Ok(result.into())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.subscribed_uris
            .lock()
            .map_err(|_| ErrorData::internal_error("subscription lock poisoned", None))?
            .insert(request.uri);
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.subscribed_uris
            .lock()
            .map_err(|_| ErrorData::internal_error("subscription lock poisoned", None))?
            .remove(&request.uri);
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        from_json(json!({"prompts": [
            {"name": "test_simple_prompt", "description": "A prompt without arguments"},
            {
                "name": "test_prompt_with_arguments",
                "description": "A prompt with two required arguments",
                "arguments": [
                    {"name": "arg1", "description": "First test argument", "required": true},
                    {"name": "arg2", "description": "Second test argument", "required": true},
                ],
            },
            {
                "name": "test_prompt_with_embedded_resource",
                "description": "A prompt embedding a resource",
                "arguments": [
                    {"name": "resourceUri", "description": "URI of the resource to embed", "required": true},
                ],
            },
            {"name": "test_prompt_with_image", "description": "A prompt with an image"},
        ]}))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let arguments = request.arguments.unwrap_or_default();
        let argument = |name: &str| -> Result<String, ErrorData> {
            arguments
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| {
                    ErrorData::invalid_params(format!("argument {name} is required"), None)
                })
        };
        let messages = match request.name.as_str() {
            "test_simple_prompt" => json!([
                {"role": "user", "content": {"type": "text", "text": "This is a simple prompt for testing."}},
            ]),
            "test_prompt_with_arguments" => {
                let (first, second) = (argument("arg1")?, argument("arg2")?);
                json!([{"role": "user", "content": {
                    "type": "text",
                    "text": format!("Prompt with arguments: arg1='{first}', arg2='{second}'"),
                }}])
            }
            "test_prompt_with_embedded_resource" => json!([
                {"role": "user", "content": {"type": "resource", "resource": {
                    "uri": argument("resourceUri")?,
                    "mimeType": "text/plain",
                    "text": "Embedded resource content for testing.",
                }}},
                {"role": "user", "content": {"type": "text", "text": "Please process the embedded resource above."}},
            ]),
            "test_prompt_with_image" => json!([
                {"role": "user", "content": {"type": "image", "data": RED_PIXEL_PNG_BASE64, "mimeType": "image/png"}},
                {"role": "user", "content": {"type": "text", "text": "Please analyze the image above."}},
            ]),
            unknown => {
                return Err(ErrorData::invalid_params(
                    format!("prompt {unknown} not found"),
                    None,
                ));
            }
        };
        let result: rmcp::model::GetPromptResult = from_json(json!({ "messages": messages }))?;
        Ok(result.into())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        const CANDIDATES: [&str; 5] = ["paris", "park", "party", "test", "testing"];
        let typed = request.argument.value.to_lowercase();
        let values: Vec<&str> = CANDIDATES
            .into_iter()
            .filter(|candidate| candidate.starts_with(&typed))
            .collect();
        from_json(json!({"completion": {
            "values": values, "total": values.len(), "hasMore": false,
        }}))
    }
}

//! Request bodies of `POST /v1/chat/completions` and `POST /v1/completions`.
//!
//! The body is read into a `serde_json::Value` first and each field is then taken out on
//! its own, so that a wrong type is answered with the field's name in `param` (a derived
//! struct would only say "at line 1 column 40"). Unknown fields are ignored, since the
//! official clients send fields we have no use for; fields that would change the answer
//! and that we cannot honour (`tools`, penalties, `n > 1`) are refused instead of dropped.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::error::ApiError;

/// OpenAI's limit on the number of stop sequences.
pub const MAX_STOP_SEQUENCES: usize = 4;
/// `max_tokens` of `/v1/completions` when the client sends none (OpenAI's and vLLM's default).
pub const DEFAULT_COMPLETION_MAX_TOKENS: u32 = 16;

/// Which endpoint a request came in on; decides the shape of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Completion,
}

/// The author of a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Instructions from the application.
    System,
    /// OpenAI's newer name for `system`; chat templates usually treat both alike.
    Developer,
    /// The end user.
    User,
    /// An earlier answer of the model.
    Assistant,
    /// The result of a tool call.
    Tool,
}

impl Role {
    /// The role as chat templates spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "system" => Role::System,
            "developer" => Role::Developer,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            _ => return None,
        })
    }
}

/// One chat message, its text parts already joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// Its text; text parts of an array content are concatenated with no separator.
    pub content: String,
}

/// What the model continues from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// A conversation, still to be rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
    /// A raw text prompt, still to be tokenized.
    Text(String),
    /// Token ids sent by the client, used as they are.
    Tokens(Vec<u32>),
}

/// A validated generation request, independent of the endpoint's wire format.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// The model the client asked for, as sent.
    pub model: String,
    /// What to continue from.
    pub prompt: Prompt,
    /// Most tokens to generate; `None` means up to the model's context.
    pub max_tokens: Option<u32>,
    /// Sampling temperature in `[0, 2]`; 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling mass in `[0, 1]`; 1 disables it.
    pub top_p: f32,
    /// Top-k cut-off; 0 disables it (vLLM's `-1` is read as 0).
    pub top_k: u32,
    /// Min-p cut-off in `[0, 1]`; 0 disables it.
    pub min_p: f32,
    /// Sampling seed, for reproducible answers.
    pub seed: Option<u64>,
    /// Stop sequences, at most [`MAX_STOP_SEQUENCES`], none empty.
    pub stop: Vec<String>,
    /// Answer as server-sent events.
    pub stream: bool,
    /// Send a last chunk with usage (only ever true when `stream` is).
    pub include_usage: bool,
    /// Return the log-probability of each sampled token.
    pub logprobs: bool,
    /// Keep generating past the end-of-sequence token (vLLM extension).
    pub ignore_eos: bool,
    /// The client's end-user id, as sent.
    pub user: Option<String>,
    /// The endpoint the request came in on.
    pub kind: Endpoint,
}

/// Parses and validates a `POST /v1/chat/completions` body.
pub fn parse_chat(body: &[u8]) -> Result<GenerationRequest, ApiError> {
    let obj = parse_object(body)?;
    let model = parse_model(&obj)?;
    let messages = parse_messages(&obj)?;
    reject_unsupported(&obj)?;
    let logprobs = field::<bool>(&obj, "logprobs")?.unwrap_or(false);
    if field::<u32>(&obj, "top_logprobs")?.unwrap_or(0) > 0 {
        return Err(unsupported(
            "top_logprobs > 0 is not supported",
            "top_logprobs",
        ));
    }
    let max_tokens = parse_max_tokens(&obj)?;
    finish(
        &obj,
        model,
        Prompt::Chat(messages),
        max_tokens,
        logprobs,
        Endpoint::Chat,
    )
}

/// Parses and validates a `POST /v1/completions` body.
pub fn parse_completion(body: &[u8]) -> Result<GenerationRequest, ApiError> {
    let obj = parse_object(body)?;
    let model = parse_model(&obj)?;
    let prompt = parse_prompt(&obj)?;
    reject_unsupported(&obj)?;
    if field::<bool>(&obj, "echo")?.unwrap_or(false) {
        return Err(unsupported("echo is not supported", "echo"));
    }
    if !field::<String>(&obj, "suffix")?
        .unwrap_or_default()
        .is_empty()
    {
        return Err(unsupported("suffix is not supported", "suffix"));
    }
    if field::<u64>(&obj, "best_of")?.unwrap_or(1) != 1 {
        return Err(unsupported("best_of > 1 is not supported", "best_of"));
    }
    let logprobs = match get(&obj, "logprobs") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => match v.as_u64() {
            Some(0) => false,
            Some(1) => true,
            Some(_) => {
                return Err(unsupported(
                    "logprobs > 1 is not supported; only the sampled token's logprob is returned",
                    "logprobs",
                ));
            }
            None => {
                return Err(ApiError::bad_request(
                    format!("Invalid value for 'logprobs': expected an integer in 0..=1, got {v}"),
                    Some("logprobs"),
                ));
            }
        },
    };
    let max_tokens = parse_max_tokens(&obj)?.or(Some(DEFAULT_COMPLETION_MAX_TOKENS));
    finish(
        &obj,
        model,
        prompt,
        max_tokens,
        logprobs,
        Endpoint::Completion,
    )
}

/// Parses a body for `endpoint`.
pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<GenerationRequest, ApiError> {
    match endpoint {
        Endpoint::Chat => parse_chat(body),
        Endpoint::Completion => parse_completion(body),
    }
}

/// The fields both endpoints share.
fn finish(
    obj: &Map<String, Value>,
    model: String,
    prompt: Prompt,
    max_tokens: Option<u32>,
    logprobs: bool,
    kind: Endpoint,
) -> Result<GenerationRequest, ApiError> {
    match field::<u64>(obj, "n")? {
        None | Some(1) => {}
        Some(0) => return Err(ApiError::bad_request("n must be at least 1", Some("n"))),
        Some(_) => return Err(unsupported("n > 1 is not supported", "n")),
    }
    let temperature = ranged(obj, "temperature", 0.0, 2.0)?.unwrap_or(1.0);
    let top_p = ranged(obj, "top_p", 0.0, 1.0)?.unwrap_or(1.0);
    let min_p = ranged(obj, "min_p", 0.0, 1.0)?.unwrap_or(0.0);
    let top_k = match field::<i64>(obj, "top_k")? {
        None | Some(-1) => 0,
        Some(k) => u32::try_from(k).map_err(|_| {
            ApiError::bad_request(
                format!(
                    "top_k must be -1 (disabled) or in 0..={}, got {k}",
                    u32::MAX
                ),
                Some("top_k"),
            )
        })?,
    };
    let stream = field::<bool>(obj, "stream")?.unwrap_or(false);
    let include_usage = match get(obj, "stream_options") {
        None => false,
        Some(Value::Object(opts)) => {
            field_at::<bool>(opts, "include_usage", "stream_options.include_usage")?
                .unwrap_or(false)
        }
        Some(v) => return Err(wrong_type("stream_options", "an object", v)),
    };
    Ok(GenerationRequest {
        model,
        prompt,
        max_tokens,
        temperature,
        top_p,
        top_k,
        min_p,
        seed: field::<u64>(obj, "seed")?,
        stop: parse_stop(obj)?,
        stream,
        include_usage: stream && include_usage,
        logprobs,
        ignore_eos: field::<bool>(obj, "ignore_eos")?.unwrap_or(false),
        user: field::<String>(obj, "user")?,
        kind,
    })
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            format!("We could not parse the JSON body of your request: {e}"),
            None,
        )
    })?;
    match value {
        Value::Object(obj) => Ok(obj),
        other => Err(ApiError::bad_request(
            format!(
                "The request body must be a JSON object, got {}",
                type_name(&other)
            ),
            None,
        )),
    }
}

fn parse_model(obj: &Map<String, Value>) -> Result<String, ApiError> {
    match field::<String>(obj, "model")? {
        None => Err(missing("model")),
        Some(m) if m.is_empty() => Err(ApiError::bad_request(
            "'model' must not be empty",
            Some("model"),
        )),
        Some(m) => Ok(m),
    }
}

/// `max_completion_tokens` is OpenAI's newer name; it wins when both are sent.
fn parse_max_tokens(obj: &Map<String, Value>) -> Result<Option<u32>, ApiError> {
    let legacy = field::<u32>(obj, "max_tokens")?;
    let newer = field::<u32>(obj, "max_completion_tokens")?;
    let (value, param) = match (newer, legacy) {
        (Some(v), _) => (v, "max_completion_tokens"),
        (None, Some(v)) => (v, "max_tokens"),
        (None, None) => return Ok(None),
    };
    if value == 0 {
        return Err(ApiError::bad_request(
            format!("'{param}' must be at least 1"),
            Some(param),
        ));
    }
    Ok(Some(value))
}

fn parse_messages(obj: &Map<String, Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let value = get(obj, "messages").ok_or_else(|| missing("messages"))?;
    let Value::Array(items) = value else {
        return Err(wrong_type("messages", "an array of messages", value));
    };
    if items.is_empty() {
        return Err(ApiError::bad_request(
            "'messages' must contain at least one message",
            Some("messages"),
        ));
    }
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("messages.[{i}]");
        let Value::Object(msg) = item else {
            return Err(wrong_type(&at, "a message object", item));
        };
        let role_param = format!("{at}.role");
        let role_name =
            field_at::<String>(msg, "role", &role_param)?.ok_or_else(|| missing(&role_param))?;
        let role = Role::parse(&role_name).ok_or_else(|| {
            ApiError::bad_request(
                format!(
                    "Invalid role '{role_name}'; expected one of system, developer, user, \
                     assistant, tool"
                ),
                Some(&role_param),
            )
        })?;
        let content = parse_content(msg.get("content"), role, &format!("{at}.content"))?;
        messages.push(ChatMessage { role, content });
    }
    Ok(messages)
}

fn parse_content(value: Option<&Value>, role: Role, param: &str) -> Result<String, ApiError> {
    match value {
        // An assistant turn that only carried tool calls or a refusal has no content.
        None | Some(Value::Null) if role == Role::Assistant => Ok(String::new()),
        None | Some(Value::Null) => Err(missing(param)),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let at = format!("{param}.[{j}]");
                let Value::Object(part) = part else {
                    return Err(wrong_type(&at, "a content part object", part));
                };
                let type_param = format!("{at}.type");
                let kind = field_at::<String>(part, "type", &type_param)?
                    .ok_or_else(|| missing(&type_param))?;
                if kind != "text" {
                    return Err(unsupported(
                        &format!("Content parts of type '{kind}' are not supported; only 'text'"),
                        &type_param,
                    ));
                }
                let text_param = format!("{at}.text");
                let part_text = field_at::<String>(part, "text", &text_param)?
                    .ok_or_else(|| missing(&text_param))?;
                text.push_str(&part_text);
            }
            Ok(text)
        }
        Some(other) => Err(wrong_type(
            param,
            "a string or an array of content parts",
            other,
        )),
    }
}

fn parse_prompt(obj: &Map<String, Value>) -> Result<Prompt, ApiError> {
    const SHAPES: &str = "a string, an array of one string, or an array of token ids";
    let value = get(obj, "prompt").ok_or_else(|| missing("prompt"))?;
    let prompt = match value {
        Value::String(s) => Prompt::Text(s.clone()),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
            Prompt::Tokens(token_ids(items)?)
        }
        Value::Array(items) => match items.as_slice() {
            [] => Prompt::Text(String::new()),
            [Value::String(s)] => Prompt::Text(s.clone()),
            [Value::Array(ids)] if ids.iter().all(Value::is_number) => {
                Prompt::Tokens(token_ids(ids)?)
            }
            [_, _, ..] if items.iter().all(|v| v.is_string() || v.is_array()) => {
                return Err(unsupported("batched prompts are not supported", "prompt"));
            }
            _ => return Err(wrong_type("prompt", SHAPES, value)),
        },
        other => return Err(wrong_type("prompt", SHAPES, other)),
    };
    let empty = match &prompt {
        Prompt::Text(s) => s.is_empty(),
        Prompt::Tokens(t) => t.is_empty(),
        Prompt::Chat(m) => m.is_empty(),
    };
    if empty {
        return Err(ApiError::bad_request(
            "'prompt' must not be empty",
            Some("prompt"),
        ));
    }
    Ok(prompt)
}

fn token_ids(items: &[Value]) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .map(|v| {
            v.as_u64().and_then(|id| u32::try_from(id).ok()).ok_or_else(|| {
                ApiError::bad_request(
                    format!("Invalid token id {v} in 'prompt'; expected an integer in 0..=4294967295"),
                    Some("prompt"),
                )
            })
        })
        .collect()
}

fn parse_stop(obj: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let stop: Vec<String> = match get(obj, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(wrong_type("stop", "a string or an array of strings", other)),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(wrong_type("stop", "a string or an array of strings", other)),
    };
    if stop.len() > MAX_STOP_SEQUENCES {
        return Err(ApiError::bad_request(
            format!(
                "'stop' takes at most {MAX_STOP_SEQUENCES} sequences, got {}",
                stop.len()
            ),
            Some("stop"),
        ));
    }
    // An empty stop sequence would match at once; clients send `""` to mean "none".
    Ok(stop.into_iter().filter(|s| !s.is_empty()).collect())
}

/// Refuses fields that would change the answer in a way we cannot honour. Their neutral
/// values (`tools: []`, `frequency_penalty: 0`, ...) pass, as some clients always send them.
fn reject_unsupported(obj: &Map<String, Value>) -> Result<(), ApiError> {
    for name in ["tools", "functions"] {
        if get(obj, name).is_some_and(|v| !is_empty_collection(v)) {
            return Err(unsupported(&format!("'{name}' is not supported"), name));
        }
    }
    for name in ["tool_choice", "function_call"] {
        match get(obj, name) {
            None => {}
            Some(Value::String(s)) if s == "none" || s == "auto" => {}
            Some(_) => return Err(unsupported(&format!("'{name}' is not supported"), name)),
        }
    }
    if let Some(v) = get(obj, "response_format") {
        let kind = v.get("type").and_then(Value::as_str);
        if kind != Some("text") {
            return Err(unsupported(
                &format!(
                    "response_format of type '{}' is not supported",
                    kind.unwrap_or("?")
                ),
                "response_format",
            ));
        }
    }
    if get(obj, "logit_bias").is_some_and(|v| !is_empty_collection(v)) {
        return Err(unsupported("logit_bias is not supported", "logit_bias"));
    }
    if get(obj, "audio").is_some() {
        return Err(unsupported("audio output is not supported", "audio"));
    }
    for (name, neutral) in [
        ("frequency_penalty", 0.0),
        ("presence_penalty", 0.0),
        ("repetition_penalty", 1.0),
    ] {
        if field::<f64>(obj, name)?.is_some_and(|v| v != neutral) {
            return Err(unsupported(&format!("{name} is not supported"), name));
        }
    }
    Ok(())
}

/// A float field checked to lie in `[lo, hi]`.
fn ranged(obj: &Map<String, Value>, name: &str, lo: f64, hi: f64) -> Result<Option<f32>, ApiError> {
    match field::<f64>(obj, name)? {
        None => Ok(None),
        Some(v) if (lo..=hi).contains(&v) => Ok(Some(v as f32)),
        Some(v) => Err(ApiError::bad_request(
            format!("'{name}' must be between {lo} and {hi}, got {v}"),
            Some(name),
        )),
    }
}

/// A field of the request; absent and `null` both read as `None`.
fn get<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

fn field<T: DeserializeOwned>(obj: &Map<String, Value>, name: &str) -> Result<Option<T>, ApiError> {
    field_at(obj, name, name)
}

/// Reads `name` of `obj` as a `T`, naming it `param` when it has the wrong type.
fn field_at<T: DeserializeOwned>(
    obj: &Map<String, Value>,
    name: &str,
    param: &str,
) -> Result<Option<T>, ApiError> {
    match get(obj, name) {
        None => Ok(None),
        Some(v) => T::deserialize(v).map(Some).map_err(|e| {
            ApiError::bad_request(format!("Invalid value for '{param}': {e}"), Some(param))
        }),
    }
}

fn missing(param: &str) -> ApiError {
    ApiError::bad_request(
        format!("Missing required parameter: '{param}'"),
        Some(param),
    )
}

fn unsupported(message: &str, param: &str) -> ApiError {
    let mut e = ApiError::bad_request(message, Some(param));
    e.code = Some("unsupported_parameter".to_owned());
    e
}

fn wrong_type(param: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::bad_request(
        format!(
            "Invalid type for '{param}': expected {expected}, got {}",
            type_name(got)
        ),
        Some(param),
    )
}

fn is_empty_collection(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

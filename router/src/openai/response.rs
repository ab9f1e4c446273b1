//! Response bodies: whole completions, streamed chunks and the model list.
//!
//! The builders take plain values and return JSON text, so the server never touches serde.
//! Time and ids come in from the caller (the server owns the clock and the RNG).

use std::collections::BTreeMap;

use serde::Serialize;

use super::error::ApiError;
use super::request::Endpoint;

/// The event that ends every stream.
pub const SSE_DONE: &str = "data: [DONE]\n\n";

/// Logprob written in place of a non-finite one (JSON has no `-Infinity`; vLLM does the same).
const LOGPROB_FLOOR: f32 = -9999.0;

/// Frames one JSON text as a server-sent event.
pub fn sse_event(json: &str) -> String {
    format!("data: {json}\n\n")
}

/// An error in the middle of a stream, as OpenAI sends it (then the stream ends).
pub fn sse_error(error: &ApiError) -> String {
    sse_event(&error.body())
}

/// The response id for `endpoint`: `chatcmpl-…` or `cmpl-…` followed by `unique` in hex.
pub fn response_id(endpoint: Endpoint, unique: u64) -> String {
    match endpoint {
        Endpoint::Chat => format!("chatcmpl-{unique:016x}"),
        Endpoint::Completion => format!("cmpl-{unique:016x}"),
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// End-of-sequence token or a stop sequence.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Tokens in the prompt (after the chat template).
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Sum of the two.
    pub total_tokens: u32,
    /// Breakdown of the prompt tokens.
    pub prompt_tokens_details: PromptTokensDetails,
}

/// Breakdown of the prompt tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the KV cache rather than prefilled.
    pub cached_tokens: u32,
}

impl Usage {
    /// Usage from the counts; `total_tokens` saturates rather than wrapping.
    pub fn new(prompt_tokens: u32, completion_tokens: u32, cached_tokens: u32) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }
}

/// Sampled tokens with their log-probabilities, in order.
pub type Logprobs<'a> = &'a [(String, f32)];

/// Pairs token ids with their logprobs, naming each token `token_id:{id}` as vLLM's
/// `return_tokens_as_token_ids` does: the router has no tokenizer to spell them.
/// Extra entries of the longer slice are dropped.
pub fn token_id_logprobs(token_ids: &[u32], logprobs: &[f32]) -> Vec<(String, f32)> {
    token_ids
        .iter()
        .zip(logprobs)
        .map(|(id, lp)| (format!("token_id:{id}"), *lp))
        .collect()
}

fn finite(logprob: f32) -> f32 {
    if logprob.is_finite() {
        logprob
    } else {
        LOGPROB_FLOOR
    }
}

#[derive(Serialize)]
struct ChatTokenLogprob<'a> {
    token: &'a str,
    logprob: f32,
    bytes: Option<Vec<u8>>,
    top_logprobs: [(); 0],
}

#[derive(Serialize)]
struct ChatLogprobs<'a> {
    content: Vec<ChatTokenLogprob<'a>>,
}

fn chat_logprobs(lp: Option<Logprobs<'_>>) -> Option<ChatLogprobs<'_>> {
    lp.map(|lp| ChatLogprobs {
        content: lp
            .iter()
            .map(|(token, logprob)| ChatTokenLogprob {
                token,
                logprob: finite(*logprob),
                bytes: None,
                top_logprobs: [],
            })
            .collect(),
    })
}

/// The legacy `/v1/completions` logprobs object.
#[derive(Serialize)]
struct TextLogprobs<'a> {
    tokens: Vec<&'a str>,
    token_logprobs: Vec<f32>,
    top_logprobs: Vec<BTreeMap<&'a str, f32>>,
    /// Character offset of each token in the completion text.
    text_offset: Vec<usize>,
}

/// `start` is the character offset of the first token within the whole completion.
fn text_logprobs(lp: Option<Logprobs<'_>>, start: usize) -> Option<TextLogprobs<'_>> {
    let lp = lp?;
    let mut offset = start;
    let mut out = TextLogprobs {
        tokens: Vec::with_capacity(lp.len()),
        token_logprobs: Vec::with_capacity(lp.len()),
        top_logprobs: Vec::with_capacity(lp.len()),
        text_offset: Vec::with_capacity(lp.len()),
    };
    for (token, logprob) in lp {
        let logprob = finite(*logprob);
        out.tokens.push(token);
        out.token_logprobs.push(logprob);
        out.top_logprobs
            .push(BTreeMap::from([(token.as_str(), logprob)]));
        out.text_offset.push(offset);
        offset += token.chars().count();
    }
    Some(out)
}

#[derive(Serialize)]
struct AssistantMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    logprobs: Option<ChatLogprobs<'a>>,
    finish_reason: FinishReason,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    index: u32,
    text: &'a str,
    logprobs: Option<TextLogprobs<'a>>,
    finish_reason: Option<FinishReason>,
}

#[derive(Serialize)]
struct Completion<'a, C> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<C>,
    /// Absent: not a usage-carrying response; `Some(None)`: `null` (OpenAI's streamed
    /// chunks when usage was asked for); `Some(Some(_))`: the counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<Usage>>,
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Our types hold only strings, numbers and sequences, which cannot fail to serialize.
    serde_json::to_string(value)
        .unwrap_or_else(|e| ApiError::internal(format!("serializing a response: {e}")).body())
}

/// A whole `chat.completion` body.
pub fn chat_completion(
    id: &str,
    created: u64,
    model: &str,
    text: &str,
    finish_reason: FinishReason,
    usage: Usage,
    logprobs: Option<Logprobs<'_>>,
) -> String {
    to_json(&Completion {
        id,
        object: "chat.completion",
        created,
        model,
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: text,
            },
            logprobs: chat_logprobs(logprobs),
            finish_reason,
        }],
        usage: Some(Some(usage)),
    })
}

/// A whole `text_completion` body.
pub fn text_completion(
    id: &str,
    created: u64,
    model: &str,
    text: &str,
    finish_reason: FinishReason,
    usage: Usage,
    logprobs: Option<Logprobs<'_>>,
) -> String {
    to_json(&Completion {
        id,
        object: "text_completion",
        created,
        model,
        choices: vec![TextChoice {
            index: 0,
            text,
            logprobs: text_logprobs(logprobs, 0),
            finish_reason: Some(finish_reason),
        }],
        usage: Some(Some(usage)),
    })
}

/// The whole body of one non-streamed answer, for either endpoint.
#[allow(clippy::too_many_arguments)]
pub fn completion_body(
    endpoint: Endpoint,
    id: &str,
    created: u64,
    model: &str,
    text: &str,
    finish_reason: FinishReason,
    usage: Usage,
    logprobs: Option<Logprobs<'_>>,
) -> String {
    match endpoint {
        Endpoint::Chat => chat_completion(id, created, model, text, finish_reason, usage, logprobs),
        Endpoint::Completion => {
            text_completion(id, created, model, text, finish_reason, usage, logprobs)
        }
    }
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[derive(Serialize)]
struct ChatChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<ChatLogprobs<'a>>,
    finish_reason: Option<FinishReason>,
}

/// Writes the chunks of one streamed answer, in order:
/// [`start`](Self::start) (chat only), [`delta`](Self::delta) per piece of text,
/// [`finish`](Self::finish), [`usage`](Self::usage) (when asked for), then [`SSE_DONE`].
/// Each method returns the chunk's JSON; frame it with [`sse_event`].
#[derive(Debug, Clone)]
pub struct StreamWriter<'a> {
    endpoint: Endpoint,
    id: &'a str,
    created: u64,
    model: &'a str,
    include_usage: bool,
    /// Characters sent so far, for the legacy logprobs' `text_offset`.
    chars_sent: usize,
}

impl<'a> StreamWriter<'a> {
    /// A writer for one stream; `include_usage` is the request's `stream_options.include_usage`.
    pub fn new(
        endpoint: Endpoint,
        id: &'a str,
        created: u64,
        model: &'a str,
        include_usage: bool,
    ) -> Self {
        Self {
            endpoint,
            id,
            created,
            model,
            include_usage,
            chars_sent: 0,
        }
    }

    fn object(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completion => "text_completion",
        }
    }

    fn chunk<C: Serialize>(&self, choices: Vec<C>, usage: Option<Usage>) -> String {
        to_json(&Completion {
            id: self.id,
            object: self.object(),
            created: self.created,
            model: self.model,
            choices,
            usage: self.include_usage.then_some(usage),
        })
    }

    fn chat_chunk(
        &self,
        delta: Delta<'_>,
        lp: Option<Logprobs<'_>>,
        finish: Option<FinishReason>,
    ) -> String {
        let choice = ChatChunkChoice {
            index: 0,
            delta,
            logprobs: chat_logprobs(lp),
            finish_reason: finish,
        };
        self.chunk(vec![choice], None)
    }

    /// The opening chunk: chat announces the assistant role; completions have none.
    pub fn start(&self) -> Option<String> {
        match self.endpoint {
            Endpoint::Chat => Some(self.chat_chunk(
                Delta {
                    role: Some("assistant"),
                    content: Some(""),
                },
                None,
                None,
            )),
            Endpoint::Completion => None,
        }
    }

    /// A chunk carrying newly generated text (and, when asked for, its tokens' logprobs).
    pub fn delta(&mut self, text: &str, logprobs: Option<Logprobs<'_>>) -> String {
        let json = match self.endpoint {
            Endpoint::Chat => self.chat_chunk(
                Delta {
                    role: None,
                    content: Some(text),
                },
                logprobs,
                None,
            ),
            Endpoint::Completion => {
                let choice = TextChoice {
                    index: 0,
                    text,
                    logprobs: text_logprobs(logprobs, self.chars_sent),
                    finish_reason: None,
                };
                self.chunk(vec![choice], None)
            }
        };
        self.chars_sent += text.chars().count();
        json
    }

    /// The chunk that says why generation ended (an empty delta or empty text).
    pub fn finish(&self, reason: FinishReason) -> String {
        match self.endpoint {
            Endpoint::Chat => self.chat_chunk(Delta::default(), None, Some(reason)),
            Endpoint::Completion => {
                let choice = TextChoice {
                    index: 0,
                    text: "",
                    logprobs: None,
                    finish_reason: Some(reason),
                };
                self.chunk(vec![choice], None)
            }
        }
    }

    /// The usage chunk (no choices), or `None` when the client did not ask for it.
    pub fn usage(&self, usage: Usage) -> Option<String> {
        self.include_usage
            .then(|| self.chunk::<TextChoice<'_>>(Vec::new(), Some(usage)))
    }
}

#[derive(Serialize)]
struct Model<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<Model<'a>>,
}

fn model(id: &str, created: u64) -> Model<'_> {
    Model {
        id,
        object: "model",
        created,
        owned_by: "meridian",
    }
}

/// The `GET /v1/models` body, from `(id, created)` pairs.
pub fn models_list<'a>(models: impl IntoIterator<Item = (&'a str, u64)>) -> String {
    let data = models
        .into_iter()
        .map(|(id, created)| model(id, created))
        .collect();
    to_json(&ModelList {
        object: "list",
        data,
    })
}

/// The `GET /v1/models/{id}` body.
pub fn model_object(id: &str, created: u64) -> String {
    to_json(&model(id, created))
}

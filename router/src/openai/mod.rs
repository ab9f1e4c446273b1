//! The OpenAI-compatible wire layer: request parsing and validation, error bodies,
//! response bodies and SSE framing.
//!
//! Sans-IO: bytes in, typed requests or JSON text out. No hyper, no tokio; the server
//! reads the body, calls [`parse_chat`] or [`parse_completion`], and writes what the
//! builders of [`response`] return.

pub mod error;
pub mod request;
pub mod response;

#[cfg(test)]
mod tests;

pub use error::ApiError;
pub use request::{
    ChatMessage, Endpoint, GenerationRequest, Prompt, Role, parse, parse_chat, parse_completion,
};
pub use response::{
    FinishReason, Logprobs, SSE_DONE, StreamWriter, Usage, chat_completion, completion_body,
    model_object, models_list, response_id, sse_error, sse_event, text_completion,
    token_id_logprobs,
};

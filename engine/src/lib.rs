//! `meridian-engine`: the inference worker every PoP embeds.
//!
//! Model loading (GGUF), the tokenizer, the paged KV cache with prefix caching, the
//! continuous-batching scheduler with chunked prefill, sampling, the backends that run
//! one step on a batch (`cpu`; `cuda` to come behind a cargo feature), the step loop
//! ([`Engine`]) and the `meridian.worker.v1.Worker` gRPC service.
//!
//! Depends on `meridian-proto` only. The scheduler and the KV block manager are sans-IO
//! so the simulator and the benches drive them directly.

pub mod backend;
pub mod config;
pub mod engine;
pub mod gguf;
pub mod kv;
pub mod model;
pub mod sampling;
pub mod scheduler;
pub mod service;
pub mod tokenizer;

#[cfg(test)]
mod testing;

pub use config::EngineConfig;
pub use engine::{Completion, Engine, EngineStats, Event, FinishReason, Input, Request, Usage};
pub use sampling::SamplingParams;
pub use tokenizer::ChatMessage;

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The configuration is inconsistent.
    #[error("invalid engine configuration: {0}")]
    Config(String),
    /// A GGUF model file is malformed or lacks what the engine needs.
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    /// The model's shape or weights are not what the engine can run.
    #[error("unsupported model: {0}")]
    Model(String),
    /// The tokenizer could not be built or could not encode the input.
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::TokenizerError),
    /// Invalid sampling parameters or stop strings.
    #[error(transparent)]
    Sampling(#[from] sampling::SamplingError),
    /// The request is invalid for this model (the message says which value).
    #[error("{0}")]
    InvalidRequest(String),
    /// The engine's step thread has stopped.
    #[error("the engine has stopped")]
    Stopped,
}

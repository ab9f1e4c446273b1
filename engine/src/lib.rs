//! `meridian-engine`: the inference worker every PoP embeds.
//!
//! Model loading (GGUF), the tokenizer, the paged KV cache with prefix caching, the
//! continuous-batching scheduler with chunked prefill, sampling, the backends that run
//! one step on a batch (`cpu`; `cuda` behind the cargo feature of that name), the step loop
//! ([`Engine`]), the worker slot whose model loads, unloads and drains at runtime
//! ([`slot::WorkerSlot`]) and the `meridian.worker.v1.Worker` gRPC service over it.
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
pub mod slot;
pub mod tokenizer;

pub mod testing;

pub use config::EngineConfig;
pub use engine::{Completion, Engine, EngineStats, Event, FinishReason, Input, Request, Usage};
pub use sampling::SamplingParams;
pub use tokenizer::ChatMessage;

/// The id a worker serves a model under: the file or directory name without its
/// extension and quantization suffix (`SmolLM2-135M-Instruct.Q4_1.gguf` is
/// `SmolLM2-135M-Instruct`).
pub fn model_id(path: &std::path::Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".gguf").unwrap_or(&name);
    match stem.rsplit_once('.') {
        Some((base, quant)) if is_quant_suffix(quant) && !base.is_empty() => base.to_string(),
        _ => stem.to_string(),
    }
}

/// `Q4_1`, `Q8_0`, `F16`, `BF16`, `IQ4_XS`...: a GGUF file name's quantization tag.
fn is_quant_suffix(s: &str) -> bool {
    let upper = s.to_ascii_uppercase();
    ["Q", "F", "BF", "IQ"].iter().any(|p| {
        upper
            .strip_prefix(p)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
    })
}

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
    /// The GPU or its libraries are missing or failed (the message says which).
    #[error("GPU backend: {0}")]
    Device(String),
    /// The engine's step thread has stopped.
    #[error("the engine has stopped")]
    Stopped,
}

#[cfg(test)]
mod tests {
    #[test]
    fn model_ids_drop_extension_and_quantization() {
        let id = |p: &str| super::model_id(std::path::Path::new(p));
        assert_eq!(
            id("/m/SmolLM2-135M-Instruct.Q4_1.gguf"),
            "SmolLM2-135M-Instruct"
        );
        assert_eq!(id("llama-3.1-8b.BF16.gguf"), "llama-3.1-8b");
        assert_eq!(id("model.gguf"), "model");
        assert_eq!(id("/ckpt/Qwen2.5-0.5B"), "Qwen2.5-0.5B");
        assert_eq!(id("/ckpt/foo.Instruct"), "foo.Instruct");
    }
}

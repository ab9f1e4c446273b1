//! `meridian-engine`: the inference worker every PoP embeds.
//!
//! Model loading (GGUF, safetensors), the tokenizer, the paged KV cache with prefix
//! caching, the continuous-batching scheduler with chunked prefill, sampling, and the
//! backends that run one step on a batch (`cpu`; `cuda` behind a cargo feature).
//!
//! Depends on `meridian-proto` only. The scheduler's batch selection and the KV block
//! manager are sans-IO so the simulator and benches can drive them directly.

pub mod config;
pub mod gguf;

#[cfg(test)]
mod testing;

pub use config::EngineConfig;

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The configuration is inconsistent.
    #[error("invalid engine configuration: {0}")]
    Config(String),
    /// A model file could not be read.
    #[error("cannot read model {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A GGUF model file is malformed or lacks what the engine needs.
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    /// A part of the engine that a later change builds.
    #[error("not implemented yet: {0}")]
    NotImplemented(&'static str),
}

//! The router's tokenizers: the engine's tokenizer and prompt rule behind the router's
//! `PromptTokenizer` trait, so the router hashes a prompt's blocks exactly as the worker
//! will (prefix-aware scoring) without the router crate depending on the engine.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use meridian_engine::model::checkpoint::Checkpoint;
use meridian_engine::tokenizer::Tokenizer;
use meridian_proto::worker::v1 as pb;
use meridian_router::tokens::{PromptTokenizer, Tokenizers};

/// A model's tokenizer, as its workers run it.
pub struct EngineTokenizer(Tokenizer);

impl PromptTokenizer for EngineTokenizer {
    fn prompt_tokens(&self, request: &pb::GenerateRequest) -> Option<Vec<u32>> {
        let input = meridian_engine::service::input_of(request.input.clone()).ok()?;
        meridian_engine::engine::prompt_tokens(&self.0, &input).ok()
    }
}

/// Loads the tokenizer of the checkpoint at `path` (a GGUF file or a safetensors
/// directory), reading only its metadata, not its weights.
pub fn load(path: &Path) -> anyhow::Result<EngineTokenizer> {
    let checkpoint = Checkpoint::open(path)
        .with_context(|| format!("cannot open {} for its tokenizer", path.display()))?;
    Ok(EngineTokenizer(checkpoint.tokenizer()?))
}

/// The tokenizers for `models` (model id, checkpoint path). A model whose tokenizer
/// cannot be loaded is left out with a warning: it is still routed, on a length
/// estimate and without prefix hits.
pub fn tokenizers<'a>(models: impl IntoIterator<Item = (String, &'a Path)>) -> Tokenizers {
    let mut out = Tokenizers::new();
    for (id, path) in models {
        match load(path) {
            Ok(t) => {
                out.insert(id, Arc::new(t) as Arc<dyn PromptTokenizer>);
            }
            Err(e) => {
                tracing::warn!(model = id, error = %format!("{e:#}"), "no tokenizer: routing this model without prefix hits")
            }
        }
    }
    out
}

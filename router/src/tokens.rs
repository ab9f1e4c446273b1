//! How the router learns a prompt's exact tokens: a tokenizer per model, supplied by the
//! binary that builds the router (the engine's, so the tokens, and with them the prefix
//! block hashes, are the ones the worker will compute). The router crate stays free of
//! the engine; a model without a tokenizer is scored on an estimate and without prefix
//! hits.

use std::collections::HashMap;
use std::sync::Arc;

use meridian_proto::worker::v1 as pb;

/// Turns a worker request into the prompt tokens the worker will prefill.
pub trait PromptTokenizer: Send + Sync {
    /// `None` when the request cannot be tokenized here (the worker will say why).
    fn prompt_tokens(&self, request: &pb::GenerateRequest) -> Option<Vec<u32>>;
}

/// Model id -> its tokenizer.
pub type Tokenizers = HashMap<String, Arc<dyn PromptTokenizer>>;

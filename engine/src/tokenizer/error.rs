use std::path::PathBuf;

use crate::gguf::GgufError;

/// Everything that can go wrong loading a tokenizer, encoding text or
/// rendering a chat. Each variant names the input that failed: the metadata
/// key, the file, the token, the template.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A `tokenizer.*` metadata key is missing or has the wrong type; the
    /// GGUF error names the key.
    #[error("GGUF tokenizer metadata: {0}")]
    Metadata(#[from] GgufError),

    #[error(
        "tokenizer model '{model}' (tokenizer.ggml.model) is not supported: only 'gpt2' (byte-level BPE) is"
    )]
    UnsupportedModel { model: String },

    #[error("pre-tokenizer '{pre}' (tokenizer.ggml.pre) is not supported")]
    UnsupportedPreTokenizer { pre: String },

    /// The vocabulary, merges or token types contradict each other.
    #[error("invalid tokenizer vocabulary: {reason}")]
    InvalidVocab { reason: String },

    /// A special-token id (BOS, EOS, ...) lies outside the vocabulary.
    #[error("{what} id {id} is outside the vocabulary of {vocab_size} tokens")]
    TokenIdOutOfRange {
        what: String,
        id: u64,
        vocab_size: usize,
    },

    /// The tokenizer library refused to build what the metadata describes.
    #[error("building the {what}: {reason}")]
    Build { what: &'static str, reason: String },

    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// `tokenizer.json` could not be loaded by the tokenizers library.
    #[error("cannot load tokenizer {}: {reason}", path.display())]
    Load { path: PathBuf, reason: String },

    /// `tokenizer_config.json` is not the JSON object we expect.
    #[error("invalid tokenizer config {}: {reason}", path.display())]
    Config { path: PathBuf, reason: String },

    /// No end-of-sequence token could be identified for a tokenizer.json model.
    #[error("no end-of-sequence token: {reason} (give a tokenizer_config.json with an eos_token)")]
    MissingEos { reason: String },

    /// Encoding failed inside the tokenizers library (the text is not echoed:
    /// prompts are never logged in full).
    #[error("encoding {len} bytes of text: {reason}")]
    Encode { len: usize, reason: String },

    /// The model's chat template does not compile.
    #[error("chat template does not compile: {reason}")]
    TemplateSyntax { reason: String },

    /// Rendering the chat template failed, including a `raise_exception(...)`
    /// from the template itself (e.g. "roles must alternate").
    #[error("rendering chat template: {reason}")]
    TemplateRender { reason: String },
}

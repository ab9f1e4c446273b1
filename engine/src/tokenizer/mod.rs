//! Text <-> token ids, chat templates and streaming detokenization.
//!
//! A [`Tokenizer`] is built from a GGUF file's `tokenizer.ggml.*` metadata
//! (byte-level BPE, `tokenizer.ggml.model = "gpt2"`) or from a Hugging Face
//! `tokenizer.json`; both become the `tokenizers` crate's pipeline, so a
//! GGUF model tokenizes exactly as its HF original. Chat templates are the
//! model's own Jinja, rendered with minijinja.
//!
//! Invariants: ids handed out are always below [`Tokenizer::vocab_size`];
//! text that spells a special token (`<|im_start|>`) becomes that token only
//! when the caller asks (`parse_special`); decoding skips special tokens.
//! Depends on nothing in the engine but `gguf`.

mod chat;
mod error;
mod gguf_vocab;
mod hf_files;
mod incremental;

#[cfg(test)]
mod cases;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::OnceLock;

pub use chat::ChatMessage;
pub use error::TokenizerError;
pub use incremental::IncrementalDecoder;

use crate::gguf::GgufFile;
use chat::ChatTemplate;

/// Texts of special tokens that end a turn or a document, whatever the
/// model's declared EOS (llama.cpp's list). A model trained on ChatML may
/// end with `<|endoftext|>` as well as `<|im_end|>`.
const EOG_TEXTS: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// A model's tokenizer. Immutable once built, `Send + Sync`: share one per
/// model behind an `Arc`.
pub struct Tokenizer {
    /// Splits special-token text out of the input before BPE.
    parse: tokenizers::Tokenizer,
    /// The same pipeline with special-token text encoded as plain text.
    /// `tokenizers` makes this a per-tokenizer switch, not a per-call one,
    /// so it is a second copy (about 10 MB for a 49k vocabulary), made on
    /// first use: chat prompts are encoded with `parse_special` and most
    /// servers never need it.
    plain: OnceLock<tokenizers::Tokenizer>,
    /// Vocabulary entries by id, as stored (byte-level: 'Ġ' for a space).
    texts: Vec<String>,
    bos: Option<u32>,
    add_bos: bool,
    eos: u32,
    /// Sorted, deduplicated.
    stop_ids: Vec<u32>,
    chat: Option<ChatTemplate>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.texts.len())
            .field("bos", &self.bos)
            .field("add_bos", &self.add_bos)
            .field("eos", &self.eos)
            .field("stop_ids", &self.stop_ids)
            .field("chat_template", &self.chat.is_some())
            .finish()
    }
}

/// What a loader extracts; [`Tokenizer::assemble`] derives the rest.
struct Loaded {
    inner: tokenizers::Tokenizer,
    texts: Vec<String>,
    special_ids: Vec<u32>,
    bos: Option<u32>,
    add_bos: bool,
    eos: u32,
    /// End-of-turn ids the metadata names besides EOS.
    end_of_turn: Vec<u32>,
    chat_template: Option<String>,
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata. Errors name the
    /// missing or malformed key; tokenizer models other than `gpt2`
    /// (byte-level BPE) and unknown `tokenizer.ggml.pre` values are refused
    /// rather than approximated.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        Self::assemble(gguf_vocab::load(file)?)
    }

    /// Builds the tokenizer from an HF `tokenizer.json`, taking the chat
    /// template, BOS/EOS and `add_bos_token` from `tokenizer_config.json`
    /// when given. Without it, EOS is the first special token with a known
    /// end-of-turn name, and there is no chat template.
    pub fn from_files(
        tokenizer_json: &Path,
        tokenizer_config_json: Option<&Path>,
    ) -> Result<Self, TokenizerError> {
        Self::assemble(hf_files::load(tokenizer_json, tokenizer_config_json)?)
    }

    fn assemble(loaded: Loaded) -> Result<Self, TokenizerError> {
        let Loaded {
            inner,
            texts,
            special_ids,
            bos,
            add_bos,
            eos,
            end_of_turn,
            chat_template,
        } = loaded;
        let text_of = |id: u32| texts.get(id as usize).map(String::as_str);
        let mut stop_ids: Vec<u32> = special_ids
            .iter()
            .copied()
            .filter(|&id| text_of(id).is_some_and(|t| EOG_TEXTS.contains(&t)))
            .chain(end_of_turn)
            .chain([eos])
            .collect();
        stop_ids.sort_unstable();
        stop_ids.dedup();

        let chat = match chat_template {
            Some(source) => Some(ChatTemplate::new(
                source,
                bos.and_then(text_of).map(str::to_owned),
                text_of(eos).unwrap_or_default().to_owned(),
            )?),
            None => None,
        };
        Ok(Tokenizer {
            parse: inner,
            plain: OnceLock::new(),
            texts,
            bos,
            add_bos,
            eos,
            stop_ids,
            chat,
        })
    }

    /// Encodes `text`. With `parse_special`, special tokens written in the
    /// text (`<|im_start|>`) become their ids, as a rendered chat template
    /// needs; without it they are tokenized as the characters they are (use
    /// this for untrusted content). BOS is prepended only when the model
    /// asks for it (`add_bos_token`) and the text does not already begin
    /// with it.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let tokenizer = if parse_special {
            &self.parse
        } else {
            self.plain.get_or_init(|| {
                let mut plain = self.parse.clone();
                plain.set_encode_special_tokens(true);
                plain
            })
        };
        let encoding = tokenizer
            .encode_fast(text, false)
            .map_err(|e| TokenizerError::Encode {
                len: text.len(),
                reason: e.to_string(),
            })?;
        let ids = encoding.get_ids();
        let mut out = Vec::with_capacity(ids.len() + 1);
        if self.add_bos
            && let Some(bos) = self.bos
            && ids.first() != Some(&bos)
        {
            out.push(bos);
        }
        out.extend_from_slice(ids);
        Ok(out)
    }

    /// Decodes ids to text. Special tokens (`<|im_end|>`, `<|endoftext|>`)
    /// are skipped, as OpenAI-compatible servers do, and so are ids outside
    /// the vocabulary; byte sequences that are not valid UTF-8 become
    /// U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        // The byte-level decoder cannot fail; should another decoder from a
        // tokenizer.json fail, empty text is the honest answer for ids that
        // have none.
        self.parse.decode(ids, true).unwrap_or_default()
    }

    /// Number of token ids, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }

    /// The model's BOS token, if it declares one (SmolLM2 declares
    /// `<|im_start|>` but never adds it).
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// Whether [`encode`](Self::encode) prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// EOS, the end-of-turn ids the metadata names, and every special token
    /// whose text is a known end-of-turn token (`<|im_end|>`,
    /// `<|endoftext|>`, `<|eot_id|>`, ...).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.stop_ids.binary_search(&id).is_ok()
    }

    /// The ids of [`is_end_of_generation`](Self::is_end_of_generation), sorted.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat.is_some()
    }

    /// Renders a conversation with the model's chat template, with
    /// `messages`, `add_generation_prompt`, `bos_token` and `eos_token` in
    /// scope, as HF's `apply_chat_template` does. A model without a template
    /// gets ChatML (`<|im_start|>role\ncontent<|im_end|>\n`, then
    /// `<|im_start|>assistant\n`). Encode the result with `parse_special`.
    /// Contents are inserted verbatim, so special-token text inside a
    /// message becomes a special token too, as with HF and llama.cpp.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        match &self.chat {
            Some(template) => template.render(messages, add_generation_prompt),
            None => Ok(chat::render_chatml(messages, add_generation_prompt)),
        }
    }

    /// The vocabulary entry for `id` as stored, not decoded: byte-level BPE
    /// shows a leading space as 'Ġ'. For logs and debugging.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(String::as_str)
    }
}

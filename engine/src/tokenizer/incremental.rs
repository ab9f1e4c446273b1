//! Streaming detokenization: text deltas as ids arrive one by one.
//!
//! Byte-level BPE splits one character across tokens (an emoji is often
//! four), so decoding each id on its own would emit U+FFFD halves. Like HF
//! TGI and vLLM, the decoder keeps a short window of recent ids: `prefix`
//! ids whose text was already emitted (context for decoders that look at
//! neighbours) and the ids after them, and emits the text the new ids add
//! once it no longer ends in an incomplete character.

use std::sync::Arc;

use super::Tokenizer;

/// Prompt ids that seed the window (vLLM uses 5): enough context for the
/// first generated token to decode as it would mid-sequence.
const PROMPT_CONTEXT: usize = 5;

/// Ids held back waiting for a character to complete before the text is
/// emitted anyway. A UTF-8 character spans at most 4 byte-level tokens;
/// past this the bytes are invalid (or the ids are special tokens that
/// decode to nothing), and holding on would grow the window without end.
pub(super) const MAX_HELD: usize = 8;

/// Turns a stream of generated ids into text deltas. The deltas of every
/// `push` plus the final [`flush`](Self::flush) concatenate to
/// `tok.decode(generated_ids)` (with the prompt context's text removed); no
/// delta ends in half a character, so none shows U+FFFD for text that is
/// valid as a whole. Memory stays bounded by the window, whatever the
/// length of the sequence.
#[derive(Debug)]
pub struct IncrementalDecoder {
    tok: Arc<Tokenizer>,
    /// Ids from the prefix offset on.
    window: Vec<u32>,
    /// `window[..read]` is the prefix: already emitted, or prompt context.
    read: usize,
    /// `tok.decode(&window[..read])`.
    prefix_text: String,
}

impl IncrementalDecoder {
    /// `prompt_tail` is the end of the prompt (any length; the last few ids
    /// are kept), so the first generated token decodes in context. Pass
    /// `&[]` when there is none.
    pub fn new(tok: Arc<Tokenizer>, prompt_tail: &[u32]) -> Self {
        let start = prompt_tail.len().saturating_sub(PROMPT_CONTEXT);
        let window = prompt_tail.get(start..).unwrap_or_default().to_vec();
        let prefix_text = tok.decode(&window);
        IncrementalDecoder {
            tok,
            read: window.len(),
            window,
            prefix_text,
        }
    }

    /// Adds one generated id and returns the text it completes, often empty
    /// (a special token, or part of a character).
    pub fn push(&mut self, id: u32) -> String {
        self.window.push(id);
        let text = self.tok.decode(&self.window);
        let complete = !text.ends_with(char::REPLACEMENT_CHARACTER);
        let grew = text.len() > self.prefix_text.len();
        let held = self.window.len() - self.read;
        if (complete && grew) || held > MAX_HELD {
            self.emit(&text)
        } else {
            String::new()
        }
    }

    /// Emits whatever is held back (an incomplete character becomes U+FFFD,
    /// as in a full decode). Call at the end of generation; pushing may go
    /// on afterwards.
    pub fn flush(&mut self) -> String {
        if self.read == self.window.len() {
            return String::new();
        }
        let text = self.tok.decode(&self.window);
        self.emit(&text)
    }

    #[cfg(test)]
    pub(super) fn window_len(&self) -> usize {
        self.window.len()
    }

    /// Returns what `text` (the window's decoding) adds to the prefix, and
    /// makes the ids just emitted the new prefix.
    fn emit(&mut self, text: &str) -> String {
        let delta = match text.strip_prefix(self.prefix_text.as_str()) {
            Some(delta) => delta.to_owned(),
            // A decoder that rewrote earlier text (e.g. space cleanup): emit
            // from where the two agree, on a character boundary.
            None => {
                let common = text
                    .char_indices()
                    .zip(self.prefix_text.chars())
                    .find(|((_, a), b)| a != b)
                    .map_or(text.len().min(self.prefix_text.len()), |((i, _), _)| i);
                let common = (0..=common)
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                text.get(common..).unwrap_or_default().to_owned()
            }
        };
        self.window.drain(..self.read);
        self.read = self.window.len();
        self.prefix_text = self.tok.decode(&self.window);
        delta
    }
}

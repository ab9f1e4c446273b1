//! The boundary between the engine and the hardware: one step on a batch.
//!
//! A backend owns the weights (uploaded once at load) and the KV storage (blocks of
//! `block_size` token slots, addressed by the ids the [`crate::kv::BlockManager`] hands
//! out). Each step gets the tokens of every scheduled chunk, where they sit in their
//! sequences, and the sequences' block tables; it writes the new tokens' K/V into their
//! slots and returns logits for the chunks that end a sequence. Buffers are sized once
//! for the largest step, so a step allocates nothing.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use crate::EngineError;
use crate::kv::BlockId;
use crate::model::ModelConfig;

/// One sequence's slice of a step.
#[derive(Debug, Clone, Copy)]
pub struct BatchSeq<'a> {
    /// Position of the chunk's first token in its sequence.
    pub start: usize,
    /// Tokens in the chunk; they follow the previous chunks' tokens in `Batch::tokens`.
    pub len: usize,
    /// The sequence's KV blocks, covering at least `start + len` tokens.
    pub block_table: &'a [BlockId],
    /// Return the logits of the chunk's last token.
    pub logits: bool,
}

/// The work of one step.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// Every chunk's tokens, concatenated in `seqs` order.
    pub tokens: &'a [u32],
    pub seqs: &'a [BatchSeq<'a>],
}

impl Batch<'_> {
    /// Chunks that want logits: the rows of a step's logits output.
    pub fn num_logits(&self) -> usize {
        self.seqs.iter().filter(|s| s.logits).count()
    }
}

/// Runs a model's steps on some hardware.
pub trait Backend: Send {
    fn config(&self) -> &ModelConfig;

    /// KV blocks this backend holds.
    fn num_kv_blocks(&self) -> usize;

    /// Tokens per KV block.
    fn block_size(&self) -> usize;

    /// Runs one step. `logits` receives `batch.num_logits()` rows of `vocab_size` values,
    /// in `batch.seqs` order.
    fn step(&mut self, batch: &Batch<'_>, logits: &mut [f32]) -> Result<(), EngineError>;

    /// Runs one step and picks each logits row's most likely token (the lowest id on
    /// ties) with its log-probability on the device, so that only the picks reach the
    /// host: `picks` receives `batch.num_logits()` of them, in `batch.seqs` order.
    /// `Ok(false)`: this backend has no such path and did nothing; use [`Backend::step`].
    fn step_greedy(
        &mut self,
        _batch: &Batch<'_>,
        _picks: &mut [(u32, f32)],
    ) -> Result<bool, EngineError> {
        Ok(false)
    }

    /// The device's memory (total, in use by this backend's process), bytes; `None`
    /// for host memory.
    fn device_memory(&self) -> Option<(u64, u64)> {
        None
    }

    /// A short description for logs and `Health` (device, kernel path, threads).
    fn describe(&self) -> String;
}

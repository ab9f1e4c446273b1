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
#[cfg(test)]
mod reference;

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

/// How one logits row becomes a token on the device: the row's sampling settings and
/// the one uniform its sampler drew for this step (see [`crate::sampling::Sampler`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pick {
    /// 1 / temperature; 0 takes the most likely token (the lowest id on ties).
    pub inv_temperature: f32,
    /// Keep the `top_k` most likely tokens; 0: off.
    pub top_k: u32,
    /// Keep the smallest most-likely prefix holding `top_p` of the weight; 0 or 1: off.
    pub top_p: f32,
    /// Drop tokens below `min_p` times the most likely one's weight; 0: off.
    pub min_p: f32,
    /// In [0, 1): where the draw lands in the kept weight.
    pub uniform: f64,
}

impl Pick {
    /// The most likely token (what a greedy sampler takes; draws nothing).
    pub const GREEDY: Pick = Pick {
        inv_temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        uniform: 0.0,
    };
}

/// Runs a model's steps on some hardware.
pub trait Backend: Send {
    fn config(&self) -> &ModelConfig;

    /// KV blocks this backend holds.
    fn num_kv_blocks(&self) -> usize;

    /// Tokens per KV block.
    fn block_size(&self) -> usize;

    /// Bytes of weights as this backend holds them.
    fn weight_bytes(&self) -> usize;

    /// Runs one step. `logits` receives `batch.num_logits()` rows of `vocab_size` values,
    /// in `batch.seqs` order.
    fn step(&mut self, batch: &Batch<'_>, logits: &mut [f32]) -> Result<(), EngineError>;

    /// Whether [`Backend::step_pick`] picks tokens on the device.
    fn picks_on_device(&self) -> bool {
        false
    }

    /// Runs one step and turns each logits row into a token on the device, as `rows`
    /// (one per row, in `batch.seqs` order) say: only the tokens and their
    /// log-probabilities under the raw logits reach the host, in `picks`. Backends
    /// whose [`Backend::picks_on_device`] is false do not implement it.
    fn step_pick(
        &mut self,
        _batch: &Batch<'_>,
        _rows: &[Pick],
        _picks: &mut [(u32, f32)],
    ) -> Result<(), EngineError> {
        Err(EngineError::Config(format!(
            "{} does not pick tokens on its device",
            self.describe()
        )))
    }

    /// The device's memory (total, in use by this backend's process), bytes; `None`
    /// for host memory.
    fn device_memory(&self) -> Option<(u64, u64)> {
        None
    }

    /// A short description for logs and `Health` (device, kernel path, threads).
    fn describe(&self) -> String;

    /// Tokens the matrix products take per tile, each tile reading the weights again
    /// (the step profile records it; the simulator's engine model has terms for it); 0
    /// where a step has no such structure worth modelling.
    fn token_tile(&self) -> usize {
        0
    }
}

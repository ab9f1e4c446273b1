//! Continuous batching with chunked prefill, sans-IO.
//!
//! Each step fills a token budget: every running sequence that is decoding gets its one
//! token first, then chunks of prefill (sequences part-way through their prompt, then
//! waiting ones in arrival order). New requests join between steps. When KV blocks run
//! out for a decode, the newest running sequence is preempted: its blocks are released
//! and it goes back to the front of the queue with every token it has (prompt and
//! generated), to be recomputed later, so nothing is lost. The engine owns sampling; this
//! module owns tokens, positions and blocks.

use std::collections::{HashMap, VecDeque};

use meridian_proto::prefix::{ROOT_HASH, block_hash};

use crate::kv::{BlockId, BlockManager};

/// Engine-assigned sequence id.
pub type SeqId = u64;

/// What the scheduler may put in one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Tokens per step: decode tokens plus prefill chunk tokens.
    pub max_batch_tokens: usize,
    /// Sequences admitted at once.
    pub max_running: usize,
}

/// One sequence's slice of a step: compute tokens `start..start + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub seq: SeqId,
    pub start: usize,
    pub len: usize,
    /// This chunk ends at the sequence's last token: the step must return its logits.
    pub logits: bool,
}

/// Query-key pairs a chunk of `len` prompt tokens from position `start` computes: the
/// token at position `p` attends `p + 1` positions. What the step profile records and
/// the simulator's engine model charges prefill attention by.
pub fn attention_pairs(start: usize, len: usize) -> usize {
    len * start + len * (len + 1) / 2
}

/// The work of one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPlan {
    pub chunks: Vec<Chunk>,
    /// Sequences preempted while planning (their KV is gone; they wait again).
    pub preempted: Vec<SeqId>,
}

impl StepPlan {
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub fn num_tokens(&self) -> usize {
        self.chunks.iter().map(|c| c.len).sum()
    }
}

#[derive(Debug)]
struct Seq {
    tokens: Vec<u32>,
    n_prompt: usize,
    /// Tokens whose K/V are in `blocks`.
    n_computed: usize,
    blocks: Vec<BlockId>,
    /// Leading blocks already registered in the prefix cache, and the last one's hash.
    n_hashed: usize,
    last_hash: u64,
    /// Prompt tokens found in the prefix cache at first admission.
    cached_prompt: Option<usize>,
}

impl Seq {
    /// Gives back every block; the tokens stay, to be computed again.
    fn drop_kv(&mut self, blocks: &mut BlockManager) {
        blocks.release(&self.blocks);
        self.blocks.clear();
        self.n_computed = 0;
        self.n_hashed = 0;
        self.last_hash = ROOT_HASH;
    }
}

/// Where a sequence stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqPhase {
    Waiting,
    Running,
}

/// The continuous-batching scheduler.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    blocks: BlockManager,
    waiting: VecDeque<SeqId>,
    /// In admission order: the last is the newest, preempted first.
    running: Vec<SeqId>,
    seqs: HashMap<SeqId, Seq>,
    preemptions: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, blocks: BlockManager) -> Self {
        Self {
            config,
            blocks,
            waiting: VecDeque::new(),
            running: Vec::new(),
            seqs: HashMap::new(),
            preemptions: 0,
        }
    }

    pub fn blocks(&self) -> &BlockManager {
        &self.blocks
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Tokens that a sequence of `total_tokens` could ever need fit in the cache.
    pub fn fits(&self, total_tokens: usize) -> bool {
        self.blocks.blocks_for(total_tokens) <= self.blocks.total_blocks()
    }

    /// Queues a new sequence. `prompt` must not be empty.
    pub fn add(&mut self, id: SeqId, prompt: Vec<u32>) {
        debug_assert!(!prompt.is_empty());
        let n_prompt = prompt.len();
        self.seqs.insert(
            id,
            Seq {
                tokens: prompt,
                n_prompt,
                n_computed: 0,
                blocks: Vec::new(),
                n_hashed: 0,
                last_hash: ROOT_HASH,
                cached_prompt: None,
            },
        );
        self.waiting.push_back(id);
    }

    pub fn phase(&self, id: SeqId) -> Option<SeqPhase> {
        if !self.seqs.contains_key(&id) {
            None
        } else if self.running.contains(&id) {
            Some(SeqPhase::Running)
        } else {
            Some(SeqPhase::Waiting)
        }
    }

    /// The sequence's tokens so far (prompt then generated).
    pub fn tokens(&self, id: SeqId) -> Option<&[u32]> {
        self.seqs.get(&id).map(|s| s.tokens.as_slice())
    }

    pub fn prompt_len(&self, id: SeqId) -> Option<usize> {
        self.seqs.get(&id).map(|s| s.n_prompt)
    }

    /// Prompt tokens that came from the prefix cache when the sequence was first admitted.
    pub fn cached_prompt_tokens(&self, id: SeqId) -> usize {
        self.seqs
            .get(&id)
            .and_then(|s| s.cached_prompt)
            .unwrap_or(0)
    }

    /// The block table of a sequence.
    pub fn block_table(&self, id: SeqId) -> &[BlockId] {
        self.seqs.get(&id).map_or(&[], |s| s.blocks.as_slice())
    }

    /// Appends a sampled token; the next step computes it.
    pub fn append(&mut self, id: SeqId, token: u32) {
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.tokens.push(token);
        }
    }

    /// Removes a finished or cancelled sequence and releases its blocks at once.
    pub fn remove(&mut self, id: SeqId) {
        if let Some(seq) = self.seqs.remove(&id) {
            self.blocks.release(&seq.blocks);
        }
        self.running.retain(|&s| s != id);
        self.waiting.retain(|&s| s != id);
    }

    /// Plans the next step.
    pub fn schedule(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.config.max_batch_tokens;

        // 1. Decodes: one token for each running sequence past its prefill.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let seq = &self.seqs[&id];
            if seq.tokens.len() - seq.n_computed != 1 {
                i += 1;
                continue;
            }
            if !self.ensure_blocks(id, seq.n_computed + 1, &mut plan) {
                // `id` itself was the newest and got preempted; `running[i]` is now the
                // next sequence (or the end).
                continue;
            }
            let start = self.seqs[&id].n_computed;
            plan.chunks.push(Chunk {
                seq: id,
                start,
                len: 1,
                logits: true,
            });
            budget -= 1;
            i += 1;
        }

        // 2. Prefill chunks of running sequences part-way through their tokens.
        for idx in 0..self.running.len() {
            if budget == 0 {
                break;
            }
            let id = self.running[idx];
            if plan.chunks.iter().any(|c| c.seq == id) {
                continue;
            }
            if let Some(chunk) = self.prefill_chunk(id, budget) {
                budget -= chunk.len;
                plan.chunks.push(chunk);
            }
        }

        // 3. Admit waiting sequences, oldest first, while budget and blocks last.
        while budget > 0 && self.running.len() < self.config.max_running {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            let seq = self.seqs.get_mut(&id).expect("waiting ids are known");
            if seq.blocks.is_empty() {
                // Reuse every cached leading block, but always compute the last token:
                // its logits are what the step is for.
                let limit = seq.tokens.len() - 1;
                let found = self.blocks.match_prefix(&seq.tokens, limit);
                seq.n_computed = found.blocks.len() * self.blocks.block_size();
                seq.n_hashed = found.blocks.len();
                seq.last_hash = found.last_hash;
                seq.blocks = found.blocks;
                if seq.cached_prompt.is_none() {
                    seq.cached_prompt = Some(seq.n_computed.min(seq.n_prompt));
                }
            }
            let Some(chunk) = self.prefill_chunk(id, budget) else {
                // Not even one block for it: wait for running sequences to finish. Give
                // back the cached blocks it took, so a waiting sequence never holds KV
                // that a running one needs; they stay cached and are matched again.
                let seq = self.seqs.get_mut(&id).expect("waiting ids are known");
                seq.drop_kv(&mut self.blocks);
                break;
            };
            self.waiting.pop_front();
            self.running.push(id);
            budget -= chunk.len;
            plan.chunks.push(chunk);
        }
        plan
    }

    /// Records that a planned step ran: its tokens' K/V are now in the cache, and the
    /// blocks they filled are registered for prefix reuse.
    pub fn complete(&mut self, plan: &StepPlan) {
        let bs = self.blocks.block_size();
        for chunk in &plan.chunks {
            let Some(seq) = self.seqs.get_mut(&chunk.seq) else {
                continue;
            };
            seq.n_computed = seq.n_computed.max(chunk.start + chunk.len);
            while (seq.n_hashed + 1) * bs <= seq.n_computed {
                let b = seq.n_hashed;
                let hash = block_hash(seq.last_hash, &seq.tokens[b * bs..(b + 1) * bs]);
                self.blocks.register_full(seq.blocks[b], hash);
                seq.last_hash = hash;
                seq.n_hashed += 1;
            }
        }
    }

    /// A chunk of up to `budget` uncomputed tokens for `id`, with blocks allocated; it
    /// shrinks to the blocks available. `None` when no token fits.
    fn prefill_chunk(&mut self, id: SeqId, budget: usize) -> Option<Chunk> {
        let bs = self.blocks.block_size();
        let seq = self.seqs.get_mut(&id)?;
        let remaining = seq.tokens.len() - seq.n_computed;
        let mut len = remaining.min(budget);
        let want = (seq.n_computed + len).div_ceil(bs);
        while seq.blocks.len() < want {
            match self.blocks.allocate() {
                Some(b) => seq.blocks.push(b),
                None => break,
            }
        }
        len = len.min(seq.blocks.len() * bs - seq.n_computed);
        if len == 0 {
            return None;
        }
        Some(Chunk {
            seq: id,
            start: seq.n_computed,
            len,
            logits: seq.n_computed + len == seq.tokens.len(),
        })
    }

    /// Makes `id` hold blocks for `tokens` tokens, preempting the newest running
    /// sequences as needed. `false` if `id` itself had to be preempted.
    fn ensure_blocks(&mut self, id: SeqId, tokens: usize, plan: &mut StepPlan) -> bool {
        let want = self.blocks.blocks_for(tokens);
        loop {
            let have = self.seqs[&id].blocks.len();
            if have >= want {
                return true;
            }
            if let Some(b) = self.blocks.allocate() {
                self.seqs.get_mut(&id).expect("known").blocks.push(b);
                continue;
            }
            let Some(&victim) = self.running.last() else {
                return false;
            };
            self.preempt(victim, plan);
            if victim == id {
                return false;
            }
        }
    }

    fn preempt(&mut self, id: SeqId, plan: &mut StepPlan) {
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        seq.drop_kv(&mut self.blocks);
        self.running.retain(|&s| s != id);
        self.waiting.push_front(id);
        plan.chunks.retain(|c| c.seq != id);
        plan.preempted.push(id);
        self.preemptions += 1;
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;

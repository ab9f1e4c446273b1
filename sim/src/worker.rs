//! One replica's engine in virtual time, sans-IO: continuous batching with chunked
//! prefill, following the engine's scheduler (`meridian_engine::scheduler`).
//!
//! Each step fills a token budget (`max_batch_tokens`): one token for every sequence
//! that is decoding, then prefill chunks of admitted sequences part-way through their
//! prompt, in admission order, then new sequences from the queue, oldest first, while
//! `max_running` and the KV blocks allow. A sequence's first token comes at the end of
//! the step that computes its last prompt token; each later step adds one token. When KV
//! blocks run out for decodes, the newest sequence is preempted and recomputed later, as
//! the engine does. A step takes the fitted [`EngineModel`] time of its shape plus the
//! host overhead between steps (once a step and per sequence of the step).
//!
//! What makes it fast: steps that only decode have the same shape but for a context that
//! grows by one token per sequence, so their durations form an arithmetic series. Such a
//! run of steps is one segment, ended at the next sequence to finish, and cut short at
//! the step boundary after an arrival (new requests join between steps, as in the
//! engine). The work per request is a few heap operations, independent of its length.
//!
//! Two simplifications, both small against a step: KV use is counted in tokens and
//! rounded to blocks over the whole batch (half a block of slack per sequence), and a
//! prompt prefix held in the prefix cache is shared by all sequences (counted once).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::engine_model::{EngineModel, StepOverhead, StepShape};
use crate::scenario::EngineSpec;

/// The simulator's handle of a request.
pub type ReqId = u32;

/// A request given to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub req: ReqId,
    /// Prompt tokens, all of them.
    pub prompt: u32,
    /// Leading prompt tokens found in the prefix cache (not computed).
    pub cached: u32,
    /// Tokens to generate, at least 1.
    pub output: u32,
}

/// What happened at a step boundary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// The request's first token, at this time (µs).
    FirstToken(ReqId, f64),
    /// Its last token.
    Done(ReqId, f64),
}

/// A request in the queue or part-way through its prefill.
#[derive(Debug, Clone, Copy)]
struct Pending {
    req: ReqId,
    /// Tokens still to compute before the next token can be sampled.
    remaining: u32,
    /// Tokens in its KV cache (cached prefix included).
    context: u32,
    cached: u32,
    output: u32,
    /// Tokens generated so far (non-zero after a preemption).
    generated: u32,
    /// Admission order; the newest is preempted first.
    order: u64,
}

/// A sequence that is decoding.
#[derive(Debug, Clone, Copy)]
struct Decoding {
    req: ReqId,
    /// Context at step index `s` is `origin + s` tokens.
    origin: i64,
    cached: u32,
    output: u32,
    /// Step index at which it has generated `generated` tokens.
    base_step: u64,
    generated: u32,
    finish_step: u64,
    order: u64,
    live: bool,
}

/// The steps in flight: `steps` steps from index `first_step`, started at `start_us`,
/// the `j`-th taking `a + b * j` microseconds.
#[derive(Debug, Clone, Copy)]
struct Segment {
    start_us: f64,
    first_step: u64,
    steps: u64,
    a: f64,
    b: f64,
    /// A step with prefill: its finished prompts get their first token at its end.
    mixed: bool,
}

impl Segment {
    /// Time the first `k` steps take.
    fn span(&self, k: u64) -> f64 {
        let k = k as f64;
        k * self.a + self.b * k * (k - 1.0) / 2.0
    }

    fn end_us(&self) -> f64 {
        self.start_us + self.span(self.steps)
    }

    /// Steps completed by time `t` (at most `steps`).
    fn done_by(&self, t: f64) -> u64 {
        let dt = t - self.start_us;
        if dt <= 0.0 {
            return 0;
        }
        let guess = if self.b > 0.0 {
            // k a + b k (k - 1) / 2 = dt
            let (h, p) = (self.b / 2.0, self.a - self.b / 2.0);
            ((-p + (p * p + 4.0 * h * dt).sqrt()) / (2.0 * h)).floor()
        } else {
            (dt / self.a).floor()
        };
        let mut k = (guess.max(0.0) as u64).min(self.steps);
        while k > 0 && self.span(k) > dt {
            k -= 1;
        }
        while k < self.steps && self.span(k + 1) <= dt {
            k += 1;
        }
        k
    }
}

/// One replica's engine.
#[derive(Debug)]
pub struct Worker {
    model: EngineModel,
    /// Host time between steps: once a step, and per sequence of the step.
    overhead: StepOverhead,
    max_batch_tokens: u32,
    max_running: u32,
    kv_blocks: u64,
    block_size: u64,

    waiting: VecDeque<Pending>,
    prefilling: VecDeque<Pending>,
    decoding: Vec<Decoding>,
    free_slots: Vec<u32>,
    /// `(finish_step, slot)` of the decoding sequences.
    finishing: BinaryHeap<Reverse<(u64, u32)>>,
    n_decoding: u32,
    /// Sum of the decoding sequences' `origin`.
    origin_sum: i64,
    /// Sum of the decoding sequences' cached prefixes.
    decoding_cached: u64,
    /// KV tokens of the sequences part-way through their prefill (cached prefix aside).
    prefill_kv: u64,
    next_order: u64,
    /// Steps completed.
    step: u64,
    seg: Option<Segment>,
    /// Microseconds spent in steps.
    pub busy_us: f64,
    /// Steps completed.
    pub steps: u64,
    pub preemptions: u64,
    /// Tokens computed in prefill and generated.
    pub prefill_tokens: u64,
    pub decode_tokens: u64,
}

impl Worker {
    pub fn new(spec: &EngineSpec) -> Self {
        Self {
            model: spec.model(),
            overhead: spec.overhead(),
            max_batch_tokens: spec.max_batch_tokens,
            max_running: spec.max_running,
            kv_blocks: u64::from(spec.kv_blocks),
            block_size: u64::from(spec.block_size.max(1)),
            waiting: VecDeque::new(),
            prefilling: VecDeque::new(),
            decoding: Vec::new(),
            free_slots: Vec::new(),
            finishing: BinaryHeap::new(),
            n_decoding: 0,
            origin_sum: 0,
            decoding_cached: 0,
            prefill_kv: 0,
            next_order: 0,
            step: 0,
            seg: None,
            busy_us: 0.0,
            steps: 0,
            preemptions: 0,
            prefill_tokens: 0,
            decode_tokens: 0,
        }
    }

    /// Requests queued, not yet admitted (the load report's queue depth).
    pub fn queue_depth(&self) -> u32 {
        self.waiting.len() as u32
    }

    /// Sequences admitted (prefilling or decoding).
    pub fn running(&self) -> u32 {
        self.prefilling.len() as u32 + self.n_decoding
    }

    /// Whether a sequence of `tokens` tokens can ever fit in the KV cache.
    pub fn fits(&self, tokens: u32) -> bool {
        u64::from(tokens).div_ceil(self.block_size) <= self.kv_blocks
    }

    pub fn max_running(&self) -> u32 {
        self.max_running
    }

    pub fn is_idle(&self) -> bool {
        self.seg.is_none()
    }

    /// Mean duration of the steps in flight, milliseconds (0 when idle).
    pub fn step_ms(&self) -> f32 {
        self.seg.map_or(0.0, |s| {
            (s.span(s.steps) / s.steps.max(1) as f64 / 1000.0) as f32
        })
    }

    /// Prompt tokens per second of prefill, as the engine reports it.
    pub fn prefill_speed(&self) -> f32 {
        if self.model.prefill_token_us > 0.0 {
            (1e6 / self.model.prefill_token_us) as f32
        } else {
            0.0
        }
    }

    /// A request arrives at `now_us`. Returns the time the worker must next be woken
    /// (`advance`) when that changed: now if it was idle, or the end of the step in
    /// flight if a run of decode steps is cut short to let it join.
    pub fn enqueue(&mut self, now_us: f64, job: Job) -> Option<f64> {
        let running = self.running();
        let cached = job.cached.min(job.prompt.saturating_sub(1));
        self.waiting.push_back(Pending {
            req: job.req,
            remaining: job.prompt - cached,
            context: cached,
            cached,
            output: job.output.max(1),
            generated: 0,
            order: 0,
        });
        match &mut self.seg {
            None => Some(now_us),
            // It can start only with a free sequence slot; without one the run goes on.
            Some(seg) if !seg.mixed && seg.steps > 1 && running < self.max_running => {
                let k = seg.done_by(now_us) + 1;
                if k < seg.steps {
                    seg.steps = k;
                    Some(seg.end_us())
                } else {
                    None
                }
            }
            Some(_) => None,
        }
    }

    /// Wakes the worker at `now_us`, which must be the wake time last returned: the
    /// steps in flight complete, their outcomes go to `out`, and the next steps start.
    /// Returns the next wake time, or `None` when idle.
    pub fn advance(&mut self, now_us: f64, out: &mut Vec<Outcome>) -> Option<f64> {
        if let Some(seg) = self.seg.take() {
            self.finish_segment(&seg, out);
        }
        self.plan(now_us)
    }

    fn finish_segment(&mut self, seg: &Segment, out: &mut Vec<Outcome>) {
        let t = seg.end_us();
        self.busy_us += seg.span(seg.steps);
        self.steps += seg.steps;
        self.decode_tokens += u64::from(self.n_decoding) * seg.steps;
        self.step = seg.first_step + seg.steps;
        // Sequences that generated their last token.
        while let Some(&Reverse((finish, slot))) = self.finishing.peek() {
            if finish >= self.step {
                break;
            }
            self.finishing.pop();
            let d = self.decoding[slot as usize];
            if d.live && d.finish_step == finish {
                self.release(slot);
                out.push(Outcome::Done(d.req, t));
            }
        }
        if seg.mixed {
            // Prompts whose last token this step computed sample their next token.
            while self.prefilling.front().is_some_and(|p| p.remaining == 0) {
                let Some(p) = self.prefilling.pop_front() else {
                    break;
                };
                self.prefill_kv -= u64::from(p.context - p.cached);
                let generated = p.generated + 1;
                if p.generated == 0 {
                    out.push(Outcome::FirstToken(p.req, t));
                }
                if generated >= p.output {
                    out.push(Outcome::Done(p.req, t));
                    continue;
                }
                let last_step = self.step - 1;
                self.start_decoding(Decoding {
                    req: p.req,
                    // Its first decode step, `self.step`, attends to context + 1 tokens.
                    origin: i64::from(p.context) + 1 - self.step as i64,
                    cached: p.cached,
                    output: p.output,
                    base_step: last_step,
                    generated,
                    finish_step: last_step + u64::from(p.output - generated),
                    order: p.order,
                    live: true,
                });
            }
        }
    }

    fn start_decoding(&mut self, d: Decoding) {
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.decoding[s as usize] = d;
                s
            }
            None => {
                self.decoding.push(d);
                (self.decoding.len() - 1) as u32
            }
        };
        self.finishing.push(Reverse((d.finish_step, slot)));
        self.n_decoding += 1;
        self.origin_sum += d.origin;
        self.decoding_cached += u64::from(d.cached);
    }

    fn release(&mut self, slot: u32) {
        let d = &mut self.decoding[slot as usize];
        d.live = false;
        self.n_decoding -= 1;
        self.origin_sum -= d.origin;
        self.decoding_cached -= u64::from(d.cached);
        self.free_slots.push(slot);
    }

    /// KV blocks in use if the decoding sequences are at step index `s` and `extra`
    /// more tokens are allocated.
    fn blocks_at(&self, s: u64, extra: u64) -> u64 {
        let decode_tokens = (self.origin_sum + i64::from(self.n_decoding) * s as i64
            - self.decoding_cached as i64)
            .max(0) as u64;
        let seqs = u64::from(self.running());
        (decode_tokens + self.prefill_kv + extra).div_ceil(self.block_size) + seqs / 2
    }

    /// Preempts the newest running sequence: its KV is dropped and it waits at the front
    /// of the queue to compute every token it has again.
    fn preempt_newest(&mut self) -> bool {
        let newest_decoding = self
            .decoding
            .iter()
            .enumerate()
            .filter(|(_, d)| d.live)
            .max_by_key(|(_, d)| d.order)
            .map(|(i, d)| (i as u32, d.order));
        let newest_prefill = self.prefilling.back().map(|p| p.order);
        // Its full blocks stay in the prefix cache (freed last, evicted last), so when it
        // is admitted again it takes them back and computes only the rest.
        let bs = self.block_size as u32;
        let back = match (newest_decoding, newest_prefill) {
            (Some((slot, o)), p) if p.is_none_or(|p| o > p) => {
                let d = self.decoding[slot as usize];
                self.release(slot);
                let generated = d.generated + (self.step - 1 - d.base_step) as u32;
                // Every token it has, the last sampled one (not yet computed) included.
                let total = (d.origin + self.step as i64) as u32;
                let kept = ((total - 1) / bs * bs).max(d.cached);
                Pending {
                    req: d.req,
                    remaining: total - kept,
                    context: kept,
                    cached: d.cached,
                    output: d.output,
                    generated,
                    order: 0,
                }
            }
            (_, Some(_)) => {
                let Some(mut p) = self.prefilling.pop_back() else {
                    return false;
                };
                self.prefill_kv -= u64::from(p.context - p.cached);
                let kept = (p.context / bs * bs).max(p.cached);
                p.remaining += p.context - kept;
                p.context = kept;
                p
            }
            _ => return false,
        };
        self.preemptions += 1;
        self.waiting.push_front(back);
        true
    }

    /// Plans the next steps from step boundary `now_us`.
    fn plan(&mut self, now_us: f64) -> Option<f64> {
        let s = self.step;
        // Decodes need one more KV slot each; preempt while they do not fit.
        while self.n_decoding > 0 && self.blocks_at(s, 0) > self.kv_blocks {
            if !self.preempt_newest() {
                break;
            }
        }
        let m = self.model;
        let n = self.n_decoding;
        let decode_context = (self.origin_sum + i64::from(n) * s as i64).max(0) as f64;
        let mut budget = self.max_batch_tokens.saturating_sub(n);
        let mut prefill = 0u32;
        let mut prefill_context = 0f64;
        let mut prefill_attention = 0f64;
        // Prefill chunks in the step (sequences other than the decoding ones).
        let mut chunks = 0u32;

        // Prefill chunks: admitted prompts first, then new ones while room lasts.
        let mut free_blocks = self.kv_blocks.saturating_sub(self.blocks_at(s, 0));
        let bs = self.block_size;
        for p in self.prefilling.iter_mut() {
            if budget == 0 {
                break;
            }
            let take = p.remaining.min(budget).min((free_blocks * bs) as u32);
            if take == 0 {
                break;
            }
            free_blocks -= u64::from(take).div_ceil(bs).min(free_blocks);
            p.remaining -= take;
            prefill_attention += StepShape::chunk_attention(p.context, take);
            p.context += take;
            self.prefill_kv += u64::from(take);
            budget -= take;
            prefill += take;
            chunks += 1;
            prefill_context += f64::from(p.context);
        }
        while budget > 0 && self.running() < self.max_running {
            let Some(p) = self.waiting.front() else {
                break;
            };
            // Blocks it takes back from the prefix cache, then blocks for a chunk.
            let reclaim = u64::from(p.context - p.cached);
            let reclaim_blocks = reclaim.div_ceil(bs);
            if reclaim_blocks >= free_blocks {
                break;
            }
            let take = p
                .remaining
                .min(budget)
                .min(((free_blocks - reclaim_blocks) * bs) as u32);
            let Some(mut p) = self.waiting.pop_front() else {
                break;
            };
            self.prefill_kv += reclaim;
            free_blocks -= reclaim_blocks + u64::from(take).div_ceil(bs);
            p.order = self.next_order;
            self.next_order += 1;
            p.remaining -= take;
            prefill_attention += StepShape::chunk_attention(p.context, take);
            p.context += take;
            self.prefill_kv += u64::from(take);
            budget -= take;
            prefill += take;
            chunks += 1;
            prefill_context += f64::from(p.context);
            self.prefilling.push_back(p);
        }

        let seg = if prefill > 0 {
            self.prefill_tokens += u64::from(prefill);
            let shape = StepShape {
                prefill_tokens: f64::from(prefill),
                decode_tokens: f64::from(n),
                context_tokens: decode_context + prefill_context,
                prefill_attention,
            };
            Segment {
                start_us: now_us,
                first_step: s,
                steps: 1,
                a: self.overhead.at(f64::from(n + chunks)) + m.step_us(&shape),
                b: 0.0,
                mixed: true,
            }
        } else if n > 0 {
            // Decode only, until the next sequence finishes or KV runs out.
            // Nothing else can start before then: a queued or stalled prompt waits for a
            // sequence slot or KV blocks, and only a finishing sequence frees either.
            let next_finish = self.next_finish().unwrap_or(s);
            let mut steps = next_finish.saturating_sub(s) + 1;
            let room = self.kv_blocks.saturating_sub(self.blocks_at(s, 0)) * bs;
            steps = steps.min(room / u64::from(n) + 1).max(1);
            // The first step's time; each later one reads one more token of context
            // per sequence.
            let first = StepShape {
                decode_tokens: f64::from(n),
                context_tokens: decode_context,
                ..StepShape::default()
            };
            Segment {
                start_us: now_us,
                first_step: s,
                steps,
                a: self.overhead.at(f64::from(n)) + m.step_us(&first),
                b: m.context_token_us * f64::from(n),
                mixed: false,
            }
        } else {
            return None;
        };
        let end = seg.end_us();
        self.seg = Some(seg);
        Some(end)
    }

    fn next_finish(&mut self) -> Option<u64> {
        while let Some(&Reverse((finish, slot))) = self.finishing.peek() {
            let d = &self.decoding[slot as usize];
            if d.live && d.finish_step == finish {
                return Some(finish);
            }
            self.finishing.pop();
        }
        None
    }

    /// The worker fails: every request it holds, `(req, generated any token)`.
    pub fn fail(&mut self) -> Vec<(ReqId, bool)> {
        let mut lost: Vec<(ReqId, bool)> = Vec::new();
        lost.extend(self.waiting.drain(..).map(|p| (p.req, p.generated > 0)));
        lost.extend(self.prefilling.drain(..).map(|p| (p.req, p.generated > 0)));
        lost.extend(
            self.decoding
                .iter()
                .filter(|d| d.live)
                .map(|d| (d.req, true)),
        );
        self.decoding.clear();
        self.free_slots.clear();
        self.finishing.clear();
        self.n_decoding = 0;
        self.origin_sum = 0;
        self.decoding_cached = 0;
        self.prefill_kv = 0;
        self.seg = None;
        lost
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;

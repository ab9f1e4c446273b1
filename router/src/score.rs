//! Scoring, sans-IO: which workers may serve a request, and in which order to try them.
//!
//! Filter: the model resident and warm, the worker healthy and not cordoned, its PoP in
//! one of the request's allowed jurisdictions. A residency constraint is never relaxed:
//! with no allowed worker the answer is "none", never a worker elsewhere.
//! Score: estimated time to first token in milliseconds = RTT from the caller's region
//! to the PoP + queue wait (waiting requests, plus those this router sent since the
//! last report, times the worker's step time) + prefill time of the prompt at the
//! worker's measured prefill speed. Lower is better; the best few are kept for retries.
//!
//! Not yet: prefix-cache hits (the router would hash the prompt's blocks as the engine
//! does, `meridian_proto::prefix`, and match the workers' reported summaries).

use crate::fleet::{FleetView, RttTable};

/// Candidates kept per request: the first, then retries.
pub const MAX_CANDIDATES: usize = 3;

/// Defaults when a worker has not reported yet.
const DEFAULT_STEP_MS: f32 = 20.0;
const DEFAULT_PREFILL_TPS: f32 = 500.0;

/// What the scorer needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub model: &'a str,
    /// Catalog index of the caller's region.
    pub region: usize,
    /// Allowed jurisdictions; empty: any.
    pub jurisdictions: &'a [String],
    /// Prompt length, tokens (estimated).
    pub prompt_tokens: u32,
}

/// One scored candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Index into `FleetView::workers`.
    pub worker: u32,
    pub score_ms: f32,
    pub rtt_ms: f32,
    pub queue_ms: f32,
    pub prefill_ms: f32,
}

/// The best candidates, best first, in a fixed-size array: no allocation per request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ranking {
    len: usize,
    items: [Option<Candidate>; MAX_CANDIDATES],
}

impl Ranking {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn iter(&self) -> impl Iterator<Item = Candidate> + '_ {
        self.items[..self.len].iter().flatten().copied()
    }

    fn offer(&mut self, c: Candidate) {
        let mut pos = self.len;
        while pos > 0 && self.items[pos - 1].is_some_and(|p| p.score_ms > c.score_ms) {
            pos -= 1;
        }
        if pos >= MAX_CANDIDATES {
            return;
        }
        let end = self.len.min(MAX_CANDIDATES - 1);
        for i in (pos..end).rev() {
            self.items[i + 1] = self.items[i];
        }
        self.items[pos] = Some(c);
        self.len = (self.len + 1).min(MAX_CANDIDATES);
    }
}

/// Whether a worker's jurisdiction is allowed.
#[inline]
pub fn allowed(jurisdictions: &[String], worker_jurisdiction: &str) -> bool {
    jurisdictions.is_empty() || jurisdictions.iter().any(|j| j == worker_jurisdiction)
}

/// Ranks the workers that may serve `ask`. `in_flight[i]` counts requests this router
/// sent to worker `i` since its last load report.
pub fn rank(view: &FleetView, rtt: &RttTable, ask: &Ask<'_>, in_flight: &[u32]) -> Ranking {
    let mut ranking = Ranking::default();
    for &i in view.serving(ask.model) {
        let w = &view.workers[i as usize];
        if !w.warm || !w.healthy || w.cordoned || !allowed(ask.jurisdictions, &w.jurisdiction) {
            continue;
        }
        let step_ms = if w.load.mean_step_ms > 0.0 {
            w.load.mean_step_ms
        } else {
            DEFAULT_STEP_MS
        };
        let tps = if w.load.prompt_tokens_per_second > 0.0 {
            w.load.prompt_tokens_per_second
        } else {
            DEFAULT_PREFILL_TPS
        };
        let unseen = in_flight.get(i as usize).copied().unwrap_or(0);
        let waiting = w.load.queue_depth + unseen;
        // A worker with free sequence slots admits at the next step; beyond them each
        // waiting request holds the queue for about one step per generated token batch.
        let over = (w.load.running + waiting).saturating_sub(w.load.max_running.max(1));
        let queue_ms = step_ms * (1.0 + over as f32);
        let rtt_ms = rtt.get(ask.region, w.site_index);
        let prefill_ms = ask.prompt_tokens as f32 * 1000.0 / tps;
        ranking.offer(Candidate {
            worker: i,
            score_ms: rtt_ms + queue_ms + prefill_ms,
            rtt_ms,
            queue_ms,
            prefill_ms,
        });
    }
    ranking
}

#[cfg(test)]
#[path = "score_tests.rs"]
mod tests;

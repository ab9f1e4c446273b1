//! Scoring, sans-IO: which workers may serve a request, and in which order to try them.
//!
//! Filter: the model resident and warm, the worker healthy and not cordoned, its PoP in
//! one of the request's allowed jurisdictions, its queue not full. A residency
//! constraint is never relaxed: with no allowed worker the answer is "none", never a
//! worker elsewhere. Score: estimated time to first token in milliseconds = RTT from the
//! caller's region to the PoP + queue wait (waiting requests, plus those this router sent
//! since the last report, times the worker's step time) + prefill time of the prompt
//! tokens not already in the worker's prefix cache, at its measured prefill speed. Lower
//! is better; the best few are kept for retries.
//!
//! [`rank`] is the request path (no allocation); [`explain`] runs the same judgement on
//! every worker of the model and says why each was kept or left out.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::fleet::{FleetView, JurisdictionSet, RttTable};

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
    /// Prompt length, tokens (exact when the router has the model's tokenizer).
    pub prompt_tokens: u32,
    /// Leading prompt blocks each worker holds in its prefix cache, indexed by worker
    /// (`PrefixIndex::matches`; empty: none); blocks are
    /// `FleetView::prefixes.block_size()` tokens.
    pub cached: &'a [u32],
    /// Requests a worker may have waiting (reported plus unseen) before it counts as
    /// saturated and is passed over; 0: no limit.
    pub max_waiting: u32,
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
    /// Prompt tokens expected from the worker's prefix cache.
    pub cached_tokens: u32,
}

/// Why a worker that has the model resident was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Excluded {
    /// The model is loading or unloading.
    NotWarm,
    /// The worker failed its last check.
    Unhealthy,
    /// Its PoP is cordoned or draining.
    Cordoned,
    /// Its PoP is outside the request's allowed jurisdictions.
    Jurisdiction,
    /// Its queue is full (`Ask::max_waiting`).
    Saturated,
}

impl Excluded {
    pub fn as_str(self) -> &'static str {
        match self {
            Excluded::NotWarm => "not warm",
            Excluded::Unhealthy => "unhealthy",
            Excluded::Cordoned => "cordoned",
            Excluded::Jurisdiction => "jurisdiction not allowed",
            Excluded::Saturated => "saturated",
        }
    }
}

/// Requests this router has sent to each worker since its last load report: plain
/// numbers (tests, the simulator) or the router's live atomic counters.
pub trait Unseen {
    fn unseen(&self, worker: usize) -> u32;
}

impl Unseen for [u32] {
    #[inline]
    fn unseen(&self, worker: usize) -> u32 {
        self.get(worker).copied().unwrap_or(0)
    }
}

impl Unseen for [AtomicU32] {
    #[inline]
    fn unseen(&self, worker: usize) -> u32 {
        self.get(worker).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// The best candidates, best first, in a fixed-size array: no allocation per request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ranking {
    len: usize,
    items: [Option<Candidate>; MAX_CANDIDATES],
    /// Workers passed over only because their queue was full: with none ranked, the
    /// request is shed (429) rather than refused as unservable (503).
    pub saturated: u32,
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

/// Judges worker `i` (which has `ask.model` resident) for `ask`, with `cached` of the
/// prompt's leading blocks in its prefix cache.
#[inline]
fn judge(
    view: &FleetView,
    rtt: &RttTable,
    ask: &Ask<'_>,
    allowed_set: &JurisdictionSet,
    in_flight: &(impl Unseen + ?Sized),
    i: u32,
    cached_blocks: u32,
) -> Result<Candidate, Excluded> {
    let h = &view.hot[i as usize];
    if !h.open {
        let w = &view.workers[i as usize];
        return Err(if !w.warm {
            Excluded::NotWarm
        } else if !w.healthy {
            Excluded::Unhealthy
        } else {
            Excluded::Cordoned
        });
    }
    if !allowed_set.contains(h.jurisdiction) {
        return Err(Excluded::Jurisdiction);
    }
    let waiting = h.queue_depth + in_flight.unseen(i as usize);
    if ask.max_waiting > 0 && waiting >= ask.max_waiting {
        return Err(Excluded::Saturated);
    }
    let step_ms = if h.mean_step_ms > 0.0 {
        h.mean_step_ms
    } else {
        DEFAULT_STEP_MS
    };
    let tps = if h.prefill_speed > 0.0 {
        h.prefill_speed
    } else {
        DEFAULT_PREFILL_TPS
    };
    // A worker with free sequence slots admits at the next step; beyond them each
    // waiting request holds the queue for about one step per generated token batch.
    let over = (h.running + waiting).saturating_sub(h.max_running.max(1));
    let queue_ms = step_ms * (1.0 + over as f32);
    let rtt_ms = rtt.get(ask.region, h.site_index as usize);
    let cached_tokens = (cached_blocks as usize * view.prefixes.block_size())
        .min(ask.prompt_tokens as usize) as u32;
    let prefill_ms = (ask.prompt_tokens - cached_tokens) as f32 * 1000.0 / tps;
    Ok(Candidate {
        worker: i,
        score_ms: rtt_ms + queue_ms + prefill_ms,
        rtt_ms,
        queue_ms,
        prefill_ms,
        cached_tokens,
    })
}

/// Ranks the workers that may serve `ask`. `in_flight` counts the requests this router
/// sent to each worker since its last load report.
pub fn rank(
    view: &FleetView,
    rtt: &RttTable,
    ask: &Ask<'_>,
    in_flight: &(impl Unseen + ?Sized),
) -> Ranking {
    let mut ranking = Ranking::default();
    let allowed_set = view.jurisdiction_set(ask.jurisdictions);
    for &i in view.serving(ask.model) {
        let blocks = ask.cached.get(i as usize).copied().unwrap_or(0);
        match judge(view, rtt, ask, &allowed_set, in_flight, i, blocks) {
            Ok(c) => ranking.offer(c),
            Err(Excluded::Saturated) => ranking.saturated += 1,
            Err(_) => {}
        }
    }
    ranking
}

/// Every worker with the model resident, best first, each scored or with the reason it
/// was left out: the same judgement as [`rank`], for operators (`route explain`).
pub fn explain(
    view: &FleetView,
    rtt: &RttTable,
    ask: &Ask<'_>,
    in_flight: &(impl Unseen + ?Sized),
) -> Vec<(u32, Result<Candidate, Excluded>)> {
    let allowed_set = view.jurisdiction_set(ask.jurisdictions);
    let mut out: Vec<(u32, Result<Candidate, Excluded>)> = view
        .serving(ask.model)
        .iter()
        .map(|&i| {
            let blocks = ask.cached.get(i as usize).copied().unwrap_or(0);
            (i, judge(view, rtt, ask, &allowed_set, in_flight, i, blocks))
        })
        .collect();
    out.sort_by(|a, b| match (&a.1, &b.1) {
        (Ok(x), Ok(y)) => x.score_ms.total_cmp(&y.score_ms),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        (Err(_), Err(_)) => a.0.cmp(&b.0),
    });
    out
}

#[cfg(test)]
#[path = "score_tests.rs"]
mod tests;

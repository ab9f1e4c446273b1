//! Top-k, top-p and min-p over a row of weights, and the draw from what they keep.
//!
//! Every filter keeps a prefix of one total order, [`rank`] (larger logit first,
//! then lower id), so what they keep together is again a prefix, named by its last
//! token. To avoid sorting the vocabulary, candidates are first put in buckets by
//! logit (spread evenly over the candidates' logit range; a bucket never precedes a
//! lower-ranked one), each bucket with its count and weight sum; a filter's cut then
//! needs only the one bucket it falls in to be selected or sorted (or, when that
//! bucket is crowded, sub-bucketed the same way). Every sum is taken in an order the
//! logits fix (id order within a bucket, bucket order across them), so the cuts and
//! the draw depend on the logits alone, never on how `select_nth_unstable` or a sort
//! leaves the scratch.

use std::cmp::Ordering;

use super::SamplingParams;

/// Buckets the candidates are spread over.
pub(super) const BUCKETS: usize = 1024;

/// Index of the extra bucket that holds the tokens of zero weight (never kept).
const NONE: u16 = BUCKETS as u16;

/// 1.5 * 2^23: adding it to an f32 in [0, 2^22) leaves the nearest integer in the
/// low mantissa bits; unlike `as u16`, this vectorizes.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Chunk size when sorting candidates for a cut: it usually falls among the first
/// few.
const FIRST_CHUNK: usize = 64;

/// What the filters keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Kept {
    /// Every token of positive weight.
    All,
    /// Every token whose weight is at least this (min-p alone).
    MinWeight(f32),
    /// The tokens up to and including this one under [`rank`]; the scratch holds
    /// the row's buckets.
    Prefix(u32),
}

/// The total order every filter keeps a prefix of: larger logit first, then lower
/// id. Only used on candidates (positive weight), whose logits are never NaN.
#[inline]
pub(super) fn rank(logits: &[f32], a: u32, b: u32) -> Ordering {
    let (la, lb) = (logits[a as usize], logits[b as usize]);
    lb.partial_cmp(&la)
        .unwrap_or(Ordering::Equal)
        .then(a.cmp(&b))
}

/// Scratch space of the filters, sized to the vocabulary once.
#[derive(Clone)]
pub(super) struct Scratch {
    /// Candidate token ids of one bucket.
    order: Vec<u32>,
    /// Bucket of each token; [`NONE`] for zero weight.
    bucket_of: Vec<u16>,
    /// Candidates per bucket (the last entry counts the zero-weight tokens).
    counts: Vec<u32>,
    /// Weight per bucket, summed in id order.
    sums: Vec<f64>,
}

impl Scratch {
    pub(super) fn new(vocab_size: usize) -> Scratch {
        Scratch {
            order: vec![0; vocab_size],
            bucket_of: vec![NONE; vocab_size],
            counts: vec![0; BUCKETS + 1],
            sums: vec![0.0; BUCKETS + 1],
        }
    }

    /// Grows to `len` tokens (only for a row longer than the vocabulary).
    pub(super) fn ensure(&mut self, len: usize) {
        if self.order.len() < len {
            self.order.resize(len, 0);
            self.bucket_of.resize(len, NONE);
        }
    }
}

/// Applies top-k, then top-p (on what top-k kept), then min-p. `logits` and
/// `weights` have the same length, within the scratch's size.
pub(super) fn filter(
    params: &SamplingParams,
    logits: &[f32],
    weights: &[f32],
    scratch: &mut Scratch,
) -> Kept {
    let top_k = params.top_k as usize;
    let top_p = f64::from(params.top_p);
    let use_top_p = top_p > 0.0 && top_p < 1.0;
    // p_i >= min_p * p_max  <=>  w_i >= min_p, since the most likely weight is 1.
    let min_weight = if params.min_p > 0.0 {
        params.min_p.min(1.0)
    } else {
        0.0
    };
    if top_k == 0 && !use_top_p {
        return if min_weight > 0.0 {
            Kept::MinWeight(min_weight)
        } else {
            Kept::All
        };
    }

    let candidates = scratch.bucket(logits, weights);
    let mut last = None;
    if top_k > 0 && top_k < candidates {
        last = Some(scratch.top_k(logits, weights, top_k));
    }
    if use_top_p && let Some(cut) = scratch.top_p(logits, weights, last, top_p) {
        last = Some(cut);
    }
    if min_weight > 0.0 {
        let cut = min_weight_last(logits, weights, min_weight);
        last = Some(match last {
            Some(l) if rank(logits, l, cut) == Ordering::Less => l,
            _ => cut,
        });
    }
    last.map_or(Kept::All, Kept::Prefix)
}

impl Scratch {
    /// Fills the buckets for this row; returns the number of candidates.
    fn bucket(&mut self, logits: &[f32], weights: &[f32]) -> usize {
        let n = logits.len();
        let (max, lo) = candidate_range(logits, weights);
        let span = max - lo;
        let top = (BUCKETS - 1) as f32;
        let scale = if span > 0.0 && span.is_finite() {
            top / span
        } else {
            0.0
        };
        for ((b, &l), &w) in self.bucket_of[..n].iter_mut().zip(logits).zip(weights) {
            // `max` and `min` map NaN (from +inf - +inf) to bucket 0.
            let d = ((max - l) * scale).max(0.0).min(top);
            let r = (d + ROUND_MAGIC)
                .to_bits()
                .wrapping_sub(ROUND_MAGIC.to_bits()) as u16;
            *b = if w > 0.0 { r } else { NONE };
        }
        self.counts.fill(0);
        self.sums.fill(0.0);
        for (&b, &w) in self.bucket_of[..n].iter().zip(weights) {
            self.counts[usize::from(b)] += 1;
            self.sums[usize::from(b)] += f64::from(w);
        }
        n - self.counts[BUCKETS] as usize
    }

    /// The k-th token under `rank`; `k` is below the number of candidates.
    fn top_k(&mut self, logits: &[f32], weights: &[f32], k: usize) -> u32 {
        let mut before = 0;
        let mut boundary = 0;
        for (b, &c) in self.counts[..BUCKETS].iter().enumerate() {
            if before + c as usize >= k {
                boundary = b;
                break;
            }
            before += c as usize;
        }
        let need = k - before;
        let cands = self.gather(logits, boundary as u16, None);
        cut(logits, weights, cands, need as f64, Measure::Count, 0).unwrap_or(0)
    }

    /// The last token of the nucleus of what `last_k` (top-k's cut, if any) keeps:
    /// the smallest prefix whose weight reaches `top_p` of the kept weight. `None`
    /// when rounding left the whole set short of it (everything stays).
    fn top_p(
        &mut self,
        logits: &[f32],
        weights: &[f32],
        last_k: Option<u32>,
        top_p: f64,
    ) -> Option<u32> {
        let (end, partial) = match last_k {
            Some(l) => {
                let b = self.bucket_of[l as usize];
                (usize::from(b), self.partial(logits, weights, b, l))
            }
            None => (BUCKETS, 0.0),
        };
        let z = self.sums[..end].iter().sum::<f64>() + partial;
        let target = top_p * z;
        let mut cum = 0.0;
        let mut boundary = None;
        for (b, &s) in self.sums[..end].iter().enumerate() {
            if cum + s >= target {
                boundary = Some((b as u16, None));
                break;
            }
            cum += s;
        }
        let (b, within) = match (boundary, last_k) {
            (Some(found), _) => found,
            (None, Some(l)) => (end as u16, Some(l)),
            (None, None) => return None,
        };
        let cands = self.gather(logits, b, within);
        cut(logits, weights, cands, target - cum, Measure::Weight, 0)
    }

    /// Weight of bucket `b`'s tokens up to `last` under `rank`, in id order.
    fn partial(&self, logits: &[f32], weights: &[f32], b: u16, last: u32) -> f64 {
        let mut z = 0.0;
        for (i, &bi) in self.bucket_of[..weights.len()].iter().enumerate() {
            if bi == b && rank(logits, i as u32, last) != Ordering::Greater {
                z += f64::from(weights[i]);
            }
        }
        z
    }

    /// Bucket `b`'s tokens in id order (those up to `upto` under `rank`, if given).
    fn gather(&mut self, logits: &[f32], b: u16, upto: Option<u32>) -> &mut [u32] {
        let mut n = 0;
        for (i, &bi) in self.bucket_of[..logits.len()].iter().enumerate() {
            if bi == b && upto.is_none_or(|u| rank(logits, i as u32, u) != Ordering::Greater) {
                self.order[n] = i as u32;
                n += 1;
            }
        }
        &mut self.order[..n]
    }
}

/// The largest and smallest logit among the candidates (positive weight).
fn candidate_range(logits: &[f32], weights: &[f32]) -> (f32, f32) {
    // Eight lanes, so that the loop vectorizes.
    let mut hi = [f32::NEG_INFINITY; 8];
    let mut lo = [f32::INFINITY; 8];
    let pairs = logits.chunks_exact(8).zip(weights.chunks_exact(8));
    for (l8, w8) in pairs {
        for j in 0..8 {
            let c = w8[j] > 0.0;
            hi[j] = hi[j].max(if c { l8[j] } else { f32::NEG_INFINITY });
            lo[j] = lo[j].min(if c { l8[j] } else { f32::INFINITY });
        }
    }
    let tail = logits.len() - logits.len() % 8;
    let (mut max, mut min) = (f32::NEG_INFINITY, f32::INFINITY);
    for j in 0..8 {
        max = max.max(hi[j]);
        min = min.min(lo[j]);
    }
    for (&l, &w) in logits[tail..].iter().zip(&weights[tail..]) {
        if w > 0.0 {
            max = max.max(l);
            min = min.min(l);
        }
    }
    (max, min)
}

/// min-p's cut: the last token under `rank` whose weight is at least `min_weight`
/// (the most likely token always is, its weight being 1).
fn min_weight_last(logits: &[f32], weights: &[f32], min_weight: f32) -> u32 {
    let mut lowest = f32::INFINITY;
    for (&l, &w) in logits.iter().zip(weights) {
        if w >= min_weight {
            lowest = lowest.min(l);
        }
    }
    // Equal logits have equal weights, so the last of them is kept too.
    logits.iter().rposition(|&l| l == lowest).unwrap_or(0) as u32
}

/// What a cut counts: tokens (top-k) or weight (top-p).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Measure {
    Count,
    Weight,
}

impl Measure {
    #[inline]
    fn of(self, weights: &[f32], i: u32) -> f64 {
        match self {
            Measure::Count => 1.0,
            Measure::Weight => f64::from(weights[i as usize]),
        }
    }
}

/// Sub-buckets when a bucket holds too many candidates to select in directly.
const SUB_BUCKETS: usize = 256;

/// At or below this many candidates a cut selects and sorts directly.
const SMALL: usize = 512;

/// Levels of sub-buckets before a cut falls back to selecting among all that is
/// left; each level narrows the logit range 255-fold, so a fourth level is only
/// reached by logits a few ulp apart.
const MAX_DEPTH: u32 = 3;

/// The last token of the smallest prefix of `cands` (given in id order) under
/// `rank` whose measure reaches `target`; the last token of all of `cands` when
/// rounding leaves them short. `None` only for no candidates. Large inputs are
/// narrowed by sub-buckets over their own logit range, as the buckets narrow the
/// vocabulary, so the cost stays linear; `cands` is reordered.
fn cut(
    logits: &[f32],
    weights: &[f32],
    cands: &mut [u32],
    target: f64,
    measure: Measure,
    depth: u32,
) -> Option<u32> {
    if cands.len() <= SMALL || depth >= MAX_DEPTH {
        return nucleus_last(logits, weights, cands, target, measure);
    }
    let (mut hi, mut lo) = (f32::NEG_INFINITY, f32::INFINITY);
    for &i in cands.iter() {
        hi = hi.max(logits[i as usize]);
        lo = lo.min(logits[i as usize]);
    }
    let span = hi - lo;
    if !(span > 0.0 && span.is_finite()) {
        // All logits equal: `rank` is id order, the order `cands` is in.
        let mut cum = 0.0;
        for &i in cands.iter() {
            cum += measure.of(weights, i);
            if cum >= target {
                return Some(i);
            }
        }
        return cands.last().copied();
    }
    let top = (SUB_BUCKETS - 1) as f32;
    let scale = top / span;
    let sub = |i: u32| {
        let d = ((hi - logits[i as usize]) * scale).max(0.0).min(top);
        (d + ROUND_MAGIC)
            .to_bits()
            .wrapping_sub(ROUND_MAGIC.to_bits()) as usize
    };
    let mut sums = [0.0f64; SUB_BUCKETS];
    for &i in cands.iter() {
        sums[sub(i)] += measure.of(weights, i);
    }
    let mut cum = 0.0;
    for (b, &s) in sums.iter().enumerate() {
        if cum + s >= target {
            // Keep only sub-bucket b's candidates, still in id order.
            let mut n = 0;
            for j in 0..cands.len() {
                let i = cands[j];
                if sub(i) == b {
                    cands[n] = i;
                    n += 1;
                }
            }
            return cut(
                logits,
                weights,
                &mut cands[..n],
                target - cum,
                measure,
                depth + 1,
            );
        }
        cum += s;
    }
    cands.iter().copied().max_by(|&a, &b| rank(logits, a, b))
}

/// `cut` by selection: sorts only as far as it needs to, in chunks that double,
/// each found by a partial selection of what is left.
fn nucleus_last(
    logits: &[f32],
    weights: &[f32],
    cands: &mut [u32],
    target: f64,
    measure: Measure,
) -> Option<u32> {
    let n = cands.len();
    let mut cum = 0.0;
    let mut start = 0;
    let mut chunk = FIRST_CHUNK;
    while start < n {
        let end = n.min(start + chunk);
        let rest = &mut cands[start..];
        if end < n {
            rest.select_nth_unstable_by(end - start - 1, |&a, &b| rank(logits, a, b));
        }
        rest[..end - start].sort_unstable_by(|&a, &b| rank(logits, a, b));
        for &i in &rest[..end - start] {
            cum += measure.of(weights, i);
            if cum >= target {
                return Some(i);
            }
        }
        start = end;
        chunk = chunk.saturating_mul(2);
    }
    // Fully sorted by now.
    cands.last().copied()
}

/// Draws the kept token that `u` in [0, 1) falls on. `z` is the sum of all the
/// weights (as [`Kept::All`] keeps them). `None` only if nothing is kept, which the
/// filters never allow.
pub(super) fn draw(
    logits: &[f32],
    weights: &[f32],
    kept: Kept,
    scratch: &Scratch,
    z: f64,
    u: f64,
) -> Option<u32> {
    match kept {
        Kept::All => walk(weights, 0.0, u * z, |_, w| w > 0.0),
        Kept::MinWeight(m) => {
            let z: f64 = weights
                .iter()
                .map(|&w| if w >= m { f64::from(w) } else { 0.0 })
                .sum();
            walk(weights, 0.0, u * z, |_, w| w >= m)
        }
        Kept::Prefix(last) => {
            let end = scratch.bucket_of[last as usize];
            let partial = scratch.partial(logits, weights, end, last);
            let sums = &scratch.sums[..usize::from(end)];
            let target = u * (sums.iter().sum::<f64>() + partial);
            let buckets = &scratch.bucket_of[..weights.len()];
            // Find the bucket, then the token within it.
            let mut cum = 0.0;
            for (b, &s) in sums.iter().enumerate() {
                if cum + s > target {
                    return walk(weights, cum, target, |i, _| usize::from(buckets[i]) == b);
                }
                cum += s;
            }
            walk(weights, cum, target, |i, _| {
                buckets[i] == end && rank(logits, i as u32, last) != Ordering::Greater
            })
        }
    }
}

/// Adds up the kept weights in id order from `cum` and returns the token where the
/// sum passes `target`, or the last kept token if rounding keeps it short.
fn walk(
    weights: &[f32],
    mut cum: f64,
    target: f64,
    keep: impl Fn(usize, f32) -> bool,
) -> Option<u32> {
    let mut last = None;
    for (i, &w) in weights.iter().enumerate() {
        if keep(i, w) {
            cum += f64::from(w);
            last = Some(i as u32);
            if cum > target {
                break;
            }
        }
    }
    last
}

impl Kept {
    /// Whether token `i` is kept.
    #[cfg(test)]
    pub(super) fn contains(&self, logits: &[f32], weights: &[f32], i: usize) -> bool {
        let w = weights[i];
        match *self {
            Kept::All => w > 0.0,
            Kept::MinWeight(m) => w >= m,
            Kept::Prefix(last) => w > 0.0 && rank(logits, i as u32, last) != Ordering::Greater,
        }
    }
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;

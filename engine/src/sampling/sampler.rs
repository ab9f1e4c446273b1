//! The per-sequence sampler: temperature over one row of logits, the filters of
//! [`super::filter`], then one draw from the sequence's own random stream.
//!
//! How a draw stays reproducible: the weights come from a portable `exp`, every
//! filter keeps a prefix of one total order on the logits, every sum is taken in an
//! order fixed by the logits alone, and each call consumes exactly one `u64` of a
//! ChaCha8 stream. Same seed and same logits give the same tokens on every machine
//! and with every std version.

use std::fmt;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use super::SamplingParams;
use super::exp::exp_nonpos;
use super::filter::{Scratch, draw, filter};

/// Picks the tokens of one sequence. Owns its random stream and scratch buffers
/// (sized to the vocabulary at construction, about 10 bytes a token; none for
/// greedy decoding), so [`Sampler::sample`] allocates nothing.
#[derive(Clone)]
pub struct Sampler {
    params: SamplingParams,
    /// 1 / temperature; `None` decodes greedily.
    inv_temperature: Option<f32>,
    rng: ChaCha8Rng,
    /// Unnormalized probabilities after temperature, indexed by token id; the most
    /// likely token has weight exactly 1.
    weights: Vec<f32>,
    scratch: Scratch,
}

impl fmt::Debug for Sampler {
    /// The parameters only: the scratch is the size of the vocabulary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sampler")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl Sampler {
    /// A sampler for one sequence. `fallback_seed` seeds the random stream when
    /// `params.seed` is `None` (the engine passes a per-request random seed).
    ///
    /// The parameters are expected to have passed [`SamplingParams::validate`];
    /// values it would refuse still do not panic: a temperature that is not a positive
    /// finite number decodes greedily, a `top_p` outside (0, 1) or NaN is off, and a
    /// `min_p` above 1 acts as 1 and one that is NaN or not positive is off.
    pub fn new(params: SamplingParams, vocab_size: usize, fallback_seed: u64) -> Sampler {
        let inv = 1.0 / params.temperature;
        let inv_temperature = (!params.is_greedy() && inv.is_finite()).then_some(inv);
        let rng = ChaCha8Rng::seed_from_u64(params.seed.unwrap_or(fallback_seed));
        // Greedy decoding needs no scratch at all.
        let scratch_size = if inv_temperature.is_some() {
            vocab_size
        } else {
            0
        };
        Sampler {
            params,
            inv_temperature,
            rng,
            weights: vec![0.0; scratch_size],
            scratch: Scratch::new(scratch_size),
        }
    }

    /// This step's settings for a backend that samples on its device, drawing the one
    /// uniform [`Sampler::sample`] would have drawn (the stream stays the same).
    pub fn device_pick(&mut self) -> crate::backend::Pick {
        let uniform = self.next_uniform();
        crate::backend::Pick {
            inv_temperature: self.inv_temperature.unwrap_or(0.0),
            top_k: self.params.top_k,
            top_p: self.params.top_p,
            min_p: self.params.min_p,
            uniform,
        }
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from raw logits. Returns the token id and its log
    /// probability under the model's raw distribution (`log_softmax` of the
    /// unmodified logits, whatever the temperature or filters).
    ///
    /// NaN logits count as `-inf`. If every logit is `-inf` or NaN (or there are
    /// none), the result is token 0 with log probability `-inf`. Logits that are
    /// `+inf` share all the probability equally. Exactly one random number is drawn
    /// per call, greedy or not, so the n-th token always uses the n-th draw. A row
    /// longer than the vocabulary given to [`Sampler::new`] grows the scratch once.
    pub fn sample(&mut self, logits: &[f32]) -> (u32, f32) {
        let u = self.next_uniform();
        let Some((argmax, max)) = argmax(logits) else {
            return (0, f32::NEG_INFINITY);
        };
        let Some(inv_t) = self.inv_temperature else {
            let log_z = sum_exp(logits, max, 1.0).ln();
            return (argmax, logprob(logits[argmax as usize], max, log_z));
        };
        if self.weights.len() < logits.len() {
            self.weights.resize(logits.len(), 0.0);
            self.scratch.ensure(logits.len());
        }
        let weights = &mut self.weights[..logits.len()];
        let z = fill_weights(weights, logits, max, inv_t);
        let log_z = if inv_t == 1.0 {
            z.ln()
        } else {
            sum_exp(logits, max, 1.0).ln()
        };

        let kept = filter(&self.params, logits, weights, &mut self.scratch);
        let token = draw(logits, weights, kept, &self.scratch, z, u).unwrap_or(argmax);
        (token, logprob(logits[token as usize], max, log_z))
    }

    /// One uniform in [0, 1) from the top 53 bits of one `u64` of the stream: defined
    /// here rather than by `rand`'s distributions so that the stream stays stable.
    fn next_uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// The first index of the largest logit and its value; `None` when every logit is
/// `-inf` or NaN.
fn argmax(logits: &[f32]) -> Option<(u32, f32)> {
    // Eight running maxima vectorize where one compare-and-branch loop cannot;
    // `f32::max` skips NaN.
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = logits.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &l) in acc.iter_mut().zip(c) {
            *a = a.max(l);
        }
    }
    let max = acc
        .iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    if max == f32::NEG_INFINITY || max.is_nan() {
        return None;
    }
    // The first index equal to the maximum: the lowest id on ties.
    let best = logits.iter().position(|&l| l == max)?;
    Some((best as u32, max))
}

/// Weight of logit `l` next to the row's maximum `max` (finite) at inverse
/// temperature `inv_t`: 1 for the maximum, 0 for NaN and `-inf`.
#[inline(always)]
fn weight(l: f32, max: f32, inv_t: f32) -> f32 {
    exp_nonpos((l - max) * inv_t)
}

/// Fills `weights` and returns their sum (see [`sum_f64`]).
fn fill_weights(weights: &mut [f32], logits: &[f32], max: f32, inv_t: f32) -> f64 {
    if max == f32::INFINITY {
        // Only the +inf logits carry probability, equally.
        for (w, &l) in weights.iter_mut().zip(logits) {
            *w = if l == f32::INFINITY { 1.0 } else { 0.0 };
        }
    } else {
        for (w, &l) in weights.iter_mut().zip(logits) {
            *w = weight(l, max, inv_t);
        }
    }
    sum_f64(weights)
}

/// Sum in f64, in a fixed order (eight interleaved partial sums, then the tail), so
/// that it is the same on every machine yet not one long dependency chain.
fn sum_f64(values: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f64::from(v);
        }
    }
    let mut s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for &v in tail {
        s += f64::from(v);
    }
    s
}

/// `sum exp((l - max) * inv_t)` without storing the weights: the raw distribution's
/// normalizer when the sampling temperature is not 1.
fn sum_exp(logits: &[f32], max: f32, inv_t: f32) -> f64 {
    if max == f32::INFINITY {
        return logits.iter().filter(|&&l| l == f32::INFINITY).count() as f64;
    }
    let mut buf = [0.0f32; 256];
    let mut z = 0.0;
    for chunk in logits.chunks(buf.len()) {
        let buf = &mut buf[..chunk.len()];
        for (w, &l) in buf.iter_mut().zip(chunk) {
            *w = weight(l, max, inv_t);
        }
        z += sum_f64(buf);
    }
    z
}

/// `log_softmax` of logit `l` given the row's maximum and log normalizer.
fn logprob(l: f32, max: f32, log_z: f64) -> f32 {
    if max == f32::INFINITY {
        return if l == f32::INFINITY {
            -log_z as f32
        } else {
            f32::NEG_INFINITY
        };
    }
    if l.is_nan() || l == f32::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    ((f64::from(l) - f64::from(max)) - log_z) as f32
}

#[cfg(test)]
#[path = "sampler_tests.rs"]
mod tests;

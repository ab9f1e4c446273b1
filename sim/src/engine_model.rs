//! The engine performance model, sans-IO: the time of one engine step as a function of
//! its batch, fitted by least squares on the step profile a real engine records
//! (`engine.step_profile`, one CSV line per step).
//!
//! `step_us = base + prefill_token * prefill_tokens + decode_token * decode_tokens +
//! context_token * context_tokens + prefill_attention * prefill_attention`: a fixed cost
//! per step (reading the weights once), a cost per computed token (matrix products), a
//! cost per token of attention context (reading the KV cache), and a cost per query-key
//! pair of the prompt tokens computed (a chunk of `n` tokens from position `p` attends
//! `n * p + n * (n + 1) / 2` positions: prefill attention grows with the square of the
//! prompt, which a cost per prompt token alone charges to short prompts), plus two terms
//! for the tiles of `tile_tokens` tokens the matrix products sweep the weights in:
//! `tile * ceil(tokens / tile_tokens)` (each tile unpacks every weight again) and
//! `multi_tile * [tokens > tile_tokens]` (with one tile the weights stream from memory
//! once; with more, each panel is fetched and then read again from cache, another code
//! path), `tokens` being the prefill and decode tokens of the step. The CPU kernel's
//! tiles are 8 tokens with AVX-512 (4 with AVX2): on a 2-core EPYC, 1 to 8 decoding
//! sequences cost about 600 us a sequence more, the ninth 2,600 and the seventeenth 130,
//! and a model linear in the batch was 5% fast at one sequence, 4-5% slow at 5-8 and
//! 3-5% fast at 9-16. The profile records the width (`tile_tokens`, the backend's);
//! without it the model has no tile terms. (Choosing the width by BIC instead found 8 in
//! six profiles of that machine, but also a spurious 64 in a synthetic profile without
//! tiles.) The same terms describe a CPU and a GPU engine with different coefficients.

use serde::{Deserialize, Serialize};

use crate::SimError;

/// The shape of one engine step, as the profile records it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepShape {
    /// Prompt tokens computed in the step (chunks of prefills).
    pub prefill_tokens: f64,
    /// Sequences decoding one token.
    pub decode_tokens: f64,
    /// Tokens of attention context over the batch's sequences.
    pub context_tokens: f64,
    /// Query-key pairs of the prompt tokens computed: the positions each attends.
    pub prefill_attention: f64,
}

impl StepShape {
    /// Query-key pairs of a prefill chunk of `len` tokens from position `start`
    /// ([`meridian_engine::scheduler::attention_pairs`], the engine's profile's count).
    pub fn chunk_attention(start: u32, len: u32) -> f64 {
        meridian_engine::scheduler::attention_pairs(start as usize, len as usize) as f64
    }
}

/// Coefficients of the step-time model, microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EngineModel {
    pub base_us: f64,
    pub prefill_token_us: f64,
    pub decode_token_us: f64,
    pub context_token_us: f64,
    /// Absent from models fitted before the term existed.
    #[serde(default)]
    pub prefill_attention_us: f64,
    /// Tokens per tile of the matrix products; 0: no tile term.
    #[serde(default)]
    pub tile_tokens: u32,
    /// Cost per tile of tokens.
    #[serde(default)]
    pub tile_us: f64,
    /// Cost of a step whose products take more than one tile.
    #[serde(default)]
    pub multi_tile_us: f64,
}

/// The number of coefficients of the model.
const TERMS: usize = 7;

/// How well a fit explains the profile it came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitReport {
    pub steps: usize,
    /// Coefficient of determination of the step times.
    pub r2: f64,
    /// Mean of |predicted - measured| / measured.
    pub mean_relative_error: f64,
    /// Total predicted time over total measured time (1.0: no bias in sum).
    pub total_ratio: f64,
}

impl EngineModel {
    /// Predicted duration of a step, microseconds.
    pub fn step_us(&self, s: &StepShape) -> f64 {
        self.base_us
            + self.prefill_token_us * s.prefill_tokens
            + self.decode_token_us * s.decode_tokens
            + self.context_token_us * s.context_tokens
            + self.prefill_attention_us * s.prefill_attention
            + self.tiles_us(s.prefill_tokens + s.decode_tokens)
    }

    /// The tile terms of a step that computes `tokens` tokens.
    pub fn tiles_us(&self, tokens: f64) -> f64 {
        let n = tiles(tokens, self.tile_tokens);
        self.tile_us * n + if n > 1.0 { self.multi_tile_us } else { 0.0 }
    }

    fn from_vec(c: [f64; TERMS], tile_tokens: u32) -> Self {
        Self {
            base_us: c[0],
            prefill_token_us: c[1],
            decode_token_us: c[2],
            context_token_us: c[3],
            prefill_attention_us: c[4],
            tile_tokens,
            tile_us: c[5],
            multi_tile_us: c[6],
        }
    }

    /// Least-squares fit on `(shape, measured step_us)` samples, with tiles of
    /// `tile_tokens` tokens (0: no tile terms; a model whose tile terms come out zero
    /// has none either).
    pub fn fit(
        samples: &[(StepShape, f64)],
        tile_tokens: u32,
    ) -> Result<(Self, FitReport), SimError> {
        if samples.len() < 8 {
            return Err(SimError::Fit(format!(
                "{} steps in the profile; at least 8 are needed",
                samples.len()
            )));
        }
        let Some(model) = Self::fit_width(samples, tile_tokens) else {
            return Err(SimError::Fit(
                "no non-negative model fits the profile's step shapes".into(),
            ));
        };
        Ok((model, model.report(samples)))
    }

    /// The best non-negative model with tiles of `width` tokens (0: no tile terms).
    fn fit_width(samples: &[(StepShape, f64)], width: u32) -> Option<Self> {
        let row = |s: &StepShape| {
            let t = tiles(s.prefill_tokens + s.decode_tokens, width);
            [
                1.0,
                s.prefill_tokens,
                s.decode_tokens,
                s.context_tokens,
                s.prefill_attention,
                t,
                if t > 1.0 { 1.0 } else { 0.0 },
            ]
        };
        // Normal equations, A^T A c = A^T y.
        let mut ata = [[0.0f64; TERMS]; TERMS];
        let mut aty = [0.0f64; TERMS];
        for (shape, y) in samples {
            let r = row(shape);
            for i in 0..TERMS {
                aty[i] += r[i] * y;
                for j in 0..TERMS {
                    ata[i][j] += r[i] * r[j];
                }
            }
        }
        // Non-negative least squares, exactly, by trying every subset of terms: a cost
        // per token cannot be negative, and a negative fit (from collinear terms, e.g. a
        // profile where every decode step has one sequence) would extrapolate badly.
        let ssr = |c: &[f64; TERMS]| -> f64 {
            let m = Self::from_vec(*c, width);
            samples
                .iter()
                .map(|(s, y)| (m.step_us(s) - y).powi(2))
                .sum()
        };
        // Without a width the tile columns are all zeros: leave them out.
        let masks = if width == 0 {
            1 << (TERMS - 2)
        } else {
            1 << TERMS
        };
        let mut best: Option<([f64; TERMS], f64)> = None;
        for mask in 1u32..masks {
            let keep: Vec<usize> = (0..TERMS).filter(|i| mask & (1 << i) != 0).collect();
            let n = keep.len();
            let mut m = vec![vec![0.0f64; n + 1]; n];
            for (a, &i) in keep.iter().enumerate() {
                for (b, &j) in keep.iter().enumerate() {
                    m[a][b] = ata[i][j];
                }
                m[a][n] = aty[i];
            }
            let Some(solved) = solve(m) else {
                continue;
            };
            if solved.iter().any(|v| !v.is_finite() || *v < 0.0) {
                continue;
            }
            let mut c = [0.0; TERMS];
            for (a, &i) in keep.iter().enumerate() {
                c[i] = solved[a];
            }
            let r = ssr(&c);
            // A tie keeps the subset tried first: of two terms the data cannot tell
            // apart, one stays at zero.
            if best.is_none_or(|(_, b)| r < b * (1.0 - 1e-9)) {
                best = Some((c, r));
            }
        }
        let (c, _) = best?;
        let tiled = c[5] + c[6] > 0.0;
        Some(Self::from_vec(c, if tiled { width } else { 0 }))
    }

    /// How well the model explains `samples`.
    fn report(&self, samples: &[(StepShape, f64)]) -> FitReport {
        let mean = samples.iter().map(|(_, y)| y).sum::<f64>() / samples.len() as f64;
        let (mut ss_res, mut ss_tot, mut rel, mut pred_sum, mut meas_sum) =
            (0.0, 0.0, 0.0, 0.0, 0.0);
        for (shape, y) in samples {
            let p = self.step_us(shape);
            ss_res += (p - y) * (p - y);
            ss_tot += (y - mean) * (y - mean);
            rel += (p - y).abs() / y.max(1.0);
            pred_sum += p;
            meas_sum += y;
        }
        FitReport {
            steps: samples.len(),
            r2: if ss_tot > 0.0 {
                1.0 - ss_res / ss_tot
            } else {
                1.0
            },
            mean_relative_error: rel / samples.len() as f64,
            total_ratio: if meas_sum > 0.0 {
                pred_sum / meas_sum
            } else {
                1.0
            },
        }
    }
}

/// Tiles of `width` tokens that `tokens` tokens take (0 without a width).
fn tiles(tokens: f64, width: u32) -> f64 {
    if width == 0 {
        0.0
    } else {
        (tokens / f64::from(width)).ceil()
    }
}

/// Gaussian elimination with partial pivoting on an augmented `n x (n+1)` matrix. A
/// 7x7 system does not justify a linear-algebra dependency.
fn solve(mut m: Vec<Vec<f64>>) -> Option<Vec<f64>> {
    let n = m.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[pivot][col].abs() < 1e-12 {
            return None;
        }
        m.swap(col, pivot);
        let pivot_row = m[col].clone();
        for (r, row) in m.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot_row[col];
                for (dst, src) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                    *dst -= f * src;
                }
            }
        }
    }
    Some((0..n).map(|i| m[i][n] / m[i][i]).collect())
}

/// Parses a step profile (the engine's CSV, header first) into fit samples. Lines
/// with a different number of fields or unparsable numbers are errors naming the line.
/// A profile without the `prefill_attention` column (recorded before it existed) reads
/// as zero there, and the fit leaves that term out.
pub fn parse_profile(text: &str) -> Result<Vec<(StepShape, f64)>, SimError> {
    let mut lines = text.lines().enumerate();
    let header: Vec<&str> = match lines.next() {
        Some((_, h)) => h.split(',').map(str::trim).collect(),
        None => return Err(SimError::Fit("the profile is empty".into())),
    };
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| SimError::Fit(format!("the profile has no column {name:?}")))
    };
    let (pre, dec, ctx, us) = (
        col("prefill_tokens")?,
        col("decode_tokens")?,
        col("context_tokens")?,
        col("step_us")?,
    );
    let attention = header.iter().position(|h| *h == "prefill_attention");
    let mut out = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != header.len() {
            return Err(SimError::Fit(format!(
                "profile line {}: {} fields, the header has {}",
                i + 1,
                fields.len(),
                header.len()
            )));
        }
        let num = |k: usize| {
            fields[k].parse::<f64>().map_err(|_| {
                SimError::Fit(format!(
                    "profile line {}: {:?} is not a number",
                    i + 1,
                    fields[k]
                ))
            })
        };
        out.push((
            StepShape {
                prefill_tokens: num(pre)?,
                decode_tokens: num(dec)?,
                context_tokens: num(ctx)?,
                prefill_attention: attention.map(num).transpose()?.unwrap_or(0.0),
            },
            num(us)?,
        ));
    }
    Ok(out)
}

/// The profile's `tile_tokens` (the backend's token tile, the same on every line); 0
/// for a profile recorded before the column existed.
pub fn profile_tile_tokens(text: &str) -> Result<u32, SimError> {
    let mut lines = text.lines().enumerate();
    let Some((_, header)) = lines.next() else {
        return Ok(0);
    };
    let Some(at) = header
        .split(',')
        .map(str::trim)
        .position(|h| h == "tile_tokens")
    else {
        return Ok(0);
    };
    let mut tile = None;
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let value = line.split(',').nth(at).map(str::trim).unwrap_or_default();
        let v: u32 = value.parse().map_err(|_| {
            SimError::Fit(format!(
                "profile line {}: tile_tokens {value:?} is not a count",
                i + 1
            ))
        })?;
        match tile {
            Some(t) if t != v => {
                return Err(SimError::Fit(format!(
                    "profile line {}: tile_tokens {v}, earlier lines {t} (profiles of two \
                     backends in one file)",
                    i + 1
                )));
            }
            _ => tile = Some(v),
        }
    }
    Ok(tile.unwrap_or(0))
}

/// Host time between back-to-back steps: what the step loop does for each sequence of
/// the step just run (hand its token to its stream, plan it into the next step) and
/// once a step. Measured on a 2-core EPYC: 80 us after one-sequence steps, 280 after
/// 20-sequence ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOverhead {
    pub base_us: f64,
    pub sequence_us: f64,
}

impl StepOverhead {
    /// The gap after a step of `sequences` sequences, microseconds.
    pub fn at(&self, sequences: f64) -> f64 {
        self.base_us + self.sequence_us * sequences
    }
}

/// The [`StepOverhead`] of a profile: the median gap between one step's end and the
/// next one's start for each number of sequences in the step before (over steps that
/// follow each other within `BUSY_GAP_US`: an idle engine's wait is not overhead), and
/// a line through those medians weighted by their counts (a flat median where the
/// profile has one batch size, no `sequences` column, or a falling line). `None`
/// without such pairs or without a `unix_us` column. The profile stamps each line at
/// the end of its step.
pub fn step_overhead(text: &str) -> Option<StepOverhead> {
    const BUSY_GAP_US: f64 = 20_000.0;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split(',').map(str::trim).collect();
    let at = header.iter().position(|h| *h == "unix_us")?;
    let us = header.iter().position(|h| *h == "step_us")?;
    let seqs = header.iter().position(|h| *h == "sequences");
    // Gaps by the sequences of the step before them.
    let mut gaps: std::collections::BTreeMap<u32, Vec<f64>> = Default::default();
    let mut last: Option<(f64, u32)> = None;
    for line in lines {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let (Some(Ok(end)), Some(Ok(took))) = (
            f.get(at).map(|v| v.parse::<f64>()),
            f.get(us).map(|v| v.parse::<f64>()),
        ) else {
            continue;
        };
        let n = seqs
            .and_then(|i| f.get(i))
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        if let Some((prev, prev_n)) = last {
            let gap = end - took - prev;
            if (0.0..BUSY_GAP_US).contains(&gap) {
                gaps.entry(prev_n).or_default().push(gap);
            }
        }
        last = Some((end, n));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut all: Vec<f64> = gaps.values().flatten().copied().collect();
    if all.is_empty() {
        return None;
    }
    let flat = StepOverhead {
        base_us: median(&mut all),
        sequence_us: 0.0,
    };
    // (sequences, median gap, count) for the batch sizes seen often enough.
    let points: Vec<(f64, f64, f64)> = gaps
        .iter_mut()
        .filter(|(_, v)| v.len() >= 5)
        .map(|(n, v)| (f64::from(*n), median(v), v.len() as f64))
        .collect();
    if points.len() < 2 {
        return Some(flat);
    }
    let w: f64 = points.iter().map(|p| p.2).sum();
    let mean_n = points.iter().map(|p| p.0 * p.2).sum::<f64>() / w;
    let mean_gap = points.iter().map(|p| p.1 * p.2).sum::<f64>() / w;
    let sxx: f64 = points.iter().map(|p| p.2 * (p.0 - mean_n).powi(2)).sum();
    let sxy: f64 = points
        .iter()
        .map(|p| p.2 * (p.0 - mean_n) * (p.1 - mean_gap))
        .sum();
    if sxx <= 0.0 || sxy <= 0.0 {
        return Some(flat);
    }
    let slope = sxy / sxx;
    let base = mean_gap - slope * mean_n;
    Some(if base >= 0.0 {
        StepOverhead {
            base_us: base,
            sequence_us: slope,
        }
    } else {
        flat
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_known_coefficients_from_a_noisy_profile() {
        let truth = EngineModel {
            base_us: 3000.0,
            prefill_token_us: 900.0,
            decode_token_us: 450.0,
            context_token_us: 2.5,
            prefill_attention_us: 1.2,
            tile_tokens: 0,
            tile_us: 0.0,
            multi_tile_us: 0.0,
        };
        let mut text = String::from(
            "unix_us,sequences,prefill_sequences,prefill_tokens,decode_tokens,context_tokens,prefill_attention,step_us\n",
        );
        // A deterministic spread of batch shapes with +-3% "noise".
        for i in 0..400u64 {
            let chunk = ((i * 37) % 512) * u64::from(i % 3 == 0);
            let shape = StepShape {
                prefill_tokens: chunk as f64,
                decode_tokens: ((i * 13) % 64) as f64,
                context_tokens: ((i * 101) % 8000) as f64,
                prefill_attention: StepShape::chunk_attention(
                    ((i * 53) % 1024) as u32,
                    chunk as u32,
                ),
            };
            let noise = 1.0 + 0.03 * (((i * 7919) % 200) as f64 / 100.0 - 1.0);
            let us = truth.step_us(&shape) * noise;
            text.push_str(&format!(
                "{i},1,1,{},{},{},{},{us:.0}\n",
                shape.prefill_tokens,
                shape.decode_tokens,
                shape.context_tokens,
                shape.prefill_attention
            ));
        }
        let samples = parse_profile(&text).unwrap();
        let (fit, report) = EngineModel::fit(&samples, 0).unwrap();
        assert!(
            (fit.prefill_token_us / truth.prefill_token_us - 1.0).abs() < 0.03,
            "{fit:?}"
        );
        assert!(
            (fit.decode_token_us / truth.decode_token_us - 1.0).abs() < 0.05,
            "{fit:?}"
        );
        assert!(
            (fit.context_token_us / truth.context_token_us - 1.0).abs() < 0.10,
            "{fit:?}"
        );
        assert!(
            (fit.prefill_attention_us / truth.prefill_attention_us - 1.0).abs() < 0.05,
            "{fit:?}"
        );
        assert!(
            report.r2 > 0.99 && report.mean_relative_error < 0.03,
            "{report:?}"
        );
        assert!((report.total_ratio - 1.0).abs() < 0.01, "{report:?}");
    }

    /// Uniform in [-1, 1], uncorrelated with the shapes' own periodic patterns.
    fn unit_noise(i: u64) -> f64 {
        let h = i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((h >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    #[test]
    fn fits_the_tile_costs() {
        // The CPU kernel's shape: 8-token tiles, a jump at the ninth token.
        let truth = EngineModel {
            base_us: 2500.0,
            prefill_token_us: 500.0,
            decode_token_us: 680.0,
            context_token_us: 2.9,
            prefill_attention_us: 2.7,
            tile_tokens: 8,
            tile_us: 1000.0,
            multi_tile_us: 1100.0,
        };
        // Prefill in one step of ten (about one in sixty in a real profile at 70% load).
        let samples: Vec<(StepShape, f64)> = (0..1000u64)
            .map(|i| {
                let chunk = ((i * 37) % 512) * u64::from(i % 10 == 0);
                let shape = StepShape {
                    prefill_tokens: chunk as f64,
                    decode_tokens: ((i * 13) % 40 + 1) as f64,
                    context_tokens: ((i * 101) % 9000) as f64,
                    prefill_attention: StepShape::chunk_attention(
                        ((i * 53) % 1024) as u32,
                        chunk as u32,
                    ),
                };
                let noise = 1.0 + 0.02 * unit_noise(i);
                (shape, truth.step_us(&shape) * noise)
            })
            .collect();
        let (fit, report) = EngineModel::fit(&samples, 8).unwrap();
        assert_eq!(fit.tile_tokens, 8, "{fit:?}");
        // Fitted without the tile terms, the same profile is explained worse.
        let (linear_fit, linear) = EngineModel::fit(&samples, 0).unwrap();
        assert!(report.r2 > linear.r2, "{report:?} {linear:?}");
        assert!((report.total_ratio - 1.0).abs() < 0.01, "{report:?}");
        // Decode steps of every batch size are predicted, the jump at the ninth
        // sequence (a tile more, and more than one) included. (The split between the
        // two tile terms is less certain than their sum where it matters.)
        let decode = |m: &EngineModel, n: f64| {
            m.step_us(&StepShape {
                decode_tokens: n,
                context_tokens: 400.0 * n,
                ..StepShape::default()
            })
        };
        let worst = |m: &EngineModel| {
            (1..=40)
                .map(|n| (decode(m, f64::from(n)) / decode(&truth, f64::from(n)) - 1.0).abs())
                .fold(0.0, f64::max)
        };
        assert!(worst(&fit) < 0.03, "{} {fit:?}", worst(&fit));
        assert!(
            worst(&linear_fit) > 2.0 * worst(&fit),
            "{} {linear_fit:?}",
            worst(&linear_fit)
        );
        let jump = |m: &EngineModel| decode(m, 9.0) - decode(m, 8.0);
        assert!((jump(&fit) / jump(&truth) - 1.0).abs() < 0.1, "{fit:?}");
    }

    #[test]
    fn tile_terms_on_a_profile_without_tiles_stay_small() {
        let truth = EngineModel {
            base_us: 3000.0,
            prefill_token_us: 600.0,
            decode_token_us: 700.0,
            context_token_us: 3.0,
            prefill_attention_us: 0.0,
            tile_tokens: 0,
            tile_us: 0.0,
            multi_tile_us: 0.0,
        };
        let samples: Vec<(StepShape, f64)> = (0..400u64)
            .map(|i| {
                let shape = StepShape {
                    prefill_tokens: (((i * 37) % 512) * u64::from(i % 4 == 0)) as f64,
                    decode_tokens: ((i * 13) % 40 + 1) as f64,
                    context_tokens: ((i * 101) % 9000) as f64,
                    prefill_attention: 0.0,
                };
                let noise = 1.0 + 0.02 * unit_noise(i);
                (shape, truth.step_us(&shape) * noise)
            })
            .collect();
        let (fit, _) = EngineModel::fit(&samples, 8).unwrap();
        for n in [1.0, 8.0, 9.0, 16.0, 17.0, 40.0] {
            let shape = StepShape {
                decode_tokens: n,
                context_tokens: 400.0 * n,
                ..StepShape::default()
            };
            let ratio = fit.step_us(&shape) / truth.step_us(&shape);
            assert!((ratio - 1.0).abs() < 0.03, "{n}: {ratio} {fit:?}");
        }
        assert!(
            fit.tile_us + fit.multi_tile_us < 0.1 * truth.decode_token_us,
            "{fit:?}"
        );
    }

    #[test]
    fn the_overhead_is_the_busy_gap_between_steps() {
        let text = "unix_us,sequences,prefill_sequences,prefill_tokens,decode_tokens,context_tokens,step_us\n\
                    1000,1,0,0,1,10,1000\n\
                    2150,1,0,0,1,11,1000\n\
                    3300,1,0,0,1,12,1000\n\
                    900000,1,0,0,1,13,1000\n\
                    901200,1,0,0,1,14,1000\n";
        // Gaps 150, 150, (idle), 200: the median of the busy ones, one batch size.
        let flat = StepOverhead {
            base_us: 150.0,
            sequence_us: 0.0,
        };
        assert_eq!(step_overhead(text), Some(flat));
        assert_eq!(step_overhead("step_us\n5\n"), None);
    }

    #[test]
    fn the_overhead_grows_with_the_sequences_of_the_step_before() {
        // After a step of n sequences the loop takes 60 + 10 n us (+-5), then the next.
        let mut text = String::from("unix_us,sequences,step_us\n");
        let mut end = 0.0;
        for i in 0..400u32 {
            let n = i % 20 + 1;
            let gap = 60.0 + 10.0 * f64::from(n) + f64::from(i % 3) * 5.0 - 5.0;
            text.push_str(&format!("{end},{n},1000\n"));
            end += gap + 1000.0;
        }
        let o = step_overhead(&text).unwrap();
        assert!((o.sequence_us - 10.0).abs() < 0.5, "{o:?}");
        assert!((o.base_us - 60.0).abs() < 5.0, "{o:?}");
    }

    #[test]
    fn bad_profiles_are_refused_by_line() {
        assert!(parse_profile("").is_err());
        let e = parse_profile("prefill_tokens,decode_tokens,step_us\n1,2,3\n").unwrap_err();
        assert!(e.to_string().contains("context_tokens"), "{e}");
        let e = parse_profile("prefill_tokens,decode_tokens,context_tokens,step_us\n1,2,3\n")
            .unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = parse_profile("prefill_tokens,decode_tokens,context_tokens,step_us\n1,x,3,4\n")
            .unwrap_err();
        assert!(e.to_string().contains("\"x\""), "{e}");
        let few = parse_profile("prefill_tokens,decode_tokens,context_tokens,step_us\n1,2,3,4\n")
            .unwrap();
        assert!(EngineModel::fit(&few, 0).is_err());
    }

    #[test]
    fn a_term_that_never_varies_is_left_at_zero() {
        // Decode only: no prefill in the profile.
        let samples: Vec<(StepShape, f64)> = (0..50)
            .map(|i| {
                let s = StepShape {
                    decode_tokens: f64::from(i % 8 + 1),
                    context_tokens: f64::from(i * 40),
                    ..StepShape::default()
                };
                (s, 1000.0 + 300.0 * s.decode_tokens + 1.5 * s.context_tokens)
            })
            .collect();
        let (fit, _) = EngineModel::fit(&samples, 0).unwrap();
        assert_eq!(fit.prefill_token_us, 0.0);
        assert_eq!(fit.prefill_attention_us, 0.0);
        assert!((fit.decode_token_us - 300.0).abs() < 1e-6, "{fit:?}");
    }

    #[test]
    fn the_tile_width_is_the_profiles_and_must_not_change() {
        let h = "prefill_tokens,decode_tokens,context_tokens,step_us,tile_tokens\n";
        assert_eq!(
            profile_tile_tokens(&format!("{h}0,1,10,4000,8\n0,2,20,5000,8\n")).unwrap(),
            8
        );
        assert_eq!(
            profile_tile_tokens("prefill_tokens,step_us\n1,2\n").unwrap(),
            0
        );
        let e = profile_tile_tokens(&format!("{h}0,1,10,4000,8\n0,2,20,5000,4\n")).unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        assert!(profile_tile_tokens(&format!("{h}0,1,10,4000,x\n")).is_err());
    }

    #[test]
    fn a_profile_without_the_attention_column_reads_as_zero_there() {
        let text = "prefill_tokens,decode_tokens,context_tokens,step_us\n10,2,30,4000\n";
        let samples = parse_profile(text).unwrap();
        assert_eq!(samples[0].0.prefill_attention, 0.0);
        assert_eq!(samples[0].0.prefill_tokens, 10.0);
        assert_eq!(samples[0].1, 4000.0);
    }
}

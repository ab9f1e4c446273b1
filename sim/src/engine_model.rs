//! The engine performance model, sans-IO: the time of one engine step as a function of
//! its batch, fitted by least squares on the step profile a real engine records
//! (`engine.step_profile`, one CSV line per step).
//!
//! `step_us = base + prefill_token * prefill_tokens + decode_us(decode_tokens) +
//! context_token * context_tokens`: a fixed cost per step (reading the weights once),
//! a cost per computed token (matrix products), and a cost per token of attention
//! context (reading the KV cache). The same terms describe a CPU and a GPU engine with
//! different coefficients.
//!
//! The decode cost is piecewise linear in the batch: `decode_token * n` plus, past each
//! knot of [`DECODE_KNOTS`], a change of slope (`decode_knot_us`). A cost per sequence
//! that changes with the batch (on a CPU it grows: the sequences' attention and
//! activations stop fitting in cache; on a GPU it falls while the step is bound by
//! reading the weights) otherwise leaves a linear fit too slow on one end of the
//! batches and too fast on the other, and a serving loop amplifies that: faster large
//! steps drain the queue, which makes the batches smaller still. Measured on the CPU
//! engine: the linear fit predicted 1-4-sequence steps 10% slow and 17+ 6% fast, and the
//! simulated TPOT came out 16% low.

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
}

/// Decode batch sizes where the decode cost per sequence may change.
pub const DECODE_KNOTS: [f64; 7] = [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// Decode steps between a knot and the next (or past the last) that the fit needs
/// before it gives the knot a slope change of its own: a segment's slope rests on its
/// own steps, never on a handful.
const MIN_IN_SEGMENT: usize = 30;

/// Coefficients of the step-time model, microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EngineModel {
    pub base_us: f64,
    pub prefill_token_us: f64,
    pub decode_token_us: f64,
    pub context_token_us: f64,
    /// Change of the decode cost per sequence past each of [`DECODE_KNOTS`] (may be
    /// negative; the cost per sequence never is). All zero: linear.
    #[serde(default)]
    pub decode_knot_us: [f64; 7],
}

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
    /// A linear model (no slope changes).
    pub fn linear(
        base_us: f64,
        prefill_token_us: f64,
        decode_token_us: f64,
        context_token_us: f64,
    ) -> Self {
        Self {
            base_us,
            prefill_token_us,
            decode_token_us,
            context_token_us,
            decode_knot_us: [0.0; 7],
        }
    }

    /// Predicted duration of a step, microseconds.
    pub fn step_us(&self, s: &StepShape) -> f64 {
        self.base_us
            + self.prefill_token_us * s.prefill_tokens
            + self.decode_us(s.decode_tokens)
            + self.context_token_us * s.context_tokens
    }

    /// The decode part of a step of `n` sequences, microseconds.
    pub fn decode_us(&self, n: f64) -> f64 {
        let mut us = self.decode_token_us * n;
        for (knot, slope) in DECODE_KNOTS.iter().zip(&self.decode_knot_us) {
            if n > *knot {
                us += slope * (n - knot);
            }
        }
        us
    }

    /// Whether every coefficient is finite, the fixed ones non-negative, and the
    /// decode cost per sequence non-negative in every segment.
    pub fn is_valid(&self) -> bool {
        let fixed = [
            self.base_us,
            self.prefill_token_us,
            self.decode_token_us,
            self.context_token_us,
        ];
        let mut slope = self.decode_token_us;
        let mut ok = fixed.iter().all(|v| v.is_finite() && *v >= 0.0);
        for k in self.decode_knot_us {
            slope += k;
            ok &= k.is_finite() && slope >= -1e-9;
        }
        ok
    }

    /// Terms: 1, prefill, decode, context, then one per knot.
    fn from_vec(c: &[f64; TERMS]) -> Self {
        let mut knots = [0.0; 7];
        knots.copy_from_slice(&c[4..]);
        Self {
            base_us: c[0],
            prefill_token_us: c[1],
            decode_token_us: c[2],
            context_token_us: c[3],
            decode_knot_us: knots,
        }
    }

    /// Least-squares fit on `(shape, measured step_us)` samples.
    ///
    /// Every subset of the terms is solved, and of the valid fits
    /// ([`EngineModel::is_valid`]) the one with the best Bayesian information criterion
    /// kept (squared error against a `ln(steps)` charge per term, so a slope change must
    /// explain more than noise), fewer slope changes first on ties: a cost per token
    /// cannot be negative, and a negative fit (from collinear terms, e.g. a profile
    /// where every decode step has one sequence) would extrapolate badly. A knot whose
    /// segment (up to the next knot) holds fewer than [`MIN_IN_SEGMENT`] steps gets no
    /// slope change.
    pub fn fit(samples: &[(StepShape, f64)]) -> Result<(Self, FitReport), SimError> {
        if samples.len() < 8 {
            return Err(SimError::Fit(format!(
                "{} steps in the profile; at least 8 are needed",
                samples.len()
            )));
        }
        let row = |s: &StepShape| {
            let mut r = [0.0; TERMS];
            r[..4].copy_from_slice(&[1.0, s.prefill_tokens, s.decode_tokens, s.context_tokens]);
            for (j, knot) in DECODE_KNOTS.iter().enumerate() {
                r[4 + j] = (s.decode_tokens - knot).max(0.0);
            }
            r
        };
        // Normal equations, A^T A c = A^T y, and y^T y for the squared error of any c.
        let mut ata = [[0.0f64; TERMS]; TERMS];
        let mut aty = [0.0f64; TERMS];
        let mut yty = 0.0;
        for (shape, y) in samples {
            let r = row(shape);
            yty += y * y;
            for i in 0..TERMS {
                aty[i] += r[i] * y;
                for j in 0..TERMS {
                    ata[i][j] += r[i] * r[j];
                }
            }
        }
        let ssr = |c: &[f64; TERMS]| -> f64 {
            let mut q = yty;
            for i in 0..TERMS {
                q -= 2.0 * c[i] * aty[i];
                for j in 0..TERMS {
                    q += c[i] * ata[i][j] * c[j];
                }
            }
            q
        };
        let usable: Vec<bool> = (0..DECODE_KNOTS.len())
            .map(|j| {
                let (lo, hi) = (
                    DECODE_KNOTS[j],
                    DECODE_KNOTS.get(j + 1).copied().unwrap_or(f64::INFINITY),
                );
                samples
                    .iter()
                    .filter(|(s, _)| s.decode_tokens > lo && s.decode_tokens <= hi)
                    .count()
                    >= MIN_IN_SEGMENT
            })
            .collect();
        let mut best: Option<([f64; TERMS], f64)> = None;
        let mut knot_masks: Vec<u32> = (0..1u32 << DECODE_KNOTS.len())
            .filter(|m| (0..DECODE_KNOTS.len()).all(|j| m & (1 << j) == 0 || usable[j]))
            .collect();
        knot_masks.sort_by_key(|m| (m.count_ones(), *m));
        for knots in knot_masks {
            for base in 1u32..16 {
                let mask = base | (knots << 4);
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
                let mut c = [0.0; TERMS];
                for (a, &i) in keep.iter().enumerate() {
                    c[i] = solved[a];
                }
                if !Self::from_vec(&c).is_valid() {
                    continue;
                }
                let steps = samples.len() as f64;
                let bic = steps * (ssr(&c).max(1e-12 * yty) / steps).ln() + n as f64 * steps.ln();
                // A tie keeps the subset tried first: of two terms the data cannot tell
                // apart, one stays at zero.
                if best.is_none_or(|(_, b)| bic < b - 1e-9 * b.abs()) {
                    best = Some((c, bic));
                }
            }
        }
        let Some((c, _)) = best else {
            return Err(SimError::Fit(
                "no non-negative model fits the profile's step shapes".into(),
            ));
        };
        let model = Self::from_vec(&c);
        let mean = samples.iter().map(|(_, y)| y).sum::<f64>() / samples.len() as f64;
        let (mut ss_res, mut ss_tot, mut rel, mut pred_sum, mut meas_sum) =
            (0.0, 0.0, 0.0, 0.0, 0.0);
        for (shape, y) in samples {
            let p = model.step_us(shape);
            ss_res += (p - y) * (p - y);
            ss_tot += (y - mean) * (y - mean);
            rel += (p - y).abs() / y.max(1.0);
            pred_sum += p;
            meas_sum += y;
        }
        let report = FitReport {
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
        };
        Ok((model, report))
    }
}

/// Terms of the fit: base, prefill, decode, context and one per knot.
const TERMS: usize = 4 + DECODE_KNOTS.len();

/// Gaussian elimination with partial pivoting on an augmented `n x (n+1)` matrix. An
/// 11x11 system does not justify a linear-algebra dependency.
fn solve(mut m: Vec<Vec<f64>>) -> Option<Vec<f64>> {
    let n = m.len();
    // Singular relative to the system's own scale (sums of squared step shapes).
    let scale = m
        .iter()
        .flat_map(|r| r[..n].iter())
        .fold(0.0f64, |a, v| a.max(v.abs()));
    for col in 0..n {
        let pivot = (col..n).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[pivot][col].abs() <= 1e-12 * scale {
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
            },
            num(us)?,
        ));
    }
    Ok(out)
}

/// Host time between back-to-back steps, microseconds: the median of the gap between
/// one step's end and the next one's start, over steps that follow each other within
/// `BUSY_GAP_US` (an idle engine's wait is not overhead). `None` without such pairs or
/// without a `unix_us` column. The profile stamps each line at the end of its step.
pub fn step_overhead_us(text: &str) -> Option<f64> {
    const BUSY_GAP_US: f64 = 20_000.0;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split(',').map(str::trim).collect();
    let at = header.iter().position(|h| *h == "unix_us")?;
    let us = header.iter().position(|h| *h == "step_us")?;
    let mut gaps = Vec::new();
    let mut last_end: Option<f64> = None;
    for line in lines {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let (Some(Ok(end)), Some(Ok(took))) = (
            f.get(at).map(|v| v.parse::<f64>()),
            f.get(us).map(|v| v.parse::<f64>()),
        ) else {
            continue;
        };
        if let Some(prev) = last_end {
            let gap = end - took - prev;
            if (0.0..BUSY_GAP_US).contains(&gap) {
                gaps.push(gap);
            }
        }
        last_end = Some(end);
    }
    if gaps.is_empty() {
        return None;
    }
    gaps.sort_by(f64::total_cmp);
    Some(gaps[gaps.len() / 2])
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    /// A profile of decode steps of 1..=max sequences (and some prefill), step times from
    /// `truth` with +-2% seeded noise.
    fn profile(truth: &EngineModel, max: u64) -> Vec<(StepShape, f64)> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        (0..3000u64)
            .map(|i| {
                let n = (i % max + 1) as f64;
                let shape = StepShape {
                    prefill_tokens: if i % 10 == 0 { (i % 480) as f64 } else { 0.0 },
                    decode_tokens: n,
                    context_tokens: n * rng.random_range(100.0..600.0),
                };
                let us = truth.step_us(&shape) * (1.0 + 0.02 * rng.random_range(-1.0..1.0));
                (shape, us)
            })
            .collect()
    }

    #[test]
    fn a_cost_per_sequence_that_changes_with_the_batch_is_followed() {
        // Rising past 4 sequences (a CPU engine), and falling past 16 (a GPU's
        // weight-bound steps): each shape's predicted decode cost within 3%.
        let mut rising = EngineModel::linear(2000.0, 800.0, 300.0, 3.0);
        rising.decode_knot_us[1] = 250.0;
        let mut falling = EngineModel::linear(5000.0, 40.0, 60.0, 0.5);
        falling.decode_knot_us[3] = -45.0;
        for (truth, max) in [(rising, 40), (falling, 200)] {
            let (fit, report) = EngineModel::fit(&profile(&truth, max)).unwrap();
            assert!(fit.is_valid(), "{fit:?}");
            for n in [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, (max as f64)] {
                let (got, want) = (
                    fit.decode_us(n) + fit.base_us,
                    truth.decode_us(n) + truth.base_us,
                );
                assert!(
                    (got / want - 1.0).abs() < 0.03,
                    "{n} sequences: {got} against {want}; {fit:?}"
                );
            }
            let linear = EngineModel::fit(
                &profile(&truth, max)
                    .into_iter()
                    .filter(|(s, _)| s.decode_tokens <= 2.0)
                    .collect::<Vec<_>>(),
            )
            .unwrap()
            .0;
            assert_eq!(
                linear.decode_knot_us, [0.0; 7],
                "no data past a knot: no slope change"
            );
            assert!(report.mean_relative_error < 0.02, "{report:?}");
        }
    }

    #[test]
    fn recovers_known_coefficients_from_a_noisy_profile() {
        let truth = EngineModel::linear(3000.0, 900.0, 450.0, 2.5);
        let mut text = String::from(
            "unix_us,sequences,prefill_sequences,prefill_tokens,decode_tokens,context_tokens,step_us\n",
        );
        // A deterministic spread of batch shapes with +-3% seeded noise.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for i in 0..400u64 {
            let shape = StepShape {
                prefill_tokens: ((i * 37) % 512) as f64 * f64::from(u8::from(i % 3 == 0)),
                decode_tokens: ((i * 13) % 64) as f64,
                context_tokens: ((i * 101) % 8000) as f64,
            };
            let noise = 1.0 + 0.03 * rng.random_range(-1.0..1.0);
            let us = truth.step_us(&shape) * noise;
            text.push_str(&format!(
                "{i},1,1,{},{},{},{us:.0}\n",
                shape.prefill_tokens, shape.decode_tokens, shape.context_tokens
            ));
        }
        let samples = parse_profile(&text).unwrap();
        let (fit, report) = EngineModel::fit(&samples).unwrap();
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
            report.r2 > 0.99 && report.mean_relative_error < 0.03,
            "{report:?}"
        );
        assert!((report.total_ratio - 1.0).abs() < 0.01, "{report:?}");
    }

    #[test]
    fn the_overhead_is_the_busy_gap_between_steps() {
        let text = "unix_us,sequences,prefill_sequences,prefill_tokens,decode_tokens,context_tokens,step_us\n\
                    1000,1,0,0,1,10,1000\n\
                    2150,1,0,0,1,11,1000\n\
                    3300,1,0,0,1,12,1000\n\
                    900000,1,0,0,1,13,1000\n\
                    901200,1,0,0,1,14,1000\n";
        // Gaps 150, 150, (idle), 200: the median of the busy ones.
        assert_eq!(step_overhead_us(text), Some(150.0));
        assert_eq!(step_overhead_us("step_us\n5\n"), None);
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
        assert!(EngineModel::fit(&few).is_err());
    }

    #[test]
    fn a_term_that_never_varies_is_left_at_zero() {
        // Decode only: no prefill in the profile.
        let samples: Vec<(StepShape, f64)> = (0..50)
            .map(|i| {
                let s = StepShape {
                    prefill_tokens: 0.0,
                    decode_tokens: f64::from(i % 8 + 1),
                    context_tokens: f64::from(i * 40),
                };
                (s, 1000.0 + 300.0 * s.decode_tokens + 1.5 * s.context_tokens)
            })
            .collect();
        let (fit, _) = EngineModel::fit(&samples).unwrap();
        assert_eq!(fit.prefill_token_us, 0.0);
        assert!((fit.decode_token_us - 300.0).abs() < 1e-6, "{fit:?}");
    }
}

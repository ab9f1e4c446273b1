use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use super::*;
use crate::sampling::exp::exp_nonpos;

fn uniform(rng: &mut ChaCha8Rng) -> f32 {
    (rng.next_u32() >> 8) as f32 / (1 << 24) as f32
}

/// A row of logits of one of several shapes, each hard on the buckets differently.
fn row(rng: &mut ChaCha8Rng, n: usize, shape: u32) -> Vec<f32> {
    let mut l: Vec<f32> = (0..n).map(|_| uniform(rng) * 8.0 - 4.0).collect();
    match shape {
        // Coarse: many exact ties.
        0 => l.iter_mut().for_each(|x| *x = (*x * 2.0).round()),
        // Clustered: one outlier puts everything else in one bucket.
        1 => {
            l.iter_mut().for_each(|x| *x *= 0.001);
            l[n / 2] = 3.0;
        }
        // Some NaN and -inf, never candidates.
        2 => {
            for i in (0..n).step_by(7) {
                l[i] = if i % 2 == 0 {
                    f32::NAN
                } else {
                    f32::NEG_INFINITY
                };
            }
            l[1] = 0.0;
        }
        _ => {}
    }
    l
}

fn weights_of(logits: &[f32], t: f32) -> Vec<f32> {
    let max = logits
        .iter()
        .copied()
        .filter(|l| !l.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    logits
        .iter()
        .map(|&l| exp_nonpos((l - max) * (1.0 / t)))
        .collect()
}

/// What the filters should keep, by sorting everything.
fn reference(logits: &[f32], weights: &[f32], p: &SamplingParams) -> Vec<bool> {
    let n = logits.len();
    let mut sorted: Vec<usize> = (0..n).filter(|&i| weights[i] > 0.0).collect();
    sorted.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let mut len = if p.top_k > 0 {
        sorted.len().min(p.top_k as usize)
    } else {
        sorted.len()
    };
    if p.top_p > 0.0 && p.top_p < 1.0 {
        let z: f64 = sorted[..len].iter().map(|&i| f64::from(weights[i])).sum();
        let mut cum = 0.0;
        for (j, &i) in sorted[..len].iter().enumerate() {
            cum += f64::from(weights[i]);
            if cum >= f64::from(p.top_p) * z {
                len = j + 1;
                break;
            }
        }
    }
    let mut keep = vec![false; n];
    for &i in &sorted[..len] {
        keep[i] = weights[i] >= p.min_p;
    }
    keep
}

fn random_params(rng: &mut ChaCha8Rng, n: usize) -> SamplingParams {
    let pick = |rng: &mut ChaCha8Rng, m: u32| (rng.next_u32() % m) as usize;
    SamplingParams {
        temperature: [0.5, 1.0, 1.3][pick(rng, 3)],
        top_k: [0, 1, 3, 50, n as u32 / 3, n as u32 + 5][pick(rng, 6)],
        top_p: [1.0, 0.3, 0.9, 0.99, 0.0][pick(rng, 5)],
        min_p: [0.0, 0.05, 0.5, 1.0][pick(rng, 4)],
        seed: None,
    }
}

/// The kept set equals one computed by sorting everything, including rows large
/// enough for sub-buckets.
#[test]
fn filters_match_a_full_sort() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    for case in 0..600 {
        let n = if case % 4 == 0 {
            600 + (rng.next_u32() % 6000) as usize
        } else {
            1 + (rng.next_u32() % 300) as usize
        };
        let shape = rng.next_u32() % 4;
        let logits = row(&mut rng, n, shape);
        let p = random_params(&mut rng, n);
        let weights = weights_of(&logits, p.temperature);
        let kept = filter(&p, &logits, &weights, &mut Scratch::new(n));
        let got: Vec<bool> = (0..n)
            .map(|i| kept.contains(&logits, &weights, i))
            .collect();
        let want = reference(&logits, &weights, &p);
        if got != want {
            let diff: Vec<usize> = (0..n).filter(|&i| got[i] != want[i]).collect();
            panic!("case {case}: {p:?}, n={n}, {kept:?}, differ at {diff:?}");
        }
    }
}

/// Draws on an even grid of `u` land on each kept token in proportion to its
/// weight, and never elsewhere.
#[test]
fn draws_follow_the_kept_weights() {
    const GRID: usize = 4000;
    let mut rng = ChaCha8Rng::seed_from_u64(33);
    for case in 0..60 {
        let n = 1 + (rng.next_u32() % 200) as usize;
        let logits = row(&mut rng, n, case % 4);
        let p = random_params(&mut rng, n);
        let weights = weights_of(&logits, p.temperature);
        let mut scratch = Scratch::new(n);
        let kept = filter(&p, &logits, &weights, &mut scratch);
        let z_all: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let keep = reference(&logits, &weights, &p);
        let z: f64 = (0..n)
            .filter(|&i| keep[i])
            .map(|i| f64::from(weights[i]))
            .sum();
        let mut hits = vec![0usize; n];
        for j in 0..GRID {
            let u = (j as f64 + 0.5) / GRID as f64;
            let t = draw(&logits, &weights, kept, &scratch, z_all, u).expect("something is kept");
            hits[t as usize] += 1;
        }
        for i in 0..n {
            let want = if keep[i] {
                f64::from(weights[i]) / z
            } else {
                0.0
            };
            let got = hits[i] as f64 / GRID as f64;
            assert!(
                (got - want).abs() <= 1.5 / GRID as f64,
                "case {case} {p:?} token {i}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn min_p_cut_keeps_ties_of_the_last_kept_logit() {
    let logits = [1.0, 0.0, 1.0, 0.0, -5.0];
    let weights = weights_of(&logits, 1.0);
    assert_eq!(min_weight_last(&logits, &weights, 1.0), 2);
    assert_eq!(min_weight_last(&logits, &weights, 0.3), 3);
    assert_eq!(min_weight_last(&logits, &weights, 1e-6), 4);
}

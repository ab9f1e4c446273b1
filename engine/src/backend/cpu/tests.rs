//! The CPU backend against the network in exact arithmetic
//! ([`reference_logits`]), in both of its activation modes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::backend::BatchSeq;
use crate::backend::reference::{MemWeights, reference_logits, rel_l2, rms_diff, shape};
use crate::kv::BlockId;
use crate::model::RopeStyle;

/// Tokens of the prompt, then of the decode steps after it.
const PROMPT: usize = 40;
const DECODE: usize = 6;

/// One sequence: its first `PROMPT` tokens as one chunk, then one token per step.
/// The logits of every step, i.e. of positions `PROMPT - 1 ..`.
fn run(b: &mut CpuBackend, tokens: &[u32]) -> Vec<Vec<f32>> {
    let table: Vec<BlockId> = (0..tokens.len().div_ceil(16) as BlockId).collect();
    let mut rows = Vec::new();
    let mut start = 0;
    for end in PROMPT..=tokens.len() {
        let seqs = [BatchSeq {
            start,
            len: end - start,
            block_table: &table,
            logits: true,
        }];
        let mut logits = vec![0f32; b.config().vocab_size];
        b.step(
            &Batch {
                tokens: &tokens[start..end],
                seqs: &seqs,
            },
            &mut logits,
        )
        .unwrap();
        rows.push(logits);
        start = end;
    }
    rows
}

/// On random models with Q8_0, Q4_0 and Q4_1 matrices, f32 activations put the CPU
/// backend's logits within f32 and f16-KV rounding of exact arithmetic, more than ten
/// times closer than 8-bit activations do; the two modes differ by no more than 8-bit
/// activations' rounding.
#[test]
fn f32_activations_agree_with_exact_arithmetic() {
    for c in [
        shape(RopeStyle::Interleaved, 4, 2, 32, false),
        shape(RopeStyle::Halves, 8, 2, 64, true),
    ] {
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
            let w = MemWeights::random_as(&c, 11, ty);
            let mut q8 = CpuBackend::load(&w, c.clone(), 16, 8, 2, &mut |_| {}).unwrap();
            let mut exact = CpuBackend::load(&w, c.clone(), 16, 8, 2, &mut |_| {})
                .unwrap()
                .with_activations(Activations::F32);
            assert_eq!(q8.activations(), Activations::Q8);
            assert!(!q8.describe().contains("f32"), "{}", q8.describe());
            assert_eq!(exact.activations(), Activations::F32);
            assert!(
                exact.describe().contains("f32 activations"),
                "{}",
                exact.describe()
            );
            let tokens: Vec<u32> = (0..PROMPT + DECODE)
                .map(|i| (i * 37 % c.vocab_size) as u32)
                .collect();
            let want = reference_logits(&w, &c, &tokens);
            let got_q8 = run(&mut q8, &tokens);
            let got = run(&mut exact, &tokens);
            let (mut err, mut err_q8) = (0.0, 0.0);
            for (s, (row, row_q8)) in got.iter().zip(&got_q8).enumerate() {
                let r = &want[PROMPT - 1 + s];
                let e = rel_l2(row, r);
                assert!(
                    e < 1e-3,
                    "{ty} {:?} step {s}: f32 activations' logits differ from exact arithmetic by {e} (relative L2)",
                    c.rope_style
                );
                let e = rel_l2(row_q8, row);
                assert!(
                    e < 0.03,
                    "{ty} {:?} step {s}: the two modes' logits differ by {e} (relative L2)",
                    c.rope_style
                );
                err += rms_diff(row, r);
                err_q8 += rms_diff(row_q8, r);
            }
            eprintln!(
                "{ty} {:?}: logit RMS error against exact arithmetic {:.2e} with f32 activations, {:.2e} with 8-bit",
                c.rope_style,
                err / got.len() as f64,
                err_q8 / got.len() as f64
            );
            assert!(
                err * 10.0 < err_q8,
                "{ty} {:?}: logit RMS error {err} with f32 activations, {err_q8} with 8-bit",
                c.rope_style
            );
        }
    }
}

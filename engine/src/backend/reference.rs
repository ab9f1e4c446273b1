//! Test support shared by the backends' tests: small random models held in memory,
//! and the network in exact arithmetic ([`reference_logits`]) that any backend's
//! logits can be checked against. Needs no GPU.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::collections::HashMap;

use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::EngineError;
use crate::backend::cpu::ops::{self, Rope};
use crate::gguf::GgmlType;
use crate::model::source::{RawTensor, WeightSource};
use crate::model::{ModelConfig, RopeStyle};

/// A two-layer model of width 128 with the given attention shape.
pub(super) fn shape(
    style: RopeStyle,
    heads: usize,
    kv: usize,
    head_dim: usize,
    bias: bool,
) -> ModelConfig {
    ModelConfig {
        architecture: "llama".into(),
        n_layers: 2,
        d_model: 128,
        n_heads: heads,
        n_kv_heads: kv,
        head_dim,
        d_ff: 192,
        vocab_size: 300,
        context_length: 512,
        rope_theta: 10_000.0,
        rope_style: style,
        rms_eps: 1e-5,
        qkv_bias: bias,
    }
}

/// `n` values uniform in `[-scale, scale)`.
pub(super) fn random(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// A model's tensors in memory, as GGUF tensors: the matrices of one type, the norms'
/// weights and the biases f32.
pub(super) struct MemWeights(HashMap<String, (GgmlType, Vec<usize>, Vec<u8>)>);

impl MemWeights {
    /// Random f32 weights, scaled so that activations stay near unit size.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(super) fn random(c: &ModelConfig, seed: u64) -> Self {
        Self::random_as(c, seed, GgmlType::F32)
    }

    /// [`MemWeights::random`]'s model with its matrices (the embedding too) quantized
    /// to `ty`: F32, Q8_0, Q4_0 or Q4_1.
    pub(super) fn random_as(c: &ModelConfig, seed: u64, ty: GgmlType) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut m = HashMap::new();
        let mut put = |name: String, rows: usize, cols: usize, scale: f32, offset: f32| {
            let v: Vec<f32> = random(&mut rng, rows * cols, scale)
                .into_iter()
                .map(|x| x + offset)
                .collect();
            // Vectors (norms, biases) are one row; they stay f32.
            let ty = if rows > 1 { ty } else { GgmlType::F32 };
            m.insert(name, (ty, vec![cols, rows], quantize(ty, &v)));
        };
        let d = c.d_model;
        let s = (3.0 / d as f32).sqrt();
        put("token_embd.weight".into(), c.vocab_size, d, 1.0, 0.0);
        put("output_norm.weight".into(), 1, d, 0.2, 1.0);
        for i in 0..c.n_layers {
            let n = |x: &str| format!("blk.{i}.{x}");
            put(n("attn_norm.weight"), 1, d, 0.2, 1.0);
            put(n("ffn_norm.weight"), 1, d, 0.2, 1.0);
            put(n("attn_q.weight"), c.q_dim(), d, s, 0.0);
            put(n("attn_k.weight"), c.kv_dim(), d, s, 0.0);
            put(n("attn_v.weight"), c.kv_dim(), d, s, 0.0);
            if c.qkv_bias {
                put(n("attn_q.bias"), 1, c.q_dim(), 0.3, 0.0);
                put(n("attn_k.bias"), 1, c.kv_dim(), 0.3, 0.0);
                put(n("attn_v.bias"), 1, c.kv_dim(), 0.3, 0.0);
            }
            put(
                n("attn_output.weight"),
                d,
                c.q_dim(),
                (3.0 / c.q_dim() as f32).sqrt(),
                0.0,
            );
            put(n("ffn_gate.weight"), c.d_ff, d, s, 0.0);
            put(n("ffn_up.weight"), c.d_ff, d, s, 0.0);
            put(
                n("ffn_down.weight"),
                d,
                c.d_ff,
                (3.0 / c.d_ff as f32).sqrt(),
                0.0,
            );
        }
        Self(m)
    }
}

impl WeightSource for MemWeights {
    fn tensor(&self, name: &str) -> Result<RawTensor<'_>, EngineError> {
        let (ty, dims, data) = self
            .0
            .get(name)
            .ok_or_else(|| EngineError::Model(format!("no tensor {name}")))?;
        Ok(RawTensor {
            name: name.into(),
            ty: *ty,
            dims: dims.clone(),
            data: Cow::Borrowed(data),
        })
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// `x` as ggml bytes of type `ty`, rounded as ggml's `quantize_row_*_ref` rounds.
fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let h = |v: f32| f16::from_f32(v).to_le_bytes();
    let mut out = Vec::new();
    if ty == GgmlType::F32 {
        out.extend(x.iter().flat_map(|v| v.to_le_bytes()));
        return out;
    }
    for b in x.chunks_exact(32) {
        match ty {
            GgmlType::Q8_0 => {
                let d = b.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(h(d));
                out.extend(b.iter().map(|v| (v * id).round() as i8 as u8));
            }
            GgmlType::Q4_0 => {
                // The value of largest magnitude maps to -8.
                let max = b
                    .iter()
                    .fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let q = |v: f32| ((v * id + 8.5) as u8).min(15);
                out.extend(h(d));
                out.extend((0..16).map(|j| q(b[j]) | q(b[j + 16]) << 4));
            }
            GgmlType::Q4_1 => {
                let min = b.iter().copied().fold(f32::INFINITY, f32::min);
                let max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let q = |v: f32| (((v - min) * id + 0.5) as u8).min(15);
                out.extend(h(d));
                out.extend(h(min));
                out.extend((0..16).map(|j| q(b[j]) | q(b[j + 16]) << 4));
            }
            _ => unreachable!("no quantizer for {ty}"),
        }
    }
    out
}

/// `|a - b| / |b|`, the L2 norms of the whole rows.
pub(super) fn rel_l2(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f32 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-12)).sqrt()
}

/// The network in plain f32 with f64 sums: every weight dequantized, activations and
/// K/V never rounded, Q/K/V biases added when the model has them. Logits at every position of `tokens` (causal, so position i's
/// depend on tokens 0..=i only). Slow, and only for checking the backends against.
pub(super) fn reference_logits(
    w: &dyn WeightSource,
    c: &ModelConfig,
    tokens: &[u32],
) -> Vec<Vec<f32>> {
    use rayon::prelude::*;
    let n = tokens.len();
    let d = c.d_model;
    let mat = |name: &str| w.tensor(name).unwrap().to_f32().unwrap();
    // y[n x m] = x[n x k] . w[m x k]^T, f64 sums.
    let matmul = |x: &[f32], k: usize, w: &[f32]| -> Vec<f32> {
        let m = w.len() / k;
        let cols: Vec<Vec<f32>> = (0..m)
            .into_par_iter()
            .map(|j| {
                let row = &w[j * k..(j + 1) * k];
                (0..n)
                    .map(|t| {
                        let xt = &x[t * k..(t + 1) * k];
                        xt.iter()
                            .zip(row)
                            .map(|(&a, &b)| f64::from(a) * f64::from(b))
                            .sum::<f64>() as f32
                    })
                    .collect()
            })
            .collect();
        let mut y = vec![0f32; n * m];
        for (j, col) in cols.iter().enumerate() {
            for t in 0..n {
                y[t * m + j] = col[t];
            }
        }
        y
    };
    let norm = |x: &[f32], weight: &[f32]| -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        for t in 0..n {
            ops::rms_norm(
                &x[t * d..(t + 1) * d],
                weight,
                c.rms_eps,
                &mut out[t * d..(t + 1) * d],
            );
        }
        out
    };
    let embed = mat("token_embd.weight");
    let mut x: Vec<f32> = tokens
        .iter()
        .flat_map(|&t| embed[t as usize * d..(t as usize + 1) * d].to_vec())
        .collect();
    let rope = Rope::new(c.head_dim, c.rope_theta, c.rope_style);
    let (hd, q_dim, kv_dim) = (c.head_dim, c.q_dim(), c.kv_dim());
    let group = c.n_heads / c.n_kv_heads;
    for i in 0..c.n_layers {
        let name = |s: &str| format!("blk.{i}.{s}");
        let xn = norm(&x, &mat(&name("attn_norm.weight")));
        let mut q = matmul(&xn, d, &mat(&name("attn_q.weight")));
        let mut k = matmul(&xn, d, &mat(&name("attn_k.weight")));
        let mut v = matmul(&xn, d, &mat(&name("attn_v.weight")));
        if c.qkv_bias {
            for (y, b) in [
                (&mut q, "attn_q.bias"),
                (&mut k, "attn_k.bias"),
                (&mut v, "attn_v.bias"),
            ] {
                let b = mat(&name(b));
                for (y, bias) in y.iter_mut().zip(b.iter().cycle()) {
                    *y += bias;
                }
            }
        }
        for t in 0..n {
            rope.apply(&mut q[t * q_dim..(t + 1) * q_dim], t);
            rope.apply(&mut k[t * kv_dim..(t + 1) * kv_dim], t);
        }
        let mut attn = vec![0f32; n * q_dim];
        for t in 0..n {
            for h in 0..c.n_heads {
                let kvh = h / group;
                let qh = &q[t * q_dim + h * hd..t * q_dim + (h + 1) * hd];
                let scores: Vec<f64> = (0..=t)
                    .map(|j| {
                        let kj = &k[j * kv_dim + kvh * hd..j * kv_dim + (kvh + 1) * hd];
                        qh.iter()
                            .zip(kj)
                            .map(|(&a, &b)| f64::from(a) * f64::from(b))
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let mx = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for dd in 0..hd {
                    let o: f64 = (0..=t)
                        .map(|j| e[j] * f64::from(v[j * kv_dim + kvh * hd + dd]))
                        .sum();
                    attn[t * q_dim + h * hd + dd] = (o / z) as f32;
                }
            }
        }
        let proj = matmul(&attn, q_dim, &mat(&name("attn_output.weight")));
        for (a, b) in x.iter_mut().zip(&proj) {
            *a += b;
        }
        let xn = norm(&x, &mat(&name("ffn_norm.weight")));
        let gate = matmul(&xn, d, &mat(&name("ffn_gate.weight")));
        let up = matmul(&xn, d, &mat(&name("ffn_up.weight")));
        let mut act = vec![0f32; gate.len()];
        ops::silu_mul(&gate, &up, &mut act);
        let down = matmul(&act, c.d_ff, &mat(&name("ffn_down.weight")));
        for (a, b) in x.iter_mut().zip(&down) {
            *a += b;
        }
    }
    let xn = norm(&x, &mat("output_norm.weight"));
    let head = if w.has("output.weight") {
        mat("output.weight")
    } else {
        embed
    };
    let logits = matmul(&xn, d, &head);
    logits.chunks(c.vocab_size).map(<[f32]>::to_vec).collect()
}

/// The root mean square of `a - b`.
pub(super) fn rms_diff(a: &[f32], b: &[f32]) -> f64 {
    let s: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    (s / a.len() as f64).sqrt()
}

//! The CPU backend: quantized weights used in place (8-bit activations times 4/8-bit
//! weights, SIMD where the CPU has it), every core through one rayon pool, a paged f16
//! KV cache in host memory, and scratch buffers sized once for the largest step.
//!
//! [`CpuBackend::with_activations`]`(`[`Activations::F32`]`)` makes it a reference
//! instead: the same weights, dequantized exactly, times activations that are never
//! quantized, with f64 sums. Slower, and for checking other backends against, not for
//! serving.

mod kv_memory;
pub mod matmul;
pub mod ops;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use rayon::prelude::*;

use self::kv_memory::KvMemory;
pub use self::matmul::Activations;
use self::matmul::{QMatrix, QuantizedActs};
use self::ops::{KvLayer, Rope};
use crate::EngineError;
use crate::backend::{Backend, Batch};
use crate::gguf::GgmlType;
use crate::model::ModelConfig;
use crate::model::source::WeightSource;

/// One group of projections that share an input (Q|K|V, gate|up): fused into a single
/// matrix when their weight types agree, so one parallel pass computes all of them.
struct Projections {
    parts: Vec<QMatrix>,
    /// Output width of each projection, in order.
    widths: Vec<usize>,
}

impl Projections {
    fn load(file: &dyn WeightSource, names: &[String], k: usize) -> Result<Self, EngineError> {
        let views = names
            .iter()
            .map(|n| file.tensor(n))
            .collect::<Result<Vec<_>, _>>()?;
        let mut widths = Vec::new();
        for v in &views {
            if v.row_len() != k {
                return Err(EngineError::Model(format!(
                    "tensor {} has rows of {} values, expected {k}",
                    v.name,
                    v.row_len()
                )));
            }
            widths.push(v.n_rows());
        }
        let same_type = views.iter().all(|v| v.ty == views[0].ty);
        let parts = if same_type {
            let mut data = Vec::with_capacity(views.iter().map(|v| v.data.len()).sum());
            for v in &views {
                data.extend_from_slice(&v.data);
            }
            vec![qmatrix(
                views[0].ty,
                widths.iter().sum(),
                k,
                &data,
                &names.join("+"),
            )?]
        } else {
            views
                .iter()
                .map(|v| qmatrix(v.ty, v.n_rows(), k, &v.data, &v.name))
                .collect::<Result<_, _>>()?
        };
        Ok(Self { parts, widths })
    }

    fn total_width(&self) -> usize {
        self.widths.iter().sum()
    }

    /// `out` gets `n` rows of `total_width()` values: the projections side by side.
    fn apply(
        &self,
        x: &QuantizedActs,
        n: usize,
        out: &mut [f32],
        tmp: &mut Vec<f32>,
        pool: &rayon::ThreadPool,
    ) {
        if let [only] = self.parts.as_slice() {
            matmul::matmul(only, x, &mut out[..n * only.rows()], pool);
            return;
        }
        let total = self.total_width();
        let mut col = 0;
        for part in &self.parts {
            let m = part.rows();
            tmp.resize(n * m, 0.0);
            matmul::matmul(part, x, &mut tmp[..n * m], pool);
            for t in 0..n {
                out[t * total + col..t * total + col + m].copy_from_slice(&tmp[t * m..(t + 1) * m]);
            }
            col += m;
        }
    }
}

fn qmatrix(
    ty: GgmlType,
    m: usize,
    k: usize,
    data: &[u8],
    name: &str,
) -> Result<QMatrix, EngineError> {
    QMatrix::from_raw(ty, m, k, data).map_err(|e| EngineError::Model(format!("tensor {name}: {e}")))
}

fn f32_tensor(file: &dyn WeightSource, name: &str, len: usize) -> Result<Vec<f32>, EngineError> {
    let values = file.tensor(name)?.to_f32()?;
    if values.len() != len {
        return Err(EngineError::Model(format!(
            "tensor {name} has {} values, expected {len}",
            values.len()
        )));
    }
    Ok(values)
}

struct Layer {
    attn_norm: Vec<f32>,
    qkv: Projections,
    qkv_bias: Option<Vec<f32>>,
    wo: QMatrix,
    ffn_norm: Vec<f32>,
    gate_up: Projections,
    down: QMatrix,
}

/// Reusable per-step buffers; grown to the largest step seen, never shrunk.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    ffn: Vec<f32>,
    act: Vec<f32>,
    tmp: Vec<f32>,
    acts: QuantizedActs,
    positions: Vec<usize>,
    /// Per token: index of its sequence in the batch.
    seq_of: Vec<usize>,
    last_rows: Vec<usize>,
}

fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

/// The CPU backend.
pub struct CpuBackend {
    config: ModelConfig,
    embed: QMatrix,
    /// `None`: tied to the embedding matrix.
    output: Option<QMatrix>,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    rope: Rope,
    block_size: usize,
    num_blocks: usize,
    /// Per layer, K and V: `[block][kv_head][slot][head_dim]`, half-precision bits.
    kv: KvMemory,
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
    scratch: Scratch,
}

impl CpuBackend {
    /// Loads every weight from `file` (converted once into the kernels' layout) and
    /// allocates `num_blocks` KV blocks of `block_size` tokens.
    pub fn load(
        file: &dyn WeightSource,
        config: ModelConfig,
        block_size: usize,
        num_blocks: usize,
        threads: usize,
        progress: &mut dyn FnMut(f32),
    ) -> Result<Self, EngineError> {
        if block_size == 0 || block_size > ops::MAX_BLOCK {
            return Err(EngineError::Config(format!(
                "kv_block_size {block_size} must be in 1..=64"
            )));
        }
        if config.head_dim > ops::MAX_HEAD_DIM
            || config.n_heads / config.n_kv_heads > ops::MAX_GROUP
        {
            return Err(EngineError::Model(format!(
                "head size {} or query heads per KV head {} beyond the CPU kernel's limits (256, 16)",
                config.head_dim,
                config.n_heads / config.n_kv_heads
            )));
        }
        let d = config.d_model;
        let embd_view = file.tensor("token_embd.weight")?;
        let embed = qmatrix(
            embd_view.ty,
            embd_view.n_rows(),
            embd_view.row_len(),
            &embd_view.data,
            "token_embd.weight",
        )?;
        if embed.rows() != config.vocab_size || embed.cols() != d {
            return Err(EngineError::Model(format!(
                "token_embd.weight is {}x{}, expected {}x{d}",
                embed.rows(),
                embed.cols(),
                config.vocab_size
            )));
        }
        let output = if file.has("output.weight") {
            let v = file.tensor("output.weight")?;
            Some(qmatrix(
                v.ty,
                v.n_rows(),
                v.row_len(),
                &v.data,
                "output.weight",
            )?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let name = |s: &str| format!("blk.{i}.{s}");
            let qkv = Projections::load(
                file,
                &[
                    name("attn_q.weight"),
                    name("attn_k.weight"),
                    name("attn_v.weight"),
                ],
                d,
            )?;
            if qkv.widths != [config.q_dim(), config.kv_dim(), config.kv_dim()] {
                return Err(EngineError::Model(format!(
                    "layer {i}: q/k/v widths {:?}",
                    qkv.widths
                )));
            }
            let qkv_bias = if config.qkv_bias {
                let mut b = f32_tensor(file, &name("attn_q.bias"), config.q_dim())?;
                b.extend(f32_tensor(file, &name("attn_k.bias"), config.kv_dim())?);
                b.extend(f32_tensor(file, &name("attn_v.bias"), config.kv_dim())?);
                Some(b)
            } else {
                None
            };
            let wo_view = file.tensor(&name("attn_output.weight"))?;
            let gate_up =
                Projections::load(file, &[name("ffn_gate.weight"), name("ffn_up.weight")], d)?;
            if gate_up.widths != [config.d_ff, config.d_ff] {
                return Err(EngineError::Model(format!(
                    "layer {i}: gate/up widths {:?}",
                    gate_up.widths
                )));
            }
            let down_view = file.tensor(&name("ffn_down.weight"))?;
            layers.push(Layer {
                attn_norm: f32_tensor(file, &name("attn_norm.weight"), d)?,
                qkv,
                qkv_bias,
                wo: qmatrix(wo_view.ty, d, config.q_dim(), &wo_view.data, &wo_view.name)?,
                ffn_norm: f32_tensor(file, &name("ffn_norm.weight"), d)?,
                gate_up,
                down: qmatrix(
                    down_view.ty,
                    d,
                    config.d_ff,
                    &down_view.data,
                    &down_view.name,
                )?,
            });
            progress((i + 1) as f32 / config.n_layers as f32);
        }
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("meridian-cpu-{i}"))
            .build()
            .map_err(|e| {
                EngineError::Config(format!("cannot start {threads} compute threads: {e}"))
            })?;
        let per_layer = num_blocks * block_size * config.kv_dim();
        Ok(Self {
            rope: Rope::new(config.head_dim, config.rope_theta, config.rope_style),
            output_norm: f32_tensor(file, "output_norm.weight", d)?,
            kv: KvMemory::new(config.n_layers, per_layer).map_err(|e| {
                EngineError::Config(format!(
                    "cannot map {num_blocks} KV blocks ({} MiB): {e}",
                    (2 * config.n_layers * per_layer * 2) >> 20
                ))
            })?,
            config,
            embed,
            output,
            layers,
            block_size,
            num_blocks,
            pool: Arc::new(pool),
            threads,
            scratch: Scratch::default(),
        })
    }

    /// Runs every matrix product with `activations`: [`Activations::Q8`] (the
    /// default) is the serving path; [`Activations::F32`] is the reference mode, whose
    /// logits differ from exact arithmetic on the same weights by f32 rounding and the
    /// f16 KV cache only (the CUDA backend's K/V are f16 too).
    pub fn with_activations(mut self, activations: Activations) -> Self {
        self.scratch.acts = QuantizedActs::with_activations(activations);
        self
    }

    /// How the matrix products take their activations.
    pub fn activations(&self) -> Activations {
        self.scratch.acts.activations()
    }
}

impl Backend for CpuBackend {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn num_kv_blocks(&self) -> usize {
        self.num_blocks
    }

    fn block_size(&self) -> usize {
        self.block_size
    }

    fn weight_bytes(&self) -> usize {
        let layer_bytes: usize = self
            .layers
            .iter()
            .map(|l| {
                l.qkv.parts.iter().map(QMatrix::bytes).sum::<usize>()
                    + l.gate_up.parts.iter().map(QMatrix::bytes).sum::<usize>()
                    + l.wo.bytes()
                    + l.down.bytes()
            })
            .sum();
        layer_bytes + self.embed.bytes() + self.output.as_ref().map_or(0, QMatrix::bytes)
    }

    fn describe(&self) -> String {
        match self.activations() {
            Activations::Q8 => format!(
                "cpu ({} threads, {}, KV on {} pages)",
                self.threads,
                matmul::Kernel::detect().name(),
                if self.kv.huge_pages() {
                    "huge"
                } else {
                    "small"
                }
            ),
            // The portable exact kernel runs every product, the detected one none.
            Activations::F32 => format!(
                "cpu ({} threads, f32 activations: reference mode)",
                self.threads
            ),
        }
    }

    fn token_tile(&self) -> usize {
        match self.activations() {
            Activations::Q8 => matmul::Kernel::detect().token_tile(),
            Activations::F32 => 0,
        }
    }

    fn step(&mut self, batch: &Batch<'_>, logits: &mut [f32]) -> Result<(), EngineError> {
        // One hand-off to the pool per step: every product and the attention inside run
        // on its threads without crossing back to the caller's.
        let pool = self.pool.clone();
        pool.install(|| self.forward(batch, logits))
    }
}

impl CpuBackend {
    fn forward(&mut self, batch: &Batch<'_>, logits: &mut [f32]) -> Result<(), EngineError> {
        let c = &self.config;
        let (d, hd, n_kv) = (c.d_model, c.head_dim, c.n_kv_heads);
        let (q_dim, kv_dim, d_ff, vocab) = (c.q_dim(), c.kv_dim(), c.d_ff, c.vocab_size);
        let group = c.n_heads / n_kv;
        let n = batch.tokens.len();
        let n_logits = batch.num_logits();
        if logits.len() < n_logits * vocab {
            return Err(EngineError::Config(format!(
                "logits buffer holds {} values, the step needs {}",
                logits.len(),
                n_logits * vocab
            )));
        }
        let bs = self.block_size;
        let s = &mut self.scratch;
        s.positions.clear();
        s.seq_of.clear();
        s.last_rows.clear();
        let mut row = 0;
        for (i, seq) in batch.seqs.iter().enumerate() {
            if seq.len == 0 {
                return Err(EngineError::Config(format!("sequence {i}: an empty chunk")));
            }
            if seq.block_table.len() * bs < seq.start + seq.len {
                return Err(EngineError::Config(format!(
                    "sequence {i}: {} blocks cannot hold {} tokens",
                    seq.block_table.len(),
                    seq.start + seq.len
                )));
            }
            if let Some(&b) = seq
                .block_table
                .iter()
                .find(|&&b| b as usize >= self.num_blocks)
            {
                return Err(EngineError::Config(format!("block {b} out of range")));
            }
            s.positions.extend(seq.start..seq.start + seq.len);
            s.seq_of.extend(std::iter::repeat_n(i, seq.len));
            row += seq.len;
            if seq.logits {
                s.last_rows.push(row - 1);
            }
        }
        if row != n {
            return Err(EngineError::Config(format!(
                "batch has {n} tokens but its chunks cover {row}"
            )));
        }
        for &t in batch.tokens {
            if t as usize >= vocab {
                return Err(EngineError::Config(format!(
                    "token id {t} outside the vocabulary of {vocab}"
                )));
            }
        }

        grow(&mut s.x, n * d);
        grow(&mut s.xn, n * d);
        grow(&mut s.qkv, n * (q_dim + 2 * kv_dim));
        grow(&mut s.attn, n * q_dim);
        grow(&mut s.proj, n * d);
        grow(&mut s.ffn, n * 2 * d_ff);
        grow(&mut s.act, n * d_ff);

        for (t, &tok) in batch.tokens.iter().enumerate() {
            self.embed
                .dequantize_row(tok as usize, &mut s.x[t * d..(t + 1) * d]);
        }

        let qkv_w = q_dim + 2 * kv_dim;
        for (li, layer) in self.layers.iter().enumerate() {
            for t in 0..n {
                ops::rms_norm(
                    &s.x[t * d..(t + 1) * d],
                    &layer.attn_norm,
                    c.rms_eps,
                    &mut s.xn[t * d..(t + 1) * d],
                );
            }
            s.acts.quantize(&s.xn[..n * d], n, d);
            layer
                .qkv
                .apply(&s.acts, n, &mut s.qkv[..n * qkv_w], &mut s.tmp, &self.pool);

            // Biases, RoPE, and K/V into their cache slots.
            let (k_cache, v_cache) = self.kv.layer_mut(li);
            for t in 0..n {
                let r = &mut s.qkv[t * qkv_w..(t + 1) * qkv_w];
                if let Some(b) = &layer.qkv_bias {
                    for (x, &bias) in r.iter_mut().zip(b) {
                        *x += bias;
                    }
                }
                let pos = s.positions[t];
                let (q, kv) = r.split_at_mut(q_dim);
                self.rope.apply(q, pos);
                self.rope.apply(&mut kv[..kv_dim], pos);
                let table = batch.seqs[s.seq_of[t]].block_table;
                let block = table[pos / bs] as usize;
                for h in 0..n_kv {
                    let dst = ((block * n_kv + h) * bs + pos % bs) * hd;
                    for (c, &x) in k_cache[dst..dst + hd]
                        .iter_mut()
                        .zip(&kv[h * hd..(h + 1) * hd])
                    {
                        *c = ops::f32_to_f16(x);
                    }
                    let v_src = &kv[kv_dim + h * hd..kv_dim + (h + 1) * hd];
                    for (c, &x) in v_cache[dst..dst + hd].iter_mut().zip(v_src) {
                        *c = ops::f32_to_f16(x);
                    }
                }
            }

            // Attention: one task per (token, KV head), covering its query heads.
            let kv = KvLayer {
                k: k_cache,
                v: v_cache,
                block_size: bs,
                n_kv_heads: n_kv,
                head_dim: hd,
            };
            let (qkv, positions, seq_of) = (&s.qkv, &s.positions, &s.seq_of);
            self.pool.install(|| {
                s.attn[..n * q_dim]
                    .par_chunks_mut(group * hd)
                    .enumerate()
                    .for_each(|(i, out)| {
                        let (t, h) = (i / n_kv, i % n_kv);
                        let q = &qkv[t * qkv_w + h * group * hd..t * qkv_w + (h + 1) * group * hd];
                        let table = batch.seqs[seq_of[t]].block_table;
                        ops::attend(&kv, table, h, positions[t], q, out);
                    });
            });

            s.acts.quantize(&s.attn[..n * q_dim], n, q_dim);
            matmul::matmul(&layer.wo, &s.acts, &mut s.proj[..n * d], &self.pool);
            for (x, p) in s.x[..n * d].iter_mut().zip(&s.proj[..n * d]) {
                *x += p;
            }

            for t in 0..n {
                ops::rms_norm(
                    &s.x[t * d..(t + 1) * d],
                    &layer.ffn_norm,
                    c.rms_eps,
                    &mut s.xn[t * d..(t + 1) * d],
                );
            }
            s.acts.quantize(&s.xn[..n * d], n, d);
            layer.gate_up.apply(
                &s.acts,
                n,
                &mut s.ffn[..n * 2 * d_ff],
                &mut s.tmp,
                &self.pool,
            );
            for t in 0..n {
                let r = &s.ffn[t * 2 * d_ff..(t + 1) * 2 * d_ff];
                ops::silu_mul(&r[..d_ff], &r[d_ff..], &mut s.act[t * d_ff..(t + 1) * d_ff]);
            }
            s.acts.quantize(&s.act[..n * d_ff], n, d_ff);
            matmul::matmul(&layer.down, &s.acts, &mut s.proj[..n * d], &self.pool);
            for (x, p) in s.x[..n * d].iter_mut().zip(&s.proj[..n * d]) {
                *x += p;
            }
        }

        // Final norm and the output head, only for the rows that want logits.
        for (j, &r) in s.last_rows.iter().enumerate() {
            ops::rms_norm(
                &s.x[r * d..(r + 1) * d],
                &self.output_norm,
                c.rms_eps,
                &mut s.xn[j * d..(j + 1) * d],
            );
        }
        if n_logits > 0 {
            s.acts.quantize(&s.xn[..n_logits * d], n_logits, d);
            let head = self.output.as_ref().unwrap_or(&self.embed);
            matmul::matmul(head, &s.acts, &mut logits[..n_logits * vocab], &self.pool);
        }
        Ok(())
    }
}

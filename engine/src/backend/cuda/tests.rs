//! Tests of the CUDA backend. The NVRTC tests run wherever the NVRTC library loads (CI
//! installs it, so a syntax error in a kernel fails CI without a GPU); the others need
//! a GPU and say that they were skipped when there is none.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::backend::cpu::ops::{self, KvLayer, Rope};
use crate::backend::cpu::{Activations, CpuBackend};
use crate::backend::reference::{MemWeights, random, reference_logits, rel_l2, rms_diff, shape};
use crate::backend::{BatchSeq, Pick};
use crate::kv::BlockId;
use crate::model::RopeStyle;
use crate::sampling::{Sampler, SamplingParams};

/// SmolLM2's attention shape, Llama 3.1 8B's and Qwen2's (biases, 7 heads per KV head).
fn shapes() -> Vec<ModelConfig> {
    let mut llama8b = ModelConfig::synthetic("llama-3.1-8b").unwrap();
    llama8b.n_layers = 1;
    vec![
        shape(RopeStyle::Interleaved, 9, 3, 64, false),
        llama8b,
        shape(RopeStyle::Halves, 14, 2, 64, true),
    ]
}

#[test]
fn every_kernel_compiles_with_nvrtc() {
    if !kernels::nvrtc_available() {
        eprintln!("skipped: the NVRTC library (libnvrtc.so.13 or .12) is not on the library path");
        return;
    }
    for config in shapes() {
        for arch in ["compute_80", "compute_90"] {
            let ptx = kernels::compile(&config, 16, arch)
                .unwrap_or_else(|e| panic!("{arch}, head {}: {e}", config.head_dim));
            let text = ptx.to_src();
            for name in kernels::NAMES {
                assert!(
                    text.contains(&format!(".entry {name}(")),
                    "{arch}: no kernel {name} in the PTX"
                );
            }
        }
    }
}

#[test]
fn shapes_the_kernels_cannot_run_are_refused() {
    let mut c = shape(RopeStyle::Halves, 4, 2, 48, false);
    assert!(
        kernels::check_shape(&c, 16)
            .unwrap_err()
            .contains("multiple of 32")
    );
    c.head_dim = 256;
    c.n_heads = 16;
    c.n_kv_heads = 2;
    assert!(
        kernels::check_shape(&c, 16)
            .unwrap_err()
            .contains("attention kernel")
    );
    c.n_heads = 4;
    assert!(
        kernels::check_shape(&c, 512)
            .unwrap_err()
            .contains("kv_block_size")
    );
    assert!(kernels::check_shape(&c, 16).is_ok());
}

#[test]
fn a_missing_gpu_is_an_error_not_a_panic() {
    let config = shape(RopeStyle::Interleaved, 4, 2, 32, false);
    let opts = options(4);
    match probe::probe(0) {
        Ok(_) => eprintln!("a GPU is present: the no-GPU error is not exercised here"),
        Err(e) => {
            let got = CudaBackend::load(Weights::Synthetic(1), config, &opts, &mut |_| {});
            let err = got
                .err()
                .expect("no GPU, yet the backend loaded")
                .to_string();
            assert!(err.contains("GPU"), "{err}");
            assert_eq!(err, EngineError::Device(e).to_string());
        }
    }
}

fn gpu() -> bool {
    match probe::probe(0) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipped: {e}");
            false
        }
    }
}

fn options(kv_blocks: usize) -> CudaOptions {
    CudaOptions {
        device: 0,
        block_size: 16,
        kv_blocks,
        memory_fraction: 0.9,
        max_tokens: 256,
        max_seqs: 8,
        graphs: true,
    }
}

fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let max = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * max,
            "{what}[{i}]: got {g}, want {w} (tolerance {tol} of {max})"
        );
    }
}

/// One kernel module on a stream, for launching kernels one at a time.
struct Rig {
    stream: Arc<CudaStream>,
    module: Arc<cudarc::driver::CudaModule>,
}

impl Rig {
    fn new(config: &ModelConfig) -> Self {
        let info = probe::probe(0).unwrap();
        let ctx = CudaContext::new(0).unwrap();
        let stream = ctx.new_stream().unwrap();
        let arch = format!("compute_{}{}", info.capability.0, info.capability.1);
        let module = ctx
            .load_module(kernels::compile(config, 16, &arch).unwrap())
            .unwrap();
        Self { stream, module }
    }

    fn up<T: DeviceRepr>(&self, host: &[T]) -> Buf<T> {
        Buf::upload(&self.stream, host, "test").unwrap()
    }

    fn down<T: DeviceRepr + Default + Clone>(&self, buf: &Buf<T>) -> Vec<T> {
        self.stream.synchronize().unwrap();
        self.stream.clone_dtoh(&buf.slice).unwrap()
    }

    fn run(&self, name: &str, grid: (u32, u32), block: u32, args: &[&dyn ArgPush]) {
        self.run3(name, (grid.0, grid.1, 1), block, args);
    }

    fn run3(&self, name: &str, grid: (u32, u32, u32), block: u32, args: &[&dyn ArgPush]) {
        let f = self.module.load_function(name).unwrap();
        launch(&self.stream, &f, grid, block, args).unwrap();
        self.stream.synchronize().unwrap();
    }
}

fn halves(v: &[f16]) -> Vec<f32> {
    v.iter().map(|h| h.to_f32()).collect()
}

#[test]
fn rms_norm_and_silu_mul_match_the_cpu() {
    if !gpu() {
        return;
    }
    let config = shape(RopeStyle::Interleaved, 4, 2, 32, false);
    let rig = Rig::new(&config);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (n, d) = (5, 4096);
    let x = random(&mut rng, n * d, 3.0);
    let w = random(&mut rng, d, 1.5);
    let (xb, wb) = (rig.up(&x), rig.up(&w));
    let out = rig.up(&vec![f16::ZERO; n * d]);
    // Rows 3 and 1 only, through the row list, as the output head's norm runs.
    let rows = rig.up(&[3i32, 1]);
    let (eps, d_i) = (1e-5f32, d as i32);
    rig.run(
        "rms_norm",
        (2, 1),
        256,
        &[&xb.ptr, &wb.ptr, &out.ptr, &rows.ptr, &eps, &d_i],
    );
    let got = halves(&rig.down(&out));
    for (j, r) in [3usize, 1].into_iter().enumerate() {
        let mut want = vec![0f32; d];
        ops::rms_norm(&x[r * d..(r + 1) * d], &w, eps, &mut want);
        close(&got[j * d..(j + 1) * d], &want, 2e-3, "rms_norm");
    }

    let d_ff = 1536;
    let gu = random(&mut rng, n * 2 * d_ff, 6.0);
    let gub = rig.up(&gu);
    let act = rig.up(&vec![f16::ZERO; n * d_ff]);
    let d_ff_i = d_ff as i32;
    rig.run(
        "silu_mul",
        (n as u32, 1),
        256,
        &[&gub.ptr, &act.ptr, &d_ff_i],
    );
    let got = halves(&rig.down(&act));
    for t in 0..n {
        let r = &gu[t * 2 * d_ff..(t + 1) * 2 * d_ff];
        let mut want = vec![0f32; d_ff];
        ops::silu_mul(&r[..d_ff], &r[d_ff..], &mut want);
        close(&got[t * d_ff..(t + 1) * d_ff], &want, 2e-3, "silu_mul");
    }
}

#[test]
fn embed_and_argmax_match_the_cpu() {
    if !gpu() {
        return;
    }
    let config = shape(RopeStyle::Interleaved, 4, 2, 32, false);
    let rig = Rig::new(&config);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (vocab, d) = (1000, 64);
    let table: Vec<f16> = random(&mut rng, vocab * d, 1.0)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    let tokens = [7u32, 999, 0, 7];
    let (tb, tok) = (rig.up(&table), rig.up(&tokens));
    let x = rig.up(&vec![0f32; tokens.len() * d]);
    let d_i = d as i32;
    rig.run(
        "embed",
        (tokens.len() as u32, 1),
        256,
        &[&tb.ptr, &tok.ptr, &x.ptr, &d_i],
    );
    let got = rig.down(&x);
    for (t, &id) in tokens.iter().enumerate() {
        let want = halves(&table[id as usize * d..(id as usize + 1) * d]);
        assert_eq!(&got[t * d..(t + 1) * d], &want[..]);
    }

    // Rows: random; a tie (the lower id wins); NaNs around the maximum; all -inf.
    let vocab = 49_152;
    let mut rows = vec![random(&mut rng, vocab, 20.0), random(&mut rng, vocab, 20.0)];
    rows[1][100] = 50.0;
    rows[1][40_000] = 50.0;
    let mut nan = random(&mut rng, vocab, 5.0);
    nan[3] = f32::NAN;
    nan[4] = 9.0;
    nan[vocab - 1] = f32::NAN;
    rows.push(nan);
    rows.push(vec![f32::NEG_INFINITY; vocab]);
    // Two +inf logits: they share all the probability.
    let mut inf = random(&mut rng, vocab, 5.0);
    inf[9] = f32::INFINITY;
    inf[4] = f32::INFINITY;
    rows.push(inf);
    let flat: Vec<f32> = rows.concat();
    let lb = rig.up(&flat);
    let picks = rig.up(&vec![0i32; rows.len()]);
    let lps = rig.up(&vec![0f32; rows.len()]);
    let v_i = vocab as i32;
    rig.run(
        "argmax_logprob",
        (rows.len() as u32, 1),
        1024,
        &[&lb.ptr, &v_i, &picks.ptr, &lps.ptr],
    );
    let (picks, lps) = (rig.down(&picks), rig.down(&lps));
    for (i, row) in rows.iter().enumerate() {
        let mut sampler = Sampler::new(SamplingParams::default(), vocab, 0);
        let (tok, lp) = sampler.sample(row);
        assert_eq!(picks[i] as u32, tok, "row {i}");
        if lp.is_finite() {
            assert!((lps[i] - lp).abs() < 1e-4, "row {i}: {} vs {lp}", lps[i]);
        } else {
            assert_eq!(lps[i], lp, "row {i}");
        }
    }
}

/// Random K/V contents for `blocks` blocks of one layer, as half bits.
fn random_cache(rng: &mut ChaCha8Rng, c: &ModelConfig, blocks: usize) -> (Vec<u16>, Vec<u16>) {
    let n = blocks * c.n_kv_heads * 16 * c.head_dim;
    let k = random(rng, n, 1.0)
        .into_iter()
        .map(ops::f32_to_f16)
        .collect();
    let v = random(rng, n, 1.0)
        .into_iter()
        .map(ops::f32_to_f16)
        .collect();
    (k, v)
}

fn as_f16(bits: &[u16]) -> Vec<f16> {
    bits.iter().map(|&b| f16::from_bits(b)).collect()
}

#[test]
fn rope_store_and_attention_match_the_cpu() {
    if !gpu() {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for c in shapes() {
        let rig = Rig::new(&c);
        let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
        let qkv_w = q_dim + 2 * kv_dim;
        let blocks = 12;
        let (k0, v0) = random_cache(&mut rng, &c, blocks);

        // Two sequences over shuffled blocks: one of 40 tokens, one of 150.
        let tables: Vec<Vec<BlockId>> = vec![vec![7, 2, 9], vec![0, 11, 4, 5, 1, 3, 8, 10, 6, 6]];
        let stride = 10;
        let mut table_rows = vec![0i32; 2 * stride];
        for (i, t) in tables.iter().enumerate() {
            for (j, &b) in t.iter().enumerate() {
                table_rows[i * stride + j] = b as i32;
            }
        }
        // The tokens of this step: the end of sequence 0 and positions of sequence 1.
        let toks: Vec<(usize, usize)> = vec![(0, 39), (0, 38), (1, 0), (1, 17), (1, 149)];
        let qkv = random(&mut rng, toks.len() * qkv_w, 2.0);
        let bias = random(&mut rng, qkv_w, 0.5);
        let pos: Vec<i32> = toks.iter().map(|&(_, p)| p as i32).collect();
        let seq_of: Vec<i32> = toks.iter().map(|&(s, _)| s as i32).collect();
        let slot: Vec<i32> = toks
            .iter()
            .map(|&(s, p)| (tables[s][p / 16] as usize * 16 + p % 16) as i32)
            .collect();
        let inv_freq: Vec<f64> = (0..c.head_dim / 2)
            .map(|i| f64::from(c.rope_theta).powf(-2.0 * i as f64 / c.head_dim as f64))
            .collect();
        let qkv_b = rig.up(&qkv);
        let bias_b = rig.up(&bias);
        let (pos_b, slot_b, seq_b) = (rig.up(&pos), rig.up(&slot), rig.up(&seq_of));
        let freq_b = rig.up(&inv_freq);
        let (kc, vc) = (rig.up(&as_f16(&k0)), rig.up(&as_f16(&v0)));
        let bias_ptr = if c.qkv_bias { bias_b.ptr } else { 0 };
        let w = qkv_w as i32;
        rig.run(
            "rope_store",
            (toks.len() as u32, 1),
            128,
            &[
                &qkv_b.ptr,
                &w,
                &bias_ptr,
                &pos_b.ptr,
                &slot_b.ptr,
                &freq_b.ptr,
                &kc.ptr,
                &vc.ptr,
            ],
        );

        // The CPU's version of the same: biases, RoPE, K/V into their slots.
        let rope = Rope::new(c.head_dim, c.rope_theta, c.rope_style);
        let mut want_qkv = qkv.clone();
        let (mut k_cpu, mut v_cpu) = (k0.clone(), v0.clone());
        for (t, &(s, p)) in toks.iter().enumerate() {
            let r = &mut want_qkv[t * qkv_w..(t + 1) * qkv_w];
            if c.qkv_bias {
                for (x, b) in r.iter_mut().zip(&bias) {
                    *x += b;
                }
            }
            let (q, kv) = r.split_at_mut(q_dim);
            rope.apply(q, p);
            rope.apply(&mut kv[..kv_dim], p);
            let block = tables[s][p / 16] as usize;
            for h in 0..c.n_kv_heads {
                let dst = ((block * c.n_kv_heads + h) * 16 + p % 16) * c.head_dim;
                for i in 0..c.head_dim {
                    k_cpu[dst + i] = ops::f32_to_f16(kv[h * c.head_dim + i]);
                    v_cpu[dst + i] = ops::f32_to_f16(kv[kv_dim + h * c.head_dim + i]);
                }
            }
        }
        let got_qkv = rig.down(&qkv_b);
        for t in 0..toks.len() {
            close(
                &got_qkv[t * qkv_w..t * qkv_w + q_dim],
                &want_qkv[t * qkv_w..t * qkv_w + q_dim],
                1e-5,
                "rotated q",
            );
        }
        let to_f32 = |v: &[u16]| v.iter().map(|&b| ops::f16_to_f32(b)).collect::<Vec<_>>();
        let got_k: Vec<f32> = halves(&rig.down(&kc));
        let got_v: Vec<f32> = halves(&rig.down(&vc));
        close(&got_k, &to_f32(&k_cpu), 1e-3, "K cache");
        close(&got_v, &to_f32(&v_cpu), 1e-3, "V cache");

        // Attention of every token over its sequence's prefix, from the cache the CPU
        // wrote (so only the attention differs).
        let (kc, vc) = (rig.up(&as_f16(&k_cpu)), rig.up(&as_f16(&v_cpu)));
        let qkv_b = rig.up(&want_qkv);
        let tables_b = rig.up(&table_rows);
        let stride_b = rig.up(&[stride as i32]);
        let scale = 1.0f32 / (c.head_dim as f32).sqrt();
        let group = c.n_heads / c.n_kv_heads;
        // One slice of keys (the output written directly), and five (partial sums
        // merged by attention_combine; with 40-token sequences some slices are empty).
        for splits in [1u32, 5] {
            let out = rig.up(&vec![f16::ZERO; toks.len() * q_dim]);
            let partial = rig.up(&vec![
                0f32;
                toks.len()
                    * c.n_kv_heads
                    * 5
                    * group
                    * (c.head_dim + 2)
            ]);
            rig.run3(
                "attention",
                (toks.len() as u32, c.n_kv_heads as u32, splits),
                256,
                &[
                    &qkv_b.ptr,
                    &w,
                    &kc.ptr,
                    &vc.ptr,
                    &tables_b.ptr,
                    &stride_b.ptr,
                    &seq_b.ptr,
                    &pos_b.ptr,
                    &out.ptr,
                    &partial.ptr,
                    &scale,
                ],
            );
            if splits > 1 {
                let s_i = splits as i32;
                rig.run(
                    "attention_combine",
                    (toks.len() as u32, c.n_kv_heads as u32),
                    128,
                    &[&partial.ptr, &s_i, &out.ptr],
                );
            }
            let got = halves(&rig.down(&out));
            let layer = KvLayer {
                k: &k_cpu,
                v: &v_cpu,
                block_size: 16,
                n_kv_heads: c.n_kv_heads,
                head_dim: c.head_dim,
            };
            for (t, &(s, p)) in toks.iter().enumerate() {
                for h in 0..c.n_kv_heads {
                    let lo = t * qkv_w + h * group * c.head_dim;
                    let q = &want_qkv[lo..lo + group * c.head_dim];
                    let mut want = vec![0f32; group * c.head_dim];
                    ops::attend(&layer, &tables[s], h, p, q, &mut want);
                    let o = t * q_dim + h * group * c.head_dim;
                    close(&got[o..o + group * c.head_dim], &want, 3e-3, "attention");
                }
            }
        }
    }
}

/// A step's chunks: (sequence, start, len, logits).
type Chunks = Vec<(usize, usize, usize, bool)>;

/// Prefill of three sequences (one in two chunks), then decode steps of all three:
/// (tokens, chunks) per step.
fn steps() -> Vec<(Vec<u32>, Chunks)> {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut tok = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..300)).collect() };
    let mut out = Vec::new();
    let mut t = tok(40 + 25 + 30);
    out.push((
        t.clone(),
        vec![(0, 0, 40, true), (1, 0, 25, false), (2, 0, 30, true)],
    ));
    t = tok(1 + 20);
    out.push((t.clone(), vec![(0, 40, 1, true), (1, 25, 20, true)]));
    for i in 0..6 {
        out.push((
            tok(3),
            vec![
                (0, 41 + i, 1, true),
                (1, 45 + i, 1, true),
                (2, 30 + i, 1, true),
            ],
        ));
    }
    out
}

fn run_steps(b: &mut dyn Backend, greedy: bool) -> Vec<Vec<f32>> {
    let tables: Vec<Vec<BlockId>> = vec![vec![3, 5, 0, 9], vec![1, 7, 8, 2], vec![4, 6, 10, 11]];
    let vocab = b.config().vocab_size;
    let mut all = Vec::new();
    for (tokens, chunks) in steps() {
        let seqs: Vec<BatchSeq<'_>> = chunks
            .iter()
            .map(|&(s, start, len, logits)| BatchSeq {
                start,
                len,
                block_table: &tables[s],
                logits,
            })
            .collect();
        let batch = Batch {
            tokens: &tokens,
            seqs: &seqs,
        };
        let rows = batch.num_logits();
        if greedy {
            let mut picks = vec![(0u32, 0f32); rows];
            b.step_pick(&batch, &vec![Pick::GREEDY; rows], &mut picks)
                .unwrap();
            all.push(picks.iter().flat_map(|&(t, lp)| [t as f32, lp]).collect());
        } else {
            let mut logits = vec![0f32; rows * vocab];
            b.step(&batch, &mut logits).unwrap();
            all.push(logits);
        }
    }
    all
}

#[test]
fn steps_match_the_cpu_backend_with_and_without_graphs() {
    if !gpu() {
        return;
    }
    for c in [
        shape(RopeStyle::Interleaved, 4, 2, 32, false),
        shape(RopeStyle::Halves, 8, 2, 64, true),
    ] {
        let w = MemWeights::random(&c, 5);
        let mut cpu = CpuBackend::load(&w, c.clone(), 16, 12, 2, &mut |_| {}).unwrap();
        let mut eager_opts = options(12);
        eager_opts.graphs = false;
        let mut eager =
            CudaBackend::load(Weights::File(&w), c.clone(), &eager_opts, &mut |_| {}).unwrap();
        let mut graphs =
            CudaBackend::load(Weights::File(&w), c.clone(), &options(12), &mut |_| {}).unwrap();
        assert!(!graphs.graph_buckets().is_empty());
        assert_eq!(eager.num_kv_blocks(), 12);
        let want = run_steps(&mut cpu, false);
        let got = run_steps(&mut eager, false);
        let replayed = run_steps(&mut graphs, false);
        // Every step replays a graph: the prefill and mixed steps too.
        let (steps, graph_steps) = graphs.steps_replayed();
        assert_eq!((steps, graph_steps), (steps, steps), "steps, graph replays");
        assert_eq!(eager.steps_replayed().1, 0);
        let picks = run_steps(&mut graphs, true);
        for (i, ((w, g), r)) in want.iter().zip(&got).zip(&replayed).enumerate() {
            // The CPU runs 8-bit weights and activations; the GPU f16: a few percent.
            let e = rel_l2(g, w);
            assert!(
                e < 0.05,
                "step {i}: logits differ from the CPU's by {e} (relative L2)"
            );
            // A replayed step is padded to its bucket: its GEMMs are wider (cuBLAS may
            // pick another kernel) and attention splits keys for the bucket's token
            // count, so sums round differently, and f16 activations carry that on (the
            // 21-token step, padded to 24, differs by 2.2e-4 on an H200).
            let e = rel_l2(r, g);
            assert!(e < 1e-3, "step {i}: graph replay differs from eager by {e}");
        }
        // The device's greedy picks are the argmax of the logits it returns.
        let vocab = c.vocab_size;
        for (i, (p, logits)) in picks.iter().zip(&replayed).enumerate() {
            for (row, pair) in p.chunks(2).enumerate() {
                let l = &logits[row * vocab..(row + 1) * vocab];
                let mut sampler = Sampler::new(SamplingParams::default(), vocab, 0);
                let (tok, lp) = sampler.sample(l);
                assert_eq!(pair[0] as u32, tok, "step {i} row {row}");
                assert!(
                    (pair[1] - lp).abs() < 1e-3,
                    "step {i} row {row}: {} vs {lp}",
                    pair[1]
                );
            }
        }
    }
}

#[test]
fn bad_steps_are_errors() {
    if !gpu() {
        return;
    }
    let c = shape(RopeStyle::Interleaved, 4, 2, 32, false);
    let mut b = CudaBackend::load(Weights::Synthetic(3), c, &options(4), &mut |_| {}).unwrap();
    let table: Vec<BlockId> = vec![0];
    let mut logits = vec![0f32; 300];
    // The error of a one-sequence step (a step that succeeds fails the test).
    let mut refused = |tokens: &[u32], start: usize, len: usize, table: &[BlockId]| {
        let seqs = [BatchSeq {
            start,
            len,
            block_table: table,
            logits: true,
        }];
        b.step(
            &Batch {
                tokens,
                seqs: &seqs,
            },
            &mut logits,
        )
        .unwrap_err()
        .to_string()
    };
    let e = refused(&[300], 0, 1, &table);
    assert!(e.contains("vocabulary"), "{e}");
    let e = refused(&[1], 16, 1, &table);
    assert!(e.contains("cannot hold"), "{e}");
    let e = refused(&[1], 0, 1, &[4]);
    assert!(e.contains("out of range"), "{e}");
    let e = refused(&[], 0, 0, &table);
    assert!(e.contains("empty chunk"), "{e}");
    refused(&[1; 257], 0, 257, &table);
}

/// The two best ids of a row and the margin between them.
fn best_two(l: &[f32]) -> (usize, f32) {
    let mut idx: Vec<usize> = (0..l.len()).collect();
    idx.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
    (idx[0], l[idx[0]] - l[idx[1]])
}

/// Greedy decoding of the real SmolLM2 on the GPU against the CPU backend, on the same
/// token path (the GPU's): the criterion, the GPU's tokens identical to the CPU
/// backend's up to the first near-tie (either's two best logits under 0.05 apart),
/// against the CPU backend in its reference mode (f32 activations; its serving mode
/// rounds activations to 8 bits, which moves SmolLM2's logits by ~0.2 RMS and so
/// decides some steps with a margin well over 0.05 the other way). Also against the
/// network in exact arithmetic (`reference_logits`): the GPU's token is exact
/// arithmetic's wherever its margin is at least 0.05, and its logits are closer to it
/// than the 8-bit CPU backend's. Where the GPU and the 8-bit CPU backend first
/// disagree is printed.
#[test]
fn smollm2_greedy_tokens_match_the_cpu_backend() {
    if !gpu() {
        return;
    }
    let path = crate::testing::real_model_path();
    let ckpt = crate::model::checkpoint::Checkpoint::open(&path).unwrap();
    let c = ckpt.config().unwrap();
    let tok = ckpt.tokenizer().unwrap();
    let mut cpu = CpuBackend::load(ckpt.weights(), c.clone(), 16, 64, 0, &mut |_| {}).unwrap();
    let mut cpu32 = CpuBackend::load(ckpt.weights(), c.clone(), 16, 64, 0, &mut |_| {})
        .unwrap()
        .with_activations(Activations::F32);
    let mut gpu = CudaBackend::load(
        Weights::File(ckpt.weights()),
        c.clone(),
        &options(64),
        &mut |_| {},
    )
    .unwrap();
    let vocab = c.vocab_size;
    let prompts = [
        "The capital of France is",
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
        "Once upon a time, in a small village by the sea, there lived",
    ];
    let steps = 64;
    let (mut compared, mut gpu_err, mut cpu_err, mut cpu32_err) = (0, 0.0, 0.0, 0.0);
    for prompt in prompts {
        let mut ids = tok.encode(prompt, true).unwrap();
        let n_prompt = ids.len();
        let table: Vec<BlockId> = (0..16).collect();
        let mut rows = [Vec::new(), Vec::new(), Vec::new()];
        let mut start = 0;
        for _ in 0..steps {
            let seqs = [BatchSeq {
                start,
                len: ids.len() - start,
                block_table: &table,
                logits: true,
            }];
            let batch = Batch {
                tokens: &ids[start..],
                seqs: &seqs,
            };
            let backends: [&mut dyn Backend; 3] = [&mut gpu, &mut cpu32, &mut cpu];
            for (b, out) in backends.into_iter().zip(rows.iter_mut()) {
                let mut l = vec![0f32; vocab];
                b.step(&batch, &mut l).unwrap();
                out.push(l);
            }
            start = ids.len();
            ids.push(best_two(&rows[0][rows[0].len() - 1]).0 as u32);
        }
        let [rows_gpu, rows_cpu32, rows_cpu] = &rows;
        let reference = reference_logits(ckpt.weights(), &c, &ids[..ids.len() - 1]);
        let (mut near_tie, mut first_cpu_gpu) = (None, None);
        for s in 0..steps {
            let r = &reference[n_prompt - 1 + s];
            let (r1, margin) = best_two(r);
            let (g1, g_margin) = best_two(&rows_gpu[s]);
            let (c32, c32_margin) = best_two(&rows_cpu32[s]);
            let (c1, c_margin) = best_two(&rows_cpu[s]);
            assert!(
                g1 == r1 || margin < 0.05,
                "{prompt:?} step {s}: GPU picks {g1}, exact arithmetic {r1} by a margin of {margin}"
            );
            if near_tie.is_none() && g_margin.min(c32_margin) < 0.05 {
                near_tie = Some(s);
            }
            if near_tie.is_none() {
                assert_eq!(
                    g1, c32,
                    "{prompt:?} step {s}: the GPU picks {g1}, the CPU backend (f32 activations) {c32}, with margins {g_margin} and {c32_margin}"
                );
            }
            if g1 != c1 && first_cpu_gpu.is_none() {
                first_cpu_gpu = Some((s, c_margin, margin, c1 == r1));
            }
            gpu_err += rms_diff(&rows_gpu[s], r);
            cpu32_err += rms_diff(&rows_cpu32[s], r);
            cpu_err += rms_diff(&rows_cpu[s], r);
            compared += 1;
        }
        match near_tie {
            None => eprintln!(
                "{prompt:?}: GPU and CPU backend (f32 activations) identical on all {steps} tokens, no near-tie"
            ),
            Some(s) => eprintln!(
                "{prompt:?}: GPU and CPU backend (f32 activations) identical up to the first near-tie, at step {s}"
            ),
        }
        match first_cpu_gpu {
            None => eprintln!("{prompt:?}: GPU and 8-bit CPU backend agree on all {steps} tokens"),
            Some((s, cm, rm, cpu_right)) => eprintln!(
                "{prompt:?}: GPU and 8-bit CPU backend first disagree at step {s} (CPU margin {cm:.3}, exact margin {rm:.3}; the {} matches exact arithmetic)",
                if cpu_right { "CPU" } else { "GPU" }
            ),
        }
    }
    let n = compared as f64;
    let (gpu_err, cpu_err, cpu32_err) = (gpu_err / n, cpu_err / n, cpu32_err / n);
    eprintln!(
        "logit RMS error against exact arithmetic: GPU {gpu_err:.4}, CPU f32 activations {cpu32_err:.4}, CPU 8-bit activations {cpu_err:.4}"
    );
    assert!(
        gpu_err <= cpu_err,
        "the GPU's logits (RMS error {gpu_err}) are further from exact arithmetic than the CPU's ({cpu_err})"
    );
}

/// The exact-arithmetic reference agrees with the CPU backend (8-bit activations) to
/// within that backend's rounding, on a random model: the reference itself is right.
#[test]
fn the_reference_agrees_with_the_cpu_backend() {
    for c in [
        shape(RopeStyle::Interleaved, 4, 2, 32, false),
        shape(RopeStyle::Halves, 8, 2, 64, false),
    ] {
        let w = MemWeights::random(&c, 11);
        let mut cpu = CpuBackend::load(&w, c.clone(), 16, 8, 2, &mut |_| {}).unwrap();
        let tokens: Vec<u32> = (0..40).map(|i| (i * 37 % 300) as u32).collect();
        let table: Vec<BlockId> = (0..3).collect();
        let seqs = [BatchSeq {
            start: 0,
            len: tokens.len(),
            block_table: &table,
            logits: true,
        }];
        let mut logits = vec![0f32; c.vocab_size];
        cpu.step(
            &Batch {
                tokens: &tokens,
                seqs: &seqs,
            },
            &mut logits,
        )
        .unwrap();
        let reference = reference_logits(&w, &c, &tokens);
        let e = rel_l2(&logits, &reference[tokens.len() - 1]);
        assert!(e < 0.03, "the CPU backend and the reference differ by {e}");
    }
}

/// The device sampler's rule on the host: the candidates (weight > 0) in rank order
/// (logit descending, id ascending) cut by top-k, then top-p of what top-k kept, then
/// min-p, as the CPU sampler cuts them. Returns the kept ids in id order with their
/// weights (empty for a row of nothing but -inf or NaN).
fn reference_kept(l: &[f32], p: &Pick) -> Vec<(usize, f64)> {
    let mx = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if mx == f32::NEG_INFINITY {
        return Vec::new();
    }
    let w = |x: f32| -> f64 {
        if mx == f32::INFINITY {
            return if x == mx { 1.0 } else { 0.0 };
        }
        let t = (x - mx) * p.inv_temperature;
        if x.is_nan() || t.is_nan() || t < -80.0 {
            0.0
        } else {
            f64::from(t.exp())
        }
    };
    let mut order: Vec<usize> = (0..l.len()).filter(|&i| w(l[i]) > 0.0).collect();
    order.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
    let mut end = order.len();
    if p.top_k > 0 && (p.top_k as usize) < end {
        end = p.top_k as usize;
    }
    if p.top_p > 0.0 && p.top_p < 1.0 {
        let z: f64 = order[..end].iter().map(|&i| w(l[i])).sum();
        let target = f64::from(p.top_p) * z;
        let mut cum = 0.0;
        for (j, &i) in order[..end].iter().enumerate() {
            cum += w(l[i]);
            if cum >= target {
                end = j + 1;
                break;
            }
        }
    }
    if p.min_p > 0.0 {
        let m = f64::from(p.min_p.min(1.0));
        end = end.min(order.iter().filter(|&&i| w(l[i]) >= m).count());
    }
    let mut kept: Vec<(usize, f64)> = order[..end].iter().map(|&i| (i, w(l[i]))).collect();
    kept.sort_unstable_by_key(|&(i, _)| i);
    kept
}

/// The rule's draw: the kept weights added in id order until they pass `uniform` times
/// their total (greedy: the first most likely id).
fn reference_pick(l: &[f32], p: &Pick) -> u32 {
    if p.inv_temperature <= 0.0 {
        let mx = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        return l.iter().position(|&x| x == mx).unwrap_or(0) as u32;
    }
    let kept = reference_kept(l, p);
    let total: f64 = kept.iter().map(|&(_, w)| w).sum();
    let target = p.uniform * total;
    let mut cum = 0.0;
    for &(i, w) in &kept {
        cum += w;
        if cum > target {
            return i as u32;
        }
    }
    kept.last().map_or(0, |&(i, _)| i as u32)
}

fn sampling_cases() -> Vec<Pick> {
    let mut cases = Vec::new();
    for (t, k, p, m) in [
        (1.0, 0, 1.0, 0.0),
        (0.7, 40, 1.0, 0.0),
        (1.0, 0, 0.9, 0.0),
        (1.3, 50, 0.8, 0.0),
        (1.0, 0, 1.0, 0.05),
        (0.8, 20, 0.95, 0.02),
        (2.0, 3, 1.0, 0.0),
        (1.0, 0, 0.3, 0.0),
    ] {
        cases.push(Pick {
            inv_temperature: 1.0 / t,
            top_k: k,
            top_p: p,
            min_p: m,
            uniform: 0.0,
        });
    }
    cases
}

/// Rows that exercise the rule: spread logits, a peaked row, ties at the cuts.
fn sampling_rows(rng: &mut ChaCha8Rng, vocab: usize) -> Vec<Vec<f32>> {
    let mut rows = vec![random(rng, vocab, 4.0), random(rng, vocab, 12.0)];
    let mut peaked = random(rng, vocab, 2.0);
    peaked[17] = 15.0;
    peaked[4000 % vocab] = 14.0;
    rows.push(peaked);
    // Many equal logits: ties at every cut.
    let tied: Vec<f32> = (0..vocab).map(|i| ((i * 7) % 13) as f32 * 0.5).collect();
    rows.push(tied);
    rows
}

/// The rule keeps what the CPU sampler keeps: every token the CPU sampler draws, over
/// many seeds, is in the rule's kept set.
#[test]
fn the_device_sampling_rule_keeps_the_cpu_samplers_set() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let vocab = 5000;
    for row in sampling_rows(&mut rng, vocab) {
        for case in sampling_cases() {
            let kept: std::collections::BTreeSet<u32> = reference_kept(&row, &case)
                .into_iter()
                .map(|(i, _)| i as u32)
                .collect();
            let params = SamplingParams {
                temperature: 1.0 / case.inv_temperature,
                top_k: case.top_k,
                top_p: case.top_p,
                min_p: case.min_p,
                seed: None,
            };
            for seed in 0..300 {
                let mut sampler = Sampler::new(params.clone(), vocab, seed);
                let (tok, _) = sampler.sample(&row);
                assert!(
                    kept.contains(&tok),
                    "{case:?}: the CPU sampler drew {tok} (logit {}), outside the device rule's {} kept tokens",
                    row[tok as usize],
                    kept.len()
                );
            }
        }
    }
}

/// The sampling kernel draws what the rule says for the same uniform, and returns the
/// log-probability the CPU sampler would.
#[test]
fn the_sampling_kernel_follows_the_rule() {
    if !gpu() {
        return;
    }
    let config = shape(RopeStyle::Interleaved, 4, 2, 32, false);
    let rig = Rig::new(&config);
    let mut rng = ChaCha8Rng::seed_from_u64(22);
    let vocab = 5000;
    let rows = sampling_rows(&mut rng, vocab);
    let (mut agree, mut total) = (0, 0);
    for case in sampling_cases() {
        let mut flat = Vec::new();
        let mut params = Vec::new();
        let mut uniforms = Vec::new();
        let mut picks = Vec::new();
        for row in &rows {
            for _ in 0..16 {
                let u: f64 = rng.random_range(0.0..1.0);
                flat.extend_from_slice(row);
                params.extend([
                    case.inv_temperature,
                    case.top_k as f32,
                    case.top_p,
                    case.min_p,
                ]);
                uniforms.push(u);
                picks.push(Pick { uniform: u, ..case });
            }
        }
        let n = picks.len();
        let (lb, pb, ub) = (rig.up(&flat), rig.up(&params), rig.up(&uniforms));
        let (tok, lp) = (rig.up(&vec![0i32; n]), rig.up(&vec![0f32; n]));
        let v = vocab as i32;
        rig.run(
            "sample",
            (n as u32, 1),
            1024,
            &[&lb.ptr, &v, &pb.ptr, &ub.ptr, &tok.ptr, &lp.ptr],
        );
        let (tok, lp) = (rig.down(&tok), rig.down(&lp));
        for (j, p) in picks.iter().enumerate() {
            let row = &flat[j * vocab..(j + 1) * vocab];
            let want = reference_pick(row, p);
            total += 1;
            if tok[j] as u32 == want {
                agree += 1;
            } else {
                // Only a uniform within rounding of a boundary may land elsewhere: the
                // same pick with the uniform nudged either way must give the GPU's.
                let nudged = [p.uniform - 1e-6, p.uniform + 1e-6].map(|u| {
                    reference_pick(
                        row,
                        &Pick {
                            uniform: u.clamp(0.0, 0.999_999),
                            ..*p
                        },
                    )
                });
                assert!(
                    nudged.contains(&(tok[j] as u32)),
                    "{p:?}: GPU drew {}, the rule {want}",
                    tok[j]
                );
            }
            let mut sampler = Sampler::new(SamplingParams::default(), vocab, 0);
            let (_, _) = sampler.sample(row);
            let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let z: f64 = row.iter().map(|&x| f64::from(x - mx).exp()).sum();
            let want_lp = (f64::from(row[tok[j] as usize] - mx) - z.ln()) as f32;
            assert!(
                (lp[j] - want_lp).abs() < 1e-3,
                "log-probability {} vs {want_lp}",
                lp[j]
            );
        }
    }
    assert!(
        agree * 100 >= total * 99,
        "only {agree} of {total} draws agree with the rule"
    );
}

/// The engine on the GPU samples on the device: the same seed gives the same tokens,
/// another seed other tokens, and every token comes with a log-probability.
#[test]
fn the_engine_samples_on_the_gpu_reproducibly() {
    if !gpu() {
        return;
    }
    use crate::engine::{Engine, Input, Request};
    let config = crate::EngineConfig {
        device: "cuda".into(),
        kv_blocks: 256,
        max_running: 8,
        ..Default::default()
    };
    let engine = Engine::load(&crate::testing::real_model_path(), &config).unwrap();
    assert!(
        engine.describe().starts_with("cuda"),
        "{}",
        engine.describe()
    );
    assert!(
        engine
            .device_memory()
            .is_some_and(|(total, used)| used > 0 && used < total)
    );
    let request = |temperature: f32, seed: u64| Request {
        input: Input::Text("Write a short poem about the sea.".into()),
        sampling: SamplingParams {
            temperature,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.0,
            seed: Some(seed),
        },
        max_tokens: 48,
        stop: Vec::new(),
        logprobs: true,
        ignore_eos: true,
    };
    let a = engine.generate_blocking(request(0.8, 7)).unwrap();
    let b = engine.generate_blocking(request(0.8, 7)).unwrap();
    let c = engine.generate_blocking(request(0.8, 8)).unwrap();
    assert_eq!(a.token_ids.len(), 48);
    assert_eq!(a.token_ids, b.token_ids, "same seed, other tokens");
    assert_ne!(
        a.token_ids, c.token_ids,
        "two seeds gave the same 48 tokens"
    );
    assert!(
        a.logprobs.iter().all(|l| l.is_finite() && *l <= 0.0),
        "{:?}",
        a.logprobs
    );
    let greedy = engine.generate_blocking(request(0.0, 1)).unwrap();
    let again = engine.generate_blocking(request(0.0, 2)).unwrap();
    assert_eq!(greedy.token_ids, again.token_ids);
    eprintln!("sampled: {:?}\ngreedy: {:?}", a.text, greedy.text);
}

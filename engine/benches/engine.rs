//! The engine's speed on the real model, in the shape of llama.cpp's own benchmarks so
//! the two can be compared row by row (`scripts/bench-engine` runs both):
//! - prefill: one 512-token prompt in one step (llama-bench `-p 512`);
//! - decode: 128 tokens for one sequence (llama-bench `-n 128`);
//! - batched decode: N sequences with 128-token prompts each generate 128 tokens
//!   together, one token per sequence per step (llama-batched-bench `-npp 128 -ntg 128
//!   -npl N`, its S_TG column).
//!
//! It drives the scheduler's data structures and a backend directly, as the engine's
//! step loop does, with greedy sampling (on the device where the backend can). Run with
//! `cargo bench -p meridian-engine --bench engine [-- --threads N]`.
//!
//! On a GPU (`--features cuda -- --device cuda [--synthetic llama-3.1-8b] [--model F]`)
//! it also prints the time from the model file to the first token, the measured memory
//! bandwidth and the batch-1 decode floor it implies (weight bytes read per step over
//! that bandwidth), and runs the decode rows with and without CUDA graphs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use meridian_engine::backend::cpu::CpuBackend;
use meridian_engine::backend::{Backend, Batch, BatchSeq, Pick};
use meridian_engine::gguf::GgufFile;
use meridian_engine::kv::{BlockId, BlockManager};
use meridian_engine::model::ModelConfig;

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

struct Bench<B: Backend> {
    backend: B,
    blocks: BlockManager,
    logits: Vec<f32>,
    picks: Vec<(u32, f32)>,
    vocab: usize,
}

impl<B: Backend> Bench<B> {
    /// A bench over `backend`, with a block manager for all its KV blocks.
    fn new(backend: B) -> Self {
        Self {
            blocks: BlockManager::new(backend.num_kv_blocks(), backend.block_size()),
            logits: Vec::new(),
            picks: Vec::new(),
            vocab: backend.config().vocab_size,
            backend,
        }
    }

    /// One step's greedy tokens: picked on the device when the backend can, else the
    /// argmax of the logits it returns.
    fn greedy(&mut self, batch: &Batch<'_>) -> Vec<u32> {
        let n = batch.num_logits();
        if self.backend.picks_on_device() {
            self.picks.resize(n, (0, 0.0));
            self.backend
                .step_pick(batch, &vec![Pick::GREEDY; n], &mut self.picks)
                .unwrap();
            return self.picks.iter().map(|p| p.0).collect();
        }
        self.logits.resize(n.max(1) * self.vocab, 0.0);
        self.backend.step(batch, &mut self.logits).unwrap();
        (0..n)
            .map(|r| argmax(&self.logits[r * self.vocab..(r + 1) * self.vocab]))
            .collect()
    }

    /// Prefills `n_seqs` prompts of `n_prompt` tokens (in steps of at most `chunk`
    /// tokens), then decodes `n_gen` tokens each. Returns (prefill s, decode s).
    fn run(&mut self, n_seqs: usize, n_prompt: usize, n_gen: usize, chunk: usize) -> (f64, f64) {
        let bs = self.blocks.block_size();
        let tables: Vec<Vec<BlockId>> = (0..n_seqs)
            .map(|_| {
                (0..(n_prompt + n_gen).div_ceil(bs))
                    .map(|_| self.blocks.allocate().expect("enough KV blocks"))
                    .collect()
            })
            .collect();
        // Distinct prompts so nothing is shared between sequences.
        let prompts: Vec<Vec<u32>> = (0..n_seqs)
            .map(|s| {
                (0..n_prompt)
                    .map(|i| ((i * 31 + s * 97) % 40_000 + 100) as u32)
                    .collect()
            })
            .collect();
        let mut last = vec![0u32; n_seqs];
        let started = Instant::now();
        let mut tokens = Vec::new();
        let mut seqs = Vec::new();
        let mut done = vec![0usize; n_seqs];
        // Prefill: pack chunks of several sequences per step, like the scheduler does.
        while done.iter().any(|&d| d < n_prompt) {
            tokens.clear();
            seqs.clear();
            let mut budget = chunk;
            for s in 0..n_seqs {
                if done[s] == n_prompt || budget == 0 {
                    continue;
                }
                let len = (n_prompt - done[s]).min(budget);
                tokens.extend_from_slice(&prompts[s][done[s]..done[s] + len]);
                seqs.push((
                    s,
                    BatchSeq {
                        start: done[s],
                        len,
                        block_table: &tables[s],
                        logits: done[s] + len == n_prompt,
                    },
                ));
                done[s] += len;
                budget -= len;
            }
            let batch_seqs: Vec<BatchSeq<'_>> = seqs.iter().map(|(_, b)| *b).collect();
            let picks = self.greedy(&Batch {
                tokens: &tokens,
                seqs: &batch_seqs,
            });
            let mut row = 0;
            for (s, b) in &seqs {
                if b.logits {
                    last[*s] = picks[row];
                    row += 1;
                }
            }
        }
        let prefill = started.elapsed().as_secs_f64();
        let started = Instant::now();
        for g in 0..n_gen {
            let batch_seqs: Vec<BatchSeq<'_>> = (0..n_seqs)
                .map(|s| BatchSeq {
                    start: n_prompt + g,
                    len: 1,
                    block_table: &tables[s],
                    logits: true,
                })
                .collect();
            last = self.greedy(&Batch {
                tokens: &last,
                seqs: &batch_seqs,
            });
        }
        let decode = started.elapsed().as_secs_f64();
        for t in &tables {
            self.blocks.release(t);
        }
        (prefill, decode)
    }
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let threads: usize = flag("--threads").and_then(|t| t.parse().ok()).unwrap_or(0);
    let npl: Vec<usize> = flag("--npl")
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4, 16, 32, 64]);
    let path =
        flag("--model").map_or_else(meridian_engine::testing::real_model_path, PathBuf::from);
    if flag("--device").is_some_and(|d| d.starts_with("cuda")) {
        #[cfg(feature = "cuda")]
        gpu::main(&path, flag("--synthetic"), &npl);
        #[cfg(not(feature = "cuda"))]
        eprintln!("built without the cuda feature: run with --features cuda");
        return;
    }
    let file = GgufFile::open(&path).expect("run `meridian models pull` first");
    let config = ModelConfig::from_gguf(&file).unwrap();
    let block_size = 16;
    let max_seqs = npl.iter().copied().max().unwrap_or(1);
    let num_blocks = max_seqs * (256usize).div_ceil(block_size) + 64;
    let load = Instant::now();
    let backend =
        CpuBackend::load(&file, config, block_size, num_blocks, threads, &mut |_| {}).unwrap();
    let load_s = load.elapsed().as_secs_f64();
    let describe = backend.describe();
    let mut bench = Bench::new(backend);
    println!(
        "meridian engine: {} ({describe}), load {:.2} s",
        path.display(),
        load_s
    );

    bench.run(1, 32, 8, 512); // warm-up
    let (pp, _) = bench.run(1, 512, 1, 512);
    println!("prefill 512 tokens:        {:8.1} tok/s", 512.0 / pp);
    let (_, tg) = bench.run(1, 1, 128, 512);
    println!("decode 128 tokens, batch 1: {:8.1} tok/s", 128.0 / tg);
    for &n in &npl {
        let (pp, tg) = bench.run(n, 128, 128, 512);
        println!(
            "npl {n:3}: prefill {:8.1} tok/s, decode total {:8.1} tok/s",
            (n * 128) as f64 / pp,
            (n * 128) as f64 / tg
        );
    }
    println!("peak RSS: {:.0} MiB", peak_rss_mib());
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::*;
    use meridian_engine::backend::cuda::{CudaBackend, CudaOptions, Weights};
    use meridian_engine::model::checkpoint::Checkpoint;

    pub fn main(path: &std::path::Path, synthetic: Option<String>, npl: &[usize]) {
        let started = Instant::now();
        let ckpt = Checkpoint::open(path).expect("run `meridian models pull` first");
        let (config, weights) = match &synthetic {
            Some(name) => (ModelConfig::synthetic(name).unwrap(), Weights::Synthetic(7)),
            None => (ckpt.config().unwrap(), Weights::File(ckpt.weights())),
        };
        let block_size = 16;
        let max_seqs = npl.iter().copied().max().unwrap_or(1).max(1);
        let opts = CudaOptions {
            device: 0,
            block_size,
            kv_blocks: 0,
            memory_fraction: 0.9,
            max_tokens: 2048,
            max_seqs,
            graphs: true,
        };
        let backend = match CudaBackend::load(weights, config, &opts, &mut |_| {}) {
            Ok(b) => b,
            Err(e) => {
                println!("no GPU benchmark: {e}");
                return;
            }
        };
        let mut bench = Bench::new(backend);
        // The first token: a one-token prompt through the whole network.
        bench.run(1, 1, 1, 2048);
        let first_token = started.elapsed().as_secs_f64();
        let model = synthetic.clone().map_or_else(
            || path.display().to_string(),
            |s| format!("{s} (synthetic f16 weights)"),
        );
        println!("meridian engine: {model} ({})", bench.backend.describe());
        println!("model file to first token: {first_token:.2} s");
        let bw = bench.backend.measure_bandwidth(1 << 30).unwrap();
        let bytes = bench.backend.step_weight_bytes();
        let floor_ms = bytes as f64 / bw * 1000.0;
        println!(
            "memory bandwidth (device copy, read + write): {:.0} GB/s; weights read per step: {:.1} MB; batch-1 floor {floor_ms:.3} ms/token",
            bw / 1e9,
            bytes as f64 / 1e6
        );
        println!(
            "kv blocks: {} of {block_size} tokens",
            bench.backend.num_kv_blocks()
        );
        bench.run(1, 32, 8, 2048); // warm-up
        let (pp, _) = bench.run(1, 512, 1, 2048);
        println!("prefill 512 tokens:        {:8.1} tok/s", 512.0 / pp);
        for graphs in [true, false] {
            bench.backend.set_graphs(graphs).unwrap();
            let label = if graphs { "graphs" } else { "eager" };
            let (_, tg) = bench.run(1, 128, 128, 2048);
            let ms = tg * 1000.0 / 128.0;
            println!(
                "decode batch 1 ({label}): {ms:.3} ms/token, {:.1} tok/s, {:.2}x the floor",
                1000.0 / ms,
                ms / floor_ms
            );
        }
        for &n in npl {
            for graphs in [true, false] {
                bench.backend.set_graphs(graphs).unwrap();
                let label = if graphs { "graphs" } else { "eager" };
                let (pp, tg) = bench.run(n, 128, 128, 2048);
                println!(
                    "npl {n:3} ({label}): prefill {:8.1} tok/s, decode total {:8.1} tok/s",
                    (n * 128) as f64 / pp,
                    (n * 128) as f64 / tg
                );
            }
        }
        bench.backend.set_graphs(true).unwrap();
    }
}

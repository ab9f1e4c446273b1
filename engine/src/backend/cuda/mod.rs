//! The CUDA backend: the same steps as the CPU backend on an NVIDIA GPU, through
//! `cudarc` with the CUDA libraries loaded at run time (a build with this backend still
//! starts on a machine without them, and says so).
//!
//! - Weights are uploaded once at load, dequantized to f16; matrix products are cuBLAS
//!   GEMMs with f16 inputs and f32 accumulation and output. The residual adds are fused
//!   into the output projections (the GEMM accumulates into the residual stream).
//! - The other operators are the CUDA C kernels of `kernels.cu`, compiled by NVRTC for
//!   the GPU found with the model's shape as constants: RMSNorm (fused with the cast to
//!   f16), bias + RoPE + the K/V store into the paged cache (one kernel), paged
//!   attention over the block tables (prefill and decode), SiLU-multiply, the embedding
//!   gather, and the token picks: argmax, or temperature, top-k, top-p and min-p with
//!   the uniform the sequence's seeded sampler drew, so a step copies two numbers per
//!   sequence to the host instead of a row of logits.
//! - One stream. Every buffer is allocated at load for the largest step, and every step
//!   replays a CUDA graph captured per token-count bucket, padded to the bucket with
//!   tokens that write to a spare KV block no sequence owns. The network's shape depends
//!   only on the step's token count (the attention kernel reads each token's sequence,
//!   position and block table from the step's inputs), so steps that carry prefill
//!   chunks replay graphs too, as vLLM V1 does with its capture sizes: an eager step of
//!   SmolLM2 costs the host ~300 kernel launches and cuBLAS calls, which starved the
//!   GPU and took more of a core than the whole rest of the worker. Steps larger than
//!   the largest bucket run eagerly.
//! - The step thread sleeps while the GPU works (blocking synchronization), so a
//!   saturated GPU costs the host a fraction of one core.
//! - Memory: weights and activations are allocated first; the KV cache takes what is
//!   left of `gpu_memory_fraction` of the GPU's memory, unless `kv_blocks` is given.

pub mod kernels;
pub mod probe;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use cudarc::cublas::{CudaBlas, sys as cublas_sys};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig,
    PinnedHostSlice, PushKernelArg, sys as cuda_sys,
};
use half::f16;

use crate::EngineError;
use crate::backend::{Backend, Batch, Pick};
use crate::model::ModelConfig;
use crate::model::source::WeightSource;

/// Step sizes (tokens) that get a CUDA graph; a step is padded up to the next one. Fine
/// steps where decode batches live, then at most 1/8 of padding up to 2048 tokens.
pub const GRAPH_BUCKETS: &[usize] = &[
    1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 288, 320, 384, 448, 512,
    576, 640, 768, 896, 1024, 1152, 1280, 1536, 1792, 2048,
];

/// cuBLAS workspace, set explicitly so that GEMMs allocate nothing while a graph is
/// captured (NVIDIA's recommended size on Hopper).
const CUBLAS_WORKSPACE: usize = 32 << 20;

/// How a CUDA backend is built.
#[derive(Debug, Clone)]
pub struct CudaOptions {
    /// GPU ordinal.
    pub device: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV blocks; 0: as many as `memory_fraction` leaves room for.
    pub kv_blocks: usize,
    /// Fraction of the GPU's memory this backend may hold in all.
    pub memory_fraction: f32,
    /// Most tokens in one step.
    pub max_tokens: usize,
    /// Most sequences in one step.
    pub max_seqs: usize,
    /// Replay steps as CUDA graphs (one per token-count bucket).
    pub graphs: bool,
}

fn driver_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> EngineError + '_ {
    move |e| EngineError::Device(format!("{what}: {e}"))
}

fn blas_err(what: &str) -> impl Fn(cudarc::cublas::result::CublasError) -> EngineError + '_ {
    move |e| EngineError::Device(format!("{what}: {e}"))
}

/// `len` values of page-locked host memory, cached (not write-combined: the host reads
/// it).
fn pinned<T: DeviceRepr>(
    ctx: &Arc<CudaContext>,
    len: usize,
) -> Result<PinnedHostSlice<T>, EngineError> {
    // SAFETY: the values are written by a copy from the device before they are read.
    #[allow(unsafe_code)]
    unsafe { ctx.alloc_pinned_with_flags(len.max(1), 0) }.map_err(driver_err("page-locked memory"))
}

/// A device buffer with its address: kernels and cuBLAS take raw addresses, which stay
/// valid while the buffer lives (event tracking is off, so taking one records nothing).
struct Buf<T> {
    slice: CudaSlice<T>,
    ptr: u64,
}

impl<T: DeviceRepr> Buf<T> {
    fn new(stream: &Arc<CudaStream>, slice: CudaSlice<T>) -> Self {
        let ptr = {
            let (ptr, _sync) = slice.device_ptr(stream);
            ptr
        };
        Self { slice, ptr }
    }

    /// `len` uninitialized values (every kernel writes before it reads).
    fn alloc(stream: &Arc<CudaStream>, len: usize, what: &str) -> Result<Self, EngineError> {
        // SAFETY: the buffer is written by a kernel or a copy before anything reads it.
        #[allow(unsafe_code)]
        let slice = unsafe { stream.alloc::<T>(len.max(1)) }.map_err(driver_err(what))?;
        Ok(Self::new(stream, slice))
    }

    fn upload(stream: &Arc<CudaStream>, host: &[T], what: &str) -> Result<Self, EngineError> {
        let slice = stream.clone_htod(host).map_err(driver_err(what))?;
        Ok(Self::new(stream, slice))
    }

    fn bytes(&self) -> usize {
        self.slice.num_bytes()
    }
}

/// A weight matrix, `rows x cols` f16 values, row-major (one row per output).
struct Mat {
    buf: Buf<f16>,
    rows: usize,
    cols: usize,
}

struct Layer {
    attn_norm: Buf<f32>,
    /// Q|K|V rows, `(q_dim + 2 kv_dim) x d_model`.
    wqkv: Mat,
    qkv_bias: Option<Buf<f32>>,
    /// `d_model x q_dim`.
    wo: Mat,
    ffn_norm: Buf<f32>,
    /// gate|up rows, `2 d_ff x d_model`.
    w_gate_up: Mat,
    /// `d_model x d_ff`.
    w_down: Mat,
    /// `[block][kv_head][slot][head_dim]`, half.
    k_cache: Buf<f16>,
    v_cache: Buf<f16>,
}

struct Kernels {
    embed: CudaFunction,
    rms_norm: CudaFunction,
    rope_store: CudaFunction,
    attention: CudaFunction,
    attention_combine: CudaFunction,
    silu_mul: CudaFunction,
    argmax: CudaFunction,
    sample: CudaFunction,
    fill_half: CudaFunction,
    fill_float: CudaFunction,
}

/// Step inputs, one i32 buffer so a step uploads them in one copy. Offsets in values:
/// tokens, positions, KV slots and sequence index per token (`max_tokens` each), the
/// rows that want logits (`max_seqs`), the block-table stride, then the block tables
/// (`max_seqs` rows of `stride` blocks, and one for the padding tokens of a graph).
struct Inputs {
    buf: Buf<i32>,
    host: Vec<i32>,
    max_tokens: usize,
    max_seqs: usize,
    /// Blocks per block-table row at most.
    max_blocks: usize,
}

impl Inputs {
    fn tokens(&self) -> usize {
        0
    }
    fn pos(&self) -> usize {
        self.max_tokens
    }
    fn slot(&self) -> usize {
        2 * self.max_tokens
    }
    fn seq_of(&self) -> usize {
        3 * self.max_tokens
    }
    fn rows(&self) -> usize {
        4 * self.max_tokens
    }
    fn stride(&self) -> usize {
        4 * self.max_tokens + self.max_seqs
    }
    fn tables(&self) -> usize {
        self.stride() + 1
    }
    fn addr(&self, offset: usize) -> u64 {
        self.buf.ptr + 4 * offset as u64
    }
}

/// Activations, sized for the largest step.
struct Acts {
    x: Buf<f32>,
    xn: Buf<f16>,
    qkv: Buf<f32>,
    attn: Buf<f16>,
    gate_up: Buf<f32>,
    act: Buf<f16>,
    logits: Buf<f32>,
    picks: Buf<i32>,
    pick_logprobs: Buf<f32>,
    /// Per logits row: 1/temperature, top_k, top_p, min_p; and the row's uniform.
    pick_params: Buf<f32>,
    uniforms: Buf<f64>,
    /// Partial sums of split attention (see `attention_splits`).
    partial: Buf<f32>,
}

/// A captured step graph. `CudaGraph` holds raw handles and so is not `Send`; the
/// backend moves between threads only whole (the engine builds it on one thread and
/// steps it on another, never both), and it binds its context before every use.
struct Graph(cudarc::driver::CudaGraph);

// SAFETY: see `Graph`: never shared, only moved with the backend that owns it, and
// used only with the backend's context bound to the calling thread.
#[allow(unsafe_code)]
unsafe impl Send for Graph {}

/// What a step ends with: logits rows for the host, the most likely token of each row,
/// or a sampled token of each row (settings uploaded with the step).
#[derive(Clone, Copy, PartialEq)]
enum Output {
    Logits,
    Greedy,
    Sample,
}

/// The CUDA backend.
pub struct CudaBackend {
    /// First, so the graphs go before the buffers they use.
    graphs: BTreeMap<usize, Graph>,
    config: ModelConfig,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    _workspace: Buf<u8>,
    k: Kernels,
    embed: Mat,
    /// `None`: tied to the embedding.
    output: Option<Mat>,
    output_norm: Buf<f32>,
    layers: Vec<Layer>,
    inv_freq: Buf<f64>,
    block_size: usize,
    /// Blocks the block manager may hand out; block `num_blocks` is the padding rows'.
    num_blocks: usize,
    inputs: Inputs,
    acts: Acts,
    graphs_enabled: bool,
    /// Steps that replayed a graph, and all steps, since load.
    replayed: u64,
    steps: u64,
    device_name: String,
    /// Multiprocessors of the GPU, for sizing split attention.
    sms: usize,
    arch: String,
    weight_bytes: usize,
    memory_total: usize,
    memory_used: usize,
    /// Page-locked, so the picks' copies are asynchronous and the step's one wait is the
    /// blocking synchronization (a copy into pageable memory waits inside the driver).
    host_picks: PinnedHostSlice<i32>,
    host_logprobs: PinnedHostSlice<f32>,
    host_params: Vec<f32>,
    host_uniforms: Vec<f64>,
}

/// Where the weights come from.
pub enum Weights<'a> {
    /// A checkpoint's tensors, dequantized to f16.
    File(&'a dyn WeightSource),
    /// Generated on the GPU from this seed (`--synthetic`): meaningless tokens, real speed.
    Synthetic(u64),
}

impl CudaBackend {
    /// Checks for the CUDA libraries and a GPU, compiles the kernels for it, uploads the
    /// weights, allocates the activations and the KV cache, and captures the step
    /// graphs.
    pub fn load(
        weights: Weights<'_>,
        config: ModelConfig,
        opts: &CudaOptions,
        progress: &mut dyn FnMut(f32),
    ) -> Result<Self, EngineError> {
        let info = probe::probe(opts.device).map_err(EngineError::Device)?;
        kernels::check_shape(&config, opts.block_size).map_err(EngineError::Model)?;
        if opts.max_tokens == 0 || opts.max_seqs == 0 {
            return Err(EngineError::Config(
                "max_batch_tokens and max_running must be at least 1".into(),
            ));
        }
        if !(opts.memory_fraction > 0.0 && opts.memory_fraction <= 1.0) {
            return Err(EngineError::Config(format!(
                "gpu_memory_fraction must be in (0, 1], got {}",
                opts.memory_fraction
            )));
        }
        let ctx = CudaContext::new(opts.device).map_err(driver_err("cannot open the GPU"))?;
        // SAFETY: called before any buffer or stream exists; this backend orders its
        // work on one stream and synchronizes explicitly.
        #[allow(unsafe_code)]
        unsafe {
            ctx.disable_event_tracking()
        };
        // Waits for the GPU sleep instead of spinning: the step thread would otherwise
        // burn a core for the whole of every step (a few microseconds of wake-up per step
        // is the price).
        ctx.set_blocking_synchronize()
            .map_err(driver_err("cannot set blocking synchronization"))?;
        let stream = ctx
            .new_stream()
            .map_err(driver_err("cannot create a stream"))?;
        let arch = format!("compute_{}{}", info.capability.0, info.capability.1);
        let ptx = kernels::compile(&config, opts.block_size, &arch).map_err(EngineError::Device)?;
        let module = ctx
            .load_module(ptx)
            .map_err(driver_err("cannot load the compiled kernels"))?;
        let f = |name: &str| {
            module
                .load_function(name)
                .map_err(|e| EngineError::Device(format!("kernel {name}: {e}")))
        };
        let k = Kernels {
            embed: f("embed")?,
            rms_norm: f("rms_norm")?,
            rope_store: f("rope_store")?,
            attention: f("attention")?,
            attention_combine: f("attention_combine")?,
            silu_mul: f("silu_mul")?,
            argmax: f("argmax_logprob")?,
            sample: f("sample")?,
            fill_half: f("fill_uniform_half")?,
            fill_float: f("fill_float")?,
        };
        let blas = CudaBlas::new(stream.clone()).map_err(blas_err("cannot start cuBLAS"))?;
        let workspace = Buf::<u8>::alloc(&stream, CUBLAS_WORKSPACE, "cuBLAS workspace")?;
        // SAFETY: the handle is live, and the workspace outlives it: both become fields
        // of the backend, `blas` declared (so dropped) before `_workspace`.
        #[allow(unsafe_code)]
        unsafe {
            cublas_sys::cublasSetWorkspace_v2(
                *blas.handle(),
                workspace.ptr as *mut std::ffi::c_void,
                CUBLAS_WORKSPACE,
            )
            .result()
            .map_err(blas_err("cannot set the cuBLAS workspace"))?;
        }

        let c = &config;
        let (d, q_dim, kv_dim, d_ff) = (c.d_model, c.q_dim(), c.kv_dim(), c.d_ff);
        let qkv_w = q_dim + 2 * kv_dim;
        let mut loader = Loader {
            stream: &stream,
            k: &k,
            weights,
            seed_counter: 0,
            bytes: 0,
        };
        let embed = loader.matrix(&[("token_embd.weight", c.vocab_size)], d)?;
        let output = if loader.has("output.weight") {
            Some(loader.matrix(&[("output.weight", c.vocab_size)], d)?)
        } else {
            None
        };
        let output_norm = loader.vector("output_norm.weight", d)?;
        let inv_freq: Vec<f64> = (0..c.head_dim / 2)
            .map(|i| f64::from(c.rope_theta).powf(-2.0 * i as f64 / c.head_dim as f64))
            .collect();
        let inv_freq = Buf::upload(&stream, &inv_freq, "RoPE frequencies")?;

        // Activations and inputs before the KV cache, so the cache gets what is left.
        let max_tokens = opts.max_tokens.max(opts.max_seqs);
        let max_seqs = opts.max_seqs;
        let max_blocks = c.context_length.max(1).div_ceil(opts.block_size) + 1;
        let sms = info.multiprocessors.max(1) as usize;
        let partial_rows = (1..=max_tokens)
            .map(|n| n * attention_splits(sms, n, c.n_kv_heads))
            .filter(|&r| r > 0)
            .max()
            .unwrap_or(1);
        let group = c.n_heads / c.n_kv_heads;
        let acts = Acts {
            x: Buf::alloc(&stream, max_tokens * d, "activations")?,
            xn: Buf::alloc(&stream, max_tokens * d.max(q_dim), "activations")?,
            qkv: Buf::alloc(&stream, max_tokens * qkv_w, "activations")?,
            attn: Buf::alloc(&stream, max_tokens * q_dim, "activations")?,
            gate_up: Buf::alloc(&stream, max_tokens * 2 * d_ff, "activations")?,
            act: Buf::alloc(&stream, max_tokens * d_ff, "activations")?,
            logits: Buf::alloc(&stream, max_seqs * c.vocab_size, "logits")?,
            picks: Buf::alloc(&stream, max_seqs, "picks")?,
            pick_logprobs: Buf::alloc(&stream, max_seqs, "picks")?,
            pick_params: Buf::alloc(&stream, 4 * max_seqs, "sampling settings")?,
            uniforms: Buf::alloc(&stream, max_seqs, "sampling settings")?,
            partial: Buf::alloc(
                &stream,
                partial_rows * c.n_kv_heads * group * (c.head_dim + 2),
                "attention partial sums",
            )?,
        };
        let inputs_len = 4 * max_tokens + max_seqs + 1 + (max_seqs + 1) * max_blocks;
        let inputs = Inputs {
            buf: Buf::alloc(&stream, inputs_len, "step inputs")?,
            host: vec![0; inputs_len],
            max_tokens,
            max_seqs,
            max_blocks,
        };

        let mut layers_w = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let name = |s: &str| format!("blk.{i}.{s}");
            let wqkv = loader.matrix(
                &[
                    (&name("attn_q.weight"), q_dim),
                    (&name("attn_k.weight"), kv_dim),
                    (&name("attn_v.weight"), kv_dim),
                ],
                d,
            )?;
            let qkv_bias = if c.qkv_bias {
                let mut b = loader.host_vector(&name("attn_q.bias"), q_dim)?;
                b.extend(loader.host_vector(&name("attn_k.bias"), kv_dim)?);
                b.extend(loader.host_vector(&name("attn_v.bias"), kv_dim)?);
                Some(Buf::upload(&stream, &b, "biases")?)
            } else {
                None
            };
            layers_w.push((
                loader.vector(&name("attn_norm.weight"), d)?,
                wqkv,
                qkv_bias,
                loader.matrix(&[(&name("attn_output.weight"), d)], q_dim)?,
                loader.vector(&name("ffn_norm.weight"), d)?,
                loader.matrix(
                    &[
                        (&name("ffn_gate.weight"), d_ff),
                        (&name("ffn_up.weight"), d_ff),
                    ],
                    d,
                )?,
                loader.matrix(&[(&name("ffn_down.weight"), d)], d_ff)?,
            ));
            progress((i + 1) as f32 / c.n_layers as f32);
        }
        let weight_bytes = loader.bytes;

        // The KV cache: what the memory fraction leaves, after a margin for the graphs.
        stream
            .synchronize()
            .map_err(driver_err("loading the weights"))?;
        let (free, total) = ctx.mem_get_info().map_err(driver_err("GPU memory"))?;
        let per_block = 2 * c.n_layers * c.n_kv_heads * opts.block_size * c.head_dim * 2;
        let num_blocks = if opts.kv_blocks > 0 {
            opts.kv_blocks
        } else {
            let budget = (total as f64 * f64::from(opts.memory_fraction)) as usize;
            let in_use = total - free;
            let margin = 256 << 20;
            let room = budget.saturating_sub(in_use + margin);
            (room / per_block).saturating_sub(1)
        };
        if num_blocks == 0 {
            return Err(EngineError::Device(format!(
                "no GPU memory left for the KV cache: {:.1} GiB of {:.1} GiB in use after the weights, gpu_memory_fraction {}",
                (total - free) as f64 / f64::from(1u32 << 30),
                total as f64 / f64::from(1u32 << 30),
                opts.memory_fraction
            )));
        }
        let cache_len = (num_blocks + 1) * c.n_kv_heads * opts.block_size * c.head_dim;
        let mut layers = Vec::with_capacity(c.n_layers);
        for (attn_norm, wqkv, qkv_bias, wo, ffn_norm, w_gate_up, w_down) in layers_w {
            layers.push(Layer {
                attn_norm,
                wqkv,
                qkv_bias,
                wo,
                ffn_norm,
                w_gate_up,
                w_down,
                k_cache: Buf::new(
                    &stream,
                    stream
                        .alloc_zeros::<f16>(cache_len)
                        .map_err(driver_err("KV cache"))?,
                ),
                v_cache: Buf::new(
                    &stream,
                    stream
                        .alloc_zeros::<f16>(cache_len)
                        .map_err(driver_err("KV cache"))?,
                ),
            });
        }
        let host_picks = pinned(&ctx, max_seqs)?;
        let host_logprobs = pinned(&ctx, max_seqs)?;
        let mut backend = Self {
            graphs: BTreeMap::new(),
            config,
            ctx,
            stream,
            blas,
            _workspace: workspace,
            k,
            embed,
            output,
            output_norm,
            layers,
            inv_freq,
            block_size: opts.block_size,
            num_blocks,
            inputs,
            acts,
            graphs_enabled: opts.graphs,
            replayed: 0,
            steps: 0,
            device_name: info.name,
            sms: info.multiprocessors.max(1) as usize,
            arch,
            weight_bytes,
            memory_total: total,
            memory_used: 0,
            host_picks,
            host_logprobs,
            host_params: Vec::with_capacity(4 * max_seqs),
            host_uniforms: Vec::with_capacity(max_seqs),
        };
        if backend.graphs_enabled {
            backend.capture_graphs()?;
        }
        backend
            .stream
            .synchronize()
            .map_err(driver_err("loading"))?;
        let (free, total) = backend
            .ctx
            .mem_get_info()
            .map_err(driver_err("GPU memory"))?;
        backend.memory_used = total - free;
        Ok(backend)
    }

    /// Bytes of weights one step reads: every matrix and norm, but of the embedding
    /// table only its rows (nothing, to this precision) unless it is also the output head.
    pub fn step_weight_bytes(&self) -> usize {
        if self.output.is_some() {
            self.weight_bytes - self.embed.buf.bytes()
        } else {
            self.weight_bytes
        }
    }

    /// Step graphs captured (token-count buckets).
    pub fn graph_buckets(&self) -> Vec<usize> {
        self.graphs.keys().copied().collect()
    }

    /// Steps run since load, and how many of them replayed a graph.
    pub fn steps_replayed(&self) -> (u64, u64) {
        (self.steps, self.replayed)
    }

    /// Device-to-device copy bandwidth, bytes read plus written per second, over a
    /// buffer of `bytes` (the floor of a memory-bound step is its bytes over this).
    pub fn measure_bandwidth(&mut self, bytes: usize) -> Result<f64, EngineError> {
        let err = driver_err("bandwidth measurement");
        let n = bytes / 2;
        let src = self.stream.alloc_zeros::<u8>(n).map_err(&err)?;
        let mut dst = self.stream.alloc_zeros::<u8>(n).map_err(&err)?;
        self.stream.memcpy_dtod(&src, &mut dst).map_err(&err)?;
        self.stream.synchronize().map_err(&err)?;
        let reps = 20;
        let started = Instant::now();
        for _ in 0..reps {
            self.stream.memcpy_dtod(&src, &mut dst).map_err(&err)?;
        }
        self.stream.synchronize().map_err(&err)?;
        Ok((2 * n * reps) as f64 / started.elapsed().as_secs_f64())
    }

    /// Turns graph replay on or off (for measuring what graphs buy); turning it on
    /// captures any bucket not yet captured.
    pub fn set_graphs(&mut self, on: bool) -> Result<(), EngineError> {
        self.graphs_enabled = on;
        if on && self.graphs.is_empty() {
            self.capture_graphs()?;
        }
        Ok(())
    }

    fn capture_graphs(&mut self) -> Result<(), EngineError> {
        self.ctx
            .bind_to_thread()
            .map_err(driver_err("binding the GPU"))?;
        let buckets: Vec<usize> = GRAPH_BUCKETS
            .iter()
            .copied()
            .filter(|&b| b <= self.inputs.max_tokens)
            .collect();
        let max_seqs = self.inputs.max_seqs;
        // Valid inputs for the capture's warm-up run: padding tokens everywhere, all in
        // sequence 0, whose table is the spare block.
        let pad = self.num_blocks as i32;
        let inp = &mut self.inputs;
        let (stride, tables) = (inp.stride(), inp.tables());
        let (o_tok, o_pos, o_slot, o_seq, o_rows) = (
            inp.tokens(),
            inp.pos(),
            inp.slot(),
            inp.seq_of(),
            inp.rows(),
        );
        let max_b = buckets.last().copied().unwrap_or(0);
        for i in 0..max_b {
            inp.host[o_tok + i] = 0;
            inp.host[o_pos + i] = 0;
            inp.host[o_slot + i] = pad * self.block_size as i32;
            inp.host[o_seq + i] = 0;
        }
        for r in 0..max_b.min(max_seqs) {
            inp.host[o_rows + r] = r as i32;
        }
        inp.host[tables] = pad;
        inp.host[stride] = 1;
        self.upload_inputs(tables + 1)?;
        for &b in &buckets {
            // Logits for as many rows as a step can want: every token of a decode step,
            // at most one per sequence.
            let rows = b.min(max_seqs);
            // One eager run first, so cuBLAS picks and loads its kernels outside the
            // capture.
            self.enqueue(b, rows)?;
            self.stream
                .synchronize()
                .map_err(driver_err("graph warm-up"))?;
            self.stream
                .begin_capture(cuda_sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(driver_err("graph capture"))?;
            let run = self.enqueue(b, rows);
            let graph = self
                .stream
                .end_capture(cuda_sys::CUgraphInstantiate_flags(0))
                .map_err(driver_err("graph capture"))?;
            run?;
            let graph = graph.ok_or_else(|| {
                EngineError::Device(format!(
                    "capturing the step graph of {b} tokens gave nothing"
                ))
            })?;
            self.graphs.insert(b, Graph(graph));
        }
        Ok(())
    }

    fn upload_inputs(&mut self, len: usize) -> Result<(), EngineError> {
        let mut dst = self.inputs.buf.slice.slice_mut(..len);
        self.stream
            .memcpy_htod(&self.inputs.host[..len], &mut dst)
            .map_err(driver_err("uploading the step's inputs"))
    }

    fn launch(
        &self,
        f: &CudaFunction,
        grid: (u32, u32),
        block: u32,
        args: &[&dyn ArgPush],
    ) -> Result<(), EngineError> {
        self.launch3(f, (grid.0, grid.1, 1), block, args)
    }

    fn launch3(
        &self,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        block: u32,
        args: &[&dyn ArgPush],
    ) -> Result<(), EngineError> {
        launch(&self.stream, f, grid, block, args).map_err(driver_err("kernel launch"))
    }

    /// `y[n x m] = x[n x k] . w[m x k]^T + beta y`, f16 inputs, f32 accumulation and output.
    fn gemm(&self, w: &Mat, x: u64, n: usize, y: u64, beta: f32) -> Result<(), EngineError> {
        let (m, k) = (w.rows, w.cols);
        let alpha = 1.0f32;
        // SAFETY: w holds m x k halves, x n x k halves and y n x m floats (sizes fixed at
        // load for the largest step); alpha and beta are host f32 as COMPUTE_32F wants.
        #[allow(unsafe_code)]
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                cublas_sys::cublasOperation_t::CUBLAS_OP_T,
                cublas_sys::cublasOperation_t::CUBLAS_OP_N,
                m as i32,
                n as i32,
                k as i32,
                (&raw const alpha).cast(),
                w.buf.ptr as *const std::ffi::c_void,
                cublas_sys::cudaDataType_t::CUDA_R_16F,
                k as i32,
                x as *const std::ffi::c_void,
                cublas_sys::cudaDataType_t::CUDA_R_16F,
                k as i32,
                (&raw const beta).cast(),
                y as *mut std::ffi::c_void,
                cublas_sys::cudaDataType_t::CUDA_R_32F,
                m as i32,
                cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(blas_err("matrix product"))
    }

    /// Enqueues the network for `n` tokens whose inputs are uploaded, and the logits of
    /// `n_rows` rows (listed in the inputs' rows).
    fn enqueue(&self, n: usize, n_rows: usize) -> Result<(), EngineError> {
        let c = &self.config;
        let (d, q_dim, kv_dim, d_ff) = (c.d_model, c.q_dim(), c.kv_dim(), c.d_ff);
        let qkv_w = (q_dim + 2 * kv_dim) as i32;
        let (a, inp) = (&self.acts, &self.inputs);
        let n32 = n as u32;
        let d_i = d as i32;
        let eps = c.rms_eps;
        let null = 0u64;
        let scale = 1.0f32 / (c.head_dim as f32).sqrt();
        let (tokens, pos, slot, seq_of, rows, stride, tables) = (
            inp.addr(inp.tokens()),
            inp.addr(inp.pos()),
            inp.addr(inp.slot()),
            inp.addr(inp.seq_of()),
            inp.addr(inp.rows()),
            inp.addr(inp.stride()),
            inp.addr(inp.tables()),
        );
        let splits = attention_splits(self.sms, n, c.n_kv_heads);
        let splits_i = splits as i32;
        self.launch(
            &self.k.embed,
            (n32, 1),
            256,
            &[&self.embed.buf.ptr, &tokens, &a.x.ptr, &d_i],
        )?;
        for l in &self.layers {
            self.launch(
                &self.k.rms_norm,
                (n32, 1),
                256,
                &[&a.x.ptr, &l.attn_norm.ptr, &a.xn.ptr, &null, &eps, &d_i],
            )?;
            self.gemm(&l.wqkv, a.xn.ptr, n, a.qkv.ptr, 0.0)?;
            let bias = l.qkv_bias.as_ref().map_or(0, |b| b.ptr);
            self.launch(
                &self.k.rope_store,
                (n32, 1),
                128,
                &[
                    &a.qkv.ptr,
                    &qkv_w,
                    &bias,
                    &pos,
                    &slot,
                    &self.inv_freq.ptr,
                    &l.k_cache.ptr,
                    &l.v_cache.ptr,
                ],
            )?;
            self.launch3(
                &self.k.attention,
                (n32, c.n_kv_heads as u32, splits as u32),
                256,
                &[
                    &a.qkv.ptr,
                    &qkv_w,
                    &l.k_cache.ptr,
                    &l.v_cache.ptr,
                    &tables,
                    &stride,
                    &seq_of,
                    &pos,
                    &a.attn.ptr,
                    &a.partial.ptr,
                    &scale,
                ],
            )?;
            if splits > 1 {
                self.launch(
                    &self.k.attention_combine,
                    (n32, c.n_kv_heads as u32),
                    128,
                    &[&a.partial.ptr, &splits_i, &a.attn.ptr],
                )?;
            }
            self.gemm(&l.wo, a.attn.ptr, n, a.x.ptr, 1.0)?;
            self.launch(
                &self.k.rms_norm,
                (n32, 1),
                256,
                &[&a.x.ptr, &l.ffn_norm.ptr, &a.xn.ptr, &null, &eps, &d_i],
            )?;
            self.gemm(&l.w_gate_up, a.xn.ptr, n, a.gate_up.ptr, 0.0)?;
            let d_ff_i = d_ff as i32;
            self.launch(
                &self.k.silu_mul,
                (n32, 1),
                256,
                &[&a.gate_up.ptr, &a.act.ptr, &d_ff_i],
            )?;
            self.gemm(&l.w_down, a.act.ptr, n, a.x.ptr, 1.0)?;
        }
        if n_rows > 0 {
            self.launch(
                &self.k.rms_norm,
                (n_rows as u32, 1),
                256,
                &[
                    &a.x.ptr,
                    &self.output_norm.ptr,
                    &a.xn.ptr,
                    &rows,
                    &eps,
                    &d_i,
                ],
            )?;
            let head = self.output.as_ref().unwrap_or(&self.embed);
            self.gemm(head, a.xn.ptr, n_rows, a.logits.ptr, 0.0)?;
        }
        Ok(())
    }

    /// Checks a step against the buffers and packs its inputs; returns (tokens, logits
    /// rows, token bucket if the step replays a graph).
    fn pack(&mut self, batch: &Batch<'_>) -> Result<(usize, usize, Option<usize>), EngineError> {
        let c = &self.config;
        let n = batch.tokens.len();
        let bs = self.block_size;
        let inp = &mut self.inputs;
        if n > inp.max_tokens || batch.seqs.len() > inp.max_seqs {
            return Err(EngineError::Config(format!(
                "a step of {n} tokens in {} sequences exceeds the CUDA backend's {} tokens and {} sequences",
                batch.seqs.len(),
                inp.max_tokens,
                inp.max_seqs
            )));
        }
        let bucket = if self.graphs_enabled && n > 0 {
            self.graphs.range(n..).next().map(|(&b, _)| b)
        } else {
            None
        };
        let padded = bucket.unwrap_or(n);
        // Padding tokens form one extra sequence, after the real ones.
        let pad_row = batch.seqs.len();
        let stride = batch
            .seqs
            .iter()
            .map(|s| (s.start + s.len).div_ceil(bs))
            .max()
            .unwrap_or(0)
            .max(1);
        let rows_with_tables = batch.seqs.len() + usize::from(padded > n);
        if stride > inp.max_blocks {
            return Err(EngineError::Config(format!(
                "a sequence of {stride} blocks exceeds the CUDA backend's {} (the model's context)",
                inp.max_blocks
            )));
        }
        let (o_tok, o_pos, o_slot, o_seq, o_rows, o_tables) = (
            inp.tokens(),
            inp.pos(),
            inp.slot(),
            inp.seq_of(),
            inp.rows(),
            inp.tables(),
        );
        let stride_at = inp.stride();
        let h = &mut inp.host;
        let mut t = 0;
        let mut n_rows = 0;
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
            let used = (seq.start + seq.len).div_ceil(bs);
            for (j, &b) in seq.block_table[..used].iter().enumerate() {
                if b as usize >= self.num_blocks {
                    return Err(EngineError::Config(format!("block {b} out of range")));
                }
                h[o_tables + i * stride + j] = b as i32;
            }
            for p in seq.start..seq.start + seq.len {
                let tok = batch.tokens.get(t).copied().unwrap_or(u32::MAX);
                if tok as usize >= c.vocab_size {
                    return Err(EngineError::Config(format!(
                        "token id {tok} outside the vocabulary of {}",
                        c.vocab_size
                    )));
                }
                h[o_tok + t] = tok as i32;
                h[o_pos + t] = p as i32;
                h[o_slot + t] = (seq.block_table[p / bs] as usize * bs + p % bs) as i32;
                h[o_seq + t] = i as i32;
                t += 1;
            }
            if seq.logits {
                h[o_rows + n_rows] = t as i32 - 1;
                n_rows += 1;
            }
        }
        if t != n {
            return Err(EngineError::Config(format!(
                "batch has {n} tokens but its chunks cover {t}"
            )));
        }
        // Padding tokens of a graph bucket: token 0 at position 0 of the spare block.
        let pad = self.num_blocks as i32;
        for i in n..padded {
            h[o_tok + i] = 0;
            h[o_pos + i] = 0;
            h[o_slot + i] = pad * bs as i32;
            h[o_seq + i] = pad_row as i32;
        }
        if padded > n {
            h[o_tables + pad_row * stride] = pad;
        }
        // The graph computes logits for its bucket's rows: the spare ones read token 0.
        let graph_rows = bucket.map_or(n_rows, |b| b.min(inp.max_seqs));
        for r in n_rows..graph_rows {
            h[o_rows + r] = 0;
        }
        h[stride_at] = stride as i32;
        let len = o_tables + rows_with_tables * stride;
        self.upload_inputs(len)?;
        Ok((n, n_rows, bucket))
    }

    fn forward(&mut self, batch: &Batch<'_>, output: Output) -> Result<usize, EngineError> {
        self.ctx
            .bind_to_thread()
            .map_err(driver_err("binding the GPU"))?;
        let (n, n_rows, bucket) = self.pack(batch)?;
        if n == 0 {
            return Ok(0);
        }
        self.steps += 1;
        match bucket.and_then(|b| self.graphs.get(&b)) {
            Some(graph) => {
                graph.0.launch().map_err(driver_err("graph launch"))?;
                self.replayed += 1;
            }
            None => self.enqueue(n, n_rows)?,
        }
        let vocab = self.config.vocab_size as i32;
        let a = &self.acts;
        if output == Output::Greedy && n_rows > 0 {
            self.launch(
                &self.k.argmax,
                (n_rows as u32, 1),
                1024,
                &[&a.logits.ptr, &vocab, &a.picks.ptr, &a.pick_logprobs.ptr],
            )?;
        }
        if output == Output::Sample && n_rows > 0 {
            self.launch(
                &self.k.sample,
                (n_rows as u32, 1),
                1024,
                &[
                    &a.logits.ptr,
                    &vocab,
                    &a.pick_params.ptr,
                    &a.uniforms.ptr,
                    &a.picks.ptr,
                    &a.pick_logprobs.ptr,
                ],
            )?;
        }
        Ok(n_rows)
    }
}

/// Key slices per (token, KV head) for a step of `n` tokens: enough thread blocks for
/// about two per multiprocessor (a batch-1 decode of a model with 8 KV heads would
/// otherwise run 8 blocks on a 132-multiprocessor GPU), at most 16; one when the step
/// already fills the GPU.
pub fn attention_splits(sms: usize, n: usize, n_kv: usize) -> usize {
    (2 * sms).div_ceil((n * n_kv).max(1)).clamp(1, 16)
}

/// A kernel argument: a device address or a scalar, pushed by reference.
trait ArgPush {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>);
}

impl<T: DeviceRepr> ArgPush for T {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
        b.arg(self);
    }
}

/// Reads weights into f16 device matrices, from a file or generated.
struct Loader<'a> {
    stream: &'a Arc<CudaStream>,
    k: &'a Kernels,
    weights: Weights<'a>,
    seed_counter: u64,
    bytes: usize,
}

impl Loader<'_> {
    fn has(&self, name: &str) -> bool {
        match &self.weights {
            Weights::File(f) => f.has(name),
            // Llama 3.1 8B keeps its own output head.
            Weights::Synthetic(_) => true,
        }
    }

    /// The named tensors, each `rows x cols`, stacked into one f16 matrix.
    fn matrix(&mut self, parts: &[(&str, usize)], cols: usize) -> Result<Mat, EngineError> {
        let rows: usize = parts.iter().map(|&(_, r)| r).sum();
        let buf = match &self.weights {
            Weights::File(f) => {
                let mut host: Vec<f16> = Vec::with_capacity(rows * cols);
                for &(name, want_rows) in parts {
                    let t = f.tensor(name)?;
                    if t.row_len() != cols || t.n_rows() != want_rows {
                        return Err(EngineError::Model(format!(
                            "tensor {name} is {}x{}, expected {want_rows}x{cols}",
                            t.n_rows(),
                            t.row_len()
                        )));
                    }
                    host.extend(t.to_f32()?.into_iter().map(f16::from_f32));
                }
                Buf::upload(self.stream, &host, "weights")?
            }
            Weights::Synthetic(seed) => {
                let buf = Buf::<f16>::alloc(self.stream, rows * cols, "weights")?;
                let n = (rows * cols) as u64;
                let seed = seed.wrapping_mul(1_000_003).wrapping_add(self.seed_counter);
                self.seed_counter += 1;
                let scale = (3.0 / cols as f32).sqrt();
                fill(self.stream, &self.k.fill_half, buf.ptr, n, &[&seed, &scale])?;
                buf
            }
        };
        self.bytes += buf.bytes();
        Ok(Mat { buf, rows, cols })
    }

    fn host_vector(&self, name: &str, len: usize) -> Result<Vec<f32>, EngineError> {
        let Weights::File(f) = &self.weights else {
            return Ok(vec![0.0; len]);
        };
        let v = f.tensor(name)?.to_f32()?;
        if v.len() != len {
            return Err(EngineError::Model(format!(
                "tensor {name} has {} values, expected {len}",
                v.len()
            )));
        }
        Ok(v)
    }

    /// A norm's weights (ones in a synthetic model).
    fn vector(&mut self, name: &str, len: usize) -> Result<Buf<f32>, EngineError> {
        let buf = match &self.weights {
            Weights::File(_) => Buf::upload(self.stream, &self.host_vector(name, len)?, "weights")?,
            Weights::Synthetic(_) => {
                let buf = Buf::<f32>::alloc(self.stream, len, "weights")?;
                fill(
                    self.stream,
                    &self.k.fill_float,
                    buf.ptr,
                    len as u64,
                    &[&1.0f32],
                )?;
                buf
            }
        };
        self.bytes += buf.bytes();
        Ok(buf)
    }
}

/// Launches `f` with `args` in order, on `grid` blocks of `block` threads.
fn launch(
    stream: &Arc<CudaStream>,
    f: &CudaFunction,
    grid: (u32, u32, u32),
    block: u32,
    args: &[&dyn ArgPush],
) -> Result<(), cudarc::driver::DriverError> {
    let mut b = stream.launch_builder(f);
    for a in args {
        a.push(&mut b);
    }
    let cfg = LaunchConfig {
        grid_dim: grid,
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: every caller passes the kernel's parameter list of kernels.cu, in order
    // and type, with addresses of live buffers sized for what the kernel touches (the
    // backend's for the largest step, which `pack` checks each step against).
    #[allow(unsafe_code)]
    unsafe { b.launch(cfg) }.map(|_| ())
}

/// Launches a fill kernel over `n` values: (pointer, n, then its parameters).
fn fill(
    stream: &Arc<CudaStream>,
    f: &CudaFunction,
    ptr: u64,
    n: u64,
    params: &[&dyn ArgPush],
) -> Result<(), EngineError> {
    let mut args: Vec<&dyn ArgPush> = vec![&ptr, &n];
    args.extend_from_slice(params);
    launch(stream, f, (1024, 1, 1), 256, &args).map_err(driver_err("generating weights"))
}

impl Backend for CudaBackend {
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
        self.weight_bytes
    }

    fn describe(&self) -> String {
        format!(
            "cuda ({}, {}, f16 weights, graphs {})",
            self.device_name,
            self.arch,
            if self.graphs_enabled { "on" } else { "off" }
        )
    }

    fn device_memory(&self) -> Option<(u64, u64)> {
        Some((self.memory_total as u64, self.memory_used as u64))
    }

    fn step(&mut self, batch: &Batch<'_>, logits: &mut [f32]) -> Result<(), EngineError> {
        let vocab = self.config.vocab_size;
        let need = batch.num_logits() * vocab;
        if logits.len() < need {
            return Err(EngineError::Config(format!(
                "logits buffer holds {} values, the step needs {need}",
                logits.len()
            )));
        }
        let n_rows = self.forward(batch, Output::Logits)?;
        if n_rows > 0 {
            let src = self.acts.logits.slice.slice(..n_rows * vocab);
            self.stream
                .memcpy_dtoh(&src, &mut logits[..n_rows * vocab])
                .map_err(driver_err("copying the logits"))?;
        }
        self.stream.synchronize().map_err(driver_err("step"))
    }

    fn picks_on_device(&self) -> bool {
        true
    }

    fn step_pick(
        &mut self,
        batch: &Batch<'_>,
        rows: &[Pick],
        picks: &mut [(u32, f32)],
    ) -> Result<(), EngineError> {
        let want = batch.num_logits();
        if rows.len() > self.inputs.max_seqs {
            return Err(EngineError::Config(format!(
                "a step of {} sequences exceeds the CUDA backend's {}",
                rows.len(),
                self.inputs.max_seqs
            )));
        }
        if rows.len() != want || picks.len() < want {
            return Err(EngineError::Config(format!(
                "a step with {want} logits rows got {} sampling settings and room for {} picks",
                rows.len(),
                picks.len()
            )));
        }
        let output = if rows.iter().all(|r| r.inv_temperature <= 0.0) {
            Output::Greedy
        } else {
            self.ctx
                .bind_to_thread()
                .map_err(driver_err("binding the GPU"))?;
            self.host_params.clear();
            self.host_uniforms.clear();
            for r in rows {
                self.host_params
                    .extend([r.inv_temperature, r.top_k as f32, r.top_p, r.min_p]);
                self.host_uniforms.push(r.uniform);
            }
            let err = driver_err("uploading the sampling settings");
            let mut dst = self.acts.pick_params.slice.slice_mut(..4 * rows.len());
            self.stream
                .memcpy_htod(&self.host_params, &mut dst)
                .map_err(&err)?;
            let mut dst = self.acts.uniforms.slice.slice_mut(..rows.len());
            self.stream
                .memcpy_htod(&self.host_uniforms, &mut dst)
                .map_err(&err)?;
            Output::Sample
        };
        let n_rows = self.forward(batch, output)?;
        if n_rows > 0 {
            let err = driver_err("copying the picks");
            // The whole (small) buffers: a pinned slice copies in full.
            self.stream
                .memcpy_dtoh(&self.acts.picks.slice, &mut self.host_picks)
                .map_err(&err)?;
            self.stream
                .memcpy_dtoh(&self.acts.pick_logprobs.slice, &mut self.host_logprobs)
                .map_err(&err)?;
        }
        self.stream.synchronize().map_err(driver_err("step"))?;
        if n_rows > 0 {
            let err = driver_err("reading the picks");
            let tokens = self.host_picks.as_slice().map_err(&err)?;
            let logprobs = self.host_logprobs.as_slice().map_err(&err)?;
            for (p, (&t, &lp)) in picks
                .iter_mut()
                .zip(tokens.iter().zip(logprobs))
                .take(n_rows)
            {
                *p = (t as u32, lp);
            }
        }
        Ok(())
    }
}

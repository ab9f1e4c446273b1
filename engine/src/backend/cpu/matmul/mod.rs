//! Quantized matrix multiply for the CPU backend: `out = W · x` for a batch of
//! tokens, with weights in a block format and activations quantized to 8 bits
//! per 32-element block, as llama.cpp's CPU path does (or, for a reference,
//! kept in f32: [`Activations::F32`] below).
//!
//! Every block format is repacked at load into one layout (see [`layout`]):
//! groups of 16 rows interleaved 4 bytes at a time, so that one 64-byte load
//! holds 4 consecutive weights of 16 rows and one `vpdpbusd` (u8 × i8) against
//! 4 broadcast activation bytes yields 16 partial row sums. Weights are stored
//! as unsigned bytes `u` with `w = d·(u - offset)` (Q8_0: `u = q + 128`, Q4_0:
//! the nibble with offset 8) or `w = d·u + min` (Q4_1), so one output is
//!
//! ```text
//! sum over blocks b:  d_w·d_x·Σ u·q_x  +  m_w·s_x      (m_w = min, or -offset·d_w; s_x = d_x·Σ q_x)
//! ```
//!
//! Kernels, chosen once per matrix from what the CPU has: AVX-512 VNNI, AVX2
//! (FMA, F16C), and a portable scalar one that also builds on other targets.
//! All read the same layout, so a matrix can be moved to another kernel (tests
//! and benches do) without repacking.
//!
//! Invariant: the integer part of every kernel is exact; kernels differ only
//! in the order of float operations.
//!
//! A reference mode, [`Activations::F32`], leaves the activations in f32 and
//! runs [`exact`] instead: the same repacked weights dequantized exactly, f64
//! sums. It is for checking other backends against (8-bit activations move a
//! SmolLM2-135M's logits by ~0.2 RMS), not for serving; the choice is made
//! once per product, so the integer kernels are untouched by it.
//!
//! This module depends only on [`crate::gguf`] and rayon.

mod acts;
mod exact;
mod layout;
mod out;
mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod prefetch;

#[cfg(test)]
mod tests;

use crate::gguf::GgmlType;

pub use acts::{Activations, QuantizedActs};
pub use layout::QMatrix;

/// Elements per quantization block, for weights and activations alike.
pub const BLOCK: usize = 32;

/// Tokens per pass over a chunk of rows: their quantized activations stay in
/// L2 (128 tokens of a 1536-wide input take ~210 KiB).
const TOKEN_BLOCK: usize = 128;

/// Row groups a SIMD kernel sweeps for one tile of tokens before the next
/// tile: the tile's activations stay in L1 while the panel's weights (at most
/// ~130 KiB) come from L2, and each token's outputs are written as one
/// 512-byte run. (Group-outer order, which writes 64 bytes per token per group
/// `4·m` bytes apart, a multiple of 4 KiB for the 49152-row head, measured
/// 1.5x slower there at 64 tokens.)
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const PANEL: usize = 8;

/// Below this many multiply-adds the work is done on the calling thread: a
/// rayon fork costs a few microseconds, as much as such a product.
const PARALLEL_MIN_MACS: usize = 1 << 17;

/// Errors building a [`QMatrix`].
#[derive(Debug, thiserror::Error)]
pub enum MatmulError {
    #[error(
        "{ty} matrix {m}x{k}: rows must be a positive multiple of {BLOCK} elements (and of the {ty} block size)"
    )]
    RowLength { ty: GgmlType, m: usize, k: usize },

    #[error("{ty} matrix {m}x{k} takes {expected} bytes, got {got}")]
    DataLength {
        ty: GgmlType,
        m: usize,
        k: usize,
        expected: usize,
        got: usize,
    },

    #[error("weights of type {ty} are not supported by the CPU matmul")]
    UnsupportedType { ty: GgmlType },

    #[error("the {kernel:?} matmul kernel is not available on this CPU")]
    KernelUnavailable { kernel: Kernel },

    #[error("cannot convert {ty} weights: {source}")]
    Convert {
        ty: GgmlType,
        #[source]
        source: crate::gguf::GgufError,
    },
}

/// The instruction-set paths a matrix can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Portable Rust; the reference the SIMD kernels are tested against.
    Scalar,
    /// AVX2 + FMA + F16C (`vpmaddubsw`), for x86-64 CPUs without AVX-512.
    Avx2,
    /// AVX-512 F/BW/VL + VNNI (`vpdpbusd`), Ice Lake / Zen 4 and later.
    Avx512Vnni,
}

impl Kernel {
    pub const ALL: [Kernel; 3] = [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512Vnni];

    /// The fastest kernel this CPU runs.
    pub fn detect() -> Kernel {
        if Kernel::Avx512Vnni.is_available() {
            Kernel::Avx512Vnni
        } else if Kernel::Avx2.is_available() {
            Kernel::Avx2
        } else {
            Kernel::Scalar
        }
    }

    /// Tokens the kernel multiplies per register tile: each tile reads and unpacks the
    /// weights again, so a step's time jumps where its tokens take one tile more (the
    /// simulator's engine model has terms for it). 0 for the scalar kernel, which takes
    /// one token at a time (no jump beyond the cost per token).
    pub fn token_tile(self) -> usize {
        match self {
            Kernel::Scalar => 0,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2::TILE,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => avx512::TILE,
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 | Kernel::Avx512Vnni => 0,
        }
    }

    /// Whether this CPU has the instructions the kernel needs.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2::available(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => avx512::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 | Kernel::Avx512Vnni => false,
        }
    }

    /// Every kernel this CPU runs, scalar first.
    pub fn available() -> impl Iterator<Item = Kernel> {
        Kernel::ALL.into_iter().filter(|k| k.is_available())
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512Vnni => "avx512-vnni",
        }
    }
}

/// `out[t*m + i] = Σ_j W[i,j] · x[t*k + j]` for the `n` tokens quantized in
/// `x`, with `m = w.rows()` and `k = w.cols()`: on `w`'s kernel, or on the
/// exact one when `x` holds [`Activations::F32`].
///
/// Output rows are split across `pool`'s threads in runs of whole row groups;
/// call it from inside `pool.install` (once per engine step) so that
/// consecutive products do not each pay for a hand-off to the pool.
/// Allocates nothing.
///
/// # Panics
/// If `x` was quantized with another row length than `w.cols()`, or
/// `out.len() != n * w.rows()`.
pub fn matmul(w: &QMatrix, x: &QuantizedActs, out: &mut [f32], pool: &rayon::ThreadPool) {
    let (m, k, n) = (w.rows(), w.cols(), x.tokens());
    assert_eq!(
        x.cols(),
        k,
        "activations have {} columns, the matrix {k}",
        x.cols()
    );
    assert_eq!(
        out.len(),
        n * m,
        "output holds {} values, {n} tokens x {m} rows need {}",
        out.len(),
        n * m
    );
    if n == 0 || m == 0 {
        return;
    }
    let groups = w.groups();
    let threads = pool.current_num_threads().max(1);
    let parallel = threads > 1 && groups > 1 && m * k * n >= PARALLEL_MIN_MACS;
    // Several chunks per thread so a thread that started late (or shares its
    // core) does not hold the others up; whole groups per chunk so each
    // weight byte is read by one thread only.
    let chunks = if parallel {
        (threads * 4).min(groups)
    } else {
        1
    };
    let groups_per_chunk = groups.div_ceil(chunks);
    out::for_each_row_chunk(
        out,
        m,
        n,
        groups_per_chunk * layout::ROWS,
        parallel.then_some(pool),
        |rows, dst| {
            let g = rows.start / layout::ROWS..rows.end.div_ceil(layout::ROWS);
            if let Some(values) = x.values() {
                return exact::run(w, values, g, 0..n, dst);
            }
            let mut t0 = 0;
            while t0 < n {
                let t1 = (t0 + TOKEN_BLOCK).min(n);
                run_kernel(w.kernel(), w, x, g.clone(), t0..t1, dst);
                t0 = t1;
            }
        },
    );
}

/// Runs `kernel` on row groups `groups` for tokens `tokens`.
fn run_kernel(
    kernel: Kernel,
    w: &QMatrix,
    x: &QuantizedActs,
    groups: std::ops::Range<usize>,
    tokens: std::ops::Range<usize>,
    dst: &mut out::OutRows<'_>,
) {
    match kernel {
        Kernel::Scalar => scalar::run(w, x, groups, tokens, dst),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => avx2::run(w, x, groups, tokens, dst),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => avx512::run(w, x, groups, tokens, dst),
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Avx2 | Kernel::Avx512Vnni => scalar::run(w, x, groups, tokens, dst),
    }
}

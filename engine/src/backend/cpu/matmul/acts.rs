//! Activations quantized to 8 bits per 32-element block (ggml's Q8_0 with the
//! block sum kept, like Q8_1), the right-hand side of every matmul; or, in the
//! reference mode ([`Activations::F32`]), the f32 values themselves.

use super::{BLOCK, Kernel, MatmulError};

/// What a matmul multiplies the weights by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activations {
    /// Quantized to 8 bits per 32-value block, as llama.cpp does: the integer
    /// kernels, the serving path.
    #[default]
    Q8,
    /// Never quantized: the f32 values against the exactly dequantized
    /// weights with f64 sums (see [`super::exact`]). A reference for checking
    /// other backends: a SmolLM2-135M decode step takes ~10x as long as with
    /// [`Activations::Q8`].
    F32,
}

/// `n` tokens of `k` activations, quantized per 32-value block: `d = amax/127`
/// (f32), `q = round_ties_even(x·(1/d))` in `-127..=127`, and `s = d·Σq` for the
/// weights' minimum (or offset) term.
///
/// Buffers only grow: once a `QuantizedActs` has held the largest batch of a
/// run, quantizing allocates nothing. Every kernel quantizes bit-identically.
///
/// Made with [`Activations::F32`], "quantizing" copies the values unchanged
/// and [`super::matmul`] runs the exact kernel on them instead.
#[derive(Debug, Clone)]
pub struct QuantizedActs {
    n: usize,
    k: usize,
    kernel: Kernel,
    activations: Activations,
    /// [`Activations::F32`] only: the values as given, `x[t*k + j]`.
    raw: Vec<f32>,
    /// `[block][token]`: the 32 values, 4 to an `i32` (little-endian bytes),
    /// so a SIMD kernel broadcasts 4 of them with one 32-bit load. Block-major
    /// so a tile of tokens reads one run per block, at fixed offsets from one
    /// pointer.
    qs: Vec<[i32; 8]>,
    /// `[block][token]`.
    d: Vec<f32>,
    /// `[block][token]`.
    s: Vec<f32>,
}

impl Default for QuantizedActs {
    fn default() -> Self {
        Self::new()
    }
}

impl QuantizedActs {
    /// Empty, quantizing with the fastest kernel this CPU runs.
    pub fn new() -> Self {
        QuantizedActs {
            n: 0,
            k: 0,
            kernel: Kernel::detect(),
            activations: Activations::Q8,
            raw: Vec::new(),
            qs: Vec::new(),
            d: Vec::new(),
            s: Vec::new(),
        }
    }

    /// Empty, quantizing with `kernel` (for tests and benches).
    pub fn with_kernel(kernel: Kernel) -> Result<Self, MatmulError> {
        if !kernel.is_available() {
            return Err(MatmulError::KernelUnavailable { kernel });
        }
        Ok(QuantizedActs {
            kernel,
            ..Self::new()
        })
    }

    /// Empty, holding activations as `activations` says.
    pub fn with_activations(activations: Activations) -> Self {
        QuantizedActs {
            activations,
            ..Self::new()
        }
    }

    /// How the activations are held.
    pub fn activations(&self) -> Activations {
        self.activations
    }

    /// Quantizes `n` tokens of `k` values each, `x[t*k + j]`, on this thread
    /// (with [`Activations::F32`], copies them).
    ///
    /// # Panics
    /// If `k` is not a multiple of 32 or `x.len() != n * k`.
    pub fn quantize(&mut self, x: &[f32], n: usize, k: usize) {
        if self.activations == Activations::F32 {
            return self.keep(x, n, k);
        }
        let kernel = self.kernel;
        let dst = self.prepare(x, n, k);
        quantize_blocks(kernel, x, dst);
    }

    /// Like [`QuantizedActs::quantize`], split across `pool`'s threads when
    /// the input is large enough to repay it (a prefill chunk: 512 tokens of
    /// 1536 values take ~0.2 ms on one thread).
    pub fn quantize_in(&mut self, x: &[f32], n: usize, k: usize, pool: &rayon::ThreadPool) {
        use rayon::prelude::*;
        if self.activations == Activations::F32 {
            return self.keep(x, n, k);
        }
        let kernel = self.kernel;
        let threads = pool.current_num_threads();
        let dst = self.prepare(x, n, k);
        if threads < 2 || n * k < PARALLEL_MIN_VALUES || dst.nb < 2 {
            return quantize_blocks(kernel, x, dst);
        }
        // Whole blocks of every token per piece, so each piece's output is a
        // contiguous run of the block-major buffers.
        let per = dst.nb.div_ceil(threads);
        let Blocks {
            n, nb, qs, d, s, ..
        } = dst;
        pool.install(|| {
            qs.par_chunks_mut(per * n)
                .zip(d.par_chunks_mut(per * n))
                .zip(s.par_chunks_mut(per * n))
                .enumerate()
                .for_each(|(i, ((qs, d), s))| {
                    quantize_blocks(
                        kernel,
                        x,
                        Blocks {
                            n,
                            nb,
                            first: i * per,
                            qs,
                            d,
                            s,
                        },
                    );
                });
        });
    }

    /// [`Activations::F32`]: holds `x` as it is.
    fn keep(&mut self, x: &[f32], n: usize, k: usize) {
        check_shape(x, n, k);
        self.n = n;
        self.k = k;
        self.raw.clear();
        self.raw.extend_from_slice(x);
    }

    /// Sizes the buffers for `n × k` and says where to write.
    fn prepare(&mut self, x: &[f32], n: usize, k: usize) -> Blocks<'_> {
        check_shape(x, n, k);
        let blocks = n * k / BLOCK;
        self.n = n;
        self.k = k;
        self.qs.resize(blocks, [0; 8]);
        self.d.resize(blocks, 0.0);
        self.s.resize(blocks, 0.0);
        Blocks {
            n,
            nb: k / BLOCK,
            first: 0,
            qs: &mut self.qs[..blocks],
            d: &mut self.d[..blocks],
            s: &mut self.s[..blocks],
        }
    }

    /// Tokens quantized by the last [`QuantizedActs::quantize`].
    pub fn tokens(&self) -> usize {
        self.n
    }

    /// Values per token.
    pub fn cols(&self) -> usize {
        self.k
    }

    /// [`Activations::F32`]: the values, `x[t*k + j]`; `None` when quantized.
    pub(super) fn values(&self) -> Option<&[f32]> {
        (self.activations == Activations::F32).then(|| &self.raw[..self.n * self.k])
    }

    /// Block `b` of every token: values, scales `d` and sums `s`, indexed by token.
    pub(super) fn block(&self, b: usize) -> (&[[i32; 8]], &[f32], &[f32]) {
        let r = b * self.n..(b + 1) * self.n;
        (&self.qs[r.clone()], &self.d[r.clone()], &self.s[r])
    }

    /// Value `j` of token `t` as quantized (`q`) and its block's scale.
    ///
    /// # Panics
    /// If the activations are held as [`Activations::F32`].
    pub fn value(&self, t: usize, j: usize) -> (i8, f32) {
        assert_eq!(
            self.activations,
            Activations::Q8,
            "f32 activations have no quantized values"
        );
        let (qs, d, _) = self.block(j / BLOCK);
        (byte(&qs[t], j % BLOCK), d[t])
    }
}

/// Checks that `x` holds `n` tokens of `k` values, `k` whole blocks.
///
/// # Panics
/// If `k` is not a multiple of 32 or `x.len() != n * k`.
fn check_shape(x: &[f32], n: usize, k: usize) {
    assert!(
        k.is_multiple_of(BLOCK),
        "row length {k} is not a multiple of {BLOCK}"
    );
    assert_eq!(
        x.len(),
        n * k,
        "{n} tokens of {k} values, got {} values",
        x.len()
    );
}

/// Values below which [`QuantizedActs::quantize_in`] stays on one thread.
const PARALLEL_MIN_VALUES: usize = 1 << 15;

/// Where a quantizer writes: blocks `first..first + qs.len() / n` of each of
/// `n` tokens (of `nb` blocks each), block-major.
pub(super) struct Blocks<'a> {
    pub n: usize,
    pub nb: usize,
    pub first: usize,
    pub qs: &'a mut [[i32; 8]],
    pub d: &'a mut [f32],
    pub s: &'a mut [f32],
}

impl Blocks<'_> {
    /// `(input block, output slot)` pairs in input order (token-major), the
    /// input block indexing `x` as 32-value chunks. Nested counting rather
    /// than a division per block.
    #[inline]
    pub fn pairs(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        let (n, nb, first) = (self.n, self.nb, self.first);
        let count = self.qs.len() / n.max(1);
        (0..n).flat_map(move |t| (0..count).map(move |j| (t * nb + first + j, j * n + t)))
    }
}

fn quantize_blocks(kernel: Kernel, x: &[f32], dst: Blocks<'_>) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => super::avx512::quantize(x, dst),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => super::avx2::quantize(x, dst),
        _ => quantize_scalar(x, dst),
    }
}

/// Value `i` (0..32) of a packed block.
pub(super) fn byte(block: &[i32; 8], i: usize) -> i8 {
    block[i / 4].to_le_bytes()[i % 4] as i8
}

/// The reference quantizer; the SIMD ones must match it bit for bit.
pub(super) fn quantize_scalar(x: &[f32], dst: Blocks<'_>) {
    let blocks = x.as_chunks::<BLOCK>().0;
    for (i, at) in dst.pairs() {
        let x = &blocks[i];
        let q = &mut dst.qs[at];
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, x) in q.iter_mut().zip(x.chunks_exact(4)) {
            let b: [u8; 4] = std::array::from_fn(|j| {
                // Clamped before rounding, as the SIMD quantizers do: `id`
                // overflows to infinity for subnormal blocks. Not `clamp`,
                // which keeps NaN where `vmaxps` gives -127.
                #[allow(clippy::manual_clamp)]
                let v = (x[j] * id).max(-127.0).min(127.0).round_ties_even() as i32;
                sum += v;
                v as i8 as u8
            });
            *q = i32::from_le_bytes(b);
        }
        dst.d[at] = d;
        dst.s[at] = d * sum as f32;
    }
}

//! The CPU backend's element-wise operators and attention. Plain loops the compiler
//! vectorizes; the matrix products, where the time goes, are in `matmul`.
//!
//! Batch invariance: every function here computes a token's result from that token's
//! inputs alone, in a fixed order, so a token's output does not depend on which other
//! tokens share its step or on how its prompt was chunked.

use crate::model::RopeStyle;

/// `out = x / rms(x) * w`, one row.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let sum_sq: f32 = x.iter().map(|v| v * v).sum();
    let scale = 1.0 / (sum_sq / x.len() as f32 + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// `out = silu(gate) * up`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// Rotary position embedding tables: `inv_freq[i] = theta^(-2i/d)`.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f64>,
    style: RopeStyle,
    head_dim: usize,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f32, style: RopeStyle) -> Self {
        let half = head_dim / 2;
        let inv_freq = (0..half)
            .map(|i| f64::from(theta).powf(-2.0 * i as f64 / head_dim as f64))
            .collect();
        Self {
            inv_freq,
            style,
            head_dim,
        }
    }

    /// Rotates every head of one token's Q or K row in place.
    pub fn apply(&self, row: &mut [f32], pos: usize) {
        let half = self.head_dim / 2;
        for head in row.chunks_exact_mut(self.head_dim) {
            for (i, &f) in self.inv_freq.iter().enumerate() {
                let (sin, cos) = (pos as f64 * f).sin_cos();
                let (sin, cos) = (sin as f32, cos as f32);
                let (a, b) = match self.style {
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    RopeStyle::Halves => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos - x1 * sin;
                head[b] = x0 * sin + x1 * cos;
            }
        }
    }
}

/// Where one layer's K and V live: `[block][kv_head][slot][head_dim]` each, as IEEE
/// half-precision bits (half the memory and bandwidth of f32, llama.cpp's default).
pub struct KvLayer<'a> {
    pub k: &'a [u16],
    pub v: &'a [u16],
    pub block_size: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl KvLayer<'_> {
    #[inline]
    fn offset(&self, block: usize, kv_head: usize) -> usize {
        (block * self.n_kv_heads + kv_head) * self.block_size * self.head_dim
    }

    /// Where block `b` of a sequence's first `n_ctx` positions keeps `kv_head`'s keys
    /// (and, at the same range, its values); `None` past the context or the table.
    #[inline(always)]
    fn span(
        &self,
        table: &[crate::kv::BlockId],
        kv_head: usize,
        b: usize,
        n_ctx: usize,
    ) -> Option<std::ops::Range<usize>> {
        let first = b * self.block_size;
        let &block = table.get(b)?;
        if first >= n_ctx {
            return None;
        }
        let base = self.offset(block as usize, kv_head);
        Some(base..base + (n_ctx - first).min(self.block_size) * self.head_dim)
    }
}

/// Largest head size and query-heads-per-KV-head the attention kernel takes.
pub const MAX_HEAD_DIM: usize = 256;
pub const MAX_GROUP: usize = 16;
/// Largest KV block the attention kernel takes, tokens.
pub const MAX_BLOCK: usize = 64;

/// Causal attention of the query heads sharing one KV head, for one token at `pos`:
/// softmax(q·k / sqrt(d)) · v over positions `0..=pos`, read through the block table,
/// written to `out` (`q.len()` values). Keys are visited in order, a block at a time,
/// with a running max (the streaming softmax), so the result depends only on `q` and
/// the cache contents. Runs the widest SIMD the CPU has.
pub fn attend(
    kv: &KvLayer<'_>,
    block_table: &[crate::kv::BlockId],
    kv_head: usize,
    pos: usize,
    q: &[f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if kv.head_dim.is_multiple_of(16) {
        if simd::has_avx512() {
            // SAFETY: the CPU supports AVX-512F (checked at run time); the head size is
            // a multiple of 16.
            #[allow(unsafe_code)]
            unsafe {
                simd::attend_avx512(kv, block_table, kv_head, pos, q, out)
            };
            return;
        }
        if simd::has_avx2() {
            // SAFETY: the CPU supports AVX2, FMA and F16C (checked at run time).
            #[allow(unsafe_code)]
            unsafe {
                simd::attend_avx2(kv, block_table, kv_head, pos, q, out)
            };
            return;
        }
    }
    attend_generic(kv, block_table, kv_head, pos, q, out);
}

/// The portable body; the SIMD entry points inline it under wider target features so
/// the compiler vectorizes the same code for them.
fn attend_generic(
    kv: &KvLayer<'_>,
    block_table: &[crate::kv::BlockId],
    kv_head: usize,
    pos: usize,
    q: &[f32],
    out: &mut [f32],
) {
    attend_with(kv, block_table, kv_head, pos, q, out, dot_f16, axpy_f16);
}

/// The attention loop, generic over its two inner products so each SIMD entry point
/// inlines its own.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_with(
    kv: &KvLayer<'_>,
    block_table: &[crate::kv::BlockId],
    kv_head: usize,
    pos: usize,
    q: &[f32],
    out: &mut [f32],
    dot: impl Fn(&[f32], &[u16]) -> f32,
    axpy: impl Fn(&mut [f32], f32, &[u16]),
) {
    let hd = kv.head_dim;
    let bs = kv.block_size;
    let scale = 1.0 / (hd as f32).sqrt();
    let n_q = q.len() / hd;
    debug_assert!(hd <= MAX_HEAD_DIM && n_q <= MAX_GROUP && bs <= MAX_BLOCK);
    // `out` is the accumulator: no stack buffer to clear per call.
    out.fill(0.0);
    let mut max = [f32::NEG_INFINITY; MAX_GROUP];
    let mut denom = [0f32; MAX_GROUP];
    let mut scores = [0f32; MAX_BLOCK];
    let n_ctx = pos + 1;
    let mut b = 0;
    while let Some(span) = kv.span(block_table, kv_head, b, n_ctx) {
        let n = span.len() / hd;
        let (keys, values) = (&kv.k[span.clone()], &kv.v[span]);
        // The blocks ahead are anywhere in the cache (blocks are handed out least
        // recently used first): ask for them while this one computes.
        let ahead = if b == 0 { 1 } else { PREFETCH_AHEAD };
        for a in ahead..=PREFETCH_AHEAD {
            if let Some(next) = kv.span(block_table, kv_head, b + a, n_ctx) {
                prefetch(&kv.k[next.clone()]);
                prefetch(&kv.v[next]);
            }
        }
        b += 1;
        for h in 0..n_q {
            let qh = &q[h * hd..(h + 1) * hd];
            let mut block_max = f32::NEG_INFINITY;
            for (s, key) in scores[..n].iter_mut().zip(keys.chunks_exact(hd)) {
                *s = dot(qh, key) * scale;
                block_max = block_max.max(*s);
            }
            let new_max = max[h].max(block_max);
            let correction = (max[h] - new_max).exp();
            max[h] = new_max;
            let acc = &mut out[h * hd..(h + 1) * hd];
            let mut sum = denom[h] * correction;
            for a in acc.iter_mut() {
                *a *= correction;
            }
            for (s, value) in scores[..n].iter().zip(values.chunks_exact(hd)) {
                let p = (s - new_max).exp();
                sum += p;
                axpy(acc, p, value);
            }
            denom[h] = sum;
        }
    }
    for h in 0..n_q {
        let inv = 1.0 / denom[h];
        for o in &mut out[h * hd..(h + 1) * hd] {
            *o *= inv;
        }
    }
}

/// How many blocks ahead attention prefetches.
const PREFETCH_AHEAD: usize = 2;

/// Asks for `data`'s cache lines ahead of use: only a hint, no fault and no effect on
/// results.
#[inline(always)]
fn prefetch(data: &[u16]) {
    #[cfg(target_arch = "x86_64")]
    for line in data.chunks(32) {
        // SAFETY: `prefetcht0` of an address inside `data`; it cannot fault and needs
        // only SSE, which every x86-64 CPU has.
        #[allow(unsafe_code)]
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

#[cfg(target_arch = "x86_64")]
mod simd {
    //! Entry points with hardware half-to-float conversion (`vcvtph2ps`) and fused
    //! multiply-adds; the loop around them is `attend_with`, inlined. They need the head
    //! size to be a multiple of 16, which the dispatcher checks.
    #![allow(unsafe_code)]

    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use super::{KvLayer, attend_with};

    pub fn has_avx512() -> bool {
        static YES: OnceLock<bool> = OnceLock::new();
        *YES.get_or_init(|| is_x86_feature_detected!("avx512f"))
    }

    pub fn has_avx2() -> bool {
        static YES: OnceLock<bool> = OnceLock::new();
        *YES.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }

    /// # Safety
    /// The CPU must support AVX-512F; `kv.head_dim` must be a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn attend_avx512(
        kv: &KvLayer<'_>,
        table: &[crate::kv::BlockId],
        kv_head: usize,
        pos: usize,
        q: &[f32],
        out: &mut [f32],
    ) {
        // SAFETY (both closures): AVX-512F is enabled for this function and the slices
        // hold `head_dim` elements, a multiple of 16, so every 16-wide access is in
        // bounds.
        let dot = |a: &[f32], b: &[u16]| unsafe { dot512(a, b) };
        let axpy = |acc: &mut [f32], p: f32, v: &[u16]| unsafe { axpy512(acc, p, v) };
        attend_with(kv, table, kv_head, pos, q, out, dot, axpy)
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn dot512(a: &[f32], b: &[u16]) -> f32 {
        debug_assert!(a.len() == b.len() && a.len().is_multiple_of(16));
        let mut acc = _mm512_setzero_ps();
        for i in (0..a.len()).step_by(16) {
            // SAFETY: i + 16 <= len for both slices (len is a multiple of 16).
            unsafe {
                let x = _mm512_loadu_ps(a.as_ptr().add(i));
                let h = _mm256_loadu_si256(b.as_ptr().add(i).cast());
                acc = _mm512_fmadd_ps(x, _mm512_cvtph_ps(h), acc);
            }
        }
        _mm512_reduce_add_ps(acc)
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn axpy512(acc: &mut [f32], p: f32, v: &[u16]) {
        debug_assert!(acc.len() == v.len() && acc.len().is_multiple_of(16));
        let pv = _mm512_set1_ps(p);
        for i in (0..acc.len()).step_by(16) {
            // SAFETY: i + 16 <= len for both slices (len is a multiple of 16).
            unsafe {
                let a = _mm512_loadu_ps(acc.as_ptr().add(i));
                let h = _mm256_loadu_si256(v.as_ptr().add(i).cast());
                _mm512_storeu_ps(
                    acc.as_mut_ptr().add(i),
                    _mm512_fmadd_ps(pv, _mm512_cvtph_ps(h), a),
                );
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `kv.head_dim` must be a multiple of 16.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attend_avx2(
        kv: &KvLayer<'_>,
        table: &[crate::kv::BlockId],
        kv_head: usize,
        pos: usize,
        q: &[f32],
        out: &mut [f32],
    ) {
        // SAFETY (both closures): AVX2, FMA and F16C are enabled for this function and
        // the slices hold `head_dim` elements, a multiple of 16.
        let dot = |a: &[f32], b: &[u16]| unsafe { dot256(a, b) };
        let axpy = |acc: &mut [f32], p: f32, v: &[u16]| unsafe { axpy256(acc, p, v) };
        attend_with(kv, table, kv_head, pos, q, out, dot, axpy)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dot256(a: &[f32], b: &[u16]) -> f32 {
        debug_assert!(a.len() == b.len() && a.len().is_multiple_of(16));
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for i in (0..a.len()).step_by(16) {
            // SAFETY: i + 16 <= len for both slices (len is a multiple of 16).
            unsafe {
                let x0 = _mm256_loadu_ps(a.as_ptr().add(i));
                let x1 = _mm256_loadu_ps(a.as_ptr().add(i + 8));
                let h0 = _mm_loadu_si128(b.as_ptr().add(i).cast());
                let h1 = _mm_loadu_si128(b.as_ptr().add(i + 8).cast());
                s0 = _mm256_fmadd_ps(x0, _mm256_cvtph_ps(h0), s0);
                s1 = _mm256_fmadd_ps(x1, _mm256_cvtph_ps(h1), s1);
            }
        }
        let s = _mm256_add_ps(s0, s1);
        let lo = _mm256_castps256_ps128(s);
        let hi = _mm256_extractf128_ps(s, 1);
        let q = _mm_add_ps(lo, hi);
        let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
        _mm_cvtss_f32(q)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn axpy256(acc: &mut [f32], p: f32, v: &[u16]) {
        debug_assert!(acc.len() == v.len() && acc.len().is_multiple_of(8));
        let pv = _mm256_set1_ps(p);
        for i in (0..acc.len()).step_by(8) {
            // SAFETY: i + 8 <= len for both slices (len is a multiple of 16).
            unsafe {
                let a = _mm256_loadu_ps(acc.as_ptr().add(i));
                let h = _mm_loadu_si128(v.as_ptr().add(i).cast());
                _mm256_storeu_ps(
                    acc.as_mut_ptr().add(i),
                    _mm256_fmadd_ps(pv, _mm256_cvtph_ps(h), a),
                );
            }
        }
    }
}

/// f32 to IEEE half bits, rounding to nearest (the KV cache's store).
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// IEEE half bits to f32 with integer operations and one multiply, so the compiler
/// vectorizes it in the attention loops without F16C intrinsics. Exact for every finite
/// half, subnormals included; infinities and NaNs (which the KV cache never holds: K and
/// V values are far inside the half range) come out as large finite numbers.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    // Shift exponent and mantissa into place, then rebias the exponent by 2^112.
    let magnitude = f32::from_bits(u32::from(h & 0x7fff) << 13) * f32::from_bits(0x7780_0000);
    f32::from_bits(magnitude.to_bits() | sign)
}

/// `acc += p * v`.
#[inline(always)]
fn axpy_f16(acc: &mut [f32], p: f32, v: &[u16]) {
    for (a, &x) in acc.iter_mut().zip(v) {
        *a += p * f16_to_f32(x);
    }
}

#[inline(always)]
fn dot_f16(a: &[f32], b: &[u16]) -> f32 {
    // Sixteen independent lanes let the compiler vectorize without reassociating.
    let mut lanes = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            lanes[i] += x[i] * f16_to_f32(y[i]);
        }
    }
    let mut sum = lanes.iter().sum::<f32>();
    for (x, &y) in ar.iter().zip(br) {
        sum += x * f16_to_f32(y);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_matches_its_definition() {
        let x = [1.0f32, -2.0, 3.0, -4.0];
        let w = [1.0f32, 0.5, 2.0, 1.0];
        let mut out = [0f32; 4];
        rms_norm(&x, &w, 0.0, &mut out);
        let rms = (30.0f32 / 4.0).sqrt();
        for i in 0..4 {
            assert!((out[i] - x[i] / rms * w[i]).abs() < 1e-6);
        }
    }

    #[test]
    fn rope_rotates_pairs_and_keeps_norms() {
        let mut a = [1.0f32, 0.0, 1.0, 0.0];
        Rope::new(4, 10_000.0, RopeStyle::Interleaved).apply(&mut a, 1);
        // Pair 0 turns by 1 radian, pair 1 by 1/100 radian.
        assert!((a[0] - 1f32.cos()).abs() < 1e-6 && (a[1] - 1f32.sin()).abs() < 1e-6);
        assert!((a[2] - 0.01f32.cos()).abs() < 1e-6 && (a[3] - 0.01f32.sin()).abs() < 1e-6);
        let mut b = [1.0f32, 1.0, 0.0, 0.0];
        Rope::new(4, 10_000.0, RopeStyle::Halves).apply(&mut b, 1);
        assert!((b[0] - 1f32.cos()).abs() < 1e-6 && (b[2] - 1f32.sin()).abs() < 1e-6);
        let mut c = [0.3f32, -1.2, 2.0, 0.7];
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>();
        let before = norm(&c);
        Rope::new(4, 10_000.0, RopeStyle::Interleaved).apply(&mut c, 1234);
        assert!((norm(&c) - before).abs() < 1e-4);
    }

    #[test]
    fn half_conversion_is_exact_for_every_finite_half() {
        for bits in 0..=u16::MAX {
            let h = half::f16::from_bits(bits);
            if h.is_finite() {
                assert_eq!(
                    f16_to_f32(bits).to_bits(),
                    h.to_f32().to_bits(),
                    "bits {bits:#06x}"
                );
            }
        }
        assert_eq!(f32_to_f16(1.5), 0x3e00);
    }

    #[test]
    fn paged_attention_matches_a_dense_softmax() {
        let (hd, bs, n_kv) = (16usize, 4usize, 2usize);
        let n_ctx = 11;
        let table = [3u32, 0, 2]; // scattered blocks
        let mut k = vec![0u16; 4 * n_kv * bs * hd];
        let mut v = vec![0u16; 4 * n_kv * bs * hd];
        // Values as the half-precision cache holds them.
        let val = |p: usize, i: usize, s: f32| {
            half::f16::from_f32(((p * 7 + i * 3) as f32 * s).sin()).to_f32()
        };
        for p in 0..n_ctx {
            let block = table[p / bs] as usize;
            for kvh in 0..n_kv {
                let base = ((block * n_kv + kvh) * bs + p % bs) * hd;
                for i in 0..hd {
                    k[base + i] = f32_to_f16(val(p, i + kvh, 0.37));
                    v[base + i] = f32_to_f16(val(p, i + kvh, 0.91));
                }
            }
        }
        let kv = KvLayer {
            k: &k,
            v: &v,
            block_size: bs,
            n_kv_heads: n_kv,
            head_dim: hd,
        };
        let q: Vec<f32> = (0..2 * hd).map(|i| (i as f32 * 0.3).cos()).collect();
        let pos = n_ctx - 1;
        let mut out = vec![0f32; 2 * hd];
        attend(&kv, &table, 1, pos, &q, &mut out);
        // Every kernel path this CPU has agrees with the portable one.
        let mut portable = vec![0f32; 2 * hd];
        attend_generic(&kv, &table, 1, pos, &q, &mut portable);
        #[cfg(target_arch = "x86_64")]
        #[allow(unsafe_code)]
        {
            let mut paths = Vec::new();
            if simd::has_avx2() {
                let mut o = vec![0f32; 2 * hd];
                // SAFETY: AVX2/FMA/F16C detected; head_dim 16 is a multiple of 16.
                unsafe { simd::attend_avx2(&kv, &table, 1, pos, &q, &mut o) };
                paths.push(o);
            }
            if simd::has_avx512() {
                let mut o = vec![0f32; 2 * hd];
                // SAFETY: AVX-512F detected; head_dim 16 is a multiple of 16.
                unsafe { simd::attend_avx512(&kv, &table, 1, pos, &q, &mut o) };
                paths.push(o);
            }
            for o in paths {
                for (a, b) in o.iter().zip(&portable) {
                    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
                }
            }
        }
        for h in 0..2 {
            let qh = &q[h * hd..(h + 1) * hd];
            let scores: Vec<f64> = (0..=pos)
                .map(|p| {
                    (0..hd)
                        .map(|i| f64::from(qh[i] * val(p, i + 1, 0.37)))
                        .sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
            for i in 0..hd {
                let want: f64 = (0..=pos)
                    .map(|p| (scores[p] - m).exp() / z * f64::from(val(p, i + 1, 0.91)))
                    .sum();
                assert!(
                    (f64::from(out[h * hd + i]) - want).abs() < 1e-5,
                    "head {h} dim {i}"
                );
            }
        }
    }
}

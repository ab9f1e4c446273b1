//! AVX2 kernel, for x86-64 CPUs without AVX-512 VNNI. A ymm holds half a
//! line (4 values of each of 8 rows); a register tile is 8 rows × up to 4
//! tokens. Without `vpdpbusd`, products go through `vpmaddubsw` (u8 × i8 pairs
//! to saturating i16) and `vpmaddwd` against ones (to i32):
//!
//! - Q4: nibbles ≤ 15 keep every i16 pair sum ≤ 3810 in magnitude, so a whole
//!   block's eight `vpmaddubsw` are summed in i16 (≤ 30480) before one
//!   `vpmaddwd`; the offset/minimum term is handled as in the AVX-512 kernel.
//! - Q8: `q + 128` times a byte could saturate i16, so the byte is turned back
//!   into signed `q` and multiplied as `|q| · sign(x, q)` (≤ 2·128·127 per
//!   pair): an exact signed dot, with no offset term.
#![allow(unsafe_code)]

use std::arch::x86_64::*;
use std::ops::Range;

use super::acts::{Blocks, QuantizedActs, quantize_scalar};
use super::layout::{Format, LINE, QMatrix, ROWS};
use super::out::OutRows;
use super::{BLOCK, PANEL, prefetch, scalar};

/// Tokens per register tile (16 ymm registers).
pub(super) const TILE: usize = 4;
/// Rows per half group (one i32 lane each in a ymm).
const HALF: usize = ROWS / 2;

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;

pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

pub(super) fn run(
    w: &QMatrix,
    x: &QuantizedActs,
    groups: Range<usize>,
    tokens: Range<usize>,
    out: &mut OutRows<'_>,
) {
    // Checked here, not only where the kernel was chosen, so this safe
    // function is sound whoever calls it; the check is a cached bit test.
    if !available() {
        return scalar::run(w, x, groups, tokens, out);
    }
    // SAFETY: the CPU has every feature `run_format` is compiled for (checked above).
    unsafe {
        match w.format() {
            Format::Q4_0 => run_format::<Q4_0>(w, x, groups, tokens, out),
            Format::Q4_1 => run_format::<Q4_1>(w, x, groups, tokens, out),
            Format::Q8_0 => run_format::<Q8_0>(w, x, groups, tokens, out),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn run_format<const F: u8>(
    w: &QMatrix,
    x: &QuantizedActs,
    groups: Range<usize>,
    tokens: Range<usize>,
    out: &mut OutRows<'_>,
) {
    let tiles = tokens.len().div_ceil(TILE);
    let mut p0 = groups.start;
    while p0 < groups.end {
        let panel = p0..(p0 + PANEL).min(groups.end);
        let mut t0 = tokens.start;
        while t0 < tokens.end {
            let tn = (tokens.end - t0).min(TILE);
            let tile_index = (t0 - tokens.start) / TILE;
            for g in panel.clone() {
                // One tile's products have nothing to overlap the prefetch
                // with: batch-1 is left to the hardware's stream prefetcher.
                if tiles > 1 && g + PANEL < groups.end {
                    prefetch::group_part(w, g + PANEL, tile_index, tiles);
                }
                for half in 0..2 {
                    if half * HALF >= w.group_rows(g) {
                        break;
                    }
                    match tn {
                        4 => tile::<4, F>(w, g, half, x, t0, out),
                        3 => tile::<3, F>(w, g, half, x, t0, out),
                        2 => tile::<2, F>(w, g, half, x, t0, out),
                        _ => tile::<1, F>(w, g, half, x, t0, out),
                    }
                }
            }
            t0 += tn;
        }
        p0 = panel.end;
    }
}

/// Rows `8·half..8·half+8` of group `g` × tokens `t0..t0+T`, written to `out`.
#[target_feature(enable = "avx2,fma,f16c")]
fn tile<const T: usize, const F: u8>(
    w: &QMatrix,
    g: usize,
    half: usize,
    x: &QuantizedActs,
    t0: usize,
    out: &mut OutRows<'_>,
) {
    let lines = w.group_lines(g);
    let d = w.d(g);
    let mins = w.min(g);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); T];
    for (b, d) in d.iter().enumerate() {
        let (xq, xd, xs) = x.block(b);
        let (xq, xd, xs) = (&xq[t0..t0 + T], &xd[t0..t0 + T], &xs[t0..t0 + T]);
        let dw = load_f16(d, half);
        if F == Q8_0 {
            let flip = _mm256_set1_epi8(0x80u8 as i8);
            let bl = &lines[b * 8..b * 8 + 8];
            let mut dot = [_mm256_setzero_si256(); T];
            for c in 0..8 {
                let q = _mm256_xor_si256(load_half(&bl[c], half), flip);
                let aq = _mm256_sign_epi8(q, q);
                for t in 0..T {
                    let xv = _mm256_sign_epi8(_mm256_set1_epi32(xq[t][c]), q);
                    dot[t] = _mm256_add_epi32(
                        dot[t],
                        _mm256_madd_epi16(_mm256_maddubs_epi16(aq, xv), ones),
                    );
                }
            }
            for t in 0..T {
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(xd[t]));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[t]), scale, acc[t]);
            }
        } else {
            let mask = _mm256_set1_epi8(0x0F);
            let bl = &lines[b * 4..b * 4 + 4];
            let mut dot = [_mm256_setzero_si256(); T];
            for c in 0..4 {
                let p = load_half(&bl[c], half);
                let lo = _mm256_and_si256(p, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(p), mask);
                for t in 0..T {
                    let plo = _mm256_maddubs_epi16(lo, _mm256_set1_epi32(xq[t][c]));
                    let phi = _mm256_maddubs_epi16(hi, _mm256_set1_epi32(xq[t][c + 4]));
                    dot[t] = _mm256_add_epi16(dot[t], _mm256_add_epi16(plo, phi));
                }
            }
            let mw = if F == Q4_1 {
                load_f16(&mins[b], half)
            } else {
                _mm256_mul_ps(dw, _mm256_set1_ps(-8.0))
            };
            for t in 0..T {
                let dot = _mm256_madd_epi16(dot[t], ones);
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(xd[t]));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[t]);
                acc[t] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xs[t]), acc[t]);
            }
        }
    }
    let row0 = g * ROWS + half * HALF;
    let valid = (w.group_rows(g) - half * HALF).min(HALF);
    for (t, acc) in acc.iter().enumerate() {
        let mut v = [0f32; HALF];
        // SAFETY: `v` is 8 f32s, exactly one ymm.
        unsafe { _mm256_storeu_ps(v.as_mut_ptr(), *acc) };
        out.store(t0 + t, row0, &v[..valid]);
    }
}

/// Bytes `32·half..32·half+32` of a line: 4 values of each of 8 rows.
#[target_feature(enable = "avx2")]
#[inline]
fn load_half(line: &[u8; LINE], half: usize) -> __m256i {
    let h = &line[32 * half..32 * half + 32];
    // SAFETY: reads the 32 bytes of `h`.
    unsafe { _mm256_loadu_si256(h.as_ptr().cast()) }
}

/// The 8 f16 scales of half `half` as f32.
#[target_feature(enable = "avx2,f16c")]
#[inline]
fn load_f16(s: &[u16; ROWS], half: usize) -> __m256 {
    let h = &s[HALF * half..HALF * half + HALF];
    // SAFETY: reads the 16 bytes of `h`.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(h.as_ptr().cast()) })
}

/// Bit-identical to [`quantize_scalar`]: same max, same `1/d`, same product,
/// clamp and round-to-nearest-even (`vcvtps2dq` under the default MXCSR).
pub(super) fn quantize(x: &[f32], dst: Blocks<'_>) {
    if !available() {
        return quantize_scalar(x, dst);
    }
    // SAFETY: the CPU has the features `quantize_impl` is compiled for (checked above).
    unsafe { quantize_impl(x, dst) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_impl(x: &[f32], dst: Blocks<'_>) {
    let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let blocks = x.as_chunks::<BLOCK>().0;
    for (i, at) in dst.pairs() {
        let x = &blocks[i];
        // SAFETY: four 8-float loads from a 32-float block.
        let v: [__m256; 4] =
            std::array::from_fn(|i| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) });
        let m = _mm256_max_ps(
            _mm256_max_ps(_mm256_and_ps(v[0], abs), _mm256_and_ps(v[1], abs)),
            _mm256_max_ps(_mm256_and_ps(v[2], abs), _mm256_and_ps(v[3], abs)),
        );
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_movehdup_ps(m));
        let d = _mm_cvtss_f32(m) / 127.0;
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        // max/min return their second operand for NaN, as f32::max/min do here.
        let q32 = v.map(|v| {
            _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v, id), lo), hi))
        });
        let sum = _mm256_add_epi32(
            _mm256_add_epi32(q32[0], q32[1]),
            _mm256_add_epi32(q32[2], q32[3]),
        );
        let sum = _mm_add_epi32(
            _mm256_castsi256_si128(sum),
            _mm256_extracti128_si256::<1>(sum),
        );
        let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b01_00_11_10>(sum));
        let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b10_11_00_01>(sum));
        dst.d[at] = d;
        dst.s[at] = d * _mm_cvtsi128_si32(sum) as f32;
        // The packs work within 128-bit lanes; the permute restores order.
        let p16a = _mm256_packs_epi32(q32[0], q32[1]);
        let p16b = _mm256_packs_epi32(q32[2], q32[3]);
        let p8 = _mm256_packs_epi16(p16a, p16b);
        let p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: one 32-byte store into the 32 bytes of a block.
        unsafe { _mm256_storeu_si256(dst.qs[at].as_mut_ptr().cast(), p8) };
    }
}

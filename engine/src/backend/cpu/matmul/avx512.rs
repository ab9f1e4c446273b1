//! AVX-512 VNNI kernel: one zmm holds a 64-byte line (4 values of each of 16
//! rows), `vpdpbusd` multiplies it by 4 activation bytes broadcast to every
//! lane, so a block of 16 rows × 1 token is 8 `vpdpbusd`. A register tile is
//! 16 rows × up to 8 tokens: each line loaded (and, for Q4, unpacked) once
//! serves every token of the tile.
//!
//! Per block and token the integer sums become floats with
//! `acc += f32(dot)·(d_w·d_x) + m_w·s_x`, where `m_w` is the Q4_1 minimum or
//! `-offset·d_w` (offset 8 for Q4_0 nibbles, 128 for Q8_0 bytes stored as
//! `q + 128`): `vpdpbusd` needs unsigned weights, and the offset's share
//! `offset·Σ q_x` is removed through the activations' block sum.
#![allow(unsafe_code)]

use std::arch::x86_64::*;
use std::ops::Range;

use super::acts::{Blocks, QuantizedActs, quantize_scalar};
use super::layout::{Format, LINE, QMatrix, ROWS};
use super::out::OutRows;
use super::{BLOCK, PANEL, prefetch, scalar};

/// Tokens per register tile: 2 zmm each (int and float accumulators) leaves
/// room for the line, its nibbles and the scales in 32 registers.
pub(super) const TILE: usize = 8;

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;

pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
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

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
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
                match tn {
                    8 => tile::<8, F>(w, g, x, t0, out),
                    7 => tile::<7, F>(w, g, x, t0, out),
                    6 => tile::<6, F>(w, g, x, t0, out),
                    5 => tile::<5, F>(w, g, x, t0, out),
                    4 => tile::<4, F>(w, g, x, t0, out),
                    3 => tile::<3, F>(w, g, x, t0, out),
                    2 => tile::<2, F>(w, g, x, t0, out),
                    _ => tile::<1, F>(w, g, x, t0, out),
                }
            }
            t0 += tn;
        }
        p0 = panel.end;
    }
}

/// Group `g` × tokens `t0..t0+T`, written to `out`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
fn tile<const T: usize, const F: u8>(
    w: &QMatrix,
    g: usize,
    x: &QuantizedActs,
    t0: usize,
    out: &mut OutRows<'_>,
) {
    const { assert!(T >= 1 && T <= TILE) };
    let lines = w.group_lines(g);
    let d = w.d(g);
    let mins = w.min(g);
    let mask = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); T];
    for (b, d) in d.iter().enumerate() {
        let (xq, xd, xs) = x.block(b);
        let (xq, xd, xs) = (&xq[t0..t0 + T], &xd[t0..t0 + T], &xs[t0..t0 + T]);
        // With 1-2 tokens, a second accumulator per token halves the chain
        // of dependent `vpdpbusd` (latency-bound otherwise).
        let mut dot = [_mm512_setzero_si512(); T];
        let mut dot2 = [_mm512_setzero_si512(); T];
        if F == Q8_0 {
            let bl = &lines[b * 8..b * 8 + 8];
            for c in 0..8 {
                let p = load_line(&bl[c]);
                for t in 0..T {
                    let a = _mm512_set1_epi32(xq[t][c]);
                    if T <= 2 && c % 2 == 1 {
                        dot2[t] = _mm512_dpbusd_epi32(dot2[t], p, a);
                    } else {
                        dot[t] = _mm512_dpbusd_epi32(dot[t], p, a);
                    }
                }
            }
        } else {
            let bl = &lines[b * 4..b * 4 + 4];
            for c in 0..4 {
                let p = load_line(&bl[c]);
                let lo = _mm512_and_si512(p, mask);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(p), mask);
                for t in 0..T {
                    dot[t] = _mm512_dpbusd_epi32(dot[t], lo, _mm512_set1_epi32(xq[t][c]));
                    if T <= 2 {
                        dot2[t] = _mm512_dpbusd_epi32(dot2[t], hi, _mm512_set1_epi32(xq[t][c + 4]));
                    } else {
                        dot[t] = _mm512_dpbusd_epi32(dot[t], hi, _mm512_set1_epi32(xq[t][c + 4]));
                    }
                }
            }
        }
        let dw = load_f16(d);
        let mw = match F {
            Q4_1 => load_f16(&mins[b]),
            Q4_0 => _mm512_mul_ps(dw, _mm512_set1_ps(-8.0)),
            _ => _mm512_mul_ps(dw, _mm512_set1_ps(-128.0)),
        };
        for t in 0..T {
            let dot = if T <= 2 {
                _mm512_add_epi32(dot[t], dot2[t])
            } else {
                dot[t]
            };
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(xd[t]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[t]);
            acc[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xs[t]), acc[t]);
        }
    }
    let valid = w.group_rows(g);
    for (t, acc) in acc.iter().enumerate() {
        let mut v = [0f32; ROWS];
        // SAFETY: `v` is 16 f32s, exactly one zmm.
        unsafe { _mm512_storeu_ps(v.as_mut_ptr(), *acc) };
        out.store(t0 + t, g * ROWS, &v[..valid]);
    }
}

#[target_feature(enable = "avx512f")]
#[inline]
fn load_line(line: &[u8; LINE]) -> __m512i {
    // SAFETY: reads the 64 bytes of `line`.
    unsafe { _mm512_loadu_si512(line.as_ptr().cast()) }
}

/// 16 f16 scales as f32.
#[target_feature(enable = "avx512f")]
#[inline]
fn load_f16(h: &[u16; ROWS]) -> __m512 {
    // SAFETY: reads the 32 bytes of `h`.
    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(h.as_ptr().cast()) })
}

/// Bit-identical to [`quantize_scalar`]: same max, same `1/d`, same product,
/// clamp and round-to-nearest-even.
pub(super) fn quantize(x: &[f32], dst: Blocks<'_>) {
    if !available() {
        return quantize_scalar(x, dst);
    }
    // SAFETY: the CPU has the features `quantize_impl` is compiled for (checked above).
    unsafe { quantize_impl(x, dst) }
}

#[target_feature(enable = "avx512f,avx512bw")]
fn quantize_impl(x: &[f32], dst: Blocks<'_>) {
    let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
    let blocks = x.as_chunks::<BLOCK>().0;
    for (i, at) in dst.pairs() {
        let x = &blocks[i];
        // SAFETY: two 16-float loads from a 32-float block.
        let (v0, v1) = unsafe {
            (
                _mm512_loadu_ps(x.as_ptr()),
                _mm512_loadu_ps(x.as_ptr().add(16)),
            )
        };
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        let d = amax / 127.0;
        let id = _mm512_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        // max/min return their second operand for NaN, as f32::max/min do in
        // the scalar quantizer.
        let round = |v| {
            _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, id), lo), hi),
            )
        };
        let (q0, q1) = (round(v0), round(v1));
        dst.d[at] = d;
        dst.s[at] = d * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1)) as f32;
        let q = &mut dst.qs[at];
        // SAFETY: two 16-byte stores into the 32 bytes of `q`.
        unsafe {
            _mm_storeu_si128(q.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128(q.as_mut_ptr().add(4).cast(), _mm512_cvtepi32_epi8(q1));
        }
    }
}

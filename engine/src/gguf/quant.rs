//! Scalar dequantization of ggml block formats, following the layouts in
//! ggml-common.h and the loops of `dequantize_row_*` in ggml-quants.c
//! (including their order of float operations, so results match ggml's
//! reference bit for bit). Portable on purpose: the fast paths are dot
//! products in the SIMD module, and this stays the reference they are
//! tested against.

use half::{bf16, f16};

use super::error::GgufError;
use super::types::{GgmlType, QK_K};

/// Decodes `dst.len()` elements of type `ty` from `src`, which must hold
/// exactly `ty.row_bytes(dst.len())` bytes.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), GgufError> {
    let n = dst.len();
    let expected = ty.row_bytes(n).ok_or_else(|| GgufError::DequantLength {
        ty,
        reason: format!(
            "{n} elements is not a multiple of the block size {}",
            ty.block_size()
        ),
    })?;
    if src.len() != expected {
        return Err(GgufError::DequantLength {
            ty,
            reason: format!("{n} elements take {expected} bytes, got {}", src.len()),
        });
    }
    match ty {
        GgmlType::F32 => blocks(src, dst, |b: &[u8; 4], y: &mut [f32; 1]| {
            y[0] = f32::from_le_bytes(*b);
        }),
        GgmlType::F16 => blocks(src, dst, |b: &[u8; 2], y: &mut [f32; 1]| {
            y[0] = f16::from_le_bytes(*b).to_f32();
        }),
        GgmlType::Bf16 => blocks(src, dst, |b: &[u8; 2], y: &mut [f32; 1]| {
            y[0] = bf16::from_le_bytes(*b).to_f32();
        }),
        GgmlType::Q8_0 => blocks(src, dst, block_q8_0),
        GgmlType::Q4_0 => blocks(src, dst, block_q4_0),
        GgmlType::Q4_1 => blocks(src, dst, block_q4_1),
        GgmlType::Q4K => blocks(src, dst, block_q4_k),
        GgmlType::Q6K => blocks(src, dst, block_q6_k),
        _ => return Err(GgufError::UnsupportedDequant { ty }),
    }
    Ok(())
}

/// Applies `f` to each (block, output) pair. The caller has checked the
/// lengths, so there are no remainders; fixed-size arrays let the block
/// decoders index without runtime checks.
fn blocks<const B: usize, const N: usize>(
    src: &[u8],
    dst: &mut [f32],
    f: impl Fn(&[u8; B], &mut [f32; N]),
) {
    let (src, _) = src.as_chunks::<B>();
    let (dst, _) = dst.as_chunks_mut::<N>();
    for (b, y) in src.iter().zip(dst) {
        f(b, y);
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// `block_q8_0`: f16 scale, then 32 signed bytes.
fn block_q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..]) {
        *y = f32::from(q as i8) * d;
    }
}

/// `block_q4_0`: f16 scale, then 16 bytes; low nibbles are elements 0..16,
/// high nibbles 16..32, each offset by 8.
fn block_q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..].iter().enumerate() {
        y[j] = (i32::from(q & 0x0F) - 8) as f32 * d;
        y[j + 16] = (i32::from(q >> 4) - 8) as f32 * d;
    }
}

/// `block_q4_1`: f16 scale, f16 minimum, then nibbles as in Q4_0, unsigned.
fn block_q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    for (j, &q) in b[4..].iter().enumerate() {
        y[j] = f32::from(q & 0x0F) * d + m;
        y[j + 16] = f32::from(q >> 4) * d + m;
    }
}

/// Scale and minimum of sub-block `j` (0..8) of a Q4_K/Q5_K super-block
/// (`get_scale_min_k4`). Twelve bytes hold eight 6-bit scales and eight
/// 6-bit minimums: bytes 0..4 have scales 0..4 in their low 6 bits, bytes
/// 4..8 minimums 0..4; sub-blocks 4..8 keep their low 4 bits in the nibbles
/// of bytes 8..12 (scale low, minimum high) and their top 2 bits in the top
/// 2 bits of bytes 0..4 (scales) and 4..8 (minimums).
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K`: f16 d, f16 dmin, 12 bytes of packed scales, 128 bytes of
/// nibbles. Each 64 elements use 32 bytes: low nibbles for the first 32
/// (sub-block 2i), high nibbles for the next 32 (sub-block 2i+1);
/// value = d * scale * q - dmin * min.
fn block_q4_k(b: &[u8; 144], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..];
    for (i, (y, q)) in y.chunks_exact_mut(64).zip(qs.chunks_exact(32)).enumerate() {
        let (sc, m) = scale_min_k4(2 * i, scales);
        let (d1, m1) = (d * f32::from(sc), dmin * f32::from(m));
        let (sc, m) = scale_min_k4(2 * i + 1, scales);
        let (d2, m2) = (d * f32::from(sc), dmin * f32::from(m));
        let (lo, hi) = y.split_at_mut(32);
        for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(q) {
            *lo = d1 * f32::from(q & 0x0F) - m1;
            *hi = d2 * f32::from(q >> 4) - m2;
        }
    }
}

/// `block_q6_K`: 128 bytes of low nibbles (`ql`), 64 bytes of high 2-bit
/// pairs (`qh`), 16 signed 8-bit scales (one per 16 elements), f16 d.
/// Each half of 128 elements uses 64 `ql` bytes, 32 `qh` bytes and 8
/// scales; within it, element `32k + l` takes a nibble of `ql[l + 32(k&1)]`
/// (low for k < 2) and bits `2k..2k+2` of `qh[l]`; value = d * scale * (q - 32).
fn block_q6_k(b: &[u8; 210], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[half * 64..half * 64 + 64];
        let qh = &b[128 + half * 32..128 + half * 32 + 32];
        let sc = &b[192 + half * 8..192 + half * 8 + 8];
        let y = &mut y[half * 128..half * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = i32::from((ql[l] & 0x0F) | (qh[l] & 3) << 4) - 32;
            let q2 = i32::from((ql[l + 32] & 0x0F) | ((qh[l] >> 2) & 3) << 4) - 32;
            let q3 = i32::from((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
            let q4 = i32::from((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
            let scale = |k: usize| d * f32::from(sc[is + k] as i8);
            y[l] = scale(0) * q1 as f32;
            y[l + 32] = scale(2) * q2 as f32;
            y[l + 64] = scale(4) * q3 as f32;
            y[l + 96] = scale(6) * q4 as f32;
        }
    }
}

#[cfg(test)]
#[path = "quant_tests.rs"]
mod tests;

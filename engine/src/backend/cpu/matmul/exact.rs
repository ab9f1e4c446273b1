//! The reference kernel, for [`Activations::F32`](super::Activations): f32
//! activations times the weights dequantized exactly from the repacked blocks
//! (the values [`QMatrix::dequantize_row`] gives), every product and sum in
//! f64 and one rounding to f32 per output. So a product differs from the
//! exact `W·x` by that rounding and the f64 sums' order only, and two
//! backends can be compared without 8-bit activations' error in between.
//!
//! Written for clarity over speed: it is not on the serving path. The sums
//! run across a group's 16 rows (each row's own in element order), which the
//! compiler vectorizes without reordering any row's additions.

use std::ops::Range;

use half::f16;

use super::BLOCK;
use super::layout::{Format, LINE, QMatrix, ROWS};
use super::out::OutRows;

/// Tokens whose sums are held at once: 8 KiB of f64 on the stack, and each
/// block of weights is dequantized once per this many tokens.
const TILE: usize = 64;

/// `out[t*m + i] = Σ_j W[i,j] · x[t*k + j]` for row groups `groups` and
/// tokens `tokens`, with `x` the activations of every token (`k = w.cols()`
/// values each).
pub(super) fn run(
    w: &QMatrix,
    x: &[f32],
    groups: Range<usize>,
    tokens: Range<usize>,
    out: &mut OutRows<'_>,
) {
    let (k, format) = (w.cols(), w.format());
    let mut sums = [[0f64; ROWS]; TILE];
    for g in groups {
        let valid = w.group_rows(g);
        let (d, min) = (w.d(g), w.min(g));
        let mut t0 = tokens.start;
        while t0 < tokens.end {
            let t1 = (t0 + TILE).min(tokens.end);
            let sums = &mut sums[..t1 - t0];
            sums.fill([0.0; ROWS]);
            for (b, lines) in w.group_lines(g).chunks_exact(format.lines()).enumerate() {
                let wb = dequantize_block(format, lines, &d[b], min.get(b));
                for (t, sum) in (t0..t1).zip(sums.iter_mut()) {
                    let xb = &x[t * k + b * BLOCK..][..BLOCK];
                    for (we, &xe) in wb.iter().zip(xb) {
                        let xe = f64::from(xe);
                        for (s, &w) in sum.iter_mut().zip(we) {
                            *s += f64::from(w) * xe;
                        }
                    }
                }
            }
            for (t, sum) in (t0..t1).zip(sums.iter()) {
                let vals = sum.map(|s| s as f32);
                out.store(t, g * ROWS, &vals[..valid]);
            }
            t0 = t1;
        }
    }
}

/// One block of a group's 16 rows as f32 weights, `[element][row]`: the
/// arithmetic of [`QMatrix::dequantize_row`] (and of ggml's
/// `dequantize_row_*`), so bit-identical to it.
fn dequantize_block(
    format: Format,
    lines: &[[u8; LINE]],
    d: &[u16; ROWS],
    min: Option<&[u16; ROWS]>,
) -> [[f32; ROWS]; BLOCK] {
    let d = d.map(|h| f16::from_bits(h).to_f32());
    let min = min.map_or([0.0; ROWS], |m| m.map(|h| f16::from_bits(h).to_f32()));
    let mut wb = [[0f32; ROWS]; BLOCK];
    for (c, line) in lines.iter().enumerate() {
        for r in 0..ROWS {
            for j in 0..4 {
                let q = line[4 * r + j];
                let (lo, hi) = (q & 0x0F, q >> 4);
                match format {
                    Format::Q4_0 => {
                        wb[4 * c + j][r] = (i32::from(lo) - 8) as f32 * d[r];
                        wb[16 + 4 * c + j][r] = (i32::from(hi) - 8) as f32 * d[r];
                    }
                    Format::Q4_1 => {
                        wb[4 * c + j][r] = f32::from(lo) * d[r] + min[r];
                        wb[16 + 4 * c + j][r] = f32::from(hi) * d[r] + min[r];
                    }
                    Format::Q8_0 => wb[4 * c + j][r] = f32::from((q ^ 0x80) as i8) * d[r],
                }
            }
        }
    }
    wb
}

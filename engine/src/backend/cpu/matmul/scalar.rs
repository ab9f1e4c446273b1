//! The portable kernel: plain Rust over the repacked layout, exact integer
//! block dots (no offset trick), one f32 accumulator per row and token. It is
//! what non-x86 targets run and what the SIMD kernels are tested against.

use std::ops::Range;

use half::f16;

use super::acts::{QuantizedActs, byte};
use super::layout::{Format, LINE, QMatrix, ROWS};
use super::out::OutRows;

/// Most tokens one call is given (the driver's token block).
const MAX_TOKENS: usize = super::TOKEN_BLOCK;

pub(super) fn run(
    w: &QMatrix,
    x: &QuantizedActs,
    groups: Range<usize>,
    tokens: Range<usize>,
    out: &mut OutRows<'_>,
) {
    let format = w.format();
    let lines_per_block = format.lines();
    // Tokens are taken MAX_TOKENS at a time so the accumulators stay on the stack.
    for g in groups {
        let valid = w.group_rows(g);
        let (d, min) = (w.d(g), w.min(g));
        let mut t0 = tokens.start;
        while t0 < tokens.end {
            let t1 = (t0 + MAX_TOKENS).min(tokens.end);
            let mut acc = [[0f32; ROWS]; MAX_TOKENS];
            for (b, lines) in w.group_lines(g).chunks_exact(lines_per_block).enumerate() {
                let dw = d[b].map(|h| f16::from_bits(h).to_f32());
                let mw = min.get(b).map(|m| m.map(|h| f16::from_bits(h).to_f32()));
                let (xq, xd, xs) = x.block(b);
                for (t, acc) in (t0..t1).zip(&mut acc) {
                    let dots = block_dots(format, lines, &xq[t]);
                    for r in 0..ROWS {
                        acc[r] += dw[r] * xd[t] * dots[r] as f32;
                        if let Some(mw) = &mw {
                            acc[r] += mw[r] * xs[t];
                        }
                    }
                }
            }
            for (t, acc) in (t0..t1).zip(&acc) {
                out.store(t, g * ROWS, &acc[..valid]);
            }
            t0 = t1;
        }
    }
}

/// The 16 rows' integer dots of one block with one token's block `xb`:
/// `Σ (q - 8)·x` (Q4_0), `Σ q·x` (Q4_1), `Σ q·x` with signed q (Q8_0).
fn block_dots(format: Format, lines: &[[u8; LINE]], xb: &[i32; 8]) -> [i32; ROWS] {
    let mut dots = [0i32; ROWS];
    for (c, line) in lines.iter().enumerate() {
        for (r, dot) in dots.iter_mut().enumerate() {
            for j in 0..4 {
                let q = line[4 * r + j];
                *dot += match format {
                    Format::Q4_0 => {
                        (i32::from(q & 0x0F) - 8) * i32::from(byte(xb, 4 * c + j))
                            + (i32::from(q >> 4) - 8) * i32::from(byte(xb, 16 + 4 * c + j))
                    }
                    Format::Q4_1 => {
                        i32::from(q & 0x0F) * i32::from(byte(xb, 4 * c + j))
                            + i32::from(q >> 4) * i32::from(byte(xb, 16 + 4 * c + j))
                    }
                    Format::Q8_0 => i32::from((q ^ 0x80) as i8) * i32::from(byte(xb, 4 * c + j)),
                };
            }
        }
    }
    dots
}

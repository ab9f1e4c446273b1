//! The repacked weight layout shared by every kernel.
//!
//! Rows are taken 16 at a time (a *group*; the last one is padded with zero
//! rows). For each group and each 32-element block the quantized values are
//! stored as 64-byte *lines*: byte `4r + j` of line `c` is the `j`-th of 4
//! consecutive values of row `r`, so a line is one zmm register with a row in
//! each 32-bit lane.
//!
//! - Q4 (Q4_0, Q4_1): 4 lines; line `c` holds the block's packed bytes
//!   `4c..4c+4` of each row, i.e. elements `4c..4c+4` in the low nibbles and
//!   `16+4c..16+4c+4` in the high nibbles (ggml's own nibble order).
//! - Q8: 8 lines; line `c` holds elements `4c..4c+4` as `q + 128` (u8).
//!
//! Scales stay f16 (so a repacked matrix is exactly as large as the ggml one
//! and decode reads no more bytes): `d[group][block][row]`, and for Q4_1
//! `min[group][block][row]`. Groups are contiguous, so a run of groups is one
//! sequential stream for the prefetchers.
//!
//! Other ggml types are dequantized and requantized to Q8_0 at load (see
//! [`QMatrix::from_raw`]).

use half::f16;

use super::{BLOCK, Kernel, MatmulError};
use crate::gguf::{GgmlType, dequantize_row};

/// Rows per group: one 32-bit lane each in a 512-bit register.
pub(super) const ROWS: usize = 16;
/// Bytes of one line: 4 values for each of the group's rows.
pub(super) const LINE: usize = 4 * ROWS;

/// How the quantized bytes of a repacked matrix are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// Nibbles, `w = d·(u - 8)`.
    Q4_0,
    /// Nibbles, `w = d·u + min`.
    Q4_1,
    /// Bytes, `w = d·(u - 128)`.
    Q8_0,
}

impl Format {
    /// Lines per (group, block).
    pub(super) const fn lines(self) -> usize {
        match self {
            Format::Q4_0 | Format::Q4_1 => 4,
            Format::Q8_0 => 8,
        }
    }
}

/// A weight matrix of `m` rows (output features) by `k` columns (input
/// features), repacked for the matmul kernels.
pub struct QMatrix {
    m: usize,
    k: usize,
    format: Format,
    /// The ggml type the weights came in.
    source: GgmlType,
    kernel: Kernel,
    /// Lines, `[group][block][line]`, from `quants[quants_at..]` (64-byte aligned).
    quants: Vec<u8>,
    quants_at: usize,
    /// f16 bits, `[group][block][row]`.
    d: Vec<[u16; ROWS]>,
    /// Q4_1 only, like `d`.
    min: Vec<[u16; ROWS]>,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QMatrix")
            .field("m", &self.m)
            .field("k", &self.k)
            .field("source", &self.source)
            .field("format", &self.format)
            .field("kernel", &self.kernel)
            .finish()
    }
}

impl QMatrix {
    /// Repacks `m` rows of `k` elements of ggml type `ty` (`data` as in a
    /// GGUF tensor: row after row). `k` must be a multiple of 32.
    ///
    /// Q4_0, Q4_1 and Q8_0 are repacked losslessly. F32, F16, BF16, Q4_K and
    /// Q6_K are dequantized and requantized to Q8_0 (ggml's rounding): the
    /// added error is at most half a step of 1/127 of each 32-value block's
    /// largest magnitude, below what Q8 activations already cost, and the
    /// matrix runs on the integer kernels at 1.06 bytes per weight.
    pub fn from_raw(ty: GgmlType, m: usize, k: usize, data: &[u8]) -> Result<QMatrix, MatmulError> {
        let row_bytes = ty
            .row_bytes(k)
            .filter(|_| k > 0 && k.is_multiple_of(BLOCK))
            .ok_or(MatmulError::RowLength { ty, m, k })?;
        let expected = row_bytes
            .checked_mul(m)
            .ok_or(MatmulError::RowLength { ty, m, k })?;
        if data.len() != expected {
            return Err(MatmulError::DataLength {
                ty,
                m,
                k,
                expected,
                got: data.len(),
            });
        }
        let format = match ty {
            GgmlType::Q4_0 => Format::Q4_0,
            GgmlType::Q4_1 => Format::Q4_1,
            GgmlType::Q8_0
            | GgmlType::F32
            | GgmlType::F16
            | GgmlType::Bf16
            | GgmlType::Q4K
            | GgmlType::Q6K => Format::Q8_0,
            _ => return Err(MatmulError::UnsupportedType { ty }),
        };
        let mut w = QMatrix::zeroed(format, ty, m, k);
        let rows = data.chunks_exact(row_bytes);
        match ty {
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => {
                for (i, row) in rows.enumerate() {
                    w.pack_row(i, row);
                }
            }
            _ => {
                let mut f = vec![0f32; k];
                let mut q8 = vec![0u8; k / BLOCK * 34];
                for (i, row) in rows.enumerate() {
                    dequantize_row(ty, row, &mut f)
                        .map_err(|source| MatmulError::Convert { ty, source })?;
                    quantize_row_q8_0(&f, &mut q8);
                    w.pack_row(i, &q8);
                }
            }
        }
        Ok(w)
    }

    fn zeroed(format: Format, source: GgmlType, m: usize, k: usize) -> QMatrix {
        let groups = m.div_ceil(ROWS);
        let blocks = groups * (k / BLOCK);
        let len = blocks * format.lines() * LINE;
        // Padding rows are weight 0 with scale 0: Q8's zero is the byte 128.
        let fill = if format == Format::Q8_0 { 0x80 } else { 0 };
        let mut quants = vec![fill; len + 63];
        // Cache-line aligned, so a line never straddles two.
        let quants_at = quants.as_ptr().align_offset(64).min(63);
        quants.truncate(quants_at + len);
        QMatrix {
            m,
            k,
            format,
            source,
            kernel: Kernel::detect(),
            quants,
            quants_at,
            d: vec![[0; ROWS]; blocks],
            min: if format == Format::Q4_1 {
                vec![[0; ROWS]; blocks]
            } else {
                Vec::new()
            },
        }
    }

    /// Stores row `i` given as ggml Q4_0 / Q4_1 / Q8_0 bytes (per `self.format`).
    fn pack_row(&mut self, i: usize, src: &[u8]) {
        let nb = self.blocks();
        let (g, r) = (i / ROWS, i % ROWS);
        let lines = self.format.lines();
        let format = self.format;
        let block_bytes = match format {
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
            Format::Q8_0 => 34,
        };
        for (b, blk) in src.chunks_exact(block_bytes).enumerate() {
            let gb = g * nb + b;
            self.d[gb][r] = u16::from_le_bytes([blk[0], blk[1]]);
            let qs = match format {
                Format::Q4_1 => {
                    self.min[gb][r] = u16::from_le_bytes([blk[2], blk[3]]);
                    &blk[4..]
                }
                _ => &blk[2..],
            };
            let at = self.quants_at + gb * lines * LINE;
            let dst = &mut self.quants[at..at + lines * LINE];
            for (c, four) in qs.chunks_exact(4).enumerate() {
                for (j, &q) in four.iter().enumerate() {
                    // Q8_0: i8 → u8 + 128 is flipping the sign bit.
                    dst[c * LINE + 4 * r + j] = if format == Format::Q8_0 { q ^ 0x80 } else { q };
                }
            }
        }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.m
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.k
    }

    /// Bytes of repacked weights and scales.
    pub fn bytes(&self) -> usize {
        self.quants.len() - self.quants_at + 2 * ROWS * (self.d.len() + self.min.len())
    }

    /// The ggml type the weights were given in.
    pub fn source_type(&self) -> GgmlType {
        self.source
    }

    /// The kernel [`super::matmul`] runs this matrix on.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Moves the matrix to another kernel (for tests and benches; the
    /// detected one is the fastest).
    pub fn set_kernel(&mut self, kernel: Kernel) -> Result<(), MatmulError> {
        if !kernel.is_available() {
            return Err(MatmulError::KernelUnavailable { kernel });
        }
        self.kernel = kernel;
        Ok(())
    }

    /// Row `i` dequantized into `out` (`cols()` values); this is how token
    /// embeddings are gathered from `token_embd`. Bit-identical to
    /// [`crate::gguf::dequantize_row`] on the original Q4_0/Q4_1/Q8_0 row.
    ///
    /// # Panics
    /// If `i >= rows()` or `out.len() != cols()`.
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        assert!(i < self.m, "row {i} of a {}-row matrix", self.m);
        assert_eq!(
            out.len(),
            self.k,
            "row has {} values, output holds {}",
            self.k,
            out.len()
        );
        let (g, r) = (i / ROWS, i % ROWS);
        for (b, y) in out.chunks_exact_mut(BLOCK).enumerate() {
            let d = f16::from_bits(self.d(g)[b][r]).to_f32();
            let lines = self.lines(g, b);
            match self.format {
                Format::Q4_0 | Format::Q4_1 => {
                    let min = if self.format == Format::Q4_1 {
                        f16::from_bits(self.min(g)[b][r]).to_f32()
                    } else {
                        0.0
                    };
                    for e in 0..16 {
                        let q = lines[e / 4][4 * r + e % 4];
                        let (lo, hi) = (q & 0x0F, q >> 4);
                        if self.format == Format::Q4_1 {
                            y[e] = f32::from(lo) * d + min;
                            y[e + 16] = f32::from(hi) * d + min;
                        } else {
                            y[e] = (i32::from(lo) - 8) as f32 * d;
                            y[e + 16] = (i32::from(hi) - 8) as f32 * d;
                        }
                    }
                }
                Format::Q8_0 => {
                    for (e, y) in y.iter_mut().enumerate() {
                        let q = (lines[e / 4][4 * r + e % 4] ^ 0x80) as i8;
                        *y = f32::from(q) * d;
                    }
                }
            }
        }
    }

    pub(super) fn format(&self) -> Format {
        self.format
    }

    /// Blocks per row.
    pub(super) fn blocks(&self) -> usize {
        self.k / BLOCK
    }

    /// Row groups (the last one possibly partial).
    pub(super) fn groups(&self) -> usize {
        self.m.div_ceil(ROWS)
    }

    /// Rows of group `g` that exist (16 except maybe for the last group).
    pub(super) fn group_rows(&self, g: usize) -> usize {
        (self.m - g * ROWS).min(ROWS)
    }

    /// The lines of group `g`, `[block][line]` flattened: `blocks() * format.lines()` lines.
    pub(super) fn group_lines(&self, g: usize) -> &[[u8; LINE]] {
        let per_group = self.blocks() * self.format.lines() * LINE;
        let at = self.quants_at + g * per_group;
        self.quants[at..at + per_group].as_chunks::<LINE>().0
    }

    /// The lines of block `b` of group `g`.
    fn lines(&self, g: usize, b: usize) -> &[[u8; LINE]] {
        let l = self.format.lines();
        &self.group_lines(g)[b * l..(b + 1) * l]
    }

    /// Scales of group `g`, one array of f16 bits per block.
    pub(super) fn d(&self, g: usize) -> &[[u16; ROWS]] {
        let nb = self.blocks();
        &self.d[g * nb..(g + 1) * nb]
    }

    /// Q4_1 minimums of group `g` (empty for other formats).
    pub(super) fn min(&self, g: usize) -> &[[u16; ROWS]] {
        let nb = self.blocks();
        self.min.get(g * nb..(g + 1) * nb).unwrap_or(&[])
    }
}

/// ggml's `quantize_row_q8_0_ref`: per 32 values, `d = amax/127` stored as
/// f16 and `q = round(x/d)` (ties away from zero, as `roundf`).
pub(super) fn quantize_row_q8_0(x: &[f32], out: &mut [u8]) {
    for (x, o) in x.chunks_exact(BLOCK).zip(out.chunks_exact_mut(34)) {
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        o[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        for (o, &v) in o[2..].iter_mut().zip(x) {
            *o = ((v * id).round() as i8) as u8;
        }
    }
}

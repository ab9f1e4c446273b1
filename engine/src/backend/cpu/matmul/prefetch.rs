//! Software prefetch of the next panel's weights while the current panel is
//! being multiplied.
//!
//! In a batched product each weight line is first read from memory by the
//! panel's first token tile and then served from L2 to the others; without
//! help that first tile waits on DRAM and nothing computes meanwhile (a
//! 49152×576 head at 64 tokens ran 20% below the same kernel on
//! cache-resident weights). Spreading the next panel's lines over this
//! panel's tiles keeps memory and the multipliers busy at once.
#![allow(unsafe_code)]

use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};

use super::layout::{LINE, QMatrix, ROWS};

/// Prefetches part `part` of `parts` of group `g`'s lines (and, with part 0,
/// its scales) into L2. Prefetching is only a hint: no fault, no effect on
/// results.
#[inline]
pub(super) fn group_part(w: &QMatrix, g: usize, part: usize, parts: usize) {
    let lines = w.group_lines(g);
    let (start, end) = (lines.len() * part / parts, lines.len() * (part + 1) / parts);
    for line in &lines[start..end] {
        // SAFETY: `prefetcht1` of an address inside `line`; it cannot fault
        // and needs only SSE, which every x86-64 CPU has.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast()) };
    }
    if part == 0 {
        for scales in [w.d(g), w.min(g)] {
            // 64 bytes cover two blocks' 16 f16 scales.
            for pair in scales.chunks(LINE / (2 * ROWS)) {
                // SAFETY: as above, an address inside `scales`.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(pair.as_ptr().cast()) };
            }
        }
    }
}

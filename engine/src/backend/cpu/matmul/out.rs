//! Disjoint writers into the output of one matmul.
//!
//! The output is token-major (`out[t*m + i]`) while work is split by rows, so
//! each worker owns a strided set of runs that safe slicing cannot hand out
//! without allocating a list of them per call. This module's one unsafe idea:
//! workers get [`OutRows`] for disjoint row ranges of the same buffer, and
//! every write is checked to fall inside the writer's own range.
#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::ops::Range;

use rayon::prelude::*;

/// Write access to rows `rows` of every token of a `n × m` output.
pub(super) struct OutRows<'a> {
    ptr: *mut f32,
    m: usize,
    n: usize,
    rows: Range<usize>,
    _out: PhantomData<&'a mut [f32]>,
}

impl OutRows<'_> {
    /// `out[t*m + row0 .. t*m + row0 + vals.len()] = vals`.
    ///
    /// # Panics
    /// If that range is not within this writer's rows, or `t >= n`.
    #[inline]
    pub(super) fn store(&mut self, t: usize, row0: usize, vals: &[f32]) {
        assert!(
            t < self.n && row0 >= self.rows.start && row0 + vals.len() <= self.rows.end,
            "write of token {t} rows {row0}..{} outside {:?}",
            row0 + vals.len(),
            self.rows
        );
        // SAFETY: `ptr` points to `n * m` floats borrowed mutably for 'a (see
        // `for_each_row_chunk`); the assert keeps the write within token `t`'s
        // run of this writer's rows, which no other writer holds.
        unsafe {
            std::ptr::copy_nonoverlapping(
                vals.as_ptr(),
                self.ptr.add(t * self.m + row0),
                vals.len(),
            );
        }
    }
}

/// The output's base pointer, shared by the workers that each write their own
/// rows through an [`OutRows`].
#[derive(Clone, Copy)]
struct Base(*mut f32);

impl Base {
    /// A method, not a field access, so closures capture the `Sync` wrapper
    /// rather than the raw pointer inside it.
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: workers only write through `OutRows`, whose row ranges are disjoint
// (one per chunk index), so sharing the pointer across threads races nowhere.
unsafe impl Send for Base {}
// SAFETY: as for `Send`.
unsafe impl Sync for Base {}

/// Calls `f` once per run of `chunk_rows` rows of the `n × m` output `out`,
/// on `pool` when given (in parallel) or else on this thread, with a writer
/// for those rows only.
pub(super) fn for_each_row_chunk<F>(
    out: &mut [f32],
    m: usize,
    n: usize,
    chunk_rows: usize,
    pool: Option<&rayon::ThreadPool>,
    f: F,
) where
    F: Fn(Range<usize>, &mut OutRows<'_>) + Sync,
{
    assert_eq!(out.len(), n * m);
    let chunk_rows = chunk_rows.max(1);
    let chunks = m.div_ceil(chunk_rows);
    let base = Base(out.as_mut_ptr());
    let run = |c: usize| {
        let rows = c * chunk_rows..((c + 1) * chunk_rows).min(m);
        let mut w = OutRows {
            ptr: base.get(),
            m,
            n,
            rows: rows.clone(),
            _out: PhantomData,
        };
        f(rows, &mut w);
    };
    match pool {
        Some(pool) => pool.install(|| (0..chunks).into_par_iter().for_each(run)),
        None => (0..chunks).for_each(run),
    }
    // `out`'s mutable borrow ends here, after every writer is gone.
}

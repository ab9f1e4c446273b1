//! Every kernel against an f64 reference built from the GGUF reader's scalar
//! dequantization, on random matrices of every supported type, and on the
//! real model's tensors.

use half::{bf16, f16};

use super::layout::quantize_row_q8_0;
use super::*;
use crate::gguf::{GgufFile, dequantize_row};

/// SplitMix64: seeded, so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Roughly normal, with an occasional outlier as real activations have.
    fn act(&mut self) -> f32 {
        let v = (0..4).map(|_| self.unit()).sum::<f32>();
        if self.next().is_multiple_of(97) {
            v * 30.0
        } else {
            v
        }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// ggml bytes for an `m × k` matrix of type `ty`: random quants (every byte
/// value, so Q8_0's -128 too) with f16 scales in a realistic range.
fn random_matrix(rng: &mut Rng, ty: GgmlType, m: usize, k: usize) -> Vec<u8> {
    let f16_at = |b: &mut [u8], at: usize, v: f32| {
        b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes())
    };
    let mut data = Vec::new();
    for _ in 0..m {
        let mut row = rng.bytes(ty.row_bytes(k).expect("valid row length"));
        let bs = ty.type_size();
        match ty {
            GgmlType::F32 => {
                for v in row.chunks_exact_mut(4) {
                    v.copy_from_slice(&rng.unit().to_le_bytes());
                }
            }
            GgmlType::F16 => {
                for v in row.chunks_exact_mut(2) {
                    v.copy_from_slice(&f16::from_f32(rng.unit()).to_le_bytes());
                }
            }
            GgmlType::Bf16 => {
                for v in row.chunks_exact_mut(2) {
                    v.copy_from_slice(&bf16::from_f32(rng.unit()).to_le_bytes());
                }
            }
            _ => {
                for b in row.chunks_exact_mut(bs) {
                    let d = 0.002 + 0.02 * rng.unit().abs();
                    let min = 0.1 * rng.unit();
                    match ty {
                        GgmlType::Q4_0 | GgmlType::Q8_0 => f16_at(b, 0, d),
                        GgmlType::Q4_1 | GgmlType::Q4K => {
                            f16_at(b, 0, d);
                            f16_at(b, 2, min.abs());
                        }
                        GgmlType::Q6K => f16_at(b, 208, d),
                        _ => unreachable!("no generator for {ty}"),
                    }
                }
            }
        }
        data.extend_from_slice(&row);
    }
    data
}

/// The weights a `QMatrix` built from (`ty`, `data`) multiplies by, as the
/// GGUF reader decodes them: the bytes themselves for Q4_0/Q4_1/Q8_0, their
/// Q8_0 requantization otherwise.
fn effective_weights(ty: GgmlType, m: usize, k: usize, data: &[u8]) -> Vec<f32> {
    let rb = ty.row_bytes(k).expect("valid row length");
    let mut w = vec![0f32; m * k];
    for (row, out) in data.chunks_exact(rb).zip(w.chunks_exact_mut(k)) {
        match ty {
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => {
                dequantize_row(ty, row, out).expect("dequantizable");
            }
            _ => {
                let mut f = vec![0f32; k];
                dequantize_row(ty, row, &mut f).expect("dequantizable");
                let mut q8 = vec![0u8; k / BLOCK * 34];
                quantize_row_q8_0(&f, &mut q8);
                dequantize_row(GgmlType::Q8_0, &q8, out).expect("dequantizable");
            }
        }
    }
    w
}

/// Per weight, the magnitude the kernels' float sums carry besides `|w|`:
/// the offset (`8d`, `128d`) or minimum folded out of the integer part.
fn offset_magnitude(ty: GgmlType, row: &[u8], w: &[f32]) -> Vec<f32> {
    let h = |b: &[u8], at: usize| f16::from_le_bytes([b[at], b[at + 1]]).to_f32().abs();
    let per_block: Vec<f32> = match ty {
        GgmlType::Q4_0 => row.chunks_exact(18).map(|b| 8.0 * h(b, 0)).collect(),
        GgmlType::Q4_1 => row.chunks_exact(20).map(|b| h(b, 2)).collect(),
        GgmlType::Q8_0 => row.chunks_exact(34).map(|b| 128.0 * h(b, 0)).collect(),
        // Requantized to Q8_0: 128·d with d = f16(amax/127).
        _ => w
            .chunks_exact(BLOCK)
            .map(|b| 1.02 * b.iter().fold(0f32, |a, v| a.max(v.abs())))
            .collect(),
    };
    per_block
        .into_iter()
        .flat_map(|o| std::iter::repeat_n(o, BLOCK))
        .collect()
}

/// Reference results in f64: `exact` on the activations as quantized
/// (`q·d`), `loose` on the original f32 activations, and per output the
/// tight tolerance and the quantization error bound.
struct Reference {
    exact: Vec<f64>,
    tight: Vec<f64>,
    loose: Vec<f64>,
    bound: Vec<f64>,
}

fn reference(
    ty: GgmlType,
    w: &[f32],
    data: &[u8],
    m: usize,
    k: usize,
    x: &[f32],
    acts: &QuantizedActs,
) -> Reference {
    let n = acts.tokens();
    let rb = ty.row_bytes(k).expect("valid row length");
    let mut r = Reference {
        exact: vec![0.0; n * m],
        tight: vec![0.0; n * m],
        loose: vec![0.0; n * m],
        bound: vec![0.0; n * m],
    };
    for i in 0..m {
        let wi = &w[i * k..(i + 1) * k];
        let off = offset_magnitude(ty, &data[i * rb..(i + 1) * rb], wi);
        for t in 0..n {
            let (mut e, mut l, mut mag, mut qerr) = (0f64, 0f64, 0f64, 0f64);
            for j in 0..k {
                let (q, d) = acts.value(t, j);
                let xq = f64::from(q) * f64::from(d);
                let wj = f64::from(wi[j]);
                e += wj * xq;
                l += wj * f64::from(x[t * k + j]);
                mag += (wj.abs() + f64::from(off[j])) * xq.abs();
                qerr += wj.abs() * 0.5001 * f64::from(d);
            }
            let at = t * m + i;
            r.exact[at] = e;
            r.tight[at] = 1e-5 * mag + 1e-30;
            r.loose[at] = l;
            r.bound[at] = qerr + 1e-5 * mag + 1e-30;
        }
    }
    r
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

fn random_acts(rng: &mut Rng, n: usize, k: usize) -> Vec<f32> {
    (0..n * k).map(|_| rng.act()).collect()
}

/// Runs every available kernel on (ty, m, k, n) and checks each against the
/// reference and against the scalar kernel.
fn check_all_kernels(
    rng: &mut Rng,
    ty: GgmlType,
    m: usize,
    k: usize,
    ns: &[usize],
    pool: &rayon::ThreadPool,
) {
    let data = random_matrix(rng, ty, m, k);
    let w_eff = effective_weights(ty, m, k, &data);
    let mut w = QMatrix::from_raw(ty, m, k, &data).expect("valid matrix");
    let mut row = vec![0f32; k];
    for i in [0, m / 2, m - 1] {
        w.dequantize_row(i, &mut row);
        assert!(
            row.iter()
                .zip(&w_eff[i * k..])
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{ty} {m}x{k}: dequantized row {i} differs from the reader's"
        );
    }
    for &n in ns {
        let x = random_acts(rng, n, k);
        let mut acts = QuantizedActs::with_kernel(Kernel::Scalar).expect("scalar");
        acts.quantize(&x, n, k);
        let r = reference(ty, &w_eff, &data, m, k, &x, &acts);
        let mut scalar_out = vec![0f32; n * m];
        for kernel in Kernel::available() {
            w.set_kernel(kernel).expect("available");
            let mut out = vec![f32::NAN; n * m];
            matmul(&w, &acts, &mut out, pool);
            for at in 0..n * m {
                let (t, i) = (at / m, at % m);
                let o = f64::from(out[at]);
                assert!(
                    (o - r.exact[at]).abs() <= r.tight[at],
                    "{} {ty} {m}x{k} n={n}: out[t={t}, i={i}] = {o}, reference {} (tolerance {})",
                    kernel.name(),
                    r.exact[at],
                    r.tight[at]
                );
                assert!(
                    (o - r.loose[at]).abs() <= r.bound[at],
                    "{} {ty} {m}x{k} n={n}: out[t={t}, i={i}] = {o}, f32 reference {} (bound {})",
                    kernel.name(),
                    r.loose[at],
                    r.bound[at]
                );
                if kernel == Kernel::Scalar {
                    scalar_out[at] = out[at];
                } else {
                    let s = f64::from(scalar_out[at]);
                    assert!(
                        (o - s).abs() <= 2.0 * r.tight[at],
                        "{} vs scalar, {ty} {m}x{k} n={n}: out[t={t}, i={i}] = {o} vs {s}",
                        kernel.name()
                    );
                }
            }
        }
    }
}

const NS: [usize; 7] = [1, 2, 3, 5, 8, 17, 64];

#[test]
fn q4_0_q4_1_q8_0_every_kernel_matches_reference() {
    let pool = pool(2);
    let mut rng = Rng(1);
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
        for k in [32, 576, 1536] {
            // 53: three full groups and a partial one.
            check_all_kernels(&mut rng, ty, 53, k, &NS, &pool);
        }
    }
}

#[test]
fn converted_types_every_kernel_matches_reference() {
    let pool = pool(2);
    let mut rng = Rng(2);
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::Bf16] {
        for k in [32, 576] {
            check_all_kernels(&mut rng, ty, 21, k, &[1, 5, 17], &pool);
        }
    }
    for ty in [GgmlType::Q4K, GgmlType::Q6K] {
        check_all_kernels(&mut rng, ty, 21, 512, &[1, 5, 17], &pool);
    }
}

#[test]
fn small_and_split_shapes() {
    let mut rng = Rng(3);
    // Fewer rows than a group, and one row.
    for m in [1, 7, 16, 17] {
        check_all_kernels(&mut rng, GgmlType::Q4_1, m, 64, &[1, 3, 9], &pool(2));
    }
    // Many chunks across threads, one thread, and a token count past the
    // driver's token block.
    check_all_kernels(
        &mut rng,
        GgmlType::Q8_0,
        16 * 40 + 3,
        576,
        &[1, 17],
        &pool(2),
    );
    check_all_kernels(&mut rng, GgmlType::Q4_0, 16 * 40 + 3, 576, &[130], &pool(2));
    check_all_kernels(&mut rng, GgmlType::Q4_1, 100, 96, &[9], &pool(1));
}

#[test]
fn quantizers_agree_bit_for_bit() {
    let mut rng = Rng(4);
    // 64 tokens of 576: large enough for `quantize_in` to split.
    let (n, k) = (64, 576);
    let mut x = random_acts(&mut rng, n, k);
    x[..32].fill(0.0);
    // A subnormal block: 1/d overflows to infinity.
    for (j, v) in x[32..64].iter_mut().enumerate() {
        *v = f32::from_bits(j as u32 * 3);
    }
    // Exact ties: amax 127 gives d = 1, so 2.5 and -0.5 round to even.
    x[64] = 127.0;
    x[65] = 2.5;
    x[66] = -0.5;
    x[67] = 3.5;
    x[96] = 1e30;
    x[97] = -3e29;
    let mut reference = QuantizedActs::with_kernel(Kernel::Scalar).expect("scalar");
    reference.quantize(&x, n, k);
    assert_eq!(reference.value(0, 65), (2, 1.0));
    assert_eq!(reference.value(0, 66).0, 0);
    assert_eq!(reference.value(0, 67).0, 4);
    let same = |a: &QuantizedActs, what: &str| {
        assert_eq!((a.tokens(), a.cols()), (n, k));
        for b in 0..k / BLOCK {
            let (q, d, s) = a.block(b);
            let (rq, rd, rs) = reference.block(b);
            assert_eq!(q, rq, "{what} block {b}: quants");
            assert!(
                d.iter().zip(rd).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{what} block {b}: scales"
            );
            assert!(
                s.iter().zip(rs).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{what} block {b}: sums"
            );
        }
    };
    let pool = pool(2);
    for kernel in Kernel::available() {
        let mut acts = QuantizedActs::with_kernel(kernel).expect("available");
        // The second quantize reuses (and must fully overwrite) the first's buffers.
        acts.quantize(&x[..k], 1, k);
        acts.quantize(&x, n, k);
        same(&acts, kernel.name());
        acts.quantize(&x[..2 * k], 2, k);
        acts.quantize_in(&x, n, k, &pool);
        same(&acts, &format!("{} on 2 threads", kernel.name()));
    }
}

#[test]
fn bad_shapes_and_types_are_errors() {
    let q41 = |m: usize, k: usize| vec![0u8; m * GgmlType::Q4_1.row_bytes(k).unwrap_or(0)];
    assert!(matches!(
        QMatrix::from_raw(GgmlType::F32, 2, 33, &[0; 2 * 33 * 4]),
        Err(MatmulError::RowLength { k: 33, .. })
    ));
    assert!(matches!(
        QMatrix::from_raw(GgmlType::Q4_1, 2, 0, &[]),
        Err(MatmulError::RowLength { k: 0, .. })
    ));
    assert!(matches!(
        QMatrix::from_raw(GgmlType::Q4K, 1, 32, &[0; 144]),
        Err(MatmulError::RowLength { .. })
    ));
    let mut short = q41(3, 64);
    short.pop();
    assert!(matches!(
        QMatrix::from_raw(GgmlType::Q4_1, 3, 64, &short),
        Err(MatmulError::DataLength {
            expected: 120,
            got: 119,
            ..
        })
    ));
    assert!(matches!(
        QMatrix::from_raw(GgmlType::Q5_0, 1, 32, &[0; 22]),
        Err(MatmulError::UnsupportedType { ty: GgmlType::Q5_0 })
    ));
    assert!(matches!(
        QMatrix::from_raw(GgmlType::Q4_1, usize::MAX / 8, 64, &[]),
        Err(MatmulError::RowLength { .. } | MatmulError::DataLength { .. })
    ));
    let empty = QMatrix::from_raw(GgmlType::Q4_1, 0, 64, &[]).expect("empty matrix");
    let mut acts = QuantizedActs::new();
    acts.quantize(&[0.5; 64], 1, 64);
    matmul(&empty, &acts, &mut [], &pool(2));
    let w = QMatrix::from_raw(GgmlType::Q4_1, 3, 64, &q41(3, 64)).expect("valid");
    assert_eq!(w.bytes(), 16 * 2 * 20, "one padded group of two blocks");
    for kernel in Kernel::ALL {
        let mut w = QMatrix::from_raw(GgmlType::Q4_1, 3, 64, &q41(3, 64)).expect("valid");
        assert_eq!(w.set_kernel(kernel).is_ok(), kernel.is_available());
    }
}

/// The real SmolLM2 file: a Q4_1 attention matrix and the Q8_0 embedding
/// (also the output head), every kernel against the reader's dequantization.
#[test]
fn real_model_tensors() {
    let file = GgufFile::open(crate::testing::real_model_path()).expect("model file opens");
    let pool = pool(2);
    let mut rng = Rng(5);
    for (name, ty) in [
        ("blk.0.attn_q.weight", GgmlType::Q4_1),
        ("token_embd.weight", GgmlType::Q8_0),
    ] {
        let view = file.tensor(name).expect("tensor present");
        assert_eq!(view.ty, ty, "{name}");
        let (m, k) = (view.n_rows(), view.row_len());
        let mut w = QMatrix::from_raw(view.ty, m, k, view.data).expect("valid matrix");
        // Both have a multiple of 16 rows: no padding, exactly the file's bytes.
        assert_eq!(w.bytes(), view.data.len(), "{name}");
        let mut wf = vec![0f32; m * k];
        let mut row = vec![0f32; k];
        for (i, out) in wf.chunks_exact_mut(k).enumerate() {
            view.dequantize_row(i, out).expect("dequantizable");
            if i % 997 == 0 {
                w.dequantize_row(i, &mut row);
                assert!(
                    row.iter()
                        .zip(&*out)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{name} row {i}"
                );
            }
        }
        let n = 3;
        let x = random_acts(&mut rng, n, k);
        let mut acts = QuantizedActs::new();
        acts.quantize(&x, n, k);
        let r = reference(ty, &wf, view.data, m, k, &x, &acts);
        for kernel in Kernel::available() {
            w.set_kernel(kernel).expect("available");
            let mut out = vec![f32::NAN; n * m];
            matmul(&w, &acts, &mut out, &pool);
            for (at, &o) in out.iter().enumerate() {
                let o = f64::from(o);
                assert!(
                    (o - r.exact[at]).abs() <= r.tight[at]
                        && (o - r.loose[at]).abs() <= r.bound[at],
                    "{} {name}: out[{at}] = {o}, reference {} (±{}), f32 reference {} (±{})",
                    kernel.name(),
                    r.exact[at],
                    r.tight[at],
                    r.loose[at],
                    r.bound[at]
                );
            }
        }
    }
}

/// The reference mode: with f32 activations every product is `W·x` in exact
/// arithmetic (the weights as the GGUF reader decodes them, `x` unrounded)
/// up to f32 rounding, for every format, partial groups, one thread and
/// more tokens than a token block; and far nearer to it than 8-bit
/// activations.
#[test]
fn f32_activations_give_exact_products() {
    let mut rng = Rng(6);
    let shapes: [(usize, usize, usize, usize); 5] = [
        // (rows, cols, tokens, threads)
        (53, 576, 1, 2),
        (7, 32, 3, 2),
        (100, 1536, 9, 1),
        (16 * 40 + 3, 96, 130, 2),
        (48, 64, 17, 2),
    ];
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::F16,
    ] {
        for (m, k, n, threads) in shapes {
            let pool = pool(threads);
            let data = random_matrix(&mut rng, ty, m, k);
            let w_eff = effective_weights(ty, m, k, &data);
            let w = QMatrix::from_raw(ty, m, k, &data).expect("valid matrix");
            let x = random_acts(&mut rng, n + 2, k);
            let mut exact = QuantizedActs::with_activations(Activations::F32);
            assert_eq!(exact.activations(), Activations::F32);
            // A larger batch first: the second must hold only its own tokens.
            exact.quantize(&x, n + 2, k);
            let x = &x[..n * k];
            if n % 2 == 0 {
                exact.quantize(x, n, k);
            } else {
                exact.quantize_in(x, n, k, &pool);
            }
            let mut q8 = QuantizedActs::new();
            q8.quantize(x, n, k);
            let (mut out, mut out_q8) = (vec![f32::NAN; n * m], vec![f32::NAN; n * m]);
            matmul(&w, &exact, &mut out, &pool);
            matmul(&w, &q8, &mut out_q8, &pool);
            let (mut err, mut err_q8) = (0f64, 0f64);
            for (at, (&o, &o8)) in out.iter().zip(&out_q8).enumerate() {
                let (t, i) = (at / m, at % m);
                let (mut want, mut mag) = (0f64, 0f64);
                for (&wj, &xj) in w_eff[i * k..(i + 1) * k].iter().zip(&x[t * k..]) {
                    let p = f64::from(wj) * f64::from(xj);
                    want += p;
                    mag += p.abs();
                }
                // One f32 rounding, and f64 sums in whatever order.
                let tol = want.abs() / f64::from(1u32 << 24) + 1e-12 * mag;
                assert!(
                    (f64::from(o) - want).abs() <= tol,
                    "{ty} {m}x{k} n={n}: out[t={t}, i={i}] = {o}, exact {want} (±{tol})"
                );
                err += (f64::from(o) - want).powi(2);
                err_q8 += (f64::from(o8) - want).powi(2);
            }
            assert!(
                err * 1e4 < err_q8,
                "{ty} {m}x{k} n={n}: squared error {err} with f32 activations, {err_q8} with 8-bit"
            );
        }
    }
}

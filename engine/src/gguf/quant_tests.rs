use half::{bf16, f16};

use super::*;

/// Deterministic byte/float source, the same LCG as the script that made
/// the golden values below (so no RNG crate is needed).
struct Lcg(u64);

impl Lcg {
    fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }

    fn byte(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn dequant(ty: GgmlType, src: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n];
    dequantize_row(ty, src, &mut out).expect("dequantize");
    out
}

fn put_f16(buf: &mut [u8], at: usize, v: f32) {
    buf[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

// --- Reference quantizers (ggml's `quantize_row_*_ref`), test-only. ---

fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for blk in x.chunks_exact(32) {
        let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend(blk.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

fn quantize_q4_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for blk in x.chunks_exact(32) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in blk {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        for j in 0..16 {
            let q0 = ((blk[j] * id + 8.5) as i8).min(15) as u8;
            let q1 = ((blk[j + 16] * id + 8.5) as i8).min(15) as u8;
            out.push(q0 | (q1 << 4));
        }
    }
    out
}

fn quantize_q4_1(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for blk in x.chunks_exact(32) {
        let min = blk.iter().fold(f32::MAX, |a, &v| a.min(v));
        let max = blk.iter().fold(-f32::MAX, |a, &v| a.max(v));
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
        for j in 0..16 {
            let q0 = (((blk[j] - min) * id + 0.5) as i8).min(15) as u8;
            let q1 = (((blk[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
            out.push(q0 | (q1 << 4));
        }
    }
    out
}

/// Test rows: blocks of varied magnitude, an all-zero block, a block with
/// one outlier, and a constant block.
fn test_row(rng: &mut Lcg) -> Vec<f32> {
    let mut x = Vec::new();
    for scale in [1e-3f32, 0.05, 1.0, 30.0] {
        for _ in 0..8 {
            x.extend((0..32).map(|_| rng.unit() * scale));
        }
    }
    x.extend([0.0; 32]);
    let mut outlier: Vec<f32> = (0..32).map(|_| rng.unit() * 0.1).collect();
    outlier[7] = 50.0;
    x.extend(outlier);
    x.extend([0.75; 32]);
    x
}

/// Checks each block's error against `bound(block)`.
fn check_round_trip(ty: GgmlType, quantize: fn(&[f32]) -> Vec<u8>, bound: fn(&[f32]) -> f32) {
    let mut rng = Lcg(7);
    for _ in 0..20 {
        let x = test_row(&mut rng);
        let q = quantize(&x);
        assert_eq!(Some(q.len()), ty.row_bytes(x.len()));
        let y = dequant(ty, &q, x.len());
        for (b, (xb, yb)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let limit = bound(xb);
            for (i, (a, b2)) in xb.iter().zip(yb).enumerate() {
                assert!(
                    (a - b2).abs() <= limit,
                    "{ty} block {b} elem {i}: {a} vs {b2}, bound {limit}"
                );
            }
        }
    }
}

fn amax(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |a, v| a.max(v.abs()))
}

/// Most that storing `x` as f16 can change it: 11 significant bits, and a
/// fixed step of 2^-24 below 2^-14 (small blocks have subnormal scales).
/// The bounds below add this, times the largest quant, to the rounding
/// half-step.
fn f16_err(x: f32) -> f32 {
    (x.abs() / 2048.0).max(1.0 / (1u32 << 25) as f32)
}

#[test]
fn q8_0_round_trip() {
    check_round_trip(GgmlType::Q8_0, quantize_q8_0, |x| {
        let d = amax(x) / 127.0;
        d * 0.5 + 127.0 * f16_err(d) + 1e-9
    });
}

#[test]
fn q4_0_round_trip() {
    // Q4_0 maps the signed extreme to -8, so the opposite extreme may clamp
    // at +7: up to one full step of error there.
    check_round_trip(GgmlType::Q4_0, quantize_q4_0, |x| {
        let d = amax(x) / 8.0;
        d + 8.0 * f16_err(d) + 1e-9
    });
}

#[test]
fn q4_1_round_trip() {
    check_round_trip(GgmlType::Q4_1, quantize_q4_1, |x| {
        let min = x.iter().fold(f32::MAX, |a, &v| a.min(v));
        let max = x.iter().fold(-f32::MAX, |a, &v| a.max(v));
        let d = (max - min) / 15.0;
        d * 0.5 + 15.0 * f16_err(d) + f16_err(min) + 1e-6
    });
}

#[test]
fn q4_0_and_q4_1_nibble_order() {
    // Byte j holds element j in its low nibble and element j + 16 in its high one.
    let mut b = vec![0u8; 18];
    put_f16(&mut b, 0, 2.0);
    for j in 0..16 {
        b[2 + j] = (j as u8) | ((15 - j as u8) << 4);
    }
    let y = dequant(GgmlType::Q4_0, &b, 32);
    for j in 0..16 {
        assert_eq!(y[j], (j as f32 - 8.0) * 2.0);
        assert_eq!(y[j + 16], (7.0 - j as f32) * 2.0);
    }

    let mut b = vec![0u8; 20];
    put_f16(&mut b, 0, 0.5);
    put_f16(&mut b, 2, -1.0);
    for j in 0..16 {
        b[4 + j] = (j as u8) | ((15 - j as u8) << 4);
    }
    let y = dequant(GgmlType::Q4_1, &b, 32);
    for j in 0..16 {
        assert_eq!(y[j], j as f32 * 0.5 - 1.0);
        assert_eq!(y[j + 16], (15 - j) as f32 * 0.5 - 1.0);
    }
}

#[test]
fn float_types() {
    let vals = [0.0f32, -1.5, 3.25, 65504.0, -0.000061035156];
    let f32s: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(dequant(GgmlType::F32, &f32s, 5), vals);
    let f16s: Vec<u8> = vals
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect();
    assert_eq!(dequant(GgmlType::F16, &f16s, 5), vals);
    let bf16s: Vec<u8> = [1.0f32, -2.5, 1e30]
        .iter()
        .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
        .collect();
    let y = dequant(GgmlType::Bf16, &bf16s, 3);
    assert_eq!(&y[..2], &[1.0, -2.5]);
    assert!((y[2] / 1e30 - 1.0).abs() < 1e-2);
}

/// Packs eight 6-bit scales and minimums the way ggml's Q4_K quantizer
/// does; the inverse of `scale_min_k4`, written from the layout.
fn pack_scales_k4(sc: [u8; 8], m: [u8; 8]) -> [u8; 12] {
    let mut out = [0u8; 12];
    for j in 0..4 {
        out[j] = sc[j] | (sc[j + 4] >> 4) << 6;
        out[j + 4] = m[j] | (m[j + 4] >> 4) << 6;
        out[j + 8] = (sc[j + 4] & 0x0F) | (m[j + 4] & 0x0F) << 4;
    }
    out
}

#[test]
fn scale_min_k4_unpacks_every_value_in_every_slot() {
    for slot in 0..8 {
        for v in 0..64u8 {
            let mut sc = [63 - v; 8];
            let mut m = [v ^ 0x2A; 8];
            sc[slot] = v;
            m[slot] = 63 - v;
            let packed = pack_scales_k4(sc, m);
            for j in 0..8 {
                assert_eq!(
                    scale_min_k4(j, &packed),
                    (sc[j], m[j]),
                    "slot {slot} v {v} j {j}"
                );
            }
        }
    }
}

#[test]
fn q4_k_known_values() {
    let sc = [1, 17, 33, 63, 5, 40, 62, 31];
    let m = [0, 63, 2, 48, 33, 7, 15, 60];
    let q = |e: usize| ((e * 7 + 3) % 16) as u8;
    let mut b = vec![0u8; 144];
    put_f16(&mut b, 0, 0.5);
    put_f16(&mut b, 2, 0.25);
    b[4..16].copy_from_slice(&pack_scales_k4(sc, m));
    // Sub-block s uses the 32 bytes of group s/2: low nibbles if s is even.
    for e in 0..256 {
        let (s, l) = (e / 32, e % 32);
        let byte = 16 + 32 * (s / 2) + l;
        b[byte] |= if s % 2 == 0 { q(e) } else { q(e) << 4 };
    }
    let y = dequant(GgmlType::Q4K, &b, 256);
    for e in 0..256 {
        let want = 0.5 * f32::from(sc[e / 32]) * f32::from(q(e)) - 0.25 * f32::from(m[e / 32]);
        assert_eq!(y[e], want, "element {e}");
    }
}

#[test]
fn q6_k_known_values() {
    let sc: [i8; 16] = [
        1, -2, 3, -4, 127, -128, 5, 6, -7, 8, 9, -10, 11, 12, -13, 100,
    ];
    let q = |e: usize| ((e * 11 + 5) % 64) as i32 - 32;
    let mut b = vec![0u8; 210];
    // Element e = 128n + 32k + l: nibble of ql[64n + l + 32(k&1)] (low if
    // k < 2), bits 2k..2k+2 of qh[32n + l], scale e / 16.
    for e in 0..256 {
        let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
        let u = (q(e) + 32) as u8;
        let ql = 64 * n + l + 32 * (k & 1);
        b[ql] |= if k < 2 { u & 0x0F } else { (u & 0x0F) << 4 };
        b[128 + 32 * n + l] |= ((u >> 4) & 3) << (2 * k);
    }
    for (i, &s) in sc.iter().enumerate() {
        b[192 + i] = s as u8;
    }
    put_f16(&mut b, 208, 0.25);
    let y = dequant(GgmlType::Q6K, &b, 256);
    for e in 0..256 {
        let want = 0.25 * f32::from(sc[e / 16]) * q(e) as f32;
        assert_eq!(y[e], want, "element {e}");
    }
}

/// Blocks of LCG bytes (seed 42) with fixed scales, dequantized by the gguf
/// Python package (gguf 0.19, `gguf.quants.dequantize`); expected values
/// below are copied from its output.
fn golden(ty: GgmlType, patch: fn(&mut [u8], usize)) -> Vec<f32> {
    let nb = 2;
    let mut b = Lcg(42).bytes(ty.type_size() * nb);
    for (i, blk) in b.chunks_mut(ty.type_size()).enumerate() {
        patch(blk, i);
    }
    dequant(ty, &b, ty.block_size() * nb)
}

fn check_golden(y: &[f32], sum: f64, picks: &[(usize, f32)]) {
    let got: f64 = y.iter().map(|&v| f64::from(v)).sum();
    assert_eq!(got, sum);
    for &(i, v) in picks {
        assert_eq!(y[i], v, "element {i}");
    }
}

#[test]
fn q4_0_matches_gguf_py() {
    let y = golden(GgmlType::Q4_0, |b, i| put_f16(b, 0, [0.0625, 0.5][i]));
    check_golden(
        &y,
        -7.75,
        &[
            (0, 0.0625),
            (1, -0.4375),
            (15, -0.4375),
            (16, -0.125),
            (31, -0.4375),
            (32, -0.5),
            (63, 1.0),
        ],
    );
}

#[test]
fn q4_k_matches_gguf_py() {
    let y = golden(GgmlType::Q4K, |b, i| {
        put_f16(b, 0, [0.0625, 0.5][i]);
        put_f16(b, 2, [0.03125, 0.25][i]);
    });
    check_golden(
        &y,
        36231.6875,
        &[
            (0, 24.09375),
            (1, 1.09375),
            (15, 12.59375),
            (16, 24.09375),
            (31, 12.59375),
            (32, 4.3125),
            (63, -0.1875),
            (64, 1.34375),
            (100, 4.65625),
            (127, 36.34375),
            (128, 12.5),
            (200, 5.3125),
            (255, 2.5625),
            (256, 179.25),
            (300, 83.75),
            (383, 4.75),
            (384, 29.75),
            (511, -10.25),
        ],
    );
}

#[test]
fn q6_k_matches_gguf_py() {
    let y = golden(GgmlType::Q6K, |b, i| put_f16(b, 208, [0.0625, 0.5][i]));
    check_golden(
        &y,
        5949.25,
        &[
            (0, 102.0),
            (1, -138.0),
            (15, -168.0),
            (16, -51.625),
            (31, 36.875),
            (32, 12.25),
            (63, 7.9375),
            (64, -35.875),
            (100, -3.75),
            (127, -90.0),
            (128, 43.875),
            (200, -0.0),
            (255, -39.375),
            (256, -1150.0),
            (300, -238.5),
            (383, -867.0),
            (384, 1705.0),
            (511, 1204.0),
        ],
    );
}

#[test]
fn length_mismatches_and_unsupported_types_are_errors() {
    let mut dst = [0f32; 32];
    let err = dequantize_row(GgmlType::Q4_0, &[0; 17], &mut dst).expect_err("short src");
    assert!(
        err.to_string()
            .contains("32 elements take 18 bytes, got 17"),
        "{err}"
    );
    let err = dequantize_row(GgmlType::Q4_0, &[0; 18], &mut dst[..31]).expect_err("partial");
    assert!(
        err.to_string()
            .contains("not a multiple of the block size 32"),
        "{err}"
    );
    assert!(dequantize_row(GgmlType::Q8_0, &[0; 35], &mut dst).is_err());
    let err = dequantize_row(GgmlType::Q5K, &[0; 176], &mut [0f32; 256]).expect_err("Q5_K");
    assert!(matches!(
        err,
        GgufError::UnsupportedDequant { ty: GgmlType::Q5K }
    ));
    // Empty rows are fine for every decodable type.
    for ty in [GgmlType::F32, GgmlType::Q4_1, GgmlType::Q6K] {
        dequantize_row(ty, &[], &mut []).expect("empty");
    }
}

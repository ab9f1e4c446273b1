//! A portable, vectorizable `exp` for the sampler's weights.
//!
//! `f32::exp` is the platform's libm, whose last bit differs between glibc, musl
//! and macOS, and which the compiler cannot vectorize; a token drawn near a boundary
//! could then differ between machines. This one uses only IEEE-754 additions,
//! multiplications and comparisons, which every platform rounds alike (Rust never
//! fuses them into FMAs on its own), and has no branch, so the loops over a
//! vocabulary vectorize and the weights are bit-identical everywhere.

/// Below this exponent the weight is flushed to zero: e^-80 ≈ 1.8e-35 next to the
/// most likely token's weight of 1 can never be drawn, and stopping here keeps every
/// weight a normal float, so a denormals-are-zero mode set by some other library
/// cannot change a result.
pub(super) const FLUSH_BELOW: f32 = -80.0;

/// 1.5 * 2^23: adding then subtracting it rounds an f32 of magnitude < 2^22 to the
/// nearest integer with the FPU's default rounding.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// ln 2 split so that `k * LN2_HI` is exact for |k| < 2^15 (Cody–Waite).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// e^x for x in [FLUSH_BELOW, 0], within a few ulp; 0 for x below that or NaN
/// (x = -inf included).
#[inline(always)]
pub(super) fn exp_nonpos(x: f32) -> f32 {
    // Not `clamp`, which keeps NaN: `f32::max` returns the other operand, so NaN
    // and -inf become FLUSH_BELOW here and are zeroed by the select at the end.
    #[allow(clippy::manual_clamp)]
    let xc = x.max(FLUSH_BELOW).min(0.0);
    let t = xc * std::f32::consts::LOG2_E + ROUND_MAGIC;
    let k = t - ROUND_MAGIC;
    let r = (xc - k * LN2_HI) - k * LN2_LO;
    // |r| <= ~0.347, where Taylor to r^7 leaves a truncation error under 3e-9.
    let mut p = 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    // k is an integer in [-116, 0], held in the low mantissa bits of `t` as
    // MAGIC + k, so this is exactly 2^k, a normal float. Integer bit arithmetic
    // rather than `k as i32`, which the compiler cannot vectorize (it saturates).
    let k_bits = t.to_bits().wrapping_sub(ROUND_MAGIC.to_bits());
    let scale = f32::from_bits(k_bits.wrapping_add(127) << 23);
    if x >= FLUSH_BELOW { p * scale } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_libm_closely() {
        let mut x = 0.0f32;
        while x >= FLUSH_BELOW {
            let want = f64::from(x).exp();
            let got = f64::from(exp_nonpos(x));
            assert!(
                ((got - want) / want).abs() < 5e-7,
                "x={x} got={got} want={want}"
            );
            x -= 0.001_37;
        }
        for x in [-1e-30, -1e-7, -0.346_573_6, -0.346_573_5, -1.0, FLUSH_BELOW] {
            let want = f64::from(x).exp();
            assert!(
                ((f64::from(exp_nonpos(x)) - want) / want).abs() < 5e-7,
                "x={x}"
            );
        }
    }

    #[test]
    fn exact_one_at_zero_and_zero_out_of_range() {
        assert_eq!(exp_nonpos(0.0), 1.0);
        assert_eq!(exp_nonpos(-0.0), 1.0);
        assert_eq!(exp_nonpos(FLUSH_BELOW - 0.01), 0.0);
        assert_eq!(exp_nonpos(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpos(f32::NAN), 0.0);
        assert!(exp_nonpos(FLUSH_BELOW).is_normal());
    }
}

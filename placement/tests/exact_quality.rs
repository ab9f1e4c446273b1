//! The fast solver against the exact MILP (HiGHS) on a handful of the seeded small
//! instances of the quality benchmark (`benches/exact.rs` runs all 100): every exact
//! plan keeps the rules, the fast solver is never more than 5% above the optimum on any
//! of them (a regression guard; the benchmark's worst over 100 is in BENCHMARKS.md) and
//! within 1% on average.

#![allow(clippy::unwrap_used)]

use meridian_placement::solver::exact::{ExactOptions, lp_bound, solve_exact};
use meridian_placement::solver::{self, SolveOptions, check, generate};

#[test]
fn fast_solver_stays_close_to_the_milp() {
    let mut compared = 0;
    let mut gaps = 0.0;
    for seed in 0..8 {
        let mut instance = generate::random_small(seed);
        // The MILP counts forced moves against a cap, the fast solver does not.
        instance.max_moves = None;
        let Ok(fast) = solver::solve(&instance, &SolveOptions::default()) else {
            // Refused instances are refused by both (the same validation).
            assert!(solve_exact(&instance, &ExactOptions::default()).is_err());
            continue;
        };
        let exact = solve_exact(&instance, &ExactOptions::default()).unwrap();
        assert!(exact.proven, "seed {seed}: HiGHS did not prove its plan");
        let report = check(&instance, &exact.plan).unwrap();
        assert!(report.is_valid(), "seed {seed}: {:?}", report.violations);
        let (f, e) = (fast.objective.total, exact.plan.objective.total);
        // The MILP stops within 0.05% of the optimum, so the fast plan may beat it by
        // that much.
        assert!(
            f >= e * (1.0 - 0.0006) - 1e-9,
            "seed {seed}: fast {f} below MILP {e}"
        );
        assert!(
            f <= e * 1.05 + 1e-9,
            "seed {seed}: fast {f} more than 5% above {e}"
        );
        gaps += (f - e) / e.max(1e-9);
        compared += 1;
    }
    assert!(compared >= 5, "only {compared} instances compared");
    let mean = gaps / f64::from(compared);
    assert!(
        mean <= 0.01,
        "mean gap {:.3}% over {compared} instances",
        100.0 * mean
    );
}

/// The LP bound with its facility-location cuts stays a lower bound (never above the
/// MILP's proven plan), is no weaker than the plain relaxation, and is
/// stronger on some instance: the cuts are valid and do something.
#[test]
fn cut_lp_bound_is_a_bound_and_tighter() {
    let mut tighter = 0;
    for seed in 0..12 {
        let mut instance = generate::random_small(seed);
        instance.max_moves = None;
        let Ok(exact) = solve_exact(&instance, &ExactOptions::default()) else {
            continue;
        };
        assert!(exact.proven, "seed {seed}: HiGHS did not prove its plan");
        let b = lp_bound(&instance, 60.0, 50).unwrap();
        assert!(
            b.converged,
            "seed {seed}: cuts still violated after {} rounds",
            b.rounds
        );
        let optimum = exact.milp_objective;
        assert!(
            b.bound <= optimum * (1.0 + 1e-6) + 1e-6,
            "seed {seed}: bound {} above the optimum {optimum}",
            b.bound
        );
        assert!(
            b.bound >= b.plain - 1e-6,
            "seed {seed}: {} below {}",
            b.bound,
            b.plain
        );
        if b.bound > b.plain * (1.0 + 1e-4) + 1e-6 {
            tighter += 1;
        }
    }
    assert!(tighter > 0, "the cuts tightened no instance");
}

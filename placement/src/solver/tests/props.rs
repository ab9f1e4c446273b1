//! Property tests over generated instances, determinism, and stability of re-planning.

use proptest::prelude::*;

use super::assert_valid;
use crate::solver::generate::random_small;
use crate::solver::{InstanceError, Problem, SolveOptions, replan, solve};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Every generated instance is either refused by validation with a message, or
    /// solved to a plan the independent checker accepts, priced as the checker prices it.
    #[test]
    fn plans_pass_the_checker_or_the_instance_is_refused(seed in any::<u64>(), solve_seed in 0u64..4) {
        let inst = random_small(seed);
        match solve(&inst, &SolveOptions { seed: solve_seed, ..Default::default() }) {
            Ok(plan) => {
                assert_valid(&inst, &plan);
                if let Some(cap) = inst.max_moves {
                    // Only forced moves may exceed the cap: the fleet no longer holding a
                    // current replica, or a floor or pin.
                    let forced = Problem::compile(&inst).is_ok_and(|_| plan.objective.moves > cap);
                    prop_assert!(plan.objective.moves <= cap || forced);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(!msg.is_empty());
                if !matches!(e, InstanceError::Infeasible(_)) {
                    prop_assert_eq!(Problem::compile(&inst).unwrap_err(), e);
                }
            }
        }
    }
}

#[test]
fn most_generated_instances_are_valid() {
    let solved = (0..200u64)
        .filter(|&s| solve(&random_small(s), &SolveOptions::default()).is_ok())
        .count();
    assert!(solved >= 150, "only {solved} of 200 small instances solved");
}

#[test]
fn same_seed_same_plan_byte_for_byte() {
    let catalog = meridian_proto::catalog::Catalog::builtin();
    let big = crate::solver::generate::catalog_instance(catalog, 20, 3);
    for inst in [random_small(11), random_small(12), random_small(13), big] {
        for seed in [0, 5] {
            let opts = SolveOptions {
                seed,
                ..Default::default()
            };
            let (a, b) = (solve(&inst, &opts), solve(&inst, &opts));
            match (a, b) {
                (Ok(a), Ok(b)) => assert_eq!(a.to_json(), b.to_json()),
                (Err(a), Err(b)) => assert_eq!(a, b),
                _ => panic!("one run solved, the other did not"),
            }
        }
    }
}

#[test]
fn generators_are_reproducible() {
    assert_eq!(random_small(42), random_small(42));
    assert_ne!(random_small(42), random_small(43));
}

#[test]
fn replanning_a_plan_moves_nothing() {
    let mut checked = 0;
    for seed in 0..120u64 {
        let mut inst = random_small(seed);
        // A cap limits each step, so a second step may rightly move more.
        inst.max_moves = None;
        let Ok(first) = solve(&inst, &SolveOptions::default()) else {
            continue;
        };
        let again = replan(&inst, &first, &SolveOptions::default()).unwrap();
        assert_eq!(again.objective.moves, 0, "seed {seed}");
        assert_eq!(again.placement, first.placement, "seed {seed}");
        checked += 1;
    }
    assert!(checked > 80);
}

#[test]
fn a_merge_at_a_pinned_site_keeps_the_pin() {
    // Found by the property test: a merge of two replicas at one site took the pinned
    // one too.
    let inst = random_small(8_500_855_404_644_090_353);
    let plan = solve(
        &inst,
        &SolveOptions {
            seed: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_valid(&inst, &plan);
}

//! Spread across failure domains (`min_sites`): the fast and the exact solver both meet
//! it, the checker enforces it, and an impossible spread is refused up front.

#![allow(clippy::unwrap_used)]

use meridian_placement::solver::exact::{ExactOptions, solve_exact};
use meridian_placement::solver::{Instance, SolveOptions, check, solve};

fn instance(min_sites: u32) -> Instance {
    Instance::from_json(&format!(
        r#"{{
  "version": 1,
  "gpu_kinds": [{{"name": "L4", "mem_gib": 24, "cost": 0.25}}, {{"name": "H100", "mem_gib": 80}}],
  "sites": [
    {{"id": "AMS", "jurisdiction": "EU", "lat": 52.3086, "lon": 4.7639, "gpus": {{"L4": 2, "H100": 1}}}},
    {{"id": "FRA", "jurisdiction": "EU", "lat": 50.0333, "lon": 8.5706, "gpus": {{"L4": 1}}}},
    {{"id": "CDG", "jurisdiction": "EU", "lat": 49.0128, "lon": 2.55, "gpus": {{"H100": 2}}}}
  ],
  "models": [{{"id": "m", "mem_gib": 16, "gpus_per_replica": 1,
              "rps_per_replica": {{"L4": 10.0, "H100": 30.0}}, "min_sites": {min_sites}}}],
  "demand": [{{"region": "AMS", "model": "m", "rps": 4.0}}],
  "slo_rtt_ms": 40.0
}}"#
    ))
    .unwrap()
}

fn sites(plan: &meridian_placement::solver::Plan) -> Vec<String> {
    let mut s: Vec<String> = plan.placement.iter().map(|r| r.site.clone()).collect();
    s.sort();
    s.dedup();
    s
}

#[test]
fn both_solvers_spread_and_the_checker_holds_them_to_it() {
    // Without the rule one L4 serves everything.
    let alone = solve(&instance(0), &SolveOptions::default()).unwrap();
    assert_eq!(sites(&alone).len(), 1, "{:?}", alone.placement);

    let inst = instance(2);
    let fast = solve(&inst, &SolveOptions::default()).unwrap();
    let report = check(&inst, &fast).unwrap();
    assert!(report.is_valid(), "{:?}", report.violations);
    assert_eq!(sites(&fast).len(), 2, "{:?}", fast.placement);
    assert_eq!(fast.objective.unserved_rps, 0.0);
    let exact = solve_exact(&inst, &ExactOptions::default()).unwrap();
    assert!(check(&inst, &exact.plan).unwrap().is_valid());
    assert_eq!(sites(&exact.plan).len(), 2);
    // Two L4s at two sites is the optimum; the fast solver finds it too.
    assert!(
        (exact.plan.objective.gpu_cost - 0.5).abs() < 1e-9,
        "{:?}",
        exact.plan.objective
    );
    assert!(fast.objective.total <= exact.plan.objective.total * 1.0005 + 1e-9);

    // The plan without spread breaks the rule.
    let broken = check(&inst, &alone).unwrap();
    assert!(
        broken
            .violations
            .iter()
            .any(|v| v.to_string().contains("min_sites")),
        "{:?}",
        broken.violations
    );

    // Three sites cannot hold a spread over four.
    let err = solve(&instance(4), &SolveOptions::default()).unwrap_err();
    assert!(err.to_string().contains("min_sites 4"), "{err}");
}

//! Tests of the solver, the validation and the checker together. Split by theme:
//! `validate` (each refusal names its culprit), `rules` (the checker rejects each kind
//! of broken plan), `props` (property tests and determinism over generated instances).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod props;
mod rules;
mod validate;

use serde_json::json;

use super::*;

pub(super) const EXAMPLE: &str = include_str!("../../../../deploy/placement/example.json");

/// A small hand-made instance: two EU sites near each other, one US site, two kinds.
pub(super) fn tiny() -> serde_json::Value {
    json!({
        "version": 1,
        "gpu_kinds": [
            {"name": "H100", "mem_gib": 80, "cost": 1.0},
            {"name": "L4", "mem_gib": 24, "cost": 0.25}
        ],
        "sites": [
            {"id": "FRA", "jurisdiction": "EU", "lat": 50.0264, "lon": 8.54313,
             "gpus": {"H100": 2, "L4": 4}, "labels": {"tier": "core"}},
            {"id": "AMS", "jurisdiction": "EU", "lat": 52.3086, "lon": 4.76389,
             "gpus": {"L4": 2}, "labels": {"tier": "edge"}},
            {"id": "IAD", "jurisdiction": "US", "lat": 38.947456, "lon": -77.459929,
             "gpus": {"H100": 2}}
        ],
        "models": [
            {"id": "small", "mem_gib": 16, "gpus_per_replica": 1,
             "rps_per_replica": {"H100": 10.0, "L4": 3.0}},
            {"id": "big", "mem_gib": 140, "gpus_per_replica": 2,
             "rps_per_replica": {"H100": 6.0}, "jurisdictions": ["EU"]}
        ],
        "demand": [
            {"region": "FRA", "model": "small", "rps": 8.0},
            {"region": "AMS", "model": "small", "rps": 2.0, "jurisdictions": ["EU"]},
            {"region": "IAD", "model": "small", "rps": 5.0},
            {"region": "AMS", "model": "big", "rps": 4.0}
        ],
        "slo_rtt_ms": 30.0
    })
}

pub(super) fn instance(v: serde_json::Value) -> Instance {
    serde_json::from_value(v).expect("test instance parses")
}

fn assert_valid(inst: &Instance, plan: &Plan) {
    let report = check(inst, plan).expect("instance is valid");
    assert!(report.is_valid(), "violations: {:#?}", report.violations);
    let (a, b) = (report.objective.total, plan.objective.total);
    assert!(
        (a - b).abs() <= 1e-6 * a.abs().max(1.0),
        "plan says {b}, checker says {a}"
    );
    assert_eq!(report.objective.moves, plan.objective.moves);
    // The plan's routing is a max flow: the checker's best routing serves no more.
    assert!(report.best.unserved_rps >= plan.objective.unserved_rps - 1e-6);
}

#[test]
fn example_file_solves_to_a_valid_plan_serving_everything() {
    let inst = Instance::from_json(EXAMPLE).unwrap();
    assert!(
        inst.unknown_fields().is_empty(),
        "{:?}",
        inst.unknown_fields()
    );
    let plan = solve(&inst, &SolveOptions::default()).unwrap();
    assert_valid(&inst, &plan);
    assert!(plan.objective.unserved_rps < 1e-9, "{:?}", plan.objective);
    // The 70b may only sit on core sites.
    for row in plan.placement.iter().filter(|r| r.model == "llama-3.1-70b") {
        assert!(["AMS", "IAD"].contains(&row.site.as_str()), "{row:?}");
    }
    // The EU-only model stays in the EU, and LHR's demand for it goes unrouted to GB.
    for row in plan.routing.iter().filter(|r| r.model == "mistral-7b-eu") {
        assert!(["AMS", "FRA"].contains(&row.site.as_str()), "{row:?}");
    }
}

#[test]
fn tiny_instance_is_solved_optimally() {
    let inst = instance(tiny());
    let plan = solve(&inst, &SolveOptions::default()).unwrap();
    assert_valid(&inst, &plan);
    // FRA+AMS small: 10 rps within the EU radius, one H100 (10 rps, cost 1) or four L4
    // (12 rps, cost 1) at FRA/AMS; IAD small: 5 rps on one H100 at IAD; big: one
    // 2-GPU H100 replica at FRA. Best cost: 1 + 1 + 2 = 4.
    assert!(plan.objective.unserved_rps < 1e-9, "{:?}", plan.objective);
    assert!(
        (plan.objective.gpu_cost - 4.0).abs() < 1e-9,
        "{:?}",
        plan.placement
    );
}

#[test]
fn unknown_fields_are_kept_and_listed() {
    let mut v = tiny();
    v["models"][0]["min_replica"] = json!(3);
    v["future_field"] = json!({"a": 1});
    let inst = instance(v);
    assert_eq!(
        inst.unknown_fields(),
        vec![
            "future_field".to_string(),
            "models[0].min_replica".to_string()
        ]
    );
    let back: Instance = serde_json::from_str(&serde_json::to_string(&inst).unwrap()).unwrap();
    assert_eq!(back, inst);
}

#[test]
fn plan_round_trips_through_json() {
    let inst = Instance::from_json(EXAMPLE).unwrap();
    let plan = solve(&inst, &SolveOptions::default()).unwrap();
    let back = Plan::from_json(&plan.to_json()).unwrap();
    assert_eq!(back, plan);
}

#[test]
fn replan_of_an_unchanged_instance_moves_nothing() {
    let inst = Instance::from_json(EXAMPLE).unwrap();
    let first = solve(&inst, &SolveOptions::default()).unwrap();
    let again = replan(&inst, &first, &SolveOptions::default()).unwrap();
    assert_eq!(again.objective.moves, 0, "{:#?}", again.placement);
    assert_eq!(again.placement, first.placement);
    // Another seed agrees: no move pays once the plan is its own current placement.
    let other = replan(
        &inst,
        &first,
        &SolveOptions {
            seed: 7,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(other.objective.moves, 0);
}

#[test]
fn current_replicas_are_kept_when_they_serve_as_well() {
    // Today small runs on 4 L4 at FRA (12 rps): as cheap as one H100, so keep it.
    let mut v = tiny();
    v["current"] = json!([{"model": "small", "site": "FRA", "gpu": "L4", "replicas": 4}]);
    let inst = instance(v);
    let plan = solve(&inst, &SolveOptions::default()).unwrap();
    assert_valid(&inst, &plan);
    assert!(
        plan.placement
            .iter()
            .any(|r| r.site == "FRA" && r.gpu == "L4" && r.replicas == 4)
    );
}

#[test]
fn move_cap_keeps_the_current_placement_where_it_binds() {
    let mut v = tiny();
    // A wasteful current placement: small on both H100 at IAD and big nowhere.
    v["current"] = json!([
        {"model": "small", "site": "IAD", "gpu": "H100", "replicas": 2},
        {"model": "small", "site": "AMS", "gpu": "L4", "replicas": 2}
    ]);
    v["max_moves"] = json!(0);
    let inst = instance(v.clone());
    let plan = solve(&inst, &SolveOptions::default()).unwrap();
    assert_valid(&inst, &plan);
    assert_eq!(plan.objective.moves, 0);
    for cap in [1u64, 2, 3] {
        let plan = solve(
            &inst,
            &SolveOptions {
                max_moves: Some(cap),
                ..Default::default()
            },
        )
        .unwrap();
        assert_valid(&inst, &plan);
        assert!(
            plan.objective.moves <= cap,
            "cap {cap}: {:?}",
            plan.objective
        );
    }
    let free = solve(
        &instance({
            let mut w = v;
            w["max_moves"] = json!(null);
            w
        }),
        &SolveOptions::default(),
    )
    .unwrap();
    let capped = solve(&inst, &SolveOptions::default()).unwrap();
    assert!(free.objective.total < capped.objective.total);
}

#[test]
fn floors_and_pins_are_placed_even_without_demand() {
    let mut v = tiny();
    v["demand"] = json!([]);
    v["models"][0]["min_replicas"] = json!(3);
    v["pins"] = json!([{"model": "big", "site": "FRA", "min_replicas": 1}]);
    let inst = instance(v);
    let plan = solve(&inst, &SolveOptions::default()).unwrap();
    assert_valid(&inst, &plan);
    let small: u32 = plan
        .placement
        .iter()
        .filter(|r| r.model == "small")
        .map(|r| r.replicas)
        .sum();
    assert_eq!(small, 3);
    assert!(
        plan.placement
            .iter()
            .any(|r| r.model == "big" && r.site == "FRA")
    );
}

#[test]
fn measured_rtt_overrides_the_formula() {
    // IAD's demand may be served from FRA only if the measured round trip says so.
    let mut v = tiny();
    v["sites"][2]["gpus"] = json!({});
    let refused = instance(v.clone());
    let plan = solve(&refused, &SolveOptions::default()).unwrap();
    assert!((plan.objective.unserved_rps - 5.0).abs() < 1e-9);
    v["rtt_ms"] = json!([{"from": "IAD", "to": "FRA", "ms": 20.0}]);
    let inst = instance(v);
    let plan = solve(&inst, &SolveOptions::default()).unwrap();
    assert_valid(&inst, &plan);
    assert!(plan.objective.unserved_rps < 1e-9);
}

#[test]
fn shared_region_model_pairs_name_their_entry() {
    let mut v = tiny();
    v["demand"] = json!([
        {"region": "AMS", "model": "small", "rps": 4.0, "jurisdictions": ["EU"]},
        {"region": "AMS", "model": "small", "rps": 3.0}
    ]);
    let inst = instance(v);
    let plan = solve(&inst, &SolveOptions::default()).unwrap();
    assert_valid(&inst, &plan);
    assert!(plan.routing.iter().all(|r| r.entry.is_some()));
}

#[test]
fn catalog_instance_solves_to_a_valid_plan() {
    let catalog = meridian_proto::catalog::Catalog::builtin();
    let inst = generate::catalog_instance(catalog, 30, 1);
    assert_eq!(inst.sites.len(), 365);
    let plan = solve(&inst, &SolveOptions::default()).unwrap();
    assert_valid(&inst, &plan);
    let total: f64 = inst.demand.iter().map(|d| d.rps).sum();
    assert!(
        plan.objective.unserved_rps < 0.05 * total,
        "{:?} of {total}",
        plan.objective
    );
    let again = replan(&inst, &plan, &SolveOptions::default()).unwrap();
    assert_eq!(again.objective.moves, 0);
}

#[test]
fn floors_leave_room_for_demand_that_has_nowhere_else_to_go() {
    // AMS's one GPU is the only place AMS's traffic for b may go (3 ms limit); a's
    // floor of two must not take it.
    let inst = instance(json!({
        "version": 1,
        "gpu_kinds": [{"name": "L4", "mem_gib": 24, "cost": 0.25}],
        "sites": [
            {"id": "FRA", "jurisdiction": "EU", "lat": 50.0264, "lon": 8.54313, "gpus": {"L4": 4}},
            {"id": "AMS", "jurisdiction": "EU", "lat": 52.3086, "lon": 4.76389, "gpus": {"L4": 1}}
        ],
        "models": [
            {"id": "a", "mem_gib": 16, "gpus_per_replica": 1, "rps_per_replica": {"L4": 3.0},
             "min_replicas": 2},
            {"id": "b", "mem_gib": 16, "gpus_per_replica": 1, "rps_per_replica": {"L4": 3.0}}
        ],
        "demand": [
            {"region": "FRA", "model": "a", "rps": 1.0},
            {"region": "AMS", "model": "a", "rps": 1.0},
            {"region": "AMS", "model": "b", "rps": 2.0, "slo_rtt_ms": 3.0}
        ],
        "slo_rtt_ms": 30.0
    }));
    for seed in 0..4 {
        let plan = solve(
            &inst,
            &SolveOptions {
                seed,
                ..Default::default()
            },
        )
        .unwrap();
        assert_valid(&inst, &plan);
        assert!(
            plan.objective.unserved_rps < 1e-9,
            "seed {seed}: {:?}",
            plan.placement
        );
        assert!(
            (plan.objective.gpu_cost - 0.75).abs() < 1e-9,
            "{:?}",
            plan.placement
        );
    }
}

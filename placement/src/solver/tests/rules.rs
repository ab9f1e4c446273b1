//! The checker rejects each kind of broken plan, naming the rule and the culprit, and
//! accepts the valid plan they are all made from.

use serde_json::json;

use super::{instance, tiny};
use crate::solver::instance::{Instance, Plan};
use crate::solver::{Rule, best_routing, check};

/// A valid plan for [`tiny`], written by hand.
fn valid_plan() -> serde_json::Value {
    json!({
        "placement": [
            {"model": "small", "site": "FRA", "gpu": "L4", "replicas": 4},
            {"model": "small", "site": "IAD", "gpu": "H100", "replicas": 1},
            {"model": "big", "site": "FRA", "gpu": "H100", "replicas": 1}
        ],
        "routing": [
            {"region": "FRA", "model": "small", "site": "FRA", "rps": 8.0},
            {"region": "AMS", "model": "small", "site": "FRA", "rps": 2.0},
            {"region": "IAD", "model": "small", "site": "IAD", "rps": 5.0},
            {"region": "AMS", "model": "big", "site": "FRA", "rps": 4.0}
        ],
        "objective": {"unserved_rps": 0.0, "gpu_cost": 4.0, "moves": 6, "total": 4.6},
        "solver": {"name": "hand", "seconds": 0.0, "seed": 0}
    })
}

fn plan(v: serde_json::Value) -> Plan {
    serde_json::from_value(v).expect("test plan parses")
}

/// Checks and returns the violated rules, asserting each message names `culprit`.
fn broken(inst: &Instance, p: serde_json::Value, culprit: &str) -> Vec<Rule> {
    let report = check(inst, &plan(p)).expect("the instance is valid");
    assert!(!report.is_valid(), "the broken plan passed");
    for v in &report.violations {
        assert!(
            v.to_string().contains(culprit),
            "{v} does not name {culprit:?}"
        );
    }
    report.violations.iter().map(|v| v.rule).collect()
}

#[test]
fn the_hand_plan_is_valid_and_priced() {
    let inst = instance(tiny());
    let report = check(&inst, &plan(valid_plan())).unwrap();
    assert!(report.is_valid(), "{:?}", report.violations);
    let o = report.objective;
    assert_eq!((o.unserved_rps, o.gpu_cost, o.moves), (0.0, 4.0, 6));
    assert!((o.total - 4.6).abs() < 1e-12);
    assert_eq!(report.best, o);
}

#[test]
fn rule_1_too_many_gpus() {
    let mut p = valid_plan();
    p["placement"][0]["replicas"] = json!(5);
    let rules = broken(&instance(tiny()), p, "site FRA, kind L4");
    assert_eq!(rules, vec![Rule::GpuCount]);
}

#[test]
fn rule_2_wrong_kind() {
    let mut p = valid_plan();
    p["placement"]
        .as_array_mut()
        .unwrap()
        .push(json!({"model": "big", "site": "AMS", "gpu": "L4", "replicas": 1}));
    let rules = broken(&instance(tiny()), p, "model big at site AMS on L4");
    assert_eq!(rules, vec![Rule::Fit]);
}

#[test]
fn rule_3_residency_of_a_replica() {
    let mut p = valid_plan();
    p["placement"][1] = json!({"model": "big", "site": "IAD", "gpu": "H100", "replicas": 1});
    p["routing"].as_array_mut().unwrap().remove(2);
    let rules = broken(&instance(tiny()), p, "model big placed at site IAD in US");
    assert_eq!(rules, vec![Rule::Residency]);
}

#[test]
fn rule_3_residency_of_traffic() {
    // A measured round trip makes IAD close enough to AMS; the AMS traffic is EU-only.
    let mut v = tiny();
    v["rtt_ms"] = json!([{"from": "AMS", "to": "IAD", "ms": 10.0}]);
    let mut p = valid_plan();
    p["routing"][1]["site"] = json!("IAD");
    let rules = broken(
        &instance(v),
        p,
        "region AMS for model small routed to site IAD",
    );
    assert_eq!(rules, vec![Rule::Residency]);
}

#[test]
fn rule_4_latency() {
    let mut p = valid_plan();
    p["routing"][0]["rps"] = json!(5.0);
    p["routing"]
        .as_array_mut()
        .unwrap()
        .push(json!({"region": "FRA", "model": "small", "site": "IAD", "rps": 3.0}));
    let rules = broken(
        &instance(tiny()),
        p,
        "region FRA for model small routed to site IAD",
    );
    assert_eq!(rules, vec![Rule::Latency]);
}

#[test]
fn rule_5_capacity() {
    let mut p = valid_plan();
    p["placement"][0]["replicas"] = json!(3);
    let rules = broken(&instance(tiny()), p, "model small at site FRA");
    assert_eq!(rules, vec![Rule::Capacity]);
}

#[test]
fn rule_6_over_routing() {
    let mut p = valid_plan();
    p["routing"]
        .as_array_mut()
        .unwrap()
        .push(json!({"region": "FRA", "model": "small", "site": "FRA", "rps": 1.0}));
    let rules = broken(&instance(tiny()), p, "region FRA model small");
    assert_eq!(rules, vec![Rule::Demand]);
    let mut p = valid_plan();
    p["routing"][0]["rps"] = json!(-1.0);
    let rules = broken(&instance(tiny()), p, "region FRA model small");
    assert_eq!(rules, vec![Rule::Demand]);
}

#[test]
fn rule_7_floors_and_pins() {
    let mut v = tiny();
    v["pins"] = json!([{"model": "small", "site": "AMS", "min_replicas": 1}]);
    let rules = broken(&instance(v), valid_plan(), "pin of model small at site AMS");
    assert_eq!(rules, vec![Rule::Floors]);
    let mut v = tiny();
    v["models"][0]["min_replicas"] = json!(10);
    let rules = broken(&instance(v), valid_plan(), "model small");
    assert_eq!(rules, vec![Rule::Floors]);
}

#[test]
fn references_to_unknown_things() {
    let mut p = valid_plan();
    p["placement"][1]["site"] = json!("XXX");
    p["routing"].as_array_mut().unwrap().remove(2);
    let rules = broken(&instance(tiny()), p, "XXX");
    assert_eq!(rules, vec![Rule::Reference]);
    // Two entries for (AMS, small): a row that does not say which is ambiguous.
    let mut v = tiny();
    v["demand"]
        .as_array_mut()
        .unwrap()
        .push(json!({"region": "AMS", "model": "small", "rps": 1.0}));
    let rules = broken(&instance(v), valid_plan(), "several demand entries");
    assert_eq!(rules, vec![Rule::Reference]);
}

#[test]
fn best_routing_reroutes_what_a_nearest_first_routing_strands() {
    // AMS's entry may only use AMS (3 ms limit); FRA's may use either. A plan that sends
    // FRA's traffic to AMS strands AMS's; the best routing sends it to FRA.
    let mut v = tiny();
    v["demand"] = json!([
        {"region": "AMS", "model": "small", "rps": 3.0, "slo_rtt_ms": 3.0},
        {"region": "FRA", "model": "small", "rps": 3.0}
    ]);
    let inst = instance(v);
    let p = plan(json!({
        "placement": [
            {"model": "small", "site": "FRA", "gpu": "L4", "replicas": 1},
            {"model": "small", "site": "AMS", "gpu": "L4", "replicas": 1}
        ],
        "routing": [{"region": "FRA", "model": "small", "site": "AMS", "rps": 3.0}],
        "objective": {"unserved_rps": 0.0, "gpu_cost": 0.0, "moves": 0, "total": 0.0},
        "solver": {"name": "hand", "seconds": 0.0, "seed": 0}
    }));
    let report = check(&inst, &p).unwrap();
    assert!(report.is_valid(), "{:?}", report.violations);
    assert!((report.objective.unserved_rps - 3.0).abs() < 1e-12);
    assert!(report.best.unserved_rps.abs() < 1e-12);
    let rows = best_routing(&inst, &p.placement).unwrap();
    let to = |region: &str| {
        rows.iter()
            .find(|r| r.region == region)
            .map(|r| (r.site.clone(), r.rps))
    };
    assert_eq!(to("AMS"), Some(("AMS".into(), 3.0)));
    assert_eq!(to("FRA"), Some(("FRA".into(), 3.0)));
}

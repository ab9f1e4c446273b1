//! Each way an instance is refused, and that the message names the culprit.

use serde_json::json;

use super::{instance, tiny};
use crate::solver::instance::Instance;
use crate::solver::{InstanceError, Problem, SolveOptions, solve};

/// Compiles the instance and returns the refusal's message, which must name `culprit`.
fn refused(v: serde_json::Value, culprit: &str) -> InstanceError {
    let inst: Instance = instance(v);
    let err = Problem::compile(&inst).expect_err("the instance must be refused");
    let msg = err.to_string();
    assert!(msg.contains(culprit), "{msg:?} does not name {culprit:?}");
    // The solver refuses it the same way.
    assert_eq!(solve(&inst, &SolveOptions::default()).unwrap_err(), err);
    err
}

#[test]
fn wrong_version() {
    let mut v = tiny();
    v["version"] = json!(2);
    assert!(matches!(refused(v, "version 2"), InstanceError::Version(2)));
}

#[test]
fn duplicate_ids() {
    let mut v = tiny();
    v["sites"][1]["id"] = json!("FRA");
    refused(v, "duplicate site \"FRA\"");
    let mut v = tiny();
    v["models"][1]["id"] = json!("small");
    refused(v, "duplicate model \"small\"");
    let mut v = tiny();
    v["gpu_kinds"][1]["name"] = json!("H100");
    refused(v, "duplicate GPU kind \"H100\"");
    let mut v = tiny();
    v["rtt_ms"] = json!([
        {"from": "FRA", "to": "AMS", "ms": 5.0},
        {"from": "FRA", "to": "AMS", "ms": 6.0}
    ]);
    refused(v, "FRA -> AMS");
}

#[test]
fn negative_and_non_finite_numbers() {
    let mut v = tiny();
    v["demand"][2]["rps"] = json!(-1.0);
    refused(v, "demand[2] (IAD small)");
    let mut v = tiny();
    v["gpu_kinds"][0]["cost"] = json!(-0.5);
    refused(v, "GPU kind \"H100\": cost");
    let mut v = tiny();
    v["models"][0]["rps_per_replica"]["L4"] = json!(-3.0);
    refused(v, "model \"small\": rps_per_replica");
    let mut v = tiny();
    v["sites"][0]["lat"] = json!(95.0);
    refused(v, "site \"FRA\": lat");
    let mut v = tiny();
    v["weights"] = json!({"move": -1.0});
    refused(v, "weights: move");
    let mut v = tiny();
    v["demand"][1]["rps"] = json!(1e300);
    refused(
        v,
        "demand[1] (AMS small): rps must be a finite number in [0, 1e12]",
    );
    let mut v = tiny();
    v["models"][1]["gpus_per_replica"] = json!(0);
    refused(v, "model \"big\": gpus_per_replica");
    // JSON has no NaN, but an instance built in memory can.
    let mut inst = instance(tiny());
    inst.demand[0].rps = f64::NAN;
    let msg = Problem::compile(&inst).unwrap_err().to_string();
    assert!(
        msg.contains("demand[0] (FRA small)") && msg.contains("NaN"),
        "{msg}"
    );
    inst.demand[0].rps = 1.0;
    inst.slo_rtt_ms = f64::INFINITY;
    let msg = Problem::compile(&inst).unwrap_err().to_string();
    assert!(msg.contains("slo_rtt_ms"), "{msg}");
}

#[test]
fn unknown_models() {
    let mut v = tiny();
    v["demand"][0]["model"] = json!("ghost");
    refused(v, "demand[0] (FRA ghost): unknown model \"ghost\"");
    let mut v = tiny();
    v["pins"] = json!([{"model": "ghost", "site": "FRA", "min_replicas": 1}]);
    refused(v, "pins[0]: unknown model \"ghost\"");
    let mut v = tiny();
    v["current"] = json!([{"model": "ghost", "site": "FRA", "gpu": "H100", "replicas": 1}]);
    refused(v, "current[0]: unknown model \"ghost\"");
}

#[test]
fn unknown_sites_regions_and_kinds() {
    let mut v = tiny();
    v["demand"][1]["region"] = json!("XXX");
    refused(v, "unknown site \"XXX\"");
    let mut v = tiny();
    v["pins"] = json!([{"model": "small", "site": "XXX", "min_replicas": 1}]);
    refused(v, "pins[0]: unknown site \"XXX\"");
    let mut v = tiny();
    v["current"] = json!([{"model": "small", "site": "XXX", "gpu": "H100", "replicas": 1}]);
    refused(v, "current[0]: unknown site \"XXX\"");
    let mut v = tiny();
    v["current"] = json!([{"model": "small", "site": "FRA", "gpu": "B200", "replicas": 1}]);
    refused(v, "current[0]: unknown GPU kind \"B200\"");
    let mut v = tiny();
    v["sites"][0]["gpus"]["B200"] = json!(8);
    refused(v, "site \"FRA\": unknown GPU kind \"B200\"");
    let mut v = tiny();
    v["models"][0]["rps_per_replica"]["B200"] = json!(8.0);
    refused(v, "model \"small\": unknown GPU kind \"B200\"");
    let mut v = tiny();
    v["rtt_ms"] = json!([{"from": "FRA", "to": "XXX", "ms": 5.0}]);
    refused(v, "rtt_ms[0]: unknown site \"XXX\"");
}

#[test]
fn model_larger_than_every_kind() {
    let mut v = tiny();
    v["models"][1]["gpus_per_replica"] = json!(1);
    let err = refused(v, "model \"big\"");
    let msg = err.to_string();
    assert!(
        msg.contains("140 GiB per GPU") && msg.contains("H100"),
        "{msg}"
    );
    // Fits in memory on L4, but the only kind with a throughput entry is too small.
    let mut v = tiny();
    v["gpu_kinds"][1]["mem_gib"] = json!(200);
    v["models"][1]["gpus_per_replica"] = json!(1);
    let msg = refused(v, "model \"big\"").to_string();
    assert!(msg.contains("rps_per_replica entry (H100)"), "{msg}");
}

#[test]
fn pins_that_cannot_hold() {
    // No fitting GPU at the site: AMS has only L4, big needs H100.
    let mut v = tiny();
    v["pins"] = json!([{"model": "big", "site": "AMS", "min_replicas": 1}]);
    let msg = refused(v, "pin of model \"big\" at site \"AMS\"").to_string();
    assert!(msg.contains("no GPU kind"), "{msg}");
    // Outside the model's residency: big is EU-only.
    let mut v = tiny();
    v["pins"] = json!([{"model": "big", "site": "IAD", "min_replicas": 1}]);
    let msg = refused(v, "pin of model \"big\" at site \"IAD\"").to_string();
    assert!(msg.contains("residency"), "{msg}");
    // More replicas than the site has GPUs for.
    let mut v = tiny();
    v["pins"] = json!([{"model": "small", "site": "AMS", "min_replicas": 3}]);
    let msg = refused(v, "pin of model \"small\" at site \"AMS\"").to_string();
    assert!(msg.contains("room for 2"), "{msg}");
    // Two pins that fit one by one but not together.
    let mut v = tiny();
    v["pins"] = json!([
        {"model": "small", "site": "FRA", "min_replicas": 5},
        {"model": "big", "site": "FRA", "min_replicas": 1}
    ]);
    refused(v, "site \"FRA\": its pins need 7 GPUs but it has 6");
    // Label rules exclude the site.
    let mut v = tiny();
    v["models"][0]["constraints"] = json!([{"key": "tier", "op": "in", "values": ["core"]}]);
    v["pins"] = json!([{"model": "small", "site": "AMS", "min_replicas": 1}]);
    refused(v, "pin of model \"small\" at site \"AMS\"");
}

#[test]
fn floor_above_the_fleets_room() {
    let mut v = tiny();
    // big: EU-only, 2 H100 per replica; only FRA has H100 in the EU, room for 1.
    v["models"][1]["min_replicas"] = json!(2);
    let msg = refused(v, "model \"big\"").to_string();
    assert!(
        msg.contains("min_replicas 2") && msg.contains("(1 replicas"),
        "{msg}"
    );
}

#[test]
fn floors_that_fit_alone_but_not_together_are_infeasible() {
    // small, made EU-only, has room for 8 replicas (6 GPUs at FRA, 2 at AMS) and big's
    // pin at FRA fits too, but the pin takes FRA's two H100s.
    let mut v = tiny();
    v["models"][0]["jurisdictions"] = json!(["EU"]);
    v["models"][0]["min_replicas"] = json!(8);
    v["pins"] = json!([{"model": "big", "site": "FRA", "min_replicas": 1}]);
    let inst = instance(v);
    Problem::compile(&inst).expect("each rule holds alone");
    let err = solve(&inst, &SolveOptions::default()).unwrap_err();
    assert!(matches!(err, InstanceError::Infeasible(_)), "{err}");
    assert!(err.to_string().contains("model small"), "{err}");
}

#[test]
fn malformed_json_is_an_error_not_a_panic() {
    for text in [
        "",
        "{}",
        "[1,2]",
        r#"{"version": 1}"#,
        r#"{"version": -1, "gpu_kinds": [], "sites": [], "models": [], "slo_rtt_ms": 1}"#,
        r#"{"version": 1, "gpu_kinds": [], "sites": [{"id": "A", "jurisdiction": "EU", "lat": 0, "lon": 0, "gpus": {"H100": -2}}], "models": [], "slo_rtt_ms": 1}"#,
    ] {
        assert!(Instance::from_json(text).is_err(), "{text}");
    }
    // An empty but well-formed instance solves to an empty plan.
    let empty = Instance::from_json(
        r#"{"version": 1, "gpu_kinds": [], "sites": [], "models": [], "slo_rtt_ms": 1}"#,
    )
    .unwrap();
    let plan = solve(&empty, &SolveOptions::default()).unwrap();
    assert!(plan.placement.is_empty() && plan.routing.is_empty());
}

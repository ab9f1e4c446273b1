//! `meridian placement solve|check` as a planner runs them: exit statuses (0 done, 1 a
//! broken rule, 2 a refused instance), messages naming the culprit, and no plan file
//! when the instance is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/placement/example.json");

fn placement(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meridian"))
        .arg("placement")
        .args(args)
        .output()
        .expect("run meridian placement")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn solve_then_check_the_example() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    let plan_arg = plan.to_str().unwrap();
    let out = placement(&[
        "solve",
        "--instance",
        EXAMPLE,
        "--out",
        plan_arg,
        "--seed",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("0.000 of 101.000 rps unserved"),
        "{}",
        text(&out.stdout)
    );
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan).unwrap()).unwrap();
    assert_eq!(written["solver"]["seed"], 3);
    assert!(written["solver"]["seconds"].as_f64().unwrap() >= 0.0);

    let out = placement(&["check", "--instance", EXAMPLE, "--plan", plan_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("valid"), "{}", text(&out.stdout));

    // Without --out the plan goes to stdout and the summary to stderr.
    let out = placement(&["solve", "--instance", EXAMPLE]);
    assert_eq!(out.status.code(), Some(0));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(plan["placement"].as_array().is_some_and(|p| !p.is_empty()));
    assert!(text(&out.stderr).contains("objective"));
    let fast = plan["objective"]["total"].as_f64().unwrap();

    // The exact MILP: a valid plan no worse than the fast one (beyond its 0.05% gap).
    let exact = dir.path().join("exact.json");
    let exact_arg = exact.to_str().unwrap();
    let out = placement(&[
        "solve",
        "--instance",
        EXAMPLE,
        "--exact",
        "--out",
        exact_arg,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = placement(&["check", "--instance", EXAMPLE, "--plan", exact_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&exact).unwrap()).unwrap();
    assert_eq!(written["solver"]["name"], "milp-highs");
    let optimum = written["objective"]["total"].as_f64().unwrap();
    assert!(
        optimum <= fast * 1.0005 + 1e-9,
        "MILP {optimum} above the fast solver's {fast}"
    );
}

#[test]
fn check_names_the_broken_rule_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    let out = placement(&[
        "solve",
        "--instance",
        EXAMPLE,
        "--out",
        plan.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan).unwrap()).unwrap();
    value["placement"].as_array_mut().unwrap().push(
        serde_json::json!({"model": "mistral-7b-eu", "site": "IAD", "gpu": "L4", "replicas": 1}),
    );
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, value.to_string()).unwrap();
    let out = placement(&[
        "check",
        "--instance",
        EXAMPLE,
        "--plan",
        broken.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("rule 3 (residency)")
            && stdout.contains("mistral-7b-eu placed at site IAD"),
        "{stdout}"
    );
}

#[test]
fn a_refused_instance_exits_2_and_writes_no_plan() {
    let dir = tempfile::tempdir().unwrap();
    let mut instance: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(EXAMPLE).unwrap()).unwrap();
    instance["pins"] =
        serde_json::json!([{"model": "mistral-7b-eu", "site": "IAD", "min_replicas": 1}]);
    let path = dir.path().join("instance.json");
    std::fs::write(&path, instance.to_string()).unwrap();
    let plan = dir.path().join("plan.json");
    let out = placement(&[
        "solve",
        "--instance",
        path.to_str().unwrap(),
        "--out",
        plan.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("pin of model \"mistral-7b-eu\" at site \"IAD\""),
        "{stderr}"
    );
    assert!(!Path::new(&plan).exists());

    let out = placement(&["solve", "--instance", "/nonexistent/instance.json"]);
    assert_eq!(out.status.code(), Some(2));
}

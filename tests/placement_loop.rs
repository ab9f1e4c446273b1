//! The placement loop end to end, as separate processes: `meridian control` with the
//! leader re-planning every half second, two `meridian pop` agents (AMS, SIN) on the
//! real model and a `meridian router` reporting demand. Demand from London keeps the
//! model at AMS and unloads SIN; when the demand comes from Tokyo instead, the leader
//! places the model at SIN and SIN's agent loads it, and Tokyo is then served there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{ctl, header, http_post, meridian, start_control, start_pop, start_router};

const BODY: &str =
    r#"{"model": "SmolLM2-135M-Instruct", "prompt": "Hello", "max_tokens": 2, "temperature": 0}"#;

fn ask(router: SocketAddr, region: &str) -> (u16, Option<String>) {
    let (status, head, _) = http_post(
        router,
        "/v1/completions",
        &[("x-meridian-region", region)],
        BODY,
    )
    .unwrap();
    (status, header(&head, "x-meridian-pop").map(str::to_string))
}

/// The state of `pop`'s worker in `meridianctl fleet status`.
fn worker_state(control: &str, pop: &str) -> String {
    ctl(control, &["fleet", "status"])
        .lines()
        .find(|l| l.starts_with(pop))
        .and_then(|l| {
            l.split_whitespace()
                .find(|w| ["warm", "unloaded", "loading", "draining"].contains(w))
        })
        .unwrap_or("absent")
        .to_string()
}

/// Sends requests from `region` until `pop`'s worker is in `state`.
fn drive_until(router: SocketAddr, control: &str, region: &str, pop: &str, state: &str) {
    let started = Instant::now();
    loop {
        // 503 while the only replica moves between PoPs is expected; anything else not.
        let (status, _) = ask(router, region);
        assert!(status == 200 || status == 503, "{status} from {region}");
        if worker_state(control, pop) == state {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "{pop} never became {state} under demand from {region}:\n{}\n{}",
            ctl(control, &["fleet", "status"]),
            ctl(control, &["placement", "diff"])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn demand_moves_the_model_and_agents_load_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("control.toml");
    std::fs::write(
        &config,
        r#"
[placement]
interval_ms = 500
slo_rtt_ms = 100.0

[[placement.gpu_kinds]]
name = "cpu"
mem_gib = 16.0
cost = 1.0

[[placement.models]]
id = "SmolLM2-135M-Instruct"
mem_gib = 0.5
min_replicas = 1
rps_per_replica = { cpu = 2.0 }
"#,
    )
    .unwrap();
    let (_control, control_url) = start_control(Some(&config));
    let _ams = start_pop("AMS", &control_url);
    let _sin = start_pop("SIN", &control_url);
    let (_router, router_addr) = start_router(&control_url, "FRA", &[("DEMAND_REPORT_MS", "300")]);

    let started = Instant::now();
    while ask(router_addr, "LHR").0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the router never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // London: the model belongs at AMS; SIN, with no demand nearby, is unloaded. Both
    // PoPs start warm, and a round planned before the router's first demand report
    // sees no demand at all: it may keep either replica, so AMS can unload and come
    // back once London's demand arrives.
    drive_until(router_addr, &control_url, "LHR", "SIN", "unloaded");
    drive_until(router_addr, &control_url, "LHR", "AMS", "warm");
    assert_eq!(worker_state(&control_url, "SIN"), "unloaded");
    let diff = ctl(&control_url, &["placement", "diff"]);
    println!("{diff}");
    assert!(!diff.contains("no placement applied yet"), "{diff}");

    // Tokyo: out of AMS's 100 ms reach; the leader places the model at SIN and the
    // agent loads it.
    drive_until(router_addr, &control_url, "NRT", "SIN", "warm");
    let started = Instant::now();
    loop {
        let (status, pop) = ask(router_addr, "NRT");
        if status == 200 && pop.as_deref() == Some("SIN") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "Tokyo never served at SIN: {status} {pop:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let demand = ctl(&control_url, &["demand"]);
    println!("{demand}");
    assert!(demand.contains("NRT") && demand.contains("LHR"), "{demand}");

    // The operator's view: a plan of the live fleet, and its instance as a file that
    // the offline solver accepts.
    let instance = dir.path().join("fleet.json");
    let plan = ctl(
        &control_url,
        &[
            "placement",
            "plan",
            "--dump-instance",
            instance.to_str().unwrap(),
        ],
    );
    println!("{plan}");
    assert!(plan.contains("valid"), "{plan}");
    let solved = meridian()
        .args([
            "placement",
            "solve",
            "--instance",
            instance.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        solved.status.success(),
        "the dumped instance does not solve offline: {}",
        String::from_utf8_lossy(&solved.stderr)
    );
}

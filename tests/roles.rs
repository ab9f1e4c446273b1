//! The roles as separate processes, found through flags: `meridian control` (memory
//! store), two `meridian pop` agents on the real model and a `meridian router`. Routing
//! follows geography, and a cached prompt prefix outweighs a shorter trip; `route
//! explain` shows the scores; saturated workers shed load with 429; routers' demand
//! reaches the control plane; killing a PoP with `kill -9` during 50 concurrent
//! non-streamed requests loses none of them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{header, http_post, start_control, start_pop, start_router};

const BODY: &str = r#"{"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Name three colors."}], "max_tokens": 24, "temperature": 0}"#;

fn ask(router: SocketAddr, region: &str) -> (u16, String, String) {
    http_post(
        router,
        "/v1/chat/completions",
        &[("x-meridian-region", region)],
        BODY,
    )
    .unwrap()
}

#[test]
fn separate_roles_route_by_geography_and_survive_a_killed_pop() {
    let (_control, control_url) = start_control(None);
    let mut ams = start_pop("AMS", &control_url);
    let _sin = start_pop("SIN", &control_url);
    let (_router, router_addr) = start_router(&control_url, "FRA", &[("DEMAND_REPORT_MS", "500")]);

    // Geography: each caller goes to its nearest PoP once both are in the router's view.
    let started = Instant::now();
    loop {
        let (status, head, _) = ask(router_addr, "SIN");
        if status == 200 && header(&head, "x-meridian-pop") == Some("SIN") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "SIN never served: {status} {head}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (region, expected) in [
        ("LHR", "AMS"),
        ("NRT", "SIN"),
        ("CDG", "AMS"),
        ("SYD", "SIN"),
    ] {
        let (status, head, body) = ask(router_addr, region);
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            header(&head, "x-meridian-pop"),
            Some(expected),
            "caller in {region}"
        );
    }

    // Prefix-aware scoring: a long prompt first served at AMS is sent again from Tokyo; AMS holds its blocks, which saves more prefill than the longer
    // trip costs, so AMS serves it again instead of SIN.
    let long_prompt = "Meridian routes each request to the worker that answers first. ".repeat(60);
    let long_body = format!(
        r#"{{"model": "SmolLM2-135M-Instruct", "messages": [{{"role": "user", "content": "{long_prompt}"}}], "max_tokens": 2, "temperature": 0}}"#
    );
    // The first time it is held to the EU, so it lands at AMS whatever the two
    // workers' measured prefill speeds say.
    let (status, head, body) = http_post(
        router_addr,
        "/v1/chat/completions",
        &[
            ("x-meridian-region", "LHR"),
            ("x-meridian-jurisdiction", "EU"),
        ],
        &long_body,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&head, "x-meridian-pop"), Some("AMS"));
    // AMS reports its cache four times a second; give the report time to reach the
    // router's view.
    std::thread::sleep(Duration::from_millis(1500));
    let (status, head, body) = http_post(
        router_addr,
        "/v1/chat/completions",
        &[("x-meridian-region", "NRT")],
        &long_body,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0);
    println!(
        "repeated prompt from Tokyo served by {:?}: {cached} of {} prompt tokens cached",
        header(&head, "x-meridian-pop"),
        v["usage"]["prompt_tokens"]
    );
    assert_eq!(
        header(&head, "x-meridian-pop"),
        Some("AMS"),
        "the repeated prompt did not go back to the PoP holding its prefix"
    );
    assert!(
        cached >= 256,
        "only {cached} prompt tokens came from AMS's cache"
    );

    // Operators: meridianctl shows the fleet; a cordoned PoP gets no new requests.
    let ctl = |args: &[&str]| support::ctl(&control_url, args);
    let status = ctl(&["fleet", "status"]);
    println!("{status}");
    for needle in ["AMS", "SIN", "SmolLM2-135M-Instruct", "warm", "2 PoPs"] {
        assert!(status.contains(needle), "{needle} missing from:\n{status}");
    }
    let explained = ctl(&[
        "route",
        "explain",
        "--model",
        "SmolLM2-135M-Instruct",
        "--region",
        "FRA",
        "--jurisdiction",
        "EU",
    ]);
    println!("{explained}");
    let line = |pop: &str| {
        explained
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(pop))
            .unwrap_or_else(|| panic!("no {pop} line in:\n{explained}"))
            .to_string()
    };
    assert!(line("AMS").starts_with("1 ") && line("AMS").contains("first choice"));
    assert!(line("SIN").contains("excluded: jurisdiction not allowed"));

    // Load shedding: a second router that counts a worker with one request outstanding
    // as saturated answers the overflow of 8 concurrent requests with 429 + Retry-After.
    let (shedder, shed_addr) =
        start_router(&control_url, "FRA", &[("MAX_WAITING_PER_WORKER", "1")]);
    let started = Instant::now();
    while ask(shed_addr, "FRA").0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "second router never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let burst: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || ask(shed_addr, "FRA")))
        .collect();
    let (mut ok, mut shed) = (0, 0);
    for h in burst {
        let (status, head, body) = h.join().unwrap();
        match status {
            200 => ok += 1,
            429 => {
                shed += 1;
                assert_eq!(header(&head, "retry-after"), Some("1"), "{head}");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["error"]["code"], "engine_overloaded", "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    println!("burst of 8 through a router with max_waiting_per_worker=1: {ok} served, {shed} shed");
    assert!(ok >= 1 && shed >= 1, "{ok} served, {shed} shed");
    drop(shedder);

    // Demand: the router's windows reach the control plane, per region and model.
    let started = Instant::now();
    loop {
        let demand = ctl(&["demand"]);
        let rows: Vec<&str> = demand
            .lines()
            .filter(|l| l.contains("SmolLM2-135M-Instruct"))
            .collect();
        let regions: Vec<&str> = rows
            .iter()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        if ["SIN", "LHR", "NRT", "CDG", "SYD"]
            .iter()
            .all(|r| regions.contains(r))
        {
            println!("{demand}");
            for row in rows {
                let rps: f64 = row.split_whitespace().nth(3).unwrap().parse().unwrap();
                assert!(rps > 0.0, "{row}");
            }
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "demand never reached the control plane:\n{demand}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    ctl(&["cordon", "SIN"]);
    let started = Instant::now();
    loop {
        let (status, head, _) = ask(router_addr, "NRT");
        assert_eq!(status, 200);
        if header(&head, "x-meridian-pop") == Some("AMS") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the cordon never reached the router"
        );
    }
    assert!(ctl(&["fleet", "status"]).contains("cordoned"));
    ctl(&["cordon", "SIN", "--undo"]);
    let started = Instant::now();
    while header(&ask(router_addr, "NRT").1, "x-meridian-pop") != Some("SIN") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the uncordon never reached the router"
        );
    }
    let out = support::meridianctl()
        .args(["--control", &control_url, "drain", "ZZZ"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the fleet"));

    // 50 concurrent requests from near AMS; AMS is killed while they run.
    let handles: Vec<_> = (0..50)
        .map(|_| std::thread::spawn(move || ask(router_addr, "AMS")))
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    ams.child.kill().unwrap();
    let killed_at = Instant::now();
    let mut served = std::collections::BTreeMap::<String, usize>::new();
    for h in handles {
        let (status, head, body) = h.join().unwrap();
        assert_eq!(
            status, 200,
            "a request was lost when AMS died: {status} {body}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(!text.is_empty());
        *served
            .entry(header(&head, "x-meridian-pop").unwrap().to_string())
            .or_default() += 1;
    }
    println!(
        "50 requests served by {served:?}; the last finished {:?} after the kill",
        killed_at.elapsed()
    );
    assert!(
        served.contains_key("SIN"),
        "nothing was retried on SIN: {served:?}"
    );

    // Afterwards the router still serves, from the surviving PoP.
    let (status, head, _) = ask(router_addr, "AMS");
    assert_eq!(status, 200);
    assert_eq!(header(&head, "x-meridian-pop"), Some("SIN"));
}

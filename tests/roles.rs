//! The roles as separate processes, found through flags: `meridian control` (memory
//! store), two `meridian pop` agents on the real model and a `meridian router`. Routing
//! follows geography; killing a PoP with `kill -9` during 50 concurrent non-streamed
//! requests loses none of them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{Proc, free_addr, header, http_post, meridian, start_pop};

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
    let control_addr = free_addr();
    let mut control = meridian();
    control
        .args(["control", "--listen", &control_addr.to_string()])
        .env("MERIDIAN_CONTROL__METRICS_LISTEN", free_addr().to_string());
    let control = Proc::spawn(control);
    control.wait_for_line("control plane listening", Duration::from_secs(30));
    let control_url = format!("http://{control_addr}");
    let mut ams = start_pop("AMS", &control_url);
    let _sin = start_pop("SIN", &control_url);

    let router_addr = free_addr();
    let mut router = meridian();
    router
        .args(["router", "--listen", &router_addr.to_string()])
        .args(["--control", &control_url, "--site", "FRA"]);
    let router = Proc::spawn(router);
    router.wait_for_line("router listening", Duration::from_secs(30));

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

    // Operators: meridianctl shows the fleet; a cordoned PoP gets no new requests.
    let ctl = |args: &[&str]| {
        let out = support::meridianctl()
            .args(["--control", &control_url])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let status = ctl(&["fleet", "status"]);
    println!("{status}");
    for needle in ["AMS", "SIN", "SmolLM2-135M-Instruct", "warm", "2 PoPs"] {
        assert!(status.contains(needle), "{needle} missing from:\n{status}");
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

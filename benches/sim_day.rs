//! The simulator's speed on the 365-PoP global day: simulated requests per second of
//! wall time. The simulator is single-threaded, so this is one core's rate.
//!
//!     cargo bench --bench sim_day [-- --hours H] [-- --scenario FILE]
//!
//! `--hours` shortens the day (the rate is about the same; the full day takes minutes).
//! ShareGPT lengths come from the cache that `meridian sim` builds on first use.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use meridian_proto::catalog::Catalog;
use meridian_sim::scenario::Scenario;
use meridian_sim::world::{Inputs, run};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let path = value("--scenario").unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/scenarios/global-day.toml"
        )
        .to_string()
    });
    let mut scenario =
        Scenario::from_toml(&std::fs::read_to_string(&path).expect("read the scenario"))
            .expect("a valid scenario");
    if let Some(h) = value("--hours") {
        scenario.duration_h = h.parse().expect("--hours H");
    }
    let sharegpt = meridian::sim_data::sharegpt_lengths().expect("ShareGPT lengths");
    let inputs = Inputs {
        scenario: &scenario,
        catalog: Catalog::builtin(),
        sharegpt: Some(&sharegpt),
        trace: None,
        per_request: false,
    };
    let started = Instant::now();
    let report = run(&inputs, &mut |_| {}).expect("the run");
    let wall = started.elapsed().as_secs_f64();
    let requests = report.totals.arrived;
    println!(
        "{}: {:.1} simulated hours, {} requests, {} events in {wall:.2} s: {:.0} simulated \
         requests/s, {:.0} events/s",
        scenario.name,
        scenario.duration_h,
        requests,
        report.events,
        requests as f64 / wall,
        report.events as f64 / wall
    );
    print!("{}", report.summary_text());
}

//! Scoring one request against a 365-PoP fleet with 8 workers per PoP, every worker
//! serving the requested model (the worst case: 2,920 candidates), with random regions,
//! loads and jurisdiction sets. Prints p50/p99/max of single `rank` calls.
//!
//! `cargo bench -p meridian-router --bench score`

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use meridian_proto::catalog::Catalog;
use meridian_router::fleet::{FleetView, Load, RttTable, Worker};
use meridian_router::score::{Ask, rank};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn main() {
    let catalog = Catalog::builtin();
    let rtt = RttTable::from_catalog(catalog);
    let mut rng = StdRng::seed_from_u64(1);
    let mut workers = Vec::new();
    for (site_index, site) in catalog.sites().iter().enumerate() {
        for w in 0..8 {
            workers.push(Worker {
                pop: site.id.clone(),
                site_index,
                jurisdiction: site.jurisdiction.clone(),
                worker_id: format!("{}-{w}", site.id),
                endpoint: format!("http://{}-{w}.invalid:1", site.id),
                model: "llama-3.1-8b".into(),
                warm: rng.random_bool(0.95),
                healthy: rng.random_bool(0.98),
                cordoned: rng.random_bool(0.02),
                load: Load {
                    queue_depth: rng.random_range(0..32),
                    running: rng.random_range(0..64),
                    max_running: 64,
                    kv_blocks_free: rng.random_range(0..4096),
                    kv_blocks_total: 4096,
                    mean_step_ms: rng.random_range(5.0..40.0),
                    prompt_tokens_per_second: rng.random_range(2000.0..20000.0),
                },
            });
        }
    }
    let n = workers.len();
    let view = FleetView::new(1, workers);
    let in_flight: Vec<u32> = (0..n).map(|_| rng.random_range(0..4)).collect();
    let sets: Vec<Vec<String>> = vec![
        vec![],
        vec!["EU".into()],
        vec!["US".into(), "CA".into()],
        vec![],
    ];
    let asks: Vec<(usize, usize, u32)> = (0..100_000)
        .map(|_| {
            (
                rng.random_range(0..catalog.len()),
                rng.random_range(0..sets.len()),
                rng.random_range(10..4000),
            )
        })
        .collect();
    let mut times = Vec::with_capacity(asks.len());
    let mut sink = 0u64;
    for round in 0..2 {
        times.clear();
        for &(region, set, prompt_tokens) in &asks {
            let ask = Ask {
                model: "llama-3.1-8b",
                region,
                jurisdictions: &sets[set],
                prompt_tokens,
            };
            let t = Instant::now();
            let r = rank(&view, &rtt, &ask, &in_flight);
            let dt = t.elapsed();
            sink += r.len() as u64;
            times.push(dt.as_nanos() as u64);
        }
        if round == 0 {
            continue; // warm-up
        }
    }
    times.sort_unstable();
    let pct =
        |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)] as f64 / 1000.0;
    println!(
        "score: {n} workers at {} PoPs, {} requests: p50 {:.2} us, p99 {:.2} us, max {:.2} us (ranked {sink})",
        catalog.len(),
        times.len(),
        pct(0.50),
        pct(0.99),
        *times.last().unwrap() as f64 / 1000.0
    );
}

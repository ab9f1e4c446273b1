//! Scoring one request against a 365-PoP fleet with 8 workers per PoP, every worker
//! serving the requested model (the worst case: 2,920 candidates), with random regions,
//! loads and jurisdiction sets. Every worker reports 256 cached prefix blocks drawn from
//! 64 shared system prompts; each request's prompt starts with one of them. Prints
//! p50/p99/max of the whole decision per request: hashing the prompt's blocks, matching
//! them against the fleet's prefix index, and `rank`.
//!
//! `cargo bench -p meridian-router --bench score`

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use meridian_proto::catalog::Catalog;
use meridian_router::fleet::{FleetView, Load, RttTable, Worker};
use meridian_router::prefix::prompt_hashes;
use meridian_router::score::{Ask, rank};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn main() {
    let catalog = Catalog::builtin();
    let rtt = RttTable::from_catalog(catalog);
    let mut rng = StdRng::seed_from_u64(1);
    // 64 system prompts of 512 tokens (32 blocks of 16), and their block hashes.
    let system: Vec<Vec<u32>> = (0..64)
        .map(|_| (0..512).map(|_| rng.random_range(0..49_152)).collect())
        .collect();
    let system_hashes: Vec<Vec<u64>> = system
        .iter()
        .map(|p| {
            let mut h = Vec::new();
            prompt_hashes(p, 16, &mut h);
            h
        })
        .collect();
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
                    prefill_speed: rng.random_range(2000.0..20000.0),
                },
                block_size: 16,
                // 8 of the system prompts, whole: 256 blocks, what a worker reports.
                cached_blocks: (0..8)
                    .flat_map(|_| system_hashes[rng.random_range(0..64)].clone())
                    .collect(),
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
    // Prompts: a system prompt, then a user turn of random length.
    let asks: Vec<(usize, usize, Vec<u32>)> = (0..20_000)
        .map(|_| {
            let mut prompt = system[rng.random_range(0..64)].clone();
            let user = rng.random_range(10..3500);
            prompt.extend((0..user).map(|_| rng.random_range(0..49_152u32)));
            (
                rng.random_range(0..catalog.len()),
                rng.random_range(0..sets.len()),
                prompt,
            )
        })
        .collect();
    let mut hashes = Vec::new();
    let mut cached = Vec::new();
    let mut hits = 0u64;
    let mut times = Vec::with_capacity(asks.len());
    let mut sink = 0u64;
    for round in 0..2 {
        times.clear();
        for (region, set, prompt) in &asks {
            let t = Instant::now();
            prompt_hashes(prompt, view.prefixes.block_size(), &mut hashes);
            view.prefixes.matches(&hashes, &mut cached);
            let ask = Ask {
                model: "llama-3.1-8b",
                region: *region,
                jurisdictions: &sets[*set],
                prompt_tokens: prompt.len() as u32,
                cached: &cached,
                max_waiting: 256,
            };
            let r = rank(&view, &rtt, &ask, &in_flight[..]);
            hits += r
                .iter()
                .next()
                .map_or(0, |c| u64::from(c.cached_tokens > 0));
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
        "score: {n} workers at {} PoPs, {} requests with prefix matching: p50 {:.2} us, p99 {:.2} us, max {:.2} us (ranked {sink}, {hits} best candidates with a prefix hit)",
        catalog.len(),
        times.len(),
        pct(0.50),
        pct(0.99),
        *times.last().unwrap() as f64 / 1000.0
    );
}

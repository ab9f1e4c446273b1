use meridian_proto::catalog::Catalog;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::fleet::{Load, Worker};

fn worker(pop: &str, model: &str) -> Worker {
    let catalog = Catalog::builtin();
    let site = catalog.get(pop).unwrap();
    Worker {
        pop: pop.into(),
        site_index: catalog.sites().iter().position(|s| s.id == pop).unwrap(),
        jurisdiction: site.jurisdiction.clone(),
        worker_id: format!("{pop}-0"),
        endpoint: format!("http://{pop}.invalid:1"),
        model: model.into(),
        warm: true,
        healthy: true,
        cordoned: false,
        load: Load {
            max_running: 64,
            mean_step_ms: 10.0,
            prefill_speed: 1000.0,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn index(id: &str) -> usize {
    Catalog::builtin()
        .sites()
        .iter()
        .position(|s| s.id == id)
        .unwrap()
}

#[test]
fn the_nearest_idle_pop_wins_and_others_are_kept_for_retries() {
    let rtt = RttTable::from_catalog(Catalog::builtin());
    let view = FleetView::new(
        1,
        vec![worker("IAD", "m"), worker("AMS", "m"), worker("SIN", "m")],
    );
    let ask = Ask {
        model: "m",
        region: index("FRA"),
        jurisdictions: &[],
        prompt_tokens: 10,
        cached: &[],
        max_waiting: 0,
    };
    let r = rank(&view, &rtt, &ask, &[0, 0, 0][..]);
    let order: Vec<&str> = r
        .iter()
        .map(|c| view.workers[c.worker as usize].pop.as_str())
        .collect();
    assert_eq!(order, ["AMS", "IAD", "SIN"]);
    let ask = Ask {
        region: index("NRT"),
        ..ask
    };
    let best = rank(&view, &rtt, &ask, &[0, 0, 0][..])
        .iter()
        .next()
        .unwrap();
    assert_eq!(view.workers[best.worker as usize].pop, "SIN");
}

#[test]
fn jurisdiction_state_and_model_filter() {
    let rtt = RttTable::from_catalog(Catalog::builtin());
    let mut cold = worker("FRA", "m");
    cold.warm = false;
    let mut cordoned = worker("CDG", "m");
    cordoned.cordoned = true;
    let view = FleetView::new(
        1,
        vec![worker("IAD", "m"), cold, cordoned, worker("AMS", "other")],
    );
    let eu = ["EU".to_string()];
    let ask = Ask {
        model: "m",
        region: index("FRA"),
        jurisdictions: &eu,
        prompt_tokens: 1,
        cached: &[],
        max_waiting: 0,
    };
    assert!(
        rank(&view, &rtt, &ask, &[0; 4][..]).is_empty(),
        "no EU worker is warm and open for m"
    );
    let us = ["US".to_string()];
    let ask = Ask {
        jurisdictions: &us,
        ..ask
    };
    assert_eq!(rank(&view, &rtt, &ask, &[0; 4][..]).len(), 1);
    assert_eq!(view.models(), vec!["m".to_string(), "other".to_string()]);
}

#[test]
fn load_this_router_added_counts_against_a_worker() {
    let rtt = RttTable::from_catalog(Catalog::builtin());
    let mut busy = worker("AMS", "m");
    busy.load.max_running = 4;
    let view = FleetView::new(1, vec![busy, worker("FRA", "m")]);
    let ask = Ask {
        model: "m",
        region: index("AMS"),
        jurisdictions: &[],
        prompt_tokens: 10,
        cached: &[],
        max_waiting: 0,
    };
    let first = rank(&view, &rtt, &ask, &[0, 0][..]).iter().next().unwrap();
    assert_eq!(view.workers[first.worker as usize].pop, "AMS");
    let first = rank(&view, &rtt, &ask, &[40, 0][..]).iter().next().unwrap();
    assert_eq!(
        view.workers[first.worker as usize].pop, "FRA",
        "40 unreported requests on a 4-slot worker"
    );
}

/// The acceptance property: over 100,000 random fleets and requests, scoring never
/// returns a worker outside the request's allowed jurisdictions or without the model
/// warm, healthy and open, and it returns one whenever such a worker exists.
#[test]
fn random_fleets_never_break_residency_or_state() {
    let catalog = Catalog::builtin();
    let rtt = RttTable::from_catalog(catalog);
    let jurisdictions = ["EU", "US", "SG", "IN", "JP", "GB", "BR"];
    let models = ["a", "b", "c"];
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..100_000 {
        let n = rng.random_range(0..12);
        let workers: Vec<Worker> = (0..n)
            .map(|_| {
                let site = &catalog.sites()[rng.random_range(0..catalog.len())];
                let mut w = worker(&site.id, models[rng.random_range(0..models.len())]);
                w.warm = rng.random_bool(0.8);
                w.healthy = rng.random_bool(0.9);
                w.cordoned = rng.random_bool(0.1);
                w.load.queue_depth = rng.random_range(0..100);
                w.load.running = rng.random_range(0..64);
                w
            })
            .collect();
        let view = FleetView::new(1, workers);
        let allowed_set: Vec<String> = jurisdictions
            .iter()
            .filter(|_| rng.random_bool(0.3))
            .map(|j| j.to_string())
            .collect();
        let model = models[rng.random_range(0..models.len())];
        let in_flight: Vec<u32> = (0..n).map(|_| rng.random_range(0..10)).collect();
        let ask = Ask {
            model,
            region: rng.random_range(0..catalog.len()),
            jurisdictions: &allowed_set,
            prompt_tokens: 100,
            cached: &[],
            max_waiting: 64,
        };
        let ranking = rank(&view, &rtt, &ask, &in_flight[..]);
        let in_flight_of = |i: usize| in_flight[i];
        let eligible = |w: &Worker| {
            let i = view
                .workers
                .iter()
                .position(|x| std::ptr::eq(x, w))
                .unwrap();
            w.model == model
                && w.load.queue_depth + in_flight_of(i) < 64
                && w.warm
                && w.healthy
                && !w.cordoned
                && allowed(&allowed_set, &w.jurisdiction)
        };
        let mut last = f32::NEG_INFINITY;
        for c in ranking.iter() {
            let w = &view.workers[c.worker as usize];
            assert!(
                eligible(w),
                "scored an ineligible worker {w:?} for {allowed_set:?}"
            );
            assert!(c.score_ms >= last, "ranking out of order");
            last = c.score_ms;
        }
        let any = view.workers.iter().any(eligible);
        assert_eq!(
            any,
            !ranking.is_empty(),
            "an eligible worker exists iff one is ranked"
        );
    }
}

#[test]
fn a_cached_prefix_beats_a_slightly_nearer_cold_worker() {
    use crate::prefix::prompt_hashes;
    let rtt = RttTable::from_catalog(Catalog::builtin());
    let prompt: Vec<u32> = (0..2000).collect();
    let mut hashes = Vec::new();
    prompt_hashes(&prompt, 16, &mut hashes);
    let mut warm_cache = worker("CDG", "m");
    warm_cache.block_size = 16;
    warm_cache.cached_blocks = hashes[..100].to_vec();
    let mut other = worker("FRA", "m");
    other.block_size = 16;
    other.cached_blocks = vec![1, 2, 3];
    let view = FleetView::new(1, vec![other, warm_cache]);
    assert_eq!(view.prefixes.block_size(), 16);
    let mut cached = Vec::new();
    view.prefixes.matches(&hashes, &mut cached);
    assert_eq!(cached, vec![0, 100]);
    let ask = Ask {
        model: "m",
        region: index("FRA"),
        jurisdictions: &[],
        prompt_tokens: 2000,
        cached: &cached,
        max_waiting: 0,
    };
    let r = rank(&view, &rtt, &ask, &[0, 0][..]);
    let best = r.iter().next().unwrap();
    assert_eq!(view.workers[best.worker as usize].pop, "CDG");
    assert_eq!(best.cached_tokens, 1600);
    // 400 uncached tokens at 1,000 tokens/s against 2,000.
    assert!((best.prefill_ms - 400.0).abs() < 1e-3, "{best:?}");
    let cold = r.iter().nth(1).unwrap();
    assert_eq!(cold.cached_tokens, 0);
    // Without the hit, FRA (the caller's own site) wins.
    let ask = Ask { cached: &[], ..ask };
    let best = rank(&view, &rtt, &ask, &[0, 0][..]).iter().next().unwrap();
    assert_eq!(view.workers[best.worker as usize].pop, "FRA");
}

#[test]
fn full_queues_are_counted_as_saturated_not_ranked() {
    let rtt = RttTable::from_catalog(Catalog::builtin());
    let mut full = worker("AMS", "m");
    full.load.queue_depth = 10;
    let view = FleetView::new(1, vec![full, worker("FRA", "m")]);
    let ask = Ask {
        model: "m",
        region: index("AMS"),
        jurisdictions: &[],
        prompt_tokens: 10,
        cached: &[],
        max_waiting: 12,
    };
    // FRA has 12 unseen requests from this router: saturated too.
    let r = rank(&view, &rtt, &ask, &[0, 12][..]);
    assert_eq!((r.len(), r.saturated), (1, 1));
    let r = rank(&view, &rtt, &ask, &[2, 12][..]);
    assert!(r.is_empty());
    assert_eq!(r.saturated, 2);
    // Explain gives every worker of the model, the scored ones first.
    let eu = ["EU".to_string()];
    let ask = Ask {
        jurisdictions: &eu,
        ..ask
    };
    let e = explain(&view, &rtt, &ask, &[0, 0][..]);
    assert_eq!(e.len(), 2);
    assert!(e[0].1.is_ok() && e[1].1.is_ok());
    let e = explain(&view, &rtt, &ask, &[2, 0][..]);
    assert_eq!(e[0].0, 1);
    assert_eq!(e[1].1, Err(Excluded::Saturated));
    let us = ["US".to_string()];
    let ask = Ask {
        jurisdictions: &us,
        ..ask
    };
    assert!(
        explain(&view, &rtt, &ask, &[0, 0][..])
            .iter()
            .all(|(_, v)| *v == Err(Excluded::Jurisdiction))
    );
}

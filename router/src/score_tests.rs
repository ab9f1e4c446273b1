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
            prompt_tokens_per_second: 1000.0,
            ..Default::default()
        },
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
    };
    let r = rank(&view, &rtt, &ask, &[0, 0, 0]);
    let order: Vec<&str> = r
        .iter()
        .map(|c| view.workers[c.worker as usize].pop.as_str())
        .collect();
    assert_eq!(order, ["AMS", "IAD", "SIN"]);
    let ask = Ask {
        region: index("NRT"),
        ..ask
    };
    let best = rank(&view, &rtt, &ask, &[0, 0, 0]).iter().next().unwrap();
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
    };
    assert!(
        rank(&view, &rtt, &ask, &[0; 4]).is_empty(),
        "no EU worker is warm and open for m"
    );
    let us = ["US".to_string()];
    let ask = Ask {
        jurisdictions: &us,
        ..ask
    };
    assert_eq!(rank(&view, &rtt, &ask, &[0; 4]).len(), 1);
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
    };
    let first = rank(&view, &rtt, &ask, &[0, 0]).iter().next().unwrap();
    assert_eq!(view.workers[first.worker as usize].pop, "AMS");
    let first = rank(&view, &rtt, &ask, &[40, 0]).iter().next().unwrap();
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
        };
        let ranking = rank(&view, &rtt, &ask, &in_flight);
        let eligible = |w: &Worker| {
            w.model == model
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

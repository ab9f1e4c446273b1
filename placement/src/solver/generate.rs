//! Instances for tests and benchmarks, reproducible from a seed.
//!
//! - [`catalog_instance`]: the scale instance, every catalog site with GPU pools of
//!   three kinds, a long tail of models, demand from every region.
//! - [`random_small`]: small varied instances (up to 12 sites, 6 models, 3 kinds) for
//!   property tests and for measuring the fast solver against an exact MILP.

use std::collections::BTreeMap;

use meridian_proto::catalog::Catalog;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::instance::{
    Demand, GpuKind, Instance, LabelConstraint, LabelOp, ModelSpec, Pin, PlacementRow, RttSample,
    SiteSpec, Weights,
};

/// (name, GiB per GPU, cost, throughput relative to the first).
const KINDS: [(&str, f64, f64, f64); 3] = [
    ("H100", 80.0, 1.0, 1.0),
    ("L40S", 48.0, 0.5, 0.45),
    ("L4", 24.0, 0.25, 0.22),
];

/// Model shapes: (name, GiB, GPUs per replica, requests per second on an H100 replica).
const SHAPES: [(&str, f64, u32, f64); 4] = [
    ("8b", 16.0, 1, 12.0),
    ("32b", 40.0, 1, 5.0),
    ("70b", 140.0, 2, 6.0),
    ("405b", 300.0, 4, 4.0),
];

fn kind(i: usize) -> GpuKind {
    GpuKind {
        name: KINDS[i].0.into(),
        mem_gib: KINDS[i].1,
        cost: KINDS[i].2,
        extra: Default::default(),
    }
}

fn model(id: String, shape: usize, kinds: &[usize], speed: f64) -> ModelSpec {
    let (_, mem, gpus, rps) = SHAPES[shape];
    let rps_per_replica = kinds
        .iter()
        .filter(|&&k| mem / f64::from(gpus) <= KINDS[k].1)
        .map(|&k| (KINDS[k].0.to_string(), round2(rps * speed * KINDS[k].3)))
        .collect();
    ModelSpec {
        id,
        mem_gib: mem,
        gpus_per_replica: gpus,
        rps_per_replica,
        jurisdictions: None,
        min_replicas: 0,
        min_sites: 0,
        constraints: Vec::new(),
        extra: Default::default(),
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The scale instance: every site of `catalog` with GPU pools of three kinds (big
/// `core` hubs, small `edge` sites), `n_models` models of four shapes with Zipf
/// popularity, some resident in the EU or the US and the largest only on core sites,
/// and demand from every region (the popular models everywhere, the tail here and
/// there, some of it EU-only), scaled to about half the fleet's GPUs (and a third of
/// its H100s for the models that fit nowhere else).
pub fn catalog_instance(catalog: &Catalog, n_models: usize, seed: u64) -> Instance {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let sites: Vec<SiteSpec> = catalog
        .sites()
        .iter()
        .map(|s| {
            let core = rng.random_bool(0.15);
            let (h, l, e) = if core {
                (
                    8 * rng.random_range(3..=8),
                    8 * rng.random_range(1..=4),
                    8 * rng.random_range(1..=4),
                )
            } else {
                (
                    4 * rng.random_range(0..=2),
                    4 * rng.random_range(0..=3),
                    4 * rng.random_range(1..=4),
                )
            };
            let gpus = [("H100", h), ("L40S", l), ("L4", e)]
                .into_iter()
                .filter(|&(_, n)| n > 0)
                .map(|(k, n)| (k.to_string(), n))
                .collect();
            let tier = if core { "core" } else { "edge" };
            SiteSpec {
                id: s.id.clone(),
                jurisdiction: s.jurisdiction.clone(),
                lat: s.lat,
                lon: s.lon,
                gpus,
                labels: BTreeMap::from([("tier".to_string(), tier.to_string())]),
                extra: Default::default(),
            }
        })
        .collect();
    let mut models = Vec::with_capacity(n_models);
    for i in 0..n_models {
        let shape = match rng.random_range(0..100) {
            0..50 => 0,
            50..75 => 1,
            75..95 => 2,
            _ => 3,
        };
        let mut m = model(
            format!("m{i:03}-{}", SHAPES[shape].0),
            shape,
            &[0, 1, 2],
            rng.random_range(0.7..1.3),
        );
        m.jurisdictions = match rng.random_range(0..100) {
            0..12 => Some(vec!["EU".into()]),
            12..20 => Some(vec!["US".into()]),
            20..25 => Some(vec!["EU".into(), "US".into(), "GB".into(), "CH".into()]),
            _ => None,
        };
        if shape == 3 {
            m.constraints.push(LabelConstraint {
                key: "tier".into(),
                op: LabelOp::In,
                values: vec!["core".into()],
            });
        }
        if i < n_models / 10 {
            m.min_replicas = 2;
        }
        models.push(m);
    }
    // Zipf popularity; the first models are the popular ones.
    let popularity: Vec<f64> = (0..n_models).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    let mut demand = Vec::new();
    for site in catalog.sites() {
        let weight = rng.random_range(0.3..2.0);
        for (i, m) in models.iter().enumerate() {
            // A model resident in some jurisdictions is offered to the users there.
            let offered = m
                .jurisdictions
                .as_ref()
                .is_none_or(|j| j.contains(&site.jurisdiction));
            let wanted = i < 15 || rng.random_bool((8.0 / (i as f64 + 1.0)).min(0.3));
            if !offered || !wanted {
                continue;
            }
            let jurisdictions =
                (site.jurisdiction == "EU" && rng.random_bool(0.3)).then(|| vec!["EU".to_string()]);
            let slo_rtt_ms = rng.random_bool(0.1).then_some(25.0);
            demand.push(Demand {
                region: site.id.clone(),
                model: m.id.clone(),
                rps: weight * popularity[i] * rng.random_range(0.5..1.5),
                jurisdictions,
                slo_rtt_ms,
                extra: Default::default(),
            });
        }
    }
    // Scale demand to about half the fleet's GPUs at each model's best throughput, and
    // to a third of the H100s for the models that only fit there.
    let gpus_of = |kind: Option<&str>| -> f64 {
        sites
            .iter()
            .flat_map(|s| s.gpus.iter())
            .filter(|(k, _)| kind.is_none_or(|x| x == k.as_str()))
            .map(|(_, &n)| f64::from(n))
            .sum()
    };
    // (GPUs per request per second, fits only on H100)
    let per_rps: BTreeMap<&str, (f64, bool)> = models
        .iter()
        .map(|m| {
            let best = m.rps_per_replica.values().fold(0.0, |a: f64, &b| a.max(b));
            let h100_only = m.rps_per_replica.len() == 1;
            (
                m.id.as_str(),
                (f64::from(m.gpus_per_replica) / best.max(1e-9), h100_only),
            )
        })
        .collect();
    let (mut needed, mut needed_h100) = (0.0, 0.0);
    for d in &demand {
        let (per, h100_only) = per_rps.get(d.model.as_str()).copied().unwrap_or_default();
        needed += d.rps * per;
        if h100_only {
            needed_h100 += d.rps * per;
        }
    }
    let scale = (0.5 * gpus_of(None) / needed.max(1e-9))
        .min(0.35 * gpus_of(Some("H100")) / needed_h100.max(1e-9));
    for d in &mut demand {
        d.rps = round2(d.rps * scale).max(0.01);
    }
    Instance {
        version: 1,
        gpu_kinds: (0..3).map(kind).collect(),
        sites,
        models,
        demand,
        slo_rtt_ms: 50.0,
        rtt_ms: Vec::new(),
        pins: Vec::new(),
        current: Vec::new(),
        weights: Weights::default(),
        max_moves: None,
        extra: Default::default(),
    }
}

/// A small instance (up to 12 sites, 6 models, 3 kinds), varied by `seed`: ample or
/// tight capacity, round-trip limits from metro to continental, residency on models
/// and on demand, label rules, pins, measured round trips, a current placement and
/// sometimes a move cap. Most are valid; some are refused by validation on purpose
/// (a pin where the model cannot go, a floor above the room).
pub fn random_small(seed: u64) -> Instance {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let areas: [(&str, f64, f64, f64); 3] = [
        ("EU", 50.0, 8.0, 8.0),
        ("US", 38.0, -95.0, 12.0),
        ("JP", 36.0, 138.0, 3.0),
    ];
    let n_areas = rng.random_range(1..=3);
    let mut kinds: Vec<usize> = (0..3).filter(|_| rng.random_bool(0.7)).collect();
    if kinds.is_empty() {
        kinds.push(rng.random_range(0..3));
    }
    let tight = rng.random_bool(0.5);
    let n_sites = rng.random_range(2..=12);
    let sites: Vec<SiteSpec> = (0..n_sites)
        .map(|i| {
            let (j, lat, lon, spread) = areas[rng.random_range(0..n_areas)];
            let top = if tight { 4 } else { 12 };
            let gpus = kinds
                .iter()
                .map(|&k| (KINDS[k].0.to_string(), rng.random_range(0..=top)))
                .filter(|&(_, n)| n > 0)
                .collect();
            let tier = if rng.random_bool(0.3) { "core" } else { "edge" };
            SiteSpec {
                id: format!("S{i:02}"),
                jurisdiction: j.into(),
                lat: lat + rng.random_range(-spread..spread),
                lon: lon + rng.random_range(-spread..spread),
                gpus,
                labels: BTreeMap::from([("tier".to_string(), tier.to_string())]),
                extra: Default::default(),
            }
        })
        .collect();
    let jurisdictions: Vec<&str> = areas[..n_areas].iter().map(|a| a.0).collect();
    let n_models = rng.random_range(1..=6);
    let models: Vec<ModelSpec> = (0..n_models)
        .map(|i| {
            // Mostly shapes that fit somewhere among the chosen kinds.
            let shape = rng.random_range(0..3);
            let mut m = model(format!("M{i}"), shape, &kinds, rng.random_range(0.5..1.5));
            if m.rps_per_replica.is_empty() {
                // Nothing this big among the kinds: make it small so it fits.
                m = model(format!("M{i}"), 0, &kinds, 1.0);
            }
            if rng.random_bool(0.3) {
                let j = *jurisdictions.choose(&mut rng).unwrap_or(&"EU");
                m.jurisdictions = Some(vec![j.to_string()]);
            }
            if rng.random_bool(0.1) {
                m.constraints.push(LabelConstraint {
                    key: "tier".into(),
                    op: if rng.random_bool(0.5) {
                        LabelOp::In
                    } else {
                        LabelOp::NotIn
                    },
                    values: vec!["core".into()],
                });
            }
            if rng.random_bool(0.2) {
                m.min_replicas = rng.random_range(1..=2);
            }
            m
        })
        .collect();
    let slo_rtt_ms = *[8.0, 15.0, 30.0, 60.0, 250.0]
        .choose(&mut rng)
        .unwrap_or(&30.0);
    let load = if tight { 8.0 } else { 4.0 };
    let mut demand = Vec::new();
    for site in &sites {
        for m in &models {
            if !rng.random_bool(0.5) {
                continue;
            }
            demand.push(Demand {
                region: site.id.clone(),
                model: m.id.clone(),
                rps: round2(rng.random_range(0.2..load)),
                jurisdictions: rng
                    .random_bool(0.2)
                    .then(|| vec![site.jurisdiction.clone()]),
                slo_rtt_ms: rng
                    .random_bool(0.15)
                    .then(|| *[5.0, 20.0, 100.0].choose(&mut rng).unwrap_or(&20.0)),
                extra: Default::default(),
            });
        }
    }
    let mut rtt_ms = Vec::new();
    if rng.random_bool(0.2) {
        for _ in 0..rng.random_range(1..=4) {
            let (a, b) = (rng.random_range(0..n_sites), rng.random_range(0..n_sites));
            if !rtt_ms
                .iter()
                .any(|r: &RttSample| r.from == sites[a].id && r.to == sites[b].id)
            {
                rtt_ms.push(RttSample {
                    from: sites[a].id.clone(),
                    to: sites[b].id.clone(),
                    ms: round2(rng.random_range(0.5..40.0)),
                });
            }
        }
    }
    let mut pins = Vec::new();
    if rng.random_bool(0.25) {
        let m = &models[rng.random_range(0..n_models)];
        let s = &sites[rng.random_range(0..n_sites)];
        pins.push(Pin {
            model: m.id.clone(),
            site: s.id.clone(),
            min_replicas: 1,
        });
    }
    let mut current = Vec::new();
    if rng.random_bool(0.5) {
        for _ in 0..rng.random_range(1..=8) {
            let m = &models[rng.random_range(0..n_models)];
            let s = &sites[rng.random_range(0..n_sites)];
            let Some(gpu) = m
                .rps_per_replica
                .keys()
                .collect::<Vec<_>>()
                .choose(&mut rng)
                .map(|k| k.to_string())
            else {
                continue;
            };
            current.push(PlacementRow {
                model: m.id.clone(),
                site: s.id.clone(),
                gpu,
                replicas: rng.random_range(1..=3),
            });
        }
    }
    let weights = match rng.random_range(0..10) {
        0 => Weights {
            unserved_rps: 10.0,
            gpu: 1.0,
            moves: 1.0,
        },
        1 => Weights {
            unserved_rps: 1000.0,
            gpu: 1.0,
            moves: 2.0,
        },
        _ => Weights::default(),
    };
    let max_moves = rng.random_bool(0.15).then(|| rng.random_range(0..10));
    Instance {
        version: 1,
        gpu_kinds: kinds.into_iter().map(kind).collect(),
        sites,
        models,
        demand,
        slo_rtt_ms,
        rtt_ms,
        pins,
        current,
        weights,
        max_moves,
        extra: Default::default(),
    }
}

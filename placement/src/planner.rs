//! The live fleet as a placement problem, sans-IO: the leader (and `Plan`) builds the
//! same [`Instance`] a capacity planner writes by hand, from the PoPs' registrations and
//! residency, the routers' smoothed demand, the policy and the desired placement; and
//! turns a solved plan back into the desired placement the reconcile loop carries out.
//!
//! CPU workers are GPU kind [`CPU_KIND`] in the instance and an empty `gpu_kind` on the
//! wire. A resident model the configuration does not manage is pinned where it is: the
//! solver never unloads what it knows nothing about.

use std::collections::BTreeMap;

use meridian_proto::control::v1 as pb;

use crate::config::PlacementConfig;
use crate::demand::{DemandKey, Rates};
use crate::solver::instance::{
    Demand, GpuKind, Instance, LabelConstraint, LabelOp, ModelSpec, Pin, PlacementRow, SiteSpec,
    Weights,
};

/// The instance's name for CPU workers' kind.
pub const CPU_KIND: &str = "cpu";
/// Demand below this (requests/second) is left out of the instance.
const MIN_RPS: f64 = 1e-3;

/// The instance kind of a worker's wire `gpu_kind`.
pub fn kind_of(gpu_kind: &str) -> &str {
    if gpu_kind.is_empty() {
        CPU_KIND
    } else {
        gpu_kind
    }
}

/// The wire `gpu_kind` of an instance kind.
pub fn wire_kind(kind: &str) -> &str {
    if kind == CPU_KIND { "" } else { kind }
}

fn holds_model(w: &pb::WorkerStatus) -> bool {
    crate::reconcile::holds_model(w) && !w.model.is_empty()
}

/// Replicas resident now, per (model, site, kind), from the workers' reports.
pub fn resident(pops: &[pb::PopState]) -> Vec<PlacementRow> {
    let mut count: BTreeMap<(String, String, String), u32> = BTreeMap::new();
    for pop in pops {
        for w in pop.workers.iter().filter(|w| holds_model(w)) {
            *count
                .entry((
                    w.model.clone(),
                    pop.pop_id.clone(),
                    kind_of(&w.gpu_kind).to_string(),
                ))
                .or_default() += 1;
        }
    }
    count
        .into_iter()
        .map(|((model, site, gpu), replicas)| PlacementRow {
            model,
            site,
            gpu,
            replicas,
        })
        .collect()
}

/// The desired placement's rows (wire kinds to instance kinds).
pub fn rows_of(placement: &pb::Placement) -> Vec<PlacementRow> {
    let mut rows: Vec<PlacementRow> = placement
        .assignments
        .iter()
        .filter(|a| a.replicas > 0)
        .map(|a| PlacementRow {
            model: a.model.clone(),
            site: a.site.clone(),
            gpu: kind_of(&a.gpu_kind).to_string(),
            replicas: a.replicas,
        })
        .collect();
    rows.sort();
    rows
}

/// A plan's rows as the desired placement at `revision`.
pub fn placement_of(rows: &[PlacementRow], revision: u64) -> pb::Placement {
    let mut assignments: Vec<pb::ReplicaAssignment> = rows
        .iter()
        .filter(|r| r.replicas > 0)
        .map(|r| pb::ReplicaAssignment {
            model: r.model.clone(),
            site: r.site.clone(),
            gpu_kind: wire_kind(&r.gpu).to_string(),
            replicas: r.replicas,
        })
        .collect();
    assignments
        .sort_by(|a, b| (&a.model, &a.site, &a.gpu_kind).cmp(&(&b.model, &b.site, &b.gpu_kind)));
    pb::Placement {
        revision,
        assignments,
    }
}

/// Per (model, site, kind), the replica counts that differ between `from` and `to`.
pub fn changes(from: &[PlacementRow], to: &[PlacementRow]) -> Vec<pb::ReplicaChange> {
    let mut both: BTreeMap<(&str, &str, &str), (u32, u32)> = BTreeMap::new();
    for r in from {
        both.entry((&r.model, &r.site, &r.gpu)).or_default().0 += r.replicas;
    }
    for r in to {
        both.entry((&r.model, &r.site, &r.gpu)).or_default().1 += r.replicas;
    }
    both.into_iter()
        .filter(|(_, (a, b))| a != b)
        .map(|((model, site, gpu), (a, b))| pb::ReplicaChange {
            model: model.to_string(),
            site: site.to_string(),
            gpu_kind: wire_kind(gpu).to_string(),
            from_replicas: a as i32,
            to_replicas: b as i32,
        })
        .collect()
}

/// The placement instance of the live fleet, and notes on what was left out of it.
pub fn build_instance(
    config: &PlacementConfig,
    pops: &[pb::PopState],
    demand: &[(DemandKey, Rates, u32)],
    policy: &pb::Policy,
    current: &[PlacementRow],
) -> (Instance, Vec<String>) {
    let mut notes = Vec::new();
    let gpu_kinds: Vec<GpuKind> = config
        .gpu_kinds
        .iter()
        .map(|k| GpuKind {
            name: k.name.clone(),
            mem_gib: k.mem_gib,
            cost: k.cost,
            extra: Default::default(),
        })
        .collect();

    let mut unknown_kinds: Vec<String> = Vec::new();
    let mut sites = Vec::new();
    for pop in pops {
        let location = pop.location.unwrap_or_default();
        let cordoned = pop.status != pb::PopStatus::Active as i32;
        let mut gpus: BTreeMap<String, u32> = BTreeMap::new();
        for w in &pop.workers {
            // A cordoned or draining PoP takes no new replicas: only the devices that
            // hold one count.
            if cordoned && !holds_model(w) {
                continue;
            }
            let kind = kind_of(&w.gpu_kind);
            if !gpu_kinds.iter().any(|k| k.name == kind) {
                if !unknown_kinds.iter().any(|k| k == kind) {
                    unknown_kinds.push(kind.to_string());
                }
                continue;
            }
            *gpus.entry(kind.to_string()).or_default() += 1;
        }
        sites.push(SiteSpec {
            id: pop.pop_id.clone(),
            jurisdiction: pop.jurisdiction.clone(),
            lat: location.lat,
            lon: location.lon,
            gpus,
            labels: pop.labels.clone().into_iter().collect(),
            extra: Default::default(),
        });
    }
    sites.sort_by(|a, b| a.id.cmp(&b.id));
    if !unknown_kinds.is_empty() {
        notes.push(format!(
            "devices of kinds not in placement.gpu_kinds left out: {}",
            unknown_kinds.join(", ")
        ));
    }
    let site_ids: Vec<String> = sites.iter().map(|s| s.id.clone()).collect();

    let mut models: Vec<ModelSpec> = Vec::new();
    for m in &config.models {
        let mut spec = ModelSpec {
            id: m.id.clone(),
            mem_gib: m.mem_gib,
            gpus_per_replica: m.gpus_per_replica,
            rps_per_replica: m.rps_per_replica.clone(),
            jurisdictions: None,
            min_replicas: m.min_replicas,
            constraints: Vec::new(),
            min_sites: m.min_sites,
            extra: Default::default(),
        };
        // Every rule for the model must hold: jurisdictions intersect, constraints add.
        for rule in policy.rules.iter().filter(|r| r.model == m.id) {
            if !rule.allowed_jurisdictions.is_empty() {
                spec.jurisdictions = Some(match spec.jurisdictions.take() {
                    None => rule.allowed_jurisdictions.clone(),
                    Some(prev) => prev
                        .into_iter()
                        .filter(|j| rule.allowed_jurisdictions.contains(j))
                        .collect(),
                });
            }
            spec.min_sites = spec.min_sites.max(rule.min_sites);
            for c in &rule.constraints {
                let op = if c.op == pb::LabelOperator::NotIn as i32 {
                    LabelOp::NotIn
                } else {
                    LabelOp::In
                };
                spec.constraints.push(LabelConstraint {
                    key: c.key.clone(),
                    op,
                    values: c.values.clone(),
                });
            }
        }
        models.push(spec);
    }

    // Unmanaged resident models stay where they are.
    let mut pins: Vec<Pin> = Vec::new();
    let mut unmanaged: BTreeMap<String, ModelSpec> = BTreeMap::new();
    for row in resident(pops) {
        if models.iter().any(|m| m.id == row.model) || !gpu_kinds.iter().any(|k| k.name == row.gpu)
        {
            continue;
        }
        let spec = unmanaged
            .entry(row.model.clone())
            .or_insert_with(|| ModelSpec {
                id: row.model.clone(),
                mem_gib: 0.0,
                gpus_per_replica: 1,
                rps_per_replica: BTreeMap::new(),
                jurisdictions: None,
                min_replicas: 0,
                constraints: Vec::new(),
                min_sites: 0,
                extra: Default::default(),
            });
        spec.rps_per_replica.insert(row.gpu.clone(), 0.0);
        pins.push(Pin {
            model: row.model.clone(),
            site: row.site.clone(),
            min_replicas: row.replicas,
        });
    }
    if !unmanaged.is_empty() {
        notes.push(format!(
            "left in place (not in placement.models): {}",
            unmanaged.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    models.extend(unmanaged.into_values());

    for p in &policy.pins {
        if !site_ids.contains(&p.site) {
            notes.push(format!(
                "pin of {} at {} skipped: {} is not in the fleet",
                p.model, p.site, p.site
            ));
        } else if !models.iter().any(|m| m.id == p.model) {
            notes.push(format!(
                "pin of {} at {} skipped: {} is not a managed model",
                p.model, p.site, p.model
            ));
        } else {
            pins.push(Pin {
                model: p.model.clone(),
                site: p.site.clone(),
                min_replicas: p.min_replicas,
            });
        }
    }

    let mut demand_rows = Vec::new();
    for (key, rates, _) in demand {
        if rates.rps < MIN_RPS {
            continue;
        }
        if !models.iter().any(|m| m.id == key.model) {
            notes.push(format!(
                "demand of {:.3} rps from {} for {} left out: not a managed model",
                rates.rps, key.region, key.model
            ));
            continue;
        }
        demand_rows.push(Demand {
            region: key.region.clone(),
            model: key.model.clone(),
            rps: rates.rps,
            jurisdictions: (!key.jurisdictions.is_empty()).then(|| key.jurisdictions.clone()),
            slo_rtt_ms: None,
            extra: Default::default(),
        });
    }

    // A demand region is a site of the instance (the format places users at a site's
    // coordinates): regions without a PoP join as sites with no devices.
    let catalog = meridian_proto::catalog::Catalog::builtin();
    for d in &demand_rows {
        if sites.iter().any(|s| s.id == d.region) {
            continue;
        }
        if let Some(site) = catalog.get(&d.region) {
            sites.push(SiteSpec {
                id: site.id.clone(),
                jurisdiction: site.jurisdiction.clone(),
                lat: site.lat,
                lon: site.lon,
                gpus: BTreeMap::new(),
                labels: BTreeMap::new(),
                extra: Default::default(),
            });
        }
    }
    let demand_rows: Vec<Demand> = demand_rows
        .into_iter()
        .filter(|d| sites.iter().any(|s| s.id == d.region))
        .collect();

    // The current placement: only rows the instance can express (sites in the fleet,
    // known models and kinds).
    let current: Vec<PlacementRow> = current
        .iter()
        .filter(|r| {
            site_ids.contains(&r.site)
                && models.iter().any(|m| m.id == r.model)
                && gpu_kinds.iter().any(|k| k.name == r.gpu)
        })
        .cloned()
        .collect();

    let instance = Instance {
        version: 1,
        gpu_kinds,
        sites,
        models,
        demand: demand_rows,
        slo_rtt_ms: config.slo_rtt_ms,
        rtt_ms: Vec::new(),
        pins,
        current,
        weights: Weights {
            unserved_rps: config.weight_unserved_rps,
            gpu: config.weight_gpu,
            moves: config.weight_move,
        },
        max_moves: (policy.max_moves_per_round > 0)
            .then_some(u64::from(policy.max_moves_per_round)),
        extra: Default::default(),
    };
    (instance, notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GpuKindConfig, ModelConfig};
    use crate::solver::{SolveOptions, check, solve};
    use meridian_proto::worker::v1::WorkerState;

    fn pop(id: &str, jurisdiction: &str, workers: &[(&str, &str)]) -> pb::PopState {
        let site = meridian_proto::catalog::Catalog::builtin().get(id).unwrap();
        pb::PopState {
            pop_id: id.into(),
            jurisdiction: jurisdiction.into(),
            location: Some(pb::Location {
                lat: site.lat,
                lon: site.lon,
            }),
            status: pb::PopStatus::Active as i32,
            workers: workers
                .iter()
                .enumerate()
                .map(|(i, (model, kind))| pb::WorkerStatus {
                    worker_id: format!("w{i}"),
                    gpu_kind: kind.to_string(),
                    model: model.to_string(),
                    state: if model.is_empty() {
                        WorkerState::Unloaded as i32
                    } else {
                        WorkerState::Warm as i32
                    },
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn config() -> PlacementConfig {
        PlacementConfig {
            gpu_kinds: vec![GpuKindConfig {
                name: "cpu".into(),
                mem_gib: 16.0,
                cost: 1.0,
            }],
            models: vec![ModelConfig {
                id: "m".into(),
                mem_gib: 1.0,
                gpus_per_replica: 1,
                rps_per_replica: [("cpu".to_string(), 2.0)].into_iter().collect(),
                min_replicas: 1,
                min_sites: 0,
            }],
            ..PlacementConfig::default()
        }
    }

    fn demand(region: &str, model: &str, rps: f64) -> (DemandKey, Rates, u32) {
        (
            DemandKey {
                region: region.into(),
                model: model.into(),
                jurisdictions: vec![],
            },
            Rates {
                rps,
                ..Default::default()
            },
            1,
        )
    }

    #[test]
    fn demand_moves_the_model_and_unmanaged_ones_stay() {
        let pops = vec![
            pop("AMS", "EU", &[("m", ""), ("other", "")]),
            pop("SIN", "SG", &[("", ""), ("", "A10")]),
        ];
        let current = resident(&pops);
        assert_eq!(current.len(), 2);
        assert!(current.iter().all(|r| r.gpu == CPU_KIND));
        // Demand from Tokyo only: SIN is within 100 ms, AMS is not.
        let (instance, notes) = build_instance(
            &config(),
            &pops,
            &[demand("NRT", "m", 1.5), demand("NRT", "ghost", 3.0)],
            &pb::Policy::default(),
            &current,
        );
        let text = notes.join("\n");
        assert!(text.contains("other"), "{text}");
        assert!(text.contains("A10"), "{text}");
        assert!(text.contains("ghost"), "{text}");
        let plan = solve(&instance, &SolveOptions::default()).unwrap();
        assert!(check(&instance, &plan).unwrap().is_valid());
        let at = |model: &str, site: &str| {
            plan.placement
                .iter()
                .filter(|r| r.model == model && r.site == site)
                .map(|r| r.replicas)
                .sum::<u32>()
        };
        assert_eq!(at("m", "SIN"), 1, "{:?}", plan.placement);
        assert_eq!(at("m", "AMS"), 0, "{:?}", plan.placement);
        assert_eq!(at("other", "AMS"), 1, "an unmanaged model stays");
        let diff = changes(&current, &plan.placement);
        assert!(
            diff.iter()
                .any(|c| c.site == "SIN" && c.to_replicas == 1 && c.gpu_kind.is_empty())
        );

        // A residency rule keeping m in the EU wins over the demand's location.
        let policy = pb::Policy {
            rules: vec![pb::ResidencyRule {
                model: "m".into(),
                allowed_jurisdictions: vec!["EU".into()],
                constraints: vec![],
                min_sites: 0,
            }],
            ..Default::default()
        };
        let (instance, _) = build_instance(
            &config(),
            &pops,
            &[demand("NRT", "m", 1.5)],
            &policy,
            &current,
        );
        let plan = solve(&instance, &SolveOptions::default()).unwrap();
        assert!(check(&instance, &plan).unwrap().is_valid());
        assert!(
            plan.placement
                .iter()
                .all(|r| r.model != "m" || r.site == "AMS")
        );

        // The placement round-trips through the wire form.
        let wire = placement_of(&plan.placement, 7);
        assert_eq!(wire.revision, 7);
        assert_eq!(rows_of(&wire), {
            let mut rows: Vec<_> = plan
                .placement
                .iter()
                .filter(|r| r.replicas > 0)
                .cloned()
                .collect();
            rows.sort();
            rows
        });
    }
}

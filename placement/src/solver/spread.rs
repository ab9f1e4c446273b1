//! Spread across failure domains (`min_sites`): after the fast solver, each model with
//! the rule gets replicas at enough distinct sites. A surplus replica (from a site that
//! holds two or more of the model) moves to a new site when one exists, so the GPU bill
//! stays; otherwise a replica is added. New sites are chosen by the demand for the model
//! they can serve, then by the cheapest kind with free GPUs, then by index, so the result
//! stays deterministic. The routing and objective are then recomputed exactly.

use std::collections::{BTreeMap, BTreeSet};

use super::check::{best_routing, objective};
use super::instance::{Instance, PlacementRow, Plan};
use super::problem::{InstanceError, Problem};

/// `plan` with every `min_sites` rule met, or `Infeasible` naming the model whose
/// spread does not fit beside the other replicas.
pub fn enforce(p: &Problem, instance: &Instance, plan: Plan) -> Result<Plan, InstanceError> {
    if p.models.iter().all(|m| m.min_sites <= 1) {
        return Ok(plan);
    }
    let (nk, ns) = (p.kinds.len(), p.sites.len());
    // Replicas per cell, from the plan.
    let mut x: BTreeMap<usize, u32> = BTreeMap::new();
    for row in &plan.placement {
        let (Some(&m), Some(&s), Some(&k)) = (
            p.model_index.get(&row.model),
            p.site_index.get(&row.site),
            p.kind_index.get(&row.gpu),
        ) else {
            continue;
        };
        *x.entry(p.cell(m, s, k)).or_default() += row.replicas;
    }
    let used = |x: &BTreeMap<usize, u32>, s: usize, k: usize| -> u32 {
        x.iter()
            .filter(|&(&c, _)| (c / nk) % ns == s && c % nk == k)
            .map(|(&c, &n)| n * p.models[c / (nk * ns)].gpus_per_replica)
            .sum()
    };
    for (m, model) in p.models.iter().enumerate() {
        if model.min_sites <= 1 {
            continue;
        }
        // Demand for the model each site could serve.
        let mut reach = vec![0.0f64; ns];
        for e in p.entries.iter().filter(|e| e.model == m) {
            for &(s, _) in &e.eligible {
                reach[s] += e.rps;
            }
        }
        loop {
            let held: BTreeSet<usize> = x
                .iter()
                .filter(|&(&c, &n)| n > 0 && c / (nk * ns) == m)
                .map(|(&c, _)| (c / nk) % ns)
                .collect();
            if held.len() as u32 >= model.min_sites {
                break;
            }
            let mut best: Option<(usize, usize)> = None;
            for s in (0..ns).filter(|s| !held.contains(s)) {
                for k in 0..nk {
                    let free = p.sites[s].gpus[k].saturating_sub(used(&x, s, k));
                    if !p.can_hold(m, s, k) || free < model.gpus_per_replica {
                        continue;
                    }
                    let better = match best {
                        None => true,
                        Some((bs, bk)) => {
                            (reach[s], -p.kinds[k].cost) > (reach[bs], -p.kinds[bk].cost)
                        }
                    };
                    if better {
                        best = Some((s, k));
                    }
                }
            }
            let Some((s, k)) = best else {
                return Err(InstanceError::Infeasible(format!(
                    "model {}: no free GPUs left to spread it over {} sites beside the other replicas",
                    model.id, model.min_sites
                )));
            };
            // A surplus replica moves; otherwise one more is placed.
            let surplus = x
                .iter()
                .filter(|&(&c, &n)| c / (nk * ns) == m && n > 0)
                .filter(|&(&c, _)| {
                    // The site keeps at least one replica, and its pin if it has one.
                    let site = (c / nk) % ns;
                    let here: u32 = (0..nk)
                        .map(|kk| x.get(&p.cell(m, site, kk)).copied().unwrap_or(0))
                        .sum();
                    let pin = p
                        .pins
                        .iter()
                        .filter(|&&(pm, ps, _)| pm == m && ps == site)
                        .map(|&(_, _, n)| n)
                        .max()
                        .unwrap_or(0);
                    here > 1 && here > pin
                })
                .max_by_key(|&(&c, &n)| (n, std::cmp::Reverse(c)))
                .map(|(&c, _)| c);
            if let Some(c) = surplus
                && let Some(n) = x.get_mut(&c)
            {
                *n -= 1;
            }
            *x.entry(p.cell(m, s, k)).or_default() += 1;
        }
    }
    let mut placement: Vec<PlacementRow> = x
        .into_iter()
        .filter(|&(_, n)| n > 0)
        .map(|(c, n)| PlacementRow {
            model: p.models[c / (nk * ns)].id.clone(),
            site: p.sites[(c / nk) % ns].id.clone(),
            gpu: p.kinds[c % nk].name.clone(),
            replicas: n,
        })
        .collect();
    placement.sort();
    let routing = best_routing(instance, &placement)?;
    let objective = objective(instance, &placement, &routing);
    Ok(Plan {
        placement,
        routing,
        objective,
        solver: plan.solver,
    })
}

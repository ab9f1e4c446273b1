//! Capacity planning, sans-IO: the fewest GPUs per PoP with which the scenario meets a
//! p99 TTFT and a p99 TPOT objective, found by simulating.
//!
//! Each round runs the whole scenario (placement, routing and engines as in any run)
//! on the current GPU counts. PoPs that miss the objective for the requests they
//! served, or whose users were refused, grow by a quarter (at least one replica's
//! worth); once every PoP meets it, PoPs with idle capacity shrink toward the
//! utilisation the placement plans for, and a PoP that misses after shrinking goes
//! back to its last passing count and is not shrunk again. The answer is the passing
//! fleet with the fewest GPUs seen; with none, the last one tried, marked as missing.

use std::collections::{BTreeMap, BTreeSet};

use crate::SimError;
use crate::report::Report;
use crate::scenario::Scenario;

/// GPUs per kind name per PoP id (a scenario's `fleet.pops`).
type Pools = BTreeMap<String, BTreeMap<String, u32>>;

/// The objective.
#[derive(Debug, Clone, Copy)]
pub struct Objective {
    pub ttft_p99_ms: f64,
    pub tpot_p99_ms: f64,
    /// Refused requests (shed or unservable) allowed, as a share of a PoP's users.
    pub max_refused: f64,
    /// Simulation rounds at most.
    pub max_rounds: usize,
}

/// One PoP's line of the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct PopPlan {
    pub pop: String,
    pub jurisdiction: String,
    /// GPU kind whose count is planned.
    pub kind: String,
    pub gpus_before: u32,
    pub gpus_after: u32,
    pub requests: u64,
    pub ttft_p99_ms: f64,
    pub tpot_p99_ms: f64,
    pub utilisation: f64,
    pub load: f64,
}

/// The answer.
#[derive(Debug, Clone)]
pub struct CapacityPlan {
    pub met: bool,
    pub rounds: usize,
    pub gpus_before: u64,
    pub gpus_after: u64,
    pub pops: Vec<PopPlan>,
    /// The run of the chosen fleet.
    pub report: Report,
}

/// Searches GPU counts for `scenario`, running it with `run` (normally
/// [`crate::world::run`] with the scenario swapped in).
pub fn plan(
    scenario: &Scenario,
    objective: &Objective,
    run: &mut dyn FnMut(&Scenario) -> Result<Report, SimError>,
) -> Result<CapacityPlan, SimError> {
    let catalog = meridian_proto::catalog::Catalog::builtin();
    // The kind planned at each PoP: the one it has most of, else the first kind a
    // model can run on.
    let default_kind = scenario
        .gpu_kinds
        .iter()
        .find(|k| {
            scenario
                .models
                .iter()
                .any(|m| m.engine.contains_key(&k.name))
        })
        .map(|k| k.name.clone())
        .ok_or_else(|| SimError::Scenario("no GPU kind any model runs on".into()))?;
    let per_replica = scenario
        .models
        .iter()
        .map(|m| m.gpus_per_replica)
        .max()
        .unwrap_or(1);
    let pop_ids: Vec<String> = if scenario.geography.pops.is_empty() {
        catalog.sites().iter().map(|s| s.id.clone()).collect()
    } else {
        scenario.geography.pops.clone()
    };
    let mut pools: Pools = BTreeMap::new();
    for id in &pop_ids {
        let site = catalog
            .get(id)
            .ok_or_else(|| SimError::Scenario(format!("unknown PoP {id}")))?;
        let pool = crate::fleet::pool(scenario, id, &site.jurisdiction);
        pools.insert(
            id.clone(),
            scenario
                .gpu_kinds
                .iter()
                .zip(pool)
                .map(|(k, n)| (k.name.clone(), n))
                .collect(),
        );
    }
    let kind_of: BTreeMap<String, String> = pools
        .iter()
        .map(|(id, p)| {
            let best = p
                .iter()
                .filter(|(_, n)| **n > 0)
                .max_by_key(|(_, n)| **n)
                .map_or(default_kind.clone(), |(k, _)| k.clone());
            (id.clone(), best)
        })
        .collect();
    let before = pools.clone();
    let total = |p: &Pools| -> u64 {
        p.values()
            .flat_map(|k| k.values())
            .map(|&n| u64::from(n))
            .sum()
    };

    let mut best: Option<(Pools, Report)> = None;
    let mut last_passing: BTreeMap<String, u32> = BTreeMap::new();
    let mut frozen: BTreeSet<String> = BTreeSet::new();
    let mut last: Option<Report> = None;
    let mut rounds = 0;
    while rounds < objective.max_rounds.max(1) {
        rounds += 1;
        let mut s = scenario.clone();
        s.fleet.pops = pools.clone();
        let report = run(&s)?;
        let misses = missing(&report, objective);
        let count = |id: &str, p: &Pools| p[id].get(&kind_of[id]).copied().unwrap_or(0);
        if misses.is_empty() {
            for id in &pop_ids {
                last_passing.insert(id.clone(), count(id, &pools));
            }
            if best.as_ref().is_none_or(|(b, _)| total(&pools) < total(b)) {
                best = Some((pools.clone(), report.clone()));
            }
            // Shrink where capacity idles.
            let target = scenario.placement.target_utilisation;
            let mut shrunk = false;
            for row in &report.pops {
                if frozen.contains(&row.pop) {
                    continue;
                }
                let n = count(&row.pop, &pools);
                let keep = if row.replicas == 0 {
                    0
                } else {
                    let needed = (f64::from(n) * row.load / target).ceil() as u32;
                    needed.div_ceil(per_replica) * per_replica
                };
                let next = keep.max(n.saturating_sub(n.div_ceil(2)));
                if next < n {
                    set(&mut pools, &row.pop, &kind_of[&row.pop], next);
                    shrunk = true;
                }
            }
            if !shrunk {
                last = Some(report);
                break;
            }
        } else {
            for id in &misses {
                let n = count(id, &pools);
                match last_passing.get(id) {
                    // It passed with more: go back and stay.
                    Some(&ok) if ok > n => {
                        set(&mut pools, id, &kind_of[id], ok);
                        frozen.insert(id.clone());
                    }
                    _ => {
                        let grow = (n / 4).max(per_replica);
                        set(&mut pools, id, &kind_of[id], n + grow);
                    }
                }
            }
        }
        last = Some(report);
    }
    let (met, chosen, report) = match best {
        Some((p, r)) => (true, p, r),
        None => (
            false,
            pools.clone(),
            last.ok_or_else(|| SimError::Scenario("no round ran".into()))?,
        ),
    };
    let rows = report
        .pops
        .iter()
        .map(|row| {
            let kind = kind_of[&row.pop].clone();
            PopPlan {
                pop: row.pop.clone(),
                jurisdiction: row.jurisdiction.clone(),
                gpus_before: before[&row.pop].get(&kind).copied().unwrap_or(0),
                gpus_after: chosen[&row.pop].get(&kind).copied().unwrap_or(0),
                kind,
                requests: row.requests,
                ttft_p99_ms: row.ttft_ms.p99,
                tpot_p99_ms: row.tpot_ms.p99,
                utilisation: row.utilisation,
                load: row.load,
            }
        })
        .collect();
    Ok(CapacityPlan {
        met,
        rounds,
        gpus_before: total(&before),
        gpus_after: total(&chosen),
        pops: rows,
        report,
    })
}

fn set(pools: &mut Pools, pop: &str, kind: &str, n: u32) {
    if let Some(p) = pools.get_mut(pop) {
        p.insert(kind.to_string(), n);
    }
}

/// PoPs that miss the objective: for the requests they served, or because users in
/// their region were refused (the region's own PoP is the one to grow).
fn missing(report: &Report, o: &Objective) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for row in &report.pops {
        if row.requests > 0 && (row.ttft_ms.p99 > o.ttft_p99_ms || row.tpot_ms.p99 > o.tpot_p99_ms)
        {
            out.insert(row.pop.clone());
        }
    }
    let pops: BTreeSet<&str> = report.pops.iter().map(|p| p.pop.as_str()).collect();
    for r in &report.regions {
        let refused = r.shed + r.unservable;
        if r.requests > 0
            && refused as f64 > o.max_refused * r.requests as f64
            && pops.contains(r.region.as_str())
        {
            out.insert(r.region.clone());
        }
    }
    out
}

impl CapacityPlan {
    /// The table `meridian sim plan` prints: the PoPs whose count changed, then totals.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::from(
            "pop   jurisdiction  kind   gpus before  gpus after  requests  ttft p99 ms  tpot p99 ms  load\n",
        );
        for p in self
            .pops
            .iter()
            .filter(|p| p.gpus_before != p.gpus_after || p.requests > 0)
        {
            let _ = writeln!(
                s,
                "{:<5} {:<13} {:<6} {:>11} {:>11} {:>9} {:>12.1} {:>12.2} {:>5.2}",
                p.pop,
                p.jurisdiction,
                p.kind,
                p.gpus_before,
                p.gpus_after,
                p.requests,
                p.ttft_p99_ms,
                p.tpot_p99_ms,
                p.load
            );
        }
        let _ = writeln!(
            s,
            "total GPUs: {} before, {} after, {} rounds; objective {}",
            self.gpus_before,
            self.gpus_after,
            self.rounds,
            if self.met { "met" } else { "NOT met" }
        );
        s
    }
}

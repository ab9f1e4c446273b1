//! The independent checker: does a plan keep the format's seven rules, and what does it
//! cost?
//!
//! Written apart from the solvers on purpose: it reads the [`Instance`] by name (site,
//! model and kind strings, its own eligibility and round-trip lookups) and shares none
//! of their tables or incremental state, so a bookkeeping bug in a solver cannot hide
//! the same bug here. It uses [`Problem::compile`] only to refuse invalid instances.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::flow::FlowGraph;
use super::instance::{Demand, Instance, ModelSpec, Objective, PlacementRow, Plan, RouteRow};
use super::problem::{InstanceError, Problem, formula_rtt_ms};

/// Slack on capacity and demand comparisons: plans go through JSON and float sums.
fn slack(limit: f64) -> f64 {
    1e-6 * limit.abs().max(1.0)
}

/// The format's hard rules (and references to things the instance does not have).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// A plan row names a model, site, kind, region or demand entry that is not there.
    Reference,
    GpuCount,
    Fit,
    Residency,
    Latency,
    Capacity,
    Demand,
    Floors,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::Reference => "reference",
            Rule::GpuCount => "rule 1 (GPU count)",
            Rule::Fit => "rule 2 (fit)",
            Rule::Residency => "rule 3 (residency)",
            Rule::Latency => "rule 4 (latency)",
            Rule::Capacity => "rule 5 (capacity)",
            Rule::Demand => "rule 6 (demand)",
            Rule::Floors => "rule 7 (floors)",
        })
    }
}

/// One broken rule, with the model, site, kind or region at fault in its message.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub rule: Rule,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule, self.message)
    }
}

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    /// Empty when the plan is valid.
    pub violations: Vec<Violation>,
    /// The objective of the plan's own placement and routing, recomputed.
    pub objective: Objective,
    /// The objective of the plan's placement with its best routing ([`best_routing`]).
    pub best: Objective,
}

impl CheckReport {
    pub fn is_valid(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The instance, looked up by name.
struct Names<'a> {
    inst: &'a Instance,
    sites: HashMap<&'a str, usize>,
    models: HashMap<&'a str, &'a ModelSpec>,
    kinds: HashMap<&'a str, (f64, f64)>,
    measured: HashMap<(&'a str, &'a str), f64>,
    /// Demand entries by (region, model).
    entries: HashMap<(&'a str, &'a str), Vec<usize>>,
}

impl<'a> Names<'a> {
    fn new(inst: &'a Instance) -> Self {
        let mut entries: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (i, d) in inst.demand.iter().enumerate() {
            entries
                .entry((d.region.as_str(), d.model.as_str()))
                .or_default()
                .push(i);
        }
        Self {
            inst,
            sites: inst
                .sites
                .iter()
                .enumerate()
                .map(|(i, s)| (s.id.as_str(), i))
                .collect(),
            models: inst.models.iter().map(|m| (m.id.as_str(), m)).collect(),
            kinds: inst
                .gpu_kinds
                .iter()
                .map(|k| (k.name.as_str(), (k.mem_gib, k.cost)))
                .collect(),
            measured: inst
                .rtt_ms
                .iter()
                .map(|r| ((r.from.as_str(), r.to.as_str()), r.ms))
                .collect(),
            entries,
        }
    }

    /// Requests per second of one replica of `model` on `kind`; `None` when the model
    /// may not run there (no throughput entry, or too little memory per GPU).
    fn replica_rps(&self, model: &ModelSpec, kind: &str) -> Option<f64> {
        let &(mem, _) = self.kinds.get(kind)?;
        let rps = *model.rps_per_replica.get(kind)?;
        (model.mem_gib / f64::from(model.gpus_per_replica.max(1)) <= mem).then_some(rps)
    }

    fn rtt(&self, region: &str, site: &str) -> Option<f64> {
        if let Some(&ms) = self.measured.get(&(region, site)) {
            return Some(ms);
        }
        let a = &self.inst.sites[*self.sites.get(region)?];
        let b = &self.inst.sites[*self.sites.get(site)?];
        Some(formula_rtt_ms(a.lat, a.lon, b.lat, b.lon))
    }

    /// Why traffic of `d` may not go to `site` (residency or latency), if it may not.
    fn route_refusal(&self, d: &Demand, model: &ModelSpec, site: &str) -> Option<Violation> {
        let s = &self.inst.sites[*self.sites.get(site)?];
        let j = s.jurisdiction.as_str();
        if let Some(allowed) = &d.jurisdictions
            && !allowed.iter().any(|a| a == j)
        {
            return Some(Violation {
                rule: Rule::Residency,
                message: format!(
                    "traffic of region {} for model {} routed to site {site} in {j}, outside the demand's jurisdictions {allowed:?}",
                    d.region, d.model
                ),
            });
        }
        if let Some(allowed) = &model.jurisdictions
            && !allowed.iter().any(|a| a == j)
        {
            return Some(Violation {
                rule: Rule::Residency,
                message: format!(
                    "traffic of region {} for model {} routed to site {site} in {j}, outside the model's jurisdictions {allowed:?}",
                    d.region, d.model
                ),
            });
        }
        let limit = d.slo_rtt_ms.unwrap_or(self.inst.slo_rtt_ms);
        let rtt = self.rtt(&d.region, site)?;
        (rtt > limit + 1e-9).then(|| Violation {
            rule: Rule::Latency,
            message: format!(
                "traffic of region {} for model {} routed to site {site}: round trip {rtt:.2} ms over the limit {limit} ms",
                d.region, d.model
            ),
        })
    }

    /// Serving capacity per (model, site) of a placement, counting only rows that name
    /// known things and kinds the model runs on.
    fn capacity(&self, placement: &[PlacementRow]) -> BTreeMap<(&'a str, &'a str), f64> {
        let mut cap = BTreeMap::new();
        for row in placement {
            let (Some(&m), Some(&s)) = (
                self.models.get(row.model.as_str()),
                self.sites.get(row.site.as_str()),
            ) else {
                continue;
            };
            if let Some(rps) = self.replica_rps(m, &row.gpu) {
                let site = self.inst.sites[s].id.as_str();
                *cap.entry((m.id.as_str(), site)).or_insert(0.0) += f64::from(row.replicas) * rps;
            }
        }
        cap
    }
}

/// Validates the instance, then checks `plan` against it: every broken rule of the
/// format becomes a [`Violation`], and the objective is recomputed from the plan's rows
/// (the plan's own `objective` field is not trusted).
pub fn check(instance: &Instance, plan: &Plan) -> Result<CheckReport, InstanceError> {
    Problem::compile(instance)?;
    let names = Names::new(instance);
    let mut violations = Vec::new();
    check_placement(&names, &plan.placement, &mut violations);
    check_routing(&names, plan, &mut violations);
    let objective = objective(instance, &plan.placement, &plan.routing);
    let best_rows = best_routing(instance, &plan.placement)?;
    let best = objective_of(&names, &plan.placement, &best_rows);
    Ok(CheckReport {
        violations,
        objective,
        best,
    })
}

fn check_placement(names: &Names, placement: &[PlacementRow], out: &mut Vec<Violation>) {
    let inst = names.inst;
    let mut used: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut at_site: HashMap<(&str, &str), u64> = HashMap::new();
    let mut total: HashMap<&str, u64> = HashMap::new();
    let mut push = |rule, message| out.push(Violation { rule, message });
    for row in placement {
        let (m, s) = (row.model.as_str(), row.site.as_str());
        let Some(model) = names.models.get(m) else {
            push(
                Rule::Reference,
                format!("placement names unknown model {m}"),
            );
            continue;
        };
        let Some(&si) = names.sites.get(s) else {
            push(Rule::Reference, format!("placement names unknown site {s}"));
            continue;
        };
        if !names.kinds.contains_key(row.gpu.as_str()) {
            push(
                Rule::Reference,
                format!("placement names unknown GPU kind {}", row.gpu),
            );
            continue;
        }
        if row.replicas == 0 {
            continue;
        }
        let site = &inst.sites[si];
        if names.replica_rps(model, &row.gpu).is_none() {
            push(
                Rule::Fit,
                format!(
                    "model {m} at site {s} on {}: the model has no throughput there or needs more memory per GPU",
                    row.gpu
                ),
            );
        }
        if let Some(allowed) = &model.jurisdictions
            && !allowed.contains(&site.jurisdiction)
        {
            push(
                Rule::Residency,
                format!(
                    "model {m} placed at site {s} in {}, outside its jurisdictions {allowed:?}",
                    site.jurisdiction
                ),
            );
        }
        if let Some(c) = model.constraints.iter().find(|c| !c.admits(&site.labels)) {
            push(
                Rule::Residency,
                format!(
                    "model {m} placed at site {s}, whose labels break its constraint {} {:?} {:?}",
                    c.key, c.op, c.values
                ),
            );
        }
        let gpus = u64::from(row.replicas) * u64::from(model.gpus_per_replica);
        *used.entry((s, row.gpu.as_str())).or_default() += gpus;
        *at_site.entry((m, s)).or_default() += u64::from(row.replicas);
        *total.entry(m).or_default() += u64::from(row.replicas);
    }
    for ((s, k), n) in used {
        let have = names
            .sites
            .get(s)
            .and_then(|&i| inst.sites[i].gpus.get(k))
            .copied()
            .unwrap_or(0);
        if n > u64::from(have) {
            push(
                Rule::GpuCount,
                format!("site {s}, kind {k}: the placement uses {n} GPUs, the site has {have}"),
            );
        }
    }
    for pin in &inst.pins {
        let have = at_site
            .get(&(pin.model.as_str(), pin.site.as_str()))
            .copied()
            .unwrap_or(0);
        if have < u64::from(pin.min_replicas) {
            push(
                Rule::Floors,
                format!(
                    "pin of model {} at site {}: {have} replicas, at least {} wanted",
                    pin.model, pin.site, pin.min_replicas
                ),
            );
        }
    }
    for model in &inst.models {
        if model.min_sites > 1 {
            let sites = at_site
                .iter()
                .filter(|&(&(m, _), &n)| m == model.id && n > 0)
                .count() as u64;
            if sites < u64::from(model.min_sites) {
                push(
                    Rule::Floors,
                    format!(
                        "model {}: replicas at {sites} distinct sites, min_sites (spread) is {}",
                        model.id, model.min_sites
                    ),
                );
            }
        }
        let have = total.get(model.id.as_str()).copied().unwrap_or(0);
        if have < u64::from(model.min_replicas) {
            push(
                Rule::Floors,
                format!(
                    "model {}: {have} replicas in the fleet, min_replicas is {}",
                    model.id, model.min_replicas
                ),
            );
        }
    }
}

/// The demand entry a routing row belongs to, or why it has none.
fn entry_of(names: &Names, row: &RouteRow) -> Result<usize, String> {
    let key = (row.region.as_str(), row.model.as_str());
    let candidates = names.entries.get(&key).map(Vec::as_slice).unwrap_or(&[]);
    match (row.entry, candidates) {
        (Some(i), _) if candidates.contains(&i) => Ok(i),
        (Some(i), _) => Err(format!(
            "routing row names demand entry {i}, which is not region {} model {}",
            row.region, row.model
        )),
        (None, [i]) => Ok(*i),
        (None, []) => Err(format!(
            "routing row for region {} model {}: no such demand entry",
            row.region, row.model
        )),
        (None, _) => Err(format!(
            "routing row for region {} model {}: several demand entries match; the row must name one with \"entry\"",
            row.region, row.model
        )),
    }
}

fn check_routing(names: &Names, plan: &Plan, out: &mut Vec<Violation>) {
    let inst = names.inst;
    let mut routed = vec![0.0; inst.demand.len()];
    let mut served: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for row in &plan.routing {
        let i = match entry_of(names, row) {
            Ok(i) => i,
            Err(message) => {
                out.push(Violation {
                    rule: Rule::Reference,
                    message,
                });
                continue;
            }
        };
        let d = &inst.demand[i];
        if !row.rps.is_finite() || row.rps < 0.0 {
            out.push(Violation {
                rule: Rule::Demand,
                message: format!(
                    "routing row for region {} model {} to site {}: rate {} is not a finite number >= 0",
                    row.region, row.model, row.site, row.rps
                ),
            });
            continue;
        }
        let (Some(model), Some(&si)) = (
            names.models.get(d.model.as_str()),
            names.sites.get(row.site.as_str()),
        ) else {
            out.push(Violation {
                rule: Rule::Reference,
                message: format!("routing row names unknown site {}", row.site),
            });
            continue;
        };
        if row.rps == 0.0 {
            continue;
        }
        if let Some(v) = names.route_refusal(d, model, &row.site) {
            out.push(v);
        }
        routed[i] += row.rps;
        let site = inst.sites[si].id.as_str();
        *served.entry((model.id.as_str(), site)).or_insert(0.0) += row.rps;
    }
    let capacity = names.capacity(&plan.placement);
    for ((m, s), load) in served {
        let cap = capacity.get(&(m, s)).copied().unwrap_or(0.0);
        if load > cap + slack(cap) {
            out.push(Violation {
                rule: Rule::Capacity,
                message: format!(
                    "model {m} at site {s}: {load} rps routed, its replicas serve {cap} rps"
                ),
            });
        }
    }
    for (d, r) in inst.demand.iter().zip(routed) {
        if r > d.rps + slack(d.rps) {
            out.push(Violation {
                rule: Rule::Demand,
                message: format!(
                    "region {} model {}: {r} rps routed, the demand is {} rps",
                    d.region, d.model, d.rps
                ),
            });
        }
    }
}

/// The objective of a placement and a routing, from the rows as they are (rows naming
/// unknown things count for nothing; over-routing counts as served, capped at demand).
pub fn objective(
    instance: &Instance,
    placement: &[PlacementRow],
    routing: &[RouteRow],
) -> Objective {
    objective_of(&Names::new(instance), placement, routing)
}

fn objective_of(names: &Names, placement: &[PlacementRow], routing: &[RouteRow]) -> Objective {
    let inst = names.inst;
    let mut routed = vec![0.0; inst.demand.len()];
    for row in routing {
        if let Ok(i) = entry_of(names, row)
            && row.rps.is_finite()
            && row.rps > 0.0
        {
            routed[i] += row.rps;
        }
    }
    let unserved: f64 = inst
        .demand
        .iter()
        .zip(&routed)
        .map(|(d, &r)| (d.rps - r).max(0.0))
        .sum();
    let mut gpu_cost = 0.0;
    let mut planned: BTreeMap<(&str, &str, &str), i64> = BTreeMap::new();
    for row in placement {
        if let (Some(m), Some(&(_, cost))) = (
            names.models.get(row.model.as_str()),
            names.kinds.get(row.gpu.as_str()),
        ) {
            gpu_cost += f64::from(row.replicas) * f64::from(m.gpus_per_replica) * cost;
        }
        *planned
            .entry((row.model.as_str(), row.site.as_str(), row.gpu.as_str()))
            .or_default() += i64::from(row.replicas);
    }
    for row in &inst.current {
        *planned
            .entry((row.model.as_str(), row.site.as_str(), row.gpu.as_str()))
            .or_default() -= i64::from(row.replicas);
    }
    let moves: u64 = planned.values().map(|d| d.unsigned_abs()).sum();
    let w = &inst.weights;
    Objective {
        unserved_rps: unserved,
        gpu_cost,
        moves,
        total: w.unserved_rps * unserved + w.gpu * gpu_cost + w.moves * moves as f64,
    }
}

/// The routing that serves the most demand with the placement as it stands: per model,
/// a max flow from demand entries through the sites each may use (residency of entry
/// and model, round-trip limit) to the capacity of the model's replicas there.
pub fn best_routing(
    instance: &Instance,
    placement: &[PlacementRow],
) -> Result<Vec<RouteRow>, InstanceError> {
    Problem::compile(instance)?;
    let names = Names::new(instance);
    let capacity = names.capacity(placement);
    let mut by_model: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, d) in instance.demand.iter().enumerate() {
        by_model.entry(d.model.as_str()).or_default().push(i);
    }
    let mut rows: Vec<(usize, usize, RouteRow)> = Vec::new();
    for (m, entries) in by_model {
        let Some(model) = names.models.get(m) else {
            continue;
        };
        let sites: Vec<(&str, f64)> = capacity
            .range((m, "")..)
            .take_while(|((mm, _), _)| *mm == m)
            .filter(|&(_, &c)| c > 0.0)
            .map(|(&(_, s), &c)| (s, c))
            .collect();
        if sites.is_empty() {
            continue;
        }
        // Nodes: 0 source, 1 sink, entries, then sites.
        let (source, sink) = (0, 1);
        let site_node = |j: usize| 2 + entries.len() + j;
        let mut g = FlowGraph::new(2 + entries.len() + sites.len());
        let mut arcs = Vec::new();
        for (a, &i) in entries.iter().enumerate() {
            let d = &instance.demand[i];
            g.add_edge(source, 2 + a, d.rps);
            for (j, &(s, _)) in sites.iter().enumerate() {
                if names.route_refusal(d, model, s).is_none() {
                    arcs.push((i, j, g.add_edge(2 + a, site_node(j), f64::INFINITY)));
                }
            }
        }
        for (j, &(_, c)) in sites.iter().enumerate() {
            g.add_edge(site_node(j), sink, c);
        }
        g.max_flow(source, sink);
        for (i, j, arc) in arcs {
            let f = g.flow(arc);
            if f > 0.0 {
                let d = &instance.demand[i];
                let shared = names
                    .entries
                    .get(&(d.region.as_str(), d.model.as_str()))
                    .is_some_and(|v| v.len() > 1);
                rows.push((
                    i,
                    j,
                    RouteRow {
                        region: d.region.clone(),
                        model: d.model.clone(),
                        site: sites[j].0.to_string(),
                        rps: f,
                        entry: shared.then_some(i),
                    },
                ));
            }
        }
    }
    rows.sort_by(|a, b| (a.0, &a.2.site).cmp(&(b.0, &b.2.site)));
    Ok(rows.into_iter().map(|(_, _, r)| r).collect())
}

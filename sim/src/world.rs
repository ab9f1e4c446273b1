//! The fleet in virtual time: an event queue, the users' arrivals, the production
//! router's scoring, the production placement solver, every replica's engine model,
//! faults, and the tallies the report is made from.
//!
//! Time is in nanoseconds on the queue, microseconds in the engine models. Every
//! random draw comes from one seeded generator, and events at the same time run in the
//! order they were scheduled: the same inputs and seed give the same report, byte for
//! byte.
//!
//! A request's life: it arrives from its region, the router ranks the workers with
//! [`meridian_router::score::rank`] on a fleet view whose load fields the simulator keeps
//! current (load reports without delay), and it travels half the round trip to the
//! chosen PoP. The engine model queues, batches and runs it; the first token and the
//! last travel the other half back. TTFT is counted from arrival to the first token
//! back at the user, TPOT between the first and last token at the engine.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use meridian_placement::solver::{self, SolveOptions};
use meridian_proto::catalog::Catalog;
use meridian_router::fleet::{FleetView, Load, RttTable, Worker as ViewWorker};
use meridian_router::score::{Ask, rank};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::SimError;
use crate::fleet::{self, DemandMap, InstanceInputs};
use crate::report::{
    BucketRow, PlacementReport, PopRow, RegionRow, Report, RequestRow, SloReport, Totals,
};
use crate::scenario::{Fault, Scenario};
use crate::stats::Tally;
use crate::traffic::{self, LengthTable, TraceRow};
use crate::worker::{Job, Outcome, ReqId, Worker};

/// What a run needs besides the scenario.
pub struct Inputs<'a> {
    pub scenario: &'a Scenario,
    pub catalog: &'a Catalog,
    /// ShareGPT's (prompt, output) token counts, when the scenario draws from them.
    pub sharegpt: Option<&'a LengthTable>,
    /// Arrivals from a trace instead of the traffic model.
    pub trace: Option<&'a [TraceRow]>,
    /// Keep one row per completed request in the report (for comparisons with a real
    /// engine; costs memory on long runs).
    pub per_request: bool,
}

/// Where a long run stands, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub simulated_h: f64,
    pub total_h: f64,
    pub requests: u64,
}

/// A request that fails over this many times is given up as unservable.
const MAX_TRIES: u8 = 3;
/// After the last arrival, in-flight requests get this long to finish, hours.
const DRAIN_H: f64 = 1.0;

#[derive(Debug, Clone, Copy)]
enum Ev {
    /// The next arrival of a generated region stream.
    Arrive(u32),
    /// Trace row `i`.
    Trace(u32),
    /// A routed request reaches its worker.
    AtWorker(ReqId),
    Wake(u32, u32),
    Ready(u32),
    /// A replica the plan moved away stops taking requests (once its replacement
    /// serves: make before break).
    Retire(u32),
    FaultStart(u32),
    FaultEnd(u32),
    /// The periodic re-plan, which schedules the next one.
    Replan,
    /// A re-plan after a fault or its end.
    FaultReplan,
    BucketEnd(u32),
}

#[derive(Debug, Clone, Copy)]
struct Queued {
    t_ns: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.t_ns, self.seq) == (o.t_ns, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.t_ns, self.seq).cmp(&(o.t_ns, o.seq))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Loading,
    Serving,
    /// Placed elsewhere: finishes what it holds, takes nothing new.
    Draining,
    Dead,
}

struct SimWorker {
    engine: Worker,
    pop: u32,
    model: u16,
    kind: u16,
    state: State,
    /// Wake events carry the generation they were scheduled in; older ones are void.
    epoch: u32,
    wake_us: f64,
    /// Its prefix cache holds the model's shared prefix (after its first request).
    warm_prefix: bool,
    /// Serving since, and until (`None`: still).
    ready_us: f64,
    end_us: Option<f64>,
    busy_seen: f64,
    last_step_ms: f32,
    /// Removed by a plan, serving until its replacement does.
    retiring: bool,
}

#[derive(Debug, Clone, Copy)]
struct Req {
    arrival_us: f64,
    region: u32,
    model: u16,
    allowed: u16,
    prompt: u32,
    output: u32,
    worker: u32,
    rtt_ms: f32,
    first_us: f64,
    tries: u8,
}

/// A fault as the run applies it.
struct FaultState {
    fault: Fault,
    /// GPUs it took per (pop, kind), to give back at its end.
    taken: Vec<(usize, usize, u32)>,
    /// RTT entries it cut, with their old values.
    cut: Vec<(usize, usize, f32)>,
}

struct World<'a> {
    s: &'a Scenario,
    catalog: &'a Catalog,
    trace: Option<&'a [TraceRow]>,
    pops: Vec<usize>,
    pop_of_site: Vec<Option<u32>>,
    regions: Vec<usize>,
    region_of_site: Vec<Option<u32>>,
    region_share: Vec<f64>,
    region_max_factor: Vec<f64>,
    residency: Vec<Option<(f64, u16)>>,
    allowed: Vec<Vec<String>>,
    mix_cdf: Vec<(f64, u16)>,
    lengths: LengthTable,
    rtt: RttTable,
    cut: Vec<(usize, usize)>,
    base_pools: Vec<Vec<u32>>,
    failed_gpus: Vec<Vec<u32>>,
    down_pops: Vec<u32>,
    rps_per_replica: Vec<Vec<f64>>,
    workers: Vec<SimWorker>,
    view: FleetView,
    view_of: Vec<Option<u32>>,
    worker_of_view: Vec<u32>,
    unseen: Vec<u32>,
    reqs: Vec<Req>,
    free_reqs: Vec<ReqId>,
    live: u64,
    heap: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    now_us: f64,
    end_us: f64,
    rng: ChaCha8Rng,
    outcomes: Vec<Outcome>,
    total: Tally,
    by_pop: Vec<Tally>,
    by_region: Vec<Tally>,
    buckets: Vec<Tally>,
    bucket_us: f64,
    bucket_busy: Vec<f64>,
    bucket_replica_us: Vec<f64>,
    bucket_replicas: Vec<u64>,
    replica_us_acc: f64,
    replica_us_mark: f64,
    serving: u64,
    serving_since: f64,
    pop_busy: Vec<f64>,
    window: DemandMap,
    window_start_us: f64,
    last_demand: DemandMap,
    faults: Vec<FaultState>,
    placement: PlacementReport,
    totals: Totals,
    violations: u64,
    events: u64,
    peak_placed_gpus: u64,
    revision: u64,
    per_request: Option<Vec<RequestRow>>,
    placement_error: Option<String>,
}

/// Runs a scenario to its end.
pub fn run(inputs: &Inputs<'_>, progress: &mut dyn FnMut(Progress)) -> Result<Report, SimError> {
    let mut w = World::new(inputs)?;
    w.start()?;
    w.run(progress);
    w.report()
}

fn ns(us: f64) -> u64 {
    (us.max(0.0) * 1000.0).round() as u64
}

impl<'a> World<'a> {
    fn new(inputs: &Inputs<'a>) -> Result<Self, SimError> {
        let s = inputs.scenario;
        let catalog = inputs.catalog;
        let n_sites = catalog.len();
        let site = |id: &str, what: &str| {
            catalog
                .index_of(id)
                .ok_or_else(|| SimError::Scenario(format!("{what}: unknown catalog site {id:?}")))
        };
        let pops: Vec<usize> = if s.geography.pops.is_empty() {
            (0..n_sites).collect()
        } else {
            s.geography
                .pops
                .iter()
                .map(|p| site(p, "geography.pops"))
                .collect::<Result<_, _>>()?
        };
        let mut regions: Vec<usize> = if let Some(trace) = inputs.trace {
            let mut r = Vec::new();
            for row in trace {
                r.push(site(&row.region, "trace region")?);
            }
            r.sort_unstable();
            r.dedup();
            r
        } else if s.geography.regions.is_empty() {
            pops.clone()
        } else {
            s.geography
                .regions
                .iter()
                .map(|p| site(p, "geography.regions"))
                .collect::<Result<_, _>>()?
        };
        regions.dedup();
        let mut pop_of_site = vec![None; n_sites];
        for (i, &c) in pops.iter().enumerate() {
            pop_of_site[c] = Some(i as u32);
        }
        let mut region_of_site = vec![None; n_sites];
        for (i, &c) in regions.iter().enumerate() {
            region_of_site[c] = Some(i as u32);
        }
        let sites = catalog.sites();
        let t = &s.traffic;
        let weight = |c: usize| {
            t.region_weight
                .get(&sites[c].jurisdiction)
                .or_else(|| t.region_weight.get("default"))
                .copied()
                .unwrap_or(1.0)
        };
        let total_weight: f64 = regions.iter().map(|&c| weight(c)).sum();
        let region_share: Vec<f64> = regions
            .iter()
            .map(|&c| {
                if total_weight > 0.0 {
                    weight(c) / total_weight
                } else {
                    0.0
                }
            })
            .collect();
        let region_max_factor: Vec<f64> = regions
            .iter()
            .map(|&c| {
                let bursts: f64 = t
                    .bursts
                    .iter()
                    .filter(|b| burst_hits(b, &sites[c].id, &sites[c].jurisdiction))
                    .map(|b| b.multiplier.max(1.0))
                    .product();
                (1.0 + t.diurnal_amplitude) * bursts
            })
            .collect();
        let mut allowed: Vec<Vec<String>> = vec![Vec::new()];
        let mut allowed_index = |list: &[String]| -> u16 {
            let mut list = list.to_vec();
            list.sort();
            list.dedup();
            match allowed.iter().position(|a| *a == list) {
                Some(i) => i as u16,
                None => {
                    allowed.push(list);
                    (allowed.len() - 1) as u16
                }
            }
        };
        let residency = regions
            .iter()
            .map(|&c| {
                t.residency
                    .iter()
                    .find(|r| r.from == sites[c].jurisdiction)
                    .map(|r| (r.fraction, allowed_index(&r.allowed)))
            })
            .collect();
        if let Some(trace) = inputs.trace {
            for row in trace {
                allowed_index(&row.jurisdictions);
            }
        }
        let model_index = |id: &str| s.models.iter().position(|m| m.id == id);
        let mix_total: f64 = t.mix.values().sum();
        let mut acc = 0.0;
        let mut mix_cdf = Vec::new();
        for (id, share) in &t.mix {
            if *share > 0.0 {
                acc += share / mix_total;
                let m = model_index(id)
                    .ok_or_else(|| SimError::Scenario(format!("traffic.mix: unknown {id}")))?;
                mix_cdf.push((acc, m as u16));
            }
        }
        if let Some(trace) = inputs.trace {
            for (i, row) in trace.iter().enumerate() {
                if model_index(&row.model).is_none() {
                    return Err(SimError::Trace(format!(
                        "row {}: unknown model {:?}",
                        i + 1,
                        row.model
                    )));
                }
            }
        }
        let lengths = LengthTable::for_scenario(&t.lengths, inputs.sharegpt).or_else(|e| {
            if inputs.trace.is_some() {
                LengthTable::new(vec![(1, 1)])
            } else {
                Err(e)
            }
        })?;
        let (mean_prompt, mean_output) = match inputs.trace {
            Some(rows) if !rows.is_empty() => {
                let n = rows.len() as f64;
                (
                    rows.iter().map(|r| f64::from(r.prompt_tokens)).sum::<f64>() / n,
                    rows.iter().map(|r| f64::from(r.output_tokens)).sum::<f64>() / n,
                )
            }
            _ => lengths.mean(),
        };
        let rps_per_replica = s
            .models
            .iter()
            .map(|m| {
                s.gpu_kinds
                    .iter()
                    .map(|k| {
                        m.engine.get(&k.name).map_or(0.0, |e| {
                            s.placement.target_utilisation
                                * fleet::replica_rps(
                                    e,
                                    m.shared_prefix_tokens,
                                    mean_prompt,
                                    mean_output,
                                )
                        })
                    })
                    .collect()
            })
            .collect();
        let base_pools: Vec<Vec<u32>> = pops
            .iter()
            .map(|&c| fleet::pool(s, &sites[c].id, &sites[c].jurisdiction))
            .collect();
        for f in &s.faults {
            match f {
                Fault::Gpu { pop, .. } | Fault::Pop { pop, .. } => {
                    let c = site(pop, "faults")?;
                    if pop_of_site[c].is_none() {
                        return Err(SimError::Scenario(format!("faults: {pop} is not a PoP")));
                    }
                }
                Fault::Link { from, to, .. } => {
                    for side in [from, to] {
                        if catalog.index_of(side).is_none()
                            && !sites.iter().any(|x| &x.jurisdiction == side)
                        {
                            return Err(SimError::Scenario(format!(
                                "faults: {side:?} is neither a site nor a jurisdiction"
                            )));
                        }
                    }
                }
            }
        }
        let duration_us = s.duration_h * 3.6e9;
        let bucket_us = s.report.bucket_min * 6e7;
        let n_buckets = (duration_us / bucket_us).ceil().max(1.0) as usize;
        Ok(Self {
            s,
            catalog,
            trace: inputs.trace,
            failed_gpus: vec![vec![0; s.gpu_kinds.len()]; pops.len()],
            down_pops: vec![0; pops.len()],
            by_pop: vec![Tally::default(); pops.len()],
            pop_busy: vec![0.0; pops.len()],
            by_region: vec![Tally::default(); regions.len()],
            pops,
            pop_of_site,
            regions,
            region_of_site,
            region_share,
            region_max_factor,
            residency,
            allowed,
            mix_cdf,
            lengths,
            rtt: RttTable::from_catalog(catalog),
            cut: Vec::new(),
            base_pools,
            rps_per_replica,
            workers: Vec::new(),
            view: FleetView::default(),
            view_of: Vec::new(),
            worker_of_view: Vec::new(),
            unseen: Vec::new(),
            reqs: Vec::new(),
            free_reqs: Vec::new(),
            live: 0,
            heap: BinaryHeap::new(),
            seq: 0,
            now_us: 0.0,
            end_us: duration_us,
            rng: ChaCha8Rng::seed_from_u64(s.seed),
            outcomes: Vec::new(),
            total: Tally::default(),
            buckets: vec![Tally::default(); n_buckets],
            bucket_us,
            bucket_busy: vec![0.0; n_buckets],
            bucket_replica_us: vec![0.0; n_buckets],
            bucket_replicas: vec![0; n_buckets],
            replica_us_acc: 0.0,
            replica_us_mark: 0.0,
            serving: 0,
            serving_since: 0.0,
            window: DemandMap::new(),
            window_start_us: 0.0,
            last_demand: DemandMap::new(),
            faults: s
                .faults
                .iter()
                .map(|f| FaultState {
                    fault: f.clone(),
                    taken: Vec::new(),
                    cut: Vec::new(),
                })
                .collect(),
            placement: PlacementReport::default(),
            totals: Totals::default(),
            violations: 0,
            events: 0,
            peak_placed_gpus: 0,
            revision: 0,
            per_request: inputs.per_request.then(Vec::new),
            placement_error: None,
        })
    }

    fn push(&mut self, t_us: f64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse(Queued {
            t_ns: ns(t_us),
            seq: self.seq,
            ev,
        }));
    }

    /// The rate of region `r` at `t_us`, requests per second.
    fn region_rate(&self, r: usize, t_us: f64) -> f64 {
        let t = &self.s.traffic;
        let site = &self.catalog.sites()[self.regions[r]];
        let t_h = t_us / 3.6e9;
        let local = traffic::local_hour(site.lon, self.s.start_utc_h + t_h);
        let bursts: f64 = t
            .bursts
            .iter()
            .filter(|b| {
                t_h >= b.start_h
                    && t_h < b.start_h + b.duration_min / 60.0
                    && burst_hits(b, &site.id, &site.jurisdiction)
            })
            .map(|b| b.multiplier)
            .product();
        t.mean_rps * self.region_share[r] * traffic::diurnal(t, local) * bursts
    }

    fn region_max_rate(&self, r: usize) -> f64 {
        self.s.traffic.mean_rps * self.region_share[r] * self.region_max_factor[r]
    }

    fn next_arrival(&mut self, r: usize) {
        let max = self.region_max_rate(r);
        if max <= 0.0 {
            return;
        }
        let u: f64 = self.rng.random();
        let t = self.now_us - (1.0 - u).ln() / max * 1e6;
        if t < self.end_us {
            self.push(t, Ev::Arrive(r as u32));
        }
    }

    /// Places the first plan and schedules arrivals, faults, buckets and re-plans.
    fn start(&mut self) -> Result<(), SimError> {
        let demand = self.forecast_demand();
        self.last_demand = demand.clone();
        self.replan(&demand, true)?;
        match self.trace {
            Some(rows) if !rows.is_empty() => self.push(rows[0].t_ms * 1000.0, Ev::Trace(0)),
            Some(_) => {}
            None => {
                for r in 0..self.regions.len() {
                    self.next_arrival(r);
                }
            }
        }
        for i in 0..self.faults.len() {
            let at = self.faults[i].fault.at_h() * 3.6e9;
            if at < self.end_us {
                self.push(at, Ev::FaultStart(i as u32));
                if let Some(d) = self.faults[i].fault.duration_min() {
                    self.push(at + d * 6e7, Ev::FaultEnd(i as u32));
                }
            }
        }
        for b in 0..self.buckets.len() {
            let t = ((b + 1) as f64 * self.bucket_us).min(self.end_us);
            self.push(t, Ev::BucketEnd(b as u32));
        }
        if self.s.placement.replan_every_min > 0.0 {
            self.push(self.s.placement.replan_every_min * 6e7, Ev::Replan);
        }
        Ok(())
    }

    /// Demand for the first plan: from the trace, or each region's rate at its daily
    /// peak when the placement stays put for the run, or at the start when it follows
    /// the day.
    fn forecast_demand(&self) -> DemandMap {
        let mut d = DemandMap::new();
        if let Some(rows) = self.trace {
            let span_s = (self.s.duration_h * 3600.0).max(1.0);
            for row in rows {
                let (Some(c), Some(m)) = (
                    self.catalog.index_of(&row.region),
                    self.s.models.iter().position(|m| m.id == row.model),
                ) else {
                    continue;
                };
                let a = self.allowed_of(&row.jurisdictions);
                *d.entry((c, m, a)).or_default() += 1.0 / span_s;
            }
            return d;
        }
        let follow = self.s.placement.replan_every_min > 0.0;
        let mut last = 0.0;
        let shares: Vec<(u16, f64)> = self
            .mix_cdf
            .iter()
            .map(|&(acc, m)| {
                let share = acc - last;
                last = acc;
                (m, share)
            })
            .collect();
        for r in 0..self.regions.len() {
            let rate = if follow {
                self.region_rate(r, 0.0)
            } else {
                self.s.traffic.mean_rps
                    * self.region_share[r]
                    * (1.0 + self.s.traffic.diurnal_amplitude)
            };
            let (frac, a) = self.residency[r].unwrap_or((0.0, 0));
            for &(m, share) in &shares {
                let key = |a| (self.regions[r], usize::from(m), a);
                if frac > 0.0 {
                    *d.entry(key(usize::from(a))).or_default() += rate * share * frac;
                }
                if frac < 1.0 {
                    *d.entry(key(0)).or_default() += rate * share * (1.0 - frac);
                }
            }
        }
        d
    }

    fn allowed_of(&self, list: &[String]) -> usize {
        let mut list = list.to_vec();
        list.sort();
        list.dedup();
        self.allowed.iter().position(|a| *a == list).unwrap_or(0)
    }

    fn current_counts(&self) -> BTreeMap<(usize, usize, usize), u32> {
        let mut c = BTreeMap::new();
        for w in &self.workers {
            if matches!(w.state, State::Serving | State::Loading) && !w.retiring {
                *c.entry((usize::from(w.model), w.pop as usize, usize::from(w.kind)))
                    .or_default() += 1;
            }
        }
        c
    }

    fn pools_now(&self) -> Vec<Vec<u32>> {
        self.base_pools
            .iter()
            .enumerate()
            .map(|(p, pool)| {
                pool.iter()
                    .zip(&self.failed_gpus[p])
                    .map(|(n, f)| {
                        if self.down_pops[p] > 0 {
                            0
                        } else {
                            n.saturating_sub(*f)
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// Solves placement for `demand` with the production solver and applies the plan.
    fn replan(&mut self, demand: &DemandMap, first: bool) -> Result<(), SimError> {
        let current = self.current_counts();
        let pools = self.pools_now();
        let instance = fleet::instance(&InstanceInputs {
            scenario: self.s,
            catalog: self.catalog,
            pops: &self.pops,
            regions: &self.regions,
            pools: &pools,
            demand,
            allowed: &self.allowed,
            rps_per_replica: &self.rps_per_replica,
            current: &current,
            cut: &self.cut,
        });
        let options = SolveOptions {
            seed: self.s.seed,
            ..SolveOptions::default()
        };
        let plan = match solver::solve(&instance, &options) {
            Ok(plan) => plan,
            Err(e) if first => return Err(SimError::Placement(e.to_string())),
            Err(e) => {
                // The fleet keeps what it has, as the control plane does when a round
                // fails; the report counts the round and keeps the first error.
                self.placement.failed_rounds += 1;
                self.placement_error.get_or_insert_with(|| e.to_string());
                return Ok(());
            }
        };
        let mut want: BTreeMap<(usize, usize, usize), u32> = BTreeMap::new();
        for row in &plan.placement {
            let m = self.s.models.iter().position(|x| x.id == row.model);
            let p = self
                .catalog
                .index_of(&row.site)
                .and_then(|c| self.pop_of_site[c]);
            let k = self.s.gpu_kinds.iter().position(|x| x.name == row.gpu);
            if let (Some(m), Some(p), Some(k)) = (m, p, k) {
                *want.entry((m, p as usize, k)).or_default() += row.replicas;
            }
        }
        let keys: Vec<(usize, usize, usize)> = want.keys().chain(current.keys()).copied().collect();
        let mut changed = false;
        let ready = if first {
            self.now_us
        } else {
            self.now_us + self.s.placement.load_s * 1e6
        };
        let mut seen = std::collections::BTreeSet::new();
        for key in keys {
            if !seen.insert(key) {
                continue;
            }
            let (have, wanted) = (
                current.get(&key).copied().unwrap_or(0),
                want.get(&key).copied().unwrap_or(0),
            );
            if !first {
                self.placement.moves += u64::from(have.abs_diff(wanted));
            }
            for _ in have..wanted {
                self.add_worker(key, ready, first)?;
                changed = true;
            }
            for _ in wanted..have {
                if let Some(i) = self.pick_to_remove(key) {
                    if first || self.workers[i].state == State::Loading {
                        self.retire(i);
                        changed = true;
                    } else {
                        self.workers[i].retiring = true;
                        self.push(ready, Ev::Retire(i as u32));
                    }
                }
            }
        }
        self.placement.rounds += 1;
        if first {
            self.placement.initial_replicas = want.values().map(|&n| u64::from(n)).sum();
        }
        if changed {
            self.rebuild_view();
        }
        Ok(())
    }

    fn add_worker(
        &mut self,
        (m, p, k): (usize, usize, usize),
        ready_us: f64,
        now: bool,
    ) -> Result<(), SimError> {
        let spec = &self.s.models[m];
        let Some(engine) = spec.engine.get(&self.s.gpu_kinds[k].name) else {
            return Err(SimError::Placement(format!(
                "the plan puts {} on {}, which has no engine for it",
                spec.id, self.s.gpu_kinds[k].name
            )));
        };
        let site = &self.catalog.sites()[self.pops[p]];
        if spec
            .jurisdictions
            .as_ref()
            .is_some_and(|j| !j.contains(&site.jurisdiction))
        {
            // The placement broke the model's residency: the invariant the run checks.
            self.violations += 1;
        }
        let worker = Worker::new(engine);
        let step_ms = (engine.one_token_step_us() / 1000.0) as f32;
        self.workers.push(SimWorker {
            engine: worker,
            pop: p as u32,
            model: m as u16,
            kind: k as u16,
            state: if now { State::Serving } else { State::Loading },
            epoch: 0,
            wake_us: 0.0,
            warm_prefix: false,
            ready_us,
            end_us: None,
            busy_seen: 0.0,
            last_step_ms: step_ms,
            retiring: false,
        });
        if !now {
            let id = (self.workers.len() - 1) as u32;
            self.push(ready_us, Ev::Ready(id));
        }
        Ok(())
    }

    /// The replica of `key` to remove: a loading one first, else the serving one with
    /// the least work; never one already on its way out.
    fn pick_to_remove(&self, (m, p, k): (usize, usize, usize)) -> Option<usize> {
        let matching = |w: &SimWorker| {
            usize::from(w.model) == m
                && w.pop as usize == p
                && usize::from(w.kind) == k
                && !w.retiring
        };
        self.workers
            .iter()
            .enumerate()
            .filter(|(_, w)| matching(w) && w.state == State::Loading)
            .map(|(i, _)| i)
            .next_back()
            .or_else(|| {
                self.workers
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| matching(w) && w.state == State::Serving)
                    .min_by_key(|(i, w)| (w.engine.running() + w.engine.queue_depth(), Reverse(*i)))
                    .map(|(i, _)| i)
            })
    }

    /// Takes replica `i` out of service: a loading one is cancelled, a serving one
    /// finishes what it holds.
    fn retire(&mut self, i: usize) {
        let now = self.now_us;
        let w = &mut self.workers[i];
        match w.state {
            State::Loading => {
                w.state = State::Dead;
                w.ready_us = now;
                w.end_us = Some(now);
            }
            State::Serving if w.engine.is_idle() && w.engine.queue_depth() == 0 => {
                w.state = State::Dead;
                w.end_us = Some(now);
            }
            State::Serving => w.state = State::Draining,
            State::Draining | State::Dead => {}
        }
    }

    /// A new fleet view for the router: every serving replica, with its load.
    fn rebuild_view(&mut self) {
        self.revision += 1;
        let sites = self.catalog.sites();
        let mut list = Vec::new();
        self.worker_of_view.clear();
        self.view_of = vec![None; self.workers.len()];
        let mut placed_gpus = 0u64;
        for (i, w) in self.workers.iter().enumerate() {
            if matches!(w.state, State::Serving | State::Loading | State::Draining) {
                placed_gpus += u64::from(self.s.models[usize::from(w.model)].gpus_per_replica);
            }
            if w.state != State::Serving {
                continue;
            }
            let site = &sites[self.pops[w.pop as usize]];
            self.view_of[i] = Some(list.len() as u32);
            self.worker_of_view.push(i as u32);
            list.push(ViewWorker {
                pop: site.id.clone(),
                site_index: self.pops[w.pop as usize],
                jurisdiction: site.jurisdiction.clone(),
                worker_id: format!("w{i}"),
                endpoint: String::new(),
                model: self.s.models[usize::from(w.model)].id.clone(),
                warm: true,
                healthy: true,
                cordoned: false,
                load: Load {
                    max_running: w.engine.max_running(),
                    ..Load::default()
                },
                block_size: 0,
                cached_blocks: Vec::new(),
            });
        }
        self.peak_placed_gpus = self.peak_placed_gpus.max(placed_gpus);
        self.mark_serving(list.len() as u64);
        self.unseen = vec![0; list.len()];
        self.view = FleetView::new(self.revision, list);
        for i in 0..self.workers.len() {
            self.touch(i);
        }
    }

    fn mark_serving(&mut self, n: u64) {
        self.replica_us_acc += self.serving as f64 * (self.now_us - self.serving_since);
        self.serving = n;
        self.serving_since = self.now_us;
    }

    /// Copies worker `i`'s load into the router's view (a load report without delay).
    fn touch(&mut self, i: usize) {
        let Some(v) = self.view_of.get(i).copied().flatten() else {
            return;
        };
        let w = &mut self.workers[i];
        let step = w.engine.step_ms();
        if step > 0.0 {
            w.last_step_ms = step;
        }
        let h = &mut self.view.hot[v as usize];
        h.queue_depth = w.engine.queue_depth();
        h.running = w.engine.running();
        h.mean_step_ms = w.last_step_ms;
        h.prefill_speed = w.engine.prefill_speed();
    }

    fn run(&mut self, progress: &mut dyn FnMut(Progress)) {
        let hard_end = self.end_us + DRAIN_H * 3.6e9;
        while let Some(Reverse(q)) = self.heap.pop() {
            let t_us = q.t_ns as f64 / 1000.0;
            if t_us > hard_end || (t_us >= self.end_us && self.live == 0) {
                break;
            }
            self.now_us = t_us;
            self.events += 1;
            if self.events.is_multiple_of(1 << 16) {
                progress(Progress {
                    simulated_h: t_us / 3.6e9,
                    total_h: self.s.duration_h,
                    requests: self.total.arrived,
                });
            }
            match q.ev {
                Ev::Arrive(r) => {
                    let r = r as usize;
                    self.next_arrival(r);
                    let accept = self.region_rate(r, t_us) / self.region_max_rate(r);
                    if self.rng.random::<f64>() < accept {
                        self.arrive_generated(r);
                    }
                }
                Ev::Trace(i) => self.arrive_trace(i as usize),
                Ev::AtWorker(id) => self.at_worker(id),
                Ev::Wake(w, epoch) => {
                    if self.workers[w as usize].epoch == epoch {
                        self.wake(w as usize);
                    }
                }
                Ev::Ready(w) => {
                    let w = &mut self.workers[w as usize];
                    if w.state == State::Loading {
                        w.state = State::Serving;
                        w.ready_us = t_us;
                        self.rebuild_view();
                    }
                }
                Ev::Retire(w) => {
                    self.retire(w as usize);
                    self.rebuild_view();
                }
                Ev::FaultStart(i) => self.fault_start(i as usize),
                Ev::FaultEnd(i) => self.fault_end(i as usize),
                Ev::Replan => {
                    self.measured_replan();
                    let next = t_us + self.s.placement.replan_every_min * 6e7;
                    if next < self.end_us {
                        self.push(next, Ev::Replan);
                    }
                }
                Ev::FaultReplan => self.measured_replan(),
                Ev::BucketEnd(b) => self.bucket_end(b as usize),
            }
        }
        self.now_us = self.now_us.max(self.end_us);
        self.mark_serving(self.serving);
    }

    fn new_req(&mut self, r: Req) -> ReqId {
        self.live += 1;
        match self.free_reqs.pop() {
            Some(id) => {
                self.reqs[id as usize] = r;
                id
            }
            None => {
                self.reqs.push(r);
                (self.reqs.len() - 1) as ReqId
            }
        }
    }

    fn free_req(&mut self, id: ReqId) {
        self.live -= 1;
        self.free_reqs.push(id);
    }

    fn bucket_of(&self, t_us: f64) -> usize {
        ((t_us / self.bucket_us) as usize).min(self.buckets.len() - 1)
    }

    fn arrive_generated(&mut self, r: usize) {
        let u: f64 = self.rng.random();
        let m = self
            .mix_cdf
            .iter()
            .find(|(acc, _)| u < *acc)
            .or(self.mix_cdf.last())
            .map_or(0, |&(_, m)| m);
        let (prompt, output) = self.lengths.sample(&mut self.rng);
        let allowed = match self.residency[r] {
            Some((frac, a)) if self.rng.random::<f64>() < frac => a,
            _ => 0,
        };
        self.admit(r, m, allowed, prompt, output);
    }

    fn arrive_trace(&mut self, i: usize) {
        let Some(rows) = self.trace else {
            return;
        };
        if let Some(next) = rows.get(i + 1)
            && next.t_ms * 1000.0 < self.end_us
        {
            self.push(next.t_ms * 1000.0, Ev::Trace(i as u32 + 1));
        }
        let row = &rows[i];
        let (Some(r), Some(m)) = (
            self.catalog
                .index_of(&row.region)
                .and_then(|c| self.region_of_site[c]),
            self.s.models.iter().position(|m| m.id == row.model),
        ) else {
            return;
        };
        let a = self.allowed_of(&row.jurisdictions) as u16;
        self.admit(
            r as usize,
            m as u16,
            a,
            row.prompt_tokens,
            row.output_tokens,
        );
    }

    fn admit(&mut self, r: usize, model: u16, allowed: u16, prompt: u32, output: u32) {
        let now = self.now_us;
        *self
            .window
            .entry((self.regions[r], usize::from(model), usize::from(allowed)))
            .or_default() += 1.0;
        self.total.arrived += 1;
        self.by_region[r].arrived += 1;
        let b = self.bucket_of(now);
        self.buckets[b].arrived += 1;
        let id = self.new_req(Req {
            arrival_us: now,
            region: r as u32,
            model,
            allowed,
            prompt,
            output,
            worker: u32::MAX,
            rtt_ms: 0.0,
            first_us: -1.0,
            tries: 0,
        });
        self.route(id);
    }

    /// Ranks the workers for request `id` with the production scorer and sends it to
    /// the best reachable one, or refuses it as the router would.
    fn route(&mut self, id: ReqId) {
        let r = self.reqs[id as usize];
        let region_site = self.regions[r.region as usize];
        let ask = Ask {
            model: &self.s.models[usize::from(r.model)].id,
            region: region_site,
            jurisdictions: &self.allowed[usize::from(r.allowed)],
            prompt_tokens: r.prompt,
            cached: &[],
            max_waiting: self.s.router.max_waiting_per_worker,
        };
        let ranking = rank(&self.view, &self.rtt, &ask, self.unseen.as_slice());
        let Some(c) = ranking.iter().find(|c| c.rtt_ms.is_finite()) else {
            let shed = ranking.is_empty() && ranking.saturated > 0;
            self.refuse(id, shed);
            return;
        };
        let w = self.worker_of_view[c.worker as usize];
        // The invariant, checked apart from the scorer: the PoP is allowed.
        let allowed = &self.allowed[usize::from(r.allowed)];
        let pop_site = self.pops[self.workers[w as usize].pop as usize];
        if !allowed.is_empty() && !allowed.contains(&self.catalog.sites()[pop_site].jurisdiction) {
            self.violations += 1;
        }
        let req = &mut self.reqs[id as usize];
        req.worker = w;
        req.rtt_ms = c.rtt_ms;
        let at = self.now_us + f64::from(c.rtt_ms) * 500.0;
        self.push(at, Ev::AtWorker(id));
    }

    fn refuse(&mut self, id: ReqId, shed: bool) {
        let r = self.reqs[id as usize];
        let b = self.bucket_of(r.arrival_us);
        for t in [
            &mut self.total,
            &mut self.by_region[r.region as usize],
            &mut self.buckets[b],
        ] {
            if shed {
                t.shed += 1;
            } else {
                t.unservable += 1;
            }
        }
        self.free_req(id);
    }

    fn retry(&mut self, id: ReqId) {
        let req = &mut self.reqs[id as usize];
        req.tries += 1;
        if req.tries >= MAX_TRIES {
            self.refuse(id, false);
            return;
        }
        self.totals.retried += 1;
        self.route(id);
    }

    fn at_worker(&mut self, id: ReqId) {
        let r = self.reqs[id as usize];
        let wi = r.worker as usize;
        if matches!(self.workers[wi].state, State::Dead | State::Loading) {
            self.retry(id);
            return;
        }
        let model = &self.s.models[usize::from(r.model)];
        let w = &mut self.workers[wi];
        if !w.engine.fits(r.prompt + r.output) {
            self.totals.rejected += 1;
            self.free_req(id);
            return;
        }
        let p = w.pop as usize;
        let cached = if w.warm_prefix {
            let bs = model
                .engine
                .get(&self.s.gpu_kinds[usize::from(w.kind)].name)
                .map_or(16, |e| e.block_size.max(1));
            model.shared_prefix_tokens / bs * bs
        } else {
            0
        };
        w.warm_prefix = true;
        let job = Job {
            req: id,
            prompt: r.prompt,
            cached,
            output: r.output,
        };
        if let Some(t) = w.engine.enqueue(self.now_us, job) {
            w.epoch += 1;
            w.wake_us = t;
            let epoch = w.epoch;
            self.push(t, Ev::Wake(wi as u32, epoch));
        }
        self.by_pop[p].arrived += 1;
        self.touch(wi);
    }

    fn wake(&mut self, wi: usize) {
        let mut out = std::mem::take(&mut self.outcomes);
        out.clear();
        let w = &mut self.workers[wi];
        let next = w.engine.advance(w.wake_us, &mut out);
        let busy = w.engine.busy_us - w.busy_seen;
        w.busy_seen = w.engine.busy_us;
        let p = w.pop as usize;
        if let Some(t) = next {
            w.epoch += 1;
            w.wake_us = t;
            let epoch = w.epoch;
            self.push(t, Ev::Wake(wi as u32, epoch));
        } else if w.state == State::Draining
            && w.engine.running() == 0
            && w.engine.queue_depth() == 0
        {
            w.state = State::Dead;
            w.end_us = Some(self.now_us);
        }
        self.pop_busy[p] += busy;
        let b = self.bucket_of(self.now_us);
        self.bucket_busy[b] += busy;
        for o in &out {
            match *o {
                Outcome::FirstToken(id, t) => self.reqs[id as usize].first_us = t,
                Outcome::Done(id, t) => self.complete(id, t, p),
            }
        }
        self.outcomes = out;
        self.touch(wi);
    }

    fn complete(&mut self, id: ReqId, t_us: f64, pop: usize) {
        let r = self.reqs[id as usize];
        let half_rtt_us = f64::from(r.rtt_ms) * 500.0;
        let ttft = (r.first_us + half_rtt_us - r.arrival_us) / 1000.0;
        let e2e = (t_us + half_rtt_us - r.arrival_us) / 1000.0;
        let tpot = (r.output > 1).then(|| (t_us - r.first_us) / 1000.0 / f64::from(r.output - 1));
        let met = ttft <= self.s.slo.ttft_ms && tpot.is_none_or(|x| x <= self.s.slo.tpot_ms);
        if let Some(rows) = self.per_request.as_mut() {
            rows.push(RequestRow {
                arrival_ms: r.arrival_us / 1000.0,
                prompt_tokens: r.prompt,
                output_tokens: r.output,
                ttft_ms: ttft,
                tpot_ms: tpot.unwrap_or(0.0),
                e2e_ms: e2e,
            });
        }
        let b = self.bucket_of(r.arrival_us);
        for t in [
            &mut self.total,
            &mut self.by_pop[pop],
            &mut self.by_region[r.region as usize],
            &mut self.buckets[b],
        ] {
            t.completed += 1;
            t.met_slo += u64::from(met);
            t.output_tokens += u64::from(r.output);
            t.ttft.record(ttft);
            t.e2e.record(e2e);
            if let Some(x) = tpot {
                t.tpot.record(x);
            }
        }
        self.free_req(id);
    }

    /// Kills worker `i`: requests not yet answered go elsewhere, streams in progress
    /// are lost.
    fn kill(&mut self, i: usize) {
        let w = &mut self.workers[i];
        if w.state == State::Dead {
            return;
        }
        let lost = w.engine.fail();
        w.state = State::Dead;
        w.end_us = Some(self.now_us);
        w.epoch += 1;
        self.placement.lost_replicas += 1;
        for (id, started) in lost {
            if started {
                let r = self.reqs[id as usize];
                let b = self.bucket_of(r.arrival_us);
                for t in [
                    &mut self.total,
                    &mut self.by_region[r.region as usize],
                    &mut self.buckets[b],
                ] {
                    t.failed += 1;
                }
                self.free_req(id);
            } else {
                self.retry(id);
            }
        }
    }

    fn fault_start(&mut self, f: usize) {
        let fault = self.faults[f].fault.clone();
        match &fault {
            Fault::Pop { pop, .. } => {
                let p = self.pop_index(pop);
                self.down_pops[p] += 1;
                let ids: Vec<usize> = (0..self.workers.len())
                    .filter(|&i| self.workers[i].pop as usize == p)
                    .collect();
                for i in ids {
                    self.kill(i);
                }
            }
            Fault::Gpu { pop, count, .. } => {
                let p = self.pop_index(pop);
                let mut left = *count;
                // The replicas on the failed GPUs go first (newest first), then idle GPUs.
                for i in (0..self.workers.len()).rev() {
                    let w = &self.workers[i];
                    if left == 0 {
                        break;
                    }
                    if w.pop as usize != p || w.state == State::Dead {
                        continue;
                    }
                    let gpus = self.s.models[usize::from(w.model)].gpus_per_replica;
                    let k = usize::from(w.kind);
                    let take = gpus.min(left);
                    left -= take;
                    self.failed_gpus[p][k] += take;
                    self.faults[f].taken.push((p, k, take));
                    self.kill(i);
                }
                for k in 0..self.s.gpu_kinds.len() {
                    let free = self.base_pools[p][k].saturating_sub(self.failed_gpus[p][k]);
                    let take = free.min(left);
                    if take > 0 {
                        left -= take;
                        self.failed_gpus[p][k] += take;
                        self.faults[f].taken.push((p, k, take));
                    }
                }
            }
            Fault::Link { from, to, .. } => {
                let a = self.side(from);
                let b = self.side(to);
                let mut cut = Vec::new();
                for (users, sites) in [(&a, &b), (&b, &a)] {
                    for &r in users {
                        for &p in sites {
                            if self.region_of_site[r].is_some()
                                && self.pop_of_site[p].is_some()
                                && r != p
                            {
                                cut.push((r, p, self.rtt.get(r, p)));
                                self.rtt.set(r, p, f32::INFINITY);
                                self.cut.push((r, p));
                            }
                        }
                    }
                }
                self.faults[f].cut = cut;
            }
        }
        self.rebuild_view();
        if self.s.placement.fault_replan_s >= 0.0 {
            self.push(
                self.now_us + self.s.placement.fault_replan_s * 1e6,
                Ev::FaultReplan,
            );
        }
    }

    fn fault_end(&mut self, f: usize) {
        match &self.faults[f].fault {
            Fault::Pop { pop, .. } => {
                let p = self.pop_index(pop);
                self.down_pops[p] -= 1;
            }
            Fault::Gpu { .. } => {
                for (p, k, n) in std::mem::take(&mut self.faults[f].taken) {
                    self.failed_gpus[p][k] -= n;
                }
            }
            Fault::Link { .. } => {
                for (r, p, ms) in std::mem::take(&mut self.faults[f].cut) {
                    self.rtt.set(r, p, ms);
                    if let Some(i) = self.cut.iter().position(|&c| c == (r, p)) {
                        self.cut.swap_remove(i);
                    }
                }
            }
        }
        if self.s.placement.fault_replan_s >= 0.0 {
            self.push(self.now_us, Ev::FaultReplan);
        }
    }

    fn pop_index(&self, id: &str) -> usize {
        self.catalog
            .index_of(id)
            .and_then(|c| self.pop_of_site[c])
            .map_or(0, |p| p as usize)
    }

    /// Catalog sites of a fault's side: one site, or every site of a jurisdiction.
    fn side(&self, name: &str) -> Vec<usize> {
        match self.catalog.index_of(name) {
            Some(c) => vec![c],
            None => (0..self.catalog.len())
                .filter(|&c| self.catalog.sites()[c].jurisdiction == name)
                .collect(),
        }
    }

    /// A re-plan from the demand measured since the last one (the routers' reports),
    /// or the last measured demand when the window is too short to tell.
    fn measured_replan(&mut self) {
        if self.now_us >= self.end_us {
            return;
        }
        let span_s = (self.now_us - self.window_start_us) / 1e6;
        if span_s >= 300.0 {
            let window = std::mem::take(&mut self.window);
            self.last_demand = window.into_iter().map(|(k, n)| (k, n / span_s)).collect();
            self.window_start_us = self.now_us;
        }
        let demand = self.last_demand.clone();
        // A failed round leaves the fleet as it is; `replan` only errs on the first.
        let _ = self.replan(&demand, false);
    }

    fn bucket_end(&mut self, b: usize) {
        self.mark_serving(self.serving);
        self.bucket_replica_us[b] = self.replica_us_acc - self.replica_us_mark;
        self.replica_us_mark = self.replica_us_acc;
        self.bucket_replicas[b] = self.serving;
    }

    fn report(mut self) -> Result<Report, SimError> {
        let sites = self.catalog.sites();
        let duration_s = self.s.duration_h * 3600.0;
        let end = self.now_us;
        let mut replicas = vec![0u64; self.pops.len()];
        let mut pop_time = vec![0.0f64; self.pops.len()];
        let mut pop_capacity = vec![0.0f64; self.pops.len()];
        for w in &self.workers {
            let p = w.pop as usize;
            if matches!(w.state, State::Serving | State::Draining) {
                replicas[p] += 1;
            }
            if w.state != State::Loading {
                let until = w.end_us.unwrap_or(end);
                let serving_us = (until - w.ready_us).max(0.0);
                pop_time[p] += serving_us;
                // Requests it could have completed at its full-batch rate.
                let full = self.rps_per_replica[usize::from(w.model)][usize::from(w.kind)]
                    / self.s.placement.target_utilisation;
                pop_capacity[p] += serving_us / 1e6 * full;
            }
        }
        let slo = &self.s.slo;
        let pops = self
            .pops
            .iter()
            .enumerate()
            .map(|(p, &c)| {
                let t = &self.by_pop[p];
                PopRow {
                    pop: sites[c].id.clone(),
                    jurisdiction: sites[c].jurisdiction.clone(),
                    lat: sites[c].lat,
                    lon: sites[c].lon,
                    gpus: self.base_pools[p].iter().map(|&n| u64::from(n)).sum(),
                    replicas: replicas[p],
                    requests: t.arrived,
                    ttft_ms: t.ttft.summary(),
                    tpot_ms: t.tpot.summary(),
                    slo_attainment: t.slo_attainment(),
                    utilisation: ratio(self.pop_busy[p], pop_time[p]),
                    load: ratio(t.completed as f64, pop_capacity[p]),
                }
            })
            .collect();
        let regions = self
            .regions
            .iter()
            .enumerate()
            .map(|(r, &c)| {
                let t = &self.by_region[r];
                RegionRow {
                    region: sites[c].id.clone(),
                    jurisdiction: sites[c].jurisdiction.clone(),
                    requests: t.arrived,
                    shed: t.shed,
                    unservable: t.unservable,
                    ttft_ms: t.ttft.summary(),
                    tpot_ms: t.tpot.summary(),
                    slo_attainment: t.slo_attainment(),
                }
            })
            .collect();
        let timeline = self
            .buckets
            .iter()
            .enumerate()
            .map(|(b, t)| BucketRow {
                start_h: b as f64 * self.bucket_us / 3.6e9,
                arrived: t.arrived,
                completed: t.completed,
                shed: t.shed,
                unservable: t.unservable,
                ttft_ms: t.ttft.summary(),
                tpot_ms: t.tpot.summary(),
                utilisation: ratio(self.bucket_busy[b], self.bucket_replica_us[b]),
                replicas: self.bucket_replicas[b],
            })
            .collect();
        let t = &self.total;
        self.totals = Totals {
            arrived: t.arrived,
            completed: t.completed,
            shed: t.shed,
            unservable: t.unservable,
            failed: t.failed,
            in_flight: self.live,
            output_tokens: t.output_tokens,
            throughput_rps: t.completed as f64 / duration_s,
            throughput_tps: t.output_tokens as f64 / duration_s,
            ..self.totals
        };
        let ttft = t.ttft.summary();
        let tpot = t.tpot.summary();
        let report = Report {
            scenario: self.s.name.clone(),
            seed: self.s.seed,
            duration_h: self.s.duration_h,
            totals: self.totals,
            ttft_ms: ttft,
            tpot_ms: tpot,
            e2e_ms: t.e2e.summary(),
            slo: SloReport {
                ttft_ms: slo.ttft_ms,
                tpot_ms: slo.tpot_ms,
                attainment: t.slo_attainment(),
                p99_met: ttft.p99 <= slo.ttft_ms && tpot.p99 <= slo.tpot_ms,
            },
            utilisation: ratio(self.pop_busy.iter().sum(), pop_time.iter().sum()),
            load: ratio(t.completed as f64, pop_capacity.iter().sum()),
            fleet_gpus: self
                .base_pools
                .iter()
                .flatten()
                .map(|&n| u64::from(n))
                .sum(),
            peak_placed_gpus: self.peak_placed_gpus,
            placement: self.placement,
            placement_error: self.placement_error.take(),
            jurisdiction_violations: self.violations,
            events: self.events,
            pops,
            regions,
            timeline,
            requests: self.per_request.take().unwrap_or_default(),
        };
        if self.violations > 0 {
            return Err(SimError::Invariant(format!(
                "{} requests or replicas outside their allowed jurisdictions",
                self.violations
            )));
        }
        Ok(report)
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

fn burst_hits(b: &crate::scenario::Burst, site: &str, jurisdiction: &str) -> bool {
    b.region.as_deref() == Some(site) || b.jurisdiction.as_deref() == Some(jurisdiction)
}

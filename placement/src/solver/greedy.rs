//! The fast solver: greedy by marginal gain, then local search, from today's placement.
//!
//! 1. Start from `current`, dropping what the fleet can no longer hold (forced moves).
//! 2. Honour pins, evicting replicas that no pin or floor needs if a site is full.
//! 3. A first add phase (below), then floors: most are met by replicas that serve
//!    demand anyway; the rest go where they would serve most. A pin or floor that finds
//!    no room even by eviction makes the instance infeasible; nothing is returned.
//! 4. Rounds, until one changes nothing: route by max flow; add replicas by best gain
//!    per unit of GPU cost (served demand x weight, less GPU and move cost; a lazy heap,
//!    since gains only fall while replicas are added), the least flexible models first;
//!    then the local search of `local.rs` (remove, switch kind, relocate, merge, evict).
//! 5. Large-neighbourhood search (`lns.rs`: rebuild a model's cover, take over two of
//!    its sites with one replica at a full site, re-size a model's replicas at a site) and, on small instances, randomised ruin-and-recreate
//!    (`ruin.rs`); back to 4 while either keeps something.
//! 6. Route the final placement by max flow.
//!
//! Small instances (up to 2,000 (model, site, kind) cells) run four starts with other
//! tie-breaks and scan orders and keep the best; the seed picks the starts.
//!
//! Re-planning from a placement in force (a non-empty `current`) looks only at the
//! models the re-plan changes or that strand traffic (`Solver::focus`): losing a site
//! re-optimises what served it, not the whole fleet.
//!
//! Every round starts from a routing that depends on the placement alone and ends only
//! after a full scan finds no improving move, and moves away from `current` only get
//! dearer when `current` is the plan itself: so re-solving a converged plan as its own
//! `current` moves nothing.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::instance::{Objective, PlacementRow, Plan, RouteRow, SolverInfo};
use super::problem::{InstanceError, Problem};
use super::state::{Reverse, State};

/// A move must improve the objective by more than this to be taken, so float noise
/// never flips a decision.
pub(super) const MIN_GAIN: f64 = 1e-7;

/// A replica the searches may add: see [`Solver::additions`].
pub(super) struct Addition {
    pub kind: usize,
    /// Unserved rps it would serve.
    pub absorbed: f64,
    /// Its GPU cost, weighted.
    pub cost: f64,
    /// Objective saved, with a flat move charge.
    pub net: f64,
}

/// Knobs of [`solve_problem`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SolveOptions {
    /// Breaks ties and orders the local search; same seed, same plan.
    pub seed: u64,
    /// Caps the moves beyond those forced; overrides the instance's `max_moves`.
    pub max_moves: Option<u64>,
    /// Add/improve rounds at most (each ends with a full scan).
    pub max_rounds: usize,
}

impl Default for SolveOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            max_moves: None,
            max_rounds: 12,
        }
    }
}

/// The name written in `plan.solver.name`.
pub const NAME: &str = "greedy+local";

/// A candidate replica in the add phase's heap.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    key: f64,
    tie: u64,
    cell: usize,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key
            .total_cmp(&other.key)
            .then(self.tie.cmp(&other.tie))
            .then(other.cell.cmp(&self.cell))
    }
}

/// A seeded hash: tie-breaks and scan orders without carrying an RNG's state around.
pub(super) fn mix(seed: u64, a: u64) -> u64 {
    let mut z = seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(super) struct Solver<'p> {
    pub(super) st: State<'p>,
    /// Pinned minimum per (model, site).
    pub(super) pin_min: Vec<u32>,
    pub(super) budget: Option<u64>,
    pub(super) seed: u64,
    /// Demand entries of each model (with a positive rate).
    pub(super) entries_of: Vec<Vec<usize>>,
}

/// Solves a compiled problem. `plan.solver.seconds` is left at 0: the caller owns the
/// clock.
pub fn solve_problem(p: &Problem, options: &SolveOptions) -> Result<Plan, InstanceError> {
    let rev = Reverse::build(p);
    // Small instances take a few more starts (other tie-breaks and scan orders) and
    // keep the best: cheap there, and it closes part of the gap to the optimum.
    let starts = if p.current.len() <= SMALL_CELLS {
        STARTS
    } else {
        1
    };
    let mut best: Option<Plan> = None;
    for i in 0..starts {
        let seed = options.seed.wrapping_add(i.wrapping_mul(0x9E37_79B9));
        let plan = solve_once(p, &rev, options, seed)?;
        if best
            .as_ref()
            .is_none_or(|b| plan.objective.total < b.objective.total - MIN_GAIN)
        {
            best = Some(plan);
        }
    }
    let mut plan = best.ok_or_else(|| InstanceError::Infeasible("no start ran".into()))?;
    plan.solver.seed = options.seed;
    Ok(plan)
}

/// Instances with at most this many (model, site, kind) cells get [`STARTS`] starts.
pub(super) const SMALL_CELLS: usize = 2_000;
const STARTS: u64 = 4;
/// Rounds-then-LNS cycles at most.
const OUTER: usize = 8;

fn solve_once(
    p: &Problem,
    rev: &Reverse,
    options: &SolveOptions,
    seed: u64,
) -> Result<Plan, InstanceError> {
    let mut pin_min = vec![0; p.models.len() * p.sites.len()];
    for &(m, s, min) in &p.pins {
        pin_min[m * p.sites.len() + s] = min;
    }
    let mut entries_of = vec![Vec::new(); p.models.len()];
    for (e, entry) in p.entries.iter().enumerate() {
        if entry.rps > 0.0 {
            entries_of[entry.model].push(e);
        }
    }
    let mut solver = Solver {
        st: State::new(p, rev),
        pin_min,
        budget: options.max_moves.or(p.max_moves),
        seed,
        entries_of,
    };
    solver.start_from_current();
    solver.honour_pins()?;
    // Floors after a first demand-driven pass: most floors are met by replicas that
    // serve demand anyway, and the rest go where they serve best.
    solver.st.reset_routing();
    solver.add_phase();
    solver.honour_floors()?;
    // Rounds until they converge, then the large-neighbourhood search; again while it
    // finds something, so the plan ends where neither finds a move (see `lns.rs`).
    for outer in 0..OUTER {
        for round in 0..options.max_rounds {
            solver.st.reset_routing();
            let added = solver.add_phase();
            let improved = solver.improve_phase((outer * options.max_rounds + round) as u64);
            let evicted = solver.evict_phase();
            let repacked = solver.repack_phase();
            if !added && !improved && !evicted && !repacked {
                break;
            }
        }
        let rebuilt = solver.lns_phase();
        let ruined = !rebuilt && p.current.len() <= SMALL_CELLS && solver.ruin_phase();
        if !rebuilt && !ruined {
            break;
        }
    }
    solver.st.reset_routing();
    Ok(solver.plan())
}

impl Solver<'_> {
    pub(super) fn weights(&self) -> (f64, f64, f64) {
        let w = &self.st.p.weights;
        (w.unserved_rps, w.gpu, w.moves)
    }

    /// One more replica of `m` at `s`, where `u` rps of unserved demand could move to
    /// it, on each kind that has room and keeps the move budget, with what it gains:
    /// the unserved demand it absorbs, less its GPU cost and a flat move charge (flat,
    /// so a ranking never depends on `current`). Only additions that gain more than
    /// `MIN_GAIN`.
    pub(super) fn additions(
        &self,
        m: usize,
        s: usize,
        u: f64,
    ) -> impl Iterator<Item = Addition> + '_ {
        let p = self.st.p;
        let (wu, wg, wm) = self.weights();
        let model = &p.models[m];
        model.fits.iter().filter_map(move |&k| {
            if !p.can_host(m, s, k)
                || self.st.free(s, k) < model.gpus_per_replica
                || !self.within_budget(self.st.move_delta(p.cell(m, s, k), true))
            {
                return None;
            }
            let absorbed = model.rps[k].min(u);
            let cost = wg * f64::from(model.gpus_per_replica) * p.kinds[k].cost;
            let net = wu * absorbed - cost - wm;
            (net > MIN_GAIN).then_some(Addition {
                kind: k,
                absorbed,
                cost,
                net,
            })
        })
    }

    pub(super) fn within_budget(&self, delta: i64) -> bool {
        delta <= 0
            || self
                .budget
                .is_none_or(|b| self.st.moves.saturating_add_signed(delta) <= b)
    }

    /// Whether one replica may leave (m, s) without breaking a pin or a floor.
    pub(super) fn removable(&self, m: usize, s: usize) -> bool {
        self.st.total[m] > self.st.p.models[m].min_replicas
            && self.st.at_site(m, s) > self.pin_min[self.st.ms(m, s)]
    }

    fn start_from_current(&mut self) {
        let p = self.st.p;
        let (nk, ns) = (p.kinds.len(), p.sites.len());
        for c in 0..p.current.len() {
            let (m, s, k) = (c / (nk * ns), (c / nk) % ns, c % nk);
            if p.current[c] > 0 && p.can_hold(m, s, k) {
                // More than the site's GPUs could never stay; the cap also bounds the loop
                // for absurd inputs.
                let most = p.sites[s].gpus[k] / p.models[m].gpus_per_replica;
                for _ in 0..p.current[c].min(most) {
                    self.st.set_replica(m, s, k, true);
                }
            }
        }
        // A site that lost GPUs: shed replicas until it fits, unpinned ones first.
        for s in 0..ns {
            for k in 0..nk {
                while self.st.used[self.st.sk(s, k)] > p.sites[s].gpus[k] {
                    let victim = (0..p.models.len())
                        .rev()
                        .filter(|&m| self.st.x[p.cell(m, s, k)] > 0)
                        .max_by_key(|&m| self.removable(m, s));
                    match victim {
                        Some(m) => self.st.set_replica(m, s, k, false),
                        None => break,
                    }
                }
            }
        }
    }

    /// Frees room for one replica of `m` at `s` on a kind it fits, evicting a replica
    /// no pin or floor needs. Returns the kind with room, if any.
    fn room_for(&mut self, m: usize, s: usize) -> Option<usize> {
        let p = self.st.p;
        let g = p.models[m].gpus_per_replica;
        loop {
            // Prefer restoring a current replica, then the most requests per cost.
            let best = p.models[m]
                .fits
                .iter()
                .copied()
                .filter(|&k| p.can_hold(m, s, k) && self.st.free(s, k) >= g)
                .max_by(|&a, &b| {
                    let restore = |k| self.st.x[p.cell(m, s, k)] < p.current[p.cell(m, s, k)];
                    let eff = |k: usize| p.models[m].rps[k] / (p.kinds[k].cost + 1e-9);
                    restore(a)
                        .cmp(&restore(b))
                        .then(eff(a).total_cmp(&eff(b)))
                        .then(b.cmp(&a))
                });
            if best.is_some() {
                return best;
            }
            let victim = p.models[m]
                .fits
                .iter()
                .copied()
                .filter(|&k| p.can_hold(m, s, k))
                .flat_map(|k| (0..p.models.len()).map(move |v| (v, k)))
                .find(|&(v, k)| v != m && self.st.x[p.cell(v, s, k)] > 0 && self.removable(v, s));
            let (v, k) = victim?;
            self.st.set_replica(v, s, k, false);
        }
    }

    fn honour_pins(&mut self) -> Result<(), InstanceError> {
        let p = self.st.p;
        for &(m, s, min) in &p.pins {
            while self.st.at_site(m, s) < min {
                let Some(k) = self.room_for(m, s) else {
                    return Err(InstanceError::Infeasible(format!(
                        "pin of model {} at site {}: no room for {min} replicas next to the other pins there",
                        p.models[m].id, p.sites[s].id
                    )));
                };
                self.st.set_replica(m, s, k, true);
            }
        }
        Ok(())
    }

    /// The kind with free room for one more replica of `m` at `s`, most requests per
    /// unit of cost first (no eviction).
    pub(super) fn free_kind(&self, m: usize, s: usize) -> Option<usize> {
        let p = self.st.p;
        let model = &p.models[m];
        let eff = |k: usize| model.rps[k] / (p.kinds[k].cost + 1e-9);
        model
            .fits
            .iter()
            .copied()
            .filter(|&k| p.can_hold(m, s, k) && self.st.free(s, k) >= model.gpus_per_replica)
            .max_by(|&a, &b| eff(a).total_cmp(&eff(b)).then(b.cmp(&a)))
    }

    /// Sites that may hold `m`, by the demand they could serve (unserved first, then
    /// all), so floor replicas are useful ones.
    pub(super) fn floor_sites(&self, m: usize) -> Vec<(f64, usize)> {
        let p = self.st.p;
        (0..p.sites.len())
            .filter(|&s| p.models[m].hosts[s])
            .map(|s| {
                let rev = self.st.rev.at(self.st.ms(m, s));
                let seen: f64 = rev.iter().map(|&e| p.entries[e as usize].rps).sum();
                (self.st.absorbable(m, s) * 1e6 + seen, s)
            })
            .collect()
    }

    fn honour_floors(&mut self) -> Result<(), InstanceError> {
        let p = self.st.p;
        for m in 0..p.models.len() {
            let floor = p.models[m].min_replicas;
            if self.st.total[m] >= floor {
                continue;
            }
            let mut sites = self.floor_sites(m);
            sites.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            // One per site first (a floor is usually there for availability), then
            // fill free room, and evict only when the fleet is full.
            for &(_, s) in &sites {
                if self.st.total[m] >= floor {
                    break;
                }
                if let Some(k) = self.free_kind(m, s) {
                    self.st.set_replica(m, s, k, true);
                }
            }
            for evict in [false, true] {
                for &(_, s) in &sites {
                    while self.st.total[m] < floor {
                        let k = match evict {
                            false => self.free_kind(m, s),
                            true => self.room_for(m, s),
                        };
                        let Some(k) = k else { break };
                        self.st.set_replica(m, s, k, true);
                    }
                }
            }
            if self.st.total[m] < floor {
                return Err(InstanceError::Infeasible(format!(
                    "min_replicas of model {}: only {} of {floor} replicas fit beside the pins and other floors",
                    p.models[m].id, self.st.total[m]
                )));
            }
        }
        Ok(())
    }

    /// Value of one more replica in `cell`: (net gain, gain per unit of cost).
    fn add_value(&self, m: usize, s: usize, k: usize) -> Option<(f64, f64)> {
        let p = self.st.p;
        let model = &p.models[m];
        if !p.can_host(m, s, k) || self.st.free(s, k) < model.gpus_per_replica {
            return None;
        }
        let c = p.cell(m, s, k);
        let md = self.st.move_delta(c, true);
        if !self.within_budget(md) {
            return None;
        }
        let (wu, wg, wm) = self.weights();
        let absorbed = model.rps[k].min(self.st.absorbable(m, s));
        let cost = wg * f64::from(model.gpus_per_replica) * p.kinds[k].cost;
        let net = wu * absorbed - cost - wm * md as f64;
        // Per unit of GPU cost, not of cost plus moves: a move costs the same for a small
        // replica and a large one, and counting it would favour large replicas that
        // crowd out models that need their kind.
        Some((net, net / (cost + wm * md.max(0) as f64 + 1e-9)))
    }

    /// Adds replicas while one pays for itself, best value per cost first.
    fn add_phase(&mut self) -> bool {
        // The least flexible models go first (fewest (site, kind) cells they may use:
        // one kind, core sites only, one jurisdiction): the others can go elsewhere when
        // a kind runs short, they cannot.
        let p = self.st.p;
        let flexibility: Vec<usize> = (0..p.models.len())
            .map(|m| {
                (0..p.sites.len())
                    .map(|s| {
                        p.kinds.len() - (0..p.kinds.len()).filter(|&k| !p.can_host(m, s, k)).count()
                    })
                    .sum()
            })
            .collect();
        let most = flexibility.iter().copied().max().unwrap_or(0);
        let mut changed = false;
        for limit in [most / 4, most / 2, most] {
            changed |= self.add_models(|_, m| flexibility[m] <= limit);
        }
        changed
    }

    /// The add phase for the models `pick` selects.
    fn add_models(&mut self, pick: impl Fn(&Self, usize) -> bool) -> bool {
        let p = self.st.p;
        let (nk, ns) = (p.kinds.len(), p.sites.len());
        let mut heap = BinaryHeap::new();
        for m in 0..p.models.len() {
            if !pick(self, m) {
                continue;
            }
            for s in 0..ns {
                if !p.models[m].hosts[s] || self.st.rev.at(self.st.ms(m, s)).is_empty() {
                    continue;
                }
                for &k in &p.models[m].fits {
                    if let Some((net, key)) = self.add_value(m, s, k)
                        && net > MIN_GAIN
                    {
                        let cell = p.cell(m, s, k);
                        heap.push(Candidate {
                            key,
                            tie: mix(self.seed, cell as u64),
                            cell,
                        });
                    }
                }
            }
        }
        let mut changed = false;
        while let Some(top) = heap.pop() {
            let (m, s, k) = (top.cell / (nk * ns), (top.cell / nk) % ns, top.cell % nk);
            let Some((net, key)) = self.add_value(m, s, k) else {
                continue;
            };
            if net <= MIN_GAIN {
                continue;
            }
            let fresh = Candidate { key, ..top };
            if heap.peek().is_some_and(|next| fresh < *next) {
                heap.push(fresh);
                continue;
            }
            self.st.set_replica(m, s, k, true);
            self.st.absorb(m, s);
            changed = true;
            heap.push(fresh);
        }
        changed
    }

    fn plan(&self) -> Plan {
        let p = self.st.p;
        let (nk, ns) = (p.kinds.len(), p.sites.len());
        let placement = (0..self.st.x.len())
            .filter(|&c| self.st.x[c] > 0)
            .map(|c| PlacementRow {
                model: p.models[c / (nk * ns)].id.clone(),
                site: p.sites[(c / nk) % ns].id.clone(),
                gpu: p.kinds[c % nk].name.clone(),
                replicas: self.st.x[c],
            })
            .collect();
        let mut routing = Vec::new();
        for (e, entry) in p.entries.iter().enumerate() {
            let mut flows = self.st.flow[e].clone();
            flows.sort_by_key(|f| f.0);
            for (s, rps) in flows {
                routing.push(RouteRow {
                    region: p.sites[entry.region].id.clone(),
                    model: p.models[entry.model].id.clone(),
                    site: p.sites[s].id.clone(),
                    rps,
                    entry: entry.shared_key.then_some(e),
                });
            }
        }
        let (wu, _, wm) = self.weights();
        let unserved: f64 = self.st.unserved.iter().sum();
        let gpu_cost = self.st.gpu_cost();
        Plan {
            placement,
            routing,
            objective: Objective {
                unserved_rps: unserved,
                gpu_cost,
                moves: self.st.moves,
                total: wu * unserved + p.weights.gpu * gpu_cost + wm * self.st.moves as f64,
            },
            solver: SolverInfo {
                name: NAME.into(),
                seconds: 0.0,
                seed: self.seed,
            },
        }
    }
}

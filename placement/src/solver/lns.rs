//! Large-neighbourhood search, run once the rounds of `greedy.rs` have converged.
//!
//! The rounds' moves change one or two replicas at a time, so they miss plans that differ
//! by a whole model's cover: a tail model whose few replicas each serve a handful of
//! regions is a set cover, and the greedy (most requests per cost first) builds covers
//! with more sites than needed. Here each model in turn is ruined (every replica no pin
//! holds is taken out, its traffic unrouted) and recreated by a greedy cover under two
//! rankings — requests per cost (what capacity-bound models need) and entries served per
//! cost (what coverage-bound models need) — then pruned of replicas the others can stand
//! in for. A trial is kept when the objective falls.
//!
//! A model with few replicas also gets takeover trials: where one more replica could
//! serve all the traffic of two of its sites but the kind is full, the replica that
//! strands the least there is evicted, the model's replica added, the replicas it
//! stands in for pruned and the evicted model repaired (`local.rs`, `try_evict`). At
//! scale these are mostly tail 70b and 405b models taking the H100s of a central site
//! from a popular model, whose traffic there its other replicas nearby can carry.
//!
//! Each (model, site) also gets re-sizing trials: its replicas are replaced by another
//! mix of kinds that carries the same traffic (two small replicas where one large one
//! costs as much but moves less, say).
//!
//! Models with more than [`REBUILD_MAX_REPLICAS`] replicas are only re-sized: they are
//! capacity-bound, rebuilding them costs most of the time and found next to nothing at
//! scale (measured: 0.6 s a pass for all models, 0.04 s for the tail, same objective).
//!
//! Fixed point (re-solving a plan as its own `current` moves nothing): every pass starts
//! from the max-flow routing and a rejected trial is rolled back exactly, so a pass that
//! keeps nothing tries every trial from the same state. A rebuild depends on that state
//! only (additions are ranked with a flat move charge, as in `local.rs`), so under a
//! later `current` equal to the plan it builds the same placement, and that pays at
//! most what it paid before (triangle inequality on moves): nothing. Re-sizing ranks
//! mixes with the real moves, but tries every mix whose estimate beats the present
//! one; under the later `current` those mixes are a subset of the ones tried, by the
//! same inequality. Re-planning also skips models outside `Solver::focus`, and skipping
//! a trial can only keep a plan as it is.

use super::flow::EPS;
use super::greedy::{MIN_GAIN, Solver, mix};

/// Passes over all models at most (each pass starts from the max-flow routing).
const PASSES: usize = 4;
/// Models with more replicas than this are not rebuilt (see `lns_phase`).
pub(super) const REBUILD_MAX_REPLICAS: u32 = 16;
/// Re-sizing looks at mixes within this many replicas per kind of the present one.
const WINDOW: u32 = 3;

impl Solver<'_> {
    /// Ruin-and-recreate over every model, then re-sizing over every placed (model,
    /// site). Returns whether anything changed.
    pub(super) fn lns_phase(&mut self) -> bool {
        let p = self.st.p;
        let mut changed = false;
        for pass in 0..PASSES {
            self.st.reset_routing();
            let focus = self.focus();
            let mut models: Vec<usize> = (0..p.models.len())
                .filter(|&m| focus[m] && !self.entries_of[m].is_empty())
                .collect();
            let salt = self.seed ^ 0x1A5 ^ ((pass as u64) << 40);
            models.sort_by_key(|&m| (mix(salt, m as u64), m));
            let mut improved = false;
            for m in models {
                // Covers of tail models are where the greedy over-covers; rebuilding a
                // popular, capacity-bound model costs much and was measured to find
                // next to nothing.
                if self.st.total[m] <= REBUILD_MAX_REPLICAS {
                    improved |= self.try_rebuild(m);
                    improved |= self.try_takeover(m);
                }
                improved |= self.resize_model(m);
            }
            if !improved {
                break;
            }
            changed = true;
        }
        changed
    }

    /// Trials: rebuild the cover of `m` under both rankings; keeps the first that pays.
    fn try_rebuild(&mut self, m: usize) -> bool {
        [false, true]
            .into_iter()
            .any(|by_count| self.rebuild_trial(m, by_count))
    }

    /// Trials: make room for one more replica of `m` where it could take over the
    /// traffic of two of its sites ([`Solver::takeover_cells`]), evicting the replica
    /// that strands the least; keeps the first that pays (with the replicas of `m` it
    /// lets go, see [`Solver::try_evict`]).
    fn try_takeover(&mut self, m: usize) -> bool {
        let p = self.st.p;
        let (nk, ns) = (p.kinds.len(), p.sites.len());
        let mut cells = Vec::new();
        self.takeover_cells(m, &mut cells);
        cells.sort_by_key(|&c| (mix(self.seed ^ 0x7A6E, c as u64), c));
        cells
            .into_iter()
            .any(|c| self.try_evict(m, None, (c / nk) % ns, c % nk))
    }

    fn rebuild_trial(&mut self, m: usize, by_count: bool) -> bool {
        let p = self.st.p;
        let ns = p.sites.len();
        self.st.begin();
        for i in 0..self.entries_of[m].len() {
            let e = self.entries_of[m][i];
            self.st.unroute(e);
        }
        for s in 0..ns {
            for &k in &p.models[m].fits {
                let c = p.cell(m, s, k);
                while self.st.x[c] > 0
                    && self.st.at_site(m, s) > self.pin_min[self.st.ms(m, s)]
                    && self.within_budget(self.st.move_delta(c, false))
                {
                    self.st.set_replica(m, s, k, false);
                }
            }
            // Pinned replicas that stay serve first.
            if self.st.at_site(m, s) > 0 {
                self.st.absorb(m, s);
            }
        }
        self.cover(m, by_count);
        self.prune(m, None);
        if self.restore_floor(m) && self.trial_gain() > MIN_GAIN {
            self.st.commit();
            true
        } else {
            self.st.rollback();
            false
        }
    }

    /// Greedy cover of the unserved traffic of `m`: adds the replica with the best
    /// ranking while one pays for itself. `by_count` ranks by entries served per unit of
    /// cost (ties: requests), otherwise by net gain per unit of cost.
    fn cover(&mut self, m: usize, by_count: bool) {
        let p = self.st.p;
        let wm = p.weights.moves;
        let mut sites: Vec<usize> = Vec::new();
        loop {
            sites.clear();
            for &e in &self.entries_of[m] {
                if self.st.unserved[e] > EPS {
                    sites.extend(p.entries[e].eligible.iter().map(|&(s, _)| s));
                }
            }
            sites.sort_unstable();
            sites.dedup();
            // (key, tie, site, kind)
            let mut best: Option<(f64, f64, usize, usize)> = None;
            for &s in &sites {
                let ms = self.st.ms(m, s);
                let mut u = 0.0;
                let mut count = 0usize;
                for &e in self.st.rev.at(ms) {
                    let left = self.st.unserved[e as usize];
                    if left > EPS {
                        u += left;
                        count += 1;
                    }
                }
                if u <= EPS {
                    continue;
                }
                for a in self.additions(m, s, u) {
                    let (k, cost, net) = (a.kind, a.cost, a.net);
                    let per = cost + wm + 1e-9;
                    let (key, tie) = if by_count {
                        (count as f64 / per, net / per)
                    } else {
                        (net / per, 0.0)
                    };
                    let better = best.is_none_or(|b| {
                        key > b.0 * (1.0 + 1e-12) || (key >= b.0 * (1.0 - 1e-12) && tie > b.1)
                    });
                    if better {
                        best = Some((key, tie, s, k));
                    }
                }
            }
            let Some((_, _, s, k)) = best else { return };
            self.st.set_replica(m, s, k, true);
            self.st.absorb(m, s);
        }
    }

    /// Removes replicas of `m` whose traffic the others can take (or whose stranded
    /// traffic is worth less than the replica), least loaded first; never the replicas
    /// in cell (site, kind) `keep`, which the caller placed to take such traffic over.
    pub(super) fn prune(&mut self, m: usize, keep: Option<(usize, usize)>) {
        let p = self.st.p;
        let (wu, wg, _) = self.weights();
        let model = &p.models[m];
        let mut cells: Vec<(f64, usize, usize)> = Vec::new();
        for s in 0..p.sites.len() {
            let ms = self.st.ms(m, s);
            if self.st.cap[ms] > EPS {
                for &k in &model.fits {
                    if self.st.x[p.cell(m, s, k)] > 0 {
                        cells.push((self.st.load[ms] / self.st.cap[ms], s, k));
                    }
                }
            }
        }
        cells.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        cells.retain(|&(_, s, k)| Some((s, k)) != keep);
        for (_, s, k) in cells {
            while self.st.x[p.cell(m, s, k)] > 0
                && self.removable(m, s)
                && self.within_budget(self.st.move_delta(p.cell(m, s, k), false))
            {
                let cut = self.st.cap[self.st.ms(m, s)] - model.rps[k];
                let shed = self.st.shed(m, s, cut);
                let cost = wg * f64::from(model.gpus_per_replica) * p.kinds[k].cost;
                if wu * shed.lost >= cost - MIN_GAIN {
                    break;
                }
                self.st.apply_shed(s, &shed);
                self.st.set_replica(m, s, k, false);
            }
        }
    }

    /// Re-sizing trials for every site holding `m`.
    fn resize_model(&mut self, m: usize) -> bool {
        let p = self.st.p;
        let mut changed = false;
        for s in 0..p.sites.len() {
            if self.st.at_site(m, s) > 0 && p.kinds.len() > 1 {
                changed |= self.try_resize(m, s);
            }
        }
        changed
    }

    /// Trials: replace the replicas of `m` at `s` by another mix of kinds (two small
    /// replicas by one large one that costs as much and moves less, say). Every mix
    /// whose estimate (stranded traffic, GPU cost, moves against `current`) beats the
    /// present one is tried, best estimate first; the first that pays is kept. Trying
    /// them all is what keeps the fixed point: under a later `current` equal to the
    /// plan, the mixes that look better are a subset of those tried here.
    fn try_resize(&mut self, m: usize, s: usize) -> bool {
        let p = self.st.p;
        let (wu, wg, wm) = self.weights();
        let model = &p.models[m];
        let ms = self.st.ms(m, s);
        let nk = p.kinds.len();
        // What the site could serve: its load plus what it could still absorb.
        let want = self.st.load[ms] + self.st.absorbable(m, s);
        let now: Vec<u32> = (0..nk).map(|k| self.st.x[p.cell(m, s, k)]).collect();
        // Per kind, the counts a mix may take: near the present one, within the room.
        let lo: Vec<u32> = now.iter().map(|&n| n.saturating_sub(WINDOW)).collect();
        let hi: Vec<u32> = (0..nk)
            .map(|k| {
                if p.can_hold(m, s, k) {
                    (self.st.free(s, k) / model.gpus_per_replica).min(WINDOW) + now[k]
                } else {
                    now[k]
                }
            })
            .collect();
        let price = |mix: &[u32]| -> f64 {
            let cap: f64 = mix
                .iter()
                .zip(&model.rps)
                .map(|(&n, &r)| f64::from(n) * r)
                .sum();
            let mut cost = 0.0;
            let mut moves = 0u32;
            for (k, &n) in mix.iter().enumerate() {
                cost += f64::from(n * model.gpus_per_replica) * p.kinds[k].cost;
                moves += n.abs_diff(p.current[p.cell(m, s, k)]);
            }
            wu * (want - cap).max(0.0) + wg * cost + wm * f64::from(moves)
        };
        let base = price(&now) - MIN_GAIN;
        let mut candidates: Vec<(f64, Vec<u32>)> = Vec::new();
        let mut mix = lo.clone();
        loop {
            let total: u32 = mix.iter().sum();
            if total > 0 && mix != now && total >= self.pin_min[ms] {
                let v = price(&mix);
                if v < base {
                    candidates.push((v, mix.clone()));
                }
            }
            // Next mix in odometer order.
            let mut i = 0;
            while i < nk {
                if mix[i] < hi[i] {
                    mix[i] += 1;
                    break;
                }
                mix[i] = lo[i];
                i += 1;
            }
            if i == nk {
                break;
            }
        }
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        candidates
            .into_iter()
            .any(|(_, target)| self.resize_trial(m, s, &target))
    }

    /// Trial: set the replicas of `m` at `s` to `target` per kind; kept if it pays.
    fn resize_trial(&mut self, m: usize, s: usize, target: &[u32]) -> bool {
        let p = self.st.p;
        let model = &p.models[m];
        self.st.begin();
        let mut ok = true;
        for (k, &want) in target.iter().enumerate() {
            let c = p.cell(m, s, k);
            while self.st.x[c] > want {
                if !self.within_budget(self.st.move_delta(c, false)) {
                    ok = false;
                    break;
                }
                self.take_out(m, s, k);
            }
        }
        for (k, &want) in target.iter().enumerate() {
            let c = p.cell(m, s, k);
            while ok && self.st.x[c] < want {
                if self.st.free(s, k) < model.gpus_per_replica
                    || !self.within_budget(self.st.move_delta(c, true))
                {
                    ok = false;
                    break;
                }
                self.st.set_replica(m, s, k, true);
            }
        }
        if ok {
            self.st.absorb(m, s);
        }
        if ok && self.restore_floor(m) && self.trial_gain() > MIN_GAIN {
            self.st.commit();
            true
        } else {
            self.st.rollback();
            false
        }
    }
}

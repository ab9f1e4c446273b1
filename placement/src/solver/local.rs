//! The fast solver's local search, run after each add phase:
//!
//! - per placed replica: remove it (its traffic moves to spare capacity elsewhere),
//!   switch it to another kind, relocate it (remove, then let a small greedy repair
//!   re-place what was lost wherever it serves best), or merge it with a neighbour
//!   (remove two, repair: two half-used replicas become one);
//! - per blocked addition (unserved demand, a site that could serve it, no room left on
//!   that kind): evict other models' replicas there and repair the models touched;
//! - per full site with unserved demand in reach: empty it and fill it again by served
//!   requests per GPU (re-packing what eviction one replica at a time cannot).
//!
//! Compound moves run as trials on the journaled state and are kept only when the
//! objective falls. Their repair ranks additions without the move term, so a trial's
//! outcome does not depend on `current`; with the triangle inequality on moves, that
//! keeps a plan a fixed point when it is re-solved as its own `current`.

use super::flow::EPS;
use super::greedy::{MIN_GAIN, SMALL_CELLS, Solver, mix};
use super::state::Shed;

/// Additions a repair makes at most.
const REPAIR_STEPS: usize = 6;
/// Passes over the placed replicas at most per round.
const PASSES: u64 = 6;

impl Solver<'_> {
    /// Weighted change of the objective since the trial began.
    pub(super) fn trial_gain(&mut self) -> f64 {
        let (wu, wg, wm) = self.weights();
        let d = self.st.delta();
        -(wu * d.unserved + wg * d.gpu_cost + wm * d.moves as f64)
    }

    /// Removes one replica from (m, s, k), moving or dropping its traffic first.
    pub(super) fn take_out(&mut self, m: usize, s: usize, k: usize) {
        let cut = self.st.cap[self.st.ms(m, s)] - self.st.p.models[m].rps[k];
        let shed = self.st.shed(m, s, cut);
        self.st.apply_shed(s, &shed);
        self.st.set_replica(m, s, k, false);
    }

    /// Local search over placed replicas. Returns whether anything changed.
    pub(super) fn improve_phase(&mut self, round: u64) -> bool {
        let p = self.st.p;
        let (nk, ns) = (p.kinds.len(), p.sites.len());
        let mut changed = false;
        let focus = self.focus();
        for pass in 0..PASSES {
            let mut cells: Vec<usize> = (0..self.st.x.len())
                .filter(|&c| self.st.x[c] > 0 && focus[c / (nk * ns)])
                .collect();
            let salt = self.seed ^ (round << 32) ^ (pass << 48);
            cells.sort_by_key(|&c| (mix(salt, c as u64), c));
            let mut improved = false;
            for c in cells {
                let (m, s, k) = (c / (nk * ns), (c / nk) % ns, c % nk);
                while self.st.x[c] > 0
                    && (self.try_improve(m, s, k)
                        || self.try_relocate(m, s, k)
                        || self.try_merge(m, s, k))
                {
                    improved = true;
                }
            }
            if !improved {
                break;
            }
            changed = true;
        }
        changed
    }

    /// Models the local searches look at. From an empty `current`, all of them; when
    /// re-planning from a placement in force, only the models the re-plan has changed
    /// or that still strand traffic they could serve: the others were converged when
    /// that placement was planned, and skipping a move can never make a converged
    /// plan move, so re-planning stays fast and its own fixed point.
    pub(super) fn focus(&self) -> Vec<bool> {
        let p = self.st.p;
        if p.current.iter().all(|&c| c == 0) {
            return vec![true; p.models.len()];
        }
        let cells_per_model = p.sites.len() * p.kinds.len();
        let mut focus: Vec<bool> = (0..p.models.len())
            .map(|m| {
                let cells = m * cells_per_model..(m + 1) * cells_per_model;
                self.st.x[cells.clone()] != p.current[cells]
            })
            .collect();
        for (e, entry) in p.entries.iter().enumerate() {
            if self.st.unserved[e] > EPS && !entry.eligible.is_empty() {
                focus[entry.model] = true;
            }
        }
        focus
    }

    /// Takes the best improving removal or kind switch for one replica in (m, s, k).
    fn try_improve(&mut self, m: usize, s: usize, k: usize) -> bool {
        let p = self.st.p;
        let (wu, wg, wm) = self.weights();
        let model = &p.models[m];
        let g = f64::from(model.gpus_per_replica);
        let c = p.cell(m, s, k);
        let cap = self.st.cap[self.st.ms(m, s)];
        let md_down = self.st.move_delta(c, false);
        // (gain, target kind or None for removal, shed)
        let mut best: Option<(f64, Option<usize>, Shed)> = None;
        if self.removable(m, s) && self.within_budget(md_down) {
            let shed = self.st.shed(m, s, cap - model.rps[k]);
            let gain = wg * g * p.kinds[k].cost - wu * shed.lost - wm * md_down as f64;
            if gain > MIN_GAIN {
                best = Some((gain, None, shed));
            }
        }
        for &k2 in &model.fits {
            if k2 == k || !p.can_hold(m, s, k2) || self.st.free(s, k2) < model.gpus_per_replica {
                continue;
            }
            let md = md_down + self.st.move_delta(p.cell(m, s, k2), true);
            if !self.within_budget(md) {
                continue;
            }
            let new_cap = cap - model.rps[k] + model.rps[k2];
            let (shed, served) = if new_cap < cap {
                let shed = self.st.shed(m, s, new_cap);
                let lost = shed.lost;
                (shed, -lost)
            } else {
                let more = (new_cap - cap).min(self.st.absorbable(m, s));
                (Shed::default(), more)
            };
            let gain = wg * g * (p.kinds[k].cost - p.kinds[k2].cost) + wu * served - wm * md as f64;
            if gain > MIN_GAIN && best.as_ref().is_none_or(|b| gain > b.0) {
                best = Some((gain, Some(k2), shed));
            }
        }
        let Some((_, target, shed)) = best else {
            return false;
        };
        self.st.apply_shed(s, &shed);
        self.st.set_replica(m, s, k, false);
        if let Some(k2) = target {
            self.st.set_replica(m, s, k2, true);
            self.st.absorb(m, s);
        }
        true
    }

    /// Trial: remove one replica of (m, s, k) and repair the model. Only replicas with
    /// spare capacity are tried: a full replica's traffic would need a full replica.
    fn try_relocate(&mut self, m: usize, s: usize, k: usize) -> bool {
        let ms = self.st.ms(m, s);
        if self.st.cap[ms] - self.st.load[ms] <= EPS
            || !self.removable(m, s)
            || !self.within_budget(self.st.move_delta(self.st.p.cell(m, s, k), false))
        {
            return false;
        }
        self.st.begin();
        self.take_out(m, s, k);
        self.repair(&[m]);
        if self.trial_gain() > MIN_GAIN {
            self.st.commit();
            true
        } else {
            self.st.rollback();
            false
        }
    }

    /// Trial: take out one replica of (m, s, k) and one of a neighbour (same model, a
    /// site sharing traffic with `s`), and repair: two half-used replicas become one,
    /// or two small ones one large.
    fn try_merge(&mut self, m: usize, s: usize, k: usize) -> bool {
        let p = self.st.p;
        if !self.removable(m, s) || self.st.total[m] < 2 {
            return false;
        }
        // Sites serving the entries that `s` serves.
        let mut near = vec![s];
        for &e in self.st.rev.at(self.st.ms(m, s)) {
            let flows = &self.st.flow[e as usize];
            if flows.iter().any(|f| f.0 == s) {
                near.extend(flows.iter().map(|f| f.0));
            }
        }
        near.sort_unstable();
        near.dedup();
        let c = p.cell(m, s, k);
        let largest = p.models[m].rps.iter().fold(0.0f64, |a, &b| a.max(b));
        for s2 in near {
            for k2 in 0..p.kinds.len() {
                let c2 = p.cell(m, s2, k2);
                let count = self.st.x[c2] - u32::from(c2 == c);
                // Each unordered pair once.
                if count == 0 || c2 < c {
                    continue;
                }
                // Only pairs whose traffic one replica of the largest kind could carry.
                let spare = |s: usize| {
                    let ms = self.st.ms(m, s);
                    (self.st.cap[ms] - self.st.load[ms]).max(0.0)
                };
                let spare = if s2 == s {
                    spare(s)
                } else {
                    spare(s) + spare(s2)
                };
                let carried = p.models[m].rps[k] + p.models[m].rps[k2] - spare;
                if carried > largest + EPS {
                    continue;
                }
                self.st.begin();
                self.take_out(m, s, k);
                // Checked after the first removal: a pin or floor may hold the second.
                let ok = self.removable(m, s2) && self.within_budget(self.st.move_delta(c2, false));
                if ok {
                    self.take_out(m, s2, k2);
                    self.repair(&[m]);
                }
                if ok && self.restore_floor(m) && self.trial_gain() > MIN_GAIN {
                    self.st.commit();
                    return true;
                }
                self.st.rollback();
            }
        }
        false
    }

    /// Makes room for blocked additions by evicting another model's replica. An addition
    /// is blocked where the kind is full at a site that could serve traffic of the model
    /// that is unserved or, on small instances, served at another site (a replica here
    /// may let the model drop replicas elsewhere: the eviction then pays through the
    /// GPUs and moves it saves). Returns whether anything changed.
    pub(super) fn evict_phase(&mut self) -> bool {
        let p = self.st.p;
        let (nk, ns) = (p.kinds.len(), p.sites.len());
        let consolidate = p.current.len() <= SMALL_CELLS;
        let mut blocked = Vec::new();
        for (m, entries) in self.entries_of.iter().enumerate() {
            let g = p.models[m].gpus_per_replica;
            for &e in entries {
                let unserved = self.st.unserved[e] > EPS;
                if !unserved && !consolidate {
                    continue;
                }
                for &(s, _) in &p.entries[e].eligible {
                    if !unserved && self.st.flow[e].iter().all(|f| f.0 == s) {
                        continue;
                    }
                    for &k in &p.models[m].fits {
                        if p.can_host(m, s, k) && self.st.free(s, k) < g {
                            blocked.push(p.cell(m, s, k));
                        }
                    }
                }
            }
        }
        blocked.sort_unstable();
        blocked.dedup();
        blocked.sort_by_key(|&c| (mix(self.seed ^ 0xE71C, c as u64), c));
        let mut changed = false;
        for c in blocked {
            let (m, s, k) = (c / (nk * ns), (c / nk) % ns, c % nk);
            if !consolidate && self.st.absorbable(m, s) <= EPS {
                continue;
            }
            if self.try_evict(m, None, s, k) {
                changed = true;
                continue;
            }
            for v in 0..p.models.len() {
                if v != m && self.st.x[p.cell(v, s, k)] > 0 && self.try_evict(m, Some(v), s, k) {
                    changed = true;
                    break;
                }
            }
        }
        changed
    }

    /// Appends the full cells (site, kind) where one more replica of `m` could take
    /// over the traffic of two of its sites: it may serve every entry routed to either
    /// and has the capacity for both, or it joins one of them and has the capacity for
    /// the other. One site fewer, if the eviction that makes room pays.
    pub(super) fn takeover_cells(&self, m: usize, out: &mut Vec<usize>) {
        let p = self.st.p;
        let model = &p.models[m];
        // (site, load of a site of `m` whose traffic it could take over)
        let mut hits: Vec<(usize, f64)> = Vec::new();
        let mut served: Vec<usize> = Vec::new();
        for held in 0..p.sites.len() {
            if self.st.at_site(m, held) == 0 {
                continue;
            }
            served.clear();
            served.extend(
                self.st
                    .rev
                    .at(self.st.ms(m, held))
                    .iter()
                    .map(|&e| e as usize)
                    .filter(|&e| self.st.flow[e].iter().any(|f| f.0 == held)),
            );
            let Some((&first, rest)) = served.split_first() else {
                continue;
            };
            let load = self.st.load[self.st.ms(m, held)];
            for &(s, _) in &p.entries[first].eligible {
                if s != held
                    && rest
                        .iter()
                        .all(|&e| p.entries[e].eligible.iter().any(|f| f.0 == s))
                {
                    hits.push((s, load));
                }
            }
        }
        hits.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        for run in hits.chunk_by(|a, b| a.0 == b.0) {
            let s = run[0].0;
            let ms = self.st.ms(m, s);
            // Joining a site of `m`: its spare capacity helps, one site's load must fit.
            // Elsewhere: the two lightest loads must fit.
            let (spare, need) = match (self.st.at_site(m, s) > 0, run) {
                (true, [(_, l), ..]) => (self.st.cap[ms] - self.st.load[ms], *l),
                (false, [(_, l1), (_, l2), ..]) => (0.0, l1 + l2),
                _ => continue,
            };
            for &k in &model.fits {
                if p.can_host(m, s, k)
                    && self.st.free(s, k) < model.gpus_per_replica
                    && need <= model.rps[k] + spare + EPS
                {
                    out.push(p.cell(m, s, k));
                }
            }
        }
    }

    /// Re-packs sites that are full while demand they could serve goes unserved.
    /// Returns whether anything changed.
    pub(super) fn repack_phase(&mut self) -> bool {
        let p = self.st.p;
        let mut full: Vec<usize> = Vec::new();
        for (m, entries) in self.entries_of.iter().enumerate() {
            let g = p.models[m].gpus_per_replica;
            for &e in entries {
                if self.st.unserved[e] <= EPS {
                    continue;
                }
                for &(s, _) in &p.entries[e].eligible {
                    if p.models[m]
                        .fits
                        .iter()
                        .any(|&k| p.can_host(m, s, k) && self.st.free(s, k) < g)
                    {
                        full.push(s);
                    }
                }
            }
        }
        full.sort_unstable();
        full.dedup();
        let mut changed = false;
        for s in full {
            changed |= self.try_repack(s);
        }
        changed
    }

    /// Trial: empty site `s` (all but pinned replicas; their traffic moves to spare
    /// capacity, then to new replicas on free room elsewhere), fill it again by served
    /// requests per GPU, the cheapest kind among equals, and repair floors and the
    /// models touched. Where GPUs are
    /// the scarce thing, requests per GPU is the right ranking, not per unit of cost:
    /// it keeps a large kind for the models that need it.
    fn try_repack(&mut self, s: usize) -> bool {
        let p = self.st.p;
        let (nk, nm) = (p.kinds.len(), p.models.len());
        self.st.begin();
        let mut touched: Vec<usize> = Vec::new();
        for m in 0..nm {
            for k in 0..nk {
                let c = p.cell(m, s, k);
                while self.st.x[c] > 0
                    && self.st.at_site(m, s) > self.pin_min[self.st.ms(m, s)]
                    && self.within_budget(self.st.move_delta(c, false))
                {
                    self.take_out(m, s, k);
                    if !touched.contains(&m) {
                        touched.push(m);
                    }
                }
            }
        }
        // What was moved out goes where there is free room first, so the refill below
        // serves what has nowhere else to go.
        self.repair_except(&touched, Some(s));
        loop {
            // (absorbed per GPU, -cost, model, kind)
            let mut best: Option<(f64, f64, usize, usize)> = None;
            for m in 0..nm {
                let model = &p.models[m];
                if self.st.rev.at(self.st.ms(m, s)).is_empty() {
                    continue;
                }
                let u = self.st.absorbable(m, s);
                if u <= EPS {
                    continue;
                }
                for a in self.additions(m, s, u) {
                    let (k, cost) = (a.kind, a.cost);
                    let per_gpu = a.absorbed / f64::from(model.gpus_per_replica);
                    let better = best.is_none_or(|b| {
                        per_gpu > b.0 + EPS || (per_gpu > b.0 - EPS && -cost > b.1)
                    });
                    if better {
                        best = Some((per_gpu, -cost, m, k));
                    }
                }
            }
            let Some((_, _, m, k)) = best else { break };
            self.st.set_replica(m, s, k, true);
            self.st.absorb(m, s);
            if !touched.contains(&m) {
                touched.push(m);
            }
        }
        let ok = touched.iter().all(|&m| self.restore_floor(m));
        if ok {
            self.repair(&touched);
        }
        if ok && self.trial_gain() > MIN_GAIN {
            self.st.commit();
            true
        } else {
            self.st.rollback();
            false
        }
    }

    /// The replica at (s, k) of a model other than `m` (of `only`, if given) whose
    /// removal strands the least traffic, among those no pin holds there.
    fn cheapest_victim(&self, m: usize, only: Option<usize>, s: usize, k: usize) -> Option<usize> {
        let p = self.st.p;
        let mut best: Option<(f64, usize)> = None;
        for v in 0..p.models.len() {
            let cv = p.cell(v, s, k);
            if v == m
                || only.is_some_and(|o| o != v)
                || self.st.x[cv] == 0
                || self.st.at_site(v, s) <= self.pin_min[self.st.ms(v, s)]
                || !self.within_budget(self.st.move_delta(cv, false))
            {
                continue;
            }
            let cut = self.st.cap[self.st.ms(v, s)] - p.models[v].rps[k];
            let lost = self.st.shed(v, s, cut).lost;
            if best.is_none_or(|b| lost < b.0) {
                best = Some((lost, v));
            }
        }
        best.map(|b| b.1)
    }

    /// Trial: evict replicas at (s, k) (of `only`, or whichever strand the least) until
    /// one of `m` fits, add it, prune the replicas of `m` it stands in for, repair every
    /// model touched and their floors.
    pub(super) fn try_evict(&mut self, m: usize, only: Option<usize>, s: usize, k: usize) -> bool {
        let p = self.st.p;
        let g = p.models[m].gpus_per_replica;
        self.st.begin();
        let mut victims: Vec<usize> = Vec::new();
        let mut ok = true;
        while self.st.free(s, k) < g {
            // A victim's floor may break here; `restore_floor` mends it below.
            let Some(v) = self.cheapest_victim(m, only, s, k) else {
                ok = false;
                break;
            };
            self.take_out(v, s, k);
            if !victims.contains(&v) {
                victims.push(v);
            }
        }
        ok = ok && self.within_budget(self.st.move_delta(p.cell(m, s, k), true));
        if ok {
            self.st.set_replica(m, s, k, true);
            self.st.absorb(m, s);
            self.prune(m, Some((s, k)));
            victims.push(m);
            self.repair(&victims);
            ok = victims.iter().all(|&v| self.restore_floor(v));
        }
        if ok && self.trial_gain() > MIN_GAIN {
            self.st.commit();
            true
        } else {
            self.st.rollback();
            false
        }
    }

    /// Tops the floor of `m` up again after an eviction, where it serves best. Returns
    /// false when there is no room for it.
    pub(super) fn restore_floor(&mut self, m: usize) -> bool {
        let floor = self.st.p.models[m].min_replicas;
        if self.st.total[m] >= floor {
            return true;
        }
        let mut sites = self.floor_sites(m);
        sites.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, s) in sites {
            while self.st.total[m] < floor {
                let Some(k) = self.free_kind(m, s) else { break };
                if !self.within_budget(self.st.move_delta(self.st.p.cell(m, s, k), true)) {
                    return false;
                }
                self.st.set_replica(m, s, k, true);
                self.st.absorb(m, s);
            }
        }
        self.st.total[m] >= floor
    }

    /// A small greedy for `models` only: adds the replica with the best served demand
    /// per unit of cost while one pays for itself, looking only at sites that can serve
    /// unserved traffic. Ranks without regard to `current` (see the module comment);
    /// the trial's acceptance counts the real moves.
    fn repair(&mut self, models: &[usize]) {
        self.repair_except(models, None);
    }

    /// [`Solver::repair`], leaving site `except` alone.
    fn repair_except(&mut self, models: &[usize], except: Option<usize>) {
        let p = self.st.p;
        let (wu, wg, wm) = self.weights();
        let mut sites: Vec<usize> = Vec::new();
        for _ in 0..REPAIR_STEPS {
            let mut best: Option<(f64, usize, usize, usize)> = None;
            for &m in models {
                let model = &p.models[m];
                sites.clear();
                for &e in &self.entries_of[m] {
                    if self.st.unserved[e] > EPS {
                        sites.extend(p.entries[e].eligible.iter().map(|&(s, _)| s));
                    }
                }
                sites.sort_unstable();
                sites.dedup();
                sites.retain(|&s| Some(s) != except);
                for &s in &sites {
                    let mut absorbable = None;
                    for &k in &model.fits {
                        if !p.can_host(m, s, k)
                            || self.st.free(s, k) < model.gpus_per_replica
                            || !self.within_budget(self.st.move_delta(p.cell(m, s, k), true))
                        {
                            continue;
                        }
                        let u = *absorbable.get_or_insert_with(|| self.st.absorbable(m, s));
                        let absorbed = model.rps[k].min(u);
                        let cost = wg * f64::from(model.gpus_per_replica) * p.kinds[k].cost;
                        // Every addition is charged one move, whatever `current` holds,
                        // so the ranking does not depend on it.
                        let net = wu * absorbed - cost - wm;
                        let key = net / (cost + wm + 1e-9);
                        if net > MIN_GAIN && best.is_none_or(|b| key > b.0) {
                            best = Some((key, m, s, k));
                        }
                    }
                }
            }
            let Some((_, m, s, k)) = best else {
                return;
            };
            self.st.set_replica(m, s, k, true);
            self.st.absorb(m, s);
        }
    }
}

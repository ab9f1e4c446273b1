//! Randomised ruin-and-recreate for small instances, after `lns.rs` has converged.
//!
//! Some improvements need several replicas of several models to change at once (at a
//! full site, one model's large replica goes to a second model whose small one goes to
//! a third). No single move pays, so the deterministic searches stop short. Here a trial
//! ruins a random part of the plan (one site, one model around one site, or a random
//! fifth of all replicas), recreates it by a greedy with noisy rankings, prunes, routes
//! by max flow and prices the whole objective exactly; it is kept when the objective
//! falls.
//!
//! Fixed point: the random stream of a trial comes from a hash of the placement and the
//! trial's index since the last kept trial, never from the seed or `current`; the
//! recreate charges every addition one move whatever `current` holds; and the search
//! stops after [`TRIALS`] trials in a row keep nothing. Re-solving a plan as its own
//! `current` therefore replays exactly the trials that found nothing, and a trial that
//! would pay under the new `current` paid at least as much under the old one
//! (triangle inequality on moves).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::flow::EPS;
use super::greedy::{MIN_GAIN, Solver, mix};

/// Trials in a row that keep nothing before the search stops.
const TRIALS: u64 = 80;
/// Kept trials at most (each lowers the objective, so this only bounds the time).
const KEPT: usize = 200;

impl Solver<'_> {
    /// The exact objective of the state after max-flow routing.
    fn total(&mut self) -> f64 {
        self.st.reset_routing();
        let (wu, wg, wm) = self.weights();
        wu * self.st.unserved.iter().sum::<f64>()
            + wg * self.st.gpu_cost()
            + wm * self.st.moves as f64
    }

    fn placement_hash(&self) -> u64 {
        let mut h = 0x5EED_u64;
        for (c, &n) in self.st.x.iter().enumerate() {
            if n > 0 {
                h = mix(h, ((c as u64) << 20) ^ u64::from(n));
            }
        }
        h
    }

    /// Runs trials until [`TRIALS`] in a row keep nothing. Returns whether anything
    /// changed.
    pub(super) fn ruin_phase(&mut self) -> bool {
        let mut changed = false;
        let mut best = self.total();
        for _ in 0..KEPT {
            let h = self.placement_hash();
            let mut kept = false;
            for i in 0..TRIALS {
                let mut rng = ChaCha8Rng::seed_from_u64(mix(h, i));
                let saved = self.st.clone();
                // A trial that cannot restore a floor, or that ends over the move cap
                // (each step keeps to it, the sum may not), is dropped, not priced.
                let ok = self.ruin(&mut rng)
                    && self
                        .budget
                        .is_none_or(|b| self.st.moves <= b.max(saved.moves));
                let v = if ok { self.total() } else { f64::INFINITY };
                if v < best - MIN_GAIN {
                    best = v;
                    kept = true;
                    break;
                }
                self.st = saved;
            }
            if !kept {
                break;
            }
            changed = true;
        }
        // Leave the max-flow routing of the final placement.
        self.st.reset_routing();
        changed
    }

    /// One ruin-and-recreate on the state (not journaled: the caller keeps a copy).
    /// Returns false when a floor could not be restored.
    fn ruin(&mut self, rng: &mut ChaCha8Rng) -> bool {
        let p = self.st.p;
        let (nm, ns, nk) = (p.models.len(), p.sites.len(), p.kinds.len());
        let placed: Vec<usize> = (0..self.st.x.len()).filter(|&c| self.st.x[c] > 0).collect();
        if placed.is_empty() {
            return false;
        }
        let pick = placed[rng.random_range(0..placed.len())];
        let (pm, ps) = (pick / (nk * ns), (pick / nk) % ns);
        // Cells (model, site) to empty.
        let mut ruined: Vec<(usize, usize)> = Vec::new();
        match rng.random_range(0..3) {
            0 => ruined.extend((0..nm).map(|m| (m, ps))),
            1 => {
                // The model at the site and at every site sharing traffic with it.
                let mut near = vec![ps];
                for &e in self.st.rev.at(self.st.ms(pm, ps)) {
                    near.extend(p.entries[e as usize].eligible.iter().map(|&(s, _)| s));
                }
                near.sort_unstable();
                near.dedup();
                ruined.extend(near.into_iter().map(|s| (pm, s)));
            }
            _ => {
                for &c in &placed {
                    if rng.random_bool(0.2) {
                        ruined.push((c / (nk * ns), (c / nk) % ns));
                    }
                }
            }
        }
        let mut touched: Vec<usize> = Vec::new();
        for (m, s) in ruined {
            for k in 0..nk {
                let c = p.cell(m, s, k);
                while self.st.x[c] > 0
                    && self.st.at_site(m, s) > self.pin_min[self.st.ms(m, s)]
                    && self.within_budget(self.st.move_delta(c, false))
                {
                    self.st.set_replica(m, s, k, false);
                    if !touched.contains(&m) {
                        touched.push(m);
                    }
                }
            }
        }
        self.st.reset_routing();
        self.noisy_greedy(rng);
        for m in 0..nm {
            self.prune(m, None);
        }
        touched.iter().all(|&m| self.restore_floor(m))
    }

    /// Adds replicas while one pays, best noisy ranking first: net gain per unit of
    /// cost, times a random factor per candidate and step.
    fn noisy_greedy(&mut self, rng: &mut ChaCha8Rng) {
        let p = self.st.p;
        let wm = p.weights.moves;
        let (nm, ns) = (p.models.len(), p.sites.len());
        let per_gpu = rng.random_bool(0.3);
        loop {
            let mut best: Option<(f64, usize, usize, usize)> = None;
            for m in 0..nm {
                let model = &p.models[m];
                for s in 0..ns {
                    if !model.hosts[s] {
                        continue;
                    }
                    let u = self.st.absorbable(m, s);
                    if u <= EPS {
                        continue;
                    }
                    for a in self.additions(m, s, u) {
                        let k = a.kind;
                        let base = if per_gpu {
                            a.absorbed / f64::from(model.gpus_per_replica)
                        } else {
                            a.net / (a.cost + wm + 1e-9)
                        };
                        let key = base * rng.random_range(0.6..1.0);
                        if best.is_none_or(|b| key > b.0) {
                            best = Some((key, m, s, k));
                        }
                    }
                }
            }
            let Some((_, m, s, k)) = best else { return };
            self.st.set_replica(m, s, k, true);
            self.st.absorb(m, s);
        }
    }
}

//! The fast solver's incremental bookkeeping: replicas per (model, site, kind), GPUs in
//! use, capacity and routed load per (model, site), and a feasible routing of every
//! demand entry, kept consistent under the solver's moves.
//!
//! The routing here is a working routing, good enough to price moves; the plan's
//! routing is recomputed by max flow at the end ([`State::reset_routing`]).

use super::flow::{EPS, FlowGraph};
use super::problem::Problem;

/// Entries eligible at each (model, site), in compressed rows.
#[derive(Debug, Clone)]
pub struct Reverse {
    start: Vec<u32>,
    items: Vec<u32>,
}

impl Reverse {
    pub fn build(p: &Problem) -> Self {
        let cells = p.models.len() * p.sites.len();
        let mut count = vec![0u32; cells + 1];
        for e in &p.entries {
            if e.rps <= 0.0 {
                continue;
            }
            for &(s, _) in &e.eligible {
                count[e.model * p.sites.len() + s + 1] += 1;
            }
        }
        for i in 0..cells {
            count[i + 1] += count[i];
        }
        let mut fill = count.clone();
        let mut items = vec![0u32; count[cells] as usize];
        // Entries with the fewest alternatives first: when a replica's capacity is
        // handed out, the traffic that has nowhere else to go gets it.
        let mut order: Vec<usize> = (0..p.entries.len()).collect();
        order.sort_by_key(|&i| (p.entries[i].eligible.len(), i));
        for i in order {
            let e = &p.entries[i];
            if e.rps <= 0.0 {
                continue;
            }
            for &(s, _) in &e.eligible {
                let c = e.model * p.sites.len() + s;
                items[fill[c] as usize] = i as u32;
                fill[c] += 1;
            }
        }
        Self {
            start: count,
            items,
        }
    }

    /// Entries that may be served at `ms` = model * sites + site.
    pub fn at(&self, ms: usize) -> &[u32] {
        &self.items[self.start[ms] as usize..self.start[ms + 1] as usize]
    }
}

/// Traffic moved by a capacity cut, computed before it is applied.
#[derive(Debug, Default, Clone)]
pub struct Shed {
    /// (entry, to site, rps) moved off the cut site.
    pub transfers: Vec<(usize, usize, f64)>,
    /// (entry, rps) that found no room elsewhere and goes unserved.
    pub drops: Vec<(usize, f64)>,
    pub lost: f64,
}

/// How to undo one change made during a trial.
#[derive(Debug, Clone)]
enum Undo {
    Replica {
        m: usize,
        s: usize,
        k: usize,
        up: bool,
    },
    Flow {
        e: usize,
        old: Vec<(usize, f64)>,
    },
    Load {
        ms: usize,
        old: f64,
    },
    Unserved {
        e: usize,
        old: f64,
    },
}

/// The objective's change over a trial, by term.
#[derive(Debug, Clone, Copy, Default)]
pub struct Delta {
    pub unserved: f64,
    pub gpu_cost: f64,
    pub moves: i64,
}

#[derive(Debug, Clone)]
pub struct State<'p> {
    pub p: &'p Problem,
    pub rev: &'p Reverse,
    pub x: Vec<u32>,
    /// GPUs in use per (site, kind).
    pub used: Vec<u32>,
    /// Capacity and routed load per (model, site).
    pub cap: Vec<f64>,
    pub load: Vec<f64>,
    /// Per entry: (site, rps) it is routed to.
    pub flow: Vec<Vec<(usize, f64)>>,
    pub unserved: Vec<f64>,
    /// Replicas per model.
    pub total: Vec<u32>,
    /// Sum over cells of |x - current|.
    pub moves: u64,
    /// While a trial runs: how to undo it, oldest first.
    journal: Option<Vec<Undo>>,
    moves_at_begin: u64,
    /// Scratch for [`State::delta`]: entries already counted.
    seen: Vec<bool>,
}

impl<'p> State<'p> {
    /// An empty placement with nothing routed.
    pub fn new(p: &'p Problem, rev: &'p Reverse) -> Self {
        let (m, s, k) = (p.models.len(), p.sites.len(), p.kinds.len());
        let moves = p.current.iter().map(|&c| u64::from(c)).sum();
        Self {
            p,
            rev,
            x: vec![0; m * s * k],
            used: vec![0; s * k],
            cap: vec![0.0; m * s],
            load: vec![0.0; m * s],
            flow: vec![Vec::new(); p.entries.len()],
            unserved: p.entries.iter().map(|e| e.rps).collect(),
            total: vec![0; m],
            moves,
            journal: None,
            moves_at_begin: 0,
            seen: vec![false; p.entries.len()],
        }
    }

    /// Starts a trial: changes from here on can be measured ([`State::delta`]) and
    /// undone ([`State::rollback`]) exactly, old values restored rather than recomputed.
    pub fn begin(&mut self) {
        self.journal = Some(Vec::new());
        self.moves_at_begin = self.moves;
    }

    /// Keeps the trial's changes.
    pub fn commit(&mut self) {
        self.journal = None;
    }

    /// Undoes the trial's changes.
    pub fn rollback(&mut self) {
        let Some(journal) = self.journal.take() else {
            return;
        };
        for undo in journal.into_iter().rev() {
            match undo {
                Undo::Replica { m, s, k, up } => self.set_replica(m, s, k, !up),
                Undo::Flow { e, old } => self.flow[e] = old,
                Undo::Load { ms, old } => self.load[ms] = old,
                Undo::Unserved { e, old } => self.unserved[e] = old,
            }
        }
    }

    /// The objective's change since [`State::begin`].
    pub fn delta(&mut self) -> Delta {
        let Some(journal) = self.journal.take() else {
            return Delta::default();
        };
        let p = self.p;
        let mut d = Delta {
            moves: self.moves as i64 - self.moves_at_begin as i64,
            ..Delta::default()
        };
        for undo in &journal {
            match *undo {
                Undo::Replica { m, k, up, .. } => {
                    let c = f64::from(p.models[m].gpus_per_replica) * p.kinds[k].cost;
                    d.gpu_cost += if up { c } else { -c };
                }
                // The first record of an entry holds its value before the trial.
                Undo::Unserved { e, old } if !self.seen[e] => {
                    self.seen[e] = true;
                    d.unserved += self.unserved[e] - old;
                }
                _ => {}
            }
        }
        for undo in &journal {
            if let Undo::Unserved { e, .. } = *undo {
                self.seen[e] = false;
            }
        }
        self.journal = Some(journal);
        d
    }

    fn set_unserved(&mut self, e: usize, value: f64) {
        if let Some(j) = &mut self.journal {
            j.push(Undo::Unserved {
                e,
                old: self.unserved[e],
            });
        }
        self.unserved[e] = value;
    }

    pub fn ms(&self, m: usize, s: usize) -> usize {
        m * self.p.sites.len() + s
    }

    pub fn sk(&self, s: usize, k: usize) -> usize {
        s * self.p.kinds.len() + k
    }

    /// GPUs of `kind` still free at `site`.
    pub fn free(&self, s: usize, k: usize) -> u32 {
        self.p.sites[s].gpus[k].saturating_sub(self.used[self.sk(s, k)])
    }

    /// Replicas of `model` at `site`, every kind.
    pub fn at_site(&self, m: usize, s: usize) -> u32 {
        let c = self.p.cell(m, s, 0);
        self.x[c..c + self.p.kinds.len()].iter().sum()
    }

    /// Change of `moves` if cell `c` gains (`up`) or loses one replica.
    pub fn move_delta(&self, c: usize, up: bool) -> i64 {
        let (x, cur) = (self.x[c], self.p.current[c]);
        match up {
            true if x >= cur => 1,
            true => -1,
            false if x > cur => -1,
            false => 1,
        }
    }

    pub fn gpu_cost(&self) -> f64 {
        let p = self.p;
        let mut cost = 0.0;
        for (c, &n) in self.x.iter().enumerate() {
            if n > 0 {
                let k = c % p.kinds.len();
                let m = c / (p.kinds.len() * p.sites.len());
                cost += f64::from(n) * f64::from(p.models[m].gpus_per_replica) * p.kinds[k].cost;
            }
        }
        cost
    }

    /// Places or removes one replica in cell (m, s, k), without touching the routing.
    pub fn set_replica(&mut self, m: usize, s: usize, k: usize, up: bool) {
        if let Some(j) = &mut self.journal {
            j.push(Undo::Replica { m, s, k, up });
        }
        let c = self.p.cell(m, s, k);
        let d = self.move_delta(c, up);
        self.moves = self.moves.saturating_add_signed(d);
        let g = self.p.models[m].gpus_per_replica;
        let (sk, ms) = (self.sk(s, k), self.ms(m, s));
        if up {
            self.x[c] += 1;
            self.used[sk] += g;
            self.total[m] += 1;
        } else {
            self.x[c] -= 1;
            self.used[sk] -= g;
            self.total[m] -= 1;
        }
        // Recomputed rather than adjusted, so the capacity of a placement does not
        // depend on the path that reached it (re-solving a plan must see the same
        // numbers the solve that produced it saw).
        let first = self.p.cell(m, s, 0);
        self.cap[ms] = self.x[first..first + self.p.kinds.len()]
            .iter()
            .zip(&self.p.models[m].rps)
            .map(|(&n, &r)| f64::from(n) * r)
            .sum();
    }

    fn add_flow(&mut self, e: usize, s: usize, amount: f64) {
        let m = self.p.entries[e].model;
        let ms = self.ms(m, s);
        if let Some(j) = &mut self.journal {
            j.push(Undo::Load {
                ms,
                old: self.load[ms],
            });
            j.push(Undo::Flow {
                e,
                old: self.flow[e].clone(),
            });
        }
        self.load[ms] += amount;
        let list = &mut self.flow[e];
        match list.iter_mut().find(|(site, _)| *site == s) {
            Some(f) => f.1 += amount,
            None => list.push((s, amount)),
        }
        list.retain(|&(_, f)| f > EPS);
    }

    fn flow_at(&self, e: usize, s: usize) -> f64 {
        self.flow[e]
            .iter()
            .find(|(site, _)| *site == s)
            .map_or(0.0, |f| f.1)
    }

    /// Unserved demand that a replica at (m, s) could take.
    pub fn absorbable(&self, m: usize, s: usize) -> f64 {
        self.rev
            .at(self.ms(m, s))
            .iter()
            .map(|&e| self.unserved[e as usize])
            .sum()
    }

    /// Hands the spare capacity of (m, s) to unserved entries that may use it.
    pub fn absorb(&mut self, m: usize, s: usize) {
        let ms = self.ms(m, s);
        let mut spare = self.cap[ms] - self.load[ms];
        let rev = self.rev;
        for &e in rev.at(ms) {
            if spare <= EPS {
                break;
            }
            let e = e as usize;
            let a = self.unserved[e].min(spare);
            if a > EPS {
                self.set_unserved(e, self.unserved[e] - a);
                spare -= a;
                self.add_flow(e, s, a);
            }
        }
    }

    /// What cutting the capacity of (m, s) to `new_cap` does to the routing: traffic
    /// moves to spare capacity at the entries' other sites, the rest goes unserved.
    pub fn shed(&self, m: usize, s: usize, new_cap: f64) -> Shed {
        let ms = self.ms(m, s);
        let mut excess = self.load[ms] - new_cap;
        let mut out = Shed::default();
        if excess <= EPS {
            return out;
        }
        // Spare taken by this dry run, per site (few sites, so a short list).
        let mut taken: Vec<(usize, f64)> = Vec::new();
        for &e in self.rev.at(ms) {
            let e = e as usize;
            let f = self.flow_at(e, s);
            if f <= EPS {
                continue;
            }
            let mut movable = f.min(excess);
            for &(s2, _) in &self.p.entries[e].eligible {
                if movable <= EPS {
                    break;
                }
                if s2 == s {
                    continue;
                }
                let ms2 = self.ms(m, s2);
                let used_here = taken.iter().find(|t| t.0 == s2).map_or(0.0, |t| t.1);
                let spare = self.cap[ms2] - self.load[ms2] - used_here;
                if spare > EPS {
                    let t = spare.min(movable);
                    out.transfers.push((e, s2, t));
                    match taken.iter_mut().find(|t| t.0 == s2) {
                        Some(x) => x.1 += t,
                        None => taken.push((s2, t)),
                    }
                    movable -= t;
                    excess -= t;
                }
            }
            if excess <= EPS {
                break;
            }
        }
        if excess > EPS {
            // Recompute what each entry still has at `s` after its transfers, and drop
            // from those until the cut holds.
            for &e in self.rev.at(ms) {
                if excess <= EPS {
                    break;
                }
                let e = e as usize;
                let moved: f64 = out.transfers.iter().filter(|t| t.0 == e).map(|t| t.2).sum();
                let still = self.flow_at(e, s) - moved;
                if still > EPS {
                    let d = still.min(excess);
                    out.drops.push((e, d));
                    out.lost += d;
                    excess -= d;
                }
            }
        }
        out
    }

    /// Takes all traffic of entry `e` off its sites: it goes unserved (journaled).
    pub fn unroute(&mut self, e: usize) {
        let flows = self.flow[e].clone();
        for (s, f) in flows {
            self.add_flow(e, s, -f);
            self.set_unserved(e, self.unserved[e] + f);
        }
    }

    /// Applies a [`Shed`] computed for (m, s) on this very state.
    pub fn apply_shed(&mut self, s: usize, shed: &Shed) {
        for &(e, s2, t) in &shed.transfers {
            self.add_flow(e, s, -t);
            self.add_flow(e, s2, t);
        }
        for &(e, d) in &shed.drops {
            self.add_flow(e, s, -d);
            self.set_unserved(e, self.unserved[e] + d);
        }
    }

    /// Replaces the working routing with a maximum one (per model, Dinic), so every
    /// round prices moves from a routing that depends on the placement alone.
    pub fn reset_routing(&mut self) {
        let p = self.p;
        for f in &mut self.flow {
            f.clear();
        }
        self.load.iter_mut().for_each(|l| *l = 0.0);
        for (e, entry) in p.entries.iter().enumerate() {
            self.unserved[e] = entry.rps;
        }
        let mut by_model: Vec<Vec<usize>> = vec![Vec::new(); p.models.len()];
        for (e, entry) in p.entries.iter().enumerate() {
            if entry.rps > 0.0 {
                by_model[entry.model].push(e);
            }
        }
        let mut node_of = vec![usize::MAX; p.sites.len()];
        for (m, entries) in by_model.iter().enumerate() {
            let mut sites = Vec::new();
            for &e in entries {
                for &(s, _) in &p.entries[e].eligible {
                    if node_of[s] == usize::MAX && self.cap[self.ms(m, s)] > EPS {
                        node_of[s] = 2 + entries.len() + sites.len();
                        sites.push(s);
                    }
                }
            }
            if !sites.is_empty() {
                let mut g = FlowGraph::new(2 + entries.len() + sites.len());
                let mut arcs = Vec::new();
                for (a, &e) in entries.iter().enumerate() {
                    g.add_edge(0, 2 + a, p.entries[e].rps);
                    for &(s, _) in &p.entries[e].eligible {
                        if node_of[s] != usize::MAX {
                            arcs.push((e, s, g.add_edge(2 + a, node_of[s], f64::INFINITY)));
                        }
                    }
                }
                for &s in &sites {
                    g.add_edge(node_of[s], 1, self.cap[self.ms(m, s)]);
                }
                g.max_flow(0, 1);
                for (e, s, arc) in arcs {
                    let f = g.flow(arc);
                    if f > EPS {
                        self.unserved[e] -= f;
                        self.add_flow(e, s, f);
                    }
                }
            }
            for &s in &sites {
                node_of[s] = usize::MAX;
            }
        }
        for u in &mut self.unserved {
            *u = u.max(0.0);
        }
    }
}

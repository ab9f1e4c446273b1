//! The router's view of the fleet: every worker with where it is, what it serves and its
//! last reported load, in flat arrays for the scorer. A new view is built off the
//! request path and swapped in atomically (`arc_swap`); requests read whichever view
//! is current without locks.

use std::collections::HashMap;

use meridian_proto::catalog::Catalog;

use crate::prefix::PrefixIndex;

/// A worker's load as last reported.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    /// Requests waiting for admission.
    pub queue_depth: u32,
    /// Sequences running.
    pub running: u32,
    /// Sequences it can run at once.
    pub max_running: u32,
    pub kv_blocks_free: u32,
    pub kv_blocks_total: u32,
    /// Mean engine step time, milliseconds (0: unknown).
    pub mean_step_ms: f32,
    /// Prefill speed, prompt tokens per second of busy engine time (0: unknown).
    pub prefill_speed: f32,
}

/// One worker as the router sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Worker {
    /// Catalog site of its PoP.
    pub pop: String,
    /// Index of `pop` in the catalog (the RTT table's column).
    pub site_index: usize,
    pub jurisdiction: String,
    pub worker_id: String,
    /// gRPC endpoint of its `Worker` service.
    pub endpoint: String,
    /// The model resident on it.
    pub model: String,
    /// Model loaded and serving.
    pub warm: bool,
    /// Reachable at its last check.
    pub healthy: bool,
    /// Cordoned or draining PoP: no new requests.
    pub cordoned: bool,
    pub load: Load,
    /// Tokens per block of its prefix-cache summary (0: none reported).
    pub block_size: u32,
    /// Chained hashes of the prefix blocks it reports cached. Input to
    /// `FleetView::new`, which moves them into its prefix index and leaves this empty.
    pub cached_blocks: Vec<u64>,
}

/// What the scorer reads of a worker, packed (32 bytes) so a pass over thousands of
/// candidates streams a few cache lines per worker instead of whole `Worker`s.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Hot {
    pub site_index: u32,
    /// Index into `FleetView::jurisdictions`.
    pub jurisdiction: u32,
    /// Warm, healthy and not cordoned.
    pub open: bool,
    pub queue_depth: u32,
    pub running: u32,
    pub max_running: u32,
    pub mean_step_ms: f32,
    pub prefill_speed: f32,
}

/// Jurisdictions a request may be served in, as a bit set over
/// `FleetView::jurisdictions` (at most 256 distinct ones in a view).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JurisdictionSet {
    any: bool,
    bits: [u64; 4],
}

impl JurisdictionSet {
    #[inline]
    pub fn contains(&self, id: u32) -> bool {
        self.any
            || self
                .bits
                .get(id as usize / 64)
                .is_some_and(|b| b & (1 << (id % 64)) != 0)
    }
}

/// An immutable snapshot of the fleet.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    /// Fleet revision this view reflects.
    pub revision: u64,
    pub workers: Vec<Worker>,
    /// The scorer's fields of `workers`, same indexes.
    pub hot: Vec<Hot>,
    /// Distinct jurisdictions of the workers' PoPs; `Hot::jurisdiction` indexes it.
    pub jurisdictions: Vec<String>,
    /// Model id -> indexes into `workers`.
    by_model: HashMap<String, Vec<u32>>,
    /// Which workers hold which prompt prefixes.
    pub prefixes: PrefixIndex,
    /// Every model this router has seen resident in the fleet, here now or not: a model
    /// between placements is unavailable (503), not unknown (404).
    pub known_models: std::collections::BTreeSet<String>,
}

impl FleetView {
    pub fn new(revision: u64, mut workers: Vec<Worker>) -> Self {
        let mut by_model: HashMap<String, Vec<u32>> = HashMap::new();
        for (i, w) in workers.iter().enumerate() {
            by_model.entry(w.model.clone()).or_default().push(i as u32);
        }
        let mut jurisdictions: Vec<String> = Vec::new();
        let hot = workers
            .iter()
            .map(|w| {
                let jurisdiction = match jurisdictions.iter().position(|j| *j == w.jurisdiction) {
                    Some(j) => j,
                    None => {
                        jurisdictions.push(w.jurisdiction.clone());
                        jurisdictions.len() - 1
                    }
                } as u32;
                Hot {
                    site_index: w.site_index as u32,
                    jurisdiction,
                    open: w.warm && w.healthy && !w.cordoned,
                    queue_depth: w.load.queue_depth,
                    running: w.load.running,
                    max_running: w.load.max_running,
                    mean_step_ms: w.load.mean_step_ms,
                    prefill_speed: w.load.prefill_speed,
                }
            })
            .collect();
        let prefixes = PrefixIndex::build(
            workers
                .iter()
                .map(|w| (w.block_size, w.cached_blocks.as_slice())),
        );
        // The index holds them now; a view of thousands of workers need not keep
        // every worker's hashes twice.
        for w in &mut workers {
            w.cached_blocks = Vec::new();
        }
        let known_models = by_model.keys().filter(|m| !m.is_empty()).cloned().collect();
        Self {
            revision,
            workers,
            hot,
            jurisdictions,
            by_model,
            prefixes,
            known_models,
        }
    }

    /// `allowed` (empty: any) as a set over this view's jurisdictions. A jurisdiction no
    /// worker is in adds nothing: no worker can match it.
    pub fn jurisdiction_set(&self, allowed: &[String]) -> JurisdictionSet {
        let mut set = JurisdictionSet {
            any: allowed.is_empty(),
            bits: [0; 4],
        };
        for a in allowed {
            if let Some(id) = self.jurisdictions.iter().position(|j| j == a)
                && let Some(word) = set.bits.get_mut(id / 64)
            {
                *word |= 1 << (id % 64);
            }
        }
        set
    }

    /// Workers that have `model` resident (any state).
    pub fn serving(&self, model: &str) -> &[u32] {
        self.by_model.get(model).map_or(&[], Vec::as_slice)
    }

    /// Model ids with at least one warm worker, sorted.
    pub fn models(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .by_model
            .iter()
            .filter(|(_, ws)| ws.iter().any(|&i| self.workers[i as usize].warm))
            .map(|(m, _)| m.clone())
            .collect();
        out.sort();
        out
    }
}

/// Round trips between every pair of catalog sites, milliseconds, computed once.
#[derive(Debug, Clone)]
pub struct RttTable {
    n: usize,
    ms: Vec<f32>,
}

impl RttTable {
    pub fn from_catalog(catalog: &Catalog) -> Self {
        let sites = catalog.sites();
        let n = sites.len();
        let mut ms = vec![0f32; n * n];
        for (i, a) in sites.iter().enumerate() {
            for (j, b) in sites.iter().enumerate() {
                ms[i * n + j] = a.rtt_ms_to(b) as f32;
            }
        }
        Self { n, ms }
    }

    /// Estimated RTT from site `from` to site `to` (catalog indexes).
    #[inline]
    pub fn get(&self, from: usize, to: usize) -> f32 {
        self.ms[from * self.n + to]
    }

    /// Overrides the RTT from `from` to `to` (the simulator cuts a link by setting it
    /// to infinity, which no candidate's score survives against a reachable one).
    pub fn set(&mut self, from: usize, to: usize, ms: f32) {
        self.ms[from * self.n + to] = ms;
    }
}

/// The control plane's fleet feed folded into PoP states, sans-IO: apply `FleetEvent`s
/// in order, then build a [`FleetView`] when one is wanted.
#[derive(Debug, Clone, Default)]
pub struct FleetFeed {
    /// Revision of the last event applied; where a reconnecting watch resumes.
    pub revision: u64,
    pops: std::collections::BTreeMap<String, meridian_proto::control::v1::PopState>,
    /// Every model seen resident so far.
    known_models: std::collections::BTreeSet<String>,
}

impl FleetFeed {
    /// Applies one event; a snapshot replaces everything.
    pub fn apply(&mut self, event: meridian_proto::control::v1::FleetEvent) {
        use meridian_proto::control::v1::fleet_event::Event;
        self.revision = event.revision;
        match event.event {
            Some(Event::Snapshot(s)) => {
                self.pops = s.pops.into_iter().map(|p| (p.pop_id.clone(), p)).collect();
            }
            Some(Event::PopUpserted(p)) => {
                self.pops.insert(p.pop_id.clone(), p);
            }
            Some(Event::PopRemoved(id)) => {
                self.pops.remove(&id);
            }
            None => {}
        }
    }

    /// The view routers score on. PoPs outside the catalog are left out (the control
    /// plane refuses them; a router never guesses a location).
    pub fn view(&mut self, catalog: &Catalog) -> FleetView {
        use meridian_proto::control::v1::PopStatus;
        use meridian_proto::worker::v1::WorkerState;
        let mut workers = Vec::new();
        for pop in self.pops.values() {
            let Some(site_index) = catalog.index_of(&pop.pop_id) else {
                continue;
            };
            let cordoned = pop.status != PopStatus::Active as i32;
            for w in &pop.workers {
                let load = w.load.as_ref();
                let summary = load.and_then(|l| l.prefix_summary.as_ref());
                workers.push(Worker {
                    pop: pop.pop_id.clone(),
                    site_index,
                    jurisdiction: pop.jurisdiction.clone(),
                    worker_id: w.worker_id.clone(),
                    endpoint: w.endpoint.clone(),
                    model: w.model.clone(),
                    warm: w.state == WorkerState::Warm as i32,
                    healthy: true,
                    cordoned,
                    load: load.map_or_else(Load::default, |l| Load {
                        queue_depth: l.queue_depth,
                        running: l.running_sequences,
                        max_running: l.max_running_sequences,
                        kv_blocks_free: l.kv_blocks_free,
                        kv_blocks_total: l.kv_blocks_total,
                        mean_step_ms: l.mean_step_ms,
                        prefill_speed: l.prefill_speed_tokens_per_second,
                    }),
                    block_size: summary.map_or(0, |s| s.block_size),
                    cached_blocks: summary.map_or_else(Vec::new, |s| s.block_hashes.clone()),
                });
            }
        }
        let mut view = FleetView::new(self.revision, workers);
        self.known_models.extend(view.known_models.iter().cloned());
        view.known_models.clone_from(&self.known_models);
        view
    }
}

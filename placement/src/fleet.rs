//! The fleet as the control plane keeps it, sans-IO: where each record lives in the
//! store, how registrations and load reports are checked and merged, and the
//! materialized view that a replica builds from the store's change feed and streams to
//! `WatchFleet` subscribers.
//!
//! Store layout, under the configured prefix `P`:
//! - `P/fleet/pop/<POP>`: the PoP's `PopState` (protobuf), under the PoP's session
//!   lease; rewritten on every load report, gone when the lease lapses.
//! - `P/fleet/ops/<POP>`: operator state (cordon, drain; JSON), no lease: it outlives
//!   agent restarts.
//! - `P/directives/<POP>/<ID>`: a `Directive` for the PoP's agent (protobuf), written by
//!   the leader; `P/directive-status/<POP>/<ID>`: the agent's progress on it (JSON).
//! - `P/election`: the leader election; `P/placement`: the desired placement.
//!
//! Fleet revisions are store revisions, so every replica streams the same revisions and
//! a router can resume its watch on any of them.

use std::collections::{BTreeMap, HashMap, HashSet};

use meridian_proto::catalog::Catalog;
use meridian_proto::control::v1 as pb;
use meridian_proto::worker::v1::WorkerState;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::store::WatchEvent;

/// Most prefix hashes kept per worker in the fleet view; more are cut and marked
/// truncated. 1,024 blocks of 16 tokens cover 16k cached prompt tokens per worker.
pub const MAX_PREFIX_HASHES: usize = 1024;
/// Most GPUs of one kind a PoP may declare, and workers it may register.
pub const MAX_GPUS_PER_KIND: u32 = 4096;
pub const MAX_WORKERS: usize = 1024;

/// Key names under a prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }
    pub fn fleet(&self) -> String {
        format!("{}/fleet/", self.prefix)
    }
    pub fn pops(&self) -> String {
        format!("{}/fleet/pop/", self.prefix)
    }
    pub fn pop(&self, pop: &str) -> String {
        format!("{}/fleet/pop/{pop}", self.prefix)
    }
    pub fn ops_prefix(&self) -> String {
        format!("{}/fleet/ops/", self.prefix)
    }
    pub fn ops(&self, pop: &str) -> String {
        format!("{}/fleet/ops/{pop}", self.prefix)
    }
    pub fn directives_all(&self) -> String {
        format!("{}/directives/", self.prefix)
    }
    pub fn directives(&self, pop: &str) -> String {
        format!("{}/directives/{pop}/", self.prefix)
    }
    pub fn directive(&self, pop: &str, id: &str) -> String {
        format!("{}/directives/{pop}/{id}", self.prefix)
    }
    pub fn statuses_all(&self) -> String {
        format!("{}/directive-status/", self.prefix)
    }
    pub fn status(&self, pop: &str, id: &str) -> String {
        format!("{}/directive-status/{pop}/{id}", self.prefix)
    }
    pub fn election(&self) -> String {
        format!("{}/election", self.prefix)
    }
    pub fn demand_all(&self) -> String {
        format!("{}/demand/", self.prefix)
    }
    pub fn demand(&self, router: &str) -> String {
        format!("{}/demand/{router}", self.prefix)
    }
    pub fn policy(&self) -> String {
        format!("{}/policy", self.prefix)
    }
    pub fn plan(&self, id: &str) -> String {
        format!("{}/plans/{id}", self.prefix)
    }
    pub fn placement(&self) -> String {
        format!("{}/placement", self.prefix)
    }
}

/// Operator state of a PoP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PopOps {
    /// No new requests (Cordon, or a whole-PoP drain).
    pub cordoned: bool,
    /// Every worker drains (a whole-PoP drain).
    pub draining: bool,
    /// Workers drained one by one.
    pub drained_workers: Vec<String>,
}

impl PopOps {
    /// Whether `worker` is being drained, alone or with its PoP.
    pub fn drains(&self, worker: &str) -> bool {
        self.draining || self.drained_workers.iter().any(|w| w == worker)
    }
}

/// The agent's last word on a directive (`P/directive-status/...`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectiveRecord {
    pub state: i32,
    pub message: String,
    pub progress: f32,
}

impl DirectiveRecord {
    /// Done or failed: the agent will do nothing more with it.
    pub fn finished(&self) -> bool {
        self.state == pb::DirectiveState::Done as i32
            || self.state == pb::DirectiveState::Failed as i32
    }
}

/// Why a request was refused; the service maps it to a gRPC status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
}

/// Checks a registration against the catalog and turns it into the PoP's record.
pub fn register(
    catalog: &Catalog,
    req: &pb::RegisterRequest,
    now_ms: u64,
) -> Result<pb::PopState, Refusal> {
    let site = catalog.get(&req.pop_id).ok_or_else(|| {
        Refusal::NotFound(format!("pop_id {:?} is not in the PoP catalog", req.pop_id))
    })?;
    if req.jurisdiction != site.jurisdiction {
        return Err(Refusal::Invalid(format!(
            "jurisdiction {:?} does not match the catalog's {:?} for {}",
            req.jurisdiction, site.jurisdiction, site.id
        )));
    }
    if let Some(loc) = &req.location
        && ((loc.lat - site.lat).abs() > 1.0 || (loc.lon - site.lon).abs() > 1.0)
    {
        return Err(Refusal::Invalid(format!(
            "location ({}, {}) is not at {} ({}, {})",
            loc.lat, loc.lon, site.id, site.lat, site.lon
        )));
    }
    let mut kinds = HashMap::new();
    for g in &req.gpus {
        if g.kind.is_empty() {
            return Err(Refusal::Invalid("gpus: a GPU kind has no name".into()));
        }
        if g.count == 0 || g.count > MAX_GPUS_PER_KIND {
            return Err(Refusal::Invalid(format!(
                "gpus: {} count {} is not in 1..={MAX_GPUS_PER_KIND}",
                g.kind, g.count
            )));
        }
        if g.memory_bytes == 0 {
            return Err(Refusal::Invalid(format!(
                "gpus: {} has no memory_bytes",
                g.kind
            )));
        }
        if kinds.insert(g.kind.as_str(), g.count).is_some() {
            return Err(Refusal::Invalid(format!(
                "gpus: kind {} listed twice",
                g.kind
            )));
        }
    }
    if req.workers.is_empty() || req.workers.len() > MAX_WORKERS {
        return Err(Refusal::Invalid(format!(
            "workers: {} given, 1..={MAX_WORKERS} expected",
            req.workers.len()
        )));
    }
    let mut ids = HashSet::new();
    let mut devices = HashSet::new();
    let mut per_kind: HashMap<&str, u32> = HashMap::new();
    for w in &req.workers {
        if w.worker_id.is_empty() || w.worker_id.len() > 64 || w.worker_id.contains('/') {
            return Err(Refusal::Invalid(format!(
                "workers: worker_id {:?} must be 1-64 characters without '/'",
                w.worker_id
            )));
        }
        if !ids.insert(w.worker_id.as_str()) {
            return Err(Refusal::Invalid(format!(
                "workers: duplicate worker_id {:?}",
                w.worker_id
            )));
        }
        let endpoint_ok = (w.endpoint.starts_with("http://") || w.endpoint.starts_with("https://"))
            && w.endpoint.parse::<tonic::transport::Uri>().is_ok();
        if !endpoint_ok {
            return Err(Refusal::Invalid(format!(
                "workers: {} endpoint {:?} is not an http(s)://host:port address",
                w.worker_id, w.endpoint
            )));
        }
        if w.device == "cpu" {
            if !w.gpu_kind.is_empty() {
                return Err(Refusal::Invalid(format!(
                    "workers: {} runs on cpu but names gpu_kind {:?}",
                    w.worker_id, w.gpu_kind
                )));
            }
        } else if let Some(n) = w.device.strip_prefix("cuda:")
            && n.parse::<u32>().is_ok()
        {
            if !devices.insert(w.device.as_str()) {
                return Err(Refusal::Invalid(format!(
                    "workers: device {} is used by two workers",
                    w.device
                )));
            }
            let Some(&count) = kinds.get(w.gpu_kind.as_str()) else {
                return Err(Refusal::Invalid(format!(
                    "workers: {} gpu_kind {:?} is not in gpus",
                    w.worker_id, w.gpu_kind
                )));
            };
            let used = per_kind.entry(w.gpu_kind.as_str()).or_default();
            *used += 1;
            if *used > count {
                return Err(Refusal::Invalid(format!(
                    "workers: more {} workers than the {count} GPUs declared",
                    w.gpu_kind
                )));
            }
        } else {
            return Err(Refusal::Invalid(format!(
                "workers: {} device {:?} is neither \"cpu\" nor \"cuda:N\"",
                w.worker_id, w.device
            )));
        }
    }
    Ok(pb::PopState {
        pop_id: site.id.clone(),
        jurisdiction: site.jurisdiction.clone(),
        location: Some(pb::Location {
            lat: site.lat,
            lon: site.lon,
        }),
        status: pb::PopStatus::Active as i32,
        gpus: req.gpus.clone(),
        workers: req
            .workers
            .iter()
            .map(|w| pb::WorkerStatus {
                worker_id: w.worker_id.clone(),
                endpoint: w.endpoint.clone(),
                device: w.device.clone(),
                gpu_kind: w.gpu_kind.clone(),
                model: String::new(),
                state: WorkerState::Unspecified as i32,
                load: None,
                reported_unix_ms: 0,
                load_progress: 0.0,
            })
            .collect(),
        last_report_unix_ms: now_ms,
        labels: req.labels.clone(),
    })
}

/// Merges a load report into the PoP's record. Every worker in the report must be
/// registered, once; workers left out keep their last state.
pub fn merge_report(
    record: &mut pb::PopState,
    report: &pb::LoadReport,
    now_ms: u64,
) -> Result<(), Refusal> {
    let mut seen = HashSet::new();
    for w in &report.workers {
        if !seen.insert(w.worker_id.as_str()) {
            return Err(Refusal::Invalid(format!(
                "load report lists worker {:?} twice",
                w.worker_id
            )));
        }
        if !record.workers.iter().any(|r| r.worker_id == w.worker_id) {
            return Err(Refusal::Invalid(format!(
                "load report for worker {:?}, which PoP {} never registered",
                w.worker_id, record.pop_id
            )));
        }
        if !(0.0..=1.0).contains(&w.load_progress) {
            return Err(Refusal::Invalid(format!(
                "worker {:?}: load_progress {} is not in 0..=1",
                w.worker_id, w.load_progress
            )));
        }
    }
    for w in &report.workers {
        let Some(r) = record
            .workers
            .iter_mut()
            .find(|r| r.worker_id == w.worker_id)
        else {
            continue;
        };
        r.model = w.model.clone();
        r.state = w.state;
        r.load_progress = w.load_progress;
        r.reported_unix_ms = now_ms;
        r.load = w.load.clone().map(|mut load| {
            if let Some(s) = &mut load.prefix_summary
                && s.block_hashes.len() > MAX_PREFIX_HASHES
            {
                s.block_hashes.truncate(MAX_PREFIX_HASHES);
                s.truncated = true;
            }
            load
        });
    }
    record.last_report_unix_ms = now_ms;
    Ok(())
}

/// The fleet as one replica sees it: the stored records, folded from the store's change
/// feed, and the view routers get (records with operator state applied).
#[derive(Debug, Clone, Default)]
pub struct FleetState {
    /// Store revision of the last change applied.
    pub revision: u64,
    records: BTreeMap<String, pb::PopState>,
    ops: HashMap<String, PopOps>,
}

impl FleetState {
    /// Builds the state from a `get_prefix(keys.fleet())` read.
    pub fn load(keys: &Keys, kvs: &[crate::store::KeyValue], revision: u64) -> Self {
        let mut s = Self {
            revision,
            ..Self::default()
        };
        for kv in kvs {
            s.set(keys, &kv.key, Some(&kv.value));
        }
        s
    }

    /// Applies one change; returns the fleet event routers see, if any.
    pub fn apply(&mut self, keys: &Keys, event: &WatchEvent) -> Option<pb::FleetEvent> {
        self.revision = self.revision.max(event.revision());
        let value = match event {
            WatchEvent::Put(kv) => Some(kv.value.as_slice()),
            WatchEvent::Delete { .. } => None,
        };
        let pop = self.set(keys, event.key(), value)?;
        let ev = match self.view(&pop) {
            Some(state) => pb::fleet_event::Event::PopUpserted(state),
            None if event.key().starts_with(&keys.pops()) => {
                pb::fleet_event::Event::PopRemoved(pop)
            }
            None => return None,
        };
        Some(pb::FleetEvent {
            revision: event.revision(),
            event: Some(ev),
        })
    }

    /// Stores or removes the record behind `key`; returns the PoP it concerns.
    fn set(&mut self, keys: &Keys, key: &str, value: Option<&[u8]>) -> Option<String> {
        if let Some(pop) = key.strip_prefix(&keys.pops()) {
            match value.map(pb::PopState::decode) {
                Some(Ok(state)) => {
                    self.records.insert(pop.to_string(), state);
                }
                Some(Err(e)) => {
                    tracing::warn!(key, error = %e, "undecodable PoP record ignored");
                    return None;
                }
                None => {
                    self.records.remove(pop);
                }
            }
            Some(pop.to_string())
        } else if let Some(pop) = key.strip_prefix(&keys.ops_prefix()) {
            match value.map(serde_json::from_slice::<PopOps>) {
                Some(Ok(ops)) => {
                    self.ops.insert(pop.to_string(), ops);
                }
                Some(Err(e)) => {
                    tracing::warn!(key, error = %e, "undecodable PoP ops record ignored");
                    return None;
                }
                None => {
                    self.ops.remove(pop);
                }
            }
            Some(pop.to_string())
        } else {
            None
        }
    }

    /// The stored record of a PoP (as the agent last wrote it).
    pub fn record(&self, pop: &str) -> Option<&pb::PopState> {
        self.records.get(pop)
    }

    pub fn ops(&self, pop: &str) -> PopOps {
        self.ops.get(pop).cloned().unwrap_or_default()
    }

    /// The PoP as routers see it: cordon and drain applied to its status, and drained
    /// workers shown DRAINING until they report they are.
    pub fn view(&self, pop: &str) -> Option<pb::PopState> {
        let mut state = self.records.get(pop)?.clone();
        if let Some(ops) = self.ops.get(pop) {
            if ops.draining {
                state.status = pb::PopStatus::Draining as i32;
            } else if ops.cordoned {
                state.status = pb::PopStatus::Cordoned as i32;
            }
            for w in &mut state.workers {
                if ops.drains(&w.worker_id) && w.state == WorkerState::Warm as i32 {
                    w.state = WorkerState::Draining as i32;
                }
            }
        }
        Some(state)
    }

    pub fn pop_ids(&self) -> impl Iterator<Item = &str> {
        self.records.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn worker_count(&self) -> usize {
        self.records.values().map(|p| p.workers.len()).sum()
    }

    /// Every PoP as routers see it.
    pub fn snapshot(&self) -> pb::FleetSnapshot {
        pb::FleetSnapshot {
            pops: self.records.keys().filter_map(|p| self.view(p)).collect(),
        }
    }
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;

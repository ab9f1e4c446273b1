//! The placement side of a run, sans-IO: GPU pools per PoP, a replica's capacity from
//! its engine model, and the placement [`Instance`] the production solver is given.

use std::collections::BTreeMap;

use meridian_placement::solver::instance::{
    Demand, GpuKind, Instance, ModelSpec as PlacedModel, PlacementRow, RttSample, SiteSpec,
};
use meridian_proto::catalog::Catalog;

use crate::engine_model::StepShape;
use crate::scenario::{EngineSpec, ModelSpec, Scenario};

/// GPUs per kind (indexes of `scenario.gpu_kinds`) at a PoP, before faults.
pub fn pool(s: &Scenario, site_id: &str, jurisdiction: &str) -> Vec<u32> {
    let spec = s
        .fleet
        .pops
        .get(site_id)
        .or_else(|| s.fleet.jurisdictions.get(jurisdiction))
        .unwrap_or(&s.fleet.default);
    s.gpu_kinds
        .iter()
        .map(|k| spec.get(&k.name).copied().unwrap_or(0))
        .collect()
}

/// Requests per second one replica sustains with its batch full, from its engine model
/// and the mean request: each request costs its prompt's prefill (less the shared
/// prefix; its tokens attend the prompt up to them) and its share of the decode steps it
/// runs in. The batch is `max_running` sequences or as many as the KV cache holds at
/// their mean length.
pub fn replica_rps(e: &EngineSpec, shared_prefix: u32, mean_prompt: f64, mean_output: f64) -> f64 {
    let m = e.model();
    let own_prompt = (mean_prompt - f64::from(shared_prefix)).max(1.0);
    let mean_context = mean_prompt + mean_output / 2.0;
    let kv_tokens = f64::from(e.kv_blocks) * f64::from(e.block_size);
    let batch = f64::from(e.max_running)
        .min((kv_tokens / (mean_context + f64::from(e.block_size) / 2.0)).floor())
        .max(1.0);
    let step_us = e.overhead().at(batch)
        + m.step_us(&StepShape {
            decode_tokens: batch,
            context_tokens: batch * mean_context,
            ..StepShape::default()
        });
    let attention = StepShape::chunk_attention(shared_prefix, own_prompt as u32);
    let per_request_us = mean_output * step_us / batch
        + own_prompt * m.prefill_token_us
        + m.tiles_us(own_prompt)
        + attention * m.prefill_attention_us;
    1e6 / per_request_us.max(1e-9)
}

/// Demand the solver plans for: rps per (region, model, allowed jurisdictions).
pub type DemandMap = BTreeMap<(usize, usize, usize), f64>;

/// What an [`Instance`] is built from.
pub struct InstanceInputs<'a> {
    pub scenario: &'a Scenario,
    pub catalog: &'a Catalog,
    /// Catalog indexes of the PoPs and of the user regions.
    pub pops: &'a [usize],
    pub regions: &'a [usize],
    /// GPUs per kind at each PoP now (faults taken off).
    pub pools: &'a [Vec<u32>],
    pub demand: &'a DemandMap,
    /// Allowed-jurisdiction lists that `demand` keys index (0: any).
    pub allowed: &'a [Vec<String>],
    /// Replicas each (model, kind) sustains at the planned utilisation.
    pub rps_per_replica: &'a [Vec<f64>],
    /// Replicas in place, counted by (model, PoP index, kind).
    pub current: &'a BTreeMap<(usize, usize, usize), u32>,
    /// (region, PoP) catalog pairs that cannot reach each other.
    pub cut: &'a [(usize, usize)],
}

/// A round trip no SLO allows: a cut link.
const UNREACHABLE_MS: f64 = 1e9;

/// The placement instance of the fleet as it stands.
pub fn instance(i: &InstanceInputs<'_>) -> Instance {
    let s = i.scenario;
    let sites = i.catalog.sites();
    let mut out_sites: Vec<SiteSpec> = Vec::new();
    let mut seen = vec![false; sites.len()];
    for (p, &c) in i.pops.iter().enumerate() {
        seen[c] = true;
        out_sites.push(SiteSpec {
            id: sites[c].id.clone(),
            jurisdiction: sites[c].jurisdiction.clone(),
            lat: sites[c].lat,
            lon: sites[c].lon,
            gpus: s
                .gpu_kinds
                .iter()
                .zip(&i.pools[p])
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| (k.name.clone(), *n))
                .collect(),
            labels: BTreeMap::new(),
            extra: Default::default(),
        });
    }
    // Regions without a PoP are sites with no GPUs: demand comes from them.
    for &c in i.regions {
        if !seen[c] {
            seen[c] = true;
            out_sites.push(SiteSpec {
                id: sites[c].id.clone(),
                jurisdiction: sites[c].jurisdiction.clone(),
                lat: sites[c].lat,
                lon: sites[c].lon,
                gpus: BTreeMap::new(),
                labels: BTreeMap::new(),
                extra: Default::default(),
            });
        }
    }
    let models = s
        .models
        .iter()
        .enumerate()
        .map(|(m, spec)| placed_model(s, spec, &i.rps_per_replica[m]))
        .collect();
    let demand = i
        .demand
        .iter()
        .filter(|(_, rps)| **rps > 0.0)
        .map(|(&(r, m, a), &rps)| Demand {
            region: sites[r].id.clone(),
            model: s.models[m].id.clone(),
            rps,
            jurisdictions: (a != 0).then(|| i.allowed[a].clone()),
            slo_rtt_ms: None,
            extra: Default::default(),
        })
        .collect();
    let current = i
        .current
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(&(m, p, k), &n)| PlacementRow {
            model: s.models[m].id.clone(),
            site: sites[i.pops[p]].id.clone(),
            gpu: s.gpu_kinds[k].name.clone(),
            replicas: n,
        })
        .collect();
    let rtt_ms = i
        .cut
        .iter()
        .map(|&(r, p)| RttSample {
            from: sites[r].id.clone(),
            to: sites[p].id.clone(),
            ms: UNREACHABLE_MS,
        })
        .collect();
    Instance {
        version: 1,
        gpu_kinds: s
            .gpu_kinds
            .iter()
            .map(|k| GpuKind {
                name: k.name.clone(),
                mem_gib: k.mem_gib,
                cost: k.cost,
                extra: Default::default(),
            })
            .collect(),
        sites: out_sites,
        models,
        demand,
        slo_rtt_ms: s.placement.slo_rtt_ms,
        rtt_ms,
        pins: Vec::new(),
        current,
        weights: s.placement.weights.unwrap_or_default(),
        max_moves: s.placement.max_moves,
        extra: Default::default(),
    }
}

fn placed_model(s: &Scenario, spec: &ModelSpec, rps: &[f64]) -> PlacedModel {
    PlacedModel {
        id: spec.id.clone(),
        mem_gib: spec.mem_gib,
        gpus_per_replica: spec.gpus_per_replica,
        rps_per_replica: s
            .gpu_kinds
            .iter()
            .zip(rps)
            .filter(|(k, r)| **r > 0.0 && spec.engine.contains_key(&k.name))
            .map(|(k, r)| (k.name.clone(), *r))
            .collect(),
        jurisdictions: spec.jurisdictions.clone(),
        min_replicas: spec.min_replicas,
        constraints: Vec::new(),
        min_sites: 0,
        extra: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(max_running: u32, kv_blocks: u32) -> EngineSpec {
        toml::from_str(&format!(
            "base_us = 1000\nprefill_token_us = 10\ndecode_token_us = 100\n\
             max_running = {max_running}\nmax_batch_tokens = 512\nkv_blocks = {kv_blocks}\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_replica_sustains_its_full_batch_rate() {
        // 100 output tokens at batch 10: each step 1000 + 10 * 100 = 2000 us, so a
        // request takes 100 * 2000 / 10 = 20,000 us of decode plus 50 * 10 of prefill.
        let rps = replica_rps(&engine(10, 10_000), 0, 50.0, 100.0);
        assert!((rps - 1e6 / 20_500.0).abs() < 1e-6, "{rps}");
        // A KV cache that holds only 2 such sequences: batch 2, a third of the rate.
        let small = replica_rps(&engine(10, 2 * (50 + 50 + 8) / 16 + 1), 0, 50.0, 100.0);
        assert!(small < rps / 2.5, "{small} vs {rps}");
    }
}

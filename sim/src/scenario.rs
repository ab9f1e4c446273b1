//! Scenario files (TOML, `deploy/scenarios/`): the fleet, its models and their engines,
//! the traffic, the faults and the SLO of one simulated run. Parsing is strict: an
//! unknown key is an error that names it, so a typo never silently changes a run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::SimError;
use crate::engine_model::{EngineModel, StepOverhead, StepShape};

/// One simulated run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// Seeds every random draw; same seed, same output.
    #[serde(default = "one")]
    pub seed: u64,
    /// Simulated time, hours.
    pub duration_h: f64,
    /// UTC hour of day at the start of the run.
    #[serde(default)]
    pub start_utc_h: f64,
    #[serde(default)]
    pub geography: Geography,
    pub traffic: Traffic,
    /// GPU kinds, by name.
    pub gpu_kinds: Vec<GpuKindSpec>,
    pub models: Vec<ModelSpec>,
    pub fleet: Fleet,
    #[serde(default)]
    pub placement: PlacementSpec,
    #[serde(default)]
    pub router: RouterSpec,
    #[serde(default)]
    pub slo: Slo,
    #[serde(default)]
    pub faults: Vec<Fault>,
    #[serde(default)]
    pub report: ReportSpec,
}

fn one() -> u64 {
    1
}

/// Where the PoPs and the users are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Geography {
    /// Catalog sites that are PoPs; empty: every catalog site.
    #[serde(default)]
    pub pops: Vec<String>,
    /// Catalog sites that send traffic (each the centre of a user region); empty: the
    /// PoPs.
    #[serde(default)]
    pub regions: Vec<String>,
}

/// Request arrivals.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    /// Mean requests per second over the whole fleet and a whole day (before bursts);
    /// unused with a trace.
    #[serde(default)]
    pub mean_rps: f64,
    /// Weight of a region's traffic by its jurisdiction (`default` for the others).
    #[serde(default)]
    pub region_weight: BTreeMap<String, f64>,
    /// Diurnal swing: the rate is `mean * (1 + amplitude * cos(2 pi (h - peak) / 24))`
    /// at local hour `h`, 0: flat.
    #[serde(default = "diurnal_amplitude")]
    pub diurnal_amplitude: f64,
    /// Local hour of the daily peak.
    #[serde(default = "peak_local_hour")]
    pub peak_local_hour: f64,
    /// Request lengths: `sharegpt` (prompt and output tokens of real conversations,
    /// supplied by the caller), or `uniform`.
    #[serde(default)]
    pub lengths: Lengths,
    /// Share of the requests per model id (normalised).
    #[serde(default)]
    pub mix: BTreeMap<String, f64>,
    /// Requests from a jurisdiction that must stay in a set of jurisdictions.
    #[serde(default)]
    pub residency: Vec<ResidencyShare>,
    #[serde(default)]
    pub bursts: Vec<Burst>,
    /// A trace file instead of generated arrivals (CSV, see `trace.rs`); resolved by
    /// the caller, relative to the scenario file.
    #[serde(default)]
    pub trace: Option<String>,
}

fn diurnal_amplitude() -> f64 {
    0.6
}

fn peak_local_hour() -> f64 {
    20.0
}

/// Where request lengths come from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Lengths {
    /// ShareGPT conversations' first turns, tokenized (the caller loads them).
    #[default]
    Sharegpt,
    /// Uniform in `[min, max]` for prompt and output tokens.
    Uniform {
        prompt: (u32, u32),
        output: (u32, u32),
    },
}

/// A share of a jurisdiction's requests that carry a residency constraint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidencyShare {
    /// Requests from regions in this jurisdiction...
    pub from: String,
    /// ...this fraction of them...
    pub fraction: f64,
    /// ...may be served only in these jurisdictions.
    pub allowed: Vec<String>,
}

/// A period of extra traffic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Burst {
    /// A region (catalog site) or a jurisdiction.
    pub region: Option<String>,
    pub jurisdiction: Option<String>,
    /// Hours from the start of the run.
    pub start_h: f64,
    pub duration_min: f64,
    /// Rate multiplier while it lasts.
    pub multiplier: f64,
}

/// A GPU kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuKindSpec {
    pub name: String,
    pub mem_gib: f64,
    /// Cost of one GPU, for placement.
    pub cost: f64,
}

/// A model and how its engine performs on each GPU kind it runs on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub id: String,
    pub mem_gib: f64,
    #[serde(default = "one_u32")]
    pub gpus_per_replica: u32,
    #[serde(default)]
    pub min_replicas: u32,
    /// Jurisdictions the model may be placed in; none: anywhere.
    #[serde(default)]
    pub jurisdictions: Option<Vec<String>>,
    /// Leading prompt tokens every request shares (a system prompt, the chat template)
    /// that a warm replica has in its prefix cache.
    #[serde(default)]
    pub shared_prefix_tokens: u32,
    /// Engine per GPU kind name.
    pub engine: BTreeMap<String, EngineSpec>,
}

fn one_u32() -> u32 {
    1
}

/// One replica's engine: its step-time model and its scheduler's limits (the engine's
/// `[engine]` settings).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSpec {
    /// Step-time model coefficients, microseconds (`meridian sim fit` prints them).
    pub base_us: f64,
    pub prefill_token_us: f64,
    pub decode_token_us: f64,
    #[serde(default)]
    pub context_token_us: f64,
    /// Per query-key pair of the prompt tokens a step computes.
    #[serde(default)]
    pub prefill_attention_us: f64,
    /// Tokens per tile of the matrix products (0: no tile terms), the cost of a tile,
    /// and of a step with more than one.
    #[serde(default)]
    pub tile_tokens: u32,
    #[serde(default)]
    pub tile_us: f64,
    #[serde(default)]
    pub multi_tile_us: f64,
    /// Host time between steps, microseconds (scheduling, sampling, streaming): once a
    /// step, and per sequence of the step.
    #[serde(default)]
    pub step_overhead_us: f64,
    #[serde(default)]
    pub step_overhead_sequence_us: f64,
    #[serde(default = "max_batch_tokens")]
    pub max_batch_tokens: u32,
    #[serde(default = "max_running")]
    pub max_running: u32,
    pub kv_blocks: u32,
    #[serde(default = "block_size")]
    pub block_size: u32,
}

impl EngineSpec {
    /// Host time between steps.
    pub fn overhead(&self) -> StepOverhead {
        StepOverhead {
            base_us: self.step_overhead_us,
            sequence_us: self.step_overhead_sequence_us,
        }
    }

    /// A step that decodes one token with no context, and the host time after it.
    pub fn one_token_step_us(&self) -> f64 {
        let one = StepShape {
            decode_tokens: 1.0,
            ..StepShape::default()
        };
        self.overhead().at(1.0) + self.model().step_us(&one)
    }

    /// The step-time model.
    pub fn model(&self) -> EngineModel {
        EngineModel {
            base_us: self.base_us,
            prefill_token_us: self.prefill_token_us,
            decode_token_us: self.decode_token_us,
            context_token_us: self.context_token_us,
            prefill_attention_us: self.prefill_attention_us,
            tile_tokens: self.tile_tokens,
            tile_us: self.tile_us,
            multi_tile_us: self.multi_tile_us,
        }
    }
}

fn max_batch_tokens() -> u32 {
    512
}

fn max_running() -> u32 {
    64
}

fn block_size() -> u32 {
    16
}

/// GPUs at each PoP before placement.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// GPUs per kind at a PoP that nothing below names.
    #[serde(default)]
    pub default: BTreeMap<String, u32>,
    /// Per jurisdiction.
    #[serde(default)]
    pub jurisdictions: BTreeMap<String, BTreeMap<String, u32>>,
    /// Per PoP (catalog id); wins over the jurisdiction.
    #[serde(default)]
    pub pops: BTreeMap<String, BTreeMap<String, u32>>,
}

/// How models are placed, with the production solver.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementSpec {
    /// Round-trip SLO the solver keeps routes within.
    #[serde(default = "slo_rtt_ms")]
    pub slo_rtt_ms: f64,
    /// Share of a replica's saturated throughput the solver may plan on.
    #[serde(default = "target_utilisation")]
    pub target_utilisation: f64,
    /// Re-plan from measured demand every so many minutes; 0: place once.
    #[serde(default)]
    pub replan_every_min: f64,
    /// Re-plan this long after a fault, seconds; negative: not on faults.
    #[serde(default = "fault_replan_s")]
    pub fault_replan_s: f64,
    /// A new replica serves after this long, seconds.
    #[serde(default = "load_s")]
    pub load_s: f64,
    /// Moves per re-plan, at most (forced moves aside).
    #[serde(default)]
    pub max_moves: Option<u64>,
    /// Placement objective weights (`unserved_rps`, `gpu`, `moves`).
    #[serde(default)]
    pub weights: Option<meridian_placement::solver::instance::Weights>,
}

fn slo_rtt_ms() -> f64 {
    100.0
}

fn target_utilisation() -> f64 {
    0.7
}

fn fault_replan_s() -> f64 {
    30.0
}

fn load_s() -> f64 {
    60.0
}

impl Default for PlacementSpec {
    fn default() -> Self {
        Self {
            slo_rtt_ms: slo_rtt_ms(),
            target_utilisation: target_utilisation(),
            replan_every_min: 0.0,
            fault_replan_s: fault_replan_s(),
            load_s: load_s(),
            max_moves: None,
            weights: None,
        }
    }
}

/// The router's settings that change decisions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSpec {
    /// Requests a worker may have waiting before it is passed over (the router's
    /// `max_waiting_per_worker`); 0: no limit.
    #[serde(default = "max_waiting")]
    pub max_waiting_per_worker: u32,
}

fn max_waiting() -> u32 {
    256
}

impl Default for RouterSpec {
    fn default() -> Self {
        Self {
            max_waiting_per_worker: max_waiting(),
        }
    }
}

/// Latency objectives, milliseconds; a request meets the SLO when both hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    #[serde(default = "ttft_ms")]
    pub ttft_ms: f64,
    #[serde(default = "tpot_ms")]
    pub tpot_ms: f64,
}

fn ttft_ms() -> f64 {
    2000.0
}

fn tpot_ms() -> f64 {
    100.0
}

impl Default for Slo {
    fn default() -> Self {
        Self {
            ttft_ms: ttft_ms(),
            tpot_ms: tpot_ms(),
        }
    }
}

/// A failure at a given time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// `count` GPUs of a PoP fail (their replicas with them).
    Gpu {
        pop: String,
        at_h: f64,
        #[serde(default = "one_u32")]
        count: u32,
        /// Back after this long; none: for the rest of the run.
        duration_min: Option<f64>,
    },
    /// A whole PoP goes dark.
    Pop {
        pop: String,
        at_h: f64,
        duration_min: Option<f64>,
    },
    /// The network between two jurisdictions (or two sites) is cut: users on one side
    /// cannot reach PoPs on the other.
    Link {
        from: String,
        to: String,
        at_h: f64,
        duration_min: Option<f64>,
    },
}

impl Fault {
    pub fn at_h(&self) -> f64 {
        match self {
            Fault::Gpu { at_h, .. } | Fault::Pop { at_h, .. } | Fault::Link { at_h, .. } => *at_h,
        }
    }

    pub fn duration_min(&self) -> Option<f64> {
        match self {
            Fault::Gpu { duration_min, .. }
            | Fault::Pop { duration_min, .. }
            | Fault::Link { duration_min, .. } => *duration_min,
        }
    }
}

/// What the report holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSpec {
    /// Width of a timeline bucket, minutes.
    #[serde(default = "bucket_min")]
    pub bucket_min: f64,
}

fn bucket_min() -> f64 {
    15.0
}

impl Default for ReportSpec {
    fn default() -> Self {
        Self {
            bucket_min: bucket_min(),
        }
    }
}

impl Scenario {
    /// Parses and validates a scenario; errors name the key or the value at fault.
    pub fn from_toml(text: &str) -> Result<Self, SimError> {
        let s: Scenario = toml::from_str(text).map_err(|e| SimError::Scenario(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |m: String| Err(SimError::Scenario(m));
        if !(self.duration_h > 0.0 && self.duration_h <= 24.0 * 31.0) {
            return bad(format!(
                "duration_h {} must be in (0, 744]",
                self.duration_h
            ));
        }
        if !(self.traffic.mean_rps >= 0.0 && self.traffic.mean_rps.is_finite()) {
            return bad("traffic.mean_rps must be a non-negative number".into());
        }
        if !(0.0..=1.0).contains(&self.traffic.diurnal_amplitude) {
            return bad("traffic.diurnal_amplitude must be in [0, 1]".into());
        }
        if let Lengths::Uniform { prompt, output } = &self.traffic.lengths
            && (prompt.0 == 0 || prompt.0 > prompt.1 || output.0 == 0 || output.0 > output.1)
        {
            return bad("traffic.lengths.uniform: need 1 <= min <= max".into());
        }
        let kinds: Vec<&str> = self.gpu_kinds.iter().map(|k| k.name.as_str()).collect();
        if kinds.is_empty() {
            return bad("no gpu_kinds".into());
        }
        for m in &self.models {
            if m.engine.is_empty() {
                return bad(format!("model {}: no engine for any GPU kind", m.id));
            }
            for (kind, e) in &m.engine {
                if !kinds.contains(&kind.as_str()) {
                    return bad(format!("model {}: unknown GPU kind {kind:?}", m.id));
                }
                if e.max_running == 0
                    || e.max_batch_tokens < e.max_running
                    || e.kv_blocks == 0
                    || e.block_size == 0
                {
                    return bad(format!(
                        "model {} on {kind}: need max_running >= 1, max_batch_tokens >= \
                         max_running, kv_blocks >= 1, block_size >= 1",
                        m.id
                    ));
                }
                let c = e.model();
                if [
                    c.base_us,
                    c.prefill_token_us,
                    c.decode_token_us,
                    c.context_token_us,
                    c.prefill_attention_us,
                    c.tile_us,
                    c.multi_tile_us,
                ]
                .iter()
                .chain([&e.step_overhead_us, &e.step_overhead_sequence_us])
                .any(|v| !(v.is_finite() && *v >= 0.0))
                    || e.one_token_step_us() <= 0.0
                    || (c.tile_us + c.multi_tile_us > 0.0 && c.tile_tokens == 0)
                {
                    return bad(format!(
                        "model {} on {kind}: engine coefficients must be non-negative, \
                         a step must take time, and tile costs need tile_tokens",
                        m.id
                    ));
                }
            }
        }
        if self.traffic.trace.is_none() {
            let total: f64 = self.traffic.mix.values().sum();
            if self.traffic.mix.values().any(|v| *v < 0.0) || total <= 0.0 {
                return bad("traffic.mix: shares must be non-negative, not all 0".into());
            }
        }
        for model in self.traffic.mix.keys() {
            if !self.models.iter().any(|m| &m.id == model) {
                return bad(format!("traffic.mix names an unknown model {model:?}"));
            }
        }
        for r in &self.traffic.residency {
            if !(0.0..=1.0).contains(&r.fraction) || r.allowed.is_empty() {
                return bad(format!(
                    "traffic.residency from {}: fraction in [0, 1] and a non-empty allowed list",
                    r.from
                ));
            }
        }
        for b in &self.traffic.bursts {
            if b.region.is_some() == b.jurisdiction.is_some() || b.multiplier < 0.0 {
                return bad(
                    "traffic.bursts: name exactly one of region or jurisdiction, and a \
                     non-negative multiplier"
                        .into(),
                );
            }
        }
        for pools in std::iter::once(&self.fleet.default)
            .chain(self.fleet.jurisdictions.values())
            .chain(self.fleet.pops.values())
        {
            for kind in pools.keys() {
                if !kinds.contains(&kind.as_str()) {
                    return bad(format!("fleet: unknown GPU kind {kind:?}"));
                }
            }
        }
        if !(self.placement.target_utilisation > 0.0 && self.placement.target_utilisation <= 1.0) {
            return bad("placement.target_utilisation must be in (0, 1]".into());
        }
        if self.report.bucket_min <= 0.0 {
            return bad("report.bucket_min must be positive".into());
        }
        for f in &self.faults {
            if f.at_h() < 0.0 || f.duration_min().is_some_and(|d| d <= 0.0) {
                return bad("faults: at_h >= 0 and a positive duration_min".into());
            }
        }
        Ok(())
    }
}

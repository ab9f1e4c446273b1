//! The instance and plan files of `shared/PLACEMENT-FORMAT.md`, as serde types.
//!
//! These types mirror the JSON field for field; nothing here checks meaning (that is
//! [`super::Problem::compile`]). Fields the format does not know are kept in `extra`
//! rather than refused, so a file written by a newer tool with new optional fields still
//! loads; [`Instance::unknown_fields`] lists them so a CLI can warn about typos.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Fields a reader did not recognise, kept verbatim.
pub type Extra = BTreeMap<String, serde_json::Value>;

/// A placement problem: the fleet, the models, the demand and the rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// Format version; only 1 exists.
    pub version: u32,
    pub gpu_kinds: Vec<GpuKind>,
    pub sites: Vec<SiteSpec>,
    pub models: Vec<ModelSpec>,
    #[serde(default)]
    pub demand: Vec<Demand>,
    /// Round-trip limit, milliseconds, for demand entries without their own.
    pub slo_rtt_ms: f64,
    /// Measured round trips, region to site; pairs not listed use the formula.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rtt_ms: Vec<RttSample>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pins: Vec<Pin>,
    /// Today's placement; absent means empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub current: Vec<PlacementRow>,
    #[serde(default)]
    pub weights: Weights,
    /// Extension: at most this many replica changes (sum over (model, site, kind) of
    /// |replicas - current|) beyond those that floors, pins and a shrunken fleet force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_moves: Option<u64>,
    #[serde(flatten, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: Extra,
}

/// One kind of GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuKind {
    pub name: String,
    /// Memory of one GPU, GiB.
    pub mem_gib: f64,
    /// Weight of one GPU of this kind in the objective.
    #[serde(default = "one")]
    pub cost: f64,
    #[serde(flatten, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: Extra,
}

/// A site (PoP) and its GPU pools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteSpec {
    pub id: String,
    pub jurisdiction: String,
    /// Degrees north.
    pub lat: f64,
    /// Degrees east.
    pub lon: f64,
    /// GPUs of each kind at the site.
    #[serde(default)]
    pub gpus: BTreeMap<String, u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(flatten, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: Extra,
}

/// A model that can be placed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub id: String,
    /// Memory of the whole replica, GiB, split evenly over its GPUs.
    pub mem_gib: f64,
    pub gpus_per_replica: u32,
    /// Requests per second one replica serves on each kind it may run on.
    pub rps_per_replica: BTreeMap<String, f64>,
    /// Where the model may be placed; absent: anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jurisdictions: Option<Vec<String>>,
    /// Fleet-wide floor on the number of replicas.
    #[serde(default)]
    pub min_replicas: u32,
    /// Extension: label rules every hosting site must satisfy (all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<LabelConstraint>,
    /// Extension: spread across failure domains. The model's replicas sit at at least
    /// this many distinct sites (each site is one failure domain); 0 or 1: no rule.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_sites: u32,
    #[serde(flatten, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: Extra,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// A rule on a site's labels, in the style of TiKV's Placement Driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelConstraint {
    pub key: String,
    pub op: LabelOp,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LabelOp {
    /// The site has the label and its value is listed.
    In,
    /// The site lacks the label or its value is not listed.
    NotIn,
}

impl LabelConstraint {
    pub fn admits(&self, labels: &BTreeMap<String, String>) -> bool {
        let listed = labels
            .get(&self.key)
            .is_some_and(|v| self.values.iter().any(|x| x == v));
        match self.op {
            LabelOp::In => listed,
            LabelOp::NotIn => !listed,
        }
    }
}

/// Requests for one model from the users of one region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Demand {
    /// A site id: the users sit at that site's coordinates.
    pub region: String,
    pub model: String,
    pub rps: f64,
    /// Where this traffic may be served; absent: anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jurisdictions: Option<Vec<String>>,
    /// Round-trip limit for this entry, overriding the instance's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_rtt_ms: Option<f64>,
    #[serde(flatten, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: Extra,
}

/// A measured round trip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RttSample {
    pub from: String,
    pub to: String,
    pub ms: f64,
}

/// At least `min_replicas` replicas of `model` at `site`, of any kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pin {
    pub model: String,
    pub site: String,
    pub min_replicas: u32,
}

/// Replicas of a model at a site on one GPU kind (plans and `current`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PlacementRow {
    pub model: String,
    pub site: String,
    pub gpu: String,
    pub replicas: u32,
}

/// Weights of the objective's three terms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Weights {
    #[serde(default = "default_unserved")]
    pub unserved_rps: f64,
    #[serde(default = "one")]
    pub gpu: f64,
    #[serde(rename = "move", default = "default_move")]
    pub moves: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            unserved_rps: default_unserved(),
            gpu: one(),
            moves: default_move(),
        }
    }
}

fn one() -> f64 {
    1.0
}
fn default_unserved() -> f64 {
    1000.0
}
fn default_move() -> f64 {
    0.1
}

/// A solver's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub placement: Vec<PlacementRow>,
    pub routing: Vec<RouteRow>,
    pub objective: Objective,
    pub solver: SolverInfo,
}

/// Traffic of one demand entry sent to one site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteRow {
    pub region: String,
    pub model: String,
    pub site: String,
    pub rps: f64,
    /// Extension: the index of the demand entry in `demand`, written only when the
    /// instance has several entries for this (region, model), where the pair alone
    /// does not say which entry the traffic belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<usize>,
}

/// The objective's terms, unweighted, and their weighted sum.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    /// Demand not routed anywhere, requests per second.
    pub unserved_rps: f64,
    /// Sum of replicas * gpus_per_replica * kind cost.
    pub gpu_cost: f64,
    /// Sum over (model, site, kind) of |replicas - current replicas|.
    pub moves: u64,
    pub total: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SolverInfo {
    pub name: String,
    pub seconds: f64,
    pub seed: u64,
}

impl Instance {
    /// Parses an instance file.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Paths of the fields this version does not know (`models[3].min_replica`), so a
    /// tool can warn about what is likely a typo.
    pub fn unknown_fields(&self) -> Vec<String> {
        let mut out: Vec<String> = self.extra.keys().cloned().collect();
        let mut list = |what: &str, i: usize, extra: &Extra| {
            out.extend(extra.keys().map(|k| format!("{what}[{i}].{k}")));
        };
        for (i, k) in self.gpu_kinds.iter().enumerate() {
            list("gpu_kinds", i, &k.extra);
        }
        for (i, s) in self.sites.iter().enumerate() {
            list("sites", i, &s.extra);
        }
        for (i, m) in self.models.iter().enumerate() {
            list("models", i, &m.extra);
        }
        for (i, d) in self.demand.iter().enumerate() {
            list("demand", i, &d.extra);
        }
        out
    }
}

impl Plan {
    /// Parses a plan file.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The plan as pretty-printed JSON (the file `meridian placement solve` writes).
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail: every map has string keys.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

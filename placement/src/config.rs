//! The control-plane role's configuration (`control.toml`, or `[control]` in `up.toml`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::PlacementError;

/// Where fleet state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In process; state is lost with the process. The default on one machine.
    Memory,
    /// A real etcd cluster (v3 API), the production store.
    Etcd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// etcd client endpoints (`http://host:port`), used when `kind = "etcd"`.
    pub endpoints: Vec<String>,
    /// Key prefix under which Meridian keeps its state.
    pub prefix: String,
    /// Lease of a PoP registration, milliseconds: a PoP that stops reporting for this
    /// long disappears from the fleet.
    pub lease_ttl_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Memory,
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/meridian".into(),
            lease_ttl_ms: 5_000,
        }
    }
}

/// A GPU kind the placement solver may place on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuKindConfig {
    /// As PoP agents report it in `WorkerEndpoint.gpu_kind`; "cpu" stands for CPU
    /// workers.
    pub name: String,
    /// Memory of one device (GiB).
    pub mem_gib: f64,
    /// Weight of one device of this kind in the objective.
    #[serde(default = "one")]
    pub cost: f64,
}

fn one() -> f64 {
    1.0
}

/// A model the placement solver manages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model id, as workers report it.
    pub id: String,
    /// Memory of one replica (GiB).
    pub mem_gib: f64,
    #[serde(default = "one_u32")]
    pub gpus_per_replica: u32,
    /// Requests per second one replica serves within the latency target, per kind.
    pub rps_per_replica: std::collections::BTreeMap<String, f64>,
    /// Fleet-wide floor of replicas.
    #[serde(default)]
    pub min_replicas: u32,
    /// Spread: replicas at at least this many distinct sites (failure domains).
    #[serde(default)]
    pub min_sites: u32,
}

fn one_u32() -> u32 {
    1
}

/// The leader's placement loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlacementConfig {
    /// How often the leader re-plans and applies a valid plan that changes something,
    /// milliseconds; 0: only when an operator plans and applies (`meridianctl
    /// placement plan` / `apply`).
    pub interval_ms: u64,
    /// Demand is served only from sites within this round trip of its region (ms).
    pub slo_rtt_ms: f64,
    /// Objective weights, as in the placement file format.
    pub weight_unserved_rps: f64,
    pub weight_gpu: f64,
    pub weight_move: f64,
    /// Device kinds; CPU workers are kind "cpu".
    pub gpu_kinds: Vec<GpuKindConfig>,
    /// Managed models. A resident model that is not listed is left where it is.
    pub models: Vec<ModelConfig>,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            interval_ms: 0,
            slo_rtt_ms: 100.0,
            weight_unserved_rps: 1000.0,
            weight_gpu: 1.0,
            weight_move: 0.1,
            gpu_kinds: vec![
                GpuKindConfig {
                    name: "cpu".into(),
                    mem_gib: 16.0,
                    cost: 0.1,
                },
                GpuKindConfig {
                    name: "H100".into(),
                    mem_gib: 80.0,
                    cost: 1.0,
                },
                GpuKindConfig {
                    name: "L4".into(),
                    mem_gib: 24.0,
                    cost: 0.25,
                },
            ],
            models: vec![ModelConfig {
                id: "SmolLM2-135M-Instruct".into(),
                mem_gib: 0.5,
                gpus_per_replica: 1,
                rps_per_replica: [
                    ("cpu".to_string(), 2.0),
                    ("H100".to_string(), 200.0),
                    ("L4".to_string(), 60.0),
                ]
                .into_iter()
                .collect(),
                min_replicas: 1,
                min_sites: 0,
            }],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// gRPC listen address of the `ControlPlane` service.
    pub listen: SocketAddr,
    /// This replica's name in the leader election and logs; empty: `control@<listen>`.
    pub replica_id: String,
    /// Prometheus `/metrics` listen address; none: no exporter of its own.
    pub metrics_listen: Option<SocketAddr>,
    /// How often PoP agents send load reports, milliseconds.
    pub report_interval_ms: u64,
    pub store: StoreConfig,
    pub placement: PlacementConfig,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            replica_id: String::new(),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9091))),
            report_interval_ms: 250,
            store: StoreConfig::default(),
            placement: PlacementConfig::default(),
        }
    }
}

impl ControlConfig {
    pub fn validate(&self) -> Result<(), PlacementError> {
        if self.report_interval_ms == 0 {
            return Err(PlacementError::Config(
                "report_interval_ms must be positive".into(),
            ));
        }
        if self.store.lease_ttl_ms < 2 * self.report_interval_ms {
            return Err(PlacementError::Config(format!(
                "store.lease_ttl_ms ({}) must be at least twice report_interval_ms ({}), or \
                 one late report would expire a live PoP",
                self.store.lease_ttl_ms, self.report_interval_ms
            )));
        }
        if self.store.kind == StoreKind::Etcd && self.store.endpoints.is_empty() {
            return Err(PlacementError::Config(
                "store.kind = \"etcd\" needs endpoints".into(),
            ));
        }
        let p = &self.placement;
        if p.slo_rtt_ms.is_nan() || p.slo_rtt_ms <= 0.0 {
            return Err(PlacementError::Config(
                "placement.slo_rtt_ms must be positive".into(),
            ));
        }
        for m in &p.models {
            if let Some(kind) = m
                .rps_per_replica
                .keys()
                .find(|k| !p.gpu_kinds.iter().any(|g| &g.name == *k))
            {
                return Err(PlacementError::Config(format!(
                    "placement.models {:?}: rps_per_replica names kind {kind:?}, which is not in placement.gpu_kinds",
                    m.id
                )));
            }
        }
        if !self.store.prefix.starts_with('/') {
            return Err(PlacementError::Config(
                "store.prefix must start with '/'".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_short_leases_do_not() {
        ControlConfig::default().validate().unwrap();
        let mut c = ControlConfig::default();
        c.store.lease_ttl_ms = 300;
        assert!(c.validate().unwrap_err().to_string().contains("twice"));
        c = ControlConfig::default();
        c.store.kind = StoreKind::Etcd;
        c.store.endpoints.clear();
        assert!(c.validate().is_err());
    }
}

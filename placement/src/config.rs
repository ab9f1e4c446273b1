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
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            replica_id: String::new(),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9091))),
            report_interval_ms: 250,
            store: StoreConfig::default(),
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

//! `meridian-placement`: the placement driver.
//!
//! The placement solver (pure: instance in, plan out), the `ControlPlane` gRPC service,
//! the `Store` that holds fleet state (etcd in production, memory on one machine) and the
//! reconcile loop that turns a plan into residency directives. The solver and checker
//! never touch tokio, tonic or etcd. Depends on `meridian-proto` only.
//!
//! `solver/` holds the placement solver: the instance and plan file format, validation,
//! the fast solver, and an independent checker of the plan rules.

pub mod cache;
pub mod config;
pub mod demand;
pub mod fleet;
pub mod leader;
pub mod planner;
pub mod planning;
pub mod policy;
pub mod reconcile;
pub mod service;
pub mod solver;
pub mod store;
/// Harness for tests and benchmarks: a real etcd in a child process.
pub mod testing;

pub use config::{ControlConfig, StoreConfig, StoreKind};

/// Errors of the control plane and the solver.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// The configuration is inconsistent.
    #[error("invalid control-plane configuration: {0}")]
    Config(String),
    /// A placement instance was refused or has no feasible plan.
    #[error(transparent)]
    Instance(#[from] solver::InstanceError),
}

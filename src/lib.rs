//! The `meridian` and `meridianctl` binaries' shared wiring: configuration loading,
//! telemetry, gRPC server plumbing and asset fetching. The decision logic lives in the
//! library crates; this crate only wires them together.

pub mod assets;
pub mod config;
pub mod control;
pub mod grpc;
pub mod placement_cmd;
pub mod pop;
pub mod sim_cmd;
pub mod sim_data;
pub mod sim_replay;
pub mod telemetry;
pub mod tokenize;
pub mod up;

//! Meridian's wire contract and the few domain types every role shares.
//!
//! - [`worker::v1`] and [`control::v1`]: tonic/prost code generated at build time from the
//!   documented `.proto` files under `proto/proto/` (with `protox`, no system `protoc`).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, served by gRPC reflection.
//! - [`catalog`]: the PoP catalog (365 real edge sites) with great-circle RTT estimates.
//!
//! This crate depends on no other Meridian crate; every other crate depends on it.

pub mod catalog;
pub mod prefix;

/// `meridian.worker.v1`: the engine worker's service, called by routers.
pub mod worker {
    /// Version 1 of the worker contract.
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("meridian.worker.v1");
    }
}

/// `meridian.control.v1`: the control plane's service, called by PoP agents, routers and
/// `meridianctl`.
pub mod control {
    /// Version 1 of the control-plane contract.
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("meridian.control.v1");
    }
}

/// Encoded `FileDescriptorSet` of both packages, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/meridian_descriptor.bin"));

/// Largest gRPC message (decoded) any Meridian server or client accepts, in bytes.
/// Larger messages are refused with `RESOURCE_EXHAUSTED` before they are stored.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The catalog CSV could not be parsed.
    #[error("catalog line {line}: {message}")]
    Catalog { line: u64, message: String },
}

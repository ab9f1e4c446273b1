//! `meridian-sim`: a discrete-event simulator of the whole fleet in virtual time.
//!
//! It drives the production scoring (`meridian-router`) and placement
//! (`meridian-placement`) code and an engine performance model fitted from the real
//! engine's step timings; it never copies their logic.

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A part of the simulator that a later change builds.
    #[error("not implemented yet: {0}")]
    NotImplemented(&'static str),
}

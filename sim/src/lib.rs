//! `meridian-sim`: a discrete-event simulator of the whole fleet in virtual time.
//!
//! It drives the production scoring (`meridian-router`) and placement
//! (`meridian-placement`) code and an engine performance model fitted from the real
//! engine's step timings; it never copies their logic.
//!
//! Built so far: [`engine_model`], the step-time model and its fit on an engine's step
//! profile. The event loop, geography, traffic and reports are the next steps; the
//! `meridian sim` command says so.

pub mod engine_model;

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A part of the simulator that a later change builds.
    #[error("not implemented yet: {0}")]
    NotImplemented(&'static str),
    /// A step profile that cannot be fitted; the message names the line or the reason.
    #[error("engine model: {0}")]
    Fit(String),
}

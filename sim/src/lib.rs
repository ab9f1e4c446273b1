//! `meridian-sim`: a discrete-event simulator of the whole fleet in virtual time, for
//! capacity planning.
//!
//! It drives the production scoring (`meridian-router`) and placement
//! (`meridian-placement`) code and an engine performance model fitted from the real
//! engine's step timings; it never copies their logic.
//!
//! - [`scenario`]: the TOML scenario files (`deploy/scenarios/`).
//! - [`engine_model`]: the step-time model and its fit on an engine's step profile.
//! - [`worker`]: one replica's continuous batching in virtual time.
//! - [`traffic`]: arrivals by region and time of day, request lengths, traces.
//! - [`fleet`]: GPU pools, replica capacity, the placement instance.
//! - [`world`]: the event loop that runs them together.
//! - [`stats`], [`report`], [`plot`]: what a run found, as JSON, CSV and SVG.
//! - [`capacity`]: the search for the fewest GPUs that meet an SLO.

pub mod capacity;
pub mod engine_model;
pub mod fleet;
pub mod plot;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod traffic;
pub mod worker;
pub mod world;

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A step profile that cannot be fitted; the message names the line or the reason.
    #[error("engine model: {0}")]
    Fit(String),
    /// A scenario file that does not parse or contradicts itself.
    #[error("scenario: {0}")]
    Scenario(String),
    /// A request-length table that cannot be used.
    #[error("lengths: {0}")]
    Lengths(String),
    /// A trace file that does not parse.
    #[error("trace: {0}")]
    Trace(String),
    /// The first placement failed (the fleet cannot hold the models).
    #[error("placement: {0}")]
    Placement(String),
    /// A request or replica outside its allowed jurisdictions.
    #[error("invariant broken: {0}")]
    Invariant(String),
    /// A plot that could not be drawn.
    #[error("plot: {0}")]
    Plot(String),
}

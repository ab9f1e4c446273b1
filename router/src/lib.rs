//! `meridian-router`: the OpenAI-compatible front door.
//!
//! The fleet view (from `WatchFleet`), scoring (sans-IO), dispatch with retries, auth and
//! admission. Scoring is plain code over flat arrays so the simulator and the benches
//! call exactly what production runs. Depends on `meridian-proto` only.

pub mod admission;
pub mod config;
pub mod demand;
pub mod dispatch;
pub mod fleet;
pub mod metrics;
pub mod openai;
pub mod prefix;
pub mod score;
pub mod server;
pub mod source;
pub mod state;
pub mod tokens;

pub use config::RouterConfig;

/// Errors of the router.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The configuration is inconsistent.
    #[error("invalid router configuration: {0}")]
    Config(String),
}

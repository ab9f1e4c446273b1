//! The placement solver, sans-IO: an [`Instance`] (the file format of
//! `shared/PLACEMENT-FORMAT.md`) in, a [`Plan`] out.
//!
//! - [`instance`]: the file format's serde types.
//! - [`problem`]: validation and the compiled, index-based [`Problem`].
//! - [`solve`]: the fast solver (greedy by marginal gain, then local search).
//! - [`exact`]: the exact reference, a MILP solved by HiGHS, and the LP bound.
//! - [`check`]: the independent checker of the format's rules and the objective, and
//!   the best routing for a fixed placement.
//! - [`generate`]: instances for tests and benchmarks.
//!
//! Nothing here does I/O or reads a clock: `plan.solver.seconds` is for the caller to
//! fill in.

pub mod check;
pub mod exact;
pub mod flow;
pub mod generate;
mod greedy;
pub mod instance;
mod lns;
mod local;
pub mod problem;
mod ruin;
mod spread;
mod state;
#[cfg(test)]
mod tests;

pub use check::{CheckReport, Rule, Violation, best_routing, check};
pub use greedy::{NAME, SolveOptions, solve_problem};
pub use instance::{Instance, Objective, PlacementRow, Plan, RouteRow};
pub use problem::{InstanceError, Problem};

/// Validates `instance` and solves it with the fast solver.
pub fn solve(instance: &Instance, options: &SolveOptions) -> Result<Plan, InstanceError> {
    let problem = Problem::compile(instance)?;
    let plan = solve_problem(&problem, options)?;
    spread::enforce(&problem, instance, plan)
}

/// Re-plans from an earlier plan: `previous`'s placement becomes `current`, so the
/// answer moves only what pays for its moves.
pub fn replan(
    instance: &Instance,
    previous: &Plan,
    options: &SolveOptions,
) -> Result<Plan, InstanceError> {
    let mut next = instance.clone();
    next.current = previous.placement.clone();
    solve(&next, options)
}

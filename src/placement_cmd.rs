//! `meridian placement solve|check`: the placement solver and checker on files, offline.
//!
//! Exit status: 0 done; 1 `check` found a broken rule; 2 the instance (or plan file) is
//! unreadable, invalid or infeasible, or the asked-for solver does not exist yet. An
//! instance that is refused never produces a plan, not even a partial one.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use meridian_placement::solver::{self, Instance, Objective, Plan, SolveOptions};

/// Why a command stops with status 2, as a message naming the culprit.
fn refuse(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("meridian placement: {message}");
    ExitCode::from(2)
}

fn load_instance(path: &Path) -> Result<Instance, ExitCode> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| refuse(format_args!("cannot read instance {}: {e}", path.display())))?;
    let instance = Instance::from_json(&text)
        .map_err(|e| refuse(format_args!("instance {}: {e}", path.display())))?;
    for field in instance.unknown_fields() {
        eprintln!(
            "meridian placement: warning: instance {}: unknown field {field} ignored",
            path.display()
        );
    }
    Ok(instance)
}

fn describe(o: &Objective) -> String {
    format!(
        "total {:.3} = unserved {:.3} rps, GPU cost {:.3}, moves {}",
        o.total, o.unserved_rps, o.gpu_cost, o.moves
    )
}

/// `meridian placement solve`.
pub fn solve(
    instance: &Path,
    out: Option<&Path>,
    seed: u64,
    exact: bool,
) -> anyhow::Result<ExitCode> {
    let inst = match load_instance(instance) {
        Ok(i) => i,
        Err(code) => return Ok(code),
    };
    let started = Instant::now();
    let solved = if exact {
        // The MILP with HiGHS: small instances to a proven gap of 0.05%.
        match solver::exact::solve_exact(&inst, &solver::exact::ExactOptions::default()) {
            Ok(e) => {
                if !e.proven {
                    eprintln!(
                        "warning: the time limit stopped HiGHS before it proved the plan optimal"
                    );
                }
                Ok(e.plan)
            }
            Err(solver::exact::ExactError::Instance(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    } else {
        let options = SolveOptions {
            seed,
            ..SolveOptions::default()
        };
        solver::solve(&inst, &options).map_err(|e| e.to_string())
    };
    let mut plan = match solved {
        Ok(plan) => plan,
        Err(e) => return Ok(refuse(format_args!("instance {}: {e}", instance.display()))),
    };
    plan.solver.seconds = started.elapsed().as_secs_f64();
    let json = plan.to_json();
    let replicas: u64 = plan.placement.iter().map(|r| u64::from(r.replicas)).sum();
    let demand: f64 = inst.demand.iter().map(|d| d.rps).sum();
    let summary = format!(
        "{} replicas in {} placement rows; {:.3} of {demand:.3} rps unserved; objective {}; solved in {:.3} s ({}, seed {seed})",
        replicas,
        plan.placement.len(),
        plan.objective.unserved_rps,
        describe(&plan.objective),
        plan.solver.seconds,
        plan.solver.name,
    );
    match out {
        Some(path) => {
            std::fs::write(path, json + "\n")
                .with_context(|| format!("cannot write the plan to {}", path.display()))?;
            println!("{summary}");
            println!("plan written to {}", path.display());
        }
        None => {
            println!("{json}");
            eprintln!("{summary}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `meridian placement check`.
pub fn check(instance: &Path, plan: &Path) -> anyhow::Result<ExitCode> {
    let inst = match load_instance(instance) {
        Ok(i) => i,
        Err(code) => return Ok(code),
    };
    let text = match std::fs::read_to_string(plan) {
        Ok(t) => t,
        Err(e) => {
            return Ok(refuse(format_args!(
                "cannot read plan {}: {e}",
                plan.display()
            )));
        }
    };
    let parsed = match Plan::from_json(&text) {
        Ok(p) => p,
        Err(e) => return Ok(refuse(format_args!("plan {}: {e}", plan.display()))),
    };
    let report = match solver::check(&inst, &parsed) {
        Ok(r) => r,
        Err(e) => return Ok(refuse(format_args!("instance {}: {e}", instance.display()))),
    };
    println!(
        "objective (the plan's routing): {}",
        describe(&report.objective)
    );
    println!("objective (best routing):       {}", describe(&report.best));
    let stated = parsed.objective.total;
    if (stated - report.objective.total).abs() > 1e-6 * stated.abs().max(1.0) {
        println!(
            "note: the plan states a total of {stated:.3}, the checker computes {:.3}",
            report.objective.total
        );
    }
    if report.is_valid() {
        println!("valid: the plan keeps every rule");
        return Ok(ExitCode::SUCCESS);
    }
    for v in &report.violations {
        println!("broken: {v}");
    }
    println!("invalid: {} rules broken", report.violations.len());
    Ok(ExitCode::from(1))
}

//! The fast placement solver on the scale instance: every catalog site (365) with GPU
//! pools of 3 kinds, 200 models, demand from every region
//! (`solver::generate::catalog_instance`). Prints the plan's objective terms once, then
//! times the solve (compile + solve; the instance is parsed already).
//!
//! `cargo bench -p meridian-placement --bench solver`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use meridian_placement::solver::{self, Problem, SolveOptions, generate};
use meridian_proto::catalog::Catalog;

fn main() {
    let instance = generate::catalog_instance(Catalog::builtin(), 200, 1);
    let options = SolveOptions::default();
    let started = Instant::now();
    let plan = match solver::solve(&instance, &options) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("the scale instance was refused: {e}");
            std::process::exit(1);
        }
    };
    let elapsed = started.elapsed();
    let demand: f64 = instance.demand.iter().map(|d| d.rps).sum();
    let replicas: u64 = plan.placement.iter().map(|r| u64::from(r.replicas)).sum();
    let o = plan.objective;
    println!(
        "scale instance: {} sites, {} models, {} kinds, {} demand entries, {demand:.1} rps",
        instance.sites.len(),
        instance.models.len(),
        instance.gpu_kinds.len(),
        instance.demand.len()
    );
    println!(
        "plan: {replicas} replicas; unserved {:.2} rps; GPU cost {:.2}; moves {}; total {:.2}; one solve {:.3} s",
        o.unserved_rps,
        o.gpu_cost,
        o.moves,
        o.total,
        elapsed.as_secs_f64()
    );
    match solver::replan(&instance, &plan, &options) {
        Ok(again) => println!(
            "re-plan from its own plan: {} moves, total {:.2}",
            again.objective.moves, again.objective.total
        ),
        Err(e) => println!("re-plan refused: {e}"),
    }
    if let Some(dir) = std::env::var_os("PLACEMENT_BENCH_DUMP") {
        // The instance and plan as files, for `meridian placement check` and for
        // comparing with an exact solver.
        let dir = std::path::PathBuf::from(dir);
        let instance_json = serde_json::to_string(&instance).unwrap_or_default();
        for (name, text) in [
            ("instance.json", instance_json),
            ("plan.json", plan.to_json()),
        ] {
            if let Err(e) = std::fs::write(dir.join(name), text) {
                eprintln!("cannot write {name} in {}: {e}", dir.display());
            }
        }
    }

    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    c.bench_function("compile 365x200x3", |b| {
        b.iter(|| Problem::compile(black_box(&instance)))
    });
    c.bench_function("solve 365x200x3", |b| {
        b.iter(|| solver::solve(black_box(&instance), &options))
    });
    c.final_summary();
}

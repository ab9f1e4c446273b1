//! The fast solver against the exact reference (HiGHS), in one run:
//!
//! - quality: 100 seeded small instances (`generate::random_small`: up to 12 sites,
//!   6 models, 3 GPU kinds), each solved by the fast solver and by the MILP to a proven
//!   relative gap of 0.05%; prints the mean and worst gap of the fast solver (move caps
//!   removed: the fast solver exempts forced moves from a cap, the MILP does not);
//! - scale: the 365-site, 200-model, 3-kind catalog instance: the fast solver's time and
//!   objective against the LP relaxation's bound (tightened by rounds of
//!   facility-location cuts; the plain relaxation's too);
//! - incremental: the scale plan re-planned after losing the site with the most
//!   replicas: time, and moves against the replicas that site held.
//!
//! `cargo bench -p meridian-placement --bench exact [-- --instances 100] [--no-scale]
//! [--lp-rounds 10]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use meridian_placement::solver::exact::{ExactOptions, lp_bound_with, solve_exact};
use meridian_placement::solver::{self, SolveOptions, check, generate};
use meridian_proto::catalog::Catalog;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn gap(fast: f64, best: f64) -> f64 {
    if best.abs() < 1e-9 {
        fast - best
    } else {
        (fast - best) / best.abs()
    }
}

fn main() {
    let instances: u64 = arg("--instances")
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let scale = !std::env::args().any(|a| a == "--no-scale");
    // Each round of cuts raises the bound and takes longer than the one before (10 s
    // for the first at scale, about a minute by the 14th).
    let lp_rounds: usize = arg("--lp-rounds")
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    let options = SolveOptions::default();

    let (mut sum, mut worst, mut worst_seed) = (0.0f64, f64::NEG_INFINITY, 0);
    let (mut proven, mut fast_s, mut exact_s, mut better) = (0, 0.0, 0.0, 0);
    let (mut solved, mut refused) = (0u64, 0u64);
    let mut over: Vec<(u64, f64)> = Vec::new();
    for seed in 0..instances {
        // Without a move cap: the fast solver exempts forced moves from it, the MILP
        // counts every move, so capped optima are not comparable.
        let mut instance = generate::random_small(seed);
        instance.max_moves = None;
        let t = Instant::now();
        let fast = match solver::solve(&instance, &options) {
            Ok(p) => p,
            Err(e) => {
                println!("seed {seed}: refused ({e})");
                refused += 1;
                continue;
            }
        };
        fast_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let exact = solve_exact(&instance, &ExactOptions::default()).unwrap();
        exact_s += t.elapsed().as_secs_f64();
        assert!(
            check(&instance, &exact.plan).unwrap().is_valid(),
            "seed {seed}"
        );
        proven += usize::from(exact.proven);
        let g = gap(fast.objective.total, exact.plan.objective.total);
        if g < -1e-9 {
            better += 1;
        }
        solved += 1;
        sum += g;
        if g > 0.01 {
            over.push((seed, g));
        }
        if g > worst {
            worst = g;
            worst_seed = seed;
        }
    }
    let n = solved.max(1) as f64;
    println!(
        "quality: {solved} instances solved ({refused} refused as infeasible by both), MILP proven within 0.05% on {proven}; fast solver gap mean {:.3}%, worst {:.3}% (seed {worst_seed}); over 1%: {}, over 3%: {}; fast below the MILP on {better} (within its gap); time fast {:.2} ms/instance, MILP {:.1} ms/instance",
        100.0 * sum / n,
        100.0 * worst,
        over.len(),
        over.iter().filter(|o| o.1 > 0.03).count(),
        1000.0 * fast_s / n,
        1000.0 * exact_s / n
    );
    for (seed, g) in &over {
        println!("  seed {seed}: {:.2}%", 100.0 * g);
    }

    if !scale {
        return;
    }
    let instance = generate::catalog_instance(Catalog::builtin(), 200, 1);
    let t = Instant::now();
    let plan = solver::solve(&instance, &options).unwrap();
    let fast_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let bound = lp_bound_with(&instance, 1200.0, lp_rounds, |b| {
        println!(
            "  LP round {}: {:.2} ({} cuts so far, {:.0} s)",
            b.rounds,
            b.bound,
            b.cuts,
            t.elapsed().as_secs_f64()
        );
    });
    let lp_s = t.elapsed().as_secs_f64();
    match bound {
        Ok(b) => println!(
            "scale: {} sites, {} models, {} demand entries: fast {:.3} s, objective {:.2}; LP bound {:.2} \
             ({} rounds, {} facility-location cuts{}, {:.1} s): gap {:.2}%; the plain relaxation {:.2}: gap {:.2}%",
            instance.sites.len(),
            instance.models.len(),
            instance.demand.len(),
            fast_s,
            plan.objective.total,
            b.bound,
            b.rounds,
            b.cuts,
            if b.converged {
                ""
            } else {
                ", stopped before none was violated"
            },
            lp_s,
            100.0 * gap(plan.objective.total, b.bound),
            b.plain,
            100.0 * gap(plan.objective.total, b.plain),
        ),
        Err(e) => println!(
            "scale: fast {fast_s:.3} s, objective {:.2}; no LP bound: {e}",
            plan.objective.total
        ),
    }

    // Lose the site holding the most replicas, then re-plan from the plan in force.
    let mut held: std::collections::BTreeMap<&str, u32> = Default::default();
    for r in &plan.placement {
        *held.entry(r.site.as_str()).or_default() += r.replicas;
    }
    let (lost, lost_replicas) = held
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(s, n)| (s.to_string(), *n))
        .unwrap();
    let mut after = instance.clone();
    for s in &mut after.sites {
        if s.id == lost {
            s.gpus.clear();
        }
    }
    after.current = plan
        .placement
        .iter()
        .filter(|r| r.site != lost)
        .cloned()
        .collect();
    let t = Instant::now();
    let replanned = solver::solve(&after, &options).unwrap();
    let replan_s = t.elapsed().as_secs_f64();
    assert!(check(&after, &replanned).unwrap().is_valid());
    println!(
        "incremental: lost {lost} ({lost_replicas} replicas); re-plan {:.1} ms, {} moves (replicas added or removed elsewhere), unserved {:.2} rps",
        1000.0 * replan_s,
        replanned.objective.moves,
        replanned.objective.unserved_rps
    );
}

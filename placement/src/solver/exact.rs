//! The exact reference: the same problem as a mixed-integer linear program, solved by
//! HiGHS (through `good_lp`), to measure the fast solver's gap. Small instances are
//! solved to a proven relative gap; at fleet scale the LP relaxation gives a lower
//! bound on any plan's objective.
//!
//! Variables, only where the rules allow them (`Problem::can_hold`, `Entry::eligible`):
//! - `x[m,s,k]` integer: replicas of model `m` at site `s` on kind `k`;
//! - `f[d,s]` continuous: requests/second of demand entry `d` served at site `s`;
//! - `t[m,s,k]` continuous: `|x - current|`, the moves;
//! - `u[d]` continuous: requests/second of entry `d` left unserved.
//!
//! Rows: GPUs per (site, kind); capacity per (model, site): the traffic routed there is
//! at most `sum_k x * rps`; each entry's routed plus unserved rate is its rate; floors
//! and pins; the
//! move cap (every move counts against it, forced ones included, unlike the fast
//! solver, which exempts moves that floors, pins or a shrunken site force). Objective, as
//! in the file format: `w_unserved * sum(u) + w_gpu * sum(x * gpus_per_replica * cost) +
//! w_move * sum(t)`.
//!
//! The LP bound adds, as cutting planes, the facility-location inequalities
//! `f[d,s] <= rps_d * sum_k x[m,s,k]`: no flow to a site without a replica, else at
//! most the entry's rate. Every integer plan keeps them (one replica or more admits the
//! whole rate), so the bound stays a bound; without them the relaxation serves a small
//! entry from a sliver of a replica, and tail models held in several regions cost it a
//! fraction of what any plan pays. The relaxation is solved, the violated inequalities
//! are added, and again, until none is violated: all of them at once are a row per
//! flow (hundreds of thousands at fleet scale), most never binding.
//!
//! The plan returned keeps the MILP's placement and takes the routing from
//! [`super::best_routing`], so its objective is computed exactly as every other plan's.

use std::collections::{HashMap, HashSet};

use good_lp::solvers::highs::highs;
use good_lp::{
    Expression, ResolutionError, Solution, SolutionStatus, SolverModel, Variable, WithTimeLimit,
    constraint, variable, variables,
};

use super::check::{best_routing, objective};
use super::instance::{Instance, PlacementRow, Plan, SolverInfo};
use super::problem::{InstanceError, Problem};

/// The solver name written in `plan.solver.name`.
pub const NAME: &str = "milp-highs";

/// How hard to try.
#[derive(Debug, Clone, Copy)]
pub struct ExactOptions {
    /// Stop once the incumbent is proven within this relative gap of the optimum.
    pub mip_rel_gap: f32,
    /// Wall-clock limit (seconds); past it the best plan found is returned, unproven.
    pub time_limit_s: f64,
}

impl Default for ExactOptions {
    fn default() -> Self {
        Self {
            mip_rel_gap: 0.0005,
            time_limit_s: 60.0,
        }
    }
}

/// Why the exact solver has no answer.
#[derive(Debug, thiserror::Error)]
pub enum ExactError {
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error("HiGHS could not solve the program: {0}")]
    Solver(String),
}

impl From<ResolutionError> for ExactError {
    fn from(e: ResolutionError) -> Self {
        ExactError::Solver(e.to_string())
    }
}

/// An exact solve's plan and whether its optimality was proven within the gap.
#[derive(Debug, Clone)]
pub struct ExactPlan {
    pub plan: Plan,
    /// The solver proved the plan within `mip_rel_gap` of the optimum (not stopped by
    /// the time limit).
    pub proven: bool,
    /// The program's own objective value at its solution.
    pub milp_objective: f64,
}

struct Program {
    vars: good_lp::ProblemVariables,
    /// (cell, variable) for every allowed (model, site, kind).
    x: Vec<(usize, Variable)>,
    /// (entry, site, variable) for every flow.
    flows: Vec<(usize, usize, Variable)>,
    objective: Expression,
    rows: Vec<good_lp::Constraint>,
}

/// The program; `cuts`: the (entry, site) pairs whose flow gets a facility-location
/// inequality (see the module docs).
fn build(p: &Problem, integer: bool, cuts: &HashSet<(usize, usize)>) -> Program {
    let mut vars = variables!();
    let (nk, ns) = (p.kinds.len(), p.sites.len());
    let mut x: Vec<(usize, Variable)> = Vec::new();
    let mut x_at: HashMap<usize, Variable> = HashMap::new();
    let mut objective = Expression::from(0.0);
    let mut rows = Vec::new();
    let mut moves = Expression::from(0.0);
    for (m, model) in p.models.iter().enumerate() {
        for s in 0..ns {
            for k in 0..nk {
                let cell = p.cell(m, s, k);
                let current = f64::from(p.current[cell]);
                if !p.can_hold(m, s, k) {
                    continue;
                }
                let most = f64::from(p.sites[s].gpus[k] / model.gpus_per_replica.max(1));
                let mut def = variable().min(0.0).max(most);
                if integer {
                    def = def.integer();
                }
                let v = vars.add(def);
                x.push((cell, v));
                x_at.insert(cell, v);
                objective +=
                    p.weights.gpu * f64::from(model.gpus_per_replica) * p.kinds[k].cost * v;
                if p.weights.moves > 0.0 || p.max_moves.is_some() {
                    let t = vars.add(variable().min(0.0));
                    rows.push(constraint!(t >= v - current));
                    rows.push(constraint!(t >= current - v));
                    moves += t;
                }
            }
        }
    }
    // Current replicas where the rules no longer allow one must go: each is a move.
    let forced: f64 = p
        .current
        .iter()
        .enumerate()
        .filter(|&(cell, _)| !x_at.contains_key(&cell))
        .map(|(_, &n)| f64::from(n))
        .sum();
    objective += p.weights.moves * moves.clone() + p.weights.moves * forced;
    if let Some(cap) = p.max_moves {
        rows.push(constraint!(moves.clone() <= (cap as f64 - forced).max(0.0)));
    }
    // GPUs per (site, kind).
    for s in 0..ns {
        for k in 0..nk {
            let mut used = Expression::from(0.0);
            let mut any = false;
            for (m, model) in p.models.iter().enumerate() {
                if let Some(&v) = x_at.get(&p.cell(m, s, k)) {
                    used += f64::from(model.gpus_per_replica) * v;
                    any = true;
                }
            }
            if any {
                rows.push(constraint!(used <= f64::from(p.sites[s].gpus[k])));
            }
        }
    }
    // Routing: flows per (entry, eligible site); capacity per (model, site).
    let mut served_at: HashMap<(usize, usize), Expression> = HashMap::new();
    let mut flows = Vec::new();
    for (d, entry) in p.entries.iter().enumerate() {
        let mut routed = Expression::from(0.0);
        for &(s, _) in &entry.eligible {
            let f = vars.add(variable().min(0.0).max(entry.rps));
            routed += f;
            flows.push((d, s, f));
            if cuts.contains(&(d, s)) {
                let replicas = replicas_at(p, &x_at, entry.model, s).unwrap_or_default();
                rows.push(constraint!(f <= entry.rps * replicas));
            }
            *served_at
                .entry((entry.model, s))
                .or_insert_with(|| Expression::from(0.0)) += f;
        }
        // The unserved rate is a variable, not `rps - routed`: a constant in the
        // objective would be invisible to HiGHS and make its relative gap meaningless.
        let unserved = vars.add(variable().min(0.0).max(entry.rps));
        objective += p.weights.unserved_rps * unserved;
        rows.push(constraint!(routed + unserved == entry.rps));
    }
    for ((m, s), served) in served_at {
        let mut room = Expression::from(0.0);
        for k in 0..nk {
            if let Some(&v) = x_at.get(&p.cell(m, s, k)) {
                room += p.models[m].rps[k] * v;
            }
        }
        rows.push(constraint!(served <= room));
    }
    // Floors and pins.
    for (m, model) in p.models.iter().enumerate() {
        if model.min_replicas > 0 {
            let mut all = Expression::from(0.0);
            for s in 0..ns {
                for k in 0..nk {
                    if let Some(&v) = x_at.get(&p.cell(m, s, k)) {
                        all += v;
                    }
                }
            }
            rows.push(constraint!(all >= f64::from(model.min_replicas)));
        }
    }
    // Spread: a binary per (model, site) that may be 1 only where the site holds a
    // replica; at least `min_sites` of them.
    for (m, model) in p.models.iter().enumerate() {
        if model.min_sites <= 1 {
            continue;
        }
        let mut sites = Expression::from(0.0);
        for s in 0..ns {
            if let Some(here) = replicas_at(p, &x_at, m, s) {
                let mut def = variable().min(0.0).max(1.0);
                if integer {
                    def = def.binary();
                }
                let y = vars.add(def);
                rows.push(constraint!(y <= here));
                sites += y;
            }
        }
        rows.push(constraint!(sites >= f64::from(model.min_sites)));
    }
    for &(m, s, n) in &p.pins {
        let here = replicas_at(p, &x_at, m, s).unwrap_or_default();
        rows.push(constraint!(here >= f64::from(n)));
    }
    Program {
        vars,
        x,
        flows,
        objective,
        rows,
    }
}

/// `sum_k x[m,s,k]` over the kinds with a variable there; `None` where there is none.
fn replicas_at(
    p: &Problem,
    x_at: &HashMap<usize, Variable>,
    m: usize,
    s: usize,
) -> Option<Expression> {
    let mut vars = (0..p.kinds.len())
        .filter_map(|k| x_at.get(&p.cell(m, s, k)))
        .peekable();
    vars.peek()?;
    Some(vars.copied().sum())
}

/// Solves `instance` exactly (to `options.mip_rel_gap`, within the time limit).
pub fn solve_exact(instance: &Instance, options: &ExactOptions) -> Result<ExactPlan, ExactError> {
    let p = Problem::compile(instance)?;
    let program = build(&p, true, &HashSet::new());
    let mut model = program
        .vars
        .minimise(program.objective.clone())
        .using(highs)
        .set_mip_rel_gap(options.mip_rel_gap)
        .map_err(|e| ExactError::Solver(e.to_string()))?
        .with_time_limit(options.time_limit_s);
    for row in program.rows {
        model.add_constraint(row);
    }
    let solution = model.solve().map_err(|e| match (e, p.max_moves) {
        (ResolutionError::Infeasible, Some(cap)) => ExactError::Solver(format!(
            "no plan keeps every rule within {cap} moves (the exact solver counts forced moves too)"
        )),
        (e, _) => e.into(),
    })?;
    let proven = matches!(
        solution.status(),
        SolutionStatus::Optimal | SolutionStatus::GapLimit
    );
    let milp_objective = solution.eval(&program.objective);
    let (nk, ns) = (p.kinds.len(), p.sites.len());
    let mut placement: Vec<PlacementRow> = program
        .x
        .iter()
        .filter_map(|&(cell, v)| {
            let n = solution.value(v).round();
            (n >= 1.0).then(|| PlacementRow {
                model: p.models[cell / (nk * ns)].id.clone(),
                site: p.sites[(cell / nk) % ns].id.clone(),
                gpu: p.kinds[cell % nk].name.clone(),
                replicas: n as u32,
            })
        })
        .collect();
    placement.sort();
    let routing = best_routing(instance, &placement)?;
    let objective = objective(instance, &placement, &routing);
    Ok(ExactPlan {
        plan: Plan {
            placement,
            routing,
            objective,
            solver: SolverInfo {
                name: NAME.into(),
                seconds: 0.0,
                seed: 0,
            },
        },
        proven,
        milp_objective,
    })
}

/// A lower bound on every plan's objective: the LP relaxation's optimum, tightened by
/// rounds of facility-location cuts (module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LpBound {
    /// The bound after the last round.
    pub bound: f64,
    /// The plain relaxation's optimum (the first round, before any cut).
    pub plain: f64,
    /// Rounds solved, the first included.
    pub rounds: usize,
    /// Inequalities added over all rounds.
    pub cuts: usize,
    /// Whether the last round found none violated (else `max_rounds` stopped it; the
    /// bound holds either way).
    pub converged: bool,
}

/// The LP relaxation of `instance`, then up to `max_rounds - 1` more rounds with the
/// violated facility-location inequalities added; `time_limit_s` is per round.
pub fn lp_bound(
    instance: &Instance,
    time_limit_s: f64,
    max_rounds: usize,
) -> Result<LpBound, ExactError> {
    lp_bound_with(instance, time_limit_s, max_rounds, |_| {})
}

/// As [`lp_bound`], calling `on_round` with the figures so far after each round (a
/// round at fleet scale takes minutes).
pub fn lp_bound_with(
    instance: &Instance,
    time_limit_s: f64,
    max_rounds: usize,
    mut on_round: impl FnMut(&LpBound),
) -> Result<LpBound, ExactError> {
    let p = Problem::compile(instance)?;
    let mut cuts: HashSet<(usize, usize)> = HashSet::new();
    let mut out = LpBound {
        bound: f64::NEG_INFINITY,
        plain: f64::NEG_INFINITY,
        rounds: 0,
        cuts: 0,
        converged: false,
    };
    while out.rounds < max_rounds.max(1) {
        let program = build(&p, false, &cuts);
        let mut model = program
            .vars
            .minimise(program.objective.clone())
            .using(highs)
            .with_time_limit(time_limit_s);
        for row in program.rows {
            model.add_constraint(row);
        }
        let solution = model.solve()?;
        if !matches!(solution.status(), SolutionStatus::Optimal) {
            return Err(ExactError::Solver(format!(
                "the LP relaxation stopped early ({:?}) in round {}: no proven bound",
                solution.status(),
                out.rounds + 1
            )));
        }
        let value = solution.eval(&program.objective);
        if out.rounds == 0 {
            out.plain = value;
        }
        // A round has more rows than the one before, so its optimum is no lower; keep
        // the largest against solver tolerances.
        out.bound = out.bound.max(value);
        out.rounds += 1;
        let replicas: HashMap<usize, f64> = program
            .x
            .iter()
            .map(|&(cell, v)| (cell, solution.value(v)))
            .collect();
        let mut added = 0;
        for &(d, s, f) in &program.flows {
            let entry = &p.entries[d];
            let open: f64 = (0..p.kinds.len())
                .filter_map(|k| replicas.get(&p.cell(entry.model, s, k)))
                .sum();
            if solution.value(f) > entry.rps * open + 1e-6 * entry.rps.max(1.0)
                && cuts.insert((d, s))
            {
                added += 1;
            }
        }
        out.cuts += added;
        out.converged = added == 0;
        on_round(&out);
        if out.converged {
            break;
        }
    }
    Ok(out)
}

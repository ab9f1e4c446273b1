//! `meridian sim`: the simulator's I/O shell. It reads the scenario and the data it
//! names, runs [`meridian_sim::world::run`] with a progress bar, and writes the report
//! files; the simulation itself is the sans-IO `meridian-sim` crate.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use meridian_proto::catalog::Catalog;
use meridian_sim::report::Report;
use meridian_sim::scenario::{Lengths, Scenario};
use meridian_sim::traffic::{LengthTable, TraceRow, parse_trace};
use meridian_sim::world::{self, Inputs, Progress};

#[derive(Args)]
pub struct SimArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(subcommand)]
    command: Option<SimCommand>,
}

#[derive(Args)]
pub struct RunArgs {
    /// Scenario file (see deploy/scenarios/).
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Directory for the report: summary.json, pops.csv, regions.csv, timeline.csv,
    /// latency.svg, utilisation.svg (and requests.csv with --per-request).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Overrides the scenario's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Overrides the scenario's trace (CSV, see `meridian sim trace`).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Also write one row per completed request (requests.csv).
    #[arg(long)]
    per_request: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Subcommand)]
enum SimCommand {
    /// Fit the engine performance model on a step profile the engine recorded
    /// (`engine.step_profile`) and print it as TOML.
    Fit {
        /// The step profile (CSV).
        #[arg(long)]
        profile: PathBuf,
        /// Also write the model (TOML) here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Tokens per tile of the engine's matrix products, for a profile recorded
        /// without its `tile_tokens` column (0: no tile terms).
        #[arg(long)]
        tile_tokens: Option<u32>,
    },
    /// Search for the fewest GPUs per PoP that meet a p99 TTFT and TPOT objective on
    /// the scenario, and print the table.
    Plan {
        #[command(flatten)]
        run: RunArgs,
        /// p99 time to first token, milliseconds.
        #[arg(long)]
        slo_ttft_p99: f64,
        /// p99 time per output token, milliseconds.
        #[arg(long)]
        slo_tpot_p99: f64,
        /// Share of a region's requests that may be refused (shed or unservable).
        #[arg(long, default_value_t = 0.001)]
        max_refused: f64,
        /// Simulation rounds at most.
        #[arg(long, default_value_t = 12)]
        max_rounds: usize,
    },
    /// Write a trace of ShareGPT requests with Poisson arrivals (with the prompts'
    /// token ids, for `meridian sim replay`).
    Trace {
        /// Requests in the trace.
        #[arg(long)]
        requests: usize,
        /// Mean arrival rate, requests per second.
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The trace file (CSV).
        #[arg(long)]
        out: PathBuf,
        /// Catalog site every request comes from.
        #[arg(long, default_value = "AMS")]
        region: String,
        /// Model id every request asks for.
        #[arg(long, default_value = "SmolLM2-135M-Instruct")]
        model: String,
        /// Cap on each request's output tokens.
        #[arg(long)]
        max_output: Option<u32>,
    },
    /// Send a trace's requests to a real worker at their times and measure them
    /// (requests.csv, as `meridian sim --per-request` writes it).
    Replay {
        /// A trace with a `tokens` column (`meridian sim trace`).
        #[arg(long)]
        trace: PathBuf,
        /// The worker's gRPC endpoint.
        #[arg(long)]
        worker: String,
        /// Where requests.csv goes.
        #[arg(long)]
        out: PathBuf,
        /// Closed loop with this many clients, each sending its next request when the
        /// last one ends (the serving benchmark's max concurrency); default: open loop
        /// at the trace's times.
        #[arg(long)]
        concurrency: Option<usize>,
    },
}

pub async fn main(args: SimArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(SimCommand::Fit {
            profile,
            out,
            tile_tokens,
        }) => fit(&profile, out.as_deref(), tile_tokens),
        Some(SimCommand::Trace {
            requests,
            rate,
            seed,
            out,
            region,
            model,
            max_output,
        }) => {
            crate::sim_data::write_trace(&crate::sim_data::TraceArgs {
                requests,
                rate,
                seed,
                out: out.clone(),
                region,
                model,
                max_output,
            })?;
            println!("trace written to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Some(SimCommand::Replay {
            trace,
            worker,
            out,
            concurrency,
        }) => {
            crate::sim_replay::replay(&crate::sim_replay::ReplayArgs {
                trace,
                worker,
                out,
                concurrency,
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Some(SimCommand::Plan {
            run,
            slo_ttft_p99,
            slo_tpot_p99,
            max_refused,
            max_rounds,
        }) => plan(
            &run,
            &meridian_sim::capacity::Objective {
                ttft_p99_ms: slo_ttft_p99,
                tpot_p99_ms: slo_tpot_p99,
                max_refused,
                max_rounds,
            },
        ),
        None => run(&args.run),
    }
}

/// The scenario and the data it needs, loaded.
struct Loaded {
    scenario: Scenario,
    sharegpt: Option<LengthTable>,
    trace: Option<Vec<TraceRow>>,
}

fn load(args: &RunArgs) -> anyhow::Result<Result<Loaded, String>> {
    let Some(path) = &args.scenario else {
        return Ok(Err(
            "--scenario FILE is required (see deploy/scenarios/)".into()
        ));
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut scenario = match Scenario::from_toml(&text) {
        Ok(s) => s,
        Err(e) => return Ok(Err(format!("{}: {e}", path.display()))),
    };
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let trace_path = args
        .trace
        .clone()
        .or_else(|| scenario.traffic.trace.as_ref().map(|t| base.join(t)));
    let trace = match trace_path {
        Some(p) => {
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read trace {}", p.display()))?;
            match parse_trace(&text) {
                Ok(rows) => Some(rows),
                Err(e) => return Ok(Err(format!("{}: {e}", p.display()))),
            }
        }
        None => None,
    };
    let sharegpt = if trace.is_none() && scenario.traffic.lengths == Lengths::Sharegpt {
        Some(crate::sim_data::sharegpt_lengths()?)
    } else {
        None
    };
    Ok(Ok(Loaded {
        scenario,
        sharegpt,
        trace,
    }))
}

fn simulate(
    loaded: &Loaded,
    scenario: &Scenario,
    per_request: bool,
    quiet: bool,
) -> Result<Report, meridian_sim::SimError> {
    let inputs = Inputs {
        scenario,
        catalog: Catalog::builtin(),
        sharegpt: loaded.sharegpt.as_ref(),
        trace: loaded.trace.as_deref(),
        per_request,
    };
    let bar = (!quiet).then(|| {
        let bar = indicatif::ProgressBar::new((scenario.duration_h * 3600.0) as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} simulated {pos}/{len} s [{bar:30}] {msg} ({elapsed})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let mut progress = |p: Progress| {
        if let Some(bar) = &bar {
            bar.set_position((p.simulated_h * 3600.0) as u64);
            bar.set_message(format!("{} requests", p.requests));
        }
    };
    let report = world::run(&inputs, &mut progress);
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    report
}

fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let loaded = match load(args)? {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let started = Instant::now();
    let report = match simulate(&loaded, &loaded.scenario, args.per_request, args.quiet) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let wall = started.elapsed().as_secs_f64();
    print!("{}", report.summary_text());
    println!(
        "simulated {} requests in {wall:.2} s of wall time: {:.0} simulated requests/s, {} events",
        report.totals.arrived,
        report.totals.arrived as f64 / wall.max(1e-9),
        report.events
    );
    if let Some(dir) = &args.out {
        write_report(dir, &report, args.per_request)?;
        println!("report written to {}", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes every file of a report into `dir`.
fn write_report(dir: &Path, report: &Report, per_request: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut files = vec![
        ("summary.json", report.to_json()),
        ("pops.csv", report.pops_csv()),
        ("regions.csv", report.regions_csv()),
        ("timeline.csv", report.timeline_csv()),
        ("latency.svg", meridian_sim::plot::latency_svg(report)?),
        (
            "utilisation.svg",
            meridian_sim::plot::utilisation_map_svg(report)?,
        ),
    ];
    if per_request {
        files.push(("requests.csv", report.requests_csv()));
    }
    for (name, body) in files {
        let path = dir.join(name);
        std::fs::write(&path, body).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn plan(args: &RunArgs, objective: &meridian_sim::capacity::Objective) -> anyhow::Result<ExitCode> {
    let loaded = match load(args)? {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let mut round = 0;
    let mut run = |s: &Scenario| {
        round += 1;
        if !args.quiet {
            eprintln!("round {round}: {} GPUs", total_gpus(s));
        }
        simulate(&loaded, s, false, args.quiet)
    };
    let planned = match meridian_sim::capacity::plan(&loaded.scenario, objective, &mut run) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    print!("{}", planned.table());
    if let Some(dir) = &args.out {
        write_report(dir, &planned.report, false)?;
        std::fs::write(dir.join("plan.txt"), planned.table())?;
        println!("report of the chosen fleet written to {}", dir.display());
    }
    Ok(if planned.met {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn total_gpus(s: &Scenario) -> u64 {
    s.fleet
        .pops
        .values()
        .flat_map(|p| p.values())
        .map(|&n| u64::from(n))
        .sum()
}

/// `meridian sim fit`: the engine model of a step profile.
fn fit(profile: &Path, out: Option<&Path>, tile_tokens: Option<u32>) -> anyhow::Result<ExitCode> {
    use meridian_sim::engine_model::{
        EngineModel, parse_profile, profile_tile_tokens, step_overhead,
    };
    let text = std::fs::read_to_string(profile)
        .with_context(|| format!("cannot read {}", profile.display()))?;
    let fitted = parse_profile(&text).and_then(|samples| {
        let tile = match tile_tokens {
            Some(t) => t,
            None => profile_tile_tokens(&text)?,
        };
        EngineModel::fit(&samples, tile)
    });
    let (model, report) = match fitted {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {}: {e}", profile.display());
            return Ok(ExitCode::from(2));
        }
    };
    let mut toml = toml::to_string(&model)?;
    if let Some(o) = step_overhead(&text) {
        toml.push_str(&format!(
            "step_overhead_us = {}\nstep_overhead_sequence_us = {}\n",
            o.base_us, o.sequence_us
        ));
    }
    println!(
        "# fitted on {} steps of {}: R^2 {:.3}, mean relative error {:.1}%, predicted/measured total {:.3}",
        report.steps,
        profile.display(),
        report.r2,
        100.0 * report.mean_relative_error,
        report.total_ratio
    );
    print!("{toml}");
    if let Some(out) = out {
        std::fs::write(out, &toml).with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

//! `meridianctl`: the operator's command line for a running Meridian fleet.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meridian_proto::control::v1 as pb;
use meridian_proto::control::v1::control_plane_client::ControlPlaneClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[derive(Parser)]
#[command(
    name = "meridianctl",
    version,
    about = "Operate a running Meridian fleet"
)]
struct Cli {
    /// Control-plane gRPC endpoint.
    #[arg(
        long,
        global = true,
        env = "MERIDIAN_CONTROL",
        default_value = "http://127.0.0.1:50051"
    )]
    control: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that a gRPC server (control plane or worker) is serving.
    Health {
        /// Endpoint to check; default: the control plane.
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Show the fleet: PoPs, workers, load and residency.
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Plan, compare and apply model placement.
    #[command(subcommand)]
    Placement(PlacementCommand),
    /// Take a PoP (or one worker) out of routing and unload it once idle.
    Drain {
        pop: String,
        #[arg(long)]
        worker: Option<String>,
    },
    /// Stop (or, with --undo, resume) routing new requests to a PoP.
    Cordon {
        pop: String,
        #[arg(long)]
        undo: bool,
    },
    /// Residency rules and pins.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Explain routing decisions.
    #[command(subcommand)]
    Route(RouteCommand),
    /// The demand routers report, smoothed, as the placement solver sees it.
    Demand,
}

#[derive(Subcommand)]
enum FleetCommand {
    /// One line per PoP and worker.
    Status,
}

#[derive(Subcommand)]
enum PlacementCommand {
    /// What the solver would change now, as a table (nothing is applied).
    Plan {
        /// Also write the live fleet as a placement instance file.
        #[arg(long)]
        dump_instance: Option<std::path::PathBuf>,
        /// Most replica moves; 0: the policy's `max_moves_per_round`.
        #[arg(long, default_value_t = 0)]
        max_moves: u32,
    },
    /// Desired placement against what is resident.
    Diff,
    /// Apply a plan made by `placement plan`.
    Apply {
        plan_id: String,
        /// The placement revision the plan was made against; 0: the plan's own.
        #[arg(long, default_value_t = 0)]
        expected_revision: u64,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print the residency rules and pins.
    Show,
    /// Replace the policy with a TOML or JSON file.
    Set { file: std::path::PathBuf },
}

#[derive(Subcommand)]
enum RouteCommand {
    /// Every worker with the model resident, scored for a request as a router scores
    /// it on the control plane's current fleet view (with no requests of its own in
    /// flight and no prefix-cache hits), or the reason it is left out.
    Explain {
        #[arg(long)]
        model: String,
        /// Caller's region, a catalog site id.
        #[arg(long)]
        region: String,
        /// Allowed jurisdictions, comma-separated (as `x-meridian-jurisdiction`).
        #[arg(long)]
        jurisdiction: Option<String>,
        /// Prompt length, tokens.
        #[arg(long, default_value_t = 256)]
        prompt_tokens: u32,
        /// Queue length at which a worker counts as saturated (the router's
        /// `max_waiting_per_worker`).
        #[arg(long, default_value_t = 256)]
        max_waiting: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    meridian::telemetry::exit_quietly_on_broken_pipe();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Health { endpoint } => {
            let endpoint = endpoint.unwrap_or(cli.control);
            let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
                .with_context(|| format!("invalid endpoint {endpoint:?}"))?
                .connect_timeout(std::time::Duration::from_secs(3))
                .connect()
                .await
                .with_context(|| format!("cannot connect to {endpoint}"))?;
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .with_context(|| format!("health check on {endpoint} failed"))?
                .into_inner()
                .status();
            println!("{endpoint}: {}", status.as_str_name());
            Ok(
                if status == tonic_health::pb::health_check_response::ServingStatus::Serving {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                },
            )
        }
        Command::Fleet(FleetCommand::Status) => fleet_status(&cli.control).await,
        Command::Drain { pop, worker } => {
            let revision = control(&cli.control)
                .await?
                .drain(pb::DrainRequest {
                    pop_id: pop.clone(),
                    worker_id: worker.clone().unwrap_or_default(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("drain refused: {}", s.message()))?
                .into_inner()
                .revision;
            match worker {
                Some(w) => println!("draining {pop}/{w} (fleet revision {revision})"),
                None => println!("draining {pop} (fleet revision {revision})"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cordon { pop, undo } => {
            let revision = control(&cli.control)
                .await?
                .cordon(pb::CordonRequest {
                    pop_id: pop.clone(),
                    cordoned: !undo,
                })
                .await
                .map_err(|s| anyhow::anyhow!("cordon refused: {}", s.message()))?
                .into_inner()
                .revision;
            let what = if undo { "uncordoned" } else { "cordoned" };
            println!("{pop} {what} (fleet revision {revision})");
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Show) => {
            let policy = control(&cli.control)
                .await?
                .get_policy(pb::GetPolicyRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("policy read refused: {}", s.message()))?
                .into_inner();
            println!("# policy revision {}", policy.revision);
            print!(
                "{}",
                toml::to_string(&meridian_placement::policy::PolicyFile::from_pb(&policy))?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Set { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let wanted = meridian_placement::policy::PolicyFile::parse(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let mut client = control(&cli.control).await?;
            let current = client
                .get_policy(pb::GetPolicyRequest {})
                .await
                .map_err(|s| anyhow::anyhow!("policy read refused: {}", s.message()))?
                .into_inner();
            let policy = wanted
                .to_pb(current.revision)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let set = client
                .set_policy(policy)
                .await
                .map_err(|s| anyhow::anyhow!("policy refused: {}", s.message()))?
                .into_inner();
            println!(
                "policy set: revision {}, {} rules, {} pins",
                set.revision,
                set.rules.len(),
                set.pins.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Placement(PlacementCommand::Plan {
            dump_instance,
            max_moves,
        }) => placement_plan(&cli.control, dump_instance.as_deref(), max_moves).await,
        Command::Placement(PlacementCommand::Diff) => placement_diff(&cli.control).await,
        Command::Placement(PlacementCommand::Apply {
            plan_id,
            expected_revision,
        }) => {
            let revision = control(&cli.control)
                .await?
                .apply(pb::ApplyRequest {
                    plan_id: plan_id.clone(),
                    expected_revision,
                })
                .await
                .map_err(|s| anyhow::anyhow!("apply refused: {}", s.message()))?
                .into_inner()
                .revision;
            println!("plan {plan_id} applied: placement revision {revision}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Route(RouteCommand::Explain {
            model,
            region,
            jurisdiction,
            prompt_tokens,
            max_waiting,
        }) => {
            let jurisdictions: Vec<String> = jurisdiction
                .unwrap_or_default()
                .split(',')
                .map(|j| j.trim().to_ascii_uppercase())
                .filter(|j| !j.is_empty())
                .collect();
            route_explain(
                &cli.control,
                &model,
                &region.to_ascii_uppercase(),
                &jurisdictions,
                prompt_tokens,
                max_waiting,
            )
            .await
        }
        Command::Demand => demand(&cli.control).await,
    }
}

async fn placement_plan(
    endpoint: &str,
    dump_instance: Option<&std::path::Path>,
    max_moves: u32,
) -> anyhow::Result<ExitCode> {
    let plan = control(endpoint)
        .await?
        .plan(pb::PlanRequest { max_moves })
        .await
        .map_err(|s| anyhow::anyhow!("plan refused: {}", s.message()))?
        .into_inner();
    if let Some(path) = dump_instance {
        std::fs::write(path, &plan.instance_json)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("instance written to {}", path.display());
    }
    let o = plan.objective.unwrap_or_default();
    println!(
        "plan {} against placement revision {}: {}",
        plan.plan_id,
        plan.base_revision,
        if plan.valid { "valid" } else { "INVALID" }
    );
    println!(
        "objective {:.3} = unserved {:.3} rps, GPU cost {:.3}, {} moves",
        o.total, o.unserved_rps, o.gpu_cost, o.moves
    );
    for v in &plan.violations {
        println!("violation: {v}");
    }
    for n in &plan.notes {
        println!("note: {n}");
    }
    if plan.changes.is_empty() {
        println!("no change");
    } else {
        println!(
            "{:<28} {:<5} {:<6} {:>5} {:>5}",
            "MODEL", "SITE", "KIND", "FROM", "TO"
        );
        for c in &plan.changes {
            let kind = if c.gpu_kind.is_empty() {
                "cpu"
            } else {
                &c.gpu_kind
            };
            println!(
                "{:<28} {:<5} {:<6} {:>5} {:>5}",
                c.model, c.site, kind, c.from_replicas, c.to_replicas
            );
        }
        println!("apply with: meridianctl placement apply {}", plan.plan_id);
    }
    Ok(if plan.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn placement_diff(endpoint: &str) -> anyhow::Result<ExitCode> {
    use std::collections::BTreeMap;
    let desired = control(endpoint)
        .await?
        .get_placement(pb::GetPlacementRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("placement read refused: {}", s.message()))?
        .into_inner();
    let (revision, snapshot) = snapshot(endpoint).await?;
    let mut rows: BTreeMap<(String, String, String), (u32, u32)> = BTreeMap::new();
    for a in &desired.assignments {
        rows.entry((a.model.clone(), a.site.clone(), a.gpu_kind.clone()))
            .or_default()
            .0 += a.replicas;
    }
    for r in meridian_placement::planner::resident(&snapshot.pops) {
        let wire = meridian_placement::planner::wire_kind(&r.gpu).to_string();
        rows.entry((r.model, r.site, wire)).or_default().1 += r.replicas;
    }
    println!(
        "desired placement revision {} against the fleet at revision {revision}",
        desired.revision
    );
    if desired.revision == 0 {
        println!("no placement applied yet: residency is as the PoP agents started it");
    }
    println!(
        "{:<28} {:<5} {:<6} {:>7} {:>8}",
        "MODEL", "SITE", "KIND", "DESIRED", "RESIDENT"
    );
    for ((model, site, kind), (want, have)) in &rows {
        let kind = if kind.is_empty() { "cpu" } else { kind };
        let mark = if want == have || desired.revision == 0 {
            ""
        } else {
            "  *"
        };
        println!("{model:<28} {site:<5} {kind:<6} {want:>7} {have:>8}{mark}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The fleet snapshot: the first event of `WatchFleet`.
async fn snapshot(endpoint: &str) -> anyhow::Result<(u64, pb::FleetSnapshot)> {
    let mut stream = control(endpoint)
        .await?
        .watch_fleet(pb::WatchFleetRequest { from_revision: 0 })
        .await
        .map_err(|s| anyhow::anyhow!("fleet watch refused: {}", s.message()))?
        .into_inner();
    let first = stream
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("fleet watch failed: {}", s.message()))?
        .context("the control plane closed the fleet watch")?;
    let Some(pb::fleet_event::Event::Snapshot(snapshot)) = first.event else {
        anyhow::bail!("the fleet watch did not start with a snapshot");
    };
    Ok((first.revision, snapshot))
}

async fn route_explain(
    endpoint: &str,
    model: &str,
    region: &str,
    jurisdictions: &[String],
    prompt_tokens: u32,
    max_waiting: u32,
) -> anyhow::Result<ExitCode> {
    use meridian_router::fleet::{FleetFeed, RttTable};
    use meridian_router::score::{Ask, explain};
    let catalog = meridian_proto::catalog::Catalog::builtin();
    let Some(region_index) = catalog.index_of(region) else {
        anyhow::bail!("region {region:?} is not a catalog site id");
    };
    let (revision, snapshot) = snapshot(endpoint).await?;
    let mut feed = FleetFeed::default();
    feed.apply(pb::FleetEvent {
        revision,
        event: Some(pb::fleet_event::Event::Snapshot(snapshot)),
    });
    let view = feed.view(catalog);
    let rtt = RttTable::from_catalog(catalog);
    let ask = Ask {
        model,
        region: region_index,
        jurisdictions,
        prompt_tokens,
        cached: &[],
        max_waiting,
    };
    let none: &[u32] = &[];
    let judged = explain(&view, &rtt, &ask, none);
    let allowed = if jurisdictions.is_empty() {
        "any".to_string()
    } else {
        jurisdictions.join(",")
    };
    println!(
        "model {model}, caller at {region}, jurisdictions {allowed}, {prompt_tokens} prompt tokens (fleet revision {revision})"
    );
    if judged.is_empty() {
        println!("no worker has {model} resident");
        return Ok(ExitCode::FAILURE);
    }
    println!(
        "{:<4} {:<5} {:<4} {:<8} {:>9} {:>8} {:>8} {:>10}  VERDICT",
        "RANK", "POP", "JUR", "WORKER", "SCORE MS", "RTT MS", "QUEUE MS", "PREFILL MS"
    );
    let mut rank = 0;
    for (i, verdict) in &judged {
        let w = &view.workers[*i as usize];
        match verdict {
            Ok(c) => {
                rank += 1;
                let role = match rank {
                    1 => "first choice",
                    n if n <= meridian_router::score::MAX_CANDIDATES => "retry candidate",
                    _ => "eligible",
                };
                println!(
                    "{:<4} {:<5} {:<4} {:<8} {:>9.2} {:>8.2} {:>8.2} {:>10.2}  {role}",
                    rank,
                    w.pop,
                    w.jurisdiction,
                    w.worker_id,
                    c.score_ms,
                    c.rtt_ms,
                    c.queue_ms,
                    c.prefill_ms
                );
            }
            Err(why) => println!(
                "{:<4} {:<5} {:<4} {:<8} {:>9} {:>8} {:>8} {:>10}  excluded: {}",
                "-",
                w.pop,
                w.jurisdiction,
                w.worker_id,
                "-",
                "-",
                "-",
                "-",
                why.as_str()
            ),
        }
    }
    Ok(if rank > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn demand(endpoint: &str) -> anyhow::Result<ExitCode> {
    let summary = control(endpoint)
        .await?
        .get_demand(pb::GetDemandRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("demand read refused: {}", s.message()))?
        .into_inner();
    println!(
        "{:<6} {:<28} {:<10} {:>9} {:>12} {:>12} {:>9} {:>7}",
        "REGION", "MODEL", "JUR", "RPS", "PROMPT TOK/S", "COMPL TOK/S", "REFUSED", "ROUTERS"
    );
    for r in &summary.rates {
        let jur = if r.jurisdictions.is_empty() {
            "any".to_string()
        } else {
            r.jurisdictions.join(",")
        };
        println!(
            "{:<6} {:<28} {:<10} {:>9.3} {:>12.1} {:>12.1} {:>9.3} {:>7}",
            r.region,
            r.model,
            jur,
            r.rps,
            r.prompt_tokens_per_s,
            r.completion_tokens_per_s,
            r.refused_rps,
            r.routers
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn control(endpoint: &str) -> anyhow::Result<ControlPlaneClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .with_context(|| format!("invalid endpoint {endpoint:?}"))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("cannot connect to the control plane at {endpoint}"))?;
    Ok(ControlPlaneClient::new(channel)
        .max_decoding_message_size(meridian_proto::MAX_MESSAGE_BYTES))
}

/// Reads the first event of `WatchFleet` (the snapshot) and prints it.
async fn fleet_status(endpoint: &str) -> anyhow::Result<ExitCode> {
    use meridian_proto::worker::v1::WorkerState;
    let (revision, snapshot) = snapshot(endpoint).await?;
    println!("fleet revision {}: {} PoPs", revision, snapshot.pops.len());
    println!(
        "{:<5} {:<4} {:<10} {:<8} {:<24} {:<9} {:>5} {:>7} {:>11}",
        "POP", "JUR", "STATUS", "WORKER", "MODEL", "STATE", "QUEUE", "RUNNING", "KV FREE"
    );
    for pop in &snapshot.pops {
        let status = pb::PopStatus::try_from(pop.status)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("POP_STATUS_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        for w in &pop.workers {
            let state = WorkerState::try_from(w.state)
                .map(|s| {
                    s.as_str_name()
                        .trim_start_matches("WORKER_STATE_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            let load = w.load.clone().unwrap_or_default();
            println!(
                "{:<5} {:<4} {:<10} {:<8} {:<24} {:<9} {:>5} {:>7} {:>5}/{:<5}",
                pop.pop_id,
                pop.jurisdiction,
                status,
                w.worker_id,
                w.model,
                state,
                load.queue_depth,
                load.running_sequences,
                load.kv_blocks_free,
                load.kv_blocks_total
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

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
}

#[derive(Subcommand)]
enum FleetCommand {
    /// One line per PoP and worker.
    Status,
}

#[derive(Subcommand)]
enum PlacementCommand {
    /// What the solver would change now, as a table.
    Plan {
        /// Also write the live fleet as a placement instance file.
        #[arg(long)]
        dump_instance: Option<std::path::PathBuf>,
    },
    /// Desired placement against what is resident.
    Diff,
    /// Apply a plan.
    Apply { plan_id: String },
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
    /// Candidates for a request and their score terms.
    Explain {
        #[arg(long)]
        model: String,
        #[arg(long)]
        region: String,
        #[arg(long)]
        jurisdiction: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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

fn not_implemented(what: &str, issue: u32) -> anyhow::Result<ExitCode> {
    eprintln!("meridianctl: {what} is not implemented yet (tracked in issue {issue})");
    Ok(ExitCode::from(2))
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
        Command::Placement(_) | Command::Policy(_) => not_implemented("placement and policy", 11),
        Command::Route(_) => not_implemented("route explain", 10),
    }
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
    println!(
        "fleet revision {}: {} PoPs",
        first.revision,
        snapshot.pops.len()
    );
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

//! `meridian`: every long-running role of Meridian, plus the model tools.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use meridian::{assets, config, grpc, telemetry};
use meridian_placement::ControlConfig;
use meridian_router::RouterConfig;

#[derive(Parser)]
#[command(
    name = "meridian",
    version,
    about = "Meridian: a global edge inference platform"
)]
struct Cli {
    /// Write logs as JSON lines (filter with RUST_LOG).
    #[arg(long, global = true, env = "MERIDIAN_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything on this machine: control plane, PoPs with CPU workers, a router.
    Up(UpArgs),
    /// Run a control-plane replica (the ControlPlane gRPC service).
    Control(RoleArgs),
    /// Run a PoP agent with its engine workers.
    Pop(PopArgs),
    /// Run a router: the OpenAI-compatible HTTP front door.
    Router(RouterArgs),
    /// Run one engine worker alone (the Worker gRPC service), without a PoP agent.
    Worker(WorkerArgs),
    /// Simulate a fleet in virtual time for capacity planning.
    Sim(meridian::sim_cmd::SimArgs),
    /// Generate a completion locally with the engine.
    Generate(GenerateArgs),
    /// Fetch and list the model and data assets.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Solve and check placement instances offline.
    #[command(subcommand)]
    Placement(PlacementCommand),
}

#[derive(Args)]
struct UpArgs {
    /// Role configuration file (see deploy/up.toml).
    #[arg(long, env = "MERIDIAN_UP_CONFIG")]
    config: Option<PathBuf>,
    /// Catalog sites that get a PoP, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pops: Option<Vec<String>>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(Args)]
struct RoleArgs {
    /// Role configuration file (see deploy/<role>.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// gRPC or HTTP listen address, overriding the file.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(Args)]
struct RouterArgs {
    #[command(flatten)]
    role: RoleArgs,
    /// Control-plane endpoints (comma-separated), overriding the file.
    #[arg(long, value_delimiter = ',')]
    control: Option<Vec<String>>,
    /// Catalog site this router runs at, overriding the file.
    #[arg(long)]
    site: Option<String>,
}

#[derive(Args)]
struct PopArgs {
    #[command(flatten)]
    role: RoleArgs,
    /// Catalog site id of this PoP, overriding the file.
    #[arg(long)]
    pop_id: Option<String>,
    /// Control-plane endpoints (comma-separated), overriding the file.
    #[arg(long, value_delimiter = ',')]
    control: Option<Vec<String>>,
    /// Number of CPU workers, overriding the file.
    #[arg(long)]
    workers: Option<usize>,
}

#[derive(Args)]
struct WorkerArgs {
    /// PoP role file whose `[engine]` section and `worker_listen` apply (deploy/pop.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// GGUF model file; default: the cached SmolLM2-135M-Instruct.
    #[arg(long)]
    model: Option<PathBuf>,
    /// gRPC listen address (port 0: any free port, printed at start).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Prometheus listen address.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    device: DeviceArgs,
    /// Threads of the async runtime that serves gRPC (the engine's step thread is its
    /// own). Few is cheaper: each streamed token wakes a task, and with a thread per core
    /// the wake-ups hop between threads (measured on a 16-core host: 5.7 us of CPU per
    /// token with 2 threads, 11 us with 16).
    #[arg(long, default_value_t = 2)]
    runtime_threads: usize,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

/// Where the engine runs, overriding the role file's `[engine]` section.
#[derive(Args)]
struct DeviceArgs {
    /// cpu, cuda or cuda:N.
    #[arg(long)]
    device: Option<String>,
    /// Build this architecture with generated weights (llama-3.1-8b; GPU only); the
    /// model file still gives the tokenizer. For benchmarks: meaningless text, real speed.
    #[arg(long)]
    synthetic: Option<String>,
    /// Run every step eagerly instead of replaying CUDA graphs.
    #[arg(long)]
    no_cuda_graphs: bool,
    /// Most sequences running at once.
    #[arg(long)]
    max_running: Option<usize>,
    /// Most tokens in one step.
    #[arg(long)]
    max_batch_tokens: Option<usize>,
}

impl DeviceArgs {
    fn apply(&self, engine: &mut meridian_engine::EngineConfig) {
        if let Some(d) = &self.device {
            engine.device = d.clone();
        }
        if self.synthetic.is_some() {
            engine.synthetic = self.synthetic.clone();
        }
        if self.no_cuda_graphs {
            engine.cuda_graphs = false;
        }
        if let Some(n) = self.max_running {
            engine.max_running = n;
        }
        if let Some(n) = self.max_batch_tokens {
            engine.max_batch_tokens = n;
        }
    }
}

#[derive(Args)]
struct GenerateArgs {
    /// GGUF model file; default: the cached SmolLM2-135M-Instruct.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prompt text.
    #[arg(long)]
    prompt: String,
    /// Apply the model's chat template to the prompt as one user message.
    #[arg(long)]
    chat: bool,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Seed for sampling (same seed, same text).
    #[arg(long)]
    seed: Option<u64>,
    /// Compute threads; 0: every core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Append a line per engine step to this CSV (for `meridian sim fit`).
    #[arg(long)]
    step_profile: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Fetch the model and benchmark data into the cache (does nothing when present).
    Pull,
    /// List the assets and whether they are cached.
    List,
}

#[derive(Subcommand)]
enum PlacementCommand {
    /// Solve an instance file into a plan.
    Solve {
        #[arg(long)]
        instance: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Use the exact MILP solver (small instances).
        #[arg(long)]
        exact: bool,
    },
    /// Check a plan against its instance and print its objective.
    Check {
        #[arg(long)]
        instance: PathBuf,
        #[arg(long)]
        plan: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_tracing(cli.log_json);
    telemetry::exit_quietly_on_broken_pipe();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Command::Worker(args) = &cli.command {
        runtime.worker_threads(args.runtime_threads.max(1));
    }
    let runtime = match runtime.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit status of a command whose role is not built yet: distinct from failures.
async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Up(args) => up(args).await,
        Command::Control(args) => control(args).await,
        Command::Pop(args) => pop(args).await,
        Command::Router(args) => router(args).await,
        Command::Worker(args) => worker(args).await,
        Command::Sim(args) => meridian::sim_cmd::main(args).await,
        Command::Generate(args) => generate(args).await,
        Command::Models(ModelsCommand::Pull) => {
            let cache = assets::cache_dir();
            let python = assets::python();
            for asset in assets::ALL {
                let pulled = assets::pull(asset, &cache, &python)?;
                let state = match &pulled {
                    assets::Pulled::Cached(_) => "already cached",
                    assets::Pulled::Fetched {
                        replaced_corrupt: true,
                        ..
                    } => "fetched (the cached copy was corrupt)",
                    assets::Pulled::Fetched { .. } => "fetched",
                };
                println!("{:<28} {state:<40} {}", asset.name, pulled.path().display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Models(ModelsCommand::List) => {
            for asset in assets::ALL {
                let path = assets::cached_path(asset);
                let state = if path.exists() {
                    "cached"
                } else {
                    "missing (meridian models pull)"
                };
                println!(
                    "{:<28} {:<24} {state:<32} {}",
                    asset.name,
                    asset.requirement,
                    path.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Placement(PlacementCommand::Solve {
            instance,
            out,
            seed,
            exact,
        }) => meridian::placement_cmd::solve(&instance, out.as_deref(), seed, exact),
        Command::Placement(PlacementCommand::Check { instance, plan }) => {
            meridian::placement_cmd::check(&instance, &plan)
        }
    }
}

/// The configured model file, or the cached SmolLM2 (fetched if missing).
fn model_path(engine: &meridian_engine::EngineConfig) -> anyhow::Result<PathBuf> {
    let model = match &engine.model {
        Some(path) => path.clone(),
        None => assets::pull(&assets::SMOLLM2, &assets::cache_dir(), &assets::python())?
            .path()
            .to_path_buf(),
    };
    anyhow::ensure!(
        model.exists(),
        "model file {} does not exist",
        model.display()
    );
    Ok(model)
}

async fn router(args: RouterArgs) -> anyhow::Result<ExitCode> {
    let mut cfg: RouterConfig = config::load("router", args.role.config.as_deref())?;
    if let Some(listen) = args.role.listen {
        cfg.listen = listen;
    }
    if let Some(control) = args.control {
        cfg.control_endpoints = control;
    }
    if let Some(site) = args.site {
        cfg.site = site;
    }
    if args.role.print_config {
        print!("{}", config::to_toml(&cfg)?);
        return Ok(ExitCode::SUCCESS);
    }
    cfg.validate()?;
    anyhow::ensure!(
        !cfg.control_endpoints.is_empty(),
        "control_endpoints is empty: the router follows the control plane's fleet feed"
    );
    let metrics = telemetry::install_metrics(None)?;
    let checkpoints: Vec<PathBuf> = if cfg.tokenizers.is_empty() {
        let default = assets::cached_path(&assets::SMOLLM2);
        if default.exists() {
            vec![default]
        } else {
            Vec::new()
        }
    } else {
        cfg.tokenizers.clone()
    };
    let tokenizers = meridian::tokenize::tokenizers(
        checkpoints
            .iter()
            .map(|p| (meridian_engine::model_id(p), p.as_path())),
    );
    let state = std::sync::Arc::new(
        meridian_router::state::RouterState::new(cfg.clone(), Some(metrics))?
            .with_tokenizers(tokenizers),
    );
    let feed = tokio::spawn(meridian_router::source::watch_fleet(
        state.clone(),
        cfg.control_endpoints.clone(),
    ));
    let demand = tokio::spawn(meridian_router::source::report_demand(
        state.clone(),
        cfg.control_endpoints.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot bind the router on {}", cfg.listen))?;
    println!("router listening on http://{}", listener.local_addr()?);
    meridian_router::server::serve(state, listener, grpc::ctrl_c()).await?;
    feed.abort();
    demand.abort();
    Ok(ExitCode::SUCCESS)
}

async fn pop(args: PopArgs) -> anyhow::Result<ExitCode> {
    let mut cfg: config::PopConfig = config::load("pop", args.role.config.as_deref())?;
    if let Some(listen) = args.role.listen {
        cfg.worker_listen = listen;
    }
    if let Some(id) = args.pop_id {
        cfg.pop_id = id;
    }
    if let Some(control) = args.control {
        cfg.control_endpoints = control;
    }
    if let Some(n) = args.workers {
        cfg.workers = n;
    }
    if args.role.print_config {
        print!("{}", config::to_toml(&cfg)?);
        return Ok(ExitCode::SUCCESS);
    }
    cfg.validate()?;
    telemetry::install_metrics(cfg.metrics_listen)?;
    let model = model_path(&cfg.engine)?;
    meridian::pop::run(cfg, model).await?;
    Ok(ExitCode::SUCCESS)
}

async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let mut cfg: config::UpConfig = config::load("up", args.config.as_deref())?;
    if let Some(pops) = args.pops {
        cfg.pops = pops;
    }
    if args.print_config {
        print!("{}", config::to_toml(&cfg)?);
        return Ok(ExitCode::SUCCESS);
    }
    cfg.validate()?;
    let model = match &cfg.engine.model {
        Some(path) => path.clone(),
        None => assets::pull(&assets::SMOLLM2, &assets::cache_dir(), &assets::python())?
            .path()
            .to_path_buf(),
    };
    anyhow::ensure!(
        model.exists(),
        "model file {} does not exist",
        model.display()
    );
    meridian::up::run(cfg, &model).await?;
    Ok(ExitCode::SUCCESS)
}

async fn control(args: RoleArgs) -> anyhow::Result<ExitCode> {
    let mut cfg: ControlConfig = config::load("control", args.config.as_deref())?;
    if let Some(listen) = args.listen {
        cfg.listen = listen;
    }
    if args.print_config {
        print!("{}", config::to_toml(&cfg)?);
        return Ok(ExitCode::SUCCESS);
    }
    cfg.validate()?;
    telemetry::install_metrics(cfg.metrics_listen)?;
    let store = meridian::control::open_store(&cfg).await?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot bind {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    println!("control plane listening on http://{addr}");
    meridian::control::serve(cfg, store, listener, grpc::ctrl_c()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let model = match args.model {
        Some(m) => m,
        None => assets::pull(&assets::SMOLLM2, &assets::cache_dir(), &assets::python())?
            .path()
            .to_path_buf(),
    };
    anyhow::ensure!(
        model.exists(),
        "model file {} does not exist",
        model.display()
    );
    let mut engine_config = meridian_engine::EngineConfig {
        threads: args.threads,
        step_profile: args.step_profile.clone(),
        ..Default::default()
    };
    args.device.apply(&mut engine_config);
    let bar = indicatif::ProgressBar::new(100).with_style(
        indicatif::ProgressStyle::with_template("loading {msg} [{bar:30}] {percent}%")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(
        model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    let engine = tokio::task::block_in_place(|| {
        meridian_engine::Engine::load_with_progress(&model, &engine_config, &mut |f| {
            bar.set_position((f * 100.0) as u64)
        })
    })
    .with_context(|| format!("cannot load {}", model.display()))?;
    bar.finish_and_clear();
    let input = if args.chat {
        meridian_engine::Input::Chat {
            messages: vec![meridian_engine::ChatMessage {
                role: "user".into(),
                content: args.prompt,
            }],
            add_generation_prompt: true,
        }
    } else {
        meridian_engine::Input::Text(args.prompt)
    };
    let request = meridian_engine::Request {
        input,
        sampling: meridian_engine::SamplingParams {
            temperature: args.temperature,
            seed: args.seed,
            ..Default::default()
        },
        max_tokens: args.max_tokens,
        stop: Vec::new(),
        logprobs: false,
        ignore_eos: false,
    };
    let started = std::time::Instant::now();
    let mut events = engine.submit(request)?;
    let mut out = std::io::stdout();
    let mut first_token = None;
    while let Some(event) = events.recv().await {
        use std::io::Write;
        match event {
            meridian_engine::Event::Token { text, .. } => {
                first_token.get_or_insert_with(|| started.elapsed());
                write!(out, "{text}")?;
                out.flush()?;
            }
            meridian_engine::Event::Finished {
                reason,
                usage,
                text,
            } => {
                writeln!(out, "{text}")?;
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "[{reason:?}: {} prompt + {} generated tokens in {secs:.2} s, first token after {:.0} ms, {:.1} tok/s]",
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    first_token.unwrap_or_default().as_secs_f64() * 1000.0,
                    f64::from(usage.completion_tokens) / secs
                );
                break;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The default model when none is configured: the cached SmolLM2, fetched if missing.
fn default_model() -> anyhow::Result<PathBuf> {
    Ok(
        assets::pull(&assets::SMOLLM2, &assets::cache_dir(), &assets::python())?
            .path()
            .to_path_buf(),
    )
}

async fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let mut cfg: config::PopConfig = config::load("pop", args.config.as_deref())?;
    if let Some(listen) = args.listen {
        cfg.worker_listen = listen;
    }
    if args.model.is_some() {
        cfg.engine.model = args.model;
    }
    if args.metrics_listen.is_some() {
        cfg.metrics_listen = args.metrics_listen;
    }
    args.device.apply(&mut cfg.engine);
    if args.print_config {
        print!("{}", config::to_toml(&cfg)?);
        return Ok(ExitCode::SUCCESS);
    }
    cfg.engine.validate()?;
    telemetry::install_metrics(cfg.metrics_listen)?;
    let model = match &cfg.engine.model {
        Some(m) => m.clone(),
        None => default_model()?,
    };
    let engine = tokio::task::block_in_place(|| meridian_engine::Engine::load(&model, &cfg.engine))
        .with_context(|| format!("cannot load {}", model.display()))?;
    // A synthetic model is served under its own name, never the file's it took the
    // tokenizer from.
    let model_id = match &cfg.engine.synthetic {
        Some(name) => format!("{name}-synthetic"),
        None => meridian_engine::model_id(&model),
    };
    tracing::info!(model = %model.display(), model_id, backend = engine.describe(), "engine loaded");
    let slot = meridian_engine::slot::WorkerSlot::with_engine(
        cfg.engine.clone(),
        std::sync::Arc::new(engine),
        model_id.clone(),
    );
    let service = meridian_engine::service::WorkerService::new(slot);
    let listener = tokio::net::TcpListener::bind(cfg.worker_listen)
        .await
        .with_context(|| format!("cannot bind {}", cfg.worker_listen))?;
    let addr = listener.local_addr()?;
    type Server = meridian_proto::worker::v1::worker_server::WorkerServer<
        meridian_engine::service::WorkerService,
    >;
    println!("worker serving {model_id} on http://{addr}");
    let service = Server::new(service).max_decoding_message_size(meridian_proto::MAX_MESSAGE_BYTES);
    let name = <Server as tonic::server::NamedService>::NAME;
    grpc::serve(
        listener,
        tonic::service::Routes::new(service),
        name,
        grpc::ctrl_c(),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

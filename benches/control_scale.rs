//! Scale benchmark of one control-plane replica: many PoP agents reporting load at a
//! fixed rate, and how long a report takes to reach a router's fleet watch.
//!
//! The bench starts etcd (or uses the in-memory store), runs the real `meridian control`
//! binary as a child process, and simulates `--pops` PoP agents (the first sites of the
//! builtin catalog) with `--workers-per-pop` CPU workers each. Every agent registers,
//! opens its own `Report` stream and sends a `LoadReport` `--hz` times a second with a
//! random phase, each worker carrying a realistic load figure (queues, KV blocks, a
//! 64-hash prefix summary). A `WatchFleet` subscriber on the same replica stands in for
//! a router; for every `PopUpserted` after the warm-up it records the time from the
//! report's send to its arrival in the watch. CPU used by the replica, etcd and the
//! bench itself over the measured window comes from `/proc/<pid>/stat`.
//!
//! Run (release build of the whole workspace on first use):
//!
//! ```text
//! cargo bench --bench control_scale -- --store etcd
//! cargo bench --bench control_scale -- --store memory --pops 250 --workers-per-pop 8 \
//!     --hz 4 --seconds 30 --warmup 5 --seed 1
//! ```
//!
//! Target: p99 report-to-watcher latency under 200 ms at 250 PoPs x 8 workers x 4 Hz.
//! The verdict is printed for information; the bench exits non-zero only when the setup
//! breaks or the replica refuses reports. All processes share the machine, so on a
//! small one the bench's own CPU (the agents and the watcher) competes with the replica.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rand::{Rng as _, RngCore as _, SeedableRng as _};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use meridian_placement::testing::EtcdServer;
use meridian_proto::catalog::{Catalog, Site};
use meridian_proto::control::v1 as pb;
use meridian_proto::control::v1::control_plane_client::ControlPlaneClient;
use meridian_proto::worker::v1::{PrefixSummary, WorkerLoad, WorkerState};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Report streams per HTTP/2 connection; real agents each have their own, but hundreds
/// of connections from one process would measure the bench's sockets, not the replica.
const POPS_PER_CONNECTION: usize = 50;
/// Lease of a PoP session, as in a default deployment.
const LEASE_TTL_MS: u64 = 5_000;
/// Block hashes in each worker's prefix summary.
const PREFIX_HASHES: usize = 64;
/// Prefix hashes replaced per report: the cache turns over slowly.
const PREFIX_CHURN: usize = 4;
const KV_BLOCKS_TOTAL: u32 = 4_096;
const KV_BLOCK_SIZE: u32 = 16;
const MODEL: &str = "smollm2-135m-instruct";
/// Target of the issue: p99 report-to-watcher latency.
const TARGET_P99_MS: f64 = 200.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreChoice {
    Etcd,
    Memory,
}

impl StoreChoice {
    fn name(self) -> &'static str {
        match self {
            Self::Etcd => "etcd",
            Self::Memory => "memory",
        }
    }
}

#[derive(Debug, Clone)]
struct Args {
    store: StoreChoice,
    pops: usize,
    workers_per_pop: usize,
    hz: u32,
    seconds: u64,
    warmup: u64,
    seed: u64,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            store: StoreChoice::Etcd,
            pops: 250,
            workers_per_pop: 8,
            hz: 4,
            seconds: 30,
            warmup: 5,
            seed: 1,
        }
    }
}

impl Args {
    /// `--flag value` or `--flag=value`; anything unknown (cargo's `--bench`) is ignored.
    fn parse(argv: impl IntoIterator<Item = String>) -> anyhow::Result<Self> {
        let mut args = Self::default();
        let mut it = argv.into_iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f.to_string(), Some(v.to_string())),
                None => (arg, None),
            };
            let known = [
                "--store",
                "--pops",
                "--workers-per-pop",
                "--hz",
                "--seconds",
                "--warmup",
                "--seed",
            ];
            if !known.contains(&flag.as_str()) {
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None => it.next().with_context(|| format!("{flag} needs a value"))?,
            };
            let bad = || format!("{flag} {value:?} is not valid");
            match flag.as_str() {
                "--store" => {
                    args.store = match value.as_str() {
                        "etcd" => StoreChoice::Etcd,
                        "memory" | "mem" => StoreChoice::Memory,
                        _ => bail!("--store must be etcd or memory, not {value:?}"),
                    }
                }
                "--pops" => args.pops = value.parse().with_context(bad)?,
                "--workers-per-pop" => args.workers_per_pop = value.parse().with_context(bad)?,
                "--hz" => args.hz = value.parse().with_context(bad)?,
                "--seconds" => args.seconds = value.parse().with_context(bad)?,
                "--warmup" => args.warmup = value.parse().with_context(bad)?,
                "--seed" => args.seed = value.parse().with_context(bad)?,
                _ => unreachable!("flag list and match agree"),
            }
        }
        let sites = Catalog::builtin().len();
        ensure!(
            (1..=sites).contains(&args.pops),
            "--pops must be 1..={sites} (the builtin catalog's sites)"
        );
        ensure!(
            (1..=1024).contains(&args.workers_per_pop),
            "--workers-per-pop must be 1..=1024"
        );
        ensure!(
            (1..=1000).contains(&args.hz),
            "--hz must be 1..=1000 (whole reports per second)"
        );
        ensure!(args.seconds > 0, "--seconds must be positive");
        Ok(args)
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(1_000 / u64::from(self.hz))
    }
}

/// Seeded, so phases and simulated loads repeat from run to run with `--seed`.
type Rng = rand::rngs::StdRng;

/// The measured window on the bench's monotonic clock. Report send times travel as
/// microseconds since `epoch`, so the watcher's latency needs no wall clock.
#[derive(Debug, Clone, Copy)]
struct Window {
    epoch: Instant,
    start: Instant,
    end: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }

    fn stamp(&self, t: Instant) -> u64 {
        // Never 0: 0 means "no stamp" in a worker's load figure.
        (t.duration_since(self.epoch).as_micros() as u64).max(1)
    }

    fn unstamp(&self, stamp: u64) -> Instant {
        self.epoch + Duration::from_micros(stamp)
    }
}

/// Counters the agents share; only events inside the window count.
#[derive(Default)]
struct Counters {
    registered: AtomicUsize,
    sent: AtomicU64,
    acked: AtomicU64,
    /// Reports not sent because the stream's send buffer was full (the replica lags).
    backpressured: AtomicU64,
}

/// One simulated CPU worker's load, drifting a little between reports.
struct SimWorker {
    worker_id: String,
    queue_depth: u32,
    running: u32,
    kv_blocks_free: u32,
    hashes: Vec<u64>,
}

impl SimWorker {
    fn new(worker_id: String, rng: &mut Rng) -> Self {
        Self {
            worker_id,
            queue_depth: rng.random_range(0..4u64) as u32,
            running: 1 + rng.random_range(0..16u64) as u32,
            kv_blocks_free: KV_BLOCKS_TOTAL / 2,
            hashes: (0..PREFIX_HASHES).map(|_| rng.next_u64()).collect(),
        }
    }

    fn step(&mut self, rng: &mut Rng) {
        let drift = |v: u32, max: u32, rng: &mut Rng| -> u32 {
            (i64::from(v) + rng.random_range(0..5u64) as i64 - 2).clamp(0, i64::from(max)) as u32
        };
        self.queue_depth = drift(self.queue_depth, 32, rng);
        self.running = drift(self.running, 64, rng);
        self.kv_blocks_free = (i64::from(self.kv_blocks_free) + rng.random_range(0..129u64) as i64
            - 64)
            .clamp(0, i64::from(KV_BLOCKS_TOTAL)) as u32;
        // Most recently used first: new prefixes enter at the front, the oldest leave.
        for _ in 0..PREFIX_CHURN {
            self.hashes.pop();
            self.hashes.insert(0, rng.next_u64());
        }
    }

    fn report(&self, rng: &mut Rng, stamp: u64) -> pb::WorkerReport {
        pb::WorkerReport {
            worker_id: self.worker_id.clone(),
            model: MODEL.into(),
            state: WorkerState::Warm as i32,
            load_progress: 1.0,
            load: Some(WorkerLoad {
                queue_depth: self.queue_depth,
                running_sequences: self.running,
                kv_blocks_free: self.kv_blocks_free,
                kv_blocks_total: KV_BLOCKS_TOTAL,
                kv_block_size: KV_BLOCK_SIZE,
                prefix_cache_hit_rate: 0.2 + 0.5 * rng.random::<f32>(),
                prompt_tokens_per_second: 500.0 + 400.0 * rng.random::<f32>(),
                prefill_speed_tokens_per_second: 900.0 + 400.0 * rng.random::<f32>(),
                generation_tokens_per_second: 150.0 + 100.0 * rng.random::<f32>(),
                prefix_summary: Some(PrefixSummary {
                    block_size: KV_BLOCK_SIZE,
                    block_hashes: self.hashes.clone(),
                    truncated: true,
                }),
                gpu_memory_bytes_total: 0,
                // A CPU worker has no GPU memory, so the bench borrows this field to carry
                // the report's send time (microseconds since the bench epoch) through the
                // replica and the store to the fleet watcher. 0 on the other workers.
                gpu_memory_bytes_used: stamp,
                max_batch_tokens: 2_048,
                mean_step_ms: 20.0 + 10.0 * rng.random::<f32>(),
                queued_prompt_tokens: u64::from(self.queue_depth) * 300,
                max_running_sequences: 64,
            }),
        }
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What one agent saw: how late its ticks fired (milliseconds), inside the window.
struct PopOutcome {
    tick_late_ms: Vec<f64>,
}

/// One simulated PoP agent and what it shares with the others.
struct PopAgent {
    site: Site,
    channel: Channel,
    args: Args,
    window: Window,
    counters: Arc<Counters>,
    rng: Rng,
    stop: watch::Receiver<bool>,
}

/// One PoP agent: Register, open the Report stream, report until `stop`. An error ends
/// the bench: the replica refused a registration or a report.
async fn run_pop(agent: PopAgent) -> anyhow::Result<PopOutcome> {
    let PopAgent {
        site,
        channel,
        args,
        window,
        counters,
        mut rng,
        mut stop,
    } = agent;
    let pop = site.id.clone();
    let mut client = ControlPlaneClient::new(channel)
        .max_decoding_message_size(meridian_proto::MAX_MESSAGE_BYTES);
    let mut sim: Vec<SimWorker> = (0..args.workers_per_pop)
        .map(|i| SimWorker::new(format!("cpu{i}"), &mut rng))
        .collect();
    let registration = pb::RegisterRequest {
        pop_id: site.id.clone(),
        location: Some(pb::Location {
            lat: site.lat,
            lon: site.lon,
        }),
        jurisdiction: site.jurisdiction.clone(),
        gpus: Vec::new(),
        workers: sim
            .iter()
            .enumerate()
            .map(|(i, w)| pb::WorkerEndpoint {
                worker_id: w.worker_id.clone(),
                // Never dialled: nothing routes requests in this bench.
                endpoint: format!("http://127.0.0.1:{}", 1 + i),
                device: "cpu".into(),
                gpu_kind: String::new(),
            })
            .collect(),
        agent_version: "control-scale-bench".into(),
        labels: Default::default(),
    };
    let session = client
        .register(registration)
        .await
        .with_context(|| format!("{pop}: Register refused"))?
        .into_inner()
        .session_id;

    // The replica waits for ReportHello before it answers the stream, so queue it first.
    let (tx, rx) = mpsc::channel(16);
    tx.try_send(pb::PopMessage {
        msg: Some(pb::pop_message::Msg::Hello(pb::ReportHello {
            session_id: session.clone(),
        })),
    })
    .expect("an empty channel takes the hello");
    let mut replies = client
        .report(ReceiverStream::new(rx))
        .await
        .with_context(|| format!("{pop}: Report stream refused"))?
        .into_inner();
    counters.registered.fetch_add(1, Ordering::Relaxed);

    let period = args.interval();
    let phase = Duration::from_micros(rng.random_range(0..(period.as_micros() as u64).max(1)));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
    // An overloaded bench sends fewer reports rather than bursts of late ones.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seq = 0u64;
    let mut tick_late_ms = Vec::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            scheduled = ticker.tick() => {
                let now = Instant::now();
                let measured = window.contains(now);
                if measured {
                    tick_late_ms.push(
                        now.saturating_duration_since(scheduled.into_std()).as_secs_f64() * 1e3,
                    );
                }
                for w in &mut sim {
                    w.step(&mut rng);
                }
                seq += 1;
                let stamp = window.stamp(Instant::now());
                let report = pb::LoadReport {
                    session_id: session.clone(),
                    seq,
                    sent_unix_ms: now_unix_ms(),
                    workers: sim
                        .iter()
                        .enumerate()
                        .map(|(i, w)| w.report(&mut rng, if i == 0 { stamp } else { 0 }))
                        .collect(),
                };
                let msg = pb::PopMessage { msg: Some(pb::pop_message::Msg::Load(report)) };
                match tx.try_send(msg) {
                    Ok(()) if measured => {
                        counters.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // The seq is spent; the replica accepts any higher one next time.
                        if measured {
                            counters.backpressured.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        bail!("{pop}: the Report stream closed under the agent");
                    }
                }
            }
            reply = replies.message() => match reply {
                Ok(Some(pb::ControlMessage { msg: Some(pb::control_message::Msg::Ack(_)) })) => {
                    if window.contains(Instant::now()) {
                        counters.acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Directives: nothing is placed in this bench, so none are expected.
                Ok(Some(_)) => {}
                Ok(None) => bail!("{pop}: the replica ended the Report stream"),
                Err(status) => bail!("{pop}: reports refused: {status}"),
            },
        }
    }
    Ok(PopOutcome { tick_late_ms })
}

/// What the router stand-in saw inside the window.
#[derive(Default)]
struct WatchOutcome {
    /// Report send to watch arrival, milliseconds.
    latencies_ms: Vec<f64>,
    upserts: u64,
    /// Snapshots after the first: the replica resynced a lagging watcher.
    resyncs: u64,
    removed: Vec<String>,
}

/// Watches the fleet from revision 0 until `stop`, timing every stamped `PopUpserted`.
async fn run_watcher(
    channel: Channel,
    window: Window,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<WatchOutcome> {
    let mut client = ControlPlaneClient::new(channel)
        .max_decoding_message_size(meridian_proto::MAX_MESSAGE_BYTES);
    let mut events = client
        .watch_fleet(pb::WatchFleetRequest { from_revision: 0 })
        .await
        .context("WatchFleet refused")?
        .into_inner();
    let mut out = WatchOutcome::default();
    let mut snapshots = 0u64;
    loop {
        let event = tokio::select! {
            _ = stop.changed() => break,
            e = events.message() => e,
        };
        let now = Instant::now();
        let event = match event {
            Ok(Some(e)) => e,
            Ok(None) => bail!("the replica ended WatchFleet"),
            Err(status) => bail!("WatchFleet failed: {status}"),
        };
        match event.event {
            Some(pb::fleet_event::Event::PopUpserted(pop)) if window.contains(now) => {
                out.upserts += 1;
                let stamp = pop
                    .workers
                    .iter()
                    .find(|w| w.worker_id == "cpu0")
                    .and_then(|w| w.load.as_ref())
                    .map_or(0, |l| l.gpu_memory_bytes_used);
                if stamp > 0 {
                    let sent = window.unstamp(stamp);
                    out.latencies_ms
                        .push(now.saturating_duration_since(sent).as_secs_f64() * 1e3);
                }
            }
            Some(pb::fleet_event::Event::Snapshot(_)) => {
                snapshots += 1;
                if snapshots > 1 {
                    out.resyncs += 1;
                }
            }
            Some(pb::fleet_event::Event::PopRemoved(id)) => out.removed.push(id),
            _ => {}
        }
    }
    Ok(out)
}

/// The replica as a child process, killed on drop.
struct Replica {
    child: Child,
    endpoint: String,
    metrics: SocketAddr,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind an ephemeral port")?;
    Ok(l.local_addr()?)
}

/// Starts `meridian control` and waits for its "control plane listening" line.
fn start_replica(args: &Args, etcd: Option<&str>) -> anyhow::Result<Replica> {
    let listen = free_addr()?;
    let metrics = free_addr()?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_meridian"));
    cmd.arg("control")
        .env("MERIDIAN_CONTROL__LISTEN", listen.to_string())
        .env("MERIDIAN_CONTROL__METRICS_LISTEN", metrics.to_string())
        .env(
            "MERIDIAN_CONTROL__REPORT_INTERVAL_MS",
            args.interval().as_millis().to_string(),
        )
        .env(
            "MERIDIAN_CONTROL__STORE__LEASE_TTL_MS",
            LEASE_TTL_MS.to_string(),
        )
        // Hundreds of "PoP registered" lines would bury the results; warnings still show.
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    match etcd {
        Some(endpoint) => cmd.env("MERIDIAN_CONTROL__STORE__KIND", "etcd").env(
            "MERIDIAN_CONTROL__STORE__ENDPOINTS",
            format!("[\"{endpoint}\"]"),
        ),
        None => cmd.env("MERIDIAN_CONTROL__STORE__KIND", "memory"),
    };
    let mut child = cmd.spawn().context("cannot start `meridian control`")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let replica = Replica {
        child,
        endpoint: format!("http://{listen}"),
        metrics,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    // Keeps draining stdout after the line we wait for, so the child never blocks on it.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("control plane listening") => return Ok(replica),
            Ok(_) => continue,
            Err(e) => bail!("`meridian control` did not print its listening line: {e}"),
        }
    }
}

/// CPU time a process has used, in clock ticks (utime + stime, every thread).
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces; the
    // first of them is field 3 (state), so utime (14) and stime (15) are 11 and 12.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// Processes whose CPU the bench reports, with their readings at the window's start.
struct CpuProbe {
    pids: Vec<Option<String>>,
    start: Vec<Option<u64>>,
    at: Instant,
}

impl CpuProbe {
    fn start(pids: Vec<Option<String>>) -> Self {
        let start = pids
            .iter()
            .map(|p| p.as_deref().and_then(cpu_ticks))
            .collect();
        Self {
            pids,
            start,
            at: Instant::now(),
        }
    }

    /// Average cores each process used since `start`.
    fn finish(&self, ticks_per_second: f64) -> Vec<Option<f64>> {
        let elapsed = self.at.elapsed().as_secs_f64();
        self.pids
            .iter()
            .zip(&self.start)
            .map(|(pid, start)| {
                let end = pid.as_deref().and_then(cpu_ticks)?;
                Some(end.saturating_sub((*start)?) as f64 / ticks_per_second / elapsed)
            })
            .collect()
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The replica's `/metrics` lines for the given metric names (summary quantiles).
fn scrape(addr: SocketAddr, names: &[&str]) -> Vec<String> {
    let body = (|| {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            conn,
            "GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        conn.read_to_string(&mut text).ok()?;
        Some(text)
    })()
    .unwrap_or_default();
    body.lines()
        .filter(|l| {
            names.iter().any(|n| l.starts_with(n))
                && ["quantile=\"0.5\"", "quantile=\"0.99\"", "quantile=\"1\""]
                    .iter()
                    .any(|q| l.contains(q))
        })
        .map(str::to_string)
        .collect()
}

fn cores(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |c| format!("{c:.2}"))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let epoch = Instant::now();
    let etcd = match args.store {
        StoreChoice::Etcd => Some(EtcdServer::start().await.context("cannot start etcd")?),
        StoreChoice::Memory => None,
    };
    let etcd_endpoint = etcd.as_ref().map(EtcdServer::endpoint);
    let replica = start_replica(&args, etcd_endpoint.as_deref())?;
    eprintln!(
        "control_scale: replica {} (pid {}) on {} store{}",
        replica.endpoint,
        replica.child.id(),
        args.store.name(),
        etcd_endpoint
            .as_deref()
            .map(|e| format!(" at {e}"))
            .unwrap_or_default()
    );

    let connect = || async {
        Channel::from_shared(replica.endpoint.clone())
            .expect("a valid endpoint")
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", replica.endpoint))
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let setup = Instant::now();
    let window = Window {
        epoch,
        start: setup + Duration::from_secs(args.warmup),
        end: setup + Duration::from_secs(args.warmup + args.seconds),
    };

    // The watcher first, so it sees every registration after its (empty) snapshot.
    let watcher = tokio::spawn(run_watcher(connect().await?, window, stop_rx.clone()));

    let counters = Arc::new(Counters::default());
    let mut channels = Vec::new();
    for _ in 0..args.pops.div_ceil(POPS_PER_CONNECTION) {
        channels.push(connect().await?);
    }
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<anyhow::Result<PopOutcome>>();
    let mut seeder = Rng::seed_from_u64(args.seed);
    for (i, site) in Catalog::builtin().sites()[..args.pops].iter().enumerate() {
        let task = run_pop(PopAgent {
            site: site.clone(),
            channel: channels[i / POPS_PER_CONNECTION].clone(),
            args: args.clone(),
            window,
            counters: counters.clone(),
            rng: Rng::seed_from_u64(seeder.next_u64()),
            stop: stop_rx.clone(),
        });
        let done = done_tx.clone();
        tokio::spawn(async move {
            let _ = done.send(task.await);
        });
    }
    drop(done_tx);

    // A PoP that ends early has been refused: stop at once rather than measure less.
    let early = |r: Option<anyhow::Result<PopOutcome>>| match r {
        Some(Err(e)) => e,
        Some(Ok(_)) | None => anyhow::anyhow!("a simulated PoP stopped before the end"),
    };
    tokio::select! {
        _ = tokio::time::sleep_until(window.start.into()) => {}
        r = done_rx.recv() => return Err(early(r)),
    }
    let registered = counters.registered.load(Ordering::Relaxed);
    if registered < args.pops {
        eprintln!(
            "control_scale: only {registered} of {} PoPs reporting after the {} s warm-up",
            args.pops, args.warmup
        );
    }
    let pids = vec![
        Some(replica.child.id().to_string()),
        etcd.as_ref()
            .and_then(EtcdServer::pid)
            .map(|p| p.to_string()),
        Some("self".to_string()),
    ];
    let probe = CpuProbe::start(pids);
    eprintln!("control_scale: measuring for {} s", args.seconds);
    tokio::select! {
        _ = tokio::time::sleep_until(window.end.into()) => {}
        r = done_rx.recv() => return Err(early(r)),
    }
    let cpu = probe.finish(clock_ticks_per_second());
    let replica_metrics = scrape(
        replica.metrics,
        &[
            "meridian_control_store_seconds",
            "meridian_control_report_lag_seconds",
        ],
    );

    let _ = stop_tx.send(true);
    let mut tick_late_ms = Vec::new();
    while let Some(r) = done_rx.recv().await {
        tick_late_ms.extend(r?.tick_late_ms);
    }
    let seen = watcher.await.context("the watcher panicked")??;

    let secs = args.seconds as f64;
    let mut lat = seen.latencies_ms;
    lat.sort_by(f64::total_cmp);
    tick_late_ms.sort_by(f64::total_cmp);
    let sent = counters.sent.load(Ordering::Relaxed);
    let p99 = percentile(&lat, 0.99);

    println!();
    println!(
        "| store | pops | workers | hz | reports/s offered | fleet events/s | p50 ms | p90 ms | p99 ms | max ms | replica CPU (cores) | etcd CPU (cores) | bench CPU (cores) |"
    );
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    println!(
        "| {} | {} | {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
        args.store.name(),
        args.pops,
        args.pops * args.workers_per_pop,
        args.hz,
        sent as f64 / secs,
        seen.upserts as f64 / secs,
        percentile(&lat, 0.50),
        percentile(&lat, 0.90),
        p99,
        lat.last().copied().unwrap_or(f64::NAN),
        cores(cpu[0]),
        cores(cpu[1]),
        cores(cpu[2]),
    );
    println!();
    println!(
        "acked reports/s {:.0}; reports skipped for a full send buffer {}; latency samples {}; \
         watcher resyncs (snapshots after lag) {}; PoPs removed {}; agent tick lateness p99 {:.1} ms, max {:.1} ms",
        counters.acked.load(Ordering::Relaxed) as f64 / secs,
        counters.backpressured.load(Ordering::Relaxed),
        lat.len(),
        seen.resyncs,
        seen.removed.len(),
        percentile(&tick_late_ms, 0.99),
        tick_late_ms.last().copied().unwrap_or(f64::NAN),
    );
    if !replica_metrics.is_empty() {
        println!("replica metrics (rolling summaries):");
        for line in replica_metrics {
            println!("  {line}");
        }
    }
    let verdict = if p99 < TARGET_P99_MS { "PASS" } else { "FAIL" };
    println!("target p99 < {TARGET_P99_MS:.0} ms: {verdict} (p99 {p99:.1} ms; informational)");
    drop(replica);
    drop(etcd);
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("control_scale: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("control_scale: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! The worker's host CPU per generated token: everything the process does around the
//! device (scheduling, block tables, stop and detokenization, the event channel, the
//! gRPC stream), with the device's work replaced by a fixed wait per step, so it runs on
//! any machine and shows what a GPU worker's CPU goes to (issue 12's target: under 25%
//! of one core per GPU at saturation).
//!
//! The "device" picks each token from a stretch of ordinary English, so the detokenizer
//! sees real text, and never an end-of-generation token. Requests come from `--clients`
//! closed-loop clients (the ShareGPT protocol's 200), each with its own prompt:
//! - `engine`: clients in this process read the engine's event channels directly;
//! - `grpc`: the worker's gRPC service on loopback, clients in a child process (this
//!   binary, `--client URL`) on one HTTP/2 connection as `meridian sim replay` uses.
//!
//! CPU time is the process's (and the step thread's) from `/proc`, over the run.
//!
//! `cargo bench -p meridian-engine --bench host [-- --step-us 5000 --clients 200
//! --requests 1000 --prompt 200 --output 256 --mode engine,grpc --runtime-threads 2]`
//! (the async runtime's threads, as `meridian worker --runtime-threads`; the client
//! child process uses as many).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meridian_engine::backend::{Backend, Batch, Pick};
use meridian_engine::model::ModelConfig;
use meridian_engine::model::checkpoint::Checkpoint;
use meridian_engine::service::WorkerService;
use meridian_engine::slot::WorkerSlot;
use meridian_engine::testing::real_model_path;
use meridian_engine::{Engine, EngineConfig, EngineError, Event, Input, Request, SamplingParams};
use meridian_proto::worker::v1 as pb;
use meridian_proto::worker::v1::worker_client::WorkerClient;
use meridian_proto::worker::v1::worker_server::WorkerServer;

const MODEL_ID: &str = "host-bench";

/// Text the device "generates", cycled by position.
const TEXT: &str = "The harbour town woke slowly. Fishing boats came in with the tide, \
their crews calling prices across the water while gulls circled the nets. In the square \
the baker opened his shutters, and the smell of bread drifted down to the quay, where \
children raced between crates of mackerel and coils of rope. Nobody hurried; the sea \
would decide the day, as it always had, and the old men on the wall argued about the \
weather with the confidence of people who had been wrong about it for sixty years. ";

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}: cannot parse {v:?}"))
        })
        .unwrap_or(default)
}

/// A device whose step is a wait: tokens come from `text` by position.
struct WaitDevice {
    config: ModelConfig,
    blocks: usize,
    step: Duration,
    text: Vec<u32>,
}

impl Backend for WaitDevice {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn num_kv_blocks(&self) -> usize {
        self.blocks
    }

    fn block_size(&self) -> usize {
        16
    }

    fn weight_bytes(&self) -> usize {
        0
    }

    fn step(&mut self, _batch: &Batch<'_>, _logits: &mut [f32]) -> Result<(), EngineError> {
        Err(EngineError::Config("the wait device only picks".into()))
    }

    fn picks_on_device(&self) -> bool {
        true
    }

    fn step_pick(
        &mut self,
        batch: &Batch<'_>,
        _rows: &[Pick],
        picks: &mut [(u32, f32)],
    ) -> Result<(), EngineError> {
        std::thread::sleep(self.step);
        for (pick, s) in picks.iter_mut().zip(batch.seqs.iter().filter(|s| s.logits)) {
            *pick = (self.text[(s.start + s.len) % self.text.len()], -1.0);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("wait device ({:?} per step)", self.step)
    }
}

#[derive(Clone, Copy)]
struct Load {
    clients: usize,
    requests: usize,
    prompt: usize,
    output: u32,
}

/// The prompt of request `i`: ordinary text, a different stretch for each request so
/// the prefix cache does not serve it.
fn prompt_of(text: &[u32], i: usize, len: usize) -> Vec<u32> {
    (0..len).map(|j| text[(i * 7 + j) % text.len()]).collect()
}

/// CPU seconds of this process and of its `meridian-engine` thread so far.
fn cpu_seconds() -> (f64, f64) {
    // Fields 14 and 15 (utime, stime) of /proc/*/stat, in USER_HZ = 100 ticks a second.
    fn ticks(stat: &str) -> f64 {
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) as f64 / 100.0
    }
    let process = ticks(&std::fs::read_to_string("/proc/self/stat").unwrap());
    let mut engine = 0.0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == "meridian-engine" {
            engine += ticks(&std::fs::read_to_string(task.path().join("stat")).unwrap());
        }
    }
    (process, engine)
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        max_running: 256,
        max_batch_tokens: 2048,
        ..EngineConfig::default()
    }
}

fn start_engine(step: Duration) -> (Arc<Engine>, Vec<u32>) {
    let path = real_model_path();
    let ckpt = Checkpoint::open(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (fetch it with `meridian models pull`)",
            path.display()
        )
    });
    let tokenizer = Arc::new(ckpt.tokenizer().unwrap());
    let text = tokenizer.encode(&TEXT.repeat(4), false).unwrap();
    let device = WaitDevice {
        config: ckpt.config().unwrap(),
        blocks: 64 * 1024,
        step,
        text: text.clone(),
    };
    let engine = Engine::start(Box::new(device), tokenizer, &engine_config(), path);
    (Arc::new(engine), text)
}

/// Runs requests `0..load.requests` from `load.clients` closed-loop clients (each starts
/// its next request when its last one ends); `one(i)` runs request `i` and returns the
/// tokens it received. Returns the tokens of all.
async fn closed_loop<F, Fut>(load: Load, one: F) -> u64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = u64> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..load.clients)
        .map(|_| {
            let (one, next) = (one.clone(), next.clone());
            tokio::spawn(async move {
                let mut tokens = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= load.requests {
                        return tokens;
                    }
                    tokens += one(i).await;
                }
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

/// Runs `load` through the engine's channels; returns the tokens generated.
async fn drive_engine(engine: Arc<Engine>, text: Arc<Vec<u32>>, load: Load) -> u64 {
    closed_loop(load, move |i| {
        let request = Request {
            input: Input::Tokens(prompt_of(&text, i, load.prompt)),
            sampling: SamplingParams::default(),
            max_tokens: load.output,
            stop: Vec::new(),
            logprobs: false,
            ignore_eos: true,
        };
        let mut events = engine.submit(request).unwrap();
        async move {
            let mut tokens = 0;
            while let Some(event) = events.recv().await {
                if let Event::Token { .. } = event {
                    tokens += 1;
                }
            }
            tokens
        }
    })
    .await
}

/// The client side of `grpc` mode (a child process): runs `load` against `url`, prints
/// the tokens received.
async fn client(url: String, text: Vec<u32>, load: Load) {
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let total = closed_loop(load, move |i| {
        let mut client = WorkerClient::new(channel.clone());
        let request = pb::GenerateRequest {
            request_id: format!("host-{i}"),
            model: MODEL_ID.into(),
            input: Some(pb::generate_request::Input::TokenIds(pb::TokenIds {
                ids: prompt_of(&text, i, load.prompt),
            })),
            sampling: Some(pb::SamplingParams::default()),
            max_tokens: load.output,
            ignore_eos: true,
            ..Default::default()
        };
        async move {
            let mut stream = client.generate(request).await.unwrap().into_inner();
            let mut tokens = 0;
            while let Some(chunk) = stream.message().await.unwrap() {
                tokens += chunk.token_ids.len() as u64;
            }
            tokens
        }
    })
    .await;
    println!("{total}");
}

fn report(mode: &str, tokens: u64, wall: f64, cpu: (f64, f64), step: Duration) {
    let per_token = |s: f64| s * 1e6 / tokens as f64;
    println!(
        "{mode:>6}: {tokens} tokens in {wall:.2} s = {:.0} tok/s; process CPU {:.2} s = {:.0}% of one core ({:.2} us/token), step thread {:.2} s ({:.2} us/token); device wait {} us/step",
        tokens as f64 / wall,
        cpu.0,
        100.0 * cpu.0 / wall,
        per_token(cpu.0),
        cpu.1,
        per_token(cpu.1),
        step.as_micros()
    );
}

fn main() {
    let load = Load {
        clients: arg("--clients", 200),
        requests: arg("--requests", 1000),
        prompt: arg("--prompt", 200),
        output: arg("--output", 256),
    };
    let step = Duration::from_micros(arg("--step-us", 5000));
    // As `meridian worker --runtime-threads` (default 2).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(arg("--runtime-threads", 2))
        .enable_all()
        .build()
        .unwrap();
    let url: String = arg("--client", String::new());
    if !url.is_empty() {
        let ckpt = Checkpoint::open(&real_model_path()).unwrap();
        let text = ckpt
            .tokenizer()
            .unwrap()
            .encode(&TEXT.repeat(4), false)
            .unwrap();
        rt.block_on(client(url, text, load));
        return;
    }
    let modes: String = arg("--mode", "engine,grpc".to_string());
    for mode in modes.split(',') {
        let (engine, text) = start_engine(step);
        let server = match mode {
            "engine" => None,
            "grpc" => Some(serve(&rt, engine.clone())),
            other => panic!("unknown mode {other:?} (engine, grpc)"),
        };
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let tokens = match server {
            // A clone: the step thread must outlive the second reading of its CPU time.
            None => rt.block_on(drive_engine(engine.clone(), Arc::new(text), load)),
            Some(addr) => run_client(addr, load),
        };
        let c1 = cpu_seconds();
        report(
            mode,
            tokens,
            t0.elapsed().as_secs_f64(),
            (c1.0 - c0.0, c1.1 - c0.1),
            step,
        );
    }
}

/// Serves `engine` through the Worker gRPC service on loopback; its address.
fn serve(rt: &tokio::runtime::Runtime, engine: Arc<Engine>) -> std::net::SocketAddr {
    let slot = WorkerSlot::with_engine(engine_config(), engine, MODEL_ID.into());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let service = WorkerServer::new(WorkerService::new(slot))
        .max_decoding_message_size(meridian_proto::MAX_MESSAGE_BYTES);
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

/// Runs `load` from a child process (this binary, `--client`) against `addr`; the
/// tokens it received.
fn run_client(addr: std::net::SocketAddr, load: Load) -> u64 {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--client", &format!("http://{addr}")])
        .args(["--clients", &load.clients.to_string()])
        .args(["--requests", &load.requests.to_string()])
        .args(["--prompt", &load.prompt.to_string()])
        .args(["--output", &load.output.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

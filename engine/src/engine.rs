//! The engine: a model, its tokenizer, the scheduler and a backend, driven by one
//! dedicated thread that runs steps back to back while there is work.
//!
//! Callers submit requests from any thread (the gRPC service, `meridian generate`) and
//! read events from a channel. Tokenizing and validating happen in the caller; the step
//! thread only schedules, computes, samples and detokenizes. Dropping the event
//! receiver cancels the sequence: its KV blocks are freed before the next step.
//!
//! An engine started inside a tokio runtime hands each step's events to that runtime in
//! one batch, and a task there delivers them: the step thread wakes the runtime once a
//! step instead of once per token (a wake from outside a runtime goes through its shared
//! queue and may wake a parked thread each time).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, Batch, BatchSeq};
use crate::kv::BlockManager;
use crate::model::ModelConfig;
use crate::model::checkpoint::Checkpoint;
use crate::sampling::{Sampler, SamplingParams, StopMatcher};
use crate::scheduler::{Scheduler, SchedulerConfig, SeqId, StepPlan};
use crate::tokenizer::{ChatMessage, IncrementalDecoder, Tokenizer};
use crate::{EngineConfig, EngineError};

#[cfg(feature = "cuda")]
fn load_cuda(
    checkpoint: &Checkpoint,
    model: ModelConfig,
    config: &EngineConfig,
    device: usize,
    progress: &mut dyn FnMut(f32),
) -> Result<Box<dyn Backend>, EngineError> {
    use crate::backend::cuda::{CudaBackend, CudaOptions, Weights};
    let weights = match config.synthetic {
        Some(_) => Weights::Synthetic(0x6d65_7269_6469_616e),
        None => Weights::File(checkpoint.weights()),
    };
    let opts = CudaOptions {
        device,
        block_size: config.kv_block_size,
        kv_blocks: config.kv_blocks,
        memory_fraction: config.gpu_memory_fraction,
        max_tokens: config.max_batch_tokens,
        max_seqs: config.max_running,
        graphs: config.cuda_graphs,
    };
    Ok(Box::new(CudaBackend::load(
        weights, model, &opts, progress,
    )?))
}

#[cfg(not(feature = "cuda"))]
fn load_cuda(
    _checkpoint: &Checkpoint,
    _model: ModelConfig,
    config: &EngineConfig,
    _device: usize,
    _progress: &mut dyn FnMut(f32),
) -> Result<Box<dyn Backend>, EngineError> {
    Err(EngineError::Config(format!(
        "device {:?}: this build has no CUDA backend (build with the `cuda` feature)",
        config.device
    )))
}

/// What to generate from.
#[derive(Debug, Clone)]
pub enum Input {
    /// Raw text (completions API); special tokens written in it are parsed.
    Text(String),
    /// Chat messages, rendered with the model's chat template.
    Chat {
        messages: Vec<ChatMessage>,
        add_generation_prompt: bool,
    },
    /// Token ids as they are.
    Tokens(Vec<u32>),
}

/// One generation request.
#[derive(Debug, Clone)]
pub struct Request {
    pub input: Input,
    pub sampling: SamplingParams,
    /// Tokens to generate at most (at least 1).
    pub max_tokens: u32,
    /// Generation stops before any of these strings; they are not returned.
    pub stop: Vec<String>,
    /// Return the log-probability of each generated token.
    pub logprobs: bool,
    /// Keep generating past end-of-generation tokens.
    pub ignore_eos: bool,
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The caller went away.
    Cancelled,
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens served from the prefix cache.
    pub cached_prompt_tokens: u32,
}

/// What a request's channel carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// One generated token. `text` is the new text it completes (may be empty while a
    /// multi-byte character or a possible stop string is held back).
    Token {
        id: u32,
        text: String,
        logprob: Option<f32>,
    },
    /// The last event of a request.
    Finished {
        reason: FinishReason,
        usage: Usage,
        text: String,
    },
}

/// Load and throughput figures, refreshed every step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    pub waiting: usize,
    pub running: usize,
    pub kv_blocks_free: usize,
    pub kv_blocks_total: usize,
    pub kv_block_size: usize,
    /// Prompt tokens found in the prefix cache over prompt tokens looked up, since start.
    pub prefix_hit_rate: f32,
    /// Over the last few seconds.
    pub prompt_tokens_per_second: f32,
    /// Prompt tokens per second of step time in steps that prefilled (0: none yet).
    pub prefill_speed: f32,
    pub generation_tokens_per_second: f32,
    /// Mean step time over recent steps, milliseconds.
    pub mean_step_ms: f32,
    pub steps: u64,
    pub preemptions: u64,
    /// Most recently used cached block hashes (the prefix summary for routers).
    pub cached_block_hashes: Vec<u64>,
}

enum Command {
    Add(Box<NewSeq>),
}

struct NewSeq {
    id: SeqId,
    prompt: Vec<u32>,
    request: Request,
    events: UnboundedSender<Event>,
}

/// The prompt tokens `tokenizer` makes of `input`: the engine's own rule, also used by
/// routers to hash a prompt's blocks exactly as the worker will.
pub fn prompt_tokens(tokenizer: &Tokenizer, input: &Input) -> Result<Vec<u32>, EngineError> {
    let tokens = match input {
        Input::Text(text) => tokenizer.encode(text, true)?,
        Input::Chat {
            messages,
            add_generation_prompt,
        } => {
            let text = tokenizer.apply_chat_template(messages, *add_generation_prompt)?;
            tokenizer.encode(&text, true)?
        }
        Input::Tokens(ids) => ids.clone(),
    };
    Ok(tokens)
}

/// A running engine. Cheap to share behind an `Arc`.
pub struct Engine {
    commands: mpsc::Sender<Command>,
    next_id: AtomicU64,
    tokenizer: Arc<Tokenizer>,
    config: ModelConfig,
    model_path: PathBuf,
    total_blocks: usize,
    block_size: usize,
    max_running: usize,
    stats: Arc<Mutex<EngineStats>>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    describe: String,
    weight_bytes: usize,
    device_memory: Option<(u64, u64)>,
}

impl Engine {
    /// Loads a GGUF model onto the CPU backend and starts the step thread.
    pub fn load(path: &Path, config: &EngineConfig) -> Result<Self, EngineError> {
        Self::load_with_progress(path, config, &mut |_| {})
    }

    /// As [`Engine::load`], reporting the fraction of layers loaded (0..=1).
    pub fn load_with_progress(
        path: &Path,
        config: &EngineConfig,
        progress: &mut dyn FnMut(f32),
    ) -> Result<Self, EngineError> {
        config.validate()?;
        let checkpoint = Checkpoint::open(path)?;
        let tokenizer = Arc::new(checkpoint.tokenizer()?);
        let model = match &config.synthetic {
            Some(name) => ModelConfig::synthetic(name)?,
            None => checkpoint.config()?,
        };
        let backend: Box<dyn Backend> = match config.gpu_ordinal()? {
            None => {
                if config.synthetic.is_some() {
                    return Err(EngineError::Config(
                        "synthetic models run on a GPU only (device = \"cuda\")".into(),
                    ));
                }
                let num_blocks = if config.kv_blocks > 0 {
                    config.kv_blocks
                } else {
                    let per_block = model.kv_bytes_per_token() * config.kv_block_size;
                    (config.kv_memory_bytes as usize / per_block.max(1)).max(1)
                };
                Box::new(CpuBackend::load(
                    checkpoint.weights(),
                    model.clone(),
                    config.kv_block_size,
                    num_blocks,
                    config.threads,
                    progress,
                )?)
            }
            Some(device) => load_cuda(&checkpoint, model, config, device, progress)?,
        };
        Ok(Self::start(backend, tokenizer, config, path.to_path_buf()))
    }

    /// Starts the step thread over a loaded backend.
    pub fn start(
        backend: Box<dyn Backend>,
        tokenizer: Arc<Tokenizer>,
        config: &EngineConfig,
        model_path: PathBuf,
    ) -> Self {
        let model = backend.config().clone();
        let weight_bytes = backend.weight_bytes();
        let total_blocks = backend.num_kv_blocks();
        let block_size = backend.block_size();
        let describe = backend.describe();
        let device_memory = backend.device_memory();
        let scheduler = Scheduler::new(
            SchedulerConfig {
                max_batch_tokens: config.max_batch_tokens,
                max_running: config.max_running,
            },
            BlockManager::new(total_blocks, block_size),
        );
        let stats = Arc::new(Mutex::new(EngineStats {
            kv_blocks_free: total_blocks,
            kv_blocks_total: total_blocks,
            kv_block_size: block_size,
            ..Default::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let profile = config.step_profile.as_deref().and_then(|path| {
            match StepProfile::open(path, backend.token_tile()) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot open the step profile; not recording");
                    None
                }
            }
        });
        let mut worker = StepLoop {
            backend,
            scheduler,
            tokenizer: tokenizer.clone(),
            seqs: HashMap::new(),
            commands: rx,
            stats: stats.clone(),
            stop: stop.clone(),
            logits: Vec::new(),
            rows: Vec::new(),
            picks: Vec::new(),
            tokens: Vec::new(),
            rates: Rates::default(),
            profile,
            outbox: Vec::new(),
            dispatch: spawn_dispatcher(),
        };
        let thread = std::thread::Builder::new()
            .name("meridian-engine".into())
            .spawn(move || worker.run())
            .ok();
        Self {
            commands: tx,
            next_id: AtomicU64::new(1),
            tokenizer,
            config: model,
            model_path,
            total_blocks,
            block_size,
            max_running: config.max_running,
            stats,
            stop,
            thread: Mutex::new(thread),
            describe,
            weight_bytes,
            device_memory,
        }
    }

    /// The GPU's memory (total, in use by the worker), bytes; `None` on the CPU.
    pub fn device_memory(&self) -> Option<(u64, u64)> {
        self.device_memory
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    pub fn model_config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn model_path(&self) -> &Path {
        &self.model_path
    }

    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    pub fn describe(&self) -> &str {
        &self.describe
    }

    pub fn max_running(&self) -> usize {
        self.max_running
    }

    pub fn stats(&self) -> EngineStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Turns a request's input into prompt tokens.
    pub fn prompt_tokens(&self, input: &Input) -> Result<Vec<u32>, EngineError> {
        prompt_tokens(&self.tokenizer, input)
    }

    /// Validates and queues a request. Errors are the caller's fault (bad input) and say
    /// which value is wrong.
    pub fn submit(&self, request: Request) -> Result<UnboundedReceiver<Event>, EngineError> {
        let prompt = self.prompt_tokens(&request.input)?;
        let invalid = |m: String| Err(EngineError::InvalidRequest(m));
        if prompt.is_empty() {
            return invalid("the prompt is empty".into());
        }
        let vocab = self.config.vocab_size;
        if let Some(t) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return invalid(format!(
                "token id {t} is outside the vocabulary (size {vocab})"
            ));
        }
        if request.max_tokens == 0 {
            return invalid("max_tokens must be at least 1".into());
        }
        let ctx = self.config.context_length;
        let total = prompt.len() + request.max_tokens as usize;
        if total > ctx {
            return invalid(format!(
                "this model's maximum context length is {ctx} tokens, but the request needs {total} \
                 ({} in the prompt, {} max_tokens)",
                prompt.len(),
                request.max_tokens
            ));
        }
        let blocks_needed = total.div_ceil(self.block_size);
        if blocks_needed > self.total_blocks {
            return invalid(format!(
                "the request needs {blocks_needed} KV blocks ({total} tokens) but this worker has {}",
                self.total_blocks
            ));
        }
        request.sampling.validate()?;
        StopMatcher::new(&request.stop)?;
        let (tx, rx) = unbounded_channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.commands
            .send(Command::Add(Box::new(NewSeq {
                id,
                prompt,
                request,
                events: tx,
            })))
            .map_err(|_| EngineError::Stopped)?;
        Ok(rx)
    }

    /// Generates to the end and returns the text, its token ids and the usage: for
    /// tests, tools and `meridian generate`.
    pub fn generate_blocking(&self, request: Request) -> Result<Completion, EngineError> {
        let mut rx = self.submit(request)?;
        let mut out = Completion::default();
        while let Some(event) = rx.blocking_recv() {
            match event {
                Event::Token { id, text, logprob } => {
                    out.token_ids.push(id);
                    out.text.push_str(&text);
                    out.logprobs.extend(logprob);
                }
                Event::Finished {
                    reason,
                    usage,
                    text,
                } => {
                    out.text.push_str(&text);
                    out.finish = Some(reason);
                    out.usage = usage;
                    return Ok(out);
                }
            }
        }
        Err(EngineError::Stopped)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut t) = self.thread.lock()
            && let Some(handle) = t.take()
        {
            // Wake the loop if it is blocked waiting for work.
            let (tx, _) = mpsc::channel::<Command>();
            drop(std::mem::replace(&mut self.commands, tx));
            let _ = handle.join();
        }
    }
}

/// A whole generation, for blocking callers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub finish: Option<FinishReason>,
    pub usage: Usage,
}

struct Active {
    request: Request,
    events: UnboundedSender<Event>,
    sampler: Sampler,
    decoder: IncrementalDecoder,
    stop: StopMatcher,
    n_prompt: usize,
    generated: u32,
}

#[derive(Default)]
struct Rates {
    window_start: Option<Instant>,
    prompt_tokens: u64,
    generated_tokens: u64,
    step_time: Duration,
    steps: u64,
    /// Prompt tokens and time of the steps that prefilled, for the prefill speed.
    prefill_tokens: u64,
    prefill_time: Duration,
    last: (f32, f32, f32),
    /// Prefill speed of the last window that prefilled; kept while idle.
    prefill_speed: f32,
}

impl Rates {
    const WINDOW: Duration = Duration::from_secs(2);

    fn record(&mut self, prompt: usize, generated: usize, took: Duration) -> (f32, f32, f32) {
        let now = Instant::now();
        let start = *self.window_start.get_or_insert(now);
        self.prompt_tokens += prompt as u64;
        self.generated_tokens += generated as u64;
        self.step_time += took;
        self.steps += 1;
        if prompt > 0 {
            self.prefill_tokens += prompt as u64;
            self.prefill_time += took;
        }
        let elapsed = now.duration_since(start);
        // The first prefill sets the speed at once; later windows replace it.
        if self.prefill_speed == 0.0 && !self.prefill_time.is_zero() {
            self.prefill_speed = self.prefill_tokens as f32 / self.prefill_time.as_secs_f32();
        }
        if elapsed >= Self::WINDOW {
            let secs = elapsed.as_secs_f32();
            self.last = (
                self.prompt_tokens as f32 / secs,
                self.generated_tokens as f32 / secs,
                self.step_time.as_secs_f32() * 1000.0 / self.steps as f32,
            );
            if !self.prefill_time.is_zero() {
                self.prefill_speed = self.prefill_tokens as f32 / self.prefill_time.as_secs_f32();
            }
            *self = Rates {
                last: self.last,
                prefill_speed: self.prefill_speed,
                window_start: Some(now),
                ..Default::default()
            };
        }
        self.last
    }
}

struct StepLoop {
    backend: Box<dyn Backend>,
    scheduler: Scheduler,
    tokenizer: Arc<Tokenizer>,
    seqs: HashMap<SeqId, Active>,
    commands: mpsc::Receiver<Command>,
    stats: Arc<Mutex<EngineStats>>,
    stop: Arc<AtomicBool>,
    logits: Vec<f32>,
    /// A device-sampled step's settings per logits row, and its tokens with their
    /// log-probabilities.
    rows: Vec<crate::backend::Pick>,
    picks: Vec<(u32, f32)>,
    tokens: Vec<u32>,
    rates: Rates,
    profile: Option<StepProfile>,
    /// The events of the step in progress, in order.
    outbox: Outbox,
    /// The delivering task's channel (see the module docs); `None`: deliver directly.
    dispatch: Option<UnboundedSender<Outbox>>,
}

/// One step's events.
type Outbox = Vec<(UnboundedSender<Event>, Event)>;

/// Hands each event to its request's channel (a request that went away is skipped).
fn deliver(events: Outbox) {
    for (to, event) in events {
        let _ = to.send(event);
    }
}

/// A task on the current tokio runtime, if there is one, that delivers the step
/// thread's batches; its channel.
fn spawn_dispatcher() -> Option<UnboundedSender<Outbox>> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let (tx, mut rx) = unbounded_channel::<Outbox>();
    runtime.spawn(async move {
        while let Some(events) = rx.recv().await {
            deliver(events);
        }
    });
    Some(tx)
}

/// One line per engine step, appended to a CSV file: what the simulator's engine model
/// is fitted on. Buffered; a write error stops the profile, never the engine.
struct StepProfile {
    out: std::io::BufWriter<std::fs::File>,
    /// The backend's [`crate::backend::Backend::token_tile`], on every line.
    tile: usize,
}

impl StepProfile {
    /// The columns, in order.
    const HEADER: &'static str = "unix_us,sequences,prefill_sequences,prefill_tokens,\
        decode_tokens,context_tokens,step_us,prefill_attention,tile_tokens";

    /// Opens `path` to append to; a file that holds lines of another format is refused
    /// (its lines and ours would not parse as one profile).
    fn open(path: &std::path::Path, tile: usize) -> std::io::Result<Self> {
        use std::io::{BufRead, Write};
        let fresh = std::fs::metadata(path).map_or(true, |m| m.len() == 0);
        if !fresh {
            let mut first = String::new();
            std::io::BufReader::new(std::fs::File::open(path)?).read_line(&mut first)?;
            if first.trim_end() != Self::HEADER {
                return Err(std::io::Error::other(
                    "the file holds a profile of another format; name a new file",
                ));
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let mut out = std::io::BufWriter::new(file);
        if fresh {
            writeln!(out, "{}", Self::HEADER)?;
        }
        Ok(Self { out, tile })
    }

    fn record(&mut self, plan: &StepPlan, took: Duration) -> std::io::Result<()> {
        use std::io::Write;
        let (mut prefill_seqs, mut prefill, mut decode, mut context) = (0, 0, 0, 0);
        let mut attention = 0;
        for c in &plan.chunks {
            // A one-token chunk that returns logits is a decode step of its sequence.
            if c.len == 1 && c.logits && c.start > 0 {
                decode += 1;
            } else {
                prefill_seqs += 1;
                prefill += c.len;
                attention += crate::scheduler::attention_pairs(c.start, c.len);
            }
            context += c.start + c.len;
        }
        let unix_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        writeln!(
            self.out,
            "{unix_us},{},{prefill_seqs},{prefill},{decode},{context},{},{attention},{}",
            plan.chunks.len(),
            took.as_micros(),
            self.tile
        )
    }

    fn flush(&mut self) {
        use std::io::Write;
        let _ = self.out.flush();
    }
}

impl StepLoop {
    fn run(&mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            if !self.scheduler.has_work() {
                // Idle: what the profile holds reaches the file before the wait.
                if let Some(profile) = self.profile.as_mut() {
                    profile.flush();
                }
                match self.commands.recv_timeout(Duration::from_millis(200)) {
                    Ok(cmd) => self.handle(cmd),
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
            while let Ok(cmd) = self.commands.try_recv() {
                self.handle(cmd);
            }
            self.drop_cancelled();
            if let Err(e) = self.step() {
                tracing::error!(error = %e, "engine step failed; failing its requests");
                let ids: Vec<SeqId> = self.seqs.keys().copied().collect();
                for id in ids {
                    self.finish(id, FinishReason::Cancelled, String::new());
                }
            }
            self.send_events();
        }
    }

    /// Sends the step's events: to the runtime's delivering task, or (without one, or
    /// once that runtime is gone) straight to each request.
    fn send_events(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.outbox);
        match &self.dispatch {
            Some(to) => {
                if let Err(unsent) = to.send(events) {
                    self.dispatch = None;
                    deliver(unsent.0);
                }
            }
            None => deliver(events),
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Add(new) => {
                let NewSeq {
                    id,
                    prompt,
                    request,
                    events,
                } = *new;
                let vocab = self.backend.config().vocab_size;
                let fallback_seed = rand::random::<u64>();
                let active = Active {
                    sampler: Sampler::new(request.sampling.clone(), vocab, fallback_seed),
                    decoder: IncrementalDecoder::new(
                        self.tokenizer.clone(),
                        &prompt[prompt.len().saturating_sub(5)..],
                    ),
                    // Validated in `submit`.
                    stop: StopMatcher::new(&request.stop).unwrap_or_else(|_| StopMatcher::empty()),
                    n_prompt: prompt.len(),
                    generated: 0,
                    request,
                    events,
                };
                self.seqs.insert(id, active);
                self.scheduler.add(id, prompt);
            }
        }
    }

    /// Frees the sequences whose callers stopped listening.
    fn drop_cancelled(&mut self) {
        let gone: Vec<SeqId> = self
            .seqs
            .iter()
            .filter(|(_, a)| a.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.seqs.remove(&id);
            self.scheduler.remove(id);
        }
    }

    fn step(&mut self) -> Result<(), EngineError> {
        let plan = self.scheduler.schedule();
        if plan.is_empty() {
            if let Some(profile) = self.profile.as_mut() {
                profile.flush();
            }
            self.publish(0, 0, Duration::ZERO);
            return Ok(());
        }
        let started = Instant::now();
        self.tokens.clear();
        for c in &plan.chunks {
            let tokens = self.scheduler.tokens(c.seq).unwrap_or_default();
            self.tokens
                .extend_from_slice(&tokens[c.start..c.start + c.len]);
        }
        let seqs: Vec<BatchSeq<'_>> = plan
            .chunks
            .iter()
            .map(|c| BatchSeq {
                start: c.start,
                len: c.len,
                block_table: self.scheduler.block_table(c.seq),
                logits: c.logits,
            })
            .collect();
        let batch = Batch {
            tokens: &self.tokens,
            seqs: &seqs,
        };
        let vocab = self.backend.config().vocab_size;
        let n_logits = batch.num_logits();
        // A backend that samples on its device returns only the tokens.
        let picked = self.backend.picks_on_device();
        if picked {
            self.rows.clear();
            for c in plan.chunks.iter().filter(|c| c.logits) {
                let pick = self
                    .seqs
                    .get_mut(&c.seq)
                    .map_or(crate::backend::Pick::GREEDY, |a| a.sampler.device_pick());
                self.rows.push(pick);
            }
            self.picks.clear();
            self.picks.resize(n_logits, (0, 0.0));
            self.backend
                .step_pick(&batch, &self.rows, &mut self.picks)?;
        } else {
            if self.logits.len() < n_logits * vocab {
                self.logits.resize(n_logits * vocab, 0.0);
            }
            self.backend.step(&batch, &mut self.logits)?;
        }
        drop(seqs);
        self.scheduler.complete(&plan);

        let mut prompt_tokens = 0;
        let mut generated = 0;
        let logits = std::mem::take(&mut self.logits);
        let picks = std::mem::take(&mut self.picks);
        for (row, c) in plan.chunks.iter().filter(|c| c.logits).enumerate() {
            generated += 1;
            if picked {
                let (token, logprob) = picks[row];
                self.on_token(c.seq, token, logprob);
            } else {
                self.on_logits(c.seq, &logits[row * vocab..(row + 1) * vocab]);
            }
        }
        self.logits = logits;
        self.picks = picks;
        for c in &plan.chunks {
            if c.len > 1 || !c.logits {
                prompt_tokens += c.len;
            }
        }
        let took = started.elapsed();
        if let Some(profile) = self.profile.as_mut()
            && let Err(e) = profile.record(&plan, took)
        {
            tracing::warn!(error = %e, "step profile write failed; no longer recording");
            self.profile = None;
        }
        self.publish(prompt_tokens, generated, took);
        Ok(())
    }

    fn on_logits(&mut self, id: SeqId, logits: &[f32]) {
        let Some(active) = self.seqs.get_mut(&id) else {
            return;
        };
        let (token, logprob) = active.sampler.sample(logits);
        self.on_token(id, token, logprob);
    }

    /// A sequence's next token, sampled here or picked by the backend.
    fn on_token(&mut self, id: SeqId, token: u32, logprob: f32) {
        let Some(active) = self.seqs.get_mut(&id) else {
            return;
        };
        active.generated += 1;
        let end_of_generation =
            !active.request.ignore_eos && self.tokenizer.is_end_of_generation(token);
        if end_of_generation {
            let tail = active.stop.flush_after(active.decoder.flush());
            self.finish(id, FinishReason::Stop, tail);
            return;
        }
        let delta = active.decoder.push(token);
        let (text, stopped) = active.stop.push(&delta);
        let logprob = active.request.logprobs.then_some(logprob);
        self.outbox.push((
            active.events.clone(),
            Event::Token {
                id: token,
                text,
                logprob,
            },
        ));
        if stopped {
            self.finish(id, FinishReason::Stop, String::new());
        } else if active.generated >= active.request.max_tokens {
            let tail = active.stop.flush_after(active.decoder.flush());
            self.finish(id, FinishReason::Length, tail);
        } else {
            self.scheduler.append(id, token);
        }
    }

    fn finish(&mut self, id: SeqId, reason: FinishReason, text: String) {
        if let Some(active) = self.seqs.remove(&id) {
            let usage = Usage {
                prompt_tokens: active.n_prompt as u32,
                completion_tokens: active.generated,
                cached_prompt_tokens: self.scheduler.cached_prompt_tokens(id) as u32,
            };
            self.outbox.push((
                active.events,
                Event::Finished {
                    reason,
                    usage,
                    text,
                },
            ));
        }
        self.scheduler.remove(id);
    }

    fn publish(&mut self, prompt_tokens: usize, generated: usize, took: Duration) {
        let (p_rate, g_rate, step_ms) = if took.is_zero() {
            self.rates.last
        } else {
            self.rates.record(prompt_tokens, generated, took)
        };
        let blocks = self.scheduler.blocks();
        let prefix = blocks.stats();
        if let Ok(mut s) = self.stats.lock() {
            s.waiting = self.scheduler.num_waiting();
            s.running = self.scheduler.num_running();
            s.kv_blocks_free = blocks.available_blocks();
            s.prefix_hit_rate = if prefix.queried_tokens == 0 {
                0.0
            } else {
                prefix.hit_tokens as f32 / prefix.queried_tokens as f32
            };
            s.prompt_tokens_per_second = p_rate;
            s.prefill_speed = self.rates.prefill_speed;
            s.generation_tokens_per_second = g_rate;
            s.mean_step_ms = step_ms;
            if !took.is_zero() {
                s.steps += 1;
            }
            s.preemptions = self.scheduler.preemptions();
            // Routers score on this summary: refresh it every 16 steps under load, and
            // whenever the engine goes idle, so a finished prompt's blocks are listed
            // before the next request asks for them.
            if s.steps % 16 == 0 || (s.waiting == 0 && s.running == 0) {
                s.cached_block_hashes = blocks.cached_hashes(256);
            }
        }
    }
}

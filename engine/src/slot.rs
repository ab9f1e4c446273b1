//! A worker slot: the one model a worker serves, loaded, unloaded and drained at runtime
//! by the PoP agent as the control plane directs.
//!
//! The slot's state lives behind a mutex that is held only to read or switch it, never
//! across loading weights or joining the step thread, so `Generate` and `Health` stay
//! quick while a model loads. Load progress is an atomic the loader writes as layers
//! arrive.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use meridian_proto::worker::v1 as pb;
use pb::WorkerState as State;

use crate::{Engine, EngineConfig, EngineError};

/// How often `drain` looks at the engine's queue.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// The model a worker serves, and where it is in its lifecycle.
pub struct WorkerSlot {
    config: EngineConfig,
    inner: Mutex<Inner>,
    /// Fraction of the model loaded, as `f32` bits.
    progress: AtomicU32,
    /// Generate calls admitted and not yet finished; a request is invisible in the
    /// engine's stats until its step thread picks it up, so drain counts these too.
    in_flight: Arc<AtomicUsize>,
}

struct Inner {
    state: State,
    /// Resident or loading model.
    model_id: Option<String>,
    /// Set while WARM or DRAINING.
    engine: Option<Arc<Engine>>,
    /// Why the last load failed.
    detail: String,
    /// Bumped by every load and unload, so a drain notices that its model is gone.
    epoch: u64,
}

/// A Generate call let in while the slot was WARM. Drain waits until `in_flight` drops.
pub struct Admission {
    pub engine: Arc<Engine>,
    pub model_id: String,
    pub in_flight: InFlight,
}

/// Counts one Generate call in flight until dropped.
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why the slot takes no request now; displays as `worker is <state>: <why>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    pub state: State,
    pub model_id: Option<String>,
    pub detail: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let model = self.model_id.as_deref().unwrap_or("the model");
        let why = match self.state {
            State::Loading => format!("{model} is not loaded yet; retry on another worker"),
            State::Draining => format!("{model} takes no new requests; retry on another worker"),
            State::Failed => self.detail.clone(),
            _ => "no model is resident; retry on another worker".to_string(),
        };
        write!(f, "worker is {}: {why}", state_name(self.state))
    }
}

/// What the Health call reports, read under one lock.
pub(crate) struct View {
    pub state: State,
    pub model_id: Option<String>,
    pub engine: Option<Arc<Engine>>,
    pub detail: String,
}

/// `warm`, `draining`...: a state as operators read it in messages.
pub fn state_name(state: State) -> &'static str {
    match state {
        State::Unspecified => "in an unknown state",
        State::Loading => "loading",
        State::Warm => "warm",
        State::Draining => "draining",
        State::Unloaded => "unloaded",
        State::Failed => "failed",
    }
}

impl WorkerSlot {
    /// An empty slot (state UNLOADED).
    pub fn empty(config: EngineConfig) -> Arc<Self> {
        Arc::new(Self::new(config, State::Unloaded, None, None))
    }

    /// A slot already serving `engine` as `model_id` (state WARM).
    pub fn with_engine(config: EngineConfig, engine: Arc<Engine>, model_id: String) -> Arc<Self> {
        let slot = Self::new(config, State::Warm, Some(engine), Some(model_id));
        slot.set_progress(1.0);
        Arc::new(slot)
    }

    fn new(
        config: EngineConfig,
        state: State,
        engine: Option<Arc<Engine>>,
        model_id: Option<String>,
    ) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner {
                state,
                model_id,
                engine,
                detail: String::new(),
                epoch: 0,
            }),
            progress: AtomicU32::new(0),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; if something did, the state is still
        // a consistent value to go on from.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_progress(&self, fraction: f32) {
        self.progress
            .store(fraction.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    /// Resident or loading model id; None when unloaded.
    pub fn model_id(&self) -> Option<String> {
        self.lock().model_id.clone()
    }

    pub fn load_progress(&self) -> f32 {
        f32::from_bits(self.progress.load(Ordering::Relaxed))
    }

    /// Detail of the last failure (empty if none).
    pub fn detail(&self) -> String {
        self.lock().detail.clone()
    }

    /// The serving engine while WARM or DRAINING.
    pub fn engine(&self) -> Option<Arc<Engine>> {
        self.lock().engine.clone()
    }

    /// Generate calls admitted and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Lets one Generate call in if the slot is WARM, counting it until the returned
    /// guard drops. Checking the state and counting happen under the same lock that
    /// `drain` takes to switch to DRAINING, so a drain never misses a call let in.
    pub fn admit(&self) -> Result<Admission, Refused> {
        let inner = self.lock();
        match (&inner.state, &inner.engine, &inner.model_id) {
            (State::Warm, Some(engine), Some(model_id)) => {
                self.in_flight.fetch_add(1, Ordering::SeqCst);
                Ok(Admission {
                    engine: engine.clone(),
                    model_id: model_id.clone(),
                    in_flight: InFlight(self.in_flight.clone()),
                })
            }
            _ => Err(Refused {
                state: inner.state,
                model_id: inner.model_id.clone(),
                detail: inner.detail.clone(),
            }),
        }
    }

    pub(crate) fn view(&self) -> View {
        let inner = self.lock();
        View {
            state: inner.state,
            model_id: inner.model_id.clone(),
            engine: inner.engine.clone(),
            detail: inner.detail.clone(),
        }
    }

    /// Blocking (call from `spawn_blocking`): loads the GGUF at `path` as `model_id`,
    /// LOADING with progress 0..1, then WARM. Refused unless the slot is UNLOADED or
    /// FAILED. A failed load leaves the slot FAILED with the error as its detail.
    pub fn load(&self, model_id: &str, path: &Path) -> Result<(), EngineError> {
        {
            let mut inner = self.lock();
            if !matches!(inner.state, State::Unloaded | State::Failed) {
                return Err(EngineError::InvalidRequest(format!(
                    "cannot load {model_id}: the worker is {} with {}; unload it first",
                    state_name(inner.state),
                    inner.model_id.as_deref().unwrap_or("no model"),
                )));
            }
            inner.state = State::Loading;
            inner.model_id = Some(model_id.to_string());
            inner.detail.clear();
            inner.epoch += 1;
            self.set_progress(0.0);
        }
        tracing::info!(model_id, path = %path.display(), "loading model");
        let mut loading = Loading {
            slot: self,
            done: false,
        };
        let result = Engine::load_with_progress(path, &self.config, &mut |f| self.set_progress(f));
        loading.done = true;
        let mut inner = self.lock();
        match result {
            Ok(engine) => {
                tracing::info!(model_id, backend = engine.describe(), "model loaded");
                inner.state = State::Warm;
                inner.engine = Some(Arc::new(engine));
                self.set_progress(1.0);
                Ok(())
            }
            Err(e) => {
                let error = e.to_string();
                let path_text = path.display().to_string();
                inner.detail = if error.contains(&path_text) {
                    format!("cannot load {model_id}: {error}")
                } else {
                    format!("cannot load {model_id} from {path_text}: {error}")
                };
                tracing::warn!(model_id, detail = %inner.detail, "model load failed");
                inner.state = State::Failed;
                inner.model_id = None;
                self.set_progress(0.0);
                Err(e)
            }
        }
    }

    /// Drops the engine now (in-flight sequences end), state UNLOADED. Unloading an
    /// empty or FAILED slot is Ok; a slot still LOADING is refused. With `model`, refused
    /// if another model is resident.
    pub fn unload(&self, model: Option<&str>) -> Result<(), EngineError> {
        let resident = {
            let mut inner = self.lock();
            if inner.state == State::Loading {
                return Err(EngineError::InvalidRequest(format!(
                    "cannot unload {}: it is still loading; unload it once it is warm",
                    inner.model_id.as_deref().unwrap_or("the model"),
                )));
            }
            if let (Some(want), Some(resident)) = (model, inner.model_id.as_deref())
                && want != resident
            {
                return Err(EngineError::InvalidRequest(format!(
                    "cannot unload {want}: this worker holds {resident}"
                )));
            }
            Self::clear(&mut inner)
        };
        self.set_progress(0.0);
        if let Some((model_id, _)) = &resident {
            tracing::info!(model_id, "model unloaded");
        }
        // Outside the lock: dropping the engine joins its step thread.
        drop(resident);
        Ok(())
    }

    /// Switches to UNLOADED and hands back what was resident.
    fn clear(inner: &mut Inner) -> Option<(String, Option<Arc<Engine>>)> {
        inner.state = State::Unloaded;
        inner.epoch += 1;
        let engine = inner.engine.take();
        inner.model_id.take().map(|m| (m, engine))
    }

    /// DRAINING: new Generate calls are refused with UNAVAILABLE; returns once no
    /// sequence is running, waiting or being admitted, after unloading the model. Ok at
    /// once on an empty slot; a FAILED slot becomes UNLOADED; refused while LOADING. If
    /// the model is unloaded meanwhile (`unload` forces it), returns Ok.
    pub async fn drain(&self) -> Result<(), EngineError> {
        let epoch = {
            let mut inner = self.lock();
            match inner.state {
                State::Warm => {
                    inner.state = State::Draining;
                    tracing::info!(model_id = inner.model_id.as_deref(), "draining");
                }
                State::Draining => {}
                State::Unloaded => return Ok(()),
                State::Failed => {
                    Self::clear(&mut inner);
                    return Ok(());
                }
                State::Loading | State::Unspecified => {
                    return Err(EngineError::InvalidRequest(format!(
                        "cannot drain: the worker is {} {}; unload it once it is warm",
                        state_name(inner.state),
                        inner.model_id.as_deref().unwrap_or("a model"),
                    )));
                }
            }
            inner.epoch
        };
        loop {
            let busy = {
                let inner = self.lock();
                if inner.epoch != epoch || inner.state != State::Draining {
                    return Ok(());
                }
                let queued = inner.engine.as_ref().map_or(0, |e| {
                    let s = e.stats();
                    s.running + s.waiting
                });
                queued > 0 || self.in_flight() > 0
            };
            if !busy {
                break;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
        let resident = {
            let mut inner = self.lock();
            if inner.epoch != epoch || inner.state != State::Draining {
                return Ok(());
            }
            Self::clear(&mut inner)
        };
        self.set_progress(0.0);
        if let Some((model_id, engine)) = resident {
            tracing::info!(model_id, "drained and unloaded");
            // Dropping the engine joins its step thread: keep that off the async threads.
            let _ = tokio::task::spawn_blocking(move || drop(engine)).await;
        }
        Ok(())
    }

    /// The load figure for Stats and PoP agents; zeros when no engine is resident.
    pub fn load_figure(&self) -> pb::WorkerLoad {
        let Some(engine) = self.engine() else {
            return pb::WorkerLoad::default();
        };
        let s = engine.stats();
        pb::WorkerLoad {
            queue_depth: s.waiting as u32,
            running_sequences: s.running as u32,
            kv_blocks_free: s.kv_blocks_free as u32,
            kv_blocks_total: s.kv_blocks_total as u32,
            kv_block_size: s.kv_block_size as u32,
            prefix_cache_hit_rate: s.prefix_hit_rate,
            prompt_tokens_per_second: s.prompt_tokens_per_second,
            prefill_speed_tokens_per_second: s.prefill_speed,
            generation_tokens_per_second: s.generation_tokens_per_second,
            prefix_summary: Some(pb::PrefixSummary {
                block_size: s.kv_block_size as u32,
                truncated: s.cached_block_hashes.len() >= 256,
                block_hashes: s.cached_block_hashes,
            }),
            gpu_memory_bytes_total: engine.device_memory().map_or(0, |m| m.0),
            gpu_memory_bytes_used: engine.device_memory().map_or(0, |m| m.1),
            max_batch_tokens: self.config.max_batch_tokens as u32,
            mean_step_ms: s.mean_step_ms,
            queued_prompt_tokens: 0,
            max_running_sequences: engine.max_running() as u32,
        }
    }
}

/// Marks the slot FAILED if loading panics, so it does not stay LOADING for ever.
struct Loading<'a> {
    slot: &'a WorkerSlot,
    done: bool,
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut inner = self.slot.lock();
            inner.state = State::Failed;
            inner.detail = format!(
                "loading {} panicked",
                inner.model_id.take().unwrap_or_default()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing_path() -> std::path::PathBuf {
        std::env::temp_dir().join("meridian-slot-test-missing-model.gguf")
    }

    #[test]
    fn a_fresh_slot_is_unloaded_with_no_engine() {
        let slot = WorkerSlot::empty(EngineConfig::default());
        assert_eq!(slot.state(), State::Unloaded);
        assert!(slot.engine().is_none());
        assert_eq!(slot.model_id(), None);
        assert_eq!(slot.load_progress(), 0.0);
        assert_eq!(slot.detail(), "");
        assert_eq!(slot.load_figure(), pb::WorkerLoad::default());
        let refused = slot.admit().err().unwrap();
        assert_eq!(refused.state, State::Unloaded);
        assert!(refused.to_string().starts_with("worker is unloaded: "));
        assert_eq!(slot.in_flight(), 0);
    }

    #[test]
    fn unloading_an_empty_slot_is_ok() {
        let slot = WorkerSlot::empty(EngineConfig::default());
        slot.unload(None).unwrap();
        slot.unload(Some("any-model")).unwrap();
        assert_eq!(slot.state(), State::Unloaded);
    }

    #[test]
    fn a_missing_file_fails_the_load_and_a_later_load_is_allowed() {
        let slot = WorkerSlot::empty(EngineConfig::default());
        let path = missing_path();
        let err = slot.load("tiny", &path).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(slot.state(), State::Failed);
        assert!(slot.detail().contains(&path.display().to_string()));
        assert!(slot.detail().contains("tiny"), "{}", slot.detail());
        assert!(slot.engine().is_none());
        assert_eq!(slot.model_id(), None);
        let refused = slot.admit().err().unwrap();
        assert!(
            refused
                .to_string()
                .starts_with("worker is failed: cannot load tiny")
        );

        // FAILED takes another load; it fails again, not as "refused".
        let err = slot.load("tiny", &path).unwrap_err();
        assert!(!matches!(err, EngineError::InvalidRequest(_)), "{err}");
        assert_eq!(slot.state(), State::Failed);

        slot.unload(None).unwrap();
        assert_eq!(slot.state(), State::Unloaded);
    }

    #[test]
    fn an_invalid_config_fails_the_load() {
        let config = EngineConfig {
            kv_block_size: 12,
            ..Default::default()
        };
        let slot = WorkerSlot::empty(config);
        slot.load("tiny", &missing_path()).unwrap_err();
        assert_eq!(slot.state(), State::Failed);
        assert!(slot.detail().contains("power of two"), "{}", slot.detail());
    }

    #[tokio::test]
    async fn draining_an_empty_slot_returns_at_once() {
        let slot = WorkerSlot::empty(EngineConfig::default());
        let started = std::time::Instant::now();
        slot.drain().await.unwrap();
        assert!(started.elapsed() < DRAIN_POLL, "{:?}", started.elapsed());
        assert_eq!(slot.state(), State::Unloaded);
    }

    #[tokio::test]
    async fn draining_a_failed_slot_leaves_it_unloaded() {
        let slot = WorkerSlot::empty(EngineConfig::default());
        slot.load("tiny", &missing_path()).unwrap_err();
        slot.drain().await.unwrap();
        assert_eq!(slot.state(), State::Unloaded);
    }

    #[test]
    fn refusals_name_the_state_and_model() {
        let r = Refused {
            state: State::Draining,
            model_id: Some("m".into()),
            detail: String::new(),
        };
        assert_eq!(
            r.to_string(),
            "worker is draining: m takes no new requests; retry on another worker"
        );
    }
}

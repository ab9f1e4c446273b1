//! `meridian.worker.v1.Worker` over tonic: the thin gRPC shell around an [`Engine`].

use std::pin::Pin;
use std::sync::Arc;

use futures_core::Stream;
use meridian_proto::worker::v1 as pb;
use meridian_proto::worker::v1::worker_server::Worker;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};

use crate::EngineError;
use crate::engine::{Engine, Event, FinishReason, Input};
use crate::sampling::SamplingParams;
use crate::tokenizer::ChatMessage;

/// A worker serving one model.
pub struct WorkerService {
    engine: Arc<Engine>,
    model_id: String,
    max_batch_tokens: u32,
}

impl WorkerService {
    pub fn new(engine: Arc<Engine>, model_id: String, max_batch_tokens: usize) -> Self {
        Self {
            engine,
            model_id,
            max_batch_tokens: max_batch_tokens as u32,
        }
    }

    /// The load figure that `Stats` returns and PoP agents forward.
    pub fn load(&self) -> pb::WorkerLoad {
        let s = self.engine.stats();
        pb::WorkerLoad {
            queue_depth: s.waiting as u32,
            running_sequences: s.running as u32,
            kv_blocks_free: s.kv_blocks_free as u32,
            kv_blocks_total: s.kv_blocks_total as u32,
            kv_block_size: s.kv_block_size as u32,
            prefix_cache_hit_rate: s.prefix_hit_rate,
            prompt_tokens_per_second: s.prompt_tokens_per_second,
            generation_tokens_per_second: s.generation_tokens_per_second,
            prefix_summary: Some(pb::PrefixSummary {
                block_size: s.kv_block_size as u32,
                truncated: s.cached_block_hashes.len() >= 256,
                block_hashes: s.cached_block_hashes,
            }),
            gpu_memory_bytes_total: 0,
            gpu_memory_bytes_used: 0,
            max_batch_tokens: self.max_batch_tokens,
            mean_step_ms: s.mean_step_ms,
            queued_prompt_tokens: 0,
            max_running_sequences: self.engine.max_running() as u32,
        }
    }
}

/// One mapping from engine errors to gRPC statuses, at the edge.
pub fn status_of(e: EngineError) -> Status {
    match e {
        EngineError::InvalidRequest(_) | EngineError::Sampling(_) | EngineError::Tokenizer(_) => {
            Status::invalid_argument(e.to_string())
        }
        EngineError::Stopped => Status::unavailable(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

fn request_of(req: pb::GenerateRequest) -> Result<crate::engine::Request, Status> {
    let input = match req.input {
        Some(pb::generate_request::Input::Prompt(p)) => Input::Text(p),
        Some(pb::generate_request::Input::Chat(c)) => Input::Chat {
            messages: c
                .messages
                .into_iter()
                .map(|m| ChatMessage {
                    role: m.role,
                    content: m.content,
                })
                .collect(),
            add_generation_prompt: c.add_generation_prompt,
        },
        Some(pb::generate_request::Input::TokenIds(t)) => Input::Tokens(t.ids),
        None => {
            return Err(Status::invalid_argument(
                "input is missing: set prompt, chat or token_ids",
            ));
        }
    };
    let s = req.sampling.unwrap_or_default();
    Ok(crate::engine::Request {
        input,
        sampling: SamplingParams {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            seed: s.seed,
        },
        max_tokens: req.max_tokens,
        stop: req.stop,
        logprobs: req.logprobs,
        ignore_eos: req.ignore_eos,
    })
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn finish_reason(r: FinishReason) -> pb::FinishReason {
    match r {
        FinishReason::Stop => pb::FinishReason::Stop,
        FinishReason::Length => pb::FinishReason::Length,
        FinishReason::Cancelled => pb::FinishReason::Cancelled,
    }
}

#[tonic::async_trait]
impl Worker for WorkerService {
    type GenerateStream = BoxStream<pb::GenerateResponse>;

    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let req = request.into_inner();
        if req.model != self.model_id {
            return Err(Status::invalid_argument(format!(
                "model {:?} is not served by this worker (it serves {:?})",
                req.model, self.model_id
            )));
        }
        let request_id = req.request_id.clone();
        let engine_request = request_of(req)?;
        let engine = self.engine.clone();
        // Tokenizing a long prompt takes a while: keep it off the async threads.
        let events = tokio::task::spawn_blocking(move || engine.submit(engine_request))
            .await
            .map_err(|e| Status::internal(format!("tokenizer task failed: {e}")))?
            .map_err(status_of)?;
        tracing::debug!(request_id, "generation started");
        // The engine drops its sender after `Finished`, which ends the stream; a client
        // that goes away drops `events`, which cancels the sequence.
        let stream = UnboundedReceiverStream::new(events).map(|event| {
            Ok(match event {
                Event::Token { id, text, logprob } => pb::GenerateResponse {
                    text,
                    token_ids: vec![id],
                    logprobs: logprob.into_iter().collect(),
                    ..Default::default()
                },
                Event::Finished {
                    reason,
                    usage,
                    text,
                } => pb::GenerateResponse {
                    text,
                    finish_reason: finish_reason(reason) as i32,
                    usage: Some(pb::Usage {
                        prompt_tokens: usage.prompt_tokens,
                        completion_tokens: usage.completion_tokens,
                        cached_prompt_tokens: usage.cached_prompt_tokens,
                        queue_ms: 0,
                    }),
                    ..Default::default()
                },
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn health(
        &self,
        _request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        let c = self.engine.model_config();
        Ok(Response::new(pb::HealthResponse {
            state: pb::WorkerState::Warm as i32,
            models: vec![pb::ModelInfo {
                id: self.model_id.clone(),
                context_length: c.context_length as u32,
                weight_bytes: self.engine.weight_bytes() as u64,
                vocab_size: c.vocab_size as u32,
                architecture: c.architecture.clone(),
                load_progress: 1.0,
                kv_bytes_per_token: c.kv_bytes_per_token() as u64,
            }],
            detail: self.engine.describe().to_string(),
        }))
    }

    async fn stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        Ok(Response::new(pb::StatsResponse {
            load: Some(self.load()),
        }))
    }
}

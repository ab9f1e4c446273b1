//! `meridian.worker.v1.Worker` over tonic: the thin gRPC shell around a [`WorkerSlot`]
//! and the engine it holds.

use std::pin::Pin;
use std::sync::Arc;

use futures_core::Stream;
use meridian_proto::worker::v1 as pb;
use meridian_proto::worker::v1::worker_server::Worker;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};

use crate::EngineError;
use crate::engine::{Event, FinishReason, Input};
use crate::sampling::SamplingParams;
use crate::slot::{Admission, WorkerSlot};
use crate::tokenizer::ChatMessage;

/// A worker serving the model of its slot, whatever the slot holds at the moment.
pub struct WorkerService {
    slot: Arc<WorkerSlot>,
}

impl WorkerService {
    pub fn new(slot: Arc<WorkerSlot>) -> Self {
        Self { slot }
    }

    /// The slot the PoP agent loads, unloads and drains.
    pub fn slot(&self) -> &Arc<WorkerSlot> {
        &self.slot
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

/// The engine's input for a request's `input` field.
pub fn input_of(input: Option<pb::generate_request::Input>) -> Result<Input, Status> {
    Ok(match input {
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
    })
}

fn request_of(req: pb::GenerateRequest) -> Result<crate::engine::Request, Status> {
    let input = input_of(req.input)?;
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
        // Not WARM: UNAVAILABLE, so routers try another worker before the first token.
        let Admission {
            engine,
            model_id,
            in_flight,
        } = self
            .slot
            .admit()
            .map_err(|refused| Status::unavailable(refused.to_string()))?;
        if req.model != model_id {
            return Err(Status::invalid_argument(format!(
                "model {:?} is not served by this worker (it serves {:?})",
                req.model, model_id
            )));
        }
        let request_id = req.request_id.clone();
        let engine_request = request_of(req)?;
        // Tokenizing a long prompt takes a while: keep it off the async threads.
        let events = tokio::task::spawn_blocking(move || engine.submit(engine_request))
            .await
            .map_err(|e| Status::internal(format!("tokenizer task failed: {e}")))?
            .map_err(status_of)?;
        tracing::debug!(request_id, "generation started");
        // The engine drops its sender after `Finished`, which ends the stream; a client
        // that goes away drops `events`, which cancels the sequence. The call counts as
        // in flight (a drain waits for it) until `Finished` or the stream is dropped. A
        // stream that ends without `Finished` lost its engine to an unload.
        let mut in_flight = Some(in_flight);
        let mut finished = false;
        let stream = UnboundedReceiverStream::new(events)
            .map(Some)
            .chain(tokio_stream::once(None))
            .filter_map(move |event| match event {
                Some(Event::Token { id, text, logprob }) => Some(Ok(pb::GenerateResponse {
                    text,
                    token_ids: vec![id],
                    logprobs: logprob.into_iter().collect(),
                    ..Default::default()
                })),
                Some(Event::Finished {
                    reason,
                    usage,
                    text,
                }) => {
                    finished = true;
                    drop(in_flight.take());
                    Some(Ok(pb::GenerateResponse {
                        text,
                        finish_reason: finish_reason(reason) as i32,
                        usage: Some(pb::Usage {
                            prompt_tokens: usage.prompt_tokens,
                            completion_tokens: usage.completion_tokens,
                            cached_prompt_tokens: usage.cached_prompt_tokens,
                            queue_ms: 0,
                        }),
                        ..Default::default()
                    }))
                }
                None if finished => None,
                None => {
                    drop(in_flight.take());
                    Some(Err(Status::aborted(
                        "the model was unloaded before the generation finished",
                    )))
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn health(
        &self,
        _request: Request<pb::HealthRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        let view = self.slot.view();
        let (models, detail) = match (view.state, &view.engine, view.model_id) {
            (pb::WorkerState::Warm | pb::WorkerState::Draining, Some(engine), Some(id)) => {
                let c = engine.model_config();
                let model = pb::ModelInfo {
                    id,
                    context_length: c.context_length as u32,
                    weight_bytes: engine.weight_bytes() as u64,
                    vocab_size: c.vocab_size as u32,
                    architecture: c.architecture.clone(),
                    load_progress: 1.0,
                    kv_bytes_per_token: c.kv_bytes_per_token() as u64,
                };
                (vec![model], engine.describe().to_string())
            }
            (pb::WorkerState::Loading, _, Some(id)) => {
                let model = pb::ModelInfo {
                    id,
                    load_progress: self.slot.load_progress(),
                    ..Default::default()
                };
                (vec![model], String::new())
            }
            (pb::WorkerState::Failed, ..) => (Vec::new(), view.detail),
            _ => (Vec::new(), String::new()),
        };
        Ok(Response::new(pb::HealthResponse {
            state: view.state as i32,
            models,
            detail,
        }))
    }

    async fn stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        Ok(Response::new(pb::StatsResponse {
            load: Some(self.slot.load_figure()),
        }))
    }
}

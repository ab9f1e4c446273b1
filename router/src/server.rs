//! The OpenAI-compatible HTTP front door on hyper: routes, limits, auth, the routing
//! headers, and turning worker streams into JSON or server-sent events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use meridian_proto::worker::v1 as pb;
use sha2::{Digest, Sha256};

use crate::demand::{Counts, DemandKey};
use crate::dispatch::{Accepted, dispatch};
use crate::openai::{self, ApiError, Endpoint, GenerationRequest, Prompt};
use crate::prefix;
use crate::score::{Ask, rank};
use crate::state::RouterState;

type Body = BoxBody<Bytes, Infallible>;

thread_local! {
    /// A request's prompt block hashes and per-worker cached depths, reused.
    static SCRATCH: std::cell::RefCell<(Vec<u64>, Vec<u32>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// Tokens generated when a request names no limit.
pub const DEFAULT_MAX_TOKENS: u32 = 512;

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn error(e: &ApiError) -> Response<Body> {
    let reason = e.code.clone().unwrap_or_else(|| e.kind.to_string());
    metrics::counter!(crate::metrics::REFUSED_TOTAL, "status" => e.status.to_string(), "reason" => reason)
        .increment(1);
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = full(status, "application/json", e.body());
    if let Some(secs) = e.retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
    }
    r
}

/// Serves one request.
pub async fn handle(
    state: Arc<RouterState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let response = match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => full(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/metrics") => {
            let text = state
                .metrics
                .as_ref()
                .map(|h| h.render())
                .unwrap_or_default();
            full(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        (&Method::GET, "/v1/models") => match authenticate(&state, &req) {
            Ok(_) => {
                let created = unix_now();
                let models = state.fleet().view.models();
                full(
                    StatusCode::OK,
                    "application/json",
                    openai::models_list(models.iter().map(|m| (m.as_str(), created))),
                )
            }
            Err(e) => error(&e),
        },
        (&Method::POST, "/v1/chat/completions") => generate(state, req, Endpoint::Chat).await,
        (&Method::POST, "/v1/completions") => generate(state, req, Endpoint::Completion).await,
        (_, "/v1/chat/completions" | "/v1/completions" | "/v1/models") => {
            error(&ApiError::method_not_allowed(req.method().as_str()))
        }
        _ => error(&ApiError::not_found_route(&path)),
    };
    Ok(response)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The caller's allowed jurisdictions from its key; `Ok(None)` when keys are off.
fn authenticate(state: &RouterState, req: &Request<Incoming>) -> Result<Option<usize>, ApiError> {
    if state.keys.is_empty() {
        return Ok(None);
    }
    let key = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::unauthorized("missing API key: send `Authorization: Bearer KEY`")
        })?;
    let digest: String = Sha256::digest(key.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    state
        .keys
        .get(&digest)
        .copied()
        .map(Some)
        .ok_or_else(|| ApiError::unauthorized("invalid API key"))
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

async fn generate(
    state: Arc<RouterState>,
    req: Request<Incoming>,
    endpoint: Endpoint,
) -> Response<Body> {
    let started = Instant::now();
    metrics::counter!(crate::metrics::REQUESTS_TOTAL).increment(1);
    match generate_inner(&state, req, endpoint, started).await {
        Ok(r) => r,
        Err(e) => error(&e),
    }
}

async fn generate_inner(
    state: &Arc<RouterState>,
    req: Request<Incoming>,
    endpoint: Endpoint,
    started: Instant,
) -> Result<Response<Body>, ApiError> {
    let key = authenticate(state, &req)?;
    if let Some(limit) = key.and_then(|i| state.limits[i].as_ref()) {
        let now = state.epoch.elapsed().as_nanos() as u64;
        if let Err(wait) = limit.check(now) {
            let secs = crate::admission::retry_after_secs(wait);
            return Err(ApiError::rate_limited(format!(
                "rate limit of {} requests per second for this API key exceeded; retry after {secs} s",
                state.config.api_keys[key.unwrap_or_default()].rate_limit_rps
            ))
            .with_retry_after(secs));
        }
    }
    let limit = state.config.max_body_bytes;
    if let Some(len) = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && len > limit.saturating_mul(DRAIN_FACTOR)
    {
        // Far too large to be worth reading: answer now and let the connection close.
        return Err(ApiError::payload_too_large(limit));
    }
    // Region and jurisdiction headers, before the body is consumed.
    let region = match header(&req, "x-meridian-region") {
        Some(id) => state
            .catalog
            .index_of(&id.to_ascii_uppercase())
            .ok_or_else(|| {
                ApiError::bad_request(
                    format!("x-meridian-region: {id:?} is not a catalog site id"),
                    None,
                )
            })?,
        None => state.site_index,
    };
    let asked: Vec<String> = header(&req, "x-meridian-jurisdiction")
        .map(|v| {
            v.split(',')
                .map(|j| j.trim().to_ascii_uppercase())
                .filter(|j| !j.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let policy: &[String] = key.map_or(&[], |i| {
        state.config.api_keys[i].allowed_jurisdictions.as_slice()
    });
    let jurisdictions = intersect(&asked, policy)?;

    let body = read_body(req.into_body(), limit).await?;
    let request = match endpoint {
        Endpoint::Chat => openai::parse_chat(&body)?,
        Endpoint::Completion => openai::parse_completion(&body)?,
    };

    let fleet = state.fleet();
    if fleet.view.serving(&request.model).is_empty() {
        if fleet.view.known_models.contains(&request.model) {
            return Err(ApiError::unavailable(format!(
                "model `{}` is not resident on any worker right now (it is being placed); retry shortly",
                request.model
            ))
            .with_retry_after(1));
        }
        return Err(ApiError::not_found_model(&request.model));
    }
    let demand = DemandKey::new(region, &request.model, &jurisdictions);
    let mut worker_request = to_worker(&request);
    let scored = Instant::now();
    // The exact prompt tokens, when the router has the model's tokenizer: the length
    // and the blocks to look up in the fleet's prefix index.
    let tokens = state
        .tokenizers
        .get(&request.model)
        .and_then(|t| t.prompt_tokens(&worker_request));
    let prompt_tokens = tokens
        .as_ref()
        .map_or_else(|| estimate_tokens(&request.prompt), |t| t.len() as u32);
    // Per-thread scratch for the block hashes and per-worker depths: nothing is
    // allocated per request once a thread has served one.
    let ranking = SCRATCH.with(|scratch| {
        let (hashes, cached) = &mut *scratch.borrow_mut();
        hashes.clear();
        cached.clear();
        if let Some(tokens) = &tokens {
            prefix::prompt_hashes(tokens, fleet.view.prefixes.block_size(), hashes);
            fleet.view.prefixes.matches(hashes, cached);
        }
        let ask = Ask {
            model: &request.model,
            region,
            jurisdictions: &jurisdictions,
            prompt_tokens,
            cached,
            max_waiting: state.config.max_waiting_per_worker,
        };
        let ranking = rank(&fleet.view, &state.rtt, &ask, &fleet.in_flight[..]);
        tracing::debug!(
            model = %request.model,
            prompt_tokens,
            prompt_blocks = hashes.len(),
            best_cached_blocks = cached.iter().max().copied().unwrap_or(0),
            candidates = ranking.len(),
            ranking = ?ranking
                .iter()
                .map(|c| (fleet.view.workers[c.worker as usize].pop.as_str(), c.rtt_ms, c.queue_ms, c.prefill_ms))
                .collect::<Vec<_>>(),
            "scored"
        );
        ranking
    });
    metrics::histogram!(crate::metrics::SCORE_SECONDS).record(scored.elapsed().as_secs_f64());
    // The worker gets the tokens rather than the text: its tokenizer is the same (the
    // router's comes from the model file the workers serve), so the prompt is
    // tokenized once per request, here, instead of once here and again there.
    if let Some(ids) = tokens {
        worker_request.input = Some(pb::generate_request::Input::TokenIds(pb::TokenIds { ids }));
    }
    if ranking.is_empty() {
        let refused = Counts {
            requests: 1,
            refused: u64::from(ranking.saturated > 0),
            ..Default::default()
        };
        state.demand.add(&demand, refused);
        if ranking.saturated > 0 {
            metrics::counter!(crate::metrics::SHED_TOTAL, "model" => request.model.clone())
                .increment(1);
            return Err(ApiError::overloaded(format!(
                "every worker that may serve model `{}` is saturated ({} with {} or more requests waiting); retry after 1 s",
                request.model, ranking.saturated, state.config.max_waiting_per_worker
            ))
            .with_retry_after(1));
        }
        let wherever = if jurisdictions.is_empty() {
            "anywhere".to_string()
        } else {
            jurisdictions.join(",")
        };
        return Err(ApiError::unavailable(format!(
            "no healthy worker in jurisdictions {wherever} has model `{}` warm right now",
            request.model
        )));
    }
    state.demand.add(
        &demand,
        Counts {
            requests: 1,
            ..Default::default()
        },
    );
    let tally = Tally {
        state: state.clone(),
        demand,
        started,
    };
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(state.config.request_timeout_ms);
    // Tries allowed in all: the first, then `max_retries` more, across the whole request.
    let mut attempts_left = state.config.max_retries as usize + 1;
    let mut start = 0;
    loop {
        let accepted = tokio::time::timeout_at(
            deadline,
            dispatch(
                state,
                &fleet,
                &ranking,
                start,
                attempts_left,
                worker_request.clone(),
            ),
        )
        .await
        .map_err(|_| ApiError::unavailable("timed out waiting for a worker's first token"))??;
        let ttft = started.elapsed();
        if request.stream {
            tally.first_token(&request.model, &accepted.pop, ttft);
            return Ok(stream_response(request, accepted, tally, ttft));
        }
        attempts_left = attempts_left.saturating_sub(accepted.position + 1 - start);
        start = accepted.position + 1;
        let whole =
            tokio::time::timeout_at(deadline, whole_response(&request, accepted, &tally, ttft))
                .await
                .map_err(|_| ApiError::unavailable("timed out waiting for the completion"))?;
        match whole {
            Ok(response) => return Ok(response),
            // Nothing has reached the client yet: a worker that died mid-generation is
            // retried on the next candidate, within the same retry budget.
            Err(e) if attempts_left > 0 && start < ranking.len() => {
                tracing::warn!(error = %e.message, "worker failed mid-generation; retrying the request elsewhere");
                metrics::counter!(crate::metrics::RETRIES_TOTAL).increment(1);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Accounting of one admitted request: its demand sample and latency histograms.
struct Tally {
    state: Arc<RouterState>,
    demand: DemandKey,
    started: Instant,
}

impl Tally {
    fn first_token(&self, model: &str, pop: &str, ttft: Duration) {
        metrics::histogram!(crate::metrics::TTFT_SECONDS, "model" => model.to_string(), "pop" => pop.to_string())
            .record(ttft.as_secs_f64());
    }

    /// A completion finished: end-to-end latency, time per output token after the first,
    /// and the tokens for the demand report.
    fn finished(&self, model: &str, pop: &str, ttft: Duration, usage: openai::Usage) {
        let total = self.started.elapsed();
        metrics::histogram!(crate::metrics::E2E_SECONDS, "model" => model.to_string(), "pop" => pop.to_string())
            .record(total.as_secs_f64());
        if usage.completion_tokens > 1 {
            let per_token =
                total.saturating_sub(ttft).as_secs_f64() / f64::from(usage.completion_tokens - 1);
            metrics::histogram!(crate::metrics::TPOT_SECONDS, "model" => model.to_string(), "pop" => pop.to_string())
                .record(per_token);
        }
        self.state.demand.add(
            &self.demand,
            Counts {
                prompt_tokens: u64::from(usage.prompt_tokens),
                completion_tokens: u64::from(usage.completion_tokens),
                ..Default::default()
            },
        );
    }
}

/// Bodies up to this many times the limit are read to the end (and dropped) before a
/// 413, so the client gets the answer instead of a reset connection mid-upload.
const DRAIN_FACTOR: usize = 16;
/// Time allowed to receive a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads the body, keeping at most `limit` bytes; a longer body is drained (up to
/// `DRAIN_FACTOR` times the limit) and refused with 413.
async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, ApiError> {
    let read = async {
        let mut kept = Vec::new();
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::bad_request(format!("cannot read the request body: {e}"), None)
            })?;
            if let Some(data) = frame.data_ref() {
                seen += data.len();
                if seen <= limit {
                    kept.extend_from_slice(data);
                } else if seen > limit.saturating_mul(DRAIN_FACTOR) {
                    break;
                }
            }
        }
        if seen > limit {
            return Err(ApiError::payload_too_large(limit));
        }
        Ok(Bytes::from(kept))
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .map_err(|_| ApiError::bad_request("timed out reading the request body", None))?
}

/// Requested jurisdictions intersected with the key's policy. Both empty: any.
fn intersect(asked: &[String], policy: &[String]) -> Result<Vec<String>, ApiError> {
    let out: Vec<String> = match (asked.is_empty(), policy.is_empty()) {
        (true, true) => Vec::new(),
        (false, true) => asked.to_vec(),
        (true, false) => policy.to_vec(),
        (false, false) => asked
            .iter()
            .filter(|j| policy.contains(j))
            .cloned()
            .collect(),
    };
    if out.is_empty() && !(asked.is_empty() && policy.is_empty()) {
        return Err(ApiError::unavailable(format!(
            "x-meridian-jurisdiction {} is outside this API key's residency policy {}",
            asked.join(","),
            policy.join(",")
        )));
    }
    Ok(out)
}

/// A rough prompt length for scoring (the worker tokenizes exactly): 4 bytes a token.
fn estimate_tokens(prompt: &Prompt) -> u32 {
    let bytes: usize = match prompt {
        Prompt::Chat(messages) => messages.iter().map(|m| m.content.len() + 8).sum(),
        Prompt::Text(t) => t.len(),
        Prompt::Tokens(t) => return t.len() as u32,
    };
    (bytes / 4 + 1) as u32
}

fn to_worker(r: &GenerationRequest) -> pb::GenerateRequest {
    use pb::generate_request::Input;
    let input = match &r.prompt {
        Prompt::Chat(messages) => Input::Chat(pb::ChatInput {
            messages: messages
                .iter()
                .map(|m| pb::ChatMessage {
                    role: m.role.as_str().to_string(),
                    content: m.content.clone(),
                })
                .collect(),
            add_generation_prompt: true,
        }),
        Prompt::Text(t) => Input::Prompt(t.clone()),
        Prompt::Tokens(t) => Input::TokenIds(pb::TokenIds { ids: t.clone() }),
    };
    pb::GenerateRequest {
        request_id: String::new(),
        model: r.model.clone(),
        input: Some(input),
        sampling: Some(pb::SamplingParams {
            temperature: r.temperature,
            top_k: r.top_k,
            top_p: r.top_p,
            min_p: r.min_p,
            seed: r.seed,
        }),
        max_tokens: r.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        stop: r.stop.clone(),
        logprobs: r.logprobs,
        ignore_eos: r.ignore_eos,
        max_queue_ms: None,
    }
}

fn finish_reason(chunk: &pb::GenerateResponse) -> Option<openai::FinishReason> {
    match chunk.finish_reason() {
        pb::FinishReason::Unspecified => None,
        pb::FinishReason::Length => Some(openai::FinishReason::Length),
        pb::FinishReason::Stop | pb::FinishReason::Cancelled | pb::FinishReason::Error => {
            Some(openai::FinishReason::Stop)
        }
    }
}

fn usage_of(chunk: &pb::GenerateResponse) -> openai::Usage {
    let u = chunk.usage.unwrap_or_default();
    openai::Usage::new(u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens)
}

/// A response id unique enough for logs and clients: time and a process counter.
fn new_id(endpoint: Endpoint) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    openai::response_id(endpoint, nanos.rotate_left(20) ^ n)
}

fn with_routing_headers(mut r: Response<Body>, pop: &str, worker: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(pop) {
        r.headers_mut().insert("x-meridian-pop", v);
    }
    if let Ok(v) = HeaderValue::from_str(worker) {
        r.headers_mut().insert("x-meridian-worker", v);
    }
    r
}

/// Collects a non-streamed completion. Every error means the worker failed or vanished
/// mid-generation, which the caller may retry elsewhere.
async fn whole_response(
    request: &GenerationRequest,
    accepted: Accepted,
    tally: &Tally,
    ttft: Duration,
) -> Result<Response<Body>, ApiError> {
    let Accepted {
        pop,
        worker_id,
        first,
        mut rest,
        guard,
        ..
    } = accepted;
    let mut text = String::new();
    let mut logprobs = Vec::new();
    let mut chunk = first;
    loop {
        text.push_str(&chunk.text);
        if request.logprobs {
            logprobs.extend(openai::token_id_logprobs(&chunk.token_ids, &chunk.logprobs));
        }
        if let Some(reason) = finish_reason(&chunk) {
            drop(guard);
            tally.first_token(&request.model, &pop, ttft);
            tally.finished(&request.model, &pop, ttft, usage_of(&chunk));
            let id = new_id(request.kind);
            let body = openai::completion_body(
                request.kind,
                &id,
                unix_now(),
                &request.model,
                &text,
                reason,
                usage_of(&chunk),
                request.logprobs.then_some(logprobs.as_slice()),
            );
            return Ok(with_routing_headers(
                full(StatusCode::OK, "application/json", body),
                &pop,
                &worker_id,
            ));
        }
        chunk = match rest.message().await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Err(ApiError::internal(format!(
                    "worker {worker_id} ended the stream without finishing"
                )));
            }
            Err(status) => {
                return Err(ApiError::internal(format!(
                    "worker {worker_id} failed mid-generation: {}",
                    status.message()
                )));
            }
        };
    }
}

fn stream_response(
    request: GenerationRequest,
    accepted: Accepted,
    tally: Tally,
    ttft: Duration,
) -> Response<Body> {
    let Accepted {
        pop,
        worker_id,
        first,
        mut rest,
        guard,
        ..
    } = accepted;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(32);
    let (pop_label, worker) = (pop.clone(), worker_id.clone());
    // A task turns worker chunks into SSE events. When the client goes away the body,
    // and with it `rx`, is dropped; the next send fails, the task ends and drops the
    // worker stream, which cancels the generation on the worker.
    tokio::spawn(async move {
        let _guard = guard;
        let id = new_id(request.kind);
        let mut writer = openai::StreamWriter::new(
            request.kind,
            &id,
            unix_now(),
            &request.model,
            request.include_usage,
        );
        let mut out = writer
            .start()
            .map(|s| openai::sse_event(&s))
            .unwrap_or_default();
        let mut chunk = first;
        loop {
            if !chunk.text.is_empty() || (request.logprobs && !chunk.logprobs.is_empty()) {
                let lp = openai::token_id_logprobs(&chunk.token_ids, &chunk.logprobs);
                out.push_str(&openai::sse_event(
                    &writer.delta(&chunk.text, request.logprobs.then_some(lp.as_slice())),
                ));
            }
            if let Some(reason) = finish_reason(&chunk) {
                out.push_str(&openai::sse_event(&writer.finish(reason)));
                if let Some(u) = writer.usage(usage_of(&chunk)) {
                    out.push_str(&openai::sse_event(&u));
                }
                out.push_str(openai::SSE_DONE);
                let _ = tx.send(Bytes::from(out)).await;
                tally.finished(&request.model, &pop_label, ttft, usage_of(&chunk));
                return;
            }
            if tx
                .send(Bytes::from(std::mem::take(&mut out)))
                .await
                .is_err()
            {
                tracing::debug!(worker, "client went away; cancelling the generation");
                return;
            }
            chunk = match rest.message().await {
                Ok(Some(c)) => c,
                Ok(None) => {
                    let e = ApiError::internal(format!(
                        "worker {worker} ended the stream without finishing"
                    ));
                    let _ = tx.send(Bytes::from(openai::sse_error(&e))).await;
                    return;
                }
                Err(status) => {
                    let e = ApiError::internal(format!(
                        "worker {worker} failed mid-generation: {}",
                        status.message()
                    ));
                    let _ = tx.send(Bytes::from(openai::sse_error(&e))).await;
                    return;
                }
            };
        }
    });
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    with_routing_headers(r, &pop, &worker_id)
}

/// Serves HTTP/1.1 (and HTTP/2) on `listener` until `shutdown` resolves.
pub async fn serve(
    state: Arc<RouterState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(5)) => {}
    }
    Ok(())
}

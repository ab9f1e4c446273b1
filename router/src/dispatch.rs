//! Dispatch: send a request to the ranked candidates in order, moving on when a worker
//! fails before its first token (connection refused, unavailable, overloaded), and hand
//! back the stream of the worker that answered.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use meridian_proto::worker::v1 as pb;
use tonic::Streaming;

use crate::openai::ApiError;
use crate::score::Ranking;
use crate::state::{Fleet, RouterState};

/// A worker that accepted the request and produced its first chunk.
pub struct Accepted {
    pub pop: String,
    pub worker_id: String,
    pub first: pb::GenerateResponse,
    pub rest: Streaming<pb::GenerateResponse>,
    /// Decrements the worker's in-flight count when dropped.
    pub guard: InFlight,
    /// Position of this worker in the ranking; a retry after it starts past it.
    pub position: usize,
}

/// This router's outstanding request on a worker, counted until dropped.
pub struct InFlight {
    fleet: Arc<Fleet>,
    worker: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.fleet.in_flight[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a worker that refused a connection is passed over, milliseconds.
const BREAK_MS: u64 = 2_000;

/// Whether a status from a worker means "try another worker".
fn retryable(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(
        status.code(),
        Unavailable
            | ResourceExhausted
            | DeadlineExceeded
            | Aborted
            | Internal
            | Unknown
            | Cancelled
    )
}

/// Tries the candidates in order from position `start`, making at most `attempts`
/// tries. Bad requests (INVALID_ARGUMENT) are not retried.
pub async fn dispatch(
    state: &RouterState,
    fleet: &Arc<Fleet>,
    ranking: &Ranking,
    start: usize,
    attempts: usize,
    request: pb::GenerateRequest,
) -> Result<Accepted, ApiError> {
    let mut last_error = String::from("no candidate");
    let now_ms = state.epoch.elapsed().as_millis() as u64;
    let mut tries = 0;
    for (position, candidate) in ranking.iter().enumerate().skip(start) {
        if tries == attempts {
            break;
        }
        let i = candidate.worker as usize;
        let worker = &fleet.view.workers[i];
        // An open circuit is skipped while other candidates remain.
        let last = position + 1 == ranking.len();
        if fleet.broken_until[i].load(Ordering::Relaxed) > now_ms && !last {
            continue;
        }
        let attempt = tries;
        tries += 1;
        fleet.in_flight[i].fetch_add(1, Ordering::Relaxed);
        let guard = InFlight {
            fleet: fleet.clone(),
            worker: i,
        };
        if attempt > 0 {
            metrics::counter!(crate::metrics::RETRIES_TOTAL).increment(1);
        }
        let mut client = match state.client(&worker.endpoint) {
            Ok(c) => c,
            Err(e) => {
                last_error = e.to_string();
                continue;
            }
        };
        let mut stream = match client.generate(request.clone()).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                return Err(ApiError::bad_request(status.message().to_string(), None));
            }
            Err(status) if retryable(&status) => {
                if status.code() == tonic::Code::Unavailable {
                    // Unreachable: open its circuit for a while.
                    fleet.broken_until[i].store(now_ms + BREAK_MS, Ordering::Relaxed);
                    metrics::counter!("meridian_router_circuit_opened_total").increment(1);
                }
                tracing::warn!(worker = %worker.worker_id, pop = %worker.pop, code = ?status.code(), "worker failed before its first token; trying the next");
                last_error = format!("{}: {}", worker.worker_id, status.message());
                continue;
            }
            Err(status) => {
                return Err(ApiError::internal(format!(
                    "worker {}: {}",
                    worker.worker_id,
                    status.message()
                )));
            }
        };
        match stream.message().await {
            Ok(Some(first)) => {
                return Ok(Accepted {
                    pop: worker.pop.clone(),
                    worker_id: worker.worker_id.clone(),
                    first,
                    rest: stream,
                    guard,
                    position,
                });
            }
            Ok(None) => {
                last_error = format!("{} closed the stream before answering", worker.worker_id)
            }
            Err(status) => {
                tracing::warn!(worker = %worker.worker_id, code = ?status.code(), "worker failed before its first token; trying the next");
                last_error = format!("{}: {}", worker.worker_id, status.message());
            }
        }
    }
    Err(ApiError::unavailable(format!(
        "every candidate worker failed; last error: {last_error}"
    )))
}

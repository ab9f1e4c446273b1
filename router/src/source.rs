//! Where the fleet view comes from while the control plane's `WatchFleet` is not there:
//! a static list of workers (what `meridian up` starts), whose load this router polls
//! with `Worker.Stats` and `Worker.Health`. A worker that does not answer is marked
//! unhealthy until it does again; the view is rebuilt and swapped in each round.

use std::sync::Arc;
use std::time::Duration;

use meridian_proto::worker::v1 as pb;

use crate::fleet::{FleetView, Load, Worker};
use crate::state::RouterState;

/// A worker named in configuration.
#[derive(Debug, Clone)]
pub struct StaticWorker {
    pub pop: String,
    pub worker_id: String,
    pub endpoint: String,
}

/// Polls the workers every `interval` and publishes a new view each round. Runs until
/// the task is dropped.
pub async fn poll_static(state: Arc<RouterState>, workers: Vec<StaticWorker>, interval: Duration) {
    let mut revision = 0;
    loop {
        revision += 1;
        let mut view = Vec::with_capacity(workers.len());
        for w in &workers {
            view.push(probe(&state, w).await);
        }
        state.set_view(FleetView::new(revision, view));
        tokio::time::sleep(interval).await;
    }
}

async fn probe(state: &RouterState, w: &StaticWorker) -> Worker {
    let site_index = state
        .catalog
        .sites()
        .iter()
        .position(|s| s.id == w.pop)
        .unwrap_or(state.site_index);
    let jurisdiction = state.catalog.sites()[site_index].jurisdiction.clone();
    let mut entry = Worker {
        pop: w.pop.clone(),
        site_index,
        jurisdiction,
        worker_id: w.worker_id.clone(),
        endpoint: w.endpoint.clone(),
        model: String::new(),
        warm: false,
        healthy: false,
        cordoned: false,
        load: Load::default(),
    };
    let Ok(mut client) = state.client(&w.endpoint) else {
        return entry;
    };
    let timeout = Duration::from_millis(500);
    if let Ok(Ok(health)) = tokio::time::timeout(timeout, client.health(pb::HealthRequest {})).await
    {
        let health = health.into_inner();
        entry.healthy = true;
        entry.warm = health.state() == pb::WorkerState::Warm;
        entry.model = health
            .models
            .first()
            .map(|m| m.id.clone())
            .unwrap_or_default();
    }
    if let Ok(Ok(stats)) = tokio::time::timeout(timeout, client.stats(pb::StatsRequest {})).await
        && let Some(load) = stats.into_inner().load
    {
        entry.load = Load {
            queue_depth: load.queue_depth,
            running: load.running_sequences,
            max_running: load.max_running_sequences,
            kv_blocks_free: load.kv_blocks_free,
            kv_blocks_total: load.kv_blocks_total,
            mean_step_ms: load.mean_step_ms,
            prompt_tokens_per_second: load.prompt_tokens_per_second,
        };
    }
    entry
}

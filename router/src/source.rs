//! Where the router's fleet view comes from: the control plane's `WatchFleet` feed
//! (production), or, for a router pointed at bare workers, polling their own
//! `Worker.Stats`/`Health`.
//!
//! Static stability: while no control-plane replica answers, the router keeps the last
//! view it had and keeps routing on it; it resumes the feed from its last revision on
//! whichever replica answers next.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_proto::control::v1 as cpb;
use meridian_proto::control::v1::control_plane_client::ControlPlaneClient;
use meridian_proto::worker::v1 as pb;
use tonic::transport::Endpoint;

use crate::fleet::{FleetFeed, FleetView, Load, Worker};
use crate::state::RouterState;

/// Rebuilds of the view are at most this often; events in between are folded together.
const REBUILD_EVERY: Duration = Duration::from_millis(20);

/// Follows `WatchFleet` on `endpoints` (tried in turn) forever, swapping in a new view
/// after changes.
pub async fn watch_fleet(state: Arc<RouterState>, endpoints: Vec<String>) {
    let mut feed = FleetFeed::default();
    let mut next = 0usize;
    let mut backoff = Duration::from_millis(100);
    loop {
        let endpoint = &endpoints[next % endpoints.len().max(1)];
        match follow(&state, endpoint, &mut feed).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(control = endpoint, error = %e, revision = feed.revision, "fleet watch down; routing on the last view");
                next += 1;
            }
        }
        metrics::counter!("meridian_router_fleet_watch_reconnects_total").increment(1);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn follow(
    state: &RouterState,
    endpoint: &str,
    feed: &mut FleetFeed,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let channel = Endpoint::from_shared(endpoint.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let mut client = ControlPlaneClient::new(channel)
        .max_decoding_message_size(meridian_proto::MAX_MESSAGE_BYTES);
    let mut stream = client
        .watch_fleet(cpb::WatchFleetRequest {
            from_revision: feed.revision,
        })
        .await?
        .into_inner();
    tracing::info!(control = endpoint, from = feed.revision, "fleet watch open");
    let mut dirty = false;
    let mut last_build = Instant::now() - REBUILD_EVERY;
    loop {
        let wait = if dirty {
            REBUILD_EVERY.saturating_sub(last_build.elapsed())
        } else {
            Duration::from_secs(3600)
        };
        match tokio::time::timeout(wait, stream.message()).await {
            Ok(Ok(Some(event))) => {
                if event.revision < feed.revision
                    && !matches!(event.event, Some(cpb::fleet_event::Event::Snapshot(_)))
                {
                    continue;
                }
                feed.apply(event);
                dirty = true;
                if last_build.elapsed() < REBUILD_EVERY {
                    continue;
                }
            }
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(status)) => return Err(Box::new(status)),
            Err(_) => {}
        }
        if dirty {
            state.set_view(feed.view(state.catalog));
            metrics::gauge!("meridian_router_fleet_revision").set(feed.revision as f64);
            dirty = false;
            last_build = Instant::now();
        }
    }
}

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

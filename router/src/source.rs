//! Where the router's fleet view comes from: the control plane's `WatchFleet` feed.
//!
//! Static stability: while no control-plane replica answers, the router keeps the last
//! view it had and keeps routing on it; it resumes the feed from its last revision on
//! whichever replica answers next.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_proto::control::v1 as cpb;
use meridian_proto::control::v1::control_plane_client::ControlPlaneClient;
use tonic::transport::Endpoint;

use crate::fleet::FleetFeed;
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

/// Reports the demand this router saw to the control plane every
/// `config.demand_report_ms`, trying `endpoints` in turn. A window that cannot be
/// delivered is folded into the next one, so no request goes uncounted.
pub async fn report_demand(state: Arc<RouterState>, endpoints: Vec<String>) {
    let every = Duration::from_millis(state.config.demand_report_ms);
    if every.is_zero() || endpoints.is_empty() {
        return;
    }
    let mut next = 0usize;
    let mut client: Option<ControlPlaneClient<tonic::transport::Channel>> = None;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut window_start = Instant::now();
    loop {
        ticker.tick().await;
        let counts = state.demand.take();
        let window_ms = window_start.elapsed().as_millis().min(u128::from(u32::MAX)) as u32;
        if counts.is_empty() {
            window_start = Instant::now();
            continue;
        }
        let end_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let report = crate::demand::report(
            state.catalog,
            &state.id,
            &state.config.site,
            window_ms.max(1),
            end_unix_ms,
            &counts,
        );
        let endpoint = &endpoints[next % endpoints.len()];
        let sent = async {
            if client.is_none() {
                let channel = Endpoint::from_shared(endpoint.clone())?
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(5))
                    .connect()
                    .await?;
                client = Some(ControlPlaneClient::new(channel));
            }
            match client.as_mut() {
                Some(c) => c
                    .report_demand(report)
                    .await
                    .map(|_| ())
                    .map_err(Into::into),
                None => Ok(()),
            }
        };
        let sent: Result<(), Box<dyn std::error::Error + Send + Sync>> = sent.await;
        match sent {
            Ok(()) => {
                metrics::counter!(crate::metrics::DEMAND_REPORTS_TOTAL, "result" => "ok")
                    .increment(1);
                window_start = Instant::now();
            }
            Err(e) => {
                tracing::warn!(control = endpoint, error = %e, "demand report failed; keeping the window for the next one");
                metrics::counter!(crate::metrics::DEMAND_REPORTS_TOTAL, "result" => "failed")
                    .increment(1);
                state.demand.restore(counts);
                client = None;
                next += 1;
            }
        }
    }
}

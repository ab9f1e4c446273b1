//! The work only one replica may do, and the election that picks it: every replica
//! campaigns on the store's election under a short lease it renews; the winner runs the
//! reconcile loop until it loses the lease (crash, partition, store outage), and another
//! replica takes over once that lease lapses.

use std::sync::Arc;
use std::time::Duration;

use meridian_proto::control::v1 as pb;
use prost::Message;
use tokio::sync::watch;

use crate::cache::FleetCache;
use crate::config::PlacementConfig;
use crate::fleet::{DirectiveRecord, Keys};
use crate::planning;
use crate::reconcile::{Action, Existing, reconcile};
use crate::store::{Store, StoreError};

/// Lease of the leader's candidacy: a dead leader is replaced within this (plus etcd's
/// expiry check), well inside the 5 s the control-plane issue asks for.
pub const LEADER_TTL_MS: u64 = 2_000;
const RENEW_EVERY: Duration = Duration::from_millis(500);
const ROUND_EVERY: Duration = Duration::from_millis(500);

/// Campaigns, leads (the `meridian_control_leader` gauge says so), and campaigns again,
/// until `stop` turns true; then resigns by
/// revoking its lease so a successor need not wait for it to lapse.
pub async fn run(
    store: Arc<dyn Store>,
    keys: Keys,
    cache: Arc<FleetCache>,
    placement: PlacementConfig,
    replica_id: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    while !*stop.borrow() {
        let lease = match store.grant_lease(LEADER_TTL_MS).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take a leader lease; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        let (lost_tx, mut lost) = watch::channel(false);
        let renew = tokio::spawn({
            let store = store.clone();
            async move {
                loop {
                    tokio::time::sleep(RENEW_EVERY).await;
                    match store.keep_alive(lease).await {
                        Ok(()) => {}
                        Err(StoreError::LeaseNotFound(_)) => break,
                        // Transient: the lease may yet hold; it lapses on its own if not.
                        Err(e) => tracing::debug!(error = %e, "leader lease renewal failed"),
                    }
                }
                let _ = lost_tx.send(true);
            }
        });
        let election = keys.election();
        let won = tokio::select! {
            r = store.campaign(&election, &replica_id, lease) => r.is_ok(),
            _ = lost.changed() => false,
            _ = stop.changed() => false,
        };
        if won {
            metrics::gauge!("meridian_control_leader").set(1.0);
            tracing::info!(replica = replica_id, "became leader");
            let mut tick = tokio::time::interval(ROUND_EVERY);
            let mut failing = false;
            let mut planned = tokio::time::Instant::now();
            loop {
                let plan_due = placement.interval_ms > 0
                    && planned.elapsed() >= Duration::from_millis(placement.interval_ms);
                if plan_due {
                    planned = tokio::time::Instant::now();
                    if let Err(e) = planning::auto_round(&*store, &keys, &cache, &placement).await {
                        tracing::warn!(error = %e, "placement round failed");
                        metrics::counter!("meridian_control_placement_rounds_failed_total")
                            .increment(1);
                    }
                }
                tokio::select! {
                    _ = tick.tick() => {
                        match round(&*store, &keys, &cache).await {
                            Ok(()) if failing => {
                                tracing::info!("reconcile rounds succeed again");
                                failing = false;
                            }
                            Ok(()) => {}
                            Err(e) if !failing => {
                                tracing::warn!(error = %e, "reconcile rounds failing until the store answers");
                                failing = true;
                            }
                            Err(_) => {}
                        }
                    }
                    _ = lost.changed() => break,
                    _ = stop.changed() => break,
                }
            }
            metrics::gauge!("meridian_control_leader").set(0.0);
            tracing::warn!(replica = replica_id, "no longer leader");
        }
        renew.abort();
        let _ = store.revoke(lease).await;
    }
}

/// One reconcile round: read directives, statuses and placement; write the decisions.
async fn round(store: &dyn Store, keys: &Keys, cache: &FleetCache) -> Result<(), StoreError> {
    let (directives, _) = store.get_prefix(&keys.directives_all()).await?;
    let (statuses, _) = store.get_prefix(&keys.statuses_all()).await?;
    let placement = match store.get(&keys.placement()).await? {
        Some(kv) => pb::Placement::decode(kv.value.as_slice()).ok(),
        None => None,
    };
    let existing: Vec<Existing> = directives
        .iter()
        .filter_map(|kv| {
            let rest = kv.key.strip_prefix(&keys.directives_all())?;
            let (pop, id) = rest.split_once('/')?;
            let directive = pb::Directive::decode(kv.value.as_slice()).ok()?;
            let status = statuses
                .iter()
                .find(|s| s.key == keys.status(pop, id))
                .and_then(|s| serde_json::from_slice::<DirectiveRecord>(&s.value).ok());
            Some(Existing {
                pop: pop.to_string(),
                directive,
                status,
            })
        })
        .collect();
    let mut new_id = || {
        format!(
            "{:x}-{:08x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
            rand::random::<u32>()
        )
    };
    let actions =
        cache.with_state(|fleet| reconcile(fleet, placement.as_ref(), &existing, &mut new_id));
    for action in actions {
        match action {
            Action::Send { pop, directive } => {
                tracing::info!(
                    pop,
                    worker = directive.worker_id,
                    directive = directive.directive_id,
                    action = ?directive.action,
                    "directive issued"
                );
                store
                    .put(
                        &keys.directive(&pop, &directive.directive_id),
                        directive.encode_to_vec(),
                        0,
                    )
                    .await?;
            }
            Action::Clear { pop, id } => {
                store.delete(&keys.directive(&pop, &id)).await?;
                store.delete(&keys.status(&pop, &id)).await?;
            }
        }
    }
    Ok(())
}

//! A replica's live copy of the fleet: the store's change feed folded into a
//! [`FleetState`], a ring of recent fleet events for watchers that resume, and a
//! broadcast to every `WatchFleet` subscriber. One store watch per replica, however many
//! routers watch it. When the store is away the copy stays as it was (routers keep
//! routing) and the feed resumes from the last revision when it returns.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_proto::control::v1 as pb;
use tokio::sync::{broadcast, watch};
use tokio_stream::StreamExt;

use crate::fleet::{FleetState, Keys};
use crate::store::{Store, StoreError};

/// Fleet events kept for watchers resuming from a revision.
const RING: usize = 16_384;

struct Inner {
    state: FleetState,
    ring: VecDeque<Arc<pb::FleetEvent>>,
    /// Every event with a revision above this is in `ring`.
    covered_from: u64,
}

/// The live fleet of one replica.
pub struct FleetCache {
    keys: Keys,
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<pb::FleetEvent>>,
    ready: watch::Sender<bool>,
}

/// What a new subscriber gets: the events to send first, then the live feed.
pub struct Subscription {
    pub initial: Vec<Arc<pb::FleetEvent>>,
    pub live: broadcast::Receiver<Arc<pb::FleetEvent>>,
}

impl FleetCache {
    /// Starts following the store; the returned cache fills once the first read lands.
    pub fn start(store: Arc<dyn Store>, keys: Keys) -> Arc<Self> {
        let (events, _) = broadcast::channel(RING);
        let cache = Arc::new(Self {
            keys,
            inner: Mutex::new(Inner {
                state: FleetState::default(),
                ring: VecDeque::new(),
                covered_from: u64::MAX,
            }),
            events,
            ready: watch::channel(false).0,
        });
        tokio::spawn(follow(store, Arc::downgrade(&cache)));
        cache
    }

    /// Waits until the fleet has been read once.
    pub async fn ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Reads the current state.
    pub fn with_state<R>(&self, f: impl FnOnce(&FleetState) -> R) -> R {
        match self.inner.lock() {
            Ok(g) => f(&g.state),
            Err(p) => f(&p.into_inner().state),
        }
    }

    /// The whole fleet as one event.
    pub fn snapshot_event(&self) -> Arc<pb::FleetEvent> {
        self.with_state(snapshot_of)
    }

    /// Subscribes from `from_revision` (0: a snapshot first). Taken under the lock that
    /// publishing holds, so nothing falls between `initial` and `live`.
    pub fn subscribe(&self, from_revision: u64) -> Subscription {
        let g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let live = self.events.subscribe();
        let initial = if from_revision == 0 || from_revision < g.covered_from {
            vec![snapshot_of(&g.state)]
        } else {
            g.ring
                .iter()
                .filter(|e| e.revision > from_revision)
                .cloned()
                .collect()
        };
        Subscription { initial, live }
    }

    fn publish(&self, f: impl FnOnce(&mut Inner) -> Option<pb::FleetEvent>) {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(ev) = f(&mut g) {
            let ev = Arc::new(ev);
            if g.ring.len() == RING
                && let Some(old) = g.ring.pop_front()
            {
                g.covered_from = old.revision;
            }
            g.ring.push_back(ev.clone());
            let _ = self.events.send(ev);
        }
        metrics::gauge!("meridian_control_fleet_pops").set(g.state.len() as f64);
        metrics::gauge!("meridian_control_fleet_workers").set(g.state.worker_count() as f64);
    }
}

fn snapshot_of(state: &FleetState) -> Arc<pb::FleetEvent> {
    Arc::new(pb::FleetEvent {
        revision: state.revision,
        event: Some(pb::fleet_event::Event::Snapshot(state.snapshot())),
    })
}

/// Reads the fleet, then follows its changes; re-reads after compaction, resumes after
/// store outages. Ends when the cache is dropped.
async fn follow(store: Arc<dyn Store>, cache: std::sync::Weak<FleetCache>) {
    let mut backoff = Duration::from_millis(100);
    let mut loaded = false;
    loop {
        let Some(c) = cache.upgrade() else { return };
        let prefix = c.keys.fleet();
        if !loaded {
            match store.get_prefix(&prefix).await {
                Ok((kvs, revision)) => {
                    c.publish(|g| {
                        g.state = FleetState::load(&c.keys, &kvs, revision);
                        // Subscribers from before the reload start over from this one.
                        g.ring.clear();
                        g.covered_from = revision;
                        Some((*snapshot_of(&g.state)).clone())
                    });
                    c.ready.send_replace(true);
                    loaded = true;
                    tracing::info!(revision, pops = kvs.len(), "fleet loaded from the store");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the fleet; retrying");
                    drop(c);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        let from = c.with_state(|s| s.revision) + 1;
        let keys = c.keys.clone();
        drop(c);
        let mut stream = match store.watch_prefix(&prefix, from).await {
            Ok(s) => s,
            Err(StoreError::Compacted { .. }) => {
                loaded = false;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the fleet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        while let Some(item) = stream.next().await {
            let Some(c) = cache.upgrade() else { return };
            match item {
                Ok(event) => c.publish(|g| {
                    let ev = g.state.apply(&keys, &event);
                    if let Some(pb::FleetEvent {
                        revision,
                        event: Some(pb::fleet_event::Event::PopRemoved(pop)),
                    }) = &ev
                    {
                        tracing::info!(
                            pop,
                            revision,
                            "PoP left the fleet (lease expired or revoked)"
                        );
                    }
                    ev
                }),
                Err(StoreError::Compacted { .. }) => {
                    loaded = false;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fleet watch broke; resuming");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

//! The `ControlPlane` gRPC service: a thin shell over the `Store`, the fleet logic
//! (`crate::fleet`) and this replica's live fleet (`crate::cache`). Replicas are
//! stateless: a PoP's session is its store lease, so an agent may report to any replica
//! and a router may watch any replica and resume on another.
//!
//! Demand intake (ReportDemand, GetDemand) folds routers' windows into smoothed rates
//! (`crate::demand`); Plan, Apply and GetPlacement go through `crate::planning`;
//! GetPolicy and SetPolicy keep the policy with an optimistic revision.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_core::Stream;
use meridian_proto::catalog::Catalog;
use meridian_proto::control::v1 as pb;
use meridian_proto::control::v1::control_plane_server::ControlPlane;
use prost::Message;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::ControlConfig;
use crate::cache::FleetCache;
use crate::demand;
use crate::fleet::{self, DirectiveRecord, Keys, PopOps, Refusal};
use crate::leader;
use crate::planning::{self, PlanningError};
use crate::policy;
use crate::store::{LeaseId, Store, StoreError};

/// A control-plane replica.
#[derive(Clone)]
pub struct ControlPlaneService {
    inner: Arc<Inner>,
}

struct Inner {
    config: ControlConfig,
    store: Arc<dyn Store>,
    keys: Keys,
    cache: Arc<FleetCache>,
    catalog: &'static Catalog,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn refused(r: Refusal) -> Status {
    match r {
        Refusal::NotFound(m) => Status::not_found(m),
        Refusal::Invalid(m) => Status::invalid_argument(m),
    }
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Unavailable(m) => Status::unavailable(format!("fleet store unavailable: {m}")),
        other => Status::internal(other.to_string()),
    }
}

/// Times a store call for the round-trip histogram.
async fn timed<T>(f: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let out = f.await;
    metrics::histogram!("meridian_control_store_seconds").record(started.elapsed().as_secs_f64());
    out
}

/// `<POP>:<lease hex>`.
fn session_id(pop: &str, lease: LeaseId) -> String {
    format!("{pop}:{lease:x}")
}

fn parse_session(s: &str) -> Option<(&str, LeaseId)> {
    let (pop, lease) = s.split_once(':')?;
    Some((pop, LeaseId::from_str_radix(lease, 16).ok()?))
}

impl ControlPlaneService {
    /// Starts a replica on `store`: follows the fleet and campaigns for leadership until
    /// `stop` turns true.
    pub fn start(
        config: ControlConfig,
        store: Arc<dyn Store>,
        replica_id: String,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let keys = Keys::new(&config.store.prefix);
        let cache = FleetCache::start(store.clone(), keys.clone());
        tokio::spawn(leader::run(
            store.clone(),
            keys.clone(),
            cache.clone(),
            config.placement.clone(),
            replica_id,
            stop,
        ));
        Self {
            inner: Arc::new(Inner {
                config,
                store,
                keys,
                cache,
                catalog: Catalog::builtin(),
            }),
        }
    }

    /// This replica's live fleet.
    pub fn cache(&self) -> &Arc<FleetCache> {
        &self.inner.cache
    }

    /// Read-modify-write of a PoP's operator state, retried on conflicts.
    async fn update_ops(&self, pop: &str, f: impl Fn(&mut PopOps)) -> Result<u64, Status> {
        let key = self.inner.keys.ops(pop);
        for _ in 0..16 {
            let current = timed(self.inner.store.get(&key))
                .await
                .map_err(store_status)?;
            let (mut ops, rev) = match &current {
                Some(kv) => (
                    serde_json::from_slice::<PopOps>(&kv.value).unwrap_or_default(),
                    kv.mod_revision,
                ),
                None => (PopOps::default(), 0),
            };
            f(&mut ops);
            let value = serde_json::to_vec(&ops)
                .map_err(|e| Status::internal(format!("cannot encode ops: {e}")))?;
            let written = if ops == PopOps::default() {
                match current {
                    Some(_) => timed(self.inner.store.delete(&key)).await,
                    None => return Ok(self.inner.cache.with_state(|s| s.revision)),
                }
            } else {
                timed(self.inner.store.put_if(&key, value, rev, 0)).await
            };
            match written {
                Ok(r) => return Ok(r),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_status(e)),
            }
        }
        Err(Status::aborted(format!(
            "PoP {pop}'s operator state kept changing; try again"
        )))
    }

    fn known_pop(&self, pop: &str) -> Result<pb::PopState, Status> {
        self.inner
            .cache
            .with_state(|s| s.record(pop).cloned())
            .ok_or_else(|| Status::not_found(format!("PoP {pop:?} is not in the fleet")))
    }
}

/// One `WatchFleet` subscriber in the `meridian_control_watch_subscribers` gauge, for as
/// long as it lives.
struct Subscriber;

impl Subscriber {
    fn count() -> Self {
        metrics::gauge!("meridian_control_watch_subscribers").increment(1.0);
        Self
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        metrics::gauge!("meridian_control_watch_subscribers").decrement(1.0);
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn planning_status(e: PlanningError) -> Status {
    match e {
        PlanningError::Store(e) => store_status(e),
        PlanningError::Infeasible(m) => Status::failed_precondition(m),
        e @ PlanningError::UnknownPlan(_) => Status::not_found(e.to_string()),
        e @ PlanningError::Invalid { .. } => Status::failed_precondition(e.to_string()),
        e @ PlanningError::Moved { .. } => Status::aborted(e.to_string()),
        PlanningError::Internal(m) => Status::internal(m),
    }
}

/// One agent's Report stream: session state and the loop that serves it.
struct Session {
    inner: Arc<Inner>,
    pop: String,
    lease: LeaseId,
    record: pb::PopState,
    /// Mod revision of our last write of the PoP key; a write at another revision means
    /// the session was replaced.
    last_write: u64,
    last_seq: u64,
    last_renew: Instant,
    /// The last write failed for want of the store.
    store_down: bool,
}

impl Session {
    async fn open(inner: Arc<Inner>, session_id: &str) -> Result<Self, Status> {
        let expired = || {
            Status::not_found(format!(
                "session {session_id:?} is unknown or expired; register again"
            ))
        };
        let (pop, lease) = parse_session(session_id).ok_or_else(expired)?;
        let kv = timed(inner.store.get(&inner.keys.pop(pop)))
            .await
            .map_err(store_status)?
            .ok_or_else(expired)?;
        if kv.lease != lease {
            return Err(expired());
        }
        let record = pb::PopState::decode(kv.value.as_slice())
            .map_err(|e| Status::internal(format!("stored PoP record is corrupt: {e}")))?;
        Ok(Self {
            pop: pop.to_string(),
            lease,
            record,
            last_write: kv.mod_revision,
            last_seq: 0,
            last_renew: Instant::now(),
            store_down: false,
            inner,
        })
    }

    /// Stores one report. Ok(Some(seq)) to ack; Ok(None) when not stored this time (old
    /// seq, store away); Err ends the stream.
    async fn report(&mut self, report: pb::LoadReport) -> Result<Option<u64>, Status> {
        if report.session_id != session_id(&self.pop, self.lease) {
            return Err(Status::invalid_argument(format!(
                "load report for session {:?} on the stream of {:?}",
                report.session_id,
                session_id(&self.pop, self.lease)
            )));
        }
        if report.seq <= self.last_seq {
            return Ok(None);
        }
        let now = now_ms();
        if report.sent_unix_ms > 0 {
            metrics::histogram!("meridian_control_report_lag_seconds")
                .record(now.saturating_sub(report.sent_unix_ms) as f64 / 1e3);
        }
        let mut next = self.record.clone();
        fleet::merge_report(&mut next, &report, now).map_err(refused)?;
        let key = self.inner.keys.pop(&self.pop);
        let written = timed(self.inner.store.put_if(
            &key,
            next.encode_to_vec(),
            self.last_write,
            self.lease,
        ))
        .await;
        match written {
            Ok(rev) => {
                self.last_write = rev;
                self.last_seq = report.seq;
                self.record = next;
            }
            Err(StoreError::Conflict { .. }) | Err(StoreError::LeaseNotFound(_)) => {
                return Err(Status::not_found(format!(
                    "session {} expired or was replaced; register again",
                    session_id(&self.pop, self.lease)
                )));
            }
            Err(e) => {
                // Once per outage at warn; the agent keeps reporting and we keep trying.
                if !self.store_down {
                    tracing::warn!(pop = self.pop, error = %e, "load reports not stored until the store returns");
                    self.store_down = true;
                }
                return Ok(None);
            }
        }
        if self.store_down {
            tracing::info!(pop = self.pop, "load reports stored again");
            self.store_down = false;
        }
        let ttl = Duration::from_millis(self.inner.config.store.lease_ttl_ms);
        if self.last_renew.elapsed() >= ttl / 4 {
            match timed(self.inner.store.keep_alive(self.lease)).await {
                Ok(()) => self.last_renew = Instant::now(),
                Err(StoreError::LeaseNotFound(_)) => {
                    return Err(Status::not_found("session expired; register again"));
                }
                Err(e) => tracing::warn!(pop = self.pop, error = %e, "lease renewal failed"),
            }
        }
        Ok(Some(report.seq))
    }

    async fn directive_status(&self, s: pb::DirectiveStatus) -> Result<(), Status> {
        if s.directive_id.is_empty() || s.directive_id.contains('/') || s.directive_id.len() > 128 {
            return Err(Status::invalid_argument(format!(
                "directive_id {:?} is not a directive id",
                s.directive_id
            )));
        }
        let record = DirectiveRecord {
            state: s.state,
            message: s.message.chars().take(1024).collect(),
            progress: s.progress,
        };
        tracing::info!(
            pop = self.pop,
            directive = s.directive_id,
            state = ?pb::DirectiveState::try_from(s.state).unwrap_or_default(),
            message = record.message,
            "directive status"
        );
        let value = serde_json::to_vec(&record)
            .map_err(|e| Status::internal(format!("cannot encode a status: {e}")))?;
        if let Err(e) = timed(self.inner.store.put(
            &self.inner.keys.status(&self.pop, &s.directive_id),
            value,
            0,
        ))
        .await
        {
            tracing::warn!(pop = self.pop, error = %e, "directive status not stored");
        }
        Ok(())
    }
}

/// Sends a directive unless this stream already did; false once the stream is gone.
async fn send_once(
    out: &mpsc::Sender<Result<pb::ControlMessage, Status>>,
    sent: &mut std::collections::HashSet<String>,
    pop: &str,
    d: pb::Directive,
) -> bool {
    if !sent.insert(d.directive_id.clone()) {
        return true;
    }
    tracing::info!(pop, directive = d.directive_id, "directive sent");
    let msg = pb::ControlMessage {
        msg: Some(pb::control_message::Msg::Directive(d)),
    };
    out.send(Ok(msg)).await.is_ok()
}

/// Sends the PoP's unfinished directives, then new ones as the leader writes them.
async fn forward_directives(
    inner: Arc<Inner>,
    pop: String,
    out: mpsc::Sender<Result<pb::ControlMessage, Status>>,
) {
    let prefix = inner.keys.directives(&pop);
    let mut sent = std::collections::HashSet::new();
    let mut from = 0u64;
    let mut backoff = Duration::from_millis(100);
    loop {
        if from == 0 {
            let listed = async {
                let (ds, rev) = inner.store.get_prefix(&prefix).await?;
                let (ss, _) = inner
                    .store
                    .get_prefix(&format!("{}{pop}/", inner.keys.statuses_all()))
                    .await?;
                Ok::<_, StoreError>((ds, ss, rev))
            };
            match listed.await {
                Ok((ds, ss, rev)) => {
                    for kv in ds {
                        let Ok(d) = pb::Directive::decode(kv.value.as_slice()) else {
                            continue;
                        };
                        let status = inner.keys.status(&pop, &d.directive_id);
                        let finished = ss.iter().any(|s| {
                            s.key == status
                                && serde_json::from_slice::<DirectiveRecord>(&s.value)
                                    .is_ok_and(|r| r.finished())
                        });
                        if !finished && !send_once(&out, &mut sent, &pop, d).await {
                            return;
                        }
                    }
                    from = rev + 1;
                }
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            }
        }
        let mut stream = match inner.store.watch_prefix(&prefix, from).await {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                from = 0;
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        while let Some(item) = stream.next().await {
            match item {
                Ok(crate::store::WatchEvent::Put(kv)) => {
                    from = kv.mod_revision + 1;
                    let Ok(d) = pb::Directive::decode(kv.value.as_slice()) else {
                        continue;
                    };
                    if !send_once(&out, &mut sent, &pop, d).await {
                        return;
                    }
                }
                Ok(e) => from = e.revision() + 1,
                Err(_) => break,
            }
        }
        if out.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
    }
}

#[tonic::async_trait]
impl ControlPlane for ControlPlaneService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let req = request.into_inner();
        let inner = &self.inner;
        let record = fleet::register(inner.catalog, &req, now_ms()).map_err(|r| {
            tracing::warn!(pop = req.pop_id, reason = %r, "registration refused");
            refused(r)
        })?;
        let ttl = inner.config.store.lease_ttl_ms;
        let lease = timed(inner.store.grant_lease(ttl))
            .await
            .map_err(store_status)?;
        let key = inner.keys.pop(&record.pop_id);
        let old = timed(inner.store.get(&key)).await.map_err(store_status)?;
        let revision = timed(inner.store.put(&key, record.encode_to_vec(), lease))
            .await
            .map_err(store_status)?;
        if let Some(old) = old
            && old.lease != 0
            && old.lease != lease
        {
            let _ = inner.store.revoke(old.lease).await;
        }
        tracing::info!(
            pop = record.pop_id,
            workers = record.workers.len(),
            gpus = record.gpus.iter().map(|g| g.count).sum::<u32>(),
            agent = req.agent_version,
            session = session_id(&record.pop_id, lease),
            revision,
            "PoP registered"
        );
        Ok(Response::new(pb::RegisterResponse {
            session_id: session_id(&record.pop_id, lease),
            lease_ttl_ms: ttl as u32,
            report_interval_ms: inner.config.report_interval_ms as u32,
            revision,
        }))
    }

    type ReportStream = BoxStream<pb::ControlMessage>;

    async fn report(
        &self,
        request: Request<Streaming<pb::PopMessage>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let mut incoming = request.into_inner();
        let first = incoming.message().await?.ok_or_else(|| {
            Status::invalid_argument("the Report stream closed before ReportHello")
        })?;
        let Some(pb::pop_message::Msg::Hello(hello)) = first.msg else {
            return Err(Status::invalid_argument(
                "the first message of a Report stream must be ReportHello",
            ));
        };
        let mut session = Session::open(self.inner.clone(), &hello.session_id).await?;
        tracing::info!(
            pop = session.pop,
            session = hello.session_id,
            "report stream opened"
        );
        let (tx, rx) = mpsc::channel(64);
        let directives = tokio::spawn(forward_directives(
            self.inner.clone(),
            session.pop.clone(),
            tx.clone(),
        ));
        tokio::spawn(async move {
            let end = loop {
                let msg = tokio::select! {
                    m = incoming.message() => m,
                    _ = tx.closed() => break None,
                };
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => break None,
                    Err(e) => {
                        tracing::debug!(pop = session.pop, error = %e, "report stream broke");
                        break None;
                    }
                };
                let step = match msg.msg {
                    Some(pb::pop_message::Msg::Load(report)) => {
                        match session.report(report).await {
                            Ok(Some(seq)) => {
                                let ack = pb::ControlMessage {
                                    msg: Some(pb::control_message::Msg::Ack(pb::ReportAck { seq })),
                                };
                                if tx.send(Ok(ack)).await.is_err() {
                                    break None;
                                }
                                Ok(())
                            }
                            Ok(None) => Ok(()),
                            Err(s) => Err(s),
                        }
                    }
                    Some(pb::pop_message::Msg::DirectiveStatus(s)) => {
                        session.directive_status(s).await
                    }
                    Some(pb::pop_message::Msg::Hello(_)) => Err(Status::invalid_argument(
                        "ReportHello may only be the first message",
                    )),
                    None => Err(Status::invalid_argument("empty PopMessage")),
                };
                if let Err(s) = step {
                    break Some(s);
                }
            };
            directives.abort();
            if let Some(status) = end {
                tracing::warn!(pop = session.pop, status = %status.message(), "report stream ended");
                let _ = tx.send(Err(status)).await;
            } else {
                tracing::info!(pop = session.pop, "report stream closed");
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchFleetStream = BoxStream<pb::FleetEvent>;

    async fn watch_fleet(
        &self,
        request: Request<pb::WatchFleetRequest>,
    ) -> Result<Response<Self::WatchFleetStream>, Status> {
        let from = request.into_inner().from_revision;
        let cache = self.inner.cache.clone();
        if tokio::time::timeout(Duration::from_secs(5), cache.ready())
            .await
            .is_err()
        {
            return Err(Status::unavailable(
                "this replica has not read the fleet yet (store unavailable?)",
            ));
        }
        let sub = cache.subscribe(from);
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            let _counted = Subscriber::count();
            let mut last = from;
            let mut live = sub.live;
            for ev in sub.initial {
                last = last.max(ev.revision);
                if tx.send(Ok((*ev).clone())).await.is_err() {
                    return;
                }
            }
            loop {
                let ev = tokio::select! {
                    ev = live.recv() => ev,
                    _ = tx.closed() => break,
                };
                let ev = match ev {
                    Ok(ev)
                        if ev.revision > last
                            || matches!(ev.event, Some(pb::fleet_event::Event::Snapshot(_))) =>
                    {
                        ev
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "slow fleet watcher: sending a snapshot");
                        cache.snapshot_event()
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                last = ev.revision;
                if tx.send(Ok((*ev).clone())).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_demand(
        &self,
        request: Request<pb::DemandReport>,
    ) -> Result<Response<pb::DemandAck>, Status> {
        let report = request.into_inner();
        demand::check(self.inner.catalog, &report).map_err(refused)?;
        // Only this router writes its key; a lost race is a duplicate delivery.
        let key = self.inner.keys.demand(&report.router_id);
        let record = timed(self.inner.store.get(&key))
            .await
            .map_err(store_status)?
            .and_then(|kv| serde_json::from_slice::<demand::RouterDemand>(&kv.value).ok());
        if let Some(next) = demand::fold(record, &report, now_ms()) {
            let value = serde_json::to_vec(&next)
                .map_err(|e| Status::internal(format!("encoding demand: {e}")))?;
            timed(self.inner.store.put(&key, value, 0))
                .await
                .map_err(store_status)?;
            metrics::counter!("meridian_control_demand_reports_total").increment(1);
        }
        Ok(Response::new(pb::DemandAck {}))
    }

    async fn get_demand(
        &self,
        _request: Request<pb::GetDemandRequest>,
    ) -> Result<Response<pb::DemandSummary>, Status> {
        let rates = timed(planning::demand(&*self.inner.store, &self.inner.keys))
            .await
            .map_err(planning_status)?
            .into_iter()
            .map(|(key, r, routers)| pb::DemandRate {
                region: key.region,
                model: key.model,
                jurisdictions: key.jurisdictions,
                rps: r.rps,
                prompt_tokens_per_s: r.prompt_tokens_per_s,
                completion_tokens_per_s: r.completion_tokens_per_s,
                refused_rps: r.refused_rps,
                routers,
            })
            .collect();
        Ok(Response::new(pb::DemandSummary { rates }))
    }

    async fn plan(
        &self,
        request: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        let req = request.into_inner();
        let inner = &self.inner;
        let (plan, instance) = planning::plan(
            &*inner.store,
            &inner.keys,
            &inner.cache,
            &inner.config.placement,
            req.max_moves,
        )
        .await
        .map_err(planning_status)?;
        tracing::info!(
            plan = plan.id,
            valid = plan.valid,
            changes = plan.response(None).changes.len(),
            seconds = plan.seconds,
            "plan made"
        );
        Ok(Response::new(plan.response(Some(&instance))))
    }

    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let req = request.into_inner();
        let revision = planning::apply(
            &*self.inner.store,
            &self.inner.keys,
            &req.plan_id,
            req.expected_revision,
        )
        .await
        .map_err(planning_status)?;
        Ok(Response::new(pb::ApplyResponse { revision }))
    }

    async fn get_placement(
        &self,
        _request: Request<pb::GetPlacementRequest>,
    ) -> Result<Response<pb::Placement>, Status> {
        let (placement, _) = planning::placement(&*self.inner.store, &self.inner.keys)
            .await
            .map_err(planning_status)?;
        Ok(Response::new(placement))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let req = request.into_inner();
        let record = self.known_pop(&req.pop_id)?;
        if !req.worker_id.is_empty() && !record.workers.iter().any(|w| w.worker_id == req.worker_id)
        {
            return Err(Status::not_found(format!(
                "PoP {} has no worker {:?}",
                req.pop_id, req.worker_id
            )));
        }
        let worker = req.worker_id.clone();
        let revision = self
            .update_ops(&req.pop_id, |ops| {
                if worker.is_empty() {
                    ops.cordoned = true;
                    ops.draining = true;
                } else if !ops.drained_workers.contains(&worker) {
                    ops.drained_workers.push(worker.clone());
                }
            })
            .await?;
        tracing::info!(
            pop = req.pop_id,
            worker = req.worker_id,
            revision,
            "drain recorded"
        );
        Ok(Response::new(pb::DrainResponse { revision }))
    }

    async fn cordon(
        &self,
        request: Request<pb::CordonRequest>,
    ) -> Result<Response<pb::CordonResponse>, Status> {
        let req = request.into_inner();
        self.known_pop(&req.pop_id)?;
        let cordoned = req.cordoned;
        let revision = self
            .update_ops(&req.pop_id, |ops| {
                if cordoned {
                    ops.cordoned = true;
                } else {
                    *ops = PopOps::default();
                }
            })
            .await?;
        tracing::info!(pop = req.pop_id, cordoned, revision, "cordon recorded");
        Ok(Response::new(pb::CordonResponse { revision }))
    }

    async fn get_policy(
        &self,
        _request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        let (policy, _) = timed(planning::policy(&*self.inner.store, &self.inner.keys))
            .await
            .map_err(planning_status)?;
        Ok(Response::new(policy))
    }

    async fn set_policy(
        &self,
        request: Request<pb::Policy>,
    ) -> Result<Response<pb::Policy>, Status> {
        let mut next = request.into_inner();
        policy::check(self.inner.catalog, &next).map_err(refused)?;
        let (current, mod_revision) = timed(planning::policy(&*self.inner.store, &self.inner.keys))
            .await
            .map_err(planning_status)?;
        if next.revision != current.revision {
            return Err(Status::aborted(format!(
                "the policy is at revision {}, not {}: read it again and retry",
                current.revision, next.revision
            )));
        }
        next.revision = current.revision + 1;
        match timed(self.inner.store.put_if(
            &self.inner.keys.policy(),
            next.encode_to_vec(),
            mod_revision,
            0,
        ))
        .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                return Err(Status::aborted(
                    "the policy changed while it was being set: read it again and retry",
                ));
            }
            Err(e) => return Err(store_status(e)),
        }
        tracing::info!(
            revision = next.revision,
            rules = next.rules.len(),
            pins = next.pins.len(),
            "policy set"
        );
        Ok(Response::new(next))
    }
}

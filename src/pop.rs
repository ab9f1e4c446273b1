//! The PoP agent (`meridian pop`, and each PoP of `meridian up`): hosts engine workers,
//! registers them with the control plane, streams their load a few times a second and
//! carries out the directives it gets back (load, unload, drain).
//!
//! Static stability: the workers serve routers directly over their own gRPC endpoints,
//! so while no control-plane replica answers the PoP keeps serving with what it has; the
//! agent retries every replica with backoff and registers again when one answers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use meridian_engine::service::WorkerService;
use meridian_engine::slot::WorkerSlot;
use meridian_proto::control::v1 as pb;
use meridian_proto::control::v1::control_plane_client::ControlPlaneClient;
use meridian_proto::worker::v1::worker_server::WorkerServer;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::config::PopConfig;
use crate::grpc;

/// Longest a drain waits for in-flight requests before unloading anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// One hosted worker.
pub struct HostedWorker {
    pub worker_id: String,
    pub endpoint: String,
    pub slot: Arc<WorkerSlot>,
}

/// A running agent.
pub struct Agent {
    pub pop_id: String,
    pub workers: Vec<HostedWorker>,
    /// Model ids this agent can load by id, and their files.
    models: HashMap<String, PathBuf>,
    cfg: PopConfig,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Agent {
    /// Binds and serves the workers (empty until their model loads); `model` is the file
    /// each worker loads at start and the one it can load again by id.
    pub async fn start(
        cfg: PopConfig,
        model: PathBuf,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<Self>> {
        let mut workers = Vec::new();
        for i in 0..cfg.workers {
            let listen = SocketAddr::new(
                cfg.worker_listen.ip(),
                match cfg.worker_listen.port() {
                    0 => 0,
                    p => p + i as u16,
                },
            );
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot bind worker {i} on {listen}"))?;
            let addr = listener.local_addr()?;
            let slot = WorkerSlot::empty(cfg.engine.clone());
            let service = WorkerServer::new(WorkerService::new(slot.clone()))
                .max_decoding_message_size(meridian_proto::MAX_MESSAGE_BYTES);
            let name = <WorkerServer<WorkerService> as tonic::server::NamedService>::NAME;
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(e) = grpc::serve(
                    listener,
                    tonic::service::Routes::new(service),
                    name,
                    shutdown,
                )
                .await
                {
                    tracing::error!(error = %e, "worker server failed");
                }
            });
            let host = cfg
                .advertise_host
                .clone()
                .unwrap_or_else(|| addr.ip().to_string());
            workers.push(HostedWorker {
                worker_id: format!("cpu{i}"),
                endpoint: format!("http://{host}:{}", addr.port()),
                slot,
            });
        }
        let id = meridian_engine::model_id(&model);
        let agent = Arc::new(Self {
            pop_id: cfg.pop_id.clone(),
            workers,
            models: HashMap::from([(id.clone(), model.clone())]),
            cfg,
        });
        for w in &agent.workers {
            let slot = w.slot.clone();
            let (id, path, worker) = (id.clone(), model.clone(), w.worker_id.clone());
            tokio::task::spawn_blocking(move || {
                if let Err(e) = slot.load(&id, &path) {
                    tracing::error!(worker, error = %e, "initial model load failed");
                }
            });
        }
        Ok(agent)
    }

    /// Waits until every worker is warm (or one failed).
    pub async fn wait_warm(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let states: Vec<_> = self.workers.iter().map(|w| w.slot.state()).collect();
            if states
                .iter()
                .all(|s| *s == meridian_proto::worker::v1::WorkerState::Warm)
            {
                return Ok(());
            }
            if let Some(w) = self
                .workers
                .iter()
                .find(|w| w.slot.state() == meridian_proto::worker::v1::WorkerState::Failed)
            {
                anyhow::bail!("worker {} failed to load: {}", w.worker_id, w.slot.detail());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "workers not warm within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn registration(&self) -> pb::RegisterRequest {
        let catalog = meridian_proto::catalog::Catalog::builtin();
        let site = catalog.get(&self.pop_id);
        pb::RegisterRequest {
            pop_id: self.pop_id.clone(),
            location: site.map(|s| pb::Location {
                lat: s.lat,
                lon: s.lon,
            }),
            jurisdiction: site.map(|s| s.jurisdiction.clone()).unwrap_or_default(),
            gpus: Vec::new(),
            workers: self
                .workers
                .iter()
                .map(|w| pb::WorkerEndpoint {
                    worker_id: w.worker_id.clone(),
                    endpoint: w.endpoint.clone(),
                    device: "cpu".into(),
                    gpu_kind: String::new(),
                })
                .collect(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            labels: self.cfg.labels.clone().into_iter().collect(),
        }
    }

    fn load_report(&self, session_id: &str, seq: u64) -> pb::LoadReport {
        pb::LoadReport {
            session_id: session_id.to_string(),
            seq,
            sent_unix_ms: now_ms(),
            workers: self
                .workers
                .iter()
                .map(|w| pb::WorkerReport {
                    worker_id: w.worker_id.clone(),
                    model: w.slot.model_id().unwrap_or_default(),
                    state: w.slot.state() as i32,
                    load_progress: w.slot.load_progress(),
                    load: Some(w.slot.load_figure()),
                })
                .collect(),
        }
    }

    /// Reports to the control plane until `stop`, reconnecting and re-registering as
    /// needed; the workers serve regardless.
    pub async fn report_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let (status_tx, mut status_rx) = mpsc::unbounded_channel::<pb::DirectiveStatus>();
        let mut directives: HashMap<String, pb::DirectiveStatus> = HashMap::new();
        let mut next = 0usize;
        let mut backoff = Duration::from_millis(200);
        while !*stop.borrow() {
            let endpoint =
                self.cfg.control_endpoints[next % self.cfg.control_endpoints.len()].clone();
            let outcome = tokio::select! {
                r = self.session(&endpoint, &status_tx, &mut status_rx, &mut directives) => r,
                _ = stop.changed() => return,
            };
            match outcome {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(e) => {
                    tracing::warn!(pop = self.pop_id, control = endpoint, error = %e, "control plane session ended; retrying");
                    next += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One registration and its report stream; returns when the stream ends.
    async fn session(
        self: &Arc<Self>,
        endpoint: &str,
        status_tx: &mpsc::UnboundedSender<pb::DirectiveStatus>,
        status_rx: &mut mpsc::UnboundedReceiver<pb::DirectiveStatus>,
        directives: &mut HashMap<String, pb::DirectiveStatus>,
    ) -> anyhow::Result<()> {
        // One connection for both calls; only the unary Register gets a deadline, the
        // report stream lives as long as the session, kept honest by HTTP/2 pings.
        let channel: Channel = Endpoint::from_shared(endpoint.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2))
            .connect()
            .await
            .with_context(|| format!("cannot reach {endpoint}"))?;
        let mut client = ControlPlaneClient::new(channel)
            .max_decoding_message_size(meridian_proto::MAX_MESSAGE_BYTES);
        let mut register = tonic::Request::new(self.registration());
        register.set_timeout(Duration::from_secs(5));
        let reg = client
            .register(register)
            .await
            .context("registration refused")?
            .into_inner();
        tracing::info!(
            pop = self.pop_id,
            control = endpoint,
            session = reg.session_id,
            "registered"
        );
        let (tx, rx) = mpsc::channel(64);
        tx.send(pb::PopMessage {
            msg: Some(pb::pop_message::Msg::Hello(pb::ReportHello {
                session_id: reg.session_id.clone(),
            })),
        })
        .await?;
        let mut inbound = client
            .report(ReceiverStream::new(rx))
            .await
            .context("cannot open the report stream")?
            .into_inner();
        let interval = Duration::from_millis(u64::from(reg.report_interval_ms.max(50)));
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    seq += 1;
                    let report = self.load_report(&reg.session_id, seq);
                    tx.send(pb::PopMessage { msg: Some(pb::pop_message::Msg::Load(report)) })
                        .await
                        .context("report stream closed")?;
                }
                status = status_rx.recv() => {
                    let Some(status) = status else { anyhow::bail!("status channel closed") };
                    directives.insert(status.directive_id.clone(), status.clone());
                    tx.send(pb::PopMessage { msg: Some(pb::pop_message::Msg::DirectiveStatus(status)) })
                        .await
                        .context("report stream closed")?;
                }
                msg = inbound.message() => {
                    let msg = msg.context("report stream failed")?;
                    let Some(msg) = msg else { anyhow::bail!("the control plane closed the report stream") };
                    match msg.msg {
                        Some(pb::control_message::Msg::Directive(d)) => {
                            if let Some(last) = directives.get(&d.directive_id) {
                                // Sent again on a new stream: repeat where it stands.
                                let _ = status_tx.send(last.clone());
                            } else {
                                let pending = status(&d.directive_id, pb::DirectiveState::Pending, "", 0.0);
                                directives.insert(d.directive_id.clone(), pending);
                                tokio::spawn(self.clone().carry_out(d, status_tx.clone()));
                            }
                        }
                        Some(pb::control_message::Msg::Ack(_)) | None => {}
                    }
                }
            }
        }
    }

    /// Carries out one directive, reporting progress.
    async fn carry_out(
        self: Arc<Self>,
        d: pb::Directive,
        out: mpsc::UnboundedSender<pb::DirectiveStatus>,
    ) {
        let id = d.directive_id.clone();
        tracing::info!(pop = self.pop_id, directive = id, worker = d.worker_id, action = ?d.action, "directive received");
        let _ = out.send(status(&id, pb::DirectiveState::InProgress, "", 0.0));
        let result = self.execute(&d).await;
        let final_status = match result {
            Ok(()) => status(&id, pb::DirectiveState::Done, "", 1.0),
            Err(e) => {
                tracing::warn!(pop = self.pop_id, directive = id, error = %e, "directive failed");
                status(&id, pb::DirectiveState::Failed, &format!("{e:#}"), 0.0)
            }
        };
        let _ = out.send(final_status);
    }

    async fn execute(&self, d: &pb::Directive) -> anyhow::Result<()> {
        let w = self
            .workers
            .iter()
            .find(|w| w.worker_id == d.worker_id)
            .with_context(|| format!("this PoP has no worker {:?}", d.worker_id))?;
        match &d.action {
            Some(pb::directive::Action::Load(load)) => {
                let path = if load.source.is_empty() {
                    self.models.get(&load.model).cloned().with_context(|| {
                        format!("model {:?} is not available at this PoP", load.model)
                    })?
                } else {
                    PathBuf::from(load.source.strip_prefix("file://").unwrap_or(&load.source))
                };
                let slot = w.slot.clone();
                let model = load.model.clone();
                tokio::task::spawn_blocking(move || slot.load(&model, &path)).await??;
            }
            Some(pb::directive::Action::Unload(u)) => w.slot.unload(Some(&u.model))?,
            Some(pb::directive::Action::Drain(_)) => {
                // A client that stops reading keeps its request in flight: bound the wait.
                if tokio::time::timeout(DRAIN_TIMEOUT, w.slot.drain())
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        pop = self.pop_id,
                        worker = w.worker_id,
                        "drain timed out; unloading"
                    );
                    w.slot.unload(None)?;
                }
            }
            None => anyhow::bail!("directive {} has no action", d.directive_id),
        }
        Ok(())
    }
}

fn status(
    id: &str,
    state: pb::DirectiveState,
    message: &str,
    progress: f32,
) -> pb::DirectiveStatus {
    pb::DirectiveStatus {
        directive_id: id.to_string(),
        state: state as i32,
        message: message.to_string(),
        progress,
    }
}

/// `meridian pop`: starts the agent, prints its workers, reports until Ctrl-C.
pub async fn run(cfg: PopConfig, model: PathBuf) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let agent = Agent::start(cfg, model, stop_rx.clone()).await?;
    for w in &agent.workers {
        println!(
            "pop {} worker {} on {}",
            agent.pop_id, w.worker_id, w.endpoint
        );
    }
    let reporter = tokio::spawn(agent.clone().report_loop(stop_rx));
    agent.wait_warm(Duration::from_secs(300)).await?;
    println!("pop {} warm", agent.pop_id);
    grpc::ctrl_c().await;
    let _ = stop_tx.send(true);
    let _ = reporter.await;
    Ok(())
}

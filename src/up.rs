//! `meridian up`: PoPs with CPU workers on the real model and a router, in one process.
//!
//! Until the control plane lands, the router's fleet view comes from the workers this
//! process starts, polled over their own `Worker.Stats`/`Health` (the same gRPC a remote
//! worker answers), not from `WatchFleet`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meridian_engine::Engine;
use meridian_engine::service::WorkerService;
use meridian_proto::worker::v1::worker_server::WorkerServer;
use meridian_router::source::StaticWorker;
use meridian_router::state::RouterState;
use tokio::sync::watch;

use crate::config::UpConfig;
use crate::grpc;

/// Starts one engine worker on a free loopback port; returns its endpoint.
async fn start_worker(
    model: &Path,
    cfg: &UpConfig,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(String, String)> {
    let engine = tokio::task::block_in_place(|| Engine::load(model, &cfg.engine))
        .with_context(|| format!("cannot load {}", model.display()))?;
    let model_id = meridian_engine::model_id(model);
    let service = WorkerService::new(
        Arc::new(engine),
        model_id.clone(),
        cfg.engine.max_batch_tokens,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service =
        WorkerServer::new(service).max_decoding_message_size(meridian_proto::MAX_MESSAGE_BYTES);
    let name = <WorkerServer<WorkerService> as tonic::server::NamedService>::NAME;
    let mut stop = stop;
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
    Ok((format!("http://{addr}"), model_id))
}

/// Runs until Ctrl-C.
pub async fn run(cfg: UpConfig, model: &Path) -> anyhow::Result<()> {
    let metrics = crate::telemetry::install_metrics(None)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = Vec::new();
    for pop in &cfg.pops {
        let (endpoint, model_id) = start_worker(model, &cfg, stop_rx.clone()).await?;
        tracing::info!(pop, endpoint, model_id, "worker started");
        workers.push(StaticWorker {
            pop: pop.clone(),
            worker_id: format!("{pop}-cpu-0"),
            endpoint,
        });
    }
    let n_workers = workers.len();
    let state = Arc::new(RouterState::new(cfg.router.clone(), Some(metrics))?);
    let poller = tokio::spawn(meridian_router::source::poll_static(
        state.clone(),
        workers,
        Duration::from_millis(250),
    ));
    // Serve once every worker reported warm, so the first request finds them.
    for _ in 0..200 {
        let fleet = state.fleet();
        if fleet.view.workers.len() == n_workers && fleet.view.workers.iter().all(|w| w.warm) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listener = tokio::net::TcpListener::bind(cfg.router.listen)
        .await
        .with_context(|| format!("cannot bind the router on {}", cfg.router.listen))?;
    let addr = listener.local_addr()?;
    let models = state.fleet().view.models();
    println!(
        "meridian up: PoPs {} serving {}",
        cfg.pops.join(", "),
        models.join(", ")
    );
    println!("router listening on http://{addr}");
    println!(
        "try: curl -s http://{addr}/v1/chat/completions -H 'content-type: application/json' \
         -d '{{\"model\": \"{}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'",
        models.first().map_or("MODEL", String::as_str)
    );
    println!("(the control plane is not built yet: the router polls these workers directly)");
    meridian_router::server::serve(state, listener, async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    })
    .await?;
    let _ = stop_tx.send(true);
    poller.abort();
    Ok(())
}

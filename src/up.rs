//! `meridian up`: every role in one process, the same code the separate roles run: a
//! control-plane replica on `MemStore`, one PoP agent per configured site (each with a
//! CPU worker on the real model, registered and reporting over gRPC), and a router that
//! follows the control plane's `WatchFleet` feed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meridian_router::state::RouterState;
use tokio::sync::watch;

use crate::config::{PopConfig, UpConfig};
use crate::pop::Agent;

/// Runs until Ctrl-C.
pub async fn run(cfg: UpConfig, model: &Path) -> anyhow::Result<()> {
    let metrics = crate::telemetry::install_metrics(None)?;
    let (stop_tx, stop_rx) = watch::channel(false);

    // Control plane.
    let control_listener = tokio::net::TcpListener::bind(cfg.control.listen)
        .await
        .with_context(|| format!("cannot bind the control plane on {}", cfg.control.listen))?;
    let control_addr = control_listener.local_addr()?;
    let control_endpoint = format!("http://{control_addr}");
    let store = crate::control::open_store(&cfg.control).await?;
    let control = tokio::spawn(crate::control::serve(
        cfg.control.clone(),
        store,
        control_listener,
        {
            let mut stop = stop_rx.clone();
            async move {
                let _ = stop.wait_for(|s| *s).await;
            }
        },
    ));

    // PoPs, loading their workers in parallel.
    let mut agents = Vec::new();
    let mut reporters = Vec::new();
    for pop in &cfg.pops {
        let pop_cfg = PopConfig {
            pop_id: pop.clone(),
            control_endpoints: vec![control_endpoint.clone()],
            worker_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise_host: None,
            workers: 1,
            labels: Default::default(),
            metrics_listen: None,
            engine: cfg.engine.clone(),
        };
        let agent = Agent::start(pop_cfg, model.to_path_buf(), stop_rx.clone()).await?;
        tracing::info!(pop, workers = agent.workers.len(), "PoP started");
        reporters.push(tokio::spawn(agent.clone().report_loop(stop_rx.clone())));
        agents.push(agent);
    }
    for agent in &agents {
        agent.wait_warm(Duration::from_secs(300)).await?;
    }

    // Router, on the control plane's feed.
    let mut router_cfg = cfg.router.clone();
    router_cfg.control_endpoints = vec![control_endpoint.clone()];
    let tokenizers = crate::tokenize::tokenizers([(meridian_engine::model_id(model), model)]);
    let state =
        Arc::new(RouterState::new(router_cfg.clone(), Some(metrics))?.with_tokenizers(tokenizers));
    let feed = tokio::spawn(meridian_router::source::watch_fleet(
        state.clone(),
        router_cfg.control_endpoints.clone(),
    ));
    let demand = tokio::spawn(meridian_router::source::report_demand(
        state.clone(),
        router_cfg.control_endpoints.clone(),
    ));
    // Serve once every worker shows warm in the router's view, so the first request
    // finds them.
    let n_workers: usize = agents.iter().map(|a| a.workers.len()).sum();
    for _ in 0..200 {
        let fleet = state.fleet();
        if fleet.view.workers.iter().filter(|w| w.warm).count() == n_workers {
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
    println!("control plane on {control_endpoint}");
    println!("router listening on http://{addr}");
    println!(
        "try: curl -s http://{addr}/v1/chat/completions -H 'content-type: application/json' \
         -d '{{\"model\": \"{}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'",
        models.first().map_or("MODEL", String::as_str)
    );
    meridian_router::server::serve(state, listener, async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    })
    .await?;
    let _ = stop_tx.send(true);
    feed.abort();
    demand.abort();
    for r in reporters {
        let _ = r.await;
    }
    let _ = control.await;
    Ok(())
}

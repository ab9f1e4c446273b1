//! Logs (`tracing`, filtered by `RUST_LOG`, text or JSON) and the Prometheus exporter.

use std::net::SocketAddr;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` filters (default `info`); `json` writes one
/// JSON object per line for log shippers.
pub fn init_tracing(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests that call into the binary's code) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Ends the process quietly, with the status a shell gives a command killed by SIGPIPE
/// (141), when printing to stdout fails because the reader went away
/// (`meridian sim fit ... | head -1`). Rust ignores SIGPIPE, so `println!` panics on a
/// closed pipe instead; every other panic goes to the default hook.
pub fn exit_quietly_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// Installs the global metrics recorder. With `listen`, the exporter also serves the
/// exposition over HTTP there (`/metrics`), for roles without an HTTP server of their
/// own; the handle renders the same registry for roles that have one (the router).
/// Must be called inside a tokio runtime.
pub fn install_metrics(listen: Option<SocketAddr>) -> anyhow::Result<PrometheusHandle> {
    let builder = PrometheusBuilder::new();
    let handle = match listen {
        Some(addr) => {
            let (recorder, exporter) = builder
                .with_http_listener(addr)
                .build()
                .with_context(|| format!("cannot start the metrics exporter on {addr}"))?;
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)
                .context("a metrics recorder is already installed")?;
            tokio::spawn(exporter);
            tracing::info!(%addr, "serving /metrics");
            handle
        }
        None => {
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)
                .context("a metrics recorder is already installed")?;
            handle
        }
    };
    Ok(handle)
}

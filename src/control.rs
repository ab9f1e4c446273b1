//! `meridian control` (and the control plane inside `meridian up`): a replica of the
//! `ControlPlane` service on the configured store.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meridian_placement::service::ControlPlaneService;
use meridian_placement::store::{EtcdStore, MemStore, Store};
use meridian_placement::{ControlConfig, StoreKind};
use meridian_proto::control::v1::control_plane_server::ControlPlaneServer;
use tokio::sync::watch;

use crate::grpc;

/// Opens the configured store: in process, or a connection to etcd.
pub async fn open_store(cfg: &ControlConfig) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match cfg.store.kind {
        StoreKind::Memory => Arc::new(MemStore::new()),
        StoreKind::Etcd => Arc::new(
            EtcdStore::connect(&cfg.store.endpoints, Duration::from_secs(2))
                .await
                .with_context(|| format!("cannot connect to etcd at {:?}", cfg.store.endpoints))?,
        ),
    })
}

/// Serves a replica on `listener` until `shutdown`; then resigns leadership.
pub async fn serve(
    cfg: ControlConfig,
    store: Arc<dyn Store>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let replica_id = if cfg.replica_id.is_empty() {
        format!("control@{addr}")
    } else {
        cfg.replica_id.clone()
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let service = ControlPlaneService::start(cfg, store, replica_id, stop_rx);
    let server = ControlPlaneServer::new(service)
        .max_decoding_message_size(meridian_proto::MAX_MESSAGE_BYTES);
    let name = <ControlPlaneServer<ControlPlaneService> as tonic::server::NamedService>::NAME;
    let served = grpc::serve(
        listener,
        tonic::service::Routes::new(server),
        name,
        shutdown,
    )
    .await;
    let _ = stop_tx.send(true);
    // Give the leader loop a moment to revoke its lease so a successor starts at once.
    tokio::time::sleep(Duration::from_millis(100)).await;
    served
}

//! The `ControlPlane` service over gRPC on a `MemStore`, in process: bad registrations and
//! bad reports get a status with the reason and store nothing; a good session reports,
//! a watcher sees it, and a replaced session is told to register again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use meridian_placement::ControlConfig;
use meridian_placement::service::ControlPlaneService;
use meridian_placement::store::{MemStore, Store};
use meridian_proto::control::v1 as pb;
use meridian_proto::control::v1::control_plane_client::ControlPlaneClient;
use meridian_proto::control::v1::control_plane_server::ControlPlaneServer;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

async fn serve() -> (ControlPlaneClient<tonic::transport::Channel>, Arc<MemStore>) {
    let store = Arc::new(MemStore::new());
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    // The replica runs for the whole test: never send the stop.
    std::mem::forget(_stop_tx);
    let service = ControlPlaneService::start(
        ControlConfig::default(),
        store.clone() as Arc<dyn Store>,
        "test".into(),
        stop,
    );
    service.cache().ready().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                ControlPlaneServer::new(service)
                    .max_decoding_message_size(meridian_proto::MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let client = ControlPlaneClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    (client, store)
}

fn registration() -> pb::RegisterRequest {
    pb::RegisterRequest {
        pop_id: "AMS".into(),
        location: None,
        jurisdiction: "EU".into(),
        gpus: vec![],
        workers: vec![pb::WorkerEndpoint {
            worker_id: "cpu0".into(),
            endpoint: "http://127.0.0.1:1".into(),
            device: "cpu".into(),
            gpu_kind: String::new(),
        }],
        agent_version: "test".into(),
        labels: Default::default(),
    }
}

fn report(session: &str, seq: u64, worker: &str) -> pb::PopMessage {
    pb::PopMessage {
        msg: Some(pb::pop_message::Msg::Load(pb::LoadReport {
            session_id: session.into(),
            seq,
            sent_unix_ms: 0,
            workers: vec![pb::WorkerReport {
                worker_id: worker.into(),
                model: "m".into(),
                state: meridian_proto::worker::v1::WorkerState::Warm as i32,
                load_progress: 1.0,
                load: None,
            }],
        })),
    }
}

async fn open(
    client: &mut ControlPlaneClient<tonic::transport::Channel>,
    session: &str,
) -> Result<
    (
        mpsc::Sender<pb::PopMessage>,
        tonic::Streaming<pb::ControlMessage>,
    ),
    tonic::Status,
> {
    let (tx, rx) = mpsc::channel(8);
    tx.send(pb::PopMessage {
        msg: Some(pb::pop_message::Msg::Hello(pb::ReportHello {
            session_id: session.into(),
        })),
    })
    .await
    .unwrap();
    let inbound = client.report(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, inbound))
}

async fn next(
    s: &mut tonic::Streaming<pb::ControlMessage>,
) -> Result<pb::ControlMessage, tonic::Status> {
    tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("an answer within 5 s")
        .map(|m| m.expect("the stream is open"))
}

#[tokio::test]
async fn bad_input_is_refused_and_nothing_is_stored() {
    let (mut client, store) = serve().await;
    let mut bad = registration();
    bad.workers[0].endpoint = "not a url".into();
    let err = client.register(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("endpoint"), "{}", err.message());
    let mut bad = registration();
    bad.pop_id = "XXX".into();
    assert_eq!(
        client.register(bad).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    assert!(
        store
            .get_prefix("/meridian/fleet/")
            .await
            .unwrap()
            .0
            .is_empty()
    );

    // An unknown session is told to register.
    let err = open(&mut client, "AMS:123").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(
        err.message().contains("register again"),
        "{}",
        err.message()
    );

    // A good session is acked and watched.
    let session = client
        .register(registration())
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let mut watch = client
        .watch_fleet(pb::WatchFleetRequest { from_revision: 0 })
        .await
        .unwrap()
        .into_inner();
    let (tx, mut inbound) = open(&mut client, &session).await.unwrap();
    tx.send(report(&session, 1, "cpu0")).await.unwrap();
    let Some(pb::control_message::Msg::Ack(ack)) = next(&mut inbound).await.unwrap().msg else {
        panic!("expected an ack");
    };
    assert_eq!(ack.seq, 1);
    let stored = store.get("/meridian/fleet/pop/AMS").await.unwrap().unwrap();
    loop {
        let ev = watch.next().await.unwrap().unwrap();
        let warm = match ev.event {
            Some(pb::fleet_event::Event::PopUpserted(p)) => p.workers[0].model == "m",
            Some(pb::fleet_event::Event::Snapshot(s)) => {
                s.pops.first().is_some_and(|p| p.workers[0].model == "m")
            }
            _ => false,
        };
        if warm {
            assert_eq!(ev.revision, stored.mod_revision);
            break;
        }
    }

    // A report for a worker that was never registered ends the stream with the reason,
    // and the stored record does not move.
    tx.send(report(&session, 2, "gpu7")).await.unwrap();
    let err = next(&mut inbound).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("never registered"),
        "{}",
        err.message()
    );
    let after = store.get("/meridian/fleet/pop/AMS").await.unwrap().unwrap();
    assert_eq!(after.mod_revision, stored.mod_revision);

    // Registering again replaces the session: the old one is told to register.
    let (tx, mut inbound) = open(&mut client, &session).await.unwrap();
    let newer = client
        .register(registration())
        .await
        .unwrap()
        .into_inner()
        .session_id;
    assert_ne!(newer, session);
    tx.send(report(&session, 3, "cpu0")).await.unwrap();
    assert_eq!(
        next(&mut inbound).await.unwrap_err().code(),
        tonic::Code::NotFound
    );

    // Operators: drain and cordon name unknown PoPs and workers.
    let err = client
        .cordon(pb::CordonRequest {
            pop_id: "SIN".into(),
            cordoned: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

//! `EtcdStore` against a real etcd (the Debian `etcd` binary, started by
//! `meridian_placement::testing::EtcdServer`): the shared conformance suite, and what
//! happens when etcd goes away and comes back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;

use meridian_placement::store::{EtcdStore, Store, StoreError, conformance};
use meridian_placement::testing::EtcdServer;

async fn store(etcd: &EtcdServer) -> EtcdStore {
    EtcdStore::connect(&[etcd.endpoint()], Duration::from_secs(1))
        .await
        .expect("connect to etcd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite() {
    let etcd = EtcdServer::start().await.expect("start etcd");
    conformance::run_all(Arc::new(store(&etcd).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_while_down_then_recovers() {
    let mut etcd = EtcdServer::start().await.expect("start etcd");
    let store = store(&etcd).await;
    let r1 = store.put("/down/a", b"1".to_vec(), 0).await.unwrap();

    etcd.stop();
    let started = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(5), store.get("/down/a"))
        .await
        .expect("get answers while etcd is down, it does not hang");
    assert!(
        matches!(got, Err(StoreError::Unavailable(_))),
        "expected Unavailable, got {got:?}"
    );
    eprintln!("get while down: {got:?} after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(3));
    let put = store.put("/down/b", b"2".to_vec(), 0).await;
    eprintln!("put while down: {put:?}");
    assert!(matches!(put, Err(StoreError::Unavailable(_))), "{put:?}");

    etcd.restart().await.expect("restart etcd");
    // The client reconnects on its own; allow it a few tries.
    let deadline = Instant::now() + Duration::from_secs(10);
    let r2 = loop {
        match store.put("/down/b", b"2".to_vec(), 0).await {
            Ok(r) => break r,
            Err(StoreError::Unavailable(e)) if Instant::now() < deadline => {
                eprintln!("still unavailable after restart: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("put after restart: {e}"),
        }
    };
    assert!(r2 > r1);
    let a = store
        .get("/down/a")
        .await
        .unwrap()
        .expect("data survives a restart");
    assert_eq!((a.value.as_slice(), a.mod_revision), (&b"1"[..], r1));
    assert_eq!(store.get("/down/b").await.unwrap().unwrap().value, b"2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_compacted_revision_says_so() {
    let etcd = EtcdServer::start().await.expect("start etcd");
    let store = store(&etcd).await;
    let r1 = store.put("/compact/a", b"1".to_vec(), 0).await.unwrap();
    let r2 = store.put("/compact/a", b"2".to_vec(), 0).await.unwrap();
    let r3 = store.put("/compact/a", b"3".to_vec(), 0).await.unwrap();
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    client.compact(r3 as i64, None).await.unwrap();

    let mut w = store.watch_prefix("/compact/", r1).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("an answer within 5 s")
        .expect("the stream yields the error before it ends");
    assert_eq!(
        first,
        Err(StoreError::Compacted {
            requested: r1,
            oldest: r3
        })
    );
    assert!(w.next().await.is_none(), "the stream ends after Compacted");
    // From the compaction point on, history is still there.
    let mut w = store.watch_prefix("/compact/", r3).await.unwrap();
    let e = w.next().await.unwrap().unwrap();
    assert_eq!(e.revision(), r3);
    assert!(r2 < r3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_ends_with_an_error_when_etcd_stops() {
    let mut etcd = EtcdServer::start().await.expect("start etcd");
    let store = store(&etcd).await;
    let mut w = store.watch_prefix("/gone/", 0).await.unwrap();
    let r1 = store.put("/gone/a", b"1".to_vec(), 0).await.unwrap();
    assert_eq!(w.next().await.unwrap().unwrap().revision(), r1);
    etcd.stop();
    let end = tokio::time::timeout(Duration::from_secs(15), w.next())
        .await
        .expect("the watch notices within 15 s");
    eprintln!("watch after stop: {end:?}");
    assert!(
        matches!(end, Some(Err(StoreError::Unavailable(_)))),
        "expected Unavailable, got {end:?}"
    );
    assert!(w.next().await.is_none());

    // The caller resumes from the next revision once etcd is back.
    etcd.restart().await.expect("restart etcd");
    let mut w = store.watch_prefix("/gone/", r1 + 1).await.unwrap();
    let r2 = store.put("/gone/b", b"2".to_vec(), 0).await.unwrap();
    assert_eq!(w.next().await.unwrap().unwrap().revision(), r2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_leader_survive_a_restart() {
    let mut etcd = EtcdServer::start().await.expect("start etcd");
    let store = store(&etcd).await;
    let lease = store.grant_lease(5_000).await.unwrap();
    store.put("/restart/k", b"v".to_vec(), lease).await.unwrap();
    store
        .campaign("/restart/election", "one", lease)
        .await
        .unwrap();
    etcd.restart().await.expect("restart etcd");
    // etcd renews every lease to its full TTL when a leader takes over, so a restart
    // never expires a lease by itself.
    store.keep_alive(lease).await.unwrap();
    assert_eq!(store.get("/restart/k").await.unwrap().unwrap().lease, lease);
    assert_eq!(
        store.leader("/restart/election").await.unwrap().as_deref(),
        Some("one")
    );
    store.revoke(lease).await.unwrap();
    assert_eq!(store.leader("/restart/election").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_etcd_times_out_as_unavailable() {
    let etcd = EtcdServer::start().await.expect("start etcd");
    let store = store(&etcd).await;
    store.put("/frozen/a", b"1".to_vec(), 0).await.unwrap();
    etcd.freeze().unwrap();
    let started = Instant::now();
    let got = store.get("/frozen/a").await;
    let waited = started.elapsed();
    etcd.thaw().unwrap();
    assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    assert_eq!(store.get("/frozen/a").await.unwrap().unwrap().value, b"1");
}

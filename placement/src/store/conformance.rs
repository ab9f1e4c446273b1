//! The shared `Store` suite: every implementation must pass it (`MemStore` in unit tests,
//! `EtcdStore` against a real etcd in `placement/tests/etcd_store.rs`). Each check uses
//! its own key prefix, so they can run against one store in any order.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;

use super::{Store, StoreError, WatchEvent, WatchStream};

/// Runs every check.
pub async fn run_all(store: Arc<dyn Store>) {
    put_get_and_revisions(&*store).await;
    conditional_writes(&*store).await;
    watch_sees_changes_in_order(&*store).await;
    watch_resumes_from_a_revision(&*store).await;
    lease_expiry_deletes_keys(&*store).await;
    keep_alive_holds_a_lease(&*store).await;
    revoke_deletes_keys(&*store).await;
    election_elects_one_leader(store.clone()).await;
}

async fn next(w: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("a watch event within 10 s")
        .expect("the watch is open")
        .expect("a watch event, not an error")
}

/// Puts move the revision forward; reads see the latest value; prefixes are exact.
pub async fn put_get_and_revisions(store: &dyn Store) {
    let r1 = store.put("/conf/kv/a", b"1".to_vec(), 0).await.unwrap();
    let r2 = store.put("/conf/kv/b", b"2".to_vec(), 0).await.unwrap();
    let r3 = store.put("/conf/kv/a", b"3".to_vec(), 0).await.unwrap();
    store.put("/conf/kvx", b"other".to_vec(), 0).await.unwrap();
    assert!(r1 < r2 && r2 < r3, "revisions increase: {r1} {r2} {r3}");
    let (kvs, rev) = store.get_prefix("/conf/kv/").await.unwrap();
    assert!(rev >= r3);
    let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/conf/kv/a", "/conf/kv/b"]);
    assert_eq!(kvs[0].value, b"3");
    assert_eq!(kvs[0].mod_revision, r3);
    assert_eq!(kvs[0].lease, 0);
    let a = store.get("/conf/kv/a").await.unwrap().unwrap();
    assert_eq!(a.value, b"3");
    assert!(store.get("/conf/kv/none").await.unwrap().is_none());
    let r4 = store.delete("/conf/kv/a").await.unwrap();
    assert!(r4 > r3);
    assert!(store.get("/conf/kv/a").await.unwrap().is_none());
    // Deleting what is not there changes nothing.
    assert_eq!(store.delete("/conf/kv/a").await.unwrap(), r4);
    assert_eq!(store.get_prefix("/conf/none/").await.unwrap().1, r4);
}

/// `put_if` writes only at the expected revision, and 0 means "absent".
pub async fn conditional_writes(store: &dyn Store) {
    let r1 = store
        .put_if("/conf/cas/k", b"a".to_vec(), 0, 0)
        .await
        .unwrap();
    match store.put_if("/conf/cas/k", b"b".to_vec(), 0, 0).await {
        Err(StoreError::Conflict { found, .. }) => assert_eq!(found, r1),
        other => panic!("create over an existing key must conflict, got {other:?}"),
    }
    let r2 = store
        .put_if("/conf/cas/k", b"c".to_vec(), r1, 0)
        .await
        .unwrap();
    assert!(r2 > r1);
    match store.put_if("/conf/cas/k", b"d".to_vec(), r1, 0).await {
        Err(StoreError::Conflict {
            expected, found, ..
        }) => {
            assert_eq!((expected, found), (r1, r2));
        }
        other => panic!("a stale revision must conflict, got {other:?}"),
    }
    assert_eq!(store.get("/conf/cas/k").await.unwrap().unwrap().value, b"c");
}

/// A watch sees puts and deletes under its prefix only, in revision order.
pub async fn watch_sees_changes_in_order(store: &dyn Store) {
    let mut w = store.watch_prefix("/conf/watch/", 0).await.unwrap();
    let r1 = store.put("/conf/watch/x", b"1".to_vec(), 0).await.unwrap();
    store
        .put("/conf/watchnot", b"no".to_vec(), 0)
        .await
        .unwrap();
    let r2 = store.put("/conf/watch/y", b"2".to_vec(), 0).await.unwrap();
    let r3 = store.delete("/conf/watch/x").await.unwrap();
    match next(&mut w).await {
        WatchEvent::Put(kv) => {
            assert_eq!(
                (kv.key.as_str(), kv.value.as_slice()),
                ("/conf/watch/x", &b"1"[..])
            );
            assert_eq!(kv.mod_revision, r1);
        }
        e => panic!("expected the put of x, got {e:?}"),
    }
    let e = next(&mut w).await;
    assert_eq!((e.key(), e.revision()), ("/conf/watch/y", r2));
    match next(&mut w).await {
        WatchEvent::Delete { key, revision } => {
            assert_eq!((key.as_str(), revision), ("/conf/watch/x", r3));
        }
        e => panic!("expected the delete of x, got {e:?}"),
    }
}

/// A watch from a past revision replays history from there, then goes live.
pub async fn watch_resumes_from_a_revision(store: &dyn Store) {
    let r1 = store.put("/conf/resume/a", b"1".to_vec(), 0).await.unwrap();
    let r2 = store.put("/conf/resume/a", b"2".to_vec(), 0).await.unwrap();
    let r3 = store.put("/conf/resume/b", b"3".to_vec(), 0).await.unwrap();
    let mut w = store.watch_prefix("/conf/resume/", r2).await.unwrap();
    assert_eq!(next(&mut w).await.revision(), r2);
    assert_eq!(next(&mut w).await.revision(), r3);
    let r4 = store.put("/conf/resume/c", b"4".to_vec(), 0).await.unwrap();
    assert_eq!(next(&mut w).await.revision(), r4);
    assert!(r1 < r2);
}

/// A key under a lease that is not renewed disappears, and a watch sees the delete.
pub async fn lease_expiry_deletes_keys(store: &dyn Store) {
    let lease = store.grant_lease(1_000).await.unwrap();
    let mut w = store.watch_prefix("/conf/lease/", 0).await.unwrap();
    store
        .put("/conf/lease/k", b"v".to_vec(), lease)
        .await
        .unwrap();
    assert_eq!(
        store.get("/conf/lease/k").await.unwrap().unwrap().lease,
        lease
    );
    assert!(matches!(next(&mut w).await, WatchEvent::Put(_)));
    let started = std::time::Instant::now();
    match next(&mut w).await {
        WatchEvent::Delete { key, .. } => assert_eq!(key, "/conf/lease/k"),
        e => panic!("expected the lease to delete the key, got {e:?}"),
    }
    // etcd checks expiry every 500 ms and may hold a new lease a little past its TTL.
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(store.get("/conf/lease/k").await.unwrap().is_none());
    assert_eq!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(lease))
    );
    assert!(matches!(
        store.put("/conf/lease/k", b"v".to_vec(), lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
}

/// Renewing a lease keeps its keys past the TTL.
pub async fn keep_alive_holds_a_lease(store: &dyn Store) {
    let lease = store.grant_lease(1_000).await.unwrap();
    store
        .put("/conf/alive/k", b"v".to_vec(), lease)
        .await
        .unwrap();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        store.keep_alive(lease).await.unwrap();
    }
    assert!(store.get("/conf/alive/k").await.unwrap().is_some());
    store.revoke(lease).await.unwrap();
}

/// Revoking a lease deletes its keys at once; revoking twice is fine.
pub async fn revoke_deletes_keys(store: &dyn Store) {
    let lease = store.grant_lease(30_000).await.unwrap();
    store
        .put("/conf/revoke/a", b"1".to_vec(), lease)
        .await
        .unwrap();
    store
        .put("/conf/revoke/b", b"2".to_vec(), lease)
        .await
        .unwrap();
    store.put("/conf/revoke/c", b"3".to_vec(), 0).await.unwrap();
    store.revoke(lease).await.unwrap();
    store.revoke(lease).await.unwrap();
    let (kvs, _) = store.get_prefix("/conf/revoke/").await.unwrap();
    let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/conf/revoke/c"]);
}

/// One campaigner wins; the second waits until the first's lease ends, then wins.
pub async fn election_elects_one_leader(store: Arc<dyn Store>) {
    let first = store.grant_lease(30_000).await.unwrap();
    let second = store.grant_lease(30_000).await.unwrap();
    store
        .campaign("/conf/election", "one", first)
        .await
        .unwrap();
    assert_eq!(
        store.leader("/conf/election").await.unwrap().as_deref(),
        Some("one")
    );
    let s = store.clone();
    let waiting = tokio::spawn(async move { s.campaign("/conf/election", "two", second).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a second leader while the first holds"
    );
    store.revoke(first).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the second campaigner wins once the first lease ends")
        .unwrap()
        .unwrap();
    assert_eq!(
        store.leader("/conf/election").await.unwrap().as_deref(),
        Some("two")
    );
    store.revoke(second).await.unwrap();
    assert_eq!(store.leader("/conf/election").await.unwrap(), None);
}

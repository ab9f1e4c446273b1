//! The control plane on a real etcd, with real processes: three `meridian control`
//! replicas, two `meridian pop` agents on the real model, and fleet watchers on every
//! replica. Kills a PoP, kills the leader, drains through the new leader, stops etcd for
//! 30 s under load reports, and checks what a router would see at each step.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_placement::store::{EtcdStore, Store};
use meridian_placement::testing::EtcdServer;
use meridian_proto::control::v1 as pb;
use meridian_proto::control::v1::control_plane_client::ControlPlaneClient;
use meridian_proto::worker::v1::WorkerState;
use support::{Proc, free_addr, http_get, meridian, metric, start_pop};
use tokio_stream::StreamExt;

const LEASE_TTL_MS: u64 = 3_000;

struct Replica {
    proc: Proc,
    endpoint: String,
    metrics: SocketAddr,
}

fn start_replica(etcd: &str, name: &str) -> Replica {
    let listen = free_addr();
    let metrics = free_addr();
    let mut cmd = meridian();
    cmd.args(["control", "--listen", &listen.to_string()])
        .env("MERIDIAN_CONTROL__REPLICA_ID", name)
        .env("MERIDIAN_CONTROL__METRICS_LISTEN", metrics.to_string())
        .env("MERIDIAN_CONTROL__STORE__KIND", "etcd")
        .env(
            "MERIDIAN_CONTROL__STORE__ENDPOINTS",
            format!("[\"{etcd}\"]"),
        )
        .env(
            "MERIDIAN_CONTROL__STORE__LEASE_TTL_MS",
            LEASE_TTL_MS.to_string(),
        );
    let proc = Proc::spawn(cmd);
    proc.wait_for_line("control plane listening", Duration::from_secs(30));
    Replica {
        proc,
        endpoint: format!("http://{listen}"),
        metrics,
    }
}

/// Everything one watcher saw: the fleet folded from its events, and each event's
/// revision with the time it arrived.
#[derive(Default)]
struct Seen {
    pops: BTreeMap<String, pb::PopState>,
    revisions: Vec<u64>,
    /// Revision of the first snapshot; events after it are compared with etcd's history.
    snapshot_revision: u64,
    removed: Vec<(String, Instant)>,
    ended: bool,
}

fn watch(endpoint: String) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let out = seen.clone();
    tokio::spawn(async move {
        let mut client = ControlPlaneClient::connect(endpoint).await.unwrap();
        let mut stream = client
            .watch_fleet(pb::WatchFleetRequest { from_revision: 0 })
            .await
            .unwrap()
            .into_inner();
        while let Some(Ok(ev)) = stream.next().await {
            let mut s = out.lock().unwrap();
            match ev.event {
                Some(pb::fleet_event::Event::Snapshot(snap)) => {
                    s.pops = snap
                        .pops
                        .into_iter()
                        .map(|p| (p.pop_id.clone(), p))
                        .collect();
                    if s.snapshot_revision == 0 {
                        s.snapshot_revision = ev.revision;
                    }
                }
                Some(pb::fleet_event::Event::PopUpserted(p)) => {
                    s.revisions.push(ev.revision);
                    s.pops.insert(p.pop_id.clone(), p);
                }
                Some(pb::fleet_event::Event::PopRemoved(id)) => {
                    s.revisions.push(ev.revision);
                    s.pops.remove(&id);
                    s.removed.push((id, Instant::now()));
                }
                None => {}
            }
        }
        out.lock().unwrap().ended = true;
    });
    seen
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < timeout,
            "{what}: not within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The PoP is in the view with every worker warm, loaded and freshly reported.
fn fresh(seen: &Seen, pop: &str) -> bool {
    seen.pops.get(pop).is_some_and(|p| {
        p.workers.iter().all(|w| {
            w.state == WorkerState::Warm as i32
                && w.load.as_ref().is_some_and(|l| l.kv_blocks_total > 0)
                && now_ms().saturating_sub(w.reported_unix_ms) < 1_000
        })
    })
}

fn leader_of(replicas: &[&Replica]) -> Vec<usize> {
    replicas
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            http_get(r.metrics, "/metrics").and_then(|t| metric(&t, "meridian_control_leader"))
                == Some(1.0)
        })
        .map(|(i, _)| i)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_etcd_survive_pop_leader_and_etcd_failures() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let names = ["alpha", "beta", "gamma"];
    let replicas: Vec<Replica> = names
        .iter()
        .map(|n| start_replica(&etcd.endpoint(), n))
        .collect();
    let endpoints: Vec<String> = replicas.iter().map(|r| r.endpoint.clone()).collect();
    let watchers: Vec<_> = endpoints.iter().map(|e| watch(e.clone())).collect();

    // Two PoPs report; every watcher sees both, warm, with load, within 1 s of the
    // reports.
    let ams = start_pop("AMS", &endpoints.join(","));
    let mut iad = start_pop("IAD", &endpoints[1..].join(","));
    for w in &watchers {
        wait_until(
            "both PoPs fresh in every watcher",
            Duration::from_secs(5),
            || {
                let s = w.lock().unwrap();
                fresh(&s, "AMS") && fresh(&s, "IAD")
            },
        )
        .await;
    }

    // kill -9 a PoP: it leaves the fleet within the lease TTL plus 1 s.
    iad.child.kill().unwrap();
    let killed = Instant::now();
    for w in &watchers {
        wait_until(
            "IAD removed",
            Duration::from_millis(LEASE_TTL_MS + 1_000),
            || w.lock().unwrap().removed.iter().any(|(p, _)| p == "IAD"),
        )
        .await;
    }
    let removal = killed.elapsed();
    println!("IAD left the fleet {removal:?} after kill -9 (lease {LEASE_TTL_MS} ms)");

    // Kill the leader: a survivor leads within 5 s and does the leader's work.
    let all: Vec<&Replica> = replicas.iter().collect();
    wait_until("exactly one leader", Duration::from_secs(5), || {
        leader_of(&all).len() == 1
    })
    .await;
    let leader = leader_of(&all)[0];
    let mut replicas = replicas;
    let mut dead = replicas.remove(leader);
    dead.proc.child.kill().unwrap();
    let watchers: Vec<_> = watchers
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, w)| w)
        .collect();
    let survivors: Vec<&Replica> = replicas.iter().collect();
    let takeover = wait_until("a new leader", Duration::from_secs(5), || {
        leader_of(&survivors).len() == 1
    })
    .await;
    println!(
        "{} led; a successor took over in {takeover:?}",
        names[leader]
    );
    let mut client = ControlPlaneClient::connect(survivors[0].endpoint.clone())
        .await
        .unwrap();
    client
        .drain(pb::DrainRequest {
            pop_id: "AMS".into(),
            worker_id: "cpu0".into(),
        })
        .await
        .unwrap();
    for w in &watchers {
        wait_until(
            "the new leader's drain directive unloads cpu0",
            Duration::from_secs(10),
            || {
                let s = w.lock().unwrap();
                s.pops
                    .get("AMS")
                    .is_some_and(|p| p.workers[0].state == WorkerState::Unloaded as i32)
            },
        )
        .await;
    }
    // Bad operator input is refused with a reason.
    let err = client
        .drain(pb::DrainRequest {
            pop_id: "AMS".into(),
            worker_id: "gpu9".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    // Stop etcd for 30 s under load reports: nothing crashes; reports resume after.
    etcd.stop();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let mut alive = replicas
        .iter_mut()
        .map(|r| r.proc.child.try_wait().unwrap().is_none());
    assert!(
        alive.all(|a| a),
        "a control-plane replica died while etcd was down"
    );
    let mut ams = ams;
    assert!(
        ams.child.try_wait().unwrap().is_none(),
        "the PoP agent died"
    );
    // Routers keep their last view meanwhile: the watchers still hold AMS.
    for w in &watchers {
        assert!(w.lock().unwrap().pops.contains_key("AMS"));
        assert!(
            !w.lock().unwrap().ended,
            "a watch stream ended while etcd was down"
        );
    }
    let restarted = now_ms();
    etcd.restart().await.unwrap();
    for w in &watchers {
        wait_until(
            "AMS reports again after etcd returns",
            Duration::from_secs(15),
            || {
                let s = w.lock().unwrap();
                s.pops
                    .get("AMS")
                    .is_some_and(|p| p.last_report_unix_ms > restarted && p.workers.len() == 1)
            },
        )
        .await;
    }

    // No gap: each surviving watcher saw exactly etcd's fleet history after its
    // snapshot, in order, across the leader's death and etcd's outage.
    let store = EtcdStore::connect(&[etcd.endpoint()], Duration::from_secs(2))
        .await
        .unwrap();
    for w in &watchers {
        let (from, seen) = {
            let s = w.lock().unwrap();
            (s.snapshot_revision, s.revisions.clone())
        };
        let last = *seen.last().unwrap();
        let mut history = store
            .watch_prefix("/meridian/fleet/", from + 1)
            .await
            .unwrap();
        let mut expected = Vec::new();
        while expected.last().is_none_or(|r| *r < last) {
            let ev = tokio::time::timeout(Duration::from_secs(5), history.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            expected.push(ev.revision());
        }
        assert_eq!(
            seen, expected,
            "a watcher's revisions differ from etcd's history"
        );
        assert!(seen.windows(2).all(|p| p[0] < p[1]));
    }
}

use super::*;
use crate::store::KeyValue;

fn catalog() -> &'static Catalog {
    Catalog::builtin()
}

fn worker(id: &str, device: &str, kind: &str) -> pb::WorkerEndpoint {
    pb::WorkerEndpoint {
        worker_id: id.into(),
        endpoint: "http://127.0.0.1:5000".into(),
        device: device.into(),
        gpu_kind: kind.into(),
    }
}

fn ams() -> pb::RegisterRequest {
    pb::RegisterRequest {
        pop_id: "AMS".into(),
        location: None,
        jurisdiction: "EU".into(),
        gpus: vec![pb::GpuInventory {
            kind: "H100".into(),
            count: 2,
            memory_bytes: 80 << 30,
        }],
        workers: vec![worker("gpu0", "cuda:0", "H100"), worker("cpu0", "cpu", "")],
        agent_version: "test".into(),
        labels: Default::default(),
    }
}

fn refusal(req: &pb::RegisterRequest) -> String {
    match register(catalog(), req, 0) {
        Err(Refusal::Invalid(m)) | Err(Refusal::NotFound(m)) => m,
        Ok(_) => panic!("expected a refusal"),
    }
}

#[test]
fn registration_takes_the_catalogs_facts() {
    let rec = register(catalog(), &ams(), 7).unwrap();
    assert_eq!(rec.pop_id, "AMS");
    assert_eq!(rec.jurisdiction, "EU");
    assert_eq!(rec.workers.len(), 2);
    assert_eq!(rec.status, pb::PopStatus::Active as i32);
    let loc = rec.location.unwrap();
    assert!((loc.lat - 52.3).abs() < 0.5, "{loc:?}");
}

#[test]
fn bad_registrations_are_refused_with_the_reason() {
    let mut r = ams();
    r.pop_id = "ZZZ".into();
    assert!(matches!(
        register(catalog(), &r, 0),
        Err(Refusal::NotFound(_))
    ));
    let mut r = ams();
    r.jurisdiction = "US".into();
    assert!(refusal(&r).contains("jurisdiction"));
    let mut r = ams();
    r.location = Some(pb::Location { lat: 0.0, lon: 0.0 });
    assert!(refusal(&r).contains("location"));
    let mut r = ams();
    r.gpus[0].count = 0;
    assert!(refusal(&r).contains("count 0"));
    let mut r = ams();
    r.gpus[0].count = 1;
    r.workers.push(worker("gpu1", "cuda:1", "H100"));
    assert!(refusal(&r).contains("more H100 workers"));
    let mut r = ams();
    r.workers.push(worker("gpu0", "cpu", ""));
    assert!(refusal(&r).contains("duplicate"));
    let mut r = ams();
    r.workers[0].gpu_kind = "L4".into();
    assert!(refusal(&r).contains("not in gpus"));
    let mut r = ams();
    r.workers[1].endpoint = "127.0.0.1:1".into();
    assert!(refusal(&r).contains("endpoint"));
    let mut r = ams();
    r.workers[1].device = "tpu".into();
    assert!(refusal(&r).contains("device"));
    let mut r = ams();
    r.workers.clear();
    assert!(refusal(&r).contains("workers"));
}

fn report(workers: &[(&str, WorkerState)]) -> pb::LoadReport {
    pb::LoadReport {
        session_id: "s".into(),
        seq: 1,
        sent_unix_ms: 0,
        workers: workers
            .iter()
            .map(|(id, state)| pb::WorkerReport {
                worker_id: (*id).into(),
                model: "m".into(),
                state: *state as i32,
                load_progress: 1.0,
                load: Some(meridian_proto::worker::v1::WorkerLoad {
                    queue_depth: 3,
                    prefix_summary: Some(meridian_proto::worker::v1::PrefixSummary {
                        block_size: 16,
                        block_hashes: vec![1; MAX_PREFIX_HASHES + 5],
                        truncated: false,
                    }),
                    ..Default::default()
                }),
            })
            .collect(),
    }
}

#[test]
fn reports_merge_and_unknown_workers_are_refused_without_change() {
    let mut rec = register(catalog(), &ams(), 0).unwrap();
    merge_report(&mut rec, &report(&[("gpu0", WorkerState::Warm)]), 9).unwrap();
    let w = &rec.workers[0];
    assert_eq!((w.model.as_str(), w.state), ("m", WorkerState::Warm as i32));
    let summary = w.load.as_ref().unwrap().prefix_summary.as_ref().unwrap();
    assert_eq!(summary.block_hashes.len(), MAX_PREFIX_HASHES);
    assert!(summary.truncated);
    assert_eq!(rec.last_report_unix_ms, 9);

    let before = rec.clone();
    let bad = report(&[("cpu0", WorkerState::Warm), ("gpu7", WorkerState::Warm)]);
    let err = merge_report(&mut rec, &bad, 10).unwrap_err();
    assert!(err.to_string().contains("never registered"), "{err}");
    assert_eq!(rec, before, "a refused report changes nothing");
    let twice = report(&[("cpu0", WorkerState::Warm), ("cpu0", WorkerState::Warm)]);
    assert!(merge_report(&mut rec, &twice, 10).is_err());
}

fn put(key: String, value: Vec<u8>, rev: u64) -> WatchEvent {
    WatchEvent::Put(KeyValue {
        key,
        value,
        mod_revision: rev,
        lease: 1,
    })
}

#[test]
fn the_view_applies_cordon_and_drain_and_removals() {
    let keys = Keys::new("/m");
    let mut rec = register(catalog(), &ams(), 0).unwrap();
    merge_report(
        &mut rec,
        &report(&[("gpu0", WorkerState::Warm), ("cpu0", WorkerState::Warm)]),
        1,
    )
    .unwrap();
    let mut fleet = FleetState::default();
    let ev = fleet
        .apply(&keys, &put(keys.pop("AMS"), rec.encode_to_vec(), 5))
        .unwrap();
    assert_eq!(ev.revision, 5);
    assert!(matches!(
        ev.event,
        Some(pb::fleet_event::Event::PopUpserted(_))
    ));

    let ops = PopOps {
        drained_workers: vec!["gpu0".into()],
        ..Default::default()
    };
    let ev = fleet
        .apply(
            &keys,
            &put(keys.ops("AMS"), serde_json::to_vec(&ops).unwrap(), 6),
        )
        .unwrap();
    let Some(pb::fleet_event::Event::PopUpserted(view)) = ev.event else {
        panic!("an upsert");
    };
    assert_eq!(view.status, pb::PopStatus::Active as i32);
    assert_eq!(view.workers[0].state, WorkerState::Draining as i32);
    assert_eq!(view.workers[1].state, WorkerState::Warm as i32);

    let ops = PopOps {
        cordoned: true,
        ..Default::default()
    };
    fleet.apply(
        &keys,
        &put(keys.ops("AMS"), serde_json::to_vec(&ops).unwrap(), 7),
    );
    assert_eq!(
        fleet.view("AMS").unwrap().status,
        pb::PopStatus::Cordoned as i32
    );

    // Ops for a PoP that is not registered make no event, and garbage is ignored.
    assert!(
        fleet
            .apply(&keys, &put(keys.ops("SIN"), b"{}".to_vec(), 8))
            .is_none()
    );
    assert!(
        fleet
            .apply(&keys, &put(keys.pop("SIN"), b"\xff\xff".to_vec(), 9))
            .is_none()
    );

    let ev = fleet
        .apply(
            &keys,
            &WatchEvent::Delete {
                key: keys.pop("AMS"),
                revision: 10,
            },
        )
        .unwrap();
    assert_eq!(
        ev.event,
        Some(pb::fleet_event::Event::PopRemoved("AMS".into()))
    );
    assert!(fleet.is_empty());
    assert_eq!(fleet.revision, 10);
}

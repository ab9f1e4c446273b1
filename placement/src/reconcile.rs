//! The reconcile loop's decision, sans-IO: from the fleet (what workers report), the
//! operators' drains and the desired placement, which directives to send and which
//! finished ones to clear. The leader replica runs it every round (`crate::leader`); the
//! simulator can run it too.
//!
//! One directive at a time per worker. Drains come first: a drained worker is never
//! given a model. With no desired placement stored, residency is left as the agents
//! configured it (the single-machine default).

use std::collections::{HashMap, HashSet};

use meridian_proto::control::v1 as pb;
use meridian_proto::worker::v1::WorkerState;

use crate::fleet::{DirectiveRecord, FleetState};

/// A directive in the store with the agent's status on it, if any.
#[derive(Debug, Clone)]
pub struct Existing {
    pub pop: String,
    pub directive: pb::Directive,
    pub status: Option<DirectiveRecord>,
}

impl Existing {
    fn finished(&self) -> bool {
        self.status.as_ref().is_some_and(DirectiveRecord::finished)
    }
}

/// What the leader writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Store a new directive for the PoP's agent.
    Send {
        pop: String,
        directive: pb::Directive,
    },
    /// Clear a finished directive and its status.
    Clear { pop: String, id: String },
}

/// The worker holds its model (warm or loading).
pub(crate) fn holds_model(w: &pb::WorkerStatus) -> bool {
    let s = w.state;
    s == WorkerState::Warm as i32 || s == WorkerState::Loading as i32
}

/// One reconcile round. `new_id` names new directives.
pub fn reconcile(
    fleet: &FleetState,
    placement: Option<&pb::Placement>,
    existing: &[Existing],
    new_id: &mut dyn FnMut() -> String,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut busy: HashSet<(String, String)> = HashSet::new();
    for e in existing {
        if e.finished() {
            actions.push(Action::Clear {
                pop: e.pop.clone(),
                id: e.directive.directive_id.clone(),
            });
        } else {
            busy.insert((e.pop.clone(), e.directive.worker_id.clone()));
        }
    }
    let mut send = |pop: &str, worker: &str, action: pb::directive::Action| {
        actions.push(Action::Send {
            pop: pop.to_string(),
            directive: pb::Directive {
                directive_id: new_id(),
                worker_id: worker.to_string(),
                action: Some(action),
            },
        });
    };

    // Drains.
    let mut drained: HashSet<(String, String)> = HashSet::new();
    for pop in fleet.pop_ids() {
        let ops = fleet.ops(pop);
        let Some(rec) = fleet.record(pop) else {
            continue;
        };
        for w in &rec.workers {
            if !ops.drains(&w.worker_id) {
                continue;
            }
            drained.insert((pop.to_string(), w.worker_id.clone()));
            let key = (pop.to_string(), w.worker_id.clone());
            if busy.contains(&key) {
                continue;
            }
            let resident = holds_model(w) || w.state == WorkerState::Draining as i32;
            if resident {
                busy.insert(key);
                send(
                    pop,
                    &w.worker_id,
                    pb::directive::Action::Drain(pb::DrainWorker {}),
                );
            }
        }
    }

    // Placement: replicas per (model, site, GPU kind).
    let Some(placement) = placement else {
        return actions;
    };
    let mut want: HashMap<(&str, &str, &str), u32> = HashMap::new();
    for a in &placement.assignments {
        *want
            .entry((a.site.as_str(), a.gpu_kind.as_str(), a.model.as_str()))
            .or_default() += a.replicas;
    }
    for pop in fleet.pop_ids() {
        let Some(rec) = fleet.record(pop) else {
            continue;
        };
        let cordoned = {
            let ops = fleet.ops(pop);
            ops.cordoned || ops.draining
        };
        let usable = |busy: &HashSet<(String, String)>, w: &pb::WorkerStatus| {
            !drained.contains(&(pop.to_string(), w.worker_id.clone()))
                && !busy.contains(&(pop.to_string(), w.worker_id.clone()))
        };
        // Unload what is not wanted here, or more replicas than wanted.
        let mut have: HashMap<(&str, &str), u32> = HashMap::new();
        let mut unload = Vec::new();
        // A drained worker's replica is on its way out: it does not count.
        let staying = |w: &&pb::WorkerStatus| {
            holds_model(w) && !drained.contains(&(pop.to_string(), w.worker_id.clone()))
        };
        for w in rec.workers.iter().filter(staying) {
            let k = (w.gpu_kind.as_str(), w.model.as_str());
            let n = have.entry(k).or_default();
            *n += 1;
            let wanted = want.get(&(pop, k.0, k.1)).copied().unwrap_or(0);
            if *n > wanted && usable(&busy, w) {
                unload.push(w.worker_id.clone());
            }
        }
        // A replica the placement takes away drains: routers stop sending to it and
        // its in-flight requests finish before the model is unloaded (an `Unload`
        // would cancel them).
        for worker in unload {
            busy.insert((pop.to_string(), worker.clone()));
            send(
                pop,
                &worker,
                pb::directive::Action::Drain(pb::DrainWorker {}),
            );
        }
        if cordoned {
            continue;
        }
        // Load what is missing onto idle workers of the right kind.
        let mut wanted: Vec<(&str, &str, u32)> = want
            .iter()
            .filter(|((site, _, _), _)| *site == pop)
            .map(|(&(_, kind, model), &n)| (kind, model, n))
            .collect();
        wanted.sort();
        for (kind, model, n) in wanted {
            let held = have.get(&(kind, model)).copied().unwrap_or(0);
            let pending = existing
                .iter()
                .filter(|e| e.pop == pop && !e.finished())
                .filter(|e| {
                    matches!(&e.directive.action, Some(pb::directive::Action::Load(l)) if l.model == model)
                })
                .count() as u32;
            let mut missing = n.saturating_sub(held + pending);
            for w in &rec.workers {
                if missing == 0 {
                    break;
                }
                let idle = !holds_model(w) && w.state != WorkerState::Draining as i32;
                if w.gpu_kind == kind && idle && usable(&busy, w) {
                    busy.insert((pop.to_string(), w.worker_id.clone()));
                    send(
                        pop,
                        &w.worker_id,
                        pb::directive::Action::Load(pb::LoadModel {
                            model: model.to_string(),
                            source: String::new(),
                        }),
                    );
                    missing -= 1;
                }
            }
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{Keys, PopOps};
    use crate::store::{KeyValue, WatchEvent};
    use prost::Message;

    fn fleet(workers: &[(&str, &str, WorkerState)], ops: Option<PopOps>) -> FleetState {
        let keys = Keys::new("/m");
        let rec = pb::PopState {
            pop_id: "AMS".into(),
            workers: workers
                .iter()
                .map(|(id, model, state)| pb::WorkerStatus {
                    worker_id: (*id).into(),
                    model: (*model).into(),
                    state: *state as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let mut f = FleetState::default();
        let put = |key: String, value: Vec<u8>, rev| {
            WatchEvent::Put(KeyValue {
                key,
                value,
                mod_revision: rev,
                lease: 0,
            })
        };
        f.apply(&keys, &put(keys.pop("AMS"), rec.encode_to_vec(), 1));
        if let Some(ops) = ops {
            f.apply(
                &keys,
                &put(keys.ops("AMS"), serde_json::to_vec(&ops).unwrap(), 2),
            );
        }
        f
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("d{n}")
        }
    }

    fn kinds(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::Send { directive, .. } => format!(
                    "{}:{}",
                    directive.worker_id,
                    match &directive.action {
                        Some(pb::directive::Action::Load(l)) => format!("load {}", l.model),
                        Some(pb::directive::Action::Unload(u)) => format!("unload {}", u.model),
                        Some(pb::directive::Action::Drain(_)) => "drain".into(),
                        None => "none".into(),
                    }
                ),
                Action::Clear { id, .. } => format!("clear {id}"),
            })
            .collect()
    }

    #[test]
    fn a_drained_worker_gets_one_drain_and_never_a_model() {
        let ops = PopOps {
            drained_workers: vec!["w0".into()],
            ..Default::default()
        };
        let f = fleet(
            &[
                ("w0", "m", WorkerState::Warm),
                ("w1", "", WorkerState::Unloaded),
            ],
            Some(ops),
        );
        let placement = pb::Placement {
            revision: 1,
            assignments: vec![pb::ReplicaAssignment {
                model: "m".into(),
                site: "AMS".into(),
                gpu_kind: String::new(),
                replicas: 1,
            }],
        };
        let actions = reconcile(&f, Some(&placement), &[], &mut ids());
        assert_eq!(kinds(&actions), ["w0:drain", "w1:load m"]);
        // With the drain outstanding, the next round sends nothing new for w0.
        let Action::Send { directive, .. } = actions[0].clone() else {
            panic!()
        };
        let existing = [Existing {
            pop: "AMS".into(),
            directive,
            status: None,
        }];
        let again = reconcile(&f, None, &existing, &mut ids());
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn finished_directives_are_cleared_and_unmanaged_fleets_are_left_alone() {
        let f = fleet(&[("w0", "m", WorkerState::Warm)], None);
        assert!(reconcile(&f, None, &[], &mut ids()).is_empty());
        let done = Existing {
            pop: "AMS".into(),
            directive: pb::Directive {
                directive_id: "x".into(),
                worker_id: "w0".into(),
                action: Some(pb::directive::Action::Drain(pb::DrainWorker {})),
            },
            status: Some(DirectiveRecord {
                state: pb::DirectiveState::Done as i32,
                message: String::new(),
                progress: 1.0,
            }),
        };
        assert_eq!(
            kinds(&reconcile(&f, None, &[done], &mut ids())),
            ["clear x"]
        );
    }

    #[test]
    fn placement_drains_surplus_and_loads_missing() {
        let f = fleet(
            &[
                ("w0", "a", WorkerState::Warm),
                ("w1", "a", WorkerState::Warm),
                ("w2", "", WorkerState::Unloaded),
            ],
            None,
        );
        let placement = pb::Placement {
            revision: 1,
            assignments: vec![
                pb::ReplicaAssignment {
                    model: "a".into(),
                    site: "AMS".into(),
                    gpu_kind: String::new(),
                    replicas: 1,
                },
                pb::ReplicaAssignment {
                    model: "b".into(),
                    site: "AMS".into(),
                    gpu_kind: String::new(),
                    replicas: 1,
                },
                pb::ReplicaAssignment {
                    model: "a".into(),
                    site: "SIN".into(),
                    gpu_kind: String::new(),
                    replicas: 3,
                },
            ],
        };
        let actions = reconcile(&f, Some(&placement), &[], &mut ids());
        assert_eq!(kinds(&actions), ["w1:drain", "w2:load b"]);
        // A cordoned PoP gets no new replicas.
        let cordoned = fleet(
            &[("w2", "", WorkerState::Unloaded)],
            Some(PopOps {
                cordoned: true,
                ..Default::default()
            }),
        );
        assert!(reconcile(&cordoned, Some(&placement), &[], &mut ids()).is_empty());
    }
}

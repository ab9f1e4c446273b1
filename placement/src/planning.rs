//! Planning and applying placement against the store: the I/O shell around
//! `crate::planner` (instance from the live fleet), the solver and its independent
//! checker. Both the `Plan`/`Apply` RPCs and the leader's timed loop go through here, so
//! an automatic round and an operator's plan are the same computation, and neither
//! applies a plan the checker rejects.

use meridian_proto::control::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::cache::FleetCache;
use crate::config::PlacementConfig;
use crate::demand::{self, RouterDemand};
use crate::fleet::Keys;
use crate::planner;
use crate::solver::{self, Instance, Objective, PlacementRow, SolveOptions};
use crate::store::{Store, StoreError};

/// How long a plan waits in the store for `Apply`, milliseconds.
pub const PLAN_TTL_MS: u64 = 10 * 60_000;

/// What can go wrong while planning or applying.
#[derive(Debug, thiserror::Error)]
pub enum PlanningError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The live fleet makes an instance the solver refuses (e.g. a floor above the
    /// fleet's room); the message names the culprit.
    #[error("the live fleet is not a solvable placement instance: {0}")]
    Infeasible(String),
    #[error("no plan {0:?}: unknown or expired; plan again")]
    UnknownPlan(String),
    #[error("plan {id} breaks placement rules and is not applied: {violations}")]
    Invalid { id: String, violations: String },
    #[error(
        "the placement moved to revision {current} since plan {id} was made at {base}; plan again"
    )]
    Moved { id: String, base: u64, current: u64 },
    #[error("{0}")]
    Internal(String),
}

/// A plan as kept in the store between `Plan` and `Apply`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredPlan {
    pub id: String,
    /// Placement revision it was computed against.
    pub base_revision: u64,
    /// The placement it starts from and the one it proposes.
    pub from: Vec<PlacementRow>,
    pub to: Vec<PlacementRow>,
    pub objective: Objective,
    pub valid: bool,
    pub violations: Vec<String>,
    /// What the instance left out (unmanaged models, skipped pins, unknown devices).
    pub notes: Vec<String>,
    pub seconds: f64,
}

impl StoredPlan {
    pub fn response(&self, instance: Option<&Instance>) -> pb::PlanResponse {
        pb::PlanResponse {
            plan_id: self.id.clone(),
            base_revision: self.base_revision,
            changes: planner::changes(&self.from, &self.to),
            objective: Some(pb::PlanObjective {
                unserved_rps: self.objective.unserved_rps,
                gpu_cost: self.objective.gpu_cost,
                moves: self.objective.moves as f64,
                total: self.objective.total,
            }),
            valid: self.valid,
            violations: self.violations.clone(),
            notes: self.notes.clone(),
            instance_json: instance
                .and_then(|i| serde_json::to_string_pretty(i).ok())
                .unwrap_or_default(),
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The desired placement (revision 0 and empty before any was applied) and its key's
/// mod revision (0: none).
pub async fn placement(
    store: &dyn Store,
    keys: &Keys,
) -> Result<(pb::Placement, u64), PlanningError> {
    match store.get(&keys.placement()).await? {
        Some(kv) => {
            let p = pb::Placement::decode(kv.value.as_slice()).map_err(|e| {
                PlanningError::Internal(format!("stored placement is unreadable: {e}"))
            })?;
            Ok((p, kv.mod_revision))
        }
        None => Ok((pb::Placement::default(), 0)),
    }
}

/// The stored policy (revision 0 and empty before any was set) and its key's mod
/// revision (0: none), for a conditional write.
pub async fn policy(store: &dyn Store, keys: &Keys) -> Result<(pb::Policy, u64), PlanningError> {
    Ok(match store.get(&keys.policy()).await? {
        Some(kv) => (
            pb::Policy::decode(kv.value.as_slice()).map_err(|e| {
                PlanningError::Internal(format!("stored policy is unreadable: {e}"))
            })?,
            kv.mod_revision,
        ),
        None => (pb::Policy::default(), 0),
    })
}

/// The fleet's smoothed demand.
pub async fn demand(
    store: &dyn Store,
    keys: &Keys,
) -> Result<Vec<(demand::DemandKey, demand::Rates, u32)>, PlanningError> {
    let (kvs, _) = store.get_prefix(&keys.demand_all()).await?;
    let records: Vec<RouterDemand> = kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    Ok(demand::total(&records, now_ms()))
}

/// Solves the live fleet and stores the plan for `Apply`. `max_moves` 0: the policy's.
pub async fn plan(
    store: &dyn Store,
    keys: &Keys,
    cache: &FleetCache,
    config: &PlacementConfig,
    max_moves: u32,
) -> Result<(StoredPlan, Instance), PlanningError> {
    let pops = cache.with_state(|f| f.snapshot().pops);
    let (desired, _) = placement(store, keys).await?;
    let (policy, _) = policy(store, keys).await?;
    let demand = demand(store, keys).await?;
    // Before any placement was applied, the fleet as it is stands for the current one.
    let current = if desired.revision == 0 {
        planner::resident(&pops)
    } else {
        planner::rows_of(&desired)
    };
    let (instance, notes) = planner::build_instance(config, &pops, &demand, &policy, &current);
    let options = SolveOptions {
        seed: desired.revision,
        max_moves: (max_moves > 0).then_some(u64::from(max_moves)),
        ..SolveOptions::default()
    };
    let solved = {
        let instance = instance.clone();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let plan = solver::solve(&instance, &options)?;
            let report = solver::check(&instance, &plan)?;
            Ok::<_, solver::InstanceError>((plan, report, started.elapsed().as_secs_f64()))
        })
        .await
        .map_err(|e| PlanningError::Internal(format!("the solver task failed: {e}")))?
    };
    let (plan, report, seconds) = solved.map_err(|e| PlanningError::Infeasible(e.to_string()))?;
    let id = format!("{:x}-{:08x}", now_ms(), rand::random::<u32>());
    let stored = StoredPlan {
        id: id.clone(),
        base_revision: desired.revision,
        from: instance.current.clone(),
        to: plan.placement.clone(),
        objective: report.objective,
        valid: report.is_valid(),
        violations: report.violations.iter().map(|v| v.to_string()).collect(),
        notes,
        seconds,
    };
    let value = serde_json::to_vec(&stored)
        .map_err(|e| PlanningError::Internal(format!("encoding the plan: {e}")))?;
    let lease = store.grant_lease(PLAN_TTL_MS).await?;
    store.put(&keys.plan(&id), value, lease).await?;
    metrics::histogram!("meridian_control_plan_seconds").record(seconds);
    Ok((stored, instance))
}

/// Makes a stored plan the desired placement; returns the new placement revision.
/// `expected` (0: the plan's own base) must be the placement's revision now.
pub async fn apply(
    store: &dyn Store,
    keys: &Keys,
    plan_id: &str,
    expected: u64,
) -> Result<u64, PlanningError> {
    let Some(kv) = store.get(&keys.plan(plan_id)).await? else {
        return Err(PlanningError::UnknownPlan(plan_id.to_string()));
    };
    let plan: StoredPlan = serde_json::from_slice(&kv.value)
        .map_err(|e| PlanningError::Internal(format!("stored plan is unreadable: {e}")))?;
    if !plan.valid {
        return Err(PlanningError::Invalid {
            id: plan.id,
            violations: plan.violations.join("; "),
        });
    }
    let (current, mod_revision) = placement(store, keys).await?;
    if current.revision != plan.base_revision || (expected != 0 && expected != plan.base_revision) {
        return Err(PlanningError::Moved {
            id: plan.id,
            base: plan.base_revision,
            current: current.revision,
        });
    }
    let next = planner::placement_of(&plan.to, current.revision + 1);
    match store
        .put_if(&keys.placement(), next.encode_to_vec(), mod_revision, 0)
        .await
    {
        Ok(_) => {}
        Err(StoreError::Conflict { .. }) => {
            return Err(PlanningError::Moved {
                id: plan.id,
                base: plan.base_revision,
                current: current.revision + 1,
            });
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(
        plan = plan.id,
        revision = next.revision,
        changes = planner::changes(&plan.from, &plan.to).len(),
        "placement applied"
    );
    metrics::counter!("meridian_control_placements_applied_total").increment(1);
    Ok(next.revision)
}

/// One automatic round of the leader: plan, and apply when the plan is valid and
/// changes something. An invalid plan is logged and left alone.
pub async fn auto_round(
    store: &dyn Store,
    keys: &Keys,
    cache: &FleetCache,
    config: &PlacementConfig,
) -> Result<(), PlanningError> {
    let (plan, _) = plan(store, keys, cache, config, 0).await?;
    if !plan.valid {
        tracing::warn!(plan = plan.id, violations = ?plan.violations, "the checker rejected the solver's plan; not applied");
        metrics::counter!("meridian_control_plans_rejected_total").increment(1);
        return Ok(());
    }
    if planner::changes(&plan.from, &plan.to).is_empty() {
        return Ok(());
    }
    apply(store, keys, &plan.id, plan.base_revision).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn stored(id: &str, valid: bool) -> StoredPlan {
        StoredPlan {
            id: id.into(),
            base_revision: 0,
            from: vec![],
            to: vec![PlacementRow {
                model: "m".into(),
                site: "AMS".into(),
                gpu: "cpu".into(),
                replicas: 1,
            }],
            objective: Objective {
                unserved_rps: 0.0,
                gpu_cost: 1.0,
                moves: 1,
                total: 1.1,
            },
            valid,
            violations: if valid {
                vec![]
            } else {
                vec!["capacity: AMS serves 9 rps of m with room for 2".into()]
            },
            notes: vec![],
            seconds: 0.0,
        }
    }

    #[tokio::test]
    async fn apply_refuses_invalid_unknown_and_stale_plans() {
        let store = MemStore::new();
        let keys = Keys::new("/t");
        for plan in [
            stored("bad", false),
            stored("good", true),
            stored("late", true),
        ] {
            let value = serde_json::to_vec(&plan).unwrap();
            store.put(&keys.plan(&plan.id), value, 0).await.unwrap();
        }
        let err = apply(&store, &keys, "bad", 0).await.unwrap_err();
        assert!(matches!(err, PlanningError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("capacity"), "{err}");
        assert_eq!(placement(&store, &keys).await.unwrap().0.revision, 0);

        let err = apply(&store, &keys, "nope", 0).await.unwrap_err();
        assert!(matches!(err, PlanningError::UnknownPlan(_)), "{err}");

        assert_eq!(apply(&store, &keys, "good", 0).await.unwrap(), 1);
        let (p, _) = placement(&store, &keys).await.unwrap();
        assert_eq!(p.assignments.len(), 1);
        assert_eq!(
            p.assignments[0].gpu_kind, "",
            "CPU is the empty kind on the wire"
        );
        // Made against revision 0, which has moved on.
        let err = apply(&store, &keys, "late", 0).await.unwrap_err();
        assert!(
            matches!(err, PlanningError::Moved { current: 1, .. }),
            "{err}"
        );
    }
}

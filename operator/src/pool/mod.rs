//! The FuncWorkerPool controller: dereference → validate → size → build → apply → status.

pub mod apply;
pub mod build;
pub mod dereference;
pub mod scale_down;
pub mod scale_down_state;
pub mod size;
pub mod status;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::context::{Backoff, ControllerContext, Shared, key_text, object_key, rfc3339};
use crate::crd::{FuncQueue, FuncWorkerPool};
use crate::error::{Error, Result};
use crate::policy::History;
use crate::pool_index::PoolIndex;
use crate::queue_config::writes::QueueConfigs;
use crate::redis_metrics::QueueId;
use scale_down_state::ScaleDowns;

/// What a pool's last apply wrote: the hash of the objects and the Deployment generation the
/// apply produced.
pub type Applied = (u64, Option<i64>);

/// The pool controller's context: the state both controllers share and what only this
/// controller keeps.
pub struct Context {
    /// Client, recorder, metrics, settings, the FuncQueue store, registry, readings, Secrets,
    /// clock.
    pub shared: Arc<Shared>,
    /// All FuncWorkerPools the operator watches.
    pub pools: Store<FuncWorkerPool>,
    /// Policy history per pool.
    pub histories: Mutex<HashMap<ObjectRef<FuncWorkerPool>, History>>,
    /// Per pool: hash of the last applied objects and the Deployment generation the apply
    /// produced. Unchanged hash and generation mean nothing to apply (saves a PATCH per
    /// poll-triggered reconcile); any edit by someone else bumps the generation.
    pub applied: Mutex<HashMap<ObjectRef<FuncWorkerPool>, Applied>>,
    /// Scale-downs waiting for the pods they remove to stop taking tasks.
    pub scale_downs: ScaleDowns,
    /// One Redis connection per endpoint (shared with the queue controller's settings
    /// writes): a scale-down marks pods through it.
    pub queue_configs: Arc<QueueConfigs>,
    /// Per-pool backoff of failed reconciles.
    pub backoff: Backoff<ObjectRef<FuncWorkerPool>>,
}

impl Context {
    /// A pool controller context with fresh histories, apply records and scale-downs.
    pub fn new(
        shared: Arc<Shared>,
        pools: Store<FuncWorkerPool>,
        queue_configs: Arc<QueueConfigs>,
    ) -> Self {
        Self {
            shared,
            pools,
            histories: Mutex::default(),
            applied: Mutex::default(),
            scale_downs: ScaleDowns::default(),
            queue_configs,
            backoff: Backoff::default(),
        }
    }
}

impl ControllerContext for Context {
    type Object = FuncWorkerPool;
    const CONTROLLER: &'static str = "pool";
    fn shared(&self) -> &Shared {
        &self.shared
    }
    fn backoff(&self) -> &Backoff<ObjectRef<FuncWorkerPool>> {
        &self.backoff
    }
}

/// Reconcile one pool.
pub async fn reconcile(pool: Arc<FuncWorkerPool>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx
        .shared
        .metrics
        .reconcile_duration
        .with_label_values(&["pool"])
        .start_timer();
    ctx.shared
        .metrics
        .reconciliations
        .with_label_values(&["pool"])
        .inc();
    let ns = pool
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let name = pool.name_any();
    let key = object_key::<FuncWorkerPool>(&ns, &name);
    let api: Api<FuncWorkerPool> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let now_ms = ctx.shared.now_ms();
    let now = rfc3339(now_ms);

    let deref = dereference::dereference(&pool, &ns, &ctx).await?;
    let valid = match validate::validate(&pool, &ns, &deref, &ctx.shared.config.keys) {
        Ok(v) => v,
        Err(Error::InvalidSpec { field, reason }) => {
            // a Secret is not watched: look again, slowly, for one created later
            let retry = (!deref.missing_secrets.is_empty()).then_some(ctx.shared.config.resync);
            let action = invalid(&api, &pool, &name, &field, &reason, &now, &ctx).await?;
            return Ok(retry.map_or(action, Action::requeue));
        }
        Err(e) => return Err(e),
    };

    let readings: Vec<size::QueueReading> = pool
        .spec
        .queues
        .iter()
        .map(|q| {
            // every Worker pool of the namespace serving q, from the index (this one from the
            // trigger, which may be newer than the store's copy)
            let sharing: Vec<Arc<FuncWorkerPool>> = ctx
                .shared
                .index
                .consumers(&ns, q)
                .iter()
                .filter(|n| **n != name)
                .filter_map(|n| ctx.pools.get(&ObjectRef::new(n).within(&ns)))
                .collect();
            let others: Vec<&FuncWorkerPool> = sharing
                .iter()
                .map(|p| p.as_ref())
                .chain(std::iter::once(pool.as_ref()))
                .collect();
            size::QueueReading {
                name: q.clone(),
                reading: ctx.shared.cache.get(&QueueId::new(ns.clone(), q.clone())),
                share: size::share(&pool, &others),
                running_here: None,
            }
        })
        .collect();
    // a queue other pools serve too: its running tasks count where they run (two pipelined
    // round trips, only for pools sharing a queue)
    let mut readings = readings;
    // (funcscale queues only: the foreign formats keep no running set)
    let own_format = |queue: &str| {
        valid
            .queues
            .iter()
            .any(|q| q.name_any() == queue && q.spec.format == crate::crd::QueueFormat::Funcscale)
    };
    let shared: Vec<String> = readings
        .iter()
        .filter(|r| r.share < 1.0 && own_format(&r.name))
        .map(|r| r.name.clone())
        .collect();
    if !shared.is_empty() && pool.spec.autoscaling.is_some() {
        let names: Vec<&str> = shared.iter().map(String::as_str).collect();
        match scale_down::running_here(&ctx, &ns, &name, &valid, &names).await {
            Ok(by_queue) => {
                for r in readings.iter_mut() {
                    if let Some(n) = by_queue.get(&r.name) {
                        r.running_here = Some(*n);
                    }
                }
            }
            Err(e) => {
                tracing::debug!(pool = %key_text(&key), error = %e, "cannot read where the shared queues' tasks run: counting the pool's share")
            }
        }
    }
    let current = deref
        .deployment
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas);
    let (sizing, hold_ends_ms) = {
        let mut histories = ctx.histories.lock().expect("history lock");
        let history = histories.entry(key.clone()).or_default();
        let sizing = size::size(
            &pool,
            valid.beat_conflict.as_deref(),
            &readings,
            current,
            now_ms,
            history,
        );
        let window_ms = pool
            .spec
            .autoscaling
            .as_ref()
            .map(|a| crate::policy::PolicyConfig::from_autoscaling(a, pool.spec.processes_per_pod))
            .map(|c| c.scale_down_stabilization_ms);
        let ends = window_ms.and_then(|w| history.hold_ends_ms(w));
        (sizing, ends)
    };

    // a scale-down removes the least busy pods: it may hold the count until they stop
    let mut sizing = sizing;
    let plan = scale_down::plan(
        &ctx,
        &pool,
        &ns,
        &name,
        &valid,
        current,
        sizing.replicas,
        now_ms,
    )
    .await;
    if let Some((waiting, _)) = &plan.waiting {
        sizing.decision.message = format!("{} ({waiting})", sizing.decision.message);
    }
    let desired = match build::build(&pool, &ns, &valid, plan.replicas, &ctx.shared.config) {
        Ok(d) => d,
        Err(Error::InvalidSpec { field, reason }) => {
            return invalid(&api, &pool, &name, &field, &reason, &now, &ctx).await;
        }
        Err(e) => return Err(e),
    };
    let hash = build::fingerprint(&desired)?;
    let unchanged = pool.spec.role == crate::crd::PoolRole::Worker
        && deref.deployment.as_ref().is_some_and(|d| {
            ctx.applied.lock().expect("applied lock").get(&key)
                == Some(&(hash, d.metadata.generation))
        });
    let applied = match (unchanged, deref.deployment.clone()) {
        (true, Some(d)) => d,
        _ => {
            let d = match apply::apply(&ctx.shared.client, &ns, &desired).await {
                Ok(d) => d,
                Err(Error::Rejected {
                    kind,
                    name: object,
                    message,
                    ..
                }) => {
                    let refused = (kind, object.as_str(), message.as_str());
                    return rejected(&api, &pool, &name, refused, &now, &ctx).await;
                }
                Err(e) => return Err(e),
            };
            ctx.applied
                .lock()
                .expect("applied lock")
                .insert(key.clone(), (hash, d.metadata.generation));
            d
        }
    };

    if let Some(why) = &plan.unchosen {
        publish(
            &ctx,
            &pool,
            EventType::Warning,
            "ScaleDownUnchosen",
            why.clone(),
        )
        .await;
    }
    if let Some(chosen) = &plan.chosen {
        let pods: Vec<String> = chosen
            .iter()
            .map(|(pod, running)| format!("{pod} ({running} running)"))
            .collect();
        publish(
            &ctx,
            &pool,
            EventType::Normal,
            "ScaleDownPodsChosen",
            format!(
                "scale-down to {}: removing the least busy pods {}",
                sizing.replicas.unwrap_or_default(),
                pods.join(", ")
            ),
        )
        .await;
    }
    if let (Some(from), Some(to)) = (current, plan.replicas)
        && from != to
    {
        let (reason, note) = if pool.spec.role == crate::crd::PoolRole::Beat && from > 1 {
            (
                "BeatRestored",
                format!("restored {from} → {to}: a Beat pool runs exactly one replica"),
            )
        } else {
            (
                "Scaled",
                format!("scaled {from} → {to}: {}", sizing.decision.message),
            )
        };
        publish(&ctx, &pool, EventType::Normal, reason, note).await;
    }
    let prior_conflict = pool
        .status
        .as_ref()
        .and_then(|s| crate::conditions::get(&s.conditions, "Conflict"))
        .is_some_and(|c| c.status == "True");
    if let Some(other) = &valid.beat_conflict
        && !prior_conflict
    {
        publish(
            &ctx,
            &pool,
            EventType::Warning,
            "BeatConflict",
            format!(
                "Beat pool {other} already runs for this namespace and Redis; this one is held at 0 replicas"
            ),
        )
        .await;
    }

    let st = status::reconciled(
        &pool,
        &name,
        &sizing,
        &applied,
        valid.beat_conflict.as_deref(),
        &now,
    );
    ctx.shared
        .metrics
        .pool_desired
        .with_label_values(&[&ns, &name])
        .set(i64::from(st.desired_replicas));
    ctx.shared
        .metrics
        .pool_current
        .with_label_values(&[&ns, &name])
        .set(i64::from(st.replicas));
    if pool.spec.role == crate::crd::PoolRole::Beat {
        ctx.shared
            .metrics
            .beat_ready
            .with_label_values(&[&ns, &name])
            .set(i64::from(st.ready_replicas));
    } else {
        let _ = ctx
            .shared
            .metrics
            .beat_ready
            .remove_label_values(&[&ns, &name]);
    }
    status::patch(&api, &pool, &name, st).await?;
    ctx.backoff.succeeded(&key);
    timer.observe_duration();
    let next = next_reconcile(&sizing, hold_ends_ms, now_ms, ctx.shared.config.resync);
    Ok(Action::requeue(match plan.waiting {
        Some((_, recheck)) => next.min(recheck),
        None => next,
    }))
}

/// When to look at the pool again without a trigger. Idle queues produce no poll-loop
/// trigger, so a scale-down held by the stabilization window must come back by itself when
/// the window lets it go further, or the pool would linger until the periodic resync.
fn next_reconcile(
    sizing: &size::Sizing,
    hold_ends_ms: Option<u64>,
    now_ms: u64,
    resync: std::time::Duration,
) -> std::time::Duration {
    match (sizing.decision.rule, hold_ends_ms) {
        (crate::policy::Rule::Stabilized, Some(at)) => {
            let wait = std::time::Duration::from_millis(at.saturating_sub(now_ms));
            wait.clamp(std::time::Duration::from_millis(200), resync)
        }
        _ => resync,
    }
}

async fn invalid(
    api: &Api<FuncWorkerPool>,
    pool: &FuncWorkerPool,
    name: &str,
    field: &str,
    reason: &str,
    now: &str,
    ctx: &Context,
) -> Result<Action> {
    tracing::info!(
        pool = name,
        field,
        reason,
        "invalid spec: waiting for a change"
    );
    let st = status::invalid(pool, name, field, reason, now);
    if status::patch(api, pool, name, st).await? {
        publish(
            ctx,
            pool,
            EventType::Warning,
            "InvalidSpec",
            format!("{field}: {reason}"),
        )
        .await;
    }
    ctx.backoff.succeeded(&ObjectRef::from_obj(pool));
    Ok(Action::await_change())
}

/// The API server refused an object the pool applies: what the operator rendered cannot
/// be stored, and sending it again cannot help. Say so where users look (the `Ready`
/// condition, a Warning Event, `funcscale_apply_rejected_total`) and wait for a change.
/// `refused`: the object's kind and name, and the API server's message.
async fn rejected(
    api: &Api<FuncWorkerPool>,
    pool: &FuncWorkerPool,
    name: &str,
    (kind, object, message): (&'static str, &str, &str),
    now: &str,
    ctx: &Context,
) -> Result<Action> {
    ctx.shared
        .metrics
        .apply_rejected
        .with_label_values(&[kind])
        .inc();
    tracing::warn!(
        pool = name,
        kind,
        object,
        message,
        "the API server rejected the object: waiting for a change"
    );
    let reason = format!("{kind}Rejected");
    let st = status::rejected(pool, name, &reason, message, now);
    if status::patch(api, pool, name, st).await? {
        publish(ctx, pool, EventType::Warning, &reason, message.to_string()).await;
    }
    ctx.backoff.succeeded(&ObjectRef::from_obj(pool));
    Ok(Action::await_change())
}

async fn publish(
    ctx: &Context,
    pool: &FuncWorkerPool,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx
        .shared
        .recorder
        .publish(&ev, &pool.object_ref(&()))
        .await
    {
        tracing::warn!(error = %e, "cannot publish event");
    }
}

/// Errors back off per pool ([`crate::context::error_policy`]).
pub fn error_policy(pool: Arc<FuncWorkerPool>, err: &Error, ctx: Arc<Context>) -> Action {
    crate::context::error_policy(pool, err, ctx)
}

/// Mapper from a queue to the pools it wakes, from the index: the Worker pools listing it and
/// the Beat pools of its namespace. (Pools of other namespaces whose queues share its keys
/// are woken through [`crate::key_index`].)
pub fn queue_to_pools(
    index: PoolIndex,
) -> impl Fn(&FuncQueue) -> Vec<ObjectRef<FuncWorkerPool>> + Send + Sync {
    move |q: &FuncQueue| {
        let ns = q.namespace().unwrap_or_default();
        index.pools_for_queue(&ns, &q.name_any())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::next_reconcile;
    use crate::policy::{Decision, Rule};
    use crate::pool::size::{MetricsState, Sizing};

    fn sizing(rule: Rule) -> Sizing {
        Sizing {
            replicas: Some(1),
            decision: Decision {
                rule,
                ..Decision::fixed(1)
            },
            metrics: MetricsState::Available,
            depths: Vec::new(),
        }
    }

    #[test]
    fn a_held_scale_down_comes_back_when_the_window_ends() {
        let resync = Duration::from_secs(60);
        let held = sizing(Rule::Stabilized);
        assert_eq!(
            next_reconcile(&held, Some(13_001), 10_000, resync),
            Duration::from_millis(3_001)
        );
        // never a busy loop, never later than the resync
        assert_eq!(
            next_reconcile(&held, Some(9_000), 10_000, resync),
            Duration::from_millis(200)
        );
        assert_eq!(next_reconcile(&held, Some(999_999), 0, resync), resync);
        assert_eq!(
            next_reconcile(&sizing(Rule::QueueLoad), Some(13_001), 10_000, resync),
            resync
        );
    }
}

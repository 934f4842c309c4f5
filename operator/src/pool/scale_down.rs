//! Idle pods go first on scale-down. When a pool shrinks from N to M pods, the N − M pods
//! removed are the ones running the fewest tasks, so a shrink never makes busy pods drain
//! while idle ones stay.
//!
//! The ReplicaSet controller picks the pods it deletes: unscheduled before pending before
//! not-ready before ready, then (Kubernetes 1.22+) the lowest
//! `controller.kubernetes.io/pod-deletion-cost`, then the most recently ready. So, once the
//! policy has decided a scale-down (sizing and stabilization are unchanged), the operator:
//! 1. reads the running tasks of each pod from Redis ([`funcscale_protocol::stop`]: two
//!    pipelined round trips for the pool, whatever its size) and the pods from the API, and
//!    [`choose`]s N − M: not-ready pods first (the ReplicaSet removes those first anyway), then
//!    the fewest running tasks, then the youngest;
//! 2. sets the chosen pods' stop marks in Redis (TTL [`STOP_TTL_MS`], renewed while it
//!    waits): their workers take no new task, finish what they run and answer `/readyz` with
//!    503, so the kubelet reports them not ready; and annotates them with a deletion cost of
//!    [`REMOVE_COST`] (harmless where the API server ignores it);
//! 3. holds `replicas` at N until every chosen pod is not ready (or gone), at most
//!    [`NOT_READY_WAIT`] — on an API server that honours the deletion cost (1.22+) it does not
//!    wait — then lowers `replicas` to M: the ReplicaSet deletes the chosen pods (unless
//!    another pod is unscheduled, pending or not ready: those go first).
//!
//! If the policy wants N or more pods again before that, the marks and annotations are
//! removed and the workers take tasks again. Marks expire by themselves, so a dead operator
//! never leaves workers stuck. Only pools whose pods run `funcscale-worker` are marked (a pool
//! with its own `command` runs workers that do not read the marks): those are scaled as
//! before. Anything that fails on the way (Redis, the API) falls back to lowering `replicas`
//! at once: a scale-down never hangs.

use std::collections::BTreeMap;
use std::time::Duration;

use funcscale_protocol::stop::{self, STOP_TTL_MS};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};

use super::Context;
use crate::context::{key_text, object_key};
use crate::crd::{FuncWorkerPool, PoolRole};
use crate::redis_metrics::QueueId;

pub use super::scale_down_state::{Pending, ScaleDowns};
use super::validate::Valid;

/// The annotation the ReplicaSet controller (1.22+) ranks pods by: lower goes first.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// The deletion cost of a pod chosen for removal (pods without the annotation count as 0).
pub const REMOVE_COST: i32 = -1000;

/// The longest a scale-down waits for its chosen pods to turn not ready before it lowers
/// `replicas` anyway: the worker reads its mark within 1 s and its readiness probe fails
/// within about 4 s (every 2 s, 2 failures): 15 s leaves room for a slow kubelet and a busy
/// node, and bounds how long a scale-down can be held up.
pub const NOT_READY_WAIT: Duration = Duration::from_secs(15);

/// How soon a waiting scale-down looks at its pods again.
pub const RECHECK: Duration = Duration::from_secs(1);

/// One pod of the pool, as the choice sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLoad {
    /// Pod name.
    pub name: String,
    /// Tasks its workers run now.
    pub running: u64,
    /// Its `Ready` condition is true.
    pub ready: bool,
    /// Creation time (unix ms).
    pub created_ms: u64,
    /// It carries the deletion cost of a chosen pod ([`REMOVE_COST`]), from an earlier
    /// scale-down it survived.
    pub costed: bool,
}

/// The `remove` pods to take away: not-ready pods first (the ReplicaSet deletes those before
/// any ready one whatever we mark), then the fewest running tasks, then the youngest. A busy
/// pod is chosen only when fewer than `remove` pods are idle, and then the least busy.
pub fn choose(pods: &[PodLoad], remove: usize) -> Vec<String> {
    let mut order: Vec<&PodLoad> = pods.iter().collect();
    order.sort_by(|a, b| {
        (a.ready, a.running, std::cmp::Reverse(a.created_ms), &a.name).cmp(&(
            b.ready,
            b.running,
            std::cmp::Reverse(b.created_ms),
            &b.name,
        ))
    });
    order
        .into_iter()
        .take(remove)
        .map(|p| p.name.clone())
        .collect()
}

/// Whether `replicas` may be lowered: every chosen pod is not ready or gone from `pods`, or
/// the wait since `started_ms` has run out.
pub fn may_lower(chosen: &[String], pods: &[PodLoad], started_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(started_ms) >= NOT_READY_WAIT.as_millis() as u64
        || chosen
            .iter()
            .all(|c| pods.iter().find(|p| &p.name == c).is_none_or(|p| !p.ready))
}

/// When the wait of a scale-down from `from` pods started: at the first choice of that
/// scale-down (`pending`), whatever target it has now, so a moving target cannot hold
/// `replicas` past [`NOT_READY_WAIT`]; else now.
pub fn started(pending: Option<&Pending>, from: i32, now_ms: u64) -> u64 {
    pending
        .filter(|p| p.from == from)
        .map_or(now_ms, |p| p.started_ms)
}

/// The pods still carrying [`REMOVE_COST`] from an earlier scale-down they survived that are
/// not `chosen` now: their cost goes, or the ReplicaSet (1.22+) deletes them before the chosen.
pub fn stale_costs<'a>(pods: &'a [PodLoad], chosen: &[String]) -> Vec<&'a str> {
    pods.iter()
        .filter(|p| p.costed && !chosen.contains(&p.name))
        .map(|p| p.name.as_str())
        .collect()
}

/// Whether an API server of this version ranks pods by [`DELETION_COST`] on its own: beta
/// (on by default) since 1.22. Minor versions may carry a suffix (`"22+"`).
pub fn honours_deletion_cost(major: &str, minor: &str) -> bool {
    let num = |s: &str| {
        s.trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse::<u32>()
            .ok()
    };
    match (num(major), num(minor)) {
        (Some(1), Some(m)) => m >= 22,
        (Some(major), _) => major > 1,
        _ => false,
    }
}

/// What the reconcile applies.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Replicas to write (`None`: leave the Deployment's count alone).
    pub replicas: Option<i32>,
    /// Set while the scale-down waits for its pods: what it waits for (status message), and
    /// how soon to look again.
    pub waiting: Option<(String, Duration)>,
    /// The pods chosen by a scale-down that started now, with their running tasks (Event).
    pub chosen: Option<Vec<(String, u64)>>,
    /// Why the idle pods could not be chosen (Redis or the API failed, e.g. an ACL user
    /// without `SET` on the stop marks): `replicas` is lowered at once (Warning Event).
    pub unchosen: Option<String>,
}

impl Plan {
    fn now(replicas: Option<i32>) -> Self {
        Self {
            replicas,
            waiting: None,
            chosen: None,
            unchosen: None,
        }
    }
}

/// Whether the pool's pods obey stop marks: funcscale workers (not a Beat, not a pool's own
/// command, not Celery: their pods never turn not ready on a mark, so a scale-down would wait
/// for nothing).
fn obeys_marks(pool: &FuncWorkerPool) -> bool {
    pool.spec.role == PoolRole::Worker && pool.spec.command.is_empty() && pool.spec.celery.is_none()
}

/// The replicas to write for a pool whose Deployment has `current` and whose sizing wants
/// `desired` (see the module docs).
#[allow(clippy::too_many_arguments)]
pub async fn plan(
    ctx: &Context,
    pool: &FuncWorkerPool,
    ns: &str,
    name: &str,
    valid: &Valid,
    current: Option<i32>,
    desired: Option<i32>,
    now_ms: u64,
) -> Plan {
    let key = object_key::<FuncWorkerPool>(ns, name);
    let pending = ctx.scale_downs.get(&key);
    let shrinking = match (current, desired) {
        (Some(from), Some(to)) if to < from && obeys_marks(pool) => Some((from, to)),
        _ => None,
    };
    let Some((from, to)) = shrinking else {
        if desired.is_none() {
            // the sizing holds (its metrics are unavailable): so does a scale-down in
            // progress, its pods kept marked (they take no task meanwhile), so that when the
            // sizing resumes the pods it lowers to are still the idle ones
            if let Some(p) = pending {
                let names: Vec<&str> = p.pods.iter().map(String::as_str).collect();
                let reason = format!("scale-down of pool {name} from {} to {} pods", p.from, p.to);
                if let Err(e) = mark(ctx, ns, valid, &names, &reason).await {
                    tracing::debug!(pool = %key_text(&key), error = %e, "cannot renew the stop marks while the sizing holds: they expire");
                }
            }
            return Plan::now(desired);
        }
        if let Some(p) = pending {
            // no longer shrinking (the policy wants the pods again, or someone else changed
            // the Deployment): the marked pods take tasks again
            ctx.scale_downs.set(&key, None);
            tracing::info!(pool = %key_text(&key), pods = ?p.pods, "scale-down called off: the pods take tasks again");
            unmark(ctx, ns, name, valid, &p.pods).await;
        }
        return Plan::now(desired);
    };
    match step(ctx, ns, name, valid, (from, to), pending, now_ms).await {
        Ok(plan) => plan,
        Err(e) => {
            tracing::warn!(pool = %key_text(&key), error = %e, "cannot choose the idle pods of a scale-down: lowering replicas at once");
            ctx.scale_downs.set(&key, None);
            Plan {
                unchosen: Some(format!(
                    "cannot choose the idle pods of the scale-down from {from} to {to} pods ({e:#}): the ReplicaSet picks them (a busy pod may drain while an idle one stays)"
                )),
                ..Plan::now(desired)
            }
        }
    }
}

async fn step(
    ctx: &Context,
    ns: &str,
    name: &str,
    valid: &Valid,
    (from, to): (i32, i32),
    pending: Option<Pending>,
    now_ms: u64,
) -> anyhow::Result<Plan> {
    let key = object_key::<FuncWorkerPool>(ns, name);
    let pods = pods(ctx, ns, name).await?;
    let reason = format!("scale-down of pool {name} from {from} to {to} pods");
    if let Some(p) = pending.clone().filter(|p| p.from == from && p.to == to) {
        if may_lower(&p.pods, &pods, p.started_ms, now_ms) {
            // the marks stay until they expire: the pods are going
            ctx.scale_downs.set(&key, None);
            return Ok(Plan::now(Some(to)));
        }
        let alive: Vec<&str> = p
            .pods
            .iter()
            .map(String::as_str)
            .filter(|c| pods.iter().any(|p| p.name == *c))
            .collect();
        mark(ctx, ns, valid, &alive, &reason).await?;
        return Ok(hold(from, &p.pods, p.started_ms, now_ms, None));
    }

    // a new scale-down (or a new target): choose and mark. A new target of the same
    // scale-down keeps its start: the wait is bounded however often the target moves
    let started_ms = started(pending.as_ref(), from, now_ms);
    let running = running_by_pod(ctx, ns, valid).await?;
    let loads: Vec<PodLoad> = pods
        .into_iter()
        .map(|mut p| {
            p.running = running.get(&p.name).copied().unwrap_or(0);
            p
        })
        .collect();
    let remove = usize::try_from(from - to).unwrap_or(0);
    let chosen = choose(&loads, remove);
    if chosen.is_empty() {
        // no pod to pick (none created yet): nothing to stop
        ctx.scale_downs.set(&key, None);
        return Ok(Plan::now(Some(to)));
    }
    let previous = ctx
        .scale_downs
        .get(&key)
        .map(|p| p.pods)
        .unwrap_or_default();
    let dropped: Vec<String> = previous
        .into_iter()
        .filter(|p| !chosen.contains(p))
        .collect();
    if !dropped.is_empty() {
        unmark(ctx, ns, name, valid, &dropped).await;
    }
    // pods that kept the cost of an earlier scale-down they survived (the ReplicaSet took a
    // not-ready pod instead) must not go before the chosen ones
    let api: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), ns);
    for p in stale_costs(&loads, &chosen) {
        annotate(&api, p, None).await;
    }
    let names: Vec<&str> = chosen.iter().map(String::as_str).collect();
    mark(ctx, ns, valid, &names, &reason).await?;
    for c in &chosen {
        annotate(&api, c, Some(REMOVE_COST)).await;
    }
    let with_running: Vec<(String, u64)> = chosen
        .iter()
        .map(|c| (c.clone(), running.get(c).copied().unwrap_or(0)))
        .collect();
    tracing::info!(pool = %key_text(&key), from, to, chosen = ?with_running, "scale-down: stopping the least busy pods first");
    let honoured = *ctx
        .scale_downs
        .deletion_cost()
        .get_or_init(|| async {
            match ctx.shared.client.apiserver_version().await {
                Ok(v) => honours_deletion_cost(&v.major, &v.minor),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the API server version: assuming it ignores pod-deletion-cost");
                    false
                }
            }
        })
        .await;
    if honoured || may_lower(&chosen, &loads, started_ms, now_ms) {
        // the ReplicaSet ranks the chosen pods first already
        return Ok(Plan {
            chosen: Some(with_running),
            ..Plan::now(Some(to))
        });
    }
    ctx.scale_downs.set(
        &key,
        Some(Pending {
            from,
            to,
            pods: chosen.clone(),
            started_ms,
        }),
    );
    Ok(hold(from, &chosen, started_ms, now_ms, Some(with_running)))
}

fn hold(
    from: i32,
    pods: &[String],
    started_ms: u64,
    now_ms: u64,
    chosen: Option<Vec<(String, u64)>>,
) -> Plan {
    let left =
        NOT_READY_WAIT.saturating_sub(Duration::from_millis(now_ms.saturating_sub(started_ms)));
    Plan {
        replicas: Some(from),
        waiting: Some((
            format!(
                "removing the least busy pods first: waiting up to {}s for {} to stop taking tasks",
                left.as_secs().max(1),
                pods.join(", ")
            ),
            RECHECK.min(left.max(Duration::from_millis(100))),
        )),
        chosen,
        unchosen: None,
    }
}

/// The pool's pods that are not being deleted.
async fn pods(ctx: &Context, ns: &str, name: &str) -> anyhow::Result<Vec<PodLoad>> {
    let api: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), ns);
    let selector = crate::crd_ext::selector_labels(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let list = api.list(&ListParams::default().labels(&selector)).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            PodLoad {
                created_ms: p
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or(0, |t| t.0.as_millisecond().max(0) as u64),
                costed: p
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(DELETION_COST))
                    .is_some_and(|c| c.trim() == REMOVE_COST.to_string()),
                name: p.name_any(),
                running: 0,
                ready,
            }
        })
        .collect())
}

/// The pool's Redis connection, and the ids of its queues.
async fn redis(
    ctx: &Context,
    ns: &str,
    valid: &Valid,
) -> anyhow::Result<(funcscale_connect::Conn, Vec<String>)> {
    let first = valid
        .queues
        .first()
        .ok_or_else(|| anyhow::anyhow!("the pool has no queue"))?;
    let target = ctx
        .shared
        .registry
        .get(&QueueId::new(ns, first.name_any()))
        .ok_or_else(|| anyhow::anyhow!("queue {} is not registered yet", first.name_any()))?;
    let con = ctx.queue_configs.connection(&target.endpoint).await?;
    let ids = valid
        .queues
        .iter()
        .map(|q| crate::crd_ext::queue_id(q, ns))
        .collect();
    Ok((con, ids))
}

/// Running tasks per pod of the pool's queues (two pipelined round trips).
async fn running_by_pod(
    ctx: &Context,
    ns: &str,
    valid: &Valid,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let (mut con, ids) = redis(ctx, ns, valid).await?;
    // the pool's workers keep their registry and in-flight lists under the namespace their
    // queue ids name (the first that names one), as `Worker::build` scopes them
    let scope = ids
        .iter()
        .find_map(|q| funcscale_protocol::Keys::queue_id_namespace(q))
        .map(String::from);
    let keys = &ctx.shared.config.keys.clone().in_namespace(scope);
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let sets: Vec<Vec<String>> = query(&mut con, &stop::running_slots_pipeline(keys, &ids)).await?;
    let slots = stop::running_slots(keys, &sets);
    if slots.is_empty() {
        return Ok(BTreeMap::new());
    }
    let pods: Vec<Option<String>> =
        query(&mut con, &stop::slot_pods_pipeline(keys, &slots)).await?;
    Ok(stop::count_by_pod(&pods))
}

/// The running tasks of each of `queues` (names, of the pool's) that run on the pool's own
/// pods: a slot's pod belongs to the pool when its ReplicaSet's Deployment is the pool's
/// ([`stop::deployment_of_pod`]). Two pipelined round trips.
pub async fn running_here(
    ctx: &Context,
    ns: &str,
    name: &str,
    valid: &Valid,
    queues: &[&str],
) -> anyhow::Result<BTreeMap<String, u64>> {
    let (mut con, _) = redis(ctx, ns, valid).await?;
    let ids: Vec<(String, String)> = valid
        .queues
        .iter()
        .filter(|q| queues.contains(&q.name_any().as_str()))
        .map(|q| (q.name_any(), crate::crd_ext::queue_id(q, ns)))
        .collect();
    let scope = ids
        .iter()
        .find_map(|(_, q)| funcscale_protocol::Keys::queue_id_namespace(q))
        .map(String::from);
    let keys = &ctx.shared.config.keys.clone().in_namespace(scope);
    let id_refs: Vec<&str> = ids.iter().map(|(_, id)| id.as_str()).collect();
    let sets: Vec<Vec<String>> =
        query(&mut con, &stop::running_slots_pipeline(keys, &id_refs)).await?;
    let slots = stop::running_slots(keys, &sets);
    let pods: Vec<Option<String>> = if slots.is_empty() {
        Vec::new()
    } else {
        query(&mut con, &stop::slot_pods_pipeline(keys, &slots)).await?
    };
    let pod_of: BTreeMap<&str, Option<&str>> = slots
        .iter()
        .map(String::as_str)
        .zip(pods.iter().map(Option::as_deref))
        .collect();
    Ok(ids
        .iter()
        .zip(&sets)
        .map(|((queue, _), set)| {
            let here = set
                .iter()
                .filter_map(|k| keys.inflight_slot(k))
                .filter(|s| {
                    pod_of
                        .get(s)
                        .copied()
                        .flatten()
                        .is_some_and(|pod| stop::pod_of_deployment(pod, name))
                })
                .count() as u64;
            (queue.clone(), here)
        })
        .collect())
}

/// Set (or renew) the stop marks of `pods`.
async fn mark(
    ctx: &Context,
    ns: &str,
    valid: &Valid,
    pods: &[&str],
    reason: &str,
) -> anyhow::Result<()> {
    if pods.is_empty() {
        return Ok(());
    }
    let (mut con, _) = redis(ctx, ns, valid).await?;
    let mut pipe = redis::pipe();
    stop::mark(
        &mut pipe,
        &ctx.shared.config.keys,
        ns,
        pods,
        reason,
        STOP_TTL_MS,
    );
    funcscale_connect::query_grouped(&mut con, &pipe)
        .await
        .into_values()?;
    Ok(())
}

/// `pipe`'s replies (none `.ignore()`d) through [`funcscale_connect::query_grouped`]: as they
/// are on one server, one pipeline per master on a Redis Cluster (the keys of a pool's queues
/// and workers are on many slots).
async fn query<T: redis::FromRedisValue>(
    con: &mut funcscale_connect::Conn,
    pipe: &redis::Pipeline,
) -> anyhow::Result<T> {
    let values = funcscale_connect::query_grouped(con, pipe)
        .await
        .into_values()?;
    Ok(T::from_redis_value(redis::Value::Array(values))?)
}

/// Clear the stop marks and deletion costs of `pods` (best effort: a mark left behind
/// expires within [`STOP_TTL_MS`]; a cost left behind is cleared by the next scale-down of
/// the pool, which lists the pods anyway, unless it chooses that pod again).
async fn unmark(ctx: &Context, ns: &str, name: &str, valid: &Valid, pods: &[String]) {
    let cleared = async {
        let (mut con, _) = redis(ctx, ns, valid).await?;
        let mut pipe = redis::pipe();
        let names: Vec<&str> = pods.iter().map(String::as_str).collect();
        stop::clear(&mut pipe, &ctx.shared.config.keys, ns, &names);
        funcscale_connect::query_grouped(&mut con, &pipe)
            .await
            .into_values()?;
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = cleared {
        tracing::warn!(pool = %format!("{ns}/{name}"), error = %e, "cannot clear stop marks: they expire within {}s", STOP_TTL_MS / 1000);
    }
    let api: Api<Pod> = Api::namespaced(ctx.shared.client.clone(), ns);
    for p in pods {
        annotate(&api, p, None).await;
    }
}

/// Set (or remove) a pod's deletion cost. A pod that is gone needs none; other failures are
/// logged: the stop mark alone still makes the pod go first.
async fn annotate(api: &Api<Pod>, pod: &str, cost: Option<i32>) {
    let body = serde_json::json!({"metadata": {"annotations": {
        DELETION_COST: cost.map(|c| c.to_string())
    }}});
    match api
        .patch(pod, &PatchParams::default(), &Patch::Merge(&body))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => tracing::warn!(pod, error = %e, "cannot set the pod's deletion cost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, running: u64, ready: bool, created_ms: u64) -> PodLoad {
        PodLoad {
            name: name.into(),
            running,
            ready,
            created_ms,
            costed: false,
        }
    }

    #[test]
    fn a_moving_target_keeps_the_start_of_the_wait() {
        let p = Pending {
            from: 5,
            to: 3,
            pods: vec!["a".into(), "b".into()],
            started_ms: 1_000,
        };
        // the target moves 3 → 2: still the scale-down that started at 1 s
        assert_eq!(started(Some(&p), 5, 9_000), 1_000);
        // a scale-down from another count, or none: starts now
        assert_eq!(started(Some(&p), 4, 9_000), 9_000);
        assert_eq!(started(None, 5, 9_000), 9_000);
        // so its wait runs out 15 s after the first choice
        let pods = [pod("a", 0, true, 1), pod("b", 0, true, 1)];
        let chosen = ["a".to_string()];
        assert!(!may_lower(
            &chosen,
            &pods,
            started(Some(&p), 5, 15_000),
            15_000
        ));
        assert!(may_lower(
            &chosen,
            &pods,
            started(Some(&p), 5, 16_000),
            16_000
        ));
    }

    #[test]
    fn a_survivors_cost_goes_unless_it_is_chosen_again() {
        let mut survivor = pod("survivor", 0, true, 1);
        survivor.costed = true;
        let pods = [survivor.clone(), pod("other", 0, true, 2)];
        assert_eq!(stale_costs(&pods, &["other".into()]), ["survivor"]);
        assert!(stale_costs(&pods, &["survivor".into()]).is_empty());
        assert!(stale_costs(&[pod("plain", 0, true, 1)], &[]).is_empty());
    }

    #[test]
    fn idle_pods_go_first_youngest_first() {
        let pods = [
            pod("busy-old", 3, true, 1),
            pod("idle-old", 0, true, 2),
            pod("busy-young", 1, true, 5),
            pod("idle-young", 0, true, 4),
        ];
        assert_eq!(choose(&pods, 1), ["idle-young"]);
        assert_eq!(choose(&pods, 2), ["idle-young", "idle-old"]);
        // fewer idle pods than to remove: then the least busy
        assert_eq!(choose(&pods, 3), ["idle-young", "idle-old", "busy-young"]);
        assert_eq!(choose(&pods, 9).len(), 4);
        assert!(choose(&pods, 0).is_empty());
    }

    #[test]
    fn a_busy_pod_is_never_chosen_while_an_idle_one_stays() {
        // exhaustively over small pools: whatever the loads, ages and count removed
        for n in 1..=5u64 {
            for loads in 0..3u64.pow(n as u32) {
                let pods: Vec<PodLoad> = (0..n)
                    .map(|i| {
                        let running = loads / 3u64.pow(i as u32) % 3;
                        pod(&format!("p{i}"), running, true, (i * 7) % 5)
                    })
                    .collect();
                for remove in 0..=n as usize {
                    let chosen = choose(&pods, remove);
                    assert_eq!(chosen.len(), remove);
                    let max_chosen = pods
                        .iter()
                        .filter(|p| chosen.contains(&p.name))
                        .map(|p| p.running)
                        .max();
                    let min_kept = pods
                        .iter()
                        .filter(|p| !chosen.contains(&p.name))
                        .map(|p| p.running)
                        .min();
                    if let (Some(c), Some(k)) = (max_chosen, min_kept) {
                        assert!(c <= k, "{pods:?} remove {remove}: chose {chosen:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn not_ready_pods_go_before_ready_idle_ones() {
        // the ReplicaSet deletes a not-ready pod before any ready one: marking a ready pod
        // instead would leave the choice to its ranking
        let pods = [
            pod("idle", 0, true, 9),
            pod("starting", 0, false, 1),
            pod("busy", 2, true, 1),
        ];
        assert_eq!(choose(&pods, 1), ["starting"]);
        assert_eq!(choose(&pods, 2), ["starting", "idle"]);
    }

    #[test]
    fn lowered_once_the_chosen_pods_are_not_ready_or_the_wait_is_over() {
        let chosen = vec!["a".to_string(), "b".to_string()];
        let pods = [
            pod("a", 0, false, 0),
            pod("b", 0, true, 0),
            pod("c", 1, true, 0),
        ];
        assert!(!may_lower(&chosen, &pods, 1_000, 2_000));
        let wait = NOT_READY_WAIT.as_millis() as u64;
        assert!(may_lower(&chosen, &pods, 1_000, 1_000 + wait));
        let pods = [pod("a", 0, false, 0), pod("c", 1, true, 0)];
        assert!(may_lower(&chosen, &pods, 1_000, 2_000), "b is gone");
    }

    #[test]
    fn only_funcscale_workers_are_marked() {
        use crate::crd::{CeleryApp, FuncWorkerPoolSpec};
        let mut p = FuncWorkerPool::new("w", FuncWorkerPoolSpec::default());
        assert!(obeys_marks(&p));
        p.spec.celery = Some(CeleryApp {
            app: "shop".into(),
            ..Default::default()
        });
        assert!(
            !obeys_marks(&p),
            "Celery pods serve no /readyz to turn not ready"
        );
        p.spec.celery = None;
        p.spec.command = vec!["my-worker".into()];
        assert!(!obeys_marks(&p));
        p.spec.command = vec![];
        p.spec.role = PoolRole::Beat;
        assert!(!obeys_marks(&p));
    }

    #[test]
    fn deletion_cost_from_1_22() {
        assert!(!honours_deletion_cost("1", "20"));
        assert!(!honours_deletion_cost("1", "21+"));
        assert!(honours_deletion_cost("1", "22"));
        assert!(honours_deletion_cost("1", "30+"));
        assert!(honours_deletion_cost("2", "0"));
        assert!(!honours_deletion_cost("", ""));
    }
}

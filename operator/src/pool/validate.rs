//! Validate: what the API server's schema cannot check — references to queues and
//! Secrets, one Redis per pool, one Beat per namespace and Redis. Pure: takes the dereferenced objects.

use std::sync::Arc;

use funcscale_protocol::Keys;
use kube::ResourceExt;

use super::dereference::Dereferenced;
use crate::crd::{
    CeleryPoolKind, FuncQueue, FuncWorkerPool, PoolRole, ProcessLimits, QueueFormat,
    RedisConnection,
};
use crate::crd_ext::{beat_fires, older, queue_redis_identity};
use crate::error::{Error, Result};

/// A pool that can be built.
#[derive(Clone, Debug)]
pub struct Valid {
    /// Queues the pool's pods use: the served queues (Worker) or the scheduled queues of the
    /// namespace (Beat).
    pub queues: Vec<Arc<FuncQueue>>,
    /// The one Redis connection of those queues (`None`: the operator default).
    pub redis: Option<RedisConnection>,
    /// Comparable identity of that Redis.
    pub redis_identity: String,
    /// For a Beat pool: the older Beat pool of the same namespace that already runs for the
    /// same Redis.
    pub beat_conflict: Option<String>,
    /// A `spec.celery` pool: its Celery queues (`spec.queues`, in order; of a Beat pool the
    /// ones it names, maybe none), whose names and ids its pods get.
    pub celery_queues: Vec<Arc<FuncQueue>>,
}

/// Check `pool` against what it points at. `keys`: the key layout the worker pods use.
pub fn validate(pool: &FuncWorkerPool, ns: &str, d: &Dereferenced, keys: &Keys) -> Result<Valid> {
    check_command_and_limits(pool)?;
    // a queue refused for sharing its keys with another namespace's is served by nobody
    // here: a Worker pool naming it is invalid, a Beat leaves its schedules out
    let conflict = |name: &str| {
        d.key_conflicts
            .iter()
            .find(|(q, _)| q == name)
            .map(|(_, other)| other.clone())
    };
    let queues: Vec<Arc<FuncQueue>> = match pool.spec.role {
        PoolRole::Worker => {
            if d.queues.is_empty() {
                return Err(Error::invalid(
                    "spec.queues",
                    "a Worker pool needs at least one queue",
                ));
            }
            let mut out = Vec::new();
            for (i, (name, q)) in d.queues.iter().enumerate() {
                match q {
                    Some(q) => {
                        if let Some(c) = conflict(name) {
                            return Err(Error::invalid(
                                format!("spec.queues[{i}]"),
                                format!(
                                    "FuncQueue {name} is refused (Ready=False, reason KeyConflict): it would share {shared} with the older FuncQueue {other} on the same Redis, so its tasks would be {other}'s; give FuncQueue {name} keys of its own (remove legacyKeys, change spec.key, or rename it)",
                                    shared = c.shared,
                                    other = c.other,
                                ),
                            ));
                        }
                        out.push(q.clone())
                    }
                    None => {
                        return Err(Error::invalid(
                            format!("spec.queues[{i}]"),
                            format!("FuncQueue {name} does not exist in namespace {ns}"),
                        ));
                    }
                }
            }
            out
        }
        PoolRole::Beat => d
            .namespace_queues
            .iter()
            .filter(|q| beat_fires(q) && conflict(&q.name_any()).is_none())
            .cloned()
            .collect(),
    };
    // a Celery beat fires no funcscale schedule, and takes the namespace's one beat lease: the
    // namespace's funcscale schedules would never fire
    let scheduled: Vec<String> = queues
        .iter()
        .filter(|q| !q.spec.schedules.is_empty())
        .map(|q| q.name_any())
        .collect();
    if pool.spec.role == PoolRole::Beat && pool.spec.celery.is_some() && !scheduled.is_empty() {
        let names = scheduled;
        return Err(Error::invalid(
            "spec.celery",
            format!(
                "a Celery beat fires no funcscale schedule, and FuncQueues {} of namespace {ns} have schedules (spec.schedules) that only a funcscale beat fires; a namespace runs one beat (they share its lease): move those schedules into Celery's beat_schedule, or run a funcscale Beat pool (no spec.celery)",
                names.join(", ")
            ),
        ));
    }
    // a Celery pool's queues: every one a Celery queue (the `-Q` names are theirs)
    let mut celery_queues = Vec::new();
    if pool.spec.celery.is_some() {
        for (i, (name, q)) in d.queues.iter().enumerate() {
            let Some(q) = q else {
                return Err(Error::invalid(
                    format!("spec.queues[{i}]"),
                    format!("FuncQueue {name} does not exist in namespace {ns}"),
                ));
            };
            if q.spec.format != QueueFormat::Celery {
                return Err(Error::invalid(
                    format!("spec.queues[{i}]"),
                    format!(
                        "FuncQueue {name} is a {:?} queue, but spec.celery runs a Celery worker, which serves only queues of format Celery; set format: Celery on it (adopting its list with spec.key) or serve it from another pool",
                        q.spec.format
                    ),
                ));
            }
            if let Some((_, node)) = d.on_cluster.iter().find(|(n, _)| n == name) {
                return Err(Error::invalid(
                    format!("spec.queues[{i}]"),
                    format!(
                        "FuncQueue {name}: {}",
                        crate::queue::validate::CELERY_ON_CLUSTER.replace("{node}", node)
                    ),
                ));
            }
            celery_queues.push(q.clone());
        }
    }
    if pool.spec.role == PoolRole::Worker
        && pool.spec.command.is_empty()
        && pool.spec.celery.is_none()
    {
        for (i, q) in queues.iter().enumerate() {
            if q.spec.format != QueueFormat::Funcscale {
                return Err(Error::invalid(
                    format!("spec.queues[{i}]"),
                    format!(
                        "FuncQueue {} is a {:?} queue: funcscale-worker cannot run its tasks; {}",
                        q.name_any(),
                        q.spec.format,
                        match q.spec.format {
                            QueueFormat::Celery =>
                                "set spec.celery (funcscale runs celery worker for it) or image and command to your own worker",
                            QueueFormat::Stream =>
                                "set image and command to your stream consumer (it reads the queue's consumer group with XREADGROUP and acknowledges with XACK)",
                            _ => "set image and command to that system's worker",
                        }
                    ),
                ));
            }
            // funcscale-worker takes tasks from the protocol's list; a FuncQueue whose `key`
            // names another list would be measured by the operator but never served
            let name = q.name_any();
            let list = keys.queue(&crate::crd_ext::queue_id(q, ns));
            if let Some(key) = q.spec.key.as_deref()
                && key != list
            {
                return Err(Error::invalid(
                    format!("spec.queues[{i}]"),
                    format!(
                        "FuncQueue {name} sets spec.key {key:?}, but funcscale-worker takes its tasks from {list:?}; remove spec.key (producers push to {list:?}) or set image and command to the worker that reads {key:?}",
                    ),
                ));
            }
        }
    }
    if let Some((field, why)) = d.missing_secrets.first() {
        return Err(Error::invalid(field.clone(), why.clone()));
    }
    let mut identities: Vec<(String, String)> = queues
        .iter()
        .map(|q| (q.name_any(), queue_redis_identity(q, ns)))
        .collect();
    identities.dedup_by(|a, b| a.1 == b.1);
    if identities.len() > 1 {
        let list: Vec<String> = identities
            .iter()
            .map(|(q, id)| format!("{q} → {id}"))
            .collect();
        return Err(Error::invalid(
            "spec.queues",
            format!(
                "the queues use different Redis connections ({}); a pool's pods use one",
                list.join(", ")
            ),
        ));
    }
    let mut redis = queues.first().and_then(|q| q.spec.redis.clone());
    // a Celery beat fires no funcscale schedule: its pods use the Redis of the Celery queues
    // it names (where its lease lives)
    if pool.spec.role == PoolRole::Beat && !celery_queues.is_empty() {
        let mut ids: Vec<String> = celery_queues
            .iter()
            .map(|q| queue_redis_identity(q, ns))
            .collect();
        ids.dedup();
        if ids.len() > 1 {
            return Err(Error::invalid(
                "spec.queues",
                format!(
                    "the queues use different Redis connections ({}); a pool's pods use one",
                    ids.join(", ")
                ),
            ));
        }
        if queues.is_empty() {
            redis = celery_queues[0].spec.redis.clone();
        }
    }
    let redis_identity = identities
        .pop()
        .map(|(_, id)| id)
        .unwrap_or_else(|| "default".into());

    let beat_conflict = if pool.spec.role == PoolRole::Beat {
        let me = (pool.creation_timestamp(), ns.to_string(), pool.name_any());
        // one Beat per namespace and Redis: a tenant's beat fires only its own schedules
        d.other_beats
            .iter()
            .filter(|(p, id)| *id == redis_identity && p.namespace().as_deref() == Some(ns))
            .map(|(p, _)| {
                (
                    p.creation_timestamp(),
                    p.namespace().unwrap_or_default(),
                    p.name_any(),
                )
            })
            .filter(|other| older(other, &me))
            .min_by(|a, b| {
                if older(a, b) {
                    std::cmp::Ordering::Less
                } else {
                    std::cmp::Ordering::Greater
                }
            })
            .map(|(_, pns, pname)| format!("{pns}/{pname}"))
    } else {
        None
    };
    Ok(Valid {
        queues,
        redis,
        redis_identity,
        beat_conflict,
        celery_queues,
    })
}

/// `spec.celery` and `spec.command` exclude each other; a limit the pool's command cannot
/// apply is refused (issue: limits silently dropped), naming the field.
fn check_command_and_limits(pool: &FuncWorkerPool) -> Result<()> {
    let spec = &pool.spec;
    if let Some(c) = &spec.celery {
        if !spec.command.is_empty() {
            return Err(Error::invalid(
                "spec.celery",
                "spec.celery and spec.command are both set: with spec.celery funcscale renders the celery command itself; remove one of them",
            ));
        }
        if spec.handler.is_some() {
            return Err(Error::invalid(
                "spec.handler",
                "a handler is for funcscale-worker; a spec.celery pool runs the app's Celery tasks: remove handler",
            ));
        }
        if spec.queue_order == crate::crd::QueueOrder::Priority {
            return Err(Error::invalid(
                "spec.queueOrder",
                "funcscale cannot set the order in which Celery takes its queues: kombu's Redis transport takes them round robin unless the app sets broker_transport_options queue_order_strategy 'priority' (then in the order of spec.queues); remove queueOrder",
            ));
        }
        if spec.role == PoolRole::Worker && c.scheduler.is_some() {
            return Err(Error::invalid(
                "spec.celery.scheduler",
                "a scheduler is for a Beat pool (celery beat -S); a Worker pool runs none",
            ));
        }
    }
    let Some(limits) = &spec.limits else {
        return Ok(());
    };
    let set = set_limits(limits);
    if set.is_empty() {
        return Ok(());
    }
    let refuse = |field: &str, why: String| {
        Err(Error::invalid(
            format!("spec.limits.{field}"),
            format!("{why}; remove it, or it would silently not apply"),
        ))
    };
    if spec.role == PoolRole::Beat {
        return refuse(
            set[0],
            "a Beat pool runs no tasks, so no limit applies".into(),
        );
    }
    if !spec.command.is_empty() {
        return refuse(
            set[0],
            "funcscale cannot apply limits to a pool with its own command (it does not know the program's flags): set them in the command (for Celery use spec.celery, which renders them as Celery flags); for a longer shutdown grace set podTemplate.spec.terminationGracePeriodSeconds".into(),
        );
    }
    if let Some(c) = &spec.celery {
        let applies = |field: &str| match c.pool {
            CeleryPoolKind::Prefork => true,
            CeleryPoolKind::Gevent => field == "hardTimeLimitSeconds",
            _ => false,
        };
        if let Some(field) = set.iter().find(|f| !applies(f)) {
            return refuse(
                field,
                format!(
                    "Celery's {} pool does not apply it (prefork applies every limit, gevent only the hard time limit)",
                    c.pool.as_str()
                ),
            );
        }
    }
    Ok(())
}

/// The `spec.limits` fields that are set, by their names.
fn set_limits(l: &ProcessLimits) -> Vec<&'static str> {
    [
        ("maxTasksPerChild", l.max_tasks_per_child.is_some()),
        ("maxMemoryPerChildMb", l.max_memory_per_child_mb.is_some()),
        ("softTimeLimitSeconds", l.soft_time_limit_seconds.is_some()),
        ("hardTimeLimitSeconds", l.hard_time_limit_seconds.is_some()),
    ]
    .into_iter()
    .filter_map(|(f, set)| set.then_some(f))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{FuncQueueSpec, FuncWorkerPoolSpec};

    fn q(name: &str, format: QueueFormat) -> Arc<FuncQueue> {
        Arc::new(FuncQueue::new(
            name,
            FuncQueueSpec {
                format,
                ..Default::default()
            },
        ))
    }

    #[test]
    fn foreign_queues_need_their_own_worker_command() {
        let mut pool = FuncWorkerPool::new(
            "w",
            FuncWorkerPoolSpec {
                queues: vec!["c".into()],
                ..Default::default()
            },
        );
        let d = Dereferenced {
            queues: vec![("c".into(), Some(q("c", QueueFormat::Celery)))],
            ..Default::default()
        };
        let err = validate(&pool, "ns", &d, &Keys::default()).unwrap_err();
        assert!(
            err.to_string()
                .contains("spec.queues[0]: FuncQueue c is a Celery queue"),
            "{err}"
        );
        pool.spec.command = vec!["celery".into(), "-A".into(), "app".into(), "worker".into()];
        assert!(validate(&pool, "ns", &d, &Keys::default()).is_ok());
    }

    #[test]
    fn one_redis_per_pool() {
        let mut other = FuncQueue::new("b", FuncQueueSpec::default());
        other.spec.redis = Some(RedisConnection {
            url: Some("redis://other:6379/0".into()),
            ..Default::default()
        });
        let pool = FuncWorkerPool::new(
            "w",
            FuncWorkerPoolSpec {
                queues: vec!["a".into(), "b".into()],
                ..Default::default()
            },
        );
        let d = Dereferenced {
            queues: vec![
                ("a".into(), Some(q("a", QueueFormat::Funcscale))),
                ("b".into(), Some(Arc::new(other))),
            ],
            ..Default::default()
        };
        let err = validate(&pool, "ns", &d, &Keys::default()).unwrap_err();
        assert!(
            err.to_string().contains("different Redis connections"),
            "{err}"
        );
    }

    #[test]
    fn a_custom_key_is_refused_unless_the_pool_brings_its_worker() {
        let keys = Keys::new("fs");
        let mut pool = FuncWorkerPool::new(
            "w",
            FuncWorkerPoolSpec {
                queues: vec!["a".into()],
                ..Default::default()
            },
        );
        let with_key = |key: &str| {
            let spec = FuncQueueSpec {
                key: Some(key.into()),
                ..Default::default()
            };
            Dereferenced {
                queues: vec![("a".into(), Some(Arc::new(FuncQueue::new("a", spec))))],
                ..Default::default()
            }
        };
        let err = validate(&pool, "ns", &with_key("legacy:jobs"), &keys).unwrap_err();
        assert!(
            err.to_string().contains(
                "spec.queues[0]: FuncQueue a sets spec.key \"legacy:jobs\", but funcscale-worker takes its tasks from \"fs:q:{ns.a}\""
            ),
            "{err}"
        );
        // spelling out the default is harmless
        assert!(validate(&pool, "ns", &with_key("fs:q:{ns.a}"), &keys).is_ok());
        // a pool with its own worker command reads whatever it reads
        pool.spec.command = vec!["my-worker".into()];
        assert!(validate(&pool, "ns", &with_key("legacy:jobs"), &keys).is_ok());
    }

    fn celery_pool(queues: &[&str]) -> FuncWorkerPool {
        FuncWorkerPool::new(
            "w",
            FuncWorkerPoolSpec {
                queues: queues.iter().map(|q| q.to_string()).collect(),
                celery: Some(crate::crd::CeleryApp {
                    app: "shop".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
    }

    fn deref(queues: &[(&str, QueueFormat)]) -> Dereferenced {
        Dereferenced {
            queues: queues
                .iter()
                .map(|(n, f)| (n.to_string(), Some(q(n, *f))))
                .collect(),
            ..Default::default()
        }
    }

    fn invalid(pool: &FuncWorkerPool, d: &Dereferenced) -> String {
        validate(pool, "ns", d, &Keys::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_celery_pool_serves_celery_queues_only() {
        let pool = celery_pool(&["c", "f"]);
        let e = invalid(
            &pool,
            &deref(&[("c", QueueFormat::Celery), ("f", QueueFormat::Funcscale)]),
        );
        assert!(
            e.contains("spec.queues[1]: FuncQueue f is a Funcscale queue, but spec.celery"),
            "{e}"
        );
        let v = validate(
            &celery_pool(&["c"]),
            "ns",
            &deref(&[("c", QueueFormat::Celery)]),
            &Keys::default(),
        )
        .unwrap();
        assert_eq!(v.celery_queues.len(), 1);
        // a Celery queue without spec.celery or a command says how to run it
        let mut plain = celery_pool(&["c"]);
        plain.spec.celery = None;
        let e = invalid(&plain, &deref(&[("c", QueueFormat::Celery)]));
        assert!(e.contains("set spec.celery"), "{e}");
    }

    /// Celery cannot run on a Redis Cluster: a spec.celery pool (worker or beat) whose queue is
    /// on one is refused, naming the queue and the cluster.
    #[test]
    fn a_celery_pool_on_a_redis_cluster_is_refused() {
        let mut d = deref(&[("c", QueueFormat::Celery)]);
        d.on_cluster = vec![("c".into(), "cluster n1:7000,n2:7001".into())];
        for role in [PoolRole::Worker, PoolRole::Beat] {
            let mut pool = celery_pool(&["c"]);
            pool.spec.role = role;
            let e = invalid(&pool, &d);
            assert!(
                e.contains("spec.queues[0]: FuncQueue c: a Celery queue cannot be on a Redis Cluster (cluster n1:7000,n2:7001)"),
                "{role:?}: {e}"
            );
        }
        d.on_cluster.clear();
        assert!(validate(&celery_pool(&["c"]), "ns", &d, &Keys::default()).is_ok());
    }

    #[test]
    fn a_celery_beat_in_a_namespace_with_funcscale_schedules_is_refused() {
        let mut beat = celery_pool(&[]);
        beat.spec.role = PoolRole::Beat;
        let mut scheduled = FuncQueue::new(
            "reports",
            FuncQueueSpec {
                schedules: vec![crate::crd::Schedule {
                    name: "nightly".into(),
                    cron: "0 3 * * *".into(),
                    function: "report".into(),
                    args: vec![],
                }],
                ..Default::default()
            },
        );
        scheduled.metadata.namespace = Some("ns".into());
        let d = Dereferenced {
            namespace_queues: vec![Arc::new(scheduled)],
            ..Default::default()
        };
        let e = invalid(&beat, &d);
        assert!(
            e.contains("spec.celery: a Celery beat fires no funcscale schedule")
                && e.contains("FuncQueues reports"),
            "{e}"
        );
        // without funcscale schedules in the namespace it is fine
        assert!(validate(&beat, "ns", &Dereferenced::default(), &Keys::default()).is_ok());
    }

    #[test]
    fn a_stream_queue_is_served_by_the_users_consumer() {
        let mut pool = celery_pool(&["s"]);
        pool.spec.celery = None;
        let d = deref(&[("s", QueueFormat::Stream)]);
        let e = invalid(&pool, &d);
        assert!(
            e.contains("spec.queues[0]: FuncQueue s is a Stream queue")
                && e.contains("your stream consumer"),
            "{e}"
        );
        pool.spec.command = vec!["python".into(), "consumer.py".into()];
        assert!(validate(&pool, "ns", &d, &Keys::default()).is_ok());
        // spec.celery renders a Celery worker: it does not read streams
        let e = invalid(&celery_pool(&["s"]), &d);
        assert!(
            e.contains("FuncQueue s is a Stream queue, but spec.celery"),
            "{e}"
        );
    }

    #[test]
    fn celery_and_command_together_are_refused_naming_both() {
        let mut pool = celery_pool(&["c"]);
        pool.spec.command = vec!["celery".into(), "worker".into()];
        let e = invalid(&pool, &deref(&[("c", QueueFormat::Celery)]));
        assert!(
            e.contains("spec.celery: spec.celery and spec.command are both set"),
            "{e}"
        );
        let mut pool = celery_pool(&["c"]);
        pool.spec.celery.as_mut().unwrap().scheduler = Some("x.Y".into());
        let e = invalid(&pool, &deref(&[("c", QueueFormat::Celery)]));
        assert!(e.contains("spec.celery.scheduler"), "{e}");
        // what only funcscale-worker reads is refused, not ignored
        let mut pool = celery_pool(&["c"]);
        pool.spec.handler = Some("builtin".into());
        let e = invalid(&pool, &deref(&[("c", QueueFormat::Celery)]));
        assert!(e.starts_with("invalid spec: spec.handler:"), "{e}");
        let mut pool = celery_pool(&["c"]);
        pool.spec.queue_order = crate::crd::QueueOrder::Priority;
        let e = invalid(&pool, &deref(&[("c", QueueFormat::Celery)]));
        assert!(
            e.contains("spec.queueOrder: funcscale cannot set the order"),
            "{e}"
        );
    }

    fn limits(f: impl FnOnce(&mut crate::crd::ProcessLimits)) -> Option<crate::crd::ProcessLimits> {
        let mut l = crate::crd::ProcessLimits::default();
        f(&mut l);
        Some(l)
    }

    #[test]
    fn limits_a_pool_cannot_apply_are_refused_not_dropped() {
        let d = deref(&[("c", QueueFormat::Celery)]);
        // a command of its own: funcscale cannot apply any limit
        let mut pool = celery_pool(&["c"]);
        pool.spec.celery = None;
        pool.spec.command = vec!["celery".into(), "-A".into(), "shop".into(), "worker".into()];
        pool.spec.limits = limits(|l| l.hard_time_limit_seconds = Some(60));
        let e = invalid(&pool, &d);
        assert!(
            e.contains("spec.limits.hardTimeLimitSeconds: funcscale cannot apply limits to a pool with its own command"),
            "{e}"
        );
        // prefork applies all four
        let mut pool = celery_pool(&["c"]);
        pool.spec.limits = limits(|l| {
            l.hard_time_limit_seconds = Some(60);
            l.soft_time_limit_seconds = Some(50);
            l.max_tasks_per_child = Some(10);
            l.max_memory_per_child_mb = Some(100);
        });
        assert!(validate(&pool, "ns", &d, &Keys::default()).is_ok());
        // gevent only the hard limit
        pool.spec.celery.as_mut().unwrap().pool = CeleryPoolKind::Gevent;
        let e = invalid(&pool, &d);
        assert!(
            e.contains("spec.limits.maxTasksPerChild: Celery's gevent pool does not apply it"),
            "{e}"
        );
        pool.spec.limits = limits(|l| l.hard_time_limit_seconds = Some(60));
        assert!(validate(&pool, "ns", &d, &Keys::default()).is_ok());
        // threads none
        pool.spec.celery.as_mut().unwrap().pool = CeleryPoolKind::Threads;
        let e = invalid(&pool, &d);
        assert!(
            e.contains("spec.limits.hardTimeLimitSeconds: Celery's threads pool does not apply it"),
            "{e}"
        );
        // an empty limits block is no limit
        pool.spec.limits = Some(Default::default());
        assert!(validate(&pool, "ns", &d, &Keys::default()).is_ok());
    }

    /// A Celery beat fires no funcscale schedule: its pods get the Redis of the Celery queues
    /// it names (where its lease lives), not the operator's default.
    #[test]
    fn a_celery_beat_uses_the_redis_of_its_celery_queues() {
        let mut pool = celery_pool(&["c"]);
        pool.spec.role = PoolRole::Beat;
        let mut broker = FuncQueue::new(
            "c",
            crate::crd::FuncQueueSpec {
                format: QueueFormat::Celery,
                ..Default::default()
            },
        );
        broker.spec.redis = Some(RedisConnection {
            url: Some("redis://broker:6379/3".into()),
            ..Default::default()
        });
        let d = Dereferenced {
            queues: vec![("c".into(), Some(Arc::new(broker)))],
            ..Default::default()
        };
        let v = validate(&pool, "ns", &d, &Keys::default()).unwrap();
        assert_eq!(
            v.redis.and_then(|r| r.url).as_deref(),
            Some("redis://broker:6379/3")
        );
        assert_eq!(v.celery_queues.len(), 1);
        // without queues: the operator's default Redis
        let mut pool = celery_pool(&[]);
        pool.spec.role = PoolRole::Beat;
        let v = validate(&pool, "ns", &Dereferenced::default(), &Keys::default()).unwrap();
        assert!(v.redis.is_none() && v.celery_queues.is_empty());
    }
}

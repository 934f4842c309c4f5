//! Validate: what the API server's schema cannot check — references to queues and
//! Secrets, one Redis per pool, one Beat per namespace and Redis. Pure: takes the dereferenced objects.

use std::sync::Arc;

use funcscale_protocol::Keys;
use kube::ResourceExt;

use super::dereference::Dereferenced;
use crate::crd::{FuncQueue, FuncWorkerPool, PoolRole, QueueFormat, RedisConnection};
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
}

/// Check `pool` against what it points at. `keys`: the key layout the worker pods use.
pub fn validate(pool: &FuncWorkerPool, ns: &str, d: &Dereferenced, keys: &Keys) -> Result<Valid> {
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
    if pool.spec.role == PoolRole::Worker && pool.spec.command.is_empty() {
        for (i, q) in queues.iter().enumerate() {
            if q.spec.format != QueueFormat::Funcscale {
                return Err(Error::invalid(
                    format!("spec.queues[{i}]"),
                    format!(
                        "FuncQueue {} is a {:?} queue: funcscale-worker cannot run its tasks; set image and command to that system's worker",
                        q.name_any(),
                        q.spec.format
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
    let redis = queues.first().and_then(|q| q.spec.redis.clone());
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
    })
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
}

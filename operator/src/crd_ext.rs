//! Helpers on the CRD types that the controllers share (no CRD semantics change).

use std::collections::BTreeMap;
use std::sync::Arc;

use funcscale_protocol::Keys;
use kube::ResourceExt;

use crate::crd::{FuncQueue, FuncWorkerPool, PoolRole, QueueFormat, RedisConnection};

/// Label with the pool's name on its Deployment and pods.
pub const POOL_LABEL: &str = "funcscale.dev/pool";
/// `app.kubernetes.io/managed-by` value of every object the operator creates.
pub const MANAGED_BY: &str = "funcscale-operator";

/// Labels that select a pool's pods (the Deployment selector and `status.selector`).
pub fn selector_labels(pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "funcscale-worker".to_string(),
        ),
        (POOL_LABEL.to_string(), pool.to_string()),
    ])
}

/// The selector as a string, for the scale subresource.
pub fn selector_string(pool: &str) -> String {
    selector_labels(pool)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// All labels of a pool's Deployment and pods.
pub fn labels(pool: &FuncWorkerPool, name: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(name);
    l.insert("app.kubernetes.io/instance".into(), name.to_string());
    l.insert("app.kubernetes.io/managed-by".into(), MANAGED_BY.into());
    l.insert("app.kubernetes.io/component".into(), component(pool).into());
    l
}

/// `worker` or `beat`.
pub fn component(pool: &FuncWorkerPool) -> &'static str {
    match pool.spec.role {
        PoolRole::Worker => "worker",
        PoolRole::Beat => "beat",
    }
}

/// Name of a Beat pool's schedules ConfigMap.
pub fn schedules_configmap_name(pool: &str) -> String {
    format!("{pool}-schedules")
}

/// The id in Redis of FuncQueue `q` in `ns` (the `<queue>` of its keys, what workers take
/// in `--queues` and envelopes carry in `queue`): [`Keys::queue_id`] of namespace and name;
/// the bare name with `legacyKeys` (the keys of earlier versions) and for adopted queues
/// (formats other than `Funcscale`: their lists are the other system's, named by it).
pub fn queue_id(q: &FuncQueue, ns: &str) -> String {
    if q.spec.legacy_keys || q.spec.format != QueueFormat::Funcscale {
        q.name_any()
    } else {
        Keys::queue_id(ns, &q.name_any())
    }
}

/// When and which object: `(creationTimestamp, namespace, name)`.
pub type Age = (
    Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    String,
    String,
);

/// Whether `a` was created before `b` (a missing timestamp counts as newest; ties by name).
pub fn older(a: &Age, b: &Age) -> bool {
    match (&a.0, &b.0) {
        (Some(x), Some(y)) if x != y => x.0 < y.0,
        (Some(_), None) => true,
        (None, Some(_)) => false,
        _ => (&a.1, &a.2) < (&b.1, &b.2),
    }
}

/// Which Redis a connection means, as a comparable identity (no secrets in it):
/// the operator default, a URL, or a Secret reference in the queue's namespace.
pub fn redis_identity(conn: Option<&RedisConnection>, namespace: &str) -> String {
    match conn {
        None => "default".into(),
        Some(c) => match (&c.url, &c.url_secret_ref, &c.password_secret_ref) {
            (_, Some(s), _) => format!("secret:{namespace}/{}/{}", s.name, s.key),
            (Some(url), None, _) => format!("url:{url}"),
            (None, None, _) => "default".into(),
        },
    }
}

/// The Redis identity of a queue.
pub fn queue_redis_identity(q: &FuncQueue, namespace: &str) -> String {
    redis_identity(q.spec.redis.as_ref(), namespace)
}

/// Whether a Beat pool of the queue's namespace fires schedules of `q` (a funcscale queue): its `schedules`,
/// and for a `legacyKeys` queue its dynamic ones (its id does not name the namespace, so
/// the beat learns it from its schedules file).
pub fn beat_fires(q: &FuncQueue) -> bool {
    // a foreign queue's schedules are refused (the queue's `InvalidSpec`): never fired
    q.spec.format == QueueFormat::Funcscale && (!q.spec.schedules.is_empty() || q.spec.legacy_keys)
}

/// The Redis identity a Beat pool in `ns` uses: that of the namespace's scheduled queues.
pub fn beat_identity(ns: &str, namespace_queues: &[Arc<FuncQueue>]) -> String {
    namespace_queues
        .iter()
        .filter(|q| beat_fires(q))
        .map(|q| queue_redis_identity(q, ns))
        .next()
        .unwrap_or_else(|| "default".into())
}

/// Whether a queue's keys may be another namespace's: its id names no namespace
/// (`legacyKeys`, an adopted format), or its list is named explicitly (`spec.key`).
fn adopts_keys(q: &FuncQueue) -> bool {
    q.spec.legacy_keys || q.spec.key.is_some() || q.spec.format != QueueFormat::Funcscale
}

/// The list a queue's tasks wait in (`status.key`).
pub fn list_key(q: &FuncQueue, queue_id: &str, keys: &Keys) -> String {
    crate::redis_metrics::queue_lists(&q.spec, queue_id, keys)
        .0
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// Two FuncQueues of different namespaces that would share keys on one Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyConflict {
    /// The older one, `namespace/name`: it keeps the keys.
    pub other: String,
    /// What they share, e.g. `the list funcscale:q:jobs`.
    pub shared: String,
}

/// The older FuncQueue of another namespace on the same Redis as `q` whose keys `q`'s would
/// share, if any: the same queue id (two `legacyKeys` or adopted queues of one name: the
/// same settings, stats, records and schedules) or the same list (an explicit `spec.key`
/// naming another namespace's list). Two tenants must never share a queue's tasks, settings
/// or schedules; the younger is refused. `redis`: the Redis `q` uses and, with each of
/// `queues`, the one it uses, as [`crate::redis_metrics::RedisEndpoint::identity`] (the
/// server and database its resolved URL names, so two Secrets naming one Redis are one).
/// `keys`: the operator's key layout.
pub fn key_conflict(
    q: &FuncQueue,
    ns: &str,
    redis: &str,
    queues: &[(Arc<FuncQueue>, String)],
    keys: &Keys,
) -> Option<KeyConflict> {
    let mine = queue_id(q, ns);
    let my_list = list_key(q, &mine, keys);
    let me = (q.creation_timestamp(), ns.to_string(), q.name_any());
    let adopts = adopts_keys(q);
    queues
        .iter()
        .filter_map(|(o, theirs_redis)| {
            let ons = o.namespace()?;
            // two plain queues of two namespaces have two ids, two lists
            if ons == ns || !(adopts || adopts_keys(o)) || theirs_redis != redis {
                return None;
            }
            let theirs = queue_id(o, &ons);
            let shared = if theirs == mine {
                format!(
                    "the queue id {mine} (the list {my_list}, its settings, stats, task records and schedules)"
                )
            } else if list_key(o, &theirs, keys) == my_list {
                format!("the list {my_list}")
            } else {
                return None;
            };
            Some(((o.creation_timestamp(), ons, o.name_any()), shared))
        })
        .filter(|(other, _)| older(other, &me))
        .reduce(|a, b| if older(&a.0, &b.0) { a } else { b })
        .map(|((_, ons, name), shared)| KeyConflict {
            other: format!("{ons}/{name}"),
            shared,
        })
}

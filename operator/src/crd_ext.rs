//! Helpers on the CRD types that the controllers share (no CRD semantics change).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::crd::{FuncQueue, FuncWorkerPool, PoolRole, RedisConnection};

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

/// The Redis identity a Beat pool in `ns` uses: that of the namespace's scheduled queues.
pub fn beat_identity(ns: &str, namespace_queues: &[Arc<FuncQueue>]) -> String {
    namespace_queues
        .iter()
        .filter(|q| !q.spec.schedules.is_empty())
        .map(|q| queue_redis_identity(q, ns))
        .next()
        .unwrap_or_else(|| "default".into())
}

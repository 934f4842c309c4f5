//! Dereference: fetch what a pool points at — its queues (from the reflector store), the
//! Secrets those queues reference, its current Deployment, and other Beat pools.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;

use crate::crd::{FuncQueue, FuncWorkerPool, PoolRole};
use crate::error::Result;

use super::Context;

/// What a pool points at, as read now.
#[derive(Clone, Debug, Default)]
pub struct Dereferenced {
    /// `spec.queues` in order, with the queue when it exists.
    pub queues: Vec<(String, Option<Arc<FuncQueue>>)>,
    /// For a Beat pool, all queues of its namespace (it serves their schedules); empty for a
    /// Worker pool.
    pub namespace_queues: Vec<Arc<FuncQueue>>,
    /// Secret references that cannot be resolved: (field path, reason).
    pub missing_secrets: Vec<(String, String)>,
    /// The pool's Deployment, if it exists.
    pub deployment: Option<Deployment>,
    /// Other Beat pools (all namespaces) with the Redis identity each uses, for the
    /// one-beat-per-namespace-and-Redis rule.
    pub other_beats: Vec<(Arc<FuncWorkerPool>, String)>,
    /// Queues of `queues` / `namespace_queues` that are refused for sharing their keys with
    /// an older queue of another namespace ([`crate::crd_ext::key_conflict`]): (queue name,
    /// the conflict).
    pub key_conflicts: Vec<(String, crate::crd_ext::KeyConflict)>,
    /// For a `spec.celery` pool: its queues (of `queues`) whose Redis is a Redis Cluster, with
    /// the cluster (`node()`), where Celery cannot run.
    pub on_cluster: Vec<(String, String)>,
}

/// Read everything `pool` depends on.
pub async fn dereference(pool: &FuncWorkerPool, ns: &str, ctx: &Context) -> Result<Dereferenced> {
    let name = pool.name_any();
    let queues: Vec<(String, Option<Arc<FuncQueue>>)> = pool
        .spec
        .queues
        .iter()
        .map(|q| {
            (
                q.clone(),
                ctx.shared.queues.get(&ObjectRef::new(q).within(ns)),
            )
        })
        .collect();
    // only a Beat pool needs them; and no String per queue: this runs for every reconcile
    // (10,000 queues × hundreds of reconciles a second made it the operator's hot spot)
    let mut namespace_queues: Vec<Arc<FuncQueue>> = if pool.spec.role == PoolRole::Beat {
        ctx.shared
            .queues
            .state()
            .into_iter()
            .filter(|q| q.metadata.namespace.as_deref() == Some(ns))
            .collect()
    } else {
        Vec::new()
    };
    namespace_queues.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));

    // the queues whose connection the pool's pods use: its own, or for a Beat all scheduled ones
    let used: Vec<Arc<FuncQueue>> = match pool.spec.role {
        PoolRole::Worker => queues.iter().filter_map(|(_, q)| q.clone()).collect(),
        PoolRole::Beat => namespace_queues
            .iter()
            .filter(|q| crate::crd_ext::beat_fires(q))
            .cloned()
            .collect(),
    };
    // queues refused for sharing keys with another namespace's (the queue controller says so);
    // the candidates from the index, not a scan of every queue for each of the pool's
    let mut key_conflicts = Vec::new();
    for q in &used {
        let conflict = ctx
            .shared
            .key_index
            .conflict(q, ns, &ctx.shared.queues, |q, ns| {
                ctx.shared.redis_identity(q, ns)
            })
            .await;
        if let Some(c) = conflict {
            key_conflicts.push((q.name_any(), c));
        }
    }
    let now_ms = ctx.shared.now_ms();
    let mut missing_secrets = Vec::new();
    for q in &used {
        let Some(conn) = &q.spec.redis else { continue };
        for (field, r) in [
            ("urlSecretRef", &conn.url_secret_ref),
            ("passwordSecretRef", &conn.password_secret_ref),
            ("usernameSecretRef", &conn.username_secret_ref),
        ] {
            if let Some(r) = r
                && let Some(why) = crate::connection::check_secret(
                    &ctx.shared.client,
                    &ctx.shared.secrets,
                    now_ms,
                    ns,
                    r,
                )
                .await?
            {
                missing_secrets.push((
                    format!("FuncQueue {}: spec.redis.{field}", q.name_any()),
                    why,
                ));
            }
        }
    }

    // a Celery worker or beat cannot use a Redis Cluster: which of its queues are on one (a
    // queue whose endpoint cannot be resolved is refused for that already)
    let mut on_cluster = Vec::new();
    if pool.spec.celery.is_some() {
        for (name, q) in &queues {
            if let Some(q) = q
                && let Ok(ep) = ctx.shared.endpoint(q, ns).await
                && ep.topology() == "cluster"
            {
                on_cluster.push((name.clone(), ep.node()));
            }
        }
    }

    let deployment = Api::<Deployment>::namespaced(ctx.shared.client.clone(), ns)
        .get_opt(&name)
        .await?;
    let other_beats = ctx
        .pools
        .state()
        .into_iter()
        .filter(|p| {
            p.spec.role == PoolRole::Beat
                && !(p.metadata.name.as_deref() == Some(name.as_str())
                    && p.metadata.namespace.as_deref() == Some(ns))
        })
        .map(|p| {
            let pns = p.namespace().unwrap_or_default();
            let qs: Vec<Arc<FuncQueue>> = ctx
                .shared
                .queues
                .state()
                .into_iter()
                .filter(|q| q.metadata.namespace.as_deref() == Some(pns.as_str()))
                .collect();
            let id = crate::crd_ext::beat_identity(&pns, &qs);
            (p, id)
        })
        .collect();
    Ok(Dereferenced {
        queues,
        namespace_queues,
        missing_secrets,
        deployment,
        other_beats,
        key_conflicts,
        on_cluster,
    })
}

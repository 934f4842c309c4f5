//! *Dereference*: what a queue points at and what is known about it — its Redis endpoint
//! (Secrets included), the pools that consume it, the poller's last reading.

use crate::context::Context;
use crate::crd::FuncQueue;
use crate::error::Result;
use crate::redis_metrics::{QueueId, Reading, RedisEndpoint};

/// What a queue points at, as read now.
#[derive(Debug)]
pub struct Dereferenced {
    /// Worker pools of the queue's namespace that list it, sorted by name.
    pub consumers: Vec<String>,
    /// The queue's Redis; an error is a spec that cannot be resolved (`InvalidSpec`) or a
    /// failure to read it (transient).
    pub endpoint: Result<RedisEndpoint>,
    /// The poller's last reading of the queue.
    pub reading: Option<Reading>,
    /// An older FuncQueue of another namespace whose keys this queue's would share
    /// (the same queue id or list on the same Redis): why this one is refused.
    pub key_conflict: Option<crate::crd_ext::KeyConflict>,
}

/// Resolve the Redis endpoint of `q`, reading Secrets when referenced.
pub async fn endpoint(q: &FuncQueue, ns: &str, ctx: &Context) -> Result<RedisEndpoint> {
    crate::connection::resolve(
        ctx.client.clone(),
        &q.spec,
        ns,
        &ctx.config.default_redis,
        &ctx.secrets,
        ctx.now_ms(),
    )
    .await
}

/// Which Redis `q` (of namespace `ns`) uses, its Secrets read
/// ([`RedisEndpoint::identity`]); the spec's own identity when they cannot be read.
pub async fn redis_identity(ctx: &Context, q: std::sync::Arc<FuncQueue>, ns: String) -> String {
    match endpoint(&q, &ns, ctx).await {
        Ok(e) => e.identity(),
        Err(_) => crate::crd_ext::queue_redis_identity(&q, &ns),
    }
}

/// Read everything `q` depends on.
pub async fn dereference(q: &FuncQueue, id: &QueueId, ctx: &Context) -> Dereferenced {
    Dereferenced {
        consumers: ctx.index.consumers(&id.namespace, &id.name),
        endpoint: endpoint(q, &id.namespace, ctx).await,
        reading: ctx.cache.get(id),
        // the few queues that could share its keys, from the index (a copy of 10,000 queue
        // references per reconcile was most of a queue reconcile's time)
        key_conflict: ctx
            .key_index
            .conflict(q, &id.namespace, &ctx.queues, |q, ns| {
                redis_identity(ctx, q, ns)
            })
            .await,
    }
}

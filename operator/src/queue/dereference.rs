//! *Dereference*: what a queue points at and what is known about it — its Redis endpoint
//! (Secrets included), the pools that consume it, the poller's last reading.

use crate::crd::FuncQueue;
use crate::error::Result;
use crate::redis_metrics::{QueueId, Reading, RedisEndpoint};

use super::Context;

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

/// Read everything `q` depends on.
pub async fn dereference(q: &FuncQueue, id: &QueueId, ctx: &Context) -> Dereferenced {
    Dereferenced {
        consumers: ctx.shared.index.consumers(&id.namespace, &id.name),
        endpoint: ctx.shared.endpoint(q, &id.namespace).await,
        reading: ctx.shared.cache.get(id),
        // the few queues that could share its keys, from the index (a copy of 10,000 queue
        // references per reconcile was most of a queue reconcile's time)
        key_conflict: ctx
            .shared
            .key_index
            .conflict(q, &id.namespace, &ctx.shared.queues, |q, ns| {
                ctx.shared.redis_identity(q, ns)
            })
            .await,
    }
}

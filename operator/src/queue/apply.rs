//! *Apply*: what a queue reconcile changes outside its own status — the Warning Event, the
//! queue's settings in its Redis (`crate::queue_config`), the poller's registry, the gauges.

use std::time::Duration;

use crate::crd::{FuncQueue, FuncQueueStatus};
use crate::redis_metrics::{QueueId, QueueTarget, RedisEndpoint};

use super::Context;
use super::build::{AgeGauge, Gauges};

/// Write the queue's settings for the workers (retention, destinations) and register it
/// with the poller. Returns how soon to retry a failed settings write.
pub async fn redis(
    q: &FuncQueue,
    id: &QueueId,
    ep: RedisEndpoint,
    st: &mut FuncQueueStatus,
    now: &str,
    ctx: &Context,
) -> Option<Duration> {
    let config_retry = crate::queue_config::reconcile_config(
        q,
        &id.namespace,
        &ep,
        st,
        now,
        &ctx.shared,
        &ctx.queue_configs,
    )
    .await;
    ctx.shared.registry.upsert(
        id.clone(),
        QueueTarget::for_queue(
            q,
            &crate::crd_ext::queue_id(q, &id.namespace),
            ep,
            &ctx.shared.config.keys,
            ctx.shared.config.period_ms,
        ),
    );
    config_retry
}

/// Set the queue's gauges.
pub fn gauges(ctx: &Context, id: &QueueId, g: &Gauges) {
    let labels = [id.namespace.as_str(), id.name.as_str()];
    if let Some(depth) = g.depth {
        ctx.shared
            .metrics
            .queue_depth
            .with_label_values(&labels)
            .set(depth);
    }
    let age = &ctx.shared.metrics.queue_oldest_age;
    match g.oldest_age {
        AgeGauge::Set(s) => age.with_label_values(&labels).set(s),
        AgeGauge::Remove => {
            let _ = age.remove_label_values(&labels);
        }
        AgeGauge::Keep => {}
    }
    ctx.shared
        .metrics
        .queue_metrics_available
        .with_label_values(&labels)
        .set(i64::from(g.available));
    if let Some((topology, node)) = &g.redis {
        ctx.shared
            .metrics
            .record_queue_redis(&id.namespace, &id.name, topology, node);
    }
}

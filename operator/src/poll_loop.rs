//! The Redis poll loop: every interval, read all queues, refresh the cache, and trigger
//! reconciles of the queues whose numbers changed and of the pools serving them (so a depth
//! change reaches the Deployment within about one poll interval, and the queue's status).

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::reflector::ObjectRef;

use crate::crd::{FuncQueue, FuncWorkerPool};
use crate::redis_metrics::{PollReport, Poller, PollerConfig};
use crate::{pool, queue};

/// One poll: prune deleted queues and pools (and their metric series), read Redis, record
/// metrics; returns the report and the pools to reconcile.
pub async fn tick(
    queue_ctx: &queue::Context,
    pool_ctx: &pool::Context,
    poller: &mut Poller,
) -> (PollReport, Vec<ObjectRef<FuncWorkerPool>>) {
    let ctx = &queue_ctx.shared;
    let queues = ctx.queues.clone();
    let mut gone_queues = Vec::new();
    ctx.registry.retain(|id| {
        let keep = queues
            .get(&ObjectRef::new(&id.name).within(&id.namespace))
            .is_some();
        if !keep {
            gone_queues.push(id.clone());
        }
        keep
    });
    // a deleted object's series would otherwise report its last value forever
    for id in gone_queues {
        ctx.metrics.forget_queue(&id.namespace, &id.name);
    }
    // forget the policy history, apply record and series of deleted pools
    let live = |key: &ObjectRef<FuncWorkerPool>| pool_ctx.pools.get(key).is_some();
    let mut gone_pools = Vec::new();
    pool_ctx
        .histories
        .lock()
        .expect("history lock")
        .retain(|k, _| {
            let keep = live(k);
            if !keep {
                gone_pools.push(k.clone());
            }
            keep
        });
    pool_ctx
        .applied
        .lock()
        .expect("applied lock")
        .retain(|k, _| live(k));
    pool_ctx.scale_downs.retain(live);
    for key in gone_pools {
        let labels = [
            key.namespace.as_deref().unwrap_or_default(),
            key.name.as_str(),
        ];
        let _ = ctx.metrics.pool_desired.remove_label_values(&labels);
        let _ = ctx.metrics.pool_current.remove_label_values(&labels);
        let _ = ctx.metrics.beat_ready.remove_label_values(&labels);
    }
    queue_ctx
        .queue_configs
        .prune(|id| {
            queues
                .get(&ObjectRef::new(&id.name).within(&id.namespace))
                .is_some()
        })
        .await;
    let started = std::time::Instant::now();
    let report = poller.poll_once(ctx.now_ms()).await;
    ctx.metrics
        .redis_poll_duration
        .observe(started.elapsed().as_secs_f64());
    ctx.metrics
        .redis_poll_errors
        .inc_by(report.errors.len() as u64);
    ctx.metrics.record_nodes(&report.nodes);
    let mut pools: Vec<ObjectRef<FuncWorkerPool>> = report
        .changed
        .iter()
        .flat_map(|id| ctx.index.pools_for_queue(&id.namespace, &id.name))
        .collect();
    pools.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    pools.dedup();
    (report, pools)
}

/// Where the poll loop sends the objects to reconcile.
pub struct Triggers {
    /// Pools serving a queue whose numbers changed.
    pub pools: futures::channel::mpsc::Sender<ObjectRef<FuncWorkerPool>>,
    /// Queues whose numbers changed (their status).
    pub queues: futures::channel::mpsc::Sender<ObjectRef<FuncQueue>>,
}

/// Poll every `interval` until `stop` resolves.
pub async fn run(
    queue_ctx: Arc<queue::Context>,
    pool_ctx: Arc<pool::Context>,
    interval: Duration,
    mut trigger: Triggers,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut poller = Poller::new(
        queue_ctx.shared.registry.clone(),
        queue_ctx.shared.cache.clone(),
        PollerConfig::default(),
    );
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    let mut failing = std::collections::BTreeMap::new();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = every.tick() => {}
        }
        let (report, pools) = tick(&queue_ctx, &pool_ctx, &mut poller).await;
        // one tenant's Redis down is that tenant's problem, not the operator's: it shows in its
        // queues' MetricsAvailable/Ready conditions, `funcscale_queue_metrics_available` and
        // `funcscale_redis_poll_errors_total`, and here once per change; `/readyz` stays up so
        // that every other tenant keeps being served
        let now_failing: std::collections::BTreeMap<String, String> = report
            .errors
            .iter()
            .map(|(endpoint, e)| (endpoint.to_string(), e.to_string()))
            .collect();
        for (endpoint, e) in &now_failing {
            if !failing.contains_key(endpoint) {
                tracing::warn!(%endpoint, error = %e, "Redis does not answer: its queues hold their sizes");
            }
        }
        for endpoint in failing.keys() {
            if !now_failing.contains_key(endpoint) {
                tracing::info!(%endpoint, "Redis answers again");
            }
        }
        failing = now_failing;
        // a full channel only delays: the periodic resync reconciles anyway
        for r in pools {
            let _ = trigger.pools.try_send(r);
        }
        for id in report.changed {
            let _ = trigger
                .queues
                .try_send(ObjectRef::new(&id.name).within(&id.namespace));
        }
    }
}

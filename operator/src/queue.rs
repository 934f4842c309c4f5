//! The FuncQueue controller: resolves the queue's Redis connection (Secrets included),
//! registers it with the metrics poller, and writes the queue's status from the last
//! reading: depth, oldest age, rates, T, M, consuming pools, and `Served=False` when no pool
//! serves it. It also writes the queue's settings for the workers (retention, destinations:
//! [`crate::queue_config`]).

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

use crate::conditions::{self, new};
use crate::context::{Context, rfc3339};
use crate::crd::{FuncQueue, PoolRole};
use crate::error::{Error, Result};
use crate::redis_metrics::{QueueId, QueueTarget, Reading, RedisEndpoint};

/// How often a queue's status is refreshed from the metrics cache.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);

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

/// Reconcile one queue.
pub async fn reconcile(q: Arc<FuncQueue>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx
        .metrics
        .reconcile_duration
        .with_label_values(&["queue"])
        .start_timer();
    ctx.metrics
        .reconciliations
        .with_label_values(&["queue"])
        .inc();
    let ns = q
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let name = q.name_any();
    let id = QueueId::new(ns.clone(), name.clone());
    let now_ms = ctx.now_ms();
    let now = rfc3339(now_ms);
    let g = q.metadata.generation;
    let mut st = q.status.clone().unwrap_or_default();
    st.observed_generation = g;

    let consumers: Vec<String> = {
        let mut v: Vec<String> = ctx
            .pools
            .state()
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
            .filter(|p| p.spec.role == PoolRole::Worker && p.spec.queues.contains(&name))
            .map(|p| p.name_any())
            .collect();
        v.sort();
        v
    };
    st.consumers = consumers.clone();
    let served = !consumers.is_empty();
    let was_unserved = q
        .status
        .as_ref()
        .and_then(|s| conditions::get(&s.conditions, "Served"))
        .is_some_and(|c| c.status == "False");
    if !served && !was_unserved {
        warn(
            &ctx,
            &q,
            "NotServed",
            format!("no FuncWorkerPool in {ns} lists queue {name}: its tasks will wait"),
        )
        .await;
    }
    conditions::set(
        &mut st.conditions,
        if served {
            new("Served", true, "PoolsServing", consumers.join(", "), g)
        } else {
            new(
                "Served",
                false,
                "NoPool",
                "no FuncWorkerPool lists this queue: its tasks will wait",
                g,
            )
        },
        &now,
    );

    let action = match endpoint(&q, &ns, &ctx).await {
        Ok(ep) => {
            // retention and destinations for the workers; a Redis failure retries sooner
            let config_retry =
                crate::queue_config::reconcile_config(&q, &ns, &ep, &mut st, &now, &ctx).await;
            ctx.registry.upsert(
                id.clone(),
                QueueTarget::for_queue(&q, &name, ep, &ctx.config.keys, ctx.config.period_ms),
            );
            match ctx.cache.get(&id) {
                Some(Reading::Ok(m)) => {
                    st.depth = Some(m.depth);
                    st.oldest_task_age_seconds = m.oldest_age_seconds.map(round1);
                    st.arrival_rate = Some(round1(m.arrival_rate));
                    st.completion_rate = Some(round1(m.completion_rate));
                    st.task_time_ms = Some(round1(m.task_time_ms));
                    st.task_time_source = Some(
                        if m.task_time_measured {
                            "Measured"
                        } else {
                            "Hint"
                        }
                        .into(),
                    );
                    st.scheduled_per_period = Some(m.scheduled_per_period);
                    st.last_poll_time = Some(rfc3339(m.polled_at_ms));
                    ctx.metrics
                        .queue_depth
                        .with_label_values(&[&ns, &name])
                        .set(m.depth as i64);
                    // an empty queue waits for nothing: 0 (the age alert resolves); a format
                    // that records no enqueue time has no age to report: no series, not 0
                    let age = &ctx.metrics.queue_oldest_age;
                    match (m.oldest_age_seconds, m.depth) {
                        (Some(s), _) => age.with_label_values(&[&ns, &name]).set(s),
                        (None, 0) => age.with_label_values(&[&ns, &name]).set(0.0),
                        (None, _) => {
                            let _ = age.remove_label_values(&[&ns, &name]);
                        }
                    }
                    metrics_available(&ctx, &ns, &name, true);
                    conditions::set(
                        &mut st.conditions,
                        new("MetricsAvailable", true, "Polled", "", g),
                        &now,
                    );
                    conditions::set(
                        &mut st.conditions,
                        new("Ready", true, "Polled", "", g),
                        &now,
                    );
                }
                Some(Reading::Unavailable { error, .. }) => {
                    metrics_available(&ctx, &ns, &name, false);
                    conditions::set(
                        &mut st.conditions,
                        new(
                            "MetricsAvailable",
                            false,
                            "RedisUnavailable",
                            error.clone(),
                            g,
                        ),
                        &now,
                    );
                    conditions::set(
                        &mut st.conditions,
                        new("Ready", false, "RedisUnavailable", error, g),
                        &now,
                    );
                }
                None => {
                    metrics_available(&ctx, &ns, &name, false);
                    conditions::set(
                        &mut st.conditions,
                        new("MetricsAvailable", false, "Pending", "not polled yet", g),
                        &now,
                    );
                }
            }
            Action::requeue(config_retry.map_or(STATUS_INTERVAL, |d| d.min(STATUS_INTERVAL)))
        }
        Err(Error::InvalidSpec { field, reason }) => {
            ctx.registry.remove(&id);
            metrics_available(&ctx, &ns, &name, false);
            let msg = format!("{field}: {reason}");
            conditions::set(
                &mut st.conditions,
                new(
                    crate::queue_config::CONFIG_APPLIED,
                    false,
                    "InvalidSpec",
                    msg.clone(),
                    g,
                ),
                &now,
            );
            conditions::set(
                &mut st.conditions,
                new("MetricsAvailable", false, "InvalidSpec", msg.clone(), g),
                &now,
            );
            conditions::set(
                &mut st.conditions,
                new("Ready", false, "InvalidSpec", msg, g),
                &now,
            );
            // a Secret may be created later without the queue changing: look again, slowly
            Action::requeue(Duration::from_secs(60))
        }
        Err(e) => return Err(e),
    };

    // compare without the poll time so an idle queue does not write every interval
    let changed = {
        let mut a = st.clone();
        let mut b = q.status.clone().unwrap_or_default();
        a.last_poll_time = None;
        b.last_poll_time = None;
        a != b
    };
    if changed {
        let api: Api<FuncQueue> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({ "status": st })),
        )
        .await?;
    }
    ctx.backoff.succeeded(&format!("queue:{ns}/{name}"));
    timer.observe_duration();
    Ok(action)
}

/// Publish a Warning Event about `q` (a failure to publish is logged, never fatal).
pub(crate) async fn warn(ctx: &Context, q: &FuncQueue, reason: &str, note: String) {
    let ev = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &q.object_ref(&())).await {
        tracing::warn!(error = %e, "cannot publish event");
    }
}

/// `funcscale_queue_metrics_available`: follows the queue's `MetricsAvailable` condition.
fn metrics_available(ctx: &Context, ns: &str, name: &str, available: bool) {
    ctx.metrics
        .queue_metrics_available
        .with_label_values(&[ns, name])
        .set(i64::from(available));
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Errors back off per object.
pub fn error_policy(q: Arc<FuncQueue>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .failures
        .with_label_values(&["queue", err.category()])
        .inc();
    let key = format!(
        "queue:{}/{}",
        q.namespace().unwrap_or_default(),
        q.name_any()
    );
    let delay = ctx.backoff.failed(&key);
    tracing::warn!(queue = %key, error = %err, category = err.category(), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

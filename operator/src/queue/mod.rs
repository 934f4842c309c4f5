//! The FuncQueue controller: resolves the queue's Redis connection (Secrets included),
//! registers it with the metrics poller, and writes the queue's status from the last
//! reading: depth, oldest age, rates, T, M, consuming pools, and `Served=False` when no pool
//! serves it. It also writes the queue's settings for the workers (retention, destinations:
//! [`crate::queue_config`]).
//!
//! The steps, as in the pool controller: [`dereference`] (endpoint, consumers, last
//! reading) → [`validate`] (pure: what the schema cannot check; a spec whose Redis cannot be
//! resolved is invalid too) → [`build`] (pure: status and gauges) → [`apply`] (Event, Redis
//! settings, registry, gauges) → [`status`] (patch when changed). A spec found invalid is
//! `InvalidSpec` on the queue's conditions.

pub mod apply;
pub mod build;
pub mod dereference;
pub mod status;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use kube::runtime::reflector::ObjectRef;

use crate::context::{Backoff, ControllerContext, Shared, object_key, rfc3339};
use crate::crd::{FuncQueue, FuncQueueStatus};
use crate::error::{Error, Result};
use crate::queue_config::writes::QueueConfigs;
use crate::redis_metrics::QueueId;

/// The queue controller's context: the state both controllers share and what only this
/// controller keeps.
pub struct Context {
    /// Client, recorder, metrics, settings, the FuncQueue store, readings, Secrets, clock.
    pub shared: Arc<Shared>,
    /// Per queue: the settings last written to its Redis; one connection per endpoint
    /// (shared with the pool controller's scale-downs).
    pub queue_configs: Arc<QueueConfigs>,
    /// Per-queue backoff of failed reconciles.
    pub backoff: Backoff<ObjectRef<FuncQueue>>,
}

impl Context {
    /// A queue controller context.
    pub fn new(shared: Arc<Shared>, queue_configs: Arc<QueueConfigs>) -> Self {
        Self {
            shared,
            queue_configs,
            backoff: Backoff::default(),
        }
    }
}

impl ControllerContext for Context {
    type Object = FuncQueue;
    const CONTROLLER: &'static str = "queue";
    fn shared(&self) -> &Shared {
        &self.shared
    }
    fn backoff(&self) -> &Backoff<ObjectRef<FuncQueue>> {
        &self.backoff
    }
}

/// How often the status of a queue with work in it is refreshed from the metrics cache.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// When to look at a queue again without a trigger. A queue with work in it changes in ways
/// the poller does not count as a change (its oldest task ages, its rates decay after a
/// burst): every [`STATUS_INTERVAL`]. A queue at rest (nothing waiting, running or arriving)
/// changes only when the poller sees a change, and the poll loop triggers its reconcile then:
/// the resync suffices. (Every queue every 10 s was 1,000 reconciles a second at 10,000
/// queues, nearly all of idle queues whose status did not change.)
pub fn refresh_after(st: &FuncQueueStatus, resync: Duration) -> Duration {
    let at_rest = st.depth == Some(0)
        && st.running == Some(0)
        && st.arrival_rate == Some(0.0)
        && st.completion_rate == Some(0.0)
        && st.retries_waiting.unwrap_or(0) == 0
        && st.deliveries_due.unwrap_or(0) == 0;
    if at_rest { resync } else { STATUS_INTERVAL }
}

/// Reconcile one queue.
pub async fn reconcile(q: Arc<FuncQueue>, ctx: Arc<Context>) -> Result<Action> {
    let timer = ctx
        .shared
        .metrics
        .reconcile_duration
        .with_label_values(&["queue"])
        .start_timer();
    ctx.shared
        .metrics
        .reconciliations
        .with_label_values(&["queue"])
        .inc();
    let ns = q
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let id = QueueId::new(ns, q.name_any());
    let now = rfc3339(ctx.shared.now_ms());
    let g = q.metadata.generation;
    let stored = q.status.as_ref();
    let mut st = stored.cloned().unwrap_or_default();
    st.observed_generation = g;
    build::location(&mut st, &q, &id.namespace, &ctx.shared.config.keys);

    let d = dereference::dereference(&q, &id, &ctx).await;
    let labels = (id.namespace.as_str(), id.name.as_str());
    if let Some(note) = build::served(&mut st, stored, &d.consumers, labels, g, &now) {
        crate::events::warn(&ctx.shared.recorder, q.as_ref(), "NotServed", note).await;
    }
    // validate: what the schema cannot check; an error makes the spec invalid
    let endpoint = match validate::validate(&q) {
        Some(e) => Err(e),
        None => d
            .endpoint
            .and_then(|ep| validate::cluster_error(&q, &ep).map_or(Ok(ep), Err)),
    };
    let action = match endpoint {
        // queues of two namespaces whose keys meet (legacyKeys or adopted queues of one
        // name, explicit keys naming one list) would share tasks and settings: the younger
        // is refused, nothing of it written to Redis or polled
        Ok(_) if d.key_conflict.is_some() => {
            let c = d.key_conflict.unwrap_or_else(|| unreachable!());
            let (msg, was) = build::key_conflict(&id, &c, stored);
            if !was {
                crate::events::warn(&ctx.shared.recorder, q.as_ref(), "KeyConflict", msg.clone())
                    .await;
            }
            ctx.shared.registry.remove(&id);
            let gauges = build::refused(&mut st, "KeyConflict", &msg, g, &now);
            apply::gauges(&ctx, &id, &gauges);
            Action::requeue(STATUS_INTERVAL)
        }
        Ok(ep) => {
            // retention and destinations for the workers; a Redis failure retries sooner
            let config_retry = apply::redis(&q, &id, ep, &mut st, &now, &ctx).await;
            let gauges = build::readings(&mut st, d.reading.as_ref(), g, &now);
            apply::gauges(&ctx, &id, &gauges);
            let refresh = refresh_after(&st, ctx.shared.config.resync);
            Action::requeue(config_retry.map_or(refresh, |d| d.min(refresh)))
        }
        Err(Error::InvalidSpec { field, reason }) => {
            ctx.shared.registry.remove(&id);
            let gauges = build::invalid(&mut st, &format!("{field}: {reason}"), g, &now);
            apply::gauges(&ctx, &id, &gauges);
            // a Secret may be created later without the queue changing: look again, slowly
            Action::requeue(Duration::from_secs(60))
        }
        Err(e) => return Err(e),
    };

    if build::changed(&st, stored) {
        status::patch(&ctx, &id, &st, stored).await?;
    }
    ctx.backoff.succeeded(&object_key(&id.namespace, &id.name));
    timer.observe_duration();
    Ok(action)
}

/// Errors back off per queue ([`crate::context::error_policy`]).
pub fn error_policy(q: Arc<FuncQueue>, err: &Error, ctx: Arc<Context>) -> Action {
    crate::context::error_policy(q, err, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_queue_at_rest_waits_for_the_resync() {
        let resync = Duration::from_secs(60);
        let rest = FuncQueueStatus {
            depth: Some(0),
            running: Some(0),
            arrival_rate: Some(0.0),
            completion_rate: Some(0.0),
            retries_waiting: Some(0),
            ..Default::default()
        };
        assert_eq!(refresh_after(&rest, resync), resync);
        // not read yet: soon
        assert_eq!(
            refresh_after(&FuncQueueStatus::default(), resync),
            STATUS_INTERVAL
        );
        for busy in [
            FuncQueueStatus {
                depth: Some(3),
                ..rest.clone()
            },
            FuncQueueStatus {
                running: Some(1),
                ..rest.clone()
            },
            FuncQueueStatus {
                completion_rate: Some(0.1),
                ..rest.clone()
            },
            FuncQueueStatus {
                arrival_rate: Some(0.1),
                ..rest.clone()
            },
            FuncQueueStatus {
                retries_waiting: Some(2),
                ..rest.clone()
            },
        ] {
            assert_eq!(refresh_after(&busy, resync), STATUS_INTERVAL, "{busy:?}");
        }
    }
}

//! The FuncQueue controller: resolves the queue's Redis connection (Secrets included),
//! registers it with the metrics poller, and writes the queue's status from the last
//! reading: depth, oldest age, rates, T, M, consuming pools, and `Served=False` when no pool
//! serves it. It also writes the queue's settings for the workers (retention, destinations:
//! [`crate::queue_config`]).
//!
//! The steps, as in the pool controller: [`dereference`] (endpoint, consumers, last
//! reading) → [`build`] (pure: status and gauges) → [`apply`] (Event, Redis settings,
//! registry, gauges) → [`status`] (patch when changed). Validation is the endpoint's: a
//! spec whose Redis cannot be resolved is `InvalidSpec` on the queue's conditions.

pub mod apply;
pub mod build;
pub mod dereference;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use crate::context::{Context, rfc3339};
use crate::crd::{FuncQueue, FuncQueueStatus};
use crate::error::{Error, Result};
use crate::redis_metrics::QueueId;

pub use dereference::endpoint;

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
        && st.retries_waiting.unwrap_or(0) == 0;
    if at_rest { resync } else { STATUS_INTERVAL }
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
    let id = QueueId::new(ns, q.name_any());
    let now = rfc3339(ctx.now_ms());
    let g = q.metadata.generation;
    let stored = q.status.as_ref();
    let mut st = stored.cloned().unwrap_or_default();
    st.observed_generation = g;
    // where producers find the queue: its id in Redis and its list
    let queue_id = crate::crd_ext::queue_id(&q, &id.namespace);
    let (lists, _) = crate::redis_metrics::queue_lists(&q.spec, &queue_id, &ctx.config.keys);
    st.key = lists.into_iter().next();
    st.queue_id = Some(queue_id);

    let d = dereference::dereference(&q, &id, &ctx).await;
    let labels = (id.namespace.as_str(), id.name.as_str());
    if let Some(note) = build::served(&mut st, stored, &d.consumers, labels, g, &now) {
        crate::events::warn(&ctx.recorder, q.as_ref(), "NotServed", note).await;
    }
    // a cron the schema cannot check (field values, ranges) is refused here, naming it
    let bad_cron = q.spec.schedules.iter().enumerate().find_map(|(i, s)| {
        funcscale_protocol::cron::Cron::parse(&s.cron)
            .err()
            .map(|e| {
                Error::invalid(
                    format!("spec.schedules[{i}].cron"),
                    format!(
                        "schedule {}: {:?} is not a valid cron expression: {e}",
                        s.name, s.cron
                    ),
                )
            })
    });
    // a foreign queue's tasks are the foreign system's messages: the beat's funcscale
    // envelopes would wait there unread (Celery cannot parse them)
    let foreign_schedules = (q.spec.format != crate::crd::QueueFormat::Funcscale
        && !q.spec.schedules.is_empty())
    .then(|| {
        Error::invalid(
            "spec.schedules",
            format!(
                "a {:?} queue holds {:?} messages: funcscale's beat would push funcscale tasks no {:?} worker reads; keep these schedules in the system's own scheduler (for Celery: celery beat, as a Beat pool with spec.celery or its own command), or give the schedules to a funcscale queue",
                q.spec.format, q.spec.format, q.spec.format
            ),
        )
    });
    let endpoint = match bad_cron
        .or(foreign_schedules)
        .or_else(|| celery_transport_error(&q.spec))
        .or_else(|| celery_name_error(&q.name_any(), &q.spec))
        .or_else(|| stream_spec_error(&q.spec))
    {
        Some(e) => Err(e),
        None => d.endpoint,
    };
    let action = match endpoint {
        // queues of two namespaces whose keys meet (legacyKeys or adopted queues of one
        // name, explicit keys naming one list) would share tasks and settings: the younger
        // is refused, nothing of it written to Redis or polled
        Ok(_) if d.key_conflict.is_some() => {
            let c = d.key_conflict.unwrap_or_else(|| unreachable!());
            let other = &c.other;
            let msg = format!(
                "FuncQueue {id} and FuncQueue {other} on the same Redis would share {shared}; {other} is older and keeps it. Give {id} keys of its own: remove legacyKeys (its keys become namespaced), change spec.key, or rename it",
                shared = c.shared,
            );
            let was = stored
                .and_then(|s| crate::conditions::get(&s.conditions, "Ready"))
                .is_some_and(|c| c.reason == "KeyConflict");
            if !was {
                crate::events::warn(&ctx.recorder, q.as_ref(), "KeyConflict", msg.clone()).await;
            }
            ctx.registry.remove(&id);
            let gauges = build::refused(&mut st, "KeyConflict", &msg, g, &now);
            apply::gauges(&ctx, &id, &gauges);
            Action::requeue(STATUS_INTERVAL)
        }
        Ok(ep) => {
            // retention and destinations for the workers; a Redis failure retries sooner
            let config_retry = apply::redis(&q, &id, ep, &mut st, &now, &ctx).await;
            let gauges = build::readings(&mut st, d.reading.as_ref(), g, &now);
            apply::gauges(&ctx, &id, &gauges);
            let refresh = refresh_after(&st, ctx.config.resync);
            Action::requeue(config_retry.map_or(refresh, |d| d.min(refresh)))
        }
        Err(Error::InvalidSpec { field, reason }) => {
            ctx.registry.remove(&id);
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
    ctx.backoff.succeeded(&format!("queue:{id}"));
    timer.observe_duration();
    Ok(action)
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

/// What the schema cannot check of `spec.celery`: it belongs to a Celery queue, and its
/// priority steps are ascending and distinct, as kombu needs them.
pub fn celery_transport_error(spec: &crate::crd::FuncQueueSpec) -> Option<Error> {
    let t = spec.celery.as_ref()?;
    if spec.format != crate::crd::QueueFormat::Celery {
        return Some(Error::invalid(
            "spec.celery",
            format!(
                "Celery transport options are for a queue of format Celery, this one is {:?}: set format: Celery or remove celery",
                spec.format
            ),
        ));
    }
    funcscale_protocol::foreign::check_priority_steps(&t.priority_steps)
        .err()
        .map(|why| Error::invalid("spec.celery.prioritySteps", why))
}

/// A Celery queue's id in funcscale's keys is its bare name, and `funcscale-celery` reads a
/// dotted id as `<namespace>.<name>` (`FUNCSCALE_CELERY_QUEUES`): a name with a dot would make
/// its pods' integration refuse to start (or report under keys nobody reads).
pub fn celery_name_error(name: &str, spec: &crate::crd::FuncQueueSpec) -> Option<Error> {
    (spec.format == crate::crd::QueueFormat::Celery && name.contains('.')).then(|| {
        Error::invalid(
            "metadata.name",
            format!(
                "a Celery queue's name must not contain '.' ({name:?}): funcscale-celery would read it as <namespace>.<name>; name the FuncQueue without dots and set spec.key to the Celery queue's name"
            ),
        )
    })
}

#[cfg(test)]
mod celery_tests {
    use super::*;
    use crate::crd::{CeleryTransport, FuncQueueSpec, QueueFormat};

    #[test]
    fn a_dotted_celery_queue_name_is_refused() {
        let celery = FuncQueueSpec {
            format: QueueFormat::Celery,
            ..Default::default()
        };
        let e = celery_name_error("orders.v2", &celery).unwrap().to_string();
        assert!(
            e.contains("metadata.name: a Celery queue") && e.contains("spec.key"),
            "{e}"
        );
        assert!(celery_name_error("orders-v2", &celery).is_none());
        // funcscale's own ids are namespaced and braced: a dot is fine there
        assert!(celery_name_error("orders.v2", &FuncQueueSpec::default()).is_none());
    }

    #[test]
    fn celery_transport_options_are_checked() {
        let mut spec = FuncQueueSpec {
            format: QueueFormat::Celery,
            celery: Some(CeleryTransport::default()),
            ..Default::default()
        };
        assert!(celery_transport_error(&spec).is_none());
        spec.celery.as_mut().unwrap().priority_steps = vec![0, 9, 3];
        let e = celery_transport_error(&spec).unwrap().to_string();
        assert!(
            e.contains("spec.celery.prioritySteps") && e.contains("9 is followed by 3"),
            "{e}"
        );
        spec.celery.as_mut().unwrap().priority_steps = vec![];
        assert!(celery_transport_error(&spec).is_some());
        spec.celery = Some(CeleryTransport::default());
        spec.format = QueueFormat::Rq;
        let e = celery_transport_error(&spec).unwrap().to_string();
        assert!(
            e.contains("spec.celery") && e.contains("format Celery"),
            "{e}"
        );
    }
}

/// What the schema cannot check (or an API server without CEL rules does not) of a Stream
/// queue: it names its consumer group, only a Stream queue has one, and it has no schedules
/// (the beat's funcscale envelopes would be entries no consumer of the stream understands).
pub fn stream_spec_error(spec: &crate::crd::FuncQueueSpec) -> Option<Error> {
    use crate::crd::QueueFormat;
    match (&spec.stream, spec.format) {
        (None, QueueFormat::Stream) => Some(Error::invalid(
            "spec.stream.group",
            "a Stream queue needs the consumer group whose lag sizes its pools: set stream.group to the group your consumers read with XREADGROUP",
        )),
        (Some(_), QueueFormat::Stream) if !spec.schedules.is_empty() => Some(Error::invalid(
            "spec.schedules",
            "a Stream queue holds your producers' entries: funcscale's beat would push funcscale tasks into a list no consumer of the stream reads; keep these schedules in the system's own scheduler, or give the schedules to a funcscale queue",
        )),
        (Some(_), QueueFormat::Stream) => None,
        (Some(_), format) => Some(Error::invalid(
            "spec.stream",
            format!(
                "a consumer group is for a queue of format Stream, this one is {format:?}: set format: Stream or remove stream"
            ),
        )),
        (None, _) => None,
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use crate::crd::{FuncQueueSpec, QueueFormat, Schedule, StreamGroupRef};

    #[test]
    fn a_stream_queue_names_its_group_and_has_no_schedules() {
        let mut spec = FuncQueueSpec {
            format: QueueFormat::Stream,
            ..Default::default()
        };
        let e = stream_spec_error(&spec).unwrap().to_string();
        assert!(e.contains("spec.stream.group"), "{e}");
        spec.stream = Some(StreamGroupRef {
            group: "workers".into(),
        });
        assert!(stream_spec_error(&spec).is_none());
        spec.schedules = vec![Schedule {
            name: "tick".into(),
            cron: "* * * * *".into(),
            function: "f".into(),
            args: vec![],
        }];
        let e = stream_spec_error(&spec).unwrap().to_string();
        assert!(e.contains("spec.schedules"), "{e}");
        spec.schedules.clear();
        spec.format = QueueFormat::Rq;
        let e = stream_spec_error(&spec).unwrap().to_string();
        assert!(
            e.contains("spec.stream") && e.contains("format Stream"),
            "{e}"
        );
    }
}

//! *Build*: the queue's status and gauges from what dereference found. Pure: plain data in,
//! plain data out (no client, no clock, no Redis).

use crate::conditions::{self, new};
use crate::context::rfc3339;
use funcscale_protocol::Keys;

use crate::crd::{FuncQueue, FuncQueueStatus};
use crate::crd_ext::KeyConflict;
use crate::redis_metrics::{QueueId, Reading};

/// What the queue's gauges should say.
#[derive(Clone, Debug, PartialEq)]
pub struct Gauges {
    /// `funcscale_queue_depth`, when read.
    pub depth: Option<i64>,
    /// `funcscale_queue_oldest_task_age_seconds`.
    pub oldest_age: AgeGauge,
    /// `funcscale_queue_metrics_available`.
    pub available: bool,
    /// `funcscale_queue_redis_info`: the topology and node of the reading, when read (the
    /// last series stays while the queue cannot be read).
    pub redis: Option<(&'static str, String)>,
}

/// The oldest-task-age gauge of a queue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AgeGauge {
    /// Set it.
    Set(f64),
    /// The format records no enqueue time: no series, not 0.
    Remove,
    /// Nothing read: leave it.
    Keep,
}

/// The `Served` condition from the consumers; returns the note of a `NotServed` warning when
/// the queue has just become unserved (`prev`: the status as stored).
pub fn served(
    st: &mut FuncQueueStatus,
    prev: Option<&FuncQueueStatus>,
    consumers: &[String],
    (ns, name): (&str, &str),
    g: Option<i64>,
    now: &str,
) -> Option<String> {
    st.consumers = consumers.to_vec();
    let served = !consumers.is_empty();
    let was_unserved = prev
        .and_then(|s| conditions::get(&s.conditions, "Served"))
        .is_some_and(|c| c.status == "False");
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
        now,
    );
    (!served && !was_unserved)
        .then(|| format!("no FuncWorkerPool in {ns} lists queue {name}: its tasks will wait"))
}

/// The numbers and the `MetricsAvailable` / `Ready` conditions from the poller's last
/// reading of a queue whose Redis is known.
pub fn readings(
    st: &mut FuncQueueStatus,
    reading: Option<&Reading>,
    g: Option<i64>,
    now: &str,
) -> Gauges {
    match reading {
        Some(Reading::Ok(m)) => {
            st.depth = Some(m.depth);
            st.oldest_task_age_seconds = m.oldest_age_seconds.map(round1);
            st.arrival_rate = Some(round1(m.arrival_rate));
            st.completion_rate = Some(round1(m.completion_rate));
            // only funcscale queues have a delayed set and an outbox (both read, or neither)
            st.retries_waiting = m.retries_read.then_some(m.retries_waiting);
            st.deliveries_due = m.retries_read.then_some(m.deliveries_due);
            st.running = Some(m.in_flight);
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
            st.redis = (!m.node.is_empty()).then(|| crate::crd::QueueRedisStatus {
                topology: m.topology.to_string(),
                node: Some(m.node.clone()),
            });
            let polled = if m.depth_lower_bound {
                "depth is a lower bound: Redis could not give the consumer group's lag (entries were deleted or trimmed before delivery) and there were too many entries to count"
            } else {
                ""
            };
            conditions::set(
                &mut st.conditions,
                new("MetricsAvailable", true, "Polled", polled, g),
                now,
            );
            // read, but not what the queue names (a Stream without its stream or group)
            let ready = match &m.not_ready {
                Some((reason, msg)) => new("Ready", false, reason, msg.clone(), g),
                None => new("Ready", true, "Polled", "", g),
            };
            conditions::set(&mut st.conditions, ready, now);
            // an empty queue waits for nothing: 0 (the age alert resolves); a format that
            // records no enqueue time has no age to report: no series, not 0
            let oldest_age = match (m.oldest_age_seconds, m.depth) {
                (Some(s), _) => AgeGauge::Set(s),
                (None, 0) => AgeGauge::Set(0.0),
                (None, _) => AgeGauge::Remove,
            };
            Gauges {
                depth: Some(m.depth as i64),
                oldest_age,
                available: true,
                redis: (!m.node.is_empty()).then(|| (m.topology, m.node.clone())),
            }
        }
        Some(Reading::Unavailable { error, reason, .. }) => {
            // RedisAuthFailed when Redis refused the credentials, else RedisUnavailable
            let reason = reason.as_str();
            conditions::set(
                &mut st.conditions,
                new("MetricsAvailable", false, reason, error.clone(), g),
                now,
            );
            conditions::set(
                &mut st.conditions,
                new("Ready", false, reason, error.clone(), g),
                now,
            );
            unavailable()
        }
        None => {
            conditions::set(
                &mut st.conditions,
                new("MetricsAvailable", false, "Pending", "not polled yet", g),
                now,
            );
            unavailable()
        }
    }
}

/// The conditions of a queue whose Redis cannot be resolved from its spec (`msg`: which
/// field and why).
pub fn invalid(st: &mut FuncQueueStatus, msg: &str, g: Option<i64>, now: &str) -> Gauges {
    refused(st, "InvalidSpec", msg, g, now)
}

/// The conditions of a queue the operator refuses to serve (`reason`, `msg`: why).
pub fn refused(
    st: &mut FuncQueueStatus,
    reason: &str,
    msg: &str,
    g: Option<i64>,
    now: &str,
) -> Gauges {
    for kind in [
        crate::queue_config::CONFIG_APPLIED,
        "MetricsAvailable",
        "Ready",
    ] {
        conditions::set(
            &mut st.conditions,
            new(kind, false, reason, msg.to_string(), g),
            now,
        );
    }
    unavailable()
}

fn unavailable() -> Gauges {
    Gauges {
        depth: None,
        oldest_age: AgeGauge::Keep,
        available: false,
        redis: None,
    }
}

/// Where producers find the queue (of namespace `ns`): its id in Redis and its list.
pub fn location(st: &mut FuncQueueStatus, q: &FuncQueue, ns: &str, keys: &Keys) {
    let queue_id = crate::crd_ext::queue_id(q, ns);
    let (lists, _) = crate::redis_metrics::queue_lists(&q.spec, &queue_id, keys);
    st.key = lists.into_iter().next();
    st.queue_id = Some(queue_id);
}

/// Why queue `id` is refused for sharing keys with an older queue of another namespace, and
/// whether the stored status already says so (its Event was published then).
pub fn key_conflict(
    id: &QueueId,
    c: &KeyConflict,
    stored: Option<&FuncQueueStatus>,
) -> (String, bool) {
    let other = &c.other;
    let msg = format!(
        "FuncQueue {id} and FuncQueue {other} on the same Redis would share {shared}; {other} is older and keeps it. Give {id} keys of its own: remove legacyKeys (its keys become namespaced), change spec.key, or rename it",
        shared = c.shared,
    );
    let was = stored
        .and_then(|s| conditions::get(&s.conditions, "Ready"))
        .is_some_and(|c| c.reason == "KeyConflict");
    (msg, was)
}

/// Whether `st` differs from the stored status, the poll time aside (an idle queue does not
/// write every interval).
pub fn changed(st: &FuncQueueStatus, stored: Option<&FuncQueueStatus>) -> bool {
    let mut a = st.clone();
    let mut b = stored.cloned().unwrap_or_default();
    a.last_poll_time = None;
    b.last_poll_time = None;
    a != b
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_metrics::QueueMetrics;

    const NOW: &str = "2026-01-01T00:00:00Z";

    fn condition<'a>(st: &'a FuncQueueStatus, kind: &str) -> (&'a str, &'a str) {
        let c = conditions::get(&st.conditions, kind).expect(kind);
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn served_warns_once_when_the_last_pool_goes() {
        let mut st = FuncQueueStatus::default();
        let note = served(&mut st, None, &[], ("ns", "q"), Some(1), NOW);
        assert_eq!(
            note.as_deref(),
            Some("no FuncWorkerPool in ns lists queue q: its tasks will wait")
        );
        assert_eq!(condition(&st, "Served"), ("False", "NoPool"));
        // still unserved on the next reconcile: no second warning
        let prev = st.clone();
        assert_eq!(
            served(&mut st, Some(&prev), &[], ("ns", "q"), Some(1), NOW),
            None
        );
        let pools = ["a".to_string(), "b".to_string()];
        assert_eq!(
            served(&mut st, Some(&prev), &pools, ("ns", "q"), Some(1), NOW),
            None
        );
        assert_eq!(condition(&st, "Served"), ("True", "PoolsServing"));
        assert_eq!(st.consumers, pools);
    }

    #[test]
    fn readings_become_numbers_conditions_and_gauges() {
        let mut st = FuncQueueStatus::default();
        let m = QueueMetrics {
            depth: 3,
            oldest_age_seconds: None,
            arrival_rate: 1.26,
            task_time_ms: 480.04,
            task_time_measured: true,
            scheduled_per_period: 7,
            in_flight: 4,
            in_flight_measured: true,
            retries_read: true,
            retries_waiting: 2,
            topology: "sentinel",
            node: "10.0.0.7:6379".into(),
            ..Default::default()
        };
        let g = readings(&mut st, Some(&Reading::Ok(m.clone())), Some(2), NOW);
        assert_eq!(
            st.redis,
            Some(crate::crd::QueueRedisStatus {
                topology: "sentinel".into(),
                node: Some("10.0.0.7:6379".into())
            })
        );
        assert_eq!(
            g,
            Gauges {
                depth: Some(3),
                oldest_age: AgeGauge::Remove,
                available: true,
                redis: Some(("sentinel", "10.0.0.7:6379".into())),
            }
        );
        assert_eq!(
            (
                st.depth,
                st.arrival_rate,
                st.task_time_ms,
                st.scheduled_per_period
            ),
            (Some(3), Some(1.3), Some(480.0), Some(7))
        );
        assert_eq!(st.task_time_source.as_deref(), Some("Measured"));
        assert_eq!((st.running, st.retries_waiting), (Some(4), Some(2)));
        assert_eq!(condition(&st, "Ready"), ("True", "Polled"));
        // a Stream without its group: numbers read (0), the queue not ready, saying why
        let no_group = QueueMetrics {
            depth: 0,
            not_ready: Some(("StreamGroupMissing", "no group g".into())),
            ..m.clone()
        };
        readings(&mut st, Some(&Reading::Ok(no_group)), Some(2), NOW);
        assert_eq!(condition(&st, "Ready"), ("False", "StreamGroupMissing"));
        assert_eq!(condition(&st, "MetricsAvailable"), ("True", "Polled"));
        assert_eq!(st.depth, Some(0));
        let empty = QueueMetrics { depth: 0, ..m };
        let g = readings(&mut st, Some(&Reading::Ok(empty)), Some(2), NOW);
        assert_eq!(
            g.oldest_age,
            AgeGauge::Set(0.0),
            "an empty queue waits for nothing"
        );

        let down = Reading::Unavailable {
            error: "refused".into(),
            reason: Default::default(),
            since_ms: 0,
        };
        let g = readings(&mut st, Some(&down), Some(2), NOW);
        assert!(!g.available && g.depth.is_none() && g.oldest_age == AgeGauge::Keep);
        assert_eq!(condition(&st, "Ready"), ("False", "RedisUnavailable"));
        let mut fresh = FuncQueueStatus::default();
        readings(&mut fresh, None, Some(2), NOW);
        assert_eq!(condition(&fresh, "MetricsAvailable"), ("False", "Pending"));
    }

    #[test]
    fn an_unresolvable_redis_is_an_invalid_spec() {
        let mut st = FuncQueueStatus::default();
        let g = invalid(&mut st, "spec.redis: no such Secret", Some(1), NOW);
        assert!(!g.available);
        for kind in [
            crate::queue_config::CONFIG_APPLIED,
            "MetricsAvailable",
            "Ready",
        ] {
            assert_eq!(condition(&st, kind), ("False", "InvalidSpec"));
        }
    }

    #[test]
    fn the_poll_time_alone_is_no_change() {
        let st = FuncQueueStatus {
            last_poll_time: Some("t1".into()),
            ..Default::default()
        };
        let stored = FuncQueueStatus {
            last_poll_time: Some("t0".into()),
            ..Default::default()
        };
        assert!(!changed(&st, Some(&stored)));
        assert!(changed(
            &FuncQueueStatus {
                depth: Some(1),
                ..st
            },
            Some(&stored)
        ));
    }
}

//! Sizing: turn the Redis readings of a pool's queues into a replica count through the
//! policy. Pure except for the policy history it updates.

use crate::crd::{FuncWorkerPool, PoolRole, QueueDepth};
use crate::policy::{self, Decision, History, Input, Observation, PolicyConfig, Rule};
use crate::redis_metrics::Reading;

/// Whether the pool's metrics could be read.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricsState {
    /// The pool's size does not depend on metrics.
    NotNeeded,
    /// All queues read.
    Available,
    /// Some queue could not be read: why.
    Unavailable(String),
}

/// The outcome of sizing.
#[derive(Clone, Debug)]
pub struct Sizing {
    /// Replicas to apply; `None` leaves the Deployment's count to its owner.
    pub replicas: Option<i32>,
    /// The decision and its explanation.
    pub decision: Decision,
    /// Metrics availability.
    pub metrics: MetricsState,
    /// Depth per queue (what could be read).
    pub depths: Vec<QueueDepth>,
}

/// One queue of a pool: its last reading and the pool's share of its load.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueReading {
    /// The queue's name.
    pub name: String,
    /// Its last reading, if any.
    pub reading: Option<Reading>,
    /// The part of the queue's load this pool carries (0..=1; see [`share`]).
    pub share: f64,
    /// The queue's tasks running on this pool's own pods, read from the running set when
    /// other pools serve the queue too (`None`: the pool serves it alone, or it could not be
    /// read: then the pool's share of the queue's running tasks counts).
    pub running_here: Option<u64>,
}

impl QueueReading {
    /// A queue this pool serves alone.
    pub fn whole(name: impl Into<String>, reading: Option<Reading>) -> Self {
        Self {
            name: name.into(),
            reading,
            share: 1.0,
            running_here: None,
        }
    }
}

/// The processes a pool can bring to its queues: processes per pod × its most pods
/// (`autoscaling.maxReplicas`, else `replicas`, else 1). Beat pools bring none.
pub fn capacity(pool: &FuncWorkerPool) -> f64 {
    if pool.spec.role == PoolRole::Beat {
        return 0.0;
    }
    let pods = match (&pool.spec.autoscaling, pool.spec.replicas) {
        (Some(a), _) => a.max_replicas.max(a.min_replicas),
        (None, Some(r)) => r,
        (None, None) => 1,
    };
    f64::from(pool.spec.processes_per_pod.max(1)) * f64::from(pods.max(0))
}

/// The share of a queue's load that `pool` carries when `serving` (every Worker pool listing
/// the queue, `pool` included) serve it: its capacity over theirs ([`capacity`]), so the
/// pools' wanted sizes add up to what one pool would want and each grows in proportion to
/// what it can run. 1 when it is the only one (or none has capacity).
pub fn share(pool: &FuncWorkerPool, serving: &[&FuncWorkerPool]) -> f64 {
    let total: f64 = serving.iter().map(|p| capacity(p)).sum();
    let own = capacity(pool);
    if total <= 0.0 || own <= 0.0 || own >= total {
        1.0
    } else {
        own / total
    }
}

fn part(x: u64, share: f64) -> u64 {
    if share >= 1.0 {
        x
    } else {
        (x as f64 * share).ceil() as u64
    }
}

/// Sum the readings of the pool's queues (each scaled by the pool's share of it) into one
/// observation, or say why not. Due retries and due deliveries to destinations (which only
/// the queue's workers make) count as backlog, and as [`Observation::due`] (they start a pool
/// at zero whatever its activation depth). Running tasks are the pool's
/// own where they were read per pool (`running_here`: a pool running a shared queue's long
/// tasks keeps the pods they occupy, a pool running none of them is not held up by them). A queue's scheduled executions
/// are read per minute; the pool counts them per its own period `period_ms` (P of the
/// capacity formula, rounded up once), so a pool with `periodMs: 300000` sees five minutes'
/// worth of executions.
pub fn aggregate(readings: &[QueueReading], period_ms: u64) -> Result<Observation, String> {
    let mut obs = Observation::default();
    let (mut weight, mut weighted_t, mut mean_t) = (0.0, 0.0, 0.0);
    let mut scheduled_per_minute = 0.0;
    for QueueReading {
        name,
        reading: r,
        share,
        running_here,
    } in readings
    {
        let share = share.clamp(0.0, 1.0);
        let m = match r {
            Some(Reading::Ok(m)) => m,
            Some(Reading::Unavailable { error, .. }) => {
                return Err(format!("queue {name}: {error}"));
            }
            None => return Err(format!("queue {name}: not read from Redis yet")),
        };
        let backlog = m.depth + m.retries_due + m.deliveries_due;
        obs.depth += part(backlog, share);
        obs.due += part(m.retries_due + m.deliveries_due, share);
        obs.arrival_rate += m.arrival_rate * share;
        obs.one_off_rate += m.one_off_rate * share;
        obs.in_flight += running_here.unwrap_or_else(|| part(m.in_flight, share));
        scheduled_per_minute += m.scheduled_per_minute * share;
        obs.task_time_measured |= m.task_time_measured;
        // T weighted by the work each queue brings (arrivals, backlog, schedules)
        let w = m.arrival_rate + backlog as f64 + m.scheduled_per_minute;
        weight += w;
        weighted_t += w * m.task_time_ms;
        mean_t += m.task_time_ms / readings.len() as f64;
    }
    obs.scheduled_per_period =
        funcscale_protocol::cron::per_period(scheduled_per_minute, period_ms);
    obs.task_time_ms = if weight > 0.0 {
        weighted_t / weight
    } else {
        mean_t
    };
    Ok(obs)
}

/// Size `pool`. `current`: the Deployment's replicas, if it exists.
pub fn size(
    pool: &FuncWorkerPool,
    beat_conflict: Option<&str>,
    readings: &[QueueReading],
    current: Option<i32>,
    now_ms: u64,
    history: &mut History,
) -> Sizing {
    let depths = readings
        .iter()
        .filter_map(|q| match &q.reading {
            Some(Reading::Ok(m)) => Some(QueueDepth {
                name: q.name.clone(),
                depth: m.depth,
            }),
            _ => None,
        })
        .collect();
    let fixed = |replicas: Option<i32>, decision: Decision| Sizing {
        replicas,
        decision,
        metrics: MetricsState::NotNeeded,
        depths: Vec::new(),
    };
    let mut out = if pool.spec.role == PoolRole::Beat {
        match beat_conflict {
            Some(other) => fixed(
                Some(0),
                Decision {
                    desired: 0,
                    recommendation: 0,
                    rule: Rule::Beat,
                    message: format!(
                        "refused: Beat pool {other} already runs for this namespace and Redis; only one beat may fire the namespace's schedules"
                    ),
                    observation: None,
                },
            ),
            None => fixed(Some(1), Decision::beat()),
        }
    } else if let Some(a) = &pool.spec.autoscaling {
        let cfg = PolicyConfig::from_autoscaling(a, pool.spec.processes_per_pod);
        let (observation, metrics) = match aggregate(readings, cfg.period_ms) {
            Ok(o) => (Some(o), MetricsState::Available),
            Err(e) => (None, MetricsState::Unavailable(e)),
        };
        let input = Input {
            now_ms,
            current: current.unwrap_or(cfg.min_replicas),
            observation,
        };
        let decision = policy::decide(&cfg, &input, history);
        Sizing {
            replicas: Some(decision.desired),
            decision,
            metrics,
            depths: Vec::new(),
        }
    } else if let Some(r) = pool.spec.replicas {
        fixed(Some(r), Decision::fixed(r))
    } else {
        let kept = current.unwrap_or(1);
        fixed(
            None,
            Decision {
                desired: kept,
                recommendation: kept,
                rule: Rule::Fixed,
                message: format!(
                    "replicas not managed: the pool sets neither replicas nor autoscaling, so the Deployment keeps its own count ({kept})"
                ),
                observation: None,
            },
        )
    };
    out.depths = depths;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_metrics::QueueMetrics;

    fn reading(per_minute: f64) -> QueueReading {
        QueueReading::whole(
            "q",
            Some(Reading::Ok(QueueMetrics {
                task_time_ms: 500.0,
                scheduled_per_period: funcscale_protocol::cron::per_period(per_minute, 60_000),
                scheduled_per_minute: per_minute,
                ..Default::default()
            })),
        )
    }

    #[test]
    fn the_schedules_are_counted_over_the_pools_own_period() {
        // 10 executions a minute: 10 per 60 s, 50 per 5 minutes (the formula's M over P)
        let obs = aggregate(&[reading(10.0)], 60_000).unwrap();
        assert_eq!(obs.scheduled_per_period, 10);
        let obs = aggregate(&[reading(10.0)], 300_000).unwrap();
        assert_eq!(obs.scheduled_per_period, 50);
        // so the capacity formula gives the same pods whatever the period it is written in
        let pods = |p: u64| {
            let o = aggregate(&[reading(10.0)], p).unwrap();
            policy::cron_pods(o.scheduled_per_period, o.task_time_ms, 1, p)
        };
        assert_eq!(pods(60_000), pods(300_000));
    }

    #[test]
    fn a_shared_queues_running_tasks_count_where_they_run() {
        let long = |running_here: Option<u64>| QueueReading {
            name: "q".into(),
            reading: Some(Reading::Ok(QueueMetrics {
                task_time_ms: 75_000.0,
                in_flight: 10,
                ..Default::default()
            })),
            share: 0.5,
            running_here,
        };
        // the pool running all 10 counts 10, the other none (not 5 each)
        assert_eq!(aggregate(&[long(Some(10))], 60_000).unwrap().in_flight, 10);
        assert_eq!(aggregate(&[long(Some(0))], 60_000).unwrap().in_flight, 0);
        // unknown where they run: the share
        assert_eq!(aggregate(&[long(None)], 60_000).unwrap().in_flight, 5);
    }

    #[test]
    fn many_rare_schedules_are_summed_then_rounded() {
        // 100 daily schedules: 100/1440 executions a minute, 1 per minute rounded up once
        // (not 100, one per schedule rounded up), on a queue and in a pool alike
        let per_minute = 100.0 / 1440.0;
        let obs = aggregate(&[reading(per_minute)], 60_000).unwrap();
        assert_eq!(obs.scheduled_per_period, 1);
        // two pools sharing the queue: each its part, rounded once
        let mut half = reading(per_minute * 30.0);
        half.share = 0.5;
        assert_eq!(aggregate(&[half], 60_000).unwrap().scheduled_per_period, 2);
    }
}

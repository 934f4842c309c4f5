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

/// Sum the readings of the pool's queues into one observation, or say why not.
pub fn aggregate(readings: &[(String, Option<Reading>)]) -> Result<Observation, String> {
    let mut obs = Observation {
        depth: 0,
        arrival_rate: 0.0,
        in_flight: 0,
        task_time_ms: 0.0,
        task_time_measured: false,
        scheduled_per_period: 0,
    };
    let (mut weight, mut weighted_t, mut mean_t) = (0.0, 0.0, 0.0);
    for (name, r) in readings {
        let m = match r {
            Some(Reading::Ok(m)) => m,
            Some(Reading::Unavailable { error, .. }) => {
                return Err(format!("queue {name}: {error}"));
            }
            None => return Err(format!("queue {name}: not read from Redis yet")),
        };
        obs.depth += m.depth;
        obs.arrival_rate += m.arrival_rate;
        obs.in_flight += m.in_flight;
        obs.scheduled_per_period += m.scheduled_per_period;
        obs.task_time_measured |= m.task_time_measured;
        // T weighted by the work each queue brings (arrivals, backlog, schedules)
        let w = m.arrival_rate + m.depth as f64 + m.scheduled_per_period as f64;
        weight += w;
        weighted_t += w * m.task_time_ms;
        mean_t += m.task_time_ms / readings.len() as f64;
    }
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
    readings: &[(String, Option<Reading>)],
    current: Option<i32>,
    now_ms: u64,
    history: &mut History,
) -> Sizing {
    let depths = readings
        .iter()
        .filter_map(|(n, r)| match r {
            Some(Reading::Ok(m)) => Some(QueueDepth {
                name: n.clone(),
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
        let (observation, metrics) = match aggregate(readings) {
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

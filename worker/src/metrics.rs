//! Prometheus metrics of a worker, its readiness inputs, and the `/metrics`, `/healthz`,
//! `/readyz` endpoints (served by [`funcscale_http`]).

use std::net::SocketAddr;
use std::time::Duration;

pub use funcscale_http::Health;
use prometheus::core::Collector;
use prometheus::proto::MetricType;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// The worker's metrics. Labels are the queue and the function name (both bounded by what the
/// deployment defines), never a task id.
#[derive(Clone)]
pub struct Metrics {
    /// The registry served on `/metrics`.
    pub registry: Registry,
    /// Attempts started.
    pub started: IntCounterVec,
    /// Attempts that succeeded.
    pub succeeded: IntCounterVec,
    /// Attempts that failed.
    pub failed: IntCounterVec,
    /// Failed attempts scheduled for a retry.
    pub retried: IntCounterVec,
    /// Tasks moved to the dead-letter list.
    pub dead: IntCounterVec,
    /// Task duration in seconds.
    pub duration: HistogramVec,
    /// Tasks running now.
    pub inflight: IntGaugeVec,
    /// Queue-wide counts of the last complete minute, from the per-minute buckets
    /// (`kind` = submitted, started, completed, failed, retried, dead).
    pub queue_last_minute: IntGaugeVec,
    /// Queue-wide tasks running now (records in status `started`), all workers.
    pub queue_executing: IntGaugeVec,
    /// Tasks waiting in the queue.
    pub queue_depth: IntGaugeVec,
    /// Dead letters of the queue.
    pub queue_dead_letters: IntGaugeVec,
    /// Deliveries to destinations waiting in the outboxes this worker delivers (its queues',
    /// and the namespace's outbox of earlier versions).
    pub outbox_pending: IntGauge,
    /// Deliveries parked in those outboxes (`OUTBOX_MAX_ATTEMPTS` failures, or malformed).
    pub outbox_parked: IntGauge,
    /// The names of all registered metrics (see [`Metrics::names`]).
    names: Vec<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// New metrics in a fresh registry.
    ///
    /// The queue-wide gauges are named `funcscale_worker_queue_*`: every worker pod reports the
    /// same values read from Redis, and the operator owns `funcscale_queue_*` (with a
    /// `namespace` label per queue), so the two never mix in one query.
    pub fn new() -> Self {
        let counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["queue", "func"]).expect("valid metric")
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let started = counter(
            "funcscale_worker_tasks_started_total",
            "Task attempts started",
        );
        let succeeded = counter(
            "funcscale_worker_tasks_succeeded_total",
            "Task attempts that succeeded",
        );
        let failed = counter(
            "funcscale_worker_tasks_failed_total",
            "Task attempts that failed",
        );
        let retried = counter(
            "funcscale_worker_tasks_retried_total",
            "Failed attempts scheduled for a retry",
        );
        let dead = counter(
            "funcscale_worker_tasks_dead_total",
            "Tasks moved to the dead-letter list",
        );
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "funcscale_worker_task_duration_seconds",
                "Task attempt duration",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                300.0,
            ]),
            &["queue", "func"],
        )
        .expect("valid metric");
        let inflight = gauge(
            "funcscale_worker_tasks_inflight",
            "Tasks running now",
            &["queue"],
        );
        let queue_last_minute = gauge(
            "funcscale_worker_queue_tasks_last_minute",
            "Queue-wide task counts in the last complete minute",
            &["queue", "kind"],
        );
        let queue_executing = gauge(
            "funcscale_worker_queue_tasks_executing",
            "Queue-wide tasks running now (all workers)",
            &["queue"],
        );
        let queue_depth = gauge(
            "funcscale_worker_queue_depth",
            "Tasks waiting in the queue (the same value on every worker)",
            &["queue"],
        );
        let queue_dead_letters = gauge(
            "funcscale_worker_queue_dead_letters",
            "Dead letters of the queue",
            &["queue"],
        );
        let outbox_pending = IntGauge::new(
            "funcscale_worker_outbox_pending",
            "Deliveries to destinations waiting in the outboxes of the worker's queues (and the namespace's outbox of earlier versions)",
        )
        .expect("valid metric");
        let outbox_parked = IntGauge::new(
            "funcscale_worker_outbox_parked",
            "Deliveries parked in those outboxes after their last attempt failed (or malformed)",
        )
        .expect("valid metric");
        let registry = Registry::new();
        let mut names = Vec::new();
        for c in [
            Box::new(started.clone()) as Box<dyn Collector>,
            Box::new(succeeded.clone()),
            Box::new(failed.clone()),
            Box::new(retried.clone()),
            Box::new(dead.clone()),
            Box::new(duration.clone()),
            Box::new(inflight.clone()),
            Box::new(queue_last_minute.clone()),
            Box::new(queue_executing.clone()),
            Box::new(queue_depth.clone()),
            Box::new(queue_dead_letters.clone()),
            Box::new(outbox_pending.clone()),
            Box::new(outbox_parked.clone()),
        ] {
            names.extend(series_names(c.as_ref()));
            registry.register(c).expect("unique metric");
        }
        Self {
            registry,
            queue_last_minute,
            queue_executing,
            queue_depth,
            queue_dead_letters,
            outbox_pending,
            outbox_parked,
            started,
            succeeded,
            failed,
            retried,
            dead,
            duration,
            inflight,
            names,
        }
    }

    /// The names of all metrics this registry exports, histograms with their `_bucket`,
    /// `_sum` and `_count` series (from the registered collectors: [`series_names`]).
    pub fn names(&self) -> Vec<String> {
        self.names.clone()
    }
}

/// The metric names `c` exports, with the series a histogram or summary adds to its name
/// (`_bucket`, `_sum`, `_count`), read from the collector itself so that no list is kept by hand.
pub fn series_names(c: &dyn Collector) -> Vec<String> {
    c.collect()
        .iter()
        .flat_map(|family| {
            let name = family.name();
            let suffixes: &[&str] = match family.get_field_type() {
                MetricType::HISTOGRAM => &["", "_bucket", "_sum", "_count"],
                MetricType::SUMMARY => &["", "_sum", "_count"],
                _ => &[""],
            };
            suffixes.iter().map(move |s| format!("{name}{s}"))
        })
        .collect()
}

impl From<Metrics> for Registry {
    fn from(m: Metrics) -> Self {
        m.registry
    }
}

/// Readiness of a worker or beat, in this order: not draining ([`set_draining`]), its pod not
/// marked for removal by a scale-down (`stop_mark` holds the mark's reason: workers only,
/// `funcscale_protocol::stop`), and Redis answering a `PING` within 1 s.
pub fn health(
    redis: funcscale_connect::Conn,
    stop_mark: Option<tokio::sync::watch::Receiver<Option<String>>>,
) -> Health {
    let mut h = Health::new();
    if let Some(mark) = stop_mark {
        h = h.with_probe(move || {
            let reason = mark.borrow().clone();
            async move {
                match reason {
                    Some(reason) => Err(format!(
                        "stopping: the pod is marked for removal ({reason}); running tasks finish, no new ones are taken"
                    )),
                    None => Ok(()),
                }
            }
        });
    }
    h.with_probe(move || {
        let mut con = redis.clone();
        async move {
            match tokio::time::timeout(
                Duration::from_secs(1),
                redis::cmd("PING").query_async::<String>(&mut con),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("redis: {e}")),
                Err(_) => Err("redis: timed out".into()),
            }
        }
    })
}

/// Mark the process as draining: `/readyz` answers 503 `not ready: draining` from now on.
pub fn set_draining(health: &Health) {
    health.set("draining", false, "draining");
}

/// Serve `/metrics`, `/healthz`, `/readyz` (and the aliases `/livez`, `/ready`) on `addr` until
/// the returned task is aborted ([`funcscale_http`]). Returns the bound address (useful with
/// port 0).
pub async fn serve(
    addr: SocketAddr,
    metrics: impl Into<Registry>,
    health: Health,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    funcscale_http::spawn(addr, metrics.into(), health).await
}

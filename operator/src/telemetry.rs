//! Prometheus metrics, readiness state and logging setup.

use prometheus::core::Collector;
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// The operator's metrics. Labels are bounded: controller, error category, and the
/// namespace/name of queues and pools (one series per object the operator manages).
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Reconciles by controller.
    pub reconciliations: IntCounterVec,
    /// Failed reconciles by controller and error category.
    pub failures: IntCounterVec,
    /// Reconcile duration by controller.
    pub reconcile_duration: HistogramVec,
    /// Objects the API server refused to apply (400, 422), by kind (`Deployment`,
    /// `ConfigMap`).
    pub apply_rejected: IntCounterVec,
    /// Tasks waiting per queue.
    pub queue_depth: IntGaugeVec,
    /// Age of the oldest waiting task per queue (0 when none waits; no series when the queue's
    /// format records no enqueue time).
    pub queue_oldest_age: GaugeVec,
    /// 1 while the queue's last Redis reading succeeded (its `MetricsAvailable` condition).
    pub queue_metrics_available: IntGaugeVec,
    /// 1 for the Redis `topology` and `node` a queue was last read from (for a cluster the
    /// master serving its keys, for Sentinel the master): one series per queue, set by
    /// [`Metrics::record_queue_redis`].
    pub queue_redis: IntGaugeVec,
    /// Desired replicas per pool.
    pub pool_desired: IntGaugeVec,
    /// Current replicas (of the Deployment) per pool.
    pub pool_current: IntGaugeVec,
    /// Ready replicas of a Beat pool's Deployment (0: no beat fires its schedules).
    pub beat_ready: IntGaugeVec,
    /// Duration of one poll of all Redis instances.
    pub redis_poll_duration: Histogram,
    /// Failed polls of one Redis instance.
    pub redis_poll_errors: IntCounter,
    /// 1 for the node each Redis instance was last read from, by instance (`redis`: its
    /// identity, no credentials), `topology` (`standalone`, `sentinel`, `cluster`) and `node`
    /// (`host:port`; for Sentinel the current master: a failover moves the 1 to a new series;
    /// for a cluster its seed nodes).
    pub redis_node: IntGaugeVec,
    /// Master switches (Sentinel failovers) the operator's connection to a Redis followed.
    pub redis_master_switches: IntCounterVec,
    /// 1 while this replica holds the leader lease.
    pub leader: IntGauge,
    /// The names of all registered metrics (see [`Metrics::names`]).
    names: Vec<String>,
    /// Per Redis instance: the topology, node and switch count of the last poll.
    nodes_seen: std::sync::Arc<std::sync::Mutex<NodesSeen>>,
    /// Per queue (namespace, name): the topology and node of its `queue_redis` series.
    queues_seen: std::sync::Arc<std::sync::Mutex<QueuesSeen>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Create and register all metrics.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciliations = IntCounterVec::new(
            Opts::new(
                "funcscale_reconciliations_total",
                "Reconciles by controller",
            ),
            &["controller"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "funcscale_reconcile_failures_total",
                "Failed reconciles by controller and error category",
            ),
            &["controller", "category"],
        )
        .expect("valid metric");
        let apply_rejected = IntCounterVec::new(
            Opts::new(
                "funcscale_apply_rejected_total",
                "Objects the API server refused to apply (400/422: the rendered object is wrong), by kind",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new("funcscale_reconcile_duration_seconds", "Reconcile duration")
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ]),
            &["controller"],
        )
        .expect("valid metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new("funcscale_queue_depth", "Tasks waiting in the queue"),
            &["namespace", "queue"],
        )
        .expect("valid metric");
        let queue_oldest_age = GaugeVec::new(
            Opts::new(
                "funcscale_queue_oldest_task_age_seconds",
                "Age of the oldest task waiting in the queue (0 when none waits)",
            ),
            &["namespace", "queue"],
        )
        .expect("valid metric");
        let queue_metrics_available = IntGaugeVec::new(
            Opts::new(
                "funcscale_queue_metrics_available",
                "1 when the queue's last Redis reading succeeded, 0 when it could not be read \
                 (its pools are held at their size)",
            ),
            &["namespace", "queue"],
        )
        .expect("valid metric");
        let queue_redis = IntGaugeVec::new(
            Opts::new(
                "funcscale_queue_redis_info",
                "1 for the Redis topology (standalone, sentinel, cluster) and node the queue was \
                 last read from (for a cluster: the master serving its keys)",
            ),
            &["namespace", "queue", "topology", "node"],
        )
        .expect("valid metric");
        let pool_desired = IntGaugeVec::new(
            Opts::new(
                "funcscale_pool_desired_replicas",
                "Replicas the operator wants for the pool",
            ),
            &["namespace", "pool"],
        )
        .expect("valid metric");
        let pool_current = IntGaugeVec::new(
            Opts::new(
                "funcscale_pool_replicas",
                "Replicas of the pool's Deployment",
            ),
            &["namespace", "pool"],
        )
        .expect("valid metric");
        let beat_ready = IntGaugeVec::new(
            Opts::new(
                "funcscale_beat_ready_replicas",
                "Ready replicas of the Beat pool's Deployment (0: schedules are not enqueued)",
            ),
            &["namespace", "pool"],
        )
        .expect("valid metric");
        let redis_poll_duration = Histogram::with_opts(
            HistogramOpts::new(
                "funcscale_redis_poll_duration_seconds",
                "Duration of one poll of all queues",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
            ]),
        )
        .expect("valid metric");
        let redis_poll_errors = IntCounter::new(
            "funcscale_redis_poll_errors_total",
            "Polls of a Redis instance that failed",
        )
        .expect("valid metric");
        let redis_node = IntGaugeVec::new(
            Opts::new(
                "funcscale_redis_node",
                "1 for the node a Redis instance was last read from (for Sentinel: its master)",
            ),
            &["redis", "topology", "node"],
        )
        .expect("valid metric");
        let redis_master_switches = IntCounterVec::new(
            Opts::new(
                "funcscale_redis_master_switches_total",
                "Master switches (Sentinel failovers) the operator's connection to a Redis followed",
            ),
            &["redis"],
        )
        .expect("valid metric");
        let leader = IntGauge::new(
            "funcscale_leader",
            "1 while this replica holds the leader lease",
        )
        .expect("valid metric");
        let mut names = Vec::new();
        for c in [
            Box::new(reconciliations.clone()) as Box<dyn Collector>,
            Box::new(failures.clone()),
            Box::new(reconcile_duration.clone()),
            Box::new(apply_rejected.clone()),
            Box::new(queue_depth.clone()),
            Box::new(queue_oldest_age.clone()),
            Box::new(queue_metrics_available.clone()),
            Box::new(queue_redis.clone()),
            Box::new(pool_desired.clone()),
            Box::new(pool_current.clone()),
            Box::new(beat_ready.clone()),
            Box::new(redis_poll_duration.clone()),
            Box::new(redis_poll_errors.clone()),
            Box::new(redis_node.clone()),
            Box::new(redis_master_switches.clone()),
            Box::new(leader.clone()),
        ] {
            names.extend(crate::metric_names::series_names(c.as_ref()));
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            reconciliations,
            failures,
            reconcile_duration,
            apply_rejected,
            queue_depth,
            queue_oldest_age,
            queue_metrics_available,
            queue_redis,
            pool_desired,
            pool_current,
            beat_ready,
            redis_poll_duration,
            redis_poll_errors,
            redis_node,
            redis_master_switches,
            leader,
            names,
            nodes_seen: Default::default(),
            queues_seen: Default::default(),
        }
    }

    /// Set `funcscale_queue_redis_info` of a queue to its Redis `topology` and `node` (the
    /// queue's series of an earlier node, before a failover or a slot migration, goes).
    pub fn record_queue_redis(&self, namespace: &str, queue: &str, topology: &str, node: &str) {
        let mut seen = self.queues_seen.lock().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_string(), queue.to_string());
        let now = (topology.to_string(), node.to_string());
        if let Some(old) = seen.get(&key)
            && *old != now
        {
            let _ = self
                .queue_redis
                .remove_label_values(&[namespace, queue, &old.0, &old.1]);
        }
        self.queue_redis
            .with_label_values(&[namespace, queue, topology, node])
            .set(1);
        seen.insert(key, now);
    }

    /// Remove every series of a queue that is gone (else they would report its last values
    /// forever).
    pub fn forget_queue(&self, namespace: &str, queue: &str) {
        let labels = [namespace, queue];
        let _ = self.queue_depth.remove_label_values(&labels);
        let _ = self.queue_oldest_age.remove_label_values(&labels);
        let _ = self.queue_metrics_available.remove_label_values(&labels);
        let mut seen = self.queues_seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((topology, node)) = seen.remove(&(namespace.to_string(), queue.to_string())) {
            let _ = self
                .queue_redis
                .remove_label_values(&[namespace, queue, &topology, &node]);
        }
    }

    /// Record which node answered for each Redis instance in a poll: an instance's old node
    /// series goes when a failover moved it (and no other connection to it still reads it);
    /// the switch counter adds the switches each connection followed since the last poll (a
    /// new connection counts from 0 again).
    pub fn record_nodes(&self, nodes: &[crate::redis_metrics::EndpointNode]) {
        let mut last = self.nodes_seen.lock().unwrap_or_else(|e| e.into_inner());
        for n in nodes {
            let now = (n.redis.clone(), n.topology, n.node.clone(), n.switches);
            let old = last.insert(n.endpoint.clone(), now);
            let added = match &old {
                Some((_, _, _, seen)) if n.switches >= *seen => n.switches - seen,
                _ => n.switches,
            };
            if added > 0 {
                self.redis_master_switches
                    .with_label_values(&[&n.redis])
                    .inc_by(added);
            }
            if let Some((redis, topology, node, _)) = old
                && (node != n.node || topology != n.topology)
                && !last
                    .values()
                    .any(|(r, t, o, _)| *r == redis && *t == topology && *o == node)
            {
                let _ =
                    self.redis_node
                        .remove_label_values(&[redis.as_str(), topology, node.as_str()]);
            }
            self.redis_node
                .with_label_values(&[&n.redis, n.topology, &n.node])
                .set(1);
        }
    }

    /// The names of all metrics this registry exports, histograms with their `_bucket`, `_sum`
    /// and `_count` series, read from the registered collectors. Alerts, dashboards and docs
    /// are checked against these (`operator/tests/monitoring.rs`).
    pub fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// Text exposition of all metrics.
    pub fn encode(&self) -> String {
        let mut buf = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut buf)
            .expect("metrics encode");
        buf
    }
}

/// Per connection (its endpoint, password hidden): the Redis identity, topology, node and
/// master switches of the last poll.
type NodesSeen = std::collections::HashMap<String, (String, &'static str, String, u64)>;

/// Per queue (namespace, name): the topology and node of its `funcscale_queue_redis_info` series.
type QueuesSeen = std::collections::HashMap<(String, String), (String, String)>;

/// The `/readyz` condition: the API server is reachable and the CRDs established.
/// Redis is not part of readiness: one tenant's unreachable Redis must not take the operator
/// out of its Service and its rollout for every other tenant (that Redis shows in its queues'
/// conditions and metrics instead).
pub const READY_API: &str = "api";
/// The `/readyz` condition: the controllers' watches run.
pub const READY_WATCHES: &str = "watches";

/// The operator's readiness ([`funcscale_http::Health`]): not ready (`starting`) until the API
/// is usable and the watches run.
pub fn health() -> funcscale_http::Health {
    funcscale_http::Health::starting(&[READY_API, READY_WATCHES], "starting")
}

/// Log format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Install the tracing subscriber (`RUST_LOG` filters, default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[cfg(test)]
mod node_tests {
    use super::*;
    use crate::redis_metrics::EndpointNode;

    /// `funcscale_queue_redis_info`: one series per queue, moved when its node changes,
    /// removed with the queue's other series.
    #[test]
    fn a_queues_redis_info_follows_its_node_and_goes_with_it() {
        let m = Metrics::new();
        m.record_queue_redis("team", "emails", "cluster", "10.0.0.1:7000");
        m.record_queue_redis("team", "other", "standalone", "redis:6379");
        m.queue_depth.with_label_values(&["team", "emails"]).set(3);
        let series = |text: &str| {
            text.lines()
                .filter(|l| l.starts_with("funcscale_queue_redis_info{"))
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            series(&m.encode()),
            [
                r#"funcscale_queue_redis_info{namespace="team",node="10.0.0.1:7000",queue="emails",topology="cluster"} 1"#,
                r#"funcscale_queue_redis_info{namespace="team",node="redis:6379",queue="other",topology="standalone"} 1"#,
            ]
        );
        // its slot moved to another master: the series moves
        m.record_queue_redis("team", "emails", "cluster", "10.0.0.2:7001");
        let text = m.encode();
        assert_eq!(
            series(&text),
            [
                r#"funcscale_queue_redis_info{namespace="team",node="10.0.0.2:7001",queue="emails",topology="cluster"} 1"#,
                r#"funcscale_queue_redis_info{namespace="team",node="redis:6379",queue="other",topology="standalone"} 1"#,
            ]
        );
        // the queue is deleted: none of its series stays
        m.forget_queue("team", "emails");
        let text = m.encode();
        assert!(
            !text
                .lines()
                .any(|l| !l.starts_with('#') && l.contains(r#"queue="emails""#)),
            "{text}"
        );
        assert_eq!(series(&text).len(), 1, "{text}");
    }

    fn node(node: &str, switches: u64) -> EndpointNode {
        EndpointNode {
            endpoint: "redis+sentinel://s1:26379/m/0".into(),
            redis: "sentinel:m@s1:26379/0".into(),
            topology: "sentinel",
            node: node.into(),
            switches,
        }
    }

    #[test]
    fn a_failover_moves_the_node_series_and_counts_the_switch() {
        let m = Metrics::new();
        m.record_nodes(&[node("10.0.0.1:6379", 0)]);
        m.record_nodes(&[node("10.0.0.2:6379", 1)]);
        let text = m.encode();
        assert!(
            text.contains(r#"funcscale_redis_node{node="10.0.0.2:6379",redis="sentinel:m@s1:26379/0",topology="sentinel"} 1"#),
            "{text}"
        );
        assert!(!text.contains("10.0.0.1:6379"), "{text}");
        assert!(
            text.contains(
                r#"funcscale_redis_master_switches_total{redis="sentinel:m@s1:26379/0"} 1"#
            ),
            "{text}"
        );
        // a new connection counts from 0 again: its switches add, the old ones stay counted
        m.record_nodes(&[node("10.0.0.2:6379", 0)]);
        m.record_nodes(&[node("10.0.0.1:6379", 1)]);
        assert!(
            m.encode().contains(
                r#"funcscale_redis_master_switches_total{redis="sentinel:m@s1:26379/0"} 2"#
            )
        );
        // two connections to one Redis (two credentials) with different switch counts: each
        // is counted once, not again at every poll
        let other = |n: &str, sw| EndpointNode {
            endpoint: "redis+sentinel://app@s1:26379/m/0".into(),
            ..node(n, sw)
        };
        for _ in 0..3 {
            m.record_nodes(&[node("10.0.0.1:6379", 1), other("10.0.0.1:6379", 0)]);
        }
        let text = m.encode();
        assert!(
            text.contains(
                r#"funcscale_redis_master_switches_total{redis="sentinel:m@s1:26379/0"} 2"#
            ),
            "{text}"
        );
    }
}

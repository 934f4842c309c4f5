//! What every reconcile shares: client, event recorder, metrics, configuration, the
//! reflector stores and the queue → pools index, the Redis metrics cache, per-pool policy
//! history and per-object backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use funcscale_protocol::Keys;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;

use crate::crd::{FuncQueue, FuncWorkerPool};
use crate::key_index::KeyIndex;
use crate::policy::History;
use crate::pool_index::PoolIndex;
use crate::redis_metrics::{MetricsCache, RedisEndpoint, Registry};
use crate::telemetry::Metrics;

/// Field manager of every server-side apply and status patch.
pub const FIELD_MANAGER: &str = "funcscale-operator";

/// Operator-wide settings (from the `run` flags).
#[derive(Clone, Debug)]
pub struct Config {
    /// Image of worker and beat pods when a pool sets none.
    pub worker_image: String,
    /// Redis of queues without `spec.redis`.
    pub default_redis: RedisEndpoint,
    /// Secret (in each pool's namespace) holding the default Redis URL for the pods, when
    /// that URL carries a password.
    pub worker_redis_secret: Option<crate::crd::SecretKeyRef>,
    /// Redis key prefix shared with the workers.
    pub keys: Keys,
    /// Period P of the cron-load formula for queues' static schedules (ms).
    pub period_ms: u64,
    /// How often a healthy object is reconciled anyway.
    pub resync: Duration,
    /// Unchanged queue settings (retention, destinations) are written to Redis again after
    /// this long, in case Redis lost them (flushed, restarted without persistence).
    pub queue_config_refresh: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            worker_image: default_worker_image(),
            default_redis: RedisEndpoint::new("redis://127.0.0.1:6379/0"),
            worker_redis_secret: None,
            keys: Keys::default(),
            period_ms: crate::policy::DEFAULT_PERIOD_MS,
            resync: Duration::from_secs(60),
            queue_config_refresh: Duration::from_secs(300),
        }
    }
}

/// `ghcr.io/funcscale/funcscale-worker:<operator version>`.
pub fn default_worker_image() -> String {
    format!(
        "ghcr.io/funcscale/funcscale-worker:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Wall clock in unix ms (tests substitute their own).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    })
}

/// RFC 3339 text of a unix-ms time.
pub fn rfc3339(ms: u64) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(ms as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Per-object failure counts for exponential backoff.
#[derive(Default)]
pub struct Backoff(Mutex<HashMap<String, u32>>);

impl Backoff {
    /// Record a failure of `key`; returns the delay before the next attempt
    /// (1 s, 2 s, 4 s, ... up to 5 min).
    pub fn failed(&self, key: &str) -> Duration {
        let mut m = self.0.lock().expect("backoff lock");
        let n = m.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }
    /// Forget the failures of `key` after a success.
    pub fn succeeded(&self, key: &str) {
        self.0.lock().expect("backoff lock").remove(key);
    }
}

/// Shared state of the controllers.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Event recorder (one for the operator).
    pub recorder: Recorder,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Settings.
    pub config: Config,
    /// All FuncQueues the operator watches.
    pub queues: Store<FuncQueue>,
    /// All FuncWorkerPools the operator watches.
    pub pools: Store<FuncWorkerPool>,
    /// The pools serving each queue, written from the same events as `pools`.
    pub index: PoolIndex,
    /// The queues that could share each queue's keys, written from the same events as
    /// `queues`.
    pub key_index: KeyIndex,
    /// Queues the Redis poller reads.
    pub registry: Registry,
    /// Last Redis readings.
    pub cache: MetricsCache,
    /// Policy history per pool (`namespace/name`).
    pub histories: Mutex<HashMap<String, History>>,
    /// Per-object backoff.
    pub backoff: Backoff,
    /// Per pool: hash of the last applied objects and the Deployment generation the apply
    /// produced. Unchanged hash and generation mean nothing to apply (saves a PATCH per
    /// poll-triggered reconcile); any edit by someone else bumps the generation.
    pub applied: Mutex<HashMap<String, (u64, Option<i64>)>>,
    /// Per queue: the settings last written to its Redis; one connection per endpoint.
    pub queue_configs: crate::queue_config::writes::QueueConfigs,
    /// Secrets the queues' connections reference, reused for a minute.
    pub secrets: crate::connection::SecretCache,
    /// Scale-downs waiting for the pods they remove to stop taking tasks.
    pub scale_downs: crate::pool::scale_down_state::ScaleDowns,
    /// Wall clock.
    pub clock: Clock,
}

impl Context {
    /// A context with fresh metrics, registry, cache and history.
    pub fn new(
        client: Client,
        config: Config,
        metrics: Metrics,
        queues: Store<FuncQueue>,
        pools: Store<FuncWorkerPool>,
        clock: Clock,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: None,
            },
        );
        let key_index = KeyIndex::new(config.keys.clone());
        Self {
            client,
            recorder,
            metrics,
            config,
            queues,
            pools,
            index: PoolIndex::default(),
            key_index,
            registry: Registry::default(),
            cache: MetricsCache::default(),
            histories: Mutex::new(HashMap::new()),
            backoff: Backoff::default(),
            applied: Mutex::new(HashMap::new()),
            queue_configs: Default::default(),
            secrets: Default::default(),
            scale_downs: Default::default(),
            clock,
        }
    }

    /// Now, unix ms.
    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_per_object_and_resets() {
        let b = Backoff::default();
        assert_eq!(b.failed("a"), Duration::from_secs(1));
        assert_eq!(b.failed("a"), Duration::from_secs(2));
        assert_eq!(b.failed("b"), Duration::from_secs(1));
        for _ in 0..20 {
            b.failed("a");
        }
        assert_eq!(b.failed("a"), Duration::from_secs(256));
        b.succeeded("a");
        assert_eq!(b.failed("a"), Duration::from_secs(1));
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}

//! What both controllers share ([`Shared`]: client, event recorder, metrics, configuration,
//! the FuncQueue store, the pool and key indexes, the poller's registry and cache, the Secret cache, the clock), the per-object
//! [`Backoff`] and the one [`error_policy`]. Each controller keeps its own state in its own
//! context ([`crate::queue::Context`], [`crate::pool::Context`]); this module depends on
//! neither controller.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use funcscale_protocol::Keys;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};

use crate::connection::SecretCache;
use crate::crd::FuncQueue;
use crate::error::{Error, Result};
use crate::key_index::KeyIndex;
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
    /// Secret (in each pool's namespace) holding the password the sentinels of the default
    /// Redis (a `redis+sentinel://` URL) require, for the pods; with the key of the sentinels'
    /// ACL username in the same Secret, if they require one.
    pub worker_redis_sentinel_secret: Option<(crate::crd::SecretKeyRef, Option<String>)>,
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
            worker_redis_sentinel_secret: None,
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

/// Per-object failure counts for exponential backoff, keyed by a typed object key.
pub struct Backoff<K>(Mutex<HashMap<K, u32>>);

impl<K> Default for Backoff<K> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<K: Hash + Eq + Clone> Backoff<K> {
    /// Record a failure of `key`; returns the delay before the next attempt
    /// (1 s, 2 s, 4 s, ... up to 5 min).
    pub fn failed(&self, key: &K) -> Duration {
        let mut m = self.0.lock().expect("backoff lock");
        let n = m.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }
    /// Forget the failures of `key` after a success.
    pub fn succeeded(&self, key: &K) {
        self.0.lock().expect("backoff lock").remove(key);
    }
}

/// The typed key of a namespaced object (what the stores, the backoff and the per-object
/// memories are keyed by).
pub fn object_key<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> ObjectRef<K> {
    ObjectRef::new(name).within(namespace)
}

/// `namespace/name` of a key, for logs.
pub fn key_text<K: Resource<DynamicType = ()>>(key: &ObjectRef<K>) -> String {
    format!(
        "{}/{}",
        key.namespace.as_deref().unwrap_or_default(),
        key.name
    )
}

/// What both controllers share: the client, the one event recorder, metrics, settings, the
/// FuncQueue store, the pool and key indexes, the poller's registry and readings, the Secret cache and the clock. Each controller's own
/// state is in its context ([`crate::queue::Context`], [`crate::pool::Context`]).
pub struct Shared {
    /// Kubernetes client.
    pub client: Client,
    /// Event recorder (one for the operator).
    pub recorder: Recorder,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Settings.
    pub config: Config,
    /// All FuncQueues the operator watches (the queue controller's objects, and what pools
    /// point at).
    pub queues: Store<FuncQueue>,
    /// The pools serving each queue, written from the pool watch events (a queue's
    /// consumers, a pool's neighbours on a queue, the pools a queue change wakes).
    pub index: PoolIndex,
    /// The queues that could share each queue's keys, written from the queue watch events
    /// (queues and pools refuse such queues).
    pub key_index: KeyIndex,
    /// Queues the Redis poller reads, with their endpoints (the queue controller registers
    /// them; a pool's scale-down reaches its queues' Redis through it).
    pub registry: Registry,
    /// Last Redis readings (the poller writes, both controllers read).
    pub cache: MetricsCache,
    /// Secrets the queues' connections reference, reused for a minute.
    pub secrets: SecretCache,
    /// Wall clock.
    pub clock: Clock,
}

impl Shared {
    /// Shared state with a fresh recorder, cache and Secret cache.
    pub fn new(
        client: Client,
        config: Config,
        metrics: Metrics,
        queues: Store<FuncQueue>,
        clock: Clock,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: None,
            },
        );
        Self {
            key_index: KeyIndex::new(config.keys.clone()),
            client,
            recorder,
            metrics,
            config,
            queues,
            index: PoolIndex::default(),
            registry: Registry::default(),
            cache: MetricsCache::default(),
            secrets: SecretCache::default(),
            clock,
        }
    }

    /// Now, unix ms.
    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// Resolve the Redis endpoint of `q` (of namespace `ns`), reading Secrets when referenced.
    pub async fn endpoint(&self, q: &FuncQueue, ns: &str) -> Result<RedisEndpoint> {
        crate::connection::resolve(
            self.client.clone(),
            &q.spec,
            ns,
            &self.config.default_redis,
            &self.secrets,
            self.now_ms(),
        )
        .await
    }

    /// Which Redis `q` (of namespace `ns`) uses, its Secrets read
    /// ([`RedisEndpoint::identity`]); the spec's own identity when they cannot be read.
    pub async fn redis_identity(&self, q: Arc<FuncQueue>, ns: String) -> String {
        match self.endpoint(&q, &ns).await {
            Ok(e) => e.identity(),
            Err(_) => crate::crd_ext::queue_redis_identity(&q, &ns),
        }
    }
}

/// What the one [`error_policy`] needs of a controller's context.
pub trait ControllerContext {
    /// The reconciled kind.
    type Object: Resource<DynamicType = ()>;
    /// The controller's name: the `controller` label of the metrics, and in logs.
    const CONTROLLER: &'static str;
    /// The state both controllers share.
    fn shared(&self) -> &Shared;
    /// The controller's per-object backoff.
    fn backoff(&self) -> &Backoff<ObjectRef<Self::Object>>;
}

/// Errors back off per object (1 s, 2 s, 4 s, ... 5 min); never a hot loop. Counted in
/// `funcscale_reconcile_failures_total` by controller and error category.
pub fn error_policy<C: ControllerContext>(obj: Arc<C::Object>, err: &Error, ctx: Arc<C>) -> Action {
    ctx.shared()
        .metrics
        .failures
        .with_label_values(&[C::CONTROLLER, err.category()])
        .inc();
    let key = object_key::<C::Object>(&obj.namespace().unwrap_or_default(), &obj.name_any());
    let delay = ctx.backoff().failed(&key);
    tracing::warn!(controller = C::CONTROLLER, object = %key_text(&key), error = %err, category = err.category(), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_per_object_and_resets() {
        let b = Backoff::<ObjectRef<FuncQueue>>::default();
        let (a, other) = (object_key("ns", "a"), object_key("ns", "b"));
        assert_eq!(b.failed(&a), Duration::from_secs(1));
        assert_eq!(b.failed(&a), Duration::from_secs(2));
        assert_eq!(b.failed(&other), Duration::from_secs(1));
        assert_eq!(b.failed(&object_key("other", "a")), Duration::from_secs(1));
        for _ in 0..20 {
            b.failed(&a);
        }
        assert_eq!(b.failed(&a), Duration::from_secs(256));
        b.succeeded(&a);
        assert_eq!(b.failed(&a), Duration::from_secs(1));
        assert_eq!(key_text(&a), "ns/a");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}

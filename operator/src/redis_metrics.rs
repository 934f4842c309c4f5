//! The Redis metrics reader: depth, oldest-task age, arrival and completion rates, measured
//! task time (T), scheduled executions per period (M), retries waiting and due, and the tasks
//! running now of every registered queue.
//!
//! All queues on one Redis instance are read in **one pipelined round trip** per poll
//! ([`Poller::poll_once`]); instances are polled concurrently. Results land in a shared
//! [`MetricsCache`] that the reconcilers read; [`Poller::poll_once`] returns the queues whose
//! numbers changed so the caller can trigger the pools that serve them.
//!
//! Key names, the layouts of the foreign formats and M come from `funcscale_protocol` only.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use funcscale_protocol::connection::AuthFailure;
use funcscale_protocol::foreign::{self, sidekiq_enqueued_ms};
use funcscale_protocol::{Envelope, Keys, QueueStats, cron};
use redis::Value;

use crate::crd::{FuncQueue, FuncQueueSpec, QueueFormat};

/// A queue: namespace and name of its `FuncQueue`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl QueueId {
    /// New id.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for QueueId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A Redis endpoint with its credentials: a URL, and a username and password given apart from
/// it (from the FuncQueue's Secrets), which replace the URL's
/// ([`funcscale_protocol::connection`]). `Debug`/`Display` never show the password.
/// Behind an `Arc`: small to clone and to carry in errors.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RedisEndpoint(Arc<Credentials>);

#[derive(PartialEq, Eq, Hash)]
struct Credentials {
    url: String,
    username: Option<String>,
    password: Option<String>,
    /// The sentinels' own login, for a `redis+sentinel://` URL.
    sentinel_username: Option<String>,
    sentinel_password: Option<String>,
}

impl RedisEndpoint {
    /// From a full URL (may carry user and password, `rediss://` for TLS).
    pub fn new(url: impl Into<String>) -> Self {
        Self(Arc::new(Credentials {
            url: url.into(),
            username: None,
            password: None,
            sentinel_username: None,
            sentinel_password: None,
        }))
    }

    /// From a URL (without password, maybe with a username) plus a password.
    pub fn with_password(url: &str, password: &str) -> Self {
        Self::with_credentials(url, None, Some(password))
    }

    /// From a URL plus a username and a password given apart (each replaces the URL's when set
    /// and not empty; a trailing newline is dropped).
    pub fn with_credentials(url: &str, username: Option<&str>, password: Option<&str>) -> Self {
        use funcscale_protocol::connection::given;
        Self(Arc::new(Credentials {
            url: url.to_string(),
            username: given(username).map(str::to_string),
            password: given(password).map(str::to_string),
            sentinel_username: None,
            sentinel_password: None,
        }))
    }

    /// The same endpoint with the login of the sentinels of a `redis+sentinel://` URL (each
    /// ignored when not set or empty).
    pub fn with_sentinel_credentials(self, username: Option<&str>, password: Option<&str>) -> Self {
        use funcscale_protocol::connection::given;
        let c = &self.0;
        Self(Arc::new(Credentials {
            url: c.url.clone(),
            username: c.username.clone(),
            password: c.password.clone(),
            sentinel_username: given(username).map(str::to_string),
            sentinel_password: given(password).map(str::to_string),
        }))
    }

    /// Whether the sentinels' own password is set (it never goes into a pod spec either).
    pub fn has_sentinel_password(&self) -> bool {
        self.0.sentinel_password.is_some()
    }

    /// The URL as given (it may carry credentials: never log it, log the endpoint).
    pub fn url(&self) -> &str {
        &self.0.url
    }

    /// What to connect to: the URL with the credentials given apart (one server, or a
    /// Sentinel set's master).
    pub fn target(
        &self,
    ) -> Result<funcscale_protocol::connection::Target, funcscale_protocol::connection::InvalidUrl>
    {
        funcscale_protocol::connection::target(
            &self.0.url,
            funcscale_protocol::connection::Credentials {
                username: self.0.username.as_deref(),
                password: self.0.password.as_deref(),
                sentinel_username: self.0.sentinel_username.as_deref(),
                sentinel_password: self.0.sentinel_password.as_deref(),
            },
        )
    }

    /// `standalone`, `sentinel` or `cluster` (`standalone` when the URL does not parse).
    pub fn topology(&self) -> &'static str {
        self.target().map_or("standalone", |t| t.topology())
    }

    /// The data nodes' database, username and password.
    pub fn redis_settings(
        &self,
    ) -> Result<redis::RedisConnectionInfo, funcscale_protocol::connection::InvalidUrl> {
        Ok(match self.target()? {
            funcscale_protocol::connection::Target::Node(info) => info.redis_settings().clone(),
            funcscale_protocol::connection::Target::Sentinel(s) => s.node,
            funcscale_protocol::connection::Target::Cluster(c) => c.node,
        })
    }

    /// Whether a password is given, apart or in the URL.
    pub fn has_password(&self) -> bool {
        self.0.password.is_some()
            || self
                .0
                .url
                .split_once("://")
                .and_then(|(_, rest)| rest.rsplit_once('@'))
                .is_some_and(|(user, _)| user.contains(':'))
    }

    /// Which Redis database this is, whatever the URL's spelling and credentials:
    /// `host:port/db` (the host lowercased; a socket path as is), for a Sentinel set
    /// `sentinel:<master>@<sentinels>/db`, or the redacted URL when it does not parse. Two
    /// queues whose Secrets hold URLs of one server and database have one identity. (Two host
    /// names of one server — a DNS alias, an IP — are not known to be one.)
    pub fn identity(&self) -> String {
        match self.target() {
            Ok(t) => t.identity(),
            Err(_) => self.redacted(),
        }
    }

    /// `host:port` of the endpoint, or `master <name> via sentinels ...` (for messages), or
    /// the redacted URL when it does not parse.
    pub fn node(&self) -> String {
        match self.target() {
            Ok(t) => t.describe(),
            Err(_) => self.redacted(),
        }
    }

    /// The URL without the password, for logs and status.
    pub fn redacted(&self) -> String {
        match self.0.url.split_once("://") {
            Some((scheme, rest)) => {
                let (url_user, host) = match rest.rsplit_once('@') {
                    Some((user, host)) => (Some(user.split(':').next().unwrap_or_default()), host),
                    None => (None, rest),
                };
                let user = self.0.username.as_deref().or(url_user);
                match (user, self.has_password()) {
                    (_, true) => format!("{scheme}://{}:***@{host}", user.unwrap_or_default()),
                    (Some(user), false) => format!("{scheme}://{user}@{host}"),
                    (None, false) => self.0.url.clone(),
                }
            }
            None => "<invalid url>".into(),
        }
    }
}

impl std::fmt::Debug for RedisEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Display for RedisEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Why a Redis endpoint could not be read or written. The messages are the ones queue
/// conditions show; the Redis error stays attached as the source.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The endpoint's URL does not parse.
    #[error("invalid Redis URL {endpoint}: {source}")]
    InvalidUrl {
        /// The endpoint (password hidden).
        endpoint: RedisEndpoint,
        /// Why.
        #[source]
        source: funcscale_protocol::connection::InvalidUrl,
    },
    /// Redis refused the credentials (`NOAUTH`, `WRONGPASS`) or the ACL user's rights
    /// (`NOPERM`).
    #[error(
        "Redis at {node} {}: check the queue's spec.redis (the Secret of passwordSecretRef, the user in url, or the URL in urlSecretRef) or, for queues without spec.redis, the operator's --redis-url",
        why.describe()
    )]
    Auth {
        /// `host:port`.
        node: String,
        /// What Redis said.
        why: AuthFailure,
        /// The Redis error.
        #[source]
        source: redis::RedisError,
    },
    /// No connection within the connect timeout.
    #[error("cannot connect to {endpoint}: timed out")]
    ConnectTimeout {
        /// The endpoint (password hidden).
        endpoint: RedisEndpoint,
    },
    /// The connection failed.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint (password hidden).
        endpoint: RedisEndpoint,
        /// Why.
        #[source]
        source: redis::RedisError,
    },
    /// No answer within the response timeout.
    #[error("no answer within {0:?}")]
    ResponseTimeout(Duration),
    /// A command failed.
    #[error("{0}")]
    Command(#[source] redis::RedisError),
    /// A command failed on this node (a poll: the node is named, e.g. the master a Sentinel
    /// set had when the connection dropped).
    #[error("Redis at {node}: {source}")]
    AtNode {
        /// `host:port` (for Sentinel, with the master's name and the sentinels).
        node: String,
        /// Why.
        #[source]
        source: redis::RedisError,
    },
    /// No answer from this node within the response timeout.
    #[error("no answer from Redis at {node} within {timeout:?}")]
    NodeTimeout {
        /// `host:port`.
        node: String,
        /// The response timeout.
        timeout: Duration,
    },
    /// A reply that is not what the protocol says.
    #[error("{0}")]
    Reply(String),
}

impl RedisError {
    /// An error from `endpoint`: [`RedisError::Auth`] when Redis refused the credentials, else
    /// what `other` makes of it.
    pub fn classify(
        endpoint: &RedisEndpoint,
        source: redis::RedisError,
        other: impl FnOnce(redis::RedisError) -> RedisError,
    ) -> RedisError {
        match funcscale_protocol::connection::auth_failure(&source) {
            Some(why) => RedisError::Auth {
                node: endpoint.node(),
                why,
                source,
            },
            None => other(source),
        }
    }

    /// A command's error `source` on `node`: [`RedisError::Auth`] when Redis refused the
    /// credentials or the ACL user's rights, else [`RedisError::AtNode`].
    pub fn classify_at(node: String, source: redis::RedisError) -> RedisError {
        match funcscale_protocol::connection::auth_failure(&source) {
            Some(why) => RedisError::Auth { node, why, source },
            None => RedisError::AtNode { node, source },
        }
    }

    /// The reason a queue's conditions give for this error.
    pub fn reason(&self) -> UnavailableReason {
        match self {
            RedisError::Auth { .. } => UnavailableReason::AuthFailed,
            _ => UnavailableReason::Unreachable,
        }
    }
}

/// Why a queue's Redis could not be read, as the reason of its conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UnavailableReason {
    /// Unreachable, timed out, or an unexpected reply: `RedisUnavailable`.
    #[default]
    Unreachable,
    /// Redis refused the credentials or the ACL user's rights: `RedisAuthFailed`.
    AuthFailed,
    /// This queue's key holds another type than its format reads (the other queues of that
    /// Redis are read): `WrongKeyType`.
    WrongKeyType,
}

impl UnavailableReason {
    /// The condition reason.
    pub fn as_str(self) -> &'static str {
        match self {
            UnavailableReason::Unreachable => "RedisUnavailable",
            UnavailableReason::AuthFailed => "RedisAuthFailed",
            UnavailableReason::WrongKeyType => "WrongKeyType",
        }
    }
}

/// How the oldest waiting task's age is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OldestTask {
    /// funcscale envelope at the right end (`enqueued_at_ms`).
    FuncscaleRight,
    /// Sidekiq job JSON at the right end (`enqueued_at`, seconds or ms).
    SidekiqRight,
    /// RQ job id at the left end (RQ pushes right, pops left); its job hash holds
    /// `enqueued_at` (UTC, RFC 3339), read by [`foreign::rq_oldest_cmd`] in the same pipeline.
    RqLeft,
    /// Celery messages at the right end of every priority list (kombu pushes left, pops
    /// right): the earliest `funcscale_enqueued_ms` header of their tails (set by the
    /// `funcscale-celery` integration at publish; without it the age is unknown).
    CeleryHeader,
    /// A Redis Stream read by a consumer group: the time part of the first undelivered
    /// entry's id (read with the lag by [`foreign::stream_group_cmd`]).
    StreamId,
}

/// What to read for one queue.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueTarget {
    /// Where the queue lives.
    pub endpoint: RedisEndpoint,
    /// Lists whose lengths sum to the depth.
    pub lists: Vec<String>,
    /// How to read the oldest task (from `lists[0]`; from every list for Celery).
    pub oldest: OldestTask,
    /// Stats hash the workers publish.
    pub stats_key: String,
    /// Dynamic schedules' executions per minute (the registry's M).
    pub per_period_key: String,
    /// The period (ms) M is counted over.
    pub period_ms: u64,
    /// Executions per minute of the queue's `spec.schedules` (exact: summed, not rounded).
    pub static_per_minute: f64,
    /// `spec.taskTimeMs`, used until workers have measured T.
    pub task_time_hint_ms: f64,
    /// Retries waiting (zset scored by due time, ms), where the format has one.
    pub delayed_key: Option<String>,
    /// Tasks running now (zset of in-flight lists, `Keys::running`), where the format has one.
    pub running_key: Option<String>,
    /// The queue's outbox (`Keys::queue_outbox`, zset by due time) of deliveries to its
    /// destinations, which only its workers make (funcscale format).
    pub outbox_key: Option<String>,
    /// Celery: kombu's `unacked` hash and the queue name its entries are routed by; the
    /// entries of this queue are its tasks delivered to workers and not acknowledged.
    pub celery_unacked: Option<(String, String)>,
    /// Stream: the consumer group of the stream `lists[0]`; its lag is the depth, its
    /// pending entries the running tasks.
    pub stream_group: Option<String>,
}

impl QueueTarget {
    /// The target of a `FuncQueue`: list keys by format, stats and M keys by queue name.
    pub fn for_queue(
        q: &FuncQueue,
        name: &str,
        endpoint: RedisEndpoint,
        keys: &Keys,
        period_ms: u64,
    ) -> Self {
        let spec = &q.spec;
        let (lists, oldest) = queue_lists(spec, name, keys);
        // funcscale workers keep retries and running tasks per queue name
        let own = spec.format == QueueFormat::Funcscale;
        // one rounding rule for both halves of M: rates summed exactly, rounded once
        // (`QueueMetrics::scheduled_per_period`); an invalid cron is refused by validation
        let static_per_minute = spec
            .schedules
            .iter()
            .filter_map(|s| cron::Cron::parse(&s.cron).ok())
            .map(|c| c.per_minute())
            .sum();
        Self {
            endpoint,
            lists,
            oldest,
            stats_key: keys.stats(name),
            per_period_key: keys.schedules_per_period(name),
            period_ms,
            static_per_minute,
            task_time_hint_ms: spec.task_time_ms as f64,
            delayed_key: own.then(|| keys.delayed(name)),
            running_key: own.then(|| keys.running(name)),
            outbox_key: own.then(|| keys.queue_outbox(name)),
            celery_unacked: (spec.format == QueueFormat::Celery).then(|| {
                let t = spec.celery.clone().unwrap_or_default();
                (
                    celery_layout(&t).unacked_key(),
                    spec.key.clone().unwrap_or_else(|| name.to_string()),
                )
            }),
            stream_group: (spec.format == QueueFormat::Stream)
                .then(|| spec.stream.as_ref().map(|s| s.group.clone()))
                .flatten(),
        }
    }
}

/// kombu's layout of a FuncQueue's Celery transport options.
pub fn celery_layout(t: &crate::crd::CeleryTransport) -> foreign::CeleryLayout<'_> {
    foreign::CeleryLayout {
        priority_steps: &t.priority_steps,
        sep: &t.separator,
        global_keyprefix: &t.global_keyprefix,
        unacked_key: &t.unacked_key,
    }
}

/// The Redis lists holding a queue's waiting tasks, by format (what that system calls depth):
/// `name` is the queue's id. A Celery queue's name is `spec.key` (else the FuncQueue's
/// name), its lists those of every priority step of `spec.celery` (kombu's defaults unset).
pub fn queue_lists(spec: &FuncQueueSpec, name: &str, keys: &Keys) -> (Vec<String>, OldestTask) {
    let key = spec.key.as_deref();
    match spec.format {
        QueueFormat::Funcscale => (
            vec![key.map_or_else(|| keys.queue(name), str::to_string)],
            OldestTask::FuncscaleRight,
        ),
        QueueFormat::Celery => {
            let t = spec.celery.clone().unwrap_or_default();
            (
                celery_layout(&t).queue_keys(key.unwrap_or(name)),
                OldestTask::CeleryHeader,
            )
        }
        QueueFormat::Rq => (
            vec![key.map_or_else(|| foreign::rq_queue_key(name), str::to_string)],
            OldestTask::RqLeft,
        ),
        QueueFormat::Sidekiq => (
            vec![key.map_or_else(|| foreign::sidekiq_queue_key(name), str::to_string)],
            OldestTask::SidekiqRight,
        ),
        QueueFormat::Stream => (vec![key.unwrap_or(name).to_string()], OldestTask::StreamId),
    }
}

/// What the reader last measured for a queue.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct QueueMetrics {
    /// Tasks waiting.
    pub depth: u64,
    /// Age of the oldest waiting task in seconds, when the format records it.
    pub oldest_age_seconds: Option<f64>,
    /// Tasks enqueued per second (over the last ~10 s).
    pub arrival_rate: f64,
    /// The part of `arrival_rate` that came as a one-off burst (ρ): the arrivals above the
    /// window's median per-poll rate (with fewer than three polls in the window: the rise of
    /// the backlog to its peak). Those tasks are counted in the backlog, so sizing takes
    /// them out of the arrivals (a burst is not counted twice). Negative when the rate rose
    /// within the window: the pool then keeps up with the new, median rate.
    pub one_off_rate: f64,
    /// Tasks completed per second (over the last ~10 s).
    pub completion_rate: f64,
    /// Measured task time (ms), else the hint.
    pub task_time_ms: f64,
    /// Whether `task_time_ms` was measured by workers.
    pub task_time_measured: bool,
    /// Tasks running now: read from the queue's running set (funcscale format) or, for
    /// Celery, the tasks delivered to workers and not acknowledged (kombu's `unacked` hash:
    /// running, or prefetched by a worker), for a Stream the group's pending entries
    /// (delivered, not acknowledged); else estimated as completion rate × T (Little's law).
    pub in_flight: u64,
    /// Whether `in_flight` was read (else estimated).
    pub in_flight_measured: bool,
    /// Whether the queue has a delayed set that was read (funcscale format).
    pub retries_read: bool,
    /// Retries waiting in the delayed set (due or not).
    pub retries_waiting: u64,
    /// Retries whose due time has passed (not yet moved to the queue by a worker): backlog.
    pub retries_due: u64,
    /// Deliveries to the queue's destinations (URLs, other queues) due in its outbox and not
    /// made yet: backlog, since only the queue's workers make them (a pool at zero wakes).
    pub deliveries_due: u64,
    /// When the earliest waiting retry is due (unix ms).
    pub next_retry_due_ms: Option<u64>,
    /// Scheduled executions per period (the operator's, 60 s): static schedules + the dynamic
    /// registry, their rates summed and rounded up once.
    pub scheduled_per_period: u64,
    /// The same per minute, exact (pools convert it to their own `periodMs`).
    pub scheduled_per_minute: f64,
    /// When the numbers were read (unix ms).
    pub polled_at_ms: u64,
    /// Read, but what was read is not the queue a user expects: (reason, message) of the
    /// queue's `Ready=False` (a Stream whose stream or consumer group does not exist).
    pub not_ready: Option<(&'static str, String)>,
    /// `depth` is a lower bound (a Stream's lag Redis could not give and too long to count).
    pub depth_lower_bound: bool,
    /// The queue's Redis topology: `standalone` or `sentinel`.
    pub topology: &'static str,
    /// `host:port` of the node the reading came from (for Sentinel, the master then).
    pub node: String,
}

/// The last reading of a queue.
#[derive(Clone, Debug, PartialEq)]
pub enum Reading {
    /// Read fine.
    Ok(QueueMetrics),
    /// Its Redis could not be read.
    Unavailable {
        /// Why.
        error: String,
        /// Why, as a condition reason.
        reason: UnavailableReason,
        /// Since when (unix ms).
        since_ms: u64,
    },
}

/// Registered queues (written by the queue reconciler, read by the poller).
#[derive(Clone, Default)]
pub struct Registry(Arc<RwLock<BTreeMap<QueueId, QueueTarget>>>);

impl Registry {
    /// Register or update a queue. Returns whether it changed.
    pub fn upsert(&self, id: QueueId, target: QueueTarget) -> bool {
        let mut m = self.0.write().expect("registry lock");
        if m.get(&id) == Some(&target) {
            return false;
        }
        m.insert(id, target);
        true
    }
    /// Forget a queue.
    pub fn remove(&self, id: &QueueId) {
        self.0.write().expect("registry lock").remove(id);
    }
    /// Keep only the queues for which `keep` is true.
    pub fn retain(&self, mut keep: impl FnMut(&QueueId) -> bool) {
        self.0
            .write()
            .expect("registry lock")
            .retain(|k, _| keep(k));
    }
    /// Snapshot of all targets.
    pub fn snapshot(&self) -> Vec<(QueueId, QueueTarget)> {
        self.0
            .read()
            .expect("registry lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
    /// One target.
    pub fn get(&self, id: &QueueId) -> Option<QueueTarget> {
        self.0.read().expect("registry lock").get(id).cloned()
    }
    /// Number of registered queues.
    pub fn len(&self) -> usize {
        self.0.read().expect("registry lock").len()
    }
    /// Whether no queue is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Last readings, shared with the reconcilers.
#[derive(Clone, Default)]
pub struct MetricsCache(Arc<RwLock<HashMap<QueueId, Reading>>>);

impl MetricsCache {
    /// The last reading of a queue (`None`: not polled yet).
    pub fn get(&self, id: &QueueId) -> Option<Reading> {
        self.0.read().expect("cache lock").get(id).cloned()
    }
    /// Store a reading (tests and the poller).
    pub fn set(&self, id: QueueId, r: Reading) {
        self.0.write().expect("cache lock").insert(id, r);
    }
    fn retain(&self, keep: impl Fn(&QueueId) -> bool) {
        self.0.write().expect("cache lock").retain(|k, _| keep(k));
    }
}

/// Outcome of one poll.
#[derive(Debug, Default)]
pub struct PollReport {
    /// Queues whose metrics or availability changed.
    pub changed: Vec<QueueId>,
    /// Instances that could not be read, with the error.
    pub errors: Vec<(RedisEndpoint, String)>,
    /// Instances read fine.
    pub ok_endpoints: usize,
    /// Queues read.
    pub queues: usize,
    /// The node each instance read fine was read from.
    pub nodes: Vec<EndpointNode>,
}

/// Which node answered for a Redis instance in a poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointNode {
    /// The connection's endpoint (password hidden): one per URL and credentials.
    pub endpoint: String,
    /// The instance's identity ([`RedisEndpoint::identity`]: no credentials).
    pub redis: String,
    /// `standalone` or `sentinel`.
    pub topology: &'static str,
    /// `host:port` of the node (for Sentinel, the current master).
    pub node: String,
    /// Master switches (Sentinel failovers) the operator's connection followed.
    pub switches: u64,
}

/// Poller configuration.
#[derive(Clone, Debug)]
pub struct PollerConfig {
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of one pipelined round trip.
    pub response_timeout: Duration,
    /// Window over which rates are averaged.
    pub rate_window: Duration,
    /// Most time between two attempts on a failing instance.
    pub max_backoff: Duration,
}

impl Default for PollerConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
            rate_window: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30),
        }
    }
}

struct Conn {
    manager: Option<funcscale_connect::Conn>,
    failures: u32,
    next_attempt: Option<Instant>,
    last_error: Option<(String, UnavailableReason)>,
    /// The connection's master generation at the last failure: a Sentinel switch since then
    /// ends the backoff (the new master is read at the next poll).
    generation_at_failure: u64,
}

/// One poll's counters of a queue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// When it was read (ms).
    pub at_ms: u64,
    /// The queue's `enqueued` counter.
    pub enqueued: u64,
    /// The queue's `completed` counter.
    pub completed: u64,
    /// Depth + due retries.
    pub backlog: u64,
}

/// Rates over the window: (arrivals, completions, one-off arrivals) per second.
pub type Rates = (f64, f64, f64);

/// A queue's recent samples, from which its rates over the rate window are computed (the
/// poller keeps one per queue; the simulator one per trace, so both compute rates alike).
#[derive(Default)]
pub struct Counters {
    samples: VecDeque<Sample>,
}

impl Counters {
    /// Add a sample and return the rates over the last `window_ms`.
    pub fn push(&mut self, now: Sample, window_ms: u64) -> Rates {
        let (at_ms, enq, comp) = (now.at_ms, now.enqueued, now.completed);
        // a counter that went down was reset: start over
        if let Some(s) = self.samples.back()
            && (enq < s.enqueued || comp < s.completed)
        {
            self.samples.clear();
        }
        self.samples.push_back(now);
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|s| at_ms.saturating_sub(s.at_ms) > window_ms)
        {
            self.samples.pop_front();
        }
        let first = *self.samples.front().expect("just pushed");
        let dt = at_ms.saturating_sub(first.at_ms) as f64 / 1000.0;
        if dt <= 0.0 {
            return (0.0, 0.0, 0.0);
        }
        let arrived = enq - first.enqueued;
        let arrival = arrived as f64 / dt;
        // the one-off part of the arrivals (a burst), counted as backlog only: the arrivals
        // above the window's median per-poll rate, so a burst that came at once is not also
        // a rate, while a lasting rise of the rate is one within half a window. With fewer than
        // three polls in the window: the backlog's rise to its peak (the peak, not the last
        // reading, so that tasks of a burst drained later in the window count as backlog)
        let mut per_poll: Vec<f64> = self
            .samples
            .iter()
            .zip(self.samples.iter().skip(1))
            .filter(|(a, b)| b.at_ms > a.at_ms)
            .map(|(a, b)| (b.enqueued - a.enqueued) as f64 * 1000.0 / (b.at_ms - a.at_ms) as f64)
            .collect();
        let one_off = if per_poll.len() >= 3 {
            per_poll.sort_by(f64::total_cmp);
            arrival - per_poll[per_poll.len() / 2]
        } else {
            let peak = self.samples.iter().map(|s| s.backlog).max().unwrap_or(0);
            peak.saturating_sub(first.backlog).min(arrived) as f64 / dt
        };
        (arrival, (comp - first.completed) as f64 / dt, one_off)
    }
}

/// Polls every registered queue.
pub struct Poller {
    registry: Registry,
    cache: MetricsCache,
    config: PollerConfig,
    conns: HashMap<RedisEndpoint, Conn>,
    counters: HashMap<QueueId, Counters>,
}

const COMMANDS_PER_QUEUE_EXTRA: usize = 3; // LINDEX (one per list for Celery), HGETALL, GET

/// The SHA1 of the stream script (`EVALSHA` after one `SCRIPT LOAD` per poll).
static STREAM_GROUP_SHA: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(foreign::stream_group_sha);

impl Poller {
    /// A poller reading the targets of `registry` into `cache`.
    pub fn new(registry: Registry, cache: MetricsCache, config: PollerConfig) -> Self {
        Self {
            registry,
            cache,
            config,
            conns: HashMap::new(),
            counters: HashMap::new(),
        }
    }

    /// Poll all registered queues once; `now_ms` is the wall clock (unix ms).
    pub async fn poll_once(&mut self, now_ms: u64) -> PollReport {
        let targets = self.registry.snapshot();
        let mut by_endpoint: HashMap<RedisEndpoint, Vec<(QueueId, QueueTarget)>> = HashMap::new();
        for (id, t) in targets {
            by_endpoint
                .entry(t.endpoint.clone())
                .or_default()
                .push((id, t));
        }
        // forget connections, counters and readings nobody needs any more
        self.conns.retain(|e, _| by_endpoint.contains_key(e));
        let live: std::collections::HashSet<QueueId> = by_endpoint
            .values()
            .flatten()
            .map(|(id, _)| id.clone())
            .collect();
        self.counters.retain(|id, _| live.contains(id));
        self.cache.retain(|id| live.contains(id));

        let config = self.config.clone();
        let mut jobs = Vec::new();
        for (endpoint, queues) in by_endpoint {
            let conn = self.conns.remove(&endpoint).unwrap_or(Conn {
                manager: None,
                failures: 0,
                next_attempt: None,
                last_error: None,
                generation_at_failure: 0,
            });
            let config = config.clone();
            jobs.push(async move {
                let mut conn = conn;
                let result = read_endpoint(&endpoint, &mut conn, &queues, &config, now_ms).await;
                (endpoint, conn, queues, result)
            });
        }
        let results = futures::future::join_all(jobs).await;

        let mut report = PollReport::default();
        let window_ms = self.config.rate_window.as_millis() as u64;
        // one lock for the whole poll: readers see all queues of a poll at once
        let mut cache = self.cache.0.write().expect("cache lock");
        for (endpoint, mut conn, queues, result) in results {
            report.queues += queues.len();
            match result {
                Ok(raws) => {
                    if let Some(c) = &conn.manager {
                        report.nodes.push(EndpointNode {
                            endpoint: endpoint.to_string(),
                            redis: endpoint.identity(),
                            topology: c.target().topology(),
                            node: c.node(),
                            switches: c.switches(),
                        });
                    }
                    conn.failures = 0;
                    conn.next_attempt = None;
                    conn.last_error = None;
                    report.ok_endpoints += 1;
                    // a cluster's failed masters (their queues unavailable, the others read):
                    // an error each, for the poll-errors metric and the log
                    let mut failed_nodes: Vec<(&str, &str)> = raws
                        .iter()
                        .filter_map(|r| r.unavailable.as_ref())
                        .filter_map(|f| Some((f.node_down.as_deref()?, f.error.as_str())))
                        .collect();
                    // one per node, whatever each of its commands got
                    failed_nodes.sort_by_key(|(node, _)| *node);
                    failed_nodes.dedup_by_key(|(node, _)| *node);
                    report.errors.extend(
                        failed_nodes
                            .into_iter()
                            .map(|(_, e)| (endpoint.clone(), e.to_string())),
                    );
                    for ((id, target), mut raw) in queues.into_iter().zip(raws) {
                        let failed = match (raw.wrong_type.take(), raw.unavailable.take()) {
                            (Some(e), _) => Some((e, UnavailableReason::WrongKeyType)),
                            (None, Some(f)) => Some((f.error, f.reason)),
                            (None, None) => None,
                        };
                        if let Some((error, reason)) = failed {
                            let since_ms = match cache.get(&id) {
                                Some(Reading::Unavailable { since_ms, .. }) => *since_ms,
                                _ => {
                                    report.changed.push(id.clone());
                                    now_ms
                                }
                            };
                            cache.insert(
                                id,
                                Reading::Unavailable {
                                    error,
                                    reason,
                                    since_ms,
                                },
                            );
                            continue;
                        }
                        let counters = self.counters.entry(id.clone()).or_default();
                        let sample = Sample {
                            at_ms: now_ms,
                            enqueued: raw.stats.enqueued,
                            completed: raw.stats.completed,
                            backlog: raw.depth + raw.retries_due + raw.deliveries_due,
                        };
                        let rates = counters.push(sample, window_ms);
                        let mut m = to_metrics(&target, &raw, rates, now_ms);
                        if let Some(c) = &conn.manager {
                            m.topology = c.target().topology();
                            // on a cluster: the master serving the queue's keys
                            m.node = target
                                .lists
                                .first()
                                .and_then(|l| c.master_of(l.as_bytes()))
                                .unwrap_or_else(|| c.node());
                        }
                        let changed = match cache.get(&id) {
                            Some(Reading::Ok(old)) => !same_numbers(old, &m),
                            _ => true,
                        };
                        if changed {
                            report.changed.push(id.clone());
                        }
                        cache.insert(id, Reading::Ok(m));
                    }
                }
                Err((error, reason)) => {
                    for (id, _) in queues {
                        let since_ms = match cache.get(&id) {
                            Some(Reading::Unavailable { since_ms, .. }) => *since_ms,
                            _ => {
                                report.changed.push(id.clone());
                                now_ms
                            }
                        };
                        cache.insert(
                            id,
                            Reading::Unavailable {
                                error: error.clone(),
                                reason,
                                since_ms,
                            },
                        );
                    }
                    report.errors.push((endpoint.clone(), error));
                }
            }
            self.conns.insert(endpoint, conn);
        }
        drop(cache);
        report.changed.sort();
        report
    }
}

fn same_numbers(a: &QueueMetrics, b: &QueueMetrics) -> bool {
    a.depth == b.depth
        && a.scheduled_per_period == b.scheduled_per_period
        && a.in_flight == b.in_flight
        && a.retries_due == b.retries_due
        && a.deliveries_due == b.deliveries_due
        && a.retries_waiting == b.retries_waiting
        && (a.one_off_rate - b.one_off_rate).abs() < 0.05 * a.one_off_rate.abs().max(1.0)
        && a.task_time_measured == b.task_time_measured
        && (a.task_time_ms - b.task_time_ms).abs() < 0.05 * a.task_time_ms.max(1.0)
        && (a.arrival_rate - b.arrival_rate).abs() < 0.05 * a.arrival_rate.max(1.0)
        && a.not_ready == b.not_ready
        && a.node == b.node
}

struct Raw {
    depth: u64,
    oldest_ms: Option<u64>,
    stats: QueueStats,
    dynamic_per_minute: f64,
    retries_due: u64,
    retries_waiting: u64,
    next_retry_due_ms: Option<u64>,
    running: Option<u64>,
    deliveries_due: u64,
    not_ready: Option<(&'static str, String)>,
    depth_lower_bound: bool,
    /// The queue's key holds another type: its reading is this message, not numbers.
    wrong_type: Option<String>,
    /// On a Redis Cluster: this queue's commands failed (the other queues are read).
    unavailable: Option<Failed>,
}

/// Why a queue on a Redis Cluster was not read (the other queues were).
struct Failed {
    /// The queue's message, naming the node.
    error: String,
    /// Its condition reason: `RedisAuthFailed` when the node refused the credentials or the
    /// ACL user's rights, as on one server.
    reason: UnavailableReason,
    /// The node that did not answer or refused the login, if that was why (one poll error
    /// per such node); `None` for a command's own error.
    node_down: Option<String>,
}

impl Failed {
    /// A command answered `source` (a server error) on `node`.
    fn command(node: String, source: redis::RedisError) -> Failed {
        let e = RedisError::classify_at(node, source);
        Failed {
            error: e.to_string(),
            reason: e.reason(),
            node_down: None,
        }
    }

    /// The node a command went to failed (down, refusing, timed out), or refused the login.
    fn node(f: &funcscale_connect::NodeFailure) -> Failed {
        match funcscale_protocol::connection::auth_failure(&f.error) {
            Some(_) => Failed {
                node_down: Some(f.node.clone()),
                ..Failed::command(f.node.clone(), f.error.clone())
            },
            None => Failed {
                error: format!("{NODE_FAILED}{f}"),
                reason: UnavailableReason::Unreachable,
                node_down: Some(f.node.clone()),
            },
        }
    }

    /// A reply that is not what the protocol says.
    fn reply(error: String) -> Failed {
        Failed {
            error,
            reason: UnavailableReason::Unreachable,
            node_down: None,
        }
    }
}

impl Raw {
    /// The reading of a queue that could not be read: why, no numbers.
    fn unavailable(error: Failed) -> Raw {
        Raw {
            depth: 0,
            oldest_ms: None,
            stats: QueueStats::from_pairs([]),
            dynamic_per_minute: 0.0,
            retries_due: 0,
            retries_waiting: 0,
            next_retry_due_ms: None,
            running: None,
            deliveries_due: 0,
            not_ready: None,
            depth_lower_bound: false,
            wrong_type: None,
            unavailable: Some(error),
        }
    }
}

fn to_metrics(t: &QueueTarget, raw: &Raw, rates: Rates, now_ms: u64) -> QueueMetrics {
    let (arrival, completion, rise) = rates;
    let (task_time_ms, measured) = match raw.stats.ewma_ms {
        Some(ms) if ms > 0.0 => (ms, true),
        _ => (t.task_time_hint_ms, false),
    };
    QueueMetrics {
        depth: raw.depth,
        oldest_age_seconds: raw
            .oldest_ms
            .map(|at| now_ms.saturating_sub(at) as f64 / 1000.0),
        arrival_rate: arrival,
        one_off_rate: rise,
        completion_rate: completion,
        task_time_ms,
        task_time_measured: measured,
        in_flight: raw
            .running
            .unwrap_or_else(|| (completion * task_time_ms / 1000.0).round() as u64),
        in_flight_measured: raw.running.is_some(),
        retries_read: t.delayed_key.is_some(),
        retries_waiting: raw.retries_waiting,
        retries_due: raw.retries_due,
        deliveries_due: raw.deliveries_due,
        next_retry_due_ms: raw.next_retry_due_ms,
        scheduled_per_period: cron::per_period(
            t.static_per_minute + raw.dynamic_per_minute,
            t.period_ms,
        ),
        scheduled_per_minute: t.static_per_minute + raw.dynamic_per_minute,
        polled_at_ms: now_ms,
        not_ready: raw.not_ready.clone(),
        depth_lower_bound: raw.depth_lower_bound,
        topology: "standalone",
        node: String::new(),
    }
}

async fn read_endpoint(
    endpoint: &RedisEndpoint,
    conn: &mut Conn,
    queues: &[(QueueId, QueueTarget)],
    config: &PollerConfig,
    now_ms: u64,
) -> Result<Vec<Raw>, (String, UnavailableReason)> {
    let switched = conn
        .manager
        .as_ref()
        .is_some_and(|m| m.generation() != conn.generation_at_failure);
    if let Some(at) = conn.next_attempt
        && Instant::now() < at
        && !switched
    {
        return Err(conn
            .last_error
            .clone()
            .unwrap_or_else(|| ("waiting to retry".into(), UnavailableReason::default())));
    }
    let result = async {
        if conn.manager.is_none() {
            conn.manager = Some(connect(endpoint, config).await?);
        }
        let manager = conn.manager.as_mut().expect("just connected");
        if manager.is_cluster() {
            return read_cluster(manager, queues, config, now_ms).await;
        }
        let node = manager.describe();
        let pipe = build_pipeline(queues, now_ms);
        let values: Vec<Value> =
            tokio::time::timeout(config.response_timeout, pipe.query_async(manager))
                .await
                .map_err(|_| RedisError::NodeTimeout {
                    node: node.clone(),
                    timeout: config.response_timeout,
                })?
                .map_err(|e| {
                    RedisError::classify(endpoint, e, |source| RedisError::AtNode {
                        node: node.clone(),
                        source,
                    })
                })?;
        parse_pipeline(queues, values).map_err(RedisError::Reply)
    }
    .await;
    // the reading keeps the message (it is the queue's status); the log gets the chain
    if let Err(e) = &result {
        tracing::debug!(redis = %endpoint, error = ?e, "Redis poll error");
    }
    let result = result.map_err(|e| (e.to_string(), e.reason()));
    if let Err((e, _)) = &result {
        conn.failures = conn.failures.saturating_add(1);
        let backoff = Duration::from_millis(500u64.saturating_mul(1 << conn.failures.min(10)))
            .min(config.max_backoff);
        conn.next_attempt = Some(Instant::now() + backoff);
        conn.last_error = result.as_ref().err().cloned();
        conn.generation_at_failure = conn.manager.as_ref().map_or(0, |m| m.generation());
        tracing::warn!(redis = %endpoint, error = %e, failures = conn.failures, retry_in = ?backoff, "Redis poll failed");
    }
    result
}

/// How the reading of a queue whose cluster master failed begins (then the node and the error).
const NODE_FAILED: &str = "Redis node ";

/// [`read_endpoint`] on a Redis Cluster: every queue's commands in one pipeline split per master
/// by [`funcscale_connect::query_grouped`] (one pipeline per master, concurrently); a master
/// that fails makes only the queues whose commands it was sent unavailable, naming it
/// (`host:port (cluster, slots a-b): ...`); a command refused by a node (`NOPERM`...) makes its
/// queue unavailable naming the master of its key, `RedisAuthFailed` for an ACL or login
/// refusal as on one server. An RQ queue's oldest job is read in two steps (`LINDEX` of the
/// list, then `HGET` of the job hash, on another slot). The stream script's `SCRIPT LOAD` is
/// at the head once; `query_grouped` copies it into the pipeline of each master that runs it
/// and keeps the best of their replies, so a dead master fails only its own Stream queues.
async fn read_cluster(
    conn: &mut funcscale_connect::Conn,
    queues: &[(QueueId, QueueTarget)],
    config: &PollerConfig,
    now_ms: u64,
) -> Result<Vec<Raw>, RedisError> {
    let node = conn.describe();
    let limit = config.response_timeout * 3;
    let mut pipe = redis::pipe();
    let streams = queues.iter().any(|(_, t)| t.stream_group.is_some());
    if streams {
        pipe.add_command(foreign::stream_group_load_cmd());
    }
    // each queue's commands as build_pipeline gives them for the queue alone
    let mut ranges = Vec::with_capacity(queues.len());
    for q in queues {
        let one = build_pipeline_for(std::slice::from_ref(q), now_ms, true);
        let start = pipe.len();
        let skip = usize::from(q.1.stream_group.is_some()); // its SCRIPT LOAD: once, above
        for cmd in one.cmd_iter().skip(skip) {
            pipe.add_command(cmd.clone());
        }
        ranges.push(start..pipe.len());
    }
    let grouped = tokio::time::timeout(limit, funcscale_connect::query_grouped(conn, &pipe))
        .await
        .map_err(|_| RedisError::NodeTimeout {
            node: node.clone(),
            timeout: limit,
        })?;
    let mut replies = grouped.0;
    // the command each reply answers (to name its node in an error)
    let mut sent: Vec<&redis::Cmd> = pipe.cmd_iter().collect();
    // RQ: the oldest job's id (LINDEX 0), then its hash's enqueued_at
    let mut jobs = redis::pipe();
    let mut job_of = Vec::new();
    for ((_, t), r) in queues.iter().zip(&ranges) {
        if t.oldest == OldestTask::RqLeft {
            let at = r.start + t.lists.len();
            if let Some(Ok(v)) = replies.get(at)
                && let Some(id) = as_string(v)
            {
                jobs.cmd("HGET")
                    .arg(foreign::rq_job_key(&id))
                    .arg("enqueued_at");
                job_of.push(at);
            }
        }
    }
    let mut jobs_sent = jobs.cmd_iter();
    if !job_of.is_empty() {
        let second = tokio::time::timeout(limit, funcscale_connect::query_grouped(conn, &jobs))
            .await
            .map_err(|_| RedisError::NodeTimeout {
                node: node.clone(),
                timeout: limit,
            })?;
        for ((at, v), cmd) in job_of.into_iter().zip(second.0).zip(&mut jobs_sent) {
            replies[at] = v;
            sent[at] = cmd;
        }
    }
    let mut out = Vec::with_capacity(queues.len());
    for (q, r) in queues.iter().zip(ranges) {
        let (id, t) = q;
        let mut values = Vec::with_capacity(r.len() + 1);
        let mut failed = None;
        let head = if t.stream_group.is_some() {
            Some(0)
        } else {
            None
        };
        let first = r.start;
        for i in head.into_iter().chain(r) {
            match &replies[i] {
                Ok(Value::ServerError(e)) => {
                    failed.get_or_insert_with(|| {
                        // the master of the command's key; for the stream script's load, the
                        // master of the queue's stream, where its script runs
                        let cmd = if Some(i) == head {
                            sent[first]
                        } else {
                            sent[i]
                        };
                        let at = conn.master_of_command(cmd).unwrap_or_else(|| node.clone());
                        Failed::command(at, redis::RedisError::from(e.clone()))
                    });
                }
                Ok(v) => values.push(v.clone()),
                Err(f) => {
                    failed.get_or_insert_with(|| Failed::node(f));
                }
            }
        }
        out.push(match failed {
            Some(e) => Raw::unavailable(e),
            None => match parse_pipeline(std::slice::from_ref(q), values) {
                Ok(mut one) => one.pop().unwrap_or_else(|| {
                    Raw::unavailable(Failed::reply(format!("{id}: short pipeline reply")))
                }),
                Err(e) => Raw::unavailable(Failed::reply(e)),
            },
        });
    }
    Ok(out)
}

/// Connect to `endpoint` (TLS from its URL, user and password from the URL or given apart;
/// for a Sentinel set its current master, followed across failovers) with the poller's
/// timeouts.
pub(crate) async fn connect(
    endpoint: &RedisEndpoint,
    config: &PollerConfig,
) -> Result<funcscale_connect::Conn, RedisError> {
    let target = endpoint.target().map_err(|source| RedisError::InvalidUrl {
        endpoint: endpoint.clone(),
        source,
    })?;
    let cfg = funcscale_connect::Config {
        connection_timeout: config.connect_timeout,
        response_timeout: Some(config.response_timeout),
        retries: Some(1),
        // one connection per Redis: the first poll tells a refused login
        probe: false,
        ..funcscale_connect::Config::default()
    };
    // a Sentinel set: asking the sentinels, then checking the master, takes a few round trips
    let limit = match &target {
        funcscale_protocol::connection::Target::Node(_) => {
            config.connect_timeout + Duration::from_millis(500)
        }
        // a cluster: the seeds are asked for the slot map, then each master is connected to
        funcscale_protocol::connection::Target::Sentinel(_)
        | funcscale_protocol::connection::Target::Cluster(_) => {
            config.connect_timeout * 4 + Duration::from_millis(500)
        }
    };
    tokio::time::timeout(limit, funcscale_connect::Conn::connect(&target, &cfg))
        .await
        .map_err(|_| RedisError::ConnectTimeout {
            endpoint: endpoint.clone(),
        })?
        .map_err(|source| {
            RedisError::classify(endpoint, source, |source| RedisError::Connect {
                endpoint: endpoint.clone(),
                source,
            })
        })
}

/// The pipeline reading all `queues`: per queue `LLEN` of each list, the oldest entry
/// (`LINDEX <list> -1`, of every list for Celery, or [`foreign::rq_oldest_cmd`]) — for a
/// Stream [`foreign::stream_group_sha_cmd`] in place of both, after one
/// [`foreign::stream_group_load_cmd`] at the head of the pipeline —
/// `HGETALL <stats>`, `GET <per-period>`; where the format has them, of the delayed set
/// `ZCARD`, `ZCOUNT -inf <now>` (due) and the earliest entry (`ZRANGE 0 0 WITHSCORES`),
/// `ZCARD` of the running set, and for Celery [`foreign::celery_unacked_cmd`].
fn build_pipeline(queues: &[(QueueId, QueueTarget)], now_ms: u64) -> redis::Pipeline {
    build_pipeline_for(queues, now_ms, false)
}

/// [`build_pipeline`]; `cluster`: an RQ queue's oldest entry is `LINDEX <list> 0` (its job hash
/// is on another slot: [`read_cluster`] reads it next) in place of [`foreign::rq_oldest_cmd`].
fn build_pipeline_for(
    queues: &[(QueueId, QueueTarget)],
    now_ms: u64,
    cluster: bool,
) -> redis::Pipeline {
    let n: usize = queues
        .iter()
        .map(|(_, t)| {
            t.lists.len()
                + COMMANDS_PER_QUEUE_EXTRA
                + t.delayed_key.as_ref().map_or(0, |_| 3)
                + t.running_key.as_ref().map_or(0, |_| 1)
                + t.outbox_key.as_ref().map_or(0, |_| 1)
                + if t.oldest == OldestTask::CeleryHeader {
                    t.lists.len() - 1
                } else {
                    0
                }
        })
        .sum();
    let mut pipe = redis::Pipeline::with_capacity(n + 1);
    // the stream script's text once per poll, its SHA per stream
    let streams = queues.iter().any(|(_, t)| t.stream_group.is_some());
    if streams {
        pipe.add_command(foreign::stream_group_load_cmd());
    }
    for (_, t) in queues {
        if let Some(group) = &t.stream_group {
            // lag, pending and the first undelivered entry at once, in place of LLEN + LINDEX
            pipe.add_command(foreign::stream_group_sha_cmd(
                &STREAM_GROUP_SHA,
                &t.lists[0],
                group,
            ));
        } else {
            for l in &t.lists {
                pipe.cmd("LLEN").arg(l);
            }
        }
        match t.oldest {
            OldestTask::StreamId => {}
            OldestTask::RqLeft if cluster => {
                pipe.cmd("LINDEX").arg(&t.lists[0]).arg(0);
            }
            OldestTask::RqLeft => {
                pipe.add_command(foreign::rq_oldest_cmd(&t.lists[0]));
            }
            OldestTask::CeleryHeader => {
                for l in &t.lists {
                    pipe.cmd("LINDEX").arg(l).arg(-1);
                }
            }
            _ => {
                pipe.cmd("LINDEX").arg(&t.lists[0]).arg(-1);
            }
        }
        pipe.cmd("HGETALL").arg(&t.stats_key);
        pipe.cmd("GET").arg(&t.per_period_key);
        if let Some(d) = &t.delayed_key {
            pipe.cmd("ZCARD").arg(d);
            pipe.cmd("ZCOUNT").arg(d).arg("-inf").arg(now_ms);
            pipe.cmd("ZRANGE").arg(d).arg(0).arg(0).arg("WITHSCORES");
        }
        if let Some(r) = &t.running_key {
            pipe.cmd("ZCARD").arg(r);
        }
        if let Some(o) = &t.outbox_key {
            pipe.cmd("ZCOUNT").arg(o).arg("-inf").arg(now_ms);
        }
    }
    // the unacked hash is one per Celery transport, shared by its queues: one script each
    for (hash, names) in unacked_groups(queues) {
        pipe.add_command(foreign::celery_unacked_cmd(
            &hash,
            names.iter().map(String::as_str),
        ));
    }
    pipe
}

/// The Celery queues of `queues` by their `unacked` hash: (hash, distinct queue names), in a
/// fixed order (the pipeline's and its parser's).
fn unacked_groups(queues: &[(QueueId, QueueTarget)]) -> BTreeMap<String, Vec<String>> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, t) in queues {
        if let Some((hash, name)) = &t.celery_unacked {
            let names = groups.entry(hash.clone()).or_default();
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    groups
}

fn parse_pipeline(
    queues: &[(QueueId, QueueTarget)],
    values: Vec<Value>,
) -> Result<Vec<Raw>, String> {
    let mut it = values.into_iter();
    let mut next = || it.next().ok_or_else(|| "short pipeline reply".to_string());
    if queues.iter().any(|(_, t)| t.stream_group.is_some()) {
        let loaded = next()?;
        if as_string(&loaded).as_deref() != Some(STREAM_GROUP_SHA.as_str()) {
            return Err(format!("SCRIPT LOAD of the stream script: {loaded:?}"));
        }
    }
    let mut out = Vec::with_capacity(queues.len());
    for (id, t) in queues {
        let mut depth = 0u64;
        let mut running = None;
        let mut not_ready = None;
        let mut depth_lower_bound = false;
        let mut wrong_type = None;
        let oldest = if let Some(group) = &t.stream_group {
            let key = &t.lists[0];
            match foreign::parse_stream_group(&next()?).map_err(|e| format!("{id}: {e}"))? {
                foreign::StreamGroup::Found {
                    lag,
                    exact,
                    pending,
                    first_undelivered,
                } => {
                    depth = lag;
                    depth_lower_bound = !exact;
                    running = Some(pending);
                    first_undelivered.map_or(Value::Nil, |s| Value::BulkString(s.into_bytes()))
                }
                foreign::StreamGroup::NoStream => {
                    running = Some(0);
                    not_ready = Some((
                        "StreamMissing",
                        format!(
                            "stream {key:?} does not exist: depth 0 until a producer adds to it; create it with its consumer group: XGROUP CREATE {key} {group} $ MKSTREAM"
                        ),
                    ));
                    Value::Nil
                }
                foreign::StreamGroup::NoGroup => {
                    running = Some(0);
                    not_ready = Some((
                        "StreamGroupMissing",
                        format!(
                            "stream {key:?} has no consumer group {group:?}: depth 0 until it exists (its lag is unknown); create it (XGROUP CREATE {key} {group} $, or 0 to deliver the entries already there) or keep a consumer running (minReplicas >= 1) that creates it"
                        ),
                    ));
                    Value::Nil
                }
                foreign::StreamGroup::WrongType(ty) => {
                    // this queue only: the other queues of this Redis are read
                    wrong_type = Some(format!(
                        "key {key:?} is a {ty}, not a stream: check spec.key (format Stream reads a Redis Stream)"
                    ));
                    Value::Nil
                }
            }
        } else {
            for _ in &t.lists {
                depth += as_u64(&next()?).ok_or_else(|| {
                    format!("{id}: LLEN reply is not an integer (wrong key type?)")
                })?;
            }
            next()?
        };
        let oldest_ms = match (t.oldest, as_string(&oldest)) {
            (OldestTask::StreamId, Some(s)) => foreign::stream_id_ms(&s),
            (OldestTask::CeleryHeader, first) => {
                // the tail of each priority list; the earliest header of them
                let mut tails = vec![first];
                for _ in 1..t.lists.len() {
                    tails.push(as_string(&next()?));
                }
                tails
                    .into_iter()
                    .flatten()
                    .filter_map(|m| foreign::celery_enqueued_ms(&m))
                    .min()
            }
            (OldestTask::FuncscaleRight, Some(s)) => {
                Envelope::from_json(&s).ok().map(|e| e.enqueued_at_ms)
            }
            (OldestTask::SidekiqRight, Some(s)) => sidekiq_enqueued_ms(&s),
            (OldestTask::RqLeft, Some(s)) => s
                .trim()
                .parse::<k8s_openapi::jiff::Timestamp>()
                .ok()
                .and_then(|t| u64::try_from(t.as_millisecond()).ok()),
            _ => None,
        };
        let stats = match next()? {
            Value::Array(items) => {
                let strs: Vec<String> = items.iter().filter_map(as_string).collect();
                QueueStats::from_pairs(strs.chunks_exact(2).map(|p| (p[0].as_str(), p[1].as_str())))
            }
            Value::Map(pairs) => {
                let strs: Vec<(String, String)> = pairs
                    .iter()
                    .filter_map(|(k, v)| Some((as_string(k)?, as_string(v)?)))
                    .collect();
                QueueStats::from_pairs(strs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            }
            _ => QueueStats::from_pairs([]),
        };
        // the registry keeps M per minute (a decimal when its entries fire less often)
        let dynamic_per_minute = as_string(&next()?)
            .and_then(|s| cron::parse_per_minute(&s))
            .filter(|m| m.is_finite() && *m > 0.0)
            .unwrap_or(0.0);
        let (mut retries_waiting, mut retries_due, mut next_retry_due_ms) = (0, 0, None);
        if t.delayed_key.is_some() {
            let wrong = || format!("{id}: the delayed set is not a sorted set (wrong key type?)");
            retries_waiting = as_u64(&next()?).ok_or_else(wrong)?;
            retries_due = as_u64(&next()?).ok_or_else(wrong)?;
            next_retry_due_ms = first_score(&next()?);
        }
        if t.running_key.is_some() {
            running = Some(as_u64(&next()?).ok_or_else(|| {
                format!("{id}: the running set is not a sorted set (wrong key type?)")
            })?);
        }
        let deliveries_due = match &t.outbox_key {
            Some(_) => as_u64(&next()?)
                .ok_or_else(|| format!("{id}: the outbox is not a sorted set (wrong key type?)"))?,
            None => 0,
        };
        out.push(Raw {
            depth,
            oldest_ms,
            stats,
            dynamic_per_minute,
            retries_due,
            retries_waiting,
            next_retry_due_ms,
            running,
            deliveries_due,
            not_ready,
            depth_lower_bound,
            wrong_type,
            unavailable: None,
        });
    }
    // the Celery queues' unacknowledged tasks, after every queue's own commands
    let mut unacked: HashMap<(String, String), u64> = HashMap::new();
    for (hash, names) in unacked_groups(queues) {
        let counts = match next()? {
            Value::Array(items) if items.len() == names.len() => items,
            other => {
                return Err(format!(
                    "Celery's unacked key {hash:?}: expected {} counts, got {other:?} (wrong key type?)",
                    names.len()
                ));
            }
        };
        for (name, n) in names.into_iter().zip(counts) {
            let n = as_u64(&n)
                .ok_or_else(|| format!("Celery's unacked key {hash:?}: {n:?} is not a count"))?;
            unacked.insert((hash.clone(), name), n);
        }
    }
    for ((_, t), raw) in queues.iter().zip(out.iter_mut()) {
        if let Some(key) = &t.celery_unacked {
            raw.running = unacked.get(key).copied();
        }
    }
    Ok(out)
}

/// The score of the first entry of a `ZRANGE .. WITHSCORES` reply (RESP2 or RESP3).
fn first_score(v: &Value) -> Option<u64> {
    let score = match v {
        Value::Array(items) => match items.first()? {
            Value::Array(pair) => pair.get(1)?.clone(),
            _ => items.get(1)?.clone(),
        },
        _ => return None,
    };
    match score {
        Value::Double(d) => Some(d.max(0.0) as u64),
        other => as_string(&other)?
            .parse::<f64>()
            .ok()
            .map(|d| d.max(0.0) as u64),
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::Nil => Some(0),
        _ => None,
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Double(d) => Some(d.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_hides_password() {
        let e = RedisEndpoint::with_password("rediss://app@redis.example:6380/2", "p@ss:w");
        assert_eq!(
            e.url(),
            "rediss://app@redis.example:6380/2",
            "the password stays apart"
        );
        let info = e.redis_settings().unwrap();
        assert_eq!(info.username(), Some("app"));
        assert_eq!(info.password(), Some("p@ss:w"));
        assert_eq!(e.redacted(), "rediss://app:***@redis.example:6380/2");
        assert_eq!(format!("{e:?}"), "rediss://app:***@redis.example:6380/2");
        assert_eq!(e.node(), "redis.example:6380");
        let e = RedisEndpoint::with_password("redis://redis:6379/0", "x");
        assert_eq!(e.redacted(), "redis://:***@redis:6379/0");
        assert!(e.has_password());
        let e = RedisEndpoint::with_credentials("redis://:old@redis:6379/0", Some("ops"), None);
        assert_eq!(e.redacted(), "redis://ops:***@redis:6379/0");
        assert_eq!(e.redis_settings().unwrap().password(), Some("old"));
        assert!(!RedisEndpoint::new("rediss://user@redis:6379/0").has_password());
    }

    /// A poll's counters: `s` with completions, `q` (queued) without.
    fn s(at_ms: u64, enqueued: u64, completed: u64, backlog: u64) -> Sample {
        Sample {
            at_ms,
            enqueued,
            completed,
            backlog,
        }
    }

    fn q(at_ms: u64, enqueued: u64, backlog: u64) -> Sample {
        s(at_ms, enqueued, 0, backlog)
    }

    #[test]
    fn rates_over_the_window_and_counter_resets() {
        let mut c = Counters::default();
        assert_eq!(c.push(s(0, 100, 0, 0), 10_000), (0.0, 0.0, 0.0));
        assert_eq!(c.push(s(1000, 110, 5, 0), 10_000), (10.0, 5.0, 0.0));
        assert_eq!(c.push(s(2000, 130, 10, 0), 10_000), (15.0, 5.0, 0.0));
        // reset: counters went down
        assert_eq!(c.push(s(3000, 0, 0, 0), 10_000), (0.0, 0.0, 0.0));
    }

    #[test]
    fn a_burst_stays_backlog_while_it_drains() {
        let mut c = Counters::default();
        // a steady 10/s flowing through an empty queue
        c.push(q(0, 0, 0), 10_000);
        assert_eq!(c.push(q(1000, 10, 0), 10_000), (10.0, 0.0, 0.0));
        // 3,000 at once on top: they stayed
        assert_eq!(
            c.push(q(2000, 3_020, 3_000), 10_000),
            (1_510.0, 0.0, 1_500.0)
        );
        // draining at 50/s: what left the queue was the burst, still not a flow
        let (arrivals, _, rise) = c.push(q(4000, 3_040, 2_900), 10_000);
        assert_eq!(arrivals - rise, 10.0);
    }

    /// A lasting rise of the rate is a rate (the pool keeps up with it) once it fills half
    /// the window, even though the backlog rises while the pool grows; a one-off burst in a
    /// full window stays backlog.
    #[test]
    fn a_lasting_rise_is_a_rate_and_a_burst_is_not() {
        let mut c = Counters::default();
        // 5 s of 2/s, then 100/s for 6 s into a pool too small: the backlog rises 90/s
        let mut enq = 0;
        let mut backlog = 0;
        for sec in 0..=11u64 {
            let rate: u64 = if sec <= 5 { 2 } else { 100 };
            if sec > 0 {
                enq += rate;
                backlog += rate.saturating_sub(10);
            }
            let (arrivals, _, one_off) = c.push(q(sec * 1000, enq, backlog), 10_000);
            if sec == 11 {
                assert!(arrivals - one_off >= 99.0, "{arrivals} {one_off}");
            }
        }
        // a burst of 3,000 in one poll of a full window of 2/s: backlog, not rate
        let mut c = Counters::default();
        let mut enq = 0;
        for sec in 0..=10u64 {
            enq += if sec == 8 { 3_000 } else { 2 };
            let (arrivals, _, one_off) = c.push(q(sec * 1000, enq, 0), 10_000);
            if sec == 10 {
                assert!(
                    arrivals > 300.0 && arrivals - one_off <= 2.0,
                    "{arrivals} {one_off}"
                );
            }
        }
    }
}

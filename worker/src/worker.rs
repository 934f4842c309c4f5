//! The worker runtime: `processes` execution slots over a set of queues, with reliable
//! delivery, retries, dead letters, stats, heartbeats, recovery of dead workers' tasks and a
//! graceful drain.
//!
//! # Delivery
//! Each slot has one in-flight list per queue (`Keys::inflight_q(queue, "<worker>.<slot>")`,
//! in the queue's hash tag: every script below touches one Redis Cluster slot). A free slot
//! moves one task from the right of a queue into its list of that queue (one Lua script over
//! the queues in fair or priority order, else a blocking `BLMOVE`), runs it, then in one
//! script removes it from the in-flight list and — on failure — puts it in the delayed set
//! (retry) or the dead-letter list. A slot only fetches when it is free, so a pod holds at
//! most one task per process and the queue length is the true backlog. A task already in one
//! of the slot's lists when it fetches (a move whose reply was lost) is returned again; on
//! Redis Cluster, where one fetch call covers one hash slot's queues, a queue whose fetch or
//! `BLMOVE` failed is looked at first in the slot's first turn after the queue's rest
//! (fetch.lua's `recover`), so the task does not wait behind the busier queues of a priority
//! order. There a failed call (or a fetch without a reply within [`FETCH_LIMIT`]) does not
//! hold up the slot: the call's queues rest for that slot ([`REST_FIRST`] doubling up to
//! [`REST_MAX`]) and its turns go on with the queues of the other masters.
//!
//! Slots heartbeat into `Keys::slots` (member = slot id) and describe themselves in
//! `Keys::worker` (queues, pod; no TTL). Any worker's reaper moves the in-flight tasks of
//! slots whose heartbeat is older than the TTL back to the head of their queues (the queues
//! the dead slot's hash lists, and the reaper's own), so a `kill -9` loses nothing (the task
//! runs again: at-least-once); a sweep of the running sets every 30 s recovers a list whose
//! slot is registered nowhere. The reaper also recovers the one in-flight list per slot of
//! earlier versions (`Keys::inflight`, registry `Keys::workers`) during a rolling update.
//!
//! # Example
//! ```no_run
//! use funcscale_worker::worker::Worker;
//! use funcscale_worker::handler::TaskError;
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let worker = Worker::builder()
//!     .redis_url("redis://127.0.0.1:6379/0")
//!     .queues(["emails"])
//!     .processes(5)
//!     .handler("send_email", |ctx| async move {
//!         let to = ctx.envelope.args.get(0).and_then(|v| v.as_str()).ok_or_else(|| TaskError::permanent("no address"))?;
//!         Ok(serde_json::json!({ "sent_to": to }))
//!     })
//!     .build()
//!     .await?;
//! // Runs until the future resolves (e.g. SIGTERM), then drains.
//! worker.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use redis::AsyncCommands;
use tokio::sync::watch;

use crate::handler::{
    self, Handler, HandlerFn, HttpClient, Limits, Outcome, TaskContext, TaskResult,
};
use crate::metrics::{Health, Metrics};
use crate::protocol::records::OUTCOME_FIELDS;
use crate::protocol::{
    self, DEFAULT_MAX_RETRIES, Envelope, Keys, QueueConfig, StatsField, WORKER_TTL_MS, scripts,
};
use funcscale_connect::Conn;
use funcscale_protocol::connection;

pub use crate::clock::now_ms;

/// Order in which a slot looks at its queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Order {
    /// Round robin: each fetch starts at the next queue, so a busy queue cannot starve another.
    #[default]
    Fair,
    /// Always the first non-empty queue in the listed order.
    Priority,
}

/// Settings of a worker.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Redis URL.
    pub redis_url: String,
    /// Username and password given apart from the URL (they replace the URL's).
    pub redis_auth: RedisAuth,
    /// Key prefix.
    pub keys: Keys,
    /// Queues to consume.
    pub queues: Vec<String>,
    /// Execution slots.
    pub processes: usize,
    /// Queue order.
    pub order: Order,
    /// Worker (pod) name; slots are `<name>.<i>`.
    pub name: String,
    /// Time given to in-flight tasks on shutdown before they are put back.
    pub drain_timeout: Duration,
    /// Heartbeat age after which another worker recovers a slot's tasks.
    pub worker_ttl_ms: u64,
    /// First retry delay; doubles per attempt, with ±50% jitter.
    pub retry_base_ms: u64,
    /// Maximum retry delay.
    pub retry_max_ms: u64,
    /// Default soft time limit (a task's own `soft_timeout_s` wins).
    pub soft_time_limit: Option<Duration>,
    /// Default hard time limit (a task's own `hard_timeout_s` wins).
    pub hard_time_limit: Option<Duration>,
    /// Memory limit of an `exec` or `pool` child in KiB.
    pub max_memory_per_child_kib: Option<u64>,
    /// Tasks after which a `pool` child is replaced.
    pub max_tasks_per_child: Option<u64>,
    /// Write task records: the finish of each attempt inside the ack script, its start once it
    /// has run for [`RECORD_START_AFTER`].
    pub records: bool,
    /// The pod this worker runs in (Kubernetes namespace and pod name), when known: its slots
    /// name the pod in their worker hashes, and the worker obeys the pod's stop mark
    /// ([`protocol::stop`]): while the operator marks the pod for a scale-down, no slot takes a
    /// new task and `/readyz` answers 503.
    pub pod: Option<PodRef>,
}

/// A pod: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
}

/// How often a worker in a pod reads its pod's stop mark.
pub const STOP_CHECK_EVERY: Duration = Duration::from_secs(1);

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            redis_url: "redis://127.0.0.1:6379/0".into(),
            redis_auth: RedisAuth::default(),
            keys: Keys::default(),
            queues: vec!["default".into()],
            processes: 5,
            order: Order::Fair,
            name: default_worker_name(),
            drain_timeout: Duration::from_secs(30),
            worker_ttl_ms: WORKER_TTL_MS,
            retry_base_ms: 1_000,
            retry_max_ms: 300_000,
            soft_time_limit: None,
            hard_time_limit: None,
            max_memory_per_child_kib: None,
            max_tasks_per_child: None,
            records: true,
            pod: None,
        }
    }
}

/// `<hostname>-<pid>-<random>`: unique per process even when pods share a hostname.
pub fn default_worker_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..))
}

/// Builds a [`Worker`].
pub struct WorkerBuilder {
    config: WorkerConfig,
    handler: Option<Handler>,
    functions: HashMap<String, HandlerFn>,
    metrics: Option<Metrics>,
}

impl WorkerBuilder {
    /// Redis URL (default `redis://127.0.0.1:6379/0`).
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.config.redis_url = url.into();
        self
    }
    /// Redis password, replacing the URL's (`requirepass`, or an ACL user's).
    pub fn redis_password(mut self, password: impl Into<String>) -> Self {
        self.config.redis_auth.password = Some(password.into());
        self
    }
    /// Redis ACL username, replacing the URL's.
    pub fn redis_username(mut self, username: impl Into<String>) -> Self {
        self.config.redis_auth.username = Some(username.into());
        self
    }
    /// Key prefix (default `funcscale`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.keys = Keys::new(prefix);
        self
    }
    /// Queues to consume.
    pub fn queues<I: IntoIterator<Item = S>, S: Into<String>>(mut self, queues: I) -> Self {
        self.config.queues = queues.into_iter().map(Into::into).collect();
        self
    }
    /// Execution slots (default 5).
    pub fn processes(mut self, n: usize) -> Self {
        self.config.processes = n.max(1);
        self
    }
    /// Replace the whole configuration.
    pub fn config(mut self, config: WorkerConfig) -> Self {
        self.config = config;
        self
    }
    /// Change the configuration in place.
    pub fn configure(mut self, f: impl FnOnce(&mut WorkerConfig)) -> Self {
        f(&mut self.config);
        self
    }
    /// Use an `exec` or `http` handler (or the built-ins) instead of in-process functions.
    pub fn handler_kind(mut self, handler: Handler) -> Self {
        self.handler = Some(handler);
        self
    }
    /// Register an in-process function (added to the built-ins `noop`, `sleep`, `fail`, `record`).
    pub fn handler<F, Fut>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = TaskResult> + Send + 'static,
    {
        self.functions.insert(name.into(), handler::handler_fn(f));
        self
    }
    /// Use these metrics (e.g. to serve them yourself).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }
    /// Connect to Redis and build the worker.
    pub async fn build(mut self) -> anyhow::Result<Worker> {
        // the registry and in-flight lists of the queues' namespace (worker ids come from pod
        // names, which repeat across namespaces); queues whose ids name none: the shared ones
        if self.config.keys.namespace().is_none() {
            let ns = self
                .config
                .queues
                .iter()
                .find_map(|q| Keys::queue_id_namespace(q))
                .map(String::from);
            self.config.keys = self.config.keys.clone().in_namespace(ns);
        }
        // its in-flight lists and registry entries live in one namespace: a queue of another
        // one would look like a dead slot's to that namespace's workers (run twice)
        if let Some(ns) = self.config.keys.namespace()
            && let Some(other) = self
                .config
                .queues
                .iter()
                .find(|q| Keys::queue_id_namespace(q).is_some_and(|n| n != ns))
        {
            anyhow::bail!(
                "queue {other} is in another namespace than this worker's ({ns}): a worker \
                 serves the queues of one namespace (run one worker per namespace)"
            );
        }
        let handler = match self.handler {
            Some(Handler::Functions(mut m)) => {
                m.extend(self.functions);
                Handler::Functions(m)
            }
            Some(h) => h,
            None => {
                let mut m = handler::builtins();
                m.extend(self.functions);
                Handler::Functions(m)
            }
        };
        anyhow::ensure!(!self.config.queues.is_empty(), "no queues to consume");
        let mut redis = self
            .config
            .redis_auth
            .connect(&self.config.redis_url)
            .await?;
        // the registry, heartbeats and outbox of a namespace share its hash tag `{ns}`; without
        // one they are untagged keys in several hash slots, which no script may mix
        if redis.is_cluster() && self.config.keys.namespace().is_none() {
            anyhow::bail!(
                "{}: a worker on a Redis Cluster needs a namespace: set --namespace / \
                 FUNCSCALE_NAMESPACE, or consume queue ids that name one ({{<namespace>.<name>}}, \
                 what the operator gives its pods); the worker registry keys need the {{<namespace>}} \
                 hash tag",
                redis.describe()
            );
        }
        // an ACL user without rights on the queues' keys: said now, not in failed fetches
        let mut keys: Vec<String> = self
            .config
            .queues
            .iter()
            .map(|q| self.config.keys.queue(q))
            .collect();
        keys.push(self.config.keys.slots());
        RedisAuth::check_keys(&mut redis, &keys).await?;
        // on a cluster, the slot map that names the master of a failing queue's slot in the
        // warnings (read again when a blocking fetch opens a connection after an error)
        if let Err(e) = redis.read_slot_map().await {
            tracing::warn!(error = %e, node = %redis.describe(), "reading the Redis Cluster slot map failed: warnings name the cluster, not the master, until it is read");
        }
        let (stopped, stopped_rx) = watch::channel(None);
        let waiters: Vec<AtomicUsize> = self
            .config
            .queues
            .iter()
            .map(|_| AtomicUsize::new(0))
            .collect();
        Ok(Worker {
            inner: Arc::new(Inner {
                config: self.config,
                handler,
                redis: redis.clone(),
                metrics: self.metrics.unwrap_or_default(),
                http: handler::http_client(),
                scripts: Scripts::new(),
                counts: PendingCounts::default(),
                stopped,
                finished: (0..waiters.len()).map(|_| AtomicBool::new(false)).collect(),
                waiters,
            }),
            health: crate::metrics::health(redis, Some(stopped_rx)),
        })
    }
}

/// Username and password given apart from the Redis URL (`--redis-username`,
/// `--redis-password`, or their environment variables, which the operator fills from the
/// FuncQueue's Secret), and those of the sentinels of a `redis+sentinel://` URL. Each replaces
/// the URL's when set and not empty; see [`funcscale_protocol::connection`]. `Debug` never
/// shows a password. The same flags serve `funcscale-worker` and `kubectl funcscale`
/// (`#[command(flatten)]`).
#[derive(clap::Args, Clone, Default, PartialEq, Eq)]
pub struct RedisAuth {
    /// Redis ACL username; replaces the one in the Redis URL.
    #[arg(
        id = "redis_username",
        long = "redis-username",
        env = "FUNCSCALE_REDIS_USERNAME",
        global = true,
        value_name = "USER"
    )]
    pub username: Option<String>,
    /// Redis password (requirepass, or the ACL user's); replaces the one in the Redis URL.
    /// Prefer the environment variable: a flag shows in the process list.
    #[arg(
        id = "redis_password",
        long = "redis-password",
        env = "FUNCSCALE_REDIS_PASSWORD",
        hide_env_values = true,
        global = true,
        value_name = "PASSWORD"
    )]
    pub password: Option<String>,
    /// ACL username the sentinels of a redis+sentinel:// URL require.
    #[arg(
        id = "redis_sentinel_username",
        long = "redis-sentinel-username",
        env = "FUNCSCALE_REDIS_SENTINEL_USERNAME",
        global = true,
        value_name = "USER"
    )]
    pub sentinel_username: Option<String>,
    /// Password the sentinels of a redis+sentinel:// URL require (their `requirepass`, or the
    /// ACL user's). Prefer the environment variable.
    #[arg(
        id = "redis_sentinel_password",
        long = "redis-sentinel-password",
        env = "FUNCSCALE_REDIS_SENTINEL_PASSWORD",
        hide_env_values = true,
        global = true,
        value_name = "PASSWORD"
    )]
    pub sentinel_password: Option<String>,
}

impl std::fmt::Debug for RedisAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAuth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("sentinel_username", &self.sentinel_username)
            .field(
                "sentinel_password",
                &self.sentinel_password.as_ref().map(|_| "***"),
            )
            .finish()
    }
}

impl RedisAuth {
    /// Where `url` with these credentials leads.
    pub fn target(&self, url: &str) -> anyhow::Result<connection::Target> {
        connection::target(
            url,
            connection::Credentials {
                username: self.username.as_deref(),
                password: self.password.as_deref(),
                sentinel_username: self.sentinel_username.as_deref(),
                sentinel_password: self.sentinel_password.as_deref(),
            },
        )
        .with_context(|| format!("--redis-url / {}", connection::URL_ENV))
    }

    /// Connect to `url` and check with a `PING` that Redis accepts the credentials: a refusal
    /// (`NOAUTH`, `WRONGPASS`, `NOPERM`) is an error naming the settings to fix, so a process
    /// that cannot log in exits at once with a reason instead of retrying in silence. For a
    /// Sentinel set, the connection follows the master across failovers.
    pub async fn connect(&self, url: &str) -> anyhow::Result<Conn> {
        let target = self.target(url)?;
        match Conn::connect(&target, &connect_config()).await {
            Ok(con) => Ok(con),
            Err(e) => Err(refused(&target.describe(), e, "connecting to")),
        }
    }

    /// Check that the logged-in user may touch `keys` (`EXISTS`): an ACL user without rights
    /// on them (`NOPERM`) is an error now, not a loop of failed fetches.
    pub async fn check_keys(con: &mut Conn, keys: &[String]) -> anyhow::Result<()> {
        for key in keys {
            redis::cmd("EXISTS")
                .arg(key)
                .query_async::<u64>(con)
                .await
                .map_err(|e| refused(&con.describe(), e, "reading"))?;
        }
        Ok(())
    }
}

/// `e` from Redis at `node`: when Redis refused the login or the user's rights, a message
/// naming the settings to fix; else `e` in the context of `doing`.
fn refused(node: &str, e: redis::RedisError, doing: &str) -> anyhow::Error {
    match connection::auth_failure(&e) {
        Some(why) => anyhow::Error::new(e).context(format!(
            "Redis at {node} {}: check the password ({} / --redis-password) and the \
             username ({} / --redis-username, or the user in {} / --redis-url){}",
            why.describe(),
            connection::PASSWORD_ENV,
            connection::USERNAME_ENV,
            connection::URL_ENV,
            if node.contains("via sentinels") {
                format!(
                    ", or the sentinels' ({} / --redis-sentinel-password, {} / --redis-sentinel-username)",
                    connection::SENTINEL_PASSWORD_ENV,
                    connection::SENTINEL_USERNAME_ENV
                )
            } else {
                String::new()
            }
        )),
        None => anyhow::Error::new(e).context(format!("{doing} Redis at {node}")),
    }
}

/// The timeouts of the worker's connections: long replies for bulk scripts.
pub fn connect_config() -> funcscale_connect::Config {
    funcscale_connect::Config {
        connection_timeout: Duration::from_secs(5),
        response_timeout: Some(Duration::from_secs(30)),
        ..funcscale_connect::Config::default()
    }
}

/// Lua scripts of the worker (all keys come from [`Keys`]).
struct Scripts {
    fetch: redis::Script,
    claim: redis::Script,
    finish: redis::Script,
    requeue: redis::Script,
    release: redis::Script,
    promote: redis::Script,
    record: redis::Script,
    started: redis::Script,
}

/// A task runs this long before its record says `started` (see [`Inner::execute`]).
pub const RECORD_START_AFTER: Duration = Duration::from_millis(100);

impl Scripts {
    fn new() -> Self {
        Self {
            fetch: redis::Script::new(scripts::FETCH),
            claim: redis::Script::new(scripts::CLAIM),
            finish: redis::Script::new(scripts::FINISH),
            requeue: redis::Script::new(scripts::REQUEUE),
            release: redis::Script::new(scripts::RELEASE),
            promote: redis::Script::new(scripts::PROMOTE),
            record: redis::Script::new(scripts::RECORD_DURATION),
            started: redis::Script::new(scripts::STARTED),
        }
    }
}

struct Inner {
    config: WorkerConfig,
    handler: Handler,
    redis: Conn,
    metrics: Metrics,
    http: HttpClient,
    scripts: Scripts,
    counts: PendingCounts,
    /// The reason of the pod's stop mark while there is one ([`WorkerConfig::pod`]): the slots
    /// take no new task and `/readyz` says why.
    stopped: watch::Sender<Option<String>>,
    /// On a Redis Cluster: how many of this pod's slots block on each queue (index into
    /// `config.queues`) now, so a free slot blocks on the queue with the fewest.
    waiters: Vec<AtomicUsize>,
    /// Per queue (index into `config.queues`): a task of it finished here since the delivery
    /// loop last looked, so its outbox may hold a new delivery ([`crate::outbox::Cadence`]).
    finished: Vec<AtomicBool>,
}

/// One slot blocking on queue `i` ([`Inner::waiters`]), counted while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts taken out of [`PendingCounts`] to be written: put back when dropped unwritten (a
/// failed write, or a flush cancelled at shutdown), so the next flush sends them.
struct Taken<'a> {
    counts: &'a PendingCounts,
    rows: Option<HashMap<(String, u64), [i64; 5]>>,
}

impl Taken<'_> {
    fn rows(&self) -> &HashMap<(String, u64), [i64; 5]> {
        self.rows.as_ref().expect("rows until written")
    }

    fn written(mut self) {
        self.rows = None;
    }

    /// The rows of `queue` are written: they do not come back.
    fn written_queue(&mut self, queue: &str) {
        if let Some(rows) = self.rows.as_mut() {
            rows.retain(|(q, _), _| q != queue);
        }
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let Some(rows) = self.rows.take() {
            self.counts.restore(rows);
        }
    }
}

// Indexes into `OUTCOME_FIELDS`, the fields of a count bucket the worker adds to (see
// [`PendingCounts`]).
const COMPLETED: usize = 0;
const RETRIED: usize = 1;
const DEAD: usize = 2;
const FAILED: usize = 3;
const LONG: usize = 4;

/// The outcomes of this worker's finishes per queue and minute (`completed`, `retried`,
/// `dead`, `failed`; `long` = outcomes of attempts whose start was recorded, see
/// `records::counts`), added to the minute buckets every second and when the worker stops:
/// one Redis command less per finish than counting in the finish script. A crashed worker
/// loses at most a second of counts; the tasks and records are written by the finish itself.
/// Counts are as exact as the replies: a finish whose reply is lost (a timeout after Redis ran
/// it) is not counted, and a flush whose EXEC ran but whose reply was lost is sent again.
#[derive(Default)]
struct PendingCounts(std::sync::Mutex<HashMap<(String, u64), [i64; 5]>>);

impl PendingCounts {
    fn add(&self, queue: &str, at_ms: u64, fields: &[usize]) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let row = m.entry((queue.to_string(), at_ms / 60_000)).or_default();
        for &f in fields {
            row[f] += 1;
        }
    }

    fn take(&self) -> Taken<'_> {
        let rows = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        Taken {
            counts: self,
            rows: Some(rows),
        }
    }

    /// Put back what could not be written.
    fn restore(&self, rows: HashMap<(String, u64), [i64; 5]>) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (k, v) in rows {
            let row = m.entry(k).or_default();
            for (a, b) in row.iter_mut().zip(v) {
                *a += b;
            }
        }
    }
}

/// One pod's worth of workers.
pub struct Worker {
    inner: Arc<Inner>,
    health: Health,
}

impl Worker {
    /// A builder with the default configuration and the built-in functions.
    pub fn builder() -> WorkerBuilder {
        WorkerBuilder {
            config: WorkerConfig::default(),
            handler: None,
            functions: HashMap::new(),
            metrics: None,
        }
    }

    /// The worker's metrics.
    pub fn metrics(&self) -> Metrics {
        self.inner.metrics.clone()
    }

    /// Health for `/readyz`.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &WorkerConfig {
        &self.inner.config
    }

    /// Slot ids of this worker.
    pub fn slots(&self) -> Vec<String> {
        (0..self.inner.config.processes)
            .map(|i| format!("{}.{i}", self.inner.config.name))
            .collect()
    }

    /// Run until `shutdown` resolves, then drain: stop fetching, give running tasks
    /// `drain_timeout` to finish, cancel and put back the rest, deregister.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let inner = self.inner.clone();
        let slots = self.slots();
        inner.heartbeat(&slots).await.context("first heartbeat")?;
        // Tasks left in our in-flight lists by an earlier process with the same name.
        inner.requeue_all(&slots).await?;

        let (stop_tx, stop_rx) = watch::channel(false);
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let mut slot_tasks = tokio::task::JoinSet::new();
        for (i, slot) in slots.iter().enumerate() {
            let inner = inner.clone();
            let slot = slot.clone();
            let stop = stop_rx.clone();
            let cancel = cancel_rx.clone();
            slot_tasks.spawn(async move { inner.slot_loop(i, slot, stop, cancel).await });
        }
        let background = {
            let inner = inner.clone();
            let slots = slots.clone();
            tokio::spawn(async move { inner.background(slots).await })
        };
        tracing::info!(worker = %inner.config.name, queues = ?inner.config.queues, processes = slots.len(), "worker started");

        tokio::select! {
            _ = shutdown => {}
            r = slot_tasks.join_next() => {
                tracing::error!(result = ?r, "a slot stopped unexpectedly; draining");
            }
        }
        tracing::info!(timeout = ?inner.config.drain_timeout, "draining");
        crate::metrics::set_draining(&self.health);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(inner.config.drain_timeout, async {
            while slot_tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("drain timeout: cancelling running tasks and putting them back");
            let _ = cancel_tx.send(true);
            while slot_tasks.join_next().await.is_some() {}
        }
        background.abort();
        // an aborted flush has put its counts back (`Taken`): the final flush below sends them
        let _ = background.await;
        // Anything still in flight (e.g. a blocking move that completed as we stopped) goes back.
        inner.requeue_all(&slots).await?;
        inner.flush_counts().await?;
        let mut con = inner.redis.clone();
        let mut pipe = redis::pipe();
        for s in &slots {
            pipe.zrem(inner.config.keys.slots(), s).ignore();
            pipe.del(inner.config.keys.worker(s)).ignore();
        }
        let _: () = pipe.query_async(&mut con).await?;
        tracing::info!("drained");
        Ok(())
    }
}

impl Inner {
    /// Recover the tasks of dead slots of this worker's namespace ([`reap_dead`]), and those
    /// of the registries of earlier versions ([`reap_dead_legacy`]): the namespace's and (a
    /// namespaced worker) the shared one. After a rolling update, a slot of an old worker that
    /// died still has its in-flight tasks there.
    /// On a Redis Cluster only [`reap_dead`] runs: the fetch of earlier versions always
    /// failed there (`CROSSSLOT`), so no list of theirs can exist, and the legacy scripts
    /// touch several hash slots.
    async fn reap(&self, slots: &[String]) -> redis::RedisResult<u64> {
        let keys = &self.config.keys;
        let ttl = self.config.worker_ttl_ms;
        let mut n = reap_dead(&self.redis, keys, ttl, slots, &self.config.queues).await?;
        if self.redis.is_cluster() {
            return Ok(n);
        }
        n += reap_dead_legacy(&self.redis, keys, ttl, slots).await?;
        if keys.namespace().is_some() {
            n += reap_dead_legacy(&self.redis, &keys.unscoped(), ttl, slots).await?;
        }
        Ok(n)
    }

    /// The running-set sweep: a member of the running set of one of our queues whose slot is
    /// in neither registry, or only with an old heartbeat, is an in-flight list nobody would
    /// reap (a slot forgotten while paused that fetched, then died, before its next
    /// heartbeat): its tasks go back to the queue. Returns the number put back.
    async fn sweep_running(&self, own: &[String]) -> redis::RedisResult<u64> {
        let keys = &self.config.keys;
        let mut con = self.redis.clone();
        let mut total = 0;
        for q in &self.config.queues {
            let members: Vec<String> = con.zrange(keys.running(q), 0, -1).await?;
            // layout 1 lists are the legacy pass's (their registry entry names them)
            let foreign: Vec<(String, String)> = members
                .into_iter()
                .filter_map(|list| {
                    let (lq, slot) = keys.parse_inflight(&list)?;
                    let slot = slot.to_string();
                    (lq? == q.as_str() && !own.contains(&slot)).then_some((list, slot))
                })
                .collect();
            if foreign.is_empty() {
                continue;
            }
            // every slot's heartbeats in one round trip (live slots are the usual case)
            let stale = self.stale_slots(&mut con, &foreign).await?;
            for (list, slot) in foreign.iter().filter(|(_, s)| stale.contains(s)) {
                // checked again just before: a slot that came back since keeps its task
                if !self
                    .stale_slots(&mut con, &[(list.clone(), slot.clone())])
                    .await?
                    .contains(slot)
                {
                    continue;
                }
                let n = requeue_list(&mut con, keys, list, q, true).await?;
                let _: i64 = self
                    .scripts
                    .release
                    .key(list)
                    .key(keys.running(q))
                    .invoke_async(&mut con)
                    .await?;
                if n > 0 {
                    tracing::warn!(slot, queue = %q, recovered = n, "recovered the tasks of an unregistered worker slot");
                }
                total += n;
            }
        }
        Ok(total)
    }

    /// The slots among `lists` (in-flight list, slot) with a heartbeat in neither registry
    /// newer than the TTL: one pipelined round trip.
    async fn stale_slots(
        &self,
        con: &mut Conn,
        lists: &[(String, String)],
    ) -> redis::RedisResult<Vec<String>> {
        let keys = &self.config.keys;
        let cutoff = now_ms().saturating_sub(self.config.worker_ttl_ms) as f64;
        let mut pipe = redis::pipe();
        for (_, slot) in lists {
            pipe.zscore(keys.slots(), slot).zscore(keys.workers(), slot);
        }
        let beats: Vec<Option<f64>> = pipe.query_async(con).await?;
        Ok(lists
            .iter()
            .zip(beats.chunks(2))
            .filter(|(_, b)| !b.iter().flatten().any(|&beat| beat > cutoff))
            .map(|((_, slot), _)| slot.clone())
            .collect())
    }

    async fn heartbeat(&self, slots: &[String]) -> redis::RedisResult<()> {
        let keys = &self.config.keys;
        let now = now_ms();
        let mut pipe = redis::pipe();
        for s in slots {
            pipe.zadd(keys.slots(), s, now).ignore();
            pipe.hset_multiple(
                keys.worker(s),
                &[
                    (
                        protocol::stop::WORKER_POD_FIELD,
                        self.config
                            .pod
                            .as_ref()
                            .map_or(self.config.name.as_str(), |p| p.name.as_str()),
                    ),
                    ("queues", &self.config.queues.join(",")),
                    ("processes", &self.config.processes.to_string()),
                    ("heartbeat_ms", &now.to_string()),
                    ("layout", "2"),
                ],
            )
            .ignore();
            // no TTL: the reaper reads a dead slot's queues here, then deletes it (a hash an
            // earlier process of this name left with one keeps none)
            pipe.persist(keys.worker(s)).ignore();
        }
        let mut con = self.redis.clone();
        pipe.query_async(&mut con).await
    }

    /// Heartbeats in a loop of their own; the stop mark, the mover of due retries and the
    /// count flush (quick Redis calls) in a second; the reaper of dead slots and the
    /// running-set sweep in a third; queue gauges and record trimming in a fourth, URL
    /// deliveries (a POST may take `outbox::DELIVERY_TIMEOUT`) in a fifth, so a slow receiver,
    /// a long trim or sweep, or a call to a queue's dead or migrating Redis Cluster master
    /// (which the cluster client retries for seconds) never delays a heartbeat (which would let
    /// other workers reap this worker's tasks while they run).
    async fn background(&self, slots: Vec<String>) {
        let every = |ms: u64| {
            let mut i = tokio::time::interval(Duration::from_millis(ms));
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        };
        let heartbeats = async {
            let mut beat = every((self.config.worker_ttl_ms / 5).max(100));
            loop {
                beat.tick().await;
                if let Err(e) = self.heartbeat(&slots).await {
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            }
        };
        let quick = async {
            let mut promote = every(250);
            let mut counts = every(1_000);
            let mut stop_mark = every(STOP_CHECK_EVERY.as_millis() as u64);
            loop {
                tokio::select! {
                    _ = stop_mark.tick(), if self.config.pod.is_some() => if let Err(e) = self.read_stop_mark().await { tracing::warn!(error = %e, "reading the pod's stop mark failed") },
                    _ = promote.tick() => if let Err(e) = self.promote_due().await { tracing::warn!(error = %e, "moving due retries failed") },
                    _ = counts.tick() => if let Err(e) = self.flush_counts().await { tracing::warn!(error = %e, "writing task counts failed") },
                }
            }
        };
        // the reaper and the running-set sweep read other slots' lists (round trips that grow
        // with the pool): a loop of their own, so they never delay a heartbeat; the sweep's
        // start is jittered so a pool's workers do not sweep together
        let recovery = async {
            let mut reap = every((self.config.worker_ttl_ms / 3).max(200) + fastrand::u64(..200));
            let sweep_ms = SWEEP_EVERY_MS.min(self.config.worker_ttl_ms * 2).max(1_000);
            let mut sweep = tokio::time::interval_at(
                tokio::time::Instant::now() + Duration::from_millis(fastrand::u64(..sweep_ms)),
                Duration::from_millis(sweep_ms),
            );
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = reap.tick() => if let Err(e) = self.reap(&slots).await { tracing::warn!(error = %e, "reaper failed") },
                    _ = sweep.tick() => if let Err(e) = self.sweep_running(&slots).await { tracing::warn!(error = %e, "running-set sweep failed") },
                }
            }
        };
        let slow = async {
            let mut gauges = every(10_000);
            let mut trim = every(30_000);
            loop {
                tokio::select! {
                    _ = gauges.tick() => if let Err(e) = self.refresh_queue_gauges().await { tracing::warn!(error = %e, "reading queue counts failed") },
                    _ = trim.tick() => if let Err(e) = self.trim_records().await { tracing::warn!(error = %e, "trimming task records failed") },
                }
            }
        };
        let deliveries = async {
            // the outboxes of this worker's queues (each in its queue's slot), then the
            // namespace's and (off a cluster) the shared one that earlier versions wrote; each
            // looked at as often as it has deliveries (`Cadence`)
            let keys = &self.config.keys;
            let mut cadence = crate::outbox::Cadence::new(
                keys,
                &self.config.queues,
                self.redis.is_cluster(),
                now_ms(),
            );
            let mut tick = every(crate::outbox::LOOK_MS);
            loop {
                tick.tick().await;
                let now = now_ms();
                for (q, finished) in self.config.queues.iter().zip(&self.finished) {
                    if finished.swap(false, Ordering::Relaxed) {
                        cadence.nudge(q, now);
                    }
                }
                let due = cadence.due(now);
                let done = futures::future::join_all(due.iter().map(|&i| {
                    crate::outbox::deliver_due(&self.redis, keys, cadence.outbox(i), &self.http, 50)
                }))
                .await;
                for (i, r) in due.into_iter().zip(done) {
                    cadence.looked(i, matches!(r, Ok(n) if n > 0), now);
                    if let Err(e) = r {
                        let outbox = &cadence.outbox(i).pending;
                        tracing::warn!(error = %e, outbox = %outbox, node = %self.node_of_key(outbox), "delivering to destinations failed");
                    }
                }
            }
        };
        tokio::join!(heartbeats, quick, recovery, slow, deliveries);
    }

    /// Read the pod's stop mark and follow it: no new tasks while it exists, tasks again when
    /// it is gone (cleared by the operator, or expired). A failed read changes nothing.
    async fn read_stop_mark(&self) -> redis::RedisResult<()> {
        let Some(pod) = &self.config.pod else {
            return Ok(());
        };
        let mark: Option<String> =
            protocol::stop::read_cmd(&self.config.keys, &pod.namespace, &pod.name)
                .query_async(&mut self.redis.clone())
                .await?;
        self.stopped.send_if_modified(|now| {
            if *now == mark {
                return false;
            }
            match &mark {
                Some(reason) => {
                    tracing::info!(pod = %pod.name, reason, "stop mark: taking no new tasks")
                }
                None => tracing::info!(pod = %pod.name, "stop mark gone: taking tasks again"),
            }
            *now = mark.clone();
            true
        });
        Ok(())
    }

    /// Add the pending outcome counts to their minute buckets (see [`PendingCounts`]): one
    /// MULTI/EXEC per queue (its buckets share the queue's hash slot).
    async fn flush_counts(&self) -> redis::RedisResult<()> {
        let mut taken = self.counts.take();
        if taken.rows().is_empty() {
            return Ok(());
        }
        let keys = &self.config.keys;
        let mut by_queue: std::collections::BTreeMap<String, Vec<(u64, [i64; 5])>> =
            std::collections::BTreeMap::new();
        for ((queue, minute), row) in taken.rows() {
            by_queue
                .entry(queue.clone())
                .or_default()
                .push((*minute, *row));
        }
        let mut con = self.redis.clone();
        for (queue, rows) in by_queue {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for (minute, row) in &rows {
                let counts: Vec<(&str, i64)> = OUTCOME_FIELDS.iter().copied().zip(*row).collect();
                // with the bucket's format and expiry, as the scripts' counts set them
                protocol::records::add_counts(&mut pipe, keys, &queue, *minute, &counts);
            }
            // dropped unwritten on an error or a cancellation: the queues not written yet go
            // back
            let () = pipe.query_async(&mut con).await?;
            taken.written_queue(&queue);
        }
        taken.written();
        Ok(())
    }

    async fn promote_due(&self) -> redis::RedisResult<()> {
        let keys = &self.config.keys;
        let mut con = self.redis.clone();
        for q in &self.config.queues {
            let _: u64 = self
                .scripts
                .promote
                .key(keys.delayed(q))
                .key(keys.queue(q))
                .arg(now_ms())
                .arg(1_000)
                .invoke_async(&mut con)
                .await?;
        }
        Ok(())
    }

    /// Queue-wide gauges from Redis: last complete minute's counts, running, depth, dead. Also
    /// samples the running tasks into the current minute's counts (`executing`).
    async fn refresh_queue_gauges(&self) -> redis::RedisResult<()> {
        let keys = &self.config.keys;
        let mut con = self.redis.clone();
        let now = now_ms();
        let m = &self.metrics;
        for q in &self.config.queues {
            let last = now.saturating_sub(60_000);
            let b = crate::records::counts(&mut con, keys, q, last, last).await?;
            if let Some(b) = b.first() {
                for (kind, v) in [
                    ("submitted", b.submitted),
                    ("started", b.started),
                    ("completed", b.completed),
                    ("failed", b.failed),
                    ("retried", b.retried),
                    ("dead", b.dead),
                ] {
                    m.queue_last_minute
                        .with_label_values(&[Keys::queue_name(q), kind])
                        .set(v);
                }
            }
            let (depth, dead): (i64, i64) = redis::pipe()
                .llen(keys.queue(q))
                .llen(keys.dead(q))
                .query_async(&mut con)
                .await?;
            let running = protocol::sample_executing(&mut con, keys, q, now).await?;
            // labelled with the FuncQueue's name: Prometheus adds the pod's namespace
            let label = Keys::queue_name(q);
            m.queue_depth.with_label_values(&[label]).set(depth);
            m.queue_dead_letters.with_label_values(&[label]).set(dead);
            m.queue_executing
                .with_label_values(&[label])
                .set(running as i64);
        }
        crate::outbox::refresh_gauges(
            &mut con,
            keys,
            &self.config.queues,
            self.redis.is_cluster(),
            m,
        )
        .await?;
        Ok(())
    }

    /// Apply record retention to every queue (the scripts also trim on every
    /// `RECORD_TRIM_EVERY`th write).
    async fn trim_records(&self) -> redis::RedisResult<()> {
        let mut con = self.redis.clone();
        for q in &self.config.queues {
            crate::records::trim(&mut con, &self.config.keys, q, now_ms()).await?;
        }
        Ok(())
    }

    /// Put back what our slots hold: their lists of our queues, and the one list per slot of
    /// an earlier version's process of the same name.
    async fn requeue_all(&self, slots: &[String]) -> redis::RedisResult<()> {
        let mut con = self.redis.clone();
        let keys = &self.config.keys;
        for s in slots {
            let mut moved = 0;
            for q in &self.config.queues {
                moved += requeue_list(&mut con, keys, &keys.inflight_q(q, s), q, true).await?;
            }
            if !self.redis.is_cluster() {
                moved += requeue_legacy(&mut con, keys, s).await?;
            }
            if moved > 0 {
                tracing::info!(slot = %s, moved, "put in-flight tasks back");
            }
        }
        Ok(())
    }

    fn queue_order(&self, turn: usize) -> Vec<usize> {
        let n = self.config.queues.len();
        match self.config.order {
            Order::Fair => (0..n).map(|k| (turn + k) % n).collect(),
            Order::Priority => (0..n).collect(),
        }
    }

    async fn slot_loop(
        self: Arc<Self>,
        index: usize,
        slot: String,
        mut stop: watch::Receiver<bool>,
        cancel: watch::Receiver<bool>,
    ) {
        let keys = &self.config.keys;
        let mut turn = index;
        let cluster = self.redis.is_cluster();
        // the blocking connections and the generation each was opened at: one (key "") to the
        // node or Sentinel master; on a cluster one per master (`host:port`) this slot blocked
        // on, each opened to the master of the queue's hash slot
        let mut blocking: HashMap<String, (redis::aio::MultiplexedConnection, u64)> =
            HashMap::new();
        let mut con = self.redis.clone();
        let multi = self.config.queues.len() > 1;
        let mut marked = self.stopped.subscribe();
        // On a cluster: the queues (indexes) whose move into this slot's in-flight list may
        // have run with its reply lost (a fetch call or a BLMOVE that failed), each with when
        // to look there next. A turn looks in their lists first (fetch.lua `recover`): the
        // turn's own calls stop at the first group with a task, and with the queues in
        // priority order that may never be theirs while the first queues stay busy.
        let mut suspect: HashMap<usize, Instant> = HashMap::new();
        // On a cluster: the queues whose last call failed (their master down, stalled, or
        // failing over), left alone for a while so the turns go on with the others
        let mut resting = Resting::default();
        loop {
            if *stop.borrow() {
                return;
            }
            // the pod is marked for removal: no new task until the mark goes (or we stop)
            if marked.borrow_and_update().is_some() {
                tokio::select! {
                    _ = marked.wait_for(Option::is_none) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            turn = turn.wrapping_add(1);
            let order = self.queue_order(turn);
            let mut fetched: Option<(String, usize)> = None;
            // a call of this turn failed (one server or Sentinel: the slot then waits 1 s)
            let mut failed = false;
            if !suspect.is_empty() {
                let now = Instant::now();
                let due: Vec<usize> = order
                    .iter()
                    .copied()
                    .filter(|i| suspect.get(i).is_some_and(|t| *t <= now) && resting.open(*i, now))
                    .collect();
                for group in fetch_groups(keys, &self.config.queues, &due, true) {
                    match self.fetch_call(&mut con, &slot, &group, true).await {
                        Ok(Some((raw, i))) => {
                            // it stays suspect: the next turn looks again, until nothing is there
                            tracing::info!(queue = %self.config.queues[i], "running a task whose fetch reply was lost");
                            resting.answered(&group);
                            fetched = Some((raw, i));
                            break;
                        }
                        Ok(None) => {
                            resting.answered(&group);
                            suspect.retain(|i, _| !group.contains(i));
                        }
                        Err(e) => {
                            let q = &self.config.queues[group[0]];
                            let rest = resting.failed(&group, Instant::now());
                            tracing::warn!(error = %e, queue = %q, node = %self.node_of(q), retry_in = ?rest, "looking for a task whose fetch reply was lost failed");
                            // the turn goes on with the other queues
                        }
                    }
                }
            }
            // on a cluster one call per hash slot, in the try order, until one has a task; a
            // call that fails leaves its queues to rest and the turn goes on with the next
            if fetched.is_none() {
                let now = Instant::now();
                let open: Vec<usize> = order
                    .iter()
                    .copied()
                    .filter(|&i| resting.open(i, now))
                    .collect();
                for group in fetch_groups(keys, &self.config.queues, &open, cluster) {
                    match self.fetch_call(&mut con, &slot, &group, false).await {
                        Ok(got) => {
                            // the call's first phase looked in the group's lists
                            resting.answered(&group);
                            suspect.retain(|i, _| !group.contains(i));
                            if got.is_some() {
                                fetched = got;
                                break;
                            }
                        }
                        Err(e) => {
                            failed = true;
                            let q = &self.config.queues[group[0]];
                            if cluster {
                                // Redis may have run it: a task may be in the group's lists
                                suspect.extend(group.iter().map(|&i| (i, Instant::now())));
                                let rest = resting.failed(&group, Instant::now());
                                tracing::warn!(error = %e, queue = %q, node = %self.node_of(q), retry_in = ?rest, "fetch failed");
                            } else {
                                tracing::warn!(error = %e, node = %self.node_of(q), "fetch failed");
                            }
                        }
                    }
                }
            }
            let (raw, qi) = match fetched {
                Some(got) => got,
                // one server or Sentinel: the turn's one call failed
                None if failed && !cluster => {
                    tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => {}, _ = stop.changed() => {} }
                    continue;
                }
                None => {
                    // Nothing anywhere: block on one queue. One server or Sentinel: the first
                    // of this turn's order (rotating), briefly when there are others. A
                    // cluster: of the queues not resting, the one fewest of this pod's slots
                    // block on (first in this turn's order among equals), on the master of its
                    // hash slot; 1 s when every queue has a waiter then, else as elsewhere.
                    // When every queue rests, wait until the first may be called again.
                    let (pick, _waiting) = if cluster {
                        let now = Instant::now();
                        let Some(i) = order
                            .iter()
                            .copied()
                            .filter(|&i| resting.open(i, now))
                            .min_by_key(|&i| self.waiters[i].load(Ordering::Relaxed))
                        else {
                            let wait = resting.next_open(now);
                            tokio::select! { _ = tokio::time::sleep(wait) => {}, _ = stop.changed() => {} }
                            continue;
                        };
                        self.waiters[i].fetch_add(1, Ordering::Relaxed);
                        (i, Some(Waiting(&self.waiters[i])))
                    } else {
                        (order[0], None)
                    };
                    let covered =
                        cluster && self.waiters.iter().all(|w| w.load(Ordering::Relaxed) > 0);
                    let from = self.config.queues[pick].as_str();
                    let q = keys.queue(from);
                    // a failover or a changed slot map: connections opened before may be on a
                    // node that no longer serves the queue (demoted, or gone without a reset,
                    // where BLMOVE would wait)
                    let generation = self.redis.generation();
                    blocking.retain(|_, (_, g)| *g == generation);
                    let known = if cluster {
                        self.redis
                            .master_of(q.as_bytes())
                            .filter(|a| blocking.contains_key(a))
                    } else {
                        Some(String::new()).filter(|a| blocking.contains_key(a))
                    };
                    let addr = match known {
                        Some(a) => a,
                        None => {
                            // a reply is due within the block's timeout (≤ 1 s): a node that
                            // went silent (no TCP reset) is given up after a few seconds more
                            let cfg = redis::AsyncConnectionConfig::new()
                                .set_connection_timeout(Some(Duration::from_secs(5)))
                                .set_response_timeout(Some(Duration::from_secs(6)));
                            match self.redis.dedicated_for(q.as_bytes(), &cfg).await {
                                Ok((node, c)) => {
                                    let a = if cluster {
                                        self.redis.master_of(q.as_bytes()).unwrap_or(node)
                                    } else {
                                        String::new()
                                    };
                                    blocking.insert(a.clone(), (c, generation));
                                    a
                                }
                                Err(e) => {
                                    self.redis.after_error(&e);
                                    if cluster {
                                        // the queue rests; the next turn goes on with the others
                                        let rest = resting.failed(&[pick], Instant::now());
                                        tracing::warn!(error = %e, queue = %from, node = %self.node_of(from), retry_in = ?rest, "redis connection failed");
                                        continue;
                                    }
                                    tracing::warn!(error = %e, node = %self.redis.describe(), "redis connection failed");
                                    tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => {}, _ = stop.changed() => {} }
                                    continue;
                                }
                            }
                        }
                    };
                    let Some((bcon, _)) = blocking.get_mut(&addr) else {
                        continue;
                    };
                    let inflight = keys.inflight_q(from, &slot);
                    let wait = if multi && !covered { 0.2 } else { 1.0 };
                    let moved: redis::RedisResult<Option<String>> = tokio::select! {
                        r = bcon.blmove(&q, &inflight, redis::Direction::Right, redis::Direction::Left, wait) => r,
                        // Stop waiting; a move that completes anyway is put back by the final sweep.
                        _ = stop.changed() => return,
                    };
                    match moved {
                        Ok(Some(raw)) => {
                            // count it as running; a failure here only under-counts until it ends
                            let claimed: redis::RedisResult<i64> = self
                                .scripts
                                .claim
                                .key(&inflight)
                                .key(keys.running(from))
                                .arg(&raw)
                                .arg(now_ms())
                                .invoke_async(&mut con)
                                .await;
                            if let Err(e) = claimed {
                                tracing::warn!(error = %e, "marking a task running failed");
                            }
                            (raw, pick)
                        }
                        Ok(None) => continue,
                        Err(e) => {
                            let node = if cluster {
                                addr.clone()
                            } else {
                                self.redis.describe()
                            };
                            tracing::warn!(error = %e, node = %node, queue = %from, "blocking fetch failed");
                            // a failover shows here first when every queue is empty; on a
                            // cluster also a slot that moved (MOVED) or is moving (ASK,
                            // TRYAGAIN): the slot map is read again before the next open
                            self.redis.after_error(&e);
                            blocking.remove(&addr);
                            if cluster {
                                // Redis may have moved a task (a connection broken or a
                                // response timeout after the move): the turn after the
                                // queue's rest looks; the next turns go on with the others
                                suspect.insert(pick, Instant::now());
                                resting.failed(&[pick], Instant::now());
                                continue;
                            }
                            tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => {}, _ = stop.changed() => {} }
                            continue;
                        }
                    }
                }
            };
            let from = self.config.queues[qi].as_str();
            let inflight = keys.inflight_q(from, &slot);
            if let Err(e) = self
                .execute(index, &inflight, from, raw, cancel.clone())
                .await
            {
                // The task stays in flight; the reaper or our final sweep puts it back, or
                // (still ours) a later fetch of this slot returns it.
                if cluster {
                    suspect.insert(qi, Instant::now());
                }
                tracing::warn!(error = %e, "finishing a task failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// One `fetch.lua` call of slot `slot` over the queues `group` (indexes into
    /// `config.queues`, in the order to try; one hash slot on a cluster): the task and the index
    /// of its queue. `recover`: only a task already in the slot's in-flight lists of those
    /// queues (one whose move's reply was lost), none taken from a queue. On a cluster a call
    /// with no reply within [`FETCH_LIMIT`] is an error (the call may still run: as for a lost
    /// reply, its task is found by a later call).
    async fn fetch_call(
        &self,
        con: &mut Conn,
        slot: &str,
        group: &[usize],
        recover: bool,
    ) -> redis::RedisResult<Option<(String, usize)>> {
        let keys = &self.config.keys;
        let mut inv = self.scripts.fetch.prepare_invoke();
        for &i in group {
            let q = &self.config.queues[i];
            inv.key(keys.queue(q))
                .key(keys.inflight_q(q, slot))
                .key(keys.running(q));
        }
        inv.arg(now_ms());
        if recover {
            inv.arg("recover");
        }
        let call = inv.invoke_async::<Option<(String, usize)>>(con);
        let got = if self.redis.is_cluster() {
            // the cluster client retries a master that is down until its response timeout
            // (30 s): the slot would wait that long before it went on to another group
            tokio::time::timeout(FETCH_LIMIT, call)
                .await
                .map_err(|_| {
                    redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no reply to the fetch within {FETCH_LIMIT:?}"),
                    ))
                })??
        } else {
            call.await?
        };
        Ok(got.map(|(raw, n)| (raw, group[n.saturating_sub(1).min(group.len() - 1)])))
    }

    fn limits(&self, env: &Envelope) -> Limits {
        Limits {
            soft: env
                .soft_timeout_s
                .map(|s| Duration::from_secs(s.into()))
                .or(self.config.soft_time_limit),
            hard: env
                .hard_timeout_s
                .map(|s| Duration::from_secs(s.into()))
                .or(self.config.hard_time_limit),
            max_rss_kib: self.config.max_memory_per_child_kib,
            max_tasks_per_child: self.config.max_tasks_per_child,
        }
    }

    /// Backoff before retry `attempt` (1-based): base × 2^(attempt-1), capped, ±50% jitter.
    /// Base and cap are the queue's (`queue`), else the worker's `--retry-base` / `--retry-max`.
    fn backoff_ms(&self, queue: &QueueConfig, attempt: u32) -> u64 {
        let base = queue
            .retry_backoff_base_ms
            .unwrap_or(self.config.retry_base_ms);
        let cap = queue
            .retry_backoff_max_ms
            .unwrap_or(self.config.retry_max_ms);
        let exp = base.saturating_mul(1u64 << attempt.saturating_sub(1).min(30));
        let capped = exp.min(cap);
        capped / 2 + fastrand::u64(..=capped)
    }

    async fn execute(
        &self,
        slot: usize,
        inflight: &str,
        from: &str,
        mut raw: String,
        cancel: watch::Receiver<bool>,
    ) -> redis::RedisResult<()> {
        let keys = &self.config.keys;
        let mut con = self.redis.clone();
        let mut env = match Envelope::from_json(&raw) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "malformed task moved to the dead-letter list");
                // the queue it came from: its dead letters, and its running set to leave
                let q = from;
                let _: i64 = self
                    .scripts
                    .finish
                    .key(inflight)
                    .key(keys.dead(q))
                    .key(keys.stats(q))
                    .arg(&raw)
                    .arg("dead")
                    .arg(&raw)
                    .arg(0)
                    .arg(keys.prefix())
                    .arg(q)
                    .arg("")
                    .invoke_async(&mut con)
                    .await?;
                return Ok(());
            }
        };
        // The list the task came from is authoritative: the fetch entered the slot in its
        // running set, and its finish, retry, dead letter, record and stats must be that
        // queue's too (a producer may push to `status.key` with another `queue` in the
        // envelope). The in-flight entry is rewritten so a requeue puts it back there.
        if env.queue != from {
            tracing::warn!(id = %env.id, queue = %env.queue, from, "the task's envelope names another queue than the list it came from; it is run as a task of that list");
            env.queue = from.to_string();
            let fixed = env.to_json();
            let kept: redis::RedisResult<i64> = self
                .scripts
                .claim
                .key(inflight)
                .key(keys.running(from))
                .arg(&raw)
                .arg(now_ms())
                .arg(&fixed)
                .invoke_async(&mut con)
                .await;
            match kept {
                Ok(1) => raw = fixed,
                // no longer in flight: a reaper put it back, it is not ours to run
                Ok(_) => return Ok(()),
                // the finish still uses the fetched queue; only a requeue would not
                Err(e) => tracing::warn!(error = %e, "correcting the task's queue failed"),
            }
        }
        let m = &self.metrics;
        // Function names come from producers: unknown ones share one label value (bounded labels).
        let func_label = if self.handler.knows(&env.func) {
            env.func.as_str()
        } else {
            "_unknown"
        };
        // the FuncQueue's name, as the operator's series and the dashboard name it
        let labels = [Keys::queue_name(&env.queue), func_label];
        m.started.with_label_values(&labels).inc();
        let gauge = m.inflight.with_label_values(&[labels[0]]);
        gauge.inc();
        let started = Instant::now();
        let started_ms = now_ms();
        let slot_name = format!("{}.{slot}", self.config.name);
        let run = self.handler.run(
            slot,
            &env,
            self.limits(&env),
            self.redis.clone(),
            &self.http,
            cancel.clone(),
        );
        // The `started` record is written only once the attempt has run for
        // RECORD_START_AFTER, concurrently with the task. Most tasks end sooner: their finish
        // script writes the whole attempt (worker, started_ms, duration) and counts the start,
        // so a short task costs one record write instead of two. Hence `tasks list --status
        // started` and the executing counts show the attempts running longer than that (a
        // shorter one is only ever seen as `started` by a reader racing it). Either order of
        // the two writes is correct: the started script writes nothing once the task has left
        // the in-flight list, and the finish moves the record from whichever status it has.
        let (outcome, start_recorded) = if self.config.records {
            let record_start = async {
                tokio::time::sleep(RECORD_START_AFTER).await;
                let r: redis::RedisResult<i64> = self
                    .scripts
                    .started
                    .key(inflight)
                    .arg(keys.prefix())
                    .arg(&raw)
                    .arg(&slot_name)
                    .arg(started_ms)
                    .invoke_async(&mut self.redis.clone())
                    .await;
                match r {
                    Ok(n) => n == 1,
                    Err(e) => {
                        tracing::warn!(error = %e, "recording a start failed");
                        false
                    }
                }
            };
            tokio::pin!(run);
            tokio::pin!(record_start);
            let mut recorded = None;
            let outcome = loop {
                tokio::select! {
                    o = &mut run => break o,
                    r = &mut record_start, if recorded.is_none() => recorded = Some(r),
                }
            };
            (outcome, recorded.unwrap_or(false))
        } else {
            (run.await, false)
        };
        gauge.dec();
        let elapsed = started.elapsed();
        let ms = elapsed.as_millis() as u64;
        m.duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
        let stats = keys.stats(&env.queue);
        let finish_ms = now_ms();
        // ARGV 5.. of the finish script: what the record and the destinations need.
        let record_args = |inv: &mut redis::ScriptInvocation, payload: String, error: &str| {
            inv.arg(keys.prefix())
                .arg(&env.queue)
                .arg(&env.id)
                .arg(&env.func)
                .arg(finish_ms)
                .arg(if self.config.records { "1" } else { "0" })
                .arg(env.attempt)
                .arg(&slot_name)
                .arg(ms)
                .arg(started_ms)
                .arg(payload)
                .arg(error)
                .arg(if start_recorded { "1" } else { "0" })
                .arg(if env.error.is_some() { "1" } else { "0" });
        };
        // What the worker counts for this outcome (PendingCounts).
        let counted: &[usize];
        let mut pipe = redis::pipe();
        match outcome {
            Outcome::Done(result) => {
                m.succeeded.with_label_values(&labels).inc();
                counted = &[COMPLETED];
                let mut inv = self.scripts.finish.key(inflight);
                inv.key(&stats)
                    .key(&stats)
                    .arg(&raw)
                    .arg("ack")
                    .arg("")
                    .arg(0);
                record_args(&mut inv, result.to_string(), "");
                pipe.invoke_script(&inv);
                pipe.invoke_script(&protocol::stats::record_duration(
                    &self.scripts.record,
                    &stats,
                    (ms, now_ms()),
                    StatsField::Completed,
                ));
            }
            Outcome::Failed(err) => {
                m.failed.with_label_values(&labels).inc();
                let mut next = env.clone();
                next.error = Some(err.message.clone());
                let error_json = serde_json::Value::String(err.message.clone()).to_string();
                // The queue's retry settings, read at each failure so a changed FuncQueue
                // applies at once; the task's own count wins over the queue's.
                // The task has run: an error here must not leave it to run again (it would
                // stay in flight, and the slot's next fetch hands it back): the defaults then.
                let queue_config = if err.retryable {
                    match QueueConfig::get_cmd(keys, &env.queue)
                        .query_async::<Vec<(String, String)>>(&mut con)
                        .await
                    {
                        Ok(pairs) => QueueConfig::from_pairs(
                            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                        ),
                        Err(e) => {
                            tracing::warn!(queue = %env.queue, error = %e, "reading the queue's retry settings failed; using the defaults");
                            QueueConfig::default()
                        }
                    }
                } else {
                    QueueConfig::default()
                };
                let max_retries = env
                    .max_retries
                    .or(queue_config.max_retries)
                    .unwrap_or(DEFAULT_MAX_RETRIES);
                if err.retryable && env.attempt < max_retries {
                    m.retried.with_label_values(&labels).inc();
                    counted = &[RETRIED, FAILED];
                    next.attempt += 1;
                    let due = now_ms() + self.backoff_ms(&queue_config, next.attempt);
                    tracing::info!(id = %env.id, func = %env.func, attempt = next.attempt, error = %err.message, "task failed; retrying");
                    let mut inv = self.scripts.finish.key(inflight);
                    inv.key(keys.delayed(&env.queue))
                        .key(&stats)
                        .arg(&raw)
                        .arg("retry")
                        .arg(next.to_json())
                        .arg(due);
                    record_args(&mut inv, error_json.clone(), &err.message);
                    pipe.invoke_script(&inv);
                } else {
                    m.dead.with_label_values(&labels).inc();
                    counted = &[DEAD, FAILED];
                    tracing::warn!(id = %env.id, func = %env.func, error = %err.message, "task failed for good; dead-lettered");
                    let mut inv = self.scripts.finish.key(inflight);
                    inv.key(keys.dead(&env.queue))
                        .key(&stats)
                        .arg(&raw)
                        .arg("dead")
                        .arg(next.to_json())
                        .arg(0);
                    record_args(&mut inv, error_json.clone(), &err.message);
                    pipe.invoke_script(&inv);
                }
                pipe.invoke_script(&protocol::stats::record_duration(
                    &self.scripts.record,
                    &stats,
                    (ms, now_ms()),
                    StatsField::Failed,
                ));
            }
            Outcome::Cancelled => {
                let _: i64 = self
                    .scripts
                    .requeue
                    .key(inflight)
                    .key(keys.queue(from))
                    .key(keys.running(from))
                    .arg(&raw)
                    .arg(keys.prefix())
                    .arg(now_ms())
                    .arg(if self.config.records { "1" } else { "0" })
                    .arg(from)
                    .arg("0")
                    .invoke_async(&mut con)
                    .await?;
                return Ok(());
            }
        }
        // the finish's reply: `done`, or `[done, item]` when it staged a delivery to a queue
        let (reply, _): (redis::Value, i64) =
            self.send_finish(&mut con, from, &pipe, &cancel).await?;
        let (done, staged): (i64, Option<String>) = match reply {
            redis::Value::Array(v) if v.len() == 2 => {
                let [done, item]: [redis::Value; 2] = v.try_into().expect("two elements");
                (
                    redis::from_redis_value(done)?,
                    Some(redis::from_redis_value(item)?),
                )
            }
            v => (redis::from_redis_value(v)?, None),
        };
        // 0: no longer in flight (put back by a reaper): this finish wrote nothing. Outcomes
        // are counted with records on or off; `long` (2) needs a started record.
        if done > 0 {
            // the finish may have staged a delivery: the outbox loop looks soon
            if let Some(i) = self.config.queues.iter().position(|q| *q == env.queue) {
                self.finished[i].store(true, Ordering::Relaxed);
            }
            self.counts.add(&env.queue, finish_ms, counted);
            if done == 2 {
                self.counts.add(&env.queue, finish_ms, &[LONG]);
            }
        }
        // A delivery to a destination queue, staged claimed for this worker: forwarded now
        // (the destination's slot), then settled (the queue's). A failure leaves it staged for
        // the outbox loop of any worker of the queue once the claim lease ends.
        if let Some(raw) = staged
            && let Err(e) = crate::outbox::deliver_staged(&self.redis, keys, &env.queue, &raw).await
        {
            tracing::warn!(id = %env.id, error = %e, "delivery to a destination queue failed; the outbox retries it");
        }
        Ok(())
    }
}

impl Inner {
    /// Where queue `queue`'s commands go, for messages: on a cluster the master of its hash
    /// slot in the slot map the connection last read, else (and before one was read)
    /// [`Conn::describe`].
    fn node_of(&self, queue: &str) -> String {
        self.node_of_key(&self.config.keys.queue(queue))
    }

    /// [`Self::node_of`] a key.
    fn node_of_key(&self, key: &str) -> String {
        self.redis
            .master_of(key.as_bytes())
            .unwrap_or_else(|| self.redis.describe())
    }

    /// Send a finished task's finish pipeline until Redis takes it: the task has run, so
    /// leaving it in flight would let the slot's next fetch hand it back and run it again.
    /// `finish.lua` is idempotent (a second send finds the task gone and writes nothing).
    /// Retries with backoff (0.25 s doubling to 5 s); gives up only when the drain cancels
    /// the running tasks (the drain then puts the task back: it may run again, at least once).
    /// `queue`: the task's queue, whose hash slot the pipeline's keys are in (for messages).
    async fn send_finish(
        &self,
        con: &mut Conn,
        queue: &str,
        pipe: &redis::Pipeline,
        cancel: &watch::Receiver<bool>,
    ) -> redis::RedisResult<(redis::Value, i64)> {
        let mut wait = Duration::from_millis(250);
        let mut reloaded = false;
        loop {
            let e = match pipe.query_async(con).await {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) && !reloaded {
                reloaded = true;
                // Script cache flushed (a restart, a failover): load and send again. One
                // `SCRIPT LOAD` per script, which a cluster connection sends to every master
                // (in a pipeline it would go to one node, maybe another).
                let finish = self
                    .scripts
                    .finish
                    .prepare_invoke()
                    .load_async::<Conn>(con)
                    .await;
                let record = self
                    .scripts
                    .record
                    .prepare_invoke()
                    .load_async::<Conn>(con)
                    .await;
                if finish.is_ok() && record.is_ok() {
                    continue;
                }
            }
            if *cancel.borrow() {
                return Err(e);
            }
            self.redis.after_error(&e);
            tracing::warn!(error = %e, queue = %queue, node = %self.node_of(queue), retry_in = ?wait, "finishing a task failed; retrying");
            let mut cancel = cancel.clone();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.wait_for(|c| *c) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }
}

/// On a Redis Cluster, how long a slot waits for the reply to one fetch call (a script that
/// answers in milliseconds) before it takes the master of the call's hash slot for failing and
/// goes on with its other queues.
pub const FETCH_LIMIT: Duration = Duration::from_millis(500);

/// On a Redis Cluster, how long a slot leaves the queues of a failed call alone (no fetch, no
/// `BLMOVE`) the first time; each failure in a row doubles it, up to [`REST_MAX`].
pub const REST_FIRST: Duration = Duration::from_secs(1);

/// The longest rest of a failing queue ([`REST_FIRST`]).
pub const REST_MAX: Duration = Duration::from_secs(8);

/// On a Redis Cluster, the queues of one slot whose last call failed (their master down,
/// stalled, or failing over), each left alone until a time, so that a slot's turns go on with
/// the queues of the other masters instead of waiting on the failing one every turn. The rest
/// doubles with each failure in a row ([`REST_FIRST`] to [`REST_MAX`]); a call that gets a
/// reply ends it.
#[derive(Debug, Default)]
struct Resting(HashMap<usize, (Instant, Duration)>);

impl Resting {
    /// A call on the queues `group` failed at `now`: they rest; returns for how long.
    fn failed(&mut self, group: &[usize], now: Instant) -> Duration {
        let last = group
            .iter()
            .filter_map(|i| self.0.get(i))
            .map(|r| r.1)
            .max();
        let rest = last.map_or(REST_FIRST, |d| (d * 2).min(REST_MAX));
        for &i in group {
            self.0.insert(i, (now + rest, rest));
        }
        rest
    }

    /// A call on the queues `group` got its reply.
    fn answered(&mut self, group: &[usize]) {
        for i in group {
            self.0.remove(i);
        }
    }

    /// Whether queue `i` may be called at `now`.
    fn open(&self, i: usize, now: Instant) -> bool {
        self.0.get(&i).is_none_or(|(until, _)| *until <= now)
    }

    /// How long from `now` until the first resting queue may be called again
    /// ([`REST_FIRST`] when none rests).
    fn next_open(&self, now: Instant) -> Duration {
        self.0
            .values()
            .map(|(until, _)| until.saturating_duration_since(now))
            .min()
            .unwrap_or(REST_FIRST)
    }
}

/// How often a worker sweeps the running sets of its queues ([`Inner::sweep_running`]; at
/// most twice the heartbeat TTL).
pub const SWEEP_EVERY_MS: u64 = 30_000;

/// The `fetch.lua` calls of one turn: indexes into `queues`, in the try order `order`, one
/// group per call (each call tried in turn until one returns a task). `per_slot` false
/// (standalone, Sentinel): every queue in one call, one round trip. `per_slot` true (Redis
/// Cluster): one call per run of consecutive queues in one hash slot, so each call touches
/// one slot (and looks only in the slot's in-flight lists of its queues: see `suspect` in
/// [`Inner::slot_loop`]).
fn fetch_groups(
    keys: &Keys,
    queues: &[String],
    order: &[usize],
    per_slot: bool,
) -> Vec<Vec<usize>> {
    if !per_slot {
        return vec![order.to_vec()];
    }
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    for &i in order {
        let slot = protocol::keys::slot(&keys.queue(&queues[i]));
        match groups.last_mut() {
            Some((s, g)) if *s == slot => g.push(i),
            _ => groups.push((slot, vec![i])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// Put every task of `list`, a slot's in-flight list of `queue` ([`Keys::inflight_q`]), back
/// at the head of `queue` (a malformed one to its dead letters); the list leaves the
/// queue's running set. One hash slot per call. Returns the number put back.
async fn requeue_list(
    con: &mut Conn,
    keys: &Keys,
    list: &str,
    queue: &str,
    records: bool,
) -> redis::RedisResult<u64> {
    let items: Vec<String> = con.lrange(list, 0, -1).await?;
    let script = redis::Script::new(scripts::REQUEUE);
    let mut moved = 0;
    for raw in items {
        let malformed = Envelope::from_json(&raw).is_err();
        let target = if malformed {
            keys.dead(queue)
        } else {
            keys.queue(queue)
        };
        let n: u64 = script
            .key(list)
            .key(target)
            .key(keys.running(queue))
            .arg(&raw)
            .arg(keys.prefix())
            .arg(now_ms())
            .arg(if records { "1" } else { "0" })
            .arg(queue)
            .arg(if malformed { "1" } else { "0" })
            .invoke_async(con)
            .await?;
        moved += n;
    }
    Ok(moved)
}

/// Put every task of a slot's one in-flight list of earlier versions ([`Keys::inflight`])
/// back at the head of its queue (`requeue_legacy.lua`; several hash slots).
async fn requeue_legacy(con: &mut Conn, keys: &Keys, slot: &str) -> redis::RedisResult<u64> {
    let inflight = keys.inflight(slot);
    let items: Vec<String> = con.lrange(&inflight, 0, -1).await?;
    let script = redis::Script::new(scripts::REQUEUE_LEGACY);
    let mut moved = 0;
    for raw in items {
        let target = match Envelope::from_json(&raw) {
            Ok(env) => keys.queue(&env.queue),
            Err(_) => keys.dead("_malformed"),
        };
        let n: u64 = script
            .key(&inflight)
            .key(target)
            .arg(&raw)
            .arg(keys.prefix())
            .arg(now_ms())
            .arg("1")
            .invoke_async(con)
            .await?;
        moved += n;
    }
    Ok(moved)
}

/// Recover the in-flight tasks of the slots of [`Keys::slots`] whose heartbeat is older than
/// `ttl_ms` (never one of `own`), then forget those slots. Per queue of the dead slot (the
/// `queues` of its hash, and `queues`, ours): its tasks go back (`requeue.lua`), the empty
/// list leaves the running set (`release.lua`); once every list is empty, `forget2.lua`
/// removes the slot and its hash if its heartbeat is still old. Each call touches one hash
/// slot. Safe to run from several workers at once. Returns the number of tasks put back.
pub async fn reap_dead(
    con: &Conn,
    keys: &Keys,
    ttl_ms: u64,
    own: &[String],
    queues: &[String],
) -> redis::RedisResult<u64> {
    let mut con = con.clone();
    let cutoff = now_ms().saturating_sub(ttl_ms);
    let dead: Vec<String> = con
        .zrangebyscore_limit(keys.slots(), "-inf", cutoff, 0, 1_000)
        .await?;
    let release = redis::Script::new(scripts::RELEASE);
    let forget = redis::Script::new(scripts::FORGET2);
    let mut total = 0;
    for slot in dead.iter().filter(|s| !own.contains(s)) {
        let listed: Option<String> = con.hget(keys.worker(slot), "queues").await?;
        let mut served: Vec<String> = listed
            .iter()
            .flat_map(|l| l.split(','))
            .filter(|q| !q.is_empty())
            .map(String::from)
            .collect();
        for q in queues {
            if !served.contains(q) {
                served.push(q.clone());
            }
        }
        let mut n = 0;
        let mut empty = true;
        for q in &served {
            let list = keys.inflight_q(q, slot);
            n += requeue_list(&mut con, keys, &list, q, true).await?;
            let released: i64 = release
                .key(&list)
                .key(keys.running(q))
                .invoke_async(&mut con)
                .await?;
            empty &= released == 1;
        }
        total += n;
        if n > 0 {
            tracing::warn!(slot, recovered = n, "recovered tasks of a dead worker");
        }
        // a list that got a task meanwhile (the slot is alive after all): next time
        if empty {
            let _: i64 = forget
                .key(keys.slots())
                .key(keys.worker(slot))
                .arg(slot)
                .arg(cutoff)
                .invoke_async(&mut con)
                .await?;
        }
    }
    Ok(total)
}

/// The upgrade pass: recover the in-flight tasks of the slots of the registry of earlier
/// versions ([`Keys::workers`]) whose heartbeat is older than `ttl_ms` (never one of `own`),
/// from their one list per slot ([`Keys::inflight`]), then forget those slots
/// (`forget.lua`, which leaves a slot of [`Keys::slots`] alone: it is not in that registry).
/// Also forgets funcscale-celery's dead slots. Returns the number of tasks put back.
pub async fn reap_dead_legacy(
    con: &Conn,
    keys: &Keys,
    ttl_ms: u64,
    own: &[String],
) -> redis::RedisResult<u64> {
    let mut con = con.clone();
    let cutoff = now_ms().saturating_sub(ttl_ms);
    let dead: Vec<String> = con
        .zrangebyscore_limit(keys.workers(), "-inf", cutoff, 0, 1_000)
        .await?;
    let forget = redis::Script::new(scripts::FORGET);
    let mut total = 0;
    for slot in dead.iter().filter(|s| !own.contains(s)) {
        let n = requeue_legacy(&mut con, keys, slot).await?;
        total += n;
        if n > 0 {
            tracing::warn!(
                slot,
                recovered = n,
                "recovered tasks of a dead worker of an earlier version"
            );
        }
        let _: i64 = forget
            .key(keys.workers())
            .key(keys.inflight(slot))
            .key(keys.worker(slot))
            .arg(slot)
            .arg(cutoff)
            .arg(keys.prefix())
            .invoke_async(&mut con)
            .await?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_taken_but_not_written_come_back_for_the_next_flush() {
        let c = PendingCounts::default();
        c.add("q", 60_000, &[COMPLETED, FAILED]);
        {
            let t = c.take();
            assert_eq!(t.rows().len(), 1);
            // dropped unwritten: a failed or cancelled write
        }
        c.add("q", 60_001, &[COMPLETED]);
        let t = c.take();
        assert_eq!(t.rows()[&("q".to_string(), 1)], [2, 0, 0, 1, 0]);
        t.written();
        assert!(c.take().rows().is_empty(), "written rows are gone");
    }

    #[test]
    fn a_partly_written_flush_returns_only_the_unwritten_queues() {
        let c = PendingCounts::default();
        c.add("a", 60_000, &[COMPLETED]);
        c.add("b", 60_000, &[FAILED]);
        {
            let mut t = c.take();
            t.written_queue("a");
        }
        let t = c.take();
        assert_eq!(t.rows().len(), 1);
        assert_eq!(t.rows()[&("b".to_string(), 1)], [0, 0, 0, 1, 0]);
    }

    #[test]
    fn a_failing_queue_rests_longer_at_each_failure_until_a_reply() {
        let t0 = Instant::now();
        let mut r = Resting::default();
        assert!(r.open(0, t0) && r.open(1, t0));
        assert_eq!(r.next_open(t0), REST_FIRST);
        // queues 0 and 1 share a hash slot: one call, one rest
        assert_eq!(r.failed(&[0, 1], t0), REST_FIRST);
        assert!(!r.open(0, t0) && !r.open(1, t0) && r.open(2, t0));
        assert!(r.open(0, t0 + REST_FIRST));
        let mut now = t0 + REST_FIRST;
        let mut rests = Vec::new();
        for _ in 0..5 {
            let rest = r.failed(&[0, 1], now);
            rests.push(rest.as_secs());
            assert_eq!(r.next_open(now), rest);
            now += rest;
        }
        assert_eq!(rests, [2, 4, 8, 8, 8], "doubling up to REST_MAX");
        // a reply ends the rest: the next failure starts again from the first rest
        r.answered(&[0, 1]);
        assert!(r.open(0, now) && r.open(1, now));
        assert_eq!(r.failed(&[0], now), REST_FIRST);
        assert!(r.open(1, now));
    }

    #[test]
    fn fetch_groups_are_one_call_or_runs_of_one_hash_slot() {
        let keys = Keys::default();
        let queues: Vec<String> = ["{a.x}", "{a.y}", "{a.x}", "{b.z}"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            fetch_groups(&keys, &queues, &[3, 0, 1, 2], false),
            [vec![3, 0, 1, 2]]
        );
        // {a.x} twice in a row shares a slot; order kept
        assert_eq!(
            fetch_groups(&keys, &queues, &[0, 2, 1, 3], true),
            [vec![0, 2], vec![1], vec![3]]
        );
    }
}

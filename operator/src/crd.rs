//! The custom resources: `FuncQueue` and `FuncWorkerPool` (group `funcscale.dev`, `v1alpha1`).
//!
//! Doc comments on spec fields are what users read in `kubectl explain`, so they
//! are written for users. Everything the API server can check is in the schema:
//! OpenAPI bounds and patterns, defaults, and CEL rules (`x-kubernetes-validations`).
#![allow(
    clippy::duplicated_attributes,
    reason = "kube's printcolumn(...) attributes repeat the same keys by design"
)]

use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// API group of both resources.
pub const GROUP: &str = "funcscale.dev";
/// API version of both resources.
pub const VERSION: &str = "v1alpha1";
/// A DNS-1123 label: what queue names must look like.
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

// ---------------------------------------------------------------------------------------------
// FuncQueue
// ---------------------------------------------------------------------------------------------

/// A work queue in Redis: where tasks wait until a worker pool runs them.
///
/// The queue's name is the resource's name. Its id in Redis is `{<namespace>.<name>}`, so
/// same-named queues of two namespaces never share a key: its tasks live in the Redis list
/// `funcscale:q:{<namespace>.<name>}` (shown in `status.key`); set `key` and `format` to adopt
/// an existing Celery, RQ or Sidekiq queue, or `legacyKeys` to keep a queue made before
/// namespaced keys.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "funcscale.dev",
    version = "v1alpha1",
    kind = "FuncQueue",
    plural = "funcqueues",
    shortname = "fq",
    category = "funcscale",
    namespaced,
    status = "FuncQueueStatus",
    doc = "A function-task queue in Redis, with its cron schedules and measured load.",
    printcolumn(name = "Format", type_ = "string", json_path = ".spec.format"),
    printcolumn(
        name = "Key",
        type_ = "string",
        json_path = ".status.key",
        description = "the Redis list (or stream) producers push to",
        priority = 1
    ),
    printcolumn(name = "Depth", type_ = "integer", json_path = ".status.depth"),
    printcolumn(
        name = "Oldest",
        type_ = "number",
        json_path = ".status.oldestTaskAgeSeconds",
        description = "age of the oldest waiting task in seconds"
    ),
    printcolumn(
        name = "TaskMs",
        type_ = "number",
        json_path = ".status.taskTimeMs",
        description = "measured task time in ms"
    ),
    printcolumn(
        name = "Sched/min",
        type_ = "integer",
        json_path = ".status.scheduledPerPeriod",
        description = "scheduled executions per period"
    ),
    printcolumn(name = "Pools", type_ = "string", json_path = ".status.consumers"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.retryBackoff) || !has(self.retryBackoff.baseMs) || !has(self.retryBackoff.maxMs) || self.retryBackoff.baseMs <= self.retryBackoff.maxMs").message("retryBackoff.baseMs must not exceed retryBackoff.maxMs").field_path(".retryBackoff"),
    validation = Rule::new("has(self.stream) == (has(self.format) && self.format == 'Stream')").message("stream (the consumer group) is set exactly when format is Stream: a Stream queue needs stream.group, and only a Stream queue has one").field_path(".stream")
)]
pub struct FuncQueueSpec {
    /// Redis list that holds the waiting tasks of an adopted queue (format `Celery`, `Rq`
    /// or `Sidekiq`), e.g. `celery` for Celery's default queue. For a Celery queue it is the
    /// Celery queue name (the `-Q` of its workers; kombu adds `celery.globalKeyprefix` and
    /// the priority lists); without it, the FuncQueue's name (a Celery FuncQueue's name has no
    /// dot, `InvalidSpec` on `metadata.name`: for a dotted Celery queue set it here). For format `Stream` it is the
    /// Redis Stream's key (what producers `XADD` to); without it, the FuncQueue's name. funcscale's own queues
    /// (format `Funcscale`) use `funcscale:q:{<namespace>.<name>}` (see `status.key`). A
    /// list that a queue of another namespace on the same Redis already uses is refused
    /// for the younger of the two (`Ready=False`, reason `KeyConflict`, naming both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub key: Option<String>,

    /// Who writes the tasks, which decides how the depth is read:
    /// `Funcscale` (default), `Celery` (the list plus its priority sub-lists, see `celery`),
    /// `Rq` (the `rq:queue:<name>` list), `Sidekiq` (the `queue:<name>` list) or `Stream`
    /// (a Redis Stream read by a consumer group, see `stream`: the depth is the group's lag).
    #[serde(default)]
    pub format: QueueFormat,

    /// Celery's Redis transport options of an adopted Celery queue (format `Celery`): the
    /// same `priority_steps`, `sep` and `global_keyprefix` as the application's
    /// `broker_transport_options`, so the depth reads every priority list kombu uses and the
    /// running tasks are read from its `unacked` hash. Unset: kombu's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub celery: Option<CeleryTransport>,

    /// The consumer group of an adopted Redis Stream (format `Stream`, required there; the
    /// stream is `key`). The depth is the group's lag: entries added to the stream and not
    /// yet delivered to any consumer of the group; `status.running` is its pending entries
    /// (delivered with `XREADGROUP`, not yet acknowledged with `XACK`); the oldest task's age
    /// is that of the first undelivered entry, from its id. The operator only reads the
    /// stream (it never creates the group, reads entries for a consumer or acknowledges
    /// them): pools of a Stream queue run your own consumer (`image` and `command`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamGroupRef>,

    /// Redis connection for this queue. Without it the operator's default connection is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisConnection>,

    /// Expected time one task takes, in milliseconds. Used to size pools until
    /// workers have measured the real time.
    #[serde(default = "default_task_time_ms")]
    #[schemars(range(min = 1, max = 86_400_000))]
    pub task_time_ms: u64,

    /// Cron schedules whose tasks the beat enqueues into this queue. Only for format
    /// `Funcscale`: a Celery, RQ or Sidekiq queue with schedules is refused (`InvalidSpec`):
    /// their workers cannot read funcscale tasks; keep those in the system's own scheduler.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[x_kube(
        validation = Rule::new("self.all(a, self.exists_one(b, a.name == b.name))").message("schedule names must be unique within a queue")
    )]
    pub schedules: Vec<Schedule>,

    /// How many times a failing task is retried before it goes to the dead-letter list:
    /// every task of the queue, unless the task itself carries a count (`enqueue
    /// --max-retries`, the envelope's `max_retries`).
    #[serde(default = "default_max_retries")]
    #[schemars(range(min = 0, max = 100))]
    pub max_retries: u32,

    /// Delay before each retry of a failed task: `baseMs` before the first, doubling per
    /// retry up to `maxMs` (each ±50% jitter). Unset fields use the workers'
    /// `--retry-base` (1 s) and `--retry-max` (5 min).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_backoff: Option<RetryBackoff>,

    /// Keep the per-queue Redis keys of funcscale before namespaced keys: the queue's id is
    /// its bare name, so its list is `funcscale:q:<name>` and its retries, dead letters,
    /// stats, settings, schedules registry, outbox and task records are named by `<name>` too;
    /// its workers use the worker registry shared by every namespace. Only for queues
    /// created before the upgrade whose producers you cannot switch yet. These keys name no
    /// namespace: of two queues on one Redis with the same id (a `legacyKeys` or adopted
    /// queue of the same name in another namespace) or the same list, the younger is
    /// refused (`Ready=False`, reason `KeyConflict`, naming both). See
    /// docs/operations.md, "Upgrading to namespaced keys".
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub legacy_keys: bool,

    /// Where the result of every task that succeeds is sent: a task enqueued into another
    /// FuncQueue (exactly once, staged atomically with the completion), or a POST to a URL
    /// (retried with backoff, at least once; after 12 failed attempts, about 19 minutes,
    /// parked until replayed with `funcscale-worker outbox requeue`). Unset: the result is not
    /// kept (task records hold the state, times, worker and error, not the result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<TaskDestination>,

    /// Where a task goes once it has failed for good (after `maxRetries`, when it enters the
    /// dead-letter list), with its error: a task enqueued into another FuncQueue (exactly
    /// once, staged atomically with the dead-lettering), or a POST
    /// to a URL (retried with backoff, at least once; after 12 failed attempts, about 19
    /// minutes, parked until replayed with `funcscale-worker outbox requeue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<TaskDestination>,

    /// How long the task records of this queue (state, times, worker, error) are kept.
    /// Unset fields use the workers' defaults: 24 hours and 100000 records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<RecordRetention>,
}

/// Where a queue sends the outcome of a task: `queue` (with an optional `function`) or `url`.
///
/// A queue destination gets a new task calling `function` with keyword arguments
/// `event` (`success` or `failure`), `task` (the finished task) and `result` or `error`.
/// A URL destination receives the same JSON object as the body of a POST.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
// `function` is a CEL reserved word (Kubernetes wants it escaped as `__function__`, which
// kube's CEL validator does not do), so "function only with queue" is checked by the reconcile.
#[x_kube(
    validation = Rule::new("has(self.queue) != has(self.url)").message("a destination is either a queue (queue, optional function) or a url: set exactly one of queue and url")
)]
pub struct TaskDestination {
    /// Name of a FuncQueue in the same namespace that receives a new task. It must use the
    /// same Redis as this queue and its default key (no `key`, format `Funcscale`): the
    /// completion stages the new task in the outbox of the finished task's queue, in the same
    /// Redis transaction, and the worker enqueues it right after, exactly once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_LABEL_PATTERN))]
    pub queue: Option<String>,
    /// Function the new task calls (only with `queue`). Defaults to `on_success` for
    /// `onSuccess` and `on_failure` for `onFailure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub function: Option<String>,
    /// HTTP(S) URL that receives the task as a JSON POST. Deliveries go through the outbox of
    /// the finished task's queue in Redis, written atomically with its completion, and the
    /// workers retry them with backoff until the server answers 2xx (after 12 failed
    /// attempts, about 19 minutes, a delivery is parked in the outbox's dead list and no
    /// longer retried: `funcscale-worker outbox list --dead` lists it and `funcscale-worker
    /// outbox requeue` replays it). At least once: a receiver may see an event twice and
    /// deduplicates on the `x-funcscale-delivery-id` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^https?://"), length(max = 2048))]
    pub url: Option<String>,
}

/// Delay before the retries of a failed task.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RetryBackoff {
    /// Delay before the first retry in milliseconds; it doubles per retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86_400_000))]
    pub base_ms: Option<u64>,
    /// Longest delay between retries in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86_400_000))]
    pub max_ms: Option<u64>,
}

/// Retention of a queue's task records: a record goes when it is older than `maxAgeSeconds`
/// or when the queue has more than `maxCount` records (oldest first).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecordRetention {
    /// Seconds a record is kept after its last change (at least 60). Default 86400 (24 hours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60))]
    pub max_age_seconds: Option<u64>,
    /// Most records kept for the queue (at least 1). Default 100000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_count: Option<u64>,
}

fn default_task_time_ms() -> u64 {
    500
}

fn default_max_retries() -> u32 {
    3
}

/// kombu's Redis transport options (`broker_transport_options` of the Celery app) that decide
/// where a Celery queue's messages are: the list `<globalKeyprefix><queue>` for priority step
/// 0 and `<globalKeyprefix><queue><separator><step>` for every other step; tasks delivered to
/// a worker but not acknowledged are in the hash `<globalKeyprefix><unackedKey>`.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CeleryTransport {
    /// kombu's `priority_steps`: ascending, distinct, each 0..=255. Default `[0, 3, 6, 9]`.
    #[serde(default = "default_priority_steps")]
    #[schemars(length(min = 1, max = 256))]
    pub priority_steps: Vec<u8>,
    /// kombu's `sep`, between the queue name and the priority step. Default `"\x06\x16"`.
    #[serde(default = "default_celery_separator")]
    #[schemars(length(min = 1, max = 64))]
    pub separator: String,
    /// kombu's `global_keyprefix`, put before every key of the transport. Default empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 256))]
    pub global_keyprefix: String,
    /// kombu's `unacked_key`: the hash of delivered, unacknowledged messages. Default
    /// `unacked`.
    #[serde(default = "default_unacked_key")]
    #[schemars(length(min = 1, max = 256))]
    pub unacked_key: String,
}

impl Default for CeleryTransport {
    fn default() -> Self {
        Self {
            priority_steps: default_priority_steps(),
            separator: default_celery_separator(),
            global_keyprefix: String::new(),
            unacked_key: default_unacked_key(),
        }
    }
}

fn default_priority_steps() -> Vec<u8> {
    funcscale_protocol::foreign::CELERY_PRIORITY_STEPS.to_vec()
}

fn default_celery_separator() -> String {
    funcscale_protocol::foreign::CELERY_PRIORITY_SEP.into()
}

fn default_unacked_key() -> String {
    funcscale_protocol::foreign::CELERY_UNACKED_KEY.into()
}

/// The consumer group of a Redis Stream (FuncQueue format `Stream`).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StreamGroupRef {
    /// Name of the consumer group whose backlog sizes the pools, as your consumers pass it
    /// to `XREADGROUP GROUP <group> <consumer>`. Create it before the pool may scale to zero
    /// (`XGROUP CREATE <key> <group> $ MKSTREAM`): until it exists the queue's depth is 0 and
    /// `Ready=False` (reason `StreamGroupMissing`) says so.
    #[schemars(length(min = 1, max = 256))]
    pub group: String,
}

/// Which system writes the queue, and so how its depth is read.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum QueueFormat {
    /// funcscale's own queue (`funcscale:q:{<namespace>.<name>}`; with `legacyKeys`
    /// `funcscale:q:<name>`).
    #[default]
    Funcscale,
    /// A Celery queue on the Redis broker: the list plus its priority sub-lists.
    Celery,
    /// An RQ queue (`rq:queue:<name>` unless `key` is set).
    Rq,
    /// A Sidekiq queue (`queue:<name>` unless `key` is set).
    Sidekiq,
    /// A Redis Stream (`key`, else the queue's name) read by the consumer group `stream.group`.
    Stream,
}

/// A cron schedule: the beat enqueues `function` into the queue at every tick.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    /// Name of the schedule, unique within the queue.
    #[schemars(regex(pattern = DNS_LABEL_PATTERN))]
    pub name: String,
    /// Cron expression: five fields (minute hour day month weekday) or six with seconds first,
    /// e.g. `*/5 * * * *` or `*/10 * * * * *`.
    #[schemars(length(min = 9, max = 128))]
    #[x_kube(
        validation = Rule::new("self.split(' ').filter(f, f != '').size() in [5, 6]").message("cron must have 5 fields (minute hour day month weekday) or 6 (seconds first)")
    )]
    pub cron: String,
    /// Function name the task calls.
    #[schemars(length(min = 1, max = 253))]
    pub function: String,
    /// Positional arguments passed to the function (a JSON array).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "any_json_array")]
    pub args: Vec<serde_json::Value>,
}

/// Where a queue's Redis is. A password never appears inline: put the whole URL in a
/// Secret (`urlSecretRef`), or give the URL without password plus `passwordSecretRef` (and,
/// for a Redis ACL user, the username in the URL or in `usernameSecretRef`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.url) && has(self.urlSecretRef))").message("set either url or urlSecretRef, not both"),
    validation = Rule::new("!has(self.passwordSecretRef) || has(self.url)").message("passwordSecretRef needs url (the URL without its password)"),
    validation = Rule::new("!has(self.usernameSecretRef) || has(self.url)").message("usernameSecretRef needs url (the URL without its credentials)"),
    validation = Rule::new("!has(self.sentinelPasswordSecretRef) || has(self.url) || has(self.urlSecretRef)").message("sentinelPasswordSecretRef needs url or urlSecretRef (a redis+sentinel:// URL)"),
    validation = Rule::new("!has(self.sentinelUsernameSecretRef) || has(self.url) || has(self.urlSecretRef)").message("sentinelUsernameSecretRef needs url or urlSecretRef (a redis+sentinel:// URL)")
)]
pub struct RedisConnection {
    /// Redis URL without a password, e.g. `redis://redis.queues:6379/0`,
    /// `rediss://user@redis.example:6380/2` for TLS, or a Sentinel set's master:
    /// `redis+sentinel://sentinel-0.redis:26379,sentinel-1.redis:26379/mymaster/0`
    /// (`rediss+sentinel://` for TLS; the hosts are sentinels, port 26379 by default; workers,
    /// beat and operator follow a failover), or a Redis Cluster:
    /// `redis+cluster://node-0.redis:6379,node-1.redis:6379` (`rediss+cluster://` for TLS;
    /// seed nodes, database 0 only; the operator reads one pipeline per master, workers and
    /// beat follow slot moves and failovers; Celery and `legacyKeys` queues cannot run there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^rediss?(\\+sentinel|\\+cluster)?://"))]
    #[x_kube(
        validation = Rule::new("!self.matches('^rediss?(\\\\+sentinel|\\\\+cluster)?://[^/@]*:[^/@]*@')").message("the Redis URL carries a password: put it in a Secret and use urlSecretRef or passwordSecretRef")
    )]
    pub url: Option<String>,
    /// The whole Redis URL (password included) from a key of a Secret in the queue's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret_ref: Option<SecretKeyRef>,
    /// The password from a key of a Secret in the queue's namespace, used with `url`: Redis
    /// `requirepass`, or the password of the ACL user named in `url` or `usernameSecretRef`.
    /// The pods get it as `FUNCSCALE_REDIS_PASSWORD`. A trailing newline is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// The Redis ACL username from a key of a Secret in the queue's namespace, used with `url`
    /// (it replaces a username in `url`). The pods get it as `FUNCSCALE_REDIS_USERNAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_secret_ref: Option<SecretKeyRef>,
    /// For a `redis+sentinel://` URL (in `url` or `urlSecretRef`): the password the sentinels
    /// themselves require (their `requirepass`, or the ACL user's), from a key of a Secret in
    /// the queue's namespace. The data nodes' password is `passwordSecretRef` (or in the URL of
    /// `urlSecretRef`). The pods get it as `FUNCSCALE_REDIS_SENTINEL_PASSWORD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel_password_secret_ref: Option<SecretKeyRef>,
    /// For a `redis+sentinel://` URL: the ACL username the sentinels require, from a key of a
    /// Secret. The pods get it as `FUNCSCALE_REDIS_SENTINEL_USERNAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel_username_secret_ref: Option<SecretKeyRef>,
}

/// A key of a Secret in the same namespace.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What the operator last measured for a queue.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FuncQueueStatus {
    /// The Redis list producers push the queue's tasks to (for format `Stream`: the stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The queue's id in Redis: what a task envelope carries in `queue` and what
    /// `funcscale-worker --queue` takes (or the name with `--namespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_id: Option<String>,
    /// Tasks waiting in the queue (for format `Stream`: the consumer group's lag, entries not
    /// yet delivered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u64>,
    /// Age in seconds of the oldest waiting task (when the queue format records it; for
    /// Celery, when producers set the `funcscale_enqueued_ms` header, as `funcscale-celery`
    /// does; for a Stream, from the first undelivered entry's id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_task_age_seconds: Option<f64>,
    /// Tasks enqueued per second, averaged over the last polls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival_rate: Option<f64>,
    /// Tasks finished per second, averaged over the last polls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_rate: Option<f64>,
    /// Retries waiting for their due time (funcscale queues); those already due count as
    /// backlog when pools are sized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries_waiting: Option<u64>,
    /// Deliveries to `onSuccess` / `onFailure` destinations due in the queue's outbox and not
    /// made yet (funcscale queues). Only the queue's workers make them, so they count as
    /// backlog when pools are sized: a pool at zero starts a worker to deliver them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliveries_due: Option<u64>,
    /// Tasks running now: read from the workers' running set (funcscale queues) or, for
    /// Celery queues, the tasks delivered to workers and not acknowledged (kombu's `unacked`
    /// hash: running or prefetched), for Stream queues the consumer group's pending entries
    /// (delivered, not acknowledged); else estimated as completion rate × task time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<u64>,
    /// Task time in ms used for sizing: measured by the workers, else `spec.taskTimeMs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_time_ms: Option<f64>,
    /// Where `taskTimeMs` comes from: `Measured` or `Hint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_time_source: Option<String>,
    /// Scheduled executions per period (one minute): `spec.schedules` plus the
    /// dynamically registered schedules in Redis (the "monitors").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_per_period: Option<u64>,
    /// Worker pools that serve this queue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
    /// Which Redis the operator read the queue from: the topology (`standalone`, `sentinel`,
    /// `cluster`) and the node that answered (for Sentinel the master then: it changes with a
    /// failover; for a cluster the master serving the queue's list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<QueueRedisStatus>,
    /// When the operator last read this queue from Redis (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_poll_time: Option<String>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `MetricsAvailable`, `Served` (false when no pool serves the queue),
    /// `DestinationsReady` (whether `onSuccess` / `onFailure` can be delivered; its message
    /// says where results and failures go), `ConfigApplied` (whether retention and
    /// destinations are written to the queue's Redis).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

// ---------------------------------------------------------------------------------------------
// FuncWorkerPool
// ---------------------------------------------------------------------------------------------

/// Which Redis a queue was read from.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QueueRedisStatus {
    /// `standalone` (one server), `sentinel` (a Sentinel set's master) or `cluster` (a Redis
    /// Cluster).
    pub topology: String,
    /// `host:port` of the node that answered the last poll (for a cluster: the master serving
    /// the queue's list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A pool of worker pods serving one or more queues, or the single beat pod.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "funcscale.dev",
    version = "v1alpha1",
    kind = "FuncWorkerPool",
    plural = "funcworkerpools",
    shortname = "fwp",
    category = "funcscale",
    namespaced,
    status = "FuncWorkerPoolStatus",
    doc = "A pool of worker pods that runs the tasks of its queues, sized from the work waiting; or the single beat pod.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.role"),
    printcolumn(name = "Queues", type_ = "string", json_path = ".spec.queues"),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas"
    ),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "TaskMs",
        type_ = "number",
        json_path = ".status.decision.taskTimeMs",
        priority = 1
    ),
    printcolumn(name = "Rule", type_ = "string", json_path = ".status.decision.rule"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.role != 'Beat' || !has(self.autoscaling)").message("a Beat pool runs exactly one replica: remove autoscaling").field_path(".autoscaling"),
    validation = Rule::new("self.role != 'Beat' || !has(self.replicas) || self.replicas == 1").message("a Beat pool runs exactly one replica: replicas must be 1").field_path(".replicas"),
    validation = Rule::new("!(has(self.replicas) && has(self.autoscaling))").message("set either replicas (fixed size, kubectl scale, HPA) or autoscaling, not both").field_path(".replicas"),
    validation = Rule::new("self.role == 'Beat' || self.queues.size() > 0").message("a Worker pool needs at least one queue").field_path(".queues"),
    validation = Rule::new("!has(self.celery) || !has(self.command) || size(self.command) == 0").message("set either celery (funcscale renders the celery command) or command, not both").field_path(".celery"),
    validation = Rule::new("self.role == 'Beat' || !has(self.celery) || !has(self.celery.scheduler)").message("celery.scheduler is for a Beat pool (celery beat -S)").field_path(".celery.scheduler"),
    validation = Rule::new("!has(self.limits) || !has(self.limits.softTimeLimitSeconds) || !has(self.limits.hardTimeLimitSeconds) || self.limits.softTimeLimitSeconds <= self.limits.hardTimeLimitSeconds").message("softTimeLimitSeconds must not exceed hardTimeLimitSeconds").field_path(".limits")
)]
pub struct FuncWorkerPoolSpec {
    /// `Worker` (default) runs the tasks of `queues`; `Beat` enqueues the cron schedules and
    /// always runs exactly one replica.
    #[serde(default)]
    pub role: PoolRole,

    /// Names of the FuncQueues (in this namespace) this pool serves.
    #[serde(default)]
    #[schemars(length(max = 64), inner(regex(pattern = DNS_LABEL_PATTERN)))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, a == b))").message("queue names must not repeat"))]
    pub queues: Vec<String>,

    /// In which order a worker takes tasks from its queues: `Fair` (round robin, one busy
    /// queue cannot starve the others; default) or `Priority` (the order of `queues`).
    #[serde(default)]
    pub queue_order: QueueOrder,

    /// Worker processes in each pod: how many tasks one pod runs at once.
    #[serde(default = "default_processes_per_pod")]
    #[schemars(range(min = 1, max = 256))]
    pub processes_per_pod: u32,

    /// Container image of the workers. Defaults to the operator's `--worker-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,

    /// Command to run instead of `funcscale-worker run --queues ... --processes ...` (or
    /// `funcscale-worker beat ...`), e.g. your own worker program (for Celery prefer
    /// `celery`). Such a container gets no readiness or liveness probe (funcscale's worker
    /// serves them on port 9090, your program need not): set them in `podTemplate` under the
    /// container's name (`worker`, or `beat` for a Beat pool). funcscale cannot apply
    /// `limits` to it: a pool with a command and limits is refused (`SpecValid=False`). The
    /// command replaces the image's entrypoint and its init, so the pod shares one process
    /// namespace (`shareProcessNamespace`), whose pause process reaps orphaned processes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,

    /// Run a Celery application: funcscale renders the command, `celery -A <app> worker -Q
    /// <the Celery queue names of queues> -c <processesPerPod> -P <pool> -n <pod>@%h` with
    /// `limits` as Celery's own flags (or `celery -A <app> beat` for a Beat pool), so the
    /// queues, the concurrency and the limits cannot disagree with what runs. Not together
    /// with `command`, `handler` or `queueOrder: Priority` (kombu's `queue_order_strategy`
    /// decides Celery's order). Every queue of the pool must have format `Celery`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub celery: Option<CeleryApp>,

    /// Task handler for the default command: `builtin` (noop, sleep, fail, record, flaky: for
    /// trials), `exec:<program>` to run a program per task with the task as JSON on stdin,
    /// `pool:<program>` (a long-lived child per process, JSON lines) or `http:<url>` (a POST
    /// per task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub handler: Option<String>,

    /// CPU and memory of each worker container, e.g. `requests: {cpu: "2.5", memory: 4Gi}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,

    /// Limits for each worker process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ProcessLimits>,

    /// Fixed number of pods. Leave it unset with `autoscaling`. Also what `kubectl scale`
    /// and a HorizontalPodAutoscaler write through the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: Option<i32>,

    /// Let funcscale size the pool from the work waiting in its queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// Fields merged into the generated pod template (labels, annotations, nodeSelector,
    /// tolerations, affinity, serviceAccountName, env, probes, ... — a partial
    /// PodTemplateSpec). Objects merge key by key; lists of named items (containers, env,
    /// volumes) merge by `name`. The generated container is `worker` (`beat` in a Beat pool):
    /// a container of another name is added to the pod and needs its own `image`. A probe
    /// with a handler (`httpGet`, `exec`, `tcpSocket`, `grpc`) replaces the generated
    /// handler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json_object")]
    pub pod_template: Option<serde_json::Value>,
}

fn default_processes_per_pod() -> u32 {
    5
}

/// The Celery application a pool runs (`spec.celery`).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CeleryApp {
    /// The application, as `celery -A` takes it, e.g. `shop` or `proj.celery:app`.
    #[schemars(length(min = 1, max = 1024))]
    pub app: String,
    /// Celery's execution pool (`-P`): `prefork` (default), `threads`, `solo`, `eventlet` or
    /// `gevent`. Only `prefork` applies every limit; `gevent` applies only
    /// `hardTimeLimitSeconds`; `threads`, `solo` and `eventlet` none (a pool setting a limit
    /// its Celery pool cannot apply is refused).
    #[serde(default)]
    pub pool: CeleryPoolKind,
    /// Celery's `--loglevel`. Default `INFO`.
    #[serde(default)]
    pub log_level: CeleryLogLevel,
    /// Arguments appended to the rendered command, e.g. `[--prefetch-multiplier, "1"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub extra_args: Vec<String>,
    /// Beat pools only: Celery beat's scheduler class (`-S`). Unset: Celery's own
    /// (`celery.beat:PersistentScheduler`, its schedule file in `/tmp`). Set
    /// `funcscale_celery.GuardedScheduler` (from the `funcscale-celery` package, installed in
    /// the image) to send ticks only while holding funcscale's fenced beat lease, so two beat
    /// pods (a rollout, a split brain) never send one tick twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub scheduler: Option<String>,
}

/// Celery's execution pool (`celery worker -P`).
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CeleryPoolKind {
    /// Child processes (Celery's default).
    #[default]
    Prefork,
    /// Threads.
    Threads,
    /// One task at a time in the worker process.
    Solo,
    /// eventlet green threads.
    Eventlet,
    /// gevent green threads.
    Gevent,
}

impl CeleryPoolKind {
    /// How `celery worker -P` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            CeleryPoolKind::Prefork => "prefork",
            CeleryPoolKind::Threads => "threads",
            CeleryPoolKind::Solo => "solo",
            CeleryPoolKind::Eventlet => "eventlet",
            CeleryPoolKind::Gevent => "gevent",
        }
    }
}

/// Celery's log level.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum CeleryLogLevel {
    /// DEBUG.
    Debug,
    /// INFO.
    #[default]
    Info,
    /// WARNING.
    Warning,
    /// ERROR.
    Error,
    /// CRITICAL.
    Critical,
}

impl CeleryLogLevel {
    /// How `celery --loglevel` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            CeleryLogLevel::Debug => "DEBUG",
            CeleryLogLevel::Info => "INFO",
            CeleryLogLevel::Warning => "WARNING",
            CeleryLogLevel::Error => "ERROR",
            CeleryLogLevel::Critical => "CRITICAL",
        }
    }
}

/// Whether a pool runs tasks or the cron beat.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum PoolRole {
    /// Runs the tasks of its queues.
    #[default]
    Worker,
    /// Enqueues the cron schedules; exactly one replica.
    Beat,
}

/// The order in which a worker takes tasks from its queues.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum QueueOrder {
    /// Round robin between the queues.
    #[default]
    Fair,
    /// Always the first non-empty queue in the listed order.
    Priority,
}

/// Compute resources of a worker container (Kubernetes quantities).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Resources {
    /// Minimum resources, e.g. `{cpu: "2.5", memory: 4Gi}`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub requests: std::collections::BTreeMap<String, String>,
    /// Maximum resources.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub limits: std::collections::BTreeMap<String, String>,
}

/// Per-process limits of a worker: flags of `funcscale-worker run`, or of `celery worker` for
/// a `celery` pool (`--max-tasks-per-child`, `--max-memory-per-child` in KiB,
/// `--soft-time-limit`, `--time-limit`; Celery's prefork pool applies all, gevent only the
/// hard limit, threads, solo and eventlet none). A limit the pool cannot apply is refused
/// (`SpecValid=False` naming it), as are limits on a pool with its own `command` or a Beat
/// pool.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProcessLimits {
    /// Replace a worker process after it has run this many tasks (funcscale-worker: the
    /// `exec:` / `pool:` handlers' children; the `builtin` and `http:` handlers run in the
    /// worker process and have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tasks_per_child: Option<u64>,
    /// Memory per worker process in MiB. funcscale-worker (`exec:` / `pool:` handlers' children
    /// only) kills a child over it: its task's attempt fails (retried as `maxRetries` allows)
    /// and a new child takes its place. Celery (`celery` pools) replaces a child over it after
    /// its current task finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_memory_per_child_mb: Option<u64>,
    /// After this many seconds the task is told to finish (soft limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub soft_time_limit_seconds: Option<u32>,
    /// After this many seconds the task is killed (hard limit). Pods get this much grace
    /// on shutdown so running tasks can finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub hard_time_limit_seconds: Option<u32>,
}

/// How funcscale sizes an autoscaled pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas").field_path(".minReplicas")
)]
pub struct Autoscaling {
    /// Fewest pods. 0 lets the pool scale to zero when its queues are idle.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = 10000))]
    pub min_replicas: i32,
    /// Most pods.
    #[schemars(range(min = 1, max = 10000))]
    pub max_replicas: i32,
    /// Seconds within which the backlog should be drained (queue-load sizing).
    #[serde(default = "default_drain_target_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub drain_target_seconds: u32,
    /// KEDA-compatible mode: waiting tasks per pod (pods = depth / targetDepthPerPod)
    /// instead of the drain-time sizing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_depth_per_pod: Option<u64>,
    /// With minReplicas 0: a pool at zero starts only when more than this many tasks wait.
    /// A retry or a delivery to a destination that is due starts it whatever this says (only
    /// its workers move or make them).
    #[serde(default)]
    pub activation_depth: u64,
    /// Period of the cron load in ms (the P of `pods = M × T / (c × P)`).
    #[serde(default = "default_period_ms")]
    #[schemars(range(min = 1000, max = 86_400_000))]
    pub period_ms: u64,
    /// Seconds a lower size must be recommended continuously before the pool shrinks
    /// (the HPA's default is 300; 60 measured as 3× fewer pod-seconds on bursty load with no
    /// change undone within a minute: `funcscale-sim`).
    #[serde(default = "default_stabilization_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: u32,
    /// Most pods added in one step (the step may also double the pool, whichever is more).
    #[serde(default = "default_scale_up_step")]
    #[schemars(range(min = 1, max = 10000))]
    pub scale_up_max_step: i32,
}

fn default_min_replicas() -> i32 {
    1
}
fn default_drain_target_seconds() -> u32 {
    60
}
fn default_period_ms() -> u64 {
    60_000
}
fn default_stabilization_seconds() -> u32 {
    60
}
fn default_scale_up_step() -> i32 {
    4
}

/// The pool as the operator last saw and sized it.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FuncWorkerPoolStatus {
    /// Pods of the pool's Deployment.
    #[serde(default)]
    pub replicas: i32,
    /// Pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods the operator wants.
    #[serde(default)]
    pub desired_replicas: i32,
    /// Label selector of the pool's pods (for the scale subresource and HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Why the pool has the size it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionStatus>,
    /// Depth of each queue the pool serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<QueueDepth>,
    /// When the pool last changed size (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Scaling`, `MetricsAvailable`, `Conflict`, `SpecValid`. `Ready` is False
    /// with reason `DeploymentRejected` or `ConfigMapRejected` and the API server's message
    /// when it refuses an object rendered from this pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The explanation of a sizing decision.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DecisionStatus {
    /// The rule that produced the number: `Fixed`, `Beat`, `CronLoad`, `QueueLoad`,
    /// `TargetDepth`, `Min`, `Max`, `Idle`, `Stabilized`, `StepLimited`, `Held`, `BacklogGrowing`.
    pub rule: String,
    /// Human-readable explanation, e.g.
    /// `formula: 10000 monitors × 500 ms / (5 × 60000 ms) = 17`.
    pub message: String,
    /// Task time in ms used for the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_time_ms: Option<f64>,
    /// Tasks waiting across the pool's queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u64>,
    /// Scheduled executions per period across the pool's queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_per_period: Option<u64>,
}

/// One queue's depth as seen by a pool.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct QueueDepth {
    /// Queue name.
    pub name: String,
    /// Tasks waiting.
    pub depth: u64,
}

/// A condition, following the Kubernetes API conventions.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of the condition, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One CamelCase word saying why.
    pub reason: String,
    /// Human-readable details.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn any_json_array(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": { "x-kubernetes-preserve-unknown-fields": true }
    })
}

fn any_json_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Both CRDs, as `kubectl apply` takes them (one YAML stream).
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for crd in [FuncQueue::crd(), FuncWorkerPool::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd).expect("a CRD serializes to YAML"));
    }
    out
}

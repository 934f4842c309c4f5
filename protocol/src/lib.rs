//! The wire contract between the funcscale operator and its workers: the one place that
//! knows Redis key names, the task envelope, the stats layout, task records and counts, queue
//! settings, the schedules registry and the cron load M, the Lua scripts, and the layouts of
//! the foreign queue systems (Celery, RQ, Sidekiq) the operator reads. The worker, the beat,
//! the producer CLI, the operator and the kubectl plugin all go through this crate; no other
//! crate spells a Redis key or holds a Lua script.
//!
//! No I/O and no async runtime: the crate builds keys, commands ([`redis::Cmd`],
//! [`redis::Pipeline`]) and script invocations, and parses replies; the programs send them.
//! [`connection`] turns a URL and the separately given username/password into the
//! [`redis::ConnectionInfo`] every program connects with.
//!
//! # Keys (with the default prefix `funcscale`)
//! `<queue>` is a queue's id, [`Keys::queue_id`]: `{<namespace>.<name>}` for a FuncQueue (so
//! two namespaces' queues never share a key; the braces are a Redis Cluster hash tag), or a
//! bare name (a FuncQueue with `legacyKeys`, an adopted queue, a hand-run worker).
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `funcscale:q:<queue>` | list | waiting tasks; producers `LPUSH`, workers move from the right (FIFO) |
//! | `funcscale:inflight:<queue>:<worker>` | list | the task a worker slot has taken from `queue` and not yet acknowledged (layout 2: one list per queue and slot, in the queue's hash tag; `funcscale:inflight:{<ns>}:<queue>:<worker>` for a legacy queue id of a namespaced worker) |
//! | `funcscale:inflight:{<ns>}:<worker>` | list | layout 1 (earlier versions): one in-flight list per slot, whatever its queue (`funcscale:inflight:<worker>` without a namespace); no longer written by workers, recovered by their reapers |
//! | `funcscale:running:<queue>` | zset | in-flight lists (either layout) holding a task of `queue` (scored by start, ms): the running tasks the operator reads |
//! | `funcscale:delayed:<queue>` | zset | tasks waiting for a retry, scored by due time (ms) |
//! | `funcscale:dead:<queue>` | list | tasks that failed their last attempt (envelope with the error) |
//! | `funcscale:stats:<queue>` | hash | counters and task-time statistics ([`StatsField`]) |
//! | `funcscale:slots:{<ns>}` | zset | the worker registry (layout 2): live worker slots of a namespace, scored by last heartbeat (ms); `funcscale:slots` without a namespace |
//! | `funcscale:workers:{<ns>}` | zset | the worker registry of earlier versions (layout 1; funcscale-celery's slots still use it): read by the reapers to recover an old slot's in-flight list; `funcscale:workers` without a namespace |
//! | `funcscale:worker:{<ns>}:<worker>` | hash | a worker slot's queues, processes, heartbeat, and its pod (`pod`, [`stop::WORKER_POD_FIELD`]); `layout` = `2` and no TTL for a layout-2 slot (the reaper deletes it when it forgets the slot) |
//! | `funcscale:stop:<namespace>/<pod>` | string | stop mark of a pod a scale-down removes (the reason; TTL [`stop::STOP_TTL_MS`], renewed by the operator): its workers take no new task and report not ready ([`stop`]) |
//! | `funcscale:schedules:<queue>` | hash | dynamic schedules registry: schedule id → [`ScheduleEntry`] JSON |
//! | `funcscale:schedules:<queue>:per-period` | string (number) | executions per minute of the registry's entries (M per minute, [`cron::parse_per_minute`]); an integer for per-minute crons, a decimal (e.g. `0.2`) when entries fire less often |
//! | `funcscale:schedules-queues:{<ns>}` | set | queues of a namespace that have (or had) a dynamic schedules registry: added before the first entry ([`schedules::register_cmd`]), never removed by a removal (the beat skips empty registries); its beat reads it, and the shared `funcscale:schedules-queues` of earlier versions |
//! | `funcscale:beat:{<namespace>}:lease` | string | the beat lease of a namespace: holder (`<holder> <token>`), with a TTL; `funcscale:beat:lease` for a beat without a namespace |
//! | `funcscale:beat:{<namespace>}:fence` | string (int) | fencing token counter, incremented per lease acquisition (`funcscale:beat:fence` without a namespace) |
//! | `funcscale:beat:{<namespace>}:celery-sent` | hash | Celery beat ticks sent under the namespace's lease (funcscale-celery's `GuardedScheduler`): schedule entry name → last sent tick (unix ms), checked and written by [`scripts::CELERY_BEAT_SEND`] ([`Keys::celery_beat_sent`]); `funcscale:beat:celery-sent` without a namespace |
//! | `funcscale:beat:last:<queue>` | hash | schedule → last fired tick (unix seconds); field `_fence`: the newest lease token that fired the queue (`beat_fire.lua` refuses an older one) |
//! | `funcscale:task:<queue>:<id>` | hash | task record (`funcscale:task:<id>` in earlier versions, still read) ([`TaskRecord`]): status, queue, func, attempt, worker, times, error |
//! | `funcscale:tasks:<queue>:s:<status>` | zset | record ids per status, scored by last update (ms); together every record of `queue`: the time index (queries merge them) and retention order |
//! | `funcscale:tasks:<queue>:f:<func>` | zset | record ids per function (a set: scored by when the record got that function, not updated on later writes) |
//! | `funcscale:tasks:<queue>:ids` | zset | record ids, all scored 0: the lexicographic index (id prefixes) and the record count |
//! | `funcscale:tasks:<queue>` | zset | the per-queue time index of earlier versions: no longer written; the trim script deletes it |
//! | `funcscale:counts:<queue>:<minute>` | hash | per-minute counts (`submitted`, `started`, `completed`, `failed`, `retried`, `dead`, `long`, `fmt`; `executing` is sampled by the workers every 10 s): in format (`fmt`) 2, `started` counts the started records and `long` the outcomes of those attempts (see [`CountBucket::from_pairs`]); expires after [`COUNTS_RETENTION_MS`] |
//! | `funcscale:queue-config:<queue>` | hash | per-queue settings ([`QueueConfig`]): record retention, destinations, retries |
//! | `funcscale:outbox:<queue>` | zset | deliveries to the destinations of `queue`'s tasks, scored by due time (ms): URL deliveries ([`OutboxItem`] JSON) and tasks for a destination queue ([`ForwardItem`] JSON: the prepared envelope); staged by the finish script in the queue's hash tag, delivered by the queue's workers; `funcscale:outbox:q:<queue>` for a queue id that names no namespace (`legacyKeys`) |
//! | `funcscale:outbox:<queue>:dead` | list | deliveries of `queue`'s outbox that failed [`OUTBOX_MAX_ATTEMPTS`] times (or are malformed), until replayed or purged |
//! | `funcscale:fwd:<queue>:<delivery id>` | string | a delivery already enqueued into destination `queue` (`forward.lua`; TTL 24 h): a delivery re-sent after a lost settle enqueues nothing |
//! | `funcscale:outbox:{<ns>}` | zset | earlier versions' outbox of a namespace's URL deliveries (`funcscale:outbox` without a namespace): no longer written; workers drain it |
//! | `funcscale:outbox:{<ns>}:dead` | list | deliveries of that outbox that failed [`OUTBOX_MAX_ATTEMPTS`] times (`funcscale:outbox:dead` without a namespace): still listed, replayed and purged |
//!
//! Every key starts with a prefix ([`Keys::new`]) so tests and tenants can share one Redis.
//! On Redis Cluster a key's hash slot is [`keys::slot`]: the per-queue keys of a FuncQueue
//! share the slot of its id, the `{<ns>}` keys the slot of their namespace.
//! Foreign systems' keys (no prefix: theirs) are in [`foreign`].
//!
//! # Scripts
//! Every Lua script is a file under `lua/`, loaded with `include_str!` ([`scripts`]). A script
//! gets the keys it works on through `KEYS`. The record library (`lua/record_lib.lua`) is the
//! exception it has to be: it writes the record, index and count keys of task ids it only
//! learns inside the script (envelopes it decodes, records retention picks), so it builds
//! them from the prefix with its `fs_k_*` functions, which the tests compare with [`Keys`].
//! They are all in the queue's hash slot; since Redis does not check undeclared keys before a
//! script runs, every write script probes them first and answers `TRYAGAIN`, nothing written,
//! while that slot migrates on a Redis Cluster (see [`scripts`]).

pub mod connection;
pub mod cron;
pub mod duration;
pub mod envelope;
pub mod foreign;
pub mod keys;
pub mod outbox;
pub mod queue_config;
pub mod records;
pub mod schedules;
pub mod scripts;
pub mod stats;
pub mod stop;
pub mod task_status;

pub use envelope::{DEFAULT_MAX_RETRIES, ENVELOPE_VERSION, Envelope, EnvelopeError};
pub use keys::{DEFAULT_PREFIX, Keys, WORKER_TTL_MS};
pub use outbox::{ForwardItem, OUTBOX_LEASE_MS, OUTBOX_MAX_ATTEMPTS, OutboxEntry, OutboxItem};
pub use queue_config::{Destination, QueueConfig};
pub use records::{
    COUNTS_RETENTION_MS, CountBucket, RECORD_MAX_AGE_MS, RECORD_MAX_COUNT, RECORD_TRIM_EVERY,
    TaskRecord,
};
pub use schedules::ScheduleEntry;
pub use stats::{
    DURATION_BUCKETS_MS, QueueStats, STATS_HALF_LIFE_MS, StatsField, TaskTimeAverage, bucket_field,
};
pub use task_status::TaskStatus;

//! The queue protocol: the one place that knows Redis key names, the task envelope and the
//! stats layout. The worker, the beat, the producer CLI and the operator's metrics reader all
//! go through this module; no other module spells a Redis key.
//!
//! # Keys (with the default prefix `funcscale`)
//! | key | type | what |
//! | --- | --- | --- |
//! | `funcscale:q:<queue>` | list | waiting tasks; producers `LPUSH`, workers move from the right (FIFO) |
//! | `funcscale:inflight:<worker>` | list | tasks a worker has taken and not yet acknowledged |
//! | `funcscale:delayed:<queue>` | zset | tasks waiting for a retry, scored by due time (ms) |
//! | `funcscale:dead:<queue>` | list | tasks that failed their last attempt (envelope with the error) |
//! | `funcscale:stats:<queue>` | hash | counters and task-time statistics ([`StatsField`]) |
//! | `funcscale:workers` | zset | live workers, scored by last heartbeat (ms) |
//! | `funcscale:worker:<worker>` | hash | a worker's queues, processes, host |
//! | `funcscale:schedules:<queue>` | hash | dynamic schedules registry: schedule id → [`ScheduleEntry`] JSON |
//! | `funcscale:schedules:<queue>:per-period` | string (number) | executions per minute of the registry's entries (M); an integer for per-minute crons, a decimal (e.g. `0.2`) when entries fire less often |
//! | `funcscale:schedules-queues` | set | queues that have a dynamic schedules registry (the beat reads it) |
//! | `funcscale:beat:lease` | string | beat lease holder (`<holder> <token>`), with a TTL |
//! | `funcscale:beat:fence` | string (int) | fencing token counter, incremented per lease acquisition |
//! | `funcscale:beat:last:<queue>` | hash | schedule → last fired tick (unix seconds) |
//! | `funcscale:task:<id>` | hash | task record ([`TaskRecord`]): status, queue, func, attempt, worker, times, error |
//! | `funcscale:tasks:<queue>:s:<status>` | zset | record ids per status, scored by last update (ms); together every record of `queue`: the time index (queries merge them) and retention order |
//! | `funcscale:tasks:<queue>:f:<func>` | zset | record ids per function (a set: scored by when the record got that function, not updated on later writes) |
//! | `funcscale:tasks:<queue>:ids` | zset | record ids, all scored 0: the lexicographic index (id prefixes) and the record count |
//! | `funcscale:tasks:<queue>` | zset | the per-queue time index of earlier versions: no longer written; `records::trim` deletes it |
//! | `funcscale:counts:<queue>:<minute>` | hash | per-minute counts (`submitted`, `started`, `completed`, `failed`, `retried`, `dead`, `long`, `fmt`; `executing` is sampled by the workers every 10 s): in format (`fmt`) 2, `started` counts the started records and `long` the outcomes of those attempts (see `records::counts`); expires after [`COUNTS_RETENTION_MS`] |
//! | `funcscale:queue-config:<queue>` | hash | per-queue settings ([`QueueConfig`]): record retention, destinations |
//! | `funcscale:outbox` | zset | deliveries to URL destinations ([`OutboxItem`] JSON), scored by due time (ms) |
//! | `funcscale:outbox:dead` | list | deliveries that failed [`OUTBOX_MAX_ATTEMPTS`] times |
//!
//! The Lua of [`RECORD_LUA_LIB`] writes the record keys inside the scripts the worker already
//! runs (enqueue, finish), so recording adds no round trip for a short task; an attempt that
//! runs longer than `worker::RECORD_START_AFTER` gets its `started` record from one more
//! script call. Its key spelling is checked against [`Keys`] by the tests.
//!
//! Every key starts with a prefix ([`Keys::new`]) so tests and tenants can share one Redis.

use serde::{Deserialize, Serialize};

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "funcscale";
/// Version of the task envelope format written by this build.
pub const ENVELOPE_VERSION: u32 = 1;
/// A worker whose heartbeat is older than this is dead; its in-flight tasks are recovered.
pub const WORKER_TTL_MS: u64 = 15_000;
/// Half-life of the decaying task-time average and histogram, in ms.
pub const STATS_HALF_LIFE_MS: u64 = 60_000;
/// Upper bounds (ms) of the task-time histogram buckets in the stats hash; the last bucket is open.
pub const DURATION_BUCKETS_MS: [u64; 16] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
];

/// Key names under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Keys {
    /// Keys under `prefix` (no trailing colon).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Waiting tasks of `queue`.
    pub fn queue(&self, queue: &str) -> String {
        format!("{}:q:{queue}", self.prefix)
    }

    /// In-flight tasks of one worker process.
    pub fn inflight(&self, worker: &str) -> String {
        format!("{}:inflight:{worker}", self.prefix)
    }

    /// Tasks waiting for a retry (zset scored by due time in ms).
    pub fn delayed(&self, queue: &str) -> String {
        format!("{}:delayed:{queue}", self.prefix)
    }

    /// Dead letters of `queue`.
    pub fn dead(&self, queue: &str) -> String {
        format!("{}:dead:{queue}", self.prefix)
    }

    /// Stats hash of `queue` (see [`StatsField`]).
    pub fn stats(&self, queue: &str) -> String {
        format!("{}:stats:{queue}", self.prefix)
    }

    /// Live workers, scored by last heartbeat (ms).
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// Description hash of one worker.
    pub fn worker(&self, worker: &str) -> String {
        format!("{}:worker:{worker}", self.prefix)
    }

    /// Dynamic schedules registry of `queue`.
    pub fn schedules(&self, queue: &str) -> String {
        format!("{}:schedules:{queue}", self.prefix)
    }

    /// Executions per minute of the registry's schedules for `queue` (M).
    pub fn schedules_per_period(&self, queue: &str) -> String {
        format!("{}:schedules:{queue}:per-period", self.prefix)
    }

    /// Queues that have a dynamic schedules registry.
    pub fn schedule_queues(&self) -> String {
        format!("{}:schedules-queues", self.prefix)
    }

    /// The beat lease.
    pub fn beat_lease(&self) -> String {
        format!("{}:beat:lease", self.prefix)
    }

    /// The beat fencing-token counter.
    pub fn beat_fence(&self) -> String {
        format!("{}:beat:fence", self.prefix)
    }

    /// Last fired tick of each schedule of `queue`.
    pub fn beat_last(&self, queue: &str) -> String {
        format!("{}:beat:last:{queue}", self.prefix)
    }

    /// Record of task `id`.
    pub fn task(&self, id: &str) -> String {
        format!("{}:task:{id}", self.prefix)
    }

    /// The per-queue time index earlier versions wrote (no longer written; deleted by
    /// `records::trim`), and the stem of the other record index keys.
    pub fn tasks(&self, queue: &str) -> String {
        format!("{}:tasks:{queue}", self.prefix)
    }

    /// Record ids of `queue` in `status`, by last update (ms).
    pub fn tasks_status(&self, queue: &str, status: TaskStatus) -> String {
        format!("{}:tasks:{queue}:s:{}", self.prefix, status.name())
    }

    /// Record ids of `queue` running `func` (membership; scored by when the record got it).
    pub fn tasks_func(&self, queue: &str, func: &str) -> String {
        format!("{}:tasks:{queue}:f:{func}", self.prefix)
    }

    /// Lexicographic index of the record ids of `queue`.
    pub fn tasks_ids(&self, queue: &str) -> String {
        format!("{}:tasks:{queue}:ids", self.prefix)
    }

    /// Counts of `queue` in the minute starting at `minute` × 60 s (unix).
    pub fn counts(&self, queue: &str, minute: u64) -> String {
        format!("{}:counts:{queue}:{minute}", self.prefix)
    }

    /// Settings of `queue` ([`QueueConfig`]).
    pub fn queue_config(&self, queue: &str) -> String {
        format!("{}:queue-config:{queue}", self.prefix)
    }

    /// Pending deliveries to URL destinations, by due time (ms).
    pub fn outbox(&self) -> String {
        format!("{}:outbox", self.prefix)
    }

    /// Deliveries that failed for good.
    pub fn outbox_dead(&self) -> String {
        format!("{}:outbox:dead", self.prefix)
    }
}

/// Status of a task record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting in the queue.
    Queued,
    /// Running (recorded once the attempt has run for `worker::RECORD_START_AFTER`; a shorter
    /// attempt goes from queued or retrying straight to its outcome).
    Started,
    /// Finished successfully.
    Succeeded,
    /// Failed; a retry is scheduled.
    Retrying,
    /// Failed for good; in the dead-letter list.
    Dead,
}

impl TaskStatus {
    /// All statuses.
    pub const ALL: [TaskStatus; 5] = [
        Self::Queued,
        Self::Started,
        Self::Succeeded,
        Self::Retrying,
        Self::Dead,
    ];

    /// The name stored in Redis.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Started => "started",
            Self::Succeeded => "succeeded",
            Self::Retrying => "retrying",
            Self::Dead => "dead",
        }
    }

    /// Parse a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// Default retention of task records by age.
pub const RECORD_MAX_AGE_MS: u64 = 24 * 3_600_000;
/// Default retention of task records by count, per queue.
pub const RECORD_MAX_COUNT: u64 = 100_000;
/// A worker's record write trims retention on every this-many-th write of a status (per
/// queue and minute), by up to twice as many records: as bounded as trimming 2 per write.
pub const RECORD_TRIM_EVERY: u64 = 32;
/// How long the per-minute count buckets are kept.
pub const COUNTS_RETENTION_MS: u64 = 24 * 3_600_000;
/// Attempts of a delivery to a URL destination before it goes to `Keys::outbox_dead`.
pub const OUTBOX_MAX_ATTEMPTS: u32 = 12;

/// Where a queue sends a task's result (on success) or its error (on failure, once dead).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Destination {
    /// Enqueue a task `func` into `queue` (inside the ack script: atomic with the ack).
    Queue {
        /// Destination queue.
        queue: String,
        /// Function of the new task (default `on_success` / `on_failure`).
        func: Option<String>,
    },
    /// POST to a URL through the outbox (retried with backoff; parked in `Keys::outbox_dead`
    /// after [`OUTBOX_MAX_ATTEMPTS`] failures, until `outbox requeue`).
    Url(String),
}

impl Destination {
    /// Parse `queue:NAME`, `queue:NAME/FUNC` or `http(s)://…`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("queue:") {
            let (queue, func) = match rest.split_once('/') {
                Some((q, f)) => (q, Some(f.to_string()).filter(|f| !f.is_empty())),
                None => (rest, None),
            };
            if queue.is_empty() {
                return Err(format!("destination {s:?}: empty queue name"));
            }
            Ok(Self::Queue {
                queue: queue.into(),
                func,
            })
        } else if s.starts_with("http://") || s.starts_with("https://") {
            Ok(Self::Url(s.into()))
        } else {
            Err(format!(
                "destination {s:?}: expected queue:NAME[/FUNC] or http(s)://URL"
            ))
        }
    }

    /// The stored text (what [`Destination::parse`] reads).
    pub fn to_text(&self) -> String {
        match self {
            Self::Queue { queue, func: None } => format!("queue:{queue}"),
            Self::Queue {
                queue,
                func: Some(f),
            } => format!("queue:{queue}/{f}"),
            Self::Url(u) => u.clone(),
        }
    }
}

/// Per-queue settings (`Keys::queue_config`), read by the scripts on every write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueConfig {
    /// Records older than this (ms since their last update) are deleted.
    pub record_max_age_ms: Option<u64>,
    /// At most this many records are kept for the queue (oldest go first).
    pub record_max_count: Option<u64>,
    /// Destination of results.
    pub on_success: Option<Destination>,
    /// Destination of dead tasks (with the error).
    pub on_failure: Option<Destination>,
}

impl QueueConfig {
    /// Field/value pairs as stored.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if let Some(a) = self.record_max_age_ms {
            v.push(("record_max_age_ms", a.to_string()));
        }
        if let Some(c) = self.record_max_count {
            v.push(("record_max_count", c.to_string()));
        }
        if let Some(d) = &self.on_success {
            v.push(("on_success", d.to_text()));
        }
        if let Some(d) = &self.on_failure {
            v.push(("on_failure", d.to_text()));
        }
        v
    }

    /// Parse `HGETALL` pairs (unknown or bad fields are ignored).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut c = Self::default();
        for (k, v) in pairs {
            match k {
                "record_max_age_ms" => c.record_max_age_ms = v.parse().ok(),
                "record_max_count" => c.record_max_count = v.parse().ok(),
                "on_success" => c.on_success = Destination::parse(v).ok(),
                "on_failure" => c.on_failure = Destination::parse(v).ok(),
                _ => {}
            }
        }
        c
    }
}

/// Write (merge) the settings of `queue`; `clear` names fields to delete first.
pub async fn queue_config_set<C>(
    con: &mut C,
    keys: &Keys,
    queue: &str,
    config: &QueueConfig,
    clear: &[&str],
) -> redis::RedisResult<()>
where
    C: redis::aio::ConnectionLike + Send,
{
    let mut pipe = redis::pipe();
    if !clear.is_empty() {
        pipe.hdel(keys.queue_config(queue), clear).ignore();
    }
    let pairs = config.to_pairs();
    if !pairs.is_empty() {
        pipe.hset_multiple(keys.queue_config(queue), &pairs)
            .ignore();
    }
    pipe.query_async(con).await
}

/// The settings of `queue`.
pub async fn queue_config_get<C>(
    con: &mut C,
    keys: &Keys,
    queue: &str,
) -> redis::RedisResult<QueueConfig>
where
    C: redis::aio::ConnectionLike + Send,
{
    let pairs: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(keys.queue_config(queue))
        .query_async(con)
        .await?;
    Ok(QueueConfig::from_pairs(
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ))
}

/// One delivery to a URL destination, as stored in the outbox zset.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct OutboxItem {
    /// Delivery id (`<task id>:success` or `<task id>:failure`).
    pub id: String,
    /// Target URL.
    pub url: String,
    /// Failed deliveries so far.
    pub attempt: u32,
    /// The JSON body to POST: `{"event", "task", "result" | "error"}`.
    pub body: serde_json::Value,
    /// Last delivery error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Lua functions shared by the scripts that write task records, counts and destinations.
/// Prepended to a script's body. `P` is the key prefix; keys spelled as in [`Keys`].
///
/// - `fs_rec(P, q, id, func, status, now, extra, cfg, bulk, prev, fresh)`: upsert the record hash
///   (`extra` = flat field/value list), move it between the status indexes (scored by last
///   update: together the time index), add it to the id and function indexes when it is new
///   or changes queue or function (leaving those of its old queue and function), and unless
///   `bulk` (the caller counts and trims: a bulk enqueue once for all; a worker's finish is
///   counted by the worker and adds no record) count the transition in the minute bucket and
///   trim retention every [`RECORD_TRIM_EVERY`]th write. `prev` (optional list of the usual
///   previous statuses) lets it skip reading the hash: 3 commands for a finish (`ZREM` old
///   status, `HSET`, `ZADD` new status). `fresh` (a producer's enqueue, a beat firing, a
///   destination task): a new task, so a record left under the same id is replaced whole
///   (its error, worker, times go). Returns the previous status (nil for a new record).
/// - `fs_started(P, raw, slot, now)`: record the attempt of envelope `raw` as started.
/// - `fs_dest(P, d, kind, raw, field, payload, id, now)`: route to a destination.
pub const RECORD_LUA_LIB: &str = r#"
local fs_statuses = {'queued', 'started', 'succeeded', 'retrying', 'dead'}
local function fs_cfg(P, q)
  local c = redis.call('HMGET', P .. ':queue-config:' .. q, 'record_max_age_ms', 'record_max_count', 'on_success', 'on_failure')
  return {age = tonumber(c[1]) or __MAX_AGE__, count = tonumber(c[2]) or __MAX_COUNT__, ok = c[3], ko = c[4]}
end
-- Retention: the status indexes together hold every record of the queue by last update, so
-- the oldest records are the oldest heads of those zsets; the id index counts them all.
local function fs_trim(P, q, now, cfg, budget)
  local base = P .. ':tasks:' .. q
  local victims, taken = {}, {}
  for i, s in ipairs(fs_statuses) do
    taken[i] = 0
    if #victims < budget then
      local ids = redis.call('ZRANGEBYSCORE', base .. ':s:' .. s, '-inf', now - cfg.age, 'LIMIT', 0, budget - #victims)
      for _, id in ipairs(ids) do victims[#victims + 1] = id end
      taken[i] = #ids
    end
  end
  local over = redis.call('ZCARD', base .. ':ids') - #victims - cfg.count
  if over > 0 and #victims < budget then
    local need = math.min(over, budget - #victims)
    local cand = {}
    for i, s in ipairs(fs_statuses) do
      local r = redis.call('ZRANGE', base .. ':s:' .. s, taken[i], taken[i] + need - 1, 'WITHSCORES')
      for j = 1, #r, 2 do cand[#cand + 1] = {tonumber(r[j + 1]), r[j]} end
    end
    table.sort(cand, function(a, b) if a[1] ~= b[1] then return a[1] < b[1] end return a[2] < b[2] end)
    for j = 1, math.min(need, #cand) do victims[#victims + 1] = cand[j][2] end
  end
  for _, id in ipairs(victims) do
    local h = P .. ':task:' .. id
    local r = redis.call('HMGET', h, 'queue', 'status', 'func')
    if r[1] == q or not r[1] then redis.call('DEL', h) end
    if r[2] then redis.call('ZREM', base .. ':s:' .. r[2], id) end
    if r[3] then redis.call('ZREM', base .. ':f:' .. r[3], id) end
    redis.call('ZREM', base .. ':ids', id)
  end
  return #victims
end
local function fs_count(P, q, now, field, n)
  local b = P .. ':counts:' .. q .. ':' .. string.format('%d', math.floor(now / 60000))
  local v = redis.call('HINCRBY', b, field, string.format('%d', n))
  -- a new field: (re)arm the expiry, and mark the format (records::counts reads `started`
  -- of format 2 as the started records plus the outcomes of attempts that had none)
  if v == n then
    redis.call('PEXPIRE', b, __COUNTS_TTL__)
    redis.call('HSET', b, 'fmt', 2)
  end
  return b, v
end
local fs_count_field = {queued = 'submitted', started = 'started', succeeded = 'completed', retrying = 'retried', dead = 'dead'}
local function fs_rec(P, q, id, func, status, now, extra, cfg, bulk, prev, fresh)
  local h = P .. ':task:' .. id
  local base = P .. ':tasks:' .. q
  -- A status index of a queue holds exactly the ids whose record has that status and queue
  -- (every write moves the id between them; trimming removes both). So when the caller knows
  -- the usual previous status (`prev`), taking the id out of that index proves the record
  -- exists in this queue with that status, and the hash need not be read; its function
  -- (and so its function index entry) is then the one it already has: one HSET of the
  -- status, the time and `extra`. Numbers go to Redis as integer text (`nows`; a string
  -- `now` as given), not through Lua's float formatting.
  local nows = type(now) == 'string' and now or string.format('%d', now)
  local was = nil
  if prev then
    for _, p in ipairs(prev) do
      if redis.call('ZREM', base .. ':s:' .. p, id) == 1 then was = p break end
    end
  end
  if was then
    redis.call('HSET', h, 'status', status, 'updated_ms', nows, unpack(extra))
  else
    local fields = {'status', status, 'updated_ms', nows}
    local old = redis.call('HMGET', h, 'status', 'queue', 'func')
    was = old[1]
    if not old[1] or old[2] ~= q or status == 'queued' then
      -- new, or a (re)enqueue that may reuse an id for another function or queue: (re)write
      -- what it is; the id and function indexes are sets, written when that changes, and
      -- the id leaves the indexes of the queue and function it had (a reused id is a new
      -- task there: its old queue's queries and retention no longer see it)
      local n = #fields
      fields[n + 1], fields[n + 2], fields[n + 3], fields[n + 4], fields[n + 5], fields[n + 6] = 'id', id, 'queue', q, 'func', func
      -- a new task under a used id (`fresh`): nothing of the old task's record stays
      if fresh and old[1] then redis.call('DEL', h) end
      if fresh or old[2] ~= q then fields[n + 7], fields[n + 8] = 'created_ms', nows end
      if old[2] ~= q then
        redis.call('ZADD', base .. ':ids', 0, id)
        if old[2] then
          local ob = P .. ':tasks:' .. old[2]
          redis.call('ZREM', ob .. ':ids', id)
          if old[1] then redis.call('ZREM', ob .. ':s:' .. old[1], id) end
          if old[3] then redis.call('ZREM', ob .. ':f:' .. old[3], id) end
        end
      elseif old[3] ~= func and old[3] then
        redis.call('ZREM', base .. ':f:' .. old[3], id)
      end
      if fresh or old[2] ~= q or old[3] ~= func then redis.call('ZADD', base .. ':f:' .. func, nows, id) end
    end
    if old[1] and old[1] ~= status and old[2] == q then redis.call('ZREM', base .. ':s:' .. old[1], id) end
    for _, v in ipairs(extra) do fields[#fields + 1] = v end
    redis.call('HSET', h, unpack(fields))
  end
  redis.call('ZADD', base .. ':s:' .. status, nows, id)
  -- bulk (enqueue of many): the caller counts and trims once for all
  if bulk then return was end
  local _, v = fs_count(P, q, now, fs_count_field[status], 1)
  if status == 'retrying' or status == 'dead' then fs_count(P, q, now, 'failed', 1) end
  -- Retention, amortised: every __TRIM_EVERY__th write of a status in a minute (the count
  -- just taken) trims up to 2 × __TRIM_EVERY__ records, the same bound per write as trimming
  -- 2 on every write, without reading the config and the indexes on every write.
  if v % __TRIM_EVERY__ == 0 then fs_trim(P, q, now, cfg or fs_cfg(P, q), 2 * __TRIM_EVERY__) end
  return was
end
local function fs_started(P, raw, slot, now)
  local ok, e = pcall(cjson.decode, raw)
  if not ok or type(e) ~= 'table' or type(e.id) ~= 'string' or type(e.queue) ~= 'string' then return end
  fs_rec(P, e.queue, e.id, tostring(e.func), 'started', now, {'attempt', tonumber(e.attempt) or 0, 'worker', slot, 'started_ms', now},
    nil, false, {'queued', 'retrying'})
end
local function fs_dest(P, d, kind, raw, field, payload, id, now)
  if not d or d == '' then return end
  local did = id .. ':' .. kind
  if string.sub(d, 1, 6) == 'queue:' then
    local spec = string.sub(d, 7)
    local dq, df = spec, 'on_' .. kind
    local slash = string.find(spec, '/', 1, true)
    if slash then dq = string.sub(spec, 1, slash - 1); df = string.sub(spec, slash + 1) end
    local env = '{"v":1,"id":' .. cjson.encode(did) .. ',"func":' .. cjson.encode(df) ..
      ',"args":[],"kwargs":{"event":"' .. kind .. '","task":' .. raw .. ',"' .. field .. '":' .. payload ..
      '},"queue":' .. cjson.encode(dq) .. ',"enqueued_at_ms":' .. now .. ',"attempt":0,"max_retries":3}'
    redis.call('LPUSH', P .. ':q:' .. dq, env)
    redis.call('HINCRBY', P .. ':stats:' .. dq, 'enqueued', 1)
    fs_rec(P, dq, did, df, 'queued', now, {'attempt', 0}, nil, false, nil, true)
  else
    local item = '{"id":' .. cjson.encode(did) .. ',"url":' .. cjson.encode(d) .. ',"attempt":0,"body":{"event":"' ..
      kind .. '","task":' .. raw .. ',"' .. field .. '":' .. payload .. '}}'
    redis.call('ZADD', P .. ':outbox', now, item)
  end
end
"#;

/// [`RECORD_LUA_LIB`] with the default retention filled in, followed by `body`.
pub fn with_record_lib(body: &str) -> String {
    let lib = RECORD_LUA_LIB
        .replace("__MAX_AGE__", &RECORD_MAX_AGE_MS.to_string())
        .replace("__MAX_COUNT__", &RECORD_MAX_COUNT.to_string())
        .replace("__COUNTS_TTL__", &COUNTS_RETENTION_MS.to_string())
        .replace("__TRIM_EVERY__", &RECORD_TRIM_EVERY.to_string());
    format!(
        "{lib}
{body}"
    )
}

/// A task record (`Keys::task`), as read back.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct TaskRecord {
    /// Task id.
    pub id: String,
    /// Queue.
    pub queue: String,
    /// Function.
    pub func: String,
    /// Status name (see [`TaskStatus`]).
    pub status: String,
    /// Attempt (0-based) of the last transition.
    pub attempt: Option<u32>,
    /// Worker slot that ran the last attempt.
    pub worker: Option<String>,
    /// First seen (ms).
    pub created_ms: Option<u64>,
    /// Enqueued (ms).
    pub enqueued_ms: Option<u64>,
    /// Last attempt started (ms).
    pub started_ms: Option<u64>,
    /// Last attempt finished (ms): the update time of a record with an outcome status
    /// (succeeded, retrying, dead); none once it is queued or started again.
    pub finished_ms: Option<u64>,
    /// Last update (ms).
    pub updated_ms: u64,
    /// Duration of the last attempt (ms).
    pub duration_ms: Option<u64>,
    /// Error of the last failed attempt.
    pub error: Option<String>,
    /// Trace id.
    pub trace_id: Option<String>,
}

impl TaskRecord {
    /// Parse `HGETALL` pairs; `None` when the hash is empty.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Option<Self> {
        if pairs.is_empty() {
            return None;
        }
        let mut r = Self::default();
        for (k, v) in pairs {
            match k.as_str() {
                "id" => r.id = v,
                "queue" => r.queue = v,
                "func" => r.func = v,
                "status" => r.status = v,
                "attempt" => r.attempt = v.parse().ok(),
                "worker" => r.worker = Some(v),
                "created_ms" => r.created_ms = v.parse().ok(),
                "enqueued_ms" => r.enqueued_ms = v.parse().ok(),
                "started_ms" => r.started_ms = v.parse().ok(),
                "finished_ms" => r.finished_ms = v.parse().ok(),
                "updated_ms" => r.updated_ms = v.parse().unwrap_or(0),
                "duration_ms" => r.duration_ms = v.parse().ok(),
                "error" => r.error = Some(v).filter(|e| !e.is_empty()),
                "trace_id" => r.trace_id = Some(v).filter(|e| !e.is_empty()),
                _ => {}
            }
        }
        // An outcome is only ever written by the finish of an attempt, which does not store
        // finished_ms: it is the update time (records of earlier versions stored it).
        if matches!(r.status.as_str(), "succeeded" | "retrying" | "dead") {
            r.finished_ms = Some(r.updated_ms);
        }
        Some(r)
    }
}

/// Separator kombu's Redis transport (Celery) puts between a queue name and its priority.
pub const CELERY_PRIORITY_SEP: &str = "\x06\x16";
/// kombu's default `priority_steps`: priority 0 lives in the list named after the queue.
pub const CELERY_PRIORITY_STEPS: [u8; 4] = [0, 3, 6, 9];

/// The Redis lists of a Celery queue on the Redis broker: `<queue>` and one list per
/// non-zero priority step, `<queue>\x06\x16<step>` (kombu `Channel._q_for_pri`).
pub fn celery_queue_keys(queue: &str) -> Vec<String> {
    CELERY_PRIORITY_STEPS
        .iter()
        .map(|p| {
            if *p == 0 {
                queue.to_string()
            } else {
                format!("{queue}{CELERY_PRIORITY_SEP}{p}")
            }
        })
        .collect()
}

/// The list of an RQ queue: `rq:queue:<name>` (job ids; RQ pushes right, pops left).
pub fn rq_queue_key(name: &str) -> String {
    format!("rq:queue:{name}")
}

/// The list of a Sidekiq queue: `queue:<name>` (job JSON; Sidekiq pushes left, pops right).
pub fn sidekiq_queue_key(name: &str) -> String {
    format!("queue:{name}")
}

/// Fields of the per-queue stats hash (`Keys::stats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsField {
    /// Tasks enqueued (counter; producers and retries increment it).
    Enqueued,
    /// Tasks finished successfully (counter).
    Completed,
    /// Task attempts that failed (counter).
    Failed,
    /// Attempts scheduled for a retry (counter).
    Retried,
    /// Tasks moved to the dead-letter list (counter).
    Dead,
    /// Decaying average task time in ms (float).
    EwmaMs,
    /// Unix time in ms of the last `EwmaMs` update.
    UpdatedMs,
}

impl StatsField {
    /// The hash field name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Enqueued => "enqueued",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Retried => "retried",
            Self::Dead => "dead",
            Self::EwmaMs => "ewma_ms",
            Self::UpdatedMs => "updated_ms",
        }
    }
}

/// Hash field of histogram bucket `i` (decayed count of tasks with duration <= the bound).
pub fn bucket_field(i: usize) -> String {
    format!("h{i}")
}

/// Lua script recording one finished attempt in the stats hash (see [`record_duration_lua`]):
/// KEYS[1] = stats key; ARGV = duration ms, now ms, half-life ms, outcome (`completed`|`failed`).
/// The average and the histogram decay with the half-life so they follow the current load.
const RECORD_DURATION_LUA: &str = r#"
local key = KEYS[1]
local d = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local half = tonumber(ARGV[3])
redis.call('HINCRBY', key, ARGV[4], 1)
local prev = redis.call('HMGET', key, 'ewma_ms', 'updated_ms')
local ewma = tonumber(prev[1])
local updated = tonumber(prev[2])
local decay = 1.0
if updated then
  local dt = now - updated
  if dt < 0 then dt = 0 end
  decay = math.pow(0.5, dt / half)
end
if ewma == nil then
  ewma = d
else
  -- weight of the new sample grows with the time since the last one, at least 5%
  local w = 1.0 - decay
  if w < 0.05 then w = 0.05 end
  ewma = ewma * (1.0 - w) + d * w
end
local bounds = {__BOUNDS__}
local idx = #bounds
for i, b in ipairs(bounds) do
  if d <= b then idx = i - 1 break end
end
if decay < 0.999 then
  for i = 0, #bounds - 1 do
    local v = tonumber(redis.call('HGET', key, 'h' .. i))
    if v then redis.call('HSET', key, 'h' .. i, tostring(v * decay)) end
  end
  redis.call('HSET', key, 'updated_ms', now)
elseif updated == nil then
  redis.call('HSET', key, 'updated_ms', now)
end
redis.call('HINCRBYFLOAT', key, 'h' .. idx, 1)
redis.call('HSET', key, 'ewma_ms', tostring(ewma))
return 1
"#;

/// The Lua source of the stats-recording script, with the bucket bounds of
/// [`DURATION_BUCKETS_MS`]. KEYS[1] = stats key; ARGV = duration ms, now ms, half-life ms,
/// outcome field (`completed` or `failed`).
pub fn record_duration_lua() -> String {
    let bounds: Vec<String> = DURATION_BUCKETS_MS.iter().map(u64::to_string).collect();
    RECORD_DURATION_LUA.replace("__BOUNDS__", &bounds.join(", "))
}

/// The stats of one queue, parsed from its hash.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueStats {
    /// Tasks enqueued so far.
    pub enqueued: u64,
    /// Tasks completed so far.
    pub completed: u64,
    /// Failed attempts so far.
    pub failed: u64,
    /// Retries scheduled so far.
    pub retried: u64,
    /// Tasks dead-lettered so far.
    pub dead: u64,
    /// Decaying average task time (ms), if any task has finished.
    pub ewma_ms: Option<f64>,
    /// Decayed histogram counts, one per [`DURATION_BUCKETS_MS`] bucket (last one open).
    pub buckets: Vec<f64>,
}

impl QueueStats {
    /// Parse the field/value pairs of `HGETALL <stats key>`.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut s = Self {
            buckets: vec![0.0; DURATION_BUCKETS_MS.len() + 1],
            ..Self::default()
        };
        for (k, v) in pairs {
            let int = || v.parse::<f64>().map(|f| f.max(0.0) as u64).unwrap_or(0);
            match k {
                "enqueued" => s.enqueued = int(),
                "completed" => s.completed = int(),
                "failed" => s.failed = int(),
                "retried" => s.retried = int(),
                "dead" => s.dead = int(),
                "ewma_ms" => {
                    s.ewma_ms = v.parse::<f64>().ok().filter(|f| f.is_finite() && *f >= 0.0)
                }
                _ => {
                    if let Some(i) = k.strip_prefix('h').and_then(|i| i.parse::<usize>().ok())
                        && i < s.buckets.len()
                    {
                        s.buckets[i] = v.parse::<f64>().unwrap_or(0.0).max(0.0);
                    }
                }
            }
        }
        s
    }

    /// The `q`-quantile (0..=1) of task time in ms from the decayed histogram: the upper
    /// bound of the bucket holding it (the open last bucket reports the last bound).
    pub fn percentile_ms(&self, q: f64) -> Option<u64> {
        let total: f64 = self.buckets.iter().sum();
        if total <= 0.0 {
            return None;
        }
        let target = total * q.clamp(0.0, 1.0);
        let mut seen = 0.0;
        for (i, c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= target && *c > 0.0 {
                return Some(DURATION_BUCKETS_MS[i.min(DURATION_BUCKETS_MS.len() - 1)]);
            }
        }
        DURATION_BUCKETS_MS.last().copied()
    }
}

/// A task as it travels through Redis (JSON). Unknown fields are kept by newer readers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Envelope {
    /// Envelope format version ([`ENVELOPE_VERSION`]).
    #[serde(rename = "v")]
    pub version: u32,
    /// Task id; producers may choose a meaningful one (e.g. an upstream trace id).
    pub id: String,
    /// Function name.
    pub func: String,
    /// Positional arguments.
    #[serde(default)]
    pub args: serde_json::Value,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: serde_json::Value,
    /// Queue the task was sent to.
    pub queue: String,
    /// When it was first enqueued (unix ms).
    pub enqueued_at_ms: u64,
    /// Attempt number, starting at 0.
    #[serde(default)]
    pub attempt: u32,
    /// Retries allowed after the first attempt.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Soft time limit in seconds (the handler is told), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_timeout_s: Option<u32>,
    /// Hard time limit in seconds (the execution is killed), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard_timeout_s: Option<u32>,
    /// Trace id to correlate logs across systems.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Error of the last failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn default_max_retries() -> u32 {
    3
}

impl Envelope {
    /// A new first-attempt envelope.
    pub fn new(
        id: impl Into<String>,
        func: impl Into<String>,
        queue: impl Into<String>,
        now_ms: u64,
    ) -> Self {
        Self {
            version: ENVELOPE_VERSION,
            id: id.into(),
            func: func.into(),
            args: serde_json::Value::Array(vec![]),
            kwargs: serde_json::Value::Object(Default::default()),
            queue: queue.into(),
            enqueued_at_ms: now_ms,
            attempt: 0,
            max_retries: default_max_retries(),
            soft_timeout_s: None,
            hard_timeout_s: None,
            trace_id: None,
            error: None,
        }
    }

    /// JSON text of the envelope.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an envelope serializes to JSON")
    }

    /// Parse an envelope; an envelope from a newer major format is refused.
    pub fn from_json(s: &str) -> Result<Self, EnvelopeError> {
        let env: Self =
            serde_json::from_str(s).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if env.version > ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(env.version));
        }
        Ok(env)
    }
}

/// Why an envelope could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Not JSON, or fields missing.
    #[error("malformed task envelope: {0}")]
    Malformed(String),
    /// Written by a newer funcscale.
    #[error("task envelope version {0} is newer than this worker understands")]
    UnsupportedVersion(u32),
}

/// One entry of the dynamic schedules registry (`Keys::schedules`), stored as JSON.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ScheduleEntry {
    /// Cron expression (5 fields, or 6 with seconds first).
    pub cron: String,
    /// Function to enqueue.
    pub func: String,
    /// Positional arguments.
    #[serde(default)]
    pub args: serde_json::Value,
}

/// Lua: push envelopes, count them and record them (status `queued`), atomically.
/// KEYS[1] = queue, KEYS[2] = stats; ARGV = prefix, queue, now ms, then (envelope JSON, id,
/// func, trace id) quadruples. Returns the queue length.
const ENQUEUE_LUA: &str = r#"
local P, q, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local cfg = fs_cfg(P, q)
local n = 0
for i = 4, #ARGV, 4 do
  redis.call('LPUSH', KEYS[1], ARGV[i])
  fs_rec(P, q, ARGV[i + 1], ARGV[i + 2], 'queued', now, {'attempt', 0, 'enqueued_ms', now, 'trace_id', ARGV[i + 3]}, cfg, true, nil, true)
  n = n + 1
end
fs_count(P, q, now, 'submitted', n)
fs_trim(P, q, now, cfg, 2 * n)
redis.call('HINCRBY', KEYS[2], 'enqueued', n)
return redis.call('LLEN', KEYS[1])
"#;

/// Lua: sample the running tasks of a queue into a minute's counts. KEYS[1] = the `started`
/// status index, KEYS[2] = the counts hash; ARGV[1] = its TTL (ms). Returns the count.
const SAMPLE_EXECUTING_LUA: &str = r#"
local n = redis.call('ZCARD', KEYS[1])
redis.call('HSET', KEYS[2], 'executing', n)
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return n
"#;

/// The tasks of `queue` running now (records in status `started`), also written as the
/// `executing` count of the minute of `now_ms`. Workers call it every few seconds; the task
/// writes themselves do not keep that field (it would cost two commands per write).
pub async fn sample_executing<C>(
    con: &mut C,
    keys: &Keys,
    queue: &str,
    now_ms: u64,
) -> redis::RedisResult<u64>
where
    C: redis::aio::ConnectionLike + Send,
{
    redis::Script::new(SAMPLE_EXECUTING_LUA)
        .key(keys.tasks_status(queue, TaskStatus::Started))
        .key(keys.counts(queue, now_ms / 60_000))
        .arg(COUNTS_RETENTION_MS)
        .invoke_async(con)
        .await
}

/// Lua: fire beat ticks under the lease. KEYS = lease, last-fired hash, queue, stats; ARGV =
/// lease value, prefix, queue, now ms, then (field, tick, envelope JSON, id, func) quintuples.
/// A tick newer than the schedule's last fired one is pushed, counted and recorded (status
/// `queued`) exactly as [`enqueue`] does. Returns -1 when the lease is not the caller's.
const BEAT_FIRE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local P, q, now = ARGV[2], ARGV[3], tonumber(ARGV[4])
local n = 0
for i = 5, #ARGV, 5 do
  local last = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > last then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    redis.call('LPUSH', KEYS[3], ARGV[i + 2])
    fs_rec(P, q, ARGV[i + 3], ARGV[i + 4], 'queued', now, {'attempt', 0, 'enqueued_ms', now}, nil, true, nil, true)
    n = n + 1
  end
end
if n > 0 then
  redis.call('HINCRBY', KEYS[4], 'enqueued', n)
  fs_count(P, q, now, 'submitted', n)
  fs_trim(P, q, now, fs_cfg(P, q), 2 * n)
end
return n
"#;

/// The beat's firing script ([`BEAT_FIRE_LUA`] with the record functions).
pub fn beat_fire_script() -> redis::Script {
    redis::Script::new(&with_record_lib(BEAT_FIRE_LUA))
}

/// One call of [`beat_fire_script`] for `queue`: `ticks` are (schedule field, tick, envelope).
/// Returns -1 when `lease_value` no longer holds the lease, else the number of ticks enqueued.
pub fn beat_fire_invocation<'a, 'b>(
    script: &'a redis::Script,
    keys: &Keys,
    lease_value: &str,
    queue: &str,
    now_ms: u64,
    ticks: impl IntoIterator<Item = (&'b str, i64, &'b Envelope)>,
) -> redis::ScriptInvocation<'a> {
    let mut inv = script.key(keys.beat_lease());
    inv.key(keys.beat_last(queue))
        .key(keys.queue(queue))
        .key(keys.stats(queue))
        .arg(lease_value)
        .arg(keys.prefix())
        .arg(queue)
        .arg(now_ms);
    for (field, tick, env) in ticks {
        inv.arg(field)
            .arg(tick)
            .arg(env.to_json())
            .arg(&env.id)
            .arg(&env.func);
    }
    inv
}

/// Enqueue envelopes (all for the same `queue`): `LPUSH`, `HINCRBY enqueued` and the `queued`
/// records in one atomic script call per chunk of 500. Returns the queue length afterwards.
pub async fn enqueue<C>(
    con: &mut C,
    keys: &Keys,
    queue: &str,
    envelopes: &[Envelope],
) -> redis::RedisResult<u64>
where
    C: redis::aio::ConnectionLike + Send,
{
    let script = redis::Script::new(&with_record_lib(ENQUEUE_LUA));
    let mut len = 0;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    // Two chunks of 500 per request: recording makes a chunk cost ~25 ms of Redis time, so a
    // request stays well inside a connection's default response timeout.
    for batch in envelopes.chunks(1_000) {
        let mut pipe = redis::pipe();
        pipe.load_script(&script).ignore();
        for chunk in batch.chunks(500) {
            let mut inv = script.key(keys.queue(queue));
            inv.key(keys.stats(queue))
                .arg(keys.prefix())
                .arg(queue)
                .arg(now);
            for e in chunk {
                inv.arg(e.to_json())
                    .arg(&e.id)
                    .arg(&e.func)
                    .arg(e.trace_id.as_deref().unwrap_or(""));
            }
            pipe.invoke_script(&inv);
        }
        let lens: Vec<u64> = pipe.query_async(con).await?;
        len = lens.last().copied().unwrap_or(len);
    }
    Ok(len)
}

/// A registry entry as stored: the entry plus its executions per minute (used to keep the
/// per-period key exact when the entry is replaced or removed).
#[derive(Serialize)]
struct StoredSchedule<'a> {
    #[serde(flatten)]
    entry: &'a ScheduleEntry,
    per_minute: f64,
}

/// Lua: add or replace registry entries. KEYS[1] = registry hash, KEYS[2] = per-period key,
/// KEYS[3] = registry queues set; ARGV[1] = queue, then (id, stored JSON, per-minute) triples.
/// The per-period key changes by exactly the difference, in the same script.
const SCHEDULES_ADD_LUA: &str = r#"
local delta = 0
for i = 2, #ARGV, 3 do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if old then
    local ok, dec = pcall(cjson.decode, old)
    if ok and type(dec) == 'table' and tonumber(dec.per_minute) then delta = delta - tonumber(dec.per_minute) end
  end
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  delta = delta + tonumber(ARGV[i + 2])
end
redis.call('SADD', KEYS[3], ARGV[1])
local v = tonumber(redis.call('INCRBYFLOAT', KEYS[2], string.format('%.9f', delta)))
-- keep it short and exact-looking: 6 decimals at most, "30000" rather than "30000.000000"
local txt = string.format('%.6f', v):gsub('0+$', ''):gsub('%.$', '')
if txt == '-0' or math.abs(v) < 1e-6 then txt = '0' end
redis.call('SET', KEYS[2], txt)
return redis.call('HLEN', KEYS[1])
"#;

/// Lua: remove registry entries. KEYS as in add; ARGV[1] = queue, then ids. Returns the count removed.
const SCHEDULES_REMOVE_LUA: &str = r#"
local delta = 0
local n = 0
for i = 2, #ARGV do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if old then
    local ok, dec = pcall(cjson.decode, old)
    if ok and type(dec) == 'table' and tonumber(dec.per_minute) then delta = delta - tonumber(dec.per_minute) end
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
local v = tonumber(redis.call('INCRBYFLOAT', KEYS[2], string.format('%.9f', delta)))
-- keep it short and exact-looking: 6 decimals at most, "30000" rather than "30000.000000"
local txt = string.format('%.6f', v):gsub('0+$', ''):gsub('%.$', '')
if txt == '-0' or math.abs(v) < 1e-6 then txt = '0' end
redis.call('SET', KEYS[2], txt)
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[1]) end
return n
"#;

/// Add (or replace) entries of the dynamic schedules registry of `queue`; `per_minute` gives
/// each entry's executions per minute (see `cron::Cron::per_minute`). The per-period key is
/// maintained in the same atomic script call (chunks of 1,000, pipelined).
pub async fn schedules_add<C>(
    con: &mut C,
    keys: &Keys,
    queue: &str,
    entries: &[(String, ScheduleEntry, f64)],
) -> redis::RedisResult<u64>
where
    C: redis::aio::ConnectionLike + Send,
{
    let script = redis::Script::new(SCHEDULES_ADD_LUA);
    let mut pipe = redis::pipe();
    pipe.load_script(&script).ignore();
    for chunk in entries.chunks(1_000) {
        let mut inv = script.key(keys.schedules(queue));
        inv.key(keys.schedules_per_period(queue))
            .key(keys.schedule_queues())
            .arg(queue);
        for (id, entry, per_minute) in chunk {
            let stored = StoredSchedule {
                entry,
                per_minute: *per_minute,
            };
            inv.arg(id)
                .arg(serde_json::to_string(&stored).expect("a schedule serializes"))
                .arg(format!("{per_minute:.9}"));
        }
        pipe.invoke_script(&inv);
    }
    let lens: Vec<u64> = pipe.query_async(con).await?;
    Ok(lens.last().copied().unwrap_or(0))
}

/// Remove entries of the registry of `queue`; returns how many existed.
pub async fn schedules_remove<C>(
    con: &mut C,
    keys: &Keys,
    queue: &str,
    ids: &[String],
) -> redis::RedisResult<u64>
where
    C: redis::aio::ConnectionLike + Send,
{
    let script = redis::Script::new(SCHEDULES_REMOVE_LUA);
    let mut pipe = redis::pipe();
    pipe.load_script(&script).ignore();
    for chunk in ids.chunks(1_000) {
        let mut inv = script.key(keys.schedules(queue));
        inv.key(keys.schedules_per_period(queue))
            .key(keys.schedule_queues())
            .arg(queue);
        for id in chunk {
            inv.arg(id);
        }
        pipe.invoke_script(&inv);
    }
    let counts: Vec<u64> = pipe.query_async(con).await?;
    Ok(counts.iter().sum())
}

/// All entries of the registry of `queue` (HSCAN, so tens of thousands are fine); entries
/// that do not parse are skipped.
pub async fn schedules_list<C>(
    con: &mut C,
    keys: &Keys,
    queue: &str,
) -> redis::RedisResult<Vec<(String, ScheduleEntry)>>
where
    C: redis::aio::ConnectionLike + Send,
{
    let key = keys.schedules(queue);
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, items): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
            .arg(&key)
            .arg(cursor)
            .arg("COUNT")
            .arg(5_000)
            .query_async(con)
            .await?;
        out.extend(items.into_iter().filter_map(|(id, json)| {
            serde_json::from_str::<ScheduleEntry>(&json)
                .ok()
                .map(|e| (id, e))
        }));
        if next == 0 {
            break;
        }
        cursor = next;
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_prefix() {
        let k = Keys::new("t1");
        for key in [
            k.queue("a"),
            k.inflight("w"),
            k.delayed("a"),
            k.dead("a"),
            k.stats("a"),
            k.workers(),
            k.worker("w"),
            k.schedules("a"),
            k.schedules_per_period("a"),
            k.beat_lease(),
            k.beat_fence(),
            k.beat_last("a"),
            k.schedule_queues(),
        ] {
            assert!(key.starts_with("t1:"), "{key}");
        }
        assert_eq!(Keys::default().queue("q8"), "funcscale:q:q8");
    }

    #[test]
    fn foreign_queue_keys() {
        assert_eq!(
            celery_queue_keys("celery"),
            [
                "celery",
                "celery\x06\x163",
                "celery\x06\x166",
                "celery\x06\x169"
            ]
        );
        assert_eq!(rq_queue_key("default"), "rq:queue:default");
        assert_eq!(sidekiq_queue_key("default"), "queue:default");
    }

    #[test]
    fn envelope_round_trips_and_refuses_newer_versions() {
        let e = Envelope::new("id1", "f", "q", 5);
        assert_eq!(Envelope::from_json(&e.to_json()).unwrap(), e);
        let mut newer = e.clone();
        newer.version = ENVELOPE_VERSION + 1;
        assert_eq!(
            Envelope::from_json(&newer.to_json()),
            Err(EnvelopeError::UnsupportedVersion(ENVELOPE_VERSION + 1))
        );
        assert!(matches!(
            Envelope::from_json("{"),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    #[test]
    fn stats_parse_and_percentiles() {
        let s = QueueStats::from_pairs([
            ("completed", "10"),
            ("ewma_ms", "480.5"),
            ("h8", "9"),  // <= 500 ms
            ("h10", "1"), // <= 2500 ms
            ("junk", "x"),
        ]);
        assert_eq!(s.completed, 10);
        assert_eq!(s.ewma_ms, Some(480.5));
        assert_eq!(s.percentile_ms(0.5), Some(500));
        assert_eq!(s.percentile_ms(0.95), Some(2500));
        assert_eq!(QueueStats::default().percentile_ms(0.5), None);
    }
}

//! Reading task records, dead letters and per-minute counts (the `tasks`, `dead-letters`
//! subcommands and the kubectl plugin). Writing happens inside the worker's scripts
//! (`protocol::RECORD_LUA_LIB`).
//!
//! Queries use indexes, never a scan of all records: an id prefix reads the lexicographic
//! index (`ZRANGEBYLEX`), a function its own index, anything else the per-status zsets
//! (time-ordered; with no status filter the newest of each are merged); the other filters
//! apply on the server and again to the records fetched (see [`list_tasks`]).

use serde::Serialize;

use crate::protocol::{self, Envelope, Keys, TaskRecord, TaskStatus};

/// The `--status` of `tasks list`: one stored status, or `failed` (the attempts that failed:
/// `retrying` and `dead`; a record's own status says which).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFilter {
    /// Waiting in the queue.
    Queued,
    /// Running for longer than the worker's start-recording delay.
    Started,
    /// Finished successfully.
    Succeeded,
    /// Failed: a retry is scheduled (`retrying`) or it failed for good (`dead`).
    Failed,
    /// Failed; a retry is scheduled.
    Retrying,
    /// Failed for good; in the dead-letter list.
    Dead,
}

impl StatusFilter {
    /// The stored statuses this filter matches.
    pub fn statuses(self) -> &'static [TaskStatus] {
        match self {
            Self::Queued => &[TaskStatus::Queued],
            Self::Started => &[TaskStatus::Started],
            Self::Succeeded => &[TaskStatus::Succeeded],
            Self::Failed => &[TaskStatus::Retrying, TaskStatus::Dead],
            Self::Retrying => &[TaskStatus::Retrying],
            Self::Dead => &[TaskStatus::Dead],
        }
    }
}

impl From<TaskStatus> for StatusFilter {
    fn from(s: TaskStatus) -> Self {
        match s {
            TaskStatus::Queued => Self::Queued,
            TaskStatus::Started => Self::Started,
            TaskStatus::Succeeded => Self::Succeeded,
            TaskStatus::Retrying => Self::Retrying,
            TaskStatus::Dead => Self::Dead,
        }
    }
}

/// Filters of `tasks list`.
#[derive(Clone, Debug, Default)]
pub struct TaskQuery {
    /// Queue.
    pub queue: String,
    /// Only these statuses.
    pub status: Option<StatusFilter>,
    /// Last update at or after (ms).
    pub since_ms: Option<u64>,
    /// Last update at or before (ms).
    pub until_ms: Option<u64>,
    /// Id starts with.
    pub id_prefix: Option<String>,
    /// Function.
    pub func: Option<String>,
    /// At most this many (newest first).
    pub limit: usize,
}

impl TaskQuery {
    fn matches(&self, r: &TaskRecord) -> bool {
        r.queue == self.queue
            && self
                .status
                .is_none_or(|f| f.statuses().iter().any(|s| r.status == s.name()))
            && self.func.as_ref().is_none_or(|f| &r.func == f)
            && self.since_ms.is_none_or(|t| r.updated_ms >= t)
            && self.until_ms.is_none_or(|t| r.updated_ms <= t)
            && self
                .id_prefix
                .as_ref()
                .is_none_or(|p| r.id.starts_with(p.as_str()))
    }
}

async fn fetch_records<C>(
    con: &mut C,
    keys: &Keys,
    ids: &[String],
) -> redis::RedisResult<Vec<TaskRecord>>
where
    C: redis::aio::ConnectionLike + Send,
{
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(1_000) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.hgetall(keys.task(id));
        }
        let rows: Vec<Vec<(String, String)>> = pipe.query_async(con).await?;
        out.extend(rows.into_iter().filter_map(TaskRecord::from_pairs));
    }
    Ok(out)
}

/// Walks one index on the server. KEYS[1] = the index; ARGV[1] = mode.
///
/// - `rev` (a status index, newest first): ARGV = mode, max, min (scores), offset, batch,
///   wanted, id prefix (or ''); KEYS[2] (optional) = a function index the ids must be in.
///   Stops at `wanted` matches.
/// - `lex` (the id index: ARGV[2..3] = ZRANGEBYLEX min max) or `rank` (a function index, in
///   rank order: ARGV[2..3] unused): ARGV[4..] = offset, batch, wanted, id prefix (or ''),
///   record key prefix, queue, statuses (`,a,b,`, or '' for any), function (or ''), time
///   min, time max. Each id's
///   record is read (one `HMGET`) for its status, function, queue and last update; the
///   batch's matches are returned newest first, at most `wanted`.
///
/// Returns {ids, last update ms, consumed}: `consumed` index entries were looked at.
const SCAN_INDEX_LUA: &str = r#"
local mode = ARGV[1]
local offset, batch, want, prefix = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local ids
if mode == 'rev' then
  ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[2], ARGV[3], 'WITHSCORES', 'LIMIT', offset, batch)
  local out, scores, consumed = {}, {}, 0
  for j = 1, #ids, 2 do
    local id = ids[j]
    consumed = consumed + 1
    local ok = prefix == '' or string.sub(id, 1, #prefix) == prefix
    if ok and KEYS[2] and not redis.call('ZSCORE', KEYS[2], id) then ok = false end
    if ok then
      out[#out + 1] = id
      scores[#scores + 1] = ids[j + 1]
      if #out >= want then break end
    end
  end
  return {out, scores, consumed}
end
if mode == 'lex' then
  ids = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], ARGV[3], 'LIMIT', offset, batch)
else
  ids = redis.call('ZRANGE', KEYS[1], offset, offset + batch - 1)
end
local tk, q, st, fn, tmin, tmax = ARGV[8], ARGV[9], ARGV[10], ARGV[11], tonumber(ARGV[12]), tonumber(ARGV[13])
local hits = {}
for _, id in ipairs(ids) do
  if prefix == '' or string.sub(id, 1, #prefix) == prefix then
    local r = redis.call('HMGET', tk .. id, 'queue', 'status', 'func', 'updated_ms')
    local t = tonumber(r[4])
    if r[1] == q and t and t >= tmin and t <= tmax and (st == '' or (r[2] and string.find(st, ',' .. r[2] .. ',', 1, true))) and (fn == '' or r[3] == fn) then
      hits[#hits + 1] = {t, id}
    end
  end
end
table.sort(hits, function(a, b) if a[1] ~= b[1] then return a[1] > b[1] end return a[2] > b[2] end)
local out, scores = {}, {}
for j = 1, math.min(want, #hits) do
  out[j] = hits[j][2]
  scores[j] = tostring(hits[j][1])
end
return {out, scores, #ids}
"#;

/// Entries of an index looked at per script call (a few ms of Redis time).
const SCAN_BATCH: usize = 5_000;

/// Newest first; equal times by id descending (as `ZREVRANGEBYSCORE` orders them).
fn newest_first(a: &(String, u64), b: &(String, u64)) -> std::cmp::Ordering {
    b.1.cmp(&a.1).then(b.0.cmp(&a.0))
}

/// Records matching `q`, newest first. Indexes: one zset per status scored by last update
/// (together every record of the queue), the lexicographic id index and one set-like zset per
/// function. The cheapest walk is chosen: the ids under the prefix or the members of the
/// function (each record's fields checked on the server, in full), or the status indexes
/// newest first (each stopping at `limit` matches; with no status filter, the newest of every
/// status index are merged). Only the records returned are read back.
pub async fn list_tasks<C>(
    con: &mut C,
    keys: &Keys,
    q: &TaskQuery,
) -> redis::RedisResult<Vec<TaskRecord>>
where
    C: redis::aio::ConnectionLike + Send,
{
    let limit = q.limit.max(1);
    let script = redis::Script::new(SCAN_INDEX_LUA);
    let statuses: &[TaskStatus] = match q.status {
        Some(f) => f.statuses(),
        None => &TaskStatus::ALL,
    };
    let status_keys: Vec<String> = statuses
        .iter()
        .map(|s| keys.tasks_status(&q.queue, *s))
        .collect();
    let func_key = q.func.as_ref().map(|f| keys.tasks_func(&q.queue, f));
    let lex_range = q.id_prefix.as_ref().map(|p| {
        (
            [b"[".as_slice(), p.as_bytes()].concat(),
            [b"[".as_slice(), p.as_bytes(), &[0xff]].concat(),
        )
    });
    let mut pipe = redis::pipe();
    for k in &status_keys {
        pipe.zcard(k);
    }
    if let Some(k) = &func_key {
        pipe.zcard(k);
    }
    if let Some((min, max)) = &lex_range {
        pipe.cmd("ZLEXCOUNT")
            .arg(keys.tasks_ids(&q.queue))
            .arg(min)
            .arg(max);
    }
    let sizes: Vec<u64> = pipe.query_async(con).await?;
    let status_total: u64 = sizes[..status_keys.len()].iter().sum();
    let mut rest = sizes[status_keys.len()..].iter();
    let func_n = func_key.as_ref().and_then(|_| rest.next().copied());
    let prefix_n = lex_range.as_ref().and_then(|_| rest.next().copied());
    // A full walk (prefix, function) reads every entry; a status walk usually stops early.
    let status_cost = status_total / 4;
    let prefix_check = q.id_prefix.clone().unwrap_or_default();
    let mut found: Vec<(String, u64)> = Vec::new();
    let full_walk = match (prefix_n, func_n) {
        (Some(p), f) if p <= status_cost && f.is_none_or(|f| p <= f) => Some("lex"),
        (_, Some(f)) if f <= status_cost => Some("rank"),
        _ => None,
    };
    if let Some(mode) = full_walk {
        let (index, min, max) = match (mode, &lex_range) {
            ("lex", Some((min, max))) => (keys.tasks_ids(&q.queue), min.clone(), max.clone()),
            _ => (
                func_key.clone().expect("a function walk has a function"),
                vec![],
                vec![],
            ),
        };
        let record_prefix = keys.task("");
        let mut offset = 0;
        loop {
            let (ids, scores, consumed): (Vec<String>, Vec<String>, usize) = script
                .key(&index)
                .arg(mode)
                .arg(&min)
                .arg(&max)
                .arg(offset)
                .arg(SCAN_BATCH)
                .arg(limit)
                .arg(&prefix_check)
                .arg(&record_prefix)
                .arg(&q.queue)
                .arg(status_list(q.status))
                .arg(q.func.as_deref().unwrap_or(""))
                .arg(q.since_ms.unwrap_or(0))
                .arg(q.until_ms.unwrap_or(u64::MAX / 2))
                .invoke_async(con)
                .await?;
            found.extend(ids.into_iter().zip(scores.iter().map(|s| parse_ms(s))));
            found.sort_by(newest_first);
            found.truncate(limit);
            offset += consumed;
            if consumed < SCAN_BATCH {
                break;
            }
        }
    } else {
        let min = q.since_ms.map(|t| t.to_string()).unwrap_or("-inf".into());
        let max = q.until_ms.map(|t| t.to_string()).unwrap_or("+inf".into());
        for key in &status_keys {
            let mut got = 0;
            let mut offset = 0;
            loop {
                let mut inv = script.key(key);
                if let Some(f) = &func_key {
                    inv.key(f);
                }
                let (ids, scores, consumed): (Vec<String>, Vec<String>, usize) = inv
                    .arg("rev")
                    .arg(&max)
                    .arg(&min)
                    .arg(offset)
                    .arg(SCAN_BATCH)
                    .arg(limit - got)
                    .arg(&prefix_check)
                    .invoke_async(con)
                    .await?;
                got += ids.len();
                found.extend(ids.into_iter().zip(scores.iter().map(|s| parse_ms(s))));
                offset += consumed;
                if consumed < SCAN_BATCH || got >= limit {
                    break;
                }
            }
        }
        found.sort_by(newest_first);
        found.truncate(limit);
    }
    let ids: Vec<String> = found.into_iter().map(|(id, _)| id).collect();
    let mut out: Vec<TaskRecord> = fetch_records(con, keys, &ids)
        .await?
        .into_iter()
        .filter(|r| q.matches(r))
        .collect();
    out.sort_by(|a, b| b.updated_ms.cmp(&a.updated_ms).then(b.id.cmp(&a.id)));
    Ok(out)
}

/// The statuses of a filter as the scan script takes them: `,a,b,` (empty: any).
fn status_list(f: Option<StatusFilter>) -> String {
    f.map(|f| {
        let names: Vec<&str> = f.statuses().iter().map(|s| s.name()).collect();
        format!(",{},", names.join(","))
    })
    .unwrap_or_default()
}

fn parse_ms(s: &str) -> u64 {
    s.parse::<f64>().unwrap_or(0.0) as u64
}

/// The record of task `id`.
pub async fn show_task<C>(
    con: &mut C,
    keys: &Keys,
    id: &str,
) -> redis::RedisResult<Option<TaskRecord>>
where
    C: redis::aio::ConnectionLike + Send,
{
    let pairs: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(keys.task(id))
        .query_async(con)
        .await?;
    Ok(TaskRecord::from_pairs(pairs))
}

/// Which dead letters an action applies to.
#[derive(Clone, Debug)]
pub enum Selector {
    /// Every dead letter of the queue.
    All,
    /// These exact ids.
    Ids(Vec<String>),
    /// Ids starting with this.
    Prefix(String),
}

impl Selector {
    /// Whether `id` is selected.
    pub fn matches(&self, id: &str) -> bool {
        match self {
            Self::All => true,
            Self::Ids(ids) => ids.iter().any(|i| i == id),
            Self::Prefix(p) => id.starts_with(p.as_str()),
        }
    }
}

/// Dead letters of `queue` matching `sel` (newest first), each with its raw text.
pub async fn dead_letters<C>(
    con: &mut C,
    keys: &Keys,
    queue: &str,
    sel: &Selector,
) -> redis::RedisResult<Vec<(String, Option<Envelope>)>>
where
    C: redis::aio::ConnectionLike + Send,
{
    let key = keys.dead(queue);
    let mut out = Vec::new();
    let mut start = 0isize;
    loop {
        let raws: Vec<String> = redis::cmd("LRANGE")
            .arg(&key)
            .arg(start)
            .arg(start + 999)
            .query_async(con)
            .await?;
        let n = raws.len();
        for raw in raws {
            let env = Envelope::from_json(&raw).ok();
            let keep = match &env {
                Some(e) => sel.matches(&e.id),
                None => matches!(sel, Selector::All),
            };
            if keep {
                out.push((raw, env));
            }
        }
        if n < 1_000 {
            break;
        }
        start += 1_000;
    }
    Ok(out)
}

/// KEYS[1] = dead list, KEYS[2] = queue, KEYS[3] = stats; ARGV = prefix, queue, now, then
/// (dead raw, new raw, id, func) quadruples. Moves each still-dead letter back to the queue
/// with the attempt count reset; the record says queued. Returns how many moved.
const REQUEUE_DEAD_LUA: &str = r#"
local P, q, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local cfg = fs_cfg(P, q)
local n = 0
for i = 4, #ARGV, 4 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('LPUSH', KEYS[2], ARGV[i + 1])
    fs_rec(P, q, ARGV[i + 2], ARGV[i + 3], 'queued', now, {'attempt', 0, 'enqueued_ms', now}, cfg)
    -- the same task again: the dead attempt's details go, its creation time stays
    redis.call('HDEL', P .. ':task:' .. ARGV[i + 2], 'error', 'worker', 'started_ms', 'duration_ms')
    n = n + 1
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[3], 'enqueued', n) end
return n
"#;

/// Put dead letters matching `sel` back into `queue` (same id, attempt 0, no error). Returns
/// how many moved.
pub async fn requeue_dead<C>(
    con: &mut C,
    keys: &Keys,
    queue: &str,
    sel: &Selector,
) -> redis::RedisResult<u64>
where
    C: redis::aio::ConnectionLike + Send,
{
    let now = crate::worker::now_ms();
    let letters = dead_letters(con, keys, queue, sel).await?;
    let script = redis::Script::new(&protocol::with_record_lib(REQUEUE_DEAD_LUA));
    let mut moved = 0;
    for chunk in letters.chunks(500) {
        let mut inv = script.key(keys.dead(queue));
        inv.key(keys.queue(queue))
            .key(keys.stats(queue))
            .arg(keys.prefix())
            .arg(queue)
            .arg(now);
        let mut any = false;
        for (raw, env) in chunk {
            let Some(env) = env else { continue };
            let mut fresh = env.clone();
            fresh.attempt = 0;
            fresh.error = None;
            // a new wait starts: the queue's oldest-task age must not count the dead time
            fresh.enqueued_at_ms = now;
            fresh.queue = queue.to_string();
            inv.arg(raw)
                .arg(fresh.to_json())
                .arg(&env.id)
                .arg(&env.func);
            any = true;
        }
        if any {
            let n: u64 = inv.invoke_async(con).await?;
            moved += n;
        }
    }
    Ok(moved)
}

/// Delete dead letters matching `sel`. Returns how many were deleted.
pub async fn purge_dead<C>(
    con: &mut C,
    keys: &Keys,
    queue: &str,
    sel: &Selector,
) -> redis::RedisResult<u64>
where
    C: redis::aio::ConnectionLike + Send,
{
    if matches!(sel, Selector::All) {
        let n: u64 = redis::cmd("LLEN")
            .arg(keys.dead(queue))
            .query_async(con)
            .await?;
        let _: () = redis::cmd("DEL")
            .arg(keys.dead(queue))
            .query_async(con)
            .await?;
        return Ok(n);
    }
    let letters = dead_letters(con, keys, queue, sel).await?;
    let mut n = 0;
    for chunk in letters.chunks(1_000) {
        let mut pipe = redis::pipe();
        for (raw, _) in chunk {
            pipe.lrem(keys.dead(queue), 1, raw);
        }
        let removed: Vec<u64> = pipe.query_async(con).await?;
        n += removed.iter().sum::<u64>();
    }
    Ok(n)
}

/// Counts of one queue in one minute.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CountBucket {
    /// Start of the minute (unix ms).
    pub minute_ms: u64,
    /// Tasks enqueued (producers, destinations, dead-letter requeues).
    pub submitted: i64,
    /// Attempts started (one that ran under `worker::RECORD_START_AFTER` is counted in the
    /// minute it ended, a cancelled one of those not at all).
    pub started: i64,
    /// Tasks finished successfully.
    pub completed: i64,
    /// Attempts failed (retried or dead).
    pub failed: i64,
    /// Failed attempts scheduled for a retry.
    pub retried: i64,
    /// Tasks dead-lettered.
    pub dead: i64,
    /// Tasks running at the minute's last sample (workers sample every 10 s; None: no worker
    /// sampled that minute).
    pub executing: Option<i64>,
}

/// Per-minute counts of `queue` from `since_ms` to `until_ms` (every minute, zeros included).
pub async fn counts<C>(
    con: &mut C,
    keys: &Keys,
    queue: &str,
    since_ms: u64,
    until_ms: u64,
) -> redis::RedisResult<Vec<CountBucket>>
where
    C: redis::aio::ConnectionLike + Send,
{
    let minutes: Vec<u64> = (since_ms / 60_000..=until_ms / 60_000).collect();
    let mut out = Vec::with_capacity(minutes.len());
    for chunk in minutes.chunks(1_000) {
        let mut pipe = redis::pipe();
        for m in chunk {
            pipe.hgetall(keys.counts(queue, *m));
        }
        let rows: Vec<Vec<(String, i64)>> = pipe.query_async(con).await?;
        for (m, row) in chunk.iter().zip(rows) {
            let mut b = CountBucket {
                minute_ms: m * 60_000,
                ..Default::default()
            };
            // In buckets of this format (`fmt` 2), stored `started` counts the started records
            // (attempts running over RECORD_START_AFTER, in the minute they started); a shorter
            // attempt's start is derived from its outcome (completed, retried or dead) minus the
            // outcomes of the long ones (`long`), in the minute it ended: one counter less to
            // write per short attempt. Older buckets counted every start in `started`.
            let (mut long, mut derived) = (0, false);
            for (k, v) in row {
                match k.as_str() {
                    "submitted" => b.submitted = v,
                    "started" => b.started = v,
                    "completed" => b.completed = v,
                    "failed" => b.failed = v,
                    "retried" => b.retried = v,
                    "dead" => b.dead = v,
                    "executing" => b.executing = Some(v),
                    "long" => long = v,
                    "fmt" => derived = v >= 2,
                    _ => {}
                }
            }
            if derived {
                b.started += b.completed + b.retried + b.dead - long;
            }
            out.push(b);
        }
    }
    Ok(out)
}

/// Tasks of `queue` running now (records in status `started`: attempts running for longer
/// than `worker::RECORD_START_AFTER`).
pub async fn executing<C>(con: &mut C, keys: &Keys, queue: &str) -> redis::RedisResult<u64>
where
    C: redis::aio::ConnectionLike + Send,
{
    redis::cmd("ZCARD")
        .arg(keys.tasks_status(queue, TaskStatus::Started))
        .query_async(con)
        .await
}

/// Trims the records of a queue. KEYS[1] = the time index earlier versions wrote (no longer
/// written nor read: deleted); ARGV = prefix, queue, now ms, budget. Returns the count removed.
const TRIM_LUA: &str = r#"
local P, q = ARGV[1], ARGV[2]
redis.call('UNLINK', KEYS[1])
return fs_trim(P, q, tonumber(ARGV[3]), fs_cfg(P, q), tonumber(ARGV[4]))
"#;

/// Apply the retention of `queue` (age and count, from its `QueueConfig` or the defaults) as
/// of `now_ms`, 1,000 records per script call. Returns the number of records deleted.
pub async fn trim<C>(con: &mut C, keys: &Keys, queue: &str, now_ms: u64) -> redis::RedisResult<u64>
where
    C: redis::aio::ConnectionLike + Send,
{
    let script = redis::Script::new(&protocol::with_record_lib(TRIM_LUA));
    let mut total = 0;
    loop {
        let n: u64 = script
            .key(keys.tasks(queue))
            .arg(keys.prefix())
            .arg(queue)
            .arg(now_ms)
            .arg(1_000)
            .invoke_async(con)
            .await?;
        total += n;
        if n < 1_000 {
            return Ok(total);
        }
    }
}

/// One line of `kubectl funcscale status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct QueueOverview {
    /// Queue.
    pub queue: String,
    /// Waiting tasks.
    pub depth: u64,
    /// Waiting for a retry.
    pub delayed: u64,
    /// Running now (all workers).
    pub executing: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Completed so far.
    pub completed: u64,
    /// Failed attempts so far.
    pub failed: u64,
    /// Submitted in the last complete minute.
    pub submitted_last_minute: i64,
    /// Completed in the last complete minute.
    pub completed_last_minute: i64,
    /// Decaying average task time (ms).
    pub task_ms: Option<f64>,
}

/// Queues that have a stats hash under the prefix (SCAN, for interactive tools).
pub async fn discover_queues<C>(con: &mut C, keys: &Keys) -> redis::RedisResult<Vec<String>>
where
    C: redis::aio::ConnectionLike + Send,
{
    let pattern = keys.stats("*");
    let head = pattern.trim_end_matches('*').to_string();
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1_000)
            .query_async(con)
            .await?;
        out.extend(
            batch
                .iter()
                .filter_map(|k| k.strip_prefix(&head).map(String::from)),
        );
        if next == 0 {
            break;
        }
        cursor = next;
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The state of one queue.
pub async fn queue_overview<C>(
    con: &mut C,
    keys: &Keys,
    queue: &str,
    now_ms: u64,
) -> redis::RedisResult<QueueOverview>
where
    C: redis::aio::ConnectionLike + Send,
{
    let (depth, delayed, executing, dead_letters, stats): (
        u64,
        u64,
        u64,
        u64,
        Vec<(String, String)>,
    ) = redis::pipe()
        .llen(keys.queue(queue))
        .zcard(keys.delayed(queue))
        .zcard(keys.tasks_status(queue, TaskStatus::Started))
        .llen(keys.dead(queue))
        .hgetall(keys.stats(queue))
        .query_async(con)
        .await?;
    let stats =
        protocol::QueueStats::from_pairs(stats.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let last = now_ms.saturating_sub(60_000);
    let b = counts(con, keys, queue, last, last).await?;
    let b = b.first().cloned().unwrap_or_default();
    Ok(QueueOverview {
        queue: queue.into(),
        depth,
        delayed,
        executing,
        dead_letters,
        completed: stats.completed,
        failed: stats.failed,
        submitted_last_minute: b.submitted,
        completed_last_minute: b.completed,
        task_ms: stats.ewma_ms,
    })
}

//! Reading task records, dead letters and per-minute counts (the `tasks`, `dead-letters`
//! subcommands and the kubectl plugin). Writing happens inside the worker's scripts
//! (`protocol::RECORD_LUA_LIB`).
//!
//! Queries use indexes, never a scan of all records: an id prefix reads the lexicographic
//! index (`ZRANGEBYLEX`), a status or a function reads its own time-ordered zset, anything else
//! the queue's time index; the other filters apply to the records fetched (pipelined).

use serde::Serialize;

use crate::protocol::{self, Envelope, Keys, TaskRecord, TaskStatus};

/// Filters of `tasks list`.
#[derive(Clone, Debug, Default)]
pub struct TaskQuery {
    /// Queue.
    pub queue: String,
    /// Only this status.
    pub status: Option<TaskStatus>,
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
            && self.status.is_none_or(|s| r.status == s.name())
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

/// Walks one index on the server, keeping the ids present in every filter zset (O(1)
/// `ZSCORE` each: no record is read). KEYS[1] = index, KEYS[2..] = filter zsets; ARGV = mode
/// (`lex`: ZRANGEBYLEX min max; `rev`: ZREVRANGEBYSCORE max min), min, max, offset, batch,
/// wanted matches, time min, time max, check time on KEYS[2] (`1`|`0`). Returns {ids, scores
/// (of KEYS[2] in lex mode), consumed}: `consumed` index entries were looked at. ARGV[10] =
/// id prefix to check (rev mode walking a smaller status or function index), or ''.
const SCAN_INDEX_LUA: &str = r#"
local ids
if ARGV[1] == 'lex' then
  ids = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], ARGV[3], 'LIMIT', tonumber(ARGV[4]), tonumber(ARGV[5]))
else
  ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[3], ARGV[2], 'LIMIT', tonumber(ARGV[4]), tonumber(ARGV[5]))
end
local want, tmin, tmax, ctime = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9] == '1'
local prefix = ARGV[10] or ''
local out, scores, consumed = {}, {}, 0
for _, id in ipairs(ids) do
  consumed = consumed + 1
  local ok, first = (prefix == '' or string.sub(id, 1, #prefix) == prefix), nil
  if ok then
    for k = 2, #KEYS do
      local sc = redis.call('ZSCORE', KEYS[k], id)
      if not sc then ok = false break end
      if k == 2 then
        first = sc
        if ctime then
          local t = tonumber(sc)
          if t < tmin or t > tmax then ok = false break end
        end
      end
    end
  end
  if ok then
    out[#out + 1] = id
    scores[#scores + 1] = first or '0'
    if #out >= want then break end
  end
end
return {out, scores, consumed}
"#;

/// Entries of an index looked at per script call (a few ms of Redis time).
const SCAN_BATCH: usize = 5_000;

/// Records matching `q`, newest first. The index walk and the filters run on the server
/// ([`SCAN_INDEX_LUA`]); only the records returned are read.
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
    let status_key = q.status.map(|s| keys.tasks_status(&q.queue, s));
    let func_key = q.func.as_ref().map(|f| keys.tasks_func(&q.queue, f));
    let tmin = q.since_ms.unwrap_or(0);
    let tmax = q.until_ms.unwrap_or(u64::MAX / 2);
    // Newest first; equal times by id descending, as ZREVRANGEBYSCORE orders them.
    // Walk the smallest of the candidate indexes; the other filters are checked per id.
    let mut sizes: Vec<(u64, u8)> = Vec::new();
    if let Some(prefix) = &q.id_prefix {
        let n: u64 = redis::cmd("ZLEXCOUNT")
            .arg(keys.tasks_ids(&q.queue))
            .arg([b"[".as_slice(), prefix.as_bytes()].concat())
            .arg([b"[".as_slice(), prefix.as_bytes(), &[0xff]].concat())
            .query_async(con)
            .await?;
        sizes.push((n, 0));
    }
    for (k, tag) in [(&status_key, 1u8), (&func_key, 2u8)] {
        if let Some(k) = k {
            let n: u64 = redis::cmd("ZCARD").arg(k).query_async(con).await?;
            sizes.push((n, tag));
        }
    }
    let walk = sizes.iter().min().map(|&(_, t)| t).unwrap_or(3);
    let (lex, primary, mut filters, min, max): (bool, String, Vec<String>, Vec<u8>, Vec<u8>) =
        if let (0, Some(prefix)) = (walk, &q.id_prefix) {
            let min = [b"[".as_slice(), prefix.as_bytes()].concat();
            let max = [b"[".as_slice(), prefix.as_bytes(), &[0xff]].concat();
            // The time index first: its score orders and time-filters the matches.
            (
                true,
                keys.tasks_ids(&q.queue),
                vec![keys.tasks(&q.queue)],
                min,
                max,
            )
        } else {
            let min = q.since_ms.map(|t| t.to_string()).unwrap_or("-inf".into());
            let max = q.until_ms.map(|t| t.to_string()).unwrap_or("+inf".into());
            let primary = match walk {
                1 => status_key.clone(),
                2 => func_key.clone(),
                _ => None,
            }
            .unwrap_or_else(|| keys.tasks(&q.queue));
            (false, primary, vec![], min.into_bytes(), max.into_bytes())
        };
    for k in [&status_key, &func_key].into_iter().flatten() {
        if *k != primary {
            filters.push(k.clone());
        }
    }
    let prefix_check = if lex {
        String::new()
    } else {
        q.id_prefix.clone().unwrap_or_default()
    };
    // lex: every match (then newest first); rev: already newest first, stop at the limit.
    let want = if lex { usize::MAX / 2 } else { limit };
    let mut found: Vec<(String, u64)> = Vec::new();
    let mut offset = 0;
    loop {
        let mut inv = script.key(&primary);
        for f in &filters {
            inv.key(f);
        }
        inv.arg(if lex { "lex" } else { "rev" })
            .arg(&min)
            .arg(&max)
            .arg(offset)
            .arg(SCAN_BATCH)
            .arg(want - found.len())
            .arg(tmin)
            .arg(tmax)
            .arg(if lex { "1" } else { "0" })
            .arg(&prefix_check);
        let (ids, scores, consumed): (Vec<String>, Vec<String>, usize) =
            inv.invoke_async(con).await?;
        found.extend(
            ids.into_iter().zip(
                scores
                    .iter()
                    .map(|s| s.parse::<f64>().unwrap_or(0.0) as u64),
            ),
        );
        offset += consumed;
        if consumed < SCAN_BATCH || found.len() >= want {
            break;
        }
    }
    if lex {
        found.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    }
    found.truncate(limit);
    let ids: Vec<String> = found.into_iter().map(|(id, _)| id).collect();
    let mut out: Vec<TaskRecord> = fetch_records(con, keys, &ids)
        .await?
        .into_iter()
        .filter(|r| q.matches(r))
        .collect();
    out.sort_by(|a, b| b.updated_ms.cmp(&a.updated_ms).then(b.id.cmp(&a.id)));
    Ok(out)
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
    fn matches(&self, id: &str) -> bool {
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
    fs_rec(P, q, ARGV[i + 2], ARGV[i + 3], 'queued', now, {'attempt', 0, 'enqueued_ms', now, 'error', ''}, cfg)
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

/// Trims the records of a queue. ARGV = prefix, queue, now ms, budget. Returns the count removed.
const TRIM_LUA: &str = r#"
local P, q = ARGV[1], ARGV[2]
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

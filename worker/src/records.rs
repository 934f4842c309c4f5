//! Reading task records, dead letters and per-minute counts (the `tasks`, `dead-letters`
//! subcommands and the kubectl plugin). Writing happens inside the worker's scripts
//! (`funcscale_protocol`'s `lua/record_lib.lua`).
//!
//! Queries use indexes, never a scan of all records: an id prefix reads the lexicographic
//! index (`ZRANGEBYLEX`), a function its own index, anything else the per-status zsets
//! (time-ordered; with no status filter the newest of each are merged); the other filters
//! apply on the server and again to the records fetched (see [`list_tasks`]).

use serde::Serialize;

pub use crate::protocol::CountBucket;
use crate::protocol::{self, Envelope, Keys, TaskRecord, TaskStatus, scripts};

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

/// The records of `ids` in `queue`: each under the queue ([`Keys::task`]), else the one an
/// earlier version wrote under the id alone ([`Keys::task_legacy`]) if it is of `queue`.
async fn fetch_records<C>(
    con: &mut C,
    keys: &Keys,
    queue: &str,
    ids: &[String],
) -> redis::RedisResult<Vec<TaskRecord>>
where
    C: redis::aio::ConnectionLike + Send,
{
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(1_000) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.hgetall(keys.task(queue, id));
        }
        let rows: Vec<Vec<(String, String)>> = pipe.query_async(con).await?;
        let mut missing = Vec::new();
        for (id, row) in chunk.iter().zip(rows) {
            match TaskRecord::from_pairs(row) {
                Some(r) => out.push(r),
                None => missing.push(id),
            }
        }
        if !missing.is_empty() {
            let mut pipe = redis::pipe();
            for id in &missing {
                pipe.hgetall(keys.task_legacy(id));
            }
            let rows: Vec<Vec<(String, String)>> = match pipe.query_async(con).await {
                // a Redis Cluster connection refuses a pipeline of keys in several hash slots
                // (the untagged `task:<id>`): no earlier version ran there, so there are none
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::CrossSlot) =>
                {
                    Vec::new()
                }
                r => r?,
            };
            out.extend(
                rows.into_iter()
                    .filter_map(TaskRecord::from_pairs)
                    .filter(|r| r.queue == queue),
            );
        }
    }
    Ok(out)
}

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
    let script = redis::Script::new(scripts::SCAN_INDEX);
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
        let record_prefix = keys.task(&q.queue, "");
        let legacy_prefix = keys.task_legacy("");
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
                .arg(&legacy_prefix)
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
    let mut out: Vec<TaskRecord> = fetch_records(con, keys, &q.queue, &ids)
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

/// The record of task `id` of `queue` (a queue id).
pub async fn show_task<C>(
    con: &mut C,
    keys: &Keys,
    queue: &str,
    id: &str,
) -> redis::RedisResult<Option<TaskRecord>>
where
    C: redis::aio::ConnectionLike + Send,
{
    Ok(fetch_records(con, keys, queue, &[id.to_string()])
        .await?
        .into_iter()
        .next())
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

/// Read a list or a sorted set in pages of 1,000 (`page(start, stop)` is the command of one
/// page), handing each entry to `each` in order.
pub(crate) async fn paged<C, T>(
    con: &mut C,
    page: impl Fn(isize, isize) -> redis::Cmd,
    mut each: impl FnMut(T),
) -> redis::RedisResult<()>
where
    C: redis::aio::ConnectionLike + Send,
    T: redis::FromRedisValue,
{
    let mut start = 0isize;
    loop {
        let entries: Vec<T> = page(start, start + 999).query_async(con).await?;
        let n = entries.len();
        entries.into_iter().for_each(&mut each);
        if n < 1_000 {
            return Ok(());
        }
        start += 1_000;
    }
}

/// `<cmd> key start stop` (`LRANGE`, `ZRANGE`).
pub(crate) fn range(cmd: &str, key: &str, start: isize, stop: isize) -> redis::Cmd {
    let mut c = redis::cmd(cmd);
    c.arg(key).arg(start).arg(stop);
    c
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
    paged(
        con,
        |a, b| range("LRANGE", &key, a, b),
        |raw: String| {
            let env = Envelope::from_json(&raw).ok();
            let keep = match &env {
                Some(e) => sel.matches(&e.id),
                None => matches!(sel, Selector::All),
            };
            if keep {
                out.push((raw, env));
            }
        },
    )
    .await?;
    Ok(out)
}

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
    let now = crate::clock::now_ms();
    let letters = dead_letters(con, keys, queue, sel).await?;
    let script = redis::Script::new(scripts::REQUEUE_DEAD);
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
            out.push(CountBucket::from_pairs(*m, row));
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

/// Apply the retention of `queue` (age and count, from its `QueueConfig` or the defaults) as
/// of `now_ms`, 1,000 records per script call. Returns the number of records deleted.
pub async fn trim<C>(con: &mut C, keys: &Keys, queue: &str, now_ms: u64) -> redis::RedisResult<u64>
where
    C: redis::aio::ConnectionLike + Send,
{
    let script = redis::Script::new(scripts::TRIM);
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

/// Queues that have a stats hash under the prefix (SCAN, for interactive tools); on a Redis
/// Cluster, SCAN of every master ([`funcscale_connect::Conn::each_master`]).
pub async fn discover_queues(
    con: &mut funcscale_connect::Conn,
    keys: &Keys,
) -> redis::RedisResult<Vec<String>> {
    let Some(masters) = con.each_master().await? else {
        return scan_queues(con, keys).await;
    };
    let mut out = Vec::new();
    for (_, mut m) in masters {
        out.extend(scan_queues(&mut m, keys).await?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// [`discover_queues`] on one node.
async fn scan_queues<C>(con: &mut C, keys: &Keys) -> redis::RedisResult<Vec<String>>
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

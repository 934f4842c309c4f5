//! The worker's Redis I/O for the queue protocol: enqueueing (producers, the `enqueue`
//! command), the schedules registry and the queue settings, as async calls. What is sent —
//! key names, envelopes, scripts, replies — is defined by the `funcscale_protocol` crate,
//! re-exported here so `funcscale_worker::protocol::Keys` and the like keep working.

pub use funcscale_protocol::foreign::{celery_queue_keys, rq_queue_key, sidekiq_queue_key};
pub use funcscale_protocol::*;

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
    config
        .set_pipeline(keys, queue, clear)
        .query_async(con)
        .await
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
    let pairs: Vec<(String, String)> = QueueConfig::get_cmd(keys, queue).query_async(con).await?;
    Ok(QueueConfig::from_pairs(
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ))
}

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
    redis::Script::new(scripts::SAMPLE_EXECUTING)
        .key(keys.tasks_status(queue, TaskStatus::Started))
        .key(keys.counts(queue, now_ms / 60_000))
        .arg(COUNTS_RETENTION_MS)
        .invoke_async(con)
        .await
}

/// The beat's firing script (`lua/beat_fire.lua`).
pub fn beat_fire_script() -> redis::Script {
    redis::Script::new(scripts::BEAT_FIRE)
}

/// One call of [`beat_fire_script`] for `queue`: `ticks` are (schedule field, tick, envelope).
/// Every key is in the queue's hash tag (one slot on Redis Cluster). Returns -1 when
/// `fence_token` is older than the newest token that fired this queue (field `_fence` of
/// `Keys::beat_last`: the caller lost the lease to a beat that already fired here; nothing is
/// written), else stores the token and returns the number of ticks enqueued (a tick at or
/// before the schedule's last fired one is skipped).
pub fn beat_fire_invocation<'a, 'b>(
    script: &'a redis::Script,
    keys: &Keys,
    fence_token: u64,
    queue: &str,
    now_ms: u64,
    ticks: impl IntoIterator<Item = (&'b str, i64, &'b Envelope)>,
) -> redis::ScriptInvocation<'a> {
    let mut inv = script.key(keys.beat_last(queue));
    inv.key(keys.queue(queue))
        .key(keys.stats(queue))
        .arg(fence_token)
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
    let script = redis::Script::new(scripts::ENQUEUE);
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

/// Add (or replace) entries of the dynamic schedules registry of `queue`; `per_minute` gives
/// each entry's executions per minute (see `cron::Cron::per_minute`). The per-period key is
/// maintained in the same atomic script call (chunks of 1,000, pipelined); the queue joins
/// its namespace's registry queues set (`SADD`) before.
pub async fn schedules_add<C>(
    con: &mut C,
    keys: &Keys,
    queue: &str,
    entries: &[(String, ScheduleEntry, f64)],
) -> redis::RedisResult<u64>
where
    C: redis::aio::ConnectionLike + Send,
{
    // the set first: a beat reading it between the two finds an empty registry (skipped),
    // never a registry it does not know of
    let _: u64 = schedules::register_cmd(keys, queue)
        .query_async(con)
        .await?;
    let lens: Vec<u64> = schedules::add_pipeline(keys, queue, entries)
        .query_async(con)
        .await?;
    Ok(lens.last().copied().unwrap_or(0))
}

/// Remove entries of the registry of `queue`; returns how many existed. The queue stays in
/// the registry queues set (see `funcscale_protocol::schedules`).
pub async fn schedules_remove<C>(
    con: &mut C,
    keys: &Keys,
    queue: &str,
    ids: &[String],
) -> redis::RedisResult<u64>
where
    C: redis::aio::ConnectionLike + Send,
{
    let counts: Vec<u64> = schedules::remove_pipeline(keys, queue, ids)
        .query_async(con)
        .await?;
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
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, items): (u64, Vec<(String, String)>) = schedules::scan_cmd(keys, queue, cursor)
            .query_async(con)
            .await?;
        out.extend(schedules::parse_entries(items));
        if next == 0 {
            break;
        }
        cursor = next;
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

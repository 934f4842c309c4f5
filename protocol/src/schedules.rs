//! The dynamic schedules registry (`Keys::schedules`, `Keys::schedules_per_period`,
//! `Keys::schedule_queues`): entries added and removed by producers (`funcscale-worker
//! schedules`), fired by the beat, and counted into M per minute in the same script call.
//!
//! The scripts touch the queue's registry and per-period key only (the queue's hash tag: one
//! slot on Redis Cluster). The namespace's set of queues with a registry is in another slot,
//! so an add first sends [`register_cmd`] (`SADD`), then [`add_pipeline`]; a removal never
//! takes the queue out of the set (an `SREM` after a removal that emptied the registry,
//! racing an add whose `SADD` came first, would hide the added entries from the beat
//! forever). The beat skips members whose registry is empty; the set is bounded by the
//! namespace's queue ids that ever had a registry.

use serde::{Deserialize, Serialize};

use crate::Keys;
use crate::scripts;

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

/// A registry entry as stored: the entry plus its executions per minute (used to keep the
/// per-period key exact when the entry is replaced or removed).
#[derive(Serialize)]
struct StoredSchedule<'a> {
    #[serde(flatten)]
    entry: &'a ScheduleEntry,
    per_minute: f64,
}

/// Entries added or removed per script call.
const CHUNK: usize = 1_000;

/// `SADD` of `queue` to the registry queues set of its namespace: sent (and answered) before
/// [`add_pipeline`], so whenever the registry has entries the beat finds the queue.
pub fn register_cmd(keys: &Keys, queue: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("SADD");
    cmd.arg(keys.schedule_queues(Keys::queue_id_namespace(queue)))
        .arg(queue);
    cmd
}

/// The commands adding (or replacing) entries of the registry of `queue`, with each entry's
/// executions per minute (`cron::Cron::per_minute`): the per-period key changes by exactly
/// the difference, in the same atomic script call (chunks of 1,000). Each reply is the
/// registry's size after its chunk. Send [`register_cmd`] first.
pub fn add_pipeline(
    keys: &Keys,
    queue: &str,
    entries: &[(String, ScheduleEntry, f64)],
) -> redis::Pipeline {
    registry_pipeline(
        scripts::SCHEDULES_ADD,
        keys,
        queue,
        entries,
        |inv, (id, entry, per_minute)| {
            let stored = StoredSchedule {
                entry,
                per_minute: *per_minute,
            };
            inv.arg(id)
                .arg(serde_json::to_string(&stored).expect("a schedule serializes"))
                .arg(format!("{per_minute:.9}"));
        },
    )
}

/// The commands removing entries of the registry of `queue` (chunks of 1,000); each reply is
/// how many of its chunk existed.
pub fn remove_pipeline(keys: &Keys, queue: &str, ids: &[String]) -> redis::Pipeline {
    registry_pipeline(scripts::SCHEDULES_REMOVE, keys, queue, ids, |inv, id| {
        inv.arg(id);
    })
}

/// One call of a registry script per chunk of `items`: KEYS = registry, per-period key (one
/// slot); ARGV = what `args` adds per item.
fn registry_pipeline<T>(
    lua: &str,
    keys: &Keys,
    queue: &str,
    items: &[T],
    args: impl Fn(&mut redis::ScriptInvocation<'_>, &T),
) -> redis::Pipeline {
    let script = redis::Script::new(lua);
    let mut pipe = redis::pipe();
    pipe.load_script(&script).ignore();
    for chunk in items.chunks(CHUNK) {
        let mut inv = script.key(keys.schedules(queue));
        inv.key(keys.schedules_per_period(queue));
        for item in chunk {
            args(&mut inv, item);
        }
        pipe.invoke_script(&inv);
    }
    pipe
}

/// One `HSCAN` step over the registry of `queue` from `cursor`; its reply is
/// `(next cursor, [(id, entry JSON)])`, the entries read with [`parse_entries`].
pub fn scan_cmd(keys: &Keys, queue: &str, cursor: u64) -> redis::Cmd {
    let mut cmd = redis::cmd("HSCAN");
    cmd.arg(keys.schedules(queue))
        .arg(cursor)
        .arg("COUNT")
        .arg(5_000);
    cmd
}

/// The entries of an `HSCAN` reply; entries that do not parse are skipped.
pub fn parse_entries(
    items: Vec<(String, String)>,
) -> impl Iterator<Item = (String, ScheduleEntry)> {
    items.into_iter().filter_map(|(id, json)| {
        serde_json::from_str::<ScheduleEntry>(&json)
            .ok()
            .map(|e| (id, e))
    })
}

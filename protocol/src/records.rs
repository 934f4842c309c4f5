//! Task records (`Keys::task` and the record indexes) and the per-minute counts
//! (`Keys::counts`): written by `lua/record_lib.lua` inside the worker's scripts, read by the
//! `tasks` / `dead-letters` commands and the kubectl plugin.

use serde::{Deserialize, Serialize};

/// Default retention of task records by age.
pub const RECORD_MAX_AGE_MS: u64 = 24 * 3_600_000;
/// Default retention of task records by count, per queue.
pub const RECORD_MAX_COUNT: u64 = 100_000;
/// A worker's record write trims retention on every this-many-th write of a status (per
/// queue and minute), by up to twice as many records: as bounded as trimming 2 per write.
pub const RECORD_TRIM_EVERY: u64 = 32;
/// How long the per-minute count buckets are kept.
pub const COUNTS_RETENTION_MS: u64 = 24 * 3_600_000;

/// A task record (`Keys::task`), as read back.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct TaskRecord {
    /// Task id.
    pub id: String,
    /// Queue.
    pub queue: String,
    /// Function.
    pub func: String,
    /// Status name (see [`crate::TaskStatus`]).
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

/// Counts of one queue in one minute.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CountBucket {
    /// Start of the minute (unix ms).
    pub minute_ms: u64,
    /// Tasks enqueued (producers, destinations, dead-letter requeues).
    pub submitted: i64,
    /// Attempts started (one that ran under the worker's start-recording delay is counted in
    /// the minute it ended, a cancelled one of those not at all).
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

impl CountBucket {
    /// Parse `HGETALL <counts key of minute>` (`minute` = unix ms / 60,000).
    pub fn from_pairs(minute: u64, row: impl IntoIterator<Item = (String, i64)>) -> Self {
        let mut b = CountBucket {
            minute_ms: minute * 60_000,
            ..Default::default()
        };
        // In buckets of this format (`fmt` 2), stored `started` counts the started records
        // (attempts running over the worker's start-recording delay, in the minute they
        // started); a shorter attempt's start is derived from its outcome (completed, retried
        // or dead) minus the outcomes of the long ones (`long`), in the minute it ended: one
        // counter less to write per short attempt. Older buckets counted every start in
        // `started`.
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
        b
    }
}

/// Fields of a count bucket the worker adds to for its finishes (the outcomes it counts
/// itself, outside the finish script; see `lua/finish.lua`), in the worker's index order.
pub const OUTCOME_FIELDS: [&str; 5] = ["completed", "retried", "dead", "failed", "long"];
/// Field of a count bucket the workers sample the running tasks into.
pub const EXECUTING_FIELD: &str = "executing";
/// Format of the count buckets written by this build (see [`CountBucket::from_pairs`]).
pub const COUNTS_FORMAT: i64 = 2;

/// Add `counts` (field, n) to the bucket of `queue` for `minute` (unix ms / 60,000) in
/// `pipe`, and set the bucket's format and expiry as the record scripts do.
pub fn add_counts(
    pipe: &mut redis::Pipeline,
    keys: &crate::Keys,
    queue: &str,
    minute: u64,
    counts: &[(&str, i64)],
) {
    let key = keys.counts(queue, minute);
    for (field, n) in counts {
        if *n != 0 {
            pipe.hincr(&key, *field, *n).ignore();
        }
    }
    pipe.hset(&key, "fmt", COUNTS_FORMAT)
        .ignore()
        .pexpire(&key, COUNTS_RETENTION_MS as i64)
        .ignore();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_buckets_of_both_formats() {
        let row = |fmt: Option<i64>| {
            let mut r = vec![
                ("started".to_string(), 2),
                ("completed".to_string(), 5),
                ("retried".to_string(), 1),
                ("dead".to_string(), 1),
                ("long".to_string(), 2),
            ];
            if let Some(f) = fmt {
                r.push(("fmt".to_string(), f));
            }
            r
        };
        // format 2: the short attempts' starts are derived from their outcomes
        let b = CountBucket::from_pairs(3, row(Some(2)));
        assert_eq!((b.minute_ms, b.started, b.executing), (180_000, 7, None));
        // older buckets counted every start
        assert_eq!(CountBucket::from_pairs(3, row(None)).started, 2);
    }
}

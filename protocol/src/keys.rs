//! Key names.

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "funcscale";
/// A worker whose heartbeat (its score in [`Keys::workers`]) is older than this is dead; its
/// in-flight tasks are recovered.
pub const WORKER_TTL_MS: u64 = 15_000;

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

    /// Tasks running now from `queue`: a zset of the in-flight list keys
    /// ([`Keys::inflight`]) of the slots running one, scored by when the slot fetched it
    /// (ms). The worker's scripts keep it in step with the in-flight lists: fetch adds,
    /// finish and requeue (drain, reaper) remove, forgetting a dead slot cleans up.
    pub fn running(&self, queue: &str) -> String {
        format!("{}:running:{queue}", self.prefix)
    }

    /// Tasks waiting for a retry (zset scored by due time in ms).
    pub fn delayed(&self, queue: &str) -> String {
        format!("{}:delayed:{queue}", self.prefix)
    }

    /// Dead letters of `queue`.
    pub fn dead(&self, queue: &str) -> String {
        format!("{}:dead:{queue}", self.prefix)
    }

    /// Stats hash of `queue` (see [`crate::StatsField`]).
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
    /// the trim script), and the stem of the other record index keys.
    pub fn tasks(&self, queue: &str) -> String {
        format!("{}:tasks:{queue}", self.prefix)
    }

    /// Record ids of `queue` in `status`, by last update (ms).
    pub fn tasks_status(&self, queue: &str, status: crate::TaskStatus) -> String {
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

    /// Settings of `queue` ([`crate::QueueConfig`]).
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
            k.running("a"),
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
}

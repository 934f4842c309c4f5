//! The per-queue stats hash (`Keys::stats`): counters, the decaying average task time and
//! histogram the workers write (`lua/record_duration.lua`) and the operator reads as T.

/// Half-life of the decaying task-time average and histogram, in ms.
pub const STATS_HALF_LIFE_MS: u64 = 60_000;
/// Upper bounds (ms) of the task-time histogram buckets in the stats hash; the last bucket is open.
pub const DURATION_BUCKETS_MS: [u64; 16] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
];

/// Fields of the per-queue stats hash (`Keys::stats`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsField {
    /// Tasks enqueued (counter): by producers, the beat and destinations; not retries
    /// (`Retried` counts those), so it is the arrivals the operator's rate λ is taken from.
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

/// One call of [`crate::scripts::RECORD_DURATION`] (`script` wraps it): an attempt that took
/// `duration_ms` and finished at `now_ms` with `outcome` ([`StatsField::Completed`] or
/// [`StatsField::Failed`]) into the stats hash `stats_key`, decaying with
/// [`STATS_HALF_LIFE_MS`].
pub fn record_duration<'a>(
    script: &'a redis::Script,
    stats_key: &str,
    (duration_ms, now_ms): (u64, u64),
    outcome: StatsField,
) -> redis::ScriptInvocation<'a> {
    let mut inv = script.key(stats_key);
    inv.arg(duration_ms)
        .arg(now_ms)
        .arg(STATS_HALF_LIFE_MS)
        .arg(outcome.name());
    inv
}

/// The decaying average task time `lua/record_duration.lua` keeps in the stats hash
/// (`ewma_ms`, `updated_ms`), computed the same way in Rust for the simulator: a new
/// duration weighs `1 - 0.5^(Δt / half-life)` (at least 5 %), Δt counted from the last time
/// the decay was applied. The contract test runs both on the same durations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TaskTimeAverage {
    /// The average, in ms.
    pub ewma_ms: f64,
    /// When the decay was last applied (unix ms).
    pub updated_ms: u64,
}

impl TaskTimeAverage {
    /// The average after one attempt of `duration_ms` that finished at `now_ms`.
    pub fn record(prev: Option<Self>, duration_ms: f64, now_ms: u64, half_life_ms: u64) -> Self {
        let Some(prev) = prev else {
            return Self {
                ewma_ms: duration_ms,
                updated_ms: now_ms,
            };
        };
        let dt = now_ms.saturating_sub(prev.updated_ms) as f64;
        let decay = 0.5f64.powf(dt / half_life_ms.max(1) as f64);
        let w = (1.0 - decay).max(0.05);
        Self {
            ewma_ms: prev.ewma_ms * (1.0 - w) + duration_ms * w,
            updated_ms: if decay < 0.999 {
                now_ms
            } else {
                prev.updated_ms
            },
        }
    }
}

/// Hash field of histogram bucket `i` (decayed count of tasks with duration <= the bound).
pub fn bucket_field(i: usize) -> String {
    format!("h{i}")
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

#[cfg(test)]
mod tests {
    use super::*;

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

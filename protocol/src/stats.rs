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
    /// Time-decayed mean task time in ms (float; see [`TaskTimeAverage`]).
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
/// (`ewma_ms`, with its decayed sum `dsum_ms` and count `dcount`, and `updated_ms`), computed
/// the same way in Rust for the simulator: a time-decayed mean, where every attempt weighs 1
/// when it finishes and its weight halves every half-life (the decay is applied when at least
/// 0.1 % of weight has gone, and `updated_ms` is when it last was). Every task of a burst
/// counts the same, so the mean is not pulled towards the last (longest) finishers. The
/// contract test runs both on the same durations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TaskTimeAverage {
    /// The average, in ms.
    pub ewma_ms: f64,
    /// When the decay was last applied (unix ms).
    pub updated_ms: u64,
    /// Decayed sum of the durations (ms).
    pub sum_ms: f64,
    /// Decayed count of the attempts.
    pub count: f64,
}

impl TaskTimeAverage {
    /// The average after one attempt of `duration_ms` that finished at `now_ms`.
    pub fn record(prev: Option<Self>, duration_ms: f64, now_ms: u64, half_life_ms: u64) -> Self {
        let Some(prev) = prev else {
            return Self {
                ewma_ms: duration_ms,
                updated_ms: now_ms,
                sum_ms: duration_ms,
                count: 1.0,
            };
        };
        let dt = now_ms.saturating_sub(prev.updated_ms) as f64;
        let decay = 0.5f64.powf(dt / half_life_ms.max(1) as f64);
        let (mut sum, mut count, mut updated) = (prev.sum_ms, prev.count, prev.updated_ms);
        if decay < 0.999 {
            sum *= decay;
            count *= decay;
            updated = now_ms;
        }
        sum += duration_ms;
        count += 1.0;
        Self {
            ewma_ms: sum / count,
            updated_ms: updated,
            sum_ms: sum,
            count,
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
    fn a_burst_counts_every_task_not_the_last_finishers() {
        // 1,000 tasks of 100..1,090 ms finish within 5 s, the longest of each 100 last (as a burst
        // drains): the average is their mean, not the last finishers'
        let mut avg = None;
        for i in 0..1_000u64 {
            let d = 100.0 + (i % 100) as f64 * 10.0;
            avg = Some(TaskTimeAverage::record(
                avg,
                d,
                1_000_000 + i * 5,
                STATS_HALF_LIFE_MS,
            ));
        }
        let mean = 100.0 + 99.0 * 10.0 / 2.0;
        let got = avg.unwrap().ewma_ms;
        assert!((got - mean).abs() < 0.05 * mean, "{got} vs mean {mean}");
        // and a change of task time is followed within a few half-lives
        let mut a = avg;
        for i in 0..600u64 {
            a = Some(TaskTimeAverage::record(
                a,
                2_000.0,
                1_010_000 + i * 1_000,
                STATS_HALF_LIFE_MS,
            ));
        }
        assert!(a.unwrap().ewma_ms > 1_900.0, "{:?}", a);
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

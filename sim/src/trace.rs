//! Load traces: the built-in ones and CSV files.
//!
//! A trace file is CSV, one row per group of tasks arriving in the same second:
//!
//! ```text
//! # second,arrivals,task_ms[,scheduled_per_minute]
//! 0,20,450
//! 0,2,3000
//! 1,18,470,120
//! ```
//!
//! - `second`: when the tasks arrive, in whole seconds from the start (rows may repeat a
//!   second, e.g. for tasks of different times arriving together, and come in any order);
//! - `arrivals`: how many tasks arrive;
//! - `task_ms`: how long each of these tasks runs, in ms (1 to 86,400,000);
//! - `scheduled_per_minute` (optional): scheduled executions per minute (M) the queue's
//!   schedules announce from this second on, as the operator reads them; the last value given
//!   holds until another row changes it (0 before the first).
//!
//! Blank lines and lines starting with `#` are skipped; so is a first line that is a header
//! (`second,arrivals,...`).

use std::fmt;
use std::path::Path;

/// One group of tasks that arrive in the same second with the same task time.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Second of arrival from the trace's start.
    pub second: u64,
    /// Tasks arriving.
    pub arrivals: u32,
    /// Each task's run time in ms.
    pub task_ms: u32,
    /// Scheduled executions per minute announced from this second on, if the row says.
    pub scheduled_per_minute: Option<u64>,
}

/// A load trace.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    /// Name of the trace (a built-in name or the file's path).
    pub name: String,
    /// Arrivals, sorted by second.
    pub rows: Vec<Row>,
}

impl Trace {
    /// A trace from rows in any order (sorted by second, stable).
    pub fn new(name: impl Into<String>, mut rows: Vec<Row>) -> Self {
        rows.sort_by_key(|r| r.second);
        Self {
            name: name.into(),
            rows,
        }
    }

    /// Seconds the trace spans (last arrival second + 1).
    pub fn len_s(&self) -> u64 {
        self.rows.last().map_or(0, |r| r.second + 1)
    }

    /// Tasks in the trace.
    pub fn tasks(&self) -> u64 {
        self.rows.iter().map(|r| u64::from(r.arrivals)).sum()
    }

    /// Total run time of all tasks, in ms.
    pub fn work_ms(&self) -> u64 {
        self.rows
            .iter()
            .map(|r| u64::from(r.arrivals) * u64::from(r.task_ms))
            .sum()
    }

    /// Parse a trace from CSV text (the format in the module docs).
    pub fn parse_csv(name: impl Into<String>, text: &str) -> Result<Self, TraceError> {
        let name = name.into();
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if rows.is_empty()
                && line
                    .split(',')
                    .next()
                    .is_some_and(|f| f.trim().eq_ignore_ascii_case("second"))
            {
                continue;
            }
            let err = |column: &'static str, problem: String| TraceError {
                trace: name.clone(),
                line: line_no,
                column,
                problem,
            };
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if !(3..=4).contains(&fields.len()) {
                return Err(err(
                    "row",
                    format!(
                        "{} fields; expected second,arrivals,task_ms[,scheduled_per_minute]",
                        fields.len()
                    ),
                ));
            }
            let second = fields[0]
                .parse::<u64>()
                .ok()
                .filter(|s| *s <= MAX_SECOND)
                .ok_or_else(|| {
                    err(
                        "second",
                        format!(
                            "{:?} is not a whole number of seconds (0..={MAX_SECOND})",
                            fields[0]
                        ),
                    )
                })?;
            let arrivals = fields[1].parse::<u32>().map_err(|_| {
                err(
                    "arrivals",
                    format!("{:?} is not a task count (0..={})", fields[1], u32::MAX),
                )
            })?;
            let task_ms = fields[2]
                .parse::<u32>()
                .ok()
                .filter(|t| (1..=MAX_TASK_MS).contains(t))
                .ok_or_else(|| {
                    err(
                        "task_ms",
                        format!(
                            "{:?} is not a task time in ms (1..={MAX_TASK_MS})",
                            fields[2]
                        ),
                    )
                })?;
            let scheduled_per_minute = match fields.get(3) {
                None | Some(&"") => None,
                Some(f) => Some(f.parse::<u64>().map_err(|_| {
                    err(
                        "scheduled_per_minute",
                        format!("{f:?} is not a count of executions per minute"),
                    )
                })?),
            };
            rows.push(Row {
                second,
                arrivals,
                task_ms,
                scheduled_per_minute,
            });
        }
        if rows.is_empty() {
            return Err(TraceError {
                trace: name,
                line: 0,
                column: "row",
                problem: "no rows: expected second,arrivals,task_ms[,scheduled_per_minute]"
                    .to_string(),
            });
        }
        Ok(Self::new(name, rows))
    }

    /// Read and parse a trace file.
    pub fn from_file(path: &Path) -> Result<Self, TraceError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TraceError {
            trace: name.clone(),
            line: 0,
            column: "file",
            problem: format!("cannot read: {e}"),
        })?;
        Self::parse_csv(name, &text)
    }
}

/// Latest second a trace row may have (about 11.6 days).
pub const MAX_SECOND: u64 = 1_000_000;
/// Longest task time a trace row may have (one day, as `FuncQueue.spec.taskTimeMs`).
pub const MAX_TASK_MS: u32 = 86_400_000;

/// A trace file that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct TraceError {
    /// The trace (file path).
    pub trace: String,
    /// 1-based line, 0 for the whole file.
    pub line: usize,
    /// The column (or `row`, `file`).
    pub column: &'static str,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "trace {}: {}", self.trace, self.problem)
        } else {
            write!(
                f,
                "trace {} line {}: {}: {}",
                self.trace, self.line, self.column, self.problem
            )
        }
    }
}

/// Deterministic pseudo-random numbers (xorshift), so traces are the same on every run.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Poisson-distributed count with mean `lambda` (Knuth for small means, normal above).
    fn poisson(&mut self, lambda: f64) -> u32 {
        if lambda <= 0.0 {
            return 0;
        }
        if lambda > 30.0 {
            let z = self.normal();
            return (lambda + z * lambda.sqrt()).round().max(0.0) as u32;
        }
        let l = (-lambda).exp();
        let mut k = 0;
        let mut p = 1.0;
        loop {
            p *= self.next_f64();
            if p <= l {
                return k;
            }
            k += 1;
        }
    }

    fn normal(&mut self) -> f64 {
        let u1 = self.next_f64().max(1e-12);
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// A task time with the given mean: log-normal with σ = 0.5 (a typical long-tailed mix).
    fn task_ms(&mut self, mean_ms: f64) -> u32 {
        const SIGMA: f64 = 0.5;
        let mu = mean_ms.ln() - SIGMA * SIGMA / 2.0;
        (mu + SIGMA * self.normal())
            .exp()
            .round()
            .clamp(1.0, f64::from(MAX_TASK_MS)) as u32
    }
}

/// Rows for `count` tasks arriving in `second`, each with its own time around `mean_ms`.
fn varied(rng: &mut Rng, second: u64, count: u32, mean_ms: f64) -> impl Iterator<Item = Row> {
    let times: Vec<u32> = (0..count).map(|_| rng.task_ms(mean_ms)).collect();
    times.into_iter().map(move |task_ms| Row {
        second,
        arrivals: 1,
        task_ms,
        scheduled_per_minute: None,
    })
}

/// The four built-in traces (2 simulated hours each; task times log-normal around a mean the
/// policy is not told — the default hint is 500 ms): steady (500 ms), bursty (800 ms),
/// diurnal (300 ms), cron-spiky (500 ms, 3,000 scheduled executions a minute).
pub fn standard_traces() -> Vec<Trace> {
    let secs = 7200u64;
    let mut rng = Rng(0x5eed_f00d_u64);
    let mut trace = |name: &str, mean: f64, rate: &dyn Fn(u64) -> f64| {
        let mut rows = Vec::new();
        for t in 0..secs {
            let n = rng.poisson(rate(t));
            rows.extend(varied(&mut rng, t, n, mean));
        }
        Trace::new(name, rows)
    };
    let steady = trace("steady", 500.0, &|_| 20.0);
    let bursty = trace("bursty", 800.0, &|t| {
        if t % 600 >= 300 && t % 600 < 330 {
            150.0
        } else {
            3.0
        }
    });
    let diurnal = trace("diurnal", 300.0, &|t| {
        let phase = t as f64 / secs as f64 * 2.0 * std::f64::consts::PI;
        25.0 * (1.0 - phase.cos())
    });
    // 3,000 monitors firing at the start of every minute, announced as M = 3,000
    let mut rows = Vec::new();
    for t in (0..secs).step_by(60) {
        let start = rows.len();
        rows.extend(varied(&mut rng, t, 3_000, 500.0));
        if t == 0 {
            rows[start].scheduled_per_minute = Some(3_000);
        }
    }
    let cron = Trace::new("cron-spiky", rows);
    vec![steady, bursty, diurnal, cron]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_header_comments_and_repeated_seconds() {
        let t = Trace::parse_csv(
            "t.csv",
            "second,arrivals,task_ms,scheduled_per_minute\n# a comment\n\n2,1,100\n0,20,450\n0,2,3000,120\n",
        )
        .unwrap();
        assert_eq!(t.rows.len(), 3);
        assert_eq!(t.rows[0].second, 0);
        assert_eq!(t.rows[1].scheduled_per_minute, Some(120));
        assert_eq!(t.len_s(), 3);
        assert_eq!(t.tasks(), 23);
        assert_eq!(t.work_ms(), 20 * 450 + 2 * 3000 + 100);
    }

    #[test]
    fn bad_rows_name_line_and_column() {
        let cases = [
            ("0,1\n", "line 1: row: 2 fields"),
            ("0,1,100\nx,1,100\n", "line 2: second: \"x\""),
            ("0,-1,100\n", "line 1: arrivals"),
            ("0,1,0\n", "line 1: task_ms: \"0\" is not a task time"),
            ("0,1,100,many\n", "line 1: scheduled_per_minute"),
            ("# nothing\n", "no rows"),
        ];
        for (text, want) in cases {
            let e = Trace::parse_csv("f.csv", text).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.starts_with("trace f.csv"),
                "{text:?}: {e}"
            );
        }
        let e = Trace::from_file(Path::new("/nonexistent/trace.csv")).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }

    #[test]
    fn built_in_traces_vary_task_times_around_the_mean() {
        for (t, want) in standard_traces().iter().zip([500.0, 800.0, 300.0, 500.0]) {
            let mean = t.work_ms() as f64 / t.tasks() as f64;
            assert!((mean - want).abs() < want * 0.05, "{}: mean {mean}", t.name);
            let distinct: std::collections::BTreeSet<u32> =
                t.rows.iter().take(500).map(|r| r.task_ms).collect();
            assert!(distinct.len() > 100, "{}: {}", t.name, distinct.len());
        }
    }
}

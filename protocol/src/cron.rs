//! A small cron parser and matcher (UTC): 5 fields (`min hour dom month dow`) or 6 with
//! seconds first; `*`, `?`, numbers, names (`jan`, `mon`), ranges `a-b`, steps `*/n` and
//! `a-b/n`, lists, and the macros `@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`.
//! Day-of-month and day-of-week follow the classic rule: when both are restricted a day
//! matches either.
//!
//! Written here rather than taken from a crate because the beat needs two things crates do
//! not give cheaply: matching one second against tens of thousands of entries, and the
//! average executions per minute of an expression (the operator's M).
//!
//! This is the one cron reader of funcscale: the beat fires with it, the registry counts its
//! entries with it, and the operator sizes pools with it. M, the scheduled executions per
//! period of the cron-load formula, is defined here too ([`per_period`],
//! [`executions_per_period`]): the exact average rate of the expressions (day-of-month,
//! month and weekday fields included), over the period, rounded up.

use std::fmt;

/// A parsed cron expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    seconds: u64,
    minutes: u64,
    hours: u64,
    dom: u64,
    months: u64,
    dow: u64,
    dom_any: bool,
    dow_any: bool,
    has_seconds: bool,
}

/// Why an expression did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cron expression {expr:?}: {reason}")]
pub struct CronError {
    expr: String,
    reason: String,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn parse_field(
    field: &str,
    min: u32,
    max: u32,
    names: &[&str],
    name_base: u32,
) -> Result<(u64, bool), String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + name_base);
        }
        let v: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
        if v < min || v > max {
            return Err(format!("{v} is outside {min}-{max}"));
        }
        Ok(v)
    };
    let mut mask = 0u64;
    let any = field == "*" || field == "?";
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| format!("bad step {s:?}"))?;
                if step == 0 {
                    return Err("step 0".into());
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            // `5/10` means from 5 to the end, every 10.
            if part.contains('/') { (v, max) } else { (v, v) }
        };
        if lo > hi {
            return Err(format!("range {lo}-{hi} is reversed"));
        }
        let mut v = lo;
        while v <= hi {
            mask |= 1 << v;
            v += step;
        }
    }
    Ok((mask, any))
}

impl Cron {
    /// Parse an expression.
    pub fn parse(expr: &str) -> Result<Self, CronError> {
        let err = |reason: String| CronError {
            expr: expr.to_string(),
            reason,
        };
        let expanded = match expr.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (sec, rest, has_seconds) = match fields.len() {
            5 => ("0", &fields[..], false),
            6 => (fields[0], &fields[1..], true),
            n => return Err(err(format!("{n} fields; expected 5 or 6"))),
        };
        let (seconds, _) = parse_field(sec, 0, 59, &[], 0).map_err(&err)?;
        let (minutes, _) = parse_field(rest[0], 0, 59, &[], 0).map_err(&err)?;
        let (hours, _) = parse_field(rest[1], 0, 23, &[], 0).map_err(&err)?;
        let (dom, dom_any) = parse_field(rest[2], 1, 31, &[], 0).map_err(&err)?;
        let (months, _) = parse_field(rest[3], 1, 12, &MONTHS, 1).map_err(&err)?;
        let (mut dow, dow_any) = parse_field(rest[4], 0, 7, &DAYS, 0).map_err(&err)?;
        if dow & (1 << 7) != 0 {
            dow = (dow | 1) & !(1 << 7);
        }
        Ok(Self {
            seconds,
            minutes,
            hours,
            dom,
            months,
            dow,
            dom_any,
            dow_any,
            has_seconds,
        })
    }

    /// Whether the expression has a seconds field (fires at second granularity).
    pub fn has_seconds(&self) -> bool {
        self.has_seconds
    }

    fn day_matches(&self, t: &Civil) -> bool {
        if self.months & (1 << t.month) == 0 {
            return false;
        }
        let dom = self.dom & (1 << t.day) != 0;
        let dow = self.dow & (1 << t.weekday) != 0;
        match (self.dom_any, self.dow_any) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }

    /// Whether the expression fires at `unix_s` (UTC).
    pub fn matches(&self, unix_s: i64) -> bool {
        let t = Civil::from_unix(unix_s);
        self.seconds & (1 << t.second) != 0
            && self.minutes & (1 << t.minute) != 0
            && self.hours & (1 << t.hour) != 0
            && self.day_matches(&t)
    }

    /// The latest firing time in `(after, at]`, looking back at most `max_back_s` seconds.
    pub fn latest_in(&self, after: i64, at: i64, max_back_s: i64) -> Option<i64> {
        let lo = after.max(at - max_back_s);
        let step = if self.has_seconds { 1 } else { 60 };
        let mut t = if self.has_seconds {
            at
        } else {
            at - at.rem_euclid(60)
        };
        while t > lo {
            if self.matches(t) {
                return Some(t);
            }
            t -= step;
        }
        None
    }

    /// Average executions per minute, measured over the 28-year cycle 2001–2028 in which
    /// both dates and weekdays repeat (exact within 1901–2099).
    pub fn per_minute(&self) -> f64 {
        let per_day = (self.seconds.count_ones()
            * self.minutes.count_ones()
            * self.hours.count_ones()) as f64;
        let start = 11_323i64; // days from the epoch to 2001-01-01
        let days = 10_227; // 28 years

        let matching = (0..days)
            .filter(|d| self.day_matches(&Civil::from_unix((start + d) * 86_400)))
            .count() as f64;
        per_day * matching / days as f64 / 1_440.0
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cron(every {:.4}/min)", self.per_minute())
    }
}

/// A UTC civil time.
struct Civil {
    month: u32,
    day: u32,
    weekday: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl Civil {
    fn from_unix(s: i64) -> Self {
        let days = s.div_euclid(86_400);
        let secs = s.rem_euclid(86_400) as u32;
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let weekday = (days + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday
        Self {
            month,
            day,
            weekday,
            hour: secs / 3_600,
            minute: secs / 60 % 60,
            second: secs % 60,
        }
    }
}

/// M over a period: executions per `period_ms` of schedules that fire `per_minute` times a
/// minute (on average) in all, rounded up: a fraction of an execution still needs a process
/// for it. 0 for a rate that is not a positive finite number.
pub fn per_period(per_minute: f64, period_ms: u64) -> u64 {
    if !per_minute.is_finite() || per_minute <= 0.0 {
        return 0;
    }
    let x = per_minute * period_ms as f64 / 60_000.0;
    // the average of a per-minute expression over whole minutes is exact in binary; allow
    // for the rounding of fractional rates (0.2 × 300,000 / 60,000 is 1, not just above)
    (x - 1e-9).ceil().max(0.0) as u64
}

/// Executions per `period_ms` of one cron expression (M of one schedule), rounded up.
pub fn executions_per_period(cron: &str, period_ms: u64) -> Result<u64, CronError> {
    Ok(per_period(Cron::parse(cron)?.per_minute(), period_ms))
}

/// The value of `Keys::schedules_per_period` as the registry scripts write it: executions
/// per minute, an integer or a decimal (`30000`, `0.2`). `None` when it is not a number.
pub fn parse_per_minute(text: &str) -> Option<f64> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_matches() {
        let every = Cron::parse("*/1 * * * *").unwrap();
        assert!(every.matches(0) && every.matches(60) && !every.matches(61));
        assert_eq!(every.per_minute(), 1.0);
        let five = Cron::parse("*/5 * * * *").unwrap();
        assert!((five.per_minute() - 0.2).abs() < 1e-9);
        let secs = Cron::parse("*/10 * * * * *").unwrap();
        assert!(secs.has_seconds() && secs.matches(10) && !secs.matches(11));
        assert_eq!(secs.per_minute(), 6.0);
        // 2024-03-04 was a Monday; 1709510400 = 2024-03-04T00:00:00Z.
        let monday = Cron::parse("0 0 * * mon").unwrap();
        assert!(monday.matches(1_709_510_400));
        assert!(!monday.matches(1_709_510_400 + 86_400));
        assert!((monday.per_minute() - 1.0 / (7.0 * 1_440.0)).abs() < 1e-7);
        let sunday7 = Cron::parse("0 0 * * 7").unwrap();
        assert!(sunday7.matches(1_709_510_400 - 86_400));
        assert!(Cron::parse("@hourly").unwrap().matches(3_600));
        assert!(Cron::parse("* * *").is_err());
        assert!(Cron::parse("61 * * * *").is_err());
        assert!(Cron::parse("*/0 * * * *").is_err());
    }

    #[test]
    fn latest_in_window() {
        let c = Cron::parse("*/5 * * * *").unwrap();
        assert_eq!(c.latest_in(0, 899, 3_600), Some(600));
        assert_eq!(c.latest_in(600, 899, 3_600), None);
        assert_eq!(c.latest_in(0, 900, 3_600), Some(900));
    }

    proptest::proptest! {
        #[test]
        fn every_minute_matches_only_minute_starts(t in 0i64..4_000_000_000) {
            let c = Cron::parse("* * * * *").unwrap();
            proptest::prop_assert_eq!(c.matches(t), t % 60 == 0);
        }

        /// M of a sum of per-minute crons is their count scaled to the period.
        #[test]
        fn per_period_of_whole_rates(n in 0u64..1_000_000, minutes in 1u64..1_440) {
            proptest::prop_assert_eq!(per_period(n as f64, minutes * 60_000), n * minutes);
        }
    }

    /// What the operator's own reader (`cron_rate::executions_per_period`, replaced by
    /// [`executions_per_period`]) answered: the exact reader gives the same for these.
    #[test]
    fn operator_reader_cases() {
        let m = |c: &str, p: u64| executions_per_period(c, p).ok();
        assert_eq!(m("* * * * *", 60_000), Some(1));
        assert_eq!(m("*/10 * * * * *", 60_000), Some(6));
        assert_eq!(m("* * * * * *", 60_000), Some(60));
        assert_eq!(m("*/5 * * * *", 60_000), Some(1)); // 0.2 rounded up
        assert_eq!(m("*/5 * * * *", 300_000), Some(1));
        assert_eq!(m("0 3 * * *", 86_400_000), Some(1));
        assert_eq!(m("0,30 9-17 * * 1-5", 3_600_000), Some(1));
        assert_eq!(m("bad", 60_000), None);
        assert_eq!(m("61 * * * *", 60_000), None);
    }

    /// Where the two readers disagreed, the exact one wins: the operator's took day fields
    /// as "every day", refused names, and read the registry's per-minute value as a whole
    /// number of executions per period (a fractional one became 0).
    #[test]
    fn the_exact_reader_where_the_two_disagreed() {
        // every second on weekdays: 60 × 5/7 a minute on average, not 60
        assert_eq!(executions_per_period("* * * * * 1-5", 60_000), Ok(43));
        // names are read (the beat fires these)
        assert_eq!(executions_per_period("0 0 * * mon", 604_800_000), Ok(1));
        // the registry's per-minute value, fractional or not, over any period
        let m = |text: &str, period_ms| parse_per_minute(text).map(|v| per_period(v, period_ms));
        for (text, period_ms, want) in [
            ("0.2", 60_000, 1),
            ("0.2", 300_000, 1),
            ("30000", 60_000, 30_000),
            (" 10000\n", 120_000, 20_000),
            ("0", 60_000, 0),
        ] {
            assert_eq!(
                m(text, period_ms),
                Some(want),
                "{text:?} over {period_ms} ms"
            );
        }
        assert_eq!(parse_per_minute("x"), None);
        assert_eq!(parse_per_minute("-1"), None);
    }
}

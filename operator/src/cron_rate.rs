//! How many times a cron schedule fires per period (the M of the cron-load formula).
//!
//! Only the second, minute and hour fields decide the rate; day, month and weekday fields
//! are taken as "every day" (an upper bound, which is what sizing wants).

/// Executions per `period_ms` of a 5-field (`m h dom mon dow`) or 6-field (`s m h dom mon dow`)
/// cron expression, rounded up. `None` when the expression cannot be read.
pub fn executions_per_period(cron: &str, period_ms: u64) -> Option<u64> {
    let fields: Vec<&str> = cron.split_whitespace().collect();
    let (secs, rest) = match fields.len() {
        5 => (1u64, &fields[..]),
        6 => (count(fields[0], 0, 59)?, &fields[1..]),
        _ => return None,
    };
    let mins = count(rest[0], 0, 59)?;
    let hours = count(rest[1], 0, 23)?;
    let per_day = secs * mins * hours;
    Some((per_day * period_ms).div_ceil(86_400_000))
}

/// Number of values a cron field matches within `lo..=hi`.
fn count(field: &str, lo: u32, hi: u32) -> Option<u64> {
    let mut hit = vec![false; (hi + 1) as usize];
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().ok().filter(|s| *s > 0)?),
            None => (part, 1),
        };
        let (a, b) = if range == "*" || range == "?" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (a.parse().ok()?, b.parse().ok()?)
        } else {
            let a: u32 = range.parse().ok()?;
            (a, if step > 1 { hi } else { a })
        };
        if a < lo || b > hi || a > b {
            return None;
        }
        let mut v = a;
        while v <= b {
            hit[v as usize] = true;
            v += step;
        }
    }
    Some(hit.iter().filter(|h| **h).count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_expressions() {
        assert_eq!(executions_per_period("* * * * *", 60_000), Some(1));
        assert_eq!(executions_per_period("*/10 * * * * *", 60_000), Some(6));
        assert_eq!(executions_per_period("* * * * * *", 60_000), Some(60));
        assert_eq!(executions_per_period("*/5 * * * *", 60_000), Some(1)); // 0.2 rounded up
        assert_eq!(executions_per_period("*/5 * * * *", 300_000), Some(1));
        assert_eq!(executions_per_period("0 3 * * *", 86_400_000), Some(1));
        assert_eq!(
            executions_per_period("0,30 9-17 * * 1-5", 3_600_000),
            Some(1)
        );
        assert_eq!(executions_per_period("bad", 60_000), None);
        assert_eq!(executions_per_period("61 * * * *", 60_000), None);
    }
}

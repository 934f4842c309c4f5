//! Durations as both programs spell them on the command line (`500ms`, `30s`, `2m`, `1h`,
//! or plain seconds, fractional allowed): the operator renders some of the worker's flags
//! (`--drain-timeout`), so the two read them with one parser.

use std::time::Duration;

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a number with one of the units.
    #[error("not a duration: {0:?} (e.g. 500ms, 30s, 2m, 1h)")]
    Malformed(String),
    /// Negative, infinite, or (where a positive one is wanted) zero.
    #[error("duration out of range: {0:?}")]
    OutOfRange(String),
}

/// Parse `500ms`, `30s`, `2m`, `1h` or a plain number of seconds (may be fractional); 0 is
/// allowed.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| DurationError::Malformed(s.to_string()))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(DurationError::OutOfRange(s.to_string()));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// [`parse`], refusing 0 (intervals and timeouts that must pass).
pub fn parse_positive(s: &str) -> Result<Duration, DurationError> {
    let d = parse(s)?;
    if d.is_zero() {
        return Err(DurationError::OutOfRange(s.trim().to_string()));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the worker's parser and the operator's parser accepted.
    #[test]
    fn both_programs_old_cases() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3_600)));
        assert_eq!(parse("1.5"), Ok(Duration::from_millis(1_500)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert!(parse("x").is_err());
        assert!(parse("-1s").is_err());
        assert_eq!(parse_positive("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_positive("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_positive("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_positive("0s").is_err());
        assert!(parse_positive("x").is_err());
    }
}

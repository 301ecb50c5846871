//! Duration text as providers write it: Go `time.Duration` (`1m2.5s`, `84ms`), plain or
//! fractional seconds (`6`, `1.5`), and proto3 durations (`47s`).

use std::time::Duration;

use sluice_config::duration::{self, DurationError};

/// The longest duration any parser returns (a year): larger values are clamped, so
/// arithmetic on them never overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

fn from_secs_f64(secs: f64) -> Option<Duration> {
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(
        Duration::try_from_secs_f64(secs)
            .unwrap_or(MAX_DURATION)
            .min(MAX_DURATION),
    )
}

/// Parses a Go `time.Duration` string: `1s`, `6m0s`, `12ms`, `1.146s`, `1h2m3.5s`,
/// `250us`, `250µs`, `10ns`, or `0`, with Sluice's one duration grammar
/// ([`sluice_config::duration::parse`], which also reads `d` and `min`). A leading `-`
/// is refused; longer than [`MAX_DURATION`] is clamped to it.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(sluice_provider::parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
/// assert_eq!(sluice_provider::parse_go_duration("1.146s"), Some(Duration::from_millis(1146)));
/// ```
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    match duration::parse(text) {
        Ok(d) => Some(d.min(MAX_DURATION)),
        Err(DurationError::TooLong) => Some(MAX_DURATION),
        Err(_) => None,
    }
}

/// Parses seconds as a number (`6`, `1.5`, ` 30 `). Negative or non-finite: `None`.
pub fn parse_seconds(text: &str) -> Option<Duration> {
    let t = text.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    from_secs_f64(t.parse().ok()?)
}

/// Parses milliseconds as a number, possibly fractional (`retry-after-ms: 1500.5`).
pub fn parse_millis(text: &str) -> Option<Duration> {
    parse_seconds(text).map(|d| (d / 1000).min(MAX_DURATION))
}

/// Seconds or a Go duration: `6`, `1.5`, `1.5s`, `84ms`, `6m0s`.
pub fn parse_flexible(text: &str) -> Option<Duration> {
    parse_seconds(text).or_else(|| parse_go_duration(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_go_duration("1s"), Some(ms(1000)));
        assert_eq!(parse_go_duration("12ms"), Some(ms(12)));
        assert_eq!(parse_go_duration("9ms"), Some(ms(9)));
        assert_eq!(parse_go_duration("1h2m3.5s"), Some(ms(3_723_500)));
        assert_eq!(parse_go_duration("250us"), Some(Duration::from_micros(250)));
        assert_eq!(parse_go_duration("250µs"), Some(Duration::from_micros(250)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("11.054s"), Some(ms(11_054)));
        assert_eq!(parse_go_duration("99999999999999h"), Some(MAX_DURATION));
        for bad in ["", "s", "-1s", "1x", "1", "1..2s", "abc"] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn seconds_and_millis() {
        assert_eq!(parse_seconds("6"), Some(Duration::from_secs(6)));
        assert_eq!(parse_seconds("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_seconds("-1"), None);
        assert_eq!(parse_seconds("1e3"), None);
        assert_eq!(
            parse_millis("1500.5"),
            Some(Duration::from_micros(1_500_500))
        );
        assert_eq!(parse_seconds("99999999999999999999999"), Some(MAX_DURATION));
    }
}

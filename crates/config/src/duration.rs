//! Durations as text — Sluice's one parser, shared by the configuration file, the
//! simulator's configuration and the provider-header parser (`sluice-provider`): one or
//! more `<number><unit>` terms (`250ms`, `30s`, `1.5s`, `5m`, `1h30m`, `1d`, Go's
//! `6m0s` and `1.146s`), or a bare `0`.
//!
//! Numbers are decimal (`1`, `1.5`, `.5`), read exactly (no floating-point rounding:
//! `0.1s` is 100 ms, `1.146s` is 1,146 ms; digits beyond nanoseconds are dropped).
//! Units: `ns`, `us` (also `µs`, `μs`), `ms`, `s`, `m` (also `min`), `h`, `d`. A
//! leading `+` is accepted (Go writes none, but accepts it); a leading `-` is refused.

use std::time::Duration;

/// The longest duration [`parse`] accepts: 10¹² seconds (about 31,700 years), so that
/// adding one to an `Instant` never overflows.
pub const LONGEST: Duration = Duration::from_secs(1_000_000_000_000);

/// Why a text is not a duration. Its messages quote the part of the text at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Nothing (or only blanks) was written.
    #[error("it is empty")]
    Empty,
    /// The text starts with `-`.
    #[error("it is negative")]
    Negative,
    /// A term has no number before its unit (`s`, `ms10`).
    #[error("{0:?} has no number before it")]
    NoNumber(String),
    /// A number is not a decimal number (`1..2`).
    #[error("{0:?} is not a number")]
    BadNumber(String),
    /// A number has no unit (`30`, `1m30`).
    #[error("{0:?} has no unit: ms, s, m, h or d after it")]
    NoUnit(String),
    /// A unit is not one of the known ones (`5 parsecs`, `10x`).
    #[error("{0:?} is not a unit of time: ns, us, ms, s, m, min, h or d")]
    UnknownUnit(String),
    /// Longer than [`LONGEST`].
    #[error("it is longer than 10^12 seconds")]
    TooLong,
}

/// Nanoseconds per unit.
fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "d" => 86_400_000_000_000,
        _ => return None,
    })
}

/// `number` (digits with at most one `.`) times `scale` nanoseconds, exactly (truncated
/// below one nanosecond); `None` on overflow.
fn scaled(number: &str, scale: u128) -> Result<Option<u128>, DurationError> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return Err(DurationError::BadNumber(number.to_owned()));
    }
    let mut total: u128 = 0;
    for b in whole.bytes() {
        let Some(t) = total
            .checked_mul(10)
            .and_then(|t| t.checked_add(u128::from(b - b'0')))
        else {
            return Ok(None);
        };
        total = t;
    }
    let Some(mut nanos) = total.checked_mul(scale) else {
        return Ok(None);
    };
    // The fraction: at most 30 digits matter below a nanosecond of any unit.
    let mut place = scale;
    for b in fraction.bytes().take(30) {
        let digit = u128::from(b - b'0');
        // place / 10 loses precision only below a nanosecond.
        nanos += digit * place / 10;
        place /= 10;
        if place == 0 {
            break;
        }
    }
    Ok(Some(nanos))
}

/// Parses a duration (see the [module](self) for the grammar), with a typed reason when
/// the text is not one.
///
/// ```
/// use std::time::Duration;
/// use sluice_config::duration::{DurationError, parse};
/// assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
/// assert_eq!(parse("1.146s"), Ok(Duration::from_millis(1146)));
/// assert_eq!(parse("30"), Err(DurationError::NoUnit("30".into())));
/// assert_eq!(parse("soon").unwrap_err().to_string(), "\"soon\" has no number before it");
/// ```
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.starts_with('-') {
        return Err(DurationError::Negative);
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(DurationError::NoNumber(text.to_owned()));
    }
    let is_number = |c: char| c.is_ascii_digit() || c == '.';
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !is_number(c)).unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let unit_end = after.find(is_number).unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        if number.is_empty() {
            return Err(DurationError::NoNumber(unit.to_owned()));
        }
        if unit.is_empty() {
            return Err(DurationError::NoUnit(number.to_owned()));
        }
        let scale = unit_nanos(unit).ok_or_else(|| DurationError::UnknownUnit(unit.to_owned()))?;
        nanos = scaled(number, scale)?
            .and_then(|n| nanos.checked_add(n))
            .ok_or(DurationError::TooLong)?;
        rest = next;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| DurationError::TooLong)?;
    let duration = Duration::new(secs, (nanos % 1_000_000_000) as u32);
    if duration > LONGEST {
        return Err(DurationError::TooLong);
    }
    Ok(duration)
}

/// [`parse`], without the reason.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(sluice_config::parse_duration("1m30s"), Some(Duration::from_secs(90)));
/// assert_eq!(sluice_config::parse_duration("250ms"), Some(Duration::from_millis(250)));
/// assert_eq!(sluice_config::parse_duration("30"), None);
/// ```
pub fn parse_duration(text: &str) -> Option<Duration> {
    parse(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn units_and_combinations() {
        assert_eq!(parse("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("1.5s"), Ok(ms(1500)));
        assert_eq!(parse("0.1s"), Ok(ms(100)));
        assert_eq!(parse(".5s"), Ok(ms(500)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse("1min"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("1h2m3s"), Ok(Duration::from_secs(3723)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse(" 30s "), Ok(Duration::from_secs(30)));
    }

    #[test]
    fn go_durations_as_providers_write_them() {
        assert_eq!(parse("6m0s"), Ok(Duration::from_secs(360)));
        assert_eq!(parse("1.146s"), Ok(ms(1146)));
        assert_eq!(parse("11.054s"), Ok(ms(11_054)));
        assert_eq!(parse("1h2m3.5s"), Ok(ms(3_723_500)));
        assert_eq!(parse("12ms"), Ok(ms(12)));
        assert_eq!(parse("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("250µs"), Ok(Duration::from_micros(250)));
        assert_eq!(parse("10ns"), Ok(Duration::from_nanos(10)));
        assert_eq!(parse("+1s"), Ok(ms(1000)));
        assert_eq!(parse("1.0000000009s"), Ok(Duration::new(1, 0)));
        assert_eq!(parse("0.000000001s"), Ok(Duration::from_nanos(1)));
    }

    #[test]
    fn garbage_is_refused_with_the_reason() {
        use DurationError::*;
        let cases = [
            ("", Empty),
            ("  ", Empty),
            ("-1s", Negative),
            ("s", NoNumber("s".into())),
            ("+", NoNumber("+".into())),
            ("ms10", NoNumber("ms".into())),
            ("soon", NoNumber("soon".into())),
            ("10", NoUnit("10".into())),
            ("1m30", NoUnit("30".into())),
            ("10x", UnknownUnit("x".into())),
            ("5 parsecs", UnknownUnit(" parsecs".into())),
            ("1..2s", BadNumber("1..2".into())),
            (".s", BadNumber(".".into())),
            ("99999999999999999999999999999999999999999h", TooLong),
            ("1000000000001s", TooLong),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Err(want), "{text:?}");
        }
        assert_eq!(parse("1000000000000s"), Ok(LONGEST));
    }
}

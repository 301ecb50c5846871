//! Durations as written in the file: `250ms`, `30s`, `1.5s`, `5m`, `2h`, `1d`, or combined (`1m30s`).

use std::time::Duration;

/// Parses a duration such as `30s`, `250ms`, `1.5s`, `5m`, `1h30m` or `1d`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(sluice_config::parse_duration("1m30s"), Some(Duration::from_secs(90)));
/// assert_eq!(sluice_config::parse_duration("250ms"), Some(Duration::from_millis(250)));
/// assert_eq!(sluice_config::parse_duration("30"), None);
/// ```
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += value * scale;
    }
    if !total.is_finite() || total > 1e12 {
        return None;
    }
    // Round to whole microseconds so "0.1s" is exactly 100 ms.
    Some(Duration::from_micros((total * 1e6).round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_combinations() {
        assert_eq!(parse_duration("60s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h2m3s"), Some(Duration::from_secs(3723)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
    }

    #[test]
    fn garbage_is_refused() {
        for bad in ["", "s", "10", "10x", "1..2s", "-1s", "ms10"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}

//! When a provider says to come back: `retry-after-ms`, `x-ms-retry-after-ms`,
//! `retry-after` (seconds, float or HTTP-date), and waits written in message text.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

use crate::duration::{MAX_DURATION, parse_flexible, parse_millis, parse_seconds};

/// The instant the response was made, from its `Date` header, else `now`: absolute times
/// in a response are read against the provider's clock, not ours.
pub fn response_date(headers: &HeaderMap, now: SystemTime) -> SystemTime {
    header_str(headers, "date")
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .unwrap_or(now)
}

pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The wait the headers ask for, in the order openai-python reads them:
/// `retry-after-ms`, then `x-ms-retry-after-ms`, then `retry-after` as seconds (integer
/// or float) or an HTTP-date (relative to the response's `Date`; a past date is zero).
///
/// ```
/// use http::HeaderMap;
/// use std::time::{Duration, SystemTime};
/// let mut h = HeaderMap::new();
/// h.insert("retry-after", "6".parse().unwrap());
/// assert_eq!(sluice_provider::retry_after(&h, SystemTime::now()), Some(Duration::from_secs(6)));
/// h.insert("retry-after-ms", "1500".parse().unwrap());
/// assert_eq!(sluice_provider::retry_after(&h, SystemTime::now()), Some(Duration::from_millis(1500)));
/// ```
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(d) = header_str(headers, name).and_then(parse_millis) {
            return Some(d);
        }
    }
    let value = header_str(headers, "retry-after")?;
    if let Some(d) = parse_seconds(value) {
        return Some(d);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let date = response_date(headers, now);
    Some(
        at.duration_since(date)
            .unwrap_or(Duration::ZERO)
            .min(MAX_DURATION),
    )
}

/// `x-should-retry: true|false`, a server's override of the retry decision.
pub fn should_retry(headers: &HeaderMap) -> Option<bool> {
    match header_str(headers, "x-should-retry")?
        .to_ascii_lowercase()
        .as_str()
    {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// A wait written in an error message, as a last resort: "Please try again in 1.146s",
/// "try again in 84ms", "Please retry after 6 seconds", "Please retry in 47.47s",
/// "retry after 2 minutes".
///
/// ```
/// use std::time::Duration;
/// let wait = sluice_provider::retry_after_in_text("Rate limit reached… Please try again in 1.146s. Visit…");
/// assert_eq!(wait, Some(Duration::from_millis(1146)));
/// ```
pub fn retry_after_in_text(message: &str) -> Option<Duration> {
    let lower = message.to_ascii_lowercase();
    for marker in [
        "try again in ",
        "retry after ",
        "retry in ",
        "try again after ",
    ] {
        let Some(i) = lower.find(marker) else {
            continue;
        };
        let rest = &lower[i + marker.len()..];
        let mut words = rest.split_whitespace();
        let Some(first) = words.next() else { continue };
        let first = first.trim_end_matches(['.', ',', ';', ')']);
        if let Some(d) = crate::duration::parse_go_duration(first) {
            return Some(d);
        }
        if let Some(n) = parse_seconds(first) {
            let unit = words.next().unwrap_or("");
            let scale = if unit.starts_with("ms") || unit.starts_with("milli") {
                0.001
            } else if unit.starts_with("min") {
                60.0
            } else if unit.starts_with("hour") {
                3600.0
            } else {
                1.0
            };
            return Duration::try_from_secs_f64(n.as_secs_f64() * scale)
                .ok()
                .map(|d| d.min(MAX_DURATION));
        }
    }
    None
}

/// Gemini's `RetryInfo.retryDelay` (`"47s"`, `"29.723877525s"`) in an error body.
pub(crate) fn retry_delay_in_details(body: &serde_json::Value) -> Option<Duration> {
    body.pointer("/error/details")?
        .as_array()?
        .iter()
        .find_map(|d| d.get("retryDelay")?.as_str().and_then(parse_flexible))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn header_forms_in_priority_order() {
        let now = SystemTime::now();
        let s = Duration::from_secs;
        assert_eq!(
            retry_after(&headers(&[("retry-after", "6")]), now),
            Some(s(6))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "1.5")]), now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(&headers(&[("Retry-After", "86400")]), now),
            Some(s(86400))
        );
        assert_eq!(
            retry_after(
                &headers(&[("retry-after", "6"), ("retry-after-ms", "250")]),
                now
            ),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            retry_after(&headers(&[("x-ms-retry-after-ms", "900")]), now),
            Some(Duration::from_millis(900))
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&headers(&[]), now), None);
    }

    #[test]
    fn http_dates_are_read_against_the_response_date_and_clamp_at_zero() {
        let h = headers(&[
            ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("retry-after", "Wed, 21 Oct 2015 07:28:30 GMT"),
        ]);
        // Our clock is years ahead: the provider's Date header still gives 30 s.
        assert_eq!(
            retry_after(&h, SystemTime::now()),
            Some(Duration::from_secs(30))
        );
        let past = headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]);
        assert_eq!(retry_after(&past, SystemTime::now()), Some(Duration::ZERO));
    }

    #[test]
    fn waits_in_message_text() {
        let ms = Duration::from_millis;
        assert_eq!(
            retry_after_in_text("Please try again in 84ms."),
            Some(ms(84))
        );
        assert_eq!(
            retry_after_in_text("Please try again in 11.054s. Visit"),
            Some(ms(11_054))
        );
        assert_eq!(
            retry_after_in_text("Please retry after 6 seconds. Please go"),
            Some(ms(6000))
        );
        assert_eq!(
            retry_after_in_text("You exceeded… Please retry in 47.470718756s."),
            Some(Duration::from_nanos(47_470_718_756))
        );
        assert_eq!(
            retry_after_in_text("retry after 2 minutes"),
            Some(ms(120_000))
        );
        assert_eq!(retry_after_in_text("try again later"), None);
        assert_eq!(retry_after_in_text(""), None);
    }

    #[test]
    fn should_retry_override() {
        assert_eq!(
            should_retry(&headers(&[("x-should-retry", "false")])),
            Some(false)
        );
        assert_eq!(
            should_retry(&headers(&[("x-should-retry", "TRUE")])),
            Some(true)
        );
        assert_eq!(should_retry(&headers(&[])), None);
    }
}

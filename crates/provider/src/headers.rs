//! Rate-limit headers: OpenAI / Azure `x-ratelimit-*` and Anthropic `anthropic-ratelimit-*`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use crate::duration::{MAX_DURATION, parse_flexible};
use crate::retry::{header_str, response_date};

/// One budget as a provider reports it. Every field is optional: headers are often
/// missing, and `-1` means "unknown", not "exhausted".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// The limit per window.
    pub limit: Option<u64>,
    /// What is left.
    pub remaining: Option<u64>,
    /// Time until the budget is full again, relative to the response.
    pub reset: Option<Duration>,
}

impl Budget {
    /// True when no field was present.
    pub fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none() && self.reset.is_none()
    }
}

/// The budgets a response reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// Requests.
    pub requests: Budget,
    /// Tokens (input and output together).
    pub tokens: Budget,
    /// Input tokens (Anthropic).
    pub input_tokens: Budget,
    /// Output tokens (Anthropic).
    pub output_tokens: Budget,
}

impl RateLimitHeaders {
    /// Reads every known header; unknown suffixes (`…-tokens_usage_based`) are ignored.
    pub fn parse(headers: &HeaderMap, now: SystemTime) -> Self {
        let date = response_date(headers, now);
        let budget = |prefix: &str, kind: &str, anthropic: bool| {
            let name = |field: &str| {
                if anthropic {
                    format!("{prefix}{kind}-{field}")
                } else {
                    format!("{prefix}{field}-{kind}")
                }
            };
            Budget {
                limit: header_str(headers, &name("limit")).and_then(parse_count),
                remaining: header_str(headers, &name("remaining")).and_then(parse_count),
                reset: header_str(headers, &name("reset")).and_then(|v| parse_reset(v, date)),
            }
        };
        let or = |a: Budget, b: Budget| if a.is_empty() { b } else { a };
        Self {
            requests: or(
                budget("x-ratelimit-", "requests", false),
                budget("anthropic-ratelimit-", "requests", true),
            ),
            tokens: or(
                budget("x-ratelimit-", "tokens", false),
                budget("anthropic-ratelimit-", "tokens", true),
            ),
            input_tokens: budget("anthropic-ratelimit-", "input-tokens", true),
            output_tokens: budget("anthropic-ratelimit-", "output-tokens", true),
        }
    }

    /// True when no header was present.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
            && self.tokens.is_empty()
            && self.input_tokens.is_empty()
            && self.output_tokens.is_empty()
    }
}

/// A count; negative (`-1`) or unparsable is unknown.
fn parse_count(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok()
}

/// A reset in any form: Go duration (`6m0s`), seconds (`30`, `1.5`), an RFC 3339
/// instant, or epoch seconds; absolute forms are read against the response's `date`
/// and clamp at zero.
pub fn parse_reset(text: &str, date: SystemTime) -> Option<Duration> {
    let t = text.trim();
    if let Ok(n) = t.parse::<u64>() {
        // Epoch seconds are far larger than any relative reset.
        if n > 1_000_000_000 {
            // A number too large for the platform's clock is no instant at all.
            let at = UNIX_EPOCH.checked_add(Duration::from_secs(n))?;
            return Some(
                at.duration_since(date)
                    .unwrap_or(Duration::ZERO)
                    .min(MAX_DURATION),
            );
        }
    }
    if let Some(d) = parse_flexible(t) {
        return Some(d);
    }
    let at = humantime::parse_rfc3339_weak(t).ok()?;
    Some(
        at.duration_since(date)
            .unwrap_or(Duration::ZERO)
            .min(MAX_DURATION),
    )
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
    fn openai_headers() {
        let h = headers(&[
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
            ("x-ratelimit-limit-tokens_usage_based", "1"),
        ]);
        let r = RateLimitHeaders::parse(&h, SystemTime::now());
        assert_eq!(
            r.requests,
            Budget {
                limit: Some(60),
                remaining: Some(59),
                reset: Some(Duration::from_secs(1))
            }
        );
        assert_eq!(r.tokens.reset, Some(Duration::from_secs(360)));
        assert_eq!(r.tokens.remaining, Some(149_984));
    }

    #[test]
    fn azure_minus_one_is_unknown() {
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "-1"),
            ("x-ratelimit-remaining-tokens", "4000"),
        ]);
        let r = RateLimitHeaders::parse(&h, SystemTime::now());
        assert_eq!(r.requests.remaining, None);
        assert_eq!(r.tokens.remaining, Some(4000));
    }

    #[test]
    fn anthropic_rfc3339_resets_use_the_date_header() {
        let h = headers(&[
            ("date", "Thu, 21 Aug 2025 12:40:00 GMT"),
            ("anthropic-ratelimit-requests-limit", "1000"),
            ("anthropic-ratelimit-requests-remaining", "999"),
            ("anthropic-ratelimit-requests-reset", "2025-08-21T12:40:59Z"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2025-08-21T12:40:01.5Z",
            ),
            ("anthropic-ratelimit-tokens-reset", "2020-01-01T00:00:00Z"),
        ]);
        let r = RateLimitHeaders::parse(&h, SystemTime::now());
        assert_eq!(r.requests.limit, Some(1000));
        assert_eq!(r.requests.reset, Some(Duration::from_secs(59)));
        assert_eq!(r.input_tokens.reset, Some(Duration::from_millis(1500)));
        assert_eq!(r.tokens.reset, Some(Duration::ZERO));
    }

    #[test]
    fn an_epoch_past_the_clocks_range_is_unknown_not_a_panic() {
        // Found by the never-panics proptest: `UNIX_EPOCH + u64::MAX s` overflowed.
        assert_eq!(parse_reset("18446744073709551615", SystemTime::now()), None);
    }

    #[test]
    fn epoch_seconds_and_missing_headers() {
        let date = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_reset("1700000030", date),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_reset("20", date), Some(Duration::from_secs(20)));
        assert_eq!(parse_reset("garbage", date), None);
        assert!(RateLimitHeaders::parse(&HeaderMap::new(), SystemTime::now()).is_empty());
    }
}

//! One replica's HTTP client, with the retry rules of the official OpenAI Python SDK
//! (`openai-python` `_base_client.py`): two retries; on 408, 409, 429 and ≥ 500 and on
//! connection errors; wait `retry-after-ms`, else `retry-after` when 0 < value ≤ 60 s,
//! else `min(0.5 × 2^n, 8) × (1 − 0.25 × random())` seconds. The bench adds what a
//! service adds around it: a deadline, after which the request has failed.

use std::time::Duration;

use rand::Rng;
use reqwest::header::HeaderMap;
use tokio::time::Instant;

/// The SDK's retry settings.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt (the SDK's `max_retries`, 2).
    pub max_retries: u32,
    /// First backoff (0.5 s).
    pub initial: Duration,
    /// Largest backoff (8 s).
    pub max: Duration,
    /// Largest Retry-After honoured (60 s; 120 s in newer SDKs).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            initial: Duration::from_millis(500),
            max: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Whether the SDK retries this status.
    pub fn retries_status(status: u16) -> bool {
        matches!(status, 408 | 409 | 429) || status >= 500
    }

    /// How long the SDK waits before retry number `retries_taken + 1`.
    pub fn delay(
        &self,
        retries_taken: u32,
        headers: Option<&HeaderMap>,
        rng: &mut impl Rng,
    ) -> Duration {
        if let Some(d) = headers.and_then(retry_after)
            && !d.is_zero()
            && d <= self.max_retry_after
        {
            return d;
        }
        let base = self.initial.as_secs_f64() * 2f64.powi(retries_taken.min(30) as i32);
        let base = base.min(self.max.as_secs_f64());
        Duration::from_secs_f64(base * (1.0 - 0.25 * rng.random::<f64>()))
    }
}

/// The server's requested wait: `retry-after-ms` first, then `retry-after` in seconds.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let num = |name: &str| -> Option<f64> {
        headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok()
    };
    if let Some(ms) = num("retry-after-ms").filter(|v| v.is_finite() && *v >= 0.0) {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    num("retry-after")
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64)
}

/// How a request ended, for the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A 2xx answer within the deadline.
    Ok,
    /// Gave up on a 429 (from the provider, the gateway or the replica's own limiter).
    RateLimited,
    /// The deadline passed first.
    Deadline,
    /// Another error (status or connection).
    Error,
}

/// What one HTTP attempt gave.
pub(crate) enum Attempt {
    /// 2xx, with the usage it reported.
    Ok { total_tokens: u64 },
    /// Any other status, with its headers.
    Status { status: u16, headers: HeaderMap },
    /// Connection error or timeout.
    Failed { timed_out: bool },
}

/// Sends one chat request and reads the whole answer, within `until`.
pub(crate) async fn attempt(
    client: &reqwest::Client,
    url: &str,
    bearer: &str,
    extra: &[(&str, String)],
    body: &str,
    until: Instant,
) -> Attempt {
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Attempt::Failed { timed_out: true };
    }
    let mut req = client
        .post(url)
        .bearer_auth(bearer)
        .header("content-type", "application/json")
        .timeout(left)
        .body(body.to_owned());
    for (k, v) in extra {
        req = req.header(*k, v);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            return Attempt::Failed {
                timed_out: e.is_timeout(),
            };
        }
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => {
            return Attempt::Failed {
                timed_out: e.is_timeout(),
            };
        }
    };
    if (200..300).contains(&status) {
        let total_tokens = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["usage"]["total_tokens"].as_u64())
            .unwrap_or(0);
        Attempt::Ok { total_tokens }
    } else {
        Attempt::Status { status, headers }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn backoff_is_the_sdks() {
        let p = RetryPolicy::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..100 {
            let d0 = p.delay(0, None, &mut rng).as_secs_f64();
            assert!((0.375..=0.5).contains(&d0), "{d0}");
            let d1 = p.delay(1, None, &mut rng).as_secs_f64();
            assert!((0.75..=1.0).contains(&d1), "{d1}");
            let d9 = p.delay(9, None, &mut rng).as_secs_f64();
            assert!((6.0..=8.0).contains(&d9), "{d9}");
        }
    }

    #[test]
    fn retry_after_ms_comes_first_and_large_values_are_ignored() {
        let p = RetryPolicy::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut h = HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(p.delay(0, Some(&h), &mut rng), Duration::from_secs(3));
        h.insert("retry-after-ms", "1250".parse().unwrap());
        assert_eq!(p.delay(0, Some(&h), &mut rng), Duration::from_millis(1250));
        let mut big = HeaderMap::new();
        big.insert("retry-after", "86400".parse().unwrap());
        assert!(p.delay(0, Some(&big), &mut rng) <= Duration::from_millis(500));
    }

    #[test]
    fn statuses_the_sdk_retries() {
        for s in [408, 409, 429, 500, 503] {
            assert!(RetryPolicy::retries_status(s));
        }
        for s in [400, 401, 404, 413] {
            assert!(!RetryPolicy::retries_status(s));
        }
    }
}

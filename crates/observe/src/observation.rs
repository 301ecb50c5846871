//! [`Observation`]: one upstream answer, as much of it as says something about limits.

use serde::{Deserialize, Serialize};

/// The most of an error body kept (bytes); longer bodies are cut at a char boundary.
pub const MAX_BODY: usize = 4096;

/// One upstream answer that says something about limits.
///
/// It never holds a secret: the account is named (`key-0`), never keyed, and only the
/// headers for which [`relevant_header`] is true are kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// When the gateway received the answer (ms since the epoch, gateway clock).
    pub at_ms: u64,
    /// The upstream's configured name.
    pub upstream: String,
    /// The model asked for upstream.
    pub model: String,
    /// The account's name within the upstream (`key-<i>`).
    pub account: String,
    /// The HTTP status, or 200 for an error delivered inside a 200 stream.
    pub status: u16,
    /// The rate-limit, retry and date headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The error body (or the error event of a stream), cut to [`MAX_BODY`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

impl Observation {
    /// An observation, keeping only the relevant headers and at most [`MAX_BODY`] of
    /// the body.
    pub fn new<'a>(
        at_ms: u64,
        upstream: &str,
        model: &str,
        account: &str,
        status: u16,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        body: Option<&str>,
    ) -> Self {
        let headers = headers
            .into_iter()
            .filter(|(name, _)| relevant_header(name))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
            .collect();
        let body = body.map(|b| {
            let mut end = b.len().min(MAX_BODY);
            while !b.is_char_boundary(end) {
                end -= 1;
            }
            b[..end].to_owned()
        });
        Self {
            at_ms,
            upstream: upstream.to_owned(),
            model: model.to_owned(),
            account: account.to_owned(),
            status,
            headers,
            body,
        }
    }

    /// The value of header `name` (case-insensitive), if kept.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True when the answer carries any rate-limit header.
    pub fn has_rate_limit_headers(&self) -> bool {
        self.headers.iter().any(|(n, _)| n.contains("ratelimit"))
    }
}

/// True for the headers an observation keeps: rate-limit headers of every provider,
/// the retry headers and `date` (to convert absolute resets without trusting clocks).
/// Never `authorization`, cookies or anything else.
pub fn relevant_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("x-ratelimit-")
        || n.starts_with("anthropic-ratelimit-")
        || matches!(
            n.as_str(),
            "retry-after" | "retry-after-ms" | "x-ms-retry-after-ms" | "x-should-retry" | "date"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_limit_headers_and_cuts_the_body_on_a_char_boundary() {
        let body = "é".repeat(MAX_BODY); // 2 bytes each
        let o = Observation::new(
            1,
            "openai",
            "gpt-4o",
            "key-0",
            429,
            [
                ("Authorization", "Bearer sk-secret"),
                ("X-RateLimit-Remaining-Requests", "0"),
                ("Retry-After", "2"),
                ("set-cookie", "a=b"),
                ("anthropic-ratelimit-tokens-reset", "2025-01-01T00:00:00Z"),
            ],
            Some(&body),
        );
        let names: Vec<&str> = o.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "x-ratelimit-remaining-requests",
                "retry-after",
                "anthropic-ratelimit-tokens-reset"
            ]
        );
        assert_eq!(o.header("RETRY-AFTER"), Some("2"));
        assert!(o.body.as_ref().unwrap().len() <= MAX_BODY);
        assert!(o.has_rate_limit_headers());
        assert!(!serde_json::to_string(&o).unwrap().contains("sk-secret"));
    }
}

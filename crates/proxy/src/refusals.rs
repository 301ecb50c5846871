//! [`RecentRefusals`]: the last refusals this process answered (rate limited, store
//! unavailable, accounts disabled, …), kept in a small ring for the status page and the
//! admin `/v1/quotas`. Survives reloads. Never holds a key: names only.

use std::collections::VecDeque;

use parking_lot::Mutex;
use serde::Serialize;

/// How many refusals are kept.
const KEPT: usize = 20;
/// A model name as the client wrote it is cut to this many characters.
const NAME_CHARS: usize = 64;

/// One refusal.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Refusal {
    /// When, in Unix milliseconds.
    pub(crate) at_ms: u64,
    pub(crate) model: String,
    pub(crate) tenant: String,
    /// The outcome label of `sluice_requests_total`.
    pub(crate) outcome: &'static str,
    pub(crate) status: u16,
    /// The account and limit that bound a rate-limited request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) limit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) retry_after_ms: Option<u64>,
}

/// The ring of the last [`KEPT`] refusals.
#[derive(Default)]
pub(crate) struct RecentRefusals {
    ring: Mutex<VecDeque<Refusal>>,
}

impl RecentRefusals {
    /// Keeps `r`, dropping the oldest when full. Client mistakes (`unauthorized`,
    /// `bad_request`, `model_not_found`) are not kept: they say nothing about quotas
    /// and anyone can produce them.
    pub(crate) fn record(&self, mut r: Refusal) {
        if matches!(
            r.outcome,
            "unauthorized" | "bad_request" | "model_not_found"
        ) {
            return;
        }
        if r.model.chars().count() > NAME_CHARS {
            r.model = r.model.chars().take(NAME_CHARS).collect();
        }
        let mut ring = self.ring.lock();
        if ring.len() == KEPT {
            ring.pop_front();
        }
        ring.push_back(r);
    }

    /// The kept refusals, newest first.
    pub(crate) fn newest_first(&self) -> Vec<Refusal> {
        self.ring.lock().iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(outcome: &'static str, at_ms: u64) -> Refusal {
        Refusal {
            at_ms,
            model: "m".repeat(100),
            tenant: "t".into(),
            outcome,
            status: 429,
            account: None,
            limit: None,
            retry_after_ms: None,
        }
    }

    #[test]
    fn keeps_the_last_twenty_quota_refusals_newest_first() {
        let r = RecentRefusals::default();
        for i in 0..25 {
            r.record(refusal("rate_limited", i));
        }
        r.record(refusal("unauthorized", 99));
        let kept = r.newest_first();
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].at_ms, 24);
        assert_eq!(kept[0].model.len(), NAME_CHARS);
    }
}

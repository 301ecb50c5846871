//! The referee's report: exact counters per account × model and the schema of `GET /stats`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::clock::NANOS_PER_MS;
use crate::config::AccountState;
use crate::meter::{LimitView, Unit};

/// Requests refused, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// A request limit was full.
    pub requests: u64,
    /// A token limit was full.
    pub tokens: u64,
    /// The request needed more tokens than a whole limit.
    pub too_large: u64,
    /// The ramp-up rule refused.
    pub burst: u64,
    /// The account's billing is exhausted.
    pub billing: u64,
    /// The account's free quota is exhausted.
    pub free_quota: u64,
    /// An injected `server_error` or `capacity` fault answered instead.
    pub fault: u64,
}

/// Faults injected, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    /// 500 answers.
    pub server_error: u64,
    /// Capacity answers (503 / 529).
    pub capacity: u64,
    /// Streams cut halfway.
    pub stream_cut: u64,
    /// Errors sent inside a 200 stream.
    pub stream_error: u64,
    /// Usage chunks left out.
    pub missing_usage: u64,
    /// Slowed answers.
    pub slow: u64,
}

/// One limit in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitReport {
    /// `requests` or `tokens`.
    pub unit: Unit,
    /// The limit.
    pub limit: u64,
    /// The enforced window (after `window_scale`), in milliseconds.
    pub window_ms: u64,
    /// The highest usage of any trailing window since the last reset (checked at every charge).
    pub peak: u64,
    /// Usage of the trailing window at the time of the report.
    pub used: u64,
}

impl From<LimitView> for LimitReport {
    fn from(v: LimitView) -> Self {
        Self {
            unit: v.unit,
            limit: v.limit,
            window_ms: v.window / NANOS_PER_MS,
            peak: v.peak,
            used: v.used,
        }
    }
}

/// The counters of one account × model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests admitted (not counting background ones).
    pub accepted: u64,
    /// Requests refused, by reason.
    pub refused: Refused,
    /// Prompt tokens of admitted requests, counted when they settle.
    pub prompt_tokens: u64,
    /// Completion tokens actually produced (sent), counted when they settle.
    pub completion_tokens: u64,
    /// Faults injected.
    pub faults: Faults,
    /// Background requests admitted.
    pub background_requests: u64,
    /// Background requests refused.
    pub background_refused: u64,
    /// Tokens spent by admitted background requests.
    pub background_tokens: u64,
}

/// The report of one account × model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelReport {
    /// Requests admitted.
    pub accepted: u64,
    /// Requests refused, by reason.
    pub refused: Refused,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: u64,
    /// Completion tokens produced.
    pub completion_tokens: u64,
    /// Faults injected.
    pub faults: Faults,
    /// Background requests admitted.
    pub background_requests: u64,
    /// Background requests refused.
    pub background_refused: u64,
    /// Tokens spent by admitted background requests.
    pub background_tokens: u64,
    /// Every limit, in configured order.
    pub limits: Vec<LimitReport>,
}

impl ModelReport {
    /// A report from counters and limit views.
    pub fn new(c: &Counters, limits: Vec<LimitView>) -> Self {
        Self {
            accepted: c.accepted,
            refused: c.refused,
            prompt_tokens: c.prompt_tokens,
            completion_tokens: c.completion_tokens,
            faults: c.faults,
            background_requests: c.background_requests,
            background_refused: c.background_refused,
            background_tokens: c.background_tokens,
            limits: limits.into_iter().map(LimitReport::from).collect(),
        }
    }

    /// The sum of every refusal reason.
    pub fn refused_total(&self) -> u64 {
        let r = &self.refused;
        r.requests + r.tokens + r.too_large + r.burst + r.billing + r.free_quota + r.fault
    }
}

/// The report of one account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountReport {
    /// Its standing.
    pub state: AccountState,
    /// Per model, by name.
    pub models: BTreeMap<String, ModelReport>,
}

/// Requests answered before they reached an account × model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// 400: malformed JSON, wrong types, bad values.
    pub bad_request: u64,
    /// 401: missing or unknown key.
    pub unauthorized: u64,
    /// 404: unknown model.
    pub model_not_found: u64,
    /// 400s of the `echo_bad_request` fault: the request's own text sent back inside
    /// "Unrecognized request argument supplied: …", as OpenAI and vLLM do.
    #[serde(default)]
    pub echoed: u64,
}

/// The whole report, `GET /stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    /// Per account, by name (configured name, or `key-` + 8 hex digits of the key's SHA-256).
    pub accounts: BTreeMap<String, AccountReport>,
    /// Requests rejected before metering.
    pub rejected: Rejected,
    /// Every request that presented an API key, on any path and whatever the answer
    /// (what a proxy in front of the simulator sent with an account's key).
    #[serde(default)]
    pub keyed_requests: u64,
    /// Of those, the ones at a path outside `/v1/` (`/stats`, `/admin/…`, `/health`, no
    /// route): a proxy should never send one; tests assert it stays 0.
    #[serde(default)]
    pub outside_api: u64,
}

impl StatsReport {
    /// The report of `account` × `model`, if present.
    pub fn get(&self, account: &str, model: &str) -> Option<&ModelReport> {
        self.accounts.get(account)?.models.get(model)
    }
}

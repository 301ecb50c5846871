//! What the recalibrator remembers between observations (in this process only): when
//! each account × limit was last refused and at what fill (the learner), when pacing last
//! changed, the outside rate learned from the headers, and when daily-quota states end.
//! The learned values themselves live in the shared store.

use std::collections::{HashMap, VecDeque};

use sluice_limiter::{LimitId, QuotaKey};

use crate::learn::Learner;

/// The outside rate of one account × limit (rule 4): an exponentially weighted estimate
/// of the units spent outside Sluice per window, and what of it the effective limit
/// currently keeps free.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Outside {
    /// Units per window spent outside Sluice (EWMA of the header samples).
    pub(crate) estimate: f64,
    /// The exponentially weighted variance of those samples above the estimate.
    pub(crate) variance: f64,
    /// When the last sample was taken (ms since the epoch; 0: never).
    pub(crate) last_ms: u64,
    /// How much the effective limit was last lowered by (0: not lowered).
    pub(crate) reserved: u64,
    /// When `reserved` last changed (ms since the epoch; 0: never).
    pub(crate) changed_ms: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Memory {
    /// The learner of rule 5 per account × limit.
    pub(crate) learners: HashMap<(QuotaKey, LimitId), Learner>,
    /// When pacing last changed, per account.
    pub(crate) pacing_ms: HashMap<QuotaKey, u64>,
    /// Unseen usage recorded per account × limit: (ms, amount), the last window's worth.
    pub(crate) unseen: HashMap<(QuotaKey, LimitId), VecDeque<(u64, u64)>>,
    /// The outside rate per account × limit.
    pub(crate) outside: HashMap<(QuotaKey, LimitId), Outside>,
    /// Daily-quota states: when to enable the account again.
    pub(crate) reenable_at_ms: HashMap<QuotaKey, u64>,
}

impl Memory {
    pub(crate) fn learner(&mut self, key: &QuotaKey, limit: &LimitId) -> &mut Learner {
        self.learners
            .entry((key.clone(), limit.clone()))
            .or_default()
    }
}

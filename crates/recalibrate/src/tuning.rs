//! [`Tuning`]: the recalibration constants, from `[sidecar]`.

use std::time::Duration;

/// How strongly the recalibrator reacts (see the crate docs for each rule).
#[derive(Clone, Debug, PartialEq)]
pub struct Tuning {
    /// A Retry-After at least this long is a quota state (disable), not a cooldown.
    pub quota_state_after: Duration,
    /// The cooldown of a throttling refusal that names no wait.
    pub default_cooldown: Duration,
    /// Multiplicative decrease factor (unused since the learner of rule 5).
    pub decrease: f64,
    /// The learner's first probe step, as a fraction of the configured limit.
    pub increase: f64,
    /// A learned limit never goes below this fraction of the configured one.
    pub floor: f64,
    /// A refusal is explained by our own window above `(1 + tolerance) × effective`.
    pub headroom_tolerance: f64,
    /// Unseen usage is recorded only beyond this fraction of the limit (and at least 1).
    pub unseen_tolerance: f64,
    /// Pacing slow-down per burst refusal.
    pub pacing_increase: f64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self::from(&sluice_config::Sidecar::default())
    }
}

impl From<&sluice_config::Sidecar> for Tuning {
    fn from(s: &sluice_config::Sidecar) -> Self {
        Self {
            quota_state_after: s.quota_state_after,
            default_cooldown: s.default_cooldown,
            decrease: s.aimd_decrease,
            increase: s.aimd_increase,
            floor: s.aimd_floor,
            headroom_tolerance: s.headroom_tolerance,
            unseen_tolerance: s.unseen_tolerance,
            pacing_increase: s.pacing_increase,
        }
    }
}

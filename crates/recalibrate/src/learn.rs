//! The learner (rule 5): a provider's real limit from its refusals alone.
//!
//! A provider that says nothing about its limits but a 429 still tells one thing at
//! every refusal: when it refused, it had accepted what our own trailing window held
//! of accepted work — an upper bound of its real limit, observed. [`Learner`] keeps
//! that evidence per account × limit; the recalibrator sets the effective limit to it
//! (a *set*, not a relative decrease, so that two sidecars applying different refusals
//! of one overload land on the same value), and probes back up additively while the
//! provider keeps accepting a full window.
//!
//! Everything here is pure bookkeeping on millisecond instants; the recalibrator reads
//! the store and writes the changes.

use std::collections::VecDeque;

/// A cut to less than this fraction of the effective limit is bounded to it.
pub(crate) const MAX_CUT: f64 = 0.5;
/// Two refusals are at a "similar fill" within this fraction of the estimate (and 1).
const SIMILAR: f64 = 0.05;
/// Windows of quiet (no refusal, no change by anyone) before the first probe after a
/// refusal; one more once the estimate is confirmed (a probe above it was refused).
pub(crate) const HOLD_AFTER_REFUSAL: u64 = 2;
/// Windows of quiet before the next probe after a probe that the provider accepted.
pub(crate) const HOLD_AFTER_PROBE: u64 = 1;
/// The probe's step doubles after each accepted probe, up to this many times the first.
const MAX_STEP_GROWTH: u64 = 16;
/// A probe is evidence only when our window holds at least this fraction of the limit.
pub(crate) const FULL: f64 = 0.9;

/// What the learner knows about one account × limit (in this process; the learned
/// value itself lives in the shared store).
#[derive(Clone, Debug, Default)]
pub(crate) struct Learner {
    /// The accepted fill of our window at the provider's last refusal: an upper bound
    /// of its real limit. `None`: never observed, or refuted by a success above it.
    pub(crate) estimate: Option<u64>,
    /// Refusals at a similar fill since the estimate was set (1: just that one).
    pub(crate) confirmations: u32,
    /// When the estimate was last set or confirmed (ms since the epoch).
    pub(crate) evidence_ms: u64,
    /// The refusals this process saw, still in a window (ms each): each counts one
    /// request in our windows that the provider did not accept.
    refusals: VecDeque<u64>,
    /// The effective limit last read from the store (another sidecar's change shows).
    seen_effective: Option<u64>,
    /// Since when nothing happened: no refusal, no change of the effective limit.
    quiet_since_ms: u64,
    /// Whether the last change was an accepted-so-far probe (rather than a cut).
    probing: bool,
    /// The next probe's step (0: not set yet).
    step: u64,
    /// The last cut that was bounded by [`MAX_CUT`] (ms).
    last_bounded_cut_ms: u64,
    /// Whether our window has reached the probed level yet (the probe's quiet window
    /// counts from then: before it, the provider has not been asked).
    reached: bool,
}

/// The evidence of one refusal for one limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    /// When (the gateway's instant of the answer, ms).
    pub(crate) at_ms: u64,
    /// What the provider had accepted of ours in its window then (our window's fill,
    /// less what it cannot have seen and the refusals).
    pub(crate) fill: u64,
    /// The effective limit in force.
    pub(crate) effective: u64,
    /// The floor (`aimd_floor × configured`, at least 1).
    pub(crate) floor: u64,
    /// The limit's window (ms).
    pub(crate) window_ms: u64,
}

/// What our window held at a success, for one limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Succeeded {
    /// When (the gateway's instant of the answer, ms).
    pub(crate) at_ms: u64,
    /// What the provider can have accepted of ours in its window (as in [`Refused`]).
    pub(crate) fill: u64,
    /// What our window holds, queued reservations included.
    pub(crate) used: u64,
    /// The effective limit in force.
    pub(crate) effective: u64,
    /// The configured limit.
    pub(crate) configured: u64,
    /// The limit's window (ms).
    pub(crate) window_ms: u64,
    /// How far ahead slots are booked (ms).
    pub(crate) booked_ms: u64,
}

impl Learner {
    /// Notes a refusal at `at_ms` (counted in every request window it falls in).
    pub(crate) fn note_refusal(&mut self, at_ms: u64, window_ms: u64) {
        while self
            .refusals
            .front()
            .is_some_and(|&t| t.saturating_add(window_ms) <= at_ms)
        {
            self.refusals.pop_front();
        }
        self.refusals.push_back(at_ms);
    }

    /// Refusals seen within `window_ms` before `now_ms`.
    pub(crate) fn refusals_within(&self, now_ms: u64, window_ms: u64) -> u64 {
        self.refusals
            .iter()
            .filter(|&&t| t.saturating_add(window_ms) > now_ms)
            .count() as u64
    }

    /// The store's effective limit as read now: a change by anyone (another sidecar)
    /// restarts the quiet period.
    pub(crate) fn observe_effective(&mut self, effective: u64, now_ms: u64) {
        if self.seen_effective != Some(effective) {
            if let Some(before) = self.seen_effective {
                self.probing = effective > before;
                self.reached = false;
            }
            self.seen_effective = Some(effective);
            self.quiet_since_ms = self.quiet_since_ms.max(now_ms);
        }
    }

    /// The learned value after refusal `r`: its fill (the observed upper bound), at
    /// least 1 below the limit in force (Sluice never admits past it, so the provider's
    /// limit is lower), never a cut below half at once (a second bounded cut only half
    /// a window after the first) nor below the floor. `None`: leave it.
    pub(crate) fn refusal(&mut self, r: Refused) -> Option<u64> {
        let similar = self
            .estimate
            .is_some_and(|e| r.fill.abs_diff(e) as f64 <= (e as f64 * SIMILAR).max(1.0));
        if similar {
            self.confirmations = self.confirmations.saturating_add(1);
        } else {
            self.estimate = Some(r.fill);
            self.confirmations = 1;
        }
        self.evidence_ms = self.evidence_ms.max(r.at_ms);
        self.quiet_since_ms = self.quiet_since_ms.max(r.at_ms);
        self.probing = false;
        self.step = 0;
        let half = (r.effective as f64 * MAX_CUT).ceil() as u64;
        let mut target = r.fill.min(r.effective.saturating_sub(1));
        if target < half {
            if self.last_bounded_cut_ms != 0
                && r.at_ms.saturating_sub(self.last_bounded_cut_ms) < r.window_ms / 2
            {
                return None;
            }
            self.last_bounded_cut_ms = r.at_ms;
            target = half;
        }
        let target = target.max(r.floor).max(1);
        (target < r.effective).then(|| {
            self.seen_effective = Some(target);
            target
        })
    }

    /// A success `s`: a fill above the estimate refutes it; after a quiet period with
    /// the window full, the next probe: the new effective limit, at most `configured`.
    /// `base_step` is the first step (at least 1).
    pub(crate) fn success(&mut self, s: Succeeded, base_step: u64) -> Option<u64> {
        let Succeeded {
            at_ms,
            fill,
            used,
            effective,
            configured,
            window_ms,
            booked_ms,
        } = s;
        if self
            .estimate
            .is_some_and(|e| fill as f64 > e as f64 + (e as f64 * SIMILAR).max(1.0))
        {
            // A success above the observed bound: the limit rose (or the bound was noise).
            self.estimate = None;
            self.confirmations = 0;
            self.evidence_ms = at_ms;
        }
        if effective >= configured {
            return None;
        }
        if self.probing && !self.reached {
            // Our window holds the new level: the provider is sent it once the slots
            // booked ahead come due, and the probe's window counts from then.
            if used < effective {
                return None;
            }
            self.reached = true;
            self.quiet_since_ms = at_ms.saturating_add(booked_ms);
        }
        let hold = if self.probing {
            HOLD_AFTER_PROBE
        } else if self.confirmations > 1 {
            HOLD_AFTER_REFUSAL + 1
        } else {
            HOLD_AFTER_REFUSAL
        } * window_ms;
        let quiet = at_ms.saturating_sub(self.quiet_since_ms) >= hold;
        let full = used as f64 >= effective as f64 * FULL;
        if !(quiet && full) {
            return None;
        }
        let base_step = base_step.max(1);
        let step = if self.step == 0 { base_step } else { self.step };
        let next = effective.saturating_add(step).min(configured);
        self.step = step
            .saturating_mul(2)
            .min(base_step.saturating_mul(MAX_STEP_GROWTH));
        self.probing = true;
        self.reached = false;
        self.quiet_since_ms = at_ms;
        self.seen_effective = Some(next);
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 2000;

    fn ok(at_ms: u64, fill: u64, used: u64, effective: u64, configured: u64) -> Succeeded {
        Succeeded {
            at_ms,
            fill,
            used,
            effective,
            configured,
            window_ms: W,
            booked_ms: 0,
        }
    }

    fn refused(at_ms: u64, fill: u64, effective: u64) -> Refused {
        Refused {
            at_ms,
            fill,
            effective,
            floor: 2,
            window_ms: W,
        }
    }

    #[test]
    fn a_refusal_sets_the_limit_to_what_the_provider_had_accepted() {
        let mut l = Learner::default();
        assert_eq!(l.refusal(refused(1000, 14, 20)), Some(14));
        assert_eq!(l.estimate, Some(14));
        // The same fill again confirms it; at the limit in force: 1 below.
        assert_eq!(l.refusal(refused(1500, 14, 14)), Some(13));
        assert_eq!(l.confirmations, 2);
    }

    #[test]
    fn one_refusal_never_cuts_below_half_and_a_second_bounded_cut_waits() {
        let mut l = Learner::default();
        assert_eq!(l.refusal(refused(1000, 2, 20)), Some(10));
        assert_eq!(
            l.refusal(refused(1200, 2, 10)),
            None,
            "within half a window"
        );
        assert_eq!(l.refusal(refused(2100, 2, 10)), Some(5));
        // Never below the floor.
        assert_eq!(l.refusal(refused(3200, 0, 3)), Some(2));
        assert_eq!(l.refusal(refused(4400, 0, 2)), None);
    }

    #[test]
    fn probes_wait_two_quiet_full_windows_then_grow() {
        let mut l = Learner::default();
        assert_eq!(l.refusal(refused(0, 10, 20)), Some(10));
        // Not before two windows, not with a window that is not full.
        assert_eq!(l.success(ok(3000, 10, 10, 10, 20), 1), None);
        assert_eq!(l.success(ok(4000, 5, 5, 10, 20), 1), None);
        assert_eq!(l.success(ok(4000, 10, 10, 10, 20), 1), Some(11));
        // The probe's window counts from when our window holds the new level (and its
        // booked slots are due).
        assert_eq!(l.success(ok(4500, 10, 10, 11, 20), 1), None, "not reached");
        assert_eq!(l.success(ok(5000, 11, 11, 11, 20), 1), None, "reached");
        assert_eq!(
            l.success(ok(6500, 11, 11, 11, 20), 1),
            None,
            "a window later"
        );
        assert_eq!(l.success(ok(7000, 11, 11, 11, 20), 1), Some(13));
        assert_eq!(l.success(ok(7000, 13, 13, 13, 20), 1), None);
        assert_eq!(l.success(ok(9000, 13, 13, 13, 20), 1), Some(17));
        assert_eq!(l.success(ok(9000, 17, 17, 17, 20), 1), None);
        assert_eq!(l.success(ok(11_000, 17, 17, 17, 20), 1), Some(20));
        assert_eq!(
            l.success(ok(13_000, 20, 20, 20, 20), 1),
            None,
            "never above"
        );
        assert_eq!(l.estimate, None, "refuted by the successes above it");
    }

    #[test]
    fn a_refusal_resets_the_probe() {
        let mut l = Learner::default();
        l.refusal(refused(0, 10, 20));
        assert_eq!(l.success(ok(4000, 10, 10, 10, 20), 1), Some(11));
        // Refused: the fill observed (our noise included; the probes correct it).
        assert_eq!(l.refusal(refused(4500, 9, 11)), Some(9));
        assert_eq!(l.confirmations, 2, "9 is similar to 10");
        // Confirmed: three windows of quiet, then step 1 again.
        assert_eq!(l.success(ok(8500, 9, 9, 9, 20), 1), None);
        assert_eq!(
            l.success(ok(10_500, 9, 9, 9, 20), 1),
            Some(10),
            "step 1 again"
        );
    }

    #[test]
    fn another_sidecars_change_restarts_the_quiet() {
        let mut l = Learner::default();
        l.refusal(refused(0, 10, 20));
        l.observe_effective(9, 3000);
        assert_eq!(l.success(ok(4000, 9, 9, 9, 20), 1), None);
        assert_eq!(l.success(ok(7000, 9, 9, 9, 20), 1), Some(10));
        // Another sidecar's probe: a window from when ours reaches it.
        l.observe_effective(12, 7500);
        assert_eq!(l.success(ok(8000, 12, 12, 12, 20), 1), None);
        assert_eq!(l.success(ok(9900, 12, 12, 12, 20), 1), None);
        assert_eq!(
            l.success(ok(10_000, 12, 12, 12, 20), 1),
            Some(14),
            "our step: 2"
        );
    }

    #[test]
    fn refusals_are_counted_within_a_window() {
        let mut l = Learner::default();
        l.note_refusal(100, W);
        l.note_refusal(1500, W);
        assert_eq!(l.refusals_within(1600, W), 2);
        assert_eq!(l.refusals_within(2200, W), 1);
        l.note_refusal(4000, W);
        assert_eq!(l.refusals_within(4000, W), 1);
    }
}

//! The ramp-up ("burst rate") rule: refuse a sudden surge even below the nominal limits.
//!
//! With window `W`, at instant `t` let `cur` be the number of requests admitted in `(t − W, t]`
//! and `prev` the number admitted in `(t − 2W, t − W]`. A request is admitted only if
//! `cur + 1 ≤ max(floor, factor × prev)`. A steady rate passes (`cur ≈ prev`), a start from
//! nothing may reach `floor` requests per window, and traffic may then grow by at most `factor`
//! per window. Refused requests are not recorded.

use std::collections::VecDeque;

use crate::clock::Nanos;

/// The parameters of the ramp-up rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurstRule {
    /// The window `W`, in nanoseconds (after `window_scale`).
    pub window: Nanos,
    /// The growth allowed from one window to the next.
    pub factor: f64,
    /// The requests always allowed in one window, at least 1.
    pub floor: u64,
}

/// The admission times of one account × model, kept for two windows.
#[derive(Debug, Clone)]
pub struct BurstLog {
    rule: BurstRule,
    times: VecDeque<Nanos>,
}

impl BurstLog {
    /// An empty log under `rule`.
    pub fn new(rule: BurstRule) -> Self {
        Self {
            rule,
            times: VecDeque::new(),
        }
    }

    /// The rule this log enforces.
    pub fn rule(&self) -> BurstRule {
        self.rule
    }

    fn prune(&mut self, now: Nanos) {
        let keep = self.rule.window.saturating_mul(2);
        while let Some(&front) = self.times.front() {
            if front.saturating_add(keep) > now {
                break;
            }
            self.times.pop_front();
        }
    }

    /// (`cur`, `prev`) at instant `at`, counting only the recorded times (all at or before `at`).
    fn counts_at(&self, at: Nanos) -> (u64, u64) {
        let w = self.rule.window;
        // Times t with t > at - W are in the current window; with at - 2W < t <= at - W, the previous one.
        let cur_start = self.times.partition_point(|&t| t.saturating_add(w) <= at);
        let prev_start = self
            .times
            .partition_point(|&t| t.saturating_add(w.saturating_mul(2)) <= at);
        let cur = (self.times.len() - cur_start) as u64;
        let prev = (cur_start - prev_start) as u64;
        (cur, prev)
    }

    fn admits(&self, at: Nanos) -> bool {
        let (cur, prev) = self.counts_at(at);
        let allowance = (self.rule.floor as f64).max(self.rule.factor * prev as f64);
        (cur + 1) as f64 <= allowance
    }

    /// `Ok` if a request at `now` passes the rule, else the exact wait until one would (if no other
    /// request is admitted meanwhile).
    pub fn check(&mut self, now: Nanos) -> Result<(), Nanos> {
        self.prune(now);
        if self.admits(now) {
            return Ok(());
        }
        // The counts only change when a time crosses t + W or t + 2W: try those instants in order.
        let w = self.rule.window;
        let mut candidates: Vec<Nanos> = self
            .times
            .iter()
            .flat_map(|&t| [t.saturating_add(w), t.saturating_add(w.saturating_mul(2))])
            .filter(|&c| c > now)
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        for at in candidates {
            if self.admits(at) {
                return Err(at - now);
            }
        }
        // Once everything has expired, `floor` (at least 1) is allowed.
        Err(self.times.back().map_or(0, |&t| {
            t.saturating_add(w.saturating_mul(2)).saturating_sub(now)
        }))
    }

    /// Records an admission at `now`.
    pub fn record(&mut self, now: Nanos) {
        let at = self.times.back().map_or(now, |&last| last.max(now));
        self.times.push_back(at);
    }

    /// Forgets every recorded admission.
    pub fn clear(&mut self) {
        self.times.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::NANOS_PER_SEC as S;

    fn log(factor: f64, floor: u64) -> BurstLog {
        BurstLog::new(BurstRule {
            window: S,
            factor,
            floor,
        })
    }

    fn admit(log: &mut BurstLog, now: Nanos) -> Result<(), Nanos> {
        log.check(now)?;
        log.record(now);
        Ok(())
    }

    #[test]
    fn floor_allows_a_cold_start() {
        let mut b = log(2.0, 3);
        for _ in 0..3 {
            admit(&mut b, 0).unwrap();
        }
        // The 4th in the same window waits until the first 3 are "previous": at exactly 1 s,
        // cur = 0 and allowance = max(3, 2 × 3) = 6.
        assert_eq!(admit(&mut b, 10), Err(S - 10));
    }

    #[test]
    fn growth_is_limited_by_factor() {
        let mut b = log(2.0, 3);
        for _ in 0..3 {
            admit(&mut b, 0).unwrap();
        }
        // Window 2: prev = 3, allowance 6.
        for _ in 0..6 {
            admit(&mut b, S).unwrap();
        }
        assert!(admit(&mut b, S + 1).is_err());
        // Window 3: prev = 6, allowance 12.
        for _ in 0..12 {
            admit(&mut b, 2 * S).unwrap();
        }
        assert!(admit(&mut b, 2 * S).is_err());
    }

    #[test]
    fn steady_rate_passes() {
        let mut b = log(1.5, 2);
        // 10 per second, evenly spaced, for 5 s: after the ramp it never refuses.
        let mut refused = 0;
        for i in 0..50u64 {
            if admit(&mut b, i * S / 10).is_err() {
                refused += 1;
            }
        }
        let mut later_refused = 0;
        for i in 50..100u64 {
            if admit(&mut b, i * S / 10).is_err() {
                later_refused += 1;
            }
        }
        assert!(refused > 0, "the cold start is limited by the floor");
        assert_eq!(later_refused, 0);
    }

    #[test]
    fn a_surge_after_quiet_is_refused() {
        let mut b = log(2.0, 2);
        admit(&mut b, 0).unwrap();
        admit(&mut b, 0).unwrap();
        // Long quiet: everything expired, then a burst of 3 at once.
        admit(&mut b, 10 * S).unwrap();
        admit(&mut b, 10 * S).unwrap();
        let wait = admit(&mut b, 10 * S).unwrap_err();
        assert_eq!(wait, S);
    }

    #[test]
    fn wait_is_exact() {
        let mut b = log(1.0, 2);
        admit(&mut b, 0).unwrap();
        admit(&mut b, S / 2).unwrap();
        // At 0.6 s: cur = 2, prev = 0, allowance 2. At 1 s: cur = 1 (the 0.5 s one), prev = 1,
        // allowance max(2, 1) = 2: admitted.
        let wait = admit(&mut b, 6 * S / 10).unwrap_err();
        assert_eq!(wait, 4 * S / 10);
        assert!(admit(&mut b, S - 1).is_err());
        assert!(admit(&mut b, S).is_ok());
    }
}

//! A circuit breaker: after `threshold` consecutive failures the store is not called
//! for `open_for`; then one probe call decides whether it closes again.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is out; if it never reports (its caller was cancelled), another is let
    /// through after `lost_after`.
    HalfOpen {
        lost_after: Instant,
    },
}

/// How long a probe may stay out before it counts as lost (at least this, or `open_for`).
const PROBE_LOST_AFTER: Duration = Duration::from_secs(1);

/// What the breaker says about a call about to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permit {
    /// Call the store.
    Call,
    /// Call the store: this call is the probe that decides whether the breaker closes.
    Probe,
    /// Do not call the store.
    Reject,
}

/// A consecutive-failure circuit breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    open_for: Duration,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            open_for,
        }
    }

    pub(crate) fn permit(&self) -> Permit {
        let mut s = self.state.lock();
        match *s {
            State::Closed { .. } => Permit::Call,
            State::Open { until: t } | State::HalfOpen { lost_after: t } if Instant::now() >= t => {
                *s = State::HalfOpen {
                    lost_after: Instant::now() + self.open_for.max(PROBE_LOST_AFTER),
                };
                Permit::Probe
            }
            State::Open { .. } | State::HalfOpen { .. } => Permit::Reject,
        }
    }

    /// Records a success; returns true when it closed the breaker.
    pub(crate) fn success(&self) -> bool {
        let mut s = self.state.lock();
        let was_closed = matches!(*s, State::Closed { .. });
        *s = State::Closed { failures: 0 };
        !was_closed
    }

    /// Records a failure; returns true when it opened the breaker.
    pub(crate) fn failure(&self) -> bool {
        let mut s = self.state.lock();
        let until = Instant::now() + self.open_for;
        match *s {
            State::Closed { failures } if failures + 1 >= self.threshold => {
                *s = State::Open { until };
                true
            }
            State::Closed { failures } => {
                *s = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::HalfOpen { .. } | State::Open { .. } => {
                *s = State::Open { until };
                false
            }
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        !matches!(*self.state.lock(), State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_after_the_pause() {
        let b = Breaker::new(2, Duration::ZERO);
        assert_eq!(b.permit(), Permit::Call);
        assert!(!b.failure());
        assert!(b.failure());
        // open_for is zero: the next permit is the probe, and only one probe at a time.
        assert_eq!(b.permit(), Permit::Probe);
        assert_eq!(b.permit(), Permit::Reject);
        assert!(!b.failure());
        assert_eq!(b.permit(), Permit::Probe);
        assert!(b.success());
        assert_eq!(b.permit(), Permit::Call);
        assert!(!b.is_open());
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced() {
        let b = Breaker::new(1, Duration::ZERO);
        b.failure();
        assert_eq!(b.permit(), Permit::Probe);
        // Its caller was cancelled: neither success nor failure comes.
        assert_eq!(b.permit(), Permit::Reject);
        *b.state.lock() = State::HalfOpen {
            lost_after: Instant::now() - Duration::from_millis(1),
        };
        assert_eq!(b.permit(), Permit::Probe);
        assert!(b.success());
        assert_eq!(b.permit(), Permit::Call);
    }

    #[test]
    fn stays_open_during_the_pause() {
        let b = Breaker::new(1, Duration::from_secs(3600));
        b.failure();
        assert_eq!(b.permit(), Permit::Reject);
        assert!(b.is_open());
    }
}

//! Fault injection: which rule applies to a request, and the seeded dice that decide each fault.

use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::FaultRule;

/// What goes wrong inside a stream (at most one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamFault {
    /// Nothing.
    #[default]
    None,
    /// The connection is closed halfway, with no usage and no `[DONE]`.
    Cut,
    /// An error event is sent halfway inside the 200 stream, then the stream ends.
    Error,
    /// The usage chunk is left out (the rest is normal).
    MissingUsage,
}

/// The seeded generator shared by fault dice and completion-token draws.
#[derive(Debug)]
pub struct Dice {
    rng: Mutex<StdRng>,
}

impl Dice {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }

    /// True with probability `rate`; rates of 0 and 1 are decided without drawing.
    pub fn hit(&self, rate: f64) -> bool {
        if rate <= 0.0 {
            false
        } else if rate >= 1.0 {
            true
        } else {
            self.rng.lock().random::<f64>() < rate
        }
    }

    /// A uniform draw in `min..=max`.
    pub fn between(&self, min: u64, max: u64) -> u64 {
        if min >= max {
            min
        } else {
            self.rng.lock().random_range(min..=max)
        }
    }
}

/// The first rule matching `model` and the account (by `name` or `key`).
pub fn rule_for<'a>(
    rules: &'a [FaultRule],
    model: &str,
    name: &str,
    key: &str,
) -> Option<&'a FaultRule> {
    rules.iter().find(|r| {
        r.model.as_deref().is_none_or(|m| m == model)
            && r.account.as_deref().is_none_or(|a| a == name || a == key)
    })
}

/// The faults decided after admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LateFaults {
    /// Extra delay before the first byte.
    pub slow: Option<Duration>,
    /// What goes wrong in the stream.
    pub stream: StreamFault,
}

/// Rolls the faults that happen after admission: `slow`, then for streams `stream_cut`,
/// `stream_error`, `missing_usage` in that order (the first hit wins).
pub fn roll_late(rule: &FaultRule, dice: &Dice, streaming: bool) -> LateFaults {
    let slow = dice
        .hit(rule.slow)
        .then(|| Duration::from_millis(rule.slow_ms));
    let stream = if !streaming {
        StreamFault::None
    } else if dice.hit(rule.stream_cut) {
        StreamFault::Cut
    } else if dice.hit(rule.stream_error) {
        StreamFault::Error
    } else if dice.hit(rule.missing_usage) {
        StreamFault::MissingUsage
    } else {
        StreamFault::None
    };
    LateFaults { slow, stream }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certain_rates_do_not_draw() {
        let dice = Dice::new(1);
        assert!(dice.hit(1.0));
        assert!(!dice.hit(0.0));
    }

    #[test]
    fn seeded_draws_repeat() {
        let a = Dice::new(42);
        let b = Dice::new(42);
        let xs: Vec<bool> = (0..100).map(|_| a.hit(0.3)).collect();
        let ys: Vec<bool> = (0..100).map(|_| b.hit(0.3)).collect();
        assert_eq!(xs, ys);
        let hits = xs.iter().filter(|x| **x).count();
        assert!((10..=50).contains(&hits));
        assert!((0..50).all(|_| (5..=9).contains(&a.between(5, 9))));
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = vec![
            FaultRule {
                model: Some("m".into()),
                account: Some("team".into()),
                server_error: 1.0,
                ..FaultRule::default()
            },
            FaultRule {
                model: Some("m".into()),
                capacity: 1.0,
                ..FaultRule::default()
            },
        ];
        assert_eq!(
            rule_for(&rules, "m", "team", "k").map(|r| r.server_error),
            Some(1.0)
        );
        assert_eq!(
            rule_for(&rules, "m", "x", "team").map(|r| r.server_error),
            Some(1.0)
        );
        assert_eq!(
            rule_for(&rules, "m", "other", "k").map(|r| r.capacity),
            Some(1.0)
        );
        assert!(rule_for(&rules, "n", "team", "k").is_none());
    }

    #[test]
    fn stream_faults_only_for_streams() {
        let rule = FaultRule {
            stream_cut: 1.0,
            slow: 1.0,
            slow_ms: 5,
            ..FaultRule::default()
        };
        let dice = Dice::new(0);
        assert_eq!(
            roll_late(&rule, &dice, false),
            LateFaults {
                slow: Some(Duration::from_millis(5)),
                stream: StreamFault::None
            }
        );
        assert_eq!(roll_late(&rule, &dice, true).stream, StreamFault::Cut);
    }
}

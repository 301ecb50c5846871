//! [`Corroboration`]: the rule that keeps one refusal from taking every account of an
//! upstream out of rotation (issue #12, "upstream text is evidence, not command").
//!
//! The rule, applied by the gateway in-band and by the [`Recalibrator`](crate::Recalibrator)
//! to observations, the same in both:
//! - An account-level refusal (billing exhausted, free quota exhausted, invalid key, as
//!   [`sluice_provider::classify`] recognises them from documented status/code pairs
//!   only) disables its account at once **while another account of the model is still
//!   in rotation**: a retry goes there, and the probe loop (or an operator) puts a
//!   wrongly disabled account back.
//! - The **last** live account is only *suspected*: it gets a short cooldown, the
//!   request is not retried on it, and it goes out of rotation only when a second
//!   account-level refusal from a *different* upstream answer (another request, another
//!   observation) arrives within [`CORROBORATION_SPAN`]. A single answer, however worded,
//!   can never leave an upstream with no account.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_limiter::{Quota, QuotaKey, Store};

/// How long a suspicion waits for a second, corroborating refusal.
pub const CORROBORATION_SPAN: Duration = Duration::from_secs(120);

/// What to do with an account-level refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Take the account out of rotation.
    Disable,
    /// Keep it in rotation, cooled down briefly: the first signal against the last live
    /// account, waiting for a second one.
    Suspect,
}

#[derive(Clone, Copy, Debug)]
struct Suspicion {
    /// When the first signal came (ms since the epoch).
    at_ms: u64,
    /// Which answer it was (a request number, or an observation's `at_ms`).
    witness: u64,
}

/// Suspicions of last live accounts, per quota key (this process only; a second
/// refusal seen by this process corroborates the first).
#[derive(Debug, Default)]
pub struct Corroboration {
    suspects: Mutex<HashMap<QuotaKey, Suspicion>>,
}

impl Corroboration {
    /// Judges an account-level refusal of `key`: `last_live` says whether every other
    /// account of its model is already out of rotation; `witness` identifies the
    /// upstream answer (the same answer judged twice, in-band and as an observation,
    /// must give the same witness or none of its judgements corroborates another).
    pub fn judge(&self, key: &QuotaKey, last_live: bool, witness: u64, now_ms: u64) -> Verdict {
        let mut suspects = self.suspects.lock();
        suspects
            .retain(|_, s| now_ms.saturating_sub(s.at_ms) <= CORROBORATION_SPAN.as_millis() as u64);
        if !last_live {
            suspects.remove(key);
            return Verdict::Disable;
        }
        match suspects.get(key) {
            Some(s) if s.witness != witness => {
                suspects.remove(key);
                Verdict::Disable
            }
            Some(_) => Verdict::Suspect,
            None => {
                suspects.insert(
                    key.clone(),
                    Suspicion {
                        at_ms: now_ms,
                        witness,
                    },
                );
                Verdict::Suspect
            }
        }
    }

    /// Forgets the suspicion of `key` (it served a request since).
    pub fn clear(&self, key: &QuotaKey) {
        self.suspects.lock().remove(key);
    }
}

/// True when every account of `keys` other than `key` is out of rotation (so `key` is
/// the last live one). A store error counts as "last live": the safe side.
pub async fn is_last_live<S: Store>(
    store: &S,
    keys: &[QuotaKey],
    quota: &Quota,
    key: &QuotaKey,
) -> bool {
    for other in keys.iter().filter(|k| *k != key) {
        match store.status(other, quota).await {
            Ok(s) if s.disabled.is_none() => return false,
            Ok(_) => {}
            Err(_) => return true,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> QuotaKey {
        QuotaKey::new("up/m", "key-0").unwrap()
    }

    #[test]
    fn one_answer_never_disables_the_last_account_a_second_one_does() {
        let c = Corroboration::default();
        let k = key();
        assert_eq!(c.judge(&k, false, 1, 1_000), Verdict::Disable);
        assert_eq!(c.judge(&k, true, 1, 1_000), Verdict::Suspect);
        assert_eq!(
            c.judge(&k, true, 1, 1_500),
            Verdict::Suspect,
            "the same answer again"
        );
        assert_eq!(c.judge(&k, true, 2, 2_000), Verdict::Disable);
        // Too late to corroborate: a new suspicion.
        assert_eq!(c.judge(&k, true, 3, 10_000), Verdict::Suspect);
        let late = 10_000 + CORROBORATION_SPAN.as_millis() as u64 + 1;
        assert_eq!(c.judge(&k, true, 4, late), Verdict::Suspect);
        c.clear(&k);
        assert_eq!(c.judge(&k, true, 5, late + 1), Verdict::Suspect);
    }
}

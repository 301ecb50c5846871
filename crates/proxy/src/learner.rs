//! The per-model correction of prompt estimates, learned from the prompt counts the
//! provider reports, leaning high: a reservation is never knowingly below the
//! provider's count.
//!
//! ```ignore
//! let learner = Learner::new();
//! learner.observe(100, 120); // we estimated 100, the provider counted 120
//! assert!(learner.correct(100) >= 120);
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

const RING: usize = 64;
/// Samples needed before the correction may go below 1.
const MIN_SAMPLES_TO_LOWER: usize = 16;
/// The margin on top of the highest recent ratio.
const MARGIN: f64 = 1.02;

/// The per-model correction of prompt estimates: the highest ratio of the provider's
/// prompt count to our estimate over the last 64 answers, times 1.02. It stays at 1 or
/// above until 16 answers have been seen, and between 0.25 and 8.
pub(crate) struct Learner {
    factor_bits: AtomicU64,
    ring: Mutex<(Vec<f64>, usize)>,
}

impl Learner {
    pub(crate) fn new() -> Self {
        Self {
            factor_bits: AtomicU64::new(1f64.to_bits()),
            ring: Mutex::new((Vec::with_capacity(RING), 0)),
        }
    }

    /// The current factor.
    pub(crate) fn factor(&self) -> f64 {
        f64::from_bits(self.factor_bits.load(Ordering::Relaxed))
    }

    /// The corrected estimate of `raw` prompt tokens (rounded up).
    pub(crate) fn correct(&self, raw: u64) -> u64 {
        let f = self.factor();
        if f == 1.0 {
            raw
        } else {
            (raw as f64 * f).ceil() as u64
        }
    }

    /// Learns from one answer: our raw estimate and the provider's count.
    pub(crate) fn observe(&self, raw_estimate: u64, actual: u64) {
        if raw_estimate == 0 || actual == 0 {
            return;
        }
        let ratio = actual as f64 / raw_estimate as f64;
        let mut ring = self.ring.lock();
        let (samples, next) = &mut *ring;
        if samples.len() < RING {
            samples.push(ratio);
        } else {
            samples[*next] = ratio;
        }
        *next = (*next + 1) % RING;
        let max = samples.iter().copied().fold(0f64, f64::max);
        let mut factor = (max * MARGIN).clamp(0.25, 8.0);
        if samples.len() < MIN_SAMPLES_TO_LOWER {
            factor = factor.max(1.0);
        }
        // Exact agreement needs no margin.
        if samples.iter().all(|r| (*r - 1.0).abs() < 1e-9) {
            factor = 1.0;
        }
        self.factor_bits.store(factor.to_bits(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_correction_leans_high() {
        let l = Learner::new();
        l.observe(100, 80);
        assert_eq!(l.factor(), 1.0, "not lowered on little evidence");
        l.observe(100, 130);
        assert!((l.factor() - 1.3 * MARGIN).abs() < 1e-9);
        assert_eq!(l.correct(100), 133);
        for _ in 0..RING {
            l.observe(100, 50);
        }
        assert!(
            (l.factor() - 0.5 * MARGIN).abs() < 1e-9,
            "old highs age out"
        );
        let exact = Learner::new();
        for _ in 0..20 {
            exact.observe(10, 10);
        }
        assert_eq!(exact.correct(10), 10);
    }
}

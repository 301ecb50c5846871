//! The [`Store`] trait: decisions, not raw state, so every backend can be atomic.

use std::future::Future;
use std::time::Duration;

use crate::decision::{Decision, QuotaStatus, ReleaseOutcome, Reservation};
use crate::error::LimitError;
use crate::fair::Share;
use crate::quota::{Cost, LimitId, Quota, QuotaKey};

/// A change to an account's learned state, made by the sidecar or an operator.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateChange {
    /// Stop granting slots on the account for this long (from the store's now). A
    /// longer cooldown already in force is kept. When it ends, requests resume one
    /// pacing interval apart rather than all at once.
    Cooldown(Duration),
    /// End the cooldown now.
    ClearCooldown,
    /// Set (`Some`) or forget (`None`) a learned limit below the configured one. It is
    /// never above the configured limit, whatever is written.
    EffectiveLimit {
        /// The limit it replaces.
        limit: LimitId,
        /// The learned amount per window (at least 1).
        value: Option<u64>,
    },
    /// Slow pacing down by a factor, in thousandths (1000 to 64000; 1000 = as configured).
    PacingFactor(u32),
    /// Take the account out of rotation, with the reason shown to operators.
    Disable(String),
    /// Put the account back into rotation.
    Enable,
}

/// A limiter backend. Every method is one atomic decision on the store.
///
/// Implemented by [`InProcessStore`](crate::InProcessStore),
/// [`RedisStore`](crate::RedisStore) and the [`Limiter`](crate::Limiter) facade that
/// adds a failure policy; all pass the same conformance suite.
pub trait Store: Send + Sync {
    /// Reserves the earliest slot for `cost` on the best of `candidates` (accounts that
    /// serve the same model, all in one key group) within `max_wait`.
    ///
    /// The chosen candidate is the one with the earliest slot, then the most headroom,
    /// then the first listed, among those examined: candidates are examined in the
    /// order given, and the scan stops at a slot now with at least half of every charged
    /// limit left after the charge, or at the best slot now of the first eight. So an
    /// account far from full costs one account's work however many are listed; rotate
    /// the order to spread the load. The decision checks every limit before it writes any: a
    /// refusal leaves no trace. A slot is never earlier than one already given on the
    /// same account (first come, first served, across every replica), and admitting it
    /// never takes any trailing window over its limit.
    ///
    /// A cost of [`Cost::ZERO`] is a read-only check. A cost that cannot fit a whole
    /// window is [`LimitError::InsufficientCapacity`], at once.
    fn acquire(
        &self,
        candidates: &[QuotaKey],
        quota: &Quota,
        cost: Cost,
        max_wait: Duration,
    ) -> impl Future<Output = Result<Decision, LimitError>> + Send {
        self.acquire_for(candidates, quota, cost, max_wait, None)
    }

    /// [`acquire`](Self::acquire) on behalf of a tenant: when the slot found is in the
    /// future (the quota is queueing) and `share` is given, the quota's fair ledger
    /// decides in the same atomic step whether this tenant may take it now (see
    /// [`Share`]); if not, the refusal is [`RefusalReason::FairShare`](crate::RefusalReason::FairShare)
    /// with the wait until its turn, and nothing is charged. A slot free now is never
    /// refused for fairness.
    fn acquire_for(
        &self,
        candidates: &[QuotaKey],
        quota: &Quota,
        cost: Cost,
        max_wait: Duration,
        share: Option<&Share>,
    ) -> impl Future<Output = Result<Decision, LimitError>> + Send;

    /// Replaces a reservation's estimated cost with the `actual` one. Idempotent per
    /// reservation: calling it again replaces the previous actual. If the reservation's
    /// bucket has left the window, a positive difference lands in the current bucket
    /// and a refund is dropped. A reconcile later than
    /// [`Quota::reconcile_window`] after the slot is ignored (its idempotency mark may
    /// be gone). Amounts above [`MAX_CHARGE`](crate::MAX_CHARGE) are clamped.
    fn reconcile(
        &self,
        quota: &Quota,
        reservation: &Reservation,
        actual: Cost,
    ) -> impl Future<Output = Result<(), LimitError>> + Send;

    /// Gives back a reservation that will not be used (its client went away before it
    /// was sent). While its slot is still ahead it becomes a released slot that a later
    /// acquire on the account may take, inheriting its charge; the charge itself stays
    /// in the windows (later slots were fitted with it there), so no window ever holds
    /// more than it did when the slot was booked. Idempotent: a second release, or a
    /// release of a reconciled reservation, changes nothing; a reconcile after a release
    /// changes nothing either.
    fn release(
        &self,
        quota: &Quota,
        reservation: &Reservation,
    ) -> impl Future<Output = Result<ReleaseOutcome, LimitError>> + Send;

    /// Adds usage spent outside Sluice (learned from a provider's headers) to the
    /// account's current buckets, without a check.
    fn record_usage(
        &self,
        key: &QuotaKey,
        quota: &Quota,
        cost: Cost,
    ) -> impl Future<Output = Result<(), LimitError>> + Send;

    /// Changes the account's learned state.
    fn update(
        &self,
        key: &QuotaKey,
        quota: &Quota,
        change: StateChange,
    ) -> impl Future<Output = Result<(), LimitError>> + Send;

    /// The account as it stands.
    fn status(
        &self,
        key: &QuotaKey,
        quota: &Quota,
    ) -> impl Future<Output = Result<QuotaStatus, LimitError>> + Send;
}

//! What a decision returns: a [`Reservation`] to use (possibly after waiting) or a
//! [`Refusal`] that says when to come back.

use std::fmt;
use std::time::Duration;

use crate::quota::{Cost, LimitId, Quota, QuotaKey, Unit, Window};
use crate::time::Timestamp;

/// The identifier of one reservation, used to make [`reconcile`](crate::Store::reconcile)
/// idempotent.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReservationId(u64);

impl ReservationId {
    /// A fresh random identifier.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// An identifier from a number (for tests and replays).
    pub const fn from_u64(id: u64) -> Self {
        Self(id)
    }

    /// The identifier as a number (the inverse of [`from_u64`](Self::from_u64)).
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Where a reservation was recorded.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// In the shared store (Redis, or the embedded store when it is the only one).
    Shared,
    /// In this process's fallback store at its share of the limits (`on_error = local`).
    Local,
    /// Nowhere: granted without metering because the store failed (`on_error = fail_open`).
    Unmetered,
}

/// What one limit has left after a decision; which limit it is, its unit and its
/// window are the quota's limit at the same index (see [`Budget`]).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Left {
    /// The limit in force: the configured limit or a lower learned one.
    pub effective: u64,
    /// What is left of it now, counting every reservation already made (queued ones too).
    pub remaining: u64,
}

/// One limit's budget as the decision left it, with the limit it describes
/// ([`Budget::describe`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remaining {
    /// The limit.
    pub limit: LimitId,
    /// What it counts.
    pub unit: Unit,
    /// Its window.
    pub window: Window,
    /// The limit in force: the configured limit or a lower learned one.
    pub effective: u64,
    /// What is left of it now, counting every reservation already made (queued ones too).
    pub remaining: u64,
}

/// What each limit of a quota has left after a decision, in the quota's limit order:
/// `budget[i]` is [`quota.limits()[i]`](crate::Quota::limits), which names the limit,
/// its unit and its window ([`describe`](Self::describe) pairs them). Held inline (at
/// most [`Quota::MAX_LIMITS`]), so a decision allocates nothing for it; it reads as a
/// slice.
///
/// ```
/// use sluice_limiter::{Budget, Left, Limit, Quota, Window};
/// let budget = Budget::from_iter([Left { effective: 600, remaining: 599 }]);
/// assert_eq!(budget.len(), 1);
/// assert_eq!(budget[0].remaining, 599);
/// assert!(Budget::default().is_empty());
/// let quota = Quota::new(vec![Limit::requests(600, Window::secs(60).unwrap()).unwrap()]).unwrap();
/// assert_eq!(budget.describe(&quota)[0].limit.as_str(), "r60000");
/// ```
#[derive(Copy, Clone, Default, PartialEq, Eq)]
pub struct Budget {
    len: u8,
    limits: [Left; Quota::MAX_LIMITS],
}

impl Budget {
    /// Appends the next limit's budget; one beyond [`Quota::MAX_LIMITS`] is dropped
    /// (no quota has that many limits).
    pub fn push(&mut self, left: Left) {
        if let Some(slot) = self.limits.get_mut(usize::from(self.len)) {
            *slot = left;
            self.len += 1;
        }
    }

    /// Each limit's budget with the limit of `quota` it describes (the quota the
    /// decision was made on); a budget of another quota pairs up to the shorter.
    pub fn describe(&self, quota: &Quota) -> Vec<Remaining> {
        quota
            .limits()
            .iter()
            .zip(self.iter())
            .map(|(l, left)| Remaining {
                limit: l.id().clone(),
                unit: l.unit(),
                window: l.window(),
                effective: left.effective,
                remaining: left.remaining,
            })
            .collect()
    }
}

impl FromIterator<Left> for Budget {
    fn from_iter<I: IntoIterator<Item = Left>>(iter: I) -> Self {
        let mut budget = Budget::default();
        for r in iter {
            budget.push(r);
        }
        budget
    }
}

impl std::ops::Deref for Budget {
    type Target = [Left];
    fn deref(&self) -> &[Left] {
        &self.limits[..usize::from(self.len)]
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A granted slot: the request may go at `slot`, that is after waiting `wait`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// Identifies the reservation for [`reconcile`](crate::Store::reconcile).
    pub id: ReservationId,
    /// The account it was made on.
    pub key: QuotaKey,
    /// Which of the candidates that is (index into the list given to `acquire`).
    pub candidate: usize,
    /// When the request may be sent, on the store's clock.
    pub slot: Timestamp,
    /// How long to wait before sending, measured from the decision: sleep this long
    /// on the local clock (a relative wait is immune to clock skew between hosts).
    pub wait: Duration,
    /// What was charged.
    pub cost: Cost,
    /// The budget left per limit.
    pub remaining: Budget,
    /// Where it was recorded.
    pub origin: Origin,
}

/// What [`release`](crate::Store::release) did with a reservation given back unused.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReleaseOutcome {
    /// Its slot was still ahead: a later request may take it (and inherits its charge).
    Reusable,
    /// Its slot has passed (or the store no longer holds it): marked released, nothing
    /// else to do; its charge ages out with its window.
    Passed,
    /// Already released or reconciled before: nothing changed.
    AlreadySettled,
    /// Not recorded where it can be reused (granted unmetered or by the local
    /// fallback): dropped, its charge ages out.
    Dropped,
}

/// Why a request could not have a slot within its maximum wait.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalReason {
    /// This limit's window is full until `retry_after`.
    Limit(LimitId),
    /// Earlier requests are queued for slots up to `retry_after` (first come, first served).
    Queue,
    /// Pacing spaces requests out and the next paced slot is after the maximum wait.
    Pacing,
    /// The account is cooling down after the provider refused it.
    Cooldown,
    /// The account is out of rotation, for the given reason, until an operator or a
    /// probe puts it back.
    Disabled(String),
    /// The store is unavailable and the policy is `fail_closed`.
    Unavailable,
    /// A slot is free in the queue, but the tenant has taken its fair share of it for
    /// this round (see [`Share`](crate::Share)): `retry_after` is when its turn comes
    /// at the latest.
    FairShare,
}

/// No slot within the maximum wait.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The earliest moment, from now, at which the same cost would fit if nothing else
    /// happened meanwhile; `None` when waiting cannot help (disabled account).
    pub retry_after: Option<Duration>,
    /// What stood in the way (for the candidate that would be ready first).
    pub reason: RefusalReason,
    /// The candidate the refusal describes.
    pub candidate: usize,
    /// The budget left per limit of that candidate.
    pub remaining: Budget,
}

/// The outcome of [`acquire`](crate::Store::acquire).
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Decision {
    /// A slot was reserved.
    Granted(Reservation),
    /// No slot within the maximum wait.
    Refused(Refusal),
}

impl Decision {
    /// The reservation, if granted.
    pub fn granted(self) -> Option<Reservation> {
        match self {
            Decision::Granted(r) => Some(r),
            Decision::Refused(_) => None,
        }
    }

    /// The refusal, if refused.
    pub fn refused(self) -> Option<Refusal> {
        match self {
            Decision::Granted(_) => None,
            Decision::Refused(r) => Some(r),
        }
    }
}

/// One limit of an account as it stands (for `/v1/quotas` and the sidecar).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitStatus {
    /// The limit.
    pub limit: LimitId,
    /// What it counts.
    pub unit: Unit,
    /// Its window.
    pub window: Window,
    /// The configured limit.
    pub configured: u64,
    /// The limit in force (a learned limit, never above the configured one).
    pub effective: u64,
    /// What the trailing window holds now, queued reservations included.
    pub used: u64,
}

/// An account's state as it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaStatus {
    /// Each limit.
    pub limits: Vec<LimitStatus>,
    /// How long the cooldown still lasts, if one is set.
    pub cooldown: Option<Duration>,
    /// Why the account is out of rotation, if it is.
    pub disabled: Option<String>,
    /// The pacing slow-down factor in thousandths (1000 = as configured).
    pub pacing_permille: u32,
    /// How far ahead slots are already booked (zero when nobody is queued).
    pub booked_ahead: Duration,
}

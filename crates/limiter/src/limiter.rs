//! [`Limiter`]: the store a service uses — embedded, or Redis with a failure policy.

use std::sync::Arc;
use std::time::Duration;

use crate::decision::{
    Budget, Decision, Origin, QuotaStatus, Refusal, RefusalReason, ReleaseOutcome, Reservation,
    ReservationId,
};
use crate::error::LimitError;
use crate::fair::Share;
use crate::handover::Handover;
use crate::memory::InProcessStore;
use crate::quota::{Cost, Quota, QuotaKey};
use crate::redis::{RedisOptions, RedisStore};
use crate::store::{StateChange, Store};
use crate::time::{Clock, SystemClock};

/// What to do with a decision when Redis cannot be reached (down, slow, restarting).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnError {
    /// Refuse: a [`RefusalReason::Unavailable`] with a retry after the breaker's pause.
    /// Never exceeds a provider limit; serves nothing while Redis is down.
    FailClosed,
    /// Grant without metering. Keeps serving; may exceed provider limits.
    FailOpen,
    /// Decide in this process at the limit divided by the expected number of replicas,
    /// so that the fleet as a whole stays within its limits. The default.
    ///
    /// The shares never add up to more than the limit, whatever the replica count:
    /// each replica gets `limit ÷ replicas` rounded down, and the remainder goes one
    /// each to the replicas with the lowest indexes
    /// ([`Limiter::with_replica_index`]); a replica without an index gets only the
    /// rounded down part. So `rps = 1` over 10 replicas grants at most 1 per second in
    /// total (on the replica with index 0, or nowhere), never 10 (see
    /// [`Quota::shares`](crate::Quota::shares)).
    ///
    /// The switch hands usage over both ways, so that it lets no burst through:
    /// - **into local mode**, an account's local window starts charged with the part
    ///   of this replica's share that Redis last said was spent (`share − remaining ÷
    ///   replicas`), at the latest slot Redis had given here, so the fleet grants at
    ///   most what Redis had left. An account Redis never described to this process
    ///   counts as full for windows up to a minute and as empty for longer ones;
    /// - **back to Redis**, as soon as Redis answers a `PING` again and before any
    ///   shared decision, what this replica granted locally that is still inside each
    ///   limit's window is recorded into Redis, once (not the seed, which Redis holds
    ///   already if it kept its data). If Redis lost the account (restarted without
    ///   persistence), the rest of the seed and a whole share per other replica are
    ///   recorded too: the others may still be deciding locally until their own probe.
    ///
    /// Both err on the safe side by at most one window: the seed and the usage handed
    /// back land in one bucket (the latest slot), so they leave the window later than
    /// the usage they stand for. `sluice_limiter_handovers_total{direction}` counts the
    /// switches (`to_local`, `to_redis`).
    #[default]
    Local,
}

impl OnError {
    /// The policy's configuration name (`fail_closed`, `fail_open`, `local`).
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::FailClosed => "fail_closed",
            OnError::FailOpen => "fail_open",
            OnError::Local => "local",
        }
    }
}

enum Backend {
    Embedded(InProcessStore),
    Redis {
        store: Box<RedisStore>,
        policy: OnError,
        handover: Box<Handover>,
        retry: Duration,
    },
}

/// The limiter a gateway or sidecar holds: the embedded store, or Redis with a failure
/// policy. It is itself a [`Store`].
///
/// ```
/// use sluice_limiter::{Limiter, OnError, RedisOptions};
/// // A single instance: limits are per process.
/// let embedded = Limiter::embedded();
/// assert!(!embedded.is_shared());
/// // A fleet: one budget in Redis, each replica at limit / 3 while Redis is down.
/// let shared = Limiter::redis("redis://127.0.0.1:6379/0", RedisOptions::default(), OnError::Local, 3).unwrap();
/// assert!(shared.is_shared());
/// ```
pub struct Limiter {
    backend: Backend,
}

impl Limiter {
    /// The embedded in-process limiter on the system clock.
    pub fn embedded() -> Self {
        Self::from_store(InProcessStore::new())
    }

    /// The embedded limiter on an existing store (e.g. one on a manual clock).
    pub fn from_store(store: InProcessStore) -> Self {
        Self {
            backend: Backend::Embedded(store),
        }
    }

    /// A limiter on Redis at `url` that follows `policy` when Redis fails, assuming
    /// `expected_replicas` replicas share the limits.
    pub fn redis(
        url: &str,
        options: RedisOptions,
        policy: OnError,
        expected_replicas: u32,
    ) -> Result<Self, crate::StoreError> {
        let clock: Arc<dyn Clock> = options
            .clock
            .clone()
            .unwrap_or_else(|| Arc::new(SystemClock));
        let retry = options.breaker_open_for.max(Duration::from_millis(100));
        let replicas = expected_replicas.max(1);
        Ok(Self {
            backend: Backend::Redis {
                store: Box::new(RedisStore::new(url, options)?),
                policy,
                handover: Box::new(Handover::new(
                    InProcessStore::with_clock(clock.clone()),
                    InProcessStore::with_clock(clock),
                    replicas,
                )),
                retry,
            },
        })
    }

    /// The same limiter for replica `index` (0-based) of the expected replicas: under
    /// [`OnError::Local`] it takes one of the remainders when a limit does not divide
    /// evenly (see [`Quota::shares`](crate::Quota::shares)), so that the fleet's shares
    /// add up to exactly the limit. Without an index a replica gets only the rounded
    /// down share, which may be zero. No effect on other backends or policies.
    pub fn with_replica_index(mut self, index: u32) -> Self {
        if let Backend::Redis { handover, .. } = &mut self.backend {
            handover.set_index(Some(index));
        }
        self
    }

    /// True when decisions are shared through Redis.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Redis { .. })
    }

    /// True while Redis is treated as down and the failure policy decides.
    pub fn is_degraded(&self) -> bool {
        match &self.backend {
            Backend::Embedded(_) => false,
            Backend::Redis { store, .. } => store.is_degraded(),
        }
    }

    /// The failure policy, when the limiter is on Redis.
    pub fn policy(&self) -> Option<OnError> {
        match &self.backend {
            Backend::Embedded(_) => None,
            Backend::Redis { policy, .. } => Some(*policy),
        }
    }

    /// Checks that Redis answers (always `Ok` for the embedded limiter).
    pub async fn ping(&self) -> Result<(), crate::StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(()),
            Backend::Redis { store, .. } => store.ping().await,
        }
    }

    /// [`Store::acquire_for`] on the Redis backend, under its failure policy.
    async fn acquire_shared(
        &self,
        candidates: &[QuotaKey],
        quota: &Quota,
        cost: Cost,
        max_wait: Duration,
        share: Option<&Share>,
    ) -> Result<Decision, LimitError> {
        let (store, policy, handover, retry) = match &self.backend {
            Backend::Embedded(s) => {
                return s.acquire_now_for(candidates, quota, cost, max_wait, share);
            }
            Backend::Redis {
                store,
                policy,
                handover,
                retry,
            } => (store, *policy, handover, *retry),
        };
        let local = policy == OnError::Local;
        // Local usage not handed back yet: hand it back first, or keep deciding locally
        // while Redis does not answer (without sending a decision that could time out
        // and still land later).
        if local && handover.pending() && !handover.hand_back(store).await {
            if let Some(decision) =
                handover.decide_unless_handing_back(candidates, quota, cost, max_wait, true)?
            {
                metrics::counter!("sluice_limiter_degraded_decisions_total", "policy" => policy.as_str())
                    .increment(1);
                return Ok(decision);
            }
            // Redis answered another task's probe meanwhile: let it finish handing back.
            handover.wait().await;
        }
        let error = match store
            .acquire_for(candidates, quota, cost, max_wait, share)
            .await
        {
            Err(LimitError::Unavailable(e)) => e,
            Ok(decision) => {
                if local {
                    handover.observe(candidates, quota, &decision);
                }
                return Ok(decision);
            }
            other => return other,
        };
        metrics::counter!("sluice_limiter_degraded_decisions_total", "policy" => policy.as_str())
            .increment(1);
        tracing::debug!(error = %error, policy = policy.as_str(), "deciding without redis");
        match policy {
            OnError::FailClosed => Ok(Decision::Refused(Refusal {
                retry_after: Some(retry),
                reason: RefusalReason::Unavailable,
                candidate: 0,
                remaining: Budget::default(),
            })),
            OnError::FailOpen => {
                let Some(key) = candidates.first() else {
                    return Err(LimitError::NoCandidates);
                };
                Ok(Decision::Granted(Reservation {
                    id: ReservationId::random(),
                    key: key.clone(),
                    candidate: 0,
                    slot: SystemClock.now(),
                    wait: Duration::ZERO,
                    cost,
                    remaining: Budget::default(),
                    origin: Origin::Unmetered,
                }))
            }
            OnError::Local => handover.decide(candidates, quota, cost, max_wait),
        }
    }

    /// [`Store::reconcile`] at once, when it needs no I/O: on the embedded store, and
    /// for a reservation that was never metered. Returns `false`, having done nothing,
    /// when the reservation lives in Redis (or in the hand-over): then await
    /// [`Store::reconcile`]. A caller that would spawn a task for the reconcile skips
    /// the task where it is not needed.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use sluice_limiter::{Cost, Decision, Limit, Limiter, Quota, QuotaKey, Store, Window};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let limiter = Limiter::embedded();
    /// let quota = Quota::new(vec![Limit::tokens(100, Window::secs(60).unwrap()).unwrap()]).unwrap();
    /// let key = QuotaKey::new("qwen3-max", "account-a").unwrap();
    /// let Ok(Decision::Granted(r)) = limiter.acquire(&[key], &quota, Cost::request(10, 50), Duration::ZERO).await
    /// else { unreachable!() };
    /// assert!(limiter.reconcile_in_place(&quota, &r, Cost::request(10, 5)));
    /// # });
    /// ```
    pub fn reconcile_in_place(
        &self,
        quota: &Quota,
        reservation: &Reservation,
        actual: Cost,
    ) -> bool {
        match (&self.backend, reservation.origin) {
            (_, Origin::Unmetered) => true,
            (Backend::Embedded(s), _) => {
                s.reconcile_now(quota, reservation, &actual);
                true
            }
            (Backend::Redis { .. }, _) => false,
        }
    }
}

impl Store for Limiter {
    /// Redis down under `local`: decided in process without the fair ledger (each
    /// replica serves its own callers, at its share of the limit).
    async fn acquire_for(
        &self,
        candidates: &[QuotaKey],
        quota: &Quota,
        cost: Cost,
        max_wait: Duration,
        share: Option<&Share>,
    ) -> Result<Decision, LimitError> {
        match &self.backend {
            Backend::Embedded(s) => s.acquire_now_for(candidates, quota, cost, max_wait, share),
            // Boxed: the shared path's future (Redis, the hand-over) takes kilobytes,
            // which every caller's future would otherwise carry and copy, embedded too.
            Backend::Redis { .. } => {
                Box::pin(self.acquire_shared(candidates, quota, cost, max_wait, share)).await
            }
        }
    }

    async fn reconcile(
        &self,
        quota: &Quota,
        reservation: &Reservation,
        actual: Cost,
    ) -> Result<(), LimitError> {
        match (&self.backend, reservation.origin) {
            (_, Origin::Unmetered) => Ok(()),
            (Backend::Embedded(s), _) => s.reconcile(quota, reservation, actual).await,
            (
                Backend::Redis {
                    store, handover, ..
                },
                Origin::Local,
            ) => handover.reconcile(store, quota, reservation, actual).await,
            (Backend::Redis { store, .. }, _) => store.reconcile(quota, reservation, actual).await,
        }
    }

    /// A reservation granted by the shared store is released there; one granted locally
    /// (`on_error = local`) or unmetered is dropped: its charge ages out with its window
    /// (the local grants are handed back to Redis as they were, which stays safe).
    async fn release(
        &self,
        quota: &Quota,
        reservation: &Reservation,
    ) -> Result<ReleaseOutcome, LimitError> {
        match (&self.backend, reservation.origin) {
            (_, Origin::Unmetered | Origin::Local) => Ok(ReleaseOutcome::Dropped),
            (Backend::Embedded(s), _) => s.release(quota, reservation).await,
            (Backend::Redis { store, .. }, _) => store.release(quota, reservation).await,
        }
    }

    async fn record_usage(
        &self,
        key: &QuotaKey,
        quota: &Quota,
        cost: Cost,
    ) -> Result<(), LimitError> {
        match &self.backend {
            Backend::Embedded(s) => s.record_usage(key, quota, cost).await,
            Backend::Redis { store, .. } => store.record_usage(key, quota, cost).await,
        }
    }

    async fn update(
        &self,
        key: &QuotaKey,
        quota: &Quota,
        change: StateChange,
    ) -> Result<(), LimitError> {
        match &self.backend {
            Backend::Embedded(s) => s.update(key, quota, change).await,
            Backend::Redis { store, .. } => store.update(key, quota, change).await,
        }
    }

    async fn status(&self, key: &QuotaKey, quota: &Quota) -> Result<QuotaStatus, LimitError> {
        match &self.backend {
            Backend::Embedded(s) => s.status(key, quota).await,
            Backend::Redis { store, .. } => store.status(key, quota).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limit, Window};

    /// Every caller's future holds the limiter's inline: the Redis path's kilobytes
    /// (connection, script, hand-over) stay boxed, so a request future moves cheaply.
    #[tokio::test]
    async fn the_limiters_futures_stay_small() {
        let limiter = Limiter::embedded();
        let limit = Limit::requests(2, Window::secs(60).unwrap()).unwrap();
        let quota = Quota::new(vec![limit]).unwrap();
        let keys = [QuotaKey::new("m", "a").unwrap()];
        let cost = Cost::request(1, 1);
        let acquire = limiter.acquire(&keys, &quota, cost, Duration::ZERO);
        assert!(size_of_val(&acquire) <= 1024, "{}", size_of_val(&acquire));
        let Decision::Granted(r) = acquire.await.unwrap() else {
            panic!("refused")
        };
        let reconcile = limiter.reconcile(&quota, &r, Cost::ZERO);
        assert!(
            size_of_val(&reconcile) <= 1024,
            "{}",
            size_of_val(&reconcile)
        );
        reconcile.await.unwrap();
        let release = limiter.release(&quota, &r);
        assert!(size_of_val(&release) <= 1024, "{}", size_of_val(&release));
        release.await.unwrap();
        assert!(
            limiter.reconcile_in_place(&quota, &r, Cost::ZERO),
            "the embedded store reconciles without I/O"
        );
    }
}

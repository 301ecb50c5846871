//! [`InProcessStore`]: the limiter in this process's memory, with the same semantics as
//! Redis. The embedded default for a single instance, and the `local` fallback.

use hashbrown::HashMap;
use rustc_hash::FxBuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::decision::{
    Budget, Decision, Origin, QuotaStatus, Refusal, RefusalReason, ReleaseOutcome, Reservation,
    ReservationId,
};
use crate::error::LimitError;
use crate::fair::{Ledger, Priority, Share};
use crate::quota::{Cost, Quota, QuotaKey};
use crate::store::{StateChange, Store};
use crate::time::{Clock, MonotonicClock, Timestamp, duration_micros};
use crate::window::{AccountState, Plan, Unplannable};

const SHARDS: usize = 16;
/// Sweep a shard for expired accounts once every this many decisions on it.
const SWEEP_EVERY: u64 = 4096;

/// One lock's worth of accounts: every account of a key group lives in one shard, so
/// choosing among a group's accounts is atomic. Keys come from the operator's
/// configuration, not from callers, so a fast non-keyed hash is safe here.
#[derive(Default)]
struct Shard {
    accounts: HashMap<QuotaKey, AccountState, FxBuildHasher>,
    /// The fair ledger of each quota group that queued for a tenant ([`crate::fair`]).
    fair: HashMap<String, Ledger, FxBuildHasher>,
    ops: u64,
}

/// The in-process limiter.
///
/// ```
/// # tokio_test();
/// # fn tokio_test() { tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use sluice_limiter::{Cost, InProcessStore, Limit, Quota, QuotaKey, Store, Window};
/// use std::time::Duration;
/// let store = InProcessStore::new();
/// let quota = Quota::new(vec![Limit::requests(2, Window::secs(60).unwrap()).unwrap()]).unwrap();
/// let key = QuotaKey::new("openai/gpt-4o", "key-0").unwrap();
/// let one = Cost::request(10, 10);
/// let keys = [key];
/// assert!(store.acquire(&keys, &quota, one, Duration::ZERO).await.unwrap().granted().is_some());
/// # }); }
/// ```
pub struct InProcessStore {
    clock: Arc<dyn Clock>,
    shards: Box<[Mutex<Shard>]>,
    accounts: AtomicU64,
}

impl Default for InProcessStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessStore {
    /// A store on the host's clock ([`MonotonicClock`]).
    pub fn new() -> Self {
        Self::with_clock(Arc::new(MonotonicClock::new()))
    }

    /// A store on `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            accounts: AtomicU64::new(0),
        }
    }

    /// How many accounts are held in memory (expired ones are swept as decisions go).
    pub fn accounts(&self) -> u64 {
        self.accounts.load(Ordering::Relaxed)
    }

    /// The shard of `key`'s group.
    fn shard(&self, key: &QuotaKey) -> &Mutex<Shard> {
        &self.shards[(key.group_hash() as usize) % SHARDS]
    }

    fn with_account<T>(&self, key: &QuotaKey, f: impl FnOnce(&mut AccountState, u64) -> T) -> T {
        let now = self.clock.now().as_micros();
        let mut shard = self.shard(key).lock();
        let shard = &mut *shard;
        let before = shard.accounts.len();
        let out = f(shard.accounts.entry_ref(key).or_default(), now);
        self.count(shard, before);
        out
    }

    fn count(&self, shard: &mut Shard, before: usize) {
        shard.ops += 1;
        if shard.ops.is_multiple_of(SWEEP_EVERY) {
            let now = self.clock.now().as_micros();
            shard.accounts.retain(|_, a| !a.expired(now));
            shard.fair.retain(|_, l| !l.idle(now));
        }
        // Most decisions neither add nor sweep an account: no atomic write for those.
        let after = shard.accounts.len();
        if after > before {
            self.accounts
                .fetch_add((after - before) as u64, Ordering::Relaxed);
        } else if after < before {
            self.accounts
                .fetch_sub((before - after) as u64, Ordering::Relaxed);
        }
    }

    /// Adds per-limit `charges` (in `quota`'s limit order) at time `at` (µs on this
    /// store's clock), unchecked: what the `local` fallback seeds and what it tracks.
    pub(crate) fn record_charges(&self, key: &QuotaKey, quota: &Quota, charges: &[u64], at: u64) {
        self.with_account(key, |a, now| a.record_charges(quota, charges, at, now));
    }

    /// What each limit of `quota` holds for `key` now (in `quota`'s limit order).
    pub(crate) fn used(&self, key: &QuotaKey, quota: &Quota) -> Vec<u64> {
        self.with_account(key, |a, now| {
            a.status(quota, now).limits.iter().map(|l| l.used).collect()
        })
    }

    /// [`Store::reconcile`], synchronously.
    pub(crate) fn reconcile_now(&self, quota: &Quota, reservation: &Reservation, actual: &Cost) {
        self.with_account(&reservation.key, |a, now| {
            a.reconcile(
                quota,
                reservation.id,
                reservation.slot.as_micros(),
                &reservation.cost,
                actual,
                now,
            )
        });
    }

    /// [`Store::release`], synchronously.
    pub(crate) fn release_now(&self, quota: &Quota, reservation: &Reservation) -> ReleaseOutcome {
        self.with_account(&reservation.key, |a, now| {
            a.release(
                quota,
                reservation.id,
                reservation.slot.as_micros(),
                &reservation.cost,
                now,
            )
        })
    }

    /// Forgets everything about `key`.
    pub(crate) fn forget(&self, key: &QuotaKey) {
        let mut shard = self.shard(key).lock();
        if shard.accounts.remove(key).is_some() {
            self.accounts.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The store's clock, in µs.
    pub(crate) fn now_micros(&self) -> u64 {
        self.clock.now().as_micros()
    }

    /// The decision, synchronously (the in-process store never waits on IO).
    #[inline]
    pub fn acquire_now(
        &self,
        candidates: &[QuotaKey],
        quota: &Quota,
        cost: Cost,
        max_wait: Duration,
    ) -> Result<Decision, LimitError> {
        self.acquire_now_for(candidates, quota, cost, max_wait, None)
    }

    /// [`Store::acquire_for`], synchronously.
    pub fn acquire_now_for(
        &self,
        candidates: &[QuotaKey],
        quota: &Quota,
        cost: Cost,
        max_wait: Duration,
        share: Option<&Share>,
    ) -> Result<Decision, LimitError> {
        let Some(first) = candidates.first() else {
            return Err(LimitError::NoCandidates);
        };
        let now = self.clock.now().as_micros();
        let mut guard = self.shard(first).lock();
        let shard = &mut *guard;
        let before = shard.accounts.len();
        let ask = Ask {
            cost: &cost,
            max_wait,
            share,
            now,
        };
        let decision = decide(shard, candidates, quota, &ask);
        self.count(shard, before);
        decision
    }
}

/// One acquire's question, besides its candidates and quota.
struct Ask<'a> {
    cost: &'a Cost,
    max_wait: Duration,
    share: Option<&'a Share>,
    now: u64,
}

/// The best plan among `candidates`, committed when it is within `max_wait`.
#[inline]
fn decide(
    shard: &mut Shard,
    candidates: &[QuotaKey],
    quota: &Quota,
    ask: &Ask<'_>,
) -> Result<Decision, LimitError> {
    let (cost, now) = (ask.cost, ask.now);
    // A batch tenant's slots are paced without the burst tolerance (fair.rs).
    let burst = ask.share.is_none_or(|s| s.priority() != Priority::Batch);
    let reserve = ask.share.map_or(0, |s| u64::from(s.reserve()));
    // The best plan so far, with its headroom.
    let mut best: Option<(usize, Plan, i64)> = None;
    let mut disabled: Option<(usize, String)> = None;
    let mut capacity: Option<LimitError> = None;
    if let [only] = candidates {
        // One account: one lookup, no second pass.
        let account = shard.accounts.entry_ref(only).or_default();
        return match account.plan_paced(quota, cost, now, burst, reserve) {
            Ok(plan) => Ok(settle(account, &mut shard.fair, 0, only, &plan, quota, ask)),
            Err(Unplannable::Disabled(reason)) => Ok(disabled_refusal(0, reason)),
            Err(Unplannable::Capacity(e)) => Err(e),
        };
    }
    for (i, key) in candidates.iter().enumerate() {
        if best
            .as_ref()
            .is_some_and(|(_, b, room)| good_enough(b, *room, now, i))
        {
            break;
        }
        let account = shard.accounts.entry_ref(key).or_default();
        match account.plan_paced(quota, cost, now, burst, reserve) {
            Ok(plan) => {
                let room = account.headroom(quota, cost);
                let better = best.as_ref().is_none_or(|(_, b, best_room)| {
                    plan.slot < b.slot || (plan.slot == b.slot && room > *best_room)
                });
                if better {
                    best = Some((i, plan, room));
                }
            }
            Err(Unplannable::Disabled(reason)) => {
                disabled.get_or_insert((i, reason));
            }
            Err(Unplannable::Capacity(e)) => {
                capacity.get_or_insert(e);
            }
        }
    }
    let Some((i, plan, _)) = best else {
        if let Some((i, reason)) = disabled {
            return Ok(disabled_refusal(i, reason));
        }
        return Err(capacity.unwrap_or(LimitError::NoCandidates));
    };
    let account = shard
        .accounts
        .get_mut(&candidates[i])
        .expect("planned above");
    Ok(settle(
        account,
        &mut shard.fair,
        i,
        &candidates[i],
        &plan,
        quota,
        ask,
    ))
}

/// A slot now with at least this headroom after the charge (millionths of the tightest
/// limit) ends the scan of the candidates (`acquire.lua` has the same rule).
pub(crate) const GOOD_HEADROOM: i64 = 500_000;
/// Once this many candidates were examined, any slot now ends the scan.
pub(crate) const GOOD_AFTER: usize = 8;

/// Whether the best plan so far, `examined` candidates in, ends the scan: a slot now
/// with half of every limit left, or any slot now after [`GOOD_AFTER`] candidates. The
/// later candidates could only offer more headroom, and examining every one is what
/// makes a model of many accounts cost (#17).
fn good_enough(best: &Plan, headroom: i64, now: u64, examined: usize) -> bool {
    best.slot == now && (headroom >= GOOD_HEADROOM || examined >= GOOD_AFTER)
}

fn disabled_refusal(candidate: usize, reason: String) -> Decision {
    Decision::Refused(Refusal {
        retry_after: None,
        reason: RefusalReason::Disabled(reason),
        candidate,
        remaining: Budget::default(),
    })
}

/// Grants `plan` (committing it) when it is within `max_wait` and, for a slot ahead
/// asked with a [`Share`], the quota's fair ledger admits it; or refuses it.
#[inline(always)]
fn settle(
    account: &mut AccountState,
    fair: &mut HashMap<String, Ledger, FxBuildHasher>,
    candidate: usize,
    key: &QuotaKey,
    plan: &Plan,
    quota: &Quota,
    ask: &Ask<'_>,
) -> Decision {
    let (cost, now) = (ask.cost, ask.now);
    let wait = plan.slot - now;
    let refuse = |account: &mut AccountState, after: u64, reason: RefusalReason| {
        Decision::Refused(Refusal {
            retry_after: Some(Duration::from_micros(after)),
            reason,
            candidate,
            remaining: account.remaining(quota),
        })
    };
    if wait > duration_micros(ask.max_wait) {
        return refuse(account, wait, plan.binding.reason(quota));
    }
    let fair_share = ask.share.filter(|_| wait > 0 && *cost != Cost::ZERO);
    if let Some(share) = fair_share {
        let ledger = fair.entry_ref(key.group()).or_default();
        match ledger.admit(share, now, plan.slot) {
            Ok(tag) => ledger.book(share, plan.slot, tag),
            Err(after) => return refuse(account, after, RefusalReason::FairShare),
        }
    }
    if *cost != Cost::ZERO {
        account.commit(quota, plan, cost, now);
    }
    Decision::Granted(Reservation {
        id: ReservationId::random(),
        key: key.clone(),
        candidate,
        slot: Timestamp::from_micros(plan.slot),
        wait: Duration::from_micros(wait),
        cost: *cost,
        remaining: account.remaining(quota),
        origin: Origin::Shared,
    })
}

impl Store for InProcessStore {
    async fn acquire_for(
        &self,
        candidates: &[QuotaKey],
        quota: &Quota,
        cost: Cost,
        max_wait: Duration,
        share: Option<&Share>,
    ) -> Result<Decision, LimitError> {
        self.acquire_now_for(candidates, quota, cost, max_wait, share)
    }

    async fn reconcile(
        &self,
        quota: &Quota,
        reservation: &Reservation,
        actual: Cost,
    ) -> Result<(), LimitError> {
        self.reconcile_now(quota, reservation, &actual);
        Ok(())
    }

    async fn release(
        &self,
        quota: &Quota,
        reservation: &Reservation,
    ) -> Result<ReleaseOutcome, LimitError> {
        Ok(self.release_now(quota, reservation))
    }

    async fn record_usage(
        &self,
        key: &QuotaKey,
        quota: &Quota,
        cost: Cost,
    ) -> Result<(), LimitError> {
        self.with_account(key, |a, now| a.record_usage(quota, &cost, now));
        Ok(())
    }

    async fn update(
        &self,
        key: &QuotaKey,
        quota: &Quota,
        change: StateChange,
    ) -> Result<(), LimitError> {
        self.with_account(key, |a, now| a.update(quota, &change, now));
        Ok(())
    }

    async fn status(&self, key: &QuotaKey, quota: &Quota) -> Result<QuotaStatus, LimitError> {
        Ok(self.with_account(key, |a, now| a.status(quota, now)))
    }
}

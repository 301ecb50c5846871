//! The hand-over between Redis and the `local` fallback ([`OnError::Local`]), so that
//! the switch does not let a fleet burst past a provider's limit in either direction.
//!
//! **Into local mode.** Every Redis decision tells what is left of each limit of the
//! account it describes ([`Budget`](crate::Budget)); the last word per account is kept here (a read
//! lock, a hash lookup and a few relaxed atomic stores per decision, no allocation
//! once the account was seen). When an account is first decided locally during an
//! outage, the local store is charged, per limit, with the part of this replica's
//! share that Redis said was already spent: `share − remaining ÷ replicas`, so the
//! fleet together grants at most what Redis had left. See [`seed`] for the details
//! and for accounts Redis never described.
//!
//! **Back to Redis.** What this replica granted locally is tracked apart from the seed
//! (at each grant's slot, per limit, in a second in-process store). When Redis answers
//! again (a `PING` through the circuit breaker, so a timed-out probe changes nothing),
//! that usage — only what is still inside each limit's window, never the seed, which
//! Redis already holds if it kept its data — is recorded into Redis before any shared
//! decision is made, once per outage: one task hands back while the others wait for it
//! (or, if Redis still looks down, keep deciding locally). It lands in the bucket of the
//! latest slot granted locally (queued requests reach the provider that late), and
//! Redis's queue moves up to that slot: the one charge stands for grants spread over the
//! outage, so shared grants must come after it for every window they close to count it
//! whole. If Redis
//! lost the account's windows (a restart without persistence: the key is missing, or was
//! recreated without a queue by a reconcile or outside usage recorded first, or its queue
//! ends before the latest slot Redis gave this replica, so another replica's hand-back
//! recreated it), the record also brings what is left of the seed and a whole share for
//! each other replica, which may still be deciding locally, unseen by Redis, until its
//! own probe: too much for at most a window after such a restart, never too little.
//! (All of it lands at the latest slot this replica knew of, so Redis grants nothing that
//! reaches the provider beside the queue it lost.) The local state of each account
//! handed back is then forgotten, and the last word from Redis is lowered by what was
//! handed back, so a later outage starts from Redis's view again instead of counting
//! this outage's grants twice.
//!
//! Seeds land in the bucket of the latest slot Redis named to this replica on the
//! account: a grant's, or the earliest slot of a refused request, which is never before
//! Redis's queue tail (queued requests of the whole fleet reach the provider up to
//! `max_wait` after their decision).
//!
//! [`OnError::Local`]: crate::OnError::Local

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hashbrown::HashMap;
use parking_lot::{Mutex, RwLock};
use rustc_hash::FxBuildHasher;

use crate::decision::{Budget, Decision, Left, Origin, Reservation};
use crate::error::LimitError;
use crate::memory::InProcessStore;
use crate::quota::{Cost, LimitId, Quota, QuotaKey};
use crate::redis::RedisStore;
use crate::time::duration_micros;

/// Windows up to this length are assumed full for an account Redis never described
/// (see [`seed`]).
pub(crate) const UNKNOWN_FULL_MAX_WINDOW_US: u64 = 60_000_000;

/// What Redis last said about one account: what was left of each limit. (Not when: an
/// old word is used as it is, see [`seed`], which spares a clock read per decision.)
struct Seen {
    ids: Box<[LimitId]>,
    remaining: [AtomicU64; Quota::MAX_LIMITS],
    /// The latest slot Redis gave this replica on the account (µs, limiter's clock):
    /// usage Redis counted may reach the provider as late as that.
    booked_until: AtomicU64,
    /// The latest slot Redis named to this replica on the account: a grant's, or the
    /// earliest a refused request could have had (µs). A slot is never before Redis's
    /// queue tail, so this is the end of the fleet's queue as Redis last said it, where
    /// `booked_until` is only this replica's part of it.
    named_until: AtomicU64,
}

impl Seen {
    fn new(quota: &Quota) -> Self {
        Self {
            ids: quota.limits().iter().map(|l| l.id().clone()).collect(),
            remaining: Default::default(),
            booked_until: AtomicU64::new(0),
            named_until: AtomicU64::new(0),
        }
    }

    /// True when `quota` has the same limits, in the same order.
    fn matches(&self, quota: &Quota) -> bool {
        let limits = quota.limits();
        self.ids.len() == limits.len() && self.ids.iter().zip(limits).all(|(a, l)| a == l.id())
    }

    fn store(&self, budget: &[Left]) {
        for (slot, r) in self.remaining.iter().zip(budget) {
            slot.store(r.remaining, Ordering::Relaxed);
        }
    }

    /// What was left of `id`, if this account's last word covered it.
    fn remaining_of(&self, id: &LimitId) -> Option<u64> {
        let i = self.ids.iter().position(|x| x == id)?;
        Some(self.remaining[i].load(Ordering::Relaxed))
    }

    /// Lowers what was left of `id` by `spent` (usage handed back).
    fn spend(&self, id: &LimitId, spent: u64) {
        if let Some(i) = self.ids.iter().position(|x| x == id) {
            let _ = self.remaining[i].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                Some(r.saturating_sub(spent))
            });
        }
    }
}

/// One account decided locally during the current outage.
struct Entered {
    /// The full quota it was decided under (the share is derived from it).
    quota: Quota,
    /// When it entered local mode (µs).
    at: u64,
    /// The latest slot granted locally, or booked in Redis before the outage (µs).
    latest: u64,
}

/// One account's usage to hand back.
struct Back {
    key: QuotaKey,
    quota: Quota,
    /// Granted locally, per limit, still inside its window.
    given: Vec<u64>,
    /// What is left of the seed, per limit.
    seed: Vec<u64>,
    /// The latest slot, granted locally or booked in Redis (µs).
    latest: u64,
    /// The latest slot Redis gave this replica on the account (µs, 0: none): if Redis's
    /// queue ends before it, Redis lost the account's windows.
    booked: u64,
}

/// Clears [`Handover::handing_back`] when dropped.
struct ClearOnDrop<'a>(&'a Handover);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.set_handing_back(false);
    }
}

/// The per-limit charges of the seed: the part of this replica's share already spent,
/// by Redis's last word on the account.
///
/// - **Known limit** (Redis described it, however long ago): `share − remaining ÷
///   replicas`, rounded so that the seed errs high. `remaining` already counts queued
///   reservations and a learned lower limit, so both carry over. The seed lands in the
///   current bucket and so stays a whole window, whereas the usage it stands for was
///   spread over the window before the outage and leaves it earlier: the local store is
///   over-charged for at most one window (for a 1 s RPS window, one second), never
///   under-charged. An old last word is used as it is: it is the best estimate there is
///   of an account this replica has not used since.
/// - **Unknown limit** (no decision from Redis on this account since this process
///   started, or under other limits): windows of at most a minute (RPS, RPM, TPM) are
///   assumed full, so this replica grants nothing on that limit for one window — the
///   most a full window would have made it wait anyway, and the only choice that keeps
///   a freshly (re)started fleet under the provider's limit when the window was full.
///   Longer windows (hours, days) are assumed empty: assuming them full would refuse
///   the account for up to a day, an outage worse than the burst it avoids; the excess
///   is bounded by one share per replica per such window, and the short limits that
///   providers pair with them still hold.
pub(crate) fn seed(
    quota: &Quota,
    share: &Quota,
    replicas: u32,
    remaining: impl Fn(&LimitId) -> Option<u64>,
) -> Vec<u64> {
    let replicas = u64::from(replicas.max(1));
    quota
        .limits()
        .iter()
        .zip(share.limits())
        .map(|(limit, part)| match remaining(limit.id()) {
            Some(left) => part.amount().saturating_sub(left / replicas),
            None if limit.window().micros() <= UNKNOWN_FULL_MAX_WINDOW_US => part.amount(),
            None => 0,
        })
        .collect()
}

fn charges(quota: &Quota, cost: &Cost) -> Vec<u64> {
    quota.limits().iter().map(|l| l.charge(cost)).collect()
}

/// The hand-over state of one [`Limiter`](crate::Limiter) on Redis with the `local`
/// policy: the local store, what it granted, and Redis's last word per account.
pub(crate) struct Handover {
    replicas: u32,
    /// This replica's index among `replicas`, if known: it takes one of the remainders
    /// of the split (see [`Quota::shares`]).
    index: Option<u32>,
    /// Decisions while Redis is down, at the share (seed included).
    local: InProcessStore,
    /// Only what this replica granted locally, at each grant's slot (no seed).
    granted: InProcessStore,
    /// Redis's last word per account.
    seen: RwLock<HashMap<QuotaKey, Seen, FxBuildHasher>>,
    /// Accounts decided locally since the last hand-back. `local` and `granted` are
    /// only written with this lock held, so a hand-back sees each grant exactly once.
    period: Mutex<HashMap<QuotaKey, Entered, FxBuildHasher>>,
    /// True while `period` is not empty (read on every decision: one atomic load).
    pending: AtomicBool,
    /// True while usage is being written back (Redis answered the probe); changed with
    /// `period` locked.
    handing_back: AtomicBool,
    /// One hand-back at a time.
    gate: tokio::sync::Mutex<()>,
}

impl Handover {
    pub(crate) fn new(local: InProcessStore, granted: InProcessStore, replicas: u32) -> Self {
        Self {
            replicas: replicas.max(1),
            index: None,
            local,
            granted,
            seen: RwLock::new(HashMap::default()),
            period: Mutex::new(HashMap::default()),
            pending: AtomicBool::new(false),
            handing_back: AtomicBool::new(false),
            gate: tokio::sync::Mutex::new(()),
        }
    }

    /// Makes this the hand-over of replica `index` of the expected replicas.
    pub(crate) fn set_index(&mut self, index: Option<u32>) {
        self.index = index;
    }

    /// True when some local usage has not been handed back to Redis yet.
    pub(crate) fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Remembers what a Redis decision said about the account it describes.
    pub(crate) fn observe(&self, candidates: &[QuotaKey], quota: &Quota, decision: &Decision) {
        let (key, budget, wait, granted) = match decision {
            Decision::Granted(r) => (&r.key, &r.remaining, r.wait, true),
            Decision::Refused(r) => match candidates.get(r.candidate) {
                Some(k) => (k, &r.remaining, r.retry_after.unwrap_or_default(), false),
                None => return,
            },
        };
        // A slot ahead (queued, or named by a refusal): read the clock only then.
        let named = if wait.is_zero() {
            0
        } else {
            self.local.now_micros() + duration_micros(wait)
        };
        let booked = if granted { named } else { 0 };
        if budget.len() != quota.limits().len() {
            return;
        }
        {
            let seen = self.seen.read();
            if let Some(s) = seen.get(key)
                && s.matches(quota)
            {
                s.store(budget);
                if named > 0 {
                    s.named_until.fetch_max(named, Ordering::Relaxed);
                }
                if booked > 0 {
                    s.booked_until.fetch_max(booked, Ordering::Relaxed);
                }
                return;
            }
        }
        // First word on this account (or on other limits): once per account.
        let s = Seen::new(quota);
        s.store(budget);
        s.booked_until.store(booked, Ordering::Relaxed);
        s.named_until.store(named, Ordering::Relaxed);
        self.seen.write().insert(key.clone(), s);
    }

    /// Charges the seed of `key` and counts it as decided locally (period lock held).
    fn enter(
        &self,
        period: &mut HashMap<QuotaKey, Entered, FxBuildHasher>,
        key: &QuotaKey,
        quota: &Quota,
        share: &Quota,
        now: u64,
    ) {
        let (seed, booked) = {
            let seen = self.seen.read();
            let last = seen.get(key);
            let seed = seed(quota, share, self.replicas, |id| {
                last.and_then(|s| s.remaining_of(id))
            });
            let booked = last.map_or(0, |s| {
                s.booked_until
                    .load(Ordering::Relaxed)
                    .max(s.named_until.load(Ordering::Relaxed))
            });
            (seed, booked)
        };
        // Whatever is left from an earlier period was handed back already.
        self.local.forget(key);
        self.granted.forget(key);
        // At the end of the fleet's queue as Redis last named it (not only this replica's
        // latest slot): queued requests reach the provider as late as that, so the usage
        // Redis counted stays in the provider's window until then plus a window. (Placed
        // at this replica's own latest slot, the seed left the local window while other
        // replicas' requests booked later were still in the provider's: the local grants
        // it then allowed went past the limit.)
        self.local
            .record_charges(key, share, &seed, now.max(booked));
        if period.is_empty() {
            metrics::counter!("sluice_limiter_handovers_total", "direction" => "to_local")
                .increment(1);
            tracing::info!("redis unavailable; deciding locally at this replica's share");
        }
        tracing::debug!(account = %key, seed = ?seed, "account seeded for local decisions");
        period.insert(
            key.clone(),
            Entered {
                quota: quota.clone(),
                at: now,
                latest: now.max(booked),
            },
        );
        self.pending.store(true, Ordering::Release);
    }

    /// Decides locally at this replica's share, seeding accounts decided locally for
    /// the first time in this outage.
    pub(crate) fn decide(
        &self,
        candidates: &[QuotaKey],
        quota: &Quota,
        cost: Cost,
        max_wait: std::time::Duration,
    ) -> Result<Decision, LimitError> {
        Ok(self
            .decide_unless_handing_back(candidates, quota, cost, max_wait, false)?
            .expect("decided"))
    }

    /// [`decide`](Self::decide), or `None` (when `yield_to_hand_back`) if Redis has
    /// answered and a hand-back is being written: the caller then waits for it
    /// ([`wait`](Self::wait)) and decides on Redis, rather than seeding afresh an
    /// account whose local usage is being handed back and granting on top of it.
    pub(crate) fn decide_unless_handing_back(
        &self,
        candidates: &[QuotaKey],
        quota: &Quota,
        cost: Cost,
        max_wait: std::time::Duration,
        yield_to_hand_back: bool,
    ) -> Result<Option<Decision>, LimitError> {
        let share = quota.divided_for(self.replicas, self.index);
        // A limit whose share is zero (fewer per window than replicas) grants nothing
        // here: the fleet's shares never add up to more than the limit.
        let zero = quota
            .shares(self.replicas, self.index)
            .iter()
            .zip(quota.limits())
            .position(|(&part, l)| part == 0 && l.charge(&cost) > 0);
        if let Some(i) = zero {
            let limit = &quota.limits()[i];
            return Ok(Some(Decision::Refused(crate::decision::Refusal {
                retry_after: Some(limit.window().length()),
                reason: crate::decision::RefusalReason::Limit(limit.id().clone()),
                candidate: 0,
                remaining: Budget::default(),
            })));
        }
        let mut period = self.period.lock();
        if yield_to_hand_back && self.handing_back.load(Ordering::Acquire) {
            return Ok(None);
        }
        let now = self.local.now_micros();
        for key in candidates {
            if !period.contains_key(key) {
                self.enter(&mut period, key, quota, &share, now);
            }
        }
        let decision = self.local.acquire_now(candidates, &share, cost, max_wait)?;
        Ok(Some(match decision {
            Decision::Granted(r) => {
                if cost != Cost::ZERO {
                    if let Some(e) = period.get_mut(&r.key) {
                        e.latest = e.latest.max(r.slot.as_micros());
                    }
                    self.granted.record_charges(
                        &r.key,
                        quota,
                        &charges(quota, &cost),
                        r.slot.as_micros(),
                    );
                }
                Decision::Granted(Reservation {
                    origin: Origin::Local,
                    ..r
                })
            }
            refused => refused,
        }))
    }

    /// Waits until no hand-back is under way.
    pub(crate) async fn wait(&self) {
        drop(self.gate.lock().await);
    }

    /// Reconciles a reservation granted locally: in the local stores while its account
    /// is still in local mode, else (already handed back) into Redis, where only an
    /// increase is recorded (a refund cannot be told apart from others' usage there).
    pub(crate) async fn reconcile(
        &self,
        store: &RedisStore,
        quota: &Quota,
        reservation: &Reservation,
        actual: Cost,
    ) -> Result<(), LimitError> {
        let decided_at = reservation
            .slot
            .as_micros()
            .saturating_sub(duration_micros(reservation.wait));
        {
            let period = self.period.lock();
            if period
                .get(&reservation.key)
                .is_some_and(|e| e.at <= decided_at)
            {
                let share = quota.divided_for(self.replicas, self.index);
                self.local.reconcile_now(&share, reservation, &actual);
                self.granted.reconcile_now(quota, reservation, &actual);
                return Ok(());
            }
        }
        let more: Vec<u64> = quota
            .limits()
            .iter()
            .map(|l| {
                l.charge(&actual)
                    .saturating_sub(l.charge(&reservation.cost))
            })
            .collect();
        if more.iter().all(|&c| c == 0) {
            return Ok(());
        }
        if store
            .record_charges(
                &reservation.key,
                quota,
                &more,
                &[],
                std::time::Duration::ZERO,
                std::time::Duration::ZERO,
            )
            .await
            .is_ok()
        {
            return Ok(());
        }
        // Redis is down again: keep the increase locally, to be handed back later.
        let share = quota.divided_for(self.replicas, self.index);
        let mut period = self.period.lock();
        let now = self.local.now_micros();
        if !period.contains_key(&reservation.key) {
            self.enter(&mut period, &reservation.key, quota, &share, now);
        }
        self.local
            .record_charges(&reservation.key, &share, &more, now);
        self.granted
            .record_charges(&reservation.key, quota, &more, now);
        Ok(())
    }

    /// Hands local usage back to Redis if Redis answers. Returns false when Redis still
    /// looks down (decide locally), true when the caller may decide on Redis.
    pub(crate) async fn hand_back(&self, store: &RedisStore) -> bool {
        let _gate = match self.gate.try_lock() {
            Ok(g) => g,
            // Another task is probing or handing back: while Redis looks down, do not
            // queue behind its probe; once it answers, wait for the hand-back to end so
            // that no shared decision misses the usage being handed back.
            Err(_) if store.is_degraded() => return false,
            Err(_) => self.gate.lock().await,
        };
        if !self.pending() {
            return true;
        }
        if store.probe().await.is_err() {
            return false;
        }
        self.set_handing_back(true);
        // Cleared however this ends, the caller's future dropped midway included.
        let _clear = ClearOnDrop(self);
        self.write_back(store).await
    }

    fn set_handing_back(&self, on: bool) {
        let _period = self.period.lock();
        self.handing_back.store(on, Ordering::Release);
    }

    /// Records every account's local grants into Redis (gate held, Redis answering).
    async fn write_back(&self, store: &RedisStore) -> bool {
        let items: Vec<Back> = {
            let period = self.period.lock();
            period
                .iter()
                .map(|(k, e)| {
                    let given = self.granted.used(k, &e.quota);
                    // Only if Redis lost the account (a restart without persistence),
                    // what it no longer holds: what is left of the seed in the local
                    // window, and — for the other replicas, which may still be deciding
                    // locally, unseen by Redis, until their own probe — a whole share
                    // each (their local windows never hold more). That the others then
                    // hand back their grants too counts those twice for at most a
                    // window: too much, never too little. Only for an account used here
                    // during the outage (an idle account's key may just have expired).
                    let share = e.quota.divided_for(self.replicas, self.index);
                    let others = u64::from(self.replicas - 1);
                    let local_used = self.local.used(k, &share);
                    let used_here = given.iter().chain(&local_used).any(|&c| c > 0);
                    let seed: Vec<u64> = local_used
                        .iter()
                        .zip(&given)
                        .zip(share.limits())
                        .map(|((l, g), part)| {
                            let left = l.saturating_sub(*g);
                            if used_here {
                                left + others * part.amount()
                            } else {
                                left
                            }
                        })
                        .collect();
                    let booked = self
                        .seen
                        .read()
                        .get(k)
                        .map_or(0, |s| s.booked_until.load(Ordering::Relaxed));
                    Back {
                        key: k.clone(),
                        quota: e.quota.clone(),
                        given,
                        seed,
                        latest: e.latest,
                        booked,
                    }
                })
                .collect()
        };
        let mut usage = 0u64;
        for Back {
            key,
            quota,
            given,
            seed,
            latest,
            booked,
        } in &items
        {
            if given.iter().chain(seed).any(|&c| c > 0) {
                // At the latest local slot: queued local grants reach the provider as
                // late as that (Redis's clock may differ; the wait is relative).
                let now = self.local.now_micros();
                let ahead = std::time::Duration::from_micros(latest.saturating_sub(now));
                let booked = std::time::Duration::from_micros(booked.saturating_sub(now));
                let recorded = store
                    .record_charges(key, quota, given, seed, ahead, booked)
                    .await;
                if matches!(recorded, Ok(true)) {
                    tracing::info!(account = %key, "redis had lost the account's windows; seed handed back too");
                }
                if let Err(e) = recorded {
                    // Nothing of this account was forgotten: it is handed back later,
                    // still at its grants' own times. (A write that timed out may have
                    // landed anyway and be recorded twice: too much, never too little.)
                    tracing::warn!(error = %e, "hand-back to redis failed; deciding locally");
                    return false;
                }
                if let Some(s) = self.seen.read().get(key) {
                    for (l, &g) in quota.limits().iter().zip(given) {
                        s.spend(l.id(), g);
                    }
                }
                usage = usage.saturating_add(given.iter().sum());
            }
            let share = quota.divided_for(self.replicas, self.index);
            let mut period = self.period.lock();
            // Grants made while the record was in flight stay local, handed back next.
            let now_used = self.granted.used(key, quota);
            let extra: Vec<u64> = now_used
                .iter()
                .zip(given)
                .map(|(n, g)| n.saturating_sub(*g))
                .collect();
            period.remove(key);
            self.local.forget(key);
            self.granted.forget(key);
            if extra.iter().any(|&c| c > 0) {
                let now = self.local.now_micros();
                self.enter(&mut period, key, quota, &share, now);
                self.local.record_charges(key, &share, &extra, now);
                self.granted.record_charges(key, quota, &extra, now);
            }
        }
        {
            let period = self.period.lock();
            if period.is_empty() {
                self.pending.store(false, Ordering::Release);
            }
        }
        metrics::counter!("sluice_limiter_handovers_total", "direction" => "to_redis").increment(1);
        tracing::info!(
            accounts = items.len(),
            usage,
            "redis answers again; local usage handed back"
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::{Limit, Window};

    fn quota() -> Quota {
        Quota::new(vec![
            Limit::requests(100, Window::secs(60).unwrap()).unwrap(),
            Limit::requests(10, Window::secs(1).unwrap()).unwrap(),
            Limit::requests(1000, Window::secs(86_400).unwrap()).unwrap(),
        ])
        .unwrap()
    }

    #[test]
    fn the_seed_is_the_spent_part_of_the_share() {
        let q = quota();
        let share = q.divided(2);
        // Redis had 40 of 100, 10 of 10 and 1000 of 1000 left.
        let left = |id: &LimitId| match id.as_str() {
            "r60000" => Some(40),
            "r1000" => Some(10),
            _ => Some(1000),
        };
        assert_eq!(seed(&q, &share, 2, left), vec![30, 0, 0]);
        // Nothing left: the whole share is spent.
        assert_eq!(seed(&q, &share, 2, |_| Some(0)), vec![50, 5, 500]);
    }

    #[test]
    fn unknown_short_windows_are_full_and_long_ones_empty() {
        let q = quota();
        let share = q.divided(3);
        assert_eq!(seed(&q, &share, 3, |_| None), vec![33, 3, 0]);
    }

    #[test]
    fn observing_keeps_the_last_word_and_spending_lowers_it() {
        let h = Handover::new(InProcessStore::new(), InProcessStore::new(), 2);
        let q = quota();
        let key = QuotaKey::new("g/m", "k").unwrap();
        let budget = |left: u64| {
            q.limits()
                .iter()
                .map(|l| Left {
                    effective: l.amount(),
                    remaining: left.min(l.amount()),
                })
                .collect()
        };
        let refused = Decision::Refused(crate::decision::Refusal {
            retry_after: None,
            reason: crate::decision::RefusalReason::Queue,
            candidate: 0,
            remaining: budget(80),
        });
        h.observe(std::slice::from_ref(&key), &q, &refused);
        h.observe(
            std::slice::from_ref(&key),
            &q,
            &Decision::Refused(crate::decision::Refusal {
                retry_after: None,
                reason: crate::decision::RefusalReason::Queue,
                candidate: 0,
                remaining: budget(60),
            }),
        );
        let seen = h.seen.read();
        let s = seen.get(&key).unwrap();
        assert_eq!(s.remaining_of(q.limits()[0].id()), Some(60));
        s.spend(q.limits()[0].id(), 70);
        assert_eq!(s.remaining_of(q.limits()[0].id()), Some(0));
        assert_eq!(s.remaining_of(q.limits()[1].id()), Some(10));
    }
}

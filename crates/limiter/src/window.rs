//! The window arithmetic: one account's state and every decision on it, with no IO
//! and no clock. The in-process store calls it directly; `lua/*.lua` mirrors it line
//! for line, and the conformance and property tests hold the two together.
//!
//! # The model
//! Each limit's window of length `W` is cut into buckets of width `w = W / buckets`
//! (microseconds). A charge made at slot `t` lands in bucket `k = t / w`. The trailing
//! window ending at `t` counts every bucket that overlaps it, `k >= kmin(t) =
//! (t - W) / w`, so the partly expired oldest bucket counts in full: the error is at
//! most one bucket, always on the safe side.
//!
//! Slots are first come, first served: a slot is never earlier than the latest slot
//! already given (`tail`). With no charge after the tail, the only window a new charge
//! at `t >= tail` can overfill is the one ending at `t`, and the usage of that window
//! only falls as `t` grows. So the earliest slot is the latest of: now, the tail, the
//! cooldown, the paced slot, and for each limit the moment enough of its oldest buckets
//! have left the window.
//!
//! Pacing is GCRA (virtual scheduling with a theoretical arrival time `tat`, interval
//! `T`, burst tolerance `tau`), with one change: the burst tolerance serves only an
//! arrival with nobody queued ahead (`tail <= now`). While slots are booked ahead,
//! consecutive slots are at least `T` apart, so a queue drains at the paced rate and a
//! window rolling over (or a cooldown ending) never releases a burst.
//!
//! # Released slots (holes)
//! A reservation released before it was used (its client went away) whose slot is still
//! ahead becomes a *hole*: its slot and its charge per limit, kept on the account (at
//! most [`MAX_HOLES`]). Its charge stays in the buckets: later slots were fitted with it
//! there. An acquire takes the earliest hole not before now nor the cooldown, no later
//! than the slot the tail would give, whose charge covers the new cost in every limit;
//! the new reservation inherits the hole's slot and charge, and nothing is written to
//! the buckets, the tail or `tat`. So no window's charged total ever grows by taking a
//! hole (every trailing window stays within its limit exactly as when the hole was
//! booked), a hole is removed when taken (taken at most once), and a released
//! reservation is marked so that a later reconcile or release of it changes nothing.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::decision::{
    Budget, Left, LimitStatus, QuotaStatus, RefusalReason, ReleaseOutcome, ReservationId,
};
use crate::error::LimitError;
use crate::quota::{Cost, Limit, LimitId, MAX_CHARGE, Pacing, Quota, Unit};

/// Auto pacing looks only at request limits with windows up to this long.
pub(crate) const AUTO_PACING_MAX_WINDOW_US: u64 = 60_000_000;
/// One second, the burst tolerance of auto pacing.
const SECOND_US: u64 = 1_000_000;
/// Pacing slow-down bounds, in thousandths.
pub(crate) const PACE_MIN: u32 = 1000;
pub(crate) const PACE_MAX: u32 = 64_000;
/// The most released slots kept per account; the earliest is dropped beyond it.
pub(crate) const MAX_HOLES: usize = 64;

/// A released slot: a reservation given back before it was used, its charge left in
/// the buckets for a later request to inherit.
#[derive(Debug, Clone)]
struct Hole {
    /// The slot (µs).
    slot: u64,
    /// The charge left in the buckets, per limit.
    charges: Vec<(LimitId, u64)>,
}

impl Hole {
    fn charge_of(&self, id: &LimitId) -> u64 {
        self.charges
            .iter()
            .find(|(i, _)| i == id)
            .map_or(0, |&(_, v)| v)
    }
}

/// `x` rounded down and saturated to `i64`, as `x.floor() as i64` (and Lua's
/// `math.floor`) gives it: a conversion and a compare, where `f64::floor` is a libm
/// call on a baseline x86-64 target.
fn floor(x: f64) -> i64 {
    let t = x as i64;
    if (t as f64) > x {
        t.saturating_sub(1)
    } else {
        t
    }
}

/// The first bucket that still counts in the window ending at `t`.
pub(crate) fn kmin(t: u64, window_us: u64, bucket_us: u64) -> u64 {
    t.saturating_sub(window_us) / bucket_us
}

/// Pacing interval and burst tolerance (`T`, `tau`) in microseconds, if any.
pub(crate) fn pacing(quota: &Quota, effective: &[u64], pace_permille: u32) -> Option<(u64, u64)> {
    let scale = |t: u64| t * u64::from(pace_permille) / 1000;
    match quota.pacing() {
        Pacing::Off => None,
        Pacing::Fixed { interval, burst } => {
            let t = scale(crate::time::duration_micros(interval)).max(1);
            Some((t, u64::from(burst.max(1) - 1) * t))
        }
        Pacing::Auto => {
            let t = quota
                .limits()
                .iter()
                .zip(effective)
                .filter(|(l, _)| {
                    l.unit() == Unit::Requests && l.window().micros() <= AUTO_PACING_MAX_WINDOW_US
                })
                .map(|(l, &eff)| l.window().micros() / eff)
                .max()?;
            let t = scale(t).max(1);
            let burst = (SECOND_US / t).max(1);
            Some((t, (burst - 1) * t))
        }
    }
}

/// One limit's buckets, oldest first, and their sum.
#[derive(Debug)]
struct Buckets {
    entries: VecDeque<(u64, u64)>,
    total: u64,
    /// When the oldest bucket leaves the window (`u64::MAX` when there is none):
    /// before then, eviction has nothing to do and costs one comparison.
    next_exit: u64,
}

impl Default for Buckets {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            total: 0,
            next_exit: u64::MAX,
        }
    }
}

impl Buckets {
    fn evict(&mut self, now: u64, window_us: u64, bucket_us: u64) {
        if now < self.next_exit {
            return;
        }
        let kmin = kmin(now, window_us, bucket_us);
        while let Some(&(k, amount)) = self.entries.front() {
            if k >= kmin {
                break;
            }
            self.total -= amount;
            self.entries.pop_front();
        }
        self.next_exit = self
            .entries
            .front()
            .map_or(u64::MAX, |&(k, _)| (k + 1) * bucket_us + window_us);
    }

    /// Adds `delta` to bucket `k` (creating it), never taking it below zero nor the
    /// total above [`MAX_CHARGE`] (the excess of a huge charge is dropped: the window
    /// is full either way, and the total stays the exact sum of the buckets).
    fn add(&mut self, k: u64, delta: i128, window_us: u64, bucket_us: u64) {
        let pos = match self.entries.iter().rposition(|&(i, _)| i <= k) {
            Some(p) if self.entries[p].0 == k => p,
            Some(p) => {
                self.entries.insert(p + 1, (k, 0));
                p + 1
            }
            None => {
                self.entries.push_front((k, 0));
                self.next_exit = (k + 1) * bucket_us + window_us;
                0
            }
        };
        let old = self.entries[pos].1;
        let room = i128::from(MAX_CHARGE.saturating_sub(self.total));
        let new = (i128::from(old) + delta.min(room)).clamp(0, i128::from(MAX_CHARGE)) as u64;
        self.entries[pos].1 = new;
        self.total = self.total - old + new;
    }

    /// The earliest moment, not before `from`, at which `charge` fits under `limit`.
    fn fit(&self, from: u64, charge: u64, limit: u64, window_us: u64, bucket_us: u64) -> u64 {
        let Some(needed) = (self.total + charge).checked_sub(limit).filter(|&n| n > 0) else {
            return from;
        };
        let mut freed = 0;
        for &(k, amount) in &self.entries {
            freed += amount;
            if freed >= needed {
                return from.max((k + 1) * bucket_us + window_us);
            }
        }
        // Unreachable while charge <= limit: everything leaves the window eventually.
        from
    }
}

/// One account's copy of a quota.
#[derive(Debug, Default)]
pub(crate) struct AccountState {
    windows: Vec<(LimitId, Buckets)>,
    /// The latest slot given (µs).
    tail: u64,
    /// GCRA theoretical arrival time (µs).
    tat: u64,
    cooldown_until: u64,
    effective: Vec<(LimitId, u64)>,
    pace_permille: u32,
    disabled: Option<String>,
    reconciled: Marks<Vec<(LimitId, u64)>>,
    /// Released reservations (until when the mark is kept, µs): a later reconcile or
    /// release of one changes nothing.
    released: Marks<()>,
    /// Released slots still ahead, for a later request to take.
    holes: Vec<Hole>,
    /// When the windows expire unless written again (µs): the Redis hash's TTL.
    windows_expire_at: u64,
    /// When the learned state expires unless written again (µs): the Redis hash's TTL.
    state_expire_at: u64,
}

/// Marks an account holds before expired ones are dropped.
const SWEEP_MARKS: usize = 1024;

/// Idempotency marks of one account (reservations reconciled, with what each reconcile
/// applied, or released), each kept until it expires, as Redis keeps a mark key until
/// its TTL. Expired marks leave from the front of a queue in insertion order: O(1)
/// amortised per mark. (Sweeping the whole map on every insert once it held 1,024
/// marks cost O(marks) per reconcile, and marks live for the reconcile window, at least
/// 20 minutes: at 5,000 reconciles/s that was 45% of a gateway's CPU, #17.)
#[derive(Debug)]
struct Marks<V> {
    map: HashMap<ReservationId, (V, u64)>,
    /// (expiry, id) in insertion order; expiries are nearly sorted (a slot booked ahead
    /// expires later), so a mark may outlive its expiry until the ones before it go.
    order: VecDeque<(u64, ReservationId)>,
}

impl<V> Default for Marks<V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<V> Marks<V> {
    fn get(&self, id: &ReservationId) -> Option<&V> {
        self.map.get(id).map(|(v, _)| v)
    }

    fn contains(&self, id: &ReservationId) -> bool {
        self.map.contains_key(id)
    }

    /// Sets the mark of `id` to `value`, kept until `expires` (a mark set again keeps
    /// its first expiry, as a reconcile's mark keeps its slot's deadline), after
    /// dropping the marks that expired by `now`.
    fn set(&mut self, id: ReservationId, value: V, expires: u64, now: u64) {
        // Marks stay past their expiry until an account holds `SWEEP_MARKS` (as they
        // always did: a late repeat of a small account's reconcile still finds its mark).
        while self.map.len() >= SWEEP_MARKS
            && let Some(&(at, old)) = self.order.front()
        {
            if at > now {
                break;
            }
            self.order.pop_front();
            if self.map.get(&old).is_some_and(|(_, e)| *e == at) {
                self.map.remove(&old);
            }
        }
        match self.map.get_mut(&id) {
            Some(mark) => mark.0 = value,
            None => {
                self.map.insert(id, (value, expires));
                self.order.push_back((expires, id));
            }
        }
    }
}

/// How long learned state (cooldown aside) survives its last change.
pub(crate) const STATE_TTL_US: u64 = 24 * 3600 * SECOND_US;

/// How long after `slot` the windows of `quota` must be kept.
pub(crate) fn windows_ttl_after(quota: &Quota) -> u64 {
    quota.longest_window().micros() + SECOND_US
}

/// Where a candidate could go, before anything is written.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) slot: u64,
    pub(crate) binding: Binding,
    /// Charges and limits in force are not kept: a plan is made and committed under
    /// one lock, and both are cheaper to compute again than to copy (a plan is moved
    /// out of `plan_paced` and into `settle`).
    pacing: Option<(u64, u64)>,
    /// The released slot this plan takes (index into the account's holes), if any.
    hole: Option<usize>,
}

/// The constraint that set a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Binding {
    Now,
    Queue,
    Cooldown,
    Pacing,
    Limit(usize),
}

impl Binding {
    pub(crate) fn reason(&self, quota: &Quota) -> RefusalReason {
        match self {
            Binding::Now | Binding::Queue => RefusalReason::Queue,
            Binding::Cooldown => RefusalReason::Cooldown,
            Binding::Pacing => RefusalReason::Pacing,
            Binding::Limit(i) => RefusalReason::Limit(quota.limits()[*i].id().clone()),
        }
    }
}

/// What stops a candidate from being planned at all.
#[derive(Debug)]
pub(crate) enum Unplannable {
    Disabled(String),
    Capacity(LimitError),
}

impl AccountState {
    /// The buckets of limit `id`, which is usually the `hint`-th limit.
    fn window_at(&mut self, hint: usize, id: &LimitId) -> &mut Buckets {
        if self.windows.get(hint).is_some_and(|(i, _)| i == id) {
            return &mut self.windows[hint].1;
        }
        self.window_mut(id)
    }

    fn window_mut(&mut self, id: &LimitId) -> &mut Buckets {
        let pos = match self.windows.iter().position(|(i, _)| i == id) {
            Some(p) => p,
            None => {
                self.windows.push((id.clone(), Buckets::default()));
                self.windows.len() - 1
            }
        };
        &mut self.windows[pos].1
    }

    fn pace(&self) -> u32 {
        if self.pace_permille == 0 {
            PACE_MIN
        } else {
            self.pace_permille
        }
    }

    /// The limit in force for `limit`.
    fn effective_of(&self, limit: &Limit) -> u64 {
        let learned = self.effective.iter().find(|(id, _)| id == limit.id());
        learned.map_or(limit.amount(), |&(_, v)| v.min(limit.amount()))
    }

    /// Drops every bucket that left its window by `now`.
    pub(crate) fn evict(&mut self, quota: &Quota, now: u64) {
        for (i, limit) in quota.limits().iter().enumerate() {
            let w = quota.bucket_micros(i);
            self.window_at(i, limit.id())
                .evict(now, limit.window().micros(), w);
        }
    }

    /// Plans the earliest slot for `cost` (after eviction at `now`); writes nothing
    /// but eviction.
    #[cfg(test)]
    pub(crate) fn plan(
        &mut self,
        quota: &Quota,
        cost: &Cost,
        now: u64,
    ) -> Result<Plan, Unplannable> {
        self.plan_paced(quota, cost, now, true, 0)
    }

    /// [`plan`](Self::plan); without `burst`, pacing gives no burst tolerance (the
    /// slot is never before the theoretical arrival time), as for a batch tenant, so
    /// that its slots are one interval apart even when nothing is queued; `reserve`
    /// requests of each request limit (at most half of it) are left out of reach.
    pub(crate) fn plan_paced(
        &mut self,
        quota: &Quota,
        cost: &Cost,
        now: u64,
        burst: bool,
        reserve: u64,
    ) -> Result<Plan, Unplannable> {
        if let Some(reason) = &self.disabled {
            return Err(Unplannable::Disabled(reason.clone()));
        }
        self.evict(quota, now);
        let n = quota.limits().len();
        let mut effective = [0; Quota::MAX_LIMITS];
        let mut charges = [0; Quota::MAX_LIMITS];
        for (i, l) in quota.limits().iter().enumerate() {
            effective[i] = self.effective_of(l);
            charges[i] = l.charge(cost);
        }
        for ((limit, &eff), &charge) in quota.limits().iter().zip(&effective).zip(&charges) {
            if charge > eff {
                return Err(Unplannable::Capacity(LimitError::InsufficientCapacity {
                    limit: limit.id().clone(),
                    capacity: eff,
                    cost: charge,
                }));
            }
        }
        let pacing = if self.effective.is_empty() && self.pace() == PACE_MIN {
            quota.configured_pacing()
        } else {
            pacing(quota, &effective[..n], self.pace())
        };
        let mut slot = now;
        let mut binding = Binding::Now;
        let raise = |t: u64, b: Binding, slot: &mut u64, binding: &mut Binding| {
            if t > *slot {
                *slot = t;
                *binding = b;
            }
        };
        raise(self.tail, Binding::Queue, &mut slot, &mut binding);
        raise(
            self.cooldown_until,
            Binding::Cooldown,
            &mut slot,
            &mut binding,
        );
        if let Some((t, tau)) = pacing
            && cost.requests > 0
        {
            // The burst tolerance serves only arrivals with nobody queued ahead; while
            // slots are booked ahead, consecutive slots are at least one interval apart.
            let mut paced = if burst {
                self.tat.saturating_sub(tau)
            } else {
                self.tat
            };
            if self.tail > now {
                paced = paced.max(self.tail + t);
            }
            raise(paced, Binding::Pacing, &mut slot, &mut binding);
        }
        let from = slot;
        for (i, limit) in quota.limits().iter().enumerate() {
            let (eff, charge) = (effective[i], charges[i]);
            let w = quota.bucket_micros(i);
            let buckets = self.window_at(i, limit.id());
            if charge > 0 {
                // What this ask may fill: all of the limit, or for a batch tenant all
                // but its reserve of a request limit (at most half held back).
                let cap = if limit.unit() == crate::Unit::Requests {
                    (eff - reserve.min(eff / 2)).max(charge)
                } else {
                    eff
                };
                let t = buckets.fit(from, charge, cap, limit.window().micros(), w);
                raise(t, Binding::Limit(i), &mut slot, &mut binding);
            }
        }
        // A released slot no later than the tail's, covering the cost in every limit.
        let mut hole = None;
        if charges[..n].iter().any(|&c| c > 0) {
            let not_before = now.max(self.cooldown_until);
            self.holes.retain(|h| h.slot >= now);
            for (j, h) in self.holes.iter().enumerate() {
                let covers = quota
                    .limits()
                    .iter()
                    .zip(&charges)
                    .all(|(l, &c)| h.charge_of(l.id()) >= c);
                if covers
                    && h.slot >= not_before
                    && h.slot <= slot
                    && hole.is_none_or(|_| h.slot < slot)
                {
                    slot = h.slot;
                    binding = if h.slot > now {
                        Binding::Queue
                    } else {
                        Binding::Now
                    };
                    hole = Some(j);
                }
            }
        }
        Ok(Plan {
            slot,
            binding,
            pacing,
            hole,
        })
    }

    /// Headroom after charging `cost`, in millionths of the tightest limit it charges
    /// (may be negative; `i64::MAX` when it charges none): how candidates with the
    /// same slot are ranked (`acquire.lua` computes it alike). Read after
    /// [`plan_paced`](Self::plan_paced), which evicted; only a scan of several
    /// candidates needs it.
    pub(crate) fn headroom(&self, quota: &Quota, cost: &Cost) -> i64 {
        let mut headroom = i64::MAX;
        for (i, limit) in quota.limits().iter().enumerate() {
            let charge = limit.charge(cost);
            if charge > 0 {
                let eff = self.effective_of(limit);
                let total = match self.windows.get(i) {
                    Some((id, b)) if id == limit.id() => b.total,
                    _ => self
                        .windows
                        .iter()
                        .find(|(id, _)| id == limit.id())
                        .map_or(0, |(_, b)| b.total),
                };
                let left = eff as f64 - total as f64 - charge as f64;
                headroom = headroom.min(floor(left / eff as f64 * 1e6));
            }
        }
        headroom
    }

    /// Records `plan` for `cost`.
    pub(crate) fn commit(&mut self, quota: &Quota, plan: &Plan, cost: &Cost, now: u64) {
        if let Some(j) = plan.hole {
            // The hole's charge is already in the buckets and its slot at or before the
            // tail, paced when it was booked: taking it writes nothing else.
            self.holes.remove(j);
            return;
        }
        for (i, limit) in quota.limits().iter().enumerate() {
            let charge = limit.charge(cost);
            if charge > 0 {
                let w = quota.bucket_micros(i);
                self.window_at(i, limit.id()).add(
                    plan.slot / w,
                    i128::from(charge),
                    limit.window().micros(),
                    w,
                );
            }
        }
        self.tail = self.tail.max(plan.slot);
        if let Some((t, _)) = plan.pacing
            && cost.requests > 0
        {
            self.tat = self.tat.max(plan.slot) + t * cost.requests;
        }
        self.keep_windows(quota, self.tail.max(self.tat).max(now));
    }

    /// The budget left per limit, counting everything recorded.
    #[inline(always)]
    pub(crate) fn remaining(&mut self, quota: &Quota) -> Budget {
        let mut budget = Budget::default();
        for (i, l) in quota.limits().iter().enumerate() {
            let effective = self.effective_of(l);
            let used = self.window_at(i, l.id()).total;
            budget.push(Left {
                effective,
                remaining: effective.saturating_sub(used),
            });
        }
        budget
    }

    /// Replaces a reservation's charges by `actual`'s (idempotent per reservation id).
    pub(crate) fn reconcile(
        &mut self,
        quota: &Quota,
        id: ReservationId,
        slot: u64,
        estimate: &Cost,
        actual: &Cost,
        now: u64,
    ) {
        if self.released.contains(&id) {
            // Released before it was used: its charge belongs to a hole now.
            return;
        }
        let deadline = slot + crate::time::duration_micros(quota.reconcile_window());
        if now > deadline {
            // After the reconcile window its mark may be gone: ignored (reconcile.lua).
            return;
        }
        self.evict(quota, now);
        let previous = self.reconciled.get(&id).cloned();
        let mut applied = Vec::with_capacity(quota.limits().len());
        for (i, limit) in quota.limits().iter().enumerate() {
            let before = match &previous {
                Some(p) => p
                    .iter()
                    .find(|(i, _)| i == limit.id())
                    .map_or(0, |&(_, v)| v),
                None => limit.charge(estimate),
            };
            let after = limit.charge(actual);
            let delta = i128::from(after) - i128::from(before);
            let (window, w) = (limit.window().micros(), quota.bucket_micros(i));
            let k = slot / w;
            if delta != 0 && k >= kmin(now, window, w) {
                self.window_mut(limit.id()).add(k, delta, window, w);
            } else if delta > 0 {
                self.window_mut(limit.id()).add(now / w, delta, window, w);
            }
            applied.push((limit.id().clone(), after));
        }
        self.reconciled.set(id, applied, deadline, now);
        self.keep_windows(quota, now);
    }

    /// Gives back a reservation that was not used: its slot becomes a hole while it is
    /// still ahead (its charge stays in the buckets). Idempotent; a reservation already
    /// reconciled is left alone.
    pub(crate) fn release(
        &mut self,
        quota: &Quota,
        id: ReservationId,
        slot: u64,
        estimate: &Cost,
        now: u64,
    ) -> ReleaseOutcome {
        if self.released.contains(&id) || self.reconciled.contains(&id) {
            return ReleaseOutcome::AlreadySettled;
        }
        let expires = slot.max(now) + 2 * quota.longest_window().micros();
        self.released.set(id, (), expires, now);
        self.evict(quota, now);
        // A slot after the tail was never booked here (state lost since): no hole.
        if slot <= now || slot > self.tail {
            return ReleaseOutcome::Passed;
        }
        self.holes.retain(|h| h.slot >= now);
        if self.holes.len() >= MAX_HOLES {
            // Drop the earliest: the one closest to passing unused.
            if let Some(j) = (0..self.holes.len()).min_by_key(|&j| self.holes[j].slot) {
                self.holes.remove(j);
            }
        }
        let charges: Vec<(LimitId, u64)> = quota
            .limits()
            .iter()
            .map(|l| (l.id().clone(), l.charge(estimate)))
            .collect();
        if charges.iter().all(|&(_, c)| c == 0) {
            return ReleaseOutcome::Passed;
        }
        self.holes.push(Hole { slot, charges });
        ReleaseOutcome::Reusable
    }

    /// Adds usage seen outside Sluice to the current buckets, unchecked.
    pub(crate) fn record_usage(&mut self, quota: &Quota, cost: &Cost, now: u64) {
        self.evict(quota, now);
        for (i, limit) in quota.limits().iter().enumerate() {
            let charge = limit.charge(cost);
            if charge > 0 {
                let w = quota.bucket_micros(i);
                self.window_mut(limit.id()).add(
                    now / w,
                    i128::from(charge),
                    limit.window().micros(),
                    w,
                );
            }
        }
        self.keep_windows(quota, now);
    }

    /// Adds per-limit `charges` (in `quota`'s limit order) to the bucket of `at`,
    /// unchecked; a charge whose bucket already left its window by `now` is dropped.
    pub(crate) fn record_charges(&mut self, quota: &Quota, charges: &[u64], at: u64, now: u64) {
        self.evict(quota, now);
        for (i, (limit, &charge)) in quota.limits().iter().zip(charges).enumerate() {
            let (window, w) = (limit.window().micros(), quota.bucket_micros(i));
            if charge > 0 && at / w >= kmin(now, window, w) {
                self.window_mut(limit.id())
                    .add(at / w, i128::from(charge), window, w);
            }
        }
        self.keep_windows(quota, at.max(now));
    }

    /// Applies an operator's or the sidecar's change.
    pub(crate) fn update(&mut self, quota: &Quota, change: &crate::StateChange, now: u64) {
        use crate::StateChange;
        match change {
            StateChange::Cooldown(d) => {
                let until = now + crate::time::duration_micros(*d);
                self.cooldown_until = self.cooldown_until.max(until);
                let effective: Vec<u64> = quota
                    .limits()
                    .iter()
                    .map(|l| self.effective_of(l))
                    .collect();
                if let Some((_, tau)) = pacing(quota, &effective, self.pace()) {
                    self.tat = self.tat.max(self.cooldown_until + tau);
                }
            }
            StateChange::ClearCooldown => self.cooldown_until = 0,
            StateChange::EffectiveLimit { limit, value } => {
                self.effective.retain(|(id, _)| id != limit);
                if let Some(v) = value {
                    self.effective
                        .push((limit.clone(), (*v).clamp(1, MAX_CHARGE)));
                }
            }
            StateChange::PacingFactor(pm) => self.pace_permille = (*pm).clamp(PACE_MIN, PACE_MAX),
            StateChange::Disable(reason) => self.disabled = Some(reason.clone()),
            StateChange::Enable => self.disabled = None,
        }
        self.state_expire_at = (now + STATE_TTL_US).max(self.cooldown_until);
        self.keep_windows(quota, self.tat.max(now));
    }

    /// The account as it stands at `now`.
    pub(crate) fn status(&mut self, quota: &Quota, now: u64) -> QuotaStatus {
        self.evict(quota, now);
        let limits = quota
            .limits()
            .iter()
            .map(|l| LimitStatus {
                limit: l.id().clone(),
                unit: l.unit(),
                window: l.window(),
                configured: l.amount(),
                effective: self.effective_of(l),
                used: self.window_mut(l.id()).total,
            })
            .collect();
        QuotaStatus {
            limits,
            cooldown: (self.cooldown_until > now)
                .then(|| Duration::from_micros(self.cooldown_until - now)),
            disabled: self.disabled.clone(),
            pacing_permille: self.pace(),
            booked_ahead: Duration::from_micros(self.tail.saturating_sub(now)),
        }
    }

    /// Keeps the windows until `quota`'s longest window has passed after `at`.
    fn keep_windows(&mut self, quota: &Quota, at: u64) {
        self.windows_expire_at = self.windows_expire_at.max(at + windows_ttl_after(quota));
    }

    /// True when both the windows and the learned state have expired by `now`, as the
    /// Redis keys would have: the account can be forgotten.
    pub(crate) fn expired(&self, now: u64) -> bool {
        now >= self.windows_expire_at && now >= self.state_expire_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::Window;

    fn quota(limit: u64, window_ms: u64, buckets: u32) -> Quota {
        let w = Window::new(Duration::from_millis(window_ms)).unwrap();
        Quota::new(vec![Limit::requests(limit, w).unwrap()])
            .unwrap()
            .with_pacing(Pacing::Off)
            .unwrap()
            .with_buckets(buckets)
            .unwrap()
    }

    #[test]
    fn marks_leave_as_they_expire_and_keep_their_first_expiry() {
        let mut marks = Marks::default();
        let id = ReservationId::from_u64;
        // One mark per microsecond, each living 10 us: past SWEEP_MARKS, only the
        // expired ones leave, from the front, and never more than SWEEP_MARKS are held.
        for t in 0..10_000u64 {
            marks.set(id(t), t, t + 10, t);
            assert!(
                marks.map.len() <= SWEEP_MARKS,
                "{} marks at {t}",
                marks.map.len()
            );
            assert_eq!(marks.map.len(), marks.order.len());
        }
        assert_eq!(marks.get(&id(9_999)), Some(&9_999));
        assert!(
            marks.contains(&id(9_000)),
            "kept past its expiry below the sweep"
        );
        assert!(!marks.contains(&id(8_000)));
        // Set again: the value changes, the expiry does not.
        marks.set(id(9_999), 7, 1_000_000, 9_999);
        assert_eq!(marks.map[&id(9_999)], (7, 10_009));
    }

    #[test]
    fn floor_is_f64_floor_saturated() {
        for x in [
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.0,
            -1.0,
            499_999.999,
            -2.5,
            1e6,
            -1e6,
            9.3e18,
            -9.3e18,
            -9e21,
            1e300,
            f64::MIN,
        ] {
            assert_eq!(floor(x), x.floor() as i64, "{x}");
        }
    }

    #[test]
    fn buckets_add_in_any_order_and_clamp() {
        let mut b = Buckets::default();
        // Window 10 us, buckets of 1 us: bucket k leaves at k + 11.
        b.add(5, 3, 10, 1);
        b.add(2, 1, 10, 1);
        b.add(9, 4, 10, 1);
        b.add(5, -10, 10, 1);
        assert_eq!(
            b.entries.iter().copied().collect::<Vec<_>>(),
            vec![(2, 1), (5, 0), (9, 4)]
        );
        assert_eq!((b.total, b.next_exit), (5, 13));
        b.evict(12, 10, 1);
        assert_eq!(b.total, 5, "bucket 2 stays until 13");
        b.evict(16, 10, 1);
        assert_eq!((b.total, b.next_exit), (4, 20));
    }

    #[test]
    fn slot_waits_for_the_oldest_bucket_to_leave() {
        // 2 per 1000 ms, 10 buckets of 100 ms.
        let q = quota(2, 1000, 10);
        let mut s = AccountState::default();
        let one = Cost::request(0, 0);
        for now in [1_000_050, 1_000_150] {
            let p = s.plan(&q, &one, now).unwrap();
            assert_eq!(p.slot, now);
            s.commit(&q, &p, &one, now);
        }
        // The first charge sits in bucket 10 (1.0 s–1.1 s): it leaves the window ending
        // at t once t - 1 s >= 1.1 s.
        let p = s.plan(&q, &one, 1_000_200).unwrap();
        assert_eq!(p.slot, 2_100_000);
        assert_eq!(p.binding, Binding::Limit(0));
    }

    #[test]
    fn auto_pacing_uses_the_tightest_short_request_limit() {
        let minute = Window::secs(60).unwrap();
        let q = Quota::new(vec![
            Limit::requests(600, minute).unwrap(),
            Limit::requests(10, Window::secs(1).unwrap()).unwrap(),
            Limit::requests(100_000, Window::secs(86400).unwrap()).unwrap(),
        ])
        .unwrap();
        // 60 s / 600 = 100 ms; 1 s / 10 = 100 ms; the daily limit is ignored.
        assert_eq!(
            pacing(&q, &[600, 10, 100_000], 1000),
            Some((100_000, 900_000))
        );
        // A learned limit of 5 per second halves the rate; the burst shrinks with it.
        assert_eq!(
            pacing(&q, &[600, 5, 100_000], 1000),
            Some((200_000, 800_000))
        );
        // A slow-down factor of 2 does the same.
        assert_eq!(
            pacing(&q, &[600, 10, 100_000], 2000),
            Some((200_000, 800_000))
        );
    }
}

//! Weighted fair share of a quota's queue across the whole fleet.
//!
//! When a quota is the bottleneck, requests queue for future slots (first come, first
//! served, across every replica). Left alone, each tenant gets what its callers' share
//! of arrivals is: three tenants on three replicas with equal gates are served 1 : 1 : 1
//! whatever their weights. With a [`Share`], [`Store::acquire_for`](crate::Store::acquire_for)
//! also asks the quota's *fair ledger* whether the tenant may take a queued slot now,
//! in the same atomic decision as the slot itself. The rule is start-time fair queueing
//! applied to admission into the queue:
//!
//! - **Virtual time.** Each slot booked ahead carries a start tag `S = max(V, F)`, where
//!   `F` is the tenant's finish tag (the start tag of its last booking plus
//!   [`TAG_SCALE`]` / weight`) and `V` the quota's virtual time, the start tag of the
//!   latest booked slot that has passed. A tenant may book while `S < V + HORIZON`
//!   ([`HORIZON`] slots per unit of weight); its finish tag then moves on by
//!   `TAG_SCALE / weight`.
//! - **Weights.** Backlogged tenants each stay within the horizon of `V`, so over any
//!   span each books `weight × ΔV / TAG_SCALE` slots, give or take its horizon: shares
//!   follow the weights among the tenants that are asking, whichever replicas their
//!   requests reach, and a tenant queues at most about `HORIZON × weight` slots ahead.
//! - **Work-conserving.** A tenant that asks less than its share lags (`F < V`) and
//!   books at once; a tenant alone in the queue (no other interactive tenant has a slot
//!   ahead) is never refused; a slot free now (no queue) is never refused for fairness.
//!   An idle tenant holds nothing back: the others' tags are measured against `V`.
//! - **Priority classes.** A [`Priority::Batch`] tenant never books ahead: it takes a
//!   slot only when one is free now, and asked for a later one it is refused with the
//!   wait until that slot (when it may find it free). Its slots are also paced without
//!   the burst tolerance (one pacing interval apart even when nothing queues). So an
//!   interactive request never queues behind a batch request nor finds a batch burst
//!   filling the window: it waits at most for the next slot to come free, under one
//!   pacing interval when no other interactive request is queued, while batch fills
//!   whatever interactive leaves. With [`Share::with_reserve`], batch also leaves that
//!   many requests of every request limit's window free (at most half of it), so that
//!   interactive requests arriving together find capacity at once.
//! - **A refusal charges nothing** and says when to ask again: when the queue's
//!   earliest booked slot passes (the earliest moment `V` moves).
//!
//! The ledger counts requests (slots), not tokens. Both stores keep it beside the
//! quota's accounts: [`Ledger`] in process, `acquire.lua` in Redis (keys
//! `sluice:{g}:f`, the slots booked ahead, and `sluice:{g}:fc`, the tags), with the
//! same integer arithmetic.

use std::collections::HashMap;

/// Who asks for a slot, for the fair share of a quota's queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    tenant: String,
    weight: u32,
    priority: Priority,
    reserve: u32,
}

/// A tenant's class: interactive tenants share the queue by weight; batch tenants take
/// only what interactive ones leave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Priority {
    /// Served by weight among the other interactive tenants (the default).
    #[default]
    Interactive,
    /// Takes only slots free now: never queued ahead of anyone.
    Batch,
}

impl Share {
    /// `tenant`'s share: its `weight` (at least 1) among active tenants of `priority`.
    pub fn new(tenant: impl Into<String>, weight: u32, priority: Priority) -> Self {
        Self {
            tenant: tenant.into(),
            weight: weight.max(1),
            priority,
            reserve: 0,
        }
    }

    /// The same share, for a [`Priority::Batch`] tenant, keeping `requests` of every
    /// request limit's window out of its reach (at most half of the limit): capacity
    /// that interactive tenants find free at once when they arrive, so that they wait
    /// less than one pacing interval while batch fills the rest. Ignored for
    /// interactive tenants.
    ///
    /// ```
    /// use sluice_limiter::{Priority, Share};
    /// let etl = Share::new("etl", 1, Priority::Batch).with_reserve(1);
    /// assert_eq!(etl.reserve(), 1);
    /// ```
    pub fn with_reserve(mut self, requests: u32) -> Self {
        self.reserve = requests;
        self
    }

    /// What a batch tenant leaves of each request limit (0 for interactive tenants).
    pub fn reserve(&self) -> u32 {
        if self.priority == Priority::Batch {
            self.reserve
        } else {
            0
        }
    }

    /// The tenant's name.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Its weight (at least 1).
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Its class.
    pub fn priority(&self) -> Priority {
        self.priority
    }
}

/// Virtual time per slot at weight 1 (tags are integers, the same in both stores).
pub(crate) const TAG_SCALE: u64 = 1_000_000;

/// How far ahead of the quota's virtual time a tenant may book, in slots per unit of
/// weight (× [`TAG_SCALE`]).
pub(crate) const HORIZON: u64 = 4;

/// One slot booked ahead, as the ledger keeps it.
#[derive(Clone, Debug)]
struct Booking {
    slot: u64,
    tenant: String,
    /// Its start tag.
    tag: u64,
    batch: bool,
}

/// The fair ledger of one quota (all its accounts): the slots booked ahead, the
/// virtual time and each tenant's finish tag (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    bookings: Vec<Booking>,
    virtual_time: u64,
    finish: HashMap<String, u64>,
}

impl Ledger {
    /// Whether `share` may book `slot`, later than `now`: `Ok(tag)`, its start tag, or
    /// `Err` with the µs to wait before asking again (a batch tenant: until `slot`).
    /// Only the passing of time changes the ledger here (booked slots that passed move
    /// the virtual time on).
    pub(crate) fn admit(&mut self, share: &Share, now: u64, slot: u64) -> Result<u64, u64> {
        for b in self.bookings.iter().filter(|b| b.slot <= now) {
            self.virtual_time = self.virtual_time.max(b.tag);
        }
        self.bookings.retain(|b| b.slot > now);
        if share.priority == Priority::Batch {
            return Err(slot.saturating_sub(now).max(1));
        }
        let start = self.start(share);
        let Some(earliest) = self.bookings.iter().map(|b| b.slot).min() else {
            return Ok(start);
        };
        let contended = self
            .bookings
            .iter()
            .any(|b| !b.batch && b.tenant != share.tenant);
        if contended && start >= self.virtual_time + HORIZON * TAG_SCALE {
            return Err(earliest - now);
        }
        Ok(start)
    }

    /// Books `slot` (later than now) for `share` at start tag `tag` (from
    /// [`admit`](Self::admit)).
    pub(crate) fn book(&mut self, share: &Share, slot: u64, tag: u64) {
        let batch = share.priority == Priority::Batch;
        if !batch {
            let finish = tag + TAG_SCALE / u64::from(share.weight);
            self.finish.insert(share.tenant.clone(), finish);
        }
        self.bookings.push(Booking {
            slot,
            tenant: share.tenant.clone(),
            tag,
            batch,
        });
    }

    /// True when nothing is booked ahead of `now` and every finish tag is behind the
    /// virtual time (the ledger may be dropped without changing any decision).
    pub(crate) fn idle(&self, now: u64) -> bool {
        self.bookings.iter().all(|b| b.slot <= now)
            && self.finish.values().all(|&f| f <= self.virtual_time)
    }

    fn start(&self, share: &Share) -> u64 {
        let finish = self.finish.get(&share.tenant).copied().unwrap_or(0);
        self.virtual_time.max(finish)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(t: &str, w: u32) -> Share {
        Share::new(t, w, Priority::Interactive)
    }

    /// Books `n` slots one microsecond apart, for whoever is admitted in round-robin
    /// order of `asking`, none passing; returns how many each got.
    fn run(asking: &[Share], n: usize) -> Vec<usize> {
        let mut ledger = Ledger::default();
        let mut got = vec![0; asking.len()];
        let mut slot = 1_000_000;
        let mut i = 0;
        while got.iter().sum::<usize>() < n {
            let s = &asking[i % asking.len()];
            if let Ok(tag) = ledger.admit(s, 1, 101) {
                slot += 1;
                ledger.book(s, slot, tag);
                got[i % asking.len()] += 1;
            }
            i += 1;
            assert!(i < 100 * n, "stuck at {got:?}");
        }
        got
    }

    /// Like `run`, but the earliest booked slot passes after every `n`-th booking, so
    /// the queue moves like a provider serving it.
    fn serve(asking: &[Share], bookings: usize) -> Vec<usize> {
        let mut ledger = Ledger::default();
        let mut got = vec![0; asking.len()];
        let (mut now, mut tail) = (0, 0);
        let mut i = 0;
        let mut booked = 0;
        while booked < bookings {
            let who = i % asking.len();
            i += 1;
            match ledger.admit(&asking[who], now, now + 100) {
                Ok(tag) => {
                    tail = tail.max(now) + 10;
                    ledger.book(&asking[who], tail, tag);
                    got[who] += 1;
                    booked += 1;
                }
                // Nobody may book: time passes until the next slot.
                Err(wait) if i % asking.len() == 0 => now += wait,
                Err(_) => {}
            }
        }
        got
    }

    #[test]
    fn backlogged_tenants_book_by_their_weights() {
        let tenants = [share("a", 3), share("b", 2), share("c", 1)];
        let got = serve(&tenants, 6000);
        for (g, want) in got.iter().zip([3000, 2000, 1000]) {
            assert!(g.abs_diff(want) <= 3 * HORIZON as usize, "{got:?}");
        }
    }

    #[test]
    fn a_tenant_books_at_most_its_horizon_ahead_while_others_queue() {
        let got = run(&[share("a", 3), share("b", 1)], 16);
        assert_eq!(got, [12, 4], "HORIZON × weight each");
    }

    #[test]
    fn an_empty_queue_admits_anyone_and_a_lone_tenant_is_never_refused() {
        let mut ledger = Ledger::default();
        for slot in 10..100 {
            let tag = ledger.admit(&share("a", 1), 5, 105).expect("alone");
            ledger.book(&share("a", 1), slot, tag);
        }
    }

    #[test]
    fn a_refused_tenant_asks_again_when_the_earliest_slot_passes() {
        let mut ledger = Ledger::default();
        let (a, b) = (share("a", 1), share("b", 1));
        for (who, slot) in [
            (&b, 50),
            (&b, 60),
            (&b, 500),
            (&a, 100),
            (&a, 200),
            (&a, 300),
            (&a, 400),
        ] {
            let tag = ledger.admit(who, 0, 100).unwrap();
            ledger.book(who, slot, tag);
        }
        // a booked 4 = HORIZON × 1 ahead of V = 0 while b queues too.
        assert_eq!(
            ledger.admit(&a, 10, 110),
            Err(40),
            "b's slot at 50 is the earliest"
        );
        assert!(
            ledger.admit(&b, 10, 110).is_ok(),
            "b is behind a: it books at once"
        );
        // By 150, b's second slot (tag 1) passed: V = 1, a's turn.
        assert!(ledger.admit(&a, 150, 250).is_ok());
    }

    #[test]
    fn batch_never_books_ahead() {
        let mut ledger = Ledger::default();
        let batch = Share::new("etl", 5, Priority::Batch);
        assert_eq!(
            ledger.admit(&batch, 0, 100),
            Err(100),
            "even with nothing queued"
        );
        let web = share("web", 1);
        let tag = ledger.admit(&web, 0, 100).expect("interactive books");
        ledger.book(&web, 100, tag);
        assert_eq!(
            ledger.admit(&batch, 10, 200),
            Err(190),
            "until the slot it found"
        );
        assert!(ledger.admit(&web, 10, 200).is_ok(), "interactive goes on");
    }

    #[test]
    fn a_tenant_asking_below_its_share_is_never_held_back() {
        let mut ledger = Ledger::default();
        let (heavy, light) = (share("heavy", 1), share("light", 1));
        let (mut now, mut light_booked, mut heavy_booked) = (0, 0, 0);
        for round in 0..200 {
            // light asks for one slot every fourth round, heavy for all it may have.
            if round % 4 == 0 {
                let tag = ledger
                    .admit(&light, now, now + 350)
                    .unwrap_or_else(|_| panic!("round {round}"));
                ledger.book(&light, now + 350, tag);
                light_booked += 1;
            }
            while let Ok(tag) = ledger.admit(&heavy, now, now + 100) {
                ledger.book(&heavy, now + 350, tag);
                heavy_booked += 1;
            }
            now += 100;
        }
        assert!(
            heavy_booked > 2 * light_booked,
            "heavy takes what light leaves: {heavy_booked}"
        );
    }
}

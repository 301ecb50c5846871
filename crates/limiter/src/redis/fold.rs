//! Reconciles carried by the next acquire (#17), so that a request costs Redis one
//! script call instead of two.
//!
//! [`RedisStore::reconcile`](super::RedisStore) does not call Redis at once: it leaves
//! its reconcile here, under its group, and waits. The next acquire on that group and
//! quota takes it along (`acquire.lua` applies it before it decides, so the decision
//! sees it) and answers it with its outcome. When no acquire comes within
//! [`RedisOptions::carry_reconciles_within`](super::RedisOptions), the reconcile takes
//! itself back and is sent alone. Either way its future resolves only once Redis has
//! applied it; it is applied at most that much later than before (1 ms by default).
//!
//! A reconcile is idempotent (its mark), so one whose carrying acquire failed is sent
//! again alone without any risk of applying twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::quota::Quota;

/// The most reconciles one acquire carries (each adds two keys and 1 + 2n arguments).
pub(crate) const MAX_CARRIED: usize = 8;
/// The most reconciles that wait per group; past this one is sent alone at once.
const MAX_WAITING: usize = 256;

/// A reconcile waiting for an acquire to carry it.
pub(crate) struct Carried {
    ticket: u64,
    pub(crate) quota: Quota,
    /// The account's windows key and the reservation's mark key.
    pub(crate) keys: [String; 2],
    /// The reservation's slot, in µs.
    pub(crate) slot: u64,
    /// Per limit of `quota`, the estimated then the actual charge.
    pub(crate) amounts: Vec<u64>,
    /// The outcome (`reconcile.lua`'s 1–4), or `None`: not carried, send it alone.
    answer: oneshot::Sender<Option<i64>>,
}

impl Carried {
    /// Answers the reconcile's waiter.
    pub(crate) fn answer(self, outcome: Option<i64>) {
        // The waiter may be gone (its task dropped); the reconcile was applied anyway.
        let _ = self.answer.send(outcome);
    }
}

/// The reconciles waiting, per group.
#[derive(Default)]
pub(crate) struct Waiting {
    by_group: Mutex<HashMap<String, Vec<Carried>>>,
    tickets: AtomicU64,
}

/// A reconcile left to be carried: its ticket (to take it back) and its answer.
pub(crate) struct Left {
    pub(crate) ticket: u64,
    pub(crate) answer: oneshot::Receiver<Option<i64>>,
}

impl Waiting {
    /// Leaves a reconcile for the next acquire on `group`; `None` when too many wait
    /// already (then it is sent alone).
    pub(crate) fn leave(
        &self,
        group: &str,
        quota: &Quota,
        keys: [String; 2],
        slot: u64,
        amounts: Vec<u64>,
    ) -> Option<Left> {
        let mut by_group = self.by_group.lock();
        let waiting = by_group.entry(group.to_owned()).or_default();
        if waiting.len() >= MAX_WAITING {
            return None;
        }
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        waiting.push(Carried {
            ticket,
            quota: quota.clone(),
            keys,
            slot,
            amounts,
            answer: tx,
        });
        Some(Left { ticket, answer: rx })
    }

    /// Takes up to [`MAX_CARRIED`] reconciles of `group` made on `quota`, oldest first.
    pub(crate) fn take_for(&self, group: &str, quota: &Quota) -> Vec<Carried> {
        let mut by_group = self.by_group.lock();
        let Some(waiting) = by_group.get_mut(group) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        let mut i = 0;
        while i < waiting.len() && taken.len() < MAX_CARRIED {
            if waiting[i].quota == *quota {
                taken.push(waiting.remove(i));
            } else {
                i += 1;
            }
        }
        if waiting.is_empty() {
            by_group.remove(group);
        }
        taken
    }

    /// Takes back reconcile `ticket` of `group` if no acquire has taken it yet.
    pub(crate) fn take_back(&self, group: &str, ticket: u64) -> Option<Carried> {
        let mut by_group = self.by_group.lock();
        let waiting = by_group.get_mut(group)?;
        let i = waiting.iter().position(|c| c.ticket == ticket)?;
        let carried = waiting.remove(i);
        if waiting.is_empty() {
            by_group.remove(group);
        }
        Some(carried)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::{Limit, Window};

    fn quota(rpm: u64) -> Quota {
        Quota::new(vec![
            Limit::requests(rpm, Window::secs(60).unwrap()).unwrap(),
        ])
        .unwrap()
    }

    fn keys(i: u64) -> [String; 2] {
        [format!("w{i}"), format!("r{i}")]
    }

    #[test]
    fn an_acquire_takes_only_its_own_quotas_reconciles_oldest_first_and_at_most_max() {
        let waiting = Waiting::default();
        let (a, b) = (quota(10), quota(20));
        let mut left = Vec::new();
        for i in 0..(MAX_CARRIED as u64 + 2) {
            left.push(waiting.leave("g", &a, keys(i), i, vec![1, 2]).unwrap());
        }
        waiting.leave("g", &b, keys(99), 99, vec![1, 2]).unwrap();
        waiting.leave("h", &a, keys(98), 98, vec![1, 2]).unwrap();
        let taken = waiting.take_for("g", &a);
        let slots: Vec<u64> = taken.iter().map(|c| c.slot).collect();
        assert_eq!(slots, (0..MAX_CARRIED as u64).collect::<Vec<_>>());
        let rest: Vec<u64> = waiting.take_for("g", &a).iter().map(|c| c.slot).collect();
        assert_eq!(rest, vec![MAX_CARRIED as u64, MAX_CARRIED as u64 + 1]);
        assert!(waiting.take_for("g", &a).is_empty());
        assert_eq!(
            waiting.take_for("g", &b).len(),
            1,
            "the other quota's stays"
        );
        assert_eq!(
            waiting.take_for("h", &a).len(),
            1,
            "the other group's stays"
        );
    }

    #[tokio::test]
    async fn a_reconcile_taken_back_is_not_carried_and_one_carried_gets_its_answer() {
        let waiting = Waiting::default();
        let q = quota(10);
        let first = waiting.leave("g", &q, keys(1), 1, vec![1, 1]).unwrap();
        let second = waiting.leave("g", &q, keys(2), 2, vec![1, 1]).unwrap();
        let back = waiting.take_back("g", first.ticket).expect("still waiting");
        assert_eq!(back.slot, 1);
        assert!(waiting.take_back("g", first.ticket).is_none(), "taken once");
        let taken = waiting.take_for("g", &q);
        assert_eq!(taken.len(), 1);
        assert!(
            waiting.take_back("g", second.ticket).is_none(),
            "an acquire has it"
        );
        for c in taken {
            c.answer(Some(2));
        }
        assert_eq!(second.answer.await.unwrap(), Some(2));
    }

    #[test]
    fn too_many_waiting_sends_the_next_alone() {
        let waiting = Waiting::default();
        let q = quota(10);
        for i in 0..MAX_WAITING as u64 {
            assert!(waiting.leave("g", &q, keys(i), i, vec![1, 1]).is_some());
        }
        assert!(waiting.leave("g", &q, keys(0), 0, vec![1, 1]).is_none());
    }
}

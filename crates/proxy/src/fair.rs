//! [`FairGate`]: weighted-fair admission to the shared queue, per model and replica.
//!
//! A request holds a permit from just before it asks the limiter for a slot until its
//! slot arrives. At most `booked_ahead` requests of one model hold a permit at once in
//! this replica; the others wait here and are let in by weighted fair queueing (start-
//! time tags, `1/weight` per request), so a tenant that floods the queue cannot book
//! every future slot: under contention each tenant's share of this replica's slots is
//! proportional to its weight. Across replicas the shared queue itself is first come,
//! first served; weights hold among requests that queue on the same replica.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

const SCALE: u64 = 1 << 20;

struct State {
    in_use: usize,
    vtime: u64,
    last_tag: Vec<u64>,
    seq: u64,
    waiting: BTreeMap<(u64, u64), oneshot::Sender<()>>,
}

/// The gate of one model.
pub(crate) struct FairGate {
    capacity: usize,
    state: Mutex<State>,
}

/// Leave to hold a future slot; returned to the gate when dropped.
pub(crate) struct Permit {
    gate: Arc<FairGate>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release();
    }
}

impl FairGate {
    pub(crate) fn new(capacity: usize, tenants: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            state: Mutex::new(State {
                in_use: 0,
                vtime: 0,
                last_tag: vec![0; tenants.max(1)],
                seq: 0,
                waiting: BTreeMap::new(),
            }),
        })
    }

    /// Requests waiting at the gate now.
    pub(crate) fn waiting(&self) -> usize {
        self.state.lock().waiting.len()
    }

    /// Requests past the gate holding a permit (booked, waiting for their slot or sent).
    pub(crate) fn holding(&self) -> usize {
        self.state.lock().in_use
    }

    fn release(&self) {
        let mut s = self.state.lock();
        while let Some(((tag, _), tx)) = s.waiting.pop_first() {
            s.vtime = s.vtime.max(tag);
            if tx.send(()).is_ok() {
                return; // the permit passes to that waiter
            }
        }
        s.in_use -= 1;
    }

    /// Waits for a permit for `tenant` (with `weight`) for at most `timeout`.
    pub(crate) async fn admit(
        self: &Arc<Self>,
        tenant: usize,
        weight: u32,
        timeout: Duration,
    ) -> Option<Permit> {
        let (key, rx) = {
            let mut s = self.state.lock();
            if s.in_use < self.capacity && s.waiting.is_empty() {
                s.in_use += 1;
                return Some(Permit { gate: self.clone() });
            }
            let tenant = tenant.min(s.last_tag.len() - 1);
            let start = s.vtime.max(s.last_tag[tenant]);
            let tag = start + SCALE / u64::from(weight.max(1));
            s.last_tag[tenant] = tag;
            s.seq += 1;
            let key = (start, s.seq);
            let (tx, rx) = oneshot::channel();
            s.waiting.insert(key, tx);
            (key, rx)
        };
        let mut guard = Waiter {
            gate: self,
            key,
            rx: Some(rx),
        };
        let rx = guard.rx.as_mut()?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => {
                guard.rx = None;
                Some(Permit { gate: self.clone() })
            }
            _ => None, // the guard gives back a permit that raced with the timeout
        }
    }
}

/// Removes a waiter that gave up (timeout or cancelled request); if a permit was
/// handed to it meanwhile, passes it on.
struct Waiter<'a> {
    gate: &'a Arc<FairGate>,
    key: (u64, u64),
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        let removed = self.gate.state.lock().waiting.remove(&self.key).is_some();
        if !removed && rx.try_recv().is_ok() {
            self.gate.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn weights_share_permits_under_contention() {
        let gate = FairGate::new(1, 2);
        let first = gate.admit(0, 1, Duration::from_secs(1)).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Tenant 0 (weight 1) floods first, tenant 1 (weight 3) arrives after.
        for t in [0usize, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1] {
            let (g, order) = (gate.clone(), order.clone());
            let weight = if t == 0 { 1 } else { 3 };
            tasks.push(tokio::spawn(async move {
                let p = g.admit(t, weight, Duration::from_secs(10)).await.unwrap();
                order.lock().push(t);
                drop(p);
            }));
            // Let each waiter enqueue in order.
            while gate.waiting() < tasks.len() {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().clone();
        let first_eight = &order[..8];
        let heavy = first_eight.iter().filter(|t| **t == 1).count();
        assert!(
            heavy >= 5,
            "weight 3 gets about 3/4 of the first slots: {order:?}"
        );
    }

    #[tokio::test]
    async fn a_timed_out_waiter_leaves_no_trace() {
        let gate = FairGate::new(1, 1);
        let held = gate.admit(0, 1, Duration::from_secs(1)).await.unwrap();
        assert!(gate.admit(0, 1, Duration::from_millis(1)).await.is_none());
        assert_eq!(gate.waiting(), 0);
        drop(held);
        assert!(gate.admit(0, 1, Duration::ZERO).await.is_some());
    }
}

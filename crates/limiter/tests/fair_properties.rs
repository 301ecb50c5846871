//! Property test of the fair ledger: random tenants (weights, classes) asking for
//! queued slots and time passing give, on both backends, the decisions of a reference
//! model written here from the rule in `fair.rs`'s docs (sharing no code with it): a
//! slot ahead is granted exactly when the model admits it, a fair refusal comes exactly
//! when the model refuses, with the model's wait.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use sluice_limiter::{
    Cost, Decision, InProcessStore, Limit, ManualClock, Pacing, Priority, Quota, RefusalReason,
    Share, Store, Timestamp,
};

use crate::support::{T0, key, redis_cases, runtime, window};

const SCALE: u64 = 1_000_000;
const HORIZON: u64 = 4;

#[derive(Clone, Debug)]
enum Op {
    Ask { tenant: usize },
    Advance { us: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..4).prop_map(|tenant| Op::Ask { tenant }),
        1 => (0u64..400_000).prop_map(|us| Op::Advance { us }),
    ]
}

/// Four tenants: (weight, batch).
fn tenants() -> impl Strategy<Value = Vec<(u32, bool)>> {
    prop::collection::vec((1u32..=5, prop::bool::weighted(0.2)), 4)
}

/// The rule, restated: slots booked ahead with their start tags, the virtual time, the
/// finish tags.
#[derive(Default)]
struct Model {
    booked: Vec<(u64, usize, u64, bool)>,
    virtual_time: u64,
    finish: [u64; 4],
}

impl Model {
    fn decide(&mut self, tenant: usize, weight: u32, batch: bool, now: u64) -> Result<u64, u64> {
        let mut kept = Vec::new();
        for b in self.booked.drain(..) {
            if b.0 <= now {
                self.virtual_time = self.virtual_time.max(b.2);
            } else {
                kept.push(b);
            }
        }
        self.booked = kept;
        // Batch never books ahead; the wait is until the slot the store found, which
        // the model does not know (0 here: the caller checks it is positive).
        if batch {
            return Err(0);
        }
        let start = self.virtual_time.max(self.finish[tenant]);
        let Some(earliest) = self.booked.iter().map(|b| b.0).min() else {
            return Ok(start);
        };
        let someone_else = self.booked.iter().any(|b| !b.3 && b.1 != tenant);
        if someone_else && start >= self.virtual_time + HORIZON * SCALE {
            return Err(earliest - now);
        }
        let _ = weight;
        Ok(start)
    }

    fn book(&mut self, tenant: usize, weight: u32, batch: bool, slot: u64, start: u64) {
        if !batch {
            self.finish[tenant] = start + SCALE / u64::from(weight);
        }
        self.booked.push((slot, tenant, start, batch));
    }
}

async fn check<S: Store>(
    store: &S,
    clock: &ManualClock,
    tenants: &[(u32, bool)],
    ops: &[Op],
) -> Result<(), TestCaseError> {
    // 5 requests per second, paced, on two accounts: queues form quickly.
    let q = Quota::new(vec![Limit::requests(5, window(1000)).unwrap()])
        .unwrap()
        .with_pacing(Pacing::Auto)
        .unwrap();
    let accounts = [key("a"), key("b")];
    let shares: Vec<Share> = tenants
        .iter()
        .enumerate()
        .map(|(i, &(w, batch))| {
            let class = if batch {
                Priority::Batch
            } else {
                Priority::Interactive
            };
            Share::new(format!("tenant {i}|x"), w, class).with_reserve(1)
        })
        .collect();
    let mut model = Model::default();
    let one = Cost::request(0, 0);
    for op in ops {
        match *op {
            Op::Advance { us } => clock.advance(Duration::from_micros(us)),
            Op::Ask { tenant } => {
                let (weight, batch) = tenants[tenant];
                let max_wait = Duration::from_secs(5);
                let d = store
                    .acquire_for(&accounts, &q, one, max_wait, Some(&shares[tenant]))
                    .await
                    .unwrap();
                let now = clock.now_micros();
                match d {
                    Decision::Granted(r) if r.wait.is_zero() => {}
                    Decision::Granted(r) => {
                        prop_assert!(!batch, "a batch tenant was booked ahead: {r:?}");
                        let start = model.decide(tenant, weight, batch, now);
                        prop_assert!(start.is_ok(), "granted, the model refuses: {start:?}");
                        model.book(tenant, weight, batch, r.slot.as_micros(), start.unwrap());
                    }
                    Decision::Refused(r) if r.reason == RefusalReason::FairShare => {
                        let wait = model.decide(tenant, weight, batch, now);
                        let got = r.retry_after.map(|d| d.as_micros() as u64);
                        if batch {
                            prop_assert_eq!(wait, Err(0), "refused for fairness");
                            prop_assert!(got.is_some_and(|us| us > 0), "a batch wait: {got:?}");
                        } else {
                            prop_assert_eq!(wait.err(), got, "refused for fairness");
                        }
                    }
                    // Past the maximum wait: the ledger was not consulted.
                    Decision::Refused(_) => {}
                }
            }
        }
    }
    Ok(())
}

trait NowMicros {
    fn now_micros(&self) -> u64;
}

impl NowMicros for ManualClock {
    fn now_micros(&self) -> u64 {
        use sluice_limiter::Clock;
        self.now().as_micros()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn in_process_fair_ledger_matches_the_model(t in tenants(), ops in prop::collection::vec(op(), 1..120)) {
        let clock = ManualClock::new(Timestamp::from_micros(T0));
        let store = InProcessStore::with_clock(Arc::new(clock.clone()));
        runtime().block_on(check(&store, &clock, &t, &ops))?;
    }
}

/// The same on Redis (`support::redis_cases`: one server, a key prefix per case).
#[test]
fn redis_fair_ledger_matches_the_model() {
    redis_cases(
        "fair",
        48,
        (tenants(), prop::collection::vec(op(), 1..120)),
        |(t, ops), rt, store, clock| rt.block_on(check(store, clock, &t, &ops)),
    );
}

//! Property test of the choice among accounts: random traffic over five accounts of one
//! model (candidate lists in random orders, queueing, pacing, released slots,
//! reconciles, cooldowns, learned limits, slow-downs, accounts out of rotation) gets
//! the same decisions, granted account, slot and budgets, from the Redis store as
//! from the in-process store, which examines every candidate. On Redis, the group's
//! tail index lets an acquire skip the accounts that cannot do better
//! (`lua/acquire.lua`, v5); this holds that the skipping never changes a decision, and
//! a count of the script's hash reads that the skipping happens.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use sluice_limiter::{
    Cost, Decision, InProcessStore, Limit, ManualClock, Pacing, Quota, QuotaKey, RedisStore,
    Reservation, StateChange, Store, Timestamp,
};
use sluice_testkit::RedisServer;

use crate::support::{T0, command_calls, key, ms, redis_cases, redis_options, window};

const ACCOUNTS: usize = 5;

#[derive(Clone, Debug)]
enum Op {
    /// An acquire over these accounts, in this order.
    Acquire {
        order: Vec<usize>,
        tokens: u64,
        max_wait_ms: u64,
    },
    Advance {
        us: u64,
    },
    Release {
        which: usize,
    },
    Reconcile {
        which: usize,
        tokens: u64,
    },
    Update {
        account: usize,
        change: Change,
    },
}

#[derive(Clone, Debug)]
enum Change {
    Cooldown(u64),
    ClearCooldown,
    Learned(Option<u64>),
    Pace(u32),
    Disable,
    Enable,
}

fn order() -> impl Strategy<Value = Vec<usize>> {
    (1..=ACCOUNTS).prop_flat_map(|n| {
        Just((0..ACCOUNTS).collect::<Vec<_>>())
            .prop_shuffle()
            .prop_map(move |all| all[..n].to_vec())
    })
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => (10u64..600).prop_map(Change::Cooldown),
        1 => Just(Change::ClearCooldown),
        2 => prop_oneof![Just(None), (1u64..6).prop_map(Some)].prop_map(Change::Learned),
        2 => (1000u32..6000).prop_map(Change::Pace),
        1 => Just(Change::Disable),
        2 => Just(Change::Enable),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (order(), 1u64..=90, prop_oneof![Just(0u64), 0u64..4000])
            .prop_map(|(order, tokens, max_wait_ms)| Op::Acquire { order, tokens, max_wait_ms }),
        3 => (0u64..300_000).prop_map(|us| Op::Advance { us }),
        2 => any::<usize>().prop_map(|which| Op::Release { which }),
        1 => (any::<usize>(), 0u64..=120).prop_map(|(which, tokens)| Op::Reconcile { which, tokens }),
        2 => (0..ACCOUNTS, change()).prop_map(|(account, change)| Op::Update { account, change }),
    ]
}

/// Requests and tokens per window, the window, and the pacing.
fn setup() -> impl Strategy<Value = (u64, u64, u64, u8)> {
    (
        2u64..=8,
        150u64..=400,
        prop_oneof![Just(500u64), Just(1000)],
        0u8..3,
    )
}

fn build((requests, tokens, window_ms, pacing): (u64, u64, u64, u8)) -> Quota {
    let pacing = match pacing {
        0 => Pacing::Off,
        1 => Pacing::Auto,
        _ => Pacing::Fixed {
            interval: Duration::from_millis(30),
            burst: 2,
        },
    };
    Quota::new(vec![
        Limit::requests(requests, window(window_ms)).unwrap(),
        Limit::tokens(tokens, window(window_ms * 2)).unwrap(),
    ])
    .unwrap()
    .with_buckets(10)
    .unwrap()
    .with_pacing(pacing)
    .unwrap()
}

/// What a decision says, without the reservation's random id and origin.
fn seen(d: &Decision) -> String {
    match d {
        Decision::Granted(r) => format!(
            "granted {} (candidate {}) at {} after {:?}, left {:?}",
            r.key.name(),
            r.candidate,
            r.slot.as_micros(),
            r.wait,
            r.remaining
        ),
        Decision::Refused(r) => format!(
            "refused: candidate {}, retry after {:?}, {:?}, left {:?}",
            r.candidate, r.retry_after, r.reason, r.remaining
        ),
    }
}

fn accounts() -> Vec<QuotaKey> {
    (0..ACCOUNTS).map(|i| key(&format!("acct-{i}"))).collect()
}

/// Runs `ops` on both stores, each on its own clock moved alike, and compares every
/// decision and release outcome.
async fn check<A: Store, B: Store>(
    (reference, reference_clock): (&A, &ManualClock),
    (store, clock): (&B, &ManualClock),
    q: &Quota,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let keys = accounts();
    let mut granted: Vec<(Reservation, Reservation)> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Acquire {
                order,
                tokens,
                max_wait_ms,
            } => {
                let candidates: Vec<QuotaKey> = order.iter().map(|&i| keys[i].clone()).collect();
                let cost = Cost::request(*tokens, 0);
                let wait = Duration::from_millis(*max_wait_ms);
                let want = reference.acquire(&candidates, q, cost, wait).await.unwrap();
                let got = store.acquire(&candidates, q, cost, wait).await.unwrap();
                prop_assert_eq!(seen(&got), seen(&want), "step {}: {:?}", step, op);
                if let (Decision::Granted(w), Decision::Granted(g)) = (want, got) {
                    granted.push((w, g));
                }
            }
            Op::Advance { us } => {
                reference_clock.advance(Duration::from_micros(*us));
                clock.advance(Duration::from_micros(*us));
            }
            Op::Release { which } => {
                if !granted.is_empty() {
                    let (w, g) = &granted[which % granted.len()];
                    let want = reference.release(q, w).await.unwrap();
                    let got = store.release(q, g).await.unwrap();
                    prop_assert_eq!(got, want, "step {}: {:?}", step, op);
                }
            }
            Op::Reconcile { which, tokens } => {
                if !granted.is_empty() {
                    let (w, g) = &granted[which % granted.len()];
                    let actual = Cost::request(*tokens, 0);
                    reference.reconcile(q, w, actual).await.unwrap();
                    store.reconcile(q, g, actual).await.unwrap();
                }
            }
            Op::Update { account, change } => {
                let change = match change {
                    Change::Cooldown(ms) => StateChange::Cooldown(Duration::from_millis(*ms)),
                    Change::ClearCooldown => StateChange::ClearCooldown,
                    Change::Learned(value) => StateChange::EffectiveLimit {
                        limit: q.limits()[0].id().clone(),
                        value: *value,
                    },
                    Change::Pace(factor) => StateChange::PacingFactor(*factor),
                    Change::Disable => StateChange::Disable("test".into()),
                    Change::Enable => StateChange::Enable,
                };
                let k = &keys[*account];
                reference.update(k, q, change.clone()).await.unwrap();
                store.update(k, q, change).await.unwrap();
            }
        }
    }
    Ok(())
}

/// The same on Redis (`support::redis_cases`: one server, a key prefix per case).
#[test]
fn redis_chooses_among_accounts_as_the_in_process_store_does() {
    redis_cases(
        "accounts",
        96,
        (setup(), prop::collection::vec(op(), 1..80)),
        |(s, ops), rt, store, clock| {
            let reference_clock = ManualClock::new(Timestamp::from_micros(T0));
            let reference = InProcessStore::with_clock(Arc::new(reference_clock.clone()));
            rt.block_on(check(
                (&reference, &reference_clock),
                (store, clock),
                &build(s),
                &ops,
            ))
        },
    );
}

/// On Redis, an acquire over sixteen accounts all queued ahead examines only those that
/// could give the earliest slot: the first in the order given, then the one the tail index
/// shows earliest; the fourteen others are skipped. Counted in the script's hash reads
/// (two per account examined, one for the index), not timed: examining every account
/// would take 32.
#[tokio::test]
async fn an_acquire_over_accounts_queued_ahead_examines_only_those_that_can_do_better() {
    let server = RedisServer::start();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let store = RedisStore::new(&server.url(), redis_options(&clock)).unwrap();
    let q = Quota::new(vec![Limit::requests(1000, window(60_000)).unwrap()])
        .unwrap()
        .with_pacing(Pacing::Fixed {
            interval: Duration::from_millis(10),
            burst: 1,
        })
        .unwrap();
    let keys: Vec<QuotaKey> = (0..16).map(|i| key(&format!("acct-{i}"))).collect();
    // Account i queued 2 + 2i requests deep, one account at a time (the clock stands
    // still): its tail is (1 + 2i) intervals ahead.
    for (i, k) in keys.iter().enumerate() {
        for _ in 0..2 + 2 * i {
            let d = store
                .acquire(std::slice::from_ref(k), &q, Cost::request(1, 0), ms(60_000))
                .await
                .unwrap();
            assert!(d.granted().is_some());
        }
    }
    // Listed from account 8 on, as the gateway's rotation would.
    let rotated: Vec<QuotaKey> = keys[8..].iter().chain(&keys[..8]).cloned().collect();
    let grant = |d: Decision| d.granted().expect("granted");
    // The first examines all sixteen (the index holds nothing yet) and writes their tails.
    let first = grant(
        store
            .acquire(&rotated, &q, Cost::request(1, 0), ms(60_000))
            .await
            .unwrap(),
    );
    assert_eq!(first.key.name(), "acct-0");
    assert_eq!(first.wait, ms(20));
    let before = command_calls(&server, "hmget");
    let second = grant(
        store
            .acquire(&rotated, &q, Cost::request(1, 0), ms(60_000))
            .await
            .unwrap(),
    );
    // acct-0 is now two intervals ahead, as acct-1 was three before: acct-0 again.
    assert_eq!((second.key.name(), second.wait), ("acct-0", ms(30)));
    let reads = command_calls(&server, "hmget") - before;
    assert_eq!(
        reads, 5,
        "account 8 (2 reads), the index (1), account 0 (2): got {reads}"
    );
}

//! Amounts at the u64 extremes through both backends (issue #12, bounded cost): a huge
//! usage or charge never wraps, so the window never admits past its limit afterwards,
//! and a reconcile applied twice leaves the same usage as applied once.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use sluice_limiter::{
    Cost, Decision, InProcessStore, LimitError, ManualClock, Quota, RedisStore, Reservation, Store,
    Timestamp,
};
use sluice_testkit::RedisServer;

use crate::support::{T0, key, quota, redis_cases, redis_options, runtime, window};

/// An amount at an extreme of u64, or a random one.
fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just((1u64 << 53) - 1),
        Just(1u64 << 53),
        Just((1u64 << 53) + 1),
        Just(1u64 << 63),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        0u64..=50,
        any::<u64>(),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Acquire { tokens: u64 },
    Advance { ms: u64 },
    Reconcile { which: usize, tokens: u64 },
    Record { tokens: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop_oneof![amount(), 0u64..=20].prop_map(|tokens| Op::Acquire { tokens }),
        2 => (0u64..1500).prop_map(|ms| Op::Advance { ms }),
        2 => (any::<usize>(), amount()).prop_map(|(which, tokens)| Op::Reconcile { which, tokens }),
        1 => amount().prop_map(|tokens| Op::Record { tokens }),
    ]
}

/// 5 requests per second and `tokens` tokens per 2 s (possibly an extreme limit too).
fn build(tokens: u64) -> Quota {
    quota(vec![
        sluice_limiter::Limit::requests(5, window(1000)).unwrap(),
        sluice_limiter::Limit::tokens(tokens.max(1), window(2000)).unwrap(),
    ])
}

async fn used<S: Store>(store: &S, q: &Quota) -> Vec<u64> {
    let status = store.status(&key("a"), q).await.unwrap();
    status.limits.iter().map(|l| l.used).collect()
}

async fn check<S: Store>(
    store: &S,
    clock: &ManualClock,
    q: &Quota,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let effective: Vec<u64> = store
        .status(&key("a"), q)
        .await
        .unwrap()
        .limits
        .iter()
        .map(|l| l.effective)
        .collect();
    let mut granted: Vec<Reservation> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Acquire { tokens } => {
                let cost = Cost::request(*tokens, 0);
                let before = used(store, q).await;
                match store.acquire(&[key("a")], q, cost, Duration::ZERO).await {
                    Ok(Decision::Granted(r)) => {
                        prop_assert!(
                            before[0] < effective[0]
                                && (*tokens == 0
                                    || before[1].saturating_add(*tokens) <= effective[1]),
                            "step {step}: granted {tokens} tokens with {before:?} used of {effective:?}"
                        );
                        granted.push(r);
                    }
                    Ok(Decision::Refused(_)) => {}
                    Err(LimitError::InsufficientCapacity { .. }) => {
                        prop_assert!(
                            *tokens > effective[1],
                            "step {step}: {tokens} refused as too large for {effective:?}"
                        );
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("step {step}: {e}"))),
                }
            }
            Op::Advance { ms } => clock.advance(Duration::from_millis(*ms)),
            Op::Reconcile { which, tokens } => {
                if !granted.is_empty() {
                    let r = &granted[which % granted.len()];
                    let actual = Cost::request(*tokens, 0);
                    store.reconcile(q, r, actual).await.unwrap();
                    let once = used(store, q).await;
                    store.reconcile(q, r, actual).await.unwrap();
                    let twice = used(store, q).await;
                    prop_assert_eq!(&once, &twice, "step {}: reconcile applied twice", step);
                }
            }
            Op::Record { tokens } => {
                let cost = Cost {
                    requests: 0,
                    input_tokens: *tokens,
                    output_tokens: 0,
                    spend: 0,
                };
                let before = used(store, q).await;
                store.record_usage(&key("a"), q, cost).await.unwrap();
                let after = used(store, q).await;
                prop_assert!(
                    after[1] >= before[1].min(sluice_limiter::MAX_CHARGE),
                    "step {step}: recording {tokens} took usage from {before:?} down to {after:?}"
                );
            }
        }
        for &u in &used(store, q).await {
            prop_assert!(
                u <= sluice_limiter::MAX_CHARGE,
                "step {step}: usage {u} past the maximum"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn in_process_extreme_amounts_never_overfill_or_double_apply(limit in prop_oneof![Just(100u64), amount()], ops in prop::collection::vec(op(), 1..40)) {
        let q = build(limit);
        let clock = ManualClock::new(Timestamp::from_micros(T0));
        let store = InProcessStore::with_clock(Arc::new(clock.clone()));
        runtime().block_on(check(&store, &clock, &q, &ops))?;
    }
}

/// The same on Redis (`support::redis_cases`: one server, a key prefix per case).
#[test]
fn redis_extreme_amounts_never_overfill_or_double_apply() {
    redis_cases(
        "extreme",
        64,
        (
            prop_oneof![Just(100u64), amount()],
            prop::collection::vec(op(), 1..40),
        ),
        |(limit, ops), rt, store, clock| rt.block_on(check(store, clock, &build(limit), &ops)),
    );
}

/// The figure: a usage of 2^63 tokens used to wrap negative in Redis, after
/// which the limit admitted everything for a window.
#[tokio::test]
async fn a_usage_of_two_to_the_63_closes_the_window_on_redis() {
    let server = RedisServer::start();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let store = RedisStore::new(&server.url(), redis_options(&clock)).unwrap();
    let q = build(100);
    let huge = Cost {
        requests: 0,
        input_tokens: 1 << 63,
        output_tokens: 0,
        spend: 0,
    };
    store.record_usage(&key("a"), &q, huge).await.unwrap();
    let mut admitted = 0;
    for _ in 0..5 {
        if let Decision::Granted(_) = store
            .acquire(&[key("a")], &q, Cost::request(10, 0), Duration::ZERO)
            .await
            .unwrap()
        {
            admitted += 1;
        }
    }
    assert_eq!(
        admitted,
        0,
        "admitted after a 2^63 usage: {:?}",
        used(&store, &q).await
    );
}

mod late {
    use sluice_limiter::{Limit, RECONCILE_MIN_WINDOW, Store};

    use crate::support::{Rig, for_each_backend, ms, quota, tokens, window};

    /// Within the reconcile window a repeated reconcile applies once; after it, a
    /// reconcile is ignored: no charge, no refund, and so never applied twice.
    async fn a_reconcile_after_the_reconcile_window_is_ignored<S: Store>(rig: Rig<S>) {
        let q = quota(vec![Limit::tokens(1000, window(1000)).unwrap()]);
        assert_eq!(q.reconcile_window(), RECONCILE_MIN_WINDOW);
        let r = rig.grant(&q, tokens(600)).await;
        rig.store.reconcile(&q, &r, tokens(900)).await.unwrap();
        rig.store.reconcile(&q, &r, tokens(900)).await.unwrap();
        assert_eq!(rig.used(&q).await, vec![900], "applied once");
        rig.advance(RECONCILE_MIN_WINDOW - ms(1000));
        rig.store.reconcile(&q, &r, tokens(1000)).await.unwrap();
        assert_eq!(
            rig.used(&q).await,
            vec![100],
            "the difference lands now, once"
        );
        rig.store.reconcile(&q, &r, tokens(1000)).await.unwrap();
        assert_eq!(rig.used(&q).await, vec![100], "and only once");
        rig.advance(ms(2000));
        rig.store.reconcile(&q, &r, tokens(1000)).await.unwrap();
        rig.store.reconcile(&q, &r, tokens(5000)).await.unwrap();
        assert_eq!(rig.used(&q).await, vec![0], "late reconciles are ignored");
    }

    for_each_backend!(a_reconcile_after_the_reconcile_window_is_ignored);
}

//! The fair ledger (`Store::acquire_for` with a `Share`): the same decisions on both
//! backends, on a frozen clock.

use std::time::Duration;

use sluice_limiter::{Decision, Limit, Pacing, Priority, Quota, RefusalReason, Share, Store};

use crate::support::{Rig, T0, for_each_backend, key, ms, one, quota, window};

for_each_backend!(
    a_queue_is_shared_by_weight_among_backlogged_tenants,
    a_slot_free_now_is_never_refused_for_fairness,
    a_fair_refusal_charges_nothing_and_says_when_to_ask_again,
    batch_takes_only_a_slot_free_now,
    batch_leaves_its_reserve_to_interactive,
    an_idle_tenants_share_goes_to_the_others,
);

/// 10 requests per second, paced: a burst of 10 at idle, then one slot per 100 ms.
fn paced() -> Quota {
    quota(vec![Limit::requests(10, window(1000)).unwrap()])
        .with_pacing(Pacing::Auto)
        .unwrap()
}

fn tenant(name: &str, weight: u32) -> Share {
    Share::new(name, weight, Priority::Interactive)
}

async fn ask<S: Store>(rig: &Rig<S>, q: &Quota, share: &Share) -> Decision {
    rig.store
        .acquire_for(
            &[key("a")],
            q,
            one(),
            Duration::from_secs(3600),
            Some(share),
        )
        .await
        .unwrap()
}

/// Fills the burst so that every later slot is queued.
async fn fill<S: Store>(rig: &Rig<S>, q: &Quota) {
    for _ in 0..10 {
        rig.grant(q, one()).await;
    }
}

async fn a_queue_is_shared_by_weight_among_backlogged_tenants<S: Store>(rig: Rig<S>) {
    let q = paced();
    fill(&rig, &q).await;
    let tenants = [tenant("a", 3), tenant("b", 2), tenant("c", 1)];
    let mut granted = [0u64; 3];
    while granted.iter().sum::<u64>() < 240 {
        // Each tenant asks in turn; when all are refused, time passes to the next
        // booked slot.
        let mut next: Option<Duration> = None;
        let mut any = false;
        for (t, share) in tenants.iter().enumerate() {
            match ask(&rig, &q, share).await {
                Decision::Granted(r) => {
                    assert!(r.wait > Duration::ZERO, "queued");
                    granted[t] += 1;
                    any = true;
                }
                Decision::Refused(r) => {
                    assert_eq!(r.reason, RefusalReason::FairShare, "{granted:?} {r:?}");
                    next = Some(
                        next.map_or(r.retry_after.unwrap(), |n| n.min(r.retry_after.unwrap())),
                    );
                }
            }
        }
        if !any {
            rig.advance(next.expect("someone was refused"));
        }
    }
    // Shares by weight, give or take each tenant's horizon (4 slots per unit of weight).
    for (t, want) in [120, 80, 40].into_iter().enumerate() {
        let slack = 4 * u64::from(tenants[t].weight());
        assert!(granted[t].abs_diff(want) <= slack, "{granted:?}");
    }
}

async fn a_slot_free_now_is_never_refused_for_fairness<S: Store>(rig: Rig<S>) {
    let q = paced();
    // The queue holds c's slot; a and b have spent their rounds. A second account free
    // now serves anyone, fairness or not.
    let accounts = [key("a"), key("b")];
    fill(&rig, &q).await;
    let c = tenant("c", 1);
    assert!(ask(&rig, &q, &c).await.granted().is_some());
    for t in [tenant("x", 1), tenant("y", 1), tenant("x", 1)] {
        let d = rig
            .store
            .acquire_for(&accounts, &q, one(), Duration::from_secs(60), Some(&t))
            .await
            .unwrap();
        let r = d.granted().expect("account b is free now");
        assert_eq!((r.wait, r.key.name()), (Duration::ZERO, "b"));
    }
}

async fn a_fair_refusal_charges_nothing_and_says_when_to_ask_again<S: Store>(rig: Rig<S>) {
    let q = paced();
    fill(&rig, &q).await;
    let (a, b) = (tenant("a", 1), tenant("b", 1));
    let first = ask(&rig, &q, &b).await.granted().expect("b books").slot;
    // With b queued too, a may book 4 slots (its horizon at weight 1) ahead.
    for _ in 0..4 {
        ask(&rig, &q, &a)
            .await
            .granted()
            .expect("within a's horizon");
    }
    let used = rig.used(&q).await;
    match ask(&rig, &q, &a).await {
        Decision::Refused(r) => {
            assert_eq!(r.reason, RefusalReason::FairShare);
            let earliest = first.as_micros() - rig.now();
            assert_eq!(r.retry_after, Some(Duration::from_micros(earliest)));
        }
        other => panic!("a went past its horizon: {other:?}"),
    }
    assert_eq!(rig.used(&q).await, used, "a refusal charges nothing");
    assert!(
        ask(&rig, &q, &b).await.granted().is_some(),
        "b is behind: it books"
    );
}

async fn batch_takes_only_a_slot_free_now<S: Store>(rig: Rig<S>) {
    let q = paced();
    fill(&rig, &q).await;
    let batch = Share::new("etl", 10, Priority::Batch);
    // Nothing is booked ahead, but the next slot is later than now: batch is told to
    // come back then, and books nothing.
    let wait = match ask(&rig, &q, &batch).await {
        Decision::Refused(r) => {
            assert_eq!(r.reason, RefusalReason::FairShare);
            r.retry_after.expect("a wait")
        }
        other => panic!("batch booked a slot ahead: {other:?}"),
    };
    assert!(wait > Duration::ZERO);
    // Interactive takes that slot: nothing of batch's is ahead of it.
    let web = ask(&rig, &q, &tenant("web", 1))
        .await
        .granted()
        .expect("interactive");
    assert!(
        web.slot.as_micros() <= T0 + wait.as_micros() as u64,
        "interactive queued behind batch: {web:?}, batch's wait {wait:?}"
    );
    // Once the slots booked ahead have passed and the next one is free now, batch takes it.
    rig.advance(web.wait + ms(100));
    let took = ask(&rig, &q, &batch)
        .await
        .granted()
        .expect("a slot free now");
    assert_eq!(took.wait, Duration::ZERO);
}

async fn batch_leaves_its_reserve_to_interactive<S: Store>(rig: Rig<S>) {
    // 10 requests per second; batch leaves 2 of them.
    let q = paced();
    let batch = Share::new("etl", 1, Priority::Batch).with_reserve(2);
    let mut took = 0;
    for _ in 0..30 {
        match ask(&rig, &q, &batch).await {
            Decision::Granted(r) => {
                assert_eq!(r.wait, Duration::ZERO, "batch booked ahead");
                took += 1;
            }
            Decision::Refused(r) => assert_eq!(r.reason, RefusalReason::FairShare),
        }
        assert!(rig.used(&q).await[0] <= 8, "batch took the reserve");
        rig.advance(ms(100));
    }
    assert!(took >= 20, "batch filled the rest: {took} of 30 steps");
    // Two interactive requests arriving together both go at once; a third waits.
    for _ in 0..2 {
        let r = ask(&rig, &q, &tenant("web", 1))
            .await
            .granted()
            .expect("interactive");
        assert_eq!(r.wait, Duration::ZERO, "the reserve was not free");
    }
    let third = ask(&rig, &q, &tenant("web", 1))
        .await
        .granted()
        .expect("queued");
    assert!(third.wait > Duration::ZERO);
}

async fn an_idle_tenants_share_goes_to_the_others<S: Store>(rig: Rig<S>) {
    let q = paced();
    fill(&rig, &q).await;
    let (a, c) = (tenant("a", 1), tenant("c", 5));
    ask(&rig, &q, &c)
        .await
        .granted()
        .expect("c books one slot, then goes idle");
    for _ in 0..4 {
        ask(&rig, &q, &a)
            .await
            .granted()
            .expect("within a's horizon");
    }
    let Decision::Refused(r) = ask(&rig, &q, &a).await else {
        panic!("a went past its horizon while c queues");
    };
    assert_eq!(r.reason, RefusalReason::FairShare);
    // c's one slot passes: a is alone in the queue and is never refused.
    rig.advance(r.retry_after.unwrap());
    for _ in 0..20 {
        assert!(ask(&rig, &q, &a).await.granted().is_some(), "c is idle");
    }
}

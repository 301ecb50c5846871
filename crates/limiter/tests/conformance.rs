//! The conformance suite: every backend makes the same decisions on a frozen clock.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use sluice_limiter::{
    Cost, Decision, Limit, LimitError, Pacing, RefusalReason, ReleaseOutcome, Reservation,
    StateChange, Store, Unit,
};

use crate::support::{Rig, T0, for_each_backend, key, ms, one, quota, tokens, us, window};

for_each_backend!(
    at_the_limit_then_refused_with_an_exact_retry_after,
    a_cost_over_the_limit_is_an_error_at_once,
    cost_zero_is_a_read_only_check,
    a_refusal_charges_no_limit,
    the_window_rolls_over_bucket_by_bucket,
    reconcile_refunds_and_charges_in_the_reservation_bucket,
    reconcile_is_idempotent_and_replaces,
    reconcile_after_the_window_left_charges_now_and_drops_refunds,
    cooldown_blocks_then_resumes_one_interval_apart,
    effective_limit_lowers_but_never_raises,
    disabled_accounts_are_skipped_until_enabled,
    acquire_any_prefers_the_earliest_slot_then_the_most_headroom,
    the_scan_stops_at_an_account_that_serves_now_with_room_to_spare,
    waiters_are_served_in_order_paced_and_within_the_window,
    retry_after_is_never_early_and_never_late,
    split_token_limits_charge_their_own_unit,
    a_clock_going_backwards_never_moves_slots_back,
    changing_a_limit_mid_window_keeps_its_usage,
    a_released_slot_serves_the_next_waiter_at_that_instant,
    a_larger_request_does_not_take_a_smaller_released_slot,
    a_released_slot_past_max_wait_is_not_taken,
    a_double_release_changes_nothing_and_a_slot_is_taken_once,
    a_release_after_the_slot_passed_makes_no_hole,
    a_released_reservation_is_never_reconciled,
);

async fn at_the_limit_then_refused_with_an_exact_retry_after<S: Store>(rig: Rig<S>) {
    let q = quota(vec![Limit::requests(3, window(1000)).unwrap()]);
    for left in [2, 1, 0] {
        let r = rig.grant(&q, one()).await;
        assert_eq!(r.wait, Duration::ZERO);
        assert_eq!(r.remaining[0].remaining, left);
    }
    let no = rig.refuse(&q, one()).await;
    // The three charges sit in the bucket [T0, T0+100ms): it leaves the window ending
    // at t once t - 1 s reaches T0 + 100 ms.
    assert_eq!(no.retry_after, Some(ms(1100)));
    assert_eq!(no.reason, RefusalReason::Limit(q.limits()[0].id().clone()));
    assert_eq!(no.remaining[0].remaining, 0);
    rig.advance(ms(1100) - us(1));
    assert_eq!(rig.refuse(&q, one()).await.retry_after, Some(us(1)));
    rig.advance(us(1));
    rig.grant(&q, one()).await;
}

async fn a_cost_over_the_limit_is_an_error_at_once<S: Store>(rig: Rig<S>) {
    let q = quota(vec![Limit::tokens(100, window(1000)).unwrap()]);
    let err = rig
        .store
        .acquire(&[key("a")], &q, tokens(101), Duration::from_secs(3600))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LimitError::InsufficientCapacity {
                capacity: 100,
                cost: 101,
                ..
            }
        ),
        "{err:?}"
    );
    rig.grant(&q, tokens(100)).await;
}

async fn cost_zero_is_a_read_only_check<S: Store>(rig: Rig<S>) {
    let q = quota(vec![Limit::requests(2, window(1000)).unwrap()]);
    rig.grant(&q, one()).await;
    let check = rig.grant(&q, Cost::ZERO).await;
    assert_eq!(check.remaining[0].remaining, 1);
    assert_eq!(rig.used(&q).await, vec![1]);
    rig.grant(&q, one()).await;
    assert_eq!(rig.grant(&q, Cost::ZERO).await.remaining[0].remaining, 0);
    assert_eq!(rig.used(&q).await, vec![2]);
}

async fn a_refusal_charges_no_limit<S: Store>(rig: Rig<S>) {
    let q = quota(vec![
        Limit::requests(10, window(1000)).unwrap(),
        Limit::tokens(100, window(1000)).unwrap(),
    ]);
    rig.grant(&q, tokens(60)).await;
    let no = rig.refuse(&q, tokens(60)).await;
    assert_eq!(no.reason, RefusalReason::Limit(q.limits()[1].id().clone()));
    assert_eq!(rig.used(&q).await, vec![1, 60]);
}

async fn the_window_rolls_over_bucket_by_bucket<S: Store>(rig: Rig<S>) {
    let q = quota(vec![Limit::requests(2, window(1000)).unwrap()]);
    rig.grant(&q, one()).await; // bucket 0
    rig.advance(ms(500));
    rig.grant(&q, one()).await; // bucket 5
    rig.advance(ms(600)); // T0 + 1100: bucket 0 has left
    assert_eq!(rig.used(&q).await, vec![1]);
    rig.grant(&q, one()).await;
    // Bucket 5 leaves at (5 + 1) * 100 ms + 1 s = T0 + 1600 ms.
    assert_eq!(rig.refuse(&q, one()).await.retry_after, Some(ms(500)));
    rig.advance(ms(2000));
    assert_eq!(rig.used(&q).await, vec![0]);
}

async fn reconcile_refunds_and_charges_in_the_reservation_bucket<S: Store>(rig: Rig<S>) {
    let q = quota(vec![Limit::tokens(1000, window(1000)).unwrap()]);
    let r = rig.grant(&q, tokens(600)).await;
    rig.advance(ms(200));
    rig.store.reconcile(&q, &r, tokens(200)).await.unwrap();
    assert_eq!(rig.used(&q).await, vec![200]);
    rig.grant(&q, tokens(800)).await;
    // The provider counted more than estimated: the truth is recorded, as debt.
    rig.store.reconcile(&q, &r, tokens(900)).await.unwrap();
    assert_eq!(rig.used(&q).await, vec![1700]);
    let no = rig.refuse(&q, tokens(1)).await;
    // The 900 in bucket 0 leave at T0 + 1.1 s (usage then 800 + 1 fits).
    assert_eq!(no.retry_after, Some(ms(900)));
}

async fn reconcile_is_idempotent_and_replaces<S: Store>(rig: Rig<S>) {
    let q = quota(vec![Limit::tokens(1000, window(1000)).unwrap()]);
    let r = rig.grant(&q, tokens(600)).await;
    rig.store.reconcile(&q, &r, tokens(200)).await.unwrap();
    rig.store.reconcile(&q, &r, tokens(200)).await.unwrap();
    assert_eq!(rig.used(&q).await, vec![200]);
    rig.store.reconcile(&q, &r, tokens(300)).await.unwrap();
    assert_eq!(rig.used(&q).await, vec![300]);
}

async fn reconcile_after_the_window_left_charges_now_and_drops_refunds<S: Store>(rig: Rig<S>) {
    let q = quota(vec![Limit::tokens(1000, window(1000)).unwrap()]);
    let r = rig.grant(&q, tokens(600)).await;
    rig.advance(ms(1100));
    assert_eq!(rig.used(&q).await, vec![0]);
    rig.store.reconcile(&q, &r, tokens(400)).await.unwrap();
    assert_eq!(
        rig.used(&q).await,
        vec![0],
        "a refund after the window is dropped"
    );
    rig.store.reconcile(&q, &r, tokens(900)).await.unwrap();
    assert_eq!(
        rig.used(&q).await,
        vec![500],
        "900 - 400 lands in the current bucket"
    );
    rig.advance(ms(1100));
    assert_eq!(rig.used(&q).await, vec![0]);
}

async fn cooldown_blocks_then_resumes_one_interval_apart<S: Store>(rig: Rig<S>) {
    let q = quota(vec![Limit::requests(100, window(1000)).unwrap()])
        .with_pacing(Pacing::Fixed {
            interval: ms(100),
            burst: 5,
        })
        .unwrap();
    rig.store
        .update(&key("a"), &q, StateChange::Cooldown(ms(5000)))
        .await
        .unwrap();
    let no = rig.refuse(&q, one()).await;
    assert_eq!(
        (no.reason, no.retry_after),
        (RefusalReason::Cooldown, Some(ms(5000)))
    );
    let waits: Vec<Duration> = {
        let mut w = Vec::new();
        for _ in 0..3 {
            match rig.decide(&q, one(), ms(10_000)).await {
                Decision::Granted(r) => w.push(r.wait),
                other => panic!("{other:?}"),
            }
        }
        w
    };
    assert_eq!(waits, vec![ms(5000), ms(5100), ms(5200)]);
    let status = rig.store.status(&key("a"), &q).await.unwrap();
    assert_eq!(status.cooldown, Some(ms(5000)));
    rig.store
        .update(&key("a"), &q, StateChange::ClearCooldown)
        .await
        .unwrap();
    assert_eq!(
        rig.store.status(&key("a"), &q).await.unwrap().cooldown,
        None
    );
}

async fn effective_limit_lowers_but_never_raises<S: Store>(rig: Rig<S>) {
    let q = quota(vec![
        Limit::requests(5, window(1000)).unwrap(),
        Limit::tokens(100, window(1000)).unwrap(),
    ]);
    let (r, t) = (q.limits()[0].id().clone(), q.limits()[1].id().clone());
    let set = |limit, value| StateChange::EffectiveLimit { limit, value };
    rig.store
        .update(&key("a"), &q, set(r.clone(), Some(2)))
        .await
        .unwrap();
    rig.store
        .update(&key("a"), &q, set(t.clone(), Some(50)))
        .await
        .unwrap();
    rig.grant(&q, tokens(10)).await;
    rig.grant(&q, tokens(10)).await;
    assert_eq!(
        rig.refuse(&q, tokens(10)).await.reason,
        RefusalReason::Limit(r.clone())
    );
    let err = rig
        .store
        .acquire(&[key("a")], &q, tokens(60), ms(0))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LimitError::InsufficientCapacity { capacity: 50, .. }),
        "{err:?}"
    );
    rig.store
        .update(&key("a"), &q, set(r.clone(), Some(500)))
        .await
        .unwrap();
    let status = rig.store.status(&key("a"), &q).await.unwrap();
    assert_eq!(
        status
            .limits
            .iter()
            .map(|l| (l.configured, l.effective))
            .collect::<Vec<_>>(),
        vec![(5, 5), (100, 50)]
    );
    rig.store.update(&key("a"), &q, set(t, None)).await.unwrap();
    rig.grant(&q, tokens(60)).await;
}

async fn disabled_accounts_are_skipped_until_enabled<S: Store>(rig: Rig<S>) {
    let q = quota(vec![Limit::requests(5, window(1000)).unwrap()]);
    let reason = "billing exhausted: insufficient_quota".to_owned();
    rig.store
        .update(&key("a"), &q, StateChange::Disable(reason.clone()))
        .await
        .unwrap();
    let no = rig.refuse(&q, one()).await;
    assert_eq!(
        (no.reason, no.retry_after),
        (RefusalReason::Disabled(reason.clone()), None)
    );
    let pair = [key("a"), key("b")];
    let r = rig
        .store
        .acquire(&pair, &q, one(), ms(0))
        .await
        .unwrap()
        .granted()
        .unwrap();
    assert_eq!((r.candidate, r.key), (1, key("b")));
    assert_eq!(
        rig.store.status(&key("a"), &q).await.unwrap().disabled,
        Some(reason)
    );
    rig.store
        .update(&key("a"), &q, StateChange::Enable)
        .await
        .unwrap();
    rig.grant(&q, one()).await;
}

async fn acquire_any_prefers_the_earliest_slot_then_the_most_headroom<S: Store>(rig: Rig<S>) {
    let q = quota(vec![Limit::requests(4, window(1000)).unwrap()]);
    let fill = |k: &'static str, n: usize| {
        let rig = &rig;
        let q = &q;
        async move {
            for _ in 0..n {
                rig.store
                    .acquire(&[key(k)], q, one(), ms(0))
                    .await
                    .unwrap()
                    .granted()
                    .unwrap();
            }
        }
    };
    // Same slot (now) on both: the one with more headroom wins.
    fill("a", 3).await;
    let r = rig
        .store
        .acquire(&[key("a"), key("b")], &q, one(), ms(0))
        .await
        .unwrap();
    assert_eq!(r.granted().unwrap().key, key("b"));
    // Both full: the one that frees a slot first wins, whatever the order given.
    fill("c", 4).await; // frees at T0 + 1.1 s
    rig.advance(ms(300));
    fill("d", 4).await; // frees at T0 + 1.4 s
    let pair = [key("d"), key("c")];
    let no = rig
        .store
        .acquire(&pair, &q, one(), ms(0))
        .await
        .unwrap()
        .refused()
        .unwrap();
    assert_eq!((no.candidate, no.retry_after), (1, Some(ms(800))));
    let r = rig
        .store
        .acquire(&pair, &q, one(), ms(2000))
        .await
        .unwrap()
        .granted()
        .unwrap();
    assert_eq!((r.key, r.wait), (key("c"), ms(800)));
}

async fn the_scan_stops_at_an_account_that_serves_now_with_room_to_spare<S: Store>(rig: Rig<S>) {
    let q = quota(vec![Limit::requests(10, window(1000)).unwrap()]);
    let fill = |k: String, n: usize| {
        let rig = &rig;
        let q = &q;
        async move {
            for _ in 0..n {
                rig.store
                    .acquire(&[key(&k)], q, one(), ms(0))
                    .await
                    .unwrap()
                    .granted()
                    .unwrap();
            }
        }
    };
    // One request on the first of `names` that the scan takes.
    let pick = |names: Vec<String>| {
        let rig = &rig;
        let q = &q;
        async move {
            let keys: Vec<_> = names.iter().map(|n| key(n)).collect();
            let d = rig.store.acquire(&keys, q, one(), ms(0)).await.unwrap();
            d.granted().unwrap().key.name().to_owned()
        }
    };
    // "a" keeps 8 of 10 after the charge: good enough, though "b" has more.
    fill("a".into(), 1).await;
    assert_eq!(pick(vec!["a".into(), "b".into()]).await, "a");
    // "c" keeps 3 of 10: not enough; "b", examined next, has more headroom.
    fill("c".into(), 6).await;
    assert_eq!(pick(vec!["c".into(), "b".into()]).await, "b");
    // Eight accounts with a slot now but little room (3 of 10 left after the charge),
    // then an empty one: after eight, the best slot now so far is taken (the first of
    // equals) and the ninth is not examined.
    let mut names: Vec<String> = (0..8).map(|i| format!("full-{i}")).collect();
    for n in &names {
        fill(n.clone(), 6).await;
    }
    names.push("empty".into());
    assert_eq!(pick(names.clone()).await, "full-0");
    // With no slot now among the first eight, every candidate is examined.
    fill("full-0".into(), 3).await;
    for n in &names[1..8] {
        fill(n.clone(), 4).await;
    }
    assert_eq!(pick(names).await, "empty");
}

async fn waiters_are_served_in_order_paced_and_within_the_window<S: Store>(rig: Rig<S>) {
    let q = quota(vec![Limit::requests(10, window(1000)).unwrap()])
        .with_pacing(Pacing::Auto)
        .unwrap();
    let mut slots = Vec::new();
    for _ in 0..30 {
        match rig.decide(&q, one(), ms(10_000)).await {
            Decision::Granted(r) => slots.push(r.slot.as_micros() - T0),
            other => panic!("{other:?}"),
        }
    }
    // A burst of one second's worth at idle, then the queue: first come, first served,
    // never closer than the pacing interval, and never more than 10 in any second.
    assert!(slots[..10].iter().all(|&s| s == 0), "{slots:?}");
    assert_eq!(
        slots[10], 1_100_000,
        "the first waiter goes when bucket 0 leaves"
    );
    for pair in slots[10..].windows(2) {
        assert!(pair[1] >= pair[0] + 100_000, "{slots:?}");
    }
    for &t in &slots {
        let in_window = slots
            .iter()
            .filter(|&&s| s + 1_000_000 > t && s <= t)
            .count();
        assert!(
            in_window <= 10,
            "{in_window} in the second ending at {t}: {slots:?}"
        );
    }
}

async fn retry_after_is_never_early_and_never_late<S: Store>(rig: Rig<S>) {
    let q = quota(vec![
        Limit::requests(5, window(1000)).unwrap(),
        Limit::tokens(500, window(1000)).unwrap(),
    ]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut refusals = 0;
    for _ in 0..200 {
        let cost = tokens(rng.random_range(1..=200));
        match rig.decide(&q, cost, Duration::ZERO).await {
            Decision::Granted(_) => rig.advance(us(rng.random_range(0..50_000))),
            Decision::Refused(no) => {
                refusals += 1;
                let wait = no.retry_after.unwrap();
                assert!(wait > Duration::ZERO);
                rig.advance(wait - us(1));
                let early = rig.decide(&q, cost, Duration::ZERO).await;
                assert!(
                    matches!(early, Decision::Refused(_)),
                    "granted 1us early: {early:?}"
                );
                rig.advance(us(1));
                let on_time = rig.decide(&q, cost, Duration::ZERO).await;
                assert!(
                    matches!(on_time, Decision::Granted(_)),
                    "refused on time: {on_time:?}"
                );
            }
        }
    }
    assert!(
        refusals > 20,
        "the sequence must exercise refusals, got {refusals}"
    );
}

async fn split_token_limits_charge_their_own_unit<S: Store>(rig: Rig<S>) {
    let n = |v| std::num::NonZeroU64::new(v).unwrap();
    let q = quota(vec![
        Limit::new(Unit::InputTokens, n(100), window(1000)),
        Limit::new(Unit::OutputTokens, n(50), window(1000)),
    ]);
    rig.grant(&q, Cost::request(80, 10)).await;
    assert_eq!(rig.used(&q).await, vec![80, 10]);
    let no = rig.refuse(&q, Cost::request(10, 45)).await;
    assert_eq!(no.reason, RefusalReason::Limit(q.limits()[1].id().clone()));
    rig.grant(&q, Cost::request(20, 40)).await;
}

async fn a_clock_going_backwards_never_moves_slots_back<S: Store>(rig: Rig<S>) {
    let q = quota(vec![Limit::requests(100, window(1000)).unwrap()]);
    rig.advance(ms(1000));
    let first = rig.grant(&q, one()).await;
    rig.clock.set(sluice_limiter::Timestamp::from_micros(T0));
    let later = rig.decide(&q, one(), ms(5000)).await.granted().unwrap();
    assert!(later.slot >= first.slot);
    assert_eq!(later.wait, ms(1000));
}

async fn changing_a_limit_mid_window_keeps_its_usage<S: Store>(rig: Rig<S>) {
    let q = quota(vec![Limit::requests(10, window(1000)).unwrap()]);
    for _ in 0..6 {
        rig.grant(&q, one()).await;
    }
    let smaller = quota(vec![Limit::requests(5, window(1000)).unwrap()]);
    assert_eq!(
        rig.refuse(&smaller, one()).await.retry_after,
        Some(ms(1100))
    );
    assert_eq!(rig.used(&smaller).await, vec![6]);
}

/// Expects a grant within `max_wait`.
async fn queued<S: Store>(
    rig: &Rig<S>,
    q: &sluice_limiter::Quota,
    cost: Cost,
    max_wait: Duration,
) -> Reservation {
    match rig.decide(q, cost, max_wait).await {
        Decision::Granted(r) => r,
        other => panic!("expected a grant, got {other:?}"),
    }
}

async fn a_released_slot_serves_the_next_waiter_at_that_instant<S: Store>(rig: Rig<S>) {
    let q = quota(vec![Limit::requests(1, window(1000)).unwrap()]);
    rig.grant(&q, one()).await;
    let gone = queued(&rig, &q, one(), ms(10_000)).await;
    assert_eq!(gone.slot.as_micros() - T0, 1_100_000);
    assert_eq!(
        rig.store.release(&q, &gone).await.unwrap(),
        ReleaseOutcome::Reusable
    );
    // The charge stays in place: later slots were fitted with it there.
    assert_eq!(rig.used(&q).await, vec![2]);
    let next = queued(&rig, &q, one(), ms(10_000)).await;
    assert_eq!(
        next.slot, gone.slot,
        "the next waiter takes the released slot"
    );
    assert_eq!(next.wait, ms(1100));
    assert_eq!(
        rig.used(&q).await,
        vec![2],
        "taking it charges nothing more"
    );
    let after = queued(&rig, &q, one(), ms(10_000)).await;
    assert_eq!(
        after.slot.as_micros() - T0,
        2_200_000,
        "then the tail goes on"
    );
    assert_eq!(rig.used(&q).await, vec![3]);
}

async fn a_larger_request_does_not_take_a_smaller_released_slot<S: Store>(rig: Rig<S>) {
    let q = quota(vec![Limit::tokens(1000, window(1000)).unwrap()]);
    rig.grant(&q, tokens(1000)).await;
    let gone = queued(&rig, &q, tokens(100), ms(10_000)).await;
    rig.store.release(&q, &gone).await.unwrap();
    // 200 > 100: it gets a slot of its own (the same instant here), charged on top.
    let big = queued(&rig, &q, tokens(200), ms(10_000)).await;
    assert_eq!(big.slot, gone.slot);
    assert_eq!(rig.used(&q).await, vec![1300]);
    // 50 <= 100: it takes the hole and inherits its charge.
    let small = queued(&rig, &q, tokens(50), ms(10_000)).await;
    assert_eq!(small.slot, gone.slot);
    assert_eq!(rig.used(&q).await, vec![1300]);
}

async fn a_released_slot_past_max_wait_is_not_taken<S: Store>(rig: Rig<S>) {
    let q = quota(vec![Limit::requests(1, window(1000)).unwrap()]);
    rig.grant(&q, one()).await;
    let gone = queued(&rig, &q, one(), ms(10_000)).await;
    rig.store.release(&q, &gone).await.unwrap();
    match rig.decide(&q, one(), ms(1000)).await {
        Decision::Refused(no) => assert_eq!(no.retry_after, Some(ms(1100))),
        other => panic!("the hole is 1.1 s away, past a 1 s max wait: {other:?}"),
    }
    assert_eq!(rig.used(&q).await, vec![2], "the refusal charged nothing");
    let next = queued(&rig, &q, one(), ms(1100)).await;
    assert_eq!(
        next.slot, gone.slot,
        "still there for a request that can wait"
    );
}

async fn a_double_release_changes_nothing_and_a_slot_is_taken_once<S: Store>(rig: Rig<S>) {
    let q = quota(vec![Limit::requests(1, window(1000)).unwrap()]);
    rig.grant(&q, one()).await;
    let gone = queued(&rig, &q, one(), ms(10_000)).await;
    assert_eq!(
        rig.store.release(&q, &gone).await.unwrap(),
        ReleaseOutcome::Reusable
    );
    assert_eq!(
        rig.store.release(&q, &gone).await.unwrap(),
        ReleaseOutcome::AlreadySettled
    );
    let first = queued(&rig, &q, one(), ms(10_000)).await;
    let second = queued(&rig, &q, one(), ms(10_000)).await;
    assert_eq!(first.slot, gone.slot);
    assert_eq!(
        second.slot.as_micros() - T0,
        2_200_000,
        "one hole, taken once"
    );
    assert_eq!(rig.used(&q).await, vec![3]);
}

async fn a_release_after_the_slot_passed_makes_no_hole<S: Store>(rig: Rig<S>) {
    let q = quota(vec![Limit::requests(1, window(1000)).unwrap()]);
    let now = rig.grant(&q, one()).await;
    assert_eq!(
        rig.store.release(&q, &now).await.unwrap(),
        ReleaseOutcome::Passed
    );
    let gone = queued(&rig, &q, one(), ms(10_000)).await;
    rig.advance(ms(1200));
    assert_eq!(
        rig.store.release(&q, &gone).await.unwrap(),
        ReleaseOutcome::Passed
    );
    // Both charges stay until their buckets leave the window.
    assert_eq!(rig.used(&q).await, vec![1]);
    let next = queued(&rig, &q, one(), ms(10_000)).await;
    assert_eq!(next.slot.as_micros() - T0, 2_200_000, "no slot in the past");
}

async fn a_released_reservation_is_never_reconciled<S: Store>(rig: Rig<S>) {
    let q = quota(vec![Limit::tokens(1000, window(1000)).unwrap()]);
    rig.grant(&q, tokens(1000)).await;
    let gone = queued(&rig, &q, tokens(600), ms(10_000)).await;
    rig.store.release(&q, &gone).await.unwrap();
    rig.store.reconcile(&q, &gone, tokens(10)).await.unwrap();
    rig.store.reconcile(&q, &gone, tokens(5000)).await.unwrap();
    assert_eq!(
        rig.used(&q).await,
        vec![1600],
        "a released reservation reconciles nothing"
    );
    // The taker inherits the charge, and its reconcile replaces its own estimate.
    let taker = queued(&rig, &q, tokens(600), ms(10_000)).await;
    assert_eq!(taker.slot, gone.slot);
    rig.store.reconcile(&q, &taker, tokens(100)).await.unwrap();
    assert_eq!(rig.used(&q).await, vec![1100]);
    // A reservation already used (reconciled) cannot be released.
    assert_eq!(
        rig.store.release(&q, &taker).await.unwrap(),
        ReleaseOutcome::AlreadySettled
    );
    assert_eq!(rig.used(&q).await, vec![1100]);
    queued(&rig, &q, tokens(600), ms(10_000)).await;
    assert_eq!(
        rig.used(&q).await,
        vec![1700],
        "no hole was left behind: charged on top"
    );
}

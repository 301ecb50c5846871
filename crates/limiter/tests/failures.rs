//! Redis failing under the limiter: killed and restarted, paused, scripts flushed; and
//! keys that must expire.

use std::sync::Arc;
use std::time::Duration;

use sluice_limiter::{
    Cost, Decision, InProcessStore, Limiter, ManualClock, OnError, Origin, RedisOptions,
    RefusalReason, StateChange, Store, Timestamp, Window,
};
use sluice_testkit::RedisServer;

use crate::support::{T0, key, one, quota};

fn options() -> RedisOptions {
    RedisOptions {
        timeout: Duration::from_millis(300),
        breaker_threshold: 1,
        breaker_open_for: Duration::from_millis(50),
        ..RedisOptions::default()
    }
}

/// 10 requests per minute: long enough that no test depends on the wall clock.
fn per_minute() -> sluice_limiter::Quota {
    quota(vec![
        sluice_limiter::Limit::requests(10, Window::secs(60).unwrap()).unwrap(),
    ])
}

async fn origin_of(limiter: &Limiter) -> Result<Origin, RefusalReason> {
    let d = limiter
        .acquire(&[key("a")], &per_minute(), one(), Duration::ZERO)
        .await
        .unwrap();
    match d {
        Decision::Granted(r) => Ok(r.origin),
        Decision::Refused(r) => Err(r.reason),
    }
}

/// Kills Redis under a limiter with `policy`, checks the degraded decisions with
/// `check`, restarts Redis empty and waits for shared decisions to come back.
async fn kill_and_restart(policy: OnError, check: impl AsyncFnOnce(&Limiter)) {
    let mut server = RedisServer::start();
    let limiter = Limiter::redis(&server.url(), options(), policy, 2).unwrap();
    assert_eq!(origin_of(&limiter).await, Ok(Origin::Shared));
    server.kill();
    check(&limiter).await;
    assert!(limiter.is_degraded());
    server.restart(); // empty: no keys, no cached scripts
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if origin_of(&limiter).await == Ok(Origin::Shared) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "shared decisions never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!limiter.is_degraded());
    let status = limiter.status(&key("a"), &per_minute()).await.unwrap();
    assert_eq!(
        status.limits[0].used, 1,
        "the decision after the restart is in Redis"
    );
}

#[tokio::test]
async fn fail_closed_refuses_while_redis_is_down() {
    kill_and_restart(OnError::FailClosed, async |l: &Limiter| {
        for _ in 0..3 {
            assert_eq!(origin_of(l).await, Err(RefusalReason::Unavailable));
        }
    })
    .await;
}

#[tokio::test]
async fn fail_open_grants_unmetered_while_redis_is_down() {
    kill_and_restart(OnError::FailOpen, async |l: &Limiter| {
        for _ in 0..20 {
            assert_eq!(origin_of(l).await, Ok(Origin::Unmetered));
        }
    })
    .await;
}

#[tokio::test]
async fn local_keeps_each_replica_at_its_share_while_redis_is_down() {
    kill_and_restart(OnError::Local, async |l: &Limiter| {
        // 10 per minute shared by 2 expected replicas: 5 here.
        for _ in 0..5 {
            assert_eq!(origin_of(l).await, Ok(Origin::Local));
        }
        assert!(matches!(origin_of(l).await, Err(RefusalReason::Limit(_))));
    })
    .await;
}

#[tokio::test]
async fn a_flushed_script_cache_is_reloaded() {
    let server = RedisServer::start();
    let limiter = Limiter::redis(&server.url(), options(), OnError::FailClosed, 1).unwrap();
    assert_eq!(origin_of(&limiter).await, Ok(Origin::Shared));
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]).trim(), "OK");
    assert_eq!(origin_of(&limiter).await, Ok(Origin::Shared));
    let status = limiter.status(&key("a"), &per_minute()).await.unwrap();
    assert_eq!(status.limits[0].used, 2);
}

#[tokio::test]
async fn a_paused_redis_times_out_instead_of_hanging() {
    let server = RedisServer::start();
    let limiter = Limiter::redis(&server.url(), options(), OnError::FailClosed, 1).unwrap();
    assert_eq!(origin_of(&limiter).await, Ok(Origin::Shared));
    assert_eq!(server.cli(&["CLIENT", "PAUSE", "3000", "ALL"]).trim(), "OK");
    assert_eq!(origin_of(&limiter).await, Err(RefusalReason::Unavailable));
    assert!(limiter.is_degraded());
    assert_eq!(server.cli(&["CLIENT", "UNPAUSE"]).trim(), "OK");
    let mut shared = false;
    for _ in 0..500 {
        if origin_of(&limiter).await == Ok(Origin::Shared) {
            shared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(shared, "the breaker closes once Redis answers again");
}

#[tokio::test]
async fn every_key_expires() {
    let server = RedisServer::start();
    let store = sluice_limiter::RedisStore::new(&server.url(), options()).unwrap();
    let q = per_minute();
    let r = store
        .acquire(&[key("a")], &q, one(), Duration::ZERO)
        .await
        .unwrap()
        .granted()
        .unwrap();
    store.reconcile(&q, &r, Cost::ZERO).await.unwrap();
    store.record_usage(&key("b"), &q, one()).await.unwrap();
    store
        .update(&key("c"), &q, StateChange::Cooldown(Duration::from_secs(5)))
        .await
        .unwrap();
    store
        .update(&key("d"), &q, StateChange::Disable("billing".into()))
        .await
        .unwrap();
    // A refusal and a status read on a fresh account create nothing.
    store.status(&key("e"), &q).await.unwrap();
    let keys = server.cli(&["--scan"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert!(keys.len() >= 5, "{keys:?}");
    for k in &keys {
        // Account `e`'s keys would end in `:w:e` or `:s:e` (a reconcile mark ends in a
        // random hex id, which may well contain `:e`).
        assert!(
            !k.ends_with(":w:e") && !k.ends_with(":s:e"),
            "a read created {k}"
        );
        let ttl: i64 = server.cli(&["PTTL", k]).trim().parse().unwrap();
        assert!(ttl > 0, "{k} has no TTL ({ttl})");
        let bound = if k.contains(":s:") {
            24 * 3600 * 1000
        } else {
            3 * 60 * 1000
        };
        assert!(ttl <= bound, "{k} lives {ttl} ms");
    }
}

#[tokio::test]
async fn the_in_process_store_forgets_expired_accounts() {
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let store = InProcessStore::with_clock(Arc::new(clock.clone()));
    let q = per_minute();
    for i in 0..200 {
        let k = sluice_limiter::QuotaKey::new("test/model", format!("k{i}")).unwrap();
        store
            .acquire(&[k], &q, one(), Duration::ZERO)
            .await
            .unwrap();
    }
    assert_eq!(store.accounts(), 200);
    clock.advance(Duration::from_secs(2 * 86400));
    for _ in 0..4096 {
        store
            .acquire(&[key("a")], &q, Cost::ZERO, Duration::ZERO)
            .await
            .unwrap();
    }
    assert!(store.accounts() <= 1, "{} accounts left", store.accounts());
}

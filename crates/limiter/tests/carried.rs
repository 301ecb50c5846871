//! Reconciles carried by the next acquire (#17): a request costs Redis one script call,
//! and what the acquire decides already counts the reconcile it carries.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use sluice_limiter::{Cost, Decision, Limit, Quota, RedisOptions, RedisStore, Reservation, Store};
use sluice_testkit::RedisServer;

use crate::support::{command_calls, key, quota, tokens, window};

fn evalsha_calls(server: &RedisServer) -> u64 {
    command_calls(server, "evalsha")
}

/// 600 tokens on account `a`, granted at once.
async fn six_hundred(store: &RedisStore, q: &Quota) -> Reservation {
    store
        .acquire(&[key("a")], q, tokens(600), Duration::ZERO)
        .await
        .unwrap()
        .granted()
        .unwrap()
}

fn store(server: &RedisServer, within: Duration) -> RedisStore {
    RedisStore::new(
        &server.url(),
        RedisOptions {
            timeout: Duration::from_secs(5),
            carry_reconciles_within: within,
            ..RedisOptions::default()
        },
    )
    .unwrap()
}

/// Polls `f` once: the reconcile leaves itself to be carried, then waits.
async fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    let mut f = Some(f);
    std::future::poll_fn(|cx| Poll::Ready(f.take().unwrap().poll(cx))).await
}

#[tokio::test]
async fn the_next_acquire_carries_a_waiting_reconcile_and_decides_with_it() {
    let server = RedisServer::start();
    // Long enough that only the acquire can have carried it.
    let store = store(&server, Duration::from_secs(30));
    let q = quota(vec![Limit::tokens(1_000, window(60_000)).unwrap()]);
    let first = six_hundred(&store, &q).await;
    let mut reconcile = std::pin::pin!(store.reconcile(&q, &first, tokens(100)));
    assert!(poll_once(reconcile.as_mut()).await.is_pending());
    server.cli(&["CONFIG", "RESETSTAT"]);
    // 600 + 800 does not fit 1,000; 100 + 800 does: granted only with the reconcile.
    let second = store
        .acquire(&[key("a")], &q, tokens(800), Duration::ZERO)
        .await
        .unwrap();
    assert!(matches!(second, Decision::Granted(_)), "{second:?}");
    reconcile.await.unwrap();
    assert_eq!(evalsha_calls(&server), 1, "one script call for both");
    let status = store.status(&key("a"), &q).await.unwrap();
    assert_eq!(status.limits[0].used, 900);
}

#[tokio::test]
async fn a_reconcile_no_acquire_carries_is_sent_alone_and_applied_once_when_repeated() {
    let server = RedisServer::start();
    let store = store(&server, Duration::from_millis(1));
    let q = quota(vec![Limit::tokens(1_000, window(60_000)).unwrap()]);
    let r = six_hundred(&store, &q).await;
    store.reconcile(&q, &r, tokens(100)).await.unwrap();
    assert_eq!(
        store.status(&key("a"), &q).await.unwrap().limits[0].used,
        100
    );
    // The same reconcile again, this time carried: the mark makes it change nothing.
    let store = self::store(&server, Duration::from_secs(30));
    let mut again = std::pin::pin!(store.reconcile(&q, &r, tokens(100)));
    assert!(poll_once(again.as_mut()).await.is_pending());
    store
        .acquire(&[key("a")], &q, Cost::ZERO, Duration::ZERO)
        .await
        .unwrap();
    again.await.unwrap();
    assert_eq!(
        store.status(&key("a"), &q).await.unwrap().limits[0].used,
        100
    );
}

#[tokio::test]
async fn an_acquire_on_another_quota_does_not_carry_it() {
    let server = RedisServer::start();
    let store = store(&server, Duration::from_millis(50));
    let q = quota(vec![Limit::tokens(1_000, window(60_000)).unwrap()]);
    let other = quota(vec![Limit::tokens(2_000, window(60_000)).unwrap()]);
    let r = six_hundred(&store, &q).await;
    let mut reconcile = std::pin::pin!(store.reconcile(&q, &r, tokens(100)));
    assert!(poll_once(reconcile.as_mut()).await.is_pending());
    server.cli(&["CONFIG", "RESETSTAT"]);
    store
        .acquire(&[key("b")], &other, tokens(1), Duration::ZERO)
        .await
        .unwrap();
    reconcile.await.unwrap();
    assert_eq!(
        evalsha_calls(&server),
        2,
        "the acquire, then the reconcile alone"
    );
    assert_eq!(
        store.status(&key("a"), &q).await.unwrap().limits[0].used,
        100
    );
}

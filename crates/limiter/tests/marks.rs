//! Reconcile marks (the idempotency of `reconcile`) in Redis memory. The measurement
//! behind docs/benchmarks.md "Reconcile marks", run by hand:
//! `SLUICE_MARKS=100000 cargo test -p sluice-limiter --release --test main marks::reconcile_marks_memory -- --ignored --nocapture`

use std::sync::Arc;
use std::time::Duration;

use sluice_limiter::{Cost, Limit, Quota, RedisOptions, RedisStore, Store, Window};
use sluice_testkit::RedisServer;

use crate::support::key;

fn used_memory(server: &RedisServer) -> i64 {
    let info = server.cli(&["INFO", "memory"]);
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Reconciles `SLUICE_MARKS` (default 100 000) reservations on a quota with a daily
/// token limit (the longest window the issue names) and prints the `used_memory` delta
/// per million, the marks' TTL and how many marks Redis holds.
#[test]
#[ignore = "a measurement, run by hand (see the module documentation)"]
fn reconcile_marks_memory() {
    let n: u64 = std::env::var("SLUICE_MARKS")
        .ok()
        .map_or(100_000, |v| v.parse().unwrap());
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(
        RedisStore::new(
            &server.url(),
            RedisOptions {
                timeout: Duration::from_secs(5),
                ..RedisOptions::default()
            },
        )
        .unwrap(),
    );
    let quota = Quota::new(vec![
        Limit::requests(1_000_000_000, Window::secs(60).unwrap()).unwrap(),
        Limit::tokens(1_000_000_000_000, Window::secs(86_400).unwrap()).unwrap(),
    ])
    .unwrap()
    .with_pacing(sluice_limiter::Pacing::Off)
    .unwrap();
    // Warm up the scripts and the windows hash, so the delta is the marks alone.
    rt.block_on(async {
        let r = store
            .acquire(&[key("a")], &quota, Cost::request(10, 0), Duration::ZERO)
            .await
            .unwrap()
            .granted()
            .unwrap();
        store
            .reconcile(&quota, &r, Cost::request(5, 0))
            .await
            .unwrap();
    });
    let (before, keys_before) = (used_memory(&server), server.cli(&["DBSIZE"]));
    rt.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let (store, quota) = (store.clone(), quota.clone());
                tokio::spawn(async move {
                    for _ in (t..n).step_by(8) {
                        let r = store
                            .acquire(&[key("a")], &quota, Cost::request(10, 0), Duration::ZERO)
                            .await
                            .unwrap()
                            .granted()
                            .unwrap();
                        store
                            .reconcile(&quota, &r, Cost::request(7, 3))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    let after = used_memory(&server);
    let mark = (0..100)
        .map(|_| server.cli(&["RANDOMKEY"]).trim().to_owned())
        .find(|k| k.contains(":r:"))
        .expect("a mark");
    let ttl = server.cli(&["PTTL", &mark]);
    println!(
        "{n} reconciles: used_memory {before} -> {after}, {:.1} MB per million, \
         {} bytes per mark; keys {} -> {}; a mark's TTL {} ms",
        (after - before) as f64 * 1e6 / n as f64 / 1e6,
        (after - before) / n as i64,
        keys_before.trim(),
        server.cli(&["DBSIZE"]).trim(),
        ttl.trim()
    );
}

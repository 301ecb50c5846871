//! Redis Cluster: three masters started by the harness; quotas in three key groups
//! (three hash tags, spread over the masters), two accounts each, hammered by four
//! processes. Any key of one decision outside its group's slot would fail with CROSSSLOT.

use sluice_testkit::RedisCluster;

use crate::concurrency::run_hammer;

#[test]
fn a_three_master_cluster_keeps_every_quota_exact() {
    let cluster = RedisCluster::start();
    run_hammer(&cluster.url(), 3, 2);
}

/// A master fails over under load. While the cluster has no master for the quota's slot,
/// every decision still returns, made by the failure policy (`local`: this process at its
/// share); once the replica is promoted, decisions are shared again. Replication is
/// asynchronous, so the last writes before the failure may be lost: the windows can
/// undercount by what was in flight for about a second (documented in the README).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_degrades_to_the_policy_then_recovers() {
    use std::time::{Duration, Instant};

    use sluice_limiter::{Limiter, OnError, Origin, RedisOptions, Store};

    use crate::support::{one, quota, window};

    let mut cluster = RedisCluster::start_with_replicas(1);
    let options = RedisOptions {
        timeout: Duration::from_millis(500),
        breaker_threshold: 2,
        breaker_open_for: Duration::from_millis(200),
        ..RedisOptions::default()
    };
    let limiter = Limiter::redis(&cluster.url(), options, OnError::Local, 1).unwrap();
    let q = quota(vec![
        sluice_limiter::Limit::requests(1_000_000, window(1000)).unwrap(),
    ]);
    let key = [sluice_limiter::QuotaKey::new("failover/model", "key-0").unwrap()];
    let decide = async || match limiter
        .acquire(&key, &q, one(), Duration::ZERO)
        .await
        .unwrap()
    {
        sluice_limiter::Decision::Granted(r) => r.origin,
        other => panic!("no slot with a limit of a million: {other:?}"),
    };
    assert_eq!(decide().await, Origin::Shared);

    // Kill the master that owns the quota's slot (its replica takes over).
    let slot = cluster.nodes()[0].cli(&["CLUSTER", "KEYSLOT", "sluice:{failover/model}:w:key-0"]);
    let slot: u16 = slot.trim().parse().unwrap();
    let nodes = cluster.nodes()[0].cli(&["CLUSTER", "NODES"]);
    let owner_port: u16 = nodes
        .lines()
        .find(|l| {
            l.contains("master")
                && l.split(' ').skip(8).any(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
                })
        })
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|addr| addr.split(['@', ':']).nth(1))
        .and_then(|p| p.parse().ok())
        .expect("a master owns the slot");
    let owner = cluster
        .nodes()
        .iter_mut()
        .find(|n| n.port() == owner_port)
        .unwrap();
    owner.kill();

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut degraded = 0;
    let mut recovered = false;
    while Instant::now() < deadline {
        match decide().await {
            Origin::Local => degraded += 1,
            Origin::Shared if degraded > 0 => {
                recovered = true;
                break;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        degraded > 0,
        "the failover was never seen (every decision stayed shared)"
    );
    assert!(
        recovered,
        "shared decisions never resumed after the failover ({degraded} local)"
    );
}

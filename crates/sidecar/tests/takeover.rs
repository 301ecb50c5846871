//! A sidecar killed mid-run: another one claims the observations it had read but not
//! acknowledged, and the group ends with nothing pending and nothing unread.

use std::time::Duration;

use sluice_observe::{Observation, Publisher, PublisherOptions};
use sluice_testkit::RedisServer;

use crate::support::*;

const STREAM: &str = sluice_observe::DEFAULT_STREAM;
const GROUP: &str = "sluice-sidecar";
const FLOOD: usize = 5000;

/// `XPENDING` summary: count, first id, last id, per-consumer counts.
type PendingSummary = (
    u64,
    Option<String>,
    Option<String>,
    Option<Vec<(String, String)>>,
);

/// Pending entries per consumer (`XPENDING stream group`). An error fails the test: it
/// must not read as "nothing pending" (which is what the takeover is checked by).
async fn pending(conn: &mut redis::aio::MultiplexedConnection) -> Vec<(String, u64)> {
    let (_, _, _, per): PendingSummary = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg(GROUP)
        .query_async(conn)
        .await
        .expect("XPENDING of the sidecars' group");
    per.unwrap_or_default()
        .into_iter()
        .map(|(c, n)| {
            let n = n
                .parse()
                .unwrap_or_else(|e| panic!("XPENDING count {n:?} of {c}: {e}"));
            (c, n)
        })
        .collect()
}

/// Whether the sidecars' consumer group exists yet (a sidecar creates it at start).
async fn group_exists(conn: &mut redis::aio::MultiplexedConnection) -> bool {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(STREAM)
        .query_async(conn)
        .await
        .expect("XINFO GROUPS of the observations stream");
    groups.iter().any(|g| {
        matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n.as_slice() == GROUP.as_bytes())
    })
}

fn of(p: &[(String, u64)], name: &str) -> u64 {
    p.iter().find(|(c, _)| c == name).map_or(0, |(_, n)| *n)
}

/// `XINFO GROUPS`: the group's `lag` (entries never delivered; Redis 7+). An error, a
/// missing group or a missing `lag` fails the test rather than reading as 0.
async fn lag(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(STREAM)
        .query_async(conn)
        .await
        .expect("XINFO GROUPS of the observations stream");
    let g = groups
        .iter()
        .find(|g| {
            matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n.as_slice() == GROUP.as_bytes())
        })
        .unwrap_or_else(|| panic!("no group {GROUP} on {STREAM}: {groups:?}"));
    match g.get("lag") {
        Some(redis::Value::Int(n)) => *n as u64,
        other => panic!("the group's lag is {other:?} (Redis 7+ reports it): {g:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sidecars_pending_observations_are_claimed_by_another() {
    let redis = RedisServer::start();
    let toml = fleet_toml(
        &redis.url(),
        "http://127.0.0.1:1/v1",
        "openai",
        &["sk-a"],
        "take-m",
        1000,
        60,
        "",
    );
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let publisher = Publisher::spawn(
        redis.url(),
        PublisherOptions {
            queue: FLOOD,
            ..PublisherOptions::default()
        },
    );
    for i in 0..FLOOD {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let remaining = (999 - i % 100).to_string();
        let o = Observation::new(
            at,
            "sim",
            "take-m",
            "key-0",
            200,
            [
                ("x-ratelimit-limit-requests", "1000"),
                ("x-ratelimit-remaining-requests", remaining.as_str()),
            ],
            None,
        );
        assert!(publisher.publish(o));
    }
    let written = eventually(Duration::from_secs(10), || {
        let mut c = conn.clone();
        async move {
            let n: u64 = redis::cmd("XLEN")
                .arg(STREAM)
                .query_async(&mut c)
                .await
                .ok()?;
            (n as usize >= FLOOD).then_some(n)
        }
    })
    .await;
    assert!(written.is_some(), "the flood reached the stream");

    // Sidecar "a" starts consuming; freeze it while it holds unacknowledged entries, then kill it.
    let a = SidecarProcess::start(&toml, "a");
    let created = eventually(Duration::from_secs(10), || {
        let mut c = conn.clone();
        async move { group_exists(&mut c).await.then_some(()) }
    })
    .await;
    assert!(
        created.is_some(),
        "sidecar a never created the group {GROUP}"
    );
    let mut left_behind = 0;
    for _ in 0..200 {
        if eventually(Duration::from_secs(10), || {
            let mut c = conn.clone();
            async move { (of(&pending(&mut c).await, "a") > 0).then_some(()) }
        })
        .await
        .is_none()
        {
            break;
        }
        a.signal("STOP");
        left_behind = of(&pending(&mut conn).await, "a");
        if left_behind > 0 {
            break;
        }
        a.signal("CONT"); // it acknowledged just before the stop: try again
    }
    assert!(left_behind > 0, "sidecar a never held pending observations");
    a.signal("KILL");
    drop(a);

    // Sidecar "b" takes over: claims what a left pending (after claim_after = 1 s) and
    // reads the rest.
    let b = SidecarProcess::start(&toml, "b");
    let done = eventually(Duration::from_secs(30), || {
        let mut c = conn.clone();
        async move {
            let p = pending(&mut c).await;
            let total: u64 = p.iter().map(|(_, n)| n).sum();
            let lag = lag(&mut c).await;
            (total == 0 && lag == 0).then_some(())
        }
    })
    .await;
    assert!(
        done.is_some(),
        "observations left pending or unread: {:?}",
        pending(&mut conn).await
    );
    let claimed = metric(&client(), &b.url, "sluice_observations_claimed_total", &[]).await as u64;
    println!(
        "takeover: a was killed holding {left_behind} unacknowledged observations; b claimed {claimed}"
    );
    assert!(
        claimed >= left_behind,
        "b claimed {claimed} of the {left_behind} a left behind"
    );
}

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

/// Pending entries per consumer (`XPENDING stream group`).
async fn pending(conn: &mut redis::aio::MultiplexedConnection) -> Vec<(String, u64)> {
    let reply: redis::RedisResult<PendingSummary> = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg(GROUP)
        .query_async(conn)
        .await;
    match reply {
        Ok((_, _, _, per)) => per
            .unwrap_or_default()
            .into_iter()
            .map(|(c, n)| (c, n.parse().unwrap_or(0)))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn of(p: &[(String, u64)], name: &str) -> u64 {
    p.iter().find(|(c, _)| c == name).map_or(0, |(_, n)| *n)
}

/// `XINFO GROUPS`: the group's `lag` (entries never delivered) on Redis 7+.
async fn lag(conn: &mut redis::aio::MultiplexedConnection) -> Option<u64> {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(STREAM)
        .query_async(conn)
        .await
        .ok()?;
    let g = groups.into_iter().next()?;
    match g.get("lag")? {
        redis::Value::Int(n) => Some(*n as u64),
        _ => None,
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
            let lag = lag(&mut c).await.unwrap_or(0);
            (total == 0 && lag == 0).then_some(())
        }
    })
    .await;
    assert!(
        done.is_some(),
        "observations left pending or unread: {:?}",
        pending(&mut conn).await
    );
    let metrics = client()
        .get(format!("{}/metrics", b.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let claimed: u64 = metrics
        .lines()
        .find(|l| l.starts_with("sluice_observations_claimed_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    println!(
        "takeover: a was killed holding {left_behind} unacknowledged observations; b claimed {claimed}"
    );
    assert!(
        claimed >= left_behind,
        "b claimed {claimed} of the {left_behind} a left behind"
    );
}

//! The observation stream against a real Redis: publishing, one delivery per group,
//! and claiming the pending observations of a consumer that died.

use std::time::Duration;

use sluice_observe::{Consumer, ConsumerOptions, Observation, Publisher, PublisherOptions};
use sluice_testkit::RedisServer;

fn obs(i: u64) -> Observation {
    Observation::new(
        i,
        "openai",
        "gpt-4o",
        "key-0",
        429,
        [("retry-after", "1")],
        Some("{}"),
    )
}

fn options(name: &str, claim_after: Duration) -> ConsumerOptions {
    ConsumerOptions {
        name: name.to_owned(),
        block: Duration::from_millis(50),
        claim_after,
        ..ConsumerOptions::default()
    }
}

async fn read_until(c: &mut Consumer, n: usize) -> Vec<sluice_observe::Delivery> {
    let mut got = Vec::new();
    for _ in 0..200 {
        got.extend(c.read().await.unwrap());
        if got.len() >= n {
            break;
        }
    }
    got
}

#[tokio::test]
async fn each_observation_goes_to_one_member_of_the_group() {
    let server = RedisServer::start();
    let mut a = Consumer::join(&server.url(), options("a", Duration::from_secs(60)))
        .await
        .unwrap();
    let mut b = Consumer::join(&server.url(), options("b", Duration::from_secs(60)))
        .await
        .unwrap();
    let publisher = Publisher::spawn(server.url(), PublisherOptions::default());
    for i in 0..100 {
        assert!(publisher.publish(obs(i)));
    }
    let mut seen: Vec<u64> = Vec::new();
    for _ in 0..200 {
        for c in [&mut a, &mut b] {
            let got = c.read().await.unwrap();
            let ids: Vec<String> = got.iter().map(|d| d.id.clone()).collect();
            seen.extend(got.into_iter().map(|d| d.observation.unwrap().at_ms));
            c.ack(&ids).await.unwrap();
        }
        if seen.len() >= 100 {
            break;
        }
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..100).collect::<Vec<_>>(),
        "every observation exactly once"
    );
    assert_eq!(publisher.dropped(), 0);
}

#[tokio::test]
async fn a_dead_consumers_pending_observations_are_claimed() {
    let server = RedisServer::start();
    let mut dead = Consumer::join(&server.url(), options("dead", Duration::from_secs(60)))
        .await
        .unwrap();
    let publisher = Publisher::spawn(server.url(), PublisherOptions::default());
    for i in 0..10 {
        publisher.publish(obs(i));
    }
    // The dead consumer reads but never acknowledges.
    assert_eq!(read_until(&mut dead, 10).await.len(), 10);
    drop(dead);
    let mut heir = Consumer::join(&server.url(), options("heir", Duration::ZERO))
        .await
        .unwrap();
    let claimed = heir.claim_stale().await.unwrap();
    let mut at: Vec<u64> = claimed
        .iter()
        .map(|d| d.observation.as_ref().unwrap().at_ms)
        .collect();
    at.sort_unstable();
    assert_eq!(at, (0..10).collect::<Vec<_>>());
    let ids: Vec<String> = claimed.into_iter().map(|d| d.id).collect();
    heir.ack(&ids).await.unwrap();
    assert!(
        heir.claim_stale().await.unwrap().is_empty(),
        "acknowledged: nothing left to claim"
    );
}

#[tokio::test]
async fn publishing_without_redis_drops_and_never_blocks() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let publisher = Publisher::spawn(
        url,
        PublisherOptions {
            queue: 4,
            timeout: Duration::from_millis(200),
            ..PublisherOptions::default()
        },
    );
    // Publishing returns at once whether or not the observation was queued.
    for i in 0..100 {
        publisher.publish(obs(i));
    }
    for _ in 0..500 {
        if publisher.dropped() == 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        publisher.dropped(),
        100,
        "every observation is dropped and counted"
    );
}

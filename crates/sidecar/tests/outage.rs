//! The sidecar down: what it learned stays in Redis, so the gateways keep limiting on
//! it; the gateways keep serving and publishing while nobody consumes; a restarted
//! sidecar picks up the backlog its consumer group left.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice_sim::Dialect;
use sluice_testkit::RedisServer;

use crate::support::*;

const STREAM: &str = sluice_observe::DEFAULT_STREAM;
const GROUP: &str = "sluice-sidecar";
const PER: Duration = Duration::from_secs(2);

/// One answer of a gateway: its status (0 = no answer) and whether a 429 said when to
/// come back.
struct Answer {
    status: u16,
    retry_after: bool,
}

/// Sends `rate` requests per second spread over `gateways` for `duration` (open loop);
/// every answer.
async fn drive_answers(
    client: &reqwest::Client,
    gateways: &[String],
    model: &str,
    rate: u32,
    duration: Duration,
) -> Vec<Answer> {
    let started = Instant::now();
    let n = (duration.as_secs_f64() * f64::from(rate)) as u32;
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = started + Duration::from_secs_f64(f64::from(i) / f64::from(rate));
        tokio::time::sleep_until(at.into()).await;
        let (client, url) = (
            client.clone(),
            gateways[i as usize % gateways.len()].clone(),
        );
        let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "Say something short."}], "max_tokens": 8});
        tasks.push(tokio::spawn(async move {
            match client
                .post(format!("{url}/v1/chat/completions"))
                .json(&body)
                .send()
                .await
            {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let retry_after = r.headers().contains_key("retry-after");
                    // A body that does not arrive in full is no answer.
                    match r.bytes().await {
                        Ok(_) => Answer {
                            status,
                            retry_after,
                        },
                        Err(_) => Answer {
                            status: 0,
                            retry_after: false,
                        },
                    }
                }
                Err(_) => Answer {
                    status: 0,
                    retry_after: false,
                },
            }
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn by_status(answers: &[Answer]) -> BTreeMap<u16, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        *m.entry(a.status).or_insert(0) += 1;
    }
    m
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn xlen(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    redis::cmd("XLEN")
        .arg(STREAM)
        .query_async(conn)
        .await
        .expect("XLEN of the observations stream")
}

/// The group's `lag` (entries never delivered, Redis 7+) and `pending` (delivered, not
/// acknowledged), from `XINFO GROUPS`; `None` while the group does not exist. A Redis
/// error or a reply without those fields fails the test (it must not read as "none").
async fn group_backlog(conn: &mut redis::aio::MultiplexedConnection) -> Option<(u64, u64)> {
    let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(STREAM)
        .query_async(conn)
        .await
        .expect("XINFO GROUPS of the observations stream");
    let g = groups.into_iter().find(|g| {
        matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n.as_slice() == GROUP.as_bytes())
    })?;
    let int = |k: &str| match g.get(k) {
        Some(redis::Value::Int(n)) => *n as u64,
        other => panic!("XINFO GROUPS: {k} is {other:?}: {g:?}"),
    };
    Some((int("lag"), int("pending")))
}

/// `limits[0].effective` of account `key-0` in a process's `/v1/quotas`.
async fn effective(client: &reqwest::Client, base: &str) -> Option<u64> {
    let q = get_json(client, &format!("{base}/v1/quotas")).await;
    q["models"][0]["accounts"][0]["limits"][0]["effective"].as_u64()
}

/// The simulator's real limit is half of what Sluice is configured with (headers say
/// so). The sidecar learns it, then is killed: the learned limit stays in Redis and the
/// gateways keep applying it (the provider refuses (almost) nothing), every client gets
/// an answer (200, or the gateway's own 429 with Retry-After), observations pile up on
/// the stream; a restarted sidecar drains that backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_keep_the_learned_limit_while_the_sidecar_is_down() {
    let redis = RedisServer::start();
    let model = "outage-m";
    let real = 20;
    let sim = sim(
        model,
        Dialect::Openai,
        PER,
        &[SimAccount {
            name: "a",
            key: "sk-a",
            requests: real,
            background_rps: None,
        }],
    )
    .await;
    let toml = fleet_toml(
        &redis.url(),
        &sim.base_url(),
        "openai",
        &["sk-a"],
        model,
        2 * real,
        2,
        "",
    );
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(gateway(&toml).await);
    }
    let client = client();
    let mut conn = redis_conn(&redis.url()).await;

    // 1. The sidecar learns the real limit from the provider's headers.
    let sidecar = SidecarProcess::start(&toml, "s1");
    let ready = eventually(Duration::from_secs(15), || async {
        let r = client
            .get(format!("{}/readyz", sidecar.url))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    assert!(ready.is_some(), "the sidecar never became ready");
    let mut learned = None;
    for _ in 0..6 {
        drive_answers(&client, &gateways, model, 20, Duration::from_secs(2)).await;
        if let Some(e) = effective(&client, &gateways[0]).await
            && e <= real + real / 10
        {
            learned = Some(e);
            break;
        }
    }
    let learned = learned.unwrap_or_else(|| {
        panic!(
            "the sidecar never learned the real limit of {real} (configured {})",
            2 * real
        )
    });
    // One more window so that what the provider remembers of the learning is in the past.
    drive_answers(&client, &gateways, model, 20, PER).await;

    // 2. The sidecar dies.
    sidecar.signal("KILL");
    drop(sidecar);
    let stream_before = xlen(&mut conn).await;
    let (lag_before, _) = group_backlog(&mut conn).await.expect("the group exists");
    sim.sim().reset_stats();
    let t0 = Instant::now();
    let answers = drive_answers(&client, &gateways, model, 20, Duration::from_secs(8)).await;
    let elapsed = t0.elapsed();
    let after = sim.sim().stats().get("a", model).unwrap().clone();
    let statuses = by_status(&answers);
    let stream_after = xlen(&mut conn).await;
    let (lag_down, pending_down) = group_backlog(&mut conn).await.expect("the group exists");
    let effective_down = effective(&client, &gateways[1]).await;
    let capacity = (real as f64 * elapsed.as_secs_f64() / PER.as_secs_f64()).floor() as u64;
    println!(
        "sidecar down: learned {learned} of configured {} (real {real}); {} requests in {:.1}s: clients {statuses:?}; \
         sim accepted {} refused {} (capacity {capacity}); effective now {effective_down:?}; \
         stream {stream_before} -> {stream_after} entries, group lag {lag_before} -> {lag_down}, pending {pending_down}",
        2 * real,
        answers.len(),
        elapsed.as_secs_f64(),
        after.accepted,
        after.refused_total(),
    );
    // What was learned stays where every gateway reads it.
    assert_eq!(
        effective_down,
        Some(learned),
        "the learned limit changed or vanished"
    );
    // The gateways keep limiting on it: the provider refuses (almost) nothing, and what
    // it admits is most of its real limit (no collapse either).
    assert!(
        after.refused_total() * 20 <= after.accepted.max(20),
        "the provider refused {} for {} accepted with the sidecar down",
        after.refused_total(),
        after.accepted
    );
    assert!(
        after.accepted * 10 >= capacity * 8,
        "admitted {} of {capacity}",
        after.accepted
    );
    // Every client got an answer: a success, or the gateway's own 429 with Retry-After.
    assert!(
        answers
            .iter()
            .all(|a| a.status == 200 || (a.status == 429 && a.retry_after)),
        "answers other than 200 / 429 with Retry-After: {statuses:?}"
    );
    assert!(
        statuses.get(&200).copied().unwrap_or(0) as u64 >= after.accepted.min(capacity) * 9 / 10,
        "successes {statuses:?} vs sim accepted {}",
        after.accepted
    );
    // Publishing went on without a consumer: the stream grew and nothing of it was read.
    assert!(
        stream_after > stream_before,
        "the stream did not grow: {stream_before} -> {stream_after}"
    );
    assert!(
        lag_down >= lag_before + (stream_after - stream_before),
        "lag {lag_before} -> {lag_down} for {} new entries",
        stream_after - stream_before
    );

    // 3. A sidecar comes back under the same name: it reads the backlog and claims what
    // the dead one held, until the group has nothing unread and nothing pending.
    let backlog = lag_down;
    let sidecar = SidecarProcess::start(&toml, "s1");
    let drained = eventually(Duration::from_secs(30), || {
        let mut c = conn.clone();
        async move {
            let (lag, pending) = group_backlog(&mut c).await?;
            (lag == 0 && pending == 0).then_some(())
        }
    })
    .await;
    assert!(
        drained.is_some(),
        "backlog not drained: (lag, pending) = {:?}",
        group_backlog(&mut conn).await
    );
    let consumed = metric(
        &client,
        &sidecar.url,
        "sluice_observations_consumed_total",
        &[],
    )
    .await as u64;
    println!("sidecar back: backlog {backlog} + {pending_down} pending; consumed {consumed}");
    assert!(
        consumed >= backlog,
        "the restarted sidecar applied {consumed} of a backlog of {backlog}"
    );
    // And it did not undo what was learned.
    assert_eq!(effective(&client, &gateways[2]).await, Some(learned));
}

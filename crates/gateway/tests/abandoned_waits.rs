//! Issue #12, point 6: a client that gives up while queued gives its slot back. Three
//! gateway processes share one Redis and one account allowing 20 requests per 10 s;
//! twelve closed-loop clients whose HTTP timeout is 1 s (and who never send
//! `x-sluice-max-wait`) keep asking. The simulator is the referee: it must have served
//! at least 85% of what the account allows over the run, and refused nothing.

use std::time::{Duration, Instant};

use sluice_testkit::RedisServer;

use crate::support::*;

/// How long the clients keep asking.
const RUN: Duration = Duration::from_secs(30);
/// The account's limit: requests per window.
const LIMIT: u64 = 20;
const WINDOW: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_give_up_hand_their_slots_to_later_waiters() {
    let redis = RedisServer::start();
    let sim = sim(
        vec![sim_model("impatient-m", LIMIT, 1_000_000, WINDOW)],
        &[],
    )
    .await;
    let toml = format!(
        r#"
[store]
redis_url = "{redis}"
expected_replicas = 3
[[upstreams]]
name = "sim"
base_url = "{base}"
keys = ["sk-impatient"]
[[models]]
name = "impatient-m"
upstream = "sim"
limits = [{{ requests = {LIMIT}, per = "10s" }}]
[queue]
max_wait = "30s"
"#,
        redis = redis.url(),
        base = sim.base_url()
    );
    let gateways: Vec<GatewayProcess> = (0..3).map(|_| GatewayProcess::start(&toml)).collect();
    // An SDK user with a short timeout: gives up after 1 s and asks again at once.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let started = Instant::now();
    let deadline = started + RUN;
    let mut clients = Vec::new();
    for i in 0..12usize {
        let (client, url) = (impatient.clone(), gateways[i % 3].url.clone());
        clients.push(tokio::spawn(async move {
            let (mut ok, mut abandoned, mut refused) = (0u64, 0u64, 0u64);
            while Instant::now() < deadline {
                let sent = client
                    .post(format!("{url}/v1/chat/completions"))
                    .json(&ask("impatient-m", 8))
                    .send()
                    .await;
                match sent {
                    Ok(resp) if resp.status() == 200 => ok += 1,
                    Ok(resp) => {
                        assert_eq!(resp.status(), 429, "neither 200 nor 429");
                        refused += 1;
                        // An honest refusal says when to come back; an SDK waits (capped).
                        let after = resp
                            .headers()
                            .get("retry-after-ms")
                            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                            .unwrap_or(1000)
                            .min(1000);
                        tokio::time::sleep(Duration::from_millis(after)).await;
                    }
                    Err(e) => {
                        assert!(e.is_timeout(), "the gateway answers or times out: {e}");
                        abandoned += 1;
                    }
                }
            }
            (ok, abandoned, refused)
        }));
    }
    let (mut ok, mut abandoned, mut refused) = (0, 0, 0);
    for c in clients {
        let (o, a, r) = c.await.unwrap();
        ok += o;
        abandoned += a;
        refused += r;
    }
    let span = started.elapsed();
    let stats = sim.sim().stats();
    let report = stats
        .accounts
        .values()
        .find_map(|a| a.models.get("impatient-m"))
        .expect("the sim saw the model");
    assert_eq!(
        report.refused_total(),
        0,
        "the simulator refused: {:?}",
        report.refused
    );
    // What the provider would have allowed over the clients' run: LIMIT per WINDOW.
    let allowed = LIMIT * RUN.as_secs() / WINDOW.as_secs();
    let served = report.accepted;
    eprintln!(
        "served {served} of {allowed} allowed in {span:?} (goodput {:.2}); \
         clients: {ok} ok, {abandoned} abandoned, {refused} refused",
        served as f64 / allowed as f64
    );
    assert!(
        served * 100 >= allowed * 85,
        "served {served} of the {allowed} the provider allowed: abandoned waits kept their slots"
    );
}

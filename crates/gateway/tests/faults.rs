//! Faults with real processes and sockets. Redis killed, restarted and slowed under
//! three gateway processes and open-loop load (per `store.on_error`); a gateway killed
//! while it relays a stream; upstreams that are down, slower than the timeout,
//! resetting connections, cutting answers and streams, or failing with 5xx.
//!
//! Every request must end in an answer: a client timeout far past every deadline turns
//! a hang into a failure. The simulator referees what reached the provider. Nothing
//! asserts how long anything took; the fault timeline is a schedule, not a signal.

use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::join_all;
use sluice_sim::{FaultRule, SimHandle, Unit};
use sluice_testkit::RedisServer;

use crate::stub::{Fault, fault_server};
use crate::support::sim_report as report;
use crate::support::*;

/// The limiter's count of decisions made without Redis (by the failure policy).
const DEGRADED: &str = "sluice_limiter_degraded_decisions_total";

/// A safety net only: far past every deadline configured here.
const HUNG: Duration = Duration::from_secs(30);

fn patient_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(HUNG)
        .pool_max_idle_per_host(256)
        .build()
        .unwrap()
}

/// Three gateways' configuration: one account of `model` at the simulator, `requests`
/// per 2 s, decisions in `redis` under `policy`.
fn fleet_toml(redis: &str, sim: &SimHandle, model: &str, requests: u64, policy: &str) -> String {
    format!(
        r#"
[store]
redis_url = "{redis}"
expected_replicas = 3
on_error = "{policy}"
[[upstreams]]
name = "sim"
base_url = "{base}"
keys = ["sk-fleet"]
[[models]]
name = "{model}"
upstream = "sim"
limits = [{{ requests = {requests}, per = "2s" }}, {{ tokens = 1000000, per = "2s" }}]
pacing = "off"
[queue]
max_wait = "1s"
[retry]
base = "10ms"
cap = "50ms"
"#,
        base = sim.base_url()
    )
}

fn limit_of(r: &sluice_sim::stats::ModelReport, unit: Unit) -> sluice_sim::stats::LimitReport {
    *r.limits.iter().find(|l| l.unit == unit).unwrap()
}

/// One request of an open-loop run.
struct Record {
    issued: Instant,
    answered: Instant,
    answer: Answer,
}

/// Open-loop load: `rate` chat requests per second for `run`, round-robin over `urls`
/// (arrivals do not wait for answers). Each answered request is also pushed to `live` as
/// it completes, so the test can act on what has been answered so far; the handle yields
/// every request once all are answered.
fn open_loop(
    urls: Vec<String>,
    model: &str,
    rate: u64,
    run: Duration,
    live: Option<tokio::sync::mpsc::UnboundedSender<(Instant, u16)>>,
) -> tokio::task::JoinHandle<Vec<Record>> {
    let model = model.to_owned();
    tokio::spawn(async move {
        let client = patient_client();
        let started = Instant::now();
        let n = rate * run.as_millis() as u64 / 1000;
        let mut tasks = Vec::new();
        for i in 0..n {
            tokio::time::sleep_until((started + Duration::from_millis(i * 1000 / rate)).into())
                .await;
            let (c, url, model, live) = (
                client.clone(),
                urls[i as usize % urls.len()].clone(),
                model.clone(),
                live.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let issued = Instant::now();
                let answer = chat(&c, &url, ask(&model, 16), &[]).await;
                let answered = Instant::now();
                if let Some(live) = live {
                    let _ = live.send((issued, answer.status));
                }
                Record {
                    issued,
                    answered,
                    answer,
                }
            }));
        }
        let mut records = Vec::with_capacity(tasks.len());
        for t in tasks {
            records.push(t.await.expect("every request is answered"));
        }
        records
    })
}

/// A 503 of the fail-closed policy: OpenAI-shaped, with Retry-After.
fn assert_store_unavailable(a: &Answer) {
    assert_openai_error(a, 503, "store_unavailable");
    assert!(a.headers.contains_key("retry-after-ms"), "{a:?}");
}

async fn degraded_total(c: &reqwest::Client, gateways: &[GatewayProcess]) -> f64 {
    let mut sum = 0.0;
    for g in gateways {
        // A gateway that never decided without Redis has no such series yet.
        sum += metric_or_zero(c, &g.url, DEGRADED, &[]).await;
    }
    sum
}

/// After Redis is back: each gateway serves a request through Redis again (its
/// degraded-decision count stops growing), `/readyz` says ready, and the restarted,
/// empty Redis holds the model's window again (the scripts were loaded anew).
async fn shared_again(
    c: &reqwest::Client,
    gateways: &[GatewayProcess],
    redis: &RedisServer,
    model: &str,
) {
    for (i, g) in gateways.iter().enumerate() {
        let url = g.url.as_str();
        let through_redis = eventually(HUNG, || async move {
            let before = metric_or_zero(c, url, DEGRADED, &[]).await;
            let a = chat(c, url, ask(model, 16), &[]).await;
            let after = metric_or_zero(c, url, DEGRADED, &[]).await;
            a.status == 200 && before == after
        })
        .await;
        assert!(
            through_redis,
            "gateway {i} still decides without Redis after the restart"
        );
        let ready: serde_json::Value = c
            .get(format!("{url}/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ready["status"], "ready", "gateway {i}: {ready}");
    }
    let keys = redis.cli(&["--scan", "--pattern", "sluice:*:w:*"]);
    assert!(
        keys.contains(model),
        "the restarted Redis holds no window of {model}: {keys:?}"
    );
}

/// What happened around one outage.
struct Outage {
    records: Vec<Record>,
    /// When `kill` had returned: Redis was gone.
    killed: Instant,
    /// When the restart began.
    restarting: Instant,
    /// The simulator's accepted count when the restart began.
    accepted_at_restart: u64,
    /// The simulator's refusals when Redis died and when the restart began.
    refused_at: [u64; 2],
    sim: SimHandle,
    redis: RedisServer,
    gateways: Vec<GatewayProcess>,
}

impl Outage {
    /// Requests issued after Redis died and answered before it came back: decided
    /// entirely during the outage.
    fn during(&self) -> Vec<&Answer> {
        self.records
            .iter()
            .filter(|r| r.issued >= self.killed && r.answered < self.restarting)
            .map(|r| &r.answer)
            .collect()
    }
}

/// After an outage: some decisions were degraded, every gateway decides through Redis
/// again, and the simulator refused nothing.
async fn recovered_with_nothing_refused(o: &Outage, model: &str) {
    let c = patient_client();
    assert!(degraded_total(&c, &o.gateways).await > 0.0);
    shared_again(&c, &o.gateways, &o.redis, model).await;
    let r = report(&o.sim, model);
    assert_eq!(
        r.refused_total(),
        0,
        "the simulator refused: {:?}",
        r.refused
    );
}

/// Three gateways under `policy`; 10 requests/s for 10 s (twice the quota of 10 per
/// 2 s), Redis killed at 2 s and restarted once the outage has been seen through: every
/// gateway has made a degraded decision, at least [`OUTAGE_ANSWERS`] requests issued
/// after the kill were answered (under `local`, one of them served), and more than one
/// window has passed since the kill. The restart is
/// driven by those signals, not by a fixed delay, so a loaded machine that opens the
/// breaker late still sees the whole outage; [`OUTAGE_DEADLINE`] bounds the wait (the
/// assertions then say what was missing). The simulator allows `sim_requests` per 2 s.
async fn kill_redis_under_load(policy: &str, model: &str, sim_requests: u64) -> Outage {
    let mut redis = RedisServer::start();
    let sim = sim(
        vec![sim_model(
            model,
            sim_requests,
            1_000_000,
            Duration::from_secs(2),
        )],
        &[],
    )
    .await;
    let toml = fleet_toml(&redis.url(), &sim, model, 10, policy);
    let gateways: Vec<GatewayProcess> = (0..3).map(|_| GatewayProcess::start(&toml)).collect();
    let c = patient_client();
    for g in &gateways {
        let a = chat(&c, &g.url, ask(model, 16), &[]).await;
        assert_eq!(a.status, 200, "warm-up: {a:?}");
    }
    sim.sim().reset_stats();
    let started = Instant::now();
    let urls = gateways.iter().map(|g| g.url.clone()).collect();
    let (live_tx, mut live) = tokio::sync::mpsc::unbounded_channel();
    let load = open_loop(urls, model, 10, Duration::from_secs(10), Some(live_tx));
    tokio::time::sleep_until((started + Duration::from_secs(2)).into()).await;
    tokio::task::block_in_place(|| redis.kill());
    let killed = Instant::now();
    let refused_at_kill = report(&sim, model).refused_total();
    let deadline = started + OUTAGE_DEADLINE;
    let (mut answered, mut served) = (0usize, 0usize);
    loop {
        while let Ok((issued, status)) = live.try_recv() {
            if issued >= killed {
                answered += 1;
                served += usize::from(status == 200);
            }
        }
        // A restarted Redis is empty: it comes back only once the provider's window
        // (2 s) holds nothing granted before the kill, as a real one would by then have
        // forgotten that much, or its first grants would overshoot.
        let enough = answered >= OUTAGE_ANSWERS
            && (policy != "local" || served > 0)
            && killed.elapsed() > Duration::from_millis(2250);
        if Instant::now() >= deadline || (enough && all_degraded(&c, &gateways).await) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restarting = Instant::now();
    let at_restart = report(&sim, model);
    let accepted_at_restart = at_restart.accepted;
    tokio::task::block_in_place(|| redis.restart());
    let records = load.await.expect("the load ran");
    Outage {
        records,
        killed,
        restarting,
        accepted_at_restart,
        refused_at: [refused_at_kill, at_restart.refused_total()],
        sim,
        redis,
        gateways,
    }
}

/// Answers to requests issued after the kill that an outage waits for before Redis
/// comes back: enough to judge the policy by.
const OUTAGE_ANSWERS: usize = 6;

/// The latest moment after the load's start at which Redis is restarted, whatever was
/// seen (the load runs 10 s).
const OUTAGE_DEADLINE: Duration = Duration::from_secs(8);

/// Whether every gateway has made at least one decision without Redis (the counter
/// appears with its first degraded decision).
async fn all_degraded(c: &reqwest::Client, gateways: &[GatewayProcess]) -> bool {
    for g in gateways {
        if try_metric(c, &g.url, DEGRADED, &[]).await.unwrap_or(0.0) == 0.0 {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_under_load_fail_closed_refuses_honestly_and_sends_nothing_upstream() {
    let model = "outage-closed-m";
    let o = kill_redis_under_load("fail_closed", model, 10).await;
    for r in &o.records {
        match r.answer.status {
            503 => assert_store_unavailable(&r.answer),
            _ => assert_honest(&r.answer),
        }
    }
    let during = o.during();
    assert!(
        during.len() >= 3,
        "the outage saw too few requests to judge: {}",
        during.len()
    );
    for a in &during {
        assert_store_unavailable(a);
    }
    let served_before: u64 = o
        .records
        .iter()
        .filter(|r| r.issued < o.killed && r.answer.status == 200)
        .count() as u64;
    assert!(
        o.accepted_at_restart <= served_before,
        "the simulator accepted {} by the restart, but only {served_before} requests were granted before Redis died",
        o.accepted_at_restart
    );
    recovered_with_nothing_refused(&o, model).await;
    let served = o.records.iter().filter(|r| r.answer.status == 200).count() as u64;
    assert!(
        served >= 5,
        "Redis up for at least 2 of 10 s should serve something: {served}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_under_load_fail_open_keeps_serving_unmetered() {
    let model = "outage-open-m";
    // The provider allows far more than the configured quota: what fail-open lets
    // through unmetered is served, not refused by the provider.
    let o = kill_redis_under_load("fail_open", model, 1000).await;
    for r in &o.records {
        assert_honest(&r.answer);
    }
    let during = o.during();
    assert!(
        during.len() >= 3,
        "the outage saw too few requests to judge: {}",
        during.len()
    );
    let refused: Vec<_> = during.iter().filter(|a| a.status != 200).collect();
    assert!(
        refused.is_empty(),
        "fail_open refused during the outage: {refused:?}"
    );
    recovered_with_nothing_refused(&o, model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_under_load_local_keeps_the_fleet_within_the_providers_limit() {
    let model = "outage-local-m";
    let o = kill_redis_under_load("local", model, 10).await;
    // The referee first: the fleet never went over the provider's limit, not on entering
    // local mode, not during the outage, not on returning to Redis.
    let r = report(&o.sim, model);
    let requests = limit_of(&r, Unit::Requests);
    assert_eq!(
        r.refused_total(),
        0,
        "the simulator refused across the Redis outage: {:?} (peak {} of {}); by the kill {}, by the restart {}",
        r.refused,
        requests.peak,
        requests.limit,
        o.refused_at[0],
        o.refused_at[1],
    );
    assert!(requests.peak <= requests.limit, "{requests:?}");
    for rec in &o.records {
        assert_honest(&rec.answer);
    }
    let during = o.during();
    assert!(
        during.iter().any(|a| a.status == 200),
        "local mode served nothing during the outage: {} requests",
        during.len()
    );
    let c = patient_client();
    assert!(degraded_total(&c, &o.gateways).await > 0.0);
    shared_again(&c, &o.gateways, &o.redis, model).await;
    let r = report(&o.sim, model);
    assert_eq!(
        r.refused_total(),
        0,
        "refused after the restart: {:?}",
        r.refused
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_or_sleeping_redis_is_timed_out_and_every_request_answered() {
    let model = "slow-redis-m";
    let redis = RedisServer::start_debuggable();
    let sim = sim(
        vec![sim_model(model, 10, 1_000_000, Duration::from_secs(2))],
        &[],
    )
    .await;
    let toml = fleet_toml(&redis.url(), &sim, model, 10, "fail_closed");
    let gateways: Vec<GatewayProcess> = (0..3).map(|_| GatewayProcess::start(&toml)).collect();
    let c = patient_client();
    for g in &gateways {
        assert_eq!(chat(&c, &g.url, ask(model, 16), &[]).await.status, 200);
    }
    assert_eq!(degraded_total(&c, &gateways).await, 0.0);
    let started = Instant::now();
    let urls = gateways.iter().map(|g| g.url.clone()).collect();
    let load = open_loop(urls, model, 10, Duration::from_secs(6), None);
    tokio::time::sleep_until((started + Duration::from_secs(1)).into()).await;
    assert!(
        tokio::task::block_in_place(|| redis.pause_clients(Duration::from_millis(1500))),
        "CLIENT PAUSE"
    );
    tokio::time::sleep_until((started + Duration::from_millis(3500)).into()).await;
    assert!(
        tokio::task::block_in_place(|| redis.debug_sleep(Duration::from_millis(1500))),
        "DEBUG SLEEP"
    );
    let records = load.await.expect("the load ran");
    let mut unavailable = 0;
    for r in &records {
        match r.answer.status {
            503 => {
                assert_store_unavailable(&r.answer);
                unavailable += 1;
            }
            _ => assert_honest(&r.answer),
        }
    }
    assert!(
        unavailable > 0,
        "nothing was refused for the store: the requests waited Redis out"
    );
    assert!(
        degraded_total(&c, &gateways).await > 0.0,
        "the store timeout never decided"
    );
    shared_again(&c, &gateways, &redis, model).await;
    let r = report(&sim, model);
    assert_eq!(
        r.refused_total(),
        0,
        "the simulator refused: {:?}",
        r.refused
    );
}

/// Reads a streamed answer to its end; returns what arrived and whether it ended in a
/// transport error (rather than a clean end of body).
async fn drain(body: impl futures::Stream<Item = reqwest::Result<bytes::Bytes>>) -> (String, bool) {
    let mut body = std::pin::pin!(body);
    let mut got = String::new();
    let ended = tokio::time::timeout(HUNG, async {
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(b) => got.push_str(&String::from_utf8_lossy(&b)),
                Err(_) => return true,
            }
        }
        false
    })
    .await;
    let error = ended.expect("the stream neither ended nor failed");
    (got, error)
}

async fn start_stream(
    c: &reqwest::Client,
    base: &str,
    model: &str,
    max_tokens: u64,
) -> reqwest::Response {
    let mut body = ask(model, max_tokens);
    body["stream"] = true.into();
    c.post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("the gateway answers")
}

/// `used` of every limit of every account of `model` in `GET {base}/v1/quotas`.
async fn quota_used(c: &reqwest::Client, base: &str, model: &str) -> Vec<(String, u64)> {
    let q: serde_json::Value = c
        .get(format!("{base}/v1/quotas"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let m = q["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == model)
        .unwrap_or_else(|| panic!("{model} not in {q}"));
    m["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|a| a["limits"].as_array().unwrap().iter())
        .map(|l| {
            (
                l["unit"].as_str().unwrap().to_owned(),
                l["used"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn used_of(used: &[(String, u64)], unit: &str) -> u64 {
    used.iter().filter(|(u, _)| u == unit).map(|(_, n)| n).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_killed_mid_stream_cuts_only_that_stream_and_its_reservation_ages_out() {
    let model = "midstream-m";
    let redis = RedisServer::start();
    let mut m = sim_model(model, 6, 1_000_000, Duration::from_secs(2));
    // 4 tokens a chunk, a chunk every 200 ms: a 400-token answer streams for 20 s.
    m.latency.per_token = Duration::from_millis(50);
    let sim = sim(vec![m], &[]).await;
    let toml = fleet_toml(&redis.url(), &sim, model, 6, "local");
    let mut gateways: Vec<GatewayProcess> = (0..3).map(|_| GatewayProcess::start(&toml)).collect();
    let c = patient_client();
    let resp = start_stream(&c, &gateways[0].url, model, 400).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    // Wait until content is being relayed: the stream is in flight.
    let mut got = String::new();
    while got.matches("data: ").count() < 2 {
        let chunk = tokio::time::timeout(HUNG, body.next())
            .await
            .expect("the stream moves")
            .expect("the stream goes on")
            .expect("no error before the kill");
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    tokio::task::block_in_place(|| gateways[0].kill());
    let (rest, error) = drain(body).await;
    got.push_str(&rest);
    assert!(
        !got.contains("[DONE]") && !got.contains("\"finish_reason\":\"length\""),
        "a stream whose gateway died looks complete (error: {error}): {got}"
    );
    // The rest of the fleet carries on.
    for g in &gateways[1..] {
        let a = chat(&c, &g.url, ask(model, 16), &[]).await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    // The dead gateway's reservation (and everything else) leaves the 2 s window ...
    let url = gateways[1].url.clone();
    let aged = eventually(HUNG, || {
        let (c, url) = (&c, url.as_str());
        async move { quota_used(c, url, model).await.iter().all(|(_, n)| *n == 0) }
    })
    .await;
    assert!(
        aged,
        "the window never emptied: {:?}",
        quota_used(&c, &url, model).await
    );
    // ... so the surviving gateways can use the full limit at once.
    let now = join_all((0..6).map(|i| {
        let (c, url) = (c.clone(), gateways[1 + i % 2].url.clone());
        async move { chat(&c, &url, ask(model, 16), &[("x-sluice-max-wait", "0s")]).await }
    }))
    .await;
    let served = now.iter().filter(|a| a.status == 200).count();
    assert_eq!(served, 6, "the full limit is free again: {now:?}");
    let r = report(&sim, model);
    assert_eq!(
        r.refused_total(),
        0,
        "the simulator refused: {:?}",
        r.refused
    );
}

fn upstream_toml(models: &[(&str, &str)], extra: &str) -> String {
    let mut toml = String::from(extra);
    for (i, (model, base)) in models.iter().enumerate() {
        toml.push_str(&format!(
            "[[upstreams]]\nname = \"up{i}\"\nbase_url = \"{base}\"\nkeys = [\"sk-fault-{i}\"]\n[[models]]\nname = \"{model}\"\nupstream = \"up{i}\"\nrpm = 1000\ntpm = 1000000\n"
        ));
    }
    toml
}

const RETRY: &str = "[retry]\nmax_attempts = 3\nbase = \"10ms\"\ncap = \"50ms\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_resetting_or_cutting_upstream_is_an_honest_502_after_bounded_attempts() {
    let closed = format!("http://127.0.0.1:{}/v1", sluice_testkit::free_port());
    let reset = fault_server(Fault::Reset).await;
    let cut = fault_server(Fault::CutBody).await;
    let cut_sse = fault_server(Fault::CutStream).await;
    let gw = gateway(&upstream_toml(
        &[
            ("closed-port-m", &closed),
            ("reset-m", &reset.base_url),
            ("cut-body-m", &cut.base_url),
            ("cut-sse-m", &cut_sse.base_url),
        ],
        RETRY,
    ))
    .await;
    let c = patient_client();

    // Nothing listens: each attempt fails to connect; three attempts, then a 502.
    let a = chat(&c, &gw, ask("closed-port-m", 8), &[]).await;
    assert_openai_error(&a, 502, "upstream_unreachable");
    let tries = metric(
        &c,
        &gw,
        "sluice_upstream_errors_total",
        &["model=\"closed-port-m\"", "reason=\"unreachable\""],
    )
    .await;
    assert_eq!(tries, 3.0, "attempts at a closed port");

    // Reset after reading the request: retried, at most max_attempts times.
    let a = chat(&c, &gw, ask("reset-m", 8), &[]).await;
    assert_openai_error(&a, 502, "upstream_unreachable");
    assert!(!a.body.contains("sk-fault"), "{a:?}");
    assert_eq!(reset.requests(), 3, "attempts at a resetting upstream");

    // A 200 whose body is cut: an honest 502, never the half body as a 200.
    let a = chat(&c, &gw, ask("cut-body-m", 8), &[]).await;
    assert_openai_error(&a, 502, "upstream_unreachable");
    assert!((1..=3).contains(&cut.requests()), "{}", cut.requests());

    // A stream cut at the transport: the client's stream fails, without [DONE].
    let resp = start_stream(&c, &gw, "cut-sse-m", 8).await;
    assert_eq!(resp.status(), 200);
    let (got, error) = drain(resp.bytes_stream()).await;
    assert!(
        got.contains("\"Hi\""),
        "the first event was relayed: {got:?}"
    );
    assert!(!got.contains("[DONE]"), "{got:?}");
    assert!(error, "the cut is passed on as a transport error: {got:?}");
    assert_eq!(cut_sse.requests(), 1, "a started stream is not retried");
}

/// A simulator serving `model` with the latency `slow` sets, behind an in-process
/// gateway whose `server.upstream_timeout` is 300 ms.
async fn behind_a_300ms_timeout(
    model: &str,
    slow: impl FnOnce(&mut sluice_sim::config::Latency),
) -> (sluice_sim::SimHandle, String) {
    let mut m = sim_model(model, 1000, 1_000_000, Duration::from_secs(60));
    slow(&mut m.latency);
    let sim = sim(vec![m], &[]).await;
    let gw = gateway(&upstream_toml(
        &[(model, &sim.base_url())],
        &format!("[server]\nupstream_timeout = \"300ms\"\n{RETRY}"),
    ))
    .await;
    (sim, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_slower_than_the_timeout_is_an_honest_504_not_retried() {
    let model = "sluggish-m";
    let (sim, gw) =
        behind_a_300ms_timeout(model, |l| l.first_token = Duration::from_secs(20)).await;
    let c = patient_client();
    let a = chat(&c, &gw, ask(model, 8), &[]).await;
    assert_openai_error(&a, 504, "upstream_timeout");
    // The provider may still be working on (and charging for) the attempt that timed
    // out: it is not sent again.
    assert_eq!(
        report(&sim, model).accepted,
        1,
        "attempts that reached the provider"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_keeps_sending_outlives_the_upstream_timeout() {
    let model = "steady-m";
    // 40 tokens at 20 ms each: about 800 ms in all, no silence near the 300 ms timeout.
    let (sim, gw) =
        behind_a_300ms_timeout(model, |l| l.per_token = Duration::from_millis(20)).await;
    let c = patient_client();
    let resp = start_stream(&c, &gw, model, 40).await;
    assert_eq!(resp.status(), 200);
    let (got, error) = drain(resp.bytes_stream()).await;
    assert!(!error && got.ends_with("data: [DONE]\n\n"), "{got:?}");
    assert_eq!(report(&sim, model).accepted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_streams_keep_their_estimate_and_whole_ones_reconcile_to_the_sims_counts() {
    let (cut_m, whole_m) = ("stream-cut-m", "stream-whole-m");
    let per = Duration::from_secs(60);
    let mut config = sluice_sim::Config::with_models(vec![
        sim_model(cut_m, 1000, 1_000_000, per),
        sim_model(whole_m, 1000, 1_000_000, per),
    ]);
    config.faults.push(FaultRule {
        model: Some(cut_m.to_owned()),
        stream_cut: 1.0,
        ..FaultRule::default()
    });
    let sim = sluice_sim::spawn(config).await.expect("sim starts");
    let base = sim.base_url();
    let gw = gateway(&upstream_toml(&[(cut_m, &base), (whole_m, &base)], "")).await;
    let c = patient_client();
    for _ in 0..4 {
        let resp = start_stream(&c, &gw, cut_m, 40).await;
        assert_eq!(resp.status(), 200);
        let (got, error) = drain(resp.bytes_stream()).await;
        assert!(
            got.contains("data: {"),
            "the first half was relayed: {got:?}"
        );
        assert!(!got.contains("[DONE]"), "{got:?}");
        assert!(error, "the cut is passed on as a transport error: {got:?}");
        let resp = start_stream(&c, &gw, whole_m, 40).await;
        assert_eq!(resp.status(), 200);
        let (got, error) = drain(resp.bytes_stream()).await;
        assert!(!error && got.ends_with("data: [DONE]\n\n"), "{got:?}");
    }
    let cut = report(&sim, cut_m);
    let whole = report(&sim, whole_m);
    assert_eq!((cut.accepted, cut.faults.stream_cut), (4, 4));
    assert_eq!(whole.accepted, 4);
    let sim_tokens = |r: &sluice_sim::stats::ModelReport| limit_of(r, Unit::Tokens).used;
    // Whole streams: the limiter's window holds exactly what the provider counted.
    let want = sim_tokens(&whole);
    let reconciled = eventually(HUNG, || {
        let (c, gw) = (&c, gw.as_str());
        async move {
            let used = quota_used(c, gw, whole_m).await;
            used_of(&used, "tokens") == want && used_of(&used, "requests") == 4
        }
    })
    .await;
    assert!(
        reconciled,
        "whole streams: limiter {:?}, simulator {} tokens",
        quota_used(&c, &gw, whole_m).await,
        sim_tokens(&whole)
    );
    // Cut streams: no usage came back, so the estimate stands — never less than what
    // the provider counted for the half it sent.
    let used = quota_used(&c, &gw, cut_m).await;
    assert_eq!(used_of(&used, "requests"), 4);
    assert!(
        used_of(&used, "tokens") >= sim_tokens(&cut),
        "a cut stream under-counted: limiter {used:?}, simulator {} tokens",
        sim_tokens(&cut)
    );
    // Absent is the expected answer: no actual usage was ever counted for this model.
    let actual = metric_or_zero(
        &c,
        &gw,
        "sluice_tokens_total",
        &[&format!("model=\"{cut_m}\""), "source=\"actual\""],
    )
    .await;
    assert_eq!(actual, 0.0, "no usage was seen for a cut stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_within_max_attempts() {
    let model = "flaky-m";
    let mut config = sluice_sim::Config::with_models(vec![sim_model(
        model,
        1000,
        1_000_000,
        Duration::from_secs(60),
    )]);
    config.seed = 7;
    config.faults.push(FaultRule {
        model: Some(model.to_owned()),
        server_error: 0.5,
        ..FaultRule::default()
    });
    let sim = sluice_sim::spawn(config).await.expect("sim starts");
    let gw = gateway(&upstream_toml(&[(model, &sim.base_url())], RETRY)).await;
    let c = patient_client();
    let n = 20u64;
    let mut ok = 0u64;
    for _ in 0..n {
        let a = chat(&c, &gw, ask(model, 8), &[]).await;
        match a.status {
            200 => ok += 1,
            500 => {
                let body: serde_json::Value = serde_json::from_str(&a.body).unwrap();
                assert!(body["error"]["message"].is_string(), "{a:?}");
            }
            _ => panic!("neither served nor the provider's 500: {a:?}"),
        }
    }
    let r = report(&sim, model);
    let faults = r.faults.server_error;
    let failed = n - ok;
    assert_eq!(
        r.accepted, ok,
        "every 200 was one acceptance at the provider"
    );
    // A failed request used all three attempts; a served one at most two before it.
    assert!(
        faults <= 3 * failed + 2 * ok,
        "{faults} server errors for {ok} served and {failed} failed: more than 3 attempts each"
    );
    assert!(
        faults > 3 * failed,
        "no request was saved by a retry: {faults} errors, {failed} failed"
    );
    // Every attempt was one request against the limiter's window.
    let used = quota_used(&c, &gw, model).await;
    assert_eq!(used_of(&used, "requests"), r.accepted + faults, "{used:?}");
}

//! Three gateway processes sharing one Redis, driven three times over the quota of a
//! `sluice-sim` account: the simulator refuses nothing, the limits are used to at
//! least 95%, and every client request ends in a 200 or an honest 429.

use std::time::{Duration, Instant};

use sluice_testkit::RedisServer;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_share_one_quota_and_the_provider_refuses_nothing() {
    let redis = RedisServer::start();
    let per = Duration::from_secs(3);
    let sim = sim(vec![sim_model("fleet-m", 30, 60_000, per)], &[]).await;
    let toml = format!(
        r#"
[store]
redis_url = "{redis}"
expected_replicas = 3
[[upstreams]]
name = "sim"
base_url = "{base}"
keys = ["sk-fleet"]
[[models]]
name = "fleet-m"
upstream = "sim"
limits = [{{ requests = 30, per = "3s" }}, {{ tokens = 60000, per = "3s" }}]
[queue]
max_wait = "2s"
"#,
        redis = redis.url(),
        base = sim.base_url()
    );
    let gateways: Vec<GatewayProcess> = (0..3).map(|_| GatewayProcess::start(&toml)).collect();
    let client = client();
    // Warm each gateway's connections first; the limiter keeps counting these, the
    // simulator's counters start afresh (its meter keeps them too).
    for g in &gateways {
        assert_eq!(
            chat(&client, &g.url, ask("fleet-m", 16), &[]).await.status,
            200
        );
    }
    sim.sim().reset_stats();
    // Open loop at 30 requests/s for 6 s: three times the 10/s the quota allows.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..180u32 {
        let at = started + Duration::from_millis(u64::from(i) * 1000 / 30);
        tokio::time::sleep_until(at.into()).await;
        let (client, url) = (client.clone(), gateways[i as usize % 3].url.clone());
        tasks.push(tokio::spawn(async move {
            chat(&client, &url, ask("fleet-m", 16), &[]).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let a = t.await.unwrap();
        assert_honest(&a);
        ok += usize::from(a.status == 200);
    }
    let stats = sim.sim().stats();
    let report = stats
        .accounts
        .values()
        .find_map(|a| a.models.get("fleet-m"))
        .expect("the sim saw the model");
    assert_eq!(
        report.refused_total(),
        0,
        "the simulator refused: {:?}",
        report.refused
    );
    assert_eq!(report.accepted as usize, ok);
    let requests = report
        .limits
        .iter()
        .find(|l| l.unit == sluice_sim::Unit::Requests)
        .unwrap();
    assert!(
        requests.peak * 100 >= requests.limit * 95,
        "peak {} of limit {}: the quota is under-used",
        requests.peak,
        requests.limit
    );
    assert!(
        ok >= 50,
        "6 s at 10/s (plus a first window) should serve well over 50, served {ok}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_process_drains_and_exits_cleanly_on_sigterm() {
    let sim = sim(
        vec![sim_model(
            "drain-m",
            1000,
            1_000_000,
            Duration::from_secs(60),
        )],
        &[],
    )
    .await;
    let toml = format!(
        "[[upstreams]]\nname = \"sim\"\nbase_url = \"{}\"\nkeys = [\"k\"]\n[[models]]\nname = \"drain-m\"\nupstream = \"sim\"\nrpm = 1000\n",
        sim.base_url()
    );
    let mut gw = GatewayProcess::start(&toml);
    let a = chat(&client(), &gw.url, ask("drain-m", 8), &[]).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(gw.terminate(), "exit status 0 after SIGTERM");
}

#[test]
fn a_bad_config_is_refused_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[queue]\nmax_wait = \"soon\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-gateway"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("queue.max_wait") && err.contains("soon") && err.contains("duration"),
        "{err}"
    );
}

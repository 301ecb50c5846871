//! Reloading a running `sluice-gateway` process with SIGHUP (issue #16): a lowered
//! limit shows in `/v1/quotas` while a stream in flight completes and the process
//! lives on; an invalid file or a restart-only change is refused with its message and
//! the old configuration keeps serving; with `--watch-config`, a changed file reloads
//! without a signal.

use std::time::Duration;

use futures::StreamExt;
use sha2::Digest;

use crate::support::{GatewayProcess, ask, client, sim, sim_model};

const PATIENCE: Duration = Duration::from_secs(15);

fn toml(base: &str, model: &str, requests: u64, extra: &str) -> String {
    format!(
        r#"
{extra}
[[upstreams]]
name = "sim"
base_url = "{base}"
keys = ["sk-reload"]
[[models]]
name = "{model}"
upstream = "sim"
limits = [{{ requests = {requests}, per = "60s" }}, {{ tokens = 1000000, per = "60s" }}]
pacing = "off"
"#
    )
}

fn sha256_hex(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn quotas(c: &reqwest::Client, base: &str) -> serde_json::Value {
    c.get(format!("{base}/v1/quotas"))
        .send()
        .await
        .expect("the gateway answers")
        .json()
        .await
        .expect("JSON")
}

/// The `requests` limit of the first account of the first model: (configured, used).
fn requests_limit(q: &serde_json::Value) -> (u64, u64) {
    let l = q["models"][0]["accounts"][0]["limits"]
        .as_array()
        .expect("limits")
        .iter()
        .find(|l| l["unit"] == "requests")
        .expect("a requests limit");
    (
        l["configured"].as_u64().expect("configured"),
        l["used"].as_u64().expect("used"),
    )
}

/// Polls `check` every 50 ms until it holds or `PATIENCE` passes.
async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn metrics(c: &reqwest::Client, base: &str) -> String {
    c.get(format!("{base}/metrics"))
        .send()
        .await
        .expect("the gateway answers")
        .text()
        .await
        .expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_lowered_limit_while_a_stream_in_flight_completes() {
    let model = "reload-m";
    let mut m = sim_model(model, 1000, 10_000_000, Duration::from_secs(60));
    // A 40-token answer in chunks every 100 ms: the stream lasts about a second.
    m.latency.per_token = Duration::from_millis(25);
    let sim = sim(vec![m], &[]).await;
    let before = toml(&sim.base_url(), model, 100, "");
    let mut gw = GatewayProcess::start_capturing(&before);
    let c = client();
    let q = quotas(&c, &gw.url).await;
    assert_eq!(q["config_sha256"], sha256_hex(&before), "{q}");
    assert_eq!(requests_limit(&q).0, 100);

    let mut body = ask(model, 40);
    body["stream"] = true.into();
    let resp = c
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(&body)
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut got = String::new();
    while !got.contains("data: ") {
        let chunk = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("the stream moves")
            .expect("the stream goes on")
            .expect("no error");
        got.push_str(&String::from_utf8_lossy(&chunk));
    }

    let after = toml(&sim.base_url(), model, 7, "");
    gw.rewrite_and_hup(&after);
    let applied = eventually(|| {
        let (c, url) = (&c, gw.url.clone());
        async move { requests_limit(&quotas(c, &url).await).0 == 7 }
    })
    .await;
    let q = quotas(&c, &gw.url).await;
    assert!(applied, "the lowered limit never showed: {q}");
    assert_eq!(q["config_sha256"], sha256_hex(&after), "{q}");
    // The embedded limiter survived the reload: the stream's request is still counted.
    assert!(requests_limit(&q).1 >= 1, "the window was lost: {q}");

    // The stream that was in flight completes.
    let rest = tokio::time::timeout(PATIENCE, async {
        while let Some(chunk) = stream.next().await {
            got.push_str(&String::from_utf8_lossy(&chunk.expect("no error")));
        }
    })
    .await;
    assert!(rest.is_ok(), "the stream never ended");
    assert!(
        got.contains("[DONE]"),
        "the in-flight stream was cut: {got}"
    );
    assert!(gw.is_running(), "SIGHUP ended the process");
    let m = metrics(&c, &gw.url).await;
    assert!(
        m.contains(r#"sluice_config_reloads_total{result="ok"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            r#"sluice_config_info{{hash="{}"}} 1"#,
            sha256_hex(&after)
        )),
        "{m}"
    );
    // New requests run under the new rules: 7 per minute, one already spent.
    let mut served = 0;
    for _ in 0..8 {
        let a =
            crate::support::chat(&c, &gw.url, ask(model, 4), &[("x-sluice-max-wait", "0s")]).await;
        if a.status == 200 {
            served += 1;
        }
    }
    assert_eq!(served, 6, "the lowered limit is not in force");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refuses_an_invalid_file_or_a_restart_only_change_and_keeps_serving() {
    let model = "reload-bad-m";
    let sim = sim(
        vec![sim_model(model, 1000, 10_000_000, Duration::from_secs(60))],
        &[],
    )
    .await;
    let good = toml(&sim.base_url(), model, 100, "");
    let mut gw = GatewayProcess::start_capturing(&good);
    let c = client();

    // A value of the wrong type: refused with the message the gateway would not start with.
    let invalid = good.replace("requests = 100", "requests = \"lots\"");
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, &invalid).expect("write");
    let refusal = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-gateway"))
        .arg("--config")
        .arg(&bad)
        .output()
        .expect("runs");
    assert!(!refusal.status.success());
    let start_message = String::from_utf8_lossy(&refusal.stderr).to_string();
    let precise = start_message
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("models[0]"))
        .unwrap_or_else(|| panic!("no precise message at start: {start_message}"))
        .to_owned();
    gw.rewrite_and_hup(&invalid);
    let logged = eventually(|| {
        let logs = gw.logs();
        let precise = precise.clone();
        async move {
            logs.iter()
                .any(|l| l.contains("configuration reload refused") && l.contains(&precise))
        }
    })
    .await;
    assert!(logged, "no refusal naming {precise:?}: {:#?}", gw.logs());
    let q = quotas(&c, &gw.url).await;
    assert_eq!(q["config_sha256"], sha256_hex(&good), "{q}");
    assert_eq!(requests_limit(&q).0, 100);
    let a = crate::support::chat(&c, &gw.url, ask(model, 4), &[]).await;
    assert_eq!(
        a.status, 200,
        "the old configuration stopped serving: {a:?}"
    );

    // A key only a restart applies: the whole reload is refused, naming the key.
    let restart_only = toml(&sim.base_url(), model, 5, "[server]\nmax_connections = 7");
    gw.rewrite_and_hup(&restart_only);
    let logged = eventually(|| {
        let logs = gw.logs();
        async move {
            logs.iter()
                .any(|l| l.contains("server.max_connections changed"))
        }
    })
    .await;
    assert!(logged, "no needs-restart refusal: {:#?}", gw.logs());
    assert_eq!(requests_limit(&quotas(&c, &gw.url).await).0, 100);
    let m = metrics(&c, &gw.url).await;
    assert!(
        m.contains(r#"sluice_config_reloads_total{result="invalid"} 1"#)
            && m.contains(r#"sluice_config_reloads_total{result="needs_restart"} 1"#),
        "{m}"
    );
    assert!(gw.is_running(), "SIGHUP ended the process");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_watch_config_a_changed_file_reloads_without_a_signal() {
    let model = "reload-watch-m";
    let sim = sim(
        vec![sim_model(model, 1000, 10_000_000, Duration::from_secs(60))],
        &[],
    )
    .await;
    let gw = GatewayProcess::start_watching(&toml(&sim.base_url(), model, 100, ""));
    let c = client();
    assert_eq!(requests_limit(&quotas(&c, &gw.url).await).0, 100);
    // An invalid file is refused once, and not retried while it stays the same.
    gw.rewrite(&toml(&sim.base_url(), model, 100, "").replace("requests = 100", "requests = -1"));
    let refused = eventually(|| {
        let logs = gw.logs();
        async move {
            logs.iter()
                .any(|l| l.contains("configuration reload refused"))
        }
    })
    .await;
    assert!(refused, "{:#?}", gw.logs());
    let after = toml(&sim.base_url(), model, 3, "");
    gw.rewrite(&after);
    let applied = eventually(|| {
        let (c, url) = (&c, gw.url.clone());
        async move { requests_limit(&quotas(c, &url).await).0 == 3 }
    })
    .await;
    assert!(
        applied,
        "the changed file was not reloaded: {:#?}",
        gw.logs()
    );
    let q = quotas(&c, &gw.url).await;
    assert_eq!(q["config_sha256"], sha256_hex(&after), "{q}");
    let refusals = gw
        .logs()
        .iter()
        .filter(|l| l.contains("configuration reload refused"))
        .count();
    assert_eq!(
        refusals,
        1,
        "the same invalid file was retried: {:#?}",
        gw.logs()
    );
}

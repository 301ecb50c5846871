//! `sluice quotas` against a real gateway on a socket (in this process) in front of the
//! simulator: the table (rows, bars, colours), `--json`, and an unreachable URL.

use std::process::{Command, Output};
use std::time::Duration;

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env_clear()
        .output()
        .expect("sluice runs")
}

async fn gateway_with_traffic(model: &str) -> (sluice_sim::SimHandle, String) {
    let sim = sluice_sim::spawn(sluice_sim::Config::with_models(vec![
        sluice_sim::ModelConfig::new(model, sluice_sim::Dialect::Openai)
            .with_limit(sluice_sim::Limit::requests(1000, Duration::from_secs(60))),
    ]))
    .await
    .expect("sim");
    let toml = format!(
        r#"
[[upstreams]]
name = "sim"
base_url = "{}"
keys = ["sk-a", "sk-b"]
[[models]]
name = "{model}"
upstream = "sim"
limits = [{{ requests = 10, per = "60s" }}, {{ tokens = 100000, per = "60s" }}]
pacing = "off"
"#,
        sim.base_url()
    );
    let config = sluice_config::from_str(
        &toml,
        &[],
        &std::collections::HashMap::<String, String>::new(),
    )
    .expect("config");
    let gw = sluice_proxy::Gateway::new(config).expect("gateway");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sluice_proxy::serve(gw, listener, std::future::pending()));
    let c = reqwest::Client::new();
    for _ in 0..5 {
        let status = c
            .post(format!("{url}/v1/chat/completions"))
            .json(&serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}))
            .send()
            .await
            .expect("answers")
            .status();
        assert_eq!(status, 200);
    }
    (sim, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_prints_a_table_with_bars_and_json_for_scripts() {
    let model = "cli-quotas-m";
    let (_sim, url) = gateway_with_traffic(model).await;
    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        move || sluice(&["quotas", "--url", &url, "--color", "never"])
    })
    .await
    .unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.starts_with("config sha256 "), "{table}");
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with(model)).collect();
    assert_eq!(rows.len(), 4, "2 accounts × 2 limits: {table}");
    assert!(rows.iter().all(|r| r.contains("active")), "{table}");
    // Five requests on two accounts of 10 each: every requests bar shows some fill.
    let used: Vec<&&str> = rows.iter().filter(|r| r.contains("requests/1m")).collect();
    assert!(used.iter().any(|r| r.contains('█')), "{table}");
    assert!(!table.contains("\x1b["), "--color never: {table}");

    let coloured = tokio::task::spawn_blocking({
        let url = url.clone();
        move || sluice(&["quotas", "--url", &url, "--color", "always"])
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&coloured.stdout);
    assert!(text.contains("\x1b[32mactive\x1b[0m"), "{text}");

    let json = tokio::task::spawn_blocking(move || sluice(&["quotas", "--url", &url, "--json"]))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(v["models"][0]["model"], model, "{v}");
    assert_eq!(v["config_sha256"].as_str().map(str::len), Some(64), "{v}");
}

#[test]
fn quotas_of_an_unreachable_gateway_fails_with_the_url() {
    let port = sluice_testkit::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let out = sluice(&["quotas", "--url", &url]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot reach {url}/v1/quotas")),
        "{stderr}"
    );
}

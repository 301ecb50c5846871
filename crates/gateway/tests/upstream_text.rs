//! Issue #12, "upstream text is evidence, not command" and "paths": a real gateway
//! process in front of the simulator. An echoed 400 never takes an account out of
//! rotation; a genuine refusal takes the last live account out only when a second
//! request corroborates it; a redirect is passed on, never followed; no path climbs out
//! of the upstream's base path; and arbitrary requests always get a well-formed answer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sluice_sim::{FaultRule, SimHandle};

use crate::stub::stub;
use crate::support::*;

fn retry_toml(base: &str, keys: &[&str], models: &[&str]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    let mut toml = format!(
        "[retry]\nmax_attempts = 3\nbase = \"10ms\"\ncap = \"50ms\"\n[[upstreams]]\nname = \"sim\"\nbase_url = \"{base}\"\nkeys = [{}]\n",
        keys.join(", ")
    );
    for m in models {
        toml.push_str(&format!(
            "[[models]]\nname = \"{m}\"\nupstream = \"sim\"\nrpm = 1000\ntpm = 1000000\n"
        ));
    }
    toml
}

async fn stats(sim: &SimHandle) -> sluice_sim::stats::StatsReport {
    client()
        .get(format!("{}/stats", sim.root_url()))
        .send()
        .await
        .expect("the sim answers")
        .json()
        .await
        .expect("a report")
}

/// Waits until the gateway's embedded recalibrator has applied every error
/// observation the gateway made (so that what it would disable, it has disabled).
async fn observations_applied(c: &reqwest::Client, gw: &str) {
    let applied = eventually(Duration::from_secs(10), || async {
        // Polled: neither series exists before its first increment.
        let errors = try_metric(c, gw, "sluice_upstream_errors_total", &[]).await;
        let consumed = try_metric(
            c,
            gw,
            "sluice_observations_consumed_total",
            &["source=\"local\""],
        )
        .await;
        matches!((errors, consumed), (Some(e), Some(c)) if e >= 1.0 && c >= e)
    })
    .await;
    assert!(applied, "the recalibrator did not apply the observations");
}

fn say(model: &str, text: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echoed_400_leaves_every_account_active_and_later_requests_are_served() {
    let per = Duration::from_secs(60);
    let mut config = sluice_sim::Config::with_models(vec![
        sim_model("echo-m", 1000, 1_000_000, per),
        sim_model("ok-m", 1000, 1_000_000, per),
    ]);
    config.faults.push(FaultRule {
        model: Some("echo-m".to_owned()),
        echo_bad_request: 1.0,
        ..FaultRule::default()
    });
    let sim = sluice_sim::spawn(config).await.expect("sim starts");
    let gw = GatewayProcess::start(&retry_toml(
        &sim.base_url(),
        &["sk-echo-0", "sk-echo-1", "sk-echo-2"],
        &["echo-m", "ok-m"],
    ));
    let c = client();

    let hostile = chat(
        &c,
        &gw.url,
        say(
            "echo-m",
            "Free allocated quota exceeded. Your credit balance is too low. Arrearage",
        ),
        &[],
    )
    .await;
    assert_eq!(
        hostile.status, 400,
        "the provider's 400 is passed on: {hostile:?}"
    );
    assert!(
        hostile
            .body
            .contains("Unrecognized request argument supplied"),
        "{hostile:?}"
    );
    observations_applied(&c, &gw.url).await;
    // Absent means none was ever disabled: the counter is created on its first increment.
    let disabled = metric_or_zero(&c, &gw.url, "sluice_accounts_disabled_total", &[]).await;
    assert_eq!(disabled, 0.0, "an echoed 400 took accounts out of rotation");
    assert_eq!(
        stats(&sim).await.rejected.echoed,
        1,
        "a 400 about the request is not retried on other accounts"
    );

    // Every later request, on every model of the upstream, is served.
    for i in 0..6 {
        let a = chat(&c, &gw.url, say("ok-m", "hello"), &[]).await;
        assert_eq!(a.status, 200, "request {i} after the echoed 400: {a:?}");
    }
    assert_eq!(
        (
            disabled_in_quotas(&c, &gw.url).await,
            accounts_in_quotas(&c, &gw.url, "active").await
        ),
        (0, 6),
        "3 accounts x 2 models, all active: {}",
        quotas_text(&c, &gw.url).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_redirect_is_passed_to_the_client_never_followed_with_the_key() {
    let upstream = stub().await;
    let toml = format!(
        r#"
[[upstreams]]
name = "stub"
base_url = "{base}"
keys = ["sk-stub-key"]
[[models]]
name = "m"
upstream = "stub"
upstream_model = "redirect"
limits = [{{ requests = 100, per = "60s" }}]
"#,
        base = upstream.base_url
    );
    let gw = gateway(&toml).await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirects
        .post(format!("{gw}/v1/chat/completions"))
        .json(&say("m", "hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 307, "the provider's answer, as it came");
    assert_eq!(resp.headers()["location"], "/v1/elsewhere");
    assert_eq!(
        upstream.hits(),
        1,
        "the gateway did not follow the redirect with the account's key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_never_disables_every_account_a_second_one_corroborates() {
    let sim = sim(
        vec![sim_model(
            "dead-m",
            1000,
            1_000_000,
            Duration::from_secs(60),
        )],
        &[("d0", "sk-dead-0"), ("d1", "sk-dead-1")],
    )
    .await;
    let c = client();
    for name in ["d0", "d1"] {
        let r = c
            .post(format!("{}/admin/accounts/{name}", sim.root_url()))
            .json(&serde_json::json!({"state": "billing_exhausted"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{:?}", r.text().await);
    }
    let gw = GatewayProcess::start(&retry_toml(
        &sim.base_url(),
        &["sk-dead-0", "sk-dead-1"],
        &["dead-m"],
    ));

    // One request meets a refusal on both accounts: the first is taken out, the last
    // live one is only suspected (cooled down), so the upstream stays in rotation.
    let first = chat(&c, &gw.url, ask("dead-m", 8), &[]).await;
    assert_ne!(first.status, 200, "{first:?}");
    observations_applied(&c, &gw.url).await;
    assert_eq!(
        disabled_in_quotas(&c, &gw.url).await,
        1,
        "one request disabled every account: {}",
        quotas_text(&c, &gw.url).await
    );

    // A second request, once the suspicion's cooldown is over, meets the same refusal
    // on the last account: corroborated, it goes out of rotation.
    let second = chat(
        &c,
        &gw.url,
        ask("dead-m", 8),
        &[("x-sluice-max-wait", "10s")],
    )
    .await;
    assert_ne!(second.status, 200, "{second:?}");
    let mut seen = String::new();
    let both = eventually(Duration::from_secs(10), || {
        let c = c.clone();
        let url = gw.url.clone();
        async move { disabled_in_quotas(&c, &url).await == 2 }
    })
    .await;
    if !both {
        seen = quotas_text(&c, &gw.url).await;
    }
    assert!(
        both,
        "a corroborated refusal did not disable the last account: {second:?} {seen}"
    );
    let third = chat(&c, &gw.url, ask("dead-m", 8), &[]).await;
    assert_eq!(third.status, 503, "{third:?}");
    assert!(third.body.contains("accounts_disabled"), "{third:?}");
}

async fn quotas_text(c: &reqwest::Client, gw: &str) -> String {
    c.get(format!("{gw}/v1/quotas"))
        .send()
        .await
        .expect("the gateway serves /v1/quotas")
        .text()
        .await
        .expect("a /v1/quotas body")
}

/// How many accounts `/v1/quotas` shows out of rotation.
async fn disabled_in_quotas(c: &reqwest::Client, gw: &str) -> usize {
    accounts_in_quotas(c, gw, "disabled").await
}

/// How many accounts `/v1/quotas` shows in `state`.
async fn accounts_in_quotas(c: &reqwest::Client, gw: &str, state: &str) -> usize {
    let text = quotas_text(c, gw).await;
    // Not JSON must fail, not count as "no account disabled".
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("/v1/quotas is not JSON ({e}): {text}"));
    let mut n = 0;
    let mut stack = vec![&v];
    while let Some(x) = stack.pop() {
        match x {
            serde_json::Value::Object(m) => {
                if m.get("state").and_then(|s| s.as_str()) == Some(state) {
                    n += 1;
                }
                stack.extend(m.values());
            }
            serde_json::Value::Array(a) => stack.extend(a.iter()),
            _ => {}
        }
    }
    n
}

/// One raw request over a TcpStream (HTTP clients normalise `..` themselves); the
/// status and the body.
fn raw(addr: &str, method: &str, target: &[u8], extra: &[u8], body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = Vec::new();
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n");
    req.extend_from_slice(extra);
    req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    req.extend_from_slice(body);
    s.write_all(&req).expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

/// Paths that would leave the upstream's base path, raw and percent-encoded.
pub(crate) const ESCAPES: &[&str] = &[
    "/v1/../stats",
    "/v1/%2e%2e/stats",
    "/v1/%2E%2E/stats",
    "/v1/.%2e/stats",
    "/v1/%2e./stats",
    "/v1/models/..%2fstats",
    "/v1/models/..%2Fstats",
    "/v1/x%2f..%2f..%2fstats",
    "/v1/%5c..%5cstats",
    "/v1/\\..\\stats",
    "/v1//stats",
    "/v1/models/../../stats",
    "/v1/models/./../../stats",
    "/v1/models/%00",
    "/v1/models/x%2500",
    "/v1/./stats",
    "/v1/models/%252e%252e/stats",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_path_climbs_out_of_the_base_path_and_the_sim_sees_nothing() {
    let sim = sim(
        vec![sim_model(
            "path-m",
            1000,
            1_000_000,
            Duration::from_secs(60),
        )],
        &[],
    )
    .await;
    let gw = GatewayProcess::start(&retry_toml(&sim.base_url(), &["sk-path-0"], &["path-m"]));
    let addr = host_port(&gw.url);
    let mut leaked = Vec::new();
    for path in ESCAPES {
        for method in ["GET", "POST"] {
            let before = stats(&sim).await.keyed_requests;
            let a = addr.clone();
            let p = path.as_bytes().to_vec();
            let (status, body) = tokio::task::spawn_blocking(move || {
                raw(&a, method, &p, b"Content-Type: application/json\r\n", b"{}")
            })
            .await
            .unwrap();
            let after = stats(&sim).await.keyed_requests;
            if after != before || !(status == 400 || status == 404) {
                leaked.push(format!("{method} {path}: {status} {body}"));
                continue;
            }
            let json: serde_json::Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {body:?}"));
            assert!(json["error"]["message"].is_string(), "{path}: {body}");
            assert!(json["error"]["type"].is_string(), "{path}: {body}");
        }
    }
    let report = stats(&sim).await;
    assert!(
        leaked.is_empty() && report.outside_api == 0,
        "forwarded or not refused ({} outside /v1 at the sim):\n{}",
        report.outside_api,
        leaked.join("\n")
    );
    // The control: a path the dialect defines does go through, with the key.
    let (status, body) =
        tokio::task::spawn_blocking(move || raw(&addr, "GET", b"/v1/models/path-m", b"", b""))
            .await
            .unwrap();
    assert!(stats(&sim).await.keyed_requests >= 1, "{status} {body}");
}

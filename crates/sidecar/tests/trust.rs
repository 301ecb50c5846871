//! Trust boundaries of the sidecar (issue #12): who may acquire and report, what a report
//! may change, and where the operational routes are served. Real `sluice-sidecar`
//! processes on a real Redis, the simulator as the provider.

use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_sim::Dialect;
use sluice_testkit::{RedisServer, free_port};

use crate::support::*;

const ADMIN: &str = "admin-key-for-tests-0123";
const TEAM_A: &str = "tenant-key-team-a-0123";
const TEAM_B: &str = "tenant-key-team-b-0123";
const TENANTS: &str = r#"ticket_key = "ticket-key-for-the-tests-0123456789"
[[tenants]]
name = "team-a"
key = "tenant-key-team-a-0123"
[[tenants]]
name = "team-b"
key = "tenant-key-team-b-0123"
"#;

struct Fleet {
    _redis: RedisServer,
    sim: sluice_sim::SimHandle,
    sidecar: SidecarProcess,
    client: reqwest::Client,
}

/// Redis, the simulator (accounts `a`/`b`, 1000 requests a minute each) and a sidecar
/// process configured for 60 requests a minute per account, with two tenants and `extra`
/// appended to `[sidecar]`.
async fn fleet(extra: &str, args: &[&str]) -> Fleet {
    let redis = RedisServer::start();
    let accounts = [
        SimAccount {
            name: "a",
            key: "sk-a",
            requests: 1000,
            background_rps: None,
        },
        SimAccount {
            name: "b",
            key: "sk-b",
            requests: 1000,
            background_rps: None,
        },
    ];
    let sim = sim("m", Dialect::Openai, Duration::from_secs(60), &accounts).await;
    let toml = fleet_toml(
        &redis.url(),
        &sim.base_url(),
        "openai",
        &["sk-a", "sk-b"],
        "m",
        60,
        60,
        extra,
    );
    let sidecar = SidecarProcess::start_with(&toml, "trust", args);
    let client = client();
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
    Fleet {
        _redis: redis,
        sim,
        sidecar,
        client,
    }
}

impl Fleet {
    async fn post(
        &self,
        path: &str,
        key: Option<&str>,
        body: serde_json::Value,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .post(format!("{}{path}", self.sidecar.url))
            .json(&body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send().await.unwrap()
    }

    /// The full `/v1/quotas` (as the admin).
    async fn quotas(&self) -> serde_json::Value {
        self.client
            .get(format!("{}/v1/quotas", self.sidecar.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// Asserts an OpenAI-shaped error with `status` and `code`.
async fn assert_refused(r: reqwest::Response, status: u16, code: &str) {
    assert_eq!(r.status(), status);
    let body: serde_json::Value = r.json().await.unwrap();
    let e = &body["error"];
    assert_eq!(e["code"], code, "{body}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        e.get("type").is_some() && e.get("param").is_some(),
        "{body}"
    );
}

fn account(q: &serde_json::Value, i: usize) -> &serde_json::Value {
    &q["models"][0]["accounts"][i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_acquire_and_report_are_refused_and_change_nothing() {
    let f = fleet(TENANTS, &[]).await;
    let before = f.quotas().await;
    assert_eq!(account(&before, 0)["state"], "active", "{before}");

    // The issue's two reports, anonymous and with a wrong key.
    let dead = serde_json::json!({"model": "m", "account": "key-0", "status": 401,
        "body": "{\"error\":{\"message\":\"Incorrect API key provided\",\"type\":\"invalid_request_error\",\"code\":\"invalid_api_key\"}}"});
    let tiny = serde_json::json!({"model": "m", "account": "key-1", "status": 200,
        "headers": {"x-ratelimit-limit-requests": "1", "x-ratelimit-remaining-requests": "0"}});
    for key in [None, Some("not-a-tenant-key-at-all")] {
        assert_refused(
            f.post("/v1/report", key, dead.clone()).await,
            401,
            "invalid_api_key",
        )
        .await;
        assert_refused(
            f.post("/v1/report", key, tiny.clone()).await,
            401,
            "invalid_api_key",
        )
        .await;
        let book_all = serde_json::json!({"model": "m", "requests": 60, "max_wait_ms": 0});
        assert_refused(
            f.post("/v1/acquire", key, book_all).await,
            401,
            "invalid_api_key",
        )
        .await;
    }
    // The forward proxy too.
    let chat = f
        .client
        .post(format!("{}/v1/chat/completions", f.sidecar.url))
        .json(&serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status(), 401);

    let after = f.quotas().await;
    assert_eq!(
        before, after,
        "an anonymous caller changed the shared state"
    );
    // And a tenant's key works.
    let ok = f
        .post(
            "/v1/acquire",
            Some(TEAM_A),
            serde_json::json!({"model": "m", "max_wait_ms": 0}),
        )
        .await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_report_alone_cannot_disable_an_account_or_collapse_its_limit() {
    let f = fleet(TENANTS, &[]).await;
    let accepted = |f: &Fleet| f.sim.sim().stats().get("a", "m").map_or(0, |s| s.accepted);
    let probes_before = accepted(&f);

    // A tenant says key-0 is dead: the sidecar asks the provider itself, which accepts.
    let dead = serde_json::json!({"model": "m", "account": "key-0", "status": 401,
        "body": "{\"error\":{\"message\":\"Incorrect API key provided\",\"type\":\"invalid_request_error\",\"code\":\"invalid_api_key\"}}"});
    let r = f.post("/v1/report", Some(TEAM_A), dead.clone()).await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["changes"], serde_json::json!([]), "{body}");
    assert_eq!(body["corroborating"], true, "{body}");
    assert!(
        sluice_testkit::wait_until(Duration::from_secs(10), || accepted(&f) > probes_before),
        "the corroborating probe never reached the provider"
    );
    // Repeated reports do not probe again within the interval.
    let again: serde_json::Value = f
        .post("/v1/report", Some(TEAM_B), dead)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["corroborating"], false, "{again}");

    // A tenant reports a limit of 1: one report at most halves the effective limit.
    let tiny = serde_json::json!({"model": "m", "account": "key-0", "status": 200,
        "headers": {"x-ratelimit-limit-requests": "1"}});
    assert_eq!(f.post("/v1/report", Some(TEAM_A), tiny).await.status(), 200);
    let q = f.quotas().await;
    assert_eq!(
        account(&q, 0)["state"],
        "active",
        "a report disabled the account: {q}"
    );
    let requests = &account(&q, 0)["limits"][0];
    assert_eq!(requests["configured"], 60, "{q}");
    assert_eq!(
        requests["effective"], 30,
        "one report may at most halve it: {q}"
    );
    // The probe was the only request to the provider, and it was charged.
    assert_eq!(accepted(&f), probes_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_foreign_ticket_is_refused_and_refunds_nothing() {
    let f = fleet(TENANTS, &[]).await;
    let granted: serde_json::Value = f
        .post(
            "/v1/acquire",
            Some(TEAM_A),
            serde_json::json!({"model": "m", "account": "key-0", "input_tokens": 1000, "output_tokens": 1000}),
        )
        .await
        .json()
        .await
        .unwrap();
    let ticket = granted["reservation"].clone();
    assert_eq!(ticket["tenant"], "team-a", "{granted}");
    assert_eq!(ticket["sig"].as_str().map(str::len), Some(64), "{granted}");
    let tokens_used = |q: &serde_json::Value| account(q, 0)["limits"][1]["used"].as_u64().unwrap();
    let before = f.quotas().await;
    assert_eq!(tokens_used(&before), 2000, "{before}");

    // A forged reservation with a large estimate and zero usage: would refund 100000.
    let mut forged = ticket.clone();
    forged["input_tokens"] = serde_json::json!(100_000);
    let zero = serde_json::json!({"prompt_tokens": 0, "completion_tokens": 0});
    let report = |t: &serde_json::Value| serde_json::json!({"model": "m", "status": 200, "reservation": t, "usage": zero});
    assert_refused(
        f.post("/v1/report", Some(TEAM_A), report(&forged)).await,
        401,
        "invalid_reservation",
    )
    .await;
    let mut unsigned = ticket.clone();
    unsigned.as_object_mut().unwrap().remove("sig");
    assert_refused(
        f.post("/v1/report", Some(TEAM_A), report(&unsigned)).await,
        401,
        "invalid_reservation",
    )
    .await;
    // Another tenant's genuine ticket.
    assert_refused(
        f.post("/v1/report", Some(TEAM_B), report(&ticket)).await,
        403,
        "invalid_reservation",
    )
    .await;
    assert_eq!(
        f.quotas().await,
        before,
        "a refused report changed the state"
    );

    // The genuine ticket reconciles, and never below zero.
    let r: serde_json::Value = f
        .post("/v1/report", Some(TEAM_A), report(&ticket))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(r["reconciled"], true, "{r}");
    assert_eq!(tokens_used(&f.quotas().await), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_listen_without_keys_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        r#"
[[upstreams]]
name = "sim"
base_url = "http://127.0.0.1:9"
keys = ["sk-a"]
[[models]]
name = "m"
upstream = "sim"
rpm = 60
[sidecar]
listen = "0.0.0.0:0"
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-sidecar"))
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "sidecar.listen: 0.0.0.0:0 is not a loopback address and no [[tenants]] are configured"
        ) && stderr.contains("sidecar.insecure_allow_unauthenticated = true"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_a_public_listener_need_the_admin_key_and_the_admin_listener_serves_them() {
    let admin_port = free_port();
    let extra = format!("admin_listen = \"127.0.0.1:{admin_port}\"\n{TENANTS}");
    let f = fleet(&extra, &["--listen", "0.0.0.0:0"]).await;
    let metrics = |base: String, key: Option<&'static str>| {
        let c = f.client.clone();
        async move {
            let mut req = c.get(format!("{base}/metrics"));
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            req.send().await.unwrap()
        }
    };
    // Something to count.
    let granted = f
        .post(
            "/v1/acquire",
            Some(TEAM_A),
            serde_json::json!({"model": "m", "max_wait_ms": 0}),
        )
        .await;
    assert_eq!(granted.status(), 200);
    let public = f.sidecar.url.clone();
    assert_refused(metrics(public.clone(), None).await, 401, "invalid_api_key").await;
    assert_refused(
        metrics(public.clone(), Some(TEAM_A)).await,
        401,
        "invalid_api_key",
    )
    .await;
    let with_key = metrics(public, Some(ADMIN)).await;
    assert_eq!(with_key.status(), 200);
    assert!(
        with_key
            .text()
            .await
            .unwrap()
            .contains("sluice_sidecar_acquire_total")
    );

    // The admin listener on loopback: metrics and the full quotas without ceremony.
    let admin = format!("http://127.0.0.1:{admin_port}");
    let scraped = metrics(admin.clone(), None).await;
    assert_eq!(scraped.status(), 200);
    assert!(
        scraped
            .text()
            .await
            .unwrap()
            .contains("sluice_sidecar_acquire_total")
    );
    let q = f
        .client
        .get(format!("{admin}/v1/quotas"))
        .send()
        .await
        .unwrap();
    assert_eq!(q.status(), 200);
    let q: serde_json::Value = q.json().await.unwrap();
    assert_eq!(account(&q, 0)["state"], "active", "{q}");
    assert_eq!(
        f.client
            .get(format!("{admin}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The admin routes still need the admin key there.
    let enable = f
        .client
        .post(format!("{admin}/v1/admin/accounts/sim/key-0/enable"))
        .send()
        .await
        .unwrap();
    assert_eq!(enable.status(), 401);
    // The app's routes are not served on the admin listener.
    let acquire = f
        .client
        .post(format!("{admin}/v1/acquire"))
        .bearer_auth(TEAM_A)
        .json(&serde_json::json!({"model": "m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(acquire.status(), 404);
}

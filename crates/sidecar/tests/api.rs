//! Beside an application: the forward proxy (the gateway's own code), `POST /v1/acquire`
//! and `POST /v1/report`, on an embedded limiter with the sidecar in-process.

use std::time::Duration;

use sluice_sim::Dialect;

use crate::support::*;

async fn sidecar_in_process(toml: &str) -> String {
    let config = sluice_config::from_str(
        toml,
        &[],
        &std::collections::HashMap::<String, String>::new(),
    )
    .unwrap();
    let options = sluice_sidecar::Options::from_config(&config);
    let sidecar = sluice_sidecar::Sidecar::new(config, options).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sidecar.serve(listener, std::future::pending()));
    url
}

fn toml(sim_base: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "sim"
base_url = "{sim_base}"
dialect = "openai"
keys = ["sk-a", "sk-b"]
[[models]]
name = "app-m"
upstream = "sim"
limits = [{{ requests = 3, per = "60s" }}, {{ tokens = 100000, per = "60s" }}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_grants_then_refuses_and_report_reconciles_and_recalibrates() {
    let sim = sim(
        "app-m",
        Dialect::Openai,
        Duration::from_secs(60),
        &[SimAccount {
            name: "a",
            key: "sk-a",
            requests: 100,
            background_rps: None,
        }],
    )
    .await;
    let url = sidecar_in_process(&toml(&sim.base_url())).await;
    let c = client();
    let acquire = |body: serde_json::Value| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            c.post(format!("{url}/v1/acquire"))
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let r = acquire(serde_json::json!({"model": "app-m", "account": "key-0", "input_tokens": 100, "output_tokens": 50})).await;
    assert_eq!(r.status(), 200);
    let granted: serde_json::Value = r.json().await.unwrap();
    assert_eq!(granted["account"], "key-0");
    assert_eq!(granted["upstream_model"], "app-m");
    let ticket = granted["reservation"].clone();
    for _ in 0..2 {
        assert_eq!(
            acquire(serde_json::json!({"model": "app-m", "account": "key-0"}))
                .await
                .status(),
            200
        );
    }
    let refused =
        acquire(serde_json::json!({"model": "app-m", "account": "key-0", "max_wait_ms": 0})).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        acquire(serde_json::json!({"model": "nope"})).await.status(),
        404
    );
    assert_eq!(
        acquire(serde_json::json!({"model": "app-m", "bogus": 1}))
            .await
            .status(),
        400
    );

    // The app reports what the provider answered: usage reconciles the reservation,
    // and the headers teach a lower limit.
    let report = serde_json::json!({
        "model": "app-m", "status": 200, "reservation": ticket,
        "usage": {"prompt_tokens": 40, "completion_tokens": 10},
        "headers": {"x-ratelimit-limit-tokens": "50000", "x-ratelimit-remaining-tokens": "49950"},
    });
    let r = c
        .post(format!("{url}/v1/report"))
        .json(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reconciled"], true);
    let q = get_json(&c, &format!("{url}/v1/quotas")).await;
    let limits = &q["models"][0]["accounts"][0]["limits"];
    assert_eq!(limits[1]["effective"], 50_000, "{q}");
    assert_eq!(
        limits[1]["used"], 50,
        "reconciled from 150 to 50 tokens (the two others cost none): {q}"
    );

    // A 429 reported by an app with a Retry-After cools the account down for everyone.
    let r = c
        .post(format!("{url}/v1/report"))
        .json(&serde_json::json!({"model": "app-m", "account": "key-1", "status": 429, "headers": {"retry-after": "7"}, "body": "{\"error\":{\"message\":\"Rate limit reached\",\"type\":\"requests\",\"code\":\"rate_limit_exceeded\"}}"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let q = get_json(&c, &format!("{url}/v1/quotas")).await;
    assert_eq!(q["models"][0]["accounts"][1]["state"], "cooldown", "{q}");
    assert!(
        q["models"][0]["accounts"][1]["cooldown_ms"]
            .as_u64()
            .unwrap()
            > 6000,
        "{q}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forward_proxy_is_the_gateway_and_observes_in_process() {
    let sim = sim(
        "app-m",
        Dialect::Openai,
        Duration::from_secs(60),
        &[
            SimAccount {
                name: "a",
                key: "sk-a",
                requests: 100,
                background_rps: None,
            },
            SimAccount {
                name: "b",
                key: "sk-b",
                requests: 100,
                background_rps: None,
            },
        ],
    )
    .await;
    let url = sidecar_in_process(&toml(&sim.base_url())).await;
    let c = client();
    // Configured for 3 per minute per account: 6 served, then the sidecar's own 429.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(chat(&c, &url, "app-m").await);
    }
    assert_eq!(statuses, [200; 6]);
    let stats = sim.sim().stats();
    assert_eq!(
        stats.get("a", "app-m").unwrap().accepted + stats.get("b", "app-m").unwrap().accepted,
        6
    );
    // The proxy observed the simulator's headers (limit 100 ≥ 3 configured: nothing to
    // learn) and served /v1/quotas from the same limiter.
    let q = get_json(&c, &format!("{url}/v1/quotas")).await;
    let used: u64 = (0..2)
        .map(|i| {
            q["models"][0]["accounts"][i]["limits"][0]["used"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(used, 6, "{q}");
    let ready = c.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_limits_count_slots_from_acquire_and_the_proxy_alike() {
    let sim = sim(
        "app-m",
        Dialect::Openai,
        Duration::from_secs(60),
        &[SimAccount {
            name: "a",
            key: "sk-a",
            requests: 100,
            background_rps: None,
        }],
    )
    .await;
    // `limited`: 2 requests and 1,000 tokens a minute, of its own.
    let tenants = r#"
[[tenants]]
name = "limited"
key = "sk-limited-key"
max_wait = "1s"
rpm = 2
tpm = 1000
[[tenants]]
name = "open"
key = "sk-open-tenant"
"#;
    let url = sidecar_in_process(&format!("{}{tenants}", toml(&sim.base_url()))).await;
    let c = client();
    let post = |path: &'static str, key: &'static str, body: serde_json::Value| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            c.post(format!("{url}{path}"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    // A slot from /v1/acquire is charged to the tenant's own limits ...
    let slot = serde_json::json!({"model": "app-m", "account": "key-0", "input_tokens": 100, "output_tokens": 100});
    let r = post("/v1/acquire", "sk-limited-key", slot.clone()).await;
    assert_eq!(r.status(), 200);
    let granted: serde_json::Value = r.json().await.unwrap();
    let ticket = granted["reservation"].clone();
    assert_eq!(ticket["tenant_charge"]["input_tokens"], 100, "{ticket}");
    // ... and what the app reports may raise the charge (900 tokens used), never take it
    // below what was declared.
    let report = serde_json::json!({"model": "app-m", "status": 200, "reservation": ticket,
        "usage": {"prompt_tokens": 300, "completion_tokens": 600}});
    assert_eq!(
        post("/v1/report", "sk-limited-key", report).await.status(),
        200
    );
    // 900 of 1,000 tokens used: a second slot of 200 would cross them.
    let r = post("/v1/acquire", "sk-limited-key", slot.clone()).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("tenant limited's own limit: 1000 tokens per 60s"),
        "{body}"
    );
    // A hostile second report of the same ticket, claiming nothing was used, gives
    // nothing back.
    let refund = serde_json::json!({"model": "app-m", "status": 200, "reservation": ticket,
        "usage": {"prompt_tokens": 0, "completion_tokens": 0}});
    assert_eq!(
        post("/v1/report", "sk-limited-key", refund).await.status(),
        200
    );
    let r = post("/v1/acquire", "sk-limited-key", slot.clone()).await;
    assert_eq!(r.status(), 429, "a report lowered the tenant's charge");
    // Another tenant is not affected.
    assert_eq!(
        post("/v1/acquire", "sk-open-tenant", slot).await.status(),
        200
    );

    // Through the forward proxy the same windows count: a small request is the
    // tenant's second of the minute, and a third is refused.
    let chat = serde_json::json!({"model": "app-m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    let first = post("/v1/chat/completions", "sk-limited-key", chat.clone()).await;
    assert_eq!(first.status(), 200, "{:?}", first.text().await);
    let third = post("/v1/chat/completions", "sk-limited-key", chat).await;
    assert_eq!(third.status(), 429);
    let body = third.text().await.unwrap();
    assert!(
        body.contains("tenant limited's own limit: 2 requests per 60s"),
        "{body}"
    );
}

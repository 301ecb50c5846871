//! A tenant's own limits and money budgets, across the fleet: three gateway processes
//! on one Redis, concurrent clients of three tenants spread over all three. A tenant
//! with a daily token limit and one with a daily budget are each refused with their
//! own limit named once it is spent, never over it fleet-wide; the third tenant is
//! unaffected; the provider sees nothing of the refused requests; and a gateway
//! started afterwards still refuses them (the budget lives in Redis, not in a process).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sluice_testkit::RedisServer;

use crate::support::*;

/// `tokens-capped` may use 1,500 tokens a day, `money-capped` USD 0.40 a day.
const TPD: u64 = 1_500;
const BUDGET_MICRO_USD: u64 = 400_000;
/// The model's price: USD 1,000 per million tokens each way (a token is 1,000 micro-USD).
const MICRO_USD_PER_TOKEN: u64 = 1_000;

fn config(redis: &str, sim: &str) -> String {
    format!(
        r#"
[store]
redis_url = "{redis}"
expected_replicas = 3
[[upstreams]]
name = "sim"
base_url = "{sim}"
keys = ["sk-shared"]
[[models]]
name = "gov-m"
upstream = "sim"
limits = [{{ requests = 100000, per = "60s" }}]
price = {{ input_per_mtok = 1000.0, output_per_mtok = 1000.0 }}
[[tenants]]
name = "tokens-capped"
key = "sk-tokens-capped"
tpd = {TPD}
[[tenants]]
name = "money-capped"
key = "sk-money-capped"
budget = {{ per_day = 0.40 }}
[[tenants]]
name = "free"
key = "sk-free-tenant"
[sidecar]
admin_key = "admin-key-0123456789"
"#
    )
}

/// What one tenant's clients saw.
#[derive(Default)]
struct Seen {
    served: AtomicU64,
    /// Tokens of the served answers, as their `usage` says.
    tokens: AtomicU64,
    refused: AtomicU64,
    /// The last refusal's body.
    last_refusal: parking_lot::Mutex<String>,
}

/// `clients` concurrent closed-loop clients of tenant `key`, spread over `urls`, until
/// each has been refused twice (or `cap` requests).
async fn drive(urls: &[String], key: &str, clients: usize, cap: u64) -> Arc<Seen> {
    let seen = Arc::new(Seen::default());
    let client = client();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (client, seen) = (client.clone(), seen.clone());
        let url = urls[i % urls.len()].clone();
        let auth = format!("Bearer {key}");
        tasks.push(tokio::spawn(async move {
            let mut refusals = 0;
            for _ in 0..cap {
                let a = chat(&client, &url, ask("gov-m", 6), &[("authorization", &auth)]).await;
                assert_honest(&a);
                if a.status == 200 {
                    let body: serde_json::Value = serde_json::from_str(&a.body).unwrap();
                    seen.served.fetch_add(1, Ordering::Relaxed);
                    let total = body["usage"]["total_tokens"].as_u64().unwrap();
                    seen.tokens.fetch_add(total, Ordering::Relaxed);
                } else {
                    seen.refused.fetch_add(1, Ordering::Relaxed);
                    *seen.last_refusal.lock() = a.body.clone();
                    refusals += 1;
                    if refusals == 2 {
                        break;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("a client task");
    }
    seen
}

/// Asserts that `used` never passed `limit` and that nearly all of it went (within two
/// requests of `served`), then that the last refusal named `named`.
fn assert_spent_and_named(what: &str, seen: &Seen, used: u64, limit: u64, named: &str) {
    let served = seen.served.load(Ordering::Relaxed);
    let refused = seen.refused.load(Ordering::Relaxed);
    println!("{what}: {served} served, {used} of {limit} used, {refused} refused");
    assert!(used <= limit, "{what}: {used} used of a limit of {limit}");
    let per_request = used / served.max(1);
    assert!(
        used + 2 * per_request >= limit,
        "{what}: only {used} of {limit} used ({per_request} a request)"
    );
    let body = seen.last_refusal.lock().clone();
    assert!(body.contains(named), "{what}: {body}");
}

/// `GET {url}/v1/quotas` as `key`.
async fn quotas(c: &reqwest::Client, url: &str, key: &str) -> serde_json::Value {
    c.get(format!("{url}/v1/quotas"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_and_money_budgets_hold_across_the_fleet_and_survive_a_restart() {
    let redis = RedisServer::start();
    let sim = sim(
        vec![sim_model(
            "gov-m",
            100_000,
            100_000_000,
            std::time::Duration::from_secs(60),
        )],
        &[],
    )
    .await;
    let toml = config(&redis.url(), &sim.base_url());
    let mut gateways: Vec<GatewayProcess> = (0..3).map(|_| GatewayProcess::start(&toml)).collect();
    let urls: Vec<String> = gateways.iter().map(|g| g.url.clone()).collect();

    let (tokens, money, free) = tokio::join!(
        drive(&urls, "sk-tokens-capped", 6, 500),
        drive(&urls, "sk-money-capped", 6, 500),
        drive(&urls, "sk-free-tenant", 3, 40),
    );

    // The token limit: never over it fleet-wide, and nearly all of it used (each
    // request reserves its prompt and max_tokens and is reconciled to its usage).
    assert_spent_and_named(
        "tokens-capped",
        &tokens,
        tokens.tokens.load(Ordering::Relaxed),
        TPD,
        "tenant tokens-capped's own limit: 1500 tokens per 86400s",
    );
    // The money budget, in the model's price.
    let spent = money.tokens.load(Ordering::Relaxed) * MICRO_USD_PER_TOKEN;
    assert_spent_and_named(
        "money-capped",
        &money,
        spent,
        BUDGET_MICRO_USD,
        "tenant money-capped's own limit: budget of USD 0.40 per day",
    );

    // The third tenant was never refused, and the provider saw exactly what was served.
    assert_eq!(free.refused.load(Ordering::Relaxed), 0);
    let all_served = [&tokens, &money, &free]
        .iter()
        .map(|s| s.served.load(Ordering::Relaxed))
        .sum::<u64>();
    let report = sim_report(&sim, "gov-m");
    assert_eq!(
        report.accepted, all_served,
        "the provider saw refused requests"
    );
    assert_eq!(report.refused_total(), 0);

    // Every replica reports the same fleet-wide spend (the reconciles are in the
    // background: wait for them to land).
    let c = client();
    let money_used = |url: String| {
        let c = c.clone();
        async move {
            let q = quotas(&c, &url, "admin-key-0123456789").await;
            q["tenants"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["tenant"] == "money-capped")
                .map(|t| t["limits"][0]["used"].as_u64().unwrap())
        }
    };
    let settled = eventually(std::time::Duration::from_secs(10), || {
        let f = money_used(urls[0].clone());
        async move { f.await == Some(spent) }
    })
    .await;
    assert!(
        settled,
        "the quotas view does not show the {spent} micro-USD spent"
    );
    assert_eq!(money_used(urls[2].clone()).await, Some(spent));

    // The tenants' own state, as this replica last saw it, in its metrics.
    let money_left = metric(
        &c,
        &urls[0],
        "sluice_tenant_budget_remaining_usd",
        &["tenant=\"money-capped\"", "window=\"day\""],
    )
    .await;
    assert!(money_left < 0.05, "USD {money_left} left of 0.40");
    let named = "limit=\"1500 tokens per 86400s\"";
    let tokens_left = metric(&c, &urls[0], "sluice_tenant_limit_remaining", &[named]).await;
    assert!(tokens_left < 100.0, "{tokens_left} tokens left of {TPD}");
    let mut refusals = 0.0;
    for url in &urls {
        refusals += metric_or_zero(&c, url, "sluice_tenant_refusals_total", &[named]).await;
    }
    assert_eq!(refusals, tokens.refused.load(Ordering::Relaxed) as f64);

    // A restart: every gateway goes, a new one comes; the budgets are still spent.
    for g in &mut gateways {
        tokio::task::block_in_place(|| g.kill());
    }
    let fresh = GatewayProcess::start(&toml);
    for (key, named) in [
        ("sk-tokens-capped", "1500 tokens per 86400s"),
        ("sk-money-capped", "budget of USD 0.40 per day"),
    ] {
        let auth = format!("Bearer {key}");
        let a = chat(&c, &fresh.url, ask("gov-m", 6), &[("authorization", &auth)]).await;
        assert_honest(&a);
        assert_eq!(a.status, 429, "{a:?}");
        assert!(a.body.contains(named), "{a:?}");
        let retry_after: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(
            retry_after > 3_600,
            "a day's limit frees up in hours: {a:?}"
        );
    }
    let a = chat(
        &c,
        &fresh.url,
        ask("gov-m", 6),
        &[("authorization", "Bearer sk-free-tenant")],
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");

    // A tenant sees its own limits in /v1/quotas, and no one else's.
    let q = quotas(&c, &fresh.url, "sk-money-capped").await;
    let shown: Vec<&str> = q["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(shown, ["money-capped"]);
    assert!(
        q["tenants"][0]["limits"][0]["remaining_usd"]
            .as_f64()
            .unwrap()
            < 0.05
    );
}

//! The admin API across a fleet (issue #16): three `sluice-gateway` processes on one
//! Redis; a limit lowered, a tenant added and revoked, an account disabled through one
//! replica's admin listener are in force on all three, each with an audit line.

use std::time::Duration;

use sluice_testkit::RedisServer;

use crate::support::{GatewayProcess, ask, chat, client, sim, sim_model};

const ADMIN: &str = "admin-key-for-the-fleet-0123";
const PATIENCE: Duration = Duration::from_secs(15);

struct Replica {
    process: GatewayProcess,
    admin: String,
}

fn fleet(redis: &str, sim_base: &str, model: &str, replicas: usize) -> Vec<Replica> {
    (0..replicas)
        .map(|_| {
            let port = sluice_testkit::free_port();
            let toml = format!(
                r#"
[store]
redis_url = "{redis}"
expected_replicas = 3
[server]
admin_listen = "127.0.0.1:{port}"
[[upstreams]]
name = "sim"
base_url = "{sim_base}"
keys = ["sk-admin-a", "sk-admin-b"]
[[models]]
name = "{model}"
upstream = "sim"
limits = [{{ requests = 100, per = "60s" }}, {{ tokens = 1000000, per = "60s" }}]
pacing = "off"
[[tenants]]
name = "checkout"
key = "checkout-key-0123456789"
[sidecar]
admin_key = "{ADMIN}"
"#
            );
            Replica {
                process: GatewayProcess::start_capturing(&toml),
                admin: format!("http://127.0.0.1:{port}"),
            }
        })
        .collect()
}

fn fleet_of_one(redis: &str, sim_base: &str, model: &str) -> Vec<Replica> {
    fleet(redis, sim_base, model, 1)
}

async fn admin_call(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut req = c
            .request(method.clone(), &url)
            .bearer_auth(ADMIN)
            .header("x-sluice-operator", "oncall@example");
        if let Some(b) = &body {
            req = req.json(b);
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                return (status, r.json().await.unwrap_or_default());
            }
            // The admin listener is bound just after the main one is announced.
            Err(e) if tokio::time::Instant::now() > deadline => panic!("{url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn configured_requests(c: &reqwest::Client, r: &Replica) -> Option<u64> {
    let q: serde_json::Value = c
        .get(format!("{}/v1/quotas", r.admin))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    q["models"][0]["accounts"][0]["limits"]
        .as_array()?
        .iter()
        .find(|l| l["unit"] == "requests")?["configured"]
        .as_u64()
}

/// Polls until `check` holds on every replica or `PATIENCE` passes.
async fn on_every_replica<F, Fut>(fleet: &[Replica], check: F) -> bool
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    'poll: while tokio::time::Instant::now() < deadline {
        for i in 0..fleet.len() {
            if !check(i).await {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue 'poll;
            }
        }
        return true;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_change_on_one_replica_is_in_force_on_all_three() {
    let model = "admin-fleet-m";
    let redis = RedisServer::start();
    let sim = sim(
        vec![sim_model(
            model,
            10_000,
            10_000_000,
            Duration::from_secs(60),
        )],
        &[],
    )
    .await;
    let fleet = fleet(&redis.url(), &sim.base_url(), model, 3);
    let c = client();

    // Every admin listener is up (bound just after the main one is announced).
    for r in &fleet {
        let (status, body) = admin_call(
            &c,
            reqwest::Method::GET,
            format!("{}/v1/admin/changes", r.admin),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["shared"], true, "{body}");
    }
    // Without the key, or with a bad body: refused, OpenAI-shaped, nothing changed.
    let r = c
        .put(format!("{}/v1/admin/models/{model}/limits", fleet[0].admin))
        .json(&serde_json::json!({"limits": [{"requests": 5, "per": "60s"}]}))
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status(), 401);
    let (status, body) = admin_call(
        &c,
        reqwest::Method::PUT,
        format!("{}/v1/admin/models/{model}/limits", fleet[0].admin),
        Some(serde_json::json!({"limits": [{"requests": 0, "per": "60s"}]})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "limits[0].requests", "{body}");

    // A lower limit through replica 0: every replica shows it.
    let (status, body) = admin_call(
        &c,
        reqwest::Method::PUT,
        format!("{}/v1/admin/models/{model}/limits", fleet[0].admin),
        Some(serde_json::json!({"limits": [{"requests": 9, "per": "60s"}, {"tokens": 500000, "per": "60s"}]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let lowered = on_every_replica(&fleet, |i| {
        let (c, r) = (&c, &fleet[i]);
        async move { configured_requests(c, r).await == Some(9) }
    })
    .await;
    assert!(lowered, "the lowered limit is not on every replica");

    // A tenant added on replica 1 authenticates on every replica ...
    let new_key = "search-key-0123456789abcdef";
    let (status, body) = admin_call(
        &c,
        reqwest::Method::POST,
        format!("{}/v1/admin/tenants", fleet[1].admin),
        Some(serde_json::json!({"name": "search", "key": new_key, "weight": 2})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.to_string().contains(new_key),
        "the key is echoed: {body}"
    );
    let auth = |key: &'static str| {
        let c = c.clone();
        let urls: Vec<String> = fleet.iter().map(|r| r.process.url.clone()).collect();
        move |i: usize| {
            let (c, url) = (c.clone(), urls[i].clone());
            async move {
                chat(
                    &c,
                    &url,
                    ask(model, 4),
                    &[("authorization", &format!("Bearer {key}"))],
                )
                .await
                .status
            }
        }
    };
    let search = auth("search-key-0123456789abcdef");
    let added = on_every_replica(&fleet, |i| {
        let f = search(i);
        async move { f.await == 200 }
    })
    .await;
    assert!(added, "the added tenant is not accepted everywhere");

    // ... and once revoked on replica 2, is refused on every replica.
    let (status, body) = admin_call(
        &c,
        reqwest::Method::POST,
        format!("{}/v1/admin/tenants/search/revoke", fleet[2].admin),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let revoked = on_every_replica(&fleet, |i| {
        let f = search(i);
        async move { f.await == 401 }
    })
    .await;
    assert!(revoked, "the revoked key still works somewhere");
    // A replica that starts now refuses it from its first request.
    let late = &fleet_of_one(&redis.url(), &sim.base_url(), model)[0];
    let first = chat(
        &c,
        &late.process.url,
        ask(model, 4),
        &[("authorization", "Bearer search-key-0123456789abcdef")],
    )
    .await;
    assert_eq!(
        first.status, 401,
        "a new replica accepted a revoked key: {first:?}"
    );
    // The file's tenant is untouched.
    let checkout = auth("checkout-key-0123456789");
    for i in 0..3 {
        assert_eq!(checkout(i).await, 200);
    }

    // An account disabled with a reason is out of rotation everywhere.
    let (status, body) = admin_call(
        &c,
        reqwest::Method::POST,
        format!("{}/v1/admin/accounts/sim/key-0/disable", fleet[0].admin),
        Some(serde_json::json!({"reason": "key leaked"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let disabled = on_every_replica(&fleet, |i| {
        let (c, url) = (c.clone(), format!("{}/v1/quotas", fleet[i].admin));
        async move {
            let q: serde_json::Value = match c.get(url).send().await {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => return false,
            };
            q["models"][0]["accounts"][0]["state"] == "disabled"
                && q["models"][0]["accounts"][0]["disabled_reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("key leaked"))
        }
    })
    .await;
    assert!(disabled, "the account is not disabled everywhere");

    // Back to the file's limits.
    let (status, _) = admin_call(
        &c,
        reqwest::Method::DELETE,
        format!("{}/v1/admin/models/{model}/limits", fleet[1].admin),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let restored = on_every_replica(&fleet, |i| {
        let (c, r) = (&c, &fleet[i]);
        async move { configured_requests(c, r).await == Some(100) }
    })
    .await;
    assert!(restored, "the file's limit is not back everywhere");

    // One audit line per change, naming who, never a key.
    let logs: Vec<String> = fleet.iter().flat_map(|r| r.process.logs()).collect();
    let audit: Vec<&String> = logs.iter().filter(|l| l.contains("admin change")).collect();
    for action in [
        "set_limits",
        "add_tenant",
        "revoke_tenant",
        "disable_account",
        "clear_limits",
    ] {
        assert!(
            audit
                .iter()
                .any(|l| l.contains(action) && l.contains("oncall@example")),
            "no audit line for {action}: {audit:#?}"
        );
    }
    assert!(
        !logs.iter().any(|l| l.contains(new_key)),
        "a tenant key reached a log line"
    );
}

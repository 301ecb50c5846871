//! Operational routes behind an admin boundary (issue #12): `/metrics` on a public
//! (non-loopback) listener needs the admin key; `[server] admin_listen` serves metrics,
//! the full quotas and the admin routes, without a credential on loopback.

use crate::support::*;

const ADMIN: &str = "admin-key-for-tests-0123";
const TENANT_KEY: &str = "tenant-key-for-tests-0123";

fn toml(extra_server: &str, sidecar: &str) -> String {
    format!(
        r#"
[server]
{extra_server}
[[upstreams]]
name = "nowhere"
base_url = "http://127.0.0.1:9/v1"
keys = ["sk-x"]
[[models]]
name = "m"
upstream = "nowhere"
rpm = 60
[[tenants]]
name = "app"
key = "{TENANT_KEY}"
[sidecar]
{sidecar}
"#
    )
}

/// An in-process gateway on a `0.0.0.0:0` listener (a public address); its URL.
async fn public_gateway(toml: &str) -> String {
    let config = sluice_config::from_str(
        toml,
        &[],
        &std::collections::HashMap::<String, String>::new(),
    )
    .expect("config");
    let gw = sluice_proxy::Gateway::new(config).expect("gateway");
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(sluice_proxy::serve(gw, listener, std::future::pending()));
    url
}

/// A chat completion without a key: refused 401, and counted in `sluice_requests_total`.
async fn unauthorized_chat(base: &str) {
    let r = client()
        .post(format!("{base}/v1/chat/completions"))
        .json(&ask("m", 8))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

async fn get(url: &str, key: Option<&str>) -> (u16, String) {
    let mut req = client().get(url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn code(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_a_public_listener_need_the_admin_key() {
    let gw = public_gateway(&toml("", &format!("admin_key = \"{ADMIN}\""))).await;
    unauthorized_chat(&gw).await;
    let metrics = format!("{gw}/metrics");
    for key in [None, Some(TENANT_KEY), Some("admin-key-for-tests-0124")] {
        let (status, body) = get(&metrics, key).await;
        assert_eq!(
            (status, code(&body).as_str()),
            (401, "invalid_api_key"),
            "{key:?}: {body}"
        );
        assert!(!body.contains("sluice_requests_total"));
    }
    let (status, body) = get(&metrics, Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("sluice_requests_total"), "{body}");
    // Without an admin key, metrics are not served off loopback at all.
    let gw = public_gateway(&toml("", "")).await;
    let (status, body) = get(&format!("{gw}/metrics"), Some(TENANT_KEY)).await;
    assert_eq!(
        (status, code(&body).as_str()),
        (404, "metrics_not_exposed"),
        "{body}"
    );
    // Health stays public.
    assert_eq!(get(&format!("{gw}/healthz"), None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_metrics_and_full_quotas_on_loopback() {
    let port = sluice_testkit::free_port();
    let gw = GatewayProcess::start(&toml(
        &format!("admin_listen = \"127.0.0.1:{port}\""),
        &format!("admin_key = \"{ADMIN}\""),
    ));
    let admin = format!("http://127.0.0.1:{port}");
    assert!(
        sluice_testkit::wait_until(std::time::Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        }),
        "the admin listener never opened"
    );
    unauthorized_chat(&gw.url).await;
    let (status, body) = get(&format!("{admin}/metrics"), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("sluice_requests_total"), "{body}");
    let (status, body) = get(&format!("{admin}/v1/quotas"), None).await;
    assert_eq!(status, 200, "{body}");
    let q: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(q["models"][0]["model"], "m", "{q}");
    assert_eq!(get(&format!("{admin}/healthz"), None).await.0, 200);
    // The admin routes still need the admin key; the API is not served there.
    let r = client()
        .post(format!("{admin}/v1/admin/accounts/nowhere/key-0/enable"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .post(format!("{admin}/v1/admin/accounts/nowhere/key-0/enable"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, _) = get(&format!("{admin}/v1/models"), None).await;
    assert_eq!(status, 404);
}

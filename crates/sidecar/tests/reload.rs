//! SIGHUP on a running `sluice-sidecar` (issue #16): the lowered limit is in its
//! `/v1/quotas` (the forward proxy's rules too), the process lives on; its admin
//! listener serves the status page.

use std::time::Duration;

use sluice_sim::Dialect;
use sluice_testkit::RedisServer;

use crate::support::{SidecarProcess, SimAccount, client, eventually, fleet_toml, get_json, sim};

/// The configured `requests` figure of the first account of the first model.
fn configured_requests(q: &serde_json::Value) -> Option<u64> {
    q["models"][0]["accounts"][0]["limits"]
        .as_array()?
        .iter()
        .find(|l| l["unit"] == "requests")?["configured"]
        .as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_sidecar_without_ending_it() {
    let model = "sidecar-reload-m";
    let redis = RedisServer::start();
    let accounts = [SimAccount {
        name: "a",
        key: "sk-a",
        requests: 1000,
        background_rps: None,
    }];
    let sim = sim(model, Dialect::Openai, Duration::from_secs(60), &accounts).await;
    let admin_port = sluice_testkit::free_port();
    let admin_listen = format!("admin_listen = \"127.0.0.1:{admin_port}\"");
    let toml = |requests| {
        fleet_toml(
            &redis.url(),
            &sim.base_url(),
            "openai",
            &["sk-a"],
            model,
            requests,
            60,
            &admin_listen,
        )
    };
    let mut sidecar = SidecarProcess::start(&toml(100), "reload-1");
    let c = client();
    let admin = "admin-key-for-tests-0123";
    let quotas = |url: String| {
        let c = c.clone();
        async move {
            let q: serde_json::Value = c
                .get(format!("{url}/v1/quotas"))
                .bearer_auth(admin)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            Some(q)
        }
    };
    let q = quotas(sidecar.url.clone()).await.expect("quotas");
    assert_eq!(configured_requests(&q), Some(100), "{q}");
    let first_hash = q["config_sha256"].clone();

    sidecar.rewrite_and_hup(&toml(9));
    let url = sidecar.url.clone();
    let reloaded = eventually(Duration::from_secs(15), || {
        let q = quotas(url.clone());
        async move { q.await.filter(|q| configured_requests(q) == Some(9)) }
    })
    .await;
    let q = reloaded.unwrap_or_else(|| panic!("the lowered limit never showed"));
    assert_ne!(q["config_sha256"], first_hash, "{q}");
    assert!(sidecar.is_running(), "SIGHUP ended the sidecar");
    let ready = get_json(&c, &format!("{}/readyz", sidecar.url)).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    // The status page is on the sidecar's admin listener too.
    let admin = format!("http://127.0.0.1:{admin_port}");
    let page = eventually(Duration::from_secs(10), || {
        let (c, url) = (c.clone(), format!("{admin}/status"));
        async move {
            let r = c.get(url).send().await.ok()?;
            (r.status() == 200).then_some(r.text().await.ok()?)
        }
    })
    .await
    .expect("the sidecar serves /status on its admin listener");
    assert!(page.contains("<title>Sluice status</title>"), "{page}");
}

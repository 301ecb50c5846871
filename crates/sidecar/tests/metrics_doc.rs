//! The "Sidecar / recalibration" metrics table of `docs/operations.md` held to what a
//! `sluice-sidecar` process emits: a gateway publishes observations (served requests,
//! an account dead for billing that the sidecar probes and finds alive again, limits
//! lower than configured), an application acquires and reports (genuinely, forged, and
//! without a key), and an observation names an unknown account. Every `sluice_*`
//! metric the sidecar emits is documented (in any table), and every metric of the
//! sidecar's table is emitted, except those named in [`NOT_HERE`] with the reason. The
//! gateway's table is held to the gateway by `crates/gateway/tests/metrics_doc.rs`.

use std::collections::BTreeSet;
use std::time::Duration;

use sluice_observe::{Observation, Publisher, PublisherOptions};
use sluice_sim::{AccountState, Dialect};
use sluice_testkit::RedisServer;

use crate::support::*;

const TEAM_A: &str = "tenant-key-team-a-0123";
const EXTRA: &str = r#"probe_interval = "1s"
ticket_key = "ticket-key-for-the-tests-0123456789"
[[tenants]]
name = "team-a"
key = "tenant-key-team-a-0123"
"#;

/// Metrics of the sidecar's table this test does not provoke, and why.
const NOT_HERE: &[(&str, &str)] = &[
    (
        "sluice_observations_published_total",
        "gateway side (the gateway's metrics_doc test)",
    ),
    (
        "sluice_observations_dropped_total",
        "needs a full observation queue",
    ),
    (
        "sluice_observations_claimed_total",
        "needs a consumer killed holding entries (takeover.rs checks the count)",
    ),
    (
        "sluice_observations_failed_total",
        "needs an observation whose apply fails (Redis failing mid-apply)",
    ),
    (
        "sluice_learned_limit_estimate",
        "needs refusals without rate-limit headers (learn.rs drives the learner)",
    ),
    (
        "sluice_learned_limit_confirmations",
        "needs refusals without rate-limit headers (learn.rs drives the learner)",
    ),
    (
        "sluice_learned_limit_evidence_ms",
        "needs refusals without rate-limit headers (learn.rs drives the learner)",
    ),
    (
        "sluice_sidecar_corroborations_total",
        "needs a report that would disable an account (trust.rs drives that path)",
    ),
];

/// The metric names of each table under `## Metrics` in `docs/operations.md`, by the
/// line introducing the table.
fn documented_tables() -> Vec<(String, BTreeSet<String>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/operations.md");
    let doc = std::fs::read_to_string(path).expect("docs/operations.md");
    let section = doc
        .split_once("\n## Metrics\n")
        .expect("docs/operations.md has a \"## Metrics\" section")
        .1;
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut tables: Vec<(String, BTreeSet<String>)> = Vec::new();
    // The paragraph before a table names it (its first line is kept).
    let mut title = String::new();
    let mut in_paragraph = false;
    for line in section.lines() {
        if line.starts_with("| `sluice_") {
            if tables.last().is_none_or(|(t, _)| *t != title) {
                tables.push((title.clone(), BTreeSet::new()));
            }
            let first = line.split('|').nth(1).unwrap_or_default();
            for name in first.split('`').skip(1).step_by(2) {
                let name = name.split('{').next().unwrap_or(name);
                assert!(
                    name.starts_with("sluice_"),
                    "not a full metric name in the list: {name:?} in {line}"
                );
                tables.last_mut().unwrap().1.insert(name.to_owned());
            }
        }
        let prose = !line.starts_with('|') && !line.trim().is_empty();
        if prose && !in_paragraph {
            title = line.to_owned();
        }
        in_paragraph = prose;
    }
    tables
}

/// The `sluice_*` metric families in a `/metrics` text.
fn emitted(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .filter(|n| n.starts_with("sluice_"))
        .map(str::to_owned)
        .collect()
}

async fn post(
    c: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: serde_json::Value,
) -> reqwest::Response {
    let mut req = c.post(url).json(&body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.expect("the process answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_sidecar_metrics_are_what_a_sidecar_emits() {
    let tables = documented_tables();
    let all: BTreeSet<String> = tables.iter().flat_map(|(_, t)| t.clone()).collect();
    let (_, sidecar_table) = tables
        .iter()
        .find(|(title, _)| title.starts_with("Sidecar"))
        .unwrap_or_else(|| panic!("no \"Sidecar …\" table under ## Metrics: {tables:?}"));
    for (name, why) in NOT_HERE {
        assert!(
            sidecar_table.contains(*name),
            "{name} is excused here ({why}) but not in the sidecar's table"
        );
    }

    let redis = RedisServer::start();
    // The provider allows 30 a minute per account; Sluice is configured with 60.
    let accounts = [
        SimAccount {
            name: "a",
            key: "sk-a",
            requests: 30,
            background_rps: None,
        },
        SimAccount {
            name: "b",
            key: "sk-b",
            requests: 30,
            background_rps: None,
        },
    ];
    let sim = sim("m", Dialect::Openai, Duration::from_secs(60), &accounts).await;
    sim.sim()
        .set_account_state("b", AccountState::BillingExhausted)
        .unwrap();
    let toml = fleet_toml(
        &redis.url(),
        &sim.base_url(),
        "openai",
        &["sk-a", "sk-b"],
        "m",
        60,
        60,
        EXTRA,
    );
    let sidecar = SidecarProcess::start(&toml, "doc");
    let gw = gateway(&toml).await;
    let c = client();
    let ask = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8});

    // Served on a, refused for billing on b (taken out of rotation in-band).
    for i in 0..4 {
        let r = post(
            &c,
            &format!("{gw}/v1/chat/completions"),
            Some(TEAM_A),
            ask.clone(),
        )
        .await;
        assert_eq!(r.status(), 200, "request {i}: {:?}", r.text().await);
    }
    // b pays its bill: the sidecar's probe finds it alive and puts it back.
    sim.sim()
        .set_account_state("b", AccountState::Active)
        .unwrap();

    // An application beside the sidecar: acquire, report (genuine and forged), and a
    // call without a tenant key.
    let acquire = format!("{}/v1/acquire", sidecar.url);
    let report = format!("{}/v1/report", sidecar.url);
    let granted: serde_json::Value = post(
        &c,
        &acquire,
        Some(TEAM_A),
        serde_json::json!({"model": "m", "account": "key-0", "input_tokens": 10, "output_tokens": 10}),
    )
    .await
    .json()
    .await
    .expect("a grant");
    let ticket = granted["reservation"].clone();
    assert!(ticket.is_object(), "{granted}");
    let usage = serde_json::json!({"prompt_tokens": 5, "completion_tokens": 5});
    let mut forged = ticket.clone();
    forged["input_tokens"] = serde_json::json!(100_000);
    let r = post(
        &c,
        &report,
        Some(TEAM_A),
        serde_json::json!({"model": "m", "status": 200, "reservation": forged, "usage": usage}),
    )
    .await;
    assert_eq!(r.status(), 401, "a forged reservation is refused");
    let r = post(
        &c,
        &report,
        Some(TEAM_A),
        serde_json::json!({"model": "m", "status": 200, "reservation": ticket, "usage": usage}),
    )
    .await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r = post(&c, &acquire, None, serde_json::json!({"model": "m"})).await;
    assert_eq!(r.status(), 401, "no tenant key");

    // An observation about an account the sidecar does not know.
    let publisher = Publisher::spawn(redis.url(), PublisherOptions::default());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(publisher.publish(Observation::new(
        now,
        "sim",
        "m",
        "key-9",
        200,
        [("x-ratelimit-limit-requests", "1000")],
        None,
    )));

    // Off the request path: the stream consumed, the probe, the quotas gauges (every
    // five ticks of a second).
    let required: BTreeSet<&str> = sidecar_table
        .iter()
        .map(String::as_str)
        .filter(|n| !NOT_HERE.iter().any(|(x, _)| x == n))
        .collect();
    let all_there = eventually(Duration::from_secs(30), || async {
        let got = emitted(&metrics_text(&c, &sidecar.url).await);
        required.iter().all(|n| got.contains(*n)).then_some(())
    })
    .await;
    let text = metrics_text(&c, &sidecar.url).await;
    let seen = emitted(&text);
    let missing: Vec<_> = required.iter().filter(|n| !seen.contains(**n)).collect();
    assert!(
        all_there.is_some(),
        "the sidecar's table lists metrics the sidecar did not emit: {missing:?}\n/metrics held:\n{text}"
    );
    let undocumented: Vec<_> = seen.difference(&all).collect();
    assert!(
        undocumented.is_empty(),
        "emitted by the sidecar but not in docs/operations.md's metrics list: {undocumented:?}"
    );
}

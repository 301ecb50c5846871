//! The metrics list of `docs/operations.md` ("## Metrics") held to what a gateway's
//! `/metrics` emits: real `sluice-gateway` processes (one with the embedded limiter,
//! one on a real Redis that is killed and restarted) serve traffic that provokes each
//! metric — served, queued, fallen back, an account dead for billing, a last live
//! account refused, a client gone while queued, learned limits, Redis away and back.
//! Then every `sluice_*` metric emitted is documented, and every documented metric is
//! emitted, except those named in [`NOT_HERE`] with the reason; and every metric of
//! `docs/gateway.md`'s table is emitted.

use std::collections::BTreeSet;
use std::time::Duration;

use sluice_sim::AccountState;
use sluice_testkit::RedisServer;

use crate::support::*;

/// Documented metrics this test does not see from a gateway, and why. Each must still
/// be documented and be a metric name in the sources (checked below), so the list
/// cannot go stale unnoticed.
const NOT_HERE: &[(&str, &str)] = &[
    (
        "sluice_config_reloads_total",
        "needs a SIGHUP: crates/gateway/tests/reload.rs asserts it",
    ),
    (
        "sluice_learned_limit_estimate",
        "needs refusals without rate-limit headers (the sidecar's learn tests drive the learner)",
    ),
    (
        "sluice_learned_limit_confirmations",
        "needs refusals without rate-limit headers (the sidecar's learn tests drive the learner)",
    ),
    (
        "sluice_learned_limit_evidence_ms",
        "needs refusals without rate-limit headers (the sidecar's learn tests drive the learner)",
    ),
    (
        "sluice_limiter_late_reconciles_total",
        "needs a request longer than the reconcile window (limiter tests cover it)",
    ),
    (
        "sluice_observations_dropped_total",
        "needs a full observation queue",
    ),
    (
        "sluice_configured_limit",
        "sidecar only (its metrics_doc test)",
    ),
    ("sluice_window_used", "sidecar only (its metrics_doc test)"),
    ("sluice_observations_claimed_total", "sidecar only"),
    (
        "sluice_observations_failed_total",
        "sidecar only, on a failing apply",
    ),
    (
        "sluice_observations_ignored_total",
        "stale or unknown observations: sidecar's metrics_doc test",
    ),
    ("sluice_observation_lag_seconds", "sidecar only"),
    (
        "sluice_tenant_budget_remaining_usd",
        "needs tenants with limits: tenant_limits.rs asserts it",
    ),
    (
        "sluice_tenant_limit_remaining",
        "needs tenants with limits: tenant_limits.rs asserts it",
    ),
    (
        "sluice_tenant_refusals_total",
        "needs tenants with limits: tenant_limits.rs asserts it",
    ),
    (
        "sluice_fair_share_waits_total",
        "needs several tenants queueing: fair_share.rs asserts it",
    ),
    ("sluice_probes_total", "sidecar only"),
    ("sluice_sidecar_acquire_total", "sidecar only"),
    ("sluice_sidecar_reports_total", "sidecar only"),
    ("sluice_sidecar_report_refused_total", "sidecar only"),
    ("sluice_sidecar_unauthenticated_total", "sidecar only"),
    ("sluice_sidecar_corroborations_total", "sidecar only"),
];

/// The metric names of the tables under `## Metrics` in `docs/operations.md`: the
/// backticked `sluice_*` names of each row's first cell, without their labels.
pub(crate) fn documented() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/operations.md");
    let doc = std::fs::read_to_string(path).expect("docs/operations.md");
    let section = doc
        .split_once("\n## Metrics\n")
        .expect("docs/operations.md has a \"## Metrics\" section")
        .1;
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut names = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `sluice_")) {
        let first = row.split('|').nth(1).unwrap_or_default();
        for name in first.split('`').skip(1).step_by(2) {
            let name = name.split('{').next().unwrap_or(name);
            assert!(
                name.starts_with("sluice_"),
                "not a full metric name in the list: {name:?} in {row}"
            );
            names.insert(name.to_owned());
        }
    }
    assert!(
        names.len() > 10,
        "the metrics list was not found: {names:?}"
    );
    names
}

/// The metric names of `docs/gateway.md`'s metrics table (the first cell of each row).
fn in_gateway_md() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/gateway.md");
    let doc = std::fs::read_to_string(path).expect("docs/gateway.md");
    doc.lines()
        .filter(|l| l.starts_with("| `sluice_"))
        .filter_map(|row| row.split('`').nth(1))
        .map(|n| n.split('{').next().unwrap_or(n).to_owned())
        .collect()
}

/// The `sluice_*` metric families in a `/metrics` text (histograms by their base name).
fn emitted(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .filter(|n| n.starts_with("sluice_"))
        .map(str::to_owned)
        .collect()
}

/// Whether `name` is written as a string in some crate's sources.
fn in_sources(name: &str) -> bool {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let quoted = format!("\"{name}\"");
    let mut stack = vec![std::path::PathBuf::from(root)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                let n = p.file_name().unwrap_or_default();
                if n != "tests" && n != "target" && n != "benches" {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|e| e == "rs")
                && p.components().any(|c| c.as_os_str() == "src")
                && std::fs::read_to_string(&p).is_ok_and(|t| t.contains(&quoted))
            {
                return true;
            }
        }
    }
    false
}

fn body(model: &str) -> serde_json::Value {
    ask(model, 8)
}

/// A gateway with the embedded limiter: served (priced), fallen back, an account dead
/// for billing beside a live one, a last live account refused, a client gone while
/// queued, and a limit learned from the provider's headers (lower than configured).
async fn embedded_gateway_metrics() -> String {
    let minute = Duration::from_secs(60);
    let mut config = sluice_sim::Config::with_models(vec![
        // The provider's real limit is 50/min; Sluice is configured with 100.
        sim_model("doc-m", 50, 1_000_000, minute),
        sim_model("tiny-m", 1000, 1_000_000, minute),
        sim_model("tiny-q", 1000, 1_000_000, minute),
        sim_model("dead-m", 1000, 1_000_000, minute),
        sim_model("gone-m", 1000, 1_000_000, minute),
        sim_model("flaky-m", 1000, 1_000_000, minute),
    ]);
    for (name, key, state) in [
        ("live", "sk-live", AccountState::Active),
        ("dead", "sk-dead", AccountState::BillingExhausted),
        ("gone", "sk-gone", AccountState::BillingExhausted),
    ] {
        let mut a = sluice_sim::AccountConfig::new(key);
        a.name = Some(name.to_owned());
        a.state = state;
        config.accounts.push(a);
    }
    // Every attempt at flaky-m is a 500: retried, then passed on.
    config.faults.push(sluice_sim::FaultRule {
        model: Some("flaky-m".to_owned()),
        server_error: 1.0,
        ..sluice_sim::FaultRule::default()
    });
    let sim = sluice_sim::spawn(config).await.expect("sim starts");
    let base = sim.base_url();
    let gw = GatewayProcess::start(&format!(
        r#"
[[upstreams]]
name = "live"
base_url = "{base}"
keys = ["sk-live"]
[[upstreams]]
name = "mixed"
base_url = "{base}"
keys = ["sk-dead", "sk-live"]
[[upstreams]]
name = "gone"
base_url = "{base}"
keys = ["sk-gone"]
[[models]]
name = "doc-m"
upstream = "live"
rpm = 100
price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}
[[models]]
name = "tiny-m"
upstream = "live"
limits = [{{ requests = 1, per = "60s" }}]
pacing = "off"
fallback = ["doc-m"]
[[models]]
name = "tiny-q"
upstream = "live"
limits = [{{ requests = 1, per = "10s" }}]
pacing = "off"
[[models]]
name = "dead-m"
upstream = "mixed"
rpm = 1000
[[models]]
name = "gone-m"
upstream = "gone"
rpm = 1000
[[models]]
name = "flaky-m"
upstream = "live"
rpm = 1000
[retry]
max_attempts = 3
base = "10ms"
cap = "50ms"
[queue]
max_wait = "30s"
"#
    ));
    let c = client();
    let url = gw.url.as_str();
    for _ in 0..3 {
        let a = chat(&c, url, body("doc-m"), &[]).await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    // tiny-m's one request a minute is spent: the second is served by doc-m.
    for _ in 0..2 {
        let a = chat(&c, url, body("tiny-m"), &[]).await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    // The dead account refuses (billing): out of rotation, retried on the live one.
    for _ in 0..3 {
        let a = chat(&c, url, body("dead-m"), &[]).await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    // The only account refuses: suspected, kept in rotation (cooled down), the refusal
    // passed on; a second refusal after the cooldown corroborates it and the
    // recalibrator takes it out of rotation.
    let a = chat(&c, url, body("gone-m"), &[]).await;
    assert_ne!(a.status, 200, "{a:?}");
    let a = chat(&c, url, body("gone-m"), &[("x-sluice-max-wait", "20s")]).await;
    assert_ne!(a.status, 200, "{a:?}");
    // A provider error on every attempt: retried, then passed on.
    let a = chat(&c, url, body("flaky-m"), &[]).await;
    assert_ne!(a.status, 200, "{a:?}");
    // A client that gives up while queued: tiny-q's next slot is ten seconds away (no
    // fallback), and the client waits 300 ms.
    let a = chat(&c, url, body("tiny-q"), &[]).await;
    assert_eq!(a.status, 200, "{a:?}");
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let queued = impatient
        .post(format!("{url}/v1/chat/completions"))
        .json(&body("tiny-q"))
        .send()
        .await;
    assert!(
        queued.as_ref().is_err_and(|e| e.is_timeout()),
        "the impatient client was answered: {queued:?}"
    );

    // Wait for what happens off the request path: the embedded recalibrator applies
    // the observations (the learned limit, the disabled account) and the released
    // slot is counted.
    let wanted = [
        "sluice_effective_limit",
        "sluice_account_disabled",
        "sluice_recalibrations_total",
        "sluice_observations_consumed_total",
        "sluice_reservations_released_total",
        "sluice_accounts_suspected_total",
        "sluice_retries_total",
    ];
    let ready = eventually(Duration::from_secs(20), || async {
        let text = metrics_text(&c, url).await;
        let got = emitted(&text);
        wanted.iter().all(|w| got.contains(*w))
    })
    .await;
    let text = metrics_text(&c, url).await;
    assert!(
        ready,
        "not all of {wanted:?} appeared; /metrics held:\n{text}"
    );
    text
}

/// A gateway on a real Redis: served (observations published to the stream), Redis
/// killed (store errors, degraded decisions, the handover to local), Redis back (the
/// handover to Redis).
async fn redis_gateway_metrics() -> String {
    let minute = Duration::from_secs(60);
    let sim = sim(vec![sim_model("r-m", 1000, 1_000_000, minute)], &[]).await;
    let mut redis = RedisServer::start();
    let gw = GatewayProcess::start(&format!(
        r#"
[store]
redis_url = "{redis}"
on_error = "local"
timeout = "200ms"
[[upstreams]]
name = "sim"
base_url = "{base}"
keys = ["sk-r"]
[[models]]
name = "r-m"
upstream = "sim"
rpm = 1000
"#,
        redis = redis.url(),
        base = sim.base_url()
    ));
    let c = client();
    let url = gw.url.as_str();
    for _ in 0..3 {
        let a = chat(&c, url, body("r-m"), &[]).await;
        assert_eq!(a.status, 200, "{a:?}");
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            try_metric(&c, url, "sluice_observations_published_total", &[])
                .await
                .is_some()
        })
        .await,
        "no observation was published to the stream"
    );
    redis.kill();
    let degraded = eventually(Duration::from_secs(20), || async {
        let a = chat(&c, url, body("r-m"), &[]).await;
        assert_eq!(a.status, 200, "served locally while Redis is away: {a:?}");
        try_metric(&c, url, "sluice_limiter_degraded_decisions_total", &[])
            .await
            .is_some()
    })
    .await;
    assert!(degraded, "no decision was taken without Redis");
    redis.restart();
    let back = eventually(Duration::from_secs(30), || async {
        let a = chat(&c, url, body("r-m"), &[]).await;
        assert_eq!(a.status, 200, "{a:?}");
        try_metric(
            &c,
            url,
            "sluice_limiter_handovers_total",
            &["direction=\"to_redis\""],
        )
        .await
        .is_some()
    })
    .await;
    let text = metrics_text(&c, url).await;
    assert!(back, "never handed back to Redis; /metrics held:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_metrics_are_what_a_gateway_emits() {
    let documented = documented();
    for (name, why) in NOT_HERE {
        assert!(
            documented.contains(*name),
            "{name} is excused here ({why}) but not documented"
        );
        assert!(
            in_sources(name),
            "{name} is documented but no source emits it"
        );
    }
    let embedded = embedded_gateway_metrics().await;
    let shared = redis_gateway_metrics().await;
    let mut seen = emitted(&embedded);
    seen.extend(emitted(&shared));

    let undocumented: Vec<_> = seen.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "emitted but not in docs/operations.md's metrics list: {undocumented:?}"
    );
    // docs/gateway.md's own table names only metrics a gateway emits.
    let gateway_md = in_gateway_md();
    assert!(gateway_md.len() > 5, "no metrics table in docs/gateway.md");
    let stale: Vec<_> = gateway_md.difference(&seen).collect();
    assert!(
        stale.is_empty(),
        "docs/gateway.md lists metrics the gateway did not emit: {stale:?}"
    );
    let excused: BTreeSet<String> = NOT_HERE.iter().map(|(n, _)| n.to_string()).collect();
    let missing: Vec<_> = documented
        .iter()
        .filter(|n| !seen.contains(*n) && !excused.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "documented but not emitted under this traffic: {missing:?}\n\
         embedded gateway:\n{embedded}\nRedis gateway:\n{shared}"
    );
}

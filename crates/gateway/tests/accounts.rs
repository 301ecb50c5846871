//! Keys grouped into one account and models drawing on one quota (issue #18): the
//! limiter decides per account and per quota, so listing two keys of one organisation or
//! two names of one model family never doubles what is admitted. Each test also runs the
//! configuration that does double (keys as separate accounts, models with their own
//! limits), so that it shows what the grouping changes.

use std::time::Duration;

use crate::support::{ask, chat, client, gateway, sim, sim_model};

/// The statuses of `n` requests to `models` in turn, sent one after another.
async fn statuses(base: &str, models: &[&str], n: usize) -> Vec<u16> {
    let c = client();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let a = chat(&c, base, ask(models[i % models.len()], 8), &[]).await;
        assert!(
            a.status == 200 || a.status == 429,
            "a 200 or an honest 429: {a:?}"
        );
        out.push(a.status);
    }
    out
}

fn admitted(statuses: &[u16]) -> usize {
    statuses.iter().filter(|s| **s == 200).count()
}

const LIMIT: usize = 4;

/// A gateway config on `sim_url` with `upstream_keys` (the `keys = …` or `accounts = …`
/// line) and `models` (the `[[models]]`/`[[quotas]]` text). Requests that cannot have a
/// slot within the 1 s deadline are refused at once: a 60 s window of 4 never frees
/// one during the test.
fn config(sim_url: &str, upstream_keys: &str, models: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "up"
base_url = "{sim_url}"
{upstream_keys}
{models}
[queue]
max_wait = "1s"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_keys_of_one_account_admit_its_limit_once_and_both_keys_send() {
    let big = Duration::from_secs(60);
    let upstream = sim(
        vec![sim_model("m", 1_000, 1_000_000, big)],
        &[("org-key-1", "sk-org-1"), ("org-key-2", "sk-org-2")],
    )
    .await;
    let model =
        format!("[[models]]\nname = \"m\"\nupstream = \"up\"\nrpm = {LIMIT}\npacing = \"off\"\n");

    let grouped = gateway(&config(
        &upstream.base_url(),
        r#"accounts = [{ name = "org-a", keys = ["sk-org-1", "sk-org-2"] }]"#,
        &model,
    ))
    .await;
    let c = client();
    let first = chat(&c, &grouped, ask("m", 8), &[]).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(
        first.headers["x-sluice-account"], "org-a",
        "the account's name, never a key"
    );
    let mut got = vec![first.status];
    got.extend(statuses(&grouped, &["m"], 2 * LIMIT - 1).await);
    assert_eq!(
        admitted(&got),
        LIMIT,
        "one account of two keys admits its limit once: {got:?}"
    );
    let stats = upstream.sim().stats();
    let sent = |acct: &str| stats.get(acct, "m").map_or(0, |r| r.accepted);
    assert_eq!(sent("org-key-1") + sent("org-key-2"), LIMIT as u64);
    assert!(
        sent("org-key-1") >= 1 && sent("org-key-2") >= 1,
        "the keys take turns at sending: {} and {}",
        sent("org-key-1"),
        sent("org-key-2")
    );

    // The same keys as two accounts: twice the limit is admitted (what a provider that
    // meters per organisation would refuse).
    let separate = gateway(&config(
        &upstream.base_url(),
        r#"keys = ["sk-org-1", "sk-org-2"]"#,
        &model,
    ))
    .await;
    let got = statuses(&separate, &["m"], 2 * LIMIT + 2).await;
    assert_eq!(admitted(&got), 2 * LIMIT, "two accounts: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_model_names_of_one_quota_admit_its_limit_once() {
    let big = Duration::from_secs(60);
    let upstream = sim(
        vec![
            sim_model("opus-4-1", 1_000, 1_000_000, big),
            sim_model("opus-4-0", 1_000, 1_000_000, big),
        ],
        &[],
    )
    .await;
    let shared = gateway(&config(
        &upstream.base_url(),
        r#"keys = ["sk-one"]"#,
        &format!(
            r#"
[[quotas]]
name = "opus-4"
rpm = {LIMIT}
pacing = "off"
[[models]]
name = "opus-4-1"
upstream = "up"
quota = "opus-4"
[[models]]
name = "opus-4-0"
upstream = "up"
quota = "opus-4"
"#
        ),
    ))
    .await;
    let got = statuses(&shared, &["opus-4-1", "opus-4-0"], 2 * LIMIT).await;
    assert_eq!(
        admitted(&got),
        LIMIT,
        "two names of one quota admit its limit once: {got:?}"
    );
    assert_eq!(
        &got[..LIMIT],
        &[200; LIMIT],
        "the first {LIMIT}, of both names, are admitted: {got:?}"
    );

    // Each name with limits of its own: each admits the limit.
    let own = gateway(&config(
        &upstream.base_url(),
        r#"keys = ["sk-two"]"#,
        &format!(
            r#"
[[models]]
name = "opus-4-1"
upstream = "up"
rpm = {LIMIT}
pacing = "off"
[[models]]
name = "opus-4-0"
upstream = "up"
rpm = {LIMIT}
pacing = "off"
"#
        ),
    ))
    .await;
    let got = statuses(&own, &["opus-4-1", "opus-4-0"], 2 * LIMIT + 2).await;
    assert_eq!(admitted(&got), 2 * LIMIT, "separate quotas: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_redis_admit_one_accounts_shared_quota_once() {
    let redis = sluice_testkit::RedisServer::start();
    let big = Duration::from_secs(60);
    let upstream = sim(
        vec![
            sim_model("opus-4-1", 1_000, 1_000_000, big),
            sim_model("opus-4-0", 1_000, 1_000_000, big),
        ],
        &[("org-key-1", "sk-org-1"), ("org-key-2", "sk-org-2")],
    )
    .await;
    let text = format!(
        r#"
[store]
redis_url = "{redis}"
on_error = "fail_closed"
{}"#,
        config(
            &upstream.base_url(),
            r#"accounts = [{ name = "org-a", keys = ["sk-org-1", "sk-org-2"] }]"#,
            &format!(
                r#"
[[quotas]]
name = "opus-4"
rpm = {LIMIT}
pacing = "off"
[[models]]
name = "opus-4-1"
upstream = "up"
quota = "opus-4"
[[models]]
name = "opus-4-0"
upstream = "up"
quota = "opus-4"
"#
            ),
        ),
        redis = redis.url(),
    );
    let (a, b) = (gateway(&text).await, gateway(&text).await);
    let c = client();
    let mut got = Vec::new();
    for i in 0..2 * LIMIT + 2 {
        let base = if i % 2 == 0 { &a } else { &b };
        let model = if (i / 2) % 2 == 0 {
            "opus-4-1"
        } else {
            "opus-4-0"
        };
        let answer = chat(&c, base, ask(model, 8), &[]).await;
        assert!(answer.status == 200 || answer.status == 429, "{answer:?}");
        got.push(answer.status);
    }
    assert_eq!(
        admitted(&got),
        LIMIT,
        "two replicas, two keys of one account, two names of one quota: the limit once: {got:?}"
    );
    let stats = upstream.sim().stats();
    let sent: u64 = ["org-key-1", "org-key-2"]
        .iter()
        .flat_map(|k| ["opus-4-1", "opus-4-0"].map(|m| stats.get(k, m).map_or(0, |r| r.accepted)))
        .sum();
    assert_eq!(
        sent, LIMIT as u64,
        "the provider saw exactly what was admitted"
    );
}

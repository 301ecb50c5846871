//! The request flow against `sluice-sim`: accounts, fallback, dead accounts, tenant
//! weights, streaming and reconciliation, honest refusals.

use std::time::Duration;

use futures::future::join_all;
use sluice_sim::AccountState;

use crate::support::*;

fn upstream(base: &str, keys: &[&str]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    format!(
        "[[upstreams]]\nname = \"sim\"\nbase_url = \"{base}\"\nkeys = [{}]\n",
        keys.join(", ")
    )
}

async fn served(base: &str, model: &str, n: usize, max_wait: &str) -> (usize, Vec<Answer>) {
    let c = client();
    let headers = [("x-sluice-max-wait", max_wait)];
    let answers = join_all((0..n).map(|_| chat(&c, base, ask(model, 16), &headers))).await;
    answers.iter().for_each(assert_honest);
    (answers.iter().filter(|a| a.status == 200).count(), answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_accounts_serve_twice_the_work_of_one() {
    let per = Duration::from_secs(10);
    let sim = sim(
        vec![sim_model("acct-m", 10, 100_000, per)],
        &[("a", "sk-a"), ("b", "sk-b")],
    )
    .await;
    let model = "[[models]]\nname = \"acct-m\"\nupstream = \"sim\"\nlimits = [{ requests = 10, per = \"10s\" }]\npacing = \"off\"\n";
    let one = gateway(&format!("{}{model}", upstream(&sim.base_url(), &["sk-a"]))).await;
    let (ok_one, _) = served(&one, "acct-m", 40, "0s").await;
    let two = gateway(&format!(
        "{}{model}",
        upstream(&sim.base_url(), &["sk-a", "sk-b"])
    ))
    .await;
    sim.sim().reset_all();
    let (ok_two, _) = served(&two, "acct-m", 40, "0s").await;
    assert_eq!(ok_one, 10);
    assert_eq!(ok_two, 20, "two accounts, twice the work");
    let stats = sim.sim().stats();
    assert_eq!(stats.get("b", "acct-m").map(|r| r.accepted), Some(10));
    assert_eq!(
        stats
            .accounts
            .values()
            .flat_map(|a| a.models.values())
            .map(|r| r.refused_total())
            .sum::<u64>(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_serves_what_the_primary_cannot() {
    let per = Duration::from_secs(10);
    let sim = sim(
        vec![
            sim_model("primary", 3, 100_000, per),
            sim_model("backup", 100, 100_000, per),
        ],
        &[],
    )
    .await;
    let gw = gateway(&format!(
        "{}[[models]]\nname = \"primary\"\nupstream = \"sim\"\nlimits = [{{ requests = 3, per = \"10s\" }}]\npacing = \"off\"\nfallback = [\"backup\"]\n[[models]]\nname = \"backup\"\nupstream = \"sim\"\nlimits = [{{ requests = 100, per = \"10s\" }}]\n",
        upstream(&sim.base_url(), &["k"])
    ))
    .await;
    let (ok, answers) = served(&gw, "primary", 10, "200ms").await;
    assert_eq!(ok, 10, "the fallback took what the primary could not");
    let by = |m: &str| {
        answers
            .iter()
            .filter(|a| a.headers["x-sluice-model"] == m)
            .count()
    };
    assert_eq!(by("primary"), 3);
    assert_eq!(by("backup"), 7);
    let backup = answers
        .iter()
        .find(|a| a.headers["x-sluice-model"] == "backup")
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&backup.body).unwrap();
    assert_eq!(body["model"], "backup", "the body says which model served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_billing_dead_account_is_taken_out_of_rotation() {
    let sim = sim(
        vec![sim_model("dead-m", 100, 100_000, Duration::from_secs(60))],
        &[("dead", "sk-dead"), ("live", "sk-live")],
    )
    .await;
    sim.sim()
        .set_account_state("dead", AccountState::BillingExhausted)
        .unwrap();
    let gw = gateway(&format!(
        "{}[[models]]\nname = \"dead-m\"\nupstream = \"sim\"\nrpm = 100\n",
        upstream(&sim.base_url(), &["sk-dead", "sk-live"])
    ))
    .await;
    let c = client();
    for _ in 0..6 {
        let a = chat(&c, &gw, ask("dead-m", 8), &[]).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.headers["x-sluice-account"], "key-1");
    }
    let stats = sim.sim().stats();
    assert_eq!(
        stats.get("dead", "dead-m").map(|r| r.refused.billing),
        Some(1),
        "tried once, then never again"
    );
    assert_eq!(stats.get("live", "dead-m").map(|r| r.accepted), Some(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_weights_hold_under_contention() {
    let sim = sim(
        vec![sim_model(
            "fair-m",
            1000,
            1_000_000,
            Duration::from_secs(60),
        )],
        &[],
    )
    .await;
    let gw = gateway(&format!(
        "{}[[models]]\nname = \"fair-m\"\nupstream = \"sim\"\nlimits = [{{ requests = 20, per = \"1s\" }}]\n[queue]\nmax_wait = \"2s\"\nbooked_ahead = 2\n[[tenants]]\nname = \"interactive\"\nkey = \"tenant-interactive\"\nweight = 3\n[[tenants]]\nname = \"batch\"\nkey = \"tenant-batch-key\"\nweight = 1\n",
        upstream(&sim.base_url(), &["k"])
    ))
    .await;
    let c = client();
    let send = |key: &'static str| {
        let (c, gw) = (c.clone(), gw.clone());
        async move {
            chat(
                &c,
                &gw,
                ask("fair-m", 8),
                &[("authorization", &format!("Bearer {key}"))],
            )
            .await
        }
    };
    // The batch job floods first and takes the idle burst; once its requests queue,
    // the interactive tenant arrives alongside more batch work.
    let early = tokio::spawn(join_all((0..40).map(|_| send("tenant-batch-key"))));
    let s2 = sim.sim().clone();
    let busy = tokio::task::spawn_blocking(move || {
        sluice_testkit::wait_until(Duration::from_secs(10), || {
            s2.stats()
                .accounts
                .values()
                .filter_map(|a| a.models.get("fair-m"))
                .map(|r| r.accepted)
                .sum::<u64>()
                >= 20
        })
    });
    assert!(busy.await.unwrap(), "the batch flood reached the provider");
    let batch = (0..40).map(|_| send("tenant-batch-key"));
    let inter = (0..40).map(|_| send("tenant-interactive"));
    let (b, i) = futures::join!(join_all(batch), join_all(inter));
    let e = early.await.unwrap();
    b.iter()
        .chain(i.iter())
        .chain(e.iter())
        .for_each(assert_honest);
    let ok = |v: &Vec<Answer>| v.iter().filter(|a| a.status == 200).count();
    let (ok_b, ok_i) = (ok(&b) + ok(&e), ok(&i));
    // Served while both tenants queued: everything past the batch's idle burst of 20.
    let batch_contended = ok_b.saturating_sub(20);
    assert!(
        batch_contended >= 1,
        "the batch tenant is not starved under contention: {ok_b}"
    );
    assert!(
        ok_i >= 2 * batch_contended,
        "weight 3 against 1 under contention: interactive {ok_i}, batch {batch_contended}"
    );
    let unknown = chat(
        &c,
        &gw,
        ask("fair-m", 8),
        &[("authorization", "Bearer nope-nope-nope")],
    )
    .await;
    assert_eq!(unknown.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_and_plain_requests_reconcile_to_the_sims_counts() {
    let sim = sim(
        vec![sim_model(
            "recon-m",
            1000,
            1_000_000,
            Duration::from_secs(60),
        )],
        &[],
    )
    .await;
    let gw = gateway(&format!(
        "{}[[models]]\nname = \"recon-m\"\nupstream = \"sim\"\nrpm = 1000\ntpm = 1000000\n",
        upstream(&sim.base_url(), &["k"])
    ))
    .await;
    let c = client();
    let plain = chat(&c, &gw, ask("recon-m", 12), &[]).await;
    assert_eq!(plain.status, 200);
    let mut s = ask("recon-m", 20);
    s["stream"] = true.into();
    let quiet = chat(&c, &gw, s.clone(), &[]).await;
    assert_eq!(quiet.status, 200);
    assert!(quiet.body.contains("[DONE]"), "{}", quiet.body);
    assert!(
        !quiet.body.contains("\"prompt_tokens\""),
        "the usage chunk the client did not ask for is stripped: {}",
        quiet.body
    );
    s["stream_options"] = serde_json::json!({"include_usage": true});
    let loud = chat(&c, &gw, s, &[]).await;
    assert!(
        loud.body.contains("\"prompt_tokens\""),
        "asked for, kept: {}",
        loud.body
    );

    let stats = sim.sim().stats();
    let r = stats
        .accounts
        .values()
        .find_map(|a| a.models.get("recon-m"))
        .unwrap();
    assert_eq!(r.accepted, 3);
    let actual = metric(
        &c,
        &gw,
        "sluice_tokens_total",
        &["model=\"recon-m\"", "source=\"actual\""],
    )
    .await;
    assert_eq!(
        actual,
        (r.prompt_tokens + r.completion_tokens) as f64,
        "every answer reconciled to the sim's counts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_honest_and_impossible_requests_are_413() {
    let sim = sim(
        vec![sim_model(
            "tight-m",
            1000,
            1_000_000,
            Duration::from_secs(60),
        )],
        &[],
    )
    .await;
    let gw = gateway(&format!("{}[[models]]\nname = \"tight-m\"\nupstream = \"sim\"\nlimits = [{{ requests = 1, per = \"60s\" }}, {{ tokens = 500, per = \"60s\" }}]\n", upstream(&sim.base_url(), &["k"]))).await;
    let c = client();
    assert_eq!(chat(&c, &gw, ask("tight-m", 8), &[]).await.status, 200);
    let refused = chat(
        &c,
        &gw,
        ask("tight-m", 8),
        &[("x-sluice-max-wait", "100ms")],
    )
    .await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_honest(&refused);
    let secs: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (50..=63).contains(&secs),
        "the truth about a 60 s window (+1% allowance, +1 bucket): {secs}"
    );
    assert_eq!(refused.headers["x-ratelimit-limit-requests"], "1");
    assert_eq!(refused.headers["x-ratelimit-remaining-requests"], "0");
    assert!(refused.headers.contains_key("x-ratelimit-reset-requests"));
    let huge = chat(&c, &gw, ask("tight-m", 10_000), &[]).await;
    assert_eq!(huge.status, 413, "{huge:?}");
    assert!(huge.body.contains("can never be served"), "{}", huge.body);
    assert_eq!(
        sim.sim()
            .stats()
            .accounts
            .values()
            .flat_map(|a| a.models.values())
            .map(|r| r.refused_total())
            .sum::<u64>(),
        0
    );
}

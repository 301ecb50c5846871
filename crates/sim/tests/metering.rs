//! Exact metering over HTTP on a manual clock: window edges, reservations, settlement, peaks, overrides.

use serde_json::json;

use crate::common::{chat_body, header, json, prompt_of, start};

const OPENAI_2_RPM: &str = r#"
[[models]]
name = "m"
dialect = "openai"
limits = [{ requests = 2, per = "60s" }, { tokens = 100, per = "60s" }]
"#;

#[tokio::test]
async fn window_edge_is_exact_to_the_millisecond() {
    let h = start(OPENAI_2_RPM).await;
    let body = chat_body("m", "Hello, world!", 5); // 10 prompt + 5 = 15 tokens
    let r = h.chat("k", body.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-ratelimit-remaining-requests").as_deref(),
        Some("1")
    );
    assert_eq!(
        header(&r, "x-ratelimit-remaining-tokens").as_deref(),
        Some("85")
    );
    assert_eq!(
        header(&r, "x-ratelimit-reset-requests").as_deref(),
        Some("1m0s")
    );

    h.advance_ms(30_000);
    let r = h.chat("k", body.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );

    h.advance_ms(29_999); // t = 59.999 s: the first entry still counts
    let r = h.chat("k", body.clone()).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after").as_deref(), Some("1"));
    assert_eq!(
        header(&r, "x-ratelimit-reset-requests").as_deref(),
        Some("30.001s")
    );
    let b = json(r).await;
    assert_eq!(b["error"]["type"], "requests");
    assert_eq!(b["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        b["error"]["message"],
        "Rate limit reached for m in organization org-sluice-sim on requests per min (RPM): Limit 2, Used 2, Requested 1. Please try again in 1ms. Visit https://platform.openai.com/account/rate-limits to learn more."
    );

    h.advance_ms(1); // t = 60 s: the first entry has expired
    let r = h.chat("k", body).await;
    assert_eq!(r.status(), 200);

    let s = h.stats().await;
    let account = sluice_sim::config::fingerprint("k");
    let m = s.get(&account, "m").expect("account k");
    assert_eq!(m.accepted, 3);
    assert_eq!(m.refused.requests, 1);
    assert_eq!(m.refused_total(), 1);
    assert_eq!((m.limits[0].peak, m.limits[0].used), (2, 2));
    assert_eq!((m.limits[1].peak, m.limits[1].used), (30, 30));
    assert_eq!((m.prompt_tokens, m.completion_tokens), (30, 15));
}

#[tokio::test]
async fn tokens_are_reserved_at_arrival() {
    let h = start(OPENAI_2_RPM).await;
    // 6 + 1 prompt + 60 max = 67 reserved; a second one would need 134 > 100.
    let r = h.chat("k", chat_body("m", "hi", 60)).await;
    assert_eq!(r.status(), 200);
    let r = h.chat("k", chat_body("m", "hi", 60)).await;
    assert_eq!(r.status(), 429);
    let b = json(r).await;
    assert_eq!(b["error"]["type"], "tokens");
    let message = b["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("on tokens per min (TPM): Limit 100, Used 67, Requested 67."),
        "{message}"
    );
    // Exactly at the limit is admitted: 100 - 67 = 33 = 7 prompt + 26.
    let r = h.chat("k", chat_body("m", "hi", 26)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-ratelimit-remaining-tokens").as_deref(),
        Some("0")
    );
    let s = h.stats().await;
    let m = s.get(&sluice_sim::config::fingerprint("k"), "m").unwrap();
    assert_eq!(m.refused.tokens, 1);
    assert_eq!(m.limits[1].peak, 100);
}

#[tokio::test]
async fn a_request_larger_than_the_limit_is_hopeless() {
    let h = start(OPENAI_2_RPM).await;
    let r = h.chat("k", chat_body("m", "hi", 200)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), None);
    let b = json(r).await;
    assert_eq!(
        b["error"]["message"],
        "Request too large for m in organization org-sluice-sim on tokens per min (TPM): Limit 100, Requested 207. The input or output tokens must be reduced in order to run successfully. Visit https://platform.openai.com/account/rate-limits to learn more."
    );
    let s = h.stats().await;
    let m = s.get(&sluice_sim::config::fingerprint("k"), "m").unwrap();
    assert_eq!((m.refused.too_large, m.accepted), (1, 0));
    assert_eq!(m.limits[0].used, 0, "a refusal leaves no trace");
}

#[tokio::test]
async fn settlement_to_a_drawn_completion() {
    let h = start(
        r#"
seed = 3
[[models]]
name = "m"
limits = [{ tokens = 1000, per = "60s" }]
completion_tokens = { min = 1, max = 50 }
"#,
    )
    .await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "abcd"}]});
    let r = h.chat("k", body).await;
    assert_eq!(r.status(), 200);
    let b = json(r).await;
    let completion = b["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=50).contains(&completion));
    assert_eq!(b["usage"]["prompt_tokens"], 7);
    let s = h.stats().await;
    let m = s.get(&sluice_sim::config::fingerprint("k"), "m").unwrap();
    // Reserved 7 + 50 at arrival (the peak), settled to the real usage.
    assert_eq!(m.limits[0].peak, 57);
    assert_eq!(m.limits[0].used, 7 + completion);
    assert_eq!((m.prompt_tokens, m.completion_tokens), (7, completion));
}

#[tokio::test]
async fn actual_only_charges_after_the_fact() {
    let h = start(
        r#"
[[models]]
name = "m"
token_rule = "actual_only"
limits = [{ tokens = 100, per = "60s" }]
"#,
    )
    .await;
    // Admitted although 7 + 95 > 100: nothing is reserved; the window overshoots.
    let r = h.chat("k", chat_body("m", "hi", 95)).await;
    assert_eq!(r.status(), 200);
    let r = h.chat("k", chat_body("m", "hi", 1)).await;
    assert_eq!(r.status(), 429);
    let s = h.stats().await;
    let m = s.get(&sluice_sim::config::fingerprint("k"), "m").unwrap();
    assert_eq!((m.limits[0].used, m.limits[0].peak), (102, 102));
    assert_eq!(m.refused.tokens, 1);
    h.advance_ms(60_000);
    assert_eq!(h.chat("k", chat_body("m", "hi", 1)).await.status(), 200);
}

#[tokio::test]
async fn concurrent_requests_never_overshoot() {
    let h = start(
        r#"
[[models]]
name = "m"
limits = [{ requests = 50, per = "60s" }]
"#,
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let client = h.client.clone();
        let url = h.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth("k")
                .json(&chat_body("m", "x", 1))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 50);
    let s = h.stats().await;
    let m = s.get(&sluice_sim::config::fingerprint("k"), "m").unwrap();
    assert_eq!((m.accepted, m.refused.requests), (50, 150));
    assert_eq!(m.limits[0].peak, 50);
}

#[tokio::test]
async fn each_key_is_its_own_account_and_overrides_apply() {
    let h = start(
        r#"
accept_any_key = true
[[models]]
name = "m"
limits = [{ requests = 3, per = "60s" }]

[[accounts]]
name = "small"
key = "sk-small"
models = [{ model = "m", limits = [{ requests = 1, per = "60s" }] }]
"#,
    )
    .await;
    assert_eq!(
        h.chat("sk-small", chat_body("m", "x", 1)).await.status(),
        200
    );
    assert_eq!(
        h.chat("sk-small", chat_body("m", "x", 1)).await.status(),
        429
    );
    for _ in 0..3 {
        assert_eq!(h.chat("sk-a", chat_body("m", "x", 1)).await.status(), 200);
        assert_eq!(h.chat("sk-b", chat_body("m", "x", 1)).await.status(), 200);
    }
    assert_eq!(h.chat("sk-a", chat_body("m", "x", 1)).await.status(), 429);
    let s = h.stats().await;
    assert_eq!(s.get("small", "m").unwrap().limits[0].limit, 1);
    assert_eq!(
        s.get(&sluice_sim::config::fingerprint("sk-a"), "m")
            .unwrap()
            .accepted,
        3
    );
    assert_eq!(
        s.get(&sluice_sim::config::fingerprint("sk-b"), "m")
            .unwrap()
            .accepted,
        3
    );
    let text = serde_json::to_string(&s).unwrap();
    assert!(!text.contains("sk-"), "no key in /stats: {text}");
}

#[tokio::test]
async fn window_scale_shortens_windows() {
    let h = start(
        r#"
window_scale = 0.1
[[models]]
name = "m"
limits = [{ requests = 1, per = "60s" }]
"#,
    )
    .await;
    assert_eq!(h.chat("k", chat_body("m", "x", 1)).await.status(), 200);
    h.advance_ms(5_999);
    let r = h.chat("k", chat_body("m", "x", 1)).await;
    assert_eq!(r.status(), 429);
    // The message names the configured window; the wait is the scaled one.
    let b = json(r).await;
    let message = b["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("requests per min (RPM)") && message.contains("Please try again in 1ms."),
        "{message}"
    );
    h.advance_ms(1);
    assert_eq!(h.chat("k", chat_body("m", "x", 1)).await.status(), 200);
    let s = h.stats().await;
    assert_eq!(
        s.get(&sluice_sim::config::fingerprint("k"), "m")
            .unwrap()
            .limits[0]
            .window_ms,
        6_000
    );
}

#[tokio::test]
async fn prompt_formula_over_http() {
    let h = start("[[models]]\nname = \"m\"").await;
    let text = "The quick brown fox jumps over the lazy dog";
    let r = h.chat("k", chat_body("m", text, 7)).await;
    let b = json(r).await;
    assert_eq!(b["usage"]["prompt_tokens"], prompt_of(text));
    assert_eq!(b["usage"]["completion_tokens"], 7);
    assert_eq!(b["usage"]["total_tokens"], prompt_of(text) + 7);
    assert_eq!(
        b["choices"][0]["message"]["content"],
        "sim set the log for all new"
    );
    assert_eq!(b["choices"][0]["finish_reason"], "length");
    // max_completion_tokens wins over max_tokens; no maximum gives the default 16.
    let r = h
        .chat("k", json!({"model": "m", "messages": [{"role": "user", "content": "你好"}], "max_tokens": 3, "max_completion_tokens": 4}))
        .await;
    let b = json(r).await;
    assert_eq!(
        (
            b["usage"]["prompt_tokens"].as_u64(),
            b["usage"]["completion_tokens"].as_u64()
        ),
        (Some(8), Some(4))
    );
    let r = h
        .chat(
            "k",
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    let b = json(r).await;
    assert_eq!(b["usage"]["completion_tokens"], 16);
    assert_eq!(b["choices"][0]["finish_reason"], "stop");
}

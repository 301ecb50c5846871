//! Each dialect's exact status, headers and body, on answers and on refusals.

use serde_json::json;

use crate::common::{chat_body, header, json, start};

fn config(dialect: &str) -> String {
    format!(
        r#"
[[models]]
name = "qwen3-max"
dialect = "{dialect}"
limits = [{{ requests = 1, per = "60s" }}, {{ tokens = 1000, per = "60s" }}]

[[models]]
name = "tpm"
dialect = "{dialect}"
limits = [{{ tokens = 20, per = "60s" }}]
"#
    )
}

#[tokio::test]
async fn openai_headers_on_every_answer() {
    let h = start(&config("openai")).await;
    let r = h.chat("k", chat_body("qwen3-max", "hi", 3)).await;
    assert_eq!(r.status(), 200);
    for (name, value) in [
        ("x-ratelimit-limit-requests", "1"),
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-reset-requests", "1m0s"),
        ("x-ratelimit-limit-tokens", "1000"),
        ("x-ratelimit-remaining-tokens", "990"),
        ("x-ratelimit-reset-tokens", "1m0s"),
    ] {
        assert_eq!(header(&r, name).as_deref(), Some(value), "{name}");
    }
    h.advance_ms(1_146);
    let r = h.chat("k", chat_body("qwen3-max", "hi", 3)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after").as_deref(), Some("59"));
    assert_eq!(
        header(&r, "x-ratelimit-reset-requests").as_deref(),
        Some("58.854s")
    );
    assert_eq!(
        header(&r, "x-ratelimit-remaining-tokens").as_deref(),
        Some("990")
    );
    let b = json(r).await;
    assert_eq!(
        b,
        json!({"error": {
            "message": "Rate limit reached for qwen3-max in organization org-sluice-sim on requests per min (RPM): Limit 1, Used 1, Requested 1. Please try again in 58.854s. Visit https://platform.openai.com/account/rate-limits to learn more.",
            "type": "requests", "param": null, "code": "rate_limit_exceeded"}})
    );
}

#[tokio::test]
async fn dashscope_bodies_and_no_rate_headers() {
    let h = start(&config("dashscope")).await;
    let r = h.chat("k", chat_body("qwen3-max", "hi", 3)).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()
            .keys()
            .all(|k| !k.as_str().contains("ratelimit"))
    );
    let r = h.chat("k", chat_body("qwen3-max", "hi", 3)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after"), None);
    assert!(
        r.headers()
            .keys()
            .all(|k| !k.as_str().contains("ratelimit"))
    );
    let b = json(r).await;
    let request_id = b["request_id"].as_str().unwrap().to_owned();
    assert_eq!(request_id.len(), 36);
    assert_eq!(
        b,
        json!({"error": {"message": "You have exceeded your request limit.", "type": "limit_requests", "param": null, "code": "limit_requests"}, "request_id": request_id})
    );
    // TPM throttling carries insufficient_quota, told from billing by its message.
    let r = h.chat("k", chat_body("tpm", "hi", 30)).await;
    assert_eq!(r.status(), 429);
    let b = json(r).await;
    assert_eq!(b["error"]["code"], "insufficient_quota");
    assert_eq!(b["error"]["type"], "insufficient_quota");
    assert_eq!(
        b["error"]["message"],
        "You exceeded your current quota, check your plan and billing details."
    );
}

#[tokio::test]
async fn azure_string_code_and_retry_headers() {
    let h = start(&config("azure")).await;
    let r = h.chat("k", chat_body("qwen3-max", "hi", 3)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );
    assert_eq!(
        header(&r, "x-ratelimit-remaining-tokens").as_deref(),
        Some("990")
    );
    assert_eq!(header(&r, "retry-after"), None);
    h.advance_ms(54_000);
    let r = h.chat("k", chat_body("qwen3-max", "hi", 3)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after").as_deref(), Some("6"));
    assert_eq!(header(&r, "retry-after-ms").as_deref(), Some("6000"));
    let b = json(r).await;
    assert_eq!(
        b,
        json!({"error": {"code": "429", "message": "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded call rate limit of your current OpenAI S0 pricing tier. Please retry after 6 seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit."}})
    );
    let r = h.chat("k", chat_body("tpm", "hi", 30)).await;
    let b = json(r).await;
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("have exceeded token rate limit")
    );
    // Embeddings name their own operation.
    let r = h
        .post(
            "/v1/embeddings",
            Some("k"),
            &json!({"model": "qwen3-max", "input": "x"}),
        )
        .await;
    assert_eq!(r.status(), 429);
    let b = json(r).await;
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Requests to the Embeddings_Create Operation")
    );
}

#[tokio::test]
async fn anthropic_rfc3339_resets_and_error_shape() {
    let h = start(&config("anthropic")).await;
    let r = h.chat("k", chat_body("qwen3-max", "hi", 3)).await;
    assert_eq!(r.status(), 200);
    // The manual clock starts at 2025-01-01T00:00:00Z.
    assert_eq!(
        header(&r, "anthropic-ratelimit-requests-limit").as_deref(),
        Some("1")
    );
    assert_eq!(
        header(&r, "anthropic-ratelimit-requests-remaining").as_deref(),
        Some("0")
    );
    assert_eq!(
        header(&r, "anthropic-ratelimit-requests-reset").as_deref(),
        Some("2025-01-01T00:01:00Z")
    );
    assert_eq!(
        header(&r, "anthropic-ratelimit-tokens-limit").as_deref(),
        Some("1000")
    );
    assert_eq!(
        header(&r, "anthropic-ratelimit-tokens-remaining").as_deref(),
        Some("990")
    );
    assert_eq!(
        header(&r, "anthropic-ratelimit-tokens-reset").as_deref(),
        Some("2025-01-01T00:01:00Z")
    );
    h.advance_ms(30_500);
    let r = h.chat("k", chat_body("qwen3-max", "hi", 3)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "retry-after").as_deref(), Some("30"));
    let request_id = header(&r, "request-id").unwrap();
    let b = json(r).await;
    assert_eq!(
        b,
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "This request would exceed your organization's rate limit of 1 requests per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later."}, "request_id": request_id})
    );
}

#[tokio::test]
async fn billing_and_free_quota_per_dialect() {
    let cases = [
        ("openai", 429, "insufficient_quota", "insufficient_quota"),
        ("dashscope", 429, "PrepaidBillOverdue", "insufficient_quota"),
        ("azure", 429, "insufficient_quota", "insufficient_quota"),
        (
            "anthropic",
            400,
            "invalid_request_error",
            "invalid_request_error",
        ),
    ];
    for (dialect, status, billing_code, free_code) in cases {
        let h = start(&format!(
            r#"
[[models]]
name = "m"
dialect = "{dialect}"
[[accounts]]
name = "broke"
key = "k1"
state = "billing_exhausted"
[[accounts]]
name = "free"
key = "k2"
state = "free_quota_exhausted"
"#
        ))
        .await;
        let code = |b: &serde_json::Value| match dialect {
            "anthropic" => b["error"]["type"].clone(),
            _ => b["error"]["code"].clone(),
        };
        let r = h.chat("k1", chat_body("m", "x", 1)).await;
        assert_eq!(r.status(), status, "{dialect}");
        assert_eq!(
            header(&r, "retry-after"),
            None,
            "{dialect}: never retryable"
        );
        assert_eq!(code(&json(r).await), billing_code, "{dialect}");
        let r = h.chat("k2", chat_body("m", "x", 1)).await;
        assert_eq!(r.status(), status, "{dialect}");
        let b = json(r).await;
        assert_eq!(code(&b), free_code, "{dialect}");
        if dialect == "dashscope" {
            assert_eq!(b["error"]["message"], "Free allocated quota exceeded.");
        }
        let s = h.stats().await;
        assert_eq!(s.get("broke", "m").unwrap().refused.billing, 1);
        assert_eq!(s.get("free", "m").unwrap().refused.free_quota, 1);
        assert_eq!(s.get("free", "m").unwrap().accepted, 0);
    }
}

#[tokio::test]
async fn burst_rule_refuses_a_sudden_surge() {
    let h = start(
        r#"
[[models]]
name = "m"
dialect = "dashscope"
limits = [{ requests = 1000, per = "60s" }]
burst = { window = "1s", factor = 2.0, floor = 2 }
"#,
    )
    .await;
    for _ in 0..2 {
        assert_eq!(h.chat("k", chat_body("m", "x", 1)).await.status(), 200);
    }
    let r = h.chat("k", chat_body("m", "x", 1)).await;
    assert_eq!(r.status(), 429);
    let b = json(r).await;
    assert_eq!(b["error"]["code"], "limit_burst_rate");
    assert_eq!(
        b["error"]["message"],
        "Request rate increased too quickly. To ensure system stability, please adjust your client logic to scale requests more smoothly over time."
    );
    // One window later the previous window held 2: up to 4 now.
    h.advance_ms(1_000);
    for _ in 0..4 {
        assert_eq!(h.chat("k", chat_body("m", "x", 1)).await.status(), 200);
    }
    assert_eq!(h.chat("k", chat_body("m", "x", 1)).await.status(), 429);
    let s = h.stats().await;
    let m = s.get(&sluice_sim::config::fingerprint("k"), "m").unwrap();
    assert_eq!((m.accepted, m.refused.burst), (6, 2));
    assert_eq!(m.limits[0].used, 6, "burst refusals leave no trace");
}

#[tokio::test]
async fn burst_in_openai_dialect_has_an_honest_retry_after() {
    let h = start(
        r#"
[[models]]
name = "m"
burst = { window = "10s", factor = 1.5, floor = 1 }
"#,
    )
    .await;
    assert_eq!(h.chat("k", chat_body("m", "x", 1)).await.status(), 200);
    h.advance_ms(2_500);
    let r = h.chat("k", chat_body("m", "x", 1)).await;
    assert_eq!(r.status(), 429);
    // Fits at 10 s, when the first request becomes "previous" (allowance max(1, 1.5)).
    assert_eq!(header(&r, "retry-after").as_deref(), Some("8"));
    let b = json(r).await;
    assert_eq!(b["error"]["code"], "rate_limit_exceeded");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("Please try again in 7.5s.")
    );
    h.advance_ms(7_500);
    assert_eq!(h.chat("k", chat_body("m", "x", 1)).await.status(), 200);
}

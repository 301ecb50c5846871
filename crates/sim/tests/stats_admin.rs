//! The referee's report, its reset, the admin endpoints and background consumers.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{chat_body, json, start};

const TEAM: &str = r#"
[[models]]
name = "m"
dialect = "openai"
limits = [{ requests = 5, per = "60s" }, { tokens = 10000, per = "60s" }]

[[accounts]]
name = "team-a"
key = "sk-team-a"
"#;

#[tokio::test]
async fn stats_schema_is_stable() {
    let h = start(TEAM).await;
    let raw: serde_json::Value = h
        .client
        .get(h.url("/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        raw,
        json!({
            "accounts": {"team-a": {"state": "active", "models": {"m": {
                "accepted": 0,
                "refused": {"requests": 0, "tokens": 0, "too_large": 0, "burst": 0, "billing": 0, "free_quota": 0, "fault": 0},
                "prompt_tokens": 0, "completion_tokens": 0,
                "faults": {"server_error": 0, "capacity": 0, "stream_cut": 0, "stream_error": 0, "missing_usage": 0, "slow": 0},
                "background_requests": 0, "background_refused": 0, "background_tokens": 0,
                "limits": [
                    {"unit": "requests", "limit": 5, "window_ms": 60000, "peak": 0, "used": 0},
                    {"unit": "tokens", "limit": 10000, "window_ms": 60000, "peak": 0, "used": 0}
                ]
            }}}},
            "rejected": {"bad_request": 0, "unauthorized": 0, "model_not_found": 0, "echoed": 0},
            "keyed_requests": 0,
            "outside_api": 0
        })
    );
}

#[tokio::test]
async fn reset_zeroes_counters_but_keeps_quotas() {
    let h = start(TEAM).await;
    for _ in 0..6 {
        h.chat("sk-team-a", chat_body("m", "x", 1)).await;
    }
    let s = h.stats().await;
    let m = s.get("team-a", "m").unwrap();
    assert_eq!(
        (m.accepted, m.refused.requests, m.limits[0].peak),
        (5, 1, 5)
    );

    let r = h.client.post(h.url("/stats/reset")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let s = h.stats().await;
    let m = s.get("team-a", "m").unwrap();
    assert_eq!(
        (
            m.accepted,
            m.refused_total(),
            m.prompt_tokens,
            m.limits[0].peak
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(m.limits[0].used, 5, "the log is kept");
    assert_eq!(
        h.chat("sk-team-a", chat_body("m", "x", 1)).await.status(),
        429
    );

    let r = h.client.post(h.url("/admin/reset")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        h.stats().await.get("team-a", "m").unwrap().limits[0].used,
        0
    );
    assert_eq!(
        h.chat("sk-team-a", chat_body("m", "x", 1)).await.status(),
        200
    );
}

#[tokio::test]
async fn admin_flips_billing_mid_run() {
    let h = start(TEAM).await;
    assert_eq!(
        h.chat("sk-team-a", chat_body("m", "x", 1)).await.status(),
        200
    );
    let r = h
        .post(
            "/admin/accounts/team-a",
            None,
            &json!({"state": "billing_exhausted"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        json(r).await,
        json!({"account": "team-a", "state": "billing_exhausted"})
    );
    let r = h.chat("sk-team-a", chat_body("m", "x", 1)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(json(r).await["error"]["code"], "insufficient_quota");
    // By key works too.
    let r = h
        .post(
            "/admin/accounts/sk-team-a",
            None,
            &json!({"state": "active"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        h.chat("sk-team-a", chat_body("m", "x", 1)).await.status(),
        200
    );
    let s = h.stats().await;
    let m = s.get("team-a", "m").unwrap();
    assert_eq!((m.accepted, m.refused.billing), (2, 1));
    assert_eq!(s.accounts["team-a"].state, sluice_sim::AccountState::Active);
}

#[tokio::test]
async fn admin_changes_limits_keeping_history() {
    let h = start(TEAM).await;
    for _ in 0..3 {
        assert_eq!(
            h.chat("sk-team-a", chat_body("m", "x", 1)).await.status(),
            200
        );
    }
    let r = h
        .post(
            "/admin/accounts/team-a",
            None,
            &json!({"limits": {"m": [{"requests": 4, "per": "60s"}]}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        h.chat("sk-team-a", chat_body("m", "x", 1)).await.status(),
        200
    );
    assert_eq!(
        h.chat("sk-team-a", chat_body("m", "x", 1)).await.status(),
        429
    );
    let s = h.stats().await;
    let m = s.get("team-a", "m").unwrap();
    assert_eq!(m.limits.len(), 1);
    assert_eq!((m.limits[0].limit, m.limits[0].used), (4, 4));

    let bad = [
        json!({"limits": {"nope": [{"requests": 1, "per": "1s"}]}}),
        json!({"limits": {"m": [{"requests": 1, "per": "soon"}]}}),
        json!({"limits": {"m": [{"requests": 0, "per": "1s"}]}}),
        json!({"state": "sleepy"}),
        json!({"colour": "red"}),
    ];
    for body in bad {
        let r = h.post("/admin/accounts/team-a", None, &body).await;
        assert_eq!(r.status(), 400, "{body}");
        assert!(json(r).await["error"]["message"].is_string());
    }
    let r = h
        .post("/admin/accounts/nobody", None, &json!({"state": "active"}))
        .await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn background_consumer_spends_the_quota() {
    let h = start(
        r#"
[[models]]
name = "m"
dialect = "dashscope"
limits = [{ requests = 5, per = "60s" }, { tokens = 100000, per = "60s" }]

[[accounts]]
name = "shared"
key = "sk-shared"
models = [{ model = "m", background = { rps = 500.0, tokens_per_request = 100 } }]
"#,
    )
    .await;
    // The manual clock is frozen: the background fills the 5 requests, then is refused.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = h.stats().await;
        let m = s.get("shared", "m").unwrap();
        if m.background_refused > 0 {
            assert_eq!((m.background_requests, m.background_tokens), (5, 500));
            assert_eq!(m.accepted, 0, "background is counted apart");
            assert_eq!(m.limits[0].used, 5);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "background consumer never filled the quota"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = h.chat("sk-shared", chat_body("m", "x", 1)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(json(r).await["error"]["code"], "limit_requests");
}

#[tokio::test]
async fn in_process_api_matches_http() {
    let h = start(TEAM).await;
    h.chat("sk-team-a", chat_body("m", "abcd", 2)).await;
    let via_http = h.stats().await;
    assert_eq!(via_http, h.handle.sim().stats());
    h.handle
        .sim()
        .set_account_state("team-a", sluice_sim::AccountState::FreeQuotaExhausted)
        .unwrap();
    assert_eq!(
        h.chat("sk-team-a", chat_body("m", "x", 1)).await.status(),
        429
    );
    assert_eq!(
        h.handle
            .sim()
            .set_account_state("nobody", sluice_sim::AccountState::Active),
        Err(sluice_sim::AdminError::UnknownAccount)
    );
}

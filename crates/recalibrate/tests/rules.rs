//! Each recalibration rule, on the in-process store and a manual clock.

use std::time::Duration;

use sluice_recalibrate::Change;

use crate::support::*;

fn cooldown_of(changes: &[Change]) -> Option<Duration> {
    changes.iter().find_map(|c| match c {
        Change::Cooldown(d) => Some(*d),
        _ => None,
    })
}

fn effective(changes: &[Change]) -> Vec<(String, Option<u64>, &'static str)> {
    changes
        .iter()
        .filter_map(|c| match c {
            Change::EffectiveLimit { limit, value, why } => Some((limit.to_string(), *value, *why)),
            _ => None,
        })
        .collect()
}

/// Headers, body, the cooldown expected.
type Case = (
    &'static [(&'static str, &'static str)],
    Option<&'static str>,
    Duration,
);

#[tokio::test]
async fn a_retry_after_in_any_form_sets_a_shared_cooldown() {
    let cases: [Case; 5] = [
        (&[("retry-after", "3")], None, Duration::from_secs(3)),
        (
            &[("retry-after", "3"), ("retry-after-ms", "1500")],
            None,
            Duration::from_millis(1500),
        ),
        (
            &[("x-ms-retry-after-ms", "700")],
            None,
            Duration::from_millis(700),
        ),
        (
            &[
                ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
                ("retry-after", "Wed, 21 Oct 2015 07:28:09 GMT"),
            ],
            None,
            Duration::from_secs(9),
        ),
        (&[], Some(OPENAI_TPM), Duration::from_millis(1146)),
    ];
    for (headers, body, want) in cases {
        let r = rig("openai");
        let changes = r.apply(&r.obs(0, 429, headers, body.or(Some("{}")))).await;
        assert_eq!(cooldown_of(&changes), Some(want), "{headers:?}");
        assert_eq!(r.status(0).await.cooldown, Some(want));
        assert_eq!(r.status(1).await.cooldown, None, "only that account");
    }
}

#[tokio::test]
async fn a_refusal_without_a_wait_gets_the_default_cooldown_and_a_shorter_one_is_not_rewritten() {
    let r = rig("dashscope");
    let changes = r.apply(&r.obs(0, 429, &[], Some(DASHSCOPE_RPM))).await;
    assert_eq!(cooldown_of(&changes), Some(Duration::from_secs(1)));
    let again = r
        .apply(&r.obs(0, 429, &[("retry-after", "0.5")], Some(DASHSCOPE_RPM)))
        .await;
    assert_eq!(
        cooldown_of(&again),
        None,
        "a longer cooldown is already in force"
    );
}

#[tokio::test]
async fn a_huge_retry_after_is_a_daily_quota_state_that_ends_when_the_wait_passes() {
    let r = rig("azure");
    let changes = r
        .apply(&r.obs(1, 429, &[("retry-after", "86400")], Some("{}")))
        .await;
    assert!(
        matches!(&changes[..], [Change::Disabled(reason)] if reason.contains("daily quota") && reason.contains("86400")),
        "{changes:?}"
    );
    assert!(r.status(1).await.disabled.unwrap().contains("daily quota"));
    assert!(r.recal.tick(&r.store).await.unwrap().is_empty());
    r.clock.advance(Duration::from_secs(86_400));
    let applied = r.recal.tick(&r.store).await.unwrap();
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].change, Change::Enabled);
    assert_eq!(r.status(1).await.disabled, None);
}

#[tokio::test]
async fn dead_accounts_leave_rotation_with_the_reason_until_a_success_or_an_operator() {
    for (dialect, body, reason) in [
        ("openai", OPENAI_BILLING, "billing_exhausted (HTTP 429)"),
        (
            "dashscope",
            DASHSCOPE_FREE,
            "free_quota_exhausted (HTTP 429)",
        ),
        (
            "openai",
            r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#,
            "invalid_key (HTTP 401)",
        ),
    ] {
        let r = rig(dialect);
        let status = if reason.contains("401") { 401 } else { 429 };
        let changes = r.apply(&r.obs(0, status, &[], Some(body))).await;
        assert_eq!(changes, [Change::Disabled(reason.to_owned())], "{dialect}");
        assert_eq!(r.status(0).await.disabled.as_deref(), Some(reason));
        // The same refusal again changes nothing.
        assert!(r.apply(&r.obs(0, status, &[], Some(body))).await.is_empty());
        // A success on it (a probe) puts it back.
        let changes = r.apply(&r.obs(0, 200, &[], None)).await;
        assert_eq!(changes, [Change::Enabled]);
        assert_eq!(r.status(0).await.disabled, None);
    }
    let r = rig("openai");
    r.apply(&r.obs(0, 429, &[], Some(OPENAI_BILLING))).await;
    assert_eq!(
        r.recal
            .enable(&r.store, "sim", "key-0", "operator")
            .await
            .unwrap(),
        1
    );
    assert_eq!(r.status(0).await.disabled, None);
    assert_eq!(
        r.recal
            .enable(&r.store, "sim", "key-9", "operator")
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn an_advertised_limit_below_the_configured_one_is_adopted_and_forgotten_when_it_rises() {
    let r = rig("openai");
    let h = [
        ("x-ratelimit-limit-requests", "50"),
        ("x-ratelimit-remaining-requests", "50"),
    ];
    let changes = r.apply(&r.obs(0, 200, &h, None)).await;
    assert_eq!(
        effective(&changes),
        [("r10105".to_owned(), Some(50), "headers")]
    );
    assert_eq!(r.status(0).await.limits[0].effective, 50);
    // Said again: nothing to write.
    assert!(r.apply(&r.obs(0, 200, &h, None)).await.is_empty());
    let up = [
        ("x-ratelimit-limit-requests", "150"),
        ("x-ratelimit-remaining-requests", "150"),
    ];
    let changes = r.apply(&r.obs(0, 200, &up, None)).await;
    assert_eq!(
        effective(&changes),
        [("r10105".to_owned(), None, "headers")]
    );
    assert_eq!(
        r.status(0).await.limits[0].effective,
        100,
        "never above the configured limit"
    );
    // Anthropic token budgets map to the tokens limit.
    let a = [
        ("anthropic-ratelimit-tokens-limit", "40000"),
        ("anthropic-ratelimit-tokens-remaining", "40000"),
    ];
    let changes = r.apply(&r.obs(0, 200, &a, None)).await;
    assert_eq!(
        effective(&changes),
        [("t10105".to_owned(), Some(40_000), "headers")]
    );
}

#[tokio::test]
async fn usage_we_did_not_see_is_added_beyond_a_tolerance() {
    let r = rig("openai");
    r.spend(0, 10, 100).await;
    r.clock.advance(Duration::from_secs(2)); // nothing booked ahead any more
    assert_eq!(r.status(0).await.limits[0].used, 10);
    // Provider: 100 - 60 = 40 used; we saw 10: 30 spent elsewhere.
    let h = [
        ("x-ratelimit-limit-requests", "100"),
        ("x-ratelimit-remaining-requests", "60"),
        ("x-ratelimit-limit-tokens", "100000"),
        ("x-ratelimit-remaining-tokens", "95000"),
    ];
    let changes = r.apply(&r.obs(0, 200, &h, None)).await;
    assert!(
        changes.iter().any(
            |c| matches!(c, Change::UnseenUsage { limit, amount: 30 } if limit.as_str() == "r10105")
        ),
        "{changes:?}"
    );
    assert!(changes.iter().any(|c| matches!(c, Change::UnseenUsage { limit, amount: 4000 } if limit.as_str() == "t10105")), "{changes:?}");
    let s = r.status(0).await;
    assert_eq!(s.limits[0].used, 40);
    assert_eq!(s.limits[1].used, 5000);
    // Applying the same observation again adds nothing: our window now agrees.
    assert!(r.apply(&r.obs(0, 200, &h, None)).await.is_empty());
    // Within the tolerance (2% of 100, at least 1): nothing.
    let near = [
        ("x-ratelimit-limit-requests", "100"),
        ("x-ratelimit-remaining-requests", "58"),
    ];
    assert!(r.apply(&r.obs(0, 200, &near, None)).await.is_empty());
    // Remaining only (Azure): measured against our effective limit.
    let azure = [("x-ratelimit-remaining-requests", "50")];
    let changes = r.apply(&r.obs(0, 200, &azure, None)).await;
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, Change::UnseenUsage { amount: 10, .. })),
        "{changes:?}"
    );
    // -1 is unknown, not exhausted.
    let unknown = [("x-ratelimit-remaining-requests", "-1")];
    assert!(r.apply(&r.obs(0, 200, &unknown, None)).await.is_empty());
}

#[tokio::test]
async fn stale_observations_do_not_count_as_unseen_usage() {
    let r = rig("openai");
    let o = r.obs(
        0,
        200,
        &[
            ("x-ratelimit-limit-requests", "100"),
            ("x-ratelimit-remaining-requests", "10"),
        ],
        None,
    );
    r.clock.advance(Duration::from_secs(3)); // more than a quarter of the 10.1 s window
    assert!(r.apply(&o).await.is_empty());
    assert_eq!(r.status(0).await.limits[0].used, 0);
}

#[tokio::test]
async fn unseen_usage_never_overfills_a_shorter_limit_of_the_same_unit() {
    let r = rig_with(
        "openai",
        "limits = [{ requests = 100, per = \"10s\" }, { requests = 5, per = \"1s\" }]",
    );
    let h = [
        ("x-ratelimit-limit-requests", "100"),
        ("x-ratelimit-remaining-requests", "50"),
    ];
    let changes = r.apply(&r.obs(0, 200, &h, None)).await;
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, Change::UnseenUsage { amount: 5, .. })),
        "{changes:?}"
    );
    assert_eq!(r.status(0).await.limits[1].used, 5);
}

#[tokio::test]
async fn a_refusal_without_headers_sets_the_limit_to_what_the_provider_had_accepted() {
    let r = rig("dashscope");
    // 70 accepted and the refused attempt (which counts one request in our window, as
    // the gateway records it), all in the past.
    r.spend(0, 71, 10).await;
    r.clock.advance(Duration::from_secs(7));
    let changes = r.apply(&r.obs(0, 429, &[], Some(DASHSCOPE_RPM))).await;
    assert_eq!(
        effective(&changes),
        [("r10105".to_owned(), Some(70), "learned_refusal")]
    );
    // Refused again (an attempt admitted before the change): 69 accepted of the 71
    // our window holds; at least 1 below the limit in force, confirmed.
    let changes = r.apply(&r.obs(0, 429, &[], Some(DASHSCOPE_RPM))).await;
    assert_eq!(
        effective(&changes),
        [("r10105".to_owned(), Some(69), "learned_refusal")]
    );
    // A TPM refusal (DashScope's insufficient_quota) learns the tokens limit, and one
    // refusal at most halves it (720 tokens held of 100000).
    let changes = r.apply(&r.obs(0, 429, &[], Some(DASHSCOPE_TPM))).await;
    assert_eq!(
        effective(&changes),
        [("t10105".to_owned(), Some(50_000), "learned_refusal")]
    );
    // A second bounded cut waits half a window.
    let changes = r.apply(&r.obs(0, 429, &[], Some(DASHSCOPE_TPM))).await;
    assert!(effective(&changes).is_empty(), "{changes:?}");
    r.clock.advance(Duration::from_secs(6));
    let changes = r.apply(&r.obs(0, 429, &[], Some(DASHSCOPE_TPM))).await;
    assert_eq!(
        effective(&changes),
        [("t10105".to_owned(), Some(25_000), "learned_refusal")]
    );
}

#[tokio::test]
async fn a_refusal_our_windows_explain_lowers_nothing() {
    let r = rig("dashscope");
    r.spend(0, 100, 10).await;
    r.clock.advance(Duration::from_millis(9500)); // every slot in the past
    // Reconciled costs above their estimates took our own window over the limit.
    let m = &r.catalog.models[0];
    sluice_limiter::Store::record_usage(
        &r.store,
        &r.key(0),
        &m.quota,
        sluice_limiter::Cost {
            requests: 5,
            ..sluice_limiter::Cost::ZERO
        },
    )
    .await
    .unwrap();
    let changes = r.apply(&r.obs(0, 429, &[], Some(DASHSCOPE_RPM))).await;
    assert!(effective(&changes).is_empty(), "{changes:?}");
    assert_eq!(r.status(0).await.limits[0].effective, 100);
}

/// The default rig without pacing: a spend is sent at once, nothing booked ahead (the
/// learner's probe counts from when the provider was sent the new level).
fn unpaced_rig() -> Rig {
    rig_with(
        "dashscope",
        "limits = [{ requests = 100, per = \"10s\" }, { tokens = 100000, per = \"10s\" }]\npacing = \"off\"",
    )
}

/// Spends what the effective request limit of key-0 allows now, then reports a success;
/// after a probe, fills the window to the new level too and reports again (the probe's
/// window starts when the provider was sent it).
async fn full_window_success(r: &Rig) -> Vec<Change> {
    let fill = || async {
        let st = r.status(0).await;
        let l = &st.limits[0];
        r.spend(0, l.effective.saturating_sub(l.used), 10).await;
        r.apply(&r.obs(0, 200, &[], None)).await
    };
    let mut changes = fill().await;
    if !effective(&changes).is_empty() {
        changes.extend(fill().await);
    }
    changes
}

#[tokio::test]
async fn successes_with_full_windows_probe_back_up_to_the_configured_limit() {
    let r = unpaced_rig();
    r.apply(&r.obs(0, 429, &[], Some(DASHSCOPE_RPM))).await; // empty window: halved to 50
    assert_eq!(r.status(0).await.limits[0].effective, 50);
    // A success with a window that is not full is no evidence.
    r.clock.advance(Duration::from_secs(25));
    assert!(effective(&r.apply(&r.obs(0, 200, &[], None)).await).is_empty());
    let mut seen = Vec::new();
    for _ in 0..8 {
        let changes = full_window_success(&r).await;
        assert!(
            effective(&changes)
                .iter()
                .all(|(_, _, why)| *why == "learned_probe"),
            "{changes:?}"
        );
        seen.push(r.status(0).await.limits[0].effective);
        r.clock.advance(Duration::from_millis(10_105));
    }
    // +1, then a step twice as large after each window the provider accepted, at most
    // 16 at once, up to the configured limit (forgotten there) and no further.
    assert_eq!(seen, [51, 53, 57, 65, 81, 97, 100, 100], "{seen:?}");
}

#[tokio::test]
async fn two_recalibrators_on_one_store_learn_one_value() {
    let r = rig("dashscope");
    let other = sluice_recalibrate::Recalibrator::with_clock(
        r.catalog.clone(),
        sluice_recalibrate::Tuning::default(),
        std::sync::Arc::new(r.clock.clone()),
    );
    r.spend(0, 71, 10).await;
    r.clock.advance(Duration::from_secs(7));
    r.apply(&r.obs(0, 429, &[], Some(DASHSCOPE_RPM))).await;
    assert_eq!(r.status(0).await.limits[0].effective, 70);
    // The next refusal of the same overload goes to the other sidecar: it sets the fill
    // it observes (70 of 71: it saw one refusal), never more than 1 below the limit in
    // force, not another relative decrease.
    other
        .apply(&r.store, &r.obs(0, 429, &[], Some(DASHSCOPE_RPM)))
        .await
        .unwrap();
    assert_eq!(r.status(0).await.limits[0].effective, 69);
}

#[tokio::test]
async fn burst_refusals_slow_pacing_and_successes_bring_it_back() {
    let r = rig("dashscope");
    let changes = r.apply(&r.obs(0, 429, &[], Some(DASHSCOPE_BURST))).await;
    assert!(changes.contains(&Change::Pacing(1500)), "{changes:?}");
    assert!(
        effective(&changes).is_empty(),
        "burst refusals leave the window limits alone"
    );
    assert!(
        !r.apply(&r.obs(0, 429, &[], Some(DASHSCOPE_BURST)))
            .await
            .iter()
            .any(|c| matches!(c, Change::Pacing(_))),
        "once per second"
    );
    r.clock.advance(Duration::from_millis(1000));
    r.apply(&r.obs(0, 429, &[], Some(DASHSCOPE_BURST))).await;
    assert_eq!(r.status(0).await.pacing_permille, 2250);
    for _ in 0..20 {
        r.clock.advance(Duration::from_millis(1000));
        r.apply(&r.obs(0, 200, &[], None)).await;
    }
    assert_eq!(r.status(0).await.pacing_permille, 1000);
}

#[tokio::test]
async fn an_error_inside_a_200_stream_counts_as_a_refusal() {
    let r = rig("dashscope");
    let changes = r.apply(&r.obs(0, 200, &[], Some(DASHSCOPE_RPM))).await;
    assert_eq!(cooldown_of(&changes), Some(Duration::from_secs(1)));
    assert_eq!(r.status(0).await.limits[0].effective, 50);
}

#[tokio::test]
async fn unknown_accounts_and_models_change_nothing() {
    let r = rig("openai");
    let mut o = r.obs(0, 429, &[("retry-after", "5")], Some(OPENAI_BILLING));
    o.account = "key-7".into();
    assert!(r.apply(&o).await.is_empty());
    o.account = "key-0".into();
    o.model = "other".into();
    assert!(r.apply(&o).await.is_empty());
    o.model = "m".into();
    o.upstream = "elsewhere".into();
    assert!(r.apply(&o).await.is_empty());
}

#[tokio::test]
async fn the_quotas_report_shows_limits_usage_cooldown_and_why_an_account_is_out() {
    let r = rig("openai");
    r.spend(1, 3, 10).await;
    r.apply(&r.obs(0, 429, &[], Some(OPENAI_BILLING))).await;
    r.apply(&r.obs(
        1,
        429,
        &[("retry-after", "4"), ("x-ratelimit-limit-requests", "80")],
        Some(OPENAI_TPM),
    ))
    .await;
    let report = sluice_recalibrate::report(&r.catalog, &r.store).await;
    let json = serde_json::to_value(&report).unwrap();
    let a = &json["models"][0]["accounts"];
    assert_eq!(json["models"][0]["model"], "m");
    assert_eq!(a[0]["state"], "disabled");
    assert_eq!(a[0]["disabled_reason"], "billing_exhausted (HTTP 429)");
    assert_eq!(a[1]["state"], "cooldown");
    assert_eq!(a[1]["cooldown_ms"], 4000);
    assert_eq!(a[1]["limits"][0]["configured"], 100);
    assert_eq!(a[1]["limits"][0]["effective"], 80);
    assert_eq!(a[1]["limits"][0]["used"], 3);
    assert_eq!(a[1]["limits"][0]["window_ms"], 10_105);
}

#[tokio::test]
async fn slots_booked_ahead_are_not_mistaken_for_usage_the_provider_saw() {
    let r = rig("openai");
    // 30 requests at once: auto pacing (100 per 10.1 s: one per 101 ms, a 1 s burst)
    // books about 20 of them ahead of now.
    r.spend(0, 30, 10).await;
    let s = r.status(0).await;
    assert_eq!(s.limits[0].used, 30);
    assert!(s.booked_ahead > Duration::from_secs(1), "{s:?}");
    // The provider has seen the ~10 sent so far, plus 20 spent elsewhere.
    let h = [
        ("x-ratelimit-limit-requests", "100"),
        ("x-ratelimit-remaining-requests", "70"),
    ];
    let changes = r.apply(&r.obs(0, 200, &h, None)).await;
    let amount = changes.iter().find_map(|c| match c {
        Change::UnseenUsage { amount, .. } => Some(*amount),
        _ => None,
    });
    assert!(
        amount.is_some_and(|a| (18..=22).contains(&a)),
        "{changes:?}"
    );
}

#[tokio::test]
async fn a_refused_probe_sets_the_fill_observed_and_the_next_waits_longer() {
    let r = unpaced_rig();
    r.spend(0, 61, 10).await;
    r.clock.advance(Duration::from_secs(7));
    r.apply(&r.obs(0, 429, &[], Some(DASHSCOPE_RPM))).await; // 100 -> 60 (what we held)
    assert_eq!(r.status(0).await.limits[0].effective, 60);
    // Two quiet windows, then a probe to 61.
    r.clock.advance(Duration::from_millis(2 * 10_105));
    full_window_success(&r).await;
    assert_eq!(r.status(0).await.limits[0].effective, 61);
    // Refused at the probe, at a fill of 59 (60 held, one of them refused): 59.
    r.clock.advance(Duration::from_secs(11));
    r.spend(0, 60, 10).await;
    r.clock.advance(Duration::from_secs(9));
    r.apply(&r.obs(0, 429, &[], Some(DASHSCOPE_RPM))).await;
    assert_eq!(r.status(0).await.limits[0].effective, 59);
    // Confirmed (the second refusal at about 60): three quiet windows before the next
    // probe, not two.
    let mut seen = Vec::new();
    for _ in 0..4 {
        r.clock.advance(Duration::from_millis(10_105));
        full_window_success(&r).await;
        seen.push(r.status(0).await.limits[0].effective);
    }
    assert_eq!(seen, [59, 59, 60, 62], "{seen:?}");
}

/// Reports "limit 100, `remaining`" on key-0 every 500 ms for `steps` steps; returns the
/// effective request limit after each and whether any change was an outside-rate one.
async fn report_every_half_second(r: &Rig, remaining: u64, steps: usize) -> (Vec<u64>, bool) {
    let remaining = remaining.to_string();
    let h = [
        ("x-ratelimit-limit-requests", "100"),
        ("x-ratelimit-remaining-requests", remaining.as_str()),
    ];
    let mut seen = Vec::new();
    let mut outside = false;
    for _ in 0..steps {
        r.clock.advance(Duration::from_millis(500));
        let changes = r.apply(&r.obs(0, 200, &h, None)).await;
        outside |= effective(&changes)
            .iter()
            .any(|(l, _, why)| l == "r10105" && *why == "outside_rate");
        seen.push(r.status(0).await.limits[0].effective);
    }
    (seen, outside)
}

#[tokio::test]
async fn a_persistent_outside_consumer_lowers_the_effective_limit_until_it_leaves() {
    let r = rig("openai");
    // Someone else spends 30 of every window of 100; Sluice sends nothing.
    let (seen, outside) = report_every_half_second(&r, 70, 60).await;
    assert!(outside, "{seen:?}");
    // Learned within a window, a step at a time (the first answer alone changes
    // nothing); while the estimate climbs, the samples lie above it and the margin for
    // their spread overshoots (at most 50 kept free here), then it settles towards what
    // the consumer spends.
    assert_eq!(seen[0], 100, "{seen:?}");
    assert!(
        seen.windows(2).all(|p| p[0].abs_diff(p[1]) <= 5),
        "{seen:?}"
    );
    assert!(seen[20] <= 70, "{seen:?}");
    assert!(seen.iter().all(|&e| e >= 50), "{seen:?}");
    let learned = *seen.last().unwrap();
    assert!((62..=70).contains(&learned), "{seen:?}");
    // Persistent: no answers for two windows (a cooldown, an idle fleet) and it stays,
    // while usage recorded with `record_usage` has aged out of the window.
    r.clock.advance(Duration::from_secs(20));
    let s = r.status(0).await;
    assert_eq!(s.limits[0].effective, learned);
    assert_eq!(s.limits[0].used, 0);
    // A burst of answers at one instant, however bad, counts (about) once: the effective
    // limit does not compound (the excess is charged to the window instead).
    let full = [
        ("x-ratelimit-limit-requests", "100"),
        ("x-ratelimit-remaining-requests", "0"),
    ];
    for _ in 0..20 {
        r.apply(&r.obs(0, 200, &full, None)).await;
    }
    let s = r.status(0).await;
    let after_burst = s.limits[0].effective;
    assert!(
        (learned - 5..=learned).contains(&after_burst),
        "{learned} -> {s:?}"
    );
    assert!(s.limits[0].used >= 100 - learned, "{s:?}");
    // The outside consumer leaves (the provider's remaining is what our window implies):
    // the limit comes back gradually (the burst's one sample still weighs a step or two
    // at first), and at the configured limit it is forgotten.
    r.clock.advance(Duration::from_secs(20));
    let (back, _) = report_every_half_second(&r, 100, 80).await;
    assert!(back.iter().all(|&e| e + 10 >= after_burst), "{back:?}");
    assert!(back[4..].windows(2).all(|p| p[1] >= p[0]), "{back:?}");
    assert!(back[10] < 100, "{back:?}");
    assert_eq!(*back.last().unwrap(), 100, "{back:?}");
}

#[tokio::test]
async fn the_outside_rate_never_lowers_a_limit_below_the_floor() {
    let r = rig("openai");
    // 95 of 100 spent elsewhere: the effective limit stops at 10% of the configured one.
    let (seen, _) = report_every_half_second(&r, 5, 60).await;
    assert!(seen.iter().all(|&e| e >= 10), "{seen:?}");
    assert_eq!(*seen.last().unwrap(), 10, "{seen:?}");
}

#[tokio::test]
async fn the_outside_rate_follows_an_advertised_limit_below_the_configured_one() {
    let r = rig("openai");
    // The provider's limit is 80 and someone else spends 20 of it: 60 are ours.
    let h = [
        ("x-ratelimit-limit-requests", "80"),
        ("x-ratelimit-remaining-requests", "60"),
    ];
    let changes = r.apply(&r.obs(0, 200, &h, None)).await;
    assert_eq!(
        effective(&changes),
        [("r10105".to_owned(), Some(80), "headers")]
    );
    for _ in 0..60 {
        r.clock.advance(Duration::from_millis(500));
        r.apply(&r.obs(0, 200, &h, None)).await;
    }
    let e = r.status(0).await.limits[0].effective;
    assert!((56..=62).contains(&e), "{e}");
}

/// Issue #12: one answer never takes the last live account of a model out of rotation.
/// The first account goes at once (the other still serves); the last is only suspected
/// (a short cooldown) until a refusal from another answer corroborates it within
/// `CORROBORATION_SPAN`; the same answer applied twice (a re-delivered observation)
/// does not corroborate itself, and a success in between voids the suspicion.
#[tokio::test]
async fn the_last_live_account_goes_out_only_on_a_corroborated_refusal() {
    let r = rig("openai");
    let changes = r.apply(&r.obs(0, 429, &[], Some(OPENAI_BILLING))).await;
    assert_eq!(
        changes,
        [Change::Disabled("billing_exhausted (HTTP 429)".into())]
    );
    let first = r.obs(1, 429, &[], Some(OPENAI_BILLING));
    let changes = r.apply(&first).await;
    assert!(
        matches!(&changes[..], [Change::Cooldown(_)]),
        "suspected, not disabled: {changes:?}"
    );
    assert_eq!(r.status(1).await.disabled, None);
    // The same observation again (re-delivered): still only suspected.
    let again = r.apply(&first).await;
    assert!(
        !again.iter().any(|c| matches!(c, Change::Disabled(_))),
        "{again:?}"
    );
    assert_eq!(r.status(1).await.disabled, None);
    // A success voids the suspicion: the next refusal starts a new one.
    r.clock.advance(Duration::from_millis(5));
    r.apply(&r.obs(1, 200, &[], None)).await;
    r.clock.advance(Duration::from_millis(5));
    let changes = r.apply(&r.obs(1, 429, &[], Some(OPENAI_BILLING))).await;
    assert!(
        !changes.iter().any(|c| matches!(c, Change::Disabled(_))),
        "{changes:?}"
    );
    // Another answer within the span corroborates it.
    r.clock.advance(Duration::from_secs(2));
    let changes = r.apply(&r.obs(1, 429, &[], Some(OPENAI_BILLING))).await;
    assert_eq!(
        changes,
        [Change::Disabled("billing_exhausted (HTTP 429)".into())]
    );
    assert!(r.status(1).await.disabled.is_some());
}

/// Issue #12: an echoed 400 ("Unrecognized request argument supplied: …") whatever its
/// text changes nothing.
#[tokio::test]
async fn an_echoed_400_changes_nothing() {
    let r = rig("dashscope");
    let body = r#"{"error":{"message":"Unrecognized request argument supplied: Free allocated quota exceeded. Arrearage","type":"invalid_request_error","param":null,"code":null}}"#;
    for i in 0..2 {
        assert!(r.apply(&r.obs(i, 400, &[], Some(body))).await.is_empty());
        assert_eq!(r.status(i).await.disabled, None);
    }
}

#[tokio::test]
async fn the_quotas_view_shows_the_learners_evidence_and_its_age() {
    let r = rig("dashscope");
    r.spend(0, 71, 10).await;
    r.clock.advance(Duration::from_secs(7));
    r.apply(&r.obs(0, 429, &[], Some(DASHSCOPE_RPM))).await;
    r.clock.advance(Duration::from_secs(2));
    let mut view = sluice_recalibrate::report(&r.catalog, &r.store).await;
    assert_eq!(view.models[0].accounts[0].limits[0].learned, None);
    r.recal.annotate(&mut view);
    assert_eq!(
        view.models[0].accounts[0].limits[0].learned,
        Some(sluice_recalibrate::LearnedReport {
            estimate: Some(70),
            confirmations: 1,
            evidence_age_ms: 2000,
        })
    );
    // Nothing learned of the tokens limit, nor of the other account.
    assert_eq!(view.models[0].accounts[0].limits[1].learned, None);
    assert_eq!(view.models[0].accounts[1].limits[0].learned, None);
}

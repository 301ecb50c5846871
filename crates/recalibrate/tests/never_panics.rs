//! Property test: any status, headers and body — valid or not — recalibrate without a
//! panic, and the learned state stays within its bounds.

use proptest::prelude::*;
use sluice_observe::Observation;

use crate::support::*;

const NAMES: &[&str] = &[
    "retry-after",
    "retry-after-ms",
    "x-ms-retry-after-ms",
    "date",
    "x-should-retry",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-input-tokens-limit",
    "Bad Name\n",
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,30}",
        "-?[0-9]{1,22}(\\.[0-9]{0,6})?",
        "[0-9]{1,4}(h|m|s|ms){1,3}",
        "\\PC{0,12}",
        Just("\u{0}\r\n".to_owned()),
    ]
}

fn body() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        "\\PC{0,60}".prop_map(Some),
        (
            prop::sample::select(vec![
                "rate_limit_exceeded",
                "limit_requests",
                "limit_burst_rate",
                "insufficient_quota",
                "Throttling.AllocationQuota",
                "invalid_api_key",
                "429",
                ""
            ]),
            "[ -~]{0,60}",
        )
            .prop_map(|(code, msg)| Some(format!(
                r#"{{"error":{{"message":"{}","type":"{code}","code":"{code}"}}}}"#,
                msg.replace(['"', '\\'], "")
            ))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn any_observation_recalibrates_without_panicking(
        dialect in prop::sample::select(vec!["openai", "dashscope", "azure", "anthropic"]),
        status in prop_oneof![Just(200u16), Just(429u16), Just(401u16), Just(503u16), 0u16..1000],
        headers in prop::collection::vec((0..NAMES.len(), value()), 0..8),
        body in body(),
        age_ms in 0u64..100_000,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let r = rig(dialect);
            r.spend(0, 5, 10).await;
            let o = Observation {
                at_ms: r.now_ms().saturating_sub(age_ms),
                upstream: "sim".into(),
                model: "m".into(),
                account: "key-0".into(),
                status,
                headers: headers.iter().map(|(i, v)| (NAMES[*i].to_owned(), v.clone())).collect(),
                body,
            };
            r.recal.apply(&r.store, &o).await.unwrap();
            r.recal.apply(&r.store, &o).await.unwrap();
            let s = r.status(0).await;
            for l in &s.limits {
                prop_assert!(l.effective >= 1 && l.effective <= l.configured);
            }
            prop_assert!((1000..=64_000).contains(&s.pacing_permille));
            Ok(())
        })?;
    }
}

//! Property tests: the parsers accept any bytes without panicking, and what they return is sane.
//! `SLUICE_FUZZ_CASES` sets the case count (default 2,000).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use sluice_provider::*;

const NAMES: &[&str] = &[
    "retry-after",
    "retry-after-ms",
    "x-ms-retry-after-ms",
    "date",
    "x-should-retry",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-limit",
];

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,40}",
        "-?[0-9]{1,25}(\\.[0-9]{0,12})?",
        "[0-9]{1,4}(h|m|s|ms|us|ns){1,3}",
        "20[0-9]{2}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?Z",
        "(Mon|Tue|Wed), [0-3][0-9] (Jan|Oct) (1970|2015|2099) [0-2][0-9]:[0-5][0-9]:[0-5][0-9] GMT",
    ]
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    proptest::collection::vec((0..NAMES.len(), header_value()), 0..8).prop_map(|pairs| {
        let mut h = HeaderMap::new();
        for (i, v) in pairs {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(HeaderName::from_static(NAMES[i]), v);
            }
        }
        h
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        "[ -~]{0,120}".prop_map(String::into_bytes),
        ("[a-zA-Z_.]{0,30}", "[a-zA-Z_]{0,20}", "[ -~&&[^\"\\\\]]{0,80}", any::<bool>()).prop_map(|(code, ty, msg, rid)| {
            let rid = if rid { r#","request_id":"r""# } else { "" };
            format!(r#"{{"error":{{"code":"{code}","type":"{ty}","message":"{msg}","details":[{{"retryDelay":"{msg}"}}]}}{rid}}}"#).into_bytes()
        }),
        "[ -~&&[^\"\\\\]]{0,60}".prop_map(|m| format!(r#"{{"error":{{"code":429,"message":"Please try again in {m}"}}}}"#).into_bytes()),
    ]
}

fn provider() -> impl Strategy<Value = Provider> {
    prop_oneof![
        Just(Provider::Unknown),
        Just(Provider::OpenAi),
        Just(Provider::DashScope),
        Just(Provider::Azure),
        Just(Provider::Anthropic)
    ]
}

fn cases() -> u32 {
    std::env::var("SLUICE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn classify_never_panics_and_waits_are_bounded(status in 100u16..600, h in headers(), b in body(), p in provider(), secs in 0u64..4_000_000_000) {
        let now = UNIX_EPOCH + Duration::from_secs(secs);
        let c = classify(status, &h, &b, p, now);
        if let Some(w) = c.retry_after {
            prop_assert!(w <= MAX_DURATION);
        }
        if status == 429 {
            prop_assert!(c.class != ErrorClass::ServerError && c.class != ErrorClass::Other);
        }
        let _ = classify_stream_error(&b, p);
    }

    #[test]
    fn header_parsers_never_panic(h in headers()) {
        let now = SystemTime::now();
        if let Some(w) = retry_after(&h, now) {
            prop_assert!(w <= MAX_DURATION);
        }
        let r = RateLimitHeaders::parse(&h, now);
        for b in [r.requests, r.tokens, r.input_tokens, r.output_tokens] {
            if let Some(reset) = b.reset {
                prop_assert!(reset <= MAX_DURATION);
            }
        }
    }

    #[test]
    fn text_parsers_never_panic(s in "\\PC{0,60}") {
        let _ = parse_go_duration(&s);
        let _ = parse_seconds(&s);
        let _ = parse_millis(&s);
        let _ = parse_reset(&s, SystemTime::now());
        let _ = retry_after_in_text(&s);
    }

    #[test]
    fn go_durations_round_trip(h in 0u64..100, m in 0u64..60, ms in 0u64..60_000) {
        let text = format!("{h}h{m}m{}.{:03}s", ms / 1000, ms % 1000);
        let want = Duration::from_millis(((h * 60 + m) * 60) * 1000 + ms);
        let got = parse_go_duration(&text).unwrap();
        let diff = got.abs_diff(want);
        prop_assert!(diff < Duration::from_micros(10), "{text}: {got:?} vs {want:?}");
    }
}

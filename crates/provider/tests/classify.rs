//! Every error body of `shared/reference/providers.md`, classified (sections 1–5 and the
//! edge cases of section 8).

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use sluice_provider::{ErrorClass, Provider, ThrottleKind, classify, classify_stream_error};

fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.insert(*k, v.parse().unwrap());
    }
    m
}

fn class(status: u16, body: &str, provider: Provider) -> ErrorClass {
    classify(
        status,
        &HeaderMap::new(),
        body.as_bytes(),
        provider,
        SystemTime::now(),
    )
    .class
}

const T: fn(ThrottleKind) -> ErrorClass = ErrorClass::Throttled;

#[test]
fn openai_rate_limits_billing_and_too_large() {
    let tpm = r#"{"error":{"message":"Rate limit reached for gpt-4o-mini in project proj_x organization org-x on tokens per min (TPM): Limit 50000, Used 47949, Requested 3006. Please try again in 1.146s. Visit https://platform.openai.com/account/rate-limits to learn more.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
    let c = classify(
        429,
        &HeaderMap::new(),
        tpm.as_bytes(),
        Provider::OpenAi,
        SystemTime::now(),
    );
    assert_eq!(c.class, T(ThrottleKind::Tokens));
    assert_eq!(
        c.retry_after,
        Some(Duration::from_millis(1146)),
        "wait from the message text"
    );
    let rpm = r#"{"error":{"message":"Rate limit reached on requests per min (RPM): Limit 3. Please try again in 84ms.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
    assert_eq!(class(429, rpm, Provider::OpenAi), T(ThrottleKind::Requests));
    let large = r#"{"error":{"message":"Request too large for gpt-4o in organization org-xxx on tokens per min (TPM): Limit 30000, Requested 34307.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
    assert_eq!(
        class(429, large, Provider::OpenAi),
        ErrorClass::RequestTooLarge
    );
    let billing = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    assert_eq!(
        class(429, billing, Provider::OpenAi),
        ErrorClass::BillingExhausted
    );
    assert_eq!(
        class(429, billing, Provider::Unknown),
        ErrorClass::BillingExhausted
    );
    // Older responses: code null, match on type.
    let old = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":null}}"#;
    assert_eq!(
        class(429, old, Provider::OpenAi),
        ErrorClass::BillingExhausted
    );
    assert!(ErrorClass::BillingExhausted.disables_account());
}

#[test]
fn headers_win_over_message_text() {
    let body = r#"{"error":{"message":"Please try again in 20s.","type":"requests","code":"rate_limit_exceeded"}}"#;
    let c = classify(
        429,
        &h(&[("retry-after-ms", "300")]),
        body.as_bytes(),
        Provider::OpenAi,
        SystemTime::now(),
    );
    assert_eq!(c.retry_after, Some(Duration::from_millis(300)));
    let c = classify(
        429,
        &h(&[("x-should-retry", "false")]),
        body.as_bytes(),
        Provider::OpenAi,
        SystemTime::now(),
    );
    assert_eq!(c.should_retry, Some(false));
}

#[test]
fn dashscope_same_code_different_meaning() {
    let tpm = r#"{"error":{"message":"You exceeded your current quota, check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"},"request_id":"8605e472-1"}"#;
    assert_eq!(
        class(429, tpm, Provider::DashScope),
        T(ThrottleKind::Tokens)
    );
    assert_eq!(
        class(429, tpm, Provider::Unknown),
        T(ThrottleKind::Tokens),
        "request_id gives DashScope away"
    );
    let free = r#"{"error":{"message":"Free allocated quota exceeded.","type":"insufficient_quota","param":null,"code":"insufficient_quota"},"request_id":"x"}"#;
    assert_eq!(
        class(429, free, Provider::DashScope),
        ErrorClass::FreeQuotaExhausted
    );
    let rpm = r#"{"error":{"message":"You have exceeded your request limit.","type":"limit_requests","param":null,"code":"limit_requests"},"request_id":"x"}"#;
    assert_eq!(
        class(429, rpm, Provider::DashScope),
        T(ThrottleKind::Requests)
    );
    let burst = r#"{"error":{"message":"Request rate increased too quickly. To ensure system stability, please adjust your client logic to scale requests more smoothly over time.","type":"limit_burst_rate","code":"limit_burst_rate"},"request_id":"x"}"#;
    assert_eq!(
        class(429, burst, Provider::DashScope),
        T(ThrottleKind::Burst)
    );
    // Native mode.
    let native = |code: &str, msg: &str| {
        format!(r#"{{"code":"{code}","message":"{msg}","request_id":"r"}}"#)
    };
    assert_eq!(
        class(
            429,
            &native(
                "Throttling.RateQuota",
                "Requests rate limit exceeded, please try again later."
            ),
            Provider::DashScope
        ),
        T(ThrottleKind::Requests)
    );
    assert_eq!(
        class(
            429,
            &native(
                "Throttling.BurstRate",
                "Request rate increased too quickly."
            ),
            Provider::DashScope
        ),
        T(ThrottleKind::Burst)
    );
    assert_eq!(
        class(
            429,
            &native(
                "Throttling.AllocationQuota",
                "Allocated quota exceeded, please increase your quota limit."
            ),
            Provider::DashScope
        ),
        T(ThrottleKind::Tokens)
    );
    assert_eq!(
        class(
            429,
            &native(
                "Throttling.AllocationQuota",
                "Free allocated quota exceeded."
            ),
            Provider::DashScope
        ),
        ErrorClass::FreeQuotaExhausted
    );
    assert_eq!(
        class(
            429,
            &native("Throttling", "Requests throttling triggered."),
            Provider::DashScope
        ),
        T(ThrottleKind::Unknown)
    );
    for billing in [
        "CommodityNotPurchased",
        "PrepaidBillOverdue",
        "PostpaidBillOverdue",
    ] {
        assert_eq!(
            class(429, &native(billing, "x"), Provider::DashScope),
            ErrorClass::BillingExhausted,
            "{billing}"
        );
    }
    let capacity = native(
        "ModelServingError",
        "Too many requests. Your requests are being throttled due to system capacity limits.",
    );
    assert_eq!(
        class(503, &capacity, Provider::DashScope),
        ErrorClass::ProviderOverloaded
    );
    assert_eq!(
        class(500, &capacity, Provider::DashScope),
        ErrorClass::ProviderOverloaded
    );
}

#[test]
fn azure_string_code_and_message_waits() {
    let tpm = r#"{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 6 seconds."}}"#;
    let c = classify(
        429,
        &HeaderMap::new(),
        tpm.as_bytes(),
        Provider::Azure,
        SystemTime::now(),
    );
    assert_eq!(c.class, T(ThrottleKind::Tokens));
    assert_eq!(c.retry_after, Some(Duration::from_secs(6)));
    let rpm = tpm.replace("token rate limit", "call rate limit");
    assert_eq!(class(429, &rpm, Provider::Azure), T(ThrottleKind::Requests));
    // Numeric code 429 instead of "429".
    let numeric = r#"{"error":{"code":429,"message":"exceeded call rate limit"}}"#;
    assert_eq!(
        class(429, numeric, Provider::Azure),
        T(ThrottleKind::Requests)
    );
    // 86400 is reported as is: the caller treats it as a quota state, not a sleep.
    let c = classify(
        429,
        &h(&[("retry-after", "86400")]),
        tpm.as_bytes(),
        Provider::Azure,
        SystemTime::now(),
    );
    assert_eq!(c.retry_after, Some(Duration::from_secs(86400)));
    let billing = r#"{"error":{"code":"insufficient_quota","message":"You exceeded your current quota, please check your plan and billing details."}}"#;
    assert_eq!(
        class(429, billing, Provider::Azure),
        ErrorClass::BillingExhausted
    );
}

#[test]
fn anthropic_rate_overload_and_spend_limits() {
    let rate = r#"{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed your organization's rate limit."},"request_id":"req_1"}"#;
    assert_eq!(
        class(429, rate, Provider::Anthropic),
        T(ThrottleKind::Unknown)
    );
    let over = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    assert_eq!(
        class(529, over, Provider::Anthropic),
        ErrorClass::ProviderOverloaded
    );
    let spend = r#"{"type":"error","error":{"type":"rate_limit_error","message":"spend","details":{"error_code":"enforced_spend_limit_reached"}}}"#;
    assert_eq!(
        class(429, spend, Provider::Anthropic),
        ErrorClass::BillingExhausted
    );
    // Changed with issue #12: this used to be `BillingExhausted` from the message
    // alone. A 400 is where providers echo the client's text, so its message cannot
    // take an account out of rotation; the request fails and is passed on.
    let credit = r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API."}}"#;
    assert_eq!(class(400, credit, Provider::Anthropic), ErrorClass::Other);
    let auth =
        r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
    assert_eq!(
        class(401, auth, Provider::Anthropic),
        ErrorClass::InvalidKey
    );
}

#[test]
fn gemini_retry_delay_and_daily_quota() {
    let body = r#"{"error":{"code":429,"message":"You exceeded your current quota. Please retry in 47.470718756s.","status":"RESOURCE_EXHAUSTED","details":[
 {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
 {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"47s"}]}}"#;
    let c = classify(
        429,
        &HeaderMap::new(),
        body.as_bytes(),
        Provider::Unknown,
        SystemTime::now(),
    );
    assert_eq!(c.class, T(ThrottleKind::Daily));
    assert_eq!(c.retry_after, Some(Duration::from_nanos(47_470_718_756)));
    let minute = body
        .replace("PerDay", "PerMinute")
        .replace(" Please retry in 47.470718756s.", "");
    let c = classify(
        429,
        &HeaderMap::new(),
        minute.as_bytes(),
        Provider::Unknown,
        SystemTime::now(),
    );
    assert_eq!(c.class, T(ThrottleKind::Requests));
    assert_eq!(
        c.retry_after,
        Some(Duration::from_secs(47)),
        "retryDelay when the message has none"
    );
}

#[test]
fn bodies_that_say_nothing_fall_back_on_the_status() {
    assert_eq!(class(429, "", Provider::Unknown), T(ThrottleKind::Unknown));
    assert_eq!(
        class(429, "<html>Too Many Requests</html>", Provider::Unknown),
        T(ThrottleKind::Unknown)
    );
    assert_eq!(
        class(500, "oops", Provider::Unknown),
        ErrorClass::ServerError
    );
    assert_eq!(class(502, "", Provider::Unknown), ErrorClass::ServerError);
    assert_eq!(
        class(503, "", Provider::Unknown),
        ErrorClass::ProviderOverloaded
    );
    assert_eq!(
        class(413, "", Provider::Unknown),
        ErrorClass::RequestTooLarge
    );
    assert_eq!(class(401, "", Provider::Unknown), ErrorClass::InvalidKey);
    assert_eq!(
        class(
            400,
            r#"{"error":{"message":"bad param","type":"invalid_request_error"}}"#,
            Provider::OpenAi
        ),
        ErrorClass::Other
    );
    assert_eq!(
        class(
            400,
            r#"{"error":{"message":"This model's maximum context length is 8192 tokens","code":"context_length_exceeded"}}"#,
            Provider::OpenAi
        ),
        ErrorClass::RequestTooLarge
    );
}

#[test]
fn errors_inside_a_200_stream() {
    let data = br#"{"error":{"message":"Too many requests. Your requests are being throttled due to system capacity limits.","type":"ModelServingError","code":"ModelServingError"}}"#;
    let c = classify_stream_error(data, Provider::DashScope).unwrap();
    assert_eq!(c.class, ErrorClass::ProviderOverloaded);
    let rate =
        br#"{"error":{"message":"Requests rate limit exceeded","code":"Throttling.RateQuota"}}"#;
    assert_eq!(
        classify_stream_error(rate, Provider::DashScope)
            .unwrap()
            .class,
        T(ThrottleKind::Requests)
    );
    assert!(classify_stream_error(br#"{"choices":[]}"#, Provider::OpenAi).is_none());
    assert!(classify_stream_error(b"[DONE]", Provider::OpenAi).is_none());
}

/// Issue #12: upstream text is evidence, not command. A provider that echoes the
/// request in a 400 ("Unrecognized request argument supplied: …", OpenAI and vLLM)
/// hands the client's words back; no status but the documented ones may disable.
#[test]
fn echoed_text_never_disables_an_account() {
    let phrases = [
        "Free allocated quota exceeded.",
        "free tier of the model has been exhausted",
        "Your credit balance is too low to access the Anthropic API.",
        "Your bill is overdue",
        "You exceeded your current quota, please check your plan and billing details.",
        "invalid_api_key InvalidApiKey authentication_error",
        "system capacity limits, currently overloaded",
    ];
    for phrase in phrases {
        let echoed = format!(
            r#"{{"error":{{"message":"Unrecognized request argument supplied: {phrase}","type":"invalid_request_error","param":null,"code":null}}}}"#
        );
        for status in [400, 403, 404, 409, 422] {
            for provider in [
                Provider::Unknown,
                Provider::OpenAi,
                Provider::DashScope,
                Provider::Azure,
                Provider::Anthropic,
            ] {
                let c = class(status, &echoed, provider);
                assert!(
                    !c.disables_account() && !c.is_retryable(),
                    "{status} {provider:?} {phrase:?} -> {c:?}"
                );
            }
        }
    }
    // A documented code on a status that does not qualify does not disable either.
    let coded_400 = r#"{"error":{"message":"Free allocated quota exceeded.","type":"insufficient_quota","code":"insufficient_quota"}}"#;
    assert!(!class(400, coded_400, Provider::DashScope).disables_account());
    let key_400 =
        r#"{"error":{"message":"bad","type":"invalid_request_error","code":"invalid_api_key"}}"#;
    assert!(!class(400, key_400, Provider::OpenAi).disables_account());
}

/// Message text refines a qualifying 429 but cannot create an account-level class: a
/// plain rate limit whose message mentions the free tier stays a rate limit.
#[test]
fn text_refines_a_qualifying_code_but_never_creates_one() {
    let throttled = r#"{"error":{"message":"Rate limit reached: Free allocated quota exceeded.","type":"requests","code":"rate_limit_exceeded"}}"#;
    assert!(matches!(
        class(429, throttled, Provider::OpenAi),
        ErrorClass::Throttled(_)
    ));
    let allocation = r#"{"code":"Throttling.AllocationQuota","message":"Free allocated quota exceeded.","request_id":"r"}"#;
    assert_eq!(
        class(429, allocation, Provider::DashScope),
        ErrorClass::FreeQuotaExhausted
    );
    assert_eq!(
        class(400, allocation, Provider::DashScope),
        T(ThrottleKind::Tokens),
        "the code alone says throttling; the status does not qualify the text"
    );
}

/// Errors inside a 200 stream never disable an account, whatever they say.
#[test]
fn stream_errors_never_disable() {
    for data in [
        br#"{"error":{"message":"Free allocated quota exceeded.","code":"Throttling.AllocationQuota"}}"#.as_slice(),
        br#"{"error":{"message":"bad key","code":401}}"#.as_slice(),
        br#"{"error":{"message":"x","code":"PrepaidBillOverdue"}}"#.as_slice(),
    ] {
        let c = classify_stream_error(data, Provider::DashScope).unwrap();
        assert!(!c.class.disables_account(), "{c:?}");
    }
}

//! [`classify`]: what an upstream error means for the gateway — throttling to retry,
//! billing to stop using an account, a request that can never fit, or an overloaded provider.

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use serde_json::Value;

use crate::retry::{retry_after, retry_after_in_text, retry_delay_in_details, should_retry};

/// Which provider answered, when known: the same code means different things at
/// different providers (DashScope's `insufficient_quota` is a TPM limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Provider {
    /// Unknown: guess from the body's shape.
    #[default]
    Unknown,
    /// OpenAI.
    OpenAi,
    /// Alibaba Cloud Model Studio (DashScope), native or compatible mode.
    DashScope,
    /// Azure OpenAI.
    Azure,
    /// Anthropic.
    Anthropic,
}

/// Which budget a throttling 429 is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ThrottleKind {
    /// Requests per window (RPM, RPS).
    Requests,
    /// Tokens per window (TPM, TPS).
    Tokens,
    /// Ramp-up protection: usage rose too quickly.
    Burst,
    /// A daily quota: retryable only after the daily reset.
    Daily,
    /// Not said.
    Unknown,
}

impl ThrottleKind {
    /// A metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ThrottleKind::Requests => "requests",
            ThrottleKind::Tokens => "tokens",
            ThrottleKind::Burst => "burst",
            ThrottleKind::Daily => "daily",
            ThrottleKind::Unknown => "unknown",
        }
    }
}

/// What an upstream error means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// A rate limit of the account: retry later or on another account.
    Throttled(ThrottleKind),
    /// Billing exhausted, overdue, not purchased, or a spend cap: never retry on this account.
    BillingExhausted,
    /// The free tier is used up: never retry on this account.
    FreeQuotaExhausted,
    /// The key is invalid or revoked: never retry on this account.
    InvalidKey,
    /// The request is larger than a whole window or the context: retrying cannot help.
    RequestTooLarge,
    /// The provider as a whole is overloaded (not this account's quota): retry with backoff.
    ProviderOverloaded,
    /// Another 5xx: retry with backoff.
    ServerError,
    /// Anything else (a 4xx about the request itself): pass it on.
    Other,
}

impl ErrorClass {
    /// A stable, low-cardinality label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Throttled(k) => match k {
                ThrottleKind::Requests => "throttled_requests",
                ThrottleKind::Tokens => "throttled_tokens",
                ThrottleKind::Burst => "throttled_burst",
                ThrottleKind::Daily => "throttled_daily",
                ThrottleKind::Unknown => "throttled",
            },
            ErrorClass::BillingExhausted => "billing_exhausted",
            ErrorClass::FreeQuotaExhausted => "free_quota_exhausted",
            ErrorClass::InvalidKey => "invalid_key",
            ErrorClass::RequestTooLarge => "request_too_large",
            ErrorClass::ProviderOverloaded => "provider_overloaded",
            ErrorClass::ServerError => "server_error",
            ErrorClass::Other => "other",
        }
    }

    /// True when the account itself is unusable until someone acts (billing, free
    /// quota, key): mark it dead. [`classify`] gives these classes only for the
    /// status/code pairs providers document (see its rules); a caller still needs
    /// corroboration before taking the last live account of an upstream out of rotation.
    pub fn disables_account(self) -> bool {
        matches!(
            self,
            ErrorClass::BillingExhausted | ErrorClass::FreeQuotaExhausted | ErrorClass::InvalidKey
        )
    }

    /// True when the same request may succeed later or elsewhere.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorClass::Throttled(_) | ErrorClass::ProviderOverloaded | ErrorClass::ServerError
        )
    }
}

/// A classified upstream error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classification {
    /// What it means.
    pub class: ErrorClass,
    /// When to come back, from the headers, else the message text, else Gemini's `retryDelay`.
    pub retry_after: Option<Duration>,
    /// `x-should-retry`, when the provider said.
    pub should_retry: Option<bool>,
    /// The provider's message, if it sent one.
    pub message: Option<String>,
}

/// The parts of an error body, whatever its shape.
#[derive(Default)]
struct Parts {
    code: String,
    kind: String,
    message: String,
    detail_code: String,
    quota_id: String,
    top_request_id: bool,
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn parts(body: &Value) -> Parts {
    let err = body.get("error");
    let inner = err.filter(|e| e.is_object()).unwrap_or(body);
    let mut p = Parts {
        code: text(inner.get("code")),
        kind: text(inner.get("type")),
        message: text(inner.get("message")),
        top_request_id: err.is_some() && body.get("request_id").is_some(),
        ..Parts::default()
    };
    if let Some(status) = inner.get("status").and_then(Value::as_str)
        && p.kind.is_empty()
    {
        p.kind = status.to_owned();
    }
    if let Some(details) = inner.get("details") {
        p.detail_code = text(details.get("error_code"));
        if let Some(list) = details.as_array() {
            for d in list {
                if let Some(v) = d.get("violations").and_then(Value::as_array) {
                    for v in v {
                        p.quota_id.push_str(&text(v.get("quotaId")));
                        p.quota_id.push(' ');
                    }
                }
            }
        }
    }
    if err.is_none() && p.kind == "error" {
        p.kind.clear();
    }
    p
}

/// Classifies an upstream error from its status, headers and body. Never panics,
/// whatever the bytes; an unparsable body is classified by status alone.
///
/// ```
/// use http::HeaderMap;
/// use sluice_provider::{classify, ErrorClass, Provider, ThrottleKind};
/// let body = br#"{"error":{"message":"You exceeded your current quota, check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"},"request_id":"8605e472"}"#;
/// let c = classify(429, &HeaderMap::new(), body, Provider::DashScope, std::time::SystemTime::now());
/// assert_eq!(c.class, ErrorClass::Throttled(ThrottleKind::Tokens)); // DashScope: a TPM limit
/// ```
pub fn classify(
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
    provider: Provider,
    now: SystemTime,
) -> Classification {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let p = parts(&json);
    let class = classify_parts(status, &p, provider);
    let header_wait = retry_after(headers, now);
    let retry_after = header_wait
        .or_else(|| retry_after_in_text(&p.message))
        .or_else(|| retry_delay_in_details(&json));
    Classification {
        class,
        retry_after,
        should_retry: should_retry(headers),
        message: (!p.message.is_empty()).then(|| p.message.clone()),
    }
}

/// Classifies an error delivered inside a 200 SSE stream (`data: {"error": …}`), as
/// the equivalent of a 429 when it is about rates and a 500 otherwise.
pub fn classify_stream_error(data: &[u8], provider: Provider) -> Option<Classification> {
    let json: Value = serde_json::from_slice(data).ok()?;
    let err = json.get("error")?;
    let p = parts(&json);
    let looks_throttled = {
        let all = format!("{} {} {}", p.code, p.kind, p.message).to_ascii_lowercase();
        all.contains("rate")
            || all.contains("throttl")
            || all.contains("quota")
            || all.contains("too many")
    };
    let status = match err.get("code").and_then(Value::as_u64) {
        Some(code @ 400..=599) => code as u16,
        _ if looks_throttled => 429,
        _ => 500,
    };
    // A stream error arrives inside a 200: no documented status/code pair, and the
    // status above may be inferred from text. It never takes an account out of rotation.
    let class = match classify_parts(status, &p, provider) {
        c if c.disables_account() => ErrorClass::Other,
        c => c,
    };
    Some(Classification {
        class,
        retry_after: retry_after_in_text(&p.message).or_else(|| retry_delay_in_details(&json)),
        should_retry: None,
        message: (!p.message.is_empty()).then(|| p.message.clone()),
    })
}

/// Classifies by status first: upstream text is evidence, never a command.
///
/// An account is taken out of rotation only on the status/code pairs the providers
/// document for dead keys and billing (`shared/reference/providers.md`):
/// - a 401 (an unauthenticated key, whatever the body says);
/// - a 429 whose `code`/`type` is `insufficient_quota` at OpenAI and Azure (§1 "Billing
///   exhausted", §3), `CommodityNotPurchased`, `PrepaidBillOverdue`,
///   `PostpaidBillOverdue` or `Arrearage` at DashScope (§4 table), or Anthropic's
///   `error.details.error_code = "enforced_spend_limit_reached"` (§2);
/// - a 429 whose code is DashScope's `Throttling.AllocationQuota` or `insufficient_quota`
///   with the message "Free allocated quota exceeded." (§4 table): the free tier.
///
/// Message text only refines a classification that the status and code already
/// qualify (free tier rather than TPM, RPM rather than TPM, a wait); it never creates
/// one. A 400, 404 or 422 never disables an account: providers echo the request's own
/// text in those ("Unrecognized request argument supplied: …", OpenAI and vLLM), so
/// their message is the client's words, not the provider's. For the same reason the
/// text-only hints of overload (which would make a request retryable) count only on a
/// 429 or a 5xx.
fn classify_parts(status: u16, p: &Parts, provider: Provider) -> ErrorClass {
    let code = p.code.as_str();
    let kind = p.kind.as_str();
    let msg = p.message.to_ascii_lowercase();
    let is = |name: &str| code.eq_ignore_ascii_case(name) || kind.eq_ignore_ascii_case(name);
    // The provider's own words about limits come with a 429 or a 5xx; any other
    // status may carry the client's text.
    let provider_text = status == 429 || status >= 500;

    // Keys: a 401 (providers.md §2: Anthropic's `authentication_error`; every
    // OpenAI-compatible API answers a bad key with 401).
    if status == 401 {
        return ErrorClass::InvalidKey;
    }
    if status == 429 {
        // Billing and spend caps (providers.md §4 DashScope billing codes, §2 Anthropic
        // spend limit). Codes only: a message cannot disable an account.
        if is("CommodityNotPurchased")
            || is("PrepaidBillOverdue")
            || is("PostpaidBillOverdue")
            || is("Arrearage")
            || p.detail_code == "enforced_spend_limit_reached"
        {
            return ErrorClass::BillingExhausted;
        }
        // The free tier (providers.md §4: 429 `Throttling.AllocationQuota` "Free
        // allocated quota exceeded."): the code qualifies, the message refines.
        if (is("Throttling.AllocationQuota") || is("insufficient_quota"))
            && (msg.contains("free allocated quota exceeded")
                || msg.contains("free tier of the model has been exhausted"))
        {
            return ErrorClass::FreeQuotaExhausted;
        }
    }
    // Too large: retrying can never help (refusing is all it does, so a 4xx's text
    // may say it; a 5xx's may not).
    if status == 413
        || is("context_length_exceeded")
        || is("request_too_large")
        || ((400..500).contains(&status)
            && (msg.contains("request too large")
                || msg.contains("maximum context length")
                || msg.contains("it can never succeed")))
    {
        return ErrorClass::RequestTooLarge;
    }
    // insufficient_quota on a 429: billing at OpenAI and Azure (providers.md §1, §3); a
    // TPM limit at DashScope (§4, "same code, different meaning").
    if status == 429 && is("insufficient_quota") {
        let dashscope = match provider {
            Provider::DashScope => true,
            Provider::Unknown => p.top_request_id || !msg.contains("please check your plan"),
            _ => false,
        };
        return if dashscope {
            ErrorClass::Throttled(ThrottleKind::Tokens)
        } else {
            ErrorClass::BillingExhausted
        };
    }
    // Provider-wide overload.
    if status == 529
        || (provider_text
            && (is("overloaded_error")
                || is("ModelServingError")
                || msg.contains("system capacity limits")
                || msg.contains("currently overloaded")))
    {
        return ErrorClass::ProviderOverloaded;
    }
    if status == 429
        || is("rate_limit_exceeded")
        || is("rate_limit_error")
        || is("RESOURCE_EXHAUSTED")
        || code.starts_with("Throttling")
        || is("limit_requests")
        || is("limit_burst_rate")
    {
        return ErrorClass::Throttled(throttle_kind(p, &msg));
    }
    match status {
        503 => ErrorClass::ProviderOverloaded,
        500..=599 => ErrorClass::ServerError,
        _ => ErrorClass::Other,
    }
}

fn throttle_kind(p: &Parts, msg: &str) -> ThrottleKind {
    let code = p.code.as_str();
    let kind = p.kind.as_str();
    if code == "limit_burst_rate"
        || code == "Throttling.BurstRate"
        || msg.contains("increased too quickly")
        || msg.contains("acceleration limit")
    {
        return ThrottleKind::Burst;
    }
    if p.quota_id.contains("PerDay") || msg.contains("per day") || msg.contains("daily") {
        return ThrottleKind::Daily;
    }
    if code == "limit_requests"
        || code == "Throttling.RateQuota"
        || kind == "requests"
        || msg.contains("call rate limit")
        || msg.contains("requests per")
        || msg.contains("(rpm)")
        || msg.contains("request limit")
    {
        return ThrottleKind::Requests;
    }
    if code == "Throttling.AllocationQuota"
        || kind == "tokens"
        || msg.contains("token rate limit")
        || msg.contains("tokens per")
        || msg.contains("(tpm)")
        || msg.contains("allocated quota exceeded")
    {
        return ThrottleKind::Tokens;
    }
    if p.quota_id.contains("Requests") {
        return ThrottleKind::Requests;
    }
    if p.quota_id.contains("Token") {
        return ThrottleKind::Tokens;
    }
    ThrottleKind::Unknown
}

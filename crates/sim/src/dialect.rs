//! The four refusal dialects: status, headers and body of every refusal, and the rate-limit headers of every answer.
//!
//! Waits are the meter's exact waits. Where a header is integral (`retry-after`) it is rounded
//! up to whole seconds; millisecond fields are rounded up to whole milliseconds: a client that
//! obeys never comes back early.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Serialize;

use crate::clock::{NANOS_PER_SEC, Nanos, ceil_ms, ceil_secs, go_duration, rfc3339};
use crate::config::{Announce, Dialect};
use crate::meter::{Headline, LimitView, Refusal, RefusalKind, Unit};

/// The operation a request called (Azure names it in its messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/responses` (OpenAI's Responses API).
    Responses,
    /// `POST /v1/messages` (Anthropic's Messages API).
    Messages,
}

impl Operation {
    fn azure_name(self) -> &'static str {
        match self {
            Self::ChatCompletions => "ChatCompletions_Create",
            Self::Completions => "Completions_Create",
            Self::Embeddings => "Embeddings_Create",
            Self::Responses => "Responses_Create",
            Self::Messages => "Messages_Create",
        }
    }
}

/// Why a request is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A request or token limit refused it.
    Rate(Refusal),
    /// The ramp-up rule refused it; the exact wait.
    Burst(Nanos),
    /// The account's billing is exhausted.
    Billing,
    /// The account's free quota is exhausted.
    FreeQuota,
    /// An injected 500.
    ServerError,
    /// An injected capacity error.
    Capacity,
}

/// What the dialect needs to know about the request.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The dialect.
    pub dialect: Dialect,
    /// The model name.
    pub model: &'a str,
    /// The operation.
    pub operation: Operation,
    /// The request id to show.
    pub request_id: &'a str,
    /// The limits for the rate-limit headers.
    pub headline: Headline,
    /// The UNIX time now, in nanoseconds (for RFC 3339 resets).
    pub unix_now: u128,
    /// Which rate-limit headers and waits the model announces.
    pub announce: Announce,
}

/// A rendered refusal.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The status.
    pub status: StatusCode,
    /// Every header to add (rate-limit headers included).
    pub headers: HeaderMap,
    /// The JSON body.
    pub body: ErrorBody,
}

/// An error body, its fields in the provider's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ErrorBody {
    /// `{"error":{"message","type","param","code"}}`.
    Openai {
        /// The error.
        error: OpenAiErrorBody,
    },
    /// `{"error":{"message","type","param":null,"code"},"request_id"}`.
    Dashscope {
        /// The error.
        error: OpenAiErrorBody,
        /// The request id.
        request_id: String,
    },
    /// `{"error":{"code","message"}}`.
    Azure {
        /// The error.
        error: AzureErrorBody,
    },
    /// `{"type":"error","error":{"type","message"},"request_id"}`.
    Anthropic {
        /// Always `error`.
        #[serde(rename = "type")]
        kind: &'static str,
        /// The error.
        error: AnthropicErrorBody,
        /// The request id.
        request_id: String,
    },
}

/// The inside of an OpenAI or DashScope error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenAiErrorBody {
    /// Text.
    pub message: String,
    /// Type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always null here.
    pub param: Option<String>,
    /// Code.
    pub code: Option<String>,
}

/// The inside of an Azure error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AzureErrorBody {
    /// Code (a string, `"429"` for rate limits).
    pub code: String,
    /// Text.
    pub message: String,
}

/// The inside of an Anthropic error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnthropicErrorBody {
    /// `rate_limit_error`, `overloaded_error`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// Text.
    pub message: String,
}

impl ErrorBody {
    /// The body as JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

fn put(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

/// The request id as the dialect writes it.
pub fn request_id(dialect: Dialect, id: u64) -> String {
    // A fixed odd multiplier spreads consecutive ids over all digits, deterministically.
    let mixed = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    match dialect {
        Dialect::Dashscope => format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            mixed >> 32,
            (mixed >> 16) & 0xffff,
            (mixed >> 4) & 0xfff,
            id & 0xfff,
            id & 0xffff_ffff_ffff
        ),
        Dialect::Anthropic => format!("req_sim{mixed:016x}{id:08x}"),
        Dialect::Openai | Dialect::Azure => format!("req_{mixed:016x}{id:016x}"),
    }
}

/// The rate-limit headers every answer of the dialect carries (OpenAI, Azure, Anthropic; none for DashScope),
/// or only the request id when the model announces no rate-limit headers.
pub fn limit_headers(ctx: &Context<'_>) -> HeaderMap {
    let mut h = dialect_limit_headers(ctx);
    if !ctx.announce.rate_limit_headers {
        let names: Vec<HeaderName> = h
            .keys()
            .filter(|n| n.as_str().contains("ratelimit"))
            .cloned()
            .collect();
        for n in names {
            h.remove(n);
        }
    }
    h
}

fn dialect_limit_headers(ctx: &Context<'_>) -> HeaderMap {
    let mut h = HeaderMap::new();
    let req = ctx.headline.requests;
    let tok = match ctx.dialect {
        Dialect::Anthropic => ctx.headline.any_tokens(),
        _ => ctx.headline.tokens,
    };
    match ctx.dialect {
        Dialect::Openai => {
            put(&mut h, "x-request-id", ctx.request_id.to_owned());
            if let Some(v) = req {
                put(&mut h, "x-ratelimit-limit-requests", v.limit.to_string());
                put(
                    &mut h,
                    "x-ratelimit-remaining-requests",
                    v.remaining.to_string(),
                );
                put(&mut h, "x-ratelimit-reset-requests", go_duration(v.reset));
            }
            if let Some(v) = tok {
                put(&mut h, "x-ratelimit-limit-tokens", v.limit.to_string());
                put(
                    &mut h,
                    "x-ratelimit-remaining-tokens",
                    v.remaining.to_string(),
                );
                put(&mut h, "x-ratelimit-reset-tokens", go_duration(v.reset));
            }
        }
        Dialect::Azure => {
            put(&mut h, "apim-request-id", ctx.request_id.to_owned());
            if let Some(v) = req {
                put(
                    &mut h,
                    "x-ratelimit-remaining-requests",
                    v.remaining.to_string(),
                );
            }
            if let Some(v) = tok {
                put(
                    &mut h,
                    "x-ratelimit-remaining-tokens",
                    v.remaining.to_string(),
                );
            }
        }
        Dialect::Anthropic => {
            put(&mut h, "request-id", ctx.request_id.to_owned());
            let at = |v: LimitView| {
                let nanos = ctx.unix_now + u128::from(v.reset);
                let secs = nanos.div_ceil(u128::from(NANOS_PER_SEC));
                rfc3339(u64::try_from(secs).unwrap_or(u64::MAX))
            };
            if let Some(v) = req {
                put(
                    &mut h,
                    "anthropic-ratelimit-requests-limit",
                    v.limit.to_string(),
                );
                put(
                    &mut h,
                    "anthropic-ratelimit-requests-remaining",
                    v.remaining.to_string(),
                );
                put(&mut h, "anthropic-ratelimit-requests-reset", at(v));
            }
            if let Some(v) = tok {
                put(
                    &mut h,
                    "anthropic-ratelimit-tokens-limit",
                    v.limit.to_string(),
                );
                put(
                    &mut h,
                    "anthropic-ratelimit-tokens-remaining",
                    v.remaining.to_string(),
                );
                put(&mut h, "anthropic-ratelimit-tokens-reset", at(v));
            }
            const INPUT: [&str; 3] = [
                "anthropic-ratelimit-input-tokens-limit",
                "anthropic-ratelimit-input-tokens-remaining",
                "anthropic-ratelimit-input-tokens-reset",
            ];
            const OUTPUT: [&str; 3] = [
                "anthropic-ratelimit-output-tokens-limit",
                "anthropic-ratelimit-output-tokens-remaining",
                "anthropic-ratelimit-output-tokens-reset",
            ];
            for (names, view) in [
                (INPUT, ctx.headline.input_tokens),
                (OUTPUT, ctx.headline.output_tokens),
            ] {
                if let Some(v) = view {
                    put(&mut h, names[0], v.limit.to_string());
                    put(&mut h, names[1], v.remaining.to_string());
                    put(&mut h, names[2], at(v));
                }
            }
        }
        Dialect::Dashscope => put(&mut h, "x-request-id", ctx.request_id.to_owned()),
    }
    h
}

/// The name of a window in messages: (`min`, `M`) for 60 s, (`second`, `S`), (`hour`, `H`),
/// (`day`, `D`); any other length in Go duration text with no abbreviation.
fn window_name(label_window: Nanos) -> (String, Option<char>) {
    match label_window {
        w if w == NANOS_PER_SEC => ("second".to_owned(), Some('S')),
        w if w == 60 * NANOS_PER_SEC => ("min".to_owned(), Some('M')),
        w if w == 3600 * NANOS_PER_SEC => ("hour".to_owned(), Some('H')),
        w if w == 86_400 * NANOS_PER_SEC => ("day".to_owned(), Some('D')),
        w => (go_duration(w), None),
    }
}

/// How a message names what a limit counts.
fn unit_name(unit: Unit) -> &'static str {
    match unit {
        Unit::Requests => "requests",
        Unit::Tokens => "tokens",
        Unit::InputTokens => "input tokens",
        Unit::OutputTokens => "output tokens",
    }
}

/// "tokens per min (TPM)", "requests per second (RPS)", "tokens per 10s".
fn openai_window(view: &LimitView) -> String {
    let unit = unit_name(view.unit);
    let (name, abbr) = window_name(view.label_window);
    match abbr {
        Some(a) => format!(
            "{unit} per {name} ({}P{a})",
            unit.chars().next().map_or('?', |c| c.to_ascii_uppercase())
        ),
        None => format!("{unit} per {name}"),
    }
}

fn anthropic_window(view: &LimitView) -> String {
    let unit = unit_name(view.unit);
    let name = match window_name(view.label_window) {
        (n, Some('M')) if n == "min" => "minute".to_owned(),
        (n, _) => n,
    };
    format!("{unit} per {name}")
}

/// The wait a refusal asks for, if it can ever succeed.
fn wait_of(failure: &Failure) -> Option<Nanos> {
    match failure {
        Failure::Rate(r) => r.wait,
        Failure::Burst(w) => Some(*w),
        _ => None,
    }
}

const BURST_MESSAGE: &str = "Request rate increased too quickly. To ensure system stability, please adjust your client logic to scale requests more smoothly over time.";
const OPENAI_LIMITS_URL: &str =
    "Visit https://platform.openai.com/account/rate-limits to learn more.";
const ORG: &str = "org-sluice-sim";

/// Renders a refusal in the context's dialect.
pub fn render(failure: &Failure, ctx: &Context<'_>) -> Rendered {
    let mut headers = limit_headers(ctx);
    let wait = wait_of(failure).filter(|_| ctx.announce.retry_after);
    let (status, body) = match ctx.dialect {
        Dialect::Openai => {
            if let Some(w) = wait {
                put(&mut headers, "retry-after", ceil_secs(w).to_string());
            }
            openai(failure, ctx)
        }
        Dialect::Dashscope => dashscope(failure, ctx),
        Dialect::Azure => {
            if let Some(w) = wait {
                put(&mut headers, "retry-after", ceil_secs(w).to_string());
                put(&mut headers, "retry-after-ms", ceil_ms(w).to_string());
            }
            azure(failure, ctx)
        }
        Dialect::Anthropic => {
            if let Some(w) = wait {
                put(&mut headers, "retry-after", ceil_secs(w).to_string());
            }
            anthropic(failure, ctx)
        }
    };
    Rendered {
        status,
        headers,
        body,
    }
}

fn oai(message: String, kind: &str, code: Option<&str>) -> ErrorBody {
    ErrorBody::Openai {
        error: OpenAiErrorBody {
            message,
            kind: kind.to_owned(),
            param: None,
            code: code.map(str::to_owned),
        },
    }
}

fn openai(failure: &Failure, ctx: &Context<'_>) -> (StatusCode, ErrorBody) {
    let model = ctx.model;
    match failure {
        Failure::Rate(r) if r.kind == RefusalKind::TooLarge => (
            StatusCode::TOO_MANY_REQUESTS,
            oai(
                format!(
                    "Request too large for {model} in organization {ORG} on {}: Limit {}, Requested {}. The input or output tokens must be reduced in order to run successfully. {OPENAI_LIMITS_URL}",
                    openai_window(&r.limit),
                    r.limit.limit,
                    r.requested
                ),
                "tokens",
                Some("rate_limit_exceeded"),
            ),
        ),
        Failure::Rate(r) => {
            let kind = match r.limit.unit {
                Unit::Requests => "requests",
                _ => "tokens",
            };
            (
                StatusCode::TOO_MANY_REQUESTS,
                oai(
                    format!(
                        "Rate limit reached for {model} in organization {ORG} on {}: Limit {}, Used {}, Requested {}. Please try again in {}. {OPENAI_LIMITS_URL}",
                        openai_window(&r.limit),
                        r.limit.limit,
                        r.limit.used,
                        r.requested,
                        go_duration(r.wait.unwrap_or(0))
                    ),
                    kind,
                    Some("rate_limit_exceeded"),
                ),
            )
        }
        Failure::Burst(wait) => (
            StatusCode::TOO_MANY_REQUESTS,
            oai(
                format!("{BURST_MESSAGE} Please try again in {}.", go_duration(*wait)),
                "requests",
                Some("rate_limit_exceeded"),
            ),
        ),
        Failure::Billing | Failure::FreeQuota => (
            StatusCode::TOO_MANY_REQUESTS,
            oai(
                "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.".to_owned(),
                "insufficient_quota",
                Some("insufficient_quota"),
            ),
        ),
        Failure::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            oai(
                "The server had an error while processing your request. Sorry about that!".to_owned(),
                "server_error",
                None,
            ),
        ),
        Failure::Capacity => (
            StatusCode::SERVICE_UNAVAILABLE,
            oai(
                "The engine is currently overloaded, please try again later.".to_owned(),
                "server_error",
                None,
            ),
        ),
    }
}

fn dashscope(failure: &Failure, ctx: &Context<'_>) -> (StatusCode, ErrorBody) {
    let body = |message: &str, code: &str| ErrorBody::Dashscope {
        error: OpenAiErrorBody {
            message: message.to_owned(),
            kind: code.to_owned(),
            param: None,
            code: Some(code.to_owned()),
        },
        request_id: ctx.request_id.to_owned(),
    };
    match failure {
        Failure::Rate(r) if r.limit.unit == Unit::Requests => (
            StatusCode::TOO_MANY_REQUESTS,
            body("You have exceeded your request limit.", "limit_requests"),
        ),
        Failure::Rate(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            body(
                "You exceeded your current quota, check your plan and billing details.",
                "insufficient_quota",
            ),
        ),
        Failure::Burst(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            body(BURST_MESSAGE, "limit_burst_rate"),
        ),
        Failure::FreeQuota => (
            StatusCode::TOO_MANY_REQUESTS,
            body("Free allocated quota exceeded.", "insufficient_quota"),
        ),
        Failure::Billing => (
            StatusCode::TOO_MANY_REQUESTS,
            body("The prepaid bill is overdue.", "PrepaidBillOverdue"),
        ),
        Failure::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            body(
                "An internal error has occured, please try again later or contact service support.",
                "internal_error",
            ),
        ),
        Failure::Capacity => (
            StatusCode::SERVICE_UNAVAILABLE,
            body(
                "Too many requests. Your requests are being throttled due to system capacity limits.",
                "ModelServingError",
            ),
        ),
    }
}

fn azure(failure: &Failure, ctx: &Context<'_>) -> (StatusCode, ErrorBody) {
    let body = |code: &str, message: String| ErrorBody::Azure {
        error: AzureErrorBody {
            code: code.to_owned(),
            message,
        },
    };
    let exceeded = |what: &str, wait: Nanos| {
        format!(
            "Requests to the {} Operation under Azure OpenAI API version 2024-10-21 have exceeded {what} rate limit of your current OpenAI S0 pricing tier. Please retry after {} seconds. Please go here: https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit.",
            ctx.operation.azure_name(),
            ceil_secs(wait)
        )
    };
    match failure {
        Failure::Rate(r) if r.kind == RefusalKind::TooLarge => (
            StatusCode::TOO_MANY_REQUESTS,
            body(
                "429",
                format!(
                    "Requests to the {} Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. This request needs {} tokens, more than the limit of {}: it can never succeed.",
                    ctx.operation.azure_name(),
                    r.requested,
                    r.limit.limit
                ),
            ),
        ),
        Failure::Rate(r) => {
            let what = match r.limit.unit {
                Unit::Requests => "call",
                _ => "token",
            };
            (StatusCode::TOO_MANY_REQUESTS, body("429", exceeded(what, r.wait.unwrap_or(0))))
        }
        Failure::Burst(wait) => (StatusCode::TOO_MANY_REQUESTS, body("429", exceeded("call", *wait))),
        Failure::Billing | Failure::FreeQuota => (
            StatusCode::TOO_MANY_REQUESTS,
            body(
                "insufficient_quota",
                "You exceeded your current quota, please check your plan and billing details.".to_owned(),
            ),
        ),
        Failure::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            body(
                "InternalServerError",
                "The server had an error while processing your request. Sorry about that!".to_owned(),
            ),
        ),
        Failure::Capacity => (
            StatusCode::SERVICE_UNAVAILABLE,
            body(
                "ServiceUnavailable",
                "The service is temporarily unable to process your request. Please try again later.".to_owned(),
            ),
        ),
    }
}

fn anthropic(failure: &Failure, ctx: &Context<'_>) -> (StatusCode, ErrorBody) {
    let body = |kind: &str, message: String| ErrorBody::Anthropic {
        kind: "error",
        error: AnthropicErrorBody {
            kind: kind.to_owned(),
            message,
        },
        request_id: ctx.request_id.to_owned(),
    };
    const TAIL: &str = "For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later.";
    match failure {
        Failure::Rate(r) if r.kind == RefusalKind::TooLarge => (
            StatusCode::TOO_MANY_REQUESTS,
            body(
                "rate_limit_error",
                format!(
                    "This request would exceed your organization's rate limit of {} {}: it requests {}. {TAIL}",
                    r.limit.limit,
                    anthropic_window(&r.limit),
                    r.requested
                ),
            ),
        ),
        Failure::Rate(r) => (
            StatusCode::TOO_MANY_REQUESTS,
            body(
                "rate_limit_error",
                format!(
                    "This request would exceed your organization's rate limit of {} {}. {TAIL}",
                    r.limit.limit,
                    anthropic_window(&r.limit)
                ),
            ),
        ),
        Failure::Burst(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            body(
                "rate_limit_error",
                "Your organization's usage increased too quickly (acceleration limit). Please ramp up your traffic gradually.".to_owned(),
            ),
        ),
        Failure::Billing | Failure::FreeQuota => (
            StatusCode::BAD_REQUEST,
            body(
                "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.".to_owned(),
            ),
        ),
        Failure::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            body("api_error", "Internal server error".to_owned()),
        ),
        Failure::Capacity => (
            StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            body("overloaded_error", "Overloaded".to_owned()),
        ),
    }
}

/// The body of an error sent inside a 200 stream (the `stream_error` fault): the dialect's capacity error.
pub fn stream_error_body(ctx: &Context<'_>) -> ErrorBody {
    render(&Failure::Capacity, ctx).body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{MANUAL_CLOCK_UNIX_ORIGIN_SECS, NANOS_PER_MS};
    use serde_json::{Value, json};

    fn body(r: &Rendered) -> Value {
        serde_json::to_value(&r.body).unwrap()
    }

    const MIN: Nanos = 60 * NANOS_PER_SEC;

    fn view(unit: Unit, limit: u64, used: u64, reset: Nanos) -> LimitView {
        LimitView {
            unit,
            limit,
            window: MIN,
            label_window: MIN,
            used,
            remaining: limit.saturating_sub(used),
            reset,
            peak: used,
        }
    }

    fn ctx(dialect: Dialect) -> Context<'static> {
        Context {
            dialect,
            model: "gpt-4o-mini",
            operation: Operation::ChatCompletions,
            request_id: "rid",
            headline: Headline {
                requests: Some(view(Unit::Requests, 60, 1, 1000 * NANOS_PER_MS)),
                tokens: Some(view(Unit::Tokens, 150_000, 16, 6 * MIN)),
                ..Headline::default()
            },
            unix_now: u128::from(MANUAL_CLOCK_UNIX_ORIGIN_SECS) * u128::from(NANOS_PER_SEC),
            announce: Announce::default(),
        }
    }

    fn tpm_refusal() -> Failure {
        Failure::Rate(Refusal {
            kind: RefusalKind::Tokens,
            limit: view(Unit::Tokens, 50_000, 47_949, MIN),
            requested: 3006,
            wait: Some(1_146 * NANOS_PER_MS),
        })
    }

    fn header(r: &Rendered, name: &str) -> Option<String> {
        r.headers.get(name).map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn openai_tpm() {
        let r = render(&tpm_refusal(), &ctx(Dialect::Openai));
        assert_eq!(r.status, 429);
        assert_eq!(
            body(&r),
            json!({"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-sluice-sim on tokens per min (TPM): Limit 50000, Used 47949, Requested 3006. Please try again in 1.146s. Visit https://platform.openai.com/account/rate-limits to learn more.","type":"tokens","param":null,"code":"rate_limit_exceeded"}})
        );
        assert_eq!(header(&r, "retry-after").as_deref(), Some("2"));
        assert_eq!(
            header(&r, "x-ratelimit-reset-requests").as_deref(),
            Some("1s")
        );
        assert_eq!(
            header(&r, "x-ratelimit-reset-tokens").as_deref(),
            Some("6m0s")
        );
        assert_eq!(
            header(&r, "x-ratelimit-remaining-tokens").as_deref(),
            Some("149984")
        );
        assert_eq!(
            header(&r, "x-ratelimit-limit-requests").as_deref(),
            Some("60")
        );
        assert_eq!(
            header(&r, "x-ratelimit-remaining-requests").as_deref(),
            Some("59")
        );
    }

    #[test]
    fn dashscope_codes_and_no_headers() {
        let c = ctx(Dialect::Dashscope);
        let r = render(&tpm_refusal(), &c);
        assert_eq!(
            body(&r),
            json!({"error":{"message":"You exceeded your current quota, check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"},"request_id":"rid"})
        );
        assert!(r.headers.keys().all(|k| k == "x-request-id"));
        let r = render(&Failure::Burst(5), &c);
        assert_eq!(body(&r)["error"]["code"], "limit_burst_rate");
        assert_eq!(body(&r)["error"]["message"], BURST_MESSAGE);
        let r = render(&Failure::FreeQuota, &c);
        assert_eq!(
            body(&r)["error"]["message"],
            "Free allocated quota exceeded."
        );
        assert_eq!(body(&r)["error"]["code"], "insufficient_quota");
        let r = render(&Failure::Capacity, &c);
        assert_eq!(
            (r.status.as_u16(), body(&r)["error"]["code"].as_str()),
            (503, Some("ModelServingError"))
        );
    }

    #[test]
    fn azure_retry_headers() {
        let r = render(&tpm_refusal(), &ctx(Dialect::Azure));
        assert_eq!(body(&r)["error"]["code"], "429");
        let b = body(&r);
        let message = b["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 2 seconds."));
        assert_eq!(header(&r, "retry-after").as_deref(), Some("2"));
        assert_eq!(header(&r, "retry-after-ms").as_deref(), Some("1146"));
        assert_eq!(
            header(&r, "x-ratelimit-remaining-tokens").as_deref(),
            Some("149984")
        );
        assert_eq!(
            header(&r, "x-ratelimit-remaining-requests").as_deref(),
            Some("59")
        );
    }

    #[test]
    fn anthropic_headers_and_overload() {
        let c = ctx(Dialect::Anthropic);
        let r = render(&tpm_refusal(), &c);
        assert_eq!(body(&r)["type"], "error");
        assert_eq!(body(&r)["error"]["type"], "rate_limit_error");
        assert_eq!(body(&r)["request_id"], "rid");
        assert_eq!(
            header(&r, "anthropic-ratelimit-requests-reset").as_deref(),
            Some("2025-01-01T00:00:01Z")
        );
        assert_eq!(
            header(&r, "anthropic-ratelimit-tokens-reset").as_deref(),
            Some("2025-01-01T00:06:00Z")
        );
        assert_eq!(
            header(&r, "anthropic-ratelimit-tokens-remaining").as_deref(),
            Some("149984")
        );
        assert_eq!(header(&r, "retry-after").as_deref(), Some("2"));
        let r = render(&Failure::Capacity, &c);
        assert_eq!(r.status.as_u16(), 529);
        assert_eq!(body(&r)["error"]["type"], "overloaded_error");
    }

    #[test]
    fn window_names() {
        let mut v = view(Unit::Requests, 10, 10, 0);
        v.label_window = NANOS_PER_SEC;
        assert_eq!(openai_window(&v), "requests per second (RPS)");
        v.label_window = 86_400 * NANOS_PER_SEC;
        assert_eq!(openai_window(&v), "requests per day (RPD)");
        v.label_window = 10 * NANOS_PER_SEC;
        assert_eq!(openai_window(&v), "requests per 10s");
        v.label_window = MIN;
        assert_eq!(anthropic_window(&v), "requests per minute");
    }

    #[test]
    fn request_ids_by_dialect() {
        assert_eq!(request_id(Dialect::Dashscope, 1).len(), 36);
        assert!(request_id(Dialect::Anthropic, 1).starts_with("req_"));
        assert_ne!(
            request_id(Dialect::Openai, 1),
            request_id(Dialect::Openai, 2)
        );
    }

    #[test]
    fn silent_models_omit_rate_limit_headers_in_every_dialect() {
        for dialect in [
            Dialect::Openai,
            Dialect::Azure,
            Dialect::Anthropic,
            Dialect::Dashscope,
        ] {
            let mut c = ctx(dialect);
            let loud = render(&tpm_refusal(), &c);
            if dialect != Dialect::Dashscope {
                assert!(
                    loud.headers
                        .keys()
                        .any(|n| n.as_str().contains("ratelimit")),
                    "{dialect:?} announces its limits by default"
                );
            }
            c.announce.rate_limit_headers = false;
            let quiet = render(&tpm_refusal(), &c);
            assert!(
                quiet
                    .headers
                    .keys()
                    .all(|n| !n.as_str().contains("ratelimit")),
                "{dialect:?}: {:?}",
                quiet.headers
            );
            assert!(
                limit_headers(&c)
                    .keys()
                    .all(|n| !n.as_str().contains("ratelimit"))
            );
            assert_eq!(quiet.status, loud.status, "{dialect:?}");
            assert_eq!(
                body(&quiet),
                body(&loud),
                "{dialect:?}: the body is the dialect's"
            );
            if dialect != Dialect::Dashscope {
                assert_eq!(
                    header(&quiet, "retry-after").as_deref(),
                    Some("2"),
                    "{dialect:?}"
                );
            }
        }
    }

    #[test]
    fn retry_after_can_be_omitted() {
        for dialect in [Dialect::Openai, Dialect::Azure, Dialect::Anthropic] {
            let mut c = ctx(dialect);
            c.announce.retry_after = false;
            let r = render(&tpm_refusal(), &c);
            assert_eq!(r.status, 429);
            assert_eq!(header(&r, "retry-after"), None, "{dialect:?}");
            assert_eq!(header(&r, "retry-after-ms"), None, "{dialect:?}");
            assert!(
                r.headers.keys().any(|n| n.as_str().contains("ratelimit")),
                "{dialect:?}: the rate-limit headers stay"
            );
        }
    }
}

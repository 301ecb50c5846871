//! Errors by lifecycle: [`StartError`] stops the process; [`ApiError`] answers one
//! request with OpenAI's `{"error":{"message","type","param","code"}}`.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sluice_limiter::{Remaining, Unit};

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The Redis store could not be set up.
    #[error("store: {0}")]
    Store(#[from] sluice_limiter::StoreError),
    /// A model's limits do not make a quota.
    #[error("model {model}: {source}")]
    Quota {
        /// The model.
        model: String,
        /// Why.
        source: sluice_limiter::QuotaError,
    },
    /// The configuration does not make a catalog of quotas.
    #[error("catalog: {0}")]
    Catalog(String),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Client(#[from] reqwest::Error),
    /// The configuration is unsafe to serve (see [`sluice_config::Config::check_exposure`]).
    #[error("{0}")]
    Config(#[from] sluice_config::ConfigError),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// A refusal to tell the client about: when to come back and the shared budget.
#[derive(Debug, Clone)]
pub(crate) struct RateLimited {
    pub(crate) model: String,
    pub(crate) retry_after: Duration,
    pub(crate) what: String,
    pub(crate) remaining: Vec<Remaining>,
}

/// An answer the gateway gives itself (never a replaced upstream error).
#[derive(Debug)]
pub(crate) enum ApiError {
    /// No or unknown tenant key.
    Unauthorized,
    /// The request is malformed.
    BadRequest {
        message: String,
        param: Option<&'static str>,
        code: &'static str,
    },
    /// The body is larger than `server.max_body_bytes`.
    BodyTooLarge { limit: usize },
    /// The body did not arrive within `server.body_timeout`.
    BodyTimeout { timeout: Duration },
    /// The `Content-Type` is not JSON.
    UnsupportedMediaType { got: String },
    /// More requests in flight than `server.max_connections`.
    Busy,
    /// The model is not configured.
    ModelNotFound(String),
    /// The model's upstream does not speak the API the request came through (a
    /// Messages request to an OpenAI upstream, a Responses request to Anthropic).
    WrongApi { model: String, api: &'static str },
    /// A pass-through path that neither the dialect nor the upstream's `passthrough`
    /// list defines (404, never forwarded).
    UnknownUrl { method: String, path: String },
    /// A route that exists, asked with a method it does not serve (405).
    MethodNotAllowed { method: String, path: String },
    /// The request can never fit a limit.
    TooLarge {
        model: String,
        limit: String,
        capacity: u64,
        cost: u64,
    },
    /// No slot before the deadline.
    RateLimited(RateLimited),
    /// Every account of the model is out of rotation.
    AccountsDisabled { model: String, reason: String },
    /// The limiter's store is down and the policy is to refuse.
    StoreUnavailable { retry_after: Duration },
    /// The upstream could not be reached or timed out.
    Upstream { model: String, timeout: bool },
}

impl ApiError {
    /// A low-cardinality label for metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::BadRequest { .. }
            | ApiError::BodyTimeout { .. }
            | ApiError::UnsupportedMediaType { .. } => "bad_request",
            ApiError::BodyTooLarge { .. } => "too_large",
            ApiError::Busy => "busy",
            ApiError::ModelNotFound(_) => "model_not_found",
            ApiError::WrongApi { .. } => "wrong_api",
            ApiError::UnknownUrl { .. } => "unknown_url",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::AccountsDisabled { .. } => "accounts_disabled",
            ApiError::StoreUnavailable { .. } => "store_unavailable",
            ApiError::Upstream { .. } => "upstream_unreachable",
        }
    }
}

/// How an error body is shaped: OpenAI's, or Anthropic's for `/v1/messages`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum ErrorShape {
    /// `{"error":{"message","type","param","code"}}`.
    #[default]
    OpenAi,
    /// `{"type":"error","error":{"type","message"}}`, the type Anthropic uses for the
    /// status (`rate_limit_error` for a 429, `overloaded_error` for a 503, …).
    Anthropic,
}

impl ErrorShape {
    /// How the clients of `endpoint` expect an error: Anthropic's shape for Messages.
    pub(crate) fn of(endpoint: crate::estimate::Endpoint) -> Self {
        match endpoint {
            crate::estimate::Endpoint::Messages => Self::Anthropic,
            _ => Self::OpenAi,
        }
    }
}

/// Anthropic's error type for a status.
fn anthropic_kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 408 | 415 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

fn body(
    shape: ErrorShape,
    status: StatusCode,
    message: String,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response {
    let json = match shape {
        ErrorShape::OpenAi => {
            serde_json::json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
        }
        ErrorShape::Anthropic => {
            serde_json::json!({"type": "error", "error": {"type": anthropic_kind(status), "message": message}})
        }
    };
    (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
        .into_response()
}

fn secs_ceil(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 { s + 1 } else { s }
}

/// Go-duration text (`1s`, `6m0s`, `250ms`) for `x-ratelimit-reset-*`.
pub(crate) fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s) = (
        ms / 3_600_000,
        (ms / 60_000) % 60,
        (ms % 60_000) as f64 / 1000.0,
    );
    let s = format!("{s}s");
    match (h, m) {
        (0, 0) => s,
        (0, m) => format!("{m}m{s}"),
        (h, m) => format!("{h}h{m}m{s}"),
    }
}

/// `x-ratelimit-{limit,remaining}-{requests,tokens}` from the shared budget: the
/// tightest limit of each unit.
pub(crate) fn ratelimit_headers(
    headers: &mut HeaderMap,
    remaining: &[Remaining],
    reset: Option<Duration>,
) {
    let put = |h: &mut HeaderMap, name: &'static str, value: HeaderValue| {
        h.insert(http::HeaderName::from_static(name), value);
    };
    let text = |s: String| HeaderValue::try_from(s).ok();
    let tightest = |unit: Unit| {
        remaining
            .iter()
            .filter(|r| r.unit == unit)
            .min_by_key(|r| r.remaining)
    };
    const NAMES: [(Unit, [&str; 3]); 2] = [
        (
            Unit::Requests,
            [
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ],
        ),
        (
            Unit::Tokens,
            [
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
            ],
        ),
    ];
    for (unit, [limit, left, reset_name]) in NAMES {
        let Some(r) = tightest(unit) else {
            continue;
        };
        put(headers, limit, HeaderValue::from(r.effective));
        put(headers, left, HeaderValue::from(r.remaining));
        if let Some(v) = reset.and_then(|reset| text(go_duration(reset))) {
            put(headers, reset_name, v);
        }
    }
    // A tenant's budget (micro-USD in the limiter), in USD.
    if let Some(r) = tightest(Unit::Spend) {
        let usd = |v: u64| text(format!("{:.6}", v as f64 / 1e6));
        if let (Some(limit), Some(left)) = (usd(r.effective), usd(r.remaining)) {
            put(headers, "x-sluice-budget-limit-usd", limit);
            put(headers, "x-sluice-budget-remaining-usd", left);
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.render(ErrorShape::OpenAi)
    }
}

impl ApiError {
    /// The answer to the client, its body in `shape` (status and headers are the same
    /// whatever the shape): a refusal that may be retried carries `Retry-After` (and
    /// `retry-after-ms`); a rate-limit refusal also the shared budget's
    /// `x-ratelimit-*`.
    pub(crate) fn render(self, shape: ErrorShape) -> Response {
        let (status, kind, param, code) = self.classify();
        let mut resp = body(shape, status, self.message(), kind, param, Some(code));
        let retry_after = match &self {
            ApiError::Busy => Some(Duration::from_secs(1)),
            ApiError::RateLimited(r) => Some(r.retry_after),
            ApiError::StoreUnavailable { retry_after } => Some(*retry_after),
            _ => None,
        };
        if let Some(after) = retry_after {
            let h = resp.headers_mut();
            h.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(secs_ceil(after).max(1)),
            );
            h.insert(
                "retry-after-ms",
                HeaderValue::from(after.as_millis().max(1) as u64),
            );
        }
        if let ApiError::RateLimited(r) = &self {
            ratelimit_headers(resp.headers_mut(), &r.remaining, Some(r.retry_after));
        }
        resp
    }

    /// The status, OpenAI's error `type`, the parameter at fault and the `code`.
    fn classify(&self) -> (StatusCode, &'static str, Option<&'static str>, &'static str) {
        const INVALID: &str = "invalid_request_error";
        const UNAVAILABLE: &str = "service_unavailable";
        match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, INVALID, None, "invalid_api_key"),
            ApiError::BadRequest { param, code, .. } => {
                (StatusCode::BAD_REQUEST, INVALID, *param, code)
            }
            ApiError::BodyTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID,
                None,
                "body_too_large",
            ),
            ApiError::BodyTimeout { .. } => (
                StatusCode::REQUEST_TIMEOUT,
                INVALID,
                None,
                "request_timeout",
            ),
            ApiError::UnsupportedMediaType { .. } => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                INVALID,
                None,
                "unsupported_media_type",
            ),
            ApiError::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                UNAVAILABLE,
                None,
                "server_busy",
            ),
            ApiError::ModelNotFound(_) => (
                StatusCode::NOT_FOUND,
                INVALID,
                Some("model"),
                "model_not_found",
            ),
            ApiError::WrongApi { .. } => {
                (StatusCode::BAD_REQUEST, INVALID, Some("model"), "wrong_api")
            }
            ApiError::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                INVALID,
                None,
                "method_not_allowed",
            ),
            ApiError::UnknownUrl { .. } => (StatusCode::NOT_FOUND, INVALID, None, "unknown_url"),
            ApiError::TooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID,
                Some("messages"),
                "request_too_large",
            ),
            ApiError::RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                None,
                "rate_limit_exceeded",
            ),
            ApiError::AccountsDisabled { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                UNAVAILABLE,
                None,
                "accounts_disabled",
            ),
            ApiError::StoreUnavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                UNAVAILABLE,
                None,
                "store_unavailable",
            ),
            ApiError::Upstream { timeout: true, .. } => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_error",
                None,
                "upstream_timeout",
            ),
            ApiError::Upstream { timeout: false, .. } => (
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                None,
                "upstream_unreachable",
            ),
        }
    }

    /// The message: what happened, the setting or parameter behind it, what to do.
    pub(crate) fn message(&self) -> String {
        match self {
            ApiError::Unauthorized => "Incorrect or missing API key: send your Sluice tenant key as `Authorization: Bearer <key>`.".into(),
            ApiError::BadRequest { message, .. } => message.clone(),
            ApiError::BodyTooLarge { limit } => format!("The request body is larger than this gateway accepts ({limit} bytes, server.max_body_bytes)."),
            ApiError::BodyTimeout { timeout } => format!("The request body did not arrive within {} (server.body_timeout).", go_duration(*timeout)),
            ApiError::UnsupportedMediaType { got } => format!("Invalid Content-Type header ({got}): expected application/json."),
            ApiError::Busy => "This gateway is serving as many requests as it is configured to (server.max_connections). Please try again shortly.".into(),
            ApiError::ModelNotFound(model) => format!("The model `{model}` is not configured on this gateway (GET /v1/models lists them)."),
            ApiError::WrongApi { model, api } => format!("The model `{model}` is served by an upstream that does not speak /v1{api}; send it through the API of its provider (nothing is translated between dialects)."),
            ApiError::MethodNotAllowed { method, path } => format!("Invalid method for this URL ({method} {path})."),
            ApiError::UnknownUrl { method, path } => format!("Invalid URL ({method} {path}): this gateway passes through only the paths the upstream's dialect defines and those listed in its `passthrough`."),
            ApiError::TooLarge { model, limit, capacity, cost } => format!("Request too large for {model}: it needs {cost} against limit {limit}, which allows {capacity} per window, so it can never be served. Reduce the prompt or max_tokens."),
            ApiError::RateLimited(r) => format!(
                "Rate limit reached for {} ({}): the shared budget has no slot within this request's maximum wait. Please try again in {}.",
                r.model, r.what, go_duration(r.retry_after)
            ),
            ApiError::AccountsDisabled { model, reason } => format!("Every account of {model} is out of rotation until an operator clears it: {reason}"),
            ApiError::StoreUnavailable { .. } => "The shared rate-limit store is unavailable and this gateway is configured to fail closed.".into(),
            ApiError::Upstream { model, timeout } => format!("The upstream of {model} {}.", if *timeout { "did not answer in time" } else { "could not be reached" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_for_reset_headers() {
        assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(secs_ceil(Duration::from_millis(1001)), 2);
    }
}

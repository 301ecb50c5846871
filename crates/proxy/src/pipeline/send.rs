//! The send stage: the request goes upstream on the account its reservation names,
//! its URL and credentials built by [`crate::upstream`], inside an `upstream` span that
//! the provider's trace context continues; and what comes back when it succeeded (the
//! relay and the settle of [`crate::stream`] and [`crate::usage`]) or got no answer.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sluice_limiter::Reservation;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::{Failure, HOP, Prepared, release};
use crate::error::{ApiError, ratelimit_headers};
use crate::state::{Gateway, ModelState};
use crate::stream::{SseRelay, settle_traced};
use crate::telemetry::{self, SPANS};
use crate::upstream;
use crate::usage::{Settle, usage_in};

/// Sends `body` to the request's path on model `mi`'s upstream, on the reservation's
/// account: the answer (or why there was none) and the `upstream` span it went in.
pub(super) async fn send(
    gw: &Gateway,
    mi: usize,
    res: &Reservation,
    p: &Prepared,
    body: &Bytes,
    attempt: u32,
) -> (reqwest::Result<reqwest::Response>, Span) {
    let inner = &*gw.inner;
    let model = &inner.models[mi];
    let account = &model.accounts[res.candidate];
    let limits = model.quota.limits().iter().zip(res.remaining.iter());
    for (i, (limit, left)) in limits.enumerate() {
        let make = || metrics::gauge!("sluice_headroom", "model" => model.cfg.name.clone(), "account" => account.name.clone(), "limit" => limit.id().to_string());
        model
            .meters
            .headroom(res.candidate, i, make)
            .set(left.remaining as f64);
    }
    let up_span = tracing::trace_span!(
        target: SPANS,
        "upstream",
        otel.kind = "client",
        otel.status_code = Empty,
        attempt = attempt + 1,
        model = %model.cfg.name,
        upstream_model = %model.cfg.upstream_model,
        account = %account.name,
        status = Empty,
        class = Empty,
        retry_reason = Empty,
        error = Empty,
    );
    let mut up_headers = p.forward.clone();
    telemetry::inject(&up_span, &mut up_headers);
    let (client, post) = (&inner.client, Method::POST);
    let request = match model.metered_urls.get(p.endpoint) {
        Some(url) => upstream::request(client, post, url.clone(), model, account, up_headers),
        None => {
            let url = upstream::url(model, p.endpoint.path(), None);
            upstream::request(client, post, url, model, account, up_headers)
        }
    };
    let sent = request
        .body(body.clone())
        .send()
        .instrument(up_span.clone())
        .await;
    (sent, up_span)
}

/// A request that got no answer (`e`): recorded on its span, counted, its reservation
/// released; the failure to answer with if nothing else serves.
pub(super) fn unanswered(
    gw: &Gateway,
    mi: usize,
    res: Reservation,
    e: &reqwest::Error,
    up_span: Span,
) -> Failure {
    let model = &gw.inner.models[mi];
    let account = &model.accounts[res.candidate];
    up_span.in_scope(|| tracing::warn!(error = %without_url(e), model = %model.cfg.name, account = %account.name, "upstream unreachable"));
    up_span.record("otel.status_code", "ERROR");
    up_span.record(
        "error",
        if e.is_timeout() {
            "timeout"
        } else {
            "unreachable"
        },
    );
    up_span.record("retry_reason", "unreachable");
    metrics::counter!("sluice_upstream_errors_total", "model" => model.cfg.name.clone(), "account" => account.name.clone(), "reason" => "unreachable").increment(1);
    release(gw, mi, res, &Span::current());
    Failure::Unreachable(ApiError::Upstream {
        model: model.cfg.name.clone(),
        timeout: e.is_timeout(),
    })
}

/// The answer of a request that succeeded: the provider's status and headers (less
/// hop-by-hop and its own `x-ratelimit-*`, replaced by the tenant's), its body relayed
/// (a stream event by event), and the reservation settled from the usage it reports.
pub(super) async fn success(
    model: &ModelState,
    upstream: reqwest::Response,
    p: &Prepared,
    strip_usage: bool,
    settle: Settle,
    spans: (Span, Span),
) -> Response {
    let c = settle.reservation.candidate;
    if let Some(o) = &settle.gw.inner.observer {
        let account = &model.accounts[c].name;
        let (upstream_name, upstream_model) = (&model.cfg.upstream, &model.cfg.upstream_model);
        o.success(
            &model.sampled_ms[c],
            upstream_name,
            upstream_model,
            account,
            upstream.headers(),
        );
    }
    let status = upstream.status();
    let mut headers = HeaderMap::new();
    for (k, v) in upstream.headers() {
        if !HOP.contains(&k.as_str()) && !k.as_str().starts_with("x-ratelimit-") {
            headers.append(k.clone(), v.clone());
        }
    }
    headers.insert("x-sluice-model", model.model_header.clone());
    headers.insert(
        "x-sluice-account",
        HeaderValue::from_str(&model.accounts[c].name).unwrap_or(HeaderValue::from_static("?")),
    );
    ratelimit_headers(
        &mut headers,
        &settle.reservation.remaining.describe(&model.quota),
        None,
    );
    let is_sse = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let endpoint = p.endpoint;
    let body = if p.stream && is_sse {
        Body::from_stream(SseRelay::new(
            Box::pin(upstream.bytes_stream()),
            endpoint,
            strip_usage,
            model.provider,
            settle,
            spans,
        ))
    } else {
        match upstream.bytes().await {
            Ok(bytes) => {
                settle_traced(settle, usage_in(endpoint, &bytes), &spans.0);
                Body::from(bytes)
            }
            Err(e) => {
                tracing::warn!(error = %without_url(&e), "upstream answer cut; the estimate stands");
                spans.1.record("error", "answer cut");
                settle_traced(settle, None, &spans.0);
                return ApiError::Upstream {
                    model: model.cfg.name.clone(),
                    timeout: e.is_timeout(),
                }
                .into_response();
            }
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// Error text without the URL (it holds nothing secret, but keep logs short).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "<upstream>");
    }
    s
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use sluice_limiter::{Decision, Store};

    use super::super::testing::{gateway, prepared};
    use super::*;
    use crate::estimate::Endpoint;

    #[tokio::test]
    async fn a_success_is_relayed_with_the_tenants_budget_in_place_of_the_providers() {
        let gw = gateway("http://127.0.0.1:9", "");
        let body =
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5});
        let p = prepared(&gw, Endpoint::Chat, body).await;
        let model = &gw.inner.models[0];
        let (cost, raw_prompt) = p.cost_on(model);
        let Ok(Decision::Granted(reservation)) = gw
            .inner
            .limiter
            .acquire(&model.keys, &model.quota, cost, Duration::ZERO)
            .await
        else {
            panic!("no slot");
        };
        let account = model.accounts[reservation.candidate].name.clone();
        let answer = json!({"id": "x", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}});
        let upstream = http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("connection", "keep-alive")
            .header("x-ratelimit-remaining-requests", "999")
            .header("x-provider-trace", "t-1")
            .body(answer.to_string())
            .unwrap();
        let settle = Settle {
            gw: gw.clone(),
            model: 0,
            tenant: p.tenant,
            reservation,
            raw_prompt,
            tenant_hold: crate::tenant_limits::TenantHold::none(),
        };
        let spans = (Span::none(), Span::none());
        let resp = success(
            model,
            reqwest::Response::from(upstream),
            &p,
            false,
            settle,
            spans,
        )
        .await;
        let h = resp.headers();
        assert_eq!(resp.status(), 200);
        assert!(h.get("connection").is_none());
        assert_eq!(
            h["x-provider-trace"], "t-1",
            "the provider's own headers pass"
        );
        assert_eq!(h["x-sluice-model"], "m");
        assert_eq!(h["x-sluice-account"], account.as_str());
        // The provider's figure for its whole account is replaced by the shared budget's.
        assert_eq!(h["x-ratelimit-limit-requests"], "2");
        assert_eq!(h["x-ratelimit-remaining-requests"], "1");
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap(),
            answer
        );
    }
}

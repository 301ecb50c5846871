//! The classify stage: an upstream's error answer read, classified in its dialect
//! ([`sluice_provider::classify`]), observed for the sidecar, and acted on as
//! [`decide`] says — the account kept, cooled down, suspected or disabled — before the
//! request retries, falls back or passes the provider's answer on.
//!
//! Invariants: the failed attempt's reservation is released (it counts as one
//! request); text from the provider is evidence only (its class decides, never its
//! words; one answer never disables the last live account); the provider's answer,
//! when passed on, is passed byte for byte minus hop-by-hop headers.

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use sluice_limiter::{QuotaKey, Reservation, StateChange, Store};
use sluice_provider::{ErrorClass, classify};
use tracing::Span;

use super::{HOP, release};
use crate::decide::{AccountAction, Attempt, Then, decide};
use crate::state::Gateway;

/// Handles the error answer `upstream` to attempt number `attempt` (1-based) of model
/// `mi` on the account of `res`: what the request does next, and the provider's answer
/// to pass on if it stops here.
pub(super) async fn refused(
    gw: &Gateway,
    mi: usize,
    res: Reservation,
    upstream: reqwest::Response,
    attempt: u32,
    up_span: &Span,
) -> (Then, Response) {
    let inner = &*gw.inner;
    let model = &inner.models[mi];
    let account = &model.accounts[res.candidate].name;
    let status = upstream.status();
    let up_headers = upstream.headers().clone();
    let bytes = upstream.bytes().await.unwrap_or_default();
    let c = classify(
        status.as_u16(),
        &up_headers,
        &bytes,
        model.provider,
        SystemTime::now(),
    );
    if let Some(o) = &inner.observer {
        let (upstream_name, upstream_model) = (&model.cfg.upstream, &model.cfg.upstream_model);
        o.error(
            upstream_name,
            upstream_model,
            account,
            status.as_u16(),
            &up_headers,
            &bytes,
        );
    }
    metrics::counter!("sluice_upstream_errors_total", "model" => model.cfg.name.clone(), "account" => account.clone(), "reason" => c.class.as_str()).increment(1);
    up_span.record("class", c.class.as_str());
    up_span.record("otel.status_code", "ERROR");
    up_span.in_scope(|| tracing::warn!(model = %model.cfg.name, account = %account, status = status.as_u16(), class = c.class.as_str(), retry_after_ms = c.retry_after.map(|d| d.as_millis() as u64), "upstream refused"));
    let key = res.key.clone();
    release(gw, mi, res, &Span::current());
    let passed = passthrough(
        status,
        &up_headers,
        Bytes::from(bytes.to_vec()),
        &model.model_header,
    );
    // Issue #12: one answer never takes the last live account out of rotation (see
    // `decide`); the recalibrator disables it when a second refusal from another
    // answer corroborates it (`sluice_recalibrate::Corroboration`).
    let last_live = c.class.disables_account()
        && sluice_recalibrate::is_last_live(&*inner.limiter, &model.keys, &model.quota, &key).await;
    let what = Attempt::Refused {
        class: c.class,
        should_retry: c.should_retry,
        retry_after: c.retry_after,
        last_live,
    };
    let decision = decide(what, attempt, inner.config.retry.max_attempts.get());
    let reason = format!(
        "{} (HTTP {}) on {account}",
        c.class.as_str(),
        status.as_u16()
    );
    act_on_account(gw, mi, &key, decision.account, c.class, reason).await;
    if let Then::Retry { .. } | Then::Fallback = decision.then {
        if matches!(decision.then, Then::Retry { .. }) && decision.account != AccountAction::Disable
        {
            metrics::counter!("sluice_retries_total", "model" => model.cfg.name.clone(), "reason" => c.class.as_str()).increment(1);
        }
        up_span.record("retry_reason", c.class.as_str());
    }
    (decision.then, passed)
}

/// Does to the account what [`decide`] said: keep it, suspect it (a short cooldown),
/// cool it down (the provider's wait, else a default bounded by the windows), or take
/// it out of rotation for every model of its upstream.
async fn act_on_account(
    gw: &Gateway,
    mi: usize,
    key: &QuotaKey,
    action: AccountAction,
    class: ErrorClass,
    reason: String,
) {
    let inner = &*gw.inner;
    let model = &inner.models[mi];
    let account = key.name();
    let cooldown = match action {
        AccountAction::Keep => None,
        AccountAction::Suspect => {
            metrics::counter!("sluice_accounts_suspected_total", "model" => model.cfg.name.clone(), "account" => account.to_owned(), "reason" => class.as_str()).increment(1);
            tracing::warn!(model = %model.cfg.name, account, reason, "last live account refused: kept in rotation until a second refusal corroborates it");
            Some(inner.config.sidecar.default_cooldown)
        }
        AccountAction::Disable => {
            metrics::counter!("sluice_accounts_disabled_total", "model" => model.cfg.name.clone(), "account" => account.to_owned(), "reason" => class.as_str()).increment(1);
            tracing::error!(model = %model.cfg.name, account, reason, "account disabled until an operator clears it");
            disable_everywhere(gw, &model.cfg.upstream, account, reason).await;
            None
        }
        AccountAction::Cooldown(wait) => Some(
            wait.unwrap_or_else(|| {
                let default = inner.config.sidecar.default_cooldown;
                sluice_recalibrate::cooldown_without_wait(&model.quota, default)
            })
            .max(Duration::from_millis(50)),
        ),
    };
    if let Some(cooldown) = cooldown {
        let change = StateChange::Cooldown(cooldown);
        if let Err(e) = inner.limiter.update(key, &model.quota, change).await {
            tracing::warn!(error = %e, "cooldown not recorded");
        }
    }
}

/// An upstream answer passed on as it came (minus hop-by-hop headers).
pub(super) fn passthrough(
    status: StatusCode,
    headers: &HeaderMap,
    body: Bytes,
    model: &HeaderValue,
) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    for (k, v) in headers {
        if !HOP.contains(&k.as_str()) {
            resp.headers_mut().append(k.clone(), v.clone());
        }
    }
    resp.headers_mut().insert("x-sluice-model", model.clone());
    resp
}

/// Takes a dead account out of rotation for every model of the upstream that uses it
/// (the key is the same account everywhere).
async fn disable_everywhere(gw: &Gateway, upstream: &str, account: &str, reason: String) {
    for m in gw
        .inner
        .models
        .iter()
        .filter(|m| m.cfg.upstream == upstream)
    {
        if let Some(k) = m.keys.iter().find(|k| k.name() == account)
            && let Err(e) = gw
                .inner
                .limiter
                .update(k, &m.quota, StateChange::Disable(reason.clone()))
                .await
        {
            tracing::warn!(error = %e, "disable not recorded");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_limiter::Decision;

    use super::super::testing::gateway;
    use super::*;

    const URL: &str = "http://127.0.0.1:9";

    /// A reservation of one request on model `mi`.
    async fn reservation(gw: &Gateway, mi: usize) -> Reservation {
        let m = &gw.inner.models[mi];
        let one = sluice_limiter::Cost::request(1, 1);
        match gw
            .inner
            .limiter
            .acquire(&m.keys, &m.quota, one, Duration::ZERO)
            .await
        {
            Ok(Decision::Granted(res)) => res,
            other => panic!("no slot: {other:?}"),
        }
    }

    fn answer(status: u16, headers: &[(&str, &str)], body: serde_json::Value) -> reqwest::Response {
        let mut b = http::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        reqwest::Response::from(b.body(body.to_string()).unwrap())
    }

    async fn state(gw: &Gateway, mi: usize, key: &QuotaKey) -> sluice_limiter::QuotaStatus {
        let m = &gw.inner.models[mi];
        gw.inner
            .limiter
            .status(key, &m.quota)
            .await
            .expect("status")
    }

    #[tokio::test]
    async fn a_throttled_answer_cools_the_account_down_for_the_providers_wait_and_moves_on() {
        let gw = gateway(URL, "");
        let res = reservation(&gw, 0).await;
        let key = res.key.clone();
        let body = json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}});
        let throttled = answer(429, &[("retry-after", "7"), ("connection", "close")], body);
        let (then, passed) = refused(&gw, 0, res, throttled, 1, &Span::none()).await;
        assert!(
            matches!(then, Then::Retry { .. } | Then::Fallback),
            "{then:?}"
        );
        assert_eq!(passed.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            passed.headers().get("connection").is_none(),
            "hop-by-hop headers stay here"
        );
        assert_eq!(passed.headers()["x-sluice-model"], "m");
        let cooldown = state(&gw, 0, &key).await.cooldown.expect("cooled down");
        assert!(
            cooldown > Duration::from_secs(5) && cooldown <= Duration::from_secs(7),
            "{cooldown:?}"
        );
    }

    #[tokio::test]
    async fn a_dead_key_is_taken_out_of_rotation_on_every_model_of_its_upstream() {
        let gw = gateway(URL, "");
        let res = reservation(&gw, 0).await;
        let account = res.key.name().to_owned();
        let body = json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}});
        let (then, passed) = refused(&gw, 0, res, answer(401, &[], body), 1, &Span::none()).await;
        assert!(
            matches!(then, Then::Retry { .. } | Then::Fallback),
            "another account serves: {then:?}"
        );
        assert_eq!(passed.status(), StatusCode::UNAUTHORIZED);
        for mi in 0..2 {
            let key = gw.inner.models[mi]
                .keys
                .iter()
                .find(|k| k.name() == account)
                .unwrap()
                .clone();
            let off = state(&gw, mi, &key).await.disabled;
            assert!(off.is_some_and(|r| r.contains("invalid")), "model {mi}");
        }
        let other = gw.inner.models[0]
            .keys
            .iter()
            .find(|k| k.name() != account)
            .unwrap()
            .clone();
        assert_eq!(
            state(&gw, 0, &other).await.disabled,
            None,
            "the other account serves on"
        );
    }
}

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
        && sluice_recalibrate::is_last_live(&inner.limiter, &model.keys, &model.quota, &key).await;
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

//! The request path: authenticate, estimate, queue for a slot on the best account of
//! the model (falling back along its `fallback` list), forward, retry what a provider
//! throttled, and answer — with the upstream's answer, or an honest refusal.

use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::Value;
use sluice_limiter::{
    Cost, Decision, LimitError, LimitId, RefusalReason, ReleaseOutcome, Remaining, Reservation,
    StateChange, Store,
};
use sluice_provider::{ErrorClass, classify};
use tracing::field::Empty;
use tracing::{Instrument, Span};

use crate::error::{ApiError, RateLimited, ratelimit_headers};
use crate::estimate::{Endpoint, output_tokens, prompt_tokens_bounded};
use crate::request;
use crate::state::{Gateway, Inner, ModelState};
use crate::stream::{SseRelay, settle_traced};
use crate::telemetry::{self, SPANS};
use crate::usage::{Settle, reconcile, usage_in};

/// Headers never copied from an upstream answer.
const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "set-cookie",
    "upgrade",
    "proxy-connection",
];

/// Client headers passed upstream (the rest, auth included, stays here).
const FORWARD: &[&str] = &[
    "accept",
    "content-type",
    "openai-beta",
    "anthropic-version",
    "anthropic-beta",
    "user-agent",
];

fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get("x-request-id")
        .filter(|v| v.len() <= 128)
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&format!("{:016x}", rand::random::<u64>()))
                .unwrap_or(HeaderValue::from_static("0"))
        })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return Some(
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .unwrap_or(v)
                .trim(),
        );
    }
    ["api-key", "x-api-key"]
        .iter()
        .find_map(|h| headers.get(*h)?.to_str().ok())
}

fn jitter(inner: &Inner, attempt: u32) -> Duration {
    let r = &inner.config.retry;
    let ceiling = r.base.saturating_mul(1u32 << attempt.min(16)).min(r.cap);
    ceiling.mul_f64(rand::random::<f64>())
}

/// What bound a refusal, for its log line and span: the account (its name, never its
/// key) and the limit (`100 requests per 60s`).
struct Bound {
    account: String,
    limit: String,
}

/// What stopped the last try, to answer with when every model is exhausted.
enum Failure {
    None,
    Refused(RateLimited, Bound),
    TooLarge(ApiError),
    Disabled { model: String, reason: String },
    StoreDown(Duration),
    Upstream(Response),
    Unreachable(ApiError),
}

/// Serves `/v1/chat/completions`, `/v1/completions` and `/v1/embeddings`.
pub(crate) async fn completions(
    gw: Gateway,
    endpoint: Endpoint,
    path: &'static str,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let rid = request_id(&headers);
    let started = Instant::now();
    let span = tracing::trace_span!(
        target: SPANS,
        "request",
        otel.kind = "server",
        otel.status_code = Empty,
        request_id = rid.to_str().unwrap_or("?"),
        route = path,
        model = Empty,
        tenant = Empty,
        account = Empty,
        outcome = Empty,
        status = Empty,
        limit = Empty,
        retry_after_ms = Empty,
    );
    telemetry::continue_trace(&span, &headers);
    let (tenant, mut resp, model, account, outcome, refusal) =
        match serve(&gw, endpoint, path, &headers, body, started)
            .instrument(span.clone())
            .await
        {
            Ok(done) => (
                done.tenant,
                done.response,
                done.model,
                done.account,
                done.outcome,
                None,
            ),
            Err((tenant, model, e, bound)) => {
                let kind = e.kind();
                let refusal = match (&e, bound) {
                    (ApiError::RateLimited(r), Some(b)) => Some((b, r.retry_after)),
                    _ => None,
                };
                (
                    tenant,
                    e.into_response(),
                    model,
                    "none".to_owned(),
                    kind,
                    refusal,
                )
            }
        };
    let tenant = tenant
        .map_or("unknown", |t| gw.inner.tenant_name(t))
        .to_owned();
    let status = resp.status().as_u16();
    // A refusal names the account (never its key) and the limit that bound it.
    let (log_account, limit, retry_after_ms) = match &refusal {
        Some((b, after)) => (
            b.account.as_str(),
            Some(b.limit.as_str()),
            Some(after.as_millis() as u64),
        ),
        None => (account.as_str(), None, None),
    };
    if !span.is_disabled() {
        span.record("model", model.as_str());
        span.record("tenant", tenant.as_str());
        span.record("account", log_account);
        span.record("outcome", outcome);
        span.record("status", status);
        span.record("limit", limit);
        span.record("retry_after_ms", retry_after_ms);
        if status >= 500 {
            span.record("otel.status_code", "ERROR");
        }
    }
    tracing::info!(request_id = ?rid, tenant = %tenant, model = %model, account = %log_account, outcome, status, limit, retry_after_ms, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "request");
    metrics::counter!("sluice_requests_total", "model" => model, "tenant" => tenant, "account" => account, "outcome" => outcome).increment(1);
    resp.headers_mut().insert("x-request-id", rid);
    if let Some(trace) = telemetry::trace_id(&span) {
        resp.headers_mut().insert("x-trace-id", trace);
    }
    resp
}

struct Done {
    tenant: Option<usize>,
    response: Response,
    model: String,
    account: String,
    outcome: &'static str,
}

type Refuse = (Option<usize>, String, ApiError, Option<Bound>);

async fn serve(
    gw: &Gateway,
    endpoint: Endpoint,
    path: &'static str,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Result<Done, Refuse> {
    let inner = &*gw.inner;
    // `serve` runs inside the `request` span.
    let request_span = Span::current();
    let Some(tenant) = inner.tenant(bearer(headers)) else {
        return Err((None, "none".into(), ApiError::Unauthorized, None));
    };
    let refuse = |e: ApiError| (Some(tenant), "none".to_owned(), e, None);
    request::check_content_type(headers).map_err(refuse)?;
    let header_wait = request::header_max_wait(headers).map_err(refuse)?;
    let server = &inner.config.server;
    let body = request::read_body(headers, body, server.max_body_bytes, server.body_timeout)
        .await
        .map_err(refuse)?;
    let (json, name) = request::parse(endpoint, &body).map_err(refuse)?;
    let name = name.as_str();
    let Some(&first) = inner.by_name.get(name) else {
        return Err((
            Some(tenant),
            "none".into(),
            ApiError::ModelNotFound(name.to_owned()),
            None,
        ));
    };
    let stream = endpoint != Endpoint::Embeddings
        && json.get("stream").and_then(Value::as_bool) == Some(true);
    let client_usage = json
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);

    let t = inner.tenants.get(tenant);
    let mut max_wait = t
        .and_then(|t| t.max_wait)
        .unwrap_or(inner.config.queue.max_wait)
        .min(inner.config.queue.max_wait);
    if let Some(h) = header_wait {
        max_wait = max_wait.min(h);
    }
    let weight = t.map_or(1, |t| t.weight);
    let deadline = started + max_wait;

    let mut forward = HeaderMap::new();
    for h in FORWARD {
        if let Some(v) = headers.get(*h) {
            forward.insert(*h, v.clone());
        }
    }
    forward
        .entry(http::header::CONTENT_TYPE)
        .or_insert(HeaderValue::from_static("application/json"));

    let mut failure = Failure::None;
    let chain = inner.models[first].chain.clone();
    'models: for (hop, &mi) in chain.iter().enumerate() {
        let model = &inner.models[mi];
        if hop > 0 {
            metrics::counter!("sluice_fallbacks_total", "from" => inner.models[first].cfg.name.clone(), "to" => model.cfg.name.clone()).increment(1);
        }
        // The body as this model's upstream needs it.
        let needs_model = model.cfg.upstream_model != name;
        let needs_usage = stream && !client_usage;
        let upstream_body = if needs_model || needs_usage {
            let mut j = json.clone();
            if let Some(obj) = j.as_object_mut() {
                obj.insert(
                    "model".into(),
                    Value::String(model.cfg.upstream_model.clone()),
                );
                if needs_usage {
                    let so = obj
                        .entry("stream_options")
                        .or_insert_with(|| Value::Object(Default::default()));
                    if let Some(so) = so.as_object_mut() {
                        so.insert("include_usage".into(), Value::Bool(true));
                    }
                }
            }
            Bytes::from(serde_json::to_vec(&j).unwrap_or_default())
        } else {
            body.clone()
        };
        let raw_prompt = prompt_tokens_bounded(endpoint, &json, model.cfg.tokenizer, body.len());
        let cost = Cost::request(
            model.learner.correct(raw_prompt),
            output_tokens(endpoint, &json, model.cfg.output_estimate),
        );

        let mut attempt = 0u32;
        while attempt < inner.config.retry.max_attempts.get() {
            let queue_span = tracing::trace_span!(
                target: SPANS,
                "queue_wait",
                attempt = attempt + 1,
                model = %model.cfg.name,
                gate_wait_ms = Empty,
                slot_wait_ms = Empty,
                wait_ms = Empty,
                outcome = Empty,
            );
            let gate_t0 = Instant::now();
            let remaining = deadline.saturating_duration_since(gate_t0);
            let Some(permit) = model.gate.admit(tenant, weight, remaining).await else {
                queue_span.record("outcome", "queue_full");
                failure = Failure::Refused(
                    RateLimited {
                        model: model.cfg.name.clone(),
                        retry_after: model.booked_ahead().max(Duration::from_millis(100)),
                        what: format!(
                            "queue full at this gateway: queue.booked_ahead = {} requests of this model already hold a slot",
                            inner.config.queue.booked_ahead
                        ),
                        remaining: Vec::new(),
                    },
                    Bound {
                        account: "none".into(),
                        limit: "queue.booked_ahead at this gateway".into(),
                    },
                );
                break;
            };
            let t0 = Instant::now();
            let remaining = deadline.saturating_duration_since(t0);
            let acquire_span = tracing::trace_span!(
                target: SPANS,
                parent: &queue_span,
                "limiter.acquire",
                candidates = model.keys.len(),
                cost_tokens = cost.input_tokens + cost.output_tokens,
                otel.status_code = Empty,
                decision = Empty,
                account = Empty,
                quota_key = Empty,
                reason = Empty,
                limit = Empty,
                retry_after_ms = Empty,
                remaining = Empty,
            );
            let decision = inner
                .limiter
                .acquire(&model.keys, &model.quota, cost, remaining)
                .instrument(acquire_span.clone())
                .await;
            metrics::histogram!("sluice_limiter_seconds", "op" => "acquire")
                .record(t0.elapsed().as_secs_f64());
            if !queue_span.is_disabled() {
                queue_span.record("gate_wait_ms", ms(t0 - gate_t0));
                record_decision(&acquire_span, &decision, model);
            }
            drop(acquire_span);
            let res = match decision {
                Ok(Decision::Granted(res)) => res,
                Ok(Decision::Refused(r)) => {
                    queue_span.record("outcome", "refused");
                    failure = match r.reason {
                        RefusalReason::Disabled(reason) => Failure::Disabled {
                            model: model.cfg.name.clone(),
                            reason,
                        },
                        RefusalReason::Unavailable => {
                            Failure::StoreDown(r.retry_after.unwrap_or(Duration::from_secs(1)))
                        }
                        reason => Failure::Refused(
                            RateLimited {
                                model: model.cfg.name.clone(),
                                retry_after: r
                                    .retry_after
                                    .unwrap_or(max_wait)
                                    .max(Duration::from_millis(1)),
                                what: describe(&reason, &r.remaining, model),
                                remaining: r.remaining.clone(),
                            },
                            Bound {
                                account: model
                                    .accounts
                                    .get(r.candidate)
                                    .map_or("none", |a| a.name.as_str())
                                    .to_owned(),
                                limit: binding_limit(&reason, &r.remaining, model),
                            },
                        ),
                    };
                    break;
                }
                Err(LimitError::InsufficientCapacity {
                    limit,
                    capacity,
                    cost,
                }) => {
                    if matches!(failure, Failure::None) {
                        failure = Failure::TooLarge(ApiError::TooLarge {
                            model: model.cfg.name.clone(),
                            limit: limit.to_string(),
                            capacity,
                            cost,
                        });
                    }
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "limiter failed");
                    failure = Failure::StoreDown(Duration::from_secs(1));
                    break;
                }
            };
            model.booked_ahead_us.store(
                res.wait.as_micros() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            metrics::histogram!("sluice_queue_wait_seconds", "model" => model.cfg.name.clone())
                .record(res.wait.as_secs_f64());
            // Until the request is sent, a client that goes away (hyper drops this
            // future) gives the slot back for a later waiter.
            let waiting = AbandonedWait::new(gw, mi, res);
            if !waiting.wait().is_zero() {
                tokio::time::sleep(waiting.wait()).await;
            }
            let res = waiting.sent();
            drop(permit);
            if !queue_span.is_disabled() {
                queue_span.record("outcome", "slot");
                queue_span.record("slot_wait_ms", ms(res.wait));
                queue_span.record("wait_ms", ms(gate_t0.elapsed()));
            }
            drop(queue_span);
            let account = &model.accounts[res.candidate];
            for r in &res.remaining {
                metrics::gauge!("sluice_headroom", "model" => model.cfg.name.clone(), "account" => account.name.clone(), "limit" => r.limit.to_string()).set(r.remaining as f64);
            }

            let mut url = String::with_capacity(model.base_url.len() + path.len() + 32);
            url.push_str(&model.base_url);
            url.push_str(path);
            if let Some(v) = &model.api_version {
                url.push_str("?api-version=");
                url.push_str(v);
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
            let mut up_headers = forward.clone();
            telemetry::inject(&up_span, &mut up_headers);
            let auth = account.auth();
            let sent = inner
                .client
                .post(url)
                .headers(up_headers)
                .header(auth.0.clone(), auth.1.clone())
                .body(upstream_body.clone())
                .send()
                .instrument(up_span.clone())
                .await;
            let upstream = match sent {
                Ok(u) => u,
                Err(e) => {
                    up_span.in_scope(|| tracing::warn!(error = %without_url(&e), model = %model.cfg.name, account = %account.name, "upstream unreachable"));
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
                    release(gw, mi, res, &request_span);
                    failure = Failure::Unreachable(ApiError::Upstream {
                        model: model.cfg.name.clone(),
                        timeout: e.is_timeout(),
                    });
                    drop(up_span);
                    if e.is_timeout() {
                        // The provider may still be working on it (and charging for
                        // it): another attempt could double the spend and the wait.
                        break 'models;
                    }
                    attempt += 1;
                    backoff(inner, attempt, deadline).await;
                    continue;
                }
            };
            let status = upstream.status();
            up_span.record("status", status.as_u16());
            if status.is_success() {
                if let Some(o) = &inner.observer {
                    o.success(
                        &model.sampled_ms[res.candidate],
                        &model.cfg.upstream,
                        &model.cfg.upstream_model,
                        &account.name,
                        upstream.headers(),
                    );
                }
                let settle = Settle {
                    gw: gw.clone(),
                    model: mi,
                    tenant,
                    reservation: res,
                    raw_prompt,
                };
                let spans = (request_span.clone(), up_span.clone());
                let response = success(model, upstream, stream, needs_usage, settle, spans)
                    .instrument(up_span)
                    .await;
                return Ok(Done {
                    tenant: Some(tenant),
                    response,
                    model: model.cfg.name.clone(),
                    account: account.name.clone(),
                    outcome: if hop > 0 { "ok_fallback" } else { "ok" },
                });
            }

            // An upstream error: classify, update the account, retry or pass it on.
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
                o.error(
                    &model.cfg.upstream,
                    &model.cfg.upstream_model,
                    &account.name,
                    status.as_u16(),
                    &up_headers,
                    &bytes,
                );
            }
            metrics::counter!("sluice_upstream_errors_total", "model" => model.cfg.name.clone(), "account" => account.name.clone(), "reason" => c.class.as_str()).increment(1);
            up_span.record("class", c.class.as_str());
            up_span.record("otel.status_code", "ERROR");
            up_span.in_scope(|| tracing::warn!(model = %model.cfg.name, account = %account.name, status = status.as_u16(), class = c.class.as_str(), retry_after_ms = c.retry_after.map(|d| d.as_millis() as u64), "upstream refused"));
            let key = res.key.clone();
            release(gw, mi, res, &request_span);
            let passed = passthrough(
                status,
                &up_headers,
                Bytes::from(bytes.to_vec()),
                &model.model_header,
            );
            if c.class.disables_account() {
                let reason = format!(
                    "{} (HTTP {}) on {}",
                    c.class.as_str(),
                    status.as_u16(),
                    account.name
                );
                // Issue #12: one answer never takes the last live account out of
                // rotation. In-band, the last one is only cooled down and the refusal
                // passed on without a retry; the recalibrator (embedded, or the
                // sidecar's) disables it when a second refusal from another answer
                // corroborates it (`sluice_recalibrate::Corroboration`).
                if sluice_recalibrate::is_last_live(&inner.limiter, &model.keys, &model.quota, &key)
                    .await
                {
                    metrics::counter!("sluice_accounts_suspected_total", "model" => model.cfg.name.clone(), "account" => account.name.clone(), "reason" => c.class.as_str()).increment(1);
                    tracing::warn!(model = %model.cfg.name, account = %account.name, reason = %reason, "last live account refused: kept in rotation until a second refusal corroborates it");
                    if let Err(e) = inner
                        .limiter
                        .update(
                            &key,
                            &model.quota,
                            StateChange::Cooldown(inner.config.sidecar.default_cooldown),
                        )
                        .await
                    {
                        tracing::warn!(error = %e, "cooldown not recorded");
                    }
                    return Ok(Done {
                        tenant: Some(tenant),
                        response: passed,
                        model: model.cfg.name.clone(),
                        account: account.name.clone(),
                        outcome: "upstream_error",
                    });
                }
                metrics::counter!("sluice_accounts_disabled_total", "model" => model.cfg.name.clone(), "account" => account.name.clone(), "reason" => c.class.as_str()).increment(1);
                tracing::error!(model = %model.cfg.name, account = %account.name, reason = %reason, "account disabled until an operator clears it");
                disable_everywhere(gw, &model.cfg.upstream, account.name.as_str(), &key, reason)
                    .await;
                up_span.record("retry_reason", c.class.as_str());
                failure = Failure::Upstream(passed);
                attempt += 1;
                continue;
            }
            if !c.class.is_retryable() || c.should_retry == Some(false) {
                return Ok(Done {
                    tenant: Some(tenant),
                    response: passed,
                    model: model.cfg.name.clone(),
                    account: account.name.clone(),
                    outcome: "upstream_error",
                });
            }
            if let ErrorClass::Throttled(_) = c.class {
                let cooldown = c
                    .retry_after
                    .unwrap_or_else(|| {
                        sluice_recalibrate::cooldown_without_wait(
                            &model.quota,
                            inner.config.sidecar.default_cooldown,
                        )
                    })
                    .max(Duration::from_millis(50));
                if let Err(e) = inner
                    .limiter
                    .update(&key, &model.quota, StateChange::Cooldown(cooldown))
                    .await
                {
                    tracing::warn!(error = %e, "cooldown not recorded");
                }
            }
            metrics::counter!("sluice_retries_total", "model" => model.cfg.name.clone(), "reason" => c.class.as_str()).increment(1);
            up_span.record("retry_reason", c.class.as_str());
            drop(up_span);
            failure = Failure::Upstream(passed);
            attempt += 1;
            backoff(inner, attempt, deadline).await;
        }
    }

    let name = name.to_owned();
    match failure {
        Failure::Upstream(response) => Ok(Done {
            tenant: Some(tenant),
            response,
            model: name,
            account: "none".into(),
            outcome: "upstream_error",
        }),
        Failure::Refused(r, bound) => {
            Err((Some(tenant), name, ApiError::RateLimited(r), Some(bound)))
        }
        Failure::TooLarge(e) | Failure::Unreachable(e) => Err((Some(tenant), name, e, None)),
        Failure::Disabled { model, reason } => Err((
            Some(tenant),
            name,
            ApiError::AccountsDisabled { model, reason },
            None,
        )),
        Failure::StoreDown(retry_after) => Err((
            Some(tenant),
            name,
            ApiError::StoreUnavailable { retry_after },
            None,
        )),
        Failure::None => Err((
            Some(tenant),
            name.clone(),
            ApiError::Upstream {
                model: name,
                timeout: false,
            },
            None,
        )),
    }
}

/// Takes a dead account out of rotation for every model of the upstream that uses it
/// (the key is the same account everywhere).
async fn disable_everywhere(
    gw: &Gateway,
    upstream: &str,
    account: &str,
    _key: &sluice_limiter::QuotaKey,
    reason: String,
) {
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

async fn backoff(inner: &Inner, attempt: u32, deadline: Instant) {
    let pause = jitter(inner, attempt).min(deadline.saturating_duration_since(Instant::now()));
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
}

/// A limit of the model in words, as the operator configured it: `100 requests per 60s`
/// (the quota's own window is a little longer, by the latency allowance).
fn describe_limit(id: &LimitId, model: &ModelState) -> String {
    use sluice_config::LimitUnit;
    use sluice_limiter::Unit;
    let Some(l) = model.quota.limits().iter().find(|l| l.id() == id) else {
        return format!("limit {id}");
    };
    let window = l.window().length();
    let per = model
        .cfg
        .limits
        .iter()
        .filter(|s| {
            s.amount.get() == l.amount()
                && s.per <= window
                && matches!(
                    (s.unit, l.unit()),
                    (LimitUnit::Requests, Unit::Requests)
                        | (LimitUnit::Tokens, Unit::Tokens)
                        | (LimitUnit::InputTokens, Unit::InputTokens)
                        | (LimitUnit::OutputTokens, Unit::OutputTokens)
                )
        })
        .map(|s| s.per)
        .max()
        .unwrap_or(window);
    format!("{} {} per {per:?}", l.amount(), l.unit().as_str())
}

/// The limit with the least left, as a share of what it allows.
fn tightest(remaining: &[Remaining]) -> Option<&Remaining> {
    remaining
        .iter()
        .min_by_key(|r| (r.remaining as u128 * 1_000_000) / u128::from(r.effective.max(1)))
}

/// The limit that bound a refusal, in words (for its log line and span).
fn binding_limit(reason: &RefusalReason, remaining: &[Remaining], model: &ModelState) -> String {
    match reason {
        RefusalReason::Limit(id) => describe_limit(id, model),
        RefusalReason::Queue => tightest(remaining).map_or_else(
            || "the shared queue".into(),
            |r| describe_limit(&r.limit, model),
        ),
        RefusalReason::Pacing => "pacing".into(),
        RefusalReason::Cooldown => "provider cooldown".into(),
        RefusalReason::Disabled(_) => "accounts out of rotation".into(),
        RefusalReason::Unavailable => "store unavailable".into(),
        _ => "no slot".into(),
    }
}

/// The reason of a refusal, as a span attribute.
fn reason_label(reason: &RefusalReason) -> &'static str {
    match reason {
        RefusalReason::Limit(_) => "limit",
        RefusalReason::Queue => "queue",
        RefusalReason::Pacing => "pacing",
        RefusalReason::Cooldown => "cooldown",
        RefusalReason::Disabled(_) => "disabled",
        RefusalReason::Unavailable => "unavailable",
        _ => "other",
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Records the limiter's decision on its span (only called when the span is enabled).
fn record_decision(span: &Span, decision: &Result<Decision, LimitError>, model: &ModelState) {
    let remaining = |rs: &[Remaining]| {
        rs.iter()
            .map(|r| format!("{}={}/{}", r.limit, r.remaining, r.effective))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let account = |i: usize| model.accounts.get(i).map_or("none", |a| a.name.as_str());
    match decision {
        Ok(Decision::Granted(res)) => {
            span.record("decision", "granted");
            span.record("account", account(res.candidate));
            span.record("quota_key", res.key.to_string());
            span.record("remaining", remaining(&res.remaining));
        }
        Ok(Decision::Refused(r)) => {
            span.record("decision", "refused");
            span.record("account", account(r.candidate));
            if let Some(k) = model.keys.get(r.candidate) {
                span.record("quota_key", k.to_string());
            }
            span.record("reason", reason_label(&r.reason));
            span.record("limit", binding_limit(&r.reason, &r.remaining, model));
            span.record(
                "retry_after_ms",
                r.retry_after.map(|d| d.as_millis() as u64),
            );
            span.record("remaining", remaining(&r.remaining));
        }
        Err(LimitError::InsufficientCapacity { limit, .. }) => {
            span.record("decision", "too_large");
            span.record("limit", describe_limit(limit, model));
        }
        Err(_) => {
            span.record("decision", "error");
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// Gives back what a failed attempt reserved (it counts as one request), under a
/// `reconcile` span.
fn release(gw: &Gateway, mi: usize, res: Reservation, parent: &Span) {
    let span = tracing::trace_span!(
        target: SPANS,
        parent: parent,
        "reconcile",
        estimated_input_tokens = res.cost.input_tokens,
        estimated_output_tokens = res.cost.output_tokens,
        actual_input_tokens = 0,
        actual_output_tokens = 0,
        usage_known = false,
    );
    let _entered = span.enter();
    reconcile(
        gw.clone(),
        mi,
        res,
        Cost {
            requests: 1,
            input_tokens: 0,
            output_tokens: 0,
        },
    );
}

fn describe(reason: &RefusalReason, remaining: &[Remaining], model: &ModelState) -> String {
    match reason {
        RefusalReason::Limit(id) => describe_limit(id, model),
        RefusalReason::Queue => match tightest(remaining) {
            Some(r) => format!(
                "earlier requests hold every slot of {} up to the deadline",
                describe_limit(&r.limit, model)
            ),
            None => "earlier requests hold every slot up to the deadline".into(),
        },
        RefusalReason::Pacing => {
            "requests are paced and the next slot is after the deadline".into()
        }
        RefusalReason::Cooldown => "the provider asked to slow down".into(),
        RefusalReason::Disabled(r) => format!("accounts out of rotation: {r}"),
        RefusalReason::Unavailable => "the shared store is unavailable".into(),
        _ => "no slot".into(),
    }
}

/// Error text without the URL (it holds nothing secret, but keep logs short).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "<upstream>");
    }
    s
}

/// An upstream answer passed on as it came (minus hop-by-hop headers).
fn passthrough(
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

async fn success(
    model: &ModelState,
    upstream: reqwest::Response,
    stream: bool,
    strip_usage: bool,
    settle: Settle,
    spans: (Span, Span),
) -> Response {
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
        HeaderValue::from_str(&model.accounts[settle.reservation.candidate].name)
            .unwrap_or(HeaderValue::from_static("?")),
    );
    ratelimit_headers(&mut headers, &settle.reservation.remaining, None);
    let is_sse = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let body = if stream && is_sse {
        Body::from_stream(SseRelay::new(
            Box::pin(upstream.bytes_stream()),
            strip_usage,
            model.provider,
            settle,
            spans,
        ))
    } else {
        match upstream.bytes().await {
            Ok(bytes) => {
                settle_traced(settle, usage_in(&bytes), &spans.0);
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

/// Any other `/v1/*` request: passed through on an account of the model it names (or
/// the first model), counted as one request, when its path is safe and defined.
///
/// The raw request target is checked before anything is decoded or read
/// ([`paths::check_shape`]): a dot segment (raw or percent-encoded), an encoded slash
/// or backslash, a backslash, NUL, an empty segment or any `%` escape is a 400; a path
/// that neither the upstream's dialect ([`paths::dialect_paths`]) nor its configured
/// `passthrough` defines is a 404. Neither is ever sent upstream, so no path can leave
/// the upstream's `base_url` with an account's key.
pub(crate) async fn other(
    gw: Gateway,
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let inner = &*gw.inner;
    if let Err(why) = crate::paths::check_shape(uri.path()) {
        return ApiError::BadRequest {
            message: format!("Invalid URL: {why}; nothing was forwarded."),
            param: None,
            code: "invalid_path",
        }
        .into_response();
    }
    let Some(tenant) = inner.tenant(bearer(&headers)) else {
        return ApiError::Unauthorized.into_response();
    };
    let header_wait = match request::header_max_wait(&headers) {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let server = &inner.config.server;
    let body = match request::read_body(&headers, body, server.max_body_bytes, server.body_timeout)
        .await
    {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let named = serde_json::from_slice::<Value>(&body).ok().and_then(|j| {
        j.get("model")
            .and_then(Value::as_str)
            .and_then(|n| inner.by_name.get(n).copied())
    });
    let Some(mi) = named.or(if inner.models.is_empty() {
        None
    } else {
        Some(0)
    }) else {
        return ApiError::ModelNotFound("(none configured)".into()).into_response();
    };
    let model = &inner.models[mi];
    let upstream = &inner.config.upstreams[model.cfg.upstream_index];
    if !crate::paths::allowed(upstream.dialect, &upstream.passthrough, uri.path()) {
        return ApiError::UnknownUrl {
            method: method.to_string(),
            path: uri.path().chars().take(200).collect(),
        }
        .into_response();
    }
    let max_wait = header_wait
        .unwrap_or(inner.config.queue.max_wait)
        .min(inner.config.queue.max_wait);
    let decision = inner
        .limiter
        .acquire(
            &model.keys,
            &model.quota,
            Cost {
                requests: 1,
                input_tokens: 0,
                output_tokens: 0,
            },
            max_wait,
        )
        .await;
    let res: Reservation = match decision {
        Ok(Decision::Granted(r)) => r,
        Ok(Decision::Refused(r)) => {
            return ApiError::RateLimited(RateLimited {
                model: model.cfg.name.clone(),
                retry_after: r
                    .retry_after
                    .unwrap_or(max_wait)
                    .max(Duration::from_millis(1)),
                what: describe(&r.reason, &r.remaining, model),
                remaining: r.remaining,
            })
            .into_response();
        }
        Err(_) => {
            return ApiError::StoreUnavailable {
                retry_after: Duration::from_secs(1),
            }
            .into_response();
        }
    };
    let waiting = AbandonedWait::new(&gw, mi, res);
    if !waiting.wait().is_zero() {
        tokio::time::sleep(waiting.wait()).await;
    }
    let res = waiting.sent();
    let account = &model.accounts[res.candidate];
    let auth = account.auth();
    let suffix = uri.path().strip_prefix("/v1").unwrap_or(uri.path());
    let mut url = format!("{}{}", model.base_url, suffix);
    if let Some(q) = uri.query() {
        url.push('?');
        url.push_str(q);
    }
    let mut req = inner
        .client
        .request(method, url)
        .header(auth.0.clone(), auth.1.clone())
        .body(body);
    for h in FORWARD {
        if let Some(v) = headers.get(*h) {
            req = req.header(*h, v.clone());
        }
    }
    metrics::counter!("sluice_requests_total", "model" => model.cfg.name.clone(), "tenant" => inner.tenant_name(tenant).to_owned(), "account" => account.name.clone(), "outcome" => "passthrough").increment(1);
    match req.send().await {
        Ok(up) => {
            let status = up.status();
            let headers: HeaderMap = up
                .headers()
                .iter()
                .filter(|(k, _)| !HOP.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut resp = Response::new(Body::from_stream(up.bytes_stream()));
            *resp.status_mut() = status;
            *resp.headers_mut() = headers;
            resp.headers_mut()
                .insert("x-sluice-model", model.model_header.clone());
            resp
        }
        Err(e) => ApiError::Upstream {
            model: model.cfg.name.clone(),
            timeout: e.is_timeout(),
        }
        .into_response(),
    }
}

/// A reservation waiting for its slot: dropped before [`sent`](Self::sent) (the client
/// went away and hyper dropped the handler), it releases the reservation in the
/// background, so that the slot can serve a later waiter (`Store::release`).
struct AbandonedWait {
    gw: Gateway,
    model: usize,
    reservation: Option<Reservation>,
}

impl AbandonedWait {
    fn new(gw: &Gateway, model: usize, reservation: Reservation) -> Self {
        Self {
            gw: gw.clone(),
            model,
            reservation: Some(reservation),
        }
    }

    /// How long until the slot.
    fn wait(&self) -> Duration {
        self.reservation.as_ref().map_or(Duration::ZERO, |r| r.wait)
    }

    /// The slot has come and the request goes upstream: the reservation is used.
    fn sent(mut self) -> Reservation {
        self.reservation.take().expect("taken only here")
    }
}

impl Drop for AbandonedWait {
    fn drop(&mut self) {
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let gw = self.gw.clone();
        let mi = self.model;
        runtime.spawn(async move {
            let m = &gw.inner.models[mi];
            match gw.inner.limiter.release(&m.quota, &reservation).await {
                Ok(outcome) => {
                    let outcome = match outcome {
                        ReleaseOutcome::Reusable => "reusable",
                        ReleaseOutcome::Passed => "passed",
                        ReleaseOutcome::AlreadySettled => "settled",
                        _ => "dropped",
                    };
                    metrics::counter!("sluice_reservations_released_total", "model" => m.cfg.name.clone(), "outcome" => outcome)
                        .increment(1);
                    tracing::debug!(model = %m.cfg.name, account = %m.accounts[reservation.candidate].name, outcome, "client went away while queued; slot released");
                }
                Err(e) => {
                    tracing::warn!(error = %e, model = %m.cfg.name, "releasing an abandoned slot failed; it ages out");
                }
            }
        });
    }
}

//! The request path: authenticate, estimate, queue for a slot on the best account of
//! the model (falling back along its `fallback` list), forward, retry what a provider
//! throttled, and answer — with the upstream's answer, or an honest refusal.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;
use sluice_limiter::{Cost, Reservation};
use tracing::field::Empty;
use tracing::{Instrument, Span};

mod admit;
mod passthrough;
mod refused;
mod send;

pub(crate) use passthrough::other;

use admit::{Ask, admit};
use refused::refused;
use send::{send, success, unanswered};

use crate::decide::{Attempt, Then, decide};
use crate::error::{ApiError, ErrorShape, RateLimited};
use crate::estimate::{Endpoint, output_tokens, prompt_tokens_bounded};
use crate::request;
use crate::state::{Gateway, Inner, ModelState};
use crate::telemetry::{self, SPANS};
use crate::upstream::{self, presented_key};
use crate::usage::{Settle, reconcile};

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

/// The client headers passed upstream ([`FORWARD`]); never its credentials.
fn forwarded(headers: &HeaderMap) -> HeaderMap {
    let mut forward = HeaderMap::new();
    for h in FORWARD {
        if let Some(v) = headers.get(*h) {
            forward.insert(*h, v.clone());
        }
    }
    forward
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

/// Serves the metered APIs: `/v1/chat/completions`, `/v1/completions`,
/// `/v1/embeddings`, `/v1/responses` and `/v1/messages`.
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
                    e.render(ErrorShape::of(endpoint)),
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

/// A request once authenticated and parsed: what every later stage reads.
struct Prepared {
    tenant: usize,
    /// The tenant's fair-share weight.
    weight: u32,
    /// The shortest of the server's, the tenant's and the client's maximum wait, and
    /// the deadline it sets.
    max_wait: Duration,
    deadline: Instant,
    /// The body as sent, and as parsed.
    body: Bytes,
    json: Value,
    /// The model the client named, and its index.
    name: String,
    first: usize,
    /// A streamed answer was asked for, and (for chat and completions) its usage.
    stream: bool,
    client_usage: bool,
    /// The client headers passed upstream.
    forward: HeaderMap,
}

/// The authenticate and parse stages: the tenant from its key, the body read under
/// the server's limits and checked for `endpoint`, the model it names, and the
/// request's deadline.
async fn prepare(
    gw: &Gateway,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Result<Prepared, Refuse> {
    let inner = &*gw.inner;
    let Some(tenant) = inner.tenant(presented_key(headers)) else {
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
    let Some(&first) = inner.by_name.get(name.as_str()) else {
        return Err(refuse(ApiError::ModelNotFound(name)));
    };
    let stream = endpoint.streams() && json.get("stream").and_then(Value::as_bool) == Some(true);
    // Streams of chat and completions carry usage only when asked: ask for it, and
    // strip it for a client that did not. The Responses and Messages streams always
    // end with it.
    let client_usage = !endpoint.usage_on_request()
        || json
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
    let mut forward = forwarded(headers);
    forward
        .entry(http::header::CONTENT_TYPE)
        .or_insert(HeaderValue::from_static("application/json"));
    Ok(Prepared {
        tenant,
        weight: t.map_or(1, |t| t.weight),
        max_wait,
        deadline: started + max_wait,
        body,
        json,
        name,
        first,
        stream,
        client_usage,
        forward,
    })
}

impl Prepared {
    /// The body as `model`'s upstream needs it: its own model name, and the usage of a
    /// stream asked for (then stripped for the client). The second value says whether
    /// usage was asked for on the client's behalf.
    fn body_for(&self, model: &ModelState) -> (Bytes, bool) {
        let needs_model = model.cfg.upstream_model != self.name;
        let needs_usage = self.stream && !self.client_usage;
        if !needs_model && !needs_usage {
            return (self.body.clone(), false);
        }
        let mut j = self.json.clone();
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
        (
            Bytes::from(serde_json::to_vec(&j).unwrap_or_default()),
            needs_usage,
        )
    }
}

/// The request through the stages after parsing, along the model's fallback chain:
/// estimate, admit, send, classify, settle (see the module docs).
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
    let p = prepare(gw, endpoint, headers, body, started).await?;
    let Prepared {
        tenant,
        weight,
        max_wait,
        deadline,
        first,
        stream,
        ..
    } = p;
    let name = p.name.as_str();
    let mut failure = Failure::None;
    let chain = inner.models[first].chain.clone();
    'models: for (hop, &mi) in chain.iter().enumerate() {
        let model = &inner.models[mi];
        if hop > 0 {
            metrics::counter!("sluice_fallbacks_total", "from" => inner.models[first].cfg.name.clone(), "to" => model.cfg.name.clone()).increment(1);
        }
        if !upstream::speaks(model, endpoint) {
            // Only where the request can be sent as it is: a Messages request to an
            // Anthropic upstream, a Responses request to an OpenAI-compatible one.
            if hop == 0 {
                return Err((
                    Some(tenant),
                    name.to_owned(),
                    ApiError::WrongApi {
                        model: model.cfg.name.clone(),
                        api: path,
                    },
                    None,
                ));
            }
            continue;
        }
        let (upstream_body, needs_usage) = p.body_for(model);
        let raw_prompt =
            prompt_tokens_bounded(endpoint, &p.json, model.cfg.tokenizer, p.body.len());
        let cost = Cost::request(
            model.learner.correct(raw_prompt),
            output_tokens(endpoint, &p.json, model.cfg.output_estimate),
        );

        let max_attempts = inner.config.retry.max_attempts.get();
        let mut attempt = 0u32;
        while attempt < max_attempts {
            let ask = Ask {
                tenant,
                weight,
                cost,
                deadline,
                max_wait,
                attempt,
            };
            let res = match admit(gw, mi, &ask).await {
                Ok(res) => res,
                // A request too large for a later model of the chain: answer with
                // what stopped an earlier one, if anything did.
                Err(too_large @ Failure::TooLarge(_)) => {
                    if matches!(failure, Failure::None) {
                        failure = too_large;
                    }
                    break;
                }
                Err(f) => {
                    failure = f;
                    break;
                }
            };
            let account = &model.accounts[res.candidate];
            for r in &res.remaining {
                metrics::gauge!("sluice_headroom", "model" => model.cfg.name.clone(), "account" => account.name.clone(), "limit" => r.limit.to_string()).set(r.remaining as f64);
            }

            let (sent, up_span) = send(gw, mi, &res, &p, &upstream_body, path, attempt).await;
            let upstream = match sent {
                Ok(u) => u,
                Err(e) => {
                    let timeout = e.is_timeout();
                    failure = unanswered(gw, mi, res, &e, up_span);
                    attempt += 1;
                    let what = Attempt::Unanswered { timeout };
                    match decide(what, attempt, max_attempts).then {
                        Then::GiveUp => break 'models,
                        Then::Retry { .. } => {
                            backoff(inner, attempt, deadline).await;
                            continue;
                        }
                        Then::Fallback | Then::Return => continue 'models,
                    }
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
                let response = success(
                    model,
                    upstream,
                    endpoint,
                    stream,
                    needs_usage,
                    settle,
                    spans,
                )
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

            // An upstream error: classify it, act on the account, then retry, fall back
            // or pass the provider's answer on.
            attempt += 1;
            let (then, passed) = refused(gw, mi, res, upstream, attempt, &up_span).await;
            match then {
                Then::Return | Then::GiveUp => {
                    return Ok(Done {
                        tenant: Some(tenant),
                        response: passed,
                        model: model.cfg.name.clone(),
                        account: account.name.clone(),
                        outcome: "upstream_error",
                    });
                }
                Then::Retry { backoff: wait } => {
                    drop(up_span);
                    failure = Failure::Upstream(passed);
                    if wait {
                        backoff(inner, attempt, deadline).await;
                    }
                }
                Then::Fallback => {
                    failure = Failure::Upstream(passed);
                    continue 'models;
                }
            }
        }
    }

    answer_with(failure, tenant, name)
}

async fn backoff(inner: &Inner, attempt: u32, deadline: Instant) {
    let pause = jitter(inner, attempt).min(deadline.saturating_duration_since(Instant::now()));
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
}

/// Gives back what a failed attempt reserved (it counts as one request), under a
/// `reconcile` span.
pub(super) fn release(gw: &Gateway, mi: usize, res: Reservation, parent: &Span) {
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

/// The answer when no model of the chain served: the last upstream error as it came,
/// else the refusal of what stopped the last try.
// The same `Result` as `serve`'s, made once per request at its end.
#[allow(clippy::result_large_err)]
fn answer_with(failure: Failure, tenant: usize, name: &str) -> Result<Done, Refuse> {
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

//! The request path: authenticate, estimate, queue for a slot on the best account of
//! the model (falling back along its `fallback` list), forward, retry what a provider
//! throttled, and answer — with the upstream's answer, or an honest refusal.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use sluice_limiter::{Cost, Reservation};
use tracing::field::Empty;
use tracing::{Instrument, Span};

mod admit;
mod passthrough;
mod prepare;
mod refused;
mod send;

pub(crate) use passthrough::other;

use admit::admit;
use prepare::{Prepared, prepare};
use refused::refused;
use send::{send, success, unanswered};

use crate::decide::{Attempt, Then, decide};
use crate::error::{ApiError, ErrorShape, RateLimited};
use crate::estimate::Endpoint;
use crate::meters::Answered;
use crate::state::{Gateway, Inner};
use crate::telemetry::{self, SPANS};
use crate::tenant_limits::TenantHold;
use crate::upstream;
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
        route = endpoint.path(),
        model = Empty,
        tenant = Empty,
        account = Empty,
        outcome = Empty,
        status = Empty,
        limit = Empty,
        retry_after_ms = Empty,
    );
    telemetry::continue_trace(&span, &headers);
    let served = serve(&gw, endpoint, &headers, body, started)
        .instrument(span.clone())
        .await;
    let mut resp = settle_request(&gw, &span, &rid, started, endpoint, served);
    resp.headers_mut().insert("x-request-id", rid);
    if let Some(trace) = telemetry::trace_id(&span) {
        resp.headers_mut().insert("x-trace-id", trace);
    }
    resp
}

/// The last stage of every request: its answer (an error rendered in its API's shape),
/// recorded on its span, in the one log line and in `sluice_requests_total`. A refusal
/// names the account (never its key) and the limit that bound it.
fn settle_request(
    gw: &Gateway,
    span: &Span,
    rid: &HeaderValue,
    started: Instant,
    endpoint: Endpoint,
    served: Result<Done, Refuse>,
) -> Response {
    let refused = served.is_err();
    let (done, refusal) = match served {
        Ok(done) => (done, None),
        Err((tenant, model, e, bound)) => {
            let refusal = match (&e, bound) {
                (ApiError::RateLimited(r), Some(b)) => Some((b, r.retry_after)),
                _ => None,
            };
            let done = Done {
                tenant,
                outcome: e.kind(),
                response: e.render(ErrorShape::of(endpoint)),
                model,
                account: "none".to_owned(),
                served: None,
            };
            (done, refusal)
        }
    };
    let Done {
        tenant: tenant_index,
        response,
        model,
        account,
        outcome,
        served,
    } = done;
    let tenant = tenant_index
        .map_or("unknown", |t| gw.inner.tenant_name(t))
        .to_owned();
    let status = response.status().as_u16();
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
    tracing::info!(request_id = rid.to_str().unwrap_or("?"), tenant = %tenant, model = %model, account = %log_account, outcome, status, limit, retry_after_ms, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "request");
    if refused {
        gw.live.refusals.record(crate::refusals::Refusal {
            at_ms: crate::observe::now_ms(),
            model: model.clone(),
            tenant: tenant.clone(),
            outcome,
            status,
            account: refusal.as_ref().map(|_| log_account.to_owned()),
            limit: limit.map(str::to_owned),
            retry_after_ms,
        });
    }
    let counted = || metrics::counter!("sluice_requests_total", "model" => model.clone(), "tenant" => tenant.clone(), "account" => account.clone(), "outcome" => outcome);
    match (served, tenant_index) {
        (Some(s), Some(t)) => {
            let meters = &gw.inner.models[s.model].meters;
            meters.answered(s.account, t, s.how, counted).increment(1);
        }
        _ => counted().increment(1),
    }
    response
}

struct Done {
    tenant: Option<usize>,
    response: Response,
    model: String,
    account: String,
    outcome: &'static str,
    /// Where an answered request was served, for its cached counter.
    served: Option<Served>,
}

/// The model and account (indices) that answered a request, and how.
#[derive(Clone, Copy)]
struct Served {
    model: usize,
    account: usize,
    how: Answered,
}

type Refuse = (Option<usize>, String, ApiError, Option<Bound>);

/// The request through the stages after parsing, along the model's fallback chain:
/// estimate, admit, send, classify, settle (see the module docs).
async fn serve(
    gw: &Gateway,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Result<Done, Refuse> {
    let inner = &*gw.inner;
    let p = prepare(gw, endpoint, headers, body, started).await?;
    let mut failure = Failure::None;
    let chain = inner.models[p.first].chain.clone();
    for (hop, &mi) in chain.iter().enumerate() {
        let model = &inner.models[mi];
        if hop > 0 {
            metrics::counter!("sluice_fallbacks_total", "from" => inner.models[p.first].cfg.name.clone(), "to" => model.cfg.name.clone()).increment(1);
        }
        if !upstream::speaks(model, endpoint) {
            // Only where the request can be sent as it is: a Messages request to an
            // Anthropic upstream, a Responses request to an OpenAI-compatible one.
            if hop == 0 {
                let wrong = ApiError::WrongApi {
                    model: model.cfg.name.clone(),
                    api: endpoint.path(),
                };
                return Err((Some(p.tenant), p.name.clone(), wrong, None));
            }
            continue;
        }
        match through_model(gw, &p, hop, mi, &mut failure).await {
            Hop::Answered(done) => return Ok(done),
            Hop::Next => {}
            Hop::GiveUp => break,
        }
    }
    answer_with(failure, p.tenant, &p.name)
}

/// What one model of the fallback chain came to.
// Returned once per model tried, straight to `serve`: boxing would add an allocation
// to every request for nothing.
#[allow(clippy::large_enum_variant)]
enum Hop {
    /// An answer for the client: the model's, or the provider's error passed on.
    Answered(Done),
    /// On to the next model of the chain (`failure` says why, if it is the last).
    Next,
    /// Stop here and answer with `failure`.
    GiveUp,
}

/// The attempts on model `mi` (hop `hop` of the chain), then the tenant's charge for
/// them given back unless one was answered (before a later model charges its own).
async fn through_model(
    gw: &Gateway,
    p: &Prepared,
    hop: usize,
    mi: usize,
    failure: &mut Failure,
) -> Hop {
    let mut tenant_hold = None;
    let outcome = attempts(gw, p, hop, mi, failure, &mut tenant_hold).await;
    if let Some(unserved) = tenant_hold {
        unserved.refund().await;
    }
    outcome
}

/// The attempts on model `mi`: admit, send, and what [`decide`] makes of each answer.
/// Keeps in `failure` what to answer with if no later model serves; the attempts share
/// one charge of the tenant's own limits (`tenant_hold`), which an answered attempt
/// takes to settle.
async fn attempts(
    gw: &Gateway,
    p: &Prepared,
    hop: usize,
    mi: usize,
    failure: &mut Failure,
    tenant_hold: &mut Option<TenantHold>,
) -> Hop {
    let inner = &*gw.inner;
    let model = &inner.models[mi];
    let (upstream_body, needs_usage) = p.body_for(model);
    let (cost, raw_prompt) = p.cost_on(model);
    let max_attempts = inner.config.retry.max_attempts.get();
    let mut attempt = 0u32;
    while attempt < max_attempts {
        let res = match admit(gw, mi, &p.ask(cost, attempt), tenant_hold).await {
            Ok(res) => res,
            // A request too large for a later model of the chain: answer with what
            // stopped an earlier one, if anything did.
            Err(Failure::TooLarge(_)) if !matches!(failure, Failure::None) => return Hop::Next,
            Err(f) => {
                *failure = f;
                return Hop::Next;
            }
        };
        let (sent, up_span) = send(gw, mi, &res, p, &upstream_body, attempt).await;
        let upstream = match sent {
            Ok(u) => u,
            Err(e) => {
                let timeout = e.is_timeout();
                *failure = unanswered(gw, mi, res, &e, up_span);
                attempt += 1;
                match decide(Attempt::Unanswered { timeout }, attempt, max_attempts).then {
                    Then::GiveUp => return Hop::GiveUp,
                    Then::Retry { .. } => backoff(inner, attempt, p.deadline).await,
                    Then::Fallback | Then::Return => return Hop::Next,
                }
                continue;
            }
        };
        up_span.record("status", upstream.status().as_u16());
        let account = &model.accounts[res.candidate].name;
        let candidate = res.candidate;
        let answered = |response, how: Answered| {
            Hop::Answered(Done {
                tenant: Some(p.tenant),
                response,
                model: model.cfg.name.clone(),
                account: account.clone(),
                outcome: how.as_str(),
                served: Some(Served {
                    model: mi,
                    account: candidate,
                    how,
                }),
            })
        };
        if upstream.status().is_success() {
            let settle = Settle {
                gw: gw.clone(),
                model: mi,
                tenant: p.tenant,
                reservation: res,
                raw_prompt,
                tenant_hold: tenant_hold.take().unwrap_or_else(TenantHold::none),
            };
            // `through_model` runs inside the `request` span.
            let spans = (Span::current(), up_span.clone());
            let response = success(model, upstream, p, needs_usage, settle, spans)
                .instrument(up_span)
                .await;
            let how = if hop > 0 {
                Answered::OkFallback
            } else {
                Answered::Ok
            };
            return answered(response, how);
        }
        // An upstream error: classify it, act on the account, then retry, fall back or
        // pass the provider's answer on.
        attempt += 1;
        let (then, passed) = refused(gw, mi, res, upstream, attempt, &up_span).await;
        match then {
            Then::Return | Then::GiveUp => return answered(passed, Answered::UpstreamError),
            Then::Retry { backoff: wait } => {
                drop(up_span);
                *failure = Failure::Upstream(passed);
                if wait {
                    backoff(inner, attempt, p.deadline).await;
                }
            }
            Then::Fallback => {
                *failure = Failure::Upstream(passed);
                return Hop::Next;
            }
        }
    }
    Hop::Next
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
            spend: 0,
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
            served: None,
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

/// What the stage tests share: a gateway on the embedded limiter, built from a TOML
/// fragment (its upstream is never reached unless a test sends to it).
#[cfg(test)]
pub(super) mod testing {
    use serde_json::Value;

    use super::*;

    /// Tenants `app` (`sk-app-key`) and `slow` (`sk-slow-key`, at most 2 s of waiting), an
    /// OpenAI upstream at `base_url` with accounts `a` and `b`, and models `m` (served
    /// upstream as `m-upstream`, 2 requests per minute; $1 per million input tokens,
    /// $100 per million output) and `m2`, plus `extra`.
    pub(super) fn gateway(base_url: &str, extra: &str) -> Gateway {
        let toml = format!(
            r#"
[queue]
max_wait = "10s"
[[tenants]]
name = "app"
key = "sk-app-key"
[[tenants]]
name = "slow"
key = "sk-slow-key"
max_wait = "2s"
[[upstreams]]
name = "up"
base_url = "{base_url}"
accounts = [{{ name = "a", keys = ["sk-a"] }}, {{ name = "b", keys = ["sk-b"] }}]
[[models]]
name = "m"
upstream = "up"
upstream_model = "m-upstream"
limits = [{{ requests = 2, per = "60s" }}, {{ tokens = 100000, per = "60s" }}]
price = {{ input_per_mtok = 1.0, output_per_mtok = 100.0 }}
[[models]]
name = "m2"
upstream = "up"
limits = [{{ requests = 100, per = "60s" }}]
price = {{ input_per_mtok = 1.0, output_per_mtok = 100.0 }}
{extra}
"#
        );
        let env = std::collections::HashMap::<String, String>::new();
        let config = sluice_config::from_str(&toml, &[], &env).expect("config");
        Gateway::new(config).expect("gateway")
    }

    /// Headers with tenant key `key` as a bearer token.
    pub(super) fn bearer(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
        );
        h
    }

    /// The request `body` of `endpoint` through the prepare stage, by tenant `app`.
    pub(super) async fn prepared(gw: &Gateway, endpoint: Endpoint, body: Value) -> Prepared {
        prepared_as(gw, "sk-app-key", endpoint, body).await
    }

    /// [`prepared`], by the tenant whose key is `key`.
    pub(super) async fn prepared_as(
        gw: &Gateway,
        key: &str,
        endpoint: Endpoint,
        body: Value,
    ) -> Prepared {
        let body = Body::from(body.to_string());
        match prepare(gw, endpoint, &bearer(key), body, Instant::now()).await {
            Ok(p) => p,
            Err((_, _, e, _)) => panic!("prepare refused: {}", e.kind()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request's future is moved (boxed by the router, wrapped by its span) as a
    /// whole: it stays a few kilobytes, not the ~15 KB it was while the limiter's Redis
    /// path was inline (copying it cost ~6% of a gateway's CPU).
    #[test]
    fn a_requests_future_stays_small() {
        let gw = testing::gateway("http://127.0.0.1:9", "");
        let request = completions(gw, Endpoint::Chat, HeaderMap::new(), Body::empty());
        assert!(
            size_of_val(&request) <= 6 * 1024,
            "{}",
            size_of_val(&request)
        );
    }
}

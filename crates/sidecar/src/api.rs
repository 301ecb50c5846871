//! The sidecar's HTTP API: operational routes, `POST /v1/acquire` and `POST /v1/report`
//! for applications that call providers themselves, and the gateway's own API (proxy,
//! `/v1/quotas`, admin) as the forward proxy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use sluice_limiter::{
    Cost, Decision, LimitError, Origin, QuotaKey, QuotaStatus, RefusalReason, Reservation,
    ReservationId, Store, Timestamp, Unit,
};
use sluice_observe::Observation;
use sluice_recalibrate::CatalogModel;

use crate::State;
use crate::ticket::{TenantTicket, Ticket};

type St = AxState<Arc<State>>;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The public API. `/metrics` is served to anyone only when `open` (the listener is
/// loopback), else to the admin key.
pub(crate) fn router(state: Arc<State>, open: bool) -> Router {
    let own = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(move |s: St, h: http::HeaderMap| async move { metrics(s, h, open) }),
        )
        .route("/v1/acquire", post(acquire))
        .route("/v1/report", post(report))
        .with_state(state.clone());
    state.gw().api_router().merge(own)
}

/// The admin listener (`[sidecar] admin_listen`): `/healthz`, `/readyz`, `/metrics`, the
/// full `/v1/quotas` and `/v1/admin/...`; off loopback (`open` false) behind the admin key.
pub(crate) fn admin_router(state: Arc<State>, open: bool) -> Router {
    let own = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(move |s: St, h: http::HeaderMap| async move { metrics(s, h, open) }),
        )
        .with_state(state.clone());
    state.gw().admin_routes(open).merge(own)
}

/// The tenant of the request's `Authorization: Bearer` key (`default` for anyone when
/// no `[[tenants]]` are configured); `None` for a missing or unknown key (answer
/// [`unauthenticated`]).
fn authenticate(s: &State, headers: &http::HeaderMap) -> Option<String> {
    s.gw()
        .tenant_for(sluice_proxy::presented_key(headers))
        .map(str::to_owned)
}

/// The 401 of a caller without a valid tenant key.
fn unauthenticated() -> Response {
    metrics::counter!("sluice_sidecar_unauthenticated_total").increment(1);
    error(
        StatusCode::UNAUTHORIZED,
        "Invalid API key: send a tenant key as Authorization: Bearer <key>.",
        "invalid_api_key",
    )
}

fn error(status: StatusCode, message: impl Into<String>, code: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": {"message": message.into(), "type": "invalid_request_error", "param": null, "code": code}})),
    )
        .into_response()
}

async fn readyz(AxState(s): St) -> Response {
    let store = s.gw().limiter().ping().await;
    let consuming = s.consuming.load(Ordering::Relaxed);
    let body = serde_json::json!({
        "status": if store.is_ok() && consuming { "ready" } else { "not_ready" },
        "store": if s.gw().is_shared() { "redis" } else { "embedded" },
        "consuming": consuming,
        "name": s.options.name,
        "error": store.err().map(|e| e.to_string()),
    });
    let status = if body["status"] == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

fn metrics(AxState(s): St, headers: http::HeaderMap, open: bool) -> Response {
    if let Some(refused) = s.gw().metrics_refusal(&headers, open) {
        return refused;
    }
    match s.gw().render_metrics() {
        Some(text) => (
            [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            text,
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "metrics recorder not installed in this process",
        )
            .into_response(),
    }
}

/// The model an app names: a configured model name, else an upstream model name.
fn model<'a>(gw: &'a sluice_proxy::Gateway, name: &str) -> Option<&'a CatalogModel> {
    let c = gw.catalog();
    c.model(name)
        .or_else(|| c.models.iter().find(|m| m.upstream_model == name))
}

/// `POST /v1/acquire` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcquireRequest {
    model: String,
    /// Restrict to this account (`key-<i>`), for apps that hold one key.
    account: Option<String>,
    #[serde(default = "one")]
    requests: u64,
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    /// The longest to wait for a slot (default and maximum: `queue.max_wait`).
    max_wait_ms: Option<u64>,
}

fn one() -> u64 {
    1
}

fn origin_name(o: Origin) -> &'static str {
    match o {
        Origin::Shared => "shared",
        Origin::Local => "local",
        _ => "unmetered",
    }
}

/// Waits for (or refuses) a slot for the given cost on the model's accounts. Answers
/// 200 once the slot has come, with the account to use and a `reservation` to send back
/// with `POST /v1/report`; 429 with `Retry-After` when no slot comes within the wait;
/// 503 when every account is out of rotation; 413 when the cost can never fit.
async fn acquire(AxState(s): St, headers: http::HeaderMap, body: axum::body::Bytes) -> Response {
    // One snapshot of the configuration for the whole call.
    let gw = s.gw();
    let Some(tenant) = authenticate(&s, &headers) else {
        return unauthenticated();
    };
    let req: AcquireRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("Invalid body: {e}"),
                "invalid_body",
            );
        }
    };
    let Some(m) = model(&gw, &req.model) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("The model {:?} is not configured.", req.model),
            "model_not_found",
        );
    };
    let keys: Vec<QuotaKey> = match &req.account {
        None => {
            let mut keys = m.keys.clone();
            if keys.len() > 1 {
                let start = s.next_account.fetch_add(1, Ordering::Relaxed) % keys.len();
                keys.rotate_left(start);
            }
            keys
        }
        Some(a) => match m.keys.iter().find(|k| k.name() == a) {
            Some(k) => vec![k.clone()],
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("No account {a:?} for model {:?}.", m.name),
                    "account_not_found",
                );
            }
        },
    };
    let max = gw.config().queue.max_wait;
    let max_wait = req
        .max_wait_ms
        .map_or(max, |ms| Duration::from_millis(ms).min(max));
    let cost = Cost {
        requests: req.requests,
        input_tokens: req.input_tokens,
        output_tokens: req.output_tokens,
        spend: 0,
    };
    // The tenant's own limits first, as on the request path; given back unless the
    // provider's side grants a slot.
    let hold = match gw
        .charge_tenant(&tenant, &m.name, cost, std::time::Instant::now() + max_wait)
        .await
    {
        Ok(hold) => hold,
        Err(refused) => return tenant_refused(&m.name, refused),
    };
    let decision = gw.limiter().acquire(&keys, &m.quota, cost, max_wait).await;
    let hold = match &decision {
        Ok(Decision::Granted(_)) => Some(hold),
        _ => {
            hold.refund().await;
            None
        }
    };
    metrics::counter!("sluice_sidecar_acquire_total", "model" => m.name.clone(), "outcome" => match &decision { Ok(Decision::Granted(_)) => "granted", Ok(_) => "refused", Err(_) => "error" }).increment(1);
    match decision {
        Ok(Decision::Granted(r)) => {
            if !r.wait.is_zero() {
                tokio::time::sleep(r.wait).await;
            }
            let mut ticket = Ticket {
                id: r.id.to_string(),
                tenant,
                model: m.name.clone(),
                account: r.key.name().to_owned(),
                slot_us: r.slot.as_micros(),
                requests: r.cost.requests,
                input_tokens: r.cost.input_tokens,
                output_tokens: r.cost.output_tokens,
                origin: origin_name(r.origin).to_owned(),
                tenant_charge: hold
                    .and_then(|h| h.into_charge())
                    .map(|c| TenantTicket::of(&c)),
                sig: String::new(),
            };
            s.tickets.sign(&mut ticket);
            let remaining: Vec<_> = r.remaining.describe(&m.quota).iter().map(|x| serde_json::json!({"limit": x.limit.to_string(), "effective": x.effective, "remaining": x.remaining})).collect();
            axum::Json(serde_json::json!({
                "granted": true,
                "model": m.name,
                "upstream": m.upstream,
                "upstream_model": m.upstream_model,
                "account": r.key.name(),
                "waited_ms": r.wait.as_millis() as u64,
                "reservation": ticket,
                "remaining": remaining,
            }))
            .into_response()
        }
        Ok(Decision::Refused(r)) => {
            let (status, reason) = match &r.reason {
                RefusalReason::Disabled(why) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("accounts out of rotation: {why}"),
                ),
                RefusalReason::Unavailable => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the shared store is unavailable".to_owned(),
                ),
                RefusalReason::Limit(id) => {
                    (StatusCode::TOO_MANY_REQUESTS, format!("limit {id} is full"))
                }
                RefusalReason::Cooldown => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "the provider asked to slow down".to_owned(),
                ),
                other => (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("{other:?}").to_lowercase(),
                ),
            };
            not_granted(status, &m.name, &reason, r.retry_after)
        }
        Err(LimitError::InsufficientCapacity {
            limit,
            capacity,
            cost,
        }) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "A cost of {cost} can never fit limit {limit}, which holds {capacity} per window."
            ),
            "request_too_large",
        ),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
            "store_unavailable",
        ),
    }
}

/// An acquire's refusal: `status` with the `reason`, and `Retry-After` (whole seconds,
/// at least 1) when the wait is known.
fn not_granted(
    status: StatusCode,
    model: &str,
    reason: &str,
    retry_after: Option<Duration>,
) -> Response {
    let retry = retry_after.map(|d| d.as_millis() as u64);
    let mut resp = (
        status,
        axum::Json(serde_json::json!({"granted": false, "model": model, "reason": reason, "retry_after_ms": retry})),
    )
        .into_response();
    if let Some(ms) = retry
        && let Ok(v) = http::HeaderValue::from_str(&ms.div_ceil(1000).max(1).to_string())
    {
        resp.headers_mut().insert(http::header::RETRY_AFTER, v);
    }
    resp
}

/// The answer to an acquire that the tenant's own limits refused: 429 naming the limit
/// with `Retry-After`, 413 when the request can never fit one, 503 when the store is
/// away.
fn tenant_refused(model: &str, refused: sluice_proxy::TenantRefused) -> Response {
    match refused {
        sluice_proxy::TenantRefused::Limited {
            message,
            retry_after,
        } => not_granted(
            StatusCode::TOO_MANY_REQUESTS,
            model,
            &message,
            Some(retry_after),
        ),
        sluice_proxy::TenantRefused::TooLarge(message) => {
            error(StatusCode::PAYLOAD_TOO_LARGE, message, "request_too_large")
        }
        sluice_proxy::TenantRefused::StoreDown(after) => not_granted(
            StatusCode::SERVICE_UNAVAILABLE,
            model,
            "the shared store is unavailable",
            Some(after),
        ),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the tenant's limits could not be decided".to_owned(),
            "store_unavailable",
        ),
    }
}

/// `POST /v1/report` body: what the provider answered an app.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportRequest {
    model: String,
    account: Option<String>,
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    usage: Option<UsageIn>,
    reservation: Option<Ticket>,
}

#[derive(Deserialize)]
struct UsageIn {
    #[serde(default, alias = "input_tokens")]
    prompt_tokens: u64,
    #[serde(default, alias = "output_tokens")]
    completion_tokens: u64,
}

/// Reconciles the reservation with the real usage (an error answer counts one request
/// and no tokens; no usage keeps the estimate) and applies the provider's status,
/// headers and body like an observation from a gateway, within bounds:
/// - the caller authenticates as a tenant; a `reservation` must carry this fleet's
///   signature and belong to that tenant, model and account, else 401/403 and nothing
///   changes; the reserved amounts are the ticket's, the usage is clamped to
///   `[0, the largest configured limit of its unit]` (requests to those reserved), so a
///   report can never refund more than was reserved;
/// - a report alone never disables an account: an answer that would (invalid key,
///   billing, daily quota) makes the sidecar probe the account itself, at most once per
///   `probe_interval`, and only the provider's own answer to that probe can disable it;
/// - a rate-limit header may lower a learned limit to no less than half of the current
///   effective limit of its unit per report (never above the configured one: the
///   recalibrator forgets a learned limit at or above it).
async fn report(AxState(s): St, headers: http::HeaderMap, body: axum::body::Bytes) -> Response {
    // One snapshot of the configuration for the whole call.
    let gw = s.gw();
    let Some(tenant) = authenticate(&s, &headers) else {
        return unauthenticated();
    };
    let req: ReportRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("Invalid body: {e}"),
                "invalid_body",
            );
        }
    };
    let Some(m) = model(&gw, &req.model) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("The model {:?} is not configured.", req.model),
            "model_not_found",
        );
    };
    if let Some(t) = &req.reservation {
        if !s.tickets.verify(t) {
            metrics::counter!("sluice_sidecar_report_refused_total", "reason" => "bad_signature")
                .increment(1);
            tracing::warn!(%tenant, model = %m.name, "report refused: the reservation's signature is not this fleet's");
            return error(
                StatusCode::UNAUTHORIZED,
                "The reservation's signature is invalid: send the reservation exactly as POST /v1/acquire returned it.",
                "invalid_reservation",
            );
        }
        let mismatch = if t.tenant != tenant {
            Some("was issued to another tenant")
        } else if t.model != m.name {
            Some("was issued for another model")
        } else if req.account.as_ref().is_some_and(|a| *a != t.account) {
            Some("was issued for another account")
        } else {
            None
        };
        if let Some(why) = mismatch {
            metrics::counter!("sluice_sidecar_report_refused_total", "reason" => "mismatch")
                .increment(1);
            return error(
                StatusCode::FORBIDDEN,
                format!("The reservation {why}."),
                "invalid_reservation",
            );
        }
    }
    let account = req
        .account
        .clone()
        .or_else(|| req.reservation.as_ref().map(|t| t.account.clone()));
    let Some(account) = account else {
        return error(
            StatusCode::BAD_REQUEST,
            "Name the `account` (or send the `reservation`).",
            "invalid_body",
        );
    };
    let Some(candidate) = m.keys.iter().position(|k| k.name() == account) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("No account {account:?} for model {:?}.", m.name),
            "account_not_found",
        );
    };
    let status = match gw.limiter().status(&m.keys[candidate], &m.quota).await {
        Ok(st) => st,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                e.to_string(),
                "store_unavailable",
            );
        }
    };
    let mut reconciled = false;
    if let Some(t) = &req.reservation {
        let Ok(id) = u64::from_str_radix(&t.id, 16) else {
            return error(
                StatusCode::BAD_REQUEST,
                "The reservation id is not one this sidecar gave.",
                "invalid_reservation",
            );
        };
        let reserved = Cost {
            requests: t.requests,
            input_tokens: t.input_tokens,
            output_tokens: t.output_tokens,
            spend: 0,
        };
        let actual = match (&req.usage, req.status) {
            (Some(u), _) => Some(Cost::request(u.prompt_tokens, u.completion_tokens)),
            (None, 300..) => Some(Cost {
                requests: 1,
                ..Cost::ZERO
            }),
            (None, _) => None,
        };
        if let Some(actual) = actual.map(|a| clamp_usage(a, &reserved, &status)) {
            let reservation = Reservation {
                id: ReservationId::from_u64(id),
                key: m.keys[candidate].clone(),
                candidate,
                slot: Timestamp::from_micros(t.slot_us),
                wait: Duration::ZERO,
                cost: reserved,
                remaining: sluice_limiter::Budget::default(),
                origin: match t.origin.as_str() {
                    "local" => Origin::Local,
                    "unmetered" => Origin::Unmetered,
                    _ => Origin::Shared,
                },
            };
            if let Err(e) = gw.limiter().reconcile(&m.quota, &reservation, actual).await {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    e.to_string(),
                    "store_unavailable",
                );
            }
            reconciled = true;
        }
    }
    // The tenant's own limits: what the app reports may raise its charge, never below
    // it (the usage is the app's word).
    if let (Some(t), Some(u)) = (
        req.reservation
            .as_ref()
            .and_then(|t| t.tenant_charge.as_ref()),
        &req.usage,
    ) {
        let Some(charge) = t.charge() else {
            return error(
                StatusCode::BAD_REQUEST,
                "The reservation's tenant charge is not one this sidecar gave.",
                "invalid_reservation",
            );
        };
        let used = Cost::request(u.prompt_tokens, u.completion_tokens);
        if let Err(e) = gw
            .raise_tenant_charge(&tenant, &m.name, &charge, used)
            .await
        {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                e.to_string(),
                "store_unavailable",
            );
        }
    }
    let at = now_ms();
    let mut reported_headers = req.headers.clone();
    let floored = floor_limit_headers(&mut reported_headers, &status);
    let header_map = sluice_recalibrate::header_map(
        &reported_headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>(),
    );
    let class = (req.status >= 300).then(|| {
        sluice_provider::classify(
            req.status,
            &header_map,
            req.body.as_deref().unwrap_or("").as_bytes(),
            m.provider,
            UNIX_EPOCH + Duration::from_millis(at),
        )
    });
    let would_disable = class.as_ref().is_some_and(|c| {
        c.class.disables_account()
            || c.class
                == sluice_provider::ErrorClass::Throttled(sluice_provider::ThrottleKind::Daily)
            || c.retry_after
                .is_some_and(|w| w >= gw.config().sidecar.quota_state_after)
    });
    tracing::info!(
        %tenant,
        model = %m.name,
        %account,
        status = req.status,
        reconciled,
        floored,
        would_disable,
        "report"
    );
    metrics::counter!("sluice_observations_consumed_total", "source" => "report").increment(1);
    metrics::counter!("sluice_sidecar_reports_total", "tenant" => tenant.clone(), "model" => m.name.clone()).increment(1);
    if would_disable {
        // Not the app's word alone: the sidecar asks the provider itself.
        let corroborating =
            crate::probe::corroborate(s.clone(), m.name.clone(), account.clone(), tenant);
        return axum::Json(serde_json::json!({"reconciled": reconciled, "changes": [], "corroborating": corroborating})).into_response();
    }
    let obs = Observation::new(
        at,
        &m.upstream,
        &m.upstream_model,
        &account,
        req.status,
        reported_headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
        req.body.as_deref(),
    );
    let applied = match gw.recalibrator().apply(gw.limiter(), &obs).await {
        Ok(a) => a,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                e.to_string(),
                "store_unavailable",
            );
        }
    };
    let changes: Vec<String> = applied
        .iter()
        .map(|a| format!("{}:{}:{}", a.model, a.key.name(), a.change.kind()))
        .collect();
    axum::Json(serde_json::json!({"reconciled": reconciled, "changes": changes})).into_response()
}

/// The largest configured amount among `status`'s limits of `units`.
fn largest_limit(status: &QuotaStatus, units: &[Unit]) -> Option<u64> {
    status
        .limits
        .iter()
        .filter(|l| units.contains(&l.unit))
        .map(|l| l.configured)
        .max()
}

/// Reported usage within sane bounds: requests at most those reserved (one reserved
/// request is one call), each token count at most the largest configured token limit
/// (no answer can spend more than a window holds). Without a token limit, tokens are
/// kept at most at the reserved amounts.
fn clamp_usage(actual: Cost, reserved: &Cost, status: &QuotaStatus) -> Cost {
    let tokens = [Unit::Tokens, Unit::InputTokens, Unit::OutputTokens];
    let max_in = largest_limit(status, &tokens).unwrap_or(reserved.input_tokens);
    let max_out = largest_limit(status, &tokens).unwrap_or(reserved.output_tokens);
    Cost {
        requests: actual.requests.min(reserved.requests.max(1)),
        input_tokens: actual.input_tokens.min(max_in),
        output_tokens: actual.output_tokens.min(max_out),
        spend: 0,
    }
}

/// The unit a rate-limit header's `limit` describes, for the header names of
/// `sluice_provider::RateLimitHeaders` (`x-ratelimit-limit-requests`,
/// `anthropic-ratelimit-input-tokens-limit`, ...); `None` for any other header.
fn limit_header_units(name: &str) -> Option<&'static [Unit]> {
    let n = name.to_ascii_lowercase();
    if !n.contains("ratelimit") || !n.contains("limit-") && !n.ends_with("-limit") {
        return None;
    }
    if n.contains("remaining") || n.contains("reset") {
        return None;
    }
    if n.contains("request") {
        Some(&[Unit::Requests])
    } else if n.contains("token") {
        Some(&[Unit::Tokens, Unit::InputTokens, Unit::OutputTokens])
    } else {
        None
    }
}

/// Raises every advertised `limit` below half of the current effective limit of its
/// unit to that half (rounded up): one report may at most halve a learned limit.
/// Returns how many headers were raised.
fn floor_limit_headers(headers: &mut BTreeMap<String, String>, status: &QuotaStatus) -> usize {
    let mut floored = 0;
    for (name, value) in headers.iter_mut() {
        let Some(units) = limit_header_units(name) else {
            continue;
        };
        let Ok(advertised) = value.trim().parse::<u64>() else {
            continue;
        };
        let Some(floor) = status
            .limits
            .iter()
            .filter(|l| units.contains(&l.unit))
            .map(|l| l.effective.div_ceil(2))
            .min()
        else {
            continue;
        };
        if advertised < floor {
            *value = floor.to_string();
            floored += 1;
        }
    }
    floored
}

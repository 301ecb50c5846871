//! The router: the OpenAI-compatible routes and the operational ones
//! (`/healthz`, `/readyz`, `/metrics`).

use axum::Router;
use std::sync::Arc;

use axum::body::{Body, HttpBody};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use futures::StreamExt;
use sluice_limiter::OnError;
use tokio::sync::Semaphore;

use crate::error::ApiError;

use crate::estimate::Endpoint;
use crate::pipeline;
use crate::state::Gateway;

/// The routers' state: the live gateway. Every handler extracts `State<Gateway>` from
/// it, which takes a fresh snapshot ([`Gateway::current`]) per request, so a request
/// keeps the configuration that was in force when it arrived, whatever reloads follow.
#[derive(Clone)]
pub(crate) struct Live(pub(crate) Gateway);

impl axum::extract::FromRef<Live> for Gateway {
    fn from_ref(live: &Live) -> Self {
        live.0.current()
    }
}

/// The `/v1/quotas` body: which configuration answers (its file's SHA-256), the view,
/// and (full view only) this process's queues and last refusals.
#[derive(serde::Serialize)]
struct QuotasView<'a> {
    config_sha256: &'a str,
    /// The version of the run-time changes (admin API) applied on top of the file.
    changes_version: u64,
    #[serde(flatten)]
    report: sluice_recalibrate::QuotasReport,
    /// Per model on this replica: requests waiting at the fair gate, and past it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    queues: Vec<QueueView<'a>>,
    /// This replica's last refusals, newest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    recent_refusals: Option<Vec<crate::refusals::Refusal>>,
    /// The tenants' own limits and budgets, fleet-wide: every tenant's for an operator,
    /// the caller's own for a tenant.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tenants: Vec<crate::tenant_limits::TenantView>,
}

#[derive(serde::Serialize)]
struct QueueView<'a> {
    model: &'a str,
    waiting: usize,
    holding: usize,
}

impl Gateway {
    /// The `/v1/quotas` answer of this snapshot: the report with the configuration's
    /// hash (`config_sha256`); redacted unless `details`; with this replica's queues and
    /// last refusals (which name tenants) and every tenant's own limits only for an
    /// `operator` (the admin key, or the admin listener); a tenant (`caller`) sees its
    /// own limits.
    pub(crate) async fn quotas_view(
        &self,
        details: bool,
        operator: bool,
        caller: Option<usize>,
    ) -> Response {
        let mut report =
            sluice_recalibrate::report(&self.inner.catalog, &*self.inner.limiter).await;
        self.inner.recalibrator.annotate(&mut report);
        if !details {
            report.redact_details();
        }
        let queues = if operator {
            self.inner
                .models
                .iter()
                .map(|m| QueueView {
                    model: &m.cfg.name,
                    waiting: m.gate.waiting(),
                    holding: m.gate.holding(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let tenants =
            crate::tenant_limits::views(&self.inner, |t| operator || caller == Some(t)).await;
        axum::Json(QuotasView {
            config_sha256: &self.inner.config_hash,
            changes_version: self.inner.overrides_version,
            report,
            queues,
            recent_refusals: operator.then(|| self.live.refusals.newest_first()),
            tenants,
        })
        .into_response()
    }
}

impl Gateway {
    /// The router, ready to serve (or to test with `oneshot`): [`api_router`](Self::api_router)
    /// plus `/healthz`, `/readyz` and `/metrics`, as served on `server.listen`: `/metrics`
    /// is open only when that address is loopback (see [`router_on`](Self::router_on)).
    pub fn router(&self) -> Router {
        self.router_on(self.inner.config.server.listen)
    }

    /// The public router as served on `addr`: `/metrics` is served to anyone when `addr`
    /// is a loopback address, else only to a caller presenting the admin key
    /// (`Authorization: Bearer <admin_key>`); others get an OpenAI-shaped 401 (404 when
    /// no admin key is configured).
    pub fn router_on(&self, addr: std::net::SocketAddr) -> Router {
        let open = addr.ip().is_loopback();
        self.api_router().merge(
            Router::new()
                .route("/healthz", get(|| async { "ok" }))
                .route("/readyz", get(readyz))
                .route(
                    "/metrics",
                    get(move |g: State<Gateway>, h: HeaderMap| async move { metrics(g, h, open) }),
                )
                .with_state(Live(self.clone())),
        )
        // Unknown paths and methods: OpenAI-shaped 404 and 405 (issue #12).
        .fallback(crate::paths::unknown_route)
        .method_not_allowed_fallback(crate::paths::method_not_allowed)
    }

    /// The admin listener's router (`[server] admin_listen`): `/healthz`, `/readyz` and
    /// [`admin_routes`](Self::admin_routes).
    pub fn admin_router(&self, open: bool) -> Router {
        self.admin_routes(open).merge(
            Router::new()
                .route("/healthz", get(|| async { "ok" }))
                .route("/readyz", get(readyz))
                .route(
                    "/metrics",
                    get(move |g: State<Gateway>, h: HeaderMap| async move { metrics(g, h, open) }),
                )
                .with_state(Live(self.clone())),
        )
    }

    /// The operational routes of an admin listener besides health and metrics: the full
    /// `GET /v1/quotas` (unredacted; to anyone when `open`, the listener being loopback,
    /// else to the admin key) and `POST /v1/admin/accounts/{upstream}/{account}/enable`
    /// (always behind the admin key). The sidecar serves them on its own admin listener.
    pub fn admin_routes(&self, open: bool) -> Router {
        Router::new()
            .route(
                "/v1/quotas",
                get(move |g: State<Gateway>, h: HeaderMap| async move {
                    admin_quotas(g, h, open).await
                }),
            )
            .route(
                "/v1/admin/accounts/{upstream}/{account}/enable",
                post(enable),
            )
            .route("/status", get(crate::status_page::page))
            .route("/v1/admin/changes", get(crate::admin::changes))
            .route(
                "/v1/admin/models/{model}/limits",
                axum::routing::put(crate::admin::set_limits).delete(crate::admin::clear_limits),
            )
            .route("/v1/admin/tenants", post(crate::admin::add_tenant))
            .route(
                "/v1/admin/tenants/{name}/rotate",
                post(crate::admin::rotate_tenant),
            )
            .route(
                "/v1/admin/tenants/{name}/weight",
                post(crate::admin::weigh_tenant),
            )
            .route(
                "/v1/admin/tenants/{name}/revoke",
                post(crate::admin::revoke_tenant),
            )
            .route(
                "/v1/admin/accounts/{upstream}/{account}/disable",
                post(crate::admin::disable_account),
            )
            .with_state(Live(self.clone()))
    }

    /// Whether a caller may read `/metrics`: always when `open` (a loopback listener),
    /// else only with the admin key. `None` serves it; `Some` is the OpenAI-shaped
    /// refusal to answer: 401 when an admin key is configured, 404 when none is (metrics
    /// are then served only on loopback).
    pub fn metrics_refusal(&self, headers: &HeaderMap, open: bool) -> Option<Response> {
        if open || self.is_admin(crate::upstream::presented_key(headers)) {
            return None;
        }
        Some(if self.inner.admin_digest.is_none() {
            admin_error(
                StatusCode::NOT_FOUND,
                "Metrics are served on a loopback listener or admin_listen; this listener is not loopback and no admin_key is configured.",
                "metrics_not_exposed",
            )
        } else {
            admin_error(
                StatusCode::UNAUTHORIZED,
                "Metrics on this listener need the admin key as Authorization: Bearer <admin_key>.",
                "invalid_api_key",
            )
        })
    }

    /// The API without the operational routes: the OpenAI-compatible proxy,
    /// `GET /v1/quotas` and `POST /v1/admin/accounts/{upstream}/{account}/enable`. The
    /// sidecar serves it as its forward proxy, beside its own operational routes.
    pub fn api_router(&self) -> Router {
        let in_flight = Arc::new(Semaphore::new(
            self.inner.config.server.max_connections.get() as usize,
        ));
        Router::new()
            .route("/v1/chat/completions", metered(Endpoint::Chat))
            .route("/v1/completions", metered(Endpoint::Completions))
            .route("/v1/embeddings", metered(Endpoint::Embeddings))
            .route("/v1/responses", metered(Endpoint::Responses))
            .route("/v1/messages", metered(Endpoint::Messages))
            .route("/v1/models", get(models))
            .route("/v1/quotas", get(quotas))
            .route(
                "/v1/admin/accounts/{upstream}/{account}/enable",
                post(enable),
            )
            .route("/v1/{*rest}", any(other))
            .layer(axum::middleware::from_fn_with_state(
                in_flight,
                limit_in_flight,
            ))
            .with_state(Live(self.clone()))
    }
}

/// Bounds the requests in flight to `server.max_connections`: one more gets an
/// immediate 503 with `Retry-After` (never a wait). A streamed answer holds its slot
/// until the stream ends.
async fn limit_in_flight(
    State(slots): State<Arc<Semaphore>>,
    req: Request,
    next: Next,
) -> Response {
    let Ok(permit) = slots.try_acquire_owned() else {
        metrics::counter!("sluice_requests_total", "model" => "none", "tenant" => "unknown", "account" => "none", "outcome" => "busy").increment(1);
        return ApiError::Busy.into_response();
    };
    let resp = next.run(req).await;
    if resp.body().size_hint().exact().is_some() {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let stream = body.into_data_stream().map(move |chunk| {
        let _held = &permit;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// `GET /v1/quotas`: every model × account as the shared store holds it.
///
/// Callers authenticate as for the API (a tenant key when `[[tenants]]` are configured)
/// or with the admin key. When an admin key is configured, the details that may carry a
/// provider's own words (why an account is out of rotation, a store error) are shown
/// only to the admin key; tenants see the state (`disabled`) without the reason.
async fn quotas(State(g): State<Gateway>, headers: HeaderMap) -> Response {
    let token = crate::upstream::presented_key(&headers);
    let admin = g.is_admin(token);
    let caller = g.inner.tenant(token);
    if !admin && caller.is_none() {
        return admin_error(
            StatusCode::UNAUTHORIZED,
            "Invalid API key: send a tenant key or the admin key as Authorization: Bearer <key>.",
            "invalid_api_key",
        );
    }
    let caller = caller.filter(|_| !g.inner.tenants.is_empty());
    g.quotas_view(admin || g.inner.admin_digest.is_none(), admin, caller)
        .await
}

/// `GET /v1/quotas` on an admin listener: the full view, to anyone when `open`, else to
/// the admin key.
async fn admin_quotas(g: State<Gateway>, headers: HeaderMap, open: bool) -> Response {
    if !open && !g.is_admin(crate::upstream::presented_key(&headers)) {
        return admin_error(
            StatusCode::UNAUTHORIZED,
            "Invalid admin key.",
            "invalid_api_key",
        );
    }
    g.quotas_view(true, true, None).await
}

fn admin_error(status: StatusCode, message: &str, code: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}})),
    )
        .into_response()
}

/// `POST /v1/admin/accounts/{upstream}/{account}/enable`, behind `[sidecar] admin_key`
/// (`Authorization: Bearer …`): puts a disabled account back into rotation on every
/// model of the upstream and ends its cooldown.
async fn enable(
    State(g): State<Gateway>,
    Path((upstream, account)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if g.inner.admin_digest.is_none() {
        return admin_error(
            StatusCode::NOT_FOUND,
            "No admin_key is configured in [sidecar]: the admin endpoints are off.",
            "admin_disabled",
        );
    }
    if !g.is_admin(crate::upstream::presented_key(&headers)) {
        return admin_error(
            StatusCode::UNAUTHORIZED,
            "Invalid admin key.",
            "invalid_api_key",
        );
    }
    match g
        .inner
        .recalibrator
        .enable(&*g.inner.limiter, &upstream, &account, "operator")
        .await
    {
        Ok(0) => admin_error(
            StatusCode::NOT_FOUND,
            &format!("No account {account:?} on upstream {upstream:?}."),
            "account_not_found",
        ),
        Ok(n) => {
            tracing::info!(target: "sluice_audit", who = "admin", action = "enable_account", what = %format!("{upstream}/{account}"), before = "out of rotation or cooling down", after = "in rotation", "admin change");
            axum::Json(serde_json::json!({"upstream": upstream, "account": account, "enabled": n}))
                .into_response()
        }
        Err(e) => admin_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("The store failed: {e}"),
            "store_unavailable",
        ),
    }
}

async fn other(State(g): State<Gateway>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    pipeline::other(g, parts.method, parts.uri, parts.headers, body).await
}

async fn models(State(g): State<Gateway>) -> Response {
    let data: Vec<_> = g
        .inner
        .models
        .iter()
        .map(|m| serde_json::json!({"id": m.cfg.name, "object": "model", "created": 0, "owned_by": m.cfg.upstream}))
        .collect();
    axum::Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

async fn readyz(State(g): State<Gateway>) -> Response {
    let limiter = &g.inner.limiter;
    if !limiter.is_shared() {
        return axum::Json(
            serde_json::json!({"status": "ready", "store": "embedded", "limits": "per process"}),
        )
        .into_response();
    }
    match limiter.ping().await {
        Ok(()) => {
            axum::Json(serde_json::json!({"status": "ready", "store": "redis"})).into_response()
        }
        Err(e) => {
            let policy = limiter.policy().unwrap_or_default();
            let body = serde_json::json!({"status": "degraded", "store": "redis", "error": e.to_string(), "policy": policy.as_str()});
            let status = if policy == OnError::FailClosed {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            (status, axum::Json(body)).into_response()
        }
    }
}

fn metrics(State(g): State<Gateway>, headers: HeaderMap, open: bool) -> Response {
    if let Some(refused) = g.metrics_refusal(&headers, open) {
        return refused;
    }
    match &g.inner.metrics {
        Some(h) => (
            [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "metrics recorder not installed in this process",
        )
            .into_response(),
    }
}

/// The route of a metered API: `POST` through the pipeline as `endpoint`, sent to
/// its path on the model's upstream.
fn metered(endpoint: Endpoint) -> axum::routing::MethodRouter<Live> {
    post(move |State(g): State<Gateway>, req: Request| {
        let (parts, body) = req.into_parts();
        pipeline::completions(g, endpoint, parts.headers, body)
    })
}

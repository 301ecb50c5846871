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
use crate::proxy;
use crate::state::Gateway;

impl Gateway {
    /// The router, ready to serve (or to test with `oneshot`): [`api_router`](Self::api_router)
    /// plus `/healthz`, `/readyz` and `/metrics`.
    pub fn router(&self) -> Router {
        self.api_router().merge(
            Router::new()
                .route("/healthz", get(|| async { "ok" }))
                .route("/readyz", get(readyz))
                .route("/metrics", get(metrics))
                .with_state(self.clone()),
        )
    }

    /// The API without the operational routes: the OpenAI-compatible proxy,
    /// `GET /v1/quotas` and `POST /v1/admin/accounts/{upstream}/{account}/enable`. The
    /// sidecar serves it as its forward proxy, beside its own operational routes.
    pub fn api_router(&self) -> Router {
        let in_flight = Arc::new(Semaphore::new(
            self.inner.config.server.max_connections.get() as usize,
        ));
        Router::new()
            .route(
                "/v1/chat/completions",
                post(|State(g): State<Gateway>, req: Request| {
                    let (parts, body) = req.into_parts();
                    proxy::completions(g, Endpoint::Chat, "/chat/completions", parts.headers, body)
                }),
            )
            .route(
                "/v1/completions",
                post(|State(g): State<Gateway>, req: Request| {
                    let (parts, body) = req.into_parts();
                    proxy::completions(
                        g,
                        Endpoint::Completions,
                        "/completions",
                        parts.headers,
                        body,
                    )
                }),
            )
            .route(
                "/v1/embeddings",
                post(|State(g): State<Gateway>, req: Request| {
                    let (parts, body) = req.into_parts();
                    proxy::completions(g, Endpoint::Embeddings, "/embeddings", parts.headers, body)
                }),
            )
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
            .with_state(self.clone())
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

/// The token of `Authorization: Bearer <token>` (or of a bare `Authorization: <token>`).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim())
}

/// `GET /v1/quotas`: every model × account as the shared store holds it.
///
/// Callers authenticate as for the API (a tenant key when `[[tenants]]` are configured)
/// or with the admin key. When an admin key is configured, the details that may carry a
/// provider's own words (why an account is out of rotation, a store error) are shown
/// only to the admin key; tenants see the state (`disabled`) without the reason.
async fn quotas(State(g): State<Gateway>, headers: HeaderMap) -> Response {
    let token = bearer_token(&headers);
    let admin = g.is_admin(token);
    if !admin && g.inner.tenant(token).is_none() {
        return admin_error(
            StatusCode::UNAUTHORIZED,
            "Invalid API key: send a tenant key or the admin key as Authorization: Bearer <key>.",
            "invalid_api_key",
        );
    }
    let mut report = sluice_recalibrate::report(&g.inner.catalog, &g.inner.limiter).await;
    if g.inner.admin_digest.is_some() && !admin {
        report.redact_details();
    }
    axum::Json(report).into_response()
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
    if !g.is_admin(bearer_token(&headers)) {
        return admin_error(
            StatusCode::UNAUTHORIZED,
            "Invalid admin key.",
            "invalid_api_key",
        );
    }
    match g
        .inner
        .recalibrator
        .enable(&g.inner.limiter, &upstream, &account, "operator")
        .await
    {
        Ok(0) => admin_error(
            StatusCode::NOT_FOUND,
            &format!("No account {account:?} on upstream {upstream:?}."),
            "account_not_found",
        ),
        Ok(n) => {
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
    proxy::other(g, parts.method, parts.uri, parts.headers, body).await
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

async fn metrics(State(g): State<Gateway>) -> Response {
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

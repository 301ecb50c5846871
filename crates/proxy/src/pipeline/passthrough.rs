//! Pass-through: any other `/v1/*` request whose path the upstream's dialect defines
//! or the operator listed (`passthrough`), sent on an account of the model it names
//! and counted as one request. See [`other`].

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sluice_limiter::{Cost, Decision, Reservation, Store};

use super::admit::{AbandonedWait, describe};
use super::{HOP, forwarded};
use crate::error::{ApiError, RateLimited};
use crate::request;
use crate::state::Gateway;
use crate::upstream::{self, presented_key};

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
    match pass(&gw, method, &uri, &headers, body).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn pass(
    gw: &Gateway,
    method: Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let inner = &*gw.inner;
    crate::paths::check_shape(uri.path()).map_err(|why| ApiError::BadRequest {
        message: format!("Invalid URL: {why}; nothing was forwarded."),
        param: None,
        code: "invalid_path",
    })?;
    let tenant = inner
        .tenant(presented_key(headers))
        .ok_or(ApiError::Unauthorized)?;
    let header_wait = request::header_max_wait(headers)?;
    let server = &inner.config.server;
    let body =
        request::read_body(headers, body, server.max_body_bytes, server.body_timeout).await?;
    let named = serde_json::from_slice::<Value>(&body).ok().and_then(|j| {
        j.get("model")
            .and_then(Value::as_str)
            .and_then(|n| inner.by_name.get(n).copied())
    });
    let mi = named
        .or((!inner.models.is_empty()).then_some(0))
        .ok_or_else(|| ApiError::ModelNotFound("(none configured)".into()))?;
    let model = &inner.models[mi];
    let upstream = &inner.config.upstreams[model.cfg.upstream_index];
    if !crate::paths::allowed(upstream.dialect, &upstream.passthrough, uri.path()) {
        return Err(ApiError::UnknownUrl {
            method: method.to_string(),
            path: uri.path().chars().take(200).collect(),
        });
    }
    let max_wait = header_wait
        .unwrap_or(inner.config.queue.max_wait)
        .min(inner.config.queue.max_wait);
    let res = slot(gw, mi, max_wait).await?;
    let account = &model.accounts[res.candidate];
    let suffix = uri.path().strip_prefix("/v1").unwrap_or(uri.path());
    let url = upstream::url(model, suffix, uri.query());
    let req = upstream::request(
        &inner.client,
        method,
        url,
        model,
        account,
        forwarded(headers),
    );
    metrics::counter!("sluice_requests_total", "model" => model.cfg.name.clone(), "tenant" => inner.tenant_name(tenant).to_owned(), "account" => account.name.clone(), "outcome" => "passthrough").increment(1);
    let up = req
        .body(body)
        .send()
        .await
        .map_err(|e| ApiError::Upstream {
            model: model.cfg.name.clone(),
            timeout: e.is_timeout(),
        })?;
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
    Ok(resp)
}

/// A slot for one request on model `mi` within `max_wait`, waited for (given back if
/// the client goes away meanwhile).
async fn slot(gw: &Gateway, mi: usize, max_wait: Duration) -> Result<Reservation, ApiError> {
    let model = &gw.inner.models[mi];
    let one = Cost {
        requests: 1,
        input_tokens: 0,
        output_tokens: 0,
        spend: 0,
    };
    let decision = gw
        .inner
        .limiter
        .acquire(&model.keys, &model.quota, one, max_wait)
        .await;
    let res = match decision {
        Ok(Decision::Granted(r)) => r,
        Ok(Decision::Refused(r)) => {
            let remaining = r.remaining.describe(&model.quota);
            return Err(ApiError::RateLimited(RateLimited {
                model: model.cfg.name.clone(),
                retry_after: r
                    .retry_after
                    .unwrap_or(max_wait)
                    .max(Duration::from_millis(1)),
                what: describe(&r.reason, &remaining, model),
                remaining,
            }));
        }
        Err(_) => {
            return Err(ApiError::StoreUnavailable {
                retry_after: Duration::from_secs(1),
            });
        }
    };
    let waiting = AbandonedWait::new(gw, mi, res);
    if !waiting.wait().is_zero() {
        tokio::time::sleep(waiting.wait()).await;
    }
    Ok(waiting.sent())
}

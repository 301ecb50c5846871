//! The admin API of the admin listener (always behind the admin key): run-time changes
//! to limits and tenants, kept in the shared store so that every replica applies them
//! (`crate::override_store`), and disabling an account with a reason. Each change is
//! one audit log line (target `sluice_audit`: who, what, before, after; keys appear
//! only as the first 8 hex digits of their SHA-256).
//!
//! | route | body |
//! |---|---|
//! | `GET /v1/admin/changes` | — (the run-time changes in force) |
//! | `PUT /v1/admin/models/{model}/limits` | `{"limits": [{"requests": 100, "per": "60s"}, {"tokens": 50000, "per": "60s"}]}` |
//! | `DELETE /v1/admin/models/{model}/limits` | — (back to the file's) |
//! | `POST /v1/admin/tenants` | `{"name": "search", "key_sha256": "<64 hex>" or "key": "…", "weight": 2}` |
//! | `POST /v1/admin/tenants/{name}/rotate` | `{"key_sha256": …}` or `{"key": …}` |
//! | `POST /v1/admin/tenants/{name}/weight` | `{"weight": 3}` |
//! | `POST /v1/admin/tenants/{name}/revoke` | — |
//! | `POST /v1/admin/accounts/{upstream}/{account}/disable` | `{"reason": "key leaked"}` |

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sluice_config::KeyDigest;
use sluice_limiter::{StateChange, Store};

use crate::overrides::{LimitOverride, TenantOverride, limits_field, tenant_field, unit_of};
use crate::state::Gateway;

/// The largest admin request body read.
const MAX_BODY: usize = 16 * 1024;

/// A refused admin request: OpenAI's `{"error":{"message","type","param","code"}}`.
#[derive(Debug)]
pub(crate) struct AdminError {
    status: StatusCode,
    message: String,
    param: Option<String>,
    code: &'static str,
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"error": {"message": self.message, "type": "invalid_request_error", "param": self.param, "code": self.code}})),
        )
            .into_response()
    }
}

/// What an admin handler answers.
type Answer = Result<Response, AdminError>;

fn error(status: StatusCode, message: &str, param: Option<&str>, code: &'static str) -> AdminError {
    AdminError {
        status,
        message: message.to_owned(),
        param: param.map(str::to_owned),
        code,
    }
}

fn bad(message: &str, param: &str) -> AdminError {
    error(
        StatusCode::BAD_REQUEST,
        message,
        Some(param),
        "invalid_value",
    )
}

/// Refuses without the admin key: 404 when none is configured, 401 when it is wrong.
fn authorize(g: &Gateway, headers: &HeaderMap) -> Result<(), AdminError> {
    if g.inner.admin_digest.is_none() {
        return Err(error(
            StatusCode::NOT_FOUND,
            "No admin_key is configured in [sidecar]: the admin endpoints are off.",
            None,
            "admin_disabled",
        ));
    }
    if !g.is_admin(crate::upstream::presented_key(headers)) {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "Invalid admin key.",
            None,
            "invalid_api_key",
        ));
    }
    Ok(())
}

/// Who made a change: `x-sluice-operator` (letters, digits, `.-_@`, up to 64), else `admin`.
fn operator(headers: &HeaderMap) -> String {
    headers
        .get("x-sluice-operator")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_@".contains(c))
        })
        .unwrap_or("admin")
        .to_owned()
}

/// The JSON object of a bounded body.
async fn object(body: Body) -> Result<serde_json::Map<String, Value>, AdminError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("The body is over {MAX_BODY} bytes."),
            None,
            "body_too_large",
        )
    })?;
    if bytes.is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad("The body must be a JSON object.", "body")),
        Err(e) => Err(bad(&format!("The body is not valid JSON: {e}"), "body")),
    }
}

/// The key digest a body names: `key_sha256` (64 hex digits) or `key` (hashed here,
/// never kept).
fn key_digest(body: &serde_json::Map<String, Value>) -> Result<KeyDigest, AdminError> {
    match (body.get("key"), body.get("key_sha256")) {
        (Some(Value::String(k)), None) if k.len() >= 16 => Ok(KeyDigest::of(k)),
        (Some(Value::String(_)), None) => Err(bad("key must be at least 16 characters.", "key")),
        (None, Some(Value::String(h))) => KeyDigest::from_hex(h)
            .ok_or_else(|| bad("key_sha256 must be 64 hexadecimal digits.", "key_sha256")),
        (None, None) => Err(bad("Give key_sha256 (or key).", "key_sha256")),
        _ => Err(bad(
            "Give exactly one of key_sha256 and key, as a string.",
            "key_sha256",
        )),
    }
}

fn weight(body: &serde_json::Map<String, Value>) -> Result<Option<u32>, AdminError> {
    match body.get("weight") {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|w| (1..=1000).contains(w))
            .map(|w| Some(w as u32))
            .ok_or_else(|| bad("weight must be an integer from 1 to 1000.", "weight")),
    }
}

fn fingerprint(d: &KeyDigest) -> String {
    d.to_hex()[..8].to_owned()
}

/// Re-reads the run-time changes from the store and applies them.
pub(crate) async fn refresh(g: &Gateway) {
    match g.live.store.read().await {
        Ok(o) => {
            let version = o.version;
            match g.apply_overrides(o).await {
                Ok(()) => tracing::info!(version, "run-time changes applied"),
                Err(e) => {
                    tracing::error!(error = %e, version, "run-time changes do not build; the previous rules stay")
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read run-time changes"),
    }
}

/// Writes one change, applies it here at once, logs the audit line and answers.
async fn commit(
    g: &Gateway,
    who: &str,
    action: &str,
    field: &str,
    value: Option<String>,
    before: Value,
    after: Value,
) -> Answer {
    if let Err(e) = g.live.store.write(field, value.as_deref()).await {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("The change was not kept: {e}"),
            None,
            "store_unavailable",
        ));
    }
    refresh(g).await;
    tracing::info!(target: "sluice_audit", who, action, what = field, before = %before, after = %after, "admin change");
    let version = g.current().inner.overrides_version;
    Ok(axum::Json(json!({"applied": action, "what": field, "before": before, "after": after, "version": version, "shared": g.live.store.is_shared()})).into_response())
}

/// `GET /v1/admin/changes`.
pub(crate) async fn changes(State(g): State<Gateway>, headers: HeaderMap) -> Answer {
    authorize(&g, &headers)?;
    let o = g.live.overrides.lock().clone();
    let tenants: serde_json::Map<String, Value> = o
        .tenants
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                json!({"key_sha256_prefix": t.key_sha256.as_deref().map(|h| h.get(..8).unwrap_or("")), "weight": t.weight, "revoked": t.revoked}),
            )
        })
        .collect();
    Ok(axum::Json(json!({"version": o.version, "shared": g.live.store.is_shared(), "limits": o.limits, "tenants": tenants})).into_response())
}

fn limits_json(limits: &[sluice_config::LimitSpec]) -> Value {
    json!(limits.iter().map(LimitOverride::of).collect::<Vec<_>>())
}

/// One entry of a `PUT …/limits` body (`{"requests": 100, "per": "60s"}`), checked; a
/// refusal names the entry's key at fault (`at` is its path, `limits[i]`).
fn limit_override(at: &str, item: &Value) -> Result<LimitOverride, AdminError> {
    let Some(obj) = item.as_object() else {
        return Err(bad("Each limit is an object.", at));
    };
    let units: Vec<(&String, &Value)> = obj.iter().filter(|(k, _)| unit_of(k).is_some()).collect();
    let [(unit, amount)] = units.as_slice() else {
        return Err(bad(
            "Each limit has exactly one of requests, tokens, input_tokens, output_tokens.",
            at,
        ));
    };
    if let Some(extra) = obj.keys().find(|k| unit_of(k).is_none() && *k != "per") {
        return Err(bad(
            &format!("Unknown key {extra:?}."),
            &format!("{at}.{extra}"),
        ));
    }
    let Some(amount) = amount.as_u64().filter(|a| *a > 0) else {
        return Err(bad(
            "The amount is a positive integer.",
            &format!("{at}.{unit}"),
        ));
    };
    let per = match obj.get("per").and_then(Value::as_str) {
        Some(p) => match sluice_config::parse_duration(p) {
            Some(d) if !d.is_zero() => d,
            _ => {
                return Err(bad(
                    "per is a duration such as \"60s\" or \"1m\".",
                    &format!("{at}.per"),
                ));
            }
        },
        None => {
            return Err(bad(
                "per is a duration such as \"60s\" or \"1m\".",
                &format!("{at}.per"),
            ));
        }
    };
    Ok(LimitOverride {
        unit: (*unit).clone(),
        amount,
        per_ms: per.as_millis() as u64,
    })
}

/// `PUT /v1/admin/models/{model}/limits`.
pub(crate) async fn set_limits(
    State(g): State<Gateway>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    authorize(&g, &headers)?;
    let Some(m) = g.inner.config.models.iter().find(|m| m.name == model) else {
        return Err(error(
            StatusCode::NOT_FOUND,
            &format!("No model {model:?} is configured."),
            Some("model"),
            "model_not_found",
        ));
    };
    let body = object(body).await?;
    let Some(Value::Array(items)) = body.get("limits") else {
        return Err(bad(
            "Give limits: [{\"requests\": 100, \"per\": \"60s\"}, …].",
            "limits",
        ));
    };
    if items.is_empty() || items.len() > 8 {
        return Err(bad("limits must have 1 to 8 entries.", "limits"));
    }
    let limits = items
        .iter()
        .enumerate()
        .map(|(i, item)| limit_override(&format!("limits[{i}]"), item))
        .collect::<Result<Vec<_>, _>>()?;
    let mut candidate = m.clone();
    candidate.limits = limits.iter().filter_map(LimitOverride::spec).collect();
    if let Err(e) = sluice_recalibrate::quota(&candidate) {
        return Err(bad(
            &format!("These limits cannot be enforced: {e}"),
            "limits",
        ));
    }
    let before = limits_json(&m.limits);
    let after = limits_json(&candidate.limits);
    let value = serde_json::to_string(&limits).unwrap_or_default();
    commit(
        &g,
        &operator(&headers),
        "set_limits",
        &limits_field(&model),
        Some(value),
        before,
        after,
    )
    .await
}

/// `DELETE /v1/admin/models/{model}/limits`: back to the file's figures.
pub(crate) async fn clear_limits(
    State(g): State<Gateway>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> Answer {
    authorize(&g, &headers)?;
    let before = g
        .inner
        .config
        .models
        .iter()
        .find(|m| m.name == model)
        .map_or(Value::Null, |m| limits_json(&m.limits));
    let file = g.live.file.lock().0.clone();
    let after = file
        .models
        .iter()
        .find(|m| m.name == model)
        .map_or(Value::Null, |m| limits_json(&m.limits));
    commit(
        &g,
        &operator(&headers),
        "clear_limits",
        &limits_field(&model),
        None,
        before,
        after,
    )
    .await
}

fn tenant_state(g: &Gateway, name: &str) -> Value {
    match g.inner.config.tenants.iter().find(|t| t.name == name) {
        Some(t) => {
            json!({"key_sha256_prefix": fingerprint(&t.key), "weight": t.weight.get(), "revoked": g.inner.revoked.contains(name)})
        }
        None => Value::Null,
    }
}

fn tenant_exists(g: &Gateway, name: &str) -> bool {
    g.inner.config.tenants.iter().any(|t| t.name == name)
}

fn no_tenant(name: &str) -> AdminError {
    error(
        StatusCode::NOT_FOUND,
        &format!("No tenant {name:?}."),
        Some("name"),
        "tenant_not_found",
    )
}

/// The tenant's run-time record so far (to change one part of it).
fn tenant_override(g: &Gateway, name: &str) -> TenantOverride {
    g.live
        .overrides
        .lock()
        .tenants
        .get(name)
        .cloned()
        .unwrap_or(TenantOverride {
            key_sha256: None,
            weight: None,
            revoked: false,
        })
}

async fn write_tenant(
    g: &Gateway,
    headers: &HeaderMap,
    action: &str,
    name: &str,
    t: TenantOverride,
) -> Answer {
    let before = tenant_state(g, name);
    let value = serde_json::to_string(&t).unwrap_or_default();
    let field = tenant_field(name);
    if let Err(e) = g.live.store.write(&field, Some(&value)).await {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("The change was not kept: {e}"),
            None,
            "store_unavailable",
        ));
    }
    refresh(g).await;
    let now = g.current();
    let after = tenant_state(&now, name);
    let who = operator(headers);
    tracing::info!(target: "sluice_audit", who = %who, action, what = %field, before = %before, after = %after, "admin change");
    Ok(axum::Json(json!({"applied": action, "what": field, "before": before, "after": after, "version": now.inner.overrides_version, "shared": g.live.store.is_shared()})).into_response())
}

/// `POST /v1/admin/tenants`.
pub(crate) async fn add_tenant(State(g): State<Gateway>, headers: HeaderMap, body: Body) -> Answer {
    authorize(&g, &headers)?;
    let body = object(body).await?;
    let Some(name) = body.get("name").and_then(Value::as_str).filter(|n| {
        !n.is_empty()
            && n.len() <= 64
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    }) else {
        return Err(bad(
            "name is 1 to 64 letters, digits, '-', '_' or '.'.",
            "name",
        ));
    };
    if tenant_exists(&g, name) && !g.inner.revoked.contains(name) {
        return Err(error(
            StatusCode::CONFLICT,
            &format!("Tenant {name:?} exists: rotate its key instead."),
            Some("name"),
            "tenant_exists",
        ));
    }
    let key = key_digest(&body)?;
    let weight = weight(&body)?;
    let t = TenantOverride {
        key_sha256: Some(key.to_hex()),
        weight,
        revoked: false,
    };
    write_tenant(&g, &headers, "add_tenant", name, t).await
}

/// `POST /v1/admin/tenants/{name}/rotate`.
pub(crate) async fn rotate_tenant(
    State(g): State<Gateway>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    authorize(&g, &headers)?;
    if !tenant_exists(&g, &name) {
        return Err(no_tenant(&name));
    }
    let body = object(body).await?;
    let key = key_digest(&body)?;
    let mut t = tenant_override(&g, &name);
    t.key_sha256 = Some(key.to_hex());
    t.revoked = false;
    write_tenant(&g, &headers, "rotate_tenant_key", &name, t).await
}

/// `POST /v1/admin/tenants/{name}/weight`.
pub(crate) async fn weigh_tenant(
    State(g): State<Gateway>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    authorize(&g, &headers)?;
    if !tenant_exists(&g, &name) {
        return Err(no_tenant(&name));
    }
    let body = object(body).await?;
    let Some(w) = weight(&body)? else {
        return Err(bad("Give weight.", "weight"));
    };
    let mut t = tenant_override(&g, &name);
    t.weight = Some(w);
    write_tenant(&g, &headers, "set_tenant_weight", &name, t).await
}

/// `POST /v1/admin/tenants/{name}/revoke`.
pub(crate) async fn revoke_tenant(
    State(g): State<Gateway>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Answer {
    authorize(&g, &headers)?;
    if !tenant_exists(&g, &name) {
        return Err(no_tenant(&name));
    }
    let mut t = tenant_override(&g, &name);
    t.revoked = true;
    write_tenant(&g, &headers, "revoke_tenant", &name, t).await
}

/// `POST /v1/admin/accounts/{upstream}/{account}/disable`: out of rotation on every
/// model of the upstream, with the reason (shown in `/v1/quotas`), until enabled.
pub(crate) async fn disable_account(
    State(g): State<Gateway>,
    Path((upstream, account)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    authorize(&g, &headers)?;
    let body = object(body).await?;
    let Some(reason) = body
        .get("reason")
        .and_then(Value::as_str)
        .filter(|r| !r.trim().is_empty() && r.len() <= 200)
    else {
        return Err(bad(
            "Give a reason (1 to 200 characters): it is shown in /v1/quotas.",
            "reason",
        ));
    };
    let who = operator(&headers);
    let why = format!("disabled by {who}: {reason}");
    let mut n = 0;
    for (m, key) in g.inner.catalog.accounts(&upstream, &account) {
        if let Err(e) = g
            .inner
            .limiter
            .update(key, &m.quota, StateChange::Disable(why.clone()))
            .await
        {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("The store failed: {e}"),
                None,
                "store_unavailable",
            ));
        }
        n += 1;
    }
    if n == 0 {
        return Err(error(
            StatusCode::NOT_FOUND,
            &format!("No account {account:?} on upstream {upstream:?}."),
            None,
            "account_not_found",
        ));
    }
    tracing::info!(target: "sluice_audit", who = %who, action = "disable_account", what = %format!("{upstream}/{account}"), before = "in rotation", after = %why, "admin change");
    Ok(
        axum::Json(json!({"upstream": upstream, "account": account, "disabled": n, "reason": why}))
            .into_response(),
    )
}

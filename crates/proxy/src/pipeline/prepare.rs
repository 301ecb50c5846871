//! The authenticate and parse stages: who is asking (a tenant key in any of the headers
//! [`presented_key`] accepts), the body read under the server's limits and checked for
//! its API, the model it names, and the request's deadline (the shortest of the
//! server's, the tenant's and the client's `x-sluice-max-wait`).
//!
//! Invariant: nothing is charged and nothing goes upstream before a request has passed
//! both; a refusal here names the parameter or the credential at fault.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue};
use bytes::Bytes;
use serde_json::Value;
use sluice_limiter::Cost;

use super::admit::Ask;
use super::{Refuse, forwarded};
use crate::error::ApiError;
use crate::estimate::{Endpoint, output_tokens, prompt_tokens_bounded};
use crate::request;
use crate::state::{Gateway, ModelState};
use crate::upstream::presented_key;

/// A request once authenticated and parsed: what every later stage reads.
pub(super) struct Prepared {
    /// The API and the path it is sent to upstream.
    pub(super) endpoint: Endpoint,
    pub(super) path: &'static str,
    pub(super) tenant: usize,
    /// The tenant's fair-share weight.
    pub(super) weight: u32,
    /// The shortest of the server's, the tenant's and the client's maximum wait, and
    /// the deadline it sets.
    pub(super) max_wait: Duration,
    pub(super) deadline: Instant,
    /// The body as sent, and as parsed.
    pub(super) body: Bytes,
    pub(super) json: Value,
    /// The model the client named, and its index.
    pub(super) name: String,
    pub(super) first: usize,
    /// A streamed answer was asked for, and (for chat and completions) its usage.
    pub(super) stream: bool,
    pub(super) client_usage: bool,
    /// The client headers passed upstream.
    pub(super) forward: HeaderMap,
}

/// The authenticate and parse stages: the tenant from its key, the body read under
/// the server's limits and checked for `endpoint`, the model it names, and the
/// request's deadline.
pub(super) async fn prepare(
    gw: &Gateway,
    endpoint: Endpoint,
    path: &'static str,
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
        endpoint,
        path,
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
    pub(super) fn body_for(&self, model: &ModelState) -> (Bytes, bool) {
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

    /// What the request costs on `model`: the estimate reserved (prompt tokens with the
    /// model's learned correction, plus the maximum output), and the raw prompt count
    /// the correction learns from.
    pub(super) fn cost_on(&self, model: &ModelState) -> (Cost, u64) {
        let raw_prompt = prompt_tokens_bounded(
            self.endpoint,
            &self.json,
            model.cfg.tokenizer,
            self.body.len(),
        );
        let cost = Cost::request(
            model.learner.correct(raw_prompt),
            output_tokens(self.endpoint, &self.json, model.cfg.output_estimate),
        );
        (cost, raw_prompt)
    }

    /// What attempt `attempt` (0-based) asks of the admit stage for `cost`.
    pub(super) fn ask(&self, cost: Cost, attempt: u32) -> Ask {
        Ask {
            tenant: self.tenant,
            weight: self.weight,
            cost,
            deadline: self.deadline,
            max_wait: self.max_wait,
            attempt,
        }
    }
}

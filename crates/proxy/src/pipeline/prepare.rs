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
    /// The API (and so the path it is sent to upstream, [`Endpoint::path`]).
    pub(super) endpoint: Endpoint,
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::{bearer, gateway, prepared};
    use super::*;

    const URL: &str = "http://127.0.0.1:9";

    async fn refusal(gw: &Gateway, headers: HeaderMap, body: Value) -> (Option<usize>, ApiError) {
        let body = Body::from(body.to_string());
        match prepare(gw, Endpoint::Chat, &headers, body, Instant::now()).await {
            Ok(_) => panic!("prepared a request that should be refused"),
            Err((tenant, _, e, _)) => (tenant, e),
        }
    }

    fn chat(model: &str) -> Value {
        json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 7})
    }

    #[tokio::test]
    async fn a_request_is_refused_before_anything_is_read_without_a_tenant_key() {
        let gw = gateway(URL, "");
        let (tenant, e) = refusal(&gw, bearer("sk-nobody-key"), chat("m")).await;
        assert_eq!((tenant, e.kind()), (None, "unauthorized"));
        let (tenant, e) = refusal(&gw, HeaderMap::new(), chat("m")).await;
        assert_eq!((tenant, e.kind()), (None, "unauthorized"));
    }

    #[tokio::test]
    async fn an_unknown_model_or_a_bad_body_names_the_tenant_and_what_is_wrong() {
        let gw = gateway(URL, "");
        let (tenant, e) = refusal(&gw, bearer("sk-app-key"), chat("nope")).await;
        assert_eq!((tenant, e.kind()), (Some(0), "model_not_found"));
        let (_, e) = refusal(&gw, bearer("sk-app-key"), json!({"model": "m"})).await;
        assert!(matches!(
            e,
            ApiError::BadRequest {
                param: Some("messages"),
                ..
            }
        ));
    }

    #[tokio::test]
    async fn the_deadline_is_the_shortest_of_server_tenant_and_client() {
        let gw = gateway(URL, "");
        let p = prepared(&gw, Endpoint::Chat, chat("m")).await;
        assert_eq!(
            p.max_wait,
            Duration::from_secs(10),
            "the server's queue.max_wait"
        );

        let body = || Body::from(chat("m").to_string());
        let t0 = Instant::now();
        let headers = bearer("sk-slow-key");
        let slow = prepare(&gw, Endpoint::Chat, &headers, body(), t0);
        let slow = slow.await.ok().expect("prepared");
        assert_eq!((slow.tenant, slow.max_wait), (1, Duration::from_secs(2)));
        assert_eq!(slow.deadline, t0 + Duration::from_secs(2));

        let mut headers = bearer("sk-slow-key");
        headers.insert("x-sluice-max-wait", HeaderValue::from_static("500ms"));
        let client = prepare(&gw, Endpoint::Chat, &headers, body(), t0);
        let client = client.await.ok().expect("prepared");
        assert_eq!(client.max_wait, Duration::from_millis(500));
    }

    #[tokio::test]
    async fn the_upstream_body_names_the_upstream_model_and_asks_for_stream_usage() {
        let gw = gateway(URL, "");
        let model = |name: &str| &gw.inner.models[gw.inner.by_name[name]];

        // The same model name upstream, no stream: the body goes as it came.
        let plain = prepared(&gw, Endpoint::Chat, chat("m2")).await;
        let (body, asked) = plain.body_for(model("m2"));
        assert_eq!((body, asked), (plain.body.clone(), false));

        // Renamed upstream, streamed without usage: both rewritten, usage asked for.
        let mut streamed = chat("m");
        streamed["stream"] = json!(true);
        let p = prepared(&gw, Endpoint::Chat, streamed).await;
        assert!(p.stream && !p.client_usage);
        let (body, asked) = p.body_for(model("m"));
        let sent: Value = serde_json::from_slice(&body).unwrap();
        assert!(asked);
        assert_eq!(sent["model"], "m-upstream");
        assert_eq!(sent["stream_options"]["include_usage"], true);

        // A Responses stream always ends with its usage: nothing asked for.
        let responses = json!({"model": "m2", "input": "hi", "stream": true});
        let p = prepared(&gw, Endpoint::Responses, responses).await;
        assert!(p.stream && p.client_usage);
        assert!(!p.body_for(model("m2")).1);
    }

    #[tokio::test]
    async fn the_cost_is_the_prompt_plus_the_maximum_output() {
        let gw = gateway(URL, "");
        let p = prepared(&gw, Endpoint::Chat, chat("m")).await;
        let (cost, raw_prompt) = p.cost_on(&gw.inner.models[0]);
        assert_eq!(cost.requests, 1);
        assert_eq!(cost.output_tokens, 7);
        assert!(raw_prompt > 0);
        assert_eq!(cost.input_tokens, raw_prompt, "no correction learned yet");
    }
}

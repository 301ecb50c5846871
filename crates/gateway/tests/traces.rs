//! OpenTelemetry traces: a real `sluice-gateway` process exports its spans over
//! OTLP/HTTP (protobuf) to a receiver in this test, only when an OTLP endpoint is set.
//! A served request and a refused one are traced end to end: the span tree, the
//! attributes that tie a refusal to the limit and account that bound it (and to the
//! request id the client saw), the W3C `traceparent` carried upstream and continued
//! from the client, and no key anywhere in what is exported.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::{any, post};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use sluice_testkit::wait_until;

use crate::support::client;

const PROVIDER_KEY: &str = "sk-trace-prov-Wq83LmZr";
const TENANT_KEY: &str = "tenant-trace-Hs72KdPq";
/// A caller's trace: the gateway's `request` span continues it.
const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

/// One exported span, its ids in hex and its attributes as text.
#[derive(Clone, Debug)]
struct Got {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: HashMap<String, String>,
    service: String,
}

impl Got {
    fn attr(&self, key: &str) -> &str {
        self.attrs
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("span {} has no attribute {key}: {self:?}", self.name))
    }
}

#[derive(Default)]
struct Received {
    posts: usize,
    bodies: Vec<Vec<u8>>,
    spans: Vec<Got>,
}

type Shared = Arc<Mutex<Received>>;

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

async fn traces(State(s): State<Shared>, body: bytes::Bytes) -> impl IntoResponse {
    let req = ExportTraceServiceRequest::decode(body.as_ref()).expect("OTLP protobuf");
    let mut got = s.lock().unwrap();
    got.posts += 1;
    got.bodies.push(body.to_vec());
    for rs in &req.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for ss in &rs.scope_spans {
            for span in &ss.spans {
                got.spans.push(Got {
                    name: span.name.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    attrs: attrs(&span.attributes),
                    service: service.clone(),
                });
            }
        }
    }
    // An empty ExportTraceServiceResponse.
    (
        [("content-type", "application/x-protobuf")],
        Vec::<u8>::new(),
    )
}

/// Anything sent elsewhere than `/v1/traces` (metrics, logs, a wrong path): counted as a
/// post, so that "nothing was sent" means nothing at all.
async fn other_signal(State(s): State<Shared>, body: bytes::Bytes) -> impl IntoResponse {
    let mut got = s.lock().unwrap();
    got.posts += 1;
    got.bodies.push(body.to_vec());
    axum::http::StatusCode::OK
}

/// A tiny OTLP/HTTP receiver on a real socket (`listener`); returns its base URL.
async fn receiver(listener: tokio::net::TcpListener) -> (String, Shared) {
    let shared = Shared::default();
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .fallback(other_signal)
        .with_state(shared.clone());
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, shared)
}

/// An upstream that answers every chat completion and records the headers it got.
async fn upstream() -> (String, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    async fn answer(
        State(seen): State<Arc<Mutex<Vec<HeaderMap>>>>,
        headers: HeaderMap,
    ) -> impl IntoResponse {
        seen.lock().unwrap().push(headers);
        axum::Json(serde_json::json!({
            "id": "chatcmpl-trace", "object": "chat.completion", "created": 0, "model": "ok",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
        }))
    }
    let app = Router::new()
        .route("/v1/{*rest}", any(answer))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// A gateway process with exactly the `OTEL_*` variables given (the test's own are
/// removed), its stderr collected; killed when dropped.
/// A `sluice-gateway` process (tenant `app`, one model `ok` at 1 request per minute on
/// `upstream`) with the OTel variables `otel` set and its log lines kept.
struct Gateway {
    service: sluice_testkit::Service,
    url: String,
}

impl Gateway {
    fn start(upstream: &str, otel: &[(&str, String)]) -> Self {
        let toml = format!(
            r#"
[[upstreams]]
name = "prov"
base_url = "{upstream}"
keys = ["{PROVIDER_KEY}"]
[[models]]
name = "ok"
upstream = "prov"
rpm = 1
[queue]
max_wait = "1s"
[retry]
max_attempts = 1
[[tenants]]
name = "app"
key = "{TENANT_KEY}"
"#
        );
        let mut env = vec![
            ("SLUICE_LOG", "info".to_owned()),
            ("NO_COLOR", "1".to_owned()),
        ];
        env.extend(otel.iter().cloned());
        let service = sluice_testkit::Service::start_capturing(
            env!("CARGO_BIN_EXE_sluice-gateway"),
            &toml,
            &[],
            &env,
        );
        let url = service.url().to_owned();
        Self { service, url }
    }

    /// SIGTERM, then waits for the exit and the last log line; true when it exited cleanly.
    fn terminate(&mut self) -> bool {
        self.service.signal("TERM") && self.service.wait()
    }
}

async fn chat(gw: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client()
        .post(format!("{gw}/v1/chat/completions"))
        .bearer_auth(TENANT_KEY)
        .json(&serde_json::json!({"model": "ok", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("the gateway answers")
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Waits (off the runtime's workers) until `ready` holds on what was received.
async fn received_until(shared: &Shared, ready: impl Fn(&Received) -> bool) -> bool {
    tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(20), || ready(&shared.lock().unwrap()))
    })
}

fn children<'a>(spans: &'a [Got], parent: &Got) -> Vec<&'a Got> {
    spans
        .iter()
        .filter(|s| s.trace_id == parent.trace_id && s.parent == parent.span_id)
        .collect()
}

fn only<'a>(spans: &[&'a Got], name: &str) -> &'a Got {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span expected among {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_trace_a_served_and_a_refused_request() {
    let any_port = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (otlp, got) = receiver(any_port).await;
    let (up, up_seen) = upstream().await;
    let mut gw = Gateway::start(
        &up,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ],
    );

    // Served, continuing the caller's trace.
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let served = chat(
        &gw.url,
        &[("traceparent", &caller), ("x-request-id", "req-served-1")],
    )
    .await;
    assert_eq!(served.status(), 200);
    assert_eq!(header(&served, "x-trace-id").as_deref(), Some(CALLER_TRACE));
    // Refused: `rpm = 1` is spent and the next slot is a minute away.
    let refused = chat(&gw.url, &[]).await;
    assert_eq!(refused.status(), 429);
    let refused_rid = header(&refused, "x-request-id").expect("a request id");
    let refused_trace = header(&refused, "x-trace-id").expect("a trace id when tracing is on");
    assert_eq!(refused_trace.len(), 32, "{refused_trace}");
    assert_ne!(refused_trace, CALLER_TRACE);
    let body: serde_json::Value = refused.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("1 requests per 60s"),
        "the refusal names its limit: {message}"
    );

    let both = |r: &Received| {
        ["req-served-1", refused_rid.as_str()].iter().all(|rid| {
            r.spans.iter().any(|s| {
                s.name == "request" && s.attrs.get("request_id").map(String::as_str) == Some(*rid)
            })
        }) && r.spans.iter().any(|s| s.name == "reconcile")
    };
    assert!(
        received_until(&got, both).await,
        "both request spans exported: {:#?}",
        got.lock().unwrap().spans
    );
    let spans = got.lock().unwrap().spans.clone();
    assert!(
        spans.iter().all(|s| s.service == "sluice-gateway"),
        "{spans:#?}"
    );

    // The served request: request → {queue_wait → limiter.acquire, upstream, reconcile},
    // under the caller's span.
    let request = spans
        .iter()
        .find(|s| {
            s.name == "request"
                && s.attrs.get("request_id").map(String::as_str) == Some("req-served-1")
        })
        .unwrap();
    assert_eq!(request.trace_id, CALLER_TRACE);
    assert_eq!(request.parent, CALLER_SPAN);
    assert_eq!(request.attr("model"), "ok");
    assert_eq!(request.attr("tenant"), "app");
    assert_eq!(request.attr("account"), "key-0");
    assert_eq!(request.attr("outcome"), "ok");
    assert_eq!(request.attr("status"), "200");
    let kids = children(&spans, request);
    let queue = only(&kids, "queue_wait");
    let upstream = only(&kids, "upstream");
    let reconcile = only(&kids, "reconcile");
    assert_eq!(queue.attr("attempt"), "1");
    assert!(queue.attrs.contains_key("wait_ms"), "{queue:?}");
    let acquire = only(&children(&spans, queue), "limiter.acquire");
    assert_eq!(acquire.attr("decision"), "granted");
    assert_eq!(acquire.attr("account"), "key-0");
    let key = acquire.attr("quota_key");
    assert!(key.starts_with("prov/") && key.ends_with("/key-0"), "{key}");
    assert_eq!(upstream.attr("status"), "200");
    assert_eq!(upstream.attr("attempt"), "1");
    assert_eq!(upstream.attr("account"), "key-0");
    assert_eq!(reconcile.attr("usage_known"), "true");
    assert_eq!(reconcile.attr("actual_input_tokens"), "10");
    // The upstream request carried the upstream span's context.
    let up_headers = up_seen.lock().unwrap().clone();
    assert_eq!(up_headers.len(), 1, "only the served request went upstream");
    let sent = up_headers[0]["traceparent"].to_str().unwrap();
    assert_eq!(
        sent,
        format!("00-{CALLER_TRACE}-{}-01", upstream.span_id),
        "traceparent sent upstream"
    );

    // The refused request: its span names the limit, the account and the request id
    // the client saw; its limiter span says why.
    let request = spans
        .iter()
        .find(|s| s.name == "request" && s.attrs.get("request_id") == Some(&refused_rid))
        .unwrap();
    assert_eq!(request.trace_id, refused_trace);
    assert!(request.parent.is_empty(), "a root span: {request:?}");
    assert_eq!(request.attr("outcome"), "rate_limited");
    assert_eq!(request.attr("status"), "429");
    assert_eq!(request.attr("limit"), "1 requests per 60s");
    assert_eq!(request.attr("account"), "key-0");
    assert!(request.attr("retry_after_ms").parse::<u64>().unwrap() > 0);
    let kids = children(&spans, request);
    assert!(kids.iter().all(|s| s.name != "upstream"), "{kids:#?}");
    let queue = only(&kids, "queue_wait");
    assert_eq!(queue.attr("outcome"), "refused");
    let acquire = only(&children(&spans, queue), "limiter.acquire");
    assert_eq!(acquire.attr("decision"), "refused");
    assert_eq!(acquire.attr("reason"), "limit");
    assert_eq!(acquire.attr("limit"), "1 requests per 60s");
    assert_eq!(acquire.attr("account"), "key-0");

    // No key in anything exported, decoded or raw.
    for s in &spans {
        for (k, v) in &s.attrs {
            assert!(
                !v.contains(PROVIDER_KEY) && !v.contains(TENANT_KEY),
                "{}.{k} = {v}",
                s.name
            );
        }
    }
    for body in &got.lock().unwrap().bodies {
        let raw = String::from_utf8_lossy(body);
        assert!(!raw.contains(PROVIDER_KEY) && !raw.contains(TENANT_KEY));
    }

    // The refusal's log line ties the same facts together.
    assert!(gw.terminate(), "a clean exit on SIGTERM");
    let logs = gw.service.logs();
    let line = logs
        .iter()
        .find(|l| l.contains(&refused_rid) && l.contains("rate_limited"))
        .unwrap_or_else(|| panic!("a log line for the refusal: {logs:#?}"));
    assert!(line.contains("INFO"), "{line}");
    for part in [
        "model=ok",
        "account=key-0",
        "1 requests per 60s",
        "retry_after_ms=",
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
    assert!(
        logs.iter()
            .all(|l| !l.contains(PROVIDER_KEY) && !l.contains(TENANT_KEY))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_exported_without_an_endpoint() {
    // A receiver on a free port, named explicitly in every OTLP variable but the two
    // that turn trace export on (the metrics and logs endpoints, the protocol, the
    // exporter and sampler choice): a gateway that exported anything on these alone
    // would post here, whatever else listens on this machine.
    let any_port = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (otlp, got) = receiver(any_port).await;
    // And where an exporter sends by default (127.0.0.1:4318), when that port is free:
    // the check above holds its meaning either way, this one adds the default target.
    let default_target = match tokio::net::TcpListener::bind("127.0.0.1:4318").await {
        Ok(l) => Some(receiver(l).await.1),
        Err(e) => {
            eprintln!("127.0.0.1:4318 is taken ({e}): the default OTLP target is not watched");
            None
        }
    };
    let (up, up_seen) = upstream().await;
    let mut gw = Gateway::start(
        &up,
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                format!("{otlp}/v1/metrics"),
            ),
            (
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
                format!("{otlp}/v1/logs"),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
            ("OTEL_TRACES_EXPORTER", "otlp".into()),
            ("OTEL_TRACES_SAMPLER", "always_on".into()),
        ],
    );
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let served = chat(&gw.url, &[("traceparent", &caller)]).await;
    assert_eq!(served.status(), 200);
    assert!(header(&served, "x-request-id").is_some());
    assert_eq!(header(&served, "x-trace-id"), None);
    // SIGTERM flushes whatever an exporter would hold; there is none.
    assert!(gw.terminate(), "a clean exit on SIGTERM");
    let up_headers = up_seen.lock().unwrap().clone();
    assert_eq!(up_headers.len(), 1);
    assert!(
        !up_headers[0].contains_key("traceparent"),
        "no trace context upstream when tracing is off"
    );
    assert_eq!(
        got.lock().unwrap().posts,
        0,
        "nothing exported to the configured OTLP receiver"
    );
    if let Some(default_target) = default_target {
        assert_eq!(
            default_target.lock().unwrap().posts,
            0,
            "nothing exported to 127.0.0.1:4318"
        );
    }
}

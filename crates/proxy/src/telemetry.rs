//! Logs, traces and metrics: the tracing subscriber of the binaries (with an optional
//! OpenTelemetry exporter), the Prometheus recorder (installed once per process) and the
//! metric names.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `sluice_requests_total` | counter | model, tenant, account, outcome |
//! | `sluice_queue_wait_seconds` | histogram | model |
//! | `sluice_reservations_released_total` | counter | model, outcome (reusable/passed/settled/dropped): slots given back by clients that went away while queued |
//! | `sluice_limiter_seconds` | histogram | op |
//! | `sluice_upstream_errors_total` | counter | model, account, reason |
//! | `sluice_tokens_total` | counter | model, tenant, kind (input/output), source (estimated/actual) |
//! | `sluice_spend_microusd_total` | counter | model, tenant |
//! | `sluice_headroom` | gauge | model, account, limit |
//! | `sluice_accounts_disabled_total` | counter | model, account, reason |
//! | `sluice_retries_total` | counter | model, reason |
//! | `sluice_fallbacks_total` | counter | from, to |
//! | `sluice_estimate_factor` | gauge | model |
//!
//! Traces (OpenTelemetry, OTLP over HTTP/protobuf) are off unless
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; the
//! other standard variables apply (`OTEL_SERVICE_NAME`, default `sluice-gateway` or
//! `sluice-sidecar`; `OTEL_TRACES_SAMPLER`/`_ARG`; `OTEL_BSP_*`;
//! `OTEL_EXPORTER_OTLP_HEADERS`). One trace per `/v1` completion request:
//!
//! | span | parent | attributes |
//! |---|---|---|
//! | `request` (server) | the caller's `traceparent`, if any | request_id, route, model, tenant (name), account (name), outcome, status; on a refusal limit, retry_after_ms |
//! | `queue_wait` | `request` | attempt, model, gate_wait_ms (local fair gate), slot_wait_ms (until the slot), wait_ms |
//! | `limiter.acquire` | `queue_wait` | candidates, cost_tokens, decision, account, quota_key, reason, limit, retry_after_ms, remaining |
//! | `upstream` (client) | `request` | attempt, model, upstream_model, account, status, retry_reason, error; sends `traceparent` |
//! | `reconcile` | `request` | estimated and actual tokens, usage_known |
//!
//! When tracing is on, answers carry `x-trace-id`; the request id (`x-request-id`) is an
//! attribute of `request`, so a refusal is found by either. Spans are `TRACE`-level
//! spans of target `sluice::span`: with tracing off (and the log filter above `trace`) they
//! are disabled at their call site and cost nothing more.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The target of the request-path spans (all at `TRACE` level).
pub(crate) const SPANS: &str = "sluice::span";

static TRACING: AtomicBool = AtomicBool::new(false);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// What [`init_logs`] installed. Dropping it (or [`Telemetry::shutdown`]) flushes the
/// spans not yet exported and stops the exporter; the binaries keep it until they exit.
#[must_use = "dropping it stops trace export; keep it until the process exits"]
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether traces are exported (an OTLP endpoint is configured).
    pub fn tracing(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is left and stops the exporter (waits for the export, bounded by
    /// `OTEL_BSP_EXPORT_TIMEOUT`). Call it outside any Tokio runtime.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take() {
            TRACING.store(false, Ordering::Relaxed);
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "trace export did not shut down cleanly");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs the binaries' log subscriber: to stderr, filtered by `SLUICE_LOG` (default
/// `info`), as text or as JSON lines. Used by `sluice-gateway` and `sluice-sidecar`;
/// call it before starting a Tokio runtime.
///
/// When `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, it
/// also exports the request spans over OTLP/HTTP (protobuf), continuing a caller's W3C
/// `traceparent` and sending one upstream; the logs stay as they are. Without either
/// variable nothing more is installed than the logs.
pub fn init_logs(json: bool) -> Telemetry {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "info".into())
    };
    let endpoint_set = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
    let provider = if endpoint_set {
        match tracer_provider() {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("OpenTelemetry traces off: the OTLP exporter cannot be built: {e}");
                None
            }
        }
    } else {
        None
    };
    let Some(provider) = provider else {
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr);
        if json {
            builder.json().init();
        } else {
            builder.init();
        }
        return Telemetry { provider: None };
    };

    // Spans go to OpenTelemetry only (so log lines keep their shape); events go to both,
    // becoming span events in the trace.
    let mut otel_filter = filter();
    if let Ok(spans) = format!("{SPANS}=trace").parse() {
        otel_filter = otel_filter.add_directive(spans);
    }
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service_name()))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_target(false)
        .with_filter(otel_filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(otel);
    if json {
        registry.with(fmt.json().with_filter(filter())).init();
    } else {
        registry.with(fmt.with_filter(filter())).init();
    }
    TRACING.store(true, Ordering::Relaxed);
    Telemetry {
        provider: Some(provider),
    }
}

/// `OTEL_SERVICE_NAME`, else `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else the
/// binary's name (`sluice-gateway`, `sluice-sidecar`).
fn service_name() -> String {
    if let Some(n) = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
    {
        return n;
    }
    let from_attrs = std::env::var("OTEL_RESOURCE_ATTRIBUTES")
        .ok()
        .and_then(|a| {
            a.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k.trim() == "service.name").then(|| v.trim().to_owned())
            })
        });
    if let Some(n) = from_attrs.filter(|n| !n.is_empty()) {
        return n;
    }
    std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .filter(|n| n.starts_with("sluice-"))
        .unwrap_or_else(|| "sluice-gateway".into())
}

fn tracer_provider() -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Whether spans are exported (then `traceparent` is read and sent, and `x-trace-id`
/// answered).
pub(crate) fn tracing_on() -> bool {
    TRACING.load(Ordering::Relaxed)
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.insert(k, v);
        }
    }
}

/// Makes `span` continue the caller's trace when the request carries a W3C
/// `traceparent` (and tracing is on).
pub(crate) fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    if !tracing_on() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Adds `traceparent` (and `tracestate`) for `span` to an upstream request's headers
/// (when tracing is on).
pub(crate) fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    if !tracing_on() || span.is_disabled() {
        return;
    }
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeadersMut(headers));
}

/// The trace id of `span` as 32 hex digits, when it is exported (sampled).
pub(crate) fn trace_id(span: &tracing::Span) -> Option<HeaderValue> {
    if !tracing_on() || span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    (sc.is_valid() && sc.is_sampled())
        .then(|| HeaderValue::try_from(sc.trace_id().to_string()).ok())
        .flatten()
}

/// Installs the Prometheus recorder (once per process) and returns its handle; `None`
/// when another recorder is already installed.
pub(crate) fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .ok()?
                .install_recorder()
                .ok()
        })
        .clone()
}

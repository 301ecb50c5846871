//! Logs and metrics: the tracing subscriber of the binaries, the Prometheus recorder
//! (installed once per process) and the metric names.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `sluice_requests_total` | counter | model, tenant, account, outcome |
//! | `sluice_queue_wait_seconds` | histogram | model |
//! | `sluice_limiter_seconds` | histogram | op |
//! | `sluice_upstream_errors_total` | counter | model, account, reason |
//! | `sluice_tokens_total` | counter | model, tenant, kind (input/output), source (estimated/actual) |
//! | `sluice_spend_microusd_total` | counter | model, tenant |
//! | `sluice_headroom` | gauge | model, account, limit |
//! | `sluice_accounts_disabled_total` | counter | model, account, reason |
//! | `sluice_retries_total` | counter | model, reason |
//! | `sluice_fallbacks_total` | counter | from, to |
//! | `sluice_estimate_factor` | gauge | model |

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the binaries' log subscriber: to stderr, filtered by `SLUICE_LOG` (default
/// `info`), as text or as JSON lines. Used by `sluice-gateway` and `sluice-sidecar`.
pub fn init_logs(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
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

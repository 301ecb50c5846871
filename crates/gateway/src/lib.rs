//! `sluice-gateway`: the OpenAI-compatible proxy that makes a fleet of replicas share
//! one provider quota. Clients change only their base URL; the gateway estimates each
//! request's cost, queues it for a slot on the best account of its model through the
//! shared limiter (Redis, or embedded), forwards it when the slot comes, retries what
//! the provider throttled, falls back to other models, and reconciles the reservation
//! with the provider's own token counts.
//!
//! The central type is [`Gateway`]: built from a [`sluice_config::Config`], it gives a
//! [`router`](Gateway::router) to serve; [`serve`] runs it on a listener until a
//! shutdown signal, draining in-flight requests.
//!
//! Request path (see `docs/gateway.md`): `routes` → `proxy::completions` (tenant auth,
//! estimate, per-model `fair` gate, `acquire`, sleep until the slot, forward) →
//! `stream`/`usage` (relay, reconcile, learn, count).

mod error;
mod estimate;
mod fair;
mod observe;
mod proxy;
mod routes;
mod state;
mod stream;
mod telemetry;
mod usage;

use std::future::Future;

pub use error::StartError;
pub use sluice_config as config;
pub use state::Gateway;

/// Serves `gateway` on `listener` until `shutdown` resolves, then stops accepting and
/// waits for in-flight requests (streams included) for up to the configured
/// `shutdown_grace`.
pub async fn serve(
    gateway: Gateway,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    if !gateway.is_shared() {
        tracing::warn!(
            "no [store] configured: the embedded limiter runs and limits are per process (each replica would admit the full quota)"
        );
    }
    let grace = gateway.config().server.shutdown_grace;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!(
            grace_s = grace.as_secs_f64(),
            "shutting down: draining in-flight requests"
        );
        let _ = tx.send(());
    };
    let server = axum::serve(listener, gateway.router()).with_graceful_shutdown(signal);
    let overdue = async move {
        if rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = server => r?,
        () = overdue => tracing::warn!("shutdown grace elapsed with requests still in flight"),
    }
    Ok(())
}

/// Binds the configured address and serves until `shutdown` (see [`serve`]).
pub async fn run(
    config: sluice_config::Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let listener = tokio::net::TcpListener::bind(config.server.listen).await?;
    serve(Gateway::new(config)?, listener, shutdown).await
}

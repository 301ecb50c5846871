//! `sluice-proxy`: the request pipeline of the OpenAI-compatible proxy that makes a
//! fleet of replicas share one provider quota. The `sluice-gateway` binary serves it; the
//! `sluice-sidecar` binary serves the same routes as its forward proxy and builds its
//! own loops on the same core (catalog, limiter, recalibrator, upstream client, logs,
//! metrics, shutdown). Neither binary's crate is a dependency of anything.
//!
//! Clients change only their base URL; the pipeline estimates each request's cost,
//! queues it for a slot on the best account of its model through the shared limiter
//! (Redis, or embedded), forwards it when the slot comes, retries what the provider
//! throttled, falls back to other models, and reconciles the reservation with the
//! provider's own token counts.
//!
//! The central type is [`Gateway`]: built from a [`sluice_config::Config`], it gives a
//! [`router`](Gateway::router) to serve; [`serve`] runs it on a listener until a
//! shutdown signal, draining in-flight requests.
//!
//! ```no_run
//! # async fn run(config: sluice_config::Config) -> Result<(), sluice_proxy::StartError> {
//! let gateway = sluice_proxy::Gateway::new(config)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! sluice_proxy::serve(gateway, listener, sluice_proxy::shutdown_signal()).await
//! # }
//! ```
//!
//! The pipeline's stages (see `docs/ARCHITECTURE.md`): `routes` (authenticate, parse per
//! API) → `estimate` → `pipeline::admit` (fair gate + limiter) → `pipeline::send`
//! (`upstream`) → `decide` (classify: retry, fall back or answer) → `stream`/`usage`
//! (relay, reconcile, observe, count).

mod admin;
mod decide;
mod error;
mod estimate;
mod fair;
mod learner;
mod meters;
mod observe;
mod override_store;
mod overrides;
mod paths;
mod pipeline;
mod refusals;
mod reload;
mod request;
mod routes;
mod state;
mod status_page;
mod stream;
mod telemetry;
mod tenant_limits;
mod upstream;
mod usage;

use std::future::Future;

pub use error::StartError;
pub use reload::{
    ConfigSource, RESTART_ONLY, ReloadError, Reloaded, reload_on_change, reload_on_sighup,
};
pub use sluice_config as config;
pub use state::Gateway;
pub use telemetry::{Telemetry, init_logs};
pub use tenant_limits::{TenantCharge, TenantHold, TenantRefused};
pub use upstream::presented_key;

/// Serves `gateway` on `listener` until `shutdown` resolves, then stops accepting and
/// waits for in-flight requests (streams included) for up to the configured
/// `shutdown_grace`.
///
/// Each connection is HTTP/1.1 with `server.header_timeout` to send a request's headers
/// (a client that stalls is disconnected); bodies are read under `server.body_timeout`
/// and requests in flight are bounded by `server.max_connections` (see the router).
///
/// `/metrics` on `listener` is open only when it is a loopback address (else it needs
/// the admin key); `server.admin_listen`, when set, is bound here and serves the
/// operational routes ([`Gateway::admin_router`]) until shutdown.
pub async fn serve(
    gateway: Gateway,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    if !gateway.is_shared() {
        tracing::warn!(
            "no [store] configured: the embedded limiter runs and limits are per process (each replica would admit the full quota)"
        );
    }
    let server = &gateway.config().server;
    let grace = server.shutdown_grace;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(server.header_timeout)
        .keep_alive(true);
    gateway.apply_shared_changes().await;
    let app = gateway.router_on(listener.local_addr()?);
    let mut admin_task = None;
    if let Some(admin) = server.admin_listen {
        let admin_listener = tokio::net::TcpListener::bind(admin).await?;
        let addr = admin_listener.local_addr()?;
        tracing::info!(%addr, "admin listener");
        let admin_app = gateway.admin_router(addr.ip().is_loopback());
        admin_task = Some(tokio::spawn(async move {
            if let Err(e) = axum::serve(admin_listener, admin_app).await {
                tracing::warn!(error = %e, "admin listener failed");
            }
        }));
    }
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: keep serving what is open.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    if let Some(t) = admin_task {
        t.abort();
    }
    tracing::info!(
        grace_s = grace.as_secs_f64(),
        "shutting down: draining in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => tracing::warn!("shutdown grace elapsed with requests still in flight"),
    }
    Ok(())
}

/// Binds the configured address and serves until `shutdown` (see [`serve`]). Refuses a
/// configuration that would serve anyone beyond this machine without a key
/// ([`sluice_config::Config::check_exposure`]).
pub async fn run(
    config: sluice_config::Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    config.check_exposure()?;
    let listener = tokio::net::TcpListener::bind(config.server.listen).await?;
    serve(Gateway::new(config)?, listener, shutdown).await
}

/// Resolves on Ctrl-C or SIGTERM: the shutdown signal of the binaries (`sluice-gateway`,
/// `sluice-sidecar`), to pass to [`serve`].
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

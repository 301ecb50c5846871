//! `sluice-sidecar`: replays what providers say in 429s and rate-limit headers into the
//! shared limiter state, so that every gateway replica recalibrates at once; and, run
//! next to an application, offers it the gateway's proxy and a small acquire/report API.
//!
//! The central type is [`Sidecar`], built from the gateway's own configuration file.
//! [`Sidecar::serve`] runs, until shutdown:
//! - the **consumer loop** (`consumer`): reads observations from the Redis stream as one
//!   member of a consumer group (each observation is applied once, however many
//!   sidecars run), applies each with the [`Recalibrator`](sluice_recalibrate::Recalibrator),
//!   acknowledges what was applied, and periodically claims the observations other
//!   members left pending for longer than `claim_after` (a sidecar that died);
//! - the **probe loop** (`probe`): every `probe_interval`, one minimal request per
//!   disabled account; a success puts it back into rotation;
//! - the **HTTP API** (`api`): `/healthz`, `/readyz`, `/metrics`, `GET /v1/quotas`, the
//!   admin endpoint, `POST /v1/acquire`, `POST /v1/report`, and the gateway's own
//!   OpenAI-compatible routes as a forward proxy (the same code, not a copy).
//!
//! Without a `[store]` there is no stream: the sidecar serves the API on an embedded
//! limiter, and the gateway code inside it recalibrates in-process.

mod api;
mod consumer;
mod probe;
mod ticket;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sluice_config::Config;
use sluice_proxy::Gateway;

/// Why the sidecar cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    /// The gateway core (limiter, quotas, upstream client) could not be built.
    #[error("{0}")]
    Start(#[from] sluice_proxy::StartError),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration would expose the sidecar without keys
    /// ([`Config::check_sidecar_exposure`]).
    #[error("refusing to start: {0}")]
    Exposure(#[from] sluice_config::ConfigError),
}

/// What the sidecar runs besides its configuration.
#[derive(Clone, Debug)]
pub struct Options {
    /// This sidecar's name in the consumer group (unique per sidecar).
    pub name: String,
}

impl Options {
    /// `[sidecar] consumer_name`, else `sidecar-<HOSTNAME>-<pid>` (a pod name in Kubernetes).
    pub fn from_config(config: &Config) -> Self {
        let name = config.sidecar.consumer_name.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".to_owned());
            format!("sidecar-{host}-{}", std::process::id())
        });
        Self { name }
    }
}

/// Shared between the loops and the HTTP API.
pub(crate) struct State {
    /// The live gateway core; [`State::gw`] takes the snapshot in force.
    pub(crate) live: Gateway,
    pub(crate) options: Options,
    /// True once the consumer has joined its group (always true without a store).
    pub(crate) consuming: AtomicBool,
    /// Signs the reservations of `POST /v1/acquire`.
    pub(crate) tickets: ticket::TicketSigner,
    /// When each upstream × account was last probed to corroborate a report.
    pub(crate) corroborated: Mutex<HashMap<(String, String), Instant>>,
    /// Where `POST /v1/acquire` starts the list of a model's accounts: the limiter stops
    /// at the first that serves now with room to spare, so a rotating start spreads the
    /// load (as the gateway's `Rotation`).
    pub(crate) next_account: AtomicUsize,
}

impl State {
    /// A snapshot of the gateway core as configured now (a reload swaps it): each API
    /// call and each loop round takes one and keeps it.
    pub(crate) fn gw(&self) -> Gateway {
        self.live.current()
    }
}

/// The sidecar: cheap to clone.
#[derive(Clone)]
pub struct Sidecar {
    pub(crate) state: Arc<State>,
}

impl Sidecar {
    /// Builds the sidecar (connects nothing yet). Call inside a tokio runtime.
    pub fn new(config: Config, options: Options) -> Result<Self, SidecarError> {
        Self::build(config, None, options)
    }

    /// Like [`new`](Self::new), showing `config_sha256` (the SHA-256 of the file it was
    /// loaded from, [`sluice_config::load_with_digest`]) in `/v1/quotas` and metrics.
    pub fn with_hash(
        config: Config,
        config_sha256: String,
        options: Options,
    ) -> Result<Self, SidecarError> {
        Self::build(config, Some(config_sha256), options)
    }

    fn build(
        config: Config,
        config_sha256: Option<String>,
        options: Options,
    ) -> Result<Self, SidecarError> {
        let shared = config.store.is_some();
        let tickets = ticket::TicketSigner::new(
            config
                .sidecar
                .ticket_key
                .as_ref()
                .map(sluice_config::Secret::expose),
        );
        if tickets.ephemeral {
            tracing::info!(
                "no [sidecar] ticket_key: reservations are signed with a random key of this process and valid only at this sidecar"
            );
        }
        let gw = match config_sha256 {
            Some(hash) => Gateway::with_hash(config, hash)?,
            None => Gateway::new(config)?,
        };
        Ok(Self {
            state: Arc::new(State {
                live: gw,
                options,
                consuming: AtomicBool::new(!shared),
                tickets,
                corroborated: Mutex::new(HashMap::new()),
                next_account: AtomicUsize::new(0),
            }),
        })
    }

    /// The gateway core it shares its code with.
    pub fn gateway(&self) -> &Gateway {
        &self.state.live
    }

    /// The HTTP API (see the crate docs), with `/metrics` open to anyone (as on a
    /// loopback listener).
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone(), true)
    }

    /// Serves on `listener` and runs the consumer and probe loops until `shutdown`.
    /// `/metrics` on `listener` is open only when it is a loopback address (else it
    /// needs the admin key); `[sidecar] admin_listen`, when set, is bound here and
    /// serves the operational routes (see `api::admin_router`).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), SidecarError> {
        self.state.live.apply_shared_changes().await;
        let mut tasks = Vec::new();
        if let Some(store) = &self.state.live.config().store {
            tasks.push(tokio::spawn(consumer::run(
                self.state.clone(),
                store.redis_url.expose().to_owned(),
            )));
        }
        tasks.push(tokio::spawn(probe::run(self.state.clone())));
        if let Some(admin) = self.state.live.config().sidecar.admin_listen {
            let admin_listener = tokio::net::TcpListener::bind(admin).await?;
            let addr = admin_listener.local_addr()?;
            tracing::info!(%addr, "admin listener");
            let app = api::admin_router(self.state.clone(), addr.ip().is_loopback());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(admin_listener, app).await {
                    tracing::warn!(error = %e, "admin listener failed");
                }
            }));
        }
        let open = listener.local_addr()?.ip().is_loopback();
        let served = axum::serve(listener, api::router(self.state.clone(), open))
            .with_graceful_shutdown(shutdown)
            .await;
        for t in tasks {
            t.abort();
        }
        self.state.consuming.store(false, Ordering::Relaxed);
        served.map_err(SidecarError::from)
    }
}

/// Binds `[sidecar] listen` and serves until `shutdown` (see [`Sidecar::serve`]).
/// Refuses a configuration that would serve anyone beyond this machine without a key
/// ([`Config::check_sidecar_exposure`]).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SidecarError> {
    config.check_sidecar_exposure()?;
    let listener = tokio::net::TcpListener::bind(config.sidecar.listen).await?;
    let options = Options::from_config(&config);
    Sidecar::new(config, options)?
        .serve(listener, shutdown)
        .await
}

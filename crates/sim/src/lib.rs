//! `sluice-sim`: a strict fake LLM provider that meters every account exactly, like the real ones.
//!
//! It serves an OpenAI-compatible API (`/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/models`) with deterministic token counts ([`tokens`]), enforces
//! per-account × model quotas with an exact sliding log ([`meter`]) and an optional ramp-up
//! rule ([`burst`]), refuses in one of four provider dialects ([`dialect`]), injects faults
//! ([`faults`]), and reports exactly what it admitted and refused ([`stats`]). It is the referee
//! of Sluice's end-to-end tests and benchmarks, and depends on no other Sluice crate.
//!
//! The central type is [`Sim`]; start one on a socket with [`serve`], or in-process on port 0
//! with [`spawn`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), sluice_sim::Error> {
//! use std::time::Duration;
//! use sluice_sim::{Config, Dialect, Limit, ModelConfig};
//!
//! let config = Config::with_models(vec![
//!     ModelConfig::new("qwen3-max", Dialect::Dashscope)
//!         .with_limit(Limit::requests(600, Duration::from_secs(60)))
//!         .with_limit(Limit::tokens(1_000_000, Duration::from_secs(60))),
//! ]);
//! let sim = sluice_sim::spawn(config).await?;
//! let base = sim.base_url(); // "http://127.0.0.1:PORT/v1"
//! # let _ = base;
//! let report = sim.sim().stats();
//! # let _ = report;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod api;
pub mod burst;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dialect;
pub mod error;
pub mod faults;
pub mod messages;
pub mod meter;
mod reply;
pub mod responses;
mod routes;
mod sim;
pub mod stats;
mod stream;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{
    AccountConfig, AccountState, Announce, Config, Dialect, FaultRule, Limit, ModelConfig,
    TokenRule,
};
pub use error::{ConfigError, Error};
pub use meter::Unit;
pub use sim::{AdminError, Sim};
pub use stats::StatsReport;

impl Sim {
    /// The HTTP router of this simulator (for `tower::ServiceExt::oneshot` tests without a socket).
    /// Background consumers only run under [`serve_sim`].
    pub fn router(self: &Arc<Self>) -> axum::Router {
        routes::router(Arc::clone(self))
    }
}

/// Aborts background tasks when dropped.
struct TaskGuard(Vec<JoinHandle<()>>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

fn spawn_background(sim: &Arc<Sim>) -> TaskGuard {
    let tasks = sim
        .background_jobs()
        .into_iter()
        .map(|(account, cell, rps, tokens)| {
            let sim = Arc::clone(sim);
            tokio::spawn(async move {
                let period = Duration::from_secs_f64(1.0 / rps);
                let mut ticker = tokio::time::interval(period);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                loop {
                    ticker.tick().await;
                    sim.background_once(&account, &cell, tokens);
                }
            })
        })
        .collect();
    TaskGuard(tasks)
}

/// Serves `config` on `listener` until the future is dropped or fails.
pub async fn serve(config: Config, listener: TcpListener) -> Result<(), Error> {
    let sim = Sim::new(config)?;
    serve_sim(sim, listener, std::future::pending()).await
}

/// Serves an existing simulator on `listener` until `shutdown` completes; runs its background consumers meanwhile.
pub async fn serve_sim(
    sim: Arc<Sim>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let _background = spawn_background(&sim);
    axum::serve(listener, sim.router())
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// A simulator running in-process, on a task of the current runtime. Dropping it stops it.
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    sim: Arc<Sim>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), Error>>>,
}

impl SimHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `http://127.0.0.1:PORT/v1`, the base URL an OpenAI client needs.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
    /// `http://127.0.0.1:PORT`, for `/stats` and `/admin/...`.
    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// The simulator itself: read [`Sim::stats`], flip account states, change limits.
    pub fn sim(&self) -> &Arc<Sim> {
        &self.sim
    }
    /// Stops accepting, lets open requests finish, and waits for the server task.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts `config` in-process on `127.0.0.1:0` (its own listen address is ignored).
pub async fn spawn(config: Config) -> Result<SimHandle, Error> {
    spawn_sim(Sim::new(config)?).await
}

/// Starts an existing simulator (e.g. one on a [`ManualClock`]) in-process on `127.0.0.1:0`.
pub async fn spawn_sim(sim: Arc<Sim>) -> Result<SimHandle, Error> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_sim(Arc::clone(&sim), listener, async move {
        let _ = rx.await;
    }));
    Ok(SimHandle {
        addr,
        sim,
        shutdown: Some(tx),
        task: Some(task),
    })
}

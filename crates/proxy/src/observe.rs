//! Observations: what an upstream said about limits, handed off the hot path.
//!
//! Every upstream error (429, 5xx, 401…) and every error inside a 200 stream is
//! recorded; successful answers are sampled — at most `[sidecar] sample_per_second`
//! per account × model and gateway (one atomic compare per answer decides). With a
//! `[store]`, observations go to the bounded Redis stream through a
//! [`Publisher`](sluice_observe::Publisher) that never waits (a full queue drops and
//! counts); the sidecars apply them. With the embedded limiter there is nobody else to
//! tell: a task in this process applies them with the same
//! [`Recalibrator`](sluice_recalibrate::Recalibrator), through a bounded channel that
//! drops when full. Either way the request never waits for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use sluice_observe::{Observation, Publisher, PublisherOptions};
use tokio::sync::mpsc;

use crate::state::{Inner, LiveCell};

enum Sink {
    Redis(Publisher),
    Local(mpsc::Sender<Observation>),
}

/// Where this gateway's observations go.
pub(crate) struct Observer {
    sink: Sink,
    /// Minimum spacing of sampled successes per account × model, in ms.
    spacing_ms: u64,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Observer {
    /// Publishes to the Redis stream at `url`.
    pub(crate) fn redis(url: String, sample_per_second: u32) -> Self {
        Self {
            sink: Sink::Redis(Publisher::spawn(url, PublisherOptions::default())),
            spacing_ms: spacing(sample_per_second),
        }
    }

    /// Applies in this process; the receiver goes to [`run_local`].
    pub(crate) fn local(sample_per_second: u32) -> (Self, mpsc::Receiver<Observation>) {
        let (tx, rx) = mpsc::channel(1024);
        (
            Self {
                sink: Sink::Local(tx),
                spacing_ms: spacing(sample_per_second),
            },
            rx,
        )
    }

    fn send(&self, obs: Observation) {
        let sent = match &self.sink {
            Sink::Redis(p) => p.publish(obs),
            Sink::Local(tx) => tx.try_send(obs).is_ok(),
        };
        if !sent {
            metrics::counter!("sluice_observations_dropped_total", "where" => "gateway")
                .increment(1);
        }
    }

    /// Records an upstream error (always).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn error(
        &self,
        upstream: &str,
        model: &str,
        account: &str,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
    ) {
        let body = String::from_utf8_lossy(body);
        self.send(Observation::new(
            now_ms(),
            upstream,
            model,
            account,
            status,
            header_pairs(headers),
            Some(&body),
        ));
    }

    /// Records a success when this account × model's sample is due.
    pub(crate) fn success(
        &self,
        last_ms: &AtomicU64,
        upstream: &str,
        model: &str,
        account: &str,
        headers: &HeaderMap,
    ) {
        if self.spacing_ms == u64::MAX {
            return;
        }
        let now = now_ms();
        let last = last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < self.spacing_ms
            || last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.send(Observation::new(
            now,
            upstream,
            model,
            account,
            200,
            header_pairs(headers),
            None,
        ));
    }
}

fn spacing(per_second: u32) -> u64 {
    if per_second == 0 {
        u64::MAX
    } else {
        (1000 / u64::from(per_second)).max(1)
    }
}

fn header_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .iter()
        .filter(|(n, _)| sluice_observe::relevant_header(n.as_str()))
        .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
}

/// The embedded recalibration task: applies what this gateway observed to its own
/// limiter, and enables daily-quota accounts when their wait is over, with the
/// configuration in force at each step (a reload swaps it). Ends when the gateway is
/// dropped.
pub(crate) async fn run_local(live: Weak<LiveCell>, mut rx: mpsc::Receiver<Observation>) {
    let current = |live: &Weak<LiveCell>| live.upgrade().map(|l| l.current.read().clone());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            obs = rx.recv() => {
                let Some(obs) = obs else { return };
                let Some(inner) = current(&live) else { return };
                apply(&inner, &obs).await;
            }
            _ = tick.tick() => {
                let Some(inner) = current(&live) else { return };
                if let Err(e) = inner.recalibrator.tick(&*inner.limiter).await {
                    tracing::warn!(error = %e, "recalibration tick failed");
                }
            }
        }
    }
}

async fn apply(inner: &Arc<Inner>, obs: &Observation) {
    match inner.recalibrator.apply(&*inner.limiter, obs).await {
        Ok(_) => metrics::counter!("sluice_observations_consumed_total", "source" => "local")
            .increment(1),
        Err(e) => tracing::warn!(error = %e, "recalibration failed"),
    }
}

//! [`Publisher`]: hands observations to a background task that appends them to the
//! stream in batches. Publishing never waits: when the queue is full the observation
//! is dropped and counted (`sluice_observations_dropped_total`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::Observation;

/// How observations are published.
#[derive(Clone, Debug)]
pub struct PublisherOptions {
    /// The stream key.
    pub stream: String,
    /// Roughly how many entries the stream keeps (`XADD MAXLEN ~`).
    pub max_len: usize,
    /// How many observations may wait in memory before new ones are dropped.
    pub queue: usize,
    /// The most observations written in one round trip.
    pub batch: usize,
    /// The longest a write may take before the batch is dropped.
    pub timeout: Duration,
}

impl Default for PublisherOptions {
    fn default() -> Self {
        Self {
            stream: crate::DEFAULT_STREAM.to_owned(),
            max_len: 100_000,
            queue: 10_000,
            batch: 256,
            timeout: Duration::from_secs(1),
        }
    }
}

/// The sending side, cheap to clone; one background task per publisher writes.
#[derive(Clone, Debug)]
pub struct Publisher {
    tx: mpsc::Sender<Observation>,
    dropped: Arc<AtomicU64>,
}

impl Publisher {
    /// Starts the writer task on the current tokio runtime, writing to `url`
    /// (connecting lazily, and again after errors).
    pub fn spawn(url: String, options: PublisherOptions) -> Self {
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_loop(url, options, rx, dropped.clone()));
        Self { tx, dropped }
    }

    /// Queues `obs`; returns false (and counts it) when the queue is full or closed.
    pub fn publish(&self, obs: Observation) -> bool {
        match self.tx.try_send(obs) {
            Ok(()) => true,
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("sluice_observations_dropped_total").increment(1);
                false
            }
        }
    }

    /// How many observations were dropped so far (queue full, or a failed write).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn write_loop(
    url: String,
    o: PublisherOptions,
    mut rx: mpsc::Receiver<Observation>,
    dropped: Arc<AtomicU64>,
) {
    let mut conn: Option<sluice_limiter::RedisConnection> = None;
    let mut batch = Vec::with_capacity(o.batch);
    while rx.recv_many(&mut batch, o.batch).await > 0 {
        if conn.is_none() {
            conn = sluice_limiter::RedisConnection::connect(&url, o.timeout)
                .await
                .ok();
        }
        let written = match conn.as_mut() {
            Some(c) => {
                let mut pipe = redis::pipe();
                for obs in &batch {
                    let json = serde_json::to_string(obs).unwrap_or_default();
                    pipe.cmd("XADD")
                        .arg(&o.stream)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(o.max_len)
                        .arg("*")
                        .arg("v1")
                        .arg(json)
                        .ignore();
                }
                matches!(
                    tokio::time::timeout(o.timeout, pipe.exec_async(c)).await,
                    Ok(Ok(()))
                )
            }
            None => false,
        };
        if written {
            metrics::counter!("sluice_observations_published_total").increment(batch.len() as u64);
        } else {
            conn = None;
            dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
            metrics::counter!("sluice_observations_dropped_total").increment(batch.len() as u64);
            tracing::debug!(
                count = batch.len(),
                "observations dropped: redis unavailable"
            );
        }
        batch.clear();
    }
}

//! The consumer loop: read observations as one member of the group, apply each, acknowledge
//! what was applied, and claim what dead members left pending.
//!
//! An observation whose application fails (the store is down) is not acknowledged: it
//! stays pending and is claimed again after `claim_after` — by this sidecar or another.
//! Applying one twice is harmless (every rule reads the state it changes). An entry that
//! does not decode is acknowledged at once: it never will.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice_observe::{Consumer, ConsumerOptions, Delivery};

use crate::State;

pub(crate) async fn run(state: Arc<State>, url: String) {
    let gw = state.gw();
    let cfg = &gw.config().sidecar;
    let options = ConsumerOptions {
        group: cfg.consumer_group.clone(),
        name: state.options.name.clone(),
        claim_after: cfg.claim_after,
        // Below the Redis client's default response timeout (500 ms), which a longer
        // BLOCK would race.
        block: Duration::from_millis(200),
        ..ConsumerOptions::default()
    };
    let claim_every = (cfg.claim_after / 2).max(Duration::from_millis(100));
    let tick_every = Duration::from_secs(1);
    loop {
        let mut consumer = match Consumer::join(&url, options.clone()).await {
            Ok(c) => c,
            Err(e) => {
                state.consuming.store(false, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot join the observation stream; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        state.consuming.store(true, Ordering::Relaxed);
        tracing::info!(group = %options.group, name = %options.name, "consuming observations");
        let mut last_claim = Instant::now();
        let mut last_tick = Instant::now();
        let mut ticks: u64 = 0;
        loop {
            if last_tick.elapsed() >= tick_every {
                last_tick = Instant::now();
                ticks += 1;
                // The configuration in force this round (a reload swaps it).
                let gw = state.gw();
                if let Err(e) = gw.recalibrator().tick(gw.limiter()).await {
                    tracing::warn!(error = %e, "recalibration tick failed");
                }
                // Every 5 s: the quotas view as gauges, for usage-against-limit panels.
                if ticks.is_multiple_of(5) {
                    sluice_recalibrate::report(gw.catalog(), gw.limiter())
                        .await
                        .export_gauges();
                }
            }
            let claiming = last_claim.elapsed() >= claim_every;
            let batch = if claiming {
                last_claim = Instant::now();
                consumer.claim_stale().await
            } else {
                consumer.read().await
            };
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    state.consuming.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, "observation stream failed; reconnecting");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            };
            if claiming && !batch.is_empty() {
                metrics::counter!("sluice_observations_claimed_total")
                    .increment(batch.len() as u64);
                tracing::info!(
                    count = batch.len(),
                    "claimed observations another sidecar left pending"
                );
            }
            let acks = apply(&state, batch).await;
            if let Err(e) = consumer.ack(&acks).await {
                tracing::warn!(error = %e, "acknowledgement failed; the observations will be claimed again");
            }
        }
    }
}

/// Applies a batch; returns the ids to acknowledge.
async fn apply(state: &State, batch: Vec<Delivery>) -> Vec<String> {
    let mut acks = Vec::with_capacity(batch.len());
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for d in batch {
        let Some(obs) = d.observation else {
            metrics::counter!("sluice_observations_ignored_total", "reason" => "undecodable")
                .increment(1);
            acks.push(d.id);
            continue;
        };
        let gw = state.gw();
        match gw.recalibrator().apply(gw.limiter(), &obs).await {
            Ok(_) => {
                metrics::counter!("sluice_observations_consumed_total", "source" => "stream")
                    .increment(1);
                metrics::gauge!("sluice_observation_lag_seconds")
                    .set(now_ms.saturating_sub(obs.at_ms) as f64 / 1000.0);
                acks.push(d.id);
            }
            Err(e) => {
                metrics::counter!("sluice_observations_failed_total").increment(1);
                tracing::warn!(error = %e, id = %d.id, "observation not applied; left pending");
            }
        }
    }
    acks
}

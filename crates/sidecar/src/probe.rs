//! The probe loop: every `probe_interval`, one minimal request (`max_tokens: 1`) on
//! each disabled account, once per upstream × account, through the gateway's upstream
//! client. A success puts the account back into rotation on every model of its
//! upstream; any other answer is applied like an observation (a billing refusal keeps
//! it out, with its reason). A probe is charged to the account as one request.

use std::collections::HashSet;
use std::sync::Arc;

use sluice_limiter::Store;
use sluice_observe::Observation;

use crate::State;

pub(crate) async fn run(state: Arc<State>) {
    let every = state.gw().config().sidecar.probe_interval;
    let mut tick = tokio::time::interval(every);
    tick.tick().await; // the first tick is immediate: wait one interval first
    loop {
        tick.tick().await;
        round(&state).await;
    }
}

async fn round(state: &State) {
    let gw = &state.gw();
    let mut probed = HashSet::new();
    for m in &gw.catalog().models {
        for key in &m.keys {
            if probed.contains(&(m.upstream.clone(), key.name().to_owned())) {
                continue;
            }
            let Ok(status) = gw.limiter().status(key, &m.quota).await else {
                continue;
            };
            if status.disabled.is_none() {
                continue;
            }
            probed.insert((m.upstream.clone(), key.name().to_owned()));
            metrics::counter!("sluice_probes_total").increment(1);
            let Some((code, headers, body)) = gw.probe(&m.name, key.name()).await else {
                tracing::info!(model = %m.name, account = %key.name(), "probe could not reach the upstream");
                continue;
            };
            if (200..300).contains(&code) {
                let _ = gw
                    .recalibrator()
                    .enable(gw.limiter(), &m.upstream, key.name(), "probe succeeded")
                    .await;
                continue;
            }
            let pairs: Vec<(&str, &str)> = headers
                .iter()
                .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
                .collect();
            let obs = Observation::new(
                crate::api::now_ms(),
                &m.upstream,
                &m.upstream_model,
                key.name(),
                code,
                pairs,
                Some(&String::from_utf8_lossy(&body)),
            );
            let _ = gw.recalibrator().apply(gw.limiter(), &obs).await;
            tracing::info!(model = %m.name, account = %key.name(), status = code, "probe refused; the account stays out");
        }
    }
}

/// Corroborates a report that an account is dead (or out of its daily quota): probes
/// it once, in the background, and applies the provider's own answer to the probe like
/// an observation (so only the provider can disable it; a success changes nothing). At
/// most one probe per upstream × account per `probe_interval`, however many reports
/// come: returns false when one was already sent within the interval.
pub(crate) fn corroborate(
    state: Arc<State>,
    model: String,
    account: String,
    tenant: String,
) -> bool {
    let Some(upstream) = state
        .gw()
        .catalog()
        .model(&model)
        .map(|m| m.upstream.clone())
    else {
        return false;
    };
    let every = state.gw().config().sidecar.probe_interval;
    {
        let mut last = state.corroborated.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let key = (upstream.clone(), account.clone());
        if last
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < every)
        {
            metrics::counter!("sluice_sidecar_corroborations_total", "outcome" => "skipped")
                .increment(1);
            return false;
        }
        last.insert(key, now);
    }
    tokio::spawn(async move {
        let gw = &state.gw();
        let Some(m) = gw.catalog().model(&model) else {
            return;
        };
        let Some((code, headers, body)) = gw.probe(&m.name, &account).await else {
            tracing::info!(%tenant, model = %m.name, %account, "corroborating probe could not reach the upstream");
            return;
        };
        metrics::counter!("sluice_sidecar_corroborations_total", "outcome" => if (200..300).contains(&code) { "refuted" } else { "answered" }).increment(1);
        if (200..300).contains(&code) {
            tracing::warn!(%tenant, model = %m.name, %account, "a report said the account is dead; the provider accepted a probe on it: nothing changed");
            return;
        }
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
            .collect();
        let obs = Observation::new(
            crate::api::now_ms(),
            &m.upstream,
            &m.upstream_model,
            &account,
            code,
            pairs,
            Some(&String::from_utf8_lossy(&body)),
        );
        let applied = gw.recalibrator().apply(gw.limiter(), &obs).await;
        tracing::info!(%tenant, model = %m.name, %account, status = code, changes = applied.map_or(0, |a| a.len()), "corroborating probe answered");
    });
    true
}

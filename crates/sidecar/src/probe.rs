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
    let every = state.gw.config().sidecar.probe_interval;
    let mut tick = tokio::time::interval(every);
    tick.tick().await; // the first tick is immediate: wait one interval first
    loop {
        tick.tick().await;
        round(&state).await;
    }
}

async fn round(state: &State) {
    let gw = &state.gw;
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

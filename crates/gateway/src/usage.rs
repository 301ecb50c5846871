//! After an answer: reconcile the reservation with the provider's `usage`, learn the
//! estimate's correction, and count tokens and money per tenant and model.

use serde::Deserialize;
use sluice_limiter::{Cost, Reservation, Store};
use tracing::Instrument;

use crate::state::Gateway;

/// The `usage` object of an answer (OpenAI shape; native DashScope names accepted).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub(crate) struct Usage {
    #[serde(default, alias = "input_tokens")]
    pub(crate) prompt_tokens: u64,
    #[serde(default, alias = "output_tokens")]
    pub(crate) completion_tokens: u64,
}

#[derive(Deserialize)]
struct WithUsage {
    usage: Option<Usage>,
}

/// The usage in a JSON answer body, if any.
pub(crate) fn usage_in(body: &[u8]) -> Option<Usage> {
    serde_json::from_slice::<WithUsage>(body).ok()?.usage
}

/// What one request settles when its answer is known.
pub(crate) struct Settle {
    pub(crate) gw: Gateway,
    pub(crate) model: usize,
    pub(crate) tenant: usize,
    pub(crate) reservation: Reservation,
    pub(crate) raw_prompt: u64,
}

impl Settle {
    /// Records the outcome: `Some(usage)` reconciles to it; `None` keeps the estimate.
    pub(crate) fn finish(self, usage: Option<Usage>) {
        let inner = &self.gw.inner;
        let m = &inner.models[self.model];
        let model = m.cfg.name.clone();
        let tenant = inner.tenant_name(self.tenant).to_owned();
        let est = self.reservation.cost;
        metrics::counter!("sluice_tokens_total", "model" => model.clone(), "tenant" => tenant.clone(), "kind" => "input", "source" => "estimated").increment(est.input_tokens);
        metrics::counter!("sluice_tokens_total", "model" => model.clone(), "tenant" => tenant.clone(), "kind" => "output", "source" => "estimated").increment(est.output_tokens);
        let (input, output) = match usage {
            Some(u) => (u.prompt_tokens, u.completion_tokens),
            None => (est.input_tokens, est.output_tokens),
        };
        if let Some(u) = usage {
            m.learner.observe(self.raw_prompt, u.prompt_tokens);
            metrics::gauge!("sluice_estimate_factor", "model" => model.clone())
                .set(m.learner.factor());
            metrics::counter!("sluice_tokens_total", "model" => model.clone(), "tenant" => tenant.clone(), "kind" => "input", "source" => "actual").increment(u.prompt_tokens);
            metrics::counter!("sluice_tokens_total", "model" => model.clone(), "tenant" => tenant.clone(), "kind" => "output", "source" => "actual").increment(u.completion_tokens);
        }
        if let Some(p) = m.cfg.price {
            let micro = input as f64 * p.input_per_mtok + output as f64 * p.output_per_mtok;
            metrics::counter!("sluice_spend_microusd_total", "model" => model, "tenant" => tenant)
                .increment(micro.round() as u64);
        }
        if let Some(u) = usage {
            let actual = Cost::request(u.prompt_tokens, u.completion_tokens);
            if actual != est {
                reconcile(self.gw.clone(), self.model, self.reservation, actual);
            }
        }
    }
}

/// Replaces a reservation's cost in the background (off the response path), inside
/// the current span (the request's `reconcile` span when tracing is on).
pub(crate) fn reconcile(gw: Gateway, model: usize, reservation: Reservation, actual: Cost) {
    let work = async move {
        let m = &gw.inner.models[model];
        if let Err(e) = gw
            .inner
            .limiter
            .reconcile(&m.quota, &reservation, actual)
            .await
        {
            tracing::warn!(error = %e, model = %m.cfg.name, "reconcile failed; the estimate stands");
        }
    };
    tokio::spawn(work.instrument(tracing::Span::current()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_in_either_naming() {
        assert_eq!(
            usage_in(br#"{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4
            })
        );
        assert_eq!(
            usage_in(br#"{"usage":{"input_tokens":3,"output_tokens":4}}"#),
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4
            })
        );
        assert_eq!(usage_in(br#"{"usage":null}"#), None);
        assert_eq!(usage_in(b"not json"), None);
    }
}

//! After an answer: reconcile the reservation with the provider's `usage`, learn the
//! estimate's correction, and count tokens and money per tenant and model.

use serde::Deserialize;
use sluice_limiter::{Cost, Reservation, Store};
use tracing::Instrument;

use crate::estimate::Endpoint;
use crate::meters::TokenSeries;
use crate::state::Gateway;
use crate::tenant_limits::TenantHold;

/// The `usage` object of an answer (OpenAI shape; native DashScope and Responses names
/// accepted).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub(crate) struct Usage {
    /// What counts towards the provider's input budget.
    #[serde(default, alias = "input_tokens")]
    pub(crate) prompt_tokens: u64,
    #[serde(default, alias = "output_tokens")]
    pub(crate) completion_tokens: u64,
    /// OpenAI's cached part of `prompt_tokens` (`prompt_tokens_details.cached_tokens`,
    /// Responses' `input_tokens_details.cached_tokens`).
    #[serde(default, alias = "input_tokens_details")]
    prompt_tokens_details: Option<PromptDetails>,
    /// Anthropic's cache reads (`cache_read_input_tokens`), which are not part of
    /// `prompt_tokens`.
    #[serde(skip)]
    cache_reads: u64,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: u64,
}

impl Usage {
    /// Usage of `prompt` and `completion` tokens, nothing read from a cache.
    pub(crate) fn new(prompt: u64, completion: u64) -> Self {
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            ..Self::default()
        }
    }

    /// The input tokens as billed: (at the input price, at the cached-input price).
    pub(crate) fn billed_input(&self) -> (u64, u64) {
        if self.cache_reads > 0 {
            return (self.prompt_tokens, self.cache_reads);
        }
        let cached = self
            .prompt_tokens_details
            .map_or(0, |d| d.cached_tokens)
            .min(self.prompt_tokens);
        (self.prompt_tokens - cached, cached)
    }
}

/// Anthropic's `usage`: what counts towards its input budget is `input_tokens` plus
/// `cache_creation_input_tokens` (cache reads do not, for current models).
#[derive(Clone, Copy, Debug, Default, Deserialize)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

impl AnthropicUsage {
    fn input(&self) -> Option<u64> {
        self.input_tokens
            .map(|i| i.saturating_add(self.cache_creation_input_tokens.unwrap_or(0)))
    }
}

#[derive(Deserialize)]
struct WithUsage<U> {
    usage: Option<U>,
}

/// The usage in a JSON answer body of `endpoint`, if any.
pub(crate) fn usage_in(endpoint: Endpoint, body: &[u8]) -> Option<Usage> {
    if endpoint == Endpoint::Messages {
        let u = serde_json::from_slice::<WithUsage<AnthropicUsage>>(body)
            .ok()?
            .usage?;
        return Some(Usage {
            cache_reads: u.cache_read_input_tokens.unwrap_or(0),
            ..Usage::new(u.input()?, u.output_tokens?)
        });
    }
    serde_json::from_slice::<WithUsage<Usage>>(body).ok()?.usage
}

/// The usage a streamed answer of `endpoint` reports, read event by event:
/// - chat and completions: the `usage` of a chunk (the one `include_usage` adds);
/// - Responses: `response.usage` of the closing `response.completed`,
///   `response.incomplete` or `response.failed` event;
/// - Messages: the input side from `message_start`'s `message.usage`, the output from
///   the last `message_delta`'s `usage.output_tokens` (both needed).
#[derive(Debug, Default)]
pub(crate) struct StreamUsage {
    endpoint: Option<Endpoint>,
    input: Option<u64>,
    output: Option<u64>,
    /// OpenAI's cached part of the input.
    cached: u64,
    /// Anthropic's cache reads (apart from the input).
    cache_reads: u64,
}

impl StreamUsage {
    pub(crate) fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint: Some(endpoint),
            ..Self::default()
        }
    }

    /// Reads one event's JSON data; returns whether it was a usage-only chat chunk
    /// (one a client that did not ask for usage must not see).
    pub(crate) fn observe(&mut self, json: &serde_json::Value) -> bool {
        let field =
            |v: &serde_json::Value, key: &str| v.get(key).and_then(serde_json::Value::as_u64);
        match self.endpoint.unwrap_or(Endpoint::Chat) {
            Endpoint::Responses => {
                let closing = matches!(
                    json.get("type").and_then(serde_json::Value::as_str),
                    Some("response.completed" | "response.incomplete" | "response.failed")
                );
                if let Some(u) = json.pointer("/response/usage").filter(|_| closing) {
                    self.input = field(u, "input_tokens");
                    self.output = field(u, "output_tokens");
                    self.cached = u
                        .pointer("/input_tokens_details/cached_tokens")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0);
                }
                false
            }
            Endpoint::Messages => {
                match json.get("type").and_then(serde_json::Value::as_str) {
                    Some("message_start") => {
                        if let Some(u) = json.pointer("/message/usage") {
                            let u: AnthropicUsage =
                                serde_json::from_value(u.clone()).unwrap_or_default();
                            self.input = u.input();
                            self.cache_reads = u.cache_read_input_tokens.unwrap_or(0);
                        }
                    }
                    Some("message_delta") => {
                        if let Some(u) = json.get("usage") {
                            let u: AnthropicUsage =
                                serde_json::from_value(u.clone()).unwrap_or_default();
                            if let Some(input) = u.input() {
                                self.input = Some(input);
                            }
                            self.output = u.output_tokens.or(self.output);
                        }
                    }
                    _ => {}
                }
                false
            }
            Endpoint::Chat | Endpoint::Completions | Endpoint::Embeddings => {
                let Some(usage) = json.get("usage").filter(|u| u.is_object()) else {
                    return false;
                };
                if let Ok(u) = serde_json::from_value::<Usage>(usage.clone()) {
                    self.input = Some(u.prompt_tokens);
                    self.output = Some(u.completion_tokens);
                    self.cached = u.prompt_tokens_details.map_or(0, |d| d.cached_tokens);
                }
                json.get("choices")
                    .and_then(|c| c.as_array())
                    .is_some_and(|c| c.is_empty())
            }
        }
    }

    /// The usage, once both sides are known.
    pub(crate) fn usage(&self) -> Option<Usage> {
        Some(Usage {
            prompt_tokens_details: (self.cached > 0).then_some(PromptDetails {
                cached_tokens: self.cached,
            }),
            cache_reads: self.cache_reads,
            ..Usage::new(self.input?, self.output?)
        })
    }
}

/// What one request settles when its answer is known.
pub(crate) struct Settle {
    pub(crate) gw: Gateway,
    pub(crate) model: usize,
    pub(crate) tenant: usize,
    pub(crate) reservation: Reservation,
    pub(crate) raw_prompt: u64,
    /// What the request holds of its tenant's own limits.
    pub(crate) tenant_hold: TenantHold,
}

impl Settle {
    /// Records the outcome: `Some(usage)` reconciles to it; `None` keeps the estimate.
    pub(crate) fn finish(self, usage: Option<Usage>) {
        let inner = &self.gw.inner;
        let m = &inner.models[self.model];
        let (model, tenant) = (&m.cfg.name, inner.tenant_name(self.tenant));
        let count = |series: TokenSeries, tokens: u64| {
            let (kind, source) = series.labels();
            let make = || metrics::counter!("sluice_tokens_total", "model" => model.clone(), "tenant" => tenant.to_owned(), "kind" => kind, "source" => source);
            m.meters.tokens(self.tenant, series, make).increment(tokens);
        };
        let est = self.reservation.cost;
        count(TokenSeries::InputEstimated, est.input_tokens);
        count(TokenSeries::OutputEstimated, est.output_tokens);
        let (input, output) = match usage {
            Some(u) => (u.prompt_tokens, u.completion_tokens),
            None => (est.input_tokens, est.output_tokens),
        };
        if let Some(u) = usage {
            m.learner.observe(self.raw_prompt, u.prompt_tokens);
            let factor = || metrics::gauge!("sluice_estimate_factor", "model" => model.clone());
            m.meters.estimate_factor(factor).set(m.learner.factor());
            count(TokenSeries::InputActual, u.prompt_tokens);
            count(TokenSeries::OutputActual, u.completion_tokens);
        }
        let (uncached, cached) = usage.map_or((input, 0), |u| u.billed_input());
        if let Some(p) = m.cfg.price {
            let make = || metrics::counter!("sluice_spend_microusd_total", "model" => model.clone(), "tenant" => tenant.to_owned());
            let spent = p.micro_usd(uncached, cached, output);
            m.meters.spend(self.tenant, make).increment(spent);
        }
        match usage {
            Some(u) => self
                .tenant_hold
                .settle(u.prompt_tokens, uncached, cached, output),
            None => self.tenant_hold.keep(),
        }
        if let Some(u) = usage {
            let actual = Cost::request(u.prompt_tokens, u.completion_tokens);
            if actual != est {
                reconcile(self.gw.clone(), self.model, self.reservation, actual);
            }
        }
    }
}

/// Replaces a reservation's cost: at once where that needs no I/O (the embedded
/// store), else in the background (off the response path), inside the current span
/// (the request's `reconcile` span when tracing is on).
pub(crate) fn reconcile(gw: Gateway, model: usize, reservation: Reservation, actual: Cost) {
    let quota = &gw.inner.models[model].quota;
    if gw
        .inner
        .limiter
        .reconcile_in_place(quota, &reservation, actual)
    {
        return;
    }
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
        let usage_in = |b: &[u8]| super::usage_in(Endpoint::Chat, b);
        assert_eq!(
            usage_in(br#"{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#),
            Some(Usage::new(3, 4))
        );
        assert_eq!(
            usage_in(br#"{"usage":{"input_tokens":3,"output_tokens":4}}"#),
            Some(Usage::new(3, 4))
        );
        assert_eq!(usage_in(br#"{"usage":null}"#), None);
        let cached = usage_in(
            br#"{"usage":{"prompt_tokens":100,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":60}}}"#,
        )
        .unwrap();
        assert_eq!(
            cached.billed_input(),
            (40, 60),
            "OpenAI's cached tokens are part of the prompt"
        );
        let responses = usage_in(
            br#"{"usage":{"input_tokens":100,"output_tokens":4,"input_tokens_details":{"cached_tokens":300}}}"#,
        )
        .unwrap();
        assert_eq!(
            responses.billed_input(),
            (0, 100),
            "never more cached than the prompt"
        );
        assert_eq!(usage_in(b"not json"), None);
    }

    #[test]
    fn anthropic_usage_counts_cache_writes_not_reads() {
        let body = br#"{"usage":{"input_tokens":10,"cache_creation_input_tokens":5,"cache_read_input_tokens":100,"output_tokens":4}}"#;
        let u = usage_in(Endpoint::Messages, body).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (15, 4));
        assert_eq!(
            u.billed_input(),
            (15, 100),
            "reads are billed apart, at the cached price"
        );
        assert_eq!(
            usage_in(Endpoint::Messages, br#"{"usage":{"output_tokens":4}}"#),
            None
        );
    }

    #[test]
    fn stream_usage_per_endpoint() {
        use serde_json::json;
        let mut m = StreamUsage::new(Endpoint::Messages);
        m.observe(&json!({"type":"message_start","message":{"usage":{"input_tokens":10,"cache_creation_input_tokens":2,"output_tokens":1}}}));
        assert_eq!(m.usage(), None, "the output is known only at the end");
        m.observe(&json!({"type":"content_block_delta","delta":{"text":"x"}}));
        m.observe(&json!({"type":"message_delta","usage":{"output_tokens":7}}));
        assert_eq!(m.usage(), Some(Usage::new(12, 7)));
        let mut cut = StreamUsage::new(Endpoint::Messages);
        cut.observe(&json!({"type":"message_delta","usage":{"output_tokens":7}}));
        assert_eq!(cut.usage(), None, "no input side: the estimate stands");

        let mut r = StreamUsage::new(Endpoint::Responses);
        // A usage-looking field elsewhere is not the response's usage.
        r.observe(&json!({"type":"response.output_text.delta","response":{"usage":{"input_tokens":1,"output_tokens":1}}}));
        assert_eq!(r.usage(), None);
        r.observe(&json!({"type":"response.completed","response":{"usage":{"input_tokens":9,"output_tokens":3}}}));
        assert_eq!(r.usage(), Some(Usage::new(9, 3)));

        let mut c = StreamUsage::new(Endpoint::Chat);
        assert!(
            c.observe(&json!({"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3}}))
        );
        assert!(!c.observe(&json!({"choices":[{"delta":{}}],"usage":null})));
        assert_eq!(c.usage().map(|u| u.prompt_tokens), Some(2));
    }
}

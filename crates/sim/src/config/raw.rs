//! The raw TOML shape of the configuration (`deny_unknown_fields`) and its conversion to [`Config`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    AccountConfig, AccountModel, AccountState, Background, BurstConfig, CompletionTokens, Config,
    Dialect, FaultRule, Latency, Limit, ModelConfig, TokenRule,
};
use crate::error::ConfigError;
use crate::meter::Unit;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    listen: Option<String>,
    seed: Option<u64>,
    window_scale: Option<f64>,
    accept_any_key: Option<bool>,
    #[serde(default)]
    models: Vec<RawModel>,
    #[serde(default)]
    accounts: Vec<RawAccount>,
    #[serde(default)]
    faults: Vec<RawFault>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: String,
    #[serde(default = "default_dialect")]
    dialect: Dialect,
    #[serde(default)]
    limits: Vec<RawLimit>,
    #[serde(default)]
    token_rule: TokenRule,
    burst: Option<RawBurst>,
    latency: Option<RawLatency>,
    completion_tokens: Option<RawCompletion>,
    max_output_tokens: Option<u64>,
    stream_chunk_tokens: Option<u64>,
    #[serde(default)]
    sse_line_ending: super::SseLineEnding,
    /// `false`: no rate-limit headers on any answer.
    rate_limit_headers: Option<bool>,
    /// `false`: no `Retry-After` on refusals.
    retry_after: Option<bool>,
}

fn default_dialect() -> Dialect {
    Dialect::Openai
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    requests: Option<u64>,
    tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    per: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBurst {
    window: String,
    factor: f64,
    floor: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLatency {
    #[serde(default)]
    first_token_ms: f64,
    #[serde(default)]
    per_token_ms: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompletion {
    fixed: Option<u64>,
    min: Option<u64>,
    max: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    name: Option<String>,
    key: String,
    #[serde(default)]
    state: AccountState,
    #[serde(default)]
    models: Vec<RawAccountModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccountModel {
    model: String,
    limits: Option<Vec<RawLimit>>,
    background: Option<RawBackground>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackground {
    rps: f64,
    #[serde(default)]
    tokens_per_request: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawFault {
    model: Option<String>,
    account: Option<String>,
    server_error: f64,
    capacity: f64,
    stream_cut: f64,
    stream_error: f64,
    missing_usage: f64,
    slow: f64,
    slow_ms: Option<u64>,
    echo_bad_request: f64,
}

/// Default extra delay of the `slow` fault.
pub const DEFAULT_SLOW_MS: u64 = 2_000;

/// A duration with Sluice's one grammar ([`sluice_config::duration::parse`]).
fn duration(text: &str, place: &str) -> Result<Duration, ConfigError> {
    sluice_config::duration::parse(text).map_err(|why| ConfigError::Duration {
        place: place.to_owned(),
        text: text.to_owned(),
        why,
    })
}

fn ms(value: f64, place: &str) -> Result<Duration, ConfigError> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(ConfigError::Invalid(format!("{place} must be >= 0")));
    }
    Duration::try_from_secs_f64(value / 1000.0)
        .map_err(|_| ConfigError::Invalid(format!("{place} is too large")))
}

/// Parses the TOML shape of a list of limits, e.g. `[{ requests = 600, per = "60s" }]`
/// (also used by the admin endpoint, from JSON).
pub fn parse_limits(raw: &[RawLimitSpec], place: &str) -> Result<Vec<Limit>, ConfigError> {
    raw.iter()
        .map(|l| {
            let window = duration(&l.per, place)?;
            let given = [
                (Unit::Requests, l.requests),
                (Unit::Tokens, l.tokens),
                (Unit::InputTokens, l.input_tokens),
                (Unit::OutputTokens, l.output_tokens),
            ];
            let mut set = given.iter().filter_map(|(u, n)| n.map(|n| (*u, n)));
            match (set.next(), set.next()) {
                (Some((unit, amount)), None) => Ok(Limit {
                    unit,
                    amount,
                    window,
                }),
                _ => Err(ConfigError::Invalid(format!(
                    "{place}: each limit has exactly one of `requests`, `tokens`, `input_tokens` or `output_tokens`"
                ))),
            }
        })
        .collect()
}

/// One limit as written in TOML or JSON: `{ requests = 600, per = "60s" }` or `{ tokens = 1000000, per = "1m" }`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawLimitSpec {
    /// Requests per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Tokens per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Prompt tokens per window (Anthropic's input tokens per minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Completion tokens per window (Anthropic's output tokens per minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    /// The window: a number and a unit among `ms`, `s`, `m`, `h`, `d`.
    pub per: String,
}

fn raw_limits(raw: Vec<RawLimit>, place: &str) -> Result<Vec<Limit>, ConfigError> {
    let specs: Vec<RawLimitSpec> = raw
        .into_iter()
        .map(|l| RawLimitSpec {
            requests: l.requests,
            tokens: l.tokens,
            input_tokens: l.input_tokens,
            output_tokens: l.output_tokens,
            per: l.per,
        })
        .collect();
    parse_limits(&specs, place)
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, Self::Error> {
        let listen = match raw.listen {
            Some(text) => text.parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "listen: {text:?} is not an address like 127.0.0.1:9000"
                ))
            })?,
            None => Config::default().listen,
        };
        let mut models = Vec::new();
        for m in raw.models {
            let place = format!("models.{}", m.name);
            let mut model = ModelConfig::new(m.name.clone(), m.dialect);
            model.limits = raw_limits(m.limits, &place)?;
            model.token_rule = m.token_rule;
            if let Some(b) = m.burst {
                model.burst = Some(BurstConfig {
                    window: duration(&b.window, &format!("{place}.burst.window"))?,
                    factor: b.factor,
                    floor: b.floor,
                });
            }
            if let Some(l) = m.latency {
                model.latency = Latency {
                    first_token: ms(l.first_token_ms, &format!("{place}.latency.first_token_ms"))?,
                    per_token: ms(l.per_token_ms, &format!("{place}.latency.per_token_ms"))?,
                };
            }
            if let Some(c) = m.completion_tokens {
                model.completion_tokens = match (c.fixed, c.min, c.max) {
                    (Some(n), None, None) => CompletionTokens::Fixed(n),
                    (None, Some(min), Some(max)) => CompletionTokens::Uniform { min, max },
                    _ => {
                        return Err(ConfigError::Invalid(format!(
                            "{place}.completion_tokens is either {{ fixed = N }} or {{ min = A, max = B }}"
                        )));
                    }
                };
            }
            if let Some(n) = m.max_output_tokens {
                model.max_output_tokens = n;
            }
            if let Some(n) = m.stream_chunk_tokens {
                model.stream_chunk_tokens = n;
            }
            model.sse_line_ending = m.sse_line_ending;
            if let Some(b) = m.rate_limit_headers {
                model.announce.rate_limit_headers = b;
            }
            if let Some(b) = m.retry_after {
                model.announce.retry_after = b;
            }
            models.push(model);
        }
        let mut accounts = Vec::new();
        for a in raw.accounts {
            let mut account = AccountConfig::new(a.key);
            account.name = a.name;
            account.state = a.state;
            let name = account.display_name();
            for am in a.models {
                let place = format!("accounts.{name}.{}", am.model);
                account.models.push(AccountModel {
                    limits: am.limits.map(|l| raw_limits(l, &place)).transpose()?,
                    background: am.background.map(|b| Background {
                        rps: b.rps,
                        tokens_per_request: b.tokens_per_request,
                    }),
                    model: am.model,
                });
            }
            accounts.push(account);
        }
        let faults = raw
            .faults
            .into_iter()
            .map(|f| FaultRule {
                model: f.model,
                account: f.account,
                server_error: f.server_error,
                capacity: f.capacity,
                stream_cut: f.stream_cut,
                stream_error: f.stream_error,
                missing_usage: f.missing_usage,
                slow: f.slow,
                slow_ms: f.slow_ms.unwrap_or(DEFAULT_SLOW_MS),
                echo_bad_request: f.echo_bad_request,
            })
            .collect();
        let accept_any_key = raw.accept_any_key.unwrap_or(accounts.is_empty());
        Ok(Config {
            listen,
            seed: raw.seed.unwrap_or(0),
            window_scale: raw.window_scale.unwrap_or(1.0),
            accept_any_key,
            models,
            accounts,
            faults,
        })
    }
}

//! Configuration: the validated [`Config`] and its parts, with the cross-field checks (the TOML shape is in `raw`).

mod raw;

pub use raw::{DEFAULT_SLOW_MS, RawLimitSpec, parse_limits};

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use self::raw::RawConfig;
use crate::error::ConfigError;
use crate::meter::Unit;

/// How refusals, errors and rate-limit headers are worded: one provider's conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// OpenAI: `x-ratelimit-*` on every response with Go-duration resets, `retry-after`.
    Openai,
    /// Alibaba Cloud Model Studio (DashScope) compatible mode: codes in the body, no rate-limit headers.
    Dashscope,
    /// Azure OpenAI: code `"429"`, `retry-after`, `retry-after-ms`, remaining headers.
    Azure,
    /// Anthropic: `anthropic-ratelimit-*` headers with RFC 3339 resets.
    Anthropic,
}

impl FromStr for Dialect {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "openai" => Ok(Self::Openai),
            "dashscope" => Ok(Self::Dashscope),
            "azure" => Ok(Self::Azure),
            "anthropic" => Ok(Self::Anthropic),
            other => Err(ConfigError::UnknownDialect(other.to_owned())),
        }
    }
}

/// When token limits are charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRule {
    /// Check and charge prompt + max completion tokens at arrival; settle the same entry to the
    /// real usage when the answer is complete (providers' behaviour, the default).
    #[default]
    ReserveMaxTokens,
    /// Admit while every token limit is below its limit (a cost-0 check), charge the real
    /// usage when the answer is complete, at that instant (post-paid: a window may overshoot).
    ActualOnly,
}

/// An account's standing: anything but `Active` refuses every request, non-retryably.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    /// Served normally.
    #[default]
    Active,
    /// Billing is exhausted (OpenAI `insufficient_quota`, DashScope `PrepaidBillOverdue`, ...).
    BillingExhausted,
    /// The free tier is used up (DashScope "Free allocated quota exceeded.").
    FreeQuotaExhausted,
}

/// An API key. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }
    /// The key itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The name of an account that has no configured name: `key-` and the first 8 hex digits of
    /// the SHA-256 of the key (not reversible).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.0)
    }
}

/// `key-` and the first 8 hex digits of the SHA-256 of `key`.
pub fn fingerprint(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("key-{hex}")
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("*****")
    }
}

/// One limit: `amount` units per `window` (before `window_scale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// What is counted.
    pub unit: Unit,
    /// How many units the window allows (at least 1).
    pub amount: u64,
    /// The window length as configured.
    pub window: Duration,
}

impl Limit {
    /// `amount` requests per `window`.
    pub fn requests(amount: u64, window: Duration) -> Self {
        Self {
            unit: Unit::Requests,
            amount,
            window,
        }
    }
    /// `amount` tokens per `window`.
    pub fn tokens(amount: u64, window: Duration) -> Self {
        Self {
            unit: Unit::Tokens,
            amount,
            window,
        }
    }
}

/// The ramp-up rule as configured (see [`crate::burst`] for the exact rule).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurstConfig {
    /// The window `W` (before `window_scale`).
    pub window: Duration,
    /// The growth allowed from one window to the next (≥ 1.0).
    pub factor: f64,
    /// Requests always allowed per window (≥ 1).
    pub floor: u64,
}

/// How long an answer takes.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Latency {
    /// Time before the response starts (headers and first chunk).
    pub first_token: Duration,
    /// Time per completion token, after the first byte.
    pub per_token: Duration,
}

/// How many completion tokens an answer has when the request sets no `max_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionTokens {
    /// Always this many.
    Fixed(u64),
    /// Uniform in `min..=max`, drawn from the seeded generator.
    Uniform {
        /// Smallest count.
        min: u64,
        /// Largest count (reserved at arrival under `reserve_max_tokens`).
        max: u64,
    },
}

impl CompletionTokens {
    /// The most an answer without `max_tokens` can have: what is reserved at arrival.
    pub fn max(&self) -> u64 {
        match *self {
            Self::Fixed(n) => n,
            Self::Uniform { max, .. } => max,
        }
    }
}

/// One served model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The model name clients send.
    pub name: String,
    /// How this model refuses.
    pub dialect: Dialect,
    /// The limits of each account on this model (accounts may override them).
    pub limits: Vec<Limit>,
    /// When tokens are charged.
    pub token_rule: TokenRule,
    /// The ramp-up rule, off when `None`.
    pub burst: Option<BurstConfig>,
    /// Latency of answers.
    pub latency: Latency,
    /// Completion tokens when the request sets no `max_tokens` / `max_completion_tokens`.
    pub completion_tokens: CompletionTokens,
    /// The largest `max_tokens` accepted (400 above it).
    pub max_output_tokens: u64,
    /// Completion tokens per streamed chunk.
    pub stream_chunk_tokens: u64,
    /// The line ending of streamed events (`\n` by default).
    pub sse_line_ending: SseLineEnding,
    /// What the answers say about the limits (headers, `Retry-After`).
    pub announce: Announce,
}

/// What a model's answers tell about its limits: like the real provider by default;
/// a relay, self-hosted vLLM or TGI often says nothing but the 429 (and maybe a
/// `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    /// The dialect's rate-limit headers (`x-ratelimit-*`, `anthropic-ratelimit-*`) on
    /// every answer.
    pub rate_limit_headers: bool,
    /// `Retry-After` (and `retry-after-ms`) on refusals.
    pub retry_after: bool,
}

impl Default for Announce {
    fn default() -> Self {
        Self {
            rate_limit_headers: true,
            retry_after: true,
        }
    }
}

/// The line ending a streamed answer frames its events with (the SSE spec allows all
/// three; OpenAI sends `\n`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SseLineEnding {
    /// `\n`.
    #[default]
    Lf,
    /// `\r\n`.
    Crlf,
    /// `\r`.
    Cr,
}

impl SseLineEnding {
    /// The bytes of one line ending.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lf => "\n",
            Self::Crlf => "\r\n",
            Self::Cr => "\r",
        }
    }
}

impl ModelConfig {
    /// A model with no limits, no latency, 16 default completion tokens, in `dialect`.
    pub fn new(name: impl Into<String>, dialect: Dialect) -> Self {
        Self {
            name: name.into(),
            dialect,
            limits: Vec::new(),
            token_rule: TokenRule::default(),
            burst: None,
            latency: Latency::default(),
            completion_tokens: CompletionTokens::Fixed(DEFAULT_COMPLETION_TOKENS),
            max_output_tokens: DEFAULT_MAX_OUTPUT_TOKENS,
            stream_chunk_tokens: DEFAULT_STREAM_CHUNK_TOKENS,
            sse_line_ending: SseLineEnding::default(),
            announce: Announce::default(),
        }
    }

    /// Adds a limit.
    pub fn with_limit(mut self, limit: Limit) -> Self {
        self.limits.push(limit);
        self
    }
}

/// Default completion tokens when a request sets no maximum.
pub const DEFAULT_COMPLETION_TOKENS: u64 = 16;
/// Default largest `max_tokens` accepted.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 32_768;
/// Default completion tokens per streamed chunk.
pub const DEFAULT_STREAM_CHUNK_TOKENS: u64 = 4;

/// A consumer that spends an account's quota without passing through Sluice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Background {
    /// Requests per second it sends.
    pub rps: f64,
    /// Tokens each of its requests costs.
    pub tokens_per_request: u64,
}

/// Per account × model settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountModel {
    /// The model.
    pub model: String,
    /// This account's own limits on the model, replacing the model's.
    pub limits: Option<Vec<Limit>>,
    /// A background consumer on this account × model.
    pub background: Option<Background>,
}

/// One account (one API key).
#[derive(Debug, Clone, PartialEq)]
pub struct AccountConfig {
    /// The name shown in `/stats`; when `None`, the key's fingerprint.
    pub name: Option<String>,
    /// The API key.
    pub key: ApiKey,
    /// Its standing at start.
    pub state: AccountState,
    /// Per-model overrides and background consumers.
    pub models: Vec<AccountModel>,
}

impl AccountConfig {
    /// An active account with this key and no overrides.
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            name: None,
            key: ApiKey::new(key),
            state: AccountState::Active,
            models: Vec::new(),
        }
    }
    /// The name shown in `/stats`.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.key.fingerprint())
    }
}

/// Fault rates (0.0 to 1.0) for the requests a rule matches.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FaultRule {
    /// Only this model, if set.
    pub model: Option<String>,
    /// Only this account (by name or key), if set.
    pub account: Option<String>,
    /// A 500 server error, before metering.
    pub server_error: f64,
    /// A capacity error (`ModelServingError`, Anthropic 529), before metering.
    pub capacity: f64,
    /// A stream closed abruptly halfway (streaming requests only).
    pub stream_cut: f64,
    /// An error event inside the 200 stream halfway (streaming requests only).
    pub stream_error: f64,
    /// No usage chunk although `include_usage` was asked (streaming requests only).
    pub missing_usage: f64,
    /// `slow_ms` more before the first byte.
    pub slow: f64,
    /// The extra delay of a slow response.
    pub slow_ms: u64,
    /// A 400 that echoes the request's text, before metering, the way OpenAI and vLLM
    /// answer an unknown argument: `"Unrecognized request argument supplied: <text>"`
    /// (chat completions: the last message's text). Lets tests check that a proxy
    /// treats upstream text as evidence, never as a command.
    pub echo_bad_request: f64,
}

/// The validated configuration of a simulator.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the binary listens.
    pub listen: SocketAddr,
    /// Seed of the generator used for completion-token distributions and fault rates.
    pub seed: u64,
    /// Every window length (limits, burst) is multiplied by this.
    pub window_scale: f64,
    /// Whether a key that is not configured is accepted (as its own account, with the models' limits).
    pub accept_any_key: bool,
    /// The served models.
    pub models: Vec<ModelConfig>,
    /// The configured accounts.
    pub accounts: Vec<AccountConfig>,
    /// Fault rules; the first that matches a request applies.
    pub faults: Vec<FaultRule>,
}

/// The default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9000";

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
            seed: 0,
            window_scale: 1.0,
            accept_any_key: true,
            models: Vec::new(),
            accounts: Vec::new(),
            faults: Vec::new(),
        }
    }
}

impl Config {
    /// A configuration that serves `models`, accepting any key.
    pub fn with_models(models: Vec<ModelConfig>) -> Self {
        Self {
            models,
            ..Self::default()
        }
    }

    /// Parses and validates a TOML document.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Toml(e.message().to_owned() + &span(text, e.span())))?;
        let config = Self::try_from(raw)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML file.
    pub fn from_toml_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// The model named `name`.
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }

    /// Cross-field checks: unique names and keys, known models, sane numbers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.window_scale.is_finite() && self.window_scale > 0.0) {
            return Err(ConfigError::Invalid(format!(
                "window_scale must be a positive number, not {}",
                self.window_scale
            )));
        }
        let mut names = HashSet::new();
        for model in &self.models {
            if model.name.is_empty() || !names.insert(model.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "model name {:?} is empty or repeated",
                    model.name
                )));
            }
            check_limits(&model.limits, &format!("models.{}", model.name))?;
            if let Some(burst) = model.burst
                && (burst.floor == 0
                    || !(burst.factor.is_finite() && burst.factor >= 1.0)
                    || burst.window.is_zero())
            {
                return Err(ConfigError::Invalid(format!(
                    "models.{}.burst needs window > 0, factor >= 1.0 and floor >= 1",
                    model.name
                )));
            }
            if let CompletionTokens::Uniform { min, max } = model.completion_tokens
                && min > max
            {
                return Err(ConfigError::Invalid(format!(
                    "models.{}.completion_tokens: min > max",
                    model.name
                )));
            }
            if model.completion_tokens.max() > model.max_output_tokens
                || model.stream_chunk_tokens == 0
            {
                return Err(ConfigError::Invalid(format!(
                    "models.{}: completion_tokens above max_output_tokens, or stream_chunk_tokens = 0",
                    model.name
                )));
            }
        }
        let mut keys = HashSet::new();
        let mut account_names = HashSet::new();
        for account in &self.accounts {
            if account.key.expose().is_empty() || !keys.insert(account.key.expose()) {
                return Err(ConfigError::Invalid(format!(
                    "account {} has an empty or repeated key",
                    account.display_name()
                )));
            }
            let name = account.display_name();
            if !account_names.insert(name.clone()) {
                return Err(ConfigError::Invalid(format!(
                    "account name {name:?} is repeated"
                )));
            }
            for am in &account.models {
                if self.model(&am.model).is_none() {
                    return Err(ConfigError::UnknownModel {
                        place: format!("accounts.{name}"),
                        model: am.model.clone(),
                    });
                }
                if let Some(limits) = &am.limits {
                    check_limits(limits, &format!("accounts.{name}.{}", am.model))?;
                }
                if let Some(bg) = am.background
                    && !(bg.rps.is_finite() && bg.rps >= 0.0)
                {
                    return Err(ConfigError::Invalid(format!(
                        "accounts.{name}.{}.background.rps must be >= 0",
                        am.model
                    )));
                }
            }
        }
        for (i, fault) in self.faults.iter().enumerate() {
            if let Some(model) = &fault.model
                && self.model(model).is_none()
            {
                return Err(ConfigError::UnknownModel {
                    place: format!("faults[{i}]"),
                    model: model.clone(),
                });
            }
            let rates = [
                fault.server_error,
                fault.capacity,
                fault.stream_cut,
                fault.stream_error,
                fault.missing_usage,
                fault.slow,
                fault.echo_bad_request,
            ];
            if rates.iter().any(|r| !(0.0..=1.0).contains(r)) {
                return Err(ConfigError::Invalid(format!(
                    "faults[{i}]: every rate must be between 0.0 and 1.0"
                )));
            }
        }
        Ok(())
    }
}

fn check_limits(limits: &[Limit], place: &str) -> Result<(), ConfigError> {
    for limit in limits {
        if limit.amount == 0 || limit.window.is_zero() {
            return Err(ConfigError::Invalid(format!(
                "{place}: a limit needs an amount >= 1 and a window > 0"
            )));
        }
    }
    Ok(())
}

fn span(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(range) => {
            let line = text[..range.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
listen = "127.0.0.1:0"
seed = 7
window_scale = 0.5

[[models]]
name = "qwen3-max"
dialect = "dashscope"
limits = [{ requests = 600, per = "60s" }, { tokens = 1000000, per = "1m" }, { requests = 10, per = "1s" }]
token_rule = "actual_only"
burst = { window = "1s", factor = 2.0, floor = 10 }
latency = { first_token_ms = 200, per_token_ms = 2.5 }
completion_tokens = { min = 10, max = 200 }
stream_chunk_tokens = 2

[[models]]
name = "gpt-4o-mini"

[[accounts]]
name = "team-a"
key = "sk-team-a"
state = "billing_exhausted"
models = [{ model = "qwen3-max", limits = [{ requests = 60, per = "60s" }], background = { rps = 2.0, tokens_per_request = 500 } }]

[[accounts]]
key = "sk-b"

[[faults]]
model = "qwen3-max"
server_error = 0.1
stream_cut = 1.0
"#;

    #[test]
    fn full_example_parses() {
        let c = Config::from_toml_str(FULL).unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.seed, 7);
        assert!(!c.accept_any_key);
        let q = c.model("qwen3-max").unwrap();
        assert_eq!(q.dialect, Dialect::Dashscope);
        assert_eq!(q.limits.len(), 3);
        assert_eq!(
            q.limits[1],
            Limit::tokens(1_000_000, Duration::from_secs(60))
        );
        assert_eq!(q.token_rule, TokenRule::ActualOnly);
        assert_eq!(q.burst.unwrap().floor, 10);
        assert_eq!(q.latency.per_token, Duration::from_micros(2500));
        assert_eq!(
            q.completion_tokens,
            CompletionTokens::Uniform { min: 10, max: 200 }
        );
        let g = c.model("gpt-4o-mini").unwrap();
        assert_eq!(g.dialect, Dialect::Openai);
        assert!(g.limits.is_empty());
        assert_eq!(c.accounts[0].state, AccountState::BillingExhausted);
        assert_eq!(
            c.accounts[0].models[0]
                .background
                .unwrap()
                .tokens_per_request,
            500
        );
        assert_eq!(c.accounts[1].display_name(), fingerprint("sk-b"));
        assert_eq!(c.faults[0].slow_ms, DEFAULT_SLOW_MS);
    }

    #[test]
    fn a_model_may_announce_nothing() {
        let c = Config::from_toml_str(
            "[[models]]\nname = \"vllm\"\nrate_limit_headers = false\nretry_after = false\n[[models]]\nname = \"m\"",
        )
        .unwrap();
        let v = c.model("vllm").unwrap().announce;
        assert!(!v.rate_limit_headers && !v.retry_after);
        assert_eq!(c.model("m").unwrap().announce, Announce::default());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let bad = [
            "[[models]]\nname = \"m\"\nlimitz = []",
            "[[models]]\nname = \"m\"\nlimits = [{ requests = 1, tokens = 2, per = \"1s\" }]",
            "[[models]]\nname = \"m\"\nlimits = [{ requests = 0, per = \"1s\" }]",
            "[[models]]\nname = \"m\"\nlimits = [{ requests = 1, per = \"1 fortnight\" }]",
            "[[models]]\nname = \"m\"\ndialect = \"gemini\"",
            "[[models]]\nname = \"m\"\n[[models]]\nname = \"m\"",
            "[[accounts]]\nkey = \"k\"\nmodels = [{ model = \"nope\" }]",
            "[[faults]]\nserver_error = 1.5",
            "window_scale = 0.0",
        ];
        for text in bad {
            assert!(Config::from_toml_str(text).is_err(), "accepted: {text}");
        }
    }

    #[test]
    fn shipped_example_parses() {
        let c = Config::from_toml_str(include_str!("../../sim.example.toml")).unwrap();
        assert_eq!(c.models.len(), 2);
        assert_eq!(c.accounts[0].models[0].background.map(|b| b.rps), Some(0.5));
        assert_eq!(c.accounts[1].state, AccountState::BillingExhausted);
        assert_eq!(c.faults[0].slow_ms, 5000);
    }

    #[test]
    fn keys_are_never_printed() {
        let c = Config::from_toml_str(FULL).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("sk-team-a"));
        assert!(fingerprint("sk-b").starts_with("key-"));
        assert_eq!(fingerprint("sk-b").len(), 12);
    }
}

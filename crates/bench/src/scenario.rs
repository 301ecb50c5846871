//! The scenario file: the provider's limits, the fleet (services × replicas) and the run.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::BenchError;

/// A whole benchmark: the simulated provider and the fleet that shares its quota.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Seconds during which requests arrive (the measurement window).
    pub duration_secs: f64,
    /// Seed of every random draw (arrivals, sizes, jitter).
    #[serde(default)]
    pub seed: u64,
    /// The provider: model, dialect, limits as published, window scale, latency.
    pub provider: Provider,
    /// The services of the fleet.
    pub services: Vec<Service>,
}

/// The simulated provider, one account, one model.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// Model name (also what clients send).
    pub model: String,
    /// Sim dialect: `openai`, `dashscope`, `azure`, `anthropic`.
    pub dialect: String,
    /// Requests per 60 s, as published.
    pub rpm: u64,
    /// Tokens per 60 s, as published.
    pub tpm: u64,
    /// Requests per 1 s, as published (0: none).
    #[serde(default)]
    pub rps: u64,
    /// Multiplies every window (0.1: a minute lasts 6 s), in the sim and in Sluice alike.
    pub window_scale: f64,
    /// Time to the first byte of an answer, in ms.
    #[serde(default)]
    pub first_token_ms: u64,
    /// Time per completion token, in ms.
    #[serde(default)]
    pub per_token_ms: u64,
}

/// How a service's requests arrive.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Arrivals {
    /// A Poisson process at the service's rate.
    Poisson,
    /// On/off: Poisson at `rate × (on + off) / on` during `on_secs`, nothing during
    /// `off_secs` (the same mean rate, in bursts). Each replica starts at its own phase.
    Bursty {
        /// Seconds on.
        on_secs: f64,
        /// Seconds off.
        off_secs: f64,
    },
}

/// A uniform range of token counts (inclusive).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// Smallest.
    pub min: u64,
    /// Largest.
    pub max: u64,
}

/// One service: `replicas` copies of the same client.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Name (also its tenant in Sluice).
    pub name: String,
    /// Replicas of the service.
    pub replicas: u32,
    /// Mean requests per second of the whole service (split evenly over replicas).
    pub rate: f64,
    /// Arrival process.
    pub arrivals: Arrivals,
    /// Prompt tokens per request.
    pub prompt_tokens: Range,
    /// `max_tokens` per request (the simulator answers exactly that many).
    pub output_tokens: Range,
    /// Seconds from arrival by which the answer must be complete.
    pub deadline_secs: f64,
    /// Tenant weight in Sluice.
    #[serde(default = "one")]
    pub weight: u32,
}

/// Strictly positive (and not NaN).
fn pos(x: f64) -> bool {
    x > 0.0
}

fn one() -> u32 {
    1
}

/// The built-in scenario: the seed's qwen3-max quota (600 RPM / 1,000,000 TPM / 10 RPS on
/// DashScope) at window scale 0.25, and five services, 1.25× over-subscribed.
pub const DEMO: &str = include_str!("../scenarios/demo.toml");

impl Scenario {
    /// Parses and checks a scenario.
    pub fn from_toml(text: &str) -> Result<Self, BenchError> {
        let s: Scenario = toml::from_str(text).map_err(|e| BenchError::Scenario(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// The built-in demo scenario.
    pub fn demo() -> Self {
        Self::from_toml(DEMO).expect("the built-in scenario is valid")
    }

    fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: String| Err(BenchError::Scenario(m));
        if !pos(self.duration_secs) {
            return bad("duration_secs must be > 0".into());
        }
        if !pos(self.provider.window_scale) {
            return bad("provider.window_scale must be > 0".into());
        }
        if self.provider.rpm == 0 || self.provider.tpm == 0 {
            return bad("provider.rpm and provider.tpm must be > 0".into());
        }
        if self.services.is_empty() {
            return bad("at least one service".into());
        }
        for s in &self.services {
            if s.replicas == 0 || !pos(s.rate) || !pos(s.deadline_secs) || s.weight == 0 {
                return bad(format!(
                    "service {}: replicas, rate, deadline_secs, weight must be > 0",
                    s.name
                ));
            }
            if s.prompt_tokens.min < 7 || s.prompt_tokens.min > s.prompt_tokens.max {
                return bad(format!(
                    "service {}: prompt_tokens needs 7 ≤ min ≤ max",
                    s.name
                ));
            }
            if s.output_tokens.min == 0 || s.output_tokens.min > s.output_tokens.max {
                return bad(format!(
                    "service {}: output_tokens needs 1 ≤ min ≤ max",
                    s.name
                ));
            }
            if let Arrivals::Bursty { on_secs, off_secs } = s.arrivals
                && (!pos(on_secs) || off_secs < 0.0)
            {
                return bad(format!("service {}: on_secs > 0, off_secs ≥ 0", s.name));
            }
        }
        Ok(())
    }

    /// Total replicas of the fleet.
    pub fn replicas(&self) -> u32 {
        self.services.iter().map(|s| s.replicas).sum()
    }

    /// The measurement window.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_secs)
    }

    /// The longest deadline of any service.
    pub fn max_deadline(&self) -> Duration {
        let secs = self
            .services
            .iter()
            .map(|s| s.deadline_secs)
            .fold(0.0, f64::max);
        Duration::from_secs_f64(secs)
    }
}

impl Provider {
    /// The limits as enforced: `(unit, amount, window)`, windows scaled.
    pub fn limits(&self) -> Vec<(Unit, u64, Duration)> {
        let scale = |secs: f64| Duration::from_secs_f64(secs * self.window_scale);
        let mut v = vec![
            (Unit::Requests, self.rpm, scale(60.0)),
            (Unit::Tokens, self.tpm, scale(60.0)),
        ];
        if self.rps > 0 {
            v.push((Unit::Requests, self.rps, scale(1.0)));
        }
        v
    }

    /// The long-run rate the limits allow, per second: `(requests, tokens)`.
    pub fn capacity_per_sec(&self) -> (f64, f64) {
        let mut req = f64::INFINITY;
        let mut tok = f64::INFINITY;
        for (unit, amount, window) in self.limits() {
            let rate = amount as f64 / window.as_secs_f64();
            match unit {
                Unit::Requests => req = req.min(rate),
                Unit::Tokens => tok = tok.min(rate),
            }
        }
        (req, tok)
    }

    /// The provider's time to answer a request of `output` tokens.
    pub fn service_time(&self, output: u64) -> Duration {
        Duration::from_millis(self.first_token_ms + self.per_token_ms * output)
    }
}

/// What a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Requests.
    Requests,
    /// Prompt + completion tokens.
    Tokens,
}

/// A duration as the gateway and the simulator read it (`"6000ms"`).
pub fn dur_text(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_scenario_parses_and_is_over_subscribed() {
        let s = Scenario::demo();
        assert_eq!(s.services.len(), 5);
        let (req, _) = s.provider.capacity_per_sec();
        assert!((req - 40.0).abs() < 1e-9, "10 per 250 ms: {req}");
        let demand: f64 = s.services.iter().map(|s| s.rate).sum();
        assert!(demand > req, "demand {demand} ≤ capacity {req}");
    }

    #[test]
    fn unknown_fields_and_bad_values_are_errors() {
        assert!(Scenario::from_toml("duration_secs = 1\nbogus = 2").is_err());
        let bad = DEMO.replace("replicas = 3", "replicas = 0");
        assert!(Scenario::from_toml(&bad).is_err());
    }

    #[test]
    fn limits_are_scaled() {
        let s = Scenario::demo();
        let l = s.provider.limits();
        assert_eq!(l[0], (Unit::Requests, 600, Duration::from_secs(15)));
        assert_eq!(l[2], (Unit::Requests, 10, Duration::from_millis(250)));
        assert_eq!(dur_text(l[2].2), "250ms");
    }
}

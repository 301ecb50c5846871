//! The command line of the `sluice-sim` binary and how flags combine with a config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::config::{AccountConfig, Config, Dialect, Limit, ModelConfig};
use crate::error::ConfigError;

/// The model served when no config file and no `--models` are given.
pub const DEFAULT_MODEL: &str = "qwen3-max";

/// `sluice-sim`: a strict fake LLM provider that meters every account like the real ones.
#[derive(Debug, Clone, Parser)]
#[command(name = "sluice-sim", version, about, long_about = None)]
pub struct Args {
    /// TOML config file (accounts, models, limits, dialects, latency, faults); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port. Default 127.0.0.1:9000.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Requests per minute per account × model (a `requests` limit over 60 s).
    #[arg(long, value_name = "N")]
    pub rpm: Option<u64>,
    /// Tokens per minute per account × model (a `tokens` limit over 60 s).
    #[arg(long, value_name = "N")]
    pub tpm: Option<u64>,
    /// Requests per second per account × model (a `requests` limit over 1 s).
    #[arg(long, value_name = "N")]
    pub rps: Option<u64>,
    /// Refusal dialect of every model: openai, dashscope, azure or anthropic (default openai).
    #[arg(long, value_name = "DIALECT")]
    pub dialect: Option<Dialect>,
    /// Models served with the flag limits, comma-separated (default qwen3-max).
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Accepted API keys, comma-separated; default: any bearer key, each distinct key its own account.
    #[arg(long, value_name = "K1,K2", value_delimiter = ',')]
    pub keys: Vec<String>,
    /// Multiply every window length by F (0.1 makes a 60 s window 6 s).
    #[arg(long, value_name = "F")]
    pub window_scale: Option<f64>,
    /// Time to first byte of every answer, in milliseconds.
    #[arg(long, value_name = "N")]
    pub latency_ms: Option<f64>,
    /// Time per completion token, in milliseconds (streams trickle at this pace).
    #[arg(long, value_name = "N")]
    pub ms_per_token: Option<f64>,
    /// Seed of the generator for completion-token distributions and fault rates.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Send no rate-limit headers (`x-ratelimit-*`, `anthropic-ratelimit-*`) on any
    /// answer of any model, whatever the dialect (a relay, vLLM, TGI).
    #[arg(long)]
    pub no_rate_limit_headers: bool,
    /// Send no `Retry-After` (nor `retry-after-ms`) on refusals of any model.
    #[arg(long)]
    pub no_retry_after: bool,
}

fn millis(value: f64, flag: &str) -> Result<Duration, ConfigError> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(ConfigError::Invalid(format!(
            "{flag} must be a number >= 0"
        )));
    }
    Duration::try_from_secs_f64(value / 1000.0)
        .map_err(|_| ConfigError::Invalid(format!("{flag} is too large")))
}

impl Args {
    /// The configuration these flags describe.
    ///
    /// Without `--config`: the models of `--models` (default `qwen3-max`) with the limits of
    /// `--rpm`, `--tpm`, `--rps` (none given: unlimited). With `--config`: the file, then
    /// `--rpm`/`--tpm`/`--rps` replace the limits of the `--models` named (added if missing) or,
    /// without `--models`, of every model of the file. `--dialect`, `--latency-ms` and
    /// `--ms-per-token`, `--no-rate-limit-headers`, `--no-retry-after` apply to every model; `--keys` replaces the file's accounts;
    /// `--listen`, `--window-scale`, `--seed` replace the file's values.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_toml_file(path)?,
            None => Config::default(),
        };
        let flag_limits: Vec<Limit> = [
            self.rpm
                .map(|n| Limit::requests(n, Duration::from_secs(60))),
            self.tpm.map(|n| Limit::tokens(n, Duration::from_secs(60))),
            self.rps.map(|n| Limit::requests(n, Duration::from_secs(1))),
        ]
        .into_iter()
        .flatten()
        .collect();
        let any_limit_flag = !flag_limits.is_empty();
        if self.config.is_none() || !self.models.is_empty() {
            let names = if self.models.is_empty() {
                vec![DEFAULT_MODEL.to_owned()]
            } else {
                self.models.clone()
            };
            for name in names
                .into_iter()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
            {
                match config.models.iter_mut().find(|m| m.name == name) {
                    Some(model) if any_limit_flag => model.limits = flag_limits.clone(),
                    Some(_) => {}
                    None => {
                        let mut model =
                            ModelConfig::new(name, self.dialect.unwrap_or(Dialect::Openai));
                        model.limits = flag_limits.clone();
                        config.models.push(model);
                    }
                }
            }
        } else if any_limit_flag {
            for model in &mut config.models {
                model.limits = flag_limits.clone();
            }
        }
        for model in &mut config.models {
            if let Some(dialect) = self.dialect {
                model.dialect = dialect;
            }
            if let Some(ms) = self.latency_ms {
                model.latency.first_token = millis(ms, "--latency-ms")?;
            }
            if let Some(ms) = self.ms_per_token {
                model.latency.per_token = millis(ms, "--ms-per-token")?;
            }
            if self.no_rate_limit_headers {
                model.announce.rate_limit_headers = false;
            }
            if self.no_retry_after {
                model.announce.retry_after = false;
            }
        }
        if !self.keys.is_empty() {
            config.accounts = self
                .keys
                .iter()
                .map(|k| k.trim())
                .filter(|k| !k.is_empty())
                .map(AccountConfig::new)
                .collect();
            config.accept_any_key = false;
        }
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(scale) = self.window_scale {
            config.window_scale = scale;
        }
        if let Some(seed) = self.seed {
            config.seed = seed;
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::Unit;

    fn parse(args: &[&str]) -> Config {
        let mut argv = vec!["sluice-sim"];
        argv.extend_from_slice(args);
        Args::try_parse_from(argv).unwrap().into_config().unwrap()
    }

    #[test]
    fn the_common_case() {
        let c = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--rpm",
            "600",
            "--tpm",
            "1000000",
            "--rps",
            "10",
            "--dialect",
            "dashscope",
        ]);
        assert_eq!(c.listen.port(), 0);
        assert!(c.accept_any_key);
        let m = c.model(DEFAULT_MODEL).unwrap();
        assert_eq!(m.dialect, Dialect::Dashscope);
        assert_eq!(
            m.limits,
            vec![
                Limit::requests(600, Duration::from_secs(60)),
                Limit::tokens(1_000_000, Duration::from_secs(60)),
                Limit::requests(10, Duration::from_secs(1)),
            ]
        );
    }

    #[test]
    fn models_keys_and_timing() {
        let c = parse(&[
            "--models",
            "a,b",
            "--keys",
            "k1,k2",
            "--tpm",
            "5",
            "--window-scale",
            "0.1",
            "--latency-ms",
            "20",
            "--ms-per-token",
            "1.5",
            "--seed",
            "9",
        ]);
        assert_eq!(c.models.len(), 2);
        assert_eq!(c.models[1].limits[0].unit, Unit::Tokens);
        assert_eq!(c.models[0].dialect, Dialect::Openai);
        assert_eq!(c.models[0].latency.first_token, Duration::from_millis(20));
        assert_eq!(c.models[0].latency.per_token, Duration::from_micros(1500));
        assert_eq!(c.accounts.len(), 2);
        assert!(!c.accept_any_key);
        assert_eq!((c.window_scale, c.seed), (0.1, 9));
    }

    #[test]
    fn bad_flags_are_errors() {
        assert!(Args::try_parse_from(["sluice-sim", "--dialect", "gemini"]).is_err());
        assert!(Args::try_parse_from(["sluice-sim", "--rpm", "-1"]).is_err());
        let args = Args::try_parse_from(["sluice-sim", "--window-scale", "0"]).unwrap();
        assert!(args.into_config().is_err());
        let args = Args::try_parse_from(["sluice-sim", "--rpm", "0"]).unwrap();
        assert!(args.into_config().is_err());
    }

    #[test]
    fn announcing_flags() {
        let c = parse(&["--rpm", "10"]);
        assert!(c.models[0].announce.rate_limit_headers);
        assert!(c.models[0].announce.retry_after);
        let c = parse(&["--rpm", "10", "--no-rate-limit-headers", "--no-retry-after"]);
        assert!(!c.models[0].announce.rate_limit_headers);
        assert!(!c.models[0].announce.retry_after);
    }
}

//! `sluice config check FILE…`: loads each file exactly as the binaries do (environment,
//! `${file:…}` secrets, validation, the quota catalog, the exposure checks of the gateway
//! and the sidecar) and prints the effective limits of every model on every account.

use std::path::Path;

use serde::Serialize;
use sluice_config::{Config, LimitUnit, ProcessEnv};

/// Why a file does not pass: the message the gateway would refuse to start with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CheckError {
    /// It does not load or validate.
    #[error("{0}")]
    Config(#[from] sluice_config::ConfigError),
    /// Its quotas cannot be built.
    #[error("{0}")]
    Catalog(#[from] sluice_recalibrate::CatalogError),
    /// The gateway would refuse to serve it on its listen address.
    #[error("the gateway would refuse to start: {0}")]
    GatewayExposure(sluice_config::ConfigError),
    /// The sidecar would refuse to serve it on its listen address.
    #[error("the sidecar would refuse to start: {0}")]
    SidecarExposure(sluice_config::ConfigError),
}

/// A file that passed: what it configures.
#[derive(Debug, Serialize)]
pub(crate) struct Checked {
    pub(crate) file: String,
    /// The SHA-256 of its bytes (what `/v1/quotas` shows as `config_sha256`).
    pub(crate) sha256: String,
    pub(crate) models: Vec<ModelLimits>,
    /// Key paths of secrets written out in the file (the binaries warn about them).
    pub(crate) secrets_in_file: Vec<String>,
}

/// One model: its limits, which every one of its accounts has.
#[derive(Debug, Serialize)]
pub(crate) struct ModelLimits {
    pub(crate) model: String,
    pub(crate) upstream: String,
    pub(crate) upstream_model: String,
    /// The quota its windows are kept under (the model's name unless shared).
    pub(crate) quota: String,
    /// The preset its figures came from, when it used one.
    pub(crate) preset: Option<&'static str>,
    pub(crate) accounts: Vec<String>,
    pub(crate) limits: Vec<Limit>,
    pub(crate) fallback: Vec<String>,
}

/// One limit as configured.
#[derive(Debug, Serialize)]
pub(crate) struct Limit {
    /// `requests`, `tokens`, `input_tokens` or `output_tokens`.
    pub(crate) unit: &'static str,
    pub(crate) amount: u64,
    pub(crate) per_ms: u64,
}

impl Limit {
    /// `100 requests/60s`.
    pub(crate) fn text(&self) -> String {
        format!("{} {}/{}", self.amount, self.unit, window_text(self.per_ms))
    }
}

/// `60s`, `1m30s`, `250ms`, `24h`.
pub(crate) fn window_text(ms: u64) -> String {
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match s {
        s if s % 3600 == 0 && s >= 3600 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 && s < 3600 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

pub(crate) fn unit_name(u: LimitUnit) -> &'static str {
    match u {
        LimitUnit::Requests => "requests",
        LimitUnit::Tokens => "tokens",
        LimitUnit::InputTokens => "input_tokens",
        LimitUnit::OutputTokens => "output_tokens",
    }
}

/// Checks one file with the process's environment.
pub(crate) fn check(path: &Path) -> Result<Checked, CheckError> {
    let (config, sha256) = sluice_config::load_with_digest(path, &[], &ProcessEnv)?;
    sluice_recalibrate::Catalog::new(&config)?;
    config
        .check_exposure()
        .map_err(CheckError::GatewayExposure)?;
    config
        .check_sidecar_exposure()
        .map_err(CheckError::SidecarExposure)?;
    Ok(summarise(path, sha256, &config))
}

fn summarise(path: &Path, sha256: String, config: &Config) -> Checked {
    let models = config
        .models
        .iter()
        .map(|m| ModelLimits {
            model: m.name.clone(),
            upstream: m.upstream.clone(),
            upstream_model: m.upstream_model.clone(),
            quota: m.quota.clone(),
            preset: m.preset,
            accounts: config.upstreams[m.upstream_index]
                .accounts
                .iter()
                .map(|a| a.name.clone())
                .collect(),
            limits: m
                .limits
                .iter()
                .map(|l| Limit {
                    unit: unit_name(l.unit),
                    amount: l.amount.get(),
                    per_ms: l.per.as_millis() as u64,
                })
                .collect(),
            fallback: m.fallback.clone(),
        })
        .collect();
    Checked {
        file: path.display().to_string(),
        sha256,
        models,
        secrets_in_file: config.secrets_in_file.clone(),
    }
}

/// The human report: a line for the file, then one row per model × account.
pub(crate) fn render(c: &Checked) -> String {
    let mut table = crate::table::Table::new(&["model", "upstream", "account", "limits", "notes"]);
    for m in &c.models {
        let mut notes = Vec::new();
        if m.quota != m.model {
            notes.push(format!("quota {}", m.quota));
        }
        if let Some(p) = m.preset {
            notes.push(format!("preset {p}"));
        }
        if !m.fallback.is_empty() {
            notes.push(format!("fallback {}", m.fallback.join(", ")));
        }
        let limits: Vec<String> = m.limits.iter().map(Limit::text).collect();
        for a in &m.accounts {
            table.row(vec![
                m.model.clone().into(),
                m.upstream.clone().into(),
                a.clone().into(),
                limits.join(", ").into(),
                notes.join("; ").into(),
            ]);
        }
    }
    let mut out = format!(
        "{}: ok (sha256 {}, {} models)\n",
        c.file,
        c.sha256,
        c.models.len()
    );
    out.push_str(&table.render());
    for s in &c.secrets_in_file {
        out.push_str(&format!(
            "warning: {s}: a secret is written in the file (use ${{VAR}}, ${{file:…}} or key_sha256)\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_read_as_written() {
        assert_eq!(window_text(60_000), "1m");
        assert_eq!(window_text(1_000), "1s");
        assert_eq!(window_text(90_000), "90s");
        assert_eq!(window_text(86_400_000), "24h");
        assert_eq!(window_text(250), "250ms");
    }
}

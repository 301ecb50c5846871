//! [`report`]: the `GET /v1/quotas` view — per model and account, the configured and
//! effective limits, recent usage, cooldown, pacing and state. Served by the gateway
//! and the sidecar alike.

use serde::Serialize;
use sluice_limiter::Store;

use crate::catalog::Catalog;

/// One limit of one account.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LimitReport {
    /// The limit id (`r60605`: requests per 60.605 s, the window with its latency allowance).
    pub id: String,
    /// `requests`, `tokens`, `input_tokens` or `output_tokens`.
    pub unit: &'static str,
    /// The window in milliseconds.
    pub window_ms: u64,
    /// As configured.
    pub configured: u64,
    /// In force (learned, never above the configured limit).
    pub effective: u64,
    /// What the trailing window holds now, queued reservations included.
    pub used: u64,
    /// The learner's evidence for this limit (rule 5, no rate-limit headers), where the
    /// process serving the view applies the observations (the sidecar) and has some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub learned: Option<LearnedReport>,
}

/// What the learner observed of one limit (see `docs/sidecar.md`, rule 5).
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct LearnedReport {
    /// The fill of our window at the provider's last refusal (an upper bound of its real
    /// limit); `None` once a success above it refuted it.
    pub estimate: Option<u64>,
    /// Refusals at a similar fill since the estimate was set.
    pub confirmations: u32,
    /// How long ago the estimate was last set, confirmed or refuted, in milliseconds.
    pub evidence_age_ms: u64,
}

/// One account of one model.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AccountReport {
    /// `key-<i>`.
    pub account: String,
    /// `active`, `cooldown`, `disabled`, or `unknown` (the store did not answer).
    pub state: &'static str,
    /// Why the account is out of rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Cooldown left, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown_ms: Option<u64>,
    /// Pacing slow-down in thousandths (1000 = as configured).
    pub pacing_permille: u32,
    /// How far ahead slots are booked, in milliseconds.
    pub booked_ahead_ms: u64,
    /// Each limit.
    pub limits: Vec<LimitReport>,
    /// The store's error, when it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One model.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ModelReport {
    /// What clients call it.
    pub model: String,
    /// The upstream.
    pub upstream: String,
    /// The name sent upstream.
    pub upstream_model: String,
    /// Its accounts.
    pub accounts: Vec<AccountReport>,
}

/// The whole view.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct QuotasReport {
    /// Every model, in configuration order.
    pub models: Vec<ModelReport>,
}

impl QuotasReport {
    /// Drops the details meant for operators only: why an account is out of rotation
    /// (it may quote the provider) and the store's errors. The state stays.
    pub fn redact_details(&mut self) {
        for account in self.models.iter_mut().flat_map(|m| m.accounts.iter_mut()) {
            account.disabled_reason = None;
            account.error = None;
        }
    }

    /// Publishes the view as gauges labelled `model`, `account` (`key-<i>`) and `limit`
    /// (the limit id): `sluice_configured_limit` and `sluice_window_used` (what the
    /// trailing window holds, queued reservations included), for dashboards that plot
    /// usage against the limit.
    pub fn export_gauges(&self) {
        for m in &self.models {
            for a in &m.accounts {
                for l in &a.limits {
                    let labels = [
                        ("model", m.model.clone()),
                        ("account", a.account.clone()),
                        ("limit", l.id.clone()),
                    ];
                    metrics::gauge!("sluice_configured_limit", &labels).set(l.configured as f64);
                    metrics::gauge!("sluice_window_used", &labels).set(l.used as f64);
                }
            }
        }
    }
}

/// Reads every account of `catalog` from `store`.
pub async fn report<S: Store>(catalog: &Catalog, store: &S) -> QuotasReport {
    let mut models = Vec::with_capacity(catalog.models.len());
    for m in &catalog.models {
        let mut accounts = Vec::with_capacity(m.keys.len());
        for key in &m.keys {
            accounts.push(match store.status(key, &m.quota).await {
                Ok(s) => AccountReport {
                    account: key.name().to_owned(),
                    state: if s.disabled.is_some() {
                        "disabled"
                    } else if s.cooldown.is_some() {
                        "cooldown"
                    } else {
                        "active"
                    },
                    disabled_reason: s.disabled,
                    cooldown_ms: s.cooldown.map(|d| d.as_millis() as u64),
                    pacing_permille: s.pacing_permille,
                    booked_ahead_ms: s.booked_ahead.as_millis() as u64,
                    limits: s
                        .limits
                        .into_iter()
                        .map(|l| LimitReport {
                            id: l.limit.to_string(),
                            unit: l.unit.as_str(),
                            window_ms: l.window.length().as_millis() as u64,
                            configured: l.configured,
                            effective: l.effective,
                            used: l.used,
                            learned: None,
                        })
                        .collect(),
                    error: None,
                },
                Err(e) => AccountReport {
                    account: key.name().to_owned(),
                    state: "unknown",
                    disabled_reason: None,
                    cooldown_ms: None,
                    pacing_permille: 1000,
                    booked_ahead_ms: 0,
                    limits: Vec::new(),
                    error: Some(e.to_string()),
                },
            });
        }
        models.push(ModelReport {
            model: m.name.clone(),
            upstream: m.upstream.clone(),
            upstream_model: m.upstream_model.clone(),
            accounts,
        });
    }
    QuotasReport { models }
}

//! [`Gateway`]: everything a request needs, built once from the configuration —
//! the limiter, the upstream client, each model's quota, accounts, gate and learner.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::HeaderValue;
use sha2::{Digest, Sha256};
use sluice_config::{Config, Dialect, FailurePolicy, LimitUnit, Model, PacingMode};
use sluice_limiter::{
    Limit, Limiter, OnError, Pacing, Quota, QuotaKey, RedisOptions, Unit, Window,
};
use sluice_provider::Provider;
use subtle::ConstantTimeEq;

use crate::error::StartError;
use crate::estimate::Learner;
use crate::fair::FairGate;

/// One upstream account: its label and its pre-built auth header.
pub(crate) struct Account {
    pub(crate) name: String,
    pub(crate) auth: (http::HeaderName, HeaderValue),
}

/// A model as the gateway serves it.
pub(crate) struct ModelState {
    pub(crate) cfg: Model,
    pub(crate) quota: Quota,
    pub(crate) keys: Vec<QuotaKey>,
    pub(crate) accounts: Vec<Account>,
    pub(crate) provider: Provider,
    /// Base URL with `{model}` filled in.
    pub(crate) base_url: String,
    pub(crate) api_version: Option<String>,
    pub(crate) chain: Vec<usize>,
    pub(crate) learner: Learner,
    pub(crate) gate: Arc<FairGate>,
    /// How far ahead the last grant was booked, in microseconds (for honest Retry-After
    /// when a request times out at the gate).
    pub(crate) booked_ahead_us: AtomicU64,
    pub(crate) model_header: HeaderValue,
}

impl ModelState {
    pub(crate) fn booked_ahead(&self) -> Duration {
        Duration::from_micros(self.booked_ahead_us.load(Ordering::Relaxed))
    }
}

/// A tenant: its name, weight, deadline and key digest.
pub(crate) struct TenantState {
    pub(crate) name: String,
    pub(crate) weight: u32,
    pub(crate) max_wait: Option<Duration>,
    digest: [u8; 32],
}

/// The gateway: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) limiter: Limiter,
    pub(crate) client: reqwest::Client,
    pub(crate) models: Vec<ModelState>,
    pub(crate) by_name: HashMap<String, usize>,
    pub(crate) tenants: Vec<TenantState>,
    pub(crate) metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

fn unit(u: LimitUnit) -> Unit {
    match u {
        LimitUnit::Requests => Unit::Requests,
        LimitUnit::Tokens => Unit::Tokens,
        LimitUnit::InputTokens => Unit::InputTokens,
        LimitUnit::OutputTokens => Unit::OutputTokens,
    }
}

/// A window lengthened by 1% (whole milliseconds): the latency allowance. A slot is
/// granted on the store's clock but the provider counts the request when it arrives,
/// a variable network and scheduling delay later; holding each charge 1% longer than
/// the provider does keeps a late arrival from overlapping the next window's first
/// request, at the price of 1% of the limit.
fn with_allowance(per: Duration) -> Duration {
    per + Duration::from_millis((per.as_millis() / 100) as u64)
}

fn quota(model: &Model) -> Result<Quota, StartError> {
    let err = |source| StartError::Quota {
        model: model.name.clone(),
        source,
    };
    let limits = model
        .limits
        .iter()
        .map(|l| {
            Ok(Limit::new(
                unit(l.unit),
                NonZeroU64::from(l.amount),
                Window::new(with_allowance(l.per)).map_err(err)?,
            ))
        })
        .collect::<Result<Vec<_>, StartError>>()?;
    let pacing = match model.pacing {
        PacingMode::Auto => Pacing::Auto,
        PacingMode::Off => Pacing::Off,
    };
    Quota::new(limits)
        .and_then(|q| q.with_pacing(pacing))
        .map_err(err)
}

fn provider(d: Dialect) -> Provider {
    match d {
        Dialect::Openai => Provider::OpenAi,
        Dialect::Dashscope => Provider::DashScope,
        Dialect::Azure => Provider::Azure,
        Dialect::Anthropic => Provider::Anthropic,
    }
}

impl Gateway {
    /// Builds the gateway from a validated configuration: connects nothing yet (Redis
    /// is reached lazily), but checks every quota.
    pub fn new(config: Config) -> Result<Self, StartError> {
        let limiter = match &config.store {
            None => Limiter::embedded(),
            Some(s) => Limiter::redis(
                s.redis_url.expose(),
                RedisOptions {
                    timeout: s.timeout,
                    connections: s.connections.get() as usize,
                    key_prefix: s.key_prefix.clone(),
                    ..RedisOptions::default()
                },
                match s.on_error {
                    FailurePolicy::FailClosed => OnError::FailClosed,
                    FailurePolicy::FailOpen => OnError::FailOpen,
                    FailurePolicy::Local => OnError::Local,
                },
                s.expected_replicas.get(),
            )?,
        };
        let client = reqwest::Client::builder()
            .timeout(config.server.upstream_timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(1024)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()?;
        let by_name: HashMap<String, usize> = config
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), i))
            .collect();
        let tenant_count = config.tenants.len().max(1);
        let mut models = Vec::with_capacity(config.models.len());
        for m in &config.models {
            let up = &config.upstreams[m.upstream_index];
            let group = format!("{}/{}", up.name, m.name);
            let keys = (0..up.keys.len())
                .map(|i| QuotaKey::new(group.clone(), format!("key-{i}")))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| StartError::Quota {
                    model: m.name.clone(),
                    source,
                })?;
            let accounts = up
                .keys
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let (name, value) = match up.dialect {
                        Dialect::Azure => (
                            http::HeaderName::from_static("api-key"),
                            k.expose().to_owned(),
                        ),
                        Dialect::Anthropic => (
                            http::HeaderName::from_static("x-api-key"),
                            k.expose().to_owned(),
                        ),
                        _ => (
                            http::header::AUTHORIZATION,
                            format!("Bearer {}", k.expose()),
                        ),
                    };
                    let mut value = HeaderValue::from_str(&value)
                        .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
                    value.set_sensitive(true);
                    Account {
                        name: format!("key-{i}"),
                        auth: (name, value),
                    }
                })
                .collect();
            let mut chain = vec![by_name[&m.name]];
            chain.extend(m.fallback.iter().filter_map(|f| by_name.get(f).copied()));
            models.push(ModelState {
                quota: quota(m)?,
                keys,
                accounts,
                provider: provider(up.dialect),
                base_url: up.base_url.replace("{model}", &m.upstream_model),
                api_version: up.api_version.clone(),
                chain,
                learner: Learner::new(),
                gate: FairGate::new(config.queue.booked_ahead.get() as usize, tenant_count),
                booked_ahead_us: AtomicU64::new(0),
                model_header: HeaderValue::from_str(&m.name)
                    .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
                cfg: m.clone(),
            });
        }
        let tenants = config
            .tenants
            .iter()
            .map(|t| TenantState {
                name: t.name.clone(),
                weight: t.weight.get(),
                max_wait: t.max_wait,
                digest: Sha256::digest(t.key.expose().as_bytes()).into(),
            })
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                limiter,
                client,
                models,
                by_name,
                tenants,
                metrics: crate::telemetry::handle(),
                config,
            }),
        })
    }

    /// The configuration it runs.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// True when the limits are shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.inner.limiter.is_shared()
    }
}

impl Inner {
    /// The tenant a bearer token belongs to, compared in constant time over SHA-256
    /// digests; `Some(0)` for anyone when no tenants are configured.
    pub(crate) fn tenant(&self, token: Option<&str>) -> Option<usize> {
        if self.tenants.is_empty() {
            return Some(0);
        }
        let digest: [u8; 32] = Sha256::digest(token?.as_bytes()).into();
        let mut found = None;
        for (i, t) in self.tenants.iter().enumerate() {
            if bool::from(t.digest.ct_eq(&digest)) {
                found = Some(i);
            }
        }
        found
    }

    pub(crate) fn tenant_name(&self, i: usize) -> &str {
        self.tenants.get(i).map_or("default", |t| t.name.as_str())
    }
}

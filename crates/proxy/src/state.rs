//! [`Gateway`]: everything a request needs, built once from the configuration —
//! the limiter, the upstream client, each model's quota, accounts, gate and learner.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use sluice_config::{Config, Dialect, FailurePolicy, KeyDigest, Model, TenantPriority};
use sluice_limiter::{Limiter, OnError, Priority, Quota, QuotaKey, RedisOptions, Share};
use sluice_provider::Provider;
use sluice_recalibrate::{Catalog, CatalogError, Recalibrator, Tuning};

use crate::error::StartError;
use crate::fair::FairGate;
use crate::learner::Learner;

/// One upstream account: its label and the pre-built auth header of each of its keys.
/// The limiter decides per account; its keys take turns at sending.
pub(crate) struct Account {
    pub(crate) name: String,
    auths: Vec<(http::HeaderName, HeaderValue)>,
    next: AtomicUsize,
}

impl Account {
    /// The auth header to send with now: the account's keys in turn.
    pub(crate) fn auth(&self) -> &(http::HeaderName, HeaderValue) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.auths.len();
        &self.auths[i]
    }
}

/// A model as the gateway serves it.
pub(crate) struct ModelState {
    pub(crate) cfg: Model,
    pub(crate) quota: Quota,
    pub(crate) keys: Vec<QuotaKey>,
    /// The order each acquire lists the accounts in, from a rotating start.
    pub(crate) rotation: Rotation,
    pub(crate) accounts: Vec<Account>,
    pub(crate) provider: Provider,
    /// Base URL with `{model}` filled in.
    pub(crate) base_url: String,
    pub(crate) api_version: Option<String>,
    /// The metered APIs' URLs on `base_url`, parsed once.
    pub(crate) metered_urls: crate::upstream::MeteredUrls,
    /// The request path's metric handles.
    pub(crate) meters: crate::meters::ModelMeters,
    pub(crate) chain: Vec<usize>,
    /// Kept across reloads while the model keeps its name.
    pub(crate) learner: Arc<Learner>,
    /// Kept across reloads while the model, `queue.booked_ahead` and the tenant count
    /// stay the same, so queued requests keep their places.
    pub(crate) gate: Arc<FairGate>,
    /// How far ahead the last grant was booked, in microseconds (for honest Retry-After
    /// when a request times out at the gate).
    pub(crate) booked_ahead_us: AtomicU64,
    pub(crate) model_header: HeaderValue,
    /// When a success was last sampled as an observation, per account (ms).
    pub(crate) sampled_ms: Vec<AtomicU64>,
}

/// A model's accounts listed twice over, so that each acquire can name them all from a
/// rotating start without a copy. The limiter examines candidates in order and stops at
/// the first that serves now with room to spare, so the start spreads the requests
/// across the accounts (and one far from full is all a decision examines).
pub(crate) struct Rotation {
    twice: Vec<QuotaKey>,
    next: AtomicUsize,
}

impl Rotation {
    pub(crate) fn new(keys: &[QuotaKey]) -> Self {
        Self {
            twice: keys.iter().chain(keys).cloned().collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next start and every account from it, in order.
    pub(crate) fn next(&self) -> (usize, &[QuotaKey]) {
        let n = self.twice.len() / 2;
        if n <= 1 {
            return (0, &self.twice[..n]);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (start, &self.twice[start..start + n])
    }

    /// The index into the model's accounts of candidate `c` of a list from `start`.
    pub(crate) fn account(&self, start: usize, c: usize) -> usize {
        let n = (self.twice.len() / 2).max(1);
        (start + c) % n
    }
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
    /// Its fair share of each quota's queue across the fleet (none with a single
    /// tenant: there is nobody to share with).
    pub(crate) share: Option<Share>,
    /// Its own limits and budgets, if it has any.
    pub(crate) limits: Option<crate::tenant_limits::TenantLimits>,
    key: KeyDigest,
}

/// The gateway: cheap to clone, shared by every request.
///
/// A `Gateway` is a *snapshot*: the rules of one configuration (`inner`), plus the live
/// cell a reload swaps ([`Gateway::current`] takes a fresh snapshot). Each request
/// takes one snapshot when it arrives and keeps it to the end, so in-flight and queued
/// requests finish under the rules they started with (`crate::reload`).
#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<Inner>,
    pub(crate) live: Arc<LiveCell>,
}

/// The configuration in force, swapped whole by a reload.
pub(crate) struct LiveCell {
    pub(crate) current: parking_lot::RwLock<Arc<Inner>>,
    /// Serialises reloads (a SIGHUP during a reload waits for it).
    pub(crate) reloading: tokio::sync::Mutex<()>,
    /// The last refusals, for the status page (kept across reloads).
    pub(crate) refusals: crate::refusals::RecentRefusals,
    /// The configuration file as last loaded and its hash: what run-time changes apply to.
    pub(crate) file: parking_lot::Mutex<(Config, String)>,
    /// The run-time changes in force (`crate::overrides`).
    pub(crate) overrides: parking_lot::Mutex<crate::overrides::Overrides>,
    /// Where run-time changes are kept (Redis, shared by every replica; or this process).
    pub(crate) store: crate::override_store::OverrideStore,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    /// The SHA-256 of the configuration file's bytes as loaded (hex), or of the text
    /// given to [`Gateway::new`]'s caller; shown in `/v1/quotas` and `sluice_config_info`.
    pub(crate) config_hash: String,
    /// Survives every reload: the embedded store's windows live in it.
    pub(crate) limiter: Arc<Limiter>,
    pub(crate) client: reqwest::Client,
    pub(crate) models: Vec<ModelState>,
    pub(crate) by_name: HashMap<String, usize>,
    pub(crate) tenants: Vec<TenantState>,
    pub(crate) metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) recalibrator: Arc<Recalibrator>,
    pub(crate) observer: Option<Arc<crate::observe::Observer>>,
    /// The digest of `[sidecar] admin_key`, when set.
    pub(crate) admin_digest: Option<KeyDigest>,
    /// Tenants revoked at run time: configured, but their keys authenticate no one.
    pub(crate) revoked: std::collections::HashSet<String>,
    /// The version of the run-time changes applied (0: none).
    pub(crate) overrides_version: u64,
}

impl Gateway {
    /// Builds the gateway from a validated configuration: connects nothing yet (Redis
    /// is reached lazily), but checks every quota. Its configuration hash is that of
    /// the configuration's debug form; binaries that load a file use
    /// [`with_hash`](Self::with_hash) to show the file's own hash.
    pub fn new(config: Config) -> Result<Self, StartError> {
        let hash = crate::reload::hash_of(format!("{config:?}").as_bytes());
        Self::with_hash(config, hash)
    }

    /// Builds the gateway (see [`new`](Self::new)) with `config_hash`, the SHA-256 (hex)
    /// of the file it was loaded from ([`crate::ConfigSource`]).
    pub fn with_hash(config: Config, config_hash: String) -> Result<Self, StartError> {
        let limiter = Arc::new(limiter_for(&config)?);
        let client = upstream_client(&config)?;
        // Observations need a runtime for their writer task; without one (a gateway
        // built outside tokio, e.g. in a unit test) nothing is observed.
        let runtime = tokio::runtime::Handle::try_current().ok();
        let mut local_rx = None;
        let observer = match (&runtime, &config.store) {
            (None, _) => None,
            (Some(_), Some(store)) => Some(Arc::new(crate::observe::Observer::redis(
                store.redis_url.expose().to_owned(),
                config.sidecar.sample_per_second,
            ))),
            (Some(_), None) => {
                let (o, rx) = crate::observe::Observer::local(config.sidecar.sample_per_second);
                local_rx = Some(rx);
                Some(Arc::new(o))
            }
        };
        warn_secrets_in_file(&config);
        let kept = Kept {
            limiter,
            client,
            observer,
            metrics: crate::telemetry::handle(),
        };
        let store = crate::override_store::OverrideStore::for_config(&config);
        let file = (config.clone(), config_hash.clone());
        let inner = Arc::new(Inner::build(
            config,
            config_hash,
            kept,
            None,
            &crate::overrides::Overrides::default(),
        )?);
        crate::reload::publish_config_info(None, &inner.config_hash);
        let live = Arc::new(LiveCell {
            current: parking_lot::RwLock::new(inner.clone()),
            reloading: tokio::sync::Mutex::new(()),
            refusals: crate::refusals::RecentRefusals::default(),
            file: parking_lot::Mutex::new(file),
            overrides: parking_lot::Mutex::new(crate::overrides::Overrides::default()),
            store,
        });
        if let Some(rt) = &runtime {
            rt.spawn(crate::override_store::follow(Arc::downgrade(&live)));
        }
        if let (Some(rt), Some(rx)) = (runtime, local_rx) {
            rt.spawn(crate::observe::run_local(Arc::downgrade(&live), rx));
        }
        Ok(Self { inner, live })
    }

    /// A snapshot of the configuration in force now (after any reload). Requests take
    /// one when they arrive; loops (the sidecar's) take one per round.
    pub fn current(&self) -> Gateway {
        Gateway {
            inner: self.live.current.read().clone(),
            live: self.live.clone(),
        }
    }

    /// Reads the run-time changes from the shared store now and applies them (bounded
    /// by 2 s; on failure the file's rules stay and the poll loop keeps trying). The
    /// servers call it before accepting, so that a replica never serves a request
    /// under rules the fleet has changed (a revoked tenant key, a lowered limit).
    pub async fn apply_shared_changes(&self) {
        if !self.live.store.is_shared() {
            return;
        }
        if tokio::time::timeout(Duration::from_secs(2), crate::admin::refresh(self))
            .await
            .is_err()
        {
            tracing::warn!("run-time changes not read before serving; the poll keeps trying");
        }
    }

    /// The SHA-256 (hex) of the configuration this snapshot runs.
    pub fn config_hash(&self) -> &str {
        &self.inner.config_hash
    }

    /// The configuration it runs.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// True when the limits are shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.inner.limiter.is_shared()
    }

    /// The limiter every decision goes through (shared with the sidecar's loop).
    pub fn limiter(&self) -> &Limiter {
        &self.inner.limiter
    }

    /// The configured models as quotas and quota keys.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.inner.catalog
    }

    /// The recalibrator this gateway (embedded) or sidecar (shared) applies observations with.
    pub fn recalibrator(&self) -> &Arc<Recalibrator> {
        &self.inner.recalibrator
    }

    /// The Prometheus exposition of this process's metrics, if the recorder is ours.
    pub fn render_metrics(&self) -> Option<String> {
        self.inner.metrics.as_ref().map(|h| h.render())
    }

    /// True when `token` is the configured admin key (constant time over SHA-256
    /// digests); always false when no admin key is configured.
    pub fn is_admin(&self, token: Option<&str>) -> bool {
        let (Some(want), Some(token)) = (&self.inner.admin_digest, token) else {
            return false;
        };
        want.matches(&KeyDigest::of(token))
    }

    /// The name of the tenant a bearer token belongs to (constant time over SHA-256
    /// digests): `Some("default")` for anyone when no `[[tenants]]` are configured,
    /// `None` for a missing or unknown key. The sidecar authenticates its own routes
    /// with it.
    pub fn tenant_for(&self, token: Option<&str>) -> Option<&str> {
        self.inner.tenant(token).map(|i| self.inner.tenant_name(i))
    }

    /// Sends one minimal request (`max_tokens: 1`) on `account` of `model` through the
    /// gateway's upstream client, bypassing the limiter, and records it as usage:
    /// the probe of a disabled account. Returns the upstream status and body.
    pub async fn probe(&self, model: &str, account: &str) -> Option<(u16, HeaderMap, Vec<u8>)> {
        let inner = &*self.inner;
        let m = &inner.models[*inner.by_name.get(model)?];
        let i = m.accounts.iter().position(|a| a.name == account)?;
        let a = &m.accounts[i];
        let (path, body) = crate::upstream::probe(m);
        let url = crate::upstream::url(m, path, None);
        let resp = crate::upstream::request(
            &inner.client,
            http::Method::POST,
            url,
            m,
            a,
            HeaderMap::new(),
        )
        .json(&body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .ok()?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.ok()?.to_vec();
        use sluice_limiter::Store;
        let _ = inner
            .limiter
            .record_usage(&m.keys[i], &m.quota, sluice_limiter::Cost::request(10, 1))
            .await;
        Some((status, headers, bytes))
    }
}

/// The header that carries `key` in `dialect`, marked sensitive (never logged).
fn auth_header(dialect: Dialect, key: &sluice_config::Secret) -> (http::HeaderName, HeaderValue) {
    let (name, value) = match dialect {
        Dialect::Azure => (
            http::HeaderName::from_static("api-key"),
            key.expose().to_owned(),
        ),
        Dialect::Anthropic => (
            http::HeaderName::from_static("x-api-key"),
            key.expose().to_owned(),
        ),
        _ => (
            http::header::AUTHORIZATION,
            format!("Bearer {}", key.expose()),
        ),
    };
    let mut value =
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    value.set_sensitive(true);
    (name, value)
}

/// What a reload hands from the old configuration to the new one unchanged.
pub(crate) struct Kept {
    pub(crate) limiter: Arc<Limiter>,
    pub(crate) client: reqwest::Client,
    pub(crate) observer: Option<Arc<crate::observe::Observer>>,
    pub(crate) metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// The upstream HTTP client. `upstream_timeout` bounds each silence of the upstream
/// (before the answer's headers, and between two reads of its body), not the whole
/// call: a stream that keeps sending may last as long as it needs, a stalled one is cut.
pub(crate) fn upstream_client(config: &Config) -> Result<reqwest::Client, StartError> {
    Ok(reqwest::Client::builder()
        .read_timeout(config.server.upstream_timeout)
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(1024)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        // A provider's redirect is passed to the client, never followed with the
        // account's key (and no redirect policy runs on every request).
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

pub(crate) fn warn_secrets_in_file(config: &Config) {
    for path in &config.secrets_in_file {
        tracing::warn!(
            key = %path,
            "a secret is written in the configuration file: keep it in the environment (\"${{VAR}}\"), a secret file (\"${{file:/run/secrets/...}}\"), or for tenant and admin keys as a digest (key_sha256)"
        );
    }
}

impl Inner {
    /// The rules of `config` (the file's) with the run-time `overrides` on top, over
    /// what `kept` carries; with `previous`, each model that is still configured keeps
    /// its learner, and its fair gate when the gate's shape (`queue.booked_ahead`,
    /// tenant count) is unchanged.
    pub(crate) fn build(
        mut config: Config,
        config_hash: String,
        kept: Kept,
        previous: Option<&Inner>,
        overrides: &crate::overrides::Overrides,
    ) -> Result<Self, StartError> {
        let revoked = overrides.apply(&mut config);
        let by_name: HashMap<String, usize> = config
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), i))
            .collect();
        let catalog = Arc::new(Catalog::new(&config).map_err(|e| match e {
            CatalogError::Quota { model, source } => StartError::Quota { model, source },
            other => StartError::Catalog(other.to_string()),
        })?);
        let models = model_states(&config, &catalog, &by_name, previous);
        let tenants = config
            .tenants
            .iter()
            .map(|t| {
                let limits = crate::tenant_limits::TenantLimits::new(t, &config.models).map_err(
                    |source| StartError::Quota {
                        model: format!("tenant {}", t.name),
                        source,
                    },
                )?;
                Ok(TenantState {
                    name: t.name.clone(),
                    weight: t.weight.get(),
                    max_wait: t.max_wait,
                    share: (config.tenants.len() > 1).then(|| {
                        let priority = match t.priority {
                            TenantPriority::Interactive => Priority::Interactive,
                            TenantPriority::Batch => Priority::Batch,
                        };
                        Share::new(t.name.clone(), t.weight.get(), priority)
                            .with_reserve(config.queue.interactive_reserve)
                    }),
                    limits,
                    key: t.key.clone(),
                })
            })
            .collect::<Result<Vec<_>, StartError>>()?;
        let recalibrator = Arc::new(Recalibrator::new(
            catalog.clone(),
            Tuning::from(&config.sidecar),
        ));
        Ok(Self {
            config_hash,
            limiter: kept.limiter,
            client: kept.client,
            models,
            by_name,
            tenants,
            metrics: kept.metrics,
            catalog,
            recalibrator,
            observer: kept.observer,
            admin_digest: config.sidecar.admin_key.clone(),
            revoked,
            overrides_version: overrides.version,
            config,
        })
    }

    /// The tenant a bearer token belongs to, compared in constant time over SHA-256
    /// digests; `Some(0)` for anyone when no tenants are configured.
    pub(crate) fn tenant(&self, token: Option<&str>) -> Option<usize> {
        if self.tenants.is_empty() {
            return Some(0);
        }
        let digest = KeyDigest::of(token?);
        let mut found = None;
        for (i, t) in self.tenants.iter().enumerate() {
            if t.key.matches(&digest) && !self.revoked.contains(&t.name) {
                found = Some(i);
            }
        }
        found
    }

    pub(crate) fn tenant_name(&self, i: usize) -> &str {
        self.tenants.get(i).map_or("default", |t| t.name.as_str())
    }
}

/// The limiter the configuration asks for: embedded, or Redis with its failure policy.
fn limiter_for(config: &Config) -> Result<Limiter, StartError> {
    let Some(s) = &config.store else {
        return Ok(Limiter::embedded());
    };
    let options = RedisOptions {
        timeout: s.timeout,
        connections: s.connections.get() as usize,
        key_prefix: s.key_prefix.clone(),
        ..RedisOptions::default()
    };
    let on_error = match s.on_error {
        FailurePolicy::FailClosed => OnError::FailClosed,
        FailurePolicy::FailOpen => OnError::FailOpen,
        FailurePolicy::Local => OnError::Local,
    };
    let limiter = Limiter::redis(
        s.redis_url.expose(),
        options,
        on_error,
        s.expected_replicas.get(),
    )?;
    Ok(match s.replica_index {
        Some(i) => limiter.with_replica_index(i),
        None => limiter,
    })
}

/// Each configured model with its quota, accounts (credentials in its dialect's
/// header), fallback chain, fair gate and estimate learner.
fn model_states(
    config: &Config,
    catalog: &Catalog,
    by_name: &HashMap<String, usize>,
    previous: Option<&Inner>,
) -> Vec<ModelState> {
    let tenant_count = config.tenants.len().max(1);
    let booked_ahead = config.queue.booked_ahead.get() as usize;
    let same_gate_shape = previous.is_some_and(|p| {
        p.config.tenants.len().max(1) == tenant_count
            && p.config.queue.booked_ahead.get() as usize == booked_ahead
    });
    let before = |name: &str| previous.and_then(|p| p.by_name.get(name).map(|&i| &p.models[i]));
    let mut models = Vec::with_capacity(config.models.len());
    for (mi, m) in config.models.iter().enumerate() {
        let up = &config.upstreams[m.upstream_index];
        let cm = &catalog.models[mi];
        let keys: Vec<QuotaKey> = cm.keys.clone();
        let accounts = up
            .accounts
            .iter()
            .map(|a| Account {
                name: a.name.clone(),
                auths: a.keys.iter().map(|k| auth_header(up.dialect, k)).collect(),
                next: AtomicUsize::new(0),
            })
            .collect();
        let mut chain = vec![by_name[&m.name]];
        chain.extend(m.fallback.iter().filter_map(|f| by_name.get(f).copied()));
        let base_url = up.base_url.replace("{model}", &m.upstream_model);
        let metered_urls = crate::upstream::MeteredUrls::new(&base_url, up.api_version.as_deref());
        let limits = cm.quota.limits().len();
        models.push(ModelState {
            meters: crate::meters::ModelMeters::new(keys.len(), limits, tenant_count),
            metered_urls,
            quota: cm.quota.clone(),
            sampled_ms: keys.iter().map(|_| AtomicU64::new(0)).collect(),
            rotation: Rotation::new(&keys),
            keys,
            accounts,
            provider: cm.provider,
            base_url,
            api_version: up.api_version.clone(),
            chain,
            learner: before(&m.name)
                .map_or_else(|| Arc::new(Learner::new()), |o| o.learner.clone()),
            gate: match before(&m.name) {
                Some(o) if same_gate_shape => o.gate.clone(),
                _ => FairGate::new(booked_ahead, tenant_count),
            },
            booked_ahead_us: AtomicU64::new(0),
            model_header: HeaderValue::from_str(&m.name)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            cfg: m.clone(),
        });
    }
    models
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_start_lists_every_account_once_and_maps_back() {
        let keys: Vec<QuotaKey> = (0..3)
            .map(|i| QuotaKey::new("m", format!("key-{i}")).unwrap())
            .collect();
        let r = Rotation::new(&keys);
        let mut starts = Vec::new();
        for _ in 0..4 {
            let (start, listed) = r.next();
            starts.push(start);
            assert_eq!(listed.len(), 3);
            for (c, k) in listed.iter().enumerate() {
                assert_eq!(&keys[r.account(start, c)], k);
            }
        }
        assert_eq!(starts, vec![0, 1, 2, 0]);
        let one = Rotation::new(&keys[..1]);
        assert_eq!(one.next(), (0, &keys[..1]));
        assert_eq!(one.next(), (0, &keys[..1]));
    }
}

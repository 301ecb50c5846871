//! A tenant's own limits and money budgets, counted across every replica.
//!
//! A tenant with `rpm`, `tpd`, `limits`, `[[tenants.models]]` or a `budget` has one
//! quota key of its own, `tenant:<name>/limits`, in the same store as the providers'
//! quotas. Each request is charged against it when it is admitted, before the
//! provider's quota is asked, in one atomic `acquire` that checks every one of the
//! tenant's limits (the ones on every model, the ones on the request's model, and the
//! budgets) and writes all or none:
//!
//! ```text
//!   tenant acquire (max wait 0, at now) ──refused──▶ wait for it within the deadline, or 429 naming the tenant's limit
//!        │ granted: a TenantHold
//!        ▼
//!   provider acquire (fair share, queue) ──refused / failed / never sent──▶ the hold is refunded
//!        │ granted, sent, answered
//!        ▼
//!   settle: the hold is reconciled to the actual tokens and their price
//! ```
//!
//! Budgets are [`Unit::Spend`] limits over trailing windows (a day, 30 days), in
//! micro-USD: a request is charged its estimated price (prompt estimate and
//! `max_tokens` at the model's `price`), then the price of what the provider reports.
//!
//! Invariants:
//! - a tenant's windows never hold more than its limits, whichever replicas its
//!   requests reach (the limiter's own guarantee, on the tenant's key);
//! - the provider is never asked for a request the tenant's limits refused;
//! - a request the provider's side refused, or that was never answered, costs the
//!   tenant nothing: its hold is reconciled to zero (until then, a concurrent request
//!   of the same tenant may see the window fuller than it will be: the error is on
//!   the safe side);
//! - the tenant's key is its own Redis Cluster slot: a tenant spans models, and each
//!   model group is a slot of its own, so the two decisions are two scripts.

use std::time::{Duration, Instant};

use sluice_config::{Model, Tenant};
use sluice_limiter::{
    Budget, Cost, Decision, Limit, LimitError, LimitId, Pacing, Quota, QuotaError, QuotaKey,
    RefusalReason, Remaining, Reservation, Store, Unit, Window,
};

use crate::error::{ApiError, RateLimited};
use crate::state::Gateway;

/// One day, the window of `budget.per_day`.
const DAY: Duration = Duration::from_secs(86_400);
/// Thirty days, the window of `budget.per_month`.
const MONTH: Duration = Duration::from_secs(30 * 86_400);

/// The limits of one tenant, as quotas on its own key.
pub(crate) struct TenantLimits {
    key: [QuotaKey; 1],
    /// Every limit of the tenant (on every model, per model, budgets): its status.
    all: Quota,
    /// By model index: what a request of that model is charged against (`None` when
    /// nothing of the tenant's applies to it).
    per_model: Vec<Option<Quota>>,
}

impl TenantLimits {
    /// The limits of `tenant` over `models` (in configuration order); `None` when it
    /// has none.
    pub(crate) fn new(tenant: &Tenant, models: &[Model]) -> Result<Option<Self>, QuotaError> {
        if !tenant.is_limited() {
            return Ok(None);
        }
        let mut everywhere = Vec::new();
        for l in &tenant.limits {
            everywhere.push(limit(l.unit, l.amount.get(), l.per)?);
        }
        for (usd, per) in [
            (tenant.budget.per_day, DAY),
            (tenant.budget.per_month, MONTH),
        ] {
            if let Some(usd) = usd {
                // Validated: above 0 and at most a million USD.
                let micro = (usd * 1e6).round().max(1.0) as u64;
                everywhere.push(Limit::new(
                    Unit::Spend,
                    std::num::NonZeroU64::new(micro).unwrap_or(std::num::NonZeroU64::MIN),
                    Window::new(per)?,
                ));
            }
        }
        let mut all = everywhere.clone();
        let mut per_model = Vec::with_capacity(models.len());
        for m in models {
            let mut limits = everywhere.clone();
            if let Some(own) = tenant.model_limits.iter().find(|x| x.model == m.name) {
                for l in &own.limits {
                    let scoped = limit(l.unit, l.amount.get(), l.per)?.scoped(&scope(&m.name));
                    all.push(scoped.clone());
                    limits.push(scoped);
                }
            }
            per_model.push(if limits.is_empty() {
                None
            } else {
                Some(Quota::new(limits)?.with_pacing(Pacing::Off)?)
            });
        }
        Ok(Some(Self {
            key: [QuotaKey::new(format!("tenant:{}", tenant.name), "limits")?],
            all: Quota::new(all)?.with_pacing(Pacing::Off)?,
            per_model,
        }))
    }

    /// Every limit of the tenant as the whole fleet has used it.
    pub(crate) async fn status(
        &self,
        limiter: &sluice_limiter::Limiter,
    ) -> Result<sluice_limiter::QuotaStatus, LimitError> {
        limiter.status(&self.key[0], &self.all).await
    }

    /// A limit of the tenant in words: `100 requests per 60s`, `tokens per 86400s on
    /// qwen3-max`, `USD 5.00 per day`.
    pub(crate) fn describe(&self, id: &LimitId) -> String {
        let Some(l) = self.all.limits().iter().find(|l| l.id() == id) else {
            return format!("limit {id}");
        };
        let on = id
            .as_str()
            .split_once('/')
            .and_then(|(s, _)| s.strip_prefix("m:"))
            .map(|m| format!(" on {m}"))
            .unwrap_or_default();
        let per = l.window().length();
        if l.unit() == Unit::Spend {
            let span = if per == DAY { "day" } else { "30 days" };
            return format!("budget of USD {} per {span}", usd(l.amount()));
        }
        format!("{} {} per {per:?}{on}", l.amount(), l.unit().as_str())
    }
}

/// Micro-USD as USD: two decimals, or up to six when the cents do not say it all
/// (`5.00`, `0.001`).
fn usd(micro: u64) -> String {
    if micro.is_multiple_of(10_000) {
        return format!("{:.2}", micro as f64 / 1e6);
    }
    let six = format!("{:.6}", micro as f64 / 1e6);
    six.trim_end_matches('0').to_owned()
}

/// The scope of a tenant's limit on one model.
fn scope(model: &str) -> String {
    format!("m:{model}")
}

fn limit(unit: sluice_config::LimitUnit, amount: u64, per: Duration) -> Result<Limit, QuotaError> {
    Ok(Limit::new(
        sluice_recalibrate::unit(unit),
        std::num::NonZeroU64::new(amount).unwrap_or(std::num::NonZeroU64::MIN),
        Window::new(per)?,
    ))
}

/// Why a tenant's request was not admitted by its own limits.
pub(crate) enum TenantRefusal {
    /// A limit is full until after the request's deadline.
    Limited(RateLimited, String),
    /// The request alone is more than a limit holds.
    TooLarge(ApiError),
    /// The store could not decide.
    StoreDown(Duration),
}

/// Charges tenant `ti`'s limits for a request of model `mi` costing `cost` (its price
/// added), waiting while a limit frees up within `deadline`.
pub(crate) async fn charge(
    gw: &Gateway,
    ti: usize,
    mi: usize,
    cost: Cost,
    deadline: Instant,
) -> Result<TenantHold, TenantRefusal> {
    let inner = &gw.inner;
    let Some((limits, quota)) = quota_of(inner, ti, mi) else {
        return Ok(TenantHold::none());
    };
    let tenant = &inner.tenants[ti];
    let model = &inner.models[mi];
    let cost = Cost {
        spend: model
            .cfg
            .price
            .map_or(0, |p| p.micro_usd(cost.input_tokens, 0, cost.output_tokens)),
        ..cost
    };
    loop {
        let decision = inner
            .limiter
            .acquire(&limits.key, quota, cost, Duration::ZERO)
            .await;
        let refusal = match decision {
            Ok(Decision::Granted(res)) => {
                publish(&tenant.name, limits, &res.remaining.describe(quota));
                return Ok(TenantHold {
                    held: Some(Held {
                        gw: gw.clone(),
                        tenant: ti,
                        model: mi,
                        reservation: res,
                    }),
                });
            }
            Ok(Decision::Refused(r)) => r,
            Err(LimitError::InsufficientCapacity {
                limit,
                capacity,
                cost,
            }) => {
                return Err(TenantRefusal::TooLarge(ApiError::TooLarge {
                    model: model.cfg.name.clone(),
                    limit: format!("tenant {}: {}", tenant.name, limits.describe(&limit)),
                    capacity,
                    cost,
                }));
            }
            Err(e) => {
                tracing::error!(error = %e, tenant = %tenant.name, "limiter failed on a tenant's limits");
                return Err(TenantRefusal::StoreDown(Duration::from_secs(1)));
            }
        };
        let bound = match &refusal.reason {
            RefusalReason::Limit(id) => limits.describe(id),
            RefusalReason::Unavailable => {
                return Err(TenantRefusal::StoreDown(
                    refusal.retry_after.unwrap_or(Duration::from_secs(1)),
                ));
            }
            _ => "its limits".to_owned(),
        };
        let wait = refusal
            .retry_after
            .unwrap_or(DAY)
            .max(Duration::from_millis(1));
        if Instant::now() + wait < deadline {
            tokio::time::sleep(wait).await;
            continue;
        }
        let remaining = refusal.remaining.describe(quota);
        publish(&tenant.name, limits, &remaining);
        metrics::counter!("sluice_tenant_refusals_total", "tenant" => tenant.name.clone(), "limit" => bound.clone()).increment(1);
        return Err(TenantRefusal::Limited(
            RateLimited {
                model: model.cfg.name.clone(),
                retry_after: wait,
                what: format!(
                    "tenant {}'s own limit: {bound}; the provider was not asked",
                    tenant.name
                ),
                remaining,
            },
            format!("tenant {}: {bound}", tenant.name),
        ));
    }
}

/// The fleet-wide state a decision saw, as gauges: what is left of each limit of the
/// tenant, and of its budgets in USD.
fn publish(tenant: &str, limits: &TenantLimits, remaining: &[Remaining]) {
    for r in remaining {
        if r.unit == Unit::Spend {
            let window = if r.window.length() == DAY {
                "day"
            } else {
                "month"
            };
            metrics::gauge!("sluice_tenant_budget_remaining_usd", "tenant" => tenant.to_owned(), "window" => window)
                .set(r.remaining as f64 / 1e6);
        } else {
            metrics::gauge!("sluice_tenant_limit_remaining", "tenant" => tenant.to_owned(), "limit" => limits.describe(&r.limit))
                .set(r.remaining as f64);
        }
    }
}

/// Why [`Gateway::charge_tenant`] did not charge a tenant's own limits.
#[derive(Debug)]
#[non_exhaustive]
pub enum TenantRefused {
    /// A limit of the tenant is full until after the deadline.
    Limited {
        /// Which limit, in words (`tenant team-a's own limit: 100 requests per 60s; …`).
        message: String,
        /// When it frees up.
        retry_after: Duration,
    },
    /// The request alone is more than a limit of the tenant holds.
    TooLarge(String),
    /// The store could not decide; try again after this long.
    StoreDown(Duration),
}

/// A charge of a tenant's own limits as an application holds it between the sidecar's
/// `/v1/acquire` and `/v1/report`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantCharge {
    /// The reservation on the tenant's key.
    pub id: u64,
    /// Its slot (µs on the store's clock).
    pub slot_us: u64,
    /// What was charged (`spend` in micro-USD).
    pub cost: Cost,
    /// Whether it was counted by this process alone (the store was away).
    pub local: bool,
}

impl Gateway {
    /// Charges tenant `tenant`'s own limits (and budget, at `model`'s price) for a
    /// request of `model` costing `cost`, waiting within `deadline` for a full limit to
    /// free up: the first step of every request, for callers outside the request path
    /// (the sidecar's `/v1/acquire`). A tenant without limits gets an empty hold.
    pub async fn charge_tenant(
        &self,
        tenant: &str,
        model: &str,
        cost: Cost,
        deadline: Instant,
    ) -> Result<TenantHold, TenantRefused> {
        let inner = &self.inner;
        let (Some(ti), Some(&mi)) = (
            inner.tenants.iter().position(|t| t.name == tenant),
            inner.by_name.get(model),
        ) else {
            return Ok(TenantHold::none());
        };
        charge(self, ti, mi, cost, deadline)
            .await
            .map_err(|refusal| match refusal {
                TenantRefusal::Limited(r, _) => TenantRefused::Limited {
                    message: r.what,
                    retry_after: r.retry_after,
                },
                TenantRefusal::TooLarge(e) => TenantRefused::TooLarge(e.message()),
                TenantRefusal::StoreDown(after) => TenantRefused::StoreDown(after),
            })
    }

    /// Raises `charge` of tenant `tenant` on `model` to what was `used`, where that is
    /// more (never below what was declared: the usage an application reports is its
    /// word, so it may add to what it declared, never take away). `used.spend` is ignored: it is priced here.
    pub async fn raise_tenant_charge(
        &self,
        tenant: &str,
        model: &str,
        charge: &TenantCharge,
        used: Cost,
    ) -> Result<(), LimitError> {
        let inner = &self.inner;
        let (Some(ti), Some(&mi)) = (
            inner.tenants.iter().position(|t| t.name == tenant),
            inner.by_name.get(model),
        ) else {
            return Ok(());
        };
        let Some((limits, quota)) = quota_of(inner, ti, mi) else {
            return Ok(());
        };
        let price = inner.models[mi].cfg.price;
        let reserved = charge.cost;
        let raised = Cost {
            requests: reserved.requests.max(used.requests),
            input_tokens: reserved.input_tokens.max(used.input_tokens),
            output_tokens: reserved.output_tokens.max(used.output_tokens),
            spend: reserved
                .spend
                .max(price.map_or(0, |p| p.micro_usd(used.input_tokens, 0, used.output_tokens))),
        };
        if raised == reserved {
            return Ok(());
        }
        let reservation = Reservation {
            id: sluice_limiter::ReservationId::from_u64(charge.id),
            key: limits.key[0].clone(),
            candidate: 0,
            slot: sluice_limiter::Timestamp::from_micros(charge.slot_us),
            wait: Duration::ZERO,
            cost: reserved,
            remaining: Budget::default(),
            origin: if charge.local {
                sluice_limiter::Origin::Local
            } else {
                sluice_limiter::Origin::Shared
            },
        };
        inner.limiter.reconcile(quota, &reservation, raised).await
    }
}

/// What a request holds of its tenant's limits between admission and its answer.
///
/// [`settle`](Self::settle) replaces the estimate with what the answer used;
/// [`keep`](Self::keep) keeps the estimate (the usage is unknown); the retries of a
/// request on one model share its hold, and [`refund`](Self::refund) gives it back
/// before the request moves on to another model or fails. Dropped without any of them
/// (the client left), it is refunded in the background.
pub struct TenantHold {
    /// `None`: the tenant has no limits on the model (nothing to settle or refund).
    held: Option<Held>,
}

struct Held {
    gw: Gateway,
    tenant: usize,
    model: usize,
    reservation: Reservation,
}

impl TenantHold {
    /// A hold of nothing (the tenant has no limits on the model).
    pub(crate) fn none() -> Self {
        Self { held: None }
    }

    /// Reconciles the hold to what the answer used: `input` tokens as the provider
    /// counts them, billed as `uncached` and `cached` (read from the prompt cache)
    /// input tokens, and `output` tokens, at the model's price.
    pub(crate) fn settle(mut self, input: u64, uncached: u64, cached: u64, output: u64) {
        let Some(held) = self.held.take() else {
            return;
        };
        let price = held.gw.inner.models[held.model].cfg.price;
        let actual = Cost {
            spend: price.map_or(0, |p| p.micro_usd(uncached, cached, output)),
            ..Cost::request(input, output)
        };
        if actual != held.reservation.cost {
            held.in_background(actual);
        }
    }

    /// The charge, handed to an application (no refund when dropped); `None` when the
    /// tenant has no limits on the model.
    pub fn into_charge(mut self) -> Option<TenantCharge> {
        let res = self.held.take()?.reservation;
        Some(TenantCharge {
            id: res.id.as_u64(),
            slot_us: res.slot.as_micros(),
            cost: res.cost,
            local: res.origin == sluice_limiter::Origin::Local,
        })
    }

    /// Gives the charge back now (reconciled to zero), before a fallback model is
    /// charged for the same request.
    pub async fn refund(mut self) {
        if let Some(held) = self.held.take() {
            held.reconcile(Cost::ZERO).await;
        }
    }

    /// Keeps the estimate charged (the request was sent; what it used is unknown).
    pub(crate) fn keep(mut self) {
        self.held = None;
    }
}

impl Held {
    /// Replaces the charge with `actual` (zero: a refund).
    async fn reconcile(self, actual: Cost) {
        let inner = &self.gw.inner;
        let Some((_, quota)) = quota_of(inner, self.tenant, self.model) else {
            return;
        };
        if let Err(e) = inner
            .limiter
            .reconcile(quota, &self.reservation, actual)
            .await
        {
            tracing::warn!(error = %e, tenant = %inner.tenant_name(self.tenant), "reconciling a tenant's limits failed; the charge stands until it ages out");
        }
    }

    /// [`reconcile`](Self::reconcile), off the caller's path.
    fn in_background(self, actual: Cost) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.reconcile(actual));
        }
    }
}

impl Drop for TenantHold {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            held.in_background(Cost::ZERO);
        }
    }
}

/// Tenant `ti`'s limits and the quota a request of model `mi` is charged against, if
/// any of its limits apply to that model.
fn quota_of(inner: &crate::state::Inner, ti: usize, mi: usize) -> Option<(&TenantLimits, &Quota)> {
    let limits = inner.tenants.get(ti)?.limits.as_ref()?;
    Some((limits, limits.per_model.get(mi)?.as_ref()?))
}

/// One tenant's limits in `/v1/quotas` (operators only: it names tenants).
#[derive(serde::Serialize)]
pub(crate) struct TenantView {
    tenant: String,
    limits: Vec<TenantLimitView>,
    /// Why the store could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// One limit of a tenant, as the whole fleet has used it.
#[derive(serde::Serialize)]
struct TenantLimitView {
    /// In words: `100 requests per 60s`, `budget of USD 5.00 per day`.
    limit: String,
    unit: &'static str,
    window_ms: u64,
    /// The limit (micro-USD for a budget).
    limit_amount: u64,
    /// What the trailing window holds now.
    used: u64,
    remaining: u64,
    /// For a budget: the same in USD.
    #[serde(skip_serializing_if = "Option::is_none")]
    used_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining_usd: Option<f64>,
}

/// The view of every limited tenant that `shown` lets through, read from the store.
pub(crate) async fn views(
    inner: &crate::state::Inner,
    shown: impl Fn(usize) -> bool,
) -> Vec<TenantView> {
    let mut out = Vec::new();
    for (i, t) in inner.tenants.iter().enumerate() {
        let Some(limits) = t.limits.as_ref().filter(|_| shown(i)) else {
            continue;
        };
        let mut view = TenantView {
            tenant: t.name.clone(),
            limits: Vec::new(),
            error: None,
        };
        match limits.status(&inner.limiter).await {
            Ok(status) => {
                for l in status.limits {
                    let remaining = l.effective.saturating_sub(l.used);
                    let usd = |v: u64| (l.unit == Unit::Spend).then_some(v as f64 / 1e6);
                    view.limits.push(TenantLimitView {
                        limit: limits.describe(&l.limit),
                        unit: l.unit.as_str(),
                        window_ms: l.window.length().as_millis() as u64,
                        limit_amount: l.effective,
                        used: l.used,
                        remaining,
                        used_usd: usd(l.used),
                        remaining_usd: usd(remaining),
                    });
                }
            }
            Err(e) => view.error = Some(e.to_string()),
        }
        out.push(view);
    }
    out
}

//! [`Recalibrator`]: one observation in, the rules of the crate docs applied through the
//! limiter's API, the [`Applied`] changes out (each logged and counted).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use parking_lot::Mutex;
use sluice_limiter::{
    Clock, Cost, LimitError, LimitId, LimitStatus, QuotaKey, QuotaStatus, StateChange, Store,
    SystemClock, Unit,
};
use sluice_observe::Observation;
use sluice_provider::{
    Budget, Classification, ErrorClass, RateLimitHeaders, ThrottleKind, classify,
    classify_stream_error,
};

use crate::catalog::{Catalog, CatalogModel};
use crate::corroborate::{Corroboration, Verdict, is_last_live};
use crate::learn::{Learner, Refused, Succeeded};
use crate::memory::Memory;
use crate::tuning::Tuning;

/// Pacing changes at most this often per account.
const PACING_HOLD_OFF_MS: u64 = 1000;
/// The pacing factor's bounds, in thousandths.
const PACE_MIN: u32 = 1000;
const PACE_MAX: u32 = 64_000;
/// The time constant of the outside rate's moving average, in windows.
const OUTSIDE_TAU: f64 = 0.5;
/// The outside rate: a sample weighs at most as much as 1/OUTSIDE_STEPS of a window
/// of samples, and the reserve changes at most that often.
const OUTSIDE_STEPS: u64 = 20;
/// The outside rate: the largest change of the reserve at once, a fraction of the limit.
const OUTSIDE_MAX_STEP: f64 = 0.05;
/// The outside rate: the reserve is the mean plus this many upper standard deviations.
const OUTSIDE_MARGIN_SD: f64 = 2.0;
/// The outside rate: a sample widens the margin by at most this fraction of the limit.
const OUTSIDE_MAX_DEVIATION: f64 = 0.1;

/// One change made to an account's shared state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A shared cooldown.
    Cooldown(Duration),
    /// Out of rotation, with the reason.
    Disabled(String),
    /// Back in rotation.
    Enabled,
    /// A learned limit set (`Some`) or forgotten (`None`), and why (`headers`,
    /// `outside_rate`, `learned_refusal`, `learned_probe`).
    EffectiveLimit {
        /// The limit.
        limit: LimitId,
        /// The new effective value, `None` for "as configured".
        value: Option<u64>,
        /// Which rule.
        why: &'static str,
    },
    /// Usage spent outside Sluice, added to our windows.
    UnseenUsage {
        /// The limit the provider reported on.
        limit: LimitId,
        /// How much was added.
        amount: u64,
    },
    /// A new pacing factor, in thousandths.
    Pacing(u32),
}

impl Change {
    /// The metric label (`sluice_recalibrations_total{kind}`).
    pub fn kind(&self) -> &'static str {
        match self {
            Change::Cooldown(_) => "cooldown",
            Change::Disabled(_) => "disable",
            Change::Enabled => "enable",
            Change::EffectiveLimit { why, .. } => why,
            Change::UnseenUsage { .. } => "unseen_usage",
            Change::Pacing(_) => "pacing",
        }
    }
}

/// A change and the account it was made on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The configured model.
    pub model: String,
    /// The account's quota key.
    pub key: QuotaKey,
    /// What changed.
    pub change: Change,
}

/// Applies observations to a store. Cheap to share; its AIMD memory is per process
/// (a sidecar that restarts starts with fresh hold-offs; the learned limits are shared).
pub struct Recalibrator {
    catalog: Arc<Catalog>,
    tuning: Tuning,
    clock: Arc<dyn Clock>,
    memory: Mutex<Memory>,
    corroboration: Corroboration,
}

/// The headers of an observation as a [`HeaderMap`]; names or values that are not
/// valid HTTP are skipped.
pub fn header_map(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(headers.len());
    for (n, v) in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            map.append(n, v);
        }
    }
    map
}

fn ms(t: sluice_limiter::Timestamp) -> u64 {
    t.as_micros() / 1000
}

fn window_ms(l: &LimitStatus) -> u64 {
    (l.window.length().as_millis() as u64).max(1)
}

/// The units a budget of the headers describes, and the cost that charges them.
fn unit_cost(unit: Unit, amount: u64) -> Cost {
    match unit {
        Unit::Requests => Cost {
            requests: amount,
            ..Cost::ZERO
        },
        Unit::OutputTokens => Cost {
            output_tokens: amount,
            ..Cost::ZERO
        },
        _ => Cost {
            input_tokens: amount,
            ..Cost::ZERO
        },
    }
}

fn charges(unit: Unit, cost: &Cost) -> u64 {
    match unit {
        Unit::Requests => cost.requests,
        Unit::Tokens => cost.total_tokens(),
        Unit::InputTokens => cost.input_tokens,
        Unit::OutputTokens => cost.output_tokens,
        _ => 0,
    }
}

/// The limit of `unit` a header budget describes: the only one of its unit, else the
/// one whose configured amount is nearest (by ratio) to the advertised limit, else the
/// longest window.
fn match_limit(status: &QuotaStatus, unit: Unit, advertised: Option<u64>) -> Option<&LimitStatus> {
    let of_unit = status.limits.iter().filter(|l| l.unit == unit);
    match advertised {
        Some(a) if a > 0 => of_unit.min_by(|x, y| {
            let d = |l: &LimitStatus| ((l.configured as f64) / (a as f64)).ln().abs();
            d(x).total_cmp(&d(y))
        }),
        _ => of_unit.max_by_key(|l| l.window),
    }
}

/// How much of `l`'s `used` the provider cannot have seen when it answered: the slots
/// booked ahead of now plus those granted since the answer (`lag_ms` ago). `status`
/// does not split `used` at a point in time, so this is estimated from the paced rate
/// of the tightest request limit (queued slots are that far apart), and for token
/// limits scaled by the average tokens per request in the window.
fn in_flight(status: &QuotaStatus, l: &LimitStatus, lag_ms: u64) -> u64 {
    let Some(interval_ms) = status
        .limits
        .iter()
        .filter(|r| r.unit == Unit::Requests)
        .map(|r| window_ms(r) as f64 / r.effective.max(1) as f64)
        .max_by(f64::total_cmp)
    else {
        return 0;
    };
    let interval_ms = interval_ms * f64::from(status.pacing_permille.max(1000)) / 1000.0;
    let span_ms = status.booked_ahead.as_millis() as f64 + lag_ms as f64;
    let requests = span_ms / interval_ms.max(0.001);
    let per_request = if l.unit == Unit::Requests {
        1.0
    } else {
        let reqs = status
            .limits
            .iter()
            .find(|r| r.unit == Unit::Requests && r.window == l.window)
            .map_or(0, |r| r.used);
        if reqs == 0 {
            0.0
        } else {
            l.used as f64 / reqs as f64
        }
    };
    (requests * per_request) as u64
}

impl Recalibrator {
    /// A recalibrator for `catalog` on the system clock.
    pub fn new(catalog: Arc<Catalog>, tuning: Tuning) -> Self {
        Self::with_clock(catalog, tuning, Arc::new(SystemClock))
    }

    /// A recalibrator on `clock` (tests pass the store's manual clock).
    pub fn with_clock(catalog: Arc<Catalog>, tuning: Tuning, clock: Arc<dyn Clock>) -> Self {
        Self {
            catalog,
            tuning,
            clock,
            memory: Mutex::new(Memory::default()),
            corroboration: Corroboration::default(),
        }
    }

    /// The catalog it works on.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Applies one observation to every account it names. An observation about an
    /// unknown upstream, model or account changes nothing. An error means the store
    /// failed part-way: the caller should not acknowledge it (applying it again is
    /// harmless: every rule reads the state it changes).
    pub async fn apply<S: Store>(
        &self,
        store: &S,
        obs: &Observation,
    ) -> Result<Vec<Applied>, LimitError> {
        let mut out = Vec::new();
        let targets: Vec<(&CatalogModel, &QuotaKey)> = self
            .catalog
            .targets(&obs.upstream, &obs.model, &obs.account)
            .collect();
        if targets.is_empty() {
            metrics::counter!("sluice_observations_ignored_total", "reason" => "unknown_account")
                .increment(1);
            return Ok(out);
        }
        let headers = header_map(&obs.headers);
        let at = UNIX_EPOCH + Duration::from_millis(obs.at_ms);
        let budgets = RateLimitHeaders::parse(&headers, at);
        for (model, key) in targets {
            let error = if obs.status >= 300 {
                Some(classify(
                    obs.status,
                    &headers,
                    obs.body.as_deref().unwrap_or("").as_bytes(),
                    model.provider,
                    at,
                ))
            } else {
                obs.body
                    .as_deref()
                    .and_then(|b| classify_stream_error(b.as_bytes(), model.provider))
            };
            let mut ctx = Ctx {
                store,
                model,
                key,
                status: store.status(key, &model.quota).await?,
                out: &mut out,
            };
            match &error {
                Some(c) => self.refusal(&mut ctx, obs, c, &budgets).await?,
                None if obs.status < 300 => self.success(&mut ctx, obs, &budgets).await?,
                None => {}
            }
            self.headers(&mut ctx, obs, &budgets).await?;
        }
        Ok(out)
    }

    async fn refusal<S: Store>(
        &self,
        ctx: &mut Ctx<'_, S>,
        obs: &Observation,
        c: &Classification,
        budgets: &RateLimitHeaders,
    ) -> Result<(), LimitError> {
        if c.class.disables_account() {
            let reason = format!("{} (HTTP {})", c.class.as_str(), obs.status);
            // Already out (the gateway disables in-band too): keep the first reason.
            if ctx.status.disabled.is_some() {
                return Ok(());
            }
            // Rule 1's corroboration: the last live account of the model goes out only
            // on a second refusal from another answer (witness: the answer's instant).
            let last_live =
                is_last_live(ctx.store, &ctx.model.keys, &ctx.model.quota, ctx.key).await;
            match self
                .corroboration
                .judge(ctx.key, last_live, obs.at_ms, obs.at_ms)
            {
                Verdict::Disable => {
                    ctx.change(
                        StateChange::Disable(reason.clone()),
                        Change::Disabled(reason),
                    )
                    .await?;
                }
                Verdict::Suspect => {
                    metrics::counter!("sluice_accounts_suspected_total", "model" => ctx.model.name.clone(), "account" => ctx.key.name().to_owned(), "reason" => c.class.as_str()).increment(1);
                    tracing::warn!(model = %ctx.model.name, account = %ctx.key.name(), reason = %reason, "last live account suspected, kept in rotation until a second refusal corroborates it");
                    let cooldown = self.tuning.default_cooldown;
                    if cooldown > ctx.status.cooldown.unwrap_or_default() {
                        ctx.change(StateChange::Cooldown(cooldown), Change::Cooldown(cooldown))
                            .await?;
                    }
                }
            }
            return Ok(());
        }
        let ErrorClass::Throttled(kind) = c.class else {
            return Ok(());
        };
        let wait = c.retry_after;
        if kind == ThrottleKind::Daily || wait.is_some_and(|w| w >= self.tuning.quota_state_after) {
            let reason = match wait {
                Some(w) => format!("daily quota: the provider asked to wait {} s", w.as_secs()),
                None => "daily quota: refused until the provider's daily reset".to_owned(),
            };
            if let Some(w) = wait {
                let until = obs.at_ms.saturating_add(w.as_millis() as u64);
                self.memory
                    .lock()
                    .reenable_at_ms
                    .insert(ctx.key.clone(), until);
            }
            if ctx.status.disabled.is_none() {
                ctx.change(
                    StateChange::Disable(reason.clone()),
                    Change::Disabled(reason),
                )
                .await?;
            }
            return Ok(());
        }
        let cooldown = wait.unwrap_or_else(|| {
            crate::catalog::cooldown_without_wait(&ctx.model.quota, self.tuning.default_cooldown)
        });
        let left = ctx.status.cooldown.unwrap_or_default();
        // A cooldown already lasting as long (from the gateway in-band, or an earlier
        // observation) is kept by the store anyway: skip the write.
        if !cooldown.is_zero() && cooldown > left + Duration::from_millis(50) {
            ctx.change(StateChange::Cooldown(cooldown), Change::Cooldown(cooldown))
                .await?;
        }
        if kind == ThrottleKind::Burst {
            let due = {
                let mut mem = self.memory.lock();
                let last = mem.pacing_ms.entry(ctx.key.clone()).or_default();
                let due = obs.at_ms.saturating_sub(*last) >= PACING_HOLD_OFF_MS;
                if due {
                    *last = obs.at_ms;
                }
                due
            };
            if !due {
                return Ok(());
            }
            let now = ctx.status.pacing_permille.max(PACE_MIN);
            let next = ((f64::from(now) * self.tuning.pacing_increase) as u32).min(PACE_MAX);
            if next != now {
                ctx.change(StateChange::PacingFactor(next), Change::Pacing(next))
                    .await?;
            }
            return Ok(());
        }
        if budgets.is_empty() {
            self.learn_refusal(ctx, obs, kind).await?;
        }
        Ok(())
    }

    /// Rule 5 at a refusal: the fill of the limit that refused, observed, becomes the
    /// learned limit (see [`crate::learn`]).
    async fn learn_refusal<S: Store>(
        &self,
        ctx: &mut Ctx<'_, S>,
        obs: &Observation,
        kind: ThrottleKind,
    ) -> Result<(), LimitError> {
        let fits = |u: Unit| match kind {
            ThrottleKind::Requests => u == Unit::Requests,
            ThrottleKind::Tokens => u != Unit::Requests,
            _ => true,
        };
        let lag_ms = ms(self.clock.now()).saturating_sub(obs.at_ms);
        // The refused attempt counts one request in every request window: noted first,
        // so that the fill below leaves it out.
        {
            let mut mem = self.memory.lock();
            for l in ctx
                .status
                .limits
                .iter()
                .filter(|l| l.unit == Unit::Requests)
            {
                mem.learner(ctx.key, &l.limit)
                    .note_refusal(obs.at_ms, window_ms(l));
            }
        }
        // The limit that refused: the kind the provider named, and of those the fullest.
        let filled: Vec<(LimitStatus, u64)> = ctx
            .status
            .limits
            .iter()
            .filter(|l| fits(l.unit))
            .map(|l| (l.clone(), self.fill(ctx, l, lag_ms, obs.at_ms)))
            .collect();
        let fullness = |(l, fill): &(LimitStatus, u64)| *fill as f64 / l.effective.max(1) as f64;
        let Some((l, fill)) = filled
            .into_iter()
            .max_by(|a, b| fullness(a).total_cmp(&fullness(b)))
        else {
            return Ok(());
        };
        // Sluice never admits past the effective limit, so a refusal of a request it
        // admitted means the provider's limit is lower — unless our window is already
        // over it (costs reconciled above their estimates): then the refusal is ours.
        // (The fill, not `used`: slots booked ahead count in `used` now but in the
        // window of their own instant, so `used` may exceed the limit with no fault.)
        if fill as f64 > l.effective as f64 * (1.0 + self.tuning.headroom_tolerance) {
            tracing::debug!(limit = %l.limit, fill, effective = l.effective, "refusal explained by our own window");
            metrics::counter!("sluice_observations_ignored_total", "reason" => "refusal_explained")
                .increment(1);
            return Ok(());
        }
        let refused = Refused {
            at_ms: obs.at_ms,
            fill,
            effective: l.effective,
            floor: self.floor(&l),
            window_ms: window_ms(&l),
        };
        let (target, learner) = {
            let mut mem = self.memory.lock();
            let learner = mem.learner(ctx.key, &l.limit);
            (learner.refusal(refused), learner.clone())
        };
        self.gauge_learned(ctx, &l, &learner);
        tracing::debug!(limit = %l.limit, fill, effective = l.effective, ?target, confirmations = learner.confirmations, "refusal without headers");
        if let Some(target) = target {
            ctx.change(
                StateChange::EffectiveLimit {
                    limit: l.limit.clone(),
                    value: Some(target),
                },
                Change::EffectiveLimit {
                    limit: l.limit.clone(),
                    value: Some(target),
                    why: "learned_refusal",
                },
            )
            .await?;
        }
        Ok(())
    }

    /// What the provider can have accepted of ours in `l`'s window at the answer: what
    /// the window holds, less the slots booked ahead and granted since (`lag_ms`) and,
    /// for requests, the refusals (each counts one request in our window).
    fn fill<S: Store>(&self, ctx: &Ctx<'_, S>, l: &LimitStatus, lag_ms: u64, at_ms: u64) -> u64 {
        let refused = self.refused_within(ctx, l, at_ms);
        // Granted since the answer or booked ahead: at most the limit's rate over that
        // span (`used` counts the booked slots too, so its own average overstates the
        // rate by them; on a short window they may be most of it).
        let span_ms = ctx.status.booked_ahead.as_millis() as f64 + lag_ms as f64;
        let rate = l.used.min(l.effective) as f64 / window_ms(l) as f64;
        let recent = ((rate * span_ms).round() as u64).min(l.used);
        l.used.saturating_sub(recent).saturating_sub(refused)
    }

    /// The refusals this process saw within `l`'s window before `at_ms` (each counts one
    /// request in our window; none in a token window).
    fn refused_within<S: Store>(&self, ctx: &Ctx<'_, S>, l: &LimitStatus, at_ms: u64) -> u64 {
        if l.unit != Unit::Requests {
            return 0;
        }
        self.memory
            .lock()
            .learner(ctx.key, &l.limit)
            .refusals_within(at_ms, window_ms(l))
    }

    /// `aimd_floor × configured`, at least 1.
    fn floor(&self, l: &LimitStatus) -> u64 {
        ((l.configured as f64 * self.tuning.floor).ceil() as u64).max(1)
    }

    /// The learner's evidence as gauges: the estimate and its confirmations.
    fn gauge_learned<S: Store>(&self, ctx: &Ctx<'_, S>, l: &LimitStatus, learner: &Learner) {
        let labels = [
            ("model", ctx.model.name.clone()),
            ("account", ctx.key.name().to_owned()),
            ("limit", l.limit.to_string()),
        ];
        metrics::gauge!("sluice_learned_limit_estimate", &labels)
            .set(learner.estimate.map_or(f64::NAN, |e| e as f64));
        metrics::gauge!("sluice_learned_limit_confirmations", &labels)
            .set(f64::from(learner.confirmations));
        metrics::gauge!("sluice_learned_limit_evidence_ms", &labels)
            .set(learner.evidence_ms as f64);
    }

    async fn success<S: Store>(
        &self,
        ctx: &mut Ctx<'_, S>,
        obs: &Observation,
        budgets: &RateLimitHeaders,
    ) -> Result<(), LimitError> {
        if ctx.status.disabled.is_some() {
            // The provider served this account again: a probe (or an app's report) succeeded.
            self.memory.lock().reenable_at_ms.remove(ctx.key);
            ctx.change(StateChange::Enable, Change::Enabled).await?;
        }
        // It served: a suspicion against it is void.
        self.corroboration.clear(ctx.key);
        // Pacing decays back towards 1× while answers succeed.
        if ctx.status.pacing_permille > PACE_MIN {
            let due = {
                let mut mem = self.memory.lock();
                let last = mem.pacing_ms.entry(ctx.key.clone()).or_default();
                let due = obs.at_ms.saturating_sub(*last) >= PACING_HOLD_OFF_MS;
                if due {
                    *last = obs.at_ms;
                }
                due
            };
            if due {
                let next = (ctx.status.pacing_permille * 9 / 10).max(PACE_MIN);
                ctx.change(StateChange::PacingFactor(next), Change::Pacing(next))
                    .await?;
            }
        }
        if !budgets.is_empty() {
            return Ok(()); // the headers say where the limits are
        }
        // Rule 5: probing back up while the provider accepts full windows.
        let lag_ms = ms(self.clock.now()).saturating_sub(obs.at_ms);
        let limits = ctx.status.limits.clone();
        for l in limits {
            let fill = self.fill(ctx, &l, lag_ms, obs.at_ms);
            let step = ((l.configured as f64 * self.tuning.increase).ceil() as u64).max(1);
            let (next, learner) = {
                let mut mem = self.memory.lock();
                let learner = mem.learner(ctx.key, &l.limit);
                learner.observe_effective(l.effective, obs.at_ms);
                let next = learner.success(
                    Succeeded {
                        at_ms: obs.at_ms,
                        fill,
                        used: l.used,
                        effective: l.effective,
                        configured: l.configured,
                        window_ms: window_ms(&l),
                        booked_ms: ctx.status.booked_ahead.as_millis() as u64,
                    },
                    step,
                );
                (next, learner.clone())
            };
            if l.effective < l.configured {
                self.gauge_learned(ctx, &l, &learner);
            }
            let Some(next) = next else { continue };
            let value = (next < l.configured).then_some(next);
            ctx.change(
                StateChange::EffectiveLimit {
                    limit: l.limit.clone(),
                    value,
                },
                Change::EffectiveLimit {
                    limit: l.limit.clone(),
                    value,
                    why: "learned_probe",
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Learned limits and usage we did not see, from the rate-limit headers.
    async fn headers<S: Store>(
        &self,
        ctx: &mut Ctx<'_, S>,
        obs: &Observation,
        budgets: &RateLimitHeaders,
    ) -> Result<(), LimitError> {
        if budgets.is_empty() {
            return Ok(());
        }
        let age_ms = ms(self.clock.now()).saturating_sub(obs.at_ms);
        let pairs = [
            (budgets.requests, Unit::Requests),
            (budgets.tokens, Unit::Tokens),
            (budgets.input_tokens, Unit::InputTokens),
            (budgets.output_tokens, Unit::OutputTokens),
        ];
        for (budget, unit) in pairs {
            self.budget(ctx, budget, unit, age_ms).await?;
        }
        Ok(())
    }

    async fn budget<S: Store>(
        &self,
        ctx: &mut Ctx<'_, S>,
        budget: Budget,
        unit: Unit,
        age_ms: u64,
    ) -> Result<(), LimitError> {
        if budget.is_empty() {
            return Ok(());
        }
        let advertised = budget.limit.filter(|&l| l > 0);
        let Some(l) = match_limit(&ctx.status, unit, advertised).cloned() else {
            return Ok(());
        };
        let slot = (ctx.key.clone(), l.limit.clone());
        let reserved = self
            .memory
            .lock()
            .outside
            .get(&slot)
            .map_or(0, |o| o.reserved);
        // The provider's limit as far as we know: the header's, else our effective one
        // plus what the outside rate took off it.
        let base = match advertised {
            Some(a) => a.min(l.configured),
            None => l.effective.saturating_add(reserved).min(l.configured),
        };
        if advertised.is_some() {
            self.set_effective(ctx, &l, base, reserved, "headers")
                .await?;
        }
        let Some(remaining) = budget.remaining else {
            return Ok(());
        };
        if age_ms > window_ms(&l) / 4 {
            metrics::counter!("sluice_observations_ignored_total", "reason" => "stale")
                .increment(1);
            return Ok(());
        }
        let provider_used = base.saturating_sub(remaining);
        let tolerance = ((base as f64 * self.tuning.unseen_tolerance) as u64).max(1);
        let seen = l.used.saturating_sub(in_flight(&ctx.status, &l, age_ms));
        let w = window_ms(&l);
        let now_ms = ms(self.clock.now());
        // The outside rate: this answer's sample is the provider's usage beyond what our
        // window holds of our own (`seen` less what rule 4 recorded in the last window).
        let (reserve, ahead_rate) = {
            let mut mem = self.memory.lock();
            let history = mem.unseen.entry(slot.clone()).or_default();
            while history.front().is_some_and(|(at, _)| at + w <= now_ms) {
                history.pop_front();
            }
            let recorded = history.iter().map(|(_, a)| a).sum::<u64>();
            let ahead_rate = recorded as f64 / w as f64;
            let sample = provider_used as f64 - seen as f64 + recorded as f64;
            let o = mem.outside.entry(slot.clone()).or_default();
            if o.last_ms != 0 {
                // Weighted by the time since the last sample (at most 1/OUTSIDE_STEPS of
                // a window):
                // a burst of answers counts about once, a gap does not make one answer
                // decisive, and with no answers at all the estimate stays.
                let dt = now_ms.saturating_sub(o.last_ms).min(w / OUTSIDE_STEPS) as f64;
                let alpha = 1.0 - (-dt / (w as f64 * OUTSIDE_TAU)).exp();
                let delta = sample - o.estimate;
                o.estimate = (o.estimate + alpha * delta).clamp(0.0, base as f64);
                // Only samples above the average widen the margin: a consumer that
                // leaves must not make the reserve grow.
                // Capped at a tenth of the limit: one extreme answer (a refusal at the
                // top of the window) must not set the margin.
                let up = delta.clamp(0.0, base as f64 * OUTSIDE_MAX_DEVIATION);
                o.variance = (1.0 - alpha) * (o.variance + alpha * up * up);
            }
            o.last_ms = o.last_ms.max(now_ms);
            tracing::debug!(
                limit = %l.limit,
                sample,
                estimate = o.estimate,
                sd = o.variance.sqrt(),
                provider_used,
                seen,
                recorded,
                "outside rate sample"
            );
            let floor =
                ((l.configured as f64 * self.tuning.floor).ceil() as u64).clamp(1, base.max(1));
            // Keep free what the outside consumer spends at its usual high (the mean
            // plus two upper standard deviations), not its average.
            let high = o.estimate + OUTSIDE_MARGIN_SD * o.variance.sqrt();
            let wanted = if o.estimate >= tolerance as f64 {
                (high.round() as u64).min(base.saturating_sub(floor))
            } else {
                0
            };
            // Moves of less than the tolerance are noise (to zero always counts); the
            // reserve moves at most every 1/OUTSIDE_STEPS of a window, by at most
            // `max(tolerance, 5% of the limit)`: a burst of answers counts once.
            let step = tolerance.max((base as f64 * OUTSIDE_MAX_STEP).ceil() as u64);
            let due = o.changed_ms == 0 || now_ms.saturating_sub(o.changed_ms) >= w / OUTSIDE_STEPS;
            if due && (wanted.abs_diff(o.reserved) >= tolerance || (wanted == 0 && o.reserved != 0))
            {
                o.reserved = wanted.clamp(o.reserved.saturating_sub(step), o.reserved + step);
                o.changed_ms = now_ms;
            }
            (o.reserved, ahead_rate)
        };
        if reserve != reserved {
            self.set_effective(ctx, &l, base, reserve, "outside_rate")
                .await?;
        }
        // What the outside consumer spent beyond what the effective limit keeps free:
        // charged to our window at once.
        let diff = provider_used.saturating_sub(seen).saturating_sub(reserve);
        if diff <= tolerance {
            return Ok(());
        }
        // `record_usage` charges every limit the cost touches: never let the difference
        // overfill another limit of the same unit (an RPS limit beside the RPM one).
        let probe = unit_cost(unit, 1);
        let cap = ctx
            .status
            .limits
            .iter()
            .filter(|o| o.limit != l.limit && charges(o.unit, &probe) > 0)
            .map(|o| o.effective.saturating_sub(o.used))
            .min()
            .unwrap_or(u64::MAX);
        // Slots already booked ahead were granted without the unseen spend that will
        // land beside them: add what the outside consumer spent beyond the reserve over
        // that horizon, at its rate of the last window.
        let ahead = (ahead_rate * ctx.status.booked_ahead.as_millis() as f64) as u64;
        let amount = diff.saturating_add(ahead).min(cap);
        if amount == 0 {
            return Ok(());
        }
        self.memory
            .lock()
            .unseen
            .entry(slot)
            .or_default()
            .push_back((now_ms, amount));
        ctx.store
            .record_usage(ctx.key, &ctx.model.quota, unit_cost(unit, amount))
            .await?;
        ctx.note(Change::UnseenUsage {
            limit: l.limit.clone(),
            amount,
        });
        Ok(())
    }

    /// Sets `l`'s effective limit to `base − reserve` (never below the floor, at the
    /// configured limit forgotten) unless it already is.
    async fn set_effective<S: Store>(
        &self,
        ctx: &mut Ctx<'_, S>,
        l: &LimitStatus,
        base: u64,
        reserve: u64,
        why: &'static str,
    ) -> Result<(), LimitError> {
        let floor = ((l.configured as f64 * self.tuning.floor).ceil() as u64).clamp(1, base.max(1));
        let value = base.saturating_sub(reserve).max(floor).min(l.configured);
        let target = (value < l.configured).then_some(value);
        let current = ctx
            .status
            .limits
            .iter()
            .find(|x| x.limit == l.limit)
            .map_or(l.effective, |x| x.effective);
        let current = (current < l.configured).then_some(current);
        if target == current {
            return Ok(());
        }
        let why = if reserve > 0 { "outside_rate" } else { why };
        ctx.change(
            StateChange::EffectiveLimit {
                limit: l.limit.clone(),
                value: target,
            },
            Change::EffectiveLimit {
                limit: l.limit.clone(),
                value: target,
                why,
            },
        )
        .await
    }

    /// Adds the learner's evidence (this process's) to a `/v1/quotas` view of the same
    /// catalog: for each limit it has observed, the estimate, its confirmations and age.
    pub fn annotate(&self, report: &mut crate::QuotasReport) {
        let now = ms(self.clock.now());
        let mem = self.memory.lock();
        if mem.learners.is_empty() {
            return;
        }
        for (m, mr) in self.catalog.models.iter().zip(report.models.iter_mut()) {
            for (key, ar) in m.keys.iter().zip(mr.accounts.iter_mut()) {
                for lr in &mut ar.limits {
                    let found = mem
                        .learners
                        .iter()
                        .find(|((k, l), _)| k == key && l.to_string() == lr.id);
                    if let Some((_, learner)) = found
                        && learner.evidence_ms != 0
                    {
                        lr.learned = Some(crate::LearnedReport {
                            estimate: learner.estimate,
                            confirmations: learner.confirmations,
                            evidence_age_ms: now.saturating_sub(learner.evidence_ms),
                        });
                    }
                }
            }
        }
    }

    /// Periodic work: enables accounts whose daily-quota wait has passed.
    pub async fn tick<S: Store>(&self, store: &S) -> Result<Vec<Applied>, LimitError> {
        let now = ms(self.clock.now());
        let due: Vec<QuotaKey> = {
            let mut mem = self.memory.lock();
            let due: Vec<QuotaKey> = mem
                .reenable_at_ms
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for k in &due {
                mem.reenable_at_ms.remove(k);
            }
            due
        };
        let mut out = Vec::new();
        for key in due {
            for m in self.catalog.models.iter().filter(|m| m.keys.contains(&key)) {
                let mut ctx = Ctx {
                    store,
                    model: m,
                    key: &key,
                    status: store.status(&key, &m.quota).await?,
                    out: &mut out,
                };
                if ctx.status.disabled.is_some() {
                    ctx.change(StateChange::Enable, Change::Enabled).await?;
                }
            }
        }
        Ok(out)
    }

    /// Puts `account` of `upstream` back into rotation on every model (and ends its
    /// cooldown): the operator's admin endpoint and a successful probe. Returns how
    /// many accounts × models it changed.
    pub async fn enable<S: Store>(
        &self,
        store: &S,
        upstream: &str,
        account: &str,
        why: &str,
    ) -> Result<usize, LimitError> {
        let mut n = 0;
        for (m, key) in self.catalog.accounts(upstream, account) {
            self.memory.lock().reenable_at_ms.remove(key);
            store.update(key, &m.quota, StateChange::Enable).await?;
            store
                .update(key, &m.quota, StateChange::ClearCooldown)
                .await?;
            metrics::counter!("sluice_recalibrations_total", "kind" => "enable").increment(1);
            metrics::gauge!("sluice_account_disabled", "model" => m.name.clone(), "account" => key.name().to_owned()).set(0.0);
            tracing::info!(model = %m.name, account = %key.name(), why, "account enabled");
            n += 1;
        }
        Ok(n)
    }
}

/// One account being recalibrated: the store, its status, the changes so far.
struct Ctx<'a, S> {
    store: &'a S,
    model: &'a CatalogModel,
    key: &'a QuotaKey,
    status: QuotaStatus,
    out: &'a mut Vec<Applied>,
}

impl<S: Store> Ctx<'_, S> {
    /// Writes `state` and records `change` (logged, counted, gauged).
    async fn change(&mut self, state: StateChange, change: Change) -> Result<(), LimitError> {
        self.store
            .update(self.key, &self.model.quota, state)
            .await?;
        // Keep the local view current so later rules of the same observation see it.
        match &change {
            Change::Disabled(r) => self.status.disabled = Some(r.clone()),
            Change::Enabled => self.status.disabled = None,
            Change::Pacing(p) => self.status.pacing_permille = *p,
            Change::Cooldown(d) => self.status.cooldown = Some(*d),
            Change::EffectiveLimit { limit, value, .. } => {
                if let Some(l) = self.status.limits.iter_mut().find(|l| &l.limit == limit) {
                    l.effective = value.unwrap_or(l.configured).min(l.configured);
                }
            }
            Change::UnseenUsage { .. } => {}
        }
        self.note(change);
        Ok(())
    }

    fn note(&mut self, change: Change) {
        let model = self.model.name.clone();
        let account = self.key.name().to_owned();
        metrics::counter!("sluice_recalibrations_total", "kind" => change.kind()).increment(1);
        match &change {
            Change::EffectiveLimit { limit, value, why } => {
                let configured = self
                    .status
                    .limits
                    .iter()
                    .find(|l| &l.limit == limit)
                    .map_or(0, |l| l.configured);
                let v = value.unwrap_or(configured);
                metrics::gauge!("sluice_effective_limit", "model" => model.clone(), "account" => account.clone(), "limit" => limit.to_string()).set(v as f64);
                tracing::info!(model = %model, account = %account, limit = %limit, effective = v, configured, why, "effective limit changed");
            }
            Change::Disabled(reason) => {
                metrics::gauge!("sluice_account_disabled", "model" => model.clone(), "account" => account.clone()).set(1.0);
                tracing::warn!(model = %model, account = %account, reason = %reason, "account disabled");
            }
            Change::Enabled => {
                metrics::gauge!("sluice_account_disabled", "model" => model.clone(), "account" => account.clone()).set(0.0);
                tracing::info!(model = %model, account = %account, "account enabled");
            }
            Change::Cooldown(d) => {
                tracing::info!(model = %model, account = %account, cooldown_ms = d.as_millis() as u64, "shared cooldown");
            }
            Change::UnseenUsage { limit, amount } => {
                tracing::info!(model = %model, account = %account, limit = %limit, amount, "usage spent outside sluice recorded");
            }
            Change::Pacing(p) => {
                tracing::info!(model = %model, account = %account, pacing_permille = p, "pacing changed");
            }
        }
        self.out.push(Applied {
            model,
            key: self.key.clone(),
            change,
        });
    }
}

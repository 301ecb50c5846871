//! The admit stage: a request of one model waits its turn at the model's fair gate,
//! asks the limiter for a slot on one of the model's accounts (one atomic decision
//! over every account and limit), and sleeps until that slot; or learns why not (a
//! [`Failure`] that names the account and the limit that bound it).
//!
//! Invariants: nothing goes upstream without a reservation; a refusal charges nothing
//! (the limiter's own rule); a client that goes away while waiting gives its slot back
//! ([`AbandonedWait`]); the wait never exceeds the request's deadline (the limiter
//! refuses a slot beyond it).

use std::time::{Duration, Instant};

use sluice_limiter::{
    Cost, Decision, LimitError, LimitId, Refusal, RefusalReason, ReleaseOutcome, Remaining,
    Reservation, Store,
};
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::{Bound, Failure};
use crate::error::{ApiError, RateLimited};
use crate::state::{Gateway, ModelState};
use crate::telemetry::SPANS;
use crate::tenant_limits::{self, TenantHold, TenantRefusal};

/// Who is asking, for how long, for what.
pub(super) struct Ask {
    /// The tenant (its index) and its fair-share weight.
    pub(super) tenant: usize,
    pub(super) weight: u32,
    /// The request's cost as estimated for this model.
    pub(super) cost: Cost,
    /// When the request must have its slot, and the maximum wait that set it.
    pub(super) deadline: Instant,
    pub(super) max_wait: Duration,
    /// This attempt's number on this model (0-based, for the span).
    pub(super) attempt: u32,
}

/// Admits a request on model `mi`: what it holds of its tenant's own limits (kept in
/// `hold`: charged by the first attempt on the model, reused by its retries), then its
/// reservation once its slot has come.
pub(super) async fn admit(
    gw: &Gateway,
    mi: usize,
    ask: &Ask,
    hold: &mut Option<TenantHold>,
) -> Result<Reservation, Failure> {
    if hold.is_none() {
        match tenant_limits::charge(gw, ask.tenant, mi, ask.cost, ask.deadline).await {
            Ok(charged) => *hold = Some(charged),
            Err(TenantRefusal::Limited(r, limit)) => {
                let account = "none".to_owned();
                return Err(Failure::Refused(r, Bound { account, limit }));
            }
            Err(TenantRefusal::TooLarge(e)) => return Err(Failure::TooLarge(e)),
            Err(TenantRefusal::StoreDown(after)) => return Err(Failure::StoreDown(after)),
        }
    }
    let model = &gw.inner.models[mi];
    let queue_span = tracing::trace_span!(
        target: SPANS,
        "queue_wait",
        attempt = ask.attempt + 1,
        model = %model.cfg.name,
        gate_wait_ms = Empty,
        slot_wait_ms = Empty,
        wait_ms = Empty,
        outcome = Empty,
    );
    let gate_t0 = Instant::now();
    let (permit, res) = loop {
        let remaining = ask.deadline.saturating_duration_since(Instant::now());
        let Some(permit) = model.gate.admit(ask.tenant, ask.weight, remaining).await else {
            queue_span.record("outcome", "queue_full");
            return Err(queue_full(gw, model));
        };
        let t0 = Instant::now();
        let decision = acquire(gw, model, ask, &queue_span).await;
        queue_span.record("gate_wait_ms", ms(t0 - gate_t0));
        match decision {
            Ok(Decision::Granted(res)) => break (permit, res),
            // The tenant has its share of the queue for now: it waits for its turn
            // without holding a place at this replica's gate, then asks again.
            Ok(Decision::Refused(r))
                if r.reason == RefusalReason::FairShare
                    && r.retry_after
                        .is_some_and(|d| Instant::now() + d < ask.deadline) =>
            {
                drop(permit);
                metrics::counter!("sluice_fair_share_waits_total", "model" => model.cfg.name.clone(), "tenant" => gw.inner.tenant_name(ask.tenant).to_owned()).increment(1);
                let turn = r.retry_after.unwrap_or_default();
                tokio::time::sleep(turn.max(Duration::from_millis(1))).await;
            }
            Ok(Decision::Refused(r)) => {
                queue_span.record("outcome", "refused");
                return Err(refusal(r, model, ask.max_wait));
            }
            Err(e) => return Err(store_failure(e, model)),
        }
    };
    model.booked_ahead_us.store(
        res.wait.as_micros() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let queue_wait =
        || metrics::histogram!("sluice_queue_wait_seconds", "model" => model.cfg.name.clone());
    model
        .meters
        .queue_wait(queue_wait)
        .record(res.wait.as_secs_f64());
    // Until the request is sent, a client that goes away (hyper drops this future)
    // gives the slot back for a later waiter.
    let waiting = AbandonedWait::new(gw, mi, res);
    if !waiting.wait().is_zero() {
        tokio::time::sleep(waiting.wait()).await;
    }
    let res = waiting.sent();
    drop(permit);
    if !queue_span.is_disabled() {
        queue_span.record("outcome", "slot");
        queue_span.record("slot_wait_ms", ms(res.wait));
        queue_span.record("wait_ms", ms(gate_t0.elapsed()));
    }
    Ok(res)
}

/// The refusal of a request that found the model's fair gate full at this replica.
fn queue_full(gw: &Gateway, model: &ModelState) -> Failure {
    Failure::Refused(
        RateLimited {
            model: model.cfg.name.clone(),
            retry_after: model.booked_ahead().max(Duration::from_millis(100)),
            what: format!(
                "queue full at this gateway: queue.booked_ahead = {} requests of this model already hold a slot",
                gw.inner.config.queue.booked_ahead
            ),
            remaining: Vec::new(),
        },
        Bound {
            account: "none".into(),
            limit: "queue.booked_ahead at this gateway".into(),
        },
    )
}

/// One `acquire` over all of the model's accounts, under a `limiter.acquire` span.
async fn acquire(
    gw: &Gateway,
    model: &ModelState,
    ask: &Ask,
    queue_span: &Span,
) -> Result<Decision, LimitError> {
    let t0 = Instant::now();
    let acquire_span = tracing::trace_span!(
        target: SPANS,
        parent: queue_span,
        "limiter.acquire",
        candidates = model.keys.len(),
        cost_tokens = ask.cost.input_tokens + ask.cost.output_tokens,
        otel.status_code = Empty,
        decision = Empty,
        account = Empty,
        quota_key = Empty,
        reason = Empty,
        limit = Empty,
        retry_after_ms = Empty,
        remaining = Empty,
    );
    let remaining = ask.deadline.saturating_duration_since(t0);
    let share = gw
        .inner
        .tenants
        .get(ask.tenant)
        .and_then(|t| t.share.as_ref());
    // From a rotating start: the limiter stops at the first account that serves now
    // with room to spare; candidate indices are mapped back to the model's accounts.
    let (start, candidates) = model.rotation.next();
    let decision = gw
        .inner
        .limiter
        .acquire_for(candidates, &model.quota, ask.cost, remaining, share)
        .instrument(acquire_span.clone())
        .await
        .map(|d| match d {
            Decision::Granted(mut r) => {
                r.candidate = model.rotation.account(start, r.candidate);
                Decision::Granted(r)
            }
            Decision::Refused(mut r) => {
                r.candidate = model.rotation.account(start, r.candidate);
                Decision::Refused(r)
            }
        });
    let acquire_seconds = || metrics::histogram!("sluice_limiter_seconds", "op" => "acquire");
    model
        .meters
        .acquire_seconds(acquire_seconds)
        .record(t0.elapsed().as_secs_f64());
    if !acquire_span.is_disabled() {
        record_decision(&acquire_span, &decision, model);
    }
    decision
}

/// What a limiter refusal means for the request: accounts out of rotation, the store
/// unavailable (under `fail_closed`), or rate limited, naming the account and limit.
fn refusal(r: Refusal, model: &ModelState, max_wait: Duration) -> Failure {
    match r.reason {
        RefusalReason::Disabled(reason) => Failure::Disabled {
            model: model.cfg.name.clone(),
            reason,
        },
        RefusalReason::Unavailable => {
            Failure::StoreDown(r.retry_after.unwrap_or(Duration::from_secs(1)))
        }
        reason => {
            let remaining = r.remaining.describe(&model.quota);
            let limit = binding_limit(&reason, &remaining, model);
            Failure::Refused(
                RateLimited {
                    model: model.cfg.name.clone(),
                    retry_after: r
                        .retry_after
                        .unwrap_or(max_wait)
                        .max(Duration::from_millis(1)),
                    what: describe(&reason, &remaining, model),
                    remaining,
                },
                Bound {
                    account: model
                        .accounts
                        .get(r.candidate)
                        .map_or("none", |a| a.name.as_str())
                        .to_owned(),
                    limit,
                },
            )
        }
    }
}

/// What a limiter error means for the request: too large for the model's windows
/// (never admissible), or the store down.
fn store_failure(e: LimitError, model: &ModelState) -> Failure {
    match e {
        LimitError::InsufficientCapacity {
            limit,
            capacity,
            cost,
        } => Failure::TooLarge(ApiError::TooLarge {
            model: model.cfg.name.clone(),
            limit: limit.to_string(),
            capacity,
            cost,
        }),
        e => {
            tracing::error!(error = %e, "limiter failed");
            Failure::StoreDown(Duration::from_secs(1))
        }
    }
}

/// A limit of the model in words, as the operator configured it: `100 requests per 60s`
/// (the quota's own window is a little longer, by the latency allowance).
fn describe_limit(id: &LimitId, model: &ModelState) -> String {
    use sluice_config::LimitUnit;
    use sluice_limiter::Unit;
    let Some(l) = model.quota.limits().iter().find(|l| l.id() == id) else {
        return format!("limit {id}");
    };
    let window = l.window().length();
    let per = model
        .cfg
        .limits
        .iter()
        .filter(|s| {
            s.amount.get() == l.amount()
                && s.per <= window
                && matches!(
                    (s.unit, l.unit()),
                    (LimitUnit::Requests, Unit::Requests)
                        | (LimitUnit::Tokens, Unit::Tokens)
                        | (LimitUnit::InputTokens, Unit::InputTokens)
                        | (LimitUnit::OutputTokens, Unit::OutputTokens)
                )
        })
        .map(|s| s.per)
        .max()
        .unwrap_or(window);
    format!("{} {} per {per:?}", l.amount(), l.unit().as_str())
}

/// The limit with the least left, as a share of what it allows.
fn tightest(remaining: &[Remaining]) -> Option<&Remaining> {
    remaining
        .iter()
        .min_by_key(|r| (r.remaining as u128 * 1_000_000) / u128::from(r.effective.max(1)))
}

/// The limit that bound a refusal, in words (for its log line and span).
fn binding_limit(reason: &RefusalReason, remaining: &[Remaining], model: &ModelState) -> String {
    match reason {
        RefusalReason::Limit(id) => describe_limit(id, model),
        RefusalReason::Queue => tightest(remaining).map_or_else(
            || "the shared queue".into(),
            |r| describe_limit(&r.limit, model),
        ),
        RefusalReason::Pacing => "pacing".into(),
        RefusalReason::Cooldown => "provider cooldown".into(),
        RefusalReason::Disabled(_) => "accounts out of rotation".into(),
        RefusalReason::Unavailable => "store unavailable".into(),
        RefusalReason::FairShare => "the tenant's fair share of the queue".into(),
        _ => "no slot".into(),
    }
}

/// The reason of a refusal, as a span attribute.
fn reason_label(reason: &RefusalReason) -> &'static str {
    match reason {
        RefusalReason::Limit(_) => "limit",
        RefusalReason::Queue => "queue",
        RefusalReason::Pacing => "pacing",
        RefusalReason::Cooldown => "cooldown",
        RefusalReason::Disabled(_) => "disabled",
        RefusalReason::Unavailable => "unavailable",
        RefusalReason::FairShare => "fair_share",
        _ => "other",
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Records the limiter's decision on its span (only called when the span is enabled).
fn record_decision(span: &Span, decision: &Result<Decision, LimitError>, model: &ModelState) {
    let remaining = |rs: &[Remaining]| {
        rs.iter()
            .map(|r| format!("{}={}/{}", r.limit, r.remaining, r.effective))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let account = |i: usize| model.accounts.get(i).map_or("none", |a| a.name.as_str());
    match decision {
        Ok(Decision::Granted(res)) => {
            span.record("decision", "granted");
            span.record("account", account(res.candidate));
            span.record("quota_key", res.key.to_string());
            span.record(
                "remaining",
                remaining(&res.remaining.describe(&model.quota)),
            );
        }
        Ok(Decision::Refused(r)) => {
            span.record("decision", "refused");
            span.record("account", account(r.candidate));
            if let Some(k) = model.keys.get(r.candidate) {
                span.record("quota_key", k.to_string());
            }
            span.record("reason", reason_label(&r.reason));
            let described = r.remaining.describe(&model.quota);
            span.record("limit", binding_limit(&r.reason, &described, model));
            span.record(
                "retry_after_ms",
                r.retry_after.map(|d| d.as_millis() as u64),
            );
            span.record("remaining", remaining(&described));
        }
        Err(LimitError::InsufficientCapacity { limit, .. }) => {
            span.record("decision", "too_large");
            span.record("limit", describe_limit(limit, model));
        }
        Err(_) => {
            span.record("decision", "error");
            span.record("otel.status_code", "ERROR");
        }
    }
}

pub(super) fn describe(
    reason: &RefusalReason,
    remaining: &[Remaining],
    model: &ModelState,
) -> String {
    match reason {
        RefusalReason::Limit(id) => describe_limit(id, model),
        RefusalReason::Queue => match tightest(remaining) {
            Some(r) => format!(
                "earlier requests hold every slot of {} up to the deadline",
                describe_limit(&r.limit, model)
            ),
            None => "earlier requests hold every slot up to the deadline".into(),
        },
        RefusalReason::Pacing => {
            "requests are paced and the next slot is after the deadline".into()
        }
        RefusalReason::Cooldown => "the provider asked to slow down".into(),
        RefusalReason::Disabled(r) => format!("accounts out of rotation: {r}"),
        RefusalReason::Unavailable => "the shared store is unavailable".into(),
        RefusalReason::FairShare => {
            "this tenant has its fair share of the queue (tenants' weights) until after the deadline".into()
        }
        _ => "no slot".into(),
    }
}

/// A reservation waiting for its slot: dropped before [`sent`](Self::sent) (the client
/// went away and hyper dropped the handler), it releases the reservation in the
/// background, so that the slot can serve a later waiter (`Store::release`).
pub(super) struct AbandonedWait {
    gw: Gateway,
    model: usize,
    reservation: Option<Reservation>,
}

impl AbandonedWait {
    pub(super) fn new(gw: &Gateway, model: usize, reservation: Reservation) -> Self {
        Self {
            gw: gw.clone(),
            model,
            reservation: Some(reservation),
        }
    }

    /// How long until the slot.
    pub(super) fn wait(&self) -> Duration {
        self.reservation.as_ref().map_or(Duration::ZERO, |r| r.wait)
    }

    /// The slot has come and the request goes upstream: the reservation is used.
    pub(super) fn sent(mut self) -> Reservation {
        self.reservation.take().expect("taken only here")
    }
}

impl Drop for AbandonedWait {
    fn drop(&mut self) {
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let gw = self.gw.clone();
        let mi = self.model;
        runtime.spawn(async move {
            let m = &gw.inner.models[mi];
            match gw.inner.limiter.release(&m.quota, &reservation).await {
                Ok(outcome) => {
                    let outcome = match outcome {
                        ReleaseOutcome::Reusable => "reusable",
                        ReleaseOutcome::Passed => "passed",
                        ReleaseOutcome::AlreadySettled => "settled",
                        _ => "dropped",
                    };
                    metrics::counter!("sluice_reservations_released_total", "model" => m.cfg.name.clone(), "outcome" => outcome)
                        .increment(1);
                    tracing::debug!(model = %m.cfg.name, account = %m.accounts[reservation.candidate].name, outcome, "client went away while queued; slot released");
                }
                Err(e) => {
                    tracing::warn!(error = %e, model = %m.cfg.name, "releasing an abandoned slot failed; it ages out");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::{gateway, prepared, prepared_as};
    use super::*;
    use crate::estimate::Endpoint;

    const URL: &str = "http://127.0.0.1:9";

    /// One admission with a hold of its own: the reservation and what it holds of the
    /// tenant's limits.
    async fn admitted(
        gw: &Gateway,
        mi: usize,
        ask: &Ask,
    ) -> Result<(Reservation, TenantHold), Failure> {
        let mut hold = None;
        let res = admit(gw, mi, ask, &mut hold).await?;
        Ok((res, hold.expect("charged")))
    }

    fn refusal_of(reason: RefusalReason, retry_after: Option<Duration>) -> Refusal {
        Refusal {
            retry_after,
            reason,
            candidate: 1,
            remaining: sluice_limiter::Budget::default(),
        }
    }

    #[tokio::test]
    async fn a_full_window_refuses_naming_the_account_and_the_limit_as_configured() {
        let gw = gateway(URL, "");
        let body =
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5});
        let p = prepared(&gw, Endpoint::Chat, body).await;
        let (cost, _) = p.cost_on(&gw.inner.models[0]);
        // Two accounts with 2 requests per minute each: four slots now, then a wait of
        // about a minute, beyond the request's 10 s.
        let mut accounts = Vec::new();
        for _ in 0..4 {
            match admitted(&gw, 0, &p.ask(cost, 0)).await {
                Ok((res, _)) => {
                    accounts.push(gw.inner.models[0].accounts[res.candidate].name.clone())
                }
                Err(_) => panic!("a slot was free"),
            }
        }
        accounts.sort();
        assert_eq!(accounts, ["a", "a", "b", "b"]);
        match admitted(&gw, 0, &p.ask(cost, 0)).await {
            Err(Failure::Refused(r, bound)) => {
                assert!(
                    r.retry_after > Duration::from_secs(10),
                    "{:?}",
                    r.retry_after
                );
                assert!(
                    ["a", "b"].contains(&bound.account.as_str()),
                    "{}",
                    bound.account
                );
                assert_eq!(bound.limit, "2 requests per 60s");
            }
            _ => panic!("the fifth request in a minute was not refused"),
        }
    }

    #[tokio::test]
    async fn limiter_refusals_map_to_what_the_client_is_told() {
        let gw = gateway(URL, "");
        let model = &gw.inner.models[0];
        let wait = Duration::from_secs(10);
        let off = refusal_of(RefusalReason::Disabled("billing".into()), None);
        match refusal(off, model, wait) {
            Failure::Disabled { model, reason } => {
                assert_eq!((model.as_str(), reason.as_str()), ("m", "billing"))
            }
            _ => panic!("a disabled account is not a rate limit"),
        }
        let down = refusal_of(RefusalReason::Unavailable, Some(Duration::from_secs(3)));
        assert!(
            matches!(refusal(down, model, wait), Failure::StoreDown(d) if d == Duration::from_secs(3))
        );
        let cooling = refusal_of(RefusalReason::Cooldown, None);
        match refusal(cooling, model, wait) {
            Failure::Refused(r, bound) => {
                assert_eq!(
                    r.retry_after, wait,
                    "no wait known: the request's own maximum"
                );
                assert_eq!(bound.account, "b", "the refusal's candidate");
            }
            _ => panic!("a cooldown is a rate limit"),
        }
    }

    #[tokio::test]
    async fn a_request_larger_than_a_window_is_too_large_and_a_store_error_is_unavailable() {
        let gw = gateway(URL, "");
        let model = &gw.inner.models[0];
        let limit = model.quota.limits()[1].id().clone();
        let huge = LimitError::InsufficientCapacity {
            limit,
            capacity: 100_000,
            cost: 200_000,
        };
        match store_failure(huge, model) {
            Failure::TooLarge(ApiError::TooLarge { capacity, cost, .. }) => {
                assert_eq!((capacity, cost), (100_000, 200_000));
            }
            _ => panic!("an impossible request is too large, not unavailable"),
        }
        let broken = LimitError::Unavailable(sluice_limiter::StoreError::CircuitOpen);
        assert!(matches!(
            store_failure(broken, model),
            Failure::StoreDown(_)
        ));
    }

    /// Tenant `capped` (`sk-capped-key`): 1 request per minute on every model, 1 s of
    /// waiting at most.
    const CAPPED: &str = r#"
[[tenants]]
name = "capped"
key = "sk-capped-key"
max_wait = "1s"
rpm = 1
"#;

    /// What the account windows of model `mi` hold, in requests.
    async fn provider_requests(gw: &Gateway, mi: usize) -> u64 {
        let m = &gw.inner.models[mi];
        let mut used = 0;
        for k in &m.keys {
            let status = gw.inner.limiter.status(k, &m.quota).await.unwrap();
            used += status.limits[0].used;
        }
        used
    }

    /// What tenant `ti`'s limit `i` holds, fleet-wide.
    async fn tenant_used(gw: &Gateway, ti: usize, i: usize) -> u64 {
        let limits = gw.inner.tenants[ti].limits.as_ref().unwrap();
        let status = limits.status(&gw.inner.limiter).await.unwrap();
        status.limits[i].used
    }

    /// Waits (bounded) until tenant `ti`'s limit `i` holds `want`: a refund or settle
    /// runs in the background.
    async fn until_tenant_used(gw: &Gateway, ti: usize, i: usize, want: u64) {
        for _ in 0..500 {
            if tenant_used(gw, ti, i).await == want {
                return;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!(
            "tenant limit {i} holds {}, not {want}",
            tenant_used(gw, ti, i).await
        );
    }

    #[tokio::test]
    async fn a_tenants_own_limit_refuses_before_the_provider_is_asked() {
        let gw = gateway(URL, CAPPED);
        let body =
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5});
        let p = prepared_as(&gw, "sk-capped-key", Endpoint::Chat, body).await;
        let (cost, _) = p.cost_on(&gw.inner.models[0]);
        let Ok((_, hold)) = admitted(&gw, 0, &p.ask(cost, 0)).await else {
            panic!("the tenant's first request of the minute was refused");
        };
        hold.keep();
        // On another model too: the limit is the tenant's, on every model.
        match admitted(&gw, 1, &p.ask(cost, 0)).await {
            Err(Failure::Refused(r, bound)) => {
                assert_eq!(bound.limit, "tenant capped: 1 requests per 60s");
                assert_eq!(bound.account, "none");
                assert!(r.what.contains("the provider was not asked"), "{}", r.what);
                assert!(
                    r.retry_after > Duration::from_secs(1),
                    "{:?}",
                    r.retry_after
                );
                let requests = r
                    .remaining
                    .iter()
                    .find(|x| x.unit == sluice_limiter::Unit::Requests);
                assert_eq!(
                    requests.map(|x| (x.effective, x.remaining)),
                    Some((1, 0)),
                    "the tenant's own budget in the headers"
                );
            }
            _ => panic!("the tenant's second request in a minute was not refused"),
        }
        assert_eq!(provider_requests(&gw, 0).await, 1);
        assert_eq!(
            provider_requests(&gw, 1).await,
            0,
            "the provider's quota is not charged for it"
        );
        // Another tenant is not limited by it.
        let other = prepared(
            &gw,
            Endpoint::Chat,
            json!({"model": "m2", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        let (cost, _) = other.cost_on(&gw.inner.models[1]);
        assert!(admitted(&gw, 1, &other.ask(cost, 0)).await.is_ok());
    }

    #[tokio::test]
    async fn a_refusal_on_the_providers_side_costs_the_tenant_nothing() {
        let gw = gateway(URL, CAPPED);
        let model = &gw.inner.models[0];
        // Fill the provider's windows (2 per minute on each of 2 accounts).
        for _ in 0..4 {
            let granted = gw
                .inner
                .limiter
                .acquire(
                    &model.keys,
                    &model.quota,
                    Cost::request(1, 1),
                    Duration::ZERO,
                )
                .await;
            assert!(matches!(granted, Ok(Decision::Granted(_))));
        }
        let body =
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5});
        let p = prepared_as(&gw, "sk-capped-key", Endpoint::Chat, body).await;
        let (cost, _) = p.cost_on(model);
        match admitted(&gw, 0, &p.ask(cost, 0)).await {
            Err(Failure::Refused(_, bound)) => assert_eq!(bound.limit, "2 requests per 60s"),
            _ => panic!("the provider's full window did not refuse"),
        }
        // The tenant's hold was given back: its one request a minute is still free.
        until_tenant_used(&gw, 2, 0, 0).await;
        let Ok((_, hold)) = admitted(&gw, 1, &p.ask(cost, 0)).await else {
            panic!("the refused request was charged to the tenant");
        };
        hold.keep();
        assert_eq!(tenant_used(&gw, 2, 0).await, 1);
    }

    #[tokio::test]
    async fn a_budget_refuses_what_would_cross_it_and_settles_to_the_actual_price() {
        // 1,000 micro-USD a day; a request of m is estimated at its prompt at $1/M and
        // 5 output tokens at $100/M: about 510 micro-USD.
        let budget = r#"
[[tenants]]
name = "spender"
key = "sk-spender-key"
max_wait = "1s"
budget = { per_day = 0.001 }
"#;
        let gw = gateway(URL, budget);
        let body =
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5});
        let p = prepared_as(&gw, "sk-spender-key", Endpoint::Chat, body).await;
        let (cost, _) = p.cost_on(&gw.inner.models[0]);
        let estimate = cost.input_tokens + cost.output_tokens * 100;
        let Ok((_, first)) = admitted(&gw, 0, &p.ask(cost, 0)).await else {
            panic!("the first request fits the budget");
        };
        assert_eq!(tenant_used(&gw, 2, 0).await, estimate);
        match admitted(&gw, 1, &p.ask(cost, 0)).await {
            Err(Failure::Refused(r, bound)) => {
                assert_eq!(bound.limit, "tenant spender: budget of USD 0.001 per day");
                assert!(
                    r.retry_after > Duration::from_secs(3600),
                    "a day's budget: {:?}",
                    r.retry_after
                );
            }
            _ => panic!("a request that would cross the budget was admitted"),
        }
        // The answer used 10 input tokens (4 from the cache, at the input price here)
        // and 1 output token: 10 + 100 micro-USD, so a second request now fits.
        first.settle(10, 10, 0, 1);
        until_tenant_used(&gw, 2, 0, 110).await;
        let Ok((_, second)) = admitted(&gw, 1, &p.ask(cost, 0)).await else {
            panic!("the refund of the estimate was not applied");
        };
        second.keep();
        assert_eq!(tenant_used(&gw, 2, 0).await, 110 + estimate);
    }

    #[tokio::test]
    async fn a_tenants_limit_on_one_model_leaves_the_others_free() {
        let narrow = r#"
[[tenants]]
name = "narrow"
key = "sk-narrow-key"
max_wait = "1s"
[[tenants.models]]
model = "m"
rpm = 1
"#;
        let gw = gateway(URL, narrow);
        let ask_for = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5});
        let p = prepared_as(&gw, "sk-narrow-key", Endpoint::Chat, ask_for("m")).await;
        let (cost, _) = p.cost_on(&gw.inner.models[0]);
        let Ok((_, hold)) = admitted(&gw, 0, &p.ask(cost, 0)).await else {
            panic!("the first request on m was refused");
        };
        hold.keep();
        match admitted(&gw, 0, &p.ask(cost, 0)).await {
            Err(Failure::Refused(_, bound)) => {
                assert_eq!(bound.limit, "tenant narrow: 1 requests per 60s on m")
            }
            _ => panic!("the tenant's second request on m in a minute was admitted"),
        }
        for _ in 0..3 {
            let Ok((_, hold)) = admitted(&gw, 1, &p.ask(cost, 0)).await else {
                panic!("m2 is not limited for the tenant");
            };
            hold.keep();
        }
    }
}

//! The metric handles of the request path, each registered on its first use and then
//! reused. `metrics::counter!("…", "model" => name.clone(), …)` builds its key on every
//! call (the label strings copied, the name and every label hashed, the registry
//! searched): about a dozen such calls per request took some 6% of a gateway's CPU.
//! A handle is the series' own storage; using it is one atomic operation.
//!
//! Handles are registered lazily, so `/metrics` shows a series only once it has a
//! value, as before. Each [`ModelMeters`] belongs to one configuration's
//! `ModelState`; a reload builds new ones, which find the same series in the registry.
//!
//! ```ignore
//! let ok = m.meters.answered(account, tenant, Answered::Ok, || {
//!     metrics::counter!("sluice_requests_total", "model" => …, "outcome" => "ok")
//! });
//! ok.increment(1);
//! ```

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram};

/// How an answered request ended, for `sluice_requests_total`'s `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answered {
    Ok,
    OkFallback,
    UpstreamError,
}

impl Answered {
    const ALL: usize = 3;

    /// The `outcome` label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Answered::Ok => "ok",
            Answered::OkFallback => "ok_fallback",
            Answered::UpstreamError => "upstream_error",
        }
    }
}

/// Which of `sluice_tokens_total`'s series: input or output, estimated or actual.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenSeries {
    InputEstimated,
    OutputEstimated,
    InputActual,
    OutputActual,
}

impl TokenSeries {
    const ALL: usize = 4;

    /// Its `kind` and `source` labels.
    pub(crate) fn labels(self) -> (&'static str, &'static str) {
        match self {
            TokenSeries::InputEstimated => ("input", "estimated"),
            TokenSeries::OutputEstimated => ("output", "estimated"),
            TokenSeries::InputActual => ("input", "actual"),
            TokenSeries::OutputActual => ("output", "actual"),
        }
    }
}

/// One model's handles: per account and limit, per account and tenant, per tenant.
pub(crate) struct ModelMeters {
    limits: usize,
    tenants: usize,
    queue_wait: OnceLock<Histogram>,
    acquire_seconds: OnceLock<Histogram>,
    estimate_factor: OnceLock<Gauge>,
    /// `[account][limit]`
    headroom: Box<[OnceLock<Gauge>]>,
    /// `[account][tenant][Answered]`
    answered: Box<[OnceLock<Counter>]>,
    /// `[tenant][TokenSeries]`
    tokens: Box<[OnceLock<Counter>]>,
    /// `[tenant]`
    spend: Box<[OnceLock<Counter>]>,
}

/// The most cells one table of a model gets: past it (thousands of tenants times many
/// accounts) the table is left empty and its series are looked up as before, so a
/// configuration's load never allocates more than this per table.
const MAX_CELLS: usize = 1 << 16;

fn cells<T>(n: usize) -> Box<[OnceLock<T>]> {
    let n = if n > MAX_CELLS { 0 } else { n };
    (0..n).map(|_| OnceLock::new()).collect()
}

/// A handle from its cell, or, for an index outside the model's (which the request
/// path never asks for), made for this one use: no value is ever dropped.
pub(crate) enum Handle<'a, T> {
    Cached(&'a T),
    Fresh(T),
}

impl<T> std::ops::Deref for Handle<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        match self {
            Handle::Cached(t) => t,
            Handle::Fresh(t) => t,
        }
    }
}

fn cached<T>(cell: Option<&OnceLock<T>>, make: impl FnOnce() -> T) -> Handle<'_, T> {
    match cell {
        Some(cell) => Handle::Cached(cell.get_or_init(make)),
        None => Handle::Fresh(make()),
    }
}

impl ModelMeters {
    /// The handles of a model with `accounts` accounts and `limits` limits, served to
    /// `tenants` tenants (1 when none are configured: the `default` tenant).
    pub(crate) fn new(accounts: usize, limits: usize, tenants: usize) -> Self {
        let tenants = tenants.max(1);
        Self {
            limits,
            tenants,
            queue_wait: OnceLock::new(),
            acquire_seconds: OnceLock::new(),
            estimate_factor: OnceLock::new(),
            headroom: cells(accounts * limits),
            answered: cells(accounts * tenants * Answered::ALL),
            tokens: cells(tenants * TokenSeries::ALL),
            spend: cells(tenants),
        }
    }

    /// `sluice_queue_wait_seconds` of the model.
    pub(crate) fn queue_wait(&self, make: impl FnOnce() -> Histogram) -> &Histogram {
        self.queue_wait.get_or_init(make)
    }

    /// `sluice_limiter_seconds{op="acquire"}` (one series for every model).
    pub(crate) fn acquire_seconds(&self, make: impl FnOnce() -> Histogram) -> &Histogram {
        self.acquire_seconds.get_or_init(make)
    }

    /// `sluice_estimate_factor` of the model.
    pub(crate) fn estimate_factor(&self, make: impl FnOnce() -> Gauge) -> &Gauge {
        self.estimate_factor.get_or_init(make)
    }

    /// `sluice_headroom` of limit `limit` on account `account`.
    pub(crate) fn headroom(
        &self,
        account: usize,
        limit: usize,
        make: impl FnOnce() -> Gauge,
    ) -> Handle<'_, Gauge> {
        let cell = (limit < self.limits)
            .then(|| self.headroom.get(account * self.limits + limit))
            .flatten();
        cached(cell, make)
    }

    /// `sluice_requests_total` of a request answered on `account` for `tenant`.
    pub(crate) fn answered(
        &self,
        account: usize,
        tenant: usize,
        outcome: Answered,
        make: impl FnOnce() -> Counter,
    ) -> Handle<'_, Counter> {
        let i = (account * self.tenants + tenant) * Answered::ALL + outcome as usize;
        let cell = (tenant < self.tenants)
            .then(|| self.answered.get(i))
            .flatten();
        cached(cell, make)
    }

    /// `sluice_tokens_total` of `tenant`, series `series`.
    pub(crate) fn tokens(
        &self,
        tenant: usize,
        series: TokenSeries,
        make: impl FnOnce() -> Counter,
    ) -> Handle<'_, Counter> {
        cached(
            self.tokens.get(tenant * TokenSeries::ALL + series as usize),
            make,
        )
    }

    /// `sluice_spend_microusd_total` of `tenant`.
    pub(crate) fn spend(
        &self,
        tenant: usize,
        make: impl FnOnce() -> Counter,
    ) -> Handle<'_, Counter> {
        cached(self.spend.get(tenant), make)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_is_made_once_per_series_and_out_of_range_asks_are_made_each_time() {
        let m = ModelMeters::new(2, 3, 2);
        let cached = |h: Handle<'_, Counter>| matches!(h, Handle::Cached(_));
        let mut made = 0;
        for _ in 0..3 {
            let h = m.answered(1, 1, Answered::UpstreamError, || {
                made += 1;
                Counter::noop()
            });
            assert!(cached(h));
        }
        assert_eq!(made, 1, "the second and third use reuse the handle");
        let mut made_other = 0;
        m.answered(1, 0, Answered::UpstreamError, || {
            made_other += 1;
            Counter::noop()
        });
        m.answered(0, 1, Answered::Ok, || {
            made_other += 1;
            Counter::noop()
        });
        assert_eq!(made_other, 2, "other series have their own cells");
        assert!(!cached(m.answered(2, 0, Answered::Ok, Counter::noop)));
        assert!(!cached(m.answered(0, 2, Answered::Ok, Counter::noop)));
        assert!(matches!(m.headroom(1, 2, Gauge::noop), Handle::Cached(_)));
        assert!(matches!(m.headroom(0, 3, Gauge::noop), Handle::Fresh(_)));
        assert!(matches!(m.headroom(2, 0, Gauge::noop), Handle::Fresh(_)));
        assert!(cached(m.tokens(
            1,
            TokenSeries::OutputActual,
            Counter::noop
        )));
        assert!(!cached(m.tokens(
            2,
            TokenSeries::InputActual,
            Counter::noop
        )));
        assert!(!cached(m.spend(2, Counter::noop)));
        let huge = ModelMeters::new(64, 3, 1_000);
        assert!(
            !cached(huge.answered(0, 0, Answered::Ok, Counter::noop)),
            "a table past MAX_CELLS is not allocated"
        );
        assert!(cached(huge.tokens(
            999,
            TokenSeries::InputActual,
            Counter::noop
        )));
    }
}

//! The simulator's shared state: accounts, their account × model cells, admission, settlement and the report.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::burst::{BurstLog, BurstRule};
use crate::clock::{Clock, Nanos, SystemClock};
use crate::config::{AccountConfig, AccountState, ApiKey, Config, Limit, ModelConfig, TokenRule};
use crate::dialect::Failure;
use crate::error::ConfigError;
use crate::faults::{Dice, LateFaults, roll_late, rule_for};
use crate::meter::{Cost, Headline, LimitLog, Quota, RefusalKind};
use crate::stats::{AccountReport, Counters, ModelReport, Rejected, StatsReport};

/// The metering state of one account × model, behind one lock.
#[derive(Debug)]
pub(crate) struct CellState {
    limits: Vec<Limit>,
    quota: Quota,
    burst: Option<BurstLog>,
    pub(crate) counters: Counters,
}

/// One account × model.
#[derive(Debug)]
pub(crate) struct Cell {
    pub(crate) model: Arc<ModelConfig>,
    pub(crate) state: Mutex<CellState>,
}

/// One account.
#[derive(Debug)]
pub(crate) struct Account {
    pub(crate) name: String,
    pub(crate) key: ApiKey,
    state: AtomicU8,
    pub(crate) cells: HashMap<String, Arc<Cell>>,
}

impl Account {
    pub(crate) fn state(&self) -> AccountState {
        match self.state.load(Ordering::Relaxed) {
            1 => AccountState::BillingExhausted,
            2 => AccountState::FreeQuotaExhausted,
            _ => AccountState::Active,
        }
    }

    pub(crate) fn set_state(&self, state: AccountState) {
        let code = match state {
            AccountState::Active => 0,
            AccountState::BillingExhausted => 1,
            AccountState::FreeQuotaExhausted => 2,
        };
        self.state.store(code, Ordering::Relaxed);
    }
}

/// Counters of requests rejected before metering.
#[derive(Debug, Default)]
struct RejectedCounters {
    bad_request: AtomicU64,
    unauthorized: AtomicU64,
    model_not_found: AtomicU64,
    echoed: AtomicU64,
    keyed: AtomicU64,
    outside_api: AtomicU64,
}

/// Which counter a rejection goes to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Rejection {
    BadRequest,
    Unauthorized,
    ModelNotFound,
    /// A 400 of the `echo_bad_request` fault.
    Echoed,
    /// A request that presented a key (any path).
    Keyed,
    /// A keyed request outside `/v1/`.
    OutsideApi,
}

/// A simulator: configuration, clock, accounts and their meters. Share it as `Arc<Sim>`.
#[derive(Debug)]
pub struct Sim {
    config: Config,
    clock: Arc<dyn Clock>,
    models: HashMap<String, Arc<ModelConfig>>,
    accounts: RwLock<HashMap<String, Arc<Account>>>,
    dice: Dice,
    next_id: AtomicU64,
    rejected: RejectedCounters,
}

/// What an admitted request will produce.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Demand {
    pub(crate) prompt: u64,
    /// Completion tokens reserved at arrival (the request's maximum).
    pub(crate) reserve_completion: u64,
    pub(crate) streaming: bool,
}

/// An admitted request. Settle it with the tokens actually produced; dropping it unsettled
/// settles with the completion tokens recorded as sent so far.
#[derive(Debug)]
pub(crate) struct Ticket {
    sim: Arc<Sim>,
    cell: Arc<Cell>,
    pub(crate) id: u64,
    at: Nanos,
    reserved: Cost,
    pub(crate) prompt: u64,
    pub(crate) sent: u64,
    pub(crate) late: LateFaults,
    pub(crate) headline: Headline,
    settled: bool,
}

impl Ticket {
    /// Settles with `self.sent` completion tokens; returns the headline after settlement.
    pub(crate) fn settle(&mut self) -> Headline {
        if self.settled {
            return self.headline;
        }
        self.settled = true;
        let now = self.sim.clock.now();
        let actual = Cost::new(0, self.prompt, self.sent);
        let mut st = self.cell.state.lock();
        match self.cell.model.token_rule {
            TokenRule::ReserveMaxTokens => {
                st.quota
                    .settle(now, self.at, self.id, self.reserved, actual)
            }
            TokenRule::ActualOnly => {
                st.quota.charge(now, actual, self.id);
            }
        }
        st.counters.prompt_tokens += self.prompt;
        st.counters.completion_tokens += self.sent;
        self.headline = st.quota.headline(now);
        self.headline
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.settle();
    }
}

/// Why a request was not admitted, with the headline for the rate-limit headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NotAdmitted {
    pub(crate) failure: Failure,
    pub(crate) headline: Headline,
    pub(crate) id: u64,
}

fn scale(window: std::time::Duration, factor: f64) -> Nanos {
    let nanos = window.as_nanos() as f64 * factor;
    (nanos.round() as Nanos).max(1)
}

impl Sim {
    /// A simulator on the system clock.
    pub fn new(config: Config) -> Result<Arc<Self>, ConfigError> {
        Self::with_clock(config, Arc::new(SystemClock::new()))
    }

    /// A simulator on `clock` (tests pass a [`crate::clock::ManualClock`]).
    pub fn with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Arc<Self>, ConfigError> {
        config.validate()?;
        let models = config
            .models
            .iter()
            .map(|m| (m.name.clone(), Arc::new(m.clone())))
            .collect();
        let sim = Sim {
            dice: Dice::new(config.seed),
            clock,
            models,
            accounts: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            rejected: RejectedCounters::default(),
            config,
        };
        {
            let mut accounts = sim.accounts.write();
            for account in &sim.config.accounts {
                accounts.insert(account.key.expose().to_owned(), sim.build_account(account));
            }
        }
        Ok(Arc::new(sim))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub(crate) fn dice(&self) -> &Dice {
        &self.dice
    }

    pub(crate) fn models(&self) -> impl Iterator<Item = &Arc<ModelConfig>> {
        self.config
            .models
            .iter()
            .filter_map(|m| self.models.get(&m.name))
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn reject(&self, why: Rejection) {
        let counter = match why {
            Rejection::BadRequest => &self.rejected.bad_request,
            Rejection::Unauthorized => &self.rejected.unauthorized,
            Rejection::ModelNotFound => &self.rejected.model_not_found,
            Rejection::Echoed => &self.rejected.echoed,
            Rejection::Keyed => &self.rejected.keyed,
            Rejection::OutsideApi => &self.rejected.outside_api,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn logs(&self, limits: &[Limit]) -> Vec<LimitLog> {
        limits
            .iter()
            .map(|l| {
                LimitLog::new(
                    l.unit,
                    l.amount,
                    scale(l.window, self.config.window_scale),
                    scale(l.window, 1.0),
                )
            })
            .collect()
    }

    fn cell_state(&self, model: &ModelConfig, limits: Vec<Limit>) -> CellState {
        CellState {
            quota: Quota::new(self.logs(&limits)),
            burst: model.burst.map(|b| {
                BurstLog::new(BurstRule {
                    window: scale(b.window, self.config.window_scale),
                    factor: b.factor,
                    floor: b.floor,
                })
            }),
            limits,
            counters: Counters::default(),
        }
    }

    fn build_account(&self, config: &AccountConfig) -> Arc<Account> {
        let cells = self
            .models()
            .map(|model| {
                let limits = config
                    .models
                    .iter()
                    .find(|am| am.model == model.name)
                    .and_then(|am| am.limits.clone())
                    .unwrap_or_else(|| model.limits.clone());
                let cell = Cell {
                    model: Arc::clone(model),
                    state: Mutex::new(self.cell_state(model, limits)),
                };
                (model.name.clone(), Arc::new(cell))
            })
            .collect();
        let account = Account {
            name: config.display_name(),
            key: config.key.clone(),
            state: AtomicU8::new(0),
            cells,
        };
        account.set_state(config.state);
        Arc::new(account)
    }

    /// The account of `key`: configured, or created on first use when any key is accepted.
    pub(crate) fn account(&self, key: &str) -> Option<Arc<Account>> {
        if let Some(account) = self.accounts.read().get(key) {
            return Some(Arc::clone(account));
        }
        if !self.config.accept_any_key || key.is_empty() {
            return None;
        }
        let mut accounts = self.accounts.write();
        let account = accounts
            .entry(key.to_owned())
            .or_insert_with(|| self.build_account(&AccountConfig::new(key)));
        Some(Arc::clone(account))
    }

    /// The account named `id`, or whose key is `id` (created if any key is accepted).
    pub(crate) fn find_account(&self, id: &str) -> Option<Arc<Account>> {
        let by_name = self
            .accounts
            .read()
            .values()
            .find(|a| a.name == id)
            .cloned();
        by_name.or_else(|| self.account(id))
    }

    /// Admits a request or says why not. Order: account state, pre-meter faults, limits, ramp-up rule.
    pub(crate) fn admit(
        self: &Arc<Self>,
        account: &Account,
        cell: &Arc<Cell>,
        demand: Demand,
    ) -> Result<Ticket, Box<NotAdmitted>> {
        let id = self.next_id();
        let model = &cell.model;
        let refuse = |st: &mut CellState, failure: Failure, now: Nanos| {
            Box::new(NotAdmitted {
                failure,
                headline: st.quota.headline(now),
                id,
            })
        };
        let rule = rule_for(
            &self.config.faults,
            &model.name,
            &account.name,
            account.key.expose(),
        );
        let early = match account.state() {
            AccountState::BillingExhausted => Some(Failure::Billing),
            AccountState::FreeQuotaExhausted => Some(Failure::FreeQuota),
            AccountState::Active => match rule {
                Some(r) if self.dice.hit(r.server_error) => Some(Failure::ServerError),
                Some(r) if self.dice.hit(r.capacity) => Some(Failure::Capacity),
                _ => None,
            },
        };
        let cost = match model.token_rule {
            TokenRule::ReserveMaxTokens => Cost::new(1, demand.prompt, demand.reserve_completion),
            // Admitted while any token is left; charged at the end.
            TokenRule::ActualOnly => Cost::new(1, 1, 0),
        };
        let mut st = cell.state.lock();
        let now = self.clock.now();
        if let Some(failure) = early {
            let c = &mut st.counters;
            match failure {
                Failure::Billing => c.refused.billing += 1,
                Failure::FreeQuota => c.refused.free_quota += 1,
                Failure::ServerError => {
                    c.refused.fault += 1;
                    c.faults.server_error += 1;
                }
                _ => {
                    c.refused.fault += 1;
                    c.faults.capacity += 1;
                }
            }
            return Err(refuse(&mut st, failure, now));
        }
        if let Err(refusal) = st.quota.check(now, cost) {
            match refusal.kind {
                RefusalKind::Requests => st.counters.refused.requests += 1,
                RefusalKind::Tokens => st.counters.refused.tokens += 1,
                RefusalKind::TooLarge => st.counters.refused.too_large += 1,
            }
            return Err(refuse(&mut st, Failure::Rate(refusal), now));
        }
        if let Some(burst) = st.burst.as_mut() {
            if let Err(wait) = burst.check(now) {
                st.counters.refused.burst += 1;
                return Err(refuse(&mut st, Failure::Burst(wait), now));
            }
            burst.record(now);
        }
        let charged = match model.token_rule {
            TokenRule::ReserveMaxTokens => cost,
            TokenRule::ActualOnly => Cost::new(1, 0, 0),
        };
        let at = st.quota.charge(now, charged, id);
        st.counters.accepted += 1;
        let late = rule
            .map(|r| roll_late(r, &self.dice, demand.streaming))
            .unwrap_or_default();
        if late.slow.is_some() {
            st.counters.faults.slow += 1;
        }
        match late.stream {
            crate::faults::StreamFault::None => {}
            crate::faults::StreamFault::Cut => st.counters.faults.stream_cut += 1,
            crate::faults::StreamFault::Error => st.counters.faults.stream_error += 1,
            crate::faults::StreamFault::MissingUsage => st.counters.faults.missing_usage += 1,
        }
        let headline = st.quota.headline(now);
        drop(st);
        Ok(Ticket {
            sim: Arc::clone(self),
            cell: Arc::clone(cell),
            id,
            at,
            reserved: charged,
            prompt: demand.prompt,
            sent: 0,
            late,
            headline,
            settled: false,
        })
    }

    /// One request of a background consumer: charged `tokens` at once, counted as background.
    pub(crate) fn background_once(&self, account: &Account, cell: &Cell, tokens: u64) {
        let id = self.next_id();
        let mut st = cell.state.lock();
        let now = self.clock.now();
        let cost = Cost::new(1, tokens, 0);
        let admitted = account.state() == AccountState::Active
            && st.quota.check(now, cost).is_ok()
            && st.burst.as_mut().is_none_or(|b| b.check(now).is_ok());
        if admitted {
            if let Some(b) = st.burst.as_mut() {
                b.record(now);
            }
            st.quota.charge(now, cost, id);
            st.counters.background_requests += 1;
            st.counters.background_tokens += tokens;
        } else {
            st.counters.background_refused += 1;
        }
    }

    /// The background consumers to run: (account, cell, rps, tokens per request).
    pub(crate) fn background_jobs(&self) -> Vec<(Arc<Account>, Arc<Cell>, f64, u64)> {
        let accounts = self.accounts.read();
        let mut jobs = Vec::new();
        for config in &self.config.accounts {
            let Some(account) = accounts.get(config.key.expose()) else {
                continue;
            };
            for am in &config.models {
                let (Some(bg), Some(cell)) = (am.background, account.cells.get(&am.model)) else {
                    continue;
                };
                if bg.rps > 0.0 {
                    jobs.push((
                        Arc::clone(account),
                        Arc::clone(cell),
                        bg.rps,
                        bg.tokens_per_request,
                    ));
                }
            }
        }
        jobs
    }

    /// The exact report of every account × model.
    pub fn stats(&self) -> StatsReport {
        let accounts: Vec<Arc<Account>> = self.accounts.read().values().cloned().collect();
        let mut report = BTreeMap::new();
        for account in accounts {
            let mut models = BTreeMap::new();
            for (name, cell) in &account.cells {
                let mut st = cell.state.lock();
                let views = st.quota.views(self.clock.now());
                models.insert(name.clone(), ModelReport::new(&st.counters, views));
            }
            report.insert(
                account.name.clone(),
                AccountReport {
                    state: account.state(),
                    models,
                },
            );
        }
        StatsReport {
            accounts: report,
            rejected: Rejected {
                bad_request: self.rejected.bad_request.load(Ordering::Relaxed),
                unauthorized: self.rejected.unauthorized.load(Ordering::Relaxed),
                model_not_found: self.rejected.model_not_found.load(Ordering::Relaxed),
                echoed: self.rejected.echoed.load(Ordering::Relaxed),
            },
            keyed_requests: self.rejected.keyed.load(Ordering::Relaxed),
            outside_api: self.rejected.outside_api.load(Ordering::Relaxed),
        }
    }

    fn for_each_cell(&self, mut f: impl FnMut(&mut CellState)) {
        let accounts: Vec<Arc<Account>> = self.accounts.read().values().cloned().collect();
        for account in accounts {
            for cell in account.cells.values() {
                f(&mut cell.state.lock());
            }
        }
    }

    /// Zeroes every counter and peak (the sliding logs, hence the quotas, are kept).
    pub fn reset_stats(&self) {
        self.for_each_cell(|st| {
            st.counters = Counters::default();
            st.quota.reset_peaks();
        });
        self.rejected.bad_request.store(0, Ordering::Relaxed);
        self.rejected.unauthorized.store(0, Ordering::Relaxed);
        self.rejected.model_not_found.store(0, Ordering::Relaxed);
        self.rejected.echoed.store(0, Ordering::Relaxed);
        self.rejected.keyed.store(0, Ordering::Relaxed);
        self.rejected.outside_api.store(0, Ordering::Relaxed);
    }

    /// Zeroes the counters and empties every log: every quota is full again.
    pub fn reset_all(&self) {
        self.reset_stats();
        let logs = |limits: &[Limit]| self.logs(limits);
        self.for_each_cell(|st| {
            st.quota = Quota::new(logs(&st.limits));
            if let Some(b) = st.burst.as_mut() {
                b.clear();
            }
        });
    }

    /// Sets the standing of the account named `account` (or with that key).
    pub fn set_account_state(&self, account: &str, state: AccountState) -> Result<(), AdminError> {
        let found = self
            .find_account(account)
            .ok_or(AdminError::UnknownAccount)?;
        found.set_state(state);
        Ok(())
    }

    /// Replaces an account's limits on `model` at run time, keeping the recorded history.
    pub fn set_account_limits(
        &self,
        account: &str,
        model: &str,
        limits: Vec<Limit>,
    ) -> Result<(), AdminError> {
        let found = self
            .find_account(account)
            .ok_or(AdminError::UnknownAccount)?;
        self.set_limits(&found, model, limits)
    }

    pub(crate) fn set_limits(
        &self,
        found: &Account,
        model: &str,
        limits: Vec<Limit>,
    ) -> Result<(), AdminError> {
        let cell = found
            .cells
            .get(model)
            .ok_or_else(|| AdminError::UnknownModel(model.to_owned()))?;
        if limits.iter().any(|l| l.amount == 0 || l.window.is_zero()) {
            return Err(AdminError::Invalid(
                "a limit needs an amount >= 1 and a window > 0".into(),
            ));
        }
        let logs = self.logs(&limits);
        let mut st = cell.state.lock();
        st.quota.replace_limits(self.clock.now(), logs);
        st.limits = limits;
        Ok(())
    }
}

/// An admin request that cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdminError {
    /// No account has that name or key.
    #[error("no account has that name or key")]
    UnknownAccount,
    /// The model is not served.
    #[error("model {0:?} is not served")]
    UnknownModel(String),
    /// A value is invalid.
    #[error("{0}")]
    Invalid(String),
}

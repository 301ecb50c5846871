//! The three ways a fleet can call the provider: `direct` (each replica on its own, the
//! SDK's retries), `split` (each replica with its own in-process limiter at limit ÷
//! replicas) and `sluice` (through the gateways).

use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use sluice_limiter::{Cost, InProcessStore, Limit, Quota, QuotaKey, Store, Window};
use tokio::time::Instant;

use crate::client::{Attempt, Outcome, RetryPolicy, attempt};
use crate::fleet::{Arrival, chat_body};
use crate::scenario::{Scenario, Unit};

/// A way of calling the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every replica calls the provider itself and retries 429s as the SDK does.
    Direct,
    /// Every replica runs its own limiter at limit ÷ replicas, then calls the provider.
    Split,
    /// The replicas call through Sluice's gateways.
    Sluice,
}

impl Mode {
    /// Its name in tables and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Split => "split",
            Mode::Sluice => "sluice",
        }
    }

    /// Parses `direct`, `split` or `sluice`.
    pub fn parse(s: &str) -> Option<Mode> {
        match s.trim() {
            "direct" => Some(Mode::Direct),
            "split" => Some(Mode::Split),
            "sluice" => Some(Mode::Sluice),
            _ => None,
        }
    }
}

/// Where the requests go.
#[derive(Clone, Debug)]
pub struct Targets {
    /// The simulator's `/v1` base URL.
    pub sim_v1: String,
    /// The provider key every replica holds in `direct` and `split`.
    pub provider_key: String,
    /// The gateways' `/v1` base URLs (for `sluice`).
    pub gateways_v1: Vec<String>,
    /// The tenant key of each service, in scenario order (for `sluice`).
    pub tenant_keys: Vec<String>,
}

/// What happened to one request.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// Service index.
    pub service: usize,
    /// Replica index in the fleet.
    pub replica: usize,
    /// Scheduled send time, from the start of the run.
    pub at: Duration,
    /// When it ended (answer complete or given up), from the start of the run.
    pub done: Duration,
    /// How it ended.
    pub outcome: Outcome,
    /// HTTP attempts made by the client.
    pub attempts: u32,
    /// 429s the client itself received from the provider (`direct`, `split`).
    pub provider_429s: u32,
    /// Prompt + completion tokens of a success.
    pub tokens: u64,
    /// `max_tokens` of the request (sets the provider's service time).
    pub output_tokens: u64,
}

/// One replica's client state for a mode.
pub struct Replica {
    mode: Mode,
    http: reqwest::Client,
    targets: Arc<Targets>,
    model: String,
    provider: crate::scenario::Provider,
    policy: RetryPolicy,
    /// `split`: this replica's own limiter and share.
    local: Option<(InProcessStore, Quota, [QuotaKey; 1])>,
    index: usize,
    next_gateway: std::sync::atomic::AtomicUsize,
}

/// The provider's quota as a limiter quota.
pub fn quota(scenario: &Scenario) -> Quota {
    let limits = scenario
        .provider
        .limits()
        .into_iter()
        .filter_map(|(unit, amount, window)| {
            let w = Window::new(window).ok()?;
            match unit {
                Unit::Requests => Limit::requests(amount, w),
                Unit::Tokens => Limit::tokens(amount, w),
            }
        })
        .collect();
    Quota::new(limits).expect("scenario limits are distinct")
}

impl Replica {
    /// The client of replica `index` in `mode`.
    pub fn new(mode: Mode, index: usize, scenario: &Scenario, targets: Arc<Targets>) -> Self {
        let local = (mode == Mode::Split).then(|| {
            let share = quota(scenario).divided(scenario.replicas());
            let key = QuotaKey::new("split/model", "key-0").expect("valid key");
            (InProcessStore::new(), share, [key])
        });
        // Below the gateway's idle close (`server.header_timeout`, 10 s), so that a
        // request is never sent on a connection the gateway is closing.
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        Self {
            mode,
            http,
            targets,
            model: scenario.provider.model.clone(),
            provider: scenario.provider.clone(),
            policy: RetryPolicy::default(),
            local,
            index,
            next_gateway: std::sync::atomic::AtomicUsize::new(index),
        }
    }

    /// Sends `a` (at its scheduled instant `start + a.at`) and follows it to the end.
    pub async fn run(&self, a: &Arrival, start: Instant) -> Record {
        let sent = start + a.at;
        let until = sent + a.deadline;
        let body = chat_body(&self.model, a.prompt_tokens, a.output_tokens);
        let mut rng = StdRng::seed_from_u64((a.at.as_nanos() as u64) ^ (self.index as u64) << 48);
        let mut rec = Record {
            service: a.service,
            replica: a.replica,
            at: a.at,
            done: a.at,
            outcome: Outcome::Error,
            attempts: 0,
            provider_429s: 0,
            tokens: 0,
            output_tokens: a.output_tokens,
        };
        let mut retries = 0;
        rec.outcome = loop {
            // `split`: wait for a slot of this replica's share first.
            if let Some((store, share, key)) = &self.local {
                let left = until
                    .saturating_duration_since(Instant::now())
                    .saturating_sub(self.margin(a));
                let cost = Cost::request(a.prompt_tokens, a.output_tokens);
                match store.acquire(key, share, cost, left).await {
                    Ok(sluice_limiter::Decision::Granted(slot)) => {
                        tokio::time::sleep(slot.wait).await
                    }
                    _ => break Outcome::RateLimited,
                }
            }
            let (url, bearer, extra) = self.route(a, until);
            rec.attempts += 1;
            let got = attempt(&self.http, &url, bearer, &extra, &body, until).await;
            let headers = match got {
                Attempt::Ok { total_tokens } => {
                    rec.tokens = total_tokens;
                    break Outcome::Ok;
                }
                Attempt::Failed { timed_out: true } => break Outcome::Deadline,
                Attempt::Failed { timed_out: false } => None,
                Attempt::Status { status, headers } => {
                    if status == 429 && self.mode != Mode::Sluice {
                        rec.provider_429s += 1;
                    }
                    if !RetryPolicy::retries_status(status) {
                        break Outcome::Error;
                    }
                    Some((status, headers))
                }
            };
            let give_up = match &headers {
                Some((429, _)) => Outcome::RateLimited,
                _ => Outcome::Error,
            };
            if retries >= self.policy.max_retries {
                break give_up;
            }
            let delay = self
                .policy
                .delay(retries, headers.as_ref().map(|h| &h.1), &mut rng);
            if Instant::now() + delay >= until {
                break give_up;
            }
            retries += 1;
            tokio::time::sleep(delay).await;
        };
        let now = Instant::now();
        rec.done = now.saturating_duration_since(start).min(a.at + a.deadline);
        if rec.outcome == Outcome::Ok && now > until {
            rec.outcome = Outcome::Deadline;
        }
        rec
    }

    /// The time a client keeps for the answer itself when it tells a limiter how long it
    /// may queue: twice the provider's usual time for this size, plus 20 ms.
    fn margin(&self, a: &Arrival) -> Duration {
        self.provider.service_time(a.output_tokens) * 2 + Duration::from_millis(20)
    }

    fn route(&self, a: &Arrival, until: Instant) -> (String, &str, Vec<(&'static str, String)>) {
        match self.mode {
            Mode::Direct | Mode::Split => (
                format!("{}/chat/completions", self.targets.sim_v1),
                self.targets.provider_key.as_str(),
                Vec::new(),
            ),
            Mode::Sluice => {
                let g = &self.targets.gateways_v1;
                let i = self
                    .next_gateway
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    % g.len();
                let wait = until
                    .saturating_duration_since(Instant::now())
                    .saturating_sub(self.margin(a));
                (
                    format!("{}/chat/completions", g[i]),
                    self.targets.tenant_keys[a.service].as_str(),
                    vec![("x-sluice-max-wait", format!("{}ms", wait.as_millis()))],
                )
            }
        }
    }
}

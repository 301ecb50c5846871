//! A test rig: a store on a manual clock, in process or on a real `redis-server`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config as ProptestConfig, TestCaseResult, TestRunner};

use sluice_limiter::{
    Cost, Decision, InProcessStore, Limit, ManualClock, Pacing, Quota, QuotaKey, RedisOptions,
    RedisStore, Refusal, Reservation, Store, Timestamp, Window,
};
use sluice_testkit::RedisServer;

/// A current-thread runtime, for what runs outside an async test (proptest's runner
/// calls each case synchronously).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Options for a Redis store on `clock`, with the default key prefix.
pub fn redis_options(clock: &ManualClock) -> RedisOptions {
    RedisOptions {
        clock: Some(Arc::new(clock.clone())),
        timeout: Duration::from_secs(5),
        ..RedisOptions::default()
    }
}

/// Runs `cases` property cases drawn from `strategy` on one `redis-server` (a server
/// per case would dominate the run time): case `n` gets its own store, on its own manual
/// clock at [`T0`], its keys under the prefix `{prefix}{n}`; a failing case panics with
/// proptest's minimal input.
pub fn redis_cases<S: Strategy>(
    prefix: &str,
    cases: u32,
    strategy: S,
    case: impl Fn(S::Value, &tokio::runtime::Runtime, &RedisStore, &ManualClock) -> TestCaseResult,
) {
    let server = RedisServer::start();
    let url = server.url();
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        ..ProptestConfig::default()
    });
    let n = AtomicU64::new(0);
    let result = runner.run(&strategy, |value| {
        let n = n.fetch_add(1, Ordering::Relaxed);
        let clock = ManualClock::new(Timestamp::from_micros(T0));
        let options = RedisOptions {
            key_prefix: format!("{prefix}{n}"),
            ..redis_options(&clock)
        };
        let rt = runtime();
        let store = rt
            .block_on(async { RedisStore::new(&url, options) })
            .unwrap();
        case(value, &rt, &store, &clock)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// How many times `command` (lower case: `evalsha`, `hmget`) ran on `server` since its
/// statistics were last reset, from `INFO commandstats` (0 when never).
pub fn command_calls(server: &RedisServer, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    server
        .cli(&["INFO", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// A start time aligned with every bucket of the windows the tests use.
pub const T0: u64 = 1_800_000_000_000_000;

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

/// A window of `n` milliseconds.
pub fn window(n: u64) -> Window {
    Window::new(ms(n)).unwrap()
}

/// A quota with 10 buckets per window and no pacing unless asked.
pub fn quota(limits: Vec<Limit>) -> Quota {
    Quota::new(limits)
        .unwrap()
        .with_buckets(10)
        .unwrap()
        .with_pacing(Pacing::Off)
        .unwrap()
}

pub fn key(name: &str) -> QuotaKey {
    QuotaKey::new("test/model", name).unwrap()
}

pub fn one() -> Cost {
    Cost::request(0, 0)
}

pub fn tokens(n: u64) -> Cost {
    Cost::request(n, 0)
}

/// A store on a manual clock, with the server it needs (if any), kept alive as long
/// as the rig.
pub struct Rig<S> {
    pub store: S,
    pub clock: ManualClock,
    _server: Option<RedisServer>,
}

impl Rig<InProcessStore> {
    pub fn memory() -> Self {
        let clock = ManualClock::new(Timestamp::from_micros(T0));
        Self {
            store: InProcessStore::with_clock(Arc::new(clock.clone())),
            clock,
            _server: None,
        }
    }
}

impl Rig<RedisStore> {
    pub fn redis() -> Self {
        let server = RedisServer::start();
        let clock = ManualClock::new(Timestamp::from_micros(T0));
        Self {
            store: RedisStore::new(&server.url(), redis_options(&clock)).unwrap(),
            clock,
            _server: Some(server),
        }
    }
}

impl<S: Store> Rig<S> {
    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }

    pub fn now(&self) -> u64 {
        use sluice_limiter::Clock;
        self.clock.now().as_micros()
    }

    pub async fn decide(&self, q: &Quota, cost: Cost, max_wait: Duration) -> Decision {
        self.store
            .acquire(&[key("a")], q, cost, max_wait)
            .await
            .unwrap()
    }

    /// Acquires without waiting and expects a grant.
    pub async fn grant(&self, q: &Quota, cost: Cost) -> Reservation {
        match self.decide(q, cost, Duration::ZERO).await {
            Decision::Granted(r) => r,
            Decision::Refused(r) => panic!("expected a grant at +{}us, got {r:?}", self.now() - T0),
        }
    }

    /// Acquires without waiting and expects a refusal.
    pub async fn refuse(&self, q: &Quota, cost: Cost) -> Refusal {
        match self.decide(q, cost, Duration::ZERO).await {
            Decision::Refused(r) => r,
            Decision::Granted(r) => {
                panic!("expected a refusal at +{}us, got {r:?}", self.now() - T0)
            }
        }
    }

    pub async fn used(&self, q: &Quota) -> Vec<u64> {
        let status = self.store.status(&key("a"), q).await.unwrap();
        status.limits.iter().map(|l| l.used).collect()
    }
}

/// Instantiates each named async test for both backends.
macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(crate::support::Rig::memory()).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(crate::support::Rig::redis()).await
                }
            )*
        }
    };
}
pub(crate) use for_each_backend;

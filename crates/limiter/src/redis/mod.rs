//! [`RedisStore`]: the shared limiter, one Lua script call per decision, on a
//! standalone Redis, a Redis Cluster or a primary found through Redis Sentinel.

mod connection;
mod fold;
mod script;

pub use connection::RedisConnection;

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use crate::LimitStatus;
use crate::breaker::{Breaker, Permit};
use crate::decision::{
    Budget, Decision, Left, Origin, QuotaStatus, Refusal, RefusalReason, ReleaseOutcome,
    Reservation, ReservationId,
};
use crate::error::{LimitError, StoreError};
use crate::fair::{Priority, Share};
use crate::quota::{Cost, LimitId, Pacing, Quota, QuotaKey, Unit};
use crate::store::{StateChange, Store};
use crate::time::{Clock, Timestamp, duration_micros};
use crate::window::{AUTO_PACING_MAX_WINDOW_US, STATE_TTL_US, windows_ttl_after};

use connection::{Connections, Target};
use script::{LuaScript, Scripts};

/// How the Redis store connects and protects itself.
#[derive(Clone)]
pub struct RedisOptions {
    /// The longest a decision may wait for Redis before it counts as a failure.
    pub timeout: Duration,
    /// How many multiplexed connections to spread decisions over.
    pub connections: usize,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_threshold: u32,
    /// How long the breaker stays open before one probe is let through.
    pub breaker_open_for: Duration,
    /// The first part of every key (`sluice` gives `sluice:{group}:w:name`).
    pub key_prefix: String,
    /// Where time comes from: `None` reads Redis `TIME` in the scripts (production);
    /// tests pass a [`ManualClock`](crate::ManualClock).
    pub clock: Option<Arc<dyn Clock>>,
    /// How long a reconcile waits for the next acquire on its model to carry it (one
    /// script call for both) before it is sent alone; zero sends every reconcile at
    /// once. Its future resolves once Redis has applied it either way.
    pub carry_reconciles_within: Duration,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("timeout", &self.timeout)
            .field("connections", &self.connections)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_open_for", &self.breaker_open_for)
            .field("key_prefix", &self.key_prefix)
            .field("clock", &self.clock.as_ref().map(|_| "injected"))
            .field("carry_reconciles_within", &self.carry_reconciles_within)
            .finish()
    }
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(100),
            connections: 2,
            breaker_threshold: 3,
            breaker_open_for: Duration::from_secs(1),
            key_prefix: "sluice".to_owned(),
            clock: None,
            carry_reconciles_within: Duration::from_millis(1),
        }
    }
}

/// The limiter on Redis: every decision is one atomic script call, so any number of
/// replicas share one exact budget.
pub struct RedisStore {
    conns: Connections,
    scripts: Scripts,
    options: RedisOptions,
    breaker: Breaker,
    /// Reconciles waiting for an acquire to carry them.
    waiting: fold::Waiting,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.options.timeout)
            .field("key_prefix", &self.options.key_prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store for `url`: `redis://` or `rediss://` for one server,
    /// `redis+cluster://h1:p1,h2:p2` (or `rediss+cluster://`) for a cluster,
    /// `redis+sentinel://s1:p1,s2:p2/<master name>` (or `rediss+sentinel://`) for the
    /// primary Redis Sentinel names (each new connection asks the Sentinels again, so
    /// the store follows a failover).
    /// Nothing is dialled until the first decision.
    pub fn new(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        let target = Target::parse(url).map_err(StoreError::Pool)?;
        let conns = Connections::new(&target, options.connections, options.timeout)?;
        Ok(Self {
            conns,
            scripts: Scripts::new(),
            breaker: Breaker::new(options.breaker_threshold, options.breaker_open_for),
            options,
            waiting: fold::Waiting::default(),
        })
    }

    /// Whether the breaker is open (Redis is treated as down).
    pub fn is_degraded(&self) -> bool {
        self.breaker.is_open()
    }

    /// Sends `PING`; for readiness probes.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut handle = self.handle().await?;
        match tokio::time::timeout(
            self.options.timeout,
            connection::query(&mut handle, &redis::cmd("PING")),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.conns.discard();
                Err(StoreError::Redis(e))
            }
            Err(_) => {
                self.conns.discard();
                Err(StoreError::Timeout(self.options.timeout))
            }
        }
    }

    /// Sends `PING` through the circuit breaker: refused at once while it is open,
    /// and when it lets a probe through, the answer closes or reopens it. Unlike a
    /// script, a `PING` that times out but runs later changes nothing, so this is how
    /// the `local` fallback learns that Redis is back before it writes anything.
    pub(crate) async fn probe(&self) -> Result<(), StoreError> {
        if self.breaker.permit() == Permit::Reject {
            return Err(StoreError::CircuitOpen);
        }
        match self.ping().await {
            Ok(()) => {
                if self.breaker.success() {
                    tracing::info!("redis answers again; circuit breaker closed");
                }
                Ok(())
            }
            Err(e) => {
                metrics::counter!("sluice_limiter_store_errors_total", "kind" => error_kind(&e))
                    .increment(1);
                if self.breaker.failure() {
                    tracing::warn!(error = %e, "redis unavailable; circuit breaker open");
                }
                Err(e)
            }
        }
    }

    /// Adds per-limit `charges` (in `quota`'s limit order) to the account's buckets of
    /// `ahead` from now (Redis's now), unchecked (`sluice_record_v4`), plus `if_fresh`
    /// when Redis lost the account's windows: the key is missing or has no queue tail
    /// (a reconcile after a restart recreates it without one), or its tail is before
    /// `booked` from now, a slot this replica knows Redis gave it (less the client
    /// timeout: the reply came at most that late). Limits charged 0 are not touched,
    /// and the windows key's TTL is only ever lengthened, to `quota`'s longest window
    /// past the charge. Returns true when the account's windows were lost.
    pub(crate) async fn record_charges(
        &self,
        key: &QuotaKey,
        quota: &Quota,
        charges: &[u64],
        if_fresh: &[u64],
        ahead: Duration,
        booked: Duration,
    ) -> Result<bool, StoreError> {
        let keys = [self.key("w", key)];
        let mut args = Vec::with_capacity(5 + 5 * quota.limits().len());
        args.push(self.now_arg());
        args.push(ms(windows_ttl_after(quota)));
        args.push(duration_micros(ahead).to_string());
        args.push(duration_micros(booked.saturating_sub(self.options.timeout)).to_string());
        args.push(quota.limits().len().to_string());
        for (i, l) in quota.limits().iter().enumerate() {
            args.push(l.id().as_str().to_owned());
            args.push(l.window().micros().to_string());
            args.push(quota.bucket_micros(i).to_string());
            args.push(charges.get(i).copied().unwrap_or(0).to_string());
            args.push(if_fresh.get(i).copied().unwrap_or(0).to_string());
        }
        let reply = self.call(&self.scripts.record, &keys, &args).await?;
        Ok(int(&reply)? == 2)
    }

    async fn handle(&self) -> Result<connection::Handle, StoreError> {
        match tokio::time::timeout(self.options.timeout, self.conns.handle()).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(self.options.timeout)),
        }
    }

    fn key(&self, kind: &str, key: &QuotaKey) -> String {
        format!(
            "{}:{{{}}}:{kind}:{}",
            self.options.key_prefix,
            key.group(),
            key.name()
        )
    }

    /// The tail index of `key`'s group (acquire.lua, release.lua): a lower bound of each
    /// account's tail, so that an acquire skips the accounts that cannot do better.
    fn tails_key(&self, key: &QuotaKey) -> String {
        format!("{}:{{{}}}:tails", self.options.key_prefix, key.group())
    }

    fn now_arg(&self) -> String {
        self.options
            .clock
            .as_ref()
            .map(|c| c.now().as_micros().to_string())
            .unwrap_or_default()
    }

    async fn call(
        &self,
        script: &LuaScript,
        keys: &[String],
        args: &[String],
    ) -> Result<Value, StoreError> {
        if self.breaker.permit() == Permit::Reject {
            return Err(StoreError::CircuitOpen);
        }
        // Boxed: the connection and script futures take kilobytes, and every future that
        // awaits a store (the in-process one included, through `Limiter`) would carry
        // them inline and copy them on each move.
        let result = Box::pin(async {
            let mut handle = self.handle().await?;
            let call = script.invoke(&mut handle, keys, args);
            match tokio::time::timeout(self.options.timeout, call).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => {
                    if is_unavailable(&e) && !is_full(&e) {
                        self.conns.discard();
                    }
                    Err(StoreError::Redis(e))
                }
                Err(_) => {
                    self.conns.discard();
                    Err(StoreError::Timeout(self.options.timeout))
                }
            }
        })
        .await;
        match &result {
            Ok(_) => {
                if self.breaker.success() {
                    tracing::info!("redis answers again; circuit breaker closed");
                }
            }
            Err(StoreError::Redis(e)) if !is_unavailable(e) => {
                tracing::error!(script = script.name, error = %e, "script failed");
            }
            Err(e) => {
                metrics::counter!("sluice_limiter_store_errors_total", "kind" => error_kind(e))
                    .increment(1);
                if self.breaker.failure() {
                    tracing::warn!(error = %e, "redis unavailable; circuit breaker open");
                }
            }
        }
        result
    }
}

/// True for errors that say Redis is unreachable, rather than that a command was wrong.
/// A full Redis (`OOM command not allowed when used memory > 'maxmemory'`, see
/// [`is_full`]) counts: it cannot record a decision, so the breaker and the `on_error`
/// policy apply as when it is down. So do the Sentinels naming no primary that answers
/// as one (between a primary's failure and its replica's promotion).
fn is_unavailable(e: &redis::RedisError) -> bool {
    is_full(e)
        || e.kind() == redis::ErrorKind::MasterNameNotFoundBySentinel
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                redis::ServerErrorKind::BusyLoading
                    | redis::ServerErrorKind::TryAgain
                    | redis::ServerErrorKind::ClusterDown
                    | redis::ServerErrorKind::MasterDown
                    | redis::ServerErrorKind::ReadOnly
            )
        )
}

/// True when Redis refused a write because it reached `maxmemory` (with a
/// `noeviction` policy): the `OOM` error code, which a script's failed write carries
/// too.
fn is_full(e: &redis::RedisError) -> bool {
    e.code() == Some("OOM")
}

fn error_kind(e: &StoreError) -> &'static str {
    match e {
        StoreError::Timeout(_) => "timeout",
        StoreError::CircuitOpen => "circuit_open",
        StoreError::Redis(e) if is_full(e) => "full",
        StoreError::Redis(_) => "redis",
        StoreError::Pool(_) => "pool",
        StoreError::Protocol(_) => "protocol",
    }
}

/// ARGV rows for `quota`: id, window, bucket width, limit, then two per-script values.
fn limit_rows(quota: &Quota, mut extra: impl FnMut(usize) -> [u64; 2]) -> Vec<String> {
    let mut args = Vec::with_capacity(quota.limits().len() * 6);
    for (i, l) in quota.limits().iter().enumerate() {
        let [a, b] = extra(i);
        args.push(l.id().as_str().to_owned());
        args.push(l.window().micros().to_string());
        args.push(quota.bucket_micros(i).to_string());
        args.push(l.amount().to_string());
        args.push(a.to_string());
        args.push(b.to_string());
    }
    args
}

fn auto_eligible(quota: &Quota, i: usize) -> u64 {
    let l = &quota.limits()[i];
    u64::from(l.unit() == Unit::Requests && l.window().micros() <= AUTO_PACING_MAX_WINDOW_US)
}

fn pacing_args(quota: &Quota) -> [String; 3] {
    let (mode, interval, burst) = match quota.pacing() {
        Pacing::Off => (0, 0, 0),
        Pacing::Auto => (1, 0, 0),
        Pacing::Fixed { interval, burst } => (2, duration_micros(interval), u64::from(burst)),
    };
    [mode.to_string(), interval.to_string(), burst.to_string()]
}

fn ms(us: u64) -> String {
    us.div_ceil(1000).to_string()
}

fn items(v: &Value) -> Result<&[Value], StoreError> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(StoreError::Protocol(format!(
            "expected an array, got {other:?}"
        ))),
    }
}

fn int(v: &Value) -> Result<i64, StoreError> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::Protocol("expected an integer".into())),
        other => Err(StoreError::Protocol(format!(
            "expected an integer, got {other:?}"
        ))),
    }
}

fn uint(v: &Value) -> Result<u64, StoreError> {
    Ok(int(v)?.max(0) as u64)
}

fn text(v: &Value) -> Result<String, StoreError> {
    match v {
        Value::BulkString(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(StoreError::Protocol(format!(
            "expected text, got {other:?}"
        ))),
    }
}

fn remaining(quota: &Quota, tail: &[Value]) -> Result<Budget, StoreError> {
    let n = quota.limits().len();
    if tail.len() != 2 * n {
        return Err(StoreError::Protocol(format!(
            "expected {} budget values, got {}",
            2 * n,
            tail.len()
        )));
    }
    (0..n)
        .map(|i| {
            Ok(Left {
                remaining: uint(&tail[i])?,
                effective: uint(&tail[n + i])?,
            })
        })
        .collect()
}

fn reason(quota: &Quota, binding: i64) -> RefusalReason {
    match binding {
        2 => RefusalReason::Cooldown,
        3 => RefusalReason::Pacing,
        4 => RefusalReason::FairShare,
        b if b >= 11 => quota
            .limits()
            .get((b - 11) as usize)
            .map_or(RefusalReason::Queue, |l| {
                RefusalReason::Limit(l.id().clone())
            }),
        _ => RefusalReason::Queue,
    }
}

fn candidate(v: &Value, candidates: &[QuotaKey]) -> Result<usize, StoreError> {
    let c = int(v)?;
    usize::try_from(c - 1)
        .ok()
        .filter(|&c| c < candidates.len())
        .ok_or_else(|| StoreError::Protocol(format!("candidate {c} out of range")))
}

impl RedisStore {
    /// One reconcile in its own script call; returns `reconcile.lua`'s reply.
    async fn reconcile_alone(
        &self,
        quota: &Quota,
        keys: [String; 2],
        slot: u64,
        amounts: &[u64],
    ) -> Result<i64, StoreError> {
        let mut args = vec![
            self.now_arg(),
            slot.to_string(),
            ms(duration_micros(quota.reconcile_window())),
            ms(windows_ttl_after(quota)),
            quota.limits().len().to_string(),
        ];
        args.extend(limit_rows(quota, |i| [amounts[2 * i], amounts[2 * i + 1]]));
        let reply = self.call(&self.scripts.reconcile, &keys, &args).await?;
        int(&reply)
    }

    /// Answers the reconciles an acquire carried from the last values of its `reply`
    /// (`None`, sent again alone, when they are missing) and returns the rest.
    fn answer_carried(reply: Value, carried: Vec<fold::Carried>) -> Result<Value, StoreError> {
        if carried.is_empty() {
            return Ok(reply);
        }
        match reply {
            Value::Array(mut items) if items.len() >= carried.len() => {
                let outcomes = items.split_off(items.len() - carried.len());
                for (c, o) in carried.into_iter().zip(outcomes) {
                    c.answer(int(&o).ok());
                }
                Ok(Value::Array(items))
            }
            other => {
                carried.into_iter().for_each(|c| c.answer(None));
                Err(StoreError::Protocol(format!(
                    "unexpected acquire reply {other:?}"
                )))
            }
        }
    }

    fn decode_acquire(
        &self,
        reply: &Value,
        candidates: &[QuotaKey],
        quota: &Quota,
        cost: Cost,
    ) -> Result<Decision, LimitError> {
        let r = items(reply)?;
        let status = r.first().map(int).transpose()?;
        match (status, r.len()) {
            (Some(1), len) if len >= 5 => {
                let c = candidate(&r[1], candidates)?;
                Ok(Decision::Granted(Reservation {
                    id: ReservationId::random(),
                    key: candidates[c].clone(),
                    candidate: c,
                    slot: Timestamp::from_micros(uint(&r[2])?),
                    wait: Duration::from_micros(uint(&r[3])?),
                    cost,
                    remaining: remaining(quota, &r[5..])?,
                    origin: Origin::Shared,
                }))
            }
            (Some(0), len) if len >= 4 => Ok(Decision::Refused(Refusal {
                candidate: candidate(&r[1], candidates)?,
                retry_after: Some(Duration::from_micros(uint(&r[2])?)),
                reason: reason(quota, int(&r[3])?),
                remaining: remaining(quota, &r[4..])?,
            })),
            (Some(2), 3) => Ok(Decision::Refused(Refusal {
                candidate: candidate(&r[1], candidates)?,
                retry_after: None,
                reason: RefusalReason::Disabled(text(&r[2])?),
                remaining: Budget::default(),
            })),
            (Some(3), 4) => {
                let i = usize::try_from(int(&r[1])? - 1).unwrap_or(usize::MAX);
                let limit: LimitId = quota
                    .limits()
                    .get(i)
                    .map(|l| l.id().clone())
                    .ok_or_else(|| StoreError::Protocol("limit index out of range".into()))?;
                Err(LimitError::InsufficientCapacity {
                    limit,
                    capacity: uint(&r[2])?,
                    cost: uint(&r[3])?,
                })
            }
            _ => Err(StoreError::Protocol(format!("unexpected acquire reply {reply:?}")).into()),
        }
    }
}

impl Store for RedisStore {
    async fn acquire_for(
        &self,
        candidates: &[QuotaKey],
        quota: &Quota,
        cost: Cost,
        max_wait: Duration,
        share: Option<&Share>,
    ) -> Result<Decision, LimitError> {
        let Some(first) = candidates.first() else {
            return Err(LimitError::NoCandidates);
        };
        for l in quota.limits() {
            let charge = l.charge(&cost);
            if charge > l.amount() {
                return Err(LimitError::InsufficientCapacity {
                    limit: l.id().clone(),
                    capacity: l.amount(),
                    cost: charge,
                });
            }
        }
        let mut keys = Vec::with_capacity(candidates.len() * 2);
        for k in candidates {
            if k.group() != first.group() {
                return Err(StoreError::Protocol(format!(
                    "candidates of one acquire must share a group: {} and {}",
                    first.group(),
                    k.group()
                ))
                .into());
            }
            keys.push(self.key("w", k));
            keys.push(self.key("s", k));
        }
        let carried = self.waiting.take_for(first.group(), quota);
        let [mode, interval, burst] = pacing_args(quota);
        let mut args = vec![
            self.now_arg(),
            duration_micros(max_wait).to_string(),
            cost.requests.to_string(),
            if cost == Cost::ZERO { "1" } else { "0" }.to_owned(),
            mode,
            interval,
            burst,
            ms(windows_ttl_after(quota)),
            quota.limits().len().to_string(),
            carried.len().to_string(),
            ms(duration_micros(quota.reconcile_window())),
        ];
        args.extend(limit_rows(quota, |i| {
            [quota.limits()[i].charge(&cost), auto_eligible(quota, i)]
        }));
        for c in &carried {
            keys.extend(c.keys.iter().cloned());
            args.push(c.slot.to_string());
            args.extend(c.amounts.iter().map(u64::to_string));
        }
        if let Some(share) = share {
            let group =
                |kind: &str| format!("{}:{{{}}}:{kind}", self.options.key_prefix, first.group());
            keys.push(group("f"));
            keys.push(group("fc"));
            args.push(share.tenant().to_owned());
            args.push(share.weight().to_string());
            let class = match share.priority() {
                Priority::Interactive => "i",
                Priority::Batch => "b",
            };
            args.push(class.to_owned());
            args.push(crate::fair::TAG_SCALE.to_string());
            args.push(crate::fair::HORIZON.to_string());
            args.push(share.reserve().to_string());
        }
        keys.push(self.tails_key(first));
        let reply = match self.call(&self.scripts.acquire, &keys, &args).await {
            Ok(reply) => Self::answer_carried(reply, carried)?,
            Err(e) => {
                // Each is sent again alone (idempotent: applied once at most).
                carried.into_iter().for_each(|c| c.answer(None));
                return Err(e.into());
            }
        };
        self.decode_acquire(&reply, candidates, quota, cost)
    }

    async fn reconcile(
        &self,
        quota: &Quota,
        reservation: &Reservation,
        actual: Cost,
    ) -> Result<(), LimitError> {
        let keys = [
            self.key("w", &reservation.key),
            format!("{}:{}", self.key("r", &reservation.key), reservation.id),
        ];
        let amounts: Vec<u64> = quota
            .limits()
            .iter()
            .flat_map(|l| [l.charge(&reservation.cost), l.charge(&actual)])
            .collect();
        let within = self.options.carry_reconciles_within;
        let group = reservation.key.group();
        let slot = reservation.slot.as_micros();
        let left = if within.is_zero() {
            None
        } else {
            self.waiting
                .leave(group, quota, keys.clone(), slot, amounts.clone())
        };
        let outcome = match left {
            None => None,
            Some(mut left) => match tokio::time::timeout(within, &mut left.answer).await {
                Ok(answer) => answer.ok().flatten(),
                // Not carried in time: sent alone, unless an acquire took it meanwhile.
                Err(_) => match self.waiting.take_back(group, left.ticket) {
                    Some(_) => None,
                    None => left.answer.await.ok().flatten(),
                },
            },
        };
        let outcome = match outcome {
            Some(outcome) => outcome,
            None => self.reconcile_alone(quota, keys, slot, &amounts).await?,
        };
        if outcome == 4 {
            metrics::counter!("sluice_limiter_late_reconciles_total").increment(1);
            tracing::warn!(
                account = reservation.key.name(),
                "reconcile after the reconcile window ignored"
            );
        }
        Ok(())
    }

    async fn release(
        &self,
        quota: &Quota,
        reservation: &Reservation,
    ) -> Result<ReleaseOutcome, LimitError> {
        let keys = [
            self.key("w", &reservation.key),
            format!("{}:{}", self.key("r", &reservation.key), reservation.id),
            self.tails_key(&reservation.key),
        ];
        let mark_ttl =
            2 * quota.longest_window().micros() + duration_micros(reservation.wait) + 1_000_000;
        let mut args = Vec::with_capacity(4 + 2 * quota.limits().len());
        args.push(self.now_arg());
        args.push(reservation.slot.as_micros().to_string());
        args.push(ms(mark_ttl));
        args.push(quota.limits().len().to_string());
        for l in quota.limits() {
            args.push(l.id().as_str().to_owned());
            args.push(l.charge(&reservation.cost).to_string());
        }
        let reply = self.call(&self.scripts.release, &keys, &args).await?;
        match int(&reply)? {
            1 => Ok(ReleaseOutcome::Reusable),
            2 => Ok(ReleaseOutcome::Passed),
            3 => Ok(ReleaseOutcome::AlreadySettled),
            other => Err(StoreError::Protocol(format!("unexpected release reply {other}")).into()),
        }
    }

    async fn record_usage(
        &self,
        key: &QuotaKey,
        quota: &Quota,
        cost: Cost,
    ) -> Result<(), LimitError> {
        let charges: Vec<u64> = quota.limits().iter().map(|l| l.charge(&cost)).collect();
        Ok(self
            .record_charges(key, quota, &charges, &[], Duration::ZERO, Duration::ZERO)
            .await
            .map(|_| ())?)
    }

    async fn update(
        &self,
        key: &QuotaKey,
        quota: &Quota,
        change: StateChange,
    ) -> Result<(), LimitError> {
        let (op, value, amount) = match change {
            StateChange::Cooldown(d) => ("cool", duration_micros(d).to_string(), String::new()),
            StateChange::ClearCooldown => ("uncool", String::new(), String::new()),
            StateChange::EffectiveLimit { limit, value } => (
                "eff",
                limit.as_str().to_owned(),
                value
                    .map(|v| v.clamp(1, crate::quota::MAX_CHARGE).to_string())
                    .unwrap_or_default(),
            ),
            StateChange::PacingFactor(pm) => ("pace", pm.to_string(), String::new()),
            StateChange::Disable(reason) => ("off", reason, String::new()),
            StateChange::Enable => ("on", String::new(), String::new()),
        };
        let keys = [self.key("w", key), self.key("s", key)];
        let [mode, interval, burst] = pacing_args(quota);
        let mut args = vec![
            self.now_arg(),
            op.to_owned(),
            value,
            amount,
            ms(STATE_TTL_US),
            ms(windows_ttl_after(quota)),
            mode,
            interval,
            burst,
            quota.limits().len().to_string(),
        ];
        args.extend(limit_rows(quota, |i| [0, auto_eligible(quota, i)]));
        self.call(&self.scripts.update, &keys, &args).await?;
        Ok(())
    }

    async fn status(&self, key: &QuotaKey, quota: &Quota) -> Result<QuotaStatus, LimitError> {
        let keys = [self.key("w", key), self.key("s", key)];
        let mut args = vec![self.now_arg(), quota.limits().len().to_string()];
        args.extend(limit_rows(quota, |_| [0, 0]));
        let reply = self.call(&self.scripts.status, &keys, &args).await?;
        let r = items(&reply)?;
        let n = quota.limits().len();
        if r.len() != 4 + 2 * n {
            return Err(StoreError::Protocol(format!("unexpected status reply {reply:?}")).into());
        }
        let cooldown = uint(&r[0])?;
        let disabled = text(&r[1])?;
        let limits = quota
            .limits()
            .iter()
            .enumerate()
            .map(|(i, l)| {
                Ok(LimitStatus {
                    limit: l.id().clone(),
                    unit: l.unit(),
                    window: l.window(),
                    configured: l.amount(),
                    used: uint(&r[4 + i])?,
                    effective: uint(&r[4 + n + i])?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(QuotaStatus {
            limits,
            cooldown: (cooldown > 0).then(|| Duration::from_micros(cooldown)),
            disabled: (!disabled.is_empty()).then_some(disabled),
            pacing_permille: u32::try_from(uint(&r[2])?).unwrap_or(u32::MAX),
            booked_ahead: Duration::from_micros(uint(&r[3])?),
        })
    }
}

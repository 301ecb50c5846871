//! Redis failing under the limiter: killed and restarted, paused, scripts flushed; and
//! keys that must expire.

use std::sync::Arc;
use std::time::Duration;

use sluice_limiter::{
    Cost, Decision, InProcessStore, Limit, Limiter, ManualClock, OnError, Origin, Quota, QuotaKey,
    RedisOptions, RefusalReason, StateChange, Store, Timestamp, Window,
};
use sluice_testkit::RedisServer;

use crate::support::{T0, key, one, quota, tokens};

fn options() -> RedisOptions {
    RedisOptions {
        timeout: Duration::from_millis(300),
        breaker_threshold: 1,
        breaker_open_for: Duration::from_millis(50),
        ..RedisOptions::default()
    }
}

/// 10 requests per day: long enough that no test depends on the wall clock, and no
/// bucket boundary (every 2.4 h) passes during a test. A decision after one would start
/// by dropping buckets (`HDEL`), a write a full Redis allows, after which it allows the
/// script's other writes too: the tests of a full Redis need every write refused.
fn per_day() -> sluice_limiter::Quota {
    quota(vec![
        sluice_limiter::Limit::requests(10, Window::secs(86_400).unwrap()).unwrap(),
    ])
}

async fn origin_of(limiter: &Limiter) -> Result<Origin, RefusalReason> {
    let d = limiter
        .acquire(&[key("a")], &per_day(), one(), Duration::ZERO)
        .await
        .unwrap();
    match d {
        Decision::Granted(r) => Ok(r.origin),
        Decision::Refused(r) => Err(r.reason),
    }
}

/// Kills Redis under a limiter with `policy`, checks the degraded decisions with
/// `check`, restarts Redis empty and waits for shared decisions to come back; Redis
/// then holds the decision after the restart plus `handed_back` local grants.
async fn kill_and_restart(policy: OnError, handed_back: u64, check: impl AsyncFnOnce(&Limiter)) {
    let mut server = RedisServer::start();
    let limiter = Limiter::redis(&server.url(), options(), policy, 2).unwrap();
    assert_eq!(origin_of(&limiter).await, Ok(Origin::Shared));
    server.kill();
    check(&limiter).await;
    assert!(limiter.is_degraded());
    server.restart(); // empty: no keys, no cached scripts
    until_shared(&limiter, &key("a"), &per_day()).await;
    assert!(!limiter.is_degraded());
    let used = async || {
        let status = limiter.status(&key("a"), &per_day()).await.unwrap();
        status.limits[0].used
    };
    assert_eq!(
        used().await,
        handed_back,
        "what was handed back is in Redis"
    );
    if handed_back < 10 {
        assert_eq!(origin_of(&limiter).await, Ok(Origin::Shared));
        assert_eq!(
            used().await,
            1 + handed_back,
            "the decision after the restart is in Redis"
        );
    } else {
        assert!(matches!(
            origin_of(&limiter).await,
            Err(RefusalReason::Limit(_))
        ));
    }
}

#[tokio::test]
async fn fail_closed_refuses_while_redis_is_down() {
    kill_and_restart(OnError::FailClosed, 0, async |l: &Limiter| {
        for _ in 0..3 {
            assert_eq!(origin_of(l).await, Err(RefusalReason::Unavailable));
        }
    })
    .await;
}

#[tokio::test]
async fn fail_open_grants_unmetered_while_redis_is_down() {
    kill_and_restart(OnError::FailOpen, 0, async |l: &Limiter| {
        for _ in 0..20 {
            assert_eq!(origin_of(l).await, Ok(Origin::Unmetered));
        }
    })
    .await;
}

#[tokio::test]
async fn local_keeps_each_replica_at_its_share_while_redis_is_down() {
    // 10 per minute shared by 2 expected replicas: 5 here, less the part of that share
    // Redis had said was spent (1 of 10: 9 ÷ 2 = 4 left here, rounded down). Redis comes
    // back empty: handed back are the 4 grants, the seed of 1 that stood for what it
    // lost, and the other replica's whole share of 5 (it may still be deciding locally):
    // the minute is full.
    kill_and_restart(OnError::Local, 10, async |l: &Limiter| {
        for _ in 0..4 {
            assert_eq!(origin_of(l).await, Ok(Origin::Local));
        }
        assert!(matches!(origin_of(l).await, Err(RefusalReason::Limit(_))));
    })
    .await;
}

#[tokio::test]
async fn a_flushed_script_cache_is_reloaded() {
    let server = RedisServer::start();
    let limiter = Limiter::redis(&server.url(), options(), OnError::FailClosed, 1).unwrap();
    assert_eq!(origin_of(&limiter).await, Ok(Origin::Shared));
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]).trim(), "OK");
    assert_eq!(origin_of(&limiter).await, Ok(Origin::Shared));
    let status = limiter.status(&key("a"), &per_day()).await.unwrap();
    assert_eq!(status.limits[0].used, 2);
}

#[tokio::test]
async fn a_paused_redis_times_out_instead_of_hanging() {
    let server = RedisServer::start();
    let limiter = Limiter::redis(&server.url(), options(), OnError::FailClosed, 1).unwrap();
    assert_eq!(origin_of(&limiter).await, Ok(Origin::Shared));
    assert_eq!(server.cli(&["CLIENT", "PAUSE", "3000", "ALL"]).trim(), "OK");
    assert_eq!(origin_of(&limiter).await, Err(RefusalReason::Unavailable));
    assert!(limiter.is_degraded());
    assert_eq!(server.cli(&["CLIENT", "UNPAUSE"]).trim(), "OK");
    let mut shared = false;
    for _ in 0..500 {
        if origin_of(&limiter).await == Ok(Origin::Shared) {
            shared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(shared, "the breaker closes once Redis answers again");
}

#[tokio::test]
async fn every_key_expires() {
    let server = RedisServer::start();
    let store = sluice_limiter::RedisStore::new(&server.url(), options()).unwrap();
    // A minute's window: the TTLs below are bounded by it.
    let q = quota(vec![
        sluice_limiter::Limit::requests(10, Window::secs(60).unwrap()).unwrap(),
    ]);
    let r = store
        .acquire(&[key("a")], &q, one(), Duration::ZERO)
        .await
        .unwrap()
        .granted()
        .unwrap();
    store.reconcile(&q, &r, Cost::ZERO).await.unwrap();
    store.record_usage(&key("b"), &q, one()).await.unwrap();
    store
        .update(&key("c"), &q, StateChange::Cooldown(Duration::from_secs(5)))
        .await
        .unwrap();
    store
        .update(&key("d"), &q, StateChange::Disable("billing".into()))
        .await
        .unwrap();
    // A refusal and a status read on a fresh account create nothing.
    store.status(&key("e"), &q).await.unwrap();
    let keys = server.cli(&["--scan"]);
    let keys: Vec<&str> = keys.lines().collect();
    assert!(keys.len() >= 5, "{keys:?}");
    for k in &keys {
        // Account `e`'s keys would end in `:w:e` or `:s:e` (a reconcile mark ends in a
        // random hex id, which may well contain `:e`).
        assert!(
            !k.ends_with(":w:e") && !k.ends_with(":s:e"),
            "a read created {k}"
        );
        let ttl: i64 = server.cli(&["PTTL", k]).trim().parse().unwrap();
        assert!(ttl > 0, "{k} has no TTL ({ttl})");
        let bound = if k.contains(":s:") {
            24 * 3600 * 1000
        } else if k.contains(":r:") {
            // A reconcile mark lives for the reconcile window (20 min for short windows).
            sluice_limiter::RECONCILE_MIN_WINDOW.as_millis() as i64
        } else {
            3 * 60 * 1000
        };
        assert!(ttl <= bound, "{k} lives {ttl} ms");
    }
}

#[tokio::test]
async fn the_in_process_store_forgets_expired_accounts() {
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let store = InProcessStore::with_clock(Arc::new(clock.clone()));
    let q = per_day();
    for i in 0..200 {
        let k = sluice_limiter::QuotaKey::new("test/model", format!("k{i}")).unwrap();
        store
            .acquire(&[k], &q, one(), Duration::ZERO)
            .await
            .unwrap();
    }
    assert_eq!(store.accounts(), 200);
    clock.advance(Duration::from_secs(2 * 86400));
    for _ in 0..4096 {
        store
            .acquire(&[key("a")], &q, Cost::ZERO, Duration::ZERO)
            .await
            .unwrap();
    }
    assert!(store.accounts() <= 1, "{} accounts left", store.accounts());
}

// ---- The hand-over between Redis and the local fallback (`on_error = local`) ----

/// A limiter on the manual `clock`, two expected replicas, `local` policy.
fn clocked(server: &RedisServer, clock: &ManualClock, options: RedisOptions) -> Limiter {
    let options = RedisOptions {
        clock: Some(Arc::new(clock.clone())),
        ..options
    };
    Limiter::redis(&server.url(), options, OnError::Local, 2).unwrap()
}

/// 100 requests per minute; 50 per replica when Redis is down.
fn hundred() -> Quota {
    quota(vec![
        Limit::requests(100, Window::secs(60).unwrap()).unwrap(),
    ])
}

/// Acquires `cost` on `k` without waiting: the grant's origin, or the refusal's reason.
async fn decide(l: &Limiter, k: &QuotaKey, q: &Quota, cost: Cost) -> Result<Origin, RefusalReason> {
    match l
        .acquire(std::slice::from_ref(k), q, cost, Duration::ZERO)
        .await
        .unwrap()
    {
        Decision::Granted(r) => Ok(r.origin),
        Decision::Refused(r) => Err(r.reason),
    }
}

/// Acquires one request at a time until refused (at most `cap`); counts the grants by
/// origin: (shared, local).
async fn drain(l: &Limiter, k: &QuotaKey, q: &Quota, cap: u64) -> (u64, u64) {
    let (mut shared, mut local) = (0, 0);
    for _ in 0..cap {
        match decide(l, k, q, one()).await {
            Ok(Origin::Shared) => shared += 1,
            Ok(Origin::Local) => local += 1,
            Ok(other) => panic!("unexpected origin {other:?}"),
            Err(_) => break,
        }
    }
    (shared, local)
}

/// Acquires `cost` on `k`, waiting up to `max_wait` for a slot; the grant (`what` names
/// it when it is refused).
async fn granted(
    l: &Limiter,
    k: &QuotaKey,
    q: &Quota,
    cost: Cost,
    max_wait: Duration,
    what: &str,
) -> sluice_limiter::Reservation {
    l.acquire(std::slice::from_ref(k), q, cost, max_wait)
        .await
        .unwrap()
        .granted()
        .unwrap_or_else(|| panic!("{what}: refused"))
}

async fn used(l: &Limiter, k: &QuotaKey, q: &Quota) -> u64 {
    l.status(k, q).await.unwrap().limits[0].used
}

/// A `redis-server` stopped with `SIGSTOP`: it keeps its data and its connections, the
/// kernel still accepts new ones, but nothing is answered until [`Frozen::resume`] (or
/// the drop) sends `SIGCONT` — a pause that ends when the test says so, unlike
/// `CLIENT PAUSE <ms>` (which Redis 7.0 does not let even `CLIENT UNPAUSE` cut short).
struct Frozen {
    pid: String,
    resumed: bool,
}

impl Frozen {
    fn stop(server: &RedisServer) -> Self {
        let info = server.cli(&["INFO", "server"]);
        let pid = info
            .lines()
            .find_map(|l| l.trim().strip_prefix("process_id:"))
            .unwrap_or_else(|| panic!("no process_id in INFO server: {info}"))
            .to_owned();
        assert!(signal(&pid, "-STOP"), "kill -STOP {pid} failed");
        Self {
            pid,
            resumed: false,
        }
    }

    fn resume(mut self) {
        assert!(signal(&self.pid, "-CONT"), "kill -CONT {} failed", self.pid);
        self.resumed = true;
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.resumed {
            // Not asserted: a drop may run while a failed assertion unwinds.
            let _ = signal(&self.pid, "-CONT");
        }
    }
}

/// `kill <sig> <pid>`; true when it succeeded.
fn signal(pid: &str, sig: &str) -> bool {
    std::process::Command::new("kill")
        .args([sig, pid])
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes read-only checks until one is decided on Redis again (wall-clock bound: a
/// hang becomes a failure).
async fn until_shared(l: &Limiter, k: &QuotaKey, q: &Quota) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while decide(l, k, q, Cost::ZERO).await != Ok(Origin::Shared) {
        assert!(
            std::time::Instant::now() < deadline,
            "shared decisions never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Into local mode: a window that was 60 % full in Redis leaves this replica 40 % of its
/// share (50 × 0.4 = 20), not a whole share on top of what the fleet already spent.
#[tokio::test]
async fn local_mode_starts_from_what_redis_last_said() {
    let mut server = RedisServer::start();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let limiter = clocked(&server, &clock, options());
    let (q, a) = (hundred(), key("a"));
    for _ in 0..60 {
        assert_eq!(decide(&limiter, &a, &q, one()).await, Ok(Origin::Shared));
    }
    server.kill();

    let (shared, local) = drain(&limiter, &a, &q, 100).await;
    assert_eq!(shared, 0);
    assert!(
        local > 0 && local <= 20,
        "{local} local grants; at most 50 × (1 − 0.6) = 20, and some"
    );
    assert!(limiter.is_degraded());
    // An account Redis never described: its minute window counts as full here.
    assert!(matches!(
        decide(&limiter, &key("never-seen"), &q, one()).await,
        Err(RefusalReason::Limit(_))
    ));
    // The seed errs high by at most one window (and one 6 s bucket): after that the
    // share is whole again.
    clock.advance(Duration::from_secs(67));
    assert_eq!(drain(&limiter, &a, &q, 100).await, (0, 50));
    assert_eq!(drain(&limiter, &key("never-seen"), &q, 100).await, (0, 50));
}

/// Back to Redis after a restart that lost every key: what this replica granted locally
/// is recorded first (the scripts are reloaded for it), and with it the seed that stood
/// for this replica's part of what Redis lost and the other replica's whole share (it
/// may still be granting locally, unseen), so the shared window grants at most the rest
/// of the limit.
#[tokio::test]
async fn local_usage_is_handed_back_to_a_restarted_redis() {
    let mut server = RedisServer::start();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let limiter = clocked(&server, &clock, options());
    let (q, a) = (hundred(), key("a"));
    // Redis holds 20: 80 left, 40 for this replica (its seed: 50 − 40 = 10).
    for _ in 0..20 {
        assert_eq!(decide(&limiter, &a, &q, one()).await, Ok(Origin::Shared));
    }
    server.kill();
    for _ in 0..30 {
        assert_eq!(decide(&limiter, &a, &q, one()).await, Ok(Origin::Local));
    }
    clock.advance(Duration::from_secs(20));

    server.restart(); // empty: no keys, no cached scripts
    until_shared(&limiter, &a, &q).await;
    assert!(!limiter.is_degraded());
    assert_eq!(
        used(&limiter, &a, &q).await,
        90,
        "the 30 local grants, the seed of 10 and the other replica's share of 50"
    );
    let (shared, local) = drain(&limiter, &a, &q, 200).await;
    assert_eq!(
        (shared, local),
        (10, 0),
        "no burst: 100 − 30 granted locally − 10 of what Redis lost − 50 for the other replica"
    );
    assert_eq!(used(&limiter, &a, &q).await, 100);
    // The hand-back was exactly once: nothing more is recorded on later decisions.
    clock.advance(Duration::from_secs(1));
    assert!(matches!(
        decide(&limiter, &a, &q, one()).await,
        Err(RefusalReason::Limit(_))
    ));
    assert_eq!(used(&limiter, &a, &q).await, 100);
    // The local grants leave the shared window one window (and one 6 s bucket) after
    // their hand-back.
    clock.advance(Duration::from_secs(65));
    assert_eq!(used(&limiter, &a, &q).await, 0);
}

/// A limiter for pause tests: a 200 ms timeout, and a breaker that opens at the first
/// failure and probes at once.
fn pausable(server: &RedisServer, clock: &ManualClock) -> Limiter {
    clocked(
        server,
        clock,
        RedisOptions {
            timeout: Duration::from_millis(200),
            breaker_threshold: 1,
            breaker_open_for: Duration::ZERO,
            ..RedisOptions::default()
        },
    )
}

/// 20 requests per minute (10 per replica) on account `a`, of which Redis holds `held`.
async fn twenty_with_shared(limiter: &Limiter, held: u32) -> (Quota, QuotaKey) {
    let q = quota(vec![
        Limit::requests(20, Window::secs(60).unwrap()).unwrap(),
    ]);
    let a = key("a");
    for _ in 0..held {
        assert_eq!(decide(limiter, &a, &q, one()).await, Ok(Origin::Shared));
    }
    (q, a)
}

/// Redis paused (it keeps its data): the seed is not handed back (Redis has it), the
/// local grants are, exactly once, although 64 acquires race at recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_gets_local_usage_back_once() {
    let server = RedisServer::start();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let limiter = Arc::new(pausable(&server, &clock));
    // 20 per minute, 10 per replica; Redis holds 8.
    let (q, a) = twenty_with_shared(&limiter, 8).await;
    // Frozen (SIGSTOP) rather than `CLIENT PAUSE <ms>`: the pause lasts until the test
    // ends it, however slow the machine, so every decision below is taken while Redis
    // is away.
    let frozen = Frozen::stop(&server);
    // The call that finds Redis paused is read-only: when Redis runs it later, it
    // charges nothing.
    assert!(decide(&limiter, &a, &q, Cost::ZERO).await.is_ok());
    assert!(limiter.is_degraded());
    // 12 left in Redis: 6 for this replica.
    let (shared_before, local_before) = drain(&limiter, &a, &q, 20).await;
    assert_eq!(shared_before, 0, "no shared grant while Redis is frozen");
    assert!(
        local_before > 0 && local_before <= 6,
        "{local_before} local grants; at most 12 ÷ 2 = 6"
    );
    frozen.resume();
    assert_eq!(server.cli(&["PING"]).trim(), "PONG");

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (limiter, q, a) = (limiter.clone(), q.clone(), a.clone());
        tasks.spawn(async move { decide(&limiter, &a, &q, one()).await });
    }
    let (mut shared, mut local) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(Origin::Shared) => shared += 1,
            Ok(Origin::Local) => local += 1,
            _ => {}
        }
    }
    // Anything granted locally in the race is handed back by the next decisions.
    until_shared(&limiter, &a, &q).await;
    let granted = 8 + shared_before + local_before + shared + local;
    assert_eq!(
        used(&limiter, &a, &q).await,
        granted,
        "every grant in Redis exactly once ({local_before} local during the pause, \
         {shared} shared and {local} local at recovery)"
    );
    assert!(shared > 0, "Redis decides again after the hand-back");
    assert!(granted <= 20, "no burst past the limit: {granted} granted");
}

/// Redis kept its data, and this replica queued local grants ahead while it was away:
/// the hand-back is one charge at the latest local slot, standing for grants from the
/// outage's start to that slot, so shared grants must queue after it. Were they placed
/// before it (Redis's own queue was empty), the windows they close would miss the
/// local grants made earlier in the outage.
#[tokio::test]
async fn shared_grants_queue_after_a_hand_back_placed_ahead() {
    let server = RedisServer::start();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let limiter = pausable(&server, &clock);
    // 20 per minute, 10 per replica; Redis holds 4.
    let (q, a) = twenty_with_shared(&limiter, 4).await;
    // Frozen until the local grant queued ahead is made (see `Frozen`).
    let frozen = Frozen::stop(&server);
    assert!(decide(&limiter, &a, &q, Cost::ZERO).await.is_ok());
    // Local: what is left of the share now, then one more queued a window ahead.
    let (_, local_now) = drain(&limiter, &a, &q, 20).await;
    assert!(local_now > 0, "local grants while Redis is paused");
    let queued = granted(
        &limiter,
        &a,
        &q,
        one(),
        Duration::from_secs(120),
        "a local grant queued ahead",
    )
    .await;
    assert_eq!(
        queued.origin,
        Origin::Local,
        "decided while Redis is frozen: {queued:?}"
    );
    assert!(queued.wait > Duration::ZERO, "{queued:?}");
    frozen.resume();
    assert_eq!(server.cli(&["PING"]).trim(), "PONG");
    // The first grant decided on Redis again (queued: a plain check with no wait would
    // be refused, the queue being ahead).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let next = loop {
        let r = granted(
            &limiter,
            &a,
            &q,
            Cost::ZERO,
            Duration::from_secs(300),
            "granted, queued",
        )
        .await;
        if r.origin == Origin::Shared {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "shared decisions never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        next.slot >= queued.slot,
        "a shared grant at {:?} before the latest local one at {:?}",
        next.slot,
        queued.slot
    );
}

/// Redis restarted empty, and the reconcile of a request it granted before the restart
/// reached it before any hand-back: the reconcile recreated the windows key (with the
/// tokens it adds, and no queue). The hand-back must still see that Redis lost the
/// account's windows and bring the seed and the other replica's share, not only the
/// local grants.
#[tokio::test]
async fn a_reconcile_that_recreates_the_key_does_not_hide_a_restart() {
    let mut server = RedisServer::start();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let limiter = clocked(&server, &clock, options());
    let q = quota(vec![
        Limit::requests(100, Window::secs(60).unwrap()).unwrap(),
        Limit::tokens(1_000_000, Window::secs(60).unwrap()).unwrap(),
    ]);
    let a = key("a");
    // Redis holds 20 requests: 80 left, 40 for this replica (its seed: 50 − 40 = 10).
    let mut last = None;
    for _ in 0..20 {
        let d = limiter
            .acquire(std::slice::from_ref(&a), &q, tokens(10), Duration::ZERO)
            .await
            .unwrap();
        last = Some(d.granted().expect("granted"));
    }
    let last = last.unwrap();
    assert_eq!(last.origin, Origin::Shared);
    server.kill();
    for _ in 0..30 {
        assert_eq!(decide(&limiter, &a, &q, one()).await, Ok(Origin::Local));
    }
    clock.advance(Duration::from_secs(20));

    server.restart(); // empty
    // The request Redis granted before the restart ends first: its reconcile (more
    // tokens than estimated) recreates the windows key. (Retried while the breaker is
    // still open: the reconcile is idempotent.)
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while limiter.reconcile(&q, &last, tokens(15)).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "reconcile never landed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = limiter.status(&a, &q).await.unwrap();
    assert_eq!(status.limits[0].used, 0, "the reconcile adds no request");
    assert_eq!(status.limits[1].used, 5, "the reconcile recreated the key");

    until_shared(&limiter, &a, &q).await;
    assert_eq!(
        used(&limiter, &a, &q).await,
        90,
        "the 30 local grants, the seed of 10 and the other replica's share of 50"
    );
    assert_eq!(
        drain(&limiter, &a, &q, 200).await,
        (10, 0),
        "no burst: 100 − 30 granted locally − 10 of what Redis lost − 50 for the other"
    );
}

/// Redis restarted empty and one replica handed back first, recreating the windows key.
/// The other replica had a request booked more than a window ahead: its hand-back must
/// still count Redis's windows as lost (the queue Redis now holds ends before that
/// slot), or the shared window grants a whole limit beside the booked request.
#[tokio::test]
async fn a_later_hand_back_sees_that_its_booked_slots_were_lost() {
    let mut server = RedisServer::start();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let (a_side, b_side) = (
        clocked(&server, &clock, options()),
        clocked(&server, &clock, options()),
    );
    let (q, a) = (hundred(), key("a"));
    // B takes 70, A the last 30 (both last heard that nothing is left), then B books
    // one more when the first bucket has left the window: 66 s ahead.
    for _ in 0..70 {
        assert_eq!(decide(&b_side, &a, &q, one()).await, Ok(Origin::Shared));
    }
    for _ in 0..30 {
        assert_eq!(decide(&a_side, &a, &q, one()).await, Ok(Origin::Shared));
    }
    let booked = granted(
        &b_side,
        &a,
        &q,
        one(),
        Duration::from_secs(120),
        "booked ahead",
    )
    .await;
    assert_eq!(booked.origin, Origin::Shared);
    assert_eq!(booked.wait, Duration::from_secs(66));

    server.kill();
    // Both decide locally (nothing left of either share): both have usage to hand back.
    assert!(decide(&a_side, &a, &q, one()).await.is_err());
    assert!(decide(&b_side, &a, &q, one()).await.is_err());
    assert!(a_side.is_degraded() && b_side.is_degraded());

    server.restart(); // empty
    // A first, then B. (B's decisions are refused for the queue it re-established, so
    // "back" is told by the breaker: a local decision would have left it open.)
    until_back(&a_side, &a, &q).await;
    until_back(&b_side, &a, &q).await;

    // When B's booked request reaches the provider, the provider's window holds it and
    // whatever the fleet is granted then: at most 99 more.
    clock.advance(booked.wait);
    let (shared, local) = drain(&a_side, &a, &q, 200).await;
    assert_eq!(local, 0);
    assert!(
        shared < 100,
        "{shared} granted beside the request booked before the restart"
    );
}

/// Into local mode with a request booked more than a window ahead: the seed lands in
/// the bucket of that slot, ahead of now, and a local decision at now still counts it
/// (the provider's window at that slot holds both), so nothing slips in before it.
#[tokio::test]
async fn local_decisions_count_a_seed_placed_ahead() {
    let mut server = RedisServer::start();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let limiter = clocked(&server, &clock, options());
    let (q, a) = (hundred(), key("a"));
    for _ in 0..100 {
        assert_eq!(decide(&limiter, &a, &q, one()).await, Ok(Origin::Shared));
    }
    let booked = granted(
        &limiter,
        &a,
        &q,
        one(),
        Duration::from_secs(120),
        "booked ahead",
    )
    .await;
    assert_eq!(booked.wait, Duration::from_secs(66));
    server.kill();
    // Just before the booked slot, after the first window's usage left it.
    clock.advance(Duration::from_secs(62));
    assert_eq!(
        drain(&limiter, &a, &q, 100).await,
        (0, 0),
        "the seed (the whole share: nothing was left) is ahead of now, and counted"
    );
    // One window after the booked slot's bucket, the share is whole again.
    clock.advance(Duration::from_secs(4 + 66));
    assert_eq!(drain(&limiter, &a, &q, 100).await, (0, 50));
}

/// Into local mode while the fleet's queue reaches further ahead than anything this
/// replica booked: B filled the window and booked a whole limit more, a window ahead; A
/// (which booked nothing ahead) was last refused. A's seed must stay in its local window
/// until B's booked requests have left the provider's, or A grants its share beside them.
#[tokio::test]
async fn the_seed_stays_until_the_fleets_queue_has_passed() {
    let mut server = RedisServer::start();
    let clock = ManualClock::new(Timestamp::from_micros(T0));
    let (a_side, b_side) = (
        clocked(&server, &clock, options()),
        clocked(&server, &clock, options()),
    );
    let (q, a) = (hundred(), key("a"));
    let ahead = Duration::from_secs(70);
    let book = async |l: &Limiter, max_wait: Duration| {
        l.acquire(std::slice::from_ref(&a), &q, one(), max_wait)
            .await
            .unwrap()
    };
    for _ in 0..100 {
        assert_eq!(decide(&b_side, &a, &q, one()).await, Ok(Origin::Shared));
    }
    // 100 more, when the first bucket has left the window: 66 s ahead.
    for _ in 0..100 {
        let r = book(&b_side, ahead).await.granted().expect("booked ahead");
        assert_eq!(r.wait, Duration::from_secs(66));
    }
    assert!(matches!(
        book(&a_side, ahead).await,
        Decision::Refused(r) if matches!(r.reason, RefusalReason::Limit(_))
    ));

    server.kill();
    // Whatever A grants locally within 70 s lands in a provider window that already
    // holds B's 100 booked requests.
    let mut local = 0;
    for _ in 0..60 {
        match book(&a_side, ahead).await {
            Decision::Granted(r) => {
                assert_eq!(r.origin, Origin::Local);
                local += 1;
            }
            Decision::Refused(_) => break,
        }
    }
    assert!(a_side.is_degraded());
    assert_eq!(
        local, 0,
        "{local} local grants beside a full window booked ahead"
    );
}

/// Makes read-only checks until one leaves the breaker closed: Redis answered and the
/// local usage was handed back (wall-clock bound: a hang becomes a failure).
async fn until_back(l: &Limiter, k: &QuotaKey, q: &Quota) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let d = decide(l, k, q, Cost::ZERO).await;
        if !l.is_degraded() {
            assert_ne!(d, Ok(Origin::Local));
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "shared decisions never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fills `server` (started with a tiny `maxmemory` and `noeviction`) until it answers
/// writes with `OOM command not allowed`.
fn fill_until_oom(server: &RedisServer) {
    let fill = "for i = 1, 2000 do redis.call('SET', KEYS[1] .. ':' .. i, string.rep('x', 200)) end return 1";
    for round in 0..400 {
        let reply = server.cli(&["EVAL", fill, "1", &format!("ballast:{round}")]);
        if reply.contains("OOM command not allowed") {
            // Well below what it holds now, so that no small free (a client buffer, an
            // expired key) brings it back under the limit during the test.
            assert!(
                server
                    .cli(&["CONFIG", "SET", "maxmemory", "1mb"])
                    .contains("OK")
            );
            return;
        }
    }
    panic!("redis never answered OOM");
}

/// Like [`kill_and_restart`], but Redis stays up and answers every write with OOM: the
/// breaker opens and `policy` decides, exactly as when Redis is down; once memory is
/// available again, decisions are shared again.
async fn fill_and_free(policy: OnError, check: impl AsyncFnOnce(&Limiter)) {
    let server =
        RedisServer::start_with(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]);
    let limiter = Limiter::redis(&server.url(), options(), policy, 2).unwrap();
    assert_eq!(origin_of(&limiter).await, Ok(Origin::Shared));
    fill_until_oom(&server);
    check(&limiter).await;
    assert!(limiter.is_degraded(), "a full redis opens the breaker");
    assert!(
        server
            .cli(&["CONFIG", "SET", "maxmemory", "0"])
            .contains("OK")
    );
    until_shared(&limiter, &key("a"), &per_day()).await;
    assert!(!limiter.is_degraded());
}

#[tokio::test]
async fn fail_closed_refuses_while_redis_is_full() {
    fill_and_free(OnError::FailClosed, async |l: &Limiter| {
        for _ in 0..3 {
            assert_eq!(origin_of(l).await, Err(RefusalReason::Unavailable));
        }
    })
    .await;
}

#[tokio::test]
async fn fail_open_grants_unmetered_while_redis_is_full() {
    fill_and_free(OnError::FailOpen, async |l: &Limiter| {
        for _ in 0..20 {
            assert_eq!(origin_of(l).await, Ok(Origin::Unmetered));
        }
    })
    .await;
}

#[tokio::test]
async fn local_keeps_each_replica_at_its_share_while_redis_is_full() {
    // As when Redis is down: 4 of this replica's share of 5 are left (Redis had said 1
    // of 10 was spent), then the share is used up.
    fill_and_free(OnError::Local, async |l: &Limiter| {
        for _ in 0..4 {
            assert_eq!(origin_of(l).await, Ok(Origin::Local));
        }
        assert!(matches!(origin_of(l).await, Err(RefusalReason::Limit(_))));
    })
    .await;
}

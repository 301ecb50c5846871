//! Redis Sentinel: a primary, a replica and three Sentinels (Debian's `redis-sentinel`)
//! started by the harness; limiters on `redis+sentinel://…/sluice` hammered by several
//! tasks while the primary is SIGKILLed and the Sentinels promote the replica.
//!
//! What is checked, under load:
//! - while no primary answers, every decision still returns, made by the failure
//!   policy: `local` grants in process, at most what Redis had left (each replica its
//!   share of it); `fail_closed` refuses with `Unavailable` and grants nothing;
//! - `rediss+sentinel://` reaches a topology that speaks only TLS (with the CA trusted;
//!   without it, a clean error);
//! - the limiters follow the failover by themselves (the URL names the Sentinels, not a
//!   node) and decide in Redis again;
//! - the overshoot bound: over one window the fleet grants at most the limit plus
//!   1. what asynchronous replication lost: writes the old primary acknowledged that had
//!      not reached the replica (on one host the stream goes out in the same event-loop
//!      turn as the replies: at most the decisions in flight at the kill);
//!   2. how stale each replica's last word from Redis was when its outage began: the
//!      local seed counts what Redis had left then, not what the other replicas took
//!      after it (at most the decisions in flight, all replicas deciding continuously);
//!   3. the local grants of a replica that hands its outage usage back to Redis only
//!      after another replica already decides in Redis again (each replica probes on
//!      its own breaker timer).
//!
//!   Each term is measured or bounded here and the total is asserted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_limiter::{
    Decision, Limit, Limiter, OnError, Origin, QuotaKey, RedisOptions, RefusalReason, Store,
};
use sluice_testkit::RedisSentinels;

use crate::support::{one, quota, window};

/// Concurrent deciders per limiter (each has at most one decision in flight).
const DECIDERS: usize = 4;

/// How long the harness waits for a failover, a recovery or enough traffic. Generous:
/// the machine is shared; nothing is timed, only polled.
const PATIENCE: Duration = Duration::from_secs(90);

/// Which account a decision was on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Account {
    /// The quota under test.
    Main,
    /// An account with room for everything, polled to see when a limiter decides in
    /// Redis again (its grants say `Shared`).
    Probe,
}

/// What one decision returned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    Granted(Origin),
    RefusedUnavailable,
    Refused,
    Failed,
}

/// One decision, stamped when its answer came back.
#[derive(Clone, Copy, Debug)]
struct Event {
    at: Instant,
    replica: usize,
    account: Account,
    outcome: Outcome,
}

/// The decisions of every task, in the order they came back.
#[derive(Default)]
struct Log(Mutex<Vec<Event>>);

impl Log {
    fn push(&self, e: Event) {
        self.0.lock().push(e);
    }

    fn snapshot(&self) -> Vec<Event> {
        self.0.lock().clone()
    }

    fn count(&self, f: impl Fn(&Event) -> bool) -> usize {
        self.0.lock().iter().filter(|e| f(e)).count()
    }
}

/// The fleet under test: limiters (replicas of one service) and their tasks.
struct Fleet {
    limiters: Vec<Arc<Limiter>>,
    log: Arc<Log>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn main_key() -> QuotaKey {
    QuotaKey::new("sentinel/model", "key-0").unwrap()
}

fn probe_key() -> QuotaKey {
    QuotaKey::new("sentinel/probe", "key-0").unwrap()
}

impl Fleet {
    /// `replicas` limiters on `url` under `policy`, each with [`DECIDERS`] tasks on the
    /// main account (`limit` requests per 5 minutes: the whole test fits in one window)
    /// and one task on the probe account.
    fn start(url: &str, policy: OnError, replicas: u32, limit: u64) -> Self {
        let options = RedisOptions {
            timeout: Duration::from_millis(500),
            breaker_threshold: 2,
            breaker_open_for: Duration::from_millis(200),
            ..RedisOptions::default()
        };
        let limiters: Vec<Arc<Limiter>> = (0..replicas)
            .map(|i| {
                Arc::new(
                    Limiter::redis(url, options.clone(), policy, replicas)
                        .unwrap()
                        .with_replica_index(i),
                )
            })
            .collect();
        let main_quota = quota(vec![Limit::requests(limit, window(300_000)).unwrap()]);
        let probe_quota = quota(vec![
            Limit::requests(1_000_000_000, window(300_000)).unwrap(),
        ]);
        let log = Arc::new(Log::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (replica, limiter) in limiters.iter().enumerate() {
            for task in 0..=DECIDERS {
                let (account, key, q, pause) = if task < DECIDERS {
                    (Account::Main, main_key(), main_quota.clone(), 2)
                } else {
                    (Account::Probe, probe_key(), probe_quota.clone(), 20)
                };
                let (limiter, log, stop) = (limiter.clone(), log.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    let keys = [key];
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = match limiter.acquire(&keys, &q, one(), Duration::ZERO).await
                        {
                            Ok(Decision::Granted(r)) => Outcome::Granted(r.origin),
                            Ok(Decision::Refused(r)) if r.reason == RefusalReason::Unavailable => {
                                Outcome::RefusedUnavailable
                            }
                            Ok(Decision::Refused(_)) => Outcome::Refused,
                            Err(_) => Outcome::Failed,
                        };
                        log.push(Event {
                            at: Instant::now(),
                            replica,
                            account,
                            outcome,
                        });
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                }));
            }
        }
        Self {
            limiters,
            log,
            stop,
            tasks,
        }
    }

    /// Polls `ready` on the log every 10 ms for at most [`PATIENCE`].
    async fn wait_for(&self, what: &str, ready: impl Fn(&Log) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !ready(&self.log) {
            assert!(
                Instant::now() < deadline,
                "waited {PATIENCE:?} for {what}; decisions so far: {}",
                self.log.count(|_| true)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(self) -> (Vec<Arc<Limiter>>, Vec<Event>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("a decider panicked");
        }
        (self.limiters, self.log.snapshot())
    }
}

/// When `replica`'s outage began: its first local grant (on either account).
fn outage_began(events: &[Event], replica: usize) -> Option<Instant> {
    events
        .iter()
        .find(|e| e.replica == replica && e.outcome == Outcome::Granted(Origin::Local))
        .map(|e| e.at)
}

/// `replica`'s first grant in Redis on `account` (either when `None`) once its outage
/// began. Grants in Redis come only after the replica handed its outage usage back, so
/// the first one on either account is when it decides in Redis again.
fn shared_again(events: &[Event], replica: usize, account: Option<Account>) -> Option<Instant> {
    let outage = outage_began(events, replica)?;
    events
        .iter()
        .find(|e| {
            e.replica == replica
                && e.at > outage
                && account.is_none_or(|a| e.account == a)
                && e.outcome == Outcome::Granted(Origin::Shared)
        })
        .map(|e| e.at)
}

/// What Redis counts on the main account, asked until it answers (a handle cached
/// before the failover may fail once more, which the breaker counts).
async fn used_in_redis(limiter: &Limiter, q: &sluice_limiter::Quota) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match limiter.status(&main_key(), q).await {
            Ok(s) => return s.limits[0].used,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the promoted primary did not answer a status: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kills the primary under `local` load and checks the policy, the recovery, what Redis
/// holds afterwards and the overshoot bound (see the module doc).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_under_load_keeps_the_fleet_within_the_limit_plus_the_bound() {
    const LIMIT: u64 = 2_000;
    const REPLICAS: usize = 2;
    let mut topology = RedisSentinels::start();
    let fleet = Fleet::start(&topology.url(), OnError::Local, REPLICAS as u32, LIMIT);

    // Load in Redis first, then the primary dies while grants are being made.
    fleet
        .wait_for("600 shared grants", |log| {
            log.count(|e| {
                e.account == Account::Main && e.outcome == Outcome::Granted(Origin::Shared)
            }) >= 600
        })
        .await;
    let killed_at = Instant::now();
    let old = tokio::task::block_in_place(|| topology.kill_primary());
    let promoted = tokio::task::block_in_place(|| topology.wait_for_failover(old, PATIENCE))
        .expect("the Sentinels promoted the replica");
    assert_ne!(promoted, old);
    let promoted_at = Instant::now();

    // Every replica decides in Redis again, then makes some more decisions there.
    fleet
        .wait_for("every replica to decide in Redis again", |log| {
            let events = log.snapshot();
            (0..REPLICAS).all(|r| shared_again(&events, r, None).is_some())
        })
        .await;
    let resumed_all = Instant::now();
    fleet
        .wait_for("decisions after the recovery", |log| {
            log.count(|e| e.account == Account::Main && e.at > resumed_all) >= 200
        })
        .await;
    let (limiters, events) = fleet.stop().await;

    let main: Vec<&Event> = events
        .iter()
        .filter(|e| e.account == Account::Main)
        .collect();
    let failed = events
        .iter()
        .filter(|e| e.outcome == Outcome::Failed)
        .count();
    assert_eq!(failed, 0, "under `local` every decision returns an answer");
    let granted = |origin: Origin| {
        main.iter()
            .filter(|e| e.outcome == Outcome::Granted(origin))
            .count() as u64
    };
    let (shared, local) = (granted(Origin::Shared), granted(Origin::Local));
    let first_local = main
        .iter()
        .find(|e| e.outcome == Outcome::Granted(Origin::Local))
        .map(|e| e.at);
    let first_local = first_local.expect("no local grant: the policy never decided");
    let shared_before = main
        .iter()
        .filter(|e| e.at < first_local && e.outcome == Outcome::Granted(Origin::Shared))
        .count() as u64;
    let in_flight = (DECIDERS * REPLICAS) as u64;
    // Local grants a replica made before it handed back count against the limit late
    // when another replica already decided on the main account in Redis again (of two
    // replicas, at most the later one).
    let resumed: Vec<Instant> = (0..REPLICAS)
        .map(|r| shared_again(&events, r, None).unwrap())
        .collect();
    let late: u64 = (0..REPLICAS)
        .filter(|&r| {
            (0..REPLICAS).filter(|&o| o != r).any(|o| {
                shared_again(&events, o, Some(Account::Main)).is_some_and(|t| t < resumed[r])
            })
        })
        .map(|r| {
            main.iter()
                .filter(|e| e.replica == r && e.outcome == Outcome::Granted(Origin::Local))
                .count() as u64
        })
        .sum();
    let total = shared + local;
    let overshoot = total.saturating_sub(LIMIT);
    let q = quota(vec![Limit::requests(LIMIT, window(300_000)).unwrap()]);
    let used = used_in_redis(&limiters[0], &q).await;
    eprintln!(
        "sentinel failover (local): limit {LIMIT}, shared {shared} ({shared_before} before the outage), \
         local {local} (Redis had {} left), total {total}, overshoot {overshoot}, \
         bound 2 × {in_flight} in flight + {late} late local, the promoted primary counts {used}, \
         kill to promotion {:?}, kill to every replica back on Redis {:?}",
        LIMIT.saturating_sub(shared_before),
        promoted_at - killed_at,
        resumed_all - killed_at
    );

    // 1. While no primary answered, the fleet granted in process at most what Redis had
    //    left (each replica its share of it; the replicas' last words from Redis differ
    //    by the decisions in flight).
    assert!(
        local <= LIMIT.saturating_sub(shared_before) + in_flight,
        "local grants {local} > what Redis had left ({LIMIT} - {shared_before}) + {in_flight}"
    );
    // 2. After the failover, the limiters decided in Redis again: shared grants or
    //    refusals (the window is full) after every replica resumed.
    assert!(
        main.iter()
            .filter(|e| e.at > resumed_all)
            .all(|e| e.outcome != Outcome::Granted(Origin::Local)),
        "local grants after every replica was back on Redis"
    );
    // 3. The overshoot bound (see the module doc): the decisions in flight, once for
    //    what replication may lose and once for the staleness of the replicas' last
    //    words, plus the late local grants.
    assert!(
        overshoot <= 2 * in_flight + late,
        "granted {total} against a limit of {LIMIT}: overshoot {overshoot} > 2 × {in_flight} in flight + {late} late local grants"
    );
    // 4. What the new primary holds: every grant, the outage's handed back, less what
    //    replication lost (at most what was in flight), plus decisions whose answer the
    //    kill swallowed (counted, not granted: also at most what was in flight).
    assert!(
        used + in_flight >= total && used <= total + in_flight,
        "the promoted primary counts {used}, the fleet granted {total} (± {in_flight} in flight)"
    );
}

/// `fail_closed` on a topology with a password: while no primary answers, decisions are
/// refused as `Unavailable` and nothing is granted; after the failover they are granted
/// in Redis again, and the promoted primary holds every grant but what was in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_while_no_primary_answers_then_follows_the_failover() {
    let mut topology = RedisSentinels::start_with_password("s3ntinel-test-pw");
    assert!(
        topology.nodes()[0].cli(&["PING"]).contains("PONG"),
        "the harness authenticates"
    );
    let url = topology.url();
    assert!(
        url.starts_with("redis+sentinel://:s3ntinel-test-pw@"),
        "{url}"
    );
    // A wrong password is an error that does not quote it (nor the right one).
    let wrong = url.replace("s3ntinel-test-pw", "wr0ng-test-pw");
    let store = sluice_limiter::RedisStore::new(&wrong, RedisOptions::default()).unwrap();
    let q = quota(vec![Limit::requests(10, window(1000)).unwrap()]);
    match store
        .acquire(&[main_key()], &q, one(), Duration::ZERO)
        .await
    {
        Err(e) => {
            let text = format!("{e} {e:?}");
            assert!(
                !text.contains("wr0ng-test-pw") && !text.contains("s3ntinel-test-pw"),
                "a password leaked into the error: {text}"
            );
        }
        Ok(d) => panic!("a wrong password must be refused: {d:?}"),
    }
    let fleet = Fleet::start(&url, OnError::FailClosed, 1, 1_000_000_000);

    fleet
        .wait_for("200 shared grants", |log| {
            log.count(|e| e.outcome == Outcome::Granted(Origin::Shared)) >= 200
        })
        .await;
    let killed_at = Instant::now();
    let old = tokio::task::block_in_place(|| topology.kill_primary());
    fleet
        .wait_for("refusals while no primary answers", |log| {
            log.count(|e| e.outcome == Outcome::RefusedUnavailable) >= 20
        })
        .await;
    let promoted = tokio::task::block_in_place(|| topology.wait_for_failover(old, PATIENCE))
        .expect("the Sentinels promoted the replica");
    let first_refusal = fleet
        .log
        .snapshot()
        .iter()
        .find(|e| e.outcome == Outcome::RefusedUnavailable)
        .map(|e| e.at)
        .unwrap();
    fleet
        .wait_for("shared grants after the failover", |log| {
            log.count(|e| {
                e.account == Account::Main
                    && e.at > first_refusal
                    && e.outcome == Outcome::Granted(Origin::Shared)
            }) >= 100
        })
        .await;
    let (limiters, events) = fleet.stop().await;

    assert!(
        events.iter().all(|e| matches!(
            e.outcome,
            Outcome::Granted(Origin::Shared) | Outcome::RefusedUnavailable
        )),
        "fail_closed grants only in Redis and refuses only as unavailable: {:?}",
        events.iter().find(|e| !matches!(
            e.outcome,
            Outcome::Granted(Origin::Shared) | Outcome::RefusedUnavailable
        ))
    );
    let granted_main = events
        .iter()
        .filter(|e| e.account == Account::Main && e.outcome == Outcome::Granted(Origin::Shared))
        .count() as u64;
    let before_kill = events
        .iter()
        .filter(|e| {
            e.account == Account::Main
                && e.at < killed_at
                && e.outcome == Outcome::Granted(Origin::Shared)
        })
        .count();
    let in_flight = DECIDERS as u64;
    let q = quota(vec![
        Limit::requests(1_000_000_000, window(300_000)).unwrap(),
    ]);
    let used = used_in_redis(&limiters[0], &q).await;
    let on = topology
        .nodes()
        .iter()
        .find(|n| n.port() == promoted)
        .map(|n| n.cli(&["ROLE"]))
        .unwrap_or_default();
    assert!(on.starts_with("master"), "the promoted node: {on}");
    eprintln!(
        "sentinel failover (fail_closed): granted {granted_main} ({before_kill} before the kill), \
         the promoted primary counts {used}: {} lost to replication",
        granted_main.saturating_sub(used)
    );
    assert!(
        used + in_flight >= granted_main && used <= granted_main + in_flight,
        "the promoted primary counts {used}, the limiter granted {granted_main} (± {in_flight} in flight)"
    );
}

/// Runs in a child process whose trust store is the topology's CA (`SSL_CERT_FILE`, as
/// in `security.rs`): one decision through `rediss+sentinel://`.
#[test]
#[ignore = "a child process of the Sentinel TLS test, started by it"]
fn sentinel_tls_child() {
    let url = std::env::var("SLUICE_SENTINEL_TLS_URL").expect("started by the TLS test");
    let expect_ok = std::env::var("SLUICE_SENTINEL_TLS_EXPECT").as_deref() == Ok("ok");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let options = RedisOptions {
        timeout: Duration::from_secs(2),
        ..RedisOptions::default()
    };
    let store = sluice_limiter::RedisStore::new(&url, options).unwrap();
    let q = quota(vec![Limit::requests(10, window(1000)).unwrap()]);
    let decision = rt.block_on(store.acquire(&[main_key()], &q, one(), Duration::ZERO));
    match decision {
        Ok(Decision::Granted(_)) if expect_ok => {}
        Err(sluice_limiter::LimitError::Unavailable(_)) if !expect_ok => {}
        other => panic!("unexpected outcome through rediss+sentinel: {other:?}"),
    }
}

/// `rediss+sentinel://`: the Sentinels, the primary and the replication between them
/// speak only TLS. With the CA trusted, a decision is made on the primary the Sentinels
/// name; without it, the certificate is an error, not a hang.
#[test]
fn rediss_sentinel_works_with_a_trusted_ca_and_fails_cleanly_without_it() {
    use std::process::{Command, Stdio};
    let mut topology = RedisSentinels::start_tls();
    let url = topology.url();
    assert!(url.starts_with("rediss+sentinel://"), "{url}");
    let ca = topology.ca_file().expect("a TLS topology has a CA");
    let run = |ca: &std::path::Path, expect: &str| {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "sentinel::sentinel_tls_child",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env("SLUICE_SENTINEL_TLS_URL", &url)
            .env("SLUICE_SENTINEL_TLS_EXPECT", expect)
            .env("SSL_CERT_FILE", ca)
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(run(&ca, "ok"), "a decision through rediss+sentinel://");
    assert!(
        run(std::path::Path::new("/dev/null"), "refused"),
        "an untrusted certificate is an error, not a hang"
    );
    let primary = topology
        .primary_port()
        .expect("the Sentinels name a primary");
    let keys = topology
        .nodes()
        .iter()
        .find(|n| n.port() == primary)
        .map(|n| n.cli(&["--scan"]))
        .unwrap_or_default();
    assert!(
        keys.contains("sluice:{sentinel/model}:w:key-0"),
        "the decision was made on the primary: {keys}"
    );
}

//! Weighted fair share across the whole fleet: three tenants with weights 3 : 2 : 1,
//! three gateway processes on one Redis, closed-loop clients far above the shared
//! account's quota. Each tenant's share of what the provider accepted follows the
//! weights whichever replicas its requests reach, the provider refuses nothing, and
//! the quota is used; a tenant that goes idle leaves its share to the others; a batch
//! tenant fills only what an interactive one leaves.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_testkit::RedisServer;

use crate::support::*;

const TENANTS: [(&str, &str, u32); 3] = [
    ("team-a", "sk-team-a-key", 3),
    ("team-b", "sk-team-b-key", 2),
    ("team-c", "sk-team-c-key", 1),
];
/// The provider's quota: 20 requests per 2 s (10 per second), tokens never binding.
const REQUESTS: u64 = 20;
const PER: Duration = Duration::from_secs(2);
/// The provider's window is this much shorter than the gateways' `PER`. A request reaches
/// the provider a little after its slot, by an amount that varies: a request sent 20
/// slots (one window) before another is seen inside that one's window when it is delayed
/// by more than the later one plus the one bucket (33 ms here) the gateway's window errs
/// by on the safe side. Three gateway processes and 48 clients on two cores that other
/// tests share delay some requests that much (once in several CI runs). These tests are
/// about shares; that no window is overfilled, whatever the load, is held by the
/// limiter's conformance and multi-process hammer tests, which count the slots granted,
/// not arrivals.
const TRANSIT_ALLOWANCE: Duration = Duration::from_millis(50);

fn config(redis: &str, sim: &str, classes: [&str; 3], reserve: u32) -> String {
    let mut toml = format!(
        r#"
[store]
redis_url = "{redis}"
expected_replicas = 3
[queue]
max_wait = "20s"
interactive_reserve = {reserve}
[[upstreams]]
name = "sim"
base_url = "{sim}"
keys = ["sk-shared"]
[[models]]
name = "fair-m"
upstream = "sim"
limits = [{{ requests = {REQUESTS}, per = "2s" }}]
"#
    );
    for ((name, key, weight), class) in TENANTS.iter().zip(classes) {
        toml.push_str(&format!(
            "[[tenants]]\nname = \"{name}\"\nkey = \"{key}\"\nweight = {weight}\n{class}\n"
        ));
    }
    toml
}

/// A random number in [0, 1) (from the standard library's randomly keyed hasher).
fn unit_random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Counts of 200s per tenant within a measured span, by closed-loop clients.
struct Load {
    served: Vec<Arc<AtomicU64>>,
    refused: Vec<Arc<AtomicU64>>,
    /// Per tenant: whether its clients still run.
    running: Vec<Arc<AtomicBool>>,
    /// Per tenant: the latency of each measured 200, in ms.
    latencies: Vec<Arc<parking_lot::Mutex<Vec<f64>>>>,
    measuring: Arc<AtomicBool>,
    /// Each client task, with its tenant.
    tasks: Vec<(usize, tokio::task::JoinHandle<()>)>,
}

impl Load {
    /// `clients[t]` closed-loop clients for tenant `t`, each pausing `think` between
    /// its requests; tenant `t`'s client `i` calls `urls[route(t, i)]`.
    fn start(
        urls: &[String],
        clients: [usize; 3],
        think: Duration,
        route: impl Fn(usize, usize) -> usize,
    ) -> Self {
        let client = client();
        let counters = || {
            (0..3)
                .map(|_| Arc::new(AtomicU64::new(0)))
                .collect::<Vec<_>>()
        };
        let (served, refused) = (counters(), counters());
        let running: Vec<_> = (0..3).map(|_| Arc::new(AtomicBool::new(true))).collect();
        let latencies: Vec<_> = (0..3).map(|_| Arc::default()).collect();
        let measuring = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (t, (_, key, _)) in TENANTS.iter().enumerate() {
            for i in 0..clients[t] {
                let url = urls[route(t, i)].clone();
                let (client, served, refused) =
                    (client.clone(), served[t].clone(), refused[t].clone());
                let (measuring, running) = (measuring.clone(), running[t].clone());
                let latencies: Arc<parking_lot::Mutex<Vec<f64>>> = Arc::clone(&latencies[t]);
                let auth = format!("Bearer {key}");
                tasks.push((
                    t,
                    tokio::spawn(async move {
                        while running.load(Ordering::Relaxed) {
                            let sent = Instant::now();
                            let a =
                                chat(&client, &url, ask("fair-m", 8), &[("authorization", &auth)])
                                    .await;
                            assert_honest(&a);
                            let measured = measuring.load(Ordering::Relaxed);
                            if a.status == 200 {
                                if measured {
                                    served.fetch_add(1, Ordering::Relaxed);
                                    latencies.lock().push(sent.elapsed().as_secs_f64() * 1e3);
                                }
                                // Think times of 0.5 to 1.5 × `think`, so that a
                                // client's arrivals do not lock to the slot schedule.
                                tokio::time::sleep(think.mul_f64(0.5 + unit_random())).await;
                            } else {
                                if measured {
                                    refused.fetch_add(1, Ordering::Relaxed);
                                }
                                // A refusal says when to come back; a closed-loop client
                                // far above the quota comes back soon.
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }),
                ));
            }
        }
        Self {
            served,
            refused,
            running,
            latencies,
            measuring,
            tasks,
        }
    }

    /// Stops tenant `t`'s clients at once: their requests in flight are dropped (the
    /// gateway gives their queued slots back).
    fn idle(&self, t: usize) {
        self.running[t].store(false, Ordering::Relaxed);
        for (tenant, task) in &self.tasks {
            if *tenant == t {
                task.abort();
            }
        }
    }

    /// Counts for `span`, after which the counts are read and reset.
    async fn measure(&self, span: Duration) -> [u64; 3] {
        for s in self.served.iter().chain(&self.refused) {
            s.store(0, Ordering::Relaxed);
        }
        for l in &self.latencies {
            l.lock().clear();
        }
        self.measuring.store(true, Ordering::Relaxed);
        tokio::time::sleep(span).await;
        self.measuring.store(false, Ordering::Relaxed);
        [0, 1, 2].map(|t| self.served[t].load(Ordering::Relaxed))
    }

    async fn stop(self) {
        for r in &self.running {
            r.store(false, Ordering::Relaxed);
        }
        for (_, t) in self.tasks {
            if let Err(e) = t.await {
                assert!(e.is_cancelled(), "a client failed: {e}");
            }
        }
    }
}

fn shares(counts: [u64; 3]) -> [f64; 3] {
    let total = counts.iter().sum::<u64>().max(1) as f64;
    counts.map(|c| c as f64 / total)
}

/// Asserts each share is within ±5% (relative) of its weight's.
fn assert_weighted(counts: [u64; 3], weights: [u32; 3], what: &str) {
    let total_w: u32 = weights.iter().sum();
    let got = shares(counts);
    for t in 0..3 {
        let want = f64::from(weights[t]) / f64::from(total_w);
        let err = if want == 0.0 {
            got[t]
        } else {
            (got[t] - want).abs() / want
        };
        assert!(
            err <= 0.05,
            "{what}: tenant {} served {:.3} of the quota, its weight asks {want:.3} (counts {counts:?})",
            TENANTS[t].0,
            got[t]
        );
    }
}

async fn fleet(classes: [&str; 3]) -> (RedisServer, sluice_sim::SimHandle, Vec<GatewayProcess>) {
    fleet_reserving(classes, 0).await
}

/// [`fleet`], batch tenants leaving `reserve` requests of each window to interactive ones.
async fn fleet_reserving(
    classes: [&str; 3],
    reserve: u32,
) -> (RedisServer, sluice_sim::SimHandle, Vec<GatewayProcess>) {
    let redis = RedisServer::start();
    let sim = sim(
        vec![sim_model(
            "fair-m",
            REQUESTS,
            10_000_000,
            PER - TRANSIT_ALLOWANCE,
        )],
        &[],
    )
    .await;
    let toml = config(&redis.url(), &sim.base_url(), classes, reserve);
    let gateways = (0..3).map(|_| GatewayProcess::start(&toml)).collect();
    (redis, sim, gateways)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_tenants_on_their_own_replicas_are_served_by_their_weights() {
    let (_redis, sim, gateways) = fleet(["", "", ""]).await;
    let urls: Vec<String> = gateways.iter().map(|g| g.url.clone()).collect();
    let load = Load::start(&urls, [16; 3], Duration::ZERO, |t, _| t);
    // Two windows to fill the queue, then eight measured.
    tokio::time::sleep(2 * PER).await;
    sim.sim().reset_stats();
    let started = Instant::now();
    let counts = load.measure(8 * PER).await;
    let elapsed = started.elapsed();
    load.stop().await;
    let report = sim_report(&sim, "fair-m");
    println!(
        "own replicas: served {counts:?} shares {:?}, provider refused {}",
        shares(counts),
        report.refused_total()
    );
    assert_eq!(
        report.refused_total(),
        0,
        "the provider refused requests: {report:?}"
    );
    let quota = REQUESTS as f64 * elapsed.as_secs_f64() / PER.as_secs_f64();
    let used = counts.iter().sum::<u64>() as f64 / quota;
    assert!(
        used >= 0.95,
        "only {used:.3} of the quota used ({counts:?})"
    );
    assert_weighted(counts, [3, 2, 1], "each tenant on its own replica");
    // The waits for a turn are counted where they happen: team-a's own replica.
    let waits = metric(
        &client(),
        &urls[0],
        "sluice_fair_share_waits_total",
        &["model=\"fair-m\"", "tenant=\"team-a\""],
    )
    .await;
    assert!(waits > 0.0, "no fair-share wait counted");
}

/// The quota used over `elapsed` by `counts`, as a fraction.
fn used(counts: &[u64], elapsed: Duration) -> f64 {
    let quota = REQUESTS as f64 * elapsed.as_secs_f64() / PER.as_secs_f64();
    counts.iter().sum::<u64>() as f64 / quota
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spread_over_every_replica_the_shares_hold_and_an_idle_tenant_leaves_its_share() {
    let (_redis, sim, gateways) = fleet(["", "", ""]).await;
    let urls: Vec<String> = gateways.iter().map(|g| g.url.clone()).collect();
    let load = Load::start(&urls, [15; 3], Duration::ZERO, |_, i| i % 3);
    tokio::time::sleep(2 * PER).await;
    sim.sim().reset_stats();
    let started = Instant::now();
    let counts = load.measure(6 * PER).await;
    let elapsed = started.elapsed();
    println!("spread: served {counts:?} shares {:?}", shares(counts));
    assert!(
        used(&counts, elapsed) >= 0.95,
        "only {:.3} of the quota used ({counts:?})",
        used(&counts, elapsed)
    );
    assert_weighted(counts, [3, 2, 1], "tenants spread over every replica");

    // team-c goes idle: within one window, a and b split its share 3 : 2.
    load.idle(2);
    tokio::time::sleep(PER).await;
    let started = Instant::now();
    let counts = load.measure(5 * PER).await;
    let elapsed = started.elapsed();
    load.stop().await;
    println!("team-c idle: served {counts:?} shares {:?}", shares(counts));
    assert_eq!(counts[2], 0);
    assert!(
        used(&counts, elapsed) >= 0.95,
        "only {:.3} of the quota used ({counts:?})",
        used(&counts, elapsed)
    );
    assert_weighted(counts, [3, 2, 0], "team-c idle");
    let report = sim_report(&sim, "fair-m");
    assert_eq!(
        report.refused_total(),
        0,
        "the provider refused requests: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_fills_what_interactive_leaves_and_interactive_is_never_refused() {
    batch_run(0, 0.95).await;
}

/// With a reserve, interactive requests arriving together find capacity at once, and
/// batch fills the rest but the reserve (2 of 20 here: a tenth of this small quota).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reserve_batch_leaves_serves_interactive_at_once() {
    batch_run(2, 0.85).await;
}

/// team-a interactive, team-b and team-c batch (leaving `reserve` requests of each
/// window): interactive is never refused, batch fills the rest, at least `min_used` of
/// the quota is used, the provider refuses nothing.
async fn batch_run(reserve: u32, min_used: f64) {
    let batch = "priority = \"batch\"";
    let (_redis, sim, gateways) = fleet_reserving(["", batch, batch], reserve).await;
    let urls: Vec<String> = gateways.iter().map(|g| g.url.clone()).collect();
    // The interactive tenant's latency with nothing queued: the simulator's answer time
    // and the hops, the baseline its waits under load are read against.
    let c = client();
    let auth = format!("Bearer {}", TENANTS[0].1);
    let mut alone = Vec::new();
    for i in 0..10 {
        let sent = Instant::now();
        let a = chat(
            &c,
            &urls[i % 3],
            ask("fair-m", 8),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(a.status, 200, "{a:?}");
        alone.push(sent.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(PER / REQUESTS as u32).await;
    }
    alone.sort_by(f64::total_cmp);
    // team-a (interactive): 3 clients pausing 1 s, about a third of the quota; the
    // batch tenants: far above the rest.
    let load = Load::start(&urls, [3, 12, 12], Duration::from_secs(1), |t, i| {
        (t + i) % 3
    });
    tokio::time::sleep(2 * PER).await;
    sim.sim().reset_stats();
    let started = Instant::now();
    let counts = load.measure(8 * PER).await;
    let elapsed = started.elapsed();
    let refused = [0, 1, 2].map(|t| load.refused[t].load(Ordering::Relaxed));
    let mut waits = load.latencies[0].lock().clone();
    load.stop().await;
    waits.sort_by(f64::total_cmp);
    let p99 = waits[(waits.len() * 99 / 100).min(waits.len() - 1)];
    println!(
        "batch (reserve {reserve}): served {counts:?} ({:.3} of the quota), refused {refused:?}, interactive latency p50 {:.0} ms p99 {p99:.0} ms (alone, nothing queued: p50 {:.0} ms max {:.0} ms; the pacing interval is {} ms)",
        used(&counts, elapsed),
        waits[waits.len() / 2],
        alone[alone.len() / 2],
        alone[alone.len() - 1],
        (PER / REQUESTS as u32).as_millis()
    );
    assert_eq!(refused[0], 0, "an interactive request was refused");
    assert!(counts[0] >= 8, "interactive served {counts:?}");
    assert!(
        counts[1] + counts[2] > counts[0],
        "batch fills the rest: {counts:?}"
    );
    assert!(
        used(&counts, elapsed) >= min_used,
        "only {:.3} of the quota used ({counts:?})",
        used(&counts, elapsed)
    );
    let report = sim_report(&sim, "fair-m");
    assert_eq!(
        report.refused_total(),
        0,
        "the provider refused requests: {report:?}"
    );
}

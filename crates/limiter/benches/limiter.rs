//! Limiter benchmark: `cargo bench -p sluice-limiter` prints markdown tables for
//! `docs/benchmarks.md`.
//!
//! - the in-process store's decisions/s on one core (one quota, and 100k quotas);
//! - a three-limit `acquire` on Redis at concurrency 1, 16 and 64 (decisions/s, p50,
//!   p99), beside `redis-benchmark` running `EVALSHA` of a trivial script at the same
//!   concurrency against the same server in the same run: the ceiling Redis sets here;
//! - throughput and Redis memory with 1, 1k and 100k quotas;
//! - Redis time per decision (`INFO commandstats`) without a tenant's share, with one
//!   while nothing queues, and with three tenants sharing a queue (the fair ledger);
//! - Redis time per request with and without a tenant's own limits and budgets.
//!
//! `SLUICE_BENCH_QUICK=1` shortens every run (for a smoke test);
//! `SLUICE_BENCH_ONLY=memory` runs only the in-process part (`memory-one`: only its
//! one-quota run, for profiling),
//! `SLUICE_BENCH_ONLY=fair` only the Redis time per decision with and without the fair
//! ledger, `SLUICE_BENCH_ONLY=tenant` only the Redis time per request with and without
//! a tenant's own limits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_limiter::{
    Cost, InProcessStore, Limit, Pacing, Priority, Quota, QuotaKey, RedisOptions, RedisStore,
    Share, Store, Window,
};
use sluice_testkit::RedisServer;

fn quota() -> Quota {
    let s = |n| Window::secs(n).unwrap();
    // Large limits: every decision is a grant, the most work a decision does.
    Quota::new(vec![
        Limit::requests(1_000_000_000, s(60)).unwrap(),
        Limit::tokens(1_000_000_000_000, s(60)).unwrap(),
        Limit::requests(100_000_000, s(1)).unwrap(),
    ])
    .unwrap()
}

fn keys(n: usize) -> Vec<QuotaKey> {
    (0..n)
        .map(|i| QuotaKey::new(format!("bench/m{}", i % 1024), format!("key-{i}")).unwrap())
        .collect()
}

fn quick() -> bool {
    std::env::var_os("SLUICE_BENCH_QUICK").is_some()
}

fn in_process(n_keys: usize) -> f64 {
    let store = InProcessStore::new();
    let q = quota();
    let keys = keys(n_keys);
    let cost = Cost::request(500, 200);
    let n = if quick() { 200_000 } else { 5_000_000 };
    for k in &keys {
        store
            .acquire_now(std::slice::from_ref(k), &q, cost, Duration::ZERO)
            .unwrap();
    }
    let start = Instant::now();
    for i in 0..n {
        let k = &keys[i % keys.len()];
        let d = store
            .acquire_now(std::slice::from_ref(k), &q, cost, Duration::ZERO)
            .unwrap();
        std::hint::black_box(d);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

struct Run {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

async fn redis_run(
    store: Arc<RedisStore>,
    concurrency: usize,
    keys: Arc<Vec<QuotaKey>>,
    total: usize,
) -> Run {
    let q = Arc::new(quota());
    let per_task = total / concurrency;
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let (store, q, keys) = (store.clone(), q.clone(), keys.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let k = &keys[(t * per_task + i) % keys.len()];
                    let t0 = Instant::now();
                    let d = store
                        .acquire(
                            std::slice::from_ref(k),
                            &q,
                            Cost::request(500, 200),
                            Duration::ZERO,
                        )
                        .await
                        .expect("redis answers");
                    lat.push(t0.elapsed());
                    std::hint::black_box(d);
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    Run {
        per_sec: all.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
    }
}

/// `redis-benchmark` running EVALSHA of `return 1` at `clients` clients, unpipelined.
fn raw_evalsha(server: &RedisServer, clients: usize, total: usize) -> Run {
    let sha = server
        .cli(&["SCRIPT", "LOAD", "return 1"])
        .trim()
        .to_owned();
    let out = std::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &server.port().to_string()])
        .args([
            "-c",
            &clients.to_string(),
            "-n",
            &total.to_string(),
            "--csv",
        ])
        .args(["EVALSHA", &sha, "0"])
        .output()
        .expect("redis-benchmark (redis-tools) must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    let row = text.lines().last().unwrap_or_default();
    let f: Vec<f64> = row
        .split(',')
        .skip(1)
        .map(|v| v.trim_matches('"').parse().unwrap_or(f64::NAN))
        .collect();
    Run {
        per_sec: f[0],
        p50_ms: f[3],
        p99_ms: f[5],
    }
}

fn used_memory(server: &RedisServer) -> u64 {
    server
        .cli(&["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// µs of Redis time per `acquire` (its script's `usec_per_call`) over `n` decisions,
/// one at a time, on `q`, by `tenants` (none: no share) in turn.
async fn redis_time(
    server: &RedisServer,
    store: &RedisStore,
    q: &Quota,
    tenants: &[Share],
    n: usize,
) -> f64 {
    server.cli(&["FLUSHALL"]);
    server.cli(&["CONFIG", "RESETSTAT"]);
    let key = keys(1);
    for i in 0..n {
        let share = (!tenants.is_empty()).then(|| &tenants[i % tenants.len()]);
        let d = store
            .acquire_for(
                &key,
                q,
                Cost::request(500, 200),
                Duration::from_secs(3600),
                share,
            )
            .await
            .expect("redis answers");
        std::hint::black_box(d);
    }
    let stats = server.cli(&["INFO", "commandstats"]);
    let line = stats
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .expect("EVALSHA ran");
    line.split(',')
        .find_map(|f| f.strip_prefix("usec_per_call="))
        .and_then(|v| v.trim().parse().ok())
        .expect("usec_per_call")
}

/// The table of Redis time per decision with and without the fair ledger.
fn fair_section(rt: &tokio::runtime::Runtime, server: &RedisServer, store: &RedisStore) {
    println!("\n### Redis time per decision, with and without the fair ledger (same run)\n");
    println!("| case | µs per acquire | ratio |");
    println!("|---|---:|---:|");
    let n = if quick() { 2_000 } else { 20_000 };
    let tenants: Vec<Share> = [("a", 3), ("b", 2), ("c", 1)]
        .map(|(t, w)| Share::new(t, w, Priority::Interactive))
        .into();
    // A quota that queues: 100 requests per second, paced.
    let queueing = Quota::new(vec![
        Limit::requests(100, Window::secs(1).unwrap()).unwrap(),
    ])
    .unwrap()
    .with_pacing(Pacing::Auto)
    .unwrap();
    let base = rt.block_on(redis_time(server, store, &quota(), &[], n));
    let idle = rt.block_on(redis_time(server, store, &quota(), &tenants, n));
    let plain_queue = rt.block_on(redis_time(server, store, &queueing, &[], n));
    let fair_queue = rt.block_on(redis_time(server, store, &queueing, &tenants, n));
    println!("| three limits, no share | {base:.2} | 1.00 |");
    println!(
        "| three limits, a share, nothing queued | {idle:.2} | {:.2} |",
        idle / base
    );
    println!("| one paced limit, queueing, no share | {plain_queue:.2} | 1.00 |");
    println!(
        "| one paced limit, queueing, three tenants sharing it | {fair_queue:.2} | {:.2} |",
        fair_queue / plain_queue
    );
}

/// Total `EVALSHA` time since the last `CONFIG RESETSTAT`, in µs.
fn evalsha_usec(server: &RedisServer) -> f64 {
    let stats = server.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("usec=")))
        .and_then(|v| v.trim().parse().ok())
        .expect("EVALSHA ran")
}

/// Redis time per request, with and without a tenant's own limits: a request is an
/// acquire and a reconcile on the provider's account; a tenant with limits adds an
/// acquire (four limits: rpm, tpd, a daily and a monthly budget) and a reconcile on
/// its own key.
async fn tenant_time(server: &RedisServer, store: &RedisStore, n: usize, tenant: bool) -> f64 {
    let s = |n| Window::secs(n).unwrap();
    let tenant_quota = Quota::new(vec![
        Limit::requests(1_000_000_000, s(60)).unwrap(),
        Limit::tokens(1_000_000_000_000, s(86_400)).unwrap(),
        Limit::new(
            sluice_limiter::Unit::Spend,
            std::num::NonZeroU64::new(1_000_000_000_000).unwrap(),
            s(86_400),
        ),
        Limit::new(
            sluice_limiter::Unit::Spend,
            std::num::NonZeroU64::new(1_000_000_000_000).unwrap(),
            s(30 * 86_400),
        ),
    ])
    .unwrap()
    .with_pacing(Pacing::Off)
    .unwrap();
    let tenant_key = [QuotaKey::new("tenant:team-a", "limits").unwrap()];
    server.cli(&["FLUSHALL"]);
    server.cli(&["CONFIG", "RESETSTAT"]);
    let (q, account) = (quota(), keys(1));
    let estimate = Cost {
        spend: 3_000,
        ..Cost::request(500, 200)
    };
    let actual = Cost {
        spend: 2_000,
        ..Cost::request(480, 120)
    };
    let decided = |d| match d {
        Ok(sluice_limiter::Decision::Granted(res)) => res,
        other => panic!("not granted: {other:?}"),
    };
    for _ in 0..n {
        let hold = if tenant {
            let d = store
                .acquire(&tenant_key, &tenant_quota, estimate, Duration::ZERO)
                .await;
            Some(decided(d))
        } else {
            None
        };
        let d = store
            .acquire(&account, &q, estimate, Duration::from_secs(3600))
            .await;
        let res = decided(d);
        store.reconcile(&q, &res, actual).await.expect("reconcile");
        if let Some(hold) = hold {
            store
                .reconcile(&tenant_quota, &hold, actual)
                .await
                .expect("reconcile");
        }
    }
    evalsha_usec(server) / n as f64
}

/// The table of Redis time per request with and without a tenant's own limits.
fn tenant_section(rt: &tokio::runtime::Runtime, server: &RedisServer, store: &RedisStore) {
    println!("\n### Redis time per request, with and without a tenant's own limits (same run)\n");
    println!("| case | µs of EVALSHA per request | ratio |");
    println!("|---|---:|---:|");
    let n = if quick() { 2_000 } else { 20_000 };
    let base = rt.block_on(tenant_time(server, store, n, false));
    let limited = rt.block_on(tenant_time(server, store, n, true));
    println!("| acquire + reconcile on the account (three limits) | {base:.2} | 1.00 |");
    println!(
        "| the same + the tenant's acquire + reconcile (rpm, tpd, two budgets) | {limited:.2} | {:.2} |",
        limited / base
    );
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    println!(
        "machine: {} cores, {cpu}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let only = std::env::var("SLUICE_BENCH_ONLY").unwrap_or_default();
    println!("\n### In-process store, one thread\n");
    println!("| quotas | decisions/s |");
    println!("|---:|---:|");
    let sizes: &[usize] = if only == "memory-one" {
        &[1]
    } else {
        &[1, 100_000]
    };
    for &n in sizes {
        println!("| {n} | {:.0} |", in_process(n));
    }

    if only.starts_with("memory") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = RedisServer::start();
    let store = Arc::new(
        RedisStore::new(
            &server.url(),
            RedisOptions {
                timeout: Duration::from_secs(5),
                ..RedisOptions::default()
            },
        )
        .unwrap(),
    );
    let total = if quick() { 20_000 } else { 200_000 };

    if only != "tenant" {
        fair_section(&rt, &server, &store);
    }
    if only == "fair" {
        return;
    }
    tenant_section(&rt, &server, &store);
    if only == "tenant" {
        return;
    }

    println!("\n### Redis: three-limit acquire vs raw EVALSHA (same server, same run)\n");
    println!(
        "| concurrency | raw EVALSHA/s | raw p50 ms | raw p99 ms | acquire/s | acquire p50 ms | acquire p99 ms | ratio |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let one_key = Arc::new(keys(1));
    for c in [1, 16, 64] {
        let n = if c == 1 { total / 4 } else { total };
        let raw = raw_evalsha(&server, c, n);
        let ours = rt.block_on(redis_run(store.clone(), c, one_key.clone(), n));
        println!(
            "| {c} | {:.0} | {:.3} | {:.3} | {:.0} | {:.3} | {:.3} | {:.2} |",
            raw.per_sec,
            raw.p50_ms,
            raw.p99_ms,
            ours.per_sec,
            ours.p50_ms,
            ours.p99_ms,
            ours.per_sec / raw.per_sec
        );
    }

    println!("\n### Redis: scaling with the number of quotas (concurrency 64)\n");
    println!("| quotas | acquire/s | p99 ms | Redis memory | per quota |");
    println!("|---:|---:|---:|---:|---:|");
    for n in [1usize, 1_000, 100_000] {
        server.cli(&["FLUSHALL"]);
        let before = used_memory(&server);
        let ks = Arc::new(keys(n));
        // Touch every quota once, then measure over them round-robin.
        rt.block_on(redis_run(store.clone(), 64, ks.clone(), n.max(64)));
        let after = used_memory(&server);
        let run = rt.block_on(redis_run(store.clone(), 64, ks, total));
        println!(
            "| {n} | {:.0} | {:.3} | {:.1} MiB | {:.0} B |",
            run.per_sec,
            run.p99_ms,
            (after.saturating_sub(before)) as f64 / 1048576.0,
            (after.saturating_sub(before)) as f64 / n as f64
        );
    }
}

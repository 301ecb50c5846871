//! The cost of a huge prompt to a `sluice-gateway` process: its CPU time for the
//! request (user + system, from `/proc`) and the slowest `/healthz` answer while it is
//! handled, for a single-word prompt (the estimator's adversarial case) against an
//! English prompt of the same size and against `/healthz` polled while the gateway is
//! idle — all in the same run. These figures were assertions of
//! `tests/bounded_cost.rs`; timings belong here (the project's rule: no timing
//! assertions in tests).
//!
//! `cargo bench -p sluice-gateway --bench bounded_cost` prints the markdown table for
//! `docs/benchmarks.md` (env `MIB=16` sets the prompt size, `RUNS=3` how many times each
//! prompt is sent; the median run is reported).

use std::process::Stdio;
use std::time::{Duration, Instant};

use sluice_sim::{Config as SimConfig, Dialect, Limit, ModelConfig};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The process's CPU time so far (user + system), from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after `comm`.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 1000 / 100) // USER_HZ = 100 on Linux
}

/// A chat request whose one message is `text`.
fn request(text: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o", "max_tokens": 8,
        "messages": [{"role": "user", "content": text}],
    }))
    .unwrap()
}

fn english(bytes: usize) -> String {
    let text = "The gateway estimates each request's cost before it asks the limiter for a slot \
        on the best account of the model: prompt tokens plus the maximum output. ";
    text.chars().cycle().take(bytes).collect()
}

/// One measured request: its status, the gateway's CPU for it, the slowest `/healthz`
/// while it ran and how many were made.
struct Run {
    status: u16,
    cpu: Duration,
    slowest: Duration,
    polls: usize,
    elapsed: Duration,
}

/// Polls `/healthz` every 10 ms until `done` resolves; the slowest answer and the count.
async fn poll_until<F: std::future::Future>(
    c: &reqwest::Client,
    base: &str,
    done: F,
) -> (F::Output, Duration, usize) {
    tokio::pin!(done);
    let (mut slowest, mut polls) = (Duration::ZERO, 0usize);
    loop {
        let t = Instant::now();
        let probe = c.get(format!("{base}/healthz")).send();
        tokio::select! {
            out = &mut done => return (out, slowest, polls),
            r = probe => {
                assert_eq!(r.expect("/healthz answers").status(), 200);
                slowest = slowest.max(t.elapsed());
                polls += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn measure(c: &reqwest::Client, base: &str, pid: u32, body: Vec<u8>) -> Run {
    let before = cpu_time(pid);
    let t = Instant::now();
    let send = async {
        let resp = c
            .post(format!("{base}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the gateway answers");
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        if status != 200 {
            eprintln!(
                "{status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
        }
        status
    };
    let (status, slowest, polls) = poll_until(c, base, send).await;
    Run {
        status,
        cpu: cpu_time(pid).saturating_sub(before),
        slowest,
        polls,
        elapsed: t.elapsed(),
    }
}

/// `/healthz` polled for `for_` with nothing else to do.
async fn idle(c: &reqwest::Client, base: &str, for_: Duration) -> (Duration, usize) {
    let (_, slowest, polls) = poll_until(c, base, tokio::time::sleep(for_)).await;
    (slowest, polls)
}

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by_key(|r| r.cpu);
    runs.swap_remove(runs.len() / 2)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let mib = env("MIB", 16);
    let runs = env("RUNS", 3).max(1);
    let size = (mib << 20).saturating_sub(1024);
    let limit = (mib + 1) << 20;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let sim = sluice_sim::spawn({
            let mut config = SimConfig::with_models(vec![
                ModelConfig::new("gpt-4o", Dialect::Openai)
                    .with_limit(Limit::requests(100_000, Duration::from_secs(60)))
                    .with_limit(Limit::tokens(1_000_000_000_000, Duration::from_secs(60))),
            ]);
            config.accept_any_key = true;
            config
        })
        .await
        .expect("sim starts");
        let toml = format!(
            r#"
[server]
max_body_bytes = {limit}
[[upstreams]]
name = "sim"
base_url = "{}"
keys = ["sk-sim"]
[[models]]
name = "gpt-4o"
upstream = "sim"
tokenizer = "o200k"
limits = [{{ requests = 100000, per = "60s" }}, {{ tokens = 1000000000000, per = "60s" }}]
pacing = "off"
"#,
            sim.base_url()
        );
        let gw = sluice_testkit::Service::start(
            env!("CARGO_BIN_EXE_sluice-gateway"),
            &toml,
            &[],
            &[("SLUICE_LOG", "warn".to_owned())],
            Stdio::null(),
        );
        let (base, pid) = (gw.url().to_owned(), gw.pid());
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap();
        // Warm up: tokenizer tables, connections.
        let warm = measure(&c, &base, pid, request("hello")).await;
        assert_eq!(warm.status, 200, "warm-up");

        let (idle_slowest, idle_polls) = idle(&c, &base, Duration::from_secs(3)).await;
        let mut table = Vec::new();
        for (name, text) in [
            ("English", english(size)),
            ("one word (`a` repeated)", "a".repeat(size)),
        ] {
            let mut all = Vec::new();
            for _ in 0..runs {
                let r = measure(&c, &base, pid, request(&text)).await;
                assert!(
                    matches!(r.status, 200 | 400 | 413),
                    "{name}: status {}",
                    r.status
                );
                all.push(r);
            }
            table.push((name, median(all)));
        }
        let english_cpu = table[0].1.cpu.as_secs_f64().max(1e-3);
        println!(
            "prompt {size} bytes ({mib} MiB − 1 KiB), median of {runs}; idle /healthz: slowest {} ms over {idle_polls} polls\n",
            ms(idle_slowest)
        );
        println!(
            "| prompt | status | answered in ms | gateway CPU ms | CPU ÷ English | slowest /healthz ms (polls) | ÷ idle slowest |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for (name, r) in &table {
            println!(
                "| {name} | {} | {} | {} | {:.2} | {} ({}) | {:.1} |",
                r.status,
                ms(r.elapsed),
                ms(r.cpu),
                r.cpu.as_secs_f64() / english_cpu,
                ms(r.slowest),
                r.polls,
                r.slowest.as_secs_f64() / idle_slowest.as_secs_f64().max(1e-4),
            );
        }
    });
}

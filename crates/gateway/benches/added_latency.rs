//! The latency the gateway adds over calling `sluice-sim` directly, in the same run, at
//! fixed open-loop rates, with the limiter on a real Redis.
//!
//! `cargo bench -p sluice-gateway --bench added_latency` (env `RATES=1000,5000`,
//! `SECS=10`). The simulator, the gateway and the load generator each run on their own
//! single-threaded Tokio runtime in this process; Redis is a separate `redis-server`.

use std::time::{Duration, Instant};

use sluice_sim::{Config as SimConfig, Dialect, ModelConfig};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Sends `rate` requests/s for `secs` seconds to `url`, open loop; returns latencies and errors.
async fn drive(
    client: reqwest::Client,
    url: String,
    body: bytes::Bytes,
    rate: u64,
    secs: u64,
) -> (Vec<Duration>, usize) {
    let n = rate * secs;
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        tokio::time::sleep_until(at.into()).await;
        let (c, u, b) = (client.clone(), url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let ok = match c
                .post(u)
                .header("content-type", "application/json")
                .header("authorization", "Bearer bench-key")
                .body(b)
                .send()
                .await
            {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            (t.elapsed(), ok)
        }));
    }
    let mut lat = Vec::with_capacity(tasks.len());
    let mut errors = 0;
    for t in tasks {
        let (d, ok) = t.await.unwrap();
        if ok {
            lat.push(d);
        } else {
            errors += 1;
        }
    }
    lat.sort();
    (lat, errors)
}

fn main() {
    let rates: Vec<u64> = std::env::var("RATES")
        .unwrap_or_else(|_| "1000,5000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let secs: u64 = std::env::var("SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let redis = sluice_testkit::RedisServer::start();

    let (sim_tx, sim_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let sim = sluice_sim::spawn(SimConfig::with_models(vec![ModelConfig::new(
                "bench-m",
                Dialect::Openai,
            )]))
            .await
            .unwrap();
            sim_tx.send(sim.base_url()).unwrap();
            std::future::pending::<()>().await;
        })
    });
    let sim_url = sim_rx.recv().unwrap();
    let toml = format!(
        "[store]\nredis_url = \"{}\"\n[[upstreams]]\nname = \"sim\"\nbase_url = \"{sim_url}\"\nkeys = [\"k\"]\n[[models]]\nname = \"bench-m\"\nupstream = \"sim\"\nlimits = [{{ requests = 100000000, per = \"60s\" }}, {{ tokens = 100000000000, per = \"60s\" }}]\npacing = \"off\"\n",
        redis.url()
    );
    let (gw_tx, gw_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let config = sluice_config::from_str(
                &toml,
                &[],
                &std::collections::HashMap::<String, String>::new(),
            )
            .unwrap();
            let gw = sluice_proxy::Gateway::new(config).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            gw_tx
                .send(format!("http://{}/v1", listener.local_addr().unwrap()))
                .unwrap();
            sluice_proxy::serve(gw, listener, std::future::pending())
                .await
                .unwrap();
        })
    });
    let gw_url = gw_rx.recv().unwrap();
    let body = bytes::Bytes::from(
        r#"{"model":"bench-m","messages":[{"role":"user","content":"Say something short about rate limits."}],"max_tokens":16}"#,
    );
    let rt = runtime();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .build()
        .unwrap();
    // Warm up both paths (connections, scripts, tokenizer).
    rt.block_on(drive(
        client.clone(),
        format!("{gw_url}/chat/completions"),
        body.clone(),
        500,
        1,
    ));
    rt.block_on(drive(
        client.clone(),
        format!("{sim_url}/chat/completions"),
        body.clone(),
        500,
        1,
    ));
    println!("| rate (req/s) | path | ok | errors | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|---|");
    for rate in rates {
        let mut p = Vec::new();
        for (name, base) in [("sim direct", &sim_url), ("via gateway", &gw_url)] {
            let (lat, errors) = rt.block_on(drive(
                client.clone(),
                format!("{base}/chat/completions"),
                body.clone(),
                rate,
                secs,
            ));
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            let (p50, p90, p99, max) = (
                percentile(&lat, 0.5),
                percentile(&lat, 0.9),
                percentile(&lat, 0.99),
                *lat.last().unwrap(),
            );
            println!(
                "| {rate} | {name} | {} | {errors} | {:.3} | {:.3} | {:.3} | {:.3} |",
                lat.len(),
                ms(p50),
                ms(p90),
                ms(p99),
                ms(max)
            );
            p.push((p50, p99));
        }
        let added = |a: Duration, b: Duration| (b.as_secs_f64() - a.as_secs_f64()) * 1e3;
        println!(
            "| {rate} | **added** | | | {:.3} | | {:.3} | |",
            added(p[0].0, p[1].0),
            added(p[0].1, p[1].1)
        );
    }
}

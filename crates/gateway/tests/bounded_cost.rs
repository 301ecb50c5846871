//! Bounded cost of a request's estimate and of its stream (issue #12): a huge
//! single-word prompt for a tiktoken model is answered while `/healthz` keeps answering,
//! and a CRLF-framed stream is relayed as it comes and its usage reconciled.
//!
//! No timing is asserted here (the project's rule: time belongs in benchmarks). The
//! figures — gateway CPU for the prompt, slowest `/healthz` while it is handled — are
//! printed, and measured against baselines by `cargo bench -p sluice-gateway --bench
//! bounded_cost` (`docs/benchmarks.md`). The prompt size can be lowered with
//! `SLUICE_TEST_PROMPT_BYTES`.

use std::time::{Duration, Instant};

use crate::support::*;

/// A safety net only: far longer than the request should take.
const HUNG: Duration = Duration::from_secs(120);

/// The gateway process's CPU time so far (user + system), from `/proc/<pid>/stat`
/// (printed, not asserted).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after `comm`.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_sec = 100; // USER_HZ on Linux
    Duration::from_millis(ticks * 1000 / per_sec)
}

fn config(sim: &str, server: &str) -> String {
    format!(
        r#"
[server]
{server}
[[upstreams]]
name = "sim"
base_url = "{sim}"
keys = ["sk-sim"]
[[models]]
name = "gpt-4o"
upstream = "sim"
upstream_model = "gpt-4o"
tokenizer = "o200k"
limits = [{{ requests = 1000, per = "60s" }}, {{ tokens = 1000000000, per = "60s" }}]
pacing = "off"
"#
    )
}

/// A chat request whose one message is `bytes` bytes of one word (`a` repeated).
fn single_word(bytes: usize) -> Vec<u8> {
    let mut body =
        br#"{"model":"gpt-4o","max_tokens":8,"messages":[{"role":"user","content":""#.to_vec();
    body.resize(body.len() + bytes, b'a');
    body.extend_from_slice(br#""}]}"#);
    body
}

/// Sends `body` while polling `/healthz` back to back; returns the answer's status and
/// the slowest `/healthz` answer and how many were made.
async fn send_while_polling(base: &str, body: Vec<u8>) -> (u16, Duration, usize) {
    let c = client();
    let big = {
        let c = c.clone();
        let url = format!("{base}/v1/chat/completions");
        tokio::spawn(async move {
            let resp = c
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("the gateway answers");
            let status = resp.status().as_u16();
            let _ = resp.bytes().await;
            status
        })
    };
    let (mut slowest, mut polls) = (Duration::ZERO, 0usize);
    let started = Instant::now();
    // At least one poll, however fast the big request is answered (whether a poll
    // overlaps it is timing, measured by the bounded_cost bench, not asserted here).
    loop {
        assert!(started.elapsed() < HUNG, "the big request hangs");
        let t = Instant::now();
        let r = c
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("/healthz answers");
        assert_eq!(r.status(), 200);
        slowest = slowest.max(t.elapsed());
        polls += 1;
        if big.is_finished() {
            break;
        }
        // Pacing of the probe (not synchronisation): back-to-back polls would be most
        // of the CPU measured.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (big.await.unwrap(), slowest, polls)
}

fn prompt_bytes(default: usize) -> usize {
    std::env::var("SLUICE_TEST_PROMPT_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_mib_single_word_prompt_is_answered() {
    let sim = sim(
        vec![sim_model(
            "gpt-4o",
            1000,
            1_000_000_000,
            Duration::from_secs(60),
        )],
        &[],
    )
    .await;
    let gw = GatewayProcess::start(&config(&sim.base_url(), ""));
    let (status, slowest, polls) = send_while_polling(&gw.url, single_word(16 << 20)).await;
    eprintln!("16 MiB prompt answered {status}, slowest /healthz {slowest:?} over {polls} polls");
    // Over the default 16 MiB body limit with its JSON around it: refused.
    assert_eq!(status, 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_word_prompt_just_under_the_body_limit_is_answered_cheaply() {
    let sim = sim(
        vec![sim_model(
            "gpt-4o",
            1000,
            1_000_000_000,
            Duration::from_secs(60),
        )],
        &[],
    )
    .await;
    let limit = 17 << 20;
    let gw = GatewayProcess::start(&config(
        &sim.base_url(),
        &format!("max_body_bytes = {limit}"),
    ));
    let body = single_word(prompt_bytes(limit - 1024));
    assert!(body.len() < limit);
    // Warm up (tokenizer tables, connections) so the CPU measured is this request's.
    let warm = chat(&client(), &gw.url, ask("gpt-4o", 8), &[]).await;
    assert_eq!(warm.status, 200, "{warm:?}");
    let before = cpu_time(gw.pid());
    let t = Instant::now();
    let (status, slowest, polls) = send_while_polling(&gw.url, body).await;
    let cpu = cpu_time(gw.pid()).saturating_sub(before);
    eprintln!(
        "prompt answered {status} in {:?}, gateway CPU {cpu:?}, slowest /healthz {slowest:?} over {polls} polls",
        t.elapsed()
    );
    // An answer: served, or refused by the simulator's own 2 MiB body limit (its 413,
    // or — when it closes the connection before the gateway has sent the whole body —
    // the gateway's 502 `upstream_unreachable`), or by the quota.
    assert!(matches!(status, 200 | 400 | 413 | 502), "status {status}");
    // Still serving ordinary requests after it.
    let after = chat(&client(), &gw.url, ask("gpt-4o", 8), &[]).await;
    assert_eq!(after.status, 200, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crlf_framed_stream_is_relayed_as_it_comes_and_its_usage_reconciled() {
    use futures::StreamExt;
    let mut m = sim_model("crlf-m", 1000, 1_000_000, Duration::from_secs(60));
    m.sse_line_ending = sluice_sim::config::SseLineEnding::Crlf;
    m.stream_chunk_tokens = 4;
    // 40 tokens, 4 a chunk, 50 ms a token: ten chunks over two seconds.
    m.latency.per_token = Duration::from_millis(50);
    let sim = sim(vec![m], &[]).await;
    let toml = format!(
        "[[upstreams]]\nname = \"sim\"\nbase_url = \"{}\"\nkeys = [\"sk-sim\"]\n[[models]]\nname = \"crlf-m\"\nupstream = \"sim\"\nrpm = 1000\n",
        sim.base_url()
    );
    let gw = GatewayProcess::start(&toml);
    let c = client();
    let resp = c
        .post(format!("{}/v1/chat/completions", gw.url))
        .json(
            &serde_json::json!({"model": "crlf-m", "stream": true, "max_tokens": 40,
            "messages": [{"role": "user", "content": "Say something."}]}),
        )
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let first = body.next().await.expect("a first piece").unwrap();
    let first = String::from_utf8_lossy(&first).into_owned();
    assert!(first.starts_with("data: "), "{first:?}");
    assert!(
        !first.contains("[DONE]"),
        "the first piece is the whole stream: nothing was relayed before the end ({} bytes)",
        first.len()
    );
    let mut all = first;
    while let Some(piece) = body.next().await {
        all.push_str(&String::from_utf8_lossy(&piece.unwrap()));
    }
    assert!(all.ends_with("data: [DONE]\r\n\r\n"), "{all:?}");
    assert!(!all.contains("\n\n"), "CRLF framing kept byte for byte");
    assert!(
        !all.contains("\"usage\":{"),
        "the usage chunk the client did not ask for is stripped"
    );
    // Reconciled: the actual output tokens are the sim's 40.
    let url = gw.url.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let (c, url) = (c.clone(), url.clone());
            async move {
                // Polled: the series appears with the reconcile.
                try_metric(
                    &c,
                    &url,
                    "sluice_tokens_total",
                    &["source=\"actual\"", "kind=\"output\""],
                )
                .await
                    == Some(40.0)
            }
        })
        .await,
        "usage not reconciled: {:?}",
        try_metric(&c, &gw.url, "sluice_tokens_total", &["source=\"actual\""]).await
    );
}

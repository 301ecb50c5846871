//! Token estimation cost per MiB: the bounded estimator the gateway uses
//! (`estimate::prompt_tokens`, tiktoken in bounded pieces under a per-request budget)
//! beside the naive single call to tiktoken it replaced, in the same run, on normal text
//! (English, CJK) and adversarial text (one long word, one repeated character, random
//! bytes read as text).
//!
//! `cargo bench -p sluice-proxy --bench estimate` prints the markdown table for
//! `docs/benchmarks.md` (env `MIB=16` sets the size of the bounded run, `NAIVE_KIB=32`
//! the size of the naive run on adversarial text). The naive call is quadratic in the
//! longest word, so on adversarial text it runs on `NAIVE_KIB` only and its per-MiB
//! figure is extrapolated (time × (1 MiB ÷ size)², said so in the table); on normal text
//! it is linear and runs on the full size.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_config::Tokenizer;

#[allow(dead_code, unused_imports)]
#[path = "../src/estimate.rs"]
mod estimate;

use estimate::{Endpoint, prompt_tokens, tiktoken_exact};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn english(bytes: usize) -> String {
    let text = "The gateway estimates each request's cost before it asks the limiter for a slot \
        on the best account of the model: prompt tokens plus the maximum output. In 2026, \
        1,234 replicas shared one quota; fn main() { println!(\"hello\"); } costs little. ";
    text.chars().cycle().take(bytes).collect()
}

fn cjk(bytes: usize) -> String {
    let text = "速率限制协调器在多个副本之间共享同一个提供商的配额，每个请求先估算成本，再向限制器申请时隙。";
    let mut s = String::with_capacity(bytes + 4);
    for c in text.chars().cycle() {
        if s.len() + c.len_utf8() > bytes {
            break;
        }
        s.push(c);
    }
    s
}

fn random_text(bytes: usize) -> String {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let raw: Vec<u8> = (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    String::from_utf8_lossy(&raw).into_owned()
}

fn long_word(bytes: usize) -> String {
    // Letters that do not repeat in a short period, with no whitespace.
    let mut x = 12345u64;
    (0..bytes)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (b'a' + ((x >> 33) % 26) as u8) as char
        })
        .collect()
}

fn per_mib(elapsed: Duration, bytes: usize) -> f64 {
    elapsed.as_secs_f64() * (1 << 20) as f64 / bytes as f64
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let t = Instant::now();
    let out = f();
    (t.elapsed(), out)
}

fn main() {
    let mib = env("MIB", 16);
    let naive_kib = env("NAIVE_KIB", 32);
    let size = mib << 20;
    let naive_size = naive_kib << 10;
    let tokenizer = Tokenizer::O200k;
    // Load the tables before timing anything.
    let _ = tiktoken_exact("warm up", tokenizer);

    type Make = fn(usize) -> String;
    let cases: [(&str, Make, bool); 5] = [
        ("English", english, false),
        ("CJK", cjk, false),
        ("one long word (random letters)", long_word, true),
        ("one repeated character", |n| "a".repeat(n), true),
        ("random bytes as text", random_text, true),
    ];
    println!(
        "o200k_base; bounded estimator on {mib} MiB; naive single call on {} for normal text, {naive_kib} KiB extrapolated quadratically for adversarial text.\n",
        if mib > 4 {
            "4 MiB".to_owned()
        } else {
            format!("{mib} MiB")
        }
    );
    println!(
        "| text | naive s/MiB | bounded s/MiB (first 1 MiB, tiktoken) | bounded s/MiB ({mib} MiB request) | bounded ÷ exact tokens (1 MiB) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, make, quadratic) in cases {
        // Naive: one tiktoken call on the whole text.
        let naive = if quadratic {
            let text = make(naive_size);
            let (t, _) = time(|| tiktoken_exact(&text, tokenizer));
            let scale = (1 << 20) as f64 / naive_size as f64;
            format!(
                "{:.1} (extrapolated from {naive_kib} KiB)",
                t.as_secs_f64() * scale * scale
            )
        } else {
            let n = size.min(4 << 20);
            let text = make(n);
            let (t, _) = time(|| tiktoken_exact(&text, tokenizer));
            format!("{:.3}", per_mib(t, n))
        };
        // Bounded, on the first MiB (all of it through tiktoken) and on the whole request.
        let one = make(1 << 20);
        let body: Value = json!({"messages":[{"role":"user","content": one}]});
        let (t1, bounded) = time(|| prompt_tokens(Endpoint::Chat, &body, tokenizer));
        let ratio = if quadratic {
            // The exact count on adversarial text is the quadratic call: on the small size.
            let small = make(naive_size);
            let b = prompt_tokens(
                Endpoint::Chat,
                &json!({"messages":[{"role":"user","content": small.clone()}]}),
                tokenizer,
            ) - 6;
            b as f64 / tiktoken_exact(&small, tokenizer).unwrap() as f64
        } else {
            (bounded - 6) as f64 / tiktoken_exact(&one, tokenizer).unwrap() as f64
        };
        let big: Value = json!({"messages":[{"role":"user","content": make(size)}]});
        let (tn, _) = time(|| prompt_tokens(Endpoint::Chat, &big, tokenizer));
        println!(
            "| {name} | {naive} | {:.3} | {:.4} | {ratio:.3}{} |",
            per_mib(t1, 1 << 20),
            per_mib(tn, size),
            if quadratic {
                format!(" (on {naive_kib} KiB)")
            } else {
                String::new()
            }
        );
    }
}

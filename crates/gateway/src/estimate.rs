//! Token estimates before forwarding, and the per-model correction learned from what
//! the provider reports (leaning high, so a reservation is never below the provider's count).

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde_json::Value;
use sluice_config::Tokenizer;

/// Tokens of a non-text content part (an image at low detail).
const NON_TEXT_PART: u64 = 85;
/// Tokens per chat message besides its content (OpenAI cookbook).
const PER_MESSAGE: u64 = 3;
/// Tokens that prime the reply.
const REPLY_PRIMING: u64 = 3;

/// Whether `c` is one token by itself in the heuristic: CJK ideographs, kana, Hangul
/// and full-width forms.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x11FF | 0x2E80..=0x9FFF | 0xA960..=0xA97F | 0xAC00..=0xD7FF
        | 0xF900..=0xFAFF | 0xFE30..=0xFE4F | 0xFF00..=0xFFEF | 0x20000..=0x3FFFF)
}

/// Tokens of `text`: tiktoken for OpenAI families, else CJK characters one each plus
/// other characters four per token, rounded up.
pub(crate) fn text_tokens(text: &str, tokenizer: Tokenizer) -> u64 {
    match tokenizer {
        Tokenizer::O200k => tiktoken_rs::o200k_base_singleton()
            .encode_ordinary(text)
            .len() as u64,
        Tokenizer::Cl100k => tiktoken_rs::cl100k_base_singleton()
            .encode_ordinary(text)
            .len() as u64,
        Tokenizer::Heuristic | Tokenizer::Auto => {
            if text.is_ascii() {
                return (text.len() as u64).div_ceil(4);
            }
            let (mut cjk, mut other) = (0u64, 0u64);
            for c in text.chars() {
                if is_cjk(c) {
                    cjk += 1;
                } else {
                    other += 1;
                }
            }
            cjk + other.div_ceil(4)
        }
    }
}

fn content_tokens(content: &Value, tokenizer: Tokenizer) -> u64 {
    match content {
        Value::String(s) => text_tokens(s, tokenizer),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p {
                Value::String(s) => text_tokens(s, tokenizer),
                Value::Number(_) => 1,
                _ => match p.get("text").and_then(Value::as_str) {
                    Some(t) => text_tokens(t, tokenizer),
                    None => NON_TEXT_PART,
                },
            })
            .sum(),
        Value::Null => 0,
        other => text_tokens(&other.to_string(), tokenizer),
    }
}

/// What a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
    /// `/v1/embeddings`.
    Embeddings,
}

/// The prompt tokens of a request body, before any learned correction.
pub(crate) fn prompt_tokens(endpoint: Endpoint, body: &Value, tokenizer: Tokenizer) -> u64 {
    match endpoint {
        Endpoint::Chat => {
            let mut total = REPLY_PRIMING;
            for m in body
                .get("messages")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                total += PER_MESSAGE;
                if let Some(c) = m.get("content") {
                    total += content_tokens(c, tokenizer);
                }
                if m.get("name").is_some() {
                    total += 1;
                }
                if let Some(calls) = m.get("tool_calls") {
                    total += text_tokens(&calls.to_string(), tokenizer);
                }
            }
            for key in ["tools", "functions", "response_format"] {
                if let Some(v) = body.get(key) {
                    total += text_tokens(&v.to_string(), tokenizer);
                }
            }
            total
        }
        Endpoint::Completions => body
            .get("prompt")
            .map_or(0, |p| content_tokens(p, tokenizer)),
        Endpoint::Embeddings => body
            .get("input")
            .map_or(0, |p| content_tokens(p, tokenizer)),
    }
}

/// The output tokens to reserve: `max_completion_tokens`, else `max_tokens`, else the
/// model's configured estimate (none for embeddings).
pub(crate) fn output_tokens(endpoint: Endpoint, body: &Value, default: u64) -> u64 {
    if endpoint == Endpoint::Embeddings {
        return 0;
    }
    let n = body
        .get("n")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, 128);
    let per = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(default);
    per.saturating_mul(n)
}

const RING: usize = 64;
/// Samples needed before the correction may go below 1.
const MIN_SAMPLES_TO_LOWER: usize = 16;
/// The margin on top of the highest recent ratio.
const MARGIN: f64 = 1.02;

/// The per-model correction of prompt estimates: the highest ratio of the provider's
/// prompt count to our estimate over the last 64 answers, times 1.02. It stays at 1 or
/// above until 16 answers have been seen, and between 0.25 and 8.
pub(crate) struct Learner {
    factor_bits: AtomicU64,
    ring: Mutex<(Vec<f64>, usize)>,
}

impl Learner {
    pub(crate) fn new() -> Self {
        Self {
            factor_bits: AtomicU64::new(1f64.to_bits()),
            ring: Mutex::new((Vec::with_capacity(RING), 0)),
        }
    }

    /// The current factor.
    pub(crate) fn factor(&self) -> f64 {
        f64::from_bits(self.factor_bits.load(Ordering::Relaxed))
    }

    /// The corrected estimate of `raw` prompt tokens (rounded up).
    pub(crate) fn correct(&self, raw: u64) -> u64 {
        let f = self.factor();
        if f == 1.0 {
            raw
        } else {
            (raw as f64 * f).ceil() as u64
        }
    }

    /// Learns from one answer: our raw estimate and the provider's count.
    pub(crate) fn observe(&self, raw_estimate: u64, actual: u64) {
        if raw_estimate == 0 || actual == 0 {
            return;
        }
        let ratio = actual as f64 / raw_estimate as f64;
        let mut ring = self.ring.lock();
        let (samples, next) = &mut *ring;
        if samples.len() < RING {
            samples.push(ratio);
        } else {
            samples[*next] = ratio;
        }
        *next = (*next + 1) % RING;
        let max = samples.iter().copied().fold(0f64, f64::max);
        let mut factor = (max * MARGIN).clamp(0.25, 8.0);
        if samples.len() < MIN_SAMPLES_TO_LOWER {
            factor = factor.max(1.0);
        }
        // Exact agreement needs no margin.
        if samples.iter().all(|r| (*r - 1.0).abs() < 1e-9) {
            factor = 1.0;
        }
        self.factor_bits.store(factor.to_bits(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn heuristic_counts_cjk_honestly() {
        assert_eq!(text_tokens("abcd", Tokenizer::Heuristic), 1);
        assert_eq!(text_tokens("abcde", Tokenizer::Heuristic), 2);
        assert_eq!(text_tokens("你好世界", Tokenizer::Heuristic), 4);
        assert_eq!(text_tokens("你好 ab", Tokenizer::Heuristic), 3);
    }

    #[test]
    fn chat_prompt_follows_the_cookbook() {
        let body = json!({"messages":[{"role":"user","content":"abcdefgh"},{"role":"user","name":"x","content":[{"type":"text","text":"abcd"},{"type":"image_url"}]}],"max_tokens":7});
        assert_eq!(
            prompt_tokens(Endpoint::Chat, &body, Tokenizer::Heuristic),
            3 + 3 + 2 + 3 + 1 + 1 + 85
        );
        assert_eq!(output_tokens(Endpoint::Chat, &body, 1024), 7);
        assert_eq!(output_tokens(Endpoint::Chat, &json!({}), 1024), 1024);
        assert_eq!(output_tokens(Endpoint::Embeddings, &body, 1024), 0);
    }

    #[test]
    fn tiktoken_is_used_for_openai_families() {
        let n = text_tokens("hello world", Tokenizer::O200k);
        assert_eq!(n, 2);
        assert_eq!(text_tokens("hello world", Tokenizer::Cl100k), 2);
    }

    #[test]
    fn the_correction_leans_high() {
        let l = Learner::new();
        l.observe(100, 80);
        assert_eq!(l.factor(), 1.0, "not lowered on little evidence");
        l.observe(100, 130);
        assert!((l.factor() - 1.3 * MARGIN).abs() < 1e-9);
        assert_eq!(l.correct(100), 133);
        for _ in 0..RING {
            l.observe(100, 50);
        }
        assert!(
            (l.factor() - 0.5 * MARGIN).abs() < 1e-9,
            "old highs age out"
        );
        let exact = Learner::new();
        for _ in 0..20 {
            exact.observe(10, 10);
        }
        assert_eq!(exact.correct(10), 10);
    }
}

//! The estimate stage: the tokens a request will cost before it is forwarded, per API
//! (chat, completions, embeddings, Responses, Messages): its prompt counted with
//! tiktoken for OpenAI families (in bounded pieces, so the cost is linear in the
//! body) or a CJK-aware heuristic elsewhere, plus its maximum output. The per-model
//! correction learned from the provider's counts is [`crate::learner`].
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

/// The longest run of whitespace or of non-whitespace handed to tiktoken as one piece.
///
/// tiktoken's byte-pair merge is quadratic in the length of one pre-tokenized piece (a
/// run of letters, of punctuation, of whitespace): a 400 KB word kept a worker busy for
/// 85 s. Longer runs are cut every `MAX_RUN_BYTES` (at a character boundary) and their
/// parts counted apart, which bounds the work per byte. Cutting a run never lowers the
/// count in practice (the merges that cross a cut are lost, each part starts afresh),
/// so the estimate stays high-leaning; no real word is this long.
pub(crate) const MAX_RUN_BYTES: usize = 64;

/// The text of one request tokenized by tiktoken; past it every further byte counts as
/// one token, a hard upper bound (a token is at least one byte). 1 MiB is about 260k
/// tokens of English, twice the context window of gpt-4o: a prompt this long cannot be
/// served by most OpenAI models anyway, and the bound keeps the estimate of a 16 MiB body
/// to a fraction of a second.
pub(crate) const TIKTOKEN_MAX_BYTES: usize = 1 << 20;

/// Segments handed to tiktoken at once end at the first word boundary past this length.
const SEGMENT_BYTES: usize = 16 << 10;

/// Text past which a request's estimate runs on a blocking thread (`block_in_place`)
/// instead of inline on an async worker: below it the estimate takes well under a
/// millisecond and stays on the hot path.
pub(crate) const INLINE_MAX_BYTES: usize = 64 << 10;

/// The request-wide state of one estimate: the tokenizer and the tiktoken budget left.
struct Counter {
    tokenizer: Tokenizer,
    tiktoken_left: usize,
}

impl Counter {
    fn new(tokenizer: Tokenizer) -> Self {
        Self {
            tokenizer,
            tiktoken_left: TIKTOKEN_MAX_BYTES,
        }
    }

    fn text(&mut self, text: &str) -> u64 {
        let bpe = match self.tokenizer {
            Tokenizer::O200k => tiktoken_rs::o200k_base_singleton(),
            Tokenizer::Cl100k => tiktoken_rs::cl100k_base_singleton(),
            Tokenizer::Heuristic | Tokenizer::Auto => return heuristic_tokens(text),
        };
        let budget = floor_char_boundary(text, self.tiktoken_left.min(text.len()));
        self.tiktoken_left -= budget;
        let (counted, rest) = text.split_at(budget);
        let mut total = rest.len() as u64;
        for segment in segments(counted) {
            total += bpe.encode_ordinary(segment).len() as u64;
        }
        total
    }
}

/// The largest character boundary of `text` at or below `at`.
fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// `text` cut into the segments tiktoken counts apart: no run of whitespace or of
/// non-whitespace longer than [`MAX_RUN_BYTES`] in one segment, and segments of about
/// [`SEGMENT_BYTES`], ended before a whitespace that follows a word (where tiktoken's own
/// pre-tokenizer splits: `" word"` stays whole).
fn segments(text: &str) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= bytes.len() {
            return None;
        }
        let mut run = 0usize;
        let mut prev_space: Option<bool> = None;
        let mut i = start;
        while i < bytes.len() {
            let b = bytes[i];
            // A UTF-8 continuation byte belongs to the character before it.
            if b & 0xC0 == 0x80 {
                run += 1;
                i += 1;
                continue;
            }
            let space = b.is_ascii_whitespace();
            if prev_space == Some(space) {
                if run >= MAX_RUN_BYTES {
                    break;
                }
            } else {
                if space && prev_space == Some(false) && i - start >= SEGMENT_BYTES {
                    break;
                }
                run = 0;
            }
            prev_space = Some(space);
            run += 1;
            i += 1;
        }
        let segment = &text[start..i];
        start = i;
        Some(segment)
    })
}

/// The heuristic: CJK characters one token each, other characters four per token,
/// rounded up.
fn heuristic_tokens(text: &str) -> u64 {
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

/// Tokens of `text`: tiktoken for OpenAI families (in bounded pieces, see
/// [`MAX_RUN_BYTES`] and [`TIKTOKEN_MAX_BYTES`]), else CJK characters one each plus other
/// characters four per token, rounded up.
#[cfg(test)]
fn text_tokens(text: &str, tokenizer: Tokenizer) -> u64 {
    Counter::new(tokenizer).text(text)
}

/// The exact count of tiktoken on `text` in one call, quadratic in the longest word: the
/// reference the bounded count is checked against (tests and the benchmark).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn tiktoken_exact(text: &str, tokenizer: Tokenizer) -> Option<u64> {
    let bpe = match tokenizer {
        Tokenizer::O200k => tiktoken_rs::o200k_base_singleton(),
        Tokenizer::Cl100k => tiktoken_rs::cl100k_base_singleton(),
        Tokenizer::Heuristic | Tokenizer::Auto => return None,
    };
    Some(bpe.encode_ordinary(text).len() as u64)
}

fn content_tokens(content: &Value, counter: &mut Counter) -> u64 {
    match content {
        Value::String(s) => counter.text(s),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match p {
                Value::String(s) => counter.text(s),
                Value::Number(_) => 1,
                _ => match p.get("text").and_then(Value::as_str) {
                    Some(t) => counter.text(t),
                    None => NON_TEXT_PART,
                },
            })
            .sum(),
        Value::Null => 0,
        other => counter.text(&other.to_string()),
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
    /// `/v1/responses` (OpenAI's Responses API).
    Responses,
    /// `/v1/messages` (Anthropic's Messages API).
    Messages,
}

impl Endpoint {
    /// Every endpoint, in declaration order (`self as usize` indexes it).
    pub(crate) const ALL: [Endpoint; 5] = [
        Self::Chat,
        Self::Completions,
        Self::Embeddings,
        Self::Responses,
        Self::Messages,
    ];

    /// Its path after `/v1`, here and upstream.
    pub(crate) fn path(self) -> &'static str {
        match self {
            Self::Chat => "/chat/completions",
            Self::Completions => "/completions",
            Self::Embeddings => "/embeddings",
            Self::Responses => "/responses",
            Self::Messages => "/messages",
        }
    }

    /// Whether a request of this endpoint may ask for a streamed answer.
    pub(crate) fn streams(self) -> bool {
        self != Self::Embeddings
    }

    /// Whether a streamed answer carries its usage only when asked
    /// (`stream_options.include_usage`): chat and completions. The Responses and
    /// Messages streams always end with it.
    pub(crate) fn usage_on_request(self) -> bool {
        matches!(self, Self::Chat | Self::Completions)
    }
}

/// Tokens of one content block or input item of the Responses or Messages API: its
/// text (`text`; `output` of a function call's result), its serialised arguments
/// (`arguments`, `input` of a tool use), the blocks it holds (`content` of a message
/// or a tool result), else one non-text part (an image, a file).
fn block_tokens(block: &Value, counter: &mut Counter) -> u64 {
    match block {
        Value::String(s) => counter.text(s),
        Value::Array(blocks) => blocks.iter().map(|b| block_tokens(b, counter)).sum(),
        Value::Object(o) => {
            let mut total = 0;
            let mut found = false;
            for key in ["text", "output", "arguments", "name"] {
                if let Some(t) = o.get(key).and_then(Value::as_str) {
                    total += counter.text(t);
                    found = true;
                }
            }
            if let Some(input) = o.get("input") {
                total += counter.text(&input.to_string());
                found = true;
            }
            if let Some(content) = o.get("content") {
                total += block_tokens(content, counter);
                found = true;
            }
            if found { total } else { NON_TEXT_PART }
        }
        Value::Null => 0,
        other => counter.text(&other.to_string()),
    }
}

/// The prompt tokens of a request body, before any learned correction.
///
/// Linear in the body: see [`MAX_RUN_BYTES`] and [`TIKTOKEN_MAX_BYTES`].
pub(crate) fn prompt_tokens(endpoint: Endpoint, body: &Value, tokenizer: Tokenizer) -> u64 {
    let mut counter = Counter::new(tokenizer);
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
                    total += content_tokens(c, &mut counter);
                }
                if m.get("name").is_some() {
                    total += 1;
                }
                if let Some(calls) = m.get("tool_calls") {
                    total += counter.text(&calls.to_string());
                }
            }
            for key in ["tools", "functions", "response_format"] {
                if let Some(v) = body.get(key) {
                    total += counter.text(&v.to_string());
                }
            }
            total
        }
        Endpoint::Completions => body
            .get("prompt")
            .map_or(0, |p| content_tokens(p, &mut counter)),
        Endpoint::Embeddings => body
            .get("input")
            .map_or(0, |p| content_tokens(p, &mut counter)),
        // Like chat: the instructions one more message, a string input one user
        // message, each item a message with its content.
        Endpoint::Responses => {
            let mut total = REPLY_PRIMING;
            if let Some(i) = body.get("instructions") {
                total += PER_MESSAGE + block_tokens(i, &mut counter);
            }
            match body.get("input") {
                Some(Value::Array(items)) => {
                    for item in items {
                        total += PER_MESSAGE + block_tokens(item, &mut counter);
                    }
                }
                Some(other) => total += PER_MESSAGE + block_tokens(other, &mut counter),
                None => {}
            }
            if let Some(v) = body.get("tools") {
                total += counter.text(&v.to_string());
            }
            total
        }
        // Like chat: the system prompt one more message.
        Endpoint::Messages => {
            let mut total = REPLY_PRIMING;
            if let Some(system) = body.get("system") {
                total += PER_MESSAGE + block_tokens(system, &mut counter);
            }
            for m in body
                .get("messages")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                total += PER_MESSAGE
                    + m.get("content")
                        .map_or(0, |c| block_tokens(c, &mut counter));
            }
            if let Some(v) = body.get("tools") {
                total += counter.text(&v.to_string());
            }
            total
        }
    }
}

/// [`prompt_tokens`] for a request of `body_len` bytes, off the async workers when the
/// body is larger than [`INLINE_MAX_BYTES`] (`block_in_place`: the worker's other tasks
/// move to another thread meanwhile, so `/healthz` and other requests keep being
/// answered). A small request is estimated inline, as it is on the hot path; so is any
/// request on a current-thread runtime, where there is no other worker to hand over to.
pub(crate) fn prompt_tokens_bounded(
    endpoint: Endpoint,
    body: &Value,
    tokenizer: Tokenizer,
    body_len: usize,
) -> u64 {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if body_len > INLINE_MAX_BYTES && multi_thread {
        tokio::task::block_in_place(|| prompt_tokens(endpoint, body, tokenizer))
    } else {
        prompt_tokens(endpoint, body, tokenizer)
    }
}

/// The output tokens to reserve: `max_completion_tokens`, else `max_tokens`, else the
/// model's configured estimate (none for embeddings); for the Responses API
/// `max_output_tokens`, for Messages `max_tokens`.
pub(crate) fn output_tokens(endpoint: Endpoint, body: &Value, default: u64) -> u64 {
    match endpoint {
        Endpoint::Embeddings => return 0,
        Endpoint::Responses | Endpoint::Messages => {
            let key = if endpoint == Endpoint::Responses {
                "max_output_tokens"
            } else {
                "max_tokens"
            };
            return body.get(key).and_then(Value::as_u64).unwrap_or(default);
        }
        Endpoint::Chat | Endpoint::Completions => {}
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
    fn responses_and_messages_count_like_chat() {
        let h = Tokenizer::Heuristic;
        let r = json!({"instructions": "abcd", "input": "Hello, world!", "max_output_tokens": 9});
        assert_eq!(
            prompt_tokens(Endpoint::Responses, &r, h),
            3 + (3 + 1) + (3 + 4)
        );
        assert_eq!(output_tokens(Endpoint::Responses, &r, 1024), 9);
        assert_eq!(output_tokens(Endpoint::Responses, &json!({}), 1024), 1024);
        let items = json!({"input": [
            {"role": "user", "content": [{"type": "input_text", "text": "abcdefgh"}, {"type": "input_image", "image_url": "u"}]},
            {"type": "function_call", "name": "abcd", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "abcdefgh"}]});
        assert_eq!(
            prompt_tokens(Endpoint::Responses, &items, h),
            3 + (3 + 2 + 85) + (3 + 1 + 1) + (3 + 2)
        );
        let m = json!({"system": [{"type": "text", "text": "abcd"}], "max_tokens": 5, "messages": [
            {"role": "user", "content": "Hello, world!"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "abcdefgh"}, {"type": "image", "source": {}}]}]});
        assert_eq!(
            prompt_tokens(Endpoint::Messages, &m, h),
            // the tool use counts its name and its input (`{"a":1}`, 7 characters)
            3 + (3 + 1) + (3 + 4) + (3 + 1 + 2) + (3 + 2 + 85)
        );
        assert_eq!(output_tokens(Endpoint::Messages, &m, 1024), 5);
    }

    #[test]
    fn tiktoken_is_used_for_openai_families() {
        let n = text_tokens("hello world", Tokenizer::O200k);
        assert_eq!(n, 2);
        assert_eq!(text_tokens("hello world", Tokenizer::Cl100k), 2);
    }

    /// English prose with some numbers, code and punctuation: what prompts look like.
    fn english(bytes: usize) -> String {
        let words = [
            "The",
            "gateway",
            "estimates",
            "each",
            "request's",
            "cost",
            "before",
            "asking",
            "the",
            "limiter",
            "for",
            "a",
            "slot;",
            "internationalization,",
            "2026-12-02",
            "fn main() { println!(\"hi\"); }",
            "https://example.com/a/b?c=d",
            "\n\n",
            "—",
            "naïve",
            "café",
            "1234567",
            "    indented",
            "x_y_z",
            "(parenthesised)",
        ];
        let mut s = String::new();
        let mut i = 0usize;
        while s.len() < bytes {
            s.push_str(words[(i * 7 + i / 3) % words.len()]);
            s.push(' ');
            i += 1;
        }
        s
    }

    fn cjk(chars: usize) -> String {
        let text = "速率限制协调器在多个副本之间共享同一个提供商的配额，每个请求先估算成本，再向限制器申请时隙。トークンの見積もりは高めに。한국어 텍스트도 있습니다. ";
        text.chars().cycle().take(chars).collect()
    }

    fn random_letters(bytes: usize, seed: u64) -> String {
        let mut x = seed | 1;
        (0..bytes)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (b'a' + (x % 26) as u8) as char
            })
            .collect()
    }

    #[test]
    fn bounded_count_is_exact_or_above_on_normal_text() {
        for tokenizer in [Tokenizer::O200k, Tokenizer::Cl100k] {
            for text in [english(200_000), cjk(60_000), english(3_000), cjk(500)] {
                let exact = tiktoken_exact(&text, tokenizer).unwrap();
                let bounded = text_tokens(&text, tokenizer);
                assert!(bounded >= exact, "{tokenizer:?}: {bounded} < exact {exact}");
                // Close to exact: cutting only touches runs longer than MAX_RUN_BYTES.
                assert!(
                    bounded as f64 <= exact as f64 * 1.10,
                    "{tokenizer:?}: {bounded} vs exact {exact}"
                );
            }
        }
    }

    #[test]
    fn bounded_count_is_exact_or_above_on_adversarial_text() {
        let texts = [
            "a".repeat(6_000),
            random_letters(6_000, 7),
            "!".repeat(3_000),
            " ".repeat(3_000),
            "\n".repeat(3_000),
            "7".repeat(3_000),
            "你".repeat(2_000),
            format!("{} {}", "b".repeat(3_000), random_letters(3_000, 9)),
        ];
        for tokenizer in [Tokenizer::O200k, Tokenizer::Cl100k] {
            for text in &texts {
                let exact = tiktoken_exact(text, tokenizer).unwrap();
                let bounded = text_tokens(text, tokenizer);
                assert!(
                    bounded >= exact,
                    "{tokenizer:?} on {:?}…: {bounded} < exact {exact}",
                    &text[..8]
                );
                assert!(bounded <= text.len() as u64, "at most one token a byte");
            }
        }
    }

    #[test]
    fn segments_cover_the_text_and_bound_every_run() {
        let texts = [
            english(100_000),
            cjk(20_000),
            "a".repeat(10_000),
            "é".repeat(5_000),
            format!("{}{}{}", " ".repeat(500), "x".repeat(500), "\t".repeat(500)),
            String::new(),
        ];
        for text in &texts {
            let parts: Vec<&str> = segments(text).collect();
            assert_eq!(parts.concat(), *text, "nothing lost or reordered");
            for p in &parts {
                assert!(!p.is_empty());
                assert!(p.len() <= SEGMENT_BYTES + MAX_RUN_BYTES + 4, "{}", p.len());
                let mut run = 0usize;
                let mut prev = None;
                for c in p.chars() {
                    let space = c.is_ascii_whitespace();
                    run = if prev == Some(space) {
                        run + c.len_utf8()
                    } else {
                        c.len_utf8()
                    };
                    prev = Some(space);
                    assert!(run <= MAX_RUN_BYTES + 3, "a run of {run} bytes");
                }
            }
        }
        // Normal text is cut only at word boundaries, and rarely.
        let text = english(100_000);
        let parts: Vec<&str> = segments(&text).collect();
        assert!(parts.len() < 20, "{} segments", parts.len());
        assert!(parts[1..].iter().all(|p| p.starts_with(' ')));
    }

    #[test]
    fn past_the_tiktoken_budget_every_byte_counts_as_a_token() {
        let text = "a".repeat(TIKTOKEN_MAX_BYTES + 10_000);
        let n = text_tokens(&text, Tokenizer::O200k);
        assert!(n >= 10_000, "{n}");
        assert!(n <= text.len() as u64);
        // The budget is per request: a second message past it is counted by its bytes.
        let body = json!({"messages":[
            {"role":"user","content": "a".repeat(TIKTOKEN_MAX_BYTES)},
            {"role":"user","content": "hello world"},
        ]});
        let n = prompt_tokens(Endpoint::Chat, &body, Tokenizer::O200k);
        let first = text_tokens(&"a".repeat(TIKTOKEN_MAX_BYTES), Tokenizer::O200k);
        assert_eq!(n, 3 + 3 + first + 3 + "hello world".len() as u64);
        // A split in the middle of a character does not panic.
        let text = "é".repeat(TIKTOKEN_MAX_BYTES / 2 + 3);
        assert!(text_tokens(&text, Tokenizer::Cl100k) > 0);
    }

    #[test]
    fn the_inline_and_blocking_paths_agree() {
        let body = json!({"messages":[{"role":"user","content": english(100_000)}]});
        let inline = prompt_tokens(Endpoint::Chat, &body, Tokenizer::O200k);
        assert_eq!(
            prompt_tokens_bounded(Endpoint::Chat, &body, Tokenizer::O200k, 10),
            inline
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let off = rt.block_on(async {
            tokio::spawn(async move {
                prompt_tokens_bounded(Endpoint::Chat, &body, Tokenizer::O200k, 1 << 20)
            })
            .await
            .unwrap()
        });
        assert_eq!(off, inline);
    }
}

//! The token formula and the deterministic answer text: what tests and the gateway can predict exactly.
//!
//! * `text_tokens(s)` = number of CJK characters + ⌈other characters / 4⌉ (characters are
//!   Unicode scalar values; CJK is the ranges in [`is_cjk`]).
//! * Chat prompt = 3 (reply priming) + Σ over messages of (3 + `text_tokens(content)` + 1 if the
//!   message has a `name`). Content given as parts counts the `text` of every text part
//!   (each part separately) and 85 per non-text part (an image at low detail).
//! * Completions prompt = `text_tokens(prompt)` (a list of strings: the sum; token arrays: their length).
//! * Embeddings input: like a completions prompt.
//! * Completion tokens = `max_completion_tokens`, else `max_tokens`, else the model's
//!   `completion_tokens` setting (fixed, or uniform from the seeded generator).
//! * The answer text of `n` tokens is `n` three-letter words separated by single spaces
//!   (`4n − 1` characters, so [`text_tokens`] of it is exactly `n`).

/// Tokens of a non-text content part (an image at low detail).
pub const NON_TEXT_PART_TOKENS: u64 = 85;
/// Tokens per chat message besides its content.
pub const PER_MESSAGE_TOKENS: u64 = 3;
/// Tokens that prime the reply, once per chat request.
pub const REPLY_PRIMING_TOKENS: u64 = 3;
/// Extra tokens for a message with a `name`.
pub const NAME_TOKENS: u64 = 1;

/// Whether `c` counts as one whole token: Hangul Jamo U+1100–11FF, CJK radicals to CJK Unified
/// Ideographs U+2E80–9FFF (includes kana, bopomofo, CJK punctuation, Extension A), Hangul
/// Jamo Extended-A U+A960–A97F, Hangul syllables and Jamo Extended-B U+AC00–D7FF, CJK
/// compatibility ideographs U+F900–FAFF, CJK compatibility forms U+FE30–FE4F, half- and
/// full-width forms U+FF00–FFEF, and the supplementary ideographic planes U+20000–3FFFF.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x11FF
        | 0x2E80..=0x9FFF
        | 0xA960..=0xA97F
        | 0xAC00..=0xD7FF
        | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F
        | 0xFF00..=0xFFEF
        | 0x20000..=0x3FFFF)
}

/// Tokens of a text: CJK characters + ⌈other characters / 4⌉.
pub fn text_tokens(text: &str) -> u64 {
    let (mut cjk, mut other) = (0u64, 0u64);
    if text.is_ascii() {
        other = text.len() as u64;
    } else {
        for c in text.chars() {
            if is_cjk(c) {
                cjk += 1;
            } else {
                other += 1;
            }
        }
    }
    cjk + other.div_ceil(4)
}

const WORDS: [&str; 16] = [
    "sim", "set", "the", "log", "for", "all", "new", "key", "and", "its", "way", "now", "one",
    "two", "red", "sun",
];

/// Appends the words of tokens `from..to` of an answer to `out` (a space before every word but the first of the answer).
pub fn push_answer(out: &mut String, from: u64, to: u64) {
    for i in from..to {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[(i % WORDS.len() as u64) as usize]);
    }
}

/// The whole answer text of `n` tokens.
pub fn answer(n: u64) -> String {
    let mut out = String::with_capacity(usize::try_from(n.saturating_mul(4)).unwrap_or(0));
    push_answer(&mut out, 0, n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_is_a_quarter_rounded_up() {
        assert_eq!(text_tokens(""), 0);
        assert_eq!(text_tokens("a"), 1);
        assert_eq!(text_tokens("abcd"), 1);
        assert_eq!(text_tokens("abcde"), 2);
        assert_eq!(text_tokens("Hello, world!"), 4);
    }

    #[test]
    fn cjk_counts_one_each() {
        assert_eq!(text_tokens("你好世界"), 4);
        assert_eq!(text_tokens("你好, ab"), 2 + 1);
        assert_eq!(text_tokens("こんにちは"), 5);
        assert_eq!(text_tokens("안녕"), 2);
        assert_eq!(text_tokens("é"), 1);
        assert_eq!(text_tokens("ééééé"), 2);
    }

    #[test]
    fn answer_has_exactly_n_tokens() {
        for n in [0u64, 1, 2, 3, 17, 100, 1000] {
            let text = answer(n);
            assert_eq!(text_tokens(&text), n);
            assert_eq!(text.split(' ').filter(|w| !w.is_empty()).count() as u64, n);
        }
        assert_eq!(answer(3), "sim set the");
    }

    #[test]
    fn chunks_concatenate_to_the_answer() {
        let mut out = String::new();
        push_answer(&mut out, 0, 4);
        push_answer(&mut out, 4, 9);
        push_answer(&mut out, 9, 10);
        assert_eq!(out, answer(10));
    }
}

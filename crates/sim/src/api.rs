//! The OpenAI-compatible wire types: requests as parsed, answers and chunks as sent, and the token counts of a request.

use serde::{Deserialize, Serialize};

use crate::tokens::{
    NAME_TOKENS, NON_TEXT_PART_TOKENS, PER_MESSAGE_TOKENS, REPLY_PRIMING_TOKENS, text_tokens,
};

/// `POST /v1/chat/completions` as read (unknown fields are ignored).
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The model.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Legacy maximum of completion tokens.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Maximum of completion tokens (takes precedence over `max_tokens`).
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

/// `stream_options`.
#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// One chat message.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`...
    pub role: String,
    /// Text or parts; may be null.
    #[serde(default)]
    pub content: Option<Content>,
    /// An optional participant name.
    #[serde(default)]
    pub name: Option<String>,
}

/// Message content.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Typed parts.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Deserialize)]
pub struct ContentPart {
    /// `text`, `image_url`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// `POST /v1/completions` as read.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// The model.
    pub model: String,
    /// The prompt.
    #[serde(default)]
    pub prompt: Option<Input>,
    /// Maximum of completion tokens.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Stream the answer.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

/// `POST /v1/embeddings` as read.
#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    /// The model.
    pub model: String,
    /// What to embed.
    pub input: Input,
}

/// A prompt or embedding input: text, texts, tokens or token lists.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
    /// One token list.
    Tokens(Vec<u64>),
    /// Several token lists.
    TokenLists(Vec<Vec<u64>>),
}

impl Input {
    /// Tokens of the input (see [`crate::tokens`]).
    pub fn tokens(&self) -> u64 {
        match self {
            Self::Text(t) => text_tokens(t),
            Self::Texts(ts) => ts.iter().map(|t| text_tokens(t)).sum(),
            Self::Tokens(t) => t.len() as u64,
            Self::TokenLists(ls) => ls.iter().map(|l| l.len() as u64).sum(),
        }
    }

    /// How many separate inputs (embeddings returned).
    pub fn count(&self) -> usize {
        match self {
            Self::Text(_) | Self::Tokens(_) => 1,
            Self::Texts(ts) => ts.len(),
            Self::TokenLists(ls) => ls.len(),
        }
    }
}

/// Prompt tokens of a chat request (see [`crate::tokens`]).
pub fn chat_prompt_tokens(messages: &[ChatMessage]) -> u64 {
    let mut total = REPLY_PRIMING_TOKENS;
    for message in messages {
        total += PER_MESSAGE_TOKENS;
        if message.name.is_some() {
            total += NAME_TOKENS;
        }
        match &message.content {
            None => {}
            Some(Content::Text(text)) => total += text_tokens(text),
            Some(Content::Parts(parts)) => {
                for part in parts {
                    total += match (&part.text, part.kind.as_str()) {
                        (Some(text), "text") => text_tokens(text),
                        (_, "text") => 0,
                        _ => NON_TEXT_PART_TOKENS,
                    };
                }
            }
        }
    }
    total
}

/// The usage object of an answer.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Their sum.
    pub total_tokens: u64,
}

impl Usage {
    /// The usage of `prompt` + `completion` tokens.
    pub fn new(prompt: u64, completion: u64) -> Self {
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
        }
    }
}

/// A non-streamed chat completion.
#[derive(Debug, Serialize)]
pub struct ChatCompletion<'a> {
    /// `chatcmpl-…`.
    pub id: &'a str,
    /// `chat.completion`.
    pub object: &'static str,
    /// UNIX seconds.
    pub created: u64,
    /// The model.
    pub model: &'a str,
    /// One choice.
    pub choices: [ChatChoice<'a>; 1],
    /// The usage.
    pub usage: Usage,
    /// Always null.
    pub system_fingerprint: Option<&'a str>,
}

/// A choice of a chat completion.
#[derive(Debug, Serialize)]
pub struct ChatChoice<'a> {
    /// 0.
    pub index: u32,
    /// The answer.
    pub message: AssistantMessage<'a>,
    /// Always null.
    pub logprobs: Option<()>,
    /// `length` when the answer used all of `max_tokens`, else `stop`.
    pub finish_reason: &'static str,
}

/// The assistant's message.
#[derive(Debug, Serialize)]
pub struct AssistantMessage<'a> {
    /// `assistant`.
    pub role: &'static str,
    /// The answer text.
    pub content: &'a str,
}

/// A non-streamed text completion.
#[derive(Debug, Serialize)]
pub struct TextCompletion<'a> {
    /// `cmpl-…`.
    pub id: &'a str,
    /// `text_completion`.
    pub object: &'static str,
    /// UNIX seconds.
    pub created: u64,
    /// The model.
    pub model: &'a str,
    /// One choice.
    pub choices: [TextChoice<'a>; 1],
    /// The usage.
    pub usage: Usage,
}

/// A choice of a text completion.
#[derive(Debug, Serialize)]
pub struct TextChoice<'a> {
    /// The text.
    pub text: &'a str,
    /// 0.
    pub index: u32,
    /// Always null.
    pub logprobs: Option<()>,
    /// `length` or `stop`.
    pub finish_reason: Option<&'static str>,
}

/// The OpenAI error envelope `{"error":{"message","type","param","code"}}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct OpenAiError {
    /// The error.
    pub error: OpenAiErrorBody,
}

/// The inside of [`OpenAiError`].
#[derive(Debug, Serialize, Deserialize)]
pub struct OpenAiErrorBody {
    /// Human-readable text.
    pub message: String,
    /// The error type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The offending parameter.
    pub param: Option<String>,
    /// A machine-readable code.
    pub code: Option<String>,
}

impl OpenAiError {
    /// An error with this message, type, param and code.
    pub fn new(
        message: impl Into<String>,
        kind: &str,
        param: Option<String>,
        code: Option<&str>,
    ) -> Self {
        Self {
            error: OpenAiErrorBody {
                message: message.into(),
                kind: kind.to_owned(),
                param,
                code: code.map(str::to_owned),
            },
        }
    }
}

/// Dimensions of the embeddings served.
pub const EMBEDDING_DIMS: usize = 8;

/// A deterministic embedding of `dims` values in [-1, 1] derived from an FNV-1a hash of `seed_text`.
pub fn embedding(seed_text: &str, index: usize, dims: usize) -> Vec<f32> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in seed_text.bytes().chain(index.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (0..dims)
        .map(|_| {
            hash ^= hash >> 33;
            hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
            hash ^= hash >> 33;
            ((hash >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(json: &str) -> ChatRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn chat_prompt_formula() {
        let r = chat(r#"{"model":"m","messages":[{"role":"user","content":"Hello, world!"}]}"#);
        // 3 priming + 3 message + 4 text
        assert_eq!(chat_prompt_tokens(&r.messages), 10);
        let r = chat(
            r#"{"model":"m","messages":[
                {"role":"system","content":"abcd","name":"x"},
                {"role":"user","content":[{"type":"text","text":"你好"},{"type":"image_url","image_url":{"url":"u"}}]},
                {"role":"assistant","content":null}]}"#,
        );
        assert_eq!(
            chat_prompt_tokens(&r.messages),
            3 + (3 + 1 + 1) + (3 + 2 + 85) + 3
        );
    }

    #[test]
    fn inputs_count() {
        let i: Input = serde_json::from_str(r#""abcdefgh""#).unwrap();
        assert_eq!((i.tokens(), i.count()), (2, 1));
        let i: Input = serde_json::from_str(r#"["abcd","你"]"#).unwrap();
        assert_eq!((i.tokens(), i.count()), (2, 2));
        let i: Input = serde_json::from_str(r#"[1,2,3]"#).unwrap();
        assert_eq!((i.tokens(), i.count()), (3, 1));
        let i: Input = serde_json::from_str(r#"[[1,2],[3]]"#).unwrap();
        assert_eq!((i.tokens(), i.count()), (3, 2));
    }

    #[test]
    fn embeddings_are_deterministic_and_bounded() {
        let a = embedding("x", 0, 8);
        assert_eq!(a, embedding("x", 0, 8));
        assert_ne!(a, embedding("x", 1, 8));
        assert!(a.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}

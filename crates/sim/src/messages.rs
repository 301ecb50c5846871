//! Anthropic's Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`):
//! the request as read, its input tokens, the answer and the streamed events, with
//! usage where Anthropic puts it (`usage` of the message; `message_start` carries the
//! input tokens, the last `message_delta` the output tokens).
//!
//! Input tokens follow the chat formula of [`crate::tokens`]: 3 to prime the reply,
//! `system` as one more message, and per message 3 plus its content (`text` blocks by
//! their text, a `tool_result` by its content, a `tool_use` by its serialised input,
//! any other block 85).

use serde::Deserialize;
use serde_json::{Value, json};

use crate::tokens::{NON_TEXT_PART_TOKENS, PER_MESSAGE_TOKENS, REPLY_PRIMING_TOKENS, text_tokens};

/// The header every Messages request must carry.
pub const VERSION_HEADER: &str = "anthropic-version";

/// `POST /v1/messages` as read (unknown fields are ignored).
#[derive(Debug, Deserialize)]
pub struct MessagesRequest {
    /// The model.
    pub model: String,
    /// The conversation.
    pub messages: Vec<AnthropicMessage>,
    /// A system prompt: text or text blocks.
    #[serde(default)]
    pub system: Option<Value>,
    /// Maximum of output tokens (required on `/v1/messages`, absent on `count_tokens`).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Stream the answer as named server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
}

/// One message of a Messages request.
#[derive(Debug, Deserialize)]
pub struct AnthropicMessage {
    /// `user` or `assistant`.
    pub role: String,
    /// Text or content blocks.
    pub content: Value,
}

/// Tokens of a content value: a string, or blocks.
fn content_tokens(content: &Value) -> u64 {
    match content {
        Value::String(text) => text_tokens(text),
        Value::Array(blocks) => blocks.iter().map(block_tokens).sum(),
        _ => 0,
    }
}

fn block_tokens(block: &Value) -> u64 {
    match block.get("type").and_then(Value::as_str) {
        Some("text") => block
            .get("text")
            .and_then(Value::as_str)
            .map_or(0, text_tokens),
        Some("tool_result") => block.get("content").map_or(0, content_tokens),
        Some("tool_use") => block
            .get("input")
            .map_or(0, |input| text_tokens(&input.to_string())),
        _ => NON_TEXT_PART_TOKENS,
    }
}

impl MessagesRequest {
    /// Input tokens (see the module docs).
    pub fn input_tokens(&self) -> u64 {
        let mut total = REPLY_PRIMING_TOKENS;
        if let Some(system) = &self.system {
            total += PER_MESSAGE_TOKENS + content_tokens(system);
        }
        for message in &self.messages {
            total += PER_MESSAGE_TOKENS + content_tokens(&message.content);
        }
        total
    }

    /// The first message whose role is neither `user` nor `assistant`.
    pub fn bad_role(&self) -> Option<usize> {
        self.messages
            .iter()
            .position(|m| m.role != "user" && m.role != "assistant")
    }
}

/// What a message object needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageShape<'a> {
    pub(crate) id: &'a str,
    pub(crate) model: &'a str,
    pub(crate) input_tokens: u64,
}

/// `stop_reason`: `max_tokens` when the answer used all of them, else `end_turn`.
fn stop_reason(hit_limit: bool) -> &'static str {
    if hit_limit { "max_tokens" } else { "end_turn" }
}

fn usage(input: u64, output: u64) -> Value {
    json!({"input_tokens": input, "cache_creation_input_tokens": 0,
           "cache_read_input_tokens": 0, "output_tokens": output})
}

impl MessageShape<'_> {
    /// The whole message, as a non-streamed answer.
    pub(crate) fn message(&self, text: &str, output_tokens: u64, hit_limit: bool) -> Value {
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": stop_reason(hit_limit),
            "stop_sequence": null,
            "usage": usage(self.input_tokens, output_tokens),
        })
    }

    /// The events that open a stream: `message_start` (input tokens, 1 output token so
    /// far, as Anthropic sends), `content_block_start` and a `ping`.
    pub(crate) fn opening(&self) -> Vec<(&'static str, Value)> {
        vec![
            (
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": usage(self.input_tokens, 1)}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                       "content_block": {"type": "text", "text": ""}}),
            ),
            ("ping", json!({"type": "ping"})),
        ]
    }

    /// One `content_block_delta`.
    pub(crate) fn delta(&self, text: &str) -> (&'static str, Value) {
        (
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": text}}),
        )
    }

    /// `content_block_stop`.
    pub(crate) fn block_stop(&self) -> (&'static str, Value) {
        (
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        )
    }

    /// `message_delta` with the stop reason and the output tokens (`None`: no usage,
    /// the missing-usage fault).
    pub(crate) fn message_delta(
        &self,
        output: Option<u64>,
        hit_limit: bool,
    ) -> (&'static str, Value) {
        let mut event = json!({"type": "message_delta",
            "delta": {"stop_reason": stop_reason(hit_limit), "stop_sequence": null}});
        if let Some(output) = output {
            event["usage"] = json!({"output_tokens": output});
        }
        ("message_delta", event)
    }

    /// `message_stop`, the last event.
    pub(crate) fn stop(&self) -> (&'static str, Value) {
        ("message_stop", json!({"type": "message_stop"}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> MessagesRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn input_formula() {
        let r = req(
            r#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"Hello, world!"}]}"#,
        );
        assert_eq!(r.input_tokens(), 3 + 3 + 4);
        let r = req(
            r#"{"model":"m","max_tokens":8,"system":[{"type":"text","text":"abcd"}],"messages":[
                {"role":"user","content":[{"type":"text","text":"你好"},{"type":"image","source":{}}]},
                {"role":"assistant","content":[{"type":"tool_use","id":"t","name":"f","input":{}}]},
                {"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":"abcdefgh"}]}]}"#,
        );
        assert_eq!(
            r.input_tokens(),
            3 + (3 + 1) + (3 + 2 + 85) + (3 + 1) + (3 + 2)
        );
        assert_eq!(r.bad_role(), None);
    }

    #[test]
    fn the_message_carries_usage_and_stop_reason() {
        let shape = MessageShape {
            id: "msg_sim1",
            model: "m",
            input_tokens: 10,
        };
        let m = shape.message("sim set", 2, true);
        assert_eq!(m["stop_reason"], "max_tokens");
        assert_eq!(m["usage"]["input_tokens"], 10);
        assert_eq!(m["usage"]["output_tokens"], 2);
        let (_, d) = shape.message_delta(None, false);
        assert!(d.get("usage").is_none());
    }
}

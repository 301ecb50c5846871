//! OpenAI's Responses API (`POST /v1/responses`): the request as read, its prompt
//! tokens, the answer and the streamed events, with usage where OpenAI puts it (the
//! response's `usage`, and the `response.completed` event's `response.usage`).
//!
//! Prompt tokens follow the chat formula of [`crate::tokens`]: 3 to prime the reply,
//! and per input item 3 plus its content (`input_text` and `output_text` parts by
//! their text, any other part 85); `instructions` count as one more message; an
//! `input` given as a string is one user message. Items that are not messages count
//! the text they carry (`output` of a `function_call_output`, `arguments` and `name`
//! of a `function_call`).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::tokens::{NON_TEXT_PART_TOKENS, PER_MESSAGE_TOKENS, REPLY_PRIMING_TOKENS, text_tokens};

/// `POST /v1/responses` as read (unknown fields are ignored).
#[derive(Debug, Deserialize)]
pub struct ResponsesRequest {
    /// The model.
    pub model: String,
    /// A string (one user message) or input items.
    pub input: ResponsesInput,
    /// System-level instructions.
    #[serde(default)]
    pub instructions: Option<String>,
    /// Maximum of output tokens.
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    /// Stream the answer as named server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
}

/// The `input` of a Responses request.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ResponsesInput {
    /// One user message.
    Text(String),
    /// Input items (messages, function calls and their outputs, …).
    Items(Vec<Value>),
}

/// Tokens of an item's `content`: a string, or parts.
fn content_tokens(content: Option<&Value>) -> u64 {
    match content {
        Some(Value::String(text)) => text_tokens(text),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| {
                let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
                match (kind, part.get("text").and_then(Value::as_str)) {
                    ("input_text" | "output_text" | "text", Some(text)) => text_tokens(text),
                    ("input_text" | "output_text" | "text", None) => 0,
                    _ => NON_TEXT_PART_TOKENS,
                }
            })
            .sum(),
        _ => 0,
    }
}

fn text_field(item: &Value, name: &str) -> u64 {
    item.get(name)
        .and_then(Value::as_str)
        .map_or(0, text_tokens)
}

impl ResponsesRequest {
    /// Prompt tokens (see the module docs).
    pub fn prompt_tokens(&self) -> u64 {
        let mut total = REPLY_PRIMING_TOKENS;
        if let Some(instructions) = &self.instructions {
            total += PER_MESSAGE_TOKENS + text_tokens(instructions);
        }
        match &self.input {
            ResponsesInput::Text(text) => total += PER_MESSAGE_TOKENS + text_tokens(text),
            ResponsesInput::Items(items) => {
                for item in items {
                    total += PER_MESSAGE_TOKENS;
                    total += match item.get("type").and_then(Value::as_str) {
                        None | Some("message") => content_tokens(item.get("content")),
                        Some("function_call_output") => text_field(item, "output"),
                        Some("function_call") => {
                            text_field(item, "arguments") + text_field(item, "name")
                        }
                        Some(_) => content_tokens(item.get("content")),
                    };
                }
            }
        }
        total
    }

    /// Whether the items are well formed enough to answer: none is a non-object.
    pub fn malformed_item(&self) -> Option<usize> {
        match &self.input {
            ResponsesInput::Text(_) => None,
            ResponsesInput::Items(items) => items.iter().position(|i| !i.is_object()),
        }
    }
}

/// The usage of a response.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ResponsesUsage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Cached prompt tokens (always 0 here).
    pub input_tokens_details: CachedTokens,
    /// Output tokens.
    pub output_tokens: u64,
    /// Reasoning tokens (always 0 here).
    pub output_tokens_details: ReasoningTokens,
    /// Their sum.
    pub total_tokens: u64,
}

/// `input_tokens_details`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct CachedTokens {
    /// Always 0.
    pub cached_tokens: u64,
}

/// `output_tokens_details`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ReasoningTokens {
    /// Always 0.
    pub reasoning_tokens: u64,
}

impl ResponsesUsage {
    /// The usage of `input` + `output` tokens.
    pub fn new(input: u64, output: u64) -> Self {
        Self {
            input_tokens: input,
            input_tokens_details: CachedTokens { cached_tokens: 0 },
            output_tokens: output,
            output_tokens_details: ReasoningTokens {
                reasoning_tokens: 0,
            },
            total_tokens: input + output,
        }
    }
}

/// What a response object needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResponseShape<'a> {
    pub(crate) id: &'a str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    /// The request's `max_output_tokens`, echoed.
    pub(crate) max_output_tokens: Option<u64>,
}

impl ResponseShape<'_> {
    fn message_id(&self) -> String {
        format!("msg_{}", self.id.trim_start_matches("resp_"))
    }

    /// The output message item holding `text` (`status` of the item).
    fn message(&self, text: &str, status: &str) -> Value {
        json!({
            "type": "message",
            "id": self.message_id(),
            "status": status,
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        })
    }

    /// The response object: `in_progress` with no output and no usage, or finished
    /// (`completed`, or `incomplete` for a hit `max_output_tokens`) with its text and
    /// usage (`None`: `usage` null, the missing-usage fault).
    pub(crate) fn object(&self, finished: Option<(&str, bool, Option<ResponsesUsage>)>) -> Value {
        let (status, output, usage, incomplete) = match finished {
            None => ("in_progress", json!([]), Value::Null, Value::Null),
            Some((text, hit_limit, usage)) => (
                if hit_limit { "incomplete" } else { "completed" },
                json!([self.message(text, if hit_limit { "incomplete" } else { "completed" })]),
                serde_json::to_value(usage).unwrap_or(Value::Null),
                if hit_limit {
                    json!({"reason": "max_output_tokens"})
                } else {
                    Value::Null
                },
            ),
        };
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "error": null,
            "incomplete_details": incomplete,
            "instructions": null,
            "max_output_tokens": self.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": null,
            "store": false,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
        })
    }

    /// The events that open a stream: `response.created`, `response.in_progress`,
    /// `response.output_item.added` and `response.content_part.added`.
    pub(crate) fn opening(&self) -> Vec<(&'static str, Value)> {
        let open = self.object(None);
        vec![
            (
                "response.created",
                json!({"type": "response.created", "response": open}),
            ),
            (
                "response.in_progress",
                json!({"type": "response.in_progress", "response": open}),
            ),
            (
                "response.output_item.added",
                json!({"type": "response.output_item.added", "output_index": 0,
                       "item": {"type": "message", "id": self.message_id(), "status": "in_progress",
                                "role": "assistant", "content": []}}),
            ),
            (
                "response.content_part.added",
                json!({"type": "response.content_part.added", "item_id": self.message_id(),
                       "output_index": 0, "content_index": 0,
                       "part": {"type": "output_text", "text": "", "annotations": []}}),
            ),
        ]
    }

    /// One `response.output_text.delta`.
    pub(crate) fn delta(&self, text: &str) -> (&'static str, Value) {
        (
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "item_id": self.message_id(),
                   "output_index": 0, "content_index": 0, "delta": text}),
        )
    }

    /// The events that close the content: `response.output_text.done`,
    /// `response.content_part.done`, `response.output_item.done`.
    pub(crate) fn closing(&self, text: &str, hit_limit: bool) -> Vec<(&'static str, Value)> {
        let status = if hit_limit { "incomplete" } else { "completed" };
        vec![
            (
                "response.output_text.done",
                json!({"type": "response.output_text.done", "item_id": self.message_id(),
                       "output_index": 0, "content_index": 0, "text": text}),
            ),
            (
                "response.content_part.done",
                json!({"type": "response.content_part.done", "item_id": self.message_id(),
                       "output_index": 0, "content_index": 0,
                       "part": {"type": "output_text", "text": text, "annotations": []}}),
            ),
            (
                "response.output_item.done",
                json!({"type": "response.output_item.done", "output_index": 0,
                       "item": self.message(text, status)}),
            ),
        ]
    }

    /// The last event: `response.completed` (or `response.incomplete`) with the usage.
    pub(crate) fn finished(
        &self,
        text: &str,
        hit_limit: bool,
        usage: Option<ResponsesUsage>,
    ) -> (&'static str, Value) {
        let name = if hit_limit {
            "response.incomplete"
        } else {
            "response.completed"
        };
        (
            name,
            json!({"type": name, "response": self.object(Some((text, hit_limit, usage)))}),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> ResponsesRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn prompt_formula() {
        // 3 priming + 3 message + 4 text
        assert_eq!(
            req(r#"{"model":"m","input":"Hello, world!"}"#).prompt_tokens(),
            10
        );
        let r = req(r#"{"model":"m","instructions":"abcd","input":[
                {"role":"user","content":[{"type":"input_text","text":"你好"},{"type":"input_image","image_url":"u"}]},
                {"type":"function_call","name":"abcd","arguments":"{}"},
                {"type":"function_call_output","call_id":"c","output":"abcdefgh"}]}"#);
        assert_eq!(
            r.prompt_tokens(),
            3 + (3 + 1) + (3 + 2 + 85) + (3 + 1 + 1) + (3 + 2)
        );
    }

    #[test]
    fn the_finished_object_carries_usage_and_status() {
        let shape = ResponseShape {
            id: "resp_sim1",
            created: 7,
            model: "m",
            max_output_tokens: Some(4),
        };
        let done = shape.object(Some(("sim set", true, Some(ResponsesUsage::new(5, 4)))));
        assert_eq!(done["status"], "incomplete");
        assert_eq!(done["usage"]["input_tokens"], 5);
        assert_eq!(done["usage"]["output_tokens"], 4);
        assert_eq!(done["output"][0]["content"][0]["text"], "sim set");
        assert_eq!(shape.object(None)["usage"], Value::Null);
    }
}

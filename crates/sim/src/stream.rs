//! Server-sent-event answers: chunks that really trickle, the usage chunk, `[DONE]`, and the stream faults.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde::Serialize;

use crate::api::Usage;
use crate::config::SseLineEnding;
use crate::dialect::ErrorBody;
use crate::faults::StreamFault;
use crate::messages::MessageShape;
use crate::responses::{ResponseShape, ResponsesUsage};
use crate::sim::Ticket;
use crate::tokens::push_answer;

/// Which kind of chunk to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkKind {
    /// `chat.completion.chunk` with `choices[].delta`.
    Chat,
    /// `text_completion` with `choices[].text`.
    Text,
    /// The Responses API's named events (`response.created` … `response.completed`).
    Responses {
        /// The request's `max_output_tokens`, echoed in the response object.
        max_output_tokens: Option<u64>,
    },
    /// Anthropic's Messages events (`message_start` … `message_stop`).
    Messages,
}

impl ChunkKind {
    /// Whether the stream is one of named events (no `[DONE]`).
    fn named(self) -> bool {
        matches!(self, Self::Responses { .. } | Self::Messages)
    }
}

/// Pause between the last chunk sent and a `stream_cut`.
const CUT_PAUSE: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Content,
    Finish,
    Usage,
    Done,
    End,
}

/// The state of one streamed answer.
#[derive(Debug)]
pub(crate) struct SseAnswer {
    pub(crate) ticket: Ticket,
    pub(crate) kind: ChunkKind,
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) include_usage: bool,
    pub(crate) total: u64,
    pub(crate) chunk_tokens: u64,
    pub(crate) per_token: Duration,
    pub(crate) finish_reason: &'static str,
    /// The body of the error event for the `stream_error` fault.
    pub(crate) error_body: ErrorBody,
    /// The line ending of every event (`\n`, `\r\n` or `\r`).
    line_ending: SseLineEnding,
    phase: Phase,
    /// The text sent so far (the Responses API repeats it in its closing events).
    text: String,
    /// The next `sequence_number` of a Responses event.
    sequence: u64,
}

/// One `data:` event, ended by a blank line, with `eol` as the line ending.
fn event<T: Serialize>(value: &T, eol: SseLineEnding) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"data: ");
    // Serialising these plain structs cannot fail.
    let _ = serde_json::to_writer(&mut out, value);
    out.extend_from_slice(eol.as_str().as_bytes());
    out.extend_from_slice(eol.as_str().as_bytes());
    Bytes::from(out)
}

/// One named event (`event: <name>` then `data: <json>`), ended by a blank line.
fn named_event(name: &str, value: &serde_json::Value, eol: SseLineEnding) -> Bytes {
    let eol = eol.as_str();
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(eol.as_bytes());
    out.extend_from_slice(b"data: ");
    let _ = serde_json::to_writer(&mut out, value);
    out.extend_from_slice(eol.as_bytes());
    out.extend_from_slice(eol.as_bytes());
    Bytes::from(out)
}

/// `usage` of a chunk: absent without `include_usage`, else `null` or the usage object.
type UsageField = Option<Option<Usage>>;

#[derive(Serialize)]
struct ChatChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: Option<()>,
    choices: Vec<ChatChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: UsageField,
}

#[derive(Serialize)]
struct ChatChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
}

#[derive(Serialize)]
struct TextChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<TextChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: UsageField,
}

#[derive(Serialize)]
struct TextChunkChoice<'a> {
    text: &'a str,
    index: u32,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

impl SseAnswer {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ticket: Ticket,
        kind: ChunkKind,
        id: String,
        created: u64,
        model: String,
        include_usage: bool,
        total: u64,
        chunk_tokens: u64,
        per_token: Duration,
        finish_reason: &'static str,
        error_body: ErrorBody,
    ) -> Self {
        Self {
            ticket,
            kind,
            id,
            created,
            model,
            include_usage,
            total,
            chunk_tokens: chunk_tokens.max(1),
            per_token,
            finish_reason,
            error_body,
            line_ending: SseLineEnding::default(),
            phase: Phase::Start,
            text: String::new(),
            sequence: 0,
        }
    }

    /// Whether the answer used all of its maximum (`length`).
    fn hit_limit(&self) -> bool {
        self.finish_reason == "length"
    }

    fn responses_shape(&self, max_output_tokens: Option<u64>) -> ResponseShape<'_> {
        ResponseShape {
            id: &self.id,
            created: self.created,
            model: &self.model,
            max_output_tokens,
        }
    }

    fn messages_shape(&self) -> MessageShape<'_> {
        MessageShape {
            id: &self.id,
            model: &self.model,
            input_tokens: self.ticket.prompt,
        }
    }

    /// Frames named events as one piece; Responses events get their `sequence_number`.
    fn named(&mut self, events: Vec<(&'static str, serde_json::Value)>) -> Bytes {
        let mut out = Vec::new();
        for (name, mut value) in events {
            if matches!(self.kind, ChunkKind::Responses { .. }) {
                value["sequence_number"] = self.sequence.into();
                self.sequence += 1;
            }
            out.extend_from_slice(&named_event(name, &value, self.line_ending));
        }
        Bytes::from(out)
    }

    /// The named events of a phase of a Responses or Messages stream (`text`: this
    /// content piece).
    fn native(&mut self, phase: Phase, text: &str) -> Option<Bytes> {
        let hit = self.hit_limit();
        let missing_usage = self.ticket.late.stream == StreamFault::MissingUsage;
        let events = match (self.kind, phase) {
            (ChunkKind::Responses { max_output_tokens }, phase) => {
                let shape = self.responses_shape(max_output_tokens);
                match phase {
                    Phase::Start => shape.opening(),
                    Phase::Content => vec![shape.delta(text)],
                    Phase::Finish => shape.closing(&self.text, hit),
                    Phase::Usage => {
                        let usage = (!missing_usage)
                            .then(|| ResponsesUsage::new(self.ticket.prompt, self.ticket.sent));
                        vec![shape.finished(&self.text, hit, usage)]
                    }
                    Phase::Done | Phase::End => return None,
                }
            }
            (ChunkKind::Messages, phase) => {
                let shape = self.messages_shape();
                match phase {
                    Phase::Start => shape.opening(),
                    Phase::Content => vec![shape.delta(text)],
                    Phase::Finish => vec![shape.block_stop()],
                    Phase::Usage => {
                        vec![shape.message_delta((!missing_usage).then_some(self.ticket.sent), hit)]
                    }
                    Phase::Done => vec![shape.stop()],
                    Phase::End => return None,
                }
            }
            _ => return None,
        };
        Some(self.named(events))
    }

    /// Frames the events with `eol` instead of `\n`.
    pub(crate) fn with_line_ending(mut self, eol: SseLineEnding) -> Self {
        self.line_ending = eol;
        self
    }

    /// A chunk; `usage: Some(..)` makes the final usage chunk (no choices).
    fn chunk(
        &self,
        text: Option<&str>,
        role: bool,
        finish: Option<&str>,
        usage: Option<Usage>,
    ) -> Bytes {
        let usage_field = match (self.include_usage, usage) {
            (false, _) => None,
            (true, u) => Some(u),
        };
        let last = usage.is_some();
        match self.kind {
            ChunkKind::Chat => {
                let delta = Delta {
                    role: role.then_some("assistant"),
                    content: if role { Some("") } else { text },
                };
                let choices = if last {
                    Vec::new()
                } else {
                    vec![ChatChunkChoice {
                        index: 0,
                        delta,
                        logprobs: None,
                        finish_reason: finish,
                    }]
                };
                event(
                    &ChatChunk {
                        id: &self.id,
                        object: "chat.completion.chunk",
                        created: self.created,
                        model: &self.model,
                        system_fingerprint: None,
                        choices,
                        usage: usage_field,
                    },
                    self.line_ending,
                )
            }
            // Named-event streams never come here (see `native`); framed as text if so.
            ChunkKind::Text | ChunkKind::Responses { .. } | ChunkKind::Messages => {
                let choices = if last {
                    Vec::new()
                } else {
                    vec![TextChunkChoice {
                        text: text.unwrap_or(""),
                        index: 0,
                        logprobs: None,
                        finish_reason: finish,
                    }]
                };
                event(
                    &TextChunk {
                        id: &self.id,
                        object: "text_completion",
                        created: self.created,
                        model: &self.model,
                        choices,
                        usage: usage_field,
                    },
                    self.line_ending,
                )
            }
        }
    }

    /// The next piece of the body, or `None` at the end.
    async fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            match self.phase {
                Phase::Start => {
                    self.phase = Phase::Content;
                    if self.kind.named() {
                        if let Some(piece) = self.native(Phase::Start, "") {
                            return Some(Ok(piece));
                        }
                        continue;
                    }
                    if self.kind == ChunkKind::Chat {
                        return Some(Ok(self.chunk(None, true, None, None)));
                    }
                }
                Phase::Content => {
                    let sent = self.ticket.sent;
                    let halfway = sent >= self.total / 2;
                    match self.ticket.late.stream {
                        StreamFault::Cut if halfway => {
                            self.ticket.settle();
                            self.phase = Phase::End;
                            // Let the server flush what was sent, so the client sees a 200 and
                            // the first half before the connection drops.
                            tokio::time::sleep(CUT_PAUSE).await;
                            return Some(Err(io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                "sluice-sim: stream_cut fault",
                            )));
                        }
                        StreamFault::Error if halfway => {
                            self.ticket.settle();
                            self.phase = Phase::End;
                            if self.kind.named() {
                                let body =
                                    serde_json::to_value(&self.error_body).unwrap_or_default();
                                return Some(Ok(named_event("error", &body, self.line_ending)));
                            }
                            return Some(Ok(event(&self.error_body, self.line_ending)));
                        }
                        _ => {}
                    }
                    if sent >= self.total {
                        self.phase = Phase::Finish;
                        continue;
                    }
                    let upto = (sent + self.chunk_tokens).min(self.total);
                    if !self.per_token.is_zero() {
                        let n = u32::try_from(upto - sent).unwrap_or(u32::MAX);
                        tokio::time::sleep(self.per_token.saturating_mul(n)).await;
                    }
                    let mut text = String::with_capacity(((upto - sent) * 4) as usize);
                    push_answer(&mut text, sent, upto);
                    self.ticket.sent = upto;
                    if self.kind.named() {
                        self.text.push_str(&text);
                        if let Some(piece) = self.native(Phase::Content, &text) {
                            return Some(Ok(piece));
                        }
                        continue;
                    }
                    return Some(Ok(self.chunk(Some(&text), false, None, None)));
                }
                Phase::Finish => {
                    self.ticket.settle();
                    self.phase = Phase::Usage;
                    if self.kind.named() {
                        if let Some(piece) = self.native(Phase::Finish, "") {
                            return Some(Ok(piece));
                        }
                        continue;
                    }
                    return Some(Ok(self.chunk(None, false, Some(self.finish_reason), None)));
                }
                Phase::Usage => {
                    self.phase = Phase::Done;
                    if self.kind.named() {
                        if let Some(piece) = self.native(Phase::Usage, "") {
                            return Some(Ok(piece));
                        }
                        continue;
                    }
                    if self.include_usage && self.ticket.late.stream != StreamFault::MissingUsage {
                        let usage = Usage::new(self.ticket.prompt, self.ticket.sent);
                        return Some(Ok(self.chunk(None, false, None, Some(usage))));
                    }
                }
                Phase::Done => {
                    self.phase = Phase::End;
                    if self.kind.named() {
                        if let Some(piece) = self.native(Phase::Done, "") {
                            return Some(Ok(piece));
                        }
                        continue;
                    }
                    let eol = self.line_ending.as_str();
                    return Some(Ok(Bytes::from(format!("data: [DONE]{eol}{eol}"))));
                }
                Phase::End => return None,
            }
        }
    }

    /// The body stream.
    pub(crate) fn into_stream(self) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        futures::stream::unfold(self, |mut answer| async move {
            let item = answer.next().await?;
            Some((item, answer))
        })
    }
}

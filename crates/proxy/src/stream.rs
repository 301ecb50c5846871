//! SSE relay: passes a streamed answer through event by event, reads the usage chunk
//! that `stream_options.include_usage` adds (dropping it when the client did not ask
//! for it), notes errors sent inside the stream, and settles the reservation when the
//! stream ends — a cut stream keeps its estimate.
//!
//! Framing follows the SSE spec (WHATWG HTML, "server-sent events"): a line ends with
//! `\n`, `\r\n` or `\r`; an event ends at a blank line; several `data:` lines join with
//! `\n`; a line starting with `:` is a comment. The relay scans each byte once
//! ([`EventFramer`]) and passes the upstream's bytes through unchanged, event by event as
//! they complete, except a usage-only chunk the client did not ask for. An event larger
//! than [`MAX_EVENT_BYTES`] is not buffered: its bytes are passed through as they come,
//! unread (a usage inside it is not seen, and the estimate stands).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use sluice_provider::{Provider, classify_stream_error};

use crate::estimate::Endpoint;
use crate::telemetry::SPANS;
use crate::usage::{Settle, StreamUsage, Usage};

type Upstream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The relay stream.
pub(crate) struct SseRelay {
    upstream: Upstream,
    /// The bytes of the event being received (and of complete events not yet taken).
    buf: BytesMut,
    /// Where the next event ends, found incrementally.
    framer: EventFramer,
    /// Whether the last event was dropped (the `\n` of its `\r\n` goes with it).
    last_dropped: bool,
    /// Whether the last event ended with a `\r` at the end of the buffer, so a `\n`
    /// arriving next belongs to it.
    lf_pending: bool,
    strip_usage: bool,
    provider: Provider,
    usage: StreamUsage,
    settle: Option<Settle>,
    ended: bool,
    /// The `request` and `upstream` spans, kept open until the stream ends.
    spans: (tracing::Span, tracing::Span),
}

/// Settles a reservation (see [`Settle::finish`]) under a `reconcile` span, child of
/// `parent` (the request's span).
pub(crate) fn settle_traced(settle: Settle, usage: Option<Usage>, parent: &tracing::Span) {
    let est = settle.reservation.cost;
    let span = tracing::trace_span!(
        target: SPANS,
        parent: parent,
        "reconcile",
        estimated_input_tokens = est.input_tokens,
        estimated_output_tokens = est.output_tokens,
        actual_input_tokens = usage.map(|u| u.prompt_tokens),
        actual_output_tokens = usage.map(|u| u.completion_tokens),
        usage_known = usage.is_some(),
    );
    let _entered = span.enter();
    settle.finish(usage);
}

impl SseRelay {
    pub(crate) fn new(
        upstream: Upstream,
        endpoint: Endpoint,
        strip_usage: bool,
        provider: Provider,
        settle: Settle,
        spans: (tracing::Span, tracing::Span),
    ) -> Self {
        Self {
            upstream,
            buf: BytesMut::new(),
            framer: EventFramer::default(),
            last_dropped: false,
            lf_pending: false,
            strip_usage,
            provider,
            usage: StreamUsage::new(endpoint),
            settle: Some(settle),
            ended: false,
            spans,
        }
    }

    /// Takes what may go to the client now: the complete events at the front of the
    /// buffer (minus a dropped usage chunk), or the bytes so far of an event over
    /// [`MAX_EVENT_BYTES`]. `None` when nothing is ready.
    fn take_events(&mut self) -> Option<Bytes> {
        let mut out = BytesMut::new();
        loop {
            // The `\n` of a `\r\n` that ended the last event, arrived late: it goes where
            // its event went.
            if self.lf_pending && !self.buf.is_empty() {
                self.lf_pending = false;
                if self.buf[0] == b'\n' {
                    self.framer.skip_lf = false;
                    let lf = self.buf.split_to(1);
                    if !self.last_dropped {
                        out.unsplit(lf);
                    }
                }
                continue;
            }
            match self.framer.next_end(&self.buf) {
                Some(end) => {
                    let mut end = end;
                    // A `\r\n` that ended the event: its `\n` is the event's.
                    if self.framer.skip_lf && self.buf.get(end) == Some(&b'\n') {
                        self.framer.skip_lf = false;
                        end += 1;
                    }
                    self.lf_pending = self.framer.skip_lf && end == self.buf.len();
                    let event = self.buf.split_to(end);
                    let oversized = std::mem::take(&mut self.framer.oversized);
                    self.framer.scanned = 0;
                    self.last_dropped = !oversized && !self.keep(&event);
                    if !self.last_dropped {
                        out.unsplit(event);
                    }
                }
                None => {
                    if self.buf.len() > MAX_EVENT_BYTES || self.framer.oversized {
                        // Too large to hold: pass it through as it comes, unread.
                        self.framer.oversized = true;
                        let scanned = self.framer.scanned;
                        self.framer.scanned = 0;
                        out.unsplit(self.buf.split_to(scanned));
                    }
                    break;
                }
            }
        }
        (!out.is_empty()).then(|| out.freeze())
    }

    /// Reads one event; false when it must not reach the client.
    fn keep(&mut self, event: &[u8]) -> bool {
        let Some(data) = data_of(event) else {
            return true;
        };
        let data = &*data;
        if contains(data, b"\"error\"")
            && let Some(c) = classify_stream_error(data, self.provider)
        {
            metrics::counter!("sluice_upstream_errors_total", "reason" => c.class.as_str(), "where" => "stream").increment(1);
            if let Some(settle) = &self.settle {
                let inner = &settle.gw.inner;
                let m = &inner.models[settle.model];
                if let Some(o) = &inner.observer {
                    o.error(
                        &m.cfg.upstream,
                        &m.cfg.upstream_model,
                        &m.accounts[settle.reservation.candidate].name,
                        200,
                        &http::HeaderMap::new(),
                        data,
                    );
                }
            }
        }
        if !contains(data, b"\"usage\"") {
            return true;
        }
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
            return true;
        };
        let usage_only = self.usage.observe(&json);
        !(self.strip_usage && usage_only)
    }
}

impl Drop for SseRelay {
    fn drop(&mut self) {
        if let Some(settle) = self.settle.take() {
            settle_traced(settle, self.usage.usage(), &self.spans.0);
        }
    }
}

impl Stream for SseRelay {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(events) = this.take_events() {
                return Poll::Ready(Some(Ok(events)));
            }
            if this.ended {
                if this.buf.is_empty() {
                    if let Some(settle) = this.settle.take() {
                        settle_traced(settle, this.usage.usage(), &this.spans.0);
                    }
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Ok(this.buf.split().freeze())));
            }
            match this.upstream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => this.buf.extend_from_slice(&chunk),
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    this.spans.1.record("error", "stream cut");
                    tracing::warn!(error = %e, "upstream stream cut; the estimate stands");
                    return Poll::Ready(Some(Err(std::io::Error::other(e))));
                }
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The largest event the relay holds to read; a larger one is passed through unread as
/// it arrives. The usage chunk is a few hundred bytes; 1 MiB is far above any chunk an
/// LLM API sends.
pub(crate) const MAX_EVENT_BYTES: usize = 1 << 20;

/// Finds where events end in a byte stream, incrementally: each byte is looked at once,
/// whatever the chunking.
#[derive(Debug)]
pub(crate) struct EventFramer {
    /// Bytes of the buffer already scanned (the buffer starts at the current event).
    scanned: usize,
    /// Whether nothing but a line ending has been seen since the last line ended.
    at_line_start: bool,
    /// Whether the last byte scanned was a `\r`: a `\n` right after it is the same line
    /// ending.
    skip_lf: bool,
    /// Whether the current event grew past [`MAX_EVENT_BYTES`] and is passed through.
    oversized: bool,
}

impl Default for EventFramer {
    fn default() -> Self {
        Self {
            scanned: 0,
            at_line_start: true,
            skip_lf: false,
            oversized: false,
        }
    }
}

impl EventFramer {
    /// The end (exclusive) of the first complete event in `buf`, scanning on from where
    /// the last call stopped; `None` when it has not ended yet. After `Some`, the caller
    /// removes the event from `buf` and sets `scanned` to 0.
    fn next_end(&mut self, buf: &[u8]) -> Option<usize> {
        while self.scanned < buf.len() {
            let b = buf[self.scanned];
            self.scanned += 1;
            if std::mem::take(&mut self.skip_lf) && b == b'\n' {
                continue;
            }
            match b {
                b'\n' | b'\r' => {
                    self.skip_lf = b == b'\r';
                    if self.at_line_start {
                        return Some(self.scanned);
                    }
                    self.at_line_start = true;
                }
                _ => self.at_line_start = false,
            }
        }
        None
    }
}

/// The lines of a complete event, without their endings (`\n`, `\r\n` or `\r`).
fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = event;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .iter()
            .position(|b| *b == b'\n' || *b == b'\r')
            .unwrap_or(rest.len());
        let line = &rest[..end];
        let mut next = end;
        if rest.get(next) == Some(&b'\r') {
            next += 1;
            if rest.get(next) == Some(&b'\n') {
                next += 1;
            }
        } else if next < rest.len() {
            next += 1;
        }
        rest = &rest[next..];
        Some(line)
    })
}

/// The data of an event: its `data` lines' values (one leading space dropped), joined
/// with `\n`; `None` when it has no `data` line. Comments (`:`) and other fields are
/// skipped.
fn data_of(event: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    let mut data: Option<std::borrow::Cow<'_, [u8]>> = None;
    for line in lines(event) {
        let value = if line == b"data" {
            &b""[..]
        } else if let Some(v) = line.strip_prefix(b"data:") {
            v.strip_prefix(b" ").unwrap_or(v)
        } else {
            continue;
        };
        data = Some(match data {
            None => std::borrow::Cow::Borrowed(value),
            Some(prev) => {
                let mut joined = prev.into_owned();
                joined.push(b'\n');
                joined.extend_from_slice(value);
                std::borrow::Cow::Owned(joined)
            }
        });
    }
    data
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    /// A relay over `chunks`, with no reservation to settle.
    fn relay(chunks: Vec<Vec<u8>>, strip_usage: bool) -> SseRelay {
        let upstream = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, reqwest::Error>(Bytes::from(c))),
        );
        SseRelay {
            upstream: Box::pin(upstream),
            buf: BytesMut::new(),
            framer: EventFramer::default(),
            last_dropped: false,
            lf_pending: false,
            strip_usage,
            provider: Provider::OpenAi,
            usage: StreamUsage::new(Endpoint::Chat),
            settle: None,
            ended: false,
            spans: (tracing::Span::none(), tracing::Span::none()),
        }
    }

    /// What the client receives (each piece), and the usage the relay read.
    fn run(chunks: Vec<Vec<u8>>, strip_usage: bool) -> (Vec<Bytes>, Option<Usage>) {
        let mut r = relay(chunks, strip_usage);
        let pieces = futures::executor::block_on(async {
            let mut out = Vec::new();
            while let Some(p) = r.next().await {
                out.push(p.unwrap());
            }
            out
        });
        (pieces, r.usage.usage())
    }

    const CONTENT: &str = r#"{"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}]}"#;
    const USAGE: &str = r#"{"id":"c","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":5,"total_tokens":16}}"#;

    /// A stream of a comment, two content events, the usage chunk and `[DONE]`, with
    /// line ending `eol`.
    fn stream_with(eol: &str) -> Vec<u8> {
        format!(
            ": keep-alive{eol}{eol}data: {CONTENT}{eol}{eol}event: message{eol}data: {CONTENT}{eol}{eol}data: {USAGE}{eol}{eol}data: [DONE]{eol}{eol}"
        )
        .into_bytes()
    }

    fn without_usage(eol: &str) -> Vec<u8> {
        let full = String::from_utf8(stream_with(eol)).unwrap();
        full.replace(&format!("data: {USAGE}{eol}{eol}"), "")
            .into_bytes()
    }

    const EOLS: [&str; 3] = ["\n", "\r\n", "\r"];

    #[test]
    fn every_line_ending_split_at_every_byte_passes_through_and_finds_the_usage() {
        for eol in EOLS {
            let full = stream_with(eol);
            for strip in [false, true] {
                let want = if strip {
                    without_usage(eol)
                } else {
                    full.clone()
                };
                for at in 0..=full.len() {
                    let (pieces, usage) =
                        run(vec![full[..at].to_vec(), full[at..].to_vec()], strip);
                    assert_eq!(
                        pieces.concat(),
                        want,
                        "eol {eol:?}, strip {strip}, split at {at}"
                    );
                    assert_eq!(
                        usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
                        Some((11, 5)),
                        "eol {eol:?}, split at {at}"
                    );
                }
            }
            // One byte at a time.
            let bytes: Vec<Vec<u8>> = full.iter().map(|b| vec![*b]).collect();
            let (pieces, usage) = run(bytes, true);
            assert_eq!(
                pieces.concat(),
                without_usage(eol),
                "eol {eol:?} byte by byte"
            );
            assert!(usage.is_some());
        }
    }

    #[test]
    fn events_are_relayed_as_each_completes() {
        for eol in EOLS {
            let first = format!("data: {CONTENT}{eol}{eol}");
            // The second event has not ended: the first goes out on its own.
            let second_half = format!("data: {CONTENT}");
            let (pieces, _) = run(
                vec![first.clone().into_bytes(), second_half.into_bytes()],
                false,
            );
            assert_eq!(pieces[0], first.as_bytes(), "eol {eol:?}");
        }
        // With `\r\n`, an event's final `\n` arriving late still goes with it.
        let (pieces, _) = run(
            vec![
                format!("data: {CONTENT}\r\n\r").into_bytes(),
                b"\ndata: x\r\n\r\n".to_vec(),
            ],
            false,
        );
        assert_eq!(pieces[0], format!("data: {CONTENT}\r\n\r").as_bytes());
        assert_eq!(pieces[1], &b"\ndata: x\r\n\r\n"[..]);
        // A dropped usage chunk takes its late `\n` with it.
        let (pieces, usage) = run(
            vec![
                format!("data: {USAGE}\r\n\r").into_bytes(),
                b"\ndata: [DONE]\r\n\r\n".to_vec(),
            ],
            true,
        );
        assert_eq!(pieces.concat(), &b"data: [DONE]\r\n\r\n"[..]);
        assert!(usage.is_some());
    }

    #[test]
    fn data_lines_join_and_comments_are_skipped() {
        assert_eq!(data_of(b"event: x\ndata: {}").as_deref(), Some(&b"{}"[..]));
        assert_eq!(
            data_of(b": c\r\ndata: {\"a\":\r\ndata:1}\r\nid: 3").as_deref(),
            Some(&b"{\"a\":\n1}"[..])
        );
        assert_eq!(data_of(b"data\rdata: x").as_deref(), Some(&b"\nx"[..]));
        assert_eq!(data_of(b": only a comment"), None);
        // A usage chunk split over two data lines is read.
        let split = format!("data: {}\ndata: {}\n\n", &USAGE[..30], &USAGE[30..]);
        let (_, usage) = run(vec![split.into_bytes()], false);
        assert_eq!(usage.map(|u| u.prompt_tokens), Some(11));
    }

    #[test]
    fn an_event_over_the_cap_is_passed_through_unread_and_not_held() {
        let huge = format!("data: {}", "x".repeat(2 * MAX_EVENT_BYTES));
        let chunks: Vec<Vec<u8>> = huge
            .as_bytes()
            .chunks(64 << 10)
            .map(<[u8]>::to_vec)
            .chain([format!("\n\ndata: {USAGE}\n\ndata: [DONE]\n\n").into_bytes()])
            .collect();
        let mut r = relay(chunks.clone(), true);
        let out = futures::executor::block_on(async {
            let mut out = Vec::new();
            while let Some(p) = r.next().await {
                assert!(
                    r.buf.len() <= MAX_EVENT_BYTES + (64 << 10),
                    "held {}",
                    r.buf.len()
                );
                out.push(p.unwrap());
            }
            out
        });
        assert!(out.len() > 2, "passed through as it came");
        assert_eq!(
            out.concat(),
            format!("{huge}\n\ndata: [DONE]\n\n").as_bytes(),
            "after the huge event, framing resumes: the usage chunk is read and stripped"
        );
        assert!(r.usage.usage().is_some());
    }

    #[test]
    fn a_stream_without_a_final_blank_line_is_flushed_at_its_end() {
        let (pieces, _) = run(vec![b"data: a\n\ndata: b".to_vec()], false);
        assert_eq!(pieces.concat(), &b"data: a\n\ndata: b"[..]);
    }
}

//! SSE relay: passes a streamed answer through event by event, reads the usage chunk
//! that `stream_options.include_usage` adds (dropping it when the client did not ask
//! for it), notes errors sent inside the stream, and settles the reservation when the
//! stream ends — a cut stream keeps its estimate.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use sluice_provider::{Provider, classify_stream_error};

use crate::telemetry::SPANS;
use crate::usage::{Settle, Usage};

type Upstream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The relay stream.
pub(crate) struct SseRelay {
    upstream: Upstream,
    buf: BytesMut,
    strip_usage: bool,
    provider: Provider,
    usage: Option<Usage>,
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
        strip_usage: bool,
        provider: Provider,
        settle: Settle,
        spans: (tracing::Span, tracing::Span),
    ) -> Self {
        Self {
            upstream,
            buf: BytesMut::new(),
            strip_usage,
            provider,
            usage: None,
            settle: Some(settle),
            ended: false,
            spans,
        }
    }

    /// Processes the complete events at the front of the buffer.
    fn take_events(&mut self) -> Option<Bytes> {
        let end = find_last(&self.buf, b"\n\n")? + 2;
        let region = self.buf.split_to(end).freeze();
        if !contains(&region, b"\"usage\"") && !contains(&region, b"\"error\"") {
            return Some(region);
        }
        let mut out = BytesMut::with_capacity(region.len());
        for event in split_events(&region) {
            if self.keep(event) {
                out.extend_from_slice(event);
                out.extend_from_slice(b"\n\n");
            }
        }
        Some(out.freeze())
    }

    /// Reads one event; false when it must not reach the client.
    fn keep(&mut self, event: &[u8]) -> bool {
        let Some(data) = data_of(event) else {
            return true;
        };
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
        let Some(usage) = json.get("usage").filter(|u| u.is_object()) else {
            return true;
        };
        if let Ok(u) = serde_json::from_value::<Usage>(usage.clone()) {
            self.usage = Some(u);
        }
        let usage_only = json
            .get("choices")
            .and_then(|c| c.as_array())
            .is_some_and(|c| c.is_empty());
        !(self.strip_usage && usage_only)
    }
}

impl Drop for SseRelay {
    fn drop(&mut self) {
        if let Some(settle) = self.settle.take() {
            settle_traced(settle, self.usage, &self.spans.0);
        }
    }
}

impl Stream for SseRelay {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(events) = this.take_events() {
                if events.is_empty() {
                    continue;
                }
                return Poll::Ready(Some(Ok(events)));
            }
            if this.ended {
                if this.buf.is_empty() {
                    if let Some(settle) = this.settle.take() {
                        settle_traced(settle, this.usage, &this.spans.0);
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

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

fn split_events(region: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = region;
    std::iter::from_fn(move || {
        while rest.starts_with(b"\n") {
            rest = &rest[1..];
        }
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .windows(2)
            .position(|w| w == b"\n\n")
            .unwrap_or(rest.len());
        let event = &rest[..end];
        rest = &rest[end.min(rest.len())..];
        Some(event)
    })
}

/// The `data:` payload of an event (joined if on several lines).
fn data_of(event: &[u8]) -> Option<&[u8]> {
    event.split(|b| *b == b'\n').find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let d = line.strip_prefix(b"data:")?;
        Some(d.strip_prefix(b" ").unwrap_or(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_and_data_read() {
        let region = b"data: {\"a\":1}\n\ndata: [DONE]\n\n";
        let events: Vec<_> = split_events(region).collect();
        assert_eq!(events, [&b"data: {\"a\":1}"[..], &b"data: [DONE]"[..]]);
        assert_eq!(data_of(b"event: x\ndata: {}"), Some(&b"{}"[..]));
        assert_eq!(find_last(b"a\n\nb\n\nc", b"\n\n"), Some(4));
    }
}

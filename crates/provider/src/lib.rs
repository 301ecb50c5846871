//! What LLM providers say about rate limits, parsed liberally: waits in every form
//! ([`retry_after`], [`retry_after_in_text`]), budgets in rate-limit headers
//! ([`RateLimitHeaders`]), and the meaning of a 429 or 5xx ([`classify`] into an
//! [`ErrorClass`]).
//!
//! Every parser takes whatever bytes a provider sends and never panics; what cannot be
//! read is `None` (unknown), never a guess. Absolute times are read against the
//! response's `Date` header so that clock skew does not shift them. The facts behind
//! each rule are in `shared/reference/providers.md`; the gateway and the sidecar both
//! use this crate.

mod classify;
mod duration;
mod headers;
mod retry;

pub use classify::{
    Classification, ErrorClass, Provider, ThrottleKind, classify, classify_stream_error,
};
pub use duration::{MAX_DURATION, parse_flexible, parse_go_duration, parse_millis, parse_seconds};
pub use headers::{Budget, RateLimitHeaders, parse_reset};
pub use retry::{response_date, retry_after, retry_after_in_text, should_retry};

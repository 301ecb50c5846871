//! What providers said about limits, carried from gateways to sidecars.
//!
//! A gateway records every upstream answer that says something about limits (each
//! 429, and the rate-limit headers of successful answers) as an [`Observation`], hands
//! it to a [`Publisher`] that never blocks (a bounded queue; what does not fit is
//! dropped and counted), and the publisher appends it to a capped Redis stream. Sidecars
//! read the stream as one consumer group with a [`Consumer`]: each observation is
//! applied once however many sidecars run, and a sidecar that dies leaves its pending
//! observations to the others.

mod consumer;
mod observation;
mod publisher;

pub use consumer::{Consumer, ConsumerOptions, Delivery};
pub use observation::{MAX_BODY, Observation, relevant_header};
pub use publisher::{Publisher, PublisherOptions};

/// The default stream key (`{sluice}` keeps it on one cluster slot).
pub const DEFAULT_STREAM: &str = "sluice:{obs}:stream";

/// What can go wrong reading the stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObserveError {
    /// Redis failed or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The connection could not be made.
    #[error("{0}")]
    Store(#[from] sluice_limiter::StoreError),
}

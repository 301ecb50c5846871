//! The limiter's errors: [`QuotaError`] for building quotas, [`LimitError`] for decisions.

use std::time::Duration;

use crate::quota::LimitId;

/// A quota, window or key that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaError {
    /// A quota needs at least one limit.
    #[error("a quota needs at least one limit")]
    NoLimits,
    /// A quota has at most `Quota::MAX_LIMITS` limits.
    #[error("a quota has at most 8 limits, not {0}")]
    TooManyLimits(usize),
    /// Two limits count the same unit over the same window.
    #[error("two limits share unit and window ({0})")]
    DuplicateLimit(LimitId),
    /// A window must be a whole, non-zero number of milliseconds up to 366 days.
    #[error("window {0:?} must be a whole number of milliseconds between 1 ms and 366 days")]
    InvalidWindow(Duration),
    /// A fixed pacing needs a non-zero interval and a burst of at least 1.
    #[error("fixed pacing needs a non-zero interval (at most 366 days) and a burst of at least 1")]
    InvalidPacing,
    /// Buckets per window must be between 1 and 3600.
    #[error("buckets per window must be between 1 and 3600, not {0}")]
    InvalidBuckets(u32),
    /// A key part must be 1 to 200 printable characters without braces or blanks.
    #[error("quota key part {0:?} must be 1 to 200 printable characters without braces or blanks")]
    InvalidKey(String),
}

/// Why the store could not make a decision.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store did not answer within the configured timeout.
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    /// The circuit breaker is open after repeated failures.
    #[error("the store's circuit breaker is open after repeated failures")]
    CircuitOpen,
    /// Redis answered with an error or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No connection could be taken from the pool.
    #[error("redis pool: {0}")]
    Pool(String),
    /// A script answered something it is not documented to answer.
    #[error("unexpected script reply: {0}")]
    Protocol(String),
}

/// A decision that could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// The cost can never fit: it is larger than a whole window of `limit`.
    ///
    /// `capacity` is the configured limit, or a lower effective (learned) limit.
    #[error("a cost of {cost} can never fit limit {limit}, which holds {capacity} per window")]
    InsufficientCapacity {
        /// The limit that cannot hold the cost.
        limit: LimitId,
        /// How much one window of that limit holds.
        capacity: u64,
        /// How much of it the request would use.
        cost: u64,
    },
    /// `acquire` was called with no candidate quota keys.
    #[error("acquire needs at least one candidate quota key")]
    NoCandidates,
    /// The store is unavailable and the failure policy is to refuse.
    #[error("the limiter store is unavailable: {0}")]
    Unavailable(#[from] StoreError),
}

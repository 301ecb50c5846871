//! Recalibration: what providers say in 429s and rate-limit headers, replayed into the
//! shared limiter state so that every replica recalibrates at once.
//!
//! The central type is [`Recalibrator`]: given an [`Observation`](sluice_observe::Observation)
//! (one upstream answer) and a [`Store`](sluice_limiter::Store), it applies the rules
//! below through the limiter's own API (`update`, `record_usage`, `status`) and returns
//! the [`Applied`] changes. The sidecar calls it for every observation it consumes from
//! the stream; a gateway with the embedded limiter calls it in-process. The
//! [`Catalog`] maps the configuration to quotas and quota keys exactly as the gateway
//! does (one function, so the limit ids always agree), and [`report`] renders the
//! `GET /v1/quotas` view served by both.
//!
//! # Rules (per account × model the observation names)
//! 1. **Dead accounts.** Billing exhausted, free quota exhausted, invalid key: `Disable`
//!    with the reason, until an operator enables it or a success is observed on it (a
//!    probe). A Retry-After of at least `quota_state_after` (default 1 h), or a daily
//!    quota refusal, is a quota state, not a sleep: `Disable("daily quota …")`, enabled
//!    again by [`Recalibrator::tick`] once the wait has passed (or by a probe).
//! 2. **Cooldown.** A throttling refusal sets `Cooldown(retry_after)` (headers, then a
//!    wait written in the message, then Gemini's `retryDelay`; when none,
//!    `default_cooldown` capped at a tenth of the shortest window). The limiter resumes the account one pacing interval at a time.
//! 3. **Learned limits.** A rate-limit header `limit` below the configured limit becomes
//!    the effective limit; one at or above it forgets a learned limit (the provider's
//!    word beats inference).
//! 4. **Usage we did not see.** `provider_used = limit − remaining` (the header limit,
//!    else our effective one) against what our window held when the provider answered
//!    (`used` less the slots booked ahead and granted since, estimated from the paced
//!    rate): a difference above `max(1, unseen_tolerance × limit)` is added with
//!    `record_usage`, plus what the outside consumer spends, at its rate over the last
//!    window, during the slots already booked ahead (they were granted without it);
//!    capped so that it never overfills another limit of the same unit.
//!    Observations older than a quarter of the window are too stale for this rule.
//! 5. **AIMD without headers.** A throttling refusal on an answer with no rate-limit
//!    headers lowers the effective limit of the limit it names (requests or tokens, else
//!    the fullest) to `max(effective / 2, min(effective × aimd_decrease, used))` (never
//!    below `aimd_floor × configured`), at most once per window of that limit — unless
//!    our window already holds more than `(1 + headroom_tolerance) × effective` (costs
//!    reconciled above their estimates: the refusal is ours, not a lower limit).
//!    Successes without headers raise it by `aimd_increase × configured` (at least 1)
//!    per window once two windows have passed without a refusal, up to just below the
//!    level of the last refusal; to that level and beyond only after 10 clean windows;
//!    never above the configured limit (where the learned value is forgotten).
//! 6. **Burst.** A burst refusal (`limit_burst_rate`, acceleration) multiplies the
//!    pacing factor by `pacing_increase` (at most 64×, once per second); each clean
//!    second with a success decays it by 10% back towards 1×.

mod catalog;
mod error;
mod memory;
mod recalibrator;
mod report;
mod tuning;

pub use catalog::{Catalog, CatalogModel, cooldown_without_wait, provider, quota};
pub use error::CatalogError;
pub use recalibrator::{Applied, Change, Recalibrator, header_map};
pub use report::{AccountReport, LimitReport, ModelReport, QuotasReport, report};
pub use tuning::Tuning;

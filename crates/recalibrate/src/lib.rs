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
//! 1. **Dead accounts.** Billing exhausted, free quota exhausted, invalid key (only the
//!    status/code pairs providers document: never a 400/404/422 or message text alone,
//!    see [`sluice_provider::classify`]): `Disable` with the reason, until an operator
//!    enables it or a success is observed on it (a probe). The last live account of a
//!    model is only suspected (a short cooldown) until a second such refusal from
//!    another answer within [`CORROBORATION_SPAN`] corroborates it ([`Corroboration`]). A Retry-After of at least `quota_state_after` (default 1 h), or a daily
//!    quota refusal, is a quota state, not a sleep: `Disable("daily quota …")`, enabled
//!    again by [`Recalibrator::tick`] once the wait has passed (or by a probe).
//! 2. **Cooldown.** A throttling refusal sets `Cooldown(retry_after)` (headers, then a
//!    wait written in the message, then Gemini's `retryDelay`; when none,
//!    `default_cooldown` capped at a tenth of the shortest window). The limiter resumes the account one pacing interval at a time.
//! 3. **Learned limits.** A rate-limit header `limit` below the configured limit becomes
//!    the effective limit; one at or above it forgets a learned limit (the provider's
//!    word beats inference) — less the outside reserve of rule 4, when there is one.
//! 4. **Usage we did not see.** Per account × limit named by a header budget with a
//!    `remaining`, from an answer at most a quarter of the window old:
//!    `base` = the header's limit (at most the configured one), else our effective limit
//!    plus the current reserve; `provider_used = base − remaining`; `seen` = what our
//!    window held when the provider answered (`used` less the slots booked ahead and
//!    granted since, estimated from the paced rate); `recorded` = what this rule charged
//!    with `record_usage` in the last window.
//!    - **Outside rate.** Each answer is a sample `x = provider_used − seen + recorded`
//!      (the provider's usage beyond our own) of the units spent outside Sluice per
//!      window. They feed an exponentially weighted mean `m` and upper variance `v` (only
//!      samples above `m` widen it, each by a deviation of at most 10% of `base`) with
//!      weight `α = 1 − exp(−Δt / (window / 2))`, `Δt`
//!      the time since the previous sample, at most a twentieth of the window (the very
//!      first sample only starts the clock): answers at one instant count once, a gap
//!      does not make one answer decisive, and without answers the estimate stays.
//!    - **Reserve.** `wanted = round(m + 2√v)` (what the consumer spends at its usual
//!      high) when `m ≥ tolerance`, else 0, at most `base − floor`; the reserve moves
//!      towards it at most once per twentieth of a window, by at most
//!      `max(tolerance, 5% × base)`, and only when it differs by at least the tolerance
//!      (to 0 always). The effective limit is `max(base − reserve, floor)` (`floor` =
//!      `aimd_floor × configured`, at least 1; never above the configured limit, where it
//!      is forgotten); written as `EffectiveLimit` with `why = "outside_rate"`. It lives
//!      in the store, so every replica admits less even while no answers arrive (a
//!      cooldown); when the consumer leaves, the samples fall to 0 and the reserve with
//!      them, a step at a time.
//!    - **Immediate correction.** `diff = provider_used − seen − reserve` (what the
//!      outside consumer spent beyond what the effective limit keeps free) above
//!      `tolerance = max(1, unseen_tolerance × base)` is charged with `record_usage`,
//!      plus `recorded / window × booked_ahead` (the slots already booked ahead were
//!      granted without it); capped so that it never overfills another limit of the
//!      same unit.
//! 5. **The learner (no headers).** A throttling refusal on an answer with no rate-limit
//!    headers names a limit (requests or tokens, else any; of those the fullest of our
//!    windows). Its `fill` — what our window holds, less the slots booked ahead and granted
//!    since the answer (at the window's average rate) and, for requests, the refusals this
//!    process saw in the window — is what the provider had accepted when it refused: an
//!    upper bound of its real limit. The effective limit is **set** to
//!    `max(min(fill, effective − 1), ceil(effective / 2), floor)` (`floor` =
//!    `aimd_floor × configured`, at least 1; a second cut bounded by the half waits half a
//!    window) — unless `fill > (1 + headroom_tolerance) × effective` (costs reconciled above
//!    their estimates: the refusal is ours). A set, not a relative decrease: sidecars
//!    applying different refusals of one overload write about the same value. Refusals at a
//!    similar fill confirm the estimate; a success above it refutes it. Successes without
//!    headers with our window full (≥ 90%) probe back up: after 2 quiet windows (3 once
//!    confirmed; quiet = no refusal and no change of the effective limit by anyone, read
//!    from the store) by `max(1, aimd_increase × configured)`, each probe the provider
//!    accepts for a window after being sent the new level doubling the next step (at most
//!    16×); never above the configured limit (where it is forgotten). See `learn.rs`.
//! 6. **Burst.** A burst refusal (`limit_burst_rate`, acceleration) multiplies the
//!    pacing factor by `pacing_increase` (at most 64×, once per second); each clean
//!    second with a success decays it by 10% back towards 1×.

mod catalog;
mod corroborate;
mod error;
mod learn;
mod memory;
mod recalibrator;
mod report;
mod tuning;

pub use catalog::{Catalog, CatalogModel, cooldown_without_wait, provider, quota, unit};
pub use corroborate::{CORROBORATION_SPAN, Corroboration, Verdict, is_last_live};
pub use error::CatalogError;
pub use recalibrator::{Applied, Change, Recalibrator, header_map};
pub use report::{AccountReport, LearnedReport, LimitReport, ModelReport, QuotasReport, report};
pub use tuning::Tuning;

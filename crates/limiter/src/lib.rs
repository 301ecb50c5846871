//! Exact shared rate limits for LLM APIs: sliding-window quotas (RPM, TPM, RPS, per
//! day, any window) that any number of replicas share through atomic Redis Lua scripts,
//! with an in-process twin of the same semantics.
//!
//! The central type is the [`Store`] trait, a backend that decides atomically:
//! [`acquire`](Store::acquire) reserves the earliest slot for a [`Cost`] on the best of
//! several accounts, [`reconcile`](Store::reconcile) replaces the estimate with what the
//! provider counted, and [`update`](Store::update) applies what was learned from the
//! provider (cooldowns, lower limits, slower pacing, dead accounts). [`InProcessStore`]
//! and [`RedisStore`] implement it; [`Limiter`] wraps them with a failure policy.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! use sluice_limiter::{Cost, Decision, Limit, Limiter, Quota, QuotaKey, Store, Window};
//! use std::time::Duration;
//!
//! let minute = Window::secs(60).unwrap();
//! let quota = Quota::new(vec![
//!     Limit::requests(600, minute).unwrap(),
//!     Limit::tokens(1_000_000, minute).unwrap(),
//!     Limit::requests(10, Window::secs(1).unwrap()).unwrap(),
//! ]).unwrap();
//! let accounts = [
//!     QuotaKey::new("dashscope/qwen3-max", "key-0").unwrap(),
//!     QuotaKey::new("dashscope/qwen3-max", "key-1").unwrap(),
//! ];
//! let limiter = Limiter::embedded();
//! match limiter.acquire(&accounts, &quota, Cost::request(1_500, 500), Duration::from_secs(30)).await? {
//!     Decision::Granted(slot) => {
//!         tokio::time::sleep(slot.wait).await; // queued until the slot: no burst, no 429
//!         // … forward the request on account `slot.key`, then:
//!         limiter.reconcile(&quota, &slot, Cost::request(1_312, 200)).await?;
//!     }
//!     Decision::Refused(no) => println!("retry after {:?}", no.retry_after),
//! }
//! # Ok::<(), sluice_limiter::LimitError>(()) }).unwrap();
//! ```
//!
//! # Guarantee
//! For every account and every limit, the charges whose slots fall in any trailing
//! window sum to at most the limit in force (reconciled costs that turned out larger
//! than their estimate aside: what the provider counted is recorded as it was). Slots
//! on one account are handed out in arrival order across all replicas, paced (see
//! [`Pacing`]), and never earlier than necessary by more than one bucket of a window
//! (1/60 of it by default).

mod breaker;
mod decision;
mod error;
mod fair;
mod handover;
mod limiter;
mod memory;
mod quota;
mod redis;
mod store;
mod time;
mod window;

pub use decision::{
    Budget, Decision, Left, LimitStatus, Origin, QuotaStatus, Refusal, RefusalReason,
    ReleaseOutcome, Remaining, Reservation, ReservationId,
};
pub use error::{LimitError, QuotaError, StoreError};
pub use fair::{Priority, Share};
pub use limiter::{Limiter, OnError};
pub use memory::InProcessStore;
pub use quota::{
    Cost, Limit, LimitId, MAX_CHARGE, Pacing, Quota, QuotaKey, RECONCILE_MAX_WINDOW,
    RECONCILE_MIN_WINDOW, TOO_LARGE_CHARGE, Unit, Window,
};
pub use redis::{RedisConnection, RedisOptions, RedisStore};
pub use store::{StateChange, Store};
pub use time::{Clock, ManualClock, MonotonicClock, SystemClock, Timestamp};

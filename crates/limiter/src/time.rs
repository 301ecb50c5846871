//! Time as the limiter sees it: [`Timestamp`] in microseconds and the [`Clock`] seam.
//!
//! The Redis backend reads time from Redis (`TIME`) inside its scripts, so gateways
//! with skewed clocks still agree. Tests inject a [`ManualClock`] instead, which both
//! backends accept, so one conformance suite runs on a frozen clock everywhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time: microseconds since the Unix epoch on the store's clock.
///
/// ```
/// use sluice_limiter::Timestamp;
/// use std::time::Duration;
/// let t = Timestamp::from_micros(1_000_000);
/// assert_eq!(t + Duration::from_millis(5), Timestamp::from_micros(1_005_000));
/// ```
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The instant `micros` microseconds after the epoch.
    pub const fn from_micros(micros: u64) -> Self {
        Self(micros)
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// How long after `earlier` this instant is; zero when it is not after it.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl std::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_micros(rhs)))
    }
}

/// A duration in whole microseconds, saturating at `u64::MAX`.
pub(crate) fn duration_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The host's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(duration_micros(since))
    }
}

/// The host's clock, read cheaply: the wall clock read once, at creation, then advanced
/// by a monotonic counter (the CPU's time-stamp counter where it is invariant, through
/// [`quanta`]; the OS's monotonic clock otherwise).
///
/// A read costs about 10 ns where [`SystemClock`] costs about 26 ns, which is a fifth
/// of an in-process decision; the in-process store uses it. Time never goes backwards
/// and ignores steps of the wall clock; it can drift from the wall clock by the
/// counter's calibration error (parts per million, far less than the bucket a window
/// already errs by). Only the store that owns it reads it: Redis keeps its own time.
///
/// ```
/// use sluice_limiter::{Clock, MonotonicClock, SystemClock};
/// let clock = MonotonicClock::new();
/// let (a, b) = (clock.now(), clock.now());
/// assert!(b >= a);
/// let wall = SystemClock.now();
/// assert!(a.as_micros().abs_diff(wall.as_micros()) < 60_000_000);
/// ```
#[derive(Clone, Debug)]
pub struct MonotonicClock {
    counter: quanta::Clock,
    /// The counter's raw reading at creation.
    start: u64,
    /// The wall clock at `start` (µs since the epoch).
    start_micros: u64,
}

impl MonotonicClock {
    /// A clock that starts at the wall clock's time now.
    pub fn new() -> Self {
        let counter = quanta::Clock::new();
        let start = counter.raw();
        Self {
            start_micros: SystemClock.now().as_micros(),
            counter,
            start,
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Timestamp {
        // Raw readings scaled to nanoseconds: a multiply and a shift, no `Duration`.
        let elapsed_ns = self.counter.delta_as_nanos(self.start, self.counter.raw());
        Timestamp(self.start_micros.saturating_add(elapsed_ns / 1000))
    }
}

/// A clock that moves only when told to; clones share the same time.
///
/// ```
/// use sluice_limiter::{Clock, ManualClock, Timestamp};
/// use std::time::Duration;
/// let clock = ManualClock::new(Timestamp::from_micros(10));
/// let view = clock.clone();
/// clock.advance(Duration::from_micros(5));
/// assert_eq!(view.now(), Timestamp::from_micros(15));
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock frozen at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(Arc::new(AtomicU64::new(start.0)))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(duration_micros(by), Ordering::SeqCst);
    }

    /// Sets the clock to `to` (it may go backwards: the limiter clamps such time).
    pub fn set(&self, to: Timestamp) {
        self.0.store(to.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

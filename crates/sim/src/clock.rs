//! Time for the simulator: a monotonic clock seam (system or manual) and the text formats of durations and instants.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Nanoseconds since a clock's own origin. Every metering decision uses this unit.
pub type Nanos = u64;

/// Nanoseconds in one millisecond.
pub const NANOS_PER_MS: u64 = 1_000_000;
/// Nanoseconds in one second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A monotonic clock with a known wall-clock origin.
///
/// The meter reads `now()`; the dialects turn instants into wall-clock text
/// (Anthropic's RFC 3339 resets) with [`Clock::unix_nanos_at`].
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Nanoseconds elapsed since the clock's origin; never goes backwards.
    fn now(&self) -> Nanos;
    /// The UNIX time, in nanoseconds, of the instant `at` of this clock.
    fn unix_nanos_at(&self, at: Nanos) -> u128;
}

/// The real clock: `Instant` for metering, anchored to `SystemTime` at creation.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
    unix_origin: u128,
}

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        let unix_origin = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Self {
            origin: Instant::now(),
            unix_origin,
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Nanos {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
    fn unix_nanos_at(&self, at: Nanos) -> u128 {
        self.unix_origin + u128::from(at)
    }
}

/// A clock that only moves when told to: window-edge tests use it to be exact without sleeping.
///
/// Its origin is the UNIX instant 2025-01-01T00:00:00Z, so wall-clock headers are predictable.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

/// UNIX seconds of 2025-01-01T00:00:00Z, the origin of [`ManualClock`].
pub const MANUAL_CLOCK_UNIX_ORIGIN_SECS: u64 = 1_735_689_600;

impl ManualClock {
    /// A shareable manual clock at instant 0.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.now.fetch_add(by, Ordering::SeqCst);
    }
    /// Sets the clock to `at` nanoseconds since its origin (ignored if that would go backwards).
    pub fn set(&self, at: Nanos) {
        self.now.fetch_max(at, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        self.now.load(Ordering::SeqCst)
    }
    fn unix_nanos_at(&self, at: Nanos) -> u128 {
        u128::from(MANUAL_CLOCK_UNIX_ORIGIN_SECS) * u128::from(NANOS_PER_SEC) + u128::from(at)
    }
}

/// Rounds nanoseconds up to whole milliseconds.
pub fn ceil_ms(nanos: Nanos) -> u64 {
    nanos.div_ceil(NANOS_PER_MS)
}

/// Rounds nanoseconds up to whole seconds.
pub fn ceil_secs(nanos: Nanos) -> u64 {
    nanos.div_ceil(NANOS_PER_SEC)
}

/// Formats a duration as Go's `time.Duration.String()` does, after rounding it up to whole
/// milliseconds (so a wait is never shown shorter than it is): `0s`, `12ms`, `1.146s`, `6m0s`, `1h0m0s`.
pub fn go_duration(nanos: Nanos) -> String {
    let ms = ceil_ms(nanos);
    if ms == 0 {
        return "0s".to_owned();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let total_secs = ms / 1000;
    let frac_ms = ms % 1000;
    let secs = total_secs % 60;
    let mins = (total_secs / 60) % 60;
    let hours = total_secs / 3600;
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if total_secs >= 60 {
        out.push_str(&format!("{mins}m"));
    }
    out.push_str(&secs.to_string());
    if frac_ms > 0 {
        let frac = format!("{frac_ms:03}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('s');
    out
}

/// Formats UNIX seconds as an RFC 3339 UTC instant with whole seconds: `2025-08-21T12:40:59Z`.
pub fn rfc3339(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let rem = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's `civil_from_days` for non-negative days.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_match_go() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1), "1ms");
        assert_eq!(go_duration(12 * NANOS_PER_MS), "12ms");
        assert_eq!(go_duration(NANOS_PER_SEC), "1s");
        assert_eq!(go_duration(1_146 * NANOS_PER_MS), "1.146s");
        assert_eq!(go_duration(1_500 * NANOS_PER_MS), "1.5s");
        assert_eq!(go_duration(1_145_000_001), "1.146s");
        assert_eq!(go_duration(360 * NANOS_PER_SEC), "6m0s");
        assert_eq!(go_duration(3600 * NANOS_PER_SEC), "1h0m0s");
        assert_eq!(
            go_duration(3723 * NANOS_PER_SEC + 500 * NANOS_PER_MS),
            "1h2m3.5s"
        );
        assert_eq!(go_duration(11_054 * NANOS_PER_MS), "11.054s");
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(MANUAL_CLOCK_UNIX_ORIGIN_SECS),
            "2025-01-01T00:00:00Z"
        );
        assert_eq!(rfc3339(1_755_780_059), "2025-08-21T12:40:59Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn manual_clock_moves_only_forward() {
        let clock = ManualClock::new();
        clock.advance(Duration::from_millis(5));
        assert_eq!(clock.now(), 5 * NANOS_PER_MS);
        clock.set(NANOS_PER_MS);
        assert_eq!(clock.now(), 5 * NANOS_PER_MS);
    }
}

//! What a quota is: [`Limit`]s over [`Window`]s, a [`Pacing`] rule, what a request
//! [`Cost`]s, and the [`QuotaKey`] that names one account's copy of it.

use std::fmt;
use std::hash::BuildHasher;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use crate::error::QuotaError;
use crate::time::duration_micros;

/// What a limit counts.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Unit {
    /// Requests.
    Requests,
    /// Input and output tokens together.
    Tokens,
    /// Prompt (input) tokens only.
    InputTokens,
    /// Completion (output) tokens only.
    OutputTokens,
    /// Money, in millionths of a currency unit (micro-USD): a tenant's spend budget.
    Spend,
}

impl Unit {
    fn tag(self) -> char {
        match self {
            Unit::Requests => 'r',
            Unit::Tokens => 't',
            Unit::InputTokens => 'i',
            Unit::OutputTokens => 'o',
            Unit::Spend => 's',
        }
    }

    /// A stable lowercase name (`requests`, `tokens`, `input_tokens`, `output_tokens`,
    /// `spend`).
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Requests => "requests",
            Unit::Tokens => "tokens",
            Unit::InputTokens => "input_tokens",
            Unit::OutputTokens => "output_tokens",
            Unit::Spend => "spend",
        }
    }
}

/// The length of a sliding window: a whole number of milliseconds, from 1 ms to 366 days.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window(Duration);

impl Window {
    /// The longest window accepted.
    pub const MAX: Duration = Duration::from_secs(366 * 24 * 3600);

    /// A window of `length`, which must be a whole, non-zero number of milliseconds.
    pub fn new(length: Duration) -> Result<Self, QuotaError> {
        if length.is_zero()
            || length > Self::MAX
            || !length.subsec_nanos().is_multiple_of(1_000_000)
        {
            return Err(QuotaError::InvalidWindow(length));
        }
        Ok(Self(length))
    }

    /// A window of `secs` seconds.
    pub fn secs(secs: u64) -> Result<Self, QuotaError> {
        Self::new(Duration::from_secs(secs))
    }

    /// The window's length.
    pub fn length(self) -> Duration {
        self.0
    }

    pub(crate) fn micros(self) -> u64 {
        duration_micros(self.0)
    }
}

/// A stable identifier of one limit of a quota, e.g. `r60000` for requests per 60 s.
///
/// State is stored per identifier, so changing a limit's amount keeps its window's
/// usage, while changing its window or unit starts a fresh window.
#[derive(Clone, Debug, Eq)]
pub struct LimitId(Arc<str>);

impl PartialEq for LimitId {
    fn eq(&self, other: &Self) -> bool {
        // An account's windows hold clones of its quota's ids: usually the same text.
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl std::hash::Hash for LimitId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Equal ids have equal text.
        self.0.hash(state);
    }
}

impl LimitId {
    /// The identifier as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LimitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One limit: at most `amount` of `unit` in any trailing `window`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    unit: Unit,
    amount: NonZeroU64,
    window: Window,
    id: LimitId,
}

impl Limit {
    /// At most `amount` of `unit` in any trailing `window`; an amount above
    /// [`MAX_CHARGE`] is clamped to it.
    pub fn new(unit: Unit, amount: NonZeroU64, window: Window) -> Self {
        let amount = amount.min(NonZeroU64::new(MAX_CHARGE).unwrap_or(NonZeroU64::MAX));
        let id = LimitId(format!("{}{}", unit.tag(), window.0.as_millis()).into());
        Self {
            unit,
            amount,
            window,
            id,
        }
    }

    /// `amount` requests per `window`; `None` when `amount` is zero.
    pub fn requests(amount: u64, window: Window) -> Option<Self> {
        NonZeroU64::new(amount).map(|a| Self::new(Unit::Requests, a, window))
    }

    /// `amount` tokens (input + output) per `window`; `None` when `amount` is zero.
    pub fn tokens(amount: u64, window: Window) -> Option<Self> {
        NonZeroU64::new(amount).map(|a| Self::new(Unit::Tokens, a, window))
    }

    /// The same limit with its own state, apart from an unscoped limit of the same unit
    /// and window in the same quota: its identifier becomes `<scope>/<id>` (a tenant's
    /// limit on one model, `m:qwen3-max/r60000`, beside its limit on every model).
    ///
    /// ```
    /// use sluice_limiter::{Limit, Window};
    /// let every = Limit::requests(100, Window::secs(60).unwrap()).unwrap();
    /// let one = every.clone().scoped("m:qwen3-max");
    /// assert_eq!(one.id().as_str(), "m:qwen3-max/r60000");
    /// assert_ne!(one.id(), every.id());
    /// ```
    pub fn scoped(mut self, scope: &str) -> Self {
        self.id = LimitId(format!("{scope}/{}", self.id).into());
        self
    }

    /// What the limit counts.
    pub fn unit(&self) -> Unit {
        self.unit
    }

    /// How much of the unit one window holds.
    pub fn amount(&self) -> u64 {
        self.amount.get()
    }

    /// The window's length.
    pub fn window(&self) -> Window {
        self.window
    }

    /// The limit's stable identifier.
    pub fn id(&self) -> &LimitId {
        &self.id
    }

    /// How much of this limit `cost` uses, at most [`TOO_LARGE_CHARGE`]: a charge
    /// above [`MAX_CHARGE`] becomes that one value, which no limit can hold (so an
    /// acquire refuses it as too large) and which the windows saturate on.
    pub fn charge(&self, cost: &Cost) -> u64 {
        let raw = match self.unit {
            Unit::Requests => cost.requests,
            Unit::Tokens => cost.input_tokens.saturating_add(cost.output_tokens),
            Unit::InputTokens => cost.input_tokens,
            Unit::OutputTokens => cost.output_tokens,
            Unit::Spend => cost.spend,
        };
        raw.min(TOO_LARGE_CHARGE)
    }
}

/// How requests are spaced out when they wait for a slot (GCRA virtual scheduling).
///
/// Pacing applies to the request count of a cost. It is what makes a queue drain
/// smoothly instead of releasing a burst when a window rolls over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Pacing {
    /// Space requests at the tightest request rate among the limits whose window is
    /// at most 60 s (`window / limit`, using the effective limit), with a burst
    /// tolerance of one second's worth of that rate (at least one request).
    #[default]
    Auto,
    /// No spacing: only the windows bound admission.
    Off,
    /// A fixed interval between requests, after an initial burst of `burst` requests.
    Fixed {
        /// The interval between two requests.
        interval: Duration,
        /// How many requests may go at the same instant after an idle period (≥ 1).
        burst: u32,
    },
}

/// A set of limits that one decision checks together, plus its pacing rule.
///
/// ```
/// use sluice_limiter::{Limit, Quota, Window};
/// let minute = Window::secs(60).unwrap();
/// let quota = Quota::new(vec![
///     Limit::requests(600, minute).unwrap(),
///     Limit::tokens(1_000_000, minute).unwrap(),
///     Limit::requests(10, Window::secs(1).unwrap()).unwrap(),
/// ])
/// .unwrap();
/// assert_eq!(quota.limits().len(), 3);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    limits: Vec<Limit>,
    pacing: Pacing,
    buckets: u32,
    /// Computed from the fields above whenever one changes.
    derived: Derived,
}

/// What every decision on a quota would otherwise compute again (each a division).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Derived {
    /// Each limit's bucket width in µs, in limit order.
    bucket_us: [u64; Quota::MAX_LIMITS],
    /// Pacing interval and burst tolerance (µs) at the configured limits and no
    /// slow-down: what an account that learned nothing paces at.
    pacing: Option<(u64, u64)>,
}

impl Quota {
    /// The default number of buckets a window is divided into.
    pub const DEFAULT_BUCKETS: u32 = 60;
    /// The most limits one quota may have (providers meter at most a handful).
    pub const MAX_LIMITS: usize = 8;

    /// A quota of `limits`, with automatic pacing and 60 buckets per window.
    ///
    /// Fails when there are no limits, more than [`Quota::MAX_LIMITS`], or two limits
    /// share a unit and window.
    pub fn new(limits: Vec<Limit>) -> Result<Self, QuotaError> {
        if limits.is_empty() {
            return Err(QuotaError::NoLimits);
        }
        if limits.len() > Self::MAX_LIMITS {
            return Err(QuotaError::TooManyLimits(limits.len()));
        }
        for (i, a) in limits.iter().enumerate() {
            if limits[..i].iter().any(|b| b.id == a.id) {
                return Err(QuotaError::DuplicateLimit(a.id.clone()));
            }
        }
        Ok(Self {
            limits,
            pacing: Pacing::Auto,
            buckets: Self::DEFAULT_BUCKETS,
            derived: Derived::default(),
        }
        .derive())
    }

    /// This quota with [`Derived`] computed again from its fields.
    fn derive(mut self) -> Self {
        let mut bucket_us = [0; Self::MAX_LIMITS];
        for (w, l) in bucket_us.iter_mut().zip(&self.limits) {
            *w = (l.window.micros() / u64::from(self.buckets)).max(1);
        }
        let configured: Vec<u64> = self.limits.iter().map(|l| l.amount.get()).collect();
        let pacing = crate::window::pacing(&self, &configured, crate::window::PACE_MIN);
        self.derived = Derived { bucket_us, pacing };
        self
    }

    /// The same quota with another pacing rule.
    pub fn with_pacing(mut self, pacing: Pacing) -> Result<Self, QuotaError> {
        if let Pacing::Fixed { interval, burst } = pacing
            && (burst == 0 || interval.is_zero() || interval > Window::MAX)
        {
            return Err(QuotaError::InvalidPacing);
        }
        self.pacing = pacing;
        Ok(self.derive())
    }

    /// The same quota with each window divided into `buckets` buckets (1 to 3600).
    ///
    /// More buckets waste less of the limit at saturation (at most one bucket's
    /// worth of a window) and cost more work per decision.
    pub fn with_buckets(mut self, buckets: u32) -> Result<Self, QuotaError> {
        if !(1..=3600).contains(&buckets) {
            return Err(QuotaError::InvalidBuckets(buckets));
        }
        self.buckets = buckets;
        Ok(self.derive())
    }

    /// The limits, in the order given.
    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    /// The pacing rule.
    pub fn pacing(&self) -> Pacing {
        self.pacing
    }

    /// Buckets per window.
    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    /// The longest window of the quota.
    pub fn longest_window(&self) -> Window {
        self.limits
            .iter()
            .map(|l| l.window)
            .max()
            .unwrap_or(Window(Duration::from_millis(1)))
    }

    /// The bucket width of the `i`-th limit, in microseconds (at least 1).
    pub(crate) fn bucket_micros(&self, i: usize) -> u64 {
        self.derived.bucket_us[i]
    }

    /// Pacing interval and burst tolerance (µs) at the configured limits and no
    /// slow-down ([`crate::window::pacing`] with nothing learned), computed once.
    pub(crate) fn configured_pacing(&self) -> Option<(u64, u64)> {
        self.derived.pacing
    }

    /// How long after a reservation's slot its reconcile is accepted: twice the longest
    /// window plus a second, but at least [`RECONCILE_MIN_WINDOW`] (a response may
    /// stream for longer than a short window) and at most [`RECONCILE_MAX_WINDOW`].
    ///
    /// The idempotency mark of a reconcile lives exactly that long, so marks take
    /// memory for at most an hour of reconciles (not two days with a daily limit); a
    /// reconcile that comes later is ignored (no change, no refund), so a repeated one
    /// can never apply twice.
    pub fn reconcile_window(&self) -> Duration {
        (2 * self.longest_window().length() + Duration::from_secs(1))
            .clamp(RECONCILE_MIN_WINDOW, RECONCILE_MAX_WINDOW)
    }

    /// Replica `index`'s share of each limit when `parts` replicas cannot coordinate,
    /// in the order of [`limits`](Self::limits); a share may be zero.
    ///
    /// The rule, so that the shares of the whole fleet never add up to more than the
    /// limit, whatever the replica count: each replica gets `amount ÷ parts` rounded
    /// down, and the remainder `amount mod parts` goes one each to the replicas whose
    /// `index mod parts` is below it (a deterministic split: the shares add up to
    /// exactly the limit). A replica without an index (`None`) gets only the rounded
    /// down part, so with `amount < parts` (e.g. `rps = 1` over 10 replicas) it gets
    /// nothing on that limit while replicas cannot coordinate.
    pub fn shares(&self, parts: u32, index: Option<u32>) -> Vec<u64> {
        let n = u64::from(parts.max(1));
        self.limits
            .iter()
            .map(|l| {
                let (base, rest) = (l.amount.get() / n, l.amount.get() % n);
                match index {
                    Some(i) if u64::from(i) % n < rest => base + 1,
                    _ => base,
                }
            })
            .collect()
    }

    /// This quota with every limit divided by `parts` (rounded down, at least 1):
    /// one replica's share when replicas cannot coordinate. A share of zero (see
    /// [`shares`](Self::shares)) shows here as 1, so a caller that must not exceed the
    /// limit refuses every charge on a limit whose share is zero.
    pub fn divided(&self, parts: u32) -> Quota {
        self.divided_for(parts, None)
    }

    /// [`divided`](Self::divided) for replica `index` (see [`shares`](Self::shares)).
    pub fn divided_for(&self, parts: u32, index: Option<u32>) -> Quota {
        let shares = self.shares(parts, index);
        let limits = self
            .limits
            .iter()
            .zip(shares)
            .map(|(l, share)| {
                let amount = NonZeroU64::new(share).unwrap_or(NonZeroU64::MIN);
                Limit {
                    amount,
                    ..l.clone()
                }
            })
            .collect();
        Quota {
            limits,
            pacing: self.pacing,
            buckets: self.buckets,
            derived: Derived::default(),
        }
        .derive()
    }
}

/// The shortest [`Quota::reconcile_window`]: 20 minutes, twice the gateway's default
/// `upstream_timeout`.
pub const RECONCILE_MIN_WINDOW: Duration = Duration::from_secs(20 * 60);
/// The longest [`Quota::reconcile_window`]: one hour.
pub const RECONCILE_MAX_WINDOW: Duration = Duration::from_secs(3600);

/// The most one request may charge any one limit, and the most any limit, learned
/// limit or window total may hold: 2^53 - 1, the largest integer a Redis Lua number
/// (a double) holds exactly. `lua/common.lua` has the same constant (`MAX_CHARGE`).
///
/// Every amount entering the limiter is clamped to it ([`Limit::charge`], limits,
/// learned limits, reconcile actuals, recorded usage), and a window's total saturates
/// at it, so no arithmetic wraps or loses precision. A charge above a limit's capacity
/// is still refused as [`InsufficientCapacity`](crate::LimitError::InsufficientCapacity).
pub const MAX_CHARGE: u64 = (1 << 53) - 1;

/// What [`Limit::charge`] gives for any amount above [`MAX_CHARGE`]: 2^53, still exact
/// in a double and above every limit, so it is refused, never admitted.
pub const TOO_LARGE_CHARGE: u64 = MAX_CHARGE + 1;

/// What one request uses: a request count and its tokens.
///
/// ```
/// use sluice_limiter::Cost;
/// let cost = Cost::request(1_200, 800);
/// assert_eq!(cost.total_tokens(), 2_000);
/// ```
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Cost {
    /// Requests (usually 1).
    pub requests: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// What it costs in money, in millionths of a currency unit (micro-USD); only
    /// [`Unit::Spend`] limits (tenant budgets) count it.
    pub spend: u64,
}

impl Cost {
    /// Nothing: a read-only check.
    pub const ZERO: Cost = Cost {
        requests: 0,
        input_tokens: 0,
        output_tokens: 0,
        spend: 0,
    };

    /// One request with the given input and output tokens.
    pub fn request(input_tokens: u64, output_tokens: u64) -> Self {
        Self {
            requests: 1,
            input_tokens,
            output_tokens,
            spend: 0,
        }
    }

    /// Input and output tokens together.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// The name of one account's copy of a quota, e.g. group `dashscope/qwen3-max`,
/// name `key-0`.
///
/// The group is the Redis Cluster hash tag: every quota of one group lives in one
/// slot, so [`acquire`](crate::Store::acquire) can choose among a group's accounts
/// in one atomic script.
///
/// Cheap to clone and to hash: one shared allocation holds both parts and their
/// hashes, computed once (a decision clones the key it grants and hashes it twice).
///
/// ```
/// use sluice_limiter::QuotaKey;
/// let key = QuotaKey::new("dashscope/qwen3-max", "key-0").unwrap();
/// assert_eq!((key.group(), key.name()), ("dashscope/qwen3-max", "key-0"));
/// assert_eq!(key.to_string(), "dashscope/qwen3-max/key-0");
/// ```
#[derive(Clone)]
pub struct QuotaKey(Arc<KeyParts>);

struct KeyParts {
    /// The group, then the name.
    text: Box<str>,
    group_len: usize,
    /// Hash of the group alone (the in-process store's shard).
    group_hash: u64,
    /// Hash of both parts.
    hash: u64,
}

impl QuotaKey {
    /// A key; both parts must be 1 to 200 printable characters without braces.
    pub fn new(group: impl Into<String>, name: impl Into<String>) -> Result<Self, QuotaError> {
        let (group, name) = (group.into(), name.into());
        for part in [&group, &name] {
            let ok = !part.is_empty()
                && part.len() <= 200
                && part
                    .chars()
                    .all(|c| !c.is_control() && !c.is_whitespace() && c != '{' && c != '}');
            if !ok {
                return Err(QuotaError::InvalidKey(part.clone()));
            }
        }
        // Keys come from the operator's configuration, not from callers: a fast
        // unkeyed hash is safe.
        let hasher = rustc_hash::FxBuildHasher;
        let group_hash = hasher.hash_one(&group);
        let hash = hasher.hash_one((&group, &name));
        let group_len = group.len();
        let mut text = group;
        text.push_str(&name);
        Ok(Self(Arc::new(KeyParts {
            text: text.into_boxed_str(),
            group_len,
            group_hash,
            hash,
        })))
    }

    /// The group (hash tag).
    pub fn group(&self) -> &str {
        &self.0.text[..self.0.group_len]
    }

    /// The name within the group.
    pub fn name(&self) -> &str {
        &self.0.text[self.0.group_len..]
    }

    /// A hash of the group alone, computed once: keys of one group share it.
    pub(crate) fn group_hash(&self) -> u64 {
        self.0.group_hash
    }
}

impl PartialEq for QuotaKey {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&*self.0, &*other.0);
        Arc::ptr_eq(&self.0, &other.0)
            || (a.hash == b.hash && a.group_len == b.group_len && a.text == b.text)
    }
}

impl Eq for QuotaKey {}

impl std::hash::Hash for QuotaKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Equal keys have equal parts, so equal precomputed hashes.
        state.write_u64(self.0.hash);
    }
}

impl PartialOrd for QuotaKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for QuotaKey {
    /// By group, then by name.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.group(), self.name()).cmp(&(other.group(), other.name()))
    }
}

impl fmt::Debug for QuotaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuotaKey")
            .field("group", &self.group())
            .field("name", &self.name())
            .finish()
    }
}

impl From<&QuotaKey> for QuotaKey {
    fn from(key: &QuotaKey) -> Self {
        key.clone()
    }
}

impl fmt::Display for QuotaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.group(), self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lua_and_rust_share_the_maximum_charge() {
        let lua = include_str!("../lua/common.lua");
        assert!(lua.contains(&format!("local MAX_CHARGE = {MAX_CHARGE}\n")));
        assert_eq!(MAX_CHARGE as f64 as u64, MAX_CHARGE);
        assert_eq!(TOO_LARGE_CHARGE as f64 as u64, TOO_LARGE_CHARGE);
    }

    #[test]
    fn replica_shares_never_add_up_to_more_than_the_limit() {
        let w = Window::secs(1).unwrap();
        for amount in [1u64, 2, 3, 7, 10, 11, 600, 1_000_003] {
            let q = Quota::new(vec![Limit::requests(amount, w).unwrap()]).unwrap();
            for parts in 1..=16u32 {
                let indexed: u64 = (0..parts).map(|i| q.shares(parts, Some(i))[0]).sum();
                assert_eq!(indexed, amount, "{amount} over {parts} indexed");
                let anonymous = q.shares(parts, None)[0] * u64::from(parts);
                assert!(
                    anonymous <= amount,
                    "{amount} over {parts} without an index"
                );
            }
        }
        let q = Quota::new(vec![Limit::requests(1, w).unwrap()]).unwrap();
        assert_eq!(q.shares(10, None), vec![0]);
        assert_eq!(q.shares(10, Some(0)), vec![1]);
        assert_eq!(q.shares(10, Some(3)), vec![0]);
    }

    #[test]
    fn reconcile_window_is_bounded() {
        let q = |secs| {
            Quota::new(vec![Limit::tokens(5, Window::secs(secs).unwrap()).unwrap()]).unwrap()
        };
        assert_eq!(q(60).reconcile_window(), RECONCILE_MIN_WINDOW);
        assert_eq!(q(900).reconcile_window(), Duration::from_secs(1801));
        assert_eq!(q(86_400).reconcile_window(), RECONCILE_MAX_WINDOW);
    }

    #[test]
    fn huge_amounts_clamp_and_never_fit() {
        let w = Window::secs(1).unwrap();
        let limit = Limit::tokens(u64::MAX, w).unwrap();
        assert_eq!(limit.amount(), MAX_CHARGE);
        let cost = Cost::request(u64::MAX, u64::MAX);
        assert_eq!(limit.charge(&cost), TOO_LARGE_CHARGE);
        assert!(limit.charge(&cost) > limit.amount());
        assert_eq!(limit.charge(&Cost::request(MAX_CHARGE, 0)), MAX_CHARGE);
    }

    #[test]
    fn window_must_be_whole_milliseconds_and_positive() {
        assert!(Window::new(Duration::ZERO).is_err());
        assert!(Window::new(Duration::from_micros(1500)).is_err());
        assert!(Window::new(Duration::from_secs(367 * 86400)).is_err());
        assert!(Window::new(Duration::from_millis(1)).is_ok());
        assert!(Window::secs(86400).is_ok());
    }

    #[test]
    fn duplicate_limits_are_refused() {
        let w = Window::secs(60).unwrap();
        let err = Quota::new(vec![
            Limit::requests(1, w).unwrap(),
            Limit::requests(2, w).unwrap(),
        ])
        .unwrap_err();
        assert!(matches!(err, QuotaError::DuplicateLimit(id) if id.as_str() == "r60000"));
        assert!(matches!(Quota::new(vec![]), Err(QuotaError::NoLimits)));
    }

    #[test]
    fn charge_follows_the_unit() {
        let w = Window::secs(1).unwrap();
        let cost = Cost::request(30, 12);
        let n = NonZeroU64::new(100).unwrap();
        assert_eq!(Limit::new(Unit::Requests, n, w).charge(&cost), 1);
        assert_eq!(Limit::new(Unit::Tokens, n, w).charge(&cost), 42);
        assert_eq!(Limit::new(Unit::InputTokens, n, w).charge(&cost), 30);
        assert_eq!(Limit::new(Unit::OutputTokens, n, w).charge(&cost), 12);
    }

    #[test]
    fn keys_refuse_braces_and_blanks() {
        assert!(QuotaKey::new("a{b", "x").is_err());
        assert!(QuotaKey::new("", "x").is_err());
        assert!(QuotaKey::new("g", "a b").is_err());
        assert!(QuotaKey::new("dashscope/qwen3-max", "key-0").is_ok());
    }

    #[test]
    fn divided_never_reaches_zero() {
        let w = Window::secs(1).unwrap();
        let q = Quota::new(vec![
            Limit::requests(10, w).unwrap(),
            Limit::tokens(2, w).unwrap(),
        ])
        .unwrap();
        let d = q.divided(3);
        assert_eq!(d.limits()[0].amount(), 3);
        assert_eq!(d.limits()[1].amount(), 1);
    }
}

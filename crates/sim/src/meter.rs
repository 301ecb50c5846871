//! The exact sliding-log meter: one log per limit, all limits checked before any is written.
//!
//! An entry recorded at instant `t` counts toward the window of its limit at every instant in
//! `[t, t + window)` and no longer at `t + window`. Nothing is approximated: the sum of a log
//! is the exact usage of the trailing window, and a wait is the exact time until enough of the
//! log has expired.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::clock::Nanos;

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// One per request.
    Requests,
    /// Prompt plus completion tokens.
    Tokens,
    /// Prompt tokens only (Anthropic's input tokens per minute).
    InputTokens,
    /// Completion tokens only (Anthropic's output tokens per minute).
    OutputTokens,
}

impl Unit {
    /// Whether this unit counts tokens (of any kind).
    pub fn is_tokens(self) -> bool {
        self != Self::Requests
    }
}

/// One entry of a log: an amount charged at an instant, tagged with the request that charged it.
#[derive(Debug, Clone, Copy)]
struct Entry {
    at: Nanos,
    amount: u64,
    id: u64,
}

/// The sliding log of one limit.
#[derive(Debug, Clone)]
pub struct LimitLog {
    unit: Unit,
    limit: u64,
    window: Nanos,
    label_window: Nanos,
    entries: VecDeque<Entry>,
    used: u64,
    peak: u64,
}

/// A view of one limit at an instant, for rate-limit headers and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitView {
    /// What the limit counts.
    pub unit: Unit,
    /// The limit.
    pub limit: u64,
    /// The window actually enforced, in nanoseconds.
    pub window: Nanos,
    /// The window as configured before `window_scale`, in nanoseconds (used to name it: "per min").
    pub label_window: Nanos,
    /// Usage in the trailing window.
    pub used: u64,
    /// `limit - used`, never below 0.
    pub remaining: u64,
    /// Time until the whole log has expired and the budget is back to full.
    pub reset: Nanos,
    /// Highest usage of any trailing window observed since the last reset.
    pub peak: u64,
}

impl LimitLog {
    /// An empty log for `limit` units per `window` nanoseconds; `label_window` names the window in messages.
    pub fn new(unit: Unit, limit: u64, window: Nanos, label_window: Nanos) -> Self {
        Self {
            unit,
            limit,
            window: window.max(1),
            label_window,
            entries: VecDeque::new(),
            used: 0,
            peak: 0,
        }
    }

    /// What this limit counts.
    pub fn unit(&self) -> Unit {
        self.unit
    }

    /// Drops the entries that no longer count at `now`.
    pub fn prune(&mut self, now: Nanos) {
        while let Some(front) = self.entries.front() {
            if front.at.saturating_add(self.window) > now {
                break;
            }
            self.used -= front.amount;
            self.entries.pop_front();
        }
    }

    /// Time from `now` until `cost` more would fit: `Some(0)` if it fits now, `None` if it never can
    /// (the cost is above the limit). Call [`LimitLog::prune`] first.
    pub fn wait_for(&self, now: Nanos, cost: u64) -> Option<Nanos> {
        if cost > self.limit {
            return None;
        }
        let total = self.used + cost;
        if total <= self.limit {
            return Some(0);
        }
        let excess = total - self.limit;
        let mut freed = 0;
        for entry in &self.entries {
            freed += entry.amount;
            if freed >= excess {
                return Some(entry.at.saturating_add(self.window).saturating_sub(now));
            }
        }
        // Unreachable while `used` is the sum of the entries and `cost <= limit`.
        Some(self.window)
    }

    /// Records `amount` at `now` for request `id` (nothing is recorded for 0).
    pub fn push(&mut self, now: Nanos, amount: u64, id: u64) {
        if amount == 0 {
            return;
        }
        self.entries.push_back(Entry {
            at: now,
            amount,
            id,
        });
        self.used += amount;
        self.peak = self.peak.max(self.used);
    }

    /// Changes the amount that request `id` charged at instant `at` to `actual`.
    ///
    /// If the entry has already left the window, a positive difference is charged at `now` and
    /// a refund is dropped.
    pub fn settle(&mut self, now: Nanos, at: Nanos, id: u64, actual: u64, reserved: u64) {
        self.prune(now);
        let start = self.entries.partition_point(|e| e.at < at);
        let found = (start..self.entries.len())
            .take_while(|&i| self.entries[i].at == at)
            .find(|&i| self.entries[i].id == id);
        match found {
            Some(i) => {
                let old = self.entries[i].amount;
                self.entries[i].amount = actual;
                self.used = self.used - old + actual;
                if actual == 0 {
                    self.entries.remove(i);
                }
                self.peak = self.peak.max(self.used);
            }
            None if actual > reserved => self.push(now, actual - reserved, id),
            None => {}
        }
    }

    /// The state of this limit at `now` (call [`LimitLog::prune`] first).
    pub fn view(&self, now: Nanos) -> LimitView {
        let reset = self.entries.back().map_or(0, |last| {
            last.at.saturating_add(self.window).saturating_sub(now)
        });
        LimitView {
            unit: self.unit,
            limit: self.limit,
            window: self.window,
            label_window: self.label_window,
            used: self.used,
            remaining: self.limit.saturating_sub(self.used),
            reset,
            peak: self.peak,
        }
    }

    /// Forgets the peak (it restarts from the usage of the current window at the next charge).
    pub fn reset_peak(&mut self) {
        self.peak = 0;
    }

    /// Copies the entries of `other` that count in this log's window at `now` (for a limit changed at run time).
    pub fn inherit(&mut self, other: &LimitLog, now: Nanos) {
        for entry in &other.entries {
            if entry.at.saturating_add(self.window) > now {
                self.entries.push_back(*entry);
                self.used += entry.amount;
            }
        }
        self.peak = self.used;
    }
}

/// Why the meter refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// A request limit is full.
    Requests,
    /// A token limit is full.
    Tokens,
    /// The request costs more tokens than a whole limit: it can never be admitted.
    TooLarge,
}

/// A refusal by the meter, with everything a dialect needs to word it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Which kind of limit refused.
    pub kind: RefusalKind,
    /// The limit that is named in the message (the binding one of that kind).
    pub limit: LimitView,
    /// What the request asked of that limit.
    pub requested: u64,
    /// Exact time until every limit would admit the request; `None` if it never can.
    pub wait: Option<Nanos>,
}

/// What one request costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    /// Requests (normally 1).
    pub requests: u64,
    /// Prompt tokens charged.
    pub input: u64,
    /// Completion tokens charged (reserved at arrival, settled at the end).
    pub output: u64,
}

impl Cost {
    /// `requests` requests of `input` prompt and `output` completion tokens.
    pub fn new(requests: u64, input: u64, output: u64) -> Self {
        Self {
            requests,
            input,
            output,
        }
    }

    fn of(&self, unit: Unit) -> u64 {
        match unit {
            Unit::Requests => self.requests,
            Unit::Tokens => self.input + self.output,
            Unit::InputTokens => self.input,
            Unit::OutputTokens => self.output,
        }
    }
}

/// All the limits of one account × model.
#[derive(Debug, Clone, Default)]
pub struct Quota {
    logs: Vec<LimitLog>,
    last_now: Nanos,
}

impl Quota {
    /// A quota with these (empty) logs.
    pub fn new(logs: Vec<LimitLog>) -> Self {
        Self { logs, last_now: 0 }
    }

    /// Clamps time that goes backwards and prunes every log.
    fn advance(&mut self, now: Nanos) -> Nanos {
        self.last_now = self.last_now.max(now);
        let now = self.last_now;
        for log in &mut self.logs {
            log.prune(now);
        }
        now
    }

    /// Checks every limit without writing anything.
    pub fn check(&mut self, now: Nanos, cost: Cost) -> Result<(), Refusal> {
        let now = self.advance(now);
        let mut worst_wait: Option<Nanos> = Some(0);
        // (kind, view, requested, own wait) of the limit to name in the message.
        let mut named: Option<(RefusalKind, LimitView, u64, Nanos)> = None;
        for log in &self.logs {
            let requested = cost.of(log.unit);
            let wait = log.wait_for(now, requested);
            let kind = match (wait, log.unit) {
                (Some(0), _) => continue,
                (None, _) => RefusalKind::TooLarge,
                (Some(_), Unit::Requests) => RefusalKind::Requests,
                (Some(_), _) => RefusalKind::Tokens,
            };
            worst_wait = match (worst_wait, wait) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            let own = wait.unwrap_or(Nanos::MAX);
            let better = match &named {
                None => true,
                Some((named_kind, _, _, named_wait)) => {
                    rank(kind) < rank(*named_kind) || (kind == *named_kind && own > *named_wait)
                }
            };
            if better {
                named = Some((kind, log.view(now), requested, own));
            }
        }
        match named {
            None => Ok(()),
            Some((kind, limit, requested, _)) => Err(Refusal {
                kind,
                limit,
                requested,
                wait: worst_wait,
            }),
        }
    }

    /// Charges `cost` at `now` for request `id` without checking (call [`Quota::check`] first).
    /// Returns the instant recorded (`now`, clamped so time never goes backwards).
    pub fn charge(&mut self, now: Nanos, cost: Cost, id: u64) -> Nanos {
        let now = self.advance(now);
        for log in &mut self.logs {
            log.push(now, cost.of(log.unit), id);
        }
        now
    }

    /// Checks every limit and, only if all admit, charges them all; returns the instant recorded.
    pub fn try_admit(&mut self, now: Nanos, cost: Cost, id: u64) -> Result<Nanos, Refusal> {
        self.check(now, cost)?;
        Ok(self.charge(now, cost, id))
    }

    /// Settles the tokens of request `id`, charged at `at`, from `reserved` to `actual`
    /// (every token limit; requests are never settled).
    pub fn settle(&mut self, now: Nanos, at: Nanos, id: u64, reserved: Cost, actual: Cost) {
        let now = self.advance(now);
        for log in self.logs.iter_mut().filter(|l| l.unit.is_tokens()) {
            log.settle(now, at, id, actual.of(log.unit), reserved.of(log.unit));
        }
    }

    /// Every limit's state at `now`.
    pub fn views(&mut self, now: Nanos) -> Vec<LimitView> {
        let now = self.advance(now);
        self.logs.iter().map(|l| l.view(now)).collect()
    }

    /// For each unit, the limit with the least remaining (ties: the longest window): what rate-limit headers show.
    pub fn headline(&mut self, now: Nanos) -> Headline {
        let mut headline = Headline::default();
        for view in self.views(now) {
            let slot = match view.unit {
                Unit::Requests => &mut headline.requests,
                Unit::Tokens => &mut headline.tokens,
                Unit::InputTokens => &mut headline.input_tokens,
                Unit::OutputTokens => &mut headline.output_tokens,
            };
            let replace = match slot {
                None => true,
                Some(cur) => {
                    view.remaining < cur.remaining
                        || (view.remaining == cur.remaining && view.window > cur.window)
                }
            };
            if replace {
                *slot = Some(view);
            }
        }
        headline
    }

    /// Forgets every peak.
    pub fn reset_peaks(&mut self) {
        for log in &mut self.logs {
            log.reset_peak();
        }
    }

    /// Replaces the limits, keeping the recorded history: each new log inherits the entries of the
    /// old log of the same unit with the longest window.
    pub fn replace_limits(&mut self, now: Nanos, mut logs: Vec<LimitLog>) {
        let now = self.advance(now);
        for new in &mut logs {
            let source = self
                .logs
                .iter()
                .filter(|old| old.unit == new.unit)
                .max_by_key(|old| old.window);
            if let Some(source) = source {
                new.inherit(source, now);
            }
        }
        self.logs = logs;
    }
}

/// Precedence of refusal kinds when several limits refuse: a hopeless request first, then requests, then tokens.
fn rank(kind: RefusalKind) -> u8 {
    match kind {
        RefusalKind::TooLarge => 0,
        RefusalKind::Requests => 1,
        RefusalKind::Tokens => 2,
    }
}

/// The limits shown in rate-limit headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Headline {
    /// The binding request limit, if any request limit exists.
    pub requests: Option<LimitView>,
    /// The binding token limit, if any token limit exists.
    pub tokens: Option<LimitView>,
    /// The binding input-token limit, if any.
    pub input_tokens: Option<LimitView>,
    /// The binding output-token limit, if any.
    pub output_tokens: Option<LimitView>,
}

impl Headline {
    /// The binding limit of any token kind: the token limit, else the tighter of the
    /// input and output limits (what Anthropic's `anthropic-ratelimit-tokens-*` show).
    pub fn any_tokens(&self) -> Option<LimitView> {
        self.tokens
            .or_else(|| match (self.input_tokens, self.output_tokens) {
                (Some(i), Some(o)) => Some(if o.remaining < i.remaining { o } else { i }),
                (i, o) => i.or(o),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{NANOS_PER_MS, NANOS_PER_SEC};

    const MIN: Nanos = 60 * NANOS_PER_SEC;

    fn quota(limits: &[(Unit, u64, Nanos)]) -> Quota {
        Quota::new(
            limits
                .iter()
                .map(|&(u, l, w)| LimitLog::new(u, l, w, w))
                .collect(),
        )
    }

    fn req(tokens: u64) -> Cost {
        Cost::new(1, tokens, 0)
    }

    /// Settles a test request's tokens (all counted as input here).
    fn settle(q: &mut Quota, now: Nanos, at: Nanos, id: u64, reserved: u64, actual: u64) {
        q.settle(
            now,
            at,
            id,
            Cost::new(0, reserved, 0),
            Cost::new(0, actual, 0),
        );
    }

    #[test]
    fn exactly_at_the_limit_then_one_more() {
        let mut q = quota(&[(Unit::Requests, 3, MIN)]);
        for id in 0..3 {
            assert!(q.try_admit(id * NANOS_PER_SEC, req(0), id).is_ok());
        }
        let refusal = q.try_admit(3 * NANOS_PER_SEC, req(0), 3).unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::Requests);
        assert_eq!(refusal.limit.used, 3);
        // The first entry (t = 0) expires at exactly 60 s.
        assert_eq!(refusal.wait, Some(MIN - 3 * NANOS_PER_SEC));
    }

    #[test]
    fn window_edge_is_half_open() {
        let mut q = quota(&[(Unit::Requests, 1, MIN)]);
        q.try_admit(0, req(0), 0).unwrap();
        let refusal = q.try_admit(MIN - 1, req(0), 1).unwrap_err();
        assert_eq!(refusal.wait, Some(1));
        assert!(q.try_admit(MIN, req(0), 1).is_ok());
    }

    #[test]
    fn refusal_leaves_no_trace_in_any_limit() {
        let mut q = quota(&[(Unit::Requests, 10, MIN), (Unit::Tokens, 100, MIN)]);
        q.try_admit(0, req(90), 0).unwrap();
        let refusal = q.try_admit(1, req(20), 1).unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::Tokens);
        assert_eq!(refusal.requested, 20);
        assert_eq!(refusal.limit.used, 90);
        let views = q.views(2);
        assert_eq!(views[0].used, 1, "the request limit was not charged");
        assert_eq!(views[1].used, 90);
    }

    #[test]
    fn too_large_is_never_admitted() {
        let mut q = quota(&[(Unit::Tokens, 100, MIN)]);
        let refusal = q.try_admit(0, req(101), 0).unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::TooLarge);
        assert_eq!(refusal.wait, None);
        assert!(q.try_admit(0, req(100), 0).is_ok());
    }

    #[test]
    fn wait_covers_every_refusing_limit() {
        let mut q = quota(&[(Unit::Requests, 1, NANOS_PER_SEC), (Unit::Tokens, 100, MIN)]);
        q.try_admit(0, req(100), 0).unwrap();
        let refusal = q.try_admit(10, req(1), 1).unwrap_err();
        // Both refuse; requests are named first, the wait is the longer (token) one.
        assert_eq!(refusal.kind, RefusalKind::Requests);
        assert_eq!(refusal.wait, Some(MIN - 10));
    }

    #[test]
    fn wait_frees_just_enough_tokens() {
        let mut q = quota(&[(Unit::Tokens, 100, MIN)]);
        q.try_admit(0, req(30), 0).unwrap();
        q.try_admit(NANOS_PER_SEC, req(30), 1).unwrap();
        q.try_admit(2 * NANOS_PER_SEC, req(40), 2).unwrap();
        // 50 more need the first two entries gone: at 61 s.
        let refusal = q.try_admit(5 * NANOS_PER_SEC, req(50), 3).unwrap_err();
        assert_eq!(refusal.wait, Some(MIN + NANOS_PER_SEC - 5 * NANOS_PER_SEC));
        assert!(q.try_admit(MIN + NANOS_PER_SEC - 1, req(50), 3).is_err());
        assert!(q.try_admit(MIN + NANOS_PER_SEC, req(50), 3).is_ok());
    }

    #[test]
    fn roll_over_frees_the_window() {
        let mut q = quota(&[(Unit::Tokens, 100, MIN)]);
        q.try_admit(0, req(100), 0).unwrap();
        assert!(q.try_admit(MIN - 1, req(1), 1).is_err());
        assert!(q.try_admit(MIN, req(100), 1).is_ok());
        assert_eq!(q.views(MIN)[0].used, 100);
        assert_eq!(q.views(2 * MIN)[0].used, 0);
    }

    #[test]
    fn settle_down_frees_tokens_in_place() {
        let mut q = quota(&[(Unit::Tokens, 100, MIN)]);
        q.try_admit(0, req(80), 7).unwrap();
        assert!(q.check(NANOS_PER_SEC, req(30)).is_err());
        settle(&mut q, 2 * NANOS_PER_SEC, 0, 7, 80, 50);
        assert_eq!(q.views(2 * NANOS_PER_SEC)[0].used, 50);
        assert!(q.try_admit(3 * NANOS_PER_SEC, req(50), 8).is_ok());
        // The settled entry still expires at its original instant.
        assert_eq!(q.views(MIN)[0].used, 50);
        assert_eq!(q.views(MIN)[0].peak, 100);
    }

    #[test]
    fn settle_up_in_window_and_after_expiry() {
        let mut q = quota(&[(Unit::Tokens, 1000, MIN)]);
        q.try_admit(0, req(10), 1).unwrap();
        settle(&mut q, NANOS_PER_SEC, 0, 1, 10, 25);
        assert_eq!(q.views(NANOS_PER_SEC)[0].used, 25);
        assert_eq!(q.views(NANOS_PER_SEC)[0].peak, 25);
        // Entry 2 ages out before it settles: the extra lands at settle time, a refund is dropped.
        q.try_admit(2 * NANOS_PER_SEC, req(10), 2).unwrap();
        q.try_admit(3 * NANOS_PER_SEC, req(10), 3).unwrap();
        settle(
            &mut q,
            MIN + 5 * NANOS_PER_SEC,
            2 * NANOS_PER_SEC,
            2,
            10,
            14,
        );
        settle(&mut q, MIN + 5 * NANOS_PER_SEC, 3 * NANOS_PER_SEC, 3, 10, 1);
        let view = q.views(MIN + 5 * NANOS_PER_SEC)[0];
        assert_eq!(view.used, 4);
        assert_eq!(view.reset, MIN);
    }

    #[test]
    fn settle_finds_its_entry_among_equal_instants() {
        let mut q = quota(&[(Unit::Tokens, 1000, MIN)]);
        for id in 0..5 {
            q.try_admit(NANOS_PER_MS, req(10), id).unwrap();
        }
        settle(&mut q, NANOS_PER_MS, NANOS_PER_MS, 3, 10, 0);
        assert_eq!(q.views(NANOS_PER_MS)[0].used, 40);
    }

    #[test]
    fn peak_is_the_highest_trailing_window() {
        let mut q = quota(&[(Unit::Requests, 10, NANOS_PER_SEC)]);
        for i in 0..4 {
            q.try_admit(i * 100 * NANOS_PER_MS, req(0), i).unwrap();
        }
        // 2 s later the window holds 1 at a time.
        for i in 0..3 {
            q.try_admit((2 + i) * NANOS_PER_SEC, req(0), 10 + i)
                .unwrap();
        }
        let view = q.views(5 * NANOS_PER_SEC)[0];
        assert_eq!(view.peak, 4);
        q.reset_peaks();
        q.try_admit(5 * NANOS_PER_SEC, req(0), 20).unwrap();
        assert_eq!(q.views(5 * NANOS_PER_SEC)[0].peak, 1);
    }

    #[test]
    fn headline_picks_least_remaining() {
        let mut q = quota(&[
            (Unit::Requests, 600, MIN),
            (Unit::Requests, 10, NANOS_PER_SEC),
            (Unit::Tokens, 1000, MIN),
        ]);
        q.try_admit(0, req(100), 0).unwrap();
        let h = q.headline(0);
        let requests = h.requests.unwrap();
        assert_eq!((requests.limit, requests.remaining), (10, 9));
        assert_eq!(requests.reset, NANOS_PER_SEC);
        let tokens = h.tokens.unwrap();
        assert_eq!(
            (tokens.limit, tokens.remaining, tokens.reset),
            (1000, 900, MIN)
        );
    }

    #[test]
    fn time_going_backwards_is_clamped() {
        let mut q = quota(&[(Unit::Requests, 1, MIN)]);
        q.try_admit(MIN, req(0), 0).unwrap();
        let refusal = q.try_admit(0, req(0), 1).unwrap_err();
        assert_eq!(refusal.wait, Some(MIN));
    }

    #[test]
    fn replaced_limits_keep_history() {
        let mut q = quota(&[(Unit::Requests, 100, MIN)]);
        for id in 0..5 {
            q.try_admit(id, req(0), id).unwrap();
        }
        q.replace_limits(10, vec![LimitLog::new(Unit::Requests, 5, MIN, MIN)]);
        assert!(q.try_admit(11, req(0), 9).is_err());
        assert_eq!(q.views(11)[0].used, 5);
    }

    #[test]
    fn input_and_output_limits_count_their_own_side_and_output_settles() {
        let mut q = quota(&[(Unit::InputTokens, 100, MIN), (Unit::OutputTokens, 50, MIN)]);
        q.try_admit(0, Cost::new(1, 60, 40), 1).unwrap();
        // 60 + 60 input is over 100: an input refusal, whatever the output.
        let r = q.check(1, Cost::new(1, 60, 1)).unwrap_err();
        assert_eq!(
            (r.kind, r.limit.unit),
            (RefusalKind::Tokens, Unit::InputTokens)
        );
        let r = q.check(1, Cost::new(1, 10, 20)).unwrap_err();
        assert_eq!(r.limit.unit, Unit::OutputTokens);
        // The answer used 5 of the 40 reserved: 35 output tokens come back.
        q.settle(2, 0, 1, Cost::new(0, 60, 40), Cost::new(0, 60, 5));
        q.try_admit(3, Cost::new(1, 10, 20), 2).unwrap();
        let h = q.headline(3);
        assert_eq!(h.input_tokens.map(|v| v.remaining), Some(30));
        assert_eq!(h.output_tokens.map(|v| v.remaining), Some(25));
        assert_eq!(h.any_tokens().map(|v| v.unit), Some(Unit::OutputTokens));
    }
}

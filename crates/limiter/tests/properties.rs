//! Property tests: random operation sequences give the same decisions on both backends
//! as on a brute-force reference model of the bucketed window, written here from the
//! definitions and sharing no code with the crate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use sluice_limiter::{
    Cost, Decision, InProcessStore, Limit, ManualClock, Pacing, Quota, ReleaseOutcome, Reservation,
    Store, Timestamp,
};

use crate::support::{T0, key, redis_cases, runtime, window};

#[derive(Clone, Debug)]
enum Op {
    Acquire { tokens: u64, max_wait_ms: u64 },
    Advance { us: u64 },
    Reconcile { which: usize, tokens: u64 },
    Record { tokens: u64 },
    Release { which: usize },
}

// `Release`: the client of a granted reservation goes away before its slot.

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..=120, prop_oneof![Just(0u64), 0u64..3000]).prop_map(|(tokens, max_wait_ms)| Op::Acquire { tokens, max_wait_ms }),
        3 => (0u64..400_000).prop_map(|us| Op::Advance { us }),
        1 => (any::<usize>(), 0u64..=150).prop_map(|(which, tokens)| Op::Reconcile { which, tokens }),
        1 => (1u64..=60).prop_map(|tokens| Op::Record { tokens }),
        2 => any::<usize>().prop_map(|which| Op::Release { which }),
    ]
}

/// (requests per window, tokens per window, window ms, buckets, pacing)
fn setup() -> impl Strategy<Value = (u64, u64, u64, u32, u8)> {
    (
        1u64..=8,
        120u64..=400,
        prop_oneof![Just(500u64), Just(1000), Just(700)],
        1u32..=12,
        0u8..3,
    )
}

fn build(s: (u64, u64, u64, u32, u8)) -> Quota {
    let (requests, tokens, window_ms, buckets, pacing) = s;
    let pacing = match pacing {
        0 => Pacing::Off,
        1 => Pacing::Auto,
        _ => Pacing::Fixed {
            interval: Duration::from_millis(40),
            burst: 2,
        },
    };
    Quota::new(vec![
        Limit::requests(requests, window(window_ms)).unwrap(),
        Limit::tokens(tokens, window(window_ms * 2)).unwrap(),
    ])
    .unwrap()
    .with_buckets(buckets)
    .unwrap()
    .with_pacing(pacing)
    .unwrap()
}

/// The reference model: per limit a map bucket -> amount, no eviction, brute-force sums.
struct Model {
    limits: Vec<(u64, u64, u64, bool)>, // (limit, window us, bucket us, counts requests)
    buckets: Vec<BTreeMap<u64, u64>>,
    tail: u64,
    /// Every slot booked with a request (not a taken hole), in booking order: pacing is
    /// checked against this timeline, not against a theoretical arrival time.
    booked: Vec<u64>,
    /// Pacing interval `T` and burst tolerance `tau` (µs).
    pacing: Option<(u64, u64)>,
    marks: Vec<Option<Vec<u64>>>,
    /// Per granted reservation: released (its client went away).
    released: Vec<bool>,
    /// Released slots still usable: (slot, charge per limit), their charge left in place.
    holes: Vec<(u64, Vec<u64>)>,
    /// Whether the last acquire took a released slot.
    took_hole: bool,
}

/// The most released slots an account keeps.
const MAX_HOLES: usize = 64;

#[derive(Debug, PartialEq)]
enum Outcome {
    Granted { wait: u64, remaining: Vec<u64> },
    Refused { retry: u64, remaining: Vec<u64> },
}

impl Model {
    fn new(q: &Quota) -> Self {
        let limits: Vec<_> = q
            .limits()
            .iter()
            .map(|l| {
                let w = l.window().length().as_micros() as u64;
                (
                    l.amount(),
                    w,
                    (w / u64::from(q.buckets())).max(1),
                    l.unit() == sluice_limiter::Unit::Requests,
                )
            })
            .collect();
        // Pacing from the definitions in the docs of `Pacing`.
        let pacing = match q.pacing() {
            Pacing::Off => None,
            Pacing::Fixed { interval, burst } => {
                let t = interval.as_micros() as u64;
                Some((t, u64::from(burst - 1) * t))
            }
            _ => {
                let t = limits
                    .iter()
                    .filter(|l| l.3 && l.1 <= 60_000_000)
                    .map(|l| l.1 / l.0)
                    .max();
                t.map(|t| {
                    let t = t.max(1);
                    (t, ((1_000_000 / t).max(1) - 1) * t)
                })
            }
        };
        Self {
            buckets: vec![BTreeMap::new(); limits.len()],
            limits,
            tail: 0,
            booked: Vec::new(),
            pacing,
            marks: Vec::new(),
            released: Vec::new(),
            holes: Vec::new(),
            took_hole: false,
        }
    }

    fn kmin(&self, i: usize, t: u64) -> u64 {
        let (_, w, b, _) = self.limits[i];
        t.saturating_sub(w) / b
    }

    fn used(&self, i: usize, t: u64) -> u64 {
        let kmin = self.kmin(i, t);
        self.buckets[i].range(kmin..).map(|(_, a)| a).sum()
    }

    fn charge(&self, i: usize, cost: &Cost) -> u64 {
        if self.limits[i].3 {
            cost.requests
        } else {
            cost.input_tokens + cost.output_tokens
        }
    }

    fn remaining(&self, now: u64) -> Vec<u64> {
        (0..self.limits.len())
            .map(|i| self.limits[i].0.saturating_sub(self.used(i, now)))
            .collect()
    }

    fn acquire(&mut self, cost: &Cost, max_wait: u64, now: u64) -> Outcome {
        let mut slot = now.max(self.tail);
        if let Some((t, tau)) = self.pacing {
            slot = slot.max(self.earliest_paced(t, tau, now));
        }
        let from = slot;
        for i in 0..self.limits.len() {
            let c = self.charge(i, cost);
            let (limit, w, b, _) = self.limits[i];
            // Candidate instants: `from` and every bucket's exit time after it.
            let mut candidates: Vec<u64> = self.buckets[i]
                .keys()
                .map(|k| (k + 1) * b + w)
                .filter(|&e| e > from)
                .collect();
            candidates.push(from);
            candidates.sort_unstable();
            let t = candidates
                .into_iter()
                .find(|&t| self.used(i, t) + c <= limit)
                .expect("fits eventually");
            slot = slot.max(t);
        }
        self.took_hole = false;
        // The earliest released slot, not before now nor after the tail's slot, whose
        // charge covers the cost in every limit.
        self.holes.retain(|h| h.0 >= now);
        let charges: Vec<u64> = (0..self.limits.len())
            .map(|i| self.charge(i, cost))
            .collect();
        let hole = (0..self.holes.len())
            .filter(|&j| {
                let (at, held) = &self.holes[j];
                *at <= slot && held.iter().zip(&charges).all(|(h, c)| h >= c)
            })
            .min_by_key(|&j| self.holes[j].0);
        if let Some(j) = hole {
            slot = self.holes[j].0;
        }
        let wait = slot - now;
        if wait > max_wait {
            return Outcome::Refused {
                retry: wait,
                remaining: self.remaining(now),
            };
        }
        if let Some(j) = hole {
            // Inherits the hole's charge: nothing is added or booked, the tail stays.
            self.holes.remove(j);
            self.took_hole = true;
            return Outcome::Granted {
                wait,
                remaining: self.remaining(now),
            };
        }
        for i in 0..self.limits.len() {
            let c = self.charge(i, cost);
            if c > 0 {
                *self.buckets[i].entry(slot / self.limits[i].2).or_default() += c;
            }
        }
        self.tail = self.tail.max(slot);
        self.booked.push(slot);
        Outcome::Granted {
            wait,
            remaining: self.remaining(now),
        }
    }

    /// The earliest slot pacing allows, from its definition over the timeline of booked
    /// slots rather than from a running state (so that a slip in `window.rs`'s GCRA
    /// bookkeeping is not copied here):
    /// - a rate of one request per `T` with a burst tolerance `tau`: the new request and
    ///   the `n` booked since (and including) any booked slot `s` span at least
    ///   `n × T − tau`, i.e. no `n + 1` requests closer together than `n` intervals minus
    ///   the tolerance;
    /// - the tolerance serves only an arrival with nobody queued ahead: while a slot is
    ///   booked after `now`, the new one is at least `T` after the latest.
    fn earliest_paced(&self, t: u64, tau: u64, now: u64) -> u64 {
        let n = self.booked.len() as u64;
        let by_rate = self
            .booked
            .iter()
            .enumerate()
            .map(|(i, &s)| (s + (n - i as u64) * t).saturating_sub(tau))
            .max()
            .unwrap_or(0);
        let queued = match self.booked.iter().max() {
            Some(&latest) if latest > now => latest + t,
            _ => 0,
        };
        by_rate.max(queued)
    }

    fn add(&mut self, i: usize, k: u64, delta: i128) {
        let e = self.buckets[i].entry(k).or_default();
        *e = (i128::from(*e) + delta).max(0) as u64;
    }

    fn reconcile(&mut self, which: usize, slot: u64, estimate: &Cost, actual: &Cost, now: u64) {
        if self.released[which] {
            return;
        }
        let before: Vec<u64> = match &self.marks[which] {
            Some(m) => m.clone(),
            None => (0..self.limits.len())
                .map(|i| self.charge(i, estimate))
                .collect(),
        };
        for (i, &was) in before.iter().enumerate() {
            let delta = i128::from(self.charge(i, actual)) - i128::from(was);
            let k = slot / self.limits[i].2;
            if delta != 0 && k >= self.kmin(i, now) {
                self.add(i, k, delta);
            } else if delta > 0 {
                self.add(i, now / self.limits[i].2, delta);
            }
        }
        self.marks[which] = Some(
            (0..self.limits.len())
                .map(|i| self.charge(i, actual))
                .collect(),
        );
    }

    fn release(&mut self, which: usize, slot: u64, estimate: &Cost, now: u64) -> ReleaseOutcome {
        if self.released[which] || self.marks[which].is_some() {
            return ReleaseOutcome::AlreadySettled;
        }
        self.released[which] = true;
        if slot <= now || slot > self.tail {
            return ReleaseOutcome::Passed;
        }
        self.holes.retain(|h| h.0 >= now);
        if self.holes.len() >= MAX_HOLES {
            let earliest = (0..self.holes.len())
                .min_by_key(|&j| self.holes[j].0)
                .unwrap();
            self.holes.remove(earliest);
        }
        let charges = (0..self.limits.len())
            .map(|i| self.charge(i, estimate))
            .collect();
        self.holes.push((slot, charges));
        ReleaseOutcome::Reusable
    }

    fn record(&mut self, cost: &Cost, now: u64) {
        for i in 0..self.limits.len() {
            let c = self.charge(i, cost);
            if c > 0 {
                self.add(i, now / self.limits[i].2, i128::from(c));
            }
        }
    }
}

async fn check<S: Store>(
    store: &S,
    clock: &ManualClock,
    q: &Quota,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let mut model = Model::new(q);
    let mut granted: Vec<Reservation> = Vec::new();
    let k = [key("a")];
    for (step, op) in ops.iter().enumerate() {
        use sluice_limiter::Clock;
        let now = clock.now().as_micros();
        match op {
            Op::Acquire {
                tokens,
                max_wait_ms,
            } => {
                let cost = Cost::request(*tokens, 0);
                let max_wait = *max_wait_ms * 1000;
                let used_before = model_used(&model, q, now);
                let expected = model.acquire(&cost, max_wait, now);
                if model.took_hole {
                    // Invariant: taking a released slot never adds to any window.
                    prop_assert_eq!(model_used(&model, q, now), used_before);
                }
                let got = match store
                    .acquire(&k, q, cost, Duration::from_micros(max_wait))
                    .await
                    .unwrap()
                {
                    Decision::Granted(r) => {
                        let out = Outcome::Granted {
                            wait: r.wait.as_micros() as u64,
                            remaining: r.remaining.iter().map(|x| x.remaining).collect(),
                        };
                        granted.push(r);
                        model.marks.push(None);
                        model.released.push(false);
                        out
                    }
                    Decision::Refused(r) => Outcome::Refused {
                        retry: r.retry_after.unwrap().as_micros() as u64,
                        remaining: r.remaining.iter().map(|x| x.remaining).collect(),
                    },
                };
                prop_assert_eq!(got, expected, "step {} {:?}", step, op);
            }
            Op::Advance { us } => clock.advance(Duration::from_micros(*us)),
            Op::Reconcile { which, tokens } => {
                if !granted.is_empty() {
                    let i = which % granted.len();
                    let actual = Cost::request(*tokens, 0);
                    store.reconcile(q, &granted[i], actual).await.unwrap();
                    model.reconcile(
                        i,
                        granted[i].slot.as_micros(),
                        &granted[i].cost,
                        &actual,
                        now,
                    );
                }
            }
            Op::Release { which } => {
                if !granted.is_empty() {
                    let i = which % granted.len();
                    let got = store.release(q, &granted[i]).await.unwrap();
                    let expected =
                        model.release(i, granted[i].slot.as_micros(), &granted[i].cost, now);
                    prop_assert_eq!(got, expected, "step {} {:?}", step, op);
                }
            }
            Op::Record { tokens } => {
                store
                    .record_usage(
                        &k[0],
                        q,
                        Cost {
                            requests: 0,
                            input_tokens: *tokens,
                            output_tokens: 0,
                            spend: 0,
                        },
                    )
                    .await
                    .unwrap();
                model.record(
                    &Cost {
                        requests: 0,
                        input_tokens: *tokens,
                        output_tokens: 0,
                        spend: 0,
                    },
                    now,
                );
            }
        }
        let used: Vec<u64> = store
            .status(&k[0], q)
            .await
            .unwrap()
            .limits
            .iter()
            .map(|l| l.used)
            .collect();
        let expected: Vec<u64> = (0..q.limits().len())
            .map(|i| model.used(i, clock.now().as_micros()))
            .collect();
        prop_assert_eq!(used, expected, "usage after step {} {:?}", step, op);
    }
    Ok(())
}

/// What the model's windows hold at `now`, per limit.
fn model_used(model: &Model, q: &Quota, now: u64) -> Vec<u64> {
    (0..q.limits().len()).map(|i| model.used(i, now)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn in_process_store_matches_the_reference_model(s in setup(), ops in prop::collection::vec(op(), 1..60)) {
        let q = build(s);
        let clock = ManualClock::new(Timestamp::from_micros(T0));
        let store = InProcessStore::with_clock(Arc::new(clock.clone()));
        runtime().block_on(check(&store, &clock, &q, &ops))?;
    }
}

/// The same on Redis (`support::redis_cases`: one server, a key prefix per case).
#[test]
fn redis_store_matches_the_reference_model() {
    redis_cases(
        "prop",
        64,
        (setup(), prop::collection::vec(op(), 1..60)),
        |(s, ops), rt, store, clock| rt.block_on(check(store, clock, &build(s), &ops)),
    );
}

//! The figures of one mode: goodput against the quota, upstream 429s, client failures,
//! latency and queue-wait percentiles, tenant fairness.
//!
//! Definitions (also printed in the report):
//! - **capacity**: what the limits allow over the measurement window `D` at their
//!   long-run rate, `min over limits of amount / window × D`, for requests and tokens.
//! - **goodput**: successes whose answer the provider started within `[0, D)` (answer end
//!   minus the provider's service time), as a share of capacity; for requests and for
//!   tokens. The quota share is the larger of the two (the binding limit).
//! - **client failure**: a request that did not succeed within its deadline (gave up on a
//!   429, timed out, or another error). Under over-subscription some failures are
//!   unavoidable: at least demand − capacity.
//! - **queue wait**: end-to-end latency minus the provider's service time (exactly known:
//!   the simulator's configured latency): time spent in a local limiter, in backoff
//!   between retries, or in Sluice's queue.
//! - **fairness**: each service's successes against its max-min fair share of the
//!   capacity (water-filling over demands, by weight); Jain's index over those ratios
//!   (1 = every service got the same fraction of its fair share) and the worst ratio.

use std::time::Duration;

use serde::Serialize;

use crate::client::Outcome;
use crate::fleet::Arrival;
use crate::runner::ModeRun;
use crate::scenario::Scenario;

/// Percentiles, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
}

/// One service's figures.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceFigures {
    /// Name.
    pub name: String,
    /// Requests sent.
    pub demand: u64,
    /// Successes.
    pub ok: u64,
    /// Max-min fair share of the capacity, in requests.
    pub fair_share: f64,
}

/// Every figure of one mode.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The mode.
    pub mode: String,
    /// Requests sent.
    pub offered: u64,
    /// Successes within the deadline.
    pub ok: u64,
    /// Successes whose answer started within the measurement window.
    pub ok_in_window: u64,
    /// Goodput, requests: `ok_in_window` / request capacity.
    pub goodput_requests: f64,
    /// Goodput, tokens.
    pub goodput_tokens: f64,
    /// The larger of the two: the share of the quota turned into successful work.
    pub quota_share: f64,
    /// Refusals the provider gave (the referee's count).
    pub upstream_429s: u64,
    /// Requests the provider admitted (the referee's count).
    pub upstream_accepted: u64,
    /// Client failures.
    pub failed: u64,
    /// … of which gave up on a 429.
    pub failed_rate_limited: u64,
    /// … of which ran out of time.
    pub failed_deadline: u64,
    /// … of which other errors.
    pub failed_error: u64,
    /// End-to-end latency of successes.
    pub latency_ms: Percentiles,
    /// Queue wait of successes.
    pub queue_wait_ms: Percentiles,
    /// Jain's index over each service's successes ÷ fair share.
    pub fairness_jain: f64,
    /// The lowest successes ÷ fair share of any service.
    pub fairness_worst: f64,
    /// Highest usage of each limit's trailing window (the referee's peaks).
    pub peaks: Vec<u64>,
    /// Per service.
    pub services: Vec<ServiceFigures>,
    /// Seconds from the first arrival to the end of the last request.
    pub wall_secs: f64,
}

/// `q`-quantile of sorted `v` (nearest rank), in ms.
fn quantile(v: &[Duration], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1000.0
}

fn percentiles(mut v: Vec<Duration>) -> Percentiles {
    v.sort();
    Percentiles {
        p50: quantile(&v, 0.50),
        p99: quantile(&v, 0.99),
        p999: quantile(&v, 0.999),
    }
}

/// Max-min fair allocation of `capacity` over `demands` with `weights` (water-filling).
pub fn max_min_shares(capacity: f64, demands: &[f64], weights: &[f64]) -> Vec<f64> {
    let mut alloc = vec![0.0; demands.len()];
    let mut open: Vec<usize> = (0..demands.len()).filter(|&i| demands[i] > 0.0).collect();
    let mut left = capacity;
    while !open.is_empty() && left > 1e-9 {
        let wsum: f64 = open.iter().map(|&i| weights[i]).sum();
        let unit = left / wsum;
        let (sated, rest): (Vec<usize>, Vec<usize>) = open
            .iter()
            .partition(|&&i| demands[i] - alloc[i] <= unit * weights[i]);
        if sated.is_empty() {
            for &i in &rest {
                alloc[i] += unit * weights[i];
            }
            break;
        }
        for &i in &sated {
            left -= demands[i] - alloc[i];
            alloc[i] = demands[i];
        }
        open = rest;
    }
    alloc
}

/// Jain's fairness index of `x` (1 = all equal).
pub fn jain(x: &[f64]) -> f64 {
    let s: f64 = x.iter().sum();
    let s2: f64 = x.iter().map(|v| v * v).sum();
    if s2 == 0.0 {
        return 1.0;
    }
    s * s / (x.len() as f64 * s2)
}

/// Computes the figures of `run`.
pub fn summarize(scenario: &Scenario, schedule: &[Arrival], run: &ModeRun) -> Summary {
    let d = scenario.duration();
    let (cap_req, cap_tok) = scenario.provider.capacity_per_sec();
    let cap_req = cap_req * d.as_secs_f64();
    let cap_tok = cap_tok * d.as_secs_f64();
    let mut s = Summary {
        mode: run.mode.as_str().to_owned(),
        offered: run.records.len() as u64,
        ok: 0,
        ok_in_window: 0,
        goodput_requests: 0.0,
        goodput_tokens: 0.0,
        quota_share: 0.0,
        upstream_429s: 0,
        upstream_accepted: 0,
        failed: 0,
        failed_rate_limited: 0,
        failed_deadline: 0,
        failed_error: 0,
        latency_ms: Percentiles::default(),
        queue_wait_ms: Percentiles::default(),
        fairness_jain: 1.0,
        fairness_worst: 1.0,
        peaks: Vec::new(),
        services: Vec::new(),
        wall_secs: run.wall_secs,
    };
    let mut tokens_in_window = 0u64;
    let mut lat = Vec::new();
    let mut wait = Vec::new();
    let mut ok_by_service = vec![0u64; scenario.services.len()];
    for r in &run.records {
        match r.outcome {
            Outcome::Ok => {
                s.ok += 1;
                ok_by_service[r.service] += 1;
                let service = scenario.provider.service_time(r.output_tokens);
                let e2e = r.done.saturating_sub(r.at);
                lat.push(e2e);
                wait.push(e2e.saturating_sub(service));
                if r.done.saturating_sub(service) < d {
                    s.ok_in_window += 1;
                    tokens_in_window += r.tokens;
                }
            }
            Outcome::RateLimited => s.failed_rate_limited += 1,
            Outcome::Deadline => s.failed_deadline += 1,
            Outcome::Error => s.failed_error += 1,
        }
    }
    s.failed = s.failed_rate_limited + s.failed_deadline + s.failed_error;
    s.goodput_requests = s.ok_in_window as f64 / cap_req;
    s.goodput_tokens = tokens_in_window as f64 / cap_tok;
    s.quota_share = s.goodput_requests.max(s.goodput_tokens);
    s.latency_ms = percentiles(lat);
    s.queue_wait_ms = percentiles(wait);
    if let Some(last) = run.ticks.last() {
        s.upstream_429s = last.refused;
        s.upstream_accepted = last.accepted;
        s.peaks = last.peaks.clone();
    }
    // Fairness over the whole run: demand in requests, capacity over the span in which
    // requests could be served (at most the requests actually served, so that a mode
    // that wastes quota is not also called unfair for it).
    let demands: Vec<f64> = (0..scenario.services.len())
        .map(|i| schedule.iter().filter(|a| a.service == i).count() as f64)
        .collect();
    let weights: Vec<f64> = scenario
        .services
        .iter()
        .map(|x| f64::from(x.weight))
        .collect();
    let shares = max_min_shares(s.ok as f64, &demands, &weights);
    let ratios: Vec<f64> = shares
        .iter()
        .zip(&ok_by_service)
        .map(|(&f, &ok)| if f > 0.0 { ok as f64 / f } else { 1.0 })
        .collect();
    s.fairness_jain = jain(&ratios);
    s.fairness_worst = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    s.services = scenario
        .services
        .iter()
        .enumerate()
        .map(|(i, x)| ServiceFigures {
            name: x.name.clone(),
            demand: demands[i] as u64,
            ok: ok_by_service[i],
            fair_share: shares[i],
        })
        .collect();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn water_filling_satisfies_small_demands_first() {
        let a = max_min_shares(100.0, &[10.0, 50.0, 80.0], &[1.0, 1.0, 1.0]);
        assert!((a[0] - 10.0).abs() < 1e-9);
        assert!((a[1] - 45.0).abs() < 1e-9);
        assert!((a[2] - 45.0).abs() < 1e-9);
        let w = max_min_shares(90.0, &[100.0, 100.0], &[2.0, 1.0]);
        assert!((w[0] - 60.0).abs() < 1e-9 && (w[1] - 30.0).abs() < 1e-9);
        let under = max_min_shares(1000.0, &[10.0, 20.0], &[1.0, 1.0]);
        assert_eq!(under, vec![10.0, 20.0]);
    }

    #[test]
    fn jain_is_one_when_equal_and_one_over_n_when_one_takes_all() {
        assert!((jain(&[0.5, 0.5, 0.5]) - 1.0).abs() < 1e-12);
        assert!((jain(&[1.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        let p = percentiles(v);
        assert_eq!((p.p50, p.p99, p.p999), (500.0, 990.0, 999.0));
    }
}

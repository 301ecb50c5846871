//! The fleet: every request the services × replicas will send, drawn in advance from the
//! scenario's seed, so each mode replays exactly the same traffic (open loop: an arrival
//! never waits for an earlier answer).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::scenario::{Arrivals, Range, Scenario};

/// One request of the fleet.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Arrival {
    /// When it is sent, from the start of the run.
    pub at: Duration,
    /// Index of its service in the scenario.
    pub service: usize,
    /// Index of its replica in the whole fleet (0 … total replicas − 1).
    pub replica: usize,
    /// Prompt tokens, as the simulator counts them.
    pub prompt_tokens: u64,
    /// `max_tokens` (the simulator answers exactly that many).
    pub output_tokens: u64,
    /// Time allowed from `at` to the end of the answer.
    pub deadline: Duration,
}

/// Draws the whole schedule, sorted by time.
pub fn schedule(scenario: &Scenario) -> Vec<Arrival> {
    let mut rng = StdRng::seed_from_u64(scenario.seed);
    let end = scenario.duration_secs;
    let mut out = Vec::new();
    let mut replica = 0usize;
    for (si, s) in scenario.services.iter().enumerate() {
        let per_replica = s.rate / f64::from(s.replicas);
        for _ in 0..s.replicas {
            let (on, off) = match s.arrivals {
                Arrivals::Poisson => (end, 0.0),
                Arrivals::Bursty { on_secs, off_secs } => (on_secs, off_secs),
            };
            let period = on + off;
            let rate_on = per_replica * period / on;
            // Each replica starts at its own phase of the cycle.
            let phase = if off > 0.0 {
                rng.random::<f64>() * period
            } else {
                0.0
            };
            let mut t = 0.0;
            loop {
                t += -(1.0 - rng.random::<f64>()).ln() / rate_on;
                // Map "time spent on" to wall time: skip the off parts of the cycle.
                let cycles = (t / on).floor();
                // The replica's cycle started `phase` before the run did.
                let wall = cycles * period + (t - cycles * on) - phase;
                if t > end * period / on + period {
                    break;
                }
                if (0.0..end).contains(&wall) {
                    out.push(Arrival {
                        at: Duration::from_secs_f64(wall),
                        service: si,
                        replica,
                        prompt_tokens: draw(&mut rng, s.prompt_tokens),
                        output_tokens: draw(&mut rng, s.output_tokens),
                        deadline: Duration::from_secs_f64(s.deadline_secs),
                    });
                }
            }
            replica += 1;
        }
    }
    out.sort_by_key(|a| (a.at, a.replica));
    out
}

fn draw(rng: &mut StdRng, r: Range) -> u64 {
    rng.random_range(r.min..=r.max)
}

/// A chat request body whose prompt the simulator counts as exactly `prompt_tokens`:
/// 3 (priming) + 3 (message) + ⌈chars / 4⌉.
pub fn chat_body(model: &str, prompt_tokens: u64, max_tokens: u64) -> String {
    let text_tokens = prompt_tokens.saturating_sub(6).max(1);
    let content = "abc ".repeat(text_tokens as usize);
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": content.trim_end()}],
        "max_tokens": max_tokens,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_deterministic_and_near_the_mean_rate() {
        let s = Scenario::demo();
        let a = schedule(&s);
        assert_eq!(a, schedule(&s));
        let want: f64 = s.services.iter().map(|s| s.rate).sum::<f64>() * s.duration_secs;
        let got = a.len() as f64;
        assert!(
            (got - want).abs() < want * 0.15,
            "{got} arrivals, expected about {want}"
        );
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        assert!(a.iter().all(|x| x.at < s.duration()));
        let replicas = s.replicas() as usize;
        assert!(a.iter().all(|x| x.replica < replicas));
    }

    #[test]
    fn each_service_gets_its_mean_rate_bursty_or_not() {
        let mut s = Scenario::demo();
        s.duration_secs = 400.0;
        let a = schedule(&s);
        for (i, svc) in s.services.iter().enumerate() {
            let n = a.iter().filter(|x| x.service == i).count() as f64;
            let want = svc.rate * s.duration_secs;
            assert!(
                (n - want).abs() < want * 0.06,
                "{}: {n} vs {want}",
                svc.name
            );
        }
    }

    #[test]
    fn bursty_services_are_silent_off_cycle() {
        let mut s = Scenario::demo();
        s.services.retain(|x| x.name == "batch");
        s.services[0].replicas = 1;
        s.duration_secs = 60.0;
        let a = schedule(&s);
        // 3 s on, 3 s off: in any 6 s cycle there is a gap of nearly 3 s.
        let gaps = a
            .windows(2)
            .filter(|w| (w[1].at - w[0].at) > Duration::from_millis(2500))
            .count();
        assert!(gaps >= 8, "{gaps} off periods");
    }

    #[test]
    fn prompts_count_exactly_as_the_simulator_counts() {
        let body = chat_body("m", 100, 5);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let content = v["messages"][0]["content"].as_str().unwrap();
        assert_eq!(3 + 3 + content.chars().count().div_ceil(4) as u64, 100);
    }
}

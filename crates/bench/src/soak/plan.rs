//! The soak's plan: its traffic and provider ([`scenario`]), the simulator's fault
//! rates ([`SIM_FAULTS`]) and the seeded schedule of process faults ([`plan_faults`]).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::MODEL;
use crate::scenario::{Arrivals, Provider, Range, Scenario, Service};

/// The soak's traffic and provider: one OpenAI-dialect account allowing 150 requests and
/// 80,000 tokens per minute, played 10× faster (6 s windows: 25 requests/s, about
/// 13,333 tokens/s), shared by two services of three replicas: `plain` (70% of the
/// requests) and `stream` (30%, streamed). Poisson arrivals at `load` × 25 requests/s,
/// prompts 200–600 tokens, answers 20–100, deadline 8 s (tokens about 1.08× over at
/// `load` 1.25).
pub fn scenario(duration_secs: f64, seed: u64, load: f64) -> Scenario {
    let provider = Provider {
        model: MODEL.to_owned(),
        dialect: "openai".to_owned(),
        rpm: 150,
        tpm: 80_000,
        rps: 0,
        window_scale: 0.1,
        first_token_ms: 30,
        per_token_ms: 1,
    };
    let rate = provider.capacity_per_sec().0 * load;
    let service = |name: &str, share: f64| Service {
        name: name.to_owned(),
        replicas: 3,
        rate: rate * share,
        arrivals: Arrivals::Poisson,
        prompt_tokens: Range { min: 200, max: 600 },
        output_tokens: Range { min: 20, max: 100 },
        deadline_secs: 8.0,
        weight: 1,
    };
    Scenario {
        duration_secs,
        seed,
        provider,
        services: vec![service("plain", 0.7), service("stream", 0.3)],
    }
}

/// The simulator's fault rates during a soak (per request, seeded dice).
pub const SIM_FAULTS: &str = "[[faults]]\nserver_error = 0.01\ncapacity = 0.005\n\
     stream_cut = 0.03\nstream_error = 0.01\nslow = 0.005\nslow_ms = 1000\n";

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// `redis-server` SIGKILLed, restarted empty on the same port after `hold`.
    RedisKill,
    /// `CLIENT PAUSE hold ALL`.
    RedisPause,
    /// A gateway SIGKILLed, restarted after `hold` (on a new port).
    GatewayKill,
    /// The sidecar SIGKILLed, restarted after `hold` (same consumer name).
    SidecarKill,
}

impl FaultKind {
    /// Whether it disturbs the shared limiter state (its influence on the simulator's
    /// refusals is reported apart).
    pub fn touches_redis(self) -> bool {
        matches!(self, FaultKind::RedisKill | FaultKind::RedisPause)
    }
}

/// One fault of the schedule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlannedFault {
    /// When it starts, from the start of the traffic.
    pub at: Duration,
    /// What.
    pub kind: FaultKind,
    /// Which gateway (for [`FaultKind::GatewayKill`]).
    pub target: usize,
    /// How long the process stays down, or Redis paused.
    pub hold: Duration,
}

/// The fault schedule: after a warm-up, rounds that each hold every kind once in a
/// seeded order, 2–7 s apart, until a quiet tail; one fault at a time. Holds: Redis
/// killed 1–4 s, paused 0.5–3 s, a gateway down 0.3–2 s, the sidecar down 1–5 s. The
/// gateway killed is any but `gateway-0` (when there are others), which lives through
/// the whole run: the memory check's witness of one long-lived process.
pub fn plan_faults(
    seed: u64,
    duration: Duration,
    gateways: usize,
    sidecar: bool,
) -> Vec<PlannedFault> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x50a4_f417);
    let edge = (duration / 8).min(Duration::from_secs(10));
    let end = duration.saturating_sub(edge);
    let mut t = edge;
    let mut out = Vec::new();
    let mut kinds = vec![
        FaultKind::RedisKill,
        FaultKind::RedisPause,
        FaultKind::GatewayKill,
    ];
    if sidecar {
        kinds.push(FaultKind::SidecarKill);
    }
    let ms = |rng: &mut StdRng, lo: u64, hi: u64| Duration::from_millis(rng.random_range(lo..=hi));
    'rounds: loop {
        kinds.shuffle(&mut rng);
        for &kind in &kinds {
            let hold = match kind {
                FaultKind::RedisKill => ms(&mut rng, 1000, 4000),
                FaultKind::RedisPause => ms(&mut rng, 500, 3000),
                FaultKind::GatewayKill => ms(&mut rng, 300, 2000),
                FaultKind::SidecarKill => ms(&mut rng, 1000, 5000),
            };
            if t + hold > end || gateways == 0 {
                break 'rounds;
            }
            // gateway-0 is never killed when there are others: one process that lives
            // through the whole run, for the memory check.
            let target = if gateways > 1 {
                rng.random_range(1..gateways)
            } else {
                0
            };
            out.push(PlannedFault {
                at: t,
                kind,
                target,
                hold,
            });
            t += hold + ms(&mut rng, 2000, 7000);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procs;

    #[test]
    fn the_fault_plan_is_seeded_and_holds_every_kind() {
        let d = Duration::from_secs(75);
        let a = plan_faults(7, d, 3, true);
        assert_eq!(a, plan_faults(7, d, 3, true));
        assert_ne!(a, plan_faults(8, d, 3, true));
        for k in [
            FaultKind::RedisKill,
            FaultKind::RedisPause,
            FaultKind::GatewayKill,
            FaultKind::SidecarKill,
        ] {
            assert!(a.iter().any(|f| f.kind == k), "{k:?} missing in {a:?}");
        }
        // One at a time, inside the run, clear of both edges.
        for w in a.windows(2) {
            assert!(w[0].at + w[0].hold < w[1].at);
        }
        assert!(
            a.iter()
                .all(|f| f.at >= d / 8 && f.at + f.hold <= d - d / 8)
        );
        assert!(a.iter().all(|f| (1..3).contains(&f.target)));
        assert!(plan_faults(7, d, 1, true).iter().all(|f| f.target == 0));
        assert!(
            plan_faults(7, d, 3, false)
                .iter()
                .all(|f| f.kind != FaultKind::SidecarKill)
        );
        // Ten minutes: dozens.
        assert!(plan_faults(1, Duration::from_secs(600), 3, true).len() >= 40);
    }

    #[test]
    fn the_soak_scenario_is_over_the_request_limit() {
        let s = scenario(60.0, 1, 1.25);
        let (req, tok) = s.provider.capacity_per_sec();
        assert!((req - 25.0).abs() < 1e-9);
        let rate: f64 = s.services.iter().map(|x| x.rate).sum();
        assert!((rate / req - 1.25).abs() < 1e-9);
        // Mean tokens per request (400 + 60) × rate: above the token limit too.
        assert!(rate * 460.0 > tok);
        assert!(procs::sim_config(&s).contains("window_scale = 0.1"));
    }
}

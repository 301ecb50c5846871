//! The faults as they happen: each [`PlannedFault`] applied to the fleet (a process
//! killed and restarted after its hold, Redis paused), one at a time, and recorded as a
//! [`FaultEvent`].

use std::sync::atomic::Ordering;

use serde::Serialize;
use tokio::time::Instant;

use super::fleet::{Fleet, Live};
use super::plan::{FaultKind, PlannedFault};

/// A fault as it happened.
#[derive(Clone, Debug, Serialize)]
pub struct FaultEvent {
    /// What.
    pub kind: FaultKind,
    /// `redis`, `gateway-<i>` or `sidecar`.
    pub target: String,
    /// Seconds from the start of the traffic when it began.
    pub start_s: f64,
    /// … and when the process was back (or the pause over).
    pub end_s: f64,
    /// Whether it came back.
    pub recovered: bool,
    /// What went wrong coming back, if anything.
    pub error: Option<String>,
}

/// Applies every fault of `plan` at its time from `start`; what happened, in order.
pub(super) async fn run_schedule(
    plan: &[PlannedFault],
    fleet: &mut Fleet,
    live: &Live,
    start: Instant,
) -> Vec<FaultEvent> {
    let mut events = Vec::new();
    for f in plan {
        tokio::time::sleep_until(start + f.at).await;
        events.push(run_fault(f, fleet, live, start).await);
    }
    events
}

/// Applies one fault and waits until what it took down is back.
async fn run_fault(f: &PlannedFault, fleet: &mut Fleet, live: &Live, start: Instant) -> FaultEvent {
    let secs = |i: Instant| i.saturating_duration_since(start).as_secs_f64();
    let began = Instant::now();
    let mut error = None;
    let target = match f.kind {
        FaultKind::RedisKill => {
            fleet.redis.kill().await;
            tokio::time::sleep(f.hold).await;
            if let Err(e) = fleet.redis.start().await {
                error = Some(e.to_string());
            }
            "redis".to_owned()
        }
        FaultKind::RedisPause => {
            match fleet.redis.pause(f.hold).await {
                Ok(()) => tokio::time::sleep(f.hold).await,
                Err(e) => error = Some(e),
            }
            "redis".to_owned()
        }
        FaultKind::GatewayKill => {
            let i = f.target % fleet.gateways.len().max(1);
            let name = format!("gateway-{i}");
            live.gens[i].fetch_add(1, Ordering::SeqCst);
            live.urls.lock().expect("not poisoned")[i] = None;
            live.forget(&name);
            if let Some(mut p) = fleet.gateways[i].take() {
                let _ = p.child.start_kill();
                let _ = p.child.wait().await;
            }
            tokio::time::sleep(f.hold).await;
            match fleet.spawn_gateway(i).await {
                Ok(p) => {
                    live.track(&name, p.child.id(), fleet.instance(&name));
                    live.urls.lock().expect("not poisoned")[i] =
                        Some(format!("http://{}", p.addr.clone().unwrap_or_default()));
                    fleet.gateways[i] = Some(p);
                }
                Err(e) => error = Some(e.to_string()),
            }
            name
        }
        FaultKind::SidecarKill => {
            live.forget("sidecar");
            if let Some(mut p) = fleet.sidecar.take() {
                let _ = p.child.start_kill();
                let _ = p.child.wait().await;
            }
            tokio::time::sleep(f.hold).await;
            match fleet.spawn_sidecar().await {
                Ok(Some(p)) => {
                    live.track("sidecar", p.child.id(), fleet.instance("sidecar"));
                    fleet.sidecar = Some(p);
                }
                Ok(None) => {}
                Err(e) => error = Some(e.to_string()),
            }
            "sidecar".to_owned()
        }
    };
    let ev = FaultEvent {
        kind: f.kind,
        target,
        start_s: secs(began),
        end_s: secs(Instant::now()),
        recovered: error.is_none(),
        error,
    };
    eprintln!(
        "  [{:>6.1}s] {:?} {} held {:.1}s{}",
        ev.start_s,
        ev.kind,
        ev.target,
        ev.end_s - ev.start_s,
        ev.error
            .as_deref()
            .map(|e| format!(" — NOT RECOVERED: {e}"))
            .unwrap_or_default()
    );
    ev
}

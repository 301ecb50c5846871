//! The soak: a long run at about the quota with faults injected on a seeded random
//! schedule, then assertions on what must not drift.
//!
//! It starts its own `redis-server` (so it can kill and restart it on the same port), the
//! simulator with fault rates (500s, 503s, stream cuts, slow answers), N gateways sharing
//! Redis with `on_error = "local"`, and the sidecar. A seeded open-loop fleet sends
//! plain and streamed chat requests at `load` × the request limit through the gateways
//! (round robin over the live ones). Meanwhile, in rounds that each contain every kind
//! once in a seeded order, one fault at a time: Redis SIGKILLed and restarted empty,
//! Redis paused (`CLIENT PAUSE … ALL`), a gateway (any but `gateway-0`, kept as one
//! long-lived process) SIGKILLed and restarted, the sidecar SIGKILLed and restarted.
//! Every gateway's and the sidecar's RSS is sampled every 2 s (`/proc/<pid>/status`
//! `VmRSS`), every Redis key's TTL every 5 s, the simulator's report every second.
//!
//! The checks (each printed with its figures; any failure fails the soak):
//! 1. **memory flat**: per process slot (a restarted gateway keeps its slot), after a
//!    warm-up of a tenth of the run (at most 10 s), the highest RSS of the last third is
//!    at most `max(1.25 × B, B + 16 MiB)`, B the highest RSS of the first third.
//! 2. **no Redis key outlives its window**: every key but the observation stream has a
//!    TTL; windows keys (`:w:`) at most longest window + longest queue wait + 4 s (the
//!    windows TTL's 1 s, acquire's 2 s of PEXPIRE hysteresis, 1 s of margin),
//!    reconcile marks (`:r:`) at most the reconcile window (two longest windows + 1 s,
//!    clamped to 20 min – 1 h: `Quota::reconcile_window`) + longest queue wait + 2 s,
//!    state hashes (`:s:`) at most 24 h + 60 s (documented: cooldowns and learned
//!    limits); the stream has no TTL by design and is capped (`MAXLEN ~ 100000`). After
//!    the traffic, every `:w:` key is gone within two longest windows + the
//!    longest queue wait + 6 s.
//! 3. **no limit exceeded**: for every limit of the simulator's exact report,
//!    `peak ≤ limit`; and no rate-limit refusal (requests, tokens, burst, too large) by
//!    the simulator outside the influence of a Redis fault (from its start to one
//!    longest window + 2 s after it ended). Refusals inside are reported, not failed.
//! 4. **every request answered**: no request without an answer within its deadline +
//!    20 s (a hang), no connection error except on a gateway killed while the request
//!    was in flight, every gateway 429 with `Retry-After`.
//! 5. **faults recovered**: every killed process came back.
//!
//! The code: [`plan`] (the traffic, the simulator's fault rates, the fault schedule),
//! `fleet` (the owned Redis, the processes, the traffic), `faults` (the schedule
//! applied), `checks` (samplers and verdicts), [`report`] (JSON and table); [`soak`]
//! runs them in order.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use crate::BenchError;
use crate::procs;

mod checks;
mod faults;
mod fleet;
pub mod plan;
pub mod report;

pub use checks::{
    Check, KeyFindings, LimitPeak, MemoryVerdict, RssSample, SimView, memory_verdicts,
};
pub use faults::FaultEvent;
pub use plan::{FaultKind, PlannedFault, SIM_FAULTS, plan_faults, scenario};
pub use report::SoakReport;

/// The observation stream (see `sluice-observe`): no TTL, capped by `XADD MAXLEN ~`.
const STREAM_KEY: &str = "sluice:{obs}:stream";
/// The stream's documented cap.
const STREAM_CAP: u64 = 100_000;
/// Time allowed beyond a request's deadline before it counts as a hang.
const HANG_GRACE: Duration = Duration::from_secs(20);
/// State hashes live 24 h past their last change (`sluice-limiter`, `STATE_TTL`).
const STATE_TTL: Duration = Duration::from_secs(24 * 3600);
/// The model the soak plays.
const MODEL: &str = "soak-m";

/// Everything [`soak`] needs.
#[derive(Clone, Debug)]
pub struct SoakOptions {
    /// How long the traffic lasts.
    pub duration: Duration,
    /// Seed of the traffic, the fault schedule and the simulator's dice.
    pub seed: u64,
    /// Offered requests ÷ what the request limit allows (1.25: 25% over).
    pub load: f64,
    /// Gateways sharing Redis.
    pub gateways: u32,
    /// `sluice-sim`.
    pub sim_bin: PathBuf,
    /// `sluice-gateway`.
    pub gateway_bin: PathBuf,
    /// `sluice-sidecar`, or none.
    pub sidecar_bin: Option<PathBuf>,
    /// `redis-server` (a name on `PATH` or a path).
    pub redis_server: PathBuf,
    /// Inject faults (off: the same traffic on a quiet system, a baseline).
    pub faults: bool,
    /// Where configurations, logs and `soak.json` go.
    pub out_dir: PathBuf,
}

/// Runs the soak and writes `soak.json` into `out_dir`.
pub async fn soak(opts: &SoakOptions) -> Result<SoakReport, BenchError> {
    let out = &opts.out_dir;
    std::fs::create_dir_all(out).map_err(|e| BenchError::Io(out.clone(), e))?;
    let write = |name: &str, text: &str| -> Result<(), BenchError> {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|e| BenchError::Io(p.clone(), e))
    };
    let s = scenario(opts.duration.as_secs_f64(), opts.seed, opts.load);
    let longest = s
        .provider
        .limits()
        .iter()
        .map(|l| l.2)
        .max()
        .unwrap_or_default();
    let max_wait = s.max_deadline();

    // Redis (owned), the simulator with its fault rates, the gateways and the sidecar.
    let mut sim_cfg = procs::sim_config(&s);
    if opts.faults {
        sim_cfg += "\n";
        sim_cfg += SIM_FAULTS;
    }
    let count = opts.gateways.max(1);
    let prefix = format!("soak{}", opts.seed);
    let fleet::Started {
        mut fleet,
        live,
        sim,
        sim_root,
        setup,
    } = fleet::start(opts, &s, &sim_cfg, &prefix, count).await?;
    eprintln!("sluice-bench soak: {setup}");

    // Idle connections are dropped well before the gateway closes them (it does after
    // `server.header_timeout`, 10 s): with the same 10 s on both sides, a request sent on
    // a connection the gateway was closing at that instant ended as a connection error.
    let http = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| BenchError::Http(e.to_string()))?;
    http.post(format!("{sim_root}/admin/reset"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| BenchError::Http(format!("POST /admin/reset: {e}")))?;

    let schedule = crate::fleet::schedule(&s);
    let plan = if opts.faults {
        plan_faults(
            opts.seed,
            opts.duration,
            count as usize,
            fleet.sidecar.is_some(),
        )
    } else {
        Vec::new()
    };
    eprintln!(
        "  {} requests over {:.0} s ({:.1}/s, {:.2}× the request limit), {} faults planned",
        schedule.len(),
        opts.duration.as_secs_f64(),
        schedule.len() as f64 / opts.duration.as_secs_f64(),
        opts.load,
        plan.len()
    );
    let start = Instant::now() + Duration::from_millis(300);

    // Samplers, the traffic and the faults, side by side.
    let progress = std::sync::Arc::new(fleet::Progress::default());
    let samplers = checks::Samplers::spawn(
        checks::Targets {
            live: live.clone(),
            redis: fleet.redis.addr(),
            prefix: prefix.clone(),
            sim_root: sim_root.clone(),
            progress: progress.clone(),
            total: schedule.len(),
        },
        checks::key_bounds(longest, max_wait),
        &http,
        start,
        opts.duration,
    );
    let traffic = fleet::play(
        schedule,
        &s,
        http.clone(),
        live.clone(),
        progress.clone(),
        start,
    );
    let faults = faults::run_schedule(&plan, &mut fleet, &live, start);
    let (endings, events) = tokio::join!(traffic, faults);
    let last_answer = Instant::now();
    eprintln!(
        "  traffic over after {:.1} s; waiting for the windows keys to expire",
        last_answer.saturating_duration_since(start).as_secs_f64()
    );
    let checks::Samples {
        rss,
        mut findings,
        ticks,
    } = samplers.stop();

    // The simulator's final report; its refusals attributed to the Redis faults.
    let simulator = checks::sim_view(&http, &sim_root).await?;
    let refusals =
        checks::attribute_refusals(&ticks, simulator.rate_limit_refusals(), &events, longest);

    // Keys: wait for the windows keys to expire.
    let keys_deadline = longest * 2 + max_wait + Duration::from_secs(6);
    checks::wait_for_windows_keys(
        &fleet.redis.addr(),
        &prefix,
        &mut findings,
        last_answer,
        keys_deadline,
    )
    .await?;

    let memory = memory_verdicts(&rss, opts.duration);
    write(
        "rss.csv",
        &std::iter::once("t,process,instance,kib".to_owned())
            .chain(
                rss.iter()
                    .map(|r| format!("{:.1},{},{},{}", r.t, r.process, r.instance, r.kib)),
            )
            .collect::<Vec<_>>()
            .join("\n"),
    )?;
    let tally = checks::Endings::tally(&endings);
    let sent = progress.sent.load(std::sync::atomic::Ordering::Relaxed) as u64;
    let checks = checks::verdicts(&checks::Evidence {
        memory: &memory,
        findings: &findings,
        keys_deadline,
        simulator: &simulator,
        refusals: &refusals,
        endings: &tally,
        sent,
        events: &events,
    });
    drop(fleet);
    drop(sim);
    let report = SoakReport {
        passed: checks.iter().all(|c| c.passed),
        checks,
        seed: opts.seed,
        duration_s: opts.duration.as_secs_f64(),
        load: opts.load,
        setup,
        sent,
        endings: tally.by_ending,
        refusals_without_retry_after: tally.no_retry_after,
        simulator,
        upstream_429s_in_redis_faults: refusals.in_faults,
        upstream_429s_by_fault: refusals.by_kind,
        upstream_429s_elsewhere: refusals.elsewhere,
        memory,
        keys: findings,
        faults: events,
    };
    write("soak.json", &report.json())?;
    Ok(report)
}

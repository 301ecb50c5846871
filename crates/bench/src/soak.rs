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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::BenchError;
use crate::fleet::{Arrival, chat_body};
use crate::procs::{self, Proc};
use crate::resp::{Conn, Reply};
use crate::scenario::{Arrivals, Provider, Range, Scenario, Service};

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

/// One RSS reading.
#[derive(Clone, Debug, Serialize)]
pub struct RssSample {
    /// Seconds from the start of the traffic.
    pub t: f64,
    /// `gateway-<i>` or `sidecar`.
    pub process: String,
    /// Which start of that slot (0 = the first process).
    pub instance: u64,
    /// `VmRSS`, KiB.
    pub kib: u64,
}

/// The memory rule's verdict for one process slot.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryVerdict {
    /// `gateway-<i>` or `sidecar`.
    pub process: String,
    /// Processes that held the slot.
    pub instances: u64,
    /// Samples taken.
    pub samples: usize,
    /// Highest RSS in the first third after warm-up, KiB.
    pub first_third_max_kib: u64,
    /// Highest RSS in the last third, KiB.
    pub last_third_max_kib: u64,
    /// `max(1.25 × first, first + 16 MiB)`, KiB.
    pub bound_kib: u64,
    /// `last ≤ bound` (true when a third has no sample, with a note).
    pub passed: bool,
    /// Why a verdict could not be made, if so.
    pub note: Option<String>,
}

/// Applies the memory rule (see the module docs) to the samples of a run of `duration`.
pub fn memory_verdicts(samples: &[RssSample], duration: Duration) -> Vec<MemoryVerdict> {
    let d = duration.as_secs_f64();
    let warm = (d / 10.0).min(10.0);
    let third = (d - warm) / 3.0;
    let mut slots: BTreeMap<&str, Vec<&RssSample>> = BTreeMap::new();
    for s in samples {
        slots.entry(s.process.as_str()).or_default().push(s);
    }
    slots
        .into_iter()
        .map(|(process, ss)| {
            let max_in = |lo: f64, hi: f64| {
                ss.iter()
                    .filter(|s| s.t >= lo && s.t < hi)
                    .map(|s| s.kib)
                    .max()
            };
            let first = max_in(warm, warm + third);
            let last = max_in(d - third, f64::INFINITY);
            let instances = ss.iter().map(|s| s.instance).max().unwrap_or(0) + 1;
            let (first_kib, last_kib) = (first.unwrap_or(0), last.unwrap_or(0));
            let bound = (first_kib * 5 / 4).max(first_kib + 16 * 1024);
            let note = (first.is_none() || last.is_none())
                .then(|| "no sample in the first or the last third".to_owned());
            MemoryVerdict {
                process: process.to_owned(),
                instances,
                samples: ss.len(),
                first_third_max_kib: first_kib,
                last_third_max_kib: last_kib,
                bound_kib: bound,
                passed: note.is_some() || last_kib <= bound,
                note,
            }
        })
        .collect()
}

/// The simulator's report of the soak's model (one account).
#[derive(Clone, Debug, Default, Serialize)]
pub struct SimView {
    /// Requests admitted.
    pub accepted: u64,
    /// Refusals by reason (`requests`, `tokens`, `too_large`, `burst`, `fault`, …).
    pub refused: BTreeMap<String, u64>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Every limit with its peak.
    pub limits: Vec<LimitPeak>,
}

/// One limit of the simulator's report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LimitPeak {
    /// `requests` or `tokens`.
    pub unit: String,
    /// The limit.
    pub limit: u64,
    /// Its window as enforced, ms.
    pub window_ms: u64,
    /// The highest usage of any trailing window since the reset.
    pub peak: u64,
}

impl SimView {
    /// Refusals because a limit was full (requests, tokens, burst, too large).
    pub fn rate_limit_refusals(&self) -> u64 {
        ["requests", "tokens", "burst", "too_large"]
            .iter()
            .map(|k| self.refused.get(*k).copied().unwrap_or(0))
            .sum()
    }
}

async fn sim_view(http: &reqwest::Client, root: &str) -> Result<SimView, BenchError> {
    let v: serde_json::Value = http
        .get(format!("{root}/stats"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| BenchError::Http(format!("GET /stats: {e}")))?
        .json()
        .await
        .map_err(|e| BenchError::Http(format!("GET /stats: {e}")))?;
    let m = &v["accounts"]["shared"]["models"][MODEL];
    let n = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
    let map = |x: &serde_json::Value| -> BTreeMap<String, u64> {
        x.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), n(v)))
            .collect()
    };
    Ok(SimView {
        accepted: n(&m["accepted"]),
        refused: map(&m["refused"]),
        faults: map(&m["faults"]),
        limits: m["limits"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| LimitPeak {
                unit: l["unit"].as_str().unwrap_or("").to_owned(),
                limit: n(&l["limit"]),
                window_ms: n(&l["window_ms"]),
                peak: n(&l["peak"]),
            })
            .collect(),
    })
}

/// How a client request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// An HTTP answer, read in full (`retry_after`: the answer had `Retry-After`).
    Status { status: u16, retry_after: bool },
    /// A 200 whose body ended early (a stream cut upstream, relayed).
    Cut,
    /// The connection failed on a gateway killed while the request was in flight.
    LostToKill,
    /// Another connection error.
    ConnError,
    /// No answer within the deadline + [`HANG_GRACE`].
    Hang,
}

impl Ending {
    fn label(self) -> String {
        match self {
            Ending::Status { status, .. } => status.to_string(),
            Ending::Cut => "200, body ended early".into(),
            Ending::LostToKill => "connection lost: gateway killed".into(),
            Ending::ConnError => "connection error".into(),
            Ending::Hang => "no answer (hang)".into(),
        }
    }
}

/// The gateways as the traffic sees them: URL (none while down), and a generation
/// bumped at every kill (a request that fails on a gateway whose generation moved was
/// lost to the kill).
struct Live {
    urls: Mutex<Vec<Option<String>>>,
    gens: Vec<std::sync::atomic::AtomicU64>,
    pids: Mutex<BTreeMap<String, (u32, u64)>>,
}

impl Live {
    fn pick(&self, from: usize) -> Option<(usize, String, u64)> {
        let urls = self.urls.lock().expect("not poisoned");
        let n = urls.len();
        (0..n).find_map(|k| {
            let i = (from + k) % n;
            urls[i]
                .clone()
                .map(|u| (i, u, self.gens[i].load(Ordering::SeqCst)))
        })
    }
}

/// What the soak found.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    /// Every check passed.
    pub passed: bool,
    /// The checks, in order.
    pub checks: Vec<Check>,
    /// Seed.
    pub seed: u64,
    /// Seconds of traffic.
    pub duration_s: f64,
    /// Offered ÷ request limit.
    pub load: f64,
    /// What ran.
    pub setup: String,
    /// Requests sent.
    pub sent: u64,
    /// How they ended (status, or what went wrong).
    pub endings: BTreeMap<String, u64>,
    /// Gateway 429s without `Retry-After`.
    pub refusals_without_retry_after: u64,
    /// The simulator at the end.
    pub simulator: SimView,
    /// Rate-limit refusals by the simulator while a Redis fault (or its aftermath) lasted.
    pub upstream_429s_in_redis_faults: u64,
    /// … by the fault they followed (the latest whose influence overlaps).
    pub upstream_429s_by_fault: BTreeMap<FaultKind, u64>,
    /// … and outside.
    pub upstream_429s_elsewhere: u64,
    /// The memory rule per process slot.
    pub memory: Vec<MemoryVerdict>,
    /// Redis key checks.
    pub keys: KeyFindings,
    /// The faults, as they happened.
    pub faults: Vec<FaultEvent>,
}

/// One check.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Short name.
    pub name: String,
    /// Passed.
    pub passed: bool,
    /// The figures behind it.
    pub detail: String,
}

/// What the Redis scans found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KeyFindings {
    /// Scans made (Redis reachable).
    pub scans: u64,
    /// Scans skipped because Redis was down or paused.
    pub scans_skipped: u64,
    /// Highest PTTL seen per key kind (`w`, `r`, `s`, `stream`, `other`), ms.
    pub max_pttl_ms: BTreeMap<String, i64>,
    /// The bound per kind, ms.
    pub bound_ms: BTreeMap<String, i64>,
    /// Most keys of each kind seen in one scan.
    pub max_keys: BTreeMap<String, u64>,
    /// Keys without a TTL or above their bound (first 20).
    pub violations: Vec<String>,
    /// Violations in all.
    pub violation_count: u64,
    /// Longest observation stream seen.
    pub stream_max_len: u64,
    /// Whether the stream ever had a TTL (it should not: capped instead).
    pub stream_had_ttl: bool,
    /// Seconds after the last answer until no windows or reconcile key was left (none:
    /// some outlived the deadline).
    pub window_keys_gone_after_s: Option<f64>,
    /// That deadline, s.
    pub window_keys_deadline_s: f64,
}

impl KeyFindings {
    fn violation(&mut self, v: String) {
        self.violation_count += 1;
        if self.violations.len() < 20 {
            self.violations.push(v);
        }
    }
}

/// The kind of a Sluice key under `prefix`: `w`, `r`, `s`, `stream` or `other`.
fn key_kind(key: &str, prefix: &str) -> &'static str {
    if key == STREAM_KEY {
        return "stream";
    }
    let Some(rest) = key.strip_prefix(prefix).and_then(|r| r.strip_prefix(":{")) else {
        return "other";
    };
    let Some((_, after)) = rest.split_once("}:") else {
        return "other";
    };
    match after.split(':').next() {
        Some("w") => "w",
        Some("r") => "r",
        Some("s") => "s",
        _ => "other",
    }
}

/// One pass over every key: kind, PTTL, and the stream's length.
struct Scan {
    keys: Vec<(String, &'static str, i64)>,
    stream_len: u64,
}

fn scan_keys(port: u16, prefix: &str) -> std::io::Result<Scan> {
    let mut c = Conn::connect(port, Duration::from_secs(1))?;
    let mut cursor = "0".to_owned();
    let mut names = Vec::new();
    loop {
        let r = c.cmd(&["SCAN", &cursor, "COUNT", "1000"])?;
        let Reply::Array(Some(parts)) = r else {
            return Err(std::io::Error::other(format!("SCAN: {r:?}")));
        };
        cursor = parts.first().and_then(Reply::text).unwrap_or_default();
        if let Some(Reply::Array(Some(ks))) = parts.get(1) {
            names.extend(ks.iter().filter_map(Reply::text));
        }
        if cursor == "0" || cursor.is_empty() {
            break;
        }
    }
    let mut keys = Vec::with_capacity(names.len());
    let mut stream_len = 0;
    for k in names {
        let pttl = c.cmd(&["PTTL", &k])?.int().unwrap_or(-2);
        if pttl == -2 {
            continue; // expired between SCAN and PTTL
        }
        let kind = key_kind(&k, prefix);
        if kind == "stream" {
            stream_len = c.cmd(&["XLEN", &k])?.int().unwrap_or(0).max(0) as u64;
        }
        keys.push((k, kind, pttl));
    }
    Ok(Scan { keys, stream_len })
}

fn record_scan(f: &mut KeyFindings, scan: &Scan) {
    f.scans += 1;
    f.stream_max_len = f.stream_max_len.max(scan.stream_len);
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for (key, kind, pttl) in &scan.keys {
        *counts.entry(kind).or_insert(0) += 1;
        let m = f.max_pttl_ms.entry((*kind).to_owned()).or_insert(-1);
        *m = (*m).max(*pttl);
        if *kind == "stream" {
            f.stream_had_ttl |= *pttl >= 0;
            continue;
        }
        if *pttl < 0 {
            f.violation(format!("{key}: no TTL"));
        } else if let Some(b) = f.bound_ms.get(*kind)
            && pttl > b
        {
            f.violation(format!("{key}: TTL {pttl} ms > {b} ms"));
        }
    }
    if scan.stream_len > STREAM_CAP + STREAM_CAP / 10 {
        f.violation(format!(
            "{STREAM_KEY}: {} entries > cap {STREAM_CAP} (+10% for MAXLEN ~)",
            scan.stream_len
        ));
    }
    for (k, n) in counts {
        let m = f.max_keys.entry(k.to_owned()).or_insert(0);
        *m = (*m).max(n);
    }
}

/// The `redis-server` the soak owns.
struct Redis {
    bin: PathBuf,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    async fn start(&mut self) -> Result<(), BenchError> {
        let log = self.dir.join("redis.log");
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Spawn(format!("{}: {e}", self.bin.display())))?;
        self.child = Some(child);
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pong = tokio::task::spawn_blocking(move || {
                Conn::connect(port, Duration::from_millis(500))
                    .and_then(|mut c| c.cmd(&["PING"]))
                    .ok()
            })
            .await
            .ok()
            .flatten();
            if pong == Some(Reply::Simple("PONG".into())) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::Spawn(format!(
                    "redis-server on port {port} did not answer PING (see {})",
                    log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
}

async fn redis_cmd(port: u16, args: Vec<String>) -> std::io::Result<Reply> {
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Conn::connect(port, Duration::from_secs(1))?.cmd(&refs)
    })
    .await
    .map_err(std::io::Error::other)?
}

fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::Spawn(format!("no free port: {e}")))
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The processes the fault loop kills and restarts.
struct Fleet {
    redis: Redis,
    gateways: Vec<Option<Proc>>,
    gateway_bin: PathBuf,
    sidecar: Option<Proc>,
    sidecar_bin: Option<PathBuf>,
    config: PathBuf,
    out: PathBuf,
    starts: BTreeMap<String, u64>,
}

impl Fleet {
    async fn spawn_gateway(&mut self, i: usize) -> Result<Proc, BenchError> {
        let name = format!("gateway-{i}");
        let n = self.starts.entry(name.clone()).or_insert(0);
        let log = self.out.join(format!("{name}.{n}.log"));
        *n += 1;
        procs::spawn(
            "sluice-gateway",
            &self.gateway_bin,
            &["--config", &self.config.to_string_lossy()],
            &log,
            true,
        )
        .await
    }

    async fn spawn_sidecar(&mut self) -> Result<Option<Proc>, BenchError> {
        let Some(bin) = self.sidecar_bin.clone() else {
            return Ok(None);
        };
        let n = self.starts.entry("sidecar".into()).or_insert(0);
        let log = self.out.join(format!("sidecar.{n}.log"));
        *n += 1;
        procs::spawn(
            "sluice-sidecar",
            &bin,
            &[
                "--config",
                &self.config.to_string_lossy(),
                "--listen",
                "127.0.0.1:0",
                "--name",
                "soak-sidecar",
            ],
            &log,
            true,
        )
        .await
        .map(Some)
    }

    fn instance(&self, name: &str) -> u64 {
        self.starts
            .get(name)
            .copied()
            .unwrap_or(1)
            .saturating_sub(1)
    }
}

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
            let ms = f.hold.as_millis().to_string();
            let args = vec!["CLIENT".into(), "PAUSE".into(), ms, "ALL".into()];
            match redis_cmd(fleet.redis.port, args).await {
                Ok(Reply::Simple(_)) => tokio::time::sleep(f.hold).await,
                other => error = Some(format!("CLIENT PAUSE: {other:?}")),
            }
            "redis".to_owned()
        }
        FaultKind::GatewayKill => {
            let i = f.target % fleet.gateways.len().max(1);
            let name = format!("gateway-{i}");
            live.gens[i].fetch_add(1, Ordering::SeqCst);
            live.urls.lock().expect("not poisoned")[i] = None;
            live.pids.lock().expect("not poisoned").remove(&name);
            if let Some(mut p) = fleet.gateways[i].take() {
                let _ = p.child.start_kill();
                let _ = p.child.wait().await;
            }
            tokio::time::sleep(f.hold).await;
            match fleet.spawn_gateway(i).await {
                Ok(p) => {
                    let inst = fleet.instance(&name);
                    if let Some(pid) = p.child.id() {
                        live.pids
                            .lock()
                            .expect("not poisoned")
                            .insert(name.clone(), (pid, inst));
                    }
                    live.urls.lock().expect("not poisoned")[i] =
                        Some(format!("http://{}", p.addr.clone().unwrap_or_default()));
                    fleet.gateways[i] = Some(p);
                }
                Err(e) => error = Some(e.to_string()),
            }
            name
        }
        FaultKind::SidecarKill => {
            live.pids.lock().expect("not poisoned").remove("sidecar");
            if let Some(mut p) = fleet.sidecar.take() {
                let _ = p.child.start_kill();
                let _ = p.child.wait().await;
            }
            tokio::time::sleep(f.hold).await;
            match fleet.spawn_sidecar().await {
                Ok(Some(p)) => {
                    let inst = fleet.instance("sidecar");
                    if let Some(pid) = p.child.id() {
                        live.pids
                            .lock()
                            .expect("not poisoned")
                            .insert("sidecar".into(), (pid, inst));
                    }
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

/// One request of the fleet through the live gateways.
async fn send(
    http: reqwest::Client,
    live: Arc<Live>,
    a: Arrival,
    stream: bool,
    from: usize,
    service_time: Duration,
) -> Ending {
    let Some((gw, url, generation)) = live.pick(from) else {
        // Every gateway is down: only when the one gateway was killed.
        return Ending::LostToKill;
    };
    let mut body: serde_json::Value =
        serde_json::from_str(&chat_body(MODEL, a.prompt_tokens, a.output_tokens))
            .expect("valid JSON");
    if stream {
        body["stream"] = true.into();
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    let wait = a
        .deadline
        .saturating_sub(service_time * 2 + Duration::from_millis(20));
    let lost = |live: &Live| {
        if live.gens[gw].load(Ordering::SeqCst) != generation {
            Ending::LostToKill
        } else {
            Ending::ConnError
        }
    };
    let req = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(procs::tenant_key(a.service))
        .header("content-type", "application/json")
        .header("x-sluice-max-wait", format!("{}ms", wait.as_millis()))
        .timeout(a.deadline + HANG_GRACE)
        .body(body.to_string());
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Ending::Hang,
        Err(_) => return lost(&live),
    };
    let status = resp.status().as_u16();
    let retry_after = resp.headers().contains_key("retry-after");
    match resp.bytes().await {
        Ok(b) => {
            let complete = if status != 200 {
                true
            } else if stream {
                b.windows(12).any(|w| w == b"data: [DONE]")
            } else {
                serde_json::from_slice::<serde_json::Value>(&b)
                    .map(|v| v["usage"]["total_tokens"].is_u64())
                    .unwrap_or(false)
            };
            if complete {
                Ending::Status {
                    status,
                    retry_after,
                }
            } else {
                Ending::Cut
            }
        }
        Err(e) if e.is_timeout() => Ending::Hang,
        Err(_) if status == 200 && live.gens[gw].load(Ordering::SeqCst) == generation => {
            Ending::Cut
        }
        Err(_) => lost(&live),
    }
}

/// Runs the soak and writes `soak.json` into `out_dir`.
pub async fn soak(opts: &SoakOptions) -> Result<SoakReport, BenchError> {
    let out = &opts.out_dir;
    std::fs::create_dir_all(out).map_err(|e| BenchError::Io(out.clone(), e))?;
    let write = |name: &str, text: &str| -> Result<PathBuf, BenchError> {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|e| BenchError::Io(p.clone(), e))?;
        Ok(p)
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

    // Redis, owned.
    let redis_dir = out.join("redis");
    std::fs::create_dir_all(&redis_dir).map_err(|e| BenchError::Io(redis_dir.clone(), e))?;
    // Absolute: redis-server changes into `--dir` before it opens `--logfile`.
    let redis_dir =
        std::path::absolute(&redis_dir).map_err(|e| BenchError::Io(redis_dir.clone(), e))?;
    let mut redis = Redis {
        bin: opts.redis_server.clone(),
        port: free_port()?,
        dir: redis_dir,
        child: None,
    };
    redis.start().await?;
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);

    // The simulator, with its fault rates.
    let mut sim_cfg = procs::sim_config(&s);
    if opts.faults {
        sim_cfg += "\n";
        sim_cfg += SIM_FAULTS;
    }
    let sim_cfg = write("sim.toml", &sim_cfg)?;
    let sim = procs::spawn(
        "sluice-sim",
        &opts.sim_bin,
        &["--config", &sim_cfg.to_string_lossy()],
        &out.join("sim.log"),
        true,
    )
    .await?;
    let sim_root = format!("http://{}", sim.addr.clone().unwrap_or_default());

    // The gateways and the sidecar, on one configuration.
    let count = opts.gateways.max(1);
    let prefix = format!("soak{}", opts.seed);
    let cfg = procs::gateway_config(
        &s,
        &format!("{sim_root}/v1"),
        Some(&redis_url),
        &prefix,
        count,
    );
    let cfg = write("gateway.toml", &cfg)?;
    let mut fleet = Fleet {
        redis,
        gateways: Vec::new(),
        gateway_bin: opts.gateway_bin.clone(),
        sidecar: None,
        sidecar_bin: opts.sidecar_bin.clone(),
        config: cfg,
        out: out.clone(),
        starts: BTreeMap::new(),
    };
    let live = Arc::new(Live {
        urls: Mutex::new(Vec::new()),
        gens: (0..count)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect(),
        pids: Mutex::new(BTreeMap::new()),
    });
    for i in 0..count as usize {
        let p = fleet.spawn_gateway(i).await?;
        live.urls.lock().expect("not poisoned").push(Some(format!(
            "http://{}",
            p.addr.clone().unwrap_or_default()
        )));
        if let Some(pid) = p.child.id() {
            live.pids
                .lock()
                .expect("not poisoned")
                .insert(format!("gateway-{i}"), (pid, 0));
        }
        fleet.gateways.push(Some(p));
    }
    fleet.sidecar = fleet.spawn_sidecar().await?;
    if let Some(pid) = fleet.sidecar.as_ref().and_then(|p| p.child.id()) {
        live.pids
            .lock()
            .expect("not poisoned")
            .insert("sidecar".into(), (pid, 0));
    }
    let setup = format!(
        "redis-server on port {} (owned), simulator at {sim_root}{}, {count} gateways (on_error = local), {}",
        fleet.redis.port,
        if opts.faults { " with fault rates" } else { "" },
        if fleet.sidecar.is_some() {
            "sidecar"
        } else {
            "no sidecar"
        }
    );
    eprintln!("sluice-bench soak: {setup}");

    let http = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(10))
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
    let stop = Arc::new(AtomicBool::new(false));

    // Samplers: RSS every 2 s, keys every 5 s, the simulator every second.
    let rss = Arc::new(Mutex::new(Vec::<RssSample>::new()));
    let rss_task = {
        let (rss, live, stop) = (rss.clone(), live.clone(), stop.clone());
        let end = start + opts.duration;
        tokio::spawn(async move {
            let mut next = start;
            while !stop.load(Ordering::Relaxed) && next <= end {
                tokio::time::sleep_until(next).await;
                let t = next.saturating_duration_since(start).as_secs_f64();
                let pids = live.pids.lock().expect("not poisoned").clone();
                let mut got = Vec::new();
                for (name, (pid, instance)) in pids {
                    if let Some(kib) = rss_kib(pid) {
                        got.push(RssSample {
                            t,
                            process: name,
                            instance,
                            kib,
                        });
                    }
                }
                rss.lock().expect("not poisoned").extend(got);
                next += Duration::from_secs(2);
            }
        })
    };
    let mut findings = KeyFindings::default();
    // Windows: the windows TTL (longest + 1 s) past the latest slot (at most the
    // longest queue wait ahead), set 2 s further than needed (acquire's PEXPIRE
    // hysteresis), plus 1 s of margin.
    let w_bound = longest + Duration::from_secs(4) + max_wait;
    // Reconcile marks: the reconcile window (`Quota::reconcile_window`: two longest
    // windows + 1 s, clamped to 20 min – 1 h) past the slot, plus 2 s.
    let reconcile_window = (longest * 2 + Duration::from_secs(1)).clamp(
        sluice_limiter::RECONCILE_MIN_WINDOW,
        sluice_limiter::RECONCILE_MAX_WINDOW,
    );
    let r_bound = reconcile_window + max_wait + Duration::from_secs(2);
    for (k, b) in [
        ("w", w_bound),
        ("r", r_bound),
        ("s", STATE_TTL + Duration::from_secs(60)),
    ] {
        findings.bound_ms.insert(k.into(), b.as_millis() as i64);
    }
    let findings = Arc::new(Mutex::new(findings));
    let keys_task = {
        let (findings, stop, prefix) = (findings.clone(), stop.clone(), prefix.clone());
        let port = fleet.redis.port;
        tokio::spawn(async move {
            let mut next = start + Duration::from_secs(5);
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep_until(next).await;
                let p = prefix.clone();
                let scan = tokio::task::spawn_blocking(move || scan_keys(port, &p)).await;
                let mut f = findings.lock().expect("not poisoned");
                match scan {
                    Ok(Ok(scan)) => record_scan(&mut f, &scan),
                    _ => f.scans_skipped += 1,
                }
                next += Duration::from_secs(5);
            }
        })
    };
    let ticks = Arc::new(Mutex::new(Vec::<(f64, u64)>::new()));
    let sim_task = {
        let (ticks, stop, http, root) =
            (ticks.clone(), stop.clone(), http.clone(), sim_root.clone());
        tokio::spawn(async move {
            let mut next = start;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep_until(next).await;
                if let Ok(v) = sim_view(&http, &root).await {
                    let t = Instant::now()
                        .saturating_duration_since(start)
                        .as_secs_f64();
                    ticks
                        .lock()
                        .expect("not poisoned")
                        .push((t, v.rate_limit_refusals()));
                }
                next += Duration::from_secs(1);
            }
        })
    };

    // The traffic and the faults, side by side.
    let sent_count = Arc::new(AtomicUsize::new(0));
    let done_count = Arc::new(AtomicUsize::new(0));
    let progress = {
        let (sent, done, stop) = (sent_count.clone(), done_count.clone(), stop.clone());
        let total = schedule.len();
        tokio::spawn(async move {
            let mut next = start + Duration::from_secs(10);
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep_until(next).await;
                eprintln!(
                    "  [{:>6.1}s] sent {}/{total}, answered {}",
                    next.saturating_duration_since(start).as_secs_f64(),
                    sent.load(Ordering::Relaxed),
                    done.load(Ordering::Relaxed)
                );
                next += Duration::from_secs(10);
            }
        })
    };
    let traffic = {
        let (live, http) = (live.clone(), http.clone());
        let provider = s.provider.clone();
        let stream_service = s.services.iter().position(|x| x.name == "stream");
        let (sent, done) = (sent_count.clone(), done_count.clone());
        async move {
            let mut set = JoinSet::new();
            for (k, a) in schedule.into_iter().enumerate() {
                tokio::time::sleep_until(start + a.at).await;
                sent.fetch_add(1, Ordering::Relaxed);
                let stream = Some(a.service) == stream_service;
                let st = provider.service_time(a.output_tokens);
                let (http, live, done) = (http.clone(), live.clone(), done.clone());
                set.spawn(async move {
                    let e = send(http, live, a, stream, k, st).await;
                    done.fetch_add(1, Ordering::Relaxed);
                    e
                });
            }
            let mut endings = Vec::new();
            while let Some(r) = set.join_next().await {
                endings.push(r.unwrap_or(Ending::ConnError));
            }
            endings
        }
    };
    let faults = async {
        let mut events = Vec::new();
        for f in &plan {
            tokio::time::sleep_until(start + f.at).await;
            events.push(run_fault(f, &mut fleet, &live, start).await);
        }
        events
    };
    let (endings, events) = tokio::join!(traffic, faults);
    let last_answer = Instant::now();
    eprintln!(
        "  traffic over after {:.1} s; waiting for the windows keys to expire",
        last_answer.saturating_duration_since(start).as_secs_f64()
    );
    stop.store(true, Ordering::Relaxed);
    progress.abort();
    rss_task.abort();
    keys_task.abort();
    sim_task.abort();

    // The simulator's final report.
    let simulator = sim_view(&http, &sim_root).await?;
    let ticks = std::mem::take(&mut *ticks.lock().expect("not poisoned"));
    let influence: Vec<(f64, f64, FaultKind)> = events
        .iter()
        .filter(|e| e.kind.touches_redis())
        .map(|e| (e.start_s, e.end_s + longest.as_secs_f64() + 2.0, e.kind))
        .collect();
    let (mut in_faults, mut elsewhere) = (0, 0);
    let mut by_kind: BTreeMap<FaultKind, u64> = BTreeMap::new();
    let mut prev = (0.0, 0);
    for &(t, n) in ticks.iter().chain(std::iter::once(&(
        f64::INFINITY,
        simulator.rate_limit_refusals(),
    ))) {
        let d = n.saturating_sub(prev.1);
        if d > 0 {
            // The latest Redis fault whose influence overlaps the interval gets it.
            match influence
                .iter()
                .rev()
                .find(|(a, b, _)| *a < t && prev.0 < *b)
            {
                Some((_, _, kind)) => {
                    in_faults += d;
                    *by_kind.entry(*kind).or_insert(0) += d;
                }
                None => elsewhere += d,
            }
        }
        prev = (t, n);
    }

    // Keys: one last scan, then wait for the windows and reconcile keys to expire.
    let mut findings = std::mem::take(&mut *findings.lock().expect("not poisoned"));
    let port = fleet.redis.port;
    let deadline = longest * 2 + max_wait + Duration::from_secs(6);
    findings.window_keys_deadline_s = deadline.as_secs_f64();
    loop {
        let p = prefix.clone();
        let scan = tokio::task::spawn_blocking(move || scan_keys(port, &p))
            .await
            .map_err(|e| BenchError::Http(e.to_string()))?
            .map_err(|e| BenchError::Http(format!("redis scan: {e}")))?;
        record_scan(&mut findings, &scan);
        let left = scan.keys.iter().filter(|(_, k, _)| *k == "w").count();
        let waited = last_answer.elapsed();
        if left == 0 {
            findings.window_keys_gone_after_s = Some(waited.as_secs_f64());
            break;
        }
        if waited > deadline {
            for (key, _, pttl) in scan.keys.iter().filter(|(_, k, _)| *k == "w") {
                findings.violation(format!(
                    "{key}: still there {:.0} s after the traffic (PTTL {pttl} ms)",
                    waited.as_secs_f64()
                ));
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let rss = std::mem::take(&mut *rss.lock().expect("not poisoned"));
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

    let mut by_ending: BTreeMap<String, u64> = BTreeMap::new();
    let mut no_retry_after = 0;
    for e in &endings {
        *by_ending.entry(e.label()).or_insert(0) += 1;
        if let Ending::Status {
            status: 429,
            retry_after: false,
        } = e
        {
            no_retry_after += 1;
        }
    }
    let count_of = |e: Ending| endings.iter().filter(|x| **x == e).count() as u64;
    let hangs = count_of(Ending::Hang);
    let conn_errors = count_of(Ending::ConnError);
    let lost = count_of(Ending::LostToKill);
    let sent = sent_count.load(Ordering::Relaxed) as u64;

    let mut checks = Vec::new();
    let mut check = |name: &str, passed: bool, detail: String| {
        checks.push(Check {
            name: name.to_owned(),
            passed,
            detail,
        })
    };
    check(
        "memory flat",
        !memory.is_empty() && memory.iter().all(|m| m.passed),
        memory
            .iter()
            .map(|m| {
                format!(
                    "{} {:.1}→{:.1} MiB (bound {:.1}, {} start{})",
                    m.process,
                    m.first_third_max_kib as f64 / 1024.0,
                    m.last_third_max_kib as f64 / 1024.0,
                    m.bound_kib as f64 / 1024.0,
                    m.instances,
                    if m.instances == 1 { "" } else { "s" }
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    );
    check(
        "no Redis key outlives its window",
        findings.violation_count == 0 && findings.scans > 1 && !findings.stream_had_ttl,
        format!(
            "{} scans ({} skipped: Redis down or paused); max PTTL {:?} ms vs bounds {:?}; stream ≤ {} entries (cap {STREAM_CAP}); windows keys gone {} after the traffic; {} violations",
            findings.scans,
            findings.scans_skipped,
            findings.max_pttl_ms,
            findings.bound_ms,
            findings.stream_max_len,
            findings
                .window_keys_gone_after_s
                .map(|s| format!("{s:.1} s"))
                .unwrap_or_else(|| format!("NOT within {:.0} s", deadline.as_secs_f64())),
            findings.violation_count
        ),
    );
    let over: Vec<String> = simulator
        .limits
        .iter()
        .filter(|l| l.peak > l.limit)
        .map(|l| format!("{} {}/{} ms peak {}", l.unit, l.limit, l.window_ms, l.peak))
        .collect();
    check(
        "no limit exceeded (peak ≤ limit)",
        over.is_empty() && !simulator.limits.is_empty(),
        simulator
            .limits
            .iter()
            .map(|l| {
                format!(
                    "{} peak {} of {} per {} ms",
                    l.unit, l.peak, l.limit, l.window_ms
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    );
    check(
        "no upstream 429, Redis faults included",
        elsewhere == 0 && in_faults == 0,
        format!(
            "simulator rate-limit refusals: {elsewhere} outside Redis faults, {in_faults} during one or a window after ({by_kind:?})"
        ),
    );
    check(
        "every request answered",
        hangs == 0 && conn_errors == 0 && no_retry_after == 0 && endings.len() as u64 == sent,
        format!(
            "{sent} sent, {} ended; {hangs} hangs, {conn_errors} connection errors, {lost} lost with a killed gateway, {no_retry_after} 429s without Retry-After",
            endings.len()
        ),
    );
    check(
        "faults recovered",
        events.iter().all(|e| e.recovered),
        format!(
            "{} faults: {}",
            events.len(),
            [
                FaultKind::RedisKill,
                FaultKind::RedisPause,
                FaultKind::GatewayKill,
                FaultKind::SidecarKill
            ]
            .iter()
            .map(|k| format!("{k:?} {}", events.iter().filter(|e| e.kind == *k).count()))
            .collect::<Vec<_>>()
            .join(", ")
        ),
    );
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
        endings: by_ending,
        refusals_without_retry_after: no_retry_after,
        simulator,
        upstream_429s_in_redis_faults: in_faults,
        upstream_429s_by_fault: by_kind.clone(),
        upstream_429s_elsewhere: elsewhere,
        memory,
        keys: findings,
        faults: events,
    };
    write("soak.json", &report.json())?;
    Ok(report)
}

impl SoakReport {
    /// The report as pretty JSON.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A human summary: the checks, then the figures.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out += &format!(
            "soak: {:.0} s, seed {}, load {:.2}× the request limit, {} faults\n{}\n\n",
            self.duration_s,
            self.seed,
            self.load,
            self.faults.len(),
            self.setup
        );
        out += "| check | result | figures |\n|---|---|---|\n";
        for c in &self.checks {
            out += &format!(
                "| {} | {} | {} |\n",
                c.name,
                if c.passed { "pass" } else { "**FAIL**" },
                c.detail
            );
        }
        out += "\n| client ending | requests |\n|---|---:|\n";
        for (k, v) in &self.endings {
            out += &format!("| {k} | {v} |\n");
        }
        out += &format!(
            "\nsimulator: accepted {}, refused {:?}, faults {:?}\n",
            self.simulator.accepted, self.simulator.refused, self.simulator.faults
        );
        out += "\n| process | starts | RSS first third | last third | bound |\n|---|---:|---:|---:|---:|\n";
        for m in &self.memory {
            out += &format!(
                "| {} | {} | {:.1} MiB | {:.1} MiB | {:.1} MiB |\n",
                m.process,
                m.instances,
                m.first_third_max_kib as f64 / 1024.0,
                m.last_third_max_kib as f64 / 1024.0,
                m.bound_kib as f64 / 1024.0
            );
        }
        if !self.keys.violations.is_empty() {
            out += "\nkey violations:\n";
            for v in &self.keys.violations {
                out += &format!("  {v}\n");
            }
        }
        out += &format!("\nverdict: {}\n", if self.passed { "PASS" } else { "FAIL" });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_memory_rule_flags_growth_only() {
        let mk = |process: &str, f: &dyn Fn(f64) -> u64| -> Vec<RssSample> {
            (0..50)
                .map(|i| RssSample {
                    t: f64::from(i) * 2.0,
                    process: process.into(),
                    instance: 0,
                    kib: f(f64::from(i) * 2.0),
                })
                .collect()
        };
        let mut s = mk("flat", &|t| if t < 5.0 { 10_000 } else { 40_000 });
        s.extend(mk("leak", &|t| 40_000 + (t * 1000.0) as u64));
        let v = memory_verdicts(&s, Duration::from_secs(100));
        let by: BTreeMap<_, _> = v.iter().map(|m| (m.process.as_str(), m)).collect();
        assert!(by["flat"].passed, "{:?}", by["flat"]);
        assert_eq!(by["flat"].first_third_max_kib, 40_000);
        assert!(!by["leak"].passed, "{:?}", by["leak"]);
    }

    #[test]
    fn keys_are_classified_by_the_schema() {
        let p = "soak1";
        assert_eq!(key_kind("soak1:{sim/m}:w:key-0", p), "w");
        assert_eq!(key_kind("soak1:{sim/m}:s:key-0", p), "s");
        assert_eq!(key_kind("soak1:{sim/m}:r:key-0:abc", p), "r");
        assert_eq!(key_kind(STREAM_KEY, p), "stream");
        assert_eq!(key_kind("other:{x}:w:k", p), "other");
        let mut f = KeyFindings::default();
        f.bound_ms.insert("w".into(), 1000);
        record_scan(
            &mut f,
            &Scan {
                keys: vec![
                    ("soak1:{g}:w:a".into(), "w", 900),
                    ("soak1:{g}:w:b".into(), "w", 1100),
                    ("junk".into(), "other", -1),
                    (STREAM_KEY.into(), "stream", -1),
                ],
                stream_len: 10,
            },
        );
        assert_eq!(f.violation_count, 2, "{:?}", f.violations);
        assert!(!f.stream_had_ttl);
        assert_eq!(f.max_keys["w"], 2);
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

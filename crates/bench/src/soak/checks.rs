//! The soak's checks: what is sampled while it runs (every process's RSS, every Redis
//! key's TTL, the simulator's refusals), what is collected after (the windows keys
//! expiring, the simulator's final report), and the verdicts (see the module docs of
//! [`super`] for the rules).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::faults::FaultEvent;
use super::fleet::{Ending, Live, Progress, RedisAddr, rss_kib};
use super::plan::FaultKind;
use super::{MODEL, STATE_TTL, STREAM_CAP, STREAM_KEY};
use crate::BenchError;

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

pub(super) async fn sim_view(http: &reqwest::Client, root: &str) -> Result<SimView, BenchError> {
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
    /// Highest PTTL seen per key kind (`w`, `r`, `s`, `tails`, `stream`, `other`), ms.
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

/// The kind of a Sluice key under `prefix`: `w`, `r`, `s`, `tails` (a group's tail
/// index), `stream` or `other`.
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
        Some("tails") => "tails",
        _ => "other",
    }
}

/// One pass over every key: kind, PTTL, and the stream's length.
struct Scan {
    keys: Vec<(String, &'static str, i64)>,
    stream_len: u64,
}

/// Scans every key of the owned Redis (each reply bounded by a second: a paused or dead
/// Redis is an error).
async fn scan_keys(redis: &RedisAddr, prefix: &str) -> redis::RedisResult<Scan> {
    let mut c = redis.connect(Duration::from_secs(1)).await?;
    let mut cursor: u64 = 0;
    let mut names: Vec<String> = Vec::new();
    loop {
        let (next, ks): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await?;
        names.extend(ks);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut keys = Vec::with_capacity(names.len());
    let mut stream_len = 0;
    for k in names {
        let pttl: i64 = redis::cmd("PTTL").arg(&k).query_async(&mut c).await?;
        if pttl == -2 {
            continue; // expired between SCAN and PTTL
        }
        let kind = key_kind(&k, prefix);
        if kind == "stream" {
            let len: i64 = redis::cmd("XLEN").arg(&k).query_async(&mut c).await?;
            stream_len = len.max(0) as u64;
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

/// The key bounds (see the module docs of [`super`]), per kind: windows keys, reconcile
/// marks, state hashes.
pub(super) fn key_bounds(longest: Duration, max_wait: Duration) -> KeyFindings {
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
    // The tail index lives the windows TTL past the latest tail written: as a windows key.
    for (k, b) in [
        ("w", w_bound),
        ("tails", w_bound),
        ("r", r_bound),
        ("s", STATE_TTL + Duration::from_secs(60)),
    ] {
        findings.bound_ms.insert(k.into(), b.as_millis() as i64);
    }
    findings
}

/// The background samplers of a run: RSS every 2 s (until the traffic's planned end),
/// the keys every 5 s, the simulator's rate-limit refusals every second, a progress
/// line every 10 s.
pub(super) struct Samplers {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    rss: Arc<Mutex<Vec<RssSample>>>,
    findings: Arc<Mutex<KeyFindings>>,
    ticks: Arc<Mutex<Vec<(f64, u64)>>>,
}

/// What the samplers gathered.
pub(super) struct Samples {
    /// RSS readings.
    pub(super) rss: Vec<RssSample>,
    /// The key scans so far.
    pub(super) findings: KeyFindings,
    /// (seconds from the start, the simulator's rate-limit refusals so far).
    pub(super) ticks: Vec<(f64, u64)>,
}

/// Where the samplers look.
pub(super) struct Targets {
    /// The processes to read RSS of.
    pub(super) live: Arc<Live>,
    /// The owned Redis (its port is stable across restarts).
    pub(super) redis: RedisAddr,
    /// The soak's key prefix.
    pub(super) prefix: String,
    /// The simulator's root URL.
    pub(super) sim_root: String,
    /// Requests sent and answered.
    pub(super) progress: Arc<Progress>,
    /// Requests planned.
    pub(super) total: usize,
}

impl Samplers {
    /// Starts them at `start`; the RSS sampler stops by itself after `duration`.
    pub(super) fn spawn(
        t: Targets,
        findings: KeyFindings,
        http: &reqwest::Client,
        start: Instant,
        duration: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rss = Arc::new(Mutex::new(Vec::<RssSample>::new()));
        let findings = Arc::new(Mutex::new(findings));
        let ticks = Arc::new(Mutex::new(Vec::<(f64, u64)>::new()));
        let mut tasks = Vec::new();
        tasks.push({
            let (rss, live, stop) = (rss.clone(), t.live.clone(), stop.clone());
            let end = start + duration;
            tokio::spawn(async move {
                let mut next = start;
                while !stop.load(Ordering::Relaxed) && next <= end {
                    tokio::time::sleep_until(next).await;
                    let t = next.saturating_duration_since(start).as_secs_f64();
                    let mut got = Vec::new();
                    for (name, (pid, instance)) in live.processes() {
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
        });
        tasks.push({
            let (findings, stop, prefix) = (findings.clone(), stop.clone(), t.prefix.clone());
            let redis = t.redis.clone();
            tokio::spawn(async move {
                let mut next = start + Duration::from_secs(5);
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep_until(next).await;
                    let scan = scan_keys(&redis, &prefix).await;
                    let mut f = findings.lock().expect("not poisoned");
                    match scan {
                        Ok(scan) => record_scan(&mut f, &scan),
                        Err(_) => f.scans_skipped += 1,
                    }
                    next += Duration::from_secs(5);
                }
            })
        });
        tasks.push({
            let (ticks, stop, http, root) = (
                ticks.clone(),
                stop.clone(),
                http.clone(),
                t.sim_root.clone(),
            );
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
        });
        tasks.push({
            let (progress, stop, total) = (t.progress.clone(), stop.clone(), t.total);
            tokio::spawn(async move {
                let mut next = start + Duration::from_secs(10);
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep_until(next).await;
                    eprintln!(
                        "  [{:>6.1}s] sent {}/{total}, answered {}",
                        next.saturating_duration_since(start).as_secs_f64(),
                        progress.sent.load(Ordering::Relaxed),
                        progress.done.load(Ordering::Relaxed)
                    );
                    next += Duration::from_secs(10);
                }
            })
        });
        Self {
            stop,
            tasks,
            rss,
            findings,
            ticks,
        }
    }

    /// Stops them and hands over what they gathered.
    pub(super) fn stop(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
        Samples {
            rss: take(&self.rss),
            findings: take(&self.findings),
            ticks: take(&self.ticks),
        }
    }
}

/// What `m` holds, leaving the default.
fn take<T: Default>(m: &Mutex<T>) -> T {
    std::mem::take(&mut *m.lock().expect("not poisoned"))
}

/// The simulator's rate-limit refusals, attributed: to the latest Redis fault whose
/// influence (its start to one longest window + 2 s after its end) overlaps the
/// sampling interval they appeared in, else elsewhere.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    /// During a Redis fault or its aftermath.
    pub(super) in_faults: u64,
    /// … by the fault they followed.
    pub(super) by_kind: BTreeMap<FaultKind, u64>,
    /// Outside any.
    pub(super) elsewhere: u64,
}

/// Attributes the refusals counted at `ticks` (and `total` at the end).
pub(super) fn attribute_refusals(
    ticks: &[(f64, u64)],
    total: u64,
    events: &[FaultEvent],
    longest: Duration,
) -> Refusals {
    let influence: Vec<(f64, f64, FaultKind)> = events
        .iter()
        .filter(|e| e.kind.touches_redis())
        .map(|e| (e.start_s, e.end_s + longest.as_secs_f64() + 2.0, e.kind))
        .collect();
    let mut out = Refusals::default();
    let mut prev = (0.0, 0);
    for &(t, n) in ticks.iter().chain(std::iter::once(&(f64::INFINITY, total))) {
        let d = n.saturating_sub(prev.1);
        if d > 0 {
            // The latest Redis fault whose influence overlaps the interval gets it.
            match influence
                .iter()
                .rev()
                .find(|(a, b, _)| *a < t && prev.0 < *b)
            {
                Some((_, _, kind)) => {
                    out.in_faults += d;
                    *out.by_kind.entry(*kind).or_insert(0) += d;
                }
                None => out.elsewhere += d,
            }
        }
        prev = (t, n);
    }
    out
}

/// After the traffic: scans until no windows key is left, or `deadline` after
/// `last_answer` has passed (each key left is then a violation).
pub(super) async fn wait_for_windows_keys(
    redis: &RedisAddr,
    prefix: &str,
    findings: &mut KeyFindings,
    last_answer: Instant,
    deadline: Duration,
) -> Result<(), BenchError> {
    findings.window_keys_deadline_s = deadline.as_secs_f64();
    loop {
        let scan = scan_keys(redis, prefix)
            .await
            .map_err(|e| BenchError::Http(format!("redis scan: {e}")))?;
        record_scan(findings, &scan);
        let left = scan.keys.iter().filter(|(_, k, _)| *k == "w").count();
        let waited = last_answer.elapsed();
        if left == 0 {
            findings.window_keys_gone_after_s = Some(waited.as_secs_f64());
            return Ok(());
        }
        if waited > deadline {
            for (key, _, pttl) in scan.keys.iter().filter(|(_, k, _)| *k == "w") {
                findings.violation(format!(
                    "{key}: still there {:.0} s after the traffic (PTTL {pttl} ms)",
                    waited.as_secs_f64()
                ));
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How the client requests ended, counted.
#[derive(Debug, Default)]
pub(super) struct Endings {
    /// By label (status, or what went wrong).
    pub(super) by_ending: BTreeMap<String, u64>,
    /// How many ended.
    pub(super) ended: u64,
    /// Gateway 429s without `Retry-After`.
    pub(super) no_retry_after: u64,
    /// No answer within the deadline + the grace.
    pub(super) hangs: u64,
    /// Connection errors on a gateway that was not killed.
    pub(super) conn_errors: u64,
    /// Connection errors on a gateway killed meanwhile.
    pub(super) lost: u64,
}

impl Endings {
    /// Counts `endings`.
    pub(super) fn tally(endings: &[Ending]) -> Self {
        let mut out = Self {
            ended: endings.len() as u64,
            ..Self::default()
        };
        for e in endings {
            *out.by_ending.entry(e.label()).or_insert(0) += 1;
            match e {
                Ending::Status {
                    status: 429,
                    retry_after: false,
                } => out.no_retry_after += 1,
                Ending::Hang => out.hangs += 1,
                Ending::ConnError => out.conn_errors += 1,
                Ending::LostToKill => out.lost += 1,
                _ => {}
            }
        }
        out
    }
}

/// Everything the verdicts are made of.
pub(super) struct Evidence<'a> {
    /// The memory rule per process slot.
    pub(super) memory: &'a [MemoryVerdict],
    /// The key scans.
    pub(super) findings: &'a KeyFindings,
    /// The windows keys' deadline after the traffic.
    pub(super) keys_deadline: Duration,
    /// The simulator's final report.
    pub(super) simulator: &'a SimView,
    /// Its rate-limit refusals, attributed.
    pub(super) refusals: &'a Refusals,
    /// The client endings.
    pub(super) endings: &'a Endings,
    /// Requests sent.
    pub(super) sent: u64,
    /// The faults as they happened.
    pub(super) events: &'a [FaultEvent],
}

/// The checks, in order (each with its figures).
pub(super) fn verdicts(e: &Evidence<'_>) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut check = |name: &str, passed: bool, detail: String| {
        checks.push(Check {
            name: name.to_owned(),
            passed,
            detail,
        })
    };
    let (memory, findings, simulator) = (e.memory, e.findings, e.simulator);
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
                .unwrap_or_else(|| format!("NOT within {:.0} s", e.keys_deadline.as_secs_f64())),
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
        e.refusals.elsewhere == 0 && e.refusals.in_faults == 0,
        format!(
            "simulator rate-limit refusals: {} outside Redis faults, {} during one or a window after ({:?})",
            e.refusals.elsewhere, e.refusals.in_faults, e.refusals.by_kind
        ),
    );
    let (n, sent) = (e.endings, e.sent);
    check(
        "every request answered",
        n.hangs == 0 && n.conn_errors == 0 && n.no_retry_after == 0 && n.ended == sent,
        format!(
            "{sent} sent, {} ended; {} hangs, {} connection errors, {} lost with a killed gateway, {} 429s without Retry-After",
            n.ended, n.hangs, n.conn_errors, n.lost, n.no_retry_after
        ),
    );
    let events = e.events;
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
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(key_kind("soak1:{sim/m}:tails", p), "tails");
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
}

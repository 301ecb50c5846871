//! Playing the schedule in one mode: every arrival sent at its instant (open loop), the
//! simulator's `/stats` read every second as the referee, live progress on the terminal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::BenchError;
use crate::client::Outcome;
use crate::fleet::Arrival;
use crate::modes::{Mode, Record, Replica, Targets};
use crate::scenario::Scenario;

/// The referee's totals at one instant (summed over accounts of the model).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Tick {
    /// Seconds from the start of the run.
    pub t: f64,
    /// Requests admitted so far.
    pub accepted: u64,
    /// Requests refused so far (every reason).
    pub refused: u64,
    /// Prompt + completion tokens settled so far.
    pub tokens: u64,
    /// `limits[].peak`, in the sim's order.
    pub peaks: Vec<u64>,
}

/// Reads `GET /stats` and sums the model's counters over its accounts.
pub async fn referee(
    http: &reqwest::Client,
    sim_root: &str,
    model: &str,
) -> Result<Tick, BenchError> {
    let v: serde_json::Value = http
        .get(format!("{sim_root}/stats"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| BenchError::Http(format!("GET /stats: {e}")))?
        .json()
        .await
        .map_err(|e| BenchError::Http(format!("GET /stats: {e}")))?;
    let mut t = Tick::default();
    for acct in v["accounts"].as_object().into_iter().flatten() {
        let m = &acct.1["models"][model];
        if m.is_null() {
            continue;
        }
        let n = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
        t.accepted += n(&m["accepted"]);
        t.refused += m["refused"]
            .as_object()
            .map(|r| r.values().map(n).sum::<u64>())
            .unwrap_or(0);
        t.tokens += n(&m["prompt_tokens"]) + n(&m["completion_tokens"]);
        let peaks: Vec<u64> = m["limits"]
            .as_array()
            .map(|ls| ls.iter().map(|l| n(&l["peak"])).collect())
            .unwrap_or_default();
        if t.peaks.len() < peaks.len() {
            t.peaks.resize(peaks.len(), 0);
        }
        for (a, b) in t.peaks.iter_mut().zip(peaks) {
            *a = (*a).max(b);
        }
    }
    Ok(t)
}

/// Everything one mode produced.
#[derive(Clone, Debug, Serialize)]
pub struct ModeRun {
    /// The mode.
    pub mode: Mode,
    /// One record per arrival.
    #[serde(skip)]
    pub records: Vec<Record>,
    /// The referee, about once a second, ending with its final report.
    pub ticks: Vec<Tick>,
    /// Seconds from the first arrival until the last request ended.
    pub wall_secs: f64,
}

/// Plays `schedule` in `mode` against a freshly reset simulator.
pub async fn run_mode(
    mode: Mode,
    scenario: &Scenario,
    schedule: &[Arrival],
    targets: Arc<Targets>,
    sim_root: &str,
    show_progress: bool,
) -> Result<ModeRun, BenchError> {
    let http = reqwest::Client::new();
    http.post(format!("{sim_root}/admin/reset"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| BenchError::Http(format!("POST /admin/reset: {e}")))?;
    let replicas: Vec<Arc<Replica>> = (0..scenario.replicas() as usize)
        .map(|i| Arc::new(Replica::new(mode, i, scenario, targets.clone())))
        .collect();
    let start = Instant::now() + Duration::from_millis(200);

    // The referee, once a second.
    let ticks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let poller = {
        let ticks = ticks.clone();
        let model = scenario.provider.model.clone();
        let root = sim_root.to_owned();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut next = start;
            loop {
                tokio::time::sleep_until(next).await;
                if let Ok(mut t) = referee(&http, &root, &model).await {
                    t.t = next.saturating_duration_since(start).as_secs_f64();
                    ticks.lock().expect("not poisoned").push(t);
                }
                next += Duration::from_secs(1);
            }
        })
    };

    let bar = progress_bar(mode, scenario, show_progress);
    let counters = Arc::new(Counters::default());
    let mut set = JoinSet::new();
    for a in schedule.iter().cloned() {
        let r = replicas[a.replica].clone();
        let c = counters.clone();
        set.spawn(async move {
            tokio::time::sleep_until(start + a.at).await;
            c.sent.fetch_add(1, Ordering::Relaxed);
            let rec = r.run(&a, start).await;
            c.count(&rec);
            rec
        });
    }
    let ticker = {
        let bar = bar.clone();
        let c = counters.clone();
        let total = schedule.len() as u64;
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let now = Instant::now();
                let ok = c.ok.load(Ordering::Relaxed);
                let rate = (ok - last.1) as f64 / (now - last.0).as_secs_f64();
                last = (now, ok);
                bar.set_position(now.saturating_duration_since(start).as_millis() as u64);
                bar.set_message(format!(
                    "{rate:>5.0} ok/s  sent {}/{total}  ok {ok}  failed {}  429s seen {}",
                    c.sent.load(Ordering::Relaxed),
                    c.failed.load(Ordering::Relaxed),
                    c.seen_429.load(Ordering::Relaxed),
                ));
            }
        })
    };
    let mut records = Vec::with_capacity(schedule.len());
    while let Some(r) = set.join_next().await {
        records.push(r.map_err(|e| BenchError::Http(format!("request task: {e}")))?);
    }
    let wall_secs = start.elapsed().as_secs_f64();
    ticker.abort();
    bar.finish_and_clear();
    poller.abort();
    // One last tick after every answer has settled.
    let mut ticks = std::mem::take(&mut *ticks.lock().expect("not poisoned"));
    let mut last = referee(&http, sim_root, &scenario.provider.model).await?;
    last.t = wall_secs;
    ticks.push(last);
    Ok(ModeRun {
        mode,
        records,
        ticks,
        wall_secs,
    })
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    seen_429: AtomicU64,
}

impl Counters {
    fn count(&self, r: &Record) {
        if r.outcome == Outcome::Ok {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.seen_429
            .fetch_add(u64::from(r.provider_429s), Ordering::Relaxed);
    }
}

fn progress_bar(mode: Mode, scenario: &Scenario, show: bool) -> ProgressBar {
    let total = (scenario.duration() + scenario.max_deadline()).as_millis() as u64;
    let bar = ProgressBar::with_draw_target(
        Some(total),
        if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{prefix:>7} [{bar:30}] {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(mode.as_str());
    bar
}

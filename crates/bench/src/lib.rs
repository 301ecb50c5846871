//! A load tool that plays a fleet — M services × R replicas, each an open-loop arrival
//! process with its own rate, burstiness, prompt and output sizes and deadline — against
//! one simulated provider quota, and compares, on the same traffic, the three ways a
//! fleet can call the provider: [`Mode::Direct`] (SDK retries), [`Mode::Split`] (a
//! limiter per replica at limit ÷ replicas) and [`Mode::Sluice`] (through the gateways).
//!
//! The central function is [`run`]: it starts (or reaches) the simulator and the
//! gateways, plays the [`fleet::schedule`] once per mode against a freshly reset
//! simulator whose `/stats` is the referee, and returns a [`report::Report`] (table,
//! JSON, self-contained HTML).
//!
//! [`soak::soak`] is the other use: a long run at about the quota with faults injected
//! on a seeded schedule (Redis killed and paused, gateways and the sidecar killed), then
//! checks that memory stayed flat, no Redis key outlived its window and the simulator
//! saw no limit exceeded.

pub mod client;
pub mod fleet;
pub mod modes;
pub mod procs;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod soak;
pub mod summary;

use std::path::PathBuf;
use std::sync::Arc;

pub use modes::Mode;
pub use report::Report;
pub use scenario::Scenario;

/// What can stop a benchmark.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The scenario file is invalid.
    #[error("scenario: {0}")]
    Scenario(String),
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// A process could not be started.
    #[error("cannot start {0}")]
    Spawn(String),
    /// The simulator or a gateway did not answer as expected.
    #[error("http: {0}")]
    Http(String),
}

/// Where the simulator comes from.
#[derive(Clone, Debug)]
pub enum SimSource {
    /// Start this binary with a configuration generated from the scenario.
    Spawn(PathBuf),
    /// Use a running simulator at this root URL (`http://host:port`); it must already
    /// have the scenario's limits and accept [`procs::PROVIDER_KEY`].
    Url(String),
}

/// Where the gateways come from.
#[derive(Clone, Debug)]
pub enum GatewaySource {
    /// Start `count` processes of this binary, sharing Redis at `redis_url` (the
    /// embedded limiter when `None`: then only one gateway is started, since embedded
    /// limiters cannot share a quota).
    Spawn {
        /// `sluice-gateway`.
        bin: PathBuf,
        /// How many.
        count: u32,
        /// Redis, or none.
        redis_url: Option<String>,
    },
    /// Use running gateways at these root URLs, configured with tenants `sk-tenant-<i>`.
    Urls(Vec<String>),
}

/// Everything [`run`] needs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The traffic and the provider.
    pub scenario: Scenario,
    /// The modes to compare, in order.
    pub modes: Vec<Mode>,
    /// The simulator.
    pub sim: SimSource,
    /// The gateways (needed for [`Mode::Sluice`]).
    pub gateways: Option<GatewaySource>,
    /// `sluice-sidecar`, started with the gateways' configuration when given.
    pub sidecar: Option<PathBuf>,
    /// Where configurations, logs and reports go.
    pub out_dir: PathBuf,
    /// Draw live progress on stderr.
    pub progress: bool,
}

/// Runs every mode and writes `report.json` and `report.html` into `out_dir`.
pub async fn run(opts: &Options) -> Result<Report, BenchError> {
    let out = &opts.out_dir;
    std::fs::create_dir_all(out).map_err(|e| BenchError::Io(out.clone(), e))?;
    let write = |name: &str, text: &str| -> Result<PathBuf, BenchError> {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|e| BenchError::Io(p.clone(), e))?;
        Ok(p)
    };
    let s = &opts.scenario;
    let mut procs = Vec::new();
    let sim_root = match &opts.sim {
        SimSource::Url(u) => u.trim_end_matches('/').to_owned(),
        SimSource::Spawn(bin) => {
            let cfg = write("sim.toml", &procs::sim_config(s))?;
            let p = procs::spawn(
                "sluice-sim",
                bin,
                &["--config", &cfg.to_string_lossy()],
                &out.join("sim.log"),
                true,
            )
            .await?;
            let root = format!("http://{}", p.addr.clone().unwrap_or_default());
            procs.push(p);
            root
        }
    };
    let mut setup = vec![format!("simulator at {sim_root}")];
    let mut gateways_v1 = Vec::new();
    if opts.modes.contains(&Mode::Sluice) {
        match &opts.gateways {
            None => return Err(BenchError::Spawn("the sluice mode needs gateways".into())),
            Some(GatewaySource::Urls(urls)) => {
                gateways_v1 = urls
                    .iter()
                    .map(|u| format!("{}/v1", u.trim_end_matches('/')))
                    .collect();
                setup.push(format!("{} running gateways", urls.len()));
            }
            Some(GatewaySource::Spawn {
                bin,
                count,
                redis_url,
            }) => {
                let count = if redis_url.is_some() {
                    (*count).max(1)
                } else {
                    1
                };
                let prefix = format!("bench{}x{}", std::process::id(), now_millis());
                let cfg = procs::gateway_config(
                    s,
                    &format!("{sim_root}/v1"),
                    redis_url.as_deref(),
                    &prefix,
                    count,
                );
                let cfg = write("gateway.toml", &cfg)?;
                for i in 0..count {
                    let p = procs::spawn(
                        "sluice-gateway",
                        bin,
                        &["--config", &cfg.to_string_lossy()],
                        &out.join(format!("gateway-{i}.log")),
                        true,
                    )
                    .await?;
                    gateways_v1.push(format!("http://{}/v1", p.addr.clone().unwrap_or_default()));
                    procs.push(p);
                }
                setup.push(match redis_url {
                    Some(_) => format!("{count} gateway processes sharing one Redis"),
                    None => "1 gateway process with the embedded limiter (no Redis)".to_owned(),
                });
                if let Some(sc) = &opts.sidecar {
                    let mut p = procs::spawn(
                        "sluice-sidecar",
                        sc,
                        &["--config", &cfg.to_string_lossy()],
                        &out.join("sidecar.log"),
                        false,
                    )
                    .await?;
                    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
                    match p.child.try_wait() {
                        Ok(None) => {
                            setup.push("sidecar running".into());
                            procs.push(p);
                        }
                        _ => setup.push(format!(
                            "sidecar exited at start (see {}); run without it",
                            out.join("sidecar.log").display()
                        )),
                    }
                } else {
                    setup.push("no sidecar".into());
                }
            }
        }
    }
    let setup = setup.join(", ");
    eprintln!("sluice-bench: {setup}");
    let targets = Arc::new(modes::Targets {
        sim_v1: format!("{sim_root}/v1"),
        provider_key: procs::PROVIDER_KEY.to_owned(),
        gateways_v1,
        tenant_keys: (0..s.services.len()).map(procs::tenant_key).collect(),
    });
    let schedule = fleet::schedule(s);
    let mut runs = Vec::new();
    let mut sums = Vec::new();
    for &mode in &opts.modes {
        let run = runner::run_mode(
            mode,
            s,
            &schedule,
            targets.clone(),
            &sim_root,
            opts.progress,
        )
        .await?;
        let sum = summary::summarize(s, &schedule, &run);
        eprintln!(
            "  {:<7} quota used {:>5.1}%  upstream 429s {:>5}  failures {:>5}/{}  p99 {:.0} ms  ({:.1} s)",
            mode.as_str(),
            sum.quota_share * 100.0,
            sum.upstream_429s,
            sum.failed,
            sum.offered,
            sum.latency_ms.p99,
            run.wall_secs
        );
        sums.push(sum);
        runs.push(run);
    }
    drop(procs);
    let report = Report::new(s, setup, &runs, sums);
    write("report.json", &report.json())?;
    write("report.html", &report.html())?;
    Ok(report)
}

fn now_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

//! The `sluice-bench` binary: flags and scenario, then [`sluice_bench::run`].

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sluice_bench::{GatewaySource, Mode, Options, Scenario, SimSource};

/// Plays a fleet of services × replicas against one simulated provider quota and
/// compares direct calls, per-replica limiters and Sluice on the same traffic.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Scenario file (TOML); the built-in demo scenario when absent.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Overrides the scenario's `duration_secs`.
    #[arg(long)]
    duration: Option<f64>,
    /// Modes to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "direct,split,sluice")]
    modes: Vec<String>,
    /// A running simulator (`http://host:port`) instead of starting one.
    #[arg(long)]
    sim_url: Option<String>,
    /// `sluice-sim` to start (default: next to this executable).
    #[arg(long)]
    sim_bin: Option<PathBuf>,
    /// Running gateways (`http://host:port,…`) instead of starting them.
    #[arg(long, value_delimiter = ',')]
    gateway_urls: Vec<String>,
    /// `sluice-gateway` to start (default: next to this executable).
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// How many gateways to start.
    #[arg(long, default_value_t = 3)]
    gateways: u32,
    /// Redis shared by the gateways; without it one gateway runs with its embedded limiter.
    #[arg(long, env = "SLUICE_BENCH_REDIS_URL")]
    redis_url: Option<String>,
    /// `sluice-sidecar` to start beside the gateways (default: next to this executable, if built).
    #[arg(long)]
    sidecar_bin: Option<PathBuf>,
    /// Do not start the sidecar even if it is built.
    #[arg(long)]
    no_sidecar: bool,
    /// Where configurations, logs and the report go.
    #[arg(long, default_value = "target/sluice-bench")]
    out: PathBuf,
    /// No live progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut scenario = match &args.scenario {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Scenario::from_toml(&text)?
        }
        None => Scenario::demo(),
    };
    if let Some(d) = args.duration {
        scenario.duration_secs = d;
    }
    let modes = args
        .modes
        .iter()
        .map(|m| {
            Mode::parse(m).with_context(|| format!("unknown mode {m:?} (direct, split, sluice)"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let bin = |given: &Option<PathBuf>, name: &str| -> anyhow::Result<PathBuf> {
        given
            .clone()
            .or_else(|| sluice_bench::procs::sibling_binary(name))
            .with_context(|| {
                format!(
                    "{name} not found next to sluice-bench; build it or pass --{}-bin",
                    &name[7..]
                )
            })
    };
    let sim = match &args.sim_url {
        Some(u) => SimSource::Url(u.clone()),
        None => SimSource::Spawn(bin(&args.sim_bin, "sluice-sim")?),
    };
    let gateways = if !modes.contains(&Mode::Sluice) {
        None
    } else if !args.gateway_urls.is_empty() {
        Some(GatewaySource::Urls(args.gateway_urls.clone()))
    } else {
        Some(GatewaySource::Spawn {
            bin: bin(&args.gateway_bin, "sluice-gateway")?,
            count: args.gateways,
            redis_url: args.redis_url.clone(),
        })
    };
    let sidecar = if args.no_sidecar || args.redis_url.is_none() {
        None
    } else {
        args.sidecar_bin
            .clone()
            .or_else(|| sluice_bench::procs::sibling_binary("sluice-sidecar"))
    };
    let opts = Options {
        scenario,
        modes,
        sim,
        gateways,
        sidecar,
        out_dir: args.out.clone(),
        progress: !args.no_progress,
    };
    let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
    let report = runtime.block_on(async {
        tokio::select! {
            r = sluice_bench::run(&opts) => r.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    })?;
    println!("\n{}", report.table());
    println!("{}", report.services_table());
    println!("{}\n", sluice_bench::report::DEFINITIONS);
    println!("report: {}", args.out.join("report.html").display());
    println!("json:   {}", args.out.join("report.json").display());
    Ok(())
}

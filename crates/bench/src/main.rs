//! The `sluice-bench` binary: flags and scenario, then [`sluice_bench::run`].

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_bench::{GatewaySource, Mode, Options, Scenario, SimSource};

/// Plays a fleet of services × replicas against one simulated provider quota and
/// compares direct calls, per-replica limiters and Sluice on the same traffic.
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
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

#[derive(Subcommand, Debug)]
enum Cmd {
    /// A long run at about the quota with faults injected at random (Redis killed and
    /// paused, gateways and the sidecar killed), then checks: memory flat, no Redis key
    /// outlived its window, no limit exceeded, every request answered. Exits 1 when a
    /// check fails.
    Soak(SoakArgs),
}

/// `sluice-bench soak`.
#[derive(clap::Args, Debug)]
struct SoakArgs {
    /// Seconds of traffic.
    #[arg(long, default_value_t = 600.0)]
    duration: f64,
    /// Seed of the traffic, the fault schedule and the simulator's dice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Offered requests ÷ what the request limit allows.
    #[arg(long, default_value_t = 1.25)]
    load: f64,
    /// Gateways sharing Redis.
    #[arg(long, default_value_t = 3)]
    gateways: u32,
    /// `sluice-sim` (default: next to this executable).
    #[arg(long)]
    sim_bin: Option<PathBuf>,
    /// `sluice-gateway` (default: next to this executable).
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// `sluice-sidecar` (default: next to this executable, if built).
    #[arg(long)]
    sidecar_bin: Option<PathBuf>,
    /// Run without the sidecar.
    #[arg(long)]
    no_sidecar: bool,
    /// `redis-server` to start (the soak owns it: it kills and restarts it).
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
    /// The same traffic without any fault (a baseline).
    #[arg(long)]
    no_faults: bool,
    /// Where configurations, logs and `soak.json` go.
    #[arg(long, default_value = "target/sluice-bench/soak")]
    out: PathBuf,
}

fn bin(given: &Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    given
        .clone()
        .or_else(|| sluice_bench::procs::sibling_binary(name))
        .with_context(|| {
            format!(
                "{name} not found next to sluice-bench; build it or pass --{}-bin",
                &name[7..]
            )
        })
}

fn soak(a: &SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.duration.is_finite() && a.duration >= 20.0,
        "--duration: at least 20 s"
    );
    anyhow::ensure!(a.load.is_finite() && a.load > 0.0, "--load: > 0");
    let opts = sluice_bench::soak::SoakOptions {
        duration: std::time::Duration::from_secs_f64(a.duration),
        seed: a.seed,
        load: a.load,
        gateways: a.gateways,
        sim_bin: bin(&a.sim_bin, "sluice-sim")?,
        gateway_bin: bin(&a.gateway_bin, "sluice-gateway")?,
        sidecar_bin: if a.no_sidecar {
            None
        } else {
            a.sidecar_bin
                .clone()
                .or_else(|| sluice_bench::procs::sibling_binary("sluice-sidecar"))
        },
        redis_server: a.redis_server.clone(),
        faults: !a.no_faults,
        out_dir: a.out.clone(),
    };
    let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
    let report = runtime.block_on(async {
        tokio::select! {
            r = sluice_bench::soak::soak(&opts) => r.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    })?;
    println!("\n{}", report.table());
    println!("json: {}", a.out.join("soak.json").display());
    if !report.passed {
        std::process::exit(1);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Cmd::Soak(a)) = &args.command {
        return soak(a);
    }
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

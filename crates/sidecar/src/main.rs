//! The `sluice-sidecar` binary: flags, configuration, tracing, then [`sluice_sidecar::Sidecar::serve`].

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sluice_sidecar::{Options, Sidecar};

/// Recalibrates Sluice's shared quota from what providers say; beside an app, its proxy.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The configuration file (the gateway's own).
    #[arg(long, env = "SLUICE_CONFIG", default_value = "sluice.toml")]
    config: PathBuf,
    /// Overrides `sidecar.listen` (given twice, the last one wins).
    #[arg(long, overrides_with = "listen")]
    listen: Option<String>,
    /// Overrides `store.redis_url`.
    #[arg(long)]
    redis_url: Option<String>,
    /// Overrides `sidecar.consumer_name` (unique per sidecar).
    #[arg(long)]
    name: Option<String>,
    /// Also reload when the configuration file's content changes (checked every 2 s;
    /// for ConfigMaps, which change without a signal). SIGHUP always reloads.
    #[arg(long, env = "SLUICE_WATCH_CONFIG")]
    watch_config: bool,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "SLUICE_LOG_JSON")]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Flushes the spans not yet exported when dropped, even on an early error return.
    let telemetry = sluice_proxy::init_logs(args.log_json);
    let watch_config = args.watch_config;
    let mut flags = Vec::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            flags.push((k.to_owned(), format!("{v:?}")));
        }
    };
    put("sidecar.listen", args.listen);
    put("store.redis_url", args.redis_url);
    put("sidecar.consumer_name", args.name);
    let source = sluice_proxy::ConfigSource {
        path: args.config.clone(),
        flags,
        exposure: sluice_config::Config::check_sidecar_exposure,
    };
    // The same reading and checks as every reload (`ConfigSource::load`).
    let (config, hash) = source.load().with_context(|| {
        format!(
            "refusing to start with configuration {}",
            args.config.display()
        )
    })?;
    let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
    let served = runtime.block_on(async move {
        let options = Options::from_config(&config);
        let listener = tokio::net::TcpListener::bind(config.sidecar.listen)
            .await
            .context("cannot listen")?;
        let addr = listener.local_addr()?;
        let shared = config.store.is_some();
        let sidecar = Sidecar::with_hash(config, hash, options.clone()).context("cannot start")?;
        // Before the listener is announced: from here on SIGHUP reloads, never kills.
        if watch_config {
            tokio::spawn(sluice_proxy::reload_on_change(
                sidecar.gateway().clone(),
                source.clone(),
                std::time::Duration::from_secs(2),
            ));
        }
        let reloads = sluice_proxy::reload_on_sighup(sidecar.gateway().clone(), source)
            .context("cannot install the SIGHUP handler")?;
        tokio::spawn(reloads);
        // Tests and scripts read the port from this line.
        println!("listening on {addr}");
        tracing::info!(%addr, shared, name = %options.name, "sluice-sidecar started");
        sidecar
            .serve(listener, sluice_proxy::shutdown_signal())
            .await?;
        Ok(())
    });
    // Outside the runtime: the exporter's HTTP client blocks.
    drop(runtime);
    telemetry.shutdown();
    served
}

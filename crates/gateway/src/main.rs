//! The `sluice-gateway` binary: flags, configuration, tracing, then [`sluice_proxy::serve`].

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sluice_proxy::Gateway;

/// mimalloc instead of the system allocator: a gateway request makes many small,
/// short-lived allocations (headers, JSON, futures) across worker threads, which
/// glibc's malloc serves more slowly (docs/benchmarks.md, #17).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The OpenAI-compatible gateway that makes replicas share one provider quota.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The configuration file.
    #[arg(long, env = "SLUICE_CONFIG", default_value = "sluice.toml")]
    config: PathBuf,
    /// Overrides `server.listen`.
    #[arg(long)]
    listen: Option<String>,
    /// Overrides `store.redis_url`.
    #[arg(long)]
    redis_url: Option<String>,
    /// Overrides `store.on_error` (fail_closed | fail_open | local).
    #[arg(long)]
    on_error: Option<String>,
    /// Overrides `store.expected_replicas`.
    #[arg(long)]
    expected_replicas: Option<u32>,
    /// Overrides `queue.max_wait` (e.g. `30s`).
    #[arg(long)]
    max_wait: Option<String>,
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
            flags.push((k.to_owned(), v));
        }
    };
    put("server.listen", args.listen);
    put("store.redis_url", args.redis_url);
    put("store.on_error", args.on_error);
    put(
        "store.expected_replicas",
        args.expected_replicas.map(|n| n.to_string()),
    );
    put("queue.max_wait", args.max_wait);
    let source = sluice_proxy::ConfigSource {
        path: args.config.clone(),
        flags,
        exposure: sluice_config::Config::check_exposure,
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
        let gateway = Gateway::with_hash(config, hash).context("cannot start")?;
        // Before the listener is announced: from here on SIGHUP reloads, never kills.
        if watch_config {
            tokio::spawn(sluice_proxy::reload_on_change(
                gateway.clone(),
                source.clone(),
                std::time::Duration::from_secs(2),
            ));
        }
        let reloads = sluice_proxy::reload_on_sighup(gateway.clone(), source)
            .context("cannot install the SIGHUP handler")?;
        tokio::spawn(reloads);
        let listener = tokio::net::TcpListener::bind(gateway.config().server.listen).await.context("cannot listen")?;
        let addr = listener.local_addr()?;
        // Tests and scripts read the port from this line.
        println!("listening on {addr}");
        tracing::info!(%addr, shared = gateway.is_shared(), models = gateway.config().models.len(), config_sha256 = gateway.config_hash(), "sluice-gateway started");
        sluice_proxy::serve(gateway, listener, sluice_proxy::shutdown_signal()).await?;
        Ok(())
    });
    // Outside the runtime: the exporter's HTTP client blocks.
    drop(runtime);
    telemetry.shutdown();
    served
}

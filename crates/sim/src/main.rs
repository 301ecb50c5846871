//! The `sluice-sim` binary: parse flags, load the config, bind, print the address, serve.

use std::io::Write;

use anyhow::Context;
use clap::Parser;
use sluice_sim::cli::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Args::parse().into_config()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {addr}")?;
        stdout.flush()?;
    }
    tracing::info!(%addr, models = config.models.len(), "sluice-sim started");
    sluice_sim::serve(config, listener).await?;
    Ok(())
}

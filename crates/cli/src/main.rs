//! `sluice`: the operator's command line. `sluice config check FILE…` validates
//! configuration files as the binaries load them and prints the effective limits;
//! `sluice quotas` shows a running gateway's or sidecar's quotas as a table. Thin over
//! `sluice-config` and `sluice-recalibrate`; `--json` on each for scripts.

mod check;
mod quotas;
mod table;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Operate a Sluice fleet: check configuration files, read quotas.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The quotas of a running gateway or sidecar (`GET /v1/quotas`).
    Quotas {
        /// The gateway's or sidecar's base URL (its admin listener shows everything).
        #[arg(long, env = "SLUICE_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The bearer token: the admin key (or a tenant key, for the redacted view).
        #[arg(long, env = "SLUICE_ADMIN_KEY", hide_env_values = true)]
        key: Option<String>,
        /// Print the answer as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Colours in the table.
        #[arg(long, value_enum, default_value_t = When::Auto)]
        color: When,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate files as the gateway and the sidecar load them (environment, secret
    /// files, validation, quotas, exposure) and print each model's limits per account;
    /// exits 1 with the precise error when one does not pass.
    Check {
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print a JSON document per file instead of tables.
        #[arg(long)]
        json: bool,
    },
}

/// When to colour.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum When {
    /// On a terminal, unless `NO_COLOR` is set.
    Auto,
    Always,
    Never,
}

fn main() -> ExitCode {
    match Args::parse().command {
        Command::Config {
            command: ConfigCommand::Check { files, json },
        } => config_check(&files, json),
        Command::Quotas {
            url,
            key,
            json,
            color,
        } => show_quotas(&url, key.as_deref(), json, color),
    }
}

fn config_check(files: &[PathBuf], json: bool) -> ExitCode {
    let mut failed = false;
    for path in files {
        match check::check(path) {
            Ok(c) if json => println!("{}", serde_json::json!({"ok": true, "config": c})),
            Ok(c) => print!("{}", check::render(&c)),
            Err(e) => {
                failed = true;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"ok": false, "file": path.display().to_string(), "error": e.to_string()})
                    );
                } else {
                    eprintln!("{}: error: {e}", path.display());
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn show_quotas(url: &str, key: Option<&str>, json: bool, color: When) -> ExitCode {
    let answer = match quotas::fetch(url, key) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!("{answer}");
        return ExitCode::SUCCESS;
    }
    let colours = match color {
        When::Always => true,
        When::Never => false,
        When::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    match quotas::parse(&answer) {
        Ok(q) => {
            print!("{}", quotas::render(&q, colours));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {url} answered something that is not /v1/quotas: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `sluice`: the operator's command line. `sluice config check FILE…` validates
//! configuration files as the binaries load them and prints the effective limits;
//! `sluice quotas` shows a running gateway's or sidecar's quotas as a table;
//! `sluice tenants`, `accounts`, `limits` and `changes` drive the admin API of an admin
//! listener. Thin over `sluice-config`, `sluice-recalibrate` and the HTTP API; `--json`
//! on each for scripts.

mod admin;
mod check;
mod quotas;
mod table;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::json;

/// Operate a Sluice fleet: check configuration files, read quotas, change limits,
/// tenants and accounts at run time.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about)]
struct Args {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// The options every command takes.
#[derive(clap::Args, Debug)]
struct Global {
    /// The gateway's or sidecar's base URL: its admin listener for the admin commands
    /// (and the full quotas view).
    #[arg(
        long,
        global = true,
        env = "SLUICE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// The bearer token: the admin key (a tenant key gets the redacted quotas).
    #[arg(long, global = true, env = "SLUICE_ADMIN_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Print JSON instead of tables and summaries.
    #[arg(long, global = true)]
    json: bool,
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
        /// Colours in the table.
        #[arg(long, value_enum, default_value_t = When::Auto)]
        color: When,
    },
    /// Tenants changed at run time (kept in the shared store, applied by every replica).
    Tenants {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Accounts in or out of rotation.
    Accounts {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// A model's limits changed at run time.
    Limits {
        #[command(subcommand)]
        command: LimitCommand,
    },
    /// The run-time changes in force.
    Changes,
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
    },
}

#[derive(Subcommand, Debug)]
enum TenantCommand {
    /// Add a tenant. Its key is read from standard input (only its SHA-256 is sent),
    /// or give `--key-sha256`.
    Add {
        name: String,
        #[arg(long)]
        key_sha256: Option<String>,
        #[arg(long)]
        weight: Option<u32>,
    },
    /// Give a tenant a new key (standard input, or `--key-sha256`); the old one stops working.
    Rotate {
        name: String,
        #[arg(long)]
        key_sha256: Option<String>,
    },
    /// Refuse a tenant's key on every replica.
    Revoke { name: String },
    /// Set a tenant's weight under contention.
    Weight { name: String, weight: u32 },
}

#[derive(Subcommand, Debug)]
enum AccountCommand {
    /// Put an account back into rotation (and end its cooldown).
    Enable { upstream: String, account: String },
    /// Take an account out of rotation on every model of its upstream.
    Disable {
        upstream: String,
        account: String,
        /// Why (shown in `/v1/quotas` and the status page).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
enum LimitCommand {
    /// Replace a model's limits: `sluice limits set gpt-4o requests=100/60s tokens=50000/60s`.
    Set {
        model: String,
        #[arg(required = true)]
        limits: Vec<String>,
    },
    /// Back to the file's limits.
    Reset { model: String },
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
    let Args {
        global: args,
        command,
    } = Args::parse();
    let key = args.key.as_deref();
    match command {
        Command::Config {
            command: ConfigCommand::Check { files },
        } => config_check(&files, args.json),
        Command::Quotas { color } => show_quotas(&args.url, key, args.json, color),
        Command::Changes => admin_call(&args, Method::GET, "/v1/admin/changes".into(), None),
        Command::Tenants { command } => tenants(&args, command),
        Command::Accounts { command } => {
            let (path, body) = match command {
                AccountCommand::Enable { upstream, account } => (
                    format!("/v1/admin/accounts/{upstream}/{account}/enable"),
                    None,
                ),
                AccountCommand::Disable {
                    upstream,
                    account,
                    reason,
                } => (
                    format!("/v1/admin/accounts/{upstream}/{account}/disable"),
                    Some(json!({ "reason": reason })),
                ),
            };
            admin_call(&args, Method::POST, path, body)
        }
        Command::Limits { command } => match command {
            LimitCommand::Set { model, limits } => {
                let parsed: Result<Vec<_>, _> =
                    limits.iter().map(|l| admin::parse_limit(l)).collect();
                match parsed {
                    Ok(l) => admin_call(
                        &args,
                        Method::PUT,
                        format!("/v1/admin/models/{model}/limits"),
                        Some(json!({ "limits": l })),
                    ),
                    Err(e) => fail(&e),
                }
            }
            LimitCommand::Reset { model } => admin_call(
                &args,
                Method::DELETE,
                format!("/v1/admin/models/{model}/limits"),
                None,
            ),
        },
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn tenants(args: &Global, command: TenantCommand) -> ExitCode {
    let (path, body) = match command {
        TenantCommand::Add {
            name,
            key_sha256,
            weight,
        } => match admin::key_sha256(key_sha256) {
            Ok(h) => {
                let mut body = json!({"name": name, "key_sha256": h});
                if let Some(w) = weight {
                    body["weight"] = w.into();
                }
                ("/v1/admin/tenants".to_owned(), Some(body))
            }
            Err(e) => return fail(&e),
        },
        TenantCommand::Rotate { name, key_sha256 } => match admin::key_sha256(key_sha256) {
            Ok(h) => (
                format!("/v1/admin/tenants/{name}/rotate"),
                Some(json!({ "key_sha256": h })),
            ),
            Err(e) => return fail(&e),
        },
        TenantCommand::Revoke { name } => (format!("/v1/admin/tenants/{name}/revoke"), None),
        TenantCommand::Weight { name, weight } => (
            format!("/v1/admin/tenants/{name}/weight"),
            Some(json!({ "weight": weight })),
        ),
    };
    admin_call(args, Method::POST, path, body)
}

/// Makes the call; prints the answer (JSON, or a one-line summary).
fn admin_call(
    args: &Global,
    method: Method,
    path: String,
    body: Option<serde_json::Value>,
) -> ExitCode {
    match admin::call(method, &args.url, &path, args.key.as_deref(), body) {
        Ok(v) if args.json => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Ok(v) => {
            match v.get("applied").and_then(|a| a.as_str()) {
                Some(action) => println!(
                    "{action}: {} (change {}, {})\n  before: {}\n  after:  {}",
                    v["what"].as_str().unwrap_or(""),
                    v["version"],
                    if v["shared"] == true {
                        "every replica applies it within a second"
                    } else {
                        "this process only: no shared store"
                    },
                    v["before"],
                    v["after"]
                ),
                None => println!("{v}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

fn config_check(files: &[PathBuf], json: bool) -> ExitCode {
    let mut failed = false;
    for path in files {
        match check::check(path) {
            Ok(c) if json => println!("{}", json!({"ok": true, "config": c})),
            Ok(c) => print!("{}", check::render(&c)),
            Err(e) => {
                failed = true;
                if json {
                    println!(
                        "{}",
                        json!({"ok": false, "file": path.display().to_string(), "error": e.to_string()})
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
        Err(e) => return fail(&e.to_string()),
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
        Err(e) => fail(&format!(
            "{url} answered something that is not /v1/quotas: {e}"
        )),
    }
}

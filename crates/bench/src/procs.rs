//! Starting the simulator, the gateways and the sidecar as child processes, with
//! configurations generated from the scenario. Children die with the bench
//! (`kill_on_drop`), also when it is interrupted.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::BenchError;
use crate::scenario::{Scenario, Unit, dur_text};

/// The provider key of the simulated account (the one quota everybody shares).
pub const PROVIDER_KEY: &str = "sk-bench-shared";

/// A running child and the address it printed.
pub struct Proc {
    /// The child (killed when dropped).
    pub child: Child,
    /// `host:port` from its `listening on …` line, if it prints one.
    pub addr: Option<String>,
    /// What it is, for messages.
    pub name: String,
}

/// The tenant key of service `i`.
pub fn tenant_key(i: usize) -> String {
    format!("sk-tenant-{i}")
}

/// The simulator's configuration for a scenario.
pub fn sim_config(s: &Scenario) -> String {
    let p = &s.provider;
    let mut limits = vec![
        format!("{{ requests = {}, per = \"60s\" }}", p.rpm),
        format!("{{ tokens = {}, per = \"60s\" }}", p.tpm),
    ];
    if p.rps > 0 {
        limits.push(format!("{{ requests = {}, per = \"1s\" }}", p.rps));
    }
    format!(
        "listen = \"127.0.0.1:0\"\nseed = {seed}\nwindow_scale = {scale}\n\n\
         [[models]]\nname = \"{model}\"\ndialect = \"{dialect}\"\nlimits = [{limits}]\n\
         latency = {{ first_token_ms = {ft}, per_token_ms = {pt} }}\n\n\
         [[accounts]]\nname = \"shared\"\nkey = \"{key}\"\n",
        seed = s.seed,
        scale = p.window_scale,
        model = p.model,
        dialect = p.dialect,
        limits = limits.join(", "),
        ft = p.first_token_ms,
        pt = p.per_token_ms,
        key = PROVIDER_KEY,
    )
}

/// The gateways' configuration: the provider's limits with the same scaled windows, one
/// tenant per service, Redis when given (else the embedded limiter).
pub fn gateway_config(
    s: &Scenario,
    sim_v1: &str,
    redis_url: Option<&str>,
    key_prefix: &str,
    replicas: u32,
) -> String {
    let p = &s.provider;
    let limits: Vec<String> = p
        .limits()
        .into_iter()
        .map(|(unit, amount, window)| {
            let u = match unit {
                Unit::Requests => "requests",
                Unit::Tokens => "tokens",
            };
            format!("{{ {u} = {amount}, per = \"{}\" }}", dur_text(window))
        })
        .collect();
    let mut out = String::from("[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\n\n");
    if let Some(url) = redis_url {
        out += &format!(
            "[store]\nredis_url = \"{url}\"\nkey_prefix = \"{key_prefix}\"\n\
             on_error = \"local\"\nexpected_replicas = {replicas}\n\n"
        );
    }
    out += &format!(
        "[[upstreams]]\nname = \"sim\"\nbase_url = \"{sim_v1}\"\ndialect = \"{}\"\nkeys = [\"{PROVIDER_KEY}\"]\n\n\
         [[models]]\nname = \"{}\"\nupstream = \"sim\"\nlimits = [{}]\n\n\
         [queue]\nmax_wait = \"120s\"\n\n",
        p.dialect,
        p.model,
        limits.join(", ")
    );
    for (i, svc) in s.services.iter().enumerate() {
        out += &format!(
            "[[tenants]]\nname = \"{}\"\nkey = \"{}\"\nweight = {}\n\n",
            svc.name,
            tenant_key(i),
            svc.weight
        );
    }
    out
}

/// The binary `name` next to the running executable (how `cargo build` lays them out).
pub fn sibling_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join(name);
    p.is_file().then_some(p)
}

/// Starts `bin args…`, logging its stderr to `log`, and waits for `listening on ADDR`
/// on its stdout when `expect_addr`.
pub async fn spawn(
    name: &str,
    bin: &Path,
    args: &[&str],
    log: &Path,
    expect_addr: bool,
) -> Result<Proc, BenchError> {
    let log_file = std::fs::File::create(log).map_err(|e| BenchError::Io(log.into(), e))?;
    let mut child = Command::new(bin)
        .args(args)
        .env(
            "SLUICE_LOG",
            std::env::var("SLUICE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(if expect_addr {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::Spawn(format!("{name} ({}): {e}", bin.display())))?;
    let mut addr = None;
    if expect_addr {
        let out = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(out).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
        match line {
            Ok(Ok(Some(l))) if l.starts_with("listening on ") => {
                addr = Some(l["listening on ".len()..].trim().to_owned());
            }
            other => {
                return Err(BenchError::Spawn(format!(
                    "{name} did not print `listening on ADDR` ({other:?}); see {}",
                    log.display()
                )));
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    }
    Ok(Proc {
        child,
        addr,
        name: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_limits_use_the_scaled_windows() {
        let s = Scenario::demo();
        let c = gateway_config(&s, "http://127.0.0.1:1/v1", Some("redis://x"), "p", 3);
        assert!(c.contains("{ requests = 600, per = \"15000ms\" }"), "{c}");
        assert!(c.contains("{ tokens = 1000000, per = \"15000ms\" }"), "{c}");
        assert!(c.contains("{ requests = 10, per = \"250ms\" }"), "{c}");
        assert!(c.contains("expected_replicas = 3"));
        assert_eq!(c.matches("[[tenants]]").count(), 5);
        let embedded = gateway_config(&s, "http://127.0.0.1:1/v1", None, "p", 1);
        assert!(!embedded.contains("[store]"));
    }

    #[test]
    fn sim_config_has_the_published_limits_and_the_scale() {
        let c = sim_config(&Scenario::demo());
        assert!(c.contains("window_scale = 0.25"));
        assert!(c.contains("{ requests = 10, per = \"1s\" }"));
        assert!(c.contains(PROVIDER_KEY));
    }
}

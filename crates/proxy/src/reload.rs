//! Reloading the configuration of a running process: [`ConfigSource`] (the file and the
//! flags it was started with), [`Gateway::reload`] (validate, then swap the rules
//! whole) and [`reload_on_sighup`] (the binaries' `SIGHUP` handler).
//!
//! What a reload swaps: limits, accounts and keys, models and fallbacks, tenants,
//! queue and retry tuning, the admin key. What it keeps: the limiter (the embedded
//! store's windows, Redis connections, the breaker and hand-over state), the upstream
//! HTTP client (rebuilt only when `server.upstream_timeout` changes), the observation
//! publisher, each surviving model's estimate learner and fair gate. A request takes a
//! snapshot ([`Gateway::current`]) when it arrives and keeps it, so in-flight and
//! queued requests finish under the rules they started with.
//!
//! What it refuses: a file that does not load or validate (the same message as at
//! start), and a change to a key that only a restart can apply ([`RESTART_ONLY`]):
//! the whole reload is refused and the running configuration stays, nothing is half
//! applied.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::Digest;
use sluice_config::{Config, ConfigError, Override};

use crate::error::StartError;
use crate::state::{Gateway, Inner, Kept};

/// The keys a reload cannot change: the listeners are bound and the store connected
/// at start. A reload that changes one is refused as a whole.
pub const RESTART_ONLY: &[&str] = &[
    "server.listen",
    "server.admin_listen",
    "server.max_connections",
    "server.header_timeout",
    "[store]",
    "sidecar.listen",
    "sidecar.admin_listen",
    "sidecar.ticket_key",
    "sidecar.consumer_group",
    "sidecar.consumer_name",
];

/// Why a reload was refused; the running configuration stays in force.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The file does not load or validate: the message the process would refuse to
    /// start with.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// The quotas or the upstream client cannot be built from it.
    #[error("{0}")]
    Start(#[from] StartError),
    /// A key only a restart can apply was changed.
    #[error(
        "{key} changed: it applies only at a restart (keys that need one: {}); restart the process, or put the running value back to reload the rest",
        RESTART_ONLY.join(", ")
    )]
    NeedsRestart {
        /// The key, as in [`RESTART_ONLY`].
        key: &'static str,
    },
}

impl ReloadError {
    /// The `result` label of `sluice_config_reloads_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Invalid(_) | Self::Start(_) => "invalid",
            Self::NeedsRestart { .. } => "needs_restart",
        }
    }
}

/// Where a process's configuration comes from: the file and the flags that override
/// it (the same flags apply on every reload), plus the exposure check of the binary.
#[derive(Clone, Debug)]
pub struct ConfigSource {
    /// The configuration file.
    pub path: PathBuf,
    /// The command-line overrides, applied over the file and the environment.
    pub flags: Vec<Override>,
    /// The binary's check that a configuration does not expose it without keys
    /// ([`Config::check_exposure`] or [`Config::check_sidecar_exposure`]).
    pub exposure: fn(&Config) -> Result<(), ConfigError>,
}

impl ConfigSource {
    /// Reads, validates and checks the file: the configuration and the SHA-256 (hex)
    /// of the file's bytes.
    pub fn load(&self) -> Result<(Config, String), ConfigError> {
        let (config, hash) =
            sluice_config::load_with_digest(&self.path, &self.flags, &sluice_config::ProcessEnv)?;
        (self.exposure)(&config)?;
        Ok((config, hash))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What a successful reload changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// The hash of the configuration that was in force.
    pub from: String,
    /// The hash of the configuration now in force.
    pub to: String,
}

impl Gateway {
    /// Swaps `config` in, atomically, unless it changes a key only a restart applies
    /// ([`RESTART_ONLY`]) or its quotas cannot be built. Requests already admitted or
    /// queued keep the rules they started with; every request after this returns
    /// sees the new ones. Reloads are serialised.
    pub async fn reload(&self, config: Config, hash: String) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.live.reloading.lock().await;
        let old = self.live.current.read().clone();
        if let Some(key) = restart_only_change(&old.config, &config) {
            return Err(ReloadError::NeedsRestart { key });
        }
        let client = if old.config.server.upstream_timeout == config.server.upstream_timeout {
            old.client.clone()
        } else {
            crate::state::upstream_client(&config)?
        };
        crate::state::warn_secrets_in_file(&config);
        let kept = Kept {
            limiter: old.limiter.clone(),
            client,
            observer: old.observer.clone(),
            metrics: old.metrics.clone(),
        };
        let overrides = self.live.overrides.lock().clone();
        let file = (config.clone(), hash.clone());
        let new = Arc::new(Inner::build(config, hash, kept, Some(&old), &overrides)?);
        let reloaded = Reloaded {
            from: old.config_hash.clone(),
            to: new.config_hash.clone(),
        };
        *self.live.file.lock() = file;
        *self.live.current.write() = new;
        publish_config_info(Some(&reloaded.from), &reloaded.to);
        Ok(reloaded)
    }

    /// Loads `source` and [`reload`](Self::reload)s it; logs and counts the outcome
    /// (`sluice_config_reloads_total{result}`: `ok`, `invalid`, `needs_restart`).
    pub async fn reload_from(&self, source: &ConfigSource) -> Result<Reloaded, ReloadError> {
        let outcome = match source.load() {
            Ok((config, hash)) => self.reload(config, hash).await,
            Err(e) => Err(ReloadError::Invalid(e)),
        };
        let file = source.path.display().to_string();
        match &outcome {
            Ok(r) => {
                metrics::counter!("sluice_config_reloads_total", "result" => "ok").increment(1);
                let now = self.current();
                tracing::info!(
                    %file,
                    from = %r.from,
                    to = %r.to,
                    models = now.config().models.len(),
                    tenants = now.config().tenants.len(),
                    "configuration reloaded"
                );
            }
            Err(e) => {
                metrics::counter!("sluice_config_reloads_total", "result" => e.kind()).increment(1);
                tracing::error!(
                    %file,
                    error = %e,
                    "configuration reload refused; the running configuration stays"
                );
            }
        }
        outcome
    }
}

/// Installs the `SIGHUP` handler now (from then on the signal never ends the process)
/// and returns the task that reloads `source` into `gateway` on each one, to spawn.
/// Call it before announcing the listener, inside the runtime.
pub fn reload_on_sighup(
    gateway: Gateway,
    source: ConfigSource,
) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(async move {
        #[cfg(unix)]
        while hangups.recv().await.is_some() {
            tracing::info!(file = %source.path.display(), "SIGHUP: reloading the configuration");
            let _ = gateway.reload_from(&source).await;
        }
        #[cfg(not(unix))]
        {
            let _ = (gateway, source);
            std::future::pending::<()>().await;
        }
    })
}

impl Gateway {
    /// Swaps in the file's configuration with `overrides` on top (the run-time changes
    /// read from the store), keeping everything a reload keeps. Refused (the old rules
    /// stay) when the result does not build.
    pub(crate) async fn apply_overrides(
        &self,
        overrides: crate::overrides::Overrides,
    ) -> Result<(), StartError> {
        let _one_at_a_time = self.live.reloading.lock().await;
        let old = self.live.current.read().clone();
        let (config, hash) = self.live.file.lock().clone();
        let kept = Kept {
            limiter: old.limiter.clone(),
            client: old.client.clone(),
            observer: old.observer.clone(),
            metrics: old.metrics.clone(),
        };
        let new = Arc::new(Inner::build(config, hash, kept, Some(&old), &overrides)?);
        *self.live.overrides.lock() = overrides;
        *self.live.current.write() = new;
        Ok(())
    }
}

/// Watches `source`'s file every `every` and reloads it when its bytes change (a
/// Kubernetes ConfigMap is updated in place, through a symlink swap, without a signal).
/// A content that was refused is not retried until it changes again. Spawn it.
pub async fn reload_on_change(gateway: Gateway, source: ConfigSource, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refused: Option<String> = None;
    loop {
        tick.tick().await;
        let Ok(bytes) = tokio::fs::read(&source.path).await else {
            continue;
        };
        let hash = hash_of(&bytes);
        if hash == gateway.current().config_hash() || refused.as_deref() == Some(&hash) {
            continue;
        }
        tracing::info!(file = %source.path.display(), "the configuration file changed: reloading");
        refused = gateway.reload_from(&source).await.err().map(|_| hash);
    }
}

/// The first key of [`RESTART_ONLY`] whose value differs between `old` and `new`.
fn restart_only_change(old: &Config, new: &Config) -> Option<&'static str> {
    let (o, n) = (&old.server, &new.server);
    let store = |c: &Config| {
        c.store.as_ref().map(|s| {
            (
                s.redis_url.expose().to_owned(),
                s.on_error,
                s.expected_replicas,
                s.replica_index,
                s.timeout,
                s.connections,
                s.key_prefix.clone(),
            )
        })
    };
    let (os, ns) = (&old.sidecar, &new.sidecar);
    let ticket = |s: &sluice_config::Sidecar| s.ticket_key.as_ref().map(|k| k.expose().to_owned());
    [
        ("server.listen", o.listen != n.listen),
        ("server.admin_listen", o.admin_listen != n.admin_listen),
        (
            "server.max_connections",
            o.max_connections != n.max_connections,
        ),
        (
            "server.header_timeout",
            o.header_timeout != n.header_timeout,
        ),
        ("[store]", store(old) != store(new)),
        ("sidecar.listen", os.listen != ns.listen),
        ("sidecar.admin_listen", os.admin_listen != ns.admin_listen),
        ("sidecar.ticket_key", ticket(os) != ticket(ns)),
        (
            "sidecar.consumer_group",
            os.consumer_group != ns.consumer_group,
        ),
        (
            "sidecar.consumer_name",
            os.consumer_name != ns.consumer_name,
        ),
    ]
    .into_iter()
    .find_map(|(key, changed)| changed.then_some(key))
}

/// The SHA-256 of `bytes` as 64 lowercase hexadecimal digits.
pub(crate) fn hash_of(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `sluice_config_info{hash}`: 1 for the configuration in force, 0 for the one it
/// replaced, so a dashboard sees which replicas run which version.
pub(crate) fn publish_config_info(from: Option<&str>, to: &str) {
    if let Some(from) = from.filter(|f| *f != to) {
        metrics::gauge!("sluice_config_info", "hash" => from.to_owned()).set(0.0);
    }
    metrics::gauge!("sluice_config_info", "hash" => to.to_owned()).set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        sluice_config::from_str(
            text,
            &[],
            &std::collections::HashMap::<String, String>::new(),
        )
        .expect("config")
    }

    const BASE: &str = r#"
[[upstreams]]
name = "u"
base_url = "http://127.0.0.1:9/v1"
keys = ["sk-a"]
[[models]]
name = "m"
upstream = "u"
rpm = 100
"#;

    #[test]
    fn a_limit_change_is_not_restart_only_but_the_listener_is() {
        let old = config(BASE);
        let lower = config(&BASE.replace("rpm = 100", "rpm = 50"));
        assert_eq!(restart_only_change(&old, &lower), None);
        let moved = config(&format!("[server]\nlisten = \"127.0.0.1:9999\"\n{BASE}"));
        assert_eq!(restart_only_change(&old, &moved), Some("server.listen"));
        let store = config(&format!(
            "[store]\nredis_url = \"redis://127.0.0.1:1\"\n{BASE}"
        ));
        assert_eq!(restart_only_change(&old, &store), Some("[store]"));
    }

    #[tokio::test]
    async fn a_reload_swaps_the_rules_and_keeps_the_limiter_and_earlier_snapshots() {
        let gw = Gateway::new(config(BASE)).expect("gateway");
        let before = gw.current();
        let r = gw
            .reload(
                config(&BASE.replace("rpm = 100", "rpm = 50")),
                "b".repeat(64),
            )
            .await
            .expect("reloads");
        assert_eq!(r.to, "b".repeat(64));
        let after = gw.current();
        assert_eq!(after.config().models[0].limits[0].amount.get(), 50);
        assert_eq!(before.config().models[0].limits[0].amount.get(), 100);
        assert!(Arc::ptr_eq(&before.inner.limiter, &after.inner.limiter));
        assert!(Arc::ptr_eq(
            &before.inner.models[0].gate,
            &after.inner.models[0].gate
        ));
        let moved = config(&format!("[server]\nlisten = \"127.0.0.1:9999\"\n{BASE}"));
        let refused = gw.reload(moved, "c".repeat(64)).await.unwrap_err();
        assert_eq!(refused.kind(), "needs_restart");
        assert!(
            refused.to_string().starts_with("server.listen changed"),
            "{refused}"
        );
        assert_eq!(gw.current().config_hash(), "b".repeat(64));
    }
}

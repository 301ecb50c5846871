//! Sluice's configuration: the TOML file users write, `${ENV_VAR}` expansion in every
//! string, `SLUICE_SECTION__KEY` environment and command-line overrides, model presets,
//! and validation into a [`Config`] whose errors name the key, the value and what was
//! expected.
//!
//! Loading goes: TOML → overrides (environment, then flags) → `${VAR}` expansion →
//! [`RawConfig`](raw) with `deny_unknown_fields` (errors carry the key path through
//! `serde_path_to_error`) → [`Config`] (defaults, presets, cross-field checks). Secrets
//! (API keys, tenant keys, the Redis URL) are [`Secret`]s that never print themselves.
//!
//! ```
//! use std::collections::HashMap;
//! let env: HashMap<String, String> = [("KEY_A".to_string(), "sk-a".to_string())].into();
//! let config = sluice_config::from_str(r#"
//!     [[upstreams]]
//!     name = "dashscope"
//!     base_url = "https://dashscope-intl.aliyuncs.com/compatible-mode/v1"
//!     dialect = "dashscope"
//!     keys = ["${KEY_A}"]
//!     [[models]]
//!     name = "qwen3-max"
//!     upstream = "dashscope"
//! "#, &[], &env).unwrap();
//! assert_eq!(config.models[0].preset, Some("qwen3-max")); // no figures: the preset's
//! assert_eq!(config.upstreams[0].accounts[0].keys[0].expose(), "sk-a");
//! assert_eq!(config.upstreams[0].accounts[0].name, "key-0");
//! ```
//!
//! This crate knows nothing of HTTP or Redis: the gateway and the sidecar both load it.

pub mod duration;
mod env;
mod error;
mod model;
mod presets;
mod raw;
mod secret;
mod validate;

use std::path::Path;

pub use duration::{DurationError, parse_duration};
pub use env::{Env, ProcessEnv};
pub use error::ConfigError;
pub use model::{
    Account, Budget, Config, Dialect, FailurePolicy, LimitSpec, LimitUnit, Model, PacingMode,
    Price, Queue, Retry, Server, Sidecar, Store, Tenant, TenantModelLimits, TenantPriority,
    Tokenizer, Upstream,
};
pub use presets::{PRESETS, PRICES, Preset, preset, price};
pub use secret::{KeyDigest, Secret};

/// One override from the command line: a dotted key (`server.listen`) and its value as text.
pub type Override = (String, String);

/// Loads and validates the file at `path`, applying `SLUICE_SECTION__KEY` variables from
/// `env`, then `flags` (which win).
pub fn load(path: &Path, flags: &[Override], env: &dyn Env) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    from_str(&text, flags, env)
}

/// Like [`load`], reading the file once and returning with the configuration the
/// SHA-256 of the file's bytes as 64 lowercase hexadecimal digits: what
/// `sha256sum sluice.toml` prints, so an operator can tell which replicas run which
/// version of the file.
pub fn load_with_digest(
    path: &Path,
    flags: &[Override],
    env: &dyn Env,
) -> Result<(Config, String), ConfigError> {
    use sha2::Digest;
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| ConfigError::Read {
        path: path.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
    })?;
    let digest = sha2::Sha256::digest(text.as_bytes());
    let hex = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok((from_str(&text, flags, env)?, hex))
}

/// Loads and validates a configuration from TOML text (see [`load`]).
pub fn from_str(text: &str, flags: &[Override], env: &dyn Env) -> Result<Config, ConfigError> {
    let table: toml::Table =
        toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    let mut root = toml::Value::Table(table);
    for (path, value, var) in env::env_overrides(env) {
        env::set_override(&mut root, &path, &value, &var)?;
    }
    for (path, value) in flags {
        env::set_override(
            &mut root,
            path,
            value,
            &format!("--{}", path.replace('.', "-")),
        )?;
    }
    let mut expanded = Vec::new();
    env::expand(&mut root, &mut String::new(), env, &mut expanded)?;
    let secrets_in_file = secrets_written_in_file(&root, &expanded);
    let raw: raw::RawConfig =
        serde_path_to_error::deserialize(root).map_err(|e| ConfigError::Schema {
            path: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
    let mut config = validate::validate(raw)?;
    config.secrets_in_file = secrets_in_file;
    Ok(config)
}

/// The paths of the secrets that are written out in the configuration itself rather
/// than taken from the environment or a secret file: provider keys, tenant and admin
/// keys (their `_sha256` forms are fine), and a password in the Redis URL.
fn secrets_written_in_file(root: &toml::Value, expanded: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let mut check = |path: String, value: Option<&toml::Value>| {
        if value.is_some_and(toml::Value::is_str) && !expanded.contains(&path) {
            found.push(path);
        }
    };
    fn list<'a>(v: &'a toml::Value, k: &str) -> &'a [toml::Value] {
        v.get(k)
            .and_then(toml::Value::as_array)
            .map_or(&[], Vec::as_slice)
    }
    for (i, upstream) in list(root, "upstreams").iter().enumerate() {
        for (k, key) in list(upstream, "keys").iter().enumerate() {
            check(format!("upstreams[{i}].keys[{k}]"), Some(key));
        }
        for (a, account) in list(upstream, "accounts").iter().enumerate() {
            for (k, key) in list(account, "keys").iter().enumerate() {
                check(format!("upstreams[{i}].accounts[{a}].keys[{k}]"), Some(key));
            }
        }
    }
    for (i, tenant) in list(root, "tenants").iter().enumerate() {
        check(format!("tenants[{i}].key"), tenant.get("key"));
    }
    if let Some(sidecar) = root.get("sidecar") {
        let key = sidecar.get("admin_key").filter(|k| k.as_str() != Some(""));
        check("sidecar.admin_key".to_owned(), key);
        let ticket = sidecar.get("ticket_key").filter(|k| k.as_str() != Some(""));
        check("sidecar.ticket_key".to_owned(), ticket);
    }
    let redis_url = root.get("store").and_then(|s| s.get("redis_url"));
    let has_password = redis_url
        .and_then(toml::Value::as_str)
        .and_then(|u| url::Url::parse(u).ok())
        .is_some_and(|u| u.password().is_some());
    if has_password {
        check("store.redis_url".to_owned(), redis_url);
    }
    found
}

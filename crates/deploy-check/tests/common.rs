//! Helpers shared by the tests: the compose file, config loading, URL parsing.

use std::collections::HashMap;

use serde_json::Value;
use sluice_deploy_check::{read, yaml};

/// docker-compose.yml with merge keys applied.
pub(crate) fn compose() -> Value {
    yaml::document(&read("docker-compose.yml")).expect("docker-compose.yml parses")
}

/// The services of docker-compose.yml.
pub(crate) fn services(compose: &Value) -> &serde_json::Map<String, Value> {
    compose["services"].as_object().expect("services")
}

/// A compose `environment` (mapping or `KEY=value` list) as a map, uninterpolated.
pub(crate) fn environment(service: &Value) -> HashMap<String, String> {
    match &service["environment"] {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|s| s.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        _ => HashMap::new(),
    }
}

/// Loads a sluice.toml with the real loader and exactly `env` as the environment.
pub(crate) fn load_config(
    text: &str,
    env: &HashMap<String, String>,
) -> Result<sluice_config::Config, sluice_config::ConfigError> {
    sluice_config::from_str(text, &[], env)
}

/// `scheme://[user@]host:port/path` → (host, port, path); the port defaults by scheme.
pub(crate) fn host_port(url: &str) -> (String, u16, String) {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, String::new()),
    };
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let default = match scheme {
        "https" | "rediss" => 443,
        "http" => 80,
        _ => 6379,
    };
    match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse().expect("a numeric port"), path),
        None => (authority.to_owned(), default, path),
    }
}

/// The port of a `host:port` or `:port` listen string.
pub(crate) fn listen_port(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// The operational paths each binary serves.
pub(crate) fn served_paths(binary: &str) -> &'static [&'static str] {
    match binary {
        "sluice-gateway" | "sluice-sidecar" => &["/healthz", "/readyz", "/metrics"],
        "sluice-sim" => &["/health", "/stats"],
        other => panic!("unknown binary {other}"),
    }
}

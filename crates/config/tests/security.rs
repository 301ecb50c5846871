//! Safe defaults of `[server]`: loopback by default, slow-client timeouts, a bound on
//! concurrent requests, and no unauthenticated gateway beyond this machine unless the
//! operator writes a setting that says it is insecure.

use std::collections::HashMap;
use std::time::Duration;

use sluice_config::{ConfigError, from_str};

const BASE: &str = r#"
[[upstreams]]
name = "sim"
base_url = "http://127.0.0.1:1/v1"
keys = ["k0"]
[[models]]
name = "m"
upstream = "sim"
rpm = 60
"#;

const TENANT: &str = "\n[[tenants]]\nname = \"app\"\nkey = \"tenant-key\"\n";

fn load(server: &str, extra: &str) -> Result<sluice_config::Config, ConfigError> {
    let text = format!("[server]\n{server}\n{BASE}{extra}");
    from_str(&text, &[], &HashMap::<String, String>::new())
}

#[test]
fn server_defaults_are_loopback_with_timeouts_and_a_concurrency_bound() {
    let c = load("", "").unwrap();
    assert!(c.server.listen.ip().is_loopback(), "{}", c.server.listen);
    assert_eq!(c.server.header_timeout, Duration::from_secs(10));
    assert_eq!(c.server.body_timeout, Duration::from_secs(30));
    assert_eq!(c.server.max_connections.get(), 1024);
    assert!(!c.server.insecure_allow_unauthenticated);
    c.check_exposure()
        .expect("loopback without tenants is fine");
}

#[test]
fn server_timeouts_and_bound_are_configurable_and_checked() {
    let c = load(
        "header_timeout = \"2s\"\nbody_timeout = \"250ms\"\nmax_connections = \"8\"",
        "",
    )
    .unwrap();
    assert_eq!(c.server.header_timeout, Duration::from_secs(2));
    assert_eq!(c.server.body_timeout, Duration::from_millis(250));
    assert_eq!(c.server.max_connections.get(), 8);
    for (server, key) in [
        ("header_timeout = \"0s\"", "server.header_timeout"),
        ("body_timeout = \"0s\"", "server.body_timeout"),
        ("max_connections = 0", "server.max_connections"),
        ("max_connections = -1", "server.max_connections"),
    ] {
        let e = load(server, "").unwrap_err().to_string();
        assert!(e.contains(key), "{server}: {e}");
    }
}

#[test]
fn a_public_address_without_tenants_is_refused_naming_the_key() {
    let c = load("listen = \"0.0.0.0:8080\"", "").expect("loading does not check exposure");
    let e = c.check_exposure().unwrap_err();
    assert!(matches!(e, ConfigError::Unauthenticated { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("server.insecure_allow_unauthenticated"),
        "{text}"
    );
    assert!(
        text.contains("0.0.0.0:8080") && text.contains("[[tenants]]"),
        "{text}"
    );
    // IPv6 any-address too.
    let c = load("listen = \"[::]:8080\"", "").unwrap();
    assert!(c.check_exposure().is_err());
}

#[test]
fn a_public_address_is_served_with_tenants_or_the_insecure_setting() {
    let c = load("listen = \"0.0.0.0:8080\"", TENANT).unwrap();
    c.check_exposure()
        .expect("tenants make callers authenticate");
    let c = load(
        "listen = \"0.0.0.0:8080\"\ninsecure_allow_unauthenticated = true",
        "",
    )
    .unwrap();
    c.check_exposure().expect("the operator said so");
    // The setting may come from the environment too.
    let env: HashMap<String, String> = [(
        "SLUICE_SERVER__INSECURE_ALLOW_UNAUTHENTICATED".to_owned(),
        "true".to_owned(),
    )]
    .into();
    let text = format!("[server]\nlisten = \"0.0.0.0:8080\"\n{BASE}");
    let c = from_str(&text, &[], &env).unwrap();
    c.check_exposure().unwrap();
    // The IPv6 loopback is loopback.
    load("listen = \"[::1]:8080\"", "")
        .unwrap()
        .check_exposure()
        .unwrap();
}

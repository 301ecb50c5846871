//! Safe defaults of `[server]`: loopback by default, slow-client timeouts, a bound on
//! concurrent requests, and no unauthenticated gateway beyond this machine unless the
//! operator writes a setting that says it is insecure. Secrets: provider keys from the
//! environment or secret files, tenant and admin keys kept only as SHA-256 digests,
//! and every secret written out in the file itself reported.

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

/// The digest as an operator makes it: `printf %s "$KEY" | sha256sum`.
fn digest_hex(key: &str) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(key.as_bytes())?;
            child.wait_with_output()
        })
        .expect("sha256sum runs");
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

#[test]
fn tenant_and_admin_keys_may_be_stored_as_sha256_digests() {
    let hex = digest_hex("tenant-key");
    let extra = format!(
        "\n[[tenants]]\nname = \"app\"\nkey_sha256 = \"{hex}\"\n[[tenants]]\nname = \"b\"\nkey = \"other-key\"\n[sidecar]\nadmin_key_sha256 = \"{}\"\n",
        digest_hex("admin-key-0123456789").to_uppercase()
    );
    let c = load("", &extra).unwrap();
    let tenant = sluice_config::KeyDigest::of("tenant-key");
    assert!(c.tenants[0].key.matches(&tenant));
    assert!(!c.tenants[1].key.matches(&tenant));
    assert!(
        c.sidecar
            .admin_key
            .as_ref()
            .unwrap()
            .matches(&sluice_config::KeyDigest::of("admin-key-0123456789"))
    );
    // A hashed key that equals another tenant's plain key is a duplicate.
    let dup = format!(
        "\n[[tenants]]\nname = \"a\"\nkey = \"tenant-key\"\n[[tenants]]\nname = \"b\"\nkey_sha256 = \"{hex}\"\n"
    );
    let e = load("", &dup).unwrap_err().to_string();
    assert!(
        e.contains("tenants[1].key") && e.contains("duplicate"),
        "{e}"
    );
}

#[test]
fn bad_key_digests_are_refused_naming_the_key() {
    let hex = digest_hex("tenant-key");
    for (extra, path, says) in [
        (
            "\n[[tenants]]\nname = \"a\"\nkey_sha256 = \"abc\"\n".to_owned(),
            "tenants[0].key_sha256",
            "64 hexadecimal digits",
        ),
        (
            format!(
                "\n[[tenants]]\nname = \"a\"\nkey_sha256 = \"{}zz\"\n",
                &hex[2..]
            ),
            "tenants[0].key_sha256",
            "64 hexadecimal digits",
        ),
        (
            format!("\n[[tenants]]\nname = \"a\"\nkey = \"tenant-key\"\nkey_sha256 = \"{hex}\"\n"),
            "tenants[0].key_sha256",
            "one of key or key_sha256",
        ),
        (
            "\n[[tenants]]\nname = \"a\"\n".to_owned(),
            "tenants[0].key",
            "key_sha256",
        ),
        (
            "\n[sidecar]\nadmin_key_sha256 = \"00\"\n".to_owned(),
            "sidecar.admin_key_sha256",
            "64 hexadecimal digits",
        ),
    ] {
        let e = load("", &extra).unwrap_err().to_string();
        assert!(e.contains(path) && e.contains(says), "{extra}: {e}");
    }
}

#[test]
fn provider_keys_come_from_secret_files_and_the_file_never_shows_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openai-a");
    std::fs::write(&file, "sk-from-file-1234\n").unwrap();
    let text = format!(
        "[[upstreams]]\nname = \"sim\"\nbase_url = \"http://127.0.0.1:1/v1\"\nkeys = [\"${{file:{}}}\", \"${{KEY_B}}\"]\n[[models]]\nname = \"m\"\nupstream = \"sim\"\nrpm = 60\n",
        file.display()
    );
    let env: HashMap<String, String> = [("KEY_B".to_owned(), "sk-from-env".to_owned())].into();
    let c = from_str(&text, &[], &env).unwrap();
    assert_eq!(
        c.upstreams[0].accounts[0].keys[0].expose(),
        "sk-from-file-1234"
    );
    assert_eq!(c.upstreams[0].accounts[1].keys[0].expose(), "sk-from-env");
    assert!(c.secrets_in_file.is_empty(), "{:?}", c.secrets_in_file);

    let missing = text.replace("openai-a", "openai-missing");
    let e = from_str(&missing, &[], &env).unwrap_err();
    assert!(matches!(e, ConfigError::SecretFile { .. }), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("upstreams[0].keys[0]") && e.contains("openai-missing"),
        "{e}"
    );
}

#[test]
fn secrets_written_out_in_the_file_are_listed_by_path() {
    let env: HashMap<String, String> = [("PW".to_owned(), "pw".to_owned())].into();
    let extra = format!(
        "{TENANT}[[tenants]]\nname = \"b\"\nkey_sha256 = \"{}\"\n[sidecar]\nadmin_key = \"admin-key-0123456789\"\n",
        digest_hex("b-key-123")
    );
    let text = format!("[store]\nredis_url = \"redis://:secret@127.0.0.1:6379\"\n{BASE}{extra}");
    let c = from_str(&text, &[], &env).unwrap();
    assert_eq!(
        c.secrets_in_file,
        [
            "upstreams[0].keys[0]",
            "tenants[0].key",
            "sidecar.admin_key",
            "store.redis_url"
        ]
    );
    // From the environment, the same values are not listed; a URL without a password is fine.
    let text = format!("[store]\nredis_url = \"redis://:${{PW}}@127.0.0.1:6379\"\n{BASE}")
        .replace("\"k0\"", "\"${PW}\"");
    let c = from_str(&text, &[], &env).unwrap();
    assert!(c.secrets_in_file.is_empty(), "{:?}", c.secrets_in_file);
    let c = from_str(
        &format!("[store]\nredis_url = \"redis://127.0.0.1:6379\"\n{BASE}"),
        &[],
        &env,
    )
    .unwrap();
    assert_eq!(c.secrets_in_file, ["upstreams[0].keys[0]"]);
}

/// `[sidecar]` with `lines`, plus `extra` after it.
fn load_sidecar(lines: &str, extra: &str) -> Result<sluice_config::Config, ConfigError> {
    load("", &format!("\n[sidecar]\n{lines}\n{extra}"))
}

#[test]
fn a_public_sidecar_without_tenants_is_refused_naming_the_key_and_the_opt_out() {
    let c = load_sidecar("listen = \"0.0.0.0:8081\"", "").expect("loading does not check exposure");
    c.check_exposure()
        .expect("the gateway's own listener is loopback");
    let e = c.check_sidecar_exposure().unwrap_err();
    assert!(
        matches!(e, ConfigError::SidecarUnauthenticated { .. }),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.starts_with("sidecar.listen: 0.0.0.0:8081 is not a loopback address")
            && text.contains("[[tenants]]")
            && text.contains("sidecar.insecure_allow_unauthenticated = true"),
        "{text}"
    );
    load_sidecar("listen = \"[::]:8081\"", "")
        .unwrap()
        .check_sidecar_exposure()
        .unwrap_err();
    load_sidecar("listen = \"0.0.0.0:8081\"", TENANT)
        .unwrap()
        .check_sidecar_exposure()
        .expect("tenants make callers authenticate");
    let c = load_sidecar(
        "listen = \"0.0.0.0:8081\"\ninsecure_allow_unauthenticated = true",
        "",
    )
    .unwrap();
    assert!(c.sidecar.insecure_allow_unauthenticated);
    c.check_sidecar_exposure().expect("the operator said so");
    let c = load_sidecar("", "").unwrap();
    assert!(!c.sidecar.insecure_allow_unauthenticated);
    c.check_sidecar_exposure().expect("loopback by default");
}

#[test]
fn admin_listeners_off_loopback_need_the_admin_key() {
    const KEY: &str = "admin_key = \"admin-key-0123456789\"";
    // Gateway.
    let c = load("admin_listen = \"127.0.0.1:9090\"", "").unwrap();
    assert_eq!(
        c.server.admin_listen,
        Some("127.0.0.1:9090".parse().unwrap())
    );
    c.check_exposure().expect("loopback admin listener");
    let c = load("admin_listen = \"0.0.0.0:9090\"", TENANT).unwrap();
    let e = c.check_exposure().unwrap_err();
    assert!(
        matches!(e, ConfigError::AdminUnauthenticated { .. }),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.starts_with("server.admin_listen: 0.0.0.0:9090 is not a loopback address")
            && text.contains("sidecar.admin_key"),
        "{text}"
    );
    load(
        "admin_listen = \"0.0.0.0:9090\"",
        &format!("{TENANT}\n[sidecar]\n{KEY}"),
    )
    .unwrap()
    .check_exposure()
    .expect("the admin key guards it");
    // Sidecar.
    let c = load_sidecar("admin_listen = \"0.0.0.0:9091\"", "").unwrap();
    let text = c.check_sidecar_exposure().unwrap_err().to_string();
    assert!(
        text.starts_with("sidecar.admin_listen: 0.0.0.0:9091"),
        "{text}"
    );
    load_sidecar(&format!("admin_listen = \"0.0.0.0:9091\"\n{KEY}"), "")
        .unwrap()
        .check_sidecar_exposure()
        .expect("the admin key guards it");
    assert_eq!(load("", "").unwrap().server.admin_listen, None);
    assert_eq!(load("", "").unwrap().sidecar.admin_listen, None);
    // Not an address.
    for (text, path) in [
        (
            load("admin_listen = \"localhost\"", ""),
            "server.admin_listen",
        ),
        (
            load_sidecar("admin_listen = \"9091\"", ""),
            "sidecar.admin_listen",
        ),
    ] {
        let e = text.unwrap_err().to_string();
        assert!(e.contains(path) && e.contains("an address such as"), "{e}");
    }
}

#[test]
fn the_ticket_key_is_a_secret_of_at_least_32_characters() {
    let env: HashMap<String, String> = [("TICKET_KEY".to_owned(), "t".repeat(40))].into();
    let text = format!("{BASE}\n[sidecar]\nticket_key = \"${{TICKET_KEY}}\"\n");
    let c = from_str(&text, &[], &env).unwrap();
    let key = c.sidecar.ticket_key.as_ref().expect("configured");
    assert_eq!(key.expose(), "t".repeat(40));
    assert_eq!(format!("{key} {key:?}"), "***** *****");
    assert!(!format!("{c:?}").contains(&"t".repeat(40)));
    assert_eq!(
        c.secrets_in_file,
        ["upstreams[0].keys[0]"],
        "from the environment: not listed"
    );
    // Written out in the file: accepted, and reported.
    let c = load_sidecar(&format!("ticket_key = \"{}\"", "x".repeat(32)), "").unwrap();
    assert_eq!(
        c.secrets_in_file,
        ["upstreams[0].keys[0]", "sidecar.ticket_key"]
    );
    // Too short: the error names the key and the length, never the value.
    let e = load_sidecar("ticket_key = \"short-ticket-key\"", "")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sidecar.ticket_key")
            && e.contains("a key of 16 characters")
            && e.contains("at least 32 characters")
            && !e.contains("short-ticket-key"),
        "{e}"
    );
    // Unset or empty: none (a random key per process).
    assert!(load_sidecar("", "").unwrap().sidecar.ticket_key.is_none());
    assert!(
        load_sidecar("ticket_key = \"\"", "")
            .unwrap()
            .sidecar
            .ticket_key
            .is_none()
    );
}

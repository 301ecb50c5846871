//! Safe defaults: the gateway binds loopback unless told otherwise, and refuses to
//! serve a non-loopback address without `[[tenants]]` unless
//! `server.insecure_allow_unauthenticated = true`, naming that key.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const BASE: &str = "[[upstreams]]\nname = \"nowhere\"\nbase_url = \"http://127.0.0.1:9/v1\"\nkeys = [\"sk-x\"]\n[[models]]\nname = \"m\"\nupstream = \"nowhere\"\nrpm = 60\n";
const TENANT: &str = "[[tenants]]\nname = \"app\"\nkey = \"tenant-key\"\n";

/// Starts the binary on `listen`; returns `Ok(first stdout line)` if it started (and
/// stops it), `Err(stderr)` if it exited.
fn start(toml: &str, listen: &str, env: &[(&str, &str)]) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, toml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-gateway"))
        .arg("--config")
        .arg(&path)
        .args(["--listen", listen])
        .envs(env.iter().copied())
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if line.starts_with("listening on ") {
        let _ = child.kill();
        let _ = child.wait();
        return Ok(line);
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    Err(String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_public_address_without_tenants_is_refused_at_start_naming_the_setting() {
    let err = start(BASE, "0.0.0.0:0", &[]).unwrap_err();
    assert!(
        err.contains("server.insecure_allow_unauthenticated") && err.contains("[[tenants]]"),
        "{err}"
    );
    assert!(err.contains("0.0.0.0:0"), "{err}");
}

#[test]
fn a_public_address_is_served_with_tenants_or_the_insecure_setting() {
    start(&format!("{BASE}{TENANT}"), "0.0.0.0:0", &[]).expect("tenants authenticate callers");
    start(
        BASE,
        "0.0.0.0:0",
        &[("SLUICE_SERVER__INSECURE_ALLOW_UNAUTHENTICATED", "true")],
    )
    .expect("the operator said so");
    start(BASE, "127.0.0.1:0", &[]).expect("loopback needs no tenants");
}

#[tokio::test]
async fn run_refuses_the_same_configuration() {
    let config = sluice_config::from_str(
        &format!("[server]\nlisten = \"0.0.0.0:0\"\n{BASE}"),
        &[],
        &std::collections::HashMap::<String, String>::new(),
    )
    .unwrap();
    let err = sluice_proxy::run(config, std::future::ready(()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, sluice_proxy::StartError::Config(_)),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("server.insecure_allow_unauthenticated")
    );
}

//! `sluice config check` over every configuration file the repository ships
//! (`examples/`, `deploy/`, the Kubernetes ConfigMap's `sluice.toml`), and over a broken
//! one: exit status, the precise message, `--json`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.toml` under `dir`, recursively, but the simulator's own (`sim.*.toml`).
fn sluice_configs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            sluice_configs(&path, out);
        } else if name.ends_with(".toml") && !name.starts_with("sim.") {
            out.push(path);
        }
    }
}

/// Every `${NAME}` without a default in `text` (comments included: setting one more
/// variable is harmless).
fn required_vars(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for piece in text.split("${").skip(1) {
        let inner = piece.split('}').next().unwrap_or("");
        if inner.contains(":-") || inner.starts_with("file:") || inner.is_empty() {
            continue;
        }
        if inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.push(inner.to_owned());
        }
    }
    out
}

/// A plausible value for a variable: a URL for `*_URL`, a host label for a resource
/// name, else a secret long enough for every key rule.
fn placeholder(var: &str) -> String {
    if var.contains("REDIS") {
        "redis://127.0.0.1:6379/0".to_owned()
    } else if var.ends_with("_URL") {
        "http://127.0.0.1:9/v1".to_owned()
    } else if var.ends_with("_RESOURCE") {
        "example".to_owned()
    } else {
        format!("placeholder-{}-0123456789abcdef", var.to_lowercase())
    }
}

fn sluice(args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        // Hermetic: no SLUICE_* override of the machine running the tests applies.
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("sluice runs")
}

#[test]
fn every_shipped_configuration_passes_config_check() {
    let mut files = Vec::new();
    sluice_configs(&root().join("examples"), &mut files);
    sluice_configs(&root().join("deploy"), &mut files);
    files.sort();
    // The ConfigMap the Kubernetes base generates is one of them.
    let kustomization =
        std::fs::read_to_string(root().join("deploy/kubernetes/base/kustomization.yaml"))
            .expect("the base kustomization");
    assert!(
        kustomization.contains("configMapGenerator") && kustomization.contains("- sluice.toml"),
        "the base's ConfigMap is no longer generated from sluice.toml: update this test"
    );
    let configmap = root().join("deploy/kubernetes/base/sluice.toml");
    assert!(files.contains(&configmap), "{files:?}");
    assert!(files.len() >= 8, "too few files found: {files:?}");
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read");
        let env: Vec<(String, String)> = required_vars(&text)
            .into_iter()
            .map(|v| {
                let value = placeholder(&v);
                (v, value)
            })
            .collect();
        let shown = path
            .strip_prefix(root())
            .unwrap_or(path)
            .display()
            .to_string();
        let out = sluice(&["config", "check", path.to_str().unwrap()], &env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{shown}: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(": ok (sha256 "), "{shown}: {stdout}");
        // One row per model × account, with its limits.
        let table: toml::Table = toml::from_str(&text).expect("TOML");
        for m in table["models"].as_array().expect("models") {
            let name = m["name"].as_str().expect("name");
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with(name) && l.contains('/')),
                "{shown}: no limits row for {name}: {stdout}"
            );
        }
        let json = sluice(&["config", "check", "--json", path.to_str().unwrap()], &env);
        let v: serde_json::Value =
            serde_json::from_slice(&json.stdout).expect("--json prints JSON");
        assert_eq!(v["ok"], true, "{shown}: {v}");
        assert!(
            v["config"]["models"][0]["limits"][0]["amount"]
                .as_u64()
                .is_some(),
            "{shown}: {v}"
        );
    }
}

#[test]
fn a_broken_file_fails_with_the_precise_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        r#"
[[upstreams]]
name = "u"
base_url = "http://127.0.0.1:9/v1"
keys = ["${MISSING_KEY}"]
[[models]]
name = "m"
upstream = "u"
rpm = 10
"#,
    )
    .unwrap();
    let out = sluice(&["config", "check", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("upstreams[0].keys[0]: environment variable MISSING_KEY is not set"),
        "{stderr}"
    );
    let out = sluice(&["config", "check", "--json", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("MISSING_KEY"), "{v}");

    // A limit of the wrong type names its key path.
    std::fs::write(
        &path,
        "[[models]]\nname = \"m\"\nupstream = \"u\"\nrpm = \"x\"\n",
    )
    .unwrap();
    let out = sluice(&["config", "check", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("models[0].rpm"), "{stderr}");
}

//! Reads Sluice's deployment files as data so that tests can hold them against what the
//! binaries expect: YAML documents as [`serde_json::Value`]s ([`yaml`]), a minimal
//! Kustomize renderer ([`kustomize`]), the stages of the Dockerfile ([`dockerfile`]),
//! Compose's `${VAR:-default}` interpolation ([`interpolate`]) and the metric names the
//! workspace's code emits ([`metrics`]).
//!
//! The checks themselves are the integration tests (`tests/`); this crate ships nothing.

pub mod dockerfile;
pub mod kustomize;
pub mod metrics;
pub mod yaml;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The workspace root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/deploy-check sits two levels below the root")
        .to_path_buf()
}

/// The text of a file under the workspace root; panics with the path when unreadable.
pub fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Compose-style interpolation: `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `$VAR` and
/// `$$`; a variable not in `vars` is the empty string (or its default).
pub fn interpolate(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix('{') {
            let end = after.find('}').unwrap_or(after.len());
            let inner = &after[..end];
            let (name, default, empty_too) = if let Some((n, d)) = inner.split_once(":-") {
                (n, Some(d), true)
            } else if let Some((n, d)) = inner.split_once('-') {
                (n, Some(d), false)
            } else {
                (inner, None, false)
            };
            let value = vars.get(name).filter(|v| !(empty_too && v.is_empty()));
            match (value, default) {
                (Some(v), _) => out.push_str(v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {}
            }
            rest = after.get(end + 1..).unwrap_or("");
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if let Some(v) = vars.get(&rest[..end]) {
                out.push_str(v);
            }
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

/// `KEY=value` lines of an env file (`.env.example`); comments and blank lines skipped.
pub fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect()
}

/// The `${NAME}` references of a text that have no default (`${NAME:-x}` is excluded).
pub fn required_vars(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        rest = &rest[i + 2..];
        let end = rest.find('}').unwrap_or(rest.len());
        let inner = &rest[..end];
        if !inner.contains(":-") && !inner.contains('-') && !out.iter().any(|v| v == inner) {
            out.push(inner.to_owned());
        }
        rest = &rest[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_like_compose() {
        let vars: HashMap<String, String> =
            [("A".into(), "x".into()), ("E".into(), "".into())].into();
        assert_eq!(
            interpolate("${A}/${B:-d}/${E:-d}/${E-d}/$A/$$", &vars),
            "x/d/d//x/$"
        );
        assert_eq!(required_vars("${A} ${B:-x} ${A} ${C}"), vec!["A", "C"]);
    }

    #[test]
    fn parses_env_files() {
        let env = parse_env_file("# c\nA=1\n\nB=\"two\"\n");
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "two");
    }
}

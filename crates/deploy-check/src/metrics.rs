//! The Prometheus metric names the workspace's code emits (`counter!`, `gauge!` and
//! `histogram!` calls with a literal name), and the names a PromQL expression uses.

use std::collections::BTreeSet;
use std::path::Path;

/// Every metric name emitted by a `.rs` file under `crates/*/src`.
pub fn emitted(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(crates) = std::fs::read_dir(root.join("crates")) else {
        return out;
    };
    for c in crates.flatten() {
        scan(&c.path().join("src"), &mut out);
    }
    out
}

fn scan(dir: &Path, out: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            scan(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs")
            && let Ok(text) = std::fs::read_to_string(&p)
        {
            names_in_source(&text, out);
        }
    }
}

/// Adds the literal names of metric macros in Rust source `text` to `out`.
pub fn names_in_source(text: &str, out: &mut BTreeSet<String>) {
    for mac in ["counter!(", "gauge!(", "histogram!("] {
        let mut rest = text;
        while let Some(i) = rest.find(mac) {
            rest = &rest[i + mac.len()..];
            let t = rest.trim_start();
            if let Some(lit) = t.strip_prefix('"')
                && let Some(end) = lit.find('"')
            {
                out.insert(lit[..end].to_owned());
            }
        }
    }
}

/// The `sluice_*` metric names of a PromQL expression, histogram suffixes removed.
pub fn names_in_promql(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("sluice_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        out.insert(base.to_owned());
        rest = &tail[end..];
    }
    out
}

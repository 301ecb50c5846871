//! `${ENV_VAR}` and `${file:/path}` expansion in every string of the file, and
//! `SLUICE_SECTION__KEY` overrides applied before the schema is checked (so errors
//! still name the key).

use crate::error::ConfigError;

/// Where environment variables come from (the process, or a map in tests).
pub trait Env {
    /// The variable's value, if set.
    fn var(&self, name: &str) -> Option<String>;
    /// Every variable (for `SLUICE_*__*` overrides).
    fn vars(&self) -> Vec<(String, String)>;
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars().collect()
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
    fn vars(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Expands `${NAME}`, `${NAME:-default}` and `${file:/path}` (the file's content, less
/// one trailing newline: a mounted secret) in every string of `value`; `$$` is a
/// literal `$`. Returns the paths of the strings that took a value from the
/// environment or a file.
pub(crate) fn expand(
    value: &mut toml::Value,
    path: &mut String,
    env: &dyn Env,
    expanded: &mut Vec<String>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(s) if s.contains('$') => {
            let (text, substituted) = expand_str(s, env).map_err(|e| match e {
                ExpandError::MissingVar(var) => ConfigError::MissingEnv {
                    path: path.clone(),
                    var,
                },
                ExpandError::File { file, error } => ConfigError::SecretFile {
                    path: path.clone(),
                    file,
                    error,
                },
            })?;
            *s = text;
            if substituted {
                expanded.push(path.clone());
            }
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                expand(item, path, env, expanded)?;
                path.truncate(len);
            }
        }
        toml::Value::Table(table) => {
            for (k, item) in table.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                expand(item, path, env, expanded)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Why a `${...}` could not be expanded.
#[derive(Debug, PartialEq)]
enum ExpandError {
    /// The variable is not set and has no default.
    MissingVar(String),
    /// The secret file cannot be read.
    File { file: String, error: String },
}

/// The content of a secret file, less one trailing newline (`echo key > file`).
fn read_secret_file(file: &str) -> Result<String, ExpandError> {
    let fail = |error: String| ExpandError::File {
        file: file.to_owned(),
        error,
    };
    if !std::path::Path::new(file).is_absolute() {
        return Err(fail("the path is not absolute".to_owned()));
    }
    let mut text = std::fs::read_to_string(file).map_err(|e| fail(e.to_string()))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(fail("the file is empty".to_owned()));
    }
    Ok(text)
}

/// Expands one string; returns it and whether anything came from the environment or a file.
fn expand_str(s: &str, env: &dyn Env) -> Result<(String, bool), ExpandError> {
    let mut out = String::with_capacity(s.len());
    let mut substituted = false;
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                out.push_str(rest);
                return Ok((out, substituted));
            };
            let inner = &after[..end];
            if let Some(file) = inner.strip_prefix("file:") {
                out.push_str(&read_secret_file(file)?);
                substituted = true;
                rest = &after[end + 1..];
                continue;
            }
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            match (env.var(name), default) {
                (Some(v), _) if !(v.is_empty() && default.is_some()) => {
                    out.push_str(&v);
                    substituted = true;
                }
                (_, Some(d)) => out.push_str(d),
                (Some(v), None) => {
                    out.push_str(&v);
                    substituted = true;
                }
                (None, None) => return Err(ExpandError::MissingVar(name.to_owned())),
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok((out, substituted))
}

/// Applies an override `section.key = text` to the raw tree. The text is read as a TOML
/// value when it is one (`3`, `true`, `["a","b"]`), else as a string. A part that is a
/// number indexes an array of tables: `upstreams.0.base_url` is the `base_url` of the
/// first `[[upstreams]]` (variable `SLUICE_UPSTREAMS__0__BASE_URL`), which must exist.
pub(crate) fn set_override(
    root: &mut toml::Value,
    path: &str,
    text: &str,
    source: &str,
) -> Result<(), ConfigError> {
    let value = parse_scalar(text);
    let parts: Vec<&str> = path.split('.').collect();
    let fail = |message: String| ConfigError::Override {
        origin: source.to_owned(),
        message,
    };
    let mut node = root;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if let toml::Value::Array(items) = node {
            let len = items.len();
            let at = parts[..i].join(".");
            let Some(item) = part.parse::<usize>().ok().and_then(|n| items.get_mut(n)) else {
                return Err(fail(format!(
                    "`{at}` is a list of {len}: `{part}` is not one of its indexes (0 to {})",
                    len.saturating_sub(1)
                )));
            };
            if last {
                return Err(fail(format!(
                    "`{at}.{part}` is a whole entry: override one of its keys"
                )));
            }
            node = item;
            continue;
        }
        let toml::Value::Table(table) = node else {
            return Err(fail(format!("`{}` is not a table", parts[..i].join("."))));
        };
        if last {
            table.insert((*part).to_owned(), value);
            return Ok(());
        }
        node = table
            .entry((*part).to_owned())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    Ok(())
}

fn parse_scalar(text: &str) -> toml::Value {
    let wrapped = format!("v = {text}");
    match toml::from_str::<toml::Table>(&wrapped) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(text.to_owned())),
        Err(_) => toml::Value::String(text.to_owned()),
    }
}

/// The `SLUICE_SECTION__KEY=value` variables, as (`section.key`, value, variable name).
pub(crate) fn env_overrides(env: &dyn Env) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = env
        .vars()
        .into_iter()
        .filter_map(|(name, value)| {
            let rest = name.strip_prefix("SLUICE_")?;
            if !rest.contains("__") {
                return None;
            }
            let path = rest
                .split("__")
                .map(|p| p.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(".");
            Some((path, value, name))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overrides_index_arrays_of_tables() {
        let mut root: toml::Value = toml::from_str(
            "[[upstreams]]\nname = \"a\"\nbase_url = \"https://a\"\n[[upstreams]]\nname = \"b\"\nbase_url = \"https://b\"",
        )
        .unwrap();
        set_override(&mut root, "upstreams.1.base_url", "http://sim/v1", "V").unwrap();
        assert_eq!(
            root["upstreams"][1]["base_url"].as_str(),
            Some("http://sim/v1")
        );
        assert_eq!(root["upstreams"][0]["base_url"].as_str(), Some("https://a"));
        let err = set_override(&mut root, "upstreams.2.base_url", "x", "V").unwrap_err();
        assert!(
            err.to_string().contains("`upstreams` is a list of 2"),
            "{err}"
        );
        let err = set_override(&mut root, "upstreams.x.base_url", "x", "V").unwrap_err();
        assert!(
            err.to_string().contains("`x` is not one of its indexes"),
            "{err}"
        );
    }

    #[test]
    fn expands_defaults_and_escapes() {
        let e = env(&[("A", "x"), ("EMPTY", "")]);
        let text = |s: &str| expand_str(s, &e).map(|(t, _)| t);
        assert_eq!(expand_str("${A}-${A}", &e).unwrap(), ("x-x".into(), true));
        assert_eq!(
            expand_str("${B:-dflt}", &e).unwrap(),
            ("dflt".into(), false)
        );
        assert_eq!(text("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(
            expand_str("$$5 and $x", &e).unwrap(),
            ("$5 and $x".into(), false)
        );
        assert_eq!(
            text("${B}").unwrap_err(),
            ExpandError::MissingVar("B".into())
        );
        assert_eq!(text("${unclosed").unwrap(), "${unclosed");
    }

    #[test]
    fn secret_files_are_read_less_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, content: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, content).unwrap();
            p.display().to_string()
        };
        let e = env(&[]);
        let crlf = file("crlf", "sk-a\r\n");
        let two = file("two", "sk-b\n\n");
        assert_eq!(
            expand_str(&format!("${{file:{crlf}}}"), &e).unwrap(),
            ("sk-a".into(), true)
        );
        assert_eq!(
            expand_str(&format!("${{file:{two}}}"), &e).unwrap().0,
            "sk-b\n"
        );
        let empty = file("empty", "\n");
        for (arg, why) in [
            (empty.as_str(), "empty"),
            ("relative/key", "not absolute"),
            ("/nonexistent/sluice/key", "No such file"),
        ] {
            match expand_str(&format!("${{file:{arg}}}"), &e).unwrap_err() {
                ExpandError::File { file, error } => {
                    assert_eq!(file, arg);
                    assert!(error.contains(why), "{error}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn overrides_parse_scalars() {
        let mut root = toml::Value::Table(Default::default());
        set_override(&mut root, "store.expected_replicas", "3", "t").unwrap();
        set_override(&mut root, "server.listen", "127.0.0.1:9", "t").unwrap();
        assert_eq!(root["store"]["expected_replicas"].as_integer(), Some(3));
        assert_eq!(root["server"]["listen"].as_str(), Some("127.0.0.1:9"));
    }

    #[test]
    fn only_double_underscore_variables_are_overrides() {
        let e = env(&[
            ("SLUICE_KEY_CHECKOUT", "k"),
            ("SLUICE_STORE__REDIS_URL", "redis://x"),
        ]);
        let o = env_overrides(&e);
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].0, "store.redis_url");
    }
}

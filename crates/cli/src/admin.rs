//! `sluice tenants …`, `sluice accounts …`, `sluice limits …`, `sluice changes`: calls
//! to the admin API of a gateway's or sidecar's admin listener (behind the admin key).
//! Tenant keys never travel: the CLI sends only their SHA-256.

use std::time::Duration;

use serde_json::Value;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum AdminCallError {
    /// The request failed.
    #[error("cannot reach {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    /// The API refused: its own message.
    #[error("{url} refused ({status}): {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
}

/// `method` `base` + `path` with the admin key and `body`; the answer's JSON.
pub(crate) fn call(
    method: reqwest::Method,
    base: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Result<Value, AdminCallError> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let unreachable = |source| AdminCallError::Unreachable {
        url: url.clone(),
        source,
    };
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(unreachable)?;
    let mut req = client.request(method, &url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Ok(who) = std::env::var("USER") {
        req = req.header("x-sluice-operator", who);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().map_err(unreachable)?;
    let status = resp.status().as_u16();
    let text = resp.text().map_err(unreachable)?;
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if status != 200 {
        let message = v["error"]["message"]
            .as_str()
            .map_or_else(|| v.to_string(), str::to_owned);
        return Err(AdminCallError::Refused {
            url,
            status,
            message,
        });
    }
    Ok(v)
}

/// The digest to send for a tenant key: `--key-sha256` as given, or the SHA-256 of
/// the key read from standard input (one line), computed here.
pub(crate) fn key_sha256(given: Option<String>) -> Result<String, String> {
    if let Some(h) = given {
        return sluice_config::KeyDigest::from_hex(&h)
            .map(|d| d.to_hex())
            .ok_or_else(|| "--key-sha256 must be 64 hexadecimal digits".to_owned());
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the key from standard input: {e}"))?;
    let key = line.trim_end_matches(['\n', '\r']);
    if key.len() < 16 {
        return Err("the key (read from standard input) must be at least 16 characters".into());
    }
    Ok(sluice_config::KeyDigest::of(key).to_hex())
}

/// `requests=100/60s` → `{"requests": 100, "per": "60s"}`.
pub(crate) fn parse_limit(text: &str) -> Result<Value, String> {
    let err =
        || format!("{text:?}: write UNIT=AMOUNT/WINDOW, e.g. requests=100/60s or tokens=50000/1m");
    let (unit, rest) = text.split_once('=').ok_or_else(err)?;
    let (amount, per) = rest.split_once('/').ok_or_else(err)?;
    let amount: u64 = amount.parse().map_err(|_| err())?;
    if !["requests", "tokens", "input_tokens", "output_tokens"].contains(&unit) {
        return Err(err());
    }
    let mut m = serde_json::Map::new();
    m.insert(unit.to_owned(), amount.into());
    m.insert("per".into(), per.into());
    Ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_as_the_api_takes_them() {
        assert_eq!(
            parse_limit("requests=100/60s").unwrap(),
            serde_json::json!({"requests": 100, "per": "60s"})
        );
        assert!(parse_limit("rpm=1").is_err());
        assert!(parse_limit("requests=x/1m").is_err());
    }
}

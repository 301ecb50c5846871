//! `sluice quotas`: a running gateway's or sidecar's `GET /v1/quotas` as a table of
//! models × accounts × limits (configured, effective, used, a bar of the window's
//! fill, cooldown, state), or as the JSON it answered.

use std::time::Duration;

use serde::Deserialize;

use crate::check::window_text;
use crate::table::{Cell, Colour, Table};

/// Why the quotas could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum QuotasError {
    /// The request failed (connection refused, timeout).
    #[error("cannot reach {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    /// It answered with an error.
    #[error("{url} answered {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
    /// The answer is not the `/v1/quotas` shape.
    #[error("{url} answered something that is not /v1/quotas: {message}")]
    Shape { url: String, message: String },
}

/// The `/v1/quotas` answer, as far as the table needs it.
#[derive(Debug, Deserialize)]
pub(crate) struct Quotas {
    #[serde(default)]
    pub(crate) config_sha256: Option<String>,
    pub(crate) models: Vec<Model>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Model {
    pub(crate) model: String,
    pub(crate) accounts: Vec<Account>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Account {
    pub(crate) account: String,
    pub(crate) state: String,
    #[serde(default)]
    pub(crate) disabled_reason: Option<String>,
    #[serde(default)]
    pub(crate) cooldown_ms: Option<u64>,
    #[serde(default)]
    pub(crate) limits: Vec<Limit>,
    #[serde(default)]
    pub(crate) error: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Limit {
    pub(crate) unit: String,
    pub(crate) window_ms: u64,
    pub(crate) configured: u64,
    pub(crate) effective: u64,
    pub(crate) used: u64,
}

/// `GET {base}/v1/quotas` with `key` as the bearer token: the body as JSON.
pub(crate) fn fetch(base: &str, key: Option<&str>) -> Result<serde_json::Value, QuotasError> {
    let url = format!("{}/v1/quotas", base.trim_end_matches('/'));
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|source| QuotasError::Unreachable {
            url: url.clone(),
            source,
        })?;
    let mut req = client.get(&url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().map_err(|source| QuotasError::Unreachable {
        url: url.clone(),
        source,
    })?;
    let status = resp.status().as_u16();
    let body = resp.text().map_err(|source| QuotasError::Unreachable {
        url: url.clone(),
        source,
    })?;
    if status != 200 {
        return Err(QuotasError::Refused { url, status, body });
    }
    serde_json::from_str(&body).map_err(|e| QuotasError::Shape {
        url,
        message: e.to_string(),
    })
}

/// The shape the table reads.
pub(crate) fn parse(v: &serde_json::Value) -> Result<Quotas, String> {
    Quotas::deserialize(v).map_err(|e| e.to_string())
}

/// A bar of `width` cells filled in proportion to `used / limit` (over-full shows full).
pub(crate) fn bar(used: u64, limit: u64, width: usize) -> String {
    let fill = if limit == 0 {
        width
    } else {
        ((used as f64 / limit as f64) * width as f64)
            .round()
            .min(width as f64) as usize
    };
    format!("{}{}", "█".repeat(fill), "░".repeat(width - fill))
}

/// The configured window of a reported one: `/v1/quotas` shows windows with the
/// latency allowance (1% + 5 ms, `sluice_recalibrate`'s catalog), the table the figure
/// the operator wrote.
pub(crate) fn configured_window_ms(window_ms: u64) -> u64 {
    let base = window_ms.saturating_sub(5) * 100 / 101;
    let whole = (base + 500) / 1000 * 1000;
    if whole > 0 && base.abs_diff(whole) * 100 <= whole {
        whole
    } else {
        base
    }
}

fn fill_colour(used: u64, limit: u64) -> Colour {
    let ratio = if limit == 0 {
        1.0
    } else {
        used as f64 / limit as f64
    };
    if ratio >= 0.9 {
        Colour::Red
    } else if ratio >= 0.7 {
        Colour::Yellow
    } else {
        Colour::Green
    }
}

fn state_colour(state: &str) -> Colour {
    match state {
        "active" => Colour::Green,
        "cooldown" => Colour::Yellow,
        _ => Colour::Red,
    }
}

/// The table: one row per model × account × limit.
pub(crate) fn render(q: &Quotas, colours: bool) -> String {
    let mut t = Table::new(&[
        "model",
        "account",
        "state",
        "limit",
        "configured",
        "effective",
        "used",
        "fill",
        "cooldown",
    ])
    .with_colours(colours);
    for m in &q.models {
        for a in &m.accounts {
            let mut state = a.state.clone();
            if let Some(r) = &a.disabled_reason {
                state = format!("{state} ({r})");
            }
            let cooldown = a.cooldown_ms.map_or_else(
                || "-".to_owned(),
                |ms| format!("{:.1}s", ms as f64 / 1000.0),
            );
            if a.limits.is_empty() {
                t.row(vec![
                    m.model.clone().into(),
                    a.account.clone().into(),
                    Cell::coloured(state, state_colour(&a.state)),
                    a.error.clone().unwrap_or_default().into(),
                ]);
                continue;
            }
            for l in &a.limits {
                let effective = if l.effective < l.configured {
                    Cell::coloured(l.effective.to_string(), Colour::Yellow)
                } else {
                    l.effective.to_string().into()
                };
                let pct = l
                    .used
                    .saturating_mul(100)
                    .checked_div(l.effective)
                    .map_or(100, |p| p.min(999));
                t.row(vec![
                    m.model.clone().into(),
                    a.account.clone().into(),
                    Cell::coloured(state.clone(), state_colour(&a.state)),
                    format!(
                        "{}/{}",
                        l.unit,
                        window_text(configured_window_ms(l.window_ms))
                    )
                    .into(),
                    l.configured.to_string().into(),
                    effective,
                    l.used.to_string().into(),
                    Cell::coloured(
                        format!("{} {pct:>3}%", bar(l.used, l.effective, 10)),
                        fill_colour(l.used, l.effective),
                    ),
                    Cell::coloured(
                        cooldown.clone(),
                        if a.cooldown_ms.is_some() {
                            Colour::Yellow
                        } else {
                            Colour::Dim
                        },
                    ),
                ]);
            }
        }
    }
    let mut out = String::new();
    if let Some(h) = &q.config_sha256 {
        out.push_str(&format!("config sha256 {h}\n"));
    }
    out.push_str(&t.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_shown_as_configured() {
        assert_eq!(configured_window_ms(60_605), 60_000);
        assert_eq!(configured_window_ms(1_015), 1_000);
        assert_eq!(configured_window_ms(86_400_000 + 864_000 + 5), 86_400_000);
    }

    #[test]
    fn bars_fill_in_proportion_and_saturate() {
        assert_eq!(bar(0, 10, 10), "░░░░░░░░░░");
        assert_eq!(bar(5, 10, 10), "█████░░░░░");
        assert_eq!(bar(30, 10, 10), "██████████");
        assert_eq!(bar(1, 0, 4), "████");
    }

    #[test]
    fn a_quotas_answer_renders_one_row_per_limit() {
        let v = serde_json::json!({"config_sha256": "ab", "models": [{"model": "m", "upstream": "u", "upstream_model": "m", "accounts": [
            {"account": "key-0", "state": "cooldown", "cooldown_ms": 1500, "pacing_permille": 1000, "booked_ahead_ms": 0, "limits": [
                {"id": "r60605", "unit": "requests", "window_ms": 60605, "configured": 10, "effective": 8, "used": 4},
                {"id": "t60605", "unit": "tokens", "window_ms": 60605, "configured": 1000, "effective": 1000, "used": 950}]}]}]});
        let out = render(&parse(&v).unwrap(), false);
        assert!(out.starts_with("config sha256 ab\n"), "{out}");
        assert!(out.contains("requests/1m"), "{out}");
        assert!(out.contains("█████░░░░░  50%"), "{out}");
        assert!(out.contains("██████████  95%"), "{out}");
        assert!(out.contains("1.5s"), "{out}");
        assert_eq!(out.lines().count(), 4, "{out}");
    }
}

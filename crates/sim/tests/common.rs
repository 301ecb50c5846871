//! Shared harness: an in-process simulator on a manual clock, an HTTP client, SSE parsing.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Client, Response};
use serde_json::Value;
use sluice_sim::{Config, ManualClock, Sim, SimHandle, StatsReport};

pub(crate) struct Harness {
    pub(crate) handle: SimHandle,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) client: Client,
}

/// Starts a simulator from TOML on a manual clock.
pub(crate) async fn start(toml: &str) -> Harness {
    let config = Config::from_toml_str(toml).expect("valid test config");
    start_config(config).await
}

pub(crate) async fn start_config(config: Config) -> Harness {
    let clock = ManualClock::new();
    let sim = Sim::with_clock(config, clock.clone()).expect("valid config");
    let handle = sluice_sim::spawn_sim(sim).await.expect("bind");
    Harness {
        handle,
        clock,
        client: Client::new(),
    }
}

impl Harness {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handle.root_url())
    }

    pub(crate) fn advance_ms(&self, ms: u64) {
        self.clock.advance(Duration::from_millis(ms));
    }

    pub(crate) async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> Response {
        let mut req = self.client.post(self.url(path)).json(body);
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        req.send().await.expect("request sent")
    }

    pub(crate) async fn post_raw(&self, path: &str, key: &str, body: &'static str) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    pub(crate) async fn chat(&self, key: &str, body: Value) -> Response {
        self.post("/v1/chat/completions", Some(key), &body).await
    }

    pub(crate) async fn stats(&self) -> StatsReport {
        let resp = self
            .client
            .get(self.url("/stats"))
            .send()
            .await
            .expect("stats");
        assert_eq!(resp.status(), 200);
        resp.json().await.expect("stats json")
    }
}

/// A chat request: one user message of `text`, with `max_tokens`.
pub(crate) fn chat_body(model: &str, text: &str, max_tokens: u64) -> Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
    })
}

/// Prompt tokens of `chat_body(_, text, _)` for ASCII text: 3 + 3 + ceil(len / 4).
pub(crate) fn prompt_of(text: &str) -> u64 {
    6 + (text.len() as u64).div_ceil(4)
}

pub(crate) fn header(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii header").to_owned())
}

pub(crate) async fn json(resp: Response) -> Value {
    resp.json().await.expect("json body")
}

/// The `data:` payloads of an SSE body, in order.
pub(crate) fn sse_events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                .to_owned()
        })
        .collect()
}

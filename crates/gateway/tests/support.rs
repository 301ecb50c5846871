//! Harness: the simulator in-process, gateways in-process or as real processes, and
//! a small client.

use std::process::Stdio;
use std::time::Duration;

use sluice_sim::{AccountConfig, Config as SimConfig, Dialect, ModelConfig, SimHandle};

/// A simulator serving `models`, with accounts `keys` (named as given) when not empty.
pub(crate) async fn sim(models: Vec<ModelConfig>, accounts: &[(&str, &str)]) -> SimHandle {
    let mut config = SimConfig::with_models(models);
    for (name, key) in accounts {
        let mut a = AccountConfig::new(*key);
        a.name = Some((*name).to_owned());
        config.accounts.push(a);
    }
    config.accept_any_key = accounts.is_empty();
    sluice_sim::spawn(config).await.expect("sim starts")
}

/// A sim model with request and token limits over `per`.
pub(crate) fn sim_model(name: &str, requests: u64, tokens: u64, per: Duration) -> ModelConfig {
    ModelConfig::new(name, Dialect::Openai)
        .with_limit(sluice_sim::Limit::requests(requests, per))
        .with_limit(sluice_sim::Limit::tokens(tokens, per))
}

/// An in-process gateway on a port-0 listener; returns its base URL (`http://…`).
pub(crate) async fn gateway(toml: &str) -> String {
    let config = sluice_config::from_str(
        toml,
        &[],
        &std::collections::HashMap::<String, String>::new(),
    )
    .expect("config");
    let gw = sluice_proxy::Gateway::new(config).expect("gateway");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sluice_proxy::serve(gw, listener, std::future::pending()));
    url
}

/// A `sluice-gateway` process; killed when dropped.
pub(crate) struct GatewayProcess {
    service: sluice_testkit::Service,
    pub(crate) url: String,
}

impl GatewayProcess {
    pub(crate) fn start(toml: &str) -> Self {
        let service = sluice_testkit::Service::start(
            env!("CARGO_BIN_EXE_sluice-gateway"),
            toml,
            &[],
            &[("SLUICE_LOG", "warn".to_owned())],
            Stdio::null(),
        );
        let url = service.url().to_owned();
        Self { service, url }
    }

    /// A gateway whose log lines (at `info`) are kept: see [`Self::logs`].
    pub(crate) fn start_capturing(toml: &str) -> Self {
        let service = sluice_testkit::Service::start_capturing(
            env!("CARGO_BIN_EXE_sluice-gateway"),
            toml,
            &[],
            &[("SLUICE_LOG", "info".to_owned())],
        );
        let url = service.url().to_owned();
        Self { service, url }
    }

    /// A gateway started with `--watch-config` (reloads when its file changes).
    pub(crate) fn start_watching(toml: &str) -> Self {
        let service = sluice_testkit::Service::start_capturing(
            env!("CARGO_BIN_EXE_sluice-gateway"),
            toml,
            &["--watch-config"],
            &[("SLUICE_LOG", "info".to_owned())],
        );
        let url = service.url().to_owned();
        Self { service, url }
    }

    /// Rewrites its configuration file with `toml` (no signal).
    pub(crate) fn rewrite(&self, toml: &str) {
        std::fs::write(self.service.config_path(), toml).expect("rewrite the configuration");
    }

    /// Its log lines so far (only when started with [`Self::start_capturing`]).
    pub(crate) fn logs(&self) -> Vec<String> {
        self.service.logs()
    }

    /// Rewrites its configuration file with `toml` and sends SIGHUP.
    pub(crate) fn rewrite_and_hup(&self, toml: &str) {
        std::fs::write(self.service.config_path(), toml).expect("rewrite the configuration");
        assert!(self.service.signal("HUP"), "SIGHUP sent");
    }

    /// True while the process has not exited.
    pub(crate) fn is_running(&mut self) -> bool {
        self.service.is_running()
    }

    /// The process id (for its CPU time in `/proc`).
    pub(crate) fn pid(&self) -> u32 {
        self.service.pid()
    }

    /// Kills the process (SIGKILL: no drain, nothing flushed) and waits for it to exit.
    pub(crate) fn kill(&mut self) {
        self.service.kill();
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited cleanly.
    pub(crate) fn terminate(&mut self) -> bool {
        self.service.signal("TERM");
        self.service.wait()
    }
}

/// One answer as the test sees it.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: String,
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build()
        .unwrap()
}

/// `POST {base}/v1/chat/completions` with `body`, as `tenant_key` when given.
pub(crate) async fn chat(
    client: &reqwest::Client,
    base: &str,
    body: serde_json::Value,
    headers: &[(&str, &str)],
) -> Answer {
    post(client, base, "/v1/chat/completions", body, headers).await
}

/// `POST {base}{path}` with the JSON `body` and `headers`.
pub(crate) async fn post(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    body: serde_json::Value,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = client.post(format!("{base}{path}")).json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("the gateway answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap_or_default();
    Answer {
        status,
        headers,
        body,
    }
}

/// The simulator's report of `model` on the one account that used it (every account
/// has a cell for every model).
pub(crate) fn sim_report(sim: &SimHandle, model: &str) -> sluice_sim::stats::ModelReport {
    sim.sim()
        .stats()
        .accounts
        .values()
        .filter_map(|a| a.models.get(model).cloned())
        .max_by_key(|r| r.accepted + r.refused_total())
        .expect("the simulator serves the model")
}

pub(crate) fn ask(model: &str, max_tokens: u64) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "Say something short about rate limits."}], "max_tokens": max_tokens})
}

/// Asserts the answer is a 200 or an honest 429 (OpenAI body, Retry-After, retry-after-ms).
pub(crate) fn assert_honest(a: &Answer) {
    match a.status {
        200 => {}
        429 => {
            let ra: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(ra >= 1, "{a:?}");
            assert!(a.headers.contains_key("retry-after-ms"), "{a:?}");
            let body: serde_json::Value = serde_json::from_str(&a.body).unwrap();
            assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{a:?}");
        }
        _ => panic!("neither 200 nor an honest 429: {a:?}"),
    }
}

/// `{base}/metrics` as text (panics when it is not served with 200).
pub(crate) async fn metrics_text(client: &reqwest::Client, base: &str) -> String {
    let resp = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("the gateway serves /metrics");
    assert_eq!(resp.status(), 200, "GET {base}/metrics");
    resp.text().await.expect("a /metrics body")
}

/// The sum of every sample of the Prometheus metric `name` in `text` whose labels
/// contain each of `labels` (e.g. `model="m"`); `None` when no sample matches.
pub(crate) fn metric_in(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The sum of every sample of the Prometheus metric `name` at `{base}/metrics` whose
/// labels contain each of `labels`. A series that is not there is an error (a renamed
/// metric or label must not read as 0): panics naming the series asked for and showing
/// what `/metrics` held. Where "absent" legitimately means "nothing counted yet", use
/// [`metric_or_zero`]; to poll for a series to appear, [`try_metric`].
pub(crate) async fn metric(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    labels: &[&str],
) -> f64 {
    let text = metrics_text(client, base).await;
    metric_in(&text, name, labels).unwrap_or_else(|| {
        panic!("no sample of {name} with labels {labels:?} at {base}/metrics, which held:\n{text}")
    })
}

/// Like [`metric`], but `None` when no sample matches (for polling until it appears).
pub(crate) async fn try_metric(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    labels: &[&str],
) -> Option<f64> {
    metric_in(&metrics_text(client, base).await, name, labels)
}

/// Like [`metric`], but 0 when no sample matches. Only for a counter that is created on
/// its first increment and whose absence therefore means "never happened" — each caller
/// says why absence is meaningful there. `name` must be in the documented metrics list
/// (which `metrics_doc.rs` holds to what is emitted), so a renamed metric still fails.
pub(crate) async fn metric_or_zero(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    labels: &[&str],
) -> f64 {
    assert!(
        crate::metrics_doc::documented().contains(name),
        "{name} is not a documented metric (docs/operations.md)"
    );
    try_metric(client, base, name, labels).await.unwrap_or(0.0)
}

/// Polls `ready` every 20 ms until it holds or `timeout` passes (the async twin of
/// `sluice_testkit::wait_until`); true when it held.
pub(crate) async fn eventually<F, Fut>(timeout: Duration, mut ready: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if ready().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts an OpenAI-shaped error: `status`, JSON `{"error":{"message","type","code"}}`
/// with `code`; for a 429 or 503, a `Retry-After` of at least a second.
pub(crate) fn assert_openai_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{a:?}");
    let body: serde_json::Value = serde_json::from_str(&a.body)
        .unwrap_or_else(|e| panic!("not a JSON error body ({e}): {a:?}"));
    assert_eq!(body["error"]["code"], code, "{a:?}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{a:?}"
    );
    assert!(body["error"]["type"].is_string(), "{a:?}");
    if status == 429 || status == 503 {
        let ra: u64 = a.headers["retry-after"]
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Retry-After in seconds: {a:?}"));
        assert!(ra >= 1, "{a:?}");
    }
}

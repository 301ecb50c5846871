//! Harness: the simulator, in-process gateways, sidecar processes, a client, polling.

use std::process::Stdio;
use std::time::{Duration, Instant};

use sluice_sim::config::{AccountModel, Background};
use sluice_sim::{AccountConfig, Config as SimConfig, Dialect, Limit, ModelConfig, SimHandle};

/// One simulator account: name, key, its own request limit over `per`, background rps.
pub(crate) struct SimAccount<'a> {
    pub(crate) name: &'a str,
    pub(crate) key: &'a str,
    pub(crate) requests: u64,
    pub(crate) background_rps: Option<f64>,
}

/// A simulator serving `model` in `dialect` with the given accounts (each with its own
/// request limit per `per`, and 1,000,000 tokens).
pub(crate) async fn sim(
    model: &str,
    dialect: Dialect,
    per: Duration,
    accounts: &[SimAccount<'_>],
) -> SimHandle {
    let mut config = SimConfig::with_models(vec![
        ModelConfig::new(model, dialect)
            .with_limit(Limit::requests(1_000_000, per))
            .with_limit(Limit::tokens(1_000_000, per)),
    ]);
    for a in accounts {
        let mut acc = AccountConfig::new(a.key);
        acc.name = Some(a.name.to_owned());
        acc.models.push(AccountModel {
            model: model.to_owned(),
            limits: Some(vec![
                Limit::requests(a.requests, per),
                Limit::tokens(1_000_000, per),
            ]),
            background: a.background_rps.map(|rps| Background {
                rps,
                tokens_per_request: 20,
            }),
        });
        config.accounts.push(acc);
    }
    config.accept_any_key = false;
    sluice_sim::spawn(config).await.expect("sim starts")
}

/// An in-process gateway on a port-0 listener; returns its base URL.
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

/// A `sluice-sidecar` process; killed when dropped.
pub(crate) struct SidecarProcess {
    service: sluice_testkit::Service,
    pub(crate) url: String,
}

impl SidecarProcess {
    pub(crate) fn start(toml: &str, name: &str) -> Self {
        Self::start_with(toml, name, &[])
    }

    /// Like [`SidecarProcess::start`], with more flags (e.g. `--listen 0.0.0.0:0`, which
    /// overrides the harness's loopback one).
    pub(crate) fn start_with(toml: &str, name: &str, args: &[&str]) -> Self {
        let log = std::env::var("SIDECAR_LOG").unwrap_or_else(|_| "warn".into());
        let mut all = vec!["--name", name];
        all.extend_from_slice(args);
        let service = sluice_testkit::Service::start(
            env!("CARGO_BIN_EXE_sluice-sidecar"),
            toml,
            &all,
            &[("SLUICE_LOG", log)],
            Stdio::inherit(),
        );
        let url = service.url().to_owned();
        Self { service, url }
    }

    /// Rewrites its configuration file with `toml` and sends SIGHUP (a reload).
    pub(crate) fn rewrite_and_hup(&self, toml: &str) {
        std::fs::write(self.service.config_path(), toml).expect("rewrite the configuration");
        self.signal("HUP");
    }

    /// True while the process has not exited.
    pub(crate) fn is_running(&mut self) -> bool {
        self.service.is_running()
    }

    /// Sends `signal` (`STOP`, `CONT`, `KILL`) to the process.
    pub(crate) fn signal(&self, signal: &str) {
        assert!(self.service.signal(signal), "kill -{signal}");
    }
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build()
        .unwrap()
}

/// `POST {base}/v1/chat/completions` of a short question; the status.
pub(crate) async fn chat(client: &reqwest::Client, base: &str, model: &str) -> u16 {
    let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "Say something short."}], "max_tokens": 8});
    match client
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
    {
        Ok(r) => {
            let s = r.status().as_u16();
            let _ = r.bytes().await;
            s
        }
        Err(_) => 0,
    }
}

pub(crate) async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// `{base}/metrics` as text (panics when it is not served with 200).
pub(crate) async fn metrics_text(client: &reqwest::Client, base: &str) -> String {
    let resp = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("the process serves /metrics");
    assert_eq!(resp.status(), 200, "GET {base}/metrics");
    resp.text().await.expect("a /metrics body")
}

/// The sum of every sample of the Prometheus metric `name` at `{base}/metrics` whose
/// labels contain each of `labels`. A series that is not there is an error (a renamed
/// metric or label must not read as 0): panics naming the series and showing what
/// `/metrics` held.
pub(crate) async fn metric(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    labels: &[&str],
) -> f64 {
    let text = metrics_text(client, base).await;
    let values: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    assert!(
        !values.is_empty(),
        "no sample of {name} with labels {labels:?} at {base}/metrics, which held:\n{text}"
    );
    values.iter().sum()
}

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes.
pub(crate) async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `rate` requests per second spread over `gateways` for `duration` (open loop);
/// returns how many answers were 200.
pub(crate) async fn drive(
    client: &reqwest::Client,
    gateways: &[String],
    model: &str,
    rate: u32,
    duration: Duration,
) -> usize {
    let started = Instant::now();
    let n = (duration.as_secs_f64() * f64::from(rate)) as u32;
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let at = started + Duration::from_secs_f64(f64::from(i) / f64::from(rate));
        tokio::time::sleep_until(at.into()).await;
        let (client, url, model) = (
            client.clone(),
            gateways[i as usize % gateways.len()].clone(),
            model.to_owned(),
        );
        tasks.push(tokio::spawn(
            async move { chat(&client, &url, &model).await },
        ));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap() == 200);
    }
    ok
}

/// The fleet's configuration: one upstream `sim` in `dialect` with `keys`, one model
/// `model` with `requests` per `per_s` seconds, Redis at `redis`, and `extra` appended.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fleet_toml(
    redis: &str,
    sim_base: &str,
    dialect: &str,
    keys: &[&str],
    model: &str,
    requests: u64,
    per_s: u64,
    extra: &str,
) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
    format!(
        r#"
[store]
redis_url = "{redis}"
expected_replicas = 3
[[upstreams]]
name = "sim"
base_url = "{sim_base}"
dialect = "{dialect}"
keys = [{keys}]
[[models]]
name = "{model}"
upstream = "sim"
limits = [{{ requests = {requests}, per = "{per_s}s" }}, {{ tokens = 1000000, per = "{per_s}s" }}]
[queue]
max_wait = "1s"
booked_ahead = 4
[retry]
max_attempts = 2
[sidecar]
claim_after = "1s"
sample_per_second = 10
admin_key = "admin-key-for-tests-0123"
{extra}
"#,
        keys = keys.join(", ")
    )
}

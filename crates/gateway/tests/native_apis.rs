//! The Responses API and Anthropic's Messages API are metered exactly like chat
//! (issue #13): estimated, reserved, forwarded, reconciled from the provider's own
//! usage (streamed or not), refused honestly in their own error shape, and shared by a
//! fleet so that the provider refuses nothing.

use std::time::{Duration, Instant};

use sluice_sim::config::Dialect;
use sluice_testkit::RedisServer;

use crate::support::*;

/// `POST {base}{path}` with `body`; Messages requests carry what Anthropic's SDK sends.
async fn call(c: &reqwest::Client, base: &str, path: &str, body: serde_json::Value) -> Answer {
    let anthropic = [("x-api-key", "unused"), ("anthropic-version", "2023-06-01")];
    let headers: &[(&str, &str)] = if path == "/v1/messages" {
        &anthropic
    } else {
        &[]
    };
    post(c, base, path, body, headers).await
}

fn respond(model: &str, max: u64, stream: bool) -> serde_json::Value {
    serde_json::json!({"model": model, "instructions": "Be brief.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Say something short about rate limits."}]}],
        "max_output_tokens": max, "stream": stream})
}

fn message(model: &str, max: u64, stream: bool) -> serde_json::Value {
    serde_json::json!({"model": model, "system": "Be brief.", "max_tokens": max, "stream": stream,
        "messages": [{"role": "user", "content": "Say something short about rate limits."}]})
}

fn config(sim: &str, extra: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "oai"
base_url = "{sim}"
keys = ["sk-oai"]
[[upstreams]]
name = "claude"
base_url = "{sim}"
dialect = "anthropic"
keys = ["sk-ant"]
[[models]]
name = "resp-m"
upstream = "oai"
limits = [{{ requests = 1000, per = "60s" }}, {{ tokens = 1000000, per = "60s" }}]
[[models]]
name = "claude-m"
upstream = "claude"
limits = [{{ requests = 1000, per = "60s" }}, {{ tokens = 1000000, per = "60s" }}]
{extra}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_and_messages_reconcile_to_the_providers_usage_streamed_or_not() {
    let sim = sim(
        vec![
            sim_model("resp-m", 1000, 1_000_000, Duration::from_secs(60)),
            ModelConfigExt::anthropic(sim_model(
                "claude-m",
                1000,
                1_000_000,
                Duration::from_secs(60),
            )),
        ],
        &[],
    )
    .await;
    let gw = gateway(&config(&sim.base_url(), "")).await;
    let c = client();
    for stream in [false, true] {
        let a = call(&c, &gw, "/v1/responses", respond("resp-m", 12, stream)).await;
        assert_eq!(a.status, 200, "{a:?}");
        if stream {
            assert!(a.body.contains("event: response.incomplete"), "{}", a.body);
            assert!(
                a.body.contains("\"input_tokens\""),
                "the usage reaches the client: {}",
                a.body
            );
        } else {
            let b: serde_json::Value = serde_json::from_str(&a.body).unwrap();
            assert_eq!(b["usage"]["output_tokens"], 12, "{b}");
        }
        let a = call(&c, &gw, "/v1/messages", message("claude-m", 9, stream)).await;
        assert_eq!(a.status, 200, "{a:?}");
        if stream {
            assert!(a.body.contains("event: message_stop"), "{}", a.body);
        } else {
            let b: serde_json::Value = serde_json::from_str(&a.body).unwrap();
            assert_eq!(b["usage"]["output_tokens"], 9, "{b}");
        }
    }
    for (model, kinds) in [("resp-m", 2u64), ("claude-m", 2)] {
        let r = sim_report(&sim, model);
        assert_eq!(r.accepted, kinds, "{model}: {r:?}");
        let url = gw.clone();
        let (c2, want) = (c.clone(), r.prompt_tokens + r.completion_tokens);
        let reconciled = eventually(Duration::from_secs(10), || {
            let (c, url) = (c2.clone(), url.clone());
            async move {
                let model_label = format!("model=\"{model}\"");
                try_metric(
                    &c,
                    &url,
                    "sluice_tokens_total",
                    &[&model_label, "source=\"actual\""],
                )
                .await
                    == Some(want as f64)
            }
        })
        .await;
        let model_label = format!("model=\"{model}\"");
        assert!(
            reconciled,
            "{model}: the actual tokens counted are the sim's {want}, not {} (estimated {})",
            try_metric(
                &c,
                &gw,
                "sluice_tokens_total",
                &[&model_label, "source=\"actual\""]
            )
            .await
            .unwrap_or(0.0),
            metric(
                &c,
                &gw,
                "sluice_tokens_total",
                &[&model_label, "source=\"estimated\""]
            )
            .await,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_bad_requests_on_messages_are_anthropic_shaped() {
    let sim = sim(
        vec![ModelConfigExt::anthropic(sim_model(
            "claude-refusing-m",
            1000,
            1_000_000,
            Duration::from_secs(60),
        ))],
        &[],
    )
    .await;
    let toml = config(&sim.base_url(), "")
        .replace(
            "name = \"claude-m\"\nupstream = \"claude\"\nlimits = [{ requests = 1000, per = \"60s\" }, { tokens = 1000000, per = \"60s\" }]",
            "name = \"claude-refusing-m\"\nupstream = \"claude\"\nlimits = [{ requests = 1, per = \"60s\" }]",
        );
    assert!(toml.contains("requests = 1,"), "{toml}");
    let gw = gateway(&toml).await;
    let c = client();
    let mut no_max = message("claude-refusing-m", 8, false);
    no_max.as_object_mut().unwrap().remove("max_tokens");
    let a = call(&c, &gw, "/v1/messages", no_max).await;
    assert_eq!(a.status, 400, "{a:?}");
    let b: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(b["type"], "error", "{b}");
    assert_eq!(b["error"]["type"], "invalid_request_error", "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens")
    );
    assert_eq!(
        call(
            &c,
            &gw,
            "/v1/messages",
            message("claude-refusing-m", 8, false)
        )
        .await
        .status,
        200
    );
    let refused = call(
        &c,
        &gw,
        "/v1/messages",
        message("claude-refusing-m", 8, false),
    )
    .await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert!(refused.headers.contains_key("retry-after"));
    let b: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(b["error"]["type"], "rate_limit_error", "{b}");
    // The Responses API keeps OpenAI's shape.
    let a = call(
        &c,
        &gw,
        "/v1/responses",
        serde_json::json!({"model": "resp-m"}),
    )
    .await;
    assert_eq!(a.status, 400);
    let b: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(b["error"]["param"], "input", "{b}");
    assert_eq!(
        sim_report(&sim, "claude-refusing-m").accepted,
        1,
        "the refusal never reached the provider"
    );
    // Nothing is translated between dialects: Messages to an OpenAI upstream and the
    // Responses API to Anthropic are refused before anything is charged.
    let a = call(&c, &gw, "/v1/messages", message("resp-m", 8, false)).await;
    assert_eq!(a.status, 400, "{a:?}");
    let b: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(b["error"]["type"], "invalid_request_error", "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/messages"),
        "{b}"
    );
    let a = call(
        &c,
        &gw,
        "/v1/responses",
        respond("claude-refusing-m", 8, false),
    )
    .await;
    assert_eq!(a.status, 400, "{a:?}");
    let b: serde_json::Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(b["error"]["code"], "wrong_api", "{b}");
}

/// Three gateways on one Redis, one account whose token limit binds, closed-loop
/// clients well above it through `path`: the provider refuses nothing, and the fleet
/// uses most of the window.
async fn fleet_through(path: &'static str) {
    let redis = RedisServer::start();
    // 6 s windows: the limiter's buckets (a 60th of the window, the oldest counted in
    // full) then leave 100 ms between a grant and its arrival at the provider, which a
    // loaded two-core machine needs; 4,000 tokens per window: about 45 requests of ~88
    // tokens, far fewer than the 1,000 requests allowed, so tokens bind.
    // Through Messages, Anthropic's way: separate input and output budgets, the output
    // one binding (about 31 answers of 64 tokens per window, their ~22-token prompts
    // far inside the input budget).
    let per = Duration::from_secs(6);
    let anthropic = path == "/v1/messages";
    let mut model = sim_model("fleet-m", 1000, 4000, per);
    if anthropic {
        model = ModelConfigExt::anthropic(sluice_sim::config::ModelConfig::new(
            "fleet-m",
            Dialect::Anthropic,
        ));
        for (unit, amount) in [
            (sluice_sim::Unit::Requests, 1000),
            (sluice_sim::Unit::InputTokens, 1500),
            (sluice_sim::Unit::OutputTokens, 2000),
        ] {
            model = model.with_limit(sluice_sim::Limit {
                unit,
                amount,
                window: per,
            });
        }
    }
    let limits = if anthropic {
        r#"[{ requests = 1000, per = "6s" }, { input_tokens = 1500, per = "6s" }, { output_tokens = 2000, per = "6s" }]"#
    } else {
        r#"[{ requests = 1000, per = "6s" }, { tokens = 4000, per = "6s" }]"#
    };
    let sim = sim(vec![model], &[]).await;
    let upstream = if path == "/v1/messages" {
        "claude"
    } else {
        "oai"
    };
    let toml = format!(
        r#"
[store]
redis_url = "{redis}"
expected_replicas = 3
[[upstreams]]
name = "oai"
base_url = "{base}"
keys = ["sk-fleet"]
[[upstreams]]
name = "claude"
base_url = "{base}"
dialect = "anthropic"
keys = ["sk-fleet"]
[[models]]
name = "fleet-m"
upstream = "{upstream}"
limits = {limits}
[queue]
max_wait = "4s"
"#,
        redis = redis.url(),
        base = sim.base_url()
    );
    let gateways: Vec<GatewayProcess> = (0..3).map(|_| GatewayProcess::start(&toml)).collect();
    let c = client();
    let body = move |i: usize| {
        let stream = i.is_multiple_of(2);
        if path == "/v1/messages" {
            message("fleet-m", 64, stream)
        } else {
            respond("fleet-m", 64, stream)
        }
    };
    let run = Duration::from_secs(12);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..9usize {
        let (c, url) = (c.clone(), gateways[i % 3].url.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut other) = (0u64, Vec::new());
            let mut n = 0usize;
            while started.elapsed() < run {
                let a = call(&c, &url, path, body(n)).await;
                n += 1;
                match a.status {
                    200 => ok += 1,
                    429 => {
                        assert!(a.headers.contains_key("retry-after"), "{a:?}");
                        // Honour the wait, bounded so the loop stays closed.
                        let ms: u64 = a
                            .headers
                            .get("retry-after-ms")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(1000);
                        tokio::time::sleep(Duration::from_millis(ms.min(1000))).await;
                    }
                    _ => other.push(a),
                }
            }
            (ok, other)
        }));
    }
    let mut served = 0;
    for t in tasks {
        let (ok, other) = t.await.unwrap();
        assert!(
            other.is_empty(),
            "answers other than 200 and 429: {other:?}"
        );
        served += ok;
    }
    let r = sim_report(&sim, "fleet-m");
    assert_eq!(
        r.refused_total(),
        0,
        "{path}: the provider refused {:?} of {} requests",
        r.refused,
        r.accepted
    );
    assert_eq!(
        r.accepted, served,
        "every served request reached the provider once"
    );
    // Twelve seconds are two windows of 4,000 tokens: nearly all of them used.
    let used = if anthropic {
        r.completion_tokens as f64 / (2.0 * 2000.0)
    } else {
        (r.prompt_tokens + r.completion_tokens) as f64 / (2.0 * 4000.0)
    };
    assert!(used >= 0.9, "{path}: only {used:.2} of two windows used");
    eprintln!(
        "{path}: {} served, {used:.2} of the token quota, 0 refused upstream",
        r.accepted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_share_one_token_quota_through_the_responses_api() {
    fleet_through("/v1/responses").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_share_separate_input_and_output_budgets_through_the_messages_api() {
    fleet_through("/v1/messages").await;
}

/// Sets a simulated model's dialect to Anthropic's.
trait ModelConfigExt {
    fn anthropic(self) -> Self;
}

impl ModelConfigExt for sluice_sim::config::ModelConfig {
    fn anthropic(mut self) -> Self {
        self.dialect = Dialect::Anthropic;
        self
    }
}

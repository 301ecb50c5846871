//! Bad input gets a precise OpenAI-shaped error and nothing else changes: one table of
//! malformed, mistyped, absurd, oversized, unauthenticated and oddly-headed requests,
//! each answered with the right status, `{"error":{"message","type","param","code"}}`
//! and `error.code`; afterwards the stub upstream has seen nothing and the limiter has
//! charged nothing (the next good request is the first one counted).

use reqwest::header::{HeaderName, HeaderValue};
use serde_json::json;

use crate::stub::stub;
use crate::support::*;

const TENANT_KEY: &str = "tenant-good-key";
const MAX_BODY: usize = 4096;

/// One row: what is sent and what must come back.
struct Case {
    name: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, HeaderValue)>,
    body: Body,
    status: u16,
    code: &'static str,
    param: Option<&'static str>,
}

enum Body {
    Text(String),
    Json(serde_json::Value),
    /// Streamed without a Content-Length, so only the reader can find it too large.
    Chunked(usize),
}

fn json_case(
    name: &'static str,
    body: serde_json::Value,
    status: u16,
    code: &'static str,
    param: Option<&'static str>,
) -> Case {
    Case {
        name,
        path: "/v1/chat/completions",
        headers: vec![],
        body: Body::Json(body),
        status,
        code,
        param,
    }
}

fn msgs() -> serde_json::Value {
    json!([{"role": "user", "content": "hi"}])
}

fn cases() -> Vec<Case> {
    let m = msgs;
    let mut c = vec![
        Case {
            name: "malformed JSON",
            body: Body::Text("{not json".into()),
            ..json_case("", json!(null), 400, "invalid_json", None)
        },
        json_case(
            "body is not an object",
            json!([1, 2]),
            400,
            "invalid_type",
            None,
        ),
        json_case(
            "missing model",
            json!({"messages": m()}),
            400,
            "missing_required_parameter",
            Some("model"),
        ),
        json_case(
            "model is a number",
            json!({"model": 7, "messages": m()}),
            400,
            "invalid_type",
            Some("model"),
        ),
        json_case(
            "missing messages",
            json!({"model": "m"}),
            400,
            "missing_required_parameter",
            Some("messages"),
        ),
        json_case(
            "messages is a string",
            json!({"model": "m", "messages": "hi"}),
            400,
            "invalid_type",
            Some("messages"),
        ),
        json_case(
            "messages is empty",
            json!({"model": "m", "messages": []}),
            400,
            "invalid_value",
            Some("messages"),
        ),
        json_case(
            "a message is a number",
            json!({"model": "m", "messages": [1]}),
            400,
            "invalid_type",
            Some("messages"),
        ),
        json_case(
            "negative max_tokens",
            json!({"model": "m", "messages": m(), "max_tokens": -5}),
            400,
            "invalid_value",
            Some("max_tokens"),
        ),
        json_case(
            "fractional max_tokens",
            json!({"model": "m", "messages": m(), "max_tokens": 1.5}),
            400,
            "invalid_value",
            Some("max_tokens"),
        ),
        json_case(
            "max_tokens as a string",
            json!({"model": "m", "messages": m(), "max_tokens": "10"}),
            400,
            "invalid_type",
            Some("max_tokens"),
        ),
        json_case(
            "negative max_completion_tokens",
            json!({"model": "m", "messages": m(), "max_completion_tokens": -1}),
            400,
            "invalid_value",
            Some("max_completion_tokens"),
        ),
        json_case(
            "n of zero",
            json!({"model": "m", "messages": m(), "n": 0}),
            400,
            "invalid_value",
            Some("n"),
        ),
        json_case(
            "negative n",
            json!({"model": "m", "messages": m(), "n": -3}),
            400,
            "invalid_value",
            Some("n"),
        ),
        json_case(
            "huge n",
            json!({"model": "m", "messages": m(), "n": 100000}),
            400,
            "invalid_value",
            Some("n"),
        ),
        json_case(
            "stream as a string",
            json!({"model": "m", "messages": m(), "stream": "yes"}),
            400,
            "invalid_type",
            Some("stream"),
        ),
        json_case(
            "max_tokens of 10^12 can never fit",
            json!({"model": "m", "messages": m(), "max_tokens": 1_000_000_000_000u64}),
            413,
            "request_too_large",
            Some("messages"),
        ),
        json_case(
            "unknown model",
            json!({"model": "gpt-9", "messages": m()}),
            404,
            "model_not_found",
            Some("model"),
        ),
        Case {
            name: "embeddings without input",
            path: "/v1/embeddings",
            ..json_case(
                "",
                json!({"model": "m"}),
                400,
                "missing_required_parameter",
                Some("input"),
            )
        },
        Case {
            name: "completions with a numeric prompt",
            path: "/v1/completions",
            ..json_case(
                "",
                json!({"model": "m", "prompt": 42}),
                400,
                "invalid_type",
                Some("prompt"),
            )
        },
        Case {
            name: "body over max_body_bytes (Content-Length)",
            body: Body::Text(format!(
                "{{\"model\":\"m\",\"messages\":[],\"pad\":\"{}\"}}",
                "x".repeat(MAX_BODY)
            )),
            ..json_case("", json!(null), 413, "body_too_large", None)
        },
        Case {
            name: "body over max_body_bytes (chunked)",
            body: Body::Chunked(MAX_BODY * 2),
            ..json_case("", json!(null), 413, "body_too_large", None)
        },
        Case {
            name: "passthrough body over max_body_bytes",
            path: "/v1/files",
            body: Body::Chunked(MAX_BODY * 2),
            ..json_case("", json!(null), 413, "body_too_large", None)
        },
        Case {
            name: "text/plain content type",
            headers: vec![("content-type", HeaderValue::from_static("text/plain"))],
            body: Body::Text(json!({"model": "m", "messages": m()}).to_string()),
            ..json_case("", json!(null), 415, "unsupported_media_type", None)
        },
        Case {
            name: "form content type",
            headers: vec![(
                "content-type",
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            )],
            body: Body::Text("model=m".into()),
            ..json_case("", json!(null), 415, "unsupported_media_type", None)
        },
        Case {
            name: "no tenant key",
            headers: vec![("authorization", HeaderValue::from_static(""))],
            ..json_case(
                "",
                json!({"model": "m", "messages": m()}),
                401,
                "invalid_api_key",
                None,
            )
        },
        Case {
            name: "wrong tenant key",
            headers: vec![(
                "authorization",
                HeaderValue::from_static("Bearer tenant-bad-key"),
            )],
            ..json_case(
                "",
                json!({"model": "m", "messages": m()}),
                401,
                "invalid_api_key",
                None,
            )
        },
        Case {
            name: "non-UTF-8 tenant key",
            headers: vec![(
                "authorization",
                HeaderValue::from_bytes(b"Bearer tenant-good-key\xff").unwrap(),
            )],
            ..json_case(
                "",
                json!({"model": "m", "messages": m()}),
                401,
                "invalid_api_key",
                None,
            )
        },
        Case {
            name: "passthrough with a wrong tenant key",
            path: "/v1/files",
            headers: vec![(
                "authorization",
                HeaderValue::from_static("Bearer tenant-bad-key"),
            )],
            ..json_case("", json!({"model": "m"}), 401, "invalid_api_key", None)
        },
        Case {
            name: "garbage x-sluice-max-wait",
            headers: vec![("x-sluice-max-wait", HeaderValue::from_static("soon"))],
            ..json_case(
                "",
                json!({"model": "m", "messages": m()}),
                400,
                "invalid_header",
                Some("x-sluice-max-wait"),
            )
        },
        Case {
            name: "negative x-sluice-max-wait",
            headers: vec![("x-sluice-max-wait", HeaderValue::from_static("-5"))],
            ..json_case(
                "",
                json!({"model": "m", "messages": m()}),
                400,
                "invalid_header",
                Some("x-sluice-max-wait"),
            )
        },
        Case {
            name: "non-UTF-8 x-sluice-max-wait",
            headers: vec![(
                "x-sluice-max-wait",
                HeaderValue::from_bytes(b"5\xffs").unwrap(),
            )],
            ..json_case(
                "",
                json!({"model": "m", "messages": m()}),
                400,
                "invalid_header",
                Some("x-sluice-max-wait"),
            )
        },
        Case {
            name: "passthrough with a garbage x-sluice-max-wait",
            path: "/v1/files",
            headers: vec![("x-sluice-max-wait", HeaderValue::from_static("later"))],
            ..json_case(
                "",
                json!({"model": "m"}),
                400,
                "invalid_header",
                Some("x-sluice-max-wait"),
            )
        },
    ];
    for case in &mut c {
        if case.name.is_empty() {
            panic!("a case without a name");
        }
    }
    c
}

#[tokio::test]
async fn bad_input_gets_a_precise_openai_error_and_changes_nothing() {
    let upstream = stub().await;
    let toml = format!(
        r#"
[server]
max_body_bytes = {MAX_BODY}
[[upstreams]]
name = "stub"
base_url = "{base}"
keys = ["sk-stub-key"]
[[models]]
name = "m"
upstream = "stub"
upstream_model = "ok"
limits = [{{ requests = 1000, per = "60s" }}, {{ tokens = 100000, per = "60s" }}]
[[tenants]]
name = "app"
key = "{TENANT_KEY}"
"#,
        base = upstream.base_url
    );
    let gw = gateway(&toml).await;
    let client = client();
    for case in cases() {
        let mut req = client.post(format!("{gw}{}", case.path));
        if !case.headers.iter().any(|(k, _)| *k == "authorization") {
            req = req.bearer_auth(TENANT_KEY);
        }
        req = match case.body {
            Body::Text(t) => req.body(t),
            Body::Json(j) => req.json(&j),
            Body::Chunked(n) => {
                let chunks = (0..n / 1024).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024]));
                req.body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            }
        };
        for (k, v) in &case.headers {
            // An empty Authorization stands for none at all.
            if !v.is_empty() {
                req = req.header(HeaderName::from_static(k), v.clone());
            }
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        assert_eq!(status, case.status, "{}: {text}", case.name);
        assert!(
            ctype.starts_with("application/json"),
            "{}: content-type {ctype:?}",
            case.name
        );
        let body: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {text}", case.name));
        let err = body["error"]
            .as_object()
            .unwrap_or_else(|| panic!("{}: {text}", case.name));
        let keys: Vec<&str> = err.keys().map(String::as_str).collect();
        for k in ["message", "type", "param", "code"] {
            assert!(keys.contains(&k), "{}: no {k} in {text}", case.name);
        }
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            case.name
        );
        assert!(err["type"].is_string(), "{}", case.name);
        assert_eq!(err["code"], case.code, "{}: {text}", case.name);
        if let Some(p) = case.param {
            assert_eq!(err["param"], p, "{}: {text}", case.name);
        }
        assert!(
            !text.contains("sk-stub-key") && !text.contains(TENANT_KEY),
            "{}",
            case.name
        );
    }
    assert_eq!(upstream.hits(), 0, "a bad request reached the upstream");
    // The next good request is the first the limiter counts.
    let ok = chat(
        &client,
        &gw,
        ask("m", 16),
        &[("authorization", &format!("Bearer {TENANT_KEY}"))],
    )
    .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(upstream.hits(), 1);
    let header = |n: &str| -> u64 { ok.headers[n].to_str().unwrap().parse().unwrap() };
    assert_eq!(
        header("x-ratelimit-limit-requests") - header("x-ratelimit-remaining-requests"),
        1,
        "bad requests were charged to the limiter: {ok:?}"
    );
    // The metrics count them as refusals, not as upstream traffic.
    let metrics = client
        .get(format!("{gw}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("outcome=\"bad_request\""), "{metrics}");
}

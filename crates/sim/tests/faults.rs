//! Fault injection with rate 1.0 (deterministic): 5xx, capacity, stream cut, error in a 200 stream, missing usage, slow.

use serde_json::{Value, json};

use crate::common::{chat_body, json, sse_events, start};

fn config(dialect: &str, fault: &str) -> String {
    format!(
        r#"
[[models]]
name = "m"
dialect = "{dialect}"
limits = [{{ tokens = 1000, per = "60s" }}]
stream_chunk_tokens = 1

[[models]]
name = "clean"
dialect = "{dialect}"

[[accounts]]
name = "a"
key = "ka"

[[accounts]]
name = "b"
key = "kb"

[[faults]]
model = "m"
account = "a"
{fault} = 1.0
slow_ms = 1
"#
    )
}

fn stream_body(model: &str, max_tokens: u64) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": max_tokens,
           "stream": true, "stream_options": {"include_usage": true}})
}

#[tokio::test]
async fn server_error_only_where_the_rule_matches() {
    let h = start(&config("openai", "server_error")).await;
    let r = h.chat("ka", chat_body("m", "x", 1)).await;
    assert_eq!(r.status(), 500);
    let b = json(r).await;
    assert_eq!(b["error"]["type"], "server_error");
    assert_eq!(h.chat("kb", chat_body("m", "x", 1)).await.status(), 200);
    assert_eq!(h.chat("ka", chat_body("clean", "x", 1)).await.status(), 200);
    let s = h.stats().await;
    let m = s.get("a", "m").unwrap();
    assert_eq!(
        (m.refused.fault, m.faults.server_error, m.accepted),
        (1, 1, 0)
    );
    assert_eq!(m.limits[0].used, 0, "a fault is decided before metering");
}

#[tokio::test]
async fn capacity_errors_per_dialect() {
    for (dialect, status, code) in [
        ("dashscope", 503, "ModelServingError"),
        ("anthropic", 529, "overloaded_error"),
        ("openai", 503, "server_error"),
        ("azure", 503, "ServiceUnavailable"),
    ] {
        let h = start(&config(dialect, "capacity")).await;
        let r = h.chat("ka", chat_body("m", "x", 1)).await;
        assert_eq!(r.status(), status, "{dialect}");
        let b = json(r).await;
        let got = match dialect {
            "anthropic" => b["error"]["type"].clone(),
            "openai" => b["error"]["type"].clone(),
            _ => b["error"]["code"].clone(),
        };
        assert_eq!(got, code, "{dialect}");
        if dialect == "dashscope" {
            assert_eq!(
                b["error"]["message"],
                "Too many requests. Your requests are being throttled due to system capacity limits."
            );
        }
        assert_eq!(h.stats().await.get("a", "m").unwrap().faults.capacity, 1);
    }
}

#[tokio::test]
async fn stream_cut_halfway_charges_what_was_sent() {
    let h = start(&config("openai", "stream_cut")).await;
    let r = h.chat("ka", stream_body("m", 10)).await;
    assert_eq!(r.status(), 200);
    let mut r = r;
    let mut received = Vec::new();
    let outcome = loop {
        match r.chunk().await {
            Ok(Some(bytes)) => received.extend_from_slice(&bytes),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(outcome.is_err(), "the body ends abruptly");
    let text = String::from_utf8_lossy(&received);
    assert!(!text.contains("[DONE]"));
    assert!(!text.contains("\"usage\":{"));
    let s = h.stats().await;
    let m = s.get("a", "m").unwrap();
    assert_eq!(m.faults.stream_cut, 1);
    assert_eq!(
        (m.accepted, m.prompt_tokens, m.completion_tokens),
        (1, 7, 5)
    );
    assert_eq!(m.limits[0].used, 12, "settled to prompt + tokens sent");
    assert_eq!(m.limits[0].peak, 17, "prompt + max_tokens were reserved");
}

#[tokio::test]
async fn error_inside_a_200_stream() {
    let h = start(&config("dashscope", "stream_error")).await;
    let r = h.chat("ka", stream_body("m", 4)).await;
    assert_eq!(r.status(), 200);
    let events = sse_events(&r.text().await.unwrap());
    assert!(!events.iter().any(|e| e == "[DONE]"));
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "ModelServingError");
    assert!(last["request_id"].is_string());
    // role chunk + 2 content chunks before the error
    assert_eq!(events.len(), 4);
    let s = h.stats().await;
    let m = s.get("a", "m").unwrap();
    assert_eq!((m.faults.stream_error, m.completion_tokens), (1, 2));
}

#[tokio::test]
async fn missing_usage_chunk() {
    let h = start(&config("openai", "missing_usage")).await;
    let r = h.chat("ka", stream_body("m", 3)).await;
    let events = sse_events(&r.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(events.iter().all(|e| !e.contains("\"usage\":{")));
    let s = h.stats().await;
    let m = s.get("a", "m").unwrap();
    assert_eq!(
        (m.faults.missing_usage, m.completion_tokens),
        (1, 3),
        "still charged in full"
    );
    // The other account on the same model gets its usage chunk.
    let r = h.chat("kb", stream_body("m", 3)).await;
    let events = sse_events(&r.text().await.unwrap());
    assert!(events.iter().any(|e| e.contains("\"usage\":{")));
}

#[tokio::test]
async fn slow_response_is_counted_and_served() {
    let h = start(&config("openai", "slow")).await;
    let r = h.chat("ka", chat_body("m", "x", 2)).await;
    assert_eq!(r.status(), 200);
    let s = h.stats().await;
    assert_eq!(s.get("a", "m").unwrap().faults.slow, 1);
    assert_eq!(s.get("a", "m").unwrap().accepted, 1);
}

#[tokio::test]
async fn stream_faults_do_not_touch_non_streamed_requests() {
    let h = start(&config("openai", "stream_cut")).await;
    let r = h.chat("ka", chat_body("m", "x", 10)).await;
    assert_eq!(r.status(), 200);
    let b = json(r).await;
    assert_eq!(b["usage"]["completion_tokens"], 10);
    assert_eq!(h.stats().await.get("a", "m").unwrap().faults.stream_cut, 0);
}

#[tokio::test]
async fn echo_bad_request_sends_the_request_text_back_in_an_openai_400() {
    let h = start(&config("openai", "echo_bad_request")).await;
    let r = h
        .chat("ka", chat_body("m", "Free allocated quota exceeded.", 1))
        .await;
    assert_eq!(r.status(), 400);
    let b = json(r).await;
    assert_eq!(
        b["error"]["message"],
        "Unrecognized request argument supplied: Free allocated quota exceeded."
    );
    assert_eq!(b["error"]["type"], "invalid_request_error");
    assert!(b["error"]["code"].is_null(), "{b}");
    // Only where the rule matches; nothing is metered.
    assert_eq!(h.chat("kb", chat_body("m", "x", 1)).await.status(), 200);
    let s = h.stats().await;
    assert_eq!(s.rejected.echoed, 1);
    assert_eq!(s.get("a", "m").map_or(0, |m| m.limits[0].used), 0);
    // Every keyed request is counted, none of them outside /v1/.
    assert_eq!((s.keyed_requests, s.outside_api), (2, 0));
}

//! The Responses API and Anthropic's Messages API: metered on the same limits as chat,
//! usage where each provider puts it (plain and streamed), their own error shapes.

use serde_json::{Value, json};

use crate::common::{header, json, start};

const CONFIG: &str = r#"
[[models]]
name = "gpt-4o"
limits = [{ requests = 3, per = "60s" }, { tokens = 100000, per = "60s" }]

[[models]]
name = "claude-sonnet-4-5"
dialect = "anthropic"
limits = [{ requests = 2, per = "60s" }, { tokens = 100000, per = "60s" }]
"#;

/// The `(event, data)` pairs of a named-event SSE body, in order.
fn named_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let (name, data) = e
                .strip_prefix("event: ")
                .and_then(|e| e.split_once("\ndata: "))
                .unwrap_or_else(|| panic!("not a named event: {e:?}"));
            (
                name.to_owned(),
                serde_json::from_str(data).expect("json data"),
            )
        })
        .collect()
}

async fn post(
    h: &crate::common::Harness,
    path: &str,
    anthropic: bool,
    body: Value,
) -> reqwest::Response {
    let mut req = h.client.post(h.url(path)).json(&body);
    req = if anthropic {
        req.header("x-api-key", "k")
            .header("anthropic-version", "2023-06-01")
    } else {
        req.bearer_auth("k")
    };
    req.send().await.expect("request sent")
}

#[tokio::test]
async fn responses_are_metered_like_chat_with_usage_in_the_response() {
    let h = start(CONFIG).await;
    let r = post(
        &h,
        "/v1/responses",
        false,
        json!({"model": "gpt-4o", "instructions": "abcd", "input": "Hello, world!", "max_output_tokens": 5}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "x-ratelimit-remaining-requests").is_some());
    let b = json(r).await;
    assert_eq!(b["object"], "response");
    assert_eq!(b["status"], "incomplete", "{b}");
    assert_eq!(b["incomplete_details"]["reason"], "max_output_tokens");
    // 3 priming + (3 + 1) instructions + (3 + 4) input
    assert_eq!(b["usage"]["input_tokens"], 14, "{b}");
    assert_eq!(b["usage"]["output_tokens"], 5);
    assert_eq!(b["usage"]["total_tokens"], 19);
    assert_eq!(b["output"][0]["content"][0]["type"], "output_text");
    // One chat request and the Responses one above draw on the same 3 requests.
    let chat = h
        .chat("k", json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}))
        .await;
    assert_eq!(chat.status(), 200);
    let r = post(&h, "/v1/responses", false, json!({"model": "gpt-4o", "input": [{"role": "user", "content": "x"}], "max_output_tokens": 1})).await;
    assert_eq!(r.status(), 200);
    let r = post(
        &h,
        "/v1/responses",
        false,
        json!({"model": "gpt-4o", "input": "x", "max_output_tokens": 1}),
    )
    .await;
    assert_eq!(r.status(), 429);
    assert!(header(&r, "retry-after").is_some());
    assert_eq!(json(r).await["error"]["type"], "requests");
    let stats = h.stats().await;
    let m = &stats.accounts.values().next().unwrap().models["gpt-4o"];
    assert_eq!(m.accepted, 3);
    assert_eq!(m.refused.requests, 1);
}

#[tokio::test]
async fn a_streamed_response_ends_with_response_completed_and_its_usage() {
    let h = start(CONFIG).await;
    let r = post(
        &h,
        "/v1/responses",
        false,
        json!({"model": "gpt-4o", "input": "Hello, world!", "max_output_tokens": 12, "stream": true}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("text/event-stream")
    );
    let body = r.text().await.unwrap();
    assert!(!body.contains("[DONE]"));
    let events = named_events(&body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(
        names[names.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.incomplete"
        ]
    );
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_str());
        assert_eq!(data["sequence_number"], i as u64);
    }
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    let (_, last) = events.last().unwrap();
    assert_eq!(last["response"]["usage"]["input_tokens"], 10);
    assert_eq!(last["response"]["usage"]["output_tokens"], 12);
    assert_eq!(
        last["response"]["output"][0]["content"][0]["text"],
        text.as_str()
    );
    assert_eq!(text.split(' ').count(), 12);
}

#[tokio::test]
async fn messages_are_metered_like_chat_with_anthropic_usage() {
    let h = start(CONFIG).await;
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 4, "system": "abcd",
                      "messages": [{"role": "user", "content": "Hello, world!"}]});
    let r = post(&h, "/v1/messages", true, body.clone()).await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "anthropic-ratelimit-requests-remaining").is_some());
    let b = json(r).await;
    assert_eq!(b["type"], "message");
    assert_eq!(b["stop_reason"], "max_tokens");
    assert_eq!(b["usage"]["input_tokens"], 3 + 4 + 7, "{b}");
    assert_eq!(b["usage"]["output_tokens"], 4);
    let count = post(&h, "/v1/messages/count_tokens", true, json!({"model": "claude-sonnet-4-5", "system": "abcd", "messages": [{"role": "user", "content": "Hello, world!"}]})).await;
    assert_eq!(count.status(), 200);
    assert_eq!(json(count).await, json!({"input_tokens": 14}));
    let mut stream = body.clone();
    stream["stream"] = true.into();
    let r = post(&h, "/v1/messages", true, stream).await;
    assert_eq!(r.status(), 200);
    let events = named_events(&r.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[..3], ["message_start", "content_block_start", "ping"]);
    assert_eq!(
        names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    assert_eq!(events[0].1["message"]["usage"]["input_tokens"], 14);
    let delta = &events[events.len() - 2].1;
    assert_eq!(delta["usage"]["output_tokens"], 4);
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
    // The third request is over the 2 a minute: Anthropic's refusal.
    let r = post(&h, "/v1/messages", true, body).await;
    assert_eq!(r.status(), 429);
    assert!(header(&r, "retry-after").is_some());
    let b = json(r).await;
    assert_eq!(b["type"], "error");
    assert_eq!(b["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn bad_messages_requests_get_anthropic_shaped_errors() {
    let h = start(CONFIG).await;
    let ok = json!({"model": "claude-sonnet-4-5", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]});
    let no_version = h
        .client
        .post(h.url("/v1/messages"))
        .header("x-api-key", "k")
        .json(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(no_version.status(), 400);
    let b = json(no_version).await;
    assert_eq!(b["type"], "error");
    assert_eq!(b["error"]["type"], "invalid_request_error");
    assert_eq!(
        b["error"]["message"],
        "anthropic-version: header is required"
    );
    let no_max = post(
        &h,
        "/v1/messages",
        true,
        json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(no_max.status(), 400);
    assert_eq!(
        json(no_max).await["error"]["message"],
        "max_tokens: Field required"
    );
    let no_key = h
        .client
        .post(h.url("/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
    assert_eq!(json(no_key).await["error"]["type"], "authentication_error");
    let bad_item = post(
        &h,
        "/v1/responses",
        false,
        json!({"model": "gpt-4o", "input": [5]}),
    )
    .await;
    assert_eq!(bad_item.status(), 400);
    assert_eq!(json(bad_item).await["error"]["param"], "input[0]");
    assert_eq!(h.stats().await.rejected.bad_request, 3);
}

#[tokio::test]
async fn anthropic_input_and_output_token_limits_are_metered_apart() {
    let h = start(
        r#"
[[models]]
name = "claude-opus-4-1"
dialect = "anthropic"
limits = [{ requests = 100, per = "60s" }, { input_tokens = 100, per = "60s" }, { output_tokens = 20, per = "60s" }]
"#,
    )
    .await;
    let ask = |max: u64| {
        json!({"model": "claude-opus-4-1", "max_tokens": max,
               "messages": [{"role": "user", "content": "Hello, world!"}]})
    };
    let r = post(&h, "/v1/messages", true, ask(15)).await;
    assert_eq!(r.status(), 200);
    // 10 input tokens of 100, 15 output tokens of 20; `tokens-*` is the tighter of the two.
    assert_eq!(
        header(&r, "anthropic-ratelimit-input-tokens-remaining").as_deref(),
        Some("90")
    );
    assert_eq!(
        header(&r, "anthropic-ratelimit-output-tokens-remaining").as_deref(),
        Some("5")
    );
    assert_eq!(
        header(&r, "anthropic-ratelimit-tokens-remaining").as_deref(),
        Some("5")
    );
    // Ten more output tokens do not fit, though input has room.
    let r = post(&h, "/v1/messages", true, ask(10)).await;
    assert_eq!(r.status(), 429);
    let b = json(r).await;
    assert_eq!(b["error"]["type"], "rate_limit_error");
    let message = b["error"]["message"].as_str().unwrap();
    assert!(message.contains("output tokens per minute"), "{message}");
    let r = post(&h, "/v1/messages", true, ask(5)).await;
    assert_eq!(r.status(), 200, "five still fit");
}

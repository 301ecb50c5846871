//! Server-sent events over a real socket: chunks, the usage chunk, `[DONE]`, text completions.

use serde_json::{Value, json};

use crate::common::{header, json, sse_events, start};

const MODEL: &str = r#"
[[models]]
name = "m"
dialect = "openai"
limits = [{ tokens = 1000, per = "60s" }]
stream_chunk_tokens = 4
latency = { first_token_ms = 1, per_token_ms = 0.5 }
"#;

fn parse(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).expect("chunk is JSON"))
        .collect()
}

#[tokio::test]
async fn stream_with_include_usage() {
    let h = start(MODEL).await;
    let r = h
        .chat(
            "k",
            json!({"model": "m", "messages": [{"role": "user", "content": "Hello, world!"}],
                   "max_tokens": 10, "stream": true, "stream_options": {"include_usage": true}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("text/event-stream")
    );
    assert!(header(&r, "x-ratelimit-remaining-tokens").is_some());
    let body = r.text().await.unwrap();
    let events = sse_events(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks = parse(&events);
    // role, 3 content chunks (4 + 4 + 2 tokens), finish, usage
    assert_eq!(chunks.len(), 6, "{body}");
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let text: String = chunks[1..4]
        .iter()
        .map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text, "sim set the log for all new key and its");
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[4]["choices"][0]["delta"], json!({}));
    for c in &chunks[..5] {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert!(c["usage"].is_null() && c.as_object().unwrap().contains_key("usage"));
    }
    assert_eq!(chunks[5]["choices"], json!([]));
    assert_eq!(
        chunks[5]["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20})
    );
    let s = h.stats().await;
    let m = s.get(&sluice_sim::config::fingerprint("k"), "m").unwrap();
    assert_eq!(
        (m.accepted, m.prompt_tokens, m.completion_tokens),
        (1, 10, 10)
    );
    assert_eq!(m.limits[0].used, 20);
}

#[tokio::test]
async fn stream_without_include_usage_has_no_usage() {
    let h = start(MODEL).await;
    let r = h
        .chat(
            "k",
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3, "stream": true}),
        )
        .await;
    let body = r.text().await.unwrap();
    let events = sse_events(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks = parse(&events);
    assert_eq!(chunks.len(), 3, "{body}");
    for c in &chunks {
        assert!(!c.as_object().unwrap().contains_key("usage"), "{c}");
        assert_eq!(c["choices"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn zero_token_stream_still_finishes() {
    let h = start(MODEL).await;
    let r = h
        .chat(
            "k",
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0,
                   "stream": true, "stream_options": {"include_usage": true}}),
        )
        .await;
    let chunks = parse(&sse_events(&r.text().await.unwrap()));
    assert_eq!(chunks.len(), 3);
    assert_eq!(chunks[2]["usage"]["completion_tokens"], 0);
}

#[tokio::test]
async fn text_completion_stream() {
    let h = start(MODEL).await;
    let r = h
        .post(
            "/v1/completions",
            Some("k"),
            &json!({"model": "m", "prompt": "abcdefgh", "max_tokens": 5, "stream": true,
                    "stream_options": {"include_usage": true}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let events = sse_events(&r.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks = parse(&events);
    // 2 content chunks (4 + 1), finish, usage
    assert_eq!(chunks.len(), 4);
    let text: String = chunks[..3]
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(text, "sim set the log for");
    assert_eq!(chunks[0]["object"], "text_completion");
    assert_eq!(
        chunks[3]["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7})
    );
}

#[tokio::test]
async fn non_streamed_completion_and_embeddings() {
    let h = start(MODEL).await;
    let r = h
        .post(
            "/v1/completions",
            Some("k"),
            &json!({"model": "m", "prompt": ["abcd", "你好"], "max_tokens": 2}),
        )
        .await;
    let b = json(r).await;
    assert_eq!(b["object"], "text_completion");
    assert_eq!(b["choices"][0]["text"], "sim set");
    assert_eq!(
        b["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
    );
    let r = h
        .post(
            "/v1/embeddings",
            Some("k"),
            &json!({"model": "m", "input": ["abcd", "abcdefgh"]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let b = json(r).await;
    assert_eq!(b["data"].as_array().unwrap().len(), 2);
    assert_eq!(b["data"][1]["index"], 1);
    assert_eq!(b["data"][0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(b["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    let s = h.stats().await;
    let m = s.get(&sluice_sim::config::fingerprint("k"), "m").unwrap();
    assert_eq!(
        (m.accepted, m.prompt_tokens, m.completion_tokens),
        (2, 6, 2)
    );
}

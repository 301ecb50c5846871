//! Bad requests never panic: OpenAI-shaped 400, 401 and 404 errors, counted in `/stats`.

use serde_json::json;

use crate::common::{chat_body, header, json, start};

const KEYS: &str = r#"
[[models]]
name = "m"
max_output_tokens = 100

[[accounts]]
key = "sk-known-key-123456"
"#;

const KEY: &str = "sk-known-key-123456";

fn assert_openai_error(b: &serde_json::Value, param: Option<&str>) {
    let e = &b["error"];
    assert!(e["message"].is_string(), "{b}");
    assert_eq!(e["type"], "invalid_request_error", "{b}");
    assert_eq!(e["param"].as_str(), param, "{b}");
    assert!(e.as_object().unwrap().contains_key("code"), "{b}");
}

#[tokio::test]
async fn malformed_json_and_wrong_types_are_400() {
    let h = start(KEYS).await;
    let cases: [(&'static str, Option<&str>); 7] = [
        ("{not json", None),
        ("", None),
        ("{\"model\":\"m\",\"messages\":[]} trailing", None),
        ("{\"model\":\"m\",\"messages\":5}", Some("messages")),
        (
            "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":5}]}",
            Some("messages[0].content"),
        ),
        (
            "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":-1}",
            Some("max_tokens"),
        ),
        ("{\"messages\":[]}", Some("model")),
    ];
    for (body, param) in cases {
        let r = h.post_raw("/v1/chat/completions", KEY, body).await;
        assert_eq!(r.status(), 400, "{body}");
        assert_openai_error(&json(r).await, param);
    }
    let r = h.chat(KEY, json!({"model": "m", "messages": []})).await;
    assert_eq!(r.status(), 400);
    let r = h.chat(KEY, chat_body("m", "x", 101)).await;
    assert_eq!(r.status(), 400);
    let b = json(r).await;
    assert_eq!(
        b["error"]["message"],
        "max_tokens is too large: 101. This model supports at most 100 completion tokens, whereas you provided 101."
    );
    let r = h
        .post_raw("/v1/embeddings", KEY, "{\"model\":\"m\",\"input\":{}}")
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(h.stats().await.rejected.bad_request, 10);
}

#[tokio::test]
async fn missing_and_unknown_keys_are_401() {
    let h = start(KEYS).await;
    let r = h
        .post("/v1/chat/completions", None, &chat_body("m", "x", 1))
        .await;
    assert_eq!(r.status(), 401);
    let b = json(r).await;
    assert_openai_error(&b, None);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("You didn't provide an API key.")
    );
    let r = h.chat("sk-wrong-key-999999", chat_body("m", "x", 1)).await;
    assert_eq!(r.status(), 401);
    let b = json(r).await;
    assert_eq!(b["error"]["code"], "invalid_api_key");
    let message = b["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("sk-***999") && !message.contains("sk-wrong-key-999999"),
        "{message}"
    );
    let r = h.client.get(h.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Azure's api-key and Anthropic's x-api-key headers are accepted too.
    for name in ["api-key", "x-api-key"] {
        let r = h
            .client
            .post(h.url("/v1/chat/completions"))
            .header(name, KEY)
            .json(&chat_body("m", "x", 1))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
    }
    assert_eq!(h.stats().await.rejected.unauthorized, 3);
}

#[tokio::test]
async fn unknown_model_is_404() {
    let h = start(KEYS).await;
    let r = h.chat(KEY, chat_body("gpt-9", "x", 1)).await;
    assert_eq!(r.status(), 404);
    let b = json(r).await;
    assert_eq!(
        b,
        json!({"error": {"message": "The model `gpt-9` does not exist or you do not have access to it.", "type": "invalid_request_error", "param": null, "code": "model_not_found"}})
    );
    assert_eq!(h.stats().await.rejected.model_not_found, 1);
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let h = start(KEYS).await;
    let r = h.client.get(h.url("/v1/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        json(r).await["error"]["message"],
        "Invalid URL (GET /v1/nothing)"
    );
    let r = h
        .client
        .get(h.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = h
        .client
        .get(h.url("/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-type").as_deref(),
        Some("application/json")
    );
    let b = json(r).await;
    assert_eq!(b["data"][0]["id"], "m");
    assert_eq!(b["object"], "list");
}

//! Routes that need no upstream: health, readiness, the model list, and request errors.

use crate::support::*;

const CONFIG: &str = "[[upstreams]]\nname = \"nowhere\"\nbase_url = \"http://127.0.0.1:9/v1\"\nkeys = [\"sk-secret-key\"]\n[[models]]\nname = \"qwen-plus\"\nupstream = \"nowhere\"\n";

#[tokio::test]
async fn health_readiness_and_models() {
    let gw = gateway(CONFIG).await;
    let c = client();
    assert_eq!(
        c.get(format!("{gw}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready: serde_json::Value = c
        .get(format!("{gw}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["limits"], "per process");
    let models: serde_json::Value = c
        .get(format!("{gw}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "qwen-plus");
}

#[tokio::test]
async fn request_errors_are_openai_shaped_and_never_leak_the_key() {
    let gw = gateway(CONFIG).await;
    let c = client();
    let unknown = chat(&c, &gw, ask("gpt-9", 8), &[]).await;
    assert_eq!(unknown.status, 404);
    let body: serde_json::Value = serde_json::from_str(&unknown.body).unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");
    assert!(unknown.headers.contains_key("x-request-id"));
    let bad = c
        .post(format!("{gw}/v1/chat/completions"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // An unreachable upstream is a 502 the gateway names, without the key.
    let down = chat(&c, &gw, ask("qwen-plus", 8), &[("x-sluice-max-wait", "1s")]).await;
    assert_eq!(down.status, 502, "{down:?}");
    assert!(!down.body.contains("sk-secret-key"));
    let metrics = c
        .get(format!("{gw}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("sk-secret-key"));
    assert!(metrics.contains("sluice_requests_total"));
}

#[tokio::test]
async fn quotas_need_a_key_when_tenants_are_configured_and_details_need_the_admin_key() {
    let toml = format!(
        "{CONFIG}[[tenants]]\nname = \"app\"\nkey = \"tenant-key-1\"\n[sidecar]\nadmin_key = \"admin-key-0123456789\"\n"
    );
    let gw = gateway(&toml).await;
    let c = client();
    let get = |token: Option<&'static str>| {
        let mut req = c.get(format!("{gw}/v1/quotas"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    for token in [None, Some("tenant-key-2"), Some("admin-key-012345678")] {
        let resp = get(token).await.unwrap();
        assert_eq!(resp.status(), 401, "{token:?}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_api_key");
    }
    for token in ["tenant-key-1", "admin-key-0123456789"] {
        let resp = get(Some(token)).await.unwrap();
        assert_eq!(resp.status(), 200, "{token}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["models"][0]["model"], "qwen-plus");
    }
}

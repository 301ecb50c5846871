//! A stub upstream that counts what reaches it and answers by the upstream model
//! named in the body: `ok` (200 with usage), `throttle` (429 with Retry-After),
//! `badkey` (401 `invalid_api_key`, the key masked as OpenAI does) and `block` (waits
//! until the test releases it, after telling the test it arrived).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use tokio::sync::{Mutex, Semaphore, mpsc};

#[derive(Clone)]
struct Shared {
    hits: Arc<AtomicUsize>,
    arrived: mpsc::UnboundedSender<()>,
    release: Arc<Semaphore>,
}

/// A running stub; its server task ends with the test's runtime.
pub(crate) struct Stub {
    /// `http://127.0.0.1:PORT/v1`.
    pub(crate) base_url: String,
    hits: Arc<AtomicUsize>,
    arrived: Mutex<mpsc::UnboundedReceiver<()>>,
    release: Arc<Semaphore>,
}

impl Stub {
    /// Requests that reached the stub.
    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Waits until a `block` request has arrived.
    pub(crate) async fn arrived(&self) {
        self.arrived.lock().await.recv().await.expect("stub alive");
    }

    /// Lets one `block` request answer.
    pub(crate) fn release_one(&self) {
        self.release.add_permits(1);
    }
}

async fn answer(State(s): State<Shared>, _headers: HeaderMap, body: bytes::Bytes) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = json["model"].as_str().unwrap_or("ok").to_owned();
    match model.as_str() {
        "throttle" => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1"), ("content-type", "application/json")],
            r#"{"error":{"message":"Rate limit reached for requests","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#,
        )
            .into_response(),
        "badkey" => (
            StatusCode::UNAUTHORIZED,
            [("content-type", "application/json")],
            r#"{"error":{"message":"Incorrect API key provided: sk-****abcd.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
        )
            .into_response(),
        other => {
            if other == "block" {
                let _ = s.arrived.send(());
                s.release.acquire().await.expect("open").forget();
            }
            axum::Json(serde_json::json!({
                "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": other,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
            }))
            .into_response()
        }
    }
}

/// Starts a stub on a port-0 listener.
pub(crate) async fn stub() -> Stub {
    let hits = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::unbounded_channel();
    let release = Arc::new(Semaphore::new(0));
    let shared = Shared {
        hits: hits.clone(),
        arrived: tx,
        release: release.clone(),
    };
    let app = Router::new()
        .route("/v1/{*rest}", any(answer))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Stub {
        base_url,
        hits,
        arrived: Mutex::new(rx),
        release,
    }
}

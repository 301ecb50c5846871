//! A stub upstream that counts what reaches it and answers by the upstream model
//! named in the body: `ok` (200 with usage), `throttle` (429 with Retry-After),
//! `badkey` (401 `invalid_api_key`, the key masked as OpenAI does), `redirect` (307 to
//! another path of the stub, which a client following it would hit a second time) and
//! `block` (waits until the test releases it, after telling the test it arrived).

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
        "redirect" => (
            StatusCode::TEMPORARY_REDIRECT,
            [("location", "/v1/elsewhere")],
            "",
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

/// How a [`FaultServer`] mistreats each connection, once it has read a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Resets the connection (`SO_LINGER` 0, then close: an RST, no answer).
    Reset,
    /// Sends `200` headers with a `Content-Length` far larger than the few bytes of
    /// JSON that follow, then closes: an answer cut mid-body.
    CutBody,
    /// Sends `200` `text/event-stream` headers and one chunked SSE event, then closes
    /// without the terminating chunk: a stream cut mid-way.
    CutStream,
}

/// A TCP server that plays an upstream which fails at the transport level; counts the
/// requests it read. Its task ends with the test's runtime.
pub(crate) struct FaultServer {
    /// `http://127.0.0.1:PORT/v1`.
    pub(crate) base_url: String,
    requests: Arc<AtomicUsize>,
}

impl FaultServer {
    /// Requests read (one per connection: every connection ends after one).
    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Reads one HTTP/1.1 request (head, then `Content-Length` bytes of body); false when
/// the peer went away first.
async fn read_request(s: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return true;
            }
        }
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Starts a [`FaultServer`] on a port-0 listener.
pub(crate) async fn fault_server(fault: Fault) -> FaultServer {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                if !read_request(&mut s).await {
                    return;
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let partial: &[u8] = match fault {
                    Fault::Reset => {
                        let _ = s.set_zero_linger();
                        return;
                    }
                    Fault::CutBody => {
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 4096\r\n\r\n{\"id\":\"chatcmpl-cut\",\"object\":\"chat.com"
                    }
                    Fault::CutStream => {
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n64\r\ndata: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n\r\n"
                    }
                };
                let _ = s.write_all(partial).await;
                let _ = s.flush().await;
                // Dropping the socket closes it: the answer ends where it was cut.
            });
        }
    });
    FaultServer { base_url, requests }
}

//! Slow clients and too many requests: a client that stalls its headers is
//! disconnected, one that stalls its body gets a 408, and a request over
//! `server.max_connections` gets an immediate OpenAI-shaped 503 with Retry-After.
//! (Timeouts are short so the test is quick; nothing asserts how long anything took.)

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stub::stub;
use crate::support::*;

/// A safety net only: far longer than any timeout configured here.
const HUNG: Duration = Duration::from_secs(60);

fn config(base: &str, server: &str) -> String {
    format!(
        r#"
[server]
{server}
[[upstreams]]
name = "stub"
base_url = "{base}"
keys = ["sk-stub-key"]
[[models]]
name = "m"
upstream = "stub"
upstream_model = "ok"
rpm = 1000
[[models]]
name = "slow"
upstream = "stub"
upstream_model = "block"
rpm = 1000
"#
    )
}

/// Writes `prefix`, then reads until the server closes the connection (or resets
/// it); returns what was read. Panics if the server neither answers nor closes.
async fn stall_after(addr: &str, prefix: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(prefix.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(HUNG, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the gateway neither answered nor closed a stalled client"
    );
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn a_client_that_stalls_is_answered_or_closed() {
    let upstream = stub().await;
    let gw = gateway(&config(
        &upstream.base_url,
        "header_timeout = \"300ms\"\nbody_timeout = \"300ms\"",
    ))
    .await;
    let addr = gw.strip_prefix("http://").unwrap();
    // Headers never finish: the connection is closed (hyper may say 408 first).
    let got = stall_after(
        addr,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n",
    )
    .await;
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "{got:?}");
    // Headers arrive, the body stalls: an OpenAI-shaped 408.
    let got = stall_after(
        addr,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"model\":",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    assert!(got.contains("\"code\":\"request_timeout\""), "{got:?}");
    // The passthrough too.
    let got = stall_after(
        addr,
        "POST /v1/files HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got:?}");
    assert_eq!(upstream.hits(), 0);
    // The gateway still serves.
    let ok = chat(&client(), &gw, ask("m", 8), &[]).await;
    assert_eq!(ok.status, 200, "{ok:?}");
}

#[tokio::test]
async fn requests_over_max_connections_get_503_with_retry_after() {
    let upstream = stub().await;
    let gw = gateway(&config(&upstream.base_url, "max_connections = 1")).await;
    let c = client();
    let first = {
        let (c, gw) = (c.clone(), gw.clone());
        tokio::spawn(async move { chat(&c, &gw, ask("slow", 8), &[]).await })
    };
    // The first request holds the only slot while the upstream keeps it waiting.
    upstream.arrived().await;
    let over = chat(&c, &gw, ask("m", 8), &[]).await;
    assert_eq!(over.status, 503, "{over:?}");
    let ra: u64 = over.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ra >= 1);
    let body: serde_json::Value = serde_json::from_str(&over.body).unwrap();
    assert_eq!(body["error"]["code"], "server_busy", "{over:?}");
    assert_eq!(body["error"]["type"], "service_unavailable");
    // Health stays outside the bound.
    let health = c.get(format!("{gw}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    upstream.release_one();
    assert_eq!(first.await.unwrap().status, 200);
    // The slot is free again.
    assert_eq!(chat(&c, &gw, ask("m", 8), &[]).await.status, 200);
    assert_eq!(
        upstream.hits(),
        2,
        "the refused request never reached the upstream"
    );
}

//! The real binary: flags, the `listening on` line, and a refusal in the chosen dialect.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::json;

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn binary_prints_its_port_and_meters() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--rpm",
            "1",
            "--tpm",
            "1000000",
            "--dialect",
            "dashscope",
        ])
        .args(["--models", "qwen3-max,qwen-plus", "--keys", "k1,k2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sluice-sim");
    let stdout = child.stdout.take().expect("stdout");
    let guard = Kill(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let addr = line
        .trim_end()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );

    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/chat/completions");
    let body = json!({"model": "qwen3-max", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1});
    let ok = client
        .post(&url)
        .bearer_auth("k1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let refused = client
        .post(&url)
        .bearer_auth("k1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    let b: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(b["error"]["code"], "limit_requests");
    let other = client
        .post(&url)
        .bearer_auth("k2")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200, "each key is its own account");
    let stranger = client
        .post(&url)
        .bearer_auth("k3")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(stranger.status(), 401);
    let models: serde_json::Value = client
        .get(format!("http://{addr}/v1/models"))
        .bearer_auth("k1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 2);
    drop(guard);
}

#[test]
fn binary_rejects_a_bad_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-sim"))
        .args(["--config", "/nonexistent/sim.toml"])
        .output()
        .expect("run sluice-sim");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

//! `sluice tenants`, `limits`, `accounts` and `changes` against a real gateway's admin
//! listener (in this process, on sockets): each change is in force on the gateway, a
//! tenant key travels only as its SHA-256, a wrong admin key fails with the API's message.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const ADMIN: &str = "cli-admin-key-0123456789";

fn sluice(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sluice runs");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("sluice ends")
}

async fn run(args: Vec<String>, stdin: Option<&'static str>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sluice(&args, stdin)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_limits_and_accounts_change_a_running_gateway() {
    let model = "cli-admin-m";
    let sim = sluice_sim::spawn(sluice_sim::Config::with_models(vec![
        sluice_sim::ModelConfig::new(model, sluice_sim::Dialect::Openai)
            .with_limit(sluice_sim::Limit::requests(1000, Duration::from_secs(60))),
    ]))
    .await
    .expect("sim");
    let admin_port = sluice_testkit::free_port();
    let toml = format!(
        r#"
[server]
admin_listen = "127.0.0.1:{admin_port}"
[[upstreams]]
name = "sim"
base_url = "{}"
keys = ["sk-a", "sk-b"]
[[models]]
name = "{model}"
upstream = "sim"
limits = [{{ requests = 100, per = "60s" }}]
[[tenants]]
name = "checkout"
key = "checkout-key-0123456789"
[sidecar]
admin_key = "{ADMIN}"
"#,
        sim.base_url()
    );
    let config = sluice_config::from_str(
        &toml,
        &[],
        &std::collections::HashMap::<String, String>::new(),
    )
    .expect("config");
    let gw = sluice_proxy::Gateway::new(config).expect("gateway");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(sluice_proxy::serve(gw, listener, std::future::pending()));
    let admin = format!("http://127.0.0.1:{admin_port}");
    let c = reqwest::Client::new();
    let chat = |key: &'static str| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            c.post(format!("{url}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}))
                .send()
                .await
                .expect("answers")
                .status()
                .as_u16()
        }
    };
    let with = |rest: &[&str]| {
        let mut a = vec![
            "--url".to_owned(),
            admin.clone(),
            "--key".to_owned(),
            ADMIN.to_owned(),
        ];
        a.extend(rest.iter().map(|s| (*s).to_owned()));
        a
    };
    // The admin listener is bound just after the main one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while c.get(format!("{admin}/healthz")).send().await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "no admin listener");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let key = "search-key-0123456789abcdef";
    let out = run(
        with(&["tenants", "add", "search", "--weight", "2"]),
        Some("search-key-0123456789abcdef\n"),
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("add_tenant: tenant:search"), "{text}");
    assert!(!text.contains(key), "{text}");
    assert_eq!(chat("search-key-0123456789abcdef").await, 200);

    let out = run(with(&["tenants", "revoke", "search"]), None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(chat("search-key-0123456789abcdef").await, 401);
    assert_eq!(chat("checkout-key-0123456789").await, 200);

    let out = run(with(&["limits", "set", model, "requests=5/60s"]), None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let q = run(with(&["quotas", "--json"]), None).await;
    let v: serde_json::Value = serde_json::from_slice(&q.stdout).expect("JSON");
    assert_eq!(
        v["models"][0]["accounts"][0]["limits"][0]["configured"], 5,
        "{v}"
    );

    let out = run(
        with(&[
            "accounts",
            "disable",
            "sim",
            "key-1",
            "--reason",
            "key leaked",
        ]),
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let q = run(with(&["quotas", "--color", "never"]), None).await;
    let table = String::from_utf8_lossy(&q.stdout);
    assert!(table.contains("disabled (disabled by"), "{table}");
    assert!(table.contains("key leaked"), "{table}");
    let out = run(with(&["accounts", "enable", "sim", "key-1"]), None).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run(with(&["changes", "--json"]), None).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["tenants"]["search"]["revoked"], true, "{v}");
    assert_eq!(v["limits"][model][0]["amount"], 5, "{v}");

    // A wrong admin key: exit 1 with the API's own message.
    let out = run(
        vec![
            "--url".into(),
            admin.clone(),
            "--key".into(),
            "wrong-key-0123456789".into(),
            "tenants".into(),
            "revoke".into(),
            "checkout".into(),
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused (401): Invalid admin key."),
        "{stderr}"
    );
    assert_eq!(chat("checkout-key-0123456789").await, 200);
}

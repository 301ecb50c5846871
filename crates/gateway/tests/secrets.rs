//! Secrets never leak: a real gateway process with distinctive provider keys, tenant
//! key, admin key and a password-protected Redis, driven through successes, upstream
//! 429s, an upstream 401 (invalid key), bad requests, admin calls and a Redis failure;
//! every log line (`SLUICE_LOG=debug`), `/metrics`, `/v1/quotas`, `/readyz` and every
//! response body and header is searched for each secret. The keys come in every way
//! the configuration allows: written out, from a secret file (`${file:...}`), from the
//! environment, and (tenant) as a SHA-256 digest.

use sluice_testkit::RedisServer;

use crate::stub::stub;
use crate::support::client;

const KEY_OK: &str = "sk-prov-ok-7Hq2WxLx";
const KEY_THROTTLE: &str = "sk-prov-thr-3Jk8PzQa";
const KEY_DEAD: &str = "sk-prov-dead-9Rt4VbNc";
const TENANT: &str = "tenant-secret-Pp4rYs6d";
/// A tenant whose key the configuration holds only as a digest.
const TENANT_HASHED: &str = "tenant-hashed-Kx8wQe2r";
const ADMIN: &str = "admin-secret-Mm3nGf8h";
const REDIS_PASSWORD: &str = "redis-pw-Zq7xK2vLm9";

/// `line` without terminal colour escapes (`ESC [ … m`), which could split a value.
fn without_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The digest an operator writes as `key_sha256` (`printf %s "$KEY" | sha256sum`).
fn sha256_hex(key: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Everything the gateway said, to search afterwards.
#[derive(Default)]
struct Seen(Vec<(String, String)>);

impl Seen {
    async fn record(&mut self, what: &str, resp: reqwest::Response) -> u16 {
        let status = resp.status().as_u16();
        for (k, v) in resp.headers() {
            self.0.push((
                format!("{what}: header {k}"),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ));
        }
        // An unreadable body must fail, not be searched as "" (which holds no secret).
        let body = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("{what}: the body could not be read: {e}"));
        self.0.push((format!("{what}: body ({status})"), body));
        status
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_metrics_quotas_or_answers() {
    let mut redis = RedisServer::start();
    redis.cli(&["CONFIG", "SET", "requirepass", REDIS_PASSWORD]);
    let redis_url = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}/0", redis.port());
    let upstream = stub().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("dead-key");
    std::fs::write(&key_file, format!("{KEY_DEAD}\n")).unwrap();
    let toml = format!(
        r#"
[store]
redis_url = "{redis_url}"
on_error = "local"
timeout = "200ms"
[[upstreams]]
name = "good"
base_url = "{base}"
keys = ["{KEY_OK}"]
[[upstreams]]
name = "thr"
base_url = "{base}"
keys = ["${{KEY_THROTTLE}}"]
[[upstreams]]
name = "dead"
base_url = "{base}"
keys = ["${{file:{key_file}}}"]
[[models]]
name = "ok"
upstream = "good"
rpm = 1000
[[models]]
name = "throttle"
upstream = "thr"
rpm = 1000
[[models]]
name = "badkey"
upstream = "dead"
rpm = 1000
[queue]
max_wait = "2s"
[retry]
max_attempts = 1
[[tenants]]
name = "app"
key = "{TENANT}"
[[tenants]]
name = "hashed"
key_sha256 = "{tenant_digest}"
[sidecar]
admin_key = "{ADMIN}"
"#,
        base = upstream.base_url,
        key_file = key_file.display(),
        tenant_digest = sha256_hex(TENANT_HASHED),
    );
    let mut gateway = sluice_testkit::Service::start_capturing(
        env!("CARGO_BIN_EXE_sluice-gateway"),
        &toml,
        &[],
        &[
            ("SLUICE_LOG", "debug".to_owned()),
            ("KEY_THROTTLE", KEY_THROTTLE.to_owned()),
        ],
    );
    let gw = gateway.url().to_owned();
    let c = client();
    let mut seen = Seen::default();
    let chat = |model: &str, key: &str| {
        c.post(format!("{gw}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}))
            .send()
    };

    // Success, upstream 429, upstream 401 (the account is disabled).
    assert_eq!(
        seen.record("ok", chat("ok", TENANT).await.unwrap()).await,
        200
    );
    let s = seen.record("stream", c.post(format!("{gw}/v1/chat/completions")).bearer_auth(TENANT)
        .json(&serde_json::json!({"model": "ok", "messages": [{"role": "user", "content": "hi"}], "stream": true}))
        .send().await.unwrap()).await;
    assert!(s < 500, "{s}");
    assert_eq!(
        seen.record("throttled", chat("throttle", TENANT).await.unwrap())
            .await,
        429
    );
    assert_eq!(
        seen.record("hashed tenant", chat("ok", TENANT_HASHED).await.unwrap())
            .await,
        200
    );
    let dead = seen
        .record("invalid key", chat("badkey", TENANT).await.unwrap())
        .await;
    assert!(dead == 401 || dead == 503, "{dead}");
    // Bad requests: a wrong tenant key (close to the real one), bad JSON, unknown model.
    let near = format!("{TENANT}x");
    assert_eq!(
        seen.record("wrong tenant", chat("ok", &near).await.unwrap())
            .await,
        401
    );
    let bad = c
        .post(format!("{gw}/v1/chat/completions"))
        .bearer_auth(TENANT)
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(seen.record("bad json", bad).await, 400);
    assert_eq!(
        seen.record("unknown model", chat("gpt-9", TENANT).await.unwrap())
            .await,
        404
    );
    // Admin: a wrong key, then the right one.
    let enable = format!("{gw}/v1/admin/accounts/dead/key-0/enable");
    let wrong = c
        .post(&enable)
        .bearer_auth(format!("{ADMIN}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(seen.record("admin wrong key", wrong).await, 401);
    let right = c.post(&enable).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(seen.record("admin enable", right).await, 200);
    let q = c
        .get(format!("{gw}/v1/quotas"))
        .bearer_auth(TENANT)
        .send()
        .await
        .unwrap();
    assert_eq!(seen.record("quotas", q).await, 200);
    assert_eq!(
        seen.record(
            "readyz up",
            c.get(format!("{gw}/readyz")).send().await.unwrap()
        )
        .await,
        200
    );

    // Redis fails: the local policy serves, readiness says degraded.
    redis.kill();
    let down = seen
        .record("ok with redis down", chat("ok", TENANT).await.unwrap())
        .await;
    assert_eq!(down, 200);
    seen.record(
        "throttled with redis down",
        chat("throttle", TENANT).await.unwrap(),
    )
    .await;
    let ready = c.get(format!("{gw}/readyz")).send().await.unwrap();
    assert_eq!(seen.record("readyz down", ready).await, 200);
    let q = c
        .get(format!("{gw}/v1/quotas"))
        .bearer_auth(TENANT)
        .send()
        .await
        .unwrap();
    seen.record("quotas with redis down", q).await;
    let right = c.post(&enable).bearer_auth(ADMIN).send().await.unwrap();
    seen.record("admin enable with redis down", right).await;
    let metrics = c.get(format!("{gw}/metrics")).send().await.unwrap();
    assert_eq!(seen.record("metrics", metrics).await, 200);

    // Stop, so every log line is flushed.
    assert!(gateway.signal("TERM") && gateway.wait(), "a clean exit");
    let logs = gateway.logs();
    assert!(
        logs.len() > 10,
        "debug logging produced only {} lines",
        logs.len()
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("redis") || l.contains("store")),
        "the Redis failure was not logged at all: {logs:#?}"
    );
    for (i, l) in logs.into_iter().enumerate() {
        seen.0.push((format!("log line {i}"), without_ansi(&l)));
    }
    // Positive controls: the search looks at what was really said.
    let said = |where_: &str, needle: &str| {
        seen.0
            .iter()
            .any(|(w, t)| w.starts_with(where_) && t.contains(needle))
    };
    assert!(said("metrics", "tenant=\"app\""));
    assert!(said("readyz down", "degraded"));
    assert!(said("throttled", "rate_limit_exceeded"));
    assert!(said("log line", "tenant=app") || said("log line", "tenant: app"));
    assert!(said("log line", "DEBUG"), "no debug lines were captured");
    assert!(said("metrics", "tenant=\"hashed\""));
    // The keys written out in the file are named by path at start, the others are not.
    let warned = |path: &str| {
        said("log line", "written in the configuration file") && said("log line", path)
    };
    assert!(
        warned("upstreams[0].keys[0]") && warned("tenants[0].key") && warned("store.redis_url")
    );
    assert!(!said("log line", "upstreams[1].keys[0]") && !said("log line", "upstreams[2].keys[0]"));
    let secrets = [
        KEY_OK,
        KEY_THROTTLE,
        KEY_DEAD,
        TENANT,
        TENANT_HASHED,
        ADMIN,
        REDIS_PASSWORD,
        redis_url.as_str(),
    ];
    let mut leaks = Vec::new();
    for (where_, text) in &seen.0 {
        for s in secrets {
            if text.contains(s) {
                leaks.push(format!("{s:?} in {where_}: {text}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    assert!(upstream.hits() >= 3);
}
